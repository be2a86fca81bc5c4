//! The coarse clock, read per packet. `bpf_ktime_get_coarse_ns` is a helper call: 15-17 ns of a
//! ~105 ns UDP datagram here (`cargo xtask bench --only udp`). The coarse clock only moves when
//! the tick does, so each CPU keeps the value it last read with the jiffies it read it at
//! (`COARSE_CLOCK`); `bpf_jiffies64`, which the verifier inlines into one load, says when to
//! read again: one helper call per tick and CPU.

use aya_ebpf::helpers::{bpf_jiffies64, bpf_ktime_get_coarse_ns};

use crate::maps::COARSE_CLOCK;

/// CLOCK_MONOTONIC as of the last tick, as `bpf_ktime_get_coarse_ns` gives it (or up to a
/// tick older, see below): for idle timeouts and gates of 100 ms and more, never for latencies.
#[inline(always)]
pub fn coarse_ns() -> u64 {
    let jiffies = unsafe { bpf_jiffies64() };
    let Some(cache) = COARSE_CLOCK.get_ptr_mut(0) else {
        return unsafe { bpf_ktime_get_coarse_ns() };
    };
    let cache = unsafe { &mut *cache };
    if cache[0] == jiffies {
        return cache[1];
    }
    let ns = unsafe { bpf_ktime_get_coarse_ns() };
    // The tick bumps jiffies before it moves the clock: a read in between gets the time it had
    // already cached, and keeps it under the old jiffies, so the next packet reads again.
    if ns != cache[1] {
        cache[1] = ns;
        cache[0] = jiffies;
    }
    ns
}
