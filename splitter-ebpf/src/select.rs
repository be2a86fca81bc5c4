//! Choosing a backend for a flow that has none: the rule (cohort → hash → color → pool index)
//! is `splitter_common::select`, and the weight a mid-flow miss follows is
//! `splitter_common::history`, both shared with the tests' predictors; this file adds the
//! weight in force and the map lookups.

use aya_ebpf::maps::lpm_trie::Key;
use splitter_common::{
    Backend, Color, FlowKey, OverrideKey, ServiceConfig, history, select, service_flags,
};

use crate::maps::{BACKENDS, OVERRIDES, POOLS};

/// Set by the daemon at load time (`HASH_SEED_GLOBAL`); every host of a fleet uses the same.
#[unsafe(no_mangle)]
static HASH_SEED: u32 = splitter_common::hash::DEFAULT_HASH_SEED;

/// Which weight steers a flow that has no pinned backend.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Start {
    /// The packet opens a flow (TCP SYN, or any UDP packet): the weight in force now.
    Now,
    /// A TCP packet in the middle of a flow we do not know (LRU eviction, or ECMP moved the flow
    /// here): the weight history of the `miss_hold` before this time (`bpf_ktime_get_ns`, read
    /// once per packet by the caller) decides (`splitter_common::history`).
    Earlier(u64),
}

/// The backend chosen for a flow.
#[derive(Clone, Copy)]
pub struct Chosen {
    pub backend_id: u32,
    pub backend: Backend,
    /// A mid-flow miss in the ambiguous band of the weight history.
    pub ambiguous: bool,
}

/// The backend for a new flow (its color's Maglev table entry), or `None` when both colors'
/// tables are empty.
#[inline(always)]
pub fn choose(config: &ServiceConfig, key: &FlowKey, start: Start) -> Option<Chosen> {
    let seed = unsafe { core::ptr::read_volatile(&HASH_SEED) };
    let hash = select::service_hash(config, key, seed);
    let (weight, ambiguous) = match start {
        Start::Now => (config.green_weight, false),
        Start::Earlier(now) => {
            let steer = history::miss_weight(&config.history, config.miss_hold_ns, now, hash);
            (steer.weight, steer.ambiguous)
        }
    };
    let choice = select::choose_forced(
        hash,
        weight,
        forced_color(config, key),
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
    Some(Chosen {
        backend_id,
        backend,
        ambiguous,
    })
}

/// The color a preview address or a source override forces, if any. The trie is looked up
/// only for services with overrides: the others pay one flag test.
#[inline(always)]
fn forced_color(config: &ServiceConfig, key: &FlowKey) -> Option<Color> {
    if config.flags & service_flags::PREVIEW != 0 {
        return Some(Color::Green);
    }
    if config.flags & service_flags::OVERRIDES == 0 {
        return None;
    }
    let lookup = Key::new(
        OverrideKey::full_prefix_len(key.family),
        OverrideKey {
            service_id: config.id,
            addr: key.src,
        },
    );
    let color = OVERRIDES.get(&lookup)?.color;
    Some(if color == Color::Green as u8 {
        Color::Green
    } else {
        Color::Blue
    })
}
