//! `cargo xtask run -- ARGS`: setup (toolchain pieces), build, then `splitter ARGS`, e.g.
//! `cargo xtask run -- daemon --config examples/splitter.toml`.

use std::process::Command;

use crate::{run_command, setup, workspace_root};

#[derive(clap::Args)]
pub struct Options {
    /// Arguments for the `splitter` binary.
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub args: Vec<String>,
}

pub fn run(options: &Options) -> anyhow::Result<()> {
    setup::run(&setup::Options::default())?;
    run_command(
        Command::new("cargo")
            .current_dir(workspace_root())
            .args([
                "run",
                "--release",
                "--quiet",
                "-p",
                "splitter",
                "--bin",
                "splitter",
                "--",
            ])
            .args(&options.args),
    )
}
