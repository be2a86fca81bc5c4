//! The four steps of the demo, driven with the real CLI and narrated: all on blue; green
//! deployed and a canary rollout; blue-green switches under long-lived connections; a bad green
//! rolled back by the analysis. Every phase is tallied by the client and by the kernel's
//! counters.

use std::{
    collections::HashSet,
    time::{Duration, Instant},
};

use splitter::{
    cli::rollout::render as render_rollout, config::ColorName, control::protocol::RolloutReport,
    rollout::Phase as RolloutPhase,
};

use super::{
    http::Release,
    interrupt,
    lab::{DemoLab, SERVICE},
    load::{KEEPALIVE_EVERY, Load, LongLived, Tally},
    narrate::{Style, Terminal, percent},
    summary::{Phase, RolloutOutcome, Summary},
};
use crate::daemon_harness::CLIENT;

/// How fast the demo goes.
#[derive(Clone, Debug)]
pub struct Timing {
    /// How long each plain step (and each side of a switch) runs.
    pub dwell: Duration,
    /// Rollout step duration (`--every`).
    pub every: &'static str,
    /// Green handshakes a rollout step needs before it is judged (`--min-flows`): the pace
    /// gives about one green flow per second at 1 %.
    pub min_flows: u64,
    /// One new connection every `pace`.
    pub pace: Duration,
    /// A rollout that has not ended after this is reported as stuck.
    pub rollout_limit: Duration,
}

impl Timing {
    pub fn new(fast: bool) -> Self {
        if fast {
            Self {
                dwell: Duration::from_millis(1500),
                every: "1s",
                min_flows: 2,
                pace: Duration::from_millis(10),
                rollout_limit: Duration::from_secs(40),
            }
        } else {
            Self {
                dwell: Duration::from_secs(5),
                every: "5s",
                min_flows: 5,
                pace: Duration::from_millis(10),
                rollout_limit: Duration::from_secs(150),
            }
        }
    }

    fn rollout_start(&self) -> String {
        format!(
            "rollout start {SERVICE} --steps {STEPS} --every {} --min-flows {}",
            self.every, self.min_flows
        )
    }
}

/// The canary's plan.
const STEPS: &str = "1,10,50,100";
/// Long-lived connections opened in step 1 (on blue) and again in step 3 (on green).
const LONG_LIVED: usize = 4;
/// The steps of the walk.
const TOTAL_STEPS: u8 = 4;
/// How often a running rollout is looked at: a weight change starts a new client phase at
/// most this late (the daemon decides every 100 ms).
const ROLLOUT_POLL: Duration = Duration::from_millis(25);

/// Where a phase began.
struct Mark {
    step: u8,
    name: String,
    weight_percent: f64,
    bad_green: bool,
    started: Instant,
    kernel: (u64, u64),
}

pub struct Walk<'a> {
    lab: &'a mut DemoLab,
    t: &'a mut Terminal,
    timing: Timing,
    load: Option<Load>,
    marks: Vec<Mark>,
    /// The kernel's counters when the last phase ended (or the latest known).
    kernel_end: (u64, u64),
}

impl<'a> Walk<'a> {
    pub fn new(lab: &'a mut DemoLab, t: &'a mut Terminal, timing: Timing) -> Self {
        Self {
            lab,
            t,
            timing,
            load: None,
            marks: Vec::new(),
            kernel_end: (0, 0),
        }
    }

    /// Runs the four steps, filling `summary` as it goes.
    pub fn run(&mut self, summary: &mut Summary) -> anyhow::Result<()> {
        self.all_on_blue()?;
        summary.canary = Some(self.canary()?);
        summary.long_lived_through_switches = self.switches()?;
        summary.rollback = Some(self.bad_green()?);
        Ok(())
    }

    /// Stops the client and puts the phases, long-lived connections into `summary`.
    pub fn finish(mut self, summary: &mut Summary) {
        if let Ok(kernel) = self.lab.kernel_new_flows() {
            self.kernel_end = kernel;
        }
        let Some(mut load) = self.load.take() else {
            return;
        };
        load.stop();
        let tallies = load.phases();
        let ends: Vec<(Instant, (u64, u64))> = self
            .marks
            .iter()
            .skip(1)
            .map(|m| (m.started, m.kernel))
            .chain([(Instant::now(), self.kernel_end)])
            .collect();
        for ((mark, (_, tally)), (end, kernel_end)) in self.marks.iter().zip(tallies).zip(ends) {
            summary.phases.push(Phase {
                step: mark.step,
                name: mark.name.clone(),
                weight_percent: mark.weight_percent,
                bad_green: mark.bad_green,
                tally,
                kernel: (
                    kernel_end.0.saturating_sub(mark.kernel.0),
                    kernel_end.1.saturating_sub(mark.kernel.1),
                ),
                seconds: end.duration_since(mark.started).as_secs_f64(),
            });
        }
        summary.long_lived = load.long_lived();
    }

