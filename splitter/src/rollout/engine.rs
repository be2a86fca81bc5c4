//! The rollout state machine. The daemon calls [`Rollout::tick`] with the service's counters
//! (absolute, per color) and applies the [`Action`] it returns; every decision that changes
//! something (or holds at the end of a window) is a [`Decision`] the daemon logs as one line.
//! Plain data: the daemon persists it after each change, and a restarted daemon resumes a
//! running rollout from its step with a fresh analysis window (`resume_after_restart`).

use serde::{Deserialize, Serialize};

use super::{
    analysis::{ColorSignals, Verdict, Window, judge},
    plan::Plan,
};
use crate::units::ppm_to_percent;

/// How many decisions a rollout keeps for `rollout status`.
const HISTORY: usize = 32;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    Running,
    Paused,
    /// Green reached the last step.
    Completed,
    /// Rolled back: green's weight is 0.
    Aborted,
}

/// What the daemon must do after a tick.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    None,
    /// Write this green weight (parts per million) in one map update and persist it.
    SetWeight(u32),
}

/// One logged decision, with the numbers that decided it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Decision {
    pub at_unix_ms: u64,
    /// advance | hold | abort | complete | start | pause | resume | promote
    pub action: String,
    pub from_weight: u32,
    pub to_weight: u32,
    pub reason: String,
    pub green: Summary,
    pub blue: Summary,
}

/// A color's window in numbers a person reads.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    pub new_flows: u64,
    pub handshakes: u64,
    pub failures: u64,
    pub failure_ratio: f64,
    /// Seconds; `None` without completed handshakes.
    pub handshake_p99: Option<f64>,
}

impl From<&ColorSignals> for Summary {
    fn from(c: &ColorSignals) -> Self {
        Self {
            new_flows: c.new_flows,
            handshakes: c.attempts(),
            failures: c.handshakes_failed + c.established_resets,
            failure_ratio: c.failure_ratio(),
            handshake_p99: c.latency_quantile(0.99),
        }
    }
}

/// What the external checks said this tick.
#[derive(Clone, Debug, Default, PartialEq)]
pub enum Checks {
    /// No checks, or all within bounds.
    #[default]
    Pass,
    /// A check could not be evaluated (unreachable, no data): hold.
    Unknown(String),
    /// A check is out of bounds: abort.
    Fail(String),
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Rollout {
    pub service: String,
    pub plan: Plan,
    /// Index in `plan.steps` of the weight in force.
    pub step: usize,
    pub phase: Phase,
    pub started_unix_ms: u64,
    pub step_started_unix_ms: u64,
    /// The counters when the current window began.
    pub baseline: Window,
    /// The window as of the last tick (for status).
    pub window: Window,
    /// End of the last window that held (so a hold is logged once per window).
    pub held_until_unix_ms: u64,
    pub history: Vec<Decision>,
}

impl Rollout {
    /// Starts at the first step.
    pub fn start(
        service: &str,
        plan: Plan,
        current_weight: u32,
        now_unix_ms: u64,
        counters: Window,
    ) -> (Self, Action) {
        let first = plan.steps[0];
        let mut rollout = Self {
            service: service.to_owned(),
            plan,
            step: 0,
            phase: Phase::Running,
            started_unix_ms: now_unix_ms,
            step_started_unix_ms: now_unix_ms,
            baseline: counters,
            window: Window::default(),
            held_until_unix_ms: now_unix_ms,
            history: Vec::new(),
        };
        rollout.record(
            now_unix_ms,
            "start",
            current_weight,
            first,
            "rollout started".into(),
        );
        (rollout, Action::SetWeight(first))
    }

    pub fn weight(&self) -> u32 {
        match self.phase {
            Phase::Aborted => 0,
            _ => self.plan.steps[self.step],
        }
    }

    /// The weight after this step, if any.
    pub fn next_weight(&self) -> Option<u32> {
        self.plan.steps.get(self.step + 1).copied()
    }

    /// Milliseconds left in the current step's window (0 when due or holding).
    pub fn time_left_ms(&self, now_unix_ms: u64) -> u64 {
        let due = self
            .step_started_unix_ms
            .saturating_add(crate::units::millis(self.plan.every));
        due.saturating_sub(now_unix_ms)
    }

    pub fn last_decision(&self) -> Option<&Decision> {
        self.history.last()
    }

    fn record(&mut self, at: u64, action: &str, from: u32, to: u32, reason: String) {
        let decision = Decision {
            at_unix_ms: at,
            action: action.to_owned(),
            from_weight: from,
            to_weight: to,
            reason,
            green: Summary::from(&self.window.green),
            blue: Summary::from(&self.window.blue),
        };
        if self.history.len() == HISTORY {
            self.history.remove(0);
        }
        self.history.push(decision);
    }

    fn new_window(&mut self, now_unix_ms: u64, counters: &Window) {
        self.baseline = *counters;
        self.window = Window::default();
        self.step_started_unix_ms = now_unix_ms;
        self.held_until_unix_ms = now_unix_ms;
    }

