//! Bringing the kernel's split configuration to what the config file says, touching only what
//! differs. The kernel maps are the source of truth for what is installed, which ids and pool
//! slots are in use: after a restart the daemon reads them back instead of trusting a file.
//!
//! A plan is computed completely (every id and slot allocated) before the first map write.
//! Each service then switches in one `SERVICES` update: new pool slots are always fresh ones,
//! never slots a live service entry points at, so packets see the old or the new pools.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::SocketAddr,
    ops::Range,
    time::Duration,
};

use splitter_common::{
    ServiceConfig,
    maps::{MAX_BACKENDS, MAX_SERVICES, POOL_SLOTS},
};

use crate::{
    config::{ColorName, Service},
    dataplane::{
        DataplaneError,
        maps::Maps,
        pools::slots_needed,
        services::{self, BackendSpec, Protocol, ServiceSpec, socket_addr},
    },
};

/// How an installed service is addressed.
pub type ServiceAddress = (SocketAddr, Protocol);

/// A service as the kernel maps hold it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InstalledService {
    pub address: SocketAddr,
    pub protocol: Protocol,
    pub config: ServiceConfig,
    /// (backend id, address), in config order: every member of the pool, in rotation or not.
    pub blue: Vec<(u32, SocketAddr)>,
    pub green: Vec<(u32, SocketAddr)>,
    /// Every member's Maglev weight.
    pub weights: BTreeMap<SocketAddr, u32>,
    /// Members out of the new-flow table (disabled, draining, down, ejected).
    pub inactive: BTreeSet<SocketAddr>,
    /// One past the service's last pool slot (`dataplane::pools`).
    pub end_slot: u32,
    /// Backends whose reply mapping names this service but that are members of neither pool:
    /// removed from the config with flows still pinned.
    pub others: Vec<(u32, SocketAddr)>,
}

impl InstalledService {
    pub fn pool(&self, color: ColorName) -> &[(u32, SocketAddr)] {
        match color {
            ColorName::Blue => &self.blue,
            ColorName::Green => &self.green,
        }
    }

    /// Whether `color`'s Maglev table has entries: some member in rotation with a weight.
    pub fn takes_new_flows(&self, color: ColorName) -> bool {
        match color {
            ColorName::Blue => self.config.blue.len > 0,
            ColorName::Green => self.config.green.len > 0,
        }
    }

    /// The pool slots the service uses (tables then members, contiguous).
    fn slots(&self) -> Range<u32> {
        self.config.blue.first_slot..self.end_slot
    }

    /// The id of a backend of the service, in rotation or not.
    pub fn id_of(&self, address: &SocketAddr) -> Option<u32> {
        self.blue
            .iter()
            .chain(&self.green)
            .chain(&self.others)
            .find(|(_, installed)| installed == address)
            .map(|(id, _)| *id)
    }

    /// `configured` (the config's backends of one color, in file order) with their ids: the
    /// color's backends whatever their state.
    pub fn members(&self, configured: &[SocketAddr]) -> Vec<(u32, SocketAddr)> {
        configured
            .iter()
            .filter_map(|address| self.id_of(address).map(|id| (id, *address)))
            .collect()
    }

    fn addresses(&self, color: ColorName) -> Vec<SocketAddr> {
        self.pool(color)
            .iter()
            .map(|(_, address)| *address)
            .collect()
    }
}

/// Reads every installed service (fragment keys skipped) with its pools and backends.
pub fn installed(
    maps: &Maps,
) -> Result<BTreeMap<ServiceAddress, InstalledService>, DataplaneError> {
    let mut services = BTreeMap::new();
    let reverse = maps.backend_reverse_entries()?;
    for (key, config) in maps.service_entries()? {
        let Some(protocol) = Protocol::from_number(key.protocol) else {
            continue;
        };
        if key.port == 0 {
            continue; // the fragment key of a service: same config
        }
        let address = socket_addr(&key.addr, key.port, key.family);
        let (members, end_slot) = maps.read_members(config.green)?;
        let weights = members
            .iter()
            .flatten()
            .map(|member| (member.address, member.weight))
            .collect();
        let inactive = members
            .iter()
            .flatten()
            .filter(|member| !member.active)
            .map(|member| member.address)
            .collect();
        let [blue, green] =
            members.map(|pool| pool.iter().map(|m| (m.id, m.address)).collect::<Vec<_>>());
        let others = reverse
            .iter()
            .filter(|(backend, value)| {
                backend.protocol == key.protocol
                    && backend.family == key.family
                    && value.service_addr == key.addr
                    && value.service_port == key.port
                    && !blue
                        .iter()
                        .chain(&green)
                        .any(|(id, _)| *id == value.backend_id)
            })
            .map(|(backend, value)| {
                (
                    value.backend_id,
                    socket_addr(&backend.addr, backend.port, backend.family),
                )
            })
            .collect();
        services.insert(
            (address, protocol),
            InstalledService {
                address,
                protocol,
                config,
                blue,
                green,
                weights,
                inactive,
                end_slot,
                others,
            },
        );
    }
    Ok(services)
}

