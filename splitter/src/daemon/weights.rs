//! The weight commands: `set-weight`, `switch`, and the one writer rollouts share with them.

use splitter_common::WEIGHT_SCALE;

use super::{App, AppError};
use crate::{
    config::ColorName, control::protocol::WeightChange, state::ServiceState, units::ppm_to_percent,
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
            // would mix two splits).
            self.sampler.weight_changed(name, std::time::Instant::now());
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
        let weight = match color {
            ColorName::Blue => 0,
            ColorName::Green => WEIGHT_SCALE,
        };
        self.set_weight(name, weight)
    }
}
