//! Plans and billing cycles: what a plan issues each cycle, and where its cycles begin and
//! end on the account's calendar.

use chrono::{DateTime, Datelike, LocalResult, NaiveDate, NaiveDateTime, TimeDelta, TimeZone, Utc};
use chrono_tz::Tz;
use serde::{Deserialize, Serialize};

use crate::credits::Credits;
use crate::lots::PaymentMethod;

/// How long one billing cycle lasts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Period {
    Month,
    Year,
}

impl Period {
    pub fn months(self) -> i32 {
        match self {
            Period::Month => 1,
            Period::Year => 12,
        }
    }
}

/// One plan as written in config, e.g. `[plans.pro]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Plan {
    /// Credits of the `included` lot issued at the start of every cycle (0: none).
    pub credits: Credits,
    /// The pool the allowance goes to.
    #[serde(default = "ai_pool")]
    pub pool: String,
    /// `month` or `year`; a yearly plan issues a year's credits up front.
    pub period: Period,
    /// Flex credits allowed per cycle once every lot is empty; unset: the default in
    /// `rules.flex_threshold`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flex_threshold: Option<Credits>,
}

fn ai_pool() -> String {
    "ai".to_string()
}

/// An account's plan as assigned: its terms are copied, so a later change of the config
/// does not rewrite a running subscription.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Subscription {
    pub name: String,
    pub plan: Plan,
    /// Cycle 0 starts here; later cycles start on the same day and time of the month.
    pub anchor: DateTime<Utc>,
    /// The calendar the cycles follow: the account's time zone when the plan was assigned.
    pub timezone: Tz,
    /// How the subscription is paid, for the history (cash-paid plans show as cash top-ups).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payment: Option<PaymentMethod>,
    /// The current cycle.
    pub cycle: u32,
    pub cycle_start: DateTime<Utc>,
    pub cycle_end: DateTime<Utc>,
}

/// Start of cycle `n` of a calendar anchored at `anchor` in `tz`. An anchor on the 31st
/// falls on the last day of shorter months, and comes back to the 31st after them.
pub fn cycle_start(anchor: DateTime<Utc>, tz: Tz, period: Period, n: u32) -> DateTime<Utc> {
    let local = anchor.with_timezone(&tz).naive_local();
    let n = i32::try_from(n).unwrap_or(i32::MAX / 24);
    let month_index = local.year() * 12 + local.month0() as i32 + n * period.months();
    let (year, month) = (
        month_index.div_euclid(12),
        month_index.rem_euclid(12) as u32 + 1,
    );
    let day = local.day().min(days_in_month(year, month));
    match NaiveDate::from_ymd_opt(year, month, day) {
        Some(date) => resolve(tz, date.and_time(local.time())),
        None => DateTime::<Utc>::MAX_UTC,
    }
}

/// The cycle containing `at`: its number, start and end. Before the anchor: cycle 0.
pub fn cycle_at(
    anchor: DateTime<Utc>,
    tz: Tz,
    period: Period,
    at: DateTime<Utc>,
) -> (u32, DateTime<Utc>, DateTime<Utc>) {
    let a = anchor.with_timezone(&tz);
    let t = at.with_timezone(&tz);
    let months = (t.year() - a.year()) * 12 + t.month0() as i32 - a.month0() as i32;
    let mut n = u32::try_from((months / period.months()).max(0)).unwrap_or(0);
    // The estimate is off by at most one either way (day and time within the month).
    while n > 0 && cycle_start(anchor, tz, period, n) > at {
        n -= 1;
    }
    while cycle_start(anchor, tz, period, n + 1) <= at {
        n += 1;
    }
    (
        n,
        cycle_start(anchor, tz, period, n),
        cycle_start(anchor, tz, period, n + 1),
    )
}

/// A calendar month in a time zone, as [`month`] finds it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Month {
    /// `plans::month_start` of every instant in `[known_from, known_until)`.
    pub start: DateTime<Utc>,
    /// The next month's start.
    pub end: DateTime<Utc>,
    /// Where local time is surely in the month: from the last local instant of its first
    /// midnight (a change of the clock may repeat it) to the first of the next one (or
    /// earlier, where a change of the clock skips that midnight).
    pub known_from: DateTime<Utc>,
    pub known_until: DateTime<Utc>,
}

