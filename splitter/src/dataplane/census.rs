//! Counting flows by state, off the daemon's runtime thread: a scan of two large LRU tables
//! takes a while, and through its own handles it does not hold up the owner of `Maps`.

use std::collections::HashMap;

use splitter_common::{Family, FlowKey, FlowState, ServiceKey, flow::stamp_age_ns};

use super::{
    DataplaneError,
    flows::{FlowTable, Stored, TableFds, Unverified, Verified},
};
use crate::sys::monotonic_ns;

/// One backend's flows by state. Live connections = `established + closing`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StateCounts {
    /// Handshakes in progress and unverified mid-flow flows (`PENDING`).
    pub pending: u64,
    /// Established TCP flows (`FLOWS`) and UDP flows not idle (`PENDING`).
    pub established: u64,
    /// TCP flows with a FIN seen in one direction (`FLOWS`).
    pub closing: u64,
}

impl StateCounts {
    /// Open connections: established or still closing (not pending, not closed).
    pub const fn live(&self) -> u64 {
        self.established + self.closing
    }
}

/// Flows per backend id by state, and the fill of both tables.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FlowCensus {
    pub backends: HashMap<u32, StateCounts>,
    /// Entries of `[FLOWS, PENDING]`, each `[IPv4, IPv6]`.
    pub entries: [[u64; 2]; 2],
    /// Capacities, the same way.
    pub capacity: [[u64; 2]; 2],
}

impl FlowCensus {
    /// Entries of `FLOWS` and `FLOWS6`: the verified flows.
    pub fn verified(&self) -> u64 {
        self.entries[0].iter().sum()
    }
}

/// Independent handles on the flow tables (see the module doc).
pub struct FlowScan {
    pub(super) flows: TableFds,
    pub(super) pending: TableFds,
    /// A UDP flow idle this long is gone (the programs' `UDP_IDLE_TIMEOUT_NS`).
    pub(super) udp_idle_timeout_ns: u64,
}

impl FlowScan {
    /// One pass over both tables.
    pub fn census(&self) -> Result<FlowCensus, DataplaneError> {
        let (flows, flows_capacity) = FlowTable::<Verified>::from_fds(&self.flows)?;
        let (pending, pending_capacity) = FlowTable::<Unverified>::from_fds(&self.pending)?;
        let mut census = FlowCensus {
            capacity: [flows_capacity, pending_capacity],
            ..FlowCensus::default()
        };
        let now = monotonic_ns();
        for (family, f) in [(Family::Ipv4, 0), (Family::Ipv6, 1)] {
            let entries = flows
                .iter_family(family)
                .map(|entry| (entry, 0))
                .chain(pending.iter_family(family).map(|entry| (entry, 1)));
            for (entry, table) in entries {
                // An entry evicted between "next key" and "lookup" is skipped (the next scan
                // sees the table as it is then).
                let Ok((_, flow)) = entry else { continue };
                census.entries[table][f] += 1;
                let counts = census.backends.entry(flow.backend_id).or_default();
                match FlowState::from_raw(flow.state) {
                    Some(FlowState::Pending | FlowState::SynAcked | FlowState::Unverified) => {
                        counts.pending += 1;
                    }
                    Some(FlowState::Established) => counts.established += 1,
                    Some(FlowState::Closing) => counts.closing += 1,
                    Some(FlowState::Udp)
                        if stamp_age_ns(now, flow.stamp) < self.udp_idle_timeout_ns =>
                    {
                        counts.established += 1;
                    }
                    Some(FlowState::Udp | FlowState::Closed) | None => {}
                }
            }
        }
        Ok(census)
    }

    /// The keys of the flows pinned to one of `backend_ids` now: established, closing,
    /// handshakes in progress, unverified, and UDP flows not idle (closed ones are not).
    pub fn pinned(
        &self,
        backend_ids: &std::collections::HashSet<u32>,
    ) -> Result<Vec<FlowKey>, DataplaneError> {
        let now = monotonic_ns();
        let mut keys = Vec::new();
        let (flows, _) = FlowTable::<Verified>::from_fds(&self.flows)?;
        let (pending, _) = FlowTable::<Unverified>::from_fds(&self.pending)?;
        {
            for entry in flows.iter().chain(pending.iter()) {
                let Ok((key, flow)) = entry else { continue };
                let pinned = match FlowState::from_raw(flow.state) {
                    Some(FlowState::Udp) => {
                        stamp_age_ns(now, flow.stamp) < self.udp_idle_timeout_ns
                    }
                    Some(FlowState::Closed) | None => false,
                    Some(_) => true,
                };
                if pinned && backend_ids.contains(&flow.backend_id) {
                    keys.push(key);
                }
            }
        }
        Ok(keys)
    }

    /// Unpins the flows of services not in `served` (keys as in `SERVICES`) from both tables,
    /// and returns how many. The established path forwards a pinned flow (TCP in `FLOWS`, UDP
    /// in `PENDING`) without looking its service up, so a removed service's flows must leave
    /// with it. Runs on these handles, off the daemon's lock; a flow of a service installed
    /// during the walk could go too: its next packet is then a miss, steered by the weight
    /// history and re-verified (TCP) or chosen afresh (UDP).
    pub fn unpin_unserved(
        &self,
        served: &std::collections::HashSet<ServiceKey>,
    ) -> Result<usize, DataplaneError> {
        let (mut flows, _) = FlowTable::<Verified>::from_fds(&self.flows)?;
        let (mut pending, _) = FlowTable::<Unverified>::from_fds(&self.pending)?;
        Ok(unserved(&mut flows, served) + unserved(&mut pending, served))
    }

    /// Live connections (established + closing) per backend id, and the entries of `FLOWS`
    /// (one [`census`](Self::census)).
    pub fn count(&self) -> Result<(HashMap<u32, u64>, u64), DataplaneError> {
        let census = self.census()?;
        let live = census
            .backends
            .iter()
            .map(|(id, counts)| (*id, counts.live()))
            .collect();
        Ok((live, census.verified()))
    }
}

/// [`FlowScan::unpin_unserved`] on one table.
fn unserved<S: Stored>(
    table: &mut FlowTable<S>,
    served: &std::collections::HashSet<ServiceKey>,
) -> usize {
    let doomed: Vec<FlowKey> = table
        .keys()
        .filter_map(Result::ok)
        .filter(|key| {
            !served.contains(&ServiceKey {
                addr: key.dst,
                port: key.dst_port,
                protocol: key.protocol,
                family: key.family,
            })
        })
        .collect();
    for key in &doomed {
        // Gone already (evicted, or closed and replaced): nothing to do.
        let _ = table.remove(key);
    }
    doomed.len()
}
