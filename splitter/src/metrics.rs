//! Prometheus metrics: one `prometheus-client` registry, encoded in the Prometheus text format
//! (0.0.4) by a tiny read-only HTTP endpoint that answers `GET /metrics` and nothing else.
//!
//! Two components own metrics here: the data plane's counters ([`DataplaneCollector`], read
//! from the kernel maps at each scrape, through the same snapshot `splitter status` shows) and
//! the daemon's own ([`DaemonMetrics`]: control requests and reloads). The metric names are
//! fixed (dashboards rely on them) and listed in the README.

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric as _},
    metrics::{
        MetricType,
        counter::{ConstCounter, Counter},
        family::Family,
        gauge::ConstGauge,
    },
    registry::Registry,
};
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::{TcpListener, TcpStream},
};

use crate::{control::protocol::StatusReport, daemon::shared::Shared};

type Labels = Vec<(&'static str, String)>;

/// The daemon's own counters. Cheap to clone (shared handles).
#[derive(Clone, Debug, Default)]
pub struct DaemonMetrics {
    requests: Family<Labels, Counter>,
    reloads: Family<Labels, Counter>,
}

impl DaemonMetrics {
    pub fn request(&self, command: &'static str, ok: bool) {
        self.requests
            .get_or_create(&vec![
                ("command", command.to_owned()),
                ("result", result(ok)),
            ])
            .inc();
    }

    pub fn reload(&self, ok: bool) {
        self.reloads
            .get_or_create(&vec![("result", result(ok))])
            .inc();
    }
}

fn result(ok: bool) -> String {
    if ok { "ok" } else { "error" }.to_owned()
}

/// The data plane's counters, taken from the latest snapshot at each scrape.
#[derive(Debug, Default)]
pub struct DataplaneCollector {
    snapshot: Mutex<StatusReport>,
}

impl Collector for DataplaneCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let report = self.snapshot.lock().unwrap_or_else(|p| p.into_inner());
        let mut packets = Vec::new();
        let mut bytes = Vec::new();
        let mut resets = Vec::new();
        let mut new_flows = Vec::new();
        let mut live = Vec::new();
        let mut weights = Vec::new();
        let mut misses = Vec::new();
        let mut handshakes = Vec::new();
        let mut handshake_failures = Vec::new();
        let mut established_resets = Vec::new();
        let mut latencies = Vec::new();
        for service in &report.services {
            let name = || ("service", service.name.clone());
            weights.push((
                vec![name()],
                f64::from(service.green_weight) / f64::from(splitter_common::WEIGHT_SCALE),
            ));
            misses.push((vec![name()], service.flow_misses));
            for color in &service.colors {
                for backend in &color.backends {
                    let labels: Labels = vec![
                        name(),
                        ("color", color.color.name().to_owned()),
                        ("backend", backend.address.to_string()),
                    ];
                    for (direction, traffic) in [
                        ("to_backend", backend.to_backend),
                        ("to_client", backend.to_client),
                    ] {
                        let mut labels = labels.clone();
                        labels.push(("direction", direction.to_owned()));
                        packets.push((labels.clone(), traffic.packets));
                        bytes.push((labels.clone(), traffic.bytes));
                        resets.push((labels, traffic.tcp_resets));
                    }
                    new_flows.push((labels.clone(), backend.new_flows));
                    live.push((labels.clone(), backend.live_flows as i64));
                    let signals = &backend.signals;
                    for (result, count) in [
                        ("completed", signals.handshakes_completed),
                        ("refused", signals.handshakes_refused),
                        ("timed_out", signals.handshakes_timed_out),
                    ] {
                        let mut labels = labels.clone();
                        labels.push(("result", result.to_owned()));
                        handshakes.push((labels, count));
                    }
                    for (reason, count) in [
                        ("refused", signals.handshakes_refused),
                        ("timeout", signals.handshakes_timed_out),
                    ] {
                        let mut labels = labels.clone();
                        labels.push(("reason", reason.to_owned()));
                        handshake_failures.push((labels, count));
                    }
                    established_resets.push((labels.clone(), signals.established_resets));
                    latencies.push((labels, signals.clone()));
                }
            }
        }
        let verdicts: Vec<(Labels, u64)> = report
            .verdicts
            .iter()
            .map(|(reason, count)| (vec![("reason", reason.clone())], *count))
            .collect();
        counters(
            &mut encoder,
            "splitter_backend_packets",
            "Packets per backend and direction (to_backend: client to backend, to_client: replies)",
            &packets,
        )?;
        counters(
            &mut encoder,
            "splitter_backend_bytes",
            "L3 bytes per backend and direction",
            &bytes,
        )?;
        counters(
            &mut encoder,
            "splitter_backend_new_flows",
            "Flows pinned to the backend (new flows and TCP mid-flow misses)",
            &new_flows,
        )?;
        counters(
            &mut encoder,
            "splitter_backend_tcp_resets",
            "TCP packets with RST per backend and direction",
            &resets,
        )?;
        gauges(
            &mut encoder,
            "splitter_backend_live_flows",
            "Flows pinned to the backend now (flow table entries)",
            &live,
        )?;
        gauges(
            &mut encoder,
            "splitter_service_green_weight_ratio",
            "Share of new flows sent to green (0..1)",
            &weights,
        )?;
        counters(
            &mut encoder,
            "splitter_service_flow_misses",
            "TCP packets without SYN that found no pinned flow",
            &misses,
        )?;
        counters(
            &mut encoder,
            "splitter_backend_handshakes",
            "TCP handshakes per backend by result (SYN-ACK, RST, SYN retransmitted)",
            &handshakes,
        )?;
        counters(
            &mut encoder,
            "splitter_backend_handshake_failures",
            "Failed TCP handshakes per backend: refused (RST to the SYN) or timeout (SYN retransmitted without a SYN-ACK)",
            &handshake_failures,
        )?;
        counters(
            &mut encoder,
            "splitter_backend_established_resets",
            "RSTs from the backend on flows past their handshake",
            &established_resets,
        )?;
        handshake_latency(&mut encoder, &latencies)?;
        let forwarding: Vec<(Labels, u64)> = report
            .forwarding
            .iter()
            .map(|(path, count)| (vec![("path", path.clone())], *count))
            .collect();
        counters(
            &mut encoder,
            "splitter_forwarded_packets",
            "Rewritten client packets by forwarding path (xdp_redirect: fast path, kernel: routing)",
            &forwarding,
        )?;
        counters(
            &mut encoder,
            "splitter_verdicts",
            "Packets seen by the XDP and TC programs, by what they did and why",
            &verdicts,
        )?;
        gauges(
            &mut encoder,
            "splitter_flow_table_entries",
            "Entries in the flow table (all services)",
            &[(Vec::new(), report.daemon.pinned_flows as i64)],
        )?;
        gauges(
            &mut encoder,
            "splitter_flow_table_size",
            "Capacity of the flow table",
            &[(Vec::new(), i64::from(report.daemon.flow_table_size))],
        )
    }
}

