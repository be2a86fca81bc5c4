//! `cargo xtask bench --health`: the CPU the splitter daemon spends on active health checks of
//! 1 000 backends every second, beside HAProxy checking the same 1 000 servers in the same run.
//!
//! One lab (`daemon_harness::Lab`): the router namespace runs the splitter daemon and HAProxy
//! side by side; nginx in the blue and the green namespaces listens on 500 ports each (the
//! 1 000 backends, answering `GET /healthz` with 200). HAProxy checks from a second address of
//! the router (`source`), so an nftables counter in each backend namespace counts the SYNs of
//! each checker: the figures say how many checks each one really made in the window, and a
//! checker that checked nothing fails the run. CPU is utime + stime from `/proc/PID/stat`
//! (every thread of the process) over the window, after a warm-up in which every backend must
//! be up in both.

use std::{
    net::Ipv4Addr,
    process::Command,
    time::{Duration, Instant},
};

use anyhow::Context as _;

use crate::{
    compare::process::{Process, ScratchDir},
    daemon_harness::{BLUE, GREEN, Lab, WorkDir},
    netns::Netns,
};

/// The first backend port; each color listens on `PORT_BASE..PORT_BASE + backends / 2`.
const PORT_BASE: u16 = 20_000;
/// The router's second addresses on the blue and green links: HAProxy's check source.
const HAPROXY_SOURCE: [&str; 2] = ["198.18.1.2", "198.18.2.2"];
/// The router's own addresses there: the splitter's check source.
const SPLITTER_SOURCE: [&str; 2] = ["198.18.1.1", "198.18.2.1"];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CheckKind {
    Tcp,
    Http,
}

impl CheckKind {
    pub const fn name(self) -> &'static str {
        match self {
            CheckKind::Tcp => "tcp",
            CheckKind::Http => "http",
        }
    }
}

#[derive(Clone, Debug)]
pub struct Options {
    /// Backends in all (half blue, half green).
    pub backends: u16,
    /// Before the window: every backend must be up in both checkers by then.
    pub warmup: Duration,
    /// The measured window.
    pub window: Duration,
}

/// One round's figures.
#[derive(Clone, Debug)]
pub struct Figure {
    pub check: CheckKind,
    pub backends: u16,
    pub window: Duration,
    /// CPU time over the window divided by the window, in % of one core.
    pub splitter_cpu_percent: f64,
    pub haproxy_cpu_percent: f64,
    /// SYNs each checker sent to the backends per second in the window.
    pub splitter_checks_per_s: f64,
    pub haproxy_checks_per_s: f64,
}

/// Runs one round per check kind, tcp then http, in one lab.
pub fn measure(options: &Options) -> anyhow::Result<Vec<Figure>> {
    anyhow::ensure!(
        options.backends >= 2 && options.backends.is_multiple_of(2),
        "--backends must be even (half blue, half green)"
    );
    let per_color = options.backends / 2;
    let mut lab = Lab::bare("cmp-hc", WorkDir::new("cmp-hc"));
    for (dev, address) in ["eth1", "eth2"].iter().zip(HAPROXY_SOURCE) {
        lab.topology.router.addr(dev, &format!("{address}/24"));
    }
    let colors = [
        (
            &lab.topology.blue,
            BLUE[0],
            SPLITTER_SOURCE[0],
            HAPROXY_SOURCE[0],
        ),
        (
            &lab.topology.green,
            GREEN[0],
            SPLITTER_SOURCE[1],
            HAPROXY_SOURCE[1],
        ),
    ];
    let mut nginx = Vec::new();
    for (ns, address, splitter_source, haproxy_source) in colors {
        let address: Ipv4Addr = address.parse()?;
        nginx.push(Nginx::start(ns, address, per_color)?);
        SynCounters::install(ns, splitter_source, haproxy_source)?;
    }
    let mut figures = Vec::new();
    for check in [CheckKind::Tcp, CheckKind::Http] {
        figures.push(round(&mut lab, check, per_color, options)?);
    }
    drop(nginx);
    Ok(figures)
}

fn backends_of(address: &str, per_color: u16) -> Vec<String> {
    (0..per_color)
        .map(|i| format!("{address}:{}", PORT_BASE + i))
        .collect()
}

