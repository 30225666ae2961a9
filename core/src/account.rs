//! One account's state and how an event changes it: grants, voids, settings and debits.

use std::collections::BTreeMap;

use chrono::{DateTime, TimeDelta, Utc};
use chrono_tz::Tz;
use serde::{Deserialize, Serialize};

use crate::credits::Credits;
use crate::event::{Body, Event, Grant, Rejection, Settings, Status, Usage, Void};
use crate::ledger::{EntryType, LedgerEntry};
use crate::lots::{self, Lot, LotKind, Policy};
use crate::pricing::CostMatrix;

/// The largest single grant: a trillion credits. Bounding grants keeps every sum of lots
/// far from the limits of the fixed-point integers.
pub const MAX_GRANT: Credits = Credits::from_whole(1_000_000_000_000);

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
}

/// Everything tally remembers about one account.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccountState {
    pub lots: Vec<Lot>,
    /// Grant order, for the last tie-break between lots.
    pub next_seq: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timezone: Option<Tz>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<Policy>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub locale: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub admins: Vec<String>,
}

/// Available credits of one pool.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct PoolBalance {
    pub available: Credits,
    pub by_kind: BTreeMap<&'static str, Credits>,
}

impl AccountState {
    pub fn timezone(&self, rules: &Rules) -> Tz {
        self.timezone.unwrap_or(rules.default_timezone)
    }

    pub fn policy(&self, rules: &Rules) -> Policy {
        self.policy.unwrap_or(rules.default_policy)
    }

    /// Applies one event and returns the ledger entries it produced.
    pub fn apply(
        &mut self,
        rules: &Rules,
        event: &Event,
        arrival: DateTime<Utc>,
    ) -> Result<Vec<LedgerEntry>, Rejection> {
        if event.time > arrival + rules.max_future_skew {
            return Err(Rejection::InFuture {
                time: event.time,
                skew_secs: rules.max_future_skew.num_seconds(),
            });
        }
        if event.time < arrival - rules.max_lateness {
            return Err(Rejection::TooLate {
                time: event.time,
                lateness_secs: rules.max_lateness.num_seconds(),
            });
        }
        match &event.body {
            Body::Usage(usage) => self.usage(rules, event, usage).map(|e| vec![e]),
            Body::Grant(grant) => self.grant(rules, event, grant).map(|e| vec![e]),
            Body::Void(void) => self.void(rules, event, void).map(|e| vec![e]),
            Body::Settings(settings) => self.settings(settings).map(|()| Vec::new()),
        }
    }

    fn entry(&self, rules: &Rules, event: &Event, entry_type: EntryType) -> LedgerEntry {
        LedgerEntry {
            entry_type,
            account: event.account.clone(),
            time: event.time,
            day: event.time.with_timezone(&self.timezone(rules)).date_naive(),
            service: event.source.clone(),
            user: String::new(),
            feature: String::new(),
            variant: String::new(),
            quantity: Credits::ZERO,
            status: Status::Succeeded,
            pool: String::new(),
            credits: Credits::ZERO,
            paid: Vec::new(),
            shortfall: Credits::ZERO,
            matrix_version: String::new(),
            event_id: event.id.clone(),
            lot: String::new(),
            lot_kind: None,
            payment_method: None,
            payment_reference: String::new(),
            comment: String::new(),
        }
    }

    fn usage(
        &mut self,
        rules: &Rules,
        event: &Event,
        usage: &Usage,
    ) -> Result<LedgerEntry, Rejection> {
        // Failed calls are priced too, so an unknown feature is caught either way.
        let price = rules.matrix.price(
            &usage.feature,
            usage.variant.as_deref(),
            usage.quantity,
            event.time,
        )?;
        let mut entry = self.entry(rules, event, EntryType::Usage);
        entry.user = usage.user.clone();
        entry.feature = usage.feature.clone();
        entry.variant = usage.variant.clone().unwrap_or_default();
        entry.quantity = usage.quantity;
        entry.status = usage.status;
        entry.pool = price.pool.to_string();
        entry.matrix_version = price.version.to_string();
        entry.comment = usage.comment.clone().unwrap_or_default();
        if usage.status == Status::Succeeded {
            let policy = self.policy(rules);
            let debit = lots::debit(
                &mut self.lots,
                price.pool,
                price.credits,
                event.time,
                policy,
            );
            entry.credits = price.credits;
            entry.paid = debit.paid;
            entry.shortfall = debit.shortfall;
        }
        Ok(entry)
    }

