//! `splitter backend disable|enable|drain SERVICE BACKEND`: the operator's word on one
//! backend (`HAProxy`'s maint / ready / drain), without editing the file; persisted by the
//! daemon. `drain --wait` watches the backend's live connections until they are zero.

use std::{
    io::Write as _,
    path::Path,
    time::{Duration, Instant},
};

use crate::{
    control::{
        client::{Client, ClientError},
        protocol::{BackendReport, Reply, Request},
    },
    health::Admin,
    units::parse_duration,
};

/// How often `--wait` looks at the live connections.
const POLL: Duration = Duration::from_millis(250);

#[derive(Debug, clap::Subcommand)]
pub enum BackendCommand {
    /// Take BACKEND out of rotation (maintenance): no new flow; its pinned flows stay.
    Disable { service: String, backend: String },
    /// Put BACKEND back in rotation (if its checks pass).
    Enable { service: String, backend: String },
    /// No new flow to BACKEND; its live connections are shown until they close.
    Drain {
        service: String,
        /// `IP:port`, as written in the config.
        backend: String,
        /// Watch until BACKEND has no live connection: exit 0 then, 7 at --timeout.
        #[arg(long)]
        wait: bool,
        /// Give up waiting after this long (implies --wait), e.g. `30s`, `5m`.
        #[arg(long, value_name = "DURATION")]
        timeout: Option<String>,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum BackendCliError {
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error("--timeout `{0}` is not a duration (e.g. 30s, 500ms, 5m)")]
    Timeout(String),
    #[error("writing to stdout: {0}")]
    Stdout(#[from] std::io::Error),
    #[error(
        "{service}: backend {backend} still has {live} live connection{s} after {after:.1}s",
        s = if *live == 1 { "" } else { "s" }
    )]
    NotDrained {
        service: String,
        backend: String,
        live: u64,
        after: f64,
    },
}

pub fn execute(command: BackendCommand, socket: &Path) -> Result<(), BackendCliError> {
    let (service, backend, admin, wait, timeout) = match command {
        BackendCommand::Disable { service, backend } => {
            (service, backend, Admin::Disabled, false, None)
        }
        BackendCommand::Enable { service, backend } => {
            (service, backend, Admin::Ready, false, None)
        }
        BackendCommand::Drain {
            service,
            backend,
            wait,
            timeout,
        } => (service, backend, Admin::Draining, wait, timeout),
    };
    let timeout = timeout
        .as_deref()
        .map(|text| parse_duration(text).ok_or_else(|| BackendCliError::Timeout(text.to_owned())))
        .transpose()?;
    let mut out = std::io::stdout().lock();
    let mut client = Client::connect(socket)?;
    let started = Instant::now();
    let Reply::Backend(report) = client.request(&Request::Backend {
        service: service.clone(),
        backend: backend.clone(),
        admin,
    })?
    else {
        unreachable!("backend answers a backend report");
    };
    let BackendReport {
        backend: address,
        color,
        previous,
        state,
        ..
    } = report;
    writeln!(
        out,
        "{service}: {color} backend {address} {}: {previous} -> {state}",
        admin.name()
    )?;
    let mut live = live_of(&mut client, &service, address)?;
    if admin == Admin::Ready {
        return Ok(());
    }
    writeln!(out, "{service}: {address} has {live} live connection(s)")?;
    if !wait && timeout.is_none() {
        return Ok(());
    }
    let deadline = timeout.map(|timeout| started + timeout);
    loop {
        if live == 0 {
            writeln!(
                out,
                "{service}: {address} drained in {:.1}s",
                started.elapsed().as_secs_f64()
            )?;
            return Ok(());
        }
        if deadline.is_some_and(|deadline| Instant::now() >= deadline) {
            return Err(BackendCliError::NotDrained {
                service,
                backend: address.to_string(),
                live,
                after: started.elapsed().as_secs_f64(),
            });
        }
        std::thread::sleep(POLL);
        let now = live_of(&mut client, &service, address)?;
        if now != live {
            writeln!(
                out,
                "  {:>6.1}s  {address} {now} live connection(s)",
                started.elapsed().as_secs_f64()
            )?;
            out.flush()?;
        }
        live = now;
    }
}

fn live_of(
    client: &mut Client,
    service: &str,
    backend: std::net::SocketAddr,
) -> Result<u64, BackendCliError> {
    let Reply::Status(report) = client.request(&Request::Status)? else {
        unreachable!("status answers a status");
    };
    Ok(report
        .services
        .iter()
        .filter(|status| status.name == service)
        .flat_map(|status| &status.colors)
        .flat_map(|color| &color.backends)
        .filter(|row| row.address == backend)
        .map(|row| row.live_flows)
        .sum())
}
