//! Webhook decisions: which alerts and lifecycle events (a cycle's allowance, a lot or a hold
//! expiring, shortfall recorded, an auto top-up requested) become webhook notices, each with
//! a stable id so a replay decides the same notice; the shell signs, records and sends them.
//! The account's webhook settings and top-up state are [`crate::hook_state`]'s.

use chrono::{DateTime, Utc};

use crate::account::AccountState;
use crate::alerts::{Alert, AlertKind};
use crate::book::{Book, Outcome, Step};
use crate::credits::Credits;
use crate::ledger::{EntryType, LedgerEntry};
use crate::lots::LotKind;

pub use crate::hook_state::{
    check, check_url, wants, Endpoint, HookSettings, HookState, NoticeKind, TopUp, TopUpMark,
    MAX_ENDPOINTS, MAX_ENDPOINT_ID_LEN, MAX_URL_LEN,
};

/// One webhook to send: the same for every endpoint that gets it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notice {
    /// Stable: decided again by a replay, it has the same id. Alerts keep the alert's id.
    pub id: String,
    pub account: String,
    pub kind: NoticeKind,
    pub pool: String,
    /// When it happened (the event's or the deadline's time).
    pub time: DateTime<Utc>,
    /// What it is about: the alert's threshold, the allowance issued, the credits that
    /// expired or were released, the shortfall recorded, the top-up asked for.
    pub credits: Credits,
    /// The pool's available balance after it.
    pub balance: Credits,
    /// The lot, hold or event it concerns; the alert's cycle start for alerts.
    pub reference: String,
    /// The account's own endpoints that take this kind.
    pub endpoints: Vec<Endpoint>,
}

/// The notices of one step, after `book.apply` returned it: its alerts, the lifecycle
/// events among its entries, and auto top-ups of the accounts it changed. `global`: some
/// endpoint in config takes every account's notices, so accounts without endpoints of
/// their own are looked at too. Updates the accounts' top-up marks.
pub fn after_step(book: &mut Book, step: &Step, global: bool) -> Vec<Notice> {
    let Some(at) = book.clock else {
        return Vec::new();
    };
    // Every event comes here: most change one account that has no webhook of its own and
    // no top-up, with no alert and nothing due, which one look-up settles.
    if !global && step.alerts.is_empty() && step.due.is_empty() {
        let quiet = match &step.outcome {
            Outcome::Applied { account, .. } => book
                .accounts
                .get(account.as_str())
                .is_none_or(|s| s.hooks.endpoints.is_empty() && s.hooks.top_up.is_none()),
            _ => true,
        };
        if quiet {
            return Vec::new();
        }
    }
    let listened = |state: &AccountState| global || !state.hooks.endpoints.is_empty();
    let mut notices = Vec::new();
    for alert in &step.alerts {
        if let Some(state) = book.accounts.get(&alert.account).filter(|s| listened(s)) {
            notices.push(from_alert(alert, state));
        }
    }
    let own: &[LedgerEntry] = match &step.outcome {
        Outcome::Applied { entries, .. } => entries,
        _ => &[],
    };
    for entry in step.due.iter().chain(own) {
        let Some(state) = book
            .accounts
            .get(entry.account.as_str())
            .filter(|s| listened(s))
        else {
            continue;
        };
        if let Some(notice) = lifecycle(entry, state, at) {
            notices.push(notice);
        }
    }
    let mut changed: Vec<&str> = step.due.iter().map(|e| e.account.as_str()).collect();
    if let Outcome::Applied { account, .. } = &step.outcome {
        changed.push(account.as_str());
    }
    changed.sort_unstable();
    changed.dedup();
    for account in changed {
        if let Some(state) = book.accounts.get_mut(account) {
            let heard = global || !state.hooks.endpoints.is_empty();
            if let Some(notice) = top_up(state, account, at).filter(|_| heard) {
                notices.push(notice);
            }
        }
    }
    notices
}

