//! What the daemon checks on its host at start, beyond the file itself, so that
//! `check-config` (without `--no-host-checks`) passes exactly the files the daemon accepts:
//! the bpffs path is on a bpf filesystem, and the directories whose files the daemon trusts
//! (`state_dir`, the control socket's directory, the bpffs path) are its own. Interfaces are
//! checked by validation itself.

use std::path::Path;

use super::{ConfigError, Validated};

/// Every host problem of a validated config (empty: the daemon would start here).
pub fn problems(config: &Validated) -> Vec<ConfigError> {
    let mut problems = Vec::new();
    if let Err(problem) = bpffs(&config.bpffs) {
        problems.push(problem);
    }
    let socket_dir = config.socket.parent().unwrap_or(Path::new("/"));
    for (role, dir) in [
        ("state_dir", config.state_dir.as_path()),
        ("the control socket's directory", socket_dir),
        ("bpffs", config.bpffs.as_path()),
    ] {
        if let Err(problem) = private_dir(role, dir) {
            problems.push(problem);
        }
    }
    problems
}

/// `control.bpffs` (or, when it does not exist yet, the directory it will be created in)
/// must be on a bpf filesystem.
pub fn bpffs(path: &Path) -> Result<(), ConfigError> {
    let existing = path
        .ancestors()
        .find(|ancestor| ancestor.exists())
        .unwrap_or(Path::new("/"));
    match crate::sys::is_bpffs(existing) {
        Ok(true) => Ok(()),
        Ok(false) => Err(ConfigError::Host(format!(
            "control.bpffs: {} is not on a bpf filesystem ({} is not); mount one: `mount -t bpf bpf {}`",
            path.display(),
            existing.display(),
            existing.display()
        ))),
        Err(error) => Err(ConfigError::Host(format!(
            "control.bpffs: {}: {error}",
            existing.display()
        ))),
    }
}

/// An existing directory must be the daemon's own; a missing one is created by the daemon
/// with a safe mode.
pub fn private_dir(role: &'static str, dir: &Path) -> Result<(), ConfigError> {
    if !dir.exists() {
        return Ok(());
    }
    crate::state::check_private_dir(role, dir).map_err(|error| ConfigError::Host(error.to_string()))
}
