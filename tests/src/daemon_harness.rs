//! A lab for end-to-end tests of the real `splitter` binary: client, router (the splitter host)
//! and blue/green backend namespaces, a bpffs mounted under /run from the root mount namespace
//! (so pins outlive a killed daemon and are visible to the next one), real TCP and UDP servers,
//! the daemon as a child process that entered only the router's network namespace, and the
//! CLI. Everything is torn down on drop, in order: daemon (by PID), servers, pins, the bpffs
//! mount and work directory, namespaces.
//!
//! ```text
//!  client 198.18.0.1 ── eth0 [router 198.18.0.254] eth1 198.18.1.1 ── blue  198.18.1.10, .11
//!                                                  eth2 198.18.2.1 ── green 198.18.2.10, .11
//!  (IPv6: client fd00::1, router fd00::fe / fd00:1::1 / fd00:2::1, blue fd00:1::10, ::11,
//!   green fd00:2::10, ::11)
//! ```
//! Services are virtual addresses in 198.18.100.0/24 and fd00:100::/64, routed by the client
//! to the router.

use std::{
    fs::File,
    io::{BufRead as _, BufReader, Read as _, Write as _},
    net::{SocketAddr, TcpStream},
    os::{fd::AsRawFd as _, unix::process::CommandExt as _},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::OnceLock,
    time::{Duration, Instant},
};

use crate::{
    netns::{Netns, sh, unique, veth},
    resets::{self, ResetTrace, Role, Roles},
    servers::Servers,
};

pub const CLIENT: &str = "198.18.0.1";
pub const BLUE: [&str; 2] = ["198.18.1.10", "198.18.1.11"];
pub const GREEN: [&str; 2] = ["198.18.2.10", "198.18.2.11"];
pub const CLIENT6: &str = "fd00::1";
pub const BLUE6: [&str; 2] = ["fd00:1::10", "fd00:1::11"];
pub const GREEN6: [&str; 2] = ["fd00:2::10", "fd00:2::11"];
/// Backends' TCP ports (line echo: every line is answered with the backend's address:port).
pub const TCP_PORT: u16 = 8080;
pub const TCP_PORT_2: u16 = 8081;
/// Backends' UDP port (every datagram is answered with the backend's address).
pub const UDP_PORT: u16 = 5353;
/// The longest a CLI command may take in a test before it is killed and the test fails.
pub const CLI_TIMEOUT: Duration = Duration::from_secs(30);

