//! `tally report monthly` / `GET /v1/reports/monthly`: per account and pool, free
//! (included and promotional) and purchased apart: carried forward, allocated, consumed,
//! expired, voided, remaining; flex and shortfall.

use std::collections::BTreeMap;

use chrono::NaiveDate;
use clickhouse::Client;
use serde::Serialize;
use tally_core::{Credits, EntryType, LotKind};

use super::{credits, ReportError, Tabular};
use crate::store::{self, reads, StoreError};

/// The summary of local days `from..to` (exclusive).
#[derive(Debug, Clone, Serialize)]
#[serde(transparent)]
pub struct Monthly {
    #[serde(skip)]
    pub from: NaiveDate,
    #[serde(skip)]
    pub to: NaiveDate,
    pub rows: Vec<MonthlyEntry>,
}

/// One account and pool.
#[derive(Debug, Clone, Serialize)]
pub struct MonthlyEntry {
    pub account: String,
    pub pool: String,
    pub from: NaiveDate,
    /// Exclusive.
    pub to: NaiveDate,
    pub free: Movement,
    pub purchased: Movement,
    pub flex: Credits,
    pub shortfall: Credits,
    /// What lots and flex paid in the range, all kinds together.
    pub consumed: Credits,
}

/// One side (free or purchased) of the monthly summary.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Movement {
    pub carried_forward: Credits,
    pub allocated: Credits,
    pub consumed: Credits,
    pub expired: Credits,
    pub voided: Credits,
    pub remaining: Credits,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Summary {
    pub free: Movement,
    pub purchased: Movement,
    /// Thousandths.
    pub flex: i64,
    pub shortfall: i64,
}

/// Reads local days `from..to` (exclusive), of `account` or of all accounts.
pub async fn load(
    client: &Client,
    from: NaiveDate,
    to: NaiveDate,
    account: Option<&str>,
) -> Result<Monthly, ReportError> {
    if to <= from {
        return Err(ReportError::BadParameter {
            param: "to",
            problem: format!("must be after from {from}"),
        });
    }
    let flows = reads::flows(client, from, to, account)
        .await
        .map_err(ReportError::read("the ledger"))?;
    let rows = summarize(&flows)
        .map_err(ReportError::read("the ledger"))?
        .into_iter()
        .map(|((account, pool), s)| MonthlyEntry {
            account,
            pool,
            from,
            to,
            free: s.free,
            purchased: s.purchased,
            flex: credits(s.flex),
            shortfall: credits(s.shortfall),
            consumed: credits(s.free.consumed.milli() + s.purchased.consumed.milli() + s.flex),
        })
        .collect();
    Ok(Monthly { from, to, rows })
}

/// Folds the ledger's flows into opening balance, movements and closing balance.
/// A stored entry type or lot kind that is unknown is an error, never counted as some
/// default movement.
pub fn summarize(flows: &[reads::Flow]) -> Result<BTreeMap<(String, String), Summary>, StoreError> {
    let mut out: BTreeMap<(String, String), Summary> = BTreeMap::new();
    for flow in flows {
        let summary = out
            .entry((flow.account.clone(), flow.pool.clone()))
            .or_default();
        let amount = credits(flow.credits);
        let entry_type = store::stored(
            &store::ENTRY_TYPES,
            EntryType::as_str,
            "ledger",
            "entry_type",
            &flow.entry_type,
        )?;
        if flow.kind == "shortfall" {
            summary.shortfall += flow.credits;
            continue;
        }
        let kind = store::stored(
            &store::LOT_KINDS,
            LotKind::as_str,
            "ledger",
            "kind",
            &flow.kind,
        )?;
        if kind == LotKind::Flex {
            if flow.in_range == 1 {
                summary.flex += flow.credits;
            }
            continue;
        }
        let part = if kind == LotKind::Purchased {
            &mut summary.purchased
        } else {
            &mut summary.free
        };
        // Grants add; calls and settlements take what lots paid; expiries and voids are
        // stored as negative amounts.
        let change = match entry_type {
            EntryType::Usage | EntryType::Settlement => -amount,
            EntryType::Grant | EntryType::Expiry | EntryType::Void => amount,
            // A hold's expiry moves no credits (the flows query does not select it).
            EntryType::HoldExpired => continue,
        };
        if flow.in_range == 0 {
            part.carried_forward += change;
            continue;
        }
        match entry_type {
            EntryType::Grant => part.allocated += amount,
            EntryType::Usage | EntryType::Settlement => part.consumed += amount,
            EntryType::Expiry => part.expired -= amount,
            EntryType::Void => part.voided -= amount,
            EntryType::HoldExpired => {}
        }
    }
    for summary in out.values_mut() {
        for part in [&mut summary.free, &mut summary.purchased] {
            part.remaining =
                part.carried_forward + part.allocated - part.consumed - part.expired - part.voided;
        }
    }
    Ok(out)
}

impl Tabular for Monthly {
    fn header(&self) -> Vec<&'static str> {
        vec![
            "account",
            "pool",
            "credits",
            "carried forward",
            "allocated",
            "consumed",
            "expired",
            "voided",
            "remaining",
        ]
    }

    fn rows(&self) -> Vec<Vec<String>> {
        let mut rows = Vec::new();
        for r in &self.rows {
            for (name, part) in [("free", &r.free), ("purchased", &r.purchased)] {
                rows.push(vec![
                    r.account.clone(),
                    r.pool.clone(),
                    name.to_string(),
                    part.carried_forward.to_string(),
                    part.allocated.to_string(),
                    part.consumed.to_string(),
                    part.expired.to_string(),
                    part.voided.to_string(),
                    part.remaining.to_string(),
                ]);
            }
            rows.push(vec![
                r.account.clone(),
                r.pool.clone(),
                "flex".into(),
                String::new(),
                String::new(),
                r.flex.to_string(),
                String::new(),
                String::new(),
                String::new(),
            ]);
        }
        rows
    }

    fn title(&self) -> Option<String> {
        Some(format!(
            "credits from {} to {} (exclusive), in each account's time zone",
            self.from, self.to
        ))
    }
}
