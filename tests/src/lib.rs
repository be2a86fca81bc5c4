//! Shared helpers of the integration tests: network-namespace guards, topologies, real
//! servers and a packet builder; and the demo (`cargo xtask demo`), built on them. Every test
//! that needs root calls [`require_privileges`].

pub mod bench;
pub mod bench_health;
pub mod bench_replies;
pub mod compare;
pub mod daemon_harness;
pub mod demo;
pub mod etcd;
pub mod fleet_topology;
pub mod health;
pub mod netns;
pub mod packet;
pub mod prometheus;
pub mod resets;
pub mod servers;
pub mod spoof;
pub mod topology;

/// Set to `1` to skip privileged tests on machines without root/BPF (they print that they did).
pub const SKIP_ENV: &str = "SPLITTER_SKIP_PRIVILEGED";

/// Fails loudly unless we are root, or returns `false` (skip) when the documented opt-out
/// `SPLITTER_SKIP_PRIVILEGED=1` is set.
pub fn require_privileges(test: &str) -> bool {
    if unsafe { libc::geteuid() } == 0 {
        return true;
    }
    if std::env::var(SKIP_ENV).as_deref() == Ok("1") {
        eprintln!("SKIPPED {test}: not root and {SKIP_ENV}=1");
        return false;
    }
    panic!(
        "{test} needs root (CAP_BPF, CAP_NET_ADMIN, CAP_SYS_ADMIN) to load XDP/TC programs and \
         create network namespaces; run `sudo -E cargo xtask test`, or set {SKIP_ENV}=1 to skip"
    );
}
