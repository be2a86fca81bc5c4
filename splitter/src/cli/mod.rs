//! The command line: argument definitions (clap), the documented exit codes, and the client
//! commands, which talk to the daemon over its control socket.

use std::{
    io::{IsTerminal as _, Write as _},
    path::{Path, PathBuf},
    process::ExitCode,
    time::Duration,
};

use clap::{CommandFactory as _, Parser, Subcommand};

use crate::{
    config::{ColorName, Config, ConfigError, DEFAULT_BPFFS, DEFAULT_CONFIG_PATH, DEFAULT_SOCKET},
    control::{
        client::{Client, ClientError},
        protocol::{ErrorKind, Reply, Request},
    },
    dataplane::{self, Unloaded},
    logging::LogFormat,
    units::{PercentError, parse_percent, ppm_to_percent},
};

mod backend;
mod drain;
mod fleet;
pub mod rollout;
mod status;
mod whatif;

pub use self::status::render_status;
use self::{
    drain::{DrainArgs, DrainCliError},
    fleet::{FleetCliError, FleetCommand},
    rollout::{RolloutCliError, RolloutCommand},
};

/// Exit codes (documented in the README and in `--help`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Exit {
    /// Done.
    Ok = 0,
    /// A runtime failure (kernel, I/O, the daemon could not carry out a valid request).
    Failure = 1,
    /// Bad usage or argument: unknown command or option, unknown service, bad percent.
    Usage = 2,
    /// The daemon is not running (no socket, or nobody answers on it).
    NotRunning = 3,
    /// Permission denied on the control socket (it is root-only).
    PermissionDenied = 4,
    /// Invalid configuration (daemon start, `check-config`, `reload`), or a reload that needs
    /// a restart; nothing was changed.
    InvalidConfig = 5,
    /// `rollout start --wait`: the rollout was rolled back (green did worse than blue, or an
    /// operator aborted it).
    RolloutAborted = 6,
    /// Not finished in time: `rollout wait` / `rollout start --wait --timeout` (the rollout
    /// goes on), `drain --wait --timeout` (the color still had live connections).
    Timeout = 7,
}

impl From<Exit> for ExitCode {
    fn from(exit: Exit) -> Self {
        ExitCode::from(exit as u8)
    }
}

const EXIT_CODES: &str = "\
Exit codes:
  0  success
  1  runtime failure (kernel, I/O, daemon-side error)
  2  bad usage or argument (unknown service, percent outside 0..=100, not a number)
  3  daemon not running / not reachable on the socket
  4  permission denied on the control socket (root only)
  5  invalid configuration, or a reload that needs a restart (nothing changed)
  6  rollout start --wait / rollout wait: the rollout was rolled back
  7  not finished in time: rollout start --wait --timeout / rollout wait --timeout (it goes on),
     drain --wait --timeout (the color still had live connections)";

/// `splitter --version`: the package version and the commit it was built from (`unknown`
/// outside a git checkout; set by `build.rs`).
pub const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (",
    env!("SPLITTER_COMMIT"),
    ")"
);

/// The commit the binary was built from (`git rev-parse --short HEAD`, or `unknown`).
pub const COMMIT: &str = env!("SPLITTER_COMMIT");

