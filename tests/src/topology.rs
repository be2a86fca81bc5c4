//! End-to-end topologies: a client namespace, the splitter host (a router: forwarding on), and
//! one namespace per backend, blue and green, whose default route points at the splitter host.
//! Every topology is dual-stack. The service address (VIP) is assigned to no interface: the
//! client routes it to the splitter host, where the XDP program on the client-facing interface
//! `eth0` rewrites it to a backend and the kernel routes the packet on.
//!
//! Addresses (all inside the test's namespaces):
//!
//! | what                             | IPv4                  | IPv6                   |
//! |----------------------------------|-----------------------|------------------------|
//! | service (VIP)                    | 198.19.0.1            | fd00:5:99::1           |
//! | client segment                   | 198.18.1.0/24         | fd00:5:1::/64          |
//! | client `i`                       | 198.18.1.(1 + i)      | fd00:5:1::(1 + i)      |
//! | splitter host                    | .254 of each segment  | ::fe of each segment   |
//! | router (transit to the host)     | 198.18.0.1/24         | fd00:5::1/64           |
//! | backend `i` (routed)             | 198.18.(10 + i).1/24  | fd00:5:(10 + i)::1/64  |
//! | backend `i` (bridged, one-armed) | 198.18.2.(1 + i)/24   | fd00:5:2::(1 + i)/64   |
//!
//! With a router ([`Spec::router_mtu`]) the client segment's .254 / ::fe is the router, and the
//! splitter host sits at .254 / ::fe of the transit segment 198.18.0.0/24, fd00:5::/64.
//! Backend `i` counts blue backends first, then green ones; IPv6 groups are hexadecimal
//! (backend 0 of the routed layout is `fd00:5:a::1`).

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    time::Duration,
};

use splitter::dataplane::{
    Dataplane, XdpMode,
    pools::slots_needed,
    services::{BackendSpec, Protocol, ServiceSpec, addr_of},
};
use splitter_common::{Cohort, Color, Family, FlowKey, hash::DEFAULT_HASH_SEED};

use crate::{
    netns::{Netns, unique, veth},
    servers::Servers,
};

/// The port clients connect to on the VIP.
pub const SERVICE_PORT: u16 = 80;
/// The port backends listen on (differs from the service port so DNAT rewrites ports too).
pub const BACKEND_PORT: u16 = 8080;
/// The splitter host's client-facing interface (in every layout).
pub const CLIENT_IF: &str = "eth0";

/// Where the backends sit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Layout {
    /// Each backend on its own veth to the splitter host (its own subnet).
    Routed,
    /// All backends on one subnet behind a Linux bridge `br0` in the splitter host.
    Bridged,
    /// One L2 segment (a bridge in a separate switch namespace) for client, splitter host and
    /// backends; the splitter host has a single interface, with an address in the client's
    /// subnet and one in the backends' subnet, and forwards out the interface it received on.
    OneArmed,
}

/// What to build.
#[derive(Clone, Debug)]
pub struct Spec {
    /// Short (≤ 4 characters): namespace names are `spl<tag><role>-<pid>`.
    pub tag: &'static str,
    pub layout: Layout,
    pub blue: usize,
    pub green: usize,
    /// Addresses on the client's interface (for the client cohort); at least 1.
    pub clients: usize,
    /// A router between the client and the splitter host (not in the one-armed layout), whose
    /// interface towards the client has this MTU: packets bigger than that make it send ICMP
    /// "fragmentation needed" / "packet too big" back to their source, the service address.
    pub router_mtu: Option<u32>,
}

/// One backend: its own namespace with one interface `eth0`.
pub struct BackendHost {
    /// `blue-0`, `green-1`, ...: what its servers answer.
    pub name: String,
    pub color: Color,
    pub ns: Netns,
    pub v4: Ipv4Addr,
    pub v6: Ipv6Addr,
}

impl BackendHost {
    pub fn addr(&self, family: Family) -> IpAddr {
        match family {
            Family::Ipv4 => self.v4.into(),
            Family::Ipv6 => self.v6.into(),
        }
    }
}

/// A built topology; every namespace (and so every link) is removed on drop.
pub struct Topology {
    pub layout: Layout,
    pub client: Netns,
    pub host: Netns,
    /// The L2 switch of the one-armed layout.
    pub switch: Option<Netns>,
    /// The router of [`Spec::router_mtu`].
    pub router: Option<Netns>,
    pub backends: Vec<BackendHost>,
    pub clients_v4: Vec<Ipv4Addr>,
    pub clients_v6: Vec<Ipv6Addr>,
}

