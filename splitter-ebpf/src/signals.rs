//! Rollout signals, measured from the packets themselves: the client's SYN starts a handshake
//! (ingress), the backend's SYN-ACK completes it and its latency goes into a per-backend
//! histogram (egress), a RST answering the SYN is a refusal, a SYN retransmitted after
//! `HANDSHAKE_TIMEOUT_NS` is a timeout, a RST later is a reset of an established flow.
//! Only SYN and RST packets do any of this work; data packets pay nothing.

use aya_ebpf::helpers::bpf_ktime_get_ns;
use splitter_common::{
    FlowKey, FlowState, ReverseValue,
    signals::{DEFAULT_HANDSHAKE_TIMEOUT_NS, HANDSHAKE_BUCKETS, bucket},
};

use crate::{
    maps::{BACKEND_COUNTERS, FLOWS},
    parse::{Packet, TCP_ACK, TCP_RST, TCP_SYN},
};

/// Set by the daemon at load time (`HANDSHAKE_TIMEOUT_GLOBAL`).
#[unsafe(no_mangle)]
static HANDSHAKE_TIMEOUT_NS: u64 = DEFAULT_HANDSHAKE_TIMEOUT_NS;

/// Set by the daemon at load time (`UDP_IDLE_TIMEOUT_GLOBAL`).
#[unsafe(no_mangle)]
static UDP_IDLE_TIMEOUT_NS: u64 = splitter_common::maps::DEFAULT_UDP_IDLE_TIMEOUT_NS;

/// The handshake state a new flow starts in.
#[inline(always)]
pub fn opening(tcp: bool, tcp_flags: u8) -> FlowState {
    if tcp && tcp_flags & (TCP_SYN | TCP_ACK) == TCP_SYN {
        FlowState::Pending
    } else {
        FlowState::Udp
    }
}

/// Ingress, a client SYN for a flow already pinned: a retransmission. Still pending after the
/// timeout means the backend did not answer in time (counted once per flow).
#[inline(always)]
pub fn syn_retransmitted(key: &FlowKey) {
    let Some(flow) = FLOWS.get_ptr_mut(key) else {
        return;
    };
    let flow = unsafe { &mut *flow };
    if flow.state != FlowState::Pending as u8 {
        return;
    }
    let timeout = unsafe { core::ptr::read_volatile(&HANDSHAKE_TIMEOUT_NS) };
    if unsafe { bpf_ktime_get_ns() } < flow.stamp_ns + timeout {
        return;
    }
    flow.state = FlowState::Closed as u8;
    if let Some(counters) = BACKEND_COUNTERS.get_ptr_mut(flow.backend_id) {
        unsafe { (*counters).signals.handshakes_timed_out += 1 };
    }
}

/// Egress, a backend's SYN-ACK or RST (before its source is rewritten back to the service).
#[inline(always)]
pub fn backend_reply(packet: &Packet, reverse: &ReverseValue) {
    let flags = packet.tcp_flags;
    let synack = flags & (TCP_SYN | TCP_ACK) == TCP_SYN | TCP_ACK;
    let rst = flags & TCP_RST != 0;
    if !synack && !rst {
        return;
    }
    // The client's flow: client → service, as pinned by the ingress program.
    let key = FlowKey {
        src: packet.ip.dst,
        dst: reverse.service_addr,
        src_port: packet.dst_port,
        dst_port: reverse.service_port,
        protocol: packet.ip.protocol,
        family: packet.ip.family as u8,
        _pad: [0; 2],
    };
    let Some(counters) = BACKEND_COUNTERS.get_ptr_mut(reverse.backend_id) else {
        return;
    };
    let signals = unsafe { &mut (*counters).signals };
    let Some(flow) = FLOWS.get_ptr_mut(key) else {
        if rst {
            // A flow this host did not pin (evicted, or begun on another host): past its
            // handshake as far as we can tell.
            signals.established_resets += 1;
        }
        return;
    };
    let flow = unsafe { &mut *flow };
    let pending = flow.state == FlowState::Pending as u8;
    if synack && pending {
        flow.state = FlowState::Established as u8;
        let latency = unsafe { bpf_ktime_get_ns() }.saturating_sub(flow.stamp_ns);
        signals.handshakes_completed += 1;
        signals.handshake_latency_sum_ns += latency;
        // Masked: the verifier wants the index visibly in bounds (a power of two, asserted in
        // splitter_common::signals).
        signals.handshake_latency_buckets[bucket(latency) & (HANDSHAKE_BUCKETS - 1)] += 1;
    } else if rst && pending {
        flow.state = FlowState::Closed as u8;
        signals.handshakes_refused += 1;
    } else if rst && flow.state != FlowState::Closed as u8 {
        signals.established_resets += 1;
    }
}
