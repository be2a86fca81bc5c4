//! Slow start in the daemon (`[service.health] slow_start`; the rule is
//! `health::slow_start`): which backends ramp and since when, the Maglev weights their colors
//! are installed with, and the once-a-second step that rewrites a color's table when its
//! weights move on. A ramp starts when a backend enters `up` (checks pass `rise` again, an
//! ejection ends, `backend enable`), when a reload adds it to a color whose other backends
//! already serve, and after a restart where the kernel shows it was ramping or out of rotation
//! (a restart never jumps a backend to its full weight: only one that was at full weight
//! before stays there).

use std::{collections::BTreeMap, net::SocketAddr, time::Instant};

use super::App;
use crate::{
    config::{ColorName, Service, Validated},
    health::{
        Admin, BackendState, Transition,
        slow_start::{self, FULL_PERMILLE},
    },
};

impl App {
    /// The share of its configured weight (per mille) `address` of `service` takes now: below
    /// [`FULL_PERMILLE`] only while it ramps.
    pub(super) fn slow_start_permille(
        &self,
        service: &Service,
        address: &SocketAddr,
        now: Instant,
    ) -> u32 {
        let Some(slow_start) = service.health.as_ref().and_then(|check| check.slow_start) else {
            return FULL_PERMILLE;
        };
        self.health
            .ramps
            .get(&(service.name.clone(), *address))
            .map_or(FULL_PERMILLE, |since| {
                slow_start::permille(now.saturating_duration_since(*since), slow_start)
            })
    }

    /// The Maglev weights of `service`'s backends that differ from the config's (those of a
    /// color with a backend in slow start), for `reconcile::Desired::weights`.
    pub(super) fn slow_start_weights(
        &self,
        service: &Service,
        now: Instant,
    ) -> BTreeMap<SocketAddr, u32> {
        let mut weights = BTreeMap::new();
        if service
            .health
            .as_ref()
            .and_then(|check| check.slow_start)
            .is_none()
        {
            return weights;
        }
        for color in ColorName::BOTH {
            let pool = service.pool(color);
            let members: Vec<(u32, u32)> = pool
                .iter()
                .map(|address| {
                    (
                        service.weight(address),
                        self.slow_start_permille(service, address, now),
                    )
                })
                .collect();
            for (address, weight) in pool.iter().zip(slow_start::table_weights(&members)) {
                if weight != service.weight(address) {
                    weights.insert(*address, weight);
                }
            }
        }
        weights
    }

    /// Starts (entering `up`) or ends (leaving it) the ramps of `name`'s changed backends.
    pub(super) fn ramp_on_transitions(
        &mut self,
        name: &str,
        changed: &[(SocketAddr, Transition)],
        now: Instant,
    ) {
        let slow = self
            .config
            .service(name)
            .and_then(|service| service.health.as_ref())
            .and_then(|check| check.slow_start)
            .is_some();
        for (backend, transition) in changed {
            let key = (name.to_owned(), *backend);
            if slow && transition.to == BackendState::Up {
                self.health.ramps.insert(key, now);
            } else {
                self.health.ramps.remove(&key);
            }
        }
    }

    /// On reload: a backend new to a color in which another backend already serves ramps
    /// (a new service, or a color with none serving, takes its flows at once).
    pub(super) fn start_slow_starts_of_joiners(&mut self, config: &Validated, now: Instant) {
        for service in &config.services {
            if service
                .health
                .as_ref()
                .and_then(|check| check.slow_start)
                .is_none()
            {
                continue;
            }
            for color in ColorName::BOTH {
                let pool = service.pool(color);
                let serving = pool.iter().any(|address| {
                    self.health
                        .get(&service.name, address)
                        .is_some_and(|health| health.state().in_rotation())
                });
                if !serving {
                    continue;
                }
                for address in pool {
                    if self.health.get(&service.name, address).is_none()
                        && self.admin_of(&service.name, address) == Admin::Ready
                    {
                        self.health
                            .ramps
                            .insert((service.name.clone(), *address), now);
                    }
                }
            }
        }
    }

    /// At start, before the first write: a backend the kernel holds below its full weight
    /// (a ramp the last daemon left) goes on from that share; one the kernel holds out of
    /// rotation that now comes back (checks start `up`) ramps from the start.
    pub(super) fn resume_slow_starts(&mut self, now: Instant) {
        for service in &self.config.services {
            let Some(slow_start) = service.health.as_ref().and_then(|check| check.slow_start)
            else {
                continue;
            };
            let Some(installed) = self.installed.get(&(service.address, service.protocol)) else {
                continue;
            };
            for color in ColorName::BOTH {
                let members: Vec<(SocketAddr, u32, u32)> = service
                    .pool(color)
                    .iter()
                    .filter_map(|address| {
                        let stored = *installed.weights.get(address)?;
                        Some((*address, service.weight(address), stored))
                    })
                    .collect();
                let shares = slow_start::installed_permille(
                    &members
                        .iter()
                        .map(|(_, configured, stored)| (*configured, *stored))
                        .collect::<Vec<_>>(),
                );
                for ((address, ..), share) in members.iter().zip(shares) {
                    let back = installed.inactive.contains(address)
                        && self.admin_of(&service.name, address) == Admin::Ready;
                    let since = if back {
                        Some(std::time::Duration::ZERO)
                    } else {
                        share.map(|share| slow_start::since_for(share, slow_start))
                    };
                    if let Some(since) = since {
                        self.health.ramps.insert(
                            (service.name.clone(), *address),
                            now.checked_sub(since).unwrap_or(now),
                        );
                    }
                }
            }
        }
    }

    /// Once a second: each service with a backend in slow start whose weights moved on to the
    /// next step gets its tables rewritten; ramps that are over end.
    pub(super) fn advance_slow_starts(&mut self, now: Instant) {
        let names: Vec<String> = self
            .health
            .ramps
            .keys()
            .map(|(name, _)| name.clone())
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect();
        for name in names {
            let Some(service) = self.config.service(&name).cloned() else {
                continue;
            };
            let weights = self.slow_start_weights(&service, now);
            let moved = self
                .installed
                .get(&(service.address, service.protocol))
                .is_some_and(|installed| {
                    installed.weights.iter().any(|(address, stored)| {
                        weights
                            .get(address)
                            .copied()
                            .unwrap_or_else(|| service.weight(address))
                            != *stored
                    })
                });
            let slow_start = service.health.as_ref().and_then(|check| check.slow_start);
            let ramping: Vec<(SocketAddr, u32)> = self
                .health
                .ramps
                .keys()
                .filter(|(service, _)| *service == name)
                .map(|(_, address)| (*address, self.slow_start_permille(&service, address, now)))
                .collect();
            for (address, permille) in &ramping {
                if slow_start.is_none() || *permille >= FULL_PERMILLE {
                    self.health.ramps.remove(&(name.clone(), *address));
                }
            }
            if !moved {
                continue;
            }
            for (address, permille) in ramping {
                tracing::info!(
                    service = %name,
                    backend = %address,
                    percent = permille / 10,
                    "slow start step"
                );
            }
            if let Err(error) = self.rotate(&name, &[]) {
                tracing::error!(service = %name, %error, "slow start step not written");
            }
        }
    }
}
