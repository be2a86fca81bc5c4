//! The in-pool choice through the real program: each color's Maglev table as the daemon writes
//! it (`splitter::dataplane::pools`), per-backend weights, a color with no backend in rotation
//! (its flows go to the other color), and `client_prefix`. The expected backend is the
//! userspace builder's table entry at `pool_index(hash, M)` (`ServiceSpec::predict`).

use super::*;

/// A deterministic stream of pseudo-random numbers (xorshift32): the same keys every run.
struct Keys(u32);

impl Keys {
    fn next(&mut self) -> u32 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 17;
        self.0 ^= self.0 << 5;
        self.0
    }

    /// A client address in 198.19.0.0/16 (fd00:c::/64) and a port.
    fn client(&mut self, v6: bool) -> SocketAddr {
        let r = self.next();
        client(v6, (r >> 16) as u16 | 1, 1024 + (r as u16 % 60_000))
    }
}

/// Sends the opening packet of `flow` through the ingress program and returns the backend
/// address it was rewritten to (checking the verdict and that nothing else changed).
fn steered_to(harness: &mut Harness, spec: &ServiceSpec, flow: &Flow) -> SocketAddr {
    let packet = flow.packet(opening(flow.protocol));
    let (verdict, output) = harness
        .try_test_run(Hook::Ingress, &packet.build())
        .unwrap_or_else(|e| panic!("BPF_PROG_TEST_RUN: {e:?}"));
    assert_eq!(verdict, XDP_PASS, "{flow:?}: verdict");
    for backend in spec.blue.iter().chain(&spec.green) {
        if output == with_destination(&packet, backend.address).build() {
            return backend.address;
        }
    }
    panic!(
        "{flow:?}: the output is no backend's DNAT of the input:\n{}",
        hex(&output)
    );
}

/// The tables in `POOLS` are the userspace builder's, entry for entry.
fn assert_tables_installed(harness: &Harness, spec: &ServiceSpec) {
    let [blue, green] = spec.tables();
    let read = |first: u32, len: usize| -> Vec<u32> {
        (first..first + len as u32)
            .map(|slot| harness.dataplane.maps.pool_slot(slot).unwrap())
            .collect()
    };
    assert_eq!(read(spec.first_slot, blue.len()), blue, "blue table");
    assert_eq!(
        read(spec.first_slot + blue.len() as u32, green.len()),
        green,
        "green table"
    );
}

#[test]
fn the_program_picks_the_userspace_maglev_entry_and_respects_weights() {
    if !require_privileges("the_program_picks_the_userspace_maglev_entry_and_respects_weights") {
        return;
    }
    let mut harness = Harness::new();
    for (i, (v6, protocol)) in COMBOS.into_iter().enumerate() {
        let what = label(v6, protocol);
        let mut spec = service(40 + i as u32, v6, protocol, Cohort::Flow, HALF, HOUR);
        // Blue: weights 1 and 3.
        spec.blue[1].weight = 3;
        harness.install(&spec);
        assert_tables_installed(&harness, &spec);
        let mut keys = Keys(0x5eed_0000 + i as u32);
        let mut loads: HashMap<SocketAddr, u32> = HashMap::new();
        const FLOWS: u32 = 3000;
        for _ in 0..FLOWS {
            let flow = Flow::new(&spec, keys.client(v6));
            let expected = predict(&spec, &flow.key(), HALF).address;
            let got = steered_to(&mut harness, &spec, &flow);
            assert_eq!(got, expected, "{what}: {flow:?}");
            *loads.entry(got).or_default() += 1;
        }
        let load =
            |backend: &BackendSpec| f64::from(loads.get(&backend.address).copied().unwrap_or(0));
        let ratio = load(&spec.blue[1]) / load(&spec.blue[0]);
        assert!(
            (2.4..=3.6).contains(&ratio),
            "{what}: the weight-3 blue backend gets {ratio:.2}× the weight-1 one: {loads:?}"
        );
        let greens = load(&spec.green[0]) / load(&spec.green[1]);
        assert!(
            (0.8..=1.25).contains(&greens),
            "{what}: equal green weights share alike: {loads:?}"
        );
        eprintln!("{what}: {FLOWS} flows, each on the userspace table's backend; loads {loads:?}");
    }
}

#[test]
fn a_color_without_backends_in_rotation_sends_its_flows_to_the_other() {
    if !require_privileges("a_color_without_backends_in_rotation_sends_its_flows_to_the_other") {
        return;
    }
    let mut harness = Harness::new();
    for (i, (v6, protocol)) in COMBOS.into_iter().enumerate() {
        let what = label(v6, protocol);
        let mut spec = service(50 + i as u32, v6, protocol, Cohort::Flow, ALL_GREEN, HOUR);
        for backend in &mut spec.green {
            backend.weight = 0;
        }
        harness.install(&spec);
        let config = harness
            .dataplane
            .maps
            .service(&splitter::dataplane::services::service_key(
                &spec.address,
                spec.protocol,
            ))
            .unwrap()
            .expect("installed");
        assert_eq!(config.green.len, 0, "{what}: green has no table");
        let mut keys = Keys(0xb10e + i as u32);
        let mut cases = Vec::new();
        for n in 0..16 {
            let flow = Flow::new(&spec, keys.client(v6));
            let backend = predict(&spec, &flow.key(), ALL_GREEN);
            assert_eq!(color_of(&spec, backend), Color::Blue);
            cases.push(dnat(
                format!(
                    "{what}: green empty at 100 %, flow {n} → blue {}",
                    backend.id
                ),
                &spec,
                &flow,
                &flow.packet(opening(protocol)),
                backend,
                Reason::NewFlow,
            ));
        }
        harness.run_all(&cases);
    }
}

#[test]
fn client_prefix_moves_a_subnet_together() {
    if !require_privileges("client_prefix_moves_a_subnet_together") {
        return;
    }
    let mut harness = Harness::new();
    for (i, (v6, protocol)) in COMBOS.into_iter().enumerate() {
        let what = label(v6, protocol);
        let whole = service(60 + i as u32, v6, protocol, Cohort::Client, HALF, HOUR);
        // Two clients of one /24 (/64) that the whole-address hash sends apart.
        let (a, b) = (2..200u16)
            .find_map(|h| {
                let a = Flow::new(&whole, client(v6, 1, 40000));
                let b = Flow::new(&whole, client(v6, h, 40001));
                (predict(&whole, &a.key(), HALF) != predict(&whole, &b.key(), HALF))
                    .then_some((a.client, b.client))
            })
            .expect("two clients of a /24 on different backends");
        let spec = ServiceSpec {
            client_prefix_v4: 24,
            client_prefix_v6: 64,
            ..whole
        };
        harness.install(&spec);
        let first = Flow::new(&spec, a);
        let backend = predict(&spec, &first.key(), HALF);
        let mut cases = Vec::new();
        for (n, client) in [a, b].into_iter().enumerate() {
            let flow = Flow::new(&spec, client);
            assert_eq!(predict(&spec, &flow.key(), HALF), backend);
            cases.push(dnat(
                format!(
                    "{what}: client {n} of the subnet ({}) → backend {}",
                    client.ip(),
                    backend.id
                ),
                &spec,
                &flow,
                &flow.packet(opening(protocol)),
                backend,
                Reason::NewFlow,
            ));
        }
        harness.run_all(&cases);
    }
}
