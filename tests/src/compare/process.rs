//! Processes the comparison starts (nginx, HAProxy): stopped by their own PID on drop, first
//! politely, then for good.

use std::{
    os::unix::process::CommandExt as _,
    process::{Child, Command, Stdio},
    sync::Mutex,
    time::{Duration, Instant},
};

use anyhow::Context as _;

/// A child process, terminated (SIGTERM, then SIGKILL after a grace period) on drop.
pub struct Process {
    name: String,
    child: Child,
}

impl Process {
    /// Starts `cmd` with its output going to `log`.
    pub fn spawn(name: &str, cmd: &mut Command, log: &std::path::Path) -> anyhow::Result<Self> {
        let out =
            std::fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
        // The child inherits the signal mask: unblock what `clean_up_on_signal` blocked, or it
        // would ignore the SIGTERM that stops it.
        unsafe {
            cmd.pre_exec(|| {
                let mut set: libc::sigset_t = std::mem::zeroed();
                libc::sigemptyset(&mut set);
                libc::pthread_sigmask(libc::SIG_SETMASK, &set, std::ptr::null_mut());
                Ok(())
            })
        };
        let child = cmd
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
            .with_context(|| format!("starting {name}: {cmd:?}"))?;
        CHILDREN.lock().expect("children").push(child.id());
        Ok(Self {
            name: name.to_owned(),
            child,
        })
    }

    /// Fails if the process has already exited (a bad config, a port in use).
    pub fn ensure_running(&mut self) -> anyhow::Result<()> {
        // Give a process that refuses its config a moment to say so.
        std::thread::sleep(Duration::from_millis(50));
        match self.child.try_wait()? {
            None => Ok(()),
            Some(status) => anyhow::bail!("{} exited at start: {status}", self.name),
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let pid = self.child.id() as libc::pid_t;
        CHILDREN
            .lock()
            .expect("children")
            .retain(|&child| child != self.child.id());
        if let Ok(Some(_)) = self.child.try_wait() {
            return;
        }
        unsafe { libc::kill(pid, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(3);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        eprintln!("{} (pid {pid}) ignored SIGTERM: killing it", self.name);
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A scratch directory for config files and logs, removed on drop.
pub struct ScratchDir {
    pub path: std::path::PathBuf,
}

impl ScratchDir {
    pub fn new(name: &str) -> anyhow::Result<Self> {
        let path = std::env::temp_dir().join(name);
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).with_context(|| format!("creating {}", path.display()))?;
        Ok(Self { path })
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// PIDs of the processes started and not yet stopped, for the signal handler.
static CHILDREN: Mutex<Vec<u32>> = Mutex::new(Vec::new());

/// Cleans up when the comparison is interrupted (SIGINT, SIGTERM, SIGHUP), where no Drop runs:
/// stops the processes it started (by PID) and deletes its namespaces (`splcmp-*-<pid>`),
/// then exits. Call first in `main`, before any thread exists: the signals are blocked in every
/// thread and taken by one that waits for them.
pub fn clean_up_on_signal() {
    let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
    unsafe {
        libc::sigemptyset(&mut set);
        for signal in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
            libc::sigaddset(&mut set, signal);
        }
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
    }
    std::thread::spawn(move || {
        let mut signal = 0;
        unsafe { libc::sigwait(&set, &mut signal) };
        eprintln!("signal {signal}: cleaning up");
        for pid in CHILDREN.lock().map(|c| c.clone()).unwrap_or_default() {
            unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
        }
        let suffix = format!("-{}", std::process::id());
        if let Ok(entries) = std::fs::read_dir("/run/netns") {
            for entry in entries.filter_map(Result::ok) {
                let name = entry.file_name().to_string_lossy().into_owned();
                if name.starts_with("splcmp-") && name.ends_with(&suffix) {
                    let _ = Command::new("ip").args(["netns", "del", &name]).output();
                }
            }
        }
        std::process::exit(128 + signal);
    });
}
