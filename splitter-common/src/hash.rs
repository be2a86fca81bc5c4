//! The split hash: one fixed, documented function so that every host with the same config (and
//! seed) sends the same cohort to the same color and backend — hosts behind ECMP agree.
//!
//! * Input words: the cohort key as 32-bit words exactly as they sit in memory (addresses and
//!   ports in network byte order, read as little-endian u32; the bpf target is `bpfel`).
//!   `flow` cohort: src addr (4 words), dst addr (4), `src_port | dst_port << 16`,
//!   `protocol | family << 8`. `client` cohort: src addr (4), `family << 8`.
//! * Function: MurmurHash3 x86_32 over those words with the configured seed.
//! * Color: green iff `hash × 1 000 000 < green_weight × 2³²` (weights in parts per million), so
//!   raising the weight only moves cohorts from blue to green and lowering it only back.
//! * Backend inside the pool: `(fmix32(hash ^ 0x9e3779b9) × pool_len) >> 32`.

use crate::{Addr, FlowKey, WEIGHT_SCALE};

/// The seed used when the config does not set one.
pub const DEFAULT_HASH_SEED: u32 = 0x5370_6c74;

#[inline(always)]
const fn mix(h: u32, k: u32) -> u32 {
    let k = k
        .wrapping_mul(0xcc9e_2d51)
        .rotate_left(15)
        .wrapping_mul(0x1b87_3593);
    (h ^ k)
        .rotate_left(13)
        .wrapping_mul(5)
        .wrapping_add(0xe654_6b64)
}

#[inline(always)]
pub const fn fmix32(mut h: u32) -> u32 {
    h ^= h >> 16;
    h = h.wrapping_mul(0x85eb_ca6b);
    h ^= h >> 13;
    h = h.wrapping_mul(0xc2b2_ae35);
    h ^= h >> 16;
    h
}

/// Hash of the `flow` cohort key (the 5-tuple of the client's packet).
#[inline(always)]
pub fn flow_hash(key: &FlowKey, seed: u32) -> u32 {
    let mut h = seed;
    h = mix(h, key.src.0[0]);
    h = mix(h, key.src.0[1]);
    h = mix(h, key.src.0[2]);
    h = mix(h, key.src.0[3]);
    h = mix(h, key.dst.0[0]);
    h = mix(h, key.dst.0[1]);
    h = mix(h, key.dst.0[2]);
    h = mix(h, key.dst.0[3]);
    h = mix(h, key.src_port as u32 | (key.dst_port as u32) << 16);
    h = mix(h, key.protocol as u32 | (key.family as u32) << 8);
    fmix32(h ^ 40)
}

/// Hash of the `client` cohort key (the client's address).
#[inline(always)]
pub fn client_hash(src: &Addr, family: u8, seed: u32) -> u32 {
    let mut h = seed;
    h = mix(h, src.0[0]);
    h = mix(h, src.0[1]);
    h = mix(h, src.0[2]);
    h = mix(h, src.0[3]);
    h = mix(h, (family as u32) << 8);
    fmix32(h ^ 20)
}

/// Whether a cohort with this hash goes green at this weight (parts per million).
#[inline(always)]
pub fn is_green(hash: u32, green_weight: u32) -> bool {
    (hash as u64) * (WEIGHT_SCALE as u64) < (green_weight as u64) << 32
}

/// Which backend of a pool of `len` (> 0) a cohort with this hash goes to. The only place that
/// picks a backend: swap it for a consistent-hash table lookup without touching the callers.
#[inline(always)]
pub fn pool_index(hash: u32, len: u32) -> u32 {
    ((fmix32(hash ^ 0x9e37_79b9) as u64 * len as u64) >> 32) as u32
}
