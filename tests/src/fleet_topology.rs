//! Two splitter hosts of one fleet in front of the same backends, for flows that ECMP moves
//! from one host to the other mid-connection (`tests/tests/fleet.rs`).
//!
//! Every host sits on two shared L2 segments (bridges in a switch namespace): the client's
//! segment, where the client picks the host by its route to the service addresses (as an ECMP
//! router's hash would), and the backends' segment, where each backend's default route picks
//! the host its replies go back through. So moving a flow is two route changes, no address
//! changes: the client and the backends keep talking on the same 4-tuple.
//!
//! ```text
//!                          switch namespace
//!  client 198.18.0.1 ── [front] ── eth0 router a 198.18.0.254 eth1 ── [back] ── blue  198.18.1.10, .11
//!                               └─ eth0 router b 198.18.0.253 eth1 ─┘        └─ green 198.18.2.10, .11
//!  router a on the back segment: 198.18.1.1 and 198.18.2.1; router b: 198.18.1.2 and 198.18.2.2
//!  (IPv6: client fd00::1, a fd00::fe, b fd00::fd; a fd00:1::1 / fd00:2::1, b ::2; backends
//!   as in `daemon_harness`)
//! ```
//!
//! The hosts are two [`Lab`]s sharing the client and backend namespaces: each lab runs its own
//! daemon (own work directory, bpffs, socket, state) in its own router namespace, so every
//! `Lab` helper (CLI, status, split, connect) works per host. Both labs' guards delete the
//! shared namespaces on drop; whichever drops first removes them, the other's delete finds
//! nothing (`ip netns del` of a missing namespace is ignored).

use std::net::IpAddr;

use crate::{
    daemon_harness::{
        BLUE, BLUE6, CLIENT, CLIENT6, GREEN, GREEN6, Lab, Topology, WorkDir, backend_servers,
        splitter_binary,
    },
    netns::{Netns, unique, veth},
    resets::{self, ResetTrace, Role, Roles},
};

/// Each host's address on the client's segment, and its two on the backends' segment.
pub const HOSTS: [HostAddresses; 2] = [
    HostAddresses {
        front: ("198.18.0.254", "fd00::fe"),
        blue_side: ("198.18.1.1", "fd00:1::1"),
        green_side: ("198.18.2.1", "fd00:2::1"),
    },
    HostAddresses {
        front: ("198.18.0.253", "fd00::fd"),
        blue_side: ("198.18.1.2", "fd00:1::2"),
        green_side: ("198.18.2.2", "fd00:2::2"),
    },
];

/// The service addresses (`198.18.100.0/24`, `fd00:100::/64`) the client routes to a host.
const SERVICES_V4: &str = "198.18.100.0/24";
const SERVICES_V6: &str = "fd00:100::/64";

/// One host's addresses (IPv4, IPv6).
pub struct HostAddresses {
    pub front: (&'static str, &'static str),
    pub blue_side: (&'static str, &'static str),
    pub green_side: (&'static str, &'static str),
}

/// The two hosts (labs `a` and `b`) and the switch between everything.
pub struct Ecmp {
    /// Host a (index 0) and b (index 1). Dropped before the switch.
    pub hosts: Vec<Lab>,
    pub switch: Netns,
}

fn alias(ns: &Netns) -> Netns {
    Netns {
        name: ns.name.clone(),
    }
}

