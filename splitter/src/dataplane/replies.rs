//! The reply path of backends shared by several services (a preview address, or two services on
//! the same backends): `BACKEND_REVERSE` says `SHARED` and holds the first service,
//! `SHARED_REVERSE` lists every candidate (see `splitter_common::backend`). A backend that
//! serves one service keeps the plain, stateless entry `Maps::install_service` writes.

use splitter_common::{
    BackendKey, MAX_SHARING, ReverseValue, SharedReverse, maps as names, reverse_flags,
};

use super::{DataplaneError, maps::Maps};

/// The services one backend (address, port, protocol) serves, in config order: each with the
/// backend id its counters live under there.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Replies {
    pub key: BackendKey,
    pub candidates: Vec<ReverseValue>,
}

impl Maps {
    /// Writes the reply path of every backend in `replies`: a shared one's candidates first,
    /// then its `BACKEND_REVERSE` entry (so the egress program never sees `SHARED` without
    /// them); a backend with one service gets the plain entry. Stale `SHARED_REVERSE` entries
    /// are left for [`Maps::remove_stale_shared`].
    pub fn set_replies(&mut self, replies: &[Replies]) -> Result<(), DataplaneError> {
        for reply in replies {
            let Some(first) = reply.candidates.first() else {
                continue;
            };
            if reply.candidates.len() == 1 {
                self.set_backend_reverse(&reply.key, &ReverseValue { flags: 0, ..*first })?;
                continue;
            }
            let mut shared = SharedReverse::default();
            let count = reply.candidates.len().min(MAX_SHARING);
            shared.candidates[..count].copy_from_slice(&reply.candidates[..count]);
            shared.count = count as u32;
            self.shared_reverse
                .insert(reply.key, shared, 0)
                .map_err(map_error)?;
            self.set_backend_reverse(
                &reply.key,
                &ReverseValue {
                    flags: reverse_flags::SHARED,
                    ..*first
                },
            )?;
        }
        Ok(())
    }

    /// Deletes the `SHARED_REVERSE` entries of backends not in `shared` (no longer shared:
    /// their `BACKEND_REVERSE` entry was rewritten plain, or is an orphan whose fallback is its
    /// first service).
    pub fn remove_stale_shared(&mut self, shared: &[BackendKey]) -> Result<(), DataplaneError> {
        let map = &mut self.shared_reverse;
        let mut stale = Vec::new();
        for key in map.keys() {
            let key = key.map_err(map_error)?;
            if !shared.contains(&key) {
                stale.push(key);
            }
        }
        for key in &stale {
            match map.remove(key) {
                Ok(()) | Err(aya::maps::MapError::KeyNotFound) => {}
                Err(source) => return Err(map_error(source)),
            }
        }
        Ok(())
    }

    /// Every `SHARED_REVERSE` entry.
    pub fn shared_reverse_entries(
        &self,
    ) -> Result<Vec<(BackendKey, SharedReverse)>, DataplaneError> {
        self.shared_reverse
            .iter()
            .map(|entry| entry.map_err(map_error))
            .collect()
    }
}

fn map_error(source: aya::maps::MapError) -> DataplaneError {
    DataplaneError::Map {
        name: names::SHARED_REVERSE,
        source,
    }
}
