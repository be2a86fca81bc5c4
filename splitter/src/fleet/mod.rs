//! The fleet: hosts that share their runtime state through etcd (`[fleet]`).
//!
//! The services and pools stay in each host's file; the desired runtime state (weights, stable
//! colors, backends out of rotation) lives in etcd (`keys.rs`). Every daemon loads it, watches it and applies each change
//! through the same code path as a local command ([`Target`], implemented by the daemon); it
//! publishes its own record under a lease (`host.rs`). The CLI's `set-weight`/`switch`/`backend`
//! on any host write to etcd and wait until every live host has applied the revision (`write.rs`).
//!
//! Fail static: without etcd a host keeps what it applied last (its state file) and says so
//! (`status`, `splitter_fleet_connected 0`); `switch --local` is an override that stays in
//! force until `fleet clear-override`. When etcd returns, the host loads the desired state
//! again and converges through the same path (established flows stay pinned).
//!
//! - `keys.rs` the key layout, `desired.rs` the desired state of a service, `host.rs` the
//!   host record and the definition hash, `definition.rs` how the fleet's definition of a
//!   service moves (every live host converged on a new one, or `fleet adopt-definition`), `local.rs` what is kept in `state_dir`,
//!   `store.rs` the etcd connection, `watch.rs` the session (load, watch, apply, publish),
//!   `write.rs` the CLI's writes and `fleet status`, `report.rs` what the control API returns,
//!   `rollout.rs` the fleet's rollouts in etcd (start, abort, ...), `leader.rs` the rollout
//!   leadership (election under a lease) and the leader's judging, `signals.rs` what each
//!   host publishes for it and the sum over the live hosts.
//!
//! One rollout for the fleet: `rollout start` on any host writes the rollout to etcd; the one
//! daemon that holds the leadership (a key created under its lease, `leader.rs`) judges it on
//! the signals summed over every live host and writes each decision as desired state, which
//! every host applies like any fleet write. When the leader dies its lease lapses, another
//! daemon wins the key and resumes at the same step with a fresh window.

mod definition;
pub mod desired;
pub mod host;
pub mod keys;
mod leader;
mod local;
pub mod report;
pub mod rollout;
pub mod signals;
mod store;
mod watch;
mod write;

use std::{
    collections::BTreeMap,
    path::PathBuf,
    sync::{Arc, Mutex, MutexGuard},
};

use prometheus_client::{metrics::gauge::Gauge, registry::Registry};

pub use self::{desired::Desired, leader::lead, watch::run};
use self::{keys::Keys, local::LocalFleet, report::FleetLocalStatus};
use crate::{
    color::ColorName,
    config::{Service, fleet::Fleet as FleetConfig},
    state::StateError,
};

#[derive(Debug, thiserror::Error)]
pub enum FleetError {
    #[error("etcd {action} failed: {source}")]
    Store {
        action: &'static str,
        #[source]
        source: Box<etcd_client::Error>,
    },
    #[error("reading {path}: {source}")]
    TlsFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "not connected to the fleet's etcd ({reason}): nothing was written; on this host alone: `splitter switch SERVICE COLOR --local`"
    )]
    Disconnected { reason: String },
    #[error(
        "service `{service}`: this host's definition ({local}) differs from the fleet's ({fleet}): align the config files before changing it fleet-wide"
    )]
    Mismatch {
        service: String,
        local: String,
        fleet: String,
    },
    #[error("etcd key {key}: {problem}")]
    BadValue { key: String, problem: String },
    #[error("the watch of the fleet's desired state ended")]
    WatchEnded,
    #[error("the rollout leadership lease expired")]
    LeaseLost,
    #[error("applying the fleet's desired state of `{service}`: {message}")]
    Apply { service: String, message: String },
    #[error(transparent)]
    State(#[from] StateError),
    #[error("no local override on service `{service}`")]
    NoOverride { service: String },
    #[error(
        "service `{service}` already has a running or paused fleet rollout (last written by host `{host}`): abort it or let it finish first"
    )]
    RolloutBusy { service: String, host: String },
    #[error(
        "service `{service}` has no fleet rollout (start one with `splitter rollout start {service}`)"
    )]
    NoRollout { service: String },
    #[error(
        "service `{service}`: the fleet's rollout changed while this command wrote it: run it again"
    )]
    RolloutConflict { service: String },
    #[error("{what} is not available for fleet rollouts yet")]
    NotForFleet { what: &'static str },
}

