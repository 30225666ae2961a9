//! The calendar day of a time in a zone, remembered with the span of that day: an account's
//! calls mostly fall on the day of its last call, so most calls skip the zone's rules.

use chrono::{DateTime, NaiveDate, NaiveTime, TimeZone, Utc};
use chrono_tz::Tz;

/// The last day looked up for an account. Not part of the account's state: equal whatever
/// it holds, never stored (a restored state starts with it empty).
#[derive(Debug, Clone, Copy, Default)]
pub struct DayCache(Option<Day>);

#[derive(Debug, Clone, Copy)]
struct Day {
    tz: Tz,
    /// `[start, end)`: every instant in it falls on `date` in `tz`.
    start: DateTime<Utc>,
    end: DateTime<Utc>,
    date: NaiveDate,
}

impl PartialEq for DayCache {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl Eq for DayCache {}

impl DayCache {
    /// The day of `time` in `tz`, as `time.with_timezone(&tz).date_naive()`.
    pub fn day(&mut self, tz: Tz, time: DateTime<Utc>) -> NaiveDate {
        if let Some(date) = self.hit(tz, time) {
            return date;
        }
        let date = time.with_timezone(&tz).date_naive();
        self.0 = span(tz, date).map(|(start, end)| Day {
            tz,
            start,
            end,
            date,
        });
        date
    }
}

impl DayCache {
    /// The day it remembers, if `time` falls in it in `tz`.
    fn hit(&self, tz: Tz, time: DateTime<Utc>) -> Option<NaiveDate> {
        self.0
            .filter(|day| day.tz == tz && day.start <= time && time < day.end)
            .map(|day| day.date)
    }

    /// [`DayCache::day`], looking in `shared` (the partition's last day) before the zone's
    /// rules, and leaving the day in both.
    pub fn day_shared(&mut self, shared: &mut DayCache, tz: Tz, time: DateTime<Utc>) -> NaiveDate {
        if let Some(date) = self.hit(tz, time) {
            return date;
        }
        if let Some(date) = shared.hit(tz, time) {
            *self = *shared;
            return date;
        }
        let date = self.day(tz, time);
        *shared = *self;
        date
    }
}

/// From the last local midnight that starts `date` to the first one that starts the next
/// day. Between them local time only runs forward within `date`: a change back across
/// midnight would repeat the first midnight (hence the latest), and one across the next
/// midnight would repeat or skip it (the earliest, or no span). A skipped midnight gives no
/// span, and such days are computed every time.
fn span(tz: Tz, date: NaiveDate) -> Option<(DateTime<Utc>, DateTime<Utc>)> {
    let start = tz
        .from_local_datetime(&date.and_time(NaiveTime::MIN))
        .latest()?;
    let end = tz
        .from_local_datetime(&date.succ_opt()?.and_time(NaiveTime::MIN))
        .earliest()?;
    Some((start.with_timezone(&Utc), end.with_timezone(&Utc)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeDelta;

    /// Every 7 minutes over two years, in zones with changes at midnight, at 02:00 and of
    /// half hours, in order and in a back-and-forth order, against the zone's own answer.
    #[test]
    fn same_day_as_the_zone_says() {
        let zones = crate::plans::ODD_CLOCK_ZONES;
        let from: DateTime<Utc> = "2010-12-25T00:00:00Z".parse().unwrap();
        for tz in zones {
            let mut cache = DayCache::default();
            for i in 0..(2 * 366 * 24 * 60 / 7) {
                // Mostly forward, with a step back now and then.
                let minutes = if i % 5 == 4 { i * 7 - 1500 } else { i * 7 };
                let time = from + TimeDelta::minutes(minutes);
                let expected = time.with_timezone(&tz).date_naive();
                assert_eq!(cache.day(tz, time), expected, "{tz} {time}");
            }
        }
    }

    /// Accounts of several zones sharing one partition's cache, each call against the
    /// zone's own answer.
    #[test]
    fn shared_day_as_the_zone_says() {
        let zones = [
            chrono_tz::Asia::Seoul,
            chrono_tz::Asia::Seoul,
            chrono_tz::Europe::Berlin,
            chrono_tz::America::Santiago,
        ];
        let from: DateTime<Utc> = "2026-03-27T00:00:00Z".parse().unwrap();
        let mut shared = DayCache::default();
        let mut accounts = [DayCache::default(); 4];
        for i in 0..(40 * 24 * 60 / 13) {
            let account = (i * 7) % accounts.len();
            let tz = zones[account];
            // Mostly forward, with a step back now and then.
            let minutes = i as i64 * 13 - if i % 5 == 4 { 1500 } else { 0 };
            let time = from + TimeDelta::minutes(minutes);
            let expected = time.with_timezone(&tz).date_naive();
            let day = accounts[account].day_shared(&mut shared, tz, time);
            assert_eq!(day, expected, "{tz} {time}");
        }
    }
}
