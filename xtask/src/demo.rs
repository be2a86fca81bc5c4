//! `cargo xtask demo [--fast] [--keep]`: the README's first command. Builds and runs the demo
//! binary of the test crate (`splitter-demo`), which builds the `splitter` binary it starts.
//! xtask only shells out: it depends on none of the splitter crates.

use std::process::Command;

use crate::{setup, workspace_root};

/// What the demo itself needs on the machine (namespaces, links, veth offloads).
const DEMO_PACKAGES: &[&str] = &["iproute2", "ethtool"];

#[derive(clap::Args)]
pub struct Options {
    /// Short steps (about 30 s): what CI runs.
    #[arg(long)]
    pub fast: bool,
    /// Leave the lab running after the walk, with instructions to poke at it, until Ctrl-C.
    #[arg(long)]
    pub keep: bool,
}

extern "C" fn ignore(_: libc::c_int) {}

pub fn run(options: &Options) -> anyhow::Result<()> {
    setup::run(&setup::Options::default())?;
    setup::ensure_packages(DEMO_PACKAGES)?;
    let mut demo = Command::new("cargo");
    demo.current_dir(workspace_root()).args([
        "run",
        "--release",
        "-p",
        "splitter-tests",
        "--bin",
        "splitter-demo",
        "--",
    ]);
    if options.fast {
        demo.arg("--fast");
    }
    if options.keep {
        demo.arg("--keep");
    }
    // Ctrl-C reaches the whole foreground process group: the demo cleans up and exits by
    // itself, so xtask waits for it instead of dying first. A handler (not SIG_IGN, which the
    // child would inherit) is reset to the default in the child at exec.
    // SAFETY: an empty handler.
    unsafe {
        libc::signal(libc::SIGINT, ignore as *const () as libc::sighandler_t);
        libc::signal(libc::SIGTERM, ignore as *const () as libc::sighandler_t);
    }
    eprintln!("+ {demo:?}");
    let status = demo
        .status()
        .map_err(|e| anyhow::anyhow!("{demo:?}: {e}"))?;
    match status.code() {
        Some(0) => Ok(()),
        Some(130) => anyhow::bail!("the demo was interrupted (everything it built is removed)"),
        _ => anyhow::bail!("the demo did not go as expected ({status}): see its summary above"),
    }
}
