//! The two flow tables, one pair per address family. `FLOWS`/`FLOWS6` pin a *verified* client
//! flow to its backend: a TCP flow whose handshake the splitter saw complete, or a mid-flow flow
//! its backend answered. `PENDING`/`PENDING6` hold what is not verified yet: handshakes in
//! progress, mid-flow misses, and UDP flows. Only a promotion from `PENDING` inserts into
//! `FLOWS`, so spoofed traffic churns `PENDING` alone and never displaces an established flow.
//!
//! The stored layouts are compact, per family: an IPv4 key ([`FlowKey4`]) and a pinned entry
//! ([`FlowEntry4`]) are 16 bytes each, so a million IPv4 flows take 80 bytes of table each with
//! the kernel's element header (40 + 40 bytes of key and value before). [`FlowKey`] and
//! [`FlowValue`] are the family-neutral forms: the hash input on the data plane's stack, and
//! what the daemon and the tests read and write.

use crate::{Addr, Family};

/// A client flow as seen on the wire: client → service. Ports in network byte order. Not a map
/// key: the cohort hash is computed over it, the tables store [`TableKey`].
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct FlowKey {
    pub src: Addr,
    pub dst: Addr,
    pub src_port: u16,
    pub dst_port: u16,
    pub protocol: u8,
    pub family: u8,
    pub _pad: [u8; 2],
}

/// An address as the flow tables of one family store it: `u32` (IPv4) or `[u32; 4]` (IPv6),
/// network order in memory.
pub trait TableAddr: Copy + Default + PartialEq {
    const FAMILY: Family;
    fn of(addr: &Addr) -> Self;
    fn addr(self) -> Addr;
}

impl TableAddr for u32 {
    const FAMILY: Family = Family::Ipv4;

    #[inline(always)]
    fn of(addr: &Addr) -> Self {
        addr.0[0]
    }

    #[inline(always)]
    fn addr(self) -> Addr {
        Addr([self, 0, 0, 0])
    }
}

impl TableAddr for [u32; 4] {
    const FAMILY: Family = Family::Ipv6;

    #[inline(always)]
    fn of(addr: &Addr) -> Self {
        addr.0
    }

    #[inline(always)]
    fn addr(self) -> Addr {
        Addr(self)
    }
}

/// The key of a flow table: [`FlowKey`] without the family (one table per family).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct TableKey<A> {
    pub src: A,
    pub dst: A,
    pub src_port: u16,
    pub dst_port: u16,
    pub protocol: u8,
    // Two fields, not `[u8; 3]`: the eBPF build zeroes three bytes with a call of a
    // byte-at-a-time `memset`, two scalars with two stores. Same layout.
    pub _pad0: u8,
    pub _pad1: u16,
}

impl<A: TableAddr> TableKey<A> {
    #[inline(always)]
    pub fn of(key: &FlowKey) -> Self {
        Self {
            src: A::of(&key.src),
            dst: A::of(&key.dst),
            src_port: key.src_port,
            dst_port: key.dst_port,
            protocol: key.protocol,
            _pad0: 0,
            _pad1: 0,
        }
    }

    pub fn flow_key(&self) -> FlowKey {
        FlowKey {
            src: self.src.addr(),
            dst: self.dst.addr(),
            src_port: self.src_port,
            dst_port: self.dst_port,
            protocol: self.protocol,
            family: A::FAMILY as u8,
            _pad: [0; 2],
        }
    }
}

/// A verified flow in `FLOWS`/`FLOWS6`: the backend it is pinned to and where its connection
/// stands. The address is stored, not just the id, so a pinned flow keeps its backend even
/// when the pool is reconfigured (and its id given to another backend).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct FlowEntry<A> {
    pub backend_addr: A,
    pub backend_port: u16,
    /// Below [`crate::maps::MAX_BACKENDS`].
    pub backend_id: u16,
    /// [`FlowState`] as u8.
    pub state: u8,
    /// [`crate::Color`] as u8.
    pub color: u8,
    /// [`flow_flags`] bits.
    pub flags: u8,
    pub _pad: u8,
    /// [`stamp`] time, meaning by state: `Pending` the first SYN; `Udp` the last packet;
    /// otherwise when the flow was pinned.
    pub stamp: u32,
}

