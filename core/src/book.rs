//! The state of one partition: its accounts, dedup window and clock, and the decision for
//! one Kafka payload (applied, duplicate or rejected) plus what fell due before it.

use std::collections::BTreeSet;

use chrono::{DateTime, Utc};

use crate::account::{self, AccountState, Call, Shared};
use crate::alerts::Alert;
use crate::dedup::{self, Probe, Seen};
use crate::event::borrowed::UsageEvent;
use crate::event::{self, Event, Rejection};
use crate::holds::Answer;
use crate::ledger::LedgerEntry;
use crate::names::Name;
use crate::rules::Rules;

pub use crate::ledger::Entries;

/// What became of one payload.
// A call's entry is inline in `Applied` on purpose: boxing it would be the allocation per
// call this layout removes, and a `Step` is moved once, to its caller.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum Outcome {
    /// Applied to `account`, producing these entries (none for settings). The account is
    /// the partition's interned name and one entry (a call's) is held inline, so applying
    /// a call allocates neither.
    Applied { account: Name, entries: Entries },
    /// Already applied within the dedup window; nothing changes.
    Duplicate { account: String },
    /// Goes to the dead-letter topic with this reason.
    Rejected(Rejection),
    /// A clock tick: nothing to apply.
    Tick,
}

/// One payload's effect: the entries that fell due as the clock reached its arrival (each
/// names its account), then the payload's own outcome.
#[derive(Debug)]
pub struct Step {
    pub due: Vec<LedgerEntry>,
    /// Every account whose state the clock changed (a lot expired, a cycle turned, a hold
    /// expired or was forgotten), with an entry in `due` or not: an empty lot's expiry
    /// writes none, yet its state must be stored. The payload's own account is in
    /// `outcome`. `None` when the clock changed nothing: one word, cheap on every call.
    pub changed: Option<Box<[String]>>,
    pub outcome: Outcome,
    /// Low-credit alerts that fired on the accounts this payload or the clock changed.
    pub alerts: Vec<Alert>,
    /// For an applied `credit.hold` or `credit.release`: the answer its caller waits for.
    /// A duplicate has none: the copy applied first answered (the shell gives every
    /// request its own event id, so only a producer's retry is a duplicate).
    pub answer: Option<Answer>,
}

/// What [`Book::look_ahead`] learnt of a usage event, for its decision.
#[derive(Debug, Clone, Copy)]
pub struct Ahead {
    /// The dedup key of the event's (account, source, id).
    key: u128,
    /// Its account's slot among the hints.
    hint: crate::hints::Slot,
}

/// Accounts of one partition, owned by exactly one writer.
#[derive(Debug, Default)]
pub struct Book {
    pub accounts: rustc_hash::FxHashMap<String, AccountState>,
    pub seen: Seen,
    /// The latest arrival applied: the partition's clock. It only moves forward, and only
    /// with the log, so a replay expires lots and turns cycles at the same points.
    pub clock: Option<DateTime<Utc>>,
    /// (deadline, account) for every account with something due; built on first use.
    timers: BTreeSet<(DateTime<Utc>, String)>,
    /// The first deadline in `timers`, kept with it: every call compares the clock with it,
    /// and a look into the set walks down to its first leaf.
    first_timer: Option<DateTime<Utc>>,
    deadlines: rustc_hash::FxHashMap<String, DateTime<Utc>>,
    timers_built: bool,
    /// The partition's interned names, shared by its ledger entries, and its last day.
    shared: Shared,
    /// Accounts the clock changed since the last step, for that step to name.
    changed: Vec<String>,
    /// The date of the last event time read, for the next event of the same day.
    last_date: crate::event::borrowed::LastDate,
    /// Where each account's state was last seen, to ask for it a call ahead.
    hints: crate::hints::Hints,
}

