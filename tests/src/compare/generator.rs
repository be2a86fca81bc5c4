//! The packet-rate test: a generator fast enough to saturate the router, and the two rates
//! measured with it.
//!
//! The generator is `compare_generator` run by BPF_PROG_RUN in live-frames mode
//! (`BPF_F_TEST_XDP_LIVE_FRAMES`, kernel 5.18): every run writes a 60-byte UDP frame (64 on the
//! wire) and XDP_TX sends it out of the generator's veth, straight into the router's receive
//! ring, without a socket or an skb on the sending side. The source port cycles through
//! [`FLOWS`] values, so the splitting alternatives see that many flows.
//!
//! * Saturated rate: the generator sends as fast as it can; what the backends' sinks count per
//!   second, the router's CPU time per packet and the green share are measured over a window.
//! * No-drop rate: the highest paced rate at which the sinks count at least `1 - max_loss` of
//!   what was sent, found by bisection below the saturated rate.

use std::{
    net::Ipv4Addr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use anyhow::Context as _;
use aya::{
    Ebpf,
    maps::Array,
    programs::{TestRun, TestRunAttrs, TestRunOptions, Xdp},
};
use splitter_common::compare::{
    GEN_PACKET, GEN_PACKET_MAX, GENERATOR_PROGRAM, GenPacket, SINK_UDP_PORT, SinkCounter,
};

use super::topology::{CLIENT_ADDR, Topology, ifindex, load_helper_object, pin};
use crate::netns::enter;

/// Distinct flows (UDP source ports) the generator cycles through.
pub const FLOWS: u32 = 16_384;
/// First source port.
const BASE_PORT: u16 = 20_000;
/// Frame length without the FCS: 64 bytes on the wire.
pub const FRAME_LEN: usize = 60;
/// Frames per BPF_PROG_RUN call when sending flat out.
const SATURATED_CHUNK: u32 = 8192;
/// No run lasts longer than this, whatever it was asked.
const MAX_RUN: Duration = Duration::from_secs(30);

pub struct Generator {
    ebpf: Arc<Mutex<Ebpf>>,
    netns_path: String,
    ifindex: u32,
    cpu: usize,
    template: Vec<u8>,
    src_mac: [u8; 6],
    dst_mac: [u8; 6],
}

/// How fast a run sends.
#[derive(Clone, Copy, Debug)]
pub enum Pace {
    /// As fast as the generator can.
    Max,
    /// Packets per second, in bursts no larger than the router's receive ring can absorb.
    Rate(f64),
}

/// A generator run in progress.
pub struct Running {
    stop: Arc<AtomicBool>,
    sent: Arc<AtomicU64>,
    handle: JoinHandle<anyhow::Result<u64>>,
}

impl Running {
    /// Frames sent so far.
    pub fn sent(&self) -> u64 {
        self.sent.load(Ordering::Relaxed)
    }

    /// Waits for the run to end by itself; returns the frames sent.
    pub fn join(self) -> anyhow::Result<u64> {
        self.handle.join().expect("generator thread")
    }

    pub fn stop(self) -> anyhow::Result<u64> {
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
    bytes.try_into().map_err(|_| anyhow::anyhow!("bad MAC {text:?}"))
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
    /// Loads the generator (not attached anywhere: it only runs under BPF_PROG_RUN) for the
    /// topology's generator namespace.
    pub fn new(topology: &Topology) -> anyhow::Result<Self> {
        let mut ebpf = load_helper_object()?;
        let program: &mut Xdp = ebpf
            .program_mut(GENERATOR_PROGRAM)
            .context("no generator program (stale build?)")?
            .try_into()?;
        program.load().context("loading the generator")?;
        let ifaces = &topology.ifaces;
        Ok(Self {
            ebpf: Arc::new(Mutex::new(ebpf)),
            netns_path: format!("/run/netns/{}", topology.client.name),
            ifindex: ifindex(&topology.client, &ifaces.client)?,
            cpu: topology.cpus.load,
            template: Vec::new(),
            src_mac: read_mac(&topology.client, &ifaces.client)?,
            dst_mac: read_mac(&topology.router, &ifaces.router_client)?,
        })
    }

    /// Sends to `dst` from now on.
    pub fn set_destination(&mut self, dst: Ipv4Addr) -> anyhow::Result<()> {
        let frame = udp_frame(self.src_mac, self.dst_mac, dst);
        let mut packet = GenPacket {
            len: frame.len() as u32,
            vary_offset: 14 + 20,
            flows: FLOWS,
            _pad: 0,
            data: [0; GEN_PACKET_MAX],
        };
        packet.data[..frame.len()].copy_from_slice(&frame);
        let mut ebpf = self.ebpf.lock().expect("generator lock");
        let mut map: Array<_, GenPacket> =
            Array::try_from(ebpf.map_mut(GEN_PACKET).context("GEN_PACKET")?)?;
        map.set(0, packet, 0)?;
        self.template = frame;
        Ok(())
    }

    /// Starts sending `count` frames (or until stopped) on a thread in the generator's
    /// namespace, pinned to the load CPU.
    pub fn start(&self, pace: Pace, count: u64) -> Running {
        let stop = Arc::new(AtomicBool::new(false));
        let sent = Arc::new(AtomicU64::new(0));
        let (ebpf, path, template) = (
            self.ebpf.clone(),
            self.netns_path.clone(),
            self.template.clone(),
        );
        let (ifindex, cpu) = (self.ifindex, self.cpu);
        let (thread_stop, thread_sent) = (stop.clone(), sent.clone());
        let handle = std::thread::spawn(move || {
            enter(&path);
            pin(0, Some(cpu))?;
            // Sleeps end on time (the default slack is 50 µs).
            unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, 1) };
            let ebpf = ebpf.lock().expect("generator lock");
            let program: &Xdp = ebpf
                .program(GENERATOR_PROGRAM)
                .context("generator program")?
                .try_into()?;
            send(
                program,
                &template,
                ifindex,
                pace,
                count,
                &thread_stop,
                &thread_sent,
            )
        });
        Running { stop, sent, handle }
    }
}

