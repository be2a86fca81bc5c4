//! Benchmark harness programs (`cargo xtask bench`); the daemon never attaches them.
//! `bench_restore` rewrites the test-run packet from `BENCH_PACKET` and tail-calls the program
//! in `BENCH_TARGET`: BPF_PROG_TEST_RUN with `repeat` then measures the same input each run.
//! The target is the data plane's real `splitter_ingress`, loaded from the daemon's own object
//! (a program array may hold a program of another object of the same type).
//! `bench_pass` and `bench_parse_only` are the floors, measured through the same wrapper.

use aya_ebpf::{
    bindings::xdp_action,
    macros::{map, xdp},
    maps::{Array, PerCpuArray, ProgramArray},
    programs::XdpContext,
};
use splitter_bench_common::bench::{BENCH_PACKET_MAX, BenchPacket};
use splitter_ebpf::parse::{self, Frame};

#[map]
static BENCH_PACKET: Array<BenchPacket> = Array::with_max_entries(1, 0);

#[map]
static BENCH_TARGET: ProgramArray = ProgramArray::with_max_entries(1, 0);

#[map]
static BENCH_SEQ: PerCpuArray<u32> = PerCpuArray::with_max_entries(1, 0);

#[xdp]
pub fn bench_restore(ctx: XdpContext) -> u32 {
    let frame = Frame {
        start: ctx.data(),
        end: ctx.data_end(),
    };
    let Some(saved) = BENCH_PACKET.get(0) else {
        return xdp_action::XDP_ABORTED;
    };
    let len = saved.len as usize;
    for chunk in 0..BENCH_PACKET_MAX / 8 {
        let offset = chunk * 8;
        if offset + 8 > len {
            break;
        }
        let Some(dst) = frame.ptr_at::<[u8; 8]>(offset) else {
            break;
        };
        let mut bytes = [0u8; 8];
        bytes.copy_from_slice(&saved.data[offset..offset + 8]);
        unsafe { *dst = bytes };
    }
    // The tail (len % 8 bytes; packets have an even length), two bytes at a time.
    for pair in 0..4 {
        let offset = (len & !7) + pair * 2;
        if offset + 2 > len || offset + 2 > BENCH_PACKET_MAX {
            break;
        }
        if let Some(dst) = frame.ptr_at::<[u8; 2]>(offset) {
            unsafe { *dst = [saved.data[offset], saved.data[offset + 1]] };
        }
    }
    if saved.vary_offset != 0
        && let Some(seq) = BENCH_SEQ.get_ptr_mut(0)
    {
        let seq = unsafe {
            *seq = (*seq).wrapping_add(1);
            *seq
        };
        // Masked: the verifier needs a bounded offset.
        let offset = (saved.vary_offset & 0xff) as usize;
        if let Some(field) = frame.ptr_at::<u32>(offset) {
            unsafe { *field ^= seq.to_be() };
        }
    }
    unsafe { BENCH_TARGET.tail_call(&ctx, 0) };
    xdp_action::XDP_ABORTED
}

#[xdp]
pub fn bench_pass(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_PASS
}

/// Ethernet + IP (options / extension headers) + ports, then pass: the parse-only floor.
#[xdp]
pub fn bench_parse_only(ctx: XdpContext) -> u32 {
    let frame = Frame {
        start: ctx.data(),
        end: ctx.data_end(),
    };
    // The verdict depends on the parsed ports, so nothing of the parse can be optimised away.
    match parse::ip(&frame).and_then(|ip| parse::ports(&frame, ip)) {
        Ok(packet) if packet.dst_port == 0 => xdp_action::XDP_DROP,
        _ => xdp_action::XDP_PASS,
    }
}
