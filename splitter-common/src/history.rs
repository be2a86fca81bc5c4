//! Steering a TCP mid-flow miss (a packet of a flow neither table knows: evicted, or begun on
//! another host behind ECMP) by the weight history of its service.
//!
//! The flow began at some unknown time, most likely within the last `miss_hold`. Every weight in
//! force during `[now - miss_hold, now]` (the window) could have chosen it. The split is
//! monotone (a hash green at weight `w` is green at every weight above `w`), so:
//! * green under the window's **minimum** weight → green under every weight of the window: green;
//! * blue under the window's **maximum** weight → blue under every weight of the window: blue;
//! * otherwise the colors disagree within the window (the ambiguous band): the **oldest** weight
//!   of the window decides (the flow most likely began before the changes), and it is counted.
//!
//! The window is cut at the oldest change the history holds ([`WEIGHT_HISTORY`] entries).

use crate::{WeightChange, hash::is_green, service::WEIGHT_HISTORY};

/// The weight that steers a mid-flow miss, and whether its hash fell in the ambiguous band.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MissWeight {
    pub weight: u32,
    pub ambiguous: bool,
}

/// The weight a mid-flow miss with split hash `hash` follows at `now_ns`, given the service's
/// `history` (newest first) and window length `hold_ns`. With a single weight in the window
/// this is that weight, never ambiguous.
#[inline(always)]
pub fn miss_weight(
    history: &[WeightChange; WEIGHT_HISTORY],
    hold_ns: u64,
    now_ns: u64,
    hash: u32,
) -> MissWeight {
    let window_start = now_ns.saturating_sub(hold_ns);
    let mut min = history[0].weight;
    let mut max = history[0].weight;
    let mut oldest = history[0].weight;
    let mut index = 1;
    // Bounded: at most WEIGHT_HISTORY - 1 steps (the verifier sees a constant bound).
    while index < WEIGHT_HISTORY {
        // history[index] was in force until history[index - 1] began: inside the window only
        // when that change came after the window's start.
        if history[index - 1].since_ns <= window_start {
            break;
        }
        let weight = history[index].weight;
        if weight < min {
            min = weight;
        }
        if weight > max {
            max = weight;
        }
        oldest = weight;
        index += 1;
    }
    if is_green(hash, min) {
        MissWeight {
            weight: min,
            ambiguous: false,
        }
    } else if !is_green(hash, max) {
        MissWeight {
            weight: max,
            ambiguous: false,
        }
    } else {
        MissWeight {
            weight: oldest,
            ambiguous: true,
        }
    }
}

/// `history` after the weight changed to `weight` at `now_ns` (newest first, the oldest entry
/// dropped). The same weight again changes nothing.
pub fn push(
    history: &[WeightChange; WEIGHT_HISTORY],
    weight: u32,
    now_ns: u64,
) -> [WeightChange; WEIGHT_HISTORY] {
    if history[0].weight == weight {
        return *history;
    }
    let mut next = [WeightChange::default(); WEIGHT_HISTORY];
    next[0] = WeightChange {
        weight,
        _pad: 0,
        since_ns: now_ns,
    };
    next[1..].copy_from_slice(&history[..WEIGHT_HISTORY - 1]);
    next
}

