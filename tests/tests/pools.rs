//! Consistent hashing inside a color, end to end: the real daemon and CLI, real TCP servers that
//! answer with their `address:port`, 2 000 client cohorts (`cohort = "client"`, 2 000 client
//! addresses). A backend added to a blue pool of 4 by `reload` moves about 1/5 of the cohorts
//! (Maglev), not nearly all of them (the modulo choice before it); a backend removed moves
//! about the cohorts it had. Every answer is the backend the daemon's own table builder
//! predicts (`ServiceSpec::predict`), so the kernel runs the table the daemon built.

use std::{collections::BTreeMap, net::SocketAddr, time::Duration};

use splitter::dataplane::services::{BackendSpec, Protocol, ServiceSpec, addr_of};
use splitter_common::{Cohort, FlowKey};
use splitter_tests::{
    daemon_harness::{BLUE, GREEN, Lab, TCP_PORT, backend_servers, base_config},
    require_privileges,
    servers::{ask, connect},
};

const WEB: &str = "198.18.100.10:80";
const SEED: u32 = 7;
const COHORTS: u16 = 2000;
/// Three more blue backends, in the blue namespace next to `BLUE`.
const MORE_BLUE: [&str; 3] = ["198.18.1.12", "198.18.1.13", "198.18.1.14"];

/// Client `i`'s address: 198.19.0.0/16, one per cohort.
fn client(i: u16) -> std::net::IpAddr {
    std::net::Ipv4Addr::new(198, 19, (i >> 8) as u8, i as u8).into()
}

fn config(lab: &Lab, blue: &[&str]) -> String {
    let list = |hosts: &[&str]| {
        hosts
            .iter()
            .map(|host| format!("\"{host}:{TCP_PORT}\""))
            .collect::<Vec<_>>()
            .join(", ")
    };
    format!(
        "{}\n[[service]]\nname = \"web\"\naddress = \"{WEB}\"\ngreen_weight = 0\ncohort = \"client\"\nblue = [{}]\ngreen = [{}]\n",
        base_config(&lab.work).replace("miss_hold", &format!("hash_seed = {SEED}\nmiss_hold")),
        list(blue),
        list(&GREEN[..1]),
    )
}

/// The backend the daemon's table builder gives client `i` (all flows blue at weight 0).
fn predicted(blue: &[&str], i: u16) -> String {
    let spec = ServiceSpec {
        id: 0,
        address: WEB.parse().unwrap(),
        protocol: Protocol::Tcp,
        cohort: Cohort::Client,
        green_weight: 0,
        blue: blue
            .iter()
            .zip(0..)
            .map(|(host, id)| BackendSpec {
                id,
                address: format!("{host}:{TCP_PORT}").parse().unwrap(),
                weight: 1,
                active: true,
            })
            .collect(),
        green: Vec::new(),
        client_prefix_v4: 0,
        client_prefix_v6: 0,
        first_slot: 0,
        miss_hold: Duration::ZERO,
        overrides: Vec::new(),
        preview: false,
    };
    let (src, family) = addr_of(&SocketAddr::new(client(i), 40000));
    let key = FlowKey {
        src,
        family: family as u8,
        ..FlowKey::default()
    };
    spec.predict(&key, SEED, 0)
        .expect("blue has backends")
        .address
        .to_string()
}

/// One connection from each client address; the backend that answered each.
fn answers(lab: &Lab) -> Vec<String> {
    let vip: SocketAddr = WEB.parse().unwrap();
    let answers = lab.topology.client.run(move || {
        (0..COHORTS)
            .map(|i| {
                let mut stream = connect(SocketAddr::new(client(i), 0), vip)
                    .map_err(|e| format!("client {}: connect: {e}", client(i)))?;
                ask(&mut stream).map_err(|e| format!("client {}: ask: {e}", client(i)))
            })
            .collect::<Vec<Result<String, String>>>()
    });
    answers
        .into_iter()
        .map(|answer| {
            answer.unwrap_or_else(|error| {
                panic!(
                    "{error}\nresets: {}\ndaemon log:\n{}",
                    lab.explain_resets(),
                    lab.daemon_log()
                )
            })
        })
        .collect()
}

