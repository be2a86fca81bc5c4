//! IPVS in NAT mode with weighted round robin (90/10), for the UDP and the TCP service. The
//! service address is local to the router, as IPVS requires. Kernels built without IPVS (the
//! development VMs: CONFIG_IP_VS unset) report it as not measurable; nothing is faked.

use splitter_bench_common::compare::{SINK_TCP_PORT, SINK_UDP_PORT};

use crate::compare::{
    alternatives::{LocalVip, exec_status},
    topology::{BLUE_ADDR, GREEN_ADDR, GREEN_PERCENT, Topology, VIP},
};

/// Dropping it clears the IPVS tables and the local service address.
pub struct IpvsGuard {
    router: String,
    _vip: LocalVip,
}

/// Whether IPVS can run in the router's namespace.
pub fn probe(topology: &Topology) -> Result<(), String> {
    match exec_status(&topology.router, &["test", "-e", "/proc/net/ip_vs"]) {
        Ok(true) => {}
        _ => {
            return Err(
                "not measurable here: the kernel has no IPVS (/proc/net/ip_vs missing, \
                 CONFIG_IP_VS unset)"
                    .to_owned(),
            );
        }
    }
    match exec_status(&topology.router, &["ipvsadm", "-Ln"]) {
        Ok(true) => Ok(()),
        _ => Err("not measurable here: `ipvsadm -Ln` fails (ipvsadm missing?)".to_owned()),
    }
}

pub fn install(topology: &Topology) -> anyhow::Result<IpvsGuard> {
    let vip = LocalVip::add(topology);
    let guard = IpvsGuard {
        router: topology.router.name.clone(),
        _vip: vip,
    };
    for (flag, port) in [("-u", SINK_UDP_PORT), ("-t", SINK_TCP_PORT)] {
        let service = format!("{VIP}:{port}");
        topology
            .router
            .exec(&["ipvsadm", "-A", flag, &service, "-s", "wrr"]);
        for (backend, weight) in [
            (BLUE_ADDR, 100 - GREEN_PERCENT),
            (GREEN_ADDR, GREEN_PERCENT),
        ] {
            topology.router.exec(&[
                "ipvsadm",
                "-a",
                flag,
                &service,
                "-r",
                &format!("{backend}:{port}"),
                "-m",
                "-w",
                &weight.to_string(),
            ]);
        }
    }
    Ok(guard)
}

impl Drop for IpvsGuard {
    fn drop(&mut self) {
        let _ = std::process::Command::new("ip")
            .args(["netns", "exec", &self.router, "ipvsadm", "-C"])
            .output();
    }
}
