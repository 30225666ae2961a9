//! One account's state and how an event changes it: grants, voids, settings and debits.

use std::collections::BTreeMap;

use chrono::{DateTime, TimeDelta, Timelike, Utc};
use chrono_tz::Tz;
use serde::{Deserialize, Serialize};

use crate::alerts::{AlertSettings, Marks, Quiet};
use crate::credits::Credits;
use crate::day_cache::DayCache;
use crate::event::{Body, Event, Grant, PlanChange, Rejection, Settings, Status, Usage, Void};
use crate::hold_state::{Answer, Holds};
use crate::ledger::{Entries, EntryType, LedgerEntry};
use crate::lots::{self, Lot, LotKind, Payment, Payments, Policy};
use crate::names::{Name, Names, OwnName};
use crate::plans::{self, Subscription};
use crate::short_text::ShortText;

pub use crate::rules::{
    Rules, DEFAULT_MAX_OPEN_HOLDS, EXPIRING_WITHIN, FLEX_LOT, MAX_GRANT, SERVICE,
};

/// Everything tally remembers about one account.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccountState {
    pub lots: Vec<Lot>,
    /// The day of the last call, so the next call on it skips the zone's rules.
    #[serde(skip)]
    pub day_cache: DayCache,
    /// The account's interned name, so its calls skip the partition's table.
    #[serde(skip)]
    pub own_name: OwnName,
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
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subscription: Option<Subscription>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flex_enabled: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flex_threshold: Option<Credits>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub settle_shortfall: Option<bool>,
    /// Flex used in the period that started at `flex_period`.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub flex_used: Credits,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flex_period: Option<DateTime<Utc>>,
    /// Usage no lot or flex could pay, per pool, not yet settled by a grant.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub shortfall: BTreeMap<String, Credits>,
    /// The account's own alert thresholds.
    #[serde(default, skip_serializing_if = "is_default")]
    pub alerts: AlertSettings,
    /// Where each alert threshold stands, so it fires once per crossing and cycle.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub alert_marks: Marks,
    /// What the last evaluation of the alerts proved about the next calls. The shell's
    /// state codec stores it; the JSON form (of earlier versions) does not.
    #[serde(skip)]
    pub alert_quiet: Quiet,
    /// Open holds, and closed ones for the dedup window after they closed. States
    /// written before holds existed have none.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub holds: Holds,
    /// Webhook endpoints and the auto top-up, with where it stands.
    #[serde(
        default,
        skip_serializing_if = "crate::hook_state::HookState::is_empty"
    )]
    pub hooks: crate::hook_state::HookState,
}

/// What applying one event decided: its ledger entries, and for hold and release
/// commands the answer the caller waits for.
/// What the accounts of one partition share while deciding, so each need not make it
/// again: the interned names of their entries and the last calendar day looked up (the
/// accounts of a partition mostly share a time zone, so an account's first call of a day
/// seldom has to work the day out from the zone's rules).
#[derive(Debug, Clone, Default)]
pub struct Shared {
    pub names: Names,
    pub day: DayCache,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Applied {
    pub entries: Vec<LedgerEntry>,
    pub answer: Option<Answer>,
}

/// Flex of one account as of some time.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct FlexView {
    pub enabled: bool,
    pub threshold: Credits,
    pub used: Credits,
}

/// Available credits of one pool.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct PoolBalance {
    /// Free credits: what no hold reserved.
    pub available: Credits,
    /// Credits of the pool's lots reserved by open holds, apart from `available`.
    pub held: Credits,
    pub by_kind: BTreeMap<&'static str, Credits>,
    /// Of `available`, what expires within [`EXPIRING_WITHIN`].
    pub expiring_soon: Credits,
}

impl AccountState {
    pub fn timezone(&self, rules: &Rules) -> Tz {
        self.timezone.unwrap_or(rules.default_timezone)
    }

    /// The calendar day of `time` in the account's time zone.
    pub fn day_of(&self, rules: &Rules, time: DateTime<Utc>) -> chrono::NaiveDate {
        time.with_timezone(&self.timezone(rules)).date_naive()
    }

    pub fn policy(&self, rules: &Rules) -> Policy {
        self.policy.unwrap_or(rules.default_policy)
    }

    pub fn flex_enabled(&self, rules: &Rules) -> bool {
        self.flex_enabled.unwrap_or(rules.flex_enabled)
    }

