//! Typed handles on every data-plane map, opened from a freshly loaded object or from the pins
//! of a running data plane (adoption after a daemon restart).

use std::{collections::BTreeMap, path::Path};

use aya::maps::{Array, DevMapHash, HashMap, LpmTrie, Map, MapData, PerCpuArray};
use splitter_common::{
    Backend, BackendCounters, BackendKey, Forwarding, OverrideKey, OverrideValue, Reason,
    ReverseValue, ServiceConfig, ServiceCounters, ServiceKey, SharedReverse, maps as names,
};

pub use super::census::{FlowCensus, FlowScan, StateCounts};
use super::{
    DataplaneError,
    flows::{FlowTable, TableFds, Unverified, Verified},
};

/// All maps of the data plane (see `splitter_common::maps` for what each holds).
pub struct Maps {
    pub services: HashMap<MapData, ServiceKey, ServiceConfig>,
    pub service_ports: Array<MapData, u64>,
    pub backends: Array<MapData, Backend>,
    pub pools: Array<MapData, u32>,
    /// `FLOWS` and `FLOWS6`.
    pub flows: FlowTable<Verified>,
    /// `PENDING` and `PENDING6`.
    pub pending: FlowTable<Unverified>,
    /// Second handles on the flow tables, for [`FlowScan`]s.
    scan: (TableFds, TableFds),
    pub unverified_since: Array<MapData, u64>,
    pub backend_reverse: HashMap<MapData, BackendKey, ReverseValue>,
    pub backend_counters: PerCpuArray<MapData, BackendCounters>,
    pub service_counters: PerCpuArray<MapData, ServiceCounters>,
    pub verdicts: PerCpuArray<MapData, u64>,
    pub redirect_ports: DevMapHash<MapData>,
    pub forwarding: PerCpuArray<MapData, u64>,
    pub fast_path: Array<MapData, u32>,
    pub shared_reverse: HashMap<MapData, BackendKey, SharedReverse>,
    pub overrides: LpmTrie<MapData, OverrideKey, OverrideValue>,
    /// The programs' UDP idle timeout (set by the loader): a [`FlowScan`] needs it.
    pub(super) udp_idle_timeout_ns: u64,
}

/// The map names, in the order they are pinned and opened (the contract's list).
pub use names::ALL;

fn typed<T: TryFrom<Map, Error = aya::maps::MapError>>(
    name: &'static str,
    map: Option<Map>,
) -> Result<T, DataplaneError> {
    let map = map.ok_or(DataplaneError::MissingMap { name })?;
    T::try_from(map).map_err(|source| DataplaneError::Map { name, source })
}