#[derive(Debug, Parser)]
#[command(
    name = "splitter",
    version = VERSION,
    about = "Blue/green and canary traffic splitter (XDP + TC)",
    after_help = EXIT_CODES
)]
pub struct Cli {
    /// The daemon's control socket [default: /run/splitter/splitter.sock].
    #[arg(long, global = true, value_name = "PATH")]
    pub socket: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the daemon: attach the data plane, serve the control socket and metrics.
    Daemon {
        #[arg(long, value_name = "FILE", default_value = DEFAULT_CONFIG_PATH)]
        config: PathBuf,
        /// Log lines on stderr as text, logfmt or JSON (one line per event; filter with
        /// `SPLITTER_LOG`, e.g. debug).
        #[arg(long, value_enum, value_name = "FORMAT", default_value_t = LogFormat::Text)]
        log_format: LogFormat,
    },
    /// Weights, stable color and releases, measured green share and per-backend traffic and
    /// rates of every service (or of SERVICE).
    Status {
        service: Option<String>,
        /// Print the daemon's JSON snapshot.
        #[arg(long)]
        json: bool,
        /// Redraw in place every --interval seconds (Ctrl-C stops).
        #[arg(long)]
        watch: bool,
        #[arg(long, value_name = "SECONDS", default_value_t = 1.0)]
        interval: f64,
    },
    /// Send PERCENT of new flows of SERVICE to green (e.g. 12.5; up to 4 decimals).
    /// Established flows stay where they are.
    /// With `[fleet]`: written to etcd, then waits until every live host applied it.
    SetWeight {
        service: String,
        #[arg(allow_hyphen_values = true)]
        percent: String,
        /// With `[fleet]`: return once written, without waiting for the hosts.
        #[arg(long)]
        no_wait: bool,
    },
    /// Send every new flow of SERVICE to one color (cutover or instant rollback).
    /// Established flows stay where they are. With `[fleet]`: fleet-wide, as `set-weight`.
    Switch {
        service: String,
        color: ColorName,
        /// With `[fleet]`: return once written, without waiting for the hosts.
        #[arg(long)]
        no_wait: bool,
        /// With `[fleet]`: this host only, without etcd (an emergency): held against the
        /// fleet until `splitter fleet clear-override SERVICE`.
        #[arg(long)]
        local: bool,
    },
    /// Drain COLOR of SERVICE: every new flow to the other color at once (one map write, as
    /// `switch`), then its live connections per backend; `--wait` until there are none.
    Drain(DrainArgs),
    /// What `set-weight SERVICE P` would change, changing nothing: pinned flows affected
    /// (none: they are pinned) and the share of new cohorts that would change color.
    WhatIf {
        service: String,
        /// The green weight to ask about, in percent (as `set-weight`).
        #[arg(long, value_name = "PERCENT", allow_hyphen_values = true)]
        weight: String,
        /// Print the daemon's JSON answer.
        #[arg(long)]
        json: bool,
    },
    /// One backend in or out of rotation without editing the file (persisted):
    /// `disable` (maintenance), `enable`, `drain` (`--wait` until its connections close).
    Backend {
        #[command(subcommand)]
        command: backend::BackendCommand,
    },
    /// Re-read the config file and apply the difference (same as SIGHUP).
    Reload,
    /// Validate a config file without a daemon: syntax, values (every problem, not just the
    /// first), and what the daemon checks on this host at start (interfaces, bpffs,
    /// directories).
    CheckConfig {
        #[arg(long, value_name = "FILE", default_value = DEFAULT_CONFIG_PATH)]
        config: PathBuf,
        /// Skip the checks of this host (interfaces, bpffs, directories): for a file meant
        /// for another host.
        #[arg(long)]
        no_host_checks: bool,
    },
    /// The fleet (`[fleet]`): status of every host, local overrides.
    Fleet {
        #[command(subcommand)]
        command: FleetCommand,
    },
    /// Canary rollouts: start, status, pause, resume, promote, abort.
    Rollout {
        #[command(subcommand)]
        command: RolloutCommand,
    },
    /// Detach the data plane and remove its pins (flows and counters), stopping the daemon.
    /// Without a running daemon, removes what is pinned under the config's bpffs directory.
    Unload {
        /// Where to find the socket and bpffs directory when they are not the defaults.
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
    },
    /// Print the shell completion script for SHELL, e.g.
    /// `splitter completions bash > /usr/share/bash-completion/completions/splitter`.
    Completions { shell: clap_complete::Shell },
    /// Print the man page (roff) on stdout: `splitter manpage | man -l -`.
    #[command(hide = true)]
    Manpage,
}

