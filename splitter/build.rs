//! Builds the eBPF programs (`splitter-ebpf`) for the bpf target with the nightly toolchain and
//! bpf-linker (`cargo xtask setup` installs both); the daemon embeds the object from `OUT_DIR`.
//! The nested build's output is shown only when it fails (`build/quiet_ebpf.rs`).

#[path = "build/quiet_ebpf.rs"]
mod quiet_ebpf;

fn main() -> anyhow::Result<()> {
    quiet_ebpf::build(
        "splitter-ebpf",
        concat!(env!("CARGO_MANIFEST_DIR"), "/../splitter-ebpf"),
    )
}