fn counters(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    values: &[(Labels, u64)],
) -> Result<(), std::fmt::Error> {
    let mut metric = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
    for (labels, value) in values {
        ConstCounter::new(*value).encode(metric.encode_family(labels)?)?;
    }
    Ok(())
}

/// `splitter_backend_handshake_seconds`: SYN → SYN-ACK time per backend.
fn handshake_latency(
    encoder: &mut DescriptorEncoder,
    values: &[(Labels, crate::control::protocol::Signals)],
) -> Result<(), std::fmt::Error> {
    use splitter_common::signals::HANDSHAKE_BUCKETS_US;
    let mut metric = encoder.encode_descriptor(
        "splitter_backend_handshake_seconds",
        "Time from the client's SYN to the backend's SYN-ACK",
        None,
        MetricType::Histogram,
    )?;
    for (labels, signals) in values {
        let counts = &signals.handshake_latency_buckets;
        let buckets: Vec<(f64, u64)> = HANDSHAKE_BUCKETS_US
            .iter()
            .map(|bound| *bound as f64 / 1e6)
            .chain([f64::INFINITY])
            .zip(counts.iter().copied())
            .collect();
        let count = counts.iter().sum();
        let sum = signals.handshake_latency_sum_ns as f64 / 1e9;
        metric
            .encode_family(labels)?
            .encode_histogram::<prometheus_client::encoding::NoLabelSet>(
                sum, count, &buckets, None,
            )?;
    }
    Ok(())
}

fn gauges<N: prometheus_client::encoding::EncodeGaugeValue + Copy + std::fmt::Debug>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    values: &[(Labels, N)],
) -> Result<(), std::fmt::Error> {
    let mut metric = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
    for (labels, value) in values {
        ConstGauge::new(*value).encode(metric.encode_family(labels)?)?;
    }
    Ok(())
}

