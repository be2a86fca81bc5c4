//! Backends in and out of rotation: the operator's `backend disable|enable|drain`, the active
//! checks' results (`checks.rs` runs them), the passive ejection judged at each sample. A
//! change of a backend's state rewrites its service's pools in one `SERVICES` update (fresh
//! slots, as a reload does); the backend keeps its id, reply mapping, counters and pinned
//! flows (unless its check says `on_down = "cut"`). A color left with no backend in rotation
//! gets an empty pool (the data plane sends its new flows to the other color) and a rollout of
//! the service in progress is aborted.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::SocketAddr,
    time::Instant,
};

use super::{
    App, AppError,
    reconcile::{self, Desired, Plan},
    rollouts::now_unix_ms,
};
use crate::{
    config::{
        ColorName, Service, Validated,
        health::{HealthCheck, OnDown},
    },
    control::protocol::BackendReport,
    health::{
        Admin, BackendHealth, BackendState, CheckCounter, Transition, outlier::Handshakes,
        probe::ProbeError,
    },
    rollout::Phase,
};

/// Every configured backend's state, by service name and address.
#[derive(Debug, Default)]
pub struct Backends {
    entries: BTreeMap<(String, SocketAddr), Entry>,
    /// Backends in slow start, since when they ramp (`slow_start.rs`).
    pub(super) ramps: BTreeMap<(String, SocketAddr), Instant>,
}

#[derive(Debug)]
struct Entry {
    color: ColorName,
    health: BackendHealth,
    /// The check settings the counter was made for (a reload that changes them starts over).
    check: Option<HealthCheck>,
}

impl Backends {
    pub fn get(&self, service: &str, address: &SocketAddr) -> Option<&BackendHealth> {
        self.entries
            .get(&(service.to_owned(), *address))
            .map(|entry| &entry.health)
    }
}

/// One active check to run: `checks.rs` keeps one task per target.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct CheckTarget {
    pub service: String,
    pub backend: SocketAddr,
    pub check: HealthCheck,
}

#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[error("`{value}` is not a backend address (IP:port as written in the config)")]
    NotAnAddress { value: String },
    #[error("service `{service}` has no backend {backend} (configured: {known})")]
    Unknown {
        service: String,
        backend: SocketAddr,
        known: String,
    },
}

impl App {
    /// The backends of `service` that must not take new flows.
    pub(super) fn inactive_of(&self, service: &Service) -> BTreeSet<SocketAddr> {
        ColorName::BOTH
            .into_iter()
            .flat_map(|color| service.pool(color))
            .filter(|address| {
                match self.health.get(&service.name, address) {
                    Some(health) => !health.state().in_rotation(),
                    // Not seen yet (start, a new backend): the operator's persisted word.
                    None => self.admin_of(&service.name, address) != Admin::Ready,
                }
            })
            .copied()
            .collect()
    }

    /// When no backend of `service`'s `color` is in rotation: each one with its state and why
    /// (`198.18.2.10:8080 down (health check: ...)`), for an error that says what to fix.
    pub(super) fn out_of_rotation(&self, service: &Service, color: ColorName) -> Option<String> {
        let inactive = self.inactive_of(service);
        let pool = service.pool(color);
        if pool.iter().any(|address| !inactive.contains(address)) {
            return None;
        }
        let states: Vec<String> = pool
            .iter()
            .map(|address| match self.health.get(&service.name, address) {
                Some(health) => format!("{address} {} ({})", health.state(), health.reason()),
                None => format!("{address} {}", self.admin_of(&service.name, address).name()),
            })
            .collect();
        Some(states.join(", "))
    }

    pub(super) fn admin_of(&self, service: &str, address: &SocketAddr) -> Admin {
        self.state
            .backends
            .get(service)
            .and_then(|backends| backends.get(address))
            .copied()
            .unwrap_or_default()
    }

    /// The persisted operator states that `config` still has a backend for.
    pub(super) fn carried_backends(
        &self,
        config: &Validated,
    ) -> BTreeMap<String, BTreeMap<SocketAddr, Admin>> {
        config
            .services
            .iter()
            .filter_map(|service| {
                let kept: BTreeMap<SocketAddr, Admin> = self
                    .state
                    .backends
                    .get(&service.name)?
                    .iter()
                    .filter(|(address, admin)| {
                        **admin != Admin::Ready
                            && (service.blue.contains(address) || service.green.contains(address))
                    })
                    .map(|(address, admin)| (*address, *admin))
                    .collect();
                (!kept.is_empty()).then(|| (service.name.clone(), kept))
            })
            .collect()
    }

