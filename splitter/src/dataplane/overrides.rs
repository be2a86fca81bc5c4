//! `[service.overrides]` in the data plane: the `OVERRIDES` LPM trie, keyed by service id and
//! client prefix. A service's set is replaced "atomically enough": the daemon writes the new
//! entries before the service entries that turn the lookup on, and deletes the stale ones after
//! (it syncs every configured service on every apply: the keys, not a read-back, decide).

use std::{
    fmt,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use aya::maps::lpm_trie::Key;
use splitter_common::{Addr, OverrideKey, OverrideValue, maps as names};

use super::{DataplaneError, maps::Maps};
use crate::color::ColorName;

/// A client prefix (`10.0.0.0/8`, `2001:db8:1::/48`): host bits are zero (the config refuses
/// anything else).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Prefix {
    pub addr: IpAddr,
    pub len: u8,
}

impl fmt::Display for Prefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

/// Why a prefix was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PrefixError {
    #[error("is not a prefix like 10.0.0.0/8 or 2001:db8::/32")]
    Syntax,
    #[error("has a prefix length above {max}")]
    Length { max: u8 },
    #[error("has host bits set (did you mean {masked}?)")]
    HostBits { masked: Prefix },
}

impl Prefix {
    /// Parses `ADDRESS/LEN` (a bare address is the whole address: /32 or /128).
    pub fn parse(text: &str) -> Result<Self, PrefixError> {
        let (addr, len) = match text.split_once('/') {
            Some((addr, len)) => (addr, Some(len)),
            None => (text, None),
        };
        let addr: IpAddr = addr.trim().parse().map_err(|_| PrefixError::Syntax)?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let len = match len {
            Some(len) => len.trim().parse::<u8>().map_err(|_| PrefixError::Syntax)?,
            None => max,
        };
        if len > max {
            return Err(PrefixError::Length { max });
        }
        let prefix = Self { addr, len };
        let masked = prefix.masked();
        if masked != prefix {
            return Err(PrefixError::HostBits { masked });
        }
        Ok(prefix)
    }

    /// The prefix with its host bits cleared.
    pub fn masked(self) -> Self {
        let addr = match self.addr {
            IpAddr::V4(v4) => {
                let mask = u32::MAX.checked_shl(32 - u32::from(self.len)).unwrap_or(0);
                IpAddr::V4(Ipv4Addr::from(u32::from(v4) & mask))
            }
            IpAddr::V6(v6) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.len))
                    .unwrap_or(0);
                IpAddr::V6(Ipv6Addr::from(u128::from(v6) & mask))
            }
        };
        Self { addr, ..self }
    }

    fn key(self, service_id: u32) -> Key<OverrideKey> {
        let addr = match self.addr {
            IpAddr::V4(v4) => Addr::from_v4(v4.octets()),
            IpAddr::V6(v6) => Addr::from_v6(v6.octets()),
        };
        Key::new(
            OverrideKey::prefix_len(u32::from(self.len)),
            OverrideKey { service_id, addr },
        )
    }
}

/// The overrides of a service at `address` that go into the trie: those of its family (its
/// clients are of that family; the trie key does not tell the families apart, so a prefix of
/// the other one could match a client it was not meant for).
pub fn of_family(
    overrides: &[(Prefix, ColorName)],
    address: &std::net::SocketAddr,
) -> Vec<(Prefix, ColorName)> {
    overrides
        .iter()
        .filter(|(prefix, _)| prefix.addr.is_ipv4() == address.is_ipv4())
        .copied()
        .collect()
}

impl Maps {
    /// Writes the overrides of service `id` (new and changed entries); the stale ones stay
    /// until [`Maps::remove_stale_overrides`].
    pub fn add_overrides(
        &mut self,
        service_id: u32,
        overrides: &[(Prefix, ColorName)],
    ) -> Result<(), DataplaneError> {
        for (prefix, color) in overrides {
            let value = OverrideValue {
                color: color.color() as u8,
                _pad: [0; 3],
            };
            self.overrides
                .insert(&prefix.key(service_id), value, 0)
                .map_err(map_error)?;
        }
        Ok(())
    }

    /// Deletes the entries of service `id` that are not in `keep`.
    pub fn remove_stale_overrides(
        &mut self,
        service_id: u32,
        keep: &[(Prefix, ColorName)],
    ) -> Result<(), DataplaneError> {
        let mut stale = Vec::new();
        for key in self.overrides.keys() {
            let key = key.map_err(map_error)?;
            let data = key.data();
            if data.service_id != service_id {
                continue;
            }
            let wanted = keep.iter().any(|(prefix, _)| {
                let wanted = prefix.key(service_id);
                wanted.prefix_len() == key.prefix_len() && wanted.data() == data
            });
            if !wanted {
                stale.push(key);
            }
        }
        for key in &stale {
            match self.overrides.remove(key) {
                Ok(()) | Err(aya::maps::MapError::KeyNotFound) => {}
                Err(source) => return Err(map_error(source)),
            }
        }
        Ok(())
    }
}

fn map_error(source: aya::maps::MapError) -> DataplaneError {
    DataplaneError::Map {
        name: names::OVERRIDES,
        source,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_parse_and_refuse_host_bits() {
        let parsed = Prefix::parse("10.0.0.0/8").unwrap();
        assert_eq!(parsed.to_string(), "10.0.0.0/8");
        assert_eq!(
            Prefix::parse("2001:db8:1::/48").unwrap().to_string(),
            "2001:db8:1::/48"
        );
        assert_eq!(Prefix::parse("198.18.0.7").unwrap().len, 32);
        assert_eq!(
            Prefix::parse("10.1.0.0/8"),
            Err(PrefixError::HostBits {
                masked: Prefix::parse("10.0.0.0/8").unwrap()
            })
        );
        assert_eq!(
            Prefix::parse("10.0.0.0/33"),
            Err(PrefixError::Length { max: 32 })
        );
        assert_eq!(Prefix::parse("ten/8"), Err(PrefixError::Syntax));
        assert_eq!(Prefix::parse("0.0.0.0/0").unwrap().len, 0);
    }
}
