//! What a service's pools say beyond their addresses: per-backend Maglev weights
//! (`"10.2.0.10:8080 weight=3"`) and the client prefix of the `client` cohort
//! (`client_prefix = { v4 = 24, v6 = 64 }`).

use std::{collections::BTreeMap, net::SocketAddr};

use serde::{Deserialize, Serialize};
use splitter_common::maglev::MAX_WEIGHT;

use super::{CohortSetting, ConfigError, Service, ServiceSection};
use crate::dataplane::pools::slots_needed;

/// A backend's weight when the entry does not give one.
pub const DEFAULT_WEIGHT: u32 = 1;

/// `client_prefix = { v4 = 24, v6 = 64 }`: absent keys keep the whole address.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ClientPrefixSection {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub v4: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub v6: Option<u32>,
}

/// The validated prefix lengths; 0 = the whole address (as in `ServiceConfig`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ClientPrefix {
    pub v4: u8,
    pub v6: u8,
}

/// Why a backend entry or a `client_prefix` was refused.
#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    #[error(
        "{field} `{entry}`: unknown option `{option}` (a backend is \"IP:port\" or \"IP:port weight=N\")"
    )]
    UnknownOption {
        field: String,
        entry: String,
        option: String,
    },
    #[error("{field} `{entry}`: weight `{value}` is not a whole number in 0..={MAX_WEIGHT}")]
    Weight {
        field: String,
        entry: String,
        value: String,
    },
    #[error(
        "client_prefix needs cohort = \"client\" (with cohort = \"flow\" every connection is split on its own)"
    )]
    PrefixWithoutClientCohort,
    #[error("client_prefix.{family} = {value} is outside 1..={max}")]
    PrefixRange {
        family: &'static str,
        value: u32,
        max: u32,
    },
}

/// Splits a backend entry into its address text and its weight, if given.
pub fn split_entry<'a>(field: &str, entry: &'a str) -> Result<(&'a str, Option<u32>), PoolError> {
    let mut words = entry.split_whitespace();
    let address = words.next().unwrap_or_default();
    let mut weight = None;
    for word in words {
        let Some(value) = word.strip_prefix("weight=") else {
            return Err(PoolError::UnknownOption {
                field: field.to_owned(),
                entry: entry.to_owned(),
                option: word.to_owned(),
            });
        };
        match value.parse::<u32>() {
            Ok(parsed) if parsed <= MAX_WEIGHT => weight = Some(parsed),
            _ => {
                return Err(PoolError::Weight {
                    field: field.to_owned(),
                    entry: entry.to_owned(),
                    value: value.to_owned(),
                });
            }
        }
    }
    Ok((address, weight))
}

/// The validated `client_prefix` of a service.
pub fn client_prefix(section: &ServiceSection) -> Result<ClientPrefix, Vec<PoolError>> {
    let Some(prefix) = section.client_prefix else {
        return Ok(ClientPrefix::default());
    };
    let mut problems = Vec::new();
    if section.cohort != CohortSetting::Client {
        problems.push(PoolError::PrefixWithoutClientCohort);
    }
    let mut length = |family: &'static str, value: Option<u32>, max: u32| match value {
        None => 0,
        Some(value) if (1..=max).contains(&value) => {
            u8::try_from(value).expect("at most 128 fits in u8")
        }
        Some(value) => {
            problems.push(PoolError::PrefixRange { family, value, max });
            0
        }
    };
    let validated = ClientPrefix {
        v4: length("v4", prefix.v4, 32),
        v6: length("v6", prefix.v6, 128),
    };
    if problems.is_empty() {
        Ok(validated)
    } else {
        Err(problems)
    }
}

/// Pool slots all services take together; a reload may need as many again (a changed service
/// moves to fresh slots while its old ones are in use).
pub fn total_slots(services: &[Service]) -> u64 {
    services
        .iter()
        .map(|service| u64::from(slots_needed(service.blue.len(), service.green.len())))
        .sum()
}

impl Service {
    /// A backend's Maglev weight (1 unless the config says otherwise).
    pub fn weight(&self, address: &SocketAddr) -> u32 {
        self.weights.get(address).copied().unwrap_or(DEFAULT_WEIGHT)
    }
}