/// A client command's failure, mapped to an exit code.
#[derive(Debug, thiserror::Error)]
enum CliError {
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error(transparent)]
    Rollout(RolloutCliError),
    #[error(transparent)]
    Drain(DrainCliError),
    #[error(transparent)]
    Fleet(FleetCliError),
    #[error(transparent)]
    Backend(backend::BackendCliError),
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("`{value}` {problem}")]
    Percent {
        value: String,
        problem: PercentError,
    },
    #[error("--interval must be between 0.1 and 3600 seconds")]
    Interval,
    #[error(transparent)]
    Dataplane(#[from] dataplane::DataplaneError),
    #[error(transparent)]
    State(crate::state::StateError),
    #[error("writing to stdout: {0}")]
    Stdout(#[from] std::io::Error),
    #[error("no service `{name}` (configured: {known})")]
    UnknownService { name: String, known: String },
}

fn fleet_exit(error: &FleetCliError) -> Exit {
    match error {
        FleetCliError::Client(client) => client_exit(client),
        FleetCliError::Behind { .. } => Exit::Timeout,
        FleetCliError::Stdout(_) => Exit::Failure,
    }
}

impl CliError {
    fn exit(&self) -> Exit {
        match self {
            CliError::Client(client) => client_exit(client),
            CliError::Dataplane(_) | CliError::State(_) | CliError::Stdout(_) => Exit::Failure,
            CliError::Config(_) => Exit::InvalidConfig,
            CliError::Rollout(error) => match error {
                RolloutCliError::Client(client) => client_exit(client),
                RolloutCliError::Every(_) | RolloutCliError::Timeout(_) => Exit::Usage,
                RolloutCliError::TimedOut { .. } => Exit::Timeout,
                RolloutCliError::Aborted { .. } => Exit::RolloutAborted,
                RolloutCliError::Stdout(_) => Exit::Failure,
                RolloutCliError::Fleet(error) => fleet_exit(error),
            },
            CliError::Drain(error) => match error {
                DrainCliError::Client(client) => client_exit(client),
                DrainCliError::Timeout(_) => Exit::Usage,
                DrainCliError::NotDrained { .. } => Exit::Timeout,
                DrainCliError::Stdout(_) => Exit::Failure,
            },
            CliError::Fleet(error) => fleet_exit(error),
            CliError::Backend(error) => match error {
                backend::BackendCliError::Client(client) => client_exit(client),
                backend::BackendCliError::Timeout(_) => Exit::Usage,
                backend::BackendCliError::NotDrained { .. } => Exit::Timeout,
                backend::BackendCliError::Stdout(_) => Exit::Failure,
            },
            CliError::Percent { .. } | CliError::Interval | CliError::UnknownService { .. } => {
                Exit::Usage
            }
        }
    }
}

fn client_exit(error: &ClientError) -> Exit {
    match error {
        ClientError::NotRunning { .. } | ClientError::Closed { .. } => Exit::NotRunning,
        ClientError::PermissionDenied { .. } => Exit::PermissionDenied,
        ClientError::Daemon(error) => match error.kind {
            ErrorKind::UnknownService | ErrorKind::InvalidArgument | ErrorKind::BadRequest => {
                Exit::Usage
            }
            ErrorKind::InvalidConfig | ErrorKind::RestartRequired => Exit::InvalidConfig,
            ErrorKind::Runtime => Exit::Failure,
        },
        _ => Exit::Failure,
    }
}

/// Runs a client command (every command but `daemon`).
pub fn run(command: Command, socket: Option<&Path>) -> Exit {
    let socket = socket.map_or_else(|| PathBuf::from(DEFAULT_SOCKET), Path::to_owned);
    match execute(command, &socket) {
        Ok(()) => Exit::Ok,
        Err(error) => {
            eprintln!("splitter: {error}");
            error.exit()
        }
    }
}

fn request(socket: &Path, request: &Request) -> Result<Reply, CliError> {
    Ok(Client::connect(socket)?.request(request)?)
}

#[expect(clippy::too_many_lines, reason = "one arm per command")]
fn execute(command: Command, socket: &Path) -> Result<(), CliError> {
    let mut out = std::io::stdout().lock();
    match command {
        Command::Daemon { .. } => unreachable!("main runs the daemon"),
        Command::Completions { shell } => {
            // Into a buffer first: clap_complete panics on a write error (a closed pipe).
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut Cli::command(), "splitter", &mut script);
            out.write_all(&script)?;
            Ok(())
        }
        Command::Manpage => {
            clap_mangen::Man::new(Cli::command()).render(&mut out)?;
            Ok(())
        }
        Command::Status {
            service,
            json,
            watch,
            interval,
        } => {
            if !(0.1..=3600.0).contains(&interval) {
                return Err(CliError::Interval);
            }
            loop {
                // A connection per frame: the daemon closes idle connections.
                let Reply::Status(mut report) =
                    Client::connect(socket)?.request(&Request::Status)?
                else {
                    unreachable!("status answers a status");
                };
                if let Some(name) = &service {
                    let known: Vec<String> =
                        report.services.iter().map(|s| s.name.clone()).collect();
                    report.services.retain(|s| &s.name == name);
                    if report.services.is_empty() {
                        return Err(CliError::UnknownService {
                            name: name.clone(),
                            known: known.join(", "),
                        });
                    }
                }
                let text = if json {
                    serde_json::to_string_pretty(&report).expect("reports serialize") + "\n"
                } else {
                    render_status(&report)
                };
                write_frame(&mut out, &text, watch)?;
                if !watch {
                    return Ok(());
                }
                std::thread::sleep(Duration::from_secs_f64(interval));
            }
        }
        Command::SetWeight {
            service,
            percent,
            no_wait,
        } => {
            let green_weight = parse_percent(&percent).map_err(|problem| CliError::Percent {
                value: percent.clone(),
                problem,
            })?;
            let reply = request(
                socket,
                &Request::SetWeight {
                    service,
                    green_weight,
                    no_wait,
                },
            )?;
            print_weight(&mut out, reply)
        }
        Command::Switch {
            service,
            color,
            no_wait,
            local,
        } => {
            let reply = request(
                socket,
                &Request::Switch {
                    service,
                    color,
                    no_wait,
                    local,
                },
            )?;
            print_weight(&mut out, reply)
        }
        Command::Fleet { command } => fleet::execute(command, socket).map_err(CliError::Fleet),
        Command::Drain(args) => drain::execute(args, socket).map_err(CliError::Drain),
        Command::WhatIf {
            service,
            weight,
            json,
        } => {
            let green_weight = parse_percent(&weight).map_err(|problem| CliError::Percent {
                value: weight.clone(),
                problem,
            })?;
            let Reply::WhatIf(report) = request(
                socket,
                &Request::WhatIf {
                    service,
                    green_weight,
                },
            )?
            else {
                unreachable!("what-if answers a what-if report");
            };
            if json {
                writeln!(
                    out,
                    "{}",
                    serde_json::to_string_pretty(&report).expect("reports serialize")
                )?;
            } else {
                out.write_all(whatif::render(&report).as_bytes())?;
            }
            Ok(())
        }
        Command::Backend { command } => {
            backend::execute(command, socket).map_err(CliError::Backend)
        }
        Command::Reload => {
            let Reply::Reloaded(report) = request(socket, &Request::Reload)? else {
                unreachable!("reload answers a reload report");
            };
            let list = |names: &[String]| {
                if names.is_empty() {
                    "-".to_owned()
                } else {
                    names.join(", ")
                }
            };
            writeln!(
                out,
                "reloaded: added {}; changed {}; removed {}; unchanged {}; attached {}; detached {}",
                list(&report.added),
                list(&report.changed),
                list(&report.removed),
                list(&report.unchanged),
                list(&report.attached),
                list(&report.detached),
            )?;
            Ok(())
        }
        Command::Rollout { command } => {
            rollout::execute(command, socket).map_err(CliError::Rollout)
        }
        Command::CheckConfig {
            config,
            no_host_checks,
        } => {
            let valid = Config::check(&config, !no_host_checks)?;
            writeln!(
                out,
                "{}: ok ({} service{}, interfaces {})",
                config.display(),
                valid.services.len(),
                if valid.services.len() == 1 { "" } else { "s" },
                valid.interfaces.join(", ")
            )?;
            writeln!(out, "hash seed: {}", seed_in_force(&valid)?)?;
            Ok(())
        }
        Command::Unload { config } => {
            let (socket, bpffs) = match &config {
                Some(path) => {
                    let config = Config::read(path)?;
                    (config.control.socket, config.control.bpffs)
                }
                None => (socket.to_owned(), PathBuf::from(DEFAULT_BPFFS)),
            };
            let unloaded = match request(&socket, &Request::Unload) {
                Ok(Reply::Unloaded(unloaded)) => unloaded,
                Ok(_) => unreachable!("unload answers an unload report"),
                Err(CliError::Client(ClientError::NotRunning { .. })) => {
                    writeln!(
                        out,
                        "no daemon on {}; unloading {} directly",
                        socket.display(),
                        bpffs.display()
                    )?;
                    dataplane::unload(&bpffs)?
                }
                Err(error) => return Err(error),
            };
            print_unloaded(&mut out, &unloaded)
        }
    }
}

