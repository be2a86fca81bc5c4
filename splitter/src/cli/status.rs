//! `splitter status`: the human view of a status snapshot.

use std::{fmt::Write as _, time::Duration};

use comfy_table::{CellAlignment, ColumnConstraint, ContentArrangement, Table, presets::NOTHING};

use crate::{control::protocol::StatusReport, units::ppm_to_percent};

const HEADER: [&str; 17] = [
    "COLOR",
    "BACKEND",
    "STATE",
    "WEIGHT",
    "EFFECTIVE",
    "LIVE",
    "NEW/S",
    "PPS_IN",
    "PPS_OUT",
    "BPS_IN",
    "BPS_OUT",
    "PKTS_IN",
    "PKTS_OUT",
    "BYTES_IN",
    "BYTES_OUT",
    "RST_IN",
    "RST_OUT",
];
/// Narrowest width of each column (the widths of the fixed-width table this replaced), so the
/// usual view keeps its shape and only longer cells (IPv6 backends) widen their column.
const MIN_WIDTHS: [u16; 17] = [5, 22, 8, 6, 9, 8, 8, 8, 8, 10, 10, 10, 10, 12, 12, 6, 6];
/// Columns from this one on are right-aligned (numbers).
const FIRST_NUMBER: usize = 3;

/// The human view of a status snapshot.
#[expect(
    clippy::too_many_lines,
    reason = "the status view, one block per line of output"
)]
pub fn render_status(report: &StatusReport) -> String {
    let daemon = &report.daemon;
    let mut text = String::new();
    let _ = writeln!(
        text,
        "splitter {}  pid {}  up {}  data plane {} ({})  interfaces {}\n  flow tables: verified {}/{} (IPv6 {}/{}), pending {}/{} (IPv6 {}/{})  hash seed {}",
        daemon.version,
        daemon.pid,
        uptime(daemon.uptime_seconds),
        daemon.dataplane.name(),
        daemon.bpffs.display(),
        daemon.interfaces.join(","),
        daemon.flow_tables.flows.entries,
        daemon.flow_tables.flows.capacity,
        daemon.flow_tables.flows6.entries,
        daemon.flow_tables.flows6.capacity,
        daemon.flow_tables.pending.entries,
        daemon.flow_tables.pending.capacity,
        daemon.flow_tables.pending6.entries,
        daemon.flow_tables.pending6.capacity,
        daemon.hash_seed_source.name(),
    );
    if daemon.state_file.behind {
        let _ = writeln!(
            text,
            "WARNING: the state file is behind the weights in force (they are in the kernel; retried every second): {}",
            daemon
                .state_file
                .last_error
                .as_deref()
                .unwrap_or("not saved yet")
        );
    }
    if let Some(fleet) = &report.fleet {
        text.push_str(&super::fleet::status_line(fleet));
    }
    for service in &report.services {
        let measured = match service.measured_green_share {
            Some(share) => format!(
                "{:.2}% of {} new flows in the last {:.0}s",
                share * 100.0,
                service.window_new_flows,
                service.window_seconds
            ),
            None if service.settling => "settling (the weight just changed)".to_owned(),
            None => "no new flows in the last 10s".to_owned(),
        };
        let releases: Vec<String> = service
            .colors
            .iter()
            .map(|color| {
                format!(
                    "{} {}{}",
                    color.color.name(),
                    color.release.as_deref().unwrap_or("-"),
                    if color.stable { " (stable)" } else { "" }
                )
            })
            .collect();
        let live = service
            .colors
            .iter()
            .map(|color| format!("{} {}", color.color, color.live_flows))
            .collect::<Vec<_>>()
            .join(", ");
        let _ = writeln!(
            text,
            "\n{}  {}/{}  cohort {}  {}\n  green weight {}%   measured green share {}\n  live connections: {}   flow misses {} (ambiguous {})",
            service.name,
            service.address,
            service.protocol.name(),
            service.cohort.name(),
            releases.join(", "),
            ppm_to_percent(service.green_weight),
            measured,
            live,
            service.flow_misses,
            service.ambiguous_misses,
        );
        let mut table = backend_table();
        for color in &service.colors {
            for backend in &color.backends {
                let rate = backend
                    .new_flows_per_second
                    .map_or("-".to_owned(), |rate| format!("{rate:.1}"));
                let per_second = |rate: Option<crate::control::protocol::TrafficRate>,
                                  bytes: bool| {
                    rate.map_or("-".to_owned(), |rate| {
                        let value = if bytes {
                            rate.bytes_per_second
                        } else {
                            rate.packets_per_second
                        };
                        format!("{value:.0}")
                    })
                };
                table.add_row(vec![
                    color.color.name().to_owned(),
                    backend.address.to_string(),
                    state(backend),
                    backend.weight.to_string(),
                    weight(backend.effective_weight),
                    backend.live_flows.to_string(),
                    rate,
                    per_second(backend.to_backend_rate, false),
                    per_second(backend.to_client_rate, false),
                    per_second(backend.to_backend_rate, true),
                    per_second(backend.to_client_rate, true),
                    backend.to_backend.packets.to_string(),
                    backend.to_client.packets.to_string(),
                    backend.to_backend.bytes.to_string(),
                    backend.to_client.bytes.to_string(),
                    backend.to_backend.tcp_resets.to_string(),
                    backend.to_client.tcp_resets.to_string(),
                ]);
            }
        }
        for line in table.lines() {
            let _ = writeln!(text, "  {}", line.trim_end());
        }
        // Backends out of rotation: what, why, since when (up ones need no line).
        for color in &service.colors {
            for backend in &color.backends {
                if backend.state.in_rotation() {
                    continue;
                }
                let since = humantime::format_rfc3339_seconds(
                    std::time::UNIX_EPOCH + Duration::from_millis(backend.state_since_unix_ms),
                );
                let _ = writeln!(
                    text,
                    "  {} {} {} since {since}: {} ({} live)",
                    color.color.name(),
                    backend.address,
                    backend.state.name().to_uppercase(),
                    backend.state_reason,
                    backend.live_flows,
                );
            }
        }
    }
    text
}

