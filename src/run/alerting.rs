//! From the core's alert decisions to emails: each alert gets the account's top usage of
//! the cycle, the pool's runway and a recommendation, and is recorded as pending before
//! the checkpoint that commits the decision; the notifier mails it once that checkpoint
//! has landed.

use chrono::TimeDelta;
use clickhouse::Client;
use tally_core::alerts::{Alert as Decision, AlertKind};
use tally_core::{runway, Credits, Rules};

use crate::config::offers::OffersConfig;
use crate::notify::{self, Alert, Locale};
use crate::report::balance;
use crate::store::reads::{self, By};
use crate::store::{alerts, StoreError};

/// How many features and users an email lists.
const TOP: u64 = 5;

/// What an email needs besides the store: the plans (in the rules) and the offers.
pub struct Context {
    pub rules: Rules,
    pub offers: OffersConfig,
}

/// Builds the emails for `decisions` and records them as pending. Run after the flush's
/// ledger rows are written (so the top usage and the burn include them) and before its
/// checkpoint: a crash in between leaves pending rows that a replay rewrites with the same
/// ids.
pub async fn record(
    store: &Client,
    context: &Context,
    decisions: &[Decision],
) -> Result<Vec<Alert>, StoreError> {
    let mut mails = Vec::with_capacity(decisions.len());
    // An account with webhooks but no admins has its alerts decided for the webhooks only.
    for d in decisions.iter().filter(|d| !d.recipients.is_empty()) {
        let (runway, advice) = outlook(store, context, d).await?;
        mails.push(Alert {
            id: d.id.clone(),
            account: d.account.clone(),
            pool: d.pool.clone(),
            kind: d.kind,
            threshold: d.threshold,
            balance: d.balance,
            time: d.time,
            locale: d.locale.clone(),
            recipients: d.recipients.clone(),
            top_features: reads::top_usage(store, &d.account, By::Feature, d.cycle_start, TOP)
                .await?,
            top_users: reads::top_usage(store, &d.account, By::User, d.cycle_start, TOP).await?,
            runway,
            advice,
        });
    }
    let rows: Vec<_> = mails.iter().map(notify::pending_row).collect();
    alerts::write(store, &rows).await?;
    Ok(mails)
}

/// The pool's 7-day burn and run-out, and the recommendation in the alert's language. The
/// plan comes from the last checkpoint's state (plans change rarely); the burn from the
/// ledger, this flush included; the balance from the decision.
async fn outlook(
    store: &Client,
    context: &Context,
    d: &Decision,
) -> Result<(Option<runway::Burn>, Option<String>), StoreError> {
    let state = reads::account_state(store, &d.account)
        .await?
        .unwrap_or_default();
    let until = d.time + TimeDelta::seconds(1);
    let mut used = [Credits::ZERO; 2];
    for (i, days) in runway::WINDOWS.into_iter().enumerate() {
        let from = d.time - TimeDelta::days(i64::from(days));
        used[i] = reads::used_between(store, &d.account, from, until)
            .await?
            .into_iter()
            .find(|row| row.pool == d.pool)
            .map_or(Credits::ZERO, |row| Credits::from_milli(row.credits));
    }
    // An expiring alert's balance is what expires; the others' is what is available.
    let available = match d.kind {
        AlertKind::Expiring => state
            .balance(d.time)
            .get(&d.pool)
            .map_or(Credits::ZERO, |b| b.available),
        _ => d.balance,
    };
    let reset = balance::next_reset(&state, &d.pool);
    let outlook = runway::runway(used[0], used[1], available, d.time, reset);
    let advice = (d.pool == balance::plan_pool(&state))
        .then(|| balance::recommendation(&state, &context.rules, &context.offers, &outlook))
        .flatten()
        .map(|r| match Locale::from_tag(&d.locale) {
            Locale::Ko => r.text_ko,
            Locale::En => r.text_en,
        });
    Ok((Some(outlook.last_7_days), advice))
}
