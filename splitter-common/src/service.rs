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
    /// With the `client` cohort: the client address is masked to this many leading bits before
    /// it is hashed, so a whole subnet moves together (0 = the whole address).
    pub client_prefix_v4: u8,
    pub client_prefix_v6: u8,
    /// Feature bits (`service_flags`, defined with the overrides); 0 = none.
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
