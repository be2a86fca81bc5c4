//! Per-packet cost of the reply path (TC egress) through BPF_PROG_TEST_RUN: a backend that
//! serves one service (the stateless `BACKEND_REVERSE` rewrite) against a backend shared by a
//! service and its preview (the client's flow looked up per candidate service), same run.
//!
//! The egress program rewrites the packet in place and the kernel does not restore it between
//! `repeat` runs, so every figure is many runs of `repeat = 1`: each pays the test run's fixed
//! overhead, measured here as the floor (a packet from no backend: one map miss, untouched).

use std::{
    net::{IpAddr, SocketAddr},
    time::Duration,
};

use aya::programs::{TestRun, TestRunOptions};
use splitter::dataplane::{
    Dataplane, LoadOptions,
    pools::slots_needed,
    replies::Replies,
    services::{BackendSpec, Protocol, ServiceSpec, addr_of},
};
use splitter_common::{
    BackendKey, Cohort, FlowKey, FlowState, FlowValue, ReverseValue, WEIGHT_SCALE,
};

use crate::packet::{Ip, Ipv4, Ipv6, Packet, TCP_ACK, Tcp};

const TC_ACT_OK: u32 = 0;

/// One measured reply path.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReplyPath {
    /// A packet from an address that is no backend: one `BACKEND_REVERSE` miss.
    Floor,
    /// A backend of one service: the stateless rewrite.
    Stateless,
    /// A shared backend whose client flow is pinned through the second service (the preview):
    /// `FLOWS` and `PENDING` missed for the first, `FLOWS` hit for the second.
    SharedSecond,
    /// A shared backend, no flow for the client (evicted): both candidates missed in both
    /// tables, the first service used.
    SharedFallback,
}

impl ReplyPath {
    pub const ALL: [ReplyPath; 4] = [
        ReplyPath::Floor,
        ReplyPath::Stateless,
        ReplyPath::SharedSecond,
        ReplyPath::SharedFallback,
    ];

    pub const fn label(self) -> &'static str {
        match self {
            ReplyPath::Floor => "floor: not a backend (test-run overhead + one lookup)",
            ReplyPath::Stateless => "reply, backend of one service (stateless)",
            ReplyPath::SharedSecond => "reply, shared backend, flow of the 2nd service found",
            ReplyPath::SharedFallback => "reply, shared backend, no flow (first service)",
        }
    }
}

/// A median ns/packet of `rounds` rounds of `runs` test runs each.
#[derive(Clone, Debug)]
pub struct ReplyMeasurement {
    pub path: ReplyPath,
    pub v6: bool,
    pub ns_per_packet: f64,
}

fn ip(v6: bool, net: u16, host: u16) -> IpAddr {
    if v6 {
        IpAddr::V6(std::net::Ipv6Addr::new(0xfd00, net, 0, 0, 0, 0, 0, host))
    } else {
        IpAddr::V4(std::net::Ipv4Addr::new(198, 18, net as u8, host as u8))
    }
}

/// `main` (blue and green backends) and its preview on the same green backend; the green
/// backend's replies are shared, the blue one's stateless.
fn install(dataplane: &mut Dataplane, v6: bool) -> anyhow::Result<(ServiceSpec, ServiceSpec)> {
    let blue = BackendSpec {
        id: 1,
        address: SocketAddr::new(ip(v6, 11, 10), 8080),
        weight: 1,
        active: true,
    };
    let green = BackendSpec {
        id: 2,
        address: SocketAddr::new(ip(v6, 12, 10), 8080),
        weight: 1,
        active: true,
    };
    let main = ServiceSpec {
        id: 1,
        address: SocketAddr::new(ip(v6, 100, 1), 80),
        protocol: Protocol::Tcp,
        cohort: Cohort::Flow,
        green_weight: WEIGHT_SCALE / 10,
        blue: vec![blue],
        green: vec![green],
        client_prefix_v4: 0,
        client_prefix_v6: 0,
        first_slot: 0,
        miss_hold: Duration::from_secs(120),
        overrides: Vec::new(),
        preview: false,
    };
    let preview = ServiceSpec {
        id: 2,
        address: SocketAddr::new(ip(v6, 100, 2), 80),
        green_weight: WEIGHT_SCALE,
        blue: Vec::new(),
        green: vec![BackendSpec { id: 3, ..green }],
        first_slot: slots_needed(1, 1),
        preview: true,
        ..main.clone()
    };
    dataplane.maps.install_service(&main)?;
    dataplane.maps.install_service(&preview)?;
    let reverse = |spec: &ServiceSpec, backend: &BackendSpec| ReverseValue {
        service_addr: addr_of(&spec.address).0,
        service_port: spec.address.port().to_be(),
        flags: 0,
        _pad: 0,
        backend_id: backend.id,
    };
    let (addr, family) = addr_of(&green.address);
    dataplane.maps.set_replies(&[Replies {
        key: BackendKey {
            addr,
            port: green.address.port().to_be(),
            protocol: Protocol::Tcp.number(),
            family: family as u8,
        },
        candidates: vec![reverse(&main, &green), reverse(&preview, &preview.green[0])],
    }])?;
    Ok((main, preview))
}

