//! A rollout plan: the green weights to walk through, how long each step lasts, and the
//! thresholds that decide whether green may go on. Validated before anything changes.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::units::{PercentError, percent_to_ppm, ppm_to_percent};

/// Defaults (documented in the README).
pub const DEFAULT_STEPS_PERCENT: [f64; 5] = [1.0, 5.0, 25.0, 50.0, 100.0];
pub const DEFAULT_EVERY: Duration = Duration::from_secs(60);
pub const DEFAULT_MAX_FAILURE_RATIO: f64 = 0.05;
pub const DEFAULT_FAILURE_TOLERANCE: f64 = 0.5;
pub const DEFAULT_LATENCY_TOLERANCE: f64 = 0.5;
pub const DEFAULT_MIN_FLOWS: u64 = 20;
/// Differences in failure ratio below this are noise, whatever the relative tolerance says
/// (a blue ratio of exactly 0 would otherwise make one green failure an abort).
pub const DEFAULT_FAILURE_MARGIN: f64 = 0.01;
/// Handshake p99 differences below this are noise (sub-millisecond handshakes vary by 2× from
/// scheduling alone).
pub const DEFAULT_LATENCY_MARGIN_MS: f64 = 2.0;

/// What green is judged by: the keys of `[service.rollout]` (flattened into it, and into a
/// persisted [`Plan`]) with their documented defaults.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Thresholds {
    /// Green's failure ratio (failed handshakes + resets per handshake attempt) may not
    /// exceed this, whatever blue does.
    #[serde(default = "defaults::max_failure_ratio")]
    pub max_failure_ratio: f64,
    /// Green's failure ratio may not exceed blue's × (1 + this) ...
    #[serde(default = "defaults::failure_tolerance")]
    pub failure_tolerance: f64,
    /// ... unless it is within this of blue's (absolute).
    #[serde(default = "defaults::failure_margin")]
    pub failure_margin: f64,
    /// Green's handshake p99 may not exceed blue's × (1 + this) ...
    #[serde(default = "defaults::latency_tolerance")]
    pub latency_tolerance: f64,
    /// ... unless it is within this many milliseconds of blue's.
    #[serde(default = "defaults::latency_margin_ms")]
    pub latency_margin_ms: f64,
    /// Green handshakes a window needs before it can be judged; fewer means hold, never pass.
    #[serde(default = "defaults::min_flows")]
    pub min_flows: u64,
}

/// The serde defaults of [`Thresholds`] (serde wants functions).
mod defaults {
    pub const fn max_failure_ratio() -> f64 {
        super::DEFAULT_MAX_FAILURE_RATIO
    }
    pub const fn failure_tolerance() -> f64 {
        super::DEFAULT_FAILURE_TOLERANCE
    }
    pub const fn failure_margin() -> f64 {
        super::DEFAULT_FAILURE_MARGIN
    }
    pub const fn latency_tolerance() -> f64 {
        super::DEFAULT_LATENCY_TOLERANCE
    }
    pub const fn latency_margin_ms() -> f64 {
        super::DEFAULT_LATENCY_MARGIN_MS
    }
    pub const fn min_flows() -> u64 {
        super::DEFAULT_MIN_FLOWS
    }
}

impl Default for Thresholds {
    fn default() -> Self {
        Self {
            max_failure_ratio: DEFAULT_MAX_FAILURE_RATIO,
            failure_tolerance: DEFAULT_FAILURE_TOLERANCE,
            failure_margin: DEFAULT_FAILURE_MARGIN,
            latency_tolerance: DEFAULT_LATENCY_TOLERANCE,
            latency_margin_ms: DEFAULT_LATENCY_MARGIN_MS,
            min_flows: DEFAULT_MIN_FLOWS,
        }
    }
}

/// An external check: a PromQL query whose (scalar or single-sample vector) value must stay
/// within `bound`, e.g. the 5xx share of green from the L7 proxy.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Check {
    /// Base URL of the Prometheus server, e.g. `http://127.0.0.1:9090` or `https://prom.example`.
    pub prometheus: String,
    pub query: String,
    pub bound: CheckBound,
}

#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CheckBound {
    /// The value must be at most this.
    Max(f64),
    /// The value must be at least this.
    Min(f64),
}

