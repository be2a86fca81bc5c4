//! One session with etcd, again and again: connect, agree on the seed and the service
//! definitions, publish this host's record under a lease, load the desired state and apply
//! it, then watch it from the next revision and apply each change in revision order (so every
//! host sees the same weight history). Any failure ends the session: the host keeps what it
//! applied (fail static), says it is disconnected, and starts a new session a second later,
//! which loads everything again (reconvergence needs no operator).

use std::{
    collections::{BTreeMap, BTreeSet},
    convert::Infallible,
    net::SocketAddr,
    sync::Arc,
    time::Duration,
};

use etcd_client::{
    Client, Compare, CompareOp, EventType, GetOptions, KeyValue, PutOptions, Txn, TxnOp,
    TxnOpResponse, WatchOptions,
};

use super::{
    Desired, Fleet, FleetError, Target,
    desired::backend_state,
    host::{HostRecord, definition_hash, unix_ms},
    keys::ServiceKey,
    rollout::FleetRollout,
};
use crate::{color::ColorName, rollout::Phase, state::Admin};

/// The host record's lease: a host that stops renewing it leaves the fleet's live set this
/// long after its last renewal.
pub const LEASE_TTL_SECONDS: i64 = 6;
/// How often the lease is renewed and the record's heartbeat written.
pub const HEARTBEAT: Duration = Duration::from_secs(2);
/// Pause between sessions.
const RETRY: Duration = Duration::from_secs(1);

/// The fleet task of the daemon: sessions until the process ends.
pub async fn run<T: Target>(fleet: Arc<Fleet>, target: Arc<T>) {
    let mut was_connected = true;
    loop {
        let Err(error) = session(&fleet, &*target, &mut was_connected).await;
        if was_connected {
            tracing::warn!(%error, fleet = %fleet.config.name, "fleet: disconnected from etcd; the last applied state stays in force");
        } else {
            tracing::debug!(%error, "fleet: still disconnected");
        }
        was_connected = false;
        fleet.set_connected(None, Some(error.to_string()));
        tokio::time::sleep(RETRY).await;
    }
}

/// This host's definitions (by service) and what the session learnt of the fleet's.
struct Session {
    definitions: BTreeMap<String, String>,
    lease: i64,
}

async fn session<T: Target>(
    fleet: &Fleet,
    target: &T,
    was_connected: &mut bool,
) -> Result<Infallible, FleetError> {
    let mut client = super::store::connect(&fleet.config).await?;
    let definitions = agree(fleet, target, &mut client).await?;
    let lease = client
        .lease_grant(LEASE_TTL_SECONDS, None)
        .await
        .map_err(FleetError::store("granting the host lease"))?
        .id();
    let (mut keeper, mut renewals) = client
        .lease_keep_alive(lease)
        .await
        .map_err(FleetError::store("renewing the host lease"))?;
    let mut session = Session { definitions, lease };
    let revision = load(fleet, target, &mut client, &session).await?;
    fleet.lock().applied_revision = revision;
    fleet.persist()?;
    publish(fleet, &mut client, &session).await?;
    fleet.set_connected(Some(client.clone()), None);
    if !*was_connected {
        tracing::info!(fleet = %fleet.config.name, revision, "fleet: connected to etcd, desired state applied");
    }
    *was_connected = true;
    let (_watcher, mut stream) = client
        .watch(
            fleet.keys.services(),
            Some(
                WatchOptions::new()
                    .with_prefix()
                    .with_start_revision(revision + 1),
            ),
        )
        .await
        .map_err(FleetError::store("watching the desired state"))?;
    let mut heartbeat = tokio::time::interval(HEARTBEAT);
    heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            message = stream.message() => {
                let response = message
                    .map_err(FleetError::store("watching the desired state"))?
                    .ok_or(FleetError::WatchEnded)?;
                if response.canceled() {
                    // Compacted past our revision: a new session loads everything.
                    return Err(FleetError::WatchEnded);
                }
                let mut newest = None;
                let mismatched_before: BTreeSet<String> =
                    fleet.lock().mismatched.keys().cloned().collect();
                let mut cuts = Vec::new();
                for event in response.events() {
                    let Some(kv) = event.kv() else { continue };
                    newest = newest.max(Some(kv.mod_revision()));
                    match event.event_type() {
                        EventType::Put => {
                            handle(fleet, target, &session, kv)?;
                            cuts.extend(cut_requested(fleet, &session, kv));
                        }
                        EventType::Delete => deleted(fleet, target, &session, kv)?,
                    }
                }
                // After the abort's weight (same transaction, later in the events).
                for (service, color) in cuts {
                    cut(target, &service, color);
                }
                let agree_again = mismatched_before
                    .iter()
                    .any(|service| !fleet.lock().mismatched.contains_key(service));
                if agree_again {
                    // The fleet's definition moved to this host's: its changes apply again.
                    load(fleet, target, &mut client, &session).await?;
                }
                if let Some(newest) = newest {
                    fleet.lock().applied_revision = newest;
                    fleet.persist()?;
                    publish(fleet, &mut client, &session).await?;
                }
            }
            _ = heartbeat.tick() => {
                keeper.keep_alive().await.map_err(FleetError::store("renewing the host lease"))?;
                let renewal = renewals
                    .message()
                    .await
                    .map_err(FleetError::store("renewing the host lease"))?;
                if renewal.is_none_or(|renewal| renewal.ttl() <= 0) {
                    return Err(FleetError::WatchEnded);
                }
                publish(fleet, &mut client, &session).await?;
                super::definition::converge(fleet, &mut client).await?;
            }
            () = fleet.resync.notified() => {
                // A reload may have changed the definitions; a cleared override wants the
                // desired state again.
                session.definitions = agree(fleet, target, &mut client).await?;
                load(fleet, target, &mut client, &session).await?;
                publish(fleet, &mut client, &session).await?;
                // The last host to reload a changed definition moves the fleet's at once.
                super::definition::converge(fleet, &mut client).await?;
            }
        }
    }
}

