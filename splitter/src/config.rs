//! The daemon's configuration file (TOML): plain serde data with `deny_unknown_fields` and
//! documented defaults, checked by one [`Config::validate`] step that turns it into the typed
//! [`Validated`] form the daemon works with. Every field is described in the README.
//!
//! Nothing here touches the kernel: a file that fails here changes nothing.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::SocketAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use serde::{Deserialize, Serialize};
use splitter_common::{
    Cohort, WEIGHT_SCALE,
    maps::{DEFAULT_FLOW_TABLE_SIZE, MAX_BACKENDS, MAX_SERVICES, POOL_SLOTS},
};

use crate::{
    dataplane::{XdpMode, services::Protocol},
    rollout::{Plan, PlanError, plan::Thresholds},
};

/// Where `splitter daemon` and `check-config` look when `--config` is not given.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/splitter/splitter.toml";
/// `[control] socket` default.
pub const DEFAULT_SOCKET: &str = "/run/splitter/splitter.sock";
/// `[control] metrics` default.
pub const DEFAULT_METRICS: &str = "127.0.0.1:9435";
/// `[control] state_dir` default.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/splitter";
/// `[control] bpffs` default.
pub const DEFAULT_BPFFS: &str = "/sys/fs/bpf/splitter";
/// `[dataplane] miss_hold` default.
pub const DEFAULT_MISS_HOLD: Duration = Duration::from_secs(60);

/// Smallest and largest `flow_table_size` accepted (entries of `FLOWS` and `REVERSE_FLOWS`).
pub const FLOW_TABLE_MIN: u32 = 1024;
pub const FLOW_TABLE_MAX: u32 = 1 << 24;
/// Longest `miss_hold` accepted.
pub const MISS_HOLD_MAX: Duration = Duration::from_secs(24 * 3600);
/// Each service takes two `SERVICES` entries (its port and the port-0 fragment key).
pub const SERVICES_MAX: usize = (MAX_SERVICES / 2) as usize;
/// Longest service name (it is a metric label and a CLI argument).
pub const SERVICE_NAME_MAX: usize = 64;
/// Longest Linux interface name (IFNAMSIZ - 1).
const IFNAME_MAX: usize = 15;

/// The whole file.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub dataplane: DataplaneSection,
    #[serde(default)]
    pub control: ControlSection,
    #[serde(default, rename = "service")]
    pub services: Vec<ServiceSection>,
}

/// `[dataplane]`: where the programs run and their load-time settings.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DataplaneSection {
    /// Interfaces where client traffic arrives (XDP ingress + TC egress on each).
    pub interfaces: Vec<String>,
    #[serde(default = "default_xdp_mode")]
    pub xdp_mode: XdpMode,
    /// Capacity of the flow tables (pinned flows). Load time only.
    #[serde(default = "default_flow_table_size")]
    pub flow_table_size: u32,
    /// Seed of the split hash; hosts behind the same ECMP group must share it. Load time only.
    #[serde(default = "default_hash_seed")]
    pub hash_seed: u32,
    /// How long after a weight change a TCP packet of an unknown flow is steered by the
    /// previous weight (it most likely began before the change). `"60s"`, `"500ms"`, `"5m"`.
    #[serde(default = "default_miss_hold")]
    pub miss_hold: String,
    /// A client SYN retransmitted this long after the first one without a SYN-ACK counts as a
    /// handshake timeout (rollout signals). Load time only.
    #[serde(default = "default_handshake_timeout")]
    pub handshake_timeout: String,
    /// Backend-facing interfaces the XDP fast path may redirect rewritten packets to (FIB
    /// lookup + XDP_REDIRECT); empty: rewritten packets take the kernel's routing.
    #[serde(default)]
    pub redirect_interfaces: Vec<String>,
}

/// `[control]`: how the daemon is reached and where it keeps things.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ControlSection {
    #[serde(default = "default_socket")]
    pub socket: PathBuf,
    #[serde(default = "default_metrics")]
    pub metrics: String,
    #[serde(default = "default_state_dir")]
    pub state_dir: PathBuf,
    #[serde(default = "default_bpffs")]
    pub bpffs: PathBuf,
}

impl Default for ControlSection {
    fn default() -> Self {
        Self {
            socket: default_socket(),
            metrics: default_metrics(),
            state_dir: default_state_dir(),
            bpffs: default_bpffs(),
        }
    }
}

/// Which part of a packet decides its color.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CohortSetting {
    /// Each connection (5-tuple) is split independently.
    Flow,
    /// One client address always lands on the same color.
    Client,
}

impl CohortSetting {
    pub const fn cohort(self) -> Cohort {
        match self {
            CohortSetting::Flow => Cohort::Flow,
            CohortSetting::Client => Cohort::Client,
        }
    }

    pub const fn name(self) -> &'static str {
        match self {
            CohortSetting::Flow => "flow",
            CohortSetting::Client => "client",
        }
    }
}

/// One `[[service]]`.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceSection {
    pub name: String,
    /// `"203.0.113.10:80"` or `"[2001:db8::10]:80"`.
    pub address: String,
    #[serde(default = "default_protocol")]
    pub protocol: Protocol,
    /// Percent of new flows sent to green, up to four decimals.
    pub green_weight: f64,
    #[serde(default = "default_cohort")]
    pub cohort: CohortSetting,
    pub blue: Vec<String>,
    pub green: Vec<String>,
    /// The service's rollout plan (`splitter rollout start` flags override each field).
    #[serde(default)]
    pub rollout: Option<RolloutSection>,
}