impl Book {
    /// Parses and applies one payload that arrived at `arrival` (the broker's timestamp,
    /// so a replay decides the same way).
    pub fn process(&mut self, rules: &Rules, payload: &[u8], arrival: DateTime<Utc>) -> Step {
        // Looked at where it was read: moving the (large) event out of the `Option` cost a
        // `memcpy` of its size.
        match &crate::event::borrowed::usage_after(payload, arrival, &mut self.last_date) {
            Some(usage) => self.apply_usage(rules, usage, arrival),
            None => self.apply(rules, event::parse_reference(payload, arrival), arrival),
        }
    }

    /// Reads a usage event in place, as [`Book::process`] does first: `None` for anything
    /// else (a command, a payload to reject), which [`Book::process_other`] decides.
    ///
    /// With [`Book::look_ahead`] and [`Book::apply_usage_keyed`], a caller can read its
    /// next payload before it decides the current one, and the memory the next decision
    /// reads loads meanwhile. Reading changes no decision.
    #[inline]
    pub fn read_usage<'p>(
        &mut self,
        payload: &'p [u8],
        arrival: DateTime<Utc>,
    ) -> Option<UsageEvent<'p>> {
        crate::event::borrowed::usage_after(payload, arrival, &mut self.last_date)
    }

    /// What [`Book::apply_usage_keyed`] needs of `usage` beyond the event; asks the CPU
    /// for the memory its decision reads first: its dedup slot and its account's state,
    /// where the account's last call found it (a look changes nothing).
    #[inline(always)]
    pub fn look_ahead(&self, usage: &UsageEvent<'_>) -> Ahead {
        let ahead = Ahead {
            key: dedup::key(&usage.account, &usage.source, &usage.id),
            hint: self.hints.slot(&usage.account),
        };
        self.seen.prefetch(ahead.key);
        self.hints.prefetch::<(String, AccountState)>(ahead.hint);
        ahead
    }

    /// Decides a payload that [`Book::read_usage`] did not read, as [`Book::process`]
    /// decides it.
    pub fn process_other(&mut self, rules: &Rules, payload: &[u8], arrival: DateTime<Utc>) -> Step {
        self.apply(rules, event::parse_reference(payload, arrival), arrival)
    }

    /// Applies a usage event read in place, as [`Book::apply`] would apply it parsed: one
    /// account lookup, names interned, no copy of the event. Ticks that fall due and new
    /// accounts take the general way.
    pub fn apply_usage(
        &mut self,
        rules: &Rules,
        usage: &UsageEvent<'_>,
        arrival: DateTime<Utc>,
    ) -> Step {
        let ahead = self.look_ahead(usage);
        self.apply_usage_keyed(rules, usage, ahead, arrival)
    }

    /// [`Book::apply_usage`] with what [`Book::look_ahead`] gave for `usage`.
    #[inline]
    pub fn apply_usage_keyed(
        &mut self,
        rules: &Rules,
        usage: &UsageEvent<'_>,
        ahead: Ahead,
        arrival: DateTime<Utc>,
    ) -> Step {
        let key = ahead.key;
        debug_assert_eq!(key, dedup::key(&usage.account, &usage.source, &usage.id));
        let due = self.advance(rules, arrival);
        // What the clock changed takes the general way too, so this way names nothing.
        if !due.is_empty() || !self.changed.is_empty() {
            return self.finish(rules, due, Ok(usage.clone().into_event()), arrival);
        }
        let call = Call::borrowed(usage);
        // The account is looked up first and its lots asked from memory (`look_ahead`
        // asked for its state): they load while the dedup window is probed (a lookup
        // changes nothing, so a duplicate still leaves every account as it was).
        let accounts = self.accounts.len();
        let state = self.accounts.get_mut(call.account);
        if let Some(state) = &state {
            // The first lots (most accounts have a few), a fixed count of lines.
            crate::prefetch::lines_of::<[u8; 4 * 64]>(state.lots.as_ptr() as usize);
            self.hints.note(ahead.hint, &**state, accounts);
        }
        let unrecorded = match self.seen.probe(key, arrival, rules.dedup_window) {
            Probe::New(unrecorded) => unrecorded,
            Probe::Duplicate => {
                return Step {
                    due,
                    changed: None,
                    outcome: Outcome::Duplicate {
                        account: call.account.to_string(),
                    },
                    alerts: Vec::new(),
                    answer: None,
                }
            }
        };
        let Some(state) = state else {
            return self.finish(rules, due, Ok(usage.clone().into_event()), arrival);
        };
        // What the lines asked above point to, now that they are in: the texts of the
        // account's own name and of its lots' ids, which the call's entry shares.
        state.own_name.prefetch();
        for lot in &state.lots {
            crate::prefetch::start(&lot.id);
        }
        // The debit pushes the call's entry into the entries the step takes: it is large,
        // and each move of it (debit to outcome to step) cost a `memcpy` of its size.
        let mut entries = Entries::new();
        let applied = account::check_time(rules, call.time, arrival)
            .and_then(|()| state.usage_into(rules, &call, arrival, &mut self.shared, &mut entries));
        match applied {
            Ok(account) => {
                unrecorded.record();
                // A call that settles no hold moves no deadline (see `apply`).
                let at = self.clock.unwrap_or(arrival);
                let alerts = if call.hold.is_some() {
                    crate::alerting::evaluate(state, rules, call.account, at)
                } else {
                    crate::alerting::evaluate_call(state, rules, call.account, at)
                };
                Step {
                    due,
                    changed: None,
                    outcome: Outcome::Applied { account, entries },
                    alerts,
                    answer: None,
                }
            }
            Err(rejection) => Step {
                due,
                changed: None,
                outcome: Outcome::Rejected(rejection),
                alerts: Vec::new(),
                answer: None,
            },
        }
    }

    /// Applies an event parsed earlier (the shell parses first to order events by time).
    pub fn apply(
        &mut self,
        rules: &Rules,
        parsed: Result<Event, Rejection>,
        arrival: DateTime<Utc>,
    ) -> Step {
        // A record whose timestamp is refused moves nothing: not the clock, not any account.
        match parsed {
            Err(rejection) if rejection.keeps_clock() => {
                return Step {
                    due: Vec::new(),
                    changed: None,
                    outcome: Outcome::Rejected(rejection),
                    alerts: Vec::new(),
                    answer: None,
                }
            }
            _ => {}
        }
        let due = self.advance(rules, arrival);
        self.finish(rules, due, parsed, arrival)
    }

    /// Decides `parsed` after the clock moved, with what fell due.
    fn finish(
        &mut self,
        rules: &Rules,
        due: Vec<LedgerEntry>,
        parsed: Result<Event, Rejection>,
        arrival: DateTime<Utc>,
    ) -> Step {
        // A call that settles no hold moves no deadline: it changes no lot's expiry, no
        // cycle and no hold, so the (per-event) rescheduling can be skipped.
        let moves_deadlines = !matches!(
            &parsed,
            Ok(Event { body: crate::event::Body::Usage(usage), .. }) if usage.hold.is_none()
        );
        let (outcome, answer) = self.decide(rules, parsed, arrival);
        let mut changed: Vec<&str> = due.iter().map(|e| e.account.as_str()).collect();
        // The account of such a call that the clock left alone was only debited: its alert
        // check may rest on what the account's last check proved (`evaluate_call`).
        let mut only_debited = None;
        if let Outcome::Applied { account, .. } = &outcome {
            if moves_deadlines {
                self.schedule(rules, account);
            } else if !self.changed.iter().any(|c| c == account.as_str()) {
                only_debited = Some(account.as_str());
            }
            changed.push(account.as_str());
        }
        changed.sort_unstable();
        changed.dedup();
        let at = self.clock.unwrap_or(arrival);
        let mut alerts = Vec::new();
        for account in changed {
            if let Some(state) = self.accounts.get_mut(account) {
                alerts.extend(if only_debited == Some(account) {
                    crate::alerting::evaluate_call(state, rules, account, at)
                } else {
                    crate::alerting::evaluate(state, rules, account, at)
                });
            }
        }
        Step {
            due,
            changed: self.take_changed(),
            outcome,
            alerts,
            answer,
        }
    }

    /// Moves the clock to `now` (never back) and writes what fell due on every account.
    /// The accounts it changed, entry or not, are named by the next step.
    #[inline]
    pub fn advance(&mut self, rules: &Rules, now: DateTime<Utc>) -> Vec<LedgerEntry> {
        let clock = self.clock.map_or(now, |c| c.max(now));
        self.clock = Some(clock);
        // Every call comes here, and only one in many has something due: the first
        // deadline is compared from its field, the rest done apart only when it is due.
        debug_assert!(
            !self.timers_built || self.first_timer == self.timers.first().map(|(at, _)| *at)
        );
        if self.timers_built && self.first_timer.is_none_or(|at| at > clock) {
            return Vec::new();
        }
        self.write_due(rules, clock)
    }

    /// What fell due by `clock` on every account (the timers built on first use).
    #[inline(never)]
    fn write_due(&mut self, rules: &Rules, clock: DateTime<Utc>) -> Vec<LedgerEntry> {
        if !self.timers_built {
            let accounts: Vec<String> = self.accounts.keys().cloned().collect();
            for account in accounts {
                self.schedule(rules, &account);
            }
            self.timers_built = true;
        }
        let mut due = Vec::new();
        debug_assert_eq!(self.first_timer, self.timers.first().map(|(at, _)| *at));
        while self.first_timer.is_some_and(|at| at <= clock) {
            let Some((_, account)) = self.timers.first() else {
                break;
            };
            let account = account.clone();
            if let Some(state) = self.accounts.get_mut(&account) {
                due.extend(state.advance(rules, &account, clock));
            }
            self.schedule(rules, &account);
            // A timer that fell due changed its account, entry or not. Within one advance
            // an account comes here once (its next deadline is later than `clock` now).
            self.changed.push(account);
        }
        due
    }

    /// The accounts the clock changed since the last step, for the step to name.
    fn take_changed(&mut self) -> Option<Box<[String]>> {
        if self.changed.is_empty() {
            return None;
        }
        Some(std::mem::take(&mut self.changed).into_boxed_slice())
    }

    /// Files `account` under its next deadline, replacing the old one.
    fn schedule(&mut self, rules: &Rules, account: &str) {
        let next = self
            .accounts
            .get(account)
            .and_then(|state| state.next_deadline(rules));
        let old = self.deadlines.get(account).copied();
        if old == next {
            return;
        }
        if let Some(old) = old {
            self.timers.remove(&(old, account.to_string()));
        }
        match next {
            Some(at) => {
                self.timers.insert((at, account.to_string()));
                self.deadlines.insert(account.to_string(), at);
            }
            None => {
                self.deadlines.remove(account);
            }
        }
        self.first_timer = self.timers.first().map(|(at, _)| *at);
    }

    fn decide(
        &mut self,
        rules: &Rules,
        parsed: Result<Event, Rejection>,
        arrival: DateTime<Utc>,
    ) -> (Outcome, Option<Answer>) {
        let event = match parsed {
            Ok(event) => event,
            Err(rejection) => return (Outcome::Rejected(rejection), None),
        };
        if matches!(event.body, crate::event::Body::Tick) {
            return (Outcome::Tick, None);
        }
        let key = dedup::key(&event.account, &event.source, &event.id);
        if self.seen.is_duplicate(key, arrival, rules.dedup_window) {
            let outcome = Outcome::Duplicate {
                account: event.account,
            };
            return (outcome, None);
        }
        // Apply to a scratch copy only when the account is new, so a rejected first event
        // leaves no empty account behind.
        let result = match self.accounts.get_mut(&event.account) {
            Some(state) => state.decide_with(rules, &event, arrival, &mut self.shared),
            None => {
                let mut state = AccountState::default();
                let result = state.decide_with(rules, &event, arrival, &mut self.shared);
                if result.is_ok() {
                    self.accounts.insert(event.account.clone(), state);
                }
                result
            }
        };
        match result {
            Ok(applied) => {
                self.seen.record(key, arrival);
                let outcome = Outcome::Applied {
                    account: self.shared.names.intern(&event.account),
                    entries: applied.entries.into(),
                };
                (outcome, applied.answer)
            }
            Err(rejection) => (Outcome::Rejected(rejection), None),
        }
    }
}
