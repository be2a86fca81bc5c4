//! Services: `SERVICES` maps a [`ServiceKey`] (address, port, protocol) to a [`ServiceConfig`].

use crate::Addr;

/// Weights are stored in parts per million of new flows (percent × 10 000): the config accepts
/// percent with up to four decimals (0.0001 % steps), finer than basis points at no extra cost.
pub const WEIGHT_SCALE: u32 = 1_000_000;

/// What a service is reached at. `port` in network byte order; `protocol` is the IP protocol
/// number (6 TCP, 17 UDP); `family` is [`crate::Family`] as u8.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct ServiceKey {
    pub addr: Addr,
    pub port: u16,
    pub protocol: u8,
    pub family: u8,
}

/// Which part of a packet decides its color (see [`crate::hash`]).
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cohort {
    /// The 5-tuple: each connection is split independently.
    Flow = 0,
    /// The client address: one client always lands on the same color.
    Client = 1,
}

/// A contiguous run of slots in the `POOLS` array, each holding a backend id.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Pool {
    pub first_slot: u32,
    pub len: u32,
}

/// How many weight changes [`ServiceConfig::history`] keeps.
pub const WEIGHT_HISTORY: usize = 8;

/// A green weight and the time it came into force (`bpf_ktime_get_ns`, CLOCK_MONOTONIC).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct WeightChange {
    pub weight: u32,
    pub _pad: u32,
    pub since_ns: u64,
}

/// Bits of [`ServiceConfig::flags`].
pub mod service_flags {
    /// The service has `[service.overrides]`: the client's address is looked up in `OVERRIDES`
    /// before the weight decides (services without overrides never pay for the lookup).
    pub const OVERRIDES: u8 = 1;
    /// The entry is a service's preview address: every new flow goes to green, whatever the
    /// weight (its weight is fixed at 100 % and never changed).
    pub const PREVIEW: u8 = 2;
}

/// `OVERRIDES` (LPM trie) key data: the service id (always matched whole: the first 32 bits of
/// every prefix) and the client address (IPv4 in the first 4 bytes). The trie's prefix length
/// is `32 + the client prefix length`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct OverrideKey {
    pub service_id: u32,
    pub addr: crate::Addr,
}

impl OverrideKey {
    /// The trie's prefix length for a client prefix of `bits` (the service id always counts).
    pub const fn prefix_len(bits: u32) -> u32 {
        32 + bits
    }

    /// The prefix length of a whole client address of `family` ([`crate::Family`] as u8).
    #[inline(always)]
    pub const fn full_prefix_len(family: u8) -> u32 {
        if family == crate::Family::Ipv6 as u8 {
            Self::prefix_len(128)
        } else {
            Self::prefix_len(32)
        }
    }
}

/// What an override says: the color every new flow of a matching client goes to.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct OverrideValue {
    /// [`crate::Color`] as u8.
    pub color: u8,
    pub _pad: [u8; 3],
}

/// How a service splits new flows. Written whole by the daemon with one map update, so the data
/// plane always sees a consistent config.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct ServiceConfig {
    /// Index into the per-service counters.
    pub id: u32,
    /// Share of new flows sent to green, in [`WEIGHT_SCALE`] units (equals `history[0].weight`).
    pub green_weight: u32,
    /// [`Cohort`] as u32.
    pub cohort: u32,
    /// `cohort = "client"`: how many leading bits of an IPv4 client address form the cohort
    /// (0: the whole address).
    pub client_prefix_v4: u8,
    /// The same for IPv6 clients (0: the whole address).
    pub client_prefix_v6: u8,
    /// [`service_flags`] bits.
    pub flags: u8,
    pub _pad: u8,
    /// Each color's Maglev table (`crate::maglev`): `len` entries (0 = no backend in
    /// rotation), each a backend id.
    pub blue: Pool,
    pub green: Pool,
    /// The window of the weight history: weights in force at any time within
    /// `[now - miss_hold_ns, now]` steer TCP mid-flow misses (see [`crate::history`]).
    pub miss_hold_ns: u64,
    /// The last weight changes, newest first: `history[0]` is in force now, `history[i]` was in
    /// force from its `since_ns` until `history[i - 1].since_ns`. A service installed fresh has
    /// every entry equal (its one weight).
    pub history: [WeightChange; WEIGHT_HISTORY],
}