    /// The account's own threshold, else its plan's, else the default.
    pub fn flex_threshold(&self, rules: &Rules) -> Credits {
        self.flex_threshold
            .or_else(|| {
                self.subscription
                    .as_ref()
                    .and_then(|s| s.plan.flex_threshold)
            })
            .unwrap_or(rules.flex_threshold)
    }

    pub fn settles_shortfall(&self, rules: &Rules) -> bool {
        self.settle_shortfall.unwrap_or(rules.settle_shortfall)
    }

    /// Start of the flex period a call at `at` counts in: the plan's current cycle, or the
    /// calendar month without a plan. Never before the period already counting, so a late
    /// call cannot reopen a closed period.
    fn flex_period_at(&self, rules: &Rules, at: DateTime<Utc>) -> DateTime<Utc> {
        let period = match &self.subscription {
            Some(s) => s.cycle_start,
            // The month the last alert check found, when `at` lies in it: the zone's rules
            // cost more than the rest of a call.
            None => {
                let zone = self.timezone(rules);
                match self.alert_quiet.month(zone, at) {
                    Some(month) => month.start,
                    None => plans::month_start(zone, at),
                }
            }
        };
        debug_assert!(
            self.subscription.is_some() || period == plans::month_start(self.timezone(rules), at)
        );
        self.flex_period.map_or(period, |p| p.max(period))
    }

    /// Flex as it stands for a call at `at`.
    pub fn flex(&self, rules: &Rules, at: DateTime<Utc>) -> FlexView {
        let used = if self.flex_period == Some(self.flex_period_at(rules, at)) {
            self.flex_used
        } else {
            Credits::ZERO
        };
        FlexView {
            enabled: self.flex_enabled(rules),
            threshold: self.flex_threshold(rules),
            used,
        }
    }

    /// When something falls due on this account's own: the next cycle, a lot's expiry
    /// (plus the grace for late calls), a hold's expiry or the end of a closed hold's memory.
    pub fn next_deadline(&self, rules: &Rules) -> Option<DateTime<Utc>> {
        let issue = self.subscription.as_ref().map(|s| s.cycle_end);
        let expiry = self
            .lots
            .iter()
            .filter(|lot| !lot.expired && !lot.voided)
            .filter_map(|lot| lot.expires_at?.checked_add_signed(rules.expiry_grace))
            .min();
        let hold = self.next_hold_deadline(rules);
        [issue, expiry, hold].into_iter().flatten().min()
    }

    /// Writes what fell due by `clock`: first the holds whose expiry passed (they only
    /// give credits back), then, oldest first, expiries of lots whose end plus the grace
    /// has passed and the allowances of cycles that have started.
    pub fn advance(
        &mut self,
        rules: &Rules,
        account: &str,
        clock: DateTime<Utc>,
    ) -> Vec<LedgerEntry> {
        let mut entries = self.advance_holds(rules, account, clock);
        loop {
            let issue = self
                .subscription
                .as_ref()
                .map(|s| s.cycle_end)
                .filter(|end| *end <= clock);
            let expiry = self
                .lots
                .iter()
                .enumerate()
                .filter(|(_, lot)| !lot.expired && !lot.voided)
                .filter_map(|(i, lot)| {
                    let end = lot.expires_at?;
                    let due = end.checked_add_signed(rules.expiry_grace)?;
                    (due <= clock).then_some((end, lot.seq, i))
                })
                .min();
            let expiry_first = match (issue, expiry) {
                (None, None) => break,
                (Some(start), Some((end, _, _))) => end <= start,
                (Some(_), None) => false,
                (None, Some(_)) => true,
            };
            match expiry {
                Some((_, _, i)) if expiry_first => entries.extend(self.expire(rules, account, i)),
                _ => entries.extend(self.next_cycle(rules, account)),
            }
        }
        entries
    }