impl Ecmp {
    /// Builds the namespaces, starts the backends' servers; no daemon yet. The client and
    /// the backends route through host a. `tag` must be short.
    pub fn new(tag: &str) -> Self {
        let switch = Netns::new(&unique(&format!("{tag}-s")));
        switch.bridge("front");
        switch.bridge("back");
        let client = Netns::new(&unique(&format!("{tag}-c")));
        let blue = Netns::new(&unique(&format!("{tag}-b")));
        let green = Netns::new(&unique(&format!("{tag}-g")));
        let routers = [
            Netns::new(&unique(&format!("{tag}-ra"))),
            Netns::new(&unique(&format!("{tag}-rb"))),
        ];
        for ns in [&client, &blue, &green, &routers[0], &routers[1]] {
            ns.sysctls(&[
                ("net.ipv6.conf.default.accept_ra", "0"),
                ("net.ipv6.conf.default.router_solicitations", "0"),
                ("net.ipv6.conf.default.accept_dad", "0"),
                // Two routers on each segment: no redirect may teach a host a shortcut.
                ("net.ipv4.conf.all.accept_redirects", "0"),
                ("net.ipv4.conf.default.accept_redirects", "0"),
                ("net.ipv6.conf.all.accept_redirects", "0"),
                ("net.ipv6.conf.default.accept_redirects", "0"),
                ("net.ipv4.conf.all.send_redirects", "0"),
                ("net.ipv4.conf.default.send_redirects", "0"),
            ]);
        }
        let port = |ns: &Netns, ifname: &str, peer: &str, bridge: &str| {
            veth(ns, ifname, &switch, peer);
            switch.ip(&["link", "set", peer, "master", bridge]);
        };
        port(&client, "eth0", "c0", "front");
        port(&blue, "eth0", "bl0", "back");
        port(&green, "eth0", "gr0", "back");
        client.addr("eth0", &format!("{CLIENT}/24"));
        client.addr("eth0", &format!("{CLIENT6}/64"));
        for (index, (router, addresses)) in routers.iter().zip(&HOSTS).enumerate() {
            let name = ["a", "b"][index];
            port(router, "eth0", &format!("{name}0"), "front");
            port(router, "eth1", &format!("{name}1"), "back");
            router.forwarding(true);
            router.addr("eth0", &format!("{}/24", addresses.front.0));
            router.addr("eth0", &format!("{}/64", addresses.front.1));
            for (v4, v6) in [addresses.blue_side, addresses.green_side] {
                router.addr("eth1", &format!("{v4}/24"));
                router.addr("eth1", &format!("{v6}/64"));
            }
        }
        for (ns, addresses) in [
            (&blue, BLUE.iter().chain(&BLUE6)),
            (&green, GREEN.iter().chain(&GREEN6)),
        ] {
            for address in addresses {
                let prefix = if address.contains(':') { 64 } else { 24 };
                ns.addr("eth0", &format!("{address}/{prefix}"));
            }
            resets::one_cpu_per_flow(ns, "eth0");
        }
        let mut servers = vec![
            backend_servers(&blue, &[BLUE[0], BLUE[1], BLUE6[0], BLUE6[1]]),
            backend_servers(&green, &[GREEN[0], GREEN[1], GREEN6[0], GREEN6[1]]),
        ];
        let binary = splitter_binary();
        // Host a owns the shared namespaces and the servers; host b names the same namespaces.
        let aliases = (alias(&client), alias(&blue), alias(&green));
        let hosts = routers
            .into_iter()
            .zip([(client, blue, green), aliases])
            .zip(["a", "b"])
            .map(|((router, (client, blue, green)), name)| {
                let host_tag = format!("{tag}{name}");
                Lab {
                    daemon: None,
                    servers: std::mem::take(&mut servers),
                    resets: ResetTrace::start(&host_tag),
                    work: WorkDir::new(&host_tag),
                    topology: Topology {
                        client,
                        router,
                        blue,
                        green,
                    },
                    binary: binary.clone(),
                }
            })
            .collect();
        let ecmp = Self { hosts, switch };
        ecmp.route_via(0);
        ecmp
    }

    /// Routes the client's service traffic and the backends' replies through host `index`
    /// (`ip route replace`: established connections keep their sockets, the next packet takes
    /// the new path).
    pub fn route_via(&self, index: usize) {
        let host = &HOSTS[index];
        let lab = &self.hosts[0];
        let topology = &lab.topology;
        for (prefix, gateway) in [(SERVICES_V4, host.front.0), (SERVICES_V6, host.front.1)] {
            topology
                .client
                .ip(&["route", "replace", prefix, "via", gateway]);
        }
        for (ns, (v4, v6)) in [
            (&topology.blue, host.blue_side),
            (&topology.green, host.green_side),
        ] {
            ns.ip(&["-4", "route", "replace", "default", "via", v4]);
            ns.ip(&["-6", "route", "replace", "default", "via", v6]);
        }
    }

    /// Takes host `index` off both segments (its links down): nothing can pass it any more.
    pub fn isolate(&self, index: usize) {
        let router = &self.hosts[index].topology.router;
        for link in ["eth0", "eth1"] {
            router.ip(&["link", "set", link, "down"]);
        }
    }

    /// Who is who, for [`ResetTrace::explain`].
    pub fn roles(&self) -> Roles {
        let ip = |a: &str| a.parse::<IpAddr>().expect("lab address");
        let mut roles = vec![(ip(CLIENT), Role::Client), (ip(CLIENT6), Role::Client)];
        for host in &HOSTS {
            for (v4, v6) in [host.front, host.blue_side, host.green_side] {
                roles.push((ip(v4), Role::SplitterHost));
                roles.push((ip(v6), Role::SplitterHost));
            }
        }
        for backend in BLUE.iter().chain(&GREEN).chain(&BLUE6).chain(&GREEN6) {
            roles.push((ip(backend), Role::Backend));
        }
        roles
    }

    /// Who sent the resets recorded so far (host a's trace: the tracepoint sees every host).
    pub fn explain_resets(&self) -> String {
        self.hosts[0].resets.explain(&self.roles(), None)
    }
}
