//! Per-packet cost of the data plane through BPF_PROG_TEST_RUN (`cargo xtask bench`).
//!
//! The kernel does not restore the packet between `repeat` runs, so every case runs through
//! the `bench_restore` wrapper (it rewrites the saved packet, then tail-calls the program under
//! test); the floors (`XDP_PASS`, parse-only) go through the same wrapper, so the ratios
//! compare like with like. New-flow and miss cases vary the client address every run.
//! The harness programs come from their own object ([`HARNESS_OBJECT`]); the program under
//! test is the data plane's real ingress program, loaded from the daemon's object by
//! [`Dataplane::load`], which the wrapper tail-calls through its program array.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    time::Duration,
};

use aya::{
    Ebpf,
    maps::{Array, PerCpuArray, PerCpuValues, ProgramArray},
    programs::{TestRun, TestRunOptions, Xdp},
    util::nr_cpus,
};
use splitter::dataplane::{
    Dataplane, LoadOptions,
    pools::slots_needed,
    services::{BackendSpec, Protocol, ServiceSpec, addr_of, service_key},
};
use splitter_bench_common::bench::{
    BENCH_PACKET, BENCH_PACKET_MAX, BENCH_PARSE_PROGRAM, BENCH_PASS_PROGRAM, BENCH_RESTORE_PROGRAM,
    BENCH_SEQ, BENCH_TARGET, BenchPacket,
};
use splitter_common::{
    Addr, Cohort, FlowKey, FlowState, FlowValue, Pool, Reason, WEIGHT_SCALE,
    maps::{DEFAULT_FLOW_TABLE_SIZE, DEFAULT_PENDING_TABLE_SIZE},
};

use crate::packet::{Ip, Ipv4, Ipv6, Packet, TCP_ACK, TCP_SYN, Tcp, Udp};

const XDP_PASS: u32 = 2;

/// The benchmark and comparison harness programs (`splitter-bench-ebpf`, built by
/// `tests/build.rs`): never part of the daemon's object.
pub static HARNESS_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/splitter-bench-ebpf"));

/// The restoring wrapper and the floors, loaded from [`HARNESS_OBJECT`].
pub struct Harness {
    ebpf: Ebpf,
}

impl Harness {
    pub fn load() -> anyhow::Result<Self> {
        let mut ebpf = Ebpf::load(HARNESS_OBJECT)?;
        for name in [
            BENCH_RESTORE_PROGRAM,
            BENCH_PASS_PROGRAM,
            BENCH_PARSE_PROGRAM,
        ] {
            xdp(&mut ebpf, name).load()?;
        }
        Ok(Self { ebpf })
    }
}

/// One measured path.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Path {
    /// Floor: the wrapper + a program that returns XDP_PASS.
    PassFloor,
    /// Floor: the wrapper + Ethernet/IP/ports parsing, then XDP_PASS.
    ParseFloor,
    NotService,
    Established,
    /// A datagram of an active UDP flow: UDP flows are never verified, so they stay in
    /// `PENDING` (the path of the comparison's packet-rate test).
    Udp,
    /// Established flows, every packet a different one of all the pinned flows (the table
    /// does not stay in cache the way one hot flow does).
    Spread,
    /// A new flow (SYN) while `PENDING` holds few entries: the steady state of a table at
    /// live-connection occupancy (handshakes complete and leave `PENDING`), where an insert
    /// takes a free entry. Each round starts with `PENDING` empty and inserts at most half of
    /// its capacity.
    NewFlow,
    /// A new flow (SYN) while `PENDING` is full: every insert evicts (full churn, e.g. a SYN
    /// flood).
    NewFlowChurn,
    /// A new flow to a service with `[service.overrides]` (the LPM trie looked up).
    NewFlowOverride,
    /// A new flow to the same service laid out as before the Maglev tables: each color's pool
    /// is its backends' ids, the in-pool index `pool_index(hash, backends)` (a modulo choice).
    NewFlowModulo,
    Miss,
}

impl Path {
    /// Every path, in the order of the README's table.
    pub const ALL: [Path; 11] = [
        Path::PassFloor,
        Path::ParseFloor,
        Path::NotService,
        Path::Established,
        Path::Udp,
        Path::Spread,
        Path::NewFlow,
        Path::NewFlowChurn,
        Path::NewFlowModulo,
        Path::NewFlowOverride,
        Path::Miss,
    ];