/// Checks every answer against the prediction and returns the share of cohorts whose backend
/// changed since `before`.
fn moved(blue: &[&str], before: &[String], after: &[String], what: &str) -> f64 {
    for (i, answer) in (0..COHORTS).zip(after) {
        assert_eq!(
            *answer,
            predicted(blue, i),
            "{what}: client {} answered by another backend than the table's",
            client(i)
        );
    }
    let changed = before.iter().zip(after).filter(|(b, a)| b != a).count();
    let mut loads: BTreeMap<&str, usize> = BTreeMap::new();
    for answer in after {
        *loads.entry(answer).or_default() += 1;
    }
    let share = changed as f64 / f64::from(COHORTS);
    eprintln!(
        "{what}: {changed} of {COHORTS} cohorts changed backend ({share:.3}); loads {loads:?}"
    );
    share
}

#[test]
fn adding_or_removing_a_backend_moves_about_one_nth_of_the_cohorts() {
    if !require_privileges("adding_or_removing_a_backend_moves_about_one_nth_of_the_cohorts") {
        return;
    }
    let mut lab = Lab::new("pools");
    for host in MORE_BLUE {
        lab.topology.blue.addr("eth0", &format!("{host}/24"));
    }
    lab.servers
        .push(backend_servers(&lab.topology.blue, &MORE_BLUE));
    // 2 000 client addresses, routed back to the client by the router.
    let mut batch = String::new();
    for i in 0..COHORTS {
        batch.push_str(&format!("address add {}/32 dev eth0\n", client(i)));
    }
    let path = lab.work.config().with_file_name("client-addresses");
    std::fs::write(&path, batch).expect("write the ip batch file");
    lab.topology
        .client
        .ip(&["-batch", path.to_str().expect("utf-8 path")]);
    lab.topology.router.route("198.19.0.0/16", "198.18.0.1");

    let four = [BLUE[0], BLUE[1], MORE_BLUE[0], MORE_BLUE[1]];
    let five = [BLUE[0], BLUE[1], MORE_BLUE[0], MORE_BLUE[1], MORE_BLUE[2]];
    let without_one = [BLUE[0], MORE_BLUE[0], MORE_BLUE[1], MORE_BLUE[2]];
    std::fs::write(lab.work.config(), config(&lab, &four)).expect("write config");
    lab.start_daemon();
    let first = answers(&lab);
    let start = moved(&four, &first, &first, "4 backends");
    assert!(start.abs() < f64::EPSILON);

    std::fs::write(lab.work.config(), config(&lab, &five)).expect("write config");
    lab.cli_ok(&["reload"]);
    let added = answers(&lab);
    let share = moved(&five, &first, &added, "one backend added to 4");
    assert!(
        (0.15..=0.30).contains(&share),
        "adding one backend to 4 must move about 1/5 of the cohorts (Maglev), moved {share:.3}"
    );

    std::fs::write(lab.work.config(), config(&lab, &without_one)).expect("write config");
    lab.cli_ok(&["reload"]);
    let removed = answers(&lab);
    let share = moved(&without_one, &added, &removed, "one backend removed of 5");
    assert!(
        (0.15..=0.30).contains(&share),
        "removing one of 5 backends must move about 1/5 of the cohorts, moved {share:.3}"
    );
    // Beyond the removed backend's own cohorts, only Maglev's small churn moves.
    let lost = format!("{}:{TCP_PORT}", BLUE[1]);
    let churn = added
        .iter()
        .zip(&removed)
        .filter(|(before, after)| **before != lost && before != after)
        .count();
    assert!(
        churn <= usize::from(COHORTS) / 12,
        "{churn} cohorts moved between surviving backends"
    );

    // what-if: with one connection open, a weight of 25 % affects no pinned flow and moves
    // exactly a quarter of the hash space to green.
    let vip: SocketAddr = WEB.parse().unwrap();
    let mut open = lab
        .topology
        .client
        .run(move || connect(SocketAddr::new(client(0), 0), vip))
        .expect("connect");
    ask(&mut open).expect("ask");
    let json = lab.cli_ok(&["what-if", "web", "--weight", "25", "--json"]);
    let report: splitter::control::protocol::WhatIfReport =
        serde_json::from_str(&json).expect("what-if --json");
    assert!(report.pinned_flows >= 1, "{report:?}");
    assert_eq!(report.pinned_affected, 0);
    assert_eq!(report.moved_hashes, 1 << 30, "{report:?}");
    assert_eq!(report.moved_to, Some(splitter::config::ColorName::Green));
    assert!(report.seen_cohorts >= 1, "{report:?}");
    let text = lab.cli_ok(&["what-if", "web", "--weight", "25"]);
    assert!(
        text.contains("0 affected") && text.contains("25.0000 % change color, blue → green"),
        "{text}"
    );
    drop(open);
}
