//! Rollout signals, counted only for traffic the splitter verified: a handshake completes on
//! the client's ACK of the backend's SYN-ACK (a spoofed SYN never gets there), a refusal is the
//! backend's RST to a pending handshake, a timeout a SYN retransmitted after
//! `HANDSHAKE_TIMEOUT_NS` with no SYN-ACK seen, a reset a backend RST on an established flow.
//! The state transitions that lead here are in `flows.rs`.

use aya_ebpf::helpers::bpf_ktime_get_ns;
use splitter_common::{
    PendingEntry, Signals,
    flow::{fine_ns, fine_stamp},
    flow_flags::TIMEOUT_COUNTED,
    signals::{DEFAULT_HANDSHAKE_TIMEOUT_NS, HANDSHAKE_BUCKETS, bucket},
};

use crate::maps::BACKEND_COUNTERS;

/// Set by the daemon at load time (`HANDSHAKE_TIMEOUT_GLOBAL`).
#[unsafe(no_mangle)]
static HANDSHAKE_TIMEOUT_NS: u64 = DEFAULT_HANDSHAKE_TIMEOUT_NS;

#[inline(always)]
fn signals(backend_id: u32) -> Option<&'static mut Signals> {
    let counters = BACKEND_COUNTERS.get_ptr_mut(backend_id)?;
    Some(unsafe { &mut (*counters).signals })
}

/// Ingress, a client SYN retransmitted for a `Pending` handshake (no SYN-ACK seen): after the
/// timeout the backend did not answer in time (counted once per flow).
#[inline(always)]
pub fn syn_retransmitted<A>(entry: &mut PendingEntry<A>) {
    let flow = &mut entry.flow;
    if flow.flags & TIMEOUT_COUNTED != 0 {
        return;
    }
    let timeout = unsafe { core::ptr::read_volatile(&HANDSHAKE_TIMEOUT_NS) };
    let waited = fine_ns(fine_stamp(unsafe { bpf_ktime_get_ns() }).wrapping_sub(entry.handshake));
    if waited < timeout {
        return;
    }
    flow.flags |= TIMEOUT_COUNTED;
    if let Some(signals) = signals(flow.backend_id as u32) {
        signals.handshakes_timed_out += 1;
    }
}

/// Ingress, the client's ACK of the SYN-ACK: a completed handshake whose SYN → SYN-ACK time
/// was `latency` ([`splitter_common::flow::fine_stamp`] units).
#[inline(always)]
pub fn handshake_completed(backend_id: u32, latency: u32) {
    let latency_ns = fine_ns(latency);
    let Some(signals) = signals(backend_id) else {
        return;
    };
    signals.handshakes_completed += 1;
    signals.handshake_latency_sum_ns += latency_ns;
    // Masked: the verifier wants the index visibly in bounds (a power of two, asserted in
    // splitter_common::signals).
    signals.handshake_latency_buckets[bucket(latency_ns) & (HANDSHAKE_BUCKETS - 1)] += 1;
}

/// Egress, the backend's RST to a pending handshake.
#[inline(always)]
pub fn handshake_refused(backend_id: u32) {
    if let Some(signals) = signals(backend_id) {
        signals.handshakes_refused += 1;
    }
}

/// Egress, the backend's RST on an established flow.
#[inline(always)]
pub fn established_reset(backend_id: u32) {
    if let Some(signals) = signals(backend_id) {
        signals.established_resets += 1;
    }
}