    /// The short name `splitter-bench --only` takes.
    pub const fn name(self) -> &'static str {
        match self {
            Path::PassFloor => "pass-floor",
            Path::ParseFloor => "parse-floor",
            Path::NotService => "not-service",
            Path::Established => "established",
            Path::Udp => "udp",
            Path::Spread => "spread",
            Path::NewFlow => "new-flow",
            Path::NewFlowChurn => "churn",
            Path::NewFlowOverride => "overrides",
            Path::NewFlowModulo => "modulo",
            Path::Miss => "miss",
        }
    }

    pub const fn label(self) -> &'static str {
        match self {
            Path::PassFloor => "floor: XDP_PASS",
            Path::ParseFloor => "floor: parse only",
            Path::NotService => "not a service",
            Path::Established => "established flow",
            Path::Udp => "UDP flow, active (in PENDING)",
            Path::Spread => "established, spread over every pinned flow",
            Path::NewFlow => "new flow, live occupancy (PENDING has room)",
            Path::NewFlowChurn => "new flow, full churn (PENDING full: every insert evicts)",
            Path::NewFlowOverride => "new flow, service with 16 overrides (LPM lookup)",
            Path::NewFlowModulo => "new flow, pool of backend ids (before Maglev)",
            Path::Miss => "miss (TCP ACK, no flow)",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    V4,
    V6,
}

/// A measurement: median ns/packet over `rounds` test runs of `repeat` packets each.
#[derive(Clone, Debug)]
pub struct Measurement {
    pub path: Path,
    pub family: Family,
    pub flows_in_table: u32,
    pub ns_per_packet: f64,
}

pub struct Options {
    pub repeat: u32,
    pub rounds: usize,
    pub table_sizes: Vec<u32>,
    /// Only these paths (and the floors); empty: every path.
    pub only: Vec<Path>,
}

impl Options {
    /// Whether `path` is measured: the floors always are (the table's ratios need them).
    fn selects(&self, path: Path) -> bool {
        self.only.is_empty()
            || matches!(path, Path::PassFloor | Path::ParseFloor)
            || self.only.contains(&path)
    }
}

fn vip(family: Family) -> SocketAddr {
    match family {
        Family::V4 => "198.18.100.1:80".parse().unwrap(),
        Family::V6 => "[fd00:100::1]:80".parse().unwrap(),
    }
}

fn client(family: Family) -> IpAddr {
    match family {
        Family::V4 => IpAddr::V4(Ipv4Addr::new(198, 18, 1, 10)),
        Family::V6 => IpAddr::V6("fd00:1::10".parse::<Ipv6Addr>().unwrap()),
    }
}

fn backends(family: Family, base: u32, count: u32, port: u16) -> Vec<BackendSpec> {
    (0..count)
        .map(|i| BackendSpec {
            id: base + i,
            address: match family {
                Family::V4 => SocketAddr::new(
                    IpAddr::V4(Ipv4Addr::new(198, 18, 10 + base as u8, 10 + i as u8)),
                    port,
                ),
                Family::V6 => SocketAddr::new(
                    IpAddr::V6(Ipv6Addr::new(
                        0xfd00,
                        10 + base as u16,
                        0,
                        0,
                        0,
                        0,
                        0,
                        10 + i as u16,
                    )),
                    port,
                ),
            },
            weight: 1,
            active: true,
        })
        .collect()
}

