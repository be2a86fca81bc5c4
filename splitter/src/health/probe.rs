//! One active check of one backend, from the daemon's own network namespace: a TCP connect,
//! or a minimal HTTP/1.0 GET whose status line is compared with `expect`. Both are bounded by
//! the check's `timeout`.

use std::net::SocketAddr;

use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::TcpStream,
};

use crate::config::health::{CheckKind, HealthCheck};

/// The longest status line read (a longer one is a failure).
const STATUS_LINE_MAX: usize = 1024;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ProbeError {
    #[error("no answer within {0:?}")]
    Timeout(std::time::Duration),
    #[error("connect: {0}")]
    Connect(String),
    #[error("http: {0}")]
    Io(String),
    #[error("http: not an HTTP status line: {0:?}")]
    StatusLine(String),
    #[error("http: status {got}, expected {expected}")]
    Status { got: u16, expected: u16 },
}

/// Checks `target` once.
pub async fn probe(check: &HealthCheck, target: SocketAddr) -> Result<(), ProbeError> {
    tokio::time::timeout(check.timeout, probe_unbounded(check, target))
        .await
        .map_err(|_| ProbeError::Timeout(check.timeout))?
}

async fn probe_unbounded(check: &HealthCheck, target: SocketAddr) -> Result<(), ProbeError> {
    let mut stream = TcpStream::connect(target)
        .await
        .map_err(|error| ProbeError::Connect(error.to_string()))?;
    if check.kind == CheckKind::Tcp {
        return Ok(());
    }
    let host = match target {
        SocketAddr::V4(v4) => v4.ip().to_string(),
        SocketAddr::V6(v6) => format!("[{}]", v6.ip()),
    };
    let request = format!(
        "GET {} HTTP/1.0\r\nHost: {host}\r\nUser-Agent: splitter-health\r\nConnection: close\r\n\r\n",
        check.path
    );
    let io = |error: std::io::Error| ProbeError::Io(error.to_string());
    stream.write_all(request.as_bytes()).await.map_err(io)?;
    let mut head = Vec::with_capacity(256);
    let mut buf = [0u8; 256];
    while !head.contains(&b'\n') && head.len() < STATUS_LINE_MAX {
        let read = stream.read(&mut buf).await.map_err(io)?;
        if read == 0 {
            break;
        }
        head.extend_from_slice(&buf[..read]);
    }
    let line = head.split(|b| *b == b'\n').next().unwrap_or_default();
    let line = String::from_utf8_lossy(line).trim_end().to_owned();
    let got = status_code(&line).ok_or_else(|| ProbeError::StatusLine(line.clone()))?;
    if got == check.expect {
        Ok(())
    } else {
        Err(ProbeError::Status {
            got,
            expected: check.expect,
        })
    }
}

/// `HTTP/1.1 200 OK` → 200.
fn status_code(line: &str) -> Option<u16> {
    let mut parts = line.split(' ');
    let version = parts.next()?;
    if !version.starts_with("HTTP/") {
        return None;
    }
    let code = parts.next()?;
    if code.len() != 3 {
        return None;
    }
    code.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_lines() {
        assert_eq!(status_code("HTTP/1.1 200 OK"), Some(200));
        assert_eq!(status_code("HTTP/1.0 503 Service Unavailable"), Some(503));
        assert_eq!(status_code("HTTP/1.1 204"), Some(204));
        assert_eq!(status_code("SSH-2.0-OpenSSH"), None);
        assert_eq!(status_code("HTTP/1.1 20 OK"), None);
        assert_eq!(status_code(""), None);
    }
}