/// Only the weights that are not the default.
pub fn keep_weight(weights: &mut BTreeMap<SocketAddr, u32>, backend: SocketAddr, weight: u32) {
    if weight != DEFAULT_WEIGHT {
        weights.insert(backend, weight);
    }
}

impl From<(String, PoolError)> for ConfigError {
    fn from((service, source): (String, PoolError)) -> Self {
        ConfigError::Pool { service, source }
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::config::{Config, Validated};

    fn check(service: &str) -> Result<Validated, ConfigError> {
        let text = format!(
            "[dataplane]\ninterfaces = [\"eth0\"]\n\n[[service]]\nname = \"web\"\naddress = \"203.0.113.10:80\"\ngreen_weight = 10\n{service}\n"
        );
        Config::parse(Path::new("test.toml"), &text)?.validate_with(&|_| true)
    }

    #[test]
    fn weights_and_prefixes_are_read() {
        let config = check(
            r#"cohort = "client"
client_prefix = { v4 = 24, v6 = 64 }
blue = ["10.1.0.10:8080", "10.1.0.11:8080 weight=3"]
green = ["10.2.0.10:8080   weight=0", "10.2.0.11:8080 weight=1"]"#,
        )
        .expect("valid");
        let web = &config.services[0];
        assert_eq!(web.blue[1], "10.1.0.11:8080".parse().unwrap());
        assert_eq!(web.weight(&web.blue[0]), 1);
        assert_eq!(web.weight(&web.blue[1]), 3);
        assert_eq!(web.weight(&web.green[0]), 0);
        assert_eq!(web.weights.len(), 2, "only the non-default weights");
        assert_eq!(web.client_prefix, ClientPrefix { v4: 24, v6: 64 });
        let whole =
            check("cohort = \"client\"\nblue = [\"10.1.0.10:8080\"]\ngreen = [\"10.2.0.10:8080\"]")
                .expect("valid");
        assert_eq!(whole.services[0].client_prefix, ClientPrefix::default());
    }

    #[test]
    fn bad_weights_and_prefixes_are_refused_naming_the_service() {
        for (service, message) in [
            (
                "blue = [\"10.1.0.10:8080 weight=300\"]\ngreen = [\"10.2.0.10:8080\"]",
                "service `web`: blue[0] `10.1.0.10:8080 weight=300`: weight `300` is not a whole number in 0..=256",
            ),
            (
                "blue = [\"10.1.0.10:8080 weight=-1\"]\ngreen = [\"10.2.0.10:8080\"]",
                "service `web`: blue[0] `10.1.0.10:8080 weight=-1`: weight `-1` is not a whole number in 0..=256",
            ),
            (
                "blue = [\"10.1.0.10:8080\"]\ngreen = [\"10.2.0.10:8080 backup\"]",
                "service `web`: green[0] `10.2.0.10:8080 backup`: unknown option `backup` (a backend is \"IP:port\" or \"IP:port weight=N\")",
            ),
            (
                "client_prefix = { v4 = 24 }\nblue = [\"10.1.0.10:8080\"]\ngreen = [\"10.2.0.10:8080\"]",
                "service `web`: client_prefix needs cohort = \"client\" (with cohort = \"flow\" every connection is split on its own)",
            ),
            (
                "cohort = \"client\"\nclient_prefix = { v4 = 33 }\nblue = [\"10.1.0.10:8080\"]\ngreen = [\"10.2.0.10:8080\"]",
                "service `web`: client_prefix.v4 = 33 is outside 1..=32",
            ),
            (
                "cohort = \"client\"\nclient_prefix = { v6 = 129 }\nblue = [\"10.1.0.10:8080\"]\ngreen = [\"10.2.0.10:8080\"]",
                "service `web`: client_prefix.v6 = 129 is outside 1..=128",
            ),
        ] {
            let error = check(service).expect_err(service);
            assert!(
                error.to_string().ends_with(message),
                "{service}:\n got  {error}\n want {message}"
            );
        }
    }
}
