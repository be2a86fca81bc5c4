//! The two flow tables. `FLOWS` pins a *verified* client flow to its backend: a TCP flow whose
//! handshake the splitter saw complete, or a mid-flow flow its backend answered. `PENDING` holds
//! what is not verified yet: handshakes in progress, mid-flow misses, and UDP flows. Only a
//! promotion from `PENDING` inserts into `FLOWS`, so spoofed traffic churns `PENDING` alone and
//! never displaces an established flow. Both use the same key and value.

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

/// The backend a flow is pinned to and where its connection stands. The address is stored, not
/// just the id, so a pinned flow keeps its backend even when the pool is reconfigured.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct FlowValue {
    pub backend_addr: Addr,
    pub backend_port: u16,
    /// [`crate::Color`] as u8.
    pub color: u8,
    /// [`FlowState`] as u8.
    pub state: u8,
    pub backend_id: u32,
    /// `SynAcked`: the backend's initial sequence number (host order); the client's ACK that
    /// completes the handshake acknowledges `synack_seq + 1`.
    pub synack_seq: u32,
    /// [`flow_flags`] bits.
    pub flags: u8,
    pub _pad: [u8; 3],
    /// `bpf_ktime_get_ns`, meaning by state: `Pending` the first SYN; `SynAcked` the SYN →
    /// SYN-ACK latency (ns); `Udp` the last packet; otherwise when the flow was pinned.
    pub stamp_ns: u64,
}

/// Bits of [`FlowValue::flags`].
pub mod flow_flags {
    /// The client sent a FIN.
    pub const CLIENT_FIN: u8 = 1;
    /// The backend sent a FIN.
    pub const BACKEND_FIN: u8 = 2;
    /// `Closed` by a RST (not by FINs): a later non-RST packet of the flow, which a forged RST
    /// cannot stop, brings it back to `Established`.
    pub const RESET: u8 = 4;
    /// `Pending`: the handshake timeout was counted already (once per flow).
    pub const TIMEOUT_COUNTED: u8 = 8;
}

/// Where a flow stands. `Pending`, `SynAcked`, `Unverified` and `Udp` live in `PENDING`;
/// `Established`, `Closing` and `Closed` in `FLOWS`.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FlowState {
    /// The client's SYN went to the backend; no SYN-ACK yet.
    Pending = 1,
    /// The backend answered with a SYN-ACK (its sequence number kept); the client's ACK of it
    /// completes the handshake and promotes the flow to `FLOWS`.
    SynAcked = 2,
    /// A TCP packet of a flow the splitter does not know (evicted, or begun on another host):
    /// steered by the weight history; promoted when the backend answers it with a non-RST.
    Unverified = 3,
    /// Handshake completed (or a mid-flow flow verified by its backend's answer).
    Established = 4,
    /// A FIN seen in one direction.
    Closing = 5,
    /// FINs seen both ways, or a RST. The pin stays until a new handshake on the same tuple
    /// completes (or the LRU drops it): not a live connection.
    Closed = 6,
    /// A UDP flow: active until idle for `udp_idle_timeout` (`stamp_ns` is its last packet).
    Udp = 7,
}

impl FlowState {
    pub const ALL: [FlowState; 7] = [
        FlowState::Pending,
        FlowState::SynAcked,
        FlowState::Unverified,
        FlowState::Established,
        FlowState::Closing,
        FlowState::Closed,
        FlowState::Udp,
    ];

    /// The state stored in [`FlowValue::state`], if it is one.
    pub const fn from_raw(raw: u8) -> Option<Self> {
        match raw {
            1 => Some(FlowState::Pending),
            2 => Some(FlowState::SynAcked),
            3 => Some(FlowState::Unverified),
            4 => Some(FlowState::Established),
            5 => Some(FlowState::Closing),
            6 => Some(FlowState::Closed),
            7 => Some(FlowState::Udp),
            _ => None,
        }
    }

    /// An open connection: counted by `splitter_backend_live_flows` (UDP flows are counted
    /// while not idle, which needs the time: see the daemon's census).
    pub const fn is_live(self) -> bool {
        matches!(self, FlowState::Established | FlowState::Closing)
    }
}
