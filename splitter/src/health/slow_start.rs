//! Slow start (`[service.health] slow_start`): a backend that comes back into rotation (its
//! checks pass `rise` again, its ejection ends, `backend enable`, or it joins a pool on reload
//! while other backends of its color already serve) does not take its full Maglev share at
//! once. Its effective weight ramps linearly from [`START_PERMILLE`] of its configured weight
//! to all of it over `slow_start`, in steps of `slow_start / 10` (at least 1 s); each step is one
//! rewrite of its color's table. Pinned flows never move: only new flows follow the table.
//!
//! One rule ([`permille`]) gives the share of the configured weight; [`table_weights`] turns a
//! color's shares into the integer Maglev weights the table is built from.

use std::time::Duration;

use splitter_common::maglev::MAX_WEIGHT;

/// Share of its configured weight a backend takes when it comes back, in per mille.
pub const START_PERMILLE: u32 = 100;
/// The whole weight, in per mille.
pub const FULL_PERMILLE: u32 = 1000;
/// Steps of a ramp (at most: a step lasts at least [`STEP_MIN`]).
pub const STEPS: u32 = 10;
/// The shortest step: a table rewrite at most once a second per color.
pub const STEP_MIN: Duration = Duration::from_secs(1);
/// How finely a ramping color's weights are scaled (a weight-1 backend at 10 % is 1 of 10).
const SCALE: u32 = 10;

/// How long one step of a `slow_start` ramp lasts.
pub fn step(slow_start: Duration) -> Duration {
    (slow_start / STEPS).max(STEP_MIN)
}

/// The share of its configured weight, in per mille ([`START_PERMILLE`]..=[`FULL_PERMILLE`]), of
/// a backend that came back into rotation `since` ago, with `slow_start`: linear from 10 % at 0
/// to 100 % at `slow_start`, taken at the start of the current step.
pub fn permille(since: Duration, slow_start: Duration) -> u32 {
    if since >= slow_start || slow_start.is_zero() {
        return FULL_PERMILLE;
    }
    let step = step(slow_start);
    let steps_done = since.as_nanos() / step.as_nanos();
    let elapsed = (step.as_nanos() * steps_done).min(slow_start.as_nanos());
    let rise = u128::from(FULL_PERMILLE - START_PERMILLE) * elapsed / slow_start.as_nanos();
    START_PERMILLE + u32::try_from(rise).unwrap_or(FULL_PERMILLE - START_PERMILLE)
}

/// How long ago a ramp at `permille` began (the inverse of [`permille`] at a step's start): a
/// restarted daemon resumes a ramp from the weight the kernel holds.
pub fn since_for(permille: u32, slow_start: Duration) -> Duration {
    let permille = permille.clamp(START_PERMILLE, FULL_PERMILLE);
    let done = u64::from(permille - START_PERMILLE);
    let nanos =
        u128::from(done) * slow_start.as_nanos() / u128::from(FULL_PERMILLE - START_PERMILLE);
    Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX))
}

/// The effective weight of a backend of `configured` weight at `permille` of it (for `status`
/// and the metrics: fractional).
pub fn effective(configured: u32, permille: u32) -> f64 {
    f64::from(configured) * f64::from(permille) / f64::from(FULL_PERMILLE)
}

/// The Maglev weights of a color whose members are `(configured weight, per mille)`: the
/// configured weights themselves when none ramps (the table is the one without slow start);
/// else every weight scaled by up to 10 (within [`MAX_WEIGHT`]) and each ramping one taken at its
/// share, at least 1 (a backend in rotation always has table entries).
pub fn table_weights(members: &[(u32, u32)]) -> Vec<u32> {
    if members
        .iter()
        .all(|(weight, permille)| *weight == 0 || *permille >= FULL_PERMILLE)
    {
        return members.iter().map(|(weight, _)| *weight).collect();
    }
    let heaviest = members.iter().map(|(weight, _)| *weight).max().unwrap_or(1);
    let scale = (MAX_WEIGHT / heaviest.max(1)).clamp(1, SCALE);
    members
        .iter()
        .map(|(weight, permille)| {
            let full = weight * scale;
            if *weight == 0 || *permille >= FULL_PERMILLE {
                return full;
            }
            let share = (u64::from(full) * u64::from(*permille) + u64::from(FULL_PERMILLE / 2))
                / u64::from(FULL_PERMILLE);
            u32::try_from(share).unwrap_or(full).clamp(1, full)
        })
        .collect()
}

