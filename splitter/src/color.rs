//! The two colors by name, as the config, the CLI, the state file and rollouts spell them.
//! A leaf module: every layer may name a color without depending on the others.

use serde::{Deserialize, Serialize};

/// The two colors, as config keys and labels.
#[derive(
    Clone,
    Copy,
    Debug,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Deserialize,
    Serialize,
    clap::ValueEnum,
)]
#[serde(rename_all = "lowercase")]
pub enum ColorName {
    Blue,
    Green,
}

impl ColorName {
    pub const BOTH: [ColorName; 2] = [ColorName::Blue, ColorName::Green];

    pub const fn name(self) -> &'static str {
        match self {
            ColorName::Blue => "blue",
            ColorName::Green => "green",
        }
    }

    /// The other color (the canary of a stable color, and back).
    pub const fn other(self) -> ColorName {
        match self {
            ColorName::Blue => ColorName::Green,
            ColorName::Green => ColorName::Blue,
        }
    }

    pub const fn color(self) -> splitter_common::Color {
        match self {
            ColorName::Blue => splitter_common::Color::Blue,
            ColorName::Green => splitter_common::Color::Green,
        }
    }
}

impl std::fmt::Display for ColorName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}
