//! Canary rollouts run inside the daemon: the control API starts and steers them, a tick every
//! [`TICK`] judges the running ones on the service's in-kernel signals and applies what the
//! engine decides (one map write per weight change). Every decision is one structured log line
//! with the numbers behind it, and the rollout is persisted with the weights, so a restarted
//! daemon resumes a running rollout at its step (with a fresh analysis window).

use std::{
    collections::BTreeMap,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use splitter_common::WEIGHT_SCALE;

use super::{App, AppError};
use crate::{
    config::ColorName,
    control::protocol::RolloutReport,
    rollout::{
        Action, ColorSignals, Phase, Rollout, Start, Window, engine::Checks, plan::Overrides,
    },
    units::ppm_to_percent,
};

/// How often running rollouts are judged.
pub const TICK: Duration = Duration::from_millis(100);

pub fn now_unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, crate::units::millis)
}

#[derive(Debug, thiserror::Error)]
pub enum RolloutError {
    #[error(
        "service `{service}` already has a {phase} rollout at {weight}%: abort it or let it finish first"
    )]
    Busy {
        service: String,
        phase: &'static str,
        weight: String,
    },
    #[error(
        "service `{service}`: {color} has no backend in rotation ({backends}): a rollout would judge a canary that takes no flow; bring one back (`splitter backend enable {service} ADDRESS`, or fix what its health check reports) and start again"
    )]
    NoBackendInRotation {
        service: String,
        color: ColorName,
        backends: String,
    },
    #[error(transparent)]
    Plan(#[from] crate::rollout::PlanError),
    #[error("service `{service}`: {source}")]
    Start {
        service: String,
        #[source]
        source: crate::rollout::StartError,
    },
    #[error(
        "service `{service}` has no aborted rollout to retry (its last one is {phase}); start one with `splitter rollout start {service}`"
    )]
    NothingToRetry {
        service: String,
        phase: &'static str,
    },
    #[error(
        "service `{service}` has no rollout (start one with `splitter rollout start {service}`)"
    )]
    None { service: String },
}

pub(super) fn phase_name(phase: Phase) -> &'static str {
    match phase {
        Phase::Running => "running",
        Phase::Paused => "paused",
        Phase::Completed => "completed",
        Phase::Aborted => "aborted",
    }
}

impl App {
    /// The service's counters per color, summed over its backends (absolute).
    pub(super) fn color_window(&self, name: &str) -> Result<Window, AppError> {
        let address = self.service_address(name)?;
        let mut window = Window::default();
        let Some(installed) = self.installed.get(&address) else {
            return Ok(window);
        };
        for color in ColorName::BOTH {
            let sums: &mut ColorSignals = match color {
                ColorName::Blue => &mut window.blue,
                ColorName::Green => &mut window.green,
            };
            // Every backend of the color, in rotation or not: a backend taken out keeps the
            // counts it had (the window is the color's, not the pool's).
            let configured = self.config.service(name).map_or(&[][..], |s| s.pool(color));
            for (id, _) in &installed.members(configured) {
                let counters = self.dataplane.maps.backend_counters(*id)?;
                sums.add(counters.new_flows, &counters.signals);
            }
        }
        Ok(window)
    }

    /// Applies an engine action and persists the rollout with it (a raise of the weight is
    /// saved first and refused if it cannot be; anything else is saved after, see
    /// `persist.rs`); logs its new decisions.
    pub(super) fn commit(
        &mut self,
        rollout: &Rollout,
        action: Action,
        logged: usize,
    ) -> Result<(), AppError> {
        let mut state = self.state.clone();
        state
            .rollouts
            .insert(rollout.service.clone(), rollout.clone());
        if rollout.phase == Phase::Completed
            && state.stable_color(&rollout.service) != rollout.canary
        {
            // The canary carries everything the plan asked for: it is the stable color now, and
            // the next rollout canaries the other (now idle) one.
            state.stable.insert(rollout.service.clone(), rollout.canary);
            tracing::info!(service = %rollout.service, stable = %rollout.canary, "stable color changed");
        }
        if let Action::SetWeight(weight) = action {
            self.write_weight_with(&rollout.service, weight, state)?;
        } else {
            self.save_after(state);
        }
        for decision in rollout.history.iter().skip(logged) {
            crate::rollout::log_decision(&rollout.service, decision, None);
            self.rollout_metrics
                .decision(&rollout.service, &decision.action);
        }
        self.publish_rollout(&rollout.service);
        Ok(())
    }