/// The history of a service whose only weight is `weight`, in force since `now_ns`.
pub const fn fresh(weight: u32, now_ns: u64) -> [WeightChange; WEIGHT_HISTORY] {
    [WeightChange {
        weight,
        _pad: 0,
        since_ns: now_ns,
    }; WEIGHT_HISTORY]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::WEIGHT_SCALE;

    const SECOND: u64 = 1_000_000_000;
    const HOLD: u64 = 30 * SECOND;

    /// The smallest hash green at `weight` is 0; the largest is the last `h` with
    /// `h × 10⁶ < weight × 2³²`.
    fn last_green_hash(weight: u32) -> u32 {
        let limit = (u64::from(weight) << 32).div_ceil(u64::from(WEIGHT_SCALE));
        (limit - 1) as u32
    }

    /// 10 % at t=100 s, 50 % at t=110 s, 30 % at t=120 s (now 125 s, hold 30 s): the window holds
    /// 10 %, 50 %, 30 % (min 10 %, max 50 %, oldest 10 %).
    fn rollout() -> [WeightChange; WEIGHT_HISTORY] {
        let history = fresh(100_000, 100 * SECOND);
        let history = push(&history, 500_000, 110 * SECOND);
        push(&history, 300_000, 120 * SECOND)
    }

    #[test]
    fn band_edges() {
        let history = rollout();
        let now = 125 * SECOND;
        let min_edge = last_green_hash(100_000);
        let max_edge = last_green_hash(500_000);
        let steer = |hash| miss_weight(&history, HOLD, now, hash);
        // Green under the minimum: green, unambiguous.
        assert_eq!(
            steer(0),
            MissWeight {
                weight: 100_000,
                ambiguous: false
            }
        );
        assert_eq!(
            steer(min_edge),
            MissWeight {
                weight: 100_000,
                ambiguous: false
            }
        );
        assert!(is_green(min_edge, 100_000));
        // Just above: green under some weights, blue under 10 %: ambiguous, the oldest (10 %).
        assert_eq!(
            steer(min_edge + 1),
            MissWeight {
                weight: 100_000,
                ambiguous: true
            }
        );
        assert!(!is_green(min_edge + 1, 100_000));
        // The top of the band: still green under the maximum.
        assert_eq!(
            steer(max_edge),
            MissWeight {
                weight: 100_000,
                ambiguous: true
            }
        );
        // Blue under the maximum: blue, unambiguous.
        assert_eq!(
            steer(max_edge + 1),
            MissWeight {
                weight: 500_000,
                ambiguous: false
            }
        );
        assert!(!is_green(max_edge + 1, 500_000));
        assert_eq!(
            steer(u32::MAX),
            MissWeight {
                weight: 500_000,
                ambiguous: false
            }
        );
    }

    #[test]
    fn changes_older_than_the_window_do_not_count() {
        let history = rollout();
        // At 145 s the window starts at 115 s: 50 % (in force until 120 s) and 30 %; 10 % is out.
        let band = last_green_hash(300_000) + 1;
        assert_eq!(
            miss_weight(&history, HOLD, 145 * SECOND, band),
            MissWeight {
                weight: 500_000,
                ambiguous: true
            }
        );
        let green_under_ten = last_green_hash(100_000) + 1;
        assert_eq!(
            miss_weight(&history, HOLD, 145 * SECOND, green_under_ten),
            MissWeight {
                weight: 300_000,
                ambiguous: false
            }
        );
        // At 150 s exactly the 50 % entry ended at the window's start: only 30 % remains.
        assert_eq!(
            miss_weight(&history, HOLD, 150 * SECOND, band),
            MissWeight {
                weight: 300_000,
                ambiguous: false
            }
        );
    }

    #[test]
    fn one_weight_is_never_ambiguous() {
        let history = fresh(WEIGHT_SCALE / 2, 5 * SECOND);
        for hash in [
            0,
            last_green_hash(WEIGHT_SCALE / 2),
            u32::MAX / 2 + 1,
            u32::MAX,
        ] {
            assert_eq!(
                miss_weight(&history, HOLD, 6 * SECOND, hash),
                MissWeight {
                    weight: WEIGHT_SCALE / 2,
                    ambiguous: false
                }
            );
        }
    }

    #[test]
    fn a_zero_hold_is_the_weight_in_force() {
        let history = rollout();
        let hash = last_green_hash(100_000) + 1;
        assert_eq!(miss_weight(&history, 0, 125 * SECOND, hash).weight, 300_000);
    }

    #[test]
    fn push_keeps_the_newest_eight() {
        let mut history = fresh(0, 1);
        for step in 1..=10u32 {
            history = push(&history, step * 10_000, u64::from(step) * SECOND);
        }
        assert_eq!(history[0].weight, 100_000);
        assert_eq!(history[7].weight, 30_000);
        assert_eq!(push(&history, 100_000, 99 * SECOND), history);
    }
}
