//! HAProxy in TCP mode on the router, weighted round robin 90/10 over the two nginx backends:
//! the user-space proxy a team would otherwise put in front of a canary. TCP tests only.

use std::time::Duration;

use splitter_bench_common::compare::SINK_TCP_PORT;

use crate::compare::{
    alternatives::LocalVip,
    http::wait_for_listener,
    process::{Process, ScratchDir},
    topology::{BLUE_ADDR, GREEN_ADDR, GREEN_PERCENT, Topology, VIP},
};

/// Dropping it stops HAProxy (by its PID) and removes the local service address.
pub struct HaproxyGuard {
    _process: Process,
    _vip: LocalVip,
    _dir: ScratchDir,
}

pub fn config() -> String {
    let port = SINK_TCP_PORT;
    format!(
        "global\n\
         \t# Within the default file limit (20000 here): the tests keep tens of connections open.\n\
         \tmaxconn 5000\n\
         defaults\n\
         \tmode tcp\n\
         \ttimeout connect 5s\n\
         \ttimeout client 30s\n\
         \ttimeout server 30s\n\
         frontend service\n\
         \tbind {VIP}:{port}\n\
         \tdefault_backend pool\n\
         backend pool\n\
         \tbalance roundrobin\n\
         \tserver blue {BLUE_ADDR}:{port} weight {}\n\
         \tserver green {GREEN_ADDR}:{port} weight {GREEN_PERCENT}\n",
        100 - GREEN_PERCENT
    )
}

pub fn install(topology: &Topology) -> anyhow::Result<HaproxyGuard> {
    let dir = ScratchDir::new(&format!("splcmp-haproxy-{}", std::process::id()))?;
    let path = dir.path.join("haproxy.cfg");
    std::fs::write(&path, config())?;
    let vip = LocalVip::add(topology);
    let log = dir.path.join("haproxy.log");
    let mut process = Process::spawn(
        "haproxy",
        topology
            .router
            .command("haproxy")
            .args(["-db", "-f"])
            .arg(&path),
        &log,
    )?;
    let started = process.ensure_running().and_then(|()| {
        wait_for_listener(&topology.router, VIP, SINK_TCP_PORT, Duration::from_secs(5))
    });
    if let Err(e) = started {
        let output = std::fs::read_to_string(&log).unwrap_or_default();
        anyhow::bail!("HAProxy did not start: {e}\n{output}");
    }
    Ok(HaproxyGuard {
        _process: process,
        _vip: vip,
        _dir: dir,
    })
}