    fn expire(&mut self, rules: &Rules, account: &str, index: usize) -> Option<LedgerEntry> {
        let tz = self.timezone(rules);
        let lot = &mut self.lots[index];
        lot.expired = true;
        // Reserved credits expire with their lot: what was held is in `left`.
        lot.held = Credits::ZERO;
        let left = std::mem::replace(&mut lot.remaining, Credits::ZERO);
        let lot_id = lot.id.clone();
        self.drop_reservations(&lot_id);
        let lot = &self.lots[index];
        let at = lot.expires_at?;
        if !left.is_positive() {
            return None;
        }
        let mut entry = blank_entry(account, at, tz, SERVICE, "");
        entry.id = Some(format!("expiry/{}", lot.id));
        entry.entry_type = EntryType::Expiry;
        entry.pool = Name::from(lot.pool.as_str());
        entry.credits = -left;
        entry.lot = lot.id.to_string();
        entry.lot_kind = Some(lot.kind);
        Some(entry)
    }

    /// Turns the subscription over to its next cycle and issues that cycle's allowance.
    fn next_cycle(&mut self, rules: &Rules, account: &str) -> Option<LedgerEntry> {
        let s = self.subscription.as_mut()?;
        s.cycle += 1;
        s.cycle_start = s.cycle_end;
        s.cycle_end = plans::cycle_start(s.anchor, s.timezone, s.plan.period, s.cycle + 1);
        let (start, end) = (s.cycle_start, s.cycle_end);
        self.issue_allowance(rules, account, start, end, None)
    }

    /// The `included` lot of one cycle, with its grant entry. `event` names the command
    /// that started the cycle, if one did; otherwise the entry gets a stable id.
    fn issue_allowance(
        &mut self,
        rules: &Rules,
        account: &str,
        from: DateTime<Utc>,
        until: DateTime<Utc>,
        event: Option<&Event>,
    ) -> Option<LedgerEntry> {
        let s = self.subscription.as_ref()?;
        if !s.plan.credits.is_positive() || until <= from {
            return None;
        }
        let date = from.with_timezone(&s.timezone).format("%Y-%m-%d");
        let mut id = format!("{}:{date}", s.name);
        if self.lots.iter().any(|lot| lot.id == id) {
            id = format!("{id}#{}", self.next_seq);
        }
        let (name, plan, payment, cycle) = (s.name.clone(), s.plan.clone(), s.payment, s.cycle);
        self.lots.push(Lot {
            id: Name::from(id.as_str()),
            pool: plan.pool.as_str().into(),
            kind: LotKind::Included,
            granted: plan.credits,
            remaining: plan.credits,
            effective_at: from,
            expires_at: Some(until),
            priority: None,
            seq: self.next_seq,
            voided: false,
            expired: false,
            from_plan: true,
            held: Credits::ZERO,
        });
        self.next_seq += 1;
        let tz = self.timezone(rules);
        let mut entry = match event {
            Some(event) => blank_entry(account, event.time, tz, &event.source, &event.id),
            None => {
                let mut entry = blank_entry(account, from, tz, SERVICE, "");
                entry.id = Some(format!("grant/{id}"));
                entry
            }
        };
        entry.entry_type = EntryType::Grant;
        entry.pool = Name::from(plan.pool);
        entry.credits = plan.credits;
        entry.lot = id;
        entry.lot_kind = Some(LotKind::Included);
        entry.payment_method = payment;
        entry.comment = format!("plan {name}, cycle {cycle}");
        Some(entry)
    }

    /// Applies one event and returns the ledger entries it produced.
    pub fn apply(
        &mut self,
        rules: &Rules,
        event: &Event,
        arrival: DateTime<Utc>,
    ) -> Result<Vec<LedgerEntry>, Rejection> {
        self.decide(rules, event, arrival)
            .map(|applied| applied.entries)
    }

    /// Applies one event: its ledger entries, and the answer to a hold or release. Every
    /// check comes before any change, so a rejected event leaves the account as it was.
    pub fn decide(
        &mut self,
        rules: &Rules,
        event: &Event,
        arrival: DateTime<Utc>,
    ) -> Result<Applied, Rejection> {
        self.decide_with(rules, event, arrival, &mut Shared::default())
    }

