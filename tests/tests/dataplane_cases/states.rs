//! The flow state machine, case by case (v4 and v6): `PENDING` holds handshakes, unverified
//! mid-flow flows and UDP flows; only the client's ACK of the backend's SYN-ACK, or a backend's
//! non-RST answer to an unverified flow, promotes a flow to `FLOWS`. Rollout signals count
//! verified traffic only.

use std::time::Duration;

use splitter::dataplane::LoadOptions;
use splitter_common::{
    FlowState, FlowValue, Signals,
    flow_flags::{BACKEND_FIN, CLIENT_FIN, RESET, TIMEOUT_COUNTED},
    hash::is_green,
    select::cohort_hash,
};

use super::*;

/// The backend's initial sequence number in these cases.
const ISN: u32 = 0x1234_5678;

fn signal(f: fn(&mut Signals)) -> Signals {
    let mut signals = Signals::default();
    f(&mut signals);
    signals
}

/// `packet` with its TCP sequence and acknowledgment numbers set.
fn numbered(mut packet: Packet, seq: u32, ack: u32) -> Packet {
    if let L4::Tcp(tcp) = &mut packet.l4 {
        tcp.seq = seq;
        tcp.ack = ack;
    }
    packet
}

fn state_value(
    spec: &ServiceSpec,
    backend: &BackendSpec,
    state: FlowState,
    flags: u8,
) -> FlowValue {
    FlowValue {
        flags,
        ..pinned_value(spec, backend, state)
    }
}

/// The SYN-ACK that moves `flow`'s pending handshake to `SynAcked` (no signal yet).
fn synack_case(what: &str, spec: &ServiceSpec, flow: &Flow, backend: &BackendSpec) -> Case {
    reverse_nat(
        format!("{what}: SYN-ACK → SynAcked, no signal yet"),
        flow,
        &numbered(flow.reply(backend.address, TCP_SYN | TCP_ACK), ISN, 1001),
        backend,
    )
    .holds(
        flow,
        FlowValue {
            synack_seq: ISN,
            ..pinned_value(spec, backend, FlowState::SynAcked)
        },
    )
}

/// The client's ACK of the SYN-ACK: promoted to `FLOWS` (replacing `replaced` entries there),
/// handshake completed.
fn completing_ack(
    what: &str,
    spec: &ServiceSpec,
    flow: &Flow,
    backend: &BackendSpec,
    replaced: i64,
) -> Case {
    dnat(
        format!("{what}: the client's ACK of the SYN-ACK → established, completed"),
        spec,
        flow,
        &numbered(flow.packet(TCP_ACK), 1001, ISN.wrapping_add(1)),
        backend,
        Reason::Established,
    )
    .tables(1 - replaced, -1)
    .holds(flow, pinned_value(spec, backend, FlowState::Established))
    .signals(backend.id, signal(|s| s.handshakes_completed = 1))
}

/// A whole handshake through both programs: SYN, SYN-ACK, ACK.
fn handshake(what: &str, spec: &ServiceSpec, flow: &Flow, backend: &BackendSpec) -> [Case; 3] {
    [
        dnat(
            format!("{what}: SYN → new flow, pending"),
            spec,
            flow,
            &flow.packet(TCP_SYN),
            backend,
            Reason::NewFlow,
        ),
        synack_case(what, spec, flow, backend),
        completing_ack(what, spec, flow, backend, 0),
    ]
}

