//! A small packet builder for data-plane tests: Ethernet + IPv4 (options, fragment fields) or
//! IPv6 (extension headers) + TCP / UDP / ICMP(v6), every checksum computed from scratch; and an
//! independent checksum verifier that parses a frame and checks every checksum it can.
//!
//! Everything is built from plain fields so a test can state the packet it expects after a
//! rewrite by building it, instead of patching bytes.

use std::net::{Ipv4Addr, Ipv6Addr};

pub const ETH_P_IP: u16 = 0x0800;
pub const ETH_P_IPV6: u16 = 0x86dd;
pub const ETH_P_ARP: u16 = 0x0806;
pub const ETH_HLEN: usize = 14;

pub const IPPROTO_HOPOPTS: u8 = 0;
pub const IPPROTO_ICMP: u8 = 1;
pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;
pub const IPPROTO_ROUTING: u8 = 43;
pub const IPPROTO_FRAGMENT: u8 = 44;
pub const IPPROTO_AH: u8 = 51;
pub const IPPROTO_ICMPV6: u8 = 58;
pub const IPPROTO_DSTOPTS: u8 = 60;
/// Generic Routing Encapsulation: an IP protocol the splitter does not handle.
pub const IPPROTO_GRE: u8 = 47;

pub const TCP_FIN: u8 = 0x01;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;
pub const TCP_PSH: u8 = 0x08;
pub const TCP_ACK: u8 = 0x10;

/// The one's complement sum (RFC 1071) of `parts` taken as one byte string, folded to 16 bits.
/// Parts are concatenated before pairing bytes, so an odd-length part shifts the next one.
pub fn ones_complement_sum(parts: &[&[u8]]) -> u16 {
    let mut sum: u64 = 0;
    let mut odd: Option<u8> = None;
    for byte in parts.iter().flat_map(|part| part.iter().copied()) {
        match odd.take() {
            Some(high) => sum += u64::from(u16::from_be_bytes([high, byte])),
            None => odd = Some(byte),
        }
    }
    if let Some(high) = odd {
        sum += u64::from(u16::from_be_bytes([high, 0]));
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum as u16
}

/// The Internet checksum of `parts` (with the checksum field zeroed in them).
pub fn checksum(parts: &[&[u8]]) -> u16 {
    !ones_complement_sum(parts)
}

/// The IPv4 pseudo-header of TCP/UDP.
pub fn pseudo_header_v4(src: Ipv4Addr, dst: Ipv4Addr, protocol: u8, l4_len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(12);
    out.extend_from_slice(&src.octets());
    out.extend_from_slice(&dst.octets());
    out.push(0);
    out.push(protocol);
    out.extend_from_slice(&(l4_len as u16).to_be_bytes());
    out
}

/// The IPv6 pseudo-header of TCP/UDP/ICMPv6 (RFC 8200 section 8.1).
pub fn pseudo_header_v6(src: Ipv6Addr, dst: Ipv6Addr, next_header: u8, l4_len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(40);
    out.extend_from_slice(&src.octets());
    out.extend_from_slice(&dst.octets());
    out.extend_from_slice(&(l4_len as u32).to_be_bytes());
    out.extend_from_slice(&[0, 0, 0, next_header]);
    out
}

/// Ethernet header.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ethernet {
    pub dst: [u8; 6],
    pub src: [u8; 6],
}

impl Default for Ethernet {
    fn default() -> Self {
        Self {
            dst: [0x02, 0, 0, 0, 0, 0x01],
            src: [0x02, 0, 0, 0, 0, 0x02],
        }
    }
}

/// IPv4 header fields. `options` is padded with zeros (end of options) to a multiple of 4 bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ipv4 {
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub tos: u8,
    pub id: u16,
    pub ttl: u8,
    pub dont_fragment: bool,
    pub more_fragments: bool,
    /// In 8-byte units.
    pub fragment_offset: u16,
    pub options: Vec<u8>,
}

