//! FLEET (issue 15): the daemon's side of `[fleet]`. The fleet applies etcd's desired state
//! through [`App::apply_desired`], the `set-weight`/`switch` path of local commands; the
//! control requests that go to the fleet (`set-weight`/`switch` with `[fleet]`, `switch
//! --local`, `fleet status`, `fleet clear-override`, `fleet adopt-definition`, the `rollout`
//! commands) are answered here.

use std::{collections::BTreeMap, net::SocketAddr, sync::Arc};

use super::{
    App, AppError,
    rollouts::{RolloutError, now_unix_ms},
    shared::{Shared, SharedError},
};
use crate::{
    color::ColorName,
    config::Service,
    control::protocol::{Reply, Request},
    fleet::{Desired, Fleet, FleetError, Target},
    rollout::{Phase, Window},
    state::Admin,
};

impl App {
    /// Brings `service` to the fleet's `desired` state with the local commands' own path: a
    /// stable color is a `switch`, a weight a `set-weight` (a running rollout pauses, as on
    /// any operator change). `false`: it was there already.
    pub fn apply_desired(&mut self, service: &str, desired: &Desired) -> Result<bool, AppError> {
        let address = self.service_address(service)?;
        let current = self
            .installed
            .get(&address)
            .map(|installed| installed.config.green_weight);
        match desired.stable {
            Some(color)
                if current != Some(desired.green_weight)
                    || self.state.stable_color(service) != color =>
            {
                self.switch(service, color)?;
                Ok(true)
            }
            None if current != Some(desired.green_weight) => {
                self.set_weight(service, desired.green_weight)?;
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    /// Brings a backend to the fleet's operator state with the `backend` command's own path.
    /// `false`: it was there already.
    pub fn apply_backend_state(
        &mut self,
        service: &str,
        backend: SocketAddr,
        admin: Admin,
    ) -> Result<bool, AppError> {
        if self.admin_of(service, &backend) == admin {
            return Ok(false);
        }
        self.backend_command(service, &backend.to_string(), admin)?;
        Ok(true)
    }

    /// The definition of a configured service.
    fn definition(&self, service: &str) -> Result<Service, AppError> {
        self.service_address(service)?;
        Ok(self
            .config
            .service(service)
            .cloned()
            .expect("the service exists"))
    }
}

/// The `rollout` commands: with `[fleet]` they act on the fleet's rollout.
pub(super) const fn is_rollout(request: &Request) -> bool {
    matches!(
        request,
        Request::RolloutStart { .. }
            | Request::RolloutRetry { .. }
            | Request::RolloutList
            | Request::RolloutStatus { .. }
            | Request::RolloutPause { .. }
            | Request::RolloutResume { .. }
            | Request::RolloutPromote { .. }
            | Request::RolloutAbort { .. }
    )
}

impl Target for Shared {
    type Error = SharedError;

    fn services(&self) -> Result<Vec<Service>, SharedError> {
        self.with_app(|app| Ok(app.config.services.clone()))
    }

    fn hash_seed(&self) -> Result<u32, SharedError> {
        self.with_app(|app| Ok(app.dataplane.loaded_with.hash_seed))
    }

    fn apply(&self, service: &str, desired: &Desired) -> Result<bool, SharedError> {
        self.with_app(|app| app.apply_desired(service, desired))
    }

    fn apply_backend(
        &self,
        service: &str,
        backend: SocketAddr,
        admin: Admin,
    ) -> Result<bool, SharedError> {
        self.with_app(|app| app.apply_backend_state(service, backend, admin))
    }

    fn signals(&self) -> Result<BTreeMap<String, Window>, SharedError> {
        self.with_app(|app| {
            let names: Vec<String> = app.config.services.iter().map(|s| s.name.clone()).collect();
            names
                .into_iter()
                .map(|name| Ok((name.clone(), app.color_window(&name)?)))
                .collect()
        })
    }

    fn cut(&self, service: &str, color: ColorName) -> Result<usize, SharedError> {
        self.with_app(|app| app.cut(service, color))
    }
}

impl Shared {
    fn fleet(&self) -> Result<&Arc<Fleet>, SharedError> {
        self.fleet.as_ref().ok_or(SharedError::NoFleet)
    }

    /// `set-weight`/`switch` with `[fleet]`: written to etcd (`desired`), and unless `no_wait`
    /// answered once every live host applied it.
    pub(super) async fn fleet_write(
        &self,
        fleet: &Fleet,
        service: &str,
        desired: Desired,
        no_wait: bool,
    ) -> Result<Reply, SharedError> {
        let definition = self.with_app(|app| app.definition(service))?;
        Ok(Reply::Fleet(
            fleet.write(&definition, desired, !no_wait).await?,
        ))
    }

    /// `backend disable|enable|drain` with `[fleet]`: the backend is checked here, its state
    /// written to etcd, and once every live host applied it (or `[fleet] wait` passed) the
    /// answer is this host's view of the backend (applied by the fleet's watch; applied again
    /// here if the watch was slower: `previous` is then the state already applied).
    pub(super) async fn fleet_backend(
        &self,
        fleet: &Fleet,
        service: &str,
        backend: &str,
        admin: Admin,
    ) -> Result<Reply, SharedError> {
        let (definition, address) = self.with_app(|app| {
            let (address, _) = app.resolve_backend(service, backend)?;
            Ok((app.definition(service)?, address))
        })?;
        let outcome = fleet.write_backend(&definition, address, admin).await?;
        if !outcome.behind.is_empty() {
            tracing::warn!(service, %address, revision = outcome.revision, behind = ?outcome.behind, "fleet: backend state not applied by every host within [fleet] wait");
        }
        let report = self.with_app(|app| app.backend_command(service, backend, admin))?;
        Ok(Reply::Backend(report))
    }

    /// `switch --local`: this host only, held against the fleet until cleared.
    pub(super) fn local_switch(
        &self,
        service: &str,
        color: ColorName,
    ) -> Result<Reply, SharedError> {
        let change = self.with_app(|app| app.switch(service, color))?;
        if let Some(fleet) = &self.fleet {
            fleet.set_override(service, color)?;
            tracing::warn!(service, %color, "fleet: local override in force until `splitter fleet clear-override`");
        }
        Ok(Reply::Weight(change))
    }

    /// The `rollout` commands with `[fleet]`: the rollout is the fleet's, in etcd (started
    /// from this host's plan and weight in force, judged by the leader, `fleet/leader.rs`).
    #[expect(clippy::too_many_lines, reason = "one arm per rollout command")]
    pub(super) async fn fleet_rollout(&self, request: Request) -> Result<Reply, SharedError> {
        let fleet = self.fleet()?;
        let rollout = match request {
            Request::RolloutStart {
                service,
                overrides,
                from_current,
            } => {
                let (definition, (rollout, action)) = self.with_app(|app| {
                    Ok((
                        app.definition(&service)?,
                        app.rollout_draft(&service, &overrides, from_current)?,
                    ))
                })?;
                fleet
                    .start_rollout(&definition, &rollout, action, true)
                    .await?;
                rollout
            }
            Request::RolloutRetry { service } => {
                let last = fleet.rollout(&service).await?.rollout;
                if last.phase != Phase::Aborted {
                    return Err(AppError::from(RolloutError::NothingToRetry {
                        service,
                        phase: super::rollouts::phase_name(last.phase),
                    })
                    .into());
                }
                let (definition, (rollout, action)) = self.with_app(|app| {
                    Ok((
                        app.definition(&service)?,
                        app.draft_plan(&service, last.plan, last.from_current)?,
                    ))
                })?;
                fleet
                    .start_rollout(&definition, &rollout, action, true)
                    .await?;
                rollout
            }
            Request::RolloutStatus { service } => {
                let stored = fleet.rollout(&service).await?;
                let mut report = self.with_app(|app| Ok(app.rollout_report(&stored.rollout)))?;
                report.fleet.fleet_signals = stored.summed;
                return Ok(Reply::Rollout(Box::new(report)));
            }
            Request::RolloutList => {
                let stored = fleet.rollouts().await?;
                let reports = self.with_app(|app| {
                    Ok(stored
                        .into_iter()
                        .map(|stored| {
                            let mut report = app.rollout_report(&stored.rollout);
                            report.fleet.fleet_signals = stored.summed;
                            report
                        })
                        .collect())
                })?;
                return Ok(Reply::Rollouts(reports));
            }
            Request::RolloutPause { service } => {
                fleet
                    .change_rollout(&service, |rollout| {
                        rollout.pause(now_unix_ms(), "paused by the operator")
                    })
                    .await?
            }
            // The leader starts a fresh window on the fleet's sums at its next tick.
            Request::RolloutResume { service } => {
                fleet
                    .change_rollout(&service, |rollout| {
                        rollout.resume(now_unix_ms(), Window::default(), "resumed by the operator")
                    })
                    .await?
            }
            Request::RolloutPromote { service, full } => {
                fleet
                    .change_rollout(&service, |rollout| {
                        rollout.promote(now_unix_ms(), Window::default(), full)
                    })
                    .await?
            }
            Request::RolloutAbort {
                service,
                cut: false,
            } => {
                fleet
                    .change_rollout(&service, |rollout| {
                        rollout.abort(now_unix_ms(), "aborted by the operator")
                    })
                    .await?
            }
            // Every host cuts its own canary flows when it applies the abort (`fleet/watch.rs`).
            Request::RolloutAbort { service, cut: true } => {
                let (rollout, outcome) = fleet
                    .abort_cut(&service, |rollout| {
                        rollout.abort(
                            now_unix_ms(),
                            "aborted by the operator (--cut: every host unpins its canary flows)",
                        )
                    })
                    .await?;
                let mut report = self.with_app(|app| Ok(app.rollout_report(&rollout)))?;
                report.fleet.fleet_write = Some(outcome);
                return Ok(Reply::Rollout(Box::new(report)));
            }
            other => {
                return Err(FleetError::NotForFleet { what: other.name() }.into());
            }
        };
        let report = self.with_app(|app| Ok(app.rollout_report(&rollout)))?;
        Ok(Reply::Rollout(Box::new(report)))
    }

    /// `fleet status|clear-override|adopt-definition`.
    pub(super) async fn fleet_command(&self, request: Request) -> Result<Reply, SharedError> {
        match request {
            Request::FleetClearOverride { service } => self.fleet_clear_override(&service),
            Request::FleetAdoptDefinition { service } => {
                self.fleet_adopt_definition(&service).await
            }
            _ => Ok(Reply::FleetStatus(Box::new(self.fleet()?.status().await?))),
        }
    }

    /// `fleet adopt-definition SERVICE`: this host's definition becomes the fleet's.
    async fn fleet_adopt_definition(&self, service: &str) -> Result<Reply, SharedError> {
        let fleet = self.fleet()?;
        let definition = self.with_app(|app| app.definition(service))?;
        Ok(Reply::FleetAdopted(
            fleet.adopt_definition(&definition).await?,
        ))
    }

    fn fleet_clear_override(&self, service: &str) -> Result<Reply, SharedError> {
        let fleet = self.fleet()?;
        fleet.clear_override(service)?;
        tracing::info!(service, "fleet: local override cleared");
        Ok(Reply::FleetLocal(Box::new(fleet.local_status())))
    }
}
