//! The metrics as a user's monitoring sees them: every family the README documents is present
//! on a fresh daemon (a zero, not a missing series), `promtool check metrics` is clean, and
//! every query of the Grafana dashboard (`packaging/grafana/splitter.json`) returns data from
//! a real Prometheus (Debian's `prometheus`, started by the test) scraping a real daemon that
//! carries real TCP traffic with a rollout running.

use std::{
    collections::BTreeSet,
    io::Write as _,
    path::Path,
    process::{Command, Stdio},
    time::Duration,
};

use serde_json::Value;
use splitter_tests::{
    daemon_harness::{BLUE, GREEN, Lab, TCP_PORT, service},
    prometheus::{Prometheus, Sample},
    require_privileges,
};

const WEB: &str = "198.18.100.10:80";
/// The daemon's metrics endpoint inside the router namespace (the lab's `[control] metrics`).
const METRICS: &str = "127.0.0.1:9435";
/// What the test stands for Grafana's `$__rate_interval`: covers the whole traffic phase.
const RATE_INTERVAL: &str = "1m";

fn repository() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
}

/// The metric families of the README's metrics table (first column, every backticked name),
/// each with whether it exists only with some configuration: `[fleet]`, or a service's
/// `preview` (its description starts with that key).
fn documented_families() -> Vec<(String, bool)> {
    let readme = std::fs::read_to_string(repository().join("README.md")).expect("README.md");
    let section = readme
        .split_once("\n## Metrics\n")
        .expect("the README has a Metrics section")
        .1;
    let section = section.split("\n## ").next().unwrap_or_default();
    let mut families = Vec::new();
    for line in section
        .lines()
        .filter(|line| line.starts_with("| `splitter_"))
    {
        let first_cell = line.split('|').nth(1).unwrap_or_default();
        let fleet_only = line.split('|').nth(3).is_some_and(|cell| {
            let cell = cell.trim_start();
            cell.starts_with("`[fleet]`") || cell.starts_with("`preview`")
        });
        families.extend(
            first_cell
                .split('`')
                .skip(1)
                .step_by(2)
                .map(|family| (family.to_owned(), fleet_only)),
        );
    }
    assert!(
        families.len() > 20,
        "the README's metrics table looks truncated: {families:?}"
    );
    families
}

/// The sample names of an exposition (`name{labels} value` or `name value`).
fn sample_names(exposition: &str) -> BTreeSet<&str> {
    exposition
        .lines()
        .filter(|line| !line.starts_with('#') && !line.is_empty())
        .map(|line| {
            let end = line.find(['{', ' ']).unwrap_or(line.len());
            &line[..end]
        })
        .collect()
}

/// `promtool check metrics` on `exposition`: must be clean.
fn promtool_check(exposition: &str) {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run promtool (Debian package prometheus: `cargo xtask setup --test-deps`)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(exposition.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success() && out.stdout.is_empty() && out.stderr.is_empty(),
        "promtool check metrics: {}\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn web_with_rollout() -> String {
    let mut config = service("web", WEB, "tcp", "0", &BLUE, &GREEN, TCP_PORT);
    // A long step: the rollout stays at its first step (10 %) while the test looks.
    config.push_str("[service.rollout]\nsteps = [10, 50, 100]\nevery = \"1h\"\nmin_flows = 5\n");
    config
}

/// Right after start, before any request, reload, rollout or packet: every family of the
/// README's table has at least one sample, every family served is documented, and promtool
/// finds nothing to lint.
#[test]
fn every_documented_family_is_present_on_a_fresh_daemon() {
    if !require_privileges("every_documented_family_is_present_on_a_fresh_daemon") {
        return;
    }
    let mut lab = Lab::new("dfr");
    lab.write_config(&web_with_rollout());
    lab.start_daemon();
    let exposition = lab.metrics();
    let names = sample_names(&exposition);
    let documented = documented_families();
    for (family, fleet_only) in &documented {
        if *fleet_only {
            // Served only with `[fleet]` (tests/tests/fleet.rs scrapes those) or a preview
            // address (tests/tests/edges.rs).
            continue;
        }
        let present = [
            family.clone(),
            format!("{family}_bucket"),
            format!("{family}_count"),
        ]
        .iter()
        .any(|name| names.contains(name.as_str()));
        assert!(
            present,
            "`{family}` (documented in the README) has no sample on a fresh daemon:\n{exposition}"
        );
    }
    for line in exposition.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let family = rest.split(' ').next().unwrap_or_default();
            assert!(
                documented.iter().any(|(name, _)| name == family),
                "`{family}` is served but not in the README's metrics table"
            );
        }
    }
    promtool_check(&exposition);
}

