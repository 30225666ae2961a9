//! `tally ledger` / `GET /v1/accounts/{account}/ledger`: calls, grants, voids, expiries
//! and settlements of one account with the lots that paid, oldest first; the API pages it
//! with a cursor.

use chrono::{DateTime, NaiveDate, Utc};
use clickhouse::Client;
use serde::Serialize;
use tally_core::Credits;

use super::{credits, rfc3339, table_time, zone_title, ReportError, Tabular};
use crate::store::reads;
use crate::store::rows::{from_day_number, from_seconds, seconds, LedgerRow};

/// Ledger entries, oldest first.
#[derive(Debug, Clone, Default, Serialize)]
#[serde(transparent)]
pub struct Ledger {
    pub entries: Vec<LedgerEntry>,
    /// The zone of the table's times (the CLI sets the account's); JSON and CSV keep UTC.
    #[serde(skip)]
    pub zone: Option<chrono_tz::Tz>,
}

/// One ledger row.
#[derive(Debug, Clone, Serialize)]
pub struct LedgerEntry {
    pub entry_id: String,
    /// `usage`, `grant`, `void`, `expiry` or `settlement`.
    #[serde(rename = "type")]
    pub entry_type: String,
    #[serde(serialize_with = "rfc3339")]
    pub time: DateTime<Utc>,
    /// The account's local day.
    pub day: NaiveDate,
    pub account: String,
    pub service: String,
    pub user: String,
    pub feature: String,
    pub variant: String,
    pub quantity: Credits,
    pub status: String,
    pub pool: String,
    pub credits: Credits,
    /// The lots that paid, in order.
    pub paid: Vec<Paid>,
    pub shortfall: Credits,
    pub matrix_version: String,
    pub event_id: String,
    pub lot: String,
    pub lot_kind: String,
    pub payment_method: String,
    pub payment_reference: String,
    pub comment: String,
    /// On a call that named a hold, and on a `hold_expired` row: which hold, what became
    /// of it and what it had reserved; `null` otherwise.
    pub hold: Option<HoldNote>,
}

/// The hold a ledger row names.
#[derive(Debug, Clone, Serialize)]
pub struct HoldNote {
    pub id: String,
    /// `settled`, `unknown`, `already_settled`, `released` or `expired`.
    pub outcome: String,
    /// What the hold had reserved when the call settled it (or the clock released it);
    /// 0 for a hold the call could not settle.
    pub held: Credits,
}

/// What one lot paid for a ledger row.
#[derive(Debug, Clone, Serialize)]
pub struct Paid {
    pub lot: String,
    pub kind: String,
    pub credits: Credits,
}

impl From<&LedgerRow> for LedgerEntry {
    fn from(r: &LedgerRow) -> LedgerEntry {
        let paid = r
            .paid_lots
            .iter()
            .zip(&r.paid_kinds)
            .zip(&r.paid_credits)
            .map(|((lot, kind), c)| Paid {
                lot: lot.clone(),
                kind: kind.clone(),
                credits: credits(*c),
            })
            .collect();
        LedgerEntry {
            entry_id: r.entry_id.clone(),
            entry_type: r.entry_type.clone(),
            time: from_seconds(r.time),
            day: from_day_number(r.day),
            account: r.account.clone(),
            service: r.service.clone(),
            user: r.user.clone(),
            feature: r.feature.clone(),
            variant: r.variant.clone(),
            quantity: credits(r.quantity),
            status: r.status.clone(),
            pool: r.pool.clone(),
            credits: credits(r.credits),
            paid,
            shortfall: credits(r.shortfall),
            matrix_version: r.matrix_version.clone(),
            event_id: r.event_id.clone(),
            lot: r.lot.clone(),
            lot_kind: r.lot_kind.clone(),
            payment_method: r.payment_method.clone(),
            payment_reference: r.payment_reference.clone(),
            comment: r.comment.clone(),
            // Rows written before the hold columns existed read as empty: no hold.
            hold: (!r.hold_id.is_empty()).then(|| HoldNote {
                id: r.hold_id.clone(),
                outcome: r.hold_outcome.clone(),
                held: credits(r.hold_held),
            }),
        }
    }
}

/// Every ledger row of `account` with `from <= time < to`.
pub async fn load(
    client: &Client,
    account: &str,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
) -> Result<Ledger, ReportError> {
    let rows = reads::ledger(client, account, from, to)
        .await
        .map_err(ReportError::read("the ledger"))?;
    Ok(Ledger {
        entries: rows.iter().map(LedgerEntry::from).collect(),
        zone: None,
    })
}