/// An unverified flow in `PENDING`/`PENDING6`: a pinned entry and what the handshake needs.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct PendingEntry<A> {
    pub flow: FlowEntry<A>,
    /// `SynAcked`: the backend's initial sequence number (host order); the client's ACK that
    /// completes the handshake acknowledges `synack_seq + 1`.
    pub synack_seq: u32,
    /// [`fine_stamp`] time: `Pending` when the first SYN was seen, `SynAcked` the SYN →
    /// SYN-ACK time (the handshake latency).
    pub handshake: u32,
}

pub type FlowKey4 = TableKey<u32>;
pub type FlowKey6 = TableKey<[u32; 4]>;
pub type FlowEntry4 = FlowEntry<u32>;
pub type FlowEntry6 = FlowEntry<[u32; 4]>;
pub type PendingEntry4 = PendingEntry<u32>;
pub type PendingEntry6 = PendingEntry<[u32; 4]>;

/// Flow-table time: `bpf_ktime_get_ns` (CLOCK_MONOTONIC) in units of 2^20 ns (1.05 ms),
/// wrapping every 52 days; compare with [`stamp_age_ns`] only.
pub const STAMP_SHIFT: u32 = 20;

#[inline(always)]
pub const fn stamp(now_ns: u64) -> u32 {
    (now_ns >> STAMP_SHIFT) as u32
}

/// How far (units, ~1.07 s) a stamp may be ahead of `now` and still be fresh: coarse clocks
/// read on two CPUs can differ by a tick or two, so a stamp written on one can be ahead of
/// another's `now`.
pub const STAMP_AHEAD: u32 = 1024;

/// How long ago (ns, to the unit) `then` was at `now_ns`; 0 for a stamp up to [`STAMP_AHEAD`]
/// ahead of `now_ns` (without this, a stamp a unit ahead wraps to 52 days old: idle).
#[inline(always)]
pub const fn stamp_age_ns(now_ns: u64, then: u32) -> u64 {
    let units = stamp(now_ns).wrapping_sub(then);
    if units > u32::MAX - STAMP_AHEAD {
        return 0;
    }
    (units as u64) << STAMP_SHIFT
}

/// Handshake time: `bpf_ktime_get_ns` in units of 2^10 ns (1.02 µs), wrapping every 73 minutes.
pub const FINE_SHIFT: u32 = 10;

#[inline(always)]
pub const fn fine_stamp(now_ns: u64) -> u32 {
    (now_ns >> FINE_SHIFT) as u32
}

/// A [`fine_stamp`] duration in ns.
#[inline(always)]
pub const fn fine_ns(units: u32) -> u64 {
    (units as u64) << FINE_SHIFT
}

/// A flow entry of either table and either family, family-neutral (the daemon's and the tests'
/// view; the data plane stores [`FlowEntry`] or [`PendingEntry`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct FlowValue {
    pub backend_addr: Addr,
    pub backend_port: u16,
    /// [`crate::Color`] as u8.
    pub color: u8,
    /// [`FlowState`] as u8.
    pub state: u8,
    pub backend_id: u32,
    /// `SynAcked` (`PENDING` only): see [`PendingEntry::synack_seq`].
    pub synack_seq: u32,
    /// `PENDING` only: see [`PendingEntry::handshake`].
    pub handshake: u32,
    /// [`flow_flags`] bits.
    pub flags: u8,
    /// See [`FlowEntry::stamp`].
    pub stamp: u32,
}

impl FlowValue {
    pub fn entry<A: TableAddr>(&self) -> FlowEntry<A> {
        FlowEntry {
            backend_addr: A::of(&self.backend_addr),
            backend_port: self.backend_port,
            backend_id: self.backend_id as u16,
            state: self.state,
            color: self.color,
            flags: self.flags,
            _pad: 0,
            stamp: self.stamp,
        }
    }

    pub fn pending<A: TableAddr>(&self) -> PendingEntry<A> {
        PendingEntry {
            flow: self.entry(),
            synack_seq: self.synack_seq,
            handshake: self.handshake,
        }
    }
}

impl<A: TableAddr> From<FlowEntry<A>> for FlowValue {
    fn from(entry: FlowEntry<A>) -> Self {
        FlowValue {
            backend_addr: entry.backend_addr.addr(),
            backend_port: entry.backend_port,
            color: entry.color,
            state: entry.state,
            backend_id: entry.backend_id as u32,
            synack_seq: 0,
            handshake: 0,
            flags: entry.flags,
            stamp: entry.stamp,
        }
    }
}

