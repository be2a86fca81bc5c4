//! `cargo xtask demo`: the whole product, live, on one machine. A client, the splitter host
//! and blue/green backend pools in their own network namespaces (198.18.0.0/15 only), the real
//! daemon and CLI, HTTP backends answering with their release and instance, and a client with
//! a steady mix of new and long-lived connections. The walk: all on blue; green (v2) deployed
//! and a canary rollout 1 → 10 → 50 → 100 %; blue-green switches under long-lived connections;
//! a bad green (v3, resets) rolled back by the analysis. Then a summary and a full cleanup,
//! also on Ctrl-C.
//!
//! - [`lab`]: namespaces, daemon, backends (built on [`crate::daemon_harness`]).
//! - [`http`]: the backends' HTTP server and the client's requests.
//! - [`load`]: the client and its per-phase tallies.
//! - [`walk`]: the four steps.
//! - [`narrate`], [`summary`]: what is printed.
//! - [`interrupt`]: Ctrl-C / SIGTERM.

pub mod http;
pub mod interrupt;
pub mod lab;
pub mod load;
pub mod narrate;
pub mod summary;
pub mod walk;

use std::time::{Duration, Instant};

use splitter::config::ColorName;

use self::{
    http::Release,
    lab::{DemoLab, MAX_LIFETIME},
    narrate::{Style, Terminal},
    summary::Summary,
    walk::{Timing, Walk},
};

/// The machine-readable summary line starts with this.
pub const SUMMARY_PREFIX: &str = "SUMMARY ";

#[derive(Clone, Copy, Debug, Default)]
pub struct Options {
    /// Short steps (CI): about 30 s instead of about two minutes.
    pub fast: bool,
    /// Leave the lab running after the walk, until Ctrl-C.
    pub keep: bool,
}

/// Runs the demo; everything it built is gone when this returns (Ctrl-C included).
pub fn run(options: Options) -> Summary {
    let started = Instant::now();
    let mut t = Terminal::detect();
    let mut summary = Summary {
        fast: options.fast,
        ..Summary::default()
    };
    t.heading("splitter demo: blue-green and canary releases, live");
    t.say(
        "Building the lab: network namespaces for a client, the splitter host and the blue and \
         green backends (addresses in 198.18.0.0/15; nothing leaves this machine).",
    );
    let mut lab = DemoLab::build();
    let result = walk(&mut lab, &mut t, options, &mut summary);
    let error = match result {
        Ok(()) => None,
        Err(error) if error.is::<interrupt::Interrupted>() => {
            summary.interrupted = true;
            None
        }
        Err(error) => Some(error),
    };
    if summary.interrupted {
        t.heading("Interrupted: cleaning up");
    } else if let Some(error) = &error {
        t.heading("The demo stopped on an error; cleaning up");
        t.say(&t.paint(Style::Red, &format!("{error:#}")));
    }
    if options.keep && !summary.interrupted && error.is_none() {
        t.heading("Summary");
        t.block(&summary.render(&t));
        keep(&mut lab, &mut t);
    }
    t.heading("Cleanup");
    if lab.daemon_pid().is_some() {
        // With the lab's config: its bpffs, never the default /sys/fs/bpf/splitter.
        let config = lab.lab.work.config();
        let config = config.to_string_lossy();
        match lab.cli(&["unload", "--config", &config]) {
            Ok(out) => t.command(&format!("splitter unload --config {config}"), &out.stdout),
            Err(error) => t.say(&format!("splitter unload: {error:#}")),
        }
    }
    drop(lab);
    summary.left_behind = lab::leftovers(std::process::id(), summary.daemon_pid);
    summary.cleaned_up = true;
    summary.seconds = started.elapsed().as_secs_f64();
    if let Some(error) = error {
        summary.error = Some(format!("{error:#}"));
    }
    if summary.left_behind.is_empty() {
        t.say("backends and daemon stopped, pins and bpffs mount removed, namespaces deleted");
    }
    t.heading("Summary");
    t.block(&summary.render(&t));
    let problems = summary.problems();
    if problems.is_empty() {
        t.say(&t.paint(Style::Green, "everything went as promised"));
    } else {
        for problem in &problems {
            t.say(&t.paint(Style::Red, &format!("not as expected: {problem}")));
        }
    }
    println!("{SUMMARY_PREFIX}{}", summary.json());
    summary
}

fn walk(
    lab: &mut DemoLab,
    t: &mut Terminal,
    options: Options,
    summary: &mut Summary,
) -> anyhow::Result<()> {
    interrupt::check()?;
    lab.deploy(ColorName::Blue, Release::Healthy("v1"));
    t.say(&format!(
        "Starting the daemon ({}) in the splitter host's namespace {}; every `splitter` \
         command below runs with --socket {}.",
        lab.lab.binary.display(),
        lab.lab.topology.router.name,
        lab.lab.work.socket().display()
    ));
    lab.start_daemon();
    summary.daemon_pid = lab.daemon_pid();
    interrupt::check()?;
    let mut walk = Walk::new(lab, t, Timing::new(options.fast));
    let result = walk.run(summary);
    walk.finish(summary);
    result
}

/// `--keep`: green gets its healthy release back, the lab stays up until Ctrl-C (bounded by
/// the backends' lifetime), with instructions to poke at it.
fn keep(lab: &mut DemoLab, t: &mut Terminal) {
    lab.deploy(ColorName::Green, Release::Healthy("v2"));
    t.heading("The lab keeps running (--keep)");
    t.say(
        "Green runs v2 again. In another terminal, as root, try (Ctrl-C here tears everything \
         down):",
    );
    t.block(&lab.poke_instructions());
    let limit = MAX_LIFETIME - Duration::from_secs(60);
    t.say(&format!(
        "waiting for Ctrl-C (at most {} minutes) ...",
        limit.as_secs() / 60
    ));
    let _ = interrupt::sleep(limit);
}
