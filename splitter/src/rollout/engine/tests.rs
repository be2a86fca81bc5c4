//! The rollout state machine's unit tests.
use std::time::Duration;

use splitter_common::signals::HANDSHAKE_BUCKETS;

use super::*;
use crate::rollout::analysis::ColorSignals;

fn plan() -> Plan {
    Plan::new(
        &[10.0, 50.0, 100.0],
        Duration::from_secs(1),
        crate::rollout::plan::Thresholds {
            min_flows: 10,
            ..Default::default()
        },
        Vec::new(),
    )
    .unwrap()
}

fn counters(green_ok: u64, green_failed: u64) -> Window {
    let mut buckets = [0; HANDSHAKE_BUCKETS];
    buckets[2] = green_ok;
    let mut blue_buckets = [0; HANDSHAKE_BUCKETS];
    blue_buckets[2] = 1000;
    Window {
        blue: ColorSignals {
            new_flows: 1000,
            handshakes_completed: 1000,
            latency_buckets: blue_buckets,
            ..ColorSignals::default()
        },
        green: ColorSignals {
            new_flows: green_ok + green_failed,
            handshakes_completed: green_ok,
            handshakes_failed: green_failed,
            latency_buckets: buckets,
            ..ColorSignals::default()
        },
    }
}

/// A green canary from 0 % (the stable color blue).
fn start(plan: Plan) -> (Rollout, Action) {
    Rollout::start(
        "web",
        plan,
        Start {
            canary: ColorName::Green,
            current_weight: 0,
            from_current: false,
        },
        0,
        Window::default(),
    )
    .unwrap()
}

/// `counters` with the colors swapped: the canary's numbers on blue.
fn blue_canary_counters(canary_ok: u64, canary_failed: u64) -> Window {
    let w = counters(canary_ok, canary_failed);
    Window {
        blue: w.green,
        green: w.blue,
    }
}

#[test]
fn a_blue_canary_lowers_greens_weight_step_by_step_and_aborts_to_where_it_started() {
    let begin = Start {
        canary: ColorName::Blue,
        current_weight: WEIGHT_SCALE,
        from_current: false,
    };
    let (mut r, action) = Rollout::start("web", plan(), begin, 0, Window::default()).unwrap();
    assert_eq!(action, Action::SetWeight(900_000), "10% to blue");
    assert_eq!(r.stable(), ColorName::Green);
    assert_eq!(r.next_weight(), Some(500_000));
    assert_eq!(
        r.tick(1000, &blue_canary_counters(50, 0), &Checks::Pass),
        Action::SetWeight(500_000)
    );
    // Blue refuses: judged as the canary (green's numbers are healthy), back to 100 % green.
    assert_eq!(
        r.tick(1100, &blue_canary_counters(55, 30), &Checks::Pass),
        Action::SetWeight(WEIGHT_SCALE)
    );
    assert_eq!(r.phase, Phase::Aborted);
    assert_eq!(r.weight(), WEIGHT_SCALE);
    let last = r.last_decision().unwrap();
    assert!(
        last.reason.starts_with("blue failure ratio"),
        "{}",
        last.reason
    );
    assert_eq!((last.from_weight, last.to_weight), (500_000, WEIGHT_SCALE));
    // A healthy blue canary walks to 0 % green.
    let (mut r, _) = Rollout::start("web", plan(), begin, 0, Window::default()).unwrap();
    r.tick(1000, &blue_canary_counters(50, 0), &Checks::Pass);
    assert_eq!(
        r.tick(2000, &blue_canary_counters(100, 0), &Checks::Pass),
        Action::SetWeight(0)
    );
    r.tick(3000, &blue_canary_counters(150, 0), &Checks::Pass);
    assert_eq!(r.phase, Phase::Completed);
}

