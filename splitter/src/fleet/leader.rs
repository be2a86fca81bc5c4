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
//! The leader reads every running rollout every [`LEAD_TICK`], sums the signals of the live
//! hosts whose definition of the service is the fleet's (a host that differs serves another
//! pool: left out, and the rollout says so), evaluates the rollout's external PromQL checks
//! (`[[service.rollout.check]]`, as a single-host daemon does) and ticks the rollout engine
//! (`crate::rollout`) on the sum and the checks' outcome. A rollout it has not judged
//! yet in this term (just started, taken over from a dead leader, changed by an operator) or
//! whose contributing hosts changed gets a fresh window at its step first (a `resume`
//! decision saying why). Each decision is written with the weight it asks for, in one
//! transaction guarded by the leadership lease and the rollout's revision, so a deposed
//! leader or a concurrent operator change cannot be overwritten.

use std::{collections::BTreeMap, convert::Infallible, sync::Arc, time::Duration};

use etcd_client::{Client, Compare, CompareOp, GetOptions, PutOptions, Txn, TxnOp, TxnOpResponse};

use super::{
    Fleet, FleetError, Target,
    host::{definition_hash, unix_ms},
    rollout::{FleetRollout, desired_for, write_rollout},
    signals::{HostSignals, Summed, sum},
};
use crate::rollout::{Action, Phase, Rollout, engine::Checks};

/// The leadership lease: a leader that stops renewing loses the key this long after its last
/// renewal. Also the lease of each host's published signals.
pub const LEADER_TTL_SECONDS: i64 = 3;
/// How often the lease is renewed, the signals published and the leadership campaigned for.
const RENEW: Duration = Duration::from_secs(1);
/// How often the leader judges the running rollouts.
pub const LEAD_TICK: Duration = Duration::from_millis(200);
/// The most the leader waits for a rollout's external checks in one tick: with the renewal
/// every [`RENEW`], the lease ([`LEADER_TTL_SECONDS`]) cannot lapse while it waits.
const CHECKS_TIMEOUT: Duration = Duration::from_millis(1500);
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