impl Ipv4 {
    pub fn new(src: Ipv4Addr, dst: Ipv4Addr) -> Self {
        Self {
            src,
            dst,
            tos: 0,
            id: 0x1234,
            ttl: 64,
            dont_fragment: false,
            more_fragments: false,
            fragment_offset: 0,
            options: Vec::new(),
        }
    }

    fn padded_options(&self) -> Vec<u8> {
        let mut options = self.options.clone();
        while !options.len().is_multiple_of(4) {
            options.push(0);
        }
        assert!(options.len() <= 40, "IPv4 options longer than 40 bytes");
        options
    }

    /// The header (options included) for `protocol` and `payload_len` bytes after it.
    pub fn header(&self, protocol: u8, payload_len: usize) -> Vec<u8> {
        let options = self.padded_options();
        let header_len = 20 + options.len();
        let mut out = Vec::with_capacity(header_len);
        out.push(0x40 | (header_len / 4) as u8);
        out.push(self.tos);
        out.extend_from_slice(&((header_len + payload_len) as u16).to_be_bytes());
        out.extend_from_slice(&self.id.to_be_bytes());
        let flags = (u16::from(self.dont_fragment) << 14)
            | (u16::from(self.more_fragments) << 13)
            | (self.fragment_offset & 0x1fff);
        out.extend_from_slice(&flags.to_be_bytes());
        out.push(self.ttl);
        out.push(protocol);
        out.extend_from_slice(&[0, 0]);
        out.extend_from_slice(&self.src.octets());
        out.extend_from_slice(&self.dst.octets());
        out.extend_from_slice(&options);
        let check = checksum(&[&out]);
        out[10..12].copy_from_slice(&check.to_be_bytes());
        out
    }
}

/// An IPv6 extension header.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Extension {
    /// Options (TLVs), padded with PadN to a multiple of 8 bytes.
    HopByHop(Vec<u8>),
    /// Options (TLVs), padded with PadN to a multiple of 8 bytes.
    DestinationOptions(Vec<u8>),
    /// Routing header; `data` (after type and segments left) is padded with zeros to fill
    /// 8-byte units. Only `segments_left = 0` keeps the IPv6 destination the final one.
    Routing {
        routing_type: u8,
        segments_left: u8,
        data: Vec<u8>,
    },
    /// Fragment header; `offset` in 8-byte units.
    Fragment { offset: u16, more: bool, id: u32 },
    /// Authentication header with an ICV of `icv_words` × 4 bytes (ICV bytes are zero).
    Authentication { spi: u32, seq: u32, icv_words: u8 },
}

impl Extension {
    pub fn protocol(&self) -> u8 {
        match self {
            Extension::HopByHop(_) => IPPROTO_HOPOPTS,
            Extension::DestinationOptions(_) => IPPROTO_DSTOPTS,
            Extension::Routing { .. } => IPPROTO_ROUTING,
            Extension::Fragment { .. } => IPPROTO_FRAGMENT,
            Extension::Authentication { .. } => IPPROTO_AH,
        }
    }

