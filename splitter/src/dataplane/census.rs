//! Counting flows by state, off the daemon's runtime thread: a scan of two large LRU tables
//! takes a while, and through its own handles it does not hold up the owner of `Maps`.

use std::{
    collections::HashMap,
    os::fd::{AsFd as _, OwnedFd},
    sync::Arc,
};

use aya::maps::{HashMap as BpfHashMap, Map, MapData};
use splitter_common::{FlowKey, FlowState, FlowValue, maps as names};

use super::DataplaneError;
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
    pub flows_entries: u64,
    pub flows_capacity: u64,
    pub pending_entries: u64,
    pub pending_capacity: u64,
}

/// Independent handles on `FLOWS` and `PENDING` (see the module doc).
pub struct FlowScan {
    pub(super) flows_fd: Arc<OwnedFd>,
    pub(super) pending_fd: Arc<OwnedFd>,
    /// A UDP flow idle this long is gone (the programs' `UDP_IDLE_TIMEOUT_NS`).
    pub(super) udp_idle_timeout_ns: u64,
}

/// The file descriptor of an opened hash map, cloned (for a [`FlowScan`]).
pub(super) fn clone_fd(name: &'static str, map: Option<&Map>) -> Result<OwnedFd, DataplaneError> {
    match map {
        Some(Map::LruHashMap(data) | Map::HashMap(data)) => data
            .fd()
            .as_fd()
            .try_clone_to_owned()
            .map_err(|source| DataplaneError::MapHandle { name, source }),
        _ => Err(DataplaneError::MissingMap { name }),
    }
}

fn open(
    name: &'static str,
    fd: &OwnedFd,
) -> Result<(BpfHashMap<MapData, FlowKey, FlowValue>, u64), DataplaneError> {
    let fd = fd
        .try_clone()
        .map_err(|source| DataplaneError::MapHandle { name, source })?;
    let data = MapData::from_fd(fd).map_err(|source| DataplaneError::Map { name, source })?;
    let capacity = data
        .info()
        .map_err(|source| DataplaneError::Map { name, source })?
        .max_entries();
    let map = Map::from_map_data(data)
        .and_then(BpfHashMap::try_from)
        .map_err(|source| DataplaneError::Map { name, source })?;
    Ok((map, u64::from(capacity)))
}

impl FlowScan {
    /// One pass over both tables.
    pub fn census(&self) -> Result<FlowCensus, DataplaneError> {
        let (flows, flows_capacity) = open(names::FLOWS, &self.flows_fd)?;
        let (pending, pending_capacity) = open(names::PENDING, &self.pending_fd)?;
        let mut census = FlowCensus {
            flows_capacity,
            pending_capacity,
            ..FlowCensus::default()
        };
        let now = monotonic_ns();
        for (table, is_pending) in [(&flows, false), (&pending, true)] {
            for entry in table.iter() {
                // An entry evicted between "next key" and "lookup" ends the walk early; fine for
                // gauges (the next scan sees the table as it is then).
                let Ok((_, flow)) = entry else { break };
                if is_pending {
                    census.pending_entries += 1;
                } else {
                    census.flows_entries += 1;
                }
                let counts = census.backends.entry(flow.backend_id).or_default();
                match FlowState::from_raw(flow.state) {
                    Some(FlowState::Pending | FlowState::SynAcked | FlowState::Unverified) => {
                        counts.pending += 1;
                    }
                    Some(FlowState::Established) => counts.established += 1,
                    Some(FlowState::Closing) => counts.closing += 1,
                    Some(FlowState::Udp)
                        if now.saturating_sub(flow.stamp_ns) < self.udp_idle_timeout_ns =>
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
        for name in [names::FLOWS, names::PENDING] {
            let fd = if name == names::FLOWS {
                &self.flows_fd
            } else {
                &self.pending_fd
            };
            let (table, _) = open(name, fd)?;
            for entry in table.iter() {
                let Ok((key, flow)) = entry else { break };
                let pinned = match FlowState::from_raw(flow.state) {
                    Some(FlowState::Udp) => {
                        now.saturating_sub(flow.stamp_ns) < self.udp_idle_timeout_ns
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

    /// Live connections (established + closing) per backend id, and the entries of `FLOWS`
    /// (one [`census`](Self::census)).
    pub fn count(&self) -> Result<(HashMap<u32, u64>, u64), DataplaneError> {
        let census = self.census()?;
        let live = census
            .backends
            .iter()
            .map(|(id, counts)| (*id, counts.live()))
            .collect();
        Ok((live, census.flows_entries))
    }
}
