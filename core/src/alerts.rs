//! Low-credit alerts: their kinds, an account's own thresholds, the marks that remember
//! where each threshold stands, and the alert sent. `alerting` decides them.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use serde::{Deserialize, Serialize};

use crate::credits::Credits;
use crate::plans::Month;
pub use crate::rules::AlertRules;

/// What an alert is about: the one kind of alert, decided by `alerting`, stored
/// in the `alerts` table by its `as_str` name and mailed by the notifier.
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

/// Marks of an account, by "pool/kind".
pub type Marks = BTreeMap<String, Mark>;

/// What the last full evaluation of an account's alerts proved about the calls after it,
/// so that a call which moves no check across its threshold costs a few comparisons
/// instead of every check of every pool. Kept in the account's checkpointed state (the
/// shell's codec stores it), so the first call after a restart is as cheap as the others;
/// a state stored without it starts without it and evaluates in full. Equal whatever it
/// holds: it is a shortcut, not part of what the account is.
#[derive(Debug, Clone, Default)]
pub struct Quiet(Option<Calm>);

/// After a full evaluation every check's mark already agrees with its side of the
/// threshold, so the next evaluation changes nothing while no check changes side. Between
/// two calls without a hold only debits happen, and a debit only lowers lots: each check
/// that a debit can move across is at least `slack` away, and each time-bound change (a
/// lot starting, expiring or nearing its expiry, a new cycle) is at `until` or later.
/// Its fields are public for the codec that stores it; only an evaluation makes one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Calm {
    /// The thresholds it was proved for: other ones (a changed config after a restart,
    /// say) prove nothing.
    pub limits: AlertRules,
    /// The account's time zone it was proved in (the config's default may change).
    pub zone: Tz,
    pub from: DateTime<Utc>,
    pub until: DateTime<Utc>,
    /// The lots, grants and shortfall pools there were: any other count means the state
    /// changed in another way than a debit.
    pub lots: usize,
    pub next_seq: u64,
    pub shortfall_pools: usize,
    /// The free credits of all lots together.
    pub free: Credits,
    /// Debits (in all) smaller than this move no check across its threshold.
    pub slack: Credits,
    /// The calendar month it found the account in, when it has no plan: the next
    /// evaluation in it skips the zone's rules.
    pub month: Option<Month>,
}

impl PartialEq for Quiet {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl Eq for Quiet {}

impl Quiet {
    pub(crate) fn set(&mut self, calm: Calm) {
        self.0 = Some(calm);
    }

    /// A proof as stored with the account's state.
    pub fn restored(calm: Calm) -> Self {
        Quiet(Some(calm))
    }

    /// What it proved, if anything: for the codec to store.
    pub fn calm(&self) -> Option<&Calm> {
        self.0.as_ref()
    }

    /// The month the last evaluation found the account in, if `at` in `zone` falls in it.
    pub(crate) fn month(&self, zone: Tz, at: DateTime<Utc>) -> Option<Month> {
        self.0
            .as_ref()
            .filter(|calm| calm.zone == zone)
            .and_then(|calm| calm.month)
            .filter(|month| month.holds(at))
    }

    /// Forgets what it proved: the state changed in a way it does not follow.
    pub fn forget(&mut self) {
        self.0 = None;
    }

    /// Whether the evaluation at `at`, with these limits, lots and shortfall pools, would
    /// change no mark and fire nothing.
    pub(crate) fn covers(
        &self,
        limits: &AlertRules,
        zone: Tz,
        at: DateTime<Utc>,
        lots: &[crate::lots::Lot],
        next_seq: u64,
        shortfall_pools: usize,
    ) -> bool {
        let Some(calm) = &self.0 else {
            return false;
        };
        if calm.from > at
            || at >= calm.until
            || calm.lots != lots.len()
            || calm.next_seq != next_seq
            || calm.shortfall_pools != shortfall_pools
            || calm.limits != *limits
            || calm.zone != zone
        {
            return false;
        }
        let debited = calm.free - lots.iter().map(crate::lots::Lot::free).sum();
        !debited.is_negative() && debited < calm.slack
    }
}
