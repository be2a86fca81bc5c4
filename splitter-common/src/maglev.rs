//! The in-pool choice: a weighted Maglev table per color (Eisenbud et al., "Maglev", NSDI '16,
//! §3.4; the weighted fill is katran's "maglev v2"). The daemon builds it, `POOLS` holds it, the
//! data plane reads entry `hash::pool_index(hash, table_len)` of it; the tests' predictors build
//! it with this same function.
//!
//! * Each backend's permutation of the table comes from two hashes of its **address and port**
//!   (not of its id, which differs from host to host): `offset = h₁ mod M`, `skip = h₂ mod
//!   (M − 1) + 1`, entry `j` of its preference list is `(offset + j × skip) mod M`. M is prime,
//!   so every list visits every entry.
//! * Filling: rounds over the backends **sorted by address** (the config's order does not
//!   matter); in each round a backend of weight `w` takes `w` turns, each turn claims the next
//!   free entry of its preference list. A weight-0 backend takes none (it keeps its place in
//!   the pool, gets no new flows).
//! * Size: [`table_size`] picks M from the number of backends the color has in the config
//!   alone (not from their weights or state), so taking a backend out of rotation rebuilds the
//!   table at the same size and moves only the entries it held (plus Maglev's small churn).
//!
//! Same config ⇒ same table on every host, entry for entry.

extern crate alloc;

use alloc::{vec, vec::Vec};
use core::net::SocketAddr;

use crate::hash::murmur3_32;

/// Table sizes (primes). A color with `n` backends uses the smallest one ≥ [`ENTRIES_PER_BACKEND`]
/// × n, or the largest: each backend then holds about 100 entries or more, so its share of
/// cohorts is within about 1 % of its weight's.
pub const TABLE_SIZES: [u32; 5] = [1_021, 4_099, 16_411, 65_537, 262_147];

/// Entries per backend the table size aims at (the Maglev paper's M ≥ 100 × N).
pub const ENTRIES_PER_BACKEND: u32 = 100;

/// Largest backend weight accepted.
pub const MAX_WEIGHT: u32 = 256;

/// Seeds of the two hashes of a backend's address (fixed: every host builds the same table).
const OFFSET_SEED: u32 = 0x6d61_676c;
const SKIP_SEED: u32 = 0x6576_3221;

/// The table size of a color with `backends` backends in the config (0 when none). Crossing a
/// size (the 11th, 41st, 165th, 656th backend of a color) rebuilds the table at a new size:
/// then most cohorts change backend.
pub fn table_size(backends: usize) -> u32 {
    if backends == 0 {
        return 0;
    }
    let wanted = (backends as u64).saturating_mul(ENTRIES_PER_BACKEND as u64);
    TABLE_SIZES
        .iter()
        .copied()
        .find(|&size| size as u64 >= wanted)
        .unwrap_or(TABLE_SIZES[TABLE_SIZES.len() - 1])
}

/// The bytes a backend's permutation is hashed from: the address (4 or 16 bytes) then the port,
/// big-endian.
fn address_bytes(address: &SocketAddr) -> ([u8; 18], usize) {
    let mut bytes = [0u8; 18];
    let len = match address {
        SocketAddr::V4(v4) => {
            bytes[..4].copy_from_slice(&v4.ip().octets());
            bytes[4..6].copy_from_slice(&v4.port().to_be_bytes());
            6
        }
        SocketAddr::V6(v6) => {
            bytes[..16].copy_from_slice(&v6.ip().octets());
            bytes[16..18].copy_from_slice(&v6.port().to_be_bytes());
            18
        }
    };
    (bytes, len)
}

/// `(offset, skip)` of a backend's preference list in a table of `size` (prime, > 1) entries.
pub fn permutation(address: &SocketAddr, size: u32) -> (u32, u32) {
    let (bytes, len) = address_bytes(address);
    let offset = murmur3_32(&bytes[..len], OFFSET_SEED) % size;
    let skip = murmur3_32(&bytes[..len], SKIP_SEED) % (size - 1) + 1;
    (offset, skip)
}