#[test]
fn a_canary_that_already_carries_traffic_needs_from_current() {
    let begin = Start {
        canary: ColorName::Green,
        current_weight: 300_000,
        from_current: false,
    };
    let error = Rollout::start("web", plan(), begin, 0, Window::default()).unwrap_err();
    assert!(error.to_string().contains("--from-current"), "{error}");
    assert!(error.to_string().contains("30%"), "{error}");
    let (mut r, action) = Rollout::start(
        "web",
        plan(),
        Start {
            from_current: true,
            ..begin
        },
        0,
        Window::default(),
    )
    .unwrap();
    assert_eq!(action, Action::SetWeight(500_000), "10% skipped: below 30%");
    assert_eq!(r.plan.steps, [500_000, 1_000_000]);
    assert_eq!(r.abort(10, "operator"), Action::SetWeight(300_000));
    let full = Start {
        current_weight: WEIGHT_SCALE,
        from_current: true,
        ..begin
    };
    assert!(matches!(
        Rollout::start("web", plan(), full, 0, Window::default()),
        Err(StartError::NothingLeft { .. })
    ));
    // A blue canary while blue has everything: refused without the flag too.
    let all_blue = Start {
        canary: ColorName::Blue,
        current_weight: 0,
        from_current: false,
    };
    assert!(matches!(
        Rollout::start("web", plan(), all_blue, 0, Window::default()),
        Err(StartError::CanaryCarriesTraffic { .. })
    ));
}

#[test]
fn healthy_rollout_walks_every_step_to_completion() {
    let (mut r, action) = start(plan());
    assert_eq!(action, Action::SetWeight(100_000));
    assert_eq!(
        r.tick(500, &counters(50, 0), &Checks::Pass),
        Action::None,
        "not due"
    );
    assert_eq!(
        r.tick(1000, &counters(50, 0), &Checks::Pass),
        Action::SetWeight(500_000)
    );
    assert_eq!(
        r.tick(2000, &counters(100, 0), &Checks::Pass),
        Action::SetWeight(1_000_000)
    );
    assert_eq!(r.tick(3000, &counters(150, 0), &Checks::Pass), Action::None);
    assert_eq!(r.phase, Phase::Completed);
    let actions: Vec<&str> = r.history.iter().map(|d| d.action.as_str()).collect();
    assert_eq!(actions, ["start", "advance", "advance", "complete"]);
}

#[test]
fn failing_green_aborts_on_the_next_tick() {
    let (mut r, _) = start(plan());
    assert_eq!(
        r.tick(300, &counters(5, 20), &Checks::Pass),
        Action::SetWeight(0)
    );
    assert_eq!(r.phase, Phase::Aborted);
    assert_eq!(r.weight(), 0);
    assert!(r.last_decision().unwrap().reason.contains("failure ratio"));
}

#[test]
fn low_traffic_holds_and_never_advances() {
    let (mut r, _) = start(plan());
    for t in 1..10 {
        assert_eq!(
            r.tick(t * 1000, &counters(3, 0), &Checks::Pass),
            Action::None
        );
    }
    assert_eq!(r.step, 0);
    assert_eq!(r.phase, Phase::Running);
    assert_eq!(r.last_decision().unwrap().action, "hold");
    // Enough traffic later: the grown window passes.
    assert_eq!(
        r.tick(11_000, &counters(12, 0), &Checks::Pass),
        Action::SetWeight(500_000)
    );
}

#[test]
fn external_check_failure_aborts_and_unknown_holds() {
    let (mut r, _) = start(plan());
    let unknown = Checks::Unknown("prometheus unreachable".into());
    assert_eq!(r.tick(1000, &counters(50, 0), &unknown), Action::None);
    let failed = Checks::Fail("5xx ratio 0.2 > 0.01".into());
    assert_eq!(
        r.tick(1100, &counters(50, 0), &failed),
        Action::SetWeight(0)
    );
}

#[test]
fn operator_controls() {
    let (mut r, _) = start(plan());
    r.pause(100, "operator");
    assert_eq!(r.tick(5000, &counters(50, 0), &Checks::Pass), Action::None);
    assert_eq!(
        r.resume(5000, counters(50, 0), "operator"),
        Action::SetWeight(100_000)
    );
    assert_eq!(
        r.promote(5100, counters(50, 0), false),
        Action::SetWeight(500_000)
    );
    assert_eq!(
        r.promote(5200, counters(50, 0), true),
        Action::SetWeight(1_000_000)
    );
    assert_eq!(r.phase, Phase::Completed);
    let (mut r, _) = start(plan());
    assert_eq!(r.abort(10, "operator"), Action::SetWeight(0));
}
