//! The flow state machine (see `splitter_common::flow`), written once for both families'
//! tables (`tables.rs`). `FLOWS` holds verified flows only and
//! only a promotion from `PENDING` inserts there: the client's ACK of the backend's SYN-ACK
//! (ingress), or a non-RST answer of the backend to an unverified mid-flow flow (egress).
//! Spoofed packets can fill `PENDING`, never displace an established flow, and never re-pin
//! one: a SYN on an established flow goes to its pinned backend (whose stack answers with a
//! challenge ACK or accepts from TIME_WAIT), a SYN on a closed flow opens a new handshake in
//! `PENDING` that replaces the pin only when it completes.
//!
//! Data packets of established TCP flows do one `FLOWS` lookup and nothing else; data replies
//! do no table work unless an unverified flow was inserted in the last [`UNVERIFIED_GATE_NS`].

use aya_ebpf::{bindings::BPF_NOEXIST, helpers::bpf_ktime_get_ns};
use splitter_common::{
    Addr, Family, FlowEntry, FlowKey, FlowState, PendingEntry, Reason, ReverseValue, ServiceConfig,
    TableAddr, TableKey,
    flow::{fine_stamp, stamp, stamp_age_ns},
    flow_flags::{BACKEND_FIN, CLIENT_FIN, RESET},
};

use crate::{
    clock, counters,
    maps::UNVERIFIED_SINCE,
    parse::{Packet, TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN},
    select::{self, Start},
    signals,
    tables::{Tables, V4, V6},
};

/// Set by the daemon at load time (`UDP_IDLE_TIMEOUT_GLOBAL`).
#[unsafe(no_mangle)]
static UDP_IDLE_TIMEOUT_NS: u64 = splitter_common::maps::DEFAULT_UDP_IDLE_TIMEOUT_NS;

/// How long after the last unverified insert the egress program looks for unverified flows to
/// promote on plain data replies (FIN, RST and SYN-ACK replies always look).
pub const UNVERIFIED_GATE_NS: u64 = 10_000_000_000;

/// What the packet paths need of a flow: where it goes, and where it stands.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Pin {
    pub backend_addr: Addr,
    pub backend_port: u16,
    pub backend_id: u32,
    pub state: u8,
}

/// What the established path found for a client packet (`FLOWS` for TCP, `PENDING` for UDP).
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Pinned {
    /// An open pinned flow (its FIN or RST, if any, already recorded).
    Open(Pin),
    /// A closed pin (or an idle UDP flow): the full path decides (a new handshake on the
    /// reused tuple, or the last segments of the closed one).
    Closed,
    /// No entry.
    Absent,
    /// Not looked up.
    Unknown,
}

/// Ingress, the established path: a client TCP packet of an open pinned flow, from the packet
/// alone (no service lookup, no `FlowKey`).
#[inline(always)]
pub fn established(packet: &Packet) -> Pinned {
    match packet.ip.family {
        Family::Ipv4 => established_in::<V4>(packet),
        Family::Ipv6 => established_in::<V6>(packet),
    }
}

/// The table key of a client packet (client → service).
#[inline(always)]
fn packet_key<T: Tables>(packet: &Packet) -> TableKey<T::A> {
    TableKey {
        src: T::A::of(&packet.ip.src),
        dst: T::A::of(&packet.ip.dst),
        src_port: packet.src_port,
        dst_port: packet.dst_port,
        protocol: packet.ip.protocol,
        _pad0: 0,
        _pad1: 0,
    }
}

#[inline(always)]
fn established_in<T: Tables>(packet: &Packet) -> Pinned {
    let Some(pinned) = T::flows().get_ptr_mut(packet_key::<T>(packet)) else {
        return Pinned::Absent;
    };
    let pinned = unsafe { &mut *pinned };
    if pinned.state == FlowState::Closed as u8 {
        return Pinned::Closed;
    }
    let flags = packet.tcp_flags;
    if flags & (TCP_FIN | TCP_RST) != 0 {
        client_closes(pinned, flags);
    }
    Pinned::Open(pin(pinned))
}

#[inline(always)]
fn pin<A: TableAddr>(entry: &FlowEntry<A>) -> Pin {
    Pin {
        backend_addr: entry.backend_addr.addr(),
        backend_port: entry.backend_port,
        backend_id: entry.backend_id as u32,
        state: entry.state,
    }
}

