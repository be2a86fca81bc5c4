//! The active checks: one tokio task per checked backend, each probing at its `interval` and
//! handing the result to the application (a short lock; a state change rewrites one service's
//! pools). They never block the control socket or the reconcile: a probe waits on its socket,
//! not on the lock. A supervisor starts and stops tasks as reloads change the targets.

use std::{collections::HashMap, sync::Arc, time::Duration};

use tokio::task::JoinHandle;

use super::{backends::CheckTarget, shared::Shared};
use crate::health::probe::probe;

/// How often the supervisor compares the running tasks with the config's targets.
const SUPERVISE: Duration = Duration::from_secs(1);

/// Runs forever: keeps one task per [`CheckTarget`].
pub async fn run(shared: Arc<Shared>) {
    let mut running: HashMap<CheckTarget, JoinHandle<()>> = HashMap::new();
    let mut tick = tokio::time::interval(SUPERVISE);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tick.tick().await;
        let wanted = shared.check_targets();
        running.retain(|target, task| {
            let keep = wanted.contains(target);
            if !keep {
                task.abort();
            }
            keep
        });
        for target in wanted {
            running
                .entry(target.clone())
                .or_insert_with(|| tokio::spawn(check(shared.clone(), target)));
        }
    }
}

/// Probes one backend every `interval`, starting at an offset derived from its address so
/// a thousand backends are not all checked in the same millisecond.
async fn check(shared: Arc<Shared>, target: CheckTarget) {
    let interval = target.check.interval;
    let offset = spread(&target, interval);
    tokio::time::sleep(offset).await;
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let result = probe(&target.check, target.backend).await;
        shared.check_result(&target.service, target.backend, result);
    }
}

/// A stable offset within the first interval (FNV-1a of the target's name and address).
fn spread(target: &CheckTarget, interval: Duration) -> Duration {
    let text = format!("{}/{}", target.service, target.backend);
    let hash = text.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |hash, byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3)
    });
    let nanos = crate::units::nanos(interval).max(1);
    Duration::from_nanos(hash % nanos)
}