    /// The header bytes, with `next` as its next header.
    pub fn bytes(&self, next: u8) -> Vec<u8> {
        match self {
            Extension::HopByHop(options) | Extension::DestinationOptions(options) => {
                let mut out = vec![next, 0];
                out.extend_from_slice(options);
                let pad = (8 - out.len() % 8) % 8;
                match pad {
                    0 => {}
                    // Pad1.
                    1 => out.push(0),
                    // PadN: type 1, length, zeros.
                    n => {
                        out.push(1);
                        out.push((n - 2) as u8);
                        out.extend(std::iter::repeat_n(0, n - 2));
                    }
                }
                out[1] = (out.len() / 8 - 1) as u8;
                out
            }
            Extension::Routing {
                routing_type,
                segments_left,
                data,
            } => {
                let mut out = vec![next, 0, *routing_type, *segments_left];
                out.extend_from_slice(data);
                while !out.len().is_multiple_of(8) {
                    out.push(0);
                }
                out[1] = (out.len() / 8 - 1) as u8;
                out
            }
            Extension::Fragment { offset, more, id } => {
                let mut out = vec![next, 0];
                out.extend_from_slice(&((offset << 3) | u16::from(*more)).to_be_bytes());
                out.extend_from_slice(&id.to_be_bytes());
                out
            }
            Extension::Authentication {
                spi,
                seq,
                icv_words,
            } => {
                // Payload length: the header's length in 4-byte units, minus 2.
                let mut out = vec![next, 1 + icv_words, 0, 0];
                out.extend_from_slice(&spi.to_be_bytes());
                out.extend_from_slice(&seq.to_be_bytes());
                out.extend(std::iter::repeat_n(0, usize::from(*icv_words) * 4));
                out
            }
        }
    }
}

/// IPv6 header fields and the extension header chain, in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ipv6 {
    pub src: Ipv6Addr,
    pub dst: Ipv6Addr,
    pub traffic_class: u8,
    pub flow_label: u32,
    pub hop_limit: u8,
    pub extensions: Vec<Extension>,
}

impl Ipv6 {
    pub fn new(src: Ipv6Addr, dst: Ipv6Addr) -> Self {
        Self {
            src,
            dst,
            traffic_class: 0,
            flow_label: 0,
            hop_limit: 64,
            extensions: Vec::new(),
        }
    }

    /// Fixed header + extension chain for `protocol` and `payload_len` bytes after the chain.
    pub fn header(&self, protocol: u8, payload_len: usize) -> Vec<u8> {
        let mut chain = Vec::new();
        for (i, extension) in self.extensions.iter().enumerate() {
            let next = self
                .extensions
                .get(i + 1)
                .map_or(protocol, Extension::protocol);
            chain.extend_from_slice(&extension.bytes(next));
        }
        let first = self
            .extensions
            .first()
            .map_or(protocol, Extension::protocol);
        let mut out = Vec::with_capacity(40 + chain.len());
        let word =
            (6u32 << 28) | (u32::from(self.traffic_class) << 20) | (self.flow_label & 0xfffff);
        out.extend_from_slice(&word.to_be_bytes());
        out.extend_from_slice(&((chain.len() + payload_len) as u16).to_be_bytes());
        out.push(first);
        out.push(self.hop_limit);
        out.extend_from_slice(&self.src.octets());
        out.extend_from_slice(&self.dst.octets());
        out.extend_from_slice(&chain);
        out
    }
}

/// The network layer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Ip {
    V4(Ipv4),
    V6(Ipv6),
}

impl Ip {
    fn ether_type(&self) -> u16 {
        match self {
            Ip::V4(_) => ETH_P_IP,
            Ip::V6(_) => ETH_P_IPV6,
        }
    }

    fn header(&self, protocol: u8, payload_len: usize) -> Vec<u8> {
        match self {
            Ip::V4(v4) => v4.header(protocol, payload_len),
            Ip::V6(v6) => v6.header(protocol, payload_len),
        }
    }

