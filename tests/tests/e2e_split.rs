//! End to end: real TCP and UDP traffic from a client namespace, through the splitter host with
//! the real data plane attached, to real servers in blue and green backend namespaces.
//!
//! Every client socket is bound to a known, distinct source port, so the split is deterministic:
//! besides the measured shares, each connection must land exactly on the backend that the
//! documented split hash (`splitter_common::hash`) names for it.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::SocketAddr,
    ops::Range,
    time::{Duration, Instant},
};

use splitter::dataplane::{
    Dataplane, LoadOptions,
    services::{Protocol, ServiceSpec},
};
use splitter_common::{Cohort, Color, Family, Reason, WEIGHT_SCALE};
use splitter_tests::{
    require_privileges,
    resets::{ResetTrace, Role, Roles, one_cpu_per_flow},
    servers::{Servers, ask, bulk, connect, udp_ask, udp_connect},
    topology::{Layout, Spec, Topology, flow_key, tcp_mib},
};

/// No traffic loop of a test runs longer than this.
const ROUND_DEADLINE: Duration = Duration::from_secs(60);

/// Percent → the data plane's parts per million.
const fn ppm(percent: u32) -> u32 {
    percent * (WEIGHT_SCALE / 100)
}

/// A topology with servers running and the data plane attached. Fields drop in order: servers,
/// then the data plane (detached), then the namespaces.
struct Bed {
    _servers: Servers,
    /// Every RST sent while the test runs, to explain a reset a client sees.
    resets: ResetTrace,
    dataplane: Dataplane,
    topology: Topology,
}

impl Bed {
    fn new(tag: &'static str, layout: Layout, blue: usize, green: usize, clients: usize) -> Self {
        Self::with(&Spec {
            tag,
            layout,
            blue,
            green,
            clients,
            router_mtu: None,
        })
    }

    fn with(spec: &Spec) -> Self {
        let topology = Topology::build(spec);
        for backend in &topology.backends {
            one_cpu_per_flow(&backend.ns, "eth0");
        }
        let servers = topology.start_servers();
        let dataplane = Dataplane::load(&LoadOptions::default()).expect("load the eBPF object");
        let dataplane = topology.attach(dataplane);
        Self {
            _servers: servers,
            resets: ResetTrace::start(spec.tag),
            dataplane,
            topology,
        }
    }

    /// The addresses of the topology's hosts, for [`ResetTrace::explain`].
    fn roles(&self) -> Roles {
        let topology = &self.topology;
        let mut roles = Roles::new();
        for family in [Family::Ipv4, Family::Ipv6] {
            for backend in &topology.backends {
                roles.push((backend.addr(family), Role::Backend));
            }
        }
        roles.extend(
            topology
                .clients_v4
                .iter()
                .map(|&a| (a.into(), Role::Client)),
        );
        roles.extend(
            topology
                .clients_v6
                .iter()
                .map(|&a| (a.into(), Role::Client)),
        );
        roles
    }

    /// Who reset the connection from `client`, for a failure message.
    fn explain_reset_of(&self, client: SocketAddr) -> String {
        self.resets.explain(&self.roles(), Some(client))
    }

    fn install(&mut self, service: &ServiceSpec) {
        self.dataplane
            .maps
            .install_service(service)
            .expect("install the service");
    }

    /// Sets the weight in the data plane and returns the service spec at that weight (for the
    /// expected backends).
    fn set_weight(&mut self, service: &ServiceSpec, percent: u32) -> ServiceSpec {
        self.dataplane
            .maps
            .set_weight(&service.address, service.protocol, ppm(percent))
            .expect("set the weight");
        ServiceSpec {
            green_weight: ppm(percent),
            ..service.clone()
        }
    }

    fn color_of(&self, name: &str) -> Color {
        self.topology
            .backends
            .iter()
            .find(|b| b.name == name)
            .unwrap_or_else(|| panic!("{name:?} is not a backend of this topology"))
            .color
    }

    /// One TCP connection per source port from client address `client`: connect to the
    /// service, one request/response, close. Every answer must come from the backend the split
    /// hash names. Returns (client socket address, backend name) per connection.
    fn tcp_round(
        &self,
        service: &ServiceSpec,
        client: usize,
        ports: Range<u16>,
    ) -> Vec<(SocketAddr, String)> {
        let from = self.topology.client_addr(family(service), client);
        let to = service.address;
        let answers = self
            .topology
            .client
            .run(move || {
                let started = Instant::now();
                let mut answers = Vec::with_capacity(ports.len());
                for port in ports {
                    let src = SocketAddr::new(from, port);
                    if started.elapsed() > ROUND_DEADLINE {
                        return Err((
                            src,
                            format!("deadline passed after {} connections", answers.len()),
                        ));
                    }
                    let mut stream = connect(src, to)
                        .map_err(|e| (src, format!("connect {src} -> {to}: {e}")))?;
                    let name =
                        ask(&mut stream).map_err(|e| (src, format!("ask {src} -> {to}: {e}")))?;
                    answers.push((src, name));
                }
                Ok(answers)
            })
            .unwrap_or_else(|(src, e)| {
                panic!(
                    "TCP round to {to}: {e}\nresets: {}",
                    self.explain_reset_of(src)
                )
            });
        for (src, name) in &answers {
            let expected = self.topology.expected_backend(service, *src);
            assert_eq!(
                name, expected,
                "connection {src} -> {to} at green weight {} ppm: answered by {name}, the split \
                 hash says {expected}",
                service.green_weight
            );
        }
        answers
    }