/// The `[[service]]` section (the lab adds `[dataplane]` and `[control]`).
fn splitter_services(check: CheckKind, per_color: u16) -> String {
    let list = |address| {
        backends_of(address, per_color)
            .iter()
            .map(|backend| format!("\"{backend}\""))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let http = match check {
        CheckKind::Tcp => String::new(),
        CheckKind::Http => "path = \"/healthz\"\n".to_owned(),
    };
    format!(
        "\n[[service]]\nname = \"web\"\naddress = \"198.18.0.100:80\"\ngreen_weight = 0\n\
         blue = [{}]\ngreen = [{}]\n\n[service.health]\ncheck = \"{}\"\n{http}\
         interval = \"1s\"\ntimeout = \"1s\"\n",
        list(BLUE[0]),
        list(GREEN[0]),
        check.name(),
    )
}

fn haproxy_config(check: CheckKind, per_color: u16) -> String {
    let mut config = String::from(
        "global\n\tmaxconn 5000\n\
         defaults\n\tmode tcp\n\ttimeout connect 1s\n\ttimeout check 1s\n\
         \ttimeout client 30s\n\ttimeout server 30s\n\
         frontend service\n\tbind 127.0.0.1:8080\n\tdefault_backend pool\n\
         backend pool\n\tbalance roundrobin\n",
    );
    if check == CheckKind::Http {
        config += "\toption httpchk GET /healthz\n\thttp-check expect status 200\n";
    }
    for (color, (address, source)) in [(BLUE[0], HAPROXY_SOURCE[0]), (GREEN[0], HAPROXY_SOURCE[1])]
        .into_iter()
        .enumerate()
    {
        for (i, backend) in backends_of(address, per_color).iter().enumerate() {
            config += &format!(
                "\tserver c{color}b{i} {backend} check inter 1s rise 2 fall 3 source {source}\n"
            );
        }
    }
    config
}

fn round(
    lab: &mut Lab,
    check: CheckKind,
    per_color: u16,
    options: &Options,
) -> anyhow::Result<Figure> {
    let backends = per_color * 2;
    eprintln!(
        "health checks: {} of {backends} backends every 1 s, splitter and HAProxy side by side",
        check.name()
    );
    lab.write_config(&splitter_services(check, per_color));
    lab.start_daemon();
    let daemon_pid = lab.daemon.as_ref().expect("started").pid();

    let dir = ScratchDir::new(&format!("splcmp-hc-haproxy-{}", std::process::id()))?;
    let path = dir.path.join("haproxy.cfg");
    std::fs::write(&path, haproxy_config(check, per_color))?;
    let log = dir.path.join("haproxy.log");
    let mut haproxy = Process::spawn(
        "haproxy",
        lab.topology
            .router
            .command("haproxy")
            .args(["-db", "-f"])
            .arg(&path),
        &log,
    )?;
    let running = |haproxy: &mut Process| {
        haproxy.ensure_running().map_err(|error| {
            let output = std::fs::read_to_string(&log).unwrap_or_default();
            anyhow::anyhow!("HAProxy: {error}\n{output}")
        })
    };
    running(&mut haproxy)?;

    std::thread::sleep(options.warmup);
    let up = backends_up(lab);
    anyhow::ensure!(
        up == usize::from(backends),
        "after the {:?} warm-up, the splitter has {up} of {backends} backends up:\n{}",
        options.warmup,
        lab.daemon_log()
    );
    running(&mut haproxy)?;

    let counters = [&lab.topology.blue, &lab.topology.green];
    let syns_before = SynCounters::read_all(&counters)?;
    let splitter_before = cpu_time(daemon_pid)?;
    let haproxy_before = cpu_time(haproxy.pid())?;
    let started = Instant::now();
    std::thread::sleep(options.window);
    let splitter_after = cpu_time(daemon_pid)?;
    let haproxy_after = cpu_time(haproxy.pid())?;
    let elapsed = started.elapsed();
    let syns_after = SynCounters::read_all(&counters)?;
    running(&mut haproxy)?;
    // HAProxy logs a server it takes down ("is DOWN"): every one must have stayed up.
    let output = std::fs::read_to_string(&log).unwrap_or_default();
    anyhow::ensure!(
        !output.contains("is DOWN"),
        "HAProxy took a backend down during the run:\n{output}"
    );
    let up = backends_up(lab);
    anyhow::ensure!(
        up == usize::from(backends),
        "after the window, the splitter has {up} of {backends} backends up"
    );
    // SIGKILL, not SIGTERM: the bench blocks the termination signals in every thread (its
    // Ctrl-C clean-up) and the daemon inherits that mask. The next round's daemon adopts the
    // pinned data plane; the work directory unloads it at the end.
    lab.kill_daemon();
    drop(haproxy);

    let seconds = elapsed.as_secs_f64();
    let percent = |before: Duration, after: Duration| {
        (after.saturating_sub(before)).as_secs_f64() / seconds * 100.0
    };
    let rate = |index: usize| (syns_after[index] - syns_before[index]) as f64 / seconds;
    let figure = Figure {
        check,
        backends,
        window: elapsed,
        splitter_cpu_percent: percent(splitter_before, splitter_after),
        haproxy_cpu_percent: percent(haproxy_before, haproxy_after),
        splitter_checks_per_s: rate(0),
        haproxy_checks_per_s: rate(1),
    };
    // A checker that fell far behind its interval measured less work than asked.
    for (name, checks) in [
        ("splitter", figure.splitter_checks_per_s),
        ("HAProxy", figure.haproxy_checks_per_s),
    ] {
        anyhow::ensure!(
            checks >= f64::from(backends) * 0.9,
            "{name} made {checks:.0} checks/s, expected about {backends}/s"
        );
    }
    Ok(figure)
}

/// Backends `up` in `splitter status --json`.
fn backends_up(lab: &Lab) -> usize {
    lab.status()
        .services
        .iter()
        .flat_map(|service| &service.colors)
        .flat_map(|color| &color.backends)
        .filter(|backend| backend.state.in_rotation())
        .count()
}

/// utime + stime of every thread of `pid` (`/proc/PID/stat`, fields 14 and 15).
pub fn cpu_time(pid: u32) -> anyhow::Result<Duration> {
    let path = format!("/proc/{pid}/stat");
    let stat = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    // The command name (field 2) may hold spaces: count from the last ')'.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .with_context(|| format!("{path}: no ')'"))?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // `rest` starts at field 3 (state): utime is field 14, stime 15.
    let ticks = |index: usize| -> anyhow::Result<u64> {
        fields
            .get(index - 3)
            .with_context(|| format!("{path}: field {index} missing"))?
            .parse()
            .with_context(|| format!("{path}: field {index}"))
    };
    let total = ticks(14)? + ticks(15)?;
    // SAFETY: sysconf has no preconditions.
    let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    anyhow::ensure!(per_second > 0, "sysconf(_SC_CLK_TCK) failed");
    Ok(Duration::from_secs_f64(total as f64 / per_second as f64))
}

/// nftables counters in a backend namespace: SYNs from the splitter's source address and from
/// HAProxy's. They go with the namespace.
struct SynCounters;

impl SynCounters {
    fn install(ns: &Netns, splitter: &str, haproxy: &str) -> anyhow::Result<()> {
        let ruleset = format!(
            "table inet splhc {{\n\
             \tcounter splitter {{ }}\n\
             \tcounter haproxy {{ }}\n\
             \tchain input {{\n\
             \t\ttype filter hook input priority 0; policy accept;\n\
             \t\tip saddr {splitter} tcp flags & (syn | ack) == syn counter name splitter\n\
             \t\tip saddr {haproxy} tcp flags & (syn | ack) == syn counter name haproxy\n\
             \t}}\n\
             }}\n"
        );
        let file =
            std::env::temp_dir().join(format!("splhc-{}-{}.nft", ns.name, std::process::id()));
        std::fs::write(&file, ruleset)?;
        let out = ns
            .command("nft")
            .arg("-f")
            .arg(&file)
            .output()
            .context("running nft")?;
        let _ = std::fs::remove_file(&file);
        anyhow::ensure!(
            out.status.success(),
            "nft -f in {}: {}",
            ns.name,
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(())
    }

    fn read(ns: &Netns, name: &str) -> anyhow::Result<u64> {
        let out = ns
            .command("nft")
            .args(["list", "counter", "inet", "splhc", name])
            .output()
            .context("running nft")?;
        let text = String::from_utf8_lossy(&out.stdout);
        text.split_whitespace()
            .skip_while(|word| *word != "packets")
            .nth(1)
            .and_then(|packets| packets.parse().ok())
            .with_context(|| format!("nft counter {name} in {}: {text}", ns.name))
    }

    /// [splitter, HAProxy] SYNs summed over the namespaces.
    fn read_all(namespaces: &[&Netns]) -> anyhow::Result<[u64; 2]> {
        let mut sums = [0, 0];
        for ns in namespaces {
            sums[0] += Self::read(ns, "splitter")?;
            sums[1] += Self::read(ns, "haproxy")?;
        }
        Ok(sums)
    }
}

/// nginx (no master: the PID held is the server) on `count` ports of one address; `GET
/// /healthz` answers 200.
struct Nginx {
    _process: Process,
    _dir: ScratchDir,
}

impl Nginx {
    fn start(ns: &Netns, address: Ipv4Addr, count: u16) -> anyhow::Result<Self> {
        let dir = ScratchDir::new(&format!(
            "splcmp-hc-nginx-{}-{}",
            ns.name,
            std::process::id()
        ))?;
        let listen: String = (0..count)
            .map(|i| format!("\t\tlisten {address}:{};\n", PORT_BASE + i))
            .collect();
        let path = dir.path.display();
        let config = format!(
            "daemon off;\nmaster_process off;\npid {path}/nginx.pid;\n\
             error_log {path}/error.log warn;\nworker_rlimit_nofile 65536;\n\
             events {{ worker_connections 16384; }}\n\
             http {{\n\taccess_log off;\n\tclient_body_temp_path {path}/body;\n\
             \tproxy_temp_path {path}/proxy;\n\tfastcgi_temp_path {path}/fastcgi;\n\
             \tuwsgi_temp_path {path}/uwsgi;\n\tscgi_temp_path {path}/scgi;\n\
             \tserver {{\n{listen}\t\tlocation = /healthz {{ return 200 \"ok\\n\"; }}\n\
             \t\tlocation / {{ return 404; }}\n\t}}\n}}\n"
        );
        let conf = dir.path.join("nginx.conf");
        std::fs::write(&conf, config)?;
        let log = dir.path.join("stderr.log");
        let mut process = Process::spawn(
            "nginx",
            ns.command("nginx")
                .arg("-p")
                .arg(&dir.path)
                .arg("-c")
                .arg(&conf),
            &log,
        )?;
        process.ensure_running().map_err(|error| {
            let output = std::fs::read_to_string(&log).unwrap_or_default();
            anyhow::anyhow!("nginx in {} did not start: {error}\n{output}", ns.name)
        })?;
        // Every port listening before the checkers start.
        let last = std::net::SocketAddr::from((address, PORT_BASE + count - 1));
        let deadline = Instant::now() + Duration::from_secs(10);
        while ns
            .command("ss")
            .args(["-Htln", &format!("sport = :{}", last.port())])
            .output()
            .map(|out| out.stdout.is_empty())
            .unwrap_or(true)
        {
            anyhow::ensure!(Instant::now() < deadline, "nginx did not listen on {last}");
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(Self {
            _process: process,
            _dir: dir,
        })
    }
}

/// The figures as the README's table.
pub fn markdown(figures: &[Figure]) -> String {
    let mut text = String::from(
        "| check | backends | interval | splitter CPU (% of one core) | HAProxy CPU | splitter ÷ HAProxy | checks/s splitter / HAProxy |\n\
         |---|---:|---:|---:|---:|---:|---:|\n",
    );
    for figure in figures {
        text += &format!(
            "| {} | {} | 1 s | {:.2} % | {:.2} % | {:.2}× | {:.0} / {:.0} |\n",
            figure.check.name(),
            figure.backends,
            figure.splitter_cpu_percent,
            figure.haproxy_cpu_percent,
            figure.splitter_cpu_percent / figure.haproxy_cpu_percent,
            figure.splitter_checks_per_s,
            figure.haproxy_checks_per_s,
        );
    }
    text
}

/// Whether `command` is on PATH (nginx, haproxy, nft): a clear error before the lab is built.
pub fn require(programs: &[&str]) -> anyhow::Result<()> {
    for program in programs {
        let found = Command::new("sh")
            .args(["-c", &format!("command -v {program}")])
            .output()
            .map(|out| out.status.success())
            .unwrap_or(false);
        anyhow::ensure!(
            found,
            "{program} is not installed: run `cargo xtask setup --test-deps`"
        );
    }
    Ok(())
}