/// The targets of every panel (rows included), with the panel's title; checks what Grafana
/// needs to lay the panels out (unique ids, 24 columns, unique refIds per panel).
fn panel_targets(dashboard: &Value) -> Vec<(String, String, String)> {
    let mut targets = Vec::new();
    let mut ids = BTreeSet::new();
    let mut panels: Vec<&Value> = dashboard["panels"]
        .as_array()
        .expect("panels")
        .iter()
        .collect();
    while let Some(panel) = panels.pop() {
        if let Some(nested) = panel["panels"].as_array() {
            panels.extend(nested);
        }
        let title = panel["title"].as_str().unwrap_or_default().to_owned();
        let id = panel["id"]
            .as_u64()
            .unwrap_or_else(|| panic!("panel `{title}` has an id"));
        assert!(ids.insert(id), "panel id {id} (`{title}`) is not unique");
        let grid = &panel["gridPos"];
        let (x, w) = (grid["x"].as_u64(), grid["w"].as_u64());
        assert!(
            matches!((x, w), (Some(x), Some(w)) if w > 0 && x + w <= 24)
                && grid["h"].as_u64().is_some_and(|h| h > 0)
                && grid["y"].is_u64(),
            "panel `{title}`: gridPos {grid} outside Grafana's 24 columns"
        );
        if panel["type"] == "row" {
            continue;
        }
        assert_eq!(
            panel["datasource"]["uid"], "${datasource}",
            "panel `{title}` uses the dashboard's datasource variable"
        );
        let list = panel["targets"]
            .as_array()
            .unwrap_or_else(|| panic!("panel `{title}` has targets"));
        assert!(!list.is_empty(), "panel `{title}` has no target");
        let mut ref_ids = BTreeSet::new();
        for target in list {
            let expr = target["expr"]
                .as_str()
                .unwrap_or_else(|| panic!("`{title}`: target without expr"));
            let ref_id = target["refId"].as_str().unwrap_or_default().to_owned();
            assert!(
                !ref_id.is_empty() && ref_ids.insert(ref_id.clone()),
                "panel `{title}`: refId `{ref_id}` empty or repeated"
            );
            targets.push((title.clone(), ref_id, expr.to_owned()));
        }
    }
    targets.sort();
    targets
}

/// Grafana's substitution for the test's selection: service `web`, every instance.
fn substitute(expr: &str) -> String {
    let expr = expr
        .replace("$__rate_interval", RATE_INTERVAL)
        .replace("$service", "web")
        .replace("$instance", ".*");
    assert!(!expr.contains('$'), "an unsubstituted variable in `{expr}`");
    expr
}

fn describe(samples: &[Sample]) -> String {
    samples
        .iter()
        .map(|sample| format!("{:?} = {}", sample.labels, sample.value))
        .collect::<Vec<_>>()
        .join("\n  ")
}

fn label<'a>(sample: &'a Sample, name: &str) -> &'a str {
    sample
        .labels
        .get(name)
        .and_then(Value::as_str)
        .unwrap_or_default()
}

