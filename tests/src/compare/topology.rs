//! The comparison's one topology: generator/client → splitter host (the router) → blue and green
//! backends, each in its own network namespace, all numbered from 198.18.0.0/15. Built from the
//! same pieces as the test topologies (`netns.rs`), but its own type: it is IPv4 only with static
//! neighbours, names its interfaces per process (NAPI threads are named after them), polls in
//! NAPI threads pinned to CPUs, and counts arrivals with XDP sinks on the backends.
//!
//! ```text
//!  client (c) 198.18.1.1 ── r0 198.18.1.254 [router] r1 198.18.2.1 ── (b) 198.18.2.2 blue
//!                                                  r2 198.18.3.1 ── (g) 198.18.3.2 green
//! ```
//!
//! Every alternative is installed on the router in turn. Neighbours are static (no ARP in the
//! measurements), IPv6 is off (no RS/DAD noise). The backends run the counting sink in native
//! XDP: it counts what arrives, and gives their veths the NAPI that native XDP_REDIRECT into a
//! veth needs. The router's client-facing veth and both backends' veths poll in NAPI threads,
//! so the router's receive path can be pinned to a core of its own and its CPU time measured.

use std::{net::Ipv4Addr, time::Duration};

use anyhow::Context as _;
use aya::{
    Ebpf,
    maps::PerCpuArray,
    programs::{Xdp, XdpMode},
};
use splitter_bench_common::compare::{SINK_COUNTERS, SINK_PROGRAM, SinkCounter};

use crate::{
    bench::HARNESS_OBJECT,
    netns::{Netns, enter, veth},
};

pub const CLIENT_ADDR: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 1);
pub const ROUTER_CLIENT_ADDR: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 254);
pub const ROUTER_BLUE_ADDR: Ipv4Addr = Ipv4Addr::new(198, 18, 2, 1);
pub const BLUE_ADDR: Ipv4Addr = Ipv4Addr::new(198, 18, 2, 2);
pub const ROUTER_GREEN_ADDR: Ipv4Addr = Ipv4Addr::new(198, 18, 3, 1);
pub const GREEN_ADDR: Ipv4Addr = Ipv4Addr::new(198, 18, 3, 2);
/// The service address: routed nowhere, so only a splitting alternative delivers it.
pub const VIP: Ipv4Addr = Ipv4Addr::new(198, 18, 100, 1);
/// Share of new flows (connections) sent to green by every splitting alternative.
pub const GREEN_PERCENT: u32 = 10;

/// Interface names: short, and unique per process, because a NAPI thread is named after its
/// interface (`napi/<ifname>-<id>`) in the one global process table.
#[derive(Clone, Debug)]
pub struct Interfaces {
    pub client: String,
    pub router_client: String,
    pub router_blue: String,
    pub router_green: String,
    pub blue: String,
    pub green: String,
    /// A veth in the client's namespace that carries no traffic: the generator is attached
    /// there (see `generator.rs`).
    pub idle: String,
}

/// A backend's sink: the loaded object (dropping it detaches the program) and its counters.
struct Sink {
    ebpf: Ebpf,
}

/// Packets counted by both sinks.
#[derive(Clone, Copy, Debug, Default)]
pub struct SinkCounts {
    pub blue: u64,
    pub green: u64,
}

impl SinkCounts {
    pub fn total(&self) -> u64 {
        self.blue + self.green
    }

    pub fn since(&self, earlier: &SinkCounts) -> SinkCounts {
        SinkCounts {
            blue: self.blue - earlier.blue,
            green: self.green - earlier.green,
        }
    }

    /// Green's share in percent (NaN when nothing arrived).
    pub fn green_percent(&self) -> f64 {
        self.green as f64 * 100.0 / self.total() as f64
    }
}

/// The CPUs the packet-rate test pins to: the router gets one of its own.
#[derive(Clone, Copy, Debug)]
pub struct Cpus {
    pub router: usize,
    pub load: usize,
}

pub struct Topology {
    // Sinks first: they detach before their namespaces go.
    sinks: [Sink; 2],
    pub ifaces: Interfaces,
    pub cpus: Cpus,
    pub client: Netns,
    pub router: Netns,
    pub blue: Netns,
    pub green: Netns,
}

