//! Real servers for the end-to-end tests, each on a thread inside a backend's namespace, and the
//! client side of their protocol.
//!
//! * TCP: every request line is answered with the server's name (`blue-0`, `green-1`, ...) and a
//!   newline; the connection stays open until the client closes it. The request `bulk N` is
//!   answered with the name line followed by N bytes of [`bulk_byte`] (N ≤ [`MAX_BULK`]).
//! * UDP: every datagram is answered with `<name> <payload>` ([`Servers::udp_with`]: any
//!   answer).
//!
//! Servers are bounded: they stop when [`Servers`] is dropped (or `stop`ped), and after
//! [`MAX_LIFETIME`] (or the lifetime given to [`Servers::with_lifetime`]) at the latest, even if
//! nobody stops them. [`Servers::tcp_with`] serves another protocol on the same accept loop.

use std::{
    io::{self, Read, Write},
    net::{SocketAddr, TcpListener, TcpStream, UdpSocket},
    os::fd::AsRawFd,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
        mpsc,
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use socket2::{Domain, Protocol, Socket, Type};

use crate::netns::Netns;

/// How often idle server threads look at the stop flag.
const POLL: Duration = Duration::from_millis(100);
/// No server thread lives longer than this.
pub const MAX_LIFETIME: Duration = Duration::from_secs(300);
/// Client-side connect/read/write timeout.
pub const CLIENT_TIMEOUT: Duration = Duration::from_secs(2);
/// The longest request or reply line accepted.
const MAX_LINE: usize = 512;
/// The largest `bulk` answer.
pub const MAX_BULK: usize = 64 << 20;

/// Byte `i` of a `bulk` answer: a pattern that does not repeat every 2^n bytes, so a segment
/// delivered at the wrong offset is noticed.
pub const fn bulk_byte(i: usize) -> u8 {
    (i % 251) as u8
}

/// A group of running servers, stopped and joined on drop.
pub struct Servers {
    stop: Arc<AtomicBool>,
    max_lifetime: Duration,
    threads: Vec<JoinHandle<()>>,
}

/// Whether a server thread must end: its [`Servers`] was stopped (or dropped), or the thread
/// has lived its maximum lifetime. Handlers given to [`Servers::tcp_with`] poll it.
#[derive(Clone)]
pub struct Lifetime {
    stop: Arc<AtomicBool>,
    started: Instant,
    max: Duration,
}

impl Lifetime {
    pub fn expired(&self) -> bool {
        self.stop.load(Ordering::Relaxed) || self.started.elapsed() > self.max
    }
}

impl Default for Servers {
    fn default() -> Self {
        Self::new()
    }
}

impl Servers {
    pub fn new() -> Self {
        Self::with_lifetime(MAX_LIFETIME)
    }

    /// Servers that stop by themselves after `max_lifetime`.
    pub fn with_lifetime(max_lifetime: Duration) -> Self {
        Self {
            stop: Arc::new(AtomicBool::new(false)),
            max_lifetime,
            threads: Vec::new(),
        }
    }

    fn lifetime(&self) -> Lifetime {
        Lifetime {
            stop: self.stop.clone(),
            started: Instant::now(),
            max: self.max_lifetime,
        }
    }

    /// Starts a TCP server named `name` on `addr` inside `ns`; returns once it listens.
    pub fn tcp(&mut self, ns: &Netns, addr: SocketAddr, name: &str) {
        let name = name.to_owned();
        self.tcp_with(ns, addr, move |stream, lifetime| {
            serve_connection(stream, &name, lifetime);
        });
    }

    /// Starts a TCP server on `addr` inside `ns` that hands every accepted connection to
    /// `serve` on its own thread; returns once it listens. `serve` must return soon after
    /// its [`Lifetime`] expires.
    pub fn tcp_with<F>(&mut self, ns: &Netns, addr: SocketAddr, serve: F)
    where
        F: Fn(TcpStream, &Lifetime) + Send + Sync + 'static,
    {
        let (ready, bound) = mpsc::channel();
        let lifetime = self.lifetime();
        self.threads.push(ns.spawn(move || {
            let listener = match TcpListener::bind(addr) {
                Ok(listener) => listener,
                Err(e) => {
                    let _ = ready.send(Err(e));
                    return;
                }
            };
            let _ = ready.send(Ok(()));
            accept_loop(&listener, Arc::new(serve), &lifetime);
        }));
        wait_bound(&bound, "TCP", addr);
    }

    /// Starts a UDP server named `name` on `addr` inside `ns`; returns once it is bound.
    pub fn udp(&mut self, ns: &Netns, addr: SocketAddr, name: &str) {
        let name = name.to_owned();
        self.udp_with(ns, addr, move |payload| {
            let mut reply = format!("{name} ").into_bytes();
            reply.extend_from_slice(payload);
            reply
        });
    }

    /// Starts a UDP server on `addr` inside `ns` that answers every datagram with
    /// `reply(payload)`; returns once it is bound.
    pub fn udp_with<F>(&mut self, ns: &Netns, addr: SocketAddr, reply: F)
    where
        F: Fn(&[u8]) -> Vec<u8> + Send + 'static,
    {
        let (ready, bound) = mpsc::channel();
        let lifetime = self.lifetime();
        self.threads.push(ns.spawn(move || {
            let socket = match UdpSocket::bind(addr).and_then(|s| {
                s.set_read_timeout(Some(POLL))?;
                Ok(s)
            }) {
                Ok(socket) => socket,
                Err(e) => {
                    let _ = ready.send(Err(e));
                    return;
                }
            };
            let _ = ready.send(Ok(()));
            udp_loop(&socket, &reply, &lifetime);
        }));
        wait_bound(&bound, "UDP", addr);
    }

    /// Stops every server and waits for its threads (at most one poll interval).
    pub fn stop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

impl Drop for Servers {
    fn drop(&mut self) {
        self.stop();
    }
}

fn wait_bound(bound: &mpsc::Receiver<io::Result<()>>, kind: &str, addr: SocketAddr) {
    match bound.recv_timeout(Duration::from_secs(5)) {
        Ok(Ok(())) => {}
        Ok(Err(e)) => panic!("{kind} server on {addr}: bind failed: {e}"),
        Err(e) => panic!("{kind} server on {addr} did not start: {e}"),
    }
}

/// Accepts connections (polling so that the stop flag is seen) and serves each on its own
/// thread.
fn accept_loop<F>(listener: &TcpListener, serve: Arc<F>, lifetime: &Lifetime)
where
    F: Fn(TcpStream, &Lifetime) + Send + Sync + 'static,
{
    let mut connections: Vec<JoinHandle<()>> = Vec::new();
    while !lifetime.expired() {
        let mut fd = libc::pollfd {
            fd: listener.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        if unsafe { libc::poll(&mut fd, 1, POLL.as_millis() as i32) } <= 0 {
            continue;
        }
        let Ok((stream, _)) = listener.accept() else {
            continue;
        };
        let serve = serve.clone();
        let lifetime = lifetime.clone();
        connections.push(std::thread::spawn(move || serve(stream, &lifetime)));
        connections.retain(|thread| !thread.is_finished());
    }
    for thread in connections {
        let _ = thread.join();
    }
}

/// Answers every request line with the server's name (and `bulk` data) until the client
/// closes.
fn serve_connection(mut stream: TcpStream, name: &str, lifetime: &Lifetime) {
    if server_timeouts(&stream).is_err() {
        return;
    }
    let reply = format!("{name}\n");
    let mut pending = Vec::new();
    while read_more(&mut stream, &mut pending, lifetime) {
        while let Some(end) = pending.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = pending.drain(..=end).collect();
            if stream.write_all(reply.as_bytes()).is_err() {
                return;
            }
            let bulk = std::str::from_utf8(&line)
                .ok()
                .and_then(|line| line.trim_end().strip_prefix("bulk "))
                .and_then(|n| n.parse::<usize>().ok());
            if let Some(len) = bulk
                && write_bulk(&mut stream, len.min(MAX_BULK)).is_err()
            {
                return;
            }
        }
        if pending.len() > MAX_LINE {
            return;
        }
    }
}

/// A served connection's timeouts: reads wake up every [`POLL`] (to look at the lifetime),
/// writes give up after [`CLIENT_TIMEOUT`].
pub fn server_timeouts(stream: &TcpStream) -> io::Result<()> {
    stream.set_read_timeout(Some(POLL))?;
    stream.set_write_timeout(Some(CLIENT_TIMEOUT))
}

/// Waits for more bytes from the peer (polling `lifetime`) and appends them to `pending`;
/// `false` once the peer closed, the read failed or the lifetime expired.
pub fn read_more(stream: &mut TcpStream, pending: &mut Vec<u8>, lifetime: &Lifetime) -> bool {
    let mut buf = [0u8; MAX_LINE];
    while !lifetime.expired() {
        match stream.read(&mut buf) {
            Ok(0) => return false,
            Ok(n) => {
                pending.extend_from_slice(&buf[..n]);
                return true;
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) => {}
            Err(_) => return false,
        }
    }
    false
}

fn write_bulk(stream: &mut TcpStream, len: usize) -> io::Result<()> {
    let mut chunk = [0u8; 64 * 1024];
    let mut sent = 0;
    while sent < len {
        let n = chunk.len().min(len - sent);
        for (i, byte) in chunk[..n].iter_mut().enumerate() {
            *byte = bulk_byte(sent + i);
        }
        stream.write_all(&chunk[..n])?;
        sent += n;
    }
    Ok(())
}

fn udp_loop(socket: &UdpSocket, reply: &dyn Fn(&[u8]) -> Vec<u8>, lifetime: &Lifetime) {
    let mut buf = [0u8; 2048];
    while !lifetime.expired() {
        let Ok((n, peer)) = socket.recv_from(&mut buf) else {
            continue;
        };
        let _ = socket.send_to(&reply(&buf[..n]), peer);
    }
}

/// A TCP connection from `from` (address and port, bound explicitly so that every connection of
/// a test has a known, distinct source port) to `to`, with [`CLIENT_TIMEOUT`]s.
pub fn connect(from: SocketAddr, to: SocketAddr) -> io::Result<TcpStream> {
    let socket = Socket::new(Domain::for_address(to), Type::STREAM, Some(Protocol::TCP))?;
    socket.bind(&from.into())?;
    socket.connect_timeout(&to.into(), CLIENT_TIMEOUT)?;
    let stream: TcpStream = socket.into();
    stream.set_read_timeout(Some(CLIENT_TIMEOUT))?;
    stream.set_write_timeout(Some(CLIENT_TIMEOUT))?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// Sends one request line and returns the answer (the server's name).
pub fn ask(stream: &mut TcpStream) -> io::Result<String> {
    stream.write_all(b"who\n")?;
    read_line(stream)
}

/// Reads the answer line byte by byte (nothing after it is consumed).
fn read_line(stream: &mut TcpStream) -> io::Result<String> {
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    while byte[0] != b'\n' {
        if stream.read(&mut byte)? == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "server closed before answering",
            ));
        }
        line.push(byte[0]);
        if line.len() > MAX_LINE {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "reply too long"));
        }
    }
    Ok(String::from_utf8_lossy(&line).trim_end().to_owned())
}

