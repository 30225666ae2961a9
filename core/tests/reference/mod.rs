//! A reference model of tally's credit rules, written from the spec and apart from the
//! engine: plain data, a plain sort for the order of consumption, brute-force month
//! stepping for billing cycles, and a copy of the account for every event so that a
//! rejected event cannot change anything. It is slow and simple on purpose; the property
//! tests in `reference_model.rs` require the engine (`tally_core::Book`) to agree with it.
//!
//! It shares only data types with the engine (`Credits`, `LedgerEntry`, `LotKind`, `Hold`,
//! `Answer`, ...) and the price list (`CostMatrix::price`). Held credits are not stored on
//! its lots: it adds up the open holds' reservations whenever it needs them, so the
//! engine's running `held` per lot is checked against an independent sum. It takes typed inputs, not JSON: the tests build
//! the JSON payload for the engine from the same input.

use std::cmp::Ordering;
use std::collections::{BTreeMap, HashMap};

use chrono::{DateTime, Datelike, LocalResult, NaiveDate, NaiveDateTime, TimeDelta, TimeZone, Utc};
use chrono_tz::Tz;
use tally_core::event::Status;
use tally_core::holds::{Answer, Check, Hold, HoldStatus, HoldUse, SettleOutcome};
use tally_core::lots::{Payment, PaymentMethod};
use tally_core::{Credits, EntryType, LedgerEntry, LotKind, Policy, Rules};

pub type Time = DateTime<Utc>;

pub const TICK: &str = "tally.tick";
pub const SERVICE: &str = "tally";
const MAX_CREDITS: i64 = 1_000_000_000_000_000; // 1e12 credits in thousandths

// ---------------------------------------------------------------------------------------
// Inputs: one CloudEvent, typed.

#[derive(Debug, Clone)]
pub struct Input {
    pub ty: String,
    pub id: String,
    pub source: String,
    pub subject: Option<String>,
    /// `None`: the event has no `time` (the arrival stands in).
    pub time: Option<Time>,
    pub data: Data,
}

#[derive(Debug, Clone)]
pub enum Data {
    None,
    Usage(UsageData),
    Grant(GrantData),
    Void {
        lot: String,
        reason: Option<String>,
    },
    Plan {
        plan: String,
        anchor: Option<Time>,
        payment: Option<PaymentMethod>,
    },
    Settings(SettingsData),
    Hold(HoldData),
    Release {
        hold: String,
    },
}

#[derive(Debug, Clone)]
pub struct UsageData {
    pub user: String,
    pub feature: String,
    pub variant: Option<String>,
    pub quantity: Option<Credits>,
    pub status: Option<Status>,
    /// `data.hold`: (id, account) where an account is the `{"id", "account"}` form.
    pub hold: Option<(String, Option<String>)>,
}

#[derive(Debug, Clone)]
pub struct HoldData {
    pub hold: Option<String>,
    pub feature: String,
    pub variant: Option<String>,
    pub quantity: Option<Credits>,
    pub ttl: u32,
}

/// The longest ttl of a hold: a day.
const MAX_TTL: u32 = 86_400;

#[derive(Debug, Clone)]
pub struct GrantData {
    pub lot: Option<String>,
    pub pool: Option<String>,
    pub kind: LotKind,
    pub credits: Credits,
    pub effective_at: Option<Time>,
    /// `None`: absent; `Some(None)`: JSON null (never expires).
    pub expires_at: Option<Option<Time>>,
    pub valid_days: Option<u32>,
    pub priority: Option<i32>,
    pub payment: Option<(PaymentMethod, Option<String>)>,
    pub comment: Option<String>,
}

#[derive(Debug, Clone, Default)]
pub struct SettingsData {
    pub timezone: Option<String>,
    pub locale: Option<String>,
    pub admins: Option<Vec<String>>,
    /// As written in JSON, so an unknown policy can be sent.
    pub policy: Option<String>,
    pub flex: Option<(Option<bool>, Option<Credits>)>,
    pub settle_shortfall: Option<bool>,
}

// ---------------------------------------------------------------------------------------
// Outputs.

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Applied {
        account: String,
        entries: Vec<LedgerEntry>,
    },
    Duplicate {
        account: String,
    },
    Rejected,
    Tick,
}

#[derive(Debug, Clone)]
pub struct Step {
    pub due: Vec<LedgerEntry>,
    pub outcome: Outcome,
    pub answer: Option<Answer>,
}

/// ((id, pool, kind, granted, remaining, effective_at, expires_at, priority, seq, voided,
/// expired, from_plan), held): nested, as tuples compare only up to 12 fields.
pub type LotView = (
    (
        String,
        String,
        LotKind,
        Credits,
        Credits,
        Time,
        Option<Time>,
        Option<i32>,
        u64,
        bool,
        bool,
        bool,
    ),
    Credits,
);

/// Per pool: available, by kind (non-zero only), expiring soon, held. Pools with nothing
/// available, expiring or held are left out.
pub type BalanceView =
    BTreeMap<String, (Credits, BTreeMap<&'static str, Credits>, Credits, Credits)>;

/// What the tests compare of one account.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccountView {
    pub lots: Vec<LotView>,
    pub next_seq: u64,
    pub shortfall: BTreeMap<String, Credits>,
    pub flex_used: Credits,
    pub flex_period: Option<Time>,
    /// (name, cycle, start, end)
    pub subscription: Option<(String, u32, Time, Time)>,
    pub timezone: Option<Tz>,
    pub policy: Option<Policy>,
    pub flex_enabled: Option<bool>,
    pub flex_threshold: Option<Credits>,
    pub settle_shortfall: Option<bool>,
    pub balance: BalanceView,
    /// Every hold remembered, by id.
    pub holds: Vec<Hold>,
}