    /// [`AccountState::decide`] with what the partition's accounts share.
    pub fn decide_with(
        &mut self,
        rules: &Rules,
        event: &Event,
        arrival: DateTime<Utc>,
        shared: &mut Shared,
    ) -> Result<Applied, Rejection> {
        check_time(rules, event.time, arrival)?;
        let entries = match &event.body {
            Body::Usage(usage) => {
                let call = Call::of(event, usage);
                let mut entries = Entries::new();
                self.usage_into(rules, &call, arrival, shared, &mut entries)
                    .map(|_| entries.into_vec())
            }
            Body::Grant(grant) => self.grant(rules, event, grant),
            Body::Void(void) => self.void(rules, event, void).map(|e| vec![e]),
            Body::Plan(change) => self.plan(rules, event, change),
            Body::Settings(settings) => self.settings(settings).map(|()| Vec::new()),
            Body::Hold(request) => {
                let answer = self.hold(rules, event, request, arrival)?;
                return Ok(Applied {
                    entries: Vec::new(),
                    answer: Some(answer),
                });
            }
            Body::Release(release) => {
                let answer = self.release(release, arrival)?;
                return Ok(Applied {
                    entries: Vec::new(),
                    answer: Some(answer),
                });
            }
            Body::Tick => Ok(Vec::new()),
        }?;
        Ok(Applied {
            entries,
            answer: None,
        })
    }

    fn entry(&self, rules: &Rules, event: &Event, entry_type: EntryType) -> LedgerEntry {
        let mut entry = blank_entry(
            &event.account,
            event.time,
            self.timezone(rules),
            &event.source,
            &event.id,
        );
        entry.entry_type = entry_type;
        entry
    }

    /// Debits one call whose time the caller checked ([`check_time`]), pushing its entry
    /// onto `entries` (where the caller keeps it, so it is not moved again) and returning
    /// the account's shared name. Its names are interned in `shared` (the feature, variant,
    /// pool and matrix version come named from the matrix): the entry copies no string of
    /// the call but its event id (and a comment, when there is one).
    pub fn usage_into(
        &mut self,
        rules: &Rules,
        call: &Call<'_>,
        arrival: DateTime<Utc>,
        shared: &mut Shared,
        entries: &mut Entries,
    ) -> Result<Name, Rejection> {
        // Failed calls are priced too, so an unknown feature is caught either way.
        let price = rules
            .matrix
            .price(call.feature, call.variant, call.quantity, call.time)?;
        if call.status == Status::Succeeded {
            // Sums of credits must stay exact: a call larger than any grant, or one whose
            // shortfall the account's outstanding shortfall could not hold, is refused
            // before anything is debited, never wrapped around.
            if price.credits > MAX_GRANT {
                return Err(Rejection::OutOfRange(format!(
                    "the call costs {}, more than the most a call may cost ({MAX_GRANT})",
                    price.credits
                )));
            }
            let owed = self.shortfall.get(price.pool).copied().unwrap_or_default();
            if owed.checked_add(price.credits).is_none() {
                return Err(Rejection::OutOfRange(format!(
                    "the outstanding shortfall of pool `{}` would overflow",
                    price.pool
                )));
            }
        }
        let account = self.own_name.get(&mut shared.names, call.account);
        entries.push(LedgerEntry {
            id: None,
            entry_type: EntryType::Usage,
            account: account.clone(),
            time: call.time,
            day: (self.day_cache).day_shared(&mut shared.day, self.timezone(rules), call.time),
            service: shared.names.intern(call.source),
            user: shared.names.intern(call.user),
            feature: price.feature_name.clone(),
            variant: price.variant_name.cloned().unwrap_or_default(),
            quantity: call.quantity,
            status: call.status,
            pool: price.pool_name.clone(),
            credits: Credits::ZERO,
            paid: Payments::new(),
            shortfall: Credits::ZERO,
            matrix_version: price.version_name.clone(),
            event_id: ShortText::from(call.id),
            lot: String::new(),
            lot_kind: None,
            payment_method: None,
            payment_reference: String::new(),
            comment: call.comment.map(str::to_string).unwrap_or_default(),
            hold: None,
        });
        // Just pushed: the entry is the last.
        let last = entries.len() - 1;
        let entry = &mut entries[last];
        // The call happened, so the hold it names closes now, failed or not: a failed
        // call pays nothing and its hold gives everything back.
        let held = match call.hold {
            Some(reference) => {
                let (held, note) = self.settle_hold(reference, arrival);
                entry.hold = Some(note);
                held
            }
            None => Vec::new(),
        };
        if call.status == Status::Succeeded {
            let policy = self.policy(rules);
            let mut left = price.credits;
            // The held lots pay first, each up to what it reserved (the reservation was
            // made in debit order when the hold was placed, so a lot whose end has passed
            // since, within the grace, still pays it); then the debit order for the rest.
            let mut paid = Payments::new();
            for reservation in held.iter().filter(|p| p.kind != LotKind::Flex) {
                let Some(lot) = self.lots.iter_mut().find(|lot| {
                    lot.id == reservation.lot
                        && lot.pool == price.pool
                        && !lot.expired
                        && !lot.voided
                }) else {
                    continue;
                };
                let take = reservation.credits.min(left).min(lot.free());
                if !take.is_positive() {
                    continue;
                }
                lot.remaining -= take;
                left -= take;
                paid.push(Payment {
                    lot: lot.id.clone(),
                    kind: lot.kind,
                    credits: take,
                });
            }
            // A held lot that also pays beyond its reservation shows once, with the sum.
            // Without a hold the debit's own list is the whole list (a debit names each
            // lot once: it takes a lot's free credits whole or stops), so it is written
            // straight into the entry's list, empty as it was built (on every call).
            if paid.is_empty() {
                debug_assert!(entry.paid.is_empty());
                entry.shortfall = lots::debit_into(
                    &mut self.lots,
                    price.pool,
                    left,
                    call.time,
                    policy,
                    &mut entry.paid,
                );
            } else {
                let debit = lots::debit(&mut self.lots, price.pool, left, call.time, policy);
                for payment in debit.paid {
                    match paid.iter_mut().find(|p| p.lot == payment.lot) {
                        Some(p) => p.credits += payment.credits,
                        None => paid.push(payment),
                    }
                }
                entry.paid = paid;
                entry.shortfall = debit.shortfall;
            }
            entry.credits = price.credits;
            if entry.shortfall.is_positive() && self.flex_enabled(rules) {
                let period = self.flex_period_at(rules, call.time);
                if self.flex_period != Some(period) {
                    self.flex_period = Some(period);
                    self.flex_used = Credits::ZERO;
                }
                // Flex that open holds reserved is not this call's to use.
                let room = (self.flex_threshold(rules) - self.flex_used - self.flex_held())
                    .max(Credits::ZERO);
                let take = room.min(entry.shortfall);
                if take.is_positive() {
                    self.flex_used += take;
                    entry.shortfall -= take;
                    entry.paid.push(Payment {
                        lot: Name::from(FLEX_LOT),
                        kind: LotKind::Flex,
                        credits: take,
                    });
                }
            }
            if entry.shortfall.is_positive() {
                *self.shortfall.entry(entry.pool.to_string()).or_default() += entry.shortfall;
            }
        }
        Ok(account)
    }