    fn grant(
        &mut self,
        rules: &Rules,
        event: &Event,
        grant: &Grant,
    ) -> Result<LedgerEntry, Rejection> {
        let reject = |problem: String| Err(Rejection::Command(problem));
        let id = grant.lot.clone().unwrap_or_else(|| event.id.clone());
        if self.lots.iter().any(|lot| lot.id == id) {
            return reject(format!("lot `{id}` already exists"));
        }
        if !grant.credits.is_positive() {
            return reject(format!("credits must be positive, got {}", grant.credits));
        }
        if grant.credits > MAX_GRANT {
            return reject(format!(
                "credits must be at most {MAX_GRANT} per grant, got {}",
                grant.credits
            ));
        }
        if grant.pool.trim().is_empty() {
            return reject("pool must not be empty".into());
        }
        let effective_at = grant.effective_at.unwrap_or(event.time);
        let expires_at = match (grant.expires_at, grant.valid_days) {
            (Some(_), Some(_)) => {
                return reject("give `expires_at` or `valid_days`, not both".into())
            }
            (Some(at), None) => Some(at),
            (None, Some(days)) => {
                // Checked: a huge `valid_days` must be rejected, not panic the consumer.
                match effective_at.checked_add_signed(TimeDelta::days(i64::from(days))) {
                    Some(end) => Some(end),
                    None => return reject(format!("valid_days {days} is out of range")),
                }
            }
            (None, None) => None,
        };
        if expires_at.is_some_and(|end| end <= effective_at) {
            return reject("the lot would expire before it takes effect".into());
        }
        let lot = Lot {
            id: id.clone(),
            pool: grant.pool.clone(),
            kind: grant.kind,
            granted: grant.credits,
            remaining: grant.credits,
            effective_at,
            expires_at,
            priority: grant.priority,
            seq: self.next_seq,
            voided: false,
        };
        self.next_seq += 1;
        self.lots.push(lot);
        let mut entry = self.entry(rules, event, EntryType::Grant);
        entry.pool = grant.pool.clone();
        entry.credits = grant.credits;
        entry.lot = id;
        entry.lot_kind = Some(grant.kind);
        entry.payment_method = grant.payment.as_ref().map(|p| p.method);
        entry.payment_reference = grant
            .payment
            .as_ref()
            .and_then(|p| p.reference.clone())
            .unwrap_or_default();
        entry.comment = grant.comment.clone().unwrap_or_default();
        Ok(entry)
    }

    fn void(
        &mut self,
        rules: &Rules,
        event: &Event,
        void: &Void,
    ) -> Result<LedgerEntry, Rejection> {
        let Some(lot) = self.lots.iter_mut().find(|lot| lot.id == void.lot) else {
            return Err(Rejection::Command(format!("no lot `{}`", void.lot)));
        };
        if lot.voided {
            return Err(Rejection::Command(format!(
                "lot `{}` is already void",
                void.lot
            )));
        }
        let removed = lot.remaining;
        lot.remaining = Credits::ZERO;
        lot.voided = true;
        let (pool, kind) = (lot.pool.clone(), lot.kind);
        let mut entry = self.entry(rules, event, EntryType::Void);
        entry.pool = pool;
        entry.credits = -removed;
        entry.lot = void.lot.clone();
        entry.lot_kind = Some(kind);
        entry.comment = void.reason.clone().unwrap_or_default();
        Ok(entry)
    }

    fn settings(&mut self, settings: &Settings) -> Result<(), Rejection> {
        let timezone = match &settings.timezone {
            Some(name) => Some(
                name.parse::<Tz>()
                    .map_err(|_| Rejection::Command(format!("unknown time zone `{name}`")))?,
            ),
            None => None,
        };
        if let Some(admins) = &settings.admins {
            if let Some(bad) = admins.iter().find(|a| !looks_like_address(a)) {
                return Err(Rejection::Command(format!(
                    "`{bad}` is not an email address"
                )));
            }
            self.admins = admins.clone();
        }
        if timezone.is_some() {
            self.timezone = timezone;
        }
        if settings.policy.is_some() {
            self.policy = settings.policy;
        }
        if settings.locale.is_some() {
            self.locale = settings.locale.clone();
        }
        Ok(())
    }

    /// Credits available at `at`, per pool and kind.
    pub fn balance(&self, at: DateTime<Utc>) -> BTreeMap<String, PoolBalance> {
        balance(&self.lots, at)
    }
}

/// Credits available at `at` in `lots`, per pool and kind.
pub fn balance(lots: &[Lot], at: DateTime<Utc>) -> BTreeMap<String, PoolBalance> {
    let mut pools: BTreeMap<String, PoolBalance> = BTreeMap::new();
    for lot in lots {
        let pool = pools.entry(lot.pool.clone()).or_default();
        for kind in LotKind::ALL {
            pool.by_kind.entry(kind.as_str()).or_default();
        }
        if lot.usable(&lot.pool, at) {
            pool.available += lot.remaining;
            *pool.by_kind.entry(lot.kind.as_str()).or_default() += lot.remaining;
        }
    }
    pools
}

/// A plain check that keeps header-breaking text out; real validation happens at send time.
fn looks_like_address(text: &str) -> bool {
    let mut parts = text.split('@');
    matches!((parts.next(), parts.next(), parts.next()), (Some(l), Some(d), None)
        if !l.is_empty() && d.contains('.') && !text.chars().any(|c| c.is_whitespace() || c.is_control() || c == ',' || c == '<' || c == '>'))
}