/// Which hash seed a daemon started with `config` uses (never its value: see
/// `HashSeedSource`).
fn seed_in_force(config: &crate::config::Validated) -> Result<String, CliError> {
    if config.hash_seed.is_some() {
        return Ok("configured (dataplane.hash_seed)".to_owned());
    }
    let path = crate::state::RandomSeed::path(&config.state_dir);
    Ok(match crate::state::RandomSeed::read(&config.state_dir) {
        Ok(Some(_)) => format!("random, kept in {}", path.display()),
        Ok(None) => format!(
            "random, drawn at the first start and kept in {}",
            path.display()
        ),
        Err(error) => return Err(CliError::State(error)),
    })
}

/// One frame of `--watch`: on a terminal it is drawn over the previous one (cursor home, draw,
/// clear what is left of the previous frame); into a pipe or a file it is appended as plain
/// text, without escape codes. Without `--watch`, just the text.
fn write_frame(out: &mut impl std::io::Write, text: &str, watch: bool) -> std::io::Result<()> {
    if watch && std::io::stdout().is_terminal() {
        write!(out, "\x1b[H{}\x1b[J", text.replace('\n', "\x1b[K\n"))?;
    } else {
        write!(out, "{text}")?;
    }
    out.flush()
}

fn print_weight(out: &mut impl std::io::Write, reply: Reply) -> Result<(), CliError> {
    let change = match reply {
        Reply::Weight(change) => change,
        Reply::Fleet(write) => return fleet::print_write(out, &write).map_err(CliError::Fleet),
        _ => unreachable!("weight commands answer a weight change"),
    };
    writeln!(
        out,
        "{}: green weight {}% -> {}% of new flows (established flows stay on their backend)",
        change.service,
        ppm_to_percent(change.previous_green_weight),
        ppm_to_percent(change.green_weight)
    )?;
    Ok(())
}

