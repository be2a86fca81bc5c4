//! Bounded resources for the daemon's listeners (control socket and metrics endpoint): a cap on
//! concurrent connections, backoff on accept errors, and log lines that cannot flood.
//!
//! At the cap, a new connection is accepted and the **oldest** one is closed: a client that
//! opens connections and sits on them (to exhaust the daemon's file descriptors) cannot keep
//! a scraper or the CLI out, and the daemon never holds more than `max` connections.

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use tokio::task::AbortHandle;

/// Concurrent connections of one listener, oldest first.
#[derive(Debug)]
pub struct ConnectionSlots {
    what: &'static str,
    max: usize,
    inner: Mutex<Slots>,
}

#[derive(Debug, Default)]
struct Slots {
    next_id: u64,
    open: BTreeMap<u64, AbortHandle>,
    evicted: u64,
    log: RateLimit,
}

/// Frees its slot when the connection's task ends (or is aborted).
pub struct SlotGuard {
    slots: Arc<ConnectionSlots>,
    id: u64,
}

impl Drop for SlotGuard {
    fn drop(&mut self) {
        self.slots.lock().open.remove(&self.id);
    }
}

impl ConnectionSlots {
    pub fn new(what: &'static str, max: usize) -> Arc<Self> {
        Arc::new(Self {
            what,
            max: max.max(1),
            inner: Mutex::new(Slots::default()),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Slots> {
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Open connections now.
    pub fn open(&self) -> usize {
        self.lock().open.len()
    }

    /// Runs `connection` as a task holding a slot; at the cap the oldest connection is
    /// closed first.
    pub fn spawn<F>(self: &Arc<Self>, connection: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let mut slots = self.lock();
        let mut evict = Vec::new();
        while slots.open.len() >= self.max {
            let Some((_, oldest)) = slots.open.pop_first() else {
                break;
            };
            evict.push(oldest);
            slots.evicted += 1;
            let evicted = slots.evicted;
            if let Some(suppressed) = slots.log.allow() {
                tracing::warn!(
                    listener = self.what,
                    max = self.max,
                    evicted_total = evicted,
                    suppressed,
                    "connection limit reached: closed the oldest connection"
                );
            }
        }
        let id = slots.next_id;
        slots.next_id += 1;
        let guard = SlotGuard {
            slots: self.clone(),
            id,
        };
        // The lock is held until the handle is stored: a task that ends at once waits in its
        // guard's drop and then removes this entry.
        let task = tokio::spawn(async move {
            let _guard = guard;
            connection.await;
        });
        slots.open.insert(id, task.abort_handle());
        drop(slots);
        // Outside the lock: an aborted task's guard takes it.
        for oldest in evict {
            oldest.abort();
        }
    }
}

/// After an accept error (`EMFILE`, `ENFILE`, `ENOBUFS`, ...) the listener waits before the
/// next accept, doubling up to [`AcceptBackoff::MAX`], so a full descriptor table does not
/// turn the accept loop into a busy loop; it logs the first error of an episode and then at
/// most one line per [`LOG_EVERY`] with the count of the others.
#[derive(Debug, Default)]
pub struct AcceptBackoff {
    delay: Option<Duration>,
    failures: u64,
    log: RateLimit,
}

impl AcceptBackoff {
    const MIN: Duration = Duration::from_millis(5);
    const MAX: Duration = Duration::from_secs(1);

    /// A successful accept ends the episode.
    pub fn success(&mut self, what: &'static str) {
        if self.delay.take().is_some() {
            tracing::info!(
                listener = what,
                failures = self.failures,
                "accepting connections again"
            );
            self.failures = 0;
            self.log = RateLimit::default();
        }
    }

    /// Logs (rate-limited) and sleeps.
    pub async fn failure(&mut self, what: &'static str, error: &std::io::Error) {
        self.failures += 1;
        let delay = self
            .delay
            .map_or(Self::MIN, |delay| (delay * 2).min(Self::MAX));
        self.delay = Some(delay);
        if let Some(suppressed) = self.log.allow() {
            tracing::warn!(
                listener = what,
                %error,
                retry_in_ms = delay.as_millis(),
                suppressed,
                "accepting a connection failed"
            );
        }
        tokio::time::sleep(delay).await;
    }
}

/// At most one log line per [`LOG_EVERY`]; says how many were suppressed in between.
pub const LOG_EVERY: Duration = Duration::from_secs(10);

#[derive(Debug, Default)]
pub struct RateLimit {
    last: Option<Instant>,
    suppressed: u64,
}

impl RateLimit {
    /// `Some(suppressed since the last line)` when a line may be logged now.
    pub fn allow(&mut self) -> Option<u64> {
        let now = Instant::now();
        match self.last {
            Some(last) if now.duration_since(last) < LOG_EVERY => {
                self.suppressed += 1;
                None
            }
            _ => {
                self.last = Some(now);
                Some(std::mem::take(&mut self.suppressed))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_limit_counts_what_it_suppresses() {
        let mut limit = RateLimit::default();
        assert_eq!(limit.allow(), Some(0));
        for _ in 0..1000 {
            assert_eq!(limit.allow(), None);
        }
        limit.last = Instant::now().checked_sub(LOG_EVERY);
        assert_eq!(limit.allow(), Some(1000));
    }

    #[tokio::test]
    async fn the_oldest_connection_is_closed_at_the_cap() {
        let slots = ConnectionSlots::new("test", 3);
        let (closed_tx, mut closed_rx) = tokio::sync::mpsc::unbounded_channel();
        for id in 0..5u32 {
            let closed = closed_tx.clone();
            slots.spawn(async move {
                struct Report(u32, tokio::sync::mpsc::UnboundedSender<u32>);
                impl Drop for Report {
                    fn drop(&mut self) {
                        let _ = self.1.send(self.0);
                    }
                }
                let _report = Report(id, closed);
                std::future::pending::<()>().await;
            });
            tokio::task::yield_now().await;
        }
        assert_eq!(closed_rx.recv().await, Some(0));
        assert_eq!(closed_rx.recv().await, Some(1));
        assert_eq!(slots.open(), 3);
    }
}
