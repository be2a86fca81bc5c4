//! `cargo xtask bench --compare`: the splitter against what users would run instead, on one
//! namespace topology, in one run, with the same 10 % green split (see `topology.rs`).
//!
//! 1. Packet rate (`generator.rs`): 64-byte UDP to the service, saturated and no-drop rates at
//!    the backends, the router's CPU per packet, the measured split.
//! 2. Connections (`http.rs`): wrk against nginx backends, a connection per request and
//!    keep-alive; rates and p50/p99 latency.
//! 3. Scale (`scale.rs`): per-packet cost with 1 to 1M pinned flows, 1 and 100 services.
//!
//! Runs are interleaved (run 1 of every alternative, then run 2, ...) so that the load of a
//! shared machine falls on all of them alike; each figure is the median of the runs. The whole
//! comparison stops starting new measurements when its time budget is spent, and says so.

pub mod alternatives;
pub mod generator;
pub mod http;
pub mod process;
pub mod report;
pub mod scale;
pub mod topology;

use std::time::{Duration, Instant};

use anyhow::Context as _;
use splitter_bench_common::compare::SinkCounter;

use self::{
    alternatives::Alternative,
    generator::Generator,
    http::{Load, Nginx},
    topology::{BLUE_ADDR, GREEN_ADDR, Topology},
};

/// Everything a comparison run can be told.
#[derive(Clone, Debug)]
pub struct Options {
    /// Runs per figure (the median is reported).
    pub runs: usize,
    /// No new measurement starts after this much time.
    pub budget: Duration,
    pub packet_rate: bool,
    pub connections: bool,
    pub scale: bool,
    pub alternatives: Vec<Alternative>,
    pub pps_warmup: Duration,
    pub pps_window: Duration,
    /// Loss allowed at the "no-drop" rate.
    pub max_loss: f64,
    pub ndr_trial: Duration,
    pub ndr_steps: u32,
    pub http_load: Load,
    pub scale_repeat: u32,
    pub scale_table_sizes: Vec<u32>,
    pub scale_service_counts: Vec<u32>,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            runs: 3,
            budget: Duration::from_secs(540),
            packet_rate: true,
            connections: true,
            scale: true,
            alternatives: Alternative::ALL.to_vec(),
            pps_warmup: Duration::from_millis(300),
            pps_window: Duration::from_secs(1),
            max_loss: 0.001,
            ndr_trial: Duration::from_millis(250),
            ndr_steps: 7,
            http_load: Load {
                close: false,
                connections: 32,
                threads: 1,
                duration: Duration::from_secs(3),
            },
            scale_repeat: 1_000_000,
            scale_table_sizes: vec![1, 10_000, 200_000, 1_000_000],
            scale_service_counts: vec![1, 100],
        }
    }
}

/// A figure's samples, one per run.
#[derive(Clone, Debug, Default)]
pub struct Samples(pub Vec<f64>);

impl Samples {
    pub fn push(&mut self, value: f64) {
        self.0.push(value);
    }

    /// The smallest and the largest finite sample; `None` without one.
    pub fn range(&self) -> Option<(f64, f64)> {
        let finite = || self.0.iter().copied().filter(|v| v.is_finite());
        let min = finite().fold(f64::INFINITY, f64::min);
        let max = finite().fold(f64::NEG_INFINITY, f64::max);
        min.is_finite().then_some((min, max))
    }

    pub fn median(&self) -> f64 {
        let mut sorted: Vec<f64> = self.0.iter().copied().filter(|v| v.is_finite()).collect();
        if sorted.is_empty() {
            return f64::NAN;
        }
        sorted.sort_by(f64::total_cmp);
        let mid = sorted.len() / 2;
        if sorted.len() % 2 == 1 {
            sorted[mid]
        } else {
            (sorted[mid - 1] + sorted[mid]) / 2.0
        }
    }
}

/// The packet-rate figures of one alternative.
#[derive(Clone, Debug, Default)]
pub struct PacketRate {
    pub offered_pps: Samples,
    pub saturated_pps: Samples,
    pub no_drop_pps: Samples,
    pub router_cpu_percent: Samples,
    pub router_ns_per_packet: Samples,
    pub green_percent: Samples,
}