/// A data segment `from` → `to`.
fn segment(from: SocketAddr, to: SocketAddr) -> Vec<u8> {
    let ip = match (from.ip(), to.ip()) {
        (IpAddr::V4(src), IpAddr::V4(dst)) => Ip::V4(Ipv4::new(src, dst)),
        (IpAddr::V6(src), IpAddr::V6(dst)) => Ip::V6(Ipv6::new(src, dst)),
        _ => unreachable!("one family"),
    };
    Packet::tcp(ip, Tcp::new(from.port(), to.port(), TCP_ACK))
        .with_payload(b"reply")
        .build()
}

/// The reply of `path`, and the source address it must leave with (None: untouched).
fn reply(
    dataplane: &mut Dataplane,
    path: ReplyPath,
    v6: bool,
    main: &ServiceSpec,
    preview: &ServiceSpec,
) -> anyhow::Result<(Vec<u8>, Option<IpAddr>)> {
    let client = SocketAddr::new(ip(v6, 1, 10), 40_000);
    let green = main.green[0].address;
    Ok(match path {
        ReplyPath::Floor => (segment(SocketAddr::new(ip(v6, 13, 10), 8080), client), None),
        ReplyPath::Stateless => (
            segment(main.blue[0].address, client),
            Some(main.address.ip()),
        ),
        ReplyPath::SharedSecond => {
            // The client's flow to the preview, pinned to the shared backend.
            let (src, family) = addr_of(&client);
            let key = FlowKey {
                src,
                dst: addr_of(&preview.address).0,
                src_port: client.port().to_be(),
                dst_port: preview.address.port().to_be(),
                protocol: Protocol::Tcp.number(),
                family: family as u8,
                _pad: [0; 2],
            };
            let value = FlowValue {
                backend_addr: addr_of(&green).0,
                backend_port: green.port().to_be(),
                color: 1,
                state: FlowState::Established as u8,
                backend_id: preview.green[0].id,
                stamp: 1,
                ..FlowValue::default()
            };
            dataplane.maps.flows.insert(key, value, 0)?;
            (segment(green, client), Some(preview.address.ip()))
        }
        ReplyPath::SharedFallback => (
            segment(green, SocketAddr::new(ip(v6, 1, 11), 40_000)),
            Some(main.address.ip()),
        ),
    })
}

/// Every reply path for IPv4 and IPv6: `runs` test runs of one packet per round.
pub fn reply_paths(runs: u32, rounds: usize) -> anyhow::Result<Vec<ReplyMeasurement>> {
    let mut results = Vec::new();
    for v6 in [false, true] {
        let mut dataplane = Dataplane::load(&LoadOptions::default())?;
        let (main, preview) = install(&mut dataplane, v6)?;
        for path in ReplyPath::ALL {
            let (input, source) = reply(&mut dataplane, path, v6, &main, &preview)?;
            let mut samples = Vec::new();
            for _ in 0..rounds {
                let mut total = Duration::ZERO;
                let mut output = vec![0u8; input.len() + 64];
                for _ in 0..runs {
                    let result = dataplane.egress_program()?.test_run(TestRunOptions {
                        data_in: Some(&input),
                        data_out: Some(&mut output),
                        repeat: 1,
                        ..TestRunOptions::default()
                    })?;
                    anyhow::ensure!(
                        result.return_value == TC_ACT_OK,
                        "{path:?}: verdict {}",
                        result.return_value
                    );
                    total += result.duration;
                }
                check_source(path, v6, &input, &output, source)?;
                samples.push(total.as_nanos() as f64 / f64::from(runs.max(1)));
            }
            samples.sort_by(f64::total_cmp);
            results.push(ReplyMeasurement {
                path,
                v6,
                ns_per_packet: samples[samples.len() / 2],
            });
        }
    }
    Ok(results)
}

/// The reply left with the expected source address (or untouched).
fn check_source(
    path: ReplyPath,
    v6: bool,
    input: &[u8],
    output: &[u8],
    source: Option<IpAddr>,
) -> anyhow::Result<()> {
    let range = if v6 { 22..38 } else { 26..30 };
    let Some(source) = source else {
        anyhow::ensure!(
            &output[..input.len()] == input,
            "{path:?}: must pass untouched"
        );
        return Ok(());
    };
    let expected = match source {
        IpAddr::V4(v4) => v4.octets().to_vec(),
        IpAddr::V6(v6) => v6.octets().to_vec(),
    };
    anyhow::ensure!(
        output[range.clone()] == expected[..],
        "{path:?}: left from {:?}, expected {source}",
        &output[range]
    );
    Ok(())
}