#[test]
fn handshakes_and_resets_are_counted_only_for_verified_traffic() {
    if !require_privileges("handshakes_and_resets_are_counted_only_for_verified_traffic") {
        return;
    }
    let mut harness = Harness::new();
    for (i, v6) in [false, true].into_iter().enumerate() {
        let what = label(v6, Protocol::Tcp);
        let spec = service(20 + i as u32, v6, Protocol::Tcp, Cohort::Flow, HALF, HOUR);
        harness.install(&spec);
        let flows: Vec<Flow> = (0..6)
            .map(|n| Flow::new(&spec, client(v6, 7, 43000 + n)))
            .collect();
        let backends: Vec<&BackendSpec> = flows
            .iter()
            .map(|flow| predict(&spec, &flow.key(), HALF))
            .collect();
        let (f, b) = (&flows, &backends);

        // Flow 0: completed, data, FINs both ways, then a reset by the backend on a closed flow
        // counts nothing; flow 5 is reset while established.
        let mut cases: Vec<Case> = handshake(&format!("{what} flow 0"), &spec, &f[0], b[0]).into();
        cases.push(reverse_nat(
            format!("{what}: data from the backend: no signal, no table work"),
            &f[0],
            &f[0]
                .reply(b[0].address, TCP_ACK | TCP_PSH)
                .with_payload(b"hello"),
            b[0],
        ));
        cases.extend(handshake(&format!("{what} flow 5"), &spec, &f[5], b[5]));
        cases.push(
            reverse_nat(
                format!("{what}: backend RST on an established flow: reset, closed"),
                &f[5],
                &f[5].reply(b[5].address, TCP_RST | TCP_ACK),
                b[5],
            )
            .signals(b[5].id, signal(|s| s.established_resets = 1))
            .holds(&f[5], pinned_value(&spec, b[5], FlowState::Closed)),
        );
        cases.push(
            reverse_nat(
                format!("{what}: a second backend RST on the closed flow: nothing"),
                &f[5],
                &f[5].reply(b[5].address, TCP_RST),
                b[5],
            )
            .holds(&f[5], pinned_value(&spec, b[5], FlowState::Closed)),
        );

        // Flow 1: refused.
        cases.push(dnat(
            format!("{what} flow 1: SYN"),
            &spec,
            &f[1],
            &f[1].packet(TCP_SYN),
            b[1],
            Reason::NewFlow,
        ));
        cases.push(
            reverse_nat(
                format!("{what}: RST answering the SYN: refused, the handshake gone"),
                &f[1],
                &f[1].reply(b[1].address, TCP_RST | TCP_ACK),
                b[1],
            )
            .signals(b[1].id, signal(|s| s.handshakes_refused = 1))
            .tables(0, -1)
            .not_pinned(&f[1]),
        );

        // Flow 3: a spoofed SYN's SYN-ACK goes elsewhere; an ACK that does not acknowledge it
        // (a guess) completes nothing.
        cases.push(dnat(
            format!("{what} flow 3: SYN"),
            &spec,
            &f[3],
            &f[3].packet(TCP_SYN),
            b[3],
            Reason::NewFlow,
        ));
        cases.push(synack_case(&format!("{what} flow 3"), &spec, &f[3], b[3]));
        cases.push(
            dnat(
                format!("{what}: an ACK of the wrong number: forwarded, not completed"),
                &spec,
                &f[3],
                &numbered(f[3].packet(TCP_ACK), 1001, ISN.wrapping_add(2)),
                b[3],
                Reason::Established,
            )
            .holds(
                &f[3],
                FlowValue {
                    synack_seq: ISN,
                    ..pinned_value(&spec, b[3], FlowState::SynAcked)
                },
            ),
        );

        // Flow 4: a spoofed bare ACK (mid-flow miss) answered by the backend's RST: nothing.
        cases.push(dnat(
            format!("{what} flow 4: a bare ACK without a flow → miss, unverified"),
            &spec,
            &f[4],
            &f[4].packet(TCP_ACK),
            b[4],
            Reason::FlowMiss,
        ));
        cases.push(
            reverse_nat(
                format!("{what}: the backend's RST to the bare ACK: no reset counted, gone"),
                &f[4],
                &f[4].reply(b[4].address, TCP_RST),
                b[4],
            )
            .tables(0, -1)
            .not_pinned(&f[4]),
        );
        cases.push(reverse_nat(
            format!("{what}: a backend RST for a flow in neither table: nothing"),
            &f[4],
            &f[4].reply(b[4].address, TCP_RST | TCP_ACK),
            b[4],
        ));

        // Flow 2: the client retransmits its SYN. Early: nothing; after the timeout: counted.
        cases.push(dnat(
            format!("{what} flow 2: SYN"),
            &spec,
            &f[2],
            &f[2].packet(TCP_SYN),
            b[2],
            Reason::NewFlow,
        ));
        cases.push(dnat(
            format!("{what}: SYN retransmitted at once: no timeout yet"),
            &spec,
            &f[2],
            &f[2].packet(TCP_SYN),
            b[2],
            Reason::Established,
        ));
        harness.run_all(&cases);
        let timeout = splitter_common::signals::DEFAULT_HANDSHAKE_TIMEOUT_NS;
        for flow in [&f[2], &f[3]] {
            let key = flow.key();
            let pending = &mut harness.dataplane.maps.pending;
            let mut held = pending.get(&key, 0).expect("handshake held");
            held.handshake = held
                .handshake
                .wrapping_sub(splitter_common::flow::fine_stamp(2 * timeout));
            pending.insert(key, held, 0).expect("age the handshake");
        }
        let timed_out = state_value(&spec, b[2], FlowState::Pending, TIMEOUT_COUNTED);
        harness.run_all(&[
            dnat(
                format!("{what}: SYN retransmitted after the timeout: timed out"),
                &spec,
                &f[2],
                &f[2].packet(TCP_SYN),
                b[2],
                Reason::Established,
            )
            .signals(b[2].id, signal(|s| s.handshakes_timed_out = 1))
            .holds(&f[2], timed_out),
            dnat(
                format!("{what}: a third SYN: counted once per flow"),
                &spec,
                &f[2],
                &f[2].packet(TCP_SYN),
                b[2],
                Reason::Established,
            ),
            dnat(
                format!("{what}: a late SYN after a SYN-ACK was seen: no timeout"),
                &spec,
                &f[3],
                &f[3].packet(TCP_SYN),
                b[3],
                Reason::Established,
            ),
        ]);
    }
}