    /// Sets the rollout step and phase gauges of every configured service.
    pub(super) fn publish_rollouts(&self) {
        for service in &self.config.services {
            self.publish_rollout(&service.name);
        }
    }

    /// Sets `name`'s rollout step and phase gauges from its persisted rollout.
    fn publish_rollout(&self, name: &str) {
        match self.state.rollouts.get(name) {
            Some(rollout) => self.rollout_metrics.set_state(
                name,
                phase_name(rollout.phase),
                u32::try_from(rollout.step + 1).unwrap_or(u32::MAX),
            ),
            None => self.rollout_metrics.set_state(name, "none", 0),
        }
    }

    fn rollout(&self, name: &str) -> Result<Rollout, AppError> {
        self.service_address(name)?;
        self.state
            .rollouts
            .get(name)
            .cloned()
            .ok_or_else(|| RolloutError::None {
                service: name.to_owned(),
            })
            .map_err(AppError::from)
    }

    /// Starts a rollout of `name` with the service's configured plan and `overrides`.
    pub fn rollout_start(
        &mut self,
        name: &str,
        overrides: &Overrides,
        from_current: bool,
    ) -> Result<RolloutReport, AppError> {
        let (rollout, action) = self.rollout_draft(name, overrides, from_current)?;
        self.commit(&rollout, action, 0)?;
        self.rollout_status(name)
    }

    /// Starts the plan of the service's last aborted rollout again, from the stable color.
    pub fn rollout_retry(&mut self, name: &str) -> Result<RolloutReport, AppError> {
        let last = self.rollout(name)?;
        if last.phase != Phase::Aborted {
            return Err(RolloutError::NothingToRetry {
                service: name.to_owned(),
                phase: phase_name(last.phase),
            }
            .into());
        }
        self.start_plan(name, last.plan, last.from_current)
    }

    /// Every service's rollout, by service name.
    pub fn rollout_list(&self) -> Result<Vec<RolloutReport>, AppError> {
        let names: Vec<String> = self.state.rollouts.keys().cloned().collect();
        names
            .iter()
            .filter(|name| self.config.service(name).is_some())
            .map(|name| self.rollout_status(name))
            .collect()
    }

    fn start_plan(
        &mut self,
        name: &str,
        plan: crate::rollout::Plan,
        from_current: bool,
    ) -> Result<RolloutReport, AppError> {
        let (rollout, action) = self.draft_plan(name, plan, from_current)?;
        self.commit(&rollout, action, 0)?;
        self.rollout_status(name)
    }

    /// A new rollout of `name` with the service's configured plan and `overrides`, from the
    /// weight in force, not committed yet (FLEET: the fleet writes it to etcd instead).
    pub(super) fn rollout_draft(
        &self,
        name: &str,
        overrides: &Overrides,
        from_current: bool,
    ) -> Result<(Rollout, Action), AppError> {
        let configured = self
            .config
            .service(name)
            .map(|service| service.rollout.clone());
        let Some(configured) = configured else {
            self.service_address(name)?;
            unreachable!("service_address refuses unknown services");
        };
        let plan = overrides.apply(&configured).map_err(RolloutError::Plan)?;
        self.draft_plan(name, plan, from_current)
    }

    /// A rollout of `plan` from this host's weight in force and stable color; refused while
    /// one runs here.
    pub(super) fn draft_plan(
        &self,
        name: &str,
        plan: crate::rollout::Plan,
        from_current: bool,
    ) -> Result<(Rollout, Action), AppError> {
        let (address, _) = self.service_address(name)?;
        if let Some(existing) = self.state.rollouts.get(name)
            && matches!(existing.phase, Phase::Running | Phase::Paused)
        {
            return Err(RolloutError::Busy {
                service: name.to_owned(),
                phase: phase_name(existing.phase),
                weight: ppm_to_percent(existing.weight()).to_string(),
            }
            .into());
        }
        let current = self
            .installed
            .iter()
            .find(|((a, _), _)| *a == address)
            .map_or(0, |(_, installed)| installed.config.green_weight);
        let canary = self.state.stable_color(name).other();
        if let Some(service) = self.config.service(name)
            && let Some(backends) = self.out_of_rotation(service, canary)
        {
            return Err(RolloutError::NoBackendInRotation {
                service: name.to_owned(),
                color: canary,
                backends,
            }
            .into());
        }
        let counters = self.color_window(name)?;
        let start = Start {
            canary,
            current_weight: current,
            from_current,
        };
        Ok(
            Rollout::start(name, plan, start, now_unix_ms(), counters).map_err(|source| {
                RolloutError::Start {
                    service: name.to_owned(),
                    source,
                }
            })?,
        )
    }