    fn grant(
        &mut self,
        rules: &Rules,
        event: &Event,
        grant: &Grant,
    ) -> Result<Vec<LedgerEntry>, Rejection> {
        let reject = |problem: String| Err(Rejection::Command(problem));
        if grant.kind == LotKind::Flex {
            return reject("kind `flex` cannot be granted: flex is postpaid overage".into());
        }
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
        // Balances sum the remaining credits of a pool's lots: that sum must stay exact.
        let in_pool = self
            .lots
            .iter()
            .filter(|lot| lot.pool == grant.pool)
            .try_fold(grant.credits, |sum, lot| sum.checked_add(lot.remaining));
        if in_pool.is_none() {
            return Err(Rejection::OutOfRange(format!(
                "pool `{}` would hold more credits than can be counted exactly",
                grant.pool
            )));
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
            id: Name::from(id.as_str()),
            pool: grant.pool.as_str().into(),
            kind: grant.kind,
            granted: grant.credits,
            remaining: grant.credits,
            effective_at,
            expires_at,
            priority: grant.priority,
            seq: self.next_seq,
            voided: false,
            expired: false,
            from_plan: false,
            held: Credits::ZERO,
        };
        self.next_seq += 1;
        self.lots.push(lot);
        let mut entry = self.entry(rules, event, EntryType::Grant);
        entry.pool = Name::from(grant.pool.as_str());
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
        let mut entries = vec![entry];
        entries.extend(self.settle(rules, event));
        Ok(entries)
    }

