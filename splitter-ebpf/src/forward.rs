//! The XDP fast path for rewritten packets: a FIB lookup for the backend, then XDP_REDIRECT
//! straight to the egress interface, skipping the kernel's stack. Only interfaces the daemon
//! put in `REDIRECT_PORTS` are used (native XDP transmit must work there: not a bridge, not a
//! veth whose peer lacks NAPI); everything else, and every lookup that does not succeed
//! (no neighbour yet, fragmentation needed, TTL about to expire), falls back to XDP_PASS and
//! the kernel's routing. The fallback is decided before the packet's L2 header is touched.

use aya_ebpf::{
    EbpfContext,
    bindings::{BPF_FIB_LKUP_RET_SUCCESS, bpf_fib_lookup, xdp_action},
    helpers::generated::bpf_fib_lookup as fib_lookup,
    programs::XdpContext,
};
use splitter_common::{Family, Forwarding};

use crate::{
    checksum::Delta,
    counters,
    maps::{FAST_PATH, REDIRECT_PORTS},
    parse::{EthHdr, Frame, Ip, Ipv4Hdr, Ipv6Hdr},
};

const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;

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
    let mut params: bpf_fib_lookup = unsafe { core::mem::zeroed() };
    params.ifindex = unsafe { (*ctx.ctx).ingress_ifindex };
    params.l4_protocol = ip.protocol;
    match ip.family {
        Family::Ipv4 => {
            let hdr = frame.ptr_at::<Ipv4Hdr>(ip.l3_offset)?;
            if unsafe { (*hdr).ttl } <= 1 {
                return None;
            }
            params.family = AF_INET;
            params.__bindgen_anon_1.tot_len = u16::from_be(unsafe { (*hdr).total_len });
            params.__bindgen_anon_2.tos = unsafe { (*hdr).tos };
            params.__bindgen_anon_3.ipv4_src = ip.src.0[0];
            params.__bindgen_anon_4.ipv4_dst = ip.dst.0[0];
        }
        Family::Ipv6 => {
            let hdr = frame.ptr_at::<Ipv6Hdr>(ip.l3_offset)?;
            if unsafe { (*hdr).hop_limit } <= 1 {
                return None;
            }
            params.family = AF_INET6;
            params.__bindgen_anon_1.tot_len = u16::from_be(unsafe { (*hdr).payload_len })
                + core::mem::size_of::<Ipv6Hdr>() as u16;
            params.__bindgen_anon_3.ipv6_src = ip.src.0;
            params.__bindgen_anon_4.ipv6_dst = ip.dst.0;
        }
    }
    let rc = unsafe {
        fib_lookup(
            ctx.as_ptr(),
            &mut params,
            core::mem::size_of::<bpf_fib_lookup>() as i32,
            0,
        )
    };
    if rc != BPF_FIB_LKUP_RET_SUCCESS as i64 {
        return None;
    }
    // Only interfaces known to transmit XDP frames; checked before anything is rewritten.
    REDIRECT_PORTS.get(params.ifindex)?;
    let eth = frame.ptr_at::<EthHdr>(0)?;
    unsafe {
        (*eth).dst = params.dmac;
        (*eth).src = params.smac;
    }
    decrement_ttl(frame, ip)?;
    REDIRECT_PORTS.redirect(params.ifindex, 0).ok()
}

/// We forward, so we decrement the TTL / hop limit like a router.
#[inline(always)]
fn decrement_ttl(frame: &Frame, ip: &Ip) -> Option<()> {
    match ip.family {
        Family::Ipv4 => {
            let hdr = frame.ptr_at::<Ipv4Hdr>(ip.l3_offset)?;
            // TTL and protocol form one 16-bit word of the header checksum.
            let word = frame.ptr_at::<u16>(ip.l3_offset + 8)?;
            unsafe {
                let old = *word;
                (*hdr).ttl -= 1;
                (*hdr).check = Delta::new().u16(old, *word).apply((*hdr).check);
            }
        }
        Family::Ipv6 => {
            let hdr = frame.ptr_at::<Ipv6Hdr>(ip.l3_offset)?;
            unsafe { (*hdr).hop_limit -= 1 };
        }
    }
    Some(())
}
