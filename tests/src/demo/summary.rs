//! The demo's outcome: per phase of the walk, the weight configured, what the client saw (new
//! connections per color, failures, long-lived requests) and what the kernel pinned; the
//! canary's and the rollback's outcome; the long-lived connections; what cleanup left behind.
//! Rendered as a table for people and as one `SUMMARY {json}` line for machines (the demo's
//! test parses it).

use serde_json::json;

use super::{
    load::{LongLived, Tally},
    narrate::{Style, Terminal, percent},
};

/// A phase of the walk.
#[derive(Clone, Debug)]
pub struct Phase {
    pub step: u8,
    pub name: String,
    /// The green weight configured during the phase, in percent.
    pub weight_percent: f64,
    /// The deliberately bad green runs here: failed requests are expected.
    pub bad_green: bool,
    pub tally: Tally,
    /// New flows the kernel pinned to (blue, green) during the phase.
    pub kernel: (u64, u64),
    pub seconds: f64,
}

impl Phase {
    pub fn kernel_green_share(&self) -> Option<f64> {
        let total = self.kernel.0 + self.kernel.1;
        (total > 0).then(|| self.kernel.1 as f64 / total as f64)
    }
}

/// How a rollout ended.
#[derive(Clone, Debug)]
pub struct RolloutOutcome {
    /// `completed`, `aborted`, `running`, `paused`.
    pub phase: String,
    /// The green weight in force at the end (percent).
    pub green_weight_percent: f64,
    /// The step (1-based) it ended at.
    pub step: usize,
    /// The decisions, in order (`start`, `advance`, ..., `abort`).
    pub actions: Vec<String>,
    /// The last decision's reason.
    pub reason: String,
    /// From `rollout start` to the end.
    pub seconds: f64,
}

#[derive(Clone, Debug, Default)]
pub struct Summary {
    pub fast: bool,
    pub interrupted: bool,
    pub phases: Vec<Phase>,
    /// The healthy green's canary (step 2).
    pub canary: Option<RolloutOutcome>,
    /// The bad green's canary (step 4).
    pub rollback: Option<RolloutOutcome>,
    pub long_lived: Vec<LongLived>,
    /// Long-lived connections open through both blue-green switches of step 3.
    pub long_lived_through_switches: usize,
    pub daemon_pid: Option<u32>,
    /// Whether cleanup ran (and `left_behind` means something).
    pub cleaned_up: bool,
    pub left_behind: Vec<String>,
    /// What stopped the walk, if something did (other than Ctrl-C).
    pub error: Option<String>,
    pub seconds: f64,
}

impl Summary {
    pub fn requests(&self) -> u64 {
        self.phases.iter().map(|p| p.tally.requests()).sum()
    }

    pub fn failed(&self) -> u64 {
        self.phases.iter().map(|p| p.tally.failed()).sum()
    }

    /// Failed requests outside the bad green's phases: must be 0.
    pub fn failed_healthy(&self) -> u64 {
        self.phases
            .iter()
            .filter(|p| !p.bad_green)
            .map(|p| p.tally.failed())
            .sum()
    }

    pub fn rolled_back(&self) -> bool {
        self.rollback
            .as_ref()
            .is_some_and(|r| r.phase == "aborted" && r.green_weight_percent == 0.0)
    }

