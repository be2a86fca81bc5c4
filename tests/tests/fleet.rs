//! The fleet (`[fleet]`, issue 15) end to end: a real etcd (Debian etcd-server 3.4) in its own
//! namespace, several splitter hosts (each a lab: client, router running the real daemon,
//! blue and green backends), real TCP clients, the real CLI.
//!
//! Run: `cargo test --release -p splitter-tests --test fleet -- --test-threads=1`

use std::{
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use splitter::{
    config::ColorName, control::protocol::RolloutReport, fleet::report::FleetStatusReport,
    rollout::Phase,
};
use splitter_tests::{
    daemon_harness::{BLUE, GREEN, Lab, TCP_PORT, color_of, metric, request, service},
    etcd::Etcd,
    fleet_topology::Ecmp,
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
    let human = labs[1].cli_ok(&["status"]);
    assert!(human.contains("DISCONNECTED from etcd"), "{human}");
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
    let human = labs[0].cli_ok(&["status"]);
    assert!(human.contains("web: LOCAL OVERRIDE to blue"), "{human}");
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

/// `backend disable|enable` with `[fleet]` is fleet state: written once (on any host), applied
/// by every host through the `backend` command's own path; a host that was away when a
/// backend was enabled again brings it back when it reconnects.
#[test]
fn a_backend_disabled_on_one_host_is_out_of_rotation_on_all_three() {
    if !require_privileges("a_backend_disabled_on_one_host_is_out_of_rotation_on_all_three") {
        return;
    }
    let mut etcd = Etcd::start("fk");
    let labs = fleet("fk", &mut etcd, &[web("0"), web("0"), web("0")]);
    for lab in &labs {
        connected(lab);
    }
    let disabled = format!("{}:{TCP_PORT}", BLUE[0]);
    let answers = |lab: &Lab| -> Vec<String> {
        lab.requests(WEB, 20)
            .into_iter()
            .map(|answer| answer.unwrap_or_else(|error| panic!("request failed: {error}")))
            .collect()
    };
    for (index, lab) in labs.iter().enumerate() {
        assert!(
            answers(lab).contains(&disabled),
            "host {index}: {disabled} takes new flows at first"
        );
    }
    let out = labs[0].cli_ok(&["backend", "disable", "web", &disabled]);
    assert!(out.contains("disabled"), "{out}");
    for (index, lab) in labs.iter().enumerate() {
        let answers = answers(lab);
        assert!(
            !answers.contains(&disabled) && answers.iter().all(|a| color_of(a) == "blue"),
            "host {index}: no new flow to {disabled}, all on the other blue: {answers:?}\n{}",
            lab.daemon_log()
        );
    }
    assert!(
        etcd.ctl(&["get", "--prefix", "/edge/services/web/backends/"])
            .contains("\"disabled\""),
        "the state is in etcd"
    );
    // Host c misses the enable (etcd unreachable for it); it catches up when it reconnects.
    labs[2]
        .topology
        .router
        .ip(&["link", "set", "fleet0", "down"]);
    eventually(&labs[2], "c disconnected", |status| {
        status.fleet.as_ref().is_some_and(|fleet| !fleet.connected)
    });
    labs[1].cli_ok(&["backend", "enable", "web", &disabled]);
    for (index, lab) in labs[..2].iter().enumerate() {
        assert!(
            answers(lab).contains(&disabled),
            "host {index}: {disabled} back in rotation"
        );
    }
    assert!(
        !answers(&labs[2]).contains(&disabled),
        "host c, away: still as it last applied"
    );
    labs[2].topology.router.ip(&["link", "set", "fleet0", "up"]);
    connected(&labs[2]);
    assert!(
        answers(&labs[2]).contains(&disabled),
        "host c after reconnecting: {disabled} back in rotation"
    );
}

/// ECMP moves a long-lived connection from host a to host b mid-connection (the client's route
/// to the service changes, and so does each backend's route back: see `fleet_topology.rs`).
/// Host b has no pin for it: the packet is a mid-flow miss, steered by b's weight history,
/// which matches a's because both applied the same fleet changes in the same order, within
/// `miss_hold` (30 s). The connection was opened at 0 % green, the fleet then moved to 100 %
/// (every new flow green, on both hosts): the history says the flow began at 0 %, so b sends it
/// to the same blue backend (same seed, same pools, same in-pool choice). Host a is taken off
/// both segments after the switch, so every packet of the conversation and of its replies
/// passes host b.
#[test]
fn a_flow_moved_to_another_host_mid_connection_keeps_its_backend() {
    if !require_privileges("a_flow_moved_to_another_host_mid_connection_keeps_its_backend") {
        return;
    }
    const CONNECTIONS: usize = 8;
    let mut etcd = Etcd::start("fe");
    let mut ecmp = Ecmp::new("fe");
    for (lab, host) in ecmp.hosts.iter_mut().zip(["a", "b"]) {
        etcd.connect(&lab.topology.router);
        lab.write_config(&format!("{}{}", web("0"), etcd.fleet_section(FLEET, host)));
        lab.start_daemon();
        // b starts once a has written its seed to etcd: b starts with the fleet's.
        connected(lab);
    }
    for lab in &ecmp.hosts {
        let fleet = lab.status().fleet.expect("fleet status");
        assert!(
            !fleet.seed_mismatch,
            "both hosts run the fleet's seed: {fleet:?}"
        );
    }
    let (a, b) = (&ecmp.hosts[0], &ecmp.hosts[1]);
    let mut conversations: Vec<_> = (0..CONNECTIONS)
        .map(|_| {
            let mut conversation = a.connect(WEB);
            let first = conversation.ask().expect("first answer, through host a");
            assert_eq!(color_of(&first), "blue", "0 % green: {first}");
            (conversation, first)
        })
        .collect();
    let out = a.cli_ok(&["set-weight", "web", "100"]);
    assert!(out.contains("2/2 hosts at revision"), "{out}");
    ecmp.route_via(1);
    ecmp.isolate(0);
    let misses_before = |name: &str| metric(&b.metrics(), name).unwrap_or(0.0);
    let flow_misses = r#"splitter_service_flow_misses_total{service="web"}"#;
    let ambiguous = r#"splitter_service_ambiguous_misses_total{service="web"}"#;
    let (misses, ambiguous_before) = (misses_before(flow_misses), misses_before(ambiguous));
    for (index, (conversation, first)) in conversations.iter_mut().enumerate() {
        let client = conversation.local_addr();
        let answer = conversation.ask().unwrap_or_else(|error| {
            panic!(
                "connection {index} ({client}) broken after the move to host b: {error}\n\
                 resets: {}\nhost b's log:\n{}",
                ecmp.hosts[0].resets.explain(&ecmp.roles(), Some(client)),
                ecmp.hosts[1].daemon_log()
            )
        });
        assert_eq!(
            &answer, first,
            "connection {index} ({client}): the same backend through host b"
        );
    }
    let b_metrics = b.metrics();
    let steered = metric(&b_metrics, flow_misses).unwrap_or(0.0) - misses;
    assert!(
        steered >= CONNECTIONS as f64,
        "host b steered each moved connection as a mid-flow miss: {steered}\n{b_metrics}"
    );
    // 0 % then 100 % within the hold: every hash is in the ambiguous band, the older weight
    // decides.
    let band = metric(&b_metrics, ambiguous).unwrap_or(0.0) - ambiguous_before;
    assert!(band >= CONNECTIONS as f64, "{band}\n{b_metrics}");
    // New flows through host b follow the fleet's weight.
    assert_eq!(b.split(WEB, 20), (0, 20), "new flows through b: green");
    let resets = ecmp.hosts[0].resets.resets(&ecmp.roles());
    assert!(resets.is_empty(), "no resets: {}", ecmp.explain_resets());
}

/// A host restarted while etcd is unreachable starts from its local files: the weights the
/// fleet had set (state file), the applied revision (`fleet.json`), even with the data plane
/// reloaded from scratch (`splitter unload` first: nothing pinned to adopt). When etcd
/// returns, the host connects and stays where it is.
#[test]
fn a_restart_without_etcd_starts_from_the_local_files() {
    if !require_privileges("a_restart_without_etcd_starts_from_the_local_files") {
        return;
    }
    let mut etcd = Etcd::start("fr");
    let mut labs = fleet("fr", &mut etcd, &[web("0")]);
    let lab = &mut labs[0];
    connected(lab);
    let out = lab.cli_ok(&["set-weight", "web", "100"]);
    assert!(out.contains("1/1 hosts at revision"), "{out}");
    let revision = lab.status().fleet.expect("fleet").applied_revision;
    etcd.stop();
    eventually(lab, "disconnected", |status| {
        status.fleet.as_ref().is_some_and(|fleet| !fleet.connected)
    });
    lab.cli_ok(&["unload"]);
    let code = lab.daemon.as_mut().unwrap().wait(Duration::from_secs(10));
    assert_eq!(code, Some(0), "the daemon stops after unload");
    lab.daemon = None;
    // The config still says 0 %: only the local files know the fleet's 100 %.
    lab.start_daemon();
    let status = lab.status();
    let fleet = status.fleet.as_ref().expect("fleet");
    assert!(!fleet.connected, "etcd is down: {fleet:?}");
    assert_eq!(fleet.applied_revision, revision, "{fleet:?}");
    let web = status.services.iter().find(|s| s.name == "web").unwrap();
    assert_eq!(
        web.green_weight, 1_000_000,
        "the fleet's weight, from the state file"
    );
    assert_eq!(
        split(lab),
        (0, 20),
        "restarted without etcd: still all on green"
    );
    assert!(
        lab.daemon_log().contains("origin=\"loaded\""),
        "the data plane was loaded anew:\n{}",
        lab.daemon_log()
    );
    etcd.resume();
    connected(lab);
    assert_eq!(split(lab), (0, 20), "etcd back: unchanged");
    let fleet = lab.status().fleet.expect("fleet");
    assert!(fleet.applied_revision >= revision, "{fleet:?}");
}

/// `cargo xtask bench --fleet`: time from `set-weight` (the CLI, waiting) to the last of three
/// hosts applying it, against a local change on one host; etcd writes and watch events per
/// change; reconvergence after etcd returns.
#[test]
#[ignore = "a measurement: cargo xtask bench --fleet"]
fn measure_fleet() {
    if !require_privileges("measure_fleet") {
        return;
    }
    const CHANGES: usize = 100;
    let mut etcd = Etcd::start("fb");
    // A plan that holds (an hour per step): a running rollout for the background count.
    let plan = web_rollout("steps = [100]\nevery = \"1h\"\nmin_flows = 1000");
    let labs = fleet("fb", &mut etcd, &[plan.clone(), plan.clone(), plan]);
    for lab in &labs {
        connected(lab);
    }
    let counters = |etcd: &Etcd| {
        let text = etcd
            .ns
            .exec(&["curl", "-sS", &format!("{}/metrics", etcd.endpoint)])
            .stdout;
        let text = String::from_utf8_lossy(&text).into_owned();
        (
            metric(&text, "etcd_mvcc_put_total").unwrap_or(0.0)
                + metric(&text, "etcd_mvcc_txn_total").unwrap_or(0.0),
            metric(&text, "etcd_debugging_mvcc_events_total").unwrap_or(0.0),
        )
    };
    let time = |lab: &Lab, args: &[&str]| {
        let started = Instant::now();
        let out = lab.cli_ok(args);
        let took = started.elapsed();
        (took, out)
    };
    // Writes without any change: each host's record (every 2 s) and rollout signals (every
    // second), with no rollout and with one running (the leader writes only its decisions).
    const BACKGROUND: Duration = Duration::from_secs(10);
    // The store's revision: +1 for every put or writing transaction, whatever etcd's
    // counters call them.
    let revision = |etcd: &Etcd| {
        let status: serde_json::Value =
            serde_json::from_str(&etcd.ctl(&["endpoint", "status", "-w", "json"]))
                .expect("etcdctl endpoint status JSON");
        status[0]["Status"]["header"]["revision"]
            .as_f64()
            .expect("a revision")
    };
    let background = |etcd: &Etcd| {
        let (writes, events) = counters(etcd);
        let revision_before = revision(etcd);
        std::thread::sleep(BACKGROUND);
        let (writes_after, events_after) = counters(etcd);
        let seconds = BACKGROUND.as_secs_f64();
        (
            (writes_after - writes) / seconds,
            (events_after - events) / seconds,
            (revision(etcd) - revision_before) / seconds,
        )
    };
    let idle = background(&etcd);
    labs[0].cli_ok(&["rollout", "start", "web"]);
    // Past the start and the leader's first decisions: the steady state of a running rollout.
    std::thread::sleep(Duration::from_secs(3));
    let rolling = background(&etcd);
    labs[0].cli_ok(&["rollout", "abort", "web"]);
    let (writes_before, events_before) = counters(&etcd);
    let changes_began = Instant::now();
    let mut fleet_times = Vec::new();
    for change in 0..CHANGES {
        let percent = if change % 2 == 0 { "10" } else { "20" };
        let (took, out) = time(&labs[change % 3], &["set-weight", "web", percent]);
        assert!(out.contains("3/3 hosts at revision"), "{out}");
        fleet_times.push(took);
    }
    let (writes_after, events_after) = counters(&etcd);
    let changes_took = changes_began.elapsed().as_secs_f64();
    let mut local_times = Vec::new();
    for change in 0..CHANGES {
        let color = if change % 2 == 0 { "blue" } else { "green" };
        let (took, _) = time(&labs[0], &["switch", "web", color, "--local"]);
        local_times.push(took);
    }
    labs[0].cli_ok(&["fleet", "clear-override", "web"]);
    // Reconvergence: etcd down long enough for every host to notice, then back.
    etcd.stop();
    for lab in &labs {
        eventually(lab, "disconnected", |status| {
            status.fleet.as_ref().is_some_and(|fleet| !fleet.connected)
        });
    }
    etcd.resume();
    let back = Instant::now();
    for lab in &labs {
        connected(lab);
    }
    let reconverged = back.elapsed();
    let quantiles = |times: &mut Vec<Duration>| {
        times.sort();
        (times[times.len() / 2], times[times.len() * 99 / 100])
    };
    let (fleet_median, fleet_p99) = quantiles(&mut fleet_times);
    let (local_median, local_p99) = quantiles(&mut local_times);
    println!(
        "FLEET set-weight to the last of 3 hosts applied ({CHANGES} changes, CLI wall time): median {:.1} ms, p99 {:.1} ms",
        fleet_median.as_secs_f64() * 1e3,
        fleet_p99.as_secs_f64() * 1e3
    );
    println!(
        "FLEET one host, local change (switch --local, CLI wall time): median {:.1} ms, p99 {:.1} ms",
        local_median.as_secs_f64() * 1e3,
        local_p99.as_secs_f64() * 1e3
    );
    let writes = writes_after - writes_before;
    let events = events_after - events_before;
    println!(
        "FLEET etcd writes (puts + txns) per change: {:.2} measured, {:.2} without the background; watch events sent per change: {:.2} ({:.2} without the background)",
        writes / CHANGES as f64,
        (writes - idle.0 * changes_took) / CHANGES as f64,
        events / CHANGES as f64,
        (events - idle.1 * changes_took) / CHANGES as f64,
    );
    println!(
        "FLEET background etcd writes per second (3 hosts, no change; puts + txns, then revisions): {:.2} / {:.2} without a rollout, {:.2} / {:.2} with one running (holding); watch events per second: {:.2} / {:.2}",
        idle.0, idle.2, rolling.0, rolling.2, idle.1, rolling.1
    );
    println!(
        "FLEET reconvergence after etcd answers again: {:.2} s (3 hosts connected and applied)",
        reconverged.as_secs_f64()
    );
}

// ---- One rollout for the fleet (issue 15, step 6) ----

/// `web` with a rollout plan.
fn web_rollout(plan: &str) -> String {
    format!("{}[service.rollout]\n{plan}\n", web("0"))
}

/// The most a client runs, whatever happens.
const CLIENT_DEADLINE: Duration = Duration::from_secs(90);

/// A client through one host: a connection (one request) every 10 ms from the lab's client
/// namespace, counting answers per color and failures; bounded by [`CLIENT_DEADLINE`].
struct Client {
    stop: Arc<AtomicBool>,
    /// (blue, green, failures)
    tally: Arc<Mutex<(usize, usize, Vec<String>)>>,
    thread: Option<JoinHandle<()>>,
}

impl Client {
    fn start(lab: &Lab) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let tally = Arc::new(Mutex::new((0, 0, Vec::new())));
        let vip: SocketAddr = WEB.parse().unwrap();
        let (stop_in, tally_in) = (stop.clone(), tally.clone());
        let thread = lab.topology.client.spawn(move || {
            let started = Instant::now();
            while !stop_in.load(Ordering::Relaxed) && started.elapsed() < CLIENT_DEADLINE {
                let result = request(vip);
                let mut tally = tally_in.lock().unwrap();
                match result.as_deref().map(color_of) {
                    Ok("blue") => tally.0 += 1,
                    Ok(_) => tally.1 += 1,
                    Err(error) => tally.2.push(error.clone()),
                }
                drop(tally);
                std::thread::sleep(Duration::from_millis(10));
            }
        });
        Self {
            stop,
            tally,
            thread: Some(thread),
        }
    }

    /// Stops the client; (blue, green, failures).
    fn finish(mut self) -> (usize, usize, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            thread.join().expect("client thread");
        }
        self.tally.lock().unwrap().clone()
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn rollout_status(lab: &Lab) -> RolloutReport {
    serde_json::from_str(&lab.cli_ok(&["rollout", "status", "web", "--json"]))
        .expect("rollout status JSON")
}

/// Waits (bounded) until the fleet's rollout, read through `lab`, satisfies `done`.
fn rollout_until(
    lab: &Lab,
    limit: Duration,
    done: impl Fn(&RolloutReport) -> bool,
) -> RolloutReport {
    let deadline = Instant::now() + limit;
    loop {
        let report = rollout_status(lab);
        if done(&report) {
            return report;
        }
        assert!(
            Instant::now() < deadline,
            "the fleet's rollout did not get there in {limit:?}: {report:#?}\ndaemon log:\n{}",
            lab.daemon_log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Every host in `labs` runs `web` at `green_weight` with `stable` as its stable color.
fn all_at(labs: &[&Lab], green_weight: u32, stable: ColorName) {
    for (index, lab) in labs.iter().enumerate() {
        eventually(lab, "the fleet's rollout decision applied", |status| {
            status
                .services
                .iter()
                .any(|s| s.name == "web" && s.green_weight == green_weight && s.stable == stable)
        });
        let (blue, green) = split(lab);
        let expected = if green_weight == 0 { (20, 0) } else { (0, 20) };
        assert_eq!((blue, green), expected, "host {index}: new connections");
    }
}

/// The host holding the rollout leadership (`/<fleet>/leader`).
fn leader(etcd: &Etcd) -> String {
    etcd.ctl(&["get", &format!("/{FLEET}/leader"), "--print-value-only"])
        .trim()
        .to_owned()
}

#[test]
fn a_fleet_rollout_of_a_healthy_green_completes_on_every_host() {
    if !require_privileges("a_fleet_rollout_of_a_healthy_green_completes_on_every_host") {
        return;
    }
    let mut etcd = Etcd::start("fr");
    let plan = web_rollout("steps = [20, 50, 100]\nevery = \"1s\"\nmin_flows = 5");
    let labs = fleet("fr", &mut etcd, &[plan.clone(), plan.clone(), plan]);
    for lab in &labs {
        connected(lab);
    }
    let clients: Vec<Client> = labs.iter().map(Client::start).collect();
    // Started on a host that need not be the leader: the rollout is the fleet's.
    let out = labs[2].cli(&["rollout", "start", "web", "--wait"]);
    assert_eq!(
        out.code,
        0,
        "completed: {}{}\nleader log:\n{}",
        out.stdout,
        out.stderr,
        labs[0].daemon_log()
    );
    let report = rollout_status(&labs[1]);
    assert_eq!(report.phase, Phase::Completed, "{report:#?}");
    assert!(
        report
            .history
            .iter()
            .any(|decision| decision.reason.contains("summed over 3 hosts (a,b,c)")),
        "judged on every host's signals: {report:#?}"
    );
    assert!(
        report
            .history
            .iter()
            .filter(|d| d.action == "advance")
            .count()
            == 2,
        "every step passed: {report:#?}"
    );
    all_at(
        &labs.iter().collect::<Vec<_>>(),
        1_000_000,
        ColorName::Green,
    );
    for (index, client) in clients.into_iter().enumerate() {
        let (blue, green, failed) = client.finish();
        assert!(
            blue > 0 && green > 0 && failed.is_empty(),
            "client through host {index}: {blue} blue, {green} green, failed {failed:?}\nresets: {}",
            labs[index].explain_resets()
        );
    }
}

#[test]
fn a_fleet_rollout_of_a_refusing_green_is_aborted_on_every_host() {
    if !require_privileges("a_fleet_rollout_of_a_refusing_green_is_aborted_on_every_host") {
        return;
    }
    let mut etcd = Etcd::start("fa");
    let plan = web_rollout("steps = [20, 50, 100]\nevery = \"2s\"\nmin_flows = 5");
    let mut labs = fleet("fa", &mut etcd, &[plan.clone(), plan.clone(), plan]);
    for lab in &mut labs {
        connected(lab);
        // Green is deployed broken on every host: nothing listens, every SYN gets a RST.
        lab.servers.remove(1);
    }
    let _clients: Vec<Client> = labs.iter().map(Client::start).collect();
    let out = labs[0].cli(&["rollout", "start", "web", "--wait"]);
    assert_eq!(
        out.code, 6,
        "--wait exits 6 on rollback: {}{}",
        out.stdout, out.stderr
    );
    let report = rollout_status(&labs[2]);
    assert_eq!(report.phase, Phase::Aborted, "{report:#?}");
    let last = report.last.clone().unwrap();
    assert_eq!(last.action, "abort");
    assert!(last.reason.contains("failure ratio"), "{}", last.reason);
    assert_eq!(report.step, 1, "rolled back at the first step");
    all_at(&labs.iter().collect::<Vec<_>>(), 0, ColorName::Blue);
}

#[test]
fn a_killed_leader_is_replaced_and_the_rollout_finishes() {
    if !require_privileges("a_killed_leader_is_replaced_and_the_rollout_finishes") {
        return;
    }
    let mut etcd = Etcd::start("fk");
    let plan = web_rollout("steps = [10, 20, 30, 50, 100]\nevery = \"2s\"\nmin_flows = 5");
    let mut labs = fleet("fk", &mut etcd, &[plan.clone(), plan.clone(), plan]);
    for lab in &labs {
        connected(lab);
    }
    let clients: Vec<Client> = labs.iter().map(Client::start).collect();
    labs[0].cli_ok(&["rollout", "start", "web"]);
    // Mid-rollout: past the first step.
    let before = rollout_until(&labs[0], Duration::from_secs(30), |report| report.step >= 2);
    let name = leader(&etcd);
    let killed = ["a", "b", "c"]
        .iter()
        .position(|host| *host == name)
        .unwrap_or_else(|| panic!("leader `{name}` is one of the hosts"));
    let step = before.step;
    let killed_at = splitter::fleet::host::unix_ms();
    labs[killed].kill_daemon();
    let survivor = (killed + 1) % 3;
    let taken_over = rollout_until(&labs[survivor], Duration::from_secs(30), |report| {
        report
            .history
            .iter()
            .any(|d| d.at_unix_ms > killed_at && d.reason.contains("leads the fleet's rollout"))
    });
    let first = taken_over
        .history
        .iter()
        .find(|d| d.at_unix_ms > killed_at && d.reason.contains("leads the fleet's rollout"))
        .unwrap();
    let failover_ms = first.at_unix_ms - killed_at;
    let new_leader = leader(&etcd);
    assert_ne!(new_leader, name, "another host leads");
    assert!(
        first.reason.contains(&format!("host {new_leader} leads")),
        "{}",
        first.reason
    );
    assert!(
        taken_over.step >= step,
        "resumed at the same step (or later): {step} then {taken_over:#?}"
    );
    println!(
        "FLEET leader failover (leader SIGKILLed -> new leader's first decision written): {:.2} s",
        failover_ms as f64 / 1e3
    );
    assert!(
        failover_ms < 10_000,
        "failover within a few seconds: {failover_ms} ms"
    );
    let done = rollout_until(&labs[survivor], Duration::from_secs(60), |report| {
        report.phase != Phase::Running
    });
    assert_eq!(done.phase, Phase::Completed, "{done:#?}");
    let live: Vec<&Lab> = labs
        .iter()
        .enumerate()
        .filter(|(index, _)| *index != killed)
        .map(|(_, lab)| lab)
        .collect();
    all_at(&live, 1_000_000, ColorName::Green);
    for (index, client) in clients.into_iter().enumerate() {
        let (blue, green, failed) = client.finish();
        assert!(
            index == killed || (blue > 0 && green > 0 && failed.is_empty()),
            "client through host {index}: {blue} blue, {green} green, failed {failed:?}"
        );
    }
}

// ---- Issue 15's gaps: definitions that change, mismatched hosts' signals, list and --cut ----

/// `web` with blue reduced to its first backend: the pool change an SRE rolls out.
fn web_one_blue(plan: &str) -> String {
    format!(
        "{}{plan}",
        service("web", WEB, "tcp", "0", &BLUE[..1], &GREEN, TCP_PORT)
    )
}

fn mismatched(lab: &Lab) -> bool {
    lab.status()
        .fleet
        .is_some_and(|fleet| fleet.mismatched.contains_key("web"))
}

#[test]
fn a_pool_change_reloaded_host_by_host_becomes_the_fleets_definition() {
    if !require_privileges("a_pool_change_reloaded_host_by_host_becomes_the_fleets_definition") {
        return;
    }
    let mut etcd = Etcd::start("fd");
    let labs = fleet("fd", &mut etcd, &[web("0"), web("0"), web("0")]);
    for lab in &labs {
        connected(lab);
    }
    let before = fleet_status(&labs[0]).definitions["web"].clone();
    // Configuration management deploys the new pool and reloads one host after the other.
    for (index, lab) in labs.iter().enumerate() {
        lab.write_config(&format!(
            "{}{}",
            web_one_blue(""),
            etcd.fleet_section(FLEET, ["a", "b", "c"][index])
        ));
        lab.cli_ok(&["reload"]);
        if index == 0 {
            // During the change: a differs from the fleet and is left alone.
            eventually(lab, "a reported mismatched after its reload", |status| {
                status
                    .fleet
                    .as_ref()
                    .is_some_and(|fleet| fleet.mismatched.contains_key("web"))
            });
            let out = labs[2].cli_ok(&["set-weight", "web", "100"]);
            assert!(out.contains("2/3 hosts at revision"), "{out}");
            assert!(out.contains("left alone: a: its definition"), "{out}");
            assert_eq!(split(&labs[0]), (20, 0), "host a is left alone");
            assert_eq!(split(&labs[1]), (0, 20), "host b follows the fleet");
            let table = labs[1].cli_ok(&["fleet", "status"]);
            assert!(
                table.contains("web: definition differs, not applied"),
                "{table}"
            );
        }
    }
    // Every host runs the new definition: the fleet's follows, nobody is left alone, and the
    // fleet's weight (100 %, written while a was left alone) applies on a too.
    for lab in &labs {
        eventually(lab, "the definitions converged", |status| {
            status
                .fleet
                .as_ref()
                .is_some_and(|fleet| fleet.connected && fleet.mismatched.is_empty())
        });
    }
    let report = fleet_status(&labs[1]);
    assert_ne!(report.definitions["web"], before, "the fleet's hash moved");
    for host in &report.hosts {
        assert_eq!(host.record.definitions, report.definitions, "{report:?}");
        assert!(host.record.mismatched.is_empty(), "{report:?}");
    }
    let moved: usize = labs
        .iter()
        .map(|lab| lab.daemon_log().matches("it is the fleet's now").count())
        .sum();
    assert_eq!(
        moved, 1,
        "one host moved the fleet's definition, logged once"
    );
    eventually(&labs[0], "a applies the fleet's weight again", |status| {
        status
            .services
            .iter()
            .any(|s| s.name == "web" && s.green_weight == 1_000_000)
    });
    // A weight set afterwards applies on all three.
    let out = labs[0].cli_ok(&["set-weight", "web", "0"]);
    assert!(out.contains("3/3 hosts at revision"), "{out}");
    assert!(!out.contains("left alone"), "{out}");
    for (index, lab) in labs.iter().enumerate() {
        assert_eq!(split(lab), (20, 0), "host {index}: all on blue");
        assert!(!mismatched(lab));
    }
}

#[test]
fn adopt_definition_makes_one_hosts_definition_the_fleets() {
    if !require_privileges("adopt_definition_makes_one_hosts_definition_the_fleets") {
        return;
    }
    let mut etcd = Etcd::start("fo");
    let labs = fleet("fo", &mut etcd, &[web("0"), web_one_blue("")]);
    for lab in &labs {
        connected(lab);
    }
    assert!(mismatched(&labs[1]) && !mismatched(&labs[0]));
    let out = labs[1].cli_ok(&["fleet", "adopt-definition", "web"]);
    assert!(out.contains("the fleet's definition is now"), "{out}");
    assert!(
        out.contains("left alone until their files match: a"),
        "{out}"
    );
    eventually(&labs[0], "a is mismatched now", |status| {
        status
            .fleet
            .as_ref()
            .is_some_and(|fleet| fleet.mismatched.contains_key("web"))
    });
    eventually(&labs[1], "b agrees now", |status| {
        status
            .fleet
            .as_ref()
            .is_some_and(|fleet| fleet.mismatched.is_empty())
    });
    let out = labs[1].cli_ok(&["set-weight", "web", "100"]);
    assert!(out.contains("1/2 hosts at revision"), "{out}");
    assert!(out.contains("left alone: a: its definition"), "{out}");
    assert_eq!(split(&labs[1]), (0, 20), "b follows the fleet");
    assert_eq!(split(&labs[0]), (20, 0), "a is left alone");
}

/// A fleet rollout with one host whose pool differs: its signals are not summed, `rollout
/// list` shows the fleet's rollout on any host, `abort --cut` cuts on every host that applies it.
#[test]
fn a_mismatched_host_is_not_summed_and_abort_cut_cuts_on_every_host() {
    if !require_privileges("a_mismatched_host_is_not_summed_and_abort_cut_cuts_on_every_host") {
        return;
    }
    let mut etcd = Etcd::start("fc");
    let plan = "steps = [100]\nevery = \"60s\"\nmin_flows = 1000";
    let labs = fleet(
        "fc",
        &mut etcd,
        &[
            web_rollout(plan),
            web_rollout(plan),
            web_one_blue(&format!("[service.rollout]\n{plan}\n")),
        ],
    );
    for lab in &labs {
        connected(lab);
    }
    assert!(mismatched(&labs[2]));
    let mut blue_on_c = labs[2].connect(WEB);
    assert_eq!(color_of(&blue_on_c.ask().expect("blue through c")), "blue");
    labs[0].cli_ok(&["rollout", "start", "web"]);
    // (Each host publishes its signals once a second: the leader may judge first over fewer,
    // then starts a fresh window when the set of hosts changes.)
    let report = rollout_until(&labs[1], Duration::from_secs(20), |report| {
        report.fleet.fleet_signals.as_deref()
            == Some("signals summed over 2 of 3 hosts (c: definition differs)")
    });
    assert!(
        report
            .history
            .iter()
            .all(|d| !d.reason.contains("over 3 hosts")),
        "c's signals were never summed: {report:#?}"
    );
    let text = labs[1].cli_ok(&["rollout", "status", "web"]);
    assert!(
        text.contains("fleet: signals summed over 2 of 3 hosts (c: definition differs)"),
        "{text}"
    );
    // `rollout list` on any host shows the fleet's rollout.
    let list: Vec<RolloutReport> =
        serde_json::from_str(&labs[2].cli_ok(&["rollout", "list", "--json"])).unwrap();
    assert_eq!(list.len(), 1, "{list:#?}");
    assert_eq!(
        (list[0].service.as_str(), list[0].phase),
        ("web", Phase::Running)
    );
    assert!(
        labs[0].cli_ok(&["rollout", "list"]).contains("web"),
        "the table lists web"
    );
    // Green connections through a and b; c is left alone (blue).
    let mut green: Vec<_> = labs[..2]
        .iter()
        .map(|lab| {
            let mut conversation = lab.connect(WEB);
            assert_eq!(color_of(&conversation.ask().expect("green")), "green");
            conversation
        })
        .collect();
    let out = labs[1].cli_ok(&["rollout", "abort", "web", "--cut"]);
    assert!(out.contains("2/3 hosts at revision"), "{out}");
    assert!(out.contains("left alone: c: its definition"), "{out}");
    for (index, conversation) in green.iter_mut().enumerate() {
        let broken = conversation.ask();
        assert!(
            broken.is_err(),
            "host {index}: a cut green connection breaks: {broken:?}"
        );
    }
    assert_eq!(
        color_of(&blue_on_c.ask().expect("c's blue connection stays")),
        "blue"
    );
    for (index, lab) in labs.iter().enumerate() {
        assert_eq!(split(lab), (20, 0), "host {index}: new flows go blue");
    }
    let report = rollout_status(&labs[2]);
    assert_eq!(report.phase, Phase::Aborted, "{report:#?}");
    assert!(
        report.last.unwrap().reason.contains("--cut"),
        "the abort says it cut"
    );
    assert!(
        labs[0]
            .daemon_log()
            .contains("canary's established flows unpinned"),
        "host a cut its flows"
    );
}
