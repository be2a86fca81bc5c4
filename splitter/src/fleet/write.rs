//! The CLI's side: a fleet-wide change is one etcd write, then (by default) a wait until every
//! live host has applied its revision; and `fleet status`, read from the host records.

use std::time::{Duration, Instant};

use etcd_client::{Client, GetOptions};

use super::{
    Desired, Fleet, FleetError,
    host::{HostRecord, definition_hash, unix_ms},
    keys::ServiceKey,
    report::{FleetHost, FleetStatusReport, FleetWrite},
};
use crate::config::Service;

/// How often the writer reads the host records while it waits.
const POLL: Duration = Duration::from_millis(5);

impl Fleet {
    /// Writes `desired` for `service` (defined as `definition` on this host), and with `wait`
    /// waits up to `[fleet] wait` for every live host to apply it.
    pub async fn write(
        &self,
        definition: &Service,
        desired: Desired,
        wait: bool,
    ) -> Result<FleetWrite, FleetError> {
        let service = definition.name.as_str();
        let mut client = self.writable(definition).await?;
        let response = client
            .put(
                self.keys.desired(service),
                serde_json::to_vec(&desired).expect("serializes"),
                None,
            )
            .await
            .map_err(FleetError::store("writing the desired state"))?;
        let revision = response
            .header()
            .map_or(0, etcd_client::ResponseHeader::revision);
        tracing::info!(
            service,
            revision,
            green_weight = desired.green_weight,
            "fleet: desired state written"
        );
        self.wait_applied(&mut client, service, &desired, revision, wait)
            .await
    }

    /// Refuses a fleet write of a service whose definition here differs from the fleet's (the
    /// fleet's definition is written by the first host that knows the service).
    pub(super) async fn agree_on_definition(
        &self,
        client: &mut Client,
        definition: &Service,
    ) -> Result<(), FleetError> {
        let service = definition.name.as_str();
        if let Some((local, fleet)) = self.lock().mismatched.get(service) {
            return Err(FleetError::Mismatch {
                service: service.to_owned(),
                local: local.clone(),
                fleet: fleet.clone(),
            });
        }
        let local = definition_hash(definition);
        let fleet_hash =
            super::watch::create_or_get(client, self.keys.definition(service), local.clone())
                .await?;
        if fleet_hash != local {
            return Err(FleetError::Mismatch {
                service: service.to_owned(),
                local,
                fleet: fleet_hash,
            });
        }
        Ok(())
    }

    /// With `wait`, waits up to `[fleet] wait` until every live host applied `revision`;
    /// says which hosts did, which are behind and which leave the service alone.
    pub(super) async fn wait_applied(
        &self,
        client: &mut Client,
        service: &str,
        desired: &Desired,
        revision: i64,
        wait: bool,
    ) -> Result<FleetWrite, FleetError> {
        let mut outcome = FleetWrite {
            service: service.to_owned(),
            green_weight: desired.green_weight,
            stable: desired.stable,
            revision,
            waited: wait,
            hosts_applied: 0,
            hosts_live: 0,
            behind: Vec::new(),
            left_alone: Vec::new(),
        };
        self.await_hosts(client, &mut outcome).await?;
        Ok(outcome)
    }

    /// `backend disable|enable|drain SERVICE BACKEND` with `[fleet]`: the operator state of
    /// one backend, written to its own key (ready: the key deleted), then a wait up to
    /// `[fleet] wait` for every live host to apply it. The outcome's weight fields are those
    /// of no weight change (0, no stable color).
    pub async fn write_backend(
        &self,
        definition: &Service,
        backend: std::net::SocketAddr,
        admin: crate::state::Admin,
    ) -> Result<FleetWrite, FleetError> {
        let service = definition.name.as_str();
        let mut client = self.writable(definition).await?;
        let key = self.keys.backend(service, &backend);
        let header = if admin == crate::state::Admin::Ready {
            client
                .delete(key, None)
                .await
                .map_err(FleetError::store("writing the backend state"))?
                .header()
                .cloned()
        } else {
            client
                .put(key, super::desired::backend_value(admin), None)
                .await
                .map_err(FleetError::store("writing the backend state"))?
                .header()
                .cloned()
        };
        let revision = header.map_or(0, |header| header.revision());
        tracing::info!(service, %backend, admin = admin.name(), revision, "fleet: backend state written");
        let mut outcome = FleetWrite {
            service: service.to_owned(),
            green_weight: 0,
            stable: None,
            revision,
            waited: true,
            hosts_applied: 0,
            hosts_live: 0,
            behind: Vec::new(),
            left_alone: Vec::new(),
        };
        self.await_hosts(&mut client, &mut outcome).await?;
        Ok(outcome)
    }