/// A rollout as the leader last wrote it, and over which hosts it summed the signals
/// ([`Summed::describe`]).
#[derive(Debug, PartialEq)]
struct Judged {
    revision: i64,
    summed: String,
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
    let definitions = target
        .services()
        .map_err(|error| FleetError::Apply {
            service: "definitions".to_owned(),
            message: error.to_string(),
        })?
        .iter()
        .map(|service| (service.name.clone(), definition_hash(service)))
        .collect();
    let record = HostSignals {
        host: fleet.config.host.clone(),
        at_unix_ms: unix_ms(),
        services,
        definitions,
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
    let (running, definitions) = read_running(fleet, client).await?;
    term.judged.retain(|service, _| {
        running
            .iter()
            .any(|(rollout, _)| &rollout.service == service)
    });
    if running.is_empty() {
        return Ok(());
    }
    let signals = read_signals(fleet, client).await?;
    for (mut rollout, revision) in running {
        let service = rollout.service.clone();
        let summed = sum(
            &signals,
            &service,
            definitions.get(&service).map(String::as_str),
        );
        let checks = evaluate_checks(&rollout).await;
        let logged = rollout.history.len();
        let action = decide(
            &mut rollout,
            term.judged.get(&service),
            revision,
            &summed,
            &checks,
            &fleet.config.host,
            unix_ms(),
        );
        if rollout.history.len() == logged && action == Action::None {
            continue;
        }
        let desired = desired_for(&rollout, action);
        let guard = vec![
            Compare::lease(fleet.keys.leader(), CompareOp::Equal, term.lease),
            Compare::mod_revision(fleet.keys.rollout(&service), CompareOp::Equal, revision),
        ];
        let stored = FleetRollout {
            written_by: String::new(),
            rollout: rollout.clone(),
            summed: Some(summed.describe()),
            cut: false,
        };
        if let Some(written) = write_rollout(fleet, client, guard, stored, desired.as_ref()).await?
        {
            log_decisions(&rollout, logged, written);
            term.judged.insert(
                service,
                Judged {
                    revision: written,
                    summed: summed.describe(),
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

/// The rollout's external checks, as a single host evaluates them (`rollout/prometheus.rs`),
/// bounded by [`CHECKS_TIMEOUT`] so a slow Prometheus cannot hold the term's lease renewal
/// past its TTL: a check that does not answer in time holds the rollout (unknown).
async fn evaluate_checks(rollout: &Rollout) -> Checks {
    if rollout.plan.checks.is_empty() {
        return Checks::Pass;
    }
    tokio::time::timeout(
        CHECKS_TIMEOUT,
        crate::rollout::prometheus::evaluate(&rollout.plan.checks),
    )
    .await
    .unwrap_or_else(|_| {
        Checks::Unknown(format!(
            "the external checks did not answer within {CHECKS_TIMEOUT:?}"
        ))
    })
}

/// The leader's decision on one running rollout, written at `revision`: a tick of the engine
/// on `summed` and the external `checks` if this term judged it last over the same hosts,
/// else a fresh window at its step (a `resume` saying why).
fn decide(
    rollout: &mut Rollout,
    judged: Option<&Judged>,
    revision: i64,
    summed: &Summed,
    checks: &Checks,
    host: &str,
    now: u64,
) -> Action {
    let over = summed.describe();
    let counters = summed.window;
    match judged {
        Some(judged) if judged.revision == revision && judged.summed == over => {
            rollout.tick(now, &counters, checks)
        }
        Some(judged) if judged.revision == revision => {
            let why = format!(
                "the hosts judged changed: fresh window on the {over}, was {}",
                judged.summed
            );
            rollout.resume(now, counters, &why)
        }
        _ => {
            let why = format!("host {host} leads the fleet's rollout: fresh window on the {over}");
            rollout.resume(now, counters, &why)
        }
    }
}

/// One log line per new decision, with the numbers behind it.
fn log_decisions(rollout: &Rollout, logged: usize, revision: i64) {
    for decision in rollout.history.iter().skip(logged) {
        crate::rollout::log_decision(&rollout.service, decision, Some(revision));
    }
}

/// The running rollouts of the fleet and the revision each was written at, and the fleet's
/// definition hash of every service.
async fn read_running(
    fleet: &Fleet,
    client: &mut Client,
) -> Result<(Vec<(Rollout, i64)>, BTreeMap<String, String>), FleetError> {
    let response = client
        .get(fleet.keys.services(), Some(GetOptions::new().with_prefix()))
        .await
        .map_err(FleetError::store("reading the rollouts"))?;
    let mut running = Vec::new();
    let mut definitions = BTreeMap::new();
    for kv in response.kvs() {
        let key = kv.key_str().unwrap_or_default();
        if let Some(super::keys::ServiceKey::Definition(service)) =
            fleet.keys.parse_service_key(key)
        {
            definitions.insert(
                service.to_owned(),
                kv.value_str().unwrap_or_default().to_owned(),
            );
        }
        if fleet.keys.parse_rollout_key(key).is_none() {
            continue;
        }
        let stored: FleetRollout = super::store::decode(kv)?;
        if stored.rollout.phase == Phase::Running {
            running.push((stored.rollout, kv.mod_revision()));
        }
    }
    Ok((running, definitions))
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

#[cfg(test)]
mod tests {
    //! The leader's decision path with the external checks' results fed in (the PromQL queries
    //! themselves are `rollout/prometheus.rs`, in `rollout/prometheus.rs`).
    use std::time::Duration;

    use splitter_common::signals::HANDSHAKE_BUCKETS;

    use super::*;
    use crate::{
        color::ColorName,
        rollout::{
            ColorSignals, Start, Window,
            plan::{Check, CheckBound, Plan, Thresholds},
        },
    };

    fn rollout() -> Rollout {
        let check = Check {
            prometheus: "http://127.0.0.1:9090".to_owned(),
            query: "sum(rate(http_5xx[1m]))".to_owned(),
            bound: CheckBound::Max(0.01),
        };
        let thresholds = Thresholds {
            min_flows: 10,
            ..Thresholds::default()
        };
        let plan = Plan::new(
            &[10.0, 50.0, 100.0],
            Duration::from_secs(1),
            thresholds,
            vec![check],
        )
        .unwrap();
        let start = Start {
            canary: ColorName::Green,
            current_weight: 0,
            from_current: false,
        };
        Rollout::start("web", plan, start, 0, Window::default())
            .unwrap()
            .0
    }

    /// Three hosts that saw a healthy canary (`green` handshakes each, none failed).
    fn summed(green: u64) -> Summed {
        let mut window = Window::default();
        for (signals, count) in [(&mut window.blue, 3000), (&mut window.green, green)] {
            let mut buckets = [0; HANDSHAKE_BUCKETS];
            buckets[2] = count;
            *signals = ColorSignals {
                new_flows: count,
                handshakes_completed: count,
                latency_buckets: buckets,
                ..ColorSignals::default()
            };
        }
        Summed {
            window,
            hosts: vec!["a".into(), "b".into(), "c".into()],
            left_out: Vec::new(),
        }
    }

    /// Judged by this term at `revision` over `summed`.
    fn judged(revision: i64, summed: &Summed) -> Judged {
        Judged {
            revision,
            summed: summed.describe(),
        }
    }

    #[test]
    fn a_failed_check_aborts_the_fleets_rollout_and_an_unknown_one_holds() {
        let fresh = summed(0);
        let mut r = rollout();
        // First judgement of this term: a fresh window, whatever the checks say.
        let action = decide(&mut r, None, 7, &fresh, &Checks::Pass, "a", 0);
        assert_eq!(action, Action::SetWeight(100_000));
        assert!(
            r.history
                .last()
                .unwrap()
                .reason
                .contains("host a leads the fleet's rollout: fresh window on the signals summed over 3 hosts (a,b,c)"),
            "{:?}",
            r.history
        );
        let healthy = summed(300);
        let before = judged(8, &fresh);
        // Enough flows, window over, but Prometheus did not answer: hold (no decision).
        let unknown = Checks::Unknown("check `...`: connection refused".into());
        let mut held = r.clone();
        assert_eq!(
            decide(&mut held, Some(&before), 8, &healthy, &unknown, "a", 2_000),
            Action::None
        );
        assert_eq!(held.phase, Phase::Running);
        // The same with the check passing: advance.
        let mut advanced = r.clone();
        assert_eq!(
            decide(
                &mut advanced,
                Some(&before),
                8,
                &healthy,
                &Checks::Pass,
                "a",
                2_000
            ),
            Action::SetWeight(500_000)
        );
        // Out of bounds: abort to where it started, on every host (the weight it writes).
        let failed = Checks::Fail("check `sum(rate(http_5xx[1m]))` = 0.2 is out of bounds".into());
        let mut aborted = r.clone();
        assert_eq!(
            decide(
                &mut aborted,
                Some(&before),
                8,
                &healthy,
                &failed,
                "a",
                2_000
            ),
            Action::SetWeight(0)
        );
        assert_eq!(aborted.phase, Phase::Aborted);
        assert!(
            aborted
                .history
                .last()
                .unwrap()
                .reason
                .contains("out of bounds"),
            "{:?}",
            aborted.history
        );
    }

    #[test]
    fn a_change_in_the_hosts_summed_gets_a_fresh_window() {
        let mut r = rollout();
        let all = summed(300);
        decide(&mut r, None, 7, &all, &Checks::Pass, "a", 0);
        let mut fewer = summed(200);
        fewer.hosts.pop();
        fewer.left_out.push("c: definition differs".into());
        let action = decide(
            &mut r,
            Some(&judged(8, &all)),
            8,
            &fewer,
            &Checks::Pass,
            "a",
            2_000,
        );
        assert_eq!(action, Action::SetWeight(100_000), "same step");
        assert!(
            r.history.last().unwrap().reason.contains(
                "fresh window on the signals summed over 2 of 3 hosts (c: definition differs)"
            ),
            "{:?}",
            r.history
        );
    }
}
