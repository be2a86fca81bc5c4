//! Builds the eBPF programs (`splitter-ebpf`) for the bpf target with the nightly toolchain and
//! bpf-linker (`cargo xtask setup` installs both); the daemon embeds the object from `OUT_DIR`.

fn main() -> anyhow::Result<()> {
    let package = aya_build::Package {
        name: "splitter-ebpf",
        root_dir: concat!(env!("CARGO_MANIFEST_DIR"), "/../splitter-ebpf"),
        ..Default::default()
    };
    aya_build::build_ebpf([package], aya_build::Toolchain::default())
}
