//! The load-time settings (flow table size, hash seed, handshake timeout) of pinned programs,
//! read back from the kernel: they cannot change while the programs run, so an adopted data
//! plane must have been loaded with the configured ones.

use std::{collections::BTreeMap, io, os::fd::AsFd, sync::OnceLock};

use aya::maps::{MapData, MapInfo};
use object::{Object as _, ObjectSection as _, ObjectSymbol as _};
use splitter_common::maps as names;

use super::{PinLayout, RODATA_PIN};
use crate::{
    dataplane::{DataplaneError, EBPF_OBJECT, LoadOptions},
    sys,
};

/// The load-time settings of the programs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LoadedWith {
    pub flow_table_size: u32,
    pub pending_table_size: u32,
    pub udp_idle_timeout_ns: u64,
    pub hash_seed: u32,
    pub handshake_timeout_ns: u64,
}

impl From<&LoadOptions> for LoadedWith {
    fn from(options: &LoadOptions) -> Self {
        Self {
            flow_table_size: options.flow_table_size,
            pending_table_size: options.pending_table_size,
            udp_idle_timeout_ns: options.udp_idle_timeout_ns,
            hash_seed: options.hash_seed,
            handshake_timeout_ns: options.handshake_timeout_ns,
        }
    }
}

impl LoadedWith {
    /// What the programs pinned under `layout` were loaded with.
    pub(in crate::dataplane) fn read(layout: &PinLayout) -> Result<Self, DataplaneError> {
        Ok(Self {
            flow_table_size: pinned_capacity(layout, names::FLOWS)?,
            pending_table_size: pinned_capacity(layout, names::PENDING)?,
            udp_idle_timeout_ns: u64::from_ne_bytes(pinned_global(
                layout,
                names::UDP_IDLE_TIMEOUT_GLOBAL,
            )?),
            hash_seed: u32::from_ne_bytes(pinned_global(layout, names::HASH_SEED_GLOBAL)?),
            handshake_timeout_ns: u64::from_ne_bytes(pinned_global(
                layout,
                names::HANDSHAKE_TIMEOUT_GLOBAL,
            )?),
        })
    }

    /// Refuses settings that differ from `options` (the pinned programs cannot change them).
    pub(in crate::dataplane) fn check(
        &self,
        options: &LoadOptions,
        layout: &PinLayout,
    ) -> Result<(), DataplaneError> {
        for (setting, pinned, configured) in [
            (
                "flow_table_size",
                u64::from(self.flow_table_size),
                u64::from(options.flow_table_size),
            ),
            (
                "pending_table_size",
                u64::from(self.pending_table_size),
                u64::from(options.pending_table_size),
            ),
            (
                "udp_idle_timeout (ns)",
                self.udp_idle_timeout_ns,
                options.udp_idle_timeout_ns,
            ),
            (
                "hash_seed",
                u64::from(self.hash_seed),
                u64::from(options.hash_seed),
            ),
            (
                "handshake_timeout (ns)",
                self.handshake_timeout_ns,
                options.handshake_timeout_ns,
            ),
        ] {
            if pinned != configured {
                return Err(DataplaneError::PinnedSettingDiffers {
                    path: layout.root.clone(),
                    setting,
                    pinned,
                    configured,
                });
            }
        }
        Ok(())
    }
}

fn pinned_capacity(layout: &PinLayout, map: &'static str) -> Result<u32, DataplaneError> {
    let path = layout.map(map);
    let info = MapInfo::from_pin(&path)
        .map_err(|source| DataplaneError::OpenPinnedMap { path, source })?;
    Ok(info.max_entries())
}

/// Offset of a global in the object's `.rodata` (the value of the pinned RODATA map).
fn global_offset(symbol: &'static str) -> Result<usize, DataplaneError> {
    static OFFSETS: OnceLock<BTreeMap<String, usize>> = OnceLock::new();
    let offsets = OFFSETS.get_or_init(|| {
        let Ok(file) = object::File::parse(EBPF_OBJECT) else {
            return BTreeMap::new();
        };
        let Some(rodata) = file.section_by_name(".rodata") else {
            return BTreeMap::new();
        };
        file.symbols()
            .filter(|symbol| symbol.section_index() == Some(rodata.index()))
            .filter_map(|symbol| Some((symbol.name().ok()?.to_owned(), symbol.address() as usize)))
            .collect()
    });
    offsets
        .get(symbol)
        .copied()
        .ok_or(DataplaneError::MissingGlobal { symbol })
}

/// The bytes of a load-time global as the pinned programs have it.
fn pinned_global<const N: usize>(
    layout: &PinLayout,
    symbol: &'static str,
) -> Result<[u8; N], DataplaneError> {
    let path = layout.map(RODATA_PIN);
    let offset = global_offset(symbol)?;
    let map = MapData::from_pin(&path).map_err(|source| DataplaneError::OpenPinnedMap {
        path: path.clone(),
        source,
    })?;
    let info = map.info().map_err(|source| DataplaneError::OpenPinnedMap {
        path: path.clone(),
        source,
    })?;
    let mut value = vec![0u8; info.value_size() as usize];
    sys::map_lookup(map.fd().as_fd(), &0u32.to_ne_bytes(), &mut value).map_err(|source| {
        DataplaneError::PinnedGlobals {
            path: path.clone(),
            source,
        }
    })?;
    value
        .get(offset..offset + N)
        .and_then(|bytes| <[u8; N]>::try_from(bytes).ok())
        .ok_or_else(|| DataplaneError::PinnedGlobals {
            path,
            source: io::Error::from(io::ErrorKind::UnexpectedEof),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn load_time_globals_live_in_rodata() {
        global_offset(names::HASH_SEED_GLOBAL).expect("HASH_SEED is a .rodata global");
        global_offset(names::HANDSHAKE_TIMEOUT_GLOBAL).expect("HANDSHAKE_TIMEOUT_NS too");
    }
}
