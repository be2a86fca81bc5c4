//! The real data-plane programs, case by case, through BPF_PROG_TEST_RUN: each case is a
//! description, an input frame from the packet builder, the expected verdict, the expected output
//! frame (built with the builder, checksums computed from scratch) and the expected counter and
//! flow-table changes. The expected backend of a new flow is computed here with the same
//! `splitter_common::hash` functions the kernel uses.
//!
//! Cases inside one table run in order against one loaded data plane: later cases see the flows
//! pinned by earlier ones (established flows, replies, ICMP errors).

use std::{
    collections::HashMap,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    time::Duration,
};

use aya::programs::{ProgramError, TestRun, TestRunOptions};
use splitter::dataplane::{
    Dataplane, LoadOptions,
    pools::slots_needed,
    services::{BackendSpec, Protocol, ServiceSpec},
};
use splitter_common::{
    Addr, BackendCounters, BackendKey, Cohort, Color, DirectionCounters, Family, FlowKey,
    FlowState, FlowValue, Reason, ReverseValue, Signals, WEIGHT_SCALE, hash::DEFAULT_HASH_SEED,
};
use splitter_tests::{
    packet::{
        self, Checked, ETH_HLEN, Ethernet, Extension, IPPROTO_GRE, Ip, Ipv4, Ipv6, L4, Packet,
        TCP_ACK, TCP_FIN, TCP_PSH, TCP_RST, TCP_SYN, Tcp, Udp,
    },
    require_privileges,
};

const XDP_PASS: u32 = 2;
const TC_ACT_OK: u32 = 0;
const HALF: u32 = WEIGHT_SCALE / 2;
const ALL_GREEN: u32 = WEIGHT_SCALE;
const HOUR: Duration = Duration::from_secs(3600);
/// The loader's default seed: what the kernel hashes with in these tests.
const SEED: u32 = DEFAULT_HASH_SEED;

// ---------------------------------------------------------------------------------------------
// Addresses, services, flows.

fn family_of(ip: IpAddr) -> Family {
    match ip {
        IpAddr::V4(_) => Family::Ipv4,
        IpAddr::V6(_) => Family::Ipv6,
    }
}

fn addr(ip: IpAddr) -> Addr {
    match ip {
        IpAddr::V4(v4) => Addr::from_v4(v4.octets()),
        IpAddr::V6(v6) => Addr::from_v6(v6.octets()),
    }
}

/// Test hosts: 198.18.0.0/15 and fd00::/8 only.
fn host(v6: bool, net: u16, host: u16) -> IpAddr {
    if v6 {
        IpAddr::V6(Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, net, host))
    } else {
        IpAddr::V4(Ipv4Addr::new(198, 18, net as u8, host as u8))
    }
}

/// A client: 198.19.0.0/16 or fd00:c::/64.
fn client(v6: bool, host: u16, port: u16) -> SocketAddr {
    let ip = if v6 {
        IpAddr::V6(Ipv6Addr::new(0xfd00, 0xc, 0, 0, 0, 0, 0, host))
    } else {
        IpAddr::V4(Ipv4Addr::new(198, 19, (host >> 8) as u8, host as u8))
    };
    SocketAddr::new(ip, port)
}

/// Service `id` at `198.18.id.1` / `fd00::id:1` (port 80 TCP, 53 UDP) with two blue backends
/// (`.11`, `.12`, port 8080) and two green ones (`.21`, `.22`, port 8081).
fn service(
    id: u32,
    v6: bool,
    protocol: Protocol,
    cohort: Cohort,
    green_weight: u32,
    miss_hold: Duration,
) -> ServiceSpec {
    let net = id as u16;
    let port = match protocol {
        Protocol::Tcp => 80,
        Protocol::Udp => 53,
    };
    let backend = |n: u32, host_id: u16, port: u16| BackendSpec {
        id: id * 10 + n,
        address: SocketAddr::new(host(v6, net, host_id), port),
        weight: 1,
        active: true,
    };
    ServiceSpec {
        id,
        address: SocketAddr::new(host(v6, net, 1), port),
        protocol,
        cohort,
        green_weight,
        blue: vec![backend(1, 11, 8080), backend(2, 12, 8080)],
        green: vec![backend(3, 21, 8081), backend(4, 22, 8081)],
        client_prefix_v4: 0,
        client_prefix_v6: 0,
        first_slot: id * slots_needed(2, 2),
        miss_hold,
        overrides: Vec::new(),
        preview: false,
    }
}

/// One client's conversation with a service.
#[derive(Clone, Copy, Debug)]
struct Flow {
    client: SocketAddr,
    service: SocketAddr,
    protocol: Protocol,
}

impl Flow {
    fn new(spec: &ServiceSpec, client: SocketAddr) -> Self {
        Self {
            client,
            service: spec.address,
            protocol: spec.protocol,
        }
    }

    /// Client → service (TCP with `flags`; UDP ignores them).
    fn packet(&self, flags: u8) -> Packet {
        segment(self.client, self.service, self.protocol, flags)
    }

    /// `from` → client: a backend's reply (or the service's, after reverse NAT).
    fn reply(&self, from: SocketAddr, flags: u8) -> Packet {
        segment(from, self.client, self.protocol, flags)
    }

    /// The `FLOWS` key.
    fn key(&self) -> FlowKey {
        key(self.client, self.service, self.protocol)
    }
}

fn key(src: SocketAddr, dst: SocketAddr, protocol: Protocol) -> FlowKey {
    FlowKey {
        src: addr(src.ip()),
        dst: addr(dst.ip()),
        src_port: src.port().to_be(),
        dst_port: dst.port().to_be(),
        protocol: protocol.number(),
        family: family_of(src.ip()) as u8,
        _pad: [0; 2],
    }
}

fn ip_layer(src: IpAddr, dst: IpAddr) -> Ip {
    match (src, dst) {
        (IpAddr::V4(src), IpAddr::V4(dst)) => Ip::V4(Ipv4::new(src, dst)),
        (IpAddr::V6(src), IpAddr::V6(dst)) => Ip::V6(Ipv6::new(src, dst)),
        _ => panic!("mixed families: {src} → {dst}"),
    }
}

/// A TCP segment (no payload) or a UDP datagram with a small payload.
fn segment(src: SocketAddr, dst: SocketAddr, protocol: Protocol, flags: u8) -> Packet {
    let ip = ip_layer(src.ip(), dst.ip());
    match protocol {
        Protocol::Tcp => Packet::tcp(ip, Tcp::new(src.port(), dst.port(), flags)),
        Protocol::Udp => Packet::udp(ip, Udp::new(src.port(), dst.port()), b"splitter test"),
    }
}

fn set_ip(ip: &mut Ip, src: Option<IpAddr>, dst: Option<IpAddr>) {
    match ip {
        Ip::V4(v4) => {
            if let Some(IpAddr::V4(a)) = src {
                v4.src = a;
            }
            if let Some(IpAddr::V4(a)) = dst {
                v4.dst = a;
            }
        }
        Ip::V6(v6) => {
            if let Some(IpAddr::V6(a)) = src {
                v6.src = a;
            }
            if let Some(IpAddr::V6(a)) = dst {
                v6.dst = a;
            }
        }
    }
}

/// The same packet sent to `dst` (what DNAT must produce).
fn with_destination(packet: &Packet, dst: SocketAddr) -> Packet {
    let mut out = packet.clone();
    set_ip(&mut out.ip, None, Some(dst.ip()));
    match &mut out.l4 {
        L4::Tcp(tcp) => tcp.dst_port = dst.port(),
        L4::Udp(udp) => udp.dst_port = dst.port(),
        _ => {}
    }
    out
}

/// The same packet sent from `src` (what reverse NAT must produce).
fn with_source(packet: &Packet, src: SocketAddr) -> Packet {
    let mut out = packet.clone();
    set_ip(&mut out.ip, Some(src.ip()), None);
    match &mut out.l4 {
        L4::Tcp(tcp) => tcp.src_port = src.port(),
        L4::Udp(udp) => udp.src_port = src.port(),
        _ => {}
    }
    out
}

fn tcp_flags(packet: &Packet) -> u8 {
    match &packet.l4 {
        L4::Tcp(tcp) => tcp.flags,
        _ => 0,
    }
}

/// The backend the kernel must pick for a flow without a pinned one, at `weight`: the
/// contract's selection rule over the Maglev tables the daemon builds
/// (`ServiceSpec::predict`), the same seed.
fn predict<'a>(spec: &'a ServiceSpec, key: &FlowKey, weight: u32) -> &'a BackendSpec {
    spec.predict(key, SEED, weight)
        .expect("a color has backends")
}

fn color_of(spec: &ServiceSpec, backend: &BackendSpec) -> Color {
    if spec.green.contains(backend) {
        Color::Green
    } else {
        assert!(
            spec.blue.contains(backend),
            "{backend:?} is not a backend of {spec:?}"
        );
        Color::Blue
    }
}

fn direction(frame: &[u8], flags: u8) -> DirectionCounters {
    DirectionCounters {
        packets: 1,
        bytes: (frame.len() - ETH_HLEN) as u64,
        tcp_syn: u64::from(flags & TCP_SYN != 0),
        tcp_fin: u64::from(flags & TCP_FIN != 0),
        tcp_rst: u64::from(flags & TCP_RST != 0),
    }
}

