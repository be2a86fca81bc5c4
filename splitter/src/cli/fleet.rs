//! `splitter fleet ...` and the answer of a fleet-wide `set-weight`/`switch`.

use std::{io::Write, path::Path};

use clap::Subcommand;

use crate::{
    control::{
        client::{Client, ClientError},
        protocol::{Reply, Request},
    },
    fleet::report::{FleetLocalStatus, FleetStatusReport, FleetWrite},
    units::ppm_to_percent,
};

#[derive(Debug, Subcommand)]
pub enum FleetCommand {
    /// Every live host: version, definition hashes, applied revision, lag, last heartbeat.
    Status {
        /// Print the JSON report.
        #[arg(long)]
        json: bool,
    },
    /// End a `switch SERVICE COLOR --local` override on this host: the fleet's desired state
    /// applies again.
    ClearOverride { service: String },
    /// Make this host's definition of SERVICE (address, protocol, cohort, pools) the fleet's:
    /// hosts whose files differ are left alone until they catch up. Needed only when the hosts
    /// do not converge by themselves (the fleet's definition follows on its own once every
    /// live host runs the same new one).
    AdoptDefinition { service: String },
}

#[derive(Debug, thiserror::Error)]
pub enum FleetCliError {
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error(
        "{service}: {applied}/{live} hosts at revision {revision} when the wait ended; behind: {behind} (the change stays written: they apply it when they can)"
    )]
    Behind {
        service: String,
        applied: usize,
        live: usize,
        revision: i64,
        behind: String,
    },
    #[error("writing to stdout: {0}")]
    Stdout(#[from] std::io::Error),
}

pub fn execute(command: FleetCommand, socket: &Path) -> Result<(), FleetCliError> {
    let mut out = std::io::stdout().lock();
    match command {
        FleetCommand::Status { json } => {
            let Reply::FleetStatus(report) =
                Client::connect(socket)?.request(&Request::FleetStatus)?
            else {
                unreachable!("fleet-status answers a fleet status");
            };
            if json {
                writeln!(
                    out,
                    "{}",
                    serde_json::to_string_pretty(&report).expect("reports serialize")
                )?;
            } else {
                out.write_all(render_status(&report).as_bytes())?;
            }
        }
        FleetCommand::ClearOverride { service } => {
            Client::connect(socket)?.request(&Request::FleetClearOverride {
                service: service.clone(),
            })?;
            writeln!(
                out,
                "{service}: local override cleared; the fleet's desired state applies again"
            )?;
        }
        FleetCommand::AdoptDefinition { service } => {
            let Reply::FleetAdopted(adopted) =
                Client::connect(socket)?.request(&Request::FleetAdoptDefinition { service })?
            else {
                unreachable!("fleet-adopt-definition answers the adopted definition");
            };
            writeln!(
                out,
                "{}: the fleet's definition is now {} (this host's) at revision {}",
                adopted.service, adopted.definition, adopted.revision
            )?;
            if !adopted.differ.is_empty() {
                writeln!(
                    out,
                    "left alone until their files match: {}",
                    adopted.differ.join(", ")
                )?;
            }
        }
    }
    Ok(())
}

/// `web: green weight 10% written to the fleet at revision 42` then `3/3 hosts at revision 42`.
pub fn print_write(out: &mut impl Write, write: &FleetWrite) -> Result<(), FleetCliError> {
    let what = match write.stable {
        Some(color) => format!("every new flow to {color}"),
        None => format!("green weight {}%", ppm_to_percent(write.green_weight)),
    };
    writeln!(
        out,
        "{}: {what} written to the fleet at revision {}",
        write.service, write.revision
    )?;
    if !write.waited {
        return Ok(());
    }
    if write.behind.is_empty() {
        writeln!(
            out,
            "{}/{} hosts at revision {}",
            write.hosts_applied, write.hosts_live, write.revision
        )?;
        for host in &write.left_alone {
            writeln!(out, "left alone: {host}")?;
        }
        Ok(())
    } else {
        Err(FleetCliError::Behind {
            service: write.service.clone(),
            applied: write.hosts_applied,
            live: write.hosts_live,
            revision: write.revision,
            behind: write.behind.join(", "),
        })
    }
}

/// The fleet line(s) of `status`: connected or fail-static, applied revision, overrides,
/// mismatches.
pub fn status_line(fleet: &FleetLocalStatus) -> String {
    use std::fmt::Write as _;
    let mut text = if fleet.connected {
        format!(
            "  fleet {} as {}: connected, desired state applied at revision {}\n",
            fleet.fleet, fleet.host, fleet.applied_revision
        )
    } else {
        format!(
            "WARNING: fleet {} as {}: DISCONNECTED from etcd ({}): the state applied at revision {} stays in force\n",
            fleet.fleet,
            fleet.host,
            fleet.last_error.as_deref().unwrap_or("no session"),
            fleet.applied_revision
        )
    };
    for (service, color) in &fleet.overrides {
        let _ = writeln!(
            text,
            "  fleet: {service}: LOCAL OVERRIDE to {color} (`splitter fleet clear-override {service}` ends it)"
        );
    }
    for service in fleet.mismatched.keys() {
        let _ = writeln!(
            text,
            "WARNING: fleet: {service}: this host's definition differs from the fleet's: fleet changes are not applied"
        );
    }
    if fleet.seed_mismatch {
        text.push_str("WARNING: fleet: the data plane's hash seed differs from the fleet's: fleet changes are not applied\n");
    }
    text
}

/// The `fleet status` table.
pub fn render_status(report: &FleetStatusReport) -> String {
    let mut table = comfy_table::Table::new();
    table.load_preset(comfy_table::presets::NOTHING);
    table.set_header([
        "host",
        "version",
        "definitions",
        "applied",
        "lag",
        "heartbeat",
        "notes",
    ]);
    for host in &report.hosts {
        let record = &host.record;
        let definitions = record
            .definitions
            .iter()
            .map(|(service, hash)| {
                let agrees = report.definitions.get(service) == Some(hash);
                format!(
                    "{service}={}{}",
                    &hash[..8.min(hash.len())],
                    if agrees { "" } else { " (differs)" }
                )
            })
            .collect::<Vec<_>>()
            .join(" ");
        let mut notes = Vec::new();
        if !record.seed_agrees {
            notes.push("hash seed differs: left alone".to_owned());
        }
        for service in &record.mismatched {
            notes.push(format!("{service}: definition differs, not applied"));
        }
        for service in &record.overrides {
            notes.push(format!("{service}: local override"));
        }
        table.add_row([
            record.host.clone(),
            record.version.clone(),
            definitions,
            record.applied_revision.to_string(),
            host.lag.to_string(),
            format!("{:.1}s ago", host.heartbeat_age_ms as f64 / 1000.0),
            notes.join("; "),
        ]);
    }
    format!(
        "fleet {}: {} live hosts, desired state at revision {} (answered by {})\n{table}\n",
        report.fleet,
        report.hosts.len(),
        report.desired_revision,
        report.host
    )
}
