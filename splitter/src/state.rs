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
    io::Write as _,
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
        let text = match std::fs::read_to_string(&path) {
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
    pub fn initial_weight(&self, name: &str, file_weight: u32, installed: Option<u32>) -> u32 {
        match self.services.get(name) {
            Some(state) if state.file_green_weight == file_weight => state.green_weight,
            Some(_) => file_weight,
            None => installed.unwrap_or(file_weight),
        }
    }
}

/// `dir/name` replaced by `text` atomically: temp file, fsync, rename, fsync of the directory.
fn write_atomically(dir: &Path, name: &str, text: &str) -> Result<(), StateError> {
    let path = dir.join(name);
    let temp = dir.join(format!(".{name}.tmp"));
    let write_error = |path: &Path| {
        let path = path.to_owned();
        move |source| StateError::Write {
            path: path.clone(),
            source,
        }
    };
    let mut file = File::create(&temp).map_err(write_error(&temp))?;
    file.write_all(text.as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(write_error(&temp))?;
    drop(file);
    std::fs::rename(&temp, &path).map_err(write_error(&path))?;
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
        match std::fs::read_to_string(&path) {
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

/// Creates the state directory (mode 0700 when new).
pub fn create_dir(dir: &Path) -> Result<(), StateError> {
    use std::os::unix::fs::DirBuilderExt as _;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|source| StateError::Dir {
            path: dir.to_owned(),
            source,
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
            let holder = std::fs::read_to_string(&path).unwrap_or_default();
            let holder = match holder.trim() {
                "" => "pid unknown".to_owned(),
                pid => format!("pid {pid}"),
            };
            return Err(StateError::Locked { path, holder });
        }
        file.set_len(0)
            .and_then(|()| writeln!(file, "{}", std::process::id()))
            .map_err(|source| StateError::Write {
                path: path.clone(),
                source,
            })?;
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
    fn runtime_weight_wins_unless_the_file_changed() {
        let mut state = State::default();
        state.services.insert(
            "web".into(),
            ServiceState {
                green_weight: 500_000,
                file_green_weight: 100_000,
            },
        );
        assert_eq!(state.initial_weight("web", 100_000, Some(7)), 500_000);
        assert_eq!(state.initial_weight("web", 200_000, Some(7)), 200_000);
        assert_eq!(state.initial_weight("api", 200_000, Some(7)), 7);
        assert_eq!(state.initial_weight("api", 200_000, None), 200_000);
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