    /// UDP: `sockets` connected sockets from client address `client`, source ports from
    /// `first_port`, each sending `requests` datagrams. A reply is only received if it comes from
    /// the service address (the sockets are connected to it). Returns per socket the backend
    /// name, the payload bytes sent and the reply bytes received.
    fn udp_round(
        &self,
        service: &ServiceSpec,
        client: usize,
        first_port: u16,
        sockets: u16,
        requests: usize,
    ) -> Vec<UdpExchange> {
        let from = self.topology.client_addr(family(service), client);
        let to = service.address;
        let exchanges = self
            .topology
            .client
            .run(move || {
                let started = Instant::now();
                let mut exchanges = Vec::new();
                for port in first_port..first_port + sockets {
                    let src = SocketAddr::new(from, port);
                    let socket = udp_connect(src, to).map_err(|e| format!("socket {src}: {e}"))?;
                    let mut exchange = UdpExchange {
                        src,
                        name: String::new(),
                        sent: Vec::new(),
                        received: Vec::new(),
                    };
                    for request in 0..requests {
                        if started.elapsed() > ROUND_DEADLINE {
                            return Err("deadline passed".to_owned());
                        }
                        let payload = format!("request-{port}-{request}");
                        let name = udp_ask(&socket, &payload)
                            .map_err(|e| format!("{src} -> {to}, {payload}: {e}"))?;
                        if !exchange.name.is_empty() && exchange.name != name {
                            return Err(format!(
                                "{src}: answered by {} and then by {name}",
                                exchange.name
                            ));
                        }
                        exchange.received.push(name.len() + 1 + payload.len());
                        exchange.sent.push(payload.len());
                        exchange.name = name;
                    }
                    exchanges.push(exchange);
                }
                Ok(exchanges)
            })
            .unwrap_or_else(|e| panic!("UDP round to {to}: {e}"));
        for exchange in &exchanges {
            let expected = self.topology.expected_backend(service, exchange.src);
            assert_eq!(
                exchange.name, expected,
                "UDP {} -> {to}: answered by {}, the split hash says {expected}",
                exchange.src, exchange.name
            );
        }
        exchanges
    }

    /// A connection opened at weight 0 stays on its blue backend, request after request, while
    /// the weight walks through `percents`; at each step `fresh` new connections land where the
    /// split hash at the new weight says (all green at 100).
    fn long_lived(&mut self, service: &ServiceSpec, percents: &[u32], fresh: u16, first_port: u16) {
        let service = self.set_weight(service, 0);
        let from = self.topology.client_addr(family(&service), 0);
        let to = service.address;
        let src = SocketAddr::new(from, first_port);
        let mut stream = self
            .topology
            .client
            .run(move || connect(src, to))
            .unwrap_or_else(|e| panic!("long-lived connection {src} -> {to}: {e}"));
        let first = ask(&mut stream).expect("first request on the long-lived connection");
        assert_eq!(
            self.color_of(&first),
            Color::Blue,
            "at weight 0 the long-lived connection must open on blue, got {first}"
        );
        let mut port = first_port + 1;
        for &percent in percents {
            let at_weight = self.set_weight(&service, percent);
            let answer = ask(&mut stream).unwrap_or_else(|e| {
                panic!("long-lived connection {src} -> {to} at {percent} %: {e}")
            });
            assert_eq!(
                answer, first,
                "the long-lived connection moved from {first} to {answer} at {percent} % green"
            );
            let answers = self.tcp_round(&at_weight, 0, port..port + fresh);
            port += fresh;
            let green = answers
                .iter()
                .filter(|(_, name)| self.color_of(name) == Color::Green)
                .count();
            match percent {
                0 => assert_eq!(green, 0, "new connections at 0 %: {answers:?}"),
                100 => assert_eq!(
                    green,
                    answers.len(),
                    "new connections at 100 %: {answers:?}"
                ),
                _ => {}
            }
        }
        let last = ask(&mut stream).expect("last request on the long-lived connection");
        assert_eq!(last, first, "the long-lived connection moved at the end");
        eprintln!(
            "long-lived {src} -> {to}: {} requests through weights {percents:?}, all answered \
             by {first}",
            percents.len() + 2
        );
    }

    fn verdict(&self, reason: Reason) -> u64 {
        self.dataplane.maps.verdict(reason).expect("read verdicts")
    }
}