/// The connection figures of one alternative.
#[derive(Clone, Debug, Default)]
pub struct Connections {
    pub new_per_second: Samples,
    pub new_p50_us: Samples,
    pub new_p99_us: Samples,
    pub keepalive_per_second: Samples,
    pub keepalive_p50_us: Samples,
    pub keepalive_p99_us: Samples,
    /// Green's share of the connections opened, from the backends' SYN counters.
    pub green_percent: Samples,
    pub errors: u64,
}

/// What became of one alternative in one test.
#[derive(Clone, Debug)]
pub enum Outcome<T> {
    Measured(T),
    /// The machine cannot run it (the reason says why).
    NotMeasurable(String),
    /// The test does not apply to it.
    NotApplicable(&'static str),
}

pub struct Results {
    pub options: Options,
    pub machine: report::Machine,
    pub packet_rate: Vec<(Alternative, Outcome<PacketRate>)>,
    pub connections: Vec<(Alternative, Outcome<Connections>)>,
    pub scale: Option<scale::Scale>,
    /// Measurements skipped because the time budget ran out.
    pub skipped: Vec<String>,
    pub elapsed: Duration,
}

/// Runs the comparison.
pub fn run(options: &Options) -> anyhow::Result<Results> {
    let start = Instant::now();
    let mut results = Results {
        options: options.clone(),
        machine: report::Machine::describe(),
        packet_rate: Vec::new(),
        connections: Vec::new(),
        scale: None,
        skipped: Vec::new(),
        elapsed: Duration::ZERO,
    };
    let over_budget = || start.elapsed() > options.budget;
    if options.packet_rate || options.connections {
        let topology = Topology::new().context("building the topology")?;
        let available: Vec<(Alternative, Result<(), String>)> = options
            .alternatives
            .iter()
            .map(|&alternative| (alternative, alternative.availability(&topology)))
            .collect();
        if options.packet_rate {
            results.packet_rate = packet_rate(&topology, options, &available, &over_budget)
                .context("packet-rate test")?;
        }
        if options.connections {
            results.connections = connections(&topology, options, &available, &over_budget)
                .context("connection test")?;
        }
    }
    if options.scale {
        if over_budget() {
            results.skipped.push("scale: time budget spent".to_owned());
        } else {
            results.scale = Some(scale::run(options).context("scale test")?);
        }
    }
    results.machine.finish();
    results.elapsed = start.elapsed();
    Ok(results)
}

type Measured<T> = Vec<(Alternative, Outcome<T>)>;

fn packet_rate(
    topology: &Topology,
    options: &Options,
    available: &[(Alternative, Result<(), String>)],
    over_budget: &dyn Fn() -> bool,
) -> anyhow::Result<Measured<PacketRate>> {
    topology.dedicate_cpus()?;
    let mut generator = Generator::new(topology)?;
    let mut figures: Measured<PacketRate> = available
        .iter()
        .map(|(alternative, availability)| {
            let outcome = match availability {
                Err(reason) => Outcome::NotMeasurable(reason.clone()),
                Ok(()) if !alternative.carries_udp() => {
                    Outcome::NotApplicable("TCP mode: connection tests only")
                }
                Ok(()) => Outcome::Measured(PacketRate::default()),
            };
            (*alternative, outcome)
        })
        .collect();
    'runs: for run in 0..options.runs {
        for (alternative, outcome) in figures.iter_mut() {
            let Outcome::Measured(figures) = outcome else {
                continue;
            };
            if over_budget() {
                break 'runs;
            }
            let installed = alternative
                .install(topology)
                .with_context(|| format!("installing {}", alternative.label()))?;
            generator.set_destination(alternative.destination(), alternative.client_split());
            let saturated = generator::saturated(
                topology,
                &mut generator,
                options.pps_warmup,
                options.pps_window,
            )?;
            anyhow::ensure!(
                saturated.received_pps > 0.0,
                "{}: nothing reached the backends",
                alternative.label()
            );
            let no_drop = generator::no_drop_rate(
                topology,
                &mut generator,
                saturated.received_pps * 1.1,
                options.max_loss,
                options.ndr_trial,
                options.ndr_steps,
            )?;
            eprintln!(
                "packet rate, run {}: {:<40} offered {:>5.2} Mpps, received {:>5.2} Mpps, \
                 no-drop {:>5.2} Mpps, router CPU {:>3.0} % ({:.0} ns/packet), green {:.1} %",
                run + 1,
                alternative.label(),
                saturated.offered_pps / 1e6,
                saturated.received_pps / 1e6,
                no_drop / 1e6,
                saturated.router_cpu_percent,
                saturated.router_ns_per_packet,
                saturated.green_percent,
            );
            if let Some(description) = installed.describe() {
                eprintln!("  {}: {description}", alternative.label());
            }
            figures.offered_pps.push(saturated.offered_pps);
            figures.saturated_pps.push(saturated.received_pps);
            figures.no_drop_pps.push(no_drop);
            figures
                .router_cpu_percent
                .push(saturated.router_cpu_percent);
            figures
                .router_ns_per_packet
                .push(saturated.router_ns_per_packet);
            figures.green_percent.push(saturated.green_percent);
        }
    }
    Ok(figures)
}