/// Both closing orders, then a SYN re-chooses; a client RST followed by a SYN (forged or real)
/// re-chooses too, yet the pin moves only when the new handshake completes.
#[test]
fn syn_on_established_stays_syn_after_close_chooses_afresh() {
    if !require_privileges("syn_on_established_stays_syn_after_close_chooses_afresh") {
        return;
    }
    let mut harness = Harness::new();
    for (i, v6) in [false, true].into_iter().enumerate() {
        let what = label(v6, Protocol::Tcp);
        let spec = service(30 + i as u32, v6, Protocol::Tcp, Cohort::Flow, 0, HOUR);
        harness.install(&spec);
        let flows: Vec<Flow> = (0..4)
            .map(|n| Flow::new(&spec, client(v6, 8, 44000 + n)))
            .collect();
        let blue: Vec<&BackendSpec> = flows
            .iter()
            .map(|flow| predict(&spec, &flow.key(), 0))
            .collect();
        let green: Vec<&BackendSpec> = flows
            .iter()
            .map(|flow| predict(&spec, &flow.key(), ALL_GREEN))
            .collect();
        let mut cases = Vec::new();
        for (n, flow) in flows.iter().enumerate() {
            cases.extend(handshake(&format!("{what} flow {n}"), &spec, flow, blue[n]));
        }
        harness.run_all(&cases);
        harness.set_weight(&spec, ALL_GREEN);
        let (f, b, g) = (&flows, &blue, &green);
        let established = |n: usize| pinned_value(&spec, b[n], FlowState::Established);
        let closed = |n: usize, flags| state_value(&spec, b[n], FlowState::Closed, flags);
        let closing = |n: usize, flags| state_value(&spec, b[n], FlowState::Closing, flags);

        // Flow 0: a SYN (spoofed, any sequence number) on the established flow stays blue.
        let mut cases = vec![
            dnat(
                format!("{what} flow 0: a SYN on the established flow → its pinned backend"),
                &spec,
                &f[0],
                &numbered(f[0].packet(TCP_SYN), 0xdead_beef, 0),
                b[0],
                Reason::Established,
            )
            .holds(&f[0], established(0)),
            dnat(
                format!("{what} flow 0: its next data still blue"),
                &spec,
                &f[0],
                &f[0].packet(TCP_ACK | TCP_PSH).with_payload(b"GET /"),
                b[0],
                Reason::Established,
            )
            .holds(&f[0], established(0)),
        ];

        // Flow 1: client FIN first, then the backend's; a SYN after that goes green.
        cases.push(
            dnat(
                format!("{what} flow 1: client FIN → closing"),
                &spec,
                &f[1],
                &f[1].packet(TCP_FIN | TCP_ACK),
                b[1],
                Reason::Established,
            )
            .holds(&f[1], closing(1, CLIENT_FIN)),
        );
        cases.push(
            reverse_nat(
                format!("{what} flow 1: backend FIN → closed"),
                &f[1],
                &f[1].reply(b[1].address, TCP_FIN | TCP_ACK),
                b[1],
            )
            .holds(&f[1], closed(1, CLIENT_FIN | BACKEND_FIN)),
        );
        cases.push(
            dnat(
                format!("{what} flow 1: the last ACK → still its backend, closed"),
                &spec,
                &f[1],
                &f[1].packet(TCP_ACK),
                b[1],
                Reason::Established,
            )
            .holds(&f[1], closed(1, CLIENT_FIN | BACKEND_FIN)),
        );
        // Flow 2: the backend's FIN first.
        cases.push(
            reverse_nat(
                format!("{what} flow 2: backend FIN → closing"),
                &f[2],
                &f[2].reply(b[2].address, TCP_FIN | TCP_ACK),
                b[2],
            )
            .holds(&f[2], closing(2, BACKEND_FIN)),
        );
        cases.push(
            dnat(
                format!("{what} flow 2: client FIN → closed"),
                &spec,
                &f[2],
                &f[2].packet(TCP_FIN | TCP_ACK),
                b[2],
                Reason::Established,
            )
            .holds(&f[2], closed(2, CLIENT_FIN | BACKEND_FIN)),
        );
        for n in [1, 2] {
            let name = format!("{what} flow {n} reused after FIN/FIN");
            cases.push(
                dnat(
                    format!("{name}: SYN → chosen afresh (green), the old pin stays"),
                    &spec,
                    &f[n],
                    &f[n].packet(TCP_SYN),
                    g[n],
                    Reason::NewFlow,
                )
                .holds(&f[n], closed(n, CLIENT_FIN | BACKEND_FIN)),
            );
            cases.push(synack_case(&name, &spec, &f[n], g[n]));
            cases.push(completing_ack(&name, &spec, &f[n], g[n], 1));
        }

        // Flow 3: a (forged) client RST, then a SYN: the SYN goes green, but the real flow's
        // next packet stays blue and brings the pin back.
        cases.push(
            dnat(
                format!("{what} flow 3: client RST → closed, pin kept"),
                &spec,
                &f[3],
                &f[3].packet(TCP_RST | TCP_ACK),
                b[3],
                Reason::Established,
            )
            .holds(&f[3], closed(3, RESET)),
        );
        cases.push(
            dnat(
                format!("{what} flow 3: SYN after the RST → chosen afresh (green)"),
                &spec,
                &f[3],
                &numbered(f[3].packet(TCP_SYN), 0xdead_beef, 0),
                g[3],
                Reason::NewFlow,
            )
            .holds(&f[3], closed(3, RESET)),
        );
        cases.push(
            dnat(
                format!("{what} flow 3: the real flow's next data → blue, established again"),
                &spec,
                &f[3],
                &f[3].packet(TCP_ACK | TCP_PSH).with_payload(b"still here"),
                b[3],
                Reason::Established,
            )
            .holds(&f[3], established(3)),
        );
        harness.run_all(&cases);

        // Flow 0 again: the backend resets it, then the client really reuses the tuple.
        let name = format!("{what} flow 0 reused after the backend's RST");
        harness.run_all(&[
            reverse_nat(
                format!("{name}: backend RST → closed"),
                &f[0],
                &f[0].reply(b[0].address, TCP_RST),
                b[0],
            )
            .signals(b[0].id, signal(|s| s.established_resets = 1))
            .holds(&f[0], closed(0, 0)),
            dnat(
                format!("{name}: an ACK after the backend's RST does not revive it"),
                &spec,
                &f[0],
                &f[0].packet(TCP_ACK),
                b[0],
                Reason::Established,
            )
            .holds(&f[0], closed(0, 0)),
            dnat(
                format!("{name}: SYN → green"),
                &spec,
                &f[0],
                &f[0].packet(TCP_SYN),
                g[0],
                Reason::NewFlow,
            ),
            synack_case(&name, &spec, &f[0], g[0]),
            completing_ack(&name, &spec, &f[0], g[0], 1),
        ]);
    }
}

