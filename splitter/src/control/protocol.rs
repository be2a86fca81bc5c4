//! The control protocol: one JSON object per line over the daemon's Unix socket, a request
//! from the CLI and one response from the daemon, any number per connection.
//!
//! ```text
//! → {"command":"set-weight","service":"web","green_weight":125000}
//! ← {"ok":{"weight":{"service":"web","previous_green_weight":100000,"green_weight":125000}}}
//! → {"command":"switch","service":"web","color":"purple"}
//! ← {"error":{"kind":"bad_request","message":"..."}}
//! ```
//!
//! Weights travel in parts per million (`WEIGHT_SCALE`). New commands (e.g. `rollout-*`) are
//! new `Request` variants; a daemon that does not know one answers `bad_request`.

use std::{collections::BTreeMap, net::SocketAddr, path::PathBuf};

use serde::{Deserialize, Serialize};

pub use super::whatif::WhatIfReport;
use crate::{
    config::{CohortSetting, ColorName},
    dataplane::{Origin, Unloaded, services::Protocol},
    health::BackendState,
};

/// What the CLI asks.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "command", rename_all = "kebab-case", deny_unknown_fields)]
pub enum Request {
    /// Everything `splitter status` shows.
    Status,
    /// Share of new flows sent to green, in parts per million.
    SetWeight {
        service: String,
        green_weight: u32,
        /// With `[fleet]`: answer once written, without waiting for the hosts.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        no_wait: bool,
    },
    /// Every new flow to one color.
    Switch {
        service: String,
        color: ColorName,
        /// With `[fleet]`: answer once written, without waiting for the hosts.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        no_wait: bool,
        /// With `[fleet]`: on this host only, as an override that holds until
        /// `fleet-clear-override` (works without etcd).
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        local: bool,
    },
    /// Every new flow to the other color (one map write, as `switch`); `cut` also unpins the
    /// flows still pinned to `color`.
    Drain {
        service: String,
        color: ColorName,
        #[serde(default)]
        cut: bool,
    },
    /// What a weight would change, changing nothing (`what-if`).
    WhatIf {
        service: String,
        green_weight: u32,
    },
    /// `backend disable|enable|drain`: the operator's word on one backend (`backend` as
    /// written in the config, `IP:port`).
    Backend {
        service: String,
        backend: String,
        admin: crate::health::Admin,
    },
    /// Re-read the config file and apply the difference.
    Reload,
    /// Detach and remove the data plane, then stop the daemon.
    Unload,
    /// Start a canary rollout with the service's configured plan, fields overridden.
    RolloutStart {
        service: String,
        #[serde(default)]
        overrides: crate::rollout::plan::Overrides,
        /// When the canary color already carries traffic: continue the steps above its share
        /// (without: refused).
        #[serde(default)]
        from_current: bool,
    },
    /// Start again with the plan of the service's last aborted rollout.
    RolloutRetry {
        service: String,
    },
    /// Every service's rollout (running, paused, or the last finished one).
    RolloutList,
    RolloutStatus {
        service: String,
    },
    RolloutPause {
        service: String,
    },
    RolloutResume {
        service: String,
    },
    /// The next step now, or (`full`) the last one.
    RolloutPromote {
        service: String,
        full: bool,
    },
    /// Back to the weight in force when the rollout started; `cut` also unpins the canary's
    /// established flows.
    RolloutAbort {
        service: String,
        cut: bool,
    },
    /// `[fleet]`: every live host's record (`fleet status`).
    FleetStatus,
    /// `[fleet]`: end a `switch --local` override; the fleet's desired state applies again.
    FleetClearOverride {
        service: String,
    },
    /// `[fleet]`: this host's definition of the service becomes the fleet's.
    FleetAdoptDefinition {
        service: String,
    },
}

impl Request {
    /// Every value of [`Request::name`], in declaration order: the request counter has a zero
    /// series for each from the start.
    pub const NAMES: [&'static str; 19] = [
        "status",
        "set-weight",
        "switch",
        "drain",
        "what-if",
        "backend",
        "reload",
        "unload",
        "rollout-start",
        "rollout-retry",
        "rollout-list",
        "rollout-status",
        "rollout-pause",
        "rollout-resume",
        "rollout-promote",
        "rollout-abort",
        "fleet-status",
        "fleet-clear-override",
        "fleet-adopt-definition",
    ];

