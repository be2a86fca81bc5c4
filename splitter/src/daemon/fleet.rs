//! FLEET (issue 15): the daemon's side of `[fleet]`. The fleet applies etcd's desired state
//! through [`App::apply_desired`], the `set-weight`/`switch` path of local commands; the
//! control requests that go to the fleet (`set-weight`/`switch` with `[fleet]`, `switch
//! --local`, `fleet status`, `fleet clear-override`) are answered here.

use std::{net::SocketAddr, sync::Arc};

use super::{
    App, AppError,
    shared::{Shared, SharedError},
};
use crate::{
    color::ColorName,
    config::Service,
    control::protocol::Reply,
    fleet::{Desired, Fleet, Target},
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

    pub(super) async fn fleet_status(&self) -> Result<Reply, SharedError> {
        Ok(Reply::FleetStatus(Box::new(self.fleet()?.status().await?)))
    }

    pub(super) fn fleet_clear_override(&self, service: &str) -> Result<Reply, SharedError> {
        let fleet = self.fleet()?;
        fleet.clear_override(service)?;
        tracing::info!(service, "fleet: local override cleared");
        Ok(Reply::FleetLocal(Box::new(fleet.local_status())))
    }
}
