//! Who reset a test connection, and from which TCP state.
//!
//! A test client that sees "connection reset by peer" cannot tell a splitter fault (a packet
//! rewritten to the wrong backend, a reply not mapped back) from the backend's own kernel
//! resetting a flow it received intact. One such reset, about once in 400 000 connections under
//! CPU contention, was traced to the kernel: the client's handshake ACK and its first data
//! segment were processed on two CPUs at once, the data segment was looked up in the
//! established-socket hash while the new socket was being moved into it, fell through to the
//! listener and was answered with a RST (`state=TCP_LISTEN reason=TCP_FLAGS`, no ACK flag,
//! seq = ISN + 1): the delete-then-insert race of the established hash ("net: Avoid ehash
//! lookup races", 2025).
//!
//! [`ResetTrace`] records every RST any local TCP stack sends while a test runs (the
//! `tcp:tcp_send_reset` tracepoint, in a tracefs instance of the test's own), so that a failed
//! request can say who sent the reset: "RST sent by backend 198.18.1.10:8080 from state
//! TCP_LISTEN". The tracepoint carries no network namespace: resets are matched by address, and
//! the test's roles ([`Roles`]) name the hosts. Tests of other processes that use the same
//! addresses at the same time may add lines; each line names the time it was sent.
//!
//! [`one_cpu_per_flow`] closes the race's window in a backend namespace: RPS on the backend's
//! receive queue hashes every segment of a flow to the same CPU, so the handshake ACK and the
//! first data segment are processed one after the other.

use std::{
    fmt,
    net::{IpAddr, SocketAddr},
    path::{Path, PathBuf},
    process::Command,
};

use crate::netns::Netns;

const TRACEFS: &str = "/sys/kernel/tracing";

/// What a host is in a test's topology.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Client,
    SplitterHost,
    Backend,
    Router,
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Role::Client => "the client",
            Role::SplitterHost => "the splitter host",
            Role::Backend => "backend",
            Role::Router => "the router",
        })
    }
}

/// The addresses of a test's hosts and what each is.
pub type Roles = Vec<(IpAddr, Role)>;

/// One RST sent by a local TCP stack, as the tracepoint saw it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reset {
    /// Seconds since boot (the trace clock).
    pub at: String,
    /// The RST's source: the host that sent it.
    pub sender: SocketAddr,
    /// The RST's destination.
    pub receiver: SocketAddr,
    /// The sending socket's state (`TCP_LISTEN`, `TCP_ESTABLISHED`, ...; `UNKNOWN`: no socket).
    pub state: String,
    /// The kernel's reason (`TCP_FLAGS`, `NO_SOCKET`, ...).
    pub reason: String,
}

impl Reset {
    /// Parses one line of the trace (`... tcp_send_reset: skbaddr=.. skaddr=.. src=A dest=B
    /// state=S reason=R`).
    fn parse(line: &str) -> Option<Self> {
        let (head, fields) = line.split_once(" tcp_send_reset: ")?;
        let at = head.trim_end_matches(':').rsplit(' ').next()?.to_owned();
        let field = |name: &str| {
            fields
                .split(' ')
                .find_map(|pair| pair.strip_prefix(name)?.strip_prefix('='))
        };
        Some(Self {
            at,
            sender: field("src")?.parse().ok()?,
            receiver: field("dest")?.parse().ok()?,
            state: field("state")?.to_owned(),
            reason: field("reason")?.to_owned(),
        })
    }

