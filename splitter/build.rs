//! Builds the eBPF programs (`splitter-ebpf`) for the bpf target with the nightly toolchain and
//! bpf-linker (`cargo xtask setup` installs both); the daemon embeds the object from `OUT_DIR`.
//! The nested build's output is shown only when it fails (`build/quiet_ebpf.rs`).
//!
//! Also records the commit the binary is built from (`SPLITTER_COMMIT`: `git rev-parse --short
//! HEAD`, `unknown` outside a git checkout) for `--version` and `splitter_build_info`.

use std::{path::Path, process::Command};

#[path = "build/quiet_ebpf.rs"]
mod quiet_ebpf;

fn main() -> anyhow::Result<()> {
    let commit = git(&["rev-parse", "--short", "HEAD"]).unwrap_or_else(|| "unknown".to_owned());
    println!("cargo:rustc-env=SPLITTER_COMMIT={commit}");
    // A new commit or a checkout changes HEAD, the branch's ref or packed-refs: build again
    // then. Only files that exist (cargo would rerun on every build for a missing one).
    let refs = [
        Some("HEAD".to_owned()),
        git(&["symbolic-ref", "-q", "HEAD"]),
        Some("packed-refs".to_owned()),
    ];
    for path in refs.into_iter().flatten() {
        if let Some(file) = git(&["rev-parse", "--path-format=absolute", "--git-path", &path])
            && Path::new(&file).exists()
        {
            println!("cargo:rerun-if-changed={file}");
        }
    }
    quiet_ebpf::build(
        "splitter-ebpf",
        concat!(env!("CARGO_MANIFEST_DIR"), "/../splitter-ebpf"),
    )
}

/// `git ARGS` in this crate's directory: its trimmed output, or `None` (no git, no checkout).
fn git(args: &[&str]) -> Option<String> {
    let output = Command::new("git")
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .ok()?;
    let text = String::from_utf8(output.stdout).ok()?.trim().to_owned();
    (output.status.success() && !text.is_empty()).then_some(text)
}