/// What a service should look like.
#[derive(Clone, Debug)]
pub struct Desired<'a> {
    pub service: &'a Service,
    /// The weight to run with (runtime weight or the file's, see `State::initial_weight`).
    pub green_weight: u32,
    /// Backends out of the new-flow table (disabled, draining, down, ejected).
    pub inactive: BTreeSet<SocketAddr>,
    /// Maglev weights that differ from the config's: a color with a backend in slow start
    /// (`health::slow_start::table_weights`).
    pub weights: BTreeMap<SocketAddr, u32>,
    /// The service is another one's preview address (`Service::preview_service`).
    pub preview: bool,
}

impl Desired<'_> {
    /// The Maglev weight `address` is installed with.
    pub fn weight(&self, address: &SocketAddr) -> u32 {
        self.weights
            .get(address)
            .copied()
            .unwrap_or_else(|| self.service.weight(address))
    }
}

/// The preview addresses of `services` (see `Service::preview_service`).
pub fn previews(services: &[Service]) -> Vec<Service> {
    services
        .iter()
        .filter_map(Service::preview_service)
        .collect()
}

/// `desired` followed by the `previews` at their fixed weight: installed like services (their
/// own ids, counters and pool slots), after every main service.
pub fn with_previews<'a>(desired: &[Desired<'a>], previews: &'a [Service]) -> Vec<Desired<'a>> {
    desired
        .iter()
        .cloned()
        .chain(previews.iter().map(|service| {
            // A preview's green backends are its service's: out of rotation there, out here,
            // ramping there (slow start), ramping here.
            let main = desired
                .iter()
                .find(|main| main.service.preview == Some(service.address));
            Desired {
                service,
                green_weight: service.green_weight,
                preview: true,
                inactive: main.map(|main| main.inactive.clone()).unwrap_or_default(),
                weights: main.map(|main| main.weights.clone()).unwrap_or_default(),
            }
        }))
        .collect()
}

/// One service to write.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Write {
    pub name: String,
    pub spec: ServiceSpec,
    /// The service id is new to this service: its counters start from zero.
    pub fresh_service_id: bool,
    /// Backend ids new to their backend: their counters start from zero.
    pub fresh_backend_ids: Vec<u32>,
    /// Whether the service was installed before (changed) or not (added).
    pub replaces: bool,
}

/// Everything a reconcile does, decided before the first write.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Plan {
    pub writes: Vec<Write>,
    /// Installed services that are not in the config any more.
    pub removals: Vec<ServiceAddress>,
    /// Services already exactly as desired: not touched at all.
    pub unchanged: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    #[error("no free service id (at most {MAX_SERVICES} services)")]
    ServiceIds,
    #[error("no free backend id (at most {MAX_BACKENDS} backends)")]
    BackendIds,
    #[error(
        "no {needed} consecutive free pool slots for service `{service}` ({POOL_SLOTS} slots; changed services need fresh ones while the old ones are in use)"
    )]
    PoolSlots { service: String, needed: u32 },
}

