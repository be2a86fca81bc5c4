//! The edges of a pool end to end (issue 13): a preview address and the main address on the
//! same green backends, and source overrides, through the real daemon, real TCP connections
//! from the client namespace and real backends. A connection that completes and answers proves
//! the client's stack accepted the backend's replies as coming from the address it dialled (a
//! SYN-ACK from any other address is answered with a RST and the connect fails).
//!
//! Run: `cargo test --release -p splitter-tests --test edges -- --test-threads=1`

use std::{
    net::{IpAddr, SocketAddr},
    time::Duration,
};

use socket2::{Domain, Socket, Type};
use splitter::control::protocol::{ServiceStatus, StatusReport};
use splitter_tests::{
    daemon_harness::{
        BLUE, BLUE6, GREEN, GREEN6, Lab, TCP_PORT, color_of, colors, metric, service,
    },
    require_privileges,
};

const WEB: &str = "198.18.100.10:80";
const WEB_PREVIEW: &str = "198.18.100.11:80";
const WEB6: &str = "[fd00:100::10]:80";
const WEB6_PREVIEW: &str = "[fd00:100::11]:80";

fn find<'a>(report: &'a StatusReport, name: &str) -> &'a ServiceStatus {
    report
        .services
        .iter()
        .find(|service| service.name == name)
        .unwrap_or_else(|| panic!("service {name} in status: {report:?}"))
}

/// New flows counted on the green backends of a service in `status`.
fn green_new_flows(service: &ServiceStatus) -> u64 {
    service
        .colors
        .iter()
        .filter(|color| color.color.name() == "green")
        .flat_map(|color| &color.backends)
        .map(|backend| backend.new_flows)
        .sum()
}

fn web_with_preview(weight: &str) -> String {
    format!(
        "{}preview = \"{WEB_PREVIEW}\"\n{}preview = \"{WEB6_PREVIEW}\"\n",
        service("web", WEB, "tcp", weight, &BLUE, &GREEN, TCP_PORT),
        service("web6", WEB6, "tcp", weight, &BLUE6, &GREEN6, TCP_PORT),
    )
}

#[test]
fn a_preview_and_the_main_address_share_the_green_backends() {
    if !require_privileges("a_preview_and_the_main_address_share_the_green_backends") {
        return;
    }
    let mut lab = Lab::new("epv");
    lab.write_config(&web_with_preview("0"));
    lab.start_daemon();

    for (name, main, preview) in [("web", WEB, WEB_PREVIEW), ("web6", WEB6, WEB6_PREVIEW)] {
        assert_eq!(lab.split(main, 30), (30, 0), "{name} at weight 0: all blue");
        assert_eq!(
            lab.split(preview, 30),
            (0, 30),
            "{name}'s preview: all green"
        );
        // Now both addresses send new flows to the same green backends.
        lab.cli_ok(&["set-weight", name, "100"]);
        assert_eq!(lab.split(main, 30), (0, 30), "{name} at weight 100");
        assert_eq!(lab.split(preview, 30), (0, 30), "{name}'s preview");
        // Long-lived connections to both addresses at once, on the same backends: every
        // answer comes back over the right address.
        let mut conversations: Vec<_> = (0..4)
            .flat_map(|_| [lab.connect(main), lab.connect(preview)])
            .collect();
        for round in 0..5 {
            for (index, conversation) in conversations.iter_mut().enumerate() {
                let answer = conversation.ask().unwrap_or_else(|error| {
                    panic!(
                        "{name}: conversation {index}, round {round}: {error}\nresets: {}",
                        lab.explain_reset_of(conversation.local_addr())
                    )
                });
                assert_eq!(color_of(&answer), "green", "{name}: {answer}");
            }
        }
        drop(conversations);

        // Counted apart: the preview's flows on its own backend ids, the canary judgement of
        // the service sees only its own (30 at weight 100 plus 4 conversations).
        let status = lab.status();
        let preview_name = format!("{name} (preview)");
        let main_status = find(&status, name);
        let preview_status = find(&status, &preview_name);
        assert_eq!(preview_status.preview_of.as_deref(), Some(name));
        assert_eq!(preview_status.green_weight, 1_000_000);
        assert_eq!(
            green_new_flows(main_status),
            34,
            "{name}: main's green flows"
        );
        assert_eq!(
            green_new_flows(preview_status),
            64,
            "{name}: the preview's flows"
        );
        let metrics = lab.metrics();
        assert_eq!(
            metric(
                &metrics,
                &format!(
                    "splitter_service_preview{{service=\"{preview_name}\",preview_of=\"{name}\"}}"
                )
            ),
            Some(1.0),
            "{metrics}"
        );
        // The preview is not a target of set-weight.
        let refused = lab.cli(&["set-weight", &preview_name, "0"]);
        assert_ne!(refused.code, 0, "set-weight on a preview must be refused");
    }
}

