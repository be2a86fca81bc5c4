//! `splitter rollout ...`: the rollout commands of the CLI and how their answers are shown.

use std::{io::Write as _, path::Path, time::Duration};

use clap::Subcommand;

use crate::{
    control::{
        client::{Client, ClientError},
        protocol::{Reply, Request, RolloutReport},
    },
    rollout::{Phase, plan::Overrides},
    units::{parse_duration, ppm_to_percent},
};

#[derive(Debug, Subcommand)]
pub enum RolloutCommand {
    /// Start a canary rollout from the stable color to the other one (the canary): the canary
    /// walks through the steps while the analysis passes, and traffic goes back to where it
    /// was on its own when the canary does worse than the stable color. Flags override the
    /// service's `[service.rollout]` plan.
    Start {
        service: String,
        /// The canary's share of new flows in percent, increasing, e.g. `1,5,25,50,100`.
        #[arg(long, value_delimiter = ',', allow_hyphen_values = true)]
        steps: Option<Vec<f64>>,
        /// How long each step runs before it may advance, e.g. `30s`, `500ms`, `1m30s`.
        #[arg(long)]
        every: Option<String>,
        /// Green's failure ratio may not exceed this (absolute, 0..1).
        #[arg(long)]
        max_failure_ratio: Option<f64>,
        /// Green's failure ratio may not exceed blue's × (1 + this).
        #[arg(long)]
        failure_tolerance: Option<f64>,
        /// Green's handshake p99 may not exceed blue's × (1 + this).
        #[arg(long)]
        latency_tolerance: Option<f64>,
        /// Green handshakes needed before a step is judged (fewer: hold).
        #[arg(long)]
        min_flows: Option<u64>,
        /// When the canary color already carries traffic: continue with the steps above its
        /// share (without it, such a start is refused).
        #[arg(long)]
        from_current: bool,
        /// Wait for the end: exit 0 when the canary reaches the last step, 6 when it was
        /// rolled back.
        #[arg(long)]
        wait: bool,
        /// With --wait: give up waiting after this long (exit 7; the rollout goes on).
        #[arg(long, requires = "wait")]
        timeout: Option<String>,
    },
    /// Start again with the plan of the service's last aborted rollout.
    Retry {
        service: String,
        /// Wait for the end (exit codes as `start --wait`).
        #[arg(long)]
        wait: bool,
        #[arg(long, requires = "wait")]
        timeout: Option<String>,
    },
    /// Every service's rollout: phase, step, canary color, started, last decision.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Wait for a running rollout to end: exit 0 completed, 6 rolled back, 7 timed out.
    Wait {
        service: String,
        /// Give up waiting after this long, e.g. `5m` (the rollout goes on).
        #[arg(long)]
        timeout: Option<String>,
    },
    /// Step n of m, current and next weight, time left, signals per color, last verdict.
    Status {
        service: String,
        #[arg(long)]
        json: bool,
        /// Redraw every second until the rollout ends (Ctrl-C stops watching, not the rollout).
        #[arg(long)]
        watch: bool,
    },
    /// Hold at the current step (the weight stays).
    Pause { service: String },
    /// Go on from the current step with a fresh analysis window.
    Resume { service: String },
    /// Move to the next step now; `--full`: straight to the last step.
    Promote {
        service: String,
        #[arg(long)]
        full: bool,
    },
    /// Roll back now: green's weight to 0 in one map write. Established green flows keep their
    /// backend unless `--cut` (then they are unpinned and their connections break).
    Abort {
        service: String,
        #[arg(long)]
        cut: bool,
    },
}

/// What a rollout command can fail with.
#[derive(Debug, thiserror::Error)]
pub enum RolloutCliError {
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error("--every `{0}` is not a duration (e.g. 30s, 500ms, 5m)")]
    Every(String),
    #[error("writing to stdout: {0}")]
    Stdout(#[from] std::io::Error),
    #[error(transparent)]
    Fleet(#[from] super::fleet::FleetCliError),
    #[error("the rollout of `{service}` was rolled back: {reason}")]
    Aborted { service: String, reason: String },
    #[error("--timeout `{0}` is not a duration (e.g. 30s, 5m)")]
    Timeout(String),
    #[error(
        "the rollout of `{service}` is still {phase} at {weight}% green after {waited:.1}s (it goes on; `splitter rollout wait {service}` waits again)"
    )]
    TimedOut {
        service: String,
        phase: &'static str,
        weight: String,
        waited: f64,
    },
}