    /// Brings the per-backend states to the config in force: new backends start (up, or as
    /// the operator left them), removed ones go, changed check settings start over.
    pub(super) fn sync_health(&mut self) {
        let mut entries = std::mem::take(&mut self.health.entries);
        let mut next = BTreeMap::new();
        for service in &self.config.services {
            for color in ColorName::BOTH {
                for address in service.pool(color) {
                    let key = (service.name.clone(), *address);
                    let entry = match entries.remove(&key) {
                        Some(mut entry) if entry.check == service.health => {
                            entry.color = color;
                            entry
                        }
                        Some(mut entry) => {
                            entry.health.check = service
                                .health
                                .as_ref()
                                .map(|check| CheckCounter::new(check.rise, check.fall));
                            entry.check.clone_from(&service.health);
                            entry.color = color;
                            entry
                        }
                        None => Entry {
                            color,
                            health: BackendHealth::new(
                                self.admin_of(&service.name, address),
                                service
                                    .health
                                    .as_ref()
                                    .map(|check| CheckCounter::new(check.rise, check.fall)),
                            ),
                            check: service.health.clone(),
                        },
                    };
                    next.insert(key, entry);
                }
            }
        }
        self.health.entries = next;
        let entries = &self.health.entries;
        self.health.ramps.retain(|key, _| entries.contains_key(key));
        // A check removed or restarted by the reload may change a state at once (a `down`
        // backend whose service has no check any more is back up).
        let names: Vec<String> = self
            .config
            .services
            .iter()
            .map(|s| s.name.clone())
            .collect();
        for name in names {
            let _ = self.settle(&name, Instant::now());
        }
    }

    /// What `checks.rs` should be probing.
    pub fn check_targets(&self) -> Vec<CheckTarget> {
        self.health
            .entries
            .iter()
            .filter_map(|((service, backend), entry)| {
                Some(CheckTarget {
                    service: service.clone(),
                    backend: *backend,
                    check: entry.check.clone()?,
                })
            })
            .collect()
    }

    /// One active check's result.
    pub fn check_result(
        &mut self,
        service: &str,
        backend: SocketAddr,
        result: Result<(), ProbeError>,
    ) {
        let Some(entry) = self.health.entries.get_mut(&(service.to_owned(), backend)) else {
            return; // removed by a reload meanwhile
        };
        let Some(counter) = entry.health.check.as_mut() else {
            return;
        };
        counter.record(result.is_ok());
        if let Err(error) = result {
            entry.health.check_error = Some(error.to_string());
        }
        // Only this backend's inputs changed: settling the whole service per result cost
        // O(backends) per check, a third of a core at 1 000 backends every second
        // (`cargo xtask bench --health`). Ejections that end are settled by `judge_outliers`.
        // An error is logged by `settle_backends`: a check has no one to answer.
        let _ = self.settle_backends(service, Some(backend), Instant::now());
    }

    /// Feeds every backend's handshake counters to its service's passive detection, ends
    /// ejections that are over, takes the next step of slow starts (once a second, with the
    /// sample).
    pub fn judge_outliers(&mut self, now: Instant) {
        let mut touched = BTreeSet::new();
        for service in &self.config.services {
            let Some(installed) = self.installed.get(&(service.address, service.protocol)) else {
                continue;
            };
            for color in ColorName::BOTH {
                for (id, address) in installed.members(service.pool(color)) {
                    let Some(entry) = self
                        .health
                        .entries
                        .get_mut(&(service.name.clone(), address))
                    else {
                        continue;
                    };
                    if entry.health.outlier.ejected_until().is_some() {
                        touched.insert(service.name.clone());
                    }
                    let Some(settings) = &service.outlier else {
                        continue;
                    };
                    let Ok(counters) = self.dataplane.maps.backend_counters(id) else {
                        continue;
                    };
                    let signals = counters.signals;
                    let handshakes = Handshakes {
                        completed: signals.handshakes_completed,
                        failed: signals.handshakes_refused + signals.handshakes_timed_out,
                    };
                    let counting = matches!(
                        entry.health.state(),
                        BackendState::Up | BackendState::Ejected
                    );
                    if entry
                        .health
                        .outlier
                        .sample(now, handshakes, settings, counting)
                    {
                        touched.insert(service.name.clone());
                    }
                }
            }
        }
        for name in touched {
            let _ = self.settle(&name, now);
        }
        self.advance_slow_starts(now);
    }

