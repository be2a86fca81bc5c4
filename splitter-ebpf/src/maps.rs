//! Every map of the data plane. Names, key/value types and capacities come from
//! `splitter_common::maps`; the daemon resizes the flow tables at load time.

use aya_ebpf::{
    macros::map,
    maps::{Array, DevMapHash, HashMap, LpmTrie, LruHashMap, PerCpuArray},
};
use splitter_common::{
    Backend, BackendCounters, BackendKey, FlowEntry4, FlowEntry6, FlowKey4, FlowKey6, Forwarding,
    OverrideKey, OverrideValue, PendingEntry4, PendingEntry6, Reason, ReverseValue, ServiceConfig,
    ServiceCounters, ServiceKey, SharedReverse,
    maps::{
        DEFAULT_FLOW_TABLE_SIZE, DEFAULT_PENDING_TABLE_SIZE, MAX_BACKENDS, MAX_OVERRIDES,
        MAX_REDIRECT_PORTS, MAX_SERVICES, MAX_SHARED_BACKENDS, POOL_SLOTS, SERVICE_PORT_WORDS,
    },
};

/// Service address, port and protocol → how its new flows are split.
#[map]
pub static SERVICES: HashMap<ServiceKey, ServiceConfig> =
    HashMap::with_max_entries(MAX_SERVICES, 0);

/// `[port / 64]`: bit `port % 64` set when a service listens on that port (host order).
#[map]
pub static SERVICE_PORTS: Array<u64> = Array::with_max_entries(SERVICE_PORT_WORDS, 0);

/// Backend id → where it listens.
#[map]
pub static BACKENDS: Array<Backend> = Array::with_max_entries(MAX_BACKENDS, 0);

/// Pool slot → backend id (a service's pools are contiguous runs of slots).
#[map]
pub static POOLS: Array<u32> = Array::with_max_entries(POOL_SLOTS, 0);

/// Verified IPv4 client flow (client → service) → the backend it is pinned to, and its state.
#[map]
pub static FLOWS: LruHashMap<FlowKey4, FlowEntry4> =
    LruHashMap::with_max_entries(DEFAULT_FLOW_TABLE_SIZE, 0);

/// Verified IPv6 client flow → the backend it is pinned to, and its state.
#[map]
pub static FLOWS6: LruHashMap<FlowKey6, FlowEntry6> =
    LruHashMap::with_max_entries(DEFAULT_FLOW_TABLE_SIZE, 0);

/// Unverified IPv4 client flow (handshake in progress, mid-flow miss, UDP) → its backend and
/// state.
#[map]
pub static PENDING: LruHashMap<FlowKey4, PendingEntry4> =
    LruHashMap::with_max_entries(DEFAULT_PENDING_TABLE_SIZE, 0);

/// Unverified IPv6 client flow → its backend and state.
#[map]
pub static PENDING6: LruHashMap<FlowKey6, PendingEntry6> =
    LruHashMap::with_max_entries(DEFAULT_PENDING_TABLE_SIZE, 0);

/// `[0]`: when the last `Unverified` flow went into `PENDING` (gates the egress lookup).
#[map]
pub static UNVERIFIED_SINCE: Array<u64> = Array::with_max_entries(1, 0);

/// Backend address (source of its replies) → the service address and port to put back.
#[map]
pub static BACKEND_REVERSE: HashMap<BackendKey, ReverseValue> =
    HashMap::with_max_entries(MAX_BACKENDS, 0);

/// Shared backend address → the services it serves (when `BACKEND_REVERSE` says `SHARED`).
#[map]
pub static SHARED_REVERSE: HashMap<BackendKey, SharedReverse> =
    HashMap::with_max_entries(MAX_SHARED_BACKENDS, 0);

/// Service id + client prefix → the color its new flows are forced to (`[service.overrides]`).
#[map]
pub static OVERRIDES: LpmTrie<OverrideKey, OverrideValue> =
    LpmTrie::with_max_entries(MAX_OVERRIDES, 0);

/// Backend id → traffic counters, per CPU.
#[map]
pub static BACKEND_COUNTERS: PerCpuArray<BackendCounters> =
    PerCpuArray::with_max_entries(MAX_BACKENDS, 0);

/// Service id → counters, per CPU.
#[map]
pub static SERVICE_COUNTERS: PerCpuArray<ServiceCounters> =
    PerCpuArray::with_max_entries(MAX_SERVICES, 0);

/// [`Reason`] → packets, per CPU.
#[map]
pub static VERDICTS: PerCpuArray<u64> = PerCpuArray::with_max_entries(Reason::COUNT, 0);

/// Interfaces the fast path may XDP_REDIRECT to (ifindex → ifindex); empty: kernel routing.
#[map]
pub static REDIRECT_PORTS: DevMapHash = DevMapHash::with_max_entries(MAX_REDIRECT_PORTS, 0);

/// [`Forwarding`] → rewritten packets, per CPU.
#[map]
pub static FORWARDING: PerCpuArray<u64> = PerCpuArray::with_max_entries(Forwarding::COUNT, 0);

/// `[0]`: `[jiffies, ns]`, the coarse clock as this CPU last read it (`clock.rs`). Internal to
/// the programs: not pinned, not read by the daemon.
#[map]
pub static COARSE_CLOCK: PerCpuArray<[u64; 2]> = PerCpuArray::with_max_entries(1, 0);

/// `[0]`: 1 when the fast path is on (some `REDIRECT_PORTS`); 0 saves the FIB lookup.
#[map]
pub static FAST_PATH: Array<u32> = Array::with_max_entries(1, 0);