    /// From now on the client counts a new phase.
    fn begin(
        &mut self,
        step: u8,
        name: &str,
        weight_percent: f64,
        bad_green: bool,
    ) -> anyhow::Result<()> {
        // The client's phase first: every request that starts from now on saw the weight of
        // this phase (the command that set it has returned). The kernel's counters follow one
        // status request later (a flow may fall on the other side of that line).
        match &self.load {
            Some(load) => load.phase(name),
            None => {
                let client = &self.lab.lab.topology.client;
                self.load = Some(Load::start(
                    client,
                    CLIENT.parse().expect("client address"),
                    self.lab.vip(),
                    self.timing.pace,
                    name,
                ));
            }
        }
        let kernel = self.lab.kernel_new_flows();
        // Marks and client phases stay paired even when the daemon does not answer.
        let snapshot = *kernel.as_ref().unwrap_or(&self.kernel_end);
        self.kernel_end = snapshot;
        self.marks.push(Mark {
            step,
            name: name.to_owned(),
            weight_percent,
            bad_green,
            started: Instant::now(),
            kernel: snapshot,
        });
        kernel.map(|_| ())
    }

    fn load(&self) -> &Load {
        self.load.as_ref().expect("the client runs from step 1 on")
    }

    fn step(&mut self, n: u8, title: &str) {
        self.t.heading(&format!("Step {n}/{TOTAL_STEPS}  {title}"));
    }

    /// Runs `splitter <args>` and shows the command and its output.
    fn run_cli(&mut self, args: &str) -> anyhow::Result<()> {
        let argv: Vec<&str> = args.split_whitespace().collect();
        let out = self.lab.cli(&argv)?;
        self.t.command(&format!("splitter {args}"), &out.stdout);
        Ok(())
    }

    /// What the client saw in the phase in force.
    fn client_line(&self, tally: &Tally) -> String {
        let share = tally.green_share();
        let failed = if tally.failed() == 0 {
            "0 failed".to_owned()
        } else {
            self.t
                .paint(Style::Red, &format!("{} failed", tally.failed()))
        };
        format!(
            "client: {} new connections ({} · {}), {} long-lived requests; {failed}",
            tally.new_connections(),
            self.t.color(
                ColorName::Blue,
                &format!("blue {}", share.map_or("-".into(), |s| percent(1.0 - s)))
            ),
            self.t.color(
                ColorName::Green,
                &format!("green {}", share.map_or("-".into(), percent))
            ),
            tally.long_requests,
        )
    }

    /// Lets the current phase run for `duration`, redrawing the status table and the client's
    /// counters on a terminal; then shows `splitter status` and the client's line once.
    fn dwell(&mut self, duration: Duration) -> anyhow::Result<()> {
        let until = Instant::now() + duration;
        while Instant::now() < until {
            if self.t.is_tty() {
                let status = splitter::cli::render_status(&self.lab.status()?);
                let line = self.client_line(&self.load().current());
                self.t.live(&format!("{status}\n{line}"));
            }
            interrupt::sleep(
                until
                    .saturating_duration_since(Instant::now())
                    .min(Duration::from_millis(500)),
            )?;
        }
        self.t.end_live();
        self.run_cli("status")?;
        let line = self.client_line(&self.load().current());
        self.t.say(&line);
        Ok(())
    }

    /// `v1 blue-0 ×2, v2 green-1`: where long-lived connections are pinned.
    fn describe(&self, connections: &[LongLived]) -> String {
        let mut backends = std::collections::BTreeMap::<String, (usize, Option<ColorName>)>::new();
        for c in connections {
            let first = c.first.clone().unwrap_or_else(|| "no answer".into());
            backends.entry(first).or_insert((0, c.color())).0 += 1;
        }
        backends
            .iter()
            .map(|(first, (n, color))| {
                let text = if *n > 1 {
                    format!("{first} ×{n}")
                } else {
                    first.clone()
                };
                color.map_or(text.clone(), |color| self.t.color(color, &text))
            })
            .collect::<Vec<_>>()
            .join(", ")
    }

