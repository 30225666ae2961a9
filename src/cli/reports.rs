//! Report commands: `balance`, `ledger`, `history`, `alerts`, `report daily|monthly`,
//! `plans` and `matrix`. Each reads its typed model (`crate::report`) and prints its JSON
//! (`--json`) or its table.

use chrono::{DateTime, NaiveDate, Utc};
use serde::Serialize;
use tally_core::Rules;

use crate::config::Config;
use crate::report::{self, Tabular};
use crate::store::{self, reads::By};

/// The zone a table shows its times in: the account's. JSON keeps RFC 3339 in UTC, so it
/// needs none (and the state is not read for it).
async fn table_zone(
    client: &clickhouse::Client,
    rules: &Rules,
    account: &str,
    json: bool,
) -> anyhow::Result<Option<chrono_tz::Tz>> {
    if json {
        return Ok(None);
    }
    Ok(Some(report::account_zone(client, rules, account).await?))
}

/// Prints `model` as JSON or as its table.
fn print<T: Serialize + Tabular>(model: &T, json: bool) -> anyhow::Result<()> {
    if json {
        print!("{}", report::to_json(model)?);
    } else {
        print!("{}", model.text());
    }
    Ok(())
}

pub async fn balance(
    config: &Config,
    rules: &Rules,
    account: &str,
    at: DateTime<Utc>,
    json: bool,
) -> anyhow::Result<()> {
    let client = store::client(&config.clickhouse);
    print(
        &report::balance::load(&client, rules, &config.offers, account, at).await?,
        json,
    )
}

pub async fn ledger(
    config: &Config,
    rules: &Rules,
    account: &str,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    json: bool,
) -> anyhow::Result<()> {
    let client = store::client(&config.clickhouse);
    let mut model = report::ledger::load(&client, account, from, to).await?;
    model.zone = table_zone(&client, rules, account, json).await?;
    print(&model, json)
}

/// Grants, expiries, voids and settlements of an account; `purchases` keeps only bought
/// packs, with their validity and payment.
pub async fn history(
    config: &Config,
    rules: &Rules,
    account: &str,
    purchases: bool,
    json: bool,
) -> anyhow::Result<()> {
    let client = store::client(&config.clickhouse);
    let mut model = report::history::load(&client, account, purchases).await?;
    model.zone = table_zone(&client, rules, account, json).await?;
    print(&model, json)
}

/// Every alert of the account, oldest first, with its email's status.
pub async fn alerts(
    config: &Config,
    rules: &Rules,
    account: &str,
    json: bool,
) -> anyhow::Result<()> {
    let client = store::client(&config.clickhouse);
    let mut model = report::alerts::load(&client, account).await?;
    model.zone = table_zone(&client, rules, account, json).await?;
    print(&model, json)
}

pub async fn daily(
    config: &Config,
    from: NaiveDate,
    to: NaiveDate,
    account: Option<&str>,
    by: &[By],
    json: bool,
) -> anyhow::Result<()> {
    let client = store::client(&config.clickhouse);
    print(
        &report::daily::load(&client, from, to, account, by).await?,
        json,
    )
}

/// Local days `from..to` (exclusive).
pub async fn monthly(
    config: &Config,
    from: NaiveDate,
    to: NaiveDate,
    account: Option<&str>,
    json: bool,
) -> anyhow::Result<()> {
    let client = store::client(&config.clickhouse);
    print(
        &report::monthly::load(&client, from, to, account).await?,
        json,
    )
}

/// The plans in config.
pub fn plans(rules: &Rules, json: bool) -> anyhow::Result<()> {
    print(&report::catalog::Plans::of(rules), json)
}

/// The cost matrix in config, every version.
pub fn matrix(rules: &Rules, json: bool) -> anyhow::Result<()> {
    print(&report::catalog::Matrix::of(rules), json)
}