/// Backend counters after one client → backend packet.
fn to_backend(frame: &[u8], flags: u8, new_flow: bool) -> BackendCounters {
    BackendCounters {
        to_backend: direction(frame, flags),
        new_flows: u64::from(new_flow),
        ..BackendCounters::default()
    }
}

/// Backend counters after one backend → client packet.
fn to_client(frame: &[u8], flags: u8) -> BackendCounters {
    BackendCounters {
        to_client: direction(frame, flags),
        ..BackendCounters::default()
    }
}

/// A flow entry as a case expects it (`stamp_ns` is checked to be set, then left out).
fn pinned_value(spec: &ServiceSpec, backend: &BackendSpec, state: FlowState) -> FlowValue {
    FlowValue {
        backend_addr: addr(backend.address.ip()),
        backend_port: backend.address.port().to_be(),
        color: color_of(spec, backend) as u8,
        state: state as u8,
        backend_id: backend.id,
        ..FlowValue::default()
    }
}

/// The two flow tables: verified flows, and the rest.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Table {
    Flows,
    Pending,
}

impl Table {
    /// The table a flow in `state` lives in.
    fn of(state: FlowState) -> Self {
        match state {
            FlowState::Established | FlowState::Closing | FlowState::Closed => Table::Flows,
            _ => Table::Pending,
        }
    }
}

/// The `BACKEND_REVERSE` entry a backend of `spec` must have: its replies go back to the
/// service address.
fn reverse_value(spec: &ServiceSpec, backend: &BackendSpec) -> ReverseValue {
    ReverseValue {
        service_addr: addr(spec.address.ip()),
        service_port: spec.address.port().to_be(),
        flags: 0,
        _pad: 0,
        backend_id: backend.id,
    }
}

// ---------------------------------------------------------------------------------------------
// Cases.

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Hook {
    /// XDP on the client-facing interface.
    Ingress,
    /// TC egress on the client-facing interface.
    Egress,
}

/// One packet through one program and everything it must change.
struct Case {
    name: String,
    hook: Hook,
    input: Vec<u8>,
    output: Vec<u8>,
    /// The verdict counter that goes up by one; `None`: none may change (egress non-match).
    reason: Option<Reason>,
    /// Check the input's and output's checksums from scratch.
    checksums: bool,
    /// Counter deltas; every other backend of the table must stay unchanged.
    backends: Vec<(u32, BackendCounters)>,
    /// `flow_misses` deltas per service id; every other service must stay unchanged.
    flow_misses: Vec<(u32, u64)>,
    /// `ambiguous_misses` deltas per service id; every other service must stay unchanged.
    ambiguous_misses: Vec<(u32, u64)>,
    /// Entries that must be in a table afterwards, with these values (flags and `synack_seq`
    /// included; `stamp_ns` must be set).
    held: Vec<(Table, FlowKey, FlowValue)>,
    /// How many entries `FLOWS` and `PENDING` gain (negative: lose).
    table_deltas: [i64; 2],
    /// Flows that must be in neither table afterwards.
    unpinned: Vec<FlowKey>,
    /// The kernel's test run may refuse the frame (EINVAL) instead of running the program: the
    /// skb test run validates some headers itself. Nothing may change then.
    refusable: bool,
}

impl Case {
    fn new(hook: Hook, name: impl Into<String>, input: Vec<u8>) -> Self {
        Self {
            name: name.into(),
            hook,
            output: input.clone(),
            input,
            reason: None,
            checksums: false,
            backends: Vec::new(),
            flow_misses: Vec::new(),
            ambiguous_misses: Vec::new(),
            held: Vec::new(),
            table_deltas: [0, 0],
            unpinned: Vec::new(),
            refusable: false,
        }
    }

    /// An XDP case whose packet must come out byte for byte as it went in.
    fn untouched(name: impl Into<String>, input: Vec<u8>, reason: Reason) -> Self {
        Self {
            reason: Some(reason),
            ..Self::new(Hook::Ingress, name, input)
        }
    }

    /// A TC egress case that must neither change the packet nor count it.
    fn egress_untouched(name: impl Into<String>, input: Vec<u8>) -> Self {
        Self::new(Hook::Egress, name, input)
    }

    fn rewritten(mut self, output: Vec<u8>, reason: Reason) -> Self {
        self.output = output;
        self.reason = Some(reason);
        self.checksums = true;
        self
    }

    fn backend(mut self, id: u32, delta: BackendCounters) -> Self {
        self.backends.push((id, delta));
        self
    }

    fn miss(mut self, service_id: u32) -> Self {
        self.flow_misses.push((service_id, 1));
        self
    }

    /// The mid-flow miss fell in the ambiguous band of the weight history.
    fn ambiguous(mut self, service_id: u32) -> Self {
        self.ambiguous_misses.push((service_id, 1));
        self
    }

    /// A new entry for `flow` in the table of `state`.
    fn pins(
        mut self,
        spec: &ServiceSpec,
        flow: &Flow,
        backend: &BackendSpec,
        state: FlowState,
    ) -> Self {
        let table = Table::of(state);
        self.table_deltas[table as usize] += 1;
        self.held
            .push((table, flow.key(), pinned_value(spec, backend, state)));
        self
    }

    /// `flow`'s entry afterwards (no table grows or shrinks unless [`Case::tables`] says so).
    fn holds(mut self, flow: &Flow, value: FlowValue) -> Self {
        let table = Table::of(FlowState::from_raw(value.state).expect("a state"));
        self.held.push((table, flow.key(), value));
        self
    }

    /// Entries `FLOWS` and `PENDING` gain (on top of [`Case::pins`]).
    fn tables(mut self, flows: i64, pending: i64) -> Self {
        self.table_deltas[0] += flows;
        self.table_deltas[1] += pending;
        self
    }

    /// Rollout signals this packet adds to a backend (on top of its traffic counters).
    fn signals(mut self, id: u32, signals: Signals) -> Self {
        match self.backends.iter_mut().find(|(backend, _)| *backend == id) {
            Some((_, delta)) => delta.signals = signals,
            None => self.backends.push((
                id,
                BackendCounters {
                    signals,
                    ..BackendCounters::default()
                },
            )),
        }
        self
    }

    fn not_pinned(mut self, flow: &Flow) -> Self {
        self.unpinned.push(flow.key());
        self
    }
}

/// A client → service packet that must be DNAT'd to `backend` for `reason` (NewFlow,
/// Established or FlowMiss), with its counters and, for a new pin, its flow entries.
fn dnat(
    name: impl Into<String>,
    spec: &ServiceSpec,
    flow: &Flow,
    packet: &Packet,
    backend: &BackendSpec,
    reason: Reason,
) -> Case {
    let input = packet.build();
    let output = with_destination(packet, backend.address).build();
    let flags = tcp_flags(packet);
    let rst = flow.protocol == Protocol::Tcp && flags & TCP_RST != 0;
    let pin = reason != Reason::Established && !rst;
    let mut case = Case::new(Hook::Ingress, name, input.clone())
        .rewritten(output, reason)
        .backend(backend.id, to_backend(&input, flags, pin));
    if pin {
        // A SYN opens a pending handshake, a UDP datagram a UDP flow, anything else of TCP an
        // unverified mid-flow flow: all in `PENDING`.
        let state = match flow.protocol {
            Protocol::Udp => FlowState::Udp,
            Protocol::Tcp if flags & (TCP_SYN | TCP_ACK) == TCP_SYN => FlowState::Pending,
            Protocol::Tcp => FlowState::Unverified,
        };
        case = case.pins(spec, flow, backend, state);
    }
    if rst && reason != Reason::Established {
        case = case.not_pinned(flow);
    }
    if reason == Reason::FlowMiss {
        case = case.miss(spec.id);
    }
    case
}

/// A backend's reply that the egress program must rewrite back to the service.
fn reverse_nat(
    name: impl Into<String>,
    flow: &Flow,
    reply: &Packet,
    backend: &BackendSpec,
) -> Case {
    let input = reply.build();
    let output = with_source(reply, flow.service).build();
    Case::new(Hook::Egress, name, input.clone())
        .rewritten(output, Reason::ToClient)
        .backend(backend.id, to_client(&input, tcp_flags(reply)))
}

// ---------------------------------------------------------------------------------------------
// The harness.

/// Everything a case may change, read before and after it.
struct Snapshot {
    verdicts: Vec<(Reason, u64)>,
    backends: HashMap<u32, BackendCounters>,
    flow_misses: HashMap<u32, u64>,
    ambiguous_misses: HashMap<u32, u64>,
    flows: usize,
    pending: usize,
}

fn minus(a: DirectionCounters, b: DirectionCounters) -> DirectionCounters {
    DirectionCounters {
        packets: a.packets - b.packets,
        bytes: a.bytes - b.bytes,
        tcp_syn: a.tcp_syn - b.tcp_syn,
        tcp_fin: a.tcp_fin - b.tcp_fin,
        tcp_rst: a.tcp_rst - b.tcp_rst,
    }
}

/// The signal counters that changed; the latency histogram must have one observation per
/// completed handshake (its buckets depend on timing, so they are checked, then left out).
fn signals_delta(after: Signals, before: Signals) -> Signals {
    let completed = after.handshakes_completed - before.handshakes_completed;
    let observed: u64 = after
        .handshake_latency_buckets
        .iter()
        .zip(before.handshake_latency_buckets)
        .map(|(a, b)| a - b)
        .sum();
    assert_eq!(
        observed, completed,
        "one latency observation per completed handshake"
    );
    Signals {
        handshakes_completed: completed,
        handshakes_refused: after.handshakes_refused - before.handshakes_refused,
        handshakes_timed_out: after.handshakes_timed_out - before.handshakes_timed_out,
        established_resets: after.established_resets - before.established_resets,
        ..Signals::default()
    }
}