#[inline(always)]
const fn is_syn(flags: u8) -> bool {
    flags & (TCP_SYN | TCP_ACK) == TCP_SYN
}

/// The state the FIN bits of a verified flow mean: none → established, one → closing, both →
/// closed.
#[inline(always)]
fn state_of_fins(flags: u8) -> u8 {
    match flags & (CLIENT_FIN | BACKEND_FIN) {
        0 => FlowState::Established as u8,
        both if both == CLIENT_FIN | BACKEND_FIN => FlowState::Closed as u8,
        _ => FlowState::Closing as u8,
    }
}

/// Ingress, a client's FIN or RST on a verified flow that is not closed.
#[inline(always)]
fn client_closes<A>(flow: &mut FlowEntry<A>, tcp_flags: u8) {
    if tcp_flags & TCP_RST != 0 {
        // The pin stays: a forged RST must not re-route the real flow (see `RESET`).
        flow.state = FlowState::Closed as u8;
        flow.flags |= RESET;
        return;
    }
    if tcp_flags & TCP_FIN != 0 {
        flow.flags |= CLIENT_FIN;
    }
    flow.state = state_of_fins(flow.flags);
}

/// Ingress, a client TCP packet to a service: its flow and why. `pinned`: what the established
/// path found (`FLOWS` is not looked up again for an absent flow).
#[inline(always)]
pub fn tcp(
    config: &ServiceConfig,
    key: &FlowKey,
    packet: &Packet,
    pinned: Pinned,
) -> Result<(Reason, Pin), Reason> {
    match packet.ip.family {
        Family::Ipv4 => tcp_in::<V4>(config, key, packet, pinned),
        Family::Ipv6 => tcp_in::<V6>(config, key, packet, pinned),
    }
}

#[inline(always)]
fn tcp_in<T: Tables>(
    config: &ServiceConfig,
    key: &FlowKey,
    packet: &Packet,
    seen: Pinned,
) -> Result<(Reason, Pin), Reason> {
    let flags = packet.tcp_flags;
    if let Pinned::Open(flow) = seen {
        return Ok((Reason::Established, flow));
    }
    let table_key = T::key(key);
    if seen != Pinned::Absent
        && let Some(pinned) = T::flows().get_ptr_mut(table_key)
    {
        let pinned = unsafe { &mut *pinned };
        if pinned.state != FlowState::Closed as u8 {
            if flags & (TCP_FIN | TCP_RST) != 0 {
                client_closes(pinned, flags);
            }
            return Ok((Reason::Established, pin(pinned)));
        }
        if !is_syn(flags) {
            // The ACK completing a new handshake on this reused tuple moves the pin.
            if let Some(flow) = complete::<T>(&table_key, packet) {
                return Ok((Reason::Established, flow));
            }
            if flags & TCP_RST == 0 && pinned.flags & RESET != 0 {
                // Closed by a RST, yet the client goes on: the RST was forged.
                pinned.flags &= !RESET;
                pinned.state = FlowState::Established as u8;
                client_closes(pinned, flags);
            }
            return Ok((Reason::Established, pin(pinned)));
        }
        // A SYN on a closed flow: a new connection on the reused tuple, chosen afresh below.
    }
    unverified::<T>(config, key, &table_key, packet)
}

/// A `PENDING` entry for `flow`, chosen at `now` (ns).
#[inline(always)]
fn pending_entry<A>(flow: FlowEntry<A>, now: u64) -> PendingEntry<A> {
    PendingEntry {
        flow,
        synack_seq: 0,
        handshake: fine_stamp(now),
    }
}

