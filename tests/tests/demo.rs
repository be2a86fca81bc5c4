//! The demo (`cargo xtask demo --fast`) as a newcomer runs it: the real `splitter-demo` binary
//! as a subprocess, its `SUMMARY {json}` line parsed and held to what the demo promises (no
//! failed request but on the deliberately bad green, the automatic rollback, long-lived
//! connections through the switches), and nothing left behind, also after Ctrl-C.

use std::{
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    thread::JoinHandle,
    time::{Duration, Instant},
};

use serde_json::Value;
use splitter_tests::{
    daemon_harness::splitter_binary,
    demo::{SUMMARY_PREFIX, lab::leftovers},
    require_privileges,
};

const DEMO: &str = env!("CARGO_BIN_EXE_splitter-demo");
/// The most a `--fast` run may take, whatever happens (it takes about 20-30 s here).
const LIMIT: Duration = Duration::from_secs(120);

/// A running demo, SIGKILLed (by PID) on drop if it is still running; its output collected.
struct Demo {
    child: Child,
    stdout: Arc<Mutex<String>>,
    stderr: Arc<Mutex<String>>,
    readers: Vec<JoinHandle<()>>,
}

impl Demo {
    fn start(args: &[&str]) -> Self {
        let mut child = Command::new(DEMO)
            .args(args)
            .env("SPLITTER_BIN", splitter_binary())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start splitter-demo");
        let stdout = Arc::new(Mutex::new(String::new()));
        let stderr = Arc::new(Mutex::new(String::new()));
        let readers = vec![
            collect(child.stdout.take().unwrap(), stdout.clone()),
            collect(child.stderr.take().unwrap(), stderr.clone()),
        ];
        Self {
            child,
            stdout,
            stderr,
            readers,
        }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn stdout(&self) -> String {
        self.stdout.lock().unwrap().clone()
    }

    /// Waits until the output contains `text`.
    fn wait_for_output(&self, text: &str, limit: Duration) {
        let deadline = Instant::now() + limit;
        while !self.stdout().contains(text) {
            assert!(
                Instant::now() < deadline,
                "the demo did not print {text:?} within {limit:?}:\n{}\n{}",
                self.stdout(),
                self.stderr.lock().unwrap()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits for the exit (at most `LIMIT`): exit code, stdout, stderr.
    fn wait(mut self) -> (i32, String, String) {
        let deadline = Instant::now() + LIMIT;
        let status = loop {
            if let Some(status) = self.child.try_wait().expect("wait for the demo") {
                break status;
            }
            assert!(
                Instant::now() < deadline,
                "the demo did not finish within {LIMIT:?}:\n{}",
                self.stdout()
            );
            std::thread::sleep(Duration::from_millis(100));
        };
        for reader in self.readers.drain(..) {
            let _ = reader.join();
        }
        let stderr = self.stderr.lock().unwrap().clone();
        (status.code().unwrap_or(-1), self.stdout(), stderr)
    }
}

/// Appends what `pipe` delivers to `sink` until it closes.
fn collect(
    mut pipe: impl std::io::Read + Send + 'static,
    sink: Arc<Mutex<String>>,
) -> JoinHandle<()> {
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = pipe.read(&mut buf) {
            if n == 0 {
                break;
            }
            sink.lock()
                .unwrap()
                .push_str(&String::from_utf8_lossy(&buf[..n]));
        }
    })
}

impl Drop for Demo {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            // SAFETY: a signal to our own child, by PID.
            unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGKILL) };
            let _ = self.child.wait();
        }
    }
}

/// The `SUMMARY {json}` line.
fn summary(stdout: &str) -> Value {
    let line = stdout
        .lines()
        .find_map(|line| line.strip_prefix(SUMMARY_PREFIX))
        .unwrap_or_else(|| panic!("no {SUMMARY_PREFIX}line in:\n{stdout}"));
    serde_json::from_str(line).expect("summary JSON")
}

fn phases<'a>(summary: &'a Value, name_prefix: &str) -> Vec<&'a Value> {
    summary["phases"]
        .as_array()
        .expect("phases")
        .iter()
        .filter(|p| p["name"].as_str().unwrap().starts_with(name_prefix))
        .collect()
}

fn share(phase: &Value) -> f64 {
    phase["green_share"].as_f64().unwrap_or(f64::NAN)
}

/// Nothing named after the demo's PID is left: namespaces, links, mounts, the work directory
/// with its bpffs and pins, the daemon.
fn assert_nothing_left(pid: u32, summary: &Value) {
    let daemon = summary["daemon_pid"].as_u64().map(|p| p as u32);
    assert!(daemon.is_some(), "the summary names the daemon's PID");
    let left = leftovers(pid, daemon);
    assert!(left.is_empty(), "left behind by demo {pid}: {left:?}");
    assert_eq!(
        summary["left_behind"],
        Value::Array(vec![]),
        "the demo's own check"
    );
}

