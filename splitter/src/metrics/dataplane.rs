//! The data plane's metrics, read from the kernel maps at each scrape through the same
//! snapshot `splitter status` shows: one family set per component (backends, services, the
//! programs as a whole), each series with a typed label set.
//!
//! These are counters the kernel keeps, so they are encoded as constant values of the
//! snapshot (a `Collector`) rather than kept in `Counter`s the daemon would have to mirror.

use std::sync::Mutex;

use prometheus_client::{
    collector::Collector,
    encoding::{
        DescriptorEncoder, EncodeGaugeValue, EncodeLabelSet, EncodeMetric as _, NoLabelSet,
    },
    metrics::{MetricType, counter::ConstCounter, gauge::ConstGauge},
};
use splitter_common::{WEIGHT_SCALE, signals::HANDSHAKE_BUCKETS_US};

use crate::{
    control::protocol::{Signals, StatusReport},
    health::BackendState,
};

/// The label set of a family without labels.
type Unlabelled = [(&'static str, &'static str); 0];

#[derive(Clone, Debug, EncodeLabelSet)]
struct ServiceLabels {
    service: String,
}

/// A preview address and the service it previews.
#[derive(Clone, Debug, EncodeLabelSet)]
struct PreviewLabels {
    service: String,
    preview_of: String,
}

/// A service's color and the release it runs (`""` when the config names none).
#[derive(Clone, Debug, EncodeLabelSet)]
struct ReleaseLabels {
    service: String,
    color: &'static str,
    release: String,
}

#[derive(Clone, Debug, EncodeLabelSet)]
struct BackendLabels {
    service: String,
    color: &'static str,
    backend: String,
}

#[derive(Clone, Debug, EncodeLabelSet)]
struct DirectionLabels {
    #[prometheus(flatten)]
    backend: BackendLabels,
    /// `to_backend` (client to backend) or `to_client` (replies).
    direction: &'static str,
}

#[derive(Clone, Debug, EncodeLabelSet)]
struct HandshakeLabels {
    #[prometheus(flatten)]
    backend: BackendLabels,
    /// `completed`, `refused` or `timed_out`.
    result: &'static str,
}

#[derive(Clone, Debug, EncodeLabelSet)]
struct FailureLabels {
    #[prometheus(flatten)]
    backend: BackendLabels,
    /// `refused` or `timeout`.
    reason: &'static str,
}

#[derive(Clone, Debug, EncodeLabelSet)]
struct StateLabels {
    #[prometheus(flatten)]
    backend: BackendLabels,
    /// `pending`, `established` or `closing`.
    state: &'static str,
}

#[derive(Clone, Debug, EncodeLabelSet)]
struct RotationLabels {
    #[prometheus(flatten)]
    backend: BackendLabels,
    /// `up`, `down`, `ejected`, `draining` or `disabled`.
    state: &'static str,
}

#[derive(Clone, Debug, EncodeLabelSet)]
struct TransitionLabels {
    #[prometheus(flatten)]
    backend: BackendLabels,
    /// The state entered.
    to: &'static str,
}

#[derive(Clone, Debug, EncodeLabelSet)]
struct TableLabels {
    /// `flows` (verified flows) or `pending` (handshakes, unverified misses, UDP).
    table: &'static str,
}

#[derive(Clone, Debug, EncodeLabelSet)]
struct VerdictLabels {
    reason: String,
}

#[derive(Clone, Debug, EncodeLabelSet)]
struct PathLabels {
    path: String,
}

/// Per backend: traffic, flows and the L4 signals rollouts are judged by.
#[derive(Default)]
struct BackendFamilies {
    packets: Vec<(DirectionLabels, u64)>,
    bytes: Vec<(DirectionLabels, u64)>,
    new_flows: Vec<(BackendLabels, u64)>,
    tcp_resets: Vec<(DirectionLabels, u64)>,
    live_flows: Vec<(BackendLabels, i64)>,
    flows: Vec<(StateLabels, i64)>,
    handshakes: Vec<(HandshakeLabels, u64)>,
    handshake_failures: Vec<(FailureLabels, u64)>,
    established_resets: Vec<(BackendLabels, u64)>,
    handshake_seconds: Vec<(BackendLabels, Signals)>,
    up: Vec<(BackendLabels, i64)>,
    effective_weight: Vec<(BackendLabels, f64)>,
    rotation: Vec<(RotationLabels, i64)>,
    transitions: Vec<(TransitionLabels, u64)>,
}

