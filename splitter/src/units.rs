//! The units the operator writes and reads: green weights in percent (the data plane counts
//! parts per million, `WEIGHT_SCALE`) and durations (`"60s"`, `"1.5s"`, `"1m30s"`). Each
//! conversion is written here once and used by the config, the rollout plans and the CLI.

use std::time::Duration;

use splitter_common::WEIGHT_SCALE;

/// Parts per million in one percent.
const PPM_PER_PERCENT: u32 = WEIGHT_SCALE / 100;

/// Why a percent was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PercentError {
    #[error("is not a number (expected a percent like 12.5)")]
    NotANumber,
    #[error("is outside 0..=100")]
    Range,
    #[error("is finer than 0.0001 percent")]
    Precision,
}

/// Percent (up to four decimals) → parts per million of new flows.
pub fn percent_to_ppm(percent: f64) -> Result<u32, PercentError> {
    if !(0.0..=100.0).contains(&percent) {
        return Err(PercentError::Range);
    }
    let scaled = percent * f64::from(PPM_PER_PERCENT);
    let ppm = scaled.round();
    if (scaled - ppm).abs() > 1e-6 {
        return Err(PercentError::Precision);
    }
    #[expect(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        reason = "in 0..=WEIGHT_SCALE, checked above"
    )]
    Ok(ppm as u32)
}

/// Parts per million → percent. Its `Display` is exact and has no trailing zeros
/// (`125000` → `12.5`, `1` → `0.0001`): the division is correctly rounded, and the shortest
/// decimal that reads back as that `f64` is the four-decimal percent.
pub fn ppm_to_percent(ppm: u32) -> f64 {
    f64::from(ppm) / f64::from(PPM_PER_PERCENT)
}

/// Parses a CLI percent argument exactly (no float rounding): `12.5`, `0.0001`, `100`, `30%`.
pub fn parse_percent(text: &str) -> Result<u32, PercentError> {
    let text = text.trim();
    let text = text.strip_suffix('%').unwrap_or(text);
    let (whole, fraction) = text.split_once('.').unwrap_or((text, ""));
    let digits = |part: &str| part.chars().all(|c| c.is_ascii_digit());
    if whole.is_empty() && fraction.is_empty() || !digits(whole) || !digits(fraction) {
        return Err(PercentError::NotANumber);
    }
    if fraction.len() > 4 && fraction[4..].chars().any(|c| c != '0') {
        return Err(PercentError::Precision);
    }
    let whole: u64 = if whole.is_empty() {
        0
    } else {
        whole.parse().map_err(|_| PercentError::Range)?
    };
    let fraction_ppm = fraction
        .chars()
        .take(4)
        .chain(std::iter::repeat('0'))
        .take(4)
        .fold(0u64, |ppm, digit| {
            ppm * 10 + u64::from(digit.to_digit(10).unwrap_or(0))
        });
    let ppm = whole
        .checked_mul(u64::from(PPM_PER_PERCENT))
        .and_then(|ppm| ppm.checked_add(fraction_ppm))
        .ok_or(PercentError::Range)?;
    u32::try_from(ppm)
        .ok()
        .filter(|ppm| *ppm <= WEIGHT_SCALE)
        .ok_or(PercentError::Range)
}

/// A duration as the config and the CLI write it: a number and a unit, or several
/// (`"60s"`, `"500ms"`, `"5m"`, `"1h"`, `"1.5s"`, `"1m30s"`). A bare number has no unit and is
/// refused.
pub fn parse_duration(text: &str) -> Option<Duration> {
    humantime::parse_duration(text.trim()).ok()
}

/// Whole milliseconds, saturating (`u64` milliseconds last 584 million years).
pub fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

/// Whole nanoseconds, saturating (`u64` nanoseconds last 584 years).
pub fn nanos(duration: Duration) -> u64 {
    u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_percent_to_ppm() {
        for (percent, expected) in [
            (0.0, Ok(0)),
            (100.0, Ok(1_000_000)),
            (12.5, Ok(125_000)),
            (0.0001, Ok(1)),
            (33.3333, Ok(333_333)),
            (99.9999, Ok(999_999)),
            (100.0001, Err(PercentError::Range)),
            (-1.0, Err(PercentError::Range)),
            (f64::NAN, Err(PercentError::Range)),
            (f64::INFINITY, Err(PercentError::Range)),
            (0.00001, Err(PercentError::Precision)),
        ] {
            assert_eq!(percent_to_ppm(percent), expected, "{percent}");
        }
    }

    #[test]
    fn cli_percent_parsing_is_exact() {
        for (text, expected) in [
            ("12.5", Ok(125_000)),
            ("12.5%", Ok(125_000)),
            ("0", Ok(0)),
            ("100", Ok(1_000_000)),
            ("100.0000", Ok(1_000_000)),
            ("0.0001", Ok(1)),
            (".5", Ok(5_000)),
            ("7.", Ok(70_000)),
            ("150", Err(PercentError::Range)),
            ("100.0001", Err(PercentError::Range)),
            ("99999999999999999999", Err(PercentError::Range)),
            ("0.00001", Err(PercentError::Precision)),
            ("abc", Err(PercentError::NotANumber)),
            ("-5", Err(PercentError::NotANumber)),
            ("", Err(PercentError::NotANumber)),
            (".", Err(PercentError::NotANumber)),
            ("1e2", Err(PercentError::NotANumber)),
        ] {
            assert_eq!(parse_percent(text), expected, "{text:?}");
        }
    }

    /// Every weight the data plane can hold prints as its exact four-decimal percent, and
    /// reads back to itself.
    #[test]
    fn every_ppm_prints_exactly_and_round_trips() {
        for ppm in 0..=WEIGHT_SCALE {
            let (whole, fraction) = (ppm / PPM_PER_PERCENT, ppm % PPM_PER_PERCENT);
            let exact = if fraction == 0 {
                whole.to_string()
            } else {
                format!("{whole}.{fraction:04}")
                    .trim_end_matches('0')
                    .to_owned()
            };
            let printed = ppm_to_percent(ppm).to_string();
            assert_eq!(printed, exact, "{ppm} ppm");
            assert_eq!(parse_percent(&printed), Ok(ppm), "{printed}");
            assert_eq!(percent_to_ppm(ppm_to_percent(ppm)), Ok(ppm), "{printed}");
        }
    }

    #[test]
    fn durations() {
        for (text, expected) in [
            ("60s", Some(Duration::from_secs(60))),
            ("500ms", Some(Duration::from_millis(500))),
            ("5m", Some(Duration::from_secs(300))),
            ("1h", Some(Duration::from_secs(3600))),
            ("0s", Some(Duration::ZERO)),
            (" 30s ", Some(Duration::from_secs(30))),
            ("1.5s", Some(Duration::from_millis(1500))),
            ("1m30s", Some(Duration::from_secs(90))),
            ("5", None),
            ("s", None),
            ("soon", None),
            ("-1s", None),
            ("99999999999999999999s", None),
        ] {
            assert_eq!(parse_duration(text), expected, "{text:?}");
        }
    }
}
