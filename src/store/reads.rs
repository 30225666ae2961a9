//! The reads behind `tally balance`, `report daily`, `report monthly`, `ledger` and
//! `history`. Every read uses FINAL, so a row written twice by a retry or a replay counts once.

use chrono::{DateTime, NaiveDate, Utc};
use clickhouse::{Client, Row};
use serde::Deserialize;
use tally_core::{AccountState, Credits, Lot};

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
    rows.iter().map(LotRow::to_lot).collect()
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
    pub flex: i64,
}

/// The columns both daily tables have, in one order.
const DAILY_COLUMNS: &str = "day, account, service, user, feature, calls, failed_calls, \
     credits, included, promotional, purchased, shortfall, flex";

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
    let filter = format!(
        "WHERE day >= toDate({}) AND day <= toDate({}) {account_filter}",
        day_number(from),
        day_number(to)
    );
    // The segments of a day add up; rows of the legacy table (written before segments)
    // add to them.
    let sql = format!(
        "SELECT day, account, {}, {}, {}, sum(calls), sum(failed_calls), sum(credits), \
         sum(included), sum(promotional), sum(purchased), sum(shortfall), sum(flex) \
         FROM (SELECT {DAILY_COLUMNS} FROM daily_rollups FINAL {filter} \
         UNION ALL SELECT {DAILY_COLUMNS} FROM daily_usage FINAL {filter}) \
         GROUP BY {} ORDER BY {}",
        column(By::Service),
        column(By::User),
        column(By::Feature),
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

#[derive(Debug, Row, Deserialize)]
struct StateText {
    #[serde(with = "serde_bytes")]
    state: Vec<u8>,
}

/// The account's state as of the last committed flush, if any flush included it.
pub async fn account_state(
    client: &Client,
    account: &str,
) -> Result<Option<AccountState>, StoreError> {
    let row: Option<StateText> = client
        .query(
            "SELECT argMax(state, version) AS state FROM checkpoints \
             WHERE row_kind = 'state' AND account = ? \
             AND (stream, partition, version) IN \
                 (SELECT stream, partition, version FROM checkpoints WHERE row_kind = 'offsets') \
             GROUP BY account",
        )
        .bind(account)
        .fetch_optional()
        .await?;
    row.map(|row| {
        super::state_codec::decode(&row.state).map_err(|e| StoreError::State {
            account: account.to_string(),
            problem: e.to_string(),
        })
    })
    .transpose()
}

#[derive(Debug, Row, Deserialize)]
pub struct PoolSum {
    pub pool: String,
    pub credits: i64,
}

/// Credits of successful calls per pool from `since` on (thousandths).
pub async fn used_since(
    client: &Client,
    account: &str,
    since: DateTime<Utc>,
) -> Result<Vec<PoolSum>, StoreError> {
    Ok(client
        .query(
            "SELECT pool, sum(credits) FROM ledger FINAL \
             WHERE account = ? AND entry_type = 'usage' AND time >= toDateTime(?) \
             GROUP BY pool ORDER BY pool",
        )
        .bind(account)
        .bind(super::rows::seconds(since))
        .fetch_all()
        .await?)
}

/// Credits calls used per pool of `account` from `from` (inclusive) to `to` (exclusive):
/// the burn of the runway.
pub async fn used_between(
    client: &Client,
    account: &str,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
) -> Result<Vec<PoolSum>, StoreError> {
    Ok(client
        .query(
            "SELECT pool, sum(credits) FROM ledger FINAL \
             WHERE account = ? AND entry_type = 'usage' AND time >= toDateTime(?) \
             AND time < toDateTime(?) GROUP BY pool ORDER BY pool",
        )
        .bind(account)
        .bind(super::rows::seconds(from))
        .bind(super::rows::seconds(to))
        .fetch_all()
        .await?)
}

/// One flow of credits in the monthly summary: per account, pool, entry type and kind,
/// whether it falls before the range or in it. Thousandths.
#[derive(Debug, Clone, Row, Deserialize)]
pub struct Flow {
    pub account: String,
    pub pool: String,
    pub entry_type: String,
    pub kind: String,
    pub in_range: u8,
    pub credits: i64,
}

/// Every movement of credits up to `to` (exclusive, local days), split at `from`: grants,
/// expiries and voids by lot kind, and what lots and flex paid for calls and settlements.
pub async fn flows(
    client: &Client,
    from: NaiveDate,
    to: NaiveDate,
    account: Option<&str>,
) -> Result<Vec<Flow>, StoreError> {
    let (from, to) = (day_number(from), day_number(to));
    let account_filter = account
        .map(|a| format!("AND account = {}", quote(a)))
        .unwrap_or_default();
    let lots_sql = format!(
        "SELECT account, pool, entry_type, lot_kind AS kind, toUInt8(day >= toDate({from})) AS in_range, \
         sum(credits) AS credits FROM ledger FINAL \
         WHERE entry_type IN ('grant', 'expiry', 'void') AND day < toDate({to}) {account_filter} \
         GROUP BY account, pool, entry_type, kind, in_range"
    );
    let paid_sql = format!(
        "SELECT account, pool, entry_type, kind, toUInt8(day >= toDate({from})) AS in_range, \
         sum(paid) AS credits FROM ledger FINAL \
         ARRAY JOIN paid_kinds AS kind, paid_credits AS paid \
         WHERE entry_type IN ('usage', 'settlement') AND day < toDate({to}) {account_filter} \
         GROUP BY account, pool, entry_type, kind, in_range"
    );
    let shortfall_sql = format!(
        "SELECT account, pool, entry_type, 'shortfall' AS kind, toUInt8(1) AS in_range, \
         sum(shortfall) AS credits FROM ledger FINAL \
         WHERE entry_type = 'usage' AND day >= toDate({from}) AND day < toDate({to}) \
         {account_filter} GROUP BY account, pool, entry_type"
    );
    let mut flows: Vec<Flow> = client.query(&lots_sql).fetch_all().await?;
    flows.extend(client.query(&paid_sql).fetch_all::<Flow>().await?);
    flows.extend(client.query(&shortfall_sql).fetch_all::<Flow>().await?);
    Ok(flows)
}

/// Grants, expiries, voids and settlements of `account`, oldest first.
pub async fn history(client: &Client, account: &str) -> Result<Vec<LedgerRow>, StoreError> {
    Ok(client
        .query(
            "SELECT ?fields FROM ledger FINAL \
             WHERE account = ? AND entry_type IN ('grant', 'expiry', 'void', 'settlement') \
             ORDER BY time, entry_id",
        )
        .bind(account)
        .fetch_all()
        .await?)
}

/// The `limit` features or users (`column`) with the most credits in `account`'s calls
/// since `since`, largest first.
pub async fn top_usage(
    client: &Client,
    account: &str,
    column: By,
    since: DateTime<Utc>,
    limit: u64,
) -> Result<Vec<(String, Credits)>, StoreError> {
    #[derive(Row, Deserialize)]
    struct Top {
        name: String,
        credits: i64,
    }
    let sql = format!(
        "SELECT {} AS name, sum(credits) AS credits FROM ledger FINAL \
         WHERE account = ? AND entry_type = 'usage' AND time >= toDateTime(?) \
         GROUP BY name HAVING credits > 0 ORDER BY credits DESC, name LIMIT {limit}",
        column.column()
    );
    let rows: Vec<Top> = client
        .query(&sql)
        .bind(account)
        .bind(super::rows::seconds(since))
        .fetch_all()
        .await?;
    Ok(rows
        .into_iter()
        .map(|t| (t.name, Credits::from_milli(t.credits)))
        .collect())
}
