//! [`Config::validate`]: everything that can be checked without touching the kernel, field by
//! field and then across services (addresses unique, backends not shared).

use std::{
    collections::{BTreeMap, BTreeSet},
    net::SocketAddr,
    time::Duration,
};

use splitter_common::maps::{MAX_BACKENDS, POOL_SLOTS};

use super::{
    ColorName, Config, ConfigError, FLOW_TABLE_MAX, FLOW_TABLE_MIN, IFNAME_MAX, MISS_HOLD_MAX,
    PENDING_TABLE_MIN, SERVICE_NAME_MAX, SERVICES_MAX, Service, ServiceSection, UDP_IDLE_MAX,
    UDP_IDLE_MIN, Validated,
};
use crate::{
    dataplane::services::Protocol,
    units::{PercentError, parse_duration, percent_to_ppm},
};

impl Config {
    /// Checks everything that can be checked without touching the kernel, interfaces included.
    pub fn validate(&self) -> Result<Validated, ConfigError> {
        self.validate_with(&|name| crate::dataplane::interface_index(name).is_some())
    }

    /// [`Config::validate`] with the interface lookup supplied (tests).
    pub fn validate_with(
        &self,
        interface_exists: &dyn Fn(&str) -> bool,
    ) -> Result<Validated, ConfigError> {
        let dataplane = &self.dataplane;
        if dataplane.interfaces.is_empty() {
            return Err(ConfigError::NoInterface);
        }
        validate_interfaces("interfaces", &dataplane.interfaces, interface_exists)?;
        validate_interfaces(
            "redirect_interfaces",
            &dataplane.redirect_interfaces,
            interface_exists,
        )?;
        if !(FLOW_TABLE_MIN..=FLOW_TABLE_MAX).contains(&dataplane.flow_table_size) {
            return Err(ConfigError::FlowTableSize {
                value: dataplane.flow_table_size,
            });
        }
        let pending_table_size = dataplane
            .pending_table_size
            .unwrap_or((dataplane.flow_table_size / 4).max(PENDING_TABLE_MIN));
        if !(PENDING_TABLE_MIN..=FLOW_TABLE_MAX).contains(&pending_table_size) {
            return Err(ConfigError::PendingTableSize {
                value: pending_table_size,
            });
        }
        let udp_idle_timeout = parse_duration(&dataplane.udp_idle_timeout)
            .filter(|timeout| (UDP_IDLE_MIN..=UDP_IDLE_MAX).contains(timeout))
            .ok_or_else(|| ConfigError::UdpIdleTimeout {
                value: dataplane.udp_idle_timeout.clone(),
            })?;
        let miss_hold = parse_duration(&dataplane.miss_hold)
            .filter(|hold| *hold <= MISS_HOLD_MAX)
            .ok_or_else(|| ConfigError::MissHold {
                value: dataplane.miss_hold.clone(),
            })?;
        let handshake_timeout = parse_duration(&dataplane.handshake_timeout)
            .filter(|timeout| {
                (Duration::from_millis(1)..=Duration::from_secs(60)).contains(timeout)
            })
            .ok_or_else(|| ConfigError::HandshakeTimeout {
                value: dataplane.handshake_timeout.clone(),
            })?;
        let control = &self.control;
        for (field, path) in [
            ("socket", &control.socket),
            ("state_dir", &control.state_dir),
            ("bpffs", &control.bpffs),
        ] {
            if !path.is_absolute() {
                return Err(ConfigError::RelativePath {
                    field,
                    value: path.clone(),
                });
            }
        }
        let metrics = control
            .metrics
            .parse()
            .map_err(|_| ConfigError::MetricsAddress {
                value: control.metrics.clone(),
            })?;
        let services = validate_services(&self.services)?;
        Ok(Validated {
            interfaces: dataplane.interfaces.clone(),
            xdp_mode: dataplane.xdp_mode,
            flow_table_size: dataplane.flow_table_size,
            pending_table_size,
            udp_idle_timeout,
            hash_seed: dataplane.hash_seed,
            miss_hold,
            handshake_timeout,
            redirect_interfaces: dataplane.redirect_interfaces.clone(),
            socket: control.socket.clone(),
            metrics,
            state_dir: control.state_dir.clone(),
            bpffs: control.bpffs.clone(),
            services,
        })
    }
}

fn validate_interfaces(
    field: &'static str,
    interfaces: &[String],
    interface_exists: &dyn Fn(&str) -> bool,
) -> Result<(), ConfigError> {
    let mut seen = BTreeSet::new();
    for name in interfaces {
        let valid = !name.is_empty()
            && name.len() <= IFNAME_MAX
            && name != "."
            && name != ".."
            && !name.contains(['/', ':']) // ':' would be read as an alias
            && !name.chars().any(char::is_whitespace);
        if !valid {
            return Err(ConfigError::InterfaceName {
                field,
                name: name.clone(),
            });
        }
        if !seen.insert(name) {
            return Err(ConfigError::DuplicateInterface {
                field,
                name: name.clone(),
            });
        }
        if !interface_exists(name) {
            return Err(ConfigError::UnknownInterface {
                field,
                name: name.clone(),
            });
        }
    }
    Ok(())
}