/// `[service.rollout]`: steps, step duration and the thresholds green is judged by.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RolloutSection {
    /// Green weights in percent, strictly increasing, e.g. `[1, 5, 25, 50, 100]`.
    #[serde(default = "default_rollout_steps")]
    pub steps: Vec<f64>,
    /// How long each step runs before it may advance: `"60s"`, `"500ms"`, `"5m"`.
    #[serde(default = "default_rollout_every")]
    pub every: String,
    /// Green's failure ratio may not exceed this (absolute).
    #[serde(default = "default_max_failure_ratio")]
    pub max_failure_ratio: f64,
    /// Green's failure ratio may not exceed blue's × (1 + this).
    #[serde(default = "default_failure_tolerance")]
    pub failure_tolerance: f64,
    /// ... unless green's ratio is within this of blue's (absolute).
    #[serde(default = "default_failure_margin")]
    pub failure_margin: f64,
    /// Green's handshake p99 may not exceed blue's × (1 + this) ...
    #[serde(default = "default_latency_tolerance")]
    pub latency_tolerance: f64,
    /// ... unless it is within this many milliseconds of blue's.
    #[serde(default = "default_latency_margin_ms")]
    pub latency_margin_ms: f64,
    /// Green handshakes needed before a step can be judged (fewer: hold).
    #[serde(default = "default_min_flows")]
    pub min_flows: u64,
    /// External checks: PromQL queries with a bound.
    #[serde(default)]
    pub checks: Vec<crate::rollout::Check>,
}

impl Default for RolloutSection {
    fn default() -> Self {
        Self {
            steps: default_rollout_steps(),
            every: default_rollout_every(),
            max_failure_ratio: default_max_failure_ratio(),
            failure_tolerance: default_failure_tolerance(),
            failure_margin: default_failure_margin(),
            latency_tolerance: default_latency_tolerance(),
            latency_margin_ms: default_latency_margin_ms(),
            min_flows: default_min_flows(),
            checks: Vec::new(),
        }
    }
}

impl RolloutSection {
    /// The validated plan.
    pub fn plan(&self) -> Result<Plan, PlanError> {
        let every = parse_duration(&self.every).ok_or(PlanError::BadDuration {
            value: self.every.clone(),
        })?;
        Plan::new(
            &self.steps,
            every,
            Thresholds {
                max_failure_ratio: self.max_failure_ratio,
                failure_tolerance: self.failure_tolerance,
                failure_margin: self.failure_margin,
                latency_tolerance: self.latency_tolerance,
                latency_margin_ms: self.latency_margin_ms,
                min_flows: self.min_flows,
            },
            self.checks.clone(),
        )
    }
}

fn default_rollout_steps() -> Vec<f64> {
    crate::rollout::plan::DEFAULT_STEPS_PERCENT.to_vec()
}
fn default_rollout_every() -> String {
    format!("{}s", crate::rollout::plan::DEFAULT_EVERY.as_secs())
}
fn default_max_failure_ratio() -> f64 {
    crate::rollout::plan::DEFAULT_MAX_FAILURE_RATIO
}
fn default_failure_tolerance() -> f64 {
    crate::rollout::plan::DEFAULT_FAILURE_TOLERANCE
}
fn default_latency_tolerance() -> f64 {
    crate::rollout::plan::DEFAULT_LATENCY_TOLERANCE
}
fn default_failure_margin() -> f64 {
    crate::rollout::plan::DEFAULT_FAILURE_MARGIN
}
fn default_latency_margin_ms() -> f64 {
    crate::rollout::plan::DEFAULT_LATENCY_MARGIN_MS
}
fn default_min_flows() -> u64 {
    crate::rollout::plan::DEFAULT_MIN_FLOWS
}

fn default_xdp_mode() -> XdpMode {
    XdpMode::Auto
}
fn default_flow_table_size() -> u32 {
    DEFAULT_FLOW_TABLE_SIZE
}
fn default_hash_seed() -> u32 {
    splitter_common::hash::DEFAULT_HASH_SEED
}
fn default_miss_hold() -> String {
    format!("{}s", DEFAULT_MISS_HOLD.as_secs())
}
fn default_handshake_timeout() -> String {
    format!(
        "{}ms",
        splitter_common::signals::DEFAULT_HANDSHAKE_TIMEOUT_NS / 1_000_000
    )
}
fn default_socket() -> PathBuf {
    PathBuf::from(DEFAULT_SOCKET)
}
fn default_metrics() -> String {
    DEFAULT_METRICS.to_owned()
}
fn default_state_dir() -> PathBuf {
    PathBuf::from(DEFAULT_STATE_DIR)
}
fn default_bpffs() -> PathBuf {
    PathBuf::from(DEFAULT_BPFFS)
}
fn default_protocol() -> Protocol {
    Protocol::Tcp
}
fn default_cohort() -> CohortSetting {
    CohortSetting::Flow
}

/// The two colors, as config keys and labels.
#[derive(
    Clone,
    Copy,
    Debug,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Deserialize,
    Serialize,
    clap::ValueEnum,
)]
#[serde(rename_all = "lowercase")]
pub enum ColorName {
    Blue,
    Green,
}

impl ColorName {
    pub const BOTH: [ColorName; 2] = [ColorName::Blue, ColorName::Green];

    pub const fn name(self) -> &'static str {
        match self {
            ColorName::Blue => "blue",
            ColorName::Green => "green",
        }
    }

    pub const fn color(self) -> splitter_common::Color {
        match self {
            ColorName::Blue => splitter_common::Color::Blue,
            ColorName::Green => splitter_common::Color::Green,
        }
    }
}