    /// What did not go as the demo promises; empty when everything did.
    pub fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if !self.left_behind.is_empty() {
            problems.push(format!("left behind: {}", self.left_behind.join(", ")));
        }
        if self.interrupted {
            // The rest was never going to happen.
            problems.push("interrupted before the end".to_owned());
            return problems;
        }
        if let Some(error) = &self.error {
            problems.push(format!("stopped on an error: {error}"));
        }
        if self.failed_healthy() > 0 {
            problems.push(format!(
                "{} requests failed outside the bad green's step",
                self.failed_healthy()
            ));
        }
        match &self.canary {
            Some(canary) if canary.phase == "completed" => {}
            Some(canary) => problems.push(format!(
                "the healthy canary ended {} at {}%: {}",
                canary.phase, canary.green_weight_percent, canary.reason
            )),
            None => problems.push("the healthy canary did not run".to_owned()),
        }
        if !self.rolled_back() {
            problems.push("the bad green was not rolled back".to_owned());
        }
        let broken = self.long_lived.iter().filter(|c| !c.intact()).count();
        if broken > 0 || self.long_lived.is_empty() {
            problems.push(format!(
                "{broken} of {} long-lived connections broke or changed backend",
                self.long_lived.len()
            ));
        }
        problems
    }

    /// The table and the verdict lines, for people.
    pub fn render(&self, t: &Terminal) -> String {
        let mut lines = vec![format!(
            "{:<4} {:<30} {:>7} {:>9} {:>7} {:>7} {:>7} {:>13} {:>14}",
            "step",
            "phase",
            "weight",
            "new conns",
            "blue",
            "green",
            "failed",
            "kernel green",
            "long-lived req"
        )];
        for phase in &self.phases {
            let tally = &phase.tally;
            let share = tally.green_share();
            let failed = format!("{}", tally.failed());
            let failed = match (tally.failed(), phase.bad_green) {
                (0, _) => failed,
                (_, true) => t.paint(Style::Dim, &format!("{failed:>7}")),
                (_, false) => t.paint(Style::Red, &format!("{failed:>7}")),
            };
            lines.push(format!(
                "{:<4} {:<30} {:>7} {:>9} {:>7} {:>7} {:>7} {:>13} {:>14}",
                phase.step,
                phase.name,
                format!("{}%", phase.weight_percent),
                tally.new_connections(),
                share.map_or("-".into(), |s| percent(1.0 - s)),
                share.map_or("-".into(), percent),
                failed,
                phase.kernel_green_share().map_or("-".into(), percent),
                format!("{}/{} failed", tally.long_requests, tally.long_failed),
            ));
        }
        lines.push(String::new());
        lines.push(format!(
            "requests sent {}, failed {} ({} on the deliberately bad green, {} elsewhere)",
            self.requests(),
            self.failed(),
            self.failed() - self.failed_healthy(),
            self.failed_healthy()
        ));
        if let Some(canary) = &self.canary {
            lines.push(format!(
                "canary: {} at {}% green in {:.1}s ({})",
                canary.phase,
                canary.green_weight_percent,
                canary.seconds,
                canary.actions.join(" → ")
            ));
        }
        if let Some(rollback) = &self.rollback {
            lines.push(format!(
                "bad green: {} at step {} after {:.1}s, green weight {}%: {}",
                if self.rolled_back() {
                    "rolled back automatically"
                } else {
                    "NOT rolled back"
                },
                rollback.step,
                rollback.seconds,
                rollback.green_weight_percent,
                rollback.reason
            ));
        }
        let intact = self.long_lived.iter().filter(|c| c.intact()).count();
        let requests: u64 = self.long_lived.iter().map(|c| c.requests).sum();
        lines.push(format!(
            "long-lived: {intact} of {} connections kept their backend with no failure \
             ({requests} requests; {} of them open through both switches)",
            self.long_lived.len(),
            self.long_lived_through_switches
        ));
        if self.cleaned_up {
            lines.push(if self.left_behind.is_empty() {
                "cleanup: nothing left behind (namespaces, links, bpffs mount and pins, work \
                 directory, daemon)"
                    .to_owned()
            } else {
                format!("cleanup: LEFT BEHIND {}", self.left_behind.join(", "))
            });
        }
        lines.join("\n")
    }

    /// The machine-readable summary (one JSON object).
    pub fn json(&self) -> serde_json::Value {
        let outcome = |o: &Option<RolloutOutcome>| {
            o.as_ref().map(|o| {
                json!({
                    "phase": o.phase,
                    "green_weight_percent": o.green_weight_percent,
                    "step": o.step,
                    "actions": o.actions,
                    "reason": o.reason,
                    "seconds": o.seconds,
                })
            })
        };
        json!({
            "fast": self.fast,
            "interrupted": self.interrupted,
            "seconds": self.seconds,
            "requests": self.requests(),
            "failed": self.failed(),
            "failed_healthy": self.failed_healthy(),
            "phases": self.phases.iter().map(|p| json!({
                "step": p.step,
                "name": p.name,
                "weight_percent": p.weight_percent,
                "bad_green": p.bad_green,
                "seconds": p.seconds,
                "new_connections": p.tally.new_connections(),
                "blue": p.tally.new_blue,
                "green": p.tally.new_green,
                "failed": p.tally.failed(),
                "new_failed": p.tally.new_failed,
                "green_share": p.tally.green_share(),
                "kernel_new_flows": {"blue": p.kernel.0, "green": p.kernel.1},
                "kernel_green_share": p.kernel_green_share(),
                "long_lived_requests": p.tally.long_requests,
                "long_lived_failed": p.tally.long_failed,
                "answers": p.tally.answers,
                "errors": p.tally.errors,
            })).collect::<Vec<_>>(),
            "canary": outcome(&self.canary),
            "rollback": outcome(&self.rollback),
            "rolled_back": self.rolled_back(),
            "long_lived": {
                "connections": self.long_lived.len(),
                "intact": self.long_lived.iter().filter(|c| c.intact()).count(),
                "through_switches": self.long_lived_through_switches,
                "requests": self.long_lived.iter().map(|c| c.requests).sum::<u64>(),
                "failed": self.long_lived.iter().map(|c| c.failed).sum::<u64>(),
                "moved": self.long_lived.iter().map(|c| c.moved).sum::<u64>(),
                "backends": self.long_lived.iter().map(|c| c.first.clone()).collect::<Vec<_>>(),
            },
            "daemon_pid": self.daemon_pid,
            "cleaned_up": self.cleaned_up,
            "left_behind": self.left_behind,
            "error": self.error,
            "problems": self.problems(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn phase(name: &str, bad_green: bool, failed: u64) -> Phase {
        Phase {
            step: 1,
            name: name.into(),
            weight_percent: 0.0,
            bad_green,
            tally: Tally {
                new_blue: 10,
                new_failed: failed,
                ..Tally::default()
            },
            kernel: (10, 0),
            seconds: 1.0,
        }
    }

    fn outcome(phase: &str, weight: f64) -> Option<RolloutOutcome> {
        Some(RolloutOutcome {
            phase: phase.into(),
            green_weight_percent: weight,
            step: 1,
            actions: vec![],
            reason: String::new(),
            seconds: 1.0,
        })
    }

    fn promised() -> Summary {
        Summary {
            phases: vec![phase("all on blue", false, 0), phase("bad", true, 3)],
            canary: outcome("completed", 100.0),
            rollback: outcome("aborted", 0.0),
            long_lived: vec![LongLived {
                first: Some("v1 blue-0".into()),
                requests: 5,
                ..LongLived::default()
            }],
            cleaned_up: true,
            ..Summary::default()
        }
    }

    #[test]
    fn failures_count_against_the_demo_only_outside_the_bad_green() {
        let summary = promised();
        assert_eq!(summary.failed(), 3);
        assert_eq!(summary.failed_healthy(), 0);
        assert!(summary.problems().is_empty(), "{:?}", summary.problems());
        let mut broken = promised();
        broken.phases[0].tally.long_failed = 1;
        assert_eq!(
            broken.problems(),
            ["1 requests failed outside the bad green's step"]
        );
    }

    #[test]
    fn a_missing_rollback_or_a_leftover_is_a_problem() {
        let mut summary = promised();
        summary.rollback = outcome("completed", 100.0);
        summary.left_behind = vec!["network namespace spldemo-c-1".into()];
        assert_eq!(
            summary.problems(),
            [
                "left behind: network namespace spldemo-c-1",
                "the bad green was not rolled back"
            ]
        );
        let json = summary.json();
        assert_eq!(json["rolled_back"], false);
        assert_eq!(json["failed_healthy"], 0);
    }

    #[test]
    fn an_interrupted_run_reports_only_the_interruption() {
        let summary = Summary {
            interrupted: true,
            ..Summary::default()
        };
        assert_eq!(summary.problems(), ["interrupted before the end"]);
    }
}
