//! The packet-rate test: a generator fast enough to saturate the router, and the two rates
//! measured with it.
//!
//! The generator is `compare_generator` run by BPF_PROG_RUN in live-frames mode
//! (`BPF_F_TEST_XDP_LIVE_FRAMES`, kernel 5.18): every run writes a 60-byte UDP frame (64 on the
//! wire) and XDP_TX sends it out of the client's veth, straight into the router's receive ring,
//! without a socket or an skb on the sending side. The source port cycles through [`FLOWS`]
//! values, so the splitting alternatives see that many flows. Paced runs drop the frames that
//! come early (in the program), so each test run is long (a page pool per run, released a
//! second after its last frame comes back) and frames still leave one at a time.
//!
//! * Saturated rate: the generator sends flat out; what the backends' sinks count per second,
//!   the router's CPU time per packet and the green share are measured over a window.
//! * No-drop rate: the highest paced rate at which the sinks count at least `1 - max_loss` of
//!   what was sent (in one of two tries), found by bisection below the saturated rate.

use std::{
    net::Ipv4Addr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use anyhow::Context as _;
use aya::{
    Ebpf,
    maps::{Array, MapData, PerCpuArray},
    programs::{TestRun, TestRunAttrs, TestRunOptions, Xdp},
};
use splitter_bench_common::compare::{
    GEN_PACKET, GEN_PACKET_MAX, GEN_STATE, GENERATOR_PROGRAM, GenPacket, GenState, SINK_UDP_PORT,
    SinkCounter,
};

use super::topology::{
    CLIENT_ADDR, GENERATOR_PRIORITY, Topology, attach_native, ifindex, load_helper_object, pin,
    realtime,
};
use crate::netns::enter;

/// Distinct flows (UDP source ports) the generator cycles through.
pub const FLOWS: u32 = 16_384;
/// First source port.
const BASE_PORT: u16 = 20_000;
/// Frame length without the FCS: 64 bytes on the wire.
pub const FRAME_LEN: usize = 60;
/// Program runs per BPF_PROG_RUN call (about 10 ms flat out): how often a stop is noticed.
const RUNS_PER_CALL: u32 = 1 << 17;
/// The generator's pause after each call. It is real-time, so that nothing else on its shared
/// CPU leaves gaps in the traffic long enough for the router to drain its ring and nap; but a
/// CPU whose real-time threads never pause is throttled for 50 ms a second
/// (`sched_rt_runtime_us`), the backends' sinks with it. A 1.5 ms pause every ~10 ms keeps the
/// CPU's real-time share under that limit; the router's ring (256 frames) bridges most of it.
const PAUSE: Duration = Duration::from_micros(1500);
/// Program runs per batch, the most the kernel allows (`TEST_XDP_MAX_BATCH`): also the size of
/// the run's page pool, which recycles the pages receivers return; a small pool sends most of
/// them back to the page allocator, and the generator pays a fresh page per frame. (Redirects
/// are flushed to the veth every 16 frames whatever the batch.)
const BATCH: u32 = 256;
/// No run lasts longer than this, whatever it was asked.
const MAX_RUN: Duration = Duration::from_secs(30);

pub struct Generator {
    ebpf: Arc<Mutex<Ebpf>>,
    config: Array<MapData, GenPacket>,
    state: Arc<PerCpuArray<MapData, GenState>>,
    netns_path: String,
    ifindex: u32,
    cpu: usize,
    template: Vec<u8>,
    /// Destination and IPv4 checksum (as in the packet) of every `.2`-th flow.
    split: Option<(u32, u16, u32)>,
    src_mac: [u8; 6],
    dst_mac: [u8; 6],
}

/// How fast a run sends.
#[derive(Clone, Copy, Debug)]
pub enum Pace {
    /// As fast as the generator can.
    Max,
    /// Packets per second.
    Rate(f64),
}

/// A generator run in progress.
pub struct Running {
    stop: Arc<AtomicBool>,
    state: Arc<PerCpuArray<MapData, GenState>>,
    baseline: u64,
    handle: JoinHandle<anyhow::Result<Duration>>,
}

/// Frames sent since the generator was loaded.
fn sent(state: &PerCpuArray<MapData, GenState>) -> anyhow::Result<u64> {
    Ok(state.get(&0, 0)?.iter().map(|s| s.sent).sum())
}

impl Running {
    /// Frames sent so far.
    pub fn sent(&self) -> anyhow::Result<u64> {
        Ok(sent(&self.state)? - self.baseline)
    }

    /// Waits for the run to end by itself; returns the frames sent and for how long.
    pub fn join(self) -> anyhow::Result<(u64, Duration)> {
        let elapsed = self.handle.join().expect("generator thread")?;
        Ok((sent(&self.state)? - self.baseline, elapsed))
    }

    pub fn stop(self) -> anyhow::Result<(u64, Duration)> {
        self.stop.store(true, Ordering::Relaxed);
        self.join()
    }
}

fn parse_mac(text: &str) -> anyhow::Result<[u8; 6]> {
    let bytes: Vec<u8> = text
        .trim()
        .split(':')
        .map(|b| u8::from_str_radix(b, 16))
        .collect::<Result<_, _>>()
        .with_context(|| format!("bad MAC {text:?}"))?;
    bytes
        .try_into()
        .map_err(|_| anyhow::anyhow!("bad MAC {text:?}"))
}

fn read_mac(ns: &crate::netns::Netns, ifname: &str) -> anyhow::Result<[u8; 6]> {
    let out = ns.exec(&["cat", &format!("/sys/class/net/{ifname}/address")]);
    parse_mac(&String::from_utf8_lossy(&out.stdout))
}

/// The IPv4 header checksum (RFC 791).
fn ipv4_checksum(header: &[u8]) -> u16 {
    let mut sum: u32 = header
        .chunks(2)
        .map(|w| u16::from_be_bytes([w[0], w[1]]) as u32)
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// Ethernet + IPv4 + UDP (checksum 0: none) + zero payload, `FRAME_LEN` bytes.
fn udp_frame(src_mac: [u8; 6], dst_mac: [u8; 6], dst: Ipv4Addr) -> Vec<u8> {
    let mut frame = Vec::with_capacity(FRAME_LEN);
    frame.extend_from_slice(&dst_mac);
    frame.extend_from_slice(&src_mac);
    frame.extend_from_slice(&0x0800u16.to_be_bytes());
    let ip_len = (FRAME_LEN - 14) as u16;
    let mut ip = vec![0x45, 0];
    ip.extend_from_slice(&ip_len.to_be_bytes());
    ip.extend_from_slice(&[0, 0, 0x40, 0, 64, 17, 0, 0]);
    ip.extend_from_slice(&CLIENT_ADDR.octets());
    ip.extend_from_slice(&dst.octets());
    let check = ipv4_checksum(&ip);
    ip[10..12].copy_from_slice(&check.to_be_bytes());
    frame.extend_from_slice(&ip);
    frame.extend_from_slice(&BASE_PORT.to_be_bytes());
    frame.extend_from_slice(&SINK_UDP_PORT.to_be_bytes());
    frame.extend_from_slice(&(ip_len - 20).to_be_bytes());
    frame.extend_from_slice(&[0, 0]);
    frame.resize(FRAME_LEN, 0);
    frame
}

impl Generator {
    /// Loads the generator for the topology's client namespace.
    pub fn new(topology: &Topology) -> anyhow::Result<Self> {
        let ifaces = &topology.ifaces;
        let mut ebpf = load_helper_object()?;
        // Every XDP test run swaps its program into the kernel's XDP dispatcher and back, each
        // time waiting for an RCU grace period (milliseconds here), unless the program is
        // already there because it is attached somewhere: so it is, to an idle veth.
        attach_native(&mut ebpf, GENERATOR_PROGRAM, &topology.client, &ifaces.idle)?;
        let config = Array::try_from(ebpf.take_map(GEN_PACKET).context("GEN_PACKET")?)?;
        let state = PerCpuArray::try_from(ebpf.take_map(GEN_STATE).context("GEN_STATE")?)?;
        Ok(Self {
            ebpf: Arc::new(Mutex::new(ebpf)),
            config,
            state: Arc::new(state),
            netns_path: format!("/run/netns/{}", topology.client.name),
            ifindex: ifindex(&topology.client, &ifaces.client)?,
            cpu: topology.cpus.load,
            template: Vec::new(),
            split: None,
            src_mac: read_mac(&topology.client, &ifaces.client)?,
            dst_mac: read_mac(&topology.router, &ifaces.router_client)?,
        })
    }

    /// Sends to `dst` from now on; with `split`, every `every`-th flow to the other address.
    pub fn set_destination(&mut self, dst: Ipv4Addr, split: Option<(Ipv4Addr, u32)>) {
        self.template = udp_frame(self.src_mac, self.dst_mac, dst);
        self.split = split.map(|(other, every)| {
            let frame = udp_frame(self.src_mac, self.dst_mac, other);
            (
                u32::from_ne_bytes(other.octets()),
                u16::from_ne_bytes([frame[24], frame[25]]),
                every,
            )
        });
    }

    /// Starts sending for `duration` (or until stopped) on a thread in the client's
    /// namespace, pinned to the load CPU.
    pub fn start(&mut self, pace: Pace, duration: Duration) -> anyhow::Result<Running> {
        anyhow::ensure!(!self.template.is_empty(), "no destination set");
        let (split_dst, split_check, split_every) = self.split.unwrap_or_default();
        let mut packet = GenPacket {
            len: self.template.len() as u32,
            vary_offset: 14 + 20,
            flows: FLOWS,
            split_every,
            interval_ns: match pace {
                Pace::Max => 0,
                Pace::Rate(rate) => (1e9 / rate).max(1.0) as u64,
            },
            split_dst,
            split_check,
            _pad: 0,
            data: [0; GEN_PACKET_MAX],
        };
        packet.data[..self.template.len()].copy_from_slice(&self.template);
        self.config.set(0, packet, 0)?;
        // The counters run on from earlier runs; a stale pacing deadline is in the past.
        let baseline = sent(&self.state)?;

        let stop = Arc::new(AtomicBool::new(false));
        let (ebpf, path, template) = (
            self.ebpf.clone(),
            self.netns_path.clone(),
            self.template.clone(),
        );
        let (ifindex, cpu, thread_stop) = (self.ifindex, self.cpu, stop.clone());
        let duration = duration.min(MAX_RUN);
        let handle = std::thread::spawn(move || {
            enter(&path);
            pin(0, Some(cpu))?;
            // Real-time below the NAPI threads (see `PAUSE`).
            realtime(0, Some(GENERATOR_PRIORITY))?;
            let ebpf = ebpf.lock().expect("generator lock");
            let program: &Xdp = ebpf
                .program(GENERATOR_PROGRAM)
                .context("generator program")?
                .try_into()?;
            let ctx = xdp_md(template.len(), ifindex);
            let start = Instant::now();
            while start.elapsed() < duration && !thread_stop.load(Ordering::Relaxed) {
                let options = TestRunOptions {
                    data_in: Some(&template),
                    ctx_in: Some(&ctx),
                    repeat: RUNS_PER_CALL,
                    attrs: TestRunAttrs::new().xdp_live_frames(BATCH),
                    ..TestRunOptions::default()
                };
                program
                    .test_run(options)
                    .context("BPF_PROG_RUN (live frames) of the generator")?;
                std::thread::sleep(PAUSE);
            }
            Ok(start.elapsed())
        });
        Ok(Running {
            stop,
            state: self.state.clone(),
            baseline,
            handle,
        })
    }
}

/// `struct xdp_md` for the test run: the frame spans the whole input and arrives on `ifindex`.
fn xdp_md(len: usize, ifindex: u32) -> [u8; 24] {
    let mut ctx = [0u8; 24];
    ctx[4..8].copy_from_slice(&(len as u32).to_ne_bytes());
    ctx[12..16].copy_from_slice(&ifindex.to_ne_bytes());
    ctx
}

/// One saturated measurement.
#[derive(Clone, Copy, Debug)]
pub struct Saturated {
    /// Frames the generator sent per second.
    pub offered_pps: f64,
    /// Frames the backends received per second.
    pub received_pps: f64,
    /// Green's share of what was received, in percent.
    pub green_percent: f64,
    /// Busy share of the router's receive thread (its own core), in percent.
    pub router_cpu_percent: f64,
    /// Router CPU time per received packet.
    pub router_ns_per_packet: f64,
}

/// Sends flat out; measures over `window` after `warmup` (flows get pinned, conntrack filled).
pub fn saturated(
    topology: &Topology,
    generator: &mut Generator,
    warmup: Duration,
    window: Duration,
) -> anyhow::Result<Saturated> {
    let run = generator.start(Pace::Max, warmup + window + Duration::from_secs(1))?;
    std::thread::sleep(warmup);
    let (sent0, sink0, cpu0, t0) = (
        run.sent()?,
        topology.sink_counts(SinkCounter::Udp)?,
        topology.router_cpu_ns(),
        Instant::now(),
    );
    std::thread::sleep(window);
    let (sent1, sink1, cpu1, t1) = (
        run.sent()?,
        topology.sink_counts(SinkCounter::Udp)?,
        topology.router_cpu_ns(),
        Instant::now(),
    );
    run.stop()?;
    topology.settle(SinkCounter::Udp)?;
    let seconds = (t1 - t0).as_secs_f64();
    let received = sink1.since(&sink0);
    let cpu_ns = cpu1.saturating_sub(cpu0) as f64;
    Ok(Saturated {
        offered_pps: (sent1 - sent0) as f64 / seconds,
        received_pps: received.total() as f64 / seconds,
        green_percent: received.green_percent(),
        router_cpu_percent: cpu_ns / (seconds * 1e9) * 100.0,
        router_ns_per_packet: cpu_ns / received.total() as f64,
    })
}

/// One paced trial: the rate achieved and the share of it lost.
fn paced(
    topology: &Topology,
    generator: &mut Generator,
    rate: f64,
    duration: Duration,
) -> anyhow::Result<(f64, f64)> {
    let before = topology.settle(SinkCounter::Udp)?;
    let (sent, elapsed) = generator.start(Pace::Rate(rate), duration)?.join()?;
    let after = topology.settle(SinkCounter::Udp)?;
    let received = after.since(&before).total();
    Ok((
        sent as f64 / elapsed.as_secs_f64(),
        1.0 - received as f64 / sent.max(1) as f64,
    ))
}

/// Tries per bisection step: a step passes if one of them does. Loss that comes from the
/// router's capacity repeats; a stall of the shared VM (a few hundred microseconds lose a
/// ring's worth of frames at any rate) seldom strikes twice in a row.
const TRIES: u32 = 2;

/// The highest rate (packets/s) below `ceiling` at which at most `max_loss` is lost, by
/// bisection over `steps` steps of `trial` each; the rate reported is the one achieved.
pub fn no_drop_rate(
    topology: &Topology,
    generator: &mut Generator,
    ceiling: f64,
    max_loss: f64,
    trial: Duration,
    steps: u32,
) -> anyhow::Result<f64> {
    let (mut low, mut high, mut best) = (0.0, ceiling, 0.0f64);
    for _ in 0..steps {
        let rate = (low + high) / 2.0;
        let mut passed = None;
        for _ in 0..TRIES {
            let (achieved, loss) = paced(topology, generator, rate, trial)?;
            eprintln!(
                "  no-drop search: asked {:.3} Mpps, sent {:.3} Mpps, lost {:.3} %",
                rate / 1e6,
                achieved / 1e6,
                loss * 100.0
            );
            if loss <= max_loss {
                passed = Some(achieved);
                break;
            }
        }
        match passed {
            Some(achieved) => {
                low = rate;
                best = best.max(achieved);
            }
            None => high = rate,
        }
    }
    Ok(best)
}
