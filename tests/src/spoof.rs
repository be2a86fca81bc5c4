//! Forged packets from the client side, for attack tests: frames built with [`crate::packet`]
//! sent by a raw `AF_PACKET` socket on the client namespace's veth, addressed to the router's
//! MAC, so they meet the splitter's XDP program as forged packets from the wire would (the
//! client's own TCP stack never sees them). Sending is paced: a veth's receive ring holds 256
//! frames, and a burst beyond it is dropped before any program sees it.

use std::{
    net::{Ipv4Addr, SocketAddr, SocketAddrV4},
    time::Duration,
};

use splitter::dataplane::services::{Protocol, addr_of};
use splitter_common::{
    FlowKey,
    hash::{flow_hash, is_green},
};

use crate::{
    netns::Netns,
    packet::{Ethernet, Ip, Ipv4, Packet, Tcp},
};

/// Frames per burst before a pause (well under a veth ring's 256).
const BURST: usize = 32;
const PAUSE: Duration = Duration::from_millis(1);

/// The MAC address of `dev` in `ns` (`ip -br link`).
pub fn mac(ns: &Netns, dev: &str) -> [u8; 6] {
    let out = ns.ip(&["-br", "link", "show", "dev", dev]);
    let text = String::from_utf8_lossy(&out.stdout);
    let field = text
        .split_whitespace()
        .nth(2)
        .unwrap_or_else(|| panic!("no MAC in `{text}`"));
    let bytes: Vec<u8> = field
        .split(':')
        .map(|byte| u8::from_str_radix(byte, 16).expect("hex MAC"))
        .collect();
    bytes.try_into().expect("6-byte MAC")
}

/// Builds forged IPv4 TCP segments as the client's link would carry them to the router.
pub struct Forger {
    eth: Ethernet,
}

impl Forger {
    /// Frames from the MAC of `client`'s `client_dev` to the MAC of `router`'s `router_dev`.
    pub fn new(client: &Netns, client_dev: &str, router: &Netns, router_dev: &str) -> Self {
        Self {
            eth: Ethernet {
                dst: mac(router, router_dev),
                src: mac(client, client_dev),
            },
        }
    }

    /// A TCP segment `from` → `to` with `flags`, `seq` and `ack`.
    pub fn tcp(
        &self,
        from: SocketAddrV4,
        to: SocketAddrV4,
        flags: u8,
        seq: u32,
        ack: u32,
    ) -> Vec<u8> {
        let mut tcp = Tcp::new(from.port(), to.port(), flags);
        tcp.seq = seq;
        tcp.ack = ack;
        let mut packet = Packet::tcp(Ip::V4(Ipv4::new(*from.ip(), *to.ip())), tcp);
        packet.eth = self.eth.clone();
        packet.build()
    }
}

/// Sends `frames` on `dev` of `ns` (paced); returns how many the socket accepted.
pub fn send(ns: &Netns, dev: &str, frames: Vec<Vec<u8>>) -> usize {
    send_in(&ns.name, dev, frames)
}

/// [`send`] in the namespace named `ns` (for threads that do not hold the [`Netns`]).
pub fn send_in(ns: &str, dev: &str, frames: Vec<Vec<u8>>) -> usize {
    let dev = std::ffi::CString::new(dev).expect("interface name");
    let path = format!("/run/netns/{ns}");
    let sender = std::thread::spawn(move || {
        crate::netns::enter(&path);
        // SAFETY: plain socket calls on a socket this closure owns; every pointer passed
        // points to a live local of the stated size.
        unsafe {
            // Protocol 0: the socket sends only and receives nothing.
            let fd = libc::socket(libc::AF_PACKET, libc::SOCK_RAW, 0);
            assert!(
                fd >= 0,
                "AF_PACKET socket: {}",
                std::io::Error::last_os_error()
            );
            let ifindex = libc::if_nametoindex(dev.as_ptr());
            assert!(ifindex > 0, "no interface {dev:?} in the namespace");
            let mut address: libc::sockaddr_ll = std::mem::zeroed();
            address.sll_family = libc::AF_PACKET as u16;
            address.sll_ifindex = ifindex as i32;
            address.sll_halen = 6;
            let mut sent = 0;
            for (index, frame) in frames.iter().enumerate() {
                address.sll_addr[..6].copy_from_slice(&frame[..6]);
                let n = libc::sendto(
                    fd,
                    frame.as_ptr().cast(),
                    frame.len(),
                    0,
                    std::ptr::from_ref(&address).cast(),
                    std::mem::size_of::<libc::sockaddr_ll>() as u32,
                );
                if n == frame.len() as isize {
                    sent += 1;
                }
                if index % BURST == BURST - 1 {
                    std::thread::sleep(PAUSE);
                }
            }
            libc::close(fd);
            sent
        }
    });
    sender.join().expect("the sender thread does not panic")
}

/// Whether a new TCP flow `client` → `vip` goes green at `weight_ppm` with `seed` (the
/// contract's hash, `flow` cohort).
pub fn hashes_green(client: SocketAddr, vip: SocketAddr, seed: u32, weight_ppm: u32) -> bool {
    let (src, family) = addr_of(&client);
    let (dst, _) = addr_of(&vip);
    let key = FlowKey {
        src,
        dst,
        src_port: client.port().to_be(),
        dst_port: vip.port().to_be(),
        protocol: Protocol::Tcp.number(),
        family: family as u8,
        _pad: [0; 2],
    };
    is_green(flow_hash(&key, seed), weight_ppm)
}

/// `count` source ports of `from` whose flows to `vip` go green at `weight_ppm` (green at
/// every higher weight too: the split is monotone).
pub fn green_ports(
    from: Ipv4Addr,
    vip: SocketAddr,
    seed: u32,
    weight_ppm: u32,
    count: usize,
) -> Vec<u16> {
    let ports: Vec<u16> = (1024..=u16::MAX)
        .filter(|port| hashes_green(SocketAddr::new(from.into(), *port), vip, seed, weight_ppm))
        .take(count)
        .collect();
    assert_eq!(ports.len(), count, "not enough green ports from {from}");
    ports
}
