//! `splitter what-if SERVICE --weight P`: the daemon's answer as text.

use std::fmt::Write as _;

use crate::{control::protocol::WhatIfReport, units::ppm_to_percent};

/// The answer, one statement per line.
pub fn render(report: &WhatIfReport) -> String {
    let mut text = String::new();
    let (now, proposed) = (
        ppm_to_percent(report.green_weight),
        ppm_to_percent(report.proposed_green_weight),
    );
    let _ = writeln!(
        text,
        "{}: green weight {now} % → {proposed} % (nothing changed; cohort {})",
        report.service,
        report.cohort.name()
    );
    let _ = writeln!(
        text,
        "pinned flows: {} now, {} affected: a weight change never moves a pinned flow",
        report.pinned_flows, report.pinned_affected
    );
    match report.moved_to {
        Some(to) => {
            let from = to.other();
            let _ = writeln!(
                text,
                "new cohorts: {:.4} % change color, {from} → {to} ({} of 2^32 hashes)",
                report.moved_share * 100.0,
                report.moved_hashes
            );
        }
        None => {
            let _ = writeln!(text, "new cohorts: none change color");
        }
    }
    for (color, in_rotation) in [
        ("blue", report.blue_in_rotation),
        ("green", report.green_in_rotation),
    ] {
        if !in_rotation {
            let _ = writeln!(
                text,
                "note: {color} has no backend in rotation: its cohorts go to the other color at any weight"
            );
        }
    }
    if report.override_prefixes > 0 {
        let _ = writeln!(
            text,
            "note: {} override prefixes: their clients keep their color at any weight (the share above is of the other cohorts)",
            report.override_prefixes
        );
    }
    if let Some(preview) = report.preview {
        let _ = writeln!(
            text,
            "note: preview address {preview}: every flow to green at any weight"
        );
    }
    let _ = writeln!(
        text,
        "cohorts seen in the pinned flows: {}, of which {} would choose another color for a new flow ({} under an override)",
        report.seen_cohorts, report.seen_cohorts_moving, report.seen_cohorts_overridden
    );
    text
}