    /// The `command` label of the daemon's request counter.
    pub const fn name(&self) -> &'static str {
        match self {
            Request::Status => "status",
            Request::SetWeight { .. } => "set-weight",
            Request::Switch { .. } => "switch",
            Request::Drain { .. } => "drain",
            Request::WhatIf { .. } => "what-if",
            Request::Backend { .. } => "backend",
            Request::Reload => "reload",
            Request::Unload => "unload",
            Request::RolloutStart { .. } => "rollout-start",
            Request::RolloutRetry { .. } => "rollout-retry",
            Request::RolloutList => "rollout-list",
            Request::RolloutStatus { .. } => "rollout-status",
            Request::RolloutPause { .. } => "rollout-pause",
            Request::RolloutResume { .. } => "rollout-resume",
            Request::RolloutPromote { .. } => "rollout-promote",
            Request::RolloutAbort { .. } => "rollout-abort",
            Request::FleetStatus => "fleet-status",
            Request::FleetClearOverride { .. } => "fleet-clear-override",
            Request::FleetAdoptDefinition { .. } => "fleet-adopt-definition",
        }
    }
}

/// What the daemon answers.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Response {
    Ok(Reply),
    Error(ErrorReply),
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reply {
    Status(Box<StatusReport>),
    Weight(WeightChange),
    Drained(DrainReport),
    WhatIf(WhatIfReport),
    Backend(BackendReport),
    Reloaded(ReloadReport),
    Unloaded(Unloaded),
    Rollout(Box<RolloutReport>),
    Rollouts(Vec<RolloutReport>),
    /// A fleet-wide `set-weight`/`switch`: written to etcd, applied by how many hosts.
    Fleet(crate::fleet::report::FleetWrite),
    FleetStatus(Box<crate::fleet::report::FleetStatusReport>),
    FleetLocal(Box<crate::fleet::report::FleetLocalStatus>),
    FleetAdopted(crate::fleet::report::AdoptedDefinition),
}

/// Where a rollout stands: `rollout status` and every `rollout` command's answer.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RolloutReport {
    pub service: String,
    pub phase: crate::rollout::Phase,
    /// The color traffic moves to.
    #[serde(default = "green")]
    pub canary: ColorName,
    /// The service's stable color now (the canary once the rollout completed).
    #[serde(default = "blue")]
    pub stable: ColorName,
    /// Green's weight when the rollout started (where an abort returns).
    #[serde(default)]
    pub start_weight: u32,
    #[serde(default)]
    pub started_unix_ms: u64,
    /// 1-based step number, of `steps.len()`.
    pub step: usize,
    /// The plan's steps: the canary's share (parts per million).
    pub steps: Vec<u32>,
    /// The green weight in force.
    pub green_weight: u32,
    pub next_weight: Option<u32>,
    /// Until the current step may advance (0 when due, holding or not running).
    pub time_left_ms: u64,
    pub every_ms: u64,
    pub min_flows: u64,
    /// The current analysis window, per color.
    pub green: crate::rollout::engine::Summary,
    pub blue: crate::rollout::engine::Summary,
    pub last: Option<crate::rollout::engine::Decision>,
    pub history: Vec<crate::rollout::engine::Decision>,
    /// `[fleet]`: the hosts summed, the hosts that applied an `abort --cut`.
    #[serde(default, flatten)]
    pub fleet: crate::fleet::report::RolloutFleetNotes,
}

const fn green() -> ColorName {
    ColorName::Green
}

const fn blue() -> ColorName {
    ColorName::Blue
}