// ---------------------------------------------------------------------------------------
// State.

#[derive(Debug, Clone)]
pub struct Lot {
    pub id: String,
    pub pool: String,
    pub kind: LotKind,
    pub granted: Credits,
    pub remaining: Credits,
    pub effective_at: Time,
    pub expires_at: Option<Time>,
    pub priority: Option<i32>,
    pub seq: u64,
    pub voided: bool,
    pub expired: bool,
    pub from_plan: bool,
}

#[derive(Debug, Clone)]
pub struct Subscription {
    pub name: String,
    pub credits: Credits,
    pub pool: String,
    /// 1 for monthly plans, 12 for yearly ones.
    pub months: u32,
    pub flex_threshold: Option<Credits>,
    pub anchor: Time,
    pub tz: Tz,
    pub payment: Option<PaymentMethod>,
    pub cycle: u32,
    pub start: Time,
    pub end: Time,
}

/// Where each pool's granted credits went, for the conservation check.
#[derive(Debug, Clone, Default)]
pub struct Flows {
    pub granted: Credits,
    pub paid: Credits,
    pub expired: Credits,
    pub voided: Credits,
    pub settled: Credits,
}

#[derive(Debug, Clone, Default)]
pub struct Account {
    pub lots: Vec<Lot>,
    pub next_seq: u64,
    pub timezone: Option<Tz>,
    pub policy: Option<Policy>,
    pub flex_enabled: Option<bool>,
    pub flex_threshold: Option<Credits>,
    pub settle_shortfall: Option<bool>,
    pub flex_used: Credits,
    pub flex_period: Option<Time>,
    pub shortfall: BTreeMap<String, Credits>,
    pub subscription: Option<Subscription>,
    pub flows: BTreeMap<String, Flows>,
    pub holds: BTreeMap<String, Hold>,
}

#[derive(Debug, Clone, Default)]
pub struct Model {
    pub clock: Option<Time>,
    pub accounts: BTreeMap<String, Account>,
    /// (account, source, id) -> arrival of the application that opened its window.
    pub seen: HashMap<(String, String, String), Time>,
}

// ---------------------------------------------------------------------------------------
// Calendar helpers.

/// A local wall-clock time in `tz` as an instant. The spec does not say what to do with
/// a time that falls in a daylight-saving gap or overlap; this model takes the earlier
/// instant of an overlap, and reads a time in a gap with the offset in force just before
/// the gap (so 02:30 on a spring-forward night is 03:30 summer time).
pub fn local_to_utc(tz: Tz, local: NaiveDateTime) -> Time {
    match tz.from_local_datetime(&local) {
        LocalResult::Single(t) => t.with_timezone(&Utc),
        LocalResult::Ambiguous(a, b) => a.with_timezone(&Utc).min(b.with_timezone(&Utc)),
        LocalResult::None => {
            // The offset a day earlier is the one before the gap.
            let before = local.and_utc() - TimeDelta::days(1);
            let offset = before.with_timezone(&tz).naive_local() - before.naive_utc();
            (local - offset).and_utc()
        }
    }
}

fn local_date(at: Time, tz: Tz) -> NaiveDate {
    at.with_timezone(&tz).date_naive()
}

/// Start of cycle `n`: the anchor's local date-time plus `n * months` months, the day
/// clamped to the month's last day, same local time of day.
pub fn cycle_start(anchor: Time, tz: Tz, months: u32, n: u32) -> Time {
    let local = anchor.with_timezone(&tz).naive_local();
    let mut year = local.year();
    let mut month = local.month();
    for _ in 0..(n * months) {
        if month == 12 {
            month = 1;
            year += 1;
        } else {
            month += 1;
        }
    }
    let mut day = local.day();
    let date = loop {
        if let Some(date) = NaiveDate::from_ymd_opt(year, month, day) {
            break date;
        }
        day -= 1;
    };
    local_to_utc(tz, date.and_time(local.time()))
}

/// The cycle containing `at` (cycle 0 if `at` is before the anchor), counted up from 0.
pub fn cycle_containing(anchor: Time, tz: Tz, months: u32, at: Time) -> u32 {
    let mut n = 0;
    while cycle_start(anchor, tz, months, n + 1) <= at {
        n += 1;
    }
    n
}

fn month_start(tz: Tz, at: Time) -> Time {
    let local = at.with_timezone(&tz).naive_local();
    let first = NaiveDate::from_ymd_opt(local.year(), local.month(), 1).expect("valid date");
    local_to_utc(tz, first.and_hms_opt(0, 0, 0).expect("midnight"))
}

fn kind_rank(kind: LotKind) -> u8 {
    match kind {
        LotKind::Included => 0,
        LotKind::Promotional => 1,
        LotKind::Purchased => 2,
        LotKind::Flex => 3,
    }
}

/// Expiring lots before never-expiring ones, earlier expiry first.
fn by_expiry(a: &Lot, b: &Lot) -> Ordering {
    match (a.expires_at, b.expires_at) {
        (Some(x), Some(y)) => x.cmp(&y),
        (Some(_), None) => Ordering::Less,
        (None, Some(_)) => Ordering::Greater,
        (None, None) => Ordering::Equal,
    }
}