/// A client address added on the client's interface, routed by the router back to it.
fn add_client_net(lab: &Lab, v4: &str, v6: &str) {
    lab.topology.client.addr("eth0", &format!("{v4}/24"));
    lab.topology.client.addr("eth0", &format!("{v6}/64"));
    let net = |address: &str, bits: u8| {
        let prefix = splitter::dataplane::overrides::Prefix {
            addr: address.parse().unwrap(),
            len: bits,
        };
        prefix.masked().to_string()
    };
    lab.topology.router.route(&net(v4, 24), "198.18.0.1");
    lab.topology.router.route(&net(v6, 64), "fd00::1");
}

/// One request to `vip` on a new connection from `source`: the answering backend.
fn request_from(lab: &Lab, source: IpAddr, vip: &str) -> Result<String, String> {
    let vip: SocketAddr = vip.parse().unwrap();
    lab.topology.client.run(move || {
        let socket =
            Socket::new(Domain::for_address(vip), Type::STREAM, None).map_err(|e| e.to_string())?;
        socket
            .bind(&SocketAddr::new(source, 0).into())
            .map_err(|e| e.to_string())?;
        socket
            .connect_timeout(&vip.into(), Duration::from_secs(2))
            .map_err(|e| e.to_string())?;
        splitter_tests::daemon_harness::Conversation::new(socket.into()).ask()
    })
}

fn split_from(lab: &Lab, source: &str, vip: &str, count: usize) -> (usize, usize) {
    let source: IpAddr = source.parse().unwrap();
    let answers: Vec<_> = (0..count).map(|_| request_from(lab, source, vip)).collect();
    if let Some(Err(error)) = answers.iter().find(|answer| answer.is_err()) {
        panic!(
            "a request from {source} to {vip} failed: {error}\nresets: {}\ndaemon log:\n{}",
            lab.explain_resets(),
            lab.daemon_log()
        );
    }
    colors(&answers)
}

const INTERNAL: &str = "198.18.3.1";
const INTERNAL6: &str = "fd00:3::1";

fn web_with_overrides(overrides: &str) -> String {
    format!(
        "{}{}{overrides}",
        service("web", WEB, "tcp", "0", &BLUE, &GREEN, TCP_PORT),
        service("web6", WEB6, "tcp", "0", &BLUE6, &GREEN6, TCP_PORT),
    )
}