/// A mid-flow miss is held unverified; the backend's answer promotes it (data or FIN), its RST
/// drops it.
#[test]
fn mid_flow_misses_are_verified_by_the_backend() {
    if !require_privileges("mid_flow_misses_are_verified_by_the_backend") {
        return;
    }
    let mut harness = Harness::new();
    for (i, v6) in [false, true].into_iter().enumerate() {
        let what = label(v6, Protocol::Tcp);
        let spec = service(40 + i as u32, v6, Protocol::Tcp, Cohort::Flow, HALF, HOUR);
        harness.install(&spec);
        let data = Flow::new(&spec, client(v6, 9, 45000));
        let fin = Flow::new(&spec, client(v6, 9, 45001));
        let bd = predict(&spec, &data.key(), HALF);
        let bf = predict(&spec, &fin.key(), HALF);
        harness.run_all(&[
            dnat(
                format!("{what}: mid-flow ACK → miss, unverified"),
                &spec,
                &data,
                &data.packet(TCP_ACK | TCP_PSH).with_payload(b"more"),
                bd,
                Reason::FlowMiss,
            ),
            reverse_nat(
                format!("{what}: the backend's data reply → established"),
                &data,
                &data
                    .reply(bd.address, TCP_ACK | TCP_PSH)
                    .with_payload(b"answer"),
                bd,
            )
            .tables(1, -1)
            .holds(&data, pinned_value(&spec, bd, FlowState::Established)),
            dnat(
                format!("{what}: a SYN on it now → its backend"),
                &spec,
                &data,
                &data.packet(TCP_SYN),
                bd,
                Reason::Established,
            ),
            dnat(
                format!("{what}: another mid-flow ACK → miss, unverified"),
                &spec,
                &fin,
                &fin.packet(TCP_ACK),
                bf,
                Reason::FlowMiss,
            ),
            reverse_nat(
                format!("{what}: the backend's FIN → established and closing"),
                &fin,
                &fin.reply(bf.address, TCP_FIN | TCP_ACK),
                bf,
            )
            .tables(1, -1)
            .holds(
                &fin,
                state_value(&spec, bf, FlowState::Closing, BACKEND_FIN),
            ),
        ]);
    }
}

