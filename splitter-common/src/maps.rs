//! Map names and capacities: the names are the symbols in `splitter-ebpf/src/maps.rs` and the
//! file names under the pin directory.

/// `SERVICES`: [`crate::ServiceKey`] → [`crate::ServiceConfig`].
pub const SERVICES: &str = "SERVICES";
/// `SERVICE_PORTS`: `[port / 64]` → a word whose bit `port % 64` is set when some service
/// listens on that port (host order): packets to other ports are not services, without a hash
/// lookup. The daemon sets a bit before the first `SERVICES` entry of its port and clears it
/// after the last ([`service_port_bit`]).
pub const SERVICE_PORTS: &str = "SERVICE_PORTS";
/// Words of `SERVICE_PORTS` (8 KiB: one bit per port).
pub const SERVICE_PORT_WORDS: u32 = 1024;

/// The word index and bit of `port` (host order) in `SERVICE_PORTS`.
#[inline(always)]
pub const fn service_port_bit(port: u16) -> (u32, u64) {
    ((port >> 6) as u32, 1 << (port & 63))
}

/// `BACKENDS`: backend id → [`crate::Backend`].
pub const BACKENDS: &str = "BACKENDS";
/// `POOLS`: pool slot → backend id.
pub const POOLS: &str = "POOLS";
/// `FLOWS` (LRU): verified IPv4 flows, [`crate::FlowKey4`] → [`crate::FlowEntry4`] (states
/// `Established`, `Closing`, `Closed`). Only a promotion from `PENDING` inserts here.
pub const FLOWS: &str = "FLOWS";
/// `FLOWS6` (LRU): verified IPv6 flows, [`crate::FlowKey6`] → [`crate::FlowEntry6`].
pub const FLOWS6: &str = "FLOWS6";
/// `PENDING` (LRU): unverified IPv4 flows, [`crate::FlowKey4`] → [`crate::PendingEntry4`]
/// (states `Pending`, `SynAcked`, `Unverified`, `Udp`): what spoofed traffic can fill.
pub const PENDING: &str = "PENDING";
/// `PENDING6` (LRU): unverified IPv6 flows, [`crate::FlowKey6`] → [`crate::PendingEntry6`].
pub const PENDING6: &str = "PENDING6";
/// `UNVERIFIED_SINCE[0]`: `bpf_ktime_get_ns` of the last `Unverified` insert into `PENDING`;
/// the egress program looks up `PENDING` for a data reply only shortly after one.
pub const UNVERIFIED_SINCE: &str = "UNVERIFIED_SINCE";
/// `BACKEND_REVERSE`: [`crate::BackendKey`] → [`crate::ReverseValue`] (the reply path).
pub const BACKEND_REVERSE: &str = "BACKEND_REVERSE";
/// `SHARED_REVERSE`: [`crate::BackendKey`] → [`crate::SharedReverse`], the candidate services
/// of a backend whose `BACKEND_REVERSE` value has [`crate::reverse_flags::SHARED`].
pub const SHARED_REVERSE: &str = "SHARED_REVERSE";
/// `OVERRIDES` (LPM trie): [`crate::OverrideKey`] (service id + client prefix) →
/// [`crate::OverrideValue`]; looked up only for services with
/// [`crate::service_flags::OVERRIDES`].
pub const OVERRIDES: &str = "OVERRIDES";
/// `BACKEND_COUNTERS` (per CPU): backend id → [`crate::BackendCounters`].
pub const BACKEND_COUNTERS: &str = "BACKEND_COUNTERS";
/// `SERVICE_COUNTERS` (per CPU): service id → [`crate::ServiceCounters`].
pub const SERVICE_COUNTERS: &str = "SERVICE_COUNTERS";
/// `VERDICTS` (per CPU): [`crate::Reason`] → packets.
pub const VERDICTS: &str = "VERDICTS";

/// `REDIRECT_PORTS` (devmap hash): ifindex → ifindex, the interfaces the fast path may
/// XDP_REDIRECT to (native XDP transmit must work there).
pub const REDIRECT_PORTS: &str = "REDIRECT_PORTS";
/// `FAST_PATH[0]`: 1 when `REDIRECT_PORTS` has entries (the FIB lookup is skipped otherwise).
pub const FAST_PATH: &str = "FAST_PATH";
/// `FORWARDING` (per CPU): [`crate::Forwarding`] → packets.
pub const FORWARDING: &str = "FORWARDING";

/// Every map of the data plane, in the order they are pinned and opened: the daemon pins
/// exactly these (and the read-only globals), nothing else of the object.
pub const ALL: [&str; 18] = [
    SERVICES,
    SERVICE_PORTS,
    BACKENDS,
    POOLS,
    FLOWS,
    FLOWS6,
    PENDING,
    PENDING6,
    UNVERIFIED_SINCE,
    BACKEND_REVERSE,
    BACKEND_COUNTERS,
    SERVICE_COUNTERS,
    VERDICTS,
    REDIRECT_PORTS,
    FORWARDING,
    FAST_PATH,
    SHARED_REVERSE,
    OVERRIDES,
];

/// Global set at load time (`EbpfLoader::override_global`): the split hash seed.
pub const HASH_SEED_GLOBAL: &str = "HASH_SEED";
/// Global set at load time: [`crate::signals::DEFAULT_HANDSHAKE_TIMEOUT_NS`] unless configured.
pub const HANDSHAKE_TIMEOUT_GLOBAL: &str = "HANDSHAKE_TIMEOUT_NS";
/// Global set at load time: [`DEFAULT_UDP_IDLE_TIMEOUT_NS`] unless configured.
pub const UDP_IDLE_TIMEOUT_GLOBAL: &str = "UDP_IDLE_TIMEOUT_NS";

/// Program names (the function names in `splitter-ebpf/src/main.rs`).
pub const INGRESS_PROGRAM: &str = "splitter_ingress";
pub const EGRESS_PROGRAM: &str = "splitter_egress";

pub const MAX_SERVICES: u32 = 1024;
pub const MAX_BACKENDS: u32 = 8192;
/// Slots of `POOLS` (4 bytes each: 16 MiB): every service's Maglev tables and member lists
/// (`splitter/src/dataplane/pools.rs`), twice over for a reload's fresh runs.
pub const POOL_SLOTS: u32 = 1 << 22;
pub const MAX_REDIRECT_PORTS: u32 = 64;
/// Capacity of `SHARED_REVERSE` (backends shared by several services).
pub const MAX_SHARED_BACKENDS: u32 = 1024;
/// Capacity of `OVERRIDES` (prefixes over all services).
pub const MAX_OVERRIDES: u32 = 16_384;
/// Default capacity of `FLOWS` and of `FLOWS6` (the config's `flow_table_size`: each family's
/// table holds that many flows).
pub const DEFAULT_FLOW_TABLE_SIZE: u32 = 262_144;
/// Default capacity of `PENDING` and of `PENDING6` (the config's `pending_table_size`): a
/// quarter of the flow table's default.
pub const DEFAULT_PENDING_TABLE_SIZE: u32 = DEFAULT_FLOW_TABLE_SIZE / 4;
/// A UDP flow idle this long is gone: its next packet is chosen afresh (`udp_idle_timeout`).
pub const DEFAULT_UDP_IDLE_TIMEOUT_NS: u64 = 30_000_000_000;