fn install(dataplane: &mut Dataplane, family: Family) {
    let base = if family == Family::V4 { 0 } else { 10 };
    let spec = ServiceSpec {
        id: base,
        address: vip(family),
        protocol: Protocol::Tcp,
        cohort: Cohort::Flow,
        green_weight: WEIGHT_SCALE / 10,
        blue: backends(family, base, 2, 8080),
        green: backends(family, base + 2, 1, 8080),
        client_prefix_v4: 0,
        client_prefix_v6: 0,
        first_slot: base * slots_needed(2, 1),
        miss_hold: Duration::from_secs(120),
        overrides: Vec::new(),
        preview: false,
    };
    dataplane
        .maps
        .install_service(&spec)
        .expect("install service");
    // The same service on OVERRIDE_PORT, with overrides: prefixes of several lengths, one of
    // them matching half of the varied client addresses.
    let prefixes: &[&str] = match family {
        Family::V4 => &[
            "10.0.0.0/8",
            "172.16.0.0/12",
            "192.168.0.0/16",
            "198.18.0.0/15",
            "198.18.1.0/24",
            "198.18.1.10/32",
            "203.0.113.0/24",
            "100.64.0.0/10",
            "0.0.0.0/1",
            "192.0.2.0/24",
            "198.51.100.0/24",
            "10.1.0.0/16",
            "10.1.2.0/24",
            "10.1.2.128/25",
            "172.20.0.0/14",
            "198.19.255.0/24",
        ],
        Family::V6 => &[
            "fd00::/8",
            "fd00:1::/32",
            "fd00:1::/48",
            "fd00:1::/64",
            "fd00:1::10/128",
            "2001:db8::/32",
            "2001:db8:1::/48",
            "::/1",
            "fc00::/7",
            "fd00:2::/32",
            "fd00:3::/48",
            "fd00:4::/56",
            "fd00:5::/64",
            "fd00:6::/96",
            "fd00:7::/112",
            "fd00:8::/120",
        ],
    };
    let overrides = prefixes
        .iter()
        .enumerate()
        .map(|(index, text)| {
            let prefix = splitter::dataplane::overrides::Prefix::parse(text).expect("prefix");
            let color = if index % 2 == 0 {
                splitter::color::ColorName::Green
            } else {
                splitter::color::ColorName::Blue
            };
            (prefix, color)
        })
        .collect();
    let with_overrides = ServiceSpec {
        id: base + 1,
        address: SocketAddr::new(vip(family).ip(), OVERRIDE_PORT),
        blue: backends(family, base + 4, 2, 8080),
        green: backends(family, base + 6, 1, 8080),
        first_slot: (base + 1) * slots_needed(2, 1),
        overrides,
        ..spec.clone()
    };
    dataplane
        .maps
        .install_service(&with_overrides)
        .expect("install the service with overrides");
    // A UDP service on UDP_PORT.
    let udp = ServiceSpec {
        id: base + 3,
        address: SocketAddr::new(vip(family).ip(), UDP_PORT),
        protocol: Protocol::Udp,
        blue: backends(family, base + 10, 2, 8080),
        green: backends(family, base + 12, 1, 8080),
        first_slot: (base + 4) * slots_needed(2, 1),
        ..spec.clone()
    };
    dataplane
        .maps
        .install_service(&udp)
        .expect("install the UDP service");
    // The same service on MODULO_PORT, then its pools rewritten to the layout before Maglev:
    // each color a run of its backends' ids (the data plane's lookup is the same code, over a
    // pool of N slots instead of a Maglev table).
    let modulo = ServiceSpec {
        id: base + 2,
        address: SocketAddr::new(vip(family).ip(), MODULO_PORT),
        blue: backends(family, base + 8, 2, 8080),
        green: backends(family, base + 9, 1, 8080),
        first_slot: (base + 2) * slots_needed(2, 1),
        ..spec
    };
    dataplane
        .maps
        .install_service(&modulo)
        .expect("install the modulo-layout service");
    let key = service_key(&modulo.address, Protocol::Tcp);
    let mut config = dataplane
        .maps
        .service(&key)
        .expect("read the service")
        .expect("the service is installed");
    let first = (base + 3) * slots_needed(2, 1);
    let ids: Vec<u32> = modulo
        .blue
        .iter()
        .chain(&modulo.green)
        .map(|b| b.id)
        .collect();
    dataplane
        .maps
        .set_pool(first, &ids)
        .expect("write the pool");
    config.blue = Pool {
        first_slot: first,
        len: modulo.blue.len() as u32,
    };
    config.green = Pool {
        first_slot: first + modulo.blue.len() as u32,
        len: modulo.green.len() as u32,
    };
    dataplane
        .maps
        .set_service(&key, &config)
        .expect("rewrite the pools");
}

/// The port of the bench service laid out as before the Maglev tables.
const MODULO_PORT: u16 = 83;

/// The port of the bench's UDP service.
const UDP_PORT: u16 = 84;

/// The port of the bench service that has overrides.
const OVERRIDE_PORT: u16 = 82;

