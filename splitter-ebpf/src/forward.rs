//! The XDP fast path for rewritten packets: a FIB lookup for the backend, then XDP_REDIRECT
//! straight to the egress interface, skipping the kernel's stack. Only interfaces the daemon
//! put in `REDIRECT_PORTS` are used (native XDP transmit must work there: not a bridge, not a
//! veth whose peer lacks NAPI); everything else, and every lookup that does not succeed
//! (no neighbour yet, fragmentation needed, TTL about to expire), falls back to XDP_PASS and
//! the kernel's routing. The fallback is decided before the packet's L2 header is touched.

use aya_ebpf::{bindings::xdp_action, programs::XdpContext};
use splitter_common::Forwarding;

use crate::{
    counters, fib,
    maps::{FAST_PATH, REDIRECT_PORTS},
    parse::{Frame, Ip},
};

/// The verdict for a packet whose destination was rewritten to `ip.dst`.
#[inline(always)]
pub fn rewritten(ctx: &XdpContext, frame: &Frame, ip: &Ip) -> u32 {
    let action = redirect(ctx, frame, ip).unwrap_or(xdp_action::XDP_PASS);
    counters::forwarding(if action == xdp_action::XDP_REDIRECT {
        Forwarding::Redirected
    } else {
        Forwarding::Kernel
    });
    action
}

#[inline(always)]
fn redirect(ctx: &XdpContext, frame: &Frame, ip: &Ip) -> Option<u32> {
    if FAST_PATH.get(0).copied().unwrap_or(0) == 0 {
        return None;
    }
    let route = fib::lookup(ctx, frame, ip)?;
    // Only interfaces known to transmit XDP frames: the redirect is armed first, in the one
    // lookup of `REDIRECT_PORTS` (another interface arms nothing and falls back to the kernel),
    // and the L2 header is rewritten only after. A redirect armed for a packet that then
    // passes is never carried out (only XDP_REDIRECT uses it).
    REDIRECT_PORTS
        .redirect(route.ifindex, u64::from(xdp_action::XDP_PASS))
        .ok()?;
    fib::rewrite(frame, ip, &route)?;
    Some(xdp_action::XDP_REDIRECT)
}
