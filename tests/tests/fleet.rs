//! The fleet (`[fleet]`, issue 15) end to end: a real etcd (Debian etcd-server 3.4) in its own
//! namespace, several splitter hosts (each a lab: client, router running the real daemon,
//! blue and green backends), real TCP clients, the real CLI.
//!
//! Run: `cargo test --release -p splitter-tests --test fleet -- --test-threads=1`

use std::time::{Duration, Instant};

use splitter::fleet::report::FleetStatusReport;
use splitter_tests::{
    daemon_harness::{BLUE, GREEN, Lab, TCP_PORT, color_of, metric, service},
    etcd::Etcd,
    require_privileges,
};

const WEB: &str = "198.18.100.10:80";
const FLEET: &str = "edge";

fn web(weight: &str) -> String {
    service("web", WEB, "tcp", weight, &BLUE, &GREEN, TCP_PORT)
}

/// `count` hosts named a, b, c... in fleet [`FLEET`], each serving `services(host index)`.
fn fleet(tag: &str, etcd: &mut Etcd, services: &[String]) -> Vec<Lab> {
    services
        .iter()
        .enumerate()
        .map(|(index, services)| {
            let host = ["a", "b", "c"][index];
            let mut lab = Lab::new(&format!("{tag}{host}"));
            etcd.connect(&lab.topology.router);
            lab.write_config(&format!("{services}{}", etcd.fleet_section(FLEET, host)));
            lab.start_daemon();
            lab
        })
        .collect()
}

/// Waits (bounded) until `check` holds for the lab's status.
fn eventually(
    lab: &Lab,
    what: &str,
    check: impl Fn(&splitter::control::protocol::StatusReport) -> bool,
) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let status = lab.status();
        if check(&status) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: not within 20 s; status: {:?}\ndaemon log:\n{}",
            status.fleet,
            lab.daemon_log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn connected(lab: &Lab) {
    eventually(lab, "connected to etcd", |status| {
        status.fleet.as_ref().is_some_and(|fleet| fleet.connected)
    });
}

/// New connections through `lab`: (blue, green) answers; any failure panics.
fn split(lab: &Lab) -> (usize, usize) {
    lab.split(WEB, 20)
}

fn fleet_status(lab: &Lab) -> FleetStatusReport {
    serde_json::from_str(&lab.cli_ok(&["fleet", "status", "--json"])).expect("fleet status JSON")
}

#[test]
fn a_weight_set_on_one_host_is_in_force_on_all_three() {
    if !require_privileges("a_weight_set_on_one_host_is_in_force_on_all_three") {
        return;
    }
    let mut etcd = Etcd::start("fw");
    let labs = fleet("fw", &mut etcd, &[web("0"), web("0"), web("0")]);
    for lab in &labs {
        connected(lab);
        assert_eq!(split(lab), (20, 0), "all on blue at first");
    }
    let out = labs[0].cli_ok(&["set-weight", "web", "100"]);
    let revision = out
        .lines()
        .find_map(|line| line.strip_prefix("3/3 hosts at revision "))
        .unwrap_or_else(|| panic!("`3/3 hosts at revision N` in: {out}"));
    for (index, lab) in labs.iter().enumerate() {
        assert_eq!(
            split(lab),
            (0, 20),
            "host {index}: all on green after the fleet write"
        );
    }
    // A switch from another host: every host, and the stable color with it.
    let out = labs[1].cli_ok(&["switch", "web", "blue"]);
    assert!(out.contains("3/3 hosts at revision"), "{out}");
    for (index, lab) in labs.iter().enumerate() {
        assert_eq!(
            split(lab),
            (20, 0),
            "host {index}: all on blue after the switch"
        );
        let status = lab.status();
        let service = status.services.iter().find(|s| s.name == "web").unwrap();
        assert_eq!(service.green_weight, 0);
    }
    let report = fleet_status(&labs[2]);
    assert_eq!(report.hosts.len(), 3, "{report:?}");
    for host in &report.hosts {
        assert_eq!(host.lag, 0, "{report:?}");
        assert!(host.record.applied_revision > revision.parse::<i64>().unwrap());
        assert!(host.heartbeat_age_ms < 5_000, "{report:?}");
        assert_eq!(
            host.record.definitions, report.definitions,
            "same definitions"
        );
    }
    let table = labs[0].cli_ok(&["fleet", "status"]);
    assert!(table.starts_with("fleet edge: 3 live hosts"), "{table}");
    let metrics = labs[0].metrics();
    assert_eq!(
        metric(&metrics, "splitter_fleet_connected"),
        Some(1.0),
        "{metrics}"
    );
    // --no-wait returns at once, the hosts still follow.
    let out = labs[2].cli_ok(&["set-weight", "web", "100", "--no-wait"]);
    assert!(!out.contains("hosts at revision"), "{out}");
    for lab in &labs {
        eventually(lab, "green after --no-wait", |status| {
            status
                .services
                .iter()
                .any(|s| s.name == "web" && s.green_weight == 1_000_000)
        });
    }
}

