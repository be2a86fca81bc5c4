//! Builds the benchmark and comparison harness programs (`splitter-bench-ebpf`) for the bpf
//! target, like `splitter/build.rs` builds the data plane; the harness embeds the object from
//! OUT_DIR. Only the tests and benchmarks load it: the daemon's object holds the data plane.
//! The nested build's output is shown only when it fails (the same helper as the daemon's).

#[path = "../splitter/build/quiet_ebpf.rs"]
mod quiet_ebpf;

fn main() -> anyhow::Result<()> {
    quiet_ebpf::build(
        "splitter-bench-ebpf",
        concat!(env!("CARGO_MANIFEST_DIR"), "/../splitter-bench-ebpf"),
    )
}