/// The TCP flow of the `i`-th other client to the bench service: its address is `v4_base + i`,
/// or `fd00:<v6_net>::` + `i` in the last 32-bit word (which the harness varies).
fn other_client(family: Family, v4_base: u32, v6_net: u128, i: u32) -> FlowKey {
    let (service, fam) = addr_of(&vip(family));
    let src = match family {
        Family::V4 => Addr::from_v4((v4_base + i).to_be_bytes()),
        Family::V6 => Addr::from_v6((((0xfd00_0000u128 + v6_net) << 96) + i as u128).to_be_bytes()),
    };
    FlowKey {
        src,
        dst: service,
        src_port: 40000u16.to_be(),
        dst_port: 80u16.to_be(),
        protocol: 6,
        family: fam as u8,
        _pad: [0; 2],
    }
}

/// Fills FLOWS with `count` pinned flows of other clients, numbered from 1 in the client
/// address's last 32-bit word: [`Path::Spread`] walks them in that order.
fn prefill(dataplane: &mut Dataplane, family: Family, count: u32) {
    for i in 1..=count {
        let key = other_client(family, 0x0a00_0000, 2, i);
        let value = FlowValue {
            backend_id: 0,
            state: FlowState::Established as u8,
            ..FlowValue::default()
        };
        dataplane
            .maps
            .flows
            .insert(key, value, 0)
            .expect("prefill FLOWS");
    }
}

/// The packet a path measures, and the offset of the client address (for varying).
fn packet(path: Path, family: Family) -> (Vec<u8>, u32) {
    let client = client(family);
    let service = vip(family);
    let (flags, dst_port) = match path {
        // An established flow's packets are data/ACKs (the flow is pinned by a SYN first).
        Path::Miss | Path::Established | Path::Spread => (TCP_ACK, 80),
        Path::NotService => (TCP_SYN, 81),
        Path::NewFlowOverride => (TCP_SYN, OVERRIDE_PORT),
        Path::NewFlowModulo => (TCP_SYN, MODULO_PORT),
        _ => (TCP_SYN, 80),
    };
    let client = match path {
        // The prefilled flows' base address: varying its last word walks them.
        Path::Spread => spread_base(family),
        _ => client,
    };
    let ip = match (client, service.ip()) {
        (IpAddr::V4(src), IpAddr::V4(dst)) => Ip::V4(Ipv4::new(src, dst)),
        (IpAddr::V6(src), IpAddr::V6(dst)) => Ip::V6(Ipv6::new(src, dst)),
        _ => unreachable!("one family per measurement"),
    };
    let bytes = if path == Path::Udp {
        Packet::udp(ip, Udp::new(40000, UDP_PORT), &[0; 18]).build()
    } else {
        Packet::tcp(ip, Tcp::new(40000, dst_port, flags)).build()
    };
    let src_offset = match family {
        Family::V4 => 14 + 12,
        Family::V6 => 14 + 8 + 12,
    };
    (bytes, src_offset)
}

fn spread_base(family: Family) -> IpAddr {
    match family {
        Family::V4 => IpAddr::V4(Ipv4Addr::new(10, 0, 0, 0)),
        Family::V6 => IpAddr::V6(Ipv6Addr::new(0xfd00, 2, 0, 0, 0, 0, 0, 0)),
    }
}

fn xdp<'a>(ebpf: &'a mut Ebpf, name: &str) -> &'a mut Xdp {
    ebpf.program_mut(name)
        .unwrap_or_else(|| panic!("program {name}"))
        .try_into()
        .expect("an XDP program")
}

