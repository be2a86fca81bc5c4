//! A real etcd (Debian's etcd-server 3.4) for fleet tests: in its own network namespace with
//! a bridge, so fixed ports are free and any number of splitter hosts (each in its own
//! namespace) reach it over a veth on `198.18.250.0/24`. Its data directory is a temp
//! directory; it is stopped (by its PID) and removed on drop.
//!
//! ```text
//!  host namespace  fleet0 198.18.250.(10+n) ──veth── [etcd ns: br0 198.18.250.1] etcd :2379
//! ```

use std::{
    fs::File,
    path::PathBuf,
    process::{Child, Command, Output, Stdio},
    time::{Duration, Instant},
};

use crate::netns::{Netns, unique, veth};

/// The etcd's address on the fleet segment.
pub const ETCD_ADDRESS: &str = "198.18.250.1";
/// How long etcd may take to answer after a start.
const START_TIMEOUT: Duration = Duration::from_secs(20);

pub struct Etcd {
    pub ns: Netns,
    /// `http://198.18.250.1:2379`.
    pub endpoint: String,
    dir: PathBuf,
    child: Option<Child>,
    hosts: u8,
}

impl Etcd {
    /// A namespace with the fleet bridge and a running etcd. `tag` must be short.
    pub fn start(tag: &str) -> Self {
        let ns = Netns::new(&unique(&format!("{tag}-e")));
        ns.bridge("br0");
        ns.addr("br0", &format!("{ETCD_ADDRESS}/24"));
        let dir = PathBuf::from(format!(
            "/run/splitter-test/etcd-{tag}-{}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("etcd directory");
        let mut etcd = Self {
            ns,
            endpoint: format!("http://{ETCD_ADDRESS}:2379"),
            dir,
            child: None,
            hosts: 0,
        };
        etcd.resume();
        etcd
    }

    /// Connects `host` (a splitter host's namespace) to the fleet segment; returns its address.
    pub fn connect(&mut self, host: &Netns) -> String {
        let n = self.hosts;
        self.hosts += 1;
        let peer = format!("fl{n}");
        veth(host, "fleet0", &self.ns, &peer);
        self.ns.ip(&["link", "set", &peer, "master", "br0"]);
        let address = format!("198.18.250.{}", 10 + u16::from(n));
        host.addr("fleet0", &format!("{address}/24"));
        address
    }

    /// Starts etcd again on the same data directory (after [`Etcd::stop`]) and waits until it
    /// answers.
    pub fn resume(&mut self) {
        assert!(self.child.is_none(), "etcd is already running");
        let log = File::options()
            .create(true)
            .append(true)
            .open(self.dir.join("etcd.log"))
            .expect("etcd log");
        let peer = "http://127.0.0.1:2380";
        let child = Command::new("ip")
            .args(["netns", "exec", &self.ns.name, "etcd"])
            .args(["--name", "fleet", "--data-dir"])
            .arg(self.dir.join("data"))
            .args(["--listen-client-urls", &self.endpoint])
            .args(["--advertise-client-urls", &self.endpoint])
            .args(["--listen-peer-urls", peer])
            .args(["--initial-advertise-peer-urls", peer])
            .args(["--initial-cluster", &format!("fleet={peer}")])
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("etcd (Debian etcd-server; `cargo xtask setup --test-deps` installs it)");
        self.child = Some(child);
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            let health = self.ctl_output(&["endpoint", "health"]);
            if health.status.success() {
                return;
            }
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!("etcd exited with {status}:\n{}", self.log());
            }
            assert!(
                Instant::now() < deadline,
                "etcd did not answer within {START_TIMEOUT:?}:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Stops etcd (SIGKILL by its PID: as a crash or a partition looks to the hosts).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // `ip netns exec` execs etcd: the child's PID is etcd's.
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// `etcdctl ARGS` against this etcd; panics on failure.
    pub fn ctl(&self, args: &[&str]) -> String {
        let out = self.ctl_output(args);
        assert!(
            out.status.success(),
            "etcdctl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn ctl_output(&self, args: &[&str]) -> Output {
        Command::new("ip")
            .args(["netns", "exec", &self.ns.name, "etcdctl"])
            .args(["--endpoints", &self.endpoint, "--dial-timeout", "1s"])
            .args(args)
            .env("ETCDCTL_API", "3")
            .output()
            .expect("etcdctl (Debian etcd-client)")
    }

    /// etcd's own log.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("etcd.log")).unwrap_or_default()
    }

    /// The `[fleet]` section for a host named `host` of fleet `name`.
    pub fn fleet_section(&self, name: &str, host: &str) -> String {
        format!(
            "\n[fleet]\netcd = [\"{}\"]\nname = \"{name}\"\nhost = \"{host}\"\nwait = \"10s\"\n",
            self.endpoint
        )
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
