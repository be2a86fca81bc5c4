//! What the daemon's tasks share: the application behind a lock, the cached flow-table scan,
//! the daemon's own metrics, and the "stop now" signal `unload` raises.

use std::{
    sync::{Arc, Mutex, MutexGuard},
    time::{Duration, Instant},
};

use tokio::sync::Notify;

use super::{App, AppError, status::Census};
use crate::{
    control::{
        protocol::{
            ErrorKind, ErrorReply, FlowStates, FlowTables, Reply, Request, Response, StatusReport,
            TableFill,
        },
        server::Handler,
    },
    dataplane::{DataplaneError, maps::FlowScan},
    metrics::{DaemonMetrics, SnapshotSource},
};

/// A flow-table scan that took at least [`SLOW_SCAN`] (a big table: 200k flows take a few
/// hundred ms) is reused for twice as long as it took, at most [`LIVE_FLOWS_MAX_AGE`], so many
/// clients cost about one scan a second. Faster scans are never reused by a request that
/// arrived after they started: small tables give exact gauges.
const SLOW_SCAN: Duration = Duration::from_millis(100);
const LIVE_FLOWS_MAX_AGE: Duration = Duration::from_secs(1);

/// When a scan started, when it finished, what it found.
type LiveFlows = (Instant, Instant, Arc<Census>);

pub struct Shared {
    /// `None` once the data plane has been unloaded (the daemon is stopping).
    app: Mutex<Option<App>>,
    live: tokio::sync::Mutex<Option<LiveFlows>>,
    pub metrics: DaemonMetrics,
    /// Raised after `unload`: the daemon exits.
    pub stop: Notify,
    /// FLEET: `[fleet]` membership (`daemon/fleet.rs`); `None`: this host alone.
    pub(super) fleet: Option<Arc<crate::fleet::Fleet>>,
}

