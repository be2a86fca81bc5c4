//! Progressive canary rollouts, judged by the in-kernel L4 signals (`splitter_common::Signals`).
//!
//! - [`plan`]: what a rollout does (steps, step duration, thresholds), validated up front.
//! - [`analysis`]: one verdict from the green and blue signals of a window.
//! - [`engine`]: the state machine the daemon ticks: advance, hold, abort, complete; plain
//!   data, persisted by the daemon so a restarted daemon resumes from its step.
//! - [`prometheus`]: optional external checks (a PromQL query with a bound).

pub mod analysis;
pub mod engine;
pub mod plan;
pub mod prometheus;

pub use analysis::{ColorSignals, Verdict, Window};
pub use engine::{Action, Decision, Phase, Rollout, Start, StartError};
pub use plan::{Check, CheckBound, Plan, PlanError};

/// One log line for a rollout decision of `service`, with the numbers behind it; for a fleet
/// rollout, `fleet_revision` is the etcd revision the decision was written at.
pub fn log_decision(service: &str, decision: &Decision, fleet_revision: Option<i64>) {
    let message = if fleet_revision.is_some() {
        "fleet rollout"
    } else {
        "rollout"
    };
    tracing::info!(
        message,
        service,
        action = %decision.action,
        from = %crate::units::ppm_to_percent(decision.from_weight),
        to = %crate::units::ppm_to_percent(decision.to_weight),
        reason = %decision.reason,
        revision = fleet_revision,
        green_flows = decision.green.new_flows,
        green_handshakes = decision.green.handshakes,
        green_failure_ratio = decision.green.failure_ratio,
        green_p99_ms = decision.green.handshake_p99.map(|s| s * 1e3),
        blue_flows = decision.blue.new_flows,
        blue_handshakes = decision.blue.handshakes,
        blue_failure_ratio = decision.blue.failure_ratio,
        blue_p99_ms = decision.blue.handshake_p99.map(|s| s * 1e3),
    );
}
