//! The rollout signals each host publishes (`/<fleet>/signals/<host>`, once a second, under
//! its leadership lease so a dead host's signals vanish with it), and their sum over the live
//! hosts: the fleet's rollout is judged on what every host saw, not on one host's share. A
//! host whose definition of the service differs from the fleet's serves another pool: its
//! signals are left out of the sum (and the rollout's status says so).

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
    /// This host's hash of each service's definition (`host::definition_hash`): the leader
    /// sums only the hosts that agree with the fleet's. Absent from older daemons: summed.
    #[serde(default)]
    pub definitions: BTreeMap<String, String>,
}

/// A service's signals summed over the live hosts that match the fleet's definition.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Summed {
    pub window: Window,
    /// The hosts summed (sorted).
    pub hosts: Vec<String>,
    /// The hosts that publish signals of the service but are left out: `host: why` (sorted).
    pub left_out: Vec<String>,
}

impl Summed {
    /// `signals summed over 3 hosts (a,b,c)`, or with hosts left out `signals summed over 2 of
    /// 3 hosts (c: definition differs)`: in the leader's decisions and `rollout status`.
    pub fn describe(&self) -> String {
        if self.left_out.is_empty() {
            format!(
                "signals summed over {} hosts ({})",
                self.hosts.len(),
                self.hosts.join(",")
            )
        } else {
            format!(
                "signals summed over {} of {} hosts ({})",
                self.hosts.len(),
                self.hosts.len() + self.left_out.len(),
                self.left_out.join("; ")
            )
        }
    }
}

/// The sum of `service`'s counters over the `hosts` whose definition is `fleet_definition`
/// (the fleet's hash; `None`: every host), and which hosts contributed: the leader starts a
/// fresh window when that changes (a host that joins brings its whole history, one that leaves
/// takes its counts away).
pub fn sum(hosts: &[HostSignals], service: &str, fleet_definition: Option<&str>) -> Summed {
    let mut summed = Summed::default();
    for host in hosts {
        let Some(window) = host.services.get(service) else {
            continue;
        };
        let differs = match (host.definitions.get(service), fleet_definition) {
            (Some(local), Some(fleet)) => local != fleet,
            _ => false,
        };
        if differs {
            summed
                .left_out
                .push(format!("{}: definition differs", host.host));
            continue;
        }
        add(&mut summed.window.blue, &window.blue);
        add(&mut summed.window.green, &window.green);
        summed.hosts.push(host.host.clone());
    }
    summed.hosts.sort();
    summed.left_out.sort();
    summed
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
            definitions: BTreeMap::from([("web".to_owned(), "f1".to_owned())]),
        }
    }

    #[test]
    fn sums_every_host_that_serves_the_service() {
        let mut other = host("c", 100, 100);
        other.services = BTreeMap::from([("api".to_owned(), Window::default())]);
        let summed = sum(
            &[host("b", 2, 3), host("a", 1, 4), other],
            "web",
            Some("f1"),
        );
        assert_eq!(summed.hosts, ["a", "b"]);
        assert!(summed.left_out.is_empty());
        let total = summed.window;
        assert_eq!(total.green.new_flows, 20);
        assert_eq!(total.green.handshakes_failed, 3);
        assert_eq!(total.green.latency_buckets[0], 7);
        assert_eq!(total.blue.handshakes_completed, 14);
        assert_eq!(summed.hosts.len(), 2);
    }

    #[test]
    fn a_host_with_another_definition_is_left_out_of_the_sum() {
        let mut other = host("c", 100, 100);
        other.definitions.insert("web".to_owned(), "f2".to_owned());
        let summed = sum(
            &[host("a", 1, 4), other.clone(), host("b", 2, 3)],
            "web",
            Some("f1"),
        );
        assert_eq!(summed.hosts, ["a", "b"]);
        assert_eq!(
            summed.window.green.handshakes_failed, 3,
            "c's 100 not summed"
        );
        assert_eq!(
            summed.describe(),
            "signals summed over 2 of 3 hosts (c: definition differs)"
        );
        // No fleet definition known (or an older host without hashes): every host is summed.
        let all = sum(&[host("a", 1, 4), other], "web", None);
        assert_eq!(all.describe(), "signals summed over 2 hosts (a,c)");
    }
}
