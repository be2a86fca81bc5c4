//! Where the fleet keeps things in etcd: every key of a fleet is under `/<fleet>/`.
//!
//! ```text
//! /<fleet>/seed                          the split hash seed every host must run (decimal)
//! /<fleet>/services/<service>/desired    the desired state: JSON `Desired` (weight, stable color)
//! /<fleet>/services/<service>/definition the fleet's hash of the service's definition (moves
//!                                        when every live host runs a new one, or by
//!                                        `fleet adopt-definition`: `definition.rs`)
//! /<fleet>/services/<service>/backends/<IP:port>  a backend out of rotation: "disabled" or
//!                                        "draining" (no key: ready); one key per backend, so
//!                                        weight and backend writes never overwrite each other
//! /<fleet>/hosts/<host>                  each live host's record: JSON `HostRecord`, under a lease
//! /<fleet>/services/<service>/rollout    the fleet's rollout of the service: JSON `FleetRollout`
//!                                        (under the watched prefix: an abort with `cut` is
//!                                        applied by every host)
//! /<fleet>/leader                        the rollout leader's host name, under its lease
//! /<fleet>/signals/<host>                each live host's rollout signals: JSON `HostSignals`
//! ```

/// The keys of one fleet.
#[derive(Clone, Debug)]
pub struct Keys {
    root: String,
}

/// What a key under `/<fleet>/services/` is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ServiceKey<'a> {
    Desired(&'a str),
    Definition(&'a str),
    /// A backend's operator state: (service, backend as `IP:port`).
    Backend(&'a str, &'a str),
}

impl Keys {
    pub fn new(fleet: &str) -> Self {
        Self {
            root: format!("/{fleet}/"),
        }
    }

    pub fn seed(&self) -> String {
        format!("{}seed", self.root)
    }

    /// Prefix of every service key (the desired state the daemons watch).
    pub fn services(&self) -> String {
        format!("{}services/", self.root)
    }

    pub fn desired(&self, service: &str) -> String {
        format!("{}{service}/desired", self.services())
    }

    pub fn definition(&self, service: &str) -> String {
        format!("{}{service}/definition", self.services())
    }

    /// The operator state of `backend` of `service`.
    pub fn backend(&self, service: &str, backend: &std::net::SocketAddr) -> String {
        format!("{}{service}/backends/{backend}", self.services())
    }

    pub fn rollout(&self, service: &str) -> String {
        format!("{}{service}/rollout", self.services())
    }

    /// The rollout leadership (created under the leader's lease, gone when it lapses).
    pub fn leader(&self) -> String {
        format!("{}leader", self.root)
    }

    /// Prefix of the hosts' published rollout signals.
    pub fn signals(&self) -> String {
        format!("{}signals/", self.root)
    }

    pub fn host_signals(&self, host: &str) -> String {
        format!("{}{host}", self.signals())
    }

    /// Prefix of the host records.
    pub fn hosts(&self) -> String {
        format!("{}hosts/", self.root)
    }

    pub fn host(&self, host: &str) -> String {
        format!("{}{host}", self.hosts())
    }

    /// The service whose rollout `key` holds (`None`: not a rollout key).
    pub fn parse_rollout_key<'a>(&self, key: &'a str) -> Option<&'a str> {
        key.strip_prefix(self.services().as_str())?
            .strip_suffix("/rollout")
            .filter(|service| !service.contains('/'))
    }

    /// Which service key `key` is (`None`: not one of ours).
    pub fn parse_service_key<'a>(&self, key: &'a str) -> Option<ServiceKey<'a>> {
        let rest = key
            .strip_prefix(self.root.as_str())?
            .strip_prefix("services/")?;
        let (service, leaf) = rest.split_once('/')?;
        match leaf {
            "desired" => Some(ServiceKey::Desired(service)),
            "definition" => Some(ServiceKey::Definition(service)),
            _ => leaf
                .strip_prefix("backends/")
                .map(|backend| ServiceKey::Backend(service, backend)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout() {
        let keys = Keys::new("edge");
        assert_eq!(keys.desired("web"), "/edge/services/web/desired");
        assert_eq!(keys.host("a"), "/edge/hosts/a");
        assert_eq!(keys.rollout("web"), "/edge/services/web/rollout");
        assert_eq!(keys.leader(), "/edge/leader");
        assert_eq!(keys.host_signals("a"), "/edge/signals/a");
        // The rollout key is under the watched prefix but is not desired state.
        assert_eq!(keys.parse_service_key("/edge/services/web/rollout"), None);
        assert_eq!(
            keys.parse_rollout_key("/edge/services/web/rollout"),
            Some("web")
        );
        assert_eq!(keys.parse_rollout_key("/edge/services/web/desired"), None);
        assert_eq!(
            keys.parse_service_key("/edge/services/web/definition"),
            Some(ServiceKey::Definition("web"))
        );
        let backend = "[fd00:1::10]:8080".parse().unwrap();
        assert_eq!(
            keys.backend("web", &backend),
            "/edge/services/web/backends/[fd00:1::10]:8080"
        );
        assert_eq!(
            keys.parse_service_key(&keys.backend("web", &backend)),
            Some(ServiceKey::Backend("web", "[fd00:1::10]:8080"))
        );
        assert_eq!(keys.parse_service_key("/edge2/services/web/desired"), None);
        assert_eq!(keys.parse_service_key("/edge/services/web/other"), None);
    }
}