fn mac(ns: &Netns, ifname: &str) -> String {
    let out = ns.exec(&["cat", &format!("/sys/class/net/{ifname}/address")]);
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

fn neigh(ns: &Netns, addr: Ipv4Addr, lladdr: &str, ifname: &str) {
    ns.ip(&[
        "neigh",
        "replace",
        &addr.to_string(),
        "lladdr",
        lladdr,
        "dev",
        ifname,
        "nud",
        "permanent",
    ]);
}

impl Topology {
    pub fn new() -> anyhow::Result<Self> {
        let pid = std::process::id();
        let tag = format!("k{pid:x}");
        let ifaces = Interfaces {
            client: format!("{tag}c"),
            router_client: format!("{tag}r0"),
            router_blue: format!("{tag}r1"),
            router_green: format!("{tag}r2"),
            blue: format!("{tag}b"),
            green: format!("{tag}g"),
            idle: format!("{tag}i"),
        };
        let client = Netns::new(&format!("splcmp-client-{pid}"));
        let router = Netns::new(&format!("splcmp-router-{pid}"));
        let blue = Netns::new(&format!("splcmp-blue-{pid}"));
        let green = Netns::new(&format!("splcmp-green-{pid}"));
        for ns in [&client, &router, &blue, &green] {
            ns.sysctls(&[
                ("net.ipv6.conf.all.disable_ipv6", "1"),
                ("net.ipv6.conf.default.disable_ipv6", "1"),
            ]);
        }
        veth(&client, &ifaces.client, &router, &ifaces.router_client);
        veth(&router, &ifaces.router_blue, &blue, &ifaces.blue);
        veth(&router, &ifaces.router_green, &green, &ifaces.green);
        veth(&client, &ifaces.idle, &client, &format!("{}x", ifaces.idle));

        for (ns, address, ifname) in [
            (&client, CLIENT_ADDR, &ifaces.client),
            (&router, ROUTER_CLIENT_ADDR, &ifaces.router_client),
            (&router, ROUTER_BLUE_ADDR, &ifaces.router_blue),
            (&router, ROUTER_GREEN_ADDR, &ifaces.router_green),
            (&blue, BLUE_ADDR, &ifaces.blue),
            (&green, GREEN_ADDR, &ifaces.green),
        ] {
            ns.addr(ifname, &format!("{address}/24"));
        }
        client.route("198.18.0.0/15", ROUTER_CLIENT_ADDR);
        blue.route("default", ROUTER_BLUE_ADDR);
        green.route("default", ROUTER_GREEN_ADDR);
        router.sysctl("net.ipv4.ip_forward", "1");
        // Connection-per-request runs open tens of thousands of connections.
        client.sysctl("net.ipv4.ip_local_port_range", "1024 65535");
        client.sysctl("net.ipv4.tcp_tw_reuse", "1");
        // No TIME_WAIT sockets anywhere: the alternatives reach a backend by two different
        // addresses (the service address, blue's own), so the client's TCP timestamps for the
        // same 4-tuple at the backend come from two clocks (the offset is per address pair).
        // A SYN that meets a TIME_WAIT left by the other kind is then refused by PAWS and
        // retried a second later: whichever alternative runs after the other kind loses most
        // of its connection rate (seen here: 26k/s alone, 6k/s after the splitters).
        for ns in [&client, &router, &blue, &green] {
            ns.sysctl("net.ipv4.tcp_max_tw_buckets", "0");
        }
        for ns in [&blue, &green] {
            ns.sysctl("net.core.somaxconn", "8192");
            ns.sysctl("net.ipv4.tcp_max_syn_backlog", "8192");
        }

        let client_mac = mac(&client, &ifaces.client);
        let r0_mac = mac(&router, &ifaces.router_client);
        let r1_mac = mac(&router, &ifaces.router_blue);
        let r2_mac = mac(&router, &ifaces.router_green);
        let blue_mac = mac(&blue, &ifaces.blue);
        let green_mac = mac(&green, &ifaces.green);
        neigh(&client, ROUTER_CLIENT_ADDR, &r0_mac, &ifaces.client);
        neigh(&router, CLIENT_ADDR, &client_mac, &ifaces.router_client);
        neigh(&router, BLUE_ADDR, &blue_mac, &ifaces.router_blue);
        neigh(&router, GREEN_ADDR, &green_mac, &ifaces.router_green);
        neigh(&blue, ROUTER_BLUE_ADDR, &r1_mac, &ifaces.blue);
        neigh(&green, ROUTER_GREEN_ADDR, &r2_mac, &ifaces.green);

        // NAPI on the receiving veths (GRO on): the generator's XDP_TX and any native
        // XDP_REDIRECT into them are dropped without it. Then NAPI threads, so the router's
        // receive path is a thread that can be pinned and timed.
        for (ns, ifname) in [
            (&router, &ifaces.router_client),
            (&blue, &ifaces.blue),
            (&green, &ifaces.green),
        ] {
            ns.exec(&["ethtool", "-K", ifname, "gro", "on"]);
            ns.exec(&[
                "sh",
                "-c",
                &format!("echo 1 > /sys/class/net/{ifname}/threaded"),
            ]);
        }

        let sinks = [
            Sink::attach(&blue, &ifaces.blue)?,
            Sink::attach(&green, &ifaces.green)?,
        ];
        let cpus = Cpus {
            router: num_cpus().saturating_sub(1),
            load: 0,
        };
        let topology = Self {
            sinks,
            ifaces,
            cpus,
            client,
            router,
            blue,
            green,
        };
        Ok(topology)
    }

    /// For the packet-rate test: the router's NAPI thread alone on its CPU, the backends' next
    /// to the generator, all three real-time (SCHED_FIFO) so that other work on this shared
    /// machine cannot take their CPU away mid-measurement (the kernel's RT throttling still
    /// leaves others 5 %).
    pub fn dedicate_cpus(&self) -> anyhow::Result<()> {
        self.coalesce(COALESCE_NS);
        let router = napi_threads(&self.ifaces.router_client);
        anyhow::ensure!(
            !router.is_empty(),
            "no NAPI thread for {} (threaded NAPI on veth needs kernel 5.13+ and GRO on)",
            self.ifaces.router_client
        );
        for tid in router {
            pin(tid, Some(self.cpus.router))?;
            realtime(tid, Some(NAPI_PRIORITY))?;
        }
        for ifname in [&self.ifaces.blue, &self.ifaces.green] {
            for tid in napi_threads(ifname) {
                pin(tid, Some(self.cpus.load))?;
                realtime(tid, Some(NAPI_PRIORITY))?;
            }
        }
        Ok(())
    }

    /// For the HTTP tests: every NAPI thread an ordinary thread on any CPU again (wrk, nginx,
    /// HAProxy and the kernel share both CPUs).
    pub fn share_cpus(&self) -> anyhow::Result<()> {
        self.coalesce(0);
        for ifname in [
            &self.ifaces.router_client,
            &self.ifaces.blue,
            &self.ifaces.green,
        ] {
            for tid in napi_threads(ifname) {
                pin(tid, None)?;
                realtime(tid, None)?;
            }
        }
        Ok(())
    }

    /// Interrupt coalescing, as a NIC does it, on the receiving veths (`0`: off). Without it
    /// every frame burst that finds the receiver's NAPI thread asleep costs its sender a
    /// wake-up across CPUs (microseconds in a VM): the router would pay one per packet toward
    /// an idle backend, and the paced generator one per burst toward an idle router, which
    /// caps it near 1 Mpps. With it, an idle NAPI stays scheduled and polls again after
    /// `timeout_ns` (for up to 100 empty polls), and senders only enqueue. 50 µs fills a third
    /// of a veth ring (256 frames) at 1.5 Mpps.
    fn coalesce(&self, timeout_ns: u32) {
        let defer = if timeout_ns == 0 { 0 } else { 100 };
        for (ns, ifname) in [
            (&self.router, &self.ifaces.router_client),
            (&self.blue, &self.ifaces.blue),
            (&self.green, &self.ifaces.green),
        ] {
            ns.exec(&[
                "sh",
                "-c",
                &format!(
                    "echo {defer} > /sys/class/net/{ifname}/napi_defer_hard_irqs && \
                     echo {timeout_ns} > /sys/class/net/{ifname}/gro_flush_timeout"
                ),
            ]);
        }
    }

    /// CPU time (ns) the router's receive path has used so far.
    pub fn router_cpu_ns(&self) -> u64 {
        napi_threads(&self.ifaces.router_client)
            .into_iter()
            .map(on_cpu_ns)
            .sum()
    }

    /// Packets counted so far by both sinks.
    pub fn sink_counts(&self, counter: SinkCounter) -> anyhow::Result<SinkCounts> {
        Ok(SinkCounts {
            blue: self.sinks[0].count(counter)?,
            green: self.sinks[1].count(counter)?,
        })
    }

    /// Waits until the sink counts stop changing (in-flight packets have landed).
    pub fn settle(&self, counter: SinkCounter) -> anyhow::Result<SinkCounts> {
        let mut last = self.sink_counts(counter)?;
        for _ in 0..50 {
            std::thread::sleep(Duration::from_millis(20));
            let now = self.sink_counts(counter)?;
            if now.total() == last.total() {
                return Ok(now);
            }
            last = now;
        }
        Ok(last)
    }
}

/// Loads the harness object (generator, sink, bare forwarder; never the daemon's object).
pub fn load_helper_object() -> anyhow::Result<Ebpf> {
    Ebpf::load(HARNESS_OBJECT).context("loading the harness eBPF object (root with CAP_BPF?)")
}

/// Loads the named XDP program of `ebpf` and attaches it in native mode to `ifname` inside
/// `ns` (the interface name is resolved there).
pub fn attach_native(ebpf: &mut Ebpf, name: &str, ns: &Netns, ifname: &str) -> anyhow::Result<()> {
    let program: &mut Xdp = ebpf
        .program_mut(name)
        .with_context(|| format!("no program {name} in the object (stale build?)"))?
        .try_into()?;
    program.load().with_context(|| format!("loading {name}"))?;
    let path = format!("/run/netns/{}", ns.name);
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                enter(&path);
                program
                    .attach(ifname, XdpMode::Driver)
                    .with_context(|| format!("attaching {name} (native XDP) to {ifname}"))
            })
            .join()
            .expect("attach thread")
    })?;
    Ok(())
}