impl BackendFamilies {
    fn new(report: &StatusReport) -> Self {
        let mut families = Self::default();
        for service in &report.services {
            for color in &service.colors {
                for backend in &color.backends {
                    let labels = BackendLabels {
                        service: service.name.clone(),
                        color: color.color.name(),
                        backend: backend.address.to_string(),
                    };
                    for (direction, traffic) in [
                        ("to_backend", backend.to_backend),
                        ("to_client", backend.to_client),
                    ] {
                        let labels = DirectionLabels {
                            backend: labels.clone(),
                            direction,
                        };
                        families.packets.push((labels.clone(), traffic.packets));
                        families.bytes.push((labels.clone(), traffic.bytes));
                        families.tcp_resets.push((labels, traffic.tcp_resets));
                    }
                    families.new_flows.push((labels.clone(), backend.new_flows));
                    families
                        .live_flows
                        .push((labels.clone(), gauge(backend.live_flows)));
                    for (state, count) in [
                        ("pending", backend.flows.pending),
                        ("established", backend.flows.established),
                        ("closing", backend.flows.closing),
                    ] {
                        let labels = StateLabels {
                            backend: labels.clone(),
                            state,
                        };
                        families.flows.push((labels, gauge(count)));
                    }
                    let signals = &backend.signals;
                    for (result, count) in [
                        ("completed", signals.handshakes_completed),
                        ("refused", signals.handshakes_refused),
                        ("timed_out", signals.handshakes_timed_out),
                    ] {
                        let labels = HandshakeLabels {
                            backend: labels.clone(),
                            result,
                        };
                        families.handshakes.push((labels, count));
                    }
                    for (reason, count) in [
                        ("refused", signals.handshakes_refused),
                        ("timeout", signals.handshakes_timed_out),
                    ] {
                        let labels = FailureLabels {
                            backend: labels.clone(),
                            reason,
                        };
                        families.handshake_failures.push((labels, count));
                    }
                    families
                        .established_resets
                        .push((labels.clone(), signals.established_resets));
                    families
                        .up
                        .push((labels.clone(), i64::from(backend.state.in_rotation())));
                    families
                        .effective_weight
                        .push((labels.clone(), backend.effective_weight));
                    for state in BackendState::ALL {
                        families.rotation.push((
                            RotationLabels {
                                backend: labels.clone(),
                                state: state.name(),
                            },
                            i64::from(backend.state == state),
                        ));
                        families.transitions.push((
                            TransitionLabels {
                                backend: labels.clone(),
                                to: state.name(),
                            },
                            backend.transitions.get(&state).copied().unwrap_or(0),
                        ));
                    }
                    families.handshake_seconds.push((labels, signals.clone()));
                }
            }
        }
        families
    }

    fn encode(&self, encoder: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
        counters(
            encoder,
            "splitter_backend_packets",
            "Packets per backend and direction (to_backend: client to backend, to_client: replies)",
            &self.packets,
        )?;
        counters(
            encoder,
            "splitter_backend_bytes",
            "L3 bytes per backend and direction",
            &self.bytes,
        )?;
        counters(
            encoder,
            "splitter_backend_new_flows",
            "Flows pinned to the backend (new flows and TCP mid-flow misses)",
            &self.new_flows,
        )?;
        counters(
            encoder,
            "splitter_backend_tcp_resets",
            "TCP packets with RST per backend and direction",
            &self.tcp_resets,
        )?;
        gauges(
            encoder,
            "splitter_backend_live_flows",
            "Open connections to the backend now: established or closing flows",
            &self.live_flows,
        )?;
        gauges(
            encoder,
            "splitter_backend_flows",
            "Flows of the backend by state: pending (handshake in progress), established, closing (FIN seen one way)",
            &self.flows,
        )?;
        counters(
            encoder,
            "splitter_backend_handshakes",
            "TCP handshakes per backend by result (SYN-ACK, RST, SYN retransmitted)",
            &self.handshakes,
        )?;
        counters(
            encoder,
            "splitter_backend_handshake_failures",
            "Failed TCP handshakes per backend: refused (RST to the SYN) or timeout (SYN retransmitted without a SYN-ACK)",
            &self.handshake_failures,
        )?;
        counters(
            encoder,
            "splitter_backend_established_resets",
            "RSTs from the backend on flows past their handshake",
            &self.established_resets,
        )?;
        gauges(
            encoder,
            "splitter_backend_up",
            "1 if the backend takes new flows (in the new-flow table), 0 if not",
            &self.up,
        )?;
        gauges(
            encoder,
            "splitter_backend_effective_weight",
            "The Maglev weight the backend's share of its color's new flows follows now: its configured weight, less during slow start, 0 out of rotation",
            &self.effective_weight,
        )?;
        gauges(
            encoder,
            "splitter_backend_state",
            "1 for the backend's state: up, down (active checks), ejected (passive), draining or disabled (operator)",
            &self.rotation,
        )?;
        counters(
            encoder,
            "splitter_backend_transitions",
            "Backend state changes since the daemon started, by the state entered",
            &self.transitions,
        )?;
        handshake_seconds(encoder, &self.handshake_seconds)
    }
}

