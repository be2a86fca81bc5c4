//! Writing a whole service into the maps, and changing its weight: the only two ways the
//! daemon (and the tests) change how traffic is split.

use std::{net::SocketAddr, time::Duration};

use splitter_common::{
    Addr, Backend, BackendKey, Cohort, Color, Family, ReverseValue, ServiceConfig, ServiceKey,
    WEIGHT_SCALE, history, reverse_flags, service_flags,
};

use super::{DataplaneError, maps::Maps, overrides::Prefix};
use crate::{color::ColorName, sys::monotonic_ns};

/// IP protocol of a service.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Deserialize, serde::Serialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Tcp,
    Udp,
}

impl Protocol {
    pub const fn number(self) -> u8 {
        match self {
            Protocol::Tcp => 6,
            Protocol::Udp => 17,
        }
    }

    /// The config and label spelling.
    pub const fn name(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        }
    }

    pub const fn from_number(number: u8) -> Option<Self> {
        match number {
            6 => Some(Protocol::Tcp),
            17 => Some(Protocol::Udp),
            _ => None,
        }
    }
}

/// A backend with the id its counters live under.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BackendSpec {
    pub id: u32,
    pub address: SocketAddr,
    /// Maglev weight (turns per round when the table is filled); 0: no new flows.
    pub weight: u32,
    /// In the new-flow table (false: disabled, draining, down or ejected). Every backend keeps
    /// its `BACKENDS` entry, reply mapping and counters whatever this says: pinned flows go on.
    pub active: bool,
}

/// Everything the data plane needs to know about one service. Ids and slots are allocated by
/// the caller (the daemon keeps them stable across reloads and restarts).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceSpec {
    pub id: u32,
    pub address: SocketAddr,
    pub protocol: Protocol,
    pub cohort: Cohort,
    /// Share of new flows to green in parts per million (`WEIGHT_SCALE`).
    pub green_weight: u32,
    pub blue: Vec<BackendSpec>,
    pub green: Vec<BackendSpec>,
    /// With the `client` cohort: prefix lengths the client address is masked to (0 = whole).
    pub client_prefix_v4: u8,
    pub client_prefix_v6: u8,
    /// First of `pools::slots_needed` consecutive pool slots (tables, then members).
    pub first_slot: u32,
    /// The window of the weight history that steers TCP mid-flow misses.
    pub miss_hold: Duration,
    /// `[service.overrides]`: client prefixes whose new flows always go to a color.
    pub overrides: Vec<(Prefix, ColorName)>,
    /// The entry is a service's preview address: every new flow goes to green.
    pub preview: bool,
}

impl ServiceSpec {
    /// The overrides written to the trie (see [`super::overrides::of_family`]).
    pub fn overrides_installed(&self) -> Vec<(Prefix, ColorName)> {
        super::overrides::of_family(&self.overrides, &self.address)
    }

    /// The [`service_flags`] of its `SERVICES` entry.
    pub fn flags(&self) -> u8 {
        flags(!self.overrides.is_empty(), self.preview)
    }
}

/// The [`service_flags`] of a service with (or without) overrides, preview address or not.
pub fn flags(overrides: bool, preview: bool) -> u8 {
    let mut flags = 0;
    if overrides {
        flags |= service_flags::OVERRIDES;
    }
    if preview {
        flags |= service_flags::PREVIEW;
    }
    flags
}

pub fn addr_of(address: &SocketAddr) -> (Addr, Family) {
    match address {
        SocketAddr::V4(v4) => (Addr::from_v4(v4.ip().octets()), Family::Ipv4),
        SocketAddr::V6(v6) => (Addr::from_v6(v6.ip().octets()), Family::Ipv6),
    }
}

/// The socket address stored in a key or backend entry (port in network byte order).
pub fn socket_addr(addr: &Addr, port_be: u16, family: u8) -> SocketAddr {
    let port = u16::from_be(port_be);
    if family == Family::Ipv6 as u8 {
        SocketAddr::from((std::net::Ipv6Addr::from(addr.octets()), port))
    } else {
        SocketAddr::from((std::net::Ipv4Addr::from(addr.v4_octets()), port))
    }
}

/// The `SERVICES` key of a service address.
pub fn service_key(address: &SocketAddr, protocol: Protocol) -> ServiceKey {
    let (addr, family) = addr_of(address);
    ServiceKey {
        addr,
        port: address.port().to_be(),
        protocol: protocol.number(),
        family: family as u8,
    }
}

/// The key under which non-first fragments find their service (they carry no port).
pub fn fragment_key(address: &SocketAddr, protocol: Protocol) -> ServiceKey {
    ServiceKey {
        port: 0,
        ..service_key(address, protocol)
    }
}