/// The registry and the data plane's snapshot it reads.
pub struct Metrics {
    registry: Registry,
    dataplane: Arc<DataplaneCollector>,
}

impl Metrics {
    pub fn new(daemon: &DaemonMetrics) -> Self {
        let mut registry = Registry::default();
        let dataplane = Arc::new(DataplaneCollector::default());
        registry.register_collector(Box::new(dataplane.clone()));
        registry.register(
            "splitter_control_requests",
            "Control socket requests by command and result",
            daemon.requests.clone(),
        );
        registry.register(
            "splitter_config_reloads",
            "Configuration reloads (reload command and SIGHUP) by result",
            daemon.reloads.clone(),
        );
        Self {
            registry,
            dataplane,
        }
    }

    /// The text exposition of `report` and the daemon's counters.
    pub fn render(&self, report: StatusReport) -> String {
        *self
            .dataplane
            .snapshot
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = report;
        let mut text = String::new();
        prometheus_client::encoding::prometheus_text::encode(&mut text, &self.registry)
            .expect("writing to a String does not fail");
        text
    }
}

/// Binds the metrics endpoint.
pub async fn bind(address: std::net::SocketAddr) -> Result<TcpListener, std::io::Error> {
    TcpListener::bind(address).await
}

/// Serves `GET /metrics` until the task is dropped.
pub async fn serve(listener: TcpListener, metrics: Arc<Metrics>, shared: Arc<Shared>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let metrics = metrics.clone();
        let shared = shared.clone();
        tokio::spawn(async move {
            let _ =
                tokio::time::timeout(Duration::from_secs(10), answer(stream, &metrics, &shared))
                    .await;
        });
    }
}

