//! The TC egress program's work, on the interfaces where clients are: a backend's reply is
//! rewritten back to the service address and port the client used (reverse NAT), by the
//! backend's address alone (stateless: it works for evicted flows and flows of other hosts).
//! A backend shared by several services (a preview address) is the exception: the client's
//! pinned flow says which service the reply answers for (see [`shared_service`]).
//! Checksums go through the kernel helpers, which also handle CHECKSUM_PARTIAL (GSO/forwarded)
//! packets.

use aya_ebpf::{
    bindings::{BPF_F_MARK_MANGLED_0, BPF_F_PSEUDO_HDR},
    programs::TcContext,
};
use splitter_common::{
    BackendKey, Family, FlowState, MAX_SHARING, Reason, ReverseValue, reverse_flags,
};

use crate::{
    counters::{self, Direction},
    flows,
    maps::{BACKEND_REVERSE, SHARED_REVERSE},
    parse::{self, Fragment, Frame, IPPROTO_TCP, IPPROTO_UDP, Packet},
};

/// Enough linear bytes for Ethernet, IPv6 with a few extension headers, and TCP.
const HEADERS_MAX: u32 = 192;

#[inline(always)]
fn frame(ctx: &TcContext) -> Frame {
    Frame {
        start: ctx.data(),
        end: ctx.data_end(),
    }
}

/// Rewrites a backend's reply back to its service, found by the backend's address alone
/// (`BACKEND_REVERSE`; no flow lookup). Never drops: on any error the packet leaves unchanged.
#[inline(always)]
pub fn handle(ctx: &TcContext) {
    let mut f = frame(ctx);
    if (f.len() as u32) < HEADERS_MAX && ctx.len() > f.len() as u32 {
        // Headers may sit in paged data (GRO/GSO): make them linear, then re-read the bounds.
        let _ = ctx.pull_data(ctx.len().min(HEADERS_MAX));
        f = frame(ctx);
    }
    let Ok(ip) = parse::ip(&f) else { return };
    if !matches!(ip.protocol, IPPROTO_TCP | IPPROTO_UDP) || ip.fragment == Fragment::Later {
        return;
    }
    let Ok(packet) = parse::ports(&f, ip) else {
        return;
    };
    let key = BackendKey {
        addr: ip.src,
        port: packet.src_port,
        protocol: ip.protocol,
        family: ip.family as u8,
    };
    let Some(reverse) = (unsafe { BACKEND_REVERSE.get(key) }) else {
        return;
    };
    let mut reverse = *reverse;
    if reverse.flags & reverse_flags::SHARED != 0 {
        reverse = shared_service(&key, &packet, reverse);
    }
    // skb->len: the whole packet, paged data included (the linear part may be shorter).
    let bytes = (ctx.len() as u64).saturating_sub(ip.l3_offset as u64);
    // A GSO packet (GRO on the way in, TSO from a local sender) leaves as `gso_segs` wire
    // packets; a plain one has gso_segs 0.
    let segments = unsafe { (*ctx.skb.skb).gso_segs }.max(1) as u64;
    if ip.protocol == IPPROTO_TCP {
        flows::backend_reply(&packet, &reverse);
    }
    if rewrite_source(ctx, &packet, &reverse).is_ok() {
        counters::verdict(Reason::ToClient);
        counters::backend_packet(
            reverse.backend_id,
            Direction::ToClient,
            segments,
            bytes,
            packet.tcp_flags,
            false,
        );
    }
}

/// The service a shared backend's reply answers for: the candidate whose client flow (`FLOWS`,
/// then `PENDING`) is pinned to this backend, an open flow before a closed one; none (evicted,
/// or begun on another host): the first candidate, `first` (the first service of the config
/// that uses the backend).
#[inline(always)]
fn shared_service(key: &BackendKey, packet: &Packet, first: ReverseValue) -> ReverseValue {
    let Some(shared) = (unsafe { SHARED_REVERSE.get(key) }) else {
        return first;
    };
    // A closed flow of another service on the same client port (Linux reuses a source port
    // toward another destination) answers only when no open flow does.
    let mut closed = None;
    let mut index = 0;
    // Bounded by MAX_SHARING (the verifier sees a constant bound), then by `count`.
    while index < MAX_SHARING {
        if index as u32 >= shared.count {
            break;
        }
        let candidate = shared.candidates[index];
        if let Some(flow) = flows::find(&flows::reply_key(packet, &candidate))
            && flow.backend_addr == packet.ip.src
            && flow.backend_port == packet.src_port
        {
            if flow.state != FlowState::Closed as u8 {
                return candidate;
            }
            if closed.is_none() {
                closed = Some(candidate);
            }
        }
        index += 1;
    }
    closed.unwrap_or(first)
}

/// SNAT back to the service: source address and port, L4 checksum (pseudo-header included),
/// IPv4 header checksum.
#[inline(always)]
fn rewrite_source(ctx: &TcContext, packet: &Packet, reverse: &ReverseValue) -> Result<(), i64> {
    let ip = &packet.ip;
    let (check_offset, mangled) = if ip.protocol == IPPROTO_TCP {
        (ip.l4_offset + 16, 0)
    } else {
        // UDP: a zero checksum (IPv4 "none") stays zero, a computed zero becomes 0xffff.
        (ip.l4_offset + 6, BPF_F_MARK_MANGLED_0 as u64)
    };
    let pseudo = BPF_F_PSEUDO_HDR as u64 | mangled;
    let old = ip.src.0;
    let new = reverse.service_addr.0;
    match ip.family {
        Family::Ipv4 => {
            ctx.l4_csum_replace(check_offset, old[0] as u64, new[0] as u64, pseudo | 4)?;
            ctx.l3_csum_replace(ip.l3_offset + 10, old[0] as u64, new[0] as u64, 4)?;
            ctx.store(ip.l3_offset + 12, &new[0], 0)?;
        }
        Family::Ipv6 => {
            for i in 0..4 {
                ctx.l4_csum_replace(check_offset, old[i] as u64, new[i] as u64, pseudo | 4)?;
            }
            ctx.store(ip.l3_offset + 8, &new, 0)?;
        }
    }
    ctx.l4_csum_replace(
        check_offset,
        packet.src_port as u64,
        reverse.service_port as u64,
        mangled | 2,
    )?;
    ctx.store(ip.l4_offset, &reverse.service_port, 0)?;
    Ok(())
}