/// Measures one path; checks the verdict and the output bytes of the last run.
fn measure(
    dataplane: &mut Dataplane,
    harness: &mut Harness,
    path: Path,
    family: Family,
    options: &Options,
) -> anyhow::Result<f64> {
    let (input, src_offset) = packet(path, family);
    anyhow::ensure!(input.len() <= BENCH_PACKET_MAX, "bench packet too long");
    let vary = matches!(
        path,
        Path::NewFlow
            | Path::NewFlowChurn
            | Path::NewFlowOverride
            | Path::NewFlowModulo
            | Path::Miss
            | Path::Spread
    );
    // Live occupancy: `PENDING` never more than half full, so a round is several runs of at
    // most half its capacity, each after emptying it (the same packets per round as the other
    // paths, for the same noise).
    let (repeat, chunks) = match path {
        Path::NewFlow => {
            let chunk = options.repeat.min(DEFAULT_PENDING_TABLE_SIZE / 2);
            (chunk, options.repeat.div_ceil(chunk))
        }
        _ => (options.repeat, 1),
    };
    if path == Path::NewFlowChurn {
        fill_pending(dataplane, family)?;
    }
    let mut saved = BenchPacket {
        len: input.len() as u32,
        vary_offset: if vary { src_offset } else { 0 },
        data: [0; BENCH_PACKET_MAX],
    };
    saved.data[..input.len()].copy_from_slice(&input);
    let target_fd = match path {
        Path::PassFloor => xdp(&mut harness.ebpf, BENCH_PASS_PROGRAM).fd()?,
        Path::ParseFloor => xdp(&mut harness.ebpf, BENCH_PARSE_PROGRAM).fd()?,
        _ => dataplane.ingress_program()?.fd()?,
    }
    .try_clone()?;
    {
        let ebpf = &mut harness.ebpf;
        let mut packets: Array<_, BenchPacket> =
            Array::try_from(ebpf.map_mut(BENCH_PACKET).expect("BENCH_PACKET"))?;
        packets.set(0, saved, 0)?;
        let mut targets =
            ProgramArray::try_from(ebpf.map_mut(BENCH_TARGET).expect("BENCH_TARGET"))?;
        targets.set(0, &target_fd, 0)?;
    }
    if path == Path::Established {
        // Pin the flow first: its SYN, once, through the real program; then make it the
        // established flow the handshake would (the SYN-ACK and ACK through both programs are
        // the data-plane cases' business): its entry moves from PENDING to FLOWS.
        let (syn, _) = packet(Path::NewFlow, family);
        let mut out = vec![0u8; syn.len()];
        run(dataplane.ingress_program()?, &syn, &mut out, 1)?;
        let maps = &mut dataplane.maps;
        for key in maps.pending.keys().collect::<Result<Vec<_>, _>>()? {
            let mut flow = maps.pending.get(&key, 0)?;
            if flow.state == FlowState::Pending as u8 {
                flow.state = FlowState::Established as u8;
                maps.flows.insert(key, flow, 0)?;
                maps.pending.remove(&key)?;
            }
        }
    }
    if path == Path::Udp {
        // Its first datagram opens the flow; the measured ones find it active.
        let mut out = vec![0u8; input.len()];
        run(dataplane.ingress_program()?, &input, &mut out, 1)?;
    }
    let mut samples = Vec::new();
    for _ in 0..options.rounds {
        let mut elapsed = 0.0;
        for _ in 0..chunks {
            if path == Path::NewFlow {
                clear_pending(dataplane)?;
            }
            elapsed += one_run(dataplane, harness, path, family, &input, repeat)?;
        }
        samples.push(elapsed / f64::from(chunks));
    }
    samples.sort_by(f64::total_cmp);
    Ok(samples[samples.len() / 2])
}

/// One test run of `repeat` packets of `input` through the restoring wrapper, checked; its
/// ns/packet.
fn one_run(
    dataplane: &mut Dataplane,
    harness: &mut Harness,
    path: Path,
    family: Family,
    input: &[u8],
    repeat: u32,
) -> anyhow::Result<f64> {
    let established = dataplane.maps.verdict(Reason::Established)?;
    if path == Path::Spread {
        // Each round walks the prefilled flows from the first.
        let ebpf = &mut harness.ebpf;
        let mut seq: PerCpuArray<_, u32> =
            PerCpuArray::try_from(ebpf.map_mut(BENCH_SEQ).expect("BENCH_SEQ"))?;
        seq.set(
            0,
            PerCpuValues::try_from(vec![0u32; nr_cpus().map_err(|(_, e)| e)?])?,
            0,
        )?;
    }
    let mut out = vec![0u8; input.len()];
    let (verdict, duration) = run(
        xdp(&mut harness.ebpf, BENCH_RESTORE_PROGRAM),
        input,
        &mut out,
        repeat,
    )?;
    anyhow::ensure!(
        verdict == XDP_PASS,
        "{path:?}: verdict {verdict}, want XDP_PASS"
    );
    check_output(path, family, input, &out)?;
    if matches!(path, Path::Spread | Path::Udp) {
        let hits = dataplane.maps.verdict(Reason::Established)? - established;
        anyhow::ensure!(
            hits == repeat as u64,
            "{path:?}: {hits} of {repeat} packets found their pinned flow (evicted?)"
        );
    }
    Ok(duration.as_nanos() as f64)
}