pub const VIP_V4: Ipv4Addr = Ipv4Addr::new(198, 19, 0, 1);
pub const VIP_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 5, 0x99, 0, 0, 0, 0, 1);

fn v4(c: u8, d: u8) -> Ipv4Addr {
    Ipv4Addr::new(198, 18, c, d)
}

fn v6(segment: u16, host: u16) -> Ipv6Addr {
    Ipv6Addr::new(0xfd00, 5, segment, 0, 0, 0, 0, host)
}

/// A namespace whose new interfaces skip IPv6 duplicate address detection (addresses usable at
/// once) and neither send nor accept redirects (the one-armed host forwards out the interface
/// it received on; a redirect would teach a backend to bypass it).
fn namespace(name: &str, forwarding: bool) -> Netns {
    let ns = Netns::new(name);
    ns.sysctls(&[
        ("net.ipv6.conf.all.accept_dad", "0"),
        ("net.ipv6.conf.default.accept_dad", "0"),
        ("net.ipv6.conf.all.accept_redirects", "0"),
        ("net.ipv6.conf.default.accept_redirects", "0"),
        ("net.ipv4.conf.all.accept_redirects", "0"),
        ("net.ipv4.conf.default.accept_redirects", "0"),
        ("net.ipv4.conf.all.send_redirects", "0"),
        ("net.ipv4.conf.default.send_redirects", "0"),
    ]);
    ns.forwarding(forwarding);
    ns
}

/// Both addresses (`/24`, `/64`) of a dual-stack host on `ifname`.
fn addrs(ns: &Netns, ifname: &str, v4: Ipv4Addr, v6: Ipv6Addr) {
    ns.addr(ifname, &format!("{v4}/24"));
    ns.addr(ifname, &format!("{v6}/64"));
}

/// Routes to `v4/32` and `v6/128` (or the default routes, with `None`) via the gateways.
fn routes(ns: &Netns, to: Option<(Ipv4Addr, Ipv6Addr)>, via: (Ipv4Addr, Ipv6Addr)) {
    let (to_v4, to_v6) = match to {
        Some((v4, v6)) => (format!("{v4}/32"), format!("{v6}/128")),
        None => ("default".to_owned(), "default".to_owned()),
    };
    ns.route(&to_v4, via.0);
    ns.route(&to_v6, via.1);
}

