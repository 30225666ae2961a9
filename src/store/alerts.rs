//! The `alerts` table: one row per low-credit alert and its delivery status, written by the
//! notifier and read by `tally alerts` and by the notifier's recovery at start.

use chrono::{DateTime, Utc};
use clickhouse::{Client, Row};
use serde::{Deserialize, Serialize};

use super::StoreError;

/// Delivery status of an alert, as stored.
pub mod status {
    /// Recorded; being sent or waiting for a retry.
    pub const PENDING: &str = "pending";
    /// Delivered in its own email (which may have carried a digest of held-back alerts).
    pub const SENT: &str = "sent";
    /// Held back by the per-account limit; `sent_in` names the email that carried it once
    /// it went out.
    pub const SUPPRESSED: &str = "suppressed";
    /// Not delivered: no valid recipient, a permanent SMTP error, or every attempt failed.
    pub const FAILED: &str = "failed";
}

/// One version of an alert's row. Credits are thousandths, times seconds since 1970.
#[derive(Debug, Clone, PartialEq, Eq, Row, Serialize, Deserialize)]
pub struct AlertRow {
    pub alert_id: String,
    pub account: String,
    pub pool: String,
    pub kind: String,
    pub threshold: i64,
    pub balance: i64,
    pub time: u32,
    pub locale: String,
    pub recipients: Vec<String>,
    pub top_features: Vec<String>,
    pub top_feature_credits: Vec<i64>,
    pub top_users: Vec<String>,
    pub top_user_credits: Vec<i64>,
    pub status: String,
    pub attempts: u32,
    pub error: String,
    /// On an email's own alert: the held-back alerts it carried.
    pub digest_of: Vec<String>,
    /// On a held-back alert: the alert whose email carried it.
    pub sent_in: String,
    pub created_at: u32,
    pub sent_at: u32,
    pub updated_at: u32,
    pub version: u64,
}

/// Writes `rows`, each replacing the earlier versions of its alert.
pub async fn write(client: &Client, rows: &[AlertRow]) -> Result<(), StoreError> {
    if rows.is_empty() {
        return Ok(());
    }
    let mut insert = super::writes::insert::<AlertRow>(client, "alerts").await?;
    for row in rows {
        insert.write(row).await?;
    }
    insert.end().await?;
    Ok(())
}

/// Every alert of `account`, oldest first.
pub async fn of_account(client: &Client, account: &str) -> Result<Vec<AlertRow>, StoreError> {
    Ok(client
        .query(
            "SELECT ?fields FROM alerts FINAL WHERE account = ? \
             ORDER BY created_at, time, alert_id",
        )
        .bind(account)
        .fetch_all()
        .await?)
}

impl super::keyed::KeyedRow for AlertRow {
    const TABLE: &'static str = "alerts";
    const ID_COLUMN: &'static str = "alert_id";
    fn key(&self) -> (&str, &str) {
        (&self.account, &self.alert_id)
    }
}

/// The stored rows of these (account, alert id) pairs, where they exist.
pub async fn find(client: &Client, keys: &[(&str, &str)]) -> Result<Vec<AlertRow>, StoreError> {
    super::keyed::find(client, keys).await
}

/// Alerts created since `since` that still wait for delivery: pending, or held back and
/// not yet carried by any email.
pub async fn unfinished(
    client: &Client,
    since: DateTime<Utc>,
) -> Result<Vec<AlertRow>, StoreError> {
    // created_at never changes between versions, so it may filter before FINAL; the
    // status may not (an older version could match), so it is checked on the result.
    let rows: Vec<AlertRow> = client
        .query(
            "SELECT ?fields FROM alerts FINAL WHERE created_at >= toDateTime(?) \
             ORDER BY created_at, time, alert_id",
        )
        .bind(super::rows::seconds(since))
        .fetch_all()
        .await?;
    Ok(rows
        .into_iter()
        .filter(|r| {
            r.status == status::PENDING || (r.status == status::SUPPRESSED && r.sent_in.is_empty())
        })
        .collect())
}