/// Agrees with the fleet on the hash seed and each service's definition (the first host to
/// write one decides; it moves later by `definition.rs`); returns this host's definition
/// hashes.
async fn agree<T: Target>(
    fleet: &Fleet,
    target: &T,
    client: &mut Client,
) -> Result<BTreeMap<String, String>, FleetError> {
    let services = target.services().map_err(apply_error("definitions"))?;
    let definitions: BTreeMap<String, String> = services
        .iter()
        .map(|service| (service.name.clone(), definition_hash(service)))
        .collect();
    let seed = target.hash_seed().map_err(apply_error("hash seed"))?;
    let fleet_seed = create_or_get(client, fleet.keys.seed(), seed.to_string()).await?;
    let seed_mismatch = fleet_seed != seed.to_string();
    if seed_mismatch {
        tracing::error!(
            "fleet: this data plane runs another hash seed than the fleet's: fleet changes are not applied on this host (unload and restart it with the fleet's seed, in a maintenance window)"
        );
    }
    let mut mismatched = BTreeMap::new();
    for (name, hash) in &definitions {
        let fleet_hash = create_or_get(client, fleet.keys.definition(name), hash.clone()).await?;
        if &fleet_hash != hash {
            tracing::error!(service = %name, local = %hash, fleet = %fleet_hash, "fleet: this host's service definition differs from the fleet's: fleet changes of it are not applied");
            mismatched.insert(name.clone(), (hash.clone(), fleet_hash));
        }
    }
    {
        let mut status = fleet.lock();
        status.seed_mismatch = seed_mismatch;
        status.mismatched = mismatched;
    }
    Ok(definitions)
}

/// Applies every service's desired state; returns the store revision it reflects.
async fn load<T: Target>(
    fleet: &Fleet,
    target: &T,
    client: &mut Client,
    session: &Session,
) -> Result<i64, FleetError> {
    let response = client
        .get(fleet.keys.services(), Some(GetOptions::new().with_prefix()))
        .await
        .map_err(FleetError::store("loading the desired state"))?;
    let mut out_of_rotation = BTreeSet::new();
    for kv in response.kvs() {
        handle(fleet, target, session, kv)?;
        if let Some(ServiceKey::Backend(service, backend)) = fleet
            .keys
            .parse_service_key(kv.key_str().unwrap_or_default())
        {
            out_of_rotation.insert((service.to_owned(), backend.to_owned()));
        }
    }
    // A backend without a key is ready: one the fleet enabled while this host was away (or
    // that this host had disabled on its own before it joined) comes back into rotation.
    let revision = response
        .header()
        .map_or(0, etcd_client::ResponseHeader::revision);
    for service in target.services().map_err(apply_error("definitions"))? {
        for backend in service.blue.iter().chain(&service.green) {
            if !out_of_rotation.contains(&(service.name.clone(), backend.to_string())) {
                apply_backend(
                    fleet,
                    target,
                    session,
                    &service.name,
                    *backend,
                    Admin::Ready,
                    revision,
                )?;
            }
        }
    }
    Ok(revision)
}

