//! The daemon's configuration file (TOML): plain serde data with `deny_unknown_fields` and
//! documented defaults, checked by one [`Config::validate`] step that turns it into the typed
//! [`Validated`] form the daemon works with. Every field is described in the README.
//!
//! Nothing here touches the kernel: a file that fails here changes nothing.
//!
//! - this file: the file model (sections, defaults) and the validated form;
//! - [`error`]: why a file was refused;
//! - [`validate`]: the checks, field by field and across services.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use serde::{Deserialize, Serialize};
use splitter_common::{
    Cohort,
    maps::{DEFAULT_FLOW_TABLE_SIZE, MAX_SERVICES},
};

pub use self::{error::ConfigError, overrides::OverridesSection};
use crate::{
    dataplane::{XdpMode, overrides::Prefix, services::Protocol},
    rollout::{Check, Plan, PlanError, plan::Thresholds},
    units::parse_duration,
};

mod error;
pub mod fleet;
pub mod health;
pub mod host;
pub mod overrides;
pub mod pool;
#[cfg(test)]
mod tests;
mod validate;

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

/// Smallest and largest `flow_table_size` accepted (entries of `FLOWS`).
pub const FLOW_TABLE_MIN: u32 = 1024;
pub const FLOW_TABLE_MAX: u32 = 1 << 24;
/// Smallest `pending_table_size` accepted (entries of `PENDING`).
pub const PENDING_TABLE_MIN: u32 = 256;
/// Shortest and longest `udp_idle_timeout` accepted.
pub const UDP_IDLE_MIN: Duration = Duration::from_millis(100);
pub const UDP_IDLE_MAX: Duration = Duration::from_secs(24 * 3600);
/// Longest `miss_hold` accepted.
pub const MISS_HOLD_MAX: Duration = Duration::from_secs(24 * 3600);
/// Each service takes two `SERVICES` entries (its port and the port-0 fragment key).
pub const SERVICES_MAX: usize = (MAX_SERVICES / 2) as usize;
/// Longest service name (it is a metric label and a CLI argument).
pub const SERVICE_NAME_MAX: usize = 64;
/// Bounds of `max_connections` and `metrics_max_connections`.
pub const CONNECTIONS_MIN: usize = 1;
pub const CONNECTIONS_MAX: usize = 65_536;
/// `[control] max_connections` default (control socket).
pub const DEFAULT_MAX_CONNECTIONS: usize = 64;
/// `[control] metrics_max_connections` default.
pub const DEFAULT_METRICS_MAX_CONNECTIONS: usize = 256;
/// `[control] client_timeout` default and bounds.
pub const DEFAULT_CLIENT_TIMEOUT: Duration = Duration::from_secs(60);
pub const CLIENT_TIMEOUT_MIN: Duration = Duration::from_secs(1);
pub const CLIENT_TIMEOUT_MAX: Duration = Duration::from_secs(3600);
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
    /// `[fleet]`: runtime state shared through etcd (`fleet.rs`); absent: this host alone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fleet: Option<fleet::FleetSection>,
}

/// `[dataplane]`: where the programs run and their load-time settings.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DataplaneSection {
    /// Interfaces where client traffic arrives (XDP ingress + TC egress on each).
    pub interfaces: Vec<String>,
    #[serde(default = "default_xdp_mode")]
    pub xdp_mode: XdpMode,
    /// Capacity of `FLOWS`, the table of verified flows (completed handshakes). Load time only.
    #[serde(default = "default_flow_table_size")]
    pub flow_table_size: u32,
    /// Capacity of `PENDING`, the table of unverified flows (handshakes in progress, mid-flow
    /// misses, UDP flows); default `flow_table_size / 4`. Load time only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending_table_size: Option<u32>,
    /// A UDP flow idle this long is gone: its next packet follows the split in force then.
    /// Load time only.
    #[serde(default = "default_udp_idle_timeout")]
    pub udp_idle_timeout: String,
    /// Seed of the split hash; hosts behind the same ECMP group must share it. Load time only.
    /// Absent: a random seed drawn at the first start and kept in `state_dir`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hash_seed: Option<u32>,
    /// How long after a weight change a TCP packet of an unknown flow is steered by the
    /// previous weight (it most likely began before the change). `"60s"`, `"500ms"`, `"5m"`.
    #[serde(default = "default_miss_hold")]
    pub miss_hold: String,
    /// A client SYN retransmitted this long after the first one without a SYN-ACK counts as a
    /// handshake timeout (rollout signals). Load time only.
    #[serde(default = "default_handshake_timeout")]
    pub handshake_timeout: String,
    /// Backend-facing interfaces the XDP fast path may redirect rewritten packets to (FIB
    /// lookup + `XDP_REDIRECT`); empty: rewritten packets take the kernel's routing.
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
    /// Concurrent control connections; at the cap the oldest is closed.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// Concurrent metrics connections; at the cap the oldest is closed.
    #[serde(default = "default_metrics_max_connections")]
    pub metrics_max_connections: usize,
    /// A control client idle (or slow to send a line or read an answer) this long is
    /// disconnected; a metrics connection lives at most ten times this.
    #[serde(default = "default_client_timeout")]
    pub client_timeout: String,
}

