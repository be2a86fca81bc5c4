//! The edges of a pool (issue 13): `[service.overrides]` prefixes beat the weight for new
//! flows and mid-flow misses (longest prefix wins), a preview address sends every flow to
//! green, and a backend shared by a service and its preview answers with the address whose
//! flow is pinned to it (the first service when none is).

use splitter::{
    color::ColorName,
    dataplane::{overrides::Prefix, replies::Replies},
};
use splitter_common::reverse_flags;

use super::*;

/// The backend the kernel must pick when the color is `forced` (the contract's rule).
fn predict_forced<'a>(
    spec: &'a ServiceSpec,
    key: &FlowKey,
    weight: u32,
    forced: Option<Color>,
) -> &'a BackendSpec {
    spec.predict_forced(key, SEED, weight, forced)
        .expect("the chosen pool has backends")
}

fn prefix(text: &str) -> Prefix {
    Prefix::parse(text).unwrap_or_else(|e| panic!("{text}: {e}"))
}

/// Green: the client /24 (v6: /120) of host 0x01xx; blue: the /20 (v6: /116) around it, so
/// host 0x0101 is green by the longer prefix, 0x0201 blue, 0x2001 not overridden.
fn overrides(v6: bool) -> Vec<(Prefix, ColorName)> {
    if v6 {
        vec![
            (prefix("fd00:c::100/120"), ColorName::Green),
            (prefix("fd00:c::/116"), ColorName::Blue),
        ]
    } else {
        vec![
            (prefix("198.19.1.0/24"), ColorName::Green),
            (prefix("198.19.0.0/20"), ColorName::Blue),
        ]
    }
}

#[test]
fn overrides_beat_the_weight_longest_prefix_first() {
    if !require_privileges("overrides_beat_the_weight_longest_prefix_first") {
        return;
    }
    let mut harness = Harness::new();
    for (i, v6) in [false, true].into_iter().enumerate() {
        let what = label(v6, Protocol::Tcp);
        let spec = ServiceSpec {
            overrides: overrides(v6),
            ..service(1 + i as u32, v6, Protocol::Tcp, Cohort::Flow, 0, HOUR)
        };
        harness.install(&spec);
        // (client host, the override's color, what the case shows)
        let clients = [
            (0x0101, Some(Color::Green), "green /24 inside the blue /20"),
            (0x0201, Some(Color::Blue), "blue /20"),
            (0x2001, None, "no override"),
        ];
        for (weight, port) in [(0, 40_000), (ALL_GREEN, 41_000)] {
            harness.set_weight(&spec, weight);
            for (host, forced, why) in clients {
                let flow = Flow::new(&spec, client(v6, host, port));
                let backend = predict_forced(&spec, &flow.key(), weight, forced);
                let expected = forced.unwrap_or(if weight == 0 {
                    Color::Blue
                } else {
                    Color::Green
                });
                assert_eq!(color_of(&spec, backend), expected, "{what}: {why}");
                harness.run(&dnat(
                    format!("{what}: weight {weight}, client {host:#x} ({why}) → {expected:?}"),
                    &spec,
                    &flow,
                    &flow.packet(TCP_SYN),
                    backend,
                    Reason::NewFlow,
                ));
            }
        }
    }
}

#[test]
fn an_override_steers_mid_flow_misses_too() {
    if !require_privileges("an_override_steers_mid_flow_misses_too") {
        return;
    }
    let mut harness = Harness::new();
    for (i, v6) in [false, true].into_iter().enumerate() {
        let what = label(v6, Protocol::Tcp);
        // Weight 0 for the whole history: without the override every miss would go blue.
        let spec = ServiceSpec {
            overrides: overrides(v6),
            ..service(1 + i as u32, v6, Protocol::Tcp, Cohort::Flow, 0, HOUR)
        };
        harness.install(&spec);
        for (host, forced) in [(0x0101, Color::Green), (0x0201, Color::Blue)] {
            let flow = Flow::new(&spec, client(v6, host, 42_000));
            let backend = predict_forced(&spec, &flow.key(), 0, Some(forced));
            assert_eq!(color_of(&spec, backend), forced);
            harness.run(&dnat(
                format!("{what}: mid-flow ACK of client {host:#x} → {forced:?} (override)"),
                &spec,
                &flow,
                &flow.packet(TCP_ACK).with_payload(b"data"),
                backend,
                Reason::FlowMiss,
            ));
        }
    }
}