impl Maps {
    /// Opens the maps through `take(name)` (from an `Ebpf` object or from pins).
    pub fn open(mut take: impl FnMut(&'static str) -> Option<Map>) -> Result<Self, DataplaneError> {
        let flows = FlowTable::open(&mut take)?;
        let pending = FlowTable::open(&mut take)?;
        Ok(Self {
            scan: (flows.fds()?, pending.fds()?),
            flows,
            pending,
            udp_idle_timeout_ns: names::DEFAULT_UDP_IDLE_TIMEOUT_NS,
            services: typed(names::SERVICES, take(names::SERVICES))?,
            service_ports: typed(names::SERVICE_PORTS, take(names::SERVICE_PORTS))?,
            backends: typed(names::BACKENDS, take(names::BACKENDS))?,
            pools: typed(names::POOLS, take(names::POOLS))?,
            unverified_since: typed(names::UNVERIFIED_SINCE, take(names::UNVERIFIED_SINCE))?,
            backend_reverse: typed(names::BACKEND_REVERSE, take(names::BACKEND_REVERSE))?,
            backend_counters: typed(names::BACKEND_COUNTERS, take(names::BACKEND_COUNTERS))?,
            service_counters: typed(names::SERVICE_COUNTERS, take(names::SERVICE_COUNTERS))?,
            verdicts: typed(names::VERDICTS, take(names::VERDICTS))?,
            redirect_ports: typed(names::REDIRECT_PORTS, take(names::REDIRECT_PORTS))?,
            forwarding: typed(names::FORWARDING, take(names::FORWARDING))?,
            fast_path: typed(names::FAST_PATH, take(names::FAST_PATH))?,
            shared_reverse: typed(names::SHARED_REVERSE, take(names::SHARED_REVERSE))?,
            overrides: typed(names::OVERRIDES, take(names::OVERRIDES))?,
        })
    }

    /// Opens the maps pinned under `dir`.
    pub fn from_pins(dir: &Path) -> Result<Self, DataplaneError> {
        let mut opened = BTreeMap::new();
        for name in ALL {
            let path = dir.join(name);
            let map = MapData::from_pin(&path)
                .and_then(Map::from_map_data)
                .map_err(|source| DataplaneError::OpenPinnedMap { path, source })?;
            opened.insert(name, map);
        }
        Self::open(|name| opened.remove(name))
    }

    /// A handle that counts the flows of both tables on any thread.
    pub fn flow_scan(&self) -> FlowScan {
        FlowScan {
            flows: self.scan.0.clone(),
            pending: self.scan.1.clone(),
            udp_idle_timeout_ns: self.udp_idle_timeout_ns,
        }
    }

    /// Packets seen per verdict reason, summed over CPUs.
    pub fn verdicts(&self) -> Result<Vec<(Reason, u64)>, DataplaneError> {
        Reason::ALL
            .iter()
            .map(|&reason| Ok((reason, self.verdict(reason)?)))
            .collect()
    }

    /// One verdict reason's count, summed over CPUs.
    pub fn verdict(&self, reason: Reason) -> Result<u64, DataplaneError> {
        let per_cpu =
            self.verdicts
                .get(&(reason as u32), 0)
                .map_err(|source| DataplaneError::Map {
                    name: names::VERDICTS,
                    source,
                })?;
        Ok(per_cpu.iter().sum())
    }

    /// Rewritten packets per forwarding path, summed over CPUs.
    pub fn forwarding(&self) -> Result<Vec<(Forwarding, u64)>, DataplaneError> {
        Forwarding::ALL
            .iter()
            .map(|&path| {
                let per_cpu = self
                    .forwarding
                    .get(&(path as u32), 0)
                    .map_err(map_error(names::FORWARDING))?;
                Ok((path, per_cpu.iter().sum()))
            })
            .collect()
    }

    /// Lets the fast path XDP_REDIRECT to this interface (by index).
    pub fn allow_redirect(&mut self, ifindex: u32) -> Result<(), DataplaneError> {
        self.redirect_ports
            .insert(ifindex, ifindex, None, 0)
            .map_err(|source| DataplaneError::Redirect {
                ifindex,
                source: Box::new(source),
            })?;
        self.fast_path
            .set(0, 1, 0)
            .map_err(map_error(names::FAST_PATH))
    }

    /// A backend's counters, summed over CPUs.
    pub fn backend_counters(&self, backend_id: u32) -> Result<BackendCounters, DataplaneError> {
        let per_cpu = self
            .backend_counters
            .get(&backend_id, 0)
            .map_err(|source| DataplaneError::Map {
                name: names::BACKEND_COUNTERS,
                source,
            })?;
        let mut sum = BackendCounters::default();
        for counters in per_cpu.iter() {
            sum += *counters;
        }
        Ok(sum)
    }

    /// A service's counters, summed over CPUs.
    pub fn service_counters(&self, service_id: u32) -> Result<ServiceCounters, DataplaneError> {
        let per_cpu = self
            .service_counters
            .get(&service_id, 0)
            .map_err(|source| DataplaneError::Map {
                name: names::SERVICE_COUNTERS,
                source,
            })?;
        let mut sum = ServiceCounters::default();
        for counters in per_cpu.iter() {
            sum += *counters;
        }
        Ok(sum)
    }
}

fn map_error(name: &'static str) -> impl Fn(aya::maps::MapError) -> DataplaneError {
    move |source| DataplaneError::Map { name, source }
}

/// Writes: the order of each method keeps the data plane consistent at every instant (backends
/// and pool slots first, the service entry that points at them last, in one map update).
impl Maps {
    pub fn set_backend(&mut self, id: u32, backend: &Backend) -> Result<(), DataplaneError> {
        self.backends
            .set(id, backend, 0)
            .map_err(map_error(names::BACKENDS))
    }

