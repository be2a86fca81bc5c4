#![no_std]
// This file exists so that `splitter-tests` can name this crate as a build dependency: cargo
// then rebuilds the tests when the harness programs change. The programs are in `main.rs`.
