//! The splitter daemon and CLI as a library: the binary (`main.rs`) and the integration tests
//! use the same code paths.
//!
//! One module per concern: `config` (the file), `state` (persisted weights), `dataplane`
//! (loading, pinning, maps), `daemon` (the application and its reconcile), `control` (the Unix
//! socket API), `metrics` (Prometheus), `rollout` (canary plans and analysis), `cli`
//! (arguments, exit codes, client commands), `units` (percent and duration conversions).

#![deny(unsafe_code)]

pub mod cli;
pub mod config;
pub mod control;
pub mod daemon;
// The raw syscalls are gathered in `dataplane/sys.rs`; until this allow is narrowed to that
// module, it covers the data-plane folder (which also awaits its pedantic clean-up).
#[allow(
    unsafe_code,
    clippy::pedantic,
    unused_qualifications,
    reason = "dataplane/ is being reworked in parallel; narrow to `mod sys` when it lands"
)]
pub mod dataplane;
pub mod metrics;
pub mod rollout;
pub mod state;
pub mod units;
