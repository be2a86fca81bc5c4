//! Rates from counters: the daemon samples every backend's new-flow counter once a second and
//! keeps a short window, from which `status` computes new flows per second and the measured
//! green share of new flows.

use std::{
    collections::{BTreeMap, VecDeque},
    time::{Duration, Instant},
};

/// How far back rates look.
pub const WINDOW: Duration = Duration::from_secs(10);

#[derive(Debug, Default)]
pub struct Sampler {
    /// (when, backend id → new flows), oldest first.
    samples: VecDeque<(Instant, BTreeMap<u32, u64>)>,
}

/// Counter increase of one backend over the window.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Rate {
    pub increase: u64,
    pub seconds: f64,
}

impl Rate {
    pub fn per_second(self) -> f64 {
        self.increase as f64 / self.seconds
    }
}

impl Sampler {
    pub fn record(&mut self, now: Instant, new_flows: BTreeMap<u32, u64>) {
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

    /// The increase of a backend's new flows over the window (None: fewer than two samples,
    /// or the id was not sampled at both ends).
    pub fn rate(&self, backend_id: u32) -> Option<Rate> {
        let (first, oldest) = self.samples.front()?;
        let (last, newest) = self.samples.back()?;
        let seconds = last.duration_since(*first).as_secs_f64();
        if seconds <= 0.0 {
            return None;
        }
        let increase = newest
            .get(&backend_id)?
            .saturating_sub(*oldest.get(&backend_id)?);
        Some(Rate { increase, seconds })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[expect(clippy::float_cmp, reason = "exact quotients of small integers")]
    fn rates_over_the_window() {
        let start = Instant::now();
        let mut sampler = Sampler::default();
        assert_eq!(sampler.rate(1), None);
        for second in 0..=20u64 {
            sampler.record(
                start + Duration::from_secs(second),
                BTreeMap::from([(1, second * 5), (2, 7)]),
            );
        }
        let rate = sampler.rate(1).unwrap();
        assert_eq!(rate.increase, 50);
        assert_eq!(rate.seconds, 10.0);
        assert_eq!(rate.per_second(), 5.0);
        assert_eq!(sampler.rate(2).unwrap().increase, 0);
        assert_eq!(sampler.rate(3), None);
    }
}