    /// One analysis tick. Failures abort at once (any tick); a step advances only when its
    /// window has run `plan.every` and passes; too few green samples hold (the window keeps
    /// growing until there are enough).
    pub fn tick(&mut self, now_unix_ms: u64, counters: &Window, checks: &Checks) -> Action {
        if self.phase != Phase::Running {
            return Action::None;
        }
        self.window = Window {
            blue: counters.blue.since(&self.baseline.blue),
            green: counters.green.since(&self.baseline.green),
        };
        let weight = self.weight();
        let verdict = match (judge(&self.plan, &self.window), checks) {
            (fail @ Verdict::Fail { .. }, _) => fail,
            (_, Checks::Fail(reason)) => Verdict::Fail {
                reason: reason.clone(),
            },
            (hold @ Verdict::Hold { .. }, _) => hold,
            (_, Checks::Unknown(reason)) => Verdict::Hold {
                reason: reason.clone(),
            },
            (Verdict::Pass, Checks::Pass) => Verdict::Pass,
        };
        if let Verdict::Fail { reason } = verdict {
            self.phase = Phase::Aborted;
            self.record(now_unix_ms, "abort", weight, 0, reason);
            return Action::SetWeight(0);
        }
        let due = self
            .step_started_unix_ms
            .saturating_add(crate::units::millis(self.plan.every));
        if now_unix_ms < due {
            return Action::None;
        }
        match verdict {
            Verdict::Hold { reason } => {
                if now_unix_ms
                    >= self
                        .held_until_unix_ms
                        .saturating_add(crate::units::millis(self.plan.every))
                    || self.held_until_unix_ms < due
                {
                    self.held_until_unix_ms = now_unix_ms;
                    self.record(now_unix_ms, "hold", weight, weight, reason);
                }
                Action::None
            }
            _ => match self.next_weight() {
                Some(next) => {
                    self.record(now_unix_ms, "advance", weight, next, "window passed".into());
                    self.step += 1;
                    self.new_window(now_unix_ms, counters);
                    Action::SetWeight(next)
                }
                None => {
                    self.phase = Phase::Completed;
                    self.record(
                        now_unix_ms,
                        "complete",
                        weight,
                        weight,
                        "last step passed".into(),
                    );
                    Action::None
                }
            },
        }
    }

    pub fn pause(&mut self, now_unix_ms: u64, why: &str) -> Action {
        if self.phase == Phase::Running {
            self.phase = Phase::Paused;
            let weight = self.weight();
            self.record(now_unix_ms, "pause", weight, weight, why.to_owned());
        }
        Action::None
    }

    /// Resumes a paused rollout at its step, with a fresh window.
    pub fn resume(&mut self, now_unix_ms: u64, counters: Window, why: &str) -> Action {
        if !matches!(self.phase, Phase::Paused | Phase::Running) {
            return Action::None;
        }
        self.phase = Phase::Running;
        self.new_window(now_unix_ms, &counters);
        let weight = self.weight();
        self.record(now_unix_ms, "resume", weight, weight, why.to_owned());
        Action::SetWeight(weight)
    }

    /// Moves on without waiting for the analysis: to the next step, or (`full`) to the last.
    pub fn promote(&mut self, now_unix_ms: u64, counters: Window, full: bool) -> Action {
        if matches!(self.phase, Phase::Completed | Phase::Aborted) {
            return Action::None;
        }
        let from = self.weight();
        let last = self.plan.steps.len() - 1;
        self.step = if full {
            last
        } else {
            (self.step + 1).min(last)
        };
        let to = self.weight();
        self.phase = if self.step == last {
            Phase::Completed
        } else {
            Phase::Running
        };
        self.new_window(now_unix_ms, &counters);
        self.record(
            now_unix_ms,
            "promote",
            from,
            to,
            format!("promoted by the operator to {}%", ppm_to_percent(to)),
        );
        Action::SetWeight(to)
    }

    pub fn abort(&mut self, now_unix_ms: u64, why: &str) -> Action {
        if matches!(self.phase, Phase::Aborted) {
            return Action::None;
        }
        let from = self.weight();
        self.phase = Phase::Aborted;
        self.record(now_unix_ms, "abort", from, 0, why.to_owned());
        Action::SetWeight(0)
    }

    /// After a daemon restart: a running rollout goes on from its step with a fresh window
    /// (the counters survived, but the time the daemon was away is not a clean window).
    pub fn resume_after_restart(&mut self, now_unix_ms: u64, counters: Window) -> Action {
        if self.phase != Phase::Running {
            return Action::None;
        }
        self.resume(
            now_unix_ms,
            counters,
            "daemon restarted: resuming at this step",
        )
    }
}

#[cfg(test)]
mod tests {
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

    #[test]
    fn healthy_rollout_walks_every_step_to_completion() {
        let (mut r, action) = Rollout::start("web", plan(), 0, 0, Window::default());
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
        let (mut r, _) = Rollout::start("web", plan(), 0, 0, Window::default());
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
        let (mut r, _) = Rollout::start("web", plan(), 0, 0, Window::default());
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
        let (mut r, _) = Rollout::start("web", plan(), 0, 0, Window::default());
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
        let (mut r, _) = Rollout::start("web", plan(), 0, 0, Window::default());
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
        let (mut r, _) = Rollout::start("web", plan(), 0, 0, Window::default());
        assert_eq!(r.abort(10, "operator"), Action::SetWeight(0));
    }
}
