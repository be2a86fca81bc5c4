//! Runs `aya_build::build_ebpf` without replaying the nested cargo's output as warnings.
//!
//! aya-build 0.2.0 forwards every line of the nested `cargo build` (its `Compiling ...` and
//! `Finished ...` lines on stderr, the compiler's rendered messages) as `cargo:warning=`, and
//! cargo replays a build script's warnings on every later build of the package: dozens of stale
//! `warning: splitter@0.1.0: ...` lines. So the build script runs aya-build in a child copy of
//! itself and keeps the child's `cargo:` directives (`rerun-if-*`) but not its warnings —
//! unless the eBPF build fails: then every line is printed on stderr (cargo shows it with the
//! error). Compiler warnings in the eBPF crates are not lost: `cargo xtask test` runs clippy on
//! them with `-D warnings`. Shared by `splitter/build.rs` and `tests/build.rs` (`#[path]`).

use std::{
    env,
    io::Write as _,
    process::{Command, Stdio},
};

/// Set in the child copy of the build script: build, do not fork again.
const CHILD: &str = "SPLITTER_QUIET_EBPF_CHILD";

/// Builds `name` (a crate at `root_dir`) with aya-build, quietly; see the module comment.
pub fn build(name: &str, root_dir: &str) -> anyhow::Result<()> {
    if env::var_os(CHILD).is_some() {
        let package = aya_build::Package {
            name,
            root_dir,
            ..Default::default()
        };
        return aya_build::build_ebpf([package], aya_build::Toolchain::default());
    }
    let exe = env::current_exe()?;
    let output = Command::new(&exe)
        .env(CHILD, "1")
        .stdin(Stdio::null())
        .output()
        .map_err(|error| {
            anyhow::anyhow!("running {} for the eBPF build: {error}", exe.display())
        })?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let mut out = std::io::stdout().lock();
    for line in stdout.lines() {
        if line.starts_with("cargo:") && !line.starts_with("cargo:warning=") {
            writeln!(out, "{line}")?;
        }
    }
    if output.status.success() {
        return Ok(());
    }
    let mut err = std::io::stderr().lock();
    for line in stdout.lines() {
        match line.strip_prefix("cargo:warning=") {
            Some(warning) => writeln!(err, "{warning}")?,
            None if line.starts_with("cargo:") => {}
            None => writeln!(err, "{line}")?,
        }
    }
    err.write_all(&output.stderr)?;
    anyhow::bail!(
        "building the eBPF crate `{name}` failed ({}): its output is above",
        output.status
    )
}
