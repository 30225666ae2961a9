//! Low-credit alerts: their kinds, an account's own thresholds, the marks that remember
//! where each threshold stands, and the alert sent. `alerting` decides them.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::credits::Credits;
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
