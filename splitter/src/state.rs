//! Runtime state persisted in `state_dir`: the weights set at run time (`set-weight`,
//! `switch`), so that they survive restarts and reboots and win over the file's initial
//! `green_weight`. Written atomically (temp file, fsync, rename, fsync of the directory).
//!
//! Backend ids and pool slots are not persisted: while the data plane is pinned, the daemon
//! reads them back from the kernel maps (the only place they matter), so they can never
//! disagree with what the programs use; after a reboot, the counters they index are gone anyway.
//!
//! Also here: the random hash seed of a config without `hash_seed` (`hash_seed`, generated
//! once, kept until the file is deleted), and the lock that keeps two daemons from driving the
//! same state and data plane.

use std::{
    collections::BTreeMap,
    fs::File,
    io::{Read as _, Write as _},
    os::unix::fs::{MetadataExt as _, OpenOptionsExt as _},
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};

const STATE_FILE: &str = "state.json";
const LOCK_FILE: &str = "daemon.lock";
const SEED_FILE: &str = "hash_seed";
const VERSION: u32 = 1;

/// The persisted state.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct State {
    pub version: u32,
    /// By service name.
    pub services: BTreeMap<String, ServiceState>,
    /// Rollouts by service name: running, paused, and the last finished one of each service.
    #[serde(default)]
    pub rollouts: BTreeMap<String, crate::rollout::Rollout>,
    /// The stable color by service name (the one a rollout moves traffic away from); absent
    /// (also from older state files): blue. A completed rollout makes its canary stable.
    #[serde(default)]
    pub stable: BTreeMap<String, crate::color::ColorName>,
    /// The operator's word on backends (`backend disable|drain`) by service name and backend
    /// address; a backend absent here is ready (written only when there is one, so an older
    /// daemon still reads a file without any).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub backends: BTreeMap<String, BTreeMap<std::net::SocketAddr, Admin>>,
}

/// The operator's word on a backend (`HAProxy`'s ready / maint / drain), persisted here;
/// `crate::health` decides what it means with the checks.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Admin {
    /// In rotation if healthy.
    #[default]
    Ready,
    /// Out of rotation (maintenance); pinned flows stay.
    Disabled,
    /// Out of rotation until its pinned flows end (`status` shows them); then as disabled.
    Draining,
}

impl Admin {
    pub const fn name(self) -> &'static str {
        match self {
            Admin::Ready => "ready",
            Admin::Disabled => "disabled",
            Admin::Draining => "draining",
        }
    }
}

/// One service's runtime weight.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceState {
    /// The weight in force (parts per million).
    pub green_weight: u32,
    /// The file's `green_weight` when the weight above was set: if the file now says
    /// something else, the operator edited it, and the file wins.
    pub file_green_weight: u32,
}

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("state directory {path}: {source}")]
    Dir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "{path} is not a valid state file ({source}); fix or delete it (weights then come from the config)"
    )]
    Corrupt {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("writing {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("another splitter daemon ({holder}) holds {path}")]
    Locked { path: PathBuf, holder: String },
    #[error(
        "{role} {path} is owned by uid {owner}, not by this daemon's user (uid {uid}) or root: another user could replace its files; fix: `chown {uid} {path}` (or choose a directory of your own)"
    )]
    NotOwned {
        role: &'static str,
        path: PathBuf,
        owner: u32,
        uid: u32,
    },
    #[error(
        "{role} {path} is writable by {who} (mode {mode:04o}): another user could replace its files; fix: `chmod go-w {path}` (e.g. `chmod 0700 {path}`)"
    )]
    Writable {
        role: &'static str,
        path: PathBuf,
        who: &'static str,
        mode: u32,
    },
    #[error("{role} {path} is not a directory")]
    NotDir { role: &'static str, path: PathBuf },
    #[error(
        "{path} is not a hash seed (expected one unsigned 32-bit number); delete it to draw a new one (only with the data plane unloaded) or set dataplane.hash_seed"
    )]
    CorruptSeed { path: PathBuf },
    #[error("drawing a random hash seed from {path}: {source}")]
    Random {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl State {
    pub fn path(dir: &Path) -> PathBuf {
        dir.join(STATE_FILE)
    }

    /// Reads the state of `dir`; no file yet is an empty state.
    pub fn load(dir: &Path) -> Result<Self, StateError> {
        let path = Self::path(dir);
        let text = match read_nofollow(&path) {
            Ok(text) => text,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
                return Ok(Self {
                    version: VERSION,
                    ..Self::default()
                });
            }
            Err(source) => return Err(StateError::Read { path, source }),
        };
        serde_json::from_str(&text).map_err(|source| StateError::Corrupt { path, source })
    }

    /// Writes the state atomically: a reader (or a crash) sees the old file or the new one.
    pub fn save(&self, dir: &Path) -> Result<(), StateError> {
        let mut text = serde_json::to_string_pretty(self).expect("state serializes");
        text.push('\n');
        write_atomically(dir, STATE_FILE, &text)
    }

    /// The weight a service starts with: the runtime weight, unless the file's `green_weight`
    /// changed since it was set (or there is none; then `installed`, the weight in the
    /// kernel, if any, else the file's).
    ///
    /// When the kernel (`installed`, the pinned data plane) holds a **lower** weight than the
    /// saved runtime weight, the kernel wins: moves toward blue reach the kernel before the
    /// disk, so a lower kernel weight is an emergency (abort, switch to blue) whose save had
    /// not succeeded yet; restoring the file's weight would silently undo it. A higher kernel
    /// weight never wins: moves toward green are saved first, so the file is the safe side.
    pub fn initial_weight(&self, name: &str, file_weight: u32, installed: Option<u32>) -> u32 {
        match self.services.get(name) {
            Some(state) if state.file_green_weight == file_weight => {
                installed.map_or(state.green_weight, |kernel| kernel.min(state.green_weight))
            }
            Some(_) => file_weight,
            None => installed.unwrap_or(file_weight),
        }
    }
}