#[derive(Debug, thiserror::Error)]
pub enum SharedError {
    #[error(transparent)]
    App(#[from] AppError),
    #[error("the data plane was unloaded; the daemon is stopping")]
    Unloaded,
    #[error(transparent)]
    Fleet(#[from] crate::fleet::FleetError),
    #[error("this host is not part of a fleet (no [fleet] in its config)")]
    NoFleet,
}

impl SharedError {
    fn kind(&self) -> ErrorKind {
        match self {
            SharedError::App(error) => error.kind(),
            SharedError::Fleet(
                crate::fleet::FleetError::Mismatch { .. }
                | crate::fleet::FleetError::NoOverride { .. }
                | crate::fleet::FleetError::NoRollout { .. }
                | crate::fleet::FleetError::RolloutBusy { .. }
                | crate::fleet::FleetError::NotForFleet { .. },
            )
            | SharedError::NoFleet => ErrorKind::InvalidArgument,
            SharedError::Unloaded | SharedError::Fleet(_) => ErrorKind::Runtime,
        }
    }
}

impl Shared {
    pub fn new(app: App, metrics: DaemonMetrics) -> Self {
        Self {
            app: Mutex::new(Some(app)),
            live: tokio::sync::Mutex::new(None),
            metrics,
            stop: Notify::new(),
            fleet: None,
        }
    }

    /// FLEET: this host is part of `fleet`.
    pub fn with_fleet(mut self, fleet: Arc<crate::fleet::Fleet>) -> Self {
        self.fleet = Some(fleet);
        self
    }

    /// The lock and the work under it (map writes, fsync of the state file, flow scans of a
    /// reload) run with `block_in_place`: the runtime moves its other tasks (metrics, control,
    /// ticks) to another worker meanwhile. Every caller of this is inside `blocking`.
    fn app(&self) -> MutexGuard<'_, Option<App>> {
        // A panic while holding the lock leaves maps consistent (each write is atomic).
        self.app
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub(super) fn with_app<T>(
        &self,
        f: impl FnOnce(&mut App) -> Result<T, AppError>,
    ) -> Result<T, SharedError> {
        blocking(|| {
            let mut guard = self.app();
            let app = guard.as_mut().ok_or(SharedError::Unloaded)?;
            Ok(f(app)?)
        })
    }

    /// Answers one control request.
    pub async fn handle(&self, request: Request) -> Response {
        let command = request.name();
        let result = match request {
            Request::Status => self
                .status()
                .await
                .map(|report| Reply::Status(Box::new(report))),
            // FLEET: with `[fleet]`, weight commands go to etcd (`daemon/fleet.rs`).
            Request::SetWeight {
                service,
                green_weight,
                no_wait,
            } => match &self.fleet {
                Some(fleet) => {
                    let desired = crate::fleet::Desired::weight(green_weight);
                    self.fleet_write(fleet, &service, desired, no_wait).await
                }
                None => self
                    .with_app(|app| app.set_weight(&service, green_weight))
                    .map(Reply::Weight),
            },
            Request::Switch {
                service,
                color,
                no_wait,
                local,
            } => match &self.fleet {
                Some(fleet) if !local => {
                    let desired = crate::fleet::Desired::switch(color);
                    self.fleet_write(fleet, &service, desired, no_wait).await
                }
                _ => self.local_switch(&service, color),
            },
            request @ (Request::FleetStatus
            | Request::FleetClearOverride { .. }
            | Request::FleetAdoptDefinition { .. }) => self.fleet_command(request).await,
            Request::Drain {
                service,
                color,
                cut,
            } => self
                .with_app(|app| app.drain(&service, color, cut))
                .map(Reply::Drained),
            Request::WhatIf {
                service,
                green_weight,
            } => self.what_if(&service, green_weight).map(Reply::WhatIf),
            // FLEET: with `[fleet]`, backend states go to etcd (`daemon/fleet.rs`).
            Request::Backend {
                service,
                backend,
                admin,
            } => match &self.fleet {
                Some(fleet) => self.fleet_backend(fleet, &service, &backend, admin).await,
                None => self
                    .with_app(|app| app.backend_command(&service, &backend, admin))
                    .map(Reply::Backend),
            },
            Request::Reload => self.reload().map(Reply::Reloaded),
            Request::Unload => self.unload().map(Reply::Unloaded),
            // FLEET: with `[fleet]`, rollouts are the fleet's (`daemon/fleet.rs`).
            request if self.fleet.is_some() && super::fleet::is_rollout(&request) => {
                self.fleet_rollout(request).await
            }
            Request::RolloutStart {
                service,
                overrides,
                from_current,
            } => self
                .with_app(|app| app.rollout_start(&service, &overrides, from_current))
                .map(rollout_reply),
            Request::RolloutRetry { service } => self
                .with_app(|app| app.rollout_retry(&service))
                .map(rollout_reply),
            Request::RolloutList => self.with_app(|app| app.rollout_list()).map(Reply::Rollouts),
            Request::RolloutStatus { service } => self
                .with_app(|app| app.rollout_status(&service))
                .map(rollout_reply),
            Request::RolloutPause { service } => self
                .with_app(|app| app.rollout_pause(&service))
                .map(rollout_reply),
            Request::RolloutResume { service } => self
                .with_app(|app| app.rollout_resume(&service))
                .map(rollout_reply),
            Request::RolloutPromote { service, full } => self
                .with_app(|app| app.rollout_promote(&service, full))
                .map(rollout_reply),
            Request::RolloutAbort { service, cut } => self
                .with_app(|app| app.rollout_abort(&service, cut))
                .map(rollout_reply),
        };
        self.metrics.request(command, result.is_ok());
        match result {
            Ok(reply) => Response::Ok(reply),
            Err(error) => {
                tracing::warn!(command, %error, "request refused");
                Response::Error(ErrorReply {
                    kind: error.kind(),
                    message: error.to_string(),
                })
            }
        }
    }

    /// `what-if`: the inputs under the lock, the scan of the flow tables without it.
    fn what_if(
        &self,
        service: &str,
        green_weight: u32,
    ) -> Result<crate::control::protocol::WhatIfReport, SharedError> {
        let (inputs, scan) = self.with_app(|app| app.what_if_inputs(service, green_weight))?;
        let pinned = blocking(|| scan.pinned(&inputs.backend_ids))
            .map_err(AppError::from)
            .map_err(SharedError::from)?;
        Ok(super::whatif::report(&inputs, &pinned))
    }

    /// `reload` and SIGHUP. The flow-table scan that decides which removed backends' reply
    /// mappings can go runs outside the application lock.
    pub fn reload(&self) -> Result<crate::control::protocol::ReloadReport, SharedError> {
        let result = self.with_app(App::reload);
        self.metrics.reload(result.is_ok());
        let report = result?;
        // FLEET: service definitions may have changed: the session agrees on them again.
        if let Some(fleet) = &self.fleet {
            fleet.reloaded();
        }
        // The established path does not look services up: a removed service's flows go now.
        let unserved = self
            .with_app(|app| Ok((app.served(), app.flow_scan())))
            .and_then(|(served, scan)| {
                blocking(|| scan.unpin_unserved(&served))
                    .map_err(AppError::from)
                    .map_err(SharedError::from)
            });
        match unserved {
            Ok(0) => {}
            Ok(flows) => tracing::info!(flows, "unpinned the flows of removed services"),
            Err(error) => tracing::warn!(%error, "could not unpin the flows of removed services"),
        }
        let orphans = self.with_app(|app| Ok((app.orphan_backends()?, app.flow_scan())));
        match orphans {
            Ok((orphans, _)) if orphans.is_empty() => {}
            Ok((orphans, scan)) => {
                let forgotten = blocking(|| scan.census())
                    .map_err(AppError::from)
                    .map_err(SharedError::from)
                    .and_then(|census| {
                        self.with_app(|app| app.forget_backends(&orphans, &census.backends))
                    });
                if let Err(error) = forgotten {
                    tracing::warn!(%error, "removed backends' reply mappings kept until the next reload");
                }
            }
            Err(error) => {
                tracing::warn!(%error, "removed backends' reply mappings kept until the next reload");
            }
        }
        Ok(report)
    }

    fn unload(&self) -> Result<crate::dataplane::Unloaded, SharedError> {
        let app = blocking(|| self.app().take()).ok_or(SharedError::Unloaded)?;
        let result = blocking(|| app.unload());
        self.stop.notify_one();
        Ok(result?)
    }

    /// One rollout tick: external checks first (outside the lock), then the analysis.
    pub async fn rollout_tick(&self) {
        let Some(wanted) = blocking(|| self.app().as_ref().map(App::rollout_checks)) else {
            return;
        };
        let mut checks = std::collections::BTreeMap::new();
        for (service, list) in wanted {
            checks.insert(service, crate::rollout::prometheus::evaluate(&list).await);
        }
        blocking(|| {
            if let Some(app) = self.app().as_mut() {
                app.rollout_tick(&checks);
            }
        });
    }

    /// One sampling tick; also retries saving the state file when it is behind.
    pub fn sample(&self) {
        blocking(|| {
            if let Some(app) = self.app().as_mut() {
                let now = Instant::now();
                app.sample(now);
                app.judge_outliers(now);
                app.flush_state();
            }
        });
    }

    /// The active checks to run (`checks.rs`).
    pub fn check_targets(&self) -> Vec<super::backends::CheckTarget> {
        blocking(|| {
            self.app()
                .as_ref()
                .map(App::check_targets)
                .unwrap_or_default()
        })
    }

    /// One active check's result.
    pub fn check_result(
        &self,
        service: &str,
        backend: std::net::SocketAddr,
        result: Result<(), crate::health::probe::ProbeError>,
    ) {
        blocking(|| {
            if let Some(app) = self.app().as_mut() {
                app.check_result(service, backend, result);
            }
        });
    }

    /// A snapshot for `status` and the metrics endpoint.
    pub async fn status(&self) -> Result<StatusReport, SharedError> {
        let census = self.census().await?;
        let mut report = self.with_app(|app| app.status(&census))?;
        report.fleet = self.fleet.as_ref().map(|fleet| fleet.local_status());
        Ok(report)
    }

    /// Flows per backend id and state, table fill (see [`SLOW_SCAN`]). The scan runs on a
    /// blocking thread with its own map handles, without the application lock; concurrent
    /// requests wait for one scan.
    async fn census(&self) -> Result<Arc<Census>, SharedError> {
        let arrived = Instant::now();
        let mut cache = self.live.lock().await;
        if let Some((started, finished, census)) = cache.as_ref() {
            let took = finished.duration_since(*started);
            let fresh = *started >= arrived;
            let big_and_recent =
                took >= SLOW_SCAN && finished.elapsed() < (took * 2).min(LIVE_FLOWS_MAX_AGE);
            if fresh || big_and_recent {
                return Ok(census.clone());
            }
        }
        let scan = self.with_app(|app| Ok(app.flow_scan()))?;
        let started = Instant::now();
        let census = tokio::task::spawn_blocking(move || scan_census(&scan))
            .await
            .expect("flow scan does not panic")
            .map_err(AppError::from)?;
        let census = Arc::new(census);
        *cache = Some((started, Instant::now(), census.clone()));
        Ok(census)
    }
}

/// One scan of the flow tables, in the status report's terms.
fn scan_census(scan: &FlowScan) -> Result<Census, DataplaneError> {
    let census = scan.census()?;
    let fill = |table: usize, family: usize| TableFill {
        entries: census.entries[table][family],
        capacity: census.capacity[table][family],
    };
    let tables = FlowTables {
        flows: fill(0, 0),
        flows6: fill(0, 1),
        pending: fill(1, 0),
        pending6: fill(1, 1),
    };
    Ok(Census {
        backends: census
            .backends
            .into_iter()
            .map(|(id, counts)| {
                let states = FlowStates {
                    pending: counts.pending,
                    established: counts.established,
                    closing: counts.closing,
                };
                (id, states)
            })
            .collect(),
        tables,
    })
}

fn rollout_reply(report: crate::control::protocol::RolloutReport) -> Reply {
    Reply::Rollout(Box::new(report))
}

/// The control server's view of the daemon.
impl Handler for Shared {
    fn handle(&self, request: Request) -> impl Future<Output = Response> + Send {
        Shared::handle(self, request)
    }
}

/// The metrics endpoint's view of the daemon.
impl SnapshotSource for Shared {
    type Error = SharedError;

    fn snapshot(&self) -> impl Future<Output = Result<StatusReport, SharedError>> + Send {
        self.status()
    }
}

/// Runs blocking work (the application lock, map writes, fsync) without stalling the runtime:
/// its worker hands its other tasks to another thread meanwhile (multi-threaded runtime).
fn blocking<T>(f: impl FnOnce() -> T) -> T {
    tokio::task::block_in_place(f)
}
