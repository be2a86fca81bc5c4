//! Installed like a service: `cargo xtask install` and `cargo xtask deb` put every file in its
//! place, the systemd unit verifies and scores (`systemd-analyze verify`, `security`), the
//! completions source in bash, the man page renders; the daemon runs with exactly the unit's
//! capabilities (and fails without any one of them), logs JSON and logfmt lines with fields,
//! and exports `splitter_build_info` and the rollout families from the start.
//!
//! Run: `cargo test --release -p splitter-tests --test packaging -- --test-threads=1`
//! (needs the Debian packages `systemd`, `groff-base`, `bash-completion`: `cargo xtask setup
//! --test-deps`).

use std::{
    path::{Path, PathBuf},
    process::{Command, Output},
    sync::OnceLock,
};

use splitter_tests::{
    daemon_harness::{BLUE, GREEN, Lab, TCP_PORT, metric, service, splitter_binary},
    require_privileges,
};

/// The highest `systemd-analyze security` exposure the unit may have (0 = locked down, 10 =
/// no sandbox). A root daemon that loads BPF and attaches to interfaces: 2.0 when written.
const MAX_EXPOSURE: f64 = 2.5;

/// Every file `cargo xtask install --prefix DIR` writes, relative to DIR.
const INSTALLED: &[&str] = &[
    "bin/splitter",
    "lib/systemd/system/splitter.service",
    "share/man/man1/splitter.1",
    "share/bash-completion/completions/splitter",
    "share/zsh/vendor-completions/_splitter",
    "share/fish/vendor_completions.d/splitter.fish",
    "share/doc/splitter/splitter.example.toml",
    "share/doc/splitter/README.md",
    "share/doc/splitter/LICENSE-MIT",
    "share/doc/splitter/LICENSE-APACHE",
    "share/splitter/grafana/splitter.json",
];

/// A scratch directory under /tmp, removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new(tag: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("splitter-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create scratch dir");
        Self(dir)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ lives in the workspace")
        .to_path_buf()
}