/// `PENDING`, then a new choice: handshakes, mid-flow misses.
#[inline(always)]
fn unverified<T: Tables>(
    config: &ServiceConfig,
    key: &FlowKey,
    table_key: &TableKey<T::A>,
    packet: &Packet,
) -> Result<(Reason, Pin), Reason> {
    let flags = packet.tcp_flags;
    let syn = is_syn(flags);
    // One clock read per packet (a helper call, not free in a VM).
    let now = unsafe { bpf_ktime_get_ns() };
    if syn && let Ok((_, flow)) = new_flow::<T::A>(config, key, Start::Now, FlowState::Pending, now)
    {
        // The common SYN opens a handshake: one insert that fails if the tuple is held already
        // (a retransmission), instead of a lookup before every insert.
        if T::pending()
            .insert(table_key, pending_entry(flow, now), BPF_NOEXIST as u64)
            .is_ok()
        {
            return Ok((Reason::NewFlow, pin(&flow)));
        }
    }
    if let Some(entry) = T::pending().get_ptr_mut(table_key) {
        let entry = unsafe { &mut *entry };
        if let Some(flow) = complete_entry::<T>(table_key, entry, packet, now) {
            return Ok((Reason::Established, flow));
        }
        if syn && entry.flow.state == FlowState::Pending as u8 {
            signals::syn_retransmitted(entry);
        }
        return Ok((Reason::Established, pin(&entry.flow)));
    }
    if syn {
        // Not held after all (the insert above failed for want of memory, or the pool is
        // empty): the flow goes unheld; its next packet takes the same choice again while the
        // weight is unchanged.
        let flow = new_flow::<T::A>(config, key, Start::Now, FlowState::Pending, now)?.1;
        let _ = T::pending().insert(table_key, pending_entry(flow, now), 0);
        return Ok((Reason::NewFlow, pin(&flow)));
    }
    let (ambiguous, flow) =
        new_flow::<T::A>(config, key, Start::Earlier(now), FlowState::Unverified, now)?;
    // A stray RST closes whatever it belongs to: forward it, but hold no flow for it.
    if flags & TCP_RST == 0 {
        let _ = T::pending().insert(table_key, pending_entry(flow, now), 0);
        unverified_inserted();
    }
    counters::flow_miss(config.id, ambiguous);
    Ok((Reason::FlowMiss, pin(&flow)))
}

/// A flow entry in `state` for a backend chosen at `now` (ns), and whether the choice was
/// ambiguous.
#[inline(always)]
fn new_flow<A: TableAddr>(
    config: &ServiceConfig,
    key: &FlowKey,
    start: Start,
    state: FlowState,
    now: u64,
) -> Result<(bool, FlowEntry<A>), Reason> {
    let chosen = select::choose(config, key, start).ok_or(Reason::NoBackend)?;
    Ok((
        chosen.ambiguous,
        FlowEntry {
            backend_addr: A::of(&chosen.backend.addr),
            backend_port: chosen.backend.port,
            backend_id: chosen.backend_id as u16,
            state: state as u8,
            color: chosen.backend.color,
            flags: 0,
            _pad: 0,
            stamp: stamp(now),
        },
    ))
}

/// The client's ACK of the SYN-ACK of a `SynAcked` handshake in `PENDING` (ack = its seq + 1):
/// promotes the flow to `FLOWS` (replacing a closed pin of the same tuple) and counts the
/// handshake as completed.
#[inline(always)]
fn complete<T: Tables>(table_key: &TableKey<T::A>, packet: &Packet) -> Option<Pin> {
    if packet.tcp_flags & (TCP_SYN | TCP_RST | TCP_ACK) != TCP_ACK {
        return None;
    }
    complete_entry::<T>(
        table_key,
        unsafe { &*T::pending().get_ptr(table_key)? },
        packet,
        unsafe { bpf_ktime_get_ns() },
    )
}

/// [`complete`] with the `PENDING` entry at hand and the packet's time (`bpf_ktime_get_ns`):
/// one clock read per packet, not one per use.
#[inline(always)]
fn complete_entry<T: Tables>(
    table_key: &TableKey<T::A>,
    entry: &PendingEntry<T::A>,
    packet: &Packet,
    now: u64,
) -> Option<Pin> {
    if packet.tcp_flags & (TCP_SYN | TCP_RST | TCP_ACK) != TCP_ACK
        || entry.flow.state != FlowState::SynAcked as u8
        || packet.ack != entry.synack_seq.wrapping_add(1)
    {
        return None;
    }
    let latency = entry.handshake;
    let mut flow = FlowEntry {
        state: FlowState::Established as u8,
        flags: 0,
        stamp: stamp(now),
        ..entry.flow
    };
    client_closes(&mut flow, packet.tcp_flags);
    T::flows().insert(table_key, flow, 0).ok()?;
    let _ = T::pending().remove(table_key);
    signals::handshake_completed(flow.backend_id as u32, latency);
    Some(pin(&flow))
}

/// Notes the time of an unverified insert (opens the egress gate), at most once a second.
#[inline(always)]
fn unverified_inserted() {
    let Some(since) = UNVERIFIED_SINCE.get_ptr_mut(0) else {
        return;
    };
    let now = clock::coarse_ns();
    // Under a flood of misses every CPU would write this line on every packet.
    if now.saturating_sub(unsafe { *since }) > 1_000_000_000 {
        unsafe { *since = now };
    }
}

