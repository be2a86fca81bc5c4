//! `cargo xtask bench --health`: health-check CPU of the splitter daemon beside HAProxy, 1 000
//! backends checked every second (`splitter_tests::bench_health`), printed as the README's
//! table.

use std::time::Duration;

use anyhow::Context as _;
use splitter_tests::{
    bench_health::{Options, markdown, measure, require},
    compare::process::clean_up_on_signal,
};

fn arg(name: &str) -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

fn seconds(name: &str, default: u64) -> anyhow::Result<Duration> {
    let value = arg(name)
        .map(|value| value.parse())
        .transpose()
        .with_context(|| format!("{name} SECONDS"))?
        .unwrap_or(default);
    Ok(Duration::from_secs(value))
}

fn main() -> anyhow::Result<()> {
    // Ctrl-C: stop nginx and HAProxy (by PID) and delete the namespaces (`splcmp-*-<pid>`).
    clean_up_on_signal();
    require(&["nginx", "haproxy", "nft", "ss"])?;
    let backends = arg("--backends")
        .map(|value| value.parse())
        .transpose()
        .context("--backends N")?
        .unwrap_or(1000);
    let options = Options {
        backends,
        warmup: seconds("--warmup", 10)?,
        window: seconds("--window", 30)?,
    };
    let started = std::time::Instant::now();
    let figures = measure(&options)?;
    println!(
        "\nHealth checks, {} backends every 1 s, CPU over {:?} after a {:?} warm-up (in {:.0} s):\n",
        options.backends,
        options.window,
        options.warmup,
        started.elapsed().as_secs_f64()
    );
    print!("{}", markdown(&figures));
    Ok(())
}