/// `struct xdp_md` for the test run: the frame spans the whole input and arrives on `ifindex`.
fn xdp_md(len: usize, ifindex: u32) -> [u8; 24] {
    let mut ctx = [0u8; 24];
    ctx[4..8].copy_from_slice(&(len as u32).to_ne_bytes());
    ctx[12..16].copy_from_slice(&ifindex.to_ne_bytes());
    ctx
}

fn send(
    program: &Xdp,
    template: &[u8],
    ifindex: u32,
    pace: Pace,
    count: u64,
    stop: &AtomicBool,
    progress: &AtomicU64,
) -> anyhow::Result<u64> {
    anyhow::ensure!(!template.is_empty(), "no destination set");
    let ctx = xdp_md(template.len(), ifindex);
    let chunk = match pace {
        Pace::Max => SATURATED_CHUNK,
        // ~25 µs of traffic per burst, and never more than a veth ring (256) holds.
        Pace::Rate(rate) => ((rate * 25e-6) as u32).clamp(8, 128),
    };
    let start = Instant::now();
    let mut sent = 0u64;
    while sent < count && !stop.load(Ordering::Relaxed) && start.elapsed() < MAX_RUN {
        if let Pace::Rate(rate) = pace {
            let due = start + Duration::from_secs_f64(sent as f64 / rate);
            loop {
                let now = Instant::now();
                if now >= due {
                    break;
                }
                if due - now > Duration::from_micros(300) {
                    std::thread::sleep(due - now - Duration::from_micros(200));
                } else {
                    std::hint::spin_loop();
                }
            }
        }
        let frames = chunk.min((count - sent).min(u32::MAX as u64) as u32);
        let options = TestRunOptions {
            data_in: Some(template),
            ctx_in: Some(&ctx),
            repeat: frames,
            attrs: TestRunAttrs::new().xdp_live_frames(64),
            ..TestRunOptions::default()
        };
        program
            .test_run(options)
            .context("BPF_PROG_RUN (live frames) of the generator")?;
        sent += frames as u64;
        progress.store(sent, Ordering::Relaxed);
    }
    Ok(sent)
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
    generator: &Generator,
    warmup: Duration,
    window: Duration,
) -> anyhow::Result<Saturated> {
    let run = generator.start(Pace::Max, u64::MAX);
    std::thread::sleep(warmup);
    let (sent0, sink0, cpu0, t0) = (
        run.sent(),
        topology.sink_counts(SinkCounter::Udp)?,
        topology.router_cpu_ns(),
        Instant::now(),
    );
    std::thread::sleep(window);
    let (sent1, sink1, cpu1, t1) = (
        run.sent(),
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

/// Loss of one paced trial: `1 - received / sent`.
fn paced_loss(
    topology: &Topology,
    generator: &Generator,
    rate: f64,
    duration: Duration,
) -> anyhow::Result<f64> {
    let before = topology.settle(SinkCounter::Udp)?;
    let count = (rate * duration.as_secs_f64()) as u64;
    let sent = generator.start(Pace::Rate(rate), count).join()?;
    let after = topology.settle(SinkCounter::Udp)?;
    let received = after.since(&before).total();
    Ok(1.0 - received as f64 / sent as f64)
}

/// The highest rate (packets/s) below `ceiling` at which at most `max_loss` is lost, by
/// bisection over `steps` trials of `trial` each.
pub fn no_drop_rate(
    topology: &Topology,
    generator: &Generator,
    ceiling: f64,
    max_loss: f64,
    trial: Duration,
    steps: u32,
) -> anyhow::Result<f64> {
    let (mut low, mut high) = (0.0, ceiling);
    for _ in 0..steps {
        let rate = (low + high) / 2.0;
        let loss = paced_loss(topology, generator, rate, trial)?;
        if loss <= max_loss {
            low = rate;
        } else {
            high = rate;
        }
    }
    Ok(low)
}
