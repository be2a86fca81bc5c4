//! The splitter's data plane: an XDP program on the client-facing interfaces rewrites packets
//! for a service to their blue or green backend; a TC egress program on the same interfaces
//! rewrites the backends' replies back to the service address.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]

mod clock;
mod counters;
mod egress;
mod flows;
mod forward;
mod ingress;
mod maps;
mod select;
mod signals;
mod tables;

use aya_ebpf::{
    bindings::{TC_ACT_OK, xdp_action},
    macros::{classifier, xdp},
    programs::{TcContext, XdpContext},
};
use parse::Frame;
// Shared with the benchmark harness (`splitter-bench-ebpf`); no maps or programs in there.
use splitter_ebpf::{checksum, fib, parse};

/// Ingress on client-facing interfaces. Fails open: traffic that is not for a service, or that
/// cannot be parsed, reaches the kernel untouched (XDP_PASS, counted). Rewritten packets take
/// the fast path (XDP_REDIRECT) where the daemon enabled it, the kernel's routing otherwise.
#[xdp]
// The attribute reaches the body aya's macro nests in the entry point: without it, every packet
// paid a BPF-to-BPF call into the body.
#[inline(always)]
pub fn splitter_ingress(ctx: XdpContext) -> u32 {
    let frame = Frame {
        start: ctx.data(),
        end: ctx.data_end(),
    };
    let (reason, rewritten) = ingress::handle(&frame);
    counters::verdict(reason);
    match rewritten {
        Some(ip) => forward::rewritten(&ctx, &frame, &ip),
        None => xdp_action::XDP_PASS,
    }
}

/// Egress on client-facing interfaces: reverse NAT of backend replies. Never drops.
#[classifier]
#[inline(always)]
pub fn splitter_egress(ctx: TcContext) -> i32 {
    egress::handle(&ctx);
    TC_ACT_OK
}

#[cfg(target_arch = "bpf")]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // Unreachable: the verifier rejects programs that could panic.
    loop {}
}

#[cfg(target_arch = "bpf")]
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";

#[cfg(not(target_arch = "bpf"))]
fn main() {}
