//! [`Config::validate`]: everything that can be checked without touching the kernel, field by
//! field and then across services (addresses unique, backends shared by at most
//! `MAX_SHARING` services and previews).

use std::{
    collections::{BTreeMap, BTreeSet},
    net::{IpAddr, SocketAddr},
    time::Duration,
};

use splitter_common::{
    MAX_SHARING,
    maps::{MAX_BACKENDS, POOL_SLOTS},
};

use super::{
    CLIENT_TIMEOUT_MAX, CLIENT_TIMEOUT_MIN, CONNECTIONS_MAX, CONNECTIONS_MIN, ColorName, Config,
    ConfigError, FLOW_TABLE_MAX, FLOW_TABLE_MIN, IFNAME_MAX, MISS_HOLD_MAX, PENDING_TABLE_MIN,
    SERVICE_NAME_MAX, SERVICES_MAX, Service, ServiceSection, UDP_IDLE_MAX, UDP_IDLE_MIN, Validated,
    pool,
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

    /// [`Config::validate`] with the interface lookup supplied (tests): the first problem.
    pub fn validate_with(
        &self,
        interface_exists: &dyn Fn(&str) -> bool,
    ) -> Result<Validated, ConfigError> {
        self.validate_all(interface_exists)
            .map_err(|mut problems| problems.swap_remove(0))
    }

    /// Every problem of the file, in file order as far as possible (`check-config` lists
    /// them all); checks across services run on the services that passed on their own.
    #[expect(
        clippy::too_many_lines,
        reason = "one check per key of the file, in file order"
    )]
    pub fn validate_all(
        &self,
        interface_exists: &dyn Fn(&str) -> bool,
    ) -> Result<Validated, Vec<ConfigError>> {
        let mut problems = Vec::new();
        let dataplane = &self.dataplane;
        if dataplane.interfaces.is_empty() {
            problems.push(ConfigError::NoInterface);
        }
        validate_interfaces(
            "interfaces",
            &dataplane.interfaces,
            interface_exists,
            &mut problems,
        );
        validate_interfaces(
            "redirect_interfaces",
            &dataplane.redirect_interfaces,
            interface_exists,
            &mut problems,
        );
        if !(FLOW_TABLE_MIN..=FLOW_TABLE_MAX).contains(&dataplane.flow_table_size) {
            problems.push(ConfigError::FlowTableSize {
                value: dataplane.flow_table_size,
            });
        }
        let pending_table_size = dataplane
            .pending_table_size
            .unwrap_or((dataplane.flow_table_size / 4).max(PENDING_TABLE_MIN));
        if !(PENDING_TABLE_MIN..=FLOW_TABLE_MAX).contains(&pending_table_size) {
            problems.push(ConfigError::PendingTableSize {
                value: pending_table_size,
            });
        }
        let udp_idle_timeout = parse_duration(&dataplane.udp_idle_timeout)
            .filter(|timeout| (UDP_IDLE_MIN..=UDP_IDLE_MAX).contains(timeout));
        if udp_idle_timeout.is_none() {
            problems.push(ConfigError::UdpIdleTimeout {
                value: dataplane.udp_idle_timeout.clone(),
            });
        }
        let miss_hold = parse_duration(&dataplane.miss_hold).filter(|hold| *hold <= MISS_HOLD_MAX);
        if miss_hold.is_none() {
            problems.push(ConfigError::MissHold {
                value: dataplane.miss_hold.clone(),
            });
        }
        let handshake_timeout = parse_duration(&dataplane.handshake_timeout).filter(|timeout| {
            (Duration::from_millis(1)..=Duration::from_secs(60)).contains(timeout)
        });
        if handshake_timeout.is_none() {
            problems.push(ConfigError::HandshakeTimeout {
                value: dataplane.handshake_timeout.clone(),
            });
        }
        let control = &self.control;
        for (field, path) in [
            ("socket", &control.socket),
            ("state_dir", &control.state_dir),
            ("bpffs", &control.bpffs),
        ] {
            if !path.is_absolute() {
                problems.push(ConfigError::RelativePath {
                    field,
                    value: path.clone(),
                });
            }
        }
        let metrics = control.metrics.parse::<SocketAddr>().ok();
        if metrics.is_none() {
            problems.push(ConfigError::MetricsAddress {
                value: control.metrics.clone(),
            });
        }
        let client_timeout = validate_limits(control, &mut problems);
        let services = validate_services(&self.services, &mut problems);
        let fleet = self.fleet.as_ref().and_then(|section| {
            section
                .validate(&super::fleet::hostname())
                .map_err(|fleet| problems.extend(fleet.into_iter().map(ConfigError::Fleet)))
                .ok()
        });
        match (
            miss_hold,
            handshake_timeout,
            metrics,
            client_timeout,
            udp_idle_timeout,
        ) {
            (
                Some(miss_hold),
                Some(handshake_timeout),
                Some(metrics),
                Some(client_timeout),
                Some(udp_idle_timeout),
            ) if problems.is_empty() => Ok(Validated {
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
                max_connections: control.max_connections,
                metrics_max_connections: control.metrics_max_connections,
                client_timeout,
                services,
                fleet,
            }),
            _ => Err(problems),
        }
    }
}