/// A refused or failed request. `kind` decides the CLI's exit code; `message` is for people.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{message}")]
pub struct ErrorReply {
    pub kind: ErrorKind,
    pub message: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// The request could not be parsed (or is unknown to this daemon).
    BadRequest,
    /// No such service.
    UnknownService,
    /// An argument out of range.
    InvalidArgument,
    /// `reload`: the file is invalid; nothing changed.
    InvalidConfig,
    /// `reload`: a setting that only a restart (or an unload) can change.
    RestartRequired,
    /// The daemon failed to carry out a valid request.
    Runtime,
}

/// The result of `set-weight` and `switch`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WeightChange {
    pub service: String,
    pub previous_green_weight: u32,
    pub green_weight: u32,
}

/// The result of `drain`: the weight change (none when already in force) and, with `cut`, how
/// many flows were unpinned. Live connections are in `status`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DrainReport {
    pub service: String,
    /// The color drained.
    pub color: ColorName,
    pub previous_green_weight: u32,
    pub green_weight: u32,
    pub unpinned: u64,
}

/// The result of `reload`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReloadReport {
    pub added: Vec<String>,
    pub changed: Vec<String>,
    pub removed: Vec<String>,
    pub unchanged: Vec<String>,
    pub attached: Vec<String>,
    pub detached: Vec<String>,
}

/// A snapshot of the daemon and its data plane: what `status` prints and what the metrics
/// endpoint exports.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct StatusReport {
    pub daemon: DaemonStatus,
    pub services: Vec<ServiceStatus>,
    /// Packets per verdict reason since the data plane was loaded.
    pub verdicts: BTreeMap<String, u64>,
    /// Rewritten packets per forwarding path (`xdp_redirect`, `kernel`).
    pub forwarding: BTreeMap<String, u64>,
    /// `[fleet]`: this host's view of the fleet (connected, applied revision, overrides).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fleet: Option<crate::fleet::report::FleetLocalStatus>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DaemonStatus {
    pub pid: u32,
    pub version: String,
    pub config: PathBuf,
    pub uptime_seconds: u64,
    /// Whether this daemon loaded the data plane or adopted it from an earlier one.
    pub dataplane: Origin,
    pub bpffs: PathBuf,
    pub interfaces: Vec<String>,
    pub flow_table_size: u32,
    /// The split hash's seed in force (only here: never logged, not in the human view).
    pub hash_seed: u32,
    #[serde(default)]
    pub hash_seed_source: HashSeedSource,
    /// Entries in the flow table of verified flows (all services, including flows of removed
    /// backends).
    pub pinned_flows: u64,
    /// Whether `state_dir/state.json` holds what is in force (absent from older daemons).
    #[serde(default)]
    pub state_file: PersistStatus,
    /// Fill of each flow table.
    #[serde(default)]
    pub flow_tables: FlowTables,
}

/// The flow tables: `flows` (verified flows: handshake seen, or answered by the backend) and
/// `pending` (handshakes in progress, unverified mid-flow misses, UDP flows), each with its
/// IPv6 twin.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FlowTables {
    pub flows: TableFill,
    pub pending: TableFill,
    #[serde(default)]
    pub flows6: TableFill,
    #[serde(default)]
    pub pending6: TableFill,
}

impl FlowTables {
    /// `(label, fill)` per table, as the metrics name them.
    pub fn labelled(&self) -> [(&'static str, TableFill); 4] {
        [
            ("flows", self.flows),
            ("flows6", self.flows6),
            ("pending", self.pending),
            ("pending6", self.pending6),
        ]
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TableFill {
    pub entries: u64,
    pub capacity: u64,
}

/// A backend's flows by state (one scan of both tables).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FlowStates {
    /// Handshakes in progress (not yet connections).
    pub pending: u64,
    pub established: u64,
    /// FIN seen in one direction: still open.
    pub closing: u64,
}

impl FlowStates {
    /// Open connections: established or still closing.
    pub const fn live(&self) -> u64 {
        self.established + self.closing
    }
}

/// The state file: behind (a save failed; the daemon retries every second), failed saves.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PersistStatus {
    /// The file is older than the weights in force (they are in the kernel).
    pub behind: bool,
    /// Failed saves since the daemon started.
    pub errors_total: u64,
    /// The last failure of the current episode.
    pub last_error: Option<String>,
}

impl Default for DaemonStatus {
    fn default() -> Self {
        Self {
            pid: 0,
            version: String::new(),
            config: PathBuf::new(),
            uptime_seconds: 0,
            dataplane: Origin::Loaded,
            bpffs: PathBuf::new(),
            interfaces: Vec::new(),
            flow_table_size: 0,
            hash_seed: 0,
            hash_seed_source: HashSeedSource::default(),
            pinned_flows: 0,
            state_file: PersistStatus::default(),
            flow_tables: FlowTables::default(),
        }
    }
}

/// Where the hash seed in force came from. Its value is a secret of sorts: whoever knows it can
/// pick client tuples that land on green, so it is not logged nor shown by `status` (only in
/// its JSON, on the root-only socket, for copying into the configs of an ECMP group).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HashSeedSource {
    /// `dataplane.hash_seed` in the config.
    Configured,
    /// Drawn at random at the first start and kept in `state_dir/hash_seed`.
    #[default]
    Random,
}

