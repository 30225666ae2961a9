//! `tally balance` / `GET /v1/accounts/{account}/balance`: per pool, available credits by
//! kind, used this cycle, expiring within 14 days and shortfall; the plan and flex.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use clickhouse::Client;
use serde::Serialize;
use tally_core::account::FlexView;
use tally_core::runway::{self, Runway};
use tally_core::{plans, AccountState, Credits, LotKind, Rules};

use super::advice::monthly;
use super::{credits, local_time, rfc3339, tz_name, ReportError, Tabular};
use crate::config::offers::OffersConfig;
use crate::notify::Locale;
use crate::store::reads;

/// The balance of one account at one time.
#[derive(Debug, Clone, Serialize)]
pub struct Balance {
    pub account: String,
    #[serde(serialize_with = "rfc3339")]
    pub at: DateTime<Utc>,
    /// The account's time zone (IANA name): the one its cycles and days are cut in, and
    /// the one people read its times in (the times here stay UTC, RFC 3339).
    #[serde(serialize_with = "tz_name")]
    pub timezone: Tz,
    /// The account's plan and its current cycle, if it has one.
    pub plan: Option<PlanCycle>,
    /// Start of the cycle `used_this_cycle` counts from (the calendar month without a plan).
    #[serde(serialize_with = "rfc3339")]
    pub cycle_start: DateTime<Utc>,
    pub flex: FlexView,
    pub pools: BTreeMap<String, PoolReport>,
}

/// A plan's current cycle.
#[derive(Debug, Clone, Serialize)]
pub struct PlanCycle {
    pub name: String,
    pub cycle: u32,
    #[serde(serialize_with = "rfc3339")]
    pub cycle_start: DateTime<Utc>,
    #[serde(serialize_with = "rfc3339")]
    pub cycle_end: DateTime<Utc>,
}

/// One pool of the balance.
#[derive(Debug, Clone, Default, Serialize)]
pub struct PoolReport {
    /// Free credits: what no open hold reserved.
    pub available: Credits,
    /// Credits reserved by open holds, apart from `available` (not counted in `by_kind`).
    pub held: Credits,
    /// Available credits by lot kind (included, promotional, purchased).
    pub by_kind: BTreeMap<String, Credits>,
    pub used_this_cycle: Credits,
    pub expiring_within_14_days: Credits,
    pub shortfall: Credits,
    /// Burn over the last 7 and 30 days and when `available` runs out at each rate.
    pub runway: Runway,
    /// For the plan's pool: the share (percent) of the current cycle's allowance used.
    pub included_used_percent: Option<u32>,
    /// For the plan's pool (`ai` without a plan), when a cycle's use at the recent rate
    /// exceeds the allowance: the cheapest pack, plan or sales [002].
    pub recommendation: Option<Recommendation>,
}

/// A recommendation with its words in both languages.
#[derive(Debug, Clone, Serialize)]
pub struct Recommendation {
    #[serde(flatten)]
    pub advice: tally_core::advice::Advice,
    pub text_en: String,
    pub text_ko: String,
}

/// The pool a plan's allowance goes to (`ai` without a plan): the one recommendations
/// and the included share are about.
pub fn plan_pool(state: &AccountState) -> String {
    state
        .subscription
        .as_ref()
        .map_or("ai", |s| s.plan.pool.as_str())
        .to_string()
}

/// The next reset that brings `pool` credits: the plan's cycle end, for the plan's pool.
pub fn next_reset(state: &AccountState, pool: &str) -> Option<DateTime<Utc>> {
    state
        .subscription
        .as_ref()
        .filter(|s| s.plan.pool == pool)
        .map(|s| s.cycle_end)
}

/// The recommendation for the plan's pool at the burn of `runway` (the last 7 days', or
/// the 30 days' when nothing was used in 7), from the plan and the offers.
pub fn recommendation(
    state: &AccountState,
    rules: &Rules,
    offers: &OffersConfig,
    runway: &Runway,
) -> Option<Recommendation> {
    let offered = offers.offers(&rules.plans);
    let (allowance, price) = match &state.subscription {
        Some(s) => (
            monthly(s.plan.credits, s.plan.period),
            offered
                .plans
                .iter()
                .find(|o| o.plan == s.name)
                .map_or(0, |o| o.price),
        ),
        None => (Credits::ZERO, 0),
    };
    let per_day = if runway.last_7_days.per_day.is_positive() {
        runway.last_7_days.per_day
    } else {
        runway.last_30_days.per_day
    };
    tally_core::advice::recommend(per_day, allowance, price, &offered).map(|advice| {
        Recommendation {
            text_en: offers.sentence(&advice, Locale::En),
            text_ko: offers.sentence(&advice, Locale::Ko),
            advice,
        }
    })
}

