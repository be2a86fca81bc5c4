//! The daemon's application state: the validated config, the pinned data plane, the persisted
//! weights, and the operations the control API exposes (the weight commands in `weights.rs`,
//! the status snapshot in `status.rs`). Everything here is synchronous; the
//! async parts (socket, metrics endpoint, signals) live in `control`, `metrics` and `main.rs`.

pub mod reconcile;
pub mod rollouts;
pub mod sampler;
pub mod shared;
mod status;
mod weights;

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    path::{Path, PathBuf},
    time::Instant,
};

use splitter_common::WEIGHT_SCALE;

use self::{
    reconcile::{Desired, InstalledService, Plan, PlanError, ServiceAddress},
    sampler::Sampler,
};
use crate::{
    config::{ColorName, Config, ConfigError, Validated},
    control::protocol::{ErrorKind, ReloadReport},
    dataplane::{
        Attachment, Dataplane, DataplaneError, LoadOptions, PinPolicy, Unloaded, maps::FlowScan,
        services::socket_addr,
    },
    metrics::RolloutMetrics,
    state::{ServiceState, State, StateError},
};

/// Why a daemon operation failed; [`AppError::kind`] is what the CLI's exit code is made from.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    State(#[from] StateError),
    #[error(transparent)]
    Dataplane(#[from] DataplaneError),
    #[error(transparent)]
    Plan(#[from] PlanError),
    #[error(transparent)]
    Rollout(Box<rollouts::RolloutError>),
    #[error("no service `{name}` (configured: {known})")]
    UnknownService { name: String, known: String },
    #[error("green weight {ppm} parts per million is outside 0..={WEIGHT_SCALE}")]
    WeightRange { ppm: u32 },
    #[error(
        "{setting} changed from {from} to {to}: {remedy}; nothing was changed (put it back to reload the rest)"
    )]
    RestartRequired {
        setting: &'static str,
        from: String,
        to: String,
        remedy: &'static str,
    },
}

impl From<rollouts::RolloutError> for AppError {
    fn from(error: rollouts::RolloutError) -> Self {
        AppError::Rollout(Box::new(error))
    }
}

impl AppError {
    pub fn kind(&self) -> ErrorKind {
        match self {
            AppError::Config(_) | AppError::Plan(_) => ErrorKind::InvalidConfig,
            AppError::UnknownService { .. } => ErrorKind::UnknownService,
            AppError::WeightRange { .. } | AppError::Rollout(_) => ErrorKind::InvalidArgument,
            AppError::RestartRequired { .. } => ErrorKind::RestartRequired,
            AppError::State(_) | AppError::Dataplane(_) => ErrorKind::Runtime,
        }
    }
}

pub struct App {
    config_path: PathBuf,
    config: Validated,
    dataplane: Dataplane,
    state: State,
    /// What the kernel holds, re-read after every change.
    installed: BTreeMap<ServiceAddress, InstalledService>,
    sampler: Sampler,
    started: Instant,
    /// Rollout step, phase and decisions per service (`rollouts.rs` keeps them current).
    rollout_metrics: RolloutMetrics,
}

impl App {
    /// Adopts the pinned data plane (or loads and pins one), attaches it to the configured
    /// interfaces, and installs the configured services with their persisted weights.
    pub fn start(config_path: &Path, config: Validated) -> Result<Self, AppError> {
        let state = State::load(&config.state_dir)?;
        let options = LoadOptions {
            flow_table_size: config.flow_table_size,
            hash_seed: config.hash_seed,
            handshake_timeout_ns: crate::units::nanos(config.handshake_timeout),
        };
        let dataplane = Dataplane::open(
            &options,
            PinPolicy::Pinned {
                bpffs: &config.bpffs,
            },
        )?;
        tracing::info!(
            bpffs = %config.bpffs.display(),
            origin = dataplane.origin.name(),
            "data plane ready"
        );
        let mut app = Self {
            config_path: config_path.to_owned(),
            installed: reconcile::installed(&dataplane.maps)?,
            config: config.clone(),
            dataplane,
            state,
            sampler: Sampler::default(),
            started: Instant::now(),
            rollout_metrics: RolloutMetrics::default(),
        };
        let report = app.apply(config)?;
        log_report(&report, "configuration applied");
        app.resume_rollouts_after_restart();
        Ok(app)
    }

    pub fn config(&self) -> &Validated {
        &self.config
    }

    /// The rollout metric families this application keeps current (for the registry).
    pub fn rollout_metrics(&self) -> &RolloutMetrics {
        &self.rollout_metrics
    }

    pub fn config_path(&self) -> &Path {
        &self.config_path
    }

