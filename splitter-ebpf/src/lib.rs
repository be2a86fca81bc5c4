//! What the data plane's programs share with the benchmark and comparison harness programs
//! (`splitter-bench-ebpf`): the packet parser, incremental checksums and the FIB lookup. The
//! programs and maps of the data plane are in the binary (`main.rs`); this library holds no map
//! and no program, so nothing of the harness can end up in the daemon's object or vice versa.
//!
//! Also lets `splitter` name this crate as a build dependency: cargo then rebuilds the daemon
//! when the eBPF programs change.
#![no_std]

pub mod checksum;
pub mod fib;
pub mod parse;