    fn pseudo_header(&self, protocol: u8, l4_len: usize) -> Vec<u8> {
        match self {
            Ip::V4(v4) => pseudo_header_v4(v4.src, v4.dst, protocol, l4_len),
            Ip::V6(v6) => pseudo_header_v6(v6.src, v6.dst, protocol, l4_len),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tcp {
    pub src_port: u16,
    pub dst_port: u16,
    pub seq: u32,
    pub ack: u32,
    pub flags: u8,
    pub window: u16,
    /// Padded with zeros (end of options) to a multiple of 4 bytes.
    pub options: Vec<u8>,
    /// `None`: computed. `Some(x)`: written as is.
    pub checksum: Option<u16>,
}

impl Tcp {
    pub fn new(src_port: u16, dst_port: u16, flags: u8) -> Self {
        Self {
            src_port,
            dst_port,
            seq: 1000,
            ack: if flags & TCP_ACK != 0 { 2000 } else { 0 },
            flags,
            window: 64240,
            options: Vec::new(),
            checksum: None,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Udp {
    pub src_port: u16,
    pub dst_port: u16,
    /// `None`: computed (a computed 0 is sent as 0xffff). `Some(0)`: no checksum (IPv4).
    pub checksum: Option<u16>,
}

impl Udp {
    pub fn new(src_port: u16, dst_port: u16) -> Self {
        Self {
            src_port,
            dst_port,
            checksum: None,
        }
    }
}

/// ICMP or ICMPv6 (by the IP family): type, code, the 4 bytes after the checksum; the message
/// body (for errors: the quoted packet) is the packet's payload.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Icmp {
    pub kind: u8,
    pub code: u8,
    pub rest: [u8; 4],
    pub checksum: Option<u16>,
}

/// The transport layer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum L4 {
    Tcp(Tcp),
    Udp(Udp),
    Icmp(Icmp),
    /// Any other protocol: the payload follows the IP header as is.
    Other(u8),
}

impl L4 {
    fn protocol(&self, ip: &Ip) -> u8 {
        match (self, ip) {
            (L4::Tcp(_), _) => IPPROTO_TCP,
            (L4::Udp(_), _) => IPPROTO_UDP,
            (L4::Icmp(_), Ip::V4(_)) => IPPROTO_ICMP,
            (L4::Icmp(_), Ip::V6(_)) => IPPROTO_ICMPV6,
            (L4::Other(protocol), _) => *protocol,
        }
    }
}

/// A whole frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Packet {
    pub eth: Ethernet,
    pub ip: Ip,
    pub l4: L4,
    pub payload: Vec<u8>,
}

impl Packet {
    pub fn tcp(ip: Ip, tcp: Tcp) -> Self {
        Self {
            eth: Ethernet::default(),
            ip,
            l4: L4::Tcp(tcp),
            payload: Vec::new(),
        }
    }

    pub fn udp(ip: Ip, udp: Udp, payload: &[u8]) -> Self {
        Self {
            eth: Ethernet::default(),
            ip,
            l4: L4::Udp(udp),
            payload: payload.to_vec(),
        }
    }

    /// An ICMP(v6) message whose body is `body` (for errors: the quoted packet's L3 bytes).
    pub fn icmp(ip: Ip, kind: u8, code: u8, rest: [u8; 4], body: &[u8]) -> Self {
        Self {
            eth: Ethernet::default(),
            ip,
            l4: L4::Icmp(Icmp {
                kind,
                code,
                rest,
                checksum: None,
            }),
            payload: body.to_vec(),
        }
    }

    pub fn with_payload(mut self, payload: &[u8]) -> Self {
        self.payload = payload.to_vec();
        self
    }

    /// The transport header and payload, checksum included.
    pub fn l4_bytes(&self) -> Vec<u8> {
        let protocol = self.l4.protocol(&self.ip);
        let mut out = match &self.l4 {
            L4::Tcp(tcp) => {
                let mut options = tcp.options.clone();
                while !options.len().is_multiple_of(4) {
                    options.push(0);
                }
                let header_len = 20 + options.len();
                let mut out = Vec::with_capacity(header_len);
                out.extend_from_slice(&tcp.src_port.to_be_bytes());
                out.extend_from_slice(&tcp.dst_port.to_be_bytes());
                out.extend_from_slice(&tcp.seq.to_be_bytes());
                out.extend_from_slice(&tcp.ack.to_be_bytes());
                out.push(((header_len / 4) as u8) << 4);
                out.push(tcp.flags);
                out.extend_from_slice(&tcp.window.to_be_bytes());
                out.extend_from_slice(&[0, 0, 0, 0]);
                out.extend_from_slice(&options);
                out
            }
            L4::Udp(udp) => {
                let mut out = Vec::with_capacity(8);
                out.extend_from_slice(&udp.src_port.to_be_bytes());
                out.extend_from_slice(&udp.dst_port.to_be_bytes());
                out.extend_from_slice(&((8 + self.payload.len()) as u16).to_be_bytes());
                out.extend_from_slice(&[0, 0]);
                out
            }
            L4::Icmp(icmp) => {
                let mut out = vec![icmp.kind, icmp.code, 0, 0];
                out.extend_from_slice(&icmp.rest);
                out
            }
            L4::Other(_) => Vec::new(),
        };
        out.extend_from_slice(&self.payload);
        let len = out.len();
        let (offset, fixed) = match &self.l4 {
            L4::Tcp(tcp) => (16, tcp.checksum),
            L4::Udp(udp) => (6, udp.checksum),
            L4::Icmp(icmp) => (2, icmp.checksum),
            L4::Other(_) => return out,
        };
        let check = fixed.unwrap_or_else(|| {
            let computed = match (&self.l4, &self.ip) {
                // ICMPv4 has no pseudo-header.
                (L4::Icmp(_), Ip::V4(_)) => checksum(&[&out]),
                _ => checksum(&[&self.ip.pseudo_header(protocol, len), &out]),
            };
            match (&self.l4, computed) {
                // RFC 768: a computed zero is transmitted as all ones.
                (L4::Udp(_), 0) => 0xffff,
                (_, sum) => sum,
            }
        });
        out[offset..offset + 2].copy_from_slice(&check.to_be_bytes());
        out
    }

    /// The IP packet (no Ethernet header): what an ICMP error quotes.
    pub fn ip_bytes(&self) -> Vec<u8> {
        let l4 = self.l4_bytes();
        let mut out = self.ip.header(self.l4.protocol(&self.ip), l4.len());
        out.extend_from_slice(&l4);
        out
    }

    /// The frame.
    pub fn build(&self) -> Vec<u8> {
        frame(&self.eth, self.ip.ether_type(), &self.ip_bytes())
    }

    /// The datagram cut into two fragments: the first carries `first_len` bytes (a multiple of
    /// 8) of the transport header and payload, the second the rest. IPv4 uses the MF flag and
    /// fragment offset; IPv6 appends a fragment header to the extension chain.
    pub fn fragments(&self, first_len: usize, id: u32) -> [Vec<u8>; 2] {
        assert!(
            first_len.is_multiple_of(8),
            "fragment data must be a multiple of 8 bytes"
        );
        let l4 = self.l4_bytes();
        assert!(first_len < l4.len(), "nothing left for the second fragment");
        let protocol = self.l4.protocol(&self.ip);
        let parts = [
            (&l4[..first_len], 0u16, true),
            (&l4[first_len..], (first_len / 8) as u16, false),
        ];
        parts.map(|(data, offset, more)| {
            let header = match &self.ip {
                Ip::V4(v4) => Ipv4 {
                    id: id as u16,
                    more_fragments: more,
                    fragment_offset: offset,
                    ..v4.clone()
                }
                .header(protocol, data.len()),
                Ip::V6(v6) => {
                    let mut v6 = v6.clone();
                    v6.extensions.push(Extension::Fragment { offset, more, id });
                    v6.header(protocol, data.len())
                }
            };
            let mut ip = header;
            ip.extend_from_slice(data);
            frame(&self.eth, self.ip.ether_type(), &ip)
        })
    }
}

/// Ethernet header + `payload`.
pub fn frame(eth: &Ethernet, ether_type: u16, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(ETH_HLEN + payload.len());
    out.extend_from_slice(&eth.dst);
    out.extend_from_slice(&eth.src);
    out.extend_from_slice(&ether_type.to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// An ARP request (who has `target`? tell `sender`), broadcast.
pub fn arp_request(sender: Ipv4Addr, target: Ipv4Addr) -> Vec<u8> {
    let eth = Ethernet {
        dst: [0xff; 6],
        ..Ethernet::default()
    };
    let mut arp = vec![0, 1, 8, 0, 6, 4, 0, 1];
    arp.extend_from_slice(&eth.src);
    arp.extend_from_slice(&sender.octets());
    arp.extend_from_slice(&[0; 6]);
    arp.extend_from_slice(&target.octets());
    frame(&eth, ETH_P_ARP, &arp)
}

/// A checksum the verifier found and checked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Checked {
    Ipv4Header,
    Tcp,
    Udp,
    /// IPv4 UDP without a checksum (zero): nothing to check.
    UdpNone,
    Icmp,
    Icmpv6,
    /// The IPv4 header quoted by an ICMP error.
    QuotedIpv4Header,
}

fn be16(bytes: &[u8], at: usize) -> Result<u16, String> {
    bytes
        .get(at..at + 2)
        .map(|b| u16::from_be_bytes([b[0], b[1]]))
        .ok_or_else(|| format!("truncated at byte {at}"))
}

fn slice(bytes: &[u8], from: usize, to: usize) -> Result<&[u8], String> {
    bytes
        .get(from..to)
        .ok_or_else(|| format!("bytes {from}..{to} beyond the end ({})", bytes.len()))
}

/// Checks every checksum of a frame from scratch, independently of the builder: the IPv4 header
/// checksum, the TCP/UDP checksum with the v4/v6 pseudo-header, the ICMP/ICMPv6 checksum, and
/// the IPv4 header quoted by an ICMP error. Fragments only get their IPv4 header checked (the L4
/// checksum covers the whole datagram). Returns what it checked, in order, or what was wrong.
pub fn verify_checksums(frame: &[u8]) -> Result<Vec<Checked>, String> {
    let mut checked = Vec::new();
    let ether_type = be16(frame, 12)?;
    let l3 = &frame[ETH_HLEN..];
    // (protocol, L4 bytes, pseudo-header source, is fragment)
    let (protocol, l4, pseudo, fragment): (u8, &[u8], Pseudo, bool) = match ether_type {
        ETH_P_IP => {
            let header_len = usize::from(*l3.first().ok_or("no IPv4 header")? & 0x0f) * 4;
            if l3[0] >> 4 != 4 || header_len < 20 {
                return Err(format!("bad IPv4 version/IHL byte {:#04x}", l3[0]));
            }
            let header = slice(l3, 0, header_len)?;
            if ones_complement_sum(&[header]) != 0xffff {
                return Err(format!(
                    "IPv4 header checksum {:#06x} wrong",
                    be16(header, 10)?
                ));
            }
            checked.push(Checked::Ipv4Header);
            let total_len = usize::from(be16(l3, 2)?);
            let flags = be16(l3, 6)?;
            let src: [u8; 4] = slice(l3, 12, 16)?.try_into().unwrap();
            let dst: [u8; 4] = slice(l3, 16, 20)?.try_into().unwrap();
            (
                l3[9],
                slice(l3, header_len, total_len)?,
                Pseudo::V4(src.into(), dst.into()),
                flags & 0x3fff != 0,
            )
        }
        ETH_P_IPV6 => {
            let payload_len = usize::from(be16(l3, 4)?);
            let packet = slice(l3, 0, 40 + payload_len)?;
            let src: [u8; 16] = slice(l3, 8, 24)?.try_into().unwrap();
            let dst: [u8; 16] = slice(l3, 24, 40)?.try_into().unwrap();
            let mut next = l3[6];
            let mut offset = 40;
            let mut fragment = false;
            loop {
                let len = match next {
                    IPPROTO_HOPOPTS | IPPROTO_DSTOPTS => {
                        (usize::from(*packet.get(offset + 1).ok_or("cut extension")?) + 1) * 8
                    }
                    IPPROTO_ROUTING => {
                        if *packet.get(offset + 3).ok_or("cut routing header")? != 0 {
                            return Err("routing header with segments left: the pseudo-header \
                                        destination would be another address"
                                .into());
                        }
                        (usize::from(packet[offset + 1]) + 1) * 8
                    }
                    IPPROTO_FRAGMENT => {
                        // Offset 0 without "more fragments" is an atomic fragment: whole.
                        fragment |= be16(packet, offset + 2)? & 0xfff9 != 0;
                        8
                    }
                    IPPROTO_AH => {
                        (usize::from(*packet.get(offset + 1).ok_or("cut extension")?) + 2) * 4
                    }
                    _ => break,
                };
                next = *packet.get(offset).ok_or("cut extension")?;
                offset += len;
            }
            (
                next,
                slice(packet, offset, packet.len())?,
                Pseudo::V6(src.into(), dst.into()),
                fragment,
            )
        }
        other => return Err(format!("not IP: ether type {other:#06x}")),
    };
    if fragment {
        return Ok(checked);
    }
    let pseudo_header = |protocol| match pseudo {
        Pseudo::V4(src, dst) => pseudo_header_v4(src, dst, protocol, l4.len()),
        Pseudo::V6(src, dst) => pseudo_header_v6(src, dst, protocol, l4.len()),
    };
    match protocol {
        IPPROTO_TCP | IPPROTO_UDP => {
            if protocol == IPPROTO_UDP && be16(l4, 6)? == 0 {
                if matches!(pseudo, Pseudo::V6(..)) {
                    return Err("IPv6 UDP with a zero checksum".into());
                }
                checked.push(Checked::UdpNone);
            } else {
                if ones_complement_sum(&[&pseudo_header(protocol), l4]) != 0xffff {
                    return Err(format!("{protocol} checksum wrong"));
                }
                checked.push(if protocol == IPPROTO_TCP {
                    Checked::Tcp
                } else {
                    Checked::Udp
                });
            }
        }
        IPPROTO_ICMP | IPPROTO_ICMPV6 => {
            let sum = if protocol == IPPROTO_ICMP {
                ones_complement_sum(&[l4])
            } else {
                ones_complement_sum(&[&pseudo_header(protocol), l4])
            };
            if sum != 0xffff {
                return Err(format!("ICMP (protocol {protocol}) checksum wrong"));
            }
            checked.push(if protocol == IPPROTO_ICMP {
                Checked::Icmp
            } else {
                Checked::Icmpv6
            });
            let quoted = slice(l4, 8, l4.len())?;
            if protocol == IPPROTO_ICMP && quoted.len() >= 20 && quoted[0] >> 4 == 4 {
                let header_len = usize::from(quoted[0] & 0x0f) * 4;
                let header = slice(quoted, 0, header_len)?;
                if ones_complement_sum(&[header]) != 0xffff {
                    return Err("quoted IPv4 header checksum wrong".into());
                }
                checked.push(Checked::QuotedIpv4Header);
            }
        }
        _ => {}
    }
    Ok(checked)
}

#[derive(Clone, Copy)]
enum Pseudo {
    V4(Ipv4Addr, Ipv4Addr),
    V6(Ipv6Addr, Ipv6Addr),
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 1071 section 3's example: 0001 f203 f4f5 f6f7 sums to ddf2.
    #[test]
    fn rfc1071_example() {
        let data = [0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7];
        assert_eq!(ones_complement_sum(&[&data]), 0xddf2);
        assert_eq!(checksum(&[&data]), !0xddf2);
    }

    /// The classic example header 4500 0073 0000 4000 4011 b861 c0a8 0001 c0a8 00c7.
    #[test]
    fn known_ipv4_header() {
        let ip = Ipv4 {
            id: 0,
            dont_fragment: true,
            ..Ipv4::new(
                Ipv4Addr::new(192, 168, 0, 1),
                Ipv4Addr::new(192, 168, 0, 199),
            )
        };
        let header = ip.header(IPPROTO_UDP, 0x73 - 20);
        assert_eq!(&header[10..12], &[0xb8, 0x61]);
    }

    #[test]
    fn built_packets_verify() {
        let v4 = Ip::V4(Ipv4 {
            options: vec![0x94, 0x04, 0, 0],
            ..Ipv4::new(Ipv4Addr::new(198, 18, 0, 1), Ipv4Addr::new(198, 18, 0, 2))
        });
        let v6 = Ip::V6(Ipv6 {
            extensions: vec![
                Extension::HopByHop(vec![]),
                Extension::Routing {
                    routing_type: 4,
                    segments_left: 0,
                    data: vec![0; 20],
                },
                Extension::Authentication {
                    spi: 1,
                    seq: 2,
                    icv_words: 3,
                },
                Extension::DestinationOptions(vec![]),
            ],
            ..Ipv6::new("fd00::1".parse().unwrap(), "fd00::2".parse().unwrap())
        });
        for ip in [v4, v6] {
            let tcp = Packet::tcp(ip.clone(), Tcp::new(1, 2, TCP_SYN)).with_payload(b"odd");
            let udp = Packet::udp(ip.clone(), Udp::new(1, 2), b"hello");
            assert!(
                verify_checksums(&tcp.build())
                    .unwrap()
                    .contains(&Checked::Tcp)
            );
            assert!(
                verify_checksums(&udp.build())
                    .unwrap()
                    .contains(&Checked::Udp)
            );
            let icmp = Packet::icmp(ip.clone(), 3, 4, [0, 0, 5, 220], &udp.ip_bytes());
            let checked = verify_checksums(&icmp.build()).unwrap();
            assert!(checked.contains(&Checked::Icmp) || checked.contains(&Checked::Icmpv6));
        }
    }

    #[test]
    fn udp_zero_checksum_and_fragments() {
        let v4 = Ip::V4(Ipv4::new(
            Ipv4Addr::new(198, 18, 0, 1),
            Ipv4Addr::new(198, 18, 0, 2),
        ));
        let mut udp = Packet::udp(v4, Udp::new(1, 2), &[9; 100]);
        let [first, later] = udp.fragments(48, 1);
        assert_eq!(verify_checksums(&first).unwrap(), [Checked::Ipv4Header]);
        assert_eq!(verify_checksums(&later).unwrap(), [Checked::Ipv4Header]);
        assert_eq!(first.len() + later.len(), udp.build().len() + ETH_HLEN + 20);
        udp.l4 = L4::Udp(Udp {
            checksum: Some(0),
            ..Udp::new(1, 2)
        });
        assert_eq!(
            verify_checksums(&udp.build()).unwrap(),
            [Checked::Ipv4Header, Checked::UdpNone]
        );
        // An atomic fragment (offset 0, no more fragments) is a whole datagram.
        let v6 = Ip::V6(Ipv6 {
            extensions: vec![Extension::Fragment {
                offset: 0,
                more: false,
                id: 3,
            }],
            ..Ipv6::new("fd00::1".parse().unwrap(), "fd00::2".parse().unwrap())
        });
        let udp6 = Packet::udp(v6, Udp::new(1, 2), b"whole");
        assert_eq!(verify_checksums(&udp6.build()).unwrap(), [Checked::Udp]);
    }

    #[test]
    fn corrupted_checksums_fail() {
        let ip = Ip::V4(Ipv4::new(
            Ipv4Addr::new(198, 18, 0, 1),
            Ipv4Addr::new(198, 18, 0, 2),
        ));
        let mut frame = Packet::udp(ip, Udp::new(1, 2), b"x").build();
        *frame.last_mut().unwrap() ^= 1;
        assert!(verify_checksums(&frame).is_err());
        frame[ETH_HLEN + 8] ^= 1;
        assert!(verify_checksums(&frame).is_err());
    }
}