impl<A: TableAddr> From<PendingEntry<A>> for FlowValue {
    fn from(entry: PendingEntry<A>) -> Self {
        FlowValue {
            synack_seq: entry.synack_seq,
            handshake: entry.handshake,
            ..entry.flow.into()
        }
    }
}

/// Bits of [`FlowEntry::flags`].
pub mod flow_flags {
    /// The client sent a FIN.
    pub const CLIENT_FIN: u8 = 1;
    /// The backend sent a FIN.
    pub const BACKEND_FIN: u8 = 2;
    /// `Closed` by a RST (not by FINs): a later non-RST packet of the flow, which a forged RST
    /// cannot stop, brings it back to `Established`.
    pub const RESET: u8 = 4;
    /// `Pending`: the handshake timeout was counted already (once per flow).
    pub const TIMEOUT_COUNTED: u8 = 8;
}

/// Where a flow stands. `Pending`, `SynAcked`, `Unverified` and `Udp` live in `PENDING`;
/// `Established`, `Closing` and `Closed` in `FLOWS`.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FlowState {
    /// The client's SYN went to the backend; no SYN-ACK yet.
    Pending = 1,
    /// The backend answered with a SYN-ACK (its sequence number kept); the client's ACK of it
    /// completes the handshake and promotes the flow to `FLOWS`.
    SynAcked = 2,
    /// A TCP packet of a flow the splitter does not know (evicted, or begun on another host):
    /// steered by the weight history; promoted when the backend answers it with a non-RST.
    Unverified = 3,
    /// Handshake completed (or a mid-flow flow verified by its backend's answer).
    Established = 4,
    /// A FIN seen in one direction.
    Closing = 5,
    /// FINs seen both ways, or a RST. The pin stays until a new handshake on the same tuple
    /// completes (or the LRU drops it): not a live connection.
    Closed = 6,
    /// A UDP flow: active until idle for `udp_idle_timeout` (`stamp_ns` is its last packet).
    Udp = 7,
}

impl FlowState {
    pub const ALL: [FlowState; 7] = [
        FlowState::Pending,
        FlowState::SynAcked,
        FlowState::Unverified,
        FlowState::Established,
        FlowState::Closing,
        FlowState::Closed,
        FlowState::Udp,
    ];

    /// The state stored in [`FlowEntry::state`], if it is one.
    pub const fn from_raw(raw: u8) -> Option<Self> {
        match raw {
            1 => Some(FlowState::Pending),
            2 => Some(FlowState::SynAcked),
            3 => Some(FlowState::Unverified),
            4 => Some(FlowState::Established),
            5 => Some(FlowState::Closing),
            6 => Some(FlowState::Closed),
            7 => Some(FlowState::Udp),
            _ => None,
        }
    }

    /// An open connection: counted by `splitter_backend_live_flows` (UDP flows are counted
    /// while not idle, which needs the time: see the daemon's census).
    pub const fn is_live(self) -> bool {
        matches!(self, FlowState::Established | FlowState::Closing)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const UNIT: u64 = 1 << STAMP_SHIFT;

    #[test]
    fn a_stamp_ages_to_the_unit() {
        let then = 1_000 * UNIT;
        assert_eq!(stamp_age_ns(then, stamp(then)), 0);
        assert_eq!(stamp_age_ns(then + 30 * UNIT, stamp(then)), 30 * UNIT);
    }

    #[test]
    fn a_stamp_a_tick_ahead_of_now_is_fresh_not_52_days_old() {
        // Written on a CPU whose coarse clock read was a tick (4 ms) ahead of this one's.
        let now = 1_000 * UNIT;
        let ahead = stamp(now + 4_000_000);
        assert_eq!(stamp_age_ns(now, ahead), 0);
        assert_eq!(stamp_age_ns(now, stamp(now) + STAMP_AHEAD), 0);
        // Further ahead is a stamp from before the wrap: old.
        assert!(stamp_age_ns(now, stamp(now) + STAMP_AHEAD + 1) > 50 * 86_400 * 1_000_000_000);
    }

    #[test]
    fn ages_wrap_with_the_stamp() {
        // `now` just past a wrap of the u32 stamp, `then` just before it.
        let now = (u64::from(u32::MAX) + 3) * UNIT;
        assert_eq!(stamp_age_ns(now, u32::MAX - 1), 4 * UNIT);
    }
}
