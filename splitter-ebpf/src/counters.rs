//! Counting, never logging, on the hot path. All maps are per CPU: plain adds, no atomics.

use splitter_common::{DirectionCounters, Forwarding, Reason};

use crate::{
    maps::{BACKEND_COUNTERS, FORWARDING, SERVICE_COUNTERS, VERDICTS},
    parse::{TCP_FIN, TCP_RST, TCP_SYN},
};

#[inline(always)]
pub fn verdict(reason: Reason) {
    if let Some(count) = VERDICTS.get_ptr_mut(reason as u32) {
        unsafe { *count += 1 };
    }
}

#[inline(always)]
pub fn forwarding(path: Forwarding) {
    if let Some(count) = FORWARDING.get_ptr_mut(path as u32) {
        unsafe { *count += 1 };
    }
}

/// Which way a packet of a backend flows.
#[derive(Clone, Copy)]
pub enum Direction {
    ToBackend,
    ToClient,
}

/// Counts `packets` wire packets (more than one for a GSO packet on the egress path) of
/// `bytes` L3 bytes.
#[inline(always)]
pub fn backend_packet(
    backend_id: u32,
    direction: Direction,
    packets: u64,
    bytes: u64,
    tcp_flags: u8,
    new: bool,
) {
    let Some(counters) = BACKEND_COUNTERS.get_ptr_mut(backend_id) else {
        return;
    };
    let counters = unsafe { &mut *counters };
    if new {
        counters.new_flows += 1;
    }
    let side: &mut DirectionCounters = match direction {
        Direction::ToBackend => &mut counters.to_backend,
        Direction::ToClient => &mut counters.to_client,
    };
    side.packets += packets;
    side.bytes += bytes;
    if tcp_flags & TCP_SYN != 0 {
        side.tcp_syn += 1;
    }
    if tcp_flags & TCP_FIN != 0 {
        side.tcp_fin += 1;
    }
    if tcp_flags & TCP_RST != 0 {
        side.tcp_rst += 1;
    }
}

#[inline(always)]
pub fn flow_miss(service_id: u32, ambiguous: bool) {
    if let Some(counters) = SERVICE_COUNTERS.get_ptr_mut(service_id) {
        let counters = unsafe { &mut *counters };
        counters.flow_misses += 1;
        if ambiguous {
            counters.ambiguous_misses += 1;
        }
    }
}
