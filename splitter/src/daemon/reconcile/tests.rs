//! The plan: ids, slots and what is left alone.

use splitter_common::{Cohort, Pool};

use super::*;
use crate::config::CohortSetting;

fn service(name: &str, port: u16, blue: &[&str], green: &[&str]) -> Service {
    Service {
        name: name.into(),
        address: format!("198.18.100.10:{port}").parse().unwrap(),
        protocol: Protocol::Tcp,
        green_weight: 100_000,
        cohort: CohortSetting::Flow,
        blue: blue.iter().map(|a| a.parse().unwrap()).collect(),
        green: green.iter().map(|a| a.parse().unwrap()).collect(),
        weights: BTreeMap::new(),
        client_prefix: crate::config::pool::ClientPrefix::default(),
        blue_release: None,
        green_release: None,
        rollout: crate::config::RolloutSection::default().plan().unwrap(),
        preview: None,
        overrides: Vec::new(),
        health: None,
        outlier: None,
    }
}

/// What the kernel would hold after `plan`'s writes (as `installed` reads it back).
#[expect(
    clippy::cast_possible_truncation,
    reason = "test pools have a few backends"
)]
fn apply(installed: &mut BTreeMap<ServiceAddress, InstalledService>, plan: &Plan) {
    for write in &plan.writes {
        let spec = &write.spec;
        let blue_len = spec.blue.iter().filter(|b| b.active).count() as u32;
        installed.insert(
            (spec.address, spec.protocol),
            InstalledService {
                address: spec.address,
                protocol: spec.protocol,
                config: ServiceConfig {
                    id: spec.id,
                    green_weight: spec.green_weight,
                    cohort: spec.cohort as u32,
                    blue: Pool {
                        first_slot: spec.first_slot,
                        len: blue_len,
                    },
                    green: Pool {
                        first_slot: spec.first_slot + blue_len,
                        len: spec.green.iter().filter(|b| b.active).count() as u32,
                    },
                    miss_hold_ns: crate::units::nanos(spec.miss_hold),
                    flags: spec.flags(),
                    ..ServiceConfig::default()
                },
                blue: spec.blue.iter().map(|b| (b.id, b.address)).collect(),
                green: spec.green.iter().map(|b| (b.id, b.address)).collect(),
                weights: spec
                    .blue
                    .iter()
                    .chain(&spec.green)
                    .map(|b| (b.address, b.weight))
                    .collect(),
                inactive: spec
                    .blue
                    .iter()
                    .chain(&spec.green)
                    .filter(|b| !b.active)
                    .map(|b| b.address)
                    .collect(),
                end_slot: spec.first_slot + slots_needed(spec.blue.len(), spec.green.len()),
                others: Vec::new(),
            },
        );
    }
    for removal in &plan.removals {
        installed.remove(removal);
    }
}

const HOLD: Duration = Duration::from_secs(60);

fn desired(services: &[Service], weight: u32) -> Vec<Desired<'_>> {
    services
        .iter()
        .map(|service| Desired {
            service,
            green_weight: weight,
            preview: false,
            inactive: BTreeSet::new(),
            weights: BTreeMap::new(),
        })
        .collect()
}

#[test]
fn first_install_then_nothing_to_do() {
    let services = [
        service(
            "web",
            80,
            &["10.1.0.10:80", "10.1.0.11:80"],
            &["10.2.0.10:80"],
        ),
        service("api", 81, &["10.1.0.20:80"], &["10.2.0.20:80"]),
    ];
    let mut installed = BTreeMap::new();
    let plan = plan(&desired(&services, 100_000), HOLD, &installed, &mut |_| {
        true
    })
    .unwrap();
    assert_eq!(plan.writes.len(), 2);
    let web = &plan.writes[0].spec;
    let api = &plan.writes[1].spec;
    assert_eq!((web.id, api.id), (0, 1));
    // web: two Maglev tables, then its 3 members; api right after.
    assert_eq!((web.first_slot, api.first_slot), (0, slots_needed(2, 1)));
    assert_eq!(plan.writes[0].fresh_backend_ids, [0, 1, 2]);
    assert_eq!(plan.writes[1].fresh_backend_ids, [3, 4]);
    assert_eq!(web.cohort, Cohort::Flow);
    apply(&mut installed, &plan);

    let again = super::plan(&desired(&services, 100_000), HOLD, &installed, &mut |_| {
        true
    })
    .unwrap();
    assert!(again.writes.is_empty(), "{again:?}");
    assert_eq!(again.unchanged, ["web", "api"]);
}