/// Established flows live in their own table: a flood of handshakes and mid-flow misses many
/// times the size of both tables evicts none of them.
#[test]
fn pending_entries_do_not_evict_established_ones() {
    if !require_privileges("pending_entries_do_not_evict_established_ones") {
        return;
    }
    const FLOWS_SIZE: u32 = 64;
    const PENDING_SIZE: u32 = 32;
    for (i, v6) in [false, true].into_iter().enumerate() {
        // A fresh data plane per family: a full LRU evicts in batches, which would blur the
        // exact table deltas of the handshakes below.
        let mut harness = Harness::with(&LoadOptions {
            flow_table_size: FLOWS_SIZE,
            pending_table_size: PENDING_SIZE,
            ..LoadOptions::default()
        });
        let what = label(v6, Protocol::Tcp);
        let spec = service(50 + i as u32, v6, Protocol::Tcp, Cohort::Flow, 0, HOUR);
        harness.install(&spec);
        let kept: Vec<Flow> = (0..8)
            .map(|n| Flow::new(&spec, client(v6, 10, 46000 + n)))
            .collect();
        let mut cases = Vec::new();
        for (n, flow) in kept.iter().enumerate() {
            let backend = predict(&spec, &flow.key(), 0);
            cases.extend(handshake(&format!("{what} kept {n}"), &spec, flow, backend));
        }
        harness.run_all(&cases);
        harness.set_weight(&spec, ALL_GREEN);
        // Spoofed: a SYN then an ACK per tuple (the second use marks the entry referenced).
        let flood = 10 * (FLOWS_SIZE + PENDING_SIZE);
        for n in 0..flood {
            let spoofed = Flow::new(&spec, client(v6, 1000 + (n / 1000) as u16, 1024 + n as u16));
            for flags in [TCP_SYN, TCP_ACK] {
                let (verdict, _) = harness
                    .try_test_run(Hook::Ingress, &spoofed.packet(flags).build())
                    .expect("flood packet runs");
                assert_eq!(verdict, XDP_PASS);
            }
        }
        let pending = harness.dataplane.maps.pending.keys().count();
        assert!(
            pending <= PENDING_SIZE as usize,
            "{what}: PENDING holds {pending}"
        );
        let cases: Vec<Case> = kept
            .iter()
            .enumerate()
            .map(|(n, flow)| {
                let backend = predict(&spec, &flow.key(), 0);
                dnat(
                    format!("{what} kept {n}: after {flood} spoofed tuples × 2 → still blue"),
                    &spec,
                    flow,
                    &flow.packet(TCP_ACK | TCP_PSH).with_payload(b"still"),
                    backend,
                    Reason::Established,
                )
                .holds(flow, pinned_value(&spec, backend, FlowState::Established))
            })
            .collect();
        harness.run_all(&cases);
    }
}