/// One key of the desired state: a service's desired state is applied (unless this host
/// does not serve it, holds a local override, or disagrees on its definition or the seed);
/// a service's definition hash is compared with this host's.
fn handle<T: Target>(
    fleet: &Fleet,
    target: &T,
    session: &Session,
    kv: &KeyValue,
) -> Result<(), FleetError> {
    let key = kv.key_str().unwrap_or_default();
    match fleet.keys.parse_service_key(key) {
        Some(ServiceKey::Definition(service)) => {
            if let Some(local) = session.definitions.get(service) {
                let fleet_hash = kv.value_str().unwrap_or_default().to_owned();
                let mut status = fleet.lock();
                if &fleet_hash == local {
                    status.mismatched.remove(service);
                } else {
                    status
                        .mismatched
                        .insert(service.to_owned(), (local.clone(), fleet_hash));
                }
            }
            Ok(())
        }
        Some(ServiceKey::Desired(service)) => {
            if !session.definitions.contains_key(service) {
                return Ok(());
            }
            let desired: Desired = super::store::decode(kv)?;
            let skip = not_applied(&fleet.lock(), service, true);
            if let Some(reason) = skip {
                tracing::warn!(
                    service,
                    revision = kv.mod_revision(),
                    reason,
                    "fleet: change not applied on this host"
                );
                return Ok(());
            }
            match target.apply(service, &desired) {
                Ok(true) => tracing::info!(
                    service,
                    revision = kv.mod_revision(),
                    green_weight = desired.green_weight,
                    "fleet: desired state applied"
                ),
                Ok(false) => {}
                Err(error) => {
                    // The host stays behind (visible as lag in `fleet status`); the next
                    // change or session tries again.
                    tracing::error!(service, %error, "fleet: could not apply the desired state");
                    return Err(FleetError::Apply {
                        service: service.to_owned(),
                        message: error.to_string(),
                    });
                }
            }
            Ok(())
        }
        Some(ServiceKey::Backend(service, backend)) => {
            let bad = |problem: &str| FleetError::BadValue {
                key: key.to_owned(),
                problem: problem.to_owned(),
            };
            let backend: SocketAddr = backend.parse().map_err(|_| bad("not IP:port"))?;
            let admin =
                backend_state(kv.value()).ok_or_else(|| bad("not \"disabled\" or \"draining\""))?;
            apply_backend(
                fleet,
                target,
                session,
                service,
                backend,
                admin,
                kv.mod_revision(),
            )
        }
        None => Ok(()),
    }
}

/// A deleted key: a backend key gone is that backend ready again.
fn deleted<T: Target>(
    fleet: &Fleet,
    target: &T,
    session: &Session,
    kv: &KeyValue,
) -> Result<(), FleetError> {
    let key = kv.key_str().unwrap_or_default();
    if let Some(ServiceKey::Backend(service, backend)) = fleet.keys.parse_service_key(key)
        && let Ok(backend) = backend.parse()
    {
        apply_backend(
            fleet,
            target,
            session,
            service,
            backend,
            Admin::Ready,
            kv.mod_revision(),
        )?;
    }
    Ok(())
}

/// A rollout key written with an abort `--cut` (`rollout.rs`): the service and canary color
/// whose flows this host unpins, unless it does not serve the service or disagrees on its
/// definition or the seed.
fn cut_requested(fleet: &Fleet, session: &Session, kv: &KeyValue) -> Option<(String, ColorName)> {
    let service = fleet
        .keys
        .parse_rollout_key(kv.key_str().unwrap_or_default())?;
    // A rollout value this host cannot read is the leader's and the CLI's problem (they
    // report it); the session goes on.
    let stored: FleetRollout = match super::store::decode(kv) {
        Ok(stored) => stored,
        Err(error) => {
            tracing::warn!(service, %error, "fleet: unreadable rollout ignored by the watch");
            return None;
        }
    };
    if !stored.cut
        || stored.rollout.phase != Phase::Aborted
        || !session.definitions.contains_key(service)
    {
        return None;
    }
    if let Some(reason) = not_applied(&fleet.lock(), service, false) {
        tracing::warn!(
            service,
            reason,
            "fleet: rollout abort --cut not applied on this host"
        );
        return None;
    }
    Some((service.to_owned(), stored.rollout.canary))
}