/// Where a page of the ledger ends: the last row's time and entry id. Its text form is
/// opaque to clients (hex).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cursor {
    pub time: u32,
    pub entry_id: String,
}

impl Cursor {
    pub fn encode(&self) -> String {
        format!("{}:{}", self.time, self.entry_id)
            .bytes()
            .map(|b| format!("{b:02x}"))
            .collect()
    }

    /// `None` when `text` is not a cursor this server made.
    pub fn decode(text: &str) -> Option<Cursor> {
        if !text.len().is_multiple_of(2) || !text.is_ascii() {
            return None;
        }
        let bytes = (0..text.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&text[i..i + 2], 16).ok())
            .collect::<Option<Vec<u8>>>()?;
        let text = String::from_utf8(bytes).ok()?;
        let (time, entry_id) = text.split_once(':')?;
        Some(Cursor {
            time: time.parse().ok()?,
            entry_id: entry_id.to_string(),
        })
    }
}

/// At most `limit` rows of `account` with `from <= time < to` after `after`, and the
/// cursor of the next page if there is one.
pub async fn page(
    client: &Client,
    account: &str,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    after: Option<&Cursor>,
    limit: u64,
) -> Result<(Ledger, Option<Cursor>), ReportError> {
    // Explicit OR instead of a tuple comparison: the same on ClickHouse 18.16 and today.
    let (after_time, after_id) = after
        .map(|c| (c.time, c.entry_id.clone()))
        .unwrap_or((0, String::new()));
    let mut rows: Vec<LedgerRow> = client
        .query(&format!(
            "SELECT ?fields FROM ledger FINAL \
             WHERE account = ? AND time >= toDateTime(?) AND time < toDateTime(?) \
             AND (time > toDateTime(?) OR (time = toDateTime(?) AND entry_id > ?)) \
             ORDER BY time, entry_id LIMIT {}",
            limit + 1
        ))
        .bind(account)
        .bind(seconds(from))
        .bind(seconds(to))
        .bind(after_time)
        .bind(after_time)
        .bind(after_id)
        .fetch_all()
        .await
        .map_err(|e| ReportError::read("the ledger")(e.into()))?;
    let next = if rows.len() as u64 > limit {
        rows.truncate(limit as usize);
        rows.last().map(|r| Cursor {
            time: r.time,
            entry_id: r.entry_id.clone(),
        })
    } else {
        None
    };
    Ok((
        Ledger {
            entries: rows.iter().map(LedgerEntry::from).collect(),
            zone: None,
        },
        next,
    ))
}

impl Tabular for Ledger {
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
            "service",
            "user",
            "feature / lot",
            "status",
            "credits",
            "paid by",
            "shortfall",
            "hold",
            "hold outcome",
            "held",
        ]
    }

    fn rows(&self) -> Vec<Vec<String>> {
        self.entries
            .iter()
            .map(|r| {
                let paid = r
                    .paid
                    .iter()
                    .map(|p| format!("{}:{}", p.lot, p.credits))
                    .collect::<Vec<_>>()
                    .join(" ");
                let what = match r.entry_type.as_str() {
                    "usage" if r.variant.is_empty() => r.feature.clone(),
                    "usage" => format!("{}/{}", r.feature, r.variant),
                    _ => format!("{} {}", r.lot_kind, r.lot),
                };
                vec![
                    table_time(&r.time, self.zone),
                    r.entry_type.clone(),
                    r.service.clone(),
                    r.user.clone(),
                    what,
                    r.status.clone(),
                    r.credits.to_string(),
                    paid,
                    r.shortfall.to_string(),
                    r.hold.as_ref().map(|h| h.id.clone()).unwrap_or_default(),
                    r.hold
                        .as_ref()
                        .map(|h| h.outcome.clone())
                        .unwrap_or_default(),
                    r.hold
                        .as_ref()
                        .map(|h| h.held.to_string())
                        .unwrap_or_default(),
                ]
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::Cursor;

    #[test]
    fn cursors_round_trip_and_reject_garbage() {
        let c = Cursor {
            time: 1_790_000_000,
            entry_id: "ai.usage/3/17:x".into(),
        };
        assert_eq!(Cursor::decode(&c.encode()), Some(c));
        assert_eq!(Cursor::decode("zz"), None);
        assert_eq!(Cursor::decode("abc"), None);
        assert_eq!(Cursor::decode("61"), None);
    }
}
