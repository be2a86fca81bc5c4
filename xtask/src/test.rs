//! `cargo xtask test`: the README's test command and what `.ci/run` calls.

use std::process::Command;

use crate::{run_command, setup, workspace_root};

#[derive(clap::Args)]
pub struct Options {
    /// Skip fmt and clippy.
    #[arg(long)]
    pub no_lint: bool,
    /// Only run integration tests whose name contains this filter.
    pub filter: Option<String>,
}

fn cargo() -> Command {
    let mut cmd = Command::new("cargo");
    cmd.current_dir(workspace_root());
    cmd
}

pub fn run(options: &Options) -> anyhow::Result<()> {
    setup::run(&setup::Options { test_deps: true })?;
    run_command(cargo().args(["build", "--release", "--workspace", "--all-targets"]))?;
    if !options.no_lint {
        eprintln!("+ cargo xtask layout");
        crate::layout::run(&crate::layout::Options {})?;
        run_command(cargo().args(["+nightly", "fmt", "--all", "--", "--check"]))?;
        run_command(cargo().args([
            "clippy",
            "--release",
            "--workspace",
            "--all-targets",
            "--",
            "-D",
            "warnings",
        ]))?;
        // The eBPF crates (data plane and harness), checked for the target they run on.
        run_command(
            cargo()
                .args(["+nightly", "clippy", "--release", "-p", "splitter-ebpf"])
                .args(["-p", "splitter-bench-ebpf"])
                .args(["--target", "bpfel-unknown-none", "-Z", "build-std=core"])
                .args(["--", "-D", "warnings"]),
        )?;
    }
    // Unit tests, then the privileged integration tests (one at a time: they measure splits
    // of real traffic on a 2-core machine).
    run_command(cargo().args([
        "test",
        "--release",
        "-p",
        "splitter-common",
        "-p",
        "splitter-bench-common",
        "-p",
        "splitter",
        "-p",
        "xtask",
    ]))?;
    let mut integration = cargo();
    integration.args([
        "test",
        "--release",
        "-p",
        "splitter-tests",
        "--",
        "--test-threads=1",
    ]);
    if let Some(filter) = &options.filter {
        integration.arg(filter);
    }
    run_command(&mut integration)
}
