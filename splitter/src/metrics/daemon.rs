//! The daemon's own metrics: control requests and configuration reloads.

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family},
    registry::Registry,
};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    command: &'static str,
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    result: &'static str,
}

/// The daemon's own counters. Cheap to clone (shared handles).
#[derive(Clone, Debug, Default)]
pub struct DaemonMetrics {
    requests: Family<RequestLabels, Counter>,
    reloads: Family<ResultLabels, Counter>,
}

impl DaemonMetrics {
    pub fn request(&self, command: &'static str, ok: bool) {
        self.requests
            .get_or_create(&RequestLabels {
                command,
                result: result(ok),
            })
            .inc();
    }

    pub fn reload(&self, ok: bool) {
        self.reloads
            .get_or_create(&ResultLabels { result: result(ok) })
            .inc();
    }

    pub(super) fn register(&self, registry: &mut Registry) {
        registry.register(
            "splitter_control_requests",
            "Control socket requests by command and result",
            self.requests.clone(),
        );
        registry.register(
            "splitter_config_reloads",
            "Configuration reloads (reload command and SIGHUP) by result",
            self.reloads.clone(),
        );
    }
}

const fn result(ok: bool) -> &'static str {
    if ok { "ok" } else { "error" }
}
