//! Rollout metrics: where each service's rollout stands (step, phase) and how many decisions
//! of each kind were taken. Every configured service has all its series from the start (zero,
//! phase `none`), so dashboards and alerts see a zero rather than a missing series.

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};

/// Every rollout decision (`Decision::action`): the `action` label's values.
pub const ACTIONS: [&str; 8] = [
    "start", "advance", "hold", "complete", "pause", "resume", "promote", "abort",
];

/// Every phase a service's rollout can be in (`none`: it never had one): the `phase` label.
pub const PHASES: [&str; 5] = ["none", "running", "paused", "completed", "aborted"];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ServiceLabels {
    service: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PhaseLabels {
    service: String,
    /// One of [`PHASES`].
    phase: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DecisionLabels {
    service: String,
    /// One of [`ACTIONS`] (another value is counted too, under its own name).
    action: String,
}

/// The rollout families. Cheap to clone (shared handles): the daemon updates them, the
/// registry reads them.
#[derive(Clone, Debug, Default)]
pub struct RolloutMetrics {
    step: Family<ServiceLabels, Gauge>,
    phase: Family<PhaseLabels, Gauge>,
    decisions: Family<DecisionLabels, Counter>,
}

impl RolloutMetrics {
    /// Where `service`'s rollout stands: `phase` (one of [`PHASES`]) and its step (1-based;
    /// 0 without a rollout). Creates the service's series if they are new.
    pub fn set_state(&self, service: &str, phase: &'static str, step: u32) {
        self.step
            .get_or_create(&service_labels(service))
            .set(i64::from(step));
        for name in PHASES {
            self.phase
                .get_or_create(&PhaseLabels {
                    service: service.to_owned(),
                    phase: name,
                })
                .set(i64::from(name == phase));
        }
        for action in ACTIONS {
            // Zero series for every action: present before the first decision.
            let _ = self
                .decisions
                .get_or_create(&decision_labels(service, action));
        }
    }

    /// One decision of `action` on `service`'s rollout.
    pub fn decision(&self, service: &str, action: &str) {
        self.decisions
            .get_or_create(&decision_labels(service, action))
            .inc();
    }

    /// Drops the series of a service that is no longer configured.
    pub fn remove(&self, service: &str) {
        self.step.remove(&service_labels(service));
        for phase in PHASES {
            self.phase.remove(&PhaseLabels {
                service: service.to_owned(),
                phase,
            });
        }
        for action in ACTIONS {
            self.decisions.remove(&decision_labels(service, action));
        }
    }

    pub(super) fn register(&self, registry: &mut Registry) {
        registry.register(
            "splitter_rollout_step",
            "Step the service's rollout is at (1-based; 0 without a rollout)",
            self.step.clone(),
        );
        registry.register(
            "splitter_rollout_phase",
            "1 for the phase the service's rollout is in (none, running, paused, completed, aborted)",
            self.phase.clone(),
        );
        registry.register(
            "splitter_rollout_decisions",
            "Rollout decisions by action (start, advance, hold, complete, pause, resume, promote, abort)",
            self.decisions.clone(),
        );
    }
}

fn service_labels(service: &str) -> ServiceLabels {
    ServiceLabels {
        service: service.to_owned(),
    }
}

fn decision_labels(service: &str, action: &str) -> DecisionLabels {
    DecisionLabels {
        service: service.to_owned(),
        action: action.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{control::protocol::StatusReport, metrics::Metrics};

    fn exposition(rollouts: &RolloutMetrics) -> String {
        Metrics::new(&crate::metrics::DaemonMetrics::default())
            .with_rollouts(rollouts)
            .render(StatusReport::default())
    }

    /// Every series exists before the first rollout, at zero (phase `none`).
    #[test]
    fn series_start_at_zero_and_follow_decisions() {
        let rollouts = RolloutMetrics::default();
        rollouts.set_state("web", "none", 0);
        let text = exposition(&rollouts);
        for line in [
            "# TYPE splitter_rollout_step gauge",
            "splitter_rollout_step{service=\"web\"} 0",
            "splitter_rollout_phase{service=\"web\",phase=\"none\"} 1",
            "splitter_rollout_phase{service=\"web\",phase=\"running\"} 0",
            "# TYPE splitter_rollout_decisions_total counter",
            "splitter_rollout_decisions_total{service=\"web\",action=\"start\"} 0",
            "splitter_rollout_decisions_total{service=\"web\",action=\"abort\"} 0",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing `{line}` in\n{text}"
            );
        }
        rollouts.decision("web", "start");
        rollouts.decision("web", "advance");
        rollouts.decision("web", "advance");
        rollouts.set_state("web", "running", 3);
        let text = exposition(&rollouts);
        for line in [
            "splitter_rollout_step{service=\"web\"} 3",
            "splitter_rollout_phase{service=\"web\",phase=\"none\"} 0",
            "splitter_rollout_phase{service=\"web\",phase=\"running\"} 1",
            "splitter_rollout_decisions_total{service=\"web\",action=\"start\"} 1",
            "splitter_rollout_decisions_total{service=\"web\",action=\"advance\"} 2",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing `{line}` in\n{text}"
            );
        }
        rollouts.remove("web");
        assert!(!exposition(&rollouts).contains("service=\"web\""));
    }

    #[test]
    fn build_info_is_one_with_version_and_commit() {
        let text = exposition(&RolloutMetrics::default());
        let line = format!(
            "splitter_build_info{{version=\"{}\",commit=\"{}\"}} 1",
            env!("CARGO_PKG_VERSION"),
            crate::cli::COMMIT
        );
        assert!(
            text.lines().any(|l| l == line),
            "missing `{line}` in\n{text}"
        );
    }
}