    /// The client for a write of `definition`'s state: refused when this host's definition
    /// differs from the fleet's (the fleet's is written by the first host that knows it).
    async fn writable(&self, definition: &Service) -> Result<Client, FleetError> {
        let mut client = self.client()?;
        self.agree_on_definition(&mut client, definition).await?;
        Ok(client)
    }

    /// Fills in which live hosts applied `outcome.revision`, waiting (with `outcome.waited`)
    /// up to `[fleet] wait` until none is behind.
    async fn await_hosts(
        &self,
        client: &mut Client,
        outcome: &mut FleetWrite,
    ) -> Result<(), FleetError> {
        let (service, revision, wait) = (outcome.service.clone(), outcome.revision, outcome.waited);
        let service = service.as_str();
        let deadline = Instant::now() + self.config.wait;
        loop {
            let hosts = self.hosts(client).await?;
            outcome.hosts_live = hosts.len();
            outcome.left_alone = hosts
                .iter()
                .filter_map(|host| {
                    host.leaves_alone(service)
                        .map(|why| format!("{}: {why}", host.host))
                })
                .collect();
            outcome.behind = hosts
                .iter()
                .filter(|host| {
                    host.applied_revision < revision && host.leaves_alone(service).is_none()
                })
                .map(|host| host.host.clone())
                .collect();
            outcome.hosts_applied = hosts
                .iter()
                .filter(|host| {
                    host.applied_revision >= revision && host.leaves_alone(service).is_none()
                })
                .count();
            if !wait || outcome.behind.is_empty() || Instant::now() >= deadline {
                return Ok(());
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Every live host's record.
    async fn hosts(&self, client: &mut Client) -> Result<Vec<HostRecord>, FleetError> {
        super::store::read_prefix(client, self.keys.hosts(), "reading the host records").await
    }

    /// `fleet status`: the live hosts, their versions, definitions, applied revisions, lag
    /// and heartbeats.
    pub async fn status(&self) -> Result<FleetStatusReport, FleetError> {
        let mut client = self.client()?;
        let services = client
            .get(self.keys.services(), Some(GetOptions::new().with_prefix()))
            .await
            .map_err(FleetError::store("reading the desired state"))?;
        let mut desired_revision = 0;
        let mut definitions = std::collections::BTreeMap::new();
        for kv in services.kvs() {
            match self
                .keys
                .parse_service_key(kv.key_str().unwrap_or_default())
            {
                Some(ServiceKey::Desired(_) | ServiceKey::Backend(..)) => {
                    desired_revision = desired_revision.max(kv.mod_revision());
                }
                Some(ServiceKey::Definition(service)) => {
                    definitions.insert(
                        service.to_owned(),
                        kv.value_str().unwrap_or_default().to_owned(),
                    );
                }
                None => {}
            }
        }
        let now = unix_ms();
        let hosts = self
            .hosts(&mut client)
            .await?
            .into_iter()
            .map(|record| FleetHost {
                lag: (desired_revision - record.applied_revision).max(0),
                heartbeat_age_ms: now.saturating_sub(record.heartbeat_unix_ms),
                record,
            })
            .collect();
        Ok(FleetStatusReport {
            fleet: self.config.name.clone(),
            host: self.config.host.clone(),
            desired_revision,
            definitions,
            hosts,
        })
    }

    /// The fleet's seed, if one was written (read before the data plane is opened, so a new
    /// host can start with it).
    pub async fn seed(config: &crate::config::fleet::Fleet) -> Result<Option<u32>, FleetError> {
        let mut client = super::store::connect(config).await?;
        let key = super::keys::Keys::new(&config.name).seed();
        let response = client
            .get(key.clone(), None)
            .await
            .map_err(FleetError::store("reading the fleet's seed"))?;
        response
            .kvs()
            .first()
            .map(|kv| {
                kv.value_str()
                    .ok()
                    .and_then(|text| text.parse().ok())
                    .ok_or_else(|| FleetError::BadValue {
                        key: key.clone(),
                        problem: "not a u32".to_owned(),
                    })
            })
            .transpose()
    }
}