impl State {
    /// The service's stable color: blue until a rollout completes toward green.
    pub fn stable_color(&self, name: &str) -> crate::color::ColorName {
        self.stable
            .get(name)
            .copied()
            .unwrap_or(crate::color::ColorName::Blue)
    }
}

/// Reads a file that must not be a symlink (`O_NOFOLLOW`): a symlink planted in the state
/// directory is an error (`ELOOP`), never followed.
fn read_nofollow(path: &Path) -> std::io::Result<String> {
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)?;
    let mut text = String::new();
    file.read_to_string(&mut text)?;
    Ok(text)
}

/// Another JSON file of `dir` (the fleet's `fleet.json`): absent is the default value.
pub(crate) fn read_optional<T: serde::de::DeserializeOwned + Default>(
    dir: &Path,
    name: &str,
) -> Result<T, StateError> {
    let path = dir.join(name);
    match read_nofollow(&path) {
        Ok(text) => {
            serde_json::from_str(&text).map_err(|source| StateError::Corrupt { path, source })
        }
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(T::default()),
        Err(source) => Err(StateError::Read { path, source }),
    }
}

/// `dir/name` replaced by `text` atomically: temp file, fsync, rename, fsync of the directory.
pub(crate) fn write_atomically(dir: &Path, name: &str, text: &str) -> Result<(), StateError> {
    let path = dir.join(name);
    let temp = dir.join(format!(".{name}.tmp"));
    let write_error = |path: &Path| -> Box<dyn Fn(std::io::Error) -> StateError> {
        let path = path.to_owned();
        Box::new(move |source| StateError::Write {
            path: path.clone(),
            source,
        })
    };
    // A leftover temp file (a crash between write and rename) is removed, never followed:
    // `remove_file` unlinks a symlink itself, and the new file must not exist (O_EXCL)
    // nor be a symlink (O_NOFOLLOW).
    match std::fs::remove_file(&temp) {
        Err(error) if error.kind() != std::io::ErrorKind::NotFound => {
            return Err(write_error(&temp)(error));
        }
        _ => {}
    }
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(&temp)
        .map_err(write_error(&temp))?;
    if let Err(error) = file
        .write_all(text.as_bytes())
        .and_then(|()| file.sync_all())
    {
        drop(file);
        // A full disk must not leave a half-written temp file taking space.
        let _ = std::fs::remove_file(&temp);
        return Err(write_error(&temp)(error));
    }
    drop(file);
    if let Err(error) = std::fs::rename(&temp, &path) {
        let _ = std::fs::remove_file(&temp);
        return Err(write_error(&path)(error));
    }
    File::open(dir)
        .and_then(|dir| dir.sync_all())
        .map_err(write_error(dir))
}

/// The hash seed of a config without `hash_seed`: drawn from the kernel's random source at the
/// first start, persisted in `state_dir/hash_seed`, the same on every later start. Random so
/// that nobody can compute which client tuples land on green (with a public seed an attacker
/// picks them); hosts behind one ECMP group must agree on it, so they set `hash_seed`.
pub struct RandomSeed;

impl RandomSeed {
    pub fn path(dir: &Path) -> PathBuf {
        dir.join(SEED_FILE)
    }

    /// The persisted seed, if one was drawn.
    pub fn read(dir: &Path) -> Result<Option<u32>, StateError> {
        let path = Self::path(dir);
        match read_nofollow(&path) {
            Ok(text) => text
                .trim()
                .parse()
                .map(Some)
                .map_err(|_| StateError::CorruptSeed { path }),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(StateError::Read { path, source }),
        }
    }

