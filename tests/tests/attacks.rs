//! An attacker on the client side, against the real daemon: forged TCP segments (built with the
//! tests' packet builder, sent on the client's veth to the router's MAC by a raw socket) while
//! real connections run to real servers. Every test checks what a user would: connections
//! still answer from their backend, rollouts complete, `status` and the metrics count open
//! connections exactly, `drain` returns when the color is empty. A failed request says who
//! reset it (the reset tracer).
//!
//! Run: `cargo test --release -p splitter-tests --test attacks -- --test-threads=1 --nocapture`
//! (the flood test prints its figures, quoted in the README's reliability section).

use std::{
    net::{Ipv4Addr, SocketAddr, SocketAddrV4},
    process::{Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use splitter::{
    config::ColorName,
    control::protocol::{HashSeedSource, ServiceStatus, StatusReport},
};
use splitter_tests::{
    daemon_harness::{
        BLUE, Conversation, GREEN, Lab, TCP_PORT, base_config, color_of, metric, request, service,
    },
    packet::{TCP_ACK, TCP_SYN},
    require_privileges,
    spoof::{Forger, green_ports, send, send_in},
};

const WEB: &str = "198.18.100.10:80";
/// The small flow table of these tests (the smallest the config allows).
const FLOW_TABLE: usize = 1024;
const MISS_HOLD: Duration = Duration::from_secs(1);
/// A forged source on the client's segment, not the client: its replies reach the client's
/// link (a permanent neighbour entry on the router) and are dropped there, as a spoofed
/// source's would be.
const FORGED: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);

fn vip() -> SocketAddrV4 {
    WEB.parse().unwrap()
}

/// A lab with the small table and short `miss_hold`, no `hash_seed` (a random one), `web` at
/// `weight` percent, `rollout` lines for `[service.rollout]`.
fn lab(tag: &str, weight: &str, rollout: &str) -> Lab {
    let mut lab = Lab::new(tag);
    let base = base_config(&lab.work)
        .replace(
            "flow_table_size = 262144",
            &format!("flow_table_size = {FLOW_TABLE}"),
        )
        .replace(
            "miss_hold = \"30s\"",
            &format!("miss_hold = \"{}s\"", MISS_HOLD.as_secs()),
        );
    let mut web = service("web", WEB, "tcp", weight, &BLUE, &GREEN, TCP_PORT);
    if !rollout.is_empty() {
        web.push_str(&format!("\n[service.rollout]\n{rollout}\n"));
    }
    std::fs::write(lab.work.config(), format!("{base}{web}")).expect("write config");
    lab.start_daemon();
    let client_mac = splitter_tests::spoof::mac(&lab.topology.client, "eth0");
    let mac = client_mac
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect::<Vec<_>>()
        .join(":");
    lab.topology.router.ip(&[
        "neigh",
        "replace",
        &FORGED.to_string(),
        "lladdr",
        &mac,
        "dev",
        "eth0",
        "nud",
        "permanent",
    ]);
    lab
}

fn forger(lab: &Lab) -> Forger {
    Forger::new(&lab.topology.client, "eth0", &lab.topology.router, "eth0")
}

fn web(report: &StatusReport) -> &ServiceStatus {
    report
        .services
        .iter()
        .find(|service| service.name == "web")
        .expect("service web in status")
}

fn live(report: &StatusReport, color: ColorName) -> u64 {
    web(report)
        .colors
        .iter()
        .filter(|status| status.color == color)
        .map(|status| status.live_flows)
        .sum()
}

/// `count` connections, each asked once; all must answer from `color`.
fn open(lab: &Lab, count: usize, color: &str) -> Vec<Conversation> {
    (0..count)
        .map(|_| {
            let mut conversation = lab.connect(WEB);
            let answer = conversation
                .ask()
                .unwrap_or_else(|error| panic!("first request: {error}"));
            assert_eq!(color_of(&answer), color, "new connection at this weight");
            conversation
        })
        .collect()
}

/// Every connection asks again: each must answer from `color`, and one that fails says who
/// reset it.
fn all_answer_from(lab: &Lab, conversations: &mut [Conversation], color: &str, after: &str) {
    let mut wrong = Vec::new();
    for conversation in conversations.iter_mut() {
        let client = conversation.local_addr();
        match conversation.ask() {
            Ok(answer) if color_of(&answer) == color => {}
            Ok(answer) => wrong.push(format!("{client}: answered by {answer}")),
            Err(error) => wrong.push(format!(
                "{client}: {error}; {}",
                lab.explain_reset_of(client)
            )),
        }
    }
    assert!(
        wrong.is_empty(),
        "{} of {} connections broken or moved after {after}:\n{}",
        wrong.len(),
        conversations.len(),
        wrong.join("\n")
    );
}

fn random_u32() -> u32 {
    let mut bytes = [0u8; 4];
    std::io::Read::read_exact(
        &mut std::fs::File::open("/dev/urandom").expect("urandom"),
        &mut bytes,
    )
    .expect("random bytes");
    u32::from_ne_bytes(bytes)
}

/// The seed in force: random (no `hash_seed` in these configs), and the one persisted in the
/// state directory.
fn seed(lab: &Lab) -> u32 {
    let status = lab.status();
    assert_eq!(status.daemon.hash_seed_source, HashSeedSource::Random);
    let persisted = std::fs::read_to_string(lab.work.state_dir().join("hash_seed"))
        .expect("the random seed is persisted");
    assert_eq!(persisted.trim(), status.daemon.hash_seed.to_string());
    status.daemon.hash_seed
}

/// (a) One forged SYN with each established connection's 4-tuple and a random sequence number,
/// after the weight moved every new flow to green: every connection still answers from blue.
#[test]
fn a_forged_syn_does_not_move_an_established_connection() {
    if !require_privileges("a_forged_syn_does_not_move_an_established_connection") {
        return;
    }
    let lab = lab("asyn", "0", "");
    let mut conversations = open(&lab, 20, "blue");
    lab.cli_ok(&["set-weight", "web", "100"]);
    let forger = forger(&lab);
    let frames: Vec<Vec<u8>> = conversations
        .iter()
        .map(|conversation| {
            let SocketAddr::V4(client) = conversation.local_addr() else {
                unreachable!("IPv4 lab");
            };
            forger.tcp(client, vip(), TCP_SYN, random_u32(), 0)
        })
        .collect();
    let sent = send(&lab.topology.client, "eth0", frames);
    assert_eq!(sent, conversations.len());
    std::thread::sleep(Duration::from_millis(200));
    all_answer_from(&lab, &mut conversations, "blue", "one forged SYN each");
    let (blue, green) = splitter_tests::daemon_harness::colors(&lab.requests(WEB, 10));
    assert_eq!((blue, green), (0, 10), "new connections follow weight 100");
}

/// (b) A flood of forged SYN+ACK pairs, 10× the flow table, after `miss_hold`: no established
/// connection moved or reset, and new connections still work.
#[test]
fn a_flood_of_forged_handshakes_moves_no_established_connection() {
    if !require_privileges("a_flood_of_forged_handshakes_moves_no_established_connection") {
        return;
    }
    const CONNECTIONS: usize = 40;
    let lab = lab("aflood", "0", "");
    let mut conversations = open(&lab, CONNECTIONS, "blue");
    lab.cli_ok(&["set-weight", "web", "100"]);
    std::thread::sleep(MISS_HOLD + Duration::from_millis(500));
    let forger = forger(&lab);
    let tuples = 10 * FLOW_TABLE;
    let mut frames = Vec::with_capacity(2 * tuples);
    for index in 0..tuples {
        let port = 1024 + (index % 60_000) as u16;
        let from = SocketAddrV4::new(FORGED, port);
        let seq = random_u32();
        frames.push(forger.tcp(from, vip(), TCP_SYN, seq, 0));
        frames.push(forger.tcp(from, vip(), TCP_ACK, seq.wrapping_add(1), random_u32()));
    }
    let packets = frames.len();
    let started = Instant::now();
    let sent = send(&lab.topology.client, "eth0", frames);
    let took = started.elapsed();
    assert_eq!(sent, packets, "the raw socket took every frame");
    std::thread::sleep(Duration::from_millis(300));
    let status = lab.status();
    all_answer_from(&lab, &mut conversations, "blue", "the flood");
    let (blue, green) = splitter_tests::daemon_harness::colors(&lab.requests(WEB, 20));
    assert_eq!(
        (blue, green),
        (0, 20),
        "new connections work and follow weight 100"
    );
    let tables = status.daemon.flow_tables;
    println!(
        "FLOOD: {packets} forged packets ({tuples} SYN+ACK pairs, {:.1}× the flow table) in \
         {:.2} s; flow table {}/{} verified, pending {}/{}; {CONNECTIONS} of {CONNECTIONS} \
         established connections kept on blue, 20 of 20 new connections answered",
        tuples as f64 / FLOW_TABLE as f64,
        took.as_secs_f64(),
        tables.flows.entries,
        tables.flows.capacity,
        tables.pending.entries,
        tables.pending.capacity,
    );
}

/// (c) A healthy rollout completes while forged bare ACKs and SYNs on tuples that hash green
/// hit it (the seed is random, but an attacker who learnt it could pick them).
#[test]
fn a_healthy_rollout_completes_under_forged_acks_and_syns() {
    if !require_privileges("a_healthy_rollout_completes_under_forged_acks_and_syns") {
        return;
    }
    let lab = lab(
        "aroll",
        "0",
        "steps = [10, 50, 100]\nevery = \"1s\"\nmin_flows = 5",
    );
    let seed = seed(&lab);
    let vip_addr = SocketAddr::V4(vip());
    // Green at 10 %: green at every step.
    let ports = green_ports(FORGED, vip_addr, seed, 100_000, 4000);
    let stop = Arc::new(AtomicBool::new(false));
    let forged = Arc::new(AtomicUsize::new(0));
    let failures = Arc::new(std::sync::Mutex::new(Vec::new()));
    // Real clients: a new connection every 20 ms.
    let load = lab.topology.client.spawn({
        let stop = stop.clone();
        let failures = failures.clone();
        move || {
            let deadline = Instant::now() + Duration::from_secs(60);
            while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                if let Err(error) = request(vip_addr) {
                    failures.lock().unwrap().push(error);
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    });
    // The attacker: a bare ACK and a SYN on fresh green tuples every 10 ms.
    let forger = forger(&lab);
    let client_ns = lab.topology.client.name.clone();
    let attack = std::thread::spawn({
        let stop = stop.clone();
        let forged = forged.clone();
        move || {
            let deadline = Instant::now() + Duration::from_secs(60);
            for pair in ports.chunks(2) {
                if stop.load(Ordering::Relaxed) || Instant::now() > deadline {
                    break;
                }
                let ack = SocketAddrV4::new(FORGED, pair[0]);
                let syn = SocketAddrV4::new(FORGED, pair[1]);
                let frames = vec![
                    forger.tcp(ack, vip(), TCP_ACK, random_u32(), random_u32()),
                    forger.tcp(syn, vip(), TCP_SYN, random_u32(), 0),
                ];
                forged.fetch_add(send_in(&client_ns, "eth0", frames), Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    });
    let out = lab.cli_within(
        &mut Command::new(&lab.binary),
        &["rollout", "start", "web", "--wait"],
        Duration::from_secs(60),
    );
    stop.store(true, Ordering::Relaxed);
    let _ = load.join();
    let _ = attack.join();
    let forged = forged.load(Ordering::Relaxed);
    assert!(forged >= 50, "only {forged} forged packets were sent");
    assert_eq!(
        out.code,
        0,
        "the rollout completes under {forged} forged packets: {}{}\n{}",
        out.stdout,
        out.stderr,
        lab.daemon_log()
    );
    let failures = failures.lock().unwrap();
    assert!(
        failures.is_empty(),
        "real requests failed during the rollout: {failures:?}\n{}",
        lab.explain_resets()
    );
    println!("ROLLOUT: completed under {forged} forged bare ACKs and SYNs on green tuples");
}

/// The live connections of `web` in status and in the metrics (summed over backends).
fn live_now(lab: &Lab) -> (u64, u64, f64) {
    let status = lab.status();
    let text = lab.metrics();
    let mut metrics = 0.0;
    for (color, hosts) in [("blue", BLUE), ("green", GREEN)] {
        for host in hosts {
            let series = format!(
                r#"splitter_backend_live_flows{{service="web",color="{color}",backend="{host}:{TCP_PORT}"}}"#
            );
            metrics += metric(&text, &series).unwrap_or_else(|| panic!("{series} in:\n{text}"));
        }
    }
    (
        live(&status, ColorName::Blue),
        live(&status, ColorName::Green),
        metrics,
    )
}

/// (d) 10 open connections are exactly 10 live in status and metrics, and 0 within 2 s after
/// they close.
#[test]
fn live_connections_are_exact_and_leave_when_closed() {
    if !require_privileges("live_connections_are_exact_and_leave_when_closed") {
        return;
    }
    let lab = lab("alive", "50", "");
    let conversations: Vec<Conversation> = (0..10)
        .map(|_| {
            let mut conversation = lab.connect(WEB);
            conversation.ask().expect("first request");
            conversation
        })
        .collect();
    let (blue, green, metrics) = live_now(&lab);
    assert_eq!(blue + green, 10, "status: 10 open connections live");
    assert_eq!(metrics, 10.0, "metrics: 10 open connections live");
    drop(conversations);
    let closed = Instant::now();
    loop {
        let (blue, green, metrics) = live_now(&lab);
        if blue + green == 0 && metrics == 0.0 {
            break;
        }
        assert!(
            closed.elapsed() < Duration::from_secs(2),
            "still live 2 s after closing: status blue {blue} green {green}, metrics {metrics}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    println!(
        "LIVE: 10 connections live, 0 {:.2} s after they closed",
        closed.elapsed().as_secs_f64()
    );
}

/// (e) `drain --wait` returns within a few seconds of the last connection closing;
/// `--timeout` with connections still open exits 7; `--cut` ends them at the deadline.
#[test]
fn drain_waits_for_the_last_connection_and_cut_ends_the_rest() {
    if !require_privileges("drain_waits_for_the_last_connection_and_cut_ends_the_rest") {
        return;
    }
    let lab = lab("adrain", "0", "");
    let conversations = open(&lab, 3, "blue");
    let mut drain = Command::new(&lab.binary)
        .arg("--socket")
        .arg(lab.work.socket())
        .args(["drain", "web", "blue", "--wait", "--timeout", "30s"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run splitter drain");
    std::thread::sleep(Duration::from_secs(1));
    assert!(
        drain.try_wait().unwrap().is_none(),
        "drain --wait returned while 3 connections were open"
    );
    let (blue, green) = splitter_tests::daemon_harness::colors(&lab.requests(WEB, 5));
    assert_eq!((blue, green), (0, 5), "new flows go green once blue drains");
    drop(conversations);
    let closed = Instant::now();
    let deadline = closed + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = drain.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "drain --wait did not return");
        std::thread::sleep(Duration::from_millis(20));
    };
    let returned = closed.elapsed();
    let output = drain.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(
        status.code(),
        Some(0),
        "{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains("web: blue drained in"), "{stdout}");
    assert!(
        returned < Duration::from_secs(3),
        "drain --wait returned {returned:?} after the last close"
    );

    // Green now holds connections: a drain with a short timeout exits 7 and says how many.
    let mut green_conversations = open(&lab, 2, "green");
    let out = lab.cli_code(&["drain", "web", "green", "--timeout", "1s"], 7);
    assert!(
        out.stderr.contains("green still has 2 live connections"),
        "{out:?}"
    );
    assert_eq!(
        web(&lab.status()).green_weight,
        0,
        "the drain's write stays"
    );
    all_answer_from(&lab, &mut green_conversations, "green", "drain --timeout");

    // `--cut`: at the deadline the rest is unpinned; their next packets go blue and break.
    let out = lab.cli_ok(&["drain", "web", "green", "--timeout", "1s", "--cut"]);
    assert!(
        out.contains("--timeout reached with 2 live connections")
            && out.contains("flows of green unpinned"),
        "{out}"
    );
    assert_eq!(live(&lab.status(), ColorName::Green), 0, "green is empty");
    for conversation in &mut green_conversations {
        let client = conversation.local_addr();
        assert!(
            conversation.ask().is_err(),
            "a cut connection is broken (its next packet goes blue)"
        );
        let explained = lab.explain_reset_of(client);
        assert!(
            explained.contains("never accepted this connection"),
            "blue reset the cut connection: {explained}"
        );
    }
    println!("DRAIN: --wait returned {returned:?} after the last close");
}
