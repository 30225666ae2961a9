//! Runway: how fast a pool burns credits (over the last 7 and 30 days) and when, at that
//! rate, its available balance runs out, and whether that comes before the cycle's reset
//! brings the next allowance [003]. Pure arithmetic on fixed-point credits: the shell reads
//! what was used, this decides the dates.

use chrono::{DateTime, TimeDelta, Utc};
use serde::Serialize;

use crate::credits::Credits;

/// The windows burn rates are taken over, in days.
pub const WINDOWS: [u32; 2] = [7, 30];

const DAY_SECONDS: i128 = 86_400;

/// The burn over one window and where it leads.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Burn {
    /// The window, in days.
    pub days: u32,
    /// Credits used by calls in the window.
    pub used: Credits,
    /// `used / days`, rounded down to a thousandth.
    pub per_day: Credits,
    /// When the available balance is used up at this rate; `None` when nothing is used.
    /// The balance is already out when this is `at` itself.
    pub runs_out_at: Option<DateTime<Utc>>,
    /// Whether `runs_out_at` comes before the next reset (the plan's cycle end, for the
    /// plan's pool); `None` without a reset for this pool or without a run-out date.
    pub before_reset: Option<bool>,
}

/// Burn rates of one pool over each of [`WINDOWS`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Runway {
    pub last_7_days: Burn,
    pub last_30_days: Burn,
}

/// The burn over `days` in which `used` credits went, for `available` credits at `at`,
/// with the next reset at `reset` (if one brings this pool credits).
pub fn burn(
    days: u32,
    used: Credits,
    available: Credits,
    at: DateTime<Utc>,
    reset: Option<DateTime<Utc>>,
) -> Burn {
    let days_i = i128::from(days.max(1));
    let used_milli = i128::from(used.milli().max(0));
    let per_day = Credits::from_milli(i64::try_from(used_milli / days_i).unwrap_or(i64::MAX));
    let runs_out_at = if used_milli == 0 {
        None
    } else if !available.is_positive() {
        Some(at)
    } else {
        // available / (used / window) of time: exact in integers, in seconds.
        let seconds = i128::from(available.milli()) * days_i * DAY_SECONDS / used_milli;
        let seconds = i64::try_from(seconds).unwrap_or(i64::MAX);
        TimeDelta::try_seconds(seconds).and_then(|d| at.checked_add_signed(d))
    };
    let before_reset = match (runs_out_at, reset) {
        (Some(out), Some(reset)) => Some(out < reset),
        _ => None,
    };
    Burn {
        days,
        used,
        per_day,
        runs_out_at,
        before_reset,
    }
}

/// The runway of a pool: `used_7` and `used_30` are the credits calls used in the last 7
/// and 30 days before `at`.
pub fn runway(
    used_7: Credits,
    used_30: Credits,
    available: Credits,
    at: DateTime<Utc>,
    reset: Option<DateTime<Utc>>,
) -> Runway {
    Runway {
        last_7_days: burn(WINDOWS[0], used_7, available, at, reset),
        last_30_days: burn(WINDOWS[1], used_30, available, at, reset),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> DateTime<Utc> {
        s.parse().expect("time")
    }

    #[test]
    fn runs_out_at_the_rate_of_each_window() {
        let at = t("2026-11-20T00:00:00Z");
        let reset = Some(t("2026-12-01T00:00:00Z"));
        // 70 used in 7 days: 10 a day; 45 left last 4.5 days.
        let b = burn(
            7,
            Credits::from_whole(70),
            Credits::from_whole(45),
            at,
            reset,
        );
        assert_eq!(b.per_day, Credits::from_whole(10));
        assert_eq!(b.runs_out_at, Some(t("2026-11-24T12:00:00Z")));
        assert_eq!(b.before_reset, Some(true));
        // 90 in 30 days: 3 a day; 45 last 15 days, past the reset.
        let b = burn(
            30,
            Credits::from_whole(90),
            Credits::from_whole(45),
            at,
            reset,
        );
        assert_eq!(b.per_day, Credits::from_whole(3));
        assert_eq!(b.runs_out_at, Some(t("2026-12-05T00:00:00Z")));
        assert_eq!(b.before_reset, Some(false));
    }

    #[test]
    fn no_use_never_runs_out_and_an_empty_pool_is_out_now() {
        let at = t("2026-11-20T00:00:00Z");
        let b = burn(7, Credits::ZERO, Credits::from_whole(45), at, None);
        assert_eq!((b.runs_out_at, b.before_reset), (None, None));
        let b = burn(7, Credits::from_whole(1), Credits::ZERO, at, Some(at));
        assert_eq!(b.runs_out_at, Some(at));
        assert_eq!(
            b.before_reset,
            Some(false),
            "out at the reset is not before it"
        );
        // A third of a credit a day, rounded down to thousandths.
        let b = burn(3, Credits::from_whole(1), Credits::from_whole(1), at, None);
        assert_eq!(b.per_day, Credits::from_milli(333));
        assert_eq!(b.runs_out_at, Some(t("2026-11-23T00:00:00Z")));
    }
}