impl Month {
    /// Whether `at` surely falls in it.
    pub fn holds(&self, at: DateTime<Utc>) -> bool {
        self.known_from <= at && at < self.known_until
    }
}

/// Start of the calendar month containing `at` in `tz`: the flex period of an account
/// without a plan.
pub fn month_start(tz: Tz, at: DateTime<Utc>) -> DateTime<Utc> {
    let local = at.with_timezone(&tz).naive_local();
    match NaiveDate::from_ymd_opt(local.year(), local.month(), 1) {
        Some(first) => resolve(tz, first.and_time(chrono::NaiveTime::MIN)),
        None => at,
    }
}

/// The calendar month containing `at` in `tz`: its [`month_start`], the next month's, and
/// the span in which [`Month::holds`] is true and its start is [`month_start`] without the zone's rules.
pub fn month(tz: Tz, at: DateTime<Utc>) -> Month {
    let local = at.with_timezone(&tz).naive_local();
    let first = NaiveDate::from_ymd_opt(local.year(), local.month(), 1);
    let next = first.and_then(|first| first.checked_add_months(chrono::Months::new(1)));
    let (Some(first), Some(next)) = (first, next) else {
        // Out of the calendar's range: nothing is known, every time is computed.
        return Month {
            start: month_start(tz, at),
            end: at,
            known_from: at,
            known_until: at,
        };
    };
    let (first, next) = (
        first.and_time(chrono::NaiveTime::MIN),
        next.and_time(chrono::NaiveTime::MIN),
    );
    let (start, end) = (resolve(tz, first), resolve(tz, next));
    let known_from = tz
        .from_local_datetime(&first)
        .latest()
        .map_or(start, |t| t.with_timezone(&Utc).max(start));
    // A skipped midnight: `end` lies after the gap, whose instants are in the next month
    // already; two days before it lies before any gap there is.
    let known_until = tz.from_local_datetime(&next).earliest().map_or_else(
        || end - TimeDelta::days(2),
        |t| t.with_timezone(&Utc).min(end),
    );
    Month {
        start,
        end,
        known_from,
        known_until,
    }
}

fn days_in_month(year: i32, month: u32) -> u32 {
    let (next_year, next_month) = if month == 12 {
        (year + 1, 1)
    } else {
        (year, month + 1)
    };
    NaiveDate::from_ymd_opt(next_year, next_month, 1)
        .and_then(|d| d.pred_opt())
        .map_or(28, |d| d.day())
}

/// A local time as an instant. In a daylight-saving gap the local time does not exist, so
/// it is read with the offset from before the gap (02:30 becomes 03:30 after a one-hour
/// gap); in an overlap, the earlier of the two instants is taken.
fn resolve(tz: Tz, local: NaiveDateTime) -> DateTime<Utc> {
    match tz.from_local_datetime(&local) {
        LocalResult::Single(t) | LocalResult::Ambiguous(t, _) => t.with_timezone(&Utc),
        LocalResult::None => match tz.from_local_datetime(&(local + TimeDelta::hours(1))) {
            LocalResult::Single(t) | LocalResult::Ambiguous(t, _) => t.with_timezone(&Utc),
            LocalResult::None => local.and_utc(),
        },
    }
}

/// Zones whose clocks change at midnight, at 02:00, by half hours or by a whole day: the
/// cases calendar arithmetic gets wrong, for the tests of `plans` and `day_cache`.
#[cfg(test)]
pub(crate) const ODD_CLOCK_ZONES: [Tz; 11] = [
    Tz::UTC,
    chrono_tz::Asia::Seoul,
    chrono_tz::Europe::Berlin,
    chrono_tz::America::Santiago,
    chrono_tz::America::Havana,
    chrono_tz::Asia::Beirut,
    chrono_tz::Australia::Lord_Howe,
    chrono_tz::Pacific::Apia,
    chrono_tz::Asia::Gaza,
    chrono_tz::America::Asuncion,
    chrono_tz::Asia::Damascus,
];

#[cfg(test)]
mod tests {
    use super::*;

    fn utc(text: &str) -> DateTime<Utc> {
        text.parse().unwrap()
    }

