//! A service's run of `POOLS` slots: each color's Maglev table (what the data plane reads),
//! then the pool members (what the daemon reads back after a restart):
//!
//! ```text
//! first_slot: [blue table: blue.len entries][green table: green.len entries]
//!             [n_blue][n_green][blue ids][blue weights][green ids][green weights]
//! ```
//!
//! `ServiceConfig.blue = { first_slot, len }`, `green = { first_slot + blue.len, len }`; a table
//! entry is a backend id; a table's `len` is `maglev::table_size` of the color's backends, 0
//! when none of them is in rotation with a weight above 0. The members are in config order,
//! with their ids and weights, [`OUT_OF_ROTATION`] set on the weight of a member that is not
//! `active` (a weight-0 or inactive member has no table entry but keeps its id and counters).

use std::net::SocketAddr;

use splitter_common::{Color, FlowKey, Pool, ServiceConfig, maglev, select};

use super::{
    DataplaneError,
    maps::Maps,
    services::{BackendSpec, ServiceSpec, socket_addr},
};

/// Slots a service with `blue` and `green` backends takes at most.
pub fn slots_needed(blue: usize, green: usize) -> u32 {
    let members = u32::try_from(blue + green).unwrap_or(u32::MAX / 4);
    maglev::table_size(blue) + maglev::table_size(green) + 2 + 2 * members
}

/// The bit of a member's stored weight that says it is out of rotation (weights are ≤ 256).
pub const OUT_OF_ROTATION: u32 = 1 << 31;

/// A color's table: backend ids, `maglev::table_size(backends.len())` of them, or none when no
/// backend is in rotation with a weight above 0. The size counts every configured backend, in
/// rotation or not, so taking one out moves only its own cohorts.
pub fn table(backends: &[BackendSpec]) -> Vec<u32> {
    let members: Vec<(SocketAddr, u32)> = backends
        .iter()
        .map(|backend| {
            (
                backend.address,
                if backend.active { backend.weight } else { 0 },
            )
        })
        .collect();
    maglev::build(&members, maglev::table_size(backends.len()))
        .into_iter()
        .map(|index| backends[index as usize].id)
        .collect()
}

/// A pool member as read back: id, address, weight, in rotation or not.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Member {
    pub id: u32,
    pub address: SocketAddr,
    pub weight: u32,
    pub active: bool,
}

fn len32(len: usize) -> u32 {
    u32::try_from(len).expect("validate() bounds pools by POOL_SLOTS")
}

impl Maps {
    /// Writes both colors' tables and members from `first_slot` on; returns the two pools for
    /// the service entry.
    pub fn write_pools(
        &mut self,
        first_slot: u32,
        blue: &[BackendSpec],
        green: &[BackendSpec],
    ) -> Result<[Pool; 2], DataplaneError> {
        let blue_table = table(blue);
        let green_table = table(green);
        let pools = [
            Pool {
                first_slot,
                len: len32(blue_table.len()),
            },
            Pool {
                first_slot: first_slot + len32(blue_table.len()),
                len: len32(green_table.len()),
            },
        ];
        self.set_pool(pools[0].first_slot, &blue_table)?;
        self.set_pool(pools[1].first_slot, &green_table)?;
        let mut members = vec![len32(blue.len()), len32(green.len())];
        for backends in [blue, green] {
            members.extend(backends.iter().map(|backend| backend.id));
            members.extend(backends.iter().map(|backend| {
                if backend.active {
                    backend.weight
                } else {
                    backend.weight | OUT_OF_ROTATION
                }
            }));
        }
        self.set_pool(pools[1].first_slot + pools[1].len, &members)?;
        Ok(pools)
    }

    /// Reads back the members of both colors (the slots after the green table), and the end of
    /// the service's run of slots.
    pub fn read_members(&self, green: Pool) -> Result<([Vec<Member>; 2], u32), DataplaneError> {
        let header = green.first_slot + green.len;
        let counts = [self.pool_slot(header)?, self.pool_slot(header + 1)?];
        let mut slot = header + 2;
        let mut colors = [Vec::new(), Vec::new()];
        for (members, count) in colors.iter_mut().zip(counts) {
            for i in 0..count {
                let id = self.pool_slot(slot + i)?;
                let stored = self.pool_slot(slot + count + i)?;
                let backend = self.backend(id)?;
                members.push(Member {
                    id,
                    address: socket_addr(&backend.addr, backend.port, backend.family),
                    weight: stored & !OUT_OF_ROTATION,
                    active: stored & OUT_OF_ROTATION == 0,
                });
            }
            slot += 2 * count;
        }
        Ok((colors, slot))
    }
}

impl ServiceSpec {
    /// Each color's table (backend ids), as [`Maps::install_service`] writes it.
    pub fn tables(&self) -> [Vec<u32>; 2] {
        [table(&self.blue), table(&self.green)]
    }

    /// The backend the data plane gives a new flow `key` at `green_weight` with `seed`: the
    /// contract's rule (`select::service_hash`, `select::choose_forced`) over the tables this
    /// spec installs; a preview address forces green. `None` when both colors are out of
    /// rotation. Source overrides are not applied here: see [`Self::predict_forced`].
    pub fn predict(&self, key: &FlowKey, seed: u32, green_weight: u32) -> Option<&BackendSpec> {
        let forced = self.preview.then_some(Color::Green);
        self.predict_forced(key, seed, green_weight, forced)
    }

    /// [`Self::predict`] with the color `forced` (what an override or a preview says).
    pub fn predict_forced(
        &self,
        key: &FlowKey,
        seed: u32,
        green_weight: u32,
        forced: Option<Color>,
    ) -> Option<&BackendSpec> {
        let config = ServiceConfig {
            cohort: self.cohort as u32,
            client_prefix_v4: self.client_prefix_v4,
            client_prefix_v6: self.client_prefix_v6,
            ..ServiceConfig::default()
        };
        let hash = select::service_hash(&config, key, seed);
        let [blue, green] = self.tables();
        let choice = select::choose_forced(
            hash,
            green_weight,
            forced,
            len32(blue.len()),
            len32(green.len()),
        )?;
        let (table, pool) = match choice.color {
            Color::Blue => (blue, &self.blue),
            Color::Green => (green, &self.green),
        };
        let id = table[choice.index as usize];
        pool.iter().find(|backend| backend.id == id)
    }
}
