//! The connection tests: nginx (Debian's) on both backends, wrk in the generator's namespace,
//! through whichever alternative the router runs. Two modes: a new TCP connection per request
//! (`Connection: close`, the connection rate) and keep-alive (the request rate).

use std::{
    io::{Read as _, Write as _},
    net::{Ipv4Addr, SocketAddr, TcpStream},
    time::{Duration, Instant},
};

use anyhow::Context as _;
use splitter_bench_common::compare::SINK_TCP_PORT;

use super::process::{Process, ScratchDir};
use crate::netns::Netns;

/// One nginx process (no master: the PID we hold is the server), removed on drop.
pub struct Nginx {
    _process: Process,
    _dir: ScratchDir,
}

fn nginx_config(dir: &std::path::Path, addr: Ipv4Addr, body: &str) -> String {
    let dir = dir.display();
    format!(
        "daemon off;\n\
         master_process off;\n\
         pid {dir}/nginx.pid;\n\
         error_log {dir}/error.log warn;\n\
         worker_rlimit_nofile 65536;\n\
         events {{ worker_connections 16384; }}\n\
         http {{\n\
         \taccess_log off;\n\
         \tclient_body_temp_path {dir}/body;\n\
         \tproxy_temp_path {dir}/proxy;\n\
         \tfastcgi_temp_path {dir}/fastcgi;\n\
         \tuwsgi_temp_path {dir}/uwsgi;\n\
         \tscgi_temp_path {dir}/scgi;\n\
         \tkeepalive_requests 10000000;\n\
         \tkeepalive_timeout 60s;\n\
         \tserver {{\n\
         \t\tlisten {addr}:{SINK_TCP_PORT} backlog=8192;\n\
         \t\tlocation / {{ return 200 \"{body}\\n\"; }}\n\
         \t}}\n\
         }}\n"
    )
}

impl Nginx {
    /// Starts nginx in `ns` on `addr`:80, answering every request with `body`.
    pub fn start(ns: &Netns, addr: Ipv4Addr, body: &str) -> anyhow::Result<Self> {
        let dir = ScratchDir::new(&format!("splcmp-nginx-{body}-{}", std::process::id()))?;
        let conf = dir.path.join("nginx.conf");
        std::fs::write(&conf, nginx_config(&dir.path, addr, body))?;
        let log = dir.path.join("error.log");
        let mut process = Process::spawn(
            "nginx",
            ns.command("nginx")
                .arg("-p")
                .arg(&dir.path)
                .arg("-e")
                .arg(&log)
                .arg("-c")
                .arg(&conf),
            &dir.path.join("stderr.log"),
        )?;
        let started = process
            .ensure_running()
            .and_then(|()| wait_for_listener(ns, addr, SINK_TCP_PORT, Duration::from_secs(5)));
        if let Err(e) = started {
            let output = std::fs::read_to_string(&log).unwrap_or_default()
                + &std::fs::read_to_string(dir.path.join("stderr.log")).unwrap_or_default();
            anyhow::bail!("nginx in {} did not start: {e}\n{output}", ns.name);
        }
        Ok(Self {
            _process: process,
            _dir: dir,
        })
    }
}

/// Waits until something accepts TCP connections on `addr:port`, connecting from inside `ns`.
pub fn wait_for_listener(
    ns: &Netns,
    addr: Ipv4Addr,
    port: u16,
    timeout: Duration,
) -> anyhow::Result<()> {
    let target = SocketAddr::new(addr.into(), port);
    ns.run(move || {
        let deadline = Instant::now() + timeout;
        loop {
            match TcpStream::connect_timeout(&target, Duration::from_millis(200)) {
                Ok(_) => return Ok(()),
                Err(e) if Instant::now() > deadline => {
                    anyhow::bail!("nothing listens on {target} after {timeout:?}: {e}")
                }
                Err(_) => std::thread::sleep(Duration::from_millis(20)),
            }
        }
    })
}

/// One plain HTTP/1.1 request from `ns`; returns the response body.
pub fn get(ns: &Netns, addr: Ipv4Addr) -> anyhow::Result<String> {
    let target = SocketAddr::new(addr.into(), SINK_TCP_PORT);
    ns.run(move || {
        let mut stream = TcpStream::connect_timeout(&target, Duration::from_secs(2))
            .with_context(|| format!("connecting to {target}"))?;
        stream.set_read_timeout(Some(Duration::from_secs(2)))?;
        stream.write_all(b"GET / HTTP/1.1\r\nHost: splitter\r\nConnection: close\r\n\r\n")?;
        let mut response = String::new();
        stream.read_to_string(&mut response)?;
        anyhow::ensure!(
            response.starts_with("HTTP/1.1 200"),
            "{target} answered {response:?}"
        );
        Ok(response
            .split("\r\n\r\n")
            .nth(1)
            .unwrap_or_default()
            .trim()
            .to_owned())
    })
}

