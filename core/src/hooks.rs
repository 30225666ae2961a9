//! Webhook decisions: which alerts and lifecycle events (a cycle's allowance, a lot or a hold
//! expiring, shortfall recorded, an auto top-up requested) become webhook notices, each with
//! a stable id so a replay decides the same notice; the shell signs, records and sends them.
//!
//! Also the account's webhook settings (`account.settings` `webhooks`, `top_up`,
//! `reset_email`) and where its auto top-up stands, kept in the account's state.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::account::AccountState;
use crate::alerts::{Alert, AlertKind};
use crate::book::{Book, Outcome, Step};
use crate::credits::Credits;
use crate::ledger::{EntryType, LedgerEntry};
use crate::lots::LotKind;
use crate::rules::MAX_GRANT;

/// Most endpoints one account may register: each notice is sent to each of them.
pub const MAX_ENDPOINTS: usize = 8;
/// Longest endpoint URL.
pub const MAX_URL_LEN: usize = 2048;
/// Longest endpoint id.
pub const MAX_ENDPOINT_ID_LEN: usize = 64;

/// What a notice is about; its `event_type` is the `type` of the webhook's body.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum NoticeKind {
    /// A low-credit alert the core decided (`alerting::evaluate`).
    Alert(AlertKind),
    /// A cycle's allowance arrived (the plan's new cycle, or a plan change) [003].
    Reset,
    /// A lot expired with credits left.
    LotExpired,
    /// A hold expired unsettled; its credits are free again.
    HoldExpired,
    /// A call was recorded that no lot or flex could pay.
    ShortfallRecorded,
    /// The pool crossed below the account's auto top-up line: the billing system is asked
    /// to grant credits (tally never charges anyone).
    TopUpRequested,
}

impl NoticeKind {
    pub const ALL: [NoticeKind; 9] = [
        NoticeKind::Alert(AlertKind::LowBalance),
        NoticeKind::Alert(AlertKind::IncludedUsed),
        NoticeKind::Alert(AlertKind::Shortfall),
        NoticeKind::Alert(AlertKind::Expiring),
        NoticeKind::Reset,
        NoticeKind::LotExpired,
        NoticeKind::HoldExpired,
        NoticeKind::ShortfallRecorded,
        NoticeKind::TopUpRequested,
    ];

    /// The webhook's event type.
    pub fn event_type(self) -> &'static str {
        match self {
            NoticeKind::Alert(AlertKind::LowBalance) => "credit.low_balance",
            NoticeKind::Alert(AlertKind::IncludedUsed) => "credit.included_used",
            NoticeKind::Alert(AlertKind::Shortfall) => "credit.shortfall",
            NoticeKind::Alert(AlertKind::Expiring) => "credit.expiring",
            NoticeKind::Reset | NoticeKind::Alert(AlertKind::Reset) => "credit.reset",
            NoticeKind::LotExpired => "credit.lot_expired",
            NoticeKind::HoldExpired => "credit.hold_expired",
            NoticeKind::ShortfallRecorded => "credit.shortfall_recorded",
            NoticeKind::TopUpRequested => "credit.top_up_requested",
        }
    }

    pub fn from_event_type(name: &str) -> Option<NoticeKind> {
        NoticeKind::ALL.into_iter().find(|k| k.event_type() == name)
    }

    /// Whether an endpoint that lists no event types gets this one: every type but the
    /// cycle reset, which is opt-in [003].
    pub fn by_default(self) -> bool {
        self != NoticeKind::Reset
    }
}

/// One webhook endpoint of an account, from `account.settings` `webhooks`. Its signing
/// secret is not here: the shell derives it from its own key, the account, `id` and
/// `rotation`, so no secret travels through Kafka or lands in ClickHouse.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Endpoint {
    /// Names the endpoint within the account (letters, digits, `-`, `_`).
    pub id: String,
    /// `http://` or `https://` URL the notices are POSTed to.
    pub url: String,
    /// Event types it gets (`credit.low_balance`, ...); empty: every type but
    /// `credit.reset`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub events: Vec<String>,
    /// Raised to rotate the endpoint's signing secret.
    #[serde(default, skip_serializing_if = "is_zero_u32")]
    pub rotation: u32,
}

impl Endpoint {
    /// Whether this endpoint gets notices of `kind`.
    pub fn wants(&self, kind: NoticeKind) -> bool {
        wants(&self.events, kind)
    }
}

/// Whether a subscription list (empty: the defaults) takes `kind`.
pub fn wants(events: &[String], kind: NoticeKind) -> bool {
    if events.is_empty() {
        kind.by_default()
    } else {
        events.iter().any(|e| e == kind.event_type())
    }
}

/// The auto top-up of one pool: when its available balance crosses below `below`, one
/// `credit.top_up_requested` asking for `credits`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TopUp {
    #[serde(default = "default_pool")]
    pub pool: String,
    pub below: Credits,
    /// What to ask for; 0 switches auto top-up off.
    pub credits: Credits,
}