/// Per service: the weight and the flow-table misses.
struct ServiceFamilies {
    green_weight_ratio: Vec<(ServiceLabels, f64)>,
    flow_misses: Vec<(ServiceLabels, u64)>,
    stable: Vec<(ReleaseLabels, i64)>,
    ambiguous_misses: Vec<(ServiceLabels, u64)>,
    previews: Vec<(PreviewLabels, i64)>,
}

impl ServiceFamilies {
    fn new(report: &StatusReport) -> Self {
        let labels = |name: &str| ServiceLabels {
            service: name.to_owned(),
        };
        Self {
            green_weight_ratio: report
                .services
                .iter()
                .map(|service| {
                    let ratio = f64::from(service.green_weight) / f64::from(WEIGHT_SCALE);
                    (labels(&service.name), ratio)
                })
                .collect(),
            flow_misses: report
                .services
                .iter()
                .map(|service| (labels(&service.name), service.flow_misses))
                .collect(),
            stable: report
                .services
                .iter()
                .flat_map(|service| {
                    service.colors.iter().map(|color| {
                        let labels = ReleaseLabels {
                            service: service.name.clone(),
                            color: color.color.name(),
                            release: color.release.clone().unwrap_or_default(),
                        };
                        (labels, i64::from(color.color == service.stable))
                    })
                })
                .collect(),
            ambiguous_misses: report
                .services
                .iter()
                .map(|service| (labels(&service.name), service.ambiguous_misses))
                .collect(),
            previews: report
                .services
                .iter()
                .filter_map(|service| {
                    let labels = PreviewLabels {
                        service: service.name.clone(),
                        preview_of: service.preview_of.clone()?,
                    };
                    Some((labels, 1))
                })
                .collect(),
        }
    }

    fn encode(&self, encoder: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
        gauges(
            encoder,
            "splitter_service_green_weight_ratio",
            "Share of new flows sent to green (0..1)",
            &self.green_weight_ratio,
        )?;
        gauges(
            encoder,
            "splitter_service_stable",
            "1 for the service's stable color (a rollout moves traffic away from it), 0 for the other; release: the config's label",
            &self.stable,
        )?;
        counters(
            encoder,
            "splitter_service_flow_misses",
            "TCP packets without SYN that found no flow (evicted, or begun on another host); the best signal of evicted established flows",
            &self.flow_misses,
        )?;
        counters(
            encoder,
            "splitter_service_ambiguous_misses",
            "Mid-flow misses whose hash the weights of the miss_hold window disagree on (steered by the oldest)",
            &self.ambiguous_misses,
        )?;
        gauges(
            encoder,
            "splitter_service_preview",
            "1 for a preview address (service = its own name, counted apart), preview_of = the service it previews",
            &self.previews,
        )
    }
}

/// The programs as a whole: verdicts, forwarding paths, the flow table.
struct ProgramFamilies {
    forwarded: Vec<(PathLabels, u64)>,
    verdicts: Vec<(VerdictLabels, u64)>,
    table_entries: Vec<(TableLabels, i64)>,
    table_capacity: Vec<(TableLabels, i64)>,
    state_persist_errors: u64,
    state_behind: i64,
}

impl ProgramFamilies {
    fn new(report: &StatusReport) -> Self {
        let fill = report.daemon.flow_tables;
        let tables = fill.labelled();
        Self {
            forwarded: report
                .forwarding
                .iter()
                .map(|(path, count)| (PathLabels { path: path.clone() }, *count))
                .collect(),
            verdicts: report
                .verdicts
                .iter()
                .map(|(reason, count)| {
                    let labels = VerdictLabels {
                        reason: reason.clone(),
                    };
                    (labels, *count)
                })
                .collect(),
            table_entries: tables
                .iter()
                .map(|(table, fill)| (TableLabels { table }, gauge(fill.entries)))
                .collect(),
            table_capacity: tables
                .iter()
                .map(|(table, fill)| (TableLabels { table }, gauge(fill.capacity)))
                .collect(),
            state_persist_errors: report.daemon.state_file.errors_total,
            state_behind: i64::from(report.daemon.state_file.behind),
        }
    }

