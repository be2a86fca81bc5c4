//! What `status` and the metrics endpoint show: the snapshot of every service, backend and
//! counter, the once-a-second rate sample.

use std::{
    collections::{BTreeMap, HashMap},
    time::Instant,
};

use splitter_common::{BackendCounters, WEIGHT_SCALE};

use super::{App, AppError, sampler::Sample};
use crate::{
    config::ColorName,
    control::protocol::{
        BackendStatus, ColorStatus, DaemonStatus, FlowStates, FlowTables, ServiceStatus, Signals,
        StatusReport, Traffic, TrafficRate,
    },
    health::{BackendHealth, slow_start},
    units::ppm_to_percent,
};

/// One scan of the flow tables: flows per backend id by state, and each table's fill.
#[derive(Clone, Debug, Default)]
pub struct Census {
    pub backends: HashMap<u32, FlowStates>,
    pub tables: FlowTables,
}

impl App {
    /// One sample of every configured backend's new-flow counter (once a second).
    pub fn sample(&mut self, now: Instant) {
        let mut new_flows = BTreeMap::new();
        for installed in self.installed.values() {
            // Every backend with a reply mapping: in rotation or not.
            for (id, _) in installed
                .pool(ColorName::Blue)
                .iter()
                .chain(installed.pool(ColorName::Green))
                .chain(&installed.others)
            {
                if let Ok(counters) = self.dataplane.maps.backend_counters(*id) {
                    new_flows.insert(
                        *id,
                        Sample {
                            new_flows: counters.new_flows,
                            to_backend_packets: counters.to_backend.packets,
                            to_backend_bytes: counters.to_backend.bytes,
                            to_client_packets: counters.to_client.packets,
                            to_client_bytes: counters.to_client.bytes,
                        },
                    );
                }
            }
        }
        self.sampler.record(now, new_flows);
    }

