//! `[fleet]`: the hosts of one fleet share their runtime state (weights, stable colors) through
//! etcd. Absent: the host is on its own (local state file only), exactly as without a fleet.

use std::{path::PathBuf, time::Duration};

use serde::{Deserialize, Serialize};

use crate::units::parse_duration;

/// Longest fleet or host name (each is one etcd key segment).
pub const FLEET_NAME_MAX: usize = 64;
/// `[fleet] wait` default: how long `set-weight`/`switch` wait for every live host.
pub const DEFAULT_FLEET_WAIT: Duration = Duration::from_secs(10);

/// `[fleet]` as written in the file.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FleetSection {
    /// etcd endpoints, e.g. `["http://127.0.0.1:2379"]` (`https://` with `ca`).
    pub etcd: Vec<String>,
    /// The fleet: every key lives under `/<name>/`.
    pub name: String,
    /// This host's name in the fleet; default: the hostname.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// PEM CA certificate that signed the etcd servers' certificates (`https://` endpoints).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca: Option<PathBuf>,
    /// PEM client certificate and key (etcd `--client-cert-auth`); both or neither.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<PathBuf>,
    /// etcd user and password (etcd auth); both or neither.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<String>,
    /// How long `set-weight`/`switch` wait for every live host to apply a change (`"10s"`).
    #[serde(default = "default_wait")]
    pub wait: String,
}

fn default_wait() -> String {
    format!("{}s", DEFAULT_FLEET_WAIT.as_secs())
}

/// `[fleet]` validated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fleet {
    pub etcd: Vec<String>,
    pub name: String,
    pub host: String,
    pub tls: Option<FleetTls>,
    pub credentials: Option<(String, String)>,
    pub wait: Duration,
}

/// TLS files (read when the daemon connects: a rotated certificate is picked up on reconnect).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FleetTls {
    pub ca: Option<PathBuf>,
    pub identity: Option<(PathBuf, PathBuf)>,
}

/// Why `[fleet]` was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FleetConfigError {
    #[error("fleet.etcd: at least one endpoint is needed, e.g. [\"http://127.0.0.1:2379\"]")]
    NoEndpoint,
    #[error(
        "fleet.etcd: `{value}` is not an http:// or https:// URL with a host and port, e.g. \"http://127.0.0.1:2379\""
    )]
    Endpoint { value: String },
    #[error(
        "fleet.{field}: `{value}` must be 1-{FLEET_NAME_MAX} letters, digits, `-`, `_` or `.` (it is an etcd key segment)"
    )]
    Name { field: &'static str, value: String },
    #[error(
        "fleet.host: not given and the hostname `{value}` is not a valid host name; set fleet.host"
    )]
    Hostname { value: String },
    #[error("fleet.{given}: given without fleet.{missing} (both or neither)")]
    Pair {
        given: &'static str,
        missing: &'static str,
    },
    #[error("fleet.{field}: `{value}` must be an absolute path")]
    RelativePath { field: &'static str, value: PathBuf },
    #[error("fleet: TLS files (ca, cert, key) need https:// endpoints; `{value}` is plain http")]
    TlsOverHttp { value: String },
    #[error("fleet.wait: `{value}` is not a duration between 1s and 10m like \"10s\"")]
    Wait { value: String },
}

/// Letters, digits, `-`, `_`, `.`; not `.`/`..`; 1 to [`FLEET_NAME_MAX`] characters.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= FLEET_NAME_MAX
        && name != "."
        && name != ".."
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

/// `http://HOST:PORT` or `https://HOST:PORT` (a trailing `/` allowed).
fn valid_endpoint(endpoint: &str) -> bool {
    let rest = endpoint
        .strip_prefix("http://")
        .or_else(|| endpoint.strip_prefix("https://"));
    rest.is_some_and(|rest| {
        let authority = rest.trim_end_matches('/');
        authority
            .rsplit_once(':')
            .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok())
            && !authority.contains('/')
    })
}

