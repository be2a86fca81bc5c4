//! The daemon on a bad day (issue 12), end to end with the real binary: a full state disk,
//! a flood of idle metrics connections, a huge control line, hostile directories, a socket
//! served by another user, configs that pass nothing, a prompt SIGTERM.
//!
//! Run: `cargo test --release -p splitter-tests --test bad_day -- --test-threads=1`
//! The measurements: add `--ignored measure --nocapture`.

use std::{
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpStream},
    os::unix::{fs::PermissionsExt as _, net::UnixStream, process::CommandExt as _},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use splitter::dataplane::{
    maps::Maps,
    services::{Protocol, service_key},
};
use splitter_common::{FlowKey, FlowValue};
use splitter_tests::{
    daemon_harness::{BLUE, GREEN, Lab, TCP_PORT, base_config, metric, service},
    require_privileges,
};

const WEB: &str = "198.18.100.10:80";
const NOBODY: u32 = 65534;

fn web(weight: &str) -> String {
    service("web", WEB, "tcp", weight, &BLUE, &GREEN, TCP_PORT)
}

fn weight_of(lab: &Lab) -> u32 {
    lab.status()
        .services
        .iter()
        .find(|service| service.name == "web")
        .expect("web in status")
        .green_weight
}

/// A tmpfs mounted at `path`; unmounted on drop.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(path: &Path, size: &str) -> Self {
        std::fs::create_dir_all(path).unwrap();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size},mode=0700")])
            .arg("tmpfs")
            .arg(path)
            .output()
            .unwrap();
        assert!(out.status.success(), "mount tmpfs: {out:?}");
        Self(path.to_owned())
    }

    /// Writes a file until the filesystem is full.
    fn fill(&self) -> PathBuf {
        let filler = self.0.join("filler");
        let mut file = std::fs::File::create(&filler).unwrap();
        let chunk = vec![0u8; 4096];
        for _ in 0..100_000 {
            if file.write_all(&chunk).is_err() {
                break;
            }
        }
        let _ = file.sync_all();
        filler
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).output();
    }
}

