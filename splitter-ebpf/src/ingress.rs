//! The XDP program's work: client → service packets are rewritten to their backend (DNAT);
//! ICMP errors about a service flow are forwarded to that flow's backend.

use splitter_common::{Addr, Cohort, Family, FlowKey, Reason, ServiceKey, maps::service_port_bit};

use crate::{
    checksum::Delta,
    counters::{self, Direction},
    flows::{self, Pin, Pinned},
    maps::{SERVICE_PORTS, SERVICES},
    parse::{
        self, Fragment, Frame, IPPROTO_ICMP, IPPROTO_ICMPV6, IPPROTO_TCP, IPPROTO_UDP, IcmpHdr, Ip,
        Ipv4Hdr, Ipv6Hdr, Packet, PortsHdr, TCP_RST, TcpHdr, UdpHdr,
    },
    select::{self, Start},
};

/// Handles one received frame and says why it did what it did. A packet of a flow rewritten
/// to its backend comes back with its new IP header data, for the forwarding step; everything
/// else continues to the kernel untouched or as rewritten (fragments, ICMP errors).
#[inline(always)]
pub fn handle(frame: &Frame) -> (Reason, Option<Ip>) {
    let ip = match parse::ip(frame) {
        Ok(ip) => ip,
        Err(reason) => return (reason, None),
    };
    let result = match (ip.family, ip.protocol) {
        (_, IPPROTO_TCP | IPPROTO_UDP) => service_packet(frame, ip),
        (Family::Ipv4, IPPROTO_ICMP) | (Family::Ipv6, IPPROTO_ICMPV6) => {
            icmp_error(frame, ip).map(|reason| (reason, None))
        }
        _ => Err(Reason::NotService),
    };
    match result {
        Ok(outcome) => outcome,
        Err(reason) => (reason, None),
    }
}

#[inline(always)]
fn service_key(addr: Addr, port: u16, protocol: u8, family: Family) -> ServiceKey {
    ServiceKey {
        addr,
        port,
        protocol,
        family: family as u8,
    }
}

/// Whether some service listens on this port (network order): one bit of `SERVICE_PORTS`, an
/// array read the JIT inlines, keeps the flow and service lookups for packets that can be a
/// service's.
#[inline(always)]
fn service_port(port: u16) -> bool {
    let (word, bit) = service_port_bit(u16::from_be(port));
    SERVICE_PORTS.get(word).is_some_and(|bits| *bits & bit != 0)
}

/// A TCP or UDP packet: to a service or not.
#[inline(always)]
fn service_packet(frame: &Frame, ip: Ip) -> Result<(Reason, Option<Ip>), Reason> {
    if ip.fragment == Fragment::Later {
        return later_fragment(frame, ip).map(|reason| (reason, None));
    }
    let packet = parse::ports(frame, ip)?;
    if !service_port(packet.dst_port) {
        return Err(Reason::NotService);
    }
    // The established path: the pinned flow says everything (backend, state), so the service
    // is not looked up. A removed service's flows leave the tables with it (the daemon unpins
    // them); a closed, idle or missing pin takes the path below.
    let pinned = match (ip.fragment, ip.protocol) {
        (Fragment::None, IPPROTO_TCP) => flows::established(&packet),
        (Fragment::None, _) => flows::udp_active(&packet),
        _ => Pinned::Unknown,
    };
    if let Pinned::Open(flow) = pinned {
        return Ok(forward(frame, &packet, Reason::Established, flow));
    }
    let key = service_key(ip.dst, packet.dst_port, ip.protocol, ip.family);
    let config = unsafe { SERVICES.get(key) }.ok_or(Reason::NotService)?;
    if ip.fragment == Fragment::First && config.cohort != Cohort::Client as u32 {
        // Later fragments have no ports, so with the `flow` cohort they could not follow the
        // first one: the whole datagram passes untouched.
        return Err(Reason::Fragment);
    }
    let flow_key = FlowKey {
        src: ip.src,
        dst: ip.dst,
        src_port: packet.src_port,
        dst_port: packet.dst_port,
        protocol: ip.protocol,
        family: ip.family as u8,
        _pad: [0; 2],
    };
    let (reason, flow) = if ip.protocol == IPPROTO_TCP {
        flows::tcp(config, &flow_key, &packet, pinned)?
    } else {
        flows::udp(config, &flow_key, &packet, pinned)?
    };
    if ip.fragment == Fragment::First {
        count(frame, &packet, reason, &flow);
        rewrite_destination(frame, &packet, &flow.backend_addr, flow.backend_port);
        return Ok((Reason::FragmentSteered, None));
    }
    Ok(forward(frame, &packet, reason, flow))
}

