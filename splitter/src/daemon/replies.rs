//! Which services each backend's replies may answer for, from the plan about to be written: a
//! backend serving one service gets the plain, stateless reply entry; a shared one (a preview
//! address, or two services on the same backends) lists every service, in config order, main
//! services before previews, so the first (the fallback) is the first service of the file that
//! uses it. A service that stops using a backend another service keeps (the backend moved out
//! of its pools: its pinned flows still go there) stays on the list as a *retired* candidate
//! while there is room, so its open connections keep their replies' address.
//!
//! Known limit: a retired candidate is not dropped when its last flow ends, only when its slot
//! is needed by a configured service or when no configured service uses the backend any more
//! (then the orphan sweep removes the whole entry once no flow holds any of its ids).

use std::collections::BTreeMap;

use splitter_common::{BackendKey, MAX_SHARING, ReverseValue};

use super::reconcile::{Desired, InstalledService, Plan, ServiceAddress};
use crate::dataplane::{
    replies::Replies,
    services::{Protocol, addr_of},
};

/// The reply entries of every backend of `desired` once `plan` is written; `current`: the
/// candidates each backend has now (`Maps::reply_candidates`), whose services no longer using
/// it are kept after the configured ones while there is room.
pub fn replies(
    desired: &[Desired<'_>],
    plan: &Plan,
    installed: &BTreeMap<ServiceAddress, InstalledService>,
    current: &[Replies],
) -> Vec<Replies> {
    let mut order: Vec<(std::net::SocketAddr, Protocol)> = Vec::new();
    let mut groups: BTreeMap<(std::net::SocketAddr, Protocol), Replies> = BTreeMap::new();
    for wanted in desired {
        let service = wanted.service;
        let backends: Vec<(u32, std::net::SocketAddr)> = match plan.writes.iter().find(|write| {
            write.spec.address == service.address && write.spec.protocol == service.protocol
        }) {
            Some(write) => write
                .spec
                .blue
                .iter()
                .chain(&write.spec.green)
                .map(|backend| (backend.id, backend.address))
                .collect(),
            None => match installed.get(&(service.address, service.protocol)) {
                Some(current) => current.blue.iter().chain(&current.green).copied().collect(),
                None => continue,
            },
        };
        let (service_addr, _) = addr_of(&service.address);
        for (id, address) in backends {
            let (addr, family) = addr_of(&address);
            let group = groups
                .entry((address, service.protocol))
                .or_insert_with(|| {
                    order.push((address, service.protocol));
                    Replies {
                        key: BackendKey {
                            addr,
                            port: address.port().to_be(),
                            protocol: service.protocol.number(),
                            family: family as u8,
                        },
                        candidates: Vec::new(),
                    }
                });
            group.candidates.push(ReverseValue {
                service_addr,
                service_port: service.address.port().to_be(),
                flags: 0,
                _pad: 0,
                backend_id: id,
            });
        }
    }
    let mut replies: Vec<Replies> = order
        .into_iter()
        .filter_map(|key| groups.remove(&key))
        .collect();
    for reply in &mut replies {
        let Some(now) = current.iter().find(|now| now.key == reply.key) else {
            continue;
        };
        for candidate in &now.candidates {
            let configured = reply.candidates.iter().any(|wanted| {
                wanted.service_addr == candidate.service_addr
                    && wanted.service_port == candidate.service_port
            });
            if !configured && reply.candidates.len() < MAX_SHARING {
                reply.candidates.push(ReverseValue {
                    flags: 0,
                    ..*candidate
                });
            }
        }
    }
    replies
}