/// Which of two lots pays first under `policy`.
fn pays_first(a: &Lot, b: &Lot, policy: Policy) -> Ordering {
    let explicit = match (a.priority, b.priority) {
        (Some(x), Some(y)) => x.cmp(&y),
        (Some(_), None) => Ordering::Less,
        (None, Some(_)) => Ordering::Greater,
        (None, None) => Ordering::Equal,
    };
    if explicit != Ordering::Equal {
        return explicit;
    }
    let by_kind = kind_rank(a.kind).cmp(&kind_rank(b.kind));
    let by_seq = a.seq.cmp(&b.seq);
    match policy {
        Policy::EarliestExpiry => by_expiry(a, b).then(by_kind).then(by_seq),
        Policy::KindOrder => by_kind.then(by_expiry(a, b)).then(by_seq),
    }
}

/// Whether `lot` is in force at `at` (whether it has free credits is the account's to say).
fn usable_at(lot: &Lot, at: Time) -> bool {
    if lot.voided || lot.expired {
        return false;
    }
    if lot.effective_at > at {
        return false;
    }
    match lot.expires_at {
        Some(end) => at < end,
        None => true,
    }
}

fn blank(account: &str, time: Time, tz: Tz, service: &str, event_id: &str) -> LedgerEntry {
    LedgerEntry {
        id: None,
        entry_type: EntryType::Usage,
        account: account.to_string().into(),
        time,
        day: local_date(time, tz),
        service: service.to_string().into(),
        user: String::new().into(),
        feature: String::new().into(),
        variant: String::new().into(),
        quantity: Credits::ZERO,
        status: Status::Succeeded,
        pool: String::new().into(),
        credits: Credits::ZERO,
        paid: Default::default(),
        shortfall: Credits::ZERO,
        matrix_version: String::new().into(),
        event_id: event_id.into(),
        lot: String::new(),
        lot_kind: None,
        payment_method: None,
        payment_reference: String::new(),
        comment: String::new(),
        hold: None,
    }
}

fn looks_like_email(text: &str) -> bool {
    let parts: Vec<&str> = text.split('@').collect();
    parts.len() == 2
        && !parts[0].is_empty()
        && parts[1].contains('.')
        && !text.chars().any(char::is_whitespace)
}

// ---------------------------------------------------------------------------------------
// The book.

impl Model {
    pub fn process(&mut self, rules: &Rules, input: &Input, arrival: Time) -> Step {
        let clock = match self.clock {
            Some(c) if c > arrival => c,
            _ => arrival,
        };
        self.clock = Some(clock);
        let mut due = Vec::new();
        for (name, account) in self.accounts.iter_mut() {
            account.due_work(rules, name, clock, &mut due);
        }
        let (outcome, answer) = match self.decide(rules, input, arrival) {
            Ok((outcome, answer)) => (outcome, answer),
            Err(outcome) => (outcome, None),
        };
        Step {
            due,
            outcome,
            answer,
        }
    }

    /// The outcome and the answer, or (as `Err`) an outcome without one.
    fn decide(
        &mut self,
        rules: &Rules,
        input: &Input,
        arrival: Time,
    ) -> Result<(Outcome, Option<Answer>), Outcome> {
        let time = input.time.unwrap_or(arrival);
        if time > arrival + rules.max_future_skew {
            return Err(Outcome::Rejected);
        }
        if time < arrival - rules.max_lateness {
            return Err(Outcome::Rejected);
        }
        let known = [
            "ai.usage",
            "credit.grant",
            "credit.void",
            "account.plan",
            "account.settings",
            "credit.hold",
            "credit.release",
            TICK,
        ];
        if input.ty != TICK && input.subject.is_none() {
            return Err(Outcome::Rejected);
        }
        if !known.contains(&input.ty.as_str()) {
            return Err(Outcome::Rejected);
        }
        if input.ty == TICK {
            return Err(Outcome::Tick);
        }
        let name = input.subject.clone().expect("checked above");
        let key = (name.clone(), input.source.clone(), input.id.clone());
        if let Some(first) = self.seen.get(&key) {
            if arrival < *first + rules.dedup_window {
                return Err(Outcome::Duplicate { account: name });
            }
        }
        // Work on a copy: a rejected event must leave nothing behind.
        let mut account = self.accounts.get(&name).cloned().unwrap_or_default();
        let event = Event {
            account: &name,
            id: &input.id,
            source: &input.source,
            time,
        };
        let unanswered = |entries: Vec<LedgerEntry>| (entries, None);
        let result = match (&input.ty[..], &input.data) {
            ("ai.usage", Data::Usage(u)) => account
                .usage(rules, &event, u, arrival)
                .map(|e| unanswered(vec![e])),
            ("credit.grant", Data::Grant(g)) => account.grant(rules, &event, g).map(unanswered),
            ("credit.void", Data::Void { lot, reason }) => account
                .void(rules, &event, lot, reason.as_deref())
                .map(|e| unanswered(vec![e])),
            (
                "account.plan",
                Data::Plan {
                    plan,
                    anchor,
                    payment,
                },
            ) => account
                .plan(rules, &event, plan, *anchor, *payment)
                .map(unanswered),
            ("account.settings", Data::Settings(s)) => {
                account.settings(s).map(|()| unanswered(Vec::new()))
            }
            ("credit.hold", Data::Hold(h)) => account
                .hold(rules, &event, h, arrival)
                .map(|answer| (Vec::new(), Some(answer))),
            ("credit.release", Data::Release { hold }) => account
                .release(hold, arrival)
                .map(|answer| (Vec::new(), Some(answer))),
            _ => Err(()),
        };
        match result {
            Ok((entries, answer)) => {
                self.accounts.insert(name.clone(), account);
                self.seen.insert(key, arrival);
                Ok((
                    Outcome::Applied {
                        account: name,
                        entries,
                    },
                    answer,
                ))
            }
            Err(()) => Err(Outcome::Rejected),
        }
    }

