//! Builds the benchmark and comparison harness programs (`splitter-bench-ebpf`) for the bpf
//! target, like `splitter/build.rs` builds the data plane; the harness embeds the object from
//! OUT_DIR. Only the tests and benchmarks load it: the daemon's object holds the data plane.

fn main() -> anyhow::Result<()> {
    let package = aya_build::Package {
        name: "splitter-bench-ebpf",
        root_dir: concat!(env!("CARGO_MANIFEST_DIR"), "/../splitter-bench-ebpf"),
        ..Default::default()
    };
    aya_build::build_ebpf([package], aya_build::Toolchain::default())
}
