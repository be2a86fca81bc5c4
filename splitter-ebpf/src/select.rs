//! Choosing a backend for a flow that has none: the rule (cohort → hash → color → pool index)
//! is `splitter_common::select::choose`, shared with the tests' predictors; this file adds the
//! weight generation in force and the map lookups.

use aya_ebpf::helpers::bpf_ktime_get_ns;
use splitter_common::{Backend, Cohort, Color, FlowKey, ServiceConfig, select};

use crate::maps::{BACKENDS, POOLS};

/// Set by the daemon at load time (`HASH_SEED_GLOBAL`); every host of a fleet uses the same.
#[unsafe(no_mangle)]
static HASH_SEED: u32 = splitter_common::hash::DEFAULT_HASH_SEED;

/// Which weight generation steers a flow that has no pinned backend.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Start {
    /// The packet opens a flow (TCP SYN, or any UDP packet): the weight in force now.
    Now,
    /// A TCP packet in the middle of a flow we do not know (LRU eviction, or ECMP moved the flow
    /// here): it most likely began before the last weight change if that change is recent, so
    /// the previous weight steers it during `miss_hold_ns` after a change.
    Earlier,
}

/// The weight that applies to a flow starting at `start`.
#[inline(always)]
fn weight(config: &ServiceConfig, start: Start) -> u32 {
    if start == Start::Earlier {
        let seed = unsafe { core::ptr::read_volatile(&HASH_SEED) };
        let hash = select::cohort_hash(Cohort::from_raw(config.cohort), &FlowKey::default(), seed);
        return splitter_common::history::miss_weight(
            &config.history,
            config.miss_hold_ns,
            unsafe { bpf_ktime_get_ns() },
            hash,
        )
        .weight;
    }
    config.green_weight
}

/// The backend id and backend for a new flow, or `None` when the chosen pool is empty.
#[inline(always)]
pub fn choose(config: &ServiceConfig, key: &FlowKey, start: Start) -> Option<(u32, Backend)> {
    let seed = unsafe { core::ptr::read_volatile(&HASH_SEED) };
    let choice = select::choose(
        Cohort::from_raw(config.cohort),
        key,
        seed,
        weight(config, start),
        config.blue.len,
        config.green.len,
    )?;
    let pool = match choice.color {
        Color::Green => config.green,
        Color::Blue => config.blue,
    };
    let slot = pool.first_slot + choice.index;
    let backend_id = *POOLS.get(slot)?;
    let backend = *BACKENDS.get(backend_id)?;
    Some((backend_id, backend))
}
