//! The daemon's own metrics: control requests and configuration reloads. Every series exists
//! from the start (zero), so a dashboard or an alert sees a zero rather than a missing series.

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family},
    registry::Registry,
};

use crate::control::protocol::Request;

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
#[derive(Clone, Debug)]
pub struct DaemonMetrics {
    requests: Family<RequestLabels, Counter>,
    reloads: Family<ResultLabels, Counter>,
}

impl Default for DaemonMetrics {
    /// A zero series for every command and result.
    fn default() -> Self {
        let metrics = Self {
            requests: Family::default(),
            reloads: Family::default(),
        };
        for ok in [true, false] {
            for command in Request::NAMES {
                let _ = metrics.requests.get_or_create(&RequestLabels {
                    command,
                    result: result(ok),
                });
            }
            let _ = metrics
                .reloads
                .get_or_create(&ResultLabels { result: result(ok) });
        }
        metrics
    }
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