    /// Where a backend's replies are rewritten to.
    pub fn set_backend_reverse(
        &mut self,
        key: &BackendKey,
        value: &ReverseValue,
    ) -> Result<(), DataplaneError> {
        self.backend_reverse
            .insert(key, value, 0)
            .map_err(map_error(names::BACKEND_REVERSE))
    }

    /// Fills `ids.len()` pool slots starting at `first_slot`.
    pub fn set_pool(&mut self, first_slot: u32, ids: &[u32]) -> Result<(), DataplaneError> {
        for (offset, id) in ids.iter().enumerate() {
            self.pools
                .set(first_slot + offset as u32, id, 0)
                .map_err(map_error(names::POOLS))?;
        }
        Ok(())
    }

    /// Inserts or atomically replaces a service entry.
    pub fn set_service(
        &mut self,
        key: &ServiceKey,
        config: &ServiceConfig,
    ) -> Result<(), DataplaneError> {
        // The port first: a service entry the programs cannot reach would drop its traffic
        // on the floor of "not a service".
        self.set_service_port(u16::from_be(key.port), true)?;
        self.services
            .insert(key, config, 0)
            .map_err(map_error(names::SERVICES))
    }

    /// Sets or clears `port`'s bit in `SERVICE_PORTS` (port 0, the fragments' key, has none).
    fn set_service_port(&mut self, port: u16, on: bool) -> Result<(), DataplaneError> {
        if port == 0 {
            return Ok(());
        }
        let (index, bit) = names::service_port_bit(port);
        let word = self
            .service_ports
            .get(&index, 0)
            .map_err(map_error(names::SERVICE_PORTS))?;
        let wanted = if on { word | bit } else { word & !bit };
        if wanted != word {
            self.service_ports
                .set(index, wanted, 0)
                .map_err(map_error(names::SERVICE_PORTS))?;
        }
        Ok(())
    }

    pub fn service(&self, key: &ServiceKey) -> Result<Option<ServiceConfig>, DataplaneError> {
        match self.services.get(key, 0) {
            Ok(config) => Ok(Some(config)),
            Err(aya::maps::MapError::KeyNotFound) => Ok(None),
            Err(source) => Err(DataplaneError::Map {
                name: names::SERVICES,
                source,
            }),
        }
    }

    pub fn remove_service(&mut self, key: &ServiceKey) -> Result<(), DataplaneError> {
        match self.services.remove(key) {
            Ok(()) | Err(aya::maps::MapError::KeyNotFound) => {}
            Err(source) => {
                return Err(DataplaneError::Map {
                    name: names::SERVICES,
                    source,
                });
            }
        }
        // The port's bit goes with its last service.
        let port = key.port;
        let still_used = self
            .services
            .keys()
            .filter_map(Result::ok)
            .any(|other| other.port == port);
        if !still_used {
            self.set_service_port(u16::from_be(port), false)?;
        }
        Ok(())
    }
}

/// Reads of the split configuration (the daemon rebuilds its view of installed services, ids
/// and pool slots from these after a restart), and counter resets for recycled ids.
impl Maps {
    /// Every `SERVICES` entry (fragment keys, port 0, included).
    pub fn service_entries(&self) -> Result<Vec<(ServiceKey, ServiceConfig)>, DataplaneError> {
        self.services
            .iter()
            .map(|entry| entry.map_err(map_error(names::SERVICES)))
            .collect()
    }

    pub fn pool_slot(&self, slot: u32) -> Result<u32, DataplaneError> {
        self.pools.get(&slot, 0).map_err(map_error(names::POOLS))
    }

    pub fn backend(&self, id: u32) -> Result<Backend, DataplaneError> {
        self.backends
            .get(&id, 0)
            .map_err(map_error(names::BACKENDS))
    }

