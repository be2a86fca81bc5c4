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
