//! The splitter daemon and CLI as a library: the binary (`main.rs`) and the integration tests
//! use the same code paths.
//!
//! One module per concern: `config` (the file), `state` (persisted weights), `dataplane`
//! (loading, pinning, maps), `daemon` (the application and its reconcile), `health` (backend states: operator, checks, ejection), `control` (the Unix
//! socket API), `metrics` (Prometheus), `rollout` (canary plans and analysis), `cli`
//! (arguments, exit codes, client commands), `logging` (log formats), `units` (percent and duration conversions); `sys`
//! holds every raw system call, the crate's only `unsafe` code.

#![deny(unsafe_code)]

pub mod cli;
pub mod color;
pub mod config;
pub mod control;
pub mod daemon;
#[allow(
    clippy::pedantic,
    unused_qualifications,
    reason = "the data-plane folder predates the workspace lints; its pedantic clean-up is pending"
)]
pub mod dataplane;
pub mod fleet;
pub mod health;
pub mod logging;
pub mod metrics;
pub mod rollout;
pub mod state;
#[expect(unsafe_code, reason = "the one module of raw system calls")]
#[allow(
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    clippy::cast_lossless,
    clippy::cast_possible_wrap,
    clippy::borrow_as_ptr,
    clippy::doc_markdown,
    reason = "kernel ABI structs: the widths are the ABI's, and the docs name kernel constants"
)]
pub mod sys;
pub mod units;