fn run(
    program: &mut Xdp,
    input: &[u8],
    output: &mut [u8],
    repeat: u32,
) -> anyhow::Result<(u32, Duration)> {
    let opts = TestRunOptions {
        data_in: Some(input),
        data_out: Some(output),
        repeat,
        ..TestRunOptions::default()
    };
    let result = program.test_run(opts)?;
    Ok((result.return_value, result.duration))
}

/// Rewriting paths must leave with a backend address; the others untouched.
fn check_output(path: Path, family: Family, input: &[u8], out: &[u8]) -> anyhow::Result<()> {
    let dst = match family {
        Family::V4 => &out[30..34],
        Family::V6 => &out[38..54],
    };
    let vip = match vip(family).ip() {
        IpAddr::V4(v4) => v4.octets().to_vec(),
        IpAddr::V6(v6) => v6.octets().to_vec(),
    };
    match path {
        Path::PassFloor | Path::ParseFloor | Path::NotService => {
            anyhow::ensure!(out == input, "{path:?}: the packet must pass untouched")
        }
        Path::Established
        | Path::Udp
        | Path::Spread
        | Path::NewFlow
        | Path::NewFlowChurn
        | Path::NewFlowOverride
        | Path::NewFlowModulo
        | Path::Miss => {
            anyhow::ensure!(dst != vip.as_slice(), "{path:?}: destination not rewritten");
        }
    }
    Ok(())
}

/// Empties `PENDING` (both families).
fn clear_pending(dataplane: &mut Dataplane) -> anyhow::Result<()> {
    let pending = &mut dataplane.maps.pending;
    for key in pending.keys().filter_map(Result::ok).collect::<Vec<_>>() {
        let _ = pending.remove(&key);
    }
    Ok(())
}

/// Fills `PENDING` to its capacity with handshakes of other clients (not the measured ones).
fn fill_pending(dataplane: &mut Dataplane, family: Family) -> anyhow::Result<()> {
    for i in 1..=DEFAULT_PENDING_TABLE_SIZE {
        let key = other_client(family, 0x0b00_0000, 3, i);
        let value = FlowValue {
            state: FlowState::Pending as u8,
            ..FlowValue::default()
        };
        dataplane.maps.pending.insert(key, value, 0)?;
    }
    Ok(())
}

/// Runs every path for both families and each table size (the spread over the pinned flows
/// for each size above 1).
pub fn per_packet(options: &Options) -> anyhow::Result<Vec<Measurement>> {
    let mut results = Vec::new();
    for &flows in &options.table_sizes {
        for family in [Family::V4, Family::V6] {
            let mut dataplane = Dataplane::load(&LoadOptions {
                flow_table_size: table_size_for(flows),
                ..LoadOptions::default()
            })?;
            let mut harness = Harness::load()?;
            install(&mut dataplane, family);
            prefill(&mut dataplane, family, flows.saturating_sub(1));
            for path in Path::ALL {
                if path == Path::Spread && flows < 2 || !options.selects(path) {
                    continue;
                }
                let spread = Options {
                    repeat: options.repeat.min(flows.saturating_sub(1)),
                    rounds: options.rounds,
                    table_sizes: Vec::new(),
                    only: Vec::new(),
                };
                let path_options = if path == Path::Spread {
                    &spread
                } else {
                    options
                };
                let ns_per_packet =
                    measure(&mut dataplane, &mut harness, path, family, path_options)?;
                results.push(Measurement {
                    path,
                    family,
                    flows_in_table: flows,
                    ns_per_packet,
                });
            }
        }
    }
    Ok(results)
}

/// The comparison's scale figures: per-packet cost as the flow table and the service table
/// grow (IPv4).
pub struct ScaleOptions {
    pub repeat: u32,
    pub rounds: usize,
    /// Flows pinned in FLOWS (the flow table is sized to hold them).
    pub table_sizes: Vec<u32>,
    /// Services installed (measured with one pinned flow).
    pub service_counts: Vec<u32>,
}