/// A slow start step: the ramping color's Maglev weights change, the service is rewritten
/// with them (same ids), and the same weights again change nothing.
#[test]
fn slow_start_weights_are_installed_and_compared() {
    let services = [service(
        "web",
        80,
        &["10.1.0.10:80"],
        &["10.2.0.10:80", "10.2.0.11:80"],
    )];
    let mut installed = BTreeMap::new();
    let first = plan(&desired(&services, 100_000), HOLD, &installed, &mut |_| {
        true
    })
    .unwrap();
    apply(&mut installed, &first);
    let ramping: SocketAddr = "10.2.0.11:80".parse().unwrap();
    let mut step = desired(&services, 100_000);
    step[0].weights = [("10.2.0.10:80".parse().unwrap(), 10), (ramping, 1)].into();
    let written = plan(&step, HOLD, &installed, &mut |_| true).unwrap();
    assert_eq!(written.writes.len(), 1, "{written:?}");
    let green = &written.writes[0].spec.green;
    assert_eq!(
        green.iter().map(|b| b.weight).collect::<Vec<_>>(),
        [10, 1],
        "the step's weights"
    );
    assert!(written.writes[0].fresh_backend_ids.is_empty());
    apply(&mut installed, &written);
    let again = plan(&step, HOLD, &installed, &mut |_| true).unwrap();
    assert_eq!(again.unchanged, ["web"], "{again:?}");
    let done = plan(&desired(&services, 100_000), HOLD, &installed, &mut |_| {
        true
    })
    .unwrap();
    assert_eq!(
        done.writes.len(),
        1,
        "the ramp's end writes the config's weights"
    );
}

#[test]
fn a_changed_pool_moves_to_fresh_slots_and_keeps_the_ids_of_kept_backends() {
    let before = [
        service(
            "web",
            80,
            &["10.1.0.10:80", "10.1.0.11:80"],
            &["10.2.0.10:80"],
        ),
        service("api", 81, &["10.1.0.20:80"], &["10.2.0.20:80"]),
    ];
    let mut installed = BTreeMap::new();
    let first = plan(&desired(&before, 0), HOLD, &installed, &mut |_| true).unwrap();
    apply(&mut installed, &first);

    // web loses 10.1.0.11 and gains 10.2.0.11; api is untouched.
    let after = [
        service(
            "web",
            80,
            &["10.1.0.10:80"],
            &["10.2.0.10:80", "10.2.0.11:80"],
        ),
        service("api", 81, &["10.1.0.20:80"], &["10.2.0.20:80"]),
    ];
    // Ids 0..=4 have been used; 5 is the first never used.
    let next = plan(&desired(&after, 0), HOLD, &installed, &mut |id| id >= 5).unwrap();
    assert_eq!(next.unchanged, ["api"]);
    assert_eq!(next.writes.len(), 1);
    let web = &next.writes[0];
    assert!(web.replaces && !web.fresh_service_id);
    assert_eq!(web.spec.id, 0);
    let ids: Vec<_> = web
        .spec
        .blue
        .iter()
        .chain(&web.spec.green)
        .map(|b| b.id)
        .collect();
    assert_eq!(
        ids,
        [0, 2, 5],
        "kept backends keep their ids (and counters)"
    );
    assert_eq!(web.fresh_backend_ids, [5]);
    assert_eq!(
        web.spec.first_slot,
        slots_needed(2, 1) + slots_needed(1, 1),
        "the slots of web and api are in use by the live entries"
    );
}

