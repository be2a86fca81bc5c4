//! Network namespaces owned by a test: created with a unique prefix, removed on drop (success
//! or panic), tolerant of leftovers from a crashed earlier run. Also the pieces every topology
//! (`topology.rs`, `daemon_harness.rs`, `compare/topology.rs`) is built from: sysctls, veth
//! pairs, addresses, routes, bridges.

use std::{
    fs::File,
    os::fd::AsRawFd,
    process::{Command, Output},
};

/// Runs a command and panics with its output if it fails.
pub fn sh(args: &[&str]) -> Output {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("running {args:?}: {e}"));
    assert!(
        out.status.success(),
        "{args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// A unique name for this test process: `spl-<tag>-<pid>` (fits IFNAMSIZ when kept short).
pub fn unique(tag: &str) -> String {
    format!("spl{}-{}", tag, std::process::id())
}

/// A network namespace, deleted (with everything in it) on drop.
pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn new(name: &str) -> Self {
        // A leftover of a crashed run with the same pid: remove it first.
        let _ = Command::new("ip").args(["netns", "del", name]).output();
        sh(&["ip", "netns", "add", name]);
        let ns = Self {
            name: name.to_owned(),
        };
        ns.ip(&["link", "set", "lo", "up"]);
        ns
    }

    /// `ip -n NAME ...`
    pub fn ip(&self, args: &[&str]) -> Output {
        let mut full = vec!["ip", "-n", &self.name];
        full.extend_from_slice(args);
        sh(&full)
    }

    /// `ip netns exec NAME ...`
    pub fn exec(&self, args: &[&str]) -> Output {
        let mut full = vec!["ip", "netns", "exec", &self.name];
        full.extend_from_slice(args);
        sh(&full)
    }

    /// A command that will run inside the namespace (not started).
    pub fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name, program]);
        cmd
    }

    pub fn sysctl(&self, key: &str, value: &str) {
        self.sysctls(&[(key, value)]);
    }

    /// Writes sysctls (`net.ipv4.ip_forward` style keys) from a thread inside the namespace:
    /// /proc/sys/net follows the writing thread's network namespace, and no process is started.
    pub fn sysctls(&self, settings: &[(&str, &str)]) {
        let settings: Vec<(String, String)> = settings
            .iter()
            .map(|(k, v)| (format!("/proc/sys/{}", k.replace('.', "/")), v.to_string()))
            .collect();
        let name = self.name.clone();
        self.run(move || {
            for (path, value) in settings {
                std::fs::write(&path, &value)
                    .unwrap_or_else(|e| panic!("{name}: writing {value} to {path}: {e}"));
            }
        });
    }

    /// IPv4 and IPv6 forwarding on or off.
    pub fn forwarding(&self, on: bool) {
        let on = if on { "1" } else { "0" };
        self.sysctls(&[
            ("net.ipv4.ip_forward", on),
            ("net.ipv6.conf.all.forwarding", on),
        ]);
    }

    /// Adds an address (`198.18.0.1/24`, `fd00::1/64`); IPv6 ones skip duplicate address
    /// detection, so they are usable at once.
    pub fn addr(&self, ifname: &str, cidr: &str) {
        if cidr.contains(':') {
            self.ip(&["addr", "add", cidr, "dev", ifname, "nodad"]);
        } else {
            self.ip(&["addr", "add", cidr, "dev", ifname]);
        }
    }

    /// Adds a route to `destination` (a prefix or `default`) via `gateway`, IPv4 or IPv6 by the
    /// gateway's family.
    pub fn route(&self, destination: &str, gateway: impl std::fmt::Display) {
        let gateway = gateway.to_string();
        let family = if gateway.contains(':') { "-6" } else { "-4" };
        self.ip(&[family, "route", "add", destination, "via", &gateway]);
    }

    /// A bridge without STP or multicast snooping (NDP multicast is simply flooded), up.
    pub fn bridge(&self, name: &str) {
        self.ip(&[
            "link",
            "add",
            name,
            "type",
            "bridge",
            "stp_state",
            "0",
            "forward_delay",
            "0",
            "mcast_snooping",
            "0",
        ]);
        self.ip(&["link", "set", name, "up"]);
    }

    /// Runs `f` on a thread that entered this namespace (network only; mounts untouched), so
    /// sockets it creates and interfaces it names live here.
    pub fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        let path = format!("/run/netns/{}", self.name);
        std::thread::spawn(move || {
            enter(&path);
            f()
        })
        .join()
        .unwrap_or_else(|e| std::panic::resume_unwind(e))
    }

    /// Spawns a long-running thread inside this namespace.
    pub fn spawn<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> std::thread::JoinHandle<T> {
        let path = format!("/run/netns/{}", self.name);
        std::thread::spawn(move || {
            enter(&path);
            f()
        })
    }
}

/// Moves the calling thread into the network namespace at `path`.
pub fn enter(path: &str) {
    let file = File::open(path).unwrap_or_else(|e| panic!("opening {path}: {e}"));
    let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
    assert_eq!(rc, 0, "setns({path}): {}", std::io::Error::last_os_error());
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

/// A veth pair between two namespaces, addressed and up. IPv6 DAD is off so addresses are
/// usable at once; checksum offload is off on both ends so packets carry full checksums as on
/// a real wire (XDP rewrites checksums incrementally).
pub fn veth(a: &Netns, a_if: &str, b: &Netns, b_if: &str) {
    sh(&[
        "ip", "link", "add", "name", a_if, "netns", &a.name, "type", "veth", "peer", "name", b_if,
        "netns", &b.name,
    ]);
    for (ns, ifname) in [(a, a_if), (b, b_if)] {
        ns.ip(&["link", "set", ifname, "up"]);
        let _ = ns
            .command("ethtool")
            .args(["-K", ifname, "tx", "off", "rx", "off"])
            .output();
    }
}
