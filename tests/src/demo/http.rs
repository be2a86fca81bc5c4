//! The demo's web service, both ends: a small HTTP/1.1 backend (keep-alive, one thread per
//! connection, on the accept loop of [`crate::servers`]) that answers `GET` with its release
//! and instance, e.g. `v1 blue-0`, or a broken release that resets every connection; and the
//! client's requests.

use std::{
    io::{self, BufRead as _, BufReader, Read as _, Write as _},
    net::{SocketAddr, TcpStream},
    time::Duration,
};

use splitter::config::ColorName;

use crate::servers::{self, CLIENT_TIMEOUT, Lifetime};

/// The largest request head or response body accepted.
const MAX_MESSAGE: usize = 8192;

/// What a backend instance runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Release {
    /// Answers every request with `<version> <instance>`.
    Healthy(&'static str),
    /// Accepts every connection and resets it at once (SO_LINGER 0): a release that crashes
    /// on every request.
    Resetting(&'static str),
}

impl Release {
    pub fn version(self) -> &'static str {
        match self {
            Release::Healthy(version) | Release::Resetting(version) => version,
        }
    }
}

/// Serves one accepted connection as `instance` (e.g. `blue-0`) running `release`.
pub fn serve(mut stream: TcpStream, release: Release, instance: &str, lifetime: &Lifetime) {
    if let Release::Resetting(_) = release {
        // Closing with a zero linger time sends a RST instead of a FIN.
        let _ = socket2::SockRef::from(&stream).set_linger(Some(Duration::ZERO));
        return;
    }
    if servers::server_timeouts(&stream).is_err() {
        return;
    }
    let body = format!("{} {instance}\n", release.version());
    let mut pending = Vec::new();
    while servers::read_more(&mut stream, &mut pending, lifetime) {
        while let Some(end) = pending.windows(4).position(|w| w == b"\r\n\r\n") {
            let head: Vec<u8> = pending.drain(..end + 4).collect();
            let head = String::from_utf8_lossy(&head).to_ascii_lowercase();
            let close = head
                .lines()
                .any(|line| line.starts_with("connection:") && line.contains("close"));
            let response = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n{}\r\n{body}",
                body.len(),
                if close { "Connection: close\r\n" } else { "" },
            );
            if stream.write_all(response.as_bytes()).is_err() || close {
                return;
            }
        }
        if pending.len() > MAX_MESSAGE {
            return;
        }
    }
}

/// A client connection to the service.
pub struct Connection {
    reader: BufReader<TcpStream>,
}

impl Connection {
    /// A connection from a port the kernel picks.
    pub fn open(vip: SocketAddr) -> io::Result<Self> {
        let stream = TcpStream::connect_timeout(&vip, CLIENT_TIMEOUT)?;
        stream.set_read_timeout(Some(CLIENT_TIMEOUT))?;
        stream.set_write_timeout(Some(CLIENT_TIMEOUT))?;
        stream.set_nodelay(true)?;
        Ok(Self {
            reader: BufReader::new(stream),
        })
    }

    /// A connection from `from` (address and port).
    pub fn open_from(from: SocketAddr, vip: SocketAddr) -> io::Result<Self> {
        Ok(Self {
            reader: BufReader::new(servers::connect(from, vip)?),
        })
    }

    /// `GET /`: the body of a 200 answer, trimmed (`v1 blue-0`). `close` asks the backend to
    /// close the connection after answering.
    pub fn get(&mut self, close: bool) -> io::Result<String> {
        let request = format!(
            "GET / HTTP/1.1\r\nHost: web\r\nUser-Agent: splitter-demo\r\n{}\r\n",
            if close { "Connection: close\r\n" } else { "" }
        );
        self.reader.get_mut().write_all(request.as_bytes())?;
        let mut status = String::new();
        if self.reader.read_line(&mut status)? == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "closed before answering",
            ));
        }
        if !status.starts_with("HTTP/1.1 200") {
            return Err(io::Error::other(format!("answered {}", status.trim_end())));
        }
        let mut length = None;
        loop {
            let mut line = String::new();
            if self.reader.read_line(&mut line)? == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "closed in the headers",
                ));
            }
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            if let Some((name, value)) = line.split_once(':')
                && name.eq_ignore_ascii_case("content-length")
            {
                length = value.trim().parse::<usize>().ok();
            }
        }
        let length = length
            .filter(|&n| n <= MAX_MESSAGE)
            .ok_or_else(|| io::Error::other("no usable Content-Length"))?;
        let mut body = vec![0u8; length];
        self.reader.read_exact(&mut body)?;
        Ok(String::from_utf8_lossy(&body).trim().to_owned())
    }
}

/// One request on a new connection from `from`: the answer (`v1 blue-0`) or what failed.
pub fn get_once(from: SocketAddr, vip: SocketAddr) -> Result<String, String> {
    Connection::open_from(from, vip)
        .and_then(|mut connection| connection.get(true))
        .map_err(|e| e.to_string())
}

/// The color of an answer `v1 blue-0` (blue), if it is one.
pub fn color_of(answer: &str) -> Option<ColorName> {
    let instance = answer.split_whitespace().nth(1)?;
    ColorName::BOTH
        .into_iter()
        .find(|color| instance.starts_with(&format!("{}-", color.name())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_name_their_color() {
        assert_eq!(color_of("v1 blue-0"), Some(ColorName::Blue));
        assert_eq!(color_of("v2 green-1"), Some(ColorName::Green));
        assert_eq!(color_of("v2 greenish-1"), None);
        assert_eq!(color_of("blue-0"), None);
        assert_eq!(color_of(""), None);
    }
}
