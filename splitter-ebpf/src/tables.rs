//! The flow tables of one address family: the state machine in `flows.rs` is written once,
//! generic over [`Tables`], and instantiated for IPv4 ([`V4`], 16-byte keys and entries) and
//! IPv6 ([`V6`]).

use aya_ebpf::maps::LruHashMap;
use splitter_common::{FlowEntry, FlowKey, PendingEntry, TableAddr, TableKey};

use crate::maps::{FLOWS, FLOWS6, PENDING, PENDING6};

pub trait Tables {
    type A: TableAddr + 'static;

    fn flows() -> &'static LruHashMap<TableKey<Self::A>, FlowEntry<Self::A>>;
    fn pending() -> &'static LruHashMap<TableKey<Self::A>, PendingEntry<Self::A>>;

    #[inline(always)]
    fn key(key: &FlowKey) -> TableKey<Self::A> {
        TableKey::of(key)
    }
}

pub struct V4;
pub struct V6;

impl Tables for V4 {
    type A = u32;

    #[inline(always)]
    fn flows() -> &'static LruHashMap<TableKey<u32>, FlowEntry<u32>> {
        &FLOWS
    }

    #[inline(always)]
    fn pending() -> &'static LruHashMap<TableKey<u32>, PendingEntry<u32>> {
        &PENDING
    }
}

impl Tables for V6 {
    type A = [u32; 4];

    #[inline(always)]
    fn flows() -> &'static LruHashMap<TableKey<[u32; 4]>, FlowEntry<[u32; 4]>> {
        &FLOWS6
    }

    #[inline(always)]
    fn pending() -> &'static LruHashMap<TableKey<[u32; 4]>, PendingEntry<[u32; 4]>> {
        &PENDING6
    }
}