#[test]
fn an_internal_prefix_is_always_green_at_weight_zero() {
    if !require_privileges("an_internal_prefix_is_always_green_at_weight_zero") {
        return;
    }
    let mut lab = Lab::new("eov");
    add_client_net(&lab, INTERNAL, INTERNAL6);
    // Each [service.overrides] table belongs to the [[service]] right before it.
    let overrides = |web: &str, web6: &str| {
        format!(
            "{}\n[service.overrides]\n{web}\n{}\n[service.overrides]\n{web6}\n",
            service("web", WEB, "tcp", "0", &BLUE, &GREEN, TCP_PORT),
            service("web6", WEB6, "tcp", "0", &BLUE6, &GREEN6, TCP_PORT),
        )
    };
    lab.write_config(&overrides(
        "green = [\"198.18.3.0/24\"]",
        "green = [\"fd00:3::/64\"]",
    ));
    lab.start_daemon();
    for (vip, internal, outside) in [(WEB, INTERNAL, "198.18.0.1"), (WEB6, INTERNAL6, "fd00::1")] {
        assert_eq!(
            split_from(&lab, internal, vip, 30),
            (0, 30),
            "{internal} → {vip}: the internal prefix is green at weight 0"
        );
        assert_eq!(
            split_from(&lab, outside, vip, 30),
            (30, 0),
            "{outside} → {vip}: the rest stays blue"
        );
    }

    // A reload that changes the lists only (the services stay otherwise unchanged): the
    // internal prefix is not green any more, a blue override elsewhere changes nothing here.
    lab.write_config(&overrides(
        "blue = [\"198.18.99.0/24\"]",
        "blue = [\"fd00:99::/64\"]",
    ));
    lab.cli_ok(&["reload"]);
    for (vip, internal) in [(WEB, INTERNAL), (WEB6, INTERNAL6)] {
        assert_eq!(
            split_from(&lab, internal, vip, 30),
            (30, 0),
            "{internal} → {vip} after the reload: blue like everyone"
        );
    }
    // And without any override at all (the lookup switched off).
    lab.write_config(&web_with_overrides(""));
    lab.cli_ok(&["reload"]);
    lab.cli_ok(&["set-weight", "web", "100"]);
    assert_eq!(
        split_from(&lab, INTERNAL, WEB, 30),
        (0, 30),
        "no overrides, weight 100: green"
    );
}

#[test]
fn a_backend_leaving_one_of_its_services_keeps_that_services_connections() {
    if !require_privileges("a_backend_leaving_one_of_its_services_keeps_that_services_connections")
    {
        return;
    }
    const API: &str = "198.18.100.12:80";
    let mut lab = Lab::new("ert");
    // BLUE[0] serves web and api: its replies are shared.
    let config = |api_blue: &[&str]| {
        format!(
            "{}{}",
            service("web", WEB, "tcp", "0", &BLUE[..1], &GREEN[..1], TCP_PORT),
            service("api", API, "tcp", "0", api_blue, &GREEN[1..], TCP_PORT),
        )
    };
    lab.write_config(&config(&BLUE));
    lab.start_daemon();
    // Open connections to api until a few land on the shared backend (the in-pool hash).
    let shared = format!("{}:{TCP_PORT}", BLUE[0]);
    let mut on_shared = Vec::new();
    for _ in 0..40 {
        let mut conversation = lab.connect(API);
        if conversation.ask().expect("a first answer") == shared {
            on_shared.push(conversation);
        }
        if on_shared.len() == 3 {
            break;
        }
    }
    assert!(
        !on_shared.is_empty(),
        "no api connection landed on {shared}"
    );
    // api gives the shared backend up; web keeps it. api's pinned connections go on to it and
    // their replies must still leave from api's address (a retired candidate).
    lab.write_config(&config(&BLUE[1..]));
    lab.cli_ok(&["reload"]);
    for round in 0..3 {
        for conversation in &mut on_shared {
            let answer = conversation.ask().unwrap_or_else(|error| {
                panic!(
                    "round {round}: {error}\nresets: {}",
                    lab.explain_reset_of(conversation.local_addr())
                )
            });
            assert_eq!(answer, shared, "pinned to its backend");
        }
    }
    // New api connections avoid it; web's still use it, answered from web's address.
    let answers = lab.requests(API, 20);
    assert!(
        answers
            .iter()
            .all(|answer| answer.as_deref() == Ok(&format!("{}:{TCP_PORT}", BLUE[1]))),
        "{answers:?}"
    );
    assert_eq!(lab.split(WEB, 20), (20, 0));
}