    fn encode(&self, encoder: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
        counters(
            encoder,
            "splitter_forwarded_packets",
            "Rewritten client packets by forwarding path (xdp_redirect: fast path, kernel: routing)",
            &self.forwarded,
        )?;
        counters(
            encoder,
            "splitter_verdicts",
            "Packets seen by the XDP and TC programs, by what they did and why",
            &self.verdicts,
        )?;
        gauges(
            encoder,
            "splitter_flow_table_entries",
            "Entries per flow table (flows/flows6: verified IPv4/IPv6 flows; pending/pending6: handshakes, unverified misses, UDP)",
            &self.table_entries,
        )?;
        gauges(
            encoder,
            "splitter_flow_table_capacity",
            "Capacity per flow table",
            &self.table_capacity,
        )?;
        counters(
            encoder,
            "splitter_state_persist_errors",
            "Failed saves of the state file (state_dir/state.json) since the daemon started",
            &[(Unlabelled::default(), self.state_persist_errors)],
        )?;
        gauges(
            encoder,
            "splitter_state_persist_behind",
            "1 while the state file is older than the weights in force (a save failed; retried every second)",
            &[(Unlabelled::default(), self.state_behind)],
        )
    }
}

/// The data plane's counters, taken from the latest snapshot at each scrape.
#[derive(Debug, Default)]
pub struct DataplaneCollector {
    snapshot: Mutex<StatusReport>,
}

impl DataplaneCollector {
    pub fn set(&self, report: StatusReport) {
        *self
            .snapshot
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = report;
    }
}

impl Collector for DataplaneCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let report = self
            .snapshot
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        BackendFamilies::new(&report).encode(&mut encoder)?;
        ServiceFamilies::new(&report).encode(&mut encoder)?;
        ProgramFamilies::new(&report).encode(&mut encoder)
    }
}

/// A count as a gauge value (saturating: counts never reach `i64::MAX`).
fn gauge(count: u64) -> i64 {
    i64::try_from(count).unwrap_or(i64::MAX)
}

fn counters<L: EncodeLabelSet>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    series: &[(L, u64)],
) -> Result<(), std::fmt::Error> {
    let mut metric = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
    for (labels, value) in series {
        ConstCounter::new(*value).encode(metric.encode_family(labels)?)?;
    }
    Ok(())
}

fn gauges<L: EncodeLabelSet, V: EncodeGaugeValue + Copy + std::fmt::Debug>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    series: &[(L, V)],
) -> Result<(), std::fmt::Error> {
    let mut metric = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
    for (labels, value) in series {
        ConstGauge::new(*value).encode(metric.encode_family(labels)?)?;
    }
    Ok(())
}

/// `splitter_backend_handshake_seconds`: SYN → SYN-ACK time per backend, from the kernel's
/// buckets (a prometheus-client `Histogram` cannot be set from counts, only observed).
fn handshake_seconds(
    encoder: &mut DescriptorEncoder,
    series: &[(BackendLabels, Signals)],
) -> Result<(), std::fmt::Error> {
    let mut metric = encoder.encode_descriptor(
        "splitter_backend_handshake_seconds",
        "Time from the client's SYN to the backend's SYN-ACK",
        None,
        MetricType::Histogram,
    )?;
    for (labels, signals) in series {
        let counts = &signals.handshake_latency_buckets;
        #[expect(clippy::cast_precision_loss, reason = "bucket bounds are small")]
        let buckets: Vec<(f64, u64)> = HANDSHAKE_BUCKETS_US
            .iter()
            .map(|bound| *bound as f64 / 1e6)
            .chain([f64::INFINITY])
            .zip(counts.iter().copied())
            .collect();
        let count = counts.iter().sum();
        #[expect(clippy::cast_precision_loss, reason = "a sum of seconds for display")]
        let sum = signals.handshake_latency_sum_ns as f64 / 1e9;
        metric
            .encode_family(labels)?
            .encode_histogram::<NoLabelSet>(sum, count, &buckets, None)?;
    }
    Ok(())
}