    /// Everything `status` and the metrics endpoint show, with the flows of `census` (a scan
    /// of the flow tables).
    #[expect(clippy::too_many_lines, reason = "one field of the report per line")]
    pub fn status(&self, census: &Census) -> Result<StatusReport, AppError> {
        let maps = &self.dataplane.maps;
        let now = Instant::now();
        let mut services = Vec::new();
        // Previews are listed after every service, as services of their own (own counters).
        let previews: Vec<(crate::config::Service, String)> = self
            .config
            .services
            .iter()
            .filter_map(|service| Some((service.preview_service()?, service.name.clone())))
            .collect();
        let listed = self
            .config
            .services
            .iter()
            .map(|service| (service, None))
            .chain(previews.iter().map(|(preview, of)| (preview, Some(of))));
        for (service, preview_of) in listed {
            let Some(installed) = self.installed.get(&(service.address, service.protocol)) else {
                continue;
            };
            let mut colors = Vec::new();
            let mut window = [0u64; 2];
            let mut window_seconds = 0.0;
            let since = self.sampler.changed_at(&service.name);
            let stable = self.state.stable_color(&service.name);
            let green_weight = installed.config.green_weight;
            for color in ColorName::BOTH {
                let mut backends = Vec::new();
                let mut color_live = 0;
                for (id, address) in &installed.members(service.pool(color)) {
                    let counters: BackendCounters = maps.backend_counters(*id)?;
                    let health = self.health.get(&service.name, address);
                    let in_rotation = !installed.inactive.contains(address);
                    let weight = service.weight(address);
                    // A preview's green backends ramp with its service's.
                    let ramps = preview_of
                        .and_then(|name| self.config.service(name))
                        .unwrap_or(service);
                    let permille = self.slow_start_permille(ramps, address, now);
                    let rate = self.sampler.rate(*id);
                    if let Some(share) = self.sampler.rate_since(*id, since) {
                        window[color as usize] += share.increase.new_flows;
                        window_seconds = share.seconds;
                    }
                    let traffic_rate = |packets: fn(&Sample) -> (u64, u64)| {
                        rate.map(|rate| {
                            let (p, b) = packets(&rate.increase);
                            TrafficRate {
                                packets_per_second: rate.of(p),
                                bytes_per_second: rate.of(b),
                            }
                        })
                    };
                    let flows = census.backends.get(id).copied().unwrap_or_default();
                    color_live += flows.live();
                    backends.push(BackendStatus {
                        address: *address,
                        id: *id,
                        live_flows: flows.live(),
                        flows,
                        new_flows: counters.new_flows,
                        new_flows_per_second: rate.map(super::sampler::Rate::per_second),
                        to_backend_rate: traffic_rate(|s| {
                            (s.to_backend_packets, s.to_backend_bytes)
                        }),
                        to_client_rate: traffic_rate(|s| (s.to_client_packets, s.to_client_bytes)),
                        to_backend: Traffic {
                            packets: counters.to_backend.packets,
                            bytes: counters.to_backend.bytes,
                            tcp_resets: counters.to_backend.tcp_rst,
                        },
                        to_client: Traffic {
                            packets: counters.to_client.packets,
                            bytes: counters.to_client.bytes,
                            tcp_resets: counters.to_client.tcp_rst,
                        },
                        signals: Signals {
                            handshakes_completed: counters.signals.handshakes_completed,
                            handshakes_refused: counters.signals.handshakes_refused,
                            handshakes_timed_out: counters.signals.handshakes_timed_out,
                            established_resets: counters.signals.established_resets,
                            handshake_latency_buckets: counters
                                .signals
                                .handshake_latency_buckets
                                .to_vec(),
                            handshake_latency_sum_ns: counters.signals.handshake_latency_sum_ns,
                        },
                        state: health.map(BackendHealth::state).unwrap_or_default(),
                        state_reason: health
                            .map(|health| health.reason().to_owned())
                            .unwrap_or_default(),
                        state_since_unix_ms: health.map_or(0, BackendHealth::since_unix_ms),
                        transitions: health
                            .map(|health| health.transitions().clone())
                            .unwrap_or_default(),
                        weight,
                        effective_weight: if in_rotation {
                            slow_start::effective(weight, permille)
                        } else {
                            0.0
                        },
                        slow_start_percent: (in_rotation && permille < slow_start::FULL_PERMILLE)
                            .then(|| f64::from(permille) / 10.0),
                    });
                }
                let green_percent = ppm_to_percent(green_weight);
                colors.push(ColorStatus {
                    color,
                    release: service.release(color).map(str::to_owned),
                    stable: color == stable,
                    weight_percent: match color {
                        ColorName::Green => green_percent,
                        ColorName::Blue => ppm_to_percent(WEIGHT_SCALE - green_weight),
                    },
                    live_flows: color_live,
                    backends,
                });
            }
            let window_new_flows = window[0] + window[1];
            let service_counters = maps.service_counters(installed.config.id)?;
            services.push(ServiceStatus {
                name: service.name.clone(),
                preview_of: preview_of.cloned(),
                address: service.address,
                protocol: service.protocol,
                cohort: service.cohort,
                green_weight,
                green_weight_percent: ppm_to_percent(green_weight),
                stable,
                measured_green_share: (window_new_flows > 0)
                    .then(|| window[ColorName::Green as usize] as f64 / window_new_flows as f64),
                settling: window_new_flows == 0
                    && since.is_some_and(|at| at.elapsed() < super::sampler::WINDOW),
                window_seconds,
                window_new_flows,
                flow_misses: service_counters.flow_misses,
                ambiguous_misses: service_counters.ambiguous_misses,
                colors,
            });
        }
        let verdicts = maps
            .verdicts()?
            .into_iter()
            .map(|(reason, count)| (reason.label().to_owned(), count))
            .collect();
        let forwarding = maps
            .forwarding()?
            .into_iter()
            .map(|(path, count)| (path.label().to_owned(), count))
            .collect();
        Ok(StatusReport {
            daemon: DaemonStatus {
                pid: std::process::id(),
                version: env!("CARGO_PKG_VERSION").to_owned(),
                config: self.config_path.clone(),
                uptime_seconds: self.started.elapsed().as_secs(),
                dataplane: self.dataplane.origin,
                bpffs: self.config.bpffs.clone(),
                interfaces: self.dataplane.interfaces().into_iter().collect(),
                flow_table_size: self.dataplane.loaded_with.flow_table_size,
                hash_seed: self.dataplane.loaded_with.hash_seed,
                hash_seed_source: self.hash_seed_source,
                pinned_flows: census.tables.flows.entries + census.tables.flows6.entries,
                flow_tables: census.tables,
                state_file: self.persist_status(),
            },
            services,
            verdicts,
            forwarding,
            // Filled in by `Shared::status` ([fleet]).
            fleet: None,
        })
    }
}
