//! One verdict from a window of signals: green against blue, measured in the same window.
//! The split is a hash threshold, so both colors see comparable cohorts at the same time: no
//! separate baseline deployment is needed.

use serde::{Deserialize, Serialize};
use splitter_common::{
    Signals,
    signals::{HANDSHAKE_BUCKETS, HANDSHAKE_BUCKETS_US},
};

use super::plan::Plan;
use crate::color::ColorName;

/// One color's counters (summed over its backends) at an instant, or their change over a
/// window.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ColorSignals {
    pub new_flows: u64,
    pub handshakes_completed: u64,
    pub handshakes_failed: u64,
    pub established_resets: u64,
    pub latency_buckets: [u64; HANDSHAKE_BUCKETS],
}

impl ColorSignals {
    pub fn add(&mut self, new_flows: u64, signals: &Signals) {
        self.new_flows += new_flows;
        self.handshakes_completed += signals.handshakes_completed;
        self.handshakes_failed += signals.handshakes_refused + signals.handshakes_timed_out;
        self.established_resets += signals.established_resets;
        for (bucket, count) in self
            .latency_buckets
            .iter_mut()
            .zip(signals.handshake_latency_buckets)
        {
            *bucket += count;
        }
    }

    /// The change from `earlier` (counters only grow; a reset data plane gives zeros).
    pub fn since(&self, earlier: &ColorSignals) -> ColorSignals {
        let mut latency_buckets = [0; HANDSHAKE_BUCKETS];
        for (i, bucket) in latency_buckets.iter_mut().enumerate() {
            *bucket = self.latency_buckets[i].saturating_sub(earlier.latency_buckets[i]);
        }
        ColorSignals {
            new_flows: self.new_flows.saturating_sub(earlier.new_flows),
            handshakes_completed: self
                .handshakes_completed
                .saturating_sub(earlier.handshakes_completed),
            handshakes_failed: self
                .handshakes_failed
                .saturating_sub(earlier.handshakes_failed),
            established_resets: self
                .established_resets
                .saturating_sub(earlier.established_resets),
            latency_buckets,
        }
    }

    /// Handshakes attempted (completed or failed).
    pub fn attempts(&self) -> u64 {
        self.handshakes_completed + self.handshakes_failed
    }

    /// Failed handshakes and resets of established flows per handshake attempt.
    pub fn failure_ratio(&self) -> f64 {
        (self.handshakes_failed + self.established_resets) as f64 / self.attempts().max(1) as f64
    }

    /// The handshake-latency quantile `q` in seconds, interpolated inside its bucket like
    /// Prometheus' `histogram_quantile`; `None` without observations.
    pub fn latency_quantile(&self, q: f64) -> Option<f64> {
        let total: u64 = self.latency_buckets.iter().sum();
        if total == 0 {
            return None;
        }
        let rank = q * total as f64;
        let mut seen = 0u64;
        for (i, &count) in self.latency_buckets.iter().enumerate() {
            if count == 0 {
                continue;
            }
            if (seen + count) as f64 >= rank {
                let lower = if i == 0 {
                    0
                } else {
                    HANDSHAKE_BUCKETS_US[i - 1]
                };
                // The +Inf bucket: report its lower bound.
                let Some(&upper) = HANDSHAKE_BUCKETS_US.get(i) else {
                    return Some(lower as f64 / 1e6);
                };
                let within = (rank - seen as f64) / count as f64;
                return Some((lower as f64 + (upper - lower) as f64 * within) / 1e6);
            }
            seen += count;
        }
        None
    }
}

/// Blue and green over the same window.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Window {
    pub blue: ColorSignals,
    pub green: ColorSignals,
}

/// What a window says about green.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "verdict", rename_all = "snake_case")]
pub enum Verdict {
    /// Enough green traffic, every threshold met.
    Pass,
    /// Not enough green traffic to judge: wait, never pass.
    Hold { reason: String },
    /// Green does worse than allowed: roll back.
    Fail { reason: String },
}

/// Judges a window against the plan's L4 thresholds (external checks are judged separately),
/// with green as the canary.
pub fn judge(plan: &Plan, window: &Window) -> Verdict {
    judge_canary(plan, window, ColorName::Green)
}

