#![no_std]
// This file exists so that `splitter` can name this crate as a build dependency: cargo then
// rebuilds the daemon when the eBPF programs change. The programs are in `main.rs`.
