//! The bare XDP forwarder, the second ceiling: `compare_forwarder` (FIB lookup, TTL, MACs,
//! redirect; no NAT, no split) in native XDP on the router's client-facing veth. What the
//! splitter's XDP fast path can at best approach.

use aya::Ebpf;
use splitter_bench_common::compare::FORWARDER_PROGRAM;

use crate::compare::topology::{Topology, attach_native, load_helper_object};

/// Dropping it detaches the forwarder.
pub struct ForwarderGuard {
    _ebpf: Ebpf,
}

pub fn install(topology: &Topology) -> anyhow::Result<ForwarderGuard> {
    let mut ebpf = load_helper_object()?;
    attach_native(
        &mut ebpf,
        FORWARDER_PROGRAM,
        &topology.router,
        &topology.ifaces.router_client,
    )?;
    Ok(ForwarderGuard { _ebpf: ebpf })
}
