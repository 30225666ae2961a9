//! Low-credit alert decisions: which thresholds an account's pools crossed downward, fired
//! once per threshold per cycle and re-armed when the pool is back above it.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::account::{AccountState, Rules, EXPIRING_WITHIN};
use crate::credits::Credits;
use crate::plans;

/// What an alert is about: the one kind of alert, decided here, stored in the `alerts`
/// table by its `as_str` name and mailed by the notifier.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AlertKind {
    /// The pool's balance fell below the account's limit [004].
    LowBalance,
    /// A share (80% by default) of the cycle's included credits is used [002].
    IncludedUsed,
    /// The pool is empty and calls go unpaid [003].
    Shortfall,
    /// More than a minimum of credits expires within 14 days [000].
    Expiring,
    /// A cycle's allowance arrived: the opt-in reset email [003] (`reset_email` in
    /// `account.settings`), decided by `hooks::reset_emails`, never by `evaluate`.
    Reset,
}

impl AlertKind {
    pub const ALL: [AlertKind; 5] = [
        AlertKind::LowBalance,
        AlertKind::IncludedUsed,
        AlertKind::Shortfall,
        AlertKind::Expiring,
        AlertKind::Reset,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            AlertKind::LowBalance => "low_balance",
            AlertKind::IncludedUsed => "included_used",
            AlertKind::Shortfall => "shortfall",
            AlertKind::Expiring => "expiring",
            AlertKind::Reset => "reset",
        }
    }
}

impl std::fmt::Display for AlertKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Thresholds for every pool, from config; an account's settings override each one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AlertRules {
    pub enabled: bool,
    /// Alert when the available balance falls below this; 0: never.
    pub low_balance: Credits,
    /// Alert when this percentage of the cycle's included credits is used; 0: never.
    pub included_used_percent: u32,
    /// Alert when calls start going unpaid.
    pub shortfall: bool,
    /// Alert when more than this expires within 14 days; 0: never.
    pub expiring_min: Credits,
    /// Some webhook endpoint in config takes every account's alerts: accounts without
    /// admins or endpoints of their own are checked too.
    pub global_webhooks: bool,
}

impl Default for AlertRules {
    fn default() -> Self {
        AlertRules {
            enabled: false,
            low_balance: Credits::ZERO,
            included_used_percent: 0,
            shortfall: false,
            expiring_min: Credits::ZERO,
            global_webhooks: false,
        }
    }
}

/// The `alerts` part of `account.settings`, also kept in the account's state.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlertSettings {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub low_balance: Option<Credits>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub included_used_percent: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shortfall: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expiring_min: Option<Credits>,
}

impl AlertSettings {
    /// Lays `other`'s values over these.
    pub fn merge(&mut self, other: &AlertSettings) {
        self.enabled = other.enabled.or(self.enabled);
        self.low_balance = other.low_balance.or(self.low_balance);
        self.included_used_percent = other.included_used_percent.or(self.included_used_percent);
        self.shortfall = other.shortfall.or(self.shortfall);
        self.expiring_min = other.expiring_min.or(self.expiring_min);
    }

    /// The thresholds in force: these settings over the rules' defaults.
    pub fn effective(&self, rules: &AlertRules) -> AlertRules {
        AlertRules {
            enabled: self.enabled.unwrap_or(rules.enabled),
            low_balance: self.low_balance.unwrap_or(rules.low_balance),
            included_used_percent: self
                .included_used_percent
                .unwrap_or(rules.included_used_percent),
            shortfall: self.shortfall.unwrap_or(rules.shortfall),
            expiring_min: self.expiring_min.unwrap_or(rules.expiring_min),
            global_webhooks: rules.global_webhooks,
        }
    }
}

/// Where one (pool, kind) threshold stands.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mark {
    /// Below the threshold already: it must rise above before it can fire again.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub tripped: bool,
    /// Start of the cycle it last fired in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fired_in: Option<DateTime<Utc>>,
}

/// One alert to send.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Alert {
    /// Stable: account, pool, kind and cycle, so a replay decides the same alert.
    pub id: String,
    pub account: String,
    pub pool: String,
    pub kind: AlertKind,
    pub threshold: Credits,
    /// The pool's available balance when it fired; for `Expiring`, what expires within
    /// 14 days.
    pub balance: Credits,
    pub time: DateTime<Utc>,
    pub cycle_start: DateTime<Utc>,
    pub locale: String,
    pub recipients: Vec<String>,
}

