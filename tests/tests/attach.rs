//! The pipeline end to end: the daemon's loader attaches the real XDP program to a veth in a
//! namespace, real UDP packets cross it, and the per-CPU counters read through the daemon's
//! code path count exactly what was sent.

use std::{net::UdpSocket, time::Duration};

use splitter::dataplane::{Dataplane, LoadOptions, XdpMode};
use splitter_common::Reason;
use splitter_tests::{
    netns::{Netns, unique, veth},
    require_privileges,
};

const PACKETS: u64 = 500;

fn send_udp(from: &Netns, count: u64) {
    from.run(move || {
        let socket = UdpSocket::bind("198.18.0.1:0").expect("bind client socket");
        for i in 0..count {
            socket
                .send_to(&i.to_be_bytes(), "198.18.0.2:9")
                .expect("send");
        }
    });
    // Let the receiving side's softirq finish.
    std::thread::sleep(Duration::from_millis(200));
}

#[test]
fn attached_program_counts_every_packet_sent() {
    if !require_privileges("attached_program_counts_every_packet_sent") {
        return;
    }
    let client = Netns::new(&unique("att-c"));
    let host = Netns::new(&unique("att-h"));
    veth(&client, "eth0", &host, "eth0");
    for ns in [&client, &host] {
        // No IPv6 neighbour discovery or router solicitations: only our packets cross.
        ns.sysctl("net.ipv6.conf.all.disable_ipv6", "1");
    }
    client.ip(&["addr", "add", "198.18.0.1/24", "dev", "eth0"]);
    host.ip(&["addr", "add", "198.18.0.2/24", "dev", "eth0"]);
    // Static neighbours: no ARP either.
    let host_mac = host.exec(&["cat", "/sys/class/net/eth0/address"]).stdout;
    let host_mac = String::from_utf8_lossy(&host_mac).trim().to_owned();
    client.ip(&[
        "neigh",
        "replace",
        "198.18.0.2",
        "lladdr",
        &host_mac,
        "dev",
        "eth0",
        "nud",
        "permanent",
    ]);

    let mut dataplane = Dataplane::load(&LoadOptions::default()).expect("load the eBPF object");

    // Not attached yet: packets cross, nothing is counted.
    send_udp(&client, 50);
    let before = dataplane.maps.verdict(Reason::NotService).unwrap();
    assert_eq!(
        before, 0,
        "a program that is not attached must count nothing"
    );

    let dataplane = host.run(move || {
        dataplane
            .attach("eth0", XdpMode::Native)
            .expect("attach XDP (native) + TC to eth0");
        dataplane
    });
    send_udp(&client, PACKETS);
    let verdicts = dataplane.maps.verdicts().unwrap();
    let total: u64 = verdicts.iter().map(|(_, count)| count).sum();
    let not_service = dataplane.maps.verdict(Reason::NotService).unwrap();
    assert_eq!(
        not_service, PACKETS,
        "every UDP packet sent to a non-service address counts as not_service: {verdicts:?}"
    );
    assert_eq!(total, PACKETS, "no other verdicts expected: {verdicts:?}");
}
