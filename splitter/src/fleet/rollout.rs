//! The fleet's rollouts as the CLI sees them: one rollout per service, stored in etcd
//! (`/<fleet>/services/<service>/rollout`) next to the desired state it drives. `rollout
//! start` on any host writes the rollout and its first weight in one transaction; `abort`,
//! `pause`, `resume` and `promote` change it the same way (read, change, write if nobody
//! changed it meanwhile). The leader (`leader.rs`) judges the running ones and writes every
//! decision; every host applies the weights through the watch, as any fleet write.

use etcd_client::{Client, Compare, CompareOp, Txn, TxnOp};
use serde::{Deserialize, Serialize};

use super::{Desired, Fleet, FleetError, report::FleetWrite};
use crate::{
    config::Service,
    rollout::{Action, Phase, Rollout},
};

/// How often a change that lost a race with the leader's write is tried again.
const CHANGE_ATTEMPTS: usize = 5;

/// What the fleet stores of a service's rollout.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FleetRollout {
    /// The host that wrote it last: the leader for its decisions, else the operator's host.
    pub written_by: String,
    pub rollout: Rollout,
    /// Over which hosts the leader summed the signals when it last wrote it (`signals summed
    /// over 2 of 3 hosts (c: definition differs)`); `rollout status` shows it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub summed: Option<String>,
    /// Aborted with `--cut`: every host unpins the canary's established flows when it applies
    /// the abort (each host cuts its own, as the single-host `--cut` does).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub cut: bool,
}

/// The desired state a rollout's action and phase ask for: a completed rollout is a switch
/// to the canary (it becomes the stable color on every host); a weight change is a weight.
pub fn desired_for(rollout: &Rollout, action: Action) -> Option<Desired> {
    match (rollout.phase, action) {
        (Phase::Completed, _) => Some(Desired::switch(rollout.canary)),
        (_, Action::SetWeight(weight)) => Some(Desired::weight(weight)),
        (_, Action::None) => None,
    }
}

/// The operations of one rollout write: the rollout (`written_by` set to this host) and, if
/// it asks for one, the desired state. `guard` are the conditions (nobody wrote the rollout
/// since it was read, ...).
pub(super) async fn write_rollout(
    fleet: &Fleet,
    client: &mut Client,
    guard: Vec<Compare>,
    mut stored: FleetRollout,
    desired: Option<&Desired>,
) -> Result<Option<i64>, FleetError> {
    stored.written_by.clone_from(&fleet.config.host);
    let service = stored.rollout.service.as_str();
    let mut ops = vec![TxnOp::put(
        fleet.keys.rollout(service),
        serde_json::to_vec(&stored).expect("serializes"),
        None,
    )];
    if let Some(desired) = desired {
        ops.push(TxnOp::put(
            fleet.keys.desired(service),
            serde_json::to_vec(desired).expect("serializes"),
            None,
        ));
    }
    let response = client
        .txn(Txn::new().when(guard).and_then(ops))
        .await
        .map_err(FleetError::store("writing the rollout"))?;
    Ok(response.succeeded().then(|| {
        response
            .header()
            .map_or(0, etcd_client::ResponseHeader::revision)
    }))
}

impl Fleet {
    /// The fleet's rollout of `service` and the revision it was written at, if there is one.
    pub(super) async fn read_rollout(
        &self,
        client: &mut Client,
        service: &str,
    ) -> Result<Option<(FleetRollout, i64)>, FleetError> {
        let key = self.keys.rollout(service);
        let response = client
            .get(key.clone(), None)
            .await
            .map_err(FleetError::store("reading the rollout"))?;
        response
            .kvs()
            .first()
            .map(|kv| super::store::decode(kv).map(|stored| (stored, kv.mod_revision())))
            .transpose()
    }

    /// `rollout status` with `[fleet]`.
    pub async fn rollout(&self, service: &str) -> Result<FleetRollout, FleetError> {
        let mut client = self.client()?;
        self.read_rollout(&mut client, service)
            .await?
            .map(|(stored, _)| stored)
            .ok_or_else(|| FleetError::NoRollout {
                service: service.to_owned(),
            })
    }

