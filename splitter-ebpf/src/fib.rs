//! Forwarding like a router in XDP: a FIB lookup for the packet's (rewritten) destination, then
//! the L2 rewrite and TTL / hop-limit decrement. Shared by the data plane's fast path
//! (`forward.rs`, which adds its own checks before rewriting) and the comparison harness's bare
//! XDP forwarder, so both forward exactly the same way.

use aya_ebpf::{
    EbpfContext,
    bindings::{BPF_FIB_LKUP_RET_SUCCESS, bpf_fib_lookup},
    helpers::generated::bpf_fib_lookup as fib_lookup,
    programs::XdpContext,
};
use splitter_common::Family;

use crate::{
    checksum::Delta,
    parse::{EthHdr, Frame, Ip, Ipv4Hdr, Ipv6Hdr},
};

const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;

/// The kernel's route for `ip` (next hop's MAC, our MAC, egress ifindex), or `None` when the
/// lookup does not succeed (no neighbour yet, fragmentation needed, local delivery) or the TTL /
/// hop limit is about to expire. Nothing of the packet is touched.
#[inline(always)]
pub fn lookup(ctx: &XdpContext, frame: &Frame, ip: &Ip) -> Option<bpf_fib_lookup> {
    let mut zeroed = core::mem::MaybeUninit::<bpf_fib_lookup>::uninit();
    zero(&mut zeroed);
    // Every byte was written by `zero`.
    let params = unsafe { zeroed.assume_init_mut() };
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
            params,
            core::mem::size_of::<bpf_fib_lookup>() as i32,
            0,
        )
    };
    if rc != BPF_FIB_LKUP_RET_SUCCESS as i64 {
        return None;
    }
    Some(*params)
}

/// Zeroes `params` in place with 4-byte stores. `mem::zeroed()` compiles to a call of the
/// byte-at-a-time `memset` here, 64 iterations on every forwarded packet (4-6 % of the router's
/// CPU in `perf`); zeroing a local and moving it in gets the call back.
#[inline(always)]
fn zero(params: &mut core::mem::MaybeUninit<bpf_fib_lookup>) {
    const WORDS: usize = core::mem::size_of::<bpf_fib_lookup>() / 4;
    const _: () = assert!(core::mem::size_of::<bpf_fib_lookup>().is_multiple_of(4));
    const _: () = assert!(core::mem::align_of::<bpf_fib_lookup>() >= 4);
    let words = params.as_mut_ptr().cast::<u32>();
    for i in 0..WORDS {
        // Volatile: a plain loop of zero stores is turned back into `memset`.
        unsafe { words.add(i).write_volatile(0) };
    }
}

/// Readies the packet for transmission to the next hop `route` found: MACs from the neighbour
/// table, TTL / hop limit decremented like a router.
#[inline(always)]
pub fn rewrite(frame: &Frame, ip: &Ip, route: &bpf_fib_lookup) -> Option<()> {
    let eth = frame.ptr_at::<EthHdr>(0)?;
    unsafe {
        (*eth).dst = route.dmac;
        (*eth).src = route.smac;
    }
    decrement_ttl(frame, ip)
}

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