struct UdpExchange {
    src: SocketAddr,
    name: String,
    /// Payload bytes of each request.
    sent: Vec<usize>,
    /// Payload bytes of each reply.
    received: Vec<usize>,
}

fn family(service: &ServiceSpec) -> Family {
    match service.address {
        SocketAddr::V4(_) => Family::Ipv4,
        SocketAddr::V6(_) => Family::Ipv6,
    }
}

/// Connections per backend name.
fn per_backend<'a>(names: impl Iterator<Item = &'a str>) -> BTreeMap<String, u64> {
    let mut counts = BTreeMap::new();
    for name in names {
        *counts.entry(name.to_owned()).or_insert(0) += 1;
    }
    counts
}

/// Polls `check` until it returns `Ok` or three seconds pass (counters of the last packets of a
/// round, such as the server's FIN, may trail the client by a moment).
fn settle(mut check: impl FnMut() -> Result<(), String>) {
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        match check() {
            Ok(()) => return,
            Err(e) if Instant::now() > deadline => panic!("{e}"),
            Err(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    }
}

/// Per-backend counters against the connections each backend answered: one pinned flow, one
/// SYN each way, one FIN each way per connection, no RST.
fn assert_tcp_counters(bed: &Bed, service: &ServiceSpec, answered: &BTreeMap<String, u64>) {
    settle(|| {
        for spec in service.blue.iter().chain(&service.green) {
            let name = &bed.topology.backend_of(service, spec.id).name;
            let connections = answered.get(name).copied().unwrap_or(0);
            let c = bed
                .dataplane
                .maps
                .backend_counters(spec.id)
                .expect("read backend counters");
            let ok = c.new_flows == connections
                && c.to_backend.tcp_syn == connections
                && c.to_client.tcp_syn == connections
                && c.to_backend.tcp_fin == connections
                && c.to_client.tcp_fin == connections
                && c.to_backend.tcp_rst == 0
                && c.to_client.tcp_rst == 0
                // At least SYN, ACK, request, FIN, ACK in; SYN-ACK, reply, FIN out.
                && c.to_backend.packets >= 4 * connections
                && c.to_client.packets >= 3 * connections;
            if !ok {
                return Err(format!(
                    "backend {name} (id {}) answered {connections} connections; its counters: \
                     {c:?}",
                    spec.id
                ));
            }
        }
        Ok(())
    });
}

/// The 2,000-connection split at 10 %, 50 % and 90 % green, with counters.
fn tcp_split_share(tag: &'static str, family: Family) {
    const CONNECTIONS: u16 = 2000;
    let mut bed = Bed::new(tag, Layout::Routed, 2, 2, 1);
    let service = bed
        .topology
        .service(1, family, Protocol::Tcp, Cohort::Flow, 0);
    bed.install(&service);
    let mut all = Vec::new();
    for (step, percent) in [10, 50, 90].into_iter().enumerate() {
        let at_weight = bed.set_weight(&service, percent);
        let first_port = 20_000 + step as u16 * CONNECTIONS;
        let answers = bed.tcp_round(&at_weight, 0, first_port..first_port + CONNECTIONS);
        let green = answers
            .iter()
            .filter(|(_, name)| bed.color_of(name) == Color::Green)
            .count();
        let share = 100.0 * green as f64 / answers.len() as f64;
        let counts = per_backend(answers.iter().map(|(_, n)| n.as_str()));
        eprintln!(
            "{family:?} weight {percent:>2} %: green share {share:.2} % over {} connections \
             {counts:?}",
            answers.len()
        );
        assert!(
            (share - percent as f64).abs() <= 3.0,
            "{family:?}: green share {share:.2} % at weight {percent} % is off by more than 3 \
             points ({counts:?})"
        );
        all.extend(answers);
    }
    let unique_ports: BTreeSet<SocketAddr> = all.iter().map(|(src, _)| *src).collect();
    assert_eq!(
        unique_ports.len(),
        all.len(),
        "source ports must be distinct"
    );
    let answered = per_backend(all.iter().map(|(_, n)| n.as_str()));
    assert_tcp_counters(&bed, &service, &answered);
    let new_flows: u64 = service
        .blue
        .iter()
        .chain(&service.green)
        .map(|b| bed.dataplane.maps.backend_counters(b.id).unwrap().new_flows)
        .sum();
    assert_eq!(
        new_flows,
        all.len() as u64,
        "new flows summed over backends"
    );
    assert_eq!(
        bed.verdict(Reason::NewFlow),
        all.len() as u64,
        "new_flow verdicts"
    );
    assert_eq!(
        bed.verdict(Reason::FlowMiss),
        0,
        "no TCP packet missed its flow"
    );
    assert_eq!(bed.verdict(Reason::NoBackend), 0, "no_backend verdicts");
    eprintln!(
        "{family:?}: {} connections, new_flows summed over backends {new_flows}, per backend \
         {answered:?}",
        all.len()
    );
}

#[test]
fn tcp_split_share_follows_weight() {
    if !require_privileges("tcp_split_share_follows_weight") {
        return;
    }
    for (tag, family) in [("s4", Family::Ipv4), ("s6", Family::Ipv6)] {
        tcp_split_share(tag, family);
    }
}

const WEIGHT_WALK: [u32; 9] = [0, 10, 50, 90, 100, 90, 50, 10, 0];

#[test]
fn long_lived_tcp_connection_stays_on_blue() {
    if !require_privileges("long_lived_tcp_connection_stays_on_blue") {
        return;
    }
    for (tag, family) in [("l4", Family::Ipv4), ("l6", Family::Ipv6)] {
        let mut bed = Bed::new(tag, Layout::Routed, 2, 2, 1);
        let service = bed
            .topology
            .service(1, family, Protocol::Tcp, Cohort::Flow, 0);
        bed.install(&service);
        bed.long_lived(&service, &WEIGHT_WALK, 20, 30_000);
        assert_eq!(
            bed.verdict(Reason::FlowMiss),
            0,
            "{family:?}: no TCP packet missed its flow"
        );
    }
}

/// A connection whose pinned flow is lost (LRU eviction, or ECMP moving it to this host) right
/// after a weight change: its next packet is a flow miss, steered by the previous weight while
/// the miss hold lasts, so it stays on its backend. Without a hold the current weight steers it,
/// and at 100 % green the green backend resets it.
#[test]
fn evicted_flow_follows_the_previous_weight() {
    if !require_privileges("evicted_flow_follows_the_previous_weight") {
        return;
    }
    let mut bed = Bed::new("ev", Layout::Routed, 2, 2, 1);
    for (id, family) in [(1, Family::Ipv4), (2, Family::Ipv6)] {
        for (hold, port) in [(Duration::from_secs(30), 31_000), (Duration::ZERO, 31_001)] {
            let service = ServiceSpec {
                miss_hold: hold,
                ..bed
                    .topology
                    .service(id, family, Protocol::Tcp, Cohort::Flow, 0)
            };
            bed.install(&service);
            let src = SocketAddr::new(bed.topology.client_addr(family, 0), port);
            let to = service.address;
            let mut stream = bed
                .topology
                .client
                .run(move || connect(src, to))
                .unwrap_or_else(|e| panic!("connect {src} -> {to}: {e}"));
            let first = ask(&mut stream).expect("first request");
            assert_eq!(bed.color_of(&first), Color::Blue, "opened at 0 % green");
            bed.set_weight(&service, 100);
            let misses = bed.dataplane.maps.service_counters(id).unwrap().flow_misses;
            bed.dataplane
                .maps
                .flows
                .remove(&flow_key(&service, src))
                .expect("remove the pinned flow");
            let answer = ask(&mut stream);
            let misses = bed.dataplane.maps.service_counters(id).unwrap().flow_misses - misses;
            assert!(
                misses >= 1,
                "{family:?}: the next packet must be a flow miss"
            );
            if hold.is_zero() {
                assert!(
                    answer.is_err(),
                    "{family:?}: without a miss hold the flow goes green and is reset, got \
                     {answer:?}"
                );
            } else {
                let answer = answer.as_ref().unwrap_or_else(|e| {
                    panic!("{family:?}: the evicted flow broke within the miss hold: {e}")
                });
                assert_eq!(
                    answer, &first,
                    "{family:?}: the evicted flow changed backend"
                );
                let pinned = bed
                    .dataplane
                    .maps
                    .flows
                    .get(&flow_key(&service, src), 0)
                    .expect("the miss pinned the flow again");
                assert_eq!(
                    bed.topology.backend_of(&service, pinned.backend_id).name,
                    first,
                    "{family:?}: re-pinned to its backend"
                );
            }
            eprintln!(
                "{family:?} miss hold {hold:?}: opened on {first}, after eviction at 100 %: \
                 {answer:?} ({misses} flow misses)"
            );
        }
    }
}

/// UDP through the splitter for one family: every reply comes from the service address (or the
/// connected client socket would never see it) and the per-backend counters match exactly.
fn udp_exchange(bed: &mut Bed, id: u32, family: Family, first_port: u16) {
    const SOCKETS: u16 = 100;
    const REQUESTS: usize = 5;
    let service = bed
        .topology
        .service(id, family, Protocol::Udp, Cohort::Flow, ppm(50));
    bed.install(&service);
    let exchanges = bed.udp_round(&service, 0, first_port, SOCKETS, REQUESTS);
    // Layer 3 bytes as counted by the data plane: IP header + UDP header + payload.
    let headers = match family {
        Family::Ipv4 => 20 + 8,
        Family::Ipv6 => 40 + 8,
    };
    let mut expected: BTreeMap<String, (u64, u64, u64, u64, u64)> = BTreeMap::new();
    for exchange in &exchanges {
        let e = expected.entry(exchange.name.clone()).or_default();
        e.0 += 1;
        e.1 += exchange.sent.len() as u64;
        e.2 += exchange
            .sent
            .iter()
            .map(|n| (headers + n) as u64)
            .sum::<u64>();
        e.3 += exchange.received.len() as u64;
        e.4 += exchange
            .received
            .iter()
            .map(|n| (headers + n) as u64)
            .sum::<u64>();
    }
    eprintln!(
        "{family:?} UDP per backend (sockets, requests, bytes, replies, bytes): {expected:?}"
    );
    let greens = exchanges
        .iter()
        .filter(|e| bed.color_of(&e.name) == Color::Green)
        .count();
    assert!(
        greens > 0 && greens < exchanges.len(),
        "both colors serve UDP at 50 %: {greens} of {} sockets green",
        exchanges.len()
    );
    settle(|| {
        for spec in service.blue.iter().chain(&service.green) {
            let name = &bed.topology.backend_of(&service, spec.id).name;
            let want = expected.get(name).copied().unwrap_or_default();
            let c = bed
                .dataplane
                .maps
                .backend_counters(spec.id)
                .expect("read backend counters");
            let got = (
                c.new_flows,
                c.to_backend.packets,
                c.to_backend.bytes,
                c.to_client.packets,
                c.to_client.bytes,
            );
            if got != want {
                return Err(format!(
                    "backend {name} (id {}): (new_flows, to_backend packets, bytes, to_client \
                     packets, bytes) = {got:?}, the client sent/received {want:?}",
                    spec.id
                ));
            }
        }
        Ok(())
    });
}

#[test]
fn udp_replies_come_from_the_service_address() {
    if !require_privileges("udp_replies_come_from_the_service_address") {
        return;
    }
    let mut bed = Bed::new("u", Layout::Routed, 2, 2, 1);
    udp_exchange(&mut bed, 2, Family::Ipv4, 40_000);
    udp_exchange(&mut bed, 3, Family::Ipv6, 41_000);
    assert_eq!(
        bed.verdict(Reason::NewFlow),
        200,
        "one new flow per UDP socket"
    );
    assert_eq!(
        bed.verdict(Reason::ToClient),
        1000,
        "every reply rewritten to the service address"
    );
}

#[test]
fn client_cohort_keeps_each_client_on_one_color() {
    if !require_privileges("client_cohort_keeps_each_client_on_one_color") {
        return;
    }
    const CLIENTS: usize = 16;
    const CONNECTIONS: u16 = 10;
    let mut bed = Bed::new("cc", Layout::Routed, 2, 2, CLIENTS);
    for (id, family) in [(4, Family::Ipv4), (5, Family::Ipv6)] {
        let service = bed
            .topology
            .service(id, family, Protocol::Tcp, Cohort::Client, ppm(50));
        bed.install(&service);
        let mut colors = BTreeMap::new();
        for client in 0..CLIENTS {
            let first_port = 20_000 + client as u16 * CONNECTIONS;
            let answers = bed.tcp_round(&service, client, first_port..first_port + CONNECTIONS);
            let names = per_backend(answers.iter().map(|(_, n)| n.as_str()));
            assert_eq!(
                names.len(),
                1,
                "all connections of client {} must land on one backend: {names:?}",
                bed.topology.client_addr(family, client)
            );
            let name = names.keys().next().unwrap().clone();
            colors.insert(bed.topology.client_addr(family, client), name);
        }
        let greens = colors
            .values()
            .filter(|name| bed.color_of(name) == Color::Green)
            .count();
        eprintln!(
            "{family:?} client cohort at 50 %: {greens} of {CLIENTS} clients green: {colors:?}"
        );
        assert!(
            greens > 0 && greens < CLIENTS,
            "at 50 % both colors get clients: {colors:?}"
        );
    }
}

/// The same checks on a layout other than the routed one: split by the hash, a long-lived
/// connection through a weight walk, UDP with exact counters; both families.
fn other_layout(tag: &'static str, layout: Layout) {
    let mut bed = Bed::new(tag, layout, 2, 2, 1);
    for (id, family, udp_id) in [(1, Family::Ipv4, 2), (3, Family::Ipv6, 4)] {
        let service = bed
            .topology
            .service(id, family, Protocol::Tcp, Cohort::Flow, 0);
        bed.install(&service);
        let at_weight = bed.set_weight(&service, 50);
        let answers = bed.tcp_round(&at_weight, 0, 20_000..20_400);
        let answered = per_backend(answers.iter().map(|(_, n)| n.as_str()));
        eprintln!("{layout:?} {family:?} TCP at 50 %: {answered:?}");
        assert_eq!(
            answered.len(),
            4,
            "every backend gets connections: {answered:?}"
        );
        assert_tcp_counters(&bed, &service, &answered);
        bed.long_lived(&service, &[0, 50, 100, 50, 0], 10, 30_000);
        udp_exchange(&mut bed, udp_id, family, 40_000);
    }
}

#[test]
fn bridged_backends() {
    if !require_privileges("bridged_backends") {
        return;
    }
    other_layout("br", Layout::Bridged);
}

#[test]
fn one_armed_backends_on_the_client_segment() {
    if !require_privileges("one_armed_backends_on_the_client_segment") {
        return;
    }
    other_layout("oa", Layout::OneArmed);
}

/// Segments a namespace's TCP stack put on the wire: new ones and retransmissions.
fn tcp_segments_sent(ns: &splitter_tests::netns::Netns) -> u64 {
    let mib = tcp_mib(ns);
    mib["OutSegs"] + mib["RetransSegs"]
}

/// Bulk downloads with the offloads a real host has: backends send TSO/checksum-offloaded
/// segments and the splitter host aggregates them with GRO, so the egress program rewrites
/// GSO packets whose checksums are partial. Every byte must arrive intact, and the per-backend
/// packet counters must count wire segments (as the TCP stacks at both ends count them), not
/// socket buffers.
#[test]
fn bulk_tcp_through_gro_counts_wire_segments() {
    if !require_privileges("bulk_tcp_through_gro_counts_wire_segments") {
        return;
    }
    const BYTES: usize = 4 << 20;
    const CONNECTIONS: u16 = 3;
    let mut bed = Bed::new("gro", Layout::Routed, 1, 1, 1);
    for backend in &bed.topology.backends {
        let peer = backend.name.replace('-', "");
        bed.topology
            .host
            .exec(&["ethtool", "-K", &peer, "gro", "on"]);
        backend
            .ns
            .exec(&["ethtool", "-K", "eth0", "tx", "on", "tso", "on"]);
    }
    for (id, family) in [(1, Family::Ipv4), (2, Family::Ipv6)] {
        let service = bed
            .topology
            .service(id, family, Protocol::Tcp, Cohort::Flow, ppm(50));
        bed.install(&service);
        let backends_before: u64 = bed
            .topology
            .backends
            .iter()
            .map(|b| tcp_segments_sent(&b.ns))
            .sum();
        let client_before = tcp_segments_sent(&bed.topology.client);
        let from = bed.topology.client_addr(family, 0);
        let to = service.address;
        let answers = bed
            .topology
            .client
            .run(move || {
                (0..CONNECTIONS)
                    .map(|i| {
                        let src = SocketAddr::new(from, 20_000 + i);
                        let mut stream =
                            connect(src, to).map_err(|e| format!("connect {src}: {e}"))?;
                        let name =
                            bulk(&mut stream, BYTES).map_err(|e| format!("bulk {src}: {e}"))?;
                        Ok((src, name))
                    })
                    .collect::<Result<Vec<_>, String>>()
            })
            .unwrap_or_else(|e| panic!("{family:?} bulk download: {e}"));
        for (src, name) in &answers {
            assert_eq!(name, bed.topology.expected_backend(&service, *src));
        }
        let counters = |bed: &Bed| {
            let mut sum = splitter_common::BackendCounters::default();
            for spec in service.blue.iter().chain(&service.green) {
                sum += bed.dataplane.maps.backend_counters(spec.id).unwrap();
            }
            sum
        };
        settle(|| {
            let c = counters(&bed);
            let backends_sent = bed
                .topology
                .backends
                .iter()
                .map(|b| tcp_segments_sent(&b.ns))
                .sum::<u64>()
                - backends_before;
            let client_sent = tcp_segments_sent(&bed.topology.client) - client_before;
            if c.to_client.packets != backends_sent || c.to_backend.packets != client_sent {
                return Err(format!(
                    "{family:?}: to_client packets {} vs {backends_sent} segments the backends \
                     sent; to_backend packets {} vs {client_sent} segments the client sent",
                    c.to_client.packets, c.to_backend.packets
                ));
            }
            Ok(())
        });
        let c = counters(&bed);
        assert!(
            c.to_client.bytes >= (BYTES * CONNECTIONS as usize) as u64,
            "{family:?}: to_client bytes {} below the {} bytes downloaded",
            c.to_client.bytes,
            BYTES * CONNECTIONS as usize
        );
        eprintln!(
            "{family:?} bulk: {CONNECTIONS} × {BYTES} bytes intact; to_client {} packets / {} \
             bytes, to_backend {} packets",
            c.to_client.packets, c.to_client.bytes, c.to_backend.packets
        );
    }
}

/// Path MTU discovery through the splitter: a router between the client and the splitter host
/// has a 1280-byte link to the client, so the backends' full-size segments (the client
/// advertised an MSS for 1500 bytes) make it send ICMP "fragmentation needed" (IPv4) and
/// "packet too big" (IPv6) to the service address. The ingress program must hand them to the
/// backend of the flow, rewritten so its stack matches them to the connection; otherwise the
/// download stalls.
#[test]
fn path_mtu_errors_reach_the_backend() {
    if !require_privileges("path_mtu_errors_reach_the_backend") {
        return;
    }
    const BYTES: usize = 1 << 20;
    let mut bed = Bed::with(&Spec {
        tag: "mtu",
        layout: Layout::Routed,
        blue: 1,
        green: 1,
        clients: 1,
        router_mtu: Some(1280),
    });
    for (id, family) in [(1, Family::Ipv4), (2, Family::Ipv6)] {
        let service = bed
            .topology
            .service(id, family, Protocol::Tcp, Cohort::Flow, ppm(50));
        bed.install(&service);
        let errors_before = bed.verdict(Reason::IcmpToBackend);
        let src = SocketAddr::new(bed.topology.client_addr(family, 0), 20_000);
        let to = service.address;
        let name = bed
            .topology
            .client
            .run(move || {
                let mut stream = connect(src, to).map_err(|e| format!("connect: {e}"))?;
                bulk(&mut stream, BYTES).map_err(|e| format!("bulk download: {e}"))
            })
            .unwrap_or_else(|e| panic!("{family:?} {src} -> {to} through a 1280-byte link: {e}"));
        assert_eq!(name, bed.topology.expected_backend(&service, src));
        let errors = bed.verdict(Reason::IcmpToBackend) - errors_before;
        assert!(
            errors >= 1,
            "{family:?}: the router's ICMP errors must reach the backend ({errors} did)"
        );
        // The backend's stack took the error for its connection: it caches the path MTU.
        let backend = bed
            .topology
            .backends
            .iter()
            .find(|b| b.name == name)
            .expect("the answering backend");
        let route = backend
            .ns
            .ip(&["route", "get", &src.ip().to_string()])
            .stdout;
        let route = String::from_utf8_lossy(&route);
        assert!(
            route.contains("mtu 1280"),
            "{family:?}: {name} should have learnt the path MTU to the client: {route}"
        );
        eprintln!(
            "{family:?}: {BYTES} bytes from {name} through a 1280-byte link, {errors} ICMP \
             errors forwarded to the backend; its route: {}",
            route.trim()
        );
    }
}

/// Turns the fast path on toward `peers` (the host's veths to backends), with GRO on every
/// backend's end: NAPI on the receiving end of a veth, without which native XDP_REDIRECT drops.
fn allow_redirects(bed: &mut Bed, peers: &[&str]) {
    for backend in &bed.topology.backends {
        backend.ns.exec(&["ethtool", "-K", "eth0", "gro", "on"]);
    }
    let peers: Vec<String> = peers.iter().map(|peer| peer.to_string()).collect();
    let dataplane = std::mem::replace(
        &mut bed.dataplane,
        Dataplane::load(&LoadOptions::default()).expect("load"),
    );
    bed.dataplane = bed.topology.host.run(move || {
        let mut dataplane = dataplane;
        for peer in &peers {
            dataplane
                .allow_redirect(peer)
                .unwrap_or_else(|e| panic!("allow_redirect({peer}): {e}"));
        }
        dataplane
    });
}

/// The fast path: with XDP_REDIRECT allowed toward the backends' veths (their peers have GRO
/// on, so native XDP transmit works), rewritten packets skip the kernel's routing; connections
/// still land where the hash says, in both families. A bridge is refused for redirection.
#[test]
fn fast_path_redirects_to_the_backends() {
    if !require_privileges("fast_path_redirects_to_the_backends") {
        return;
    }
    let mut bed = Bed::new("fp", Layout::Routed, 2, 2, 1);
    allow_redirects(&mut bed, &["blue0", "blue1", "green0", "green1"]);
    for (id, family) in [(1, Family::Ipv4), (2, Family::Ipv6)] {
        let service = bed
            .topology
            .service(id, family, Protocol::Tcp, Cohort::Flow, 0);
        let (connections, redirected, kernel) =
            fast_path_round(&mut bed, &service, 21_000..21_200, &format!("{family:?}"));
        // Each connection sends at least SYN, ACK, request, FIN, ACK toward its backend; the
        // very first packets may wait for neighbour resolution in the kernel.
        assert!(
            redirected >= 4 * connections as u64,
            "{family:?}: {redirected} packets redirected, {kernel} through the kernel for \
             {connections} connections"
        );
    }
}

/// Installs `service` at 50 % and opens a connection from each port of `ports`; every backend
/// must answer. Returns the connections made and the packets the data plane redirected and
/// passed to the kernel meanwhile.
fn fast_path_round(
    bed: &mut Bed,
    service: &ServiceSpec,
    ports: Range<u16>,
    label: &str,
) -> (usize, u64, u64) {
    bed.install(service);
    let at_weight = bed.set_weight(service, 50);
    let before = bed.dataplane.maps.forwarding().unwrap();
    let answers = bed.tcp_round(&at_weight, 0, ports);
    let after = bed.dataplane.maps.forwarding().unwrap();
    let answered = per_backend(answers.iter().map(|(_, n)| n.as_str()));
    eprintln!("fast path, {label}: {answered:?}, forwarding {before:?} -> {after:?}");
    assert_eq!(answered.len(), 4, "every backend answers: {answered:?}");
    (
        answers.len(),
        after[0].1 - before[0].1,
        after[1].1 - before[1].1,
    )
}

/// With the fast path on, a backend behind an interface that is not allowed to take redirects
/// is reached through the kernel (the redirect map has no entry for it: nothing is armed and
/// the L2 header is untouched), next to backends that are redirected.
#[test]
fn fast_path_leaves_interfaces_not_allowed_to_the_kernel() {
    if !require_privileges("fast_path_leaves_interfaces_not_allowed_to_the_kernel") {
        return;
    }
    let mut bed = Bed::new("fk", Layout::Routed, 2, 2, 1);
    // Blue's interfaces only.
    allow_redirects(&mut bed, &["blue0", "blue1"]);
    let service = bed
        .topology
        .service(1, Family::Ipv4, Protocol::Tcp, Cohort::Flow, 0);
    let (connections, redirected, kernel) =
        fast_path_round(&mut bed, &service, 22_000..22_200, "blue only");
    // About half the connections go green, through the kernel: at least SYN, ACK, request,
    // FIN, ACK each; blue's are redirected.
    assert!(
        kernel >= 4 * 50 && redirected >= 4 * 50,
        "{redirected} packets redirected, {kernel} through the kernel for {connections} \
         connections"
    );
}

#[test]
fn fast_path_refuses_a_bridge() {
    if !require_privileges("fast_path_refuses_a_bridge") {
        return;
    }
    let bed = Bed::new("fb", Layout::Bridged, 1, 1, 1);
    let mut dataplane = Dataplane::load(&LoadOptions::default()).expect("load");
    let refused = bed.topology.host.run(move || {
        dataplane
            .allow_redirect("br0")
            .map(|_| ())
            .map_err(|e| e.to_string())
    });
    let error = refused.expect_err("a bridge cannot transmit XDP frames");
    assert!(error.contains("is a bridge"), "unexpected error: {error}");
}

/// Not a test: `cargo test --release -p splitter-tests --test e2e_split -- --ignored
/// measure_resets --nocapture` opens `SPLITTER_RESET_LOOP` (default 200 000) short connections
/// (connect, one request, close) from two threads, with RPS on the backends' receive queues
/// (`SPLITTER_RESET_LOOP_RPS=0`: without), and prints every reset with who sent it. Bounded:
/// at most 20 minutes.
#[test]
#[ignore = "measurement, prints figures"]
fn measure_resets_over_many_connections() {
    if !require_privileges("measure_resets_over_many_connections") {
        return;
    }
    const CLIENTS: usize = 4;
    const PORTS: u16 = 50_000;
    let total: usize = std::env::var("SPLITTER_RESET_LOOP")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(200_000)
        .min(CLIENTS * PORTS as usize);
    let rps = std::env::var("SPLITTER_RESET_LOOP_RPS").as_deref() != Ok("0");
    let mut bed = Bed::new("rl", Layout::Routed, 2, 2, CLIENTS);
    if !rps {
        for backend in &bed.topology.backends {
            splitter_tests::resets::rps_cpus(&backend.ns, "eth0", "0");
        }
    }
    let service = bed
        .topology
        .service(1, Family::Ipv4, Protocol::Tcp, Cohort::Flow, 0);
    bed.install(&service);
    let service = bed.set_weight(&service, 50);
    let to = service.address;
    let deadline = Instant::now() + Duration::from_secs(20 * 60);
    let started = Instant::now();
    let threads: Vec<_> = (0..2)
        .map(|thread| {
            let sources: Vec<SocketAddr> = (thread * CLIENTS / 2..(thread + 1) * CLIENTS / 2)
                .flat_map(|client| {
                    let ip = bed.topology.client_addr(Family::Ipv4, client);
                    (10_000..10_000 + PORTS).map(move |port| SocketAddr::new(ip, port))
                })
                .take(total / 2)
                .collect();
            bed.topology.client.spawn(move || {
                let mut failed = Vec::new();
                let mut done = 0usize;
                for src in sources {
                    if Instant::now() > deadline {
                        break;
                    }
                    let result = connect(src, to).and_then(|mut stream| ask(&mut stream));
                    if let Err(error) = result {
                        failed.push((src, error.to_string()));
                    }
                    done += 1;
                }
                (done, failed)
            })
        })
        .collect();
    let mut done = 0;
    let mut failed = Vec::new();
    for thread in threads {
        let (n, f) = thread.join().expect("client thread");
        done += n;
        failed.extend(f);
    }
    println!(
        "{done} connections in {:?} (RPS on the backends: {rps}), {} failed",
        started.elapsed(),
        failed.len()
    );
    for (src, error) in &failed {
        println!("{src}: {error}\n  {}", bed.explain_reset_of(*src));
    }
}