fn default_pool() -> String {
    "ai".into()
}

/// Where the auto top-up stands.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TopUpMark {
    /// The pool is at or above the line (or has not been looked at): a crossing requests.
    #[default]
    Armed,
    /// Requested since the last crossing; re-armed once the pool is back at or above it.
    Requested,
}

/// The webhook part of an account's state.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HookState {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub endpoints: Vec<Endpoint>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top_up: Option<TopUp>,
    #[serde(default, skip_serializing_if = "is_armed")]
    pub top_up_mark: TopUpMark,
    /// Top-ups requested so far: numbers each request, so its id is stable across replays
    /// whatever the interleaving of the two topics.
    #[serde(default, skip_serializing_if = "is_zero_u64")]
    pub top_up_requests: u64,
    /// Whether the admins get an email when a cycle's allowance arrives [003].
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub reset_email: bool,
}

impl HookState {
    pub fn is_empty(&self) -> bool {
        *self == HookState::default()
    }
}

fn is_armed(mark: &TopUpMark) -> bool {
    *mark == TopUpMark::Armed
}

fn is_zero_u32(n: &u32) -> bool {
    *n == 0
}

fn is_zero_u64(n: &u64) -> bool {
    *n == 0
}

/// The webhook fields of `account.settings`; each replaces what the account had.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HookSettings<'a> {
    pub webhooks: Option<&'a [Endpoint]>,
    pub top_up: Option<&'a TopUp>,
    pub reset_email: Option<bool>,
}

/// Checks the webhook settings without changing anything: the reason on failure.
pub fn check(settings: &HookSettings<'_>) -> Result<(), String> {
    if let Some(endpoints) = settings.webhooks {
        if endpoints.len() > MAX_ENDPOINTS {
            return Err(format!("at most {MAX_ENDPOINTS} webhook endpoints"));
        }
        for (i, e) in endpoints.iter().enumerate() {
            if e.id.is_empty()
                || e.id.len() > MAX_ENDPOINT_ID_LEN
                || !e
                    .id
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            {
                return Err(format!(
                    "webhook id `{}` must be 1 to {MAX_ENDPOINT_ID_LEN} letters, digits, `-` or `_`",
                    e.id
                ));
            }
            if endpoints[..i].iter().any(|other| other.id == e.id) {
                return Err(format!("webhook id `{}` is given twice", e.id));
            }
            check_url(&e.url)?;
            if let Some(bad) = e
                .events
                .iter()
                .find(|t| NoticeKind::from_event_type(t).is_none())
            {
                return Err(format!("unknown webhook event type `{bad}`"));
            }
        }
    }
    if let Some(t) = settings.top_up {
        let out_of_range = |c: Credits| c.is_negative() || c > MAX_GRANT;
        if out_of_range(t.below) || out_of_range(t.credits) {
            return Err(format!(
                "top_up.below and top_up.credits must be between 0 and {MAX_GRANT}"
            ));
        }
        if t.pool.is_empty() || t.pool.len() > 64 {
            return Err("top_up.pool must be 1 to 64 characters".into());
        }
    }
    Ok(())
}

/// An `http://` or `https://` URL with a host, no user name or password, no whitespace or
/// control characters. Whether its host may be reached (no private addresses, by default)
/// is decided by the shell where it resolves the name, as only there is it known.
pub fn check_url(url: &str) -> Result<(), String> {
    let refuse = |why: &str| Err(format!("webhook url `{url}` {why}"));
    if url.len() > MAX_URL_LEN {
        return Err(format!("webhook url longer than {MAX_URL_LEN} bytes"));
    }
    if url.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return refuse("has whitespace or control characters");
    }
    let lower = url.to_ascii_lowercase();
    let rest = match (
        lower.strip_prefix("https://"),
        lower.strip_prefix("http://"),
    ) {
        (Some(rest), _) | (None, Some(rest)) => rest,
        (None, None) => return refuse("is not an http:// or https:// URL"),
    };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    if authority.contains('@') {
        return refuse("must not carry a user name or password");
    }
    let host = match authority.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or_default(),
        None => authority.split(':').next().unwrap_or_default(),
    };
    if host.is_empty() {
        return refuse("has no host");
    }
    Ok(())
}

impl HookState {
    /// Lays checked settings over the state.
    pub fn apply(&mut self, settings: &HookSettings<'_>) {
        if let Some(endpoints) = settings.webhooks {
            self.endpoints = endpoints.to_vec();
        }
        if let Some(top_up) = settings.top_up {
            // A new line or pool starts afresh: the next look decides from the balance.
            self.top_up = top_up.credits.is_positive().then(|| top_up.clone());
            self.top_up_mark = TopUpMark::Armed;
        }
        if let Some(reset) = settings.reset_email {
            self.reset_email = reset;
        }
    }
}

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
                .get(account)
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
        changed.push(account);
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
            (kind, id, entry.shortfall, entry.event_id.clone())
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