/// One scale figure: `path` with `flows` pinned flows and `services` services installed.
#[derive(Clone, Debug)]
pub struct ScalePoint {
    pub flows: u32,
    pub services: u32,
    pub path: Path,
    pub ns_per_packet: f64,
}

/// FLOWS capacity for `flows` pinned flows: room to spare, so that the LRU's per-CPU free
/// lists never evict a prefilled flow before it is measured.
fn table_size_for(flows: u32) -> u32 {
    DEFAULT_FLOW_TABLE_SIZE.max(flows.saturating_add(flows / 4))
}

/// `count - 1` more services, each with three backends, next to the measured one.
fn install_more_services(dataplane: &mut Dataplane, count: u32) -> anyhow::Result<()> {
    for i in 1..count {
        let base = 64 + 3 * i;
        let octet = |n: u32| (n % 250) as u8;
        let backend = |j: u32| BackendSpec {
            id: base + j,
            address: SocketAddr::new(
                IpAddr::V4(Ipv4Addr::new(198, 19, octet(i), 10 + j as u8)),
                8080,
            ),
            weight: 1,
            active: true,
        };
        let spec = ServiceSpec {
            id: 16 + i,
            address: SocketAddr::new(
                IpAddr::V4(Ipv4Addr::new(198, 18, 101 + (i / 250) as u8, octet(i))),
                80,
            ),
            protocol: Protocol::Tcp,
            cohort: Cohort::Flow,
            green_weight: WEIGHT_SCALE / 10,
            blue: vec![backend(0), backend(1)],
            green: vec![backend(2)],
            client_prefix_v4: 0,
            client_prefix_v6: 0,
            first_slot: (20 + i) * slots_needed(2, 1),
            miss_hold: Duration::from_secs(120),
            overrides: Vec::new(),
            preview: false,
        };
        dataplane.maps.install_service(&spec)?;
    }
    Ok(())
}

pub fn scale(options: &ScaleOptions) -> anyhow::Result<Vec<ScalePoint>> {
    let family = Family::V4;
    let mut results = Vec::new();
    let mut record = |flows, services, path, ns_per_packet| {
        results.push(ScalePoint {
            flows,
            services,
            path,
            ns_per_packet,
        })
    };
    for &flows in &options.table_sizes {
        let mut dataplane = Dataplane::load(&LoadOptions {
            flow_table_size: table_size_for(flows),
            ..LoadOptions::default()
        })?;
        let mut harness = Harness::load()?;
        install(&mut dataplane, family);
        // The measured established flow is the last of `flows`.
        prefill(&mut dataplane, family, flows.saturating_sub(1));
        let base = Options {
            repeat: options.repeat,
            rounds: options.rounds,
            table_sizes: Vec::new(),
            only: Vec::new(),
        };
        record(
            flows,
            1,
            Path::Established,
            measure(
                &mut dataplane,
                &mut harness,
                Path::Established,
                family,
                &base,
            )?,
        );
        if flows > 1 {
            // One pass over the table per round at most: a second would find it warmer.
            let spread = Options {
                repeat: options.repeat.min(flows - 1),
                rounds: options.rounds,
                table_sizes: Vec::new(),
                only: Vec::new(),
            };
            record(
                flows,
                1,
                Path::Spread,
                measure(&mut dataplane, &mut harness, Path::Spread, family, &spread)?,
            );
        }
        // Last: new flows fill the table and evict the prefilled ones.
        record(
            flows,
            1,
            Path::NewFlow,
            measure(&mut dataplane, &mut harness, Path::NewFlow, family, &base)?,
        );
    }
    for &services in &options.service_counts {
        let mut dataplane = Dataplane::load(&LoadOptions::default())?;
        let mut harness = Harness::load()?;
        install(&mut dataplane, family);
        install_more_services(&mut dataplane, services)?;
        let base = Options {
            repeat: options.repeat,
            rounds: options.rounds,
            table_sizes: Vec::new(),
            only: Vec::new(),
        };
        for path in [Path::Established, Path::NewFlow] {
            record(
                1,
                services,
                path,
                measure(&mut dataplane, &mut harness, path, family, &base)?,
            );
        }
    }
    Ok(results)
}
