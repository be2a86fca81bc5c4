//! The demo's world: the daemon test lab's namespaces (client, router = the splitter host, a
//! blue and a green backend namespace, two instances each), a bpffs and work directory under
//! `/run/splitter-demo/<pid>`, the real daemon in the router namespace, and the HTTP backends,
//! which can be redeployed with another release. Everything goes on drop: backends, daemon (by
//! PID), pins, mount, directory, namespaces.

use std::{
    net::{IpAddr, SocketAddr},
    path::PathBuf,
    process::Command,
    time::Duration,
};

use anyhow::{Context as _, bail};
use splitter::{
    config::ColorName,
    control::{
        client::Client,
        protocol::{Reply, Request, RolloutReport, StatusReport},
    },
};

use super::http::{self, Release};
use crate::{
    daemon_harness::{BLUE, CliOutput, GREEN, Lab, TCP_PORT, WorkDir, service},
    servers::Servers,
};

/// Namespaces are `spldemo-<role>-<pid>`.
pub const TAG: &str = "demo";
pub const SERVICE: &str = "web";
/// The service address, routed by the client to the splitter host.
pub const VIP: &str = "198.18.100.10:80";
/// Where the demo's config, socket, state and bpffs live: `<root>/<pid>`.
pub const WORK_ROOT: &str = "/run/splitter-demo";
/// No backend outlives this, even when nobody stops it (`--keep` included).
pub const MAX_LIFETIME: Duration = Duration::from_secs(30 * 60);

pub fn work_dir(pid: u32) -> PathBuf {
    PathBuf::from(format!("{WORK_ROOT}/{pid}"))
}

/// A color's backends, all running one release.
pub struct Pool {
    pub release: Release,
    _servers: Servers,
}

/// The lab; fields drop in order: backends, then the daemon, pins, mount and namespaces.
pub struct DemoLab {
    pub blue: Option<Pool>,
    pub green: Option<Pool>,
    pub lab: Lab,
}

impl DemoLab {
    /// Namespaces, work directory and the config: service `web` with every new flow on blue.
    /// No backend runs yet.
    pub fn build() -> Self {
        let work = WorkDir::at(work_dir(std::process::id()));
        let lab = Lab::bare(TAG, work);
        lab.write_config(&service(SERVICE, VIP, "tcp", "0", &BLUE, &GREEN, TCP_PORT));
        Self {
            blue: None,
            green: None,
            lab,
        }
    }

    pub fn start_daemon(&mut self) {
        self.lab.start_daemon();
    }

    pub fn daemon_pid(&self) -> Option<u32> {
        self.lab.daemon.as_ref().map(|daemon| daemon.pid())
    }

    /// Starts `release` on both instances of `color` (`blue-0`, `blue-1`), replacing what ran
    /// there: the old servers stop first (their connections close).
    pub fn deploy(&mut self, color: ColorName, release: Release) {
        let (ns, addresses, slot) = match color {
            ColorName::Blue => (&self.lab.topology.blue, BLUE, &mut self.blue),
            ColorName::Green => (&self.lab.topology.green, GREEN, &mut self.green),
        };
        *slot = None;
        let mut servers = Servers::with_lifetime(MAX_LIFETIME);
        for (index, address) in addresses.iter().enumerate() {
            let ip: IpAddr = address.parse().expect("backend IP");
            let instance = format!("{}-{index}", color.name());
            servers.tcp_with(
                ns,
                SocketAddr::new(ip, TCP_PORT),
                move |stream, lifetime| http::serve(stream, release, &instance, lifetime),
            );
        }
        *slot = Some(Pool {
            release,
            _servers: servers,
        });
    }

    pub fn vip(&self) -> SocketAddr {
        VIP.parse().expect("VIP")
    }

    /// `splitter --socket <lab socket> <args>` (the real CLI).
    pub fn cli(&self, args: &[&str]) -> anyhow::Result<CliOutput> {
        let out = self.lab.cli(args);
        if out.code != 0 {
            super::interrupt::check()?;
            bail!(
                "`splitter {}` exited with {}: {}{}",
                args.join(" "),
                out.code,
                out.stdout,
                out.stderr
            );
        }
        Ok(out)
    }

    fn request(&self, request: &Request) -> anyhow::Result<Reply> {
        let socket = self.lab.work.socket();
        let reply = Client::connect(&socket)
            .and_then(|mut client| client.request(request))
            .with_context(|| format!("asking the daemon on {}", socket.display()));
        if reply.is_err() {
            super::interrupt::check()?;
        }
        reply
    }