/// Borderless, one space between columns, names left-aligned and numbers right-aligned.
fn backend_table() -> Table {
    let mut table = Table::new();
    table
        .load_preset(NOTHING)
        .set_content_arrangement(ContentArrangement::Disabled)
        .set_header(HEADER);
    for (index, column) in table.column_iter_mut().enumerate() {
        column.set_padding((0, 1));
        column.set_constraint(ColumnConstraint::LowerBoundary(comfy_table::Width::Fixed(
            MIN_WIDTHS[index],
        )));
        if index >= FIRST_NUMBER {
            column.set_cell_alignment(CellAlignment::Right);
        }
    }
    table
}

/// `up`, `up (slow start 40%)`, `down`, ...
fn state(backend: &crate::control::protocol::BackendStatus) -> String {
    match backend.slow_start_percent {
        Some(percent) => format!("{} (slow start {percent:.0}%)", backend.state.name()),
        None => backend.state.name().to_owned(),
    }
}

/// An effective weight: whole when it is, else two decimals.
fn weight(value: f64) -> String {
    if value.fract() == 0.0 {
        format!("{value:.0}")
    } else {
        format!("{value:.2}")
    }
}

fn uptime(seconds: u64) -> String {
    match seconds {
        0..60 => format!("{seconds}s"),
        60..3600 => format!("{}m{:02}s", seconds / 60, seconds % 60),
        _ => format!("{}h{:02}m", seconds / 3600, seconds % 3600 / 60),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        config::{CohortSetting, ColorName},
        control::protocol::{
            BackendStatus, ColorStatus, FlowStates, ServiceStatus, Signals, Traffic,
        },
        dataplane::services::Protocol,
    };

    fn backend(address: &str) -> BackendStatus {
        BackendStatus {
            address: address.parse().unwrap(),
            id: 0,
            live_flows: 3,
            flows: FlowStates {
                pending: 1,
                established: 2,
                closing: 1,
            },
            new_flows: 4,
            new_flows_per_second: Some(1.5),
            to_backend_rate: None,
            to_client_rate: None,
            to_backend: Traffic::default(),
            to_client: Traffic::default(),
            signals: Signals::default(),
            state: crate::health::BackendState::Up,
            state_reason: String::new(),
            state_since_unix_ms: 0,
            transitions: std::collections::BTreeMap::new(),
            weight: 1,
            effective_weight: 1.0,
            slow_start_percent: None,
        }
    }

    /// Columns stay aligned when one backend is a long IPv6 address.
    #[test]
    fn long_ipv6_backends_fit() {
        let mut report = StatusReport::default();
        report.services.push(ServiceStatus {
            name: "web".into(),
            preview_of: None,
            address: "[fd00::10]:80".parse().unwrap(),
            protocol: Protocol::Tcp,
            cohort: CohortSetting::Flow,
            green_weight: 125_000,
            green_weight_percent: 12.5,
            stable: ColorName::Blue,
            measured_green_share: None,
            settling: true,
            window_seconds: 0.0,
            window_new_flows: 0,
            flow_misses: 0,
            ambiguous_misses: 0,
            colors: vec![
                ColorStatus {
                    color: ColorName::Blue,
                    release: Some("v41".into()),
                    stable: true,
                    weight_percent: 87.5,
                    live_flows: 3,
                    backends: vec![backend("[fd00:1234:5678:9abc:def0:1234:5678:9abc]:65535")],
                },
                ColorStatus {
                    color: ColorName::Green,
                    release: None,
                    stable: false,
                    weight_percent: 12.5,
                    live_flows: 3,
                    backends: vec![BackendStatus {
                        weight: 3,
                        effective_weight: 1.2,
                        slow_start_percent: Some(40.0),
                        ..backend("[fd00::2]:8080")
                    }],
                },
            ],
        });
        let text = render_status(&report);
        assert!(text.contains("  green weight 12.5%"), "{text}");
        assert!(text.contains("blue v41 (stable), green -"), "{text}");
        assert!(text.contains("measured green share settling"), "{text}");
        assert!(
            text.contains("  live connections: blue 3, green 3 "),
            "{text}"
        );
        let rows: Vec<&str> = text
            .lines()
            .skip_while(|line| !line.trim_start().starts_with("COLOR"))
            .collect();
        assert_eq!(rows.len(), 3, "{text}");
        // LIVE is right-aligned: every row's count (3) ends where the header does.
        let end = rows[0].find("LIVE").unwrap() + "LIVE".len();
        for row in &rows[1..] {
            assert_eq!(
                &row[end - 1..=end],
                "3 ",
                "LIVE column not aligned:\n{text}"
            );
        }
        assert!(
            rows[1].contains("[fd00:1234:5678:9abc:def0:1234:5678:9abc]:65535 up "),
            "{text}"
        );
        // Weights next to the state: configured, then effective (slow start).
        let words: Vec<&str> = rows[1].split_whitespace().collect();
        assert_eq!(words[2..5], ["up", "1", "1"], "{text}");
        let words: Vec<&str> = rows[2].split_whitespace().collect();
        assert_eq!(
            words[2..8],
            ["up", "(slow", "start", "40%)", "3", "1.20"],
            "{text}"
        );
    }
}