    /// Checks that no credit appeared or vanished: per account and pool, what was granted
    /// is what remains plus what was paid, expired, voided and settled.
    pub fn check_conservation(&self) -> Result<(), String> {
        for (name, account) in &self.accounts {
            for (pool, flows) in &account.flows {
                let remaining: Credits = account
                    .lots
                    .iter()
                    .filter(|lot| &lot.pool == pool)
                    .map(|lot| lot.remaining)
                    .sum();
                let out = remaining + flows.paid + flows.expired + flows.voided + flows.settled;
                if flows.granted != out {
                    return Err(format!(
                        "{name}/{pool}: granted {} but remaining {remaining} + paid {} + \
                         expired {} + voided {} + settled {} = {out}",
                        flows.granted, flows.paid, flows.expired, flows.voided, flows.settled
                    ));
                }
            }
            for lot in &account.lots {
                if lot.remaining < Credits::ZERO || lot.remaining > lot.granted {
                    return Err(format!(
                        "{name}: lot {} has remaining {}",
                        lot.id, lot.remaining
                    ));
                }
                let held = account.held_on(&lot.id);
                if held < Credits::ZERO || held > lot.remaining {
                    return Err(format!(
                        "{name}: lot {} holds {held} of its {} remaining",
                        lot.id, lot.remaining
                    ));
                }
            }
        }
        Ok(())
    }
}

struct Event<'a> {
    account: &'a str,
    id: &'a str,
    source: &'a str,
    time: Time,
}

// ---------------------------------------------------------------------------------------
// One account.

impl Account {
    /// The account's time zone, else the configured default.
    fn tz(&self, rules: &Rules) -> Tz {
        self.timezone.unwrap_or(rules.default_timezone)
    }

    fn flows(&mut self, pool: &str) -> &mut Flows {
        self.flows.entry(pool.to_string()).or_default()
    }

    fn open_holds(&self) -> impl Iterator<Item = &Hold> {
        self.holds.values().filter(|h| h.status == HoldStatus::Open)
    }

    /// What the open holds reserved on the lot `id`.
    pub fn held_on(&self, id: &str) -> Credits {
        self.open_holds()
            .flat_map(|h| h.reserved.iter())
            .filter(|p| p.kind != LotKind::Flex && p.lot == id)
            .map(|p| p.credits)
            .sum()
    }

    /// What lot `i` can still give: its remaining credits that no open hold reserved.
    fn free(&self, i: usize) -> Credits {
        self.lots[i].remaining - self.held_on(&self.lots[i].id)
    }

    fn flex_held(&self) -> Credits {
        self.open_holds()
            .flat_map(|h| h.reserved.iter())
            .filter(|p| p.kind == LotKind::Flex)
            .map(|p| p.credits)
            .sum()
    }

    /// The lots of `pool` that can pay at `at`, in the order they pay.
    fn paying_order(&self, rules: &Rules, pool: &str, at: Time) -> Vec<usize> {
        let policy = self.policy.unwrap_or(rules.default_policy);
        let mut order: Vec<usize> = (0..self.lots.len())
            .filter(|&i| {
                self.lots[i].pool == pool
                    && usable_at(&self.lots[i], at)
                    && self.free(i) > Credits::ZERO
            })
            .collect();
        order.sort_by(|&a, &b| pays_first(&self.lots[a], &self.lots[b], policy));
        order
    }

    /// The flex period a call at `at` counts in.
    fn flex_period(&self, rules: &Rules, at: Time) -> Time {
        let mut period = match &self.subscription {
            Some(s) => s.start,
            None => month_start(self.tz(rules), at),
        };
        if let Some(stored) = self.flex_period {
            if stored > period {
                period = stored;
            }
        }
        period
    }

    fn threshold(&self, rules: &Rules) -> Credits {
        self.flex_threshold
            .or(self.subscription.as_ref().and_then(|s| s.flex_threshold))
            .unwrap_or(rules.flex_threshold)
    }

    /// Flex a hold at `at` could still reserve.
    fn flex_room(&self, rules: &Rules, at: Time) -> Credits {
        if !self.flex_enabled.unwrap_or(rules.flex_enabled) {
            return Credits::ZERO;
        }
        let used = if self.flex_period == Some(self.flex_period(rules, at)) {
            self.flex_used
        } else {
            Credits::ZERO
        };
        (self.threshold(rules) - used - self.flex_held()).max(Credits::ZERO)
    }