#[test]
fn idle_udp_flows_are_chosen_afresh() {
    if !require_privileges("idle_udp_flows_are_chosen_afresh") {
        return;
    }
    const IDLE: Duration = Duration::from_millis(300);
    let mut harness = Harness::with(&LoadOptions {
        udp_idle_timeout_ns: IDLE.as_nanos() as u64,
        ..LoadOptions::default()
    });
    for (i, v6) in [false, true].into_iter().enumerate() {
        let what = label(v6, Protocol::Udp);
        let spec = service(60 + i as u32, v6, Protocol::Udp, Cohort::Flow, 0, HOUR);
        harness.install(&spec);
        let port = port_for(&spec, v6, 47000, ALL_GREEN, Color::Green);
        let flow = Flow::new(&spec, client(v6, 11, port));
        let blue = predict(&spec, &flow.key(), 0);
        let green = predict(&spec, &flow.key(), ALL_GREEN);
        harness.run_all(&[dnat(
            format!("{what}: first datagram → blue"),
            &spec,
            &flow,
            &flow.packet(0),
            blue,
            Reason::NewFlow,
        )]);
        harness.set_weight(&spec, ALL_GREEN);
        harness.run_all(&[dnat(
            format!("{what}: at once after the weight change → still blue"),
            &spec,
            &flow,
            &flow.packet(0),
            blue,
            Reason::Established,
        )
        .holds(&flow, pinned_value(&spec, blue, FlowState::Udp))]);
        // Stamped by another CPU whose coarse clock read a tick ahead of this one's: a stamp
        // a few ms in the future is fresh (it once wrapped to 52 days old: idle, re-chosen).
        let pending = &mut harness.dataplane.maps.pending;
        let mut held = pending.get(&flow.key(), 0).expect("UDP flow held");
        held.stamp = held.stamp.wrapping_add(5);
        pending
            .insert(flow.key(), held, 0)
            .expect("stamp the flow ahead");
        harness.run_all(&[dnat(
            format!("{what}: stamped 5 ms ahead of this CPU's clock → still blue"),
            &spec,
            &flow,
            &flow.packet(0),
            blue,
            Reason::Established,
        )]);
        std::thread::sleep(IDLE + Duration::from_millis(200));
        let input = flow.packet(0).build();
        harness.run_all(&[Case::new(
            Hook::Ingress,
            format!("{what}: after {IDLE:?} idle → chosen afresh (green), entry replaced"),
            input.clone(),
        )
        .rewritten(
            with_destination(&flow.packet(0), green.address).build(),
            Reason::NewFlow,
        )
        .backend(green.id, to_backend(&input, 0, true))
        .holds(&flow, pinned_value(&spec, green, FlowState::Udp))]);
    }
}

/// Weights 50 %, then 10 %, then 30 % within `miss_hold`: a miss green under 10 % (the window's
/// minimum) is green, one blue under 50 % (the maximum) is blue, one in between follows the
/// oldest weight (50 %: green, although 30 % now says blue) and counts as ambiguous.
#[test]
fn mid_flow_misses_follow_the_weight_history() {
    if !require_privileges("mid_flow_misses_follow_the_weight_history") {
        return;
    }
    let mut harness = Harness::new();
    for (i, v6) in [false, true].into_iter().enumerate() {
        let what = label(v6, Protocol::Tcp);
        let spec = service(70 + i as u32, v6, Protocol::Tcp, Cohort::Flow, HALF, HOUR);
        harness.install(&spec);
        harness.set_weight(&spec, WEIGHT_SCALE / 10);
        harness.set_weight(&spec, WEIGHT_SCALE * 3 / 10);
        let installed = harness
            .dataplane
            .maps
            .service(&splitter::dataplane::services::service_key(
                &spec.address,
                spec.protocol,
            ))
            .unwrap()
            .expect("installed");
        let weights: Vec<u32> = installed.history[..3].iter().map(|c| c.weight).collect();
        assert_eq!(weights, [300_000, 100_000, HALF], "{what}: newest first");
        let hash = |port| {
            cohort_hash(
                Cohort::Flow,
                &Flow::new(&spec, client(v6, 12, port)).key(),
                SEED,
            )
        };
        let find = |test: &dyn Fn(u32) -> bool| {
            (48000..50000)
                .find(|&port| test(hash(port)))
                .expect("a port in every region")
        };
        let min_green = find(&|h| is_green(h, 100_000));
        let band_above_now = find(&|h| !is_green(h, 300_000) && is_green(h, HALF));
        let band_below_now = find(&|h| !is_green(h, 100_000) && is_green(h, 300_000));
        let max_blue = find(&|h| !is_green(h, HALF));
        let mut cases = Vec::new();
        for (port, region, weight, ambiguous) in [
            (min_green, "green under the minimum", 100_000, false),
            (band_above_now, "in the band, blue now", HALF, true),
            (band_below_now, "in the band, green now", HALF, true),
            (max_blue, "blue under the maximum", HALF, false),
        ] {
            let flow = Flow::new(&spec, client(v6, 12, port));
            let backend = predict(&spec, &flow.key(), weight);
            let mut case = dnat(
                format!("{what}: miss {region}"),
                &spec,
                &flow,
                &flow.packet(TCP_ACK),
                backend,
                Reason::FlowMiss,
            );
            if ambiguous {
                assert_eq!(color_of(&spec, backend), Color::Green, "oldest: 50 %");
                case = case.ambiguous(spec.id);
            }
            cases.push(case);
        }
        harness.run_all(&cases);
    }
}

