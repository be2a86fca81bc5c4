//! Whether a backend takes new flows: the operator's word (`backend disable|enable|drain`),
//! the active checks (`probe.rs`, `HAProxy`'s rise/fall), the passive ejection (`outlier.rs`,
//! from the kernel's handshake signals), and how a backend back in rotation ramps up
//! (`slow_start.rs`). One rule decides the state from the three
//! ([`BackendHealth::settle`]); only `up` is in the new-flow table. Pinned flows are never
//! touched by a state (unless a check says `on_down = "cut"`, decided by the daemon).
//!
//! Nothing here touches the kernel or the daemon: the daemon feeds results in and writes the
//! pools when a state changes.

pub mod outlier;
pub mod probe;
pub mod slow_start;

use std::{
    collections::BTreeMap,
    time::{Instant, SystemTime, UNIX_EPOCH},
};

use serde::{Deserialize, Serialize};

pub use crate::state::Admin;

/// Where a backend stands, in order of precedence (the operator first).
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum BackendState {
    /// In the new-flow table.
    #[default]
    Up,
    /// Failed `fall` active checks in a row.
    Down,
    /// Ejected by the passive detection for a while.
    Ejected,
    /// `backend drain`.
    Draining,
    /// `backend disable`.
    Disabled,
}

impl BackendState {
    pub const ALL: [BackendState; 5] = [
        BackendState::Up,
        BackendState::Down,
        BackendState::Ejected,
        BackendState::Draining,
        BackendState::Disabled,
    ];

    pub const fn name(self) -> &'static str {
        match self {
            BackendState::Up => "up",
            BackendState::Down => "down",
            BackendState::Ejected => "ejected",
            BackendState::Draining => "draining",
            BackendState::Disabled => "disabled",
        }
    }

    /// Whether new flows may go to it (`BackendSpec::active`).
    pub const fn in_rotation(self) -> bool {
        matches!(self, BackendState::Up)
    }
}

impl std::fmt::Display for BackendState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// `HAProxy`'s check counter: `health` runs 0..=rise+fall-1, a backend is up while it is at
/// least `rise`. It starts at `rise` (`HAProxy`'s `init-state up`: up, but the first failed
/// check takes it down): a daemon (re)start or reload never takes a serving backend out of
/// rotation before a check says so, and a dead one goes at the first failure.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CheckCounter {
    health: u32,
    rise: u32,
    fall: u32,
}

impl CheckCounter {
    pub fn new(rise: u32, fall: u32) -> Self {
        Self {
            health: rise,
            rise,
            fall,
        }
    }

    pub fn up(&self) -> bool {
        self.health >= self.rise
    }

    /// One check result: `fall` failures in a row take an up backend down, `rise` passes in
    /// a row bring a down one back (a result the other way restarts the count).
    pub fn record(&mut self, passed: bool) {
        let full = self.rise + self.fall - 1;
        self.health = match (self.up(), passed) {
            (true, true) => full,
            (false, true) if self.health + 1 >= self.rise => full,
            (false, true) => self.health + 1,
            (true, false) if self.health - 1 < self.rise => 0,
            (true, false) => self.health - 1,
            (false, false) => 0,
        };
    }
}

/// A state change, for the log line and the transition counter.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Transition {
    pub from: BackendState,
    pub to: BackendState,
    pub reason: String,
}

/// One backend's inputs and the state they give.
#[derive(Clone, Debug)]
pub struct BackendHealth {
    pub admin: Admin,
    /// Active checks, when the service has them.
    pub check: Option<CheckCounter>,
    /// The last failed check's error (the reason of `down`).
    pub check_error: Option<String>,
    pub outlier: outlier::Detector,
    state: BackendState,
    reason: String,
    since_unix_ms: u64,
    transitions: BTreeMap<BackendState, u64>,
}