impl Sink {
    fn attach(ns: &Netns, ifname: &str) -> anyhow::Result<Self> {
        let mut ebpf = load_helper_object()?;
        attach_native(&mut ebpf, SINK_PROGRAM, ns, ifname)?;
        Ok(Self { ebpf })
    }

    fn count(&self, counter: SinkCounter) -> anyhow::Result<u64> {
        let map: PerCpuArray<_, u64> =
            PerCpuArray::try_from(self.ebpf.map(SINK_COUNTERS).context("SINK_COUNTERS")?)?;
        Ok(map.get(&(counter as u32), 0)?.iter().sum())
    }
}

pub fn num_cpus() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// The kernel threads polling `ifname`'s NAPI instances (`napi/<ifname>-<napi id>`).
pub fn napi_threads(ifname: &str) -> Vec<i32> {
    let prefix = format!("napi/{ifname}-");
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(Result::ok)
        .filter_map(|entry| entry.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm"))
                .is_ok_and(|comm| comm.trim_end().starts_with(&prefix))
        })
        .collect()
}

/// Time a thread has spent on a CPU, in ns (`/proc/PID/schedstat`, first field).
pub fn on_cpu_ns(tid: i32) -> u64 {
    std::fs::read_to_string(format!("/proc/{tid}/schedstat"))
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// Restricts a thread to one CPU, or lets it run on all of them (`None`). `tid` 0 is the
/// calling thread.
pub fn pin(tid: i32, cpu: Option<usize>) -> anyhow::Result<()> {
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    match cpu {
        Some(cpu) => unsafe { libc::CPU_SET(cpu, &mut set) },
        None => (0..num_cpus()).for_each(|cpu| unsafe { libc::CPU_SET(cpu, &mut set) }),
    }
    let rc = unsafe { libc::sched_setaffinity(tid, size_of::<libc::cpu_set_t>(), &set) };
    anyhow::ensure!(
        rc == 0,
        "sched_setaffinity({tid}, {cpu:?}): {}",
        std::io::Error::last_os_error()
    );
    Ok(())
}

/// The coalescing timeout of the packet-rate test: a veth ring (256 frames) lasts ~100 µs at
/// 2.5 Mpps.
const COALESCE_NS: u32 = 50_000;

/// SCHED_FIFO priority of the NAPI threads during the packet-rate test.
pub const NAPI_PRIORITY: i32 = 50;

/// SCHED_FIFO priority of the generator: below the NAPI threads, which preempt it.
pub const GENERATOR_PRIORITY: i32 = 10;

/// Makes a thread SCHED_FIFO at `priority`, or SCHED_OTHER again (`None`). `tid` 0 is the
/// calling thread.
pub fn realtime(tid: i32, priority: Option<i32>) -> anyhow::Result<()> {
    let (policy, priority) = match priority {
        Some(priority) => (libc::SCHED_FIFO, priority),
        None => (libc::SCHED_OTHER, 0),
    };
    let param = libc::sched_param {
        sched_priority: priority,
    };
    let rc = unsafe { libc::sched_setscheduler(tid, policy, &param) };
    anyhow::ensure!(
        rc == 0,
        "sched_setscheduler({tid}, {policy}): {}",
        std::io::Error::last_os_error()
    );
    Ok(())
}

/// The interface's index inside `ns`.
pub fn ifindex(ns: &Netns, ifname: &str) -> anyhow::Result<u32> {
    let out = ns.exec(&["cat", &format!("/sys/class/net/{ifname}/ifindex")]);
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .with_context(|| format!("ifindex of {ifname}"))
}