/// The `splitter` binary of this build, built (up to date) once per process: cargo does not
/// build other packages' binaries for integration tests (nor for `cargo run` of a binary of
/// this package, e.g. the demo). `SPLITTER_BIN` overrides.
pub fn splitter_binary() -> PathBuf {
    static BINARY: OnceLock<PathBuf> = OnceLock::new();
    BINARY
        .get_or_init(|| {
            if let Some(path) = std::env::var_os("SPLITTER_BIN") {
                return PathBuf::from(path);
            }
            let exe = std::env::current_exe().expect("own executable path");
            // A test: target/<profile>/deps/<test>; a binary: target/<profile>/<binary>.
            let dir = exe.parent().expect("executable under target/<profile>");
            let profile_dir = if dir.file_name().is_some_and(|name| name == "deps") {
                dir.parent().expect("target/<profile>/deps").to_path_buf()
            } else {
                dir.to_path_buf()
            };
            let target_dir = profile_dir.parent().expect("target dir").to_path_buf();
            let release = profile_dir
                .file_name()
                .is_some_and(|name| name == "release");
            let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
            let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("../Cargo.toml");
            let mut build = Command::new(cargo);
            build
                .args(["build", "--quiet", "-p", "splitter", "--bin", "splitter"])
                .arg("--manifest-path")
                .arg(&manifest)
                .arg("--target-dir")
                .arg(&target_dir);
            if release {
                build.arg("--release");
            }
            // Not the variables cargo set for this test crate: build scripts that watch them
            // (ring's watches CARGO_MANIFEST_DIR and OUT_DIR) would see a change and rebuild, and the next
            // `cargo test` would rebuild again.
            for (key, _) in std::env::vars_os() {
                let key = key.to_string_lossy();
                if key == "OUT_DIR"
                    || key == "CARGO_MANIFEST_DIR"
                    || key == "CARGO_MANIFEST_PATH"
                    || key == "CARGO_CRATE_NAME"
                    || key == "CARGO_PRIMARY_PACKAGE"
                    || key == "CARGO_TARGET_TMPDIR"
                    || key == "CARGO_RUSTC_CURRENT_DIR"
                    || key.starts_with("CARGO_PKG_")
                    || key.starts_with("CARGO_BIN_")
                {
                    build.env_remove(&*key);
                }
            }
            let out = build
                .output()
                .expect("running cargo build for the splitter binary");
            assert!(
                out.status.success(),
                "building the splitter binary failed:\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
            profile_dir.join("splitter")
        })
        .clone()
}

/// The four namespaces and their links (built from the pieces in `netns.rs`, like the other
/// topologies). The splitter host is called `router` here: it routes between the client and
/// the backends' segments. Unlike [`crate::topology::Topology`] (one namespace per backend),
/// each color is one namespace holding both of its backend addresses, numbered as in the
/// module's picture.
pub struct Topology {
    pub client: Netns,
    pub router: Netns,
    pub blue: Netns,
    pub green: Netns,
}

impl Topology {
    pub fn new(tag: &str) -> Self {
        let topology = Self {
            client: Netns::new(&unique(&format!("{tag}-c"))),
            router: Netns::new(&unique(&format!("{tag}-r"))),
            blue: Netns::new(&unique(&format!("{tag}-b"))),
            green: Netns::new(&unique(&format!("{tag}-g"))),
        };
        let Topology {
            client,
            router,
            blue,
            green,
        } = &topology;
        for ns in [client, router, blue, green] {
            ns.sysctls(&[
                // No router solicitations or autoconfigured addresses: only our own traffic.
                ("net.ipv6.conf.default.accept_ra", "0"),
                ("net.ipv6.conf.default.router_solicitations", "0"),
                // Link-local addresses usable at once (a tentative one delays neighbour
                // discovery).
                ("net.ipv6.conf.default.accept_dad", "0"),
            ]);
        }
        veth(client, "eth0", router, "eth0");
        veth(blue, "eth0", router, "eth1");
        veth(green, "eth0", router, "eth2");
        router.forwarding(true);
        client.addr("eth0", &format!("{CLIENT}/24"));
        client.addr("eth0", &format!("{CLIENT6}/64"));
        client.route("default", "198.18.0.254");
        client.route("default", "fd00::fe");
        for (dev, v4, v6) in [
            ("eth0", "198.18.0.254/24", "fd00::fe/64"),
            ("eth1", "198.18.1.1/24", "fd00:1::1/64"),
            ("eth2", "198.18.2.1/24", "fd00:2::1/64"),
        ] {
            router.addr(dev, v4);
            router.addr(dev, v6);
        }
        for (ns, addresses, gateways) in [
            (blue, BLUE.iter().chain(&BLUE6), ["198.18.1.1", "fd00:1::1"]),
            (
                green,
                GREEN.iter().chain(&GREEN6),
                ["198.18.2.1", "fd00:2::1"],
            ),
        ] {
            for address in addresses {
                let prefix = if address.contains(':') { 64 } else { 24 };
                ns.addr("eth0", &format!("{address}/{prefix}"));
            }
            for gateway in gateways {
                ns.route("default", gateway);
            }
        }
        topology
    }
}

/// The servers of one backend namespace: TCP line echo on [`TCP_PORT`] and [`TCP_PORT_2`] and
/// UDP on [`UDP_PORT`] of every address in `addresses`, each answering with its own
/// `address:port` (UDP: nothing else, so the reply's length is known). Stop on drop.
pub fn backend_servers(ns: &Netns, addresses: &[&str]) -> Servers {
    let mut servers = Servers::new();
    for address in addresses {
        let ip: std::net::IpAddr = address.parse().expect("backend IP");
        for port in [TCP_PORT, TCP_PORT_2] {
            let tcp = SocketAddr::new(ip, port);
            servers.tcp(ns, tcp, &tcp.to_string());
        }
        let udp = SocketAddr::new(ip, UDP_PORT);
        let reply = udp.to_string();
        servers.udp_with(ns, udp, move |_| reply.clone().into_bytes());
    }
    servers
}

/// A bpffs mounted under /run from the root mount namespace, and the test's work directory
/// (config, socket, state). On drop: whatever is pinned is unloaded, the bpffs unmounted, the
/// directory removed.
pub struct WorkDir {
    pub dir: PathBuf,
    pub bpffs_mount: PathBuf,
}

impl WorkDir {
    /// `/run/splitter-test/<tag>-<pid>`.
    pub fn new(tag: &str) -> Self {
        Self::at(PathBuf::from(format!(
            "/run/splitter-test/{tag}-{}",
            std::process::id()
        )))
    }

    /// A work directory at `dir` (unique to this process: its leftovers are removed first);
    /// its parent is removed on drop when empty.
    pub fn at(dir: PathBuf) -> Self {
        let bpffs_mount = dir.join("bpf");
        // Leftovers of a crashed run with the same pid.
        if bpffs_mount.exists() {
            let _ = splitter::dataplane::unload(&bpffs_mount.join("splitter"));
            let _ = Command::new("umount").arg(&bpffs_mount).output();
        }
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&bpffs_mount).expect("create work dir");
        let mount = bpffs_mount.to_str().expect("utf-8 path");
        sh(&["mount", "-t", "bpf", "bpf", mount]);
        Self { dir, bpffs_mount }
    }

    pub fn config(&self) -> PathBuf {
        self.dir.join("splitter.toml")
    }
    pub fn socket(&self) -> PathBuf {
        self.dir.join("splitter.sock")
    }
    pub fn state_dir(&self) -> PathBuf {
        self.dir.join("state")
    }
    pub fn bpffs(&self) -> PathBuf {
        self.bpffs_mount.join("splitter")
    }
    pub fn log(&self) -> PathBuf {
        self.dir.join("daemon.log")
    }
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        let _ = splitter::dataplane::unload(&self.bpffs());
        let _ = Command::new("umount").arg(&self.bpffs_mount).output();
        let _ = std::fs::remove_dir_all(&self.dir);
        if let Some(parent) = self.dir.parent() {
            let _ = std::fs::remove_dir(parent); // only when no other test uses it
        }
    }
}