/// The per mille a color's installed Maglev weights give each member, from their configured
/// weights (the inverse of [`table_weights`]): how a restarted daemon finds ramps in progress.
/// `None` for a member at its full weight.
pub fn installed_permille(members: &[(u32, u32)]) -> Vec<Option<u32>> {
    // (configured, installed) pairs.
    if members
        .iter()
        .all(|(configured, installed)| configured == installed)
    {
        return vec![None; members.len()];
    }
    let heaviest = members.iter().map(|(weight, _)| *weight).max().unwrap_or(1);
    let scale = (MAX_WEIGHT / heaviest.max(1)).clamp(1, SCALE);
    members
        .iter()
        .map(|(configured, installed)| {
            let full = configured * scale;
            (full > 0 && *installed < full).then(|| {
                let permille = u64::from(*installed) * u64::from(FULL_PERMILLE) / u64::from(full);
                u32::try_from(permille)
                    .unwrap_or(FULL_PERMILLE)
                    .max(START_PERMILLE)
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: fn(u64) -> Duration = Duration::from_secs;

    #[test]
    fn ramps_linearly_in_steps_from_a_tenth_to_all() {
        let slow_start = S(30);
        assert_eq!(step(slow_start), S(3));
        assert_eq!(permille(S(0), slow_start), 100);
        assert_eq!(permille(Duration::from_millis(2999), slow_start), 100);
        assert_eq!(permille(S(3), slow_start), 190);
        assert_eq!(permille(S(15), slow_start), 550);
        assert_eq!(permille(S(29), slow_start), 910);
        assert_eq!(permille(S(30), slow_start), 1000);
        assert_eq!(permille(S(3600), slow_start), 1000);
    }

    #[test]
    fn a_step_lasts_at_least_a_second() {
        let slow_start = S(4);
        assert_eq!(step(slow_start), S(1));
        let ramp: Vec<u32> = (0..=4).map(|s| permille(S(s), slow_start)).collect();
        assert_eq!(ramp, [100, 325, 550, 775, 1000]);
    }

    #[test]
    fn the_inverse_resumes_the_same_step() {
        for slow_start in [S(4), S(30), S(3600)] {
            for s in [0, 1, 2, 3] {
                let since = S(s) * u32::try_from(slow_start.as_secs() / 4).unwrap();
                let share = permille(since, slow_start);
                assert_eq!(permille(since_for(share, slow_start), slow_start), share);
            }
        }
    }

    #[test]
    fn table_weights_keep_the_plain_table_unless_a_member_ramps() {
        assert_eq!(table_weights(&[(1, 1000), (3, 1000), (0, 100)]), [1, 3, 0]);
        assert_eq!(table_weights(&[(1, 1000), (1, 100)]), [10, 1]);
        assert_eq!(table_weights(&[(1, 1000), (1, 550)]), [10, 6]);
        assert_eq!(table_weights(&[(2, 1000), (4, 325)]), [20, 13]);
        // Heavy weights: the scale shrinks to stay within MAX_WEIGHT; a ramping one keeps 1.
        assert_eq!(table_weights(&[(256, 1000), (1, 100)]), [256, 1]);
        assert_eq!(table_weights(&[(100, 1000), (100, 100)]), [200, 20]);
    }

    #[test]
    fn installed_weights_give_back_the_shares() {
        for shares in [[1000, 100], [1000, 550], [325, 1000]] {
            let configured = [1, 3];
            let members: Vec<(u32, u32)> = configured.into_iter().zip(shares).collect();
            let installed = table_weights(&members);
            let back = installed_permille(
                &configured
                    .into_iter()
                    .zip(installed)
                    .collect::<Vec<(u32, u32)>>(),
            );
            for (share, back) in shares.iter().zip(back) {
                match back {
                    None => assert_eq!(*share, 1000),
                    Some(back) => assert!(back.abs_diff(*share) <= 100, "{share} vs {back}"),
                }
            }
        }
        assert_eq!(installed_permille(&[(1, 1), (3, 3)]), [None, None]);
    }
}