    /// One analysis tick of every running rollout. `checks` holds the external checks'
    /// outcome per service (services without checks are absent: they pass).
    pub fn rollout_tick(&mut self, checks: &BTreeMap<String, Checks>) {
        let running: Vec<String> = self
            .state
            .rollouts
            .iter()
            .filter(|(_, r)| r.phase == Phase::Running)
            .map(|(name, _)| name.clone())
            .collect();
        for name in running {
            let result = (|| {
                let mut rollout = self.rollout(&name)?;
                let counters = self.color_window(&name)?;
                let logged = rollout.history.len();
                let pass = Checks::Pass;
                let action =
                    rollout.tick(now_unix_ms(), &counters, checks.get(&name).unwrap_or(&pass));
                if rollout.history.len() != logged || action != Action::None {
                    self.commit(&rollout, action, logged)?;
                } else if let Some(stored) = self.state.rollouts.get_mut(&name) {
                    // Only the live window changed: kept in memory for `status`.
                    stored.window = rollout.window;
                }
                Ok::<_, AppError>(())
            })();
            if let Err(error) = result
                && let Some(suppressed) = self.tick_errors.allow()
            {
                // At most one line per 10 s: a tick that cannot save runs 10 times a second.
                tracing::error!(service = %name, %error, suppressed, "rollout tick failed");
            }
        }
    }

    /// The running rollouts that have external checks, for the async evaluation.
    pub fn rollout_checks(&self) -> Vec<(String, Vec<crate::rollout::Check>)> {
        self.state
            .rollouts
            .iter()
            .filter(|(_, r)| r.phase == Phase::Running && !r.plan.checks.is_empty())
            .map(|(name, r)| (name.clone(), r.plan.checks.clone()))
            .collect()
    }

    pub fn rollout_pause(&mut self, name: &str) -> Result<RolloutReport, AppError> {
        let mut rollout = self.rollout(name)?;
        let logged = rollout.history.len();
        let action = rollout.pause(now_unix_ms(), "paused by the operator");
        self.commit(&rollout, action, logged)?;
        self.rollout_status(name)
    }

    pub fn rollout_resume(&mut self, name: &str) -> Result<RolloutReport, AppError> {
        let mut rollout = self.rollout(name)?;
        let counters = self.color_window(name)?;
        let logged = rollout.history.len();
        let action = rollout.resume(now_unix_ms(), counters, "resumed by the operator");
        self.commit(&rollout, action, logged)?;
        self.rollout_status(name)
    }

    pub fn rollout_promote(&mut self, name: &str, full: bool) -> Result<RolloutReport, AppError> {
        let mut rollout = self.rollout(name)?;
        let counters = self.color_window(name)?;
        let logged = rollout.history.len();
        let action = rollout.promote(now_unix_ms(), counters, full);
        self.commit(&rollout, action, logged)?;
        self.rollout_status(name)
    }

    /// Rolls back to the weight in force when the rollout started, in one map write. With
    /// `cut`, the canary's established flows are unpinned too and their next packets go to the
    /// stable color (their connections break).
    pub fn rollout_abort(&mut self, name: &str, cut: bool) -> Result<RolloutReport, AppError> {
        let mut rollout = self.rollout(name)?;
        let logged = rollout.history.len();
        let why = if cut {
            "aborted by the operator (--cut: canary flows unpinned)"
        } else {
            "aborted by the operator"
        };
        let action = rollout.abort(now_unix_ms(), why);
        self.commit(&rollout, action, logged)?;
        if cut {
            self.cut(name, rollout.canary)?;
        }
        self.rollout_status(name)
    }

    /// Unpins every flow of the service's `color` backends, and makes mid-flow misses follow
    /// the weight in force (no earlier weight) so they land on the other color: `rollout abort
    /// --cut` (green) and `drain --cut`. Returns how many flows were unpinned.
    pub(super) fn cut(&mut self, name: &str, color: ColorName) -> Result<usize, AppError> {
        let address = self.service_address(name)?;
        let Some(installed) = self.installed.get(&address) else {
            return Ok(0);
        };
        let configured = self.config.service(name).map_or(&[][..], |s| s.pool(color));
        let ids: Vec<u32> = installed
            .members(configured)
            .iter()
            .map(|(id, _)| *id)
            .collect();
        let removed = self.dataplane.maps.unpin_backends(&ids)?;
        self.dataplane
            .maps
            .forget_previous_weight(&address.0, address.1)?;
        tracing::info!(service = name, %color, unpinned = removed, "flows unpinned (--cut)");
        Ok(removed)
    }

