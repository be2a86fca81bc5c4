//! `splitter`: the daemon (`splitter daemon --config FILE`) and the CLI that drives it.
//!
//! The daemon, step by step: load and validate the config (nothing is touched before it
//! passes) -> claim the state directory -> bind the control socket and the metrics endpoint ->
//! adopt the pinned data plane (or load and pin one), attach, install the services -> serve
//! until SIGTERM/SIGINT (SIGHUP reloads) -> stop. Stopping leaves the data plane attached and
//! pinned, so traffic keeps flowing with the last weights; only `splitter unload` removes it.

#![deny(unsafe_code)]

use std::{path::Path, process::ExitCode, sync::Arc, time::Duration};

use anyhow::Context as _;
use clap::Parser as _;
use splitter::{
    cli::{Cli, Command, Exit},
    config::{Config, Validated},
    control::server::ControlServer,
    daemon::{App, AppError, shared::Shared},
    fleet::Fleet,
    metrics::{self, DaemonMetrics, Metrics},
    state::{self, DaemonLock},
};
use tokio::signal::unix::{SignalKind, signal};

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Daemon { config, log_format } => {
            if cli.socket.is_some() {
                eprintln!(
                    "splitter: --socket is for client commands; the daemon uses control.socket of its config"
                );
                return Exit::Usage.into();
            }
            splitter::logging::init(log_format);
            daemon(&config).into()
        }
        command => splitter::cli::run(command, cli.socket.as_deref()).into(),
    }
}

fn daemon(config_path: &Path) -> Exit {
    // 1. Load and validate the config: a bad file changes nothing.
    let config = match Config::load(config_path) {
        Ok(config) => config,
        Err(error) => {
            eprintln!("splitter: {error}");
            return Exit::InvalidConfig;
        }
    };
    match run_daemon(config_path, &config) {
        Ok(()) => Exit::Ok,
        Err(error) => {
            eprintln!("splitter: {}", one_line(&error));
            match error.downcast_ref::<AppError>() {
                Some(AppError::Config(_) | AppError::Plan(_)) => Exit::InvalidConfig,
                _ => Exit::Failure,
            }
        }
    }
}

/// The daemon's background work: counter samples, rollout judgement, health checks, and the
/// fleet's session (load, watch and apply the desired state, publish this host) and its
/// rollout leadership (publish the signals, judge the fleet's rollouts while leading).
fn spawn_workers(shared: &Arc<Shared>, fleet: Option<Arc<Fleet>>) -> Vec<tokio::task::AbortHandle> {
    let mut workers = vec![
        tokio::spawn(sample(shared.clone())).abort_handle(),
        tokio::spawn(judge_rollouts(shared.clone())).abort_handle(),
        tokio::spawn(splitter::daemon::checks::run(shared.clone())).abort_handle(),
    ];
    if let Some(fleet) = fleet {
        workers.push(
            tokio::spawn(splitter::fleet::lead(fleet.clone(), shared.clone())).abort_handle(),
        );
        workers.push(tokio::spawn(splitter::fleet::run(fleet, shared.clone())).abort_handle());
    }
    workers
}

