//! Rows as ClickHouse stores them (credits in thousandths, times in seconds, days since
//! 1970-01-01), and their conversion from the core's types.

use chrono::{DateTime, NaiveDate, Utc};
use clickhouse::Row;
use serde::{Deserialize, Serialize};
use tally_core::account::balance;
use tally_core::{Credits, Lot, LotKind};

#[derive(Debug, Clone, PartialEq, Row, Serialize, Deserialize)]
pub struct LedgerRow {
    pub entry_id: String,
    pub account: String,
    pub entry_type: String,
    pub time: u32,
    pub day: u16,
    pub service: String,
    pub user: String,
    pub feature: String,
    pub variant: String,
    pub quantity: i64,
    pub status: String,
    pub pool: String,
    pub credits: i64,
    pub paid_lots: Vec<String>,
    pub paid_kinds: Vec<String>,
    pub paid_credits: Vec<i64>,
    pub shortfall: i64,
    pub matrix_version: String,
    pub event_id: String,
    pub lot: String,
    pub lot_kind: String,
    pub payment_method: String,
    pub payment_reference: String,
    pub comment: String,
    pub version: u64,
    /// The hold a usage row named (`data.hold`), or the hold a `hold_expired` row
    /// released; empty otherwise.
    pub hold_id: String,
    /// What became of that hold (`SettleOutcome::as_str`); empty when no hold was named.
    pub hold_outcome: String,
    /// What the hold had reserved when the call settled it or the clock released it
    /// (thousandths); 0 for the other outcomes.
    pub hold_held: i64,
    /// The Kafka partition whose flush wrote the row: it picks the shard on a cluster
    /// (`store::cluster::shard_of`); set when the flush is built.
    pub partition: u32,
}

#[derive(Debug, Clone, PartialEq, Row, Serialize, Deserialize)]
pub struct LotRow {
    pub account: String,
    pub lot: String,
    pub pool: String,
    pub kind: String,
    pub granted: i64,
    pub remaining: i64,
    pub effective_at: u32,
    pub expires_at: u32,
    pub never_expires: u8,
    pub priority: i32,
    pub has_priority: u8,
    pub seq: u64,
    pub voided: u8,
    pub version: u64,
    pub expired: u8,
    pub from_plan: u8,
    /// The Kafka partition whose flush wrote the row: it picks the shard on a cluster
    /// (`store::cluster::shard_of`); set when the flush is built.
    pub partition: u32,
}

/// One `daily_rollups` row as tally writes it: absolute totals of one open day within
/// one segment of the log.
#[derive(Debug, Clone, PartialEq, Row, Serialize, Deserialize)]
pub struct DailyUsageRow {
    pub day: u16,
    pub account: String,
    pub service: String,
    pub user: String,
    pub feature: String,
    pub segment: u64,
    pub calls: u64,
    pub failed_calls: u64,
    pub credits: i64,
    pub included: i64,
    pub promotional: i64,
    pub purchased: i64,
    pub shortfall: i64,
    pub flex: i64,
    pub version: u64,
    /// The Kafka partition whose flush wrote the row: it picks the shard on a cluster
    /// (`store::cluster::shard_of`); set when the flush is built.
    pub partition: u32,
}

#[derive(Debug, Clone, PartialEq, Row, Serialize, Deserialize)]
pub struct BalanceRow {
    pub account: String,
    pub pool: String,
    pub available: i64,
    pub included: i64,
    pub promotional: i64,
    pub purchased: i64,
    pub as_of: u32,
    pub version: u64,
    /// The Kafka partition whose flush wrote the row: it picks the shard on a cluster
    /// (`store::cluster::shard_of`); set when the flush is built.
    pub partition: u32,
}

#[derive(Debug, Clone, PartialEq, Row, Serialize, Deserialize)]
pub struct CheckpointRow {
    pub stream: String,
    pub partition: u32,
    pub row_kind: String,
    pub account: String,
    pub key_hi: u64,
    pub key_lo: u64,
    pub version: u64,
    pub usage_offset: i64,
    pub commands_offset: i64,
    pub arrival_high: i64,
    /// An account state (`state_codec`), or an open day's totals (`StoredDay::encode`; JSON
    /// in rows of earlier versions).
    #[serde(with = "serde_bytes")]
    pub state: Vec<u8>,
    pub seen_at: i64,
    pub written_at: u32,
    /// The claim (its version) of the owner that wrote the row: only the rows of the
    /// claims a load's lineage names count (`checkpoint::Lineage`). 0 before fencing.
    pub claim: u64,
}

pub fn seconds(at: DateTime<Utc>) -> u32 {
    u32::try_from(at.timestamp().max(0)).unwrap_or(u32::MAX)
}

pub fn from_seconds(secs: u32) -> DateTime<Utc> {
    DateTime::from_timestamp(i64::from(secs), 0).unwrap_or_default()
}

const EPOCH: NaiveDate = NaiveDate::from_ymd_opt(1970, 1, 1).expect("valid date");

pub fn day_number(day: NaiveDate) -> u16 {
    u16::try_from((day - EPOCH).num_days().max(0)).unwrap_or(u16::MAX)
}

pub fn from_day_number(days: u16) -> NaiveDate {
    EPOCH + chrono::TimeDelta::days(i64::from(days))
}