#[test]
fn every_dashboard_query_returns_data_from_a_real_prometheus() {
    if !require_privileges("every_dashboard_query_returns_data_from_a_real_prometheus") {
        return;
    }
    let dashboard: Value = serde_json::from_str(
        &std::fs::read_to_string(repository().join("packaging/grafana/splitter.json"))
            .expect("packaging/grafana/splitter.json"),
    )
    .expect("the dashboard is JSON");
    let mut lab = Lab::new("dpr");
    lab.write_config(&web_with_rollout());
    lab.start_daemon();
    let prometheus = Prometheus::start(&lab.topology.router, METRICS);
    // A baseline before the traffic, so rates see it begin.
    prometheus.wait_for_scrapes(3.0, Duration::from_secs(30));
    lab.cli_ok(&["rollout", "start", "web"]);
    // Open connections the live-connection panels must see.
    let mut held: Vec<_> = (0..6).map(|_| lab.connect(WEB)).collect();
    for conversation in &mut held {
        conversation.ask().expect("a held connection answers");
    }
    // Real connections, spread over a few scrapes: 6 × 50, each a request and an answer.
    let (mut blue, mut green) = (0, 0);
    for _ in 0..6 {
        let (b, g) = lab.split(WEB, 50);
        blue += b;
        green += g;
        std::thread::sleep(Duration::from_millis(400));
    }
    let client_share = f64::from(u32::try_from(green).unwrap()) / 300.0;
    assert!(
        green > 0 && blue > 0,
        "both colors answered: {blue} / {green}"
    );
    prometheus.wait_for_scrapes(prometheus.scrapes() + 3.0, Duration::from_secs(30));

    promtool_check(&lab.metrics());

    // The template variables: each `label_values(SELECTOR, LABEL)` finds values.
    for variable in dashboard["templating"]["list"]
        .as_array()
        .expect("templating")
    {
        if variable["type"] != "query" {
            continue;
        }
        let definition = variable["definition"].as_str().expect("a definition");
        let inner = definition
            .strip_prefix("label_values(")
            .and_then(|rest| rest.strip_suffix(')'))
            .unwrap_or_else(|| panic!("`{definition}` is a label_values query"));
        let (selector, label) = inner
            .rsplit_once(',')
            .expect("label_values(selector, label)");
        let values = prometheus.label_values(label.trim(), &substitute(selector.trim()));
        let expected = match variable["name"].as_str() {
            Some("service") => "web",
            Some("instance") => METRICS,
            other => panic!("unexpected variable {other:?}"),
        };
        assert!(
            values.iter().any(|value| value == expected),
            "`{definition}` returned {values:?}, expected `{expected}` among them"
        );
    }

    let targets = panel_targets(&dashboard);
    assert!(targets.len() >= 15, "{} targets", targets.len());
    for (title, ref_id, expr) in &targets {
        let expr = substitute(expr);
        let samples = prometheus.query(&expr);
        let context = format!(
            "panel `{title}` target {ref_id}: `{expr}`\n  {}",
            describe(&samples)
        );
        eprintln!("{context}");
        assert!(!samples.is_empty(), "no data for {context}");
        assert!(
            samples.iter().all(|sample| sample.value.is_finite()),
            "a value that is not a number for {context}"
        );
        let value = |predicate: &dyn Fn(&Sample) -> bool| -> f64 {
            samples
                .iter()
                .filter(|sample| predicate(sample))
                .map(|sample| sample.value)
                .sum()
        };
        match (title.as_str(), ref_id.as_str()) {
            ("Green weight vs measured green share", "A") => {
                assert_eq!(
                    value(&|_| true),
                    0.1,
                    "the weight set by the rollout: {context}"
                );
            }
            ("Green weight vs measured green share", "B") => {
                let measured = value(&|_| true);
                assert!(
                    (measured - client_share).abs() < 0.1,
                    "measured share {measured} vs {client_share} of the client's answers: {context}"
                );
            }
            ("Rollout step", _) => assert_eq!(value(&|_| true), 1.0, "{context}"),
            ("Rollout phase", _) => {
                assert!(
                    samples
                        .iter()
                        .all(|sample| label(sample, "phase") == "running"),
                    "{context}"
                );
            }
            ("Stable color and release", _) => {
                assert!(
                    samples
                        .iter()
                        .all(|sample| label(sample, "color") == "blue"),
                    "{context}"
                );
            }
            ("Live connections per color", _) => {
                assert!(value(&|_| true) >= 6.0, "the 6 held connections: {context}");
            }
            ("Packets per backend" | "Bytes per backend" | "New flows per color", _) => {
                for color in ["blue", "green"] {
                    assert!(
                        value(&|sample| label(sample, "color") == color) > 0.0,
                        "{color} carried traffic: {context}"
                    );
                }
            }
            ("Handshake failure ratio per color", _) => {
                assert!(
                    samples.iter().all(|sample| sample.value <= 0.02),
                    "healthy backends: {context}\nresets: {}",
                    lab.explain_resets()
                );
            }
            ("Handshake latency p99 per color", _) => {
                assert!(
                    samples
                        .iter()
                        .all(|sample| sample.value > 0.0 && sample.value < 1.0),
                    "a p99 between 0 and 1 s: {context}"
                );
            }
            ("Rollout decisions", _) => {
                assert!(
                    value(&|sample| label(sample, "action") == "start") >= 1.0,
                    "the rollout's start: {context}"
                );
            }
            _ => {}
        }
    }
    // The held connections outlived it all.
    for conversation in &mut held {
        conversation.ask().expect("a held connection still answers");
    }
}