    fn all_on_blue(&mut self) -> anyhow::Result<()> {
        self.step(1, "All traffic on blue (v1)");
        self.t.say(&format!(
            "{} runs v1 on two instances; {} runs nothing yet. The weight is 0 %: every new \
             connection goes to blue.",
            self.t.color(ColorName::Blue, "blue"),
            self.t.color(ColorName::Green, "green")
        ));
        self.begin(1, "all on blue", 0.0, false)?;
        let client = self.lab.lab.topology.client.name.clone();
        self.t.say(&format!(
            "The client ({client}) opens a new connection every {} ms (one GET each) and keeps \
             {LONG_LIVED} keep-alive connections asking every {} ms.",
            self.timing.pace.as_millis(),
            KEEPALIVE_EVERY.as_millis()
        ));
        let client_ns = &self.lab.lab.topology.client;
        let load = self.load.as_mut().expect("started by begin");
        load.open_long_lived(client_ns, LONG_LIVED);
        let opened = self.load().long_lived();
        let line = format!("keep-alive connections on: {}", self.describe(&opened));
        self.t.say(&line);
        self.dwell(self.timing.dwell)
    }

    fn canary(&mut self) -> anyhow::Result<RolloutOutcome> {
        self.step(2, "Green (v2) deployed; canary rollout 1 → 10 → 50 → 100 %");
        self.lab.deploy(ColorName::Green, Release::Healthy("v2"));
        self.t.say(&format!(
            "{} now runs v2 on two instances. A canary rollout moves new connections to it \
             step by step; the daemon judges each step on in-kernel handshake signals (green \
             against blue) before the next one.",
            self.t.color(ColorName::Green, "green")
        ));
        // New connections wait from just before the rollout starts until its first phase
        // begins (as around a switch), so each is counted in the phase whose weight it saw.
        self.load().pause();
        self.run_cli(&self.timing.rollout_start())?;
        let outcome = self.watch_rollout(2, "canary", false)?;
        self.run_cli(&format!("rollout status {SERVICE}"))?;
        // Configured weight against the measured share, per canary step.
        let marks: Vec<usize> = (0..self.marks.len())
            .filter(|&i| self.marks[i].step == 2)
            .collect();
        let tallies = self.load().phases();
        let kernel_now = self.lab.kernel_new_flows()?;
        let mut table = vec![format!(
            "{:>10} {:>10} {:>16} {:>16}",
            "configured", "new conns", "measured (client)", "measured (kernel)"
        )];
        for &i in &marks {
            let mark = &self.marks[i];
            let end = self.marks.get(i + 1).map_or(kernel_now, |m| m.kernel);
            let (blue, green) = (
                end.0.saturating_sub(mark.kernel.0),
                end.1.saturating_sub(mark.kernel.1),
            );
            let tally = &tallies[i].1;
            table.push(format!(
                "{:>9}% {:>10} {:>16} {:>16}",
                mark.weight_percent,
                tally.new_connections(),
                tally.green_share().map_or("-".into(), percent),
                if blue + green > 0 {
                    percent(green as f64 / (blue + green) as f64)
                } else {
                    "-".into()
                },
            ));
        }
        self.t
            .say("green share of new connections per step, as configured and as measured:");
        self.t.block(&table.join("\n"));
        Ok(outcome)
    }

    /// Follows the rollout until it ends: one line per decision, a new client phase per
    /// weight, the rollout's status redrawn on a terminal.
    fn watch_rollout(
        &mut self,
        step: u8,
        prefix: &str,
        bad_green: bool,
    ) -> anyhow::Result<RolloutOutcome> {
        let started = Instant::now();
        let mut seen = HashSet::new();
        let mut weight = None;
        let mut base_ms = None;
        let report = loop {
            let report = self.lab.rollout()?;
            let ended = matches!(
                report.phase,
                RolloutPhase::Completed | RolloutPhase::Aborted
            );
            // A rollback's weight 0 is the next phase's business, not a canary step.
            if weight != Some(report.green_weight) && !ended {
                weight = Some(report.green_weight);
                let percent = report.green_weight as f64 / 1e4;
                self.begin(step, &format!("{prefix} {percent}%"), percent, bad_green)?;
                self.load().resume();
            }
            for decision in &report.history {
                if !seen.insert((decision.at_unix_ms, decision.action.clone())) {
                    continue;
                }
                let base = *base_ms.get_or_insert(decision.at_unix_ms);
                let line = format!(
                    "+{:>4.1}s  {:<8} {:>4}% → {:>3}%  {}  (green: {} handshakes, {} failed; \
                     blue: {}, {} failed)",
                    decision.at_unix_ms.saturating_sub(base) as f64 / 1e3,
                    decision.action,
                    decision.from_weight as f64 / 1e4,
                    decision.to_weight as f64 / 1e4,
                    decision.reason,
                    decision.green.handshakes,
                    decision.green.failures,
                    decision.blue.handshakes,
                    decision.blue.failures,
                );
                let line = match decision.action.as_str() {
                    "abort" => self.t.paint(Style::Red, &line),
                    "complete" => self.t.paint(Style::Green, &line),
                    _ => line,
                };
                self.t.say(&line);
            }
            if ended || started.elapsed() > self.timing.rollout_limit {
                break report;
            }
            if self.t.is_tty() {
                let line = self.client_line(&self.load().current());
                self.t.live(&format!("{}{line}", render_rollout(&report)));
            }
            interrupt::sleep(ROLLOUT_POLL)?;
        };
        self.t.end_live();
        Ok(outcome(&report, started.elapsed()))
    }

