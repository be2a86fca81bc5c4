//! The benchmark harness contract (`cargo xtask bench`): a wrapper XDP program restores a saved
//! packet before tail-calling the program under test, so BPF_PROG_TEST_RUN with `repeat`
//! measures the same input every run (the kernel does not restore it between runs).

/// Largest packet the harness restores.
pub const BENCH_PACKET_MAX: usize = 128;

/// `BENCH_PACKET[0]`: the packet to restore before every run.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct BenchPacket {
    /// Bytes of `data` in use (the test-run input must be exactly this long).
    pub len: u32,
    /// When non-zero: the byte offset of a 32-bit field (the source address) that gets a
    /// different value every run (XOR a per-CPU run counter), so each run is a new flow.
    pub vary_offset: u32,
    pub data: [u8; BENCH_PACKET_MAX],
}

pub const BENCH_PACKET: &str = "BENCH_PACKET";
/// `BENCH_TARGET[0]`: the program under test (a program array).
pub const BENCH_TARGET: &str = "BENCH_TARGET";
/// `BENCH_SEQ[0]` (per CPU): the run counter behind `vary_offset`.
pub const BENCH_SEQ: &str = "BENCH_SEQ";
pub const BENCH_RESTORE_PROGRAM: &str = "bench_restore";
pub const BENCH_PASS_PROGRAM: &str = "bench_pass";
pub const BENCH_PARSE_PROGRAM: &str = "bench_parse_only";