/// Counts a client packet rewritten to `flow`'s backend.
#[inline(always)]
fn count(frame: &Frame, packet: &Packet, reason: Reason, flow: &Pin) {
    let ip = &packet.ip;
    let bytes = (frame.len() - ip.l3_offset) as u64;
    // A stray RST is forwarded but not held (see `flows`): no new flow to count.
    let rst = ip.protocol == IPPROTO_TCP && packet.tcp_flags & TCP_RST != 0;
    let new = reason != Reason::Established && !rst;
    counters::backend_packet(
        flow.backend_id,
        Direction::ToBackend,
        1,
        bytes,
        packet.tcp_flags,
        new,
    );
}

/// DNAT to `flow`'s backend, counted; the new IP header data for the forwarding step.
#[inline(always)]
fn forward(frame: &Frame, packet: &Packet, reason: Reason, flow: Pin) -> (Reason, Option<Ip>) {
    count(frame, packet, reason, &flow);
    rewrite_destination(frame, packet, &flow.backend_addr, flow.backend_port);
    (
        reason,
        Some(Ip {
            dst: flow.backend_addr,
            ..packet.ip
        }),
    )
}

/// A non-first fragment: no ports. The daemon keys a port-0 entry per service address and
/// protocol; with the `client` cohort the client's hash steers it like the first fragment.
#[inline(always)]
fn later_fragment(frame: &Frame, ip: Ip) -> Result<Reason, Reason> {
    let key = service_key(ip.dst, 0, ip.protocol, ip.family);
    let config = unsafe { SERVICES.get(key) }.ok_or(Reason::NotService)?;
    if config.cohort != Cohort::Client as u32 {
        return Err(Reason::Fragment);
    }
    let flow_key = FlowKey {
        src: ip.src,
        dst: ip.dst,
        family: ip.family as u8,
        protocol: ip.protocol,
        ..FlowKey::default()
    };
    let chosen = select::choose(config, &flow_key, Start::Now).ok_or(Reason::NoBackend)?;
    rewrite_ip_destination(frame, &ip, &chosen.backend.addr);
    let bytes = (frame.len() - ip.l3_offset) as u64;
    counters::backend_packet(chosen.backend_id, Direction::ToBackend, 1, bytes, 0, false);
    Ok(Reason::FragmentSteered)
}

/// Rewrites the IP destination; returns the checksum delta of the pseudo-header.
#[inline(always)]
fn rewrite_ip_destination(frame: &Frame, ip: &Ip, new: &Addr) -> Delta {
    match ip.family {
        Family::Ipv4 => {
            let Some(hdr) = frame.ptr_at::<Ipv4Hdr>(ip.l3_offset) else {
                return Delta::new();
            };
            let delta = Delta::new().u32(ip.dst.0[0], new.0[0]);
            unsafe {
                (*hdr).dst = new.0[0];
                (*hdr).check = delta.apply((*hdr).check);
            }
            delta
        }
        Family::Ipv6 => {
            let Some(hdr) = frame.ptr_at::<Ipv6Hdr>(ip.l3_offset) else {
                return Delta::new();
            };
            unsafe { (*hdr).dst = new.0 };
            Delta::new().addr(&ip.dst.0, &new.0)
        }
    }
}

/// DNAT: destination address and port, with incremental IPv4 header and L4 checksum updates
/// (pseudo-header included).
#[inline(always)]
fn rewrite_destination(frame: &Frame, packet: &Packet, addr: &Addr, port: u16) {
    let ip = &packet.ip;
    let delta = rewrite_ip_destination(frame, ip, addr).u16(packet.dst_port, port);
    if ip.protocol == IPPROTO_TCP {
        if let Some(tcp) = frame.ptr_at::<TcpHdr>(ip.l4_offset) {
            unsafe {
                (*tcp).dst_port = port;
                (*tcp).check = delta.apply((*tcp).check);
            }
        }
    } else if let Some(udp) = frame.ptr_at::<UdpHdr>(ip.l4_offset) {
        unsafe {
            (*udp).dst_port = port;
            (*udp).check = delta.apply_udp((*udp).check);
        }
    }
}

