//! The demo's client, in the client namespace: a steady mix of new connections (one request
//! each, at a fixed pace) and a few long-lived keep-alive connections (a request every
//! [`KEEPALIVE_EVERY`]). Results are tallied per phase of the walk: the phase in force when a
//! request began. Bounded in count and time: everything stops after [`MAX_RUN`] or
//! [`MAX_NEW_CONNECTIONS`], whatever happens.

use std::{
    collections::BTreeMap,
    net::{IpAddr, SocketAddr},
    sync::{
        Arc, Mutex, MutexGuard,
        atomic::{AtomicBool, AtomicU16, AtomicUsize, Ordering},
        mpsc,
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use splitter::config::ColorName;

use super::http::{Connection, color_of, get_once};
use crate::netns::{Netns, enter};

/// Long-lived connections send a request this often.
pub const KEEPALIVE_EVERY: Duration = Duration::from_millis(200);
/// No client thread runs longer than this.
pub const MAX_RUN: Duration = Duration::from_secs(15 * 60);
/// New connections come from these source ports, each used once per run, below the kernel's
/// ephemeral range (32768-60999 by default, where the long-lived connections get theirs).
///
/// Why not let the kernel pick: it walks its range in strides and wraps after a few thousand
/// connections to one destination, so ports come back within a minute. The data plane treats a
/// SYN on a reused, still-pinned 5-tuple whose earlier handshake completed as a new connection
/// (it follows the weight in force), but the demo found that case first: distinct ports keep
/// each phase's tally about exactly the connections it opened, like many distinct clients.
const SOURCE_PORTS: std::ops::RangeInclusive<u16> = 10_000..=32_767;
/// The most new connections a run opens: one per source port.
pub const MAX_NEW_CONNECTIONS: u64 =
    (*SOURCE_PORTS.end() as u64) - (*SOURCE_PORTS.start() as u64) + 1;
/// Failure messages kept per phase.
const KEPT_ERRORS: usize = 5;
/// Threads opening the new connections (a few, so that one slow answer does not hold up
/// the pace).
const WORKERS: usize = 4;

/// What happened in one phase.
#[derive(Clone, Debug, Default)]
pub struct Tally {
    /// New connections answered by each color, and those that failed.
    pub new_blue: u64,
    pub new_green: u64,
    pub new_failed: u64,
    /// Answers of new connections per release and instance (`v1 blue-0`).
    pub answers: BTreeMap<String, u64>,
    /// Requests on long-lived connections, and those that failed.
    pub long_requests: u64,
    pub long_failed: u64,
    /// The first few failures, as the client saw them.
    pub errors: Vec<String>,
}

impl Tally {
    pub fn new_connections(&self) -> u64 {
        self.new_blue + self.new_green + self.new_failed
    }

    pub fn requests(&self) -> u64 {
        self.new_connections() + self.long_requests
    }

    pub fn failed(&self) -> u64 {
        self.new_failed + self.long_failed
    }

    /// Green's share of the answered new connections.
    pub fn green_share(&self) -> Option<f64> {
        let answered = self.new_blue + self.new_green;
        (answered > 0).then(|| self.new_green as f64 / answered as f64)
    }

    fn error(&mut self, error: String) {
        if self.errors.len() < KEPT_ERRORS {
            self.errors.push(error);
        }
    }
}

/// One long-lived connection's story.
#[derive(Clone, Debug, Default)]
pub struct LongLived {
    /// The answer to its first request (`v1 blue-0`): the backend it is pinned to.
    pub first: Option<String>,
    pub requests: u64,
    pub failed: u64,
    /// Answers from another backend than the first.
    pub moved: u64,
    /// Why it broke, if it did.
    pub error: Option<String>,
    /// Closed by the client (drained), not broken.
    pub closed: bool,
}

impl LongLived {
    pub fn color(&self) -> Option<ColorName> {
        self.first.as_deref().and_then(color_of)
    }

    /// Every request answered, always by the same backend.
    pub fn intact(&self) -> bool {
        self.first.is_some() && self.failed == 0 && self.moved == 0
    }
}

#[derive(Default)]
struct State {
    phases: Vec<(String, Tally)>,
    long_lived: Vec<LongLived>,
}

struct Shared {
    stop: AtomicBool,
    started: Instant,
    /// The client's address, and the next source port of a new connection.
    client: IpAddr,
    next_port: AtomicU16,
    /// New connections wait (see [`Load::pause`]); how many are under way.
    paused: AtomicBool,
    in_flight: AtomicUsize,
    state: Mutex<State>,
}

impl Shared {
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn stopped(&self) -> bool {
        self.stop.load(Ordering::Relaxed) || self.started.elapsed() > MAX_RUN
    }

    /// The phase in force now.
    fn phase(&self) -> usize {
        self.state().phases.len() - 1
    }
}

/// The running client; stops (and joins its threads) on drop.
pub struct Load {
    shared: Arc<Shared>,
    vip: SocketAddr,
    pacer: Option<JoinHandle<()>>,
    /// Long-lived connection threads, by index in `State::long_lived`.
    long_threads: Vec<(usize, JoinHandle<()>)>,
}

impl Load {
    /// Starts the new connections from `address` in `client`: one every `pace`, counted in
    /// phase `phase`.
    pub fn start(
        client: &Netns,
        address: IpAddr,
        vip: SocketAddr,
        pace: Duration,
        phase: &str,
    ) -> Self {
        let shared = Arc::new(Shared {
            stop: AtomicBool::new(false),
            started: Instant::now(),
            client: address,
            next_port: AtomicU16::new(*SOURCE_PORTS.start()),
            paused: AtomicBool::new(false),
            in_flight: AtomicUsize::new(0),
            state: Mutex::new(State {
                phases: vec![(phase.to_owned(), Tally::default())],
                long_lived: Vec::new(),
            }),
        });
        let pacer = {
            let shared = shared.clone();
            let path = format!("/run/netns/{}", client.name);
            std::thread::spawn(move || new_connections(&shared, &path, vip, pace))
        };
        Self {
            shared,
            vip,
            pacer: Some(pacer),
            long_threads: Vec::new(),
        }
    }

    /// Holds new connections back (their ticks are skipped) and waits, at most a few seconds,
    /// until none is under way: a weight changed now is seen by every new connection of the
    /// next phase and by none of this one. Long-lived connections carry on.
    pub fn pause(&self) {
        self.shared.paused.store(true, Ordering::SeqCst);
        let deadline = Instant::now() + Duration::from_secs(5);
        while self.shared.in_flight.load(Ordering::SeqCst) > 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// New connections go on (after [`Load::pause`]).
    pub fn resume(&self) {
        self.shared.paused.store(false, Ordering::SeqCst);
    }

    /// From now on, requests are counted in a new phase `name`.
    pub fn phase(&self, name: &str) {
        self.shared
            .state()
            .phases
            .push((name.to_owned(), Tally::default()));
    }

    /// The tally of the phase in force.
    pub fn current(&self) -> Tally {
        let state = self.shared.state();
        state
            .phases
            .last()
            .map(|(_, t)| t.clone())
            .unwrap_or_default()
    }

    /// Every phase so far, in order.
    pub fn phases(&self) -> Vec<(String, Tally)> {
        self.shared.state().phases.clone()
    }

    pub fn long_lived(&self) -> Vec<LongLived> {
        self.shared.state().long_lived.clone()
    }

    /// Opens `count` long-lived connections and waits (at most a few seconds) for their first
    /// answers; they live until [`Load::close`] or the end.
    pub fn open_long_lived(&mut self, client: &Netns, count: usize) {
        for _ in 0..count {
            let index = {
                let mut state = self.shared.state();
                state.long_lived.push(LongLived::default());
                state.long_lived.len() - 1
            };
            let (shared, vip) = (self.shared.clone(), self.vip);
            let thread = client.spawn(move || long_lived(&shared, vip, index));
            self.long_threads.push((index, thread));
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline
            && self
                .shared
                .state()
                .long_lived
                .iter()
                .any(|c| c.first.is_none() && c.error.is_none())
        {
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Closes (FIN: a drain, not a failure) the open long-lived connections whose first answer
    /// came from `color`, and waits for their threads.
    pub fn close(&mut self, color: ColorName) {
        let closing: Vec<usize> = {
            let mut state = self.shared.state();
            let mut closing = Vec::new();
            for (i, connection) in state.long_lived.iter_mut().enumerate() {
                if connection.color() == Some(color) && connection.error.is_none() {
                    connection.closed = true;
                    closing.push(i);
                }
            }
            closing
        };
        let (done, open): (Vec<_>, Vec<_>) = self
            .long_threads
            .drain(..)
            .partition(|(i, _)| closing.contains(i));
        self.long_threads = open;
        for (_, thread) in done {
            let _ = thread.join();
        }
    }

    /// Stops every client thread and waits for them.
    pub fn stop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        if let Some(pacer) = self.pacer.take() {
            let _ = pacer.join();
        }
        for (_, thread) in self.long_threads.drain(..) {
            let _ = thread.join();
        }
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Paces the new connections: a ticket every `pace` to [`WORKERS`] workers, so that a slow
/// answer does not slow the pace down.
fn new_connections(shared: &Arc<Shared>, client: &str, vip: SocketAddr, pace: Duration) {
    let (tickets, queue) = mpsc::channel::<()>();
    let queue = Arc::new(Mutex::new(queue));
    let workers: Vec<JoinHandle<()>> = (0..WORKERS)
        .map(|_| {
            let (shared, queue, path) = (shared.clone(), queue.clone(), client.to_owned());
            std::thread::spawn(move || {
                enter(&path);
                loop {
                    let ticket = queue
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .recv_timeout(Duration::from_millis(50));
                    match ticket {
                        Ok(()) => new_connection(&shared, vip),
                        Err(mpsc::RecvTimeoutError::Timeout) => {}
                        Err(mpsc::RecvTimeoutError::Disconnected) => return,
                    }
                }
            })
        })
        .collect();
    let mut next = Instant::now();
    let mut opened = 0;
    while !shared.stopped() && opened < MAX_NEW_CONNECTIONS {
        if tickets.send(()).is_err() {
            break;
        }
        opened += 1;
        next += pace;
        let now = Instant::now();
        if next > now {
            std::thread::sleep(next - now);
        } else if now - next > pace {
            next = now; // stalled: carry on from now rather than burst
        }
    }
    drop(tickets);
    for worker in workers {
        let _ = worker.join();
    }
}

/// One new connection unless paused or stopped.
fn new_connection(shared: &Shared, vip: SocketAddr) {
    // Counted under way before looking at the pause, so that `pause` either sees this one or
    // this one sees the pause.
    shared.in_flight.fetch_add(1, Ordering::SeqCst);
    if !shared.stopped() && !shared.paused.load(Ordering::SeqCst) {
        request(shared, vip);
    }
    shared.in_flight.fetch_sub(1, Ordering::SeqCst);
}

/// One request on a new connection, counted in the phase in force when it began.
fn request(shared: &Shared, vip: SocketAddr) {
    let port = shared.next_port.fetch_add(1, Ordering::Relaxed);
    if !SOURCE_PORTS.contains(&port) {
        return; // every source port used: the pacer stops at MAX_NEW_CONNECTIONS anyway
    }
    let phase = shared.phase();
    let answer = get_once(SocketAddr::new(shared.client, port), vip);
    let mut state = shared.state();
    let tally = &mut state.phases[phase].1;
    match answer {
        Ok(answer) => {
            match color_of(&answer) {
                Some(ColorName::Green) => tally.new_green += 1,
                Some(ColorName::Blue) => tally.new_blue += 1,
                None => {
                    tally.new_failed += 1;
                    tally.error(format!("unexpected answer {answer:?}"));
                }
            }
            *tally.answers.entry(answer).or_default() += 1;
        }
        Err(error) => {
            tally.new_failed += 1;
            tally.error(format!("new connection: {error}"));
        }
    }
}

fn long_lived(shared: &Shared, vip: SocketAddr, index: usize) {
    let closing = |shared: &Shared| shared.stopped() || shared.state().long_lived[index].closed;
    let phase = shared.phase();
    let mut connection = match Connection::open(vip) {
        Ok(connection) => connection,
        Err(error) => {
            let mut state = shared.state();
            state.long_lived[index].error = Some(format!("connect: {error}"));
            let tally = &mut state.phases[phase].1;
            tally.long_requests += 1;
            tally.long_failed += 1;
            tally.error(format!("long-lived connect: {error}"));
            return;
        }
    };
    while !closing(shared) {
        let phase = shared.phase();
        let answer = connection.get(false);
        let mut state = shared.state();
        let State {
            phases, long_lived, ..
        } = &mut *state;
        let (record, tally) = (&mut long_lived[index], &mut phases[phase].1);
        record.requests += 1;
        tally.long_requests += 1;
        match answer {
            Ok(answer) => match &record.first {
                None => record.first = Some(answer),
                Some(first) if *first != answer => record.moved += 1,
                Some(_) => {}
            },
            Err(error) => {
                record.failed += 1;
                record.error = Some(error.to_string());
                tally.long_failed += 1;
                tally.error(format!("long-lived connection: {error}"));
                return; // broken: a real client would reconnect, the demo counts it
            }
        }
        drop(state);
        let wake = Instant::now() + KEEPALIVE_EVERY;
        while Instant::now() < wake && !closing(shared) {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}
