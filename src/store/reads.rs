//! The reads behind `tally balance`, `tally report daily` and `tally ledger`. Every read
//! uses FINAL, so a row written twice by a retry or a replay counts once.

use chrono::{DateTime, NaiveDate, Utc};
use clickhouse::{Client, Row};
use serde::Deserialize;
use tally_core::Lot;

use super::rows::{day_number, LedgerRow, LotRow};
use super::writes::quote;
use super::StoreError;

/// All lots of `account`.
pub async fn lots(client: &Client, account: &str) -> Result<Vec<Lot>, StoreError> {
    let rows: Vec<LotRow> = client
        .query("SELECT ?fields FROM lots FINAL WHERE account = ? ORDER BY seq")
        .bind(account)
        .fetch_all()
        .await?;
    Ok(rows.iter().map(LotRow::to_lot).collect())
}

/// Whether anything at all is known of `account`.
pub async fn account_exists(client: &Client, account: &str) -> Result<bool, StoreError> {
    let n: u64 = client
        .query("SELECT count() FROM ledger WHERE account = ?")
        .bind(account)
        .fetch_one()
        .await?;
    Ok(n > 0)
}

/// How the daily report groups rows besides day and account.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum By {
    Service,
    User,
    Feature,
}

impl By {
    pub fn column(self) -> &'static str {
        match self {
            By::Service => "service",
            By::User => "user",
            By::Feature => "feature",
        }
    }
}

/// One row of the daily report. Credits are thousandths.
#[derive(Debug, Clone, Row, Deserialize)]
pub struct DailyRow {
    pub day: u16,
    pub account: String,
    pub service: String,
    pub user: String,
    pub feature: String,
    pub calls: u64,
    pub failed_calls: u64,
    pub credits: i64,
    pub included: i64,
    pub promotional: i64,
    pub purchased: i64,
    pub shortfall: i64,
}

/// Daily usage from `from` to `to` inclusive, grouped by day, account and `by`.
pub async fn daily(
    client: &Client,
    from: NaiveDate,
    to: NaiveDate,
    account: Option<&str>,
    by: &[By],
) -> Result<Vec<DailyRow>, StoreError> {
    let column = |b: By| {
        if by.contains(&b) {
            b.column().to_string()
        } else {
            format!("'' AS {}", b.column())
        }
    };
    let mut group = vec!["day".to_string(), "account".to_string()];
    group.extend(by.iter().map(|b| b.column().to_string()));
    let account_filter = account
        .map(|a| format!("AND account = {}", quote(a)))
        .unwrap_or_default();
    let sql = format!(
        "SELECT day, account, {}, {}, {}, sum(calls), sum(failed_calls), sum(credits), \
         sum(included), sum(promotional), sum(purchased), sum(shortfall) \
         FROM daily_usage FINAL \
         WHERE day >= toDate({}) AND day <= toDate({}) {account_filter} \
         GROUP BY {} ORDER BY {}",
        column(By::Service),
        column(By::User),
        column(By::Feature),
        day_number(from),
        day_number(to),
        group.join(", "),
        group.join(", "),
    );
    Ok(client.query(&sql).fetch_all().await?)
}

/// Ledger rows of `account` with `from <= time < to`, oldest first.
pub async fn ledger(
    client: &Client,
    account: &str,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
) -> Result<Vec<LedgerRow>, StoreError> {
    Ok(client
        .query(
            "SELECT ?fields FROM ledger FINAL \
             WHERE account = ? AND time >= toDateTime(?) AND time < toDateTime(?) \
             ORDER BY time, entry_id",
        )
        .bind(account)
        .bind(super::rows::seconds(from))
        .bind(super::rows::seconds(to))
        .fetch_all()
        .await?)
}

/// The last checkpoint of one partition.
#[derive(Debug, Clone, Row, Deserialize)]
pub struct CheckpointSummary {
    pub partition: u32,
    pub usage_offset: i64,
    pub commands_offset: i64,
    pub written_at: u32,
}

/// The committed offsets of every partition of `stream`.
pub async fn checkpoints(
    client: &Client,
    stream: &str,
) -> Result<Vec<CheckpointSummary>, StoreError> {
    Ok(client
        .query(
            "SELECT partition, argMax(usage_offset, version), argMax(commands_offset, version), \
             max(written_at) FROM checkpoints \
             WHERE stream = ? AND row_kind = 'offsets' GROUP BY partition ORDER BY partition",
        )
        .bind(stream)
        .fetch_all()
        .await?)
}