/// Checks every threshold of every pool of the account at `at` and returns the alerts that
/// fire now, updating the account's marks. Accounts with no admins and no webhook (of
/// their own or in config) are not checked: there is nobody to tell.
pub fn evaluate(
    state: &mut AccountState,
    rules: &Rules,
    account: &str,
    at: DateTime<Utc>,
) -> Vec<Alert> {
    let limits = state.alerts.effective(&rules.alerts);
    let listened =
        !state.admins.is_empty() || !state.hooks.endpoints.is_empty() || limits.global_webhooks;
    if !limits.enabled || !listened {
        return Vec::new();
    }
    let cycle_start = match &state.subscription {
        Some(s) => s.cycle_start,
        None => plans::month_start(state.timezone(rules), at),
    };
    // Every call of an account with admins comes here, so nothing is allocated unless an
    // alert fires or a mark is new: the pools' names are sorted in a buffer on the stack
    // (an account has a few), their credits summed in place, and each check applied to
    // its mark as it is made, in the order pools then kinds.
    let mut inline = [""; INLINE_POOLS];
    let mut spilled = Vec::new();
    let names = state
        .lots
        .iter()
        .map(|lot| lot.pool.as_str())
        .chain(state.shortfall.keys().map(String::as_str));
    let count = state.lots.len() + state.shortfall.len();
    let pools: &mut [&str] = if count <= INLINE_POOLS {
        for (slot, name) in inline.iter_mut().zip(names) {
            *slot = name;
        }
        &mut inline[..count]
    } else {
        spilled.extend(names);
        &mut spilled
    };
    pools.sort_unstable();
    let mut fired = Vec::new();
    let marks = &mut state.alert_marks;
    let context = Context {
        account,
        at,
        cycle_start,
        locale: state.locale.as_deref(),
        admins: &state.admins,
    };
    for (i, &pool) in pools.iter().enumerate() {
        if i > 0 && pools[i - 1] == pool {
            continue;
        }
        let available = crate::account::available(&state.lots, pool, at);
        let mut check = |kind, below, threshold, balance| {
            let crossing = Check {
                pool,
                kind,
                below,
                threshold,
                balance,
            };
            if let Some(alert) = crossing.apply(marks, &context) {
                fired.push(alert);
            }
        };
        if limits.low_balance.is_positive() {
            let below = available < limits.low_balance;
            check(AlertKind::LowBalance, below, limits.low_balance, available);
        }
        if limits.shortfall {
            let owed = state.shortfall.get(pool).copied().unwrap_or_default();
            check(
                AlertKind::Shortfall,
                owed.is_positive(),
                Credits::ZERO,
                available,
            );
        }
        if limits.expiring_min.is_positive() {
            // Bought and free grants only: a cycle's allowance always ends with its cycle,
            // and the included-use alert covers it.
            let soon = at.checked_add_signed(EXPIRING_WITHIN).unwrap_or(at);
            let expiring: Credits = state
                .lots
                .iter()
                .filter(|lot| !lot.from_plan && lot.usable(pool, at))
                .filter(|lot| lot.expires_at.is_some_and(|end| end <= soon))
                .map(|lot| lot.free())
                .sum();
            check(
                AlertKind::Expiring,
                expiring > limits.expiring_min,
                limits.expiring_min,
                expiring,
            );
        }
        if limits.included_used_percent > 0 {
            // The allowance of the current cycle.
            let allowance = state.lots.iter().rev().find(|lot| {
                lot.from_plan
                    && lot.pool == *pool
                    && lot.effective_at >= cycle_start
                    && !lot.expired
                    && !lot.voided
            });
            if let Some(lot) = allowance {
                let used = lot.granted - lot.remaining;
                let share = i128::from(lot.granted.milli())
                    * i128::from(limits.included_used_percent.min(100))
                    / 100;
                let line = Credits::from_milli(i64::try_from(share).unwrap_or(i64::MAX));
                check(AlertKind::IncludedUsed, used >= line, line, available);
            }
        }
    }
    fired
}

/// Pools whose names [`evaluate`] sorts on the stack; an account with more lots and
/// shortfall pools than this sorts them in a `Vec`.
const INLINE_POOLS: usize = 16;

/// What every alert of one evaluation shares.
struct Context<'a> {
    account: &'a str,
    at: DateTime<Utc>,
    cycle_start: DateTime<Utc>,
    locale: Option<&'a str>,
    admins: &'a [String],
}

/// One threshold of one pool as it stands now.
struct Check<'a> {
    pool: &'a str,
    kind: AlertKind,
    below: bool,
    threshold: Credits,
    balance: Credits,
}

impl Check<'_> {
    /// Moves the threshold's mark (key `POOL/KIND`) and returns the alert if it fires: on
    /// a downward crossing, once per cycle.
    fn apply(&self, marks: &mut Marks, context: &Context<'_>) -> Option<Alert> {
        let mut buffer = [0u8; 64];
        let owned;
        let key = match mark_key(&mut buffer, self.pool, self.kind) {
            Some(key) => key,
            None => {
                owned = format!("{}/{}", self.pool, self.kind.as_str());
                owned.as_str()
            }
        };
        let mark = match marks.get_mut(key) {
            Some(mark) => mark,
            // A balance limit fires on a crossing: a pool that has never been above it (a
            // small pack of another pool, say) has nothing to cross yet.
            None => marks.entry(key.to_string()).or_insert(Mark {
                tripped: self.kind == AlertKind::LowBalance,
                fired_in: None,
            }),
        };
        if !self.below {
            mark.tripped = false;
            return None;
        }
        if mark.tripped {
            return None;
        }
        mark.tripped = true;
        if mark.fired_in == Some(context.cycle_start) {
            return None;
        }
        mark.fired_in = Some(context.cycle_start);
        Some(Alert {
            id: format!(
                "{}/{}/{}/{}",
                context.account,
                self.pool,
                self.kind.as_str(),
                context.cycle_start.timestamp()
            ),
            account: context.account.to_string(),
            pool: self.pool.to_string(),
            kind: self.kind,
            threshold: self.threshold,
            balance: self.balance,
            time: context.at,
            cycle_start: context.cycle_start,
            locale: context.locale.unwrap_or("en").to_string(),
            recipients: context.admins.to_vec(),
        })
    }
}

/// `POOL/KIND` written into `buffer`, or `None` when it does not fit.
fn mark_key<'b>(buffer: &'b mut [u8; 64], pool: &str, kind: AlertKind) -> Option<&'b str> {
    let kind = kind.as_str();
    let len = pool.len() + 1 + kind.len();
    let key = buffer.get_mut(..len)?;
    key[..pool.len()].copy_from_slice(pool.as_bytes());
    key[pool.len()] = b'/';
    key[pool.len() + 1..].copy_from_slice(kind.as_bytes());
    std::str::from_utf8(key).ok()
}

/// Marks of an account, by "pool/kind".
pub type Marks = BTreeMap<String, Mark>;
