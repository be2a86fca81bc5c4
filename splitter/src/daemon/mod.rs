//! The daemon's application state: the validated config, the pinned data plane, the persisted
//! weights, and the operations the control API exposes (the weight commands in `weights.rs`,
//! the status snapshot in `status.rs`). Everything here is synchronous; the
//! async parts (socket, metrics endpoint, signals) live in `control`, `metrics` and `main.rs`.

// FLEET: `[fleet]` requests and the fleet's apply path.
mod backends;
pub mod checks;
mod fleet;
mod orphans;
mod persist;
pub mod reconcile;
mod replies;
pub mod rollouts;
pub mod sampler;
pub mod shared;
mod slow_start;
mod status;
mod weights;
pub mod whatif;

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    time::Instant,
};

use splitter_common::WEIGHT_SCALE;

use self::{
    reconcile::{Desired, InstalledService, Plan, PlanError, ServiceAddress},
    sampler::Sampler,
};
use crate::{
    config::{Config, ConfigError, Validated},
    control::protocol::{ErrorKind, HashSeedSource, ReloadReport},
    dataplane::{
        Attachment, Dataplane, DataplaneError, LoadOptions, PinPolicy, Unloaded, maps::FlowScan,
        overrides::of_family,
    },
    metrics::RolloutMetrics,
    state::{RandomSeed, ServiceState, State, StateError},
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
    #[error(transparent)]
    Backend(#[from] backends::BackendError),
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
            AppError::WeightRange { .. } | AppError::Rollout(_) | AppError::Backend(_) => {
                ErrorKind::InvalidArgument
            }
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
    /// Whether the state file is behind (`persist.rs`).
    persist: persist::Persistence,
    /// Rollout tick errors are logged at most once per 10 s.
    tick_errors: crate::control::limits::RateLimit,
    /// Where the seed in force came from (its value: `dataplane.loaded_with`).
    hash_seed_source: HashSeedSource,
    /// Rollout step, phase and decisions per service (`rollouts.rs` keeps them current).
    rollout_metrics: RolloutMetrics,
    /// Each configured backend's state (`backends.rs`): operator, checks, ejection.
    health: backends::Backends,
}

/// Opens the data plane with the configured hash seed, or else the random one of `state_dir`
/// (drawn at the first start). Without a configured seed, a pinned data plane's seed is the
/// one in force (it cannot change while the programs run) and is persisted as the random seed
/// (the file was lost, or `hash_seed` was removed from the config).
fn open_dataplane(config: &Validated) -> Result<(Dataplane, HashSeedSource), AppError> {
    let (hash_seed, source) = match config.hash_seed {
        Some(seed) => (seed, HashSeedSource::Configured),
        None => (
            RandomSeed::load_or_create(&config.state_dir)?,
            HashSeedSource::Random,
        ),
    };
    let mut options = LoadOptions {
        flow_table_size: config.flow_table_size,
        pending_table_size: config.pending_table_size,
        udp_idle_timeout_ns: crate::units::nanos(config.udp_idle_timeout),
        hash_seed,
        handshake_timeout_ns: crate::units::nanos(config.handshake_timeout),
    };
    let policy = PinPolicy::Pinned {
        bpffs: &config.bpffs,
    };
    match Dataplane::open(&options, policy) {
        Err(DataplaneError::PinnedSettingDiffers {
            setting: "hash_seed",
            pinned,
            ..
        }) if source == HashSeedSource::Random => {
            let pinned = u32::try_from(pinned).expect("the pinned seed is a u32");
            RandomSeed::store(&config.state_dir, pinned)?;
            tracing::info!("no hash_seed configured: the pinned data plane's seed stays in force");
            options.hash_seed = pinned;
            Ok((Dataplane::open(&options, policy)?, source))
        }
        result => Ok((result?, source)),
    }
}

impl App {
    /// Adopts the pinned data plane (or loads and pins one), attaches it to the configured
    /// interfaces, and installs the configured services with their persisted weights.
    pub fn start(config_path: &Path, config: Validated) -> Result<Self, AppError> {
        let state = State::load(&config.state_dir)?;
        let (dataplane, hash_seed_source) = open_dataplane(&config)?;
        tracing::info!(
            bpffs = %config.bpffs.display(),
            origin = dataplane.origin.name(),
            hash_seed = hash_seed_source.name(),
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
            persist: persist::Persistence::default(),
            tick_errors: crate::control::limits::RateLimit::default(),
            hash_seed_source,
            rollout_metrics: RolloutMetrics::default(),
            health: backends::Backends::default(),
        };
        // Before the first write: ramps the kernel shows in progress go on where they were.
        app.resume_slow_starts(Instant::now());
        let report = app.apply(config)?;
        app.unpin_removed_services()?;
        app.forget_removed_backends()?;
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
        let now = Instant::now();
        self.start_slow_starts_of_joiners(&config, now);
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
                preview: false,
                inactive: self.inactive_of(service),
                weights: self.slow_start_weights(service, now),
            })
            .collect();
        self.warn_lower_kernel_weights(&desired);
        let previews = reconcile::previews(&config.services);
        let installs = reconcile::with_previews(&desired, &previews);
        let maps = &self.dataplane.maps;
        let plan = reconcile::plan(&installs, config.miss_hold, &self.installed, &mut |id| {
            maps.backend(id).is_ok_and(|backend| backend.family == 0)
        })?;
        let mut report = ReloadReport::default();
        self.dataplane
            .check_redirects(&config.redirect_interfaces)?;
        let (attached, detached) = self.attach_interfaces(&config)?;
        self.dataplane.set_redirects(&config.redirect_interfaces)?;
        report.attached = attached;
        report.detached = detached;
        // A raise of any weight (a new service, an edited file) is saved before the maps are
        // written, so a restart applies it; anything else is written first and saved after
        // (`persist.rs`): a restart keeps the lower kernel weight.
        let raises = installs.iter().any(|wanted| {
            self.installed
                .get(&(wanted.service.address, wanted.service.protocol))
                .map_or(wanted.green_weight > 0, |installed| {
                    wanted.green_weight > installed.config.green_weight
                })
        });
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
            // So do their stable colors.
            stable: self
                .state
                .stable
                .iter()
                .filter(|(name, _)| desired.iter().any(|d| &d.service.name == *name))
                .map(|(name, color)| (name.clone(), *color))
                .collect(),
            // And the operator's word on the backends still configured.
            backends: self.carried_backends(&config),
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
        let state = if raises {
            self.save_before(state)?;
            None
        } else {
            Some(state)
        };
        self.write(&plan, &installs)?;
        if let Some(state) = state {
            self.save_after(state);
        }
        for write in &plan.writes {
            if write.replaces {
                report.changed.push(write.name.clone());
            } else {
                report.added.push(write.name.clone());
            }
        }
        report.unchanged.clone_from(&plan.unchanged);
        report.removed = self.removed_names(&plan);
        self.config = config;
        self.installed = reconcile::installed(&self.dataplane.maps)?;
        self.sync_health();
        if !plan.writes.is_empty() || !plan.removals.is_empty() {
            self.sampler.clear();
        }
        for name in &report.removed {
            self.rollout_metrics.remove(name);
        }
        self.publish_rollouts();
        Ok(report)
    }

    /// Logs each service whose kernel weight is below the saved one (the lower one stays; see
    /// `State::initial_weight`).
    fn warn_lower_kernel_weights(&self, desired: &[Desired<'_>]) {
        for wanted in desired {
            let kernel = self
                .installed
                .get(&(wanted.service.address, wanted.service.protocol))
                .map(|installed| installed.config.green_weight);
            if let (Some(saved), Some(kernel)) =
                (self.state.services.get(&wanted.service.name), kernel)
                && saved.file_green_weight == wanted.service.green_weight
                && kernel < saved.green_weight
            {
                tracing::warn!(
                    service = %wanted.service.name,
                    kernel = %crate::units::ppm_to_percent(kernel),
                    saved = %crate::units::ppm_to_percent(saved.green_weight),
                    "the data plane holds a lower green weight than the state file (a rollback that was not saved before the daemon stopped): the lower one stays"
                );
            }
        }
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

    /// Writes a plan (`installs`: the services and previews it was made for): reply entries first (a shared backend's before any service sends it
    /// flows), services, the overrides of services left unchanged, removals, then the
    /// `SHARED_REVERSE` entries of backends no longer shared.
    fn write(&mut self, plan: &Plan, installs: &[Desired<'_>]) -> Result<(), AppError> {
        let current = self.dataplane.maps.reply_candidates()?;
        let replies = replies::replies(installs, plan, &self.installed, &current);
        let maps = &mut self.dataplane.maps;
        maps.set_replies(&replies)?;
        for write in &plan.writes {
            if write.fresh_service_id {
                maps.reset_service_counters(write.spec.id)?;
            }
            for id in &write.fresh_backend_ids {
                maps.reset_backend_counters(*id)?;
            }
            maps.install_service(&write.spec)?;
        }
        for wanted in installs {
            let service = wanted.service;
            if let Some(current) = self.installed.get(&(service.address, service.protocol))
                && plan.unchanged.contains(&service.name)
            {
                let overrides = of_family(&service.overrides, &service.address);
                maps.add_overrides(current.config.id, &overrides)?;
                maps.remove_stale_overrides(current.config.id, &overrides)?;
            }
        }
        for (address, protocol) in &plan.removals {
            maps.remove_service_at(address, *protocol)?;
        }
        maps.remove_stale_shared()?;
        Ok(())
    }

    /// The names of the services a plan removes (from the config in force before it).
    fn removed_names(&self, plan: &Plan) -> Vec<String> {
        let names = self.names();
        plan.removals
            .iter()
            .map(|address| {
                names
                    .get(address)
                    .cloned()
                    .unwrap_or_else(|| format!("{}/{}", address.0, address.1.name()))
            })
            .collect()
    }

    /// Service names by address, from the config.
    fn names(&self) -> BTreeMap<ServiceAddress, String> {
        self.config
            .services
            .iter()
            .flat_map(|service| {
                let preview = service.preview.map(|preview| {
                    (
                        (preview, service.protocol),
                        crate::config::overrides::preview_name(&service.name),
                    )
                });
                std::iter::once(((service.address, service.protocol), service.name.clone()))
                    .chain(preview)
            })
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
        // FLEET: the fleet session is built from `[fleet]` at start.
        if old.fleet != new.fleet {
            return Err(AppError::RestartRequired {
                setting: "fleet",
                from: format!("{:?}", old.fleet.as_ref().map(|fleet| &fleet.name)),
                to: format!("{:?}", new.fleet.as_ref().map(|fleet| &fleet.name)),
                remedy: RESTART,
            });
        }
        let show = |path: &Path| path.display().to_string();
        let checks: [(&'static str, String, String, &'static str); 10] = [
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
                "dataplane.pending_table_size",
                old.pending_table_size.to_string(),
                new.pending_table_size.to_string(),
                UNLOAD,
            ),
            (
                "dataplane.udp_idle_timeout",
                format!("{:?}", old.udp_idle_timeout),
                format!("{:?}", new.udp_idle_timeout),
                UNLOAD,
            ),
            (
                "dataplane.hash_seed",
                // A random seed is not printed (see `HashSeedSource`); a file without
                // `hash_seed` keeps the seed in force.
                match old.hash_seed {
                    Some(seed) => seed.to_string(),
                    None => "the random seed".to_owned(),
                },
                match new.hash_seed {
                    Some(seed) if Some(seed) != old.hash_seed => seed.to_string(),
                    Some(_) | None => match old.hash_seed {
                        Some(seed) => seed.to_string(),
                        None => "the random seed".to_owned(),
                    },
                },
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
