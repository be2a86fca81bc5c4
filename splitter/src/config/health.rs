//! `[service.health]` (active checks) and `[service.outlier]` (passive ejection from the
//! kernel's handshake signals): the file model, its defaults and its validated form.
//!
//! Both are optional and independent: without `[service.health]` no check is sent; without
//! `[service.outlier]` no backend is ejected. Passive ejection works without active checks.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::units::parse_duration;

/// Shortest and longest check `interval`; `timeout` is at most the interval.
pub const INTERVAL_MIN: Duration = Duration::from_millis(100);
pub const INTERVAL_MAX: Duration = Duration::from_secs(3600);
/// Shortest and longest `slow_start`.
pub const SLOW_START_MIN: Duration = Duration::from_secs(1);
pub const SLOW_START_MAX: Duration = Duration::from_secs(3600);
/// Largest `rise` and `fall`.
pub const COUNT_MAX: u32 = 100;
/// Longest outlier `window` (the daemon keeps this much of its once-a-second samples).
pub const OUTLIER_WINDOW_MAX: Duration = Duration::from_secs(60);

/// `[service.health]`.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct HealthSection {
    /// `tcp` (a connect) or `http` (a GET with an expected status).
    #[serde(default = "default_check")]
    pub check: CheckKind,
    /// The HTTP check's request path.
    #[serde(default = "default_path")]
    pub path: String,
    /// The HTTP check's expected status code.
    #[serde(default = "default_expect")]
    pub expect: u16,
    #[serde(default = "default_interval")]
    pub interval: String,
    #[serde(default = "default_timeout")]
    pub timeout: String,
    /// Consecutive passes that bring a down backend back.
    #[serde(default = "default_rise")]
    pub rise: u32,
    /// Consecutive failures that take an up backend down.
    #[serde(default = "default_fall")]
    pub fall: u32,
    /// What happens to the flows pinned to a backend that goes down (or is ejected).
    #[serde(default)]
    pub on_down: OnDown,
    /// How long a backend coming back into rotation takes to reach its full weight (absent:
    /// at once). See `health::slow_start`.
    #[serde(default)]
    pub slow_start: Option<String>,
}

/// `[service.outlier]` (Envoy's outlier detection vocabulary, on the kernel's L4 signals).
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct OutlierSection {
    /// Failed handshakes (refused + timed out) over all handshakes of the window, in percent,
    /// at or above which a backend is ejected.
    #[serde(default = "default_failure_percent")]
    pub failure_percent: f64,
    /// Fewest handshakes in the window for a judgement.
    #[serde(default = "default_min_handshakes")]
    pub min_handshakes: u64,
    /// The window the ratio is measured over.
    #[serde(default = "default_window")]
    pub window: String,
    /// First ejection; each later one of the same backend doubles it.
    #[serde(default = "default_base_ejection")]
    pub base_ejection: String,
    /// Longest ejection.
    #[serde(default = "default_max_ejection")]
    pub max_ejection: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CheckKind {
    Tcp,
    Http,
}

/// The pinned flows of a backend taken out of rotation by a check or an ejection.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum OnDown {
    /// They stay pinned (the backend may still serve them).
    #[default]
    Keep,
    /// They are unpinned: their next packet is chosen afresh (which breaks a TCP connection
    /// the new backend does not know).
    Cut,
}

/// A validated active check.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct HealthCheck {
    pub kind: CheckKind,
    pub path: String,
    pub expect: u16,
    pub interval: Duration,
    pub timeout: Duration,
    pub rise: u32,
    pub fall: u32,
    pub on_down: OnDown,
    /// `None`: a backend back in rotation takes its full weight at once.
    pub slow_start: Option<Duration>,
}

