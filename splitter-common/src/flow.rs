//! Flow tables. `FLOWS` pins a client flow to its backend; `REVERSE_FLOWS` maps the backend's
//! replies back to the service address the client used.

use crate::Addr;

/// A flow as seen on the wire in one direction. Ports in network byte order.
/// Forward key: client → service. Reverse key: backend → client.
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

/// What a backend's reply is rewritten to: the service address and port the client used.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct ReverseValue {
    pub service_addr: Addr,
    pub service_port: u16,
    pub _pad: [u8; 2],
    pub backend_id: u32,
}