impl Default for ControlSection {
    fn default() -> Self {
        Self {
            socket: default_socket(),
            metrics: default_metrics(),
            state_dir: default_state_dir(),
            bpffs: default_bpffs(),
            max_connections: default_max_connections(),
            metrics_max_connections: default_metrics_max_connections(),
            client_timeout: default_client_timeout(),
        }
    }
}

fn default_max_connections() -> usize {
    DEFAULT_MAX_CONNECTIONS
}
fn default_metrics_max_connections() -> usize {
    DEFAULT_METRICS_MAX_CONNECTIONS
}
fn default_client_timeout() -> String {
    format!("{}s", DEFAULT_CLIENT_TIMEOUT.as_secs())
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
    /// With `cohort = "client"`: hash the client's prefix, not its address (`pool.rs`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_prefix: Option<pool::ClientPrefixSection>,
    pub blue: Vec<String>,
    pub green: Vec<String>,
    /// What each color runs, e.g. `"v41"`: a label shown by `status` and on the metrics
    /// (`splitter_service_stable{release=...}`); nothing else depends on it.
    #[serde(default)]
    pub blue_release: Option<String>,
    #[serde(default)]
    pub green_release: Option<String>,
    /// The service's rollout plan (`splitter rollout start` flags override each field).
    #[serde(default)]
    pub rollout: Option<RolloutSection>,
    /// A second address whose every flow goes to green (Argo Rollouts' previewService).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preview: Option<String>,
    /// `[service.overrides]`: client prefixes always sent to green or kept on blue.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub overrides: Option<OverridesSection>,
    /// Active checks (`[service.health]`); absent: none.
    #[serde(default)]
    pub health: Option<health::HealthSection>,
    /// Passive ejection (`[service.outlier]`); absent: none.
    #[serde(default)]
    pub outlier: Option<health::OutlierSection>,
}
/// `[service.rollout]`: steps, step duration and the thresholds green is judged by (the
/// threshold keys and their defaults are [`Thresholds`]'s).
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RolloutSection {
    /// Green weights in percent, strictly increasing, e.g. `[1, 5, 25, 50, 100]`.
    #[serde(default = "default_rollout_steps")]
    pub steps: Vec<f64>,
    /// How long each step runs before it may advance: `"60s"`, `"500ms"`, `"5m"`.
    #[serde(default = "default_rollout_every")]
    pub every: String,
    #[serde(flatten)]
    pub thresholds: Thresholds,
    /// External checks: PromQL queries with a bound.
    #[serde(default)]
    pub checks: Vec<Check>,
}