/// Switch to blue, abort: in force at once with `state_dir` full; the file catches up when
/// space is back; a restart in between keeps the emergency (the kernel's lower weight wins).
#[test]
fn rollback_without_a_disk() {
    if !require_privileges("rollback_without_a_disk") {
        return;
    }
    let mut lab = Lab::new("bdisk");
    let tmpfs = Tmpfs::mount(&lab.work.state_dir(), "64k");
    lab.write_config(&web("50"));
    lab.start_daemon();
    let (blue, green) = lab.split(WEB, 40);
    assert!(blue > 0 && green > 0, "50 %: blue {blue}, green {green}");

    let filler = tmpfs.fill();
    let switched = lab.cli(&["switch", "web", "blue"]);
    assert_eq!(
        switched.code, 0,
        "switch to blue with a full disk: {switched:?}"
    );
    assert_eq!(weight_of(&lab), 0);
    let (blue, green) = lab.split(WEB, 40);
    assert_eq!((blue, green), (40, 0), "every new connection blue at once");
    let status = lab.status();
    assert!(status.daemon.state_file.behind, "{:?}", status.daemon);
    assert!(status.daemon.state_file.errors_total >= 1);
    let metrics = lab.metrics();
    assert_eq!(metric(&metrics, "splitter_state_persist_behind"), Some(1.0));
    assert!(metric(&metrics, "splitter_state_persist_errors_total").unwrap_or(0.0) >= 1.0);

    // A move toward green cannot be persisted: refused, nothing changes.
    let raised = lab.cli(&["set-weight", "web", "30"]);
    assert_eq!(
        raised.code, 1,
        "a raise with a full disk is refused: {raised:?}"
    );
    assert!(raised.stderr.contains("No space left"), "{}", raised.stderr);
    assert_eq!(weight_of(&lab), 0);

    // Retries every second, logged once per episode.
    std::thread::sleep(Duration::from_secs(3));
    let log = lab.daemon_log();
    assert_eq!(
        log.matches("the state file could not be saved").count(),
        1,
        "{log}"
    );

    // SIGKILL while the file still says 50 %: the restart keeps the kernel's 0.
    lab.kill_daemon();
    lab.start_daemon();
    assert_eq!(weight_of(&lab), 0, "the restart kept the emergency");
    assert!(
        lab.daemon_log().contains("the lower one stays"),
        "{}",
        lab.daemon_log()
    );

    // Space is back: saved within the next retries.
    std::fs::remove_file(&filler).unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while lab.status().daemon.state_file.behind {
        assert!(
            Instant::now() < deadline,
            "not saved 5 s after space came back"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let saved = std::fs::read_to_string(lab.work.state_dir().join("state.json")).unwrap();
    let saved: serde_json::Value = serde_json::from_str(&saved).unwrap();
    assert_eq!(saved["services"]["web"]["green_weight"], 0, "{saved}");
    lab.kill_daemon();
    lab.start_daemon();
    assert_eq!(weight_of(&lab), 0);
    lab.stop_daemon();
    drop(lab.daemon.take());
    drop(tmpfs);
}

/// `n` idle TCP connections to the metrics endpoint (from inside the router namespace).
fn idle_metrics_connections(lab: &Lab, n: usize) -> Vec<TcpStream> {
    lab.topology.router.run(move || {
        let _ = splitter::sys::raise_open_files_limit();
        (0..n)
            .filter_map(|_| TcpStream::connect("127.0.0.1:9435").ok())
            .collect()
    })
}

/// One scrape on a new connection: its duration.
fn timed_scrape(lab: &Lab) -> Duration {
    lab.topology.router.run(|| {
        let started = Instant::now();
        let mut stream = TcpStream::connect("127.0.0.1:9435").expect("connect metrics");
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        stream
            .write_all(b"GET /metrics HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
            .unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).unwrap();
        assert!(response.starts_with("HTTP/1.1 200"), "{response:.200}");
        started.elapsed()
    })
}

fn median(mut values: Vec<Duration>) -> Duration {
    values.sort();
    values[values.len() / 2]
}

/// 2 000 idle connections cannot keep a scraper or the CLI out, and do not flood the log.
#[test]
fn idle_metrics_connections_do_not_starve_the_daemon() {
    if !require_privileges("idle_metrics_connections_do_not_starve_the_daemon") {
        return;
    }
    let mut lab = Lab::new("bidle");
    lab.write_config(&web("10"));
    lab.start_daemon();
    let idle = median((0..5).map(|_| timed_scrape(&lab)).collect());
    let log_before = lab.daemon_log().lines().count();
    let held = idle_metrics_connections(&lab, 2000);
    assert!(held.len() >= 1900, "opened {} connections", held.len());
    let loaded = median((0..5).map(|_| timed_scrape(&lab)).collect());
    println!(
        "scrape: median {:.1} ms with no idle connection, {:.1} ms with {} idle connections opened",
        idle.as_secs_f64() * 1e3,
        loaded.as_secs_f64() * 1e3,
        held.len()
    );
    assert!(
        loaded < Duration::from_millis(100),
        "a scrape took {loaded:?} with 2 000 idle connections"
    );
    lab.cli_ok(&["set-weight", "web", "20"]);
    assert_eq!(weight_of(&lab), 200_000);
    let log = lab.daemon_log();
    let new_lines = log.lines().count() - log_before;
    assert!(new_lines < 20, "{new_lines} log lines:\n{log}");
    drop(held);
}

/// A 400 MB control line without a newline: the daemon closes the connection after 64 KiB and
/// keeps answering.
#[test]
fn a_huge_control_line_closes_the_connection() {
    if !require_privileges("a_huge_control_line_closes_the_connection") {
        return;
    }
    let mut lab = Lab::new("bline");
    lab.write_config(&web("10"));
    lab.start_daemon();
    let mut stream = UnixStream::connect(lab.work.socket()).unwrap();
    stream
        .set_write_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let chunk = vec![b'a'; 1 << 20];
    let mut sent = 0usize;
    let total = 400 << 20;
    while sent < total {
        match stream.write(&chunk) {
            Ok(n) => sent += n,
            Err(_) => break,
        }
    }
    assert!(
        sent < 64 << 20,
        "the daemon took {sent} bytes of an endless line"
    );
    let mut answer = String::new();
    let _ = stream.read_to_string(&mut answer);
    assert!(
        answer.is_empty() || answer.contains("request longer than 65536 bytes"),
        "{answer}"
    );
    assert_eq!(weight_of(&lab), 100_000, "the daemon still answers");
}

/// Directories another user could write to, or owned by another user, are refused at start
/// and by `check-config`, with the fix named.
#[test]
fn hostile_directories_are_refused_with_the_fix() {
    if !require_privileges("hostile_directories_are_refused_with_the_fix") {
        return;
    }
    let lab = Lab::new("bdirs");
    lab.write_config(&web("10"));
    let state = lab.work.state_dir();
    let run_check = || {
        let out = Command::new(&lab.binary)
            .args(["check-config", "--config"])
            .arg(lab.work.config())
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    // 1. state_dir writable by others.
    std::fs::create_dir_all(&state).unwrap();
    std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o777)).unwrap();
    let refused = lab.run_daemon_to_exit();
    assert_ne!(refused.code, 0);
    assert!(
        refused
            .stderr
            .contains(&format!("chmod go-w {}", state.display())),
        "{}",
        refused.stderr
    );
    let (code, stderr) = run_check();
    assert_ne!(code, Some(0));
    assert!(
        stderr.contains("state_dir") && stderr.contains("chmod go-w"),
        "{stderr}"
    );
    // 2. state_dir owned by another user.
    std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o700)).unwrap();
    std::os::unix::fs::chown(&state, Some(NOBODY), None).unwrap();
    let refused = lab.run_daemon_to_exit();
    assert!(
        refused
            .stderr
            .contains(&format!("chown 0 {}", state.display())),
        "{}",
        refused.stderr
    );
    std::os::unix::fs::chown(&state, Some(0), None).unwrap();
    // 3. A symlinked lock file is not followed.
    let victim = lab.work.dir.join("victim");
    std::fs::write(&victim, "precious\n").unwrap();
    std::os::unix::fs::symlink(&victim, state.join("daemon.lock")).unwrap();
    let refused = lab.run_daemon_to_exit();
    assert_ne!(refused.code, 0, "{}", refused.stderr);
    assert!(refused.stderr.contains("daemon.lock"), "{}", refused.stderr);
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious\n");
    std::fs::remove_file(state.join("daemon.lock")).unwrap();
    // 4. The socket's directory writable by others.
    std::fs::set_permissions(&lab.work.dir, std::fs::Permissions::from_mode(0o777)).unwrap();
    let refused = lab.run_daemon_to_exit();
    assert!(
        refused.stderr.contains("the control socket's directory")
            && refused.stderr.contains("chmod go-w"),
        "{}",
        refused.stderr
    );
    let (_, stderr) = run_check();
    assert!(
        stderr.contains("the control socket's directory"),
        "{stderr}"
    );
    std::fs::set_permissions(&lab.work.dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    // 5. bpffs not a bpf filesystem.
    let not_bpf = lab.work.dir.join("not-bpf");
    std::fs::create_dir_all(&not_bpf).unwrap();
    let text = std::fs::read_to_string(lab.work.config()).unwrap().replace(
        &lab.work.bpffs().display().to_string(),
        &not_bpf.join("splitter").display().to_string(),
    );
    std::fs::write(lab.work.config(), text).unwrap();
    let (code, stderr) = run_check();
    assert_eq!(code, Some(5), "{stderr}");
    assert!(stderr.contains("is not on a bpf filesystem"), "{stderr}");
    let out = Command::new(&lab.binary)
        .args(["check-config", "--no-host-checks", "--config"])
        .arg(lab.work.config())
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
}