fn backend_delta(after: BackendCounters, before: BackendCounters) -> BackendCounters {
    BackendCounters {
        to_backend: minus(after.to_backend, before.to_backend),
        to_client: minus(after.to_client, before.to_client),
        new_flows: after.new_flows - before.new_flows,
        signals: signals_delta(after.signals, before.signals),
    }
}

struct Harness {
    dataplane: Dataplane,
    services: Vec<ServiceSpec>,
}

impl Harness {
    fn new() -> Self {
        Self::with(&LoadOptions::default())
    }

    fn with(options: &LoadOptions) -> Self {
        let dataplane = Dataplane::load(options)
            .unwrap_or_else(|e| panic!("loading the real eBPF object failed: {e:?}"));
        Self {
            dataplane,
            services: Vec::new(),
        }
    }

    fn install(&mut self, spec: &ServiceSpec) {
        self.dataplane
            .maps
            .install_service(spec)
            .unwrap_or_else(|e| panic!("install {spec:?}: {e}"));
        for backend in spec.blue.iter().chain(&spec.green) {
            let key = BackendKey {
                addr: addr(backend.address.ip()),
                port: backend.address.port().to_be(),
                protocol: spec.protocol.number(),
                family: family_of(backend.address.ip()) as u8,
            };
            let reverse = self
                .dataplane
                .maps
                .backend_reverse
                .get(&key, 0)
                .unwrap_or_else(|e| panic!("no reply path for backend {}: {e}", backend.address));
            assert_eq!(
                reverse,
                reverse_value(spec, backend),
                "reply path of {}",
                backend.address
            );
        }
        self.services.retain(|s| s.id != spec.id);
        self.services.push(spec.clone());
    }

    fn set_weight(&mut self, spec: &ServiceSpec, weight: u32) {
        self.dataplane
            .maps
            .set_weight(&spec.address, spec.protocol, weight)
            .unwrap_or_else(|e| panic!("set_weight {}: {e}", spec.address));
    }

    fn snapshot(&self) -> Snapshot {
        let maps = &self.dataplane.maps;
        let mut backends = HashMap::new();
        let mut flow_misses = HashMap::new();
        let mut ambiguous_misses = HashMap::new();
        for spec in &self.services {
            for backend in spec.blue.iter().chain(&spec.green) {
                backends.insert(backend.id, maps.backend_counters(backend.id).unwrap());
            }
            let counters = maps.service_counters(spec.id).unwrap();
            flow_misses.insert(spec.id, counters.flow_misses);
            ambiguous_misses.insert(spec.id, counters.ambiguous_misses);
        }
        Snapshot {
            verdicts: maps.verdicts().unwrap(),
            backends,
            flow_misses,
            ambiguous_misses,
            flows: maps.flows.keys().map(Result::unwrap).count(),
            pending: maps.pending.keys().map(Result::unwrap).count(),
        }
    }

    /// Runs the program once (repeat = 1: the kernel would not restore the packet between
    /// runs) and returns its verdict and output frame, or the kernel's refusal.
    fn try_test_run(&mut self, hook: Hook, frame: &[u8]) -> Result<(u32, Vec<u8>), ProgramError> {
        let mut data_out = vec![0u8; frame.len() + 256];
        let options = TestRunOptions {
            data_in: Some(frame),
            data_out: Some(&mut data_out),
            repeat: 1,
            ..TestRunOptions::default()
        };
        let result = match hook {
            Hook::Ingress => self.dataplane.ingress_program().unwrap().test_run(options),
            Hook::Egress => self.dataplane.egress_program().unwrap().test_run(options),
        }?;
        data_out.truncate(result.data_size_out as usize);
        Ok((result.return_value, data_out))
    }

    fn run(&mut self, case: &Case) {
        let name = &case.name;
        if case.checksums {
            packet::verify_checksums(&case.input)
                .unwrap_or_else(|e| panic!("{name}: the test's own input is broken: {e}"));
        }
        let before = self.snapshot();
        let (verdict, output) = match self.try_test_run(case.hook, &case.input) {
            Ok(ran) => ran,
            Err(ProgramError::SyscallError(e))
                if case.refusable && e.io_error.raw_os_error() == Some(libc::EINVAL) =>
            {
                let after = self.snapshot();
                assert_eq!(
                    after.verdicts, before.verdicts,
                    "{name}: refused, yet counted"
                );
                assert_eq!(after.flows, before.flows, "{name}: refused, yet pinned");
                assert_eq!(after.pending, before.pending, "{name}: refused, yet held");
                eprintln!("{name}: the kernel's test run refused the frame (EINVAL)");
                return;
            }
            Err(e) => panic!("{name}: BPF_PROG_TEST_RUN ({:?}): {e:?}", case.hook),
        };
        let after = self.snapshot();

        let expected_verdict = match case.hook {
            Hook::Ingress => XDP_PASS,
            Hook::Egress => TC_ACT_OK,
        };
        assert_eq!(verdict, expected_verdict, "{name}: program verdict");
        assert_frames_eq(name, &output, &case.output);
        if case.checksums {
            let checked_in = packet::verify_checksums(&case.input).unwrap();
            let checked_out = packet::verify_checksums(&output)
                .unwrap_or_else(|e| panic!("{name}: output checksum: {e}"));
            assert_eq!(checked_out, checked_in, "{name}: checksums verified in/out");
        }

        for ((reason, was), (_, is)) in before.verdicts.iter().zip(&after.verdicts) {
            let expected = u64::from(case.reason == Some(*reason));
            assert_eq!(
                is - was,
                expected,
                "{name}: verdict counter `{}` should go up by {expected} (expected reason {:?})",
                reason.label(),
                case.reason
            );
        }
        for (id, was) in &before.backends {
            let expected = case
                .backends
                .iter()
                .find(|(backend, _)| backend == id)
                .map_or_else(BackendCounters::default, |(_, delta)| *delta);
            assert_eq!(
                backend_delta(after.backends[id], *was),
                expected,
                "{name}: counters of backend {id}"
            );
        }
        for (id, was) in &before.flow_misses {
            let expected = case
                .flow_misses
                .iter()
                .find(|(service, _)| service == id)
                .map_or(0, |(_, delta)| *delta);
            assert_eq!(
                after.flow_misses[id] - was,
                expected,
                "{name}: flow_misses of service {id}"
            );
        }

        for (id, was) in &before.ambiguous_misses {
            let expected = case
                .ambiguous_misses
                .iter()
                .find(|(service, _)| service == id)
                .map_or(0, |(_, delta)| *delta);
            assert_eq!(
                after.ambiguous_misses[id] - was,
                expected,
                "{name}: ambiguous_misses of service {id}"
            );
        }

        let maps = &self.dataplane.maps;
        assert_eq!(
            [
                after.flows as i64 - before.flows as i64,
                after.pending as i64 - before.pending as i64
            ],
            case.table_deltas,
            "{name}: entries gained by [FLOWS, PENDING]"
        );
        for (table, key, expected) in &case.held {
            let held = match table {
                Table::Flows => maps.flows.get(key, 0),
                Table::Pending => maps.pending.get(key, 0),
            }
            .unwrap_or_else(|e| panic!("{name}: flow {key:?} not in {table:?}: {e}"));
            assert!(held.stamp > 0, "{name}: flow entry has no timestamp");
            // The times (when pinned, the handshake's) are checked by the cases that age them.
            assert_eq!(
                FlowValue {
                    stamp: 0,
                    handshake: 0,
                    ..held
                },
                *expected,
                "{name}: flow entry in {table:?}"
            );
        }
        for key in &case.unpinned {
            assert!(
                maps.flows.get(key, 0).is_err() && maps.pending.get(key, 0).is_err(),
                "{name}: flow {key:?} must be in neither table"
            );
        }
    }

