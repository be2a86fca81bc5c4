use super::*;

const GOOD: &str = r#"
[dataplane]
interfaces = ["eth0"]

[[service]]
name = "web"
address = "203.0.113.10:80"
green_weight = 10
blue = ["10.1.0.10:8080", "10.1.0.11:8080"]
green = ["10.2.0.10:8080"]
"#;

fn check(text: &str) -> Result<Validated, ConfigError> {
    Config::parse(Path::new("test.toml"), text)?
        .validate_with(&|name| matches!(name, "eth0" | "eth1"))
}

/// `GOOD` with `from` replaced by `to` (each case must change something).
fn edit(from: &str, to: &str) -> String {
    assert!(GOOD.contains(from), "`{from}` is not in the good config");
    GOOD.replacen(from, to, 1)
}

fn with_service(extra: &str) -> String {
    format!("{GOOD}\n[[service]]\n{extra}")
}

#[test]
fn good_config_and_defaults() {
    let config = check(GOOD).expect("valid");
    assert_eq!(config.interfaces, ["eth0"]);
    assert_eq!(config.xdp_mode, XdpMode::Auto);
    assert_eq!(config.flow_table_size, DEFAULT_FLOW_TABLE_SIZE);
    assert_eq!(
        config.hash_seed, None,
        "no hash_seed: a random one at the first start"
    );
    assert_eq!(config.miss_hold, DEFAULT_MISS_HOLD);
    assert_eq!(config.handshake_timeout, Duration::from_millis(500));
    assert_eq!(config.pending_table_size, DEFAULT_FLOW_TABLE_SIZE / 4);
    assert_eq!(config.udp_idle_timeout, Duration::from_secs(30));
    assert!(config.redirect_interfaces.is_empty());
    assert_eq!(config.socket, Path::new(DEFAULT_SOCKET));
    assert_eq!(config.metrics, DEFAULT_METRICS.parse().unwrap());
    assert_eq!(config.state_dir, Path::new(DEFAULT_STATE_DIR));
    assert_eq!(config.bpffs, Path::new(DEFAULT_BPFFS));
    let web = &config.services[0];
    assert_eq!(web.green_weight, 100_000);
    assert_eq!(web.protocol, Protocol::Tcp);
    assert_eq!(web.cohort, CohortSetting::Flow);
    assert_eq!(web.blue.len(), 2);
}

#[test]
fn the_example_config_is_valid() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/splitter.toml");
    let config = Config::read(&path).expect("examples/splitter.toml parses");
    config
        .validate_with(&|_| true)
        .expect("examples/splitter.toml is valid");
}

#[test]
fn weights_in_percent_become_parts_per_million() {
    for (text, ppm) in [
        ("0", 0),
        ("100", 1_000_000),
        ("12.5", 125_000),
        ("0.0001", 1),
        ("33.3333", 333_333),
        ("99.9999", 999_999),
    ] {
        let config = check(&edit(
            "green_weight = 10",
            &format!("green_weight = {text}"),
        ))
        .unwrap_or_else(|e| panic!("{text}: {e}"));
        assert_eq!(config.services[0].green_weight, ppm, "{text}");
    }
}