#[expect(clippy::too_many_lines, reason = "one arm per command")]
pub fn execute(command: RolloutCommand, socket: &Path) -> Result<(), RolloutCliError> {
    let mut out = std::io::stdout().lock();
    let ask = |request: &Request| -> Result<RolloutReport, RolloutCliError> {
        match Client::connect(socket)?.request(request)? {
            Reply::Rollout(report) => Ok(*report),
            _ => unreachable!("rollout commands answer a rollout report"),
        }
    };
    match command {
        RolloutCommand::Start {
            service,
            steps,
            every,
            max_failure_ratio,
            failure_tolerance,
            latency_tolerance,
            min_flows,
            from_current,
            wait,
            timeout,
        } => {
            let every_ms = every
                .map(|text| {
                    parse_duration(&text)
                        .map(crate::units::millis)
                        .ok_or(RolloutCliError::Every(text))
                })
                .transpose()?;
            let timeout = parse_timeout(timeout)?;
            let overrides = Overrides {
                steps_percent: steps,
                every_ms,
                max_failure_ratio,
                failure_tolerance,
                latency_tolerance,
                min_flows,
            };
            let report = ask(&Request::RolloutStart {
                service: service.clone(),
                overrides,
                from_current,
            })?;
            write!(out, "{}", render(&report))?;
            out.flush()?;
            if wait {
                wait_for(&ask, &mut out, &service, timeout)?;
            }
            Ok(())
        }
        RolloutCommand::Retry {
            service,
            wait,
            timeout,
        } => {
            let timeout = parse_timeout(timeout)?;
            let report = ask(&Request::RolloutRetry {
                service: service.clone(),
            })?;
            write!(out, "{}", render(&report))?;
            out.flush()?;
            if wait {
                wait_for(&ask, &mut out, &service, timeout)?;
            }
            Ok(())
        }
        RolloutCommand::Wait { service, timeout } => {
            let timeout = parse_timeout(timeout)?;
            wait_for(&ask, &mut out, &service, timeout)
        }
        RolloutCommand::List { json } => {
            let Reply::Rollouts(reports) =
                Client::connect(socket)?.request(&Request::RolloutList)?
            else {
                unreachable!("rollout list answers rollouts")
            };
            if json {
                writeln!(
                    out,
                    "{}",
                    serde_json::to_string_pretty(&reports).expect("reports serialize")
                )?;
            } else {
                write!(out, "{}", render_list(&reports))?;
            }
            Ok(())
        }
        RolloutCommand::Status {
            service,
            json,
            watch,
        } => loop {
            let report = ask(&Request::RolloutStatus {
                service: service.clone(),
            })?;
            let text = if json {
                serde_json::to_string_pretty(&report).expect("reports serialize") + "\n"
            } else {
                render(&report)
            };
            super::write_frame(&mut out, &text, watch)?;
            if !watch || matches!(report.phase, Phase::Completed | Phase::Aborted) {
                return Ok(());
            }
            std::thread::sleep(Duration::from_secs(1));
        },
        RolloutCommand::Pause { service } => {
            let report = ask(&Request::RolloutPause { service })?;
            write!(out, "{}", render(&report))?;
            Ok(())
        }
        RolloutCommand::Resume { service } => {
            let report = ask(&Request::RolloutResume { service })?;
            write!(out, "{}", render(&report))?;
            Ok(())
        }
        RolloutCommand::Promote { service, full } => {
            let report = ask(&Request::RolloutPromote { service, full })?;
            write!(out, "{}", render(&report))?;
            Ok(())
        }
        RolloutCommand::Abort { service, cut } => {
            let report = ask(&Request::RolloutAbort { service, cut })?;
            write!(out, "{}", render(&report))?;
            // FLEET: `--cut` is applied by every host: how many did.
            if let Some(write) = &report.fleet.fleet_write {
                super::fleet::print_write(&mut out, write)?;
            }
            Ok(())
        }
    }
}

fn parse_timeout(timeout: Option<String>) -> Result<Option<Duration>, RolloutCliError> {
    timeout
        .map(|text| parse_duration(&text).ok_or(RolloutCliError::Timeout(text)))
        .transpose()
}