/// Asks for `len` bytes of bulk data, checks every byte, and returns the server's name.
pub fn bulk(stream: &mut TcpStream, len: usize) -> io::Result<String> {
    stream.write_all(format!("bulk {len}\n").as_bytes())?;
    let name = read_line(stream)?;
    let mut buf = vec![0u8; 64 * 1024];
    let mut received = 0;
    while received < len {
        let n = buf.len().min(len - received);
        stream.read_exact(&mut buf[..n])?;
        if let Some(i) = (0..n).find(|&i| buf[i] != bulk_byte(received + i)) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("bulk byte {} from {name} is wrong", received + i),
            ));
        }
        received += n;
    }
    Ok(name)
}

/// A connected UDP socket from `from` to `to`: the kernel delivers only datagrams whose source
/// is exactly `to`.
pub fn udp_connect(from: SocketAddr, to: SocketAddr) -> io::Result<UdpSocket> {
    let socket = UdpSocket::bind(from)?;
    socket.connect(to)?;
    socket.set_read_timeout(Some(CLIENT_TIMEOUT))?;
    Ok(socket)
}

/// Sends `payload` and returns the reply's server name, checking that the payload came back.
pub fn udp_ask(socket: &UdpSocket, payload: &str) -> io::Result<String> {
    socket.send(payload.as_bytes())?;
    let mut buf = [0u8; 2048];
    let n = socket.recv(&mut buf)?;
    let text = String::from_utf8_lossy(&buf[..n]);
    match text.split_once(' ') {
        Some((name, echoed)) if echoed == payload => Ok(name.to_owned()),
        _ => Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("unexpected reply {text:?} to {payload:?}"),
        )),
    }
}
