//! `cargo xtask bench --compare`: the splitter against nftables, IPVS, HAProxy, plain routing
//! and a bare XDP forwarder on one namespace topology, printed as the README's Markdown.
//!
//! Options: `--runs N` (default 3), `--only packet-rate,connections,scale`,
//! `--alternatives native,generic,nft,ipvs,haproxy,routing,xdp`, `--budget SECONDS`,
//! `--quick` (one short run of each, for development), `--pps-window SECONDS` (the saturated
//! window, e.g. long enough to profile the router in), `--markdown FILE` (also write the
//! report there), `--command TEXT` (the command line the report quotes).

use std::time::Duration;

use anyhow::Context as _;
use splitter_tests::compare::{self, Options, alternatives::Alternative, report};

fn arg(name: &str) -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

fn flag(name: &str) -> bool {
    std::env::args().any(|a| a == name)
}

fn alternative(name: &str) -> anyhow::Result<Alternative> {
    Ok(match name {
        "native" => Alternative::SplitterNative,
        "generic" => Alternative::SplitterGeneric,
        "nft" => Alternative::Nftables,
        "ipvs" => Alternative::Ipvs,
        "haproxy" => Alternative::Haproxy,
        "routing" => Alternative::Routing,
        "xdp" => Alternative::XdpForwarder,
        _ => anyhow::bail!(
            "unknown alternative {name:?} (native, generic, nft, ipvs, haproxy, routing, xdp)"
        ),
    })
}

fn options() -> anyhow::Result<Options> {
    let mut options = Options::default();
    if flag("--quick") {
        options.runs = 1;
        options.pps_window = Duration::from_millis(500);
        options.ndr_steps = 5;
        options.ndr_trial = Duration::from_millis(150);
        options.http_load.duration = Duration::from_secs(1);
        options.scale_repeat = 100_000;
    }
    if let Some(runs) = arg("--runs") {
        options.runs = runs.parse().context("--runs N")?;
    }
    if let Some(window) = arg("--pps-window") {
        options.pps_window =
            Duration::from_secs_f64(window.parse().context("--pps-window SECONDS")?);
    }
    if let Some(budget) = arg("--budget") {
        options.budget = Duration::from_secs(budget.parse().context("--budget SECONDS")?);
    }
    if let Some(only) = arg("--only") {
        let parts: Vec<&str> = only.split(',').collect();
        for part in &parts {
            anyhow::ensure!(
                matches!(*part, "packet-rate" | "connections" | "scale"),
                "--only takes packet-rate, connections, scale; not {part:?}"
            );
        }
        options.packet_rate = parts.contains(&"packet-rate");
        options.connections = parts.contains(&"connections");
        options.scale = parts.contains(&"scale");
    }
    if let Some(list) = arg("--alternatives") {
        options.alternatives = list.split(',').map(alternative).collect::<Result<_, _>>()?;
    }
    Ok(options)
}

fn main() -> anyhow::Result<()> {
    compare::process::clean_up_on_signal();
    anyhow::ensure!(
        unsafe { libc::geteuid() } == 0,
        "the comparison needs root (CAP_BPF, CAP_NET_ADMIN, CAP_SYS_ADMIN) to load XDP \
         programs and build network namespaces; run `sudo -E cargo xtask bench --compare`"
    );
    let options = options()?;
    let command = arg("--command").unwrap_or_else(|| "cargo xtask bench --compare".to_owned());
    eprintln!(
        "comparison: {} runs, budget {} s, alternatives {:?}",
        options.runs,
        options.budget.as_secs(),
        options.alternatives
    );
    let results = compare::run(&options)?;
    let markdown = report::markdown(&results, &command);
    if let Some(path) = arg("--markdown") {
        std::fs::write(&path, &markdown).with_context(|| format!("writing {path}"))?;
    }
    println!("{markdown}");
    Ok(())
}
