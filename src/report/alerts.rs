//! `tally alerts` / `GET /v1/accounts/{account}/alerts`: every low-credit alert of an
//! account, oldest first, with its email's status, attempts, recipients, times and error.

use chrono::{DateTime, Utc};
use clickhouse::Client;
use serde::Serialize;
use tally_core::Credits;

use super::{credits, rfc3339, rfc3339_opt, table_time, zone_title, ReportError, Tabular};
use crate::store;
use crate::store::rows::from_seconds;

#[derive(Debug, Clone, Default, Serialize)]
#[serde(transparent)]
pub struct Alerts {
    pub alerts: Vec<AlertEntry>,
    /// The zone of the table's times (the CLI sets the account's); JSON and CSV keep UTC.
    #[serde(skip)]
    pub zone: Option<chrono_tz::Tz>,
}

#[derive(Debug, Clone, Serialize)]
pub struct AlertEntry {
    pub alert_id: String,
    pub account: String,
    pub pool: String,
    pub kind: String,
    pub threshold: Credits,
    pub balance: Credits,
    #[serde(serialize_with = "rfc3339")]
    pub time: DateTime<Utc>,
    pub locale: String,
    pub recipients: Vec<String>,
    /// `pending`, `sent`, `suppressed` or `failed`.
    pub status: String,
    pub attempts: u32,
    pub error: String,
    pub digest_of: Vec<String>,
    pub sent_in: String,
    #[serde(serialize_with = "rfc3339")]
    pub created_at: DateTime<Utc>,
    #[serde(serialize_with = "rfc3339_opt")]
    pub sent_at: Option<DateTime<Utc>>,
    #[serde(serialize_with = "rfc3339")]
    pub updated_at: DateTime<Utc>,
}

/// Reads the alerts of `account`.
pub async fn load(client: &Client, account: &str) -> Result<Alerts, ReportError> {
    let rows = store::alerts::of_account(client, account)
        .await
        .map_err(ReportError::read("the alerts"))?;
    let when = |secs: u32| (secs > 0).then(|| from_seconds(secs));
    Ok(Alerts {
        alerts: rows
            .iter()
            .map(|r| AlertEntry {
                alert_id: r.alert_id.clone(),
                account: r.account.clone(),
                pool: r.pool.clone(),
                kind: r.kind.clone(),
                threshold: credits(r.threshold),
                balance: credits(r.balance),
                time: from_seconds(r.time),
                locale: r.locale.clone(),
                recipients: r.recipients.clone(),
                status: r.status.clone(),
                attempts: r.attempts,
                error: r.error.clone(),
                digest_of: r.digest_of.clone(),
                sent_in: r.sent_in.clone(),
                created_at: from_seconds(r.created_at),
                sent_at: when(r.sent_at),
                updated_at: from_seconds(r.updated_at),
            })
            .collect(),
        zone: None,
    })
}

impl Tabular for Alerts {
    fn title(&self) -> Option<String> {
        zone_title(self.zone)
    }

    fn header(&self) -> Vec<&'static str> {
        vec![
            if self.zone.is_some() {
                "time"
            } else {
                "time (UTC)"
            },
            "kind",
            "pool",
            "threshold",
            "balance",
            "status",
            "attempts",
            "recipients",
            if self.zone.is_some() {
                "sent"
            } else {
                "sent (UTC)"
            },
            "error",
        ]
    }

    fn rows(&self) -> Vec<Vec<String>> {
        self.alerts
            .iter()
            .map(|r| {
                let status = if r.sent_in.is_empty() {
                    r.status.clone()
                } else {
                    format!("{} (sent in {})", r.status, r.sent_in)
                };
                vec![
                    table_time(&r.time, self.zone),
                    r.kind.clone(),
                    r.pool.clone(),
                    r.threshold.to_string(),
                    r.balance.to_string(),
                    status,
                    r.attempts.to_string(),
                    r.recipients.join(" "),
                    r.sent_at.map_or("-".into(), |t| table_time(&t, self.zone)),
                    r.error.clone(),
                ]
            })
            .collect()
    }
}