    fn hold(
        &mut self,
        rules: &Rules,
        event: &Event,
        h: &HoldData,
        arrival: Time,
    ) -> Result<Answer, ()> {
        if h.ttl == 0 || h.ttl > MAX_TTL {
            return Err(());
        }
        let id = h.hold.clone().unwrap_or_else(|| event.id.to_string());
        let quantity = h.quantity.unwrap_or(Credits::from_milli(1000));
        if let Some(existing) = self.holds.get(&id) {
            let same = existing.feature == h.feature
                && existing.variant == h.variant
                && existing.quantity == quantity
                && existing.ttl == h.ttl;
            return if same {
                Ok(Answer::Held {
                    hold: existing.clone(),
                    repeated: true,
                })
            } else {
                Err(())
            };
        }
        let price = rules
            .matrix
            .price(&h.feature, h.variant.as_deref(), quantity, event.time)
            .map_err(|_| ())?;
        if price.credits.milli() > MAX_CREDITS {
            return Err(());
        }
        let (cost, pool) = (price.credits, price.pool.to_string());
        let order = self.paying_order(rules, &pool, event.time);
        let free: Credits = order.iter().map(|&i| self.free(i)).sum();
        let room = self.flex_room(rules, event.time);
        let held: Credits = self
            .open_holds()
            .filter(|h| h.pool == pool)
            .flat_map(|h| h.reserved.iter())
            .map(|p| p.credits)
            .sum();
        if cost > free + room {
            return Ok(Answer::Refused {
                hold: id,
                check: Check {
                    allowed: false,
                    cost,
                    pool,
                    available: free + room,
                    flex: room,
                    held,
                    as_of: event.time,
                },
            });
        }
        let mut reserved = Vec::new();
        let mut left = cost;
        for i in order {
            if left <= Credits::ZERO {
                break;
            }
            let take = self.free(i).min(left);
            left -= take;
            reserved.push(Payment {
                lot: self.lots[i].id.clone().into(),
                kind: self.lots[i].kind,
                credits: take,
            });
        }
        if left > Credits::ZERO {
            reserved.push(Payment {
                lot: "flex".into(),
                kind: LotKind::Flex,
                credits: left,
            });
        }
        let hold = Hold {
            id: id.clone(),
            source: event.source.to_string(),
            event_id: event.id.to_string(),
            feature: h.feature.clone(),
            variant: h.variant.clone(),
            quantity,
            ttl: h.ttl,
            pool,
            credits: cost,
            reserved,
            placed_at: event.time,
            expires_at: arrival + TimeDelta::seconds(i64::from(h.ttl)),
            status: HoldStatus::Open,
            closed_at: None,
        };
        self.holds.insert(id, hold.clone());
        Ok(Answer::Held {
            hold,
            repeated: false,
        })
    }

    fn release(&mut self, id: &str, arrival: Time) -> Result<Answer, ()> {
        let hold = self.holds.get_mut(id).ok_or(())?;
        let was_open = hold.status == HoldStatus::Open;
        if was_open {
            hold.status = HoldStatus::Released;
            hold.closed_at = Some(arrival);
        }
        Ok(Answer::Released {
            hold: hold.clone(),
            was_open,
        })
    }

    /// Open holds lose what they reserved on a lot that expires or is voided.
    fn forget_reservations(&mut self, lot_id: &str) {
        for hold in self.holds.values_mut() {
            if hold.status == HoldStatus::Open {
                hold.reserved
                    .retain(|p| p.kind == LotKind::Flex || p.lot != lot_id);
            }
        }
    }

    /// Holds due at `clock`: open ones past their expiry are released with an entry each
    /// (oldest first), closed ones are forgotten a dedup window after they closed.
    fn due_holds(&mut self, rules: &Rules, name: &str, clock: Time, out: &mut Vec<LedgerEntry>) {
        let mut due: Vec<(Time, String)> = self
            .open_holds()
            .filter(|h| h.expires_at <= clock)
            .map(|h| (h.expires_at, h.id.clone()))
            .collect();
        due.sort();
        let tz = self.tz(rules);
        for (at, id) in due {
            let hold = self.holds.get_mut(&id).expect("due hold");
            hold.status = HoldStatus::Expired;
            hold.closed_at = Some(at);
            let mut entry = blank(name, at, tz, &hold.source, &hold.event_id);
            entry.id = Some(format!("hold-expiry/{id}/{}", at.timestamp_millis()));
            entry.entry_type = EntryType::HoldExpired;
            entry.pool = hold.pool.clone().into();
            entry.feature = hold.feature.clone().into();
            entry.variant = hold.variant.clone().unwrap_or_default().into();
            entry.quantity = hold.quantity;
            entry.paid = hold.reserved.iter().cloned().collect();
            entry.hold = Some(HoldUse {
                id: id.clone(),
                outcome: SettleOutcome::Expired,
                held: hold.reserved.iter().map(|p| p.credits).sum(),
            });
            entry.comment = format!("hold {id} expired unsettled; its credits are free again");
            out.push(entry);
        }
        self.holds.retain(|_, h| match h.closed_at {
            None => true,
            Some(closed) => closed + rules.dedup_window > clock,
        });
    }

    fn entry(&self, rules: &Rules, event: &Event, entry_type: EntryType) -> LedgerEntry {
        let mut entry = blank(
            event.account,
            event.time,
            self.tz(rules),
            event.source,
            event.id,
        );
        entry.entry_type = entry_type;
        entry
    }

    /// Holds first, then expiries and cycle turns that are due at `clock`, oldest first.
    fn due_work(&mut self, rules: &Rules, name: &str, clock: Time, out: &mut Vec<LedgerEntry>) {
        self.due_holds(rules, name, clock, out);
        loop {
            let turn = match &self.subscription {
                Some(s) if clock >= s.end => Some(s.end),
                _ => None,
            };
            let mut expiry: Option<usize> = None;
            for (i, lot) in self.lots.iter().enumerate() {
                let Some(end) = lot.expires_at else { continue };
                if lot.voided || lot.expired || end + rules.expiry_grace > clock {
                    continue;
                }
                let better = match expiry {
                    None => true,
                    Some(j) => {
                        let other = &self.lots[j];
                        (end, lot.seq) < (other.expires_at.expect("expiring"), other.seq)
                    }
                };
                if better {
                    expiry = Some(i);
                }
            }
            match (expiry, turn) {
                (None, None) => return,
                (Some(i), None) => self.expire(rules, i, name, out),
                (None, Some(_)) => self.turn_cycle(rules, name, out),
                (Some(i), Some(cycle_end)) => {
                    if self.lots[i].expires_at.expect("expiring") <= cycle_end {
                        self.expire(rules, i, name, out);
                    } else {
                        self.turn_cycle(rules, name, out);
                    }
                }
            }
        }
    }