/// Plans the writes that turn `installed` into `desired`. `is_unused_backend_id(id)` says
/// whether an id has never held a backend: those are taken first, so the id of a removed
/// backend (whose pinned flows may still be counted under it) is recycled only when no other
/// id is left.
pub fn plan(
    desired: &[Desired<'_>],
    miss_hold: Duration,
    installed: &BTreeMap<ServiceAddress, InstalledService>,
    is_unused_backend_id: &mut dyn FnMut(u32) -> bool,
) -> Result<Plan, PlanError> {
    let mut allocator = Allocator::new(installed);
    let mut plan = Plan::default();
    let miss_hold_ns = crate::units::nanos(miss_hold);
    for wanted in desired {
        let service = wanted.service;
        let current = installed.get(&(service.address, service.protocol));
        if let Some(current) = current {
            let same = current.config.green_weight == wanted.green_weight
                && current.config.cohort == service.cohort.cohort() as u32
                && current.config.miss_hold_ns == miss_hold_ns
                && current.config.flags
                    == services::flags(!service.overrides.is_empty(), wanted.preview)
                && same_pools(current, wanted);
            if same {
                plan.unchanged.push(service.name.clone());
                continue;
            }
        }
        let (id, fresh_service_id) = match current {
            Some(current) => (current.config.id, false),
            None => (allocator.service_id()?, true),
        };
        let mut fresh_backend_ids = Vec::new();
        let mut pools = [Vec::new(), Vec::new()];
        for (pool, color) in pools.iter_mut().zip(ColorName::BOTH) {
            for address in service.pool(color) {
                let kept = current.and_then(|current| current.id_of(address));
                let id = if let Some(id) = kept {
                    id
                } else {
                    let id = allocator.backend_id(is_unused_backend_id)?;
                    fresh_backend_ids.push(id);
                    id
                };
                pool.push(BackendSpec {
                    id,
                    address: *address,
                    weight: wanted.weight(address),
                    active: !wanted.inactive.contains(address),
                });
            }
        }
        let first_slot = match current {
            Some(current) if same_pools(current, wanted) => current.config.blue.first_slot,
            _ => {
                let needed = slots_needed(service.blue.len(), service.green.len());
                allocator
                    .slots(needed)
                    .ok_or_else(|| PlanError::PoolSlots {
                        service: service.name.clone(),
                        needed,
                    })?
            }
        };
        let [blue, green] = pools;
        plan.writes.push(Write {
            name: service.name.clone(),
            spec: ServiceSpec {
                id,
                address: service.address,
                protocol: service.protocol,
                cohort: service.cohort.cohort(),
                green_weight: wanted.green_weight,
                blue,
                green,
                client_prefix_v4: service.client_prefix.v4,
                client_prefix_v6: service.client_prefix.v6,
                first_slot,
                miss_hold,
                overrides: service.overrides.clone(),
                preview: wanted.preview,
            },
            fresh_service_id,
            fresh_backend_ids,
            replaces: current.is_some(),
        });
    }
    let wanted: BTreeSet<ServiceAddress> = desired
        .iter()
        .map(|wanted| (wanted.service.address, wanted.service.protocol))
        .collect();
    plan.removals = installed
        .keys()
        .filter(|address| !wanted.contains(address))
        .copied()
        .collect();
    Ok(plan)
}

/// Same members in the same order with the same weights, the same members out of rotation and
/// the same client prefix: the tables in the kernel are the ones the config builds
/// (`dataplane::pools`).
fn same_pools(current: &InstalledService, wanted: &Desired<'_>) -> bool {
    let service = wanted.service;
    let configured: BTreeSet<&SocketAddr> = service.blue.iter().chain(&service.green).collect();
    let inactive: BTreeSet<SocketAddr> = wanted
        .inactive
        .iter()
        .filter(|address| configured.contains(address))
        .copied()
        .collect();
    current.addresses(ColorName::Blue) == service.blue
        && current.addresses(ColorName::Green) == service.green
        && current
            .weights
            .iter()
            .all(|(address, weight)| wanted.weight(address) == *weight)
        && current.inactive == inactive
        && current.config.client_prefix_v4 == service.client_prefix.v4
        && current.config.client_prefix_v6 == service.client_prefix.v6
}

/// Hands out ids and slot runs not used by any installed service nor by earlier writes of
/// the same plan.
struct Allocator {
    service_ids: BTreeSet<u32>,
    backend_ids: BTreeSet<u32>,
    slots: Vec<Range<u32>>,
}

impl Allocator {
    fn new(installed: &BTreeMap<ServiceAddress, InstalledService>) -> Self {
        let mut this = Self {
            service_ids: BTreeSet::new(),
            backend_ids: BTreeSet::new(),
            slots: Vec::new(),
        };
        for service in installed.values() {
            this.service_ids.insert(service.config.id);
            for color in ColorName::BOTH {
                this.backend_ids
                    .extend(service.pool(color).iter().map(|(id, _)| *id));
            }
            this.backend_ids
                .extend(service.others.iter().map(|(id, _)| *id));
            this.slots.push(service.slots());
        }
        this
    }

    fn service_id(&mut self) -> Result<u32, PlanError> {
        // Each service takes two SERVICES entries, but ids index the counters: any below
        // MAX_SERVICES will do.
        let id = (0..MAX_SERVICES)
            .find(|id| !self.service_ids.contains(id))
            .ok_or(PlanError::ServiceIds)?;
        self.service_ids.insert(id);
        Ok(id)
    }

    fn backend_id(&mut self, is_unused: &mut dyn FnMut(u32) -> bool) -> Result<u32, PlanError> {
        let free = |id: &u32| !self.backend_ids.contains(id);
        let id = (0..MAX_BACKENDS)
            .filter(free)
            .find(|id| is_unused(*id))
            .or_else(|| (0..MAX_BACKENDS).find(free))
            .ok_or(PlanError::BackendIds)?;
        self.backend_ids.insert(id);
        Ok(id)
    }

    /// First fit.
    fn slots(&mut self, len: u32) -> Option<u32> {
        self.slots.sort_by_key(|run| run.start);
        let mut start = 0;
        for run in &self.slots {
            if run.start >= start + len {
                break;
            }
            start = start.max(run.end);
        }
        if start + len > POOL_SLOTS {
            return None;
        }
        self.slots.push(start..start + len);
        Some(start)
    }
}

#[cfg(test)]
mod tests;
