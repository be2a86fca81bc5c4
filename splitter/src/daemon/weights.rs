//! The weight commands: `set-weight`, `switch`, `drain`, and the one writer rollouts share with
//! them.

use splitter_common::WEIGHT_SCALE;

use super::{App, AppError};
use crate::{
    config::ColorName,
    control::protocol::{DrainReport, WeightChange},
    state::ServiceState,
    units::ppm_to_percent,
};

impl App {
    /// Sets the share of new flows sent to green (the operator's command: a running rollout of
    /// the service pauses). A raise is saved before it is applied (and refused if it cannot
    /// be); anything else is applied first and saved after (`persist.rs`).
    pub fn set_weight(&mut self, name: &str, green_weight: u32) -> Result<WeightChange, AppError> {
        if green_weight > WEIGHT_SCALE {
            return Err(AppError::WeightRange { ppm: green_weight });
        }
        self.service_address(name)?;
        self.pause_rollout_for_operator(name, green_weight)?;
        self.write_weight(name, green_weight)
    }

    /// Writes a service's green weight (one map update) and saves it (see `persist.rs` for
    /// which comes first).
    pub(super) fn write_weight(
        &mut self,
        name: &str,
        green_weight: u32,
    ) -> Result<WeightChange, AppError> {
        let state = self.state.clone();
        self.write_weight_with(name, green_weight, state)
    }

    /// [`App::write_weight`] saving `state` (with the weight added) rather than the current
    /// state: a rollout saves its new phase with the weight, in one file write.
    pub(super) fn write_weight_with(
        &mut self,
        name: &str,
        green_weight: u32,
        mut state: crate::state::State,
    ) -> Result<WeightChange, AppError> {
        if green_weight > WEIGHT_SCALE {
            return Err(AppError::WeightRange { ppm: green_weight });
        }
        let (address, protocol) = self.service_address(name)?;
        let file_green_weight = self
            .config
            .service(name)
            .map_or(0, |service| service.green_weight);
        let previous = self
            .installed
            .get(&(address, protocol))
            .map_or(0, |installed| installed.config.green_weight);
        state.services.insert(
            name.to_owned(),
            ServiceState {
                green_weight,
                file_green_weight,
            },
        );
        let raise = green_weight > previous;
        let mut after = Some(state);
        if raise && let Some(state) = after.take() {
            // Toward the canary: saved first, refused when it cannot be saved.
            self.save_before(state)?;
        }
        let config = self
            .dataplane
            .maps
            .set_weight(&address, protocol, green_weight)?;
        if let Some(installed) = self.installed.get_mut(&(address, protocol)) {
            installed.config = config;
        }
        if green_weight != previous {
            // `status` measures the share from here on (a window straddling the change
            // would mix two splits): a sample now is the window's start, so the flows of
            // the first second after the change count too.
            let now = std::time::Instant::now();
            self.sample(now);
            self.sampler.weight_changed(name, now);
        }
        if let Some(state) = after {
            // Toward blue: in force already; the disk follows when it can.
            self.save_after(state);
        }
        tracing::info!(
            service = name,
            from = %ppm_to_percent(previous),
            to = %ppm_to_percent(green_weight),
            "green weight set"
        );
        Ok(WeightChange {
            service: name.to_owned(),
            previous_green_weight: previous,
            green_weight,
        })
    }

    /// Every new flow to one color; established flows stay where they are.
    pub fn switch(&mut self, name: &str, color: ColorName) -> Result<WeightChange, AppError> {
        let green_weight = all_to(color);
        self.service_address(name)?;
        self.pause_rollout_for_operator(name, green_weight)?;
        // A full switch is a cutover: the color that takes every new flow is the stable one,
        // so the next rollout canaries the other.
        let mut state = self.state.clone();
        state.stable.insert(name.to_owned(), color);
        self.write_weight_with(name, green_weight, state)
    }

    /// Drains `color`: every new flow of the service to the other color (the `switch` write:
    /// one map update; a running rollout pauses, as on any operator weight), established flows
    /// stay. With `cut`, the flows still pinned to `color` are unpinned too (as
    /// `rollout abort --cut`): their next packets follow the weight, which breaks them. A
    /// repeated drain (the CLI's `--cut` at its deadline) does not write the weight again.
    pub fn drain(
        &mut self,
        name: &str,
        color: ColorName,
        cut: bool,
    ) -> Result<DrainReport, AppError> {
        let target = all_to(color.other());
        let address = self.service_address(name)?;
        let current = self
            .installed
            .get(&address)
            .map(|installed| installed.config.green_weight);
        let change = if current == Some(target) {
            WeightChange {
                service: name.to_owned(),
                previous_green_weight: target,
                green_weight: target,
            }
        } else {
            self.set_weight(name, target)?
        };
        let unpinned = if cut { self.cut(name, color)? } else { 0 };
        tracing::info!(service = name, %color, cut, unpinned, "drain");
        Ok(DrainReport {
            service: name.to_owned(),
            color,
            previous_green_weight: change.previous_green_weight,
            green_weight: change.green_weight,
            unpinned: unpinned as u64,
        })
    }
}

/// The weight that sends every new flow to `color`.
const fn all_to(color: ColorName) -> u32 {
    match color {
        ColorName::Blue => 0,
        ColorName::Green => WEIGHT_SCALE,
    }
}