    /// The daemon's snapshot (what `splitter status` renders).
    pub fn status(&self) -> anyhow::Result<StatusReport> {
        match self.request(&Request::Status)? {
            Reply::Status(report) => Ok(*report),
            other => bail!("status answered {other:?}"),
        }
    }

    /// The rollout of `web` (what `splitter rollout status web` renders).
    pub fn rollout(&self) -> anyhow::Result<RolloutReport> {
        match self.request(&Request::RolloutStatus {
            service: SERVICE.into(),
        })? {
            Reply::Rollout(report) => Ok(*report),
            other => bail!("rollout status answered {other:?}"),
        }
    }

    /// Flows pinned to each color since the start, from the kernel's counters: (blue, green).
    pub fn kernel_new_flows(&self) -> anyhow::Result<(u64, u64)> {
        let status = self.status()?;
        let service = status
            .services
            .iter()
            .find(|s| s.name == SERVICE)
            .context("the daemon has no service `web`")?;
        let mut flows = (0, 0);
        for color in &service.colors {
            let sum: u64 = color.backends.iter().map(|b| b.new_flows).sum();
            match color.color {
                ColorName::Blue => flows.0 += sum,
                ColorName::Green => flows.1 += sum,
            }
        }
        Ok(flows)
    }

    /// How to poke at the running lab by hand (`--keep`).
    pub fn poke_instructions(&self) -> String {
        let splitter = format!(
            "{} --socket {}",
            self.lab.binary.display(),
            self.lab.work.socket().display()
        );
        let router = &self.lab.topology.router.name;
        let client = &self.lab.topology.client.name;
        let vip: SocketAddr = self.vip();
        [
            format!("ip netns exec {router} {splitter} status"),
            format!("ip netns exec {router} {splitter} rollout status {SERVICE}"),
            format!("ip netns exec {router} {splitter} set-weight {SERVICE} 50"),
            format!("ip netns exec {client} curl -s http://{}/", vip.ip()),
            format!(
                "ip netns exec {client} sh -c 'for i in $(seq 20); do curl -s http://{}/; done | sort | uniq -c'",
                vip.ip()
            ),
            format!(
                "ip netns exec {router} curl -s http://127.0.0.1:9435/metrics | grep splitter_backend_new_flows"
            ),
        ]
        .join("\n")
    }
}

/// What a demo run with process id `pid` left behind: namespaces, links or mounts named after
/// it, its work directory (config, socket, bpffs with the pins), a live daemon.
pub fn leftovers(pid: u32, daemon_pid: Option<u32>) -> Vec<String> {
    let mut left = Vec::new();
    let suffix = format!("-{pid}");
    let prefix = format!("spl{TAG}");
    let ours = |name: &str| name.starts_with(&prefix) && name.ends_with(&suffix);
    let netns = Command::new("ip").args(["netns", "list"]).output();
    match netns {
        Ok(out) => {
            for line in String::from_utf8_lossy(&out.stdout).lines() {
                let name = line.split_whitespace().next().unwrap_or_default();
                if ours(name) {
                    left.push(format!("network namespace {name}"));
                }
            }
        }
        Err(e) => left.push(format!("could not list namespaces: {e}")),
    }
    if let Ok(out) = Command::new("ip").args(["-o", "link", "show"]).output() {
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            let name = line.split(':').nth(1).unwrap_or_default().trim();
            if ours(name.split('@').next().unwrap_or_default()) {
                left.push(format!("link {name}"));
            }
        }
    }
    let dir = work_dir(pid);
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
    for line in mounts.lines() {
        if let Some(point) = line.split_whitespace().nth(1)
            && point.starts_with(&*dir.to_string_lossy())
        {
            left.push(format!("mount {point}"));
        }
    }
    if dir.exists() {
        left.push(format!("directory {}", dir.display()));
    }
    if let Some(daemon) = daemon_pid {
        let cmdline = std::fs::read(format!("/proc/{daemon}/cmdline")).unwrap_or_default();
        let stat = std::fs::read_to_string(format!("/proc/{daemon}/stat")).unwrap_or_default();
        let zombie = stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z'));
        if String::from_utf8_lossy(&cmdline).contains("daemon") && !zombie {
            left.push(format!("daemon process {daemon}"));
        }
    }
    left
}
