//! `[service.overrides]` (client prefixes always sent to green or kept on blue) and `preview`
//! (an address whose every flow goes to green): their file form and their checks.

use std::{collections::BTreeMap, net::SocketAddr};

use serde::{Deserialize, Serialize};

use splitter_common::WEIGHT_SCALE;

use super::{ColorName, ConfigError, Service};
use crate::dataplane::overrides::{Prefix, PrefixError};

/// `[service.overrides]`: `green = ["10.0.0.0/8", "2001:db8:1::/48"]`, `blue = [...]`. The
/// longest matching prefix wins; the same prefix in both lists is refused.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct OverridesSection {
    #[serde(default)]
    pub green: Vec<String>,
    #[serde(default)]
    pub blue: Vec<String>,
}

/// Why an override entry was refused.
#[derive(Debug, thiserror::Error)]
pub enum OverrideError {
    #[error("service `{service}`: overrides.{field} `{value}` {reason}")]
    Prefix {
        service: String,
        field: String,
        value: String,
        #[source]
        reason: PrefixError,
    },
    #[error("service `{service}`: overrides.{field} {prefix} is also in overrides.{first}")]
    Duplicate {
        service: String,
        field: String,
        first: String,
        prefix: Prefix,
    },
}

/// The service's overrides, sorted; each bad entry is one problem.
pub fn validate(
    service: &str,
    section: Option<&OverridesSection>,
    problems: &mut Vec<ConfigError>,
) -> Vec<(Prefix, ColorName)> {
    let Some(section) = section else {
        return Vec::new();
    };
    let mut seen: BTreeMap<Prefix, (ColorName, String)> = BTreeMap::new();
    for color in [ColorName::Green, ColorName::Blue] {
        let entries = match color {
            ColorName::Green => &section.green,
            ColorName::Blue => &section.blue,
        };
        for (index, value) in entries.iter().enumerate() {
            let field = format!("{color}[{index}]");
            let prefix = match Prefix::parse(value) {
                Ok(prefix) => prefix,
                Err(reason) => {
                    problems.push(
                        OverrideError::Prefix {
                            service: service.to_owned(),
                            field,
                            value: value.clone(),
                            reason,
                        }
                        .into(),
                    );
                    continue;
                }
            };
            if let Some((_, first)) = seen.get(&prefix) {
                problems.push(
                    OverrideError::Duplicate {
                        service: service.to_owned(),
                        field,
                        first: first.clone(),
                        prefix,
                    }
                    .into(),
                );
                continue;
            }
            seen.insert(prefix, (color, field));
        }
    }
    seen.into_iter()
        .map(|(prefix, (color, _))| (prefix, color))
        .collect()
}

/// The preview address, parsed like the service address (same family as the service, not the
/// service address itself).
pub fn validate_preview(
    service: &str,
    address: SocketAddr,
    preview: Option<&str>,
    problems: &mut Vec<ConfigError>,
) -> Option<SocketAddr> {
    let preview = match super::validate::parse_address(service, "preview", preview?) {
        Ok(preview) => preview,
        Err(problem) => {
            problems.push(problem);
            return None;
        }
    };
    if preview == address || preview.is_ipv4() != address.is_ipv4() {
        problems.push(ConfigError::Preview {
            service: service.to_owned(),
            preview,
            address,
        });
        return None;
    }
    Some(preview)
}

/// How a service's preview is named in problems, status and metrics.
pub fn preview_name(service: &str) -> String {
    format!("{service} (preview)")
}

impl Service {
    /// The service its preview address is installed as: the green pool alone, at 100 % green
    /// (the data plane forces green too), never a target of set-weight, switch or rollouts.
    pub fn preview_service(&self) -> Option<Service> {
        Some(Service {
            name: preview_name(&self.name),
            address: self.preview?,
            green_weight: WEIGHT_SCALE,
            blue: Vec::new(),
            preview: None,
            overrides: Vec::new(),
            ..self.clone()
        })
    }
}