    /// The persisted seed, or a new random one, persisted before it is returned.
    pub fn load_or_create(dir: &Path) -> Result<u32, StateError> {
        if let Some(seed) = Self::read(dir)? {
            return Ok(seed);
        }
        let seed = Self::draw()?;
        Self::store(dir, seed)?;
        Ok(seed)
    }

    /// Persists `seed` (the one the pinned data plane was loaded with, when the file was lost).
    pub fn store(dir: &Path, seed: u32) -> Result<(), StateError> {
        write_atomically(dir, SEED_FILE, &format!("{seed}\n"))
    }

    fn draw() -> Result<u32, StateError> {
        use std::io::Read as _;
        let path = PathBuf::from("/dev/urandom");
        let mut bytes = [0u8; 4];
        File::open(&path)
            .and_then(|mut random| random.read_exact(&mut bytes))
            .map_err(|source| StateError::Random { path, source })?;
        Ok(u32::from_ne_bytes(bytes))
    }
}

/// Creates the state directory (mode 0700 when new), then checks nobody else controls it.
pub fn create_dir(dir: &Path) -> Result<(), StateError> {
    use std::os::unix::fs::DirBuilderExt as _;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|source| StateError::Dir {
            path: dir.to_owned(),
            source,
        })?;
    check_private_dir("state_dir", dir)
}

/// A directory whose files the daemon trusts (`state_dir`, the control socket's directory,
/// the bpffs pin directory) must be owned by the daemon's user (or root) and not writable by
/// group or others: otherwise another user could plant a symlink or swap a file in it. The
/// path's own directory is checked (symlinks to it are followed), not its ancestors.
pub fn check_private_dir(role: &'static str, dir: &Path) -> Result<(), StateError> {
    let metadata = std::fs::metadata(dir).map_err(|source| StateError::Dir {
        path: dir.to_owned(),
        source,
    })?;
    if !metadata.is_dir() {
        return Err(StateError::NotDir {
            role,
            path: dir.to_owned(),
        });
    }
    let uid = crate::sys::effective_uid();
    if metadata.uid() != uid && metadata.uid() != 0 {
        return Err(StateError::NotOwned {
            role,
            path: dir.to_owned(),
            owner: metadata.uid(),
            uid,
        });
    }
    let mode = metadata.mode() & 0o7777;
    let who = match (mode & 0o020 != 0, mode & 0o002 != 0) {
        (false, false) => return Ok(()),
        (true, false) => "its group",
        (false, true) => "others",
        (true, true) => "group and others",
    };
    Err(StateError::Writable {
        role,
        path: dir.to_owned(),
        who,
        mode,
    })
}

/// An exclusive `flock` on `state_dir/daemon.lock`, released when the process exits (even
/// on SIGKILL), holding the owner's pid for the error message of the next one.
pub struct DaemonLock {
    _file: File,
}