    pub fn rollout_status(&self, name: &str) -> Result<RolloutReport, AppError> {
        let rollout = self.rollout(name)?;
        Ok(self.rollout_report(&rollout))
    }

    /// Where `rollout` stands (this host's rollout, or the fleet's).
    pub(super) fn rollout_report(&self, rollout: &Rollout) -> RolloutReport {
        let name = rollout.service.as_str();
        let now = now_unix_ms();
        RolloutReport {
            service: name.to_owned(),
            phase: rollout.phase,
            canary: rollout.canary,
            stable: self.state.stable_color(name),
            start_weight: rollout.start_weight,
            started_unix_ms: rollout.started_unix_ms,
            step: rollout.step + 1,
            steps: rollout.plan.steps.clone(),
            green_weight: rollout.weight(),
            next_weight: match rollout.phase {
                Phase::Running | Phase::Paused => rollout.next_weight(),
                _ => None,
            },
            time_left_ms: match rollout.phase {
                Phase::Running => rollout.time_left_ms(now),
                _ => 0,
            },
            every_ms: crate::units::millis(rollout.plan.every),
            min_flows: rollout.plan.thresholds.min_flows,
            green: (&rollout.window.green).into(),
            blue: (&rollout.window.blue).into(),
            last: rollout.last_decision().cloned(),
            history: rollout.history.clone(),
            fleet: crate::fleet::report::RolloutFleetNotes::default(),
        }
    }

    /// After a restart: running rollouts go on at their step with a fresh window — unless
    /// the kernel holds a lower weight than the rollout's step: a rollback (abort, switch to
    /// blue, lower weight) reached the kernel but not the disk before the daemon stopped. The
    /// rollout is then paused at the kernel's weight, never resumed above it.
    pub fn resume_rollouts_after_restart(&mut self) {
        let names: Vec<String> = self.state.rollouts.keys().cloned().collect();
        for name in names {
            let result = (|| {
                let mut rollout = self.rollout(&name)?;
                let address = self.service_address(&name)?;
                let kernel = self
                    .installed
                    .get(&address)
                    .map(|installed| installed.config.green_weight);
                if rollout.phase == Phase::Running
                    && let Some(kernel) = kernel
                    && kernel < rollout.weight()
                {
                    let logged = rollout.history.len();
                    let why = format!(
                        "the data plane holds {}%, below the saved step {}% (a rollback that was not saved before the restart): paused, not resumed",
                        ppm_to_percent(kernel),
                        ppm_to_percent(rollout.weight())
                    );
                    tracing::warn!(service = %name, %why, "rollout not resumed");
                    let action = rollout.pause(now_unix_ms(), &why);
                    return self.commit(&rollout, action, logged);
                }
                let counters = self.color_window(&name)?;
                let logged = rollout.history.len();
                let action = rollout.resume_after_restart(now_unix_ms(), counters);
                if action != Action::None {
                    self.commit(&rollout, action, logged)?;
                }
                Ok::<_, AppError>(())
            })();
            if let Err(error) = result {
                tracing::error!(service = %name, %error, "could not resume the rollout");
            }
        }
    }

    /// A weight set by the operator pauses a running rollout of that service (the operator
    /// took over); `rollout resume` hands it back.
    pub(super) fn pause_rollout_for_operator(
        &mut self,
        name: &str,
        weight: u32,
    ) -> Result<(), AppError> {
        let Some(rollout) = self.state.rollouts.get(name) else {
            return Ok(());
        };
        if rollout.phase != Phase::Running {
            return Ok(());
        }
        let mut rollout = rollout.clone();
        let logged = rollout.history.len();
        let why = format!(
            "the operator set the weight to {}%: rollout paused",
            ppm_to_percent(weight.min(WEIGHT_SCALE))
        );
        let action = rollout.pause(now_unix_ms(), &why);
        self.commit(&rollout, action, logged)
    }
}

#[cfg(test)]
mod metric_tests {
    use super::*;

    #[test]
    fn every_phase_is_a_metric_label_value() {
        for phase in [
            Phase::Running,
            Phase::Paused,
            Phase::Completed,
            Phase::Aborted,
        ] {
            assert!(
                crate::metrics::rollout::PHASES.contains(&phase_name(phase)),
                "phase {phase:?} missing from metrics::rollout::PHASES"
            );
        }
    }
}