/// ICMP (v4: 3 unreachable / fragmentation needed, 11 time exceeded, 12 parameter problem;
/// v6: 1 unreachable, 2 packet too big, 3 time exceeded, 4 parameter problem) about a packet the
/// service sent to a client: the error goes to the backend that serves that flow, with the
/// outer destination and the quoted source rewritten so the backend's stack matches its socket.
#[inline(always)]
fn icmp_error(frame: &Frame, ip: Ip) -> Result<Reason, Reason> {
    let icmp = frame
        .ptr_at::<IcmpHdr>(ip.l4_offset)
        .ok_or(Reason::TruncatedIcmp)?;
    let kind = unsafe { (*icmp).kind };
    let is_error = match ip.family {
        Family::Ipv4 => matches!(kind, 3 | 11 | 12),
        Family::Ipv6 => matches!(kind, 1..=4),
    };
    if !is_error || ip.fragment != Fragment::None {
        return Err(Reason::NotService);
    }
    let quoted_offset = ip.l4_offset + core::mem::size_of::<IcmpHdr>();
    let quoted = match ip.family {
        Family::Ipv4 => parse::ipv4(frame, quoted_offset),
        Family::Ipv6 => parse::ipv6(frame, quoted_offset),
    }
    .map_err(|_| Reason::TruncatedIcmp)?;
    if !matches!(quoted.protocol, IPPROTO_TCP | IPPROTO_UDP) {
        return Err(Reason::NotService);
    }
    let ports = frame
        .ptr_at::<PortsHdr>(quoted.l4_offset)
        .ok_or(Reason::TruncatedIcmp)?;
    let (service_port, client_port) = unsafe { ((*ports).src_port, (*ports).dst_port) };
    // The quoted packet went service → client, and the error came back to the service address.
    if quoted.src != ip.dst {
        return Err(Reason::NotService);
    }
    let key = service_key(quoted.src, service_port, quoted.protocol, quoted.family);
    if unsafe { SERVICES.get(key) }.is_none() {
        return Err(Reason::NotService);
    }
    let flow_key = FlowKey {
        src: quoted.dst,
        dst: quoted.src,
        src_port: client_port,
        dst_port: service_port,
        protocol: quoted.protocol,
        family: quoted.family as u8,
        _pad: [0; 2],
    };
    let flow = flows::find(&flow_key).ok_or(Reason::IcmpUnmatched)?;
    let backend = flow.backend_addr;

    // Outer header: destination service → backend.
    let outer = rewrite_ip_destination(frame, &ip, &backend);
    // Quoted header: source service → backend, source port → backend port.
    let mut quoted_delta = Delta::new()
        .addr(&quoted.src.0, &backend.0)
        .u16(service_port, flow.backend_port);
    match quoted.family {
        Family::Ipv4 => {
            let hdr = frame
                .ptr_at::<Ipv4Hdr>(quoted.l3_offset)
                .ok_or(Reason::TruncatedIcmp)?;
            unsafe {
                let old_check = (*hdr).check;
                let new_check = Delta::new()
                    .u32(quoted.src.0[0], backend.0[0])
                    .apply(old_check);
                (*hdr).src = backend.0[0];
                (*hdr).check = new_check;
                quoted_delta = quoted_delta.u16(old_check, new_check);
            }
        }
        Family::Ipv6 => {
            let hdr = frame
                .ptr_at::<Ipv6Hdr>(quoted.l3_offset)
                .ok_or(Reason::TruncatedIcmp)?;
            unsafe { (*hdr).src = backend.0 };
        }
    }
    let ports = frame
        .ptr_at::<PortsHdr>(quoted.l4_offset)
        .ok_or(Reason::TruncatedIcmp)?;
    unsafe { (*ports).src_port = flow.backend_port };
    // The quoted TCP/UDP checksum, when the quote reaches it, covers the source address
    // (pseudo-header) and port too: update it so the backend gets back the packet it sent.
    let l4_delta = Delta::new()
        .addr(&quoted.src.0, &backend.0)
        .u16(service_port, flow.backend_port);
    let check_offset = match quoted.protocol {
        IPPROTO_TCP => quoted.l4_offset + 16,
        _ => quoted.l4_offset + 6,
    };
    if let Some(check) = frame.ptr_at::<u16>(check_offset) {
        unsafe {
            let old_check = *check;
            let new_check = match quoted.protocol {
                IPPROTO_TCP => l4_delta.apply(old_check),
                _ => l4_delta.apply_udp(old_check),
            };
            *check = new_check;
            quoted_delta = quoted_delta.u16(old_check, new_check);
        }
    }
    // The ICMP checksum covers the quoted bytes; ICMPv6's also covers the pseudo-header.
    let icmp_delta = match ip.family {
        Family::Ipv4 => quoted_delta,
        Family::Ipv6 => quoted_delta.plus(outer),
    };
    let icmp = frame
        .ptr_at::<IcmpHdr>(ip.l4_offset)
        .ok_or(Reason::TruncatedIcmp)?;
    unsafe { (*icmp).check = icmp_delta.apply((*icmp).check) };
    Ok(Reason::IcmpToBackend)
}