    /// A handle on the flow table, for scans that should not hold up the daemon.
    pub fn flow_scan(&self) -> FlowScan {
        self.dataplane.maps.flow_scan()
    }

    /// Brings interfaces, services and the state file to `config`. Everything that can fail
    /// for a config reason fails before the first change.
    fn apply(&mut self, config: Validated) -> Result<ReloadReport, AppError> {
        let desired: Vec<Desired<'_>> = config
            .services
            .iter()
            .map(|service| Desired {
                service,
                green_weight: self.state.initial_weight(
                    &service.name,
                    service.green_weight,
                    self.installed
                        .get(&(service.address, service.protocol))
                        .map(|installed| installed.config.green_weight),
                ),
            })
            .collect();
        let maps = &self.dataplane.maps;
        let plan = reconcile::plan(&desired, config.miss_hold, &self.installed, &mut |id| {
            maps.backend(id).is_ok_and(|backend| backend.family == 0)
        })?;
        let mut report = ReloadReport::default();
        self.dataplane
            .check_redirects(&config.redirect_interfaces)?;
        let (attached, detached) = self.attach_interfaces(&config)?;
        self.dataplane.set_redirects(&config.redirect_interfaces)?;
        report.attached = attached;
        report.detached = detached;
        // Weights first: if the daemon dies after this, the restart applies them.
        let mut state = State {
            version: self.state.version.max(1),
            services: BTreeMap::new(),
            // Rollouts of services that are still configured carry over.
            rollouts: self
                .state
                .rollouts
                .iter()
                .filter(|(name, _)| desired.iter().any(|d| &d.service.name == *name))
                .map(|(name, rollout)| (name.clone(), rollout.clone()))
                .collect(),
        };
        for wanted in &desired {
            state.services.insert(
                wanted.service.name.clone(),
                ServiceState {
                    green_weight: wanted.green_weight,
                    file_green_weight: wanted.service.green_weight,
                },
            );
        }
        state.save(&config.state_dir)?;
        self.state = state;
        self.write(&plan)?;
        for write in &plan.writes {
            if write.replaces {
                report.changed.push(write.name.clone());
            } else {
                report.added.push(write.name.clone());
            }
        }
        report.unchanged.clone_from(&plan.unchanged);
        let names = self.names();
        report.removed = plan
            .removals
            .iter()
            .map(|address| {
                names
                    .get(address)
                    .cloned()
                    .unwrap_or_else(|| format!("{}/{}", address.0, address.1.name()))
            })
            .collect();
        self.config = config;
        self.installed = reconcile::installed(&self.dataplane.maps)?;
        self.forget_removed_backends()?;
        if !plan.writes.is_empty() || !plan.removals.is_empty() {
            self.sampler.clear();
        }
        for name in &report.removed {
            self.rollout_metrics.remove(name);
        }
        self.publish_rollouts();
        Ok(report)
    }

    /// Attaches new interfaces, then detaches the ones no longer configured. On failure the
    /// interfaces attached by this call are detached again.
    fn attach_interfaces(
        &mut self,
        config: &Validated,
    ) -> Result<(Vec<String>, Vec<String>), AppError> {
        let mut attached = Vec::new();
        for interface in &config.interfaces {
            match self.dataplane.attach(interface, config.xdp_mode) {
                Ok(Attachment::Attached) => attached.push(interface.clone()),
                Ok(Attachment::Kept) => {}
                Err(error) => {
                    for interface in &attached {
                        let _ = self.dataplane.detach(interface);
                    }
                    return Err(error.into());
                }
            }
        }
        let mut detached = Vec::new();
        for interface in self.dataplane.interfaces() {
            if !config.interfaces.contains(&interface) && self.dataplane.detach(&interface)? {
                detached.push(interface);
            }
        }
        Ok((attached, detached))
    }

    fn write(&mut self, plan: &Plan) -> Result<(), AppError> {
        let maps = &mut self.dataplane.maps;
        for write in &plan.writes {
            if write.fresh_service_id {
                maps.reset_service_counters(write.spec.id)?;
            }
            for id in &write.fresh_backend_ids {
                maps.reset_backend_counters(*id)?;
            }
            maps.install_service(&write.spec)?;
        }
        for (address, protocol) in &plan.removals {
            maps.remove_service_at(address, *protocol)?;
        }
        Ok(())
    }