    /// The newest lot first pays what its pool owes, if the account settles shortfall.
    fn settle(&mut self, rules: &Rules, event: &Event) -> Option<LedgerEntry> {
        if !self.settles_shortfall(rules) {
            return None;
        }
        let lot = self.lots.last_mut()?;
        let owed = self.shortfall.get_mut(lot.pool.as_str())?;
        let amount = (*owed).min(lot.remaining);
        if !amount.is_positive() {
            return None;
        }
        *owed -= amount;
        if !owed.is_positive() {
            self.shortfall.remove(lot.pool.as_str());
        }
        lot.remaining -= amount;
        let payment = Payment {
            lot: lot.id.clone(),
            kind: lot.kind,
            credits: amount,
        };
        let pool = Name::from(lot.pool.as_str());
        let mut entry = self.entry(rules, event, EntryType::Settlement);
        entry.pool = pool;
        entry.credits = amount;
        entry.lot = payment.lot.to_string();
        entry.lot_kind = Some(payment.kind);
        entry.paid = smallvec::smallvec![payment];
        entry.comment = "outstanding shortfall settled by this grant".into();
        Some(entry)
    }

    fn plan(
        &mut self,
        rules: &Rules,
        event: &Event,
        change: &PlanChange,
    ) -> Result<Vec<LedgerEntry>, Rejection> {
        let Some(plan) = rules.plans.get(&change.plan) else {
            let known: Vec<&str> = rules.plans.keys().map(String::as_str).collect();
            return Err(Rejection::Command(format!(
                "unknown plan `{}`; known: {}",
                change.plan,
                known.join(", ")
            )));
        };
        let anchor = change.anchor.unwrap_or(event.time);
        if anchor > event.time {
            return Err(Rejection::Command(format!(
                "anchor {anchor} is after the command's time {}; send the command when the plan starts",
                event.time
            )));
        }
        // A plan change ends the current allowance now and starts a fresh cycle [002].
        for lot in &mut self.lots {
            if lot.from_plan && !lot.expired && !lot.voided {
                lot.expires_at = Some(lot.expires_at.map_or(event.time, |e| e.min(event.time)));
            }
        }
        let tz = self.timezone(rules);
        let (cycle, cycle_start, cycle_end) = plans::cycle_at(anchor, tz, plan.period, event.time);
        self.subscription = Some(Subscription {
            name: change.plan.clone(),
            plan: plan.clone(),
            anchor,
            timezone: tz,
            payment: change.payment.as_ref().map(|p| p.method),
            cycle,
            cycle_start,
            cycle_end,
        });
        self.flex_period = Some(event.time.max(cycle_start));
        self.flex_used = Credits::ZERO;
        Ok(self
            .issue_allowance(rules, &event.account, event.time, cycle_end, Some(event))
            .into_iter()
            .collect())
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
        if lot.expired {
            return Err(Rejection::Command(format!(
                "lot `{}` has expired",
                void.lot
            )));
        }
        let removed = lot.remaining;
        lot.remaining = Credits::ZERO;
        // A refund takes reserved credits too: the holds on this lot lose them.
        lot.held = Credits::ZERO;
        lot.voided = true;
        let (pool, kind) = (Name::from(lot.pool.as_str()), lot.kind);
        self.drop_reservations(&void.lot);
        let mut entry = self.entry(rules, event, EntryType::Void);
        entry.pool = pool;
        entry.credits = -removed;
        entry.lot = void.lot.clone();
        entry.lot_kind = Some(kind);
        entry.comment = void.reason.clone().unwrap_or_default();
        Ok(entry)
    }

