//! Typed read models: one struct per report, serialized to the JSON that `tally ... --json`
//! prints and the HTTP API answers, and rendered as a table (people) or CSV (spreadsheets)
//! by one renderer. The CLI, the API and the dashboard all read these.

pub mod accounts;
pub mod advice;
pub mod alerts;
pub mod balance;
pub mod catalog;
pub mod daily;
pub mod history;
pub mod ledger;
pub mod monthly;
pub mod table;

use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use serde::{Serialize, Serializer};
use tally_core::Credits;

use crate::store::StoreError;
use clickhouse::Client;

#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error("{0}")]
    Store(#[from] StoreError),
    #[error("{what}: {source}")]
    Read {
        what: &'static str,
        #[source]
        source: StoreError,
    },
    /// A parameter out of range; names it.
    #[error("`{param}`: {problem}")]
    BadParameter {
        param: &'static str,
        problem: String,
    },
}

impl ReportError {
    /// Wraps a store error with what was being read.
    pub fn read(what: &'static str) -> impl FnOnce(StoreError) -> ReportError {
        move |source| ReportError::Read { what, source }
    }
}

/// A report that prints as a table: a header and rows of cells, plus optional lines of
/// text around it. The CLI prints [`Tabular::text`]; the API answers [`Tabular::csv`].
pub trait Tabular {
    fn header(&self) -> Vec<&'static str>;
    fn rows(&self) -> Vec<Vec<String>>;
    /// A line printed before the table (not part of CSV).
    fn title(&self) -> Option<String> {
        None
    }
    /// A line printed after the table (not part of CSV).
    fn footer(&self) -> Option<String> {
        None
    }
    /// What to print instead of an empty table.
    fn empty(&self) -> Option<String> {
        None
    }

    /// The report for people.
    fn text(&self) -> String {
        let rows = self.rows();
        if rows.is_empty() {
            if let Some(empty) = self.empty() {
                return format!("{empty}\n");
            }
        }
        let mut out = String::new();
        if let Some(title) = self.title() {
            out.push_str(&title);
            out.push('\n');
        }
        out.push_str(&table::render(&self.header(), &rows));
        if let Some(footer) = self.footer() {
            out.push_str(&footer);
            out.push('\n');
        }
        out
    }

    /// The report as CSV (RFC 4180), the same columns as the table.
    fn csv(&self) -> String {
        table::csv(&self.header(), &self.rows())
    }
}

/// The JSON of a report, as `--json` prints it and the API answers it.
pub fn to_json<T: Serialize>(report: &T) -> Result<String, serde_json::Error> {
    let mut text = serde_json::to_string_pretty(report)?;
    text.push('\n');
    Ok(text)
}

/// Times in reports: RFC 3339 with `+00:00`.
pub fn rfc3339<S: Serializer>(at: &DateTime<Utc>, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&at.to_rfc3339())
}

/// Optional times in reports.
pub fn rfc3339_opt<S: Serializer>(at: &Option<DateTime<Utc>>, s: S) -> Result<S::Ok, S::Error> {
    match at {
        Some(at) => s.serialize_str(&at.to_rfc3339()),
        None => s.serialize_none(),
    }
}

pub(crate) fn credits(milli: i64) -> Credits {
    Credits::from_milli(milli)
}

/// A time zone in reports: its IANA name (`Asia/Seoul`).
pub fn tz_name<S: Serializer>(tz: &Tz, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(tz.name())
}

/// `YYYY-MM-DD HH:MM (Zone)`: a time for people, in the account's zone and naming it, so
/// a cycle that starts at midnight in Seoul reads as midnight, not as 15:00 the day before.
pub fn local_time(at: &DateTime<Utc>, tz: Tz) -> String {
    format!(
        "{} ({})",
        at.with_timezone(&tz).format("%Y-%m-%d %H:%M"),
        tz.name()
    )
}

/// `YYYY-MM-DD HH:MM:SS`, UTC, for tables.
pub(crate) fn short_time(at: &DateTime<Utc>) -> String {
    at.format("%Y-%m-%d %H:%M:%S").to_string()
}

/// A table's time: in `zone` (the account's, named in the table's title) when the
/// caller set one, else UTC as in the CSV, whose times stay comparable across accounts.
pub(crate) fn table_time(at: &DateTime<Utc>, zone: Option<Tz>) -> String {
    match zone {
        Some(tz) => at
            .with_timezone(&tz)
            .format("%Y-%m-%d %H:%M:%S")
            .to_string(),
        None => short_time(at),
    }
}

/// The title line that names the zone of a table's times.
pub(crate) fn zone_title(zone: Option<Tz>) -> Option<String> {
    zone.map(|tz| format!("times in {} (the account's time zone)", tz.name()))
}

/// The time zone of `account`: its setting, else the configured default. The CLI shows
/// its tables' times in it.
pub async fn account_zone(
    client: &Client,
    rules: &tally_core::Rules,
    account: &str,
) -> Result<Tz, ReportError> {
    let state = crate::store::reads::account_state(client, account)
        .await
        .map_err(ReportError::read("the account's state"))?
        .unwrap_or_default();
    Ok(state.timezone(rules))
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;

    #[test]
    fn local_time_is_the_zones_wall_clock_named() {
        let at = chrono::Utc
            .with_ymd_and_hms(2026, 11, 30, 15, 0, 0)
            .unwrap();
        assert_eq!(
            super::local_time(&at, chrono_tz::Asia::Seoul),
            "2026-12-01 00:00 (Asia/Seoul)"
        );
        assert_eq!(
            super::local_time(&at, chrono_tz::UTC),
            "2026-11-30 15:00 (UTC)"
        );
    }
}