impl Topology {
    pub fn build(spec: &Spec) -> Self {
        assert!(spec.clients >= 1, "a topology needs at least one client");
        assert!(spec.blue + spec.green <= 64, "at most 64 backends");
        let client = namespace(&unique(&format!("{}c", spec.tag)), false);
        let host = namespace(&unique(&format!("{}h", spec.tag)), true);
        let switch = (spec.layout == Layout::OneArmed)
            .then(|| namespace(&unique(&format!("{}s", spec.tag)), false));

        let router = spec.router_mtu.map(|mtu| {
            assert!(
                spec.layout != Layout::OneArmed,
                "the one-armed layout has no router"
            );
            (namespace(&unique(&format!("{}r", spec.tag)), true), mtu)
        });

        // Client segment, and the transit segment behind a router.
        match (&switch, &router) {
            (Some(switch), _) => {
                switch.bridge("sw");
                veth(&client, "eth0", switch, "swc");
                veth(&host, CLIENT_IF, switch, "swh");
                for port in ["swc", "swh"] {
                    switch.ip(&["link", "set", port, "master", "sw"]);
                }
            }
            (None, Some((router, mtu))) => {
                veth(&client, "eth0", router, "lan");
                veth(router, "wan", &host, CLIENT_IF);
                router.ip(&["link", "set", "lan", "mtu", &mtu.to_string()]);
            }
            (None, None) => veth(&client, "eth0", &host, CLIENT_IF),
        }
        let clients_v4: Vec<Ipv4Addr> = (0..spec.clients).map(|i| v4(1, 1 + i as u8)).collect();
        let clients_v6: Vec<Ipv6Addr> = (0..spec.clients).map(|i| v6(1, 1 + i as u16)).collect();
        for (a, b) in clients_v4.iter().zip(&clients_v6) {
            addrs(&client, "eth0", *a, *b);
        }
        // The client's next hop: the splitter host, or the router in front of it.
        let (first_hop, first_hop_if) = match &router {
            Some((router, _)) => (router, "lan"),
            None => (&host, CLIENT_IF),
        };
        addrs(first_hop, first_hop_if, v4(1, 254), v6(1, 0xfe));
        if let Some((router, _)) = &router {
            addrs(router, "wan", v4(0, 1), v6(0, 1));
            addrs(&host, CLIENT_IF, v4(0, 254), v6(0, 0xfe));
            routes(router, None, (v4(0, 254), v6(0, 0xfe)));
            host.route(&format!("{}/24", v4(1, 0)), v4(0, 1));
            host.route(&format!("{}/64", v6(1, 0)), v6(0, 1));
        }
        routes(&client, Some((VIP_V4, VIP_V6)), (v4(1, 254), v6(1, 0xfe)));

        // Backend segment(s) on the splitter host.
        match spec.layout {
            Layout::Routed => {}
            Layout::Bridged => {
                host.bridge("br0");
                addrs(&host, "br0", v4(2, 254), v6(2, 0xfe));
            }
            Layout::OneArmed => addrs(&host, CLIENT_IF, v4(2, 254), v6(2, 0xfe)),
        }

        let colors = std::iter::repeat_n(Color::Blue, spec.blue)
            .enumerate()
            .chain(std::iter::repeat_n(Color::Green, spec.green).enumerate());
        let mut backends = Vec::new();
        for (i, (n, color)) in colors.enumerate() {
            let label = match color {
                Color::Blue => "blue",
                Color::Green => "green",
            };
            let ns = namespace(&unique(&format!("{}{}{n}", spec.tag, &label[..1])), false);
            // The peer's name on the host or switch side.
            let peer = format!("{label}{n}");
            let (backend_v4, backend_v6, gateway_v4, gateway_v6) = match spec.layout {
                Layout::Routed => {
                    let segment = 10 + i as u8;
                    veth(&ns, "eth0", &host, &peer);
                    addrs(&host, &peer, v4(segment, 254), v6(segment as u16, 0xfe));
                    (
                        v4(segment, 1),
                        v6(segment as u16, 1),
                        v4(segment, 254),
                        v6(segment as u16, 0xfe),
                    )
                }
                Layout::Bridged | Layout::OneArmed => {
                    let (bridge_ns, bridge_name) = match &switch {
                        Some(switch) => (switch, "sw"),
                        None => (&host, "br0"),
                    };
                    veth(&ns, "eth0", bridge_ns, &peer);
                    bridge_ns.ip(&["link", "set", &peer, "master", bridge_name]);
                    (
                        v4(2, 1 + i as u8),
                        v6(2, 1 + i as u16),
                        v4(2, 254),
                        v6(2, 0xfe),
                    )
                }
            };
            addrs(&ns, "eth0", backend_v4, backend_v6);
            routes(&ns, None, (gateway_v4, gateway_v6));
            backends.push(BackendHost {
                name: format!("{label}-{n}"),
                color,
                ns,
                v4: backend_v4,
                v6: backend_v6,
            });
        }
        Self {
            layout: spec.layout,
            client,
            host,
            switch,
            router: router.map(|(router, _)| router),
            backends,
            clients_v4,
            clients_v6,
        }
    }

    pub fn vip(&self, family: Family) -> IpAddr {
        match family {
            Family::Ipv4 => VIP_V4.into(),
            Family::Ipv6 => VIP_V6.into(),
        }
    }

    /// Client address `i` of `family`.
    pub fn client_addr(&self, family: Family, i: usize) -> IpAddr {
        match family {
            Family::Ipv4 => self.clients_v4[i].into(),
            Family::Ipv6 => self.clients_v6[i].into(),
        }
    }

    /// Starts a TCP and a UDP server on [`BACKEND_PORT`] of both addresses of every backend.
    pub fn start_servers(&self) -> Servers {
        let mut servers = Servers::new();
        for backend in &self.backends {
            for family in [Family::Ipv4, Family::Ipv6] {
                let at = SocketAddr::new(backend.addr(family), BACKEND_PORT);
                servers.tcp(&backend.ns, at, &backend.name);
                servers.udp(&backend.ns, at, &backend.name);
            }
        }
        servers
    }

