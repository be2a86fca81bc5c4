//! The answer to `what-if` (a protocol type: `protocol::WhatIfReport`), apart so the protocol
//! file stays within its size.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use crate::config::{CohortSetting, ColorName};

/// What `set-weight SERVICE green_weight` would change, computed with the data plane's own
/// selection rule (`splitter_common::select`) over the tables and flows in the kernel.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct WhatIfReport {
    pub service: String,
    pub cohort: CohortSetting,
    /// The weight in force and the one asked about, parts per million.
    pub green_weight: u32,
    pub proposed_green_weight: u32,
    /// Flows pinned now (established, closing, handshakes in progress, active UDP): a weight
    /// never moves them, so `pinned_affected` is 0.
    pub pinned_flows: u64,
    pub pinned_affected: u64,
    /// Of the 2³² cohort hashes, how many choose another color for a new flow (exact threshold
    /// arithmetic, empty colors' fallback included), and that share of new cohorts.
    pub moved_hashes: u64,
    pub moved_share: f64,
    /// The color those cohorts move to (none when nothing moves).
    pub moved_to: Option<ColorName>,
    /// Distinct cohorts among the pinned flows, and how many of them would choose another
    /// color for their next new flow (with `cohort = "client"`: the same client's next
    /// connection).
    pub seen_cohorts: u64,
    pub seen_cohorts_moving: u64,
    /// Whether each color has a backend in rotation (an empty one sends its cohorts to the
    /// other color, whatever the weight).
    pub blue_in_rotation: bool,
    pub green_in_rotation: bool,
    /// `[service.overrides]` prefixes of the service's family: their clients keep their color
    /// at any weight (`moved_share` is the share of the other cohorts).
    #[serde(default)]
    pub override_prefixes: u64,
    /// Of `seen_cohorts`, those whose client is under an override (none of them moves).
    #[serde(default)]
    pub seen_cohorts_overridden: u64,
    /// The service's preview address: every flow of it goes to green at any weight.
    #[serde(default)]
    pub preview: Option<SocketAddr>,
}