    /// Removes the reply-path entries of backends no service uses any more, once no pinned
    /// flow goes to them (until then their replies must still be rewritten).
    fn forget_removed_backends(&mut self) -> Result<(), AppError> {
        let in_use: std::collections::BTreeSet<(SocketAddr, u8)> = self
            .installed
            .values()
            .flat_map(|service| {
                ColorName::BOTH.into_iter().flat_map(move |color| {
                    service
                        .pool(color)
                        .iter()
                        .map(move |(_, address)| (*address, service.protocol.number()))
                })
            })
            .collect();
        let maps = &self.dataplane.maps;
        let orphans: Vec<_> = maps
            .backend_reverse_entries()?
            .into_iter()
            .filter(|(key, _)| {
                let address = socket_addr(&key.addr, key.port, key.family);
                !in_use.contains(&(address, key.protocol))
            })
            .collect();
        if orphans.is_empty() {
            return Ok(());
        }
        let (live, _) = self.flow_scan().count()?;
        for (key, reverse) in orphans {
            if live.get(&reverse.backend_id).copied().unwrap_or(0) == 0 {
                self.dataplane.maps.remove_backend_reverse(&key)?;
            }
        }
        Ok(())
    }

    /// Service names by address, from the config.
    fn names(&self) -> BTreeMap<ServiceAddress, String> {
        self.config
            .services
            .iter()
            .map(|service| ((service.address, service.protocol), service.name.clone()))
            .collect()
    }

    fn service_address(&self, name: &str) -> Result<ServiceAddress, AppError> {
        self.config
            .service(name)
            .map(|service| (service.address, service.protocol))
            .ok_or_else(|| AppError::UnknownService {
                name: name.to_owned(),
                known: self
                    .config
                    .services
                    .iter()
                    .map(|service| service.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
            })
    }

    /// Re-reads the config file and applies the difference. A bad file changes nothing.
    pub fn reload(&mut self) -> Result<ReloadReport, AppError> {
        let config = Config::load(&self.config_path)?;
        self.check_restart_settings(&config)?;
        let report = self.apply(config)?;
        log_report(&report, "configuration reloaded");
        Ok(report)
    }

    fn check_restart_settings(&self, new: &Validated) -> Result<(), AppError> {
        const UNLOAD: &str = "the pinned data plane keeps it until `splitter unload` (drops pinned flows) and a restart";
        const RESTART: &str = "restart the daemon to apply it (the data plane keeps running)";
        let old = &self.config;
        let show = |path: &Path| path.display().to_string();
        let checks: [(&'static str, String, String, &'static str); 8] = [
            (
                "dataplane.handshake_timeout",
                format!("{:?}", old.handshake_timeout),
                format!("{:?}", new.handshake_timeout),
                UNLOAD,
            ),
            (
                "dataplane.flow_table_size",
                old.flow_table_size.to_string(),
                new.flow_table_size.to_string(),
                UNLOAD,
            ),
            (
                "dataplane.hash_seed",
                old.hash_seed.to_string(),
                new.hash_seed.to_string(),
                UNLOAD,
            ),
            (
                "dataplane.xdp_mode",
                format!("{:?}", old.xdp_mode).to_lowercase(),
                format!("{:?}", new.xdp_mode).to_lowercase(),
                "attached interfaces keep their mode: remove an interface (reload) and add it back to re-attach it",
            ),
            (
                "control.socket",
                show(&old.socket),
                show(&new.socket),
                RESTART,
            ),
            (
                "control.metrics",
                old.metrics.to_string(),
                new.metrics.to_string(),
                RESTART,
            ),
            (
                "control.state_dir",
                show(&old.state_dir),
                show(&new.state_dir),
                RESTART,
            ),
            ("control.bpffs", show(&old.bpffs), show(&new.bpffs), UNLOAD),
        ];
        for (setting, from, to, remedy) in checks {
            if from != to {
                return Err(AppError::RestartRequired {
                    setting,
                    from,
                    to,
                    remedy,
                });
            }
        }
        Ok(())
    }

    /// Detaches and removes the whole data plane (pinned flows and counters included). The
    /// persisted weights stay in `state_dir`.
    pub fn unload(self) -> Result<Unloaded, AppError> {
        let unloaded = self.dataplane.unload()?;
        tracing::info!(
            detached = crate::logging::names(&unloaded.interfaces),
            removed_pins = unloaded.dataplane,
            "data plane unloaded"
        );
        Ok(unloaded)
    }
}

/// One log line with the reload report as fields: `added=web changed= ... attached=eth0`.
fn log_report(report: &ReloadReport, message: &str) {
    use crate::logging::names;
    tracing::info!(
        added = names(&report.added),
        changed = names(&report.changed),
        removed = names(&report.removed),
        unchanged = names(&report.unchanged),
        attached = names(&report.attached),
        detached = names(&report.detached),
        "{message}"
    );
}