/// `spec`'s preview at `address`: its own id, backend ids and slots, the green pool alone.
/// Installed at weight 0 on purpose: the `PREVIEW` flag alone must send it green.
fn preview_of(spec: &ServiceSpec, address: SocketAddr) -> ServiceSpec {
    ServiceSpec {
        id: spec.id + 100,
        address,
        green_weight: 0,
        blue: Vec::new(),
        green: spec
            .green
            .iter()
            .map(|backend| BackendSpec {
                id: backend.id + 1000,
                ..*backend
            })
            .collect(),
        first_slot: (spec.id + 100) * slots_needed(2, 2),
        preview: true,
        overrides: Vec::new(),
        ..spec.clone()
    }
}

fn shared_replies(services: &[&ServiceSpec], backends: usize) -> Vec<Replies> {
    (0..backends)
        .map(|index| {
            let address = services[0].green[index].address;
            Replies {
                key: BackendKey {
                    addr: addr(address.ip()),
                    port: address.port().to_be(),
                    protocol: Protocol::Tcp.number(),
                    family: family_of(address.ip()) as u8,
                },
                candidates: services
                    .iter()
                    .map(|spec| reverse_value(spec, &spec.green[index]))
                    .collect(),
            }
        })
        .collect()
}

#[test]
fn a_preview_goes_green_and_shared_backends_answer_for_the_pinned_service() {
    if !require_privileges("a_preview_goes_green_and_shared_backends_answer_for_the_pinned_service")
    {
        return;
    }
    let mut harness = Harness::new();
    for (i, v6) in [false, true].into_iter().enumerate() {
        let what = label(v6, Protocol::Tcp);
        let id = 1 + i as u32;
        let main = service(id, v6, Protocol::Tcp, Cohort::Flow, ALL_GREEN, HOUR);
        let preview = preview_of(&main, SocketAddr::new(host(v6, id as u16, 2), 80));
        harness.install(&main);
        harness.install(&preview);
        let replies = shared_replies(&[&main, &preview], main.green.len());
        harness.dataplane.maps.set_replies(&replies).unwrap();
        for reply in &replies {
            let entry = harness
                .dataplane
                .maps
                .backend_reverse
                .get(&reply.key, 0)
                .unwrap();
            assert_eq!(entry.flags, reverse_flags::SHARED, "{what}: shared entry");
            assert_eq!(entry.backend_id, reply.candidates[0].backend_id);
        }

        // A flow to the preview goes green although its weight is 0.
        let to_preview = Flow::new(&preview, client(v6, 0x3001, 43_000));
        let preview_backend = predict_forced(&preview, &to_preview.key(), 0, Some(Color::Green));
        let index = preview
            .green
            .iter()
            .position(|backend| backend == preview_backend)
            .unwrap();
        // A flow to the main address from the same client port range, on the same backend.
        let main_backend = &main.green[index];
        let to_main = (44_000..45_000)
            .map(|port| Flow::new(&main, client(v6, 0x3001, port)))
            .find(|flow| predict(&main, &flow.key(), ALL_GREEN) == main_backend)
            .expect("some port lands on the same green backend");
        let shared = main_backend.address;
        assert_eq!(preview_backend.address, shared);
        harness.run_all(&[
            dnat(
                format!("{what}: SYN to the preview → green backend {shared}, preview's id"),
                &preview,
                &to_preview,
                &to_preview.packet(TCP_SYN),
                preview_backend,
                Reason::NewFlow,
            ),
            dnat(
                format!("{what}: SYN to the main address → the same backend, main's id"),
                &main,
                &to_main,
                &to_main.packet(TCP_SYN),
                main_backend,
                Reason::NewFlow,
            ),
            reverse_nat(
                format!("{what}: SYN-ACK of the preview's flow leaves from the preview address"),
                &to_preview,
                &to_preview.reply(shared, TCP_SYN | TCP_ACK),
                preview_backend,
            )
            .holds(
                &to_preview,
                FlowValue {
                    synack_seq: 1000, // the builder's default sequence number
                    ..pinned_value(&preview, preview_backend, FlowState::SynAcked)
                },
            ),
            reverse_nat(
                format!("{what}: SYN-ACK of the main flow leaves from the main address"),
                &to_main,
                &to_main.reply(shared, TCP_SYN | TCP_ACK),
                main_backend,
            )
            .holds(
                &to_main,
                FlowValue {
                    synack_seq: 1000,
                    ..pinned_value(&main, main_backend, FlowState::SynAcked)
                },
            ),
        ]);
        // No flow at all (evicted, or begun on another host): the first service.
        let unknown = Flow::new(&main, client(v6, 0x3002, 46_000));
        harness.run(&reverse_nat(
            format!("{what}: reply of a shared backend without a flow → the first service"),
            &unknown,
            &unknown.reply(shared, TCP_ACK).with_payload(b"late"),
            main_backend,
        ));
    }
}
