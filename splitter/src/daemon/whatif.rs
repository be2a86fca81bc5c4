//! `what-if SERVICE --weight P`: what a weight change would do, changing nothing. Computed with
//! the data plane's own rule (`splitter_common::select`) over what the kernel holds: the
//! service entry (cohort, client prefix, table sizes), the hash seed in force, and the pinned
//! flows (scanned without the application lock, as `status` does). A client under a source
//! override (`[service.overrides]`, the longest prefix wins, as in the kernel's trie) keeps its
//! color whatever the weight: `select::choose_forced` with the override's color.

use std::{
    collections::HashSet,
    net::{IpAddr, SocketAddr},
};

use splitter_common::{
    Color, FlowKey, ServiceConfig, WEIGHT_SCALE, hash::is_green, select, service_flags,
};

use super::{App, AppError};
use crate::{
    config::{CohortSetting, ColorName},
    control::protocol::WhatIfReport,
    dataplane::{
        maps::FlowScan,
        overrides::{Prefix, of_family},
        services::socket_addr,
    },
};

/// What the computation needs from the daemon, taken under its lock.
pub struct WhatIfInputs {
    pub service: String,
    pub cohort: CohortSetting,
    pub config: ServiceConfig,
    pub seed: u32,
    pub proposed: u32,
    pub backend_ids: HashSet<u32>,
    /// The overrides the kernel's trie holds for the service (its family's).
    pub overrides: Vec<(Prefix, ColorName)>,
    pub preview: Option<SocketAddr>,
}

impl App {
    /// The inputs of a what-if, and a handle to scan the flow tables with (off the lock).
    pub fn what_if_inputs(
        &self,
        name: &str,
        proposed: u32,
    ) -> Result<(WhatIfInputs, FlowScan), AppError> {
        if proposed > WEIGHT_SCALE {
            return Err(AppError::WeightRange { ppm: proposed });
        }
        let address = self.service_address(name)?;
        let service = self.config.service(name);
        let cohort = service.map_or(CohortSetting::Flow, |service| service.cohort);
        let overrides = service
            .map(|service| of_family(&service.overrides, &service.address))
            .unwrap_or_default();
        let preview = service.and_then(|service| service.preview);
        let installed = self
            .installed
            .get(&address)
            .ok_or_else(|| AppError::UnknownService {
                name: name.to_owned(),
                known: String::new(),
            })?;
        let inputs = WhatIfInputs {
            service: name.to_owned(),
            cohort,
            config: installed.config,
            seed: self.dataplane.loaded_with.hash_seed,
            proposed,
            backend_ids: installed
                .blue
                .iter()
                .chain(&installed.green)
                .map(|(id, _)| *id)
                .collect(),
            overrides,
            preview,
        };
        Ok((inputs, self.flow_scan()))
    }
}

/// The color a new flow with cohort hash `hash` gets at `weight`, `forced` by a preview or an
/// override (fallback to the other color included): the data plane's `choose_forced`.
fn color(config: &ServiceConfig, hash: u32, forced: Option<Color>, weight: u32) -> Option<Color> {
    select::choose_forced(hash, weight, forced, config.blue.len, config.green.len).map(|c| c.color)
}

/// The color the kernel forces for a flow of `key`'s client: green on a preview address, else
/// the longest override prefix holding the client address (the `OVERRIDES` trie's answer).
fn forced(inputs: &WhatIfInputs, key: &FlowKey) -> Option<Color> {
    if inputs.config.flags & service_flags::PREVIEW != 0 {
        return Some(Color::Green);
    }
    if inputs.overrides.is_empty() {
        return None;
    }
    let client: IpAddr = socket_addr(&key.src, 0, key.family).ip();
    inputs
        .overrides
        .iter()
        .filter(|(prefix, _)| {
            prefix.addr.is_ipv4() == client.is_ipv4()
                && Prefix {
                    addr: client,
                    len: prefix.len,
                }
                .masked()
                    == *prefix
        })
        .max_by_key(|(prefix, _)| prefix.len)
        .map(|(_, color)| color.color())
}