fn run_daemon(config_path: &Path, config: &Validated) -> anyhow::Result<()> {
    // 2. The host: descriptors for every connection the caps allow, a bpffs that is one,
    //    directories nobody else controls; then claim the state directory (one daemon per
    //    state and data plane).
    match splitter::sys::raise_open_files_limit() {
        Ok((before, after)) if before != after => {
            tracing::info!(before, after, "open-files limit raised to the hard limit");
        }
        Ok(_) => {}
        Err(error) => tracing::warn!(%error, "could not raise the open-files limit"),
    }
    splitter::config::host::bpffs(&config.bpffs)?;
    splitter::config::host::private_dir("bpffs", &config.bpffs)?;
    state::create_dir(&config.state_dir)?;
    let _lock = DaemonLock::acquire(&config.state_dir)?;
    // Two workers: blocking work (fsync, map writes, flow scans) runs in `block_in_place` or
    // `spawn_blocking`, so control, metrics and rollout ticks keep being served meanwhile.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let result = runtime.block_on(async {
        // 3. Bind the metrics endpoint and the control socket before touching the kernel.
        let metrics_listener = metrics::bind(config.metrics)
            .await
            .with_context(|| format!("metrics endpoint {}", config.metrics))?;
        let control = ControlServer::bind(&config.socket)?;
        let mut terminate = signal(SignalKind::terminate())?;
        let mut interrupt = signal(SignalKind::interrupt())?;
        let mut hangup = signal(SignalKind::hangup())?;
        // 4. Data plane: adopt or load, attach, install the services (a new fleet host
        //    starts with the fleet's hash seed).
        splitter::fleet::adopt_seed(config).await?;
        let bpffs = config.bpffs.clone();
        let app = match App::start(config_path, config.clone()) {
            Ok(app) => app,
            Err(error) => {
                control.remove();
                return Err(error.into());
            }
        };
        let daemon_metrics = DaemonMetrics::default();
        let metrics = Metrics::new(&daemon_metrics).with_rollouts(app.rollout_metrics());
        let (fleet, metrics, shared) = join_fleet(config, metrics, Shared::new(app, daemon_metrics))?;
        let (metrics, shared) = (Arc::new(metrics), Arc::new(shared));
        tracing::info!(
            socket = %control.path().display(),
            metrics = %config.metrics,
            "serving"
        );
        // systemd (Type=notify): ready once the socket and metrics are bound and the data
        // plane serves. Without NOTIFY_SOCKET this does nothing.
        notify_systemd(sd_notify::NotifyState::Ready);
        // 5. Serve until told to stop; SIGHUP reloads.
        let socket_path = control.path().to_owned();
        let control_task = tokio::spawn(control.serve(
            shared.clone(),
            splitter::control::server::Limits {
                max_connections: config.max_connections,
                timeout: config.client_timeout,
            },
        ));
        let metrics_task = tokio::spawn(metrics::serve(
            metrics_listener,
            metrics,
            shared.clone(),
            metrics::HttpLimits {
                max_connections: config.metrics_max_connections,
                timeout: config.client_timeout,
            },
        ));
        let workers = spawn_workers(&shared, fleet);
        let unloaded = loop {
            tokio::select! {
                _ = terminate.recv() => break false,
                _ = interrupt.recv() => break false,
                () = shared.stop.notified() => break true,
                _ = hangup.recv() => {
                    let shared = shared.clone();
                    match tokio::task::spawn_blocking(move || shared.reload()).await {
                        Ok(Ok(_)) => tracing::info!("SIGHUP: reloaded"),
                        Ok(Err(error)) => tracing::error!(%error, "SIGHUP: reload refused, nothing changed"),
                        Err(error) => tracing::error!(%error, "SIGHUP: reload failed"),
                    }
                }
            }
        };
        // 6. Stop: the data plane stays attached and pinned unless it was unloaded.
        notify_systemd(sd_notify::NotifyState::Stopping);
        control_task.abort();
        metrics_task.abort();
        for worker in workers {
            worker.abort();
        }
        let _ = std::fs::remove_file(&socket_path);
        if unloaded {
            tracing::info!("data plane unloaded; daemon stopped");
        } else {
            tracing::info!(
                bpffs = %bpffs.display(),
                "daemon stopped; the data plane stays attached and pinned (`splitter unload` removes it)"
            );
        }
        // A last save of the state if it is behind (disk back since the last retry).
        let shared_for_flush = shared.clone();
        let _ = tokio::task::spawn_blocking(move || shared_for_flush.sample()).await;
        Ok(())
    });
    // Tasks still blocked (a client that never reads, a check waiting on its timeout) must
    // not hold up the exit: the data plane is pinned, nothing else needs a clean stop.
    runtime.shutdown_timeout(Duration::from_millis(100));
    result
}

/// With `[fleet]`: the fleet membership, its metrics, and the shared state that answers for it.
fn join_fleet(
    config: &Validated,
    metrics: Metrics,
    shared: Shared,
) -> anyhow::Result<(Option<Arc<Fleet>>, Metrics, Shared)> {
    let Some(fleet_config) = &config.fleet else {
        return Ok((None, metrics, shared));
    };
    let fleet = Fleet::new(
        fleet_config.clone(),
        config.state_dir.clone(),
        splitter::cli::VERSION,
    )?;
    Ok((
        Some(fleet.clone()),
        metrics.with_fleet(fleet.metrics()),
        shared.with_fleet(fleet),
    ))
}

/// Samples the counters once a second (rates and measured shares for `status`).
async fn sample(shared: Arc<Shared>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tick.tick().await;
        shared.sample();
    }
}

/// Judges running rollouts every `TICK` (they run inside the daemon: closing the CLI does
/// not stop them).
async fn judge_rollouts(shared: Arc<Shared>) {
    let mut tick = tokio::time::interval(splitter::daemon::rollouts::TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tick.tick().await;
        shared.rollout_tick().await;
    }
}

/// Tells systemd (when it started us with `NOTIFY_SOCKET`) where the daemon stands.
fn notify_systemd(state: sd_notify::NotifyState<'_>) {
    if let Err(error) = sd_notify::notify(false, &[state]) {
        tracing::warn!(%error, "could not notify systemd");
    }
}

/// The error and its causes on one line; causes our typed errors already print are skipped.
fn one_line(error: &anyhow::Error) -> String {
    let mut text = error.to_string();
    for cause in error.chain().skip(1) {
        let cause = cause.to_string();
        if !text.contains(&cause) {
            text = format!("{text}: {cause}");
        }
    }
    text
}