impl DaemonLock {
    pub fn acquire(dir: &Path) -> Result<Self, StateError> {
        let path = dir.join(LOCK_FILE);
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            // A symlinked lock file is refused (ELOOP), never followed to its target.
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&path)
            .map_err(|source| StateError::Dir {
                path: path.clone(),
                source,
            })?;
        // `File::try_lock` is `flock(LOCK_EX | LOCK_NB)` on Linux.
        if let Err(error) = file.try_lock() {
            if let std::fs::TryLockError::Error(source) = error {
                return Err(StateError::Dir { path, source });
            }
            let holder = read_nofollow(&path).unwrap_or_default();
            let holder = match holder.trim() {
                "" => "pid unknown".to_owned(),
                pid => format!("pid {pid}"),
            };
            return Err(StateError::Locked { path, holder });
        }
        // The pid is only for the next daemon's message: a full disk must not stop a start.
        let _ = file
            .set_len(0)
            .and_then(|()| writeln!(file, "{}", std::process::id()));
        Ok(Self { _file: file })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_dir(tag: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("splitter-state-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        create_dir(&dir).unwrap();
        dir
    }

    #[test]
    fn round_trip_and_missing_file() {
        let dir = temp_dir("rt");
        assert_eq!(State::load(&dir).unwrap().services.len(), 0);
        let mut state = State::load(&dir).unwrap();
        state.services.insert(
            "web".into(),
            ServiceState {
                green_weight: 125_000,
                file_green_weight: 100_000,
            },
        );
        state.save(&dir).unwrap();
        assert_eq!(State::load(&dir).unwrap(), state);
        assert!(!dir.join(".state.json.tmp").exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn old_state_files_load_with_blue_stable() {
        let old = r#"{"version":1,"services":{"web":{"green_weight":0,"file_green_weight":0}}}"#;
        let state: State = serde_json::from_str(old).unwrap();
        assert_eq!(state.stable_color("web"), crate::color::ColorName::Blue);
        let mut state = state;
        state
            .stable
            .insert("web".into(), crate::color::ColorName::Green);
        let text = serde_json::to_string(&state).unwrap();
        let back: State = serde_json::from_str(&text).unwrap();
        assert_eq!(back.stable_color("web"), crate::color::ColorName::Green);
    }

    #[test]
    fn runtime_weight_wins_unless_the_file_changed() {
        let mut state = State::default();
        state.services.insert(
            "web".into(),
            ServiceState {
                green_weight: 500_000,
                file_green_weight: 100_000,
            },
        );
        assert_eq!(state.initial_weight("web", 100_000, None), 500_000);
        assert_eq!(state.initial_weight("web", 200_000, Some(7)), 200_000);
        assert_eq!(state.initial_weight("api", 200_000, Some(7)), 7);
        assert_eq!(state.initial_weight("api", 200_000, None), 200_000);
    }

    /// The kernel and the file disagree after a restart: the lower (safer) weight wins, so an
    /// emergency that reached the kernel but not the disk is never undone.
    #[test]
    fn a_lower_kernel_weight_wins_over_the_saved_one() {
        let mut state = State::default();
        state.services.insert(
            "web".into(),
            ServiceState {
                green_weight: 500_000,
                file_green_weight: 100_000,
            },
        );
        // switch blue reached the kernel, the save did not: blue stays.
        assert_eq!(state.initial_weight("web", 100_000, Some(0)), 0);
        // A higher kernel weight never wins (raises are saved first).
        assert_eq!(state.initial_weight("web", 100_000, Some(900_000)), 500_000);
    }

    #[test]
    fn symlinks_in_the_state_dir_are_not_followed() {
        let dir = temp_dir("symlink");
        let target = dir.join("target");
        std::fs::write(&target, "precious\n").unwrap();
        std::os::unix::fs::symlink(&target, dir.join(LOCK_FILE)).unwrap();
        let error = DaemonLock::acquire(&dir)
            .err()
            .expect("symlinked lock refused");
        assert!(error.to_string().contains("daemon.lock"), "{error}");
        std::os::unix::fs::symlink(&target, dir.join(".state.json.tmp")).unwrap();
        std::os::unix::fs::symlink(&target, State::path(&dir)).unwrap();
        assert!(
            State::load(&dir).is_err(),
            "a symlinked state file is not read"
        );
        State::default().save(&dir).unwrap();
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "precious\n");
        assert!(
            !State::path(&dir).is_symlink(),
            "the symlink was replaced, not followed"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn directories_others_can_write_are_refused_with_the_fix() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = temp_dir("mode");
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
        let error = check_private_dir("state_dir", &dir)
            .unwrap_err()
            .to_string();
        assert!(error.contains("writable by group and others"), "{error}");
        assert!(
            error.contains(&format!("chmod go-w {}", dir.display())),
            "{error}"
        );
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).unwrap();
        check_private_dir("state_dir", &dir).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn corrupt_state_is_an_error_naming_the_file() {
        let dir = temp_dir("bad");
        std::fs::write(State::path(&dir), "{not json").unwrap();
        let error = State::load(&dir).unwrap_err().to_string();
        assert!(
            error.starts_with(&format!(
                "{} is not a valid state file",
                State::path(&dir).display()
            )),
            "{error}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn random_seed_is_drawn_once_and_kept() {
        let dir = temp_dir("seed");
        assert_eq!(RandomSeed::read(&dir).unwrap(), None);
        let seed = RandomSeed::load_or_create(&dir).unwrap();
        assert_eq!(RandomSeed::read(&dir).unwrap(), Some(seed));
        assert_eq!(RandomSeed::load_or_create(&dir).unwrap(), seed);
        assert!(!dir.join(".hash_seed.tmp").exists());
        RandomSeed::store(&dir, 7).unwrap();
        assert_eq!(RandomSeed::load_or_create(&dir).unwrap(), 7);
        std::fs::write(RandomSeed::path(&dir), "seven").unwrap();
        assert!(matches!(
            RandomSeed::read(&dir),
            Err(StateError::CorruptSeed { .. })
        ));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn one_daemon_per_state_dir() {
        let dir = temp_dir("lock");
        let first = DaemonLock::acquire(&dir).unwrap();
        let error = DaemonLock::acquire(&dir)
            .err()
            .expect("second lock refused");
        assert_eq!(
            error.to_string(),
            format!(
                "another splitter daemon (pid {}) holds {}",
                std::process::id(),
                dir.join(LOCK_FILE).display()
            )
        );
        drop(first);
        DaemonLock::acquire(&dir).expect("free again");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