impl std::fmt::Display for ColorName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// A config that passed [`Config::validate`]: typed addresses, weights in parts per million.
#[derive(Clone, Debug, PartialEq)]
pub struct Validated {
    pub interfaces: Vec<String>,
    pub xdp_mode: XdpMode,
    pub flow_table_size: u32,
    pub hash_seed: u32,
    pub miss_hold: Duration,
    pub handshake_timeout: Duration,
    pub redirect_interfaces: Vec<String>,
    pub socket: PathBuf,
    pub metrics: SocketAddr,
    pub state_dir: PathBuf,
    pub bpffs: PathBuf,
    /// In file order.
    pub services: Vec<Service>,
}

/// One validated service.
#[derive(Clone, Debug, PartialEq)]
pub struct Service {
    pub name: String,
    pub address: SocketAddr,
    pub protocol: Protocol,
    /// Share of new flows to green in parts per million (`WEIGHT_SCALE`).
    pub green_weight: u32,
    pub cohort: CohortSetting,
    pub blue: Vec<SocketAddr>,
    pub green: Vec<SocketAddr>,
    /// The default rollout plan (`[service.rollout]`, or the documented defaults).
    pub rollout: Plan,
}

impl Service {
    pub fn pool(&self, color: ColorName) -> &[SocketAddr] {
        match color {
            ColorName::Blue => &self.blue,
            ColorName::Green => &self.green,
        }
    }
}

impl Validated {
    pub fn service(&self, name: &str) -> Option<&Service> {
        self.services.iter().find(|service| service.name == name)
    }
}

/// Why a config file was refused. Each message names the file position or the field.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: line {line}, column {column}: {message}")]
    Syntax {
        path: PathBuf,
        line: usize,
        column: usize,
        message: String,
    },
    #[error("{path}: {problem}")]
    Invalid {
        path: PathBuf,
        #[source]
        problem: Box<ConfigError>,
    },
    #[error("dataplane.interfaces: at least one interface is needed")]
    NoInterface,
    #[error("dataplane.{field}: `{name}` is not a valid interface name")]
    InterfaceName { field: &'static str, name: String },
    #[error("dataplane.{field}: `{name}` is listed twice")]
    DuplicateInterface { field: &'static str, name: String },
    #[error("dataplane.{field}: no interface `{name}` on this host")]
    UnknownInterface { field: &'static str, name: String },
    #[error(
        "dataplane.flow_table_size: {value} is outside {FLOW_TABLE_MIN}..={FLOW_TABLE_MAX} entries"
    )]
    FlowTableSize { value: u32 },
    #[error(
        "dataplane.miss_hold: `{value}` is not a duration like \"60s\", \"500ms\" or \"5m\" (at most 24h)"
    )]
    MissHold { value: String },
    #[error(
        "dataplane.handshake_timeout: `{value}` is not a duration between 1ms and 60s like \"500ms\""
    )]
    HandshakeTimeout { value: String },
    #[error("control.{field}: `{value}` must be an absolute path")]
    RelativePath { field: &'static str, value: PathBuf },
    #[error("control.metrics: `{value}` is not an IP:port address")]
    MetricsAddress { value: String },
    #[error(
        "service[{index}].name: `{name}` must be 1-{SERVICE_NAME_MAX} letters, digits, `-`, `_` or `.`"
    )]
    ServiceName { index: usize, name: String },
    #[error("service[{index}].name: `{name}` is already used by service[{first}]")]
    DuplicateName {
        index: usize,
        first: usize,
        name: String,
    },
    #[error("service `{service}`: {field} `{value}` is not an IP:port address")]
    Address {
        service: String,
        field: String,
        value: String,
    },
    #[error("service `{service}`: {field} `{value}` has port 0")]
    PortZero {
        service: String,
        field: String,
        value: String,
    },
    #[error(
        "service `{service}`: address {address}/{protocol} is already used by service `{first}`"
    )]
    DuplicateAddress {
        service: String,
        first: String,
        address: SocketAddr,
        protocol: &'static str,
    },
    #[error("service `{service}`: green_weight {value} is outside 0..=100 (percent of new flows)")]
    WeightRange { service: String, value: f64 },
    #[error("service `{service}`: green_weight {value} is finer than 0.0001 percent")]
    WeightPrecision { service: String, value: f64 },
    #[error("service `{service}`: rollout: {source}")]
    Rollout {
        service: String,
        source: Box<PlanError>,
    },
    #[error("service `{service}`: {color} has no backend (each color needs at least one)")]
    EmptyPool { service: String, color: ColorName },
    #[error("service `{service}`: {field} {backend} is the service address itself")]
    BackendIsService {
        service: String,
        field: String,
        backend: SocketAddr,
    },
    #[error(
        "service `{service}`: {field} {backend} is not the same IP family as the service address"
    )]
    FamilyMismatch {
        service: String,
        field: String,
        backend: SocketAddr,
    },
    #[error("service `{service}`: {field} {backend} is listed twice in the service")]
    DuplicateBackend {
        service: String,
        field: String,
        backend: SocketAddr,
    },
    #[error(
        "service `{service}`: {field} {backend}/{protocol} is also a backend of service `{other}` (replies could not be told apart)"
    )]
    SharedBackend {
        service: String,
        field: String,
        other: String,
        backend: SocketAddr,
        protocol: &'static str,
    },
    #[error("service `{service}`: {field} {backend} is the address of service `{other}`")]
    BackendIsOtherService {
        service: String,
        field: String,
        other: String,
        backend: SocketAddr,
    },
    #[error("service: {count} services, at most {SERVICES_MAX} are supported")]
    TooManyServices { count: usize },
    #[error("service: {count} backends in all, at most {MAX_BACKENDS} are supported")]
    TooManyBackends { count: usize },
    #[error("service `{service}`: {count} backends, at most {} fit in one service", POOL_SLOTS / 2)]
    PoolTooLarge { service: String, count: usize },
}