/// What wrk measured.
#[derive(Clone, Copy, Debug)]
pub struct WrkResult {
    pub requests_per_second: f64,
    pub p50_us: f64,
    pub p99_us: f64,
    pub requests: u64,
    /// Socket errors and non-2xx answers.
    pub errors: u64,
}

/// How wrk loads the service.
#[derive(Clone, Copy, Debug)]
pub struct Load {
    /// A new connection per request (`Connection: close`).
    pub close: bool,
    pub connections: u32,
    pub threads: u32,
    pub duration: Duration,
}

/// Runs wrk from `ns` against `addr`:80.
pub fn wrk(ns: &Netns, addr: Ipv4Addr, load: Load) -> anyhow::Result<WrkResult> {
    let url = format!("http://{addr}:{SINK_TCP_PORT}/");
    let mut cmd = ns.command("wrk");
    cmd.args([
        "-t",
        &load.threads.to_string(),
        "-c",
        &load.connections.to_string(),
        "-d",
        // wrk takes whole seconds (units s, m, h).
        &format!("{}s", load.duration.as_secs().max(1)),
        "--timeout",
        "2s",
        "--latency",
    ]);
    if load.close {
        cmd.args(["-H", "Connection: close"]);
    }
    cmd.arg(&url);
    let out = cmd.output().context("running wrk (apt-get install wrk)")?;
    let text = String::from_utf8_lossy(&out.stdout);
    anyhow::ensure!(
        out.status.success(),
        "wrk failed: {text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    parse_wrk(&text).with_context(|| format!("parsing wrk's output:\n{text}"))
}

/// `401.00us`, `1.20ms`, `2.00s` → microseconds.
fn duration_us(text: &str) -> Option<f64> {
    let split = text.find(|c: char| c.is_ascii_alphabetic())?;
    let (number, unit) = text.split_at(split);
    let number: f64 = number.parse().ok()?;
    let scale = match unit {
        "us" => 1.0,
        "ms" => 1e3,
        "s" => 1e6,
        "m" => 60e6,
        _ => return None,
    };
    Some(number * scale)
}

fn parse_wrk(text: &str) -> anyhow::Result<WrkResult> {
    let mut result = WrkResult {
        requests_per_second: f64::NAN,
        p50_us: f64::NAN,
        p99_us: f64::NAN,
        requests: 0,
        errors: 0,
    };
    for line in text.lines().map(str::trim) {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["Requests/sec:", rate] => result.requests_per_second = rate.parse()?,
            ["50%", latency] => result.p50_us = duration_us(latency).context("p50")?,
            ["99%", latency] => result.p99_us = duration_us(latency).context("p99")?,
            [count, "requests", "in", ..] => result.requests = count.parse()?,
            ["Socket", "errors:", rest @ ..] => {
                // connect N, read N, write N, timeout N
                result.errors += rest
                    .iter()
                    .filter_map(|w| w.trim_end_matches(',').parse::<u64>().ok())
                    .sum::<u64>();
            }
            ["Non-2xx", "or", "3xx", "responses:", count] => {
                result.errors += count.parse::<u64>()?
            }
            _ => {}
        }
    }
    anyhow::ensure!(
        result.requests_per_second.is_finite() && result.p99_us.is_finite(),
        "no rate or latency in wrk's output"
    );
    Ok(result)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_wrk_output() {
        let text = "Running 3s test @ http://198.18.100.1:80/
  1 threads and 32 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency   501.23us  100.00us   5.00ms   90.00%
    Req/Sec    60.00k     1.00k   62.00k    80.00%
  Latency Distribution
     50%  480.00us
     75%  520.00us
     90%  600.00us
     99%    1.20ms
  180000 requests in 3.00s, 27.00MB read
  Socket errors: connect 0, read 3, write 0, timeout 1
  Non-2xx or 3xx responses: 2
Requests/sec:  60000.50
Transfer/sec:      9.00MB
";
        let result = parse_wrk(text).unwrap();
        assert_eq!(result.requests_per_second, 60000.5);
        assert_eq!(result.p50_us, 480.0);
        assert_eq!(result.p99_us, 1200.0);
        assert_eq!(result.requests, 180000);
        assert_eq!(result.errors, 6);
    }
}
