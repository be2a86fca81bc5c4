//! Backend health end to end: the real daemon and CLI, real TCP servers in the green
//! namespace that the test kills and restarts, a client opening new connections. Active
//! checks (TCP and HTTP), passive ejection from the kernel's handshake signals, `backend
//! drain|disable|enable`, and the rollout abort when green has no backend in rotation.

use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};

use splitter::{
    control::protocol::{BackendStatus, RolloutReport},
    health::BackendState,
    rollout::Phase,
};
use splitter_tests::{
    daemon_harness::{BLUE, GREEN, Lab, TCP_PORT, WorkDir, metric, service},
    health::{Load, backend},
    require_privileges,
};

const WEB: &str = "198.18.100.10:80";

fn address(host: &str) -> SocketAddr {
    SocketAddr::new(host.parse().unwrap(), TCP_PORT)
}

/// A lab whose backends (blue[0], green[0], green[1] on `TCP_PORT`) each run in their own
/// server group, so one can be killed. Returned in that order.
fn lab(tag: &str) -> (Lab, [Option<splitter_tests::servers::Servers>; 3]) {
    let lab = Lab::bare(tag, WorkDir::new(tag));
    let servers = [
        Some(backend(&lab.topology.blue, address(BLUE[0]))),
        Some(backend(&lab.topology.green, address(GREEN[0]))),
        Some(backend(&lab.topology.green, address(GREEN[1]))),
    ];
    (lab, servers)
}

fn web(weight: &str, extra: &str) -> String {
    let mut text = service("web", WEB, "tcp", weight, &BLUE[..1], &GREEN, TCP_PORT);
    text.push_str(extra);
    text
}

/// The status row of one backend of `web`.
fn row(lab: &Lab, backend: SocketAddr) -> BackendStatus {
    lab.status()
        .services
        .iter()
        .find(|service| service.name == "web")
        .expect("web in status")
        .colors
        .iter()
        .flat_map(|color| color.backends.clone())
        .find(|row| row.address == backend)
        .unwrap_or_else(|| panic!("{backend} in status"))
}