/// Reads the balance of `account` at `at`.
pub async fn load(
    client: &Client,
    rules: &Rules,
    offers: &OffersConfig,
    account: &str,
    at: DateTime<Utc>,
) -> Result<Balance, ReportError> {
    let state = reads::account_state(client, account)
        .await
        .map_err(ReportError::read("the account's state"))?
        .unwrap_or_default();
    let pools = state.balance(at);
    let flex = state.flex(rules, at);
    let timezone = state.timezone(rules);
    let cycle_start = match &state.subscription {
        Some(s) => s.cycle_start,
        None => plans::month_start(timezone, at),
    };
    let used: BTreeMap<String, i64> = reads::used_since(client, account, cycle_start)
        .await
        .map_err(ReportError::read("usage of this cycle"))?
        .into_iter()
        .map(|row| (row.pool, row.credits))
        .collect();
    // Up to `at` (its second), so a balance of the past burns what was used before it.
    let until = at + chrono::TimeDelta::seconds(1);
    let mut burned: Vec<BTreeMap<String, i64>> = Vec::new();
    for days in runway::WINDOWS {
        let from = at - chrono::TimeDelta::days(i64::from(days));
        burned.push(
            reads::used_between(client, account, from, until)
                .await
                .map_err(ReportError::read("usage of the last days"))?
                .into_iter()
                .map(|row| (row.pool, row.credits))
                .collect(),
        );
    }
    // The next reset brings credits to the plan's pool only.
    let reset = |pool: &str| next_reset(&state, pool);
    // Recommendations and the included share are for the plan's pool (`ai` without one).
    let plan_pool = plan_pool(&state);
    let allowance_lot = state.lots.iter().rev().find(|lot| {
        lot.from_plan && lot.pool == plan_pool && lot.effective_at >= cycle_start && !lot.voided
    });
    let included_used_percent = allowance_lot
        .filter(|lot| lot.granted.is_positive())
        .map(|lot| {
            let used = i128::from((lot.granted - lot.remaining).milli());
            u32::try_from(used * 100 / i128::from(lot.granted.milli())).unwrap_or(100)
        });
    let mut names: Vec<&String> = pools.keys().chain(used.keys()).collect();
    names.extend(state.shortfall.keys());
    names.sort();
    names.dedup();
    let pools = names
        .iter()
        .map(|pool| {
            let b = pools.get(*pool).cloned().unwrap_or_default();
            let by_kind = LotKind::ALL
                .iter()
                .map(|kind| {
                    let c = b.by_kind.get(kind.as_str()).copied().unwrap_or_default();
                    (kind.as_str().to_string(), c)
                })
                .collect();
            let report = PoolReport {
                available: b.available,
                held: b.held,
                by_kind,
                used_this_cycle: credits(used.get(*pool).copied().unwrap_or(0)),
                expiring_within_14_days: b.expiring_soon,
                shortfall: state.shortfall.get(*pool).copied().unwrap_or_default(),
                runway: runway::runway(
                    credits(burned[0].get(*pool).copied().unwrap_or(0)),
                    credits(burned[1].get(*pool).copied().unwrap_or(0)),
                    b.available,
                    at,
                    reset(pool),
                ),
                included_used_percent: None,
                recommendation: None,
            };
            let mut report = report;
            if **pool == plan_pool {
                report.included_used_percent = included_used_percent;
                report.recommendation = recommendation(&state, rules, offers, &report.runway);
            }
            (pool.to_string(), report)
        })
        .collect();
    let plan = state.subscription.as_ref().map(|s| PlanCycle {
        name: s.name.clone(),
        cycle: s.cycle,
        cycle_start: s.cycle_start,
        cycle_end: s.cycle_end,
    });
    Ok(Balance {
        account: account.to_string(),
        at,
        timezone,
        plan,
        cycle_start,
        flex,
        pools,
    })
}

impl Tabular for Balance {
    fn header(&self) -> Vec<&'static str> {
        vec![
            "pool",
            "available",
            "held",
            "included",
            "promotional",
            "purchased",
            "used this cycle",
            "expiring in 14 days",
            "shortfall",
            "burn a day (7d / 30d)",
            "runs out (7d / 30d)",
        ]
    }

    fn rows(&self) -> Vec<Vec<String>> {
        self.pools
            .iter()
            .map(|(pool, p)| {
                let mut row = vec![pool.clone(), p.available.to_string(), p.held.to_string()];
                row.extend(LotKind::ALL.iter().map(|k| {
                    p.by_kind
                        .get(k.as_str())
                        .copied()
                        .unwrap_or_default()
                        .to_string()
                }));
                row.push(p.used_this_cycle.to_string());
                row.push(p.expiring_within_14_days.to_string());
                row.push(p.shortfall.to_string());
                let r = &p.runway;
                row.push(format!(
                    "{} / {}",
                    r.last_7_days.per_day, r.last_30_days.per_day
                ));
                let out = |b: &runway::Burn| match b.runs_out_at {
                    None => "never".to_string(),
                    Some(at) => {
                        let day = at.with_timezone(&self.timezone).format("%Y-%m-%d");
                        match b.before_reset {
                            Some(true) => format!("{day} (before reset)"),
                            _ => day.to_string(),
                        }
                    }
                };
                row.push(format!(
                    "{} / {}",
                    out(&r.last_7_days),
                    out(&r.last_30_days)
                ));
                row
            })
            .collect()
    }

    fn title(&self) -> Option<String> {
        let tz = self.timezone;
        let plan = match &self.plan {
            Some(s) => format!(
                "plan {}: cycle {} from {} to {}",
                s.name,
                s.cycle,
                local_time(&s.cycle_start, tz),
                local_time(&s.cycle_end, tz)
            ),
            None => format!(
                "no plan; this cycle is the calendar month from {}",
                local_time(&self.cycle_start, tz)
            ),
        };
        Some(format!(
            "balance of `{}` at {}\n{plan}",
            self.account,
            local_time(&self.at, tz)
        ))
    }

    fn footer(&self) -> Option<String> {
        let mut footer = format!(
            "flex: {}, {} of {} used this cycle",
            if self.flex.enabled { "on" } else { "off" },
            self.flex.used,
            self.flex.threshold
        );
        for (pool, p) in &self.pools {
            if let Some(percent) = p.included_used_percent {
                footer.push_str(&format!(
                    "\n{pool}: {percent}% of this cycle's allowance used"
                ));
            }
            if let Some(r) = &p.recommendation {
                footer.push_str(&format!("\nrecommended ({pool}): {}", r.text_en));
            }
        }
        Some(footer)
    }

    fn empty(&self) -> Option<String> {
        Some(format!("account `{}` has no credits", self.account))
    }
}