/// Ingress, the established path of UDP: a client datagram of an active flow (not idle for
/// `UDP_IDLE_TIMEOUT_NS`), from the packet alone. An idle flow is `Closed`: chosen afresh.
#[inline(always)]
pub fn udp_active(packet: &Packet) -> Pinned {
    match packet.ip.family {
        Family::Ipv4 => udp_active_in::<V4>(packet),
        Family::Ipv6 => udp_active_in::<V6>(packet),
    }
}

#[inline(always)]
fn udp_active_in<T: Tables>(packet: &Packet) -> Pinned {
    let Some(entry) = T::pending().get_ptr_mut(packet_key::<T>(packet)) else {
        return Pinned::Absent;
    };
    let entry = unsafe { &mut *entry };
    // The coarse clock (a tick or two behind, a few ms) is plenty for an idle timeout of 100 ms
    // or more, and much cheaper than a precise read on every datagram (`clock.rs`).
    let now = clock::coarse_ns();
    let idle = unsafe { core::ptr::read_volatile(&UDP_IDLE_TIMEOUT_NS) };
    if entry.flow.state != FlowState::Udp as u8 || stamp_age_ns(now, entry.flow.stamp) >= idle {
        return Pinned::Closed;
    }
    // One write per time unit (1 ms), not one per datagram.
    let now = stamp(now);
    if entry.flow.stamp != now {
        entry.flow.stamp = now;
    }
    Pinned::Open(pin(&entry.flow))
}

/// Ingress, a UDP datagram to a service that [`udp_active`] did not place (`seen`: what it
/// found; `Unknown` for a first fragment, looked up here): a new flow (or an idle one chosen
/// afresh) with the weight in force.
#[inline(always)]
pub fn udp(
    config: &ServiceConfig,
    key: &FlowKey,
    packet: &Packet,
    seen: Pinned,
) -> Result<(Reason, Pin), Reason> {
    match packet.ip.family {
        Family::Ipv4 => udp_in::<V4>(config, key, packet, seen),
        Family::Ipv6 => udp_in::<V6>(config, key, packet, seen),
    }
}

#[inline(always)]
fn udp_in<T: Tables>(
    config: &ServiceConfig,
    key: &FlowKey,
    packet: &Packet,
    seen: Pinned,
) -> Result<(Reason, Pin), Reason> {
    let seen = match seen {
        Pinned::Unknown => udp_active_in::<T>(packet),
        other => other,
    };
    if let Pinned::Open(flow) = seen {
        return Ok((Reason::Established, flow));
    }
    let now = clock::coarse_ns();
    let flow = new_flow::<T::A>(config, key, Start::Now, FlowState::Udp, now)?.1;
    let _ = T::pending().insert(T::key(key), pending_entry(flow, now), 0);
    Ok((Reason::NewFlow, pin(&flow)))
}

/// The flow an ICMP error or a shared backend's reply is about, in either table.
#[inline(always)]
pub fn find(key: &FlowKey) -> Option<Pin> {
    if key.family == Family::Ipv4 as u8 {
        find_in::<V4>(key)
    } else {
        find_in::<V6>(key)
    }
}

#[inline(always)]
fn find_in<T: Tables>(key: &FlowKey) -> Option<Pin> {
    let table_key = T::key(key);
    if let Some(flow) = unsafe { T::flows().get(table_key) } {
        return Some(pin(flow));
    }
    unsafe { T::pending().get(table_key) }.map(|entry| pin(&entry.flow))
}

/// The client's flow a backend's reply belongs to if it answers for `reverse`'s service:
/// client → service, as held by the ingress program.
#[inline(always)]
pub fn reply_key(packet: &Packet, reverse: &ReverseValue) -> FlowKey {
    FlowKey {
        src: packet.ip.dst,
        dst: reverse.service_addr,
        src_port: packet.dst_port,
        dst_port: reverse.service_port,
        protocol: packet.ip.protocol,
        family: packet.ip.family as u8,
        _pad: [0; 2],
    }
}

