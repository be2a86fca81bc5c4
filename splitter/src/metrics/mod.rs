//! Prometheus metrics: one `prometheus-client` registry in which each component registers its
//! own families, served by an HTTP endpoint at `GET /metrics`.
//!
//! - [`daemon`]: the daemon's own counters ([`DaemonMetrics`]: control requests, reloads);
//! - [`rollout`]: where each service's rollout stands and its decisions ([`RolloutMetrics`]);
//! - [`build_info`]: the `splitter_build_info{version,commit}` gauge;
//! - [`dataplane`]: the data plane's counters, read from the kernel maps at each scrape
//!   through the same snapshot `splitter status` shows;
//! - [`http`]: the endpoint (Prometheus text 0.0.4, or OpenMetrics text when asked for).
//!
//! The metric names are fixed (dashboards rely on them) and listed in the README.

mod build_info;
mod daemon;
mod dataplane;
mod http;
pub mod rollout;

use std::sync::Arc;

use prometheus_client::registry::Registry;

use self::dataplane::DataplaneCollector;
pub use self::{
    daemon::DaemonMetrics,
    http::{Limits as HttpLimits, SnapshotSource, bind, serve},
    rollout::RolloutMetrics,
};
use crate::control::protocol::StatusReport;

/// The two text formats the endpoint speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// Prometheus text format 0.0.4 (the default).
    Prometheus,
    /// OpenMetrics text 1.0.0 (`Accept: application/openmetrics-text`).
    OpenMetrics,
}

impl Format {
    pub const fn content_type(self) -> &'static str {
        match self {
            Format::Prometheus => prometheus_client::encoding::prometheus_text::CONTENT_TYPE,
            Format::OpenMetrics => "application/openmetrics-text; version=1.0.0; charset=utf-8",
        }
    }
}

/// The registry and the data plane's snapshot it reads.
pub struct Metrics {
    registry: Registry,
    dataplane: Arc<DataplaneCollector>,
}

impl Metrics {
    pub fn new(daemon: &DaemonMetrics) -> Self {
        let mut registry = Registry::default();
        let dataplane = Arc::new(DataplaneCollector::default());
        registry.register_collector(Box::new(dataplane.clone()));
        daemon.register(&mut registry);
        build_info::register(&mut registry);
        Self {
            registry,
            dataplane,
        }
    }

    /// Adds the rollout families (the daemon's application updates them).
    pub fn with_rollouts(mut self, rollouts: &RolloutMetrics) -> Self {
        rollouts.register(&mut self.registry);
        self
    }

    /// `splitter_fleet_*` (with `[fleet]`).
    pub fn with_fleet(mut self, fleet: &crate::fleet::FleetMetrics) -> Self {
        fleet.register(&mut self.registry);
        self
    }

    /// The Prometheus text exposition of `report` and the daemon's counters.
    pub fn render(&self, report: StatusReport) -> String {
        self.render_as(report, Format::Prometheus)
    }

    /// The exposition of `report` and the daemon's counters in `format`.
    pub fn render_as(&self, report: StatusReport, format: Format) -> String {
        self.dataplane.set(report);
        let mut text = String::new();
        match format {
            Format::Prometheus => {
                prometheus_client::encoding::prometheus_text::encode(&mut text, &self.registry)
            }
            Format::OpenMetrics => {
                prometheus_client::encoding::text::encode(&mut text, &self.registry)
            }
        }
        .expect("writing to a String does not fail");
        text
    }
}

#[cfg(test)]
mod tests;