/// The connection caps and the client timeout.
fn validate_limits(
    control: &super::ControlSection,
    problems: &mut Vec<ConfigError>,
) -> Option<Duration> {
    for (field, value) in [
        ("max_connections", control.max_connections),
        ("metrics_max_connections", control.metrics_max_connections),
    ] {
        if !(CONNECTIONS_MIN..=CONNECTIONS_MAX).contains(&value) {
            problems.push(ConfigError::Connections { field, value });
        }
    }
    let client_timeout = parse_duration(&control.client_timeout)
        .filter(|timeout| (CLIENT_TIMEOUT_MIN..=CLIENT_TIMEOUT_MAX).contains(timeout));
    if client_timeout.is_none() {
        problems.push(ConfigError::ClientTimeout {
            value: control.client_timeout.clone(),
        });
    }
    client_timeout
}

fn validate_interfaces(
    field: &'static str,
    interfaces: &[String],
    interface_exists: &dyn Fn(&str) -> bool,
    problems: &mut Vec<ConfigError>,
) {
    let mut seen = BTreeSet::new();
    for name in interfaces {
        let valid = !name.is_empty()
            && name.len() <= IFNAME_MAX
            && name != "."
            && name != ".."
            && !name.contains(['/', ':']) // ':' would be read as an alias
            && !name.chars().any(char::is_whitespace);
        if !valid {
            problems.push(ConfigError::InterfaceName {
                field,
                name: name.clone(),
            });
        } else if !seen.insert(name) {
            problems.push(ConfigError::DuplicateInterface {
                field,
                name: name.clone(),
            });
        } else if !interface_exists(name) {
            problems.push(ConfigError::UnknownInterface {
                field,
                name: name.clone(),
            });
        }
    }
}

fn is_valid_service_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= SERVICE_NAME_MAX
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

