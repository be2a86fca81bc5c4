//! The comparison harness contract (`cargo xtask bench --compare`): a live-frames traffic
//! generator, a counting sink for the backends and a bare XDP forwarder (the ceiling the splitter
//! is measured against). The daemon never attaches these programs.

/// Largest frame the generator writes.
pub const GEN_PACKET_MAX: usize = 64;

/// `GEN_PACKET[0]`: the frame the generator writes before every transmit (live-frames mode
/// recycles pages that the receiver may have rewritten, so the whole frame is rewritten).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct GenPacket {
    /// Bytes of `data` in use (the test-run input must be exactly this long).
    pub len: u32,
    /// The 16-bit field at `vary_offset` (the UDP source port) takes `flows` consecutive
    /// values, one per frame in turn, starting from the template's value.
    pub vary_offset: u32,
    pub flows: u32,
    pub _pad: u32,
    pub data: [u8; GEN_PACKET_MAX],
}

/// `GEN_PACKET`: array of one [`GenPacket`].
pub const GEN_PACKET: &str = "GEN_PACKET";
/// `GEN_SEQ[0]` (per CPU): frames generated, the counter behind `vary_offset`.
pub const GEN_SEQ: &str = "GEN_SEQ";
/// `SINK_COUNTERS` (per CPU): [`SinkCounter`] → packets seen by a backend's sink.
pub const SINK_COUNTERS: &str = "SINK_COUNTERS";

/// What the backend sink counts.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SinkCounter {
    /// UDP to [`SINK_UDP_PORT`]: counted and dropped (the packet-rate test).
    Udp = 0,
    /// TCP SYN (no ACK) to [`SINK_TCP_PORT`]: counted and passed to the HTTP server.
    TcpSyn = 1,
}

impl SinkCounter {
    pub const COUNT: u32 = 2;
}

/// The packet-rate test's service port (discard).
pub const SINK_UDP_PORT: u16 = 9;
/// The HTTP tests' service port.
pub const SINK_TCP_PORT: u16 = 80;

/// Program names (the function names in `splitter-ebpf/src/compare.rs`).
pub const GENERATOR_PROGRAM: &str = "compare_generator";
pub const SINK_PROGRAM: &str = "compare_sink";
pub const FORWARDER_PROGRAM: &str = "compare_forwarder";
