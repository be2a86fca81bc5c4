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
    /// [`Handshake`] as u8 (TCP flows opened by a SYN; others stay `None`).
    pub handshake: u8,
    pub backend_id: u32,
    /// When the flow was pinned (`bpf_ktime_get_ns`): for a SYN, the start of the handshake.
    pub created_ns: u64,
}

/// Where a TCP flow's handshake with its backend stands (rollout signals).
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Handshake {
    /// Not tracked: UDP, or a flow pinned mid-stream (miss).
    None = 0,
    /// The client's SYN went to the backend; no SYN-ACK yet.
    Pending = 1,
    /// The backend answered with a SYN-ACK.
    Completed = 2,
    /// The backend refused (RST) or did not answer in time.
    Failed = 3,
}
