//! What the splitter is compared with, each installed on the router in turn and removed
//! (guards with Drop) before the next: the same topology, traffic and 10 % green split.

pub mod haproxy;
pub mod ipvs;
pub mod nft;
pub mod routing;
pub mod splitter;
pub mod xdp_forwarder;

use std::{
    io::Write as _,
    net::Ipv4Addr,
    process::{Command, Stdio},
};

use ::splitter::dataplane::XdpMode;
use anyhow::Context as _;

use super::topology::{BLUE_ADDR, GREEN_ADDR, GREEN_PERCENT, Topology, VIP};
use crate::netns::Netns;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Alternative {
    SplitterNative,
    SplitterGeneric,
    Nftables,
    Ipvs,
    Haproxy,
    Routing,
    XdpForwarder,
}

/// An installed alternative; dropping it removes it from the router.
pub enum Installed {
    Splitter(Box<splitter::SplitterGuard>),
    Nftables(nft::NftGuard),
    Ipvs(ipvs::IpvsGuard),
    Haproxy(haproxy::HaproxyGuard),
    Routing,
    XdpForwarder(xdp_forwarder::ForwarderGuard),
}

impl Installed {
    /// What the installed alternative says about how it forwarded (the splitter: packets per
    /// path), for the log.
    pub fn describe(&self) -> Option<String> {
        match self {
            Installed::Splitter(guard) => Some(guard.forwarding()),
            _ => None,
        }
    }
}

impl Alternative {
    pub const ALL: [Alternative; 7] = [
        Alternative::SplitterNative,
        Alternative::SplitterGeneric,
        Alternative::Nftables,
        Alternative::Ipvs,
        Alternative::Haproxy,
        Alternative::Routing,
        Alternative::XdpForwarder,
    ];

    pub const fn label(self) -> &'static str {
        match self {
            Alternative::SplitterNative => "splitter (XDP native)",
            Alternative::SplitterGeneric => "splitter (XDP generic)",
            Alternative::Nftables => "nftables DNAT (jhash map)",
            Alternative::Ipvs => "IPVS (NAT, wrr)",
            Alternative::Haproxy => "HAProxy (TCP mode, weighted)",
            Alternative::Routing => "plain routing (ceiling, no split)",
            Alternative::XdpForwarder => "bare XDP forwarder (ceiling, no split)",
        }
    }

    /// A ceiling: forwards without splitting, so clients address blue directly.
    pub const fn is_ceiling(self) -> bool {
        matches!(self, Alternative::Routing | Alternative::XdpForwarder)
    }

    /// Where clients send: the service address, or blue itself for the ceilings.
    pub const fn destination(self) -> Ipv4Addr {
        if self.is_ceiling() { BLUE_ADDR } else { VIP }
    }

    /// For the ceilings' packet-rate test: the client itself sends every n-th flow to green, so
    /// that they forward the same 90/10 mix to the same two backends as the splitters (a
    /// backend's veth costs its sender a wake-up when it idles, which one at 10 % often does).
    pub const fn client_split(self) -> Option<(Ipv4Addr, u32)> {
        if self.is_ceiling() {
            Some((GREEN_ADDR, 100 / GREEN_PERCENT))
        } else {
            None
        }
    }

    /// Whether the packet-rate test (UDP) applies: HAProxy runs in TCP mode.
    pub const fn carries_udp(self) -> bool {
        !matches!(self, Alternative::Haproxy)
    }

    /// `Err(reason)` when this machine cannot run the alternative at all.
    pub fn availability(self, topology: &Topology) -> Result<(), String> {
        match self {
            Alternative::Ipvs => ipvs::probe(topology),
            _ => Ok(()),
        }
    }

    pub fn install(self, topology: &Topology) -> anyhow::Result<Installed> {
        Ok(match self {
            Alternative::SplitterNative => Installed::Splitter(Box::new(
                splitter::install_splitter(topology, XdpMode::Native)?,
            )),
            Alternative::SplitterGeneric => Installed::Splitter(Box::new(
                splitter::install_splitter(topology, XdpMode::Generic)?,
            )),
            Alternative::Nftables => Installed::Nftables(nft::install(topology)?),
            Alternative::Ipvs => Installed::Ipvs(ipvs::install(topology)?),
            Alternative::Haproxy => Installed::Haproxy(haproxy::install(topology)?),
            Alternative::Routing => {
                routing::install(topology);
                Installed::Routing
            }
            Alternative::XdpForwarder => Installed::XdpForwarder(xdp_forwarder::install(topology)?),
        })
    }
}

/// Runs `args` inside `ns` with `input` on its standard input; fails with its output.
pub fn exec_with_input(ns: &Netns, args: &[&str], input: &str) -> anyhow::Result<()> {
    let mut child = Command::new("ip")
        .args(["netns", "exec", &ns.name])
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {args:?}"))?;
    child
        .stdin
        .take()
        .expect("piped stdin")
        .write_all(input.as_bytes())?;
    let out = child.wait_with_output()?;
    anyhow::ensure!(
        out.status.success(),
        "{args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

/// Runs `args` inside `ns`; `Ok(false)` when it ran and failed, `Err` when it could not run.
pub fn exec_status(ns: &Netns, args: &[&str]) -> anyhow::Result<bool> {
    let status = Command::new("ip")
        .args(["netns", "exec", &ns.name])
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .with_context(|| format!("running {args:?}"))?;
    Ok(status.success())
}

/// Adds the service address to the router's loopback (the proxies and IPVS serve it locally)
/// and removes it again on drop.
pub struct LocalVip {
    router: String,
}

impl LocalVip {
    pub fn add(topology: &Topology) -> Self {
        topology
            .router
            .ip(&["addr", "add", &format!("{VIP}/32"), "dev", "lo"]);
        Self {
            router: topology.router.name.clone(),
        }
    }
}

impl Drop for LocalVip {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args([
                "-n",
                &self.router,
                "addr",
                "del",
                &format!("{VIP}/32"),
                "dev",
                "lo",
            ])
            .output();
    }
}
