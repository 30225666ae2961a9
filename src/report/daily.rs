//! `tally report daily` / `GET /v1/reports/daily`: calls, failed calls and credits per
//! day (in each account's time zone), by account and the chosen dimensions.

use chrono::NaiveDate;
use clickhouse::Client;
use serde::Serialize;
use tally_core::Credits;

use super::{credits, ReportError, Tabular};
use crate::store::reads::{self, By};
use crate::store::rows::from_day_number;

/// The daily report: rows by day, account and the `by` dimensions.
#[derive(Debug, Clone, Default, Serialize)]
#[serde(transparent)]
pub struct Daily {
    #[serde(skip)]
    pub by: Vec<By>,
    pub rows: Vec<DailyEntry>,
}

/// One day of one account (and service, user, feature when grouped by them).
#[derive(Debug, Clone, Serialize)]
pub struct DailyEntry {
    pub day: NaiveDate,
    pub account: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub feature: Option<String>,
    pub calls: u64,
    pub failed_calls: u64,
    pub credits: Credits,
    /// What paid, by lot kind (and flex).
    pub by_kind: ByKind,
    pub shortfall: Credits,
}

#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct ByKind {
    pub included: Credits,
    pub promotional: Credits,
    pub purchased: Credits,
    pub flex: Credits,
}

/// Reads days `from..=to`, of `account` or of all accounts, grouped by `by`.
pub async fn load(
    client: &Client,
    from: NaiveDate,
    to: NaiveDate,
    account: Option<&str>,
    by: &[By],
) -> Result<Daily, ReportError> {
    if to < from {
        return Err(ReportError::BadParameter {
            param: "to",
            problem: format!("{to} is before from {from}"),
        });
    }
    let rows = reads::daily(client, from, to, account, by)
        .await
        .map_err(ReportError::read("daily usage"))?;
    let pick = |b: By, value: &String| by.contains(&b).then(|| value.clone());
    Ok(Daily {
        by: by.to_vec(),
        rows: rows
            .iter()
            .map(|r| DailyEntry {
                day: from_day_number(r.day),
                account: r.account.clone(),
                service: pick(By::Service, &r.service),
                user: pick(By::User, &r.user),
                feature: pick(By::Feature, &r.feature),
                calls: r.calls,
                failed_calls: r.failed_calls,
                credits: credits(r.credits),
                by_kind: ByKind {
                    included: credits(r.included),
                    promotional: credits(r.promotional),
                    purchased: credits(r.purchased),
                    flex: credits(r.flex),
                },
                shortfall: credits(r.shortfall),
            })
            .collect(),
    })
}

impl Tabular for Daily {
    fn header(&self) -> Vec<&'static str> {
        let mut header = vec!["day", "account"];
        header.extend(self.by.iter().map(|b| b.column()));
        header.extend(["calls", "failed", "credits", "flex", "shortfall"]);
        header
    }

    fn rows(&self) -> Vec<Vec<String>> {
        self.rows
            .iter()
            .map(|r| {
                let mut row = vec![r.day.to_string(), r.account.clone()];
                for b in &self.by {
                    let value = match b {
                        By::Service => &r.service,
                        By::User => &r.user,
                        By::Feature => &r.feature,
                    };
                    row.push(value.clone().unwrap_or_default());
                }
                row.extend([
                    r.calls.to_string(),
                    r.failed_calls.to_string(),
                    r.credits.to_string(),
                    r.by_kind.flex.to_string(),
                    r.shortfall.to_string(),
                ]);
                row
            })
            .collect()
    }
}
