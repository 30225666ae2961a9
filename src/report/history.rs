//! `tally history` / `GET /v1/accounts/{account}/history`: credits granted and expired,
//! voids and settlements, typed as the product names them [000]; or only purchases.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use clickhouse::Client;
use serde::Serialize;
use tally_core::{Credits, EntryType, LotKind};

use super::{credits, rfc3339, table_time, zone_title, ReportError, Tabular};
use crate::store::rows::{from_seconds, LedgerRow};
use crate::store::{self, reads, StoreError};

/// The history of one account, oldest first.
#[derive(Debug, Clone, Default, Serialize)]
#[serde(transparent)]
pub struct History {
    #[serde(skip)]
    pub account: String,
    #[serde(skip)]
    pub purchases: bool,
    /// The zone of the table's times (the CLI sets the account's); JSON and CSV keep UTC.
    #[serde(skip)]
    pub zone: Option<chrono_tz::Tz>,
    pub entries: Vec<HistoryEntry>,
}

#[derive(Debug, Clone, Serialize)]
pub struct HistoryEntry {
    #[serde(serialize_with = "rfc3339")]
    pub time: DateTime<Utc>,
    /// plan subscription, top-up (card), top-up (cash), top-up, promotional, expired,
    /// voided, shortfall settled.
    #[serde(rename = "type")]
    pub history_type: &'static str,
    pub entry_type: String,
    pub pool: String,
    pub credits: Credits,
    pub lot: String,
    pub kind: String,
    /// RFC 3339, `never`, or empty when the lot is unknown.
    pub expires_at: String,
    pub payment_method: String,
    pub payment_reference: String,
    pub comment: String,
}

/// How credits arrived or left, as the history names it [000]. Unknown stored names are an
/// error naming table, column and value.
pub fn history_type(row: &LedgerRow) -> Result<&'static str, StoreError> {
    let entry_type = store::stored(
        &store::ENTRY_TYPES,
        EntryType::as_str,
        "ledger",
        "entry_type",
        &row.entry_type,
    )?;
    match entry_type {
        EntryType::Expiry => return Ok("expired"),
        EntryType::Void => return Ok("voided"),
        EntryType::Settlement => return Ok("shortfall settled"),
        // Moves no credits; the history query does not select it.
        EntryType::HoldExpired => return Ok("hold expired"),
        EntryType::Grant | EntryType::Usage => {}
    }
    match row.payment_method.as_str() {
        "cash" => return Ok("top-up (cash)"),
        "card" => return Ok("top-up (card)"),
        "" => {}
        other => {
            return Err(StoreError::UnknownValue {
                table: "ledger",
                column: "payment_method",
                value: other.to_string(),
            })
        }
    }
    let kind = store::stored(
        &store::LOT_KINDS,
        LotKind::as_str,
        "ledger",
        "lot_kind",
        &row.lot_kind,
    )?;
    Ok(match kind {
        LotKind::Included => "plan subscription",
        LotKind::Purchased => "top-up",
        LotKind::Promotional | LotKind::Flex => "promotional",
    })
}

/// Reads the history of `account`; `purchases` keeps only bought packs.
pub async fn load(client: &Client, account: &str, purchases: bool) -> Result<History, ReportError> {
    let mut rows = reads::history(client, account)
        .await
        .map_err(ReportError::read("the ledger"))?;
    if purchases {
        rows.retain(|r| r.entry_type == "grant" && r.lot_kind == "purchased");
    }
    let lots: BTreeMap<String, tally_core::Lot> = reads::lots(client, account)
        .await
        .map_err(ReportError::read("lots"))?
        .into_iter()
        .map(|lot| (lot.id.to_string(), lot))
        .collect();
    let expires = |lot: &str| {
        lots.get(lot)
            .map(|l| {
                l.expires_at
                    .map(|e| e.to_rfc3339())
                    .unwrap_or_else(|| "never".into())
            })
            .unwrap_or_default()
    };
    let entries = rows
        .iter()
        .map(|r| {
            Ok(HistoryEntry {
                time: from_seconds(r.time),
                history_type: history_type(r).map_err(ReportError::read("the ledger"))?,
                entry_type: r.entry_type.clone(),
                pool: r.pool.clone(),
                credits: credits(r.credits),
                lot: r.lot.clone(),
                kind: r.lot_kind.clone(),
                expires_at: expires(&r.lot),
                payment_method: r.payment_method.clone(),
                payment_reference: r.payment_reference.clone(),
                comment: r.comment.clone(),
            })
        })
        .collect::<Result<Vec<_>, ReportError>>()?;
    Ok(History {
        account: account.to_string(),
        purchases,
        entries,
        zone: None,
    })
}

impl Tabular for History {
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
            "type",
            "pool",
            "credits",
            "lot",
            "expires",
            "reference",
            "comment",
        ]
    }

    fn rows(&self) -> Vec<Vec<String>> {
        self.entries
            .iter()
            .map(|r| {
                vec![
                    table_time(&r.time, self.zone),
                    r.history_type.to_string(),
                    r.pool.clone(),
                    r.credits.to_string(),
                    r.lot.clone(),
                    r.expires_at.clone(),
                    r.payment_reference.clone(),
                    r.comment.clone(),
                ]
            })
            .collect()
    }

    fn empty(&self) -> Option<String> {
        Some(format!(
            "no {} for `{}`",
            if self.purchases {
                "purchases"
            } else {
                "history"
            },
            self.account
        ))
    }
}
