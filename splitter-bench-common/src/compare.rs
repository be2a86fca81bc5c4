//! The comparison harness contract (`cargo xtask bench --compare`): a live-frames traffic
//! generator, a counting sink for the backends and a bare XDP forwarder (the ceiling the splitter
//! is measured against). The daemon never attaches these programs.

/// Largest frame the generator writes.
pub const GEN_PACKET_MAX: usize = 64;

/// `GEN_PACKET[0]`: what the generator sends and how fast. Live-frames mode recycles pages that
/// the receiver may have rewritten, so the whole frame is written before every transmit.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct GenPacket {
    /// Bytes of `data` in use (the test-run input must be exactly this long).
    pub len: u32,
    /// The 16-bit field at `vary_offset` (the UDP source port) takes `flows` consecutive
    /// values, one per frame in turn, starting from the template's value.
    pub vary_offset: u32,
    pub flows: u32,
    /// When non-zero, every `split_every`-th flow is sent to `split_dst` instead of the
    /// template's destination (the ceilings, which do not split, get the same 90/10 mix of
    /// backends as the splitters that do).
    pub split_every: u32,
    /// Pacing: at most one frame per `interval_ns` (runs that come early drop their frame
    /// instead of sending it); 0 sends every run's frame.
    pub interval_ns: u64,
    /// The other IPv4 destination, as it sits in the packet.
    pub split_dst: u32,
    /// The IPv4 header checksum with `split_dst`, as it sits in the packet.
    pub split_check: u16,
    pub _pad: u16,
    pub data: [u8; GEN_PACKET_MAX],
}

/// `GEN_STATE[0]` (per CPU): what the generator has done since userspace last zeroed it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct GenState {
    /// Frames transmitted.
    pub sent: u64,
    /// `bpf_ktime_get_ns` before which the next frame may not leave (pacing).
    pub next_due_ns: u64,
}

/// `GEN_PACKET`: array of one [`GenPacket`].
pub const GEN_PACKET: &str = "GEN_PACKET";
/// `GEN_STATE`: per-CPU array of one [`GenState`].
pub const GEN_STATE: &str = "GEN_STATE";
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

/// Program names (the function names in `splitter-bench-ebpf/src/compare.rs`).
pub const GENERATOR_PROGRAM: &str = "compare_generator";
pub const SINK_PROGRAM: &str = "compare_sink";
pub const FORWARDER_PROGRAM: &str = "compare_forwarder";