    fn expire(&mut self, rules: &Rules, i: usize, name: &str, out: &mut Vec<LedgerEntry>) {
        let tz = self.tz(rules);
        let lot = &mut self.lots[i];
        lot.expired = true;
        let left = lot.remaining;
        lot.remaining = Credits::ZERO;
        let time = lot.expires_at.expect("expiring");
        let (id, pool, kind) = (lot.id.clone(), lot.pool.clone(), lot.kind);
        self.forget_reservations(&id);
        self.flows(&pool).expired += left;
        if left > Credits::ZERO {
            let mut entry = blank(name, time, tz, SERVICE, "");
            entry.id = Some(format!("expiry/{id}"));
            entry.entry_type = EntryType::Expiry;
            entry.pool = pool.into();
            entry.credits = -left;
            entry.lot = id;
            entry.lot_kind = Some(kind);
            out.push(entry);
        }
    }

    fn turn_cycle(&mut self, rules: &Rules, name: &str, out: &mut Vec<LedgerEntry>) {
        let tz = self.tz(rules);
        let s = self.subscription.as_mut().expect("subscribed");
        s.cycle += 1;
        s.start = s.end;
        s.end = cycle_start(s.anchor, s.tz, s.months, s.cycle + 1);
        let s = s.clone();
        if s.credits > Credits::ZERO {
            let id = self.new_plan_lot(&s, s.start, s.end);
            let mut entry = blank(name, s.start, tz, SERVICE, "");
            entry.id = Some(format!("grant/{id}"));
            entry.entry_type = EntryType::Grant;
            entry.pool = s.pool.clone().into();
            entry.credits = s.credits;
            entry.lot = id;
            entry.lot_kind = Some(LotKind::Included);
            entry.payment_method = s.payment;
            entry.comment = format!("plan {}, cycle {}", s.name, s.cycle);
            out.push(entry);
        }
    }

    /// Adds the plan's `included` lot for `from..until` and returns its id.
    fn new_plan_lot(&mut self, s: &Subscription, from: Time, until: Time) -> String {
        let mut id = format!("{}:{}", s.name, local_date(from, s.tz).format("%Y-%m-%d"));
        if self.lots.iter().any(|lot| lot.id == id) {
            id = format!("{id}#{}", self.next_seq);
        }
        self.lots.push(Lot {
            id: id.clone(),
            pool: s.pool.clone(),
            kind: LotKind::Included,
            granted: s.credits,
            remaining: s.credits,
            effective_at: from,
            expires_at: Some(until),
            priority: None,
            seq: self.next_seq,
            voided: false,
            expired: false,
            from_plan: true,
        });
        self.next_seq += 1;
        self.flows(&s.pool).granted += s.credits;
        id
    }

    fn usage(
        &mut self,
        rules: &Rules,
        event: &Event,
        u: &UsageData,
        arrival: Time,
    ) -> Result<LedgerEntry, ()> {
        if let Some((_, Some(owner))) = &u.hold {
            if owner != event.account {
                return Err(());
            }
        }
        let quantity = u.quantity.unwrap_or(Credits::from_milli(1000));
        let status = u.status.unwrap_or(Status::Succeeded);
        let price = rules
            .matrix
            .price(&u.feature, u.variant.as_deref(), quantity, event.time)
            .map_err(|_| ())?;
        let (price_credits, pool) = (price.credits, price.pool.to_string());
        let mut entry = self.entry(rules, event, EntryType::Usage);
        entry.user = u.user.clone().into();
        entry.feature = u.feature.clone().into();
        entry.variant = u.variant.clone().unwrap_or_default().into();
        entry.quantity = quantity;
        entry.status = status;
        entry.pool = pool.clone().into();
        entry.matrix_version = price.version.to_string().into();
        // The hold the call names closes, whatever the call's status.
        let mut held = Vec::new();
        if let Some((id, _)) = &u.hold {
            let outcome = match self.holds.get_mut(id) {
                None => SettleOutcome::Unknown,
                Some(h) => match h.status {
                    HoldStatus::Open => {
                        h.status = HoldStatus::Settled;
                        h.closed_at = Some(arrival);
                        held = h.reserved.clone();
                        SettleOutcome::Settled
                    }
                    HoldStatus::Settled => SettleOutcome::AlreadySettled,
                    HoldStatus::Released => SettleOutcome::Released,
                    HoldStatus::Expired => SettleOutcome::Expired,
                },
            };
            entry.hold = Some(HoldUse {
                id: id.clone(),
                outcome,
                held: held.iter().map(|p| p.credits).sum(),
            });
        }
        if status == Status::Failed {
            return Ok(entry);
        }
        entry.credits = price_credits;
        let mut left = price_credits;

        // The lots the hold reserved pay first, up to their reservation.
        for r in held.iter().filter(|p| p.kind != LotKind::Flex) {
            let Some(i) = self.lots.iter().position(|l| l.id == r.lot) else {
                continue;
            };
            if self.lots[i].pool != pool || self.lots[i].expired || self.lots[i].voided {
                continue;
            }
            let take = r.credits.min(left).min(self.free(i));
            if take <= Credits::ZERO {
                continue;
            }
            self.lots[i].remaining -= take;
            left -= take;
            entry.paid.push(Payment {
                lot: r.lot.clone(),
                kind: self.lots[i].kind,
                credits: take,
            });
            self.flows(&pool).paid += take;
        }

        // Then the lots that can pay, in the order they pay.
        for i in self.paying_order(rules, &pool, event.time) {
            if left <= Credits::ZERO {
                break;
            }
            let take = self.free(i).min(left);
            let lot = &mut self.lots[i];
            lot.remaining -= take;
            left -= take;
            match entry.paid.iter_mut().find(|p| p.lot == lot.id) {
                Some(p) => p.credits += take,
                None => entry.paid.push(Payment {
                    lot: lot.id.clone().into(),
                    kind: lot.kind,
                    credits: take,
                }),
            }
            self.flows(&pool).paid += take;
        }

        let flex_on = self.flex_enabled.unwrap_or(rules.flex_enabled);
        if left > Credits::ZERO && flex_on {
            let mut period = match &self.subscription {
                Some(s) => s.start,
                None => month_start(self.tz(rules), event.time),
            };
            if let Some(stored) = self.flex_period {
                if stored > period {
                    period = stored;
                }
            }
            if self.flex_period != Some(period) {
                self.flex_used = Credits::ZERO;
                self.flex_period = Some(period);
            }
            let threshold = self.threshold(rules);
            let room = (threshold - self.flex_used - self.flex_held()).max(Credits::ZERO);
            let take = room.min(left);
            if take > Credits::ZERO {
                entry.paid.push(Payment {
                    lot: "flex".into(),
                    kind: LotKind::Flex,
                    credits: take,
                });
                self.flex_used += take;
                left -= take;
            }
        }
        if left > Credits::ZERO {
            entry.shortfall = left;
            *self.shortfall.entry(pool).or_insert(Credits::ZERO) += left;
        }
        Ok(entry)
    }