impl BackendHealth {
    /// A backend as the daemon first sees it: up unless the operator said otherwise.
    pub fn new(admin: Admin, check: Option<CheckCounter>) -> Self {
        let mut this = Self {
            admin,
            check,
            check_error: None,
            outlier: outlier::Detector::default(),
            state: BackendState::Up,
            reason: "configured".to_owned(),
            since_unix_ms: now_unix_ms(),
            transitions: BackendState::ALL.iter().map(|state| (*state, 0)).collect(),
        };
        let (state, reason) = this.computed(Instant::now());
        this.state = state;
        if state != BackendState::Up {
            this.reason = reason;
        }
        this
    }

    pub fn state(&self) -> BackendState {
        self.state
    }

    pub fn reason(&self) -> &str {
        &self.reason
    }

    pub fn since_unix_ms(&self) -> u64 {
        self.since_unix_ms
    }

    /// Transitions into each state since the daemon started (every state present).
    pub fn transitions(&self) -> &BTreeMap<BackendState, u64> {
        &self.transitions
    }

    /// The one rule: the operator, then the checks, then the passive ejection.
    fn computed(&self, now: Instant) -> (BackendState, String) {
        match self.admin {
            Admin::Disabled => return (BackendState::Disabled, "backend disable".to_owned()),
            Admin::Draining => return (BackendState::Draining, "backend drain".to_owned()),
            Admin::Ready => {}
        }
        if let Some(check) = &self.check
            && !check.up()
        {
            let error = self.check_error.as_deref().unwrap_or("check failed");
            return (BackendState::Down, format!("health check: {error}"));
        }
        if let Some(reason) = self.outlier.ejected(now) {
            return (BackendState::Ejected, reason.to_owned());
        }
        (BackendState::Up, "in rotation".to_owned())
    }

    /// Recomputes the state from the inputs; returns the change, if any.
    pub fn settle(&mut self, now: Instant) -> Option<Transition> {
        let (state, reason) = self.computed(now);
        if state == self.state {
            return None;
        }
        let transition = Transition {
            from: self.state,
            to: state,
            reason: reason.clone(),
        };
        self.state = state;
        self.reason = reason;
        self.since_unix_ms = now_unix_ms();
        *self.transitions.entry(state).or_default() += 1;
        Some(transition)
    }
}

pub fn now_unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, crate::units::millis)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn haproxy_rise_and_fall() {
        let mut check = CheckCounter::new(2, 3);
        assert!(check.up(), "starts up");
        check.record(false);
        assert!(
            !check.up(),
            "the first failure of a fresh backend takes it down"
        );
        check.record(true);
        assert!(!check.up(), "one pass of rise = 2");
        check.record(true);
        assert!(check.up(), "rise passes bring it back");
        check.record(false);
        check.record(false);
        assert!(check.up(), "two failures of fall = 3");
        check.record(true);
        check.record(false);
        check.record(false);
        assert!(check.up(), "a pass in between resets the run");
        check.record(false);
        check.record(false);
        assert!(!check.up(), "fall consecutive failures");
    }

    #[test]
    fn the_operator_wins_and_transitions_are_counted() {
        let now = Instant::now();
        let mut backend = BackendHealth::new(Admin::Ready, Some(CheckCounter::new(1, 1)));
        assert_eq!(backend.state(), BackendState::Up);
        backend.check.as_mut().unwrap().record(false);
        backend.check_error = Some("connection refused".into());
        let change = backend.settle(now).unwrap();
        assert_eq!(
            (change.from, change.to),
            (BackendState::Up, BackendState::Down)
        );
        assert_eq!(change.reason, "health check: connection refused");
        backend.admin = Admin::Disabled;
        assert_eq!(backend.settle(now).unwrap().to, BackendState::Disabled);
        assert_eq!(backend.settle(now), None);
        assert_eq!(backend.transitions()[&BackendState::Down], 1);
        assert_eq!(backend.transitions()[&BackendState::Up], 0);
    }
}