/// The opt-in reset emails of one step: an alert of kind `Reset` for every cycle's
/// allowance that arrived on an account with `reset_email` on and admins to tell.
pub fn reset_emails(book: &Book, step: &Step) -> Vec<Alert> {
    let own: &[LedgerEntry] = match &step.outcome {
        Outcome::Applied { entries, .. } => entries,
        _ => &[],
    };
    let mut emails = Vec::new();
    for entry in step.due.iter().chain(own) {
        if entry.entry_type != EntryType::Grant || entry.lot_kind != Some(LotKind::Included) {
            continue;
        }
        let Some(state) = book.accounts.get(entry.account.as_str()) else {
            continue;
        };
        if !state.hooks.reset_email || state.admins.is_empty() || !is_allowance(entry, state) {
            continue;
        }
        let at = book.clock.unwrap_or(entry.time);
        emails.push(Alert {
            id: format!("{}/{}/reset/{}", entry.account, entry.pool, entry.lot),
            account: entry.account.to_string(),
            pool: entry.pool.to_string(),
            kind: AlertKind::Reset,
            threshold: entry.credits,
            balance: available(state, &entry.pool, at),
            time: entry.time,
            cycle_start: entry.time,
            locale: state.locale.clone().unwrap_or_else(|| "en".into()),
            recipients: state.admins.clone(),
        });
    }
    emails
}

/// Whether a grant entry is a cycle's allowance the plan issued.
fn is_allowance(entry: &LedgerEntry, state: &AccountState) -> bool {
    entry.lot_kind == Some(LotKind::Included)
        && state
            .lots
            .iter()
            .any(|lot| lot.id == entry.lot && lot.from_plan)
}

/// The account's endpoints that take `kind`.
fn endpoints(state: &AccountState, kind: NoticeKind) -> Vec<Endpoint> {
    state
        .hooks
        .endpoints
        .iter()
        .filter(|e| e.wants(kind))
        .cloned()
        .collect()
}

/// The pool's available credits, as `AccountState::balance` counts them, without building
/// every pool's balance (this runs on every call of an account with an auto top-up).
fn available(state: &AccountState, pool: &str, at: DateTime<Utc>) -> Credits {
    state
        .lots
        .iter()
        .filter(|lot| lot.usable(pool, at))
        .map(|lot| lot.free())
        .sum()
}

/// An alert as a notice, with the alert's own id.
pub fn from_alert(alert: &Alert, state: &AccountState) -> Notice {
    let kind = NoticeKind::Alert(alert.kind);
    Notice {
        id: alert.id.clone(),
        account: alert.account.clone(),
        kind,
        pool: alert.pool.clone(),
        time: alert.time,
        credits: alert.threshold,
        balance: alert.balance,
        reference: alert.cycle_start.to_rfc3339(),
        endpoints: endpoints(state, kind),
    }
}

/// The lifecycle event a ledger entry is, if any.
fn lifecycle(entry: &LedgerEntry, state: &AccountState, at: DateTime<Utc>) -> Option<Notice> {
    let a = &entry.account;
    let (kind, id, credits, reference) = match entry.entry_type {
        // A cycle's allowance: an included lot the plan issued (not a grant of kind
        // `included` that a billing system sent).
        EntryType::Grant if is_allowance(entry, state) => {
            let kind = NoticeKind::Reset;
            let id = format!("{a}/{}/{}", kind.event_type(), entry.lot);
            (kind, id, entry.credits, entry.lot.clone())
        }
        EntryType::Expiry => {
            let kind = NoticeKind::LotExpired;
            let id = format!("{a}/{}/{}", kind.event_type(), entry.lot);
            (kind, id, -entry.credits, entry.lot.clone())
        }
        EntryType::HoldExpired => {
            let kind = NoticeKind::HoldExpired;
            let hold = entry.hold.as_ref()?;
            let stable = entry.id.as_deref().unwrap_or(&hold.id);
            let id = format!("{a}/{}/{stable}", kind.event_type());
            (kind, id, hold.held, hold.id.clone())
        }
        EntryType::Usage if entry.shortfall.is_positive() => {
            let kind = NoticeKind::ShortfallRecorded;
            // (source, id) is unique per account within the dedup window.
            let id = format!(
                "{a}/{}/{}/{}",
                kind.event_type(),
                entry.service,
                entry.event_id
            );
            (kind, id, entry.shortfall, entry.event_id.to_string())
        }
        _ => return None,
    };
    Some(Notice {
        id,
        account: a.to_string(),
        kind,
        pool: entry.pool.to_string(),
        time: entry.time,
        credits,
        balance: available(state, &entry.pool, at),
        reference,
        endpoints: endpoints(state, kind),
    })
}