impl Config {
    /// Reads and parses a file (syntax, types, unknown keys); see [`Config::validate`] for the
    /// rest.
    pub fn read(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(path, &text)
    }

    /// Parses TOML text; `path` only names the file in errors.
    pub fn parse(path: &Path, text: &str) -> Result<Self, ConfigError> {
        toml::from_str(text).map_err(|error| {
            let (line, column) = error
                .span()
                .map_or((0, 0), |span| line_column(text, span.start));
            ConfigError::Syntax {
                path: path.to_owned(),
                line,
                column,
                message: error.message().trim().replace('\n', " "),
            }
        })
    }

    /// Reads, parses and validates a file against this host's interfaces. Validation errors
    /// name the file too.
    pub fn load(path: &Path) -> Result<Validated, ConfigError> {
        Self::read(path)?
            .validate()
            .map_err(|problem| ConfigError::Invalid {
                path: path.to_owned(),
                problem: Box::new(problem),
            })
    }

    /// Checks everything that can be checked without touching the kernel, interfaces included.
    pub fn validate(&self) -> Result<Validated, ConfigError> {
        self.validate_with(&|name| crate::dataplane::interface_index(name).is_some())
    }

    /// [`Config::validate`] with the interface lookup supplied (tests).
    pub fn validate_with(
        &self,
        interface_exists: &dyn Fn(&str) -> bool,
    ) -> Result<Validated, ConfigError> {
        let dataplane = &self.dataplane;
        if dataplane.interfaces.is_empty() {
            return Err(ConfigError::NoInterface);
        }
        validate_interfaces("interfaces", &dataplane.interfaces, interface_exists)?;
        validate_interfaces(
            "redirect_interfaces",
            &dataplane.redirect_interfaces,
            interface_exists,
        )?;
        if !(FLOW_TABLE_MIN..=FLOW_TABLE_MAX).contains(&dataplane.flow_table_size) {
            return Err(ConfigError::FlowTableSize {
                value: dataplane.flow_table_size,
            });
        }
        let miss_hold = parse_duration(&dataplane.miss_hold)
            .filter(|hold| *hold <= MISS_HOLD_MAX)
            .ok_or_else(|| ConfigError::MissHold {
                value: dataplane.miss_hold.clone(),
            })?;
        let handshake_timeout = parse_duration(&dataplane.handshake_timeout)
            .filter(|timeout| {
                (Duration::from_millis(1)..=Duration::from_secs(60)).contains(timeout)
            })
            .ok_or_else(|| ConfigError::HandshakeTimeout {
                value: dataplane.handshake_timeout.clone(),
            })?;
        let control = &self.control;
        for (field, path) in [
            ("socket", &control.socket),
            ("state_dir", &control.state_dir),
            ("bpffs", &control.bpffs),
        ] {
            if !path.is_absolute() {
                return Err(ConfigError::RelativePath {
                    field,
                    value: path.clone(),
                });
            }
        }
        let metrics = control
            .metrics
            .parse()
            .map_err(|_| ConfigError::MetricsAddress {
                value: control.metrics.clone(),
            })?;
        let services = validate_services(&self.services)?;
        Ok(Validated {
            interfaces: dataplane.interfaces.clone(),
            xdp_mode: dataplane.xdp_mode,
            flow_table_size: dataplane.flow_table_size,
            hash_seed: dataplane.hash_seed,
            miss_hold,
            handshake_timeout,
            redirect_interfaces: dataplane.redirect_interfaces.clone(),
            socket: control.socket.clone(),
            metrics,
            state_dir: control.state_dir.clone(),
            bpffs: control.bpffs.clone(),
            services,
        })
    }
}

fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before
        .rfind('\n')
        .map_or(before.len(), |nl| before.len() - nl - 1)
        + 1;
    (line, column)
}

fn validate_interfaces(
    field: &'static str,
    interfaces: &[String],
    interface_exists: &dyn Fn(&str) -> bool,
) -> Result<(), ConfigError> {
    let mut seen = BTreeSet::new();
    for name in interfaces {
        let valid = !name.is_empty()
            && name.len() <= IFNAME_MAX
            && name != "."
            && name != ".."
            && !name.contains(['/', ':']) // ':' would be read as an alias
            && !name.chars().any(char::is_whitespace);
        if !valid {
            return Err(ConfigError::InterfaceName {
                field,
                name: name.clone(),
            });
        }
        if !seen.insert(name) {
            return Err(ConfigError::DuplicateInterface {
                field,
                name: name.clone(),
            });
        }
        if !interface_exists(name) {
            return Err(ConfigError::UnknownInterface {
                field,
                name: name.clone(),
            });
        }
    }
    Ok(())
}

/// `"60s"`, `"500ms"`, `"5m"`, `"1h"`, `"0s"`: a whole number and a unit.
pub fn parse_duration(text: &str) -> Option<Duration> {
    let text = text.trim();
    let digits = text.find(|c: char| !c.is_ascii_digit())?;
    let (number, unit) = text.split_at(digits);
    let number: u64 = number.parse().ok()?;
    let millis = match unit {
        "ms" => number,
        "s" => number.checked_mul(1_000)?,
        "m" => number.checked_mul(60_000)?,
        "h" => number.checked_mul(3_600_000)?,
        _ => return None,
    };
    Some(Duration::from_millis(millis))
}

