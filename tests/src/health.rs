//! Helpers of the health tests (`tests/tests/health.rs`): backends that can be killed and
//! restarted one by one and answer both the line protocol and an HTTP health check, and a
//! client that records when each new connection succeeded or failed.

use std::{
    io::{BufRead as _, BufReader, Write as _},
    net::{SocketAddr, TcpStream},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use crate::{
    daemon_harness::{Lab, request},
    netns::Netns,
    servers::{Lifetime, Servers, server_timeouts},
};

/// One backend: `GET /healthz` answers `HTTP/1.0 200 OK` (and closes), any other line is
/// answered with the backend's `address:port` (the lab's line protocol). Stops on drop, which
/// closes its connections, as a killed server would.
pub fn backend(ns: &Netns, address: SocketAddr) -> Servers {
    let mut servers = Servers::new();
    let name = address.to_string();
    servers.tcp_with(ns, address, move |stream, lifetime| {
        serve(stream, &name, lifetime);
    });
    servers
}

fn serve(stream: TcpStream, name: &str, lifetime: &Lifetime) {
    if server_timeouts(&stream).is_err() {
        return;
    }
    let mut writer = match stream.try_clone() {
        Ok(writer) => writer,
        Err(_) => return,
    };
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    while !lifetime.expired() {
        match reader.read_line(&mut line) {
            Ok(0) => return,
            Ok(_) if line.ends_with('\n') => {
                let reply = if line.starts_with("GET ") {
                    // An HTTP check: the status line, then close (HTTP/1.0).
                    let _ = writer.write_all(b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n");
                    return;
                } else {
                    format!("{name}\n")
                };
                if writer.write_all(reply.as_bytes()).is_err() {
                    return;
                }
                line.clear();
            }
            Ok(_) => {}
            Err(error)
                if matches!(
                    error.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => return,
        }
    }
}

/// When a request ended, and the backend that answered or what failed.
pub type Outcome = (Instant, Result<String, String>);

/// A client opening one new connection (one request) every `pace` to `vip` from the lab's
/// client namespace, until stopped or `limit` passed.
pub struct Load {
    stop: Arc<AtomicBool>,
    results: Arc<Mutex<Vec<Outcome>>>,
    thread: Option<JoinHandle<()>>,
}

impl Load {
    pub fn start(lab: &Lab, vip: &str, pace: Duration, limit: Duration) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let results = Arc::new(Mutex::new(Vec::new()));
        let vip: SocketAddr = vip.parse().unwrap();
        let (stop_in, results_in) = (stop.clone(), results.clone());
        let thread = lab.topology.client.spawn(move || {
            let started = Instant::now();
            while !stop_in.load(Ordering::Relaxed) && started.elapsed() < limit {
                let result = request(vip);
                results_in.lock().unwrap().push((Instant::now(), result));
                std::thread::sleep(pace);
            }
        });
        Self {
            stop,
            results,
            thread: Some(thread),
        }
    }

    /// Stops the client; every outcome.
    pub fn finish(mut self) -> Vec<Outcome> {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        std::mem::take(&mut *self.results.lock().unwrap())
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
