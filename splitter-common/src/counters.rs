//! Counters, per CPU, summed by the daemon. `VERDICTS` is indexed by [`Reason`],
//! `BACKEND_COUNTERS` by backend id, `SERVICE_COUNTERS` by `ServiceConfig::id`.

/// Why the data plane did what it did with a packet: exactly one per packet seen.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Reason {
    /// Not IPv4/IPv6 (ARP, VLAN-tagged, ...): passed untouched.
    NotIp = 0,
    /// IP, but not addressed to a service (or not TCP/UDP/ICMP): passed untouched.
    NotService,
    /// First packet of a flow: backend chosen, flow pinned, rewritten.
    NewFlow,
    /// Packet of a pinned flow: rewritten to its backend.
    Established,
    /// TCP packet that is not a SYN and had no pinned flow: steered by the weight history
    /// (`crate::history`), held unverified in `PENDING`, rewritten.
    FlowMiss,
    /// Backend reply rewritten back to the service address (egress program).
    ToClient,
    /// IPv4 fragment to a service with the `flow` cohort: passed untouched (no ports to hash).
    Fragment,
    /// IPv4 fragment to a service with the `client` cohort: steered by the client's hash.
    FragmentSteered,
    /// ICMP error about a pinned service flow: forwarded to that flow's backend.
    IcmpToBackend,
    /// ICMP error about a service address without a pinned flow: passed untouched.
    IcmpUnmatched,
    /// Service matched but the chosen pool is empty: passed untouched.
    NoBackend,
    /// Shorter than an Ethernet header.
    TruncatedEthernet,
    /// Shorter than the IPv4 header (incl. options) it announces.
    TruncatedIpv4,
    /// IPv4 header with a bad version or IHL < 5.
    MalformedIpv4,
    /// Shorter than the IPv6 fixed header.
    TruncatedIpv6,
    /// IPv6 extension header chain cut short or longer than the parser follows.
    BadIpv6Extension,
    /// TCP/UDP header cut short.
    TruncatedL4,
    /// ICMP error too short to hold the headers of the packet it is about.
    TruncatedIcmp,
    /// TCP data offset < 5, or a TCP header (options included) running past the IP payload.
    MalformedTcp,
}

impl Reason {
    pub const COUNT: u32 = 19;

    pub const ALL: [Reason; Self::COUNT as usize] = [
        Reason::NotIp,
        Reason::NotService,
        Reason::NewFlow,
        Reason::Established,
        Reason::FlowMiss,
        Reason::ToClient,
        Reason::Fragment,
        Reason::FragmentSteered,
        Reason::IcmpToBackend,
        Reason::IcmpUnmatched,
        Reason::NoBackend,
        Reason::TruncatedEthernet,
        Reason::TruncatedIpv4,
        Reason::MalformedIpv4,
        Reason::TruncatedIpv6,
        Reason::BadIpv6Extension,
        Reason::TruncatedL4,
        Reason::TruncatedIcmp,
        Reason::MalformedTcp,
    ];

    /// The `reason` label of `splitter_verdicts_total`.
    pub const fn label(self) -> &'static str {
        match self {
            Reason::NotIp => "not_ip",
            Reason::NotService => "not_service",
            Reason::NewFlow => "new_flow",
            Reason::Established => "established",
            Reason::FlowMiss => "flow_miss",
            Reason::ToClient => "to_client",
            Reason::Fragment => "fragment",
            Reason::FragmentSteered => "fragment_steered",
            Reason::IcmpToBackend => "icmp_to_backend",
            Reason::IcmpUnmatched => "icmp_unmatched",
            Reason::NoBackend => "no_backend",
            Reason::TruncatedEthernet => "truncated_ethernet",
            Reason::TruncatedIpv4 => "truncated_ipv4",
            Reason::MalformedIpv4 => "malformed_ipv4",
            Reason::TruncatedIpv6 => "truncated_ipv6",
            Reason::BadIpv6Extension => "bad_ipv6_extension",
            Reason::TruncatedL4 => "truncated_l4",
            Reason::TruncatedIcmp => "truncated_icmp",
            Reason::MalformedTcp => "malformed_tcp",
        }
    }

    /// Whether the packet was malformed (passed untouched and counted).
    pub const fn is_malformed(self) -> bool {
        matches!(
            self,
            Reason::TruncatedEthernet
                | Reason::TruncatedIpv4
                | Reason::MalformedIpv4
                | Reason::TruncatedIpv6
                | Reason::BadIpv6Extension
                | Reason::TruncatedL4
                | Reason::TruncatedIcmp
                | Reason::MalformedTcp
        )
    }
}