/// Percent (up to four decimals) → parts per million of new flows.
pub fn percent_to_ppm(percent: f64) -> Result<u32, PercentError> {
    if !(0.0..=100.0).contains(&percent) {
        return Err(PercentError::Range);
    }
    let scaled = percent * f64::from(WEIGHT_SCALE / 100);
    let ppm = scaled.round();
    if (scaled - ppm).abs() > 1e-6 {
        return Err(PercentError::Precision);
    }
    Ok(ppm as u32)
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
    let mut fraction_ppm = 0u64;
    for (position, digit) in fraction.chars().take(4).enumerate() {
        fraction_ppm += u64::from(digit.to_digit(10).unwrap_or(0)) * 10u64.pow(3 - position as u32);
    }
    let ppm = whole
        .checked_mul(u64::from(WEIGHT_SCALE / 100))
        .and_then(|ppm| ppm.checked_add(fraction_ppm))
        .ok_or(PercentError::Range)?;
    if ppm > u64::from(WEIGHT_SCALE) {
        return Err(PercentError::Range);
    }
    Ok(ppm as u32)
}

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

/// Parts per million → percent text without trailing zeros: `125000` → `"12.5"`.
pub fn ppm_to_percent(ppm: u32) -> String {
    let per_percent = WEIGHT_SCALE / 100;
    let whole = ppm / per_percent;
    let fraction = ppm % per_percent;
    if fraction == 0 {
        return whole.to_string();
    }
    let text = format!("{whole}.{fraction:04}");
    text.trim_end_matches('0').to_owned()
}

fn is_valid_service_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= SERVICE_NAME_MAX
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

fn validate_services(sections: &[ServiceSection]) -> Result<Vec<Service>, ConfigError> {
    if sections.len() > SERVICES_MAX {
        return Err(ConfigError::TooManyServices {
            count: sections.len(),
        });
    }
    let mut names: BTreeMap<&str, usize> = BTreeMap::new();
    for (index, section) in sections.iter().enumerate() {
        if !is_valid_service_name(&section.name) {
            return Err(ConfigError::ServiceName {
                index,
                name: section.name.clone(),
            });
        }
        if let Some(&first) = names.get(section.name.as_str()) {
            return Err(ConfigError::DuplicateName {
                index,
                first,
                name: section.name.clone(),
            });
        }
        names.insert(&section.name, index);
    }
    let services = sections
        .iter()
        .map(validate_service)
        .collect::<Result<Vec<_>, _>>()?;
    // Across services: addresses unique, backends not shared, no backend is another VIP.
    let mut addresses: BTreeMap<(SocketAddr, Protocol), &str> = BTreeMap::new();
    for service in &services {
        if let Some(first) = addresses.insert((service.address, service.protocol), &service.name) {
            return Err(ConfigError::DuplicateAddress {
                service: service.name.clone(),
                first: first.to_owned(),
                address: service.address,
                protocol: service.protocol.name(),
            });
        }
    }
    let mut backends: BTreeMap<(SocketAddr, Protocol), &str> = BTreeMap::new();
    let mut total = 0;
    for service in &services {
        for color in ColorName::BOTH {
            for (index, backend) in service.pool(color).iter().enumerate() {
                let field = format!("{color}[{index}]");
                total += 1;
                if let Some(other) = addresses.get(&(*backend, service.protocol)) {
                    return Err(ConfigError::BackendIsOtherService {
                        service: service.name.clone(),
                        field,
                        other: (*other).to_owned(),
                        backend: *backend,
                    });
                }
                if let Some(other) = backends.insert((*backend, service.protocol), &service.name) {
                    return Err(ConfigError::SharedBackend {
                        service: service.name.clone(),
                        field,
                        other: other.to_owned(),
                        backend: *backend,
                        protocol: service.protocol.name(),
                    });
                }
            }
        }
    }
    if total > MAX_BACKENDS as usize {
        return Err(ConfigError::TooManyBackends { count: total });
    }
    Ok(services)
}

fn parse_address(service: &str, field: &str, value: &str) -> Result<SocketAddr, ConfigError> {
    let address: SocketAddr = value.parse().map_err(|_| ConfigError::Address {
        service: service.to_owned(),
        field: field.to_owned(),
        value: value.to_owned(),
    })?;
    if address.port() == 0 {
        return Err(ConfigError::PortZero {
            service: service.to_owned(),
            field: field.to_owned(),
            value: value.to_owned(),
        });
    }
    Ok(address)
}

