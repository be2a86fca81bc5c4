//! Comparison harness programs (`cargo xtask bench --compare`); the daemon never attaches them.
//! `compare_generator` runs under BPF_PROG_RUN in live-frames mode and transmits a template
//! frame, one UDP source port after another, flat out or paced; `compare_sink` counts (and drops) what reaches a
//! backend; `compare_forwarder` is the bare XDP forwarder (FIB lookup + redirect, no splitting)
//! that bounds what any XDP data plane can forward on the same machine.

use core::mem::size_of;

use aya_ebpf::{
    bindings::xdp_action,
    helpers::{bpf_ktime_get_ns, bpf_redirect},
    macros::{map, xdp},
    maps::{Array, PerCpuArray},
    programs::XdpContext,
};
use splitter_bench_common::compare::{
    GEN_PACKET_MAX, GenPacket, GenState, SINK_TCP_PORT, SINK_UDP_PORT, SinkCounter,
};
use splitter_common::Family;
use splitter_ebpf::{
    fib,
    parse::{self, EthHdr, Frame, IPPROTO_TCP, IPPROTO_UDP, Ipv4Hdr, TCP_ACK, TCP_SYN},
};

#[map]
static GEN_PACKET: Array<GenPacket> = Array::with_max_entries(1, 0);

#[map]
static GEN_STATE: PerCpuArray<GenState> = PerCpuArray::with_max_entries(1, 0);

#[map]
static SINK_COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(SinkCounter::COUNT, 0);

#[inline(always)]
fn frame(ctx: &XdpContext) -> Frame {
    Frame {
        start: ctx.data(),
        end: ctx.data_end(),
    }
}

/// Writes the template frame with the next source port and transmits it (live-frames mode turns
/// XDP_TX into a redirect out of the test run's ingress interface). Paced: a run that comes
/// before the next frame is due drops its frame instead, so one long test run paces itself with
/// frames leaving one by one, never in bursts the receiver's ring cannot take.
#[xdp]
pub fn compare_generator(ctx: XdpContext) -> u32 {
    let frame = frame(&ctx);
    let (Some(template), Some(state)) = (GEN_PACKET.get(0), GEN_STATE.get_ptr_mut(0)) else {
        return xdp_action::XDP_ABORTED;
    };
    let state = unsafe { &mut *state };
    if template.interval_ns != 0 {
        let now = unsafe { bpf_ktime_get_ns() };
        if now < state.next_due_ns {
            return xdp_action::XDP_DROP;
        }
        // Far behind schedule (preempted for long): start again from now rather than catch up
        // in a burst larger than a veth ring (256) absorbs; shorter delays are made up.
        state.next_due_ns = if state.next_due_ns + 64 * template.interval_ns < now {
            now + template.interval_ns
        } else {
            state.next_due_ns + template.interval_ns
        };
    }
    let len = template.len as usize;
    // Word by word (templates are a whole number of 4-byte words): the loop bound is what
    // keeps the template index in range for the verifier.
    for word in 0..GEN_PACKET_MAX / 4 {
        let offset = word * 4;
        if offset + 4 > len {
            break;
        }
        let Some(dst) = frame.ptr_at::<[u8; 4]>(offset) else {
            break;
        };
        let mut bytes = [0u8; 4];
        bytes.copy_from_slice(&template.data[offset..offset + 4]);
        unsafe { *dst = bytes };
    }
    state.sent += 1;
    if template.flows > 1 {
        let flow = (state.sent % template.flows as u64) as u32;
        // Masked: the verifier needs a bounded offset.
        let offset = (template.vary_offset & 0x3f) as usize;
        if let Some(field) = frame.ptr_at::<u16>(offset) {
            let base = u16::from_be(unsafe { *field });
            unsafe { *field = base.wrapping_add(flow as u16).to_be() };
        }
        if template.split_every != 0
            && flow.is_multiple_of(template.split_every)
            // The template is ours: Ethernet, then a 20-byte IPv4 header.
            && let Some(ip) = frame.ptr_at::<Ipv4Hdr>(size_of::<EthHdr>())
        {
            unsafe {
                (*ip).dst = template.split_dst;
                (*ip).check = template.split_check;
            }
        }
    }
    xdp_action::XDP_TX
}

#[inline(always)]
fn count(counter: SinkCounter) {
    if let Some(count) = SINK_COUNTERS.get_ptr_mut(counter as u32) {
        unsafe { *count += 1 };
    }
}

/// A backend's receive side: counts and drops the packet-rate test's UDP, counts the HTTP
/// tests' connection openings and passes them (and everything else) to the stack.
#[xdp]
pub fn compare_sink(ctx: XdpContext) -> u32 {
    let frame = frame(&ctx);
    let Ok(packet) = parse::ip(&frame).and_then(|ip| parse::ports(&frame, ip)) else {
        return xdp_action::XDP_PASS;
    };
    let dst_port = u16::from_be(packet.dst_port);
    match packet.ip.protocol {
        IPPROTO_UDP if dst_port == SINK_UDP_PORT => {
            count(SinkCounter::Udp);
            xdp_action::XDP_DROP
        }
        IPPROTO_TCP
            if dst_port == SINK_TCP_PORT && packet.tcp_flags & (TCP_SYN | TCP_ACK) == TCP_SYN =>
        {
            count(SinkCounter::TcpSyn);
            xdp_action::XDP_PASS
        }
        _ => xdp_action::XDP_PASS,
    }
}

/// IPv4 routing in XDP: FIB lookup, TTL decrement, MAC rewrite, redirect, exactly as the data
/// plane's fast path forwards (`splitter_ebpf::fib`). Anything the FIB cannot resolve (no
/// neighbour yet, local delivery, TTL expiring) goes to the stack.
#[xdp]
pub fn compare_forwarder(ctx: XdpContext) -> u32 {
    try_forward(&ctx).unwrap_or(xdp_action::XDP_PASS)
}

#[inline(always)]
fn try_forward(ctx: &XdpContext) -> Option<u32> {
    let frame = frame(ctx);
    let ip = parse::ip(&frame).ok()?;
    if ip.family != Family::Ipv4 {
        return None;
    }
    let route = fib::lookup(ctx, &frame, &ip)?;
    fib::rewrite(&frame, &ip, &route)?;
    Some(unsafe { bpf_redirect(route.ifindex, 0) } as u32)
}