impl FleetError {
    fn store(action: &'static str) -> impl Fn(etcd_client::Error) -> FleetError {
        move |source| FleetError::Store {
            action,
            source: Box::new(source),
        }
    }
}

/// What the fleet needs of the daemon: its service definitions and seed, and the one path
/// local weight commands take.
pub trait Target: Send + Sync + 'static {
    type Error: std::error::Error + Send + Sync + 'static;
    /// The configured services.
    fn services(&self) -> Result<Vec<Service>, Self::Error>;
    /// The hash seed the data plane runs.
    fn hash_seed(&self) -> Result<u32, Self::Error>;
    /// Brings `service` to `desired` (the `set-weight`/`switch` path); `false`: already there.
    fn apply(&self, service: &str, desired: &Desired) -> Result<bool, Self::Error>;
    /// Brings a backend of `service` to the operator state `admin` (the `backend
    /// disable|enable|drain` path); `false`: already there.
    fn apply_backend(
        &self,
        service: &str,
        backend: std::net::SocketAddr,
        admin: crate::state::Admin,
    ) -> Result<bool, Self::Error>;

    /// Each service's rollout signals per color, absolute (what this host publishes for the
    /// fleet's rollouts).
    fn signals(&self) -> Result<BTreeMap<String, crate::rollout::Window>, Self::Error>;
    /// Unpins the established flows of `service`'s `color` backends (the fleet's `rollout
    /// abort --cut`, the single-host `--cut` path); returns how many were unpinned.
    fn cut(&self, service: &str, color: ColorName) -> Result<usize, Self::Error>;
}

/// The fleet's gauges (`splitter_fleet_*`).
#[derive(Clone, Debug, Default)]
pub struct FleetMetrics {
    connected: Gauge,
    applied_revision: Gauge,
    mismatched: Gauge,
}

impl FleetMetrics {
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "splitter_fleet_connected",
            "1 while this host is connected to the fleet's etcd, 0 while it runs fail-static",
            self.connected.clone(),
        );
        registry.register(
            "splitter_fleet_applied_revision",
            "The etcd revision of the fleet's desired state this host has applied",
            self.applied_revision.clone(),
        );
        registry.register(
            "splitter_fleet_mismatched_services",
            "Services whose definition differs from the fleet's (fleet changes not applied)",
            self.mismatched.clone(),
        );
    }
}

/// The fleet membership of this daemon: configuration, the local view, the live client.
pub struct Fleet {
    config: FleetConfig,
    keys: Keys,
    state_dir: PathBuf,
    /// `splitter --version` of this daemon, published in the host record.
    version: &'static str,
    status: Mutex<FleetLocalStatus>,
    client: Mutex<Option<etcd_client::Client>>,
    metrics: FleetMetrics,
    /// Raised by `clear-override`: the session loads the desired state again.
    resync: tokio::sync::Notify,
}

impl Fleet {
    /// Reads `state_dir/fleet.json` (applied revision, overrides).
    pub fn new(
        config: FleetConfig,
        state_dir: PathBuf,
        version: &'static str,
    ) -> Result<Arc<Self>, FleetError> {
        let local = LocalFleet::load(&state_dir)?;
        let status = FleetLocalStatus {
            fleet: config.name.clone(),
            host: config.host.clone(),
            connected: false,
            applied_revision: local.applied_revision,
            overrides: local.overrides,
            mismatched: BTreeMap::new(),
            seed_mismatch: false,
            rollout_leader: false,
            last_error: Some("not connected yet".to_owned()),
        };
        let metrics = FleetMetrics::default();
        metrics.applied_revision.set(local.applied_revision);
        Ok(Arc::new(Self {
            keys: Keys::new(&config.name),
            config,
            state_dir,
            version,
            status: Mutex::new(status),
            client: Mutex::new(None),
            metrics,
            resync: tokio::sync::Notify::new(),
        }))
    }