/// Egress, a backend's TCP reply (before its source is rewritten back to the service).
#[inline(always)]
pub fn backend_reply(packet: &Packet, reverse: &ReverseValue) {
    let flags = packet.tcp_flags;
    if flags & (TCP_SYN | TCP_FIN | TCP_RST) == 0 && !unverified_recently() {
        return;
    }
    let key = reply_key(packet, reverse);
    match packet.ip.family {
        Family::Ipv4 => reply_in::<V4>(&V4::key(&key), packet, reverse.backend_id),
        Family::Ipv6 => reply_in::<V6>(&V6::key(&key), packet, reverse.backend_id),
    }
}

#[inline(always)]
fn reply_in<T: Tables>(table_key: &TableKey<T::A>, packet: &Packet, backend_id: u32) {
    let flags = packet.tcp_flags;
    if flags & TCP_RST != 0 {
        backend_reset::<T>(table_key, backend_id);
    } else if flags & TCP_SYN != 0 {
        if flags & TCP_ACK != 0 {
            synack::<T>(table_key, packet.seq);
        }
    } else {
        if flags & TCP_FIN != 0
            && let Some(pinned) = T::flows().get_ptr_mut(table_key)
        {
            let pinned = unsafe { &mut *pinned };
            if pinned.state == FlowState::Established as u8
                || pinned.state == FlowState::Closing as u8
            {
                pinned.flags |= BACKEND_FIN;
                pinned.state = state_of_fins(pinned.flags);
            }
            return;
        }
        verified_by_backend::<T>(table_key, flags);
    }
}

/// Whether an unverified flow was inserted within [`UNVERIFIED_GATE_NS`].
#[inline(always)]
fn unverified_recently() -> bool {
    let Some(since) = UNVERIFIED_SINCE.get(0) else {
        return false;
    };
    let since = *since;
    since != 0 && clock::coarse_ns().saturating_sub(since) < UNVERIFIED_GATE_NS
}

/// The backend answered an unverified mid-flow flow with a non-RST segment: the connection is
/// real (a spoofed bare ACK is answered with a RST), promote it to `FLOWS`.
#[inline(always)]
fn verified_by_backend<T: Tables>(table_key: &TableKey<T::A>, tcp_flags: u8) {
    let Some(entry) = T::pending().get_ptr(table_key) else {
        return;
    };
    let entry = unsafe { &*entry };
    if entry.flow.state != FlowState::Unverified as u8 {
        return;
    }
    let mut flow = FlowEntry {
        state: FlowState::Established as u8,
        flags: 0,
        stamp: stamp(unsafe { bpf_ktime_get_ns() }),
        ..entry.flow
    };
    if tcp_flags & TCP_FIN != 0 {
        flow.flags = BACKEND_FIN;
        flow.state = FlowState::Closing as u8;
    }
    if T::flows().insert(table_key, flow, 0).is_ok() {
        let _ = T::pending().remove(table_key);
    }
}

/// The backend's SYN-ACK for a pending handshake: its sequence number (the client's ACK of it
/// completes the handshake) and the SYN → SYN-ACK latency are kept.
#[inline(always)]
fn synack<T: Tables>(table_key: &TableKey<T::A>, seq: u32) {
    let Some(entry) = T::pending().get_ptr_mut(table_key) else {
        return;
    };
    let entry = unsafe { &mut *entry };
    if entry.flow.state != FlowState::Pending as u8 {
        return;
    }
    entry.flow.state = FlowState::SynAcked as u8;
    entry.synack_seq = seq;
    entry.handshake = fine_stamp(unsafe { bpf_ktime_get_ns() }).wrapping_sub(entry.handshake);
}

/// A backend's RST: a refusal of a pending handshake, a reset of an established flow, or (for
/// an unverified flow, a spoofed packet's answer) nothing.
#[inline(always)]
fn backend_reset<T: Tables>(table_key: &TableKey<T::A>, backend_id: u32) {
    if let Some(entry) = T::pending().get_ptr(table_key) {
        if unsafe { (*entry).flow.state } == FlowState::Pending as u8 {
            signals::handshake_refused(backend_id);
        }
        let _ = T::pending().remove(table_key);
        return;
    }
    let Some(pinned) = T::flows().get_ptr_mut(table_key) else {
        // Not established here: counts nothing.
        return;
    };
    let pinned = unsafe { &mut *pinned };
    if pinned.state == FlowState::Established as u8 || pinned.state == FlowState::Closing as u8 {
        signals::established_reset(backend_id);
        pinned.state = FlowState::Closed as u8;
        // The backend's own RST: final, no revival by the client's next packet.
        pinned.flags &= !RESET;
    }
}
