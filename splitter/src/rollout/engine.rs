//! The rollout state machine. The daemon calls [`Rollout::tick`] with the service's counters
//! (absolute, per color) and applies the [`Action`] it returns; every decision that changes
//! something (or holds at the end of a window) is a [`Decision`] the daemon logs as one line.
//! Plain data: the daemon persists it after each change, and a restarted daemon resumes a
//! running rollout from its step with a fresh analysis window (`resume_after_restart`).
//!
//! A rollout moves traffic from the service's stable color to the other one, the canary: the
//! plan's steps are the **canary's** share, and the weight written to the kernel stays green's
//! share (`green_weight`): a green canary raises it step by step, a blue canary lowers it. In
//! both directions each step only moves hash space from the stable color to the canary, so the
//! split stays monotone: a flow that went to the canary at one step goes to it at every later
//! step. An abort returns to the weight in force when the rollout started.

use serde::{Deserialize, Serialize};
use splitter_common::WEIGHT_SCALE;

use super::{
    analysis::{ColorSignals, Verdict, Window, judge_canary},
    plan::Plan,
};
use crate::{color::ColorName, units::ppm_to_percent};

/// How many decisions a rollout keeps for `rollout status`.
const HISTORY: usize = 32;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    Running,
    Paused,
    /// The canary reached the last step (and became the stable color).
    Completed,
    /// Rolled back to the weight in force when the rollout started.
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
    /// The color traffic moves to (the one that was not stable when it started); absent from
    /// state files older than stable colors: green.
    #[serde(default = "green")]
    pub canary: ColorName,
    /// Green's weight when the rollout started: where an abort returns.
    #[serde(default)]
    pub start_weight: u32,
    /// Started with `--from-current` (kept so `rollout retry` does the same).
    #[serde(default)]
    pub from_current: bool,
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

const fn green() -> ColorName {
    ColorName::Green
}

/// Green's weight (the kernel's) for a canary share.
pub const fn green_weight_for(canary: ColorName, share: u32) -> u32 {
    match canary {
        ColorName::Green => share,
        ColorName::Blue => WEIGHT_SCALE - share,
    }
}

/// The canary's share of a green weight.
pub const fn canary_share(canary: ColorName, green_weight: u32) -> u32 {
    match canary {
        ColorName::Green => green_weight,
        ColorName::Blue => WEIGHT_SCALE.saturating_sub(green_weight),
    }
}

/// What to start a rollout with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Start {
    pub canary: ColorName,
    /// Green's weight in force now.
    pub current_weight: u32,
    /// Continue from the canary's current share (the plan's steps at or below it are skipped)
    /// rather than refuse when the canary already carries traffic.
    pub from_current: bool,
}

#[derive(Debug, PartialEq, thiserror::Error)]
pub enum StartError {
    #[error(
        "the canary color {canary} already carries {share}% of new flows (green weight {green}%): \
         a rollout from {stable} to {canary} would start by moving traffic back to {stable}; pass \
         --from-current to continue the steps above {share}%, or `splitter switch SERVICE {stable}` first"
    )]
    CanaryCarriesTraffic {
        canary: ColorName,
        stable: ColorName,
        share: f64,
        green: f64,
    },
    #[error(
        "the canary color {canary} already carries {share}% of new flows, at or above the plan's \
         last step: nothing to roll out"
    )]
    NothingLeft { canary: ColorName, share: f64 },
}

impl Rollout {
    /// Starts at the first step (with `from_current`, the first step above the canary's share).
    pub fn start(
        service: &str,
        mut plan: Plan,
        start: Start,
        now_unix_ms: u64,
        counters: Window,
    ) -> Result<(Self, Action), StartError> {
        let Start {
            canary,
            current_weight,
            from_current,
        } = start;
        let share = canary_share(canary, current_weight);
        if share > 0 {
            if !from_current {
                return Err(StartError::CanaryCarriesTraffic {
                    canary,
                    stable: canary.other(),
                    share: ppm_to_percent(share),
                    green: ppm_to_percent(current_weight),
                });
            }
            plan.steps.retain(|&step| step > share);
            if plan.steps.is_empty() {
                return Err(StartError::NothingLeft {
                    canary,
                    share: ppm_to_percent(share),
                });
            }
        }
        let first = green_weight_for(canary, plan.steps[0]);
        let mut rollout = Self {
            service: service.to_owned(),
            plan,
            step: 0,
            canary,
            start_weight: current_weight,
            from_current,
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
            format!("rollout started: {} to {canary}", canary.other()),
        );
        Ok((rollout, Action::SetWeight(first)))
    }

    /// Green's weight in force (the kernel's).
    pub fn weight(&self) -> u32 {
        match self.phase {
            Phase::Aborted => self.start_weight,
            _ => green_weight_for(self.canary, self.plan.steps[self.step]),
        }
    }

    /// Green's weight after this step, if any.
    pub fn next_weight(&self) -> Option<u32> {
        self.plan
            .steps
            .get(self.step + 1)
            .map(|&share| green_weight_for(self.canary, share))
    }

    /// The color traffic moves away from.
    pub const fn stable(&self) -> ColorName {
        self.canary.other()
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
        let verdict = match (judge_canary(&self.plan, &self.window, self.canary), checks) {
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
            self.record(now_unix_ms, "abort", weight, self.start_weight, reason);
            return Action::SetWeight(self.start_weight);
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
        self.record(
            now_unix_ms,
            "abort",
            from,
            self.start_weight,
            why.to_owned(),
        );
        Action::SetWeight(self.start_weight)
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
mod tests;