#[test]
fn demo_fast_shows_every_step_and_leaves_nothing_behind() {
    if !require_privileges("demo_fast_shows_every_step_and_leaves_nothing_behind") {
        return;
    }
    let started = Instant::now();
    let demo = Demo::start(&["--fast"]);
    let pid = demo.pid();
    let (code, stdout, stderr) = demo.wait();
    let elapsed = started.elapsed();
    eprintln!("splitter-demo --fast took {elapsed:?}");
    let summary = summary(&stdout);
    let context = format!("{stdout}\n{stderr}");
    assert_eq!(
        code, 0,
        "exit 0 when everything went as promised: {}\n{context}",
        summary["problems"]
    );
    // Healthy steps: not one failed request, new or long-lived.
    assert_eq!(summary["failed_healthy"], 0, "{context}");
    for phase in summary["phases"].as_array().unwrap() {
        if phase["bad_green"] == false {
            assert_eq!(
                phase["failed"], 0,
                "no failed request in `{}`: {}",
                phase["name"], phase["errors"]
            );
        }
        assert!(
            phase["new_connections"].as_u64().unwrap() > 0,
            "the client kept opening connections in `{}`",
            phase["name"]
        );
    }
    // Step 1: all on blue.
    let blue = phases(&summary, "all on blue");
    assert_eq!(blue.len(), 1);
    assert_eq!(blue[0]["green"], 0, "{}", blue[0]);
    // Step 2: the canary walked 1 → 10 → 50 → 100 %, green measured at every step.
    let canary = phases(&summary, "canary ");
    let weights: Vec<f64> = canary
        .iter()
        .map(|p| p["weight_percent"].as_f64().unwrap())
        .collect();
    assert_eq!(weights, [1.0, 10.0, 50.0, 100.0], "{}", summary["phases"]);
    for phase in &canary {
        assert!(
            phase["kernel_new_flows"]["green"].as_u64().unwrap() > 0,
            "green got new flows at {}%: {phase}",
            phase["weight_percent"]
        );
    }
    assert!(share(canary[3]) > 0.9, "{}", canary[3]);
    assert_eq!(
        summary["canary"]["phase"], "completed",
        "{}",
        summary["canary"]
    );
    // Step 3: the switches moved new connections, not established ones.
    let to_blue = phases(&summary, "switched to blue");
    let to_green = phases(&summary, "switched to green");
    assert!(share(to_blue[0]) < 0.1, "{}", to_blue[0]);
    assert!(share(to_green[0]) > 0.9, "{}", to_green[0]);
    let long_lived = &summary["long_lived"];
    assert_eq!(long_lived["connections"], 8, "{long_lived}");
    assert_eq!(long_lived["intact"], 8, "{long_lived}");
    assert_eq!(
        long_lived["through_switches"], 8,
        "every long-lived connection survived both switches: {long_lived}"
    );
    assert_eq!(long_lived["failed"], 0, "{long_lived}");
    assert_eq!(long_lived["moved"], 0, "{long_lived}");
    // Step 4: the bad green hurt a few requests and was rolled back by the analysis.
    let bad = phases(&summary, "bad canary");
    assert!(!bad.is_empty() && bad.iter().all(|p| p["bad_green"] == true));
    let bad_failed: u64 = bad.iter().map(|p| p["failed"].as_u64().unwrap()).sum();
    assert!(bad_failed > 0, "the bad green's resets reached the client");
    assert_eq!(summary["rolled_back"], true, "{}", summary["rollback"]);
    let rollback = &summary["rollback"];
    assert_eq!(rollback["phase"], "aborted", "{rollback}");
    assert_eq!(rollback["green_weight_percent"], 0.0, "{rollback}");
    assert_eq!(
        rollback["actions"].as_array().unwrap().last().unwrap(),
        "abort",
        "{rollback}"
    );
    assert!(
        rollback["reason"]
            .as_str()
            .unwrap()
            .contains("green failure ratio"),
        "{rollback}"
    );
    let after = phases(&summary, "after the rollback");
    assert_eq!(after[0]["green"], 0, "blue serves everything: {}", after[0]);
    assert_eq!(summary["failed"], bad_failed, "{context}");
    // Narration, commands and tables, readable without a terminal: no escape sequences.
    for text in [
        "== Step 1/4",
        "== Step 2/4",
        "== Step 3/4",
        "== Step 4/4",
        "$ splitter rollout start web --steps 1,10,50,100",
        "$ splitter switch web blue",
        "$ splitter status",
        "measured (kernel)",
        "aborted (rolled back)",
        "$ splitter unload",
        "everything went as promised",
    ] {
        assert!(stdout.contains(text), "{text:?} in the output:\n{stdout}");
    }
    assert!(
        !stdout.contains('\x1b'),
        "no escape sequences when stdout is not a terminal"
    );
    assert_nothing_left(pid, &summary);
    assert!(
        summary["seconds"].as_f64().unwrap() < 90.0,
        "--fast stays short: {}s",
        summary["seconds"]
    );
}

#[test]
fn ctrl_c_tears_the_demo_down() {
    if !require_privileges("ctrl_c_tears_the_demo_down") {
        return;
    }
    let demo = Demo::start(&["--fast"]);
    let pid = demo.pid();
    // In the middle of the canary: daemon, backends, client and a rollout all running.
    demo.wait_for_output("$ splitter rollout start", Duration::from_secs(60));
    std::thread::sleep(Duration::from_millis(500));
    // SAFETY: a signal to our own child, by PID.
    assert_eq!(unsafe { libc::kill(pid as libc::pid_t, libc::SIGINT) }, 0);
    let (code, stdout, stderr) = demo.wait();
    assert_eq!(code, 130, "exit 130 after Ctrl-C:\n{stdout}\n{stderr}");
    assert!(stdout.contains("Interrupted: cleaning up"), "{stdout}");
    let summary = summary(&stdout);
    assert_eq!(summary["interrupted"], true);
    assert_nothing_left(pid, &summary);
}

#[test]
fn bad_arguments_are_refused() {
    let out = Command::new(DEMO)
        .arg("--slow")
        .output()
        .expect("run splitter-demo");
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("unknown argument `--slow`") && stderr.contains("--fast"),
        "{stderr}"
    );
    let help = Command::new(DEMO).arg("--help").output().unwrap();
    assert_eq!(help.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&help.stdout).contains("--keep"));
}
