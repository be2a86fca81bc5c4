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

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::config::Config;

    const WEB: &str = r#"
[dataplane]
interfaces = ["eth0"]

[[service]]
name = "web"
address = "203.0.113.10:80"
preview = "203.0.113.11:80"
green_weight = 0
blue = ["10.1.0.10:8080"]
green = ["10.2.0.10:8080", "10.2.0.11:8080"]

[service.overrides]
green = ["10.0.0.0/8", "2001:db8:1::/48", "192.0.2.128/25"]
blue = ["192.0.2.0/24"]
"#;

    fn check(text: &str) -> Result<crate::config::Validated, ConfigError> {
        Config::parse(Path::new("test.toml"), text)?.validate_with(&|_| true)
    }

    /// Another service on `green`'s backends.
    fn sharer(name: &str, port: u16, green: &str) -> String {
        format!(
            "\n[[service]]\nname = \"{name}\"\naddress = \"203.0.113.20:{port}\"\ngreen_weight = 0\nblue = [\"10.1.9.{port}:80\"]\ngreen = [\"{green}\"]\n"
        )
    }

    #[test]
    fn preview_and_overrides_are_read_sorted() {
        let config = check(WEB).unwrap();
        let web = &config.services[0];
        assert_eq!(web.preview, Some("203.0.113.11:80".parse().unwrap()));
        let listed: Vec<String> = web
            .overrides
            .iter()
            .map(|(prefix, color)| format!("{prefix} {color}"))
            .collect();
        assert_eq!(
            listed,
            [
                "10.0.0.0/8 green",
                "192.0.2.0/24 blue",
                "192.0.2.128/25 green",
                "2001:db8:1::/48 green"
            ]
        );
        let preview = web.preview_service().unwrap();
        assert_eq!(preview.name, "web (preview)");
        assert!(preview.blue.is_empty() && preview.overrides.is_empty());
        assert_eq!(preview.green, web.green);
        assert_eq!(preview.green_weight, WEIGHT_SCALE);
    }

    #[test]
    fn bad_entries_are_refused_naming_the_service_and_the_entry() {
        let cases = [
            (
                WEB.replace("\"10.0.0.0/8\"", "\"10.0.0.0/33\""),
                "service `web`: overrides.green[0] `10.0.0.0/33` has a prefix length above 32",
            ),
            (
                WEB.replace("\"10.0.0.0/8\"", "\"10.1.0.0/8\""),
                "service `web`: overrides.green[0] `10.1.0.0/8` has host bits set (did you mean 10.0.0.0/8?)",
            ),
            (
                WEB.replace("\"10.0.0.0/8\"", "\"ten/8\""),
                "service `web`: overrides.green[0] `ten/8` is not a prefix like 10.0.0.0/8 or 2001:db8::/32",
            ),
            (
                WEB.replace("\"192.0.2.0/24\"", "\"10.0.0.0/8\""),
                "service `web`: overrides.blue[0] 10.0.0.0/8 is also in overrides.green[0]",
            ),
            (
                WEB.replace("203.0.113.11:80", "203.0.113.10:80"),
                "service `web`: preview 203.0.113.10:80 must differ from the service address 203.0.113.10:80 and be of the same IP family",
            ),
            (
                WEB.replace("203.0.113.11:80", "[2001:db8::11]:80"),
                "service `web`: preview [2001:db8::11]:80 must differ from the service address 203.0.113.10:80 and be of the same IP family",
            ),
            (
                format!("{WEB}{}", sharer("api", 81, "203.0.113.11:80")),
                "service `api`: green[0] 203.0.113.11:80 is the address of service `web (preview)`",
            ),
        ];
        for (text, expected) in cases {
            match check(&text) {
                Ok(_) => panic!("accepted, expected `{expected}`"),
                Err(error) => {
                    let message = error.to_string();
                    assert!(
                        message.ends_with(expected),
                        "got      {message}\nexpected {expected}"
                    );
                }
            }
        }
    }

    #[test]
    fn a_backend_may_serve_up_to_four_services_and_previews() {
        // web and its preview use 10.2.0.10:8080; two more services make four.
        let four = format!(
            "{WEB}{}{}",
            sharer("api", 81, "10.2.0.10:8080"),
            sharer("admin", 82, "10.2.0.10:8080")
        );
        check(&four).expect("four users of one backend are allowed");
        let five = format!("{four}{}", sharer("ops", 83, "10.2.0.10:8080"));
        let message = check(&five).unwrap_err().to_string();
        assert!(
            message.ends_with(
                "service `ops`: green[0] 10.2.0.10:8080/tcp would serve more than 4 services and previews (web, web (preview), api, admin, ops); at most 4 may share a backend (the reply path looks up one flow per service)"
            ),
            "{message}"
        );
    }
}
