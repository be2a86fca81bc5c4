//! The fleet's definition of a service (`/<fleet>/services/<service>/definition`), and how it
//! changes. The first host that knows a service writes it; after that it moves in two ways:
//!
//! - **Converged**: when every live host that serves the service reports the same definition
//!   hash and it differs from the fleet's (a pool change rolled through configuration
//!   management and reloaded on every host), any host moves the fleet's hash to it with a
//!   compare-and-swap on the key's mod revision (the first wins, the others find it moved),
//!   logged once by the host that moved it. While hosts differ, nothing moves: the hosts that
//!   differ from the fleet's hash are reported and left alone.
//! - **Adopted**: `splitter fleet adopt-definition SERVICE` on a host writes that host's hash;
//!   the others are mismatched (left alone) until their files catch up.
//!
//! Every host learns of the move through its watch and, if it matches now, applies the
//! fleet's desired state again (`watch.rs`).

use std::collections::{BTreeMap, BTreeSet};

use etcd_client::{Client, Compare, CompareOp, Txn, TxnOp};

use super::{Fleet, FleetError, host::HostRecord, report::AdoptedDefinition};
use crate::config::Service;

/// Moves the fleet's definition of every service on which all live hosts agree to their hash.
pub(super) async fn converge(fleet: &Fleet, client: &mut Client) -> Result<(), FleetError> {
    let hosts: Vec<HostRecord> =
        super::store::read_prefix(client, fleet.keys.hosts(), "reading the host records").await?;
    for (service, hash) in unanimous(&hosts) {
        let key = fleet.keys.definition(&service);
        let response = client
            .get(key.clone(), None)
            .await
            .map_err(FleetError::store("reading a service definition"))?;
        // No key yet: the first host that knows the service writes it (`watch.rs`).
        let Some(kv) = response.kvs().first() else {
            continue;
        };
        let before = kv.value_str().unwrap_or_default().to_owned();
        if before == hash {
            continue;
        }
        let txn = Txn::new()
            .when([Compare::mod_revision(
                key.clone(),
                CompareOp::Equal,
                kv.mod_revision(),
            )])
            .and_then([TxnOp::put(key, hash.clone(), None)]);
        let moved = client
            .txn(txn)
            .await
            .map_err(FleetError::store("moving a service definition"))?;
        if moved.succeeded() {
            tracing::info!(
                service,
                from = %before,
                to = %hash,
                hosts = hosts.len(),
                "fleet: every live host runs the same new definition of the service: it is the fleet's now, fleet changes apply again"
            );
        }
    }
    Ok(())
}

/// The services whose definition hash is the same on every live host that serves them.
fn unanimous(hosts: &[HostRecord]) -> BTreeMap<String, String> {
    let mut hashes: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    for host in hosts {
        for (service, hash) in &host.definitions {
            hashes.entry(service).or_default().insert(hash);
        }
    }
    hashes
        .into_iter()
        .filter_map(|(service, set)| {
            let mut set = set.into_iter();
            match (set.next(), set.next()) {
                (Some(hash), None) => Some((service.to_owned(), hash.to_owned())),
                _ => None,
            }
        })
        .collect()
}

impl Fleet {
    /// `fleet adopt-definition SERVICE`: this host's definition becomes the fleet's; says which
    /// live hosts differ from it now (they are left alone until their files catch up).
    pub async fn adopt_definition(
        &self,
        definition: &Service,
    ) -> Result<AdoptedDefinition, FleetError> {
        let mut client = self.client()?;
        let service = definition.name.clone();
        let hash = super::host::definition_hash(definition);
        let response = client
            .put(self.keys.definition(&service), hash.clone(), None)
            .await
            .map_err(FleetError::store("writing the service definition"))?;
        let revision = response
            .header()
            .map_or(0, etcd_client::ResponseHeader::revision);
        tracing::warn!(service, definition = %hash, revision, "fleet: the operator made this host's definition of the service the fleet's");
        let hosts: Vec<HostRecord> =
            super::store::read_prefix(&mut client, self.keys.hosts(), "reading the host records")
                .await?;
        let differ = hosts
            .iter()
            .filter(|host| {
                host.definitions
                    .get(&service)
                    .is_some_and(|theirs| theirs != &hash)
            })
            .map(|host| host.host.clone())
            .collect();
        Ok(AdoptedDefinition {
            service,
            definition: hash,
            revision,
            differ,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(name: &str, definitions: &[(&str, &str)]) -> HostRecord {
        HostRecord {
            host: name.to_owned(),
            version: "test".to_owned(),
            definitions: definitions
                .iter()
                .map(|(service, hash)| ((*service).to_owned(), (*hash).to_owned()))
                .collect(),
            applied_revision: 0,
            heartbeat_unix_ms: 0,
            overrides: Vec::new(),
            mismatched: Vec::new(),
            seed_agrees: true,
        }
    }

    #[test]
    fn only_a_definition_every_live_host_shares_is_unanimous() {
        let hosts = [
            host("a", &[("web", "new"), ("api", "x")]),
            host("b", &[("web", "new"), ("api", "y")]),
            // c does not serve web: it has no say on it.
            host("c", &[("api", "x")]),
        ];
        assert_eq!(
            unanimous(&hosts),
            BTreeMap::from([("web".to_owned(), "new".to_owned())])
        );
        assert!(unanimous(&[]).is_empty());
    }
}