fn validate_service(section: &ServiceSection) -> Result<Service, ConfigError> {
    let name = &section.name;
    let address = parse_address(name, "address", &section.address)?;
    let green_weight = percent_to_ppm(section.green_weight).map_err(|error| match error {
        PercentError::Precision => ConfigError::WeightPrecision {
            service: name.clone(),
            value: section.green_weight,
        },
        PercentError::Range | PercentError::NotANumber => ConfigError::WeightRange {
            service: name.clone(),
            value: section.green_weight,
        },
    })?;
    let mut pools = [Vec::new(), Vec::new()];
    let mut seen = BTreeSet::new();
    for (slot, color) in ColorName::BOTH.into_iter().enumerate() {
        let entries = match color {
            ColorName::Blue => &section.blue,
            ColorName::Green => &section.green,
        };
        if entries.is_empty() {
            return Err(ConfigError::EmptyPool {
                service: name.clone(),
                color,
            });
        }
        for (index, entry) in entries.iter().enumerate() {
            let field = format!("{color}[{index}]");
            let backend = parse_address(name, &field, entry)?;
            if backend == address {
                return Err(ConfigError::BackendIsService {
                    service: name.clone(),
                    field,
                    backend,
                });
            }
            if backend.is_ipv4() != address.is_ipv4() {
                return Err(ConfigError::FamilyMismatch {
                    service: name.clone(),
                    field,
                    backend,
                });
            }
            if !seen.insert(backend) {
                return Err(ConfigError::DuplicateBackend {
                    service: name.clone(),
                    field,
                    backend,
                });
            }
            pools[slot].push(backend);
        }
    }
    let count = pools[0].len() + pools[1].len();
    if count > (POOL_SLOTS / 2) as usize {
        return Err(ConfigError::PoolTooLarge {
            service: name.clone(),
            count,
        });
    }
    let [blue, green] = pools;
    let rollout = section
        .rollout
        .clone()
        .unwrap_or_default()
        .plan()
        .map_err(|source| ConfigError::Rollout {
            service: name.clone(),
            source: Box::new(source),
        })?;
    Ok(Service {
        name: name.clone(),
        address,
        protocol: section.protocol,
        green_weight,
        cohort: section.cohort,
        blue,
        green,
        rollout,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
[dataplane]
interfaces = ["eth0"]

[[service]]
name = "web"
address = "203.0.113.10:80"
green_weight = 10
blue = ["10.1.0.10:8080", "10.1.0.11:8080"]
green = ["10.2.0.10:8080"]
"#;

    fn check(text: &str) -> Result<Validated, ConfigError> {
        Config::parse(Path::new("test.toml"), text)?
            .validate_with(&|name| matches!(name, "eth0" | "eth1"))
    }

    /// `GOOD` with `from` replaced by `to` (each case must change something).
    fn edit(from: &str, to: &str) -> String {
        assert!(GOOD.contains(from), "`{from}` is not in the good config");
        GOOD.replacen(from, to, 1)
    }

    fn with_service(extra: &str) -> String {
        format!("{GOOD}\n[[service]]\n{extra}")
    }

    #[test]
    fn good_config_and_defaults() {
        let config = check(GOOD).expect("valid");
        assert_eq!(config.interfaces, ["eth0"]);
        assert_eq!(config.xdp_mode, XdpMode::Auto);
        assert_eq!(config.flow_table_size, DEFAULT_FLOW_TABLE_SIZE);
        assert_eq!(config.hash_seed, splitter_common::hash::DEFAULT_HASH_SEED);
        assert_eq!(config.miss_hold, DEFAULT_MISS_HOLD);
        assert_eq!(config.handshake_timeout, Duration::from_millis(500));
        assert!(config.redirect_interfaces.is_empty());
        assert_eq!(config.socket, Path::new(DEFAULT_SOCKET));
        assert_eq!(config.metrics, DEFAULT_METRICS.parse().unwrap());
        assert_eq!(config.state_dir, Path::new(DEFAULT_STATE_DIR));
        assert_eq!(config.bpffs, Path::new(DEFAULT_BPFFS));
        let web = &config.services[0];
        assert_eq!(web.green_weight, 100_000);
        assert_eq!(web.protocol, Protocol::Tcp);
        assert_eq!(web.cohort, CohortSetting::Flow);
        assert_eq!(web.blue.len(), 2);
    }

    #[test]
    fn the_example_config_is_valid() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/splitter.toml");
        let config = Config::read(&path).expect("examples/splitter.toml parses");
        config
            .validate_with(&|_| true)
            .expect("examples/splitter.toml is valid");
    }

    #[test]
    fn weights_in_percent_become_parts_per_million() {
        for (text, ppm) in [
            ("0", 0),
            ("100", 1_000_000),
            ("12.5", 125_000),
            ("0.0001", 1),
            ("33.3333", 333_333),
            ("99.9999", 999_999),
        ] {
            let config = check(&edit(
                "green_weight = 10",
                &format!("green_weight = {text}"),
            ))
            .unwrap_or_else(|e| panic!("{text}: {e}"));
            assert_eq!(config.services[0].green_weight, ppm, "{text}");
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
        assert_eq!(ppm_to_percent(125_000), "12.5");
        assert_eq!(ppm_to_percent(1), "0.0001");
        assert_eq!(ppm_to_percent(1_000_000), "100");
        assert_eq!(ppm_to_percent(0), "0");
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("60s"), Some(Duration::from_secs(60)));
        assert_eq!(parse_duration("500ms"), Some(Duration::from_millis(500)));
        assert_eq!(parse_duration("5m"), Some(Duration::from_secs(300)));
        assert_eq!(parse_duration("1h"), Some(Duration::from_secs(3600)));
        assert_eq!(parse_duration("0s"), Some(Duration::ZERO));
        assert_eq!(parse_duration("5"), None);
        assert_eq!(parse_duration("s"), None);
        assert_eq!(parse_duration("1.5s"), None);
    }

    /// Every bad file, with the exact one-line message the operator sees.
    #[test]
    fn bad_files_are_refused_with_a_message_naming_the_field() {
        let cases: Vec<(&str, String, &str)> = vec![
            (
                "TOML syntax",
                "[dataplane\ninterfaces = [\"eth0\"]".into(),
                "test.toml: line 1, column 11: unclosed table, expected `]`",
            ),
            (
                "unknown top-level key",
                format!("extra = 1\n{GOOD}"),
                "test.toml: line 1, column 1: unknown field `extra`, expected one of `dataplane`, `control`, `service`",
            ),
            (
                "unknown key in [dataplane]",
                edit(
                    "interfaces = [\"eth0\"]",
                    "interfaces = [\"eth0\"]\nxdp = \"native\"",
                ),
                "test.toml: line 4, column 1: unknown field `xdp`, expected one of `interfaces`, `xdp_mode`, `flow_table_size`, `hash_seed`, `miss_hold`, `handshake_timeout`, `redirect_interfaces`",
            ),
            (
                "unknown key in a service (typo)",
                edit("green_weight = 10", "green_weight = 10\ngreen_wieght = 20"),
                "test.toml: line 9, column 1: unknown field `green_wieght`, expected one of `name`, `address`, `protocol`, `green_weight`, `cohort`, `blue`, `green`, `rollout`",
            ),
            (
                "rollout steps not increasing",
                format!("{GOOD}\n[service.rollout]\nsteps = [10, 5]\n"),
                "service `web`: rollout: rollout steps must increase: 10% then 5%",
            ),
            (
                "rollout step above 100",
                format!("{GOOD}\n[service.rollout]\nsteps = [50, 150]\n"),
                "service `web`: rollout: rollout step 150% is not a weight in (0, 100]",
            ),
            (
                "rollout step duration zero",
                format!("{GOOD}\n[service.rollout]\nevery = \"0s\"\n"),
                "service `web`: rollout: rollout step duration must be at least 100ms (got 0ms)",
            ),
            (
                "rollout duration not a duration",
                format!("{GOOD}\n[service.rollout]\nevery = \"soon\"\n"),
                "service `web`: rollout: `soon` is not a duration (e.g. \"60s\", \"500ms\", \"5m\")",
            ),
            (
                "rollout min_flows zero",
                format!("{GOOD}\n[service.rollout]\nmin_flows = 0\n"),
                "service `web`: rollout: min_flows must be at least 1: a step judged on no traffic would pass blindly",
            ),
            (
                "missing [dataplane]",
                GOOD.replace("[dataplane]\ninterfaces = [\"eth0\"]\n", ""),
                "test.toml: line 1, column 1: missing field `dataplane`",
            ),
            (
                "missing service address",
                edit("address = \"203.0.113.10:80\"\n", ""),
                "test.toml: line 5, column 1: missing field `address`",
            ),
            (
                "weight as a string",
                edit("green_weight = 10", "green_weight = \"10%\""),
                "test.toml: line 8, column 16: invalid type: string \"10%\", expected f64",
            ),
            (
                "bad xdp_mode",
                edit(
                    "interfaces = [\"eth0\"]",
                    "interfaces = [\"eth0\"]\nxdp_mode = \"turbo\"",
                ),
                "test.toml: line 4, column 12: unknown variant `turbo`, expected one of `auto`, `native`, `generic`",
            ),
            (
                "bad protocol",
                edit(
                    "green_weight = 10",
                    "green_weight = 10\nprotocol = \"sctp\"",
                ),
                "test.toml: line 9, column 12: unknown variant `sctp`, expected `tcp` or `udp`",
            ),
            (
                "bad cohort",
                edit("green_weight = 10", "green_weight = 10\ncohort = \"user\""),
                "test.toml: line 9, column 10: unknown variant `user`, expected `flow` or `client`",
            ),
            (
                "hash_seed out of range",
                edit(
                    "interfaces = [\"eth0\"]",
                    "interfaces = [\"eth0\"]\nhash_seed = -1",
                ),
                "test.toml: line 4, column 13: invalid value: integer `-1`, expected u32",
            ),
            (
                "no interface",
                edit("interfaces = [\"eth0\"]", "interfaces = []"),
                "dataplane.interfaces: at least one interface is needed",
            ),
            (
                "unknown interface",
                edit(
                    "interfaces = [\"eth0\"]",
                    "interfaces = [\"eth0\", \"eth9\"]",
                ),
                "dataplane.interfaces: no interface `eth9` on this host",
            ),
            (
                "interface listed twice",
                edit(
                    "interfaces = [\"eth0\"]",
                    "interfaces = [\"eth0\", \"eth0\"]",
                ),
                "dataplane.interfaces: `eth0` is listed twice",
            ),
            (
                "interface name too long",
                edit(
                    "interfaces = [\"eth0\"]",
                    "interfaces = [\"a-very-long-interface\"]",
                ),
                "dataplane.interfaces: `a-very-long-interface` is not a valid interface name",
            ),
            (
                "flow table too small",
                edit(
                    "interfaces = [\"eth0\"]",
                    "interfaces = [\"eth0\"]\nflow_table_size = 10",
                ),
                "dataplane.flow_table_size: 10 is outside 1024..=16777216 entries",
            ),
            (
                "bad miss_hold",
                edit(
                    "interfaces = [\"eth0\"]",
                    "interfaces = [\"eth0\"]\nmiss_hold = \"a while\"",
                ),
                "dataplane.miss_hold: `a while` is not a duration like \"60s\", \"500ms\" or \"5m\" (at most 24h)",
            ),
            (
                "bad handshake_timeout",
                edit(
                    "interfaces = [\"eth0\"]",
                    "interfaces = [\"eth0\"]\nhandshake_timeout = \"0ms\"",
                ),
                "dataplane.handshake_timeout: `0ms` is not a duration between 1ms and 60s like \"500ms\"",
            ),
            (
                "unknown redirect interface",
                edit(
                    "interfaces = [\"eth0\"]",
                    "interfaces = [\"eth0\"]\nredirect_interfaces = [\"eth1\", \"eth7\"]",
                ),
                "dataplane.redirect_interfaces: no interface `eth7` on this host",
            ),
            (
                "relative bpffs path",
                format!("{GOOD}\n[control]\nbpffs = \"bpf/splitter\""),
                "control.bpffs: `bpf/splitter` must be an absolute path",
            ),
            (
                "bad metrics address",
                format!("{GOOD}\n[control]\nmetrics = \"localhost\""),
                "control.metrics: `localhost` is not an IP:port address",
            ),
            (
                "weight above 100",
                edit("green_weight = 10", "green_weight = 150"),
                "service `web`: green_weight 150 is outside 0..=100 (percent of new flows)",
            ),
            (
                "negative weight",
                edit("green_weight = 10", "green_weight = -1"),
                "service `web`: green_weight -1 is outside 0..=100 (percent of new flows)",
            ),
            (
                "weight finer than supported",
                edit("green_weight = 10", "green_weight = 12.00001"),
                "service `web`: green_weight 12.00001 is finer than 0.0001 percent",
            ),
            (
                "empty blue pool",
                edit(
                    "blue = [\"10.1.0.10:8080\", \"10.1.0.11:8080\"]",
                    "blue = []",
                ),
                "service `web`: blue has no backend (each color needs at least one)",
            ),
            (
                "empty green pool",
                edit("green = [\"10.2.0.10:8080\"]", "green = []"),
                "service `web`: green has no backend (each color needs at least one)",
            ),
            (
                "bad service address",
                edit("203.0.113.10:80", "203.0.113.300:80"),
                "service `web`: address `203.0.113.300:80` is not an IP:port address",
            ),
            (
                "service address without port",
                edit("203.0.113.10:80", "203.0.113.10"),
                "service `web`: address `203.0.113.10` is not an IP:port address",
            ),
            (
                "backend port 0",
                edit("10.2.0.10:8080", "10.2.0.10:0"),
                "service `web`: green[0] `10.2.0.10:0` has port 0",
            ),
            (
                "bad backend address",
                edit("10.1.0.11:8080", "backend-2:8080"),
                "service `web`: blue[1] `backend-2:8080` is not an IP:port address",
            ),
            (
                "backend equal to the service address",
                edit("10.2.0.10:8080", "203.0.113.10:80"),
                "service `web`: green[0] 203.0.113.10:80 is the service address itself",
            ),
            (
                "IPv6 backend for an IPv4 service",
                edit("10.2.0.10:8080", "[2001:db8::20]:8080"),
                "service `web`: green[0] [2001:db8::20]:8080 is not the same IP family as the service address",
            ),
            (
                "backend in both colors",
                edit("10.2.0.10:8080", "10.1.0.10:8080"),
                "service `web`: green[0] 10.1.0.10:8080 is listed twice in the service",
            ),
            (
                "empty service name",
                edit("name = \"web\"", "name = \"\""),
                "service[0].name: `` must be 1-64 letters, digits, `-`, `_` or `.`",
            ),
            (
                "service name with a space",
                edit("name = \"web\"", "name = \"web app\""),
                "service[0].name: `web app` must be 1-64 letters, digits, `-`, `_` or `.`",
            ),
            (
                "duplicate service name",
                with_service(
                    "name = \"web\"\naddress = \"203.0.113.11:80\"\ngreen_weight = 0\nblue = [\"10.1.1.10:80\"]\ngreen = [\"10.2.1.10:80\"]",
                ),
                "service[1].name: `web` is already used by service[0]",
            ),
            (
                "duplicate service address",
                with_service(
                    "name = \"api\"\naddress = \"203.0.113.10:80\"\ngreen_weight = 0\nblue = [\"10.1.1.10:80\"]\ngreen = [\"10.2.1.10:80\"]",
                ),
                "service `api`: address 203.0.113.10:80/tcp is already used by service `web`",
            ),
            (
                "backend shared by two services",
                with_service(
                    "name = \"api\"\naddress = \"203.0.113.11:80\"\ngreen_weight = 0\nblue = [\"10.1.0.10:8080\"]\ngreen = [\"10.2.1.10:80\"]",
                ),
                "service `api`: blue[0] 10.1.0.10:8080/tcp is also a backend of service `web` (replies could not be told apart)",
            ),
            (
                "backend that is another service's address",
                with_service(
                    "name = \"api\"\naddress = \"203.0.113.11:80\"\ngreen_weight = 0\nblue = [\"203.0.113.10:80\"]\ngreen = [\"10.2.1.10:80\"]",
                ),
                "service `api`: blue[0] 203.0.113.10:80 is the address of service `web`",
            ),
        ];
        assert!(cases.len() >= 20);
        let mut wrong = Vec::new();
        for (what, text, expected) in cases {
            match check(&text) {
                Ok(_) => wrong.push(format!("{what}: accepted, expected `{expected}`")),
                Err(error) => {
                    let message = error.to_string();
                    if message != expected || message.contains('\n') {
                        wrong.push(format!(
                            "{what}:\n  got      {message}\n  expected {expected}"
                        ));
                    }
                }
            }
        }
        assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    }

    #[test]
    fn same_backend_for_tcp_and_udp_services_is_allowed() {
        let text = with_service(
            "name = \"dns\"\naddress = \"203.0.113.10:80\"\nprotocol = \"udp\"\ngreen_weight = 0\nblue = [\"10.1.0.10:8080\"]\ngreen = [\"10.2.0.10:8080\"]",
        );
        check(&text).expect("tcp and udp on the same address and backends are distinct");
    }
}