/// Reads one request head and answers it; the connection is closed after the answer.
async fn answer(mut stream: TcpStream, metrics: &Metrics, shared: &Shared) -> std::io::Result<()> {
    let mut head = Vec::with_capacity(1024);
    let mut buffer = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && !head.windows(2).any(|w| w == b"\n\n") {
        let read = stream.read(&mut buffer).await?;
        if read == 0 || head.len() + read > 8192 {
            break;
        }
        head.extend_from_slice(&buffer[..read]);
    }
    let head = String::from_utf8_lossy(&head);
    let mut words = head.lines().next().unwrap_or("").split_whitespace();
    let (method, target) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
    let path = target.split('?').next().unwrap_or("");
    let (status, content_type, body) = match (method, path) {
        ("GET", "/metrics") => match shared.status().await {
            Ok(report) => (
                "200 OK",
                prometheus_client::encoding::prometheus_text::CONTENT_TYPE,
                metrics.render(report),
            ),
            Err(error) => (
                "503 Service Unavailable",
                "text/plain; charset=utf-8",
                format!("{error}\n"),
            ),
        },
        (_, "/metrics") => (
            "405 Method Not Allowed",
            "text/plain; charset=utf-8",
            "only GET\n".to_owned(),
        ),
        _ => (
            "404 Not Found",
            "text/plain; charset=utf-8",
            "metrics are at GET /metrics\n".to_owned(),
        ),
    };
    let allow = if status.starts_with("405") {
        "Allow: GET\r\n"
    } else {
        ""
    };
    let response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n{allow}Connection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(response.as_bytes()).await?;
    stream.shutdown().await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        config::{CohortSetting, ColorName},
        control::protocol::{BackendStatus, ColorStatus, ServiceStatus, Signals, Traffic},
        dataplane::services::Protocol,
    };

    fn backend(address: &str, id: u32, n: u64) -> BackendStatus {
        BackendStatus {
            address: address.parse().unwrap(),
            id,
            live_flows: n,
            new_flows: 2 * n,
            new_flows_per_second: None,
            to_backend: Traffic {
                packets: 10 * n,
                bytes: 1000 * n,
                tcp_resets: n,
            },
            to_client: Traffic {
                packets: 9 * n,
                bytes: 900 * n,
                tcp_resets: 0,
            },
            signals: Signals {
                handshakes_completed: 3 * n,
                handshakes_refused: n,
                handshake_latency_buckets: {
                    let mut buckets = vec![0; 16];
                    buckets[1] = 2 * n; // <= 100 us
                    buckets[15] = n; // +Inf
                    buckets
                },
                handshake_latency_sum_ns: 5_000_000,
                ..Signals::default()
            },
        }
    }

    /// The exact lines dashboards rely on.
    #[test]
    fn exposition_lines() {
        let daemon = DaemonMetrics::default();
        let metrics = Metrics::new(&daemon);
        daemon.request("set-weight", true);
        daemon.reload(false);
        let mut report = StatusReport::default();
        report.daemon.pinned_flows = 3;
        report.daemon.flow_table_size = 1024;
        report.verdicts.insert("new_flow".into(), 7);
        report.forwarding.insert("kernel".into(), 11);
        report.services.push(ServiceStatus {
            name: "web".into(),
            address: "198.18.100.10:80".parse().unwrap(),
            protocol: Protocol::Tcp,
            cohort: CohortSetting::Flow,
            green_weight: 125_000,
            measured_green_share: None,
            window_seconds: 0.0,
            window_new_flows: 0,
            flow_misses: 4,
            colors: vec![
                ColorStatus {
                    color: ColorName::Blue,
                    backends: vec![backend("198.18.1.10:8080", 0, 1)],
                },
                ColorStatus {
                    color: ColorName::Green,
                    backends: vec![backend("198.18.2.10:8080", 1, 2)],
                },
            ],
        });
        let text = metrics.render(report);
        let lines: Vec<&str> = text.lines().collect();
        for expected in [
            "# TYPE splitter_backend_packets_total counter",
            r#"splitter_backend_packets_total{service="web",color="blue",backend="198.18.1.10:8080",direction="to_backend"} 10"#,
            r#"splitter_backend_packets_total{service="web",color="green",backend="198.18.2.10:8080",direction="to_client"} 18"#,
            r#"splitter_backend_bytes_total{service="web",color="blue",backend="198.18.1.10:8080",direction="to_backend"} 1000"#,
            r#"splitter_backend_new_flows_total{service="web",color="green",backend="198.18.2.10:8080"} 4"#,
            r#"splitter_backend_tcp_resets_total{service="web",color="blue",backend="198.18.1.10:8080",direction="to_backend"} 1"#,
            r#"splitter_backend_tcp_resets_total{service="web",color="blue",backend="198.18.1.10:8080",direction="to_client"} 0"#,
            "# TYPE splitter_backend_live_flows gauge",
            r#"splitter_backend_live_flows{service="web",color="green",backend="198.18.2.10:8080"} 2"#,
            r#"splitter_service_green_weight_ratio{service="web"} 0.125"#,
            r#"splitter_service_flow_misses_total{service="web"} 4"#,
            r#"splitter_verdicts_total{reason="new_flow"} 7"#,
            "splitter_flow_table_entries 3",
            "splitter_flow_table_size 1024",
            r#"splitter_backend_handshakes_total{service="web",color="blue",backend="198.18.1.10:8080",result="completed"} 3"#,
            r#"splitter_backend_handshakes_total{service="web",color="green",backend="198.18.2.10:8080",result="refused"} 2"#,
            r#"splitter_backend_handshake_failures_total{service="web",color="green",backend="198.18.2.10:8080",reason="refused"} 2"#,
            r#"splitter_backend_established_resets_total{service="web",color="blue",backend="198.18.1.10:8080"} 0"#,
            "# TYPE splitter_backend_handshake_seconds histogram",
            r#"splitter_backend_handshake_seconds_bucket{service="web",color="blue",backend="198.18.1.10:8080",le="5e-05"} 0"#,
            r#"splitter_backend_handshake_seconds_bucket{service="web",color="blue",backend="198.18.1.10:8080",le="0.0001"} 2"#,
            r#"splitter_backend_handshake_seconds_bucket{service="web",color="blue",backend="198.18.1.10:8080",le="2.5"} 2"#,
            r#"splitter_backend_handshake_seconds_bucket{service="web",color="blue",backend="198.18.1.10:8080",le="+Inf"} 3"#,
            r#"splitter_backend_handshake_seconds_sum{service="web",color="blue",backend="198.18.1.10:8080"} 0.005"#,
            r#"splitter_backend_handshake_seconds_count{service="web",color="blue",backend="198.18.1.10:8080"} 3"#,
            r#"splitter_forwarded_packets_total{path="kernel"} 11"#,
            r#"splitter_control_requests_total{command="set-weight",result="ok"} 1"#,
            r#"splitter_config_reloads_total{result="error"} 1"#,
        ] {
            assert!(
                lines.contains(&expected),
                "missing line `{expected}` in:\n{text}"
            );
        }
    }
}