fn connections(
    topology: &Topology,
    options: &Options,
    available: &[(Alternative, Result<(), String>)],
    over_budget: &dyn Fn() -> bool,
) -> anyhow::Result<Measured<Connections>> {
    // wrk, nginx, HAProxy and the kernel's softirqs share both CPUs here.
    topology.share_cpus()?;
    let _blue = Nginx::start(&topology.blue, BLUE_ADDR, "blue")?;
    let _green = Nginx::start(&topology.green, GREEN_ADDR, "green")?;
    let mut figures: Measured<Connections> = available
        .iter()
        .map(|(alternative, availability)| {
            let outcome = match availability {
                Err(reason) => Outcome::NotMeasurable(reason.clone()),
                Ok(()) => Outcome::Measured(Connections::default()),
            };
            (*alternative, outcome)
        })
        .collect();
    'runs: for run in 0..options.runs {
        for (alternative, outcome) in figures.iter_mut() {
            let Outcome::Measured(figures) = outcome else {
                continue;
            };
            if over_budget() {
                break 'runs;
            }
            let _installed = alternative
                .install(topology)
                .with_context(|| format!("installing {}", alternative.label()))?;
            let destination = alternative.destination();
            let body = http::get(&topology.client, destination)
                .with_context(|| format!("{}: a request through it", alternative.label()))?;
            anyhow::ensure!(
                matches!(body.as_str(), "blue" | "green"),
                "{}: unexpected answer {body:?}",
                alternative.label()
            );
            let before = topology.sink_counts(SinkCounter::TcpSyn)?;
            let close = http::wrk(
                &topology.client,
                destination,
                Load {
                    close: true,
                    ..options.http_load
                },
            )?;
            let syns = topology.settle(SinkCounter::TcpSyn)?.since(&before);
            let keepalive = http::wrk(
                &topology.client,
                destination,
                Load {
                    close: false,
                    ..options.http_load
                },
            )?;
            eprintln!(
                "connections, run {}: {:<40} new {:>6.0}/s (p50 {:.0} us, p99 {:.0} us), \
                 keep-alive {:>6.0}/s (p50 {:.0} us, p99 {:.0} us), green {:.1} %, errors {}",
                run + 1,
                alternative.label(),
                close.requests_per_second,
                close.p50_us,
                close.p99_us,
                keepalive.requests_per_second,
                keepalive.p50_us,
                keepalive.p99_us,
                syns.green_percent(),
                close.errors + keepalive.errors,
            );
            figures.new_per_second.push(close.requests_per_second);
            figures.new_p50_us.push(close.p50_us);
            figures.new_p99_us.push(close.p99_us);
            figures
                .keepalive_per_second
                .push(keepalive.requests_per_second);
            figures.keepalive_p50_us.push(keepalive.p50_us);
            figures.keepalive_p99_us.push(keepalive.p99_us);
            figures.green_percent.push(syns.green_percent());
            figures.errors += close.errors + keepalive.errors;
        }
    }
    Ok(figures)
}
