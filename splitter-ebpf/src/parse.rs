//! Header parsing, one small function per header, over the packet bounds `[start, end)`.
//! Shared by the XDP (ingress) and TC (egress) programs. Offsets come from the IPv4 IHL and the
//! IPv6 extension header chain, never from constants.

use core::mem::size_of;

use splitter_common::{Addr, Family, Reason};

pub const ETH_P_IP: u16 = 0x0800;
pub const ETH_P_IPV6: u16 = 0x86dd;
pub const IPPROTO_ICMP: u8 = 1;
pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;
pub const IPPROTO_ICMPV6: u8 = 58;

pub const TCP_FIN: u8 = 0x01;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;
pub const TCP_ACK: u8 = 0x10;

/// The extension headers followed before giving up (hop-by-hop, routing, fragment, destination
/// options, AH): six is the whole RFC 8200 order (without ESP). Real traffic rarely has two.
const MAX_IPV6_EXTENSIONS: usize = 6;

#[repr(C)]
pub struct EthHdr {
    pub dst: [u8; 6],
    pub src: [u8; 6],
    pub ether_type: u16,
}

#[repr(C)]
pub struct Ipv4Hdr {
    pub version_ihl: u8,
    pub tos: u8,
    pub total_len: u16,
    pub id: u16,
    pub frag_off: u16,
    pub ttl: u8,
    pub protocol: u8,
    pub check: u16,
    pub src: u32,
    pub dst: u32,
}

#[repr(C)]
pub struct Ipv6Hdr {
    pub version_tc_flow: u32,
    pub payload_len: u16,
    pub next_header: u8,
    pub hop_limit: u8,
    pub src: [u32; 4],
    pub dst: [u32; 4],
}

/// The first 8 bytes of every IPv6 extension header we follow.
#[repr(C)]
pub struct Ipv6ExtHdr {
    pub next_header: u8,
    pub len: u8,
    pub data: [u8; 6],
}

/// TCP and UDP share the port layout; this is all of UDP and the start of TCP.
#[repr(C)]
pub struct PortsHdr {
    pub src_port: u16,
    pub dst_port: u16,
}

#[repr(C)]
pub struct UdpHdr {
    pub src_port: u16,
    pub dst_port: u16,
    pub len: u16,
    pub check: u16,
}

#[repr(C)]
pub struct TcpHdr {
    pub src_port: u16,
    pub dst_port: u16,
    pub seq: u32,
    pub ack: u32,
    pub data_offset: u8,
    pub flags: u8,
    pub window: u16,
    pub check: u16,
    pub urgent: u16,
}

#[repr(C)]
pub struct IcmpHdr {
    pub kind: u8,
    pub code: u8,
    pub check: u16,
    pub rest: u32,
}

/// Packet bounds: the only way to get at packet bytes.
#[derive(Clone, Copy)]
pub struct Frame {
    pub start: usize,
    pub end: usize,
}

impl Frame {
    /// The one bounds-check primitive: a pointer to a `T` at `offset`, if it fits in the packet.
    #[inline(always)]
    pub fn ptr_at<T>(&self, offset: usize) -> Option<*mut T> {
        if self.start + offset + size_of::<T>() > self.end {
            return None;
        }
        Some((self.start + offset) as *mut T)
    }

    #[inline(always)]
    #[expect(
        clippy::len_without_is_empty,
        reason = "compared with header sizes, never tested for emptiness"
    )]
    pub fn len(&self) -> usize {
        // Opaque to LLVM, which otherwise may fold `len() - k` into `end + (-k - start)`: a
        // scalar minus a packet pointer, which the verifier rejects.
        core::hint::black_box(self.end - self.start)
    }
}

/// Where an IP packet stands with respect to fragmentation.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Fragment {
    /// Not a fragment.
    None,
    /// The first fragment: it carries the L4 header.
    First,
    /// A later fragment: no L4 header, no ports.
    Later,
}