    /// The reset's classification, one line: who sent it, from which state, and what that
    /// means. `client`: the client end of the reset connection, if known; `accepted`: whether
    /// the sender had accepted that connection (a socket was created for it), if known.
    ///
    /// A backend's listener answering a non-SYN segment (`TCP_LISTEN`, `TCP_FLAGS`; the
    /// tracepoint then names the listening socket, not the peer) means the backend had no
    /// connection for it: either the splitter sent the segment to a backend that never saw the
    /// flow's handshake (a splitter fault, or `rollout abort --cut` on purpose), or the backend
    /// did accept it and the kernel's established-hash race hid the new socket.
    pub fn explain(
        &self,
        roles: &[(IpAddr, Role)],
        client: Option<SocketAddr>,
        accepted: Option<bool>,
    ) -> String {
        let role = |ip: IpAddr| roles.iter().find(|(a, _)| *a == ip).map(|(_, r)| *r);
        let who = match role(self.sender.ip()) {
            Some(role) => format!("{role} {}", self.sender),
            None => format!("an unknown host {}", self.sender),
        };
        let listener = self.state == "TCP_LISTEN" && self.reason == "TCP_FLAGS";
        let meaning = match (role(self.sender.ip()), listener, accepted) {
            (Some(Role::Backend), true, Some(true)) => {
                "the backend had accepted this connection, yet its listener answered: the \
                 kernel's established-hash race (the handshake ACK and the first data segment \
                 processed on two CPUs at once), not a splitter fault"
            }
            (Some(Role::Backend), true, Some(false)) => {
                "the backend never accepted this connection: the splitter sent a segment of an \
                 established flow to a backend that did not see its handshake (a splitter \
                 fault, unless the test cut the flow on purpose)"
            }
            (Some(Role::Backend), true, None) => {
                "the backend's listener answered a segment of a connection it does not have: \
                 the kernel's established-hash race (if it had just accepted it) or a flow moved \
                 to the wrong backend (a splitter fault)"
            }
            (Some(Role::Backend), false, _) if self.reason == "NO_SOCKET" => {
                "nothing listens there: the backend is down"
            }
            (Some(Role::Backend), false, _) => "the backend's own TCP stack reset it",
            (Some(Role::SplitterHost | Role::Router), ..) => {
                "the splitter host's kernel answered a packet that was not rewritten (a \
                 splitter fault or a packet addressed to the host itself)"
            }
            (Some(Role::Client), ..) => "the client reset its own connection",
            (None, ..) => "a host this test does not know (another test on the same addresses?)",
        };
        let to = if self.receiver.ip().is_unspecified() {
            client.map_or_else(String::new, |client| format!(" to {client}"))
        } else {
            format!(" to {}", self.receiver)
        };
        format!(
            "RST sent by {who}{to} from state {} reason {} at {}s: {meaning}",
            self.state, self.reason, self.at
        )
    }
}

/// A connection a host accepted: the kernel created a socket for it (`sock:inet_sock_set_state`
/// into `TCP_SYN_RECV`, the passive open's child socket).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Accepted {
    pub at: String,
    /// The accepting host's address and port.
    pub local: SocketAddr,
    /// The peer's.
    pub remote: SocketAddr,
}

impl Accepted {
    /// Parses `... inet_sock_set_state: family=AF_INET protocol=IPPROTO_TCP sport=8080
    /// dport=40000 saddr=A daddr=B saddrv6=.. daddrv6=.. oldstate=.. newstate=TCP_SYN_RECV`.
    fn parse(line: &str) -> Option<Self> {
        let (head, fields) = line.split_once(" inet_sock_set_state: ")?;
        let at = head.trim_end_matches(':').rsplit(' ').next()?.to_owned();
        let field = |name: &str| {
            fields
                .split(' ')
                .find_map(|pair| pair.strip_prefix(name)?.strip_prefix('='))
        };
        if field("newstate")? != "TCP_SYN_RECV" {
            return None;
        }
        let (saddr, daddr) = match field("family")? {
            "AF_INET" => (field("saddr")?, field("daddr")?),
            _ => (field("saddrv6")?, field("daddrv6")?),
        };
        Some(Self {
            at,
            local: SocketAddr::new(saddr.parse().ok()?, field("sport")?.parse().ok()?),
            remote: SocketAddr::new(daddr.parse().ok()?, field("dport")?.parse().ok()?),
        })
    }
}

/// What the trace saw: resets and accepted connections.
#[derive(Clone, Debug, Default)]
pub struct Seen {
    pub resets: Vec<Reset>,
    pub accepted: Vec<Accepted>,
}

impl Seen {
    fn parse(text: &str) -> Self {
        let mut seen = Self::default();
        for line in text.lines() {
            if let Some(reset) = Reset::parse(line) {
                seen.resets.push(reset);
            } else if let Some(accepted) = Accepted::parse(line) {
                seen.accepted.push(accepted);
            }
        }
        seen
    }