    #[test]
    fn anchor_on_the_31st_falls_on_the_last_day_of_shorter_months() {
        let anchor = utc("2026-01-31T00:00:00Z");
        let starts: Vec<String> = (0..4)
            .map(|n| {
                cycle_start(anchor, Tz::UTC, Period::Month, n)
                    .format("%Y-%m-%d")
                    .to_string()
            })
            .collect();
        assert_eq!(
            starts,
            ["2026-01-31", "2026-02-28", "2026-03-31", "2026-04-30"]
        );
    }

    #[test]
    fn cycles_follow_the_account_calendar() {
        // Midnight on the 1st in Seoul is 15:00 UTC the day before.
        let anchor = utc("2026-10-31T15:00:00Z");
        let seoul = chrono_tz::Asia::Seoul;
        // 23:59:59 on 30 November in Seoul is still the first cycle.
        let (n, start, end) = cycle_at(anchor, seoul, Period::Month, utc("2026-11-30T14:59:59Z"));
        assert_eq!(
            (n, start, end),
            (0, utc("2026-10-31T15:00:00Z"), utc("2026-11-30T15:00:00Z"))
        );
        let (n, start, end) = cycle_at(anchor, seoul, Period::Month, utc("2026-11-30T15:00:00Z"));
        assert_eq!(
            (n, start, end),
            (1, utc("2026-11-30T15:00:00Z"), utc("2026-12-31T15:00:00Z"))
        );
    }

    #[test]
    fn yearly_cycles_and_times_before_the_anchor() {
        let anchor = utc("2024-02-29T00:00:00Z");
        let (n, start, end) = cycle_at(anchor, Tz::UTC, Period::Year, utc("2025-03-01T00:00:00Z"));
        assert_eq!(
            (n, start, end),
            (1, utc("2025-02-28T00:00:00Z"), utc("2026-02-28T00:00:00Z"))
        );
        let (n, start, _) = cycle_at(anchor, Tz::UTC, Period::Year, utc("2020-01-01T00:00:00Z"));
        assert_eq!((n, start), (0, anchor));
    }

    #[test]
    fn month_start_in_the_account_time_zone() {
        assert_eq!(
            month_start(chrono_tz::Asia::Seoul, utc("2026-11-30T16:00:00Z")),
            utc("2026-11-30T15:00:00Z")
        );
    }

    /// Every 37 minutes over three years, in zones whose clocks change at midnight, by
    /// half hours or by a whole day: wherever `month` says it holds, its start is
    /// `month_start`'s and its end the next month's, and it holds most of the time.
    #[test]
    fn a_month_holds_only_where_month_start_agrees() {
        let from = utc("2010-12-20T00:00:00Z");
        for tz in ODD_CLOCK_ZONES {
            let mut remembered = month(tz, from);
            let (mut held, mut steps) = (0, 0);
            for i in 0..(3 * 366 * 24 * 60 / 37) {
                // Mostly forward, with a step back now and then.
                let minutes = if i % 5 == 4 { i * 37 - 1500 } else { i * 37 };
                let at = from + TimeDelta::minutes(minutes);
                let expected = month_start(tz, at);
                steps += 1;
                if remembered.holds(at) {
                    held += 1;
                    assert_eq!(remembered.start, expected, "{tz} {at}");
                } else {
                    remembered = month(tz, at);
                    assert_eq!(remembered.start, expected, "{tz} {at}");
                }
                let next = month_start(tz, expected + TimeDelta::days(32));
                assert_eq!(remembered.end, next, "{tz} {at}");
            }
            assert!(held * 10 > steps * 9, "{tz}: held {held} of {steps}");
        }
    }

    /// Havana's clocks go back from 01:00 to midnight as 1 November 2026 begins: its first
    /// midnight comes twice. The month starts at the earlier one and is known from the
    /// later one on.
    #[test]
    fn a_month_whose_first_midnight_comes_twice() {
        let tz = chrono_tz::America::Havana;
        let m = month(tz, utc("2026-11-10T00:00:00Z"));
        assert_eq!(
            (m.start, m.known_from, m.end),
            (
                utc("2026-11-01T04:00:00Z"),
                utc("2026-11-01T05:00:00Z"),
                utc("2026-12-01T05:00:00Z")
            )
        );
        assert!(!m.holds(utc("2026-11-01T04:30:00Z")));
        assert!(m.holds(utc("2026-11-01T05:00:00Z")));
        assert!(!m.holds(m.end));
    }
}