/// The L3 part of a parsed packet.
#[derive(Clone, Copy)]
pub struct Ip {
    pub family: Family,
    pub l3_offset: usize,
    pub l4_offset: usize,
    /// Where the IP payload ends (from the IP length fields; `usize::MAX` for an IPv6
    /// jumbogram, whose length is elsewhere). Trailing Ethernet padding lies past it.
    pub payload_end: usize,
    /// L4 protocol after the extension header chain.
    pub protocol: u8,
    pub src: Addr,
    pub dst: Addr,
    pub fragment: Fragment,
}

/// A fully parsed packet (IP + ports).
#[derive(Clone, Copy)]
pub struct Packet {
    pub ip: Ip,
    pub src_port: u16,
    pub dst_port: u16,
    /// TCP flags byte; 0 for UDP.
    pub tcp_flags: u8,
    /// TCP sequence and acknowledgment numbers (host order); 0 for UDP.
    pub seq: u32,
    pub ack: u32,
}

/// Ethernet → the L3 ethertype. VLAN tags are not followed (counted as not IP).
#[inline(always)]
pub fn ethernet(frame: &Frame) -> Result<u16, Reason> {
    let eth = frame.ptr_at::<EthHdr>(0).ok_or(Reason::TruncatedEthernet)?;
    Ok(u16::from_be(unsafe { (*eth).ether_type }))
}

/// IPv4 header at `offset`, options included (IHL > 5 is honoured).
#[inline(always)]
pub fn ipv4(frame: &Frame, offset: usize) -> Result<Ip, Reason> {
    let ip = frame
        .ptr_at::<Ipv4Hdr>(offset)
        .ok_or(Reason::TruncatedIpv4)?;
    let version_ihl = unsafe { (*ip).version_ihl };
    if version_ihl >> 4 != 4 {
        return Err(Reason::MalformedIpv4);
    }
    // Masked to 0..=60 so the verifier knows the L4 offset is bounded.
    let header_len = ((version_ihl & 0x0f) as usize) * 4;
    if header_len < size_of::<Ipv4Hdr>() {
        return Err(Reason::MalformedIpv4);
    }
    if frame.start + offset + header_len > frame.end {
        return Err(Reason::TruncatedIpv4);
    }
    let total_len = u16::from_be(unsafe { (*ip).total_len }) as usize;
    if total_len < header_len {
        return Err(Reason::MalformedIpv4);
    }
    let frag_off = u16::from_be(unsafe { (*ip).frag_off });
    let fragment = if frag_off & 0x1fff != 0 {
        Fragment::Later
    } else if frag_off & 0x2000 != 0 {
        Fragment::First
    } else {
        Fragment::None
    };
    Ok(Ip {
        family: Family::Ipv4,
        l3_offset: offset,
        l4_offset: offset + header_len,
        payload_end: offset + total_len,
        protocol: unsafe { (*ip).protocol },
        src: Addr([unsafe { (*ip).src }, 0, 0, 0]),
        dst: Addr([unsafe { (*ip).dst }, 0, 0, 0]),
        fragment,
    })
}