impl Maps {
    /// Installs (or atomically replaces) a service: backends, then pool slots (each color's
    /// Maglev table) and overrides, then the service entry in one update, then stale overrides
    /// go. A weight already in the map is kept only by `set_weight` callers; this writes
    /// `spec.green_weight`. A backend whose reply entry is `SHARED` keeps it (the daemon writes
    /// those: `Maps::set_replies`).
    pub fn install_service(&mut self, spec: &ServiceSpec) -> Result<(), DataplaneError> {
        let service_addr = addr_of(&spec.address);
        let family = service_addr.1;
        for (color, backends) in [(Color::Blue, &spec.blue), (Color::Green, &spec.green)] {
            for backend in backends {
                let (addr, _) = addr_of(&backend.address);
                self.set_backend(
                    backend.id,
                    &Backend {
                        addr,
                        port: backend.address.port().to_be(),
                        family: family as u8,
                        color: color as u8,
                        service_id: spec.id,
                    },
                )?;
                let reverse_key = BackendKey {
                    addr,
                    port: backend.address.port().to_be(),
                    protocol: spec.protocol.number(),
                    family: family as u8,
                };
                let shared = self
                    .backend_reverse
                    .get(&reverse_key, 0)
                    .is_ok_and(|reverse| reverse.flags & reverse_flags::SHARED != 0);
                if !shared {
                    self.set_backend_reverse(
                        &reverse_key,
                        &ReverseValue {
                            service_addr: service_addr.0,
                            service_port: spec.address.port().to_be(),
                            flags: 0,
                            _pad: 0,
                            backend_id: backend.id,
                        },
                    )?;
                }
            }
        }
        let pools = self.write_pools(spec.first_slot, &spec.blue, &spec.green)?;
        let key = service_key(&spec.address, spec.protocol);
        let green_weight = spec.green_weight.min(WEIGHT_SCALE);
        // Re-installing (a reload) keeps the weight history: the weights of the last
        // `miss_hold` still steer misses. A new weight is one more change in it.
        let history = match self.service(&key)? {
            Some(installed) => history::push(&installed.history, green_weight, monotonic_ns()),
            None => history::fresh(green_weight, monotonic_ns()),
        };
        let config = ServiceConfig {
            id: spec.id,
            green_weight,
            cohort: spec.cohort as u32,
            client_prefix_v4: spec.client_prefix_v4,
            client_prefix_v6: spec.client_prefix_v6,
            flags: spec.flags(),
            _pad: 0,
            blue: pools[Color::Blue as usize],
            green: pools[Color::Green as usize],
            miss_hold_ns: spec.miss_hold.as_nanos() as u64,
            history,
        };
        let overrides = spec.overrides_installed();
        self.add_overrides(spec.id, &overrides)?;
        self.set_service(&key, &config)?;
        self.set_service(&fragment_key(&spec.address, spec.protocol), &config)?;
        self.remove_stale_overrides(spec.id, &overrides)
    }

    /// Changes a service's green weight (parts per million) in one map write; the change goes
    /// into the weight history that steers mid-flow misses (`splitter_common::history`).
    pub fn set_weight(
        &mut self,
        address: &SocketAddr,
        protocol: Protocol,
        green_weight: u32,
    ) -> Result<ServiceConfig, DataplaneError> {
        let key = service_key(address, protocol);
        let Some(mut config) = self.service(&key)? else {
            return Err(DataplaneError::UnknownService { address: *address });
        };
        let green_weight = green_weight.min(WEIGHT_SCALE);
        config.history = history::push(&config.history, green_weight, monotonic_ns());
        config.green_weight = green_weight;
        self.set_service(&key, &config)?;
        self.set_service(&fragment_key(address, protocol), &config)?;
        Ok(config)
    }

    /// Makes mid-flow misses follow the current weight at once (forgets the weight history):
    /// after a rollback with `--cut`, unpinned green flows must land on blue.
    pub fn forget_previous_weight(
        &mut self,
        address: &SocketAddr,
        protocol: Protocol,
    ) -> Result<(), DataplaneError> {
        let key = service_key(address, protocol);
        let Some(mut config) = self.service(&key)? else {
            return Err(DataplaneError::UnknownService { address: *address });
        };
        config.history = history::fresh(config.green_weight, monotonic_ns());
        self.set_service(&key, &config)?;
        self.set_service(&fragment_key(address, protocol), &config)
    }

    /// Removes a service's entries (its pinned flows age out of the LRU).
    pub fn remove_service_at(
        &mut self,
        address: &SocketAddr,
        protocol: Protocol,
    ) -> Result<(), DataplaneError> {
        let key = service_key(address, protocol);
        let installed = self.service(&key)?;
        self.remove_service(&key)?;
        self.remove_service(&fragment_key(address, protocol))?;
        match installed {
            Some(config) => self.remove_stale_overrides(config.id, &[]),
            None => Ok(()),
        }
    }
}
