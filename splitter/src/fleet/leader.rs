//! The rollout leadership, and what the leader does with it.
//!
//! Every daemon of the fleet runs this task. It holds a lease of [`LEADER_TTL_SECONDS`],
//! renewed every second; under it, it publishes its rollout signals (`signals.rs`) once a
//! second, and campaigns for `/<fleet>/leader` with a transaction that creates the key under
//! its lease only if it does not exist (etcd's election recipe reduced to one candidate at a
//! time: no queue, the next campaign after the key lapses wins). The key holds the leader's
//! host name; it vanishes when the leader stops renewing (killed, partitioned), at most
//! [`LEADER_TTL_SECONDS`] later, and the next daemon to campaign (each tries every second)
//! takes over.
//!
//! The leader reads every running rollout every [`LEAD_TICK`], sums the live hosts' signals
//! and ticks the rollout engine (`crate::rollout`) on the sum. A rollout it has not judged
//! yet in this term (just started, taken over from a dead leader, changed by an operator) or
//! whose contributing hosts changed gets a fresh window at its step first (a `resume`
//! decision saying why). Each decision is written with the weight it asks for, in one
//! transaction guarded by the leadership lease and the rollout's revision, so a deposed
//! leader or a concurrent operator change cannot be overwritten.

use std::{collections::BTreeMap, convert::Infallible, sync::Arc, time::Duration};

use etcd_client::{Client, Compare, CompareOp, GetOptions, PutOptions, Txn, TxnOp, TxnOpResponse};

use super::{
    Fleet, FleetError, Target,
    host::unix_ms,
    rollout::{FleetRollout, desired_for, write_rollout},
    signals::{HostSignals, sum},
};
use crate::{
    rollout::{Action, Phase, engine::Checks},
    units::ppm_to_percent,
};

/// The leadership lease: a leader that stops renewing loses the key this long after its last
/// renewal. Also the lease of each host's published signals.
pub const LEADER_TTL_SECONDS: i64 = 3;
/// How often the lease is renewed, the signals published and the leadership campaigned for.
const RENEW: Duration = Duration::from_secs(1);
/// How often the leader judges the running rollouts.
pub const LEAD_TICK: Duration = Duration::from_millis(200);
/// Pause between terms (no connection, lease lost).
const RETRY: Duration = Duration::from_secs(1);

/// The rollout task of a fleet daemon: terms until the process ends.
pub async fn lead<T: Target>(fleet: Arc<Fleet>, target: Arc<T>) {
    loop {
        let Err(error) = term(&fleet, &*target).await;
        if fleet.lock().rollout_leader {
            tracing::warn!(%error, "fleet: rollout leadership lost");
        } else {
            tracing::debug!(%error, "fleet: rollout term ended");
        }
        fleet.set_leading(false);
        tokio::time::sleep(RETRY).await;
    }
}

/// A rollout as the leader last wrote it, and the hosts whose signals it summed.
#[derive(Debug, PartialEq)]
struct Judged {
    revision: i64,
    hosts: Vec<String>,
}

struct Term {
    lease: i64,
    leading: bool,
    judged: BTreeMap<String, Judged>,
}

async fn term<T: Target>(fleet: &Fleet, target: &T) -> Result<Infallible, FleetError> {
    let mut client = fleet.client()?;
    let lease = client
        .lease_grant(LEADER_TTL_SECONDS, None)
        .await
        .map_err(FleetError::store("granting the leadership lease"))?
        .id();
    let (mut keeper, mut renewals) = client
        .lease_keep_alive(lease)
        .await
        .map_err(FleetError::store("renewing the leadership lease"))?;
    let mut term = Term {
        lease,
        leading: false,
        judged: BTreeMap::new(),
    };
    let mut renew = tokio::time::interval(RENEW);
    renew.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut tick = tokio::time::interval(LEAD_TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = renew.tick() => {
                keeper
                    .keep_alive()
                    .await
                    .map_err(FleetError::store("renewing the leadership lease"))?;
                let renewal = renewals
                    .message()
                    .await
                    .map_err(FleetError::store("renewing the leadership lease"))?;
                if renewal.is_none_or(|renewal| renewal.ttl() <= 0) {
                    return Err(FleetError::LeaseLost);
                }
                publish_signals(fleet, target, &mut client, lease).await?;
                if !term.leading && campaign(fleet, &mut client, lease).await? {
                    term.leading = true;
                    fleet.set_leading(true);
                    tracing::info!(host = %fleet.config.host, "fleet: this host leads the fleet's rollouts");
                }
            }
            _ = tick.tick(), if term.leading => {
                judge(fleet, &mut client, &mut term).await?;
            }
        }
    }
}

/// Publishes this host's signals under the term's lease.
async fn publish_signals<T: Target>(
    fleet: &Fleet,
    target: &T,
    client: &mut Client,
    lease: i64,
) -> Result<(), FleetError> {
    let services = target.signals().map_err(|error| FleetError::Apply {
        service: "rollout signals".to_owned(),
        message: error.to_string(),
    })?;
    let record = HostSignals {
        host: fleet.config.host.clone(),
        at_unix_ms: unix_ms(),
        services,
    };
    client
        .put(
            fleet.keys.host_signals(&fleet.config.host),
            serde_json::to_vec(&record).expect("serializes"),
            Some(PutOptions::new().with_lease(lease)),
        )
        .await
        .map_err(FleetError::store("publishing the rollout signals"))?;
    Ok(())
}

