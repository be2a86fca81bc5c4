//! The flow table: `FLOWS` pins a client flow to its backend.

use crate::Addr;

/// A client flow as seen on the wire: client → service. Ports in network byte order.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct FlowKey {
    pub src: Addr,
    pub dst: Addr,
    pub src_port: u16,
    pub dst_port: u16,
    pub protocol: u8,
    pub family: u8,
    pub _pad: [u8; 2],
}

/// The backend a flow is pinned to. The address is stored, not just the id, so a pinned flow
/// keeps its backend even when the pool is reconfigured.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct FlowValue {
    pub backend_addr: Addr,
    pub backend_port: u16,
    /// [`crate::Color`] as u8.
    pub color: u8,
    pub _pad: u8,
    pub backend_id: u32,
    /// When the flow was pinned (`bpf_ktime_get_ns`).
    pub created_ns: u64,
}