/// How a rewritten packet left the ingress program (`FORWARDING`, per CPU).
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Forwarding {
    /// XDP_REDIRECT to the backend's interface (the fast path).
    Redirected = 0,
    /// XDP_PASS to the kernel's routing (fast path off for that interface, no neighbour entry
    /// yet, fragmentation needed, TTL expiring, ...).
    Kernel = 1,
}

impl Forwarding {
    pub const COUNT: u32 = 2;
    pub const ALL: [Forwarding; 2] = [Forwarding::Redirected, Forwarding::Kernel];

    /// The `path` label of `splitter_forwarded_packets_total`.
    pub const fn label(self) -> &'static str {
        match self {
            Forwarding::Redirected => "xdp_redirect",
            Forwarding::Kernel => "kernel",
        }
    }
}

/// Traffic of one backend in one direction.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct DirectionCounters {
    pub packets: u64,
    /// L3 bytes (IP header included, Ethernet header excluded).
    pub bytes: u64,
    pub tcp_syn: u64,
    pub tcp_fin: u64,
    pub tcp_rst: u64,
}

/// Per-backend counters.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct BackendCounters {
    /// Client → backend (ingress program).
    pub to_backend: DirectionCounters,
    /// Backend → client (egress program).
    pub to_client: DirectionCounters,
    /// Flows pinned to this backend (new flows and misses).
    pub new_flows: u64,
    /// TCP handshakes and resets: the rollout signals.
    pub signals: Signals,
}

/// What a canary analysis compares between blue and green, measured in the kernel from the
/// packets themselves (see `crate::signals`).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Signals {
    /// The client's ACK of the backend's SYN-ACK (ack = SYN-ACK seq + 1): a spoofed SYN, whose
    /// SYN-ACK goes to the forged address, never completes.
    pub handshakes_completed: u64,
    /// RST from the backend in answer to the client's SYN (connection refused).
    pub handshakes_refused: u64,
    /// The client retransmitted its SYN after `HANDSHAKE_TIMEOUT_NS` and no SYN-ACK was seen.
    pub handshakes_timed_out: u64,
    /// RST from the backend on a flow that was established (in `FLOWS`).
    pub established_resets: u64,
    /// SYN → SYN-ACK time of completed handshakes, as a histogram over
    /// `crate::signals::HANDSHAKE_BUCKETS_US`.
    pub handshake_latency_buckets: [u64; crate::signals::HANDSHAKE_BUCKETS],
    pub handshake_latency_sum_ns: u64,
}

/// Per-service counters.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct ServiceCounters {
    /// TCP non-SYN packets that found no flow in either table (mid-flow misses).
    pub flow_misses: u64,
    /// Mid-flow misses whose hash fell in the ambiguous band of the weight history (green under
    /// some weight of the window, blue under another): steered by the oldest weight.
    pub ambiguous_misses: u64,
}

impl core::ops::AddAssign for DirectionCounters {
    fn add_assign(&mut self, o: Self) {
        self.packets += o.packets;
        self.bytes += o.bytes;
        self.tcp_syn += o.tcp_syn;
        self.tcp_fin += o.tcp_fin;
        self.tcp_rst += o.tcp_rst;
    }
}

impl core::ops::AddAssign for Signals {
    fn add_assign(&mut self, o: Self) {
        self.handshakes_completed += o.handshakes_completed;
        self.handshakes_refused += o.handshakes_refused;
        self.handshakes_timed_out += o.handshakes_timed_out;
        self.established_resets += o.established_resets;
        for (bucket, other) in self
            .handshake_latency_buckets
            .iter_mut()
            .zip(o.handshake_latency_buckets)
        {
            *bucket += other;
        }
        self.handshake_latency_sum_ns += o.handshake_latency_sum_ns;
    }
}

impl core::ops::AddAssign for BackendCounters {
    fn add_assign(&mut self, o: Self) {
        self.to_backend += o.to_backend;
        self.to_client += o.to_client;
        self.new_flows += o.new_flows;
        self.signals += o.signals;
    }
}

impl core::ops::AddAssign for ServiceCounters {
    fn add_assign(&mut self, o: Self) {
        self.flow_misses += o.flow_misses;
        self.ambiguous_misses += o.ambiguous_misses;
    }
}