/// Creates the leader key under `lease` if nobody holds it; `true`: this term leads.
async fn campaign(fleet: &Fleet, client: &mut Client, lease: i64) -> Result<bool, FleetError> {
    let key = fleet.keys.leader();
    let txn = Txn::new()
        .when([Compare::create_revision(key.clone(), CompareOp::Equal, 0)])
        .and_then([TxnOp::put(
            key.clone(),
            fleet.config.host.clone(),
            Some(PutOptions::new().with_lease(lease)),
        )])
        .or_else([TxnOp::get(key, None)]);
    let response = client
        .txn(txn)
        .await
        .map_err(FleetError::store("campaigning for the rollout leadership"))?;
    if response.succeeded() {
        return Ok(true);
    }
    Ok(response.op_responses().iter().any(|op| {
        matches!(op, TxnOpResponse::Get(get) if get.kvs().first().is_some_and(|kv| kv.lease() == lease))
    }))
}

/// One judgement of every running rollout.
async fn judge(fleet: &Fleet, client: &mut Client, term: &mut Term) -> Result<(), FleetError> {
    let running = read_running(fleet, client).await?;
    term.judged.retain(|service, _| {
        running
            .iter()
            .any(|(rollout, _)| &rollout.service == service)
    });
    if running.is_empty() {
        return Ok(());
    }
    let signals = read_signals(fleet, client).await?;
    let now = unix_ms();
    for (mut rollout, revision) in running {
        let service = rollout.service.clone();
        let (counters, hosts) = sum(&signals, &service);
        let logged = rollout.history.len();
        let action = match term.judged.get(&service) {
            Some(judged) if judged.revision == revision && judged.hosts == hosts => {
                rollout.tick(now, &counters, &Checks::Pass)
            }
            Some(judged) if judged.revision == revision => {
                let why = format!(
                    "the hosts judged changed: fresh window on the signals summed over {} hosts ({}), was {}",
                    hosts.len(),
                    hosts.join(","),
                    judged.hosts.join(",")
                );
                rollout.resume(now, counters, &why)
            }
            _ => {
                let why = format!(
                    "host {} leads the fleet's rollout: fresh window on the signals summed over {} hosts ({})",
                    fleet.config.host,
                    hosts.len(),
                    hosts.join(",")
                );
                rollout.resume(now, counters, &why)
            }
        };
        if rollout.history.len() == logged && action == Action::None {
            continue;
        }
        let desired = desired_for(&rollout, action);
        let guard = vec![
            Compare::lease(fleet.keys.leader(), CompareOp::Equal, term.lease),
            Compare::mod_revision(fleet.keys.rollout(&service), CompareOp::Equal, revision),
        ];
        if let Some(written) =
            write_rollout(fleet, client, guard, &rollout, desired.as_ref()).await?
        {
            log_decisions(&rollout, logged, written);
            term.judged.insert(
                service,
                Judged {
                    revision: written,
                    hosts,
                },
            );
        } else if leads(fleet, client, term.lease).await? {
            // An operator changed the rollout meanwhile: judged afresh at the next tick.
            term.judged.remove(&service);
        } else {
            tracing::warn!("fleet: another host leads the rollouts now");
            term.leading = false;
            term.judged.clear();
            fleet.set_leading(false);
            return Ok(());
        }
    }
    Ok(())
}

/// One log line per new decision, with the numbers behind it.
fn log_decisions(rollout: &crate::rollout::Rollout, logged: usize, revision: i64) {
    for decision in rollout.history.iter().skip(logged) {
        tracing::info!(
            service = %rollout.service,
            action = %decision.action,
            from = %ppm_to_percent(decision.from_weight),
            to = %ppm_to_percent(decision.to_weight),
            reason = %decision.reason,
            revision,
            green_flows = decision.green.new_flows,
            green_failure_ratio = decision.green.failure_ratio,
            blue_flows = decision.blue.new_flows,
            blue_failure_ratio = decision.blue.failure_ratio,
            "fleet rollout"
        );
    }
}

/// The running rollouts of the fleet and the revision each was written at.
async fn read_running(
    fleet: &Fleet,
    client: &mut Client,
) -> Result<Vec<(crate::rollout::Rollout, i64)>, FleetError> {
    let response = client
        .get(fleet.keys.services(), Some(GetOptions::new().with_prefix()))
        .await
        .map_err(FleetError::store("reading the rollouts"))?;
    let mut running = Vec::new();
    for kv in response.kvs() {
        let key = kv.key_str().unwrap_or_default();
        if fleet.keys.parse_rollout_key(key).is_none() {
            continue;
        }
        let stored: FleetRollout = super::store::decode(kv)?;
        if stored.rollout.phase == Phase::Running {
            running.push((stored.rollout, kv.mod_revision()));
        }
    }
    Ok(running)
}

/// Whether the leader key is still held under `lease`.
async fn leads(fleet: &Fleet, client: &mut Client, lease: i64) -> Result<bool, FleetError> {
    let response = client
        .get(fleet.keys.leader(), None)
        .await
        .map_err(FleetError::store("reading the rollout leadership"))?;
    Ok(response.kvs().first().is_some_and(|kv| kv.lease() == lease))
}

/// The live hosts' published signals.
async fn read_signals(fleet: &Fleet, client: &mut Client) -> Result<Vec<HostSignals>, FleetError> {
    super::store::read_prefix(
        client,
        fleet.keys.signals(),
        "reading the hosts' rollout signals",
    )
    .await
}