    fn run_all(&mut self, cases: &[Case]) {
        for case in cases {
            self.run(case);
        }
        eprintln!("{} cases passed", cases.len());
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes
        .chunks(16)
        .enumerate()
        .map(|(row, chunk)| {
            let words: Vec<String> = chunk.iter().map(|b| format!("{b:02x}")).collect();
            format!("{:04x}: {}", row * 16, words.join(" "))
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn assert_frames_eq(name: &str, actual: &[u8], expected: &[u8]) {
    if actual == expected {
        return;
    }
    let first = actual
        .iter()
        .zip(expected)
        .position(|(a, e)| a != e)
        .unwrap_or(actual.len().min(expected.len()));
    panic!(
        "{name}: output differs from the expected frame at byte {first} (lengths {} vs {})\n\
         actual:\n{}\nexpected:\n{}",
        actual.len(),
        expected.len(),
        hex(actual),
        hex(expected)
    );
}

/// Both families × both protocols.
const COMBOS: [(bool, Protocol); 4] = [
    (false, Protocol::Tcp),
    (false, Protocol::Udp),
    (true, Protocol::Tcp),
    (true, Protocol::Udp),
];

fn label(v6: bool, protocol: Protocol) -> String {
    format!("{}/{protocol:?}", if v6 { "IPv6" } else { "IPv4" })
}

/// The packet that opens a flow: a SYN, or any UDP datagram.
fn opening(protocol: Protocol) -> u8 {
    match protocol {
        Protocol::Tcp => TCP_SYN,
        Protocol::Udp => 0,
    }
}

/// A client port from `from` on whose flow lands on `color` at `weight`.
fn port_for(spec: &ServiceSpec, v6: bool, from: u16, weight: u32, color: Color) -> u16 {
    (from..from + 1000)
        .find(|&port| {
            let flow = Flow::new(spec, client(v6, 1, port));
            color_of(spec, predict(spec, &flow.key(), weight)) == color
        })
        .expect("some port lands on each color")
}

// ---------------------------------------------------------------------------------------------
// Tests.

#[test]
fn new_flows_pin_and_established_flows_keep_their_backend() {
    if !require_privileges("new_flows_pin_and_established_flows_keep_their_backend") {
        return;
    }
    let mut harness = Harness::new();
    for (i, (v6, protocol)) in COMBOS.into_iter().enumerate() {
        let what = label(v6, protocol);
        let spec = service(1 + i as u32, v6, protocol, Cohort::Flow, HALF, HOUR);
        harness.install(&spec);
        // One flow that starts green and one that starts blue; then the weight swings to the
        // other extreme and both must stay where they were pinned.
        for (color, other_weight) in [(Color::Green, 0), (Color::Blue, ALL_GREEN)] {
            harness.set_weight(&spec, HALF);
            let flow = Flow::new(
                &spec,
                client(v6, 1, port_for(&spec, v6, 40000, HALF, color)),
            );
            let backend = predict(&spec, &flow.key(), HALF);
            assert_eq!(color_of(&spec, backend), color);
            let follow = match protocol {
                Protocol::Tcp => TCP_ACK,
                Protocol::Udp => 0,
            };
            harness.run_all(&[
                dnat(
                    format!("{what}: first packet of a {color:?} flow → new flow, pinned"),
                    &spec,
                    &flow,
                    &flow.packet(opening(protocol)),
                    backend,
                    Reason::NewFlow,
                ),
                dnat(
                    format!("{what}: second packet of the {color:?} flow → established"),
                    &spec,
                    &flow,
                    &flow.packet(follow).with_payload(b"request"),
                    backend,
                    Reason::Established,
                ),
            ]);
            harness.set_weight(&spec, other_weight);
            let now = predict(&spec, &flow.key(), other_weight);
            assert_ne!(color_of(&spec, now), color, "the weight change must matter");
            harness.run_all(&[
                dnat(
                    format!("{what}: {color:?} flow after the weight moved to {other_weight}"),
                    &spec,
                    &flow,
                    &flow.packet(follow | TCP_PSH).with_payload(b"more"),
                    backend,
                    Reason::Established,
                ),
                dnat(
                    format!("{what}: {color:?} flow, FIN → established, FIN counted"),
                    &spec,
                    &flow,
                    &flow.packet(TCP_FIN | TCP_ACK),
                    backend,
                    Reason::Established,
                ),
            ]);
        }
    }
}

#[test]
fn weights_decide_the_color_of_new_flows() {
    if !require_privileges("weights_decide_the_color_of_new_flows") {
        return;
    }
    let mut harness = Harness::new();
    for (i, (v6, protocol)) in COMBOS.into_iter().enumerate() {
        let what = label(v6, protocol);
        let spec = service(1 + i as u32, v6, protocol, Cohort::Flow, 0, HOUR);
        harness.install(&spec);
        let mut port = 30000;
        for (weight, flows) in [(0, 8), (ALL_GREEN, 8), (HALF, 24)] {
            harness.set_weight(&spec, weight);
            let mut seen = HashMap::new();
            let mut cases = Vec::new();
            for _ in 0..flows {
                port += 1;
                let flow = Flow::new(&spec, client(v6, 2, port));
                let backend = predict(&spec, &flow.key(), weight);
                *seen.entry(backend.id).or_insert(0) += 1;
                let color = color_of(&spec, backend);
                match weight {
                    0 => assert_eq!(color, Color::Blue, "weight 0: every flow blue"),
                    ALL_GREEN => assert_eq!(color, Color::Green, "weight 100 %: every flow green"),
                    _ => {}
                }
                cases.push(dnat(
                    format!(
                        "{what}: weight {weight}, client port {port} → {color:?} {}",
                        backend.id
                    ),
                    &spec,
                    &flow,
                    &flow.packet(opening(protocol)),
                    backend,
                    Reason::NewFlow,
                ));
            }
            if weight == HALF {
                let green = spec
                    .green
                    .iter()
                    .filter(|b| seen.contains_key(&b.id))
                    .count();
                let blue = spec
                    .blue
                    .iter()
                    .filter(|b| seen.contains_key(&b.id))
                    .count();
                assert!(
                    green > 0 && blue > 0,
                    "{what}: at 50 % both colors must get flows: {seen:?}"
                );
            }
            harness.run_all(&cases);
        }
    }
}

#[test]
fn client_cohort_keeps_a_client_on_one_backend() {
    if !require_privileges("client_cohort_keeps_a_client_on_one_backend") {
        return;
    }
    let mut harness = Harness::new();
    for (i, (v6, protocol)) in COMBOS.into_iter().enumerate() {
        let what = label(v6, protocol);
        let spec = service(1 + i as u32, v6, protocol, Cohort::Client, HALF, HOUR);
        harness.install(&spec);
        // A client that hashes green and one that hashes blue.
        for color in [Color::Green, Color::Blue] {
            let host_id = (1..500)
                .find(|&h| {
                    let flow = Flow::new(&spec, client(v6, h, 1));
                    color_of(&spec, predict(&spec, &flow.key(), HALF)) == color
                })
                .unwrap();
            let first = Flow::new(&spec, client(v6, host_id, 1));
            let backend = predict(&spec, &first.key(), HALF);
            let cases: Vec<Case> = [1024, 2000, 40001, 65535]
                .into_iter()
                .map(|port| {
                    let flow = Flow::new(&spec, client(v6, host_id, port));
                    assert_eq!(predict(&spec, &flow.key(), HALF), backend);
                    dnat(
                        format!(
                            "{what}: {color:?} client {} port {port} → backend {}",
                            flow.client.ip(),
                            backend.id
                        ),
                        &spec,
                        &flow,
                        &flow.packet(opening(protocol)),
                        backend,
                        Reason::NewFlow,
                    )
                })
                .collect();
            harness.run_all(&cases);
        }
    }
}

#[test]
fn flow_misses_follow_the_weight_in_force_when_the_flow_began() {
    if !require_privileges("flow_misses_follow_the_weight_in_force_when_the_flow_began") {
        return;
    }
    let mut harness = Harness::new();
    for (i, v6) in [false, true].into_iter().enumerate() {
        let what = label(v6, Protocol::Tcp);
        // Blue until just now, green from now on; one service still honours the previous weight
        // for misses (an hour of hold), the other does not (no hold).
        for (j, (hold, steered_by)) in [(HOUR, 0), (Duration::ZERO, ALL_GREEN)]
            .into_iter()
            .enumerate()
        {
            let spec = service(
                1 + 2 * i as u32 + j as u32,
                v6,
                Protocol::Tcp,
                Cohort::Flow,
                0,
                hold,
            );
            harness.install(&spec);
            harness.set_weight(&spec, ALL_GREEN);
            let held = format!("{what}, miss_hold {hold:?}");
            let flow = Flow::new(&spec, client(v6, 3, 50000));
            let backend = predict(&spec, &flow.key(), steered_by);
            let syn_flow = Flow::new(&spec, client(v6, 3, 50001));
            let syn_backend = predict(&spec, &syn_flow.key(), ALL_GREEN);
            let rst_flow = Flow::new(&spec, client(v6, 3, 50002));
            let rst_backend = predict(&spec, &rst_flow.key(), steered_by);
            // Weights 0 and 100 % in the window: every hash is in the ambiguous band.
            let band = |case: Case| {
                if hold.is_zero() {
                    case
                } else {
                    case.ambiguous(spec.id)
                }
            };
            harness.run_all(&[
                band(dnat(
                    format!(
                        "{held}: ACK without a pinned flow → miss, steered by weight {steered_by}"
                    ),
                    &spec,
                    &flow,
                    &flow.packet(TCP_ACK).with_payload(b"mid-flow"),
                    backend,
                    Reason::FlowMiss,
                )),
                dnat(
                    format!("{held}: next ACK of the missed flow → established"),
                    &spec,
                    &flow,
                    &flow.packet(TCP_ACK),
                    backend,
                    Reason::Established,
                ),
                dnat(
                    format!("{held}: a SYN always takes the current weight"),
                    &spec,
                    &syn_flow,
                    &syn_flow.packet(TCP_SYN),
                    syn_backend,
                    Reason::NewFlow,
                ),
                band(dnat(
                    format!("{held}: RST without a pinned flow → miss, forwarded, not pinned"),
                    &spec,
                    &rst_flow,
                    &rst_flow.packet(TCP_RST | TCP_ACK),
                    rst_backend,
                    Reason::FlowMiss,
                )),
                band(dnat(
                    format!("{held}: a second RST is a miss again (nothing was pinned)"),
                    &spec,
                    &rst_flow,
                    &rst_flow.packet(TCP_RST),
                    rst_backend,
                    Reason::FlowMiss,
                )),
            ]);
            assert_eq!(
                color_of(&spec, backend),
                if steered_by == 0 {
                    Color::Blue
                } else {
                    Color::Green
                }
            );
        }
    }
}

#[test]
fn reinstalling_a_service_keeps_the_miss_hold_generation() {
    if !require_privileges("reinstalling_a_service_keeps_the_miss_hold_generation") {
        return;
    }
    let mut harness = Harness::new();
    let mut spec = service(1, false, Protocol::Tcp, Cohort::Flow, 0, HOUR);
    harness.install(&spec);
    harness.set_weight(&spec, ALL_GREEN);
    // A config reload re-installs the service with the weight it already has: the change from
    // 0 a moment ago must still steer misses.
    spec.green_weight = ALL_GREEN;
    harness.install(&spec);
    let flow = Flow::new(&spec, client(false, 4, 41000));
    let backend = predict(&spec, &flow.key(), 0);
    harness.run(
        &dnat(
            "ACK miss after a reload with the same weight → still the previous weight (blue)",
            &spec,
            &flow,
            &flow.packet(TCP_ACK),
            backend,
            Reason::FlowMiss,
        )
        .ambiguous(spec.id),
    );
}

#[test]
fn egress_rewrites_backend_replies_back_to_the_service() {
    if !require_privileges("egress_rewrites_backend_replies_back_to_the_service") {
        return;
    }
    let mut harness = Harness::new();
    for (i, (v6, protocol)) in COMBOS.into_iter().enumerate() {
        let what = label(v6, protocol);
        let spec = service(1 + i as u32, v6, protocol, Cohort::Flow, HALF, HOUR);
        harness.install(&spec);
        let flow = Flow::new(&spec, client(v6, 5, 42000));
        let backend = predict(&spec, &flow.key(), HALF);
        let other = spec
            .blue
            .iter()
            .chain(&spec.green)
            .find(|b| *b != backend)
            .unwrap();
        let reply = flow.reply(backend.address, TCP_SYN | TCP_ACK);
        let stranger = Flow::new(&spec, client(v6, 5, 42001));
        let mut cases = vec![
            dnat(
                format!("{what}: opening packet"),
                &spec,
                &flow,
                &flow.packet(opening(protocol)),
                backend,
                Reason::NewFlow,
            ),
            reverse_nat(
                format!("{what}: backend reply → from the service"),
                &flow,
                &reply,
                backend,
            )
            // The SYN-ACK answers the client's SYN; the handshake completes (and counts) only
            // with the client's ACK of it.
            .holds(
                &flow,
                match protocol {
                    Protocol::Tcp => FlowValue {
                        synack_seq: 1000,
                        ..pinned_value(&spec, backend, FlowState::SynAcked)
                    },
                    Protocol::Udp => pinned_value(&spec, backend, FlowState::Udp),
                },
            ),
            reverse_nat(
                format!("{what}: backend reply with data → from the service"),
                &flow,
                &flow
                    .reply(backend.address, TCP_ACK | TCP_PSH)
                    .with_payload(b"response body"),
                backend,
            ),
            // The reply path is stateless (BACKEND_REVERSE): replies of flows this host does
            // not know (evicted, or begun on another host behind ECMP) are rewritten too.
            reverse_nat(
                format!("{what}: reply of a flow not pinned here → from the service"),
                &stranger,
                &stranger.reply(backend.address, TCP_ACK),
                backend,
            ),
            reverse_nat(
                format!("{what}: reply from another backend of the service → from the service"),
                &flow,
                &flow.reply(other.address, TCP_ACK),
                other,
            ),
            Case::egress_untouched(
                format!("{what}: reply from a backend port that is not the service's → untouched"),
                flow.reply(
                    SocketAddr::new(backend.address.ip(), backend.address.port() + 1),
                    TCP_ACK,
                )
                .build(),
            ),
            Case::egress_untouched(
                format!("{what}: the client's own packet → untouched"),
                flow.packet(TCP_ACK).build(),
            ),
            Case::egress_untouched(
                format!("{what}: already from the service → untouched"),
                flow.reply(flow.service, TCP_ACK).build(),
            ),
        ];
        if protocol == Protocol::Tcp {
            cases.push(reverse_nat(
                format!("{what}: backend FIN → from the service, FIN counted"),
                &flow,
                &flow.reply(backend.address, TCP_FIN | TCP_ACK),
                backend,
            ));
        }
        if !v6 && protocol == Protocol::Udp {
            let mut zero = flow.reply(backend.address, 0);
            if let L4::Udp(udp) = &mut zero.l4 {
                udp.checksum = Some(0);
            }
            cases.push(reverse_nat(
                format!("{what}: reply without a UDP checksum → checksum stays zero"),
                &flow,
                &zero,
                backend,
            ));
            let out = with_source(&zero, flow.service).build();
            assert_eq!(&out[ETH_HLEN + 26..ETH_HLEN + 28], &[0, 0]);
        }
        // With IPv4 options / IPv6 extension headers the reply is found and rewritten too.
        let mut long = flow.reply(backend.address, TCP_ACK);
        match &mut long.ip {
            Ip::V4(v4) => v4.options = vec![0x94, 0x04, 0, 0, 0x01, 0x01, 0x01, 0x00],
            Ip::V6(v6) => {
                v6.extensions = vec![
                    Extension::HopByHop(vec![0x05, 0x02, 0, 0]),
                    Extension::DestinationOptions(vec![]),
                ]
            }
        }
        cases.push(reverse_nat(
            format!("{what}: reply with IPv4 options / IPv6 extension headers"),
            &flow,
            &long,
            backend,
        ));
        harness.run_all(&cases);
    }
}

/// IPv4 options of several lengths, IPv6 extension headers of each kind and in chains: the L4
/// header is found behind them and the packet is DNAT'd.
#[test]
fn options_and_extension_headers_are_skipped() {
    if !require_privileges("options_and_extension_headers_are_skipped") {
        return;
    }
    let mut harness = Harness::new();
    let options: [(&str, Vec<u8>); 4] = [
        ("router alert (IHL 6)", vec![0x94, 0x04, 0x00, 0x00]),
        ("NOPs + timestamp (IHL 9)", {
            let mut o = vec![0x01, 0x01, 0x44, 0x0c, 0x05, 0x00];
            o.extend_from_slice(&[0; 8]);
            o
        }),
        ("record route, 40 bytes (IHL 15)", {
            let mut o = vec![0x07, 39, 4];
            o.extend_from_slice(&[0; 36]);
            o
        }),
        ("end of options list (IHL 6)", vec![0x00, 0x00, 0x00, 0x00]),
    ];
    let routing = Extension::Routing {
        routing_type: 4,
        segments_left: 0,
        data: {
            // Segment routing header: last entry, flags, tag, one segment.
            let mut d = vec![0, 0, 0, 0];
            d.extend_from_slice(&Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0xff, 1).octets());
            d
        },
    };
    let hop = Extension::HopByHop(vec![0x05, 0x02, 0x00, 0x00]);
    let dest = Extension::DestinationOptions(vec![0x1e, 0x04, 1, 2, 3, 4]);
    let big_dest =
        Extension::DestinationOptions(vec![0x1e, 20].into_iter().chain([7; 20]).collect());
    let atomic = Extension::Fragment {
        offset: 0,
        more: false,
        id: 7,
    };
    let auth = Extension::Authentication {
        spi: 0x100,
        seq: 1,
        icv_words: 3,
    };
    let chains: [(&str, Vec<Extension>); 9] = [
        ("hop-by-hop", vec![hop.clone()]),
        ("destination options", vec![dest.clone()]),
        ("destination options, 24 bytes", vec![big_dest.clone()]),
        ("routing (SRH, segments left 0)", vec![routing.clone()]),
        ("atomic fragment", vec![atomic.clone()]),
        ("authentication header", vec![auth.clone()]),
        (
            "hop-by-hop + destination + routing",
            vec![hop.clone(), dest.clone(), routing.clone()],
        ),
        (
            "hop-by-hop + routing + fragment + authentication",
            vec![hop.clone(), routing.clone(), atomic.clone(), auth.clone()],
        ),
        (
            "the RFC 8200 order, six headers",
            vec![
                hop.clone(),
                big_dest.clone(),
                routing.clone(),
                atomic.clone(),
                auth.clone(),
                dest.clone(),
            ],
        ),
    ];
    for (i, (v6, protocol)) in COMBOS.into_iter().enumerate() {
        let what = label(v6, protocol);
        let spec = service(1 + i as u32, v6, protocol, Cohort::Flow, HALF, HOUR);
        harness.install(&spec);
        let variants: Vec<(String, Ip)> = if v6 {
            chains
                .iter()
                .map(|(name, chain)| {
                    let mut ip = ip_layer(client(true, 0, 0).ip(), spec.address.ip());
                    if let Ip::V6(v6) = &mut ip {
                        v6.extensions = chain.clone();
                    }
                    (name.to_string(), ip)
                })
                .collect()
        } else {
            options
                .iter()
                .map(|(name, option)| {
                    let mut ip = ip_layer(client(false, 0, 0).ip(), spec.address.ip());
                    if let Ip::V4(v4) = &mut ip {
                        v4.options = option.clone();
                    }
                    (name.to_string(), ip)
                })
                .collect()
        };
        let mut cases = Vec::new();
        for (j, (name, layer)) in variants.into_iter().enumerate() {
            let flow = Flow::new(&spec, client(v6, 6, 43000 + j as u16));
            let backend = predict(&spec, &flow.key(), HALF);
            let mut first = flow.packet(opening(protocol));
            let mut second = flow.packet(TCP_ACK);
            for packet in [&mut first, &mut second] {
                let mut ip = layer.clone();
                set_ip(&mut ip, Some(flow.client.ip()), None);
                packet.ip = ip;
            }
            cases.push(dnat(
                format!("{what}, {name}: new flow"),
                &spec,
                &flow,
                &first,
                backend,
                Reason::NewFlow,
            ));
            cases.push(dnat(
                format!("{what}, {name}: established"),
                &spec,
                &flow,
                &second,
                backend,
                Reason::Established,
            ));
        }
        harness.run_all(&cases);
    }
}

/// `frame` with `extra` zero bytes after it (Ethernet padding: not part of the IP packet).
fn padded(frame: &[u8], extra: usize) -> Vec<u8> {
    let mut out = frame.to_vec();
    out.resize(frame.len() + extra, 0);
    out
}

fn cut(frame: &[u8], len: usize) -> Vec<u8> {
    assert!(
        len < frame.len(),
        "cutting {len} of {} bytes cuts nothing",
        frame.len()
    );
    frame[..len].to_vec()
}

/// Frames cut short at every layer and malformed headers: passed on byte for byte, counted
/// under the reason that names the layer. Every one is addressed to a live service with pinned
/// flows, so an unnoticed cut would show as a rewrite. The egress program leaves them alone.
#[test]
fn truncated_and_malformed_packets_pass_untouched() {
    if !require_privileges("truncated_and_malformed_packets_pass_untouched") {
        return;
    }
    let mut harness = Harness::new();
    let tcp4 = service(1, false, Protocol::Tcp, Cohort::Flow, HALF, HOUR);
    let udp4 = service(2, false, Protocol::Udp, Cohort::Flow, HALF, HOUR);
    let tcp6 = service(3, true, Protocol::Tcp, Cohort::Flow, HALF, HOUR);
    let udp6 = service(4, true, Protocol::Udp, Cohort::Flow, HALF, HOUR);
    for spec in [&tcp4, &udp4, &tcp6, &udp6] {
        harness.install(spec);
    }
    let flow4 = Flow::new(&tcp4, client(false, 7, 44000));
    let flow6 = Flow::new(&tcp6, client(true, 7, 44000));
    let uflow4 = Flow::new(&udp4, client(false, 7, 44000));
    let uflow6 = Flow::new(&udp6, client(true, 7, 44000));
    // Pin the flows so that ICMP errors about them would be rewritten if parsed.
    let mut setup = Vec::new();
    for (spec, flow) in [
        (&tcp4, &flow4),
        (&tcp6, &flow6),
        (&udp4, &uflow4),
        (&udp6, &uflow6),
    ] {
        let backend = predict(spec, &flow.key(), HALF);
        setup.push(dnat(
            format!("{} setup", label(flow.client.is_ipv6(), flow.protocol)),
            spec,
            flow,
            &flow.packet(opening(flow.protocol)),
            backend,
            Reason::NewFlow,
        ));
    }
    harness.run_all(&setup);

    let syn4 = flow4.packet(TCP_SYN).build();
    let syn6 = flow6.packet(TCP_SYN).build();
    let udp4_frame = uflow4.packet(0).build();
    let udp6_frame = uflow6.packet(0).build();
    let with_options = {
        let mut packet = flow4.packet(TCP_SYN);
        if let Ip::V4(v4) = &mut packet.ip {
            v4.options = vec![0x94, 0x04, 0, 0, 0x01, 0x01, 0x01, 0x00];
        }
        packet.build()
    };
    let with_extensions = |chain: Vec<Extension>| {
        let mut packet = flow6.packet(TCP_SYN);
        if let Ip::V6(v6) = &mut packet.ip {
            v6.extensions = chain;
        }
        packet.build()
    };
    let hop = Extension::HopByHop(vec![0x05, 0x02, 0, 0]);
    let long_hop = Extension::HopByHop(vec![0x1e, 12].into_iter().chain([9; 12]).collect());
    let hop_frame = with_extensions(vec![hop.clone()]);
    let long_hop_frame = with_extensions(vec![long_hop]);
    let seven = with_extensions(vec![
        hop.clone(),
        Extension::DestinationOptions(vec![]),
        Extension::DestinationOptions(vec![]),
        Extension::DestinationOptions(vec![]),
        Extension::DestinationOptions(vec![]),
        Extension::DestinationOptions(vec![]),
        Extension::DestinationOptions(vec![]),
    ]);
    let patched = |frame: &[u8], at: usize, value: u8| {
        let mut out = frame.to_vec();
        out[at] = value;
        out
    };
    let l3 = ETH_HLEN;
    let l4v4 = ETH_HLEN + 20;
    let l4v6 = ETH_HLEN + 40;

    // ICMP errors about the pinned flows, quoting a service → client packet.
    let icmp4 = |body_len: usize, quoted: &Packet| {
        let mut body = quoted.ip_bytes();
        body.truncate(body_len);
        Packet::icmp(
            ip_layer(host(false, 250, 254), flow4.service.ip()),
            3,
            4,
            [0, 0, 0x05, 0x78],
            &body,
        )
        .build()
    };
    let icmp6 = |body_len: usize, quoted: &Packet| {
        let mut body = quoted.ip_bytes();
        body.truncate(body_len);
        Packet::icmp(
            ip_layer(host(true, 250, 254), flow6.service.ip()),
            2,
            0,
            1280u32.to_be_bytes(),
            &body,
        )
        .build()
    };
    let quoted4 = flow4.reply(flow4.service, TCP_ACK);
    let quoted4_options = {
        let mut packet = quoted4.clone();
        if let Ip::V4(v4) = &mut packet.ip {
            v4.options = vec![0x01; 8];
        }
        packet
    };
    let quoted6 = flow6.reply(flow6.service, TCP_ACK);
    let quoted6_ext = {
        let mut packet = quoted6.clone();
        if let Ip::V6(v6) = &mut packet.ip {
            v6.extensions = vec![Extension::DestinationOptions(
                vec![0x1e, 10].into_iter().chain([1; 10]).collect(),
            )];
        }
        packet
    };

    let mut cases = vec![
        Case::untouched(
            "IPv4: Ethernet header only",
            cut(&syn4, l3),
            Reason::TruncatedIpv4,
        ),
        Case::untouched(
            "IPv4: fixed header cut at 19 bytes",
            cut(&syn4, l3 + 19),
            Reason::TruncatedIpv4,
        ),
        Case::untouched(
            "IPv4: options cut (IHL 7, 24 of 28 bytes)",
            cut(&with_options, l3 + 24),
            Reason::TruncatedIpv4,
        ),
        Case::untouched(
            "IPv4: options cut (IHL 7, 20 of 28 bytes)",
            cut(&with_options, l3 + 20),
            Reason::TruncatedIpv4,
        ),
        Case::untouched(
            "IPv4: version 6 in an IPv4 frame",
            patched(&syn4, l3, 0x65),
            Reason::MalformedIpv4,
        ),
        Case::untouched(
            "IPv4: version 0",
            patched(&syn4, l3, 0x05),
            Reason::MalformedIpv4,
        ),
        Case::untouched(
            "IPv4: IHL 4",
            patched(&syn4, l3, 0x44),
            Reason::MalformedIpv4,
        ),
        Case::untouched(
            "IPv4: IHL 0",
            patched(&syn4, l3, 0x40),
            Reason::MalformedIpv4,
        ),
        Case::untouched(
            "IPv4: total length below the header length",
            patched(&syn4, l3 + 3, 19),
            Reason::MalformedIpv4,
        ),
        Case::untouched(
            "IPv4 TCP: header cut at 19 bytes",
            cut(&syn4, l4v4 + 19),
            Reason::TruncatedL4,
        ),
        Case::untouched(
            "IPv4 TCP: header cut at 1 byte",
            cut(&syn4, l4v4 + 1),
            Reason::TruncatedL4,
        ),
        Case::untouched(
            "IPv4 TCP: no L4 header at all",
            cut(&syn4, l4v4),
            Reason::TruncatedL4,
        ),
        Case::untouched(
            "IPv4 TCP: data offset 4",
            patched(&syn4, l4v4 + 12, 0x40),
            Reason::MalformedTcp,
        ),
        Case::untouched(
            "IPv4 TCP: SYN with data offset 15 and no options (past the IP payload)",
            patched(&syn4, l4v4 + 12, 0xf0),
            Reason::MalformedTcp,
        ),
        Case::untouched(
            "IPv4 TCP: data offset 15, the frame padded past it (the IP length decides)",
            padded(&patched(&syn4, l4v4 + 12, 0xf0), 60),
            Reason::MalformedTcp,
        ),
        Case::untouched(
            "IPv4 UDP: header cut at 7 bytes",
            cut(&udp4_frame, l4v4 + 7),
            Reason::TruncatedL4,
        ),
        Case::untouched(
            "IPv6: fixed header cut at 39 bytes",
            cut(&syn6, l3 + 39),
            Reason::TruncatedIpv6,
        ),
        Case::untouched(
            "IPv6: Ethernet header only",
            cut(&syn6, l3),
            Reason::TruncatedIpv6,
        ),
        Case::untouched(
            "IPv6: hop-by-hop cut at 4 bytes",
            cut(&hop_frame, l4v6 + 4),
            Reason::BadIpv6Extension,
        ),
        Case::untouched(
            "IPv6: 16-byte hop-by-hop cut at 12 bytes",
            cut(&long_hop_frame, l4v6 + 12),
            Reason::BadIpv6Extension,
        ),
        Case::untouched(
            "IPv6: seven extension headers (more than the parser follows)",
            seven,
            Reason::BadIpv6Extension,
        ),
        Case::untouched(
            "IPv6 TCP: header cut at 19 bytes",
            cut(&syn6, l4v6 + 19),
            Reason::TruncatedL4,
        ),
        Case::untouched(
            "IPv6 TCP: after a hop-by-hop header, cut at 10 bytes",
            cut(&hop_frame, l4v6 + 8 + 10),
            Reason::TruncatedL4,
        ),
        Case::untouched(
            "IPv6 TCP: data offset 0",
            patched(&syn6, l4v6 + 12, 0x00),
            Reason::MalformedTcp,
        ),
        Case::untouched(
            "IPv6 TCP: SYN with data offset 15 and no options (past the IP payload)",
            patched(&syn6, l4v6 + 12, 0xf0),
            Reason::MalformedTcp,
        ),
        Case::untouched(
            "IPv6 UDP: header cut at 7 bytes",
            cut(&udp6_frame, l4v6 + 7),
            Reason::TruncatedL4,
        ),
        Case::untouched(
            "ICMP: header cut at 7 bytes",
            cut(&icmp4(28, &quoted4), l4v4 + 7),
            Reason::TruncatedIcmp,
        ),
        Case::untouched(
            "ICMP: no quoted packet",
            icmp4(0, &quoted4),
            Reason::TruncatedIcmp,
        ),
        Case::untouched(
            "ICMP: quoted IPv4 header cut at 12 bytes",
            icmp4(12, &quoted4),
            Reason::TruncatedIcmp,
        ),
        Case::untouched(
            "ICMP: quoted IPv4 options cut",
            icmp4(24, &quoted4_options),
            Reason::TruncatedIcmp,
        ),
        Case::untouched(
            "ICMP: quoted ports cut at 3 bytes",
            icmp4(23, &quoted4),
            Reason::TruncatedIcmp,
        ),
        Case::untouched(
            "ICMPv6: header cut at 7 bytes",
            cut(&icmp6(48, &quoted6), l4v6 + 7),
            Reason::TruncatedIcmp,
        ),
        Case::untouched(
            "ICMPv6: quoted IPv6 header cut at 39 bytes",
            icmp6(39, &quoted6),
            Reason::TruncatedIcmp,
        ),
        Case::untouched(
            "ICMPv6: quoted extension header cut",
            icmp6(40 + 12, &quoted6_ext),
            Reason::TruncatedIcmp,
        ),
        Case::untouched(
            "ICMPv6: quoted ports cut at 3 bytes",
            icmp6(43, &quoted6),
            Reason::TruncatedIcmp,
        ),
    ];
    // The same frames through egress. The skb test run (6.18) refuses frames whose fixed IP
    // header is cut short before running the program: allowed for those, nothing may change.
    let egress: Vec<Case> = cases
        .iter()
        .map(|case| {
            let fixed_ip_header = match case.input[12..14] {
                [0x08, 0x00] => 20,
                _ => 40,
            };
            Case {
                refusable: case.input.len() < ETH_HLEN + fixed_ip_header,
                ..Case::egress_untouched(format!("egress: {}", case.name), case.input.clone())
            }
        })
        .collect();
    cases.extend(egress);
    harness.run_all(&cases);

    // Shorter than Ethernet: the kernel never hands XDP or TC such a frame. BPF_PROG_TEST_RUN
    // refuses it (EINVAL; since 6.x also behind XDP metadata), and bpf_xdp_adjust_head/tail
    // refuse to shrink a frame below 14 bytes, so `TruncatedEthernet` is a guard for the
    // verifier that no packet can reach. Say so loudly if a kernel ever accepts one.
    for len in [0, 1, 12, 13] {
        for hook in [Hook::Ingress, Hook::Egress] {
            let before = harness.snapshot();
            match harness.try_test_run(hook, &syn4[..len]) {
                Err(ProgramError::SyscallError(e)) => assert_eq!(
                    e.io_error.raw_os_error(),
                    Some(libc::EINVAL),
                    "{hook:?}, {len}-byte frame: expected EINVAL, got {e:?}"
                ),
                other => panic!(
                    "{hook:?}: the kernel ran a {len}-byte frame ({other:?}): turn this into a \
                     TruncatedEthernet case"
                ),
            }
            assert_eq!(
                harness.snapshot().verdicts,
                before.verdicts,
                "{len}-byte frame counted"
            );
        }
    }
}

#[test]
fn traffic_not_for_a_service_passes_untouched() {
    if !require_privileges("traffic_not_for_a_service_passes_untouched") {
        return;
    }
    let mut harness = Harness::new();
    let mut cases = Vec::new();
    for (i, v6) in [false, true].into_iter().enumerate() {
        let fam = if v6 { "IPv6" } else { "IPv4" };
        let spec = service(1 + i as u32, v6, Protocol::Tcp, Cohort::Flow, HALF, HOUR);
        harness.install(&spec);
        let source = client(v6, 8, 45000);
        let to = |ip: IpAddr, port: u16| SocketAddr::new(ip, port);
        let other_host = host(v6, 200, 1);
        let svc = spec.address.ip();
        let mut gre = segment(source, spec.address, Protocol::Udp, 0);
        gre.l4 = L4::Other(IPPROTO_GRE);
        let echo = Packet::icmp(
            ip_layer(source.ip(), svc),
            if v6 { 128 } else { 8 },
            0,
            [0, 1, 0, 1],
            b"ping",
        );
        cases.extend([
            Case::untouched(
                format!("{fam}: TCP to another address"),
                segment(source, to(other_host, 80), Protocol::Tcp, TCP_SYN).build(),
                Reason::NotService,
            ),
            Case::untouched(
                format!("{fam}: TCP to the service address, another port"),
                segment(source, to(svc, 81), Protocol::Tcp, TCP_SYN).build(),
                Reason::NotService,
            ),
            Case::untouched(
                format!("{fam}: UDP to the TCP service's address and port"),
                segment(source, spec.address, Protocol::Udp, 0).build(),
                Reason::NotService,
            ),
            Case::untouched(
                format!("{fam}: GRE to the service address"),
                gre.build(),
                Reason::NotService,
            ),
            Case::untouched(
                format!("{fam}: ICMP echo to the service address"),
                echo.build(),
                Reason::NotService,
            ),
        ]);
    }
    // A service with no backend in rotation in either color passes its packets on (a color
    // with none sends its flows to the other: `maglev` cases).
    let mut empty = service(3, false, Protocol::Tcp, Cohort::Flow, ALL_GREEN, HOUR);
    for backend in empty.blue.iter_mut().chain(&mut empty.green) {
        backend.weight = 0;
    }
    harness.install(&empty);
    let flow = Flow::new(&empty, client(false, 8, 45001));
    cases.push(
        Case::untouched(
            "service whose backends all have weight 0",
            flow.packet(TCP_SYN).build(),
            Reason::NoBackend,
        )
        .not_pinned(&flow),
    );
    cases.push(Case::untouched(
        "ARP request for the service address",
        packet::arp_request(Ipv4Addr::new(198, 18, 9, 9), Ipv4Addr::new(198, 18, 1, 1)),
        Reason::NotIp,
    ));
    let vlan = {
        // An 802.1Q tag in front of an IPv4 SYN to a service: VLANs are not followed.
        let syn = Flow::new(&harness.services[0], client(false, 8, 45002))
            .packet(TCP_SYN)
            .build();
        let mut out = syn[..12].to_vec();
        out.extend_from_slice(&[0x81, 0x00, 0x00, 0x64]);
        out.extend_from_slice(&syn[12..]);
        out
    };
    cases.push(Case::untouched(
        "VLAN-tagged IPv4 SYN to a service",
        vlan,
        Reason::NotIp,
    ));
    let ethernet = Ethernet::default();
    cases.push(Case::untouched(
        "IPX frame",
        packet::frame(&ethernet, 0x8137, &[0xff; 30]),
        Reason::NotIp,
    ));
    harness.run_all(&cases);
}

/// The UDP datagram of `flow` with `len` payload bytes, as two fragments (the first carries
/// the UDP header and 40 bytes).
fn fragmented(flow: &Flow, dst: SocketAddr, len: usize) -> [Vec<u8>; 2] {
    let payload: Vec<u8> = (0..len).map(|i| i as u8).collect();
    let packet = with_destination(&flow.packet(0), dst).with_payload(&payload);
    packet.fragments(48, 0x4242)
}

#[test]
fn fragments_follow_the_cohort() {
    if !require_privileges("fragments_follow_the_cohort") {
        return;
    }
    let mut harness = Harness::new();
    for (i, v6) in [false, true].into_iter().enumerate() {
        let fam = if v6 { "IPv6" } else { "IPv4" };
        let by_flow = service(
            1 + 2 * i as u32,
            v6,
            Protocol::Udp,
            Cohort::Flow,
            HALF,
            HOUR,
        );
        let by_client = service(
            2 + 2 * i as u32,
            v6,
            Protocol::Udp,
            Cohort::Client,
            HALF,
            HOUR,
        );
        harness.install(&by_flow);
        harness.install(&by_client);

        let flow = Flow::new(&by_flow, client(v6, 10, 46000));
        let [first, later] = fragmented(&flow, flow.service, 100);
        let mut cases = vec![
            Case::untouched(
                format!("{fam}: flow cohort, first fragment"),
                first,
                Reason::Fragment,
            )
            .not_pinned(&flow),
            Case::untouched(
                format!("{fam}: flow cohort, later fragment"),
                later,
                Reason::Fragment,
            ),
        ];

        for (host_id, port) in [(10, 46000), (10, 46001), (11, 46000)] {
            let flow = Flow::new(&by_client, client(v6, host_id, port));
            let backend = predict(&by_client, &flow.key(), HALF);
            let [first, later] = fragmented(&flow, flow.service, 100);
            let [first_out, later_out] = fragmented(&flow, backend.address, 100);
            let who = format!(
                "{fam}: client cohort, {}:{port} → backend {}",
                flow.client.ip(),
                backend.id
            );
            cases.push(
                Case::new(
                    Hook::Ingress,
                    format!("{who}: first fragment"),
                    first.clone(),
                )
                .rewritten(first_out, Reason::FragmentSteered)
                .backend(backend.id, to_backend(&first, 0, true))
                .pins(&by_client, &flow, backend, FlowState::Udp),
            );
            cases.push(
                Case::new(
                    Hook::Ingress,
                    format!("{who}: later fragment"),
                    later.clone(),
                )
                .rewritten(later_out.clone(), Reason::FragmentSteered)
                .backend(backend.id, to_backend(&later, 0, false)),
            );
            // The later fragment differs only in the IP destination (and IPv4 header checksum).
            let differing: Vec<usize> = (0..later.len())
                .filter(|&i| later[i] != later_out[i])
                .collect();
            let (dst, len) = if v6 {
                (ETH_HLEN + 24, 16)
            } else {
                (ETH_HLEN + 16, 4)
            };
            assert!(
                differing.iter().all(|&i| (dst..dst + len).contains(&i)
                    || (!v6 && (ETH_HLEN + 10..ETH_HLEN + 12).contains(&i))),
                "{who}: a later fragment changes only the IP destination: {differing:?}"
            );
        }
        // A fragment of something that is not a service.
        let stranger = Flow::new(&by_client, client(v6, 12, 46002));
        let [_, later] = fragmented(&stranger, SocketAddr::new(host(v6, 201, 1), 53), 100);
        cases.push(Case::untouched(
            format!("{fam}: later fragment to another address"),
            later,
            Reason::NotService,
        ));
        harness.run_all(&cases);
    }
}

/// "Fragmentation needed" / "packet too big" about a reply the service sent to a client: the
/// backend that serves the flow must get it, looking exactly as if it were about its own packet.
#[test]
fn icmp_errors_about_a_pinned_flow_reach_its_backend() {
    if !require_privileges("icmp_errors_about_a_pinned_flow_reach_its_backend") {
        return;
    }
    let mut harness = Harness::new();
    for (i, (v6, protocol)) in COMBOS.into_iter().enumerate() {
        let what = label(v6, protocol);
        let spec = service(1 + i as u32, v6, protocol, Cohort::Flow, HALF, HOUR);
        harness.install(&spec);
        let flow = Flow::new(&spec, client(v6, 13, 47000));
        let backend = predict(&spec, &flow.key(), HALF);
        let router = host(v6, 250, 254);
        let (kind, code, rest) = if v6 {
            (2, 0, 1280u32.to_be_bytes())
        } else {
            (3, 4, [0, 0, 0x05, 0x78])
        };
        let error = |quoted: &Packet, to: IpAddr, quote: usize| {
            let mut body = quoted.ip_bytes();
            body.truncate(quote);
            Packet::icmp(ip_layer(router, to), kind, code, rest, &body)
        };
        let big = vec![0x5a; 1200];
        // What the service "sent" (the backend's reply after reverse NAT) and what the backend
        // really sent.
        let sent = flow
            .reply(flow.service, TCP_ACK | TCP_PSH)
            .with_payload(&big);
        let original = flow
            .reply(backend.address, TCP_ACK | TCP_PSH)
            .with_payload(&big);
        let header_len = if v6 { 40 } else { 20 };
        let quotes: Vec<(&str, usize)> = if v6 {
            // RFC 4443: as much as fits in the minimum MTU.
            vec![
                ("full quote", 1280 - 48),
                ("headers + 8 bytes", header_len + 8),
            ]
        } else {
            // RFC 792: header + 8 bytes; RFC 1812 routers quote more.
            vec![
                ("header + 8 bytes", header_len + 8),
                ("576-byte quote", 576 - 28),
            ]
        };
        let mut cases = vec![dnat(
            format!("{what}: opening packet"),
            &spec,
            &flow,
            &flow.packet(opening(protocol)),
            backend,
            Reason::NewFlow,
        )];
        for (name, quote) in &quotes {
            let input = error(&sent, flow.service.ip(), *quote).build();
            let output = error(&original, backend.address.ip(), *quote).build();
            // Outer IPv4 header, ICMP and the quoted IPv4 header / ICMPv6 (pseudo-header incl.).
            let expected_checks: &[Checked] = if v6 {
                &[Checked::Icmpv6]
            } else {
                &[
                    Checked::Ipv4Header,
                    Checked::Icmp,
                    Checked::QuotedIpv4Header,
                ]
            };
            assert_eq!(packet::verify_checksums(&output).unwrap(), expected_checks);
            cases.push(
                Case::new(
                    Hook::Ingress,
                    format!("{what}: error with {name} → backend {}", backend.id),
                    input,
                )
                .rewritten(output, Reason::IcmpToBackend),
            );
        }
        let unpinned = Flow::new(&spec, client(v6, 13, 47001));
        let stray = unpinned.reply(unpinned.service, TCP_ACK).with_payload(&big);
        cases.push(Case::untouched(
            format!("{what}: error about a flow that is not pinned"),
            error(&stray, flow.service.ip(), header_len + 8).build(),
            Reason::IcmpUnmatched,
        ));
        let elsewhere = segment(
            SocketAddr::new(host(v6, 202, 1), 80),
            flow.client,
            protocol,
            TCP_ACK,
        );
        cases.push(Case::untouched(
            format!("{what}: error about a packet from another host"),
            error(&elsewhere, host(v6, 202, 1), header_len + 8).build(),
            Reason::NotService,
        ));
        harness.run_all(&cases);
    }
}

// The flow state machine (issue 11), in its own file.
#[path = "dataplane_cases/states.rs"]
mod states;

// The in-pool choice (Maglev tables, weights, empty colors, client prefixes), in its own file.
#[path = "dataplane_cases/maglev.rs"]
mod maglev;

// Overrides, preview addresses, shared backends (issue 13), in their own file.
#[path = "dataplane_cases/edges.rs"]
mod edges;

/// `SERVICE_PORTS` keeps the flow and service lookups for packets to a service's port: a port's
/// bit is set with its first service and cleared after its last, and a packet to a port with no
/// service passes untouched.
#[test]
fn a_service_port_is_open_while_a_service_uses_it() {
    if !require_privileges("a_service_port_is_open_while_a_service_uses_it") {
        return;
    }
    let mut harness = Harness::new();
    let first = service(71, false, Protocol::Tcp, Cohort::Flow, 0, HOUR);
    let second = service(72, false, Protocol::Tcp, Cohort::Flow, 0, HOUR);
    assert_eq!(
        first.address.port(),
        second.address.port(),
        "one port, two services"
    );
    let port_open = |harness: &Harness| {
        let (word, bit) = splitter_common::maps::service_port_bit(first.address.port());
        harness.dataplane.maps.service_ports.get(&word, 0).unwrap() & bit != 0
    };
    assert!(!port_open(&harness), "no service yet");
    harness.install(&first);
    harness.install(&second);
    assert!(port_open(&harness));
    let opening = Flow::new(&second, client(false, 1, 41000));
    harness.run_all(&[dnat(
        "a new flow to the second service".to_owned(),
        &second,
        &opening,
        &opening.packet(TCP_SYN),
        predict(&second, &opening.key(), 0),
        Reason::NewFlow,
    )]);
    let maps = &mut harness.dataplane.maps;
    maps.remove_service_at(&first.address, Protocol::Tcp)
        .unwrap();
    assert!(
        port_open(&harness),
        "the second service still uses the port"
    );
    let later = Flow::new(&second, client(false, 1, 41001));
    harness.run_all(&[dnat(
        "a new flow to the second service after the first left".to_owned(),
        &second,
        &later,
        &later.packet(TCP_SYN),
        predict(&second, &later.key(), 0),
        Reason::NewFlow,
    )]);
    let maps = &mut harness.dataplane.maps;
    maps.remove_service_at(&second.address, Protocol::Tcp)
        .unwrap();
    assert!(!port_open(&harness), "the port's last service left");
    let gone = Flow::new(&second, client(false, 1, 41002));
    harness.run_all(&[Case::untouched(
        "a packet to a port no service uses",
        gone.packet(TCP_SYN).build(),
        Reason::NotService,
    )]);
}
