//! The rules every account is held to, from config, and the limits every module of the
//! core shares. It depends on nothing above it, so account, alerts, holds and ledger all
//! take these from here rather than from one another.

use std::collections::BTreeMap;

use chrono::TimeDelta;
use chrono_tz::Tz;

use crate::credits::Credits;
use crate::lots::Policy;
use crate::plans::Plan;
use crate::pricing::CostMatrix;

/// The largest single grant: a trillion credits. Bounding grants keeps every sum of lots
/// far from the limits of the fixed-point integers.
pub const MAX_GRANT: Credits = Credits::from_whole(1_000_000_000_000);

/// "Expiring soon" in balances: within 14 days [000].
pub const EXPIRING_WITHIN: TimeDelta = TimeDelta::days(14);

/// The service named on entries that no event caused (expiries, cycle allowances).
pub const SERVICE: &str = "tally";

/// The rules every account is held to, from config.
#[derive(Debug, Clone)]
pub struct Rules {
    pub matrix: CostMatrix,
    pub default_timezone: Tz,
    pub default_policy: Policy,
    /// Events older than this, relative to their arrival, are rejected.
    pub max_lateness: TimeDelta,
    /// Events newer than this, relative to their arrival, are rejected.
    pub max_future_skew: TimeDelta,
    pub dedup_window: TimeDelta,
    /// Plans by name.
    pub plans: BTreeMap<String, Plan>,
    /// How long after its end a lot still pays for late calls before its expiry is written.
    pub expiry_grace: TimeDelta,
    /// Whether flex is on for accounts that do not say.
    pub flex_enabled: bool,
    /// Flex allowed per cycle when neither the account nor its plan says.
    pub flex_threshold: Credits,
    /// Whether a grant first pays outstanding shortfall, for accounts that do not say.
    pub settle_shortfall: bool,
    /// Low-credit alert thresholds for accounts that do not set their own.
    pub alerts: AlertRules,
    /// Most holds an account may have open at once: every flush writes the account's
    /// whole state, holds included, so without a cap memory and writes grow with the
    /// square of one account's holds. A hold over it is rejected (`bad_command`).
    pub max_open_holds: usize,
}

/// The default of [`Rules::max_open_holds`].
pub const DEFAULT_MAX_OPEN_HOLDS: usize = 1000;

/// The name flex payments carry in place of a lot id.
pub const FLEX_LOT: &str = "flex";

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