impl Default for RolloutSection {
    fn default() -> Self {
        Self {
            steps: default_rollout_steps(),
            every: default_rollout_every(),
            thresholds: Thresholds::default(),
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
        Plan::new(&self.steps, every, self.thresholds, self.checks.clone())
    }
}

fn default_rollout_steps() -> Vec<f64> {
    crate::rollout::plan::DEFAULT_STEPS_PERCENT.to_vec()
}
fn default_rollout_every() -> String {
    format!("{}s", crate::rollout::plan::DEFAULT_EVERY.as_secs())
}
fn default_xdp_mode() -> XdpMode {
    XdpMode::Auto
}
fn default_flow_table_size() -> u32 {
    DEFAULT_FLOW_TABLE_SIZE
}
fn default_miss_hold() -> String {
    format!("{}s", DEFAULT_MISS_HOLD.as_secs())
}
fn default_udp_idle_timeout() -> String {
    format!(
        "{}s",
        splitter_common::maps::DEFAULT_UDP_IDLE_TIMEOUT_NS / 1_000_000_000
    )
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

pub use crate::color::ColorName;

/// A config that passed [`Config::validate`]: typed addresses, weights in parts per million.
#[derive(Clone, Debug, PartialEq)]
pub struct Validated {
    pub interfaces: Vec<String>,
    pub xdp_mode: XdpMode,
    pub flow_table_size: u32,
    pub pending_table_size: u32,
    pub udp_idle_timeout: Duration,
    /// `None`: the random seed persisted in `state_dir` (see `state::RandomSeed`).
    pub hash_seed: Option<u32>,
    pub miss_hold: Duration,
    pub handshake_timeout: Duration,
    pub redirect_interfaces: Vec<String>,
    pub socket: PathBuf,
    pub metrics: SocketAddr,
    pub state_dir: PathBuf,
    pub bpffs: PathBuf,
    pub max_connections: usize,
    pub metrics_max_connections: usize,
    pub client_timeout: Duration,
    /// In file order.
    pub services: Vec<Service>,
    /// `[fleet]`, when this host is part of one.
    pub fleet: Option<fleet::Fleet>,
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
    /// Maglev weights of the backends whose weight is not 1 ([`Service::weight`]), and the
    /// client prefix of the `client` cohort (`pool.rs`).
    pub weights: std::collections::BTreeMap<SocketAddr, u32>,
    pub client_prefix: pool::ClientPrefix,
    /// The release label of each color (`blue_release`, `green_release`), if given.
    pub blue_release: Option<String>,
    pub green_release: Option<String>,
    /// The default rollout plan (`[service.rollout]`, or the documented defaults).
    pub rollout: Plan,
    /// `preview`: every flow to this address goes to green.
    pub preview: Option<SocketAddr>,
    /// `[service.overrides]`, sorted by prefix.
    pub overrides: Vec<(Prefix, ColorName)>,
    /// Active checks and passive ejection of its backends (`health.rs`).
    pub health: Option<health::HealthCheck>,
    pub outlier: Option<health::Outlier>,
}

impl Service {
    /// The release label of a color, if the config gives one.
    pub fn release(&self, color: ColorName) -> Option<&str> {
        match color {
            ColorName::Blue => self.blue_release.as_deref(),
            ColorName::Green => self.green_release.as_deref(),
        }
    }

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

    /// Parses TOML text; `path` only names the file in errors, which name the key too
    /// (`service[0].green_weight: invalid type: string "ten", expected f64`).
    pub fn parse(path: &Path, text: &str) -> Result<Self, ConfigError> {
        let syntax = |error: toml::de::Error, key: String| {
            let (line, column) = error
                .span()
                .map_or((0, 0), |span| line_column(text, span.start));
            ConfigError::Syntax {
                path: path.to_owned(),
                line,
                column,
                key,
                message: error.message().trim().replace('\n', " "),
            }
        };
        let deserializer =
            toml::Deserializer::parse(text).map_err(|error| syntax(error, String::new()))?;
        serde_path_to_error::deserialize(deserializer).map_err(|error| {
            let key = error.path().to_string();
            syntax(error.into_inner(), key)
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

    /// `check-config`: every problem of the file (not just the first), and with
    /// `host_checks` what the daemon checks on this host at start (interfaces exist, the
    /// bpffs path is on a bpf filesystem, directories are the daemon's own).
    pub fn check(path: &Path, host_checks: bool) -> Result<Validated, ConfigError> {
        let config = Self::read(path)?;
        let result = if host_checks {
            config
                .validate_all(&|name| crate::dataplane::interface_index(name).is_some())
                .and_then(|validated| {
                    let problems = host::problems(&validated);
                    if problems.is_empty() {
                        Ok(validated)
                    } else {
                        Err(problems)
                    }
                })
        } else {
            config.validate_all(&|_| true)
        };
        result.map_err(|mut problems| {
            if problems.len() == 1 {
                ConfigError::Invalid {
                    path: path.to_owned(),
                    problem: Box::new(problems.remove(0)),
                }
            } else {
                ConfigError::Many {
                    path: path.to_owned(),
                    count: problems.len(),
                    problems,
                }
            }
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
