//! Rates from counters: the daemon samples every backend's counters (new flows, packets and
//! bytes each way) once a second and keeps a short window, from which `status` computes rates
//! per backend and the measured green share of new flows. The share counts only samples taken
//! after the service's last weight change: a window straddling a change would mix two splits.

use std::{
    collections::{BTreeMap, VecDeque},
    time::{Duration, Instant},
};

/// How far back rates look.
pub const WINDOW: Duration = Duration::from_secs(10);

/// One backend's counters at an instant.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Sample {
    pub new_flows: u64,
    pub to_backend_packets: u64,
    pub to_backend_bytes: u64,
    pub to_client_packets: u64,
    pub to_client_bytes: u64,
}

#[derive(Debug, Default)]
pub struct Sampler {
    /// (when, backend id → counters), oldest first.
    samples: VecDeque<(Instant, BTreeMap<u32, Sample>)>,
    /// When each service's weight last changed (by service name).
    weight_changed: BTreeMap<String, Instant>,
}

/// Counter increases of one backend over a window.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Rate {
    pub increase: Sample,
    pub seconds: f64,
}

impl Rate {
    /// New flows per second.
    pub fn per_second(self) -> f64 {
        self.increase.new_flows as f64 / self.seconds
    }

    pub fn of(self, count: u64) -> f64 {
        count as f64 / self.seconds
    }
}

impl Sampler {
    pub fn record(&mut self, now: Instant, new_flows: BTreeMap<u32, Sample>) {
        self.samples.push_back((now, new_flows));
        while let Some((oldest, _)) = self.samples.front() {
            if now.duration_since(*oldest) <= WINDOW || self.samples.len() <= 2 {
                break;
            }
            self.samples.pop_front();
        }
    }

    /// Forgets the history (ids may have moved to other backends).
    pub fn clear(&mut self) {
        self.samples.clear();
    }

    /// A service's weight changed now: its measured share starts over.
    pub fn weight_changed(&mut self, service: &str, now: Instant) {
        self.weight_changed.insert(service.to_owned(), now);
    }

    /// When the service's weight last changed, if within the window.
    pub fn changed_at(&self, service: &str) -> Option<Instant> {
        self.weight_changed.get(service).copied()
    }

    /// The increase of a backend's counters over the window (None: fewer than two samples,
    /// or the id was not sampled at both ends).
    pub fn rate(&self, backend_id: u32) -> Option<Rate> {
        self.rate_since(backend_id, None)
    }

    /// [`Sampler::rate`] counting only samples taken at or after `since`.
    pub fn rate_since(&self, backend_id: u32, since: Option<Instant>) -> Option<Rate> {
        let (first, oldest) = self
            .samples
            .iter()
            .find(|(at, _)| since.is_none_or(|since| *at >= since))?;
        let (last, newest) = self.samples.back()?;
        let seconds = last.duration_since(*first).as_secs_f64();
        if seconds <= 0.0 {
            return None;
        }
        let (old, new) = (oldest.get(&backend_id)?, newest.get(&backend_id)?);
        let increase = Sample {
            new_flows: new.new_flows.saturating_sub(old.new_flows),
            to_backend_packets: new
                .to_backend_packets
                .saturating_sub(old.to_backend_packets),
            to_backend_bytes: new.to_backend_bytes.saturating_sub(old.to_backend_bytes),
            to_client_packets: new.to_client_packets.saturating_sub(old.to_client_packets),
            to_client_bytes: new.to_client_bytes.saturating_sub(old.to_client_bytes),
        };
        Some(Rate { increase, seconds })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(new_flows: u64) -> Sample {
        Sample {
            new_flows,
            to_backend_packets: new_flows * 10,
            to_backend_bytes: new_flows * 1000,
            ..Sample::default()
        }
    }

    #[test]
    #[expect(clippy::float_cmp, reason = "exact quotients of small integers")]
    fn rates_over_the_window() {
        let start = Instant::now();
        let mut sampler = Sampler::default();
        assert_eq!(sampler.rate(1), None);
        for second in 0..=20u64 {
            sampler.record(
                start + Duration::from_secs(second),
                BTreeMap::from([(1, sample(second * 5)), (2, sample(7))]),
            );
        }
        let rate = sampler.rate(1).unwrap();
        assert_eq!(rate.increase.new_flows, 50);
        assert_eq!(rate.seconds, 10.0);
        assert_eq!(rate.per_second(), 5.0);
        assert_eq!(rate.of(rate.increase.to_backend_packets), 50.0);
        assert_eq!(rate.of(rate.increase.to_backend_bytes), 5000.0);
        assert_eq!(sampler.rate(2).unwrap().increase.new_flows, 0);
        assert_eq!(sampler.rate(3), None);
    }

    /// After a weight change only the samples taken since count: none at first (settling),
    /// then the increase from the first one after the change.
    #[test]
    fn the_share_window_starts_at_the_last_weight_change() {
        let start = Instant::now();
        let mut sampler = Sampler::default();
        for second in 0..=10u64 {
            sampler.record(
                start + Duration::from_secs(second),
                BTreeMap::from([(1, sample(second * 5))]),
            );
        }
        let change = start + Duration::from_millis(10_500);
        sampler.weight_changed("web", change);
        assert_eq!(sampler.rate_since(1, sampler.changed_at("web")), None);
        sampler.record(
            start + Duration::from_secs(11),
            BTreeMap::from([(1, sample(100))]),
        );
        assert_eq!(
            sampler.rate_since(1, sampler.changed_at("web")),
            None,
            "one sample since the change is no window"
        );
        sampler.record(
            start + Duration::from_secs(12),
            BTreeMap::from([(1, sample(103))]),
        );
        let rate = sampler.rate_since(1, sampler.changed_at("web")).unwrap();
        assert_eq!(rate.increase.new_flows, 3);
        assert!(sampler.rate(1).unwrap().increase.new_flows > 3);
    }
}