/// A socket swapped in by another user: the CLI refuses it before sending anything.
#[test]
fn a_socket_served_by_another_user_is_refused() {
    if !require_privileges("a_socket_served_by_another_user_is_refused") {
        return;
    }
    let dir = PathBuf::from(format!("/run/splitter-test/fake-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    std::os::unix::fs::chown(&dir, Some(NOBODY), None).unwrap();
    let socket = dir.join("splitter.sock");
    // The impostor, as `nobody`: answers every connection with a fake status, and prints how
    // many bytes it received.
    let script = r#"
import socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.bind(sys.argv[1]); s.listen(1)
print("ready", flush=True)
c, _ = s.accept()
got = b""
try:
    c.sendall(b'{"ok":{"weight":{"service":"web","previous_green_weight":0,"green_weight":1000000}}}\n')
    c.settimeout(2)
    while True:
        chunk = c.recv(4096)
        if not chunk: break
        got += chunk
except Exception:
    pass
print("received", len(got), flush=True)
"#;
    let mut impostor = Command::new("python3")
        .arg("-c")
        .arg(script)
        .arg(&socket)
        .uid(NOBODY)
        .gid(NOBODY)
        .stdout(Stdio::piped())
        .spawn()
        .expect("python3");
    let mut stdout = impostor.stdout.take().unwrap();
    let mut ready = [0u8; 6];
    stdout.read_exact(&mut ready).unwrap();
    let out = Command::new(splitter_tests::daemon_harness::splitter_binary())
        .arg("--socket")
        .arg(&socket)
        .args(["set-weight", "web", "100"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!("runs as uid {NOBODY}")) && stderr.contains("nothing was sent"),
        "{stderr}"
    );
    assert!(out.stdout.is_empty(), "the fake answer was not printed");
    let mut rest = String::new();
    stdout.read_to_string(&mut rest).unwrap();
    let _ = impostor.wait();
    assert!(
        rest.contains("received 0"),
        "the impostor got the request: {rest}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// Bad files are refused by reload with the key named; the running daemon is unchanged.
#[test]
fn bad_configs_leave_the_running_daemon_unchanged() {
    if !require_privileges("bad_configs_leave_the_running_daemon_unchanged") {
        return;
    }
    let mut lab = Lab::new("bconf");
    lab.write_config(&web("10"));
    lab.start_daemon();
    lab.cli_ok(&["set-weight", "web", "20"]);
    let good = std::fs::read_to_string(lab.work.config()).unwrap();
    let rollout = |body: &str| format!("{good}\n[service.rollout]\n{body}\n");
    let cases: Vec<(String, &str)> = vec![
        (
            good.replace(WEB, "0.0.0.0:80"),
            "is the unspecified address",
        ),
        (good.replace(WEB, "224.0.0.5:80"), "is a multicast address"),
        (
            good.replace(WEB, "255.255.255.255:80"),
            "is the broadcast address",
        ),
        (
            good.replace(&format!("{}:{TCP_PORT}", GREEN[0]), "239.0.0.1:8080"),
            "green[0] `239.0.0.1:8080` is a multicast address",
        ),
        (
            rollout(
                "[[service.rollout.checks]]\nprometheus = \"http://127.0.0.1:9090\"\nquery = \"up\"\nbound = { max = inf }",
            ),
            "checks[0].bound: inf is not a finite number",
        ),
        (
            rollout("every = \"100000h\""),
            "every: rollout step duration must be at most 7 days",
        ),
        (
            rollout("failure_tolerance = nan"),
            "failure_tolerance must be a finite number",
        ),
        (
            good.replace("green_weight = 10", "green_weight = \"ten\""),
            "service[0].green_weight: invalid type: string \"ten\"",
        ),
        (
            good.replace("miss_hold = \"30s\"", "miss_hold = \"1000000h\""),
            "dataplane.miss_hold",
        ),
        (
            good.replace("[control]", "[control]\nmax_connections = 0"),
            "control.max_connections: 0 is outside",
        ),
    ];
    for (text, expected) in &cases {
        std::fs::write(lab.work.config(), text).unwrap();
        let refused = lab.cli(&["reload"]);
        assert_eq!(refused.code, 5, "{expected}: {refused:?}");
        assert!(
            refused.stderr.contains(expected),
            "{expected}: {}",
            refused.stderr
        );
        assert_eq!(weight_of(&lab), 200_000, "{expected}: weight changed");
    }
    std::fs::write(lab.work.config(), &good).unwrap();
    // An enormous --every is refused, not overflowed into an instant 100 %.
    let refused = lab.cli(&["rollout", "start", "web", "--every", "100000000h"]);
    assert_ne!(refused.code, 0, "{refused:?}");
    assert_eq!(weight_of(&lab), 200_000);
    lab.cli_ok(&["reload"]);
    assert_eq!(weight_of(&lab), 200_000);
}

/// SIGTERM: the daemon is gone promptly (the data plane stays pinned), also while a rollout's
/// external check waits on a Prometheus that does not answer (a blocking query: the old
/// runtime waited for it on exit, up to the query's 2 s timeout).
#[test]
fn sigterm_exits_promptly() {
    if !require_privileges("sigterm_exits_promptly") {
        return;
    }
    let mut lab = Lab::new("bterm");
    // A "Prometheus" that accepts connections (the kernel's backlog) and never answers.
    let silent = lab
        .topology
        .router
        .run(|| std::net::TcpListener::bind("127.0.0.1:0").expect("bind"));
    let port = silent.local_addr().unwrap().port();
    let config = format!(
        "{}\n[service.rollout]\nevery = \"1h\"\n[[service.rollout.checks]]\nprometheus = \"http://127.0.0.1:{port}\"\nquery = \"up\"\nbound = {{ max = 1 }}\n",
        web("0")
    );
    lab.write_config(&config);
    let mut idle = Vec::new();
    let mut busy = Vec::new();
    for round in 0..6 {
        lab.start_daemon();
        let with_check = round % 2 == 1;
        if with_check {
            // The pinned data plane keeps the 1 % of an earlier round's rollout: back to 0 so
            // the rollout starts from the stable color (`rollout start` refuses otherwise).
            lab.cli_ok(&["set-weight", "web", "0"]);
            lab.cli_ok(&["rollout", "start", "web"]);
            std::thread::sleep(Duration::from_millis(300));
        }
        let daemon = lab.daemon.as_mut().unwrap();
        let started = Instant::now();
        daemon.signal(libc::SIGTERM);
        let code = daemon.wait(Duration::from_secs(10));
        let took = started.elapsed();
        assert_eq!(code, Some(0), "{}", lab.daemon_log());
        lab.daemon = None;
        if with_check {
            busy.push(took);
            // The next round starts without a running rollout.
            std::fs::remove_file(lab.work.state_dir().join("state.json")).unwrap();
        } else {
            idle.push(took);
        }
    }
    let (idle_median, busy_median) = (median(idle.clone()), median(busy.clone()));
    println!(
        "SIGTERM to exit: idle {idle:?} (median {:.0} ms); with a check waiting on a silent Prometheus {busy:?} (median {:.0} ms)",
        idle_median.as_secs_f64() * 1e3,
        busy_median.as_secs_f64() * 1e3
    );
    assert!(idle_median < Duration::from_millis(500), "{idle:?}");
    assert!(busy_median < Duration::from_millis(500), "{busy:?}");
    drop(silent);
}

/// The figures: control round trips while a reload scans a big flow table.
#[test]
#[ignore = "measurement: --ignored measure --nocapture"]
fn measure_control_during_a_reload_scan() {
    if !require_privileges("measure_control_during_a_reload_scan") {
        return;
    }
    const FLOWS: u32 = 1 << 20;
    let mut lab = Lab::new("bscan");
    let text = base_config(&lab.work).replace("262144", &FLOWS.to_string());
    std::fs::write(lab.work.config(), format!("{text}{}", web("10"))).unwrap();
    lab.start_daemon();
    let status = lab.status();
    let web_status = status.services.iter().find(|s| s.name == "web").unwrap();
    // Every flow pinned to blue[1], which the reload removes: the reload must scan the table
    // to know whether blue[1]'s reply mapping can go.
    let doomed = web_status.colors[0].backends[1].clone();
    let SocketAddr::V4(backend) = doomed.address else {
        unreachable!()
    };
    let mut maps = Maps::from_pins(&lab.work.bpffs().join("dataplane/maps")).unwrap();
    let web_key = service_key(&WEB.parse().unwrap(), Protocol::Tcp);
    let started = Instant::now();
    let mut filled = 0u32;
    for i in 0..FLOWS {
        let key = FlowKey {
            src: splitter_common::Addr::from_v4([198, 19, (i >> 8) as u8, i as u8]),
            dst: web_key.addr,
            src_port: (1024 + (i >> 16) as u16).to_be(),
            dst_port: web_key.port,
            protocol: 6,
            family: 4,
            _pad: [0; 2],
        };
        let value = FlowValue {
            backend_addr: splitter_common::Addr::from_v4(backend.ip().octets()),
            backend_port: backend.port().to_be(),
            color: 0,
            state: splitter_common::FlowState::Established as u8,
            backend_id: doomed.id,
            ..FlowValue::default()
        };
        if maps.flows.insert(key, value, 0).is_ok() {
            filled += 1;
        }
        if started.elapsed() > Duration::from_secs(120) {
            break;
        }
    }
    println!(
        "filled {filled} flows in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let removed = web("10").replace(&format!(", \"{}:{TCP_PORT}\"", BLUE[1]), "");
    std::fs::write(lab.work.config(), format!("{text}{removed}")).unwrap();
    let socket = lab.work.socket();
    let reload = std::thread::spawn({
        let binary = lab.binary.clone();
        let socket = socket.clone();
        move || {
            let started = Instant::now();
            let out = Command::new(binary)
                .arg("--socket")
                .arg(socket)
                .arg("reload")
                .output()
                .unwrap();
            (started.elapsed(), out.status.code())
        }
    });
    let mut round_trips = Vec::new();
    std::thread::sleep(Duration::from_millis(20));
    while !reload.is_finished() && round_trips.len() < 200 {
        let started = Instant::now();
        let out = lab.cli(&["set-weight", "web", "10"]);
        assert_eq!(out.code, 0, "{out:?}");
        round_trips.push(started.elapsed());
    }
    let (reload_time, code) = reload.join().unwrap();
    assert_eq!(code, Some(0));
    let idle: Vec<Duration> = (0..10)
        .map(|_| {
            let started = Instant::now();
            lab.cli_ok(&["set-weight", "web", "10"]);
            started.elapsed()
        })
        .collect();
    let max = round_trips.iter().max().copied().unwrap_or_default();
    println!(
        "reload with {filled} pinned flows took {:.0} ms; `splitter set-weight` during it: {} round trips, median {:.1} ms, max {:.1} ms; idle: median {:.1} ms",
        reload_time.as_secs_f64() * 1e3,
        round_trips.len(),
        if round_trips.is_empty() {
            0.0
        } else {
            median(round_trips.clone()).as_secs_f64() * 1e3
        },
        max.as_secs_f64() * 1e3,
        median(idle).as_secs_f64() * 1e3,
    );
}