    /// Zeroes a backend id's counters before the id serves a new backend.
    pub fn reset_backend_counters(&mut self, id: u32) -> Result<(), DataplaneError> {
        let zeros = zeros_per_cpu(names::BACKEND_COUNTERS)?;
        self.backend_counters
            .set(id, zeros, 0)
            .map_err(map_error(names::BACKEND_COUNTERS))
    }

    /// Zeroes a service id's counters before the id serves a new service.
    pub fn reset_service_counters(&mut self, id: u32) -> Result<(), DataplaneError> {
        let zeros = zeros_per_cpu(names::SERVICE_COUNTERS)?;
        self.service_counters
            .set(id, zeros, 0)
            .map_err(map_error(names::SERVICE_COUNTERS))
    }
}

fn zeros_per_cpu<T: aya::Pod + Default + Clone>(
    name: &'static str,
) -> Result<aya::maps::PerCpuValues<T>, DataplaneError> {
    let cpus = aya::util::nr_cpus().map_err(|(_, source)| DataplaneError::Map {
        name,
        source: aya::maps::MapError::IoError(source),
    })?;
    aya::maps::PerCpuValues::try_from(vec![T::default(); cpus]).map_err(|source| {
        DataplaneError::Map {
            name,
            source: aya::maps::MapError::IoError(source),
        }
    })
}

/// The fast path's redirect set.
impl Maps {
    /// Interface indexes the fast path may redirect to.
    pub fn redirect_ifindexes(&self) -> Result<Vec<u32>, DataplaneError> {
        self.redirect_ports
            .keys()
            .map(|key| key.map_err(map_error(names::REDIRECT_PORTS)))
            .collect()
    }

    /// Stops redirecting to this interface (by index).
    pub fn disallow_redirect(&mut self, ifindex: u32) -> Result<(), DataplaneError> {
        match self.redirect_ports.remove(ifindex) {
            Ok(()) | Err(aya::maps::MapError::KeyNotFound) => Ok(()),
            Err(source) => Err(DataplaneError::Map {
                name: names::REDIRECT_PORTS,
                source,
            }),
        }
    }

    /// Turns the fast path (FIB lookup + redirect) on or off as a whole.
    pub fn set_fast_path(&mut self, on: bool) -> Result<(), DataplaneError> {
        self.fast_path
            .set(0, u32::from(on), 0)
            .map_err(map_error(names::FAST_PATH))
    }
}

/// The reply path's entries (the daemon removes those of removed backends once no pinned flow
/// uses them).
impl Maps {
    pub fn backend_reverse_entries(
        &self,
    ) -> Result<Vec<(BackendKey, ReverseValue)>, DataplaneError> {
        self.backend_reverse
            .iter()
            .map(|entry| entry.map_err(map_error(names::BACKEND_REVERSE)))
            .collect()
    }

    pub fn remove_backend_reverse(&mut self, key: &BackendKey) -> Result<(), DataplaneError> {
        match self.backend_reverse.remove(key) {
            Ok(()) | Err(aya::maps::MapError::KeyNotFound) => Ok(()),
            Err(source) => Err(DataplaneError::Map {
                name: names::BACKEND_REVERSE,
                source,
            }),
        }
    }
}

impl Maps {
    /// Unpins every flow pinned to one of `backend_ids` (both tables); returns how many were
    /// removed.
    pub fn unpin_backends(&mut self, backend_ids: &[u32]) -> Result<usize, DataplaneError> {
        Ok(unpin(&mut self.flows, backend_ids)? + unpin(&mut self.pending, backend_ids)?)
    }
}

/// [`Maps::unpin_backends`] for one table.
fn unpin<S: super::flows::Stored>(
    table: &mut FlowTable<S>,
    backend_ids: &[u32],
) -> Result<usize, DataplaneError> {
    let name = S::NAMES[0];
    let mut doomed = Vec::new();
    for entry in table.iter() {
        let (key, flow) = entry.map_err(map_error(name))?;
        if backend_ids.contains(&flow.backend_id) {
            doomed.push(key);
        }
    }
    for key in &doomed {
        match table.remove(key) {
            Ok(()) | Err(aya::maps::MapError::KeyNotFound) => {}
            Err(source) => return Err(map_error(name)(source)),
        }
    }
    Ok(doomed.len())
}
