//! `cargo xtask bench`: benchmark commands (never part of the test suite).

use std::process::Command;

use crate::{run_command, setup, workspace_root};

#[derive(clap::Args)]
pub struct Options {
    /// BPF_PROG_TEST_RUN repetitions per measurement.
    #[arg(long, default_value_t = 1_000_000)]
    pub repeat: u32,
    /// Measurements per figure (the median is reported).
    #[arg(long, default_value_t = 3)]
    pub rounds: u32,
}

pub fn run(options: &Options) -> anyhow::Result<()> {
    setup::run(&setup::Options::default())?;
    run_command(
        Command::new("cargo")
            .current_dir(workspace_root())
            .args([
                "run",
                "--release",
                "-p",
                "splitter-tests",
                "--bin",
                "splitter-bench",
                "--",
            ])
            .args(["--repeat", &options.repeat.to_string()])
            .args(["--rounds", &options.rounds.to_string()]),
    )
}
