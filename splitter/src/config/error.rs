//! Why a config file was refused. Each message names the file position or the field.

use std::{net::SocketAddr, path::PathBuf};

use splitter_common::{
    MAX_SHARING,
    maps::{MAX_BACKENDS, POOL_SLOTS},
};

use super::{
    CONNECTIONS_MAX, CONNECTIONS_MIN, ColorName, FLOW_TABLE_MAX, FLOW_TABLE_MIN, PENDING_TABLE_MIN,
    SERVICE_NAME_MAX, SERVICES_MAX,
};
use crate::rollout::PlanError;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: line {line}, column {column}: {}{message}", key_prefix(key))]
    Syntax {
        path: PathBuf,
        line: usize,
        column: usize,
        /// The key the problem is at (`service[0].green_weight`), when serde knows it.
        key: String,
        message: String,
    },
    #[error("{path}: {count} problems:\n{}", list(problems))]
    Many {
        path: PathBuf,
        count: usize,
        problems: Vec<ConfigError>,
    },
    #[error("control.{field}: {value} is outside {CONNECTIONS_MIN}..={CONNECTIONS_MAX}")]
    Connections { field: &'static str, value: usize },
    #[error("control.client_timeout: `{value}` is not a duration between 1s and 1h like \"60s\"")]
    ClientTimeout { value: String },
    #[error(
        "service `{service}`: {field} `{value}` is {kind}: only a specified unicast address can be a service address or backend"
    )]
    NotUnicast {
        service: String,
        field: String,
        value: String,
        kind: &'static str,
    },
    #[error("{0}")]
    Host(String),
    #[error(transparent)]
    Fleet(#[from] super::fleet::FleetConfigError),
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
        "dataplane.pending_table_size: {value} is outside {PENDING_TABLE_MIN}..={FLOW_TABLE_MAX} entries"
    )]
    PendingTableSize { value: u32 },
    #[error(
        "dataplane.udp_idle_timeout: `{value}` is not a duration between 100ms and 24h like \"30s\""
    )]
    UdpIdleTimeout { value: String },
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
    #[error("service `{service}`: {source}")]
    Health {
        service: String,
        source: super::health::HealthError,
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
        "service `{service}`: {field} {backend}/{protocol} would serve more than {MAX_SHARING} services and previews ({others}); at most {MAX_SHARING} may share a backend (the reply path looks up one flow per service)"
    )]
    SharedTooWidely {
        service: String,
        field: String,
        others: String,
        backend: SocketAddr,
        protocol: &'static str,
    },
    #[error(
        "service `{service}`: preview {preview} must differ from the service address {address} and be of the same IP family"
    )]
    Preview {
        service: String,
        preview: SocketAddr,
        address: SocketAddr,
    },
    #[error(transparent)]
    Override(#[from] super::overrides::OverrideError),
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
    #[error("service `{service}`: {source}")]
    Pool {
        service: String,
        source: super::pool::PoolError,
    },
    #[error(
        "service: the services' Maglev tables take {slots} pool slots, at most {} fit (fewer backends or services)",
        POOL_SLOTS / 2
    )]
    TooManyPoolSlots { slots: u64 },
}

fn key_prefix(key: &str) -> String {
    if key.is_empty() || key == "." {
        String::new()
    } else {
        format!("{key}: ")
    }
}

fn list(problems: &[ConfigError]) -> String {
    problems
        .iter()
        .map(|problem| format!("  - {problem}"))
        .collect::<Vec<_>>()
        .join("\n")
}
