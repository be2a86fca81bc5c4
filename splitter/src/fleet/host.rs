//! What each host publishes about itself (`/<fleet>/hosts/<host>`, under a lease: it vanishes
//! when the host stops renewing it), and the hash of a service's definition.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::config::Service;

/// One host's record.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostRecord {
    pub host: String,
    /// `splitter --version` of the daemon.
    pub version: String,
    /// Hash of each configured service's definition ([`definition_hash`]).
    pub definitions: BTreeMap<String, String>,
    /// The last etcd revision of the desired state this host has applied.
    pub applied_revision: i64,
    /// When the record was last written (Unix milliseconds).
    pub heartbeat_unix_ms: u64,
    /// Services held by a local override (`switch --local`): fleet changes wait.
    #[serde(default)]
    pub overrides: Vec<String>,
    /// Services whose definition differs from the fleet's: fleet changes are not applied.
    #[serde(default)]
    pub mismatched: Vec<String>,
    /// Whether the data plane runs the fleet's hash seed (a host that does not is left alone).
    #[serde(default = "yes")]
    pub seed_agrees: bool,
}

impl HostRecord {
    /// Why this host does not apply fleet changes of `service`, if it does not.
    pub fn leaves_alone(&self, service: &str) -> Option<&'static str> {
        if !self.seed_agrees {
            Some("its hash seed differs from the fleet's")
        } else if self.mismatched.iter().any(|name| name == service) {
            Some("its definition of the service differs from the fleet's")
        } else if self.overrides.iter().any(|name| name == service) {
            Some("a local override is in force")
        } else {
            None
        }
    }
}

fn yes() -> bool {
    true
}

/// A stable hash (FNV-1a 64, hex) of what must be the same on every host for a flow to get
/// the same backend anywhere: address, protocol, cohort, and both pools in order. Weights,
/// releases and the rollout plan are not part of it.
pub fn definition_hash(service: &Service) -> String {
    let list = |pool: &[std::net::SocketAddr]| {
        pool.iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(",")
    };
    let text = format!(
        "{}|{}|{}|{}|{}",
        service.address,
        service.protocol.name(),
        service.cohort.name(),
        list(&service.blue),
        list(&service.green),
    );
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in text.bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{hash:016x}")
}

/// Milliseconds since the Unix epoch.
pub fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |since| {
            u64::try_from(since.as_millis()).unwrap_or(u64::MAX)
        })
}
