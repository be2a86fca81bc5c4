//! Two full release cycles, end to end: the real daemon and CLI, real HTTP/1.1 backends (the
//! demo's, answering `<release> <instance>`), a client opening a connection every 10 ms and
//! keep-alive connections asking every 100 ms.
//!
//! v1 on blue (stable) → v2 canaried on green and completed: green is stable → v3 deployed on
//! blue and canaried from green to blue, aborted halfway: back to 100 % green (the weight the
//! rollout started from) → a broken v3 retried (`rollout retry`), rolled back by the analysis.
//! No request fails outside the broken release, and every keep-alive connection keeps its
//! backend through all of it.

use std::{
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use splitter::{config::ColorName, control::protocol::RolloutReport, rollout::Phase};
use splitter_tests::{
    daemon_harness::{BLUE, GREEN, Lab, TCP_PORT, WorkDir, metric, service},
    demo::http::{Connection, Release, serve},
    require_privileges,
    servers::Servers,
};

const WEB: &str = "198.18.100.10:80";
/// The most any client thread runs, whatever happens.
const DEADLINE: Duration = Duration::from_secs(120);

/// HTTP backends of one color, every instance running `release`.
fn http_servers(lab: &Lab, color: ColorName, release: Release) -> Servers {
    let (ns, hosts) = match color {
        ColorName::Blue => (&lab.topology.blue, &BLUE),
        ColorName::Green => (&lab.topology.green, &GREEN),
    };
    let mut servers = Servers::new();
    for (index, host) in hosts.iter().enumerate() {
        let address = SocketAddr::new(host.parse().unwrap(), TCP_PORT);
        let instance = format!("{}-{index}", color.name());
        servers.tcp_with(ns, address, move |stream, lifetime| {
            serve(stream, release, &instance, lifetime);
        });
    }
    servers
}

fn config(blue_release: &str, green_release: &str) -> String {
    let mut text = service("web", WEB, "tcp", "0", &BLUE, &GREEN, TCP_PORT);
    text.push_str(&format!(
        "blue_release = \"{blue_release}\"\ngreen_release = \"{green_release}\"\n"
    ));
    // This test is about the cycle, not the latency rule (`rollout.rs` tests that). Its 500 ms
    // windows hold ~25 handshakes, so their p99 is the slowest one: one SYN-ACK held up 4.4 ms
    // by a stall of this shared VM (blue's p99 0.2 ms) once rolled back a healthy green. A
    // margin of 50 ms keeps such a stall from deciding; a broken green still fails on resets.
    text.push_str("[service.rollout]\nlatency_margin_ms = 50.0\n");
    text
}

type Outcomes = Arc<Mutex<Vec<(Instant, Result<String, String>)>>>;

/// A connection per request, one every `pace`, from the client namespace.
struct Load {
    stop: Arc<AtomicBool>,
    results: Outcomes,
    thread: Option<JoinHandle<()>>,
}

impl Load {
    fn start(lab: &Lab, pace: Duration) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let results: Outcomes = Arc::default();
        let vip: SocketAddr = WEB.parse().unwrap();
        let (stop_in, results_in) = (stop.clone(), results.clone());
        let thread = lab.topology.client.spawn(move || {
            let started = Instant::now();
            while !stop_in.load(Ordering::Relaxed) && started.elapsed() < DEADLINE {
                let result = Connection::open(vip)
                    .and_then(|mut connection| connection.get(true))
                    .map_err(|e| e.to_string());
                results_in.lock().unwrap().push((Instant::now(), result));
                std::thread::sleep(pace);
            }
        });
        Self {
            stop,
            results,
            thread: Some(thread),
        }
    }

    /// The answers and the failures between `from` and `to`.
    fn between(&self, from: Instant, to: Instant) -> (Vec<String>, Vec<String>) {
        let results = self.results.lock().unwrap();
        let (mut answers, mut failures) = (Vec::new(), Vec::new());
        for (at, result) in results.iter().filter(|(at, _)| (from..to).contains(at)) {
            match result {
                Ok(answer) => answers.push(answer.clone()),
                Err(error) => failures.push(format!("{:?}: {error}", at.duration_since(from))),
            }
        }
        (answers, failures)
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// What one keep-alive connection saw: every distinct answer, or how it broke.
type Seen = Result<Vec<String>, String>;

/// `count` keep-alive connections, each asked every 100 ms until stopped: per connection,
/// every distinct answer, or the first failure.
struct KeepAlive {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<Vec<Seen>>>,
}

impl KeepAlive {
    fn open(lab: &Lab, count: usize) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let stop_in = stop.clone();
        let vip: SocketAddr = WEB.parse().unwrap();
        let (ready_tx, ready) = std::sync::mpsc::channel();
        let thread = lab.topology.client.spawn(move || {
            let mut connections: Vec<(Option<Connection>, Seen)> = (0..count)
                .map(|_| match Connection::open(vip) {
                    Ok(connection) => (Some(connection), Ok(Vec::new())),
                    Err(error) => (None, Err(format!("connect: {error}"))),
                })
                .collect();
            let _ = ready_tx.send(());
            let started = Instant::now();
            loop {
                for (connection, seen) in &mut connections {
                    let Some(open) = connection else { continue };
                    match open.get(false) {
                        Ok(answer) => {
                            if let Ok(seen) = seen
                                && !seen.contains(&answer)
                            {
                                seen.push(answer);
                            }
                        }
                        Err(error) => {
                            *seen = Err(format!("after {:?}: {error}", started.elapsed()));
                            *connection = None;
                        }
                    }
                }
                if stop_in.load(Ordering::Relaxed) || started.elapsed() > DEADLINE {
                    break;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            connections.into_iter().map(|(_, seen)| seen).collect()
        });
        ready
            .recv_timeout(Duration::from_secs(10))
            .expect("keep-alive connections opened");
        Self {
            stop,
            thread: Some(thread),
        }
    }

    /// Stops asking; asserts every connection answered, always from the same instance of
    /// `release`.
    fn assert_kept(mut self, what: &str, release: &str) {
        self.stop.store(true, Ordering::Relaxed);
        let outcomes = self
            .thread
            .take()
            .unwrap()
            .join()
            .expect("keep-alive thread");
        for (index, outcome) in outcomes.iter().enumerate() {
            match outcome {
                Ok(seen) => {
                    assert_eq!(
                        seen.len(),
                        1,
                        "{what}: keep-alive connection {index} answered by one backend: {seen:?}"
                    );
                    assert!(
                        seen[0].starts_with(&format!("{release} ")),
                        "{what}: connection {index} stayed on {release}: {seen:?}"
                    );
                }
                Err(error) => panic!("{what}: keep-alive connection {index} broke {error}"),
            }
        }
    }
}

impl Drop for KeepAlive {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn rollout(lab: &Lab) -> RolloutReport {
    let out = lab.cli_code(&["rollout", "status", "web", "--json"], 0);
    serde_json::from_str(&out.stdout).expect("rollout status JSON")
}

/// `count` requests, each on a new connection; panics on a failure.
fn new_connections(lab: &Lab, count: usize) -> Vec<String> {
    let vip: SocketAddr = WEB.parse().unwrap();
    lab.topology.client.run(move || {
        (0..count)
            .map(|_| {
                Connection::open(vip)
                    .and_then(|mut connection| connection.get(true))
                    .expect("request on a new connection")
            })
            .collect()
    })
}

fn releases(answers: &[String]) -> Vec<&str> {
    let mut seen: Vec<&str> = answers
        .iter()
        .filter_map(|answer| answer.split_whitespace().next())
        .collect();
    seen.sort_unstable();
    seen.dedup();
    seen
}

#[test]
#[expect(clippy::too_many_lines, reason = "one story, told in order")]
fn two_release_cycles_alternate_the_colors_and_abort_returns_to_where_it_started() {
    if !require_privileges(
        "two_release_cycles_alternate_the_colors_and_abort_returns_to_where_it_started",
    ) {
        return;
    }
    let mut lab = Lab::bare("rcy", WorkDir::new("rcy"));
    lab.servers = vec![
        http_servers(&lab, ColorName::Blue, Release::Healthy("v1")),
        http_servers(&lab, ColorName::Green, Release::Healthy("v2")),
    ];
    lab.write_config(&config("v1", "v2"));
    lab.start_daemon();
    let status = lab.status();
    assert_eq!(
        status.services[0].stable,
        ColorName::Blue,
        "blue is stable at first"
    );
    let load = Load::start(&lab, Duration::from_millis(10));
    let begin = Instant::now();

    // Cycle 1: v2 canaried on green, completed; green becomes stable.
    let on_v1 = KeepAlive::open(&lab, 4);
    let out = lab.cli_code(
        &[
            "rollout",
            "start",
            "web",
            "--steps",
            "20,60,100",
            "--every",
            "500ms",
            "--min-flows",
            "5",
            "--wait",
            "--timeout",
            "60s",
        ],
        0,
    );
    assert!(
        out.stdout
            .contains("rollout completed at 100% green (green is stable)"),
        "{}",
        out.stdout
    );
    let cycle1 = Instant::now();
    on_v1.assert_kept("cycle 1 (blue v1 -> green v2)", "v1");
    let report = rollout(&lab);
    assert_eq!(
        (report.phase, report.canary, report.stable),
        (Phase::Completed, ColorName::Green, ColorName::Green)
    );
    let list = lab.cli_code(&["rollout", "list"], 0).stdout;
    assert!(
        list.lines().any(|l| l.starts_with("web")
            && l.contains("completed")
            && l.contains("blue -> green")),
        "{list}"
    );
    let metrics = lab.metrics();
    assert_eq!(
        metric(
            &metrics,
            r#"splitter_service_stable{service="web",color="green",release="v2"}"#
        ),
        Some(1.0),
        "{metrics}"
    );
    assert_eq!(
        metric(
            &metrics,
            r#"splitter_service_stable{service="web",color="blue",release="v1"}"#
        ),
        Some(0.0),
        "{metrics}"
    );

    // A start that would move established expectations is refused: blue (the next canary)
    // already carries 10 %.
    lab.cli_code(&["set-weight", "web", "90"], 0);
    let refused = lab.cli_code(&["rollout", "start", "web", "--every", "500ms"], 2);
    assert!(
        refused.stderr.contains("--from-current")
            && refused.stderr.contains("blue already carries 10%"),
        "{}",
        refused.stderr
    );
    lab.cli_code(&["switch", "web", "green"], 0);

    // Cycle 2: v3 deployed on the idle blue (its v1 servers replaced), canaried from green to
    // blue, aborted halfway by the operator: back to 100 % green.
    lab.servers[0].stop();
    lab.servers[0] = http_servers(&lab, ColorName::Blue, Release::Healthy("v3"));
    lab.write_config(&config("v3", "v2"));
    lab.cli_code(&["reload"], 0);
    let text = lab.cli_code(&["status", "web"], 0).stdout;
    assert!(text.contains("blue v3, green v2 (stable)"), "{text}");
    let on_v2 = KeepAlive::open(&lab, 4);
    let cycle2 = Instant::now();
    let out = lab.cli_code(
        &[
            "rollout",
            "start",
            "web",
            "--steps",
            "25,50,100",
            "--every",
            "1s",
            "--min-flows",
            "5",
        ],
        0,
    );
    assert!(out.stdout.contains("green -> blue"), "{}", out.stdout);
    let report = rollout(&lab);
    assert_eq!(
        (report.canary, report.green_weight, report.start_weight),
        (ColorName::Blue, 750_000, 1_000_000)
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    while rollout(&lab).step < 2 {
        assert!(
            Instant::now() < deadline,
            "never reached step 2: {:#?}",
            rollout(&lab)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = lab.cli_code(&["rollout", "abort", "web"], 0);
    assert!(out.stdout.contains("abort 50% -> 100%"), "{}", out.stdout);
    let report = rollout(&lab);
    assert_eq!(
        (report.phase, report.green_weight),
        (Phase::Aborted, 1_000_000),
        "aborted back to where it started"
    );
    assert_eq!(
        lab.status().services[0].stable,
        ColorName::Green,
        "an abort keeps the stable color"
    );
    let fresh = new_connections(&lab, 20);
    assert!(
        fresh.iter().all(|answer| answer.starts_with("v2 green-")),
        "new flows all green again: {fresh:?}"
    );
    let aborted = Instant::now();

    // The broken v3: `rollout retry` walks the same plan; the analysis rolls it back.
    lab.servers[0].stop();
    lab.servers[0] = http_servers(&lab, ColorName::Blue, Release::Resetting("v3"));
    let retry = Instant::now();
    let out = lab.cli(&["rollout", "retry", "web", "--wait", "--timeout", "30s"]);
    assert_eq!(out.code, 6, "retry --wait exits 6 on a rollback: {out:?}");
    let retried = Instant::now();
    let report = rollout(&lab);
    assert_eq!(
        (report.phase, report.green_weight),
        (Phase::Aborted, 1_000_000)
    );
    assert!(
        report
            .last
            .as_ref()
            .unwrap()
            .reason
            .starts_with("blue failure ratio"),
        "{report:#?}"
    );
    // `rollout wait` on a finished rollout answers at once, with the same exit code.
    assert_eq!(
        lab.cli(&["rollout", "wait", "web", "--timeout", "5s"]).code,
        6
    );
    std::thread::sleep(Duration::from_millis(500));
    on_v2.assert_kept(
        "cycle 2 (green v2 -> blue v3, aborted; broken v3 retried)",
        "v2",
    );
    let end = Instant::now();

    // No request failed outside the broken release's retry window.
    let (answers1, failed1) = load.between(begin, cycle1);
    assert!(
        failed1.is_empty(),
        "cycle 1 failures: {failed1:?}\n{}",
        lab.explain_resets()
    );
    assert_eq!(
        releases(&answers1),
        ["v1", "v2"],
        "both releases served in cycle 1"
    );
    let (answers2, failed2) = load.between(cycle2, aborted);
    assert!(
        failed2.is_empty(),
        "cycle 2 failures: {failed2:?}\n{}",
        lab.explain_resets()
    );
    assert_eq!(
        releases(&answers2),
        ["v2", "v3"],
        "v3 (blue) canaried in cycle 2"
    );
    let (_, failed_after) = load.between(retried + Duration::from_millis(200), end);
    assert!(
        failed_after.is_empty(),
        "after the rollback: {failed_after:?}"
    );
    let (_, failed_retry) = load.between(retry, retried);
    assert!(
        !failed_retry.is_empty(),
        "the broken release failed some requests (it was judged on them)"
    );
}