/// Builds the table of a color whose backends are `members` (address, weight), `size` entries
/// (from [`table_size`] of all the color's backends). Each entry is an index into `members`.
/// Empty when no member has a weight above 0 (the color then has no backend in rotation).
pub fn build(members: &[(SocketAddr, u32)], size: u32) -> Vec<u32> {
    let mut order: Vec<usize> = (0..members.len()).filter(|&i| members[i].1 > 0).collect();
    if order.is_empty() || size == 0 {
        return Vec::new();
    }
    order.sort_by_key(|&i| members[i].0);
    let lists: Vec<(u64, u64)> = order
        .iter()
        .map(|&i| {
            let (offset, skip) = permutation(&members[i].0, size.max(2));
            (offset as u64, skip as u64)
        })
        .collect();
    const FREE: u32 = u32::MAX;
    let m = size as u64;
    let mut table = vec![FREE; size as usize];
    let mut next = vec![0u64; order.len()];
    let mut filled = 0u32;
    loop {
        for (k, &i) in order.iter().enumerate() {
            let (offset, skip) = lists[k];
            for _ in 0..members[i].1.min(MAX_WEIGHT) {
                // Every list visits every entry (M prime), so a free one is found.
                let slot = loop {
                    let slot = ((offset + next[k] * skip) % m) as usize;
                    next[k] += 1;
                    if table[slot] == FREE {
                        break slot;
                    }
                };
                table[slot] = i as u32;
                filled += 1;
                if filled == size {
                    return table;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    extern crate std;

    use std::{format, vec::Vec};

    use super::*;

    fn backends(n: usize) -> Vec<(SocketAddr, u32)> {
        (0..n)
            .map(|i| {
                (
                    format!("198.18.{}.{}:8080", 10 + i / 200, 10 + i % 200)
                        .parse()
                        .unwrap(),
                    1,
                )
            })
            .collect()
    }

    fn loads(table: &[u32], n: usize) -> Vec<u32> {
        let mut loads = vec![0u32; n];
        for &entry in table {
            loads[entry as usize] += 1;
        }
        loads
    }

    fn is_prime(n: u32) -> bool {
        n >= 2
            && (2..)
                .take_while(|d| d * d <= n)
                .all(|d| !n.is_multiple_of(d))
    }

    #[test]
    fn sizes_are_primes_from_the_backend_count() {
        assert!(TABLE_SIZES.iter().all(|&size| is_prime(size)));
        assert_eq!(table_size(0), 0);
        assert_eq!(table_size(1), 1_021);
        assert_eq!(table_size(10), 1_021);
        assert_eq!(table_size(11), 4_099);
        assert_eq!(table_size(100_000), 262_147);
    }

    #[test]
    fn same_members_same_table_whatever_their_order() {
        let members = backends(7);
        let table = build(&members, table_size(7));
        assert_eq!(table.len(), 1_021);
        assert_eq!(table, build(&members, table_size(7)), "deterministic");
        let mut reversed = members.clone();
        reversed.reverse();
        let other = build(&reversed, table_size(7));
        let by_address = |table: &[u32], members: &[(SocketAddr, u32)]| -> Vec<SocketAddr> {
            table.iter().map(|&i| members[i as usize].0).collect()
        };
        assert_eq!(by_address(&table, &members), by_address(&other, &reversed));
    }

    #[test]
    fn equal_weights_balance_within_one_entry() {
        for n in [1, 2, 3, 4, 5, 10, 40, 164] {
            let table = build(&backends(n), table_size(n));
            let loads = loads(&table, n);
            let (min, max) = (loads.iter().min().unwrap(), loads.iter().max().unwrap());
            assert!(max - min <= 1, "{n} backends: loads {min}..={max}");
        }
    }

    #[test]
    fn weights_are_respected() {
        let mut members = backends(4);
        members[1].1 = 3;
        members[3].1 = 0;
        let table = build(&members, table_size(4));
        let loads = loads(&table, 4);
        assert_eq!(loads[3], 0, "weight 0 gets no entry");
        let ratio = loads[1] as f64 / loads[0] as f64;
        assert!((2.9..=3.1).contains(&ratio), "loads {loads:?}");
        assert!(loads[0].abs_diff(loads[2]) <= 1, "loads {loads:?}");
        members.iter_mut().for_each(|member| member.1 = 0);
        assert!(build(&members, 1_021).is_empty());
    }

    /// Entries whose backend (by address) differs between two tables.
    fn moved(
        before: &[u32],
        before_members: &[(SocketAddr, u32)],
        after: &[u32],
        after_members: &[(SocketAddr, u32)],
    ) -> (usize, usize) {
        let mut moved = 0;
        let mut between_survivors = 0;
        for (b, a) in before.iter().zip(after) {
            let (b, a) = (before_members[*b as usize].0, after_members[*a as usize].0);
            if a != b {
                moved += 1;
                if after_members.iter().any(|m| m.0 == b) && before_members.iter().any(|m| m.0 == a)
                {
                    between_survivors += 1;
                }
            }
        }
        (moved, between_survivors)
    }

    #[test]
    fn removing_or_adding_one_of_n_moves_about_one_nth() {
        for n in [3, 4, 5, 8, 10, 30, 40, 100] {
            let size = table_size(n);
            let all = backends(n);
            let table = build(&all, size);
            // Removing backend 1 (same config size: the table keeps its size).
            let fewer: Vec<_> = all
                .iter()
                .enumerate()
                .filter(|(i, _)| *i != 1)
                .map(|(_, m)| *m)
                .collect();
            if table_size(n - 1) != size {
                continue;
            }
            let after = build(&fewer, size);
            let (moved, churn) = moved(&table, &all, &after, &fewer);
            // The removed backend's entries all move (≈ 1/N of the table); Maglev also moves a
            // few entries between surviving backends (its churn, a few % at 100+ entries per
            // backend).
            let share = moved as f64 / size as f64;
            let expected = 1.0 / n as f64;
            let churn_share = churn as f64 / size as f64;
            std::eprintln!(
                "{n} backends: moved {share:.4} (1/N {expected:.4}), churn {churn_share:.4}"
            );
            assert!(
                share >= expected * 0.95 && churn_share <= 0.06,
                "{n} backends, one removed: {moved} of {size} entries moved ({share:.3}, expected ≈ {expected:.3}), {churn} between surviving backends"
            );
            // Taking backend 1 out of rotation with weight 0 is the same table as removing it.
            let mut out = all.clone();
            out[1].1 = 0;
            let by_address = |t: &[u32], m: &[(SocketAddr, u32)]| -> Vec<SocketAddr> {
                t.iter().map(|&i| m[i as usize].0).collect()
            };
            assert_eq!(
                by_address(&build(&out, size), &out),
                by_address(&after, &fewer)
            );
        }
    }
}