fn wait_state(lab: &Lab, backend: SocketAddr, state: BackendState, limit: Duration) -> Duration {
    let started = Instant::now();
    loop {
        let row = row(lab, backend);
        if row.state == state {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < limit,
            "{backend} did not become {state} within {limit:?}: {row:#?}\n{}",
            lab.daemon_log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Kill one green backend's server: after two check intervals no new connection fails; bring
/// it back: after `rise` passes new connections reach it again.
fn kill_and_restart(tag: &str, check: &str) {
    let (mut lab, mut servers) = lab(tag);
    let interval = Duration::from_millis(500);
    lab.write_config(&web(
        "100",
        &format!(
            "[service.health]\n{check}\ninterval = \"500ms\"\ntimeout = \"250ms\"\nrise = 2\nfall = 2\n"
        ),
    ));
    lab.start_daemon();
    let dead = address(GREEN[1]);
    // Both green backends serve before anything happens.
    let answers = lab.requests(WEB, 40);
    assert!(
        answers.iter().all(Result::is_ok),
        "before the kill: {answers:?}"
    );
    assert!(
        answers
            .iter()
            .any(|a| a.as_deref() == Ok(&dead.to_string())),
        "{dead} takes new flows before the kill: {answers:?}"
    );
    let load = Load::start(&lab, WEB, Duration::from_millis(5), Duration::from_secs(60));
    std::thread::sleep(Duration::from_millis(300));
    let killed = Instant::now();
    servers[2].take(); // stops the server: its port refuses connections (RST)
    let down_after = wait_state(&lab, dead, BackendState::Down, Duration::from_secs(5));
    // Keep connecting for a while after the deadline.
    std::thread::sleep(Duration::from_secs(2));
    let outcomes = load.finish();
    let deadline = killed + 2 * interval + Duration::from_millis(200);
    let late: Vec<_> = outcomes
        .iter()
        .filter(|(at, result)| *at > deadline && result.is_err())
        .collect();
    let after = outcomes.iter().filter(|(at, _)| *at > deadline).count();
    let early = outcomes
        .iter()
        .filter(|(at, result)| *at > killed && *at <= deadline && result.is_err())
        .count();
    eprintln!(
        "{check}: down after {down_after:?}; {early} failed connections before the deadline, {} after it (of {after})",
        late.len()
    );
    assert!(after > 100, "the client kept connecting: {after}");
    assert!(
        late.is_empty(),
        "new connections failed more than two intervals after the kill: {late:?}\nresets: {}\n{}",
        lab.explain_resets(),
        lab.daemon_log()
    );
    let down = row(&lab, dead);
    assert!(down.state_reason.starts_with("health check: "), "{down:#?}");
    let metrics = lab.metrics();
    let labels = format!("service=\"web\",color=\"green\",backend=\"{dead}\"");
    assert_eq!(
        metric(&metrics, &format!("splitter_backend_up{{{labels}}}")),
        Some(0.0)
    );
    assert_eq!(
        metric(
            &metrics,
            &format!("splitter_backend_transitions_total{{{labels},to=\"down\"}}")
        ),
        Some(1.0)
    );
    let log = lab.daemon_log();
    assert!(
        log.lines()
            .any(|line| line.contains("backend state") && line.contains(&dead.to_string())),
        "one log line per transition:\n{log}"
    );
    // Back: a server again on the same port; `rise` passes later it takes new flows.
    servers[2] = Some(backend(&lab.topology.green, dead));
    let up_after = wait_state(&lab, dead, BackendState::Up, Duration::from_secs(5));
    eprintln!("{check}: up again after {up_after:?}");
    assert!(
        up_after >= interval,
        "rise = 2 needs two passes: {up_after:?}"
    );
    let answers = lab.requests(WEB, 40);
    assert!(answers.iter().all(Result::is_ok), "{answers:?}");
    assert!(
        answers
            .iter()
            .any(|a| a.as_deref() == Ok(&dead.to_string())),
        "{dead} takes new flows again: {answers:?}"
    );
}

#[test]
fn a_killed_backend_leaves_rotation_tcp_check() {
    if !require_privileges("a_killed_backend_leaves_rotation_tcp_check") {
        return;
    }
    kill_and_restart("hktcp", "check = \"tcp\"");
}

#[test]
fn a_killed_backend_leaves_rotation_http_check() {
    if !require_privileges("a_killed_backend_leaves_rotation_http_check") {
        return;
    }
    kill_and_restart(
        "hkhttp",
        "check = \"http\"\npath = \"/healthz\"\nexpect = 200",
    );
}

/// Green[1] has no listener: half of green's handshakes are refused. No active check: the
/// kernel's signals eject it, and then no new connection fails.
#[test]
fn a_backend_refusing_handshakes_is_ejected_passively() {
    if !require_privileges("a_backend_refusing_handshakes_is_ejected_passively") {
        return;
    }
    let (mut lab, mut servers) = lab("hpass");
    servers[2].take();
    lab.write_config(&web(
        "100",
        "[service.outlier]\nfailure_percent = 30\nmin_handshakes = 10\nwindow = \"5s\"\nbase_ejection = \"60s\"\n",
    ));
    lab.start_daemon();
    let refusing = address(GREEN[1]);
    assert_eq!(row(&lab, refusing).state, BackendState::Up);
    let load = Load::start(
        &lab,
        WEB,
        Duration::from_millis(10),
        Duration::from_secs(60),
    );
    let ejected_after = wait_state(
        &lab,
        refusing,
        BackendState::Ejected,
        Duration::from_secs(10),
    );
    let ejected = Instant::now();
    std::thread::sleep(Duration::from_secs(2));
    let outcomes = load.finish();
    let failed_before = outcomes.iter().filter(|(_, r)| r.is_err()).count();
    let late: Vec<_> = outcomes
        .iter()
        .filter(|(at, result)| *at > ejected + Duration::from_millis(100) && result.is_err())
        .collect();
    eprintln!("ejected after {ejected_after:?}; {failed_before} refused connections in all");
    assert!(failed_before > 0, "green[1] refused some handshakes first");
    assert!(late.is_empty(), "after the ejection: {late:?}");
    let ejected_row = row(&lab, refusing);
    assert!(
        ejected_row.state_reason.starts_with("outlier: "),
        "{ejected_row:#?}"
    );
    assert!(
        ejected_row.signals.handshakes_refused > 0,
        "{ejected_row:#?}"
    );
    assert_eq!(
        row(&lab, address(GREEN[0])).state,
        BackendState::Up,
        "the serving backend stays"
    );
}

/// `backend drain` with open connections: new flows avoid it, the open connections keep
/// working, `status` shows them until they close. `disable` survives a daemon restart;
/// `enable` brings it back.
#[test]
fn drain_disable_enable_and_restart() {
    if !require_privileges("drain_disable_enable_and_restart") {
        return;
    }
    let (mut lab, _servers) = lab("hdrain");
    lab.write_config(&web("100", ""));
    lab.start_daemon();
    let drained = address(GREEN[1]);
    // Open connections until a few are on green[1] (bounded).
    let mut open = Vec::new();
    for _ in 0..64 {
        let mut conversation = lab.connect(WEB);
        let answer = conversation.ask().expect("first answer");
        if answer == drained.to_string() {
            open.push(conversation);
        }
        if open.len() == 3 {
            break;
        }
    }
    assert_eq!(open.len(), 3, "three connections on {drained}");
    let out = lab.cli_ok(&["backend", "drain", "web", &drained.to_string()]);
    assert!(out.contains("up -> draining"), "{out}");
    let answers = lab.requests(WEB, 40);
    assert!(answers.iter().all(Result::is_ok), "{answers:?}");
    assert!(
        !answers
            .iter()
            .any(|a| a.as_deref() == Ok(&drained.to_string())),
        "no new flow to a draining backend: {answers:?}"
    );
    for conversation in &mut open {
        assert_eq!(
            conversation.ask().as_deref(),
            Ok(drained.to_string().as_str()),
            "open connections keep their backend"
        );
    }
    let draining = row(&lab, drained);
    assert_eq!(draining.state, BackendState::Draining);
    assert_eq!(draining.live_flows, 3, "{draining:#?}");
    let text = lab.cli_ok(&["status", "web"]);
    assert!(
        text.contains(&format!("green {drained} DRAINING")),
        "status shows it: {text}"
    );
    // Still open: --timeout gives up with exit 7.
    lab.cli_code(
        &[
            "backend",
            "drain",
            "web",
            &drained.to_string(),
            "--timeout",
            "1s",
        ],
        7,
    );
    drop(open);
    let out = lab.cli_ok(&[
        "backend",
        "drain",
        "web",
        &drained.to_string(),
        "--wait",
        "--timeout",
        "20s",
    ]);
    assert!(out.contains("drained in"), "{out}");
    // Unknown backend: a clear error naming what exists, exit 2.
    let unknown = lab.cli_code(&["backend", "disable", "web", "198.18.2.99:8080"], 2);
    assert!(
        unknown.stderr.contains(&address(GREEN[0]).to_string()),
        "{}",
        unknown.stderr
    );

    // disable: persisted across a restart.
    let disabled = address(GREEN[0]);
    lab.cli_ok(&["backend", "enable", "web", &drained.to_string()]);
    lab.cli_ok(&["backend", "disable", "web", &disabled.to_string()]);
    lab.stop_daemon();
    lab.start_daemon();
    assert_eq!(row(&lab, disabled).state, BackendState::Disabled);
    assert_eq!(row(&lab, drained).state, BackendState::Up);
    let answers = lab.requests(WEB, 30);
    assert!(
        answers
            .iter()
            .all(|a| a.as_deref() == Ok(&drained.to_string())),
        "only green[1] takes new flows: {answers:?}"
    );
    lab.cli_ok(&["backend", "enable", "web", &disabled.to_string()]);
    lab.stop_daemon();
    lab.start_daemon();
    assert_eq!(row(&lab, disabled).state, BackendState::Up);
    let answers = lab.requests(WEB, 40);
    assert!(
        answers
            .iter()
            .any(|a| a.as_deref() == Ok(&disabled.to_string())),
        "{answers:?}"
    );
}

/// A rollout in progress aborts when green has no backend in rotation.
#[test]
fn a_rollout_aborts_when_green_has_no_healthy_backend() {
    if !require_privileges("a_rollout_aborts_when_green_has_no_healthy_backend") {
        return;
    }
    let (mut lab, _servers) = lab("hroll");
    lab.write_config(&web(
        "0",
        "[service.rollout]\nsteps = [10, 50, 100]\nevery = \"60s\"\n",
    ));
    lab.start_daemon();
    lab.cli_ok(&["rollout", "start", "web"]);
    for host in GREEN {
        lab.cli_ok(&["backend", "disable", "web", &address(host).to_string()]);
    }
    let out = lab.cli_ok(&["rollout", "status", "web", "--json"]);
    let report: RolloutReport = serde_json::from_str(&out).expect("rollout status JSON");
    assert_eq!(report.phase, Phase::Aborted, "{report:#?}");
    let last = report.last.expect("a decision");
    assert_eq!(last.reason, "green has no healthy backend", "{last:#?}");
    assert_eq!(report.green_weight, 0, "back to the start weight");
    let log = lab.daemon_log();
    assert!(
        log.contains("green has no healthy backend"),
        "the reason is logged:\n{log}"
    );
    // Blue still serves every new flow.
    let answers = lab.requests(WEB, 20);
    assert!(
        answers
            .iter()
            .all(|a| a.as_deref() == Ok(&address(BLUE[0]).to_string())),
        "{answers:?}"
    );
}

/// `rollout start` refuses when the color it would canary has no backend in rotation, naming
/// each backend's state and why; it starts once one is back.
#[test]
fn rollout_start_refuses_when_the_canary_color_has_no_backend_in_rotation() {
    if !require_privileges("rollout_start_refuses_when_the_canary_color_has_no_backend_in_rotation")
    {
        return;
    }
    let (mut lab, mut servers) = lab("hrefuse");
    lab.write_config(&web(
        "0",
        "[service.health]\ncheck = \"tcp\"\ninterval = \"500ms\"\ntimeout = \"250ms\"\n\
         rise = 1\nfall = 1\n[service.rollout]\nsteps = [10, 50, 100]\nevery = \"60s\"\n",
    ));
    lab.start_daemon();
    let (dead, disabled) = (address(GREEN[0]), address(GREEN[1]));
    servers[1].take(); // green[0] refuses connections: its check takes it down
    wait_state(&lab, dead, BackendState::Down, Duration::from_secs(5));
    lab.cli_ok(&["backend", "disable", "web", &disabled.to_string()]);

    let refused = lab.cli(&["rollout", "start", "web"]);
    assert_eq!(refused.code, 2, "a usage error: {refused:?}");
    for expected in [
        "green has no backend in rotation".to_owned(),
        format!("{dead} down (health check: connect:"),
        format!("{disabled} disabled (backend disable)"),
        "splitter backend enable web".to_owned(),
    ] {
        assert!(
            refused.stderr.contains(&expected),
            "the refusal says {expected:?}: {refused:?}"
        );
    }
    let out = lab.cli(&["rollout", "status", "web", "--json"]);
    assert_ne!(
        out.code, 0,
        "no rollout was recorded by the refusal: {out:?}"
    );
    assert_eq!(
        row(&lab, disabled).state,
        BackendState::Disabled,
        "nothing changed"
    );

    // One green backend back in rotation: the rollout starts.
    lab.cli_ok(&["backend", "enable", "web", &disabled.to_string()]);
    wait_state(&lab, disabled, BackendState::Up, Duration::from_secs(5));
    lab.cli_ok(&["rollout", "start", "web"]);
    let out = lab.cli_ok(&["rollout", "status", "web", "--json"]);
    let report: RolloutReport = serde_json::from_str(&out).expect("rollout status JSON");
    assert_eq!(report.phase, Phase::Running, "{report:#?}");
}

/// Slow start: green[1] killed, brought back with `slow_start = "4s"`. Real TCP connections,
/// one new one every 4 ms: its share of green's new connections in the first second is well
/// below its full share (1/2: two green backends of weight 1), and reaches it after the ramp;
/// connections opened during the ramp keep their backend and keep working. `status` shows the
/// ramp and the effective weight; a daemon restart during a ramp does not jump it to full.
#[test]
#[expect(clippy::too_many_lines, reason = "one scenario, step by step")]
fn a_backend_back_in_rotation_ramps_up_slowly() {
    if !require_privileges("a_backend_back_in_rotation_ramps_up_slowly") {
        return;
    }
    let (mut lab, mut servers) = lab("hslow");
    let health = |slow_start: &str| {
        web(
            "100",
            &format!(
                "[service.health]\ncheck = \"tcp\"\ninterval = \"250ms\"\ntimeout = \"200ms\"\n\
                 rise = 2\nfall = 1\nslow_start = \"{slow_start}\"\n"
            ),
        )
    };
    lab.write_config(&health("4s"));
    lab.start_daemon();
    let ramping = address(GREEN[1]);
    let full = row(&lab, ramping);
    assert_eq!(
        (full.weight, full.effective_weight, full.slow_start_percent),
        (1, 1.0, None),
        "a backend up from the start is at full weight: {full:#?}"
    );
    servers[2].take();
    wait_state(&lab, ramping, BackendState::Down, Duration::from_secs(5));
    assert_eq!(row(&lab, ramping).effective_weight, 0.0);

    let load = Load::start(&lab, WEB, Duration::from_millis(4), Duration::from_secs(30));
    servers[2] = Some(backend(&lab.topology.green, ramping));
    wait_state(&lab, ramping, BackendState::Up, Duration::from_secs(5));
    let up = Instant::now();
    let during = row(&lab, ramping);
    assert!(
        during.slow_start_percent.is_some_and(|p| p < 50.0)
            && during.effective_weight > 0.0
            && during.effective_weight < 0.5,
        "status shows the ramp: {during:#?}"
    );
    let text = lab.cli_ok(&["status", "web"]);
    assert!(text.contains("up (slow start "), "{text}");
    let labels = format!("service=\"web\",color=\"green\",backend=\"{ramping}\"");
    let effective = format!("splitter_backend_effective_weight{{{labels}}}");
    let value = metric(&lab.metrics(), &effective);
    assert!(
        value.is_some_and(|v| v > 0.0 && v < 1.0),
        "{effective} during the ramp: {value:?}"
    );
    // Connections opened during the ramp: held open through it, asked again after it.
    std::thread::sleep(Duration::from_millis(1500));
    let mut held: Vec<_> = (0..16)
        .map(|_| {
            let mut conversation = lab.connect(WEB);
            let first = conversation
                .ask()
                .expect("a connection opened during the ramp");
            (conversation, first)
        })
        .collect();
    std::thread::sleep(up + Duration::from_secs(8) - Instant::now());
    let outcomes = load.finish();

    // The share of the ramping backend among new connections, per second since it came up.
    let mut shares = Vec::new();
    for second in 0..8u32 {
        let from = up + Duration::from_secs(u64::from(second));
        let to = from + Duration::from_secs(1);
        let window: Vec<_> = outcomes
            .iter()
            .filter(|(at, _)| *at >= from && *at < to)
            .collect();
        let to_ramping = window
            .iter()
            .filter(|(_, r)| r.as_deref() == Ok(&ramping.to_string()))
            .count();
        #[expect(clippy::cast_precision_loss, reason = "a share, shown as percent")]
        shares.push((to_ramping as f64 / window.len().max(1) as f64, window.len()));
    }
    let figures: Vec<String> = shares
        .iter()
        .enumerate()
        .map(|(second, (share, n))| format!("{second}s: {:.1}% of {n}", share * 100.0))
        .collect();
    eprintln!(
        "slow start 4s, share of new connections to {ramping} per second since up (full share 50%): {}",
        figures.join(", ")
    );
    let failed: Vec<_> = outcomes.iter().filter(|(_, r)| r.is_err()).collect();
    assert!(
        failed.is_empty(),
        "no connection fails during the ramp: {failed:?}\nresets: {}\n{}",
        lab.explain_resets(),
        lab.daemon_log()
    );
    assert!(
        shares.iter().all(|(_, n)| *n > 50),
        "the client kept connecting: {figures:?}"
    );
    assert!(
        shares[0].0 < 0.25,
        "first second well below the full share (50%): {figures:?}\n{}",
        lab.daemon_log()
    );
    let late: f64 = shares[6..].iter().map(|(share, _)| share).sum::<f64>() / 2.0;
    assert!(
        (0.38..0.62).contains(&late),
        "the full share (50%) after the ramp: {figures:?}"
    );
    for (conversation, first) in &mut held {
        assert_eq!(
            conversation.ask().as_ref(),
            Ok(&*first),
            "a connection opened during the ramp keeps its backend"
        );
    }
    drop(held);
    let after = row(&lab, ramping);
    assert_eq!(
        (after.effective_weight, after.slow_start_percent),
        (1.0, None),
        "{after:#?}"
    );
    assert_eq!(metric(&lab.metrics(), &effective), Some(1.0));
    let log = lab.daemon_log();
    assert!(log.contains("slow start step"), "{log}");

    // `backend enable` ramps too; a daemon restart in the middle of a (longer) ramp keeps the
    // backend below its full weight.
    lab.write_config(&health("60s"));
    lab.cli_ok(&["reload"]);
    lab.cli_ok(&["backend", "disable", "web", &ramping.to_string()]);
    lab.cli_ok(&["backend", "enable", "web", &ramping.to_string()]);
    let enabled = row(&lab, ramping);
    assert!(
        enabled.slow_start_percent.is_some_and(|p| p < 20.0),
        "enable starts a ramp: {enabled:#?}"
    );
    lab.stop_daemon();
    lab.start_daemon();
    let restarted = row(&lab, ramping);
    assert!(
        restarted.state == BackendState::Up
            && restarted.slow_start_percent.is_some_and(|p| p < 50.0),
        "a restart resumes the ramp, not the full weight: {restarted:#?}"
    );
    let green = lab.requests(WEB, 60);
    let to_ramping = green
        .iter()
        .filter(|a| a.as_deref() == Ok(&ramping.to_string()))
        .count();
    assert!(
        green.iter().all(Result::is_ok) && to_ramping < 20,
        "after the restart it still takes well below half: {to_ramping} of 60"
    );
}
