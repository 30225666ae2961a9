//! The `webhooks` table: one row per webhook delivery (a notice to one endpoint) and its
//! status, written as pending by the flush that decides it (before its checkpoint), then by
//! the webhook worker; read back by the worker at start and on a replay.

use chrono::{DateTime, Utc};
use clickhouse::{Client, Row};
use serde::{Deserialize, Serialize};

use super::StoreError;

/// Delivery status, as stored.
pub mod status {
    /// Recorded; being sent or waiting for a retry.
    pub const PENDING: &str = "pending";
    /// The endpoint answered 2xx.
    pub const SENT: &str = "sent";
    /// Not delivered: refused (a private address, no secret) or every attempt failed.
    pub const FAILED: &str = "failed";
}

/// One version of a delivery's row. Times are seconds since 1970.
#[derive(Debug, Clone, PartialEq, Eq, Row, Serialize, Deserialize)]
pub struct WebhookRow {
    pub webhook_id: String,
    pub account: String,
    /// `account:ID` or `global:ID`.
    pub endpoint: String,
    pub rotation: u32,
    pub url: String,
    pub event_type: String,
    pub notice_id: String,
    pub payload: String,
    pub time: u32,
    pub status: String,
    pub attempts: u32,
    pub error: String,
    /// The last HTTP status the endpoint answered; 0 for none.
    pub response_status: u16,
    pub created_at: u32,
    pub sent_at: u32,
    pub updated_at: u32,
    pub version: u64,
}

impl WebhookRow {
    /// (account, webhook id, endpoint): what identifies a delivery.
    pub fn key(&self) -> (String, String, String) {
        (
            self.account.clone(),
            self.webhook_id.clone(),
            self.endpoint.clone(),
        )
    }
}

/// Writes `rows`, each replacing the earlier versions of its delivery.
pub async fn write(client: &Client, rows: &[WebhookRow]) -> Result<(), StoreError> {
    if rows.is_empty() {
        return Ok(());
    }
    let mut insert = super::writes::insert::<WebhookRow>(client, "webhooks").await?;
    for row in rows {
        insert.write(row).await?;
    }
    insert.end().await?;
    Ok(())
}

/// Every delivery of `account`, oldest first.
pub async fn of_account(client: &Client, account: &str) -> Result<Vec<WebhookRow>, StoreError> {
    Ok(client
        .query(
            "SELECT ?fields FROM webhooks FINAL WHERE account = ? \
             ORDER BY created_at, time, webhook_id, endpoint",
        )
        .bind(account)
        .fetch_all()
        .await?)
}

impl super::keyed::KeyedRow for WebhookRow {
    const TABLE: &'static str = "webhooks";
    const ID_COLUMN: &'static str = "webhook_id";
    fn key(&self) -> (&str, &str) {
        (&self.account, &self.webhook_id)
    }
}

/// The stored rows of these (account, webhook id) pairs, where they exist.
pub async fn find(client: &Client, keys: &[(&str, &str)]) -> Result<Vec<WebhookRow>, StoreError> {
    super::keyed::find(client, keys).await
}

/// Deliveries created since `since` that are still pending.
pub async fn unfinished(
    client: &Client,
    since: DateTime<Utc>,
) -> Result<Vec<WebhookRow>, StoreError> {
    // created_at never changes between versions, so it may filter before FINAL; the status
    // may not, so it is checked on the result.
    let rows: Vec<WebhookRow> = client
        .query(
            "SELECT ?fields FROM webhooks FINAL WHERE created_at >= toDateTime(?) \
             ORDER BY created_at, time, webhook_id, endpoint",
        )
        .bind(super::rows::seconds(since))
        .fetch_all()
        .await?;
    Ok(rows
        .into_iter()
        .filter(|r| r.status == status::PENDING)
        .collect())
}