    /// The classification of every reset involving `roles`' hosts, one per line; `client`: the
    /// client end of the connection that was reset, when the test knows it.
    pub fn explain(&self, roles: &[(IpAddr, Role)], client: Option<SocketAddr>) -> String {
        let ours = |ip: IpAddr| roles.iter().any(|(a, _)| *a == ip);
        let lines: Vec<String> = self
            .resets
            .iter()
            .filter(|reset| ours(reset.sender.ip()) || ours(reset.receiver.ip()))
            .map(|reset| {
                let accepted = client.map(|client| {
                    self.accepted
                        .iter()
                        .any(|a| a.local == reset.sender && a.remote == client)
                });
                reset.explain(roles, client, accepted)
            })
            .collect();
        if lines.is_empty() {
            return "no local TCP stack sent a RST (tcp:tcp_send_reset saw none): a reset seen \
                    by the client was not sent by the client, the splitter host or a backend"
                .to_owned();
        }
        lines.join("\n")
    }
}

/// A tracefs instance recording `tcp:tcp_send_reset` (and the connections hosts accept, from
/// `sock:inet_sock_set_state`) while a test runs; removed on drop.
pub struct ResetTrace {
    instance: PathBuf,
}

impl ResetTrace {
    /// Starts recording. `tag` names the instance (with the process id). Panics with what to do
    /// when tracefs is not available: a test without it could not explain its resets.
    pub fn start(tag: &str) -> Self {
        let root = Path::new(TRACEFS);
        if !root.join("events").exists() {
            let out = Command::new("mount")
                .args(["-t", "tracefs", "nodev", TRACEFS])
                .output()
                .expect("run mount");
            assert!(
                out.status.success() || root.join("events").exists(),
                "tracefs is not mounted at {TRACEFS} and mounting it failed ({}): the tests \
                 record TCP resets with the tcp:tcp_send_reset tracepoint",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        let instance = root
            .join("instances")
            .join(format!("splitter-{tag}-{}", std::process::id()));
        // A leftover of a crashed run with the same pid.
        let _ = std::fs::remove_dir(&instance);
        std::fs::create_dir(&instance)
            .unwrap_or_else(|e| panic!("create the trace instance {}: {e}", instance.display()));
        let trace = Self { instance };
        trace.write("buffer_size_kb", "1024");
        trace.write("events/tcp/tcp_send_reset/enable", "1");
        // TCP_SYN_RECV is 3 (include/net/tcp_states.h): one event per accepted connection.
        trace.write("events/sock/inet_sock_set_state/filter", "newstate == 3");
        trace.write("events/sock/inet_sock_set_state/enable", "1");
        trace
    }

    fn write(&self, file: &str, value: &str) {
        let path = self.instance.join(file);
        std::fs::write(&path, value)
            .unwrap_or_else(|e| panic!("write {value} to {}: {e}", path.display()));
    }

    /// Everything recorded so far.
    pub fn seen(&self) -> Seen {
        Seen::parse(&std::fs::read_to_string(self.instance.join("trace")).unwrap_or_default())
    }

    /// Every RST recorded so far that involves one of `roles`' addresses.
    pub fn resets(&self, roles: &[(IpAddr, Role)]) -> Vec<Reset> {
        let ours = |ip: IpAddr| roles.iter().any(|(a, _)| *a == ip);
        self.seen()
            .resets
            .into_iter()
            .filter(|reset| ours(reset.sender.ip()) || ours(reset.receiver.ip()))
            .collect()
    }

    /// The classification of every recorded reset, one per line, for a failure message;
    /// `client`: the client end of the connection that was reset, when known.
    pub fn explain(&self, roles: &[(IpAddr, Role)], client: Option<SocketAddr>) -> String {
        self.seen().explain(roles, client)
    }
}

impl Drop for ResetTrace {
    fn drop(&mut self) {
        for event in ["tcp/tcp_send_reset", "sock/inet_sock_set_state"] {
            let _ = std::fs::write(self.instance.join(format!("events/{event}/enable")), "0");
        }
        let _ = std::fs::remove_dir(&self.instance);
    }
}

/// Whether an I/O error is a reset (what [`ResetTrace::explain`] can classify).
pub fn is_reset(error: &str) -> bool {
    error.contains("reset by peer") || error.contains("os error 104")
}

/// Turns on RPS on `dev`'s receive queues in `ns` over every CPU: the segments of one flow are
/// hashed to one CPU, so a backend never processes the handshake ACK and the first data
/// segment at the same moment (see the module documentation).
pub fn one_cpu_per_flow(ns: &Netns, dev: &str) {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get().min(32));
    rps_cpus(ns, dev, &format!("{:x}", (1u64 << cpus) - 1));
}

/// Writes the RPS CPU mask (hex) of every receive queue of `dev` in `ns`; `0` turns RPS off.
pub fn rps_cpus(ns: &Netns, dev: &str, mask: &str) {
    // `ip netns exec` mounts a /sys of the namespace, where its devices are.
    ns.exec(&[
        "sh",
        "-c",
        &format!("for q in /sys/class/net/{dev}/queues/rx-*; do echo {mask} > $q/rps_cpus; done"),
    ]);
}

#[cfg(test)]
mod tests {
    use super::*;

