//! The desired state of one service, as the fleet stores it (one JSON value per service, so a
//! `switch` — weight and stable color — is one write, one revision, one watch event).

use serde::{Deserialize, Serialize};

use crate::color::ColorName;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Desired {
    /// Share of new flows to green, parts per million.
    pub green_weight: u32,
    /// Set by `switch`: the color that takes every new flow is the stable one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stable: Option<ColorName>,
    /// HOOK (disabled backends, being added to the local state by another change): the
    /// backends the fleet has disabled, stored here and not applied yet.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub disabled_backends: Vec<String>,
}

impl Desired {
    pub fn weight(green_weight: u32) -> Self {
        Self {
            green_weight,
            stable: None,
            disabled_backends: Vec::new(),
        }
    }

    /// What `switch SERVICE COLOR` writes.
    pub fn switch(color: ColorName) -> Self {
        Self {
            green_weight: match color {
                ColorName::Blue => 0,
                ColorName::Green => splitter_common::WEIGHT_SCALE,
            },
            stable: Some(color),
            disabled_backends: Vec::new(),
        }
    }
}