/// The census the daemon's gauges come from: states per backend and the fill of both tables.
#[test]
fn the_census_counts_flows_by_state() {
    if !require_privileges("the_census_counts_flows_by_state") {
        return;
    }
    let mut harness = Harness::new();
    let spec = service(80, false, Protocol::Tcp, Cohort::Flow, 0, HOUR);
    harness.install(&spec);
    // All blue (weight 0); backends by hash. Flows 0-1 established, 2 closing, 3 closed,
    // 4 pending, 5 an unverified miss.
    let flows: Vec<Flow> = (0..6)
        .map(|n| Flow::new(&spec, client(false, 13, 51000 + n)))
        .collect();
    let backend = |n: usize| predict(&spec, &flows[n].key(), 0);
    let mut cases = Vec::new();
    for (n, flow) in flows.iter().enumerate().take(4) {
        cases.extend(handshake(
            &format!("census flow {n}"),
            &spec,
            flow,
            backend(n),
        ));
    }
    cases.push(dnat(
        "census flow 2: client FIN",
        &spec,
        &flows[2],
        &flows[2].packet(TCP_FIN | TCP_ACK),
        backend(2),
        Reason::Established,
    ));
    cases.push(
        reverse_nat(
            "census flow 3: backend RST",
            &flows[3],
            &flows[3].reply(backend(3).address, TCP_RST),
            backend(3),
        )
        .signals(backend(3).id, signal(|s| s.established_resets = 1)),
    );
    cases.push(dnat(
        "census flow 4: SYN",
        &spec,
        &flows[4],
        &flows[4].packet(TCP_SYN),
        backend(4),
        Reason::NewFlow,
    ));
    cases.push(dnat(
        "census flow 5: mid-flow ACK",
        &spec,
        &flows[5],
        &flows[5].packet(TCP_ACK),
        backend(5),
        Reason::FlowMiss,
    ));
    harness.run_all(&cases);
    let census = harness.dataplane.maps.flow_scan().census().unwrap();
    let mut expected: HashMap<u32, splitter::dataplane::maps::StateCounts> = HashMap::new();
    for (n, field) in [(0, 1), (1, 1), (2, 2), (4, 0), (5, 0)] {
        let counts = expected.entry(backend(n).id).or_default();
        match field {
            0 => counts.pending += 1,
            1 => counts.established += 1,
            _ => counts.closing += 1,
        }
    }
    // The closed flow's backend is listed (it holds an entry), with nothing live.
    expected.entry(backend(3).id).or_default();
    assert_eq!(census.backends, expected, "states per backend");
    assert_eq!(
        census.verified(),
        4,
        "FLOWS: 2 established, 1 closing, 1 closed"
    );
    assert_eq!(
        census.entries[1].iter().sum::<u64>(),
        2,
        "PENDING: a handshake and a miss"
    );
    // Each family has its own maps of the configured sizes.
    assert_eq!(census.capacity, [[262_144; 2], [65_536; 2]]);
    let (live, entries) = harness.dataplane.maps.flow_scan().count().unwrap();
    assert_eq!(
        live.values().sum::<u64>(),
        3,
        "live = established + closing"
    );
    assert_eq!(entries, 4);
}