    pub fn metrics(&self) -> &FleetMetrics {
        &self.metrics
    }

    /// This host's view (`status`).
    pub fn local_status(&self) -> FleetLocalStatus {
        self.lock().clone()
    }

    fn lock(&self) -> MutexGuard<'_, FleetLocalStatus> {
        self.status
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The live client, or why there is none.
    fn client(&self) -> Result<etcd_client::Client, FleetError> {
        let client = self
            .client
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        client.ok_or_else(|| FleetError::Disconnected {
            reason: self
                .lock()
                .last_error
                .clone()
                .unwrap_or_else(|| "no session".to_owned()),
        })
    }

    fn set_leading(&self, leading: bool) {
        self.lock().rollout_leader = leading;
    }

    fn set_connected(&self, client: Option<etcd_client::Client>, error: Option<String>) {
        let connected = client.is_some();
        *self
            .client
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = client;
        let mut status = self.lock();
        status.connected = connected;
        status.last_error = error;
        self.metrics.connected.set(i64::from(connected));
    }

    /// Saves the applied revision and the overrides (`fleet.json`).
    fn persist(&self) -> Result<(), FleetError> {
        let local = {
            let status = self.lock();
            LocalFleet {
                applied_revision: status.applied_revision,
                overrides: status.overrides.clone(),
            }
        };
        self.metrics.applied_revision.set(local.applied_revision);
        Ok(local.save(&self.state_dir)?)
    }

    /// `switch SERVICE COLOR --local` was applied: fleet changes of the service wait until
    /// [`Fleet::clear_override`].
    pub fn set_override(&self, service: &str, color: ColorName) -> Result<(), FleetError> {
        self.lock().overrides.insert(service.to_owned(), color);
        self.persist()
    }

    /// The config was reloaded: the session agrees on the service definitions again and
    /// reapplies the desired state.
    pub fn reloaded(&self) {
        self.resync.notify_one();
    }

    /// Ends a local override: the fleet's desired state applies again (at once when connected,
    /// else at the reconnection).
    pub fn clear_override(&self, service: &str) -> Result<(), FleetError> {
        if self.lock().overrides.remove(service).is_none() {
            return Err(FleetError::NoOverride {
                service: service.to_owned(),
            });
        }
        self.persist()?;
        self.resync.notify_one();
        Ok(())
    }
}

/// A host joining a fleet without a seed of its own (no `hash_seed` in its config, none drawn
/// in `state_dir` yet) starts with the fleet's, so flows that ECMP moves between hosts get the
/// same backend. A host that already has a seed keeps it: if it differs from the fleet's, the
/// session reports it and applies nothing. Unreachable etcd: the host starts on its own.
pub async fn adopt_seed(config: &crate::config::Validated) -> Result<(), FleetError> {
    let Some(fleet) = &config.fleet else {
        return Ok(());
    };
    if config.hash_seed.is_some() || crate::state::RandomSeed::read(&config.state_dir)?.is_some() {
        return Ok(());
    }
    match tokio::time::timeout(store::REQUEST_TIMEOUT, Fleet::seed(fleet)).await {
        Ok(Ok(Some(seed))) => {
            crate::state::RandomSeed::store(&config.state_dir, seed)?;
            tracing::info!("fleet: new host: the data plane starts with the fleet's hash seed");
        }
        Ok(Ok(None)) => {
            tracing::info!("fleet: no seed yet: this host's becomes the fleet's");
        }
        Ok(Err(error)) => {
            tracing::warn!(%error, "fleet: could not read the fleet's seed: starting with a random one (reported if it differs)");
        }
        Err(_) => {
            tracing::warn!(
                "fleet: etcd did not answer: starting with a random seed (reported if it differs from the fleet's)"
            );
        }
    }
    Ok(())
}
