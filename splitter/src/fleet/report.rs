//! What the fleet reports over the control socket: the local view in `status`, `fleet status`,
//! and the outcome of a fleet write (`set-weight`, `switch`).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::host::HostRecord;
use crate::color::ColorName;

/// This host's view of the fleet (`status`, metrics).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FleetLocalStatus {
    pub fleet: String,
    pub host: String,
    /// Whether the host is connected to etcd now; disconnected: the last applied state stays.
    pub connected: bool,
    /// The last etcd revision of the desired state applied here.
    pub applied_revision: i64,
    /// `switch --local` overrides in force (until `fleet clear-override`).
    pub overrides: BTreeMap<String, ColorName>,
    /// Services whose definition differs from the fleet's (fleet changes not applied):
    /// service → (this host's hash, the fleet's).
    pub mismatched: BTreeMap<String, (String, String)>,
    /// The fleet's seed differs from the one this data plane runs: fleet changes are not
    /// applied at all.
    pub seed_mismatch: bool,
    /// This host holds the rollout leadership (it judges and decides the fleet's rollouts).
    #[serde(default)]
    pub rollout_leader: bool,
    /// Why the host is disconnected, when it is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
}

/// `fleet status`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FleetStatusReport {
    pub fleet: String,
    /// The host that answered.
    pub host: String,
    /// The newest revision of the fleet's desired state.
    pub desired_revision: i64,
    /// The fleet's hash of each service's definition.
    pub definitions: BTreeMap<String, String>,
    pub hosts: Vec<FleetHost>,
}

/// One live host in `fleet status`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FleetHost {
    #[serde(flatten)]
    pub record: HostRecord,
    /// Revisions of desired state not yet applied.
    pub lag: i64,
    /// Milliseconds since its last heartbeat.
    pub heartbeat_age_ms: u64,
}

/// The outcome of a fleet write (`set-weight`, `switch` with `[fleet]`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FleetWrite {
    pub service: String,
    pub green_weight: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stable: Option<ColorName>,
    /// The etcd revision of the write.
    pub revision: i64,
    /// Whether the daemon waited for the hosts (`--no-wait`: no).
    pub waited: bool,
    /// Live hosts that have applied the revision, of all live hosts.
    pub hosts_applied: usize,
    pub hosts_live: usize,
    /// Live hosts still behind when the wait ended (empty: all applied).
    pub behind: Vec<String>,
    /// Live hosts that leave the service alone (definition or seed differs, local override):
    /// `host: why`. Not waited for.
    #[serde(default)]
    pub left_alone: Vec<String>,
}

/// `fleet adopt-definition SERVICE`: this host's definition is the fleet's now.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AdoptedDefinition {
    pub service: String,
    /// The fleet's definition hash now (this host's).
    pub definition: String,
    /// The etcd revision of the write.
    pub revision: i64,
    /// Live hosts whose definition differs from it (left alone until their files catch up).
    pub differ: Vec<String>,
}

/// What a fleet rollout's report adds (`rollout status|list|abort` with `[fleet]`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RolloutFleetNotes {
    /// Over which hosts the leader summed the signals when it last decided (`signals summed
    /// over 2 of 3 hosts (c: definition differs)`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fleet_signals: Option<String>,
    /// `rollout abort --cut`: how many live hosts applied the abort (and cut).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fleet_write: Option<FleetWrite>,
}
