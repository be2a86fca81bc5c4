use super::*;
use crate::{
    config::{CohortSetting, ColorName},
    control::protocol::{
        BackendStatus, ColorStatus, FlowStates, FlowTables, ServiceStatus, Signals, TableFill,
        Traffic,
    },
    dataplane::services::Protocol,
    health::BackendState,
};

fn backend(address: &str, id: u32, n: u64) -> BackendStatus {
    BackendStatus {
        address: address.parse().unwrap(),
        id,
        live_flows: n,
        flows: FlowStates {
            pending: 5 * n,
            established: n,
            closing: 0,
        },
        new_flows: 2 * n,
        new_flows_per_second: None,
        to_backend_rate: None,
        to_client_rate: None,
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
        // Backend 1 is draining (one transition), backend 0 up.
        state: if id == 1 {
            BackendState::Draining
        } else {
            BackendState::Up
        },
        state_reason: String::new(),
        state_since_unix_ms: 0,
        transitions: BackendState::ALL
            .iter()
            .map(|state| {
                (
                    *state,
                    u64::from(id == 1 && *state == BackendState::Draining),
                )
            })
            .collect(),
        // Backend 0 in slow start at 40 % of weight 2; backend 1 (draining) takes none.
        weight: 2,
        effective_weight: if id == 1 { 0.0 } else { 0.8 },
        slow_start_percent: (id == 0).then_some(40.0),
    }
}

/// The exact lines dashboards rely on.
#[test]
#[expect(
    clippy::too_many_lines,
    reason = "one expected exposition line per line"
)]
fn exposition_lines() {
    let daemon = DaemonMetrics::default();
    let metrics = Metrics::new(&daemon);
    daemon.request("set-weight", true);
    daemon.reload(false);
    let mut report = StatusReport::default();
    report.daemon.pinned_flows = 3;
    report.daemon.flow_table_size = 1024;
    report.daemon.flow_tables = FlowTables {
        flows: TableFill {
            entries: 3,
            capacity: 1024,
        },
        pending: TableFill {
            entries: 9,
            capacity: 256,
        },
        flows6: TableFill {
            entries: 1,
            capacity: 1024,
        },
        pending6: TableFill {
            entries: 0,
            capacity: 256,
        },
    };
    report.verdicts.insert("new_flow".into(), 7);
    report.forwarding.insert("kernel".into(), 11);
    report.services.push(ServiceStatus {
        name: "web".into(),
        preview_of: None,
        address: "198.18.100.10:80".parse().unwrap(),
        protocol: Protocol::Tcp,
        cohort: CohortSetting::Flow,
        green_weight: 125_000,
        green_weight_percent: 12.5,
        stable: ColorName::Green,
        measured_green_share: None,
        settling: false,
        window_seconds: 0.0,
        window_new_flows: 0,
        flow_misses: 4,
        ambiguous_misses: 2,
        colors: vec![
            ColorStatus {
                color: ColorName::Blue,
                release: Some("v3".into()),
                stable: false,
                weight_percent: 87.5,
                live_flows: 1,
                backends: vec![backend("198.18.1.10:8080", 0, 1)],
            },
            ColorStatus {
                color: ColorName::Green,
                release: None,
                stable: true,
                weight_percent: 12.5,
                live_flows: 2,
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
        "# TYPE splitter_backend_up gauge",
        r#"splitter_backend_up{service="web",color="blue",backend="198.18.1.10:8080"} 1"#,
        r#"splitter_backend_up{service="web",color="green",backend="198.18.2.10:8080"} 0"#,
        "# TYPE splitter_backend_effective_weight gauge",
        r#"splitter_backend_effective_weight{service="web",color="blue",backend="198.18.1.10:8080"} 0.8"#,
        r#"splitter_backend_effective_weight{service="web",color="green",backend="198.18.2.10:8080"} 0.0"#,
        r#"splitter_backend_state{service="web",color="green",backend="198.18.2.10:8080",state="draining"} 1"#,
        r#"splitter_backend_state{service="web",color="green",backend="198.18.2.10:8080",state="up"} 0"#,
        "# TYPE splitter_backend_transitions_total counter",
        r#"splitter_backend_transitions_total{service="web",color="green",backend="198.18.2.10:8080",to="draining"} 1"#,
        r#"splitter_backend_transitions_total{service="web",color="blue",backend="198.18.1.10:8080",to="down"} 0"#,
        "# TYPE splitter_backend_live_flows gauge",
        r#"splitter_backend_live_flows{service="web",color="green",backend="198.18.2.10:8080"} 2"#,
        r#"splitter_service_green_weight_ratio{service="web"} 0.125"#,
        "# TYPE splitter_service_stable gauge",
        r#"splitter_service_stable{service="web",color="blue",release="v3"} 0"#,
        r#"splitter_service_stable{service="web",color="green",release=""} 1"#,
        r#"splitter_backend_flows{service="web",color="green",backend="198.18.2.10:8080",state="pending"} 10"#,
        r#"splitter_backend_flows{service="web",color="green",backend="198.18.2.10:8080",state="established"} 2"#,
        r#"splitter_backend_flows{service="web",color="green",backend="198.18.2.10:8080",state="closing"} 0"#,
        r#"splitter_service_flow_misses_total{service="web"} 4"#,
        r#"splitter_service_ambiguous_misses_total{service="web"} 2"#,
        r#"splitter_verdicts_total{reason="new_flow"} 7"#,
        r#"splitter_flow_table_entries{table="flows"} 3"#,
        r#"splitter_flow_table_entries{table="pending"} 9"#,
        r#"splitter_flow_table_capacity{table="flows"} 1024"#,
        r#"splitter_flow_table_capacity{table="pending"} 256"#,
        r#"splitter_flow_table_entries{table="flows6"} 1"#,
        r#"splitter_flow_table_capacity{table="pending6"} 256"#,
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

/// OpenMetrics text, when asked for: same names, `# EOF` at the end.
#[test]
fn openmetrics_exposition() {
    let daemon = DaemonMetrics::default();
    let metrics = Metrics::new(&daemon);
    daemon.request("status", true);
    let mut report = StatusReport::default();
    report.daemon.flow_tables.flows.capacity = 1024;
    let text = metrics.render_as(report, Format::OpenMetrics);
    let lines: Vec<&str> = text.lines().collect();
    for expected in [
        "# TYPE splitter_control_requests counter",
        r#"splitter_control_requests_total{command="status",result="ok"} 1"#,
        r#"splitter_flow_table_capacity{table="flows"} 1024"#,
        r#"splitter_flow_table_entries{table="pending"} 0"#,
        "# EOF",
    ] {
        assert!(
            lines.contains(&expected),
            "missing line `{expected}` in:\n{text}"
        );
    }
}

/// The daemon's counters have a zero series per command and result before the first request.
#[test]
fn daemon_counters_start_at_zero() {
    let text = Metrics::new(&DaemonMetrics::default()).render(StatusReport::default());
    let lines: Vec<&str> = text.lines().collect();
    for command in crate::control::protocol::Request::NAMES {
        for result in ["ok", "error"] {
            let expected = format!(
                r#"splitter_control_requests_total{{command="{command}",result="{result}"}} 0"#
            );
            assert!(
                lines.contains(&expected.as_str()),
                "missing `{expected}` in:\n{text}"
            );
        }
    }
    for expected in [
        r#"splitter_config_reloads_total{result="ok"} 0"#,
        r#"splitter_config_reloads_total{result="error"} 0"#,
    ] {
        assert!(
            lines.contains(&expected),
            "missing `{expected}` in:\n{text}"
        );
    }
}