    /// A backend of `name` as the operator wrote it (`IP:port`), and its color.
    pub(super) fn resolve_backend(
        &self,
        name: &str,
        backend: &str,
    ) -> Result<(SocketAddr, ColorName), AppError> {
        self.service_address(name)?;
        let service = self.config.service(name).expect("service_address found it");
        let parsed: SocketAddr =
            backend
                .trim()
                .parse()
                .map_err(|_| BackendError::NotAnAddress {
                    value: backend.to_owned(),
                })?;
        let Some(color) = ColorName::BOTH
            .into_iter()
            .find(|color| service.pool(*color).contains(&parsed))
        else {
            return Err(BackendError::Unknown {
                service: name.to_owned(),
                backend: parsed,
                known: service
                    .blue
                    .iter()
                    .chain(&service.green)
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(", "),
            }
            .into());
        };
        Ok((parsed, color))
    }

    /// `backend disable|enable|drain`. Out of rotation (disable, drain) is a move toward
    /// safety: in the kernel first, saved after (a full disk does not stop it); back into
    /// rotation (enable) is saved first and refused when it cannot be.
    pub fn backend_command(
        &mut self,
        name: &str,
        backend: &str,
        admin: Admin,
    ) -> Result<BackendReport, AppError> {
        let address = self.service_address(name)?;
        let (parsed, color) = self.resolve_backend(name, backend)?;
        let previous = self
            .health
            .get(name, &parsed)
            .map_or(BackendState::Up, BackendHealth::state);
        let mut state = self.state.clone();
        let backends = state.backends.entry(name.to_owned()).or_default();
        if admin == Admin::Ready {
            backends.remove(&parsed);
        } else {
            backends.insert(parsed, admin);
        }
        if state.backends.get(name).is_some_and(BTreeMap::is_empty) {
            state.backends.remove(name);
        }
        let toward_safety = admin != Admin::Ready;
        if toward_safety {
            // In memory now, on disk after the kernel (a rollout aborted meanwhile is part of
            // the state saved then).
            self.state = state;
        } else {
            self.save_before(state)?;
        }
        if let Some(entry) = self.health.entries.get_mut(&(name.to_owned(), parsed)) {
            entry.health.admin = admin;
        }
        let result = self.settle(name, Instant::now());
        if toward_safety {
            self.save_after(self.state.clone());
        }
        result?;
        let id = self
            .installed
            .get(&address)
            .and_then(|installed| installed.id_of(&parsed));
        tracing::info!(service = name, backend = %parsed, admin = admin.name(), "backend command");
        Ok(BackendReport {
            service: name.to_owned(),
            backend: parsed,
            color,
            id,
            admin,
            previous,
            state: self
                .health
                .get(name, &parsed)
                .map_or(BackendState::Up, BackendHealth::state),
        })
    }

    /// Recomputes the states of `name`'s backends; logs each transition; rewrites the pools
    /// when the set in rotation changed. Errors are logged (a check or a sample has no one to
    /// answer) and returned (a command does).
    fn settle(&mut self, name: &str, now: Instant) -> Result<(), AppError> {
        self.settle_backends(name, None, now)
    }

    /// [`Self::settle`] for one backend of `name` (`only`), or all of them (`None`).
    fn settle_backends(
        &mut self,
        name: &str,
        only: Option<SocketAddr>,
        now: Instant,
    ) -> Result<(), AppError> {
        let mut changed = Vec::new();
        for ((service, backend), entry) in self.health.entries.range_mut(
            (
                name.to_owned(),
                only.unwrap_or(SocketAddr::from(([0, 0, 0, 0], 0))),
            )..,
        ) {
            if service != name || only.is_some_and(|only| only != *backend) {
                break;
            }
            if let Some(transition) = entry.health.settle(now) {
                tracing::info!(
                    service = name,
                    color = %entry.color,
                    backend = %backend,
                    from = transition.from.name(),
                    to = transition.to.name(),
                    reason = %transition.reason,
                    "backend state"
                );
                changed.push((*backend, transition));
            }
        }
        if changed.is_empty() {
            return Ok(());
        }
        self.ramp_on_transitions(name, &changed, now);
        let result = self.rotate(name, &changed);
        if let Err(error) = &result {
            tracing::error!(service = name, %error, "backend pools not rewritten");
        }
        result
    }