/// Validated passive ejection settings.
#[derive(Clone, Debug, PartialEq)]
pub struct Outlier {
    /// 0.0..=1.0.
    pub failure_ratio: f64,
    pub min_handshakes: u64,
    pub window: Duration,
    pub base_ejection: Duration,
    pub max_ejection: Duration,
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum HealthError {
    #[error("{table}.{field}: `{value}` is not a duration between {min:?} and {max:?}")]
    Duration {
        table: &'static str,
        field: &'static str,
        value: String,
        min: Duration,
        max: Duration,
    },
    #[error("health.timeout {timeout:?} is longer than health.interval {interval:?}")]
    TimeoutOverInterval {
        timeout: Duration,
        interval: Duration,
    },
    #[error("health.{field}: {value} is outside 1..={COUNT_MAX}")]
    Count { field: &'static str, value: u32 },
    #[error("health.expect: {value} is not an HTTP status (100..=599)")]
    Status { value: u16 },
    #[error("health.path: `{value}` must start with `/` and hold no space or control character")]
    Path { value: String },
    #[error("health.path/expect are for check = \"http\"; check = \"tcp\" only connects")]
    HttpFieldsOnTcp,
    #[error("outlier.failure_percent: {value} is outside (0, 100]")]
    FailurePercent { value: f64 },
    #[error("outlier.min_handshakes: 0 would eject on no evidence (at least 1)")]
    MinHandshakes,
    #[error("outlier.max_ejection {max:?} is shorter than outlier.base_ejection {base:?}")]
    MaxUnderBase { base: Duration, max: Duration },
}

fn duration(
    table: &'static str,
    field: &'static str,
    value: &str,
    min: Duration,
    max: Duration,
) -> Result<Duration, HealthError> {
    parse_duration(value)
        .filter(|parsed| (min..=max).contains(parsed))
        .ok_or_else(|| HealthError::Duration {
            table,
            field,
            value: value.to_owned(),
            min,
            max,
        })
}

impl HealthSection {
    pub fn validate(&self) -> Result<HealthCheck, HealthError> {
        let interval = duration(
            "health",
            "interval",
            &self.interval,
            INTERVAL_MIN,
            INTERVAL_MAX,
        )?;
        let timeout = duration(
            "health",
            "timeout",
            &self.timeout,
            Duration::from_millis(1),
            INTERVAL_MAX,
        )?;
        if timeout > interval {
            return Err(HealthError::TimeoutOverInterval { timeout, interval });
        }
        for (field, value) in [("rise", self.rise), ("fall", self.fall)] {
            if !(1..=COUNT_MAX).contains(&value) {
                return Err(HealthError::Count { field, value });
            }
        }
        if self.check == CheckKind::Tcp
            && (self.path != default_path() || self.expect != default_expect())
        {
            return Err(HealthError::HttpFieldsOnTcp);
        }
        if !(100..=599).contains(&self.expect) {
            return Err(HealthError::Status { value: self.expect });
        }
        if !self.path.starts_with('/')
            || self
                .path
                .chars()
                .any(|c| c.is_whitespace() || c.is_control())
        {
            return Err(HealthError::Path {
                value: self.path.clone(),
            });
        }
        let slow_start = self
            .slow_start
            .as_deref()
            .map(|value| {
                duration(
                    "health",
                    "slow_start",
                    value,
                    SLOW_START_MIN,
                    SLOW_START_MAX,
                )
            })
            .transpose()?;
        Ok(HealthCheck {
            kind: self.check,
            path: self.path.clone(),
            expect: self.expect,
            interval,
            timeout,
            rise: self.rise,
            fall: self.fall,
            on_down: self.on_down,
            slow_start,
        })
    }
}

impl OutlierSection {
    pub fn validate(&self) -> Result<Outlier, HealthError> {
        if !(self.failure_percent > 0.0 && self.failure_percent <= 100.0) {
            return Err(HealthError::FailurePercent {
                value: self.failure_percent,
            });
        }
        if self.min_handshakes == 0 {
            return Err(HealthError::MinHandshakes);
        }
        let window = duration(
            "outlier",
            "window",
            &self.window,
            Duration::from_secs(2),
            OUTLIER_WINDOW_MAX,
        )?;
        let day = Duration::from_secs(24 * 3600);
        let base = duration(
            "outlier",
            "base_ejection",
            &self.base_ejection,
            Duration::from_secs(1),
            day,
        )?;
        let max = duration(
            "outlier",
            "max_ejection",
            &self.max_ejection,
            Duration::from_secs(1),
            day,
        )?;
        if max < base {
            return Err(HealthError::MaxUnderBase { base, max });
        }
        Ok(Outlier {
            failure_ratio: self.failure_percent / 100.0,
            min_handshakes: self.min_handshakes,
            window,
            base_ejection: base,
            max_ejection: max,
        })
    }
}

fn default_check() -> CheckKind {
    CheckKind::Tcp
}
fn default_path() -> String {
    "/".to_owned()
}
fn default_expect() -> u16 {
    200
}
fn default_interval() -> String {
    "2s".to_owned()
}
fn default_timeout() -> String {
    "1s".to_owned()
}
fn default_rise() -> u32 {
    2
}
fn default_fall() -> u32 {
    3
}
fn default_failure_percent() -> f64 {
    50.0
}
fn default_min_handshakes() -> u64 {
    20
}
fn default_window() -> String {
    "10s".to_owned()
}
fn default_base_ejection() -> String {
    "30s".to_owned()
}
fn default_max_ejection() -> String {
    "5m".to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn health(text: &str) -> Result<HealthCheck, HealthError> {
        toml::from_str::<HealthSection>(text).unwrap().validate()
    }

    #[test]
    fn defaults_are_haproxy_like() {
        let check = health("").unwrap();
        assert_eq!(check.kind, CheckKind::Tcp);
        assert_eq!(
            (check.interval, check.timeout, check.rise, check.fall),
            (Duration::from_secs(2), Duration::from_secs(1), 2, 3)
        );
        assert_eq!(check.on_down, OnDown::Keep);
        assert_eq!(check.slow_start, None, "slow start is off by default");
    }

    #[test]
    fn slow_start_is_bounded_and_named() {
        assert_eq!(
            health("slow_start = \"30s\"").unwrap().slow_start,
            Some(Duration::from_secs(30))
        );
        for value in ["500ms", "2h", "soon"] {
            let error = health(&format!("slow_start = \"{value}\"")).unwrap_err();
            assert_eq!(
                error.to_string(),
                format!("health.slow_start: `{value}` is not a duration between 1s and 3600s")
            );
        }
    }

    #[test]
    fn bad_values_are_named() {
        assert_eq!(
            health("interval = \"1s\"\ntimeout = \"2s\""),
            Err(HealthError::TimeoutOverInterval {
                timeout: Duration::from_secs(2),
                interval: Duration::from_secs(1)
            })
        );
        assert_eq!(
            health("fall = 0"),
            Err(HealthError::Count {
                field: "fall",
                value: 0
            })
        );
        assert_eq!(health("path = \"/x\""), Err(HealthError::HttpFieldsOnTcp));
        assert!(matches!(
            health("check = \"http\"\npath = \"x y\""),
            Err(HealthError::Path { .. })
        ));
        assert!(matches!(
            health("check = \"http\"\nexpect = 42"),
            Err(HealthError::Status { value: 42 })
        ));
        let outlier = |text: &str| toml::from_str::<OutlierSection>(text).unwrap().validate();
        assert!(outlier("").is_ok());
        assert_eq!(
            outlier("failure_percent = 0.0"),
            Err(HealthError::FailurePercent { value: 0.0 })
        );
        assert_eq!(
            outlier("min_handshakes = 0"),
            Err(HealthError::MinHandshakes)
        );
    }
}