/// Every bad file, with the exact one-line message the operator sees.
#[test]
#[expect(clippy::too_many_lines, reason = "a table of cases")]
fn bad_files_are_refused_with_a_message_naming_the_field() {
    let cases: Vec<(&str, String, &str)> = vec![
        (
            "TOML syntax",
            "[dataplane\ninterfaces = [\"eth0\"]".into(),
            "test.toml: line 1, column 11: unclosed table, expected `]`",
        ),
        (
            "unknown top-level key",
            format!("extra = 1\n{GOOD}"),
            "test.toml: line 1, column 1: extra: unknown field `extra`, expected one of `dataplane`, `control`, `service`, `fleet`",
        ),
        (
            "unknown key in [dataplane]",
            edit(
                "interfaces = [\"eth0\"]",
                "interfaces = [\"eth0\"]\nxdp = \"native\"",
            ),
            "test.toml: line 4, column 1: dataplane.xdp: unknown field `xdp`, expected one of `interfaces`, `xdp_mode`, `flow_table_size`, `pending_table_size`, `udp_idle_timeout`, `hash_seed`, `miss_hold`, `handshake_timeout`, `redirect_interfaces`",
        ),
        (
            "unknown key in a service (typo)",
            edit("green_weight = 10", "green_weight = 10\ngreen_wieght = 20"),
            "test.toml: line 9, column 1: service[0].green_wieght: unknown field `green_wieght`, expected one of `name`, `address`, `protocol`, `green_weight`, `cohort`, `client_prefix`, `blue`, `green`, `blue_release`, `green_release`, `rollout`, `preview`, `overrides`, `health`, `outlier`",
        ),
        (
            "rollout steps not increasing",
            format!("{GOOD}\n[service.rollout]\nsteps = [10, 5]\n"),
            "service `web`: rollout: rollout steps must increase: 10% then 5%",
        ),
        (
            "rollout step above 100",
            format!("{GOOD}\n[service.rollout]\nsteps = [50, 150]\n"),
            "service `web`: rollout: rollout step 150% is not a weight in (0, 100]",
        ),
        (
            "rollout step duration zero",
            format!("{GOOD}\n[service.rollout]\nevery = \"0s\"\n"),
            "service `web`: rollout: every: rollout step duration must be at least 100ms (got 0ms)",
        ),
        (
            "rollout duration not a duration",
            format!("{GOOD}\n[service.rollout]\nevery = \"soon\"\n"),
            "service `web`: rollout: every: `soon` is not a duration (e.g. \"60s\", \"500ms\", \"5m\")",
        ),
        (
            "rollout min_flows zero",
            format!("{GOOD}\n[service.rollout]\nmin_flows = 0\n"),
            "service `web`: rollout: min_flows must be at least 1: a step judged on no traffic would pass blindly",
        ),
        (
            "missing [dataplane]",
            GOOD.replace("[dataplane]\ninterfaces = [\"eth0\"]\n", ""),
            "test.toml: line 1, column 1: missing field `dataplane`",
        ),
        (
            "missing service address",
            edit("address = \"203.0.113.10:80\"\n", ""),
            "test.toml: line 5, column 1: service[0]: missing field `address`",
        ),
        (
            "weight as a string",
            edit("green_weight = 10", "green_weight = \"10%\""),
            "test.toml: line 8, column 16: service[0].green_weight: invalid type: string \"10%\", expected f64",
        ),
        (
            "bad xdp_mode",
            edit(
                "interfaces = [\"eth0\"]",
                "interfaces = [\"eth0\"]\nxdp_mode = \"turbo\"",
            ),
            "test.toml: line 4, column 12: dataplane.xdp_mode: unknown variant `turbo`, expected one of `auto`, `native`, `generic`",
        ),
        (
            "bad protocol",
            edit(
                "green_weight = 10",
                "green_weight = 10\nprotocol = \"sctp\"",
            ),
            "test.toml: line 9, column 12: service[0].protocol: unknown variant `sctp`, expected `tcp` or `udp`",
        ),
        (
            "bad cohort",
            edit("green_weight = 10", "green_weight = 10\ncohort = \"user\""),
            "test.toml: line 9, column 10: service[0].cohort: unknown variant `user`, expected `flow` or `client`",
        ),
        (
            "hash_seed out of range",
            edit(
                "interfaces = [\"eth0\"]",
                "interfaces = [\"eth0\"]\nhash_seed = -1",
            ),
            "test.toml: line 4, column 13: dataplane.hash_seed: invalid value: integer `-1`, expected u32",
        ),
        (
            "no interface",
            edit("interfaces = [\"eth0\"]", "interfaces = []"),
            "dataplane.interfaces: at least one interface is needed",
        ),
        (
            "unknown interface",
            edit(
                "interfaces = [\"eth0\"]",
                "interfaces = [\"eth0\", \"eth9\"]",
            ),
            "dataplane.interfaces: no interface `eth9` on this host",
        ),
        (
            "interface listed twice",
            edit(
                "interfaces = [\"eth0\"]",
                "interfaces = [\"eth0\", \"eth0\"]",
            ),
            "dataplane.interfaces: `eth0` is listed twice",
        ),
        (
            "interface name too long",
            edit(
                "interfaces = [\"eth0\"]",
                "interfaces = [\"a-very-long-interface\"]",
            ),
            "dataplane.interfaces: `a-very-long-interface` is not a valid interface name",
        ),
        (
            "flow table too small",
            edit(
                "interfaces = [\"eth0\"]",
                "interfaces = [\"eth0\"]\nflow_table_size = 10",
            ),
            "dataplane.flow_table_size: 10 is outside 1024..=16777216 entries",
        ),
        (
            "bad miss_hold",
            edit(
                "interfaces = [\"eth0\"]",
                "interfaces = [\"eth0\"]\nmiss_hold = \"a while\"",
            ),
            "dataplane.miss_hold: `a while` is not a duration like \"60s\", \"500ms\" or \"5m\" (at most 24h)",
        ),
        (
            "pending table too small",
            edit(
                "interfaces = [\"eth0\"]",
                "interfaces = [\"eth0\"]\npending_table_size = 10",
            ),
            "dataplane.pending_table_size: 10 is outside 256..=16777216 entries",
        ),
        (
            "bad udp_idle_timeout",
            edit(
                "interfaces = [\"eth0\"]",
                "interfaces = [\"eth0\"]\nudp_idle_timeout = \"10ms\"",
            ),
            "dataplane.udp_idle_timeout: `10ms` is not a duration between 100ms and 24h like \"30s\"",
        ),
        (
            "bad handshake_timeout",
            edit(
                "interfaces = [\"eth0\"]",
                "interfaces = [\"eth0\"]\nhandshake_timeout = \"0ms\"",
            ),
            "dataplane.handshake_timeout: `0ms` is not a duration between 1ms and 60s like \"500ms\"",
        ),
        (
            "unknown redirect interface",
            edit(
                "interfaces = [\"eth0\"]",
                "interfaces = [\"eth0\"]\nredirect_interfaces = [\"eth1\", \"eth7\"]",
            ),
            "dataplane.redirect_interfaces: no interface `eth7` on this host",
        ),
        (
            "relative bpffs path",
            format!("{GOOD}\n[control]\nbpffs = \"bpf/splitter\""),
            "control.bpffs: `bpf/splitter` must be an absolute path",
        ),
        (
            "bad metrics address",
            format!("{GOOD}\n[control]\nmetrics = \"localhost\""),
            "control.metrics: `localhost` is not an IP:port address",
        ),
        (
            "weight above 100",
            edit("green_weight = 10", "green_weight = 150"),
            "service `web`: green_weight 150 is outside 0..=100 (percent of new flows)",
        ),
        (
            "negative weight",
            edit("green_weight = 10", "green_weight = -1"),
            "service `web`: green_weight -1 is outside 0..=100 (percent of new flows)",
        ),
        (
            "weight finer than supported",
            edit("green_weight = 10", "green_weight = 12.00001"),
            "service `web`: green_weight 12.00001 is finer than 0.0001 percent",
        ),
        (
            "empty blue pool",
            edit(
                "blue = [\"10.1.0.10:8080\", \"10.1.0.11:8080\"]",
                "blue = []",
            ),
            "service `web`: blue has no backend (each color needs at least one)",
        ),
        (
            "empty green pool",
            edit("green = [\"10.2.0.10:8080\"]", "green = []"),
            "service `web`: green has no backend (each color needs at least one)",
        ),
        (
            "bad service address",
            edit("203.0.113.10:80", "203.0.113.300:80"),
            "service `web`: address `203.0.113.300:80` is not an IP:port address",
        ),
        (
            "service address without port",
            edit("203.0.113.10:80", "203.0.113.10"),
            "service `web`: address `203.0.113.10` is not an IP:port address",
        ),
        (
            "backend port 0",
            edit("10.2.0.10:8080", "10.2.0.10:0"),
            "service `web`: green[0] `10.2.0.10:0` has port 0",
        ),
        (
            "bad backend address",
            edit("10.1.0.11:8080", "backend-2:8080"),
            "service `web`: blue[1] `backend-2:8080` is not an IP:port address",
        ),
        (
            "backend equal to the service address",
            edit("10.2.0.10:8080", "203.0.113.10:80"),
            "service `web`: green[0] 203.0.113.10:80 is the service address itself",
        ),
        (
            "IPv6 backend for an IPv4 service",
            edit("10.2.0.10:8080", "[2001:db8::20]:8080"),
            "service `web`: green[0] [2001:db8::20]:8080 is not the same IP family as the service address",
        ),
        (
            "backend in both colors",
            edit("10.2.0.10:8080", "10.1.0.10:8080"),
            "service `web`: green[0] 10.1.0.10:8080 is listed twice in the service",
        ),
        (
            "empty service name",
            edit("name = \"web\"", "name = \"\""),
            "service[0].name: `` must be 1-64 letters, digits, `-`, `_` or `.`",
        ),
        (
            "service name with a space",
            edit("name = \"web\"", "name = \"web app\""),
            "service[0].name: `web app` must be 1-64 letters, digits, `-`, `_` or `.`",
        ),
        (
            "duplicate service name",
            with_service(
                "name = \"web\"\naddress = \"203.0.113.11:80\"\ngreen_weight = 0\nblue = [\"10.1.1.10:80\"]\ngreen = [\"10.2.1.10:80\"]",
            ),
            "service[1].name: `web` is already used by service[0]",
        ),
        (
            "duplicate service address",
            with_service(
                "name = \"api\"\naddress = \"203.0.113.10:80\"\ngreen_weight = 0\nblue = [\"10.1.1.10:80\"]\ngreen = [\"10.2.1.10:80\"]",
            ),
            "service `api`: address 203.0.113.10:80/tcp is already used by service `web`",
        ),
        (
            "backend that is another service's address",
            with_service(
                "name = \"api\"\naddress = \"203.0.113.11:80\"\ngreen_weight = 0\nblue = [\"203.0.113.10:80\"]\ngreen = [\"10.2.1.10:80\"]",
            ),
            "service `api`: blue[0] 203.0.113.10:80 is the address of service `web`",
        ),
    ];
    assert!(cases.len() >= 20);
    let mut wrong = Vec::new();
    for (what, text, expected) in cases {
        match check(&text) {
            Ok(_) => wrong.push(format!("{what}: accepted, expected `{expected}`")),
            Err(error) => {
                let message = error.to_string();
                if message != expected || message.contains('\n') {
                    wrong.push(format!(
                        "{what}:\n  got      {message}\n  expected {expected}"
                    ));
                }
            }
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

#[test]
fn same_backend_for_tcp_and_udp_services_is_allowed() {
    let text = with_service(
        "name = \"dns\"\naddress = \"203.0.113.10:80\"\nprotocol = \"udp\"\ngreen_weight = 0\nblue = [\"10.1.0.10:8080\"]\ngreen = [\"10.2.0.10:8080\"]",
    );
    check(&text).expect("tcp and udp on the same address and backends are distinct");
}

/// `[service.rollout]` takes the threshold keys (with their defaults) and nothing else.
#[test]
#[expect(clippy::float_cmp, reason = "values read from the file, not computed")]
fn rollout_section_thresholds_and_unknown_keys() {
    let config = check(&format!(
        "{GOOD}\n[service.rollout]\nevery = \"1m30s\"\nmax_failure_ratio = 1\nmin_flows = 7\n"
    ))
    .expect("valid");
    let plan = &config.services[0].rollout;
    assert_eq!(plan.every, Duration::from_secs(90));
    assert_eq!(plan.thresholds.max_failure_ratio, 1.0);
    assert_eq!(plan.thresholds.min_flows, 7);
    assert_eq!(
        plan.thresholds.failure_tolerance,
        crate::rollout::plan::DEFAULT_FAILURE_TOLERANCE
    );
    let error = check(&format!("{GOOD}\n[service.rollout]\nmin_flow = 7\n")).unwrap_err();
    assert!(
        error.to_string().contains("unknown field `min_flow`"),
        "{error}"
    );
}

/// Inputs that used to pass validation and break later (issue 12): each is refused, and the
/// message names the key (the full messages are checked where they are ours).
#[test]
#[expect(clippy::too_many_lines, reason = "one table of cases")]
fn bad_day_configs_are_refused_naming_the_key() {
    let rollout = |body: &str| format!("{GOOD}\n[service.rollout]\n{body}\n");
    let check_with_bound = |bound: &str| {
        rollout(&format!(
            "[[service.rollout.checks]]\nprometheus = \"http://127.0.0.1:9090\"\nquery = \"up\"\nbound = {{ max = {bound} }}"
        ))
    };
    let cases: Vec<(&str, String, &str)> = vec![
        (
            "unspecified IPv4 VIP",
            edit("203.0.113.10:80", "0.0.0.0:80"),
            "service `web`: address `0.0.0.0:80` is the unspecified address",
        ),
        (
            "unspecified IPv6 VIP",
            edit(
                "address = \"203.0.113.10:80\"\ngreen_weight = 10\nblue = [\"10.1.0.10:8080\", \"10.1.0.11:8080\"]\ngreen = [\"10.2.0.10:8080\"]",
                "address = \"[::]:80\"\ngreen_weight = 10\nblue = [\"[fd00::10]:8080\"]\ngreen = [\"[fd00::20]:8080\"]",
            ),
            "service `web`: address `[::]:80` is the unspecified address",
        ),
        (
            "multicast VIP",
            edit("203.0.113.10:80", "224.0.0.1:80"),
            "service `web`: address `224.0.0.1:80` is a multicast address",
        ),
        (
            "broadcast VIP",
            edit("203.0.113.10:80", "255.255.255.255:80"),
            "service `web`: address `255.255.255.255:80` is the broadcast address",
        ),
        (
            "multicast backend",
            edit("10.1.0.10:8080", "239.1.2.3:8080"),
            "service `web`: blue[0] `239.1.2.3:8080` is a multicast address",
        ),
        (
            "unspecified backend",
            edit("10.2.0.10:8080", "0.0.0.0:8080"),
            "service `web`: green[0] `0.0.0.0:8080` is the unspecified address",
        ),
        (
            "broadcast backend",
            edit("10.1.0.11:8080", "255.255.255.255:8080"),
            "service `web`: blue[1] `255.255.255.255:8080` is the broadcast address",
        ),
        (
            "infinite check bound",
            check_with_bound("inf"),
            "service `web`: rollout: checks[0].bound: inf is not a finite number (check `up`)",
        ),
        (
            "NaN check bound",
            check_with_bound("nan"),
            "service `web`: rollout: checks[0].bound: NaN is not a finite number (check `up`)",
        ),
        (
            "huge step duration",
            rollout("every = \"100000h\""),
            "service `web`: rollout: every: rollout step duration must be at most 7 days (got 360000000000ms)",
        ),
        (
            "step duration beyond any clock",
            rollout("every = \"99999999999999999999s\""),
            "service `web`: rollout: every: `99999999999999999999s` is not a duration (e.g. \"60s\", \"500ms\", \"5m\")",
        ),
        (
            "infinite tolerance",
            rollout("failure_tolerance = inf"),
            "service `web`: rollout: failure_tolerance must be a finite number ≥ 0 (got inf)",
        ),
        (
            "NaN failure ratio",
            rollout("max_failure_ratio = nan"),
            "service `web`: rollout: max_failure_ratio must be in [0, 1] (got NaN)",
        ),
        (
            "NaN weight",
            edit("green_weight = 10", "green_weight = nan"),
            "service `web`: green_weight NaN is outside 0..=100 (percent of new flows)",
        ),
        (
            "huge miss_hold",
            edit(
                "interfaces = [\"eth0\"]",
                "interfaces = [\"eth0\"]\nmiss_hold = \"100000000000h\"",
            ),
            "dataplane.miss_hold: `100000000000h` is not a duration like \"60s\", \"500ms\" or \"5m\" (at most 24h)",
        ),
        (
            "weight as a word",
            edit("green_weight = 10", "green_weight = \"ten\""),
            "service[0].green_weight: invalid type: string \"ten\", expected f64",
        ),
        (
            "flow table size as a string",
            edit(
                "interfaces = [\"eth0\"]",
                "interfaces = [\"eth0\"]\nflow_table_size = \"big\"",
            ),
            "dataplane.flow_table_size: invalid type: string \"big\"",
        ),
        (
            "interfaces as a string",
            edit("interfaces = [\"eth0\"]", "interfaces = \"eth0\""),
            "dataplane.interfaces: invalid type: string \"eth0\", expected a sequence",
        ),
        (
            "zero control connections",
            format!("{GOOD}\n[control]\nmax_connections = 0\n"),
            "control.max_connections: 0 is outside 1..=65536",
        ),
        (
            "client timeout of zero",
            format!("{GOOD}\n[control]\nclient_timeout = \"0s\"\n"),
            "control.client_timeout: `0s` is not a duration between 1s and 1h like \"60s\"",
        ),
    ];
    assert!(cases.len() >= 15);
    let mut wrong = Vec::new();
    for (what, text, expected) in cases {
        match check(&text) {
            Ok(_) => wrong.push(format!("{what}: accepted, expected `{expected}`")),
            Err(error) => {
                let message = error.to_string();
                if !message.contains(expected) {
                    wrong.push(format!(
                        "{what}:\n  got      {message}\n  expected {expected}"
                    ));
                }
            }
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

/// `check-config` lists every problem of the file, not just the first.
#[test]
fn every_problem_is_reported() {
    let text = edit("203.0.113.10:80", "0.0.0.0:80")
        .replace("green_weight = 10", "green_weight = 150")
        .replace("10.2.0.10:8080", "224.1.1.1:8080")
        .replace(
            "interfaces = [\"eth0\"]",
            "interfaces = [\"eth0\"]\nmiss_hold = \"forever\"",
        );
    let problems = Config::parse(Path::new("test.toml"), &text)
        .unwrap()
        .validate_all(&|name| name == "eth0")
        .unwrap_err();
    let messages: Vec<String> = problems.iter().map(ToString::to_string).collect();
    assert_eq!(
        messages,
        [
            "dataplane.miss_hold: `forever` is not a duration like \"60s\", \"500ms\" or \"5m\" (at most 24h)",
            "service `web`: address `0.0.0.0:80` is the unspecified address: only a specified unicast address can be a service address or backend",
        ],
        "the service address stops that service's checks; the rest are independent"
    );
    // Without the bad address, its weight and backend problems are all listed.
    let text = text.replace("0.0.0.0:80", "203.0.113.10:80");
    let problems = Config::parse(Path::new("test.toml"), &text)
        .unwrap()
        .validate_all(&|name| name == "eth0")
        .unwrap_err();
    assert_eq!(problems.len(), 3, "{problems:?}");
}