/// `cargo xtask ARGS --binary <the tests' splitter>`, run from the xtask binary of this
/// build: another `cargo` invocation with another package selection would resolve other
/// features of shared dependencies and rebuild them (and the next test build again).
fn xtask(args: &[&str]) -> Output {
    static XTASK: OnceLock<PathBuf> = OnceLock::new();
    let binary = splitter_binary();
    let xtask = XTASK.get_or_init(|| {
        let xtask = binary.with_file_name("xtask");
        if !xtask.exists() {
            let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
            let status = Command::new(cargo)
                .current_dir(workspace())
                .args(["build", "--release", "--quiet", "-p", "xtask"])
                .status()
                .expect("cargo build -p xtask");
            assert!(status.success(), "building xtask failed");
        }
        xtask
    });
    let out = Command::new(xtask)
        .current_dir(workspace())
        .args(args)
        .arg("--binary")
        .arg(&binary)
        .output()
        .expect("run xtask");
    assert!(
        out.status.success(),
        "cargo xtask {args:?} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// `program ARGS`: its output; panics naming the Debian package when it is missing.
fn run(program: &str, package: &str, args: &[&str], env: &[(&str, &Path)]) -> Output {
    let mut command = Command::new(program);
    command.args(args);
    for (key, value) in env {
        command.env(key, value);
    }
    command.output().unwrap_or_else(|error| {
        panic!("{program}: {error} (install the Debian package `{package}`: `cargo xtask setup --test-deps`)")
    })
}

/// One install per test process, shared by the tests that only read it.
fn installed() -> &'static Path {
    static PREFIX: OnceLock<Scratch> = OnceLock::new();
    &PREFIX
        .get_or_init(|| {
            let scratch = Scratch::new("install");
            let prefix = scratch.0.join("usr");
            xtask(&["install", "--prefix", prefix.to_str().unwrap()]);
            scratch
        })
        .0
}

fn prefix() -> PathBuf {
    installed().join("usr")
}

#[test]
fn install_puts_every_file_in_its_place() {
    let prefix = prefix();
    for relative in INSTALLED {
        let path = prefix.join(relative);
        let size = std::fs::metadata(&path)
            .unwrap_or_else(|error| panic!("{}: {error}", path.display()))
            .len();
        assert!(size > 0, "{} is empty", path.display());
    }
    let unit = std::fs::read_to_string(prefix.join("lib/systemd/system/splitter.service")).unwrap();
    let binary = prefix.join("bin/splitter");
    assert!(
        unit.contains(&format!("ExecStart={} daemon", binary.display())),
        "the installed unit must start the installed binary:\n{unit}"
    );
    let version = run(binary.to_str().unwrap(), "-", &["--version"], &[]);
    let version = String::from_utf8(version.stdout).unwrap();
    assert!(
        version.starts_with(&format!("splitter {} (", env!("CARGO_PKG_VERSION")))
            && version.trim_end().ends_with(')'),
        "`splitter --version` names the version and commit: {version}"
    );
}

#[test]
fn unit_verifies_and_scores() {
    let prefix = prefix();
    let unit = prefix.join("lib/systemd/system/splitter.service");
    let unit = unit.to_str().unwrap();
    // MANPATH: `verify` also checks that the unit's Documentation=man:splitter(1) exists.
    let verify = run(
        "systemd-analyze",
        "systemd",
        &["verify", unit],
        &[("MANPATH", &prefix.join("share/man"))],
    );
    let stderr = String::from_utf8_lossy(&verify.stderr);
    assert!(
        verify.status.success() && stderr.trim().is_empty(),
        "systemd-analyze verify {unit}: {:?}\n{stderr}",
        verify.status
    );
    let security = run(
        "systemd-analyze",
        "systemd",
        &["security", "--offline=true", "--no-pager", unit],
        &[],
    );
    let text = String::from_utf8_lossy(&security.stdout);
    let exposure: f64 = text
        .lines()
        .find_map(|line| {
            let rest = line
                .split("Overall exposure level for splitter.service: ")
                .nth(1)?;
            rest.split_whitespace().next()?.parse().ok()
        })
        .unwrap_or_else(|| panic!("no overall exposure in:\n{text}"));
    eprintln!("systemd-analyze security: exposure {exposure} (max {MAX_EXPOSURE})");
    assert!(
        exposure <= MAX_EXPOSURE,
        "exposure {exposure} > {MAX_EXPOSURE}:\n{text}"
    );
}

#[test]
fn completions_source_in_bash() {
    let script = prefix().join("share/bash-completion/completions/splitter");
    let out = run(
        "bash",
        "bash",
        &[
            "-c",
            &format!("source '{}' && complete -p splitter", script.display()),
        ],
        &[],
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success()
            && stdout.contains("_splitter")
            && stdout.trim_end().ends_with(" splitter"),
        "bash completion not registered: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The completion function answers: `splitter ro<TAB>` offers `rollout`.
    let out = run(
        "bash",
        "bash",
        &[
            "-c",
            &format!(
                "source '{}'; COMP_WORDS=(splitter ro); COMP_CWORD=1; COMP_LINE='splitter ro'; \
                 COMP_POINT=11; _splitter splitter ro splitter; echo \"${{COMPREPLY[@]}}\"",
                script.display()
            ),
        ],
        &[],
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("rollout"), "`splitter ro<TAB>`: {stdout:?}");
    let fish =
        std::fs::read_to_string(prefix().join("share/fish/vendor_completions.d/splitter.fish"))
            .unwrap();
    assert!(fish.contains("complete -c splitter"), "{fish}");
    let zsh =
        std::fs::read_to_string(prefix().join("share/zsh/vendor-completions/_splitter")).unwrap();
    assert!(zsh.starts_with("#compdef splitter"), "{zsh}");
}

#[test]
fn man_page_renders() {
    let page = prefix().join("share/man/man1/splitter.1");
    let out = run(
        "groff",
        "groff-base",
        &["-man", "-Tutf8", "-ww", page.to_str().unwrap()],
        &[],
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stderr.trim().is_empty(),
        "groff: {stderr}"
    );
    // groff emboldens by overstriking: compare the text without it.
    let plain: String = strip_overstrike(&text);
    for expected in [
        "NAME",
        "splitter - Blue/green and canary traffic splitter",
        "SYNOPSIS",
        "daemon",
        "rollout",
        "completions",
        "VERSION",
    ] {
        assert!(
            plain.contains(expected),
            "man page lacks `{expected}`:\n{plain}"
        );
    }
}

/// `a\x08a` (bold) and `_\x08a` (underline) → `a`.
fn strip_overstrike(text: &str) -> String {
    let mut out = String::new();
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if chars.peek() == Some(&'\u{8}') {
            chars.next();
            continue;
        }
        out.push(c);
    }
    out
}

#[test]
fn deb_builds_and_installs_into_a_scratch_root() {
    let out_dir = Scratch::new("deb");
    xtask(&["deb", "--out-dir", out_dir.0.to_str().unwrap()]);
    let deb = std::fs::read_dir(&out_dir.0)
        .unwrap()
        .filter_map(Result::ok)
        .map(|entry| entry.path())
        .find(|path| path.extension().is_some_and(|ext| ext == "deb"))
        .expect("a .deb in the output directory");
    let info = run("dpkg-deb", "dpkg", &["--info", deb.to_str().unwrap()], &[]);
    let info = String::from_utf8_lossy(&info.stdout);
    for field in [
        "Package: splitter",
        &format!("Version: {}", env!("CARGO_PKG_VERSION")),
        "Section: net",
    ] {
        assert!(info.contains(field), "control lacks `{field}`:\n{info}");
    }
    // A scratch dpkg database; maintainer scripts run outside a chroot with DPKG_ROOT set
    // (they touch nothing then).
    let root = Scratch::new("dpkgroot");
    for dir in ["var/lib/dpkg/info", "var/lib/dpkg/updates"] {
        std::fs::create_dir_all(root.0.join(dir)).unwrap();
    }
    std::fs::write(root.0.join("var/lib/dpkg/status"), "").unwrap();
    let root_arg = format!("--root={}", root.0.display());
    let dpkg = |args: &[&str]| {
        let mut all = vec![
            root_arg.as_str(),
            "--force-script-chrootless",
            "--force-depends",
            "--force-not-root",
        ];
        all.extend_from_slice(args);
        let out = run("dpkg", "dpkg", &all, &[]);
        assert!(
            out.status.success(),
            "dpkg {args:?}:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    dpkg(&["--install", deb.to_str().unwrap()]);
    for relative in [
        "usr/bin/splitter",
        "usr/lib/systemd/system/splitter.service",
        "usr/share/man/man1/splitter.1.gz",
        "usr/share/bash-completion/completions/splitter",
        "usr/share/doc/splitter/copyright",
        "usr/share/doc/splitter/splitter.example.toml",
        "usr/share/splitter/grafana/splitter.json",
    ] {
        assert!(
            root.0.join(relative).is_file(),
            "{relative} missing after dpkg --install"
        );
    }
    let unit =
        std::fs::read_to_string(root.0.join("usr/lib/systemd/system/splitter.service")).unwrap();
    assert!(
        unit.contains("ExecStart=/usr/bin/splitter daemon"),
        "the packaged unit starts /usr/bin/splitter:\n{unit}"
    );
    let installed = root.0.join("usr/bin/splitter");
    let version = run(installed.to_str().unwrap(), "-", &["--version"], &[]);
    assert!(version.status.success());
    dpkg(&["--purge", "splitter"]);
    assert!(
        !root.0.join("usr/bin/splitter").exists(),
        "the binary stays after dpkg --purge"
    );
}

/// The unit's `CapabilityBoundingSet=` as setpriv's names (`bpf`, `net_admin`, ...).
fn unit_capabilities() -> Vec<String> {
    let unit = std::fs::read_to_string(workspace().join("packaging/splitter.service")).unwrap();
    let line = unit
        .lines()
        .find_map(|line| line.strip_prefix("CapabilityBoundingSet="))
        .expect("the unit sets CapabilityBoundingSet=");
    line.split_whitespace()
        .map(|cap| {
            cap.strip_prefix("CAP_")
                .expect("CAP_ names")
                .to_ascii_lowercase()
        })
        .collect()
}

fn setpriv(caps: &[String]) -> Vec<String> {
    let bounding = std::iter::once("-all".to_owned())
        .chain(caps.iter().map(|cap| format!("+{cap}")))
        .collect::<Vec<_>>()
        .join(",");
    [
        "setpriv",
        "--bounding-set",
        &bounding,
        "--inh-caps",
        "-all",
        "--",
    ]
    .map(str::to_owned)
    .to_vec()
}

/// The daemon with exactly the unit's capabilities: it loads, attaches, serves, reloads and
/// runs a rollout; its JSON logs are one object per line with fields (no debug dumps); the
/// rollout and build-info families are there from the start. Without any one capability it
/// refuses to start. A restart under the same set adopts the pinned data plane, logging logfmt.
#[test]
fn daemon_with_the_units_capabilities_logs_json_and_logfmt() {
    if !require_privileges("daemon_with_the_units_capabilities_logs_json_and_logfmt") {
        return;
    }
    let caps = unit_capabilities();
    assert_eq!(
        caps,
        ["bpf", "net_admin", "perfmon"],
        "the test knows this set"
    );
    let mut lab = Lab::new("pkg");
    lab.write_config(&service(
        "web",
        "198.18.100.10:80",
        "tcp",
        "0",
        &BLUE,
        &GREEN,
        TCP_PORT,
    ));
    // One capability fewer: the daemon refuses to start (each one is needed).
    for missing in &caps {
        let fewer: Vec<String> = caps.iter().filter(|cap| *cap != missing).cloned().collect();
        let wrapper = setpriv(&fewer);
        let wrapper: Vec<&str> = wrapper.iter().map(String::as_str).collect();
        let mut child = splitter_tests::daemon_harness::spawn_daemon_with(
            &lab.binary,
            &lab.topology.router,
            &lab.work,
            &wrapper,
            &[],
        );
        let status = wait_exit(&mut child);
        assert_eq!(
            status,
            Some(1),
            "without CAP_{} the daemon must fail to start:\n{}",
            missing.to_ascii_uppercase(),
            lab.daemon_log()
        );
        let _ = lab.cli(&["unload", "--config", lab.work.config().to_str().unwrap()]);
    }

    let wrapper = setpriv(&caps);
    let wrapper: Vec<&str> = wrapper.iter().map(String::as_str).collect();
    lab.start_daemon_with(&wrapper, &["--log-format", "json"]);
    let metrics = lab.metrics();
    for series in [
        "splitter_rollout_step{service=\"web\"}",
        "splitter_rollout_decisions_total{service=\"web\",action=\"abort\"}",
        "splitter_rollout_phase{service=\"web\",phase=\"running\"}",
    ] {
        assert_eq!(metric(&metrics, series), Some(0.0), "{series}:\n{metrics}");
    }
    assert_eq!(
        metric(
            &metrics,
            "splitter_rollout_phase{service=\"web\",phase=\"none\"}"
        ),
        Some(1.0)
    );
    assert!(
        metrics.lines().any(|line| line.starts_with(&format!(
            "splitter_build_info{{version=\"{}\",commit=\"",
            env!("CARGO_PKG_VERSION")
        )) && line.ends_with("\"} 1")),
        "splitter_build_info:\n{metrics}"
    );
    lab.cli_ok(&["reload"]);
    lab.cli_ok(&["set-weight", "web", "12.5"]);
    // Green already carries 12.5 %: the rollout continues from there (`--from-current`).
    lab.cli_ok(&[
        "rollout",
        "start",
        "web",
        "--steps",
        "50,100",
        "--every",
        "1h",
        "--from-current",
    ]);
    lab.cli_ok(&["rollout", "abort", "web"]);
    let metrics = lab.metrics();
    for (series, value) in [
        (
            "splitter_rollout_decisions_total{service=\"web\",action=\"start\"}",
            1.0,
        ),
        (
            "splitter_rollout_decisions_total{service=\"web\",action=\"abort\"}",
            1.0,
        ),
        (
            "splitter_rollout_phase{service=\"web\",phase=\"aborted\"}",
            1.0,
        ),
        (
            "splitter_rollout_phase{service=\"web\",phase=\"none\"}",
            0.0,
        ),
        ("splitter_rollout_step{service=\"web\"}", 1.0),
    ] {
        assert_eq!(
            metric(&metrics, series),
            Some(value),
            "{series}:\n{metrics}"
        );
    }
    lab.stop_daemon();

    let log = lab.daemon_log();
    let events: Vec<serde_json::Value> = log
        .lines()
        .map(|line| {
            serde_json::from_str(line)
                .unwrap_or_else(|error| panic!("not one JSON object per line ({error}): {line}"))
        })
        .collect();
    for event in &events {
        for key in ["timestamp", "level", "target"] {
            assert!(event.get(key).is_some(), "no `{key}` in {event}");
        }
        assert!(
            event["fields"]["message"].is_string(),
            "no message in {event}"
        );
    }
    let find = |message: &str| {
        events
            .iter()
            .find(|event| event["fields"]["message"] == message)
            .unwrap_or_else(|| panic!("no `{message}` event in:\n{log}"))
    };
    let applied = &find("configuration applied")["fields"];
    assert_eq!(applied["added"], "web", "{applied}");
    assert_eq!(applied["attached"], "eth0", "{applied}");
    assert_eq!(applied["removed"], "", "{applied}");
    let reloaded = &find("configuration reloaded")["fields"];
    assert_eq!(reloaded["unchanged"], "web", "{reloaded}");
    let weight = &find("green weight set")["fields"];
    assert_eq!(
        (&weight["from"], &weight["to"]),
        (&"0".into(), &"12.5".into())
    );
    assert_eq!(find("serving")["level"], "INFO");
    assert!(
        events
            .iter()
            .any(|event| event["fields"]["message"] == "rollout"
                && event["fields"]["action"] == "abort"),
        "the rollout's abort decision is logged:\n{log}"
    );
    assert!(
        !log.contains("ReloadReport"),
        "a debug dump in the logs:\n{log}"
    );

    // Restart: the pinned data plane is adopted, logs in logfmt.
    lab.start_daemon_with(&wrapper, &["--log-format", "logfmt"]);
    lab.stop_daemon();
    let log = lab.daemon_log();
    for line in log.lines() {
        assert!(
            line.starts_with("ts=") && line.contains(" level=") && line.contains(" msg="),
            "not a logfmt line: {line}"
        );
    }
    for expected in [
        "level=info target=splitter::daemon msg=\"data plane ready\"",
        "origin=adopted",
        "msg=\"configuration applied\" added= changed= removed= unchanged=web attached= detached=",
    ] {
        assert!(log.contains(expected), "no `{expected}` in:\n{log}");
    }
}

/// Waits (bounded) for a daemon that must exit; its exit code.
fn wait_exit(child: &mut std::process::Child) -> Option<i32> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return status.code();
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}
