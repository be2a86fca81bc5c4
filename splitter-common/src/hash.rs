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

/// MurmurHash3 x86_32 of `bytes`, the published reference function (tail bytes included). The
/// data plane hashes fixed word sequences with [`flow_hash`] and [`client_hash`]; those equal
/// this function over the same words' bytes (tested below), and this one is checked against the
/// published test vectors.
pub fn murmur3_32(bytes: &[u8], seed: u32) -> u32 {
    let mut h = seed;
    let mut chunks = bytes.chunks_exact(4);
    for chunk in &mut chunks {
        h = mix(
            h,
            u32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]),
        );
    }
    let tail = chunks.remainder();
    if !tail.is_empty() {
        let mut k = 0u32;
        for (i, byte) in tail.iter().enumerate() {
            k |= (*byte as u32) << (8 * i);
        }
        h ^= k
            .wrapping_mul(0xcc9e_2d51)
            .rotate_left(15)
            .wrapping_mul(0x1b87_3593);
    }
    fmix32(h ^ bytes.len() as u32)
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
    ((fmix32(hash ^ POOL_SALT) as u64 * len as u64) >> 32) as u32
}

/// Decorrelates the backend choice from the color threshold (the golden ratio's bits).
pub const POOL_SALT: u32 = 0x9e37_79b9;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Addr, Family};

    /// Published MurmurHash3 x86_32 test vectors (SMHasher; checked with Python's `mmh3`
    /// 5.x: `mmh3.hash(data, seed, signed=False)`).
    #[test]
    fn murmur3_matches_the_reference_vectors() {
        let vectors: [(&[u8], u32, u32); 9] = [
            (b"", 0, 0),
            (b"", 1, 0x514e_28b7),
            (b"", 0xffff_ffff, 0x81f1_6f39),
            (b"hello", 0, 0x248b_fa47),
            (
                b"The quick brown fox jumps over the lazy dog",
                0,
                0x2e4f_f723,
            ),
            (&[0xff, 0xff, 0xff, 0xff], 0, 0x7629_3b50),
            (&[0x21, 0x43, 0x65, 0x87], 0x5082_edee, 0x2362_f9de),
            (b"aaaa", 0x9747_b28c, 0x5a97_808a),
            (b"Hello, world!", 0x9747_b28c, 0x2488_4cba),
        ];
        for (data, seed, want) in vectors {
            assert_eq!(
                murmur3_32(data, seed),
                want,
                "murmur3_32({data:?}, {seed:#x})"
            );
        }
    }

    fn words_bytes<const N: usize>(words: [u32; N]) -> [[u8; 4]; N] {
        words.map(u32::to_le_bytes)
    }

    /// The specialised cohort hashes are MurmurHash3 over the documented words.
    #[test]
    fn cohort_hashes_are_murmur3_of_the_documented_words() {
        let key = FlowKey {
            src: Addr::from_v6([0xfd, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10]),
            dst: Addr::from_v6([0xfd, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x01]),
            src_port: 40_000u16.to_be(),
            dst_port: 443u16.to_be(),
            protocol: 6,
            family: Family::Ipv6 as u8,
            _pad: [0; 2],
        };
        for seed in [0, 1, DEFAULT_HASH_SEED, 0xdead_beef] {
            let [s0, s1, s2, s3] = key.src.0;
            let [d0, d1, d2, d3] = key.dst.0;
            let flow_words = words_bytes([
                s0,
                s1,
                s2,
                s3,
                d0,
                d1,
                d2,
                d3,
                key.src_port as u32 | (key.dst_port as u32) << 16,
                key.protocol as u32 | (key.family as u32) << 8,
            ]);
            assert_eq!(
                flow_hash(&key, seed),
                murmur3_32(flow_words.as_flattened(), seed)
            );
            let client_words = words_bytes([s0, s1, s2, s3, (key.family as u32) << 8]);
            assert_eq!(
                client_hash(&key.src, key.family, seed),
                murmur3_32(client_words.as_flattened(), seed)
            );
        }
    }
}
