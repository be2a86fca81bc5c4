//! `splitter drain SERVICE COLOR`: every new flow to the other color (one map write, as
//! `switch`), then the live connections of COLOR per backend, watched until they are zero
//! (`--wait`, `--timeout`), and unpinned at the deadline with `--cut`.

use std::{
    io::Write as _,
    path::Path,
    time::{Duration, Instant},
};

use crate::{
    config::ColorName,
    control::{
        client::{Client, ClientError},
        protocol::{DrainReport, Reply, Request, StatusReport},
    },
    units::{parse_duration, ppm_to_percent},
};

/// How often `--wait` looks at the live connections.
const POLL: Duration = Duration::from_millis(250);

/// The arguments of `drain`.
#[derive(Debug, clap::Args)]
pub struct DrainArgs {
    pub service: String,
    /// The color to drain: its new flows go to the other one.
    pub color: ColorName,
    /// Watch until COLOR has no live connection: exit 0 then, 7 at --timeout.
    #[arg(long)]
    pub wait: bool,
    /// Give up waiting after this long (implies --wait), e.g. `30s`, `5m`.
    #[arg(long, value_name = "DURATION")]
    pub timeout: Option<String>,
    /// At the --timeout, unpin the flows COLOR still has (their connections break), as
    /// `rollout abort --cut`; then exit 0.
    #[arg(long, requires = "timeout")]
    pub cut: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum DrainCliError {
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error("--timeout `{0}` is not a duration (e.g. 30s, 500ms, 5m)")]
    Timeout(String),
    #[error("writing to stdout: {0}")]
    Stdout(#[from] std::io::Error),
    #[error(
        "{service}: {color} still has {live} live connection{s} after {after:.1}s ({backends}); `--cut` ends them at the deadline",
        s = if *live == 1 { "" } else { "s" }
    )]
    NotDrained {
        service: String,
        color: ColorName,
        live: u64,
        after: f64,
        backends: String,
    },
}

pub fn execute(args: DrainArgs, socket: &Path) -> Result<(), DrainCliError> {
    let timeout = args
        .timeout
        .as_deref()
        .map(|text| parse_duration(text).ok_or_else(|| DrainCliError::Timeout(text.to_owned())))
        .transpose()?;
    let mut out = std::io::stdout().lock();
    let mut client = Client::connect(socket)?;
    let drain = |client: &mut Client, cut: bool| -> Result<DrainReport, DrainCliError> {
        match client.request(&Request::Drain {
            service: args.service.clone(),
            color: args.color,
            cut,
        })? {
            Reply::Drained(report) => Ok(report),
            _ => unreachable!("drain answers a drain report"),
        }
    };
    let started = Instant::now();
    let report = drain(&mut client, false)?;
    writeln!(
        out,
        "{}: every new flow to {} (green weight {}% -> {}%); established flows of {} stay until they close",
        report.service,
        args.color.other(),
        ppm_to_percent(report.previous_green_weight),
        ppm_to_percent(report.green_weight),
        args.color,
    )?;
    let mut live = live_of(&mut client, &args.service, args.color)?;
    writeln!(
        out,
        "{}: {} has {}",
        args.service,
        args.color,
        describe(&live)
    )?;
    if !args.wait && timeout.is_none() {
        return Ok(());
    }
    let deadline = timeout.map(|timeout| started + timeout);
    loop {
        let total: u64 = live.iter().map(|(_, n)| n).sum();
        if total == 0 {
            writeln!(
                out,
                "{}: {} drained in {:.1}s",
                args.service,
                args.color,
                started.elapsed().as_secs_f64()
            )?;
            return Ok(());
        }
        if deadline.is_some_and(|deadline| Instant::now() >= deadline) {
            if args.cut {
                let cut = drain(&mut client, true)?;
                writeln!(
                    out,
                    "{}: --timeout reached with {}: {} flow{} of {} unpinned (those connections break)",
                    args.service,
                    describe(&live),
                    cut.unpinned,
                    if cut.unpinned == 1 { "" } else { "s" },
                    args.color
                )?;
                return Ok(());
            }
            return Err(DrainCliError::NotDrained {
                service: args.service,
                color: args.color,
                live: total,
                after: started.elapsed().as_secs_f64(),
                backends: backends(&live),
            });
        }
        std::thread::sleep(POLL);
        let now = live_of(&mut client, &args.service, args.color)?;
        if now != live {
            writeln!(
                out,
                "  {:>6.1}s  {} {}",
                started.elapsed().as_secs_f64(),
                args.color,
                describe(&now)
            )?;
            out.flush()?;
        }
        live = now;
    }
}

/// Live connections per backend of `color` (in pool order).
fn live_of(
    client: &mut Client,
    service: &str,
    color: ColorName,
) -> Result<Vec<(String, u64)>, DrainCliError> {
    let Reply::Status(report) = client.request(&Request::Status)? else {
        unreachable!("status answers a status");
    };
    Ok(live_per_backend(&report, service, color))
}

/// Live connections per backend of `color` in a status snapshot.
pub fn live_per_backend(
    report: &StatusReport,
    service: &str,
    color: ColorName,
) -> Vec<(String, u64)> {
    report
        .services
        .iter()
        .filter(|status| status.name == service)
        .flat_map(|status| &status.colors)
        .filter(|status| status.color == color)
        .flat_map(|status| &status.backends)
        .map(|backend| (backend.address.to_string(), backend.live_flows))
        .collect()
}

fn describe(live: &[(String, u64)]) -> String {
    let total: u64 = live.iter().map(|(_, n)| n).sum();
    if total == 0 {
        return "no live connection".to_owned();
    }
    format!(
        "{total} live connection{}: {}",
        if total == 1 { "" } else { "s" },
        backends(live)
    )
}

fn backends(live: &[(String, u64)]) -> String {
    live.iter()
        .map(|(backend, n)| format!("{backend} {n}"))
        .collect::<Vec<_>>()
        .join(", ")
}