fn validate_services(sections: &[ServiceSection], problems: &mut Vec<ConfigError>) -> Vec<Service> {
    if sections.len() > SERVICES_MAX {
        problems.push(ConfigError::TooManyServices {
            count: sections.len(),
        });
    }
    let mut names: BTreeMap<&str, usize> = BTreeMap::new();
    let mut services = Vec::new();
    for (index, section) in sections.iter().enumerate() {
        if !is_valid_service_name(&section.name) {
            problems.push(ConfigError::ServiceName {
                index,
                name: section.name.clone(),
            });
            continue;
        }
        if let Some(&first) = names.get(section.name.as_str()) {
            problems.push(ConfigError::DuplicateName {
                index,
                first,
                name: section.name.clone(),
            });
            continue;
        }
        names.insert(&section.name, index);
        if let Some(service) = validate_service(section, problems) {
            services.push(service);
        }
    }
    // Across services: addresses (previews too) unique, no backend is another VIP, a backend
    // shared by at most MAX_SHARING services and previews.
    let mut addresses: BTreeMap<(SocketAddr, Protocol), String> = BTreeMap::new();
    for service in &services {
        let previews = service
            .preview
            .map(|preview| (preview, super::overrides::preview_name(&service.name)));
        for (address, name) in
            std::iter::once((service.address, service.name.clone())).chain(previews)
        {
            if let Some(first) = addresses.insert((address, service.protocol), name.clone()) {
                problems.push(ConfigError::DuplicateAddress {
                    service: name,
                    first,
                    address,
                    protocol: service.protocol.name(),
                });
            }
        }
    }
    let mut sharers: BTreeMap<(SocketAddr, Protocol), Vec<String>> = BTreeMap::new();
    let mut total = 0;
    for service in &services {
        for color in ColorName::BOTH {
            for (index, backend) in service.pool(color).iter().enumerate() {
                let field = format!("{color}[{index}]");
                total += 1;
                if let Some(other) = addresses.get(&(*backend, service.protocol)) {
                    problems.push(ConfigError::BackendIsOtherService {
                        service: service.name.clone(),
                        field,
                        other: other.clone(),
                        backend: *backend,
                    });
                    continue;
                }
                let users = sharers.entry((*backend, service.protocol)).or_default();
                users.push(service.name.clone());
                if color == ColorName::Green && service.preview.is_some() {
                    // The preview's own backend ids serve the same address.
                    total += 1;
                    users.push(super::overrides::preview_name(&service.name));
                }
                if users.len() > MAX_SHARING {
                    problems.push(ConfigError::SharedTooWidely {
                        service: service.name.clone(),
                        field,
                        others: users.join(", "),
                        backend: *backend,
                        protocol: service.protocol.name(),
                    });
                    users.truncate(MAX_SHARING);
                }
            }
        }
    }
    if total > MAX_BACKENDS as usize {
        problems.push(ConfigError::TooManyBackends { count: total });
    }
    let slots = pool::total_slots(&services);
    if slots > u64::from(POOL_SLOTS / 2) {
        problems.push(ConfigError::TooManyPoolSlots { slots });
    }
    services
}

pub(super) fn parse_address(
    service: &str,
    field: &str,
    value: &str,
) -> Result<SocketAddr, ConfigError> {
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
    if let Some(kind) = not_unicast(address.ip()) {
        return Err(ConfigError::NotUnicast {
            service: service.to_owned(),
            field: field.to_owned(),
            value: value.to_owned(),
            kind,
        });
    }
    Ok(address)
}

/// Why an address cannot be a service address or a backend: packets to it are not for one
/// host (`None`: a specified unicast address).
fn not_unicast(ip: IpAddr) -> Option<&'static str> {
    match ip {
        _ if ip.is_unspecified() => Some("the unspecified address"),
        _ if ip.is_multicast() => Some("a multicast address"),
        IpAddr::V4(v4) if v4.is_broadcast() => Some("the broadcast address"),
        IpAddr::V4(v4) if v4.octets()[0] >= 240 => Some("a reserved (class E) address"),
        IpAddr::V6(v6) if v6.to_ipv4_mapped().is_some() => {
            Some("an IPv4-mapped IPv6 address (write the IPv4 address)")
        }
        _ => None,
    }
}

fn validate_service(section: &ServiceSection, problems: &mut Vec<ConfigError>) -> Option<Service> {
    let before = problems.len();
    let service = validate_service_fields(section, problems);
    match service {
        Ok(service) if problems.len() == before => Some(service),
        Ok(_) => None,
        Err(problem) => {
            problems.push(problem);
            None
        }
    }
}

