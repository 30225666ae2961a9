//! Shared by the core's integration tests: rules around a test matrix.

use chrono::TimeDelta;
use tally_core::{CostMatrix, Policy, Rules};

/// Rules with `matrix` (TOML), Seoul time, earliest-expiry, 7 days of lateness, 5 minutes
/// of future skew and a 24-hour dedup window.
pub fn rules(matrix: &str) -> Rules {
    let matrix: CostMatrix = toml::from_str(matrix).expect("matrix parses");
    matrix.validate().expect("matrix is valid");
    Rules {
        matrix,
        default_timezone: chrono_tz::Asia::Seoul,
        default_policy: Policy::EarliestExpiry,
        max_lateness: TimeDelta::days(7),
        max_future_skew: TimeDelta::minutes(5),
        dedup_window: TimeDelta::hours(24),
    }
}