/// How many of the 2³² hashes are green at `weight`: the threshold `is_green` draws (green
/// exactly below it), found by bisection over the data plane's own test.
fn green_hashes(weight: u32) -> u64 {
    let (mut low, mut high) = (0u64, 1u64 << 32);
    while low < high {
        let mid = u64::midpoint(low, high);
        let hash = u32::try_from(mid).expect("below 2^32");
        if is_green(hash, weight) {
            low = mid + 1;
        } else {
            high = mid;
        }
    }
    low
}

/// The report for `inputs`, given the keys of the service's pinned flows.
pub fn report(inputs: &WhatIfInputs, pinned: &[FlowKey]) -> WhatIfReport {
    let config = &inputs.config;
    let (now, proposed) = (config.green_weight, inputs.proposed);
    let both = config.blue.len > 0 && config.green.len > 0;
    let moved_hashes = if both {
        green_hashes(now).abs_diff(green_hashes(proposed))
    } else {
        0 // one color (or none) in rotation: every cohort goes there at any weight
    };
    let moved_to = match proposed.cmp(&now) {
        _ if moved_hashes == 0 => None,
        std::cmp::Ordering::Greater => Some(ColorName::Green),
        _ => Some(ColorName::Blue),
    };
    // A cohort is its hash and what forces its color (clients under different overrides may
    // share a hash; a forced cohort never moves).
    let mut seen = HashSet::new();
    for key in pinned {
        seen.insert((
            select::service_hash(config, key, inputs.seed),
            forced(inputs, key),
        ));
    }
    let moving = seen
        .iter()
        .filter(|&&(hash, forced)| {
            color(config, hash, forced, now) != color(config, hash, forced, proposed)
        })
        .count();
    let overridden = seen.iter().filter(|(_, forced)| forced.is_some()).count();
    #[expect(
        clippy::cast_precision_loss,
        reason = "a share of 2^32 hashes, shown to a few digits"
    )]
    let moved_share = moved_hashes as f64 / (1u64 << 32) as f64;
    WhatIfReport {
        service: inputs.service.clone(),
        cohort: inputs.cohort,
        green_weight: now,
        proposed_green_weight: proposed,
        pinned_flows: pinned.len() as u64,
        pinned_affected: 0,
        moved_hashes,
        moved_share,
        moved_to,
        seen_cohorts: seen.len() as u64,
        seen_cohorts_moving: moving as u64,
        blue_in_rotation: config.blue.len > 0,
        green_in_rotation: config.green.len > 0,
        override_prefixes: inputs.overrides.len() as u64,
        seen_cohorts_overridden: overridden as u64,
        preview: inputs.preview,
    }
}

#[cfg(test)]
mod tests {
    use splitter_common::{Addr, Cohort, Family, Pool, hash::client_hash};

    use super::*;

    fn config(weight: u32, blue: u32, green: u32) -> ServiceConfig {
        ServiceConfig {
            green_weight: weight,
            cohort: Cohort::Client as u32,
            blue: Pool {
                first_slot: 0,
                len: blue,
            },
            green: Pool {
                first_slot: blue,
                len: green,
            },
            ..ServiceConfig::default()
        }
    }

    #[test]
    fn the_threshold_is_the_data_planes() {
        assert_eq!(green_hashes(0), 0);
        assert_eq!(green_hashes(WEIGHT_SCALE), 1 << 32);
        let half = green_hashes(WEIGHT_SCALE / 2);
        assert_eq!(half, 1 << 31);
        for weight in [1, 10_000, 123_457, 999_999] {
            let t = green_hashes(weight);
            assert!(is_green(u32::try_from(t - 1).unwrap(), weight));
            assert!(!is_green(u32::try_from(t).unwrap(), weight));
        }
    }

    fn key(i: u32) -> FlowKey {
        let [_, _, high, low] = i.to_be_bytes();
        FlowKey {
            src: Addr::from_v4([198, 18, high, low]),
            family: Family::Ipv4 as u8,
            ..FlowKey::default()
        }
    }

