//! The splitter itself, installed on the router's client-facing veth with the comparison's two
//! services (UDP for the packet rate, TCP for HTTP), 10 % green.

use std::{net::SocketAddr, time::Duration};

use splitter::dataplane::{
    Dataplane, DataplaneError, LoadOptions, XdpMode,
    services::{BackendSpec, Protocol, ServiceSpec},
};
use splitter_common::{
    Cohort, WEIGHT_SCALE,
    compare::{SINK_TCP_PORT, SINK_UDP_PORT},
};

use crate::compare::topology::{BLUE_ADDR, GREEN_ADDR, GREEN_PERCENT, Topology, VIP};

/// The running splitter; dropping it detaches its programs.
pub struct SplitterGuard {
    dataplane: Dataplane,
}

/// The services every splitting alternative carries, as the splitter's config states them.
pub fn services() -> Vec<ServiceSpec> {
    [
        (Protocol::Udp, SINK_UDP_PORT),
        (Protocol::Tcp, SINK_TCP_PORT),
    ]
    .into_iter()
    .enumerate()
    .map(|(i, (protocol, port))| {
        let i = i as u32;
        ServiceSpec {
            id: i,
            address: SocketAddr::new(VIP.into(), port),
            protocol,
            cohort: Cohort::Flow,
            green_weight: GREEN_PERCENT * (WEIGHT_SCALE / 100),
            blue: vec![BackendSpec {
                id: 2 * i,
                address: SocketAddr::new(BLUE_ADDR.into(), port),
            }],
            green: vec![BackendSpec {
                id: 2 * i + 1,
                address: SocketAddr::new(GREEN_ADDR.into(), port),
            }],
            first_slot: 2 * i,
            miss_hold: Duration::from_secs(120),
        }
    })
    .collect()
}

/// Installs the splitter on the router: attached to the client-facing veth, the fast path
/// (FIB lookup + XDP_REDIRECT) allowed toward both backends' veths (their peers run the sinks'
/// XDP programs, so native redirect into them works). The one place that knows how: for now
/// through the library; it switches to the real daemon (`splitter daemon --config FILE` in the
/// router's namespace).
pub fn install_splitter(topology: &Topology, mode: XdpMode) -> anyhow::Result<SplitterGuard> {
    let mut dataplane = Dataplane::load(&LoadOptions::default())?;
    for spec in services() {
        dataplane.maps.install_service(&spec)?;
    }
    let ifaces = topology.ifaces.clone();
    let dataplane = topology.router.run(move || {
        dataplane.attach(&ifaces.router_client, mode)?;
        dataplane.allow_redirect(&ifaces.router_blue)?;
        dataplane.allow_redirect(&ifaces.router_green)?;
        Ok::<_, DataplaneError>(dataplane)
    })?;
    Ok(SplitterGuard { dataplane })
}

impl SplitterGuard {
    /// Packets rewritten so far per forwarding path (XDP_REDIRECT or the kernel's routing).
    pub fn forwarding(&self) -> String {
        match self.dataplane.maps.forwarding() {
            Ok(paths) => paths
                .iter()
                .map(|(path, packets)| format!("{} {packets}", path.label()))
                .collect::<Vec<_>>()
                .join(", "),
            Err(e) => format!("forwarding counters unreadable: {e}"),
        }
    }
}
