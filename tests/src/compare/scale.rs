//! Scale: the data plane's per-packet cost as its tables grow, through BPF_PROG_TEST_RUN and
//! the restoring wrapper (`crate::bench`): 1 to 1M pinned flows, 1 and 100 services. With many
//! flows two figures matter: one hot flow (the table's size alone) and packets spread over every
//! pinned flow (the table no longer fits in the caches).

use super::Options;
use crate::bench::{Path, ScaleOptions, ScalePoint};

pub struct Scale {
    pub points: Vec<ScalePoint>,
    pub repeat: u32,
    pub rounds: usize,
}

impl Scale {
    pub fn find(&self, flows: u32, services: u32, path: Path) -> Option<f64> {
        self.points
            .iter()
            .find(|p| p.flows == flows && p.services == services && p.path == path)
            .map(|p| p.ns_per_packet)
    }
}

pub fn run(options: &Options) -> anyhow::Result<Scale> {
    let scale = ScaleOptions {
        repeat: options.scale_repeat,
        rounds: options.runs.max(3),
        table_sizes: options.scale_table_sizes.clone(),
        service_counts: options.scale_service_counts.clone(),
    };
    let points = crate::bench::scale(&scale)?;
    for point in &points {
        eprintln!(
            "scale: {:>8} flows, {:>3} services, {:<45} {:>6.1} ns/packet",
            point.flows,
            point.services,
            point.path.label(),
            point.ns_per_packet
        );
    }
    Ok(Scale {
        points,
        repeat: scale.repeat,
        rounds: scale.rounds,
    })
}