    #[test]
    fn moved_share_and_seen_cohorts() {
        let inputs = WhatIfInputs {
            service: "web".into(),
            cohort: CohortSetting::Client,
            config: config(100_000, 1021, 1021),
            seed: 7,
            proposed: 250_000,
            backend_ids: HashSet::new(),
            overrides: Vec::new(),
            preview: None,
        };
        let keys: Vec<FlowKey> = (0..2000).map(key).collect();
        let report = report(&inputs, &keys);
        assert!((report.moved_share - 0.15).abs() < 1e-6, "{report:?}");
        assert_eq!(report.moved_to, Some(ColorName::Green));
        assert_eq!(report.pinned_flows, 2000);
        assert_eq!(report.pinned_affected, 0);
        assert_eq!(report.seen_cohorts, 2000);
        let expected = keys
            .iter()
            .filter(|k| {
                let h = client_hash(&k.src, k.family, 7);
                !is_green(h, 100_000) && is_green(h, 250_000)
            })
            .count() as u64;
        assert_eq!(report.seen_cohorts_moving, expected);
        assert!(
            (200..400).contains(&expected),
            "about 15 % of 2000: {expected}"
        );

        let lower = report_for(config(100_000, 1021, 0), 500_000, &keys);
        assert_eq!(
            lower.moved_hashes, 0,
            "green empty: all on blue at any weight"
        );
        assert_eq!(lower.moved_to, None);
        assert_eq!(lower.seen_cohorts_moving, 0);
    }

    fn report_for(config: ServiceConfig, proposed: u32, keys: &[FlowKey]) -> WhatIfReport {
        report(
            &WhatIfInputs {
                service: "web".into(),
                cohort: CohortSetting::Client,
                config,
                seed: 7,
                proposed,
                backend_ids: HashSet::new(),
                overrides: Vec::new(),
                preview: None,
            },
            keys,
        )
    }

    /// A cohort under an override keeps its color at any weight; the longest prefix wins,
    /// as in the kernel's trie.
    #[test]
    fn overridden_cohorts_never_move() {
        let prefix = |text: &str| Prefix::parse(text).unwrap();
        let keys: Vec<FlowKey> = (0..2000).map(key).collect();
        let inputs = |proposed: u32| WhatIfInputs {
            service: "web".into(),
            cohort: CohortSetting::Client,
            config: config(500_000, 1021, 1021),
            seed: 7,
            proposed,
            backend_ids: HashSet::new(),
            // 198.18.0.0/24 (keys 0..256) kept on blue inside a /16 sent to green (keys
            // 256..2000, 198.18.1.0-198.18.7.255).
            overrides: vec![
                (prefix("198.18.0.0/16"), ColorName::Green),
                (prefix("198.18.0.0/24"), ColorName::Blue),
                (prefix("fd00::/8"), ColorName::Blue),
            ],
            preview: None,
        };
        assert_eq!(forced(&inputs(0), &key(3)), Some(Color::Blue));
        assert_eq!(forced(&inputs(0), &key(256)), Some(Color::Green));
        for proposed in [0, 100_000, WEIGHT_SCALE] {
            let report = report(&inputs(proposed), &keys);
            assert_eq!(report.seen_cohorts_overridden, report.seen_cohorts);
            assert_eq!(report.seen_cohorts_moving, 0, "{report:?}");
            assert_eq!(report.override_prefixes, 3);
        }
        // Without the overrides the same weight change moves about half of them.
        let mut plain = inputs(WEIGHT_SCALE);
        plain.overrides.clear();
        let moved = report(&plain, &keys).seen_cohorts_moving;
        assert!((800..1200).contains(&moved), "{moved}");
        // Only the /24 overridden: the rest follows the weight.
        let mut partly = inputs(WEIGHT_SCALE);
        partly.overrides.remove(0);
        let report = report(&partly, &keys);
        assert_eq!(report.seen_cohorts_overridden, 256);
        let expected = keys[256..]
            .iter()
            .filter(|k| !is_green(client_hash(&k.src, k.family, 7), 500_000))
            .count() as u64;
        assert_eq!(report.seen_cohorts_moving, expected);
    }
}