#[test]
fn weight_only_change_rewrites_in_place_and_removed_services_go() {
    let services = [
        service("web", 80, &["10.1.0.10:80"], &["10.2.0.10:80"]),
        service("api", 81, &["10.1.0.20:80"], &["10.2.0.20:80"]),
    ];
    let mut installed = BTreeMap::new();
    let first = plan(&desired(&services, 0), HOLD, &installed, &mut |_| true).unwrap();
    apply(&mut installed, &first);

    let only_web = &services[..1];
    let next = plan(&desired(only_web, 500_000), HOLD, &installed, &mut |_| true).unwrap();
    assert_eq!(next.writes.len(), 1);
    assert_eq!(next.writes[0].spec.first_slot, 0);
    assert!(next.writes[0].fresh_backend_ids.is_empty());
    assert_eq!(
        next.removals,
        [(services[1].address, Protocol::Tcp)],
        "api is no longer configured"
    );
}

#[test]
fn a_weight_or_prefix_change_rewrites_the_service() {
    let mut services = [service("web", 80, &["10.1.0.10:80"], &["10.2.0.10:80"])];
    let mut installed = BTreeMap::new();
    let first = plan(&desired(&services, 0), HOLD, &installed, &mut |_| true).unwrap();
    apply(&mut installed, &first);
    services[0].weights.insert(services[0].green[0], 3);
    let next = plan(&desired(&services, 0), HOLD, &installed, &mut |_| true).unwrap();
    assert_eq!(next.writes.len(), 1, "a new weight is a new table");
    assert_eq!(next.writes[0].spec.green[0].weight, 3);
    assert!(next.writes[0].fresh_backend_ids.is_empty());
    apply(&mut installed, &next);
    let again = plan(&desired(&services, 0), HOLD, &installed, &mut |_| true).unwrap();
    assert_eq!(again.unchanged, ["web"]);
}

#[test]
fn slots_first_fit_and_exhaustion() {
    let installed = BTreeMap::new();
    let mut allocator = Allocator::new(&installed);
    allocator.slots.push(2..4);
    assert_eq!(allocator.slots(2), Some(0));
    assert_eq!(allocator.slots(1), Some(4));
    assert_eq!(allocator.slots(POOL_SLOTS), None);
}

#[test]
fn a_backend_out_of_rotation_keeps_its_id_and_leaves_the_pool_only() {
    let services = [service(
        "web",
        80,
        &["10.1.0.10:80"],
        &["10.2.0.10:80", "10.2.0.11:80"],
    )];
    let mut installed = BTreeMap::new();
    let first = plan(&desired(&services, 0), HOLD, &installed, &mut |_| true).unwrap();
    apply(&mut installed, &first);

    let mut wanted = desired(&services, 0);
    wanted[0].inactive.insert("10.2.0.10:80".parse().unwrap());
    let out = plan(&wanted, HOLD, &installed, &mut |_| true).unwrap();
    let spec = &out.writes[0].spec;
    assert!(out.writes[0].fresh_backend_ids.is_empty(), "no new id");
    assert_eq!(
        spec.green
            .iter()
            .map(|b| (b.id, b.active))
            .collect::<Vec<_>>(),
        [(1, false), (2, true)]
    );
    assert_eq!(
        spec.first_slot,
        slots_needed(1, 2),
        "a changed pool takes fresh slots"
    );
    apply(&mut installed, &out);
    let again = plan(&wanted, HOLD, &installed, &mut |_| true).unwrap();
    assert!(again.writes.is_empty(), "nothing to do: {again:?}");

    let back = plan(&desired(&services, 0), HOLD, &installed, &mut |_| true).unwrap();
    let spec = &back.writes[0].spec;
    assert!(back.writes[0].fresh_backend_ids.is_empty());
    assert!(spec.green.iter().all(|b| b.active));
    assert_eq!(spec.green[0].id, 1, "back with its id and counters");
}