/// A daemon process started by the test; SIGKILLed on drop if still running.
pub struct Daemon {
    child: Child,
}

impl Daemon {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn signal(&self, signal: libc::c_int) {
        // SAFETY: a signal to our own child, by PID.
        let rc = unsafe { libc::kill(self.child.id() as libc::pid_t, signal) };
        assert_eq!(rc, 0, "kill({}, {signal})", self.child.id());
    }

    /// Waits for the process to exit (at most `timeout`), returning its exit code.
    pub fn wait(&mut self, timeout: Duration) -> Option<i32> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status.code().unwrap_or(-1));
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILL, then reap.
    pub fn kill(mut self) {
        self.signal(libc::SIGKILL);
        self.wait(Duration::from_secs(10));
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            self.signal(libc::SIGKILL);
            let _ = self.child.wait();
        }
    }
}

/// What a CLI run printed and returned.
#[derive(Debug)]
pub struct CliOutput {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

/// Everything a daemon test needs. Fields drop in this order.
pub struct Lab {
    pub daemon: Option<Daemon>,
    pub servers: Vec<Servers>,
    /// Every RST sent while the test runs, to explain a reset a client sees.
    pub resets: ResetTrace,
    pub work: WorkDir,
    pub topology: Topology,
    pub binary: PathBuf,
}

/// The `[dataplane]` and `[control]` sections of a lab config.
pub fn base_config(work: &WorkDir) -> String {
    format!(
        "[dataplane]\ninterfaces = [\"eth0\"]\nxdp_mode = \"auto\"\nflow_table_size = 262144\nmiss_hold = \"30s\"\n\n\
         [control]\nsocket = \"{}\"\nmetrics = \"127.0.0.1:9435\"\nstate_dir = \"{}\"\nbpffs = \"{}\"\n",
        work.socket().display(),
        work.state_dir().display(),
        work.bpffs().display(),
    )
}

/// A `[[service]]` section: blue and green backends at `port`.
pub fn service(
    name: &str,
    vip: &str,
    protocol: &str,
    weight: &str,
    blue: &[&str],
    green: &[&str],
    port: u16,
) -> String {
    let list = |hosts: &[&str]| {
        hosts
            .iter()
            .map(|host| {
                let ip: std::net::IpAddr = host.parse().expect("backend IP");
                format!("\"{}\"", SocketAddr::new(ip, port))
            })
            .collect::<Vec<_>>()
            .join(", ")
    };
    format!(
        "\n[[service]]\nname = \"{name}\"\naddress = \"{vip}\"\nprotocol = \"{protocol}\"\ngreen_weight = {weight}\nblue = [{}]\ngreen = [{}]\n",
        list(blue),
        list(green)
    )
}

impl Lab {
    /// Namespaces, bpffs, servers on every backend. `tag` must be short (namespace names).
    pub fn new(tag: &str) -> Self {
        let mut lab = Self::bare(tag, WorkDir::new(tag));
        lab.servers = vec![
            backend_servers(&lab.topology.blue, &[BLUE[0], BLUE[1], BLUE6[0], BLUE6[1]]),
            backend_servers(
                &lab.topology.green,
                &[GREEN[0], GREEN[1], GREEN6[0], GREEN6[1]],
            ),
        ];
        lab
    }

