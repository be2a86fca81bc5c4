//! Reply-path entries of backends no service uses any more: removed once no pinned flow goes
//! to them (until then their replies must still be rewritten). And the pinned flows of removed
//! services, which leave at once.

use std::{
    collections::{BTreeSet, HashMap, HashSet},
    net::SocketAddr,
};

use splitter_common::{BackendKey, ServiceKey};

use super::{App, AppError};
use crate::{
    config::ColorName,
    dataplane::{
        maps::StateCounts,
        services::{service_key, socket_addr},
    },
};

impl App {
    /// The `SERVICES` keys of the installed services: a verified flow to anything else is
    /// unpinned ([`crate::dataplane::maps::FlowScan::unpin_unserved`]).
    pub fn served(&self) -> HashSet<ServiceKey> {
        self.installed
            .keys()
            .map(|(address, protocol)| service_key(address, *protocol))
            .collect()
    }

    /// Unpins the flows of services that are not installed any more (after a start; a reload
    /// does it off the lock, see `Shared::reload`).
    pub(super) fn unpin_removed_services(&self) -> Result<(), AppError> {
        let removed = self.flow_scan().unpin_unserved(&self.served())?;
        if removed > 0 {
            tracing::info!(flows = removed, "unpinned the flows of removed services");
        }
        Ok(())
    }

    /// Removes the reply-path entries of backends no service uses any more, once no pinned
    /// flow goes to them (until then their replies must still be rewritten).
    pub(super) fn forget_removed_backends(&mut self) -> Result<(), AppError> {
        let orphans = self.orphan_backends()?;
        if orphans.is_empty() {
            return Ok(());
        }
        let held = self.flow_scan().census()?.backends;
        self.forget_backends(&orphans, &held)
    }

    /// Reply-path entries of backends no service uses, with every backend id they answer for
    /// (a shared one: each candidate's). The daemon scans the flow table for them *without*
    /// the application lock (a reload of a big table must not stall control, metrics and
    /// rollouts), then calls [`App::forget_backends`].
    pub fn orphan_backends(&self) -> Result<Vec<(BackendKey, u32)>, AppError> {
        let in_use = self.backends_in_use();
        Ok(self
            .dataplane
            .maps
            .reply_candidates()?
            .into_iter()
            .filter(|reply| {
                let key = &reply.key;
                let address = socket_addr(&key.addr, key.port, key.family);
                !in_use.contains(&(address, key.protocol))
            })
            .flat_map(|reply| {
                let key = reply.key;
                reply
                    .candidates
                    .into_iter()
                    .map(move |candidate| (key, candidate.backend_id))
            })
            .collect())
    }

    /// Removes the orphans no flow entry uses (`held`: backend ids with an entry in either
    /// table, closed ones too: their last segments still need the mapping; from a scan made
    /// after [`App::orphan_backends`]); a backend a service took back since is kept.
    pub fn forget_backends(
        &mut self,
        orphans: &[(BackendKey, u32)],
        held: &HashMap<u32, StateCounts>,
    ) -> Result<(), AppError> {
        let in_use = self.backends_in_use();
        // A key stays while any of its ids is held (a shared backend lists several).
        let held_keys: Vec<BackendKey> = orphans
            .iter()
            .filter(|(_, backend_id)| held.contains_key(backend_id))
            .map(|(key, _)| *key)
            .collect();
        for (key, _) in orphans {
            let address = socket_addr(&key.addr, key.port, key.family);
            if !in_use.contains(&(address, key.protocol)) && !held_keys.contains(key) {
                self.dataplane.maps.remove_backend_reverse(key)?;
                self.dataplane.maps.remove_shared(key)?;
            }
        }
        Ok(())
    }

    /// The backends of installed services: in their pools, or configured and out of rotation.
    fn backends_in_use(&self) -> BTreeSet<(SocketAddr, u8)> {
        let configured = self.config.services.iter().flat_map(|service| {
            ColorName::BOTH.into_iter().flat_map(move |color| {
                service
                    .pool(color)
                    .iter()
                    .map(move |address| (*address, service.protocol.number()))
            })
        });
        self.installed
            .values()
            .flat_map(|service| {
                ColorName::BOTH.into_iter().flat_map(move |color| {
                    service
                        .pool(color)
                        .iter()
                        .map(move |(_, address)| (*address, service.protocol.number()))
                })
            })
            .chain(configured)
            .collect()
    }
}