/// A validated plan. Weights in parts per million (`WEIGHT_SCALE`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Plan {
    /// Strictly increasing, each in (0, `WEIGHT_SCALE`], the last one is the end of the rollout.
    pub steps: Vec<u32>,
    /// How long each step runs (its analysis window) before it may advance.
    #[serde(with = "duration_ms")]
    pub every: Duration,
    #[serde(flatten)]
    pub thresholds: Thresholds,
    /// External checks; all must pass for a step to advance; one failing aborts.
    #[serde(default)]
    pub checks: Vec<Check>,
}

#[derive(Debug, PartialEq, thiserror::Error)]
pub enum PlanError {
    #[error("every: `{value}` is not a duration (e.g. \"60s\", \"500ms\", \"5m\")")]
    BadDuration { value: String },
    #[error("rollout steps are empty: give at least one weight, e.g. --steps 1,5,25,50,100")]
    NoSteps,
    #[error("rollout step {value}% is not a weight in (0, 100]")]
    OutOfRange { value: f64 },
    #[error("rollout step {value}% is finer than 0.0001% (the data plane's resolution)")]
    TooFine { value: f64 },
    #[error("rollout steps must increase: {previous}% then {value}%")]
    NotIncreasing { previous: f64, value: f64 },
    #[error("every: rollout step duration must be at least 100ms (got {millis}ms)")]
    TooShort { millis: u128 },
    #[error("every: rollout step duration must be at most 7 days (got {millis}ms)")]
    TooLong { millis: u128 },
    #[error("checks[{index}].bound: {value} is not a finite number (check `{query}`)")]
    BadBound {
        index: usize,
        query: String,
        value: f64,
    },
    #[error("{field} must be a finite number ≥ 0 (got {value})")]
    BadNumber { field: &'static str, value: f64 },
    #[error("max_failure_ratio must be in [0, 1] (got {value})")]
    BadRatio { value: f64 },
    #[error("min_flows must be at least 1: a step judged on no traffic would pass blindly")]
    NoMinFlows,
    #[error("check `{query}`: prometheus URL must start with http:// or https:// (got `{url}`)")]
    BadCheckUrl { query: String, url: String },
}

/// A rollout step in percent → parts per million: in (0, 100], at most four decimals.
fn step_to_ppm(percent: f64) -> Result<u32, PlanError> {
    match percent_to_ppm(percent) {
        Ok(0) | Err(PercentError::Range | PercentError::NotANumber) => {
            Err(PlanError::OutOfRange { value: percent })
        }
        Err(PercentError::Precision) => Err(PlanError::TooFine { value: percent }),
        Ok(ppm) => Ok(ppm),
    }
}

impl Plan {
    /// Builds and validates a plan from steps in percent.
    pub fn new(
        steps_percent: &[f64],
        every: Duration,
        thresholds: Thresholds,
        checks: Vec<Check>,
    ) -> Result<Self, PlanError> {
        let Thresholds {
            max_failure_ratio,
            failure_tolerance,
            failure_margin,
            latency_tolerance,
            latency_margin_ms,
            min_flows,
        } = thresholds;
        if steps_percent.is_empty() {
            return Err(PlanError::NoSteps);
        }
        let mut steps = Vec::with_capacity(steps_percent.len());
        for (i, &value) in steps_percent.iter().enumerate() {
            let ppm = step_to_ppm(value)?;
            if i > 0 && value <= steps_percent[i - 1] {
                return Err(PlanError::NotIncreasing {
                    previous: steps_percent[i - 1],
                    value,
                });
            }
            steps.push(ppm);
        }
        if every < Duration::from_millis(100) {
            return Err(PlanError::TooShort {
                millis: every.as_millis(),
            });
        }
        if every > MAX_EVERY {
            return Err(PlanError::TooLong {
                millis: every.as_millis(),
            });
        }
        if !(0.0..=1.0).contains(&max_failure_ratio) {
            return Err(PlanError::BadRatio {
                value: max_failure_ratio,
            });
        }
        for (field, value) in [
            ("failure_tolerance", failure_tolerance),
            ("failure_margin", failure_margin),
            ("latency_tolerance", latency_tolerance),
            ("latency_margin_ms", latency_margin_ms),
        ] {
            if !value.is_finite() || value < 0.0 {
                return Err(PlanError::BadNumber { field, value });
            }
        }
        if min_flows == 0 {
            return Err(PlanError::NoMinFlows);
        }
        for (index, check) in checks.iter().enumerate() {
            let (CheckBound::Max(value) | CheckBound::Min(value)) = check.bound;
            if !value.is_finite() {
                // TOML has `inf` and `nan`; neither can be judged (nor saved as JSON).
                return Err(PlanError::BadBound {
                    index,
                    query: check.query.clone(),
                    value,
                });
            }
            if !(check.prometheus.starts_with("http://")
                || check.prometheus.starts_with("https://"))
            {
                return Err(PlanError::BadCheckUrl {
                    query: check.query.clone(),
                    url: check.prometheus.clone(),
                });
            }
        }
        Ok(Self {
            steps,
            every,
            thresholds,
            checks,
        })
    }
}

/// Longest step duration (`every`): a week; longer is surely a typo (and a huge value would
/// overflow the step's deadline).
pub const MAX_EVERY: Duration = Duration::from_secs(7 * 24 * 3600);

/// Plan fields given on the command line (`splitter rollout start --steps ...`); the rest come
/// from the service's `[service.rollout]` (or the defaults).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Overrides {
    pub steps_percent: Option<Vec<f64>>,
    pub every_ms: Option<u64>,
    pub max_failure_ratio: Option<f64>,
    pub failure_tolerance: Option<f64>,
    pub latency_tolerance: Option<f64>,
    pub min_flows: Option<u64>,
}

