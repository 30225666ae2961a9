//! Shared by the core's integration tests: rules around a test matrix.

use chrono::TimeDelta;
use tally_core::{CostMatrix, Credits, Policy, Rules};

/// The shipped plans, as in `config/tally.toml`.
pub const PLANS: &str = r#"
free = { credits = 0, period = "month", flex_threshold = 0 }
pro = { credits = 100, period = "month" }
pro_yearly = { credits = 1200, period = "year" }
enterprise = { credits = 500, period = "month" }
standard = { credits = 1500, period = "month" }
contract = { credits = 200000, period = "year", flex_threshold = 1000000 }
"#;

/// Rules with `matrix` (TOML), Seoul time, earliest-expiry, 7 days of lateness, 5 minutes
/// of future skew, a 24-hour dedup window, the shipped plans, 5 minutes of expiry grace,
/// and flex and settlement off (the rule tests of those switch them on).
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
        plans: toml::from_str(PLANS).expect("plans parse"),
        expiry_grace: TimeDelta::minutes(5),
        flex_enabled: false,
        flex_threshold: Credits::from_whole(50),
        settle_shortfall: false,
        alerts: Default::default(),
        max_open_holds: tally_core::account::DEFAULT_MAX_OPEN_HOLDS,
    }
}