    /// Namespaces and the work directory `work`, no servers: for callers that run their own
    /// backends.
    pub fn bare(tag: &str, work: WorkDir) -> Self {
        let binary = splitter_binary();
        let topology = Topology::new(tag);
        for backends in [&topology.blue, &topology.green] {
            resets::one_cpu_per_flow(backends, "eth0");
        }
        Self {
            daemon: None,
            servers: Vec::new(),
            resets: ResetTrace::start(tag),
            work,
            topology,
            binary,
        }
    }

    /// Writes the config: the lab's base sections plus `services`.
    pub fn write_config(&self, services: &str) {
        std::fs::write(
            self.work.config(),
            format!("{}{services}", base_config(&self.work)),
        )
        .expect("write config");
    }

    /// Starts `splitter daemon` in the router's network namespace (its mount namespace stays
    /// the test's, so the bpffs under /run is shared) and waits until it answers.
    pub fn start_daemon(&mut self) {
        self.start_daemon_with(&[], &[]);
    }

    /// [`Lab::start_daemon`] through a `wrapper` command (e.g. `setpriv ... --`; empty: none)
    /// with `extra` arguments after `daemon --config FILE`.
    pub fn start_daemon_with(&mut self, wrapper: &[&str], extra: &[&str]) {
        assert!(self.daemon.is_none(), "a daemon is already running");
        let child = spawn_daemon_with(
            &self.binary,
            &self.topology.router,
            &self.work,
            wrapper,
            extra,
        );
        self.daemon = Some(Daemon { child });
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let status = self.cli(&["status", "--json"]);
            if status.code == 0 {
                return;
            }
            if let Some(code) = self.daemon.as_mut().unwrap().wait(Duration::ZERO) {
                panic!("the daemon exited with {code}:\n{}", self.daemon_log());
            }
            assert!(
                Instant::now() < deadline,
                "the daemon did not answer within 20 s:\n{}",
                self.daemon_log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Runs `splitter daemon` to completion (for configs that must be refused).
    pub fn run_daemon_to_exit(&self) -> CliOutput {
        let mut child = self.spawn_daemon();
        let deadline = Instant::now() + Duration::from_secs(20);
        let code = loop {
            if let Ok(Some(status)) = child.try_wait() {
                break status.code().unwrap_or(-1);
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("the daemon did not exit:\n{}", self.daemon_log());
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        CliOutput {
            code,
            stdout: String::new(),
            stderr: self.daemon_log(),
        }
    }

    fn spawn_daemon(&self) -> Child {
        spawn_daemon(&self.binary, &self.topology.router, &self.work)
    }

    pub fn daemon_log(&self) -> String {
        std::fs::read_to_string(self.work.log()).unwrap_or_default()
    }
}

/// Starts `binary daemon --config <work>/splitter.toml` in `netns`'s network namespace only
/// (its mount namespace stays ours, so the bpffs under /run is shared), logging to
/// `<work>/daemon.log`. The child dies with the thread that started it.
pub fn spawn_daemon(binary: &Path, netns: &Netns, work: &WorkDir) -> Child {
    spawn_daemon_with(binary, netns, work, &[], &[])
}

/// [`spawn_daemon`] through a `wrapper` command (empty: none), with `extra` arguments.
pub fn spawn_daemon_with(
    binary: &Path,
    netns: &Netns,
    work: &WorkDir,
    wrapper: &[&str],
    extra: &[&str],
) -> Child {
    {
        let netns =
            File::open(format!("/run/netns/{}", netns.name)).expect("open the daemon's netns");
        let log = File::create(work.log()).expect("daemon log");
        let mut command = match wrapper {
            [] => Command::new(binary),
            [program, args @ ..] => {
                let mut command = Command::new(program);
                command.args(args).arg(binary);
                command
            }
        };
        command
            .args(["daemon", "--config"])
            .arg(work.config())
            .args(extra)
            .env("SPLITTER_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        let fd = netns.as_raw_fd();
        // SAFETY: setns is async-signal-safe; the fd stays open until after spawn.
        unsafe {
            command.pre_exec(move || {
                // Dies with the test thread that started it, even if the test is killed.
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                // Its own process group: a Ctrl-C in the terminal reaches the test (or the
                // demo), which stops the daemon in order, not the daemon behind its back.
                libc::setpgid(0, 0);
                if libc::setns(fd, libc::CLONE_NEWNET) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = command.spawn().expect("spawn the splitter daemon");
        drop(netns);
        child
    }
}

impl Lab {
    /// SIGKILLs the daemon (the data plane stays).
    pub fn kill_daemon(&mut self) {
        self.daemon.take().expect("a running daemon").kill();
    }

    /// SIGTERM and wait: the daemon must exit 0.
    pub fn stop_daemon(&mut self) {
        let mut daemon = self.daemon.take().expect("a running daemon");
        daemon.signal(libc::SIGTERM);
        let code = daemon.wait(Duration::from_secs(10));
        assert_eq!(code, Some(0), "SIGTERM exit:\n{}", self.daemon_log());
    }

    /// Runs the CLI with the lab's socket.
    pub fn cli(&self, args: &[&str]) -> CliOutput {
        self.cli_with(&mut Command::new(&self.binary), args)
    }

    /// Runs the CLI (`command`, with the lab's socket and `args`) under [`CLI_TIMEOUT`]: a
    /// command that does not return in time is killed and the test fails with the daemon's log.
    pub fn cli_with(&self, command: &mut Command, args: &[&str]) -> CliOutput {
        self.cli_within(command, args, CLI_TIMEOUT)
    }

    /// [`Lab::cli_with`] with another time limit (e.g. `rollout start --wait`).
    pub fn cli_within(&self, command: &mut Command, args: &[&str], limit: Duration) -> CliOutput {
        let mut child = command
            .arg("--socket")
            .arg(self.work.socket())
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run the splitter CLI");
        let read = |pipe: Option<Box<dyn std::io::Read + Send>>| {
            std::thread::spawn(move || {
                let mut text = String::new();
                if let Some(mut pipe) = pipe {
                    let _ = pipe.read_to_string(&mut text);
                }
                text
            })
        };
        let stdout = read(child.stdout.take().map(|p| Box::new(p) as _));
        let stderr = read(child.stderr.take().map(|p| Box::new(p) as _));
        let deadline = Instant::now() + limit;
        let status = loop {
            if let Some(status) = child.try_wait().expect("wait for the splitter CLI") {
                break status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "`splitter {}` did not return within {limit:?}; daemon log:\n{}",
                    args.join(" "),
                    self.daemon_log()
                );
            }
            std::thread::sleep(Duration::from_millis(5));
        };
        CliOutput {
            code: status.code().unwrap_or(-1),
            stdout: stdout.join().unwrap_or_default(),
            stderr: stderr.join().unwrap_or_default(),
        }
    }

    /// `splitter <args>` must succeed.
    pub fn cli_ok(&self, args: &[&str]) -> String {
        let out = self.cli(args);
        assert_eq!(
            out.code,
            0,
            "splitter {args:?}: {out:?}\ndaemon log:\n{}",
            self.daemon_log()
        );
        out.stdout
    }

    /// `splitter <args>` must exit with `code`; its output.
    pub fn cli_code(&self, args: &[&str], code: i32) -> CliOutput {
        let out = self.cli(args);
        assert_eq!(
            out.code,
            code,
            "splitter {args:?}: {out:?}\ndaemon log:\n{}",
            self.daemon_log()
        );
        out
    }

    /// The addresses of the lab's hosts, for [`ResetTrace::explain`].
    pub fn roles(&self) -> Roles {
        let ip = |a: &str| a.parse().expect("lab address");
        let mut roles = vec![(ip(CLIENT), Role::Client), (ip(CLIENT6), Role::Client)];
        for router in [
            "198.18.0.254",
            "198.18.1.1",
            "198.18.2.1",
            "fd00::fe",
            "fd00:1::1",
            "fd00:2::1",
        ] {
            roles.push((ip(router), Role::SplitterHost));
        }
        for backend in BLUE.iter().chain(&GREEN).chain(&BLUE6).chain(&GREEN6) {
            roles.push((ip(backend), Role::Backend));
        }
        roles
    }

    /// Who sent the RSTs recorded so far (see [`crate::resets`]), for a failure message.
    pub fn explain_resets(&self) -> String {
        self.resets.explain(&self.roles(), None)
    }

    /// Who reset the connection from `client` (see [`crate::resets`]).
    pub fn explain_reset_of(&self, client: SocketAddr) -> String {
        self.resets.explain(&self.roles(), Some(client))
    }

    /// The daemon's status snapshot (`splitter status --json`).
    pub fn status(&self) -> splitter::control::protocol::StatusReport {
        serde_json::from_str(&self.cli_ok(&["status", "--json"])).expect("status JSON")
    }

    /// GET /metrics from inside the router namespace.
    pub fn metrics(&self) -> String {
        self.topology.router.run(|| {
            let mut stream = TcpStream::connect("127.0.0.1:9435").expect("connect metrics");
            stream
                .write_all(b"GET /metrics HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n")
                .unwrap();
            let mut response = String::new();
            stream.read_to_string(&mut response).unwrap();
            let (head, body) = response.split_once("\r\n\r\n").expect("HTTP response");
            assert!(head.starts_with("HTTP/1.1 200"), "{head}");
            body.to_owned()
        })
    }

    /// `count` requests to `vip`, one new TCP connection each; the backends that answered.
    pub fn requests(&self, vip: &str, count: usize) -> Vec<Result<String, String>> {
        let vip: SocketAddr = vip.parse().unwrap();
        self.topology
            .client
            .run(move || (0..count).map(|_| request(vip)).collect())
    }

    /// `count` new connections to `vip`: answers per color. A failed request panics with the
    /// daemon's view (verdicts, per-backend counters) to tell where the packet went.
    pub fn split(&self, vip: &str, count: usize) -> (usize, usize) {
        let answers = self.requests(vip, count);
        if let Some((index, Err(error))) = answers
            .iter()
            .enumerate()
            .find(|(_, answer)| answer.is_err())
        {
            let status = self.cli(&["status", "--json"]);
            panic!(
                "request {index} of {count} to {vip} failed: {error}\nresets: {}\n\
                 answers: {answers:?}\nstatus: {}\ndaemon log:\n{}",
                self.explain_resets(),
                status.stdout,
                self.daemon_log()
            );
        }
        colors(&answers)
    }

    /// Opens a TCP connection to `vip` from the client namespace.
    pub fn connect(&self, vip: &str) -> Conversation {
        let vip: SocketAddr = vip.parse().unwrap();
        let stream = self
            .topology
            .client
            .run(move || TcpStream::connect_timeout(&vip, Duration::from_secs(2)))
            .expect("connect to the service");
        Conversation::new(stream)
    }
}

/// One request on a new connection: the answering backend.
pub fn request(vip: SocketAddr) -> Result<String, String> {
    let stream =
        TcpStream::connect_timeout(&vip, Duration::from_secs(2)).map_err(|e| e.to_string())?;
    Conversation::new(stream).ask()
}

/// A long-lived TCP connection to a service.
pub struct Conversation {
    reader: BufReader<TcpStream>,
}

impl Conversation {
    pub fn new(stream: TcpStream) -> Self {
        stream
            .set_read_timeout(Some(Duration::from_secs(2)))
            .unwrap();
        stream.set_nodelay(true).unwrap();
        Self {
            reader: BufReader::new(stream),
        }
    }

    /// The client end of the connection.
    pub fn local_addr(&self) -> SocketAddr {
        self.reader.get_ref().local_addr().expect("local address")
    }

    /// Sends a line; the backend's answer.
    pub fn ask(&mut self) -> Result<String, String> {
        self.reader
            .get_mut()
            .write_all(b"hello\n")
            .map_err(|e| e.to_string())?;
        let mut line = String::new();
        match self.reader.read_line(&mut line) {
            Ok(0) => Err("connection closed".into()),
            Ok(_) => Ok(line.trim().to_owned()),
            Err(error) => Err(error.to_string()),
        }
    }
}

/// Which color a backend answer (`address:port`) belongs to.
pub fn color_of(backend: &str) -> &'static str {
    let host = backend
        .parse::<SocketAddr>()
        .map(|address| address.ip().to_string())
        .unwrap_or_default();
    let host = host.as_str();
    if BLUE.contains(&host) || BLUE6.contains(&host) {
        "blue"
    } else if GREEN.contains(&host) || GREEN6.contains(&host) {
        "green"
    } else {
        panic!("answer from an unknown backend `{backend}`")
    }
}

/// Counts answers per color; panics on any failed request.
pub fn colors(answers: &[Result<String, String>]) -> (usize, usize) {
    let mut blue = 0;
    let mut green = 0;
    for answer in answers {
        match answer {
            Ok(backend) if color_of(backend) == "blue" => blue += 1,
            Ok(_) => green += 1,
            Err(error) => panic!("request failed: {error}"),
        }
    }
    (blue, green)
}

/// The value of one exposition line `name{labels} value`, matched exactly on `name{labels}`.
pub fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|line| {
        let (name, value) = line.rsplit_once(' ')?;
        (name == series).then(|| value.parse().expect("metric value"))
    })
}