    /// `splitter switch web <color>` and a new phase. New connections wait while the command
    /// runs (a few tens of milliseconds), so that each is counted in the phase whose weight it
    /// saw, by the client and by the kernel alike; the long-lived ones carry on through it.
    fn switch(&mut self, color: &str, phase: &str, weight_percent: f64) -> anyhow::Result<()> {
        self.load().pause();
        let switched = self
            .run_cli(&format!("switch {SERVICE} {color}"))
            .and_then(|()| self.begin(3, phase, weight_percent, false));
        self.load().resume();
        switched
    }

    /// Returns how many long-lived connections were open through both switches.
    fn switches(&mut self) -> anyhow::Result<usize> {
        self.step(3, "Blue-green switch: back to blue, then forward to green");
        let client_ns = &self.lab.lab.topology.client;
        let load = self.load.as_mut().expect("the client runs");
        load.open_long_lived(client_ns, LONG_LIVED);
        let opened = self.load().long_lived();
        let line = format!(
            "{LONG_LIVED} more keep-alive connections, opened at 100 %: {}",
            self.describe(&opened[LONG_LIVED..])
        );
        self.t.say(&line);
        self.t.say(
            "A switch moves every new connection to one color at once; established ones \
             stay on their backend.",
        );
        self.switch("blue", "switched to blue", 0.0)?;
        self.dwell(self.timing.dwell)?;
        self.switch("green", "switched to green", 100.0)?;
        self.dwell(self.timing.dwell)?;
        let connections = self.load().long_lived();
        let through = connections.iter().filter(|c| c.intact()).count();
        let requests: u64 = connections.iter().map(|c| c.requests).sum();
        let line = format!(
            "keep-alive connections: {through} of {} answered by the same backend through both \
             switches ({requests} requests): {}",
            connections.len(),
            self.describe(&connections)
        );
        self.t.say(&line);
        // Make room for the next release on green: new connections to blue, then drain green.
        self.t.say(&format!(
            "Next release: {} takes every new connection, green's keep-alive connections close \
             (drained), and green gets v3.",
            self.t.color(ColorName::Blue, "blue (v1)")
        ));
        self.switch("blue", "back to blue, green drained", 0.0)?;
        interrupt::sleep(Duration::from_millis(500))?;
        self.load
            .as_mut()
            .expect("the client runs")
            .close(ColorName::Green);
        Ok(through)
    }

    fn bad_green(&mut self) -> anyhow::Result<RolloutOutcome> {
        self.lab.deploy(ColorName::Green, Release::Resetting("v3"));
        self.step(
            4,
            "A bad release: green (v3) resets connections; the analysis rolls it back",
        );
        self.t.say(&format!(
            "{} accepts every connection and resets it. The same canary rollout starts; \
             the daemon sees the resets in the kernel and puts green back to 0 % on its own.",
            self.t.color(ColorName::Green, "green v3")
        ));
        // New connections wait from just before the rollout starts until its first phase
        // begins (as around a switch), so each is counted in the phase whose weight it saw.
        self.load().pause();
        self.run_cli(&self.timing.rollout_start())?;
        let outcome = self.watch_rollout(4, "bad canary", true)?;
        self.begin(4, "after the rollback", 0.0, false)?;
        self.run_cli(&format!("rollout status {SERVICE}"))?;
        self.t.say("Blue serves every new connection again:");
        self.dwell(self.timing.dwell)?;
        Ok(outcome)
    }
}

fn outcome(report: &RolloutReport, elapsed: Duration) -> RolloutOutcome {
    RolloutOutcome {
        phase: match report.phase {
            RolloutPhase::Running => "running",
            RolloutPhase::Paused => "paused",
            RolloutPhase::Completed => "completed",
            RolloutPhase::Aborted => "aborted",
        }
        .to_owned(),
        green_weight_percent: report.green_weight as f64 / 1e4,
        step: report.step,
        actions: report.history.iter().map(|d| d.action.clone()).collect(),
        reason: report
            .last
            .as_ref()
            .map(|d| d.reason.clone())
            .unwrap_or_default(),
        seconds: elapsed.as_secs_f64(),
    }
}