impl FleetSection {
    /// Every problem of the section; `hostname` is this host's name (for the `host` default).
    pub fn validate(&self, hostname: &str) -> Result<Fleet, Vec<FleetConfigError>> {
        let mut problems = Vec::new();
        if self.etcd.is_empty() {
            problems.push(FleetConfigError::NoEndpoint);
        }
        for endpoint in self
            .etcd
            .iter()
            .filter(|endpoint| !valid_endpoint(endpoint))
        {
            problems.push(FleetConfigError::Endpoint {
                value: endpoint.clone(),
            });
        }
        if !valid_name(&self.name) {
            problems.push(FleetConfigError::Name {
                field: "name",
                value: self.name.clone(),
            });
        }
        let host = match &self.host {
            Some(host) => {
                if !valid_name(host) {
                    problems.push(FleetConfigError::Name {
                        field: "host",
                        value: host.clone(),
                    });
                }
                host.clone()
            }
            None => {
                if !valid_name(hostname) {
                    problems.push(FleetConfigError::Hostname {
                        value: hostname.to_owned(),
                    });
                }
                hostname.to_owned()
            }
        };
        for (field, path) in [("ca", &self.ca), ("cert", &self.cert), ("key", &self.key)] {
            if let Some(path) = path
                && !path.is_absolute()
            {
                problems.push(FleetConfigError::RelativePath {
                    field,
                    value: path.clone(),
                });
            }
        }
        let pair = |a: (&'static str, bool), b: (&'static str, bool)| match (a.1, b.1) {
            (true, false) => Some(FleetConfigError::Pair {
                given: a.0,
                missing: b.0,
            }),
            (false, true) => Some(FleetConfigError::Pair {
                given: b.0,
                missing: a.0,
            }),
            _ => None,
        };
        problems.extend(pair(
            ("cert", self.cert.is_some()),
            ("key", self.key.is_some()),
        ));
        problems.extend(pair(
            ("user", self.user.is_some()),
            ("password", self.password.is_some()),
        ));
        let tls = self.ca.is_some() || self.cert.is_some();
        if tls && let Some(plain) = self.etcd.iter().find(|e| e.starts_with("http://")) {
            problems.push(FleetConfigError::TlsOverHttp {
                value: plain.clone(),
            });
        }
        let wait = parse_duration(&self.wait)
            .filter(|wait| (Duration::from_secs(1)..=Duration::from_secs(600)).contains(wait));
        if wait.is_none() {
            problems.push(FleetConfigError::Wait {
                value: self.wait.clone(),
            });
        }
        match wait {
            Some(wait) if problems.is_empty() => Ok(Fleet {
                etcd: self.etcd.clone(),
                name: self.name.clone(),
                host,
                tls: tls.then(|| FleetTls {
                    ca: self.ca.clone(),
                    identity: self.cert.clone().zip(self.key.clone()),
                }),
                credentials: self.user.clone().zip(self.password.clone()),
                wait,
            }),
            _ => Err(problems),
        }
    }
}

/// This host's name (`/proc/sys/kernel/hostname`), the default of `fleet.host`.
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|name| name.trim().to_owned())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn section(text: &str) -> FleetSection {
        toml::from_str(text).expect("parses")
    }

    #[test]
    fn defaults_and_hostname() {
        let fleet = section("etcd = [\"http://127.0.0.1:2379\"]\nname = \"edge\"")
            .validate("host-a")
            .expect("valid");
        assert_eq!(fleet.host, "host-a");
        assert_eq!(fleet.wait, DEFAULT_FLEET_WAIT);
        assert_eq!(fleet.tls, None);
        assert_eq!(fleet.credentials, None);
    }

    #[test]
    fn every_problem_is_named() {
        let problems = section(
            "etcd = [\"127.0.0.1:2379\", \"http://a:2379\"]\nname = \"a/b\"\nhost = \"\"\n\
             ca = \"ca.pem\"\ncert = \"/c.pem\"\nuser = \"root\"\nwait = \"0s\"",
        )
        .validate("host-a")
        .expect_err("invalid");
        let text: Vec<String> = problems.iter().map(ToString::to_string).collect();
        assert_eq!(
            text,
            [
                "fleet.etcd: `127.0.0.1:2379` is not an http:// or https:// URL with a host and port, e.g. \"http://127.0.0.1:2379\"",
                "fleet.name: `a/b` must be 1-64 letters, digits, `-`, `_` or `.` (it is an etcd key segment)",
                "fleet.host: `` must be 1-64 letters, digits, `-`, `_` or `.` (it is an etcd key segment)",
                "fleet.ca: `ca.pem` must be an absolute path",
                "fleet.cert: given without fleet.key (both or neither)",
                "fleet.user: given without fleet.password (both or neither)",
                "fleet: TLS files (ca, cert, key) need https:// endpoints; `http://a:2379` is plain http",
                "fleet.wait: `0s` is not a duration between 1s and 10m like \"10s\"",
            ]
        );
    }

    #[test]
    fn bad_hostname_asks_for_host() {
        let problems = section("etcd = [\"http://127.0.0.1:2379\"]\nname = \"edge\"")
            .validate("")
            .expect_err("invalid");
        assert_eq!(
            problems,
            [FleetConfigError::Hostname {
                value: String::new()
            }]
        );
    }
}