#[test]
fn etcd_down_fails_static_local_override_then_reconverges() {
    if !require_privileges("etcd_down_fails_static_local_override_then_reconverges") {
        return;
    }
    let mut etcd = Etcd::start("fd");
    let labs = fleet("fd", &mut etcd, &[web("0"), web("0"), web("0")]);
    for lab in &labs {
        connected(lab);
    }
    labs[0].cli_ok(&["set-weight", "web", "100"]);
    // A long-lived connection on each host, opened before etcd goes away.
    let mut conversations: Vec<_> = labs
        .iter()
        .map(|lab| {
            let mut conversation = lab.connect(WEB);
            let first = conversation.ask().expect("first answer");
            (conversation, first)
        })
        .collect();
    etcd.stop();
    for lab in &labs {
        eventually(lab, "disconnected", |status| {
            status.fleet.as_ref().is_some_and(|fleet| !fleet.connected)
        });
        // Traffic untouched: every new connection answered, on the last applied weight.
        assert_eq!(split(lab), (0, 20), "fail static: still all on green");
        assert_eq!(
            metric(&lab.metrics(), "splitter_fleet_connected"),
            Some(0.0)
        );
    }
    let refused = labs[1].cli(&["set-weight", "web", "0"]);
    assert_eq!(refused.code, 1, "{refused:?}");
    assert!(
        refused.stderr.contains("not connected to the fleet's etcd")
            && refused.stderr.contains("--local"),
        "{}",
        refused.stderr
    );
    // The emergency: this host only, without etcd.
    let out = labs[0].cli_ok(&["switch", "web", "blue", "--local"]);
    assert!(out.contains("-> 0%"), "{out}");
    assert_eq!(split(&labs[0]), (20, 0), "host a: local override to blue");
    assert_eq!(split(&labs[1]), (0, 20), "host b: unchanged");
    let overrides = labs[0].status().fleet.unwrap().overrides;
    assert_eq!(
        overrides.len(),
        1,
        "override visible in status: {overrides:?}"
    );
    etcd.resume();
    for lab in &labs {
        connected(lab);
    }
    // The override holds against the fleet until cleared.
    assert_eq!(split(&labs[0]), (20, 0), "host a: override still in force");
    assert_eq!(split(&labs[2]), (0, 20), "host c: the fleet's weight");
    labs[0].cli_ok(&["fleet", "clear-override", "web"]);
    eventually(&labs[0], "back to the fleet's weight", |status| {
        status
            .services
            .iter()
            .any(|s| s.name == "web" && s.green_weight == 1_000_000)
    });
    assert_eq!(split(&labs[0]), (0, 20), "host a: the fleet's weight again");
    // The long-lived connections never moved.
    for (index, (conversation, first)) in conversations.iter_mut().enumerate() {
        let answer = conversation
            .ask()
            .unwrap_or_else(|error| panic!("host {index}: long-lived connection broken: {error}"));
        assert_eq!(&answer, first, "host {index}: same backend throughout");
        assert_eq!(color_of(&answer), "green");
    }
}

#[test]
fn a_host_with_other_definitions_is_reported_and_left_alone() {
    if !require_privileges("a_host_with_other_definitions_is_reported_and_left_alone") {
        return;
    }
    let mut etcd = Etcd::start("fm");
    let other = service("web", WEB, "tcp", "0", &BLUE[..1], &GREEN, TCP_PORT);
    let labs = fleet("fm", &mut etcd, &[web("0"), other]);
    for lab in &labs {
        connected(lab);
    }
    let status = labs[1].status().fleet.unwrap();
    assert!(status.mismatched.contains_key("web"), "{status:?}");
    assert_eq!(
        metric(&labs[1].metrics(), "splitter_fleet_mismatched_services"),
        Some(1.0)
    );
    let out = labs[0].cli_ok(&["set-weight", "web", "100"]);
    assert!(out.contains("1/2 hosts at revision"), "{out}");
    assert!(out.contains("left alone: b: its definition"), "{out}");
    assert_eq!(split(&labs[0]), (0, 20), "host a follows the fleet");
    assert_eq!(split(&labs[1]), (20, 0), "host b is left alone");
    let refused = labs[1].cli(&["set-weight", "web", "50"]);
    assert_eq!(refused.code, 2, "{refused:?}");
    assert!(
        refused.stderr.contains("differs from the fleet's"),
        "{}",
        refused.stderr
    );
    let table = labs[0].cli_ok(&["fleet", "status"]);
    assert!(
        table.contains("web: definition differs, not applied"),
        "{table}"
    );
}