    /// Rewrites `name`'s pools from its backends' states (one service update), cuts what must
    /// be cut, aborts a rollout whose colors cannot both take flows.
    pub(super) fn rotate(
        &mut self,
        name: &str,
        changed: &[(SocketAddr, Transition)],
    ) -> Result<(), AppError> {
        let address = self.service_address(name)?;
        let Some(service) = self.config.service(name).cloned() else {
            return Ok(());
        };
        if !self.installed.contains_key(&address) {
            return Ok(());
        }
        // Every installed service at the weight in force, each with its backends in rotation:
        // only `name` (and its preview) differ from the kernel, the rest plan as unchanged,
        // and the reply entries of shared backends are computed over all of them.
        let config = self.config.clone();
        let desired: Vec<Desired<'_>> = config
            .services
            .iter()
            .filter_map(|service| {
                let installed = self.installed.get(&(service.address, service.protocol))?;
                Some(Desired {
                    service,
                    green_weight: installed.config.green_weight,
                    preview: false,
                    inactive: self.inactive_of(service),
                    weights: self.slow_start_weights(service, Instant::now()),
                })
            })
            .collect();
        let previews = reconcile::previews(&config.services);
        let installs = reconcile::with_previews(&desired, &previews);
        let maps = &self.dataplane.maps;
        let plan = reconcile::plan(
            &installs,
            self.config.miss_hold,
            &self.installed,
            &mut |id| maps.backend(id).is_ok_and(|backend| backend.family == 0),
        )?;
        // Nothing is removed here: a service missing from `installs` is not installed.
        self.write(
            &Plan {
                writes: plan.writes,
                removals: Vec::new(),
                unchanged: plan.unchanged,
            },
            &installs,
        )?;
        self.installed = reconcile::installed(&self.dataplane.maps)?;
        let cut = service
            .health
            .as_ref()
            .is_some_and(|check| check.on_down == OnDown::Cut);
        if cut {
            let ids: Vec<u32> = changed
                .iter()
                .filter(|(_, t)| matches!(t.to, BackendState::Down | BackendState::Ejected))
                .filter_map(|(backend, _)| {
                    self.installed
                        .get(&address)
                        .and_then(|installed| installed.id_of(backend))
                })
                .collect();
            if !ids.is_empty() {
                let unpinned = self.dataplane.maps.unpin_backends(&ids)?;
                tracing::info!(
                    service = name,
                    unpinned,
                    "flows of backends out of rotation unpinned (on_down = \"cut\")"
                );
            }
        }
        // A pool lists every member, in rotation or not (the Maglev table keeps their places):
        // a color is empty when all of its members are inactive.
        let empty = ColorName::BOTH.into_iter().find(|color| {
            self.installed
                .get(&address)
                .is_some_and(|installed| !installed.takes_new_flows(*color))
        });
        if let Some(color) = empty {
            tracing::warn!(service = name, %color, "no backend in rotation: new flows of this color go to the other one");
            self.abort_for_empty_color(name, color)?;
        }
        Ok(())
    }

    /// A rollout in progress cannot be judged (nor rolled forward) while a color has no backend
    /// in rotation: it is aborted, the reason says which color.
    fn abort_for_empty_color(&mut self, name: &str, color: ColorName) -> Result<(), AppError> {
        let Some(mut rollout) = self.state.rollouts.get(name).cloned() else {
            return Ok(());
        };
        if !matches!(rollout.phase, Phase::Running | Phase::Paused) {
            return Ok(());
        }
        let logged = rollout.history.len();
        let why = format!("{color} has no healthy backend");
        let action = rollout.abort(now_unix_ms(), &why);
        self.commit(&rollout, action, logged)
    }
}