/// IPv6 fixed header at `offset`, then the extension header chain up to the L4 header.
#[inline(always)]
pub fn ipv6(frame: &Frame, offset: usize) -> Result<Ip, Reason> {
    let ip = frame
        .ptr_at::<Ipv6Hdr>(offset)
        .ok_or(Reason::TruncatedIpv6)?;
    if unsafe { *(ip as *const u8) } >> 4 != 6 {
        return Err(Reason::TruncatedIpv6);
    }
    let payload_len = u16::from_be(unsafe { (*ip).payload_len }) as usize;
    let payload_end = if payload_len == 0 {
        usize::MAX
    } else {
        offset + size_of::<Ipv6Hdr>() + payload_len
    };
    let mut next = unsafe { (*ip).next_header };
    let mut l4_offset = offset + size_of::<Ipv6Hdr>();
    let mut fragment = Fragment::None;
    // One pass per extension header plus the one that finds the L4 protocol.
    for _ in 0..=MAX_IPV6_EXTENSIONS {
        if !matches!(next, 0 | 43 | 44 | 51 | 60) {
            return Ok(Ip {
                family: Family::Ipv6,
                l3_offset: offset,
                l4_offset,
                payload_end,
                protocol: next,
                src: Addr(unsafe { (*ip).src }),
                dst: Addr(unsafe { (*ip).dst }),
                fragment,
            });
        }
        let ext = frame
            .ptr_at::<Ipv6ExtHdr>(l4_offset)
            .ok_or(Reason::BadIpv6Extension)?;
        let (ext_next, ext_len, frag) = unsafe {
            (
                (*ext).next_header,
                (*ext).len as usize,
                u16::from_be_bytes([(*ext).data[0], (*ext).data[1]]),
            )
        };
        let len = match next {
            // Fragment header: 8 bytes; offset in bits 3..16 of bytes 2..4, M flag in bit 0.
            44 => {
                fragment = if frag & 0xfff8 != 0 {
                    Fragment::Later
                } else if frag & 1 != 0 {
                    Fragment::First
                } else {
                    fragment
                };
                8
            }
            // Authentication header: (len + 2) × 4 bytes.
            51 => (ext_len + 2) * 4,
            // Hop-by-hop, routing, destination options: (len + 1) × 8 bytes.
            _ => (ext_len + 1) * 8,
        };
        next = ext_next;
        l4_offset += len;
        // Bounds the offset for the verifier: no real chain is longer than this.
        if l4_offset > 512 {
            return Err(Reason::BadIpv6Extension);
        }
        // The whole header must be there, not only the 8 bytes read above: its last byte.
        frame
            .ptr_at::<u8>(l4_offset - 1)
            .ok_or(Reason::BadIpv6Extension)?;
    }
    Err(Reason::BadIpv6Extension)
}

/// Ethernet + IP (no L4).
#[inline(always)]
pub fn ip(frame: &Frame) -> Result<Ip, Reason> {
    match ethernet(frame)? {
        ETH_P_IP => ipv4(frame, size_of::<EthHdr>()),
        ETH_P_IPV6 => ipv6(frame, size_of::<EthHdr>()),
        _ => Err(Reason::NotIp),
    }
}

/// The TCP/UDP ports and TCP flags of `ip`.
#[inline(always)]
pub fn ports(frame: &Frame, ip: Ip) -> Result<Packet, Reason> {
    let (src_port, dst_port, tcp_flags, seq, ack) = match ip.protocol {
        IPPROTO_TCP => {
            let tcp = frame
                .ptr_at::<TcpHdr>(ip.l4_offset)
                .ok_or(Reason::TruncatedL4)?;
            // Data offset in 32-bit words: 5 (no options) to 15; the header with its options
            // must end inside the IP payload (a forged offset would otherwise pass as TCP).
            let header_len = ((unsafe { (*tcp).data_offset } >> 4) as usize) * 4;
            if header_len < size_of::<TcpHdr>() || ip.l4_offset + header_len > ip.payload_end {
                return Err(Reason::MalformedTcp);
            }
            unsafe {
                (
                    (*tcp).src_port,
                    (*tcp).dst_port,
                    (*tcp).flags,
                    u32::from_be((*tcp).seq),
                    u32::from_be((*tcp).ack),
                )
            }
        }
        IPPROTO_UDP => {
            let udp = frame
                .ptr_at::<UdpHdr>(ip.l4_offset)
                .ok_or(Reason::TruncatedL4)?;
            unsafe { ((*udp).src_port, (*udp).dst_port, 0, 0, 0) }
        }
        _ => return Err(Reason::NotService),
    };
    Ok(Packet {
        ip,
        src_port,
        dst_port,
        tcp_flags,
        seq,
        ack,
    })
}