fn is_valid_service_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= SERVICE_NAME_MAX
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

fn validate_services(sections: &[ServiceSection]) -> Result<Vec<Service>, ConfigError> {
    if sections.len() > SERVICES_MAX {
        return Err(ConfigError::TooManyServices {
            count: sections.len(),
        });
    }
    let mut names: BTreeMap<&str, usize> = BTreeMap::new();
    for (index, section) in sections.iter().enumerate() {
        if !is_valid_service_name(&section.name) {
            return Err(ConfigError::ServiceName {
                index,
                name: section.name.clone(),
            });
        }
        if let Some(&first) = names.get(section.name.as_str()) {
            return Err(ConfigError::DuplicateName {
                index,
                first,
                name: section.name.clone(),
            });
        }
        names.insert(&section.name, index);
    }
    let services = sections
        .iter()
        .map(validate_service)
        .collect::<Result<Vec<_>, _>>()?;
    // Across services: addresses unique, backends not shared, no backend is another VIP.
    let mut addresses: BTreeMap<(SocketAddr, Protocol), &str> = BTreeMap::new();
    for service in &services {
        if let Some(first) = addresses.insert((service.address, service.protocol), &service.name) {
            return Err(ConfigError::DuplicateAddress {
                service: service.name.clone(),
                first: first.to_owned(),
                address: service.address,
                protocol: service.protocol.name(),
            });
        }
    }
    let mut backends: BTreeMap<(SocketAddr, Protocol), &str> = BTreeMap::new();
    let mut total = 0;
    for service in &services {
        for color in ColorName::BOTH {
            for (index, backend) in service.pool(color).iter().enumerate() {
                let field = format!("{color}[{index}]");
                total += 1;
                if let Some(other) = addresses.get(&(*backend, service.protocol)) {
                    return Err(ConfigError::BackendIsOtherService {
                        service: service.name.clone(),
                        field,
                        other: (*other).to_owned(),
                        backend: *backend,
                    });
                }
                if let Some(other) = backends.insert((*backend, service.protocol), &service.name) {
                    return Err(ConfigError::SharedBackend {
                        service: service.name.clone(),
                        field,
                        other: other.to_owned(),
                        backend: *backend,
                        protocol: service.protocol.name(),
                    });
                }
            }
        }
    }
    if total > MAX_BACKENDS as usize {
        return Err(ConfigError::TooManyBackends { count: total });
    }
    Ok(services)
}

fn parse_address(service: &str, field: &str, value: &str) -> Result<SocketAddr, ConfigError> {
    let address: SocketAddr = value.parse().map_err(|_| ConfigError::Address {
        service: service.to_owned(),
        field: field.to_owned(),
        value: value.to_owned(),
    })?;
    if address.port() == 0 {
        return Err(ConfigError::PortZero {
            service: service.to_owned(),
            field: field.to_owned(),
            value: value.to_owned(),
        });
    }
    Ok(address)
}

fn validate_service(section: &ServiceSection) -> Result<Service, ConfigError> {
    let name = &section.name;
    let address = parse_address(name, "address", &section.address)?;
    let green_weight = percent_to_ppm(section.green_weight).map_err(|error| match error {
        PercentError::Precision => ConfigError::WeightPrecision {
            service: name.clone(),
            value: section.green_weight,
        },
        PercentError::Range | PercentError::NotANumber => ConfigError::WeightRange {
            service: name.clone(),
            value: section.green_weight,
        },
    })?;
    let mut pools = [Vec::new(), Vec::new()];
    let mut seen = BTreeSet::new();
    for (slot, color) in ColorName::BOTH.into_iter().enumerate() {
        let entries = match color {
            ColorName::Blue => &section.blue,
            ColorName::Green => &section.green,
        };
        if entries.is_empty() {
            return Err(ConfigError::EmptyPool {
                service: name.clone(),
                color,
            });
        }
        for (index, entry) in entries.iter().enumerate() {
            let field = format!("{color}[{index}]");
            let backend = parse_address(name, &field, entry)?;
            if backend == address {
                return Err(ConfigError::BackendIsService {
                    service: name.clone(),
                    field,
                    backend,
                });
            }
            if backend.is_ipv4() != address.is_ipv4() {
                return Err(ConfigError::FamilyMismatch {
                    service: name.clone(),
                    field,
                    backend,
                });
            }
            if !seen.insert(backend) {
                return Err(ConfigError::DuplicateBackend {
                    service: name.clone(),
                    field,
                    backend,
                });
            }
            pools[slot].push(backend);
        }
    }
    let count = pools[0].len() + pools[1].len();
    if count > (POOL_SLOTS / 2) as usize {
        return Err(ConfigError::PoolTooLarge {
            service: name.clone(),
            count,
        });
    }
    let [blue, green] = pools;
    let rollout = section
        .rollout
        .clone()
        .unwrap_or_default()
        .plan()
        .map_err(|source| ConfigError::Rollout {
            service: name.clone(),
            source: Box::new(source),
        })?;
    Ok(Service {
        name: name.clone(),
        address,
        protocol: section.protocol,
        green_weight,
        cohort: section.cohort,
        blue,
        green,
        rollout,
    })
}
