//! The desired state of one service, as the fleet stores it (one JSON value per service, so a
//! `switch` — weight and stable color — is one write, one revision, one watch event), and the
//! operator state of its backends (one key per backend out of rotation, see `keys.rs`).

use serde::{Deserialize, Serialize};

use crate::{color::ColorName, state::Admin};

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Desired {
    /// Share of new flows to green, parts per million.
    pub green_weight: u32,
    /// Set by `switch`: the color that takes every new flow is the stable one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stable: Option<ColorName>,
}

impl Desired {
    pub fn weight(green_weight: u32) -> Self {
        Self {
            green_weight,
            stable: None,
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
        }
    }
}

/// The value of a backend key: the operator state as `backend disable|drain` names it
/// (`"disabled"`, `"draining"`); `None`: not a state a key may hold (ready is no key).
pub fn backend_state(value: &[u8]) -> Option<Admin> {
    match serde_json::from_slice(value).ok()? {
        Admin::Ready => None,
        admin => Some(admin),
    }
}

/// The value written for `admin` (not [`Admin::Ready`]: that is a deleted key).
pub fn backend_value(admin: Admin) -> String {
    serde_json::to_string(&admin).expect("serializes")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backend_values_round_trip() {
        for admin in [Admin::Disabled, Admin::Draining] {
            assert_eq!(backend_state(backend_value(admin).as_bytes()), Some(admin));
        }
        assert_eq!(backend_value(Admin::Disabled), "\"disabled\"");
        assert_eq!(backend_state(b"\"ready\""), None);
        assert_eq!(backend_state(b"off"), None);
    }
}
