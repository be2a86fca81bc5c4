//! What this host keeps of the fleet in `state_dir/fleet.json`: the last applied revision and
//! the local overrides. The applied weights themselves are in the state file (they were
//! applied by the same path as local commands), so a restart without etcd fails static.

use std::{collections::BTreeMap, path::Path};

use serde::{Deserialize, Serialize};

use crate::{
    color::ColorName,
    state::{StateError, read_optional, write_atomically},
};

const FLEET_FILE: &str = "fleet.json";

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LocalFleet {
    /// The last etcd revision of the desired state applied here.
    pub applied_revision: i64,
    /// `switch SERVICE COLOR --local`: in force until `fleet clear-override SERVICE`.
    #[serde(default)]
    pub overrides: BTreeMap<String, ColorName>,
}

impl LocalFleet {
    pub fn load(dir: &Path) -> Result<Self, StateError> {
        read_optional(dir, FLEET_FILE)
    }

    pub fn save(&self, dir: &Path) -> Result<(), StateError> {
        let text = serde_json::to_string_pretty(self).expect("serializes") + "\n";
        write_atomically(dir, FLEET_FILE, &text)
    }
}
