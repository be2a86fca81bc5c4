//! Canary rollouts end to end: the real daemon and CLI, real TCP servers in blue and green
//! namespaces, a client opening connections continuously. The rollout runs inside the daemon
//! and is judged by the in-kernel handshake signals.

use std::{
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpListener, TcpStream},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use splitter::{config::ColorName, control::protocol::RolloutReport, rollout::Phase};
use splitter_tests::{
    daemon_harness::{BLUE, GREEN, Lab, TCP_PORT, color_of, request, service},
    require_privileges,
};

const WEB: &str = "198.18.100.10:80";

/// The most a load generator runs, whatever happens.
const LOAD_DEADLINE: Duration = Duration::from_secs(90);

fn web_with_rollout(rollout: &str) -> String {
    let mut text = service("web", WEB, "tcp", "0", &BLUE, &GREEN, TCP_PORT);
    text.push_str(&format!("[service.rollout]\n{rollout}\n"));
    text
}

/// When a request ended, and the color that answered or what failed.
type Outcomes = Arc<Mutex<Vec<(Instant, Result<&'static str, String>)>>>;

/// A client opening one connection (one request) every `pace`, from the client namespace,
/// recording which color answered or what failed.
struct Load {
    stop: Arc<AtomicBool>,
    results: Outcomes,
    thread: Option<JoinHandle<()>>,
}

impl Load {
    fn start(lab: &Lab, pace: Duration) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let results = Arc::new(Mutex::new(Vec::new()));
        let vip: SocketAddr = WEB.parse().unwrap();
        let (stop_in, results_in) = (stop.clone(), results.clone());
        let thread = lab.topology.client.spawn(move || {
            let started = Instant::now();
            while !stop_in.load(Ordering::Relaxed) && started.elapsed() < LOAD_DEADLINE {
                let result = request(vip).map(|answer| color_of(&answer));
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

    /// (blue ok, green ok, failed) since `from`.
    fn tally(&self, from: Instant) -> (usize, usize, Vec<String>) {
        let results = self.results.lock().unwrap();
        let mut tally = (0, 0, Vec::new());
        for (at, result) in results.iter().filter(|(at, _)| *at >= from) {
            match result {
                Ok("blue") => tally.0 += 1,
                Ok(_) => tally.1 += 1,
                Err(error) => tally
                    .2
                    .push(format!("{:?}: {error}", at.duration_since(from))),
            }
        }
        tally
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

fn status(lab: &Lab) -> RolloutReport {
    let out = lab.cli(&["rollout", "status", "web", "--json"]);
    assert_eq!(out.code, 0, "rollout status: {}{}", out.stdout, out.stderr);
    serde_json::from_str(&out.stdout).expect("rollout status JSON")
}

/// Polls the rollout until `done` or `limit`.
fn wait_for(lab: &Lab, limit: Duration, done: impl Fn(&RolloutReport) -> bool) -> RolloutReport {
    let deadline = Instant::now() + limit;
    loop {
        let report = status(lab);
        if done(&report) {
            return report;
        }
        assert!(
            Instant::now() < deadline,
            "rollout did not get there in {limit:?}: {report:#?}\n{}",
            lab.daemon_log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn actions(report: &RolloutReport) -> Vec<String> {
    report.history.iter().map(|d| d.action.clone()).collect()
}

#[test]
fn healthy_green_reaches_100_percent_through_every_step() {
    if !require_privileges("healthy_green_reaches_100_percent_through_every_step") {
        return;
    }
    let mut lab = Lab::new("rok");
    lab.write_config(&web_with_rollout(
        "steps = [10, 50, 100]\nevery = \"1s\"\nmin_flows = 5",
    ));
    lab.start_daemon();
    let load = Load::start(&lab, Duration::from_millis(10));
    let started = Instant::now();
    // `--wait` is what a CI pipeline runs: exit 0 when green reaches the last step.
    let out = lab.cli(&["rollout", "start", "web", "--wait"]);
    assert_eq!(
        out.code, 0,
        "rollout start --wait: {}{}",
        out.stdout, out.stderr
    );
    assert!(
        out.stdout.contains("rollout completed at 100% green"),
        "{}",
        out.stdout
    );
    let report = status(&lab);
    assert_eq!(report.phase, Phase::Completed);
    assert_eq!(report.green_weight, 1_000_000);
    assert_eq!(
        actions(&report),
        ["start", "advance", "advance", "complete"]
    );
    let (blue, green, failed) = load.tally(started);
    assert!(
        failed.is_empty(),
        "failed requests during a healthy rollout: {failed:?}\nresets: {}",
        lab.explain_resets()
    );
    assert!(
        blue > 0 && green > 0,
        "both colors served during the rollout: {blue} / {green}"
    );
    // At 100 % every new connection is green.
    assert_eq!(lab.split(WEB, 20), (0, 20));
    // The decisions are logged as structured lines with their numbers.
    let log = lab.daemon_log();
    assert!(
        log.lines().any(|l| l.contains("rollout")
            && l.contains("action=advance")
            && l.contains("green_handshakes=")),
        "{log}"
    );
}

#[test]
fn refusing_green_is_rolled_back_within_one_step() {
    if !require_privileges("refusing_green_is_rolled_back_within_one_step") {
        return;
    }
    let mut lab = Lab::new("rrf");
    lab.write_config(&web_with_rollout(
        "steps = [20, 50, 100]\nevery = \"2s\"\nmin_flows = 5",
    ));
    lab.start_daemon();
    // Green is deployed broken: nothing listens, every SYN gets a RST.
    lab.servers.remove(1);
    let load = Load::start(&lab, Duration::from_millis(10));
    let started = Instant::now();
    let out = lab.cli(&["rollout", "start", "web", "--wait"]);
    let elapsed = started.elapsed();
    assert_eq!(
        out.code, 6,
        "--wait exits 6 on rollback: {}{}",
        out.stdout, out.stderr
    );
    assert!(out.stderr.contains("rolled back"), "{}", out.stderr);
    let report = status(&lab);
    assert_eq!(report.phase, Phase::Aborted);
    assert_eq!(report.green_weight, 0);
    assert_eq!(report.step, 1, "rolled back at the first step");
    assert!(
        elapsed < Duration::from_secs(2),
        "rolled back within one step interval (2 s): took {elapsed:?}"
    );
    let last = report.last.clone().unwrap();
    assert_eq!(last.action, "abort");
    assert!(last.reason.contains("failure ratio"), "{}", last.reason);
    eprintln!(
        "refusing green rolled back after {elapsed:?}: {}",
        last.reason
    );
    // Blue serves everything afterwards, and never failed.
    let after = Instant::now();
    std::thread::sleep(Duration::from_millis(500));
    let (blue, green, failed) = load.tally(after);
    assert!(
        blue > 10 && green == 0 && failed.is_empty(),
        "after the rollback: {blue} blue, {green} green, failed {failed:?}\nresets: {}",
        lab.explain_resets()
    );
    drop(load);
    assert_eq!(lab.split(WEB, 20), (20, 0));
}

#[test]
fn slow_green_is_rolled_back_on_handshake_latency() {
    if !require_privileges("slow_green_is_rolled_back_on_handshake_latency") {
        return;
    }
    let mut lab = Lab::new("rsl");
    // Only latency may decide here: failure thresholds out of reach.
    lab.write_config(&web_with_rollout(
        "steps = [30, 100]\nevery = \"3s\"\nmin_flows = 10\nmax_failure_ratio = 1.0\nfailure_margin = 1.0\nlatency_tolerance = 1.0",
    ));
    lab.start_daemon();
    // Green's link is congested: a 2 Mbit/s shaper with a bulk upload queueing in front of it
    // (bufferbloat): its SYN-ACKs wait tens of milliseconds; blue answers in microseconds.
    let green = &lab.topology.green;
    green.exec(&[
        "tc", "qdisc", "add", "dev", "eth0", "root", "handle", "1:", "htb", "default", "10",
    ]);
    green.exec(&[
        "tc", "class", "add", "dev", "eth0", "parent", "1:", "classid", "1:10", "htb", "rate",
        "2mbit",
    ]);
    green.exec(&[
        "tc", "qdisc", "add", "dev", "eth0", "parent", "1:10", "handle", "10:", "pfifo", "limit",
        "20",
    ]);
    let sink_stop = Arc::new(AtomicBool::new(false));
    let sink = {
        let stop = sink_stop.clone();
        let listener = lab
            .topology
            .router
            .run(|| TcpListener::bind("198.18.2.1:9999").expect("sink"));
        listener.set_nonblocking(true).unwrap();
        std::thread::spawn(move || {
            let mut buffer = vec![0u8; 65536];
            let mut streams = Vec::new();
            let started = Instant::now();
            while !stop.load(Ordering::Relaxed) && started.elapsed() < LOAD_DEADLINE {
                if let Ok((stream, _)) = listener.accept() {
                    stream.set_nonblocking(true).unwrap();
                    streams.push(stream);
                }
                for stream in &mut streams {
                    while stream.read(&mut buffer).is_ok_and(|n| n > 0) {}
                }
                std::thread::sleep(Duration::from_millis(1));
            }
        })
    };
    let bulk_stop = Arc::new(AtomicBool::new(false));
    let bulk = {
        let stop = bulk_stop.clone();
        lab.topology.green.spawn(move || {
            let mut stream = TcpStream::connect("198.18.2.1:9999").expect("bulk connect");
            let chunk = vec![0x5au8; 16384];
            let started = Instant::now();
            while !stop.load(Ordering::Relaxed) && started.elapsed() < LOAD_DEADLINE {
                if stream.write_all(&chunk).is_err() {
                    break;
                }
            }
        })
    };
    // Several clients: one client's requests run one after another, and a green one waits
    // seconds for its SYN-ACK behind the queue, so a single client can leave blue with fewer
    // than `min_flows` handshakes in a window (then latency is not judged and the window
    // passes: seen once in CI, blue 7 handshakes, green p99 2.5 s).
    let loads: Vec<Load> = (0..4)
        .map(|_| Load::start(&lab, Duration::from_millis(10)))
        .collect();
    let out = lab.cli(&["rollout", "start", "web"]);
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    let report = wait_for(&lab, Duration::from_secs(20), |r| r.phase != Phase::Running);
    bulk_stop.store(true, Ordering::Relaxed);
    sink_stop.store(true, Ordering::Relaxed);
    drop(loads);
    let _ = bulk.join();
    let _ = sink.join();
    assert_eq!(report.phase, Phase::Aborted, "{report:#?}");
    assert_eq!(report.green_weight, 0);
    let last = report.last.unwrap();
    assert!(
        last.reason.contains("p99"),
        "rolled back on latency: {}",
        last.reason
    );
    eprintln!("slow green: {}", last.reason);
}

#[test]
fn low_traffic_holds_instead_of_advancing() {
    if !require_privileges("low_traffic_holds_instead_of_advancing") {
        return;
    }
    let mut lab = Lab::new("rlo");
    lab.write_config(&web_with_rollout(
        "steps = [10, 100]\nevery = \"500ms\"\nmin_flows = 50",
    ));
    lab.start_daemon();
    lab.cli_ok(&["rollout", "start", "web"]);
    // A trickle: far fewer green handshakes than min_flows.
    let _ = lab.requests(WEB, 10);
    std::thread::sleep(Duration::from_secs(2));
    let report = status(&lab);
    assert_eq!(report.phase, Phase::Running);
    assert_eq!(report.step, 1, "still at the first step: {report:#?}");
    assert_eq!(report.green_weight, 100_000);
    let last = report.last.unwrap();
    assert_eq!(last.action, "hold");
    assert!(
        last.reason.contains("too few green handshakes"),
        "{}",
        last.reason
    );
    let text = lab.cli_ok(&["rollout", "status", "web"]);
    assert!(
        text.contains("step 1 of 2") && text.contains("hold"),
        "{text}"
    );
}

#[test]
fn a_killed_daemon_resumes_its_rollout_at_the_same_step() {
    if !require_privileges("a_killed_daemon_resumes_its_rollout_at_the_same_step") {
        return;
    }
    let mut lab = Lab::new("rkl");
    lab.write_config(&web_with_rollout(
        "steps = [10, 50, 100]\nevery = \"1500ms\"\nmin_flows = 5",
    ));
    lab.start_daemon();
    let load = Load::start(&lab, Duration::from_millis(10));
    let started = Instant::now();
    lab.cli_ok(&["rollout", "start", "web"]);
    let before = wait_for(&lab, Duration::from_secs(15), |r| r.step == 2);
    lab.kill_daemon();
    std::thread::sleep(Duration::from_millis(300));
    lab.start_daemon();
    let resumed = status(&lab);
    assert_eq!(resumed.phase, Phase::Running, "{resumed:#?}");
    assert_eq!(resumed.step, 2, "resumed at the step it was at");
    assert_eq!(resumed.green_weight, before.green_weight);
    assert_eq!(resumed.last.as_ref().unwrap().action, "resume");
    assert!(
        resumed.history.len() > before.history.len(),
        "history kept across the restart"
    );
    let done = wait_for(&lab, Duration::from_secs(20), |r| r.phase != Phase::Running);
    assert_eq!(done.phase, Phase::Completed, "{done:#?}");
    let (_, _, failed) = load.tally(started);
    assert!(
        failed.is_empty(),
        "no failed request across the kill and restart: {failed:?}\nresets: {}",
        lab.explain_resets()
    );
}

#[test]
fn bad_plans_are_rejected_and_change_nothing() {
    if !require_privileges("bad_plans_are_rejected_and_change_nothing") {
        return;
    }
    let mut lab = Lab::new("rbd");
    lab.write_config(&web_with_rollout("steps = [10, 100]\nevery = \"1s\""));
    lab.start_daemon();
    let cases: [(&[&str], i32, &str); 6] = [
        (
            &["--steps", "50,10"],
            2,
            "rollout steps must increase: 50% then 10%",
        ),
        (
            &["--steps", "50,150"],
            2,
            "rollout step 150% is not a weight in (0, 100]",
        ),
        (
            &["--steps", "0,100"],
            2,
            "rollout step 0% is not a weight in (0, 100]",
        ),
        (
            &["--every", "0s"],
            2,
            "rollout step duration must be at least 100ms",
        ),
        (&["--every", "soon"], 2, "--every `soon` is not a duration"),
        (&["--min-flows", "0"], 2, "min_flows must be at least 1"),
    ];
    for (args, code, message) in cases {
        let mut full = vec!["rollout", "start", "web"];
        full.extend_from_slice(args);
        let out = lab.cli(&full);
        assert_eq!(out.code, code, "{args:?}: {}{}", out.stdout, out.stderr);
        assert!(out.stderr.contains(message), "{args:?}: {}", out.stderr);
    }
    let out = lab.cli(&["rollout", "start", "nope"]);
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert!(out.stderr.contains("no service `nope`"), "{}", out.stderr);
    let out = lab.cli(&["rollout", "status", "web"]);
    assert_eq!(out.code, 2, "no rollout was started: {}", out.stderr);
    assert!(out.stderr.contains("has no rollout"), "{}", out.stderr);
    assert_eq!(lab.split(WEB, 10), (10, 0), "the weight is still 0");
    // A bad [service.rollout] is a config error naming the field.
    lab.write_config(&web_with_rollout("steps = [10, 5]"));
    let out = lab.cli(&["reload"]);
    assert_eq!(out.code, 5, "{}", out.stderr);
    assert!(
        out.stderr
            .contains("service `web`: rollout: rollout steps must increase"),
        "{}",
        out.stderr
    );
}

/// Not a test: `cargo test --release -p splitter-tests --test rollout -- --ignored measure
/// --nocapture` prints the time from green starting to fail to the weight back at 0.
#[test]
#[ignore]
fn measure_rollback_time() {
    if !require_privileges("measure_rollback_time") {
        return;
    }
    let mut lab = Lab::new("rms");
    lab.write_config(&web_with_rollout(
        "steps = [10, 20, 30, 40, 50, 100]\nevery = \"1s\"\nmin_flows = 5",
    ));
    lab.start_daemon();
    let _load = Load::start(&lab, Duration::from_millis(10));
    lab.cli_ok(&["rollout", "start", "web"]);
    wait_for(&lab, Duration::from_secs(10), |r| r.step == 2);
    let failing = Instant::now();
    lab.servers.remove(1);
    let report = wait_for(&lab, Duration::from_secs(10), |r| r.green_weight == 0);
    println!(
        "green failing -> weight 0: {:?} (1 s steps); reason: {}",
        failing.elapsed(),
        report.last.unwrap().reason
    );
}

/// The service's weight in force, from the daemon's status.
fn service_weight(lab: &Lab) -> u32 {
    lab.status()
        .services
        .iter()
        .find(|service| service.name == "web")
        .expect("web in status")
        .green_weight
}

#[test]
fn pause_resume_promote_and_a_manual_weight_through_the_cli_and_across_a_restart() {
    if !require_privileges(
        "pause_resume_promote_and_a_manual_weight_through_the_cli_and_across_a_restart",
    ) {
        return;
    }
    let mut lab = Lab::new("rpr");
    // No traffic and min_flows out of reach: the rollout only moves when told to.
    lab.write_config(&web_with_rollout(
        "steps = [10, 50, 100]\nevery = \"60s\"\nmin_flows = 1000",
    ));
    lab.start_daemon();
    lab.cli_ok(&["rollout", "start", "web"]);
    let report = status(&lab);
    assert_eq!(
        (report.phase, report.step, report.green_weight),
        (Phase::Running, 1, 100_000)
    );

    lab.cli_ok(&["rollout", "pause", "web"]);
    assert_eq!(status(&lab).phase, Phase::Paused);
    lab.cli_ok(&["rollout", "resume", "web"]);
    assert_eq!(status(&lab).phase, Phase::Running);
    lab.cli_ok(&["rollout", "promote", "web"]);
    let report = status(&lab);
    assert_eq!(
        (report.phase, report.step, report.green_weight),
        (Phase::Running, 2, 500_000)
    );
    assert_eq!(
        service_weight(&lab),
        500_000,
        "the promoted weight is in force"
    );

    // A manual weight: the operator took over, the rollout pauses and keeps its step.
    lab.cli_ok(&["set-weight", "web", "20"]);
    let report = status(&lab);
    assert_eq!(
        (report.phase, report.step),
        (Phase::Paused, 2),
        "{report:#?}"
    );
    assert_eq!(actions(&report).last().map(String::as_str), Some("pause"));
    assert_eq!(service_weight(&lab), 200_000);

    // Paused stays paused across a restart (even SIGKILL), with the manual weight.
    lab.kill_daemon();
    lab.start_daemon();
    let report = status(&lab);
    assert_eq!(
        (report.phase, report.step),
        (Phase::Paused, 2),
        "{report:#?}"
    );
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(status(&lab).phase, Phase::Paused, "no tick resumed it");
    assert_eq!(service_weight(&lab), 200_000);

    // Resume hands it back to the rollout (its step's weight); promote --full: the last step.
    lab.cli_ok(&["rollout", "resume", "web"]);
    let report = status(&lab);
    assert_eq!(
        (report.phase, report.step, report.green_weight),
        (Phase::Running, 2, 500_000)
    );
    assert_eq!(service_weight(&lab), 500_000);
    lab.cli_ok(&["rollout", "promote", "web", "--full"]);
    let report = status(&lab);
    assert_eq!(
        (report.step, report.green_weight),
        (3, 1_000_000),
        "{report:#?}"
    );
    assert_eq!(service_weight(&lab), 1_000_000);
    assert_eq!(lab.split(WEB, 10), (0, 10));
}

#[test]
fn abort_keeps_green_connections_and_abort_cut_moves_them_to_blue() {
    if !require_privileges("abort_keeps_green_connections_and_abort_cut_moves_them_to_blue") {
        return;
    }
    let mut lab = Lab::new("rab");
    lab.write_config(&web_with_rollout(
        "steps = [100]\nevery = \"60s\"\nmin_flows = 1000",
    ));
    lab.start_daemon();
    let mut blue = lab.connect(WEB);
    let blue_backend = blue.ask().expect("blue request");
    assert_eq!(color_of(&blue_backend), "blue");

    lab.cli_ok(&["rollout", "start", "web"]);
    let mut kept = lab.connect(WEB);
    let kept_backend = kept.ask().expect("green request");
    assert_eq!(color_of(&kept_backend), "green");
    lab.cli_ok(&["rollout", "abort", "web"]);
    let report = status(&lab);
    assert_eq!((report.phase, report.green_weight), (Phase::Aborted, 0));
    assert_eq!(lab.split(WEB, 10), (10, 0), "new flows go blue");
    assert_eq!(
        kept.ask().expect("a green connection after a plain abort"),
        kept_backend,
        "a plain abort keeps established green flows"
    );

    // Again, aborted with --cut: green's established flows are unpinned, their next packet
    // goes to a blue backend, which has no such connection and resets it.
    lab.cli_ok(&["rollout", "start", "web"]);
    let mut cut = lab.connect(WEB);
    let cut_client = cut.local_addr();
    assert_eq!(color_of(&cut.ask().expect("green request")), "green");
    lab.cli_ok(&["rollout", "abort", "web", "--cut"]);
    assert_eq!(service_weight(&lab), 0);
    let broken = cut.ask();
    assert!(broken.is_err(), "a cut green connection breaks: {broken:?}");
    assert!(kept.ask().is_err(), "every green connection is cut");
    assert_eq!(
        blue.ask().expect("blue after the cut"),
        blue_backend,
        "blue stays"
    );
    // The reset came from a blue backend's listener, which never accepted the cut connection:
    // the classification a splitter fault would get too.
    let roles = lab.roles();
    let blue_listener = lab.resets.resets(&roles).into_iter().any(|reset| {
        color_of(&reset.sender.to_string()) == "blue"
            && (reset.state.as_str(), reset.reason.as_str()) == ("TCP_LISTEN", "TCP_FLAGS")
    });
    let explained = lab.explain_reset_of(cut_client);
    assert!(
        blue_listener && explained.contains("the backend never accepted this connection"),
        "a blue backend reset the cut connection: {explained}"
    );
    let status = lab.status();
    let green_pinned: u64 = status
        .services
        .iter()
        .flat_map(|service| &service.colors)
        .filter(|color| color.color == ColorName::Green)
        .flat_map(|color| &color.backends)
        .map(|backend| backend.live_flows)
        .sum();
    assert_eq!(
        green_pinned, 0,
        "no flow pinned to green after --cut: {status:?}"
    );
}
