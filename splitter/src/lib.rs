//! The splitter daemon and CLI as a library: the binary (`main.rs`) and the integration tests
//! use the same code paths.

pub mod dataplane;
pub mod rollout;
