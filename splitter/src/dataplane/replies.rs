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

    /// Deletes the `SHARED_REVERSE` entries whose `BACKEND_REVERSE` entry is gone or no
    /// longer says `SHARED` (rewritten plain by [`Maps::set_replies`]).
    pub fn remove_stale_shared(&mut self) -> Result<(), DataplaneError> {
        let mut stale = Vec::new();
        for key in self.shared_reverse.keys() {
            let key = key.map_err(map_error)?;
            let shared = self
                .backend_reverse
                .get(&key, 0)
                .is_ok_and(|reverse| reverse.flags & reverse_flags::SHARED != 0);
            if !shared {
                stale.push(key);
            }
        }
        for key in &stale {
            self.remove_shared(key)?;
        }
        Ok(())
    }

    /// Removes one backend's `SHARED_REVERSE` entry (after its `BACKEND_REVERSE` entry).
    pub fn remove_shared(&mut self, key: &BackendKey) -> Result<(), DataplaneError> {
        match self.shared_reverse.remove(key) {
            Ok(()) | Err(aya::maps::MapError::KeyNotFound) => Ok(()),
            Err(source) => Err(map_error(source)),
        }
    }

    /// What every backend's replies may answer for now: the plain entry, or a shared one's
    /// candidates.
    pub fn reply_candidates(&self) -> Result<Vec<Replies>, DataplaneError> {
        let mut replies = Vec::new();
        for (key, reverse) in self.backend_reverse_entries()? {
            let candidates = if reverse.flags & reverse_flags::SHARED == 0 {
                vec![reverse]
            } else {
                match self.shared_reverse.get(&key, 0) {
                    Ok(shared) => {
                        let count = (shared.count as usize).min(MAX_SHARING);
                        shared.candidates[..count].to_vec()
                    }
                    Err(aya::maps::MapError::KeyNotFound) => vec![reverse],
                    Err(source) => return Err(map_error(source)),
                }
            };
            replies.push(Replies { key, candidates });
        }
        Ok(replies)
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
