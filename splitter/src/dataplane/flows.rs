//! The flow tables as the daemon and the tests see them: one family-neutral table over the
//! data plane's two per-family maps (`FLOWS` + `FLOWS6`, `PENDING` + `PENDING6`), read and
//! written as [`FlowKey`] → [`FlowValue`] with the same calls as an aya hash map.

use std::{
    borrow::Borrow,
    os::fd::{AsFd as _, OwnedFd},
};

use aya::{
    Pod,
    maps::{HashMap, IterableMap as _, Map, MapData, MapError},
};
use splitter_common::{
    Family, FlowEntry, FlowKey, FlowValue, PendingEntry, TableKey, maps as names,
};

use super::DataplaneError;

/// What one table stores per family: [`Verified`] (`FLOWS`) or [`Unverified`] (`PENDING`).
pub trait Stored {
    const NAMES: [&'static str; 2];
    type V4: Pod;
    type V6: Pod;
    fn v4(value: &FlowValue) -> Self::V4;
    fn v6(value: &FlowValue) -> Self::V6;
    fn from_v4(value: Self::V4) -> FlowValue;
    fn from_v6(value: Self::V6) -> FlowValue;
}

/// `FLOWS` and `FLOWS6`.
pub struct Verified;
/// `PENDING` and `PENDING6`.
pub struct Unverified;

impl Stored for Verified {
    const NAMES: [&'static str; 2] = [names::FLOWS, names::FLOWS6];
    type V4 = FlowEntry<u32>;
    type V6 = FlowEntry<[u32; 4]>;

    fn v4(value: &FlowValue) -> Self::V4 {
        value.entry()
    }

    fn v6(value: &FlowValue) -> Self::V6 {
        value.entry()
    }

    fn from_v4(value: Self::V4) -> FlowValue {
        value.into()
    }

    fn from_v6(value: Self::V6) -> FlowValue {
        value.into()
    }
}

impl Stored for Unverified {
    const NAMES: [&'static str; 2] = [names::PENDING, names::PENDING6];
    type V4 = PendingEntry<u32>;
    type V6 = PendingEntry<[u32; 4]>;

    fn v4(value: &FlowValue) -> Self::V4 {
        value.pending()
    }

    fn v6(value: &FlowValue) -> Self::V6 {
        value.pending()
    }

    fn from_v4(value: Self::V4) -> FlowValue {
        value.into()
    }

    fn from_v6(value: Self::V6) -> FlowValue {
        value.into()
    }
}

/// One flow table over both families.
pub struct FlowTable<S: Stored> {
    pub v4: HashMap<MapData, TableKey<u32>, S::V4>,
    pub v6: HashMap<MapData, TableKey<[u32; 4]>, S::V6>,
}

fn typed<K: Pod, V: Pod>(
    name: &'static str,
    map: Option<Map>,
) -> Result<HashMap<MapData, K, V>, DataplaneError> {
    let map = map.ok_or(DataplaneError::MissingMap { name })?;
    HashMap::try_from(map).map_err(|source| DataplaneError::Map { name, source })
}

/// A second handle on a flow map (for scans off the daemon's thread).
fn clone_fd(name: &'static str, map: &MapData) -> Result<OwnedFd, DataplaneError> {
    map.fd()
        .as_fd()
        .try_clone_to_owned()
        .map_err(|source| DataplaneError::MapHandle { name, source })
}

/// The maps of a table, opened again from cloned descriptors.
#[derive(Clone)]
pub struct TableFds(std::sync::Arc<[OwnedFd; 2]>);

impl<S: Stored> FlowTable<S> {
    /// Opens the table's two maps through `take(name)`.
    pub fn open(
        take: &mut impl FnMut(&'static str) -> Option<Map>,
    ) -> Result<Self, DataplaneError> {
        let [v4, v6] = S::NAMES;
        Ok(Self {
            v4: typed(v4, take(v4))?,
            v6: typed(v6, take(v6))?,
        })
    }

    /// Descriptors of both maps, for [`FlowTable::from_fds`].
    pub fn fds(&self) -> Result<TableFds, DataplaneError> {
        let [v4, v6] = S::NAMES;
        Ok(TableFds(std::sync::Arc::new([
            clone_fd(v4, self.v4.map())?,
            clone_fd(v6, self.v6.map())?,
        ])))
    }

    /// The table again from `fds`, and the capacity of its IPv4 and IPv6 maps.
    pub fn from_fds(fds: &TableFds) -> Result<(Self, [u64; 2]), DataplaneError> {
        let [v4, v6] = S::NAMES;
        let (map4, capacity4) = reopen(v4, &fds.0[0])?;
        let (map6, capacity6) = reopen(v6, &fds.0[1])?;
        let capacity = [capacity4, capacity6];
        let table = Self {
            v4: typed(v4, Some(map4))?,
            v6: typed(v6, Some(map6))?,
        };
        Ok((table, capacity))
    }

    /// The flow of `key`, as aya's `HashMap::get`.
    pub fn get(&self, key: &FlowKey, flags: u64) -> Result<FlowValue, MapError> {
        if key.family == Family::Ipv4 as u8 {
            self.v4.get(&TableKey::of(key), flags).map(S::from_v4)
        } else {
            self.v6.get(&TableKey::of(key), flags).map(S::from_v6)
        }
    }

    /// Inserts or replaces, as aya's `HashMap::insert`.
    pub fn insert(
        &mut self,
        key: impl Borrow<FlowKey>,
        value: impl Borrow<FlowValue>,
        flags: u64,
    ) -> Result<(), MapError> {
        let (key, value) = (key.borrow(), value.borrow());
        if key.family == Family::Ipv4 as u8 {
            self.v4.insert(TableKey::of(key), S::v4(value), flags)
        } else {
            self.v6.insert(TableKey::of(key), S::v6(value), flags)
        }
    }

    /// Removes, as aya's `HashMap::remove`.
    pub fn remove(&mut self, key: &FlowKey) -> Result<(), MapError> {
        if key.family == Family::Ipv4 as u8 {
            self.v4.remove(&TableKey::of(key))
        } else {
            self.v6.remove(&TableKey::of(key))
        }
    }

    /// Every entry, IPv4 then IPv6 (an entry evicted between "next key" and its lookup comes
    /// as an error, as with aya's iterators; the walk goes on).
    pub fn iter(&self) -> impl Iterator<Item = Result<(FlowKey, FlowValue), MapError>> + '_ {
        self.iter_family(Family::Ipv4)
            .chain(self.iter_family(Family::Ipv6))
    }