impl Overrides {
    /// `base` with these fields replaced, validated as a whole.
    pub fn apply(&self, base: &Plan) -> Result<Plan, PlanError> {
        let steps: Vec<f64> = match &self.steps_percent {
            Some(steps) => steps.clone(),
            None => base.steps.iter().map(|&ppm| ppm_to_percent(ppm)).collect(),
        };
        let base_thresholds = base.thresholds;
        Plan::new(
            &steps,
            self.every_ms.map_or(base.every, Duration::from_millis),
            Thresholds {
                max_failure_ratio: self
                    .max_failure_ratio
                    .unwrap_or(base_thresholds.max_failure_ratio),
                failure_tolerance: self
                    .failure_tolerance
                    .unwrap_or(base_thresholds.failure_tolerance),
                latency_tolerance: self
                    .latency_tolerance
                    .unwrap_or(base_thresholds.latency_tolerance),
                min_flows: self.min_flows.unwrap_or(base_thresholds.min_flows),
                ..base_thresholds
            },
            base.checks.clone(),
        )
    }
}

mod duration_ms {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(crate::units::millis(*d))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        Ok(Duration::from_millis(u64::deserialize(d)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(steps: &[f64], every_ms: u64) -> Result<Plan, PlanError> {
        Plan::new(
            steps,
            Duration::from_millis(every_ms),
            Thresholds::default(),
            Vec::new(),
        )
    }

    #[test]
    fn bad_plans_are_rejected_with_the_reason() {
        let cases: [(&[f64], u64, PlanError); 6] = [
            (&[], 1000, PlanError::NoSteps),
            (
                &[5.0, 1.0],
                1000,
                PlanError::NotIncreasing {
                    previous: 5.0,
                    value: 1.0,
                },
            ),
            (
                &[1.0, 1.0],
                1000,
                PlanError::NotIncreasing {
                    previous: 1.0,
                    value: 1.0,
                },
            ),
            (&[50.0, 150.0], 1000, PlanError::OutOfRange { value: 150.0 }),
            (&[0.0, 10.0], 1000, PlanError::OutOfRange { value: 0.0 }),
            (&[1.0, 100.0], 0, PlanError::TooShort { millis: 0 }),
        ];
        for (steps, every, expected) in cases {
            assert_eq!(
                plan(steps, every).unwrap_err(),
                expected,
                "{steps:?} every {every}ms"
            );
        }
        assert_eq!(
            plan(&[0.00001], 1000).unwrap_err(),
            PlanError::TooFine { value: 0.00001 }
        );
    }

    #[test]
    fn steps_become_parts_per_million() {
        let plan = plan(&[0.5, 12.5, 100.0], 1000).unwrap();
        assert_eq!(plan.steps, vec![5_000, 125_000, 1_000_000]);
    }
}
