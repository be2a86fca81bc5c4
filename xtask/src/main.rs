//! `cargo xtask <command>`: the project's build, test, run and benchmark entry points.

mod bench;
mod deb;
mod demo;
mod install;
mod layout;
mod run;
mod setup;
mod test;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(about = "Build, test and run the splitter")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// See the splitter at work: a blue-green cutover and a canary rollout, live, in network
    /// namespaces of this machine (root); `--fast` for short steps, `--keep` to poke at it.
    Demo(demo::Options),
    /// Install what the build needs (rust-src, bpf-linker) and check the kernel and privileges.
    Setup(setup::Options),
    /// Setup, build, fmt and clippy (eBPF crate included), unit and integration tests.
    Test(test::Options),
    /// Setup, build, then run `splitter ARGS` (e.g. `-- daemon --config FILE`).
    Run(run::Options),
    /// House rules checked: no module cycle in `splitter/src`, no oversized product file.
    Layout(layout::Options),
    /// Per-packet cost of every data-plane path (BPF_PROG_TEST_RUN), as a Markdown table;
    /// `--compare`: against nftables, IPVS, HAProxy, routing and an XDP forwarder.
    Bench(bench::Options),
    /// Build and install the binary, systemd unit, man page, completions and example config
    /// under --prefix (default /usr/local).
    Install(install::Options),
    /// Build a Debian package (dpkg-deb) in target/debian.
    Deb(deb::Options),
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Demo(options) => demo::run(&options),
        Command::Setup(options) => setup::run(&options),
        Command::Test(options) => test::run(&options),
        Command::Bench(options) => bench::run(&options),
        Command::Layout(options) => layout::run(&options),
        Command::Run(options) => run::run(&options),
        Command::Install(options) => install::run(&options),
        Command::Deb(options) => deb::run(&options),
    }
}

/// Runs a command, echoing it, and fails with its exit status.
pub fn run_command(cmd: &mut std::process::Command) -> anyhow::Result<()> {
    eprintln!("+ {cmd:?}");
    let status = cmd.status().map_err(|e| anyhow::anyhow!("{cmd:?}: {e}"))?;
    anyhow::ensure!(status.success(), "{cmd:?} failed: {status}");
    Ok(())
}

/// The workspace root.
pub fn workspace_root() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_path_buf()
}