impl LedgerRow {
    /// The row of an entry as tally built it before it encoded entries straight into an
    /// INSERT's bytes (`ledger_block`): what the simulation and the encoding's tests
    /// expect.
    #[cfg(test)]
    pub fn new(entry_id: String, entry: tally_core::LedgerEntry, version: u64) -> Self {
        let mut paid_lots = Vec::with_capacity(entry.paid.len());
        let mut paid_kinds = Vec::with_capacity(entry.paid.len());
        let mut paid_credits = Vec::with_capacity(entry.paid.len());
        for payment in entry.paid {
            paid_lots.push(payment.lot.into());
            paid_kinds.push(payment.kind.as_str().to_string());
            paid_credits.push(payment.credits.milli());
        }
        let (hold_id, hold_outcome, hold_held) = match entry.hold {
            Some(hold) => (
                hold.id,
                hold.outcome.as_str().to_string(),
                hold.held.milli(),
            ),
            None => (String::new(), String::new(), 0),
        };
        LedgerRow {
            entry_id,
            account: entry.account.into(),
            entry_type: entry.entry_type.as_str().to_string(),
            time: seconds(entry.time),
            day: day_number(entry.day),
            service: entry.service.into(),
            user: entry.user.into(),
            feature: entry.feature.into(),
            variant: entry.variant.into(),
            quantity: entry.quantity.milli(),
            status: entry.status.as_str().to_string(),
            pool: entry.pool.into(),
            credits: entry.credits.milli(),
            paid_lots,
            paid_kinds,
            paid_credits,
            shortfall: entry.shortfall.milli(),
            matrix_version: entry.matrix_version.into(),
            event_id: entry.event_id.into(),
            lot: entry.lot,
            lot_kind: entry
                .lot_kind
                .map(|k| k.as_str().to_string())
                .unwrap_or_default(),
            payment_method: entry
                .payment_method
                .map(|m| format!("{m:?}").to_lowercase())
                .unwrap_or_default(),
            payment_reference: entry.payment_reference,
            comment: entry.comment,
            version,
            hold_id,
            hold_outcome,
            hold_held,
            partition: 0,
        }
    }
}

impl LotRow {
    pub fn new(account: &str, lot: &Lot, version: u64) -> Self {
        LotRow {
            account: account.to_string(),
            lot: lot.id.to_string(),
            pool: lot.pool.to_string(),
            kind: lot.kind.as_str().to_string(),
            granted: lot.granted.milli(),
            remaining: lot.remaining.milli(),
            effective_at: seconds(lot.effective_at),
            expires_at: lot.expires_at.map(seconds).unwrap_or(0),
            never_expires: u8::from(lot.expires_at.is_none()),
            priority: lot.priority.unwrap_or(0),
            has_priority: u8::from(lot.priority.is_some()),
            seq: lot.seq,
            voided: u8::from(lot.voided),
            version,
            expired: u8::from(lot.expired),
            from_plan: u8::from(lot.from_plan),
            partition: 0,
        }
    }

    /// What the rows of `lots` show, every column but the account, version and partition,
    /// hashed with `hasher`: equal fingerprints, the rows written before still show them.
    /// Beside [`LotRow::new`] on purpose: a column added there is hashed here.
    pub fn fingerprint(lots: &[Lot], mut hasher: impl std::hash::Hasher) -> u64 {
        let text = |hasher: &mut dyn std::hash::Hasher, s: &str| {
            hasher.write_usize(s.len());
            hasher.write(s.as_bytes());
        };
        hasher.write_usize(lots.len());
        for lot in lots {
            text(&mut hasher, lot.id.as_str());
            text(&mut hasher, lot.pool.as_str());
            text(&mut hasher, lot.kind.as_str());
            hasher.write_i64(lot.granted.milli());
            hasher.write_i64(lot.remaining.milli());
            hasher.write_u32(seconds(lot.effective_at));
            hasher.write_u32(lot.expires_at.map(seconds).unwrap_or(0));
            hasher.write_u8(u8::from(lot.expires_at.is_none()));
            hasher.write_i32(lot.priority.unwrap_or(0));
            hasher.write_u8(u8::from(lot.priority.is_some()));
            hasher.write_u64(lot.seq);
            hasher.write_u8(u8::from(lot.voided));
            hasher.write_u8(u8::from(lot.expired));
            hasher.write_u8(u8::from(lot.from_plan));
        }
        hasher.finish()
    }

    /// Back to the core's lot, for balances computed at read time; a kind no lot has is
    /// an error, never read as some default kind.
    pub fn to_lot(&self) -> Result<Lot, super::StoreError> {
        let kind = super::stored(&LotKind::ALL, LotKind::as_str, "lots", "kind", &self.kind)?;
        Ok(Lot {
            id: self.lot.as_str().into(),
            pool: self.pool.as_str().into(),
            kind,
            granted: Credits::from_milli(self.granted),
            remaining: Credits::from_milli(self.remaining),
            effective_at: from_seconds(self.effective_at),
            expires_at: (self.never_expires == 0).then(|| from_seconds(self.expires_at)),
            priority: (self.has_priority == 1).then_some(self.priority),
            seq: self.seq,
            voided: self.voided == 1,
            expired: self.expired == 1,
            from_plan: self.from_plan == 1,
            // The `lots` table has no column for held credits yet (holds are not routed by
            // the shell yet); until it does, balances read from it count them as available.
            held: Credits::ZERO,
        })
    }
}

/// One balance row per pool of `lots`, as of `at`.
pub fn balance_rows(
    account: &str,
    lots: &[Lot],
    at: DateTime<Utc>,
    version: u64,
) -> Vec<BalanceRow> {
    balance(lots, at)
        .into_iter()
        .map(|(pool, b)| {
            let kind = |k: LotKind| {
                b.by_kind
                    .get(k.as_str())
                    .copied()
                    .unwrap_or_default()
                    .milli()
            };
            BalanceRow {
                account: account.to_string(),
                pool,
                available: b.available.milli(),
                included: kind(LotKind::Included),
                promotional: kind(LotKind::Promotional),
                purchased: kind(LotKind::Purchased),
                as_of: seconds(at),
                version,
                partition: 0,
            }
        })
        .collect()
}