    /// Every entry of one family's map.
    pub fn iter_family(
        &self,
        family: Family,
    ) -> Box<dyn Iterator<Item = Result<(FlowKey, FlowValue), MapError>> + '_> {
        match family {
            Family::Ipv4 => Box::new(
                self.v4
                    .iter()
                    .map(|entry| entry.map(|(key, value)| (key.flow_key(), S::from_v4(value)))),
            ),
            Family::Ipv6 => Box::new(
                self.v6
                    .iter()
                    .map(|entry| entry.map(|(key, value)| (key.flow_key(), S::from_v6(value)))),
            ),
        }
    }

    /// Every key, IPv4 then IPv6.
    pub fn keys(&self) -> impl Iterator<Item = Result<FlowKey, MapError>> + '_ {
        let v4 = self.v4.keys().map(|key| key.map(|key| key.flow_key()));
        let v6 = self.v6.keys().map(|key| key.map(|key| key.flow_key()));
        v4.chain(v6)
    }
}

/// A map opened again from a cloned descriptor, and its capacity.
fn reopen(name: &'static str, fd: &OwnedFd) -> Result<(Map, u64), DataplaneError> {
    let fd = fd
        .try_clone()
        .map_err(|source| DataplaneError::MapHandle { name, source })?;
    let data = MapData::from_fd(fd).map_err(|source| DataplaneError::Map { name, source })?;
    let capacity = data
        .info()
        .map_err(|source| DataplaneError::Map { name, source })?
        .max_entries();
    let map = Map::from_map_data(data).map_err(|source| DataplaneError::Map { name, source })?;
    Ok((map, u64::from(capacity)))
}