    /// Checks every field first and only then changes anything, so a rejected command
    /// leaves the account as it was.
    fn settings(&mut self, settings: &Settings) -> Result<(), Rejection> {
        let reject = |problem: String| Err(Rejection::Command(problem));
        let timezone = match &settings.timezone {
            Some(name) => match name.parse::<Tz>() {
                Ok(tz) => Some(tz),
                Err(_) => return reject(format!("unknown time zone `{name}`")),
            },
            None => None,
        };
        if let Some(bad) = settings
            .admins
            .iter()
            .flatten()
            .find(|a| !looks_like_address(a))
        {
            return reject(format!("`{bad}` is not an email address"));
        }
        let out_of_range = |c: Credits| c.is_negative() || c > MAX_GRANT;
        if let Some(flex) = &settings.flex {
            if flex.threshold.is_some_and(out_of_range) {
                return reject(format!("flex threshold must be between 0 and {MAX_GRANT}"));
            }
        }
        if let Some(alerts) = &settings.alerts {
            if alerts.included_used_percent.is_some_and(|p| p > 100) {
                return reject("alerts.included_used_percent must be at most 100".into());
            }
            if [alerts.low_balance, alerts.expiring_min]
                .into_iter()
                .flatten()
                .any(out_of_range)
            {
                return reject(format!(
                    "alert thresholds must be between 0 and {MAX_GRANT}"
                ));
            }
        }
        let hooks = crate::hook_state::HookSettings {
            webhooks: settings.webhooks.as_deref(),
            top_up: settings.top_up.as_ref(),
            reset_email: settings.reset_email,
        };
        if let Err(problem) = crate::hook_state::check(&hooks) {
            return reject(problem);
        }
        self.hooks.apply(&hooks);
        if let Some(admins) = &settings.admins {
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
        if let Some(flex) = &settings.flex {
            if flex.enabled.is_some() {
                self.flex_enabled = flex.enabled;
            }
            if flex.threshold.is_some() {
                self.flex_threshold = flex.threshold;
            }
        }
        if settings.settle_shortfall.is_some() {
            self.settle_shortfall = settings.settle_shortfall;
        }
        if let Some(alerts) = &settings.alerts {
            self.alerts.merge(alerts);
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
    let soon = at.checked_add_signed(EXPIRING_WITHIN).unwrap_or(at);
    for lot in lots {
        let pool = pools.entry(lot.pool.to_string()).or_default();
        for kind in LotKind::ALL {
            pool.by_kind.entry(kind.as_str()).or_default();
        }
        if !lot.voided && !lot.expired {
            pool.held += lot.held;
        }
        if lot.usable(&lot.pool, at) {
            pool.available += lot.free();
            *pool.by_kind.entry(lot.kind.as_str()).or_default() += lot.free();
            if lot.expires_at.is_some_and(|end| end <= soon) {
                pool.expiring_soon += lot.free();
            }
        }
    }
    pools
}

/// Credits of `pool` available at `at` in `lots`: the `available` of [`balance`].
pub fn available(lots: &[Lot], pool: &str, at: DateTime<Utc>) -> Credits {
    lots.iter()
        .filter(|lot| lot.usable(pool, at))
        .map(Lot::free)
        .sum()
}

/// An entry with only its account, time, service and event filled in.
pub(crate) fn blank_entry(
    account: &str,
    time: DateTime<Utc>,
    tz: Tz,
    service: &str,
    event_id: &str,
) -> LedgerEntry {
    LedgerEntry {
        id: None,
        entry_type: EntryType::Usage,
        account: Name::from(account),
        time,
        day: time.with_timezone(&tz).date_naive(),
        service: Name::from(service),
        user: Name::default(),
        feature: Name::default(),
        variant: Name::default(),
        quantity: Credits::ZERO,
        status: Status::Succeeded,
        pool: Name::default(),
        credits: Credits::ZERO,
        paid: Payments::new(),
        shortfall: Credits::ZERO,
        matrix_version: Name::default(),
        event_id: ShortText::from(event_id),
        lot: String::new(),
        lot_kind: None,
        payment_method: None,
        payment_reference: String::new(),
        comment: String::new(),
        hold: None,
    }
}

/// Refuses an event too far in the future or older than the allowed lateness, relative
/// to its arrival.
pub fn check_time(
    rules: &Rules,
    time: DateTime<Utc>,
    arrival: DateTime<Utc>,
) -> Result<(), Rejection> {
    // `time - arrival` against both bounds: the same comparisons as `time > arrival +
    // skew` and `time < arrival - lateness`, with one subtraction.
    let ahead = ahead_of(time, arrival);
    if ahead > rules.max_future_skew {
        return Err(Rejection::InFuture {
            time,
            skew_secs: rules.max_future_skew.num_seconds(),
        });
    }
    if ahead < -rules.max_lateness {
        return Err(Rejection::TooLate {
            time,
            lateness_secs: rules.max_lateness.num_seconds(),
        });
    }
    Ok(())
}

/// `time - arrival`, as `time.signed_duration_since(arrival)` gives it. On the same UTC
/// day (the common case: an event arrives moments after it happened) it is the
/// difference of the times of day; chrono's subtraction works through the calendar
/// dates first, at twice the instructions, on every call. A leap second (nanoseconds from
/// 10^9 up) and every other pair take chrono's way.
fn ahead_of(time: DateTime<Utc>, arrival: DateTime<Utc>) -> TimeDelta {
    let (time, arrival) = (time.naive_utc(), arrival.naive_utc());
    if time.date() != arrival.date() {
        return time.signed_duration_since(arrival);
    }
    // `NaiveTime`'s own accessors: a date-time's `num_seconds_from_midnight` is worked
    // out from its hour, minute and second.
    let (of_day, arrival_of_day) = (time.time(), arrival.time());
    let (nanos, arrival_nanos) = (of_day.nanosecond(), arrival_of_day.nanosecond());
    if nanos >= 1_000_000_000 || arrival_nanos >= 1_000_000_000 {
        return time.signed_duration_since(arrival);
    }
    let seconds = i64::from(of_day.num_seconds_from_midnight())
        - i64::from(arrival_of_day.num_seconds_from_midnight());
    let nanos = i64::from(nanos) - i64::from(arrival_nanos);
    // Under a day of seconds and under a second of nanoseconds: nowhere near overflow.
    TimeDelta::nanoseconds(seconds * 1_000_000_000 + nanos)
}

/// One AI call as an account debits it, borrowed from its event: an owned [`Event`], or a
/// usage event read in place from its payload ([`crate::event::borrowed::UsageEvent`]).
#[derive(Debug, Clone, Copy)]
pub struct Call<'a> {
    pub id: &'a str,
    pub source: &'a str,
    pub account: &'a str,
    pub time: DateTime<Utc>,
    pub user: &'a str,
    pub feature: &'a str,
    pub variant: Option<&'a str>,
    pub quantity: Credits,
    pub status: Status,
    pub comment: Option<&'a str>,
    pub hold: Option<&'a crate::event::HoldRef>,
}

impl<'a> Call<'a> {
    pub fn of(event: &'a Event, usage: &'a Usage) -> Self {
        Call {
            id: &event.id,
            source: &event.source,
            account: &event.account,
            time: event.time,
            user: &usage.user,
            feature: &usage.feature,
            variant: usage.variant.as_deref(),
            quantity: usage.quantity,
            status: usage.status,
            comment: usage.comment.as_deref(),
            hold: usage.hold.as_ref(),
        }
    }

    pub fn borrowed(usage: &'a crate::event::borrowed::UsageEvent<'a>) -> Self {
        Call {
            id: &usage.id,
            source: &usage.source,
            account: &usage.account,
            time: usage.time,
            user: &usage.user,
            feature: &usage.feature,
            variant: usage.variant.as_deref(),
            quantity: usage.quantity,
            status: usage.status,
            comment: usage.comment.as_deref(),
            hold: None,
        }
    }
}

/// A plain check that keeps header-breaking text out; real validation happens at send time.
fn looks_like_address(text: &str) -> bool {
    let mut parts = text.split('@');
    matches!((parts.next(), parts.next(), parts.next()), (Some(l), Some(d), None)
        if !l.is_empty() && d.contains('.') && !text.chars().any(|c| c.is_whitespace() || c.is_control() || c == ',' || c == '<' || c == '>'))
}

fn is_default(settings: &AlertSettings) -> bool {
    *settings == AlertSettings::default()
}

fn is_zero(credits: &Credits) -> bool {
    credits.is_zero()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `ahead_of` is chrono's subtraction: on the same day, across days (its fallback),
    /// either way round, with fractions and leap seconds.
    #[test]
    fn ahead_of_is_chronos_subtraction() {
        let times: Vec<DateTime<Utc>> = [
            "2026-11-20T00:00:00Z",
            "2026-11-20T00:00:00.000000001Z",
            "2026-11-20T09:15:02.5Z",
            "2026-11-20T09:15:03.25Z",
            "2026-11-20T23:59:59.999999999Z",
            "2026-11-20T23:59:60.5Z",
            "2026-11-20T12:30:60.5Z",
            "2026-11-20T13:00:00Z",
            "2026-11-21T00:00:00Z",
            "2026-11-19T23:59:59Z",
            "2026-06-30T23:59:60Z",
            "0001-01-01T00:00:00Z",
            "9999-12-31T23:59:59.75Z",
        ]
        .iter()
        .map(|t| DateTime::parse_from_rfc3339(t).unwrap().with_timezone(&Utc))
        .collect();
        for &a in &times {
            for &b in &times {
                assert_eq!(ahead_of(a, b), a.signed_duration_since(b), "{a} - {b}");
            }
        }
    }
}