    /// `rollout start` with `[fleet]`: `rollout` (built by this host from its plan and the
    /// weight in force) and its first weight, in one write; refused while another runs. With
    /// `wait`, answers once every live host applied the first weight.
    pub async fn start_rollout(
        &self,
        definition: &Service,
        rollout: &Rollout,
        action: Action,
        wait: bool,
    ) -> Result<FleetWrite, FleetError> {
        let mut client = self.client()?;
        self.agree_on_definition(&mut client, definition).await?;
        let service = definition.name.as_str();
        let existing = self.read_rollout(&mut client, service).await?;
        let read_at = match &existing {
            Some((stored, _)) if matches!(stored.rollout.phase, Phase::Running | Phase::Paused) => {
                return Err(FleetError::RolloutBusy {
                    service: service.to_owned(),
                    host: stored.written_by.clone(),
                });
            }
            Some((_, revision)) => *revision,
            None => 0,
        };
        let desired = desired_for(rollout, action).unwrap_or(Desired::weight(rollout.weight()));
        let guard = vec![Compare::mod_revision(
            self.keys.rollout(service),
            CompareOp::Equal,
            read_at,
        )];
        let stored = FleetRollout {
            written_by: String::new(),
            rollout: rollout.clone(),
            summed: None,
            cut: false,
        };
        let Some(revision) =
            write_rollout(self, &mut client, guard, stored, Some(&desired)).await?
        else {
            return Err(FleetError::RolloutConflict {
                service: service.to_owned(),
            });
        };
        tracing::info!(
            service,
            revision,
            green_weight = desired.green_weight,
            "fleet: rollout started"
        );
        self.wait_applied(&mut client, service, &desired, revision, wait)
            .await
    }

    /// `rollout list` with `[fleet]`: every service's rollout in the fleet (running, paused or
    /// the last finished one), by service name.
    pub async fn rollouts(&self) -> Result<Vec<FleetRollout>, FleetError> {
        let mut client = self.client()?;
        let response = client
            .get(
                self.keys.services(),
                Some(etcd_client::GetOptions::new().with_prefix()),
            )
            .await
            .map_err(FleetError::store("reading the rollouts"))?;
        response
            .kvs()
            .iter()
            .filter(|kv| {
                self.keys
                    .parse_rollout_key(kv.key_str().unwrap_or_default())
                    .is_some()
            })
            .map(super::store::decode)
            .collect()
    }

    /// `rollout abort|pause|resume|promote` with `[fleet]`: `change` applied to the stored
    /// rollout and written back with the weight it asks for (again if the leader wrote
    /// meanwhile). Returns the rollout as written.
    pub async fn change_rollout(
        &self,
        service: &str,
        change: impl Fn(&mut Rollout) -> Action,
    ) -> Result<Rollout, FleetError> {
        let mut client = self.client()?;
        let (stored, _) = self
            .write_change(&mut client, service, false, change)
            .await?;
        Ok(stored.rollout)
    }

    /// `rollout abort --cut` with `[fleet]`: the abort is written with `cut`, and every host
    /// that applies it unpins its own canary flows (`watch.rs`); answers once every live host
    /// applied the revision (or `[fleet] wait` passed).
    pub async fn abort_cut(
        &self,
        service: &str,
        change: impl Fn(&mut Rollout) -> Action,
    ) -> Result<(Rollout, FleetWrite), FleetError> {
        let mut client = self.client()?;
        let (stored, revision) = self
            .write_change(&mut client, service, true, change)
            .await?;
        let desired = Desired::weight(stored.rollout.weight());
        let outcome = self
            .wait_applied(&mut client, service, &desired, revision, true)
            .await?;
        Ok((stored.rollout, outcome))
    }

    /// Reads the rollout, applies `change`, writes it back (with `cut`) if nobody wrote it
    /// meanwhile, else tries again; returns what was written and its revision.
    async fn write_change(
        &self,
        client: &mut Client,
        service: &str,
        cut: bool,
        change: impl Fn(&mut Rollout) -> Action,
    ) -> Result<(FleetRollout, i64), FleetError> {
        for _ in 0..CHANGE_ATTEMPTS {
            let Some((mut stored, read_at)) = self.read_rollout(client, service).await? else {
                return Err(FleetError::NoRollout {
                    service: service.to_owned(),
                });
            };
            let action = change(&mut stored.rollout);
            stored.cut = cut;
            let desired = desired_for(&stored.rollout, action);
            let guard = vec![Compare::mod_revision(
                self.keys.rollout(service),
                CompareOp::Equal,
                read_at,
            )];
            if let Some(revision) =
                write_rollout(self, client, guard, stored.clone(), desired.as_ref()).await?
            {
                tracing::info!(service, revision, phase = ?stored.rollout.phase, cut, "fleet: rollout changed");
                return Ok((stored, revision));
            }
        }
        Err(FleetError::RolloutConflict {
            service: service.to_owned(),
        })
    }
}