impl HashSeedSource {
    pub const fn name(self) -> &'static str {
        match self {
            HashSeedSource::Configured => "configured",
            HashSeedSource::Random => "random",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ServiceStatus {
    pub name: String,
    /// A preview address (`preview` in the config): the service it is the preview of. Its
    /// flows all go to green and are counted here, apart from the service's own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preview_of: Option<String>,
    pub address: SocketAddr,
    pub protocol: Protocol,
    pub cohort: CohortSetting,
    /// The weight in force (parts per million), and the same in percent.
    pub green_weight: u32,
    #[serde(default)]
    pub green_weight_percent: f64,
    /// The color a rollout moves traffic away from (the other one is the next canary).
    #[serde(default = "blue")]
    pub stable: ColorName,
    /// Green share of the new flows of the last `window_seconds`, counting only flows since
    /// the last weight change (None: no new flow in that window).
    pub measured_green_share: Option<f64>,
    /// The weight changed less than a sample ago or no new flow came since: the measured
    /// share is not known yet.
    #[serde(default)]
    pub settling: bool,
    pub window_seconds: f64,
    /// New flows in that window.
    pub window_new_flows: u64,
    /// TCP non-SYN packets that found no pinned flow.
    pub flow_misses: u64,
    /// Mid-flow misses in the band of hashes the weights of the `miss_hold` window disagree on.
    #[serde(default)]
    pub ambiguous_misses: u64,
    pub colors: Vec<ColorStatus>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ColorStatus {
    pub color: ColorName,
    /// The config's release label (`blue_release`, `green_release`).
    #[serde(default)]
    pub release: Option<String>,
    /// Whether this is the service's stable color.
    #[serde(default)]
    pub stable: bool,
    /// This color's share of new flows by weight, in percent.
    #[serde(default)]
    pub weight_percent: f64,
    /// Open connections to the color (its backends' `live_flows`).
    #[serde(default)]
    pub live_flows: u64,
    pub backends: Vec<BackendStatus>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BackendStatus {
    pub address: SocketAddr,
    /// Index of its counters in the data plane.
    pub id: u32,
    /// Open connections to it now: established or closing flows (`flows.live()`).
    pub live_flows: u64,
    /// Its flows by state.
    #[serde(default)]
    pub flows: FlowStates,
    /// Flows pinned to it since its id was assigned.
    pub new_flows: u64,
    /// New flows per second over the window (None until two samples exist).
    pub new_flows_per_second: Option<f64>,
    /// Packets and bytes per second each way over the window (None until two samples exist).
    #[serde(default)]
    pub to_backend_rate: Option<TrafficRate>,
    #[serde(default)]
    pub to_client_rate: Option<TrafficRate>,
    pub to_backend: Traffic,
    pub to_client: Traffic,
    /// TCP handshakes and resets measured in the kernel (rollout signals).
    pub signals: Signals,
    /// Whether it takes new flows, and why (`health`): up, down, ejected, draining, disabled.
    #[serde(default)]
    pub state: BackendState,
    #[serde(default)]
    pub state_reason: String,
    /// When it entered `state` (Unix ms; the daemon's start for a backend never changed).
    #[serde(default)]
    pub state_since_unix_ms: u64,
    /// Transitions into each state since the daemon started.
    #[serde(default)]
    pub transitions: BTreeMap<BackendState, u64>,
    /// Its Maglev weight in the config.
    #[serde(default)]
    pub weight: u32,
    /// The weight its share of its color's new flows follows now: `weight` when up, less
    /// during slow start, 0 out of rotation.
    #[serde(default)]
    pub effective_weight: f64,
    /// During slow start: the percent of `weight` it takes now (none otherwise).
    #[serde(default)]
    pub slow_start_percent: Option<f64>,
}

/// The answer to `backend disable|enable|drain`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackendReport {
    pub service: String,
    pub backend: SocketAddr,
    pub color: ColorName,
    /// Its counters' id (None if the service is not installed).
    pub id: Option<u32>,
    pub admin: crate::health::Admin,
    pub previous: BackendState,
    pub state: BackendState,
}

/// A backend's TCP handshakes (SYN → SYN-ACK) and resets.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Signals {
    pub handshakes_completed: u64,
    /// RST in answer to the SYN.
    pub handshakes_refused: u64,
    /// The client retransmitted its SYN without a SYN-ACK (`handshake_timeout`).
    pub handshakes_timed_out: u64,
    /// RST from the backend on an established flow.
    pub established_resets: u64,
    /// SYN → SYN-ACK time: counts per bucket of `splitter_common::signals::HANDSHAKE_BUCKETS_US`
    /// (the last one is +Inf), not cumulative.
    pub handshake_latency_buckets: Vec<u64>,
    pub handshake_latency_sum_ns: u64,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct TrafficRate {
    pub packets_per_second: f64,
    /// L3 bytes per second.
    pub bytes_per_second: f64,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Traffic {
    pub packets: u64,
    /// L3 bytes.
    pub bytes: u64,
    pub tcp_resets: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_format() {
        let request = Request::SetWeight {
            service: "web".into(),
            green_weight: 125_000,
            no_wait: false,
        };
        assert_eq!(
            serde_json::to_string(&request).unwrap(),
            r#"{"command":"set-weight","service":"web","green_weight":125000}"#
        );
        let switch: Request =
            serde_json::from_str(r#"{"command":"switch","service":"web","color":"green"}"#)
                .unwrap();
        assert_eq!(
            switch,
            Request::Switch {
                service: "web".into(),
                color: ColorName::Green,
                no_wait: false,
                local: false,
            }
        );
        assert!(serde_json::from_str::<Request>(r#"{"command":"rollout-start"}"#).is_err());
        // `name()` is the wire tag, and `NAMES` lists every one.
        for name in Request::NAMES {
            let json = match name {
                "status" | "reload" | "unload" | "rollout-list" | "fleet-status" => {
                    format!(r#"{{"command":"{name}"}}"#)
                }
                "backend" => format!(
                    r#"{{"command":"{name}","service":"web","backend":"198.18.0.1:80","admin":"draining"}}"#
                ),
                "set-weight" | "what-if" => {
                    format!(r#"{{"command":"{name}","service":"web","green_weight":0}}"#)
                }
                "switch" | "drain" => {
                    format!(r#"{{"command":"{name}","service":"web","color":"green"}}"#)
                }
                "rollout-promote" => {
                    format!(r#"{{"command":"{name}","service":"web","full":false}}"#)
                }
                "rollout-abort" => format!(r#"{{"command":"{name}","service":"web","cut":false}}"#),
                _ => format!(r#"{{"command":"{name}","service":"web"}}"#),
            };
            let request: Request = serde_json::from_str(&json).expect(&json);
            assert_eq!(request.name(), name);
        }
        let response = Response::Error(ErrorReply {
            kind: ErrorKind::UnknownService,
            message: "no service `x`".into(),
        });
        assert_eq!(
            serde_json::to_string(&response).unwrap(),
            r#"{"error":{"kind":"unknown_service","message":"no service `x`"}}"#
        );
    }
}