fn print_unloaded(out: &mut impl std::io::Write, unloaded: &Unloaded) -> Result<(), CliError> {
    let interfaces = if unloaded.interfaces.is_empty() {
        "no interface".to_owned()
    } else {
        unloaded.interfaces.join(", ")
    };
    writeln!(
        out,
        "unloaded: detached from {interfaces}; {}",
        if unloaded.dataplane {
            "pinned maps and programs removed"
        } else {
            "nothing was pinned"
        }
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory as _;

    use super::*;

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn bad_percent_is_a_usage_error() {
        let error = execute(
            Command::SetWeight {
                service: "web".into(),
                percent: "150".into(),
                no_wait: false,
            },
            Path::new("/nonexistent/splitter.sock"),
        )
        .unwrap_err();
        assert_eq!(error.to_string(), "`150` is outside 0..=100");
        assert_eq!(error.exit(), Exit::Usage);
        let error = execute(
            Command::SetWeight {
                service: "web".into(),
                percent: "abc".into(),
                no_wait: false,
            },
            Path::new("/nonexistent/splitter.sock"),
        )
        .unwrap_err();
        assert_eq!(
            error.to_string(),
            "`abc` is not a number (expected a percent like 12.5)"
        );
        assert_eq!(error.exit(), Exit::Usage);
    }

    #[test]
    fn no_daemon_is_exit_3() {
        let error = execute(
            Command::Switch {
                service: "web".into(),
                color: ColorName::Green,
                no_wait: false,
                local: false,
            },
            Path::new("/nonexistent/splitter.sock"),
        )
        .unwrap_err();
        assert_eq!(error.exit(), Exit::NotRunning);
        assert!(
            error.to_string().starts_with(
                "the splitter daemon is not running (nothing listens on /nonexistent/splitter.sock"
            ),
            "{error}"
        );
    }
}
