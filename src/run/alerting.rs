//! From the core's alert decisions to emails: each alert gets the account's top usage of
//! the cycle and is recorded as pending before the checkpoint that commits the decision;
//! the notifier mails it once that checkpoint has landed.

use clickhouse::Client;
use tally_core::alerts::Alert as Decision;

use crate::notify::{self, Alert};
use crate::store::reads::{self, By};
use crate::store::{alerts, StoreError};

/// How many features and users an email lists.
const TOP: u64 = 5;

/// Builds the emails for `decisions` and records them as pending. Run after the flush's
/// ledger rows are written (so the top usage includes them) and before its checkpoint:
/// a crash in between leaves pending rows that a replay rewrites with the same ids.
pub async fn record(store: &Client, decisions: &[Decision]) -> Result<Vec<Alert>, StoreError> {
    let mut mails = Vec::with_capacity(decisions.len());
    // An account with webhooks but no admins has its alerts decided for the webhooks only.
    for d in decisions.iter().filter(|d| !d.recipients.is_empty()) {
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
        });
    }
    let rows: Vec<_> = mails.iter().map(notify::pending_row).collect();
    alerts::write(store, &rows).await?;
    Ok(mails)
}
