//! Passive health (Envoy's outlier detection, at L4): from the kernel's per-backend handshake
//! counters (completed, refused, timed out: verified traffic only, see
//! `splitter-ebpf/src/signals.rs`), sampled once a second. When the failed share of the
//! handshakes of the last `window` reaches `failure_ratio` over at least `min_handshakes`, the
//! backend is ejected for `base_ejection`, doubled at each repeat (at most `max_ejection`);
//! then it is put back. A backend that stays in rotation for `max_ejection` without being
//! ejected again starts over at `base_ejection`.

use std::{collections::VecDeque, time::Instant};

use crate::config::health::Outlier;

/// One sample of a backend's absolute handshake counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Handshakes {
    pub completed: u64,
    /// Refused + timed out.
    pub failed: u64,
}

/// One backend's samples and ejection record.
#[derive(Clone, Debug, Default)]
pub struct Detector {
    samples: VecDeque<(Instant, Handshakes)>,
    /// Until when, and why.
    ejected: Option<(Instant, String)>,
    /// Ejections in a row (reset after `max_ejection` in rotation).
    ejections: u32,
    last_ejection_end: Option<Instant>,
}

impl Detector {
    /// The reason while ejected.
    pub fn ejected(&self, now: Instant) -> Option<&str> {
        self.ejected
            .as_ref()
            .filter(|(until, _)| now < *until)
            .map(|(_, reason)| reason.as_str())
    }

    /// Records a sample and judges the window; returns whether the backend was just ejected.
    /// `counting`: whether the backend takes new flows (a backend out of rotation for another
    /// reason is not judged, its window starts again when it comes back).
    pub fn sample(
        &mut self,
        now: Instant,
        handshakes: Handshakes,
        settings: &Outlier,
        counting: bool,
    ) -> bool {
        if let Some((until, _)) = &self.ejected
            && now >= *until
        {
            self.last_ejection_end = Some(*until);
            self.ejected = None;
        }
        if !counting || self.ejected.is_some() {
            self.samples.clear();
            return false;
        }
        if self
            .last_ejection_end
            .is_some_and(|end| now.duration_since(end) >= settings.max_ejection)
        {
            self.ejections = 0;
            self.last_ejection_end = None;
        }
        self.samples.push_back((now, handshakes));
        while self
            .samples
            .front()
            .is_some_and(|(at, _)| now.duration_since(*at) > settings.window)
        {
            self.samples.pop_front();
        }
        let (Some((_, first)), Some((_, last))) = (self.samples.front(), self.samples.back())
        else {
            return false;
        };
        let completed = last.completed.saturating_sub(first.completed);
        let failed = last.failed.saturating_sub(first.failed);
        let total = completed + failed;
        if total < settings.min_handshakes || total == 0 {
            return false;
        }
        #[expect(
            clippy::cast_precision_loss,
            reason = "a ratio of counts below 2^52 in a window"
        )]
        let ratio = failed as f64 / total as f64;
        if ratio < settings.failure_ratio {
            return false;
        }
        let factor = 1u32 << self.ejections.min(16);
        let time = (settings.base_ejection * factor).min(settings.max_ejection);
        self.ejections += 1;
        self.samples.clear();
        self.ejected = Some((
            now + time,
            format!(
                "outlier: {failed} of {total} handshakes failed in {}s (ejection {} for {}s)",
                settings.window.as_secs(),
                self.ejections,
                time.as_secs()
            ),
        ));
        true
    }

    /// When the current ejection ends.
    pub fn ejected_until(&self) -> Option<Instant> {
        self.ejected.as_ref().map(|(until, _)| *until)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn settings() -> Outlier {
        Outlier {
            failure_ratio: 0.5,
            min_handshakes: 20,
            window: Duration::from_secs(10),
            base_ejection: Duration::from_secs(30),
            max_ejection: Duration::from_secs(300),
        }
    }

    #[test]
    fn ejects_at_the_ratio_over_enough_handshakes_and_doubles() {
        let settings = settings();
        let start = Instant::now();
        let mut detector = Detector::default();
        let at = |s: u64| start + Duration::from_secs(s);
        let hs = |completed, failed| Handshakes { completed, failed };
        assert!(!detector.sample(at(0), hs(0, 0), &settings, true));
        assert!(
            !detector.sample(at(1), hs(5, 5), &settings, true),
            "10 handshakes: too few to judge"
        );
        assert!(
            !detector.sample(at(2), hs(20, 10), &settings, true),
            "1 in 3 failed"
        );
        assert!(detector.sample(at(3), hs(25, 30), &settings, true));
        let reason = detector.ejected(at(4)).unwrap().to_owned();
        assert!(reason.contains("30 of 55 handshakes failed"), "{reason}");
        assert!(detector.ejected(at(33)).is_none(), "30 s later it is back");
        assert!(!detector.sample(at(33), hs(25, 30), &settings, true));
        assert!(detector.sample(at(34), hs(25, 60), &settings, true));
        assert_eq!(
            detector.ejected_until(),
            Some(at(34 + 60)),
            "the second ejection lasts twice as long"
        );
    }

    #[test]
    fn a_window_slides() {
        let settings = settings();
        let start = Instant::now();
        let mut detector = Detector::default();
        let hs = |completed, failed| Handshakes { completed, failed };
        detector.sample(start, hs(0, 0), &settings, true);
        // 100 failures long ago, then only successes for longer than the window.
        detector.sample(start + Duration::from_secs(1), hs(0, 100), &settings, false);
        for s in 2..20 {
            assert!(!detector.sample(
                start + Duration::from_secs(s),
                hs(s * 10, 100),
                &settings,
                true
            ));
        }
    }
}
