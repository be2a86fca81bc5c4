//! Rollout signals measured in the kernel: TCP handshakes per backend (completed, refused,
//! timed out), resets on established flows, and the SYN → SYN-ACK time as a histogram.

/// Upper bounds (microseconds) of the handshake-latency buckets; the last bucket is +Inf.
pub const HANDSHAKE_BUCKETS_US: [u64; HANDSHAKE_BUCKETS - 1] = [
    50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000,
    1_000_000, 2_500_000,
];
pub const HANDSHAKE_BUCKETS: usize = 16;
// The data plane masks bucket indexes with `HANDSHAKE_BUCKETS - 1` (verifier bounds).
const _: () = assert!(HANDSHAKE_BUCKETS.is_power_of_two());

/// A client SYN retransmitted this long after the first one, with no SYN-ACK from the backend
/// in between, counts as a handshake timeout (Linux retransmits the SYN after 1 s).
pub const DEFAULT_HANDSHAKE_TIMEOUT_NS: u64 = 500_000_000;

/// The bucket of a handshake that took `latency_ns`.
#[inline(always)]
pub fn bucket(latency_ns: u64) -> usize {
    let latency_us = latency_ns / 1_000;
    let mut index = 0;
    while index < HANDSHAKE_BUCKETS_US.len() {
        if latency_us <= HANDSHAKE_BUCKETS_US[index] {
            return index;
        }
        index += 1;
    }
    HANDSHAKE_BUCKETS - 1
}
