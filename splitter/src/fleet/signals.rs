//! The rollout signals each host publishes (`/<fleet>/signals/<host>`, once a second, under
//! its leadership lease so a dead host's signals vanish with it), and their sum over the live
//! hosts: the fleet's rollout is judged on what every host saw, not on one host's share.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::rollout::{ColorSignals, Window};

/// One host's counters: per service, each color's signals summed over its backends
/// (absolute, as the kernel counts them).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct HostSignals {
    pub host: String,
    /// When they were read (Unix milliseconds).
    pub at_unix_ms: u64,
    pub services: BTreeMap<String, Window>,
}

/// The sum of `service`'s counters over `hosts`, and the hosts that contributed (sorted): the
/// leader starts a fresh window when that set changes (a host that joins brings its whole
/// history, one that leaves takes its counts away).
pub fn sum(hosts: &[HostSignals], service: &str) -> (Window, Vec<String>) {
    let mut total = Window::default();
    let mut contributors = Vec::new();
    for host in hosts {
        if let Some(window) = host.services.get(service) {
            add(&mut total.blue, &window.blue);
            add(&mut total.green, &window.green);
            contributors.push(host.host.clone());
        }
    }
    contributors.sort();
    (total, contributors)
}

fn add(total: &mut ColorSignals, more: &ColorSignals) {
    total.new_flows += more.new_flows;
    total.handshakes_completed += more.handshakes_completed;
    total.handshakes_failed += more.handshakes_failed;
    total.established_resets += more.established_resets;
    for (bucket, count) in total.latency_buckets.iter_mut().zip(more.latency_buckets) {
        *bucket += count;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(name: &str, green_failed: u64, green_bucket0: u64) -> HostSignals {
        let mut window = Window::default();
        window.green.new_flows = 10;
        window.green.handshakes_failed = green_failed;
        window.green.latency_buckets[0] = green_bucket0;
        window.blue.handshakes_completed = 7;
        HostSignals {
            host: name.to_owned(),
            at_unix_ms: 0,
            services: BTreeMap::from([("web".to_owned(), window)]),
        }
    }

    #[test]
    fn sums_every_host_that_serves_the_service() {
        let mut other = host("c", 100, 100);
        other.services = BTreeMap::from([("api".to_owned(), Window::default())]);
        let (total, hosts) = sum(&[host("b", 2, 3), host("a", 1, 4), other], "web");
        assert_eq!(hosts, ["a", "b"]);
        assert_eq!(total.green.new_flows, 20);
        assert_eq!(total.green.handshakes_failed, 3);
        assert_eq!(total.green.latency_buckets[0], 7);
        assert_eq!(total.blue.handshakes_completed, 14);
    }
}