/// One service's fields; a problem that leaves nothing to check further is returned, the
/// others are collected.
#[expect(
    clippy::too_many_lines,
    reason = "one check per key of a service, in file order"
)]
fn validate_service_fields(
    section: &ServiceSection,
    problems: &mut Vec<ConfigError>,
) -> Result<Service, ConfigError> {
    let name = &section.name;
    let address = parse_address(name, "address", &section.address)?;
    let green_weight = match percent_to_ppm(section.green_weight) {
        Ok(ppm) => ppm,
        Err(PercentError::Precision) => {
            problems.push(ConfigError::WeightPrecision {
                service: name.clone(),
                value: section.green_weight,
            });
            0
        }
        Err(PercentError::Range | PercentError::NotANumber) => {
            problems.push(ConfigError::WeightRange {
                service: name.clone(),
                value: section.green_weight,
            });
            0
        }
    };
    let client_prefix = pool::client_prefix(section).unwrap_or_else(|refused| {
        problems.extend(refused.into_iter().map(|p| (name.clone(), p).into()));
        pool::ClientPrefix::default()
    });
    let mut weights = BTreeMap::new();
    let mut pools = [Vec::new(), Vec::new()];
    let mut seen = BTreeSet::new();
    for (slot, color) in ColorName::BOTH.into_iter().enumerate() {
        let entries = match color {
            ColorName::Blue => &section.blue,
            ColorName::Green => &section.green,
        };
        if entries.is_empty() {
            problems.push(ConfigError::EmptyPool {
                service: name.clone(),
                color,
            });
        }
        for (index, entry) in entries.iter().enumerate() {
            let field = format!("{color}[{index}]");
            let (entry, weight) = match pool::split_entry(&field, entry) {
                Ok(split) => split,
                Err(problem) => {
                    problems.push((name.clone(), problem).into());
                    continue;
                }
            };
            let backend = match parse_address(name, &field, entry) {
                Ok(backend) => backend,
                Err(problem) => {
                    problems.push(problem);
                    continue;
                }
            };
            if backend == address {
                problems.push(ConfigError::BackendIsService {
                    service: name.clone(),
                    field,
                    backend,
                });
            } else if backend.is_ipv4() != address.is_ipv4() {
                problems.push(ConfigError::FamilyMismatch {
                    service: name.clone(),
                    field,
                    backend,
                });
            } else if !seen.insert(backend) {
                problems.push(ConfigError::DuplicateBackend {
                    service: name.clone(),
                    field,
                    backend,
                });
            } else {
                pools[slot].push(backend);
                pool::keep_weight(
                    &mut weights,
                    backend,
                    weight.unwrap_or(pool::DEFAULT_WEIGHT),
                );
            }
        }
    }
    let count = pools[0].len() + pools[1].len();
    if count > (POOL_SLOTS / 2) as usize {
        problems.push(ConfigError::PoolTooLarge {
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
    let (health, outlier) = validate_health(section).map_err(|source| ConfigError::Health {
        service: name.clone(),
        source,
    })?;
    Ok(Service {
        name: name.clone(),
        address,
        protocol: section.protocol,
        green_weight,
        cohort: section.cohort,
        blue,
        green,
        weights,
        client_prefix,
        blue_release: section.blue_release.clone(),
        green_release: section.green_release.clone(),
        rollout,
        preview: super::overrides::validate_preview(
            name,
            address,
            section.preview.as_deref(),
            problems,
        ),
        overrides: super::overrides::validate(name, section.overrides.as_ref(), problems),
        health,
        outlier,
    })
}

type HealthSettings = (
    Option<super::health::HealthCheck>,
    Option<super::health::Outlier>,
);

fn validate_health(section: &ServiceSection) -> Result<HealthSettings, super::health::HealthError> {
    Ok((
        section
            .health
            .as_ref()
            .map(super::health::HealthSection::validate)
            .transpose()?,
        section
            .outlier
            .as_ref()
            .map(super::health::OutlierSection::validate)
            .transpose()?,
    ))
}