    /// Attaches the data plane (XDP native + TC egress) to the splitter host's client-facing
    /// interface, from a thread inside the host's namespace.
    pub fn attach(&self, mut dataplane: Dataplane) -> Dataplane {
        self.host.run(move || {
            dataplane
                .attach(CLIENT_IF, XdpMode::Native)
                .expect("attach XDP (native) + TC egress to the splitter host's eth0");
            dataplane
        })
    }

    /// A service on the VIP of `family` with every backend of the topology. Service `id` owns
    /// backend ids `id * 100 + i` and pool slots from `id * 100`.
    pub fn service(
        &self,
        id: u32,
        family: Family,
        protocol: Protocol,
        cohort: Cohort,
        green_weight: u32,
    ) -> ServiceSpec {
        let mut blue = Vec::new();
        let mut green = Vec::new();
        for (i, backend) in self.backends.iter().enumerate() {
            let spec = BackendSpec {
                id: id * 100 + i as u32,
                address: SocketAddr::new(backend.addr(family), BACKEND_PORT),
                weight: 1,
                active: true,
            };
            match backend.color {
                Color::Blue => blue.push(spec),
                Color::Green => green.push(spec),
            }
        }
        ServiceSpec {
            id,
            address: SocketAddr::new(self.vip(family), SERVICE_PORT),
            protocol,
            cohort,
            green_weight,
            first_slot: id * slots_needed(blue.len(), green.len()),
            blue,
            green,
            client_prefix_v4: 0,
            client_prefix_v6: 0,
            miss_hold: Duration::from_secs(30),
            overrides: Vec::new(),
            preview: false,
        }
    }

    /// The backend serving backend id `id` of `service`.
    pub fn backend_of(&self, service: &ServiceSpec, id: u32) -> &BackendHost {
        let spec = service
            .blue
            .iter()
            .chain(&service.green)
            .find(|b| b.id == id)
            .unwrap_or_else(|| panic!("backend id {id} is not in service {}", service.id));
        self.backends
            .iter()
            .find(|b| {
                SocketAddr::new(b.v4.into(), BACKEND_PORT) == spec.address
                    || SocketAddr::new(b.v6.into(), BACKEND_PORT) == spec.address
            })
            .expect("every backend of a service is in the topology")
    }

    /// The name of the backend a new flow from `client` should land on, by the contract's
    /// selection rule over the Maglev tables the daemon builds (`ServiceSpec::predict`,
    /// default seed) at the service's weight.
    pub fn expected_backend(&self, service: &ServiceSpec, client: SocketAddr) -> &str {
        let key = flow_key(service, client);
        let backend = service
            .predict(&key, DEFAULT_HASH_SEED, service.green_weight)
            .expect("a color has backends");
        &self.backend_of(service, backend.id).name
    }
}

/// The `FLOWS` key of the flow from `client` to `service`.
pub fn flow_key(service: &ServiceSpec, client: SocketAddr) -> FlowKey {
    let (src, family) = addr_of(&client);
    let (dst, _) = addr_of(&service.address);
    FlowKey {
        src,
        dst,
        src_port: client.port().to_be(),
        dst_port: service.address.port().to_be(),
        protocol: service.protocol.number(),
        family: family as u8,
        _pad: [0; 2],
    }
}

/// The `Tcp:` counters of `/proc/net/snmp` (shared by IPv4 and IPv6) in `ns`: `OutSegs`,
/// `RetransSegs`, `InSegs`, ...
pub fn tcp_mib(ns: &Netns) -> std::collections::BTreeMap<String, u64> {
    let name = ns.name.clone();
    let snmp = ns.run(move || {
        // thread-self: /proc/self/net would show the namespace of the process's main thread.
        std::fs::read_to_string("/proc/thread-self/net/snmp")
            .unwrap_or_else(|e| panic!("{name}: reading /proc/thread-self/net/snmp: {e}"))
    });
    let mut lines = snmp.lines().filter(|line| line.starts_with("Tcp:"));
    let (Some(names), Some(values)) = (lines.next(), lines.next()) else {
        panic!("no Tcp: lines in /proc/net/snmp of {}", ns.name);
    };
    names
        .split_whitespace()
        .zip(values.split_whitespace())
        .skip(1)
        .filter_map(|(k, v)| Some((k.to_owned(), v.parse().ok()?)))
        .collect()
}
