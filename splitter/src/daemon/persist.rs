//! Saving the runtime state (`state_dir/state.json`) without letting the disk stand in the way
//! of a rollback.
//!
//! The rule, one place: a change that **does not raise** green's weight (a switch to blue, an
//! abort, a lower weight, a pause) is written to the kernel first and saved after; when the
//! save fails (disk full, read-only, out of descriptors) the change stays in force, the state
//! is kept in memory, the daemon retries the save every second, and `status` and the metrics
//! say the file is behind. A change that **raises** green's weight (set-weight up, switch to
//! green, a rollout start, advance or promote) is saved first and refused when it cannot be:
//! a canary step the daemon could forget on a restart is not worth taking.
//!
//! On a restart the file and the pinned kernel maps may disagree; see
//! [`crate::state::State::initial_weight`]: the lower (safer) weight wins.

use super::{App, AppError};
use crate::{control::protocol::PersistStatus, state::State};

/// Whether the file is behind the state in memory, and how saves have gone.
#[derive(Debug, Default)]
pub struct Persistence {
    behind: bool,
    errors_total: u64,
    episode_failures: u64,
    last_error: Option<String>,
}

impl App {
    /// A change that is already in force and does not raise green's weight: kept in memory,
    /// saved now if possible, else later (never an error).
    pub(super) fn save_after(&mut self, state: State) {
        self.state = state;
        self.persist.behind = true;
        self.flush_state();
    }

    /// A change that raises green's weight: saved before it is applied, refused if the save
    /// fails (nothing changes, not even in memory).
    pub(super) fn save_before(&mut self, state: State) -> Result<(), AppError> {
        match state.save(&self.config.state_dir) {
            Ok(()) => {
                self.state = state;
                self.saved();
                Ok(())
            }
            Err(error) => {
                self.persist.errors_total += 1;
                self.persist.last_error = Some(error.to_string());
                Err(error.into())
            }
        }
    }

    /// Saves the state in memory if the file is behind it (the daemon calls this every
    /// second). Returns whether the file is up to date.
    pub fn flush_state(&mut self) -> bool {
        if !self.persist.behind {
            return true;
        }
        match self.state.save(&self.config.state_dir) {
            Ok(()) => {
                self.saved();
                true
            }
            Err(error) => {
                self.persist.errors_total += 1;
                self.persist.episode_failures += 1;
                if self.persist.episode_failures == 1 {
                    // Once per episode, not once per retry.
                    tracing::error!(
                        %error,
                        "the state file could not be saved: the weights in force are in the kernel; retrying every second"
                    );
                }
                self.persist.last_error = Some(error.to_string());
                false
            }
        }
    }

    fn saved(&mut self) {
        if self.persist.episode_failures > 0 {
            tracing::info!(
                failed_attempts = self.persist.episode_failures,
                "the state file is saved again"
            );
        }
        self.persist.behind = false;
        self.persist.episode_failures = 0;
        self.persist.last_error = None;
    }

    /// For `status` and the metrics.
    pub fn persist_status(&self) -> PersistStatus {
        PersistStatus {
            behind: self.persist.behind,
            errors_total: self.persist.errors_total,
            last_error: self.persist.last_error.clone(),
        }
    }
}
