//! A real Prometheus server (Debian's `prometheus` package) for tests: started inside a
//! test's network namespace with its own config and storage in a temporary directory,
//! scraping a splitter daemon's metrics endpoint every second, queried through its HTTP API.
//! Killed (by PID) and its directory removed on drop.

use std::{
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpStream},
    os::unix::process::CommandExt as _,
    path::PathBuf,
    process::{Child, Stdio},
    time::{Duration, Instant},
};

use serde_json::Value;

use crate::netns::{Netns, enter};

/// Where Prometheus listens inside the namespace.
pub const LISTEN: &str = "127.0.0.1:9090";

/// One sample of an instant query's vector: its labels and value (`NaN` and `±Inf` included).
#[derive(Debug)]
pub struct Sample {
    pub labels: serde_json::Map<String, Value>,
    pub value: f64,
}

/// A running `prometheus` that scrapes `target` (`host:port`, path `/metrics`).
pub struct Prometheus {
    child: Child,
    dir: PathBuf,
    netns: String,
}

impl Prometheus {
    /// Starts `prometheus` in `ns`, scraping `target` every second, and waits (at most 30 s)
    /// until it answers `/-/ready`.
    pub fn start(ns: &Netns, target: &str) -> Self {
        let dir = PathBuf::from(format!("/run/splitter-test/prometheus-{}", ns.name));
        let _ = std::fs::remove_dir_all(&dir); // leftovers of a crashed run
        std::fs::create_dir_all(dir.join("data")).expect("create the Prometheus directory");
        let config = dir.join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n\
                 scrape_configs:\n  - job_name: splitter\n    static_configs:\n      - targets: [\"{target}\"]\n"
            ),
        )
        .expect("write prometheus.yml");
        let log = std::fs::File::create(dir.join("prometheus.log")).expect("Prometheus log");
        let mut command = ns.command("prometheus");
        command
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address={LISTEN}"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log handle"))
            .stderr(log);
        // SAFETY: prctl is async-signal-safe.
        unsafe {
            command.pre_exec(|| {
                // Dies with the test thread that started it, even if the test is killed.
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let child = command.spawn().unwrap_or_else(|error| {
            panic!("starting `prometheus` failed ({error}): install it with `cargo xtask setup --test-deps` (Debian package prometheus)")
        });
        let mut prometheus = Self {
            child,
            dir,
            netns: ns.name.clone(),
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(Some(status)) = prometheus.child.try_wait() {
                panic!("prometheus exited with {status}:\n{}", prometheus.log());
            }
            if matches!(prometheus.get("/-/ready"), Ok((200, _))) {
                return prometheus;
            }
            assert!(
                Instant::now() < deadline,
                "prometheus was not ready within 30 s:\n{}",
                prometheus.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("prometheus.log")).unwrap_or_default()
    }

    /// `GET path` (already encoded) from inside the namespace: status code and body.
    fn get(&self, path: &str) -> std::io::Result<(u16, String)> {
        let request = format!("GET {path} HTTP/1.0\r\nHost: {LISTEN}\r\n\r\n");
        let netns = format!("/run/netns/{}", self.netns);
        std::thread::spawn(move || {
            enter(&netns);
            let address: SocketAddr = LISTEN.parse().expect("listen address");
            let mut stream = TcpStream::connect_timeout(&address, Duration::from_secs(2))?;
            stream.set_read_timeout(Some(Duration::from_secs(10)))?;
            stream.write_all(request.as_bytes())?;
            let mut response = String::new();
            stream.read_to_string(&mut response)?;
            let (head, body) = response
                .split_once("\r\n\r\n")
                .ok_or_else(|| std::io::Error::other("no HTTP head"))?;
            let code = head
                .split(' ')
                .nth(1)
                .and_then(|code| code.parse().ok())
                .ok_or_else(|| std::io::Error::other(format!("bad status line: {head}")))?;
            Ok((code, body.to_owned()))
        })
        .join()
        .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    }

    /// An API call: its `data`, or a panic with Prometheus' error.
    fn api(&self, path: &str) -> Value {
        let (code, body) = self
            .get(path)
            .unwrap_or_else(|error| panic!("GET {path} from prometheus: {error}"));
        let json: Value = serde_json::from_str(&body)
            .unwrap_or_else(|error| panic!("GET {path}: {error}: {body}"));
        assert!(
            code == 200 && json["status"] == "success",
            "GET {path}: {code} {body}"
        );
        json["data"].clone()
    }

    /// An instant query's vector (a scalar comes back as one sample without labels).
    pub fn query(&self, expr: &str) -> Vec<Sample> {
        let data = self.api(&format!("/api/v1/query?query={}", encode(expr)));
        let value = |pair: &Value| -> f64 {
            let text = pair[1].as_str().expect("a sample value is a string");
            match text {
                "NaN" => f64::NAN,
                "+Inf" => f64::INFINITY,
                "-Inf" => f64::NEG_INFINITY,
                _ => text.parse().expect("a number"),
            }
        };
        match data["resultType"].as_str() {
            Some("vector") => data["result"]
                .as_array()
                .expect("a vector")
                .iter()
                .map(|sample| Sample {
                    labels: sample["metric"].as_object().cloned().unwrap_or_default(),
                    value: value(&sample["value"]),
                })
                .collect(),
            Some("scalar") => vec![Sample {
                labels: serde_json::Map::new(),
                value: value(&data["result"]),
            }],
            other => panic!("`{expr}`: unexpected result type {other:?}: {data}"),
        }
    }

    /// `label_values(match, label)`: the values of `label` on the series `match` selects.
    pub fn label_values(&self, label: &str, selector: &str) -> Vec<String> {
        let data = self.api(&format!(
            "/api/v1/label/{label}/values?match[]={}",
            encode(selector)
        ));
        data.as_array()
            .expect("label values")
            .iter()
            .map(|value| value.as_str().expect("a label value").to_owned())
            .collect()
    }

    /// Successful scrapes of the target in the last 5 minutes.
    pub fn scrapes(&self) -> f64 {
        // `up` is 1 for each successful scrape, 0 for a failed one.
        let samples = self.query("sum(sum_over_time(up{job=\"splitter\"}[5m]))");
        samples.first().map_or(0.0, |sample| sample.value)
    }

    /// Waits (at most `limit`) until Prometheus has scraped the target successfully `count`
    /// times.
    pub fn wait_for_scrapes(&self, count: f64, limit: Duration) {
        let deadline = Instant::now() + limit;
        loop {
            if self.scrapes() >= count {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "prometheus did not scrape the daemon {count} times within {limit:?} \
                 (up: {:?}):\n{}",
                self.query("up"),
                self.log()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            // SAFETY: a signal to our own child, by PID.
            unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGKILL) };
            let _ = self.child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Percent-encodes a query parameter (everything but unreserved characters).
fn encode(text: &str) -> String {
    text.bytes()
        .map(|byte| match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                char::from(byte).to_string()
            }
            _ => format!("%{byte:02X}"),
        })
        .collect()
}