    fn grant(
        &mut self,
        rules: &Rules,
        event: &Event,
        g: &GrantData,
    ) -> Result<Vec<LedgerEntry>, ()> {
        if g.kind == LotKind::Flex {
            return Err(());
        }
        let id = g.lot.clone().unwrap_or_else(|| event.id.to_string());
        if self.lots.iter().any(|lot| lot.id == id) {
            return Err(());
        }
        if g.credits.milli() <= 0 || g.credits.milli() > MAX_CREDITS {
            return Err(());
        }
        let pool = g.pool.clone().unwrap_or_else(|| "ai".to_string());
        if pool.is_empty() {
            return Err(());
        }
        let effective_at = g.effective_at.unwrap_or(event.time);
        let expires_at = match (g.expires_at, g.valid_days) {
            (Some(_), Some(_)) => return Err(()),
            (Some(at), None) => at,
            (None, Some(days)) => Some(effective_at + TimeDelta::days(i64::from(days))),
            (None, None) => None,
        };
        if let Some(end) = expires_at {
            if end <= effective_at {
                return Err(());
            }
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        self.lots.push(Lot {
            id: id.clone(),
            pool: pool.clone(),
            kind: g.kind,
            granted: g.credits,
            remaining: g.credits,
            effective_at,
            expires_at,
            priority: g.priority,
            seq,
            voided: false,
            expired: false,
            from_plan: false,
        });
        self.flows(&pool).granted += g.credits;
        let mut entry = self.entry(rules, event, EntryType::Grant);
        entry.pool = pool.clone().into();
        entry.credits = g.credits;
        entry.lot = id.clone();
        entry.lot_kind = Some(g.kind);
        if let Some((method, reference)) = &g.payment {
            entry.payment_method = Some(*method);
            entry.payment_reference = reference.clone().unwrap_or_default();
        }
        entry.comment = g.comment.clone().unwrap_or_default();
        let mut entries = vec![entry];

        let settle = self.settle_shortfall.unwrap_or(rules.settle_shortfall);
        let owed = self.shortfall.get(&pool).copied().unwrap_or(Credits::ZERO);
        if settle && owed > Credits::ZERO {
            let last = self.lots.len() - 1;
            let amount = owed.min(self.lots[last].remaining);
            if amount > Credits::ZERO {
                self.lots[last].remaining -= amount;
                let still = owed - amount;
                if still > Credits::ZERO {
                    self.shortfall.insert(pool.clone(), still);
                } else {
                    self.shortfall.remove(&pool);
                }
                self.flows(&pool).settled += amount;
                let mut entry = self.entry(rules, event, EntryType::Settlement);
                entry.pool = pool.into();
                entry.credits = amount;
                entry.paid = [Payment {
                    lot: id.clone().into(),
                    kind: g.kind,
                    credits: amount,
                }]
                .into_iter()
                .collect();
                entry.lot = id;
                entry.lot_kind = Some(g.kind);
                entry.comment = "outstanding shortfall settled by this grant".to_string();
                entries.push(entry);
            }
        }
        Ok(entries)
    }

    fn void(
        &mut self,
        rules: &Rules,
        event: &Event,
        lot_id: &str,
        reason: Option<&str>,
    ) -> Result<LedgerEntry, ()> {
        let Some(i) = self.lots.iter().position(|lot| lot.id == lot_id) else {
            return Err(());
        };
        if self.lots[i].voided || self.lots[i].expired {
            return Err(());
        }
        let removed = self.lots[i].remaining;
        self.lots[i].remaining = Credits::ZERO;
        self.lots[i].voided = true;
        self.forget_reservations(lot_id);
        let (pool, kind) = (self.lots[i].pool.clone(), self.lots[i].kind);
        self.flows(&pool).voided += removed;
        let mut entry = self.entry(rules, event, EntryType::Void);
        entry.credits = -removed;
        entry.lot = lot_id.to_string();
        entry.lot_kind = Some(kind);
        entry.pool = pool.into();
        entry.comment = reason.unwrap_or_default().to_string();
        Ok(entry)
    }

    fn plan(
        &mut self,
        rules: &Rules,
        event: &Event,
        name: &str,
        anchor: Option<Time>,
        payment: Option<PaymentMethod>,
    ) -> Result<Vec<LedgerEntry>, ()> {
        let Some(terms) = rules.plans.get(name) else {
            return Err(());
        };
        let anchor = anchor.unwrap_or(event.time);
        if anchor > event.time {
            return Err(());
        }
        for lot in &mut self.lots {
            if lot.from_plan && !lot.expired && !lot.voided {
                lot.expires_at = Some(match lot.expires_at {
                    Some(end) if end < event.time => end,
                    _ => event.time,
                });
            }
        }
        let tz = self.tz(rules);
        let months = terms.period.months() as u32;
        let cycle = cycle_containing(anchor, tz, months, event.time);
        let s = Subscription {
            name: name.to_string(),
            credits: terms.credits,
            pool: terms.pool.clone(),
            months,
            flex_threshold: terms.flex_threshold,
            anchor,
            tz,
            payment,
            cycle,
            start: cycle_start(anchor, tz, months, cycle),
            end: cycle_start(anchor, tz, months, cycle + 1),
        };
        self.flex_period = Some(if event.time > s.start {
            event.time
        } else {
            s.start
        });
        self.flex_used = Credits::ZERO;
        self.subscription = Some(s.clone());
        let mut entries = Vec::new();
        if s.credits > Credits::ZERO {
            let id = self.new_plan_lot(&s, event.time, s.end);
            let mut entry = self.entry(rules, event, EntryType::Grant);
            entry.pool = s.pool.clone().into();
            entry.credits = s.credits;
            entry.lot = id;
            entry.lot_kind = Some(LotKind::Included);
            entry.payment_method = s.payment;
            entry.comment = format!("plan {}, cycle {}", s.name, s.cycle);
            entries.push(entry);
        }
        Ok(entries)
    }

    fn settings(&mut self, s: &SettingsData) -> Result<(), ()> {
        if let Some(name) = &s.timezone {
            self.timezone = Some(name.parse::<Tz>().map_err(|_| ())?);
        }
        if let Some(admins) = &s.admins {
            if !admins.iter().all(|a| looks_like_email(a)) {
                return Err(());
            }
        }
        if let Some(policy) = &s.policy {
            self.policy = Some(match policy.as_str() {
                "earliest_expiry" => Policy::EarliestExpiry,
                "kind_order" => Policy::KindOrder,
                _ => return Err(()),
            });
        }
        if let Some((enabled, threshold)) = s.flex {
            if let Some(t) = threshold {
                if t.milli() < 0 || t.milli() > MAX_CREDITS {
                    return Err(());
                }
                self.flex_threshold = Some(t);
            }
            if enabled.is_some() {
                self.flex_enabled = enabled;
            }
        }
        if s.settle_shortfall.is_some() {
            self.settle_shortfall = s.settle_shortfall;
        }
        // The caller works on a copy, so returning early above changes nothing.
        Ok(())
    }

    pub fn balance(&self, at: Time) -> BalanceView {
        let mut pools: BalanceView = BTreeMap::new();
        let soon = at + TimeDelta::days(14);
        for (i, lot) in self.lots.iter().enumerate() {
            let held = self.held_on(&lot.id);
            if !lot.voided && !lot.expired && held > Credits::ZERO {
                pools
                    .entry(lot.pool.clone())
                    .or_insert((Credits::ZERO, BTreeMap::new(), Credits::ZERO, Credits::ZERO))
                    .3 += held;
            }
            let free = self.free(i);
            if !usable_at(lot, at) || free <= Credits::ZERO {
                continue;
            }
            let pool = pools.entry(lot.pool.clone()).or_insert((
                Credits::ZERO,
                BTreeMap::new(),
                Credits::ZERO,
                Credits::ZERO,
            ));
            pool.0 += free;
            let kind = match lot.kind {
                LotKind::Included => "included",
                LotKind::Promotional => "promotional",
                LotKind::Purchased => "purchased",
                LotKind::Flex => "flex",
            };
            *pool.1.entry(kind).or_insert(Credits::ZERO) += free;
            if matches!(lot.expires_at, Some(end) if end <= soon) {
                pool.2 += free;
            }
        }
        pools
    }

    pub fn view(&self, clock: Time) -> AccountView {
        let mut lots: Vec<LotView> = self
            .lots
            .iter()
            .map(|l| {
                (
                    (
                        l.id.clone(),
                        l.pool.clone(),
                        l.kind,
                        l.granted,
                        l.remaining,
                        l.effective_at,
                        l.expires_at,
                        l.priority,
                        l.seq,
                        l.voided,
                        l.expired,
                        l.from_plan,
                    ),
                    self.held_on(&l.id),
                )
            })
            .collect();
        lots.sort_by_key(|l| l.0 .8);
        AccountView {
            lots,
            next_seq: self.next_seq,
            shortfall: self.shortfall.clone(),
            flex_used: self.flex_used,
            flex_period: self.flex_period,
            subscription: self
                .subscription
                .as_ref()
                .map(|s| (s.name.clone(), s.cycle, s.start, s.end)),
            timezone: self.timezone,
            policy: self.policy,
            flex_enabled: self.flex_enabled,
            flex_threshold: self.flex_threshold,
            settle_shortfall: self.settle_shortfall,
            balance: self.balance(clock),
            holds: self.holds.values().cloned().collect(),
        }
    }
}