/// Unpins `service`'s `color` flows through the single-host `--cut` path. A failure is logged
/// (the abort's weight is applied; the flows stay pinned), not retried: a later session does
/// not cut again, so connections made since are never broken by an old abort.
fn cut<T: Target>(target: &T, service: &str, color: ColorName) {
    match target.cut(service, color) {
        Ok(flows) => {
            tracing::warn!(service, %color, flows, "fleet: rollout aborted with --cut: the canary's established flows unpinned");
        }
        Err(error) => {
            tracing::error!(service, %color, %error, "fleet: rollout abort --cut: could not unpin the canary's flows");
        }
    }
}

/// Brings a backend to the fleet's operator state through the `backend` command's path,
/// unless this host does not serve the service or disagrees on its definition or the seed (a
/// local override holds the weight only: backend states still apply).
fn apply_backend<T: Target>(
    fleet: &Fleet,
    target: &T,
    session: &Session,
    service: &str,
    backend: SocketAddr,
    admin: Admin,
    revision: i64,
) -> Result<(), FleetError> {
    if !session.definitions.contains_key(service) {
        return Ok(());
    }
    let skip = not_applied(&fleet.lock(), service, false);
    if let Some(reason) = skip {
        tracing::warn!(service, %backend, revision, reason, "fleet: backend state not applied on this host");
        return Ok(());
    }
    match target.apply_backend(service, backend, admin) {
        Ok(true) => {
            tracing::info!(service, %backend, admin = admin.name(), revision, "fleet: backend state applied");
            Ok(())
        }
        Ok(false) => Ok(()),
        Err(error) => {
            tracing::error!(service, %backend, %error, "fleet: could not apply the backend state");
            Err(FleetError::Apply {
                service: service.to_owned(),
                message: error.to_string(),
            })
        }
    }
}

/// Writes this host's record (under the session's lease).
async fn publish(fleet: &Fleet, client: &mut Client, session: &Session) -> Result<(), FleetError> {
    let record = {
        let status = fleet.lock();
        fleet
            .metrics
            .mismatched
            .set(i64::try_from(status.mismatched.len()).unwrap_or(i64::MAX));
        HostRecord {
            host: fleet.config.host.clone(),
            version: fleet.version.to_owned(),
            definitions: session.definitions.clone(),
            applied_revision: status.applied_revision,
            heartbeat_unix_ms: unix_ms(),
            overrides: status.overrides.keys().cloned().collect(),
            mismatched: status.mismatched.keys().cloned().collect(),
            seed_agrees: !status.seed_mismatch,
        }
    };
    client
        .put(
            fleet.keys.host(&fleet.config.host),
            serde_json::to_vec(&record).expect("serializes"),
            Some(PutOptions::new().with_lease(session.lease)),
        )
        .await
        .map_err(FleetError::store("publishing the host record"))?;
    Ok(())
}

/// The value of `key`, written as `value` if it has none (the first host decides).
pub(super) async fn create_or_get(
    client: &mut Client,
    key: String,
    value: String,
) -> Result<String, FleetError> {
    let txn = Txn::new()
        .when([Compare::create_revision(key.clone(), CompareOp::Equal, 0)])
        .and_then([TxnOp::put(key.clone(), value.clone(), None)])
        .or_else([TxnOp::get(key.clone(), None)]);
    let response = client
        .txn(txn)
        .await
        .map_err(FleetError::store("agreeing on fleet state"))?;
    if response.succeeded() {
        return Ok(value);
    }
    for op in response.op_responses() {
        if let TxnOpResponse::Get(get) = op
            && let Some(kv) = get.kvs().first()
        {
            return Ok(kv.value_str().unwrap_or_default().to_owned());
        }
    }
    Err(FleetError::BadValue {
        key,
        problem: "vanished while read".to_owned(),
    })
}

fn apply_error<E: std::error::Error>(what: &'static str) -> impl Fn(E) -> FleetError {
    move |error| FleetError::Apply {
        service: what.to_owned(),
        message: error.to_string(),
    }
}

/// Why a fleet change of `service` is not applied on this host, if it is not: another hash
/// seed, a definition that differs from the fleet's, or (for weights and colors, when
/// `overrides_count`) a `switch --local` override in force.
fn not_applied(
    status: &super::report::FleetLocalStatus,
    service: &str,
    overrides_count: bool,
) -> Option<&'static str> {
    if status.seed_mismatch {
        Some("the hash seed differs from the fleet's")
    } else if overrides_count && status.overrides.contains_key(service) {
        Some("a local override is in force (`splitter fleet clear-override`)")
    } else if status.mismatched.contains_key(service) {
        Some("its definition differs from the fleet's")
    } else {
        None
    }
}