/// One request per crossing below the account's top-up line, re-armed once the pool is
/// back at or above it.
fn top_up(state: &mut AccountState, account: &str, at: DateTime<Utc>) -> Option<Notice> {
    let line = state.hooks.top_up.clone()?;
    let balance = available(state, &line.pool, at);
    let below = balance < line.below;
    let h = &mut state.hooks;
    match (h.top_up_mark, below) {
        (TopUpMark::Requested, false) => {
            h.top_up_mark = TopUpMark::Armed;
            None
        }
        (TopUpMark::Armed, true) => {
            h.top_up_mark = TopUpMark::Requested;
            h.top_up_requests += 1;
            let kind = NoticeKind::TopUpRequested;
            Some(Notice {
                id: format!(
                    "{account}/{}/{}/{}",
                    line.pool,
                    kind.event_type(),
                    h.top_up_requests
                ),
                account: account.to_string(),
                kind,
                pool: line.pool.clone(),
                time: at,
                credits: line.credits,
                balance,
                reference: format!("{}", line.below),
                endpoints: endpoints(state, kind),
            })
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_must_be_http_with_a_host() {
        for good in [
            "https://billing.example/hooks",
            "http://127.0.0.1:8080/x",
            "HTTPS://Example.com",
            "https://[::1]:9/x",
        ] {
            assert_eq!(check_url(good), Ok(()), "{good}");
        }
        for bad in [
            "ftp://example.com/",
            "file:///etc/passwd",
            "https://",
            "https:///path",
            "https://user:pw@example.com/",
            "https://exa mple.com/",
            "javascript:alert(1)",
            "example.com/hooks",
        ] {
            assert!(check_url(bad).is_err(), "{bad}");
        }
        assert!(check_url(&format!("https://e.com/{}", "a".repeat(MAX_URL_LEN))).is_err());
    }

    #[test]
    fn available_is_what_the_balance_says() {
        use crate::lots::{Lot, LotKind};
        let at: DateTime<Utc> = "2026-11-20T00:00:00Z".parse().expect("time");
        let lot = |id: &str, pool: &str, remaining: i64, held: i64, expired: bool| Lot {
            id: id.into(),
            pool: pool.into(),
            kind: LotKind::Purchased,
            granted: Credits::from_whole(100),
            remaining: Credits::from_whole(remaining),
            effective_at: at - chrono::TimeDelta::days(1),
            expires_at: None,
            priority: None,
            seq: 0,
            voided: false,
            expired,
            from_plan: false,
            held: Credits::from_whole(held),
        };
        let state = AccountState {
            lots: vec![
                lot("a", "ai", 50, 5, false),
                lot("b", "ai", 30, 0, false),
                lot("c", "ai", 70, 0, true),
                lot("d", "scan", 9, 0, false),
            ],
            ..AccountState::default()
        };
        for pool in ["ai", "scan", "none"] {
            let whole = state
                .balance(at)
                .get(pool)
                .map(|b| b.available)
                .unwrap_or_default();
            assert_eq!(available(&state, pool, at), whole, "{pool}");
        }
        assert_eq!(available(&state, "ai", at), Credits::from_whole(75));
    }

    #[test]
    fn event_types_round_trip_and_reset_is_opt_in() {
        for kind in NoticeKind::ALL {
            assert_eq!(NoticeKind::from_event_type(kind.event_type()), Some(kind));
        }
        assert!(!wants(&[], NoticeKind::Reset));
        assert!(wants(&[], NoticeKind::TopUpRequested));
        assert!(wants(&["credit.reset".into()], NoticeKind::Reset));
        assert!(!wants(&["credit.reset".into()], NoticeKind::LotExpired));
    }
}