/// Judges `canary`'s signals against the other color's (the stable one) in the same window.
pub fn judge_canary(plan: &Plan, window: &Window, canary_color: ColorName) -> Verdict {
    let (canary, stable) = match canary_color {
        ColorName::Green => (&window.green, &window.blue),
        ColorName::Blue => (&window.blue, &window.green),
    };
    let (c, s) = (canary_color.name(), canary_color.other().name());
    let canary_ratio = canary.failure_ratio();
    let stable_ratio = stable.failure_ratio();
    // Failures are judged as soon as they are significant, even before min_flows: a canary
    // that refuses everything must not wait for a full window.
    let canary_failures = canary.handshakes_failed + canary.established_resets;
    let min_flows = plan.thresholds.min_flows;
    if canary.attempts() >= min_flows || canary_failures >= min_flows {
        if canary_ratio > plan.thresholds.max_failure_ratio {
            return Verdict::Fail {
                reason: format!(
                    "{c} failure ratio {canary_ratio:.3} > max {:.3} ({canary_failures} failed of \
                     {} attempts)",
                    plan.thresholds.max_failure_ratio,
                    canary.attempts()
                ),
            };
        }
        if stable.attempts() >= min_flows
            && canary_ratio - stable_ratio > plan.thresholds.failure_margin
            && canary_ratio > stable_ratio * (1.0 + plan.thresholds.failure_tolerance)
        {
            return Verdict::Fail {
                reason: format!(
                    "{c} failure ratio {canary_ratio:.3} > {s} {stable_ratio:.3} × {:.2}",
                    1.0 + plan.thresholds.failure_tolerance
                ),
            };
        }
    }
    if canary.attempts() < min_flows {
        return Verdict::Hold {
            reason: format!(
                "too few {c} handshakes to judge: {} < min_flows {min_flows}",
                canary.attempts(),
            ),
        };
    }
    if stable.handshakes_completed >= min_flows
        && let (Some(canary_p99), Some(stable_p99)) =
            (canary.latency_quantile(0.99), stable.latency_quantile(0.99))
        && canary_p99 > stable_p99 * (1.0 + plan.thresholds.latency_tolerance)
        && (canary_p99 - stable_p99) * 1e3 > plan.thresholds.latency_margin_ms
    {
        return Verdict::Fail {
            reason: format!(
                "{c} handshake p99 {:.1}ms > {s} {:.1}ms × {:.2}",
                canary_p99 * 1e3,
                stable_p99 * 1e3,
                1.0 + plan.thresholds.latency_tolerance
            ),
        };
    }
    Verdict::Pass
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::rollout::plan::Thresholds;

    fn plan() -> Plan {
        Plan::new(
            &[10.0, 100.0],
            Duration::from_secs(1),
            Thresholds {
                min_flows: 20,
                ..Thresholds::default()
            },
            Vec::new(),
        )
        .unwrap()
    }

    fn color(completed: u64, failed: u64, bucket: usize) -> ColorSignals {
        let mut latency_buckets = [0; HANDSHAKE_BUCKETS];
        latency_buckets[bucket] = completed;
        ColorSignals {
            new_flows: completed + failed,
            handshakes_completed: completed,
            handshakes_failed: failed,
            established_resets: 0,
            latency_buckets,
        }
    }

    #[test]
    fn too_few_samples_hold_never_pass() {
        let window = Window {
            blue: color(500, 0, 2),
            green: color(5, 0, 2),
        };
        assert!(matches!(judge(&plan(), &window), Verdict::Hold { .. }));
    }

    #[test]
    fn healthy_green_passes() {
        let window = Window {
            blue: color(500, 1, 2),
            green: color(60, 0, 2),
        };
        assert_eq!(judge(&plan(), &window), Verdict::Pass);
    }

    #[test]
    fn failing_green_fails_on_absolute_and_relative_ratio() {
        let absolute = Window {
            blue: color(500, 0, 2),
            green: color(40, 20, 2),
        };
        assert!(matches!(judge(&plan(), &absolute), Verdict::Fail { .. }));
        // 4 % is under the absolute 5 % but twice blue's 2 %: relative failure.
        let relative = Window {
            blue: color(980, 20, 2),
            green: color(960, 40, 2),
        };
        assert!(matches!(judge(&plan(), &relative), Verdict::Fail { .. }));
        // Refusing everything fails as soon as min_flows failures are seen.
        let refusing = Window {
            blue: color(500, 0, 2),
            green: color(0, 20, 2),
        };
        assert!(matches!(judge(&plan(), &refusing), Verdict::Fail { .. }));
    }

    #[test]
    fn slow_green_fails_on_p99() {
        let window = Window {
            // blue ≤ 250µs, green 25-50ms
            blue: color(500, 0, 2),
            green: color(60, 0, 9),
        };
        let verdict = judge(&plan(), &window);
        assert!(matches!(verdict, Verdict::Fail { ref reason } if reason.contains("p99")));
    }

    #[test]
    fn quantile_interpolates_inside_the_bucket() {
        let c = color(100, 0, 1); // all in (50µs, 100µs]
        let p50 = c.latency_quantile(0.5).unwrap();
        assert!((p50 - 75e-6).abs() < 1e-9, "{p50}");
    }
}