    const RACE: &str = "          <idle>-0       [001] ..s2. 12345.678901: tcp_send_reset: \
                        skbaddr=000000001 skaddr=000000002 src=198.18.1.10:8080 \
                        dest=0.0.0.0:0 state=TCP_LISTEN reason=TCP_FLAGS";
    const ACCEPTED: &str = "          <idle>-0       [000] ..s2. 12345.678800: \
                            inet_sock_set_state: family=AF_INET protocol=IPPROTO_TCP sport=8080 \
                            dport=40000 saddr=198.18.1.10 daddr=198.18.0.1 \
                            saddrv6=::ffff:198.18.1.10 daddrv6=::ffff:198.18.0.1 \
                            oldstate=TCP_CLOSE newstate=TCP_SYN_RECV";

    fn roles() -> Roles {
        vec![
            ("198.18.1.10".parse().unwrap(), Role::Backend),
            ("198.18.0.1".parse().unwrap(), Role::Client),
        ]
    }

    #[test]
    fn a_listener_reset_for_an_accepted_connection_is_the_kernel_race() {
        let seen = Seen::parse(&format!("{ACCEPTED}\n{RACE}\n"));
        assert_eq!(seen.resets.len(), 1);
        assert_eq!(seen.accepted.len(), 1);
        assert_eq!(seen.resets[0].sender, "198.18.1.10:8080".parse().unwrap());
        assert_eq!(seen.resets[0].at, "12345.678901");
        let client = "198.18.0.1:40000".parse().unwrap();
        assert_eq!(
            seen.explain(&roles(), Some(client)),
            "RST sent by backend 198.18.1.10:8080 to 198.18.0.1:40000 from state TCP_LISTEN \
             reason TCP_FLAGS at 12345.678901s: the backend had accepted this connection, yet \
             its listener answered: the kernel's established-hash race (the handshake ACK and \
             the first data segment processed on two CPUs at once), not a splitter fault"
        );
        // Another client port: that backend never accepted it.
        let other = "198.18.0.1:40001".parse().unwrap();
        assert!(
            seen.explain(&roles(), Some(other))
                .contains("the backend never accepted this connection"),
            "{}",
            seen.explain(&roles(), Some(other))
        );
        assert!(
            seen.explain(&roles(), None)
                .contains("established-hash race (if it had")
        );
    }

    #[test]
    fn parses_ipv6_and_names_unknown_hosts() {
        let v6 = "x-1 [000] b..1. 1.5: tcp_send_reset: skbaddr=0 skaddr=0 src=[fd00:1::10]:8080 \
                  dest=[fd00::1]:5000 state=UNKNOWN reason=NO_SOCKET";
        let reset = Reset::parse(v6).expect("an IPv6 reset");
        assert_eq!(reset.sender, "[fd00:1::10]:8080".parse().unwrap());
        assert!(
            reset
                .explain(&[], None, None)
                .starts_with("RST sent by an unknown host")
        );
        let accepted = ACCEPTED
            .replace("AF_INET ", "AF_INET6 ")
            .replace("saddrv6=::ffff:198.18.1.10", "saddrv6=fd00:1::10");
        let accepted = Accepted::parse(&accepted).expect("an IPv6 accept");
        assert_eq!(accepted.local, "[fd00:1::10]:8080".parse().unwrap());
        let nothing = Seen::parse("").explain(&roles(), None);
        assert!(nothing.starts_with("no local TCP stack"), "{nothing}");
    }
}
