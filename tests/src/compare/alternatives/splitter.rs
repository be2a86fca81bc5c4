//! The splitter itself, installed by the real daemon (`splitter daemon --config FILE` in the
//! router's namespace) from a generated config: attached to the router's client-facing veth,
//! the comparison's two services (UDP for the packet rate, TCP for HTTP) at 10 % green, and the
//! fast path (FIB lookup + XDP_REDIRECT) allowed toward both backends' veths (their peers run
//! the sinks' XDP programs, so native redirect into them works).

use std::{
    net::SocketAddr,
    process::{Child, Command},
    time::{Duration, Instant},
};

use anyhow::Context as _;
use splitter::dataplane::{XdpMode, maps::Maps};
use splitter_bench_common::compare::{SINK_TCP_PORT, SINK_UDP_PORT};

use crate::{
    compare::topology::{BLUE_ADDR, GREEN_ADDR, GREEN_PERCENT, Topology, VIP},
    daemon_harness::{WorkDir, spawn_daemon, splitter_binary},
};

/// The running daemon and its work directory (config, socket, state, bpffs). Dropping it
/// unloads the data plane (`splitter unload`), stops the daemon and removes everything.
pub struct SplitterGuard {
    binary: std::path::PathBuf,
    daemon: Child,
    work: WorkDir,
}

/// The config the daemon runs with.
fn config(topology: &Topology, work: &WorkDir, mode: XdpMode) -> String {
    let ifaces = &topology.ifaces;
    let mode = match mode {
        XdpMode::Auto => "auto",
        XdpMode::Native => "native",
        XdpMode::Generic => "generic",
    };
    let mut text = format!(
        "[dataplane]\ninterfaces = [\"{}\"]\nxdp_mode = \"{mode}\"\nredirect_interfaces = [\"{}\", \"{}\"]\n\n\
         [control]\nsocket = \"{}\"\nmetrics = \"127.0.0.1:9436\"\nstate_dir = \"{}\"\nbpffs = \"{}\"\n",
        ifaces.router_client,
        ifaces.router_blue,
        ifaces.router_green,
        work.socket().display(),
        work.state_dir().display(),
        work.bpffs().display(),
    );
    for (name, protocol, port) in [("udp", "udp", SINK_UDP_PORT), ("tcp", "tcp", SINK_TCP_PORT)] {
        text.push_str(&format!(
            "\n[[service]]\nname = \"{name}\"\naddress = \"{}\"\nprotocol = \"{protocol}\"\ngreen_weight = {GREEN_PERCENT}\nblue = [\"{}\"]\ngreen = [\"{}\"]\n",
            SocketAddr::new(VIP.into(), port),
            SocketAddr::new(BLUE_ADDR.into(), port),
            SocketAddr::new(GREEN_ADDR.into(), port),
        ));
    }
    text
}

/// Installs the splitter on the router through the real daemon and waits until it serves.
pub fn install_splitter(topology: &Topology, mode: XdpMode) -> anyhow::Result<SplitterGuard> {
    let binary = splitter_binary();
    let work = WorkDir::new("cmp");
    std::fs::write(work.config(), config(topology, &work, mode))?;
    let daemon = spawn_daemon(&binary, &topology.router, &work);
    let mut guard = SplitterGuard {
        binary,
        daemon,
        work,
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let status = Command::new(&guard.binary)
            .args(["status", "--json", "--socket"])
            .arg(guard.work.socket())
            .output()?;
        if status.status.success() {
            return Ok(guard);
        }
        if let Ok(Some(exit)) = guard.daemon.try_wait() {
            anyhow::bail!("the splitter daemon exited with {exit}:\n{}", guard.log());
        }
        if Instant::now() > deadline {
            anyhow::bail!(
                "the splitter daemon did not answer in 20 s:\n{}",
                guard.log()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

impl SplitterGuard {
    fn log(&self) -> String {
        std::fs::read_to_string(self.work.log()).unwrap_or_default()
    }

    /// Packets rewritten so far per forwarding path (XDP_REDIRECT or the kernel's routing),
    /// read from the daemon's pinned maps.
    pub fn forwarding(&self) -> String {
        let read = || -> anyhow::Result<String> {
            let maps = Maps::from_pins(&self.work.bpffs().join("dataplane/maps"))
                .context("open the pinned maps")?;
            Ok(maps
                .forwarding()?
                .iter()
                .map(|(path, packets)| format!("{} {packets}", path.label()))
                .collect::<Vec<_>>()
                .join(", "))
        };
        read().unwrap_or_else(|e| format!("forwarding counters unreadable: {e}"))
    }
}

impl Drop for SplitterGuard {
    fn drop(&mut self) {
        // Detach and remove the pins; the daemon exits on unload.
        let _ = Command::new(&self.binary)
            .args(["unload", "--socket"])
            .arg(self.work.socket())
            .output();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.daemon.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        // Ours, by PID.
        let _ = self.daemon.kill();
        let _ = self.daemon.wait();
    }
}