/// Polls the rollout until it ends: Ok when completed, `Aborted` when rolled back,
/// `TimedOut` when `timeout` ran out first.
fn wait_for(
    ask: &dyn Fn(&Request) -> Result<RolloutReport, RolloutCliError>,
    out: &mut impl std::io::Write,
    service: &str,
    timeout: Option<Duration>,
) -> Result<(), RolloutCliError> {
    let began = std::time::Instant::now();
    loop {
        let report = ask(&Request::RolloutStatus {
            service: service.to_owned(),
        })?;
        match report.phase {
            Phase::Completed => {
                writeln!(
                    out,
                    "{service}: rollout completed at {}% green ({} is stable)",
                    pct(report.green_weight),
                    report.stable
                )?;
                return Ok(());
            }
            Phase::Aborted => {
                return Err(RolloutCliError::Aborted {
                    service: service.to_owned(),
                    reason: report.last.map(|d| d.reason).unwrap_or_default(),
                });
            }
            Phase::Running | Phase::Paused => {}
        }
        if let Some(timeout) = timeout
            && began.elapsed() >= timeout
        {
            return Err(RolloutCliError::TimedOut {
                service: service.to_owned(),
                phase: phase_word(report.phase),
                weight: pct(report.green_weight),
                waited: began.elapsed().as_secs_f64(),
            });
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

const fn phase_word(phase: Phase) -> &'static str {
    match phase {
        Phase::Running => "running",
        Phase::Paused => "paused",
        Phase::Completed => "completed",
        Phase::Aborted => "aborted (rolled back)",
    }
}

/// `rollout list`: one line per service.
pub fn render_list(reports: &[RolloutReport]) -> String {
    use std::fmt::Write as _;
    let mut text = format!(
        "{:<16} {:<22} {:>7} {:<13} {:>7} {:<20} {}\n",
        "SERVICE", "PHASE", "STEP", "CANARY", "GREEN", "STARTED", "LAST DECISION"
    );
    for report in reports {
        let started = age(report.started_unix_ms);
        let last = report.last.as_ref().map_or_else(String::new, |d| {
            format!(
                "{} {}% -> {}%: {}",
                d.action,
                pct(d.from_weight),
                pct(d.to_weight),
                d.reason
            )
        });
        let _ = writeln!(
            text,
            "{:<16} {:<22} {:>7} {:<13} {:>6}% {:<20} {last}",
            report.service,
            phase_word(report.phase),
            format!("{}/{}", report.step, report.steps.len()),
            format!("{} -> {}", report.canary.other(), report.canary),
            pct(report.green_weight),
            started,
        );
    }
    text
}

/// How long ago a unix-ms instant was, e.g. `42s ago`, `3m12s ago`, `2h05m ago`.
fn age(unix_ms: u64) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, crate::units::millis);
    let seconds = now.saturating_sub(unix_ms) / 1000;
    match seconds {
        0..60 => format!("{seconds}s ago"),
        60..3600 => format!("{}m{:02}s ago", seconds / 60, seconds % 60),
        _ => format!("{}h{:02}m ago", seconds / 3600, seconds / 60 % 60),
    }
}

fn pct(ppm: u32) -> String {
    format!("{}", ppm_to_percent(ppm))
}

fn bar(step: usize, steps: usize, width: usize) -> String {
    let done = (step * width).checked_div(steps).unwrap_or(0);
    format!("[{}{}]", "#".repeat(done), ".".repeat(width - done))
}

/// The human view of a rollout.
pub fn render(report: &RolloutReport) -> String {
    use std::fmt::Write as _;
    let mut text = String::new();
    let phase = phase_word(report.phase);
    let steps: Vec<String> = report.steps.iter().map(|&w| pct(w)).collect();
    let _ = writeln!(
        text,
        "rollout {}: {phase} {} -> {}  step {} of {} {}  green {}%{}{}",
        report.service,
        report.canary.other(),
        report.canary,
        report.step,
        report.steps.len(),
        bar(report.step, report.steps.len(), 20),
        pct(report.green_weight),
        report
            .next_weight
            .map(|w| format!(" -> next {}%", pct(w)))
            .unwrap_or_default(),
        if report.phase == Phase::Running {
            format!("  time left {:.1}s", report.time_left_ms as f64 / 1e3)
        } else {
            String::new()
        },
    );
    let _ = writeln!(
        text,
        "  plan: {} steps {}%  every {:.1}s  min flows {}  (abort returns to {}% green; stable: {})",
        report.canary,
        steps.join(","),
        report.every_ms as f64 / 1e3,
        report.min_flows,
        pct(report.start_weight),
        report.stable
    );
    let _ = writeln!(
        text,
        "  {:<6} {:>9} {:>10} {:>9} {:>8} {:>12}",
        "window", "new flows", "handshakes", "failures", "ratio", "p99"
    );
    for (name, s) in [("blue", &report.blue), ("green", &report.green)] {
        let _ = writeln!(
            text,
            "  {:<6} {:>9} {:>10} {:>9} {:>8.3} {:>12}",
            name,
            s.new_flows,
            s.handshakes,
            s.failures,
            s.failure_ratio,
            s.handshake_p99
                .map_or("-".to_owned(), |p| format!("{:.2}ms", p * 1e3))
        );
    }
    if let Some(last) = &report.last {
        let _ = writeln!(
            text,
            "  last: {} {}% -> {}%: {}",
            last.action,
            pct(last.from_weight),
            pct(last.to_weight),
            last.reason
        );
    }
    if let Some(summed) = &report.fleet.fleet_signals {
        let _ = writeln!(text, "  fleet: {summed}");
    }
    text
}
