//! The domain rules, checked end to end through the public API: Kafka payloads (CloudEvents
//! JSON) go into `Book::process`, and the outcome, ledger entries and account state are
//! checked against the rules of the design brief.

mod common;

use chrono::{DateTime, NaiveDate, TimeDelta, Utc};
use tally_core::account::balance;
use tally_core::alerts::{Alert, AlertKind, AlertRules};
use tally_core::event::Status;
use tally_core::holds::{Answer, Check, Hold, HoldStatus, HoldUse, SettleOutcome};
use tally_core::{
    AccountState, Book, Credits, EntryType, LedgerEntry, Lot, LotKind, Outcome, Policy, Rejection,
    Rules,
};

const MATRIX: &str = r#"
[[versions]]
name = "2026-01"
effective_from = "2026-01-01T00:00:00Z"
[versions.features]
text_to_image = { pool = "ai", cost = 8 }
erase = { pool = "ai", cost = 7 }
upscale = { pool = "ai", cost = 0 }
image_generation = { pool = "ai", variants = { short = 5, mid = 10, long = 20 } }
audio_generation = { pool = "ai", variants = { short = 15, mid = 30, long = 50 } }
video_generation = { pool = "ai", variants = { short = 25, mid = 50, long = 100 } }
regeneration = { pool = "ai", variants = { short = 1, long = 2 } }
deep_scan = { pool = "scan", cost = 1 }
translation = { pool = "ai", per_unit = "0.002", unit = "character" }

[[versions]]
name = "2026-12"
effective_from = "2026-12-01T00:00:00Z"
[versions.features]
text_to_image = { pool = "ai", cost = 9 }
erase = { pool = "ai", cost = 7 }
upscale = { pool = "ai", cost = 0 }
deep_scan = { pool = "scan", cost = 1 }
"#;

fn rules() -> Rules {
    common::rules(MATRIX)
}

fn at(text: &str) -> DateTime<Utc> {
    text.parse().expect("RFC 3339 time")
}

fn whole(n: i64) -> Credits {
    Credits::from_whole(n)
}

/// A CloudEvent payload for account `acme` from source `production-room`.
fn event(ty: &str, id: &str, time: &str, data: &str) -> String {
    event_from("acme", "production-room", ty, id, time, data)
}

fn event_from(account: &str, source: &str, ty: &str, id: &str, time: &str, data: &str) -> String {
    format!(
        r#"{{"specversion":"1.0","type":"{ty}","id":"{id}","source":"{source}",
            "subject":"{account}","time":"{time}","data":{data}}}"#
    )
}

fn usage(id: &str, time: &str, data: &str) -> String {
    event("ai.usage", id, time, data)
}

struct Harness {
    rules: Rules,
    book: Book,
    /// Entries that fell due (expiries, cycle allowances), oldest first.
    due: Vec<LedgerEntry>,
    /// Alerts that fired, oldest first.
    alerts: Vec<Alert>,
    /// The answer to the last payload (holds and releases).
    answer: Option<Answer>,
}

impl Harness {
    fn new() -> Self {
        Harness {
            rules: rules(),
            book: Book::default(),
            due: Vec::new(),
            alerts: Vec::new(),
            answer: None,
        }
    }

    fn send(&mut self, payload: &str, arrival: DateTime<Utc>) -> Outcome {
        let step = self.book.process(&self.rules, payload.as_bytes(), arrival);
        self.due.extend(step.due);
        self.alerts.extend(step.alerts);
        self.answer = step.answer;
        step.outcome
    }

    /// A clock tick arriving at `time`; returns what fell due.
    fn tick(&mut self, time: &str) -> Vec<LedgerEntry> {
        let payload = format!(
            r#"{{"specversion":"1.0","type":"tally.tick","id":"tick-{time}","source":"tally","time":"{time}"}}"#
        );
        let before = self.due.len();
        assert!(matches!(self.send(&payload, at(time)), Outcome::Tick));
        self.due.split_off(before)
    }

    fn plan(&mut self, id: &str, time: &str, data: &str) -> Vec<LedgerEntry> {
        self.ok(&event("account.plan", id, time, data), time)
    }

    /// Sends a payload that arrives exactly at its event time and must be applied.
    fn ok(&mut self, payload: &str, time: &str) -> Vec<LedgerEntry> {
        self.ok_at(payload, at(time))
    }

    fn ok_at(&mut self, payload: &str, arrival: DateTime<Utc>) -> Vec<LedgerEntry> {
        match self.send(payload, arrival) {
            Outcome::Applied { entries, .. } => entries.into_vec(),
            other => panic!("expected Applied for {payload}, got {other:?}"),
        }
    }

    /// Sends a usage event and returns its single ledger entry.
    fn call(&mut self, id: &str, time: &str, data: &str) -> LedgerEntry {
        let mut entries = self.ok(&usage(id, time, data), time);
        assert_eq!(entries.len(), 1, "one ledger entry per call");
        entries.remove(0)
    }

    fn rejected(&mut self, payload: &str, arrival: DateTime<Utc>) -> Rejection {
        match self.send(payload, arrival) {
            Outcome::Rejected(rejection) => rejection,
            other => panic!("expected Rejected for {payload}, got {other:?}"),
        }
    }

    fn grant(&mut self, id: &str, time: &str, data: &str) -> LedgerEntry {
        let mut entries = self.ok(&event("credit.grant", id, time, data), time);
        assert_eq!(entries.len(), 1, "one ledger entry per grant");
        entries.remove(0)
    }

    fn lots(&self) -> &[Lot] {
        &self.book.accounts["acme"].lots
    }

    fn lot(&self, id: &str) -> &Lot {
        self.lots()
            .iter()
            .find(|lot| lot.id == id)
            .unwrap_or_else(|| panic!("no lot {id}"))
    }

    fn available(&self, pool: &str, time: &str) -> Credits {
        balance(self.lots(), at(time))
            .get(pool)
            .map(|b| b.available)
            .unwrap_or_default()
    }
}

/// (lot, credits) of each payment of an entry.
fn paid(entry: &LedgerEntry) -> Vec<(&str, Credits)> {
    entry
        .paid
        .iter()
        .map(|p| (p.lot.as_str(), p.credits))
        .collect()
}

fn paid_lots(entry: &LedgerEntry) -> Vec<&str> {
    entry.paid.iter().map(|p| p.lot.as_str()).collect()
}

const T0: &str = "2026-11-01T00:00:00Z";

// ---------------------------------------------------------------- costs

#[test]
fn every_feature_costs_what_the_matrix_says_and_debits_that_much() {
    let mut h = Harness::new();
    h.grant("big", T0, r#"{"kind":"purchased","credits":10000}"#);
    let cases = [
        ("text_to_image", None, 8),
        ("erase", None, 7),
        ("upscale", None, 0),
        ("image_generation", Some("short"), 5),
        ("image_generation", Some("mid"), 10),
        ("image_generation", Some("long"), 20),
        ("audio_generation", Some("short"), 15),
        ("audio_generation", Some("mid"), 30),
        ("audio_generation", Some("long"), 50),
        ("video_generation", Some("short"), 25),
        ("video_generation", Some("mid"), 50),
        ("video_generation", Some("long"), 100),
        ("regeneration", Some("short"), 1),
        ("regeneration", Some("long"), 2),
    ];
    let mut left = whole(10000);
    for (i, (feature, variant, cost)) in cases.into_iter().enumerate() {
        let data = match variant {
            Some(v) => format!(r#"{{"user":"kim","feature":"{feature}","variant":"{v}"}}"#),
            None => format!(r#"{{"user":"kim","feature":"{feature}"}}"#),
        };
        let e = h.call(&format!("evt-{i}"), "2026-11-02T00:00:00Z", &data);
        assert_eq!(e.credits, whole(cost), "{feature} {variant:?}");
        assert_eq!(e.pool, "ai");
        let paid_total: Credits = e.paid.iter().map(|p| p.credits).sum();
        assert_eq!(paid_total, whole(cost), "{feature} {variant:?} paid");
        assert_eq!(e.shortfall, Credits::ZERO);
        left -= whole(cost);
        assert_eq!(
            h.lot("big").remaining,
            left,
            "{feature} {variant:?} debited"
        );
    }
}

#[test]
fn a_free_feature_debits_nothing() {
    let mut h = Harness::new();
    h.grant("g", T0, r#"{"kind":"included","credits":10}"#);
    let e = h.call(
        "u",
        "2026-11-02T00:00:00Z",
        r#"{"user":"kim","feature":"upscale"}"#,
    );
    assert_eq!(e.credits, Credits::ZERO);
    assert!(e.paid.is_empty(), "{:?}", e.paid);
    assert_eq!(e.shortfall, Credits::ZERO);
    assert_eq!(h.lot("g").remaining, whole(10));
}

#[test]
fn quantity_multiplies_the_cost() {
    let mut h = Harness::new();
    h.grant("g", T0, r#"{"kind":"included","credits":100}"#);
    let e = h.call(
        "u",
        "2026-11-02T00:00:00Z",
        r#"{"user":"kim","feature":"text_to_image","quantity":3}"#,
    );
    assert_eq!(e.quantity, whole(3));
    assert_eq!(e.credits, whole(24));
    assert_eq!(h.lot("g").remaining, whole(76));
}

#[test]
fn per_unit_rate_times_quantity_rounds_up_to_a_thousandth() {
    let mut h = Harness::new();
    h.grant("g", T0, r#"{"kind":"included","credits":1}"#);
    // 0.002 x 0.75 = 0.0015 is charged 0.002, never 0.001 (or free).
    let e = h.call(
        "u1",
        "2026-11-02T00:00:00Z",
        r#"{"user":"kim","feature":"translation","quantity":"0.75"}"#,
    );
    assert_eq!(e.credits, Credits::from_milli(2));
    // 0.002 x 0.001 = 0.000002 is still charged a thousandth.
    let e = h.call(
        "u2",
        "2026-11-02T00:00:00Z",
        r#"{"user":"kim","feature":"translation","quantity":0.001}"#,
    );
    assert_eq!(e.credits, Credits::from_milli(1));
    // Exact products are not rounded: 0.002 x 250 = 0.5.
    let e = h.call(
        "u3",
        "2026-11-02T00:00:00Z",
        r#"{"user":"kim","feature":"translation","quantity":250}"#,
    );
    assert_eq!(e.credits, Credits::from_milli(500));
    assert_eq!(
        h.lot("g").remaining,
        Credits::from_milli(1000 - 2 - 1 - 500)
    );
}

#[test]
fn deep_scan_is_paid_from_the_scan_pool_only() {
    let mut h = Harness::new();
    h.grant("monthly", T0, r#"{"kind":"included","credits":100}"#);
    let e = h.call(
        "s1",
        "2026-11-02T00:00:00Z",
        r#"{"user":"kim","feature":"deep_scan"}"#,
    );
    assert_eq!(e.pool, "scan");
    assert_eq!(e.credits, whole(1));
    assert!(
        e.paid.is_empty(),
        "ai credits paid for a scan: {:?}",
        e.paid
    );
    assert_eq!(e.shortfall, whole(1));
    assert_eq!(h.lot("monthly").remaining, whole(100));

    h.grant(
        "scans",
        T0,
        r#"{"kind":"purchased","pool":"scan","credits":5}"#,
    );
    let e = h.call(
        "s2",
        "2026-11-02T00:00:00Z",
        r#"{"user":"kim","feature":"deep_scan"}"#,
    );
    assert_eq!(paid(&e), [("scans", whole(1))]);
    // And an ai call never touches scan credits.
    let e = h.call(
        "t",
        "2026-11-02T00:00:00Z",
        r#"{"user":"kim","feature":"erase"}"#,
    );
    assert_eq!(paid(&e), [("monthly", whole(7))]);
    assert_eq!(h.lot("scans").remaining, whole(4));
    assert_eq!(h.available("scan", "2026-11-02T00:00:00Z"), whole(4));
    assert_eq!(h.available("ai", "2026-11-02T00:00:00Z"), whole(93));
}

#[test]
fn unknown_feature_or_variant_is_rejected_never_free() {
    let mut h = Harness::new();
    h.grant("g", T0, r#"{"kind":"included","credits":100}"#);
    let time = "2026-11-02T00:00:00Z";
    for (data, code) in [
        (r#"{"user":"kim","feature":"teleport"}"#, "unknown_feature"),
        (
            r#"{"user":"kim","feature":"teleport","status":"failed"}"#,
            "unknown_feature",
        ),
        (
            r#"{"user":"kim","feature":"image_generation","variant":"huge"}"#,
            "unpriceable",
        ),
        (
            r#"{"user":"kim","feature":"image_generation"}"#,
            "unpriceable",
        ),
    ] {
        let before = h.book.accounts["acme"].clone();
        let r = h.rejected(&usage("u", time, data), at(time));
        assert_eq!(r.code(), code, "{data}: {r}");
        assert!(matches!(r, Rejection::Price(_)), "{r:?}");
        assert_eq!(
            h.book.accounts["acme"], before,
            "a rejected call changed the account"
        );
    }
}

#[test]
fn a_call_is_priced_by_the_matrix_version_in_force_at_its_time() {
    let mut h = Harness::new();
    h.grant("g", T0, r#"{"kind":"included","credits":100}"#);
    // Happened in the old version's time, arrived after the new one took effect.
    let late = "2026-11-30T23:59:59Z";
    let e = h.ok_at(
        &usage("u1", late, r#"{"user":"kim","feature":"text_to_image"}"#),
        at("2026-12-01T00:01:00Z"),
    );
    assert_eq!(
        (e[0].credits, e[0].matrix_version.as_str()),
        (whole(8), "2026-01")
    );
    let e = h.call(
        "u2",
        "2026-12-01T00:00:00Z",
        r#"{"user":"kim","feature":"text_to_image"}"#,
    );
    assert_eq!(
        (e.credits, e.matrix_version.as_str()),
        (whole(9), "2026-12")
    );
    // A feature the newer version dropped is unknown from then on.
    let time = "2026-12-02T00:00:00Z";
    let r = h.rejected(
        &usage(
            "u3",
            time,
            r#"{"user":"kim","feature":"image_generation","variant":"mid"}"#,
        ),
        at(time),
    );
    assert_eq!(r.code(), "unknown_feature");
    assert_eq!(h.lot("g").remaining, whole(100 - 8 - 9));
}

// ---------------------------------------------------------------- debit order

#[test]
fn the_lot_that_expires_soonest_pays_first_whatever_its_kind() {
    // [000]: a purchase that expires before the monthly allowance goes first.
    let mut h = Harness::new();
    h.grant(
        "month",
        T0,
        r#"{"kind":"included","credits":10,"expires_at":"2026-12-01T00:00:00Z"}"#,
    );
    h.grant(
        "pack",
        T0,
        r#"{"kind":"purchased","credits":10,"expires_at":"2026-11-20T00:00:00Z"}"#,
    );
    let e = h.call(
        "u",
        "2026-11-02T00:00:00Z",
        r#"{"user":"kim","feature":"video_generation","variant":"short"}"#,
    );
    assert_eq!(paid(&e), [("pack", whole(10)), ("month", whole(10))]);
    assert_eq!(e.paid[0].kind, LotKind::Purchased);
    assert_eq!(e.paid[1].kind, LotKind::Included);
    assert_eq!(e.shortfall, whole(5));
}

#[test]
fn never_expiring_lots_pay_after_expiring_ones() {
    let mut h = Harness::new();
    h.grant(
        "forever",
        T0,
        r#"{"kind":"included","credits":10,"expires_at":null}"#,
    );
    h.grant(
        "dated",
        T0,
        r#"{"kind":"purchased","credits":10,"expires_at":"2027-10-01T00:00:00Z"}"#,
    );
    let e = h.call(
        "u",
        "2026-11-02T00:00:00Z",
        r#"{"user":"kim","feature":"erase"}"#,
    );
    assert_eq!(paid_lots(&e), ["dated"]);
}

#[test]
fn explicit_priority_lower_first_and_before_unprioritised_lots() {
    let mut h = Harness::new();
    h.grant(
        "soonest",
        T0,
        r#"{"kind":"included","credits":5,"expires_at":"2026-11-03T00:00:00Z"}"#,
    );
    h.grant("p7", T0, r#"{"kind":"purchased","credits":5,"priority":7}"#);
    h.grant(
        "p2",
        T0,
        r#"{"kind":"promotional","credits":5,"priority":2,"expires_at":"2027-01-01T00:00:00Z"}"#,
    );
    h.grant(
        "neg",
        T0,
        r#"{"kind":"purchased","credits":5,"priority":-1}"#,
    );
    let e = h.call(
        "u",
        "2026-11-02T00:00:00Z",
        r#"{"user":"kim","feature":"image_generation","variant":"long"}"#,
    );
    assert_eq!(paid_lots(&e), ["neg", "p2", "p7", "soonest"]);
    assert_eq!(e.shortfall, Credits::ZERO);
}

#[test]
fn ties_break_included_then_promotional_then_purchased_then_oldest_grant() {
    let mut h = Harness::new();
    let same = r#""credits":2,"expires_at":"2026-12-01T00:00:00Z""#;
    h.grant("bought", T0, &format!(r#"{{"kind":"purchased",{same}}}"#));
    h.grant(
        "promo-old",
        T0,
        &format!(r#"{{"kind":"promotional",{same}}}"#),
    );
    h.grant("plan", T0, &format!(r#"{{"kind":"included",{same}}}"#));
    h.grant(
        "promo-new",
        T0,
        &format!(r#"{{"kind":"promotional",{same}}}"#),
    );
    let e = h.call(
        "u",
        "2026-11-02T00:00:00Z",
        r#"{"user":"kim","feature":"erase"}"#,
    );
    assert_eq!(
        paid(&e),
        [
            ("plan", whole(2)),
            ("promo-old", whole(2)),
            ("promo-new", whole(2)),
            ("bought", whole(1)),
        ]
    );
    // The same tie among explicit priorities.
    let mut h = Harness::new();
    h.grant("b", T0, r#"{"kind":"purchased","credits":1,"priority":1}"#);
    h.grant("a", T0, r#"{"kind":"purchased","credits":1,"priority":1}"#);
    h.grant("i", T0, r#"{"kind":"included","credits":1,"priority":1}"#);
    let e = h.call(
        "u",
        "2026-11-02T00:00:00Z",
        r#"{"user":"kim","feature":"image_generation","variant":"short"}"#,
    );
    assert_eq!(paid_lots(&e), ["i", "b", "a"]);
}

#[test]
fn a_call_at_2359_on_the_last_day_uses_that_cycles_allowance() {
    let mut h = Harness::new();
    h.grant(
        "nov",
        T0,
        r#"{"kind":"included","credits":100,"expires_at":"2026-12-01T00:00:00Z"}"#,
    );
    // December's allowance is granted ahead of time, effective at the cycle start.
    h.grant(
        "dec",
        "2026-11-30T12:00:00Z",
        r#"{"kind":"included","credits":100,"effective_at":"2026-12-01T00:00:00Z",
            "expires_at":"2027-01-01T00:00:00Z"}"#,
    );
    // Made at 23:59 on the last day, arriving after midnight: November pays.
    let e = h.ok_at(
        &usage(
            "u1",
            "2026-11-30T23:59:00Z",
            r#"{"user":"kim","feature":"erase"}"#,
        ),
        at("2026-12-01T00:00:30Z"),
    );
    assert_eq!(paid_lots(&e[0]), ["nov"]);
    // Made at midnight (even if it arrived before the late one): December pays.
    let e = h.call(
        "u2",
        "2026-12-01T00:00:00Z",
        r#"{"user":"kim","feature":"erase"}"#,
    );
    assert_eq!(paid_lots(&e), ["dec"]);
    // Before December's lot is effective, it cannot pay.
    let e = h.ok_at(
        &usage(
            "u3",
            "2026-11-30T23:59:59Z",
            r#"{"user":"kim","feature":"erase"}"#,
        ),
        at("2026-12-01T00:01:00Z"),
    );
    assert_eq!(paid_lots(&e[0]), ["nov"]);
    assert_eq!(h.lot("nov").remaining, whole(86));
    assert_eq!(h.lot("dec").remaining, whole(93));
}

#[test]
fn a_call_costing_more_than_the_lots_hold_takes_it_all_and_records_the_shortfall() {
    let mut h = Harness::new();
    h.grant("a", T0, r#"{"kind":"included","credits":"10.5"}"#);
    h.grant("b", T0, r#"{"kind":"purchased","credits":4}"#);
    let e = h.call(
        "u1",
        "2026-11-02T00:00:00Z",
        r#"{"user":"kim","feature":"audio_generation","variant":"mid"}"#,
    );
    assert_eq!(e.credits, whole(30));
    assert_eq!(
        paid(&e),
        [("a", Credits::from_milli(10_500)), ("b", whole(4))]
    );
    assert_eq!(e.shortfall, Credits::from_milli(15_500));
    assert!(h.lots().iter().all(|l| l.remaining == Credits::ZERO));
    let e = h.call(
        "u2",
        "2026-11-02T00:00:00Z",
        r#"{"user":"kim","feature":"erase"}"#,
    );
    assert!(e.paid.is_empty());
    assert_eq!((e.credits, e.shortfall), (whole(7), whole(7)));
}

#[test]
fn kind_order_policy_is_chosen_per_account_by_settings() {
    let grants = |h: &mut Harness, account: &str| {
        for (id, data) in [
            (
                "pack",
                r#"{"kind":"purchased","credits":10,"expires_at":"2026-11-10T00:00:00Z"}"#,
            ),
            (
                "month",
                r#"{"kind":"included","credits":10,"expires_at":"2026-12-01T00:00:00Z"}"#,
            ),
        ] {
            h.ok(
                &event_from(account, "billing", "credit.grant", id, T0, data),
                T0,
            );
        }
    };
    let mut h = Harness::new();
    grants(&mut h, "acme");
    grants(&mut h, "globex");
    let settings = event_from(
        "globex",
        "admin",
        "account.settings",
        "s1",
        T0,
        r#"{"policy":"kind_order"}"#,
    );
    assert!(
        h.ok(&settings, T0).is_empty(),
        "settings write no ledger entry"
    );
    assert_eq!(
        h.book.accounts["globex"].policy(&h.rules),
        Policy::KindOrder
    );
    let time = "2026-11-02T00:00:00Z";
    let call = r#"{"user":"kim","feature":"text_to_image"}"#;
    let acme = h.ok(
        &event_from("acme", "room", "ai.usage", "u", time, call),
        time,
    );
    let globex = h.ok(
        &event_from("globex", "room", "ai.usage", "u", time, call),
        time,
    );
    assert_eq!(paid_lots(&acme[0]), ["pack"], "default: earliest expiry");
    assert_eq!(
        paid_lots(&globex[0]),
        ["month"],
        "kind_order: included first"
    );

    // And back to the earliest expiry.
    let settings = event_from(
        "globex",
        "admin",
        "account.settings",
        "s2",
        time,
        r#"{"policy":"earliest_expiry"}"#,
    );
    h.ok(&settings, time);
    let globex = h.ok(
        &event_from("globex", "room", "ai.usage", "u2", time, call),
        time,
    );
    assert_eq!(paid_lots(&globex[0]), ["pack"]);
}

#[test]
fn kind_order_still_puts_explicit_priority_first() {
    let mut h = Harness::new();
    h.ok(
        &event("account.settings", "s", T0, r#"{"policy":"kind_order"}"#),
        T0,
    );
    h.grant("month", T0, r#"{"kind":"included","credits":10}"#);
    h.grant(
        "pack",
        T0,
        r#"{"kind":"purchased","credits":10,"priority":0}"#,
    );
    let e = h.call(
        "u",
        "2026-11-02T00:00:00Z",
        r#"{"user":"kim","feature":"erase"}"#,
    );
    assert_eq!(paid_lots(&e), ["pack"]);
}

// ---------------------------------------------------------------- failed calls

#[test]
fn a_failed_call_debits_nothing_and_is_logged_as_failed() {
    let mut h = Harness::new();
    h.grant("g", T0, r#"{"kind":"included","credits":100}"#);
    let e = h.call(
        "u",
        "2026-11-02T00:00:00Z",
        r#"{"user":"kim","feature":"video_generation","variant":"long","status":"failed"}"#,
    );
    assert_eq!(e.entry_type, EntryType::Usage);
    assert_eq!(e.status, Status::Failed);
    assert_eq!(e.credits, Credits::ZERO);
    assert!(e.paid.is_empty());
    assert_eq!(e.shortfall, Credits::ZERO);
    assert_eq!(
        (e.feature.as_str(), e.user.as_str()),
        ("video_generation", "kim")
    );
    assert_eq!(h.lot("g").remaining, whole(100));
    // A failed call with no credits at all records no shortfall either.
    let mut h = Harness::new();
    let e = h.call(
        "u",
        "2026-11-02T00:00:00Z",
        r#"{"user":"kim","feature":"erase","status":"failed"}"#,
    );
    assert_eq!((e.credits, e.shortfall), (Credits::ZERO, Credits::ZERO));
}

// ---------------------------------------------------------------- dedup

#[test]
fn the_same_event_within_the_dedup_window_is_a_duplicate_and_changes_nothing() {
    let mut h = Harness::new();
    let time = "2026-11-02T00:00:00Z";
    h.grant("g", T0, r#"{"kind":"included","credits":100}"#);
    let call = usage("evt-7f3a", time, r#"{"user":"kim","feature":"erase"}"#);
    h.ok(&call, time);
    let before = h.book.accounts["acme"].clone();
    for later in [
        TimeDelta::zero(),
        TimeDelta::hours(1),
        TimeDelta::hours(24) - TimeDelta::seconds(1),
    ] {
        match h.send(&call, at(time) + later) {
            Outcome::Duplicate { account } => assert_eq!(account, "acme"),
            other => panic!("expected Duplicate after {later}, got {other:?}"),
        }
    }
    assert_eq!(h.book.accounts["acme"], before);
    assert_eq!(h.lot("g").remaining, whole(93));
    // A redelivered grant is a duplicate too, not a `lot already exists` rejection.
    let grant = event(
        "credit.grant",
        "g2",
        T0,
        r#"{"kind":"purchased","credits":5}"#,
    );
    h.ok(&grant, T0);
    assert!(matches!(h.send(&grant, at(T0)), Outcome::Duplicate { .. }));
}

#[test]
fn the_same_event_after_the_dedup_window_is_charged_again() {
    let mut h = Harness::new();
    let time = "2026-11-02T00:00:00Z";
    h.grant("g", T0, r#"{"kind":"included","credits":100}"#);
    let call = usage("evt-1", time, r#"{"user":"kim","feature":"erase"}"#);
    h.ok(&call, time);
    let e = h.ok_at(&call, at(time) + TimeDelta::hours(24));
    assert_eq!(e[0].credits, whole(7));
    assert_eq!(h.lot("g").remaining, whole(86));
}

#[test]
fn dedup_is_per_account_source_and_id() {
    let mut h = Harness::new();
    let time = "2026-11-02T00:00:00Z";
    let call = r#"{"user":"kim","feature":"erase"}"#;
    h.ok(
        &event_from("acme", "room", "ai.usage", "e1", time, call),
        time,
    );
    for (account, source, id) in [
        ("acme", "studio", "e1"),
        ("globex", "room", "e1"),
        ("acme", "room", "e2"),
    ] {
        let payload = event_from(account, source, "ai.usage", id, time, call);
        assert!(
            matches!(h.send(&payload, at(time)), Outcome::Applied { .. }),
            "({account}, {source}, {id}) taken for a duplicate"
        );
    }
}

#[test]
fn a_rejected_event_does_not_enter_the_dedup_set() {
    let mut h = Harness::new();
    // A grant rejected for its data, then corrected under the same id.
    let bad = event(
        "credit.grant",
        "g-1",
        T0,
        r#"{"kind":"purchased","credits":0}"#,
    );
    assert!(matches!(h.rejected(&bad, at(T0)), Rejection::Command(_)));
    let good = event(
        "credit.grant",
        "g-1",
        T0,
        r#"{"kind":"purchased","credits":50}"#,
    );
    h.ok(&good, T0);
    // A call rejected for arriving too early, delivered again in time.
    let time = "2026-11-02T00:00:00Z";
    let call = usage("u-1", time, r#"{"user":"kim","feature":"erase"}"#);
    let r = h.rejected(&call, at(time) - TimeDelta::hours(1));
    assert!(matches!(r, Rejection::InFuture { .. }), "{r:?}");
    h.ok(&call, time);
    assert_eq!(h.lot("g-1").remaining, whole(43));
}

#[test]
fn a_rejected_first_event_leaves_no_account_behind() {
    let mut h = Harness::new();
    let time = "2026-11-02T00:00:00Z";
    h.rejected(
        &usage("u", time, r#"{"user":"kim","feature":"teleport"}"#),
        at(time),
    );
    assert!(h.book.accounts.is_empty());
}

// ---------------------------------------------------------------- time

#[test]
fn an_event_beyond_the_future_skew_is_rejected_in_future() {
    let mut h = Harness::new();
    let arrival = at("2026-11-02T00:00:00Z");
    let call = |id: &str, time: DateTime<Utc>| {
        usage(
            id,
            &time.to_rfc3339(),
            r#"{"user":"kim","feature":"erase"}"#,
        )
    };
    let r = h.rejected(
        &call(
            "u1",
            arrival + TimeDelta::minutes(5) + TimeDelta::seconds(1),
        ),
        arrival,
    );
    assert!(
        matches!(r, Rejection::InFuture { skew_secs: 300, .. }),
        "{r:?}"
    );
    assert_eq!(r.code(), "time_in_future");
    h.ok_at(&call("u2", arrival + TimeDelta::minutes(5)), arrival);
}

#[test]
fn an_event_older_than_the_lateness_is_rejected_too_late() {
    let mut h = Harness::new();
    let arrival = at("2026-11-20T00:00:00Z");
    let call = |id: &str, time: DateTime<Utc>| {
        usage(
            id,
            &time.to_rfc3339(),
            r#"{"user":"kim","feature":"erase"}"#,
        )
    };
    let r = h.rejected(
        &call("u1", arrival - TimeDelta::days(7) - TimeDelta::seconds(1)),
        arrival,
    );
    assert!(
        matches!(
            r,
            Rejection::TooLate {
                lateness_secs: 604_800,
                ..
            }
        ),
        "{r:?}"
    );
    assert_eq!(r.code(), "too_late");
    h.ok_at(&call("u2", arrival - TimeDelta::days(7)), arrival);
    // Commands are held to the same window.
    let grant = event(
        "credit.grant",
        "g",
        "2026-11-01T00:00:00Z",
        r#"{"kind":"purchased","credits":5}"#,
    );
    assert!(matches!(
        h.rejected(&grant, arrival),
        Rejection::TooLate { .. }
    ));
}

// ---------------------------------------------------------------- grants and voids

#[test]
fn the_lot_id_defaults_to_the_event_id() {
    let mut h = Harness::new();
    let e = h.grant(
        "inv-123",
        T0,
        r#"{"kind":"purchased","credits":2500,"payment":{"method":"card","reference":"inv-123"},
            "comment":"pack"}"#,
    );
    assert_eq!(e.entry_type, EntryType::Grant);
    assert_eq!(e.lot, "inv-123");
    assert_eq!(e.credits, whole(2500));
    assert_eq!(e.lot_kind, Some(LotKind::Purchased));
    assert_eq!(e.pool, "ai");
    assert_eq!(e.payment_reference, "inv-123");
    let lot = h.lot("inv-123");
    assert_eq!((lot.granted, lot.remaining), (whole(2500), whole(2500)));
    assert_eq!(lot.effective_at, at(T0));
    assert_eq!(lot.expires_at, None);
    let e = h.grant(
        "evt-2",
        T0,
        r#"{"lot":"named","kind":"promotional","credits":1}"#,
    );
    assert_eq!(e.lot, "named");
    assert_eq!(h.lots().len(), 2);
}

#[test]
fn a_duplicate_lot_id_is_rejected() {
    let mut h = Harness::new();
    h.grant(
        "e1",
        T0,
        r#"{"lot":"pack-1","kind":"purchased","credits":10}"#,
    );
    let before = h.book.accounts["acme"].clone();
    let r = h.rejected(
        &event(
            "credit.grant",
            "e2",
            T0,
            r#"{"lot":"pack-1","kind":"purchased","credits":99}"#,
        ),
        at(T0),
    );
    assert!(matches!(r, Rejection::Command(_)), "{r:?}");
    // The default id clashes too.
    let r = h.rejected(
        &event(
            "credit.grant",
            "pack-1",
            T0,
            r#"{"kind":"purchased","credits":99}"#,
        ),
        at(T0),
    );
    assert!(matches!(r, Rejection::Command(_)), "{r:?}");
    assert_eq!(h.book.accounts["acme"], before);
}

#[test]
fn valid_days_computes_the_expiry() {
    let mut h = Harness::new();
    h.grant(
        "p",
        T0,
        r#"{"kind":"purchased","credits":10,"valid_days":360}"#,
    );
    assert_eq!(h.lot("p").expires_at, Some(at(T0) + TimeDelta::days(360)));
    // Counted from when the lot takes effect.
    h.grant(
        "q",
        T0,
        r#"{"kind":"purchased","credits":10,"valid_days":30,"effective_at":"2026-11-10T00:00:00Z"}"#,
    );
    assert_eq!(h.lot("q").expires_at, Some(at("2026-12-10T00:00:00Z")));
    // Usable until the last instant, not at the expiry.
    let last = at(T0) + TimeDelta::days(360) - TimeDelta::seconds(1);
    let e = h.ok_at(
        &usage(
            "u1",
            &last.to_rfc3339(),
            r#"{"user":"kim","feature":"erase"}"#,
        ),
        last,
    );
    assert_eq!(paid_lots(&e[0]), ["p"]);
    let end = at(T0) + TimeDelta::days(360);
    let e = h.ok_at(
        &usage(
            "u2",
            &end.to_rfc3339(),
            r#"{"user":"kim","feature":"erase"}"#,
        ),
        end,
    );
    assert!(e[0].paid.is_empty());
    assert_eq!(e[0].shortfall, whole(7));
}

#[test]
fn expires_at_and_valid_days_together_are_rejected() {
    let mut h = Harness::new();
    let r = h.rejected(
        &event(
            "credit.grant",
            "g",
            T0,
            r#"{"kind":"purchased","credits":10,"valid_days":30,"expires_at":"2026-12-01T00:00:00Z"}"#,
        ),
        at(T0),
    );
    assert!(matches!(r, Rejection::Command(_)), "{r:?}");
    assert!(h.book.accounts.is_empty());
}

#[test]
fn a_lot_that_would_expire_before_it_takes_effect_is_rejected() {
    let mut h = Harness::new();
    let r = h.rejected(
        &event(
            "credit.grant",
            "g",
            T0,
            r#"{"kind":"purchased","credits":10,"expires_at":"2026-10-01T00:00:00Z"}"#,
        ),
        at(T0),
    );
    assert!(matches!(r, Rejection::Command(_)), "{r:?}");
}

#[test]
fn non_positive_credits_are_rejected() {
    let mut h = Harness::new();
    for (i, credits) in ["0", "-5", "\"-0.001\"", "\"0.000\""]
        .into_iter()
        .enumerate()
    {
        let r = h.rejected(
            &event(
                "credit.grant",
                &format!("g{i}"),
                T0,
                &format!(r#"{{"kind":"promotional","credits":{credits}}}"#),
            ),
            at(T0),
        );
        assert!(matches!(r, Rejection::Command(_)), "{credits}: {r:?}");
    }
    assert!(h.book.accounts.is_empty());
    // The smallest positive amount is fine.
    h.grant("tiny", T0, r#"{"kind":"promotional","credits":"0.001"}"#);
}

#[test]
fn void_removes_the_remaining_credits_and_the_lot_never_pays_again() {
    let mut h = Harness::new();
    h.grant(
        "pack",
        T0,
        r#"{"kind":"purchased","credits":100,"payment":{"method":"cash"}}"#,
    );
    h.grant("promo", T0, r#"{"kind":"promotional","credits":5}"#);
    let time = "2026-11-02T00:00:00Z";
    h.call(
        "u1",
        time,
        r#"{"user":"kim","feature":"audio_generation","variant":"mid"}"#,
    );
    // The promo (included < promotional < purchased on a tie of never-expiring lots) paid 5.
    assert_eq!(h.lot("pack").remaining, whole(75));
    let e = h.ok(
        &event(
            "credit.void",
            "v1",
            time,
            r#"{"lot":"pack","reason":"refund"}"#,
        ),
        time,
    );
    assert_eq!(e.len(), 1);
    assert_eq!(e[0].entry_type, EntryType::Void);
    assert_eq!(e[0].credits, whole(-75));
    assert_eq!(e[0].lot, "pack");
    assert_eq!(e[0].lot_kind, Some(LotKind::Purchased));
    assert_eq!(e[0].comment, "refund");
    let lot = h.lot("pack");
    assert!(lot.voided);
    assert_eq!(lot.remaining, Credits::ZERO);
    assert_eq!(h.available("ai", time), Credits::ZERO);

    let e = h.call("u2", time, r#"{"user":"kim","feature":"erase"}"#);
    assert!(e.paid.is_empty(), "a voided lot paid: {:?}", e.paid);
    assert_eq!(e.shortfall, whole(7));

    // Voiding again, or voiding a lot that does not exist, is rejected.
    let r = h.rejected(
        &event("credit.void", "v2", time, r#"{"lot":"pack"}"#),
        at(time),
    );
    assert!(matches!(r, Rejection::Command(_)), "{r:?}");
    let r = h.rejected(
        &event("credit.void", "v3", time, r#"{"lot":"nope"}"#),
        at(time),
    );
    assert!(matches!(r, Rejection::Command(_)), "{r:?}");
    // A voided lot keeps its id.
    let r = h.rejected(
        &event(
            "credit.grant",
            "g9",
            time,
            r#"{"lot":"pack","kind":"purchased","credits":1}"#,
        ),
        at(time),
    );
    assert!(matches!(r, Rejection::Command(_)), "{r:?}");
}

// ---------------------------------------------------------------- days and time zones

#[test]
fn the_ledger_day_is_the_calendar_day_in_the_accounts_time_zone() {
    let mut h = Harness::new();
    let day = |s: &str| s.parse::<NaiveDate>().unwrap();
    let g = h.grant(
        "g",
        "2026-11-20T15:30:00Z",
        r#"{"kind":"included","credits":100}"#,
    );
    // 00:30 on the 21st in Seoul (UTC+9).
    assert_eq!(g.day, day("2026-11-21"));
    let e = h.call(
        "u1",
        "2026-11-20T16:00:00Z",
        r#"{"user":"kim","feature":"erase"}"#,
    );
    assert_eq!(e.day, day("2026-11-21"));
    let e = h.call(
        "u2",
        "2026-11-20T14:59:59Z",
        r#"{"user":"kim","feature":"erase"}"#,
    );
    assert_eq!(e.day, day("2026-11-20"));

    let time = "2026-11-20T16:00:01Z";
    h.ok(
        &event(
            "account.settings",
            "s",
            time,
            r#"{"timezone":"America/New_York"}"#,
        ),
        time,
    );
    // 11:00 on the 20th in New York (UTC-5).
    let e = h.call(
        "u3",
        "2026-11-20T16:00:02Z",
        r#"{"user":"kim","feature":"erase"}"#,
    );
    assert_eq!(e.day, day("2026-11-20"));
    let e = h.call(
        "u4",
        "2026-11-21T04:59:59Z",
        r#"{"user":"kim","feature":"erase"}"#,
    );
    assert_eq!(e.day, day("2026-11-20"));
    let e = h.call(
        "u5",
        "2026-11-21T05:00:00Z",
        r#"{"user":"kim","feature":"erase"}"#,
    );
    assert_eq!(e.day, day("2026-11-21"));
    // Another account keeps the default.
    let time = "2026-11-20T16:00:00Z";
    let other = h.ok(
        &event_from(
            "globex",
            "room",
            "ai.usage",
            "x",
            time,
            r#"{"user":"a","feature":"erase"}"#,
        ),
        time,
    );
    assert_eq!(other[0].day, day("2026-11-21"));
}

#[test]
fn an_unknown_time_zone_is_rejected() {
    let mut h = Harness::new();
    h.grant("g", T0, r#"{"kind":"included","credits":1}"#);
    let r = h.rejected(
        &event(
            "account.settings",
            "s",
            T0,
            r#"{"timezone":"Mars/Olympus"}"#,
        ),
        at(T0),
    );
    assert!(matches!(r, Rejection::Command(_)), "{r:?}");
    assert_eq!(h.book.accounts["acme"].timezone, None);
}

// ---------------------------------------------------------------- balance

#[test]
fn balance_excludes_expired_voided_and_not_yet_effective_lots() {
    let mut h = Harness::new();
    h.grant("live", T0, r#"{"kind":"included","credits":10}"#);
    h.grant(
        "expiring",
        T0,
        r#"{"kind":"purchased","credits":20,"expires_at":"2026-11-10T00:00:00Z"}"#,
    );
    h.grant(
        "later",
        T0,
        r#"{"kind":"promotional","credits":40,"effective_at":"2026-11-05T00:00:00Z"}"#,
    );
    h.grant("voided", T0, r#"{"kind":"purchased","credits":80}"#);
    h.grant(
        "scan",
        T0,
        r#"{"kind":"purchased","pool":"scan","credits":3}"#,
    );
    h.ok(&event("credit.void", "v", T0, r#"{"lot":"voided"}"#), T0);

    let at_ = |s: &str| h.book.accounts["acme"].balance(at(s));
    let b = at_("2026-11-02T00:00:00Z");
    assert_eq!(b["ai"].available, whole(30));
    assert_eq!(b["ai"].by_kind["included"], whole(10));
    assert_eq!(b["ai"].by_kind["purchased"], whole(20));
    assert_eq!(b["ai"].by_kind["promotional"], Credits::ZERO);
    assert_eq!(b["scan"].available, whole(3));
    let b = at_("2026-11-05T00:00:00Z");
    assert_eq!(b["ai"].available, whole(70));
    assert_eq!(b["ai"].by_kind["promotional"], whole(40));
    let b = at_("2026-11-10T00:00:00Z");
    assert_eq!(b["ai"].available, whole(50));
    assert_eq!(b["ai"].by_kind["purchased"], Credits::ZERO);
    // The free function agrees with the method.
    assert_eq!(balance(h.lots(), at("2026-11-10T00:00:00Z")), b);
}

#[test]
fn a_valid_days_too_large_for_the_calendar_is_rejected_not_a_panic() {
    let mut h = Harness::new();
    let r = h.rejected(
        &event(
            "credit.grant",
            "g",
            T0,
            r#"{"kind":"purchased","credits":10,"valid_days":4294967295}"#,
        ),
        at(T0),
    );
    assert!(matches!(r, Rejection::Command(_)), "{r:?}");
    assert!(h.book.accounts.is_empty());
}

#[test]
fn a_grant_above_a_trillion_credits_is_rejected() {
    let rules = rules();
    let mut book = Book::default();
    let payload = event(
        "credit.grant",
        "g-huge",
        "2026-11-20T09:00:00Z",
        r#"{"kind": "purchased", "credits": "1000000000000.001"}"#,
    );
    let outcome = book
        .process(&rules, payload.as_bytes(), at("2026-11-20T09:00:01Z"))
        .outcome;
    assert!(
        matches!(&outcome, Outcome::Rejected(Rejection::Command(reason)) if reason.contains("at most")),
        "{outcome:?}"
    );
}

// ---- Plans, cycles, expiry, flex and shortfall [000][002][003][004] ----

#[test]
fn an_empty_lot_expiring_by_time_alone_makes_the_step_name_its_account() {
    let rules = rules();
    let mut book = Book::default();
    let grant = event(
        "credit.grant",
        "g",
        "2026-11-20T09:00:00Z",
        r#"{"kind":"purchased","credits":8,"expires_at":"2026-11-21T00:00:00Z"}"#,
    );
    let call = usage(
        "u",
        "2026-11-20T10:00:00Z",
        r#"{"user":"kim","feature":"text_to_image"}"#,
    );
    for (payload, time) in [
        (grant, "2026-11-20T09:00:00Z"),
        (call, "2026-11-20T10:00:00Z"),
    ] {
        let step = book.process(&rules, payload.as_bytes(), at(time));
        assert!(matches!(step.outcome, Outcome::Applied { .. }), "{step:?}");
    }
    assert_eq!(book.accounts["acme"].lots[0].remaining, Credits::ZERO);
    // A tick for nobody in particular, past the lot's end and the grace (5 minutes).
    let tick = |time: &str| {
        format!(
            r#"{{"specversion":"1.0","type":"tally.tick","id":"tick-{time}","source":"tally","time":"{time}"}}"#
        )
    };
    let step = book.process(
        &rules,
        tick("2026-11-21T00:05:00Z").as_bytes(),
        at("2026-11-21T00:05:00Z"),
    );
    assert!(step.due.is_empty(), "an empty lot expires without an entry");
    assert_eq!(step.changed.as_deref(), Some(&["acme".to_string()][..]));
    assert!(book.accounts["acme"].lots[0].expired);
    // Once expired, the lot changes nothing more.
    let step = book.process(
        &rules,
        tick("2026-11-22T00:00:00Z").as_bytes(),
        at("2026-11-22T00:00:00Z"),
    );
    assert!(step.changed.is_none() && step.due.is_empty(), "{step:?}");
}

#[test]
fn a_plan_issues_its_allowance_each_cycle_and_the_unused_part_expires() {
    let mut h = Harness::new();
    // Midnight on 1 October in Seoul.
    let issued = h.plan(
        "p1",
        "2026-10-10T00:00:00Z",
        r#"{"plan": "pro", "anchor": "2026-09-30T15:00:00Z"}"#,
    );
    assert_eq!(issued.len(), 1);
    assert_eq!(
        (issued[0].credits, issued[0].lot.as_str()),
        (whole(100), "pro:2026-10-10")
    );
    assert_eq!(
        h.lot("pro:2026-10-10").expires_at,
        Some(at("2026-10-31T15:00:00Z"))
    );
    h.call(
        "u1",
        "2026-10-12T00:00:00Z",
        r#"{"user": "u", "feature": "erase"}"#,
    );
    // No traffic: a tick after the cycle end and the grace does the rest.
    let due = h.tick("2026-11-01T00:00:00Z");
    let summary: Vec<(EntryType, Credits, &str)> = due
        .iter()
        .map(|e| (e.entry_type, e.credits, e.lot.as_str()))
        .collect();
    assert_eq!(
        summary,
        [
            (EntryType::Expiry, whole(-93), "pro:2026-10-10"),
            (EntryType::Grant, whole(100), "pro:2026-11-01"),
        ]
    );
    assert_eq!(due[0].id.as_deref(), Some("expiry/pro:2026-10-10"));
    assert_eq!(h.available("ai", "2026-11-01T00:00:00Z"), whole(100));
    // Nothing is written twice, however often the clock is told.
    assert!(h.tick("2026-11-01T00:00:00Z").is_empty());
    assert!(h.tick("2026-11-02T00:00:00Z").is_empty());
}

#[test]
fn a_lot_pays_for_late_calls_within_the_grace_and_not_after() {
    let mut h = Harness::new();
    h.plan(
        "p1",
        "2026-10-10T00:00:00Z",
        r#"{"plan": "pro", "anchor": "2026-09-30T15:00:00Z"}"#,
    );
    // Made at 23:59 on 31 October in Seoul, arriving 3 minutes late: October pays.
    let late = usage(
        "u1",
        "2026-10-31T14:59:00Z",
        r#"{"user": "u", "feature": "erase"}"#,
    );
    let entries = h.ok_at(&late, at("2026-10-31T15:02:00Z"));
    assert_eq!(paid(&entries[0]), [("pro:2026-10-10", whole(7))]);
    // Once the grace has passed the lot's expiry is written; a later arrival cannot use it.
    h.tick("2026-10-31T15:05:00Z");
    let later = usage(
        "u2",
        "2026-10-31T14:59:30Z",
        r#"{"user": "u", "feature": "erase"}"#,
    );
    let entries = h.ok_at(&later, at("2026-10-31T15:06:00Z"));
    assert!(paid(&entries[0])
        .iter()
        .all(|(lot, _)| *lot != "pro:2026-10-10"));
}

#[test]
fn a_plan_change_mid_cycle_starts_a_fresh_cycle() {
    let mut h = Harness::new();
    h.plan("p1", "2026-10-01T00:00:00Z", r#"{"plan": "pro"}"#);
    h.call(
        "u1",
        "2026-10-05T00:00:00Z",
        r#"{"user": "u", "feature": "erase"}"#,
    );
    let issued = h.plan("p2", "2026-10-15T00:00:00Z", r#"{"plan": "enterprise"}"#);
    assert_eq!(issued[0].credits, whole(500));
    // The old allowance ends at the change; the new cycle runs a month from it [002].
    assert_eq!(
        h.lot("pro:2026-10-01").expires_at,
        Some(at("2026-10-15T00:00:00Z"))
    );
    assert_eq!(
        h.lot("enterprise:2026-10-15").expires_at,
        Some(at("2026-11-15T00:00:00Z"))
    );
    let due = h.tick("2026-10-15T00:10:00Z");
    assert_eq!(due.len(), 1);
    assert_eq!(
        (due[0].entry_type, due[0].credits),
        (EntryType::Expiry, whole(-93))
    );
    assert_eq!(h.available("ai", "2026-10-16T00:00:00Z"), whole(500));
}

#[test]
fn an_anchor_on_the_31st_renews_on_the_last_day_of_shorter_months() {
    let mut h = Harness::new();
    h.ok(
        &event(
            "account.settings",
            "s1",
            "2027-01-01T00:00:00Z",
            r#"{"timezone": "UTC"}"#,
        ),
        "2027-01-01T00:00:00Z",
    );
    h.plan("p1", "2027-01-31T00:00:00Z", r#"{"plan": "pro"}"#);
    let due = h.tick("2027-03-31T01:00:00Z");
    let grants: Vec<&str> = due
        .iter()
        .filter(|e| e.entry_type == EntryType::Grant)
        .map(|e| e.lot.as_str())
        .collect();
    assert_eq!(grants, ["pro:2027-02-28", "pro:2027-03-31"]);
}

#[test]
fn a_yearly_plan_issues_a_years_credits_up_front() {
    let mut h = Harness::new();
    let issued = h.plan("p1", "2026-11-01T00:00:00Z", r#"{"plan": "pro_yearly"}"#);
    assert_eq!(issued[0].credits, whole(1200));
    assert!(h.tick("2027-10-31T00:00:00Z").is_empty());
    assert_eq!(
        h.tick("2027-11-01T00:10:00Z").len(),
        2,
        "expiry and the next year"
    );
}

#[test]
fn plans_are_checked() {
    let mut h = Harness::new();
    let e = h.rejected(
        &event(
            "account.plan",
            "p1",
            "2026-11-01T00:00:00Z",
            r#"{"plan": "platinum"}"#,
        ),
        at("2026-11-01T00:00:00Z"),
    );
    assert!(e.to_string().contains("unknown plan `platinum`"), "{e}");
    let e = h.rejected(
        &event(
            "account.plan",
            "p2",
            "2026-11-01T00:00:00Z",
            r#"{"plan": "pro", "anchor": "2026-11-02T00:00:00Z"}"#,
        ),
        at("2026-11-01T00:00:00Z"),
    );
    assert!(e.to_string().contains("after the command"), "{e}");
    // The free plan issues nothing but still has cycles.
    assert!(h
        .plan("p3", "2026-11-01T00:00:00Z", r#"{"plan": "free"}"#)
        .is_empty());
    assert!(h.book.accounts["acme"].subscription.is_some());
}

fn flex_rules(h: &mut Harness) {
    h.rules.flex_enabled = true;
    h.rules.flex_threshold = whole(10);
}

#[test]
fn flex_pays_once_every_lot_is_empty_up_to_the_threshold_per_cycle() {
    let mut h = Harness::new();
    flex_rules(&mut h);
    h.grant(
        "g1",
        "2026-11-01T00:00:00Z",
        r#"{"kind": "purchased", "credits": 5}"#,
    );
    let e = h.call(
        "u1",
        "2026-11-02T00:00:00Z",
        r#"{"user": "u", "feature": "text_to_image"}"#,
    );
    assert_eq!(paid(&e), [("g1", whole(5)), ("flex", whole(3))]);
    assert_eq!(e.paid[1].kind, LotKind::Flex);
    let e = h.call(
        "u2",
        "2026-11-03T00:00:00Z",
        r#"{"user": "u", "feature": "text_to_image"}"#,
    );
    assert_eq!(paid(&e), [("flex", whole(7))]);
    assert_eq!(e.shortfall, whole(1), "the threshold of 10 is reached");
    // A new calendar month (no plan) is a new flex period.
    let e = h.call(
        "u3",
        "2026-12-01T00:00:00Z",
        r#"{"user": "u", "feature": "erase"}"#,
    );
    assert_eq!(
        (paid(&e), e.shortfall),
        (vec![("flex", whole(7))], Credits::ZERO)
    );
}

#[test]
fn flex_can_be_switched_off_per_account_and_thresholds_set() {
    let mut h = Harness::new();
    flex_rules(&mut h);
    h.ok(
        &event(
            "account.settings",
            "s1",
            "2026-11-01T00:00:00Z",
            r#"{"flex": {"enabled": false}}"#,
        ),
        "2026-11-01T00:00:00Z",
    );
    let e = h.call(
        "u1",
        "2026-11-02T00:00:00Z",
        r#"{"user": "u", "feature": "erase"}"#,
    );
    assert_eq!((e.paid.len(), e.shortfall), (0, whole(7)));
    h.ok(
        &event(
            "account.settings",
            "s2",
            "2026-11-02T00:00:00Z",
            r#"{"flex": {"enabled": true, "threshold": 100}}"#,
        ),
        "2026-11-02T00:00:00Z",
    );
    let e = h.call(
        "u2",
        "2026-11-03T00:00:00Z",
        r#"{"user": "u", "feature": "video_generation", "variant": "long"}"#,
    );
    assert_eq!(paid(&e), [("flex", whole(100))]);
    let e = h.rejected(
        &event(
            "credit.grant",
            "g1",
            "2026-11-03T00:00:00Z",
            r#"{"kind": "flex", "credits": 5}"#,
        ),
        at("2026-11-03T00:00:00Z"),
    );
    assert!(e.to_string().contains("flex"), "{e}");
}

#[test]
fn the_next_grant_settles_outstanding_shortfall_with_an_entry() {
    let mut h = Harness::new();
    h.rules.settle_shortfall = true;
    let e = h.call(
        "u1",
        "2026-11-02T00:00:00Z",
        r#"{"user": "u", "feature": "text_to_image"}"#,
    );
    assert_eq!(e.shortfall, whole(8));
    assert_eq!(h.book.accounts["acme"].shortfall["ai"], whole(8));
    let entries = h.ok(
        &event(
            "credit.grant",
            "g1",
            "2026-11-03T00:00:00Z",
            r#"{"kind": "purchased", "credits": 5}"#,
        ),
        "2026-11-03T00:00:00Z",
    );
    assert_eq!(entries.len(), 2);
    assert_eq!(
        (entries[1].entry_type, entries[1].credits),
        (EntryType::Settlement, whole(5))
    );
    assert_eq!(h.lot("g1").remaining, Credits::ZERO);
    assert_eq!(h.book.accounts["acme"].shortfall["ai"], whole(3));
    let entries = h.ok(
        &event(
            "credit.grant",
            "g2",
            "2026-11-04T00:00:00Z",
            r#"{"kind": "purchased", "credits": 10}"#,
        ),
        "2026-11-04T00:00:00Z",
    );
    assert_eq!(entries[1].credits, whole(3));
    assert_eq!(h.lot("g2").remaining, whole(7));
    assert!(h.book.accounts["acme"].shortfall.is_empty());
    // Switched off per account: grants leave shortfall alone.
    h.ok(
        &event(
            "account.settings",
            "s1",
            "2026-11-05T00:00:00Z",
            r#"{"settle_shortfall": false}"#,
        ),
        "2026-11-05T00:00:00Z",
    );
    h.call(
        "u2",
        "2026-11-05T00:00:00Z",
        r#"{"user": "u", "feature": "video_generation", "variant": "short"}"#,
    );
    let entries = h.ok(
        &event(
            "credit.grant",
            "g3",
            "2026-11-06T00:00:00Z",
            r#"{"kind": "purchased", "credits": 10}"#,
        ),
        "2026-11-06T00:00:00Z",
    );
    assert_eq!(entries.len(), 1);
}

#[test]
fn an_expired_lot_cannot_be_voided_and_a_voided_lot_does_not_expire() {
    let mut h = Harness::new();
    h.grant(
        "g1",
        "2026-11-01T00:00:00Z",
        r#"{"kind": "promotional", "credits": 5, "expires_at": "2026-11-02T00:00:00Z"}"#,
    );
    h.grant(
        "g2",
        "2026-11-01T00:00:00Z",
        r#"{"kind": "promotional", "credits": 5, "expires_at": "2026-11-02T00:00:00Z"}"#,
    );
    h.ok(
        &event(
            "credit.void",
            "v1",
            "2026-11-01T01:00:00Z",
            r#"{"lot": "g2"}"#,
        ),
        "2026-11-01T01:00:00Z",
    );
    let due = h.tick("2026-11-03T00:00:00Z");
    assert_eq!(due.len(), 1, "only the live lot expires: {due:?}");
    assert_eq!(due[0].lot, "g1");
    let e = h.rejected(
        &event(
            "credit.void",
            "v2",
            "2026-11-03T00:00:00Z",
            r#"{"lot": "g1"}"#,
        ),
        at("2026-11-03T00:00:00Z"),
    );
    assert!(e.to_string().contains("expired"), "{e}");
}

// ---- Low-credit alerts [000][002][003][004] ----

fn alerting(rules: AlertRules) -> Harness {
    let mut h = Harness::new();
    h.rules.alerts = rules;
    h.ok(
        &event(
            "account.settings",
            "s-admins",
            "2026-11-01T00:00:00Z",
            r#"{"admins": ["ops@acme.kr"], "locale": "ko"}"#,
        ),
        "2026-11-01T00:00:00Z",
    );
    h
}

fn fired(h: &Harness) -> Vec<(AlertKind, Credits, Credits)> {
    h.alerts
        .iter()
        .map(|a| (a.kind, a.threshold, a.balance))
        .collect()
}

#[test]
fn a_low_balance_alert_fires_once_per_crossing_and_cycle() {
    let mut h = alerting(AlertRules {
        enabled: true,
        low_balance: whole(20),
        ..AlertRules::default()
    });
    // A pool that starts below the limit has not crossed it.
    h.grant(
        "scan",
        "2026-11-01T00:00:00Z",
        r#"{"kind": "purchased", "pool": "scan", "credits": 5}"#,
    );
    assert!(h.alerts.is_empty(), "{:?}", h.alerts);
    h.grant(
        "g1",
        "2026-11-01T00:00:00Z",
        r#"{"kind": "purchased", "credits": 30}"#,
    );
    let erase = r#"{"user": "u", "feature": "erase"}"#;
    h.call("u1", "2026-11-02T00:00:00Z", erase);
    assert!(h.alerts.is_empty(), "23 left is above 20");
    h.call("u2", "2026-11-02T01:00:00Z", erase);
    assert_eq!(fired(&h), [(AlertKind::LowBalance, whole(20), whole(16))]);
    let alert = &h.alerts[0];
    assert_eq!(
        (alert.locale.as_str(), alert.recipients.clone()),
        ("ko", vec!["ops@acme.kr".to_string()])
    );
    h.call("u3", "2026-11-02T02:00:00Z", erase);
    assert_eq!(h.alerts.len(), 1, "still below: no second alert");
    // A grant lifts it above (re-armed), but it already fired this cycle.
    h.grant(
        "g2",
        "2026-11-03T00:00:00Z",
        r#"{"kind": "purchased", "credits": 50}"#,
    );
    h.call(
        "u4",
        "2026-11-03T01:00:00Z",
        r#"{"user": "u", "feature": "video_generation", "variant": "mid"}"#,
    );
    assert_eq!(h.alerts.len(), 1, "at most once per cycle");
    // Next month (the calendar cycle without a plan): re-armed by a grant, it fires again.
    h.grant(
        "g3",
        "2026-12-01T00:00:00Z",
        r#"{"kind": "purchased", "credits": 15}"#,
    );
    h.call("u5", "2026-12-01T01:00:00Z", erase);
    assert_eq!(h.alerts.len(), 2);
    assert_ne!(h.alerts[0].id, h.alerts[1].id);
}

#[test]
fn alerts_cross_after_quiet_calls_by_debits_and_by_time_alone() {
    // Calls that move no threshold skip most of the alert check: these crossings each
    // follow such calls, one by the debit of a call, one by time alone.
    let mut h = alerting(AlertRules {
        enabled: true,
        low_balance: whole(20),
        expiring_min: whole(10),
        ..AlertRules::default()
    });
    h.grant(
        "g1",
        "2026-11-01T00:00:00Z",
        r#"{"kind": "purchased", "credits": 56, "expires_at": "2026-11-30T00:00:00Z"}"#,
    );
    let erase = r#"{"user": "u", "feature": "erase"}"#;
    for (id, time) in [
        ("u1", "2026-11-02T00:00:00Z"),
        ("u2", "2026-11-02T01:00:00Z"),
        ("u3", "2026-11-02T02:00:00Z"),
        ("u4", "2026-11-15T23:59:59Z"),
    ] {
        h.call(id, time, erase);
    }
    assert!(
        h.alerts.is_empty(),
        "28 left, expiring in more than 14 days"
    );
    // 14 days before its end the lot's 21 left count as expiring (more than 10).
    h.call("u5", "2026-11-16T00:00:00Z", erase);
    assert_eq!(fired(&h), [(AlertKind::Expiring, whole(10), whole(21))]);
    // 14 left: below 20.
    h.call("u6", "2026-11-16T01:00:00Z", erase);
    // 7 left: below 10 expiring, re-armed without an alert.
    h.call("u7", "2026-11-16T02:00:00Z", erase);
    assert_eq!(
        fired(&h),
        [
            (AlertKind::Expiring, whole(10), whole(21)),
            (AlertKind::LowBalance, whole(20), whole(14)),
        ]
    );
    let expiring = &h.book.accounts["acme"].alert_marks["ai/expiring"];
    assert!(!expiring.tripped, "re-armed: {expiring:?}");
}

#[test]
fn quiet_calls_through_a_cycle_miss_no_check_a_full_evaluation_would_make() {
    // Calls that move no threshold skip the full check until the first instant time alone
    // could move one. After every call of a cycle, with a plan's allowance in its last 14
    // days (a window no check looks at) and a grant that comes within 14 days of its end
    // (one the expiring check does look at), a full evaluation of a copy of the account
    // must find nothing the calls' own checks did not already.
    let mut h = alerting(AlertRules {
        enabled: true,
        low_balance: whole(20),
        expiring_min: whole(10),
        included_used_percent: 80,
        ..AlertRules::default()
    });
    h.plan("p1", "2026-11-01T00:00:00Z", r#"{"plan": "pro"}"#);
    h.grant(
        "g1",
        "2026-11-01T00:00:00Z",
        r#"{"kind": "promotional", "credits": 150, "expires_at": "2026-12-10T00:00:00Z"}"#,
    );
    // The allowance (100, ending with the cycle on Dec 1) pays first: 9 calls of 7.
    for day in [2, 10, 15, 17, 18, 20, 24, 27, 30] {
        let time = format!("2026-11-{day:02}T12:00:00Z");
        h.call(
            &format!("u{day}"),
            &time,
            r#"{"user": "u", "feature": "erase"}"#,
        );
        let state = &h.book.accounts["acme"];
        let mut full = state.clone();
        let missed = tally_core::alerting::evaluate(&mut full, &h.rules, "acme", at(&time));
        assert!(missed.is_empty(), "{time}: {missed:?}");
        assert_eq!(full.alert_marks, state.alert_marks, "{time}");
    }
    // The grant's 150 count as expiring from Nov 26, found by the call of Nov 27; the
    // allowance's last 14 days (its 58 to 37 left) count for no check.
    assert_eq!(fired(&h), [(AlertKind::Expiring, whole(10), whole(150))]);
}

#[test]
fn included_use_and_shortfall_alerts() {
    let mut h = alerting(AlertRules {
        enabled: true,
        included_used_percent: 80,
        shortfall: true,
        ..AlertRules::default()
    });
    h.plan("p1", "2026-11-01T00:00:00Z", r#"{"plan": "pro"}"#);
    let video = r#"{"user": "u", "feature": "video_generation", "variant": "mid"}"#;
    h.call("u1", "2026-11-02T00:00:00Z", video);
    assert!(h.alerts.is_empty(), "50 of 100 used");
    h.call(
        "u2",
        "2026-11-02T01:00:00Z",
        r#"{"user": "u", "feature": "audio_generation", "variant": "mid"}"#,
    );
    assert_eq!(fired(&h), [(AlertKind::IncludedUsed, whole(80), whole(20))]);
    h.call(
        "u3",
        "2026-11-02T02:00:00Z",
        r#"{"user": "u", "feature": "audio_generation", "variant": "mid"}"#,
    );
    assert_eq!(
        fired(&h)[1],
        (AlertKind::Shortfall, Credits::ZERO, Credits::ZERO),
        "flex is off in these rules, so 10 go unpaid"
    );
    // The next cycle's allowance re-arms both; nothing fires until they are crossed again.
    h.tick("2026-12-01T01:00:00Z");
    assert_eq!(h.alerts.len(), 2);
}

#[test]
fn alerts_are_decided_the_same_way_on_a_replay() {
    let run = || {
        let mut h = alerting(AlertRules {
            enabled: true,
            low_balance: whole(10),
            ..AlertRules::default()
        });
        h.grant(
            "g1",
            "2026-11-01T00:00:00Z",
            r#"{"kind": "purchased", "credits": 12}"#,
        );
        h.call(
            "u1",
            "2026-11-02T00:00:00Z",
            r#"{"user": "u", "feature": "erase"}"#,
        );
        h.alerts
    };
    let (first, second) = (run(), run());
    assert_eq!(first.len(), 1);
    assert_eq!(first, second, "same alert, same id");
}

#[test]
fn accounts_without_admins_or_with_alerts_off_get_none() {
    let mut h = Harness::new();
    h.rules.alerts = AlertRules {
        enabled: true,
        shortfall: true,
        ..AlertRules::default()
    };
    h.call(
        "u1",
        "2026-11-02T00:00:00Z",
        r#"{"user": "u", "feature": "erase"}"#,
    );
    assert!(h.alerts.is_empty(), "no admins to tell");
    let mut h = alerting(h.rules.alerts.clone());
    h.ok(
        &event(
            "account.settings",
            "s2",
            "2026-11-01T00:00:00Z",
            r#"{"alerts": {"enabled": false}}"#,
        ),
        "2026-11-01T00:00:00Z",
    );
    h.call(
        "u1",
        "2026-11-02T00:00:00Z",
        r#"{"user": "u", "feature": "erase"}"#,
    );
    assert!(h.alerts.is_empty(), "switched off by the account");
}

#[test]
fn an_expiring_alert_counts_bought_and_free_grants_not_the_cycle_allowance() {
    let mut h = alerting(AlertRules {
        enabled: true,
        expiring_min: whole(100),
        ..AlertRules::default()
    });
    // The allowance ends within 14 days, as every month's does: no alert.
    h.plan(
        "p1",
        "2026-11-20T00:00:00Z",
        r#"{"plan": "standard", "anchor": "2026-10-31T15:00:00Z"}"#,
    );
    assert!(h.alerts.is_empty(), "{:?}", h.alerts);
    h.grant(
        "promo",
        "2026-11-21T00:00:00Z",
        r#"{"kind": "promotional", "credits": 150, "valid_days": 10}"#,
    );
    assert_eq!(fired(&h), [(AlertKind::Expiring, whole(100), whole(150))]);
}

// ---------------------------------------------------------------- exact sums

/// Amounts that could only be held by wrapping an i64 are refused with a reason, never
/// wrapped or rounded: a call above the most a call may cost, a shortfall that would
/// overflow, a pool whose lots would sum past the range.
#[test]
fn sums_that_would_overflow_are_rejected_not_wrapped() {
    let mut h = Harness::new();
    // 0.002 a character: 5e14 characters cost exactly a trillion, 6e14 more than that.
    let call = |q: &str| format!(r#"{{"user":"kim","feature":"translation","quantity":{q}}}"#);
    let too_big = h.rejected(&usage("huge", T0, &call("6e14")), at(T0));
    assert_eq!(too_big.code(), "out_of_range", "{too_big}");
    let mut rejection = None;
    for i in 0..10_000 {
        match h.send(&usage(&format!("c{i}"), T0, &call("5e14")), at(T0)) {
            Outcome::Applied { .. } => {}
            Outcome::Rejected(r) => {
                rejection = Some((i, r));
                break;
            }
            other => panic!("{other:?}"),
        }
    }
    let (i, r) = rejection.expect("the shortfall cannot grow without bound");
    assert!(i > 9000, "rejected only at the edge of the range, at {i}");
    assert_eq!(r.code(), "out_of_range", "{r}");
    assert!(r.to_string().contains("shortfall"), "{r}");

    let mut h = Harness::new();
    let mut rejection = None;
    for i in 0..10_000 {
        let grant = event(
            "credit.grant",
            &format!("g{i}"),
            T0,
            r#"{"kind":"purchased","credits":1e12,"pool":"scan"}"#,
        );
        match h.send(&grant, at(T0)) {
            Outcome::Applied { .. } => {}
            Outcome::Rejected(r) => {
                rejection = Some((i, r));
                break;
            }
            other => panic!("{other:?}"),
        }
    }
    let (i, r) = rejection.expect("a pool cannot grow without bound");
    assert_eq!(i, 9223, "{r}");
    assert_eq!(r.code(), "out_of_range", "{r}");
}

// ---------------------------------------------------------------- holds

fn hold_event(id: &str, time: &str, data: &str) -> String {
    event("credit.hold", id, time, data)
}

impl Harness {
    /// Sends a `credit.hold` arriving at its event time and returns the answer.
    fn hold(&mut self, id: &str, time: &str, data: &str) -> Answer {
        let entries = self.ok(&hold_event(id, time, data), time);
        assert!(entries.is_empty(), "a hold writes no ledger entry");
        self.answer.take().expect("a hold is answered")
    }

    fn held(&mut self, id: &str, time: &str, data: &str) -> Hold {
        match self.hold(id, time, data) {
            Answer::Held {
                hold,
                repeated: false,
            } => hold,
            other => panic!("expected a new hold, got {other:?}"),
        }
    }

    fn refused(&mut self, id: &str, time: &str, data: &str) -> Check {
        match self.hold(id, time, data) {
            Answer::Refused { check, .. } => check,
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    fn release(&mut self, id: &str, time: &str, hold: &str) -> Answer {
        let payload = event(
            "credit.release",
            id,
            time,
            &format!(r#"{{"hold": "{hold}"}}"#),
        );
        let entries = self.ok(&payload, time);
        assert!(entries.is_empty(), "a release writes no ledger entry");
        self.answer.take().expect("a release is answered")
    }

    fn state(&self) -> &AccountState {
        &self.book.accounts["acme"]
    }

    /// (held, remaining) of a lot.
    fn lot_held(&self, id: &str) -> (Credits, Credits) {
        let lot = self.lot(id);
        (lot.held, lot.remaining)
    }

    fn held_in(&self, pool: &str, time: &str) -> Credits {
        balance(self.lots(), at(time))
            .get(pool)
            .map(|b| b.held)
            .unwrap_or_default()
    }
}

fn reserved(hold: &Hold) -> Vec<(&str, Credits)> {
    hold.reserved
        .iter()
        .map(|p| (p.lot.as_str(), p.credits))
        .collect()
}

const SOON: &str =
    r#"{"lot": "soon", "kind": "purchased", "credits": 10, "expires_at": "2026-11-20T00:00:00Z"}"#;
const LATER: &str = r#"{"lot": "later", "kind": "purchased", "credits": 100}"#;

#[test]
fn a_hold_reserves_in_debit_order_and_the_balance_shows_it_apart() {
    let mut h = Harness::new();
    h.grant("g1", T0, LATER);
    h.grant("g2", T0, SOON);
    let t = "2026-11-02T00:00:00Z";
    let hold = h.held(
        "evt-h1",
        t,
        r#"{"hold": "h1", "feature": "video_generation", "variant": "mid", "ttl": 300}"#,
    );
    // 50 credits: the lot that expires soonest first (10), then the other (40).
    assert_eq!(reserved(&hold), [("soon", whole(10)), ("later", whole(40))]);
    assert_eq!(
        (
            hold.id.as_str(),
            hold.credits,
            hold.status,
            hold.pool.as_str()
        ),
        ("h1", whole(50), HoldStatus::Open, "ai")
    );
    assert_eq!(hold.expires_at, at("2026-11-02T00:05:00Z"), "arrival + ttl");
    // Nothing moved: the credits stay in their lots, marked held.
    assert_eq!(h.lot_held("soon"), (whole(10), whole(10)));
    assert_eq!(h.lot_held("later"), (whole(40), whole(100)));
    assert_eq!(h.available("ai", t), whole(60));
    assert_eq!(h.held_in("ai", t), whole(50));
    // The hold id defaults to the event id.
    let hold = h.held("evt-h2", t, r#"{"feature": "erase", "ttl": 60}"#);
    assert_eq!(
        (hold.id.as_str(), reserved(&hold)),
        ("evt-h2", vec![("later", whole(7))])
    );
    // A free feature is always held, with nothing reserved.
    let hold = h.held("evt-h3", t, r#"{"feature": "upscale", "ttl": 60}"#);
    assert!(hold.reserved.is_empty());
    assert_eq!(hold.credits, Credits::ZERO);
}

#[test]
fn held_credits_are_not_available_to_other_calls_or_holds() {
    let mut h = Harness::new();
    h.grant(
        "g1",
        T0,
        r#"{"lot": "a", "kind": "purchased", "credits": 20}"#,
    );
    let t = "2026-11-02T00:00:00Z";
    h.held(
        "evt-h1",
        t,
        r#"{"hold": "h1", "feature": "text_to_image", "quantity": 2, "ttl": 600}"#,
    );
    // 16 of 20 held: a call without a hold gets the free 4 and the rest is shortfall.
    let e = h.call("u1", t, r#"{"user": "u", "feature": "erase"}"#);
    assert_eq!((paid(&e), e.shortfall), (vec![("a", whole(4))], whole(3)));
    assert_eq!(h.lot_held("a"), (whole(16), whole(16)));
    // And another hold finds nothing available.
    let check = h.refused(
        "evt-h2",
        t,
        r#"{"hold": "h2", "feature": "erase", "ttl": 600}"#,
    );
    assert_eq!(
        (
            check.allowed,
            check.cost,
            check.available,
            check.flex,
            check.held
        ),
        (false, whole(7), Credits::ZERO, Credits::ZERO, whole(16))
    );
    assert!(
        !h.state().holds.contains_key("h2"),
        "a refusal keeps nothing"
    );
}

#[test]
fn n_holds_on_credits_for_m_grant_exactly_m_and_refuse_the_rest_with_what_is_available() {
    let mut h = Harness::new();
    h.grant(
        "g1",
        T0,
        r#"{"lot": "a", "kind": "purchased", "credits": 50}"#,
    );
    let t = "2026-11-02T00:00:00Z";
    // 10 holds of 7 on 50 credits: 7 fit (49).
    let mut granted = 0;
    let mut refusals = Vec::new();
    for i in 0..10 {
        let data = format!(r#"{{"hold": "h{i}", "feature": "erase", "ttl": 600}}"#);
        match h.hold(&format!("evt-{i}"), t, &data) {
            Answer::Held { .. } => granted += 1,
            Answer::Refused { hold, check } => refusals.push((hold, check.available, check.held)),
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(granted, 7);
    assert_eq!(
        refusals,
        [
            ("h7".to_string(), whole(1), whole(49)),
            ("h8".to_string(), whole(1), whole(49)),
            ("h9".to_string(), whole(1), whole(49)),
        ]
    );
    assert_eq!(h.lot_held("a"), (whole(49), whole(50)));

    // With flex, the room counts in (after the lots) and is reserved too, never beyond it.
    let mut h = Harness::new();
    flex_rules(&mut h); // threshold 10
    h.grant(
        "g1",
        T0,
        r#"{"lot": "a", "kind": "purchased", "credits": 50}"#,
    );
    let answers: Vec<Answer> = (0..10)
        .map(|i| {
            let data = format!(r#"{{"hold": "h{i}", "feature": "erase", "ttl": 600}}"#);
            h.hold(&format!("evt-{i}"), t, &data)
        })
        .collect();
    // 60 credits (50 + 10 flex): 8 holds of 7 = 56.
    let granted: Vec<&Hold> = answers
        .iter()
        .filter_map(|a| match a {
            Answer::Held { hold, .. } => Some(hold),
            _ => None,
        })
        .collect();
    assert_eq!(granted.len(), 8);
    assert_eq!(reserved(granted[7]), [("a", whole(1)), ("flex", whole(6))]);
    assert_eq!(granted[7].reserved[1].kind, LotKind::Flex);
    let Answer::Refused { check, .. } = &answers[8] else {
        panic!("{:?}", answers[8])
    };
    assert_eq!(
        (check.available, check.flex, check.held),
        (whole(4), whole(4), whole(56))
    );
    assert_eq!(h.state().flex_held(), whole(6));
    // A call without a hold can use only the flex the holds left: 4, then shortfall.
    let e = h.call("u1", t, r#"{"user": "u", "feature": "erase"}"#);
    assert_eq!(
        (paid(&e), e.shortfall),
        (vec![("flex", whole(4))], whole(3))
    );
}

#[test]
fn a_call_that_costs_less_than_held_pays_from_the_held_lots_and_releases_the_rest() {
    let mut h = Harness::new();
    h.grant("g1", T0, LATER);
    h.grant("g2", T0, SOON);
    let t = "2026-11-02T00:00:00Z";
    h.held(
        "evt-h1",
        t,
        r#"{"hold": "h1", "feature": "video_generation", "variant": "mid", "ttl": 300}"#,
    );
    let e = h.call(
        "u1",
        "2026-11-02T00:01:00Z",
        r#"{"user": "u", "feature": "image_generation", "variant": "short", "hold": "h1"}"#,
    );
    assert_eq!((paid(&e), e.credits), (vec![("soon", whole(5))], whole(5)));
    assert_eq!(
        e.hold,
        Some(HoldUse {
            id: "h1".into(),
            outcome: SettleOutcome::Settled,
            held: whole(50)
        })
    );
    assert_eq!(h.lot_held("soon"), (Credits::ZERO, whole(5)));
    assert_eq!(h.lot_held("later"), (Credits::ZERO, whole(100)));
    assert_eq!(h.available("ai", t), whole(105));
    assert_eq!(h.held_in("ai", t), Credits::ZERO);
    let hold = &h.state().holds["h1"];
    assert_eq!(
        (hold.status, hold.closed_at),
        (HoldStatus::Settled, Some(at("2026-11-02T00:01:00Z")))
    );
}

#[test]
fn a_call_that_costs_more_pays_held_lots_then_the_debit_order_then_shortfall() {
    let mut h = Harness::new();
    h.grant("g1", T0, SOON);
    h.grant(
        "g2",
        T0,
        r#"{"lot": "later", "kind": "purchased", "credits": 20}"#,
    );
    let t = "2026-11-02T00:00:00Z";
    let h1 = h.held("e1", t, r#"{"hold": "h1", "feature": "erase", "ttl": 600}"#);
    assert_eq!(reserved(&h1), [("soon", whole(7))]);
    let h2 = h.held(
        "e2",
        t,
        r#"{"hold": "h2", "feature": "text_to_image", "ttl": 600}"#,
    );
    assert_eq!(reserved(&h2), [("soon", whole(3)), ("later", whole(5))]);
    // h1's call costs 25: its 7 from `soon`; then the debit order over what no other hold
    // reserved: `soon` has nothing free (3 held by h2), `later` 15 of 20; 3 unpaid.
    let e = h.call(
        "u1",
        t,
        r#"{"user": "u", "feature": "video_generation", "variant": "short", "hold": "h1"}"#,
    );
    assert_eq!(
        (paid(&e), e.shortfall),
        (vec![("soon", whole(7)), ("later", whole(15))], whole(3))
    );
    // h2 still holds its 8.
    assert_eq!(h.lot_held("soon"), (whole(3), whole(3)));
    assert_eq!(h.lot_held("later"), (whole(5), whole(5)));
    assert_eq!(h.state().shortfall["ai"], whole(3));
}

#[test]
fn a_held_lot_that_also_pays_beyond_its_reservation_shows_once() {
    let mut h = Harness::new();
    h.grant("g1", T0, SOON);
    h.grant("g2", T0, LATER);
    let t = "2026-11-02T00:00:00Z";
    h.held("e1", t, r#"{"hold": "h1", "feature": "erase", "ttl": 600}"#);
    // 8 > 7 held on `soon`: the 8th credit comes from `soon` too (first in the order).
    let e = h.call(
        "u1",
        t,
        r#"{"user": "u", "feature": "text_to_image", "hold": "h1"}"#,
    );
    assert_eq!(paid(&e), [("soon", whole(8))]);
    assert_eq!(h.lot_held("soon"), (Credits::ZERO, whole(2)));
}

#[test]
fn a_failed_call_naming_a_hold_pays_nothing_and_releases_it() {
    let mut h = Harness::new();
    h.grant("g1", T0, LATER);
    let t = "2026-11-02T00:00:00Z";
    h.held("e1", t, r#"{"hold": "h1", "feature": "erase", "ttl": 600}"#);
    let e = h.call(
        "u1",
        t,
        r#"{"user": "u", "feature": "erase", "status": "failed", "hold": "h1"}"#,
    );
    assert_eq!((e.credits, e.paid.len()), (Credits::ZERO, 0));
    assert_eq!(
        e.hold.as_ref().map(|n| n.outcome),
        Some(SettleOutcome::Settled)
    );
    assert_eq!(h.lot_held("later"), (Credits::ZERO, whole(100)));
    assert_eq!(h.state().holds["h1"].status, HoldStatus::Settled);
}

#[test]
fn a_release_gives_the_credits_back_and_is_idempotent() {
    let mut h = Harness::new();
    h.grant("g1", T0, LATER);
    let t = "2026-11-02T00:00:00Z";
    h.held("e1", t, r#"{"hold": "h1", "feature": "erase", "ttl": 600}"#);
    assert_eq!(h.lot_held("later"), (whole(7), whole(100)));
    let Answer::Released { hold, was_open } = h.release("r1", "2026-11-02T00:01:00Z", "h1") else {
        panic!("not a release")
    };
    assert!(was_open);
    assert_eq!(hold.status, HoldStatus::Released);
    assert_eq!(h.lot_held("later"), (Credits::ZERO, whole(100)));
    // Again: nothing changes, the same hold is answered.
    let Answer::Released { hold, was_open } = h.release("r2", "2026-11-02T00:02:00Z", "h1") else {
        panic!("not a release")
    };
    assert!(!was_open);
    assert_eq!(hold.closed_at, Some(at("2026-11-02T00:01:00Z")));
    // An unknown hold cannot be released.
    let payload = event("credit.release", "r3", t, r#"{"hold": "nope"}"#);
    assert_eq!(h.rejected(&payload, at(t)).code(), "bad_command");
    // A call naming the released hold is billed as any call, and says so.
    let e = h.call(
        "u1",
        "2026-11-02T00:03:00Z",
        r#"{"user": "u", "feature": "erase", "hold": "h1"}"#,
    );
    assert_eq!(paid(&e), [("later", whole(7))]);
    assert_eq!(
        e.hold,
        Some(HoldUse {
            id: "h1".into(),
            outcome: SettleOutcome::Released,
            held: Credits::ZERO
        })
    );
}

#[test]
fn an_unsettled_hold_expires_by_the_clock_with_a_ledger_entry() {
    let mut h = Harness::new();
    h.grant("g1", T0, SOON);
    h.grant("g2", T0, LATER);
    h.held(
        "e1",
        "2026-11-02T00:00:00Z",
        r#"{"hold": "h1", "feature": "text_to_image", "quantity": 2, "ttl": 300}"#,
    );
    assert!(h.tick("2026-11-02T00:04:59Z").is_empty());
    assert_eq!(h.lot_held("soon"), (whole(10), whole(10)));
    let due = h.tick("2026-11-02T00:05:00Z");
    assert_eq!(due.len(), 1);
    let e = &due[0];
    assert_eq!(e.entry_type, EntryType::HoldExpired);
    assert_eq!(
        e.id.as_deref(),
        Some(
            format!(
                "hold-expiry/h1/{}",
                at("2026-11-02T00:05:00Z").timestamp_millis()
            )
            .as_str()
        )
    );
    assert_eq!(
        (e.time, e.credits, e.shortfall),
        (at("2026-11-02T00:05:00Z"), Credits::ZERO, Credits::ZERO)
    );
    // It names the reservations it gave back, and the hold's call.
    assert_eq!(paid(e), [("soon", whole(10)), ("later", whole(6))]);
    assert_eq!(
        (
            e.feature.as_str(),
            e.quantity,
            e.event_id.as_str(),
            e.service.as_str()
        ),
        ("text_to_image", whole(2), "e1", "production-room")
    );
    assert_eq!(h.lot_held("soon"), (Credits::ZERO, whole(10)));
    assert_eq!(h.lot_held("later"), (Credits::ZERO, whole(100)));
    // Written once, however often the clock is told.
    assert!(h.tick("2026-11-02T00:06:00Z").is_empty());
    // A call naming it afterwards is billed as any call.
    let e = h.call(
        "u1",
        "2026-11-02T00:07:00Z",
        r#"{"user": "u", "feature": "erase", "hold": "h1"}"#,
    );
    assert_eq!(paid(&e), [("soon", whole(7))]);
    assert_eq!(e.hold.map(|n| n.outcome), Some(SettleOutcome::Expired));
}

#[test]
fn the_same_hold_id_again_answers_the_same_hold_without_reserving_twice() {
    let mut h = Harness::new();
    h.grant("g1", T0, LATER);
    let t = "2026-11-02T00:00:00Z";
    let data = r#"{"hold": "h1", "feature": "erase", "ttl": 600}"#;
    let first = h.held("e1", t, data);
    // A retry under another event id (a new request for the same hold).
    let again = h.hold("e2", "2026-11-02T00:00:30Z", data);
    assert_eq!(
        again,
        Answer::Held {
            hold: first.clone(),
            repeated: true
        }
    );
    assert_eq!(h.lot_held("later"), (whole(7), whole(100)));
    // The same id for another call is a mistake, not a retry.
    let other = hold_event(
        "e3",
        t,
        r#"{"hold": "h1", "feature": "erase", "quantity": 2, "ttl": 600}"#,
    );
    let rejection = h.rejected(&other, at(t));
    assert_eq!(rejection.code(), "bad_command");
    assert!(rejection.to_string().contains("other terms"), "{rejection}");
    // The same event again is a duplicate: no answer from the core (the first copy answered).
    assert!(matches!(
        h.send(&hold_event("e1", t, data), at(t)),
        Outcome::Duplicate { .. }
    ));
    assert_eq!(h.answer, None);
    // Settled, a retry answers the settled hold.
    h.call(
        "u1",
        t,
        r#"{"user": "u", "feature": "erase", "hold": "h1"}"#,
    );
    let Answer::Held { hold, repeated } = h.hold("e4", "2026-11-02T00:01:00Z", data) else {
        panic!("not held")
    };
    assert!(repeated);
    assert_eq!(hold.status, HoldStatus::Settled);
    assert_eq!(h.lot_held("later"), (Credits::ZERO, whole(93)));
    // A second call naming it is billed as any call, and says the hold was settled before.
    let e = h.call(
        "u2",
        t,
        r#"{"user": "u", "feature": "erase", "hold": "h1"}"#,
    );
    assert_eq!(paid(&e), [("later", whole(7))]);
    assert_eq!(
        e.hold.map(|n| n.outcome),
        Some(SettleOutcome::AlreadySettled)
    );
    // The dedup window (24 h) after it closed, the hold is forgotten and its id free again.
    h.tick("2026-11-02T23:59:59Z");
    assert!(h.state().holds.contains_key("h1"));
    h.tick("2026-11-03T00:00:00Z");
    assert!(!h.state().holds.contains_key("h1"));
    h.held("e5", "2026-11-03T00:00:00Z", data);
}

#[test]
fn a_call_naming_an_unknown_hold_is_billed_normally_and_says_so() {
    let mut h = Harness::new();
    h.grant("g1", T0, LATER);
    let e = h.call(
        "u1",
        "2026-11-02T00:00:00Z",
        r#"{"user": "u", "feature": "erase", "hold": "never-placed"}"#,
    );
    assert_eq!(paid(&e), [("later", whole(7))]);
    assert_eq!(
        e.hold,
        Some(HoldUse {
            id: "never-placed".into(),
            outcome: SettleOutcome::Unknown,
            held: Credits::ZERO
        })
    );
}

#[test]
fn a_call_naming_a_hold_of_another_account_is_rejected() {
    let mut h = Harness::new();
    h.grant("g1", T0, LATER);
    let t = "2026-11-02T00:00:00Z";
    h.held("e1", t, r#"{"hold": "h1", "feature": "erase", "ttl": 600}"#);
    let foreign = usage(
        "u1",
        t,
        r#"{"user": "u", "feature": "erase", "hold": {"id": "h1", "account": "globex"}}"#,
    );
    let rejection = h.rejected(&foreign, at(t));
    assert_eq!(rejection.code(), "foreign_hold");
    assert_eq!(
        rejection.to_string(),
        "hold `h1` belongs to account `globex`, not to `acme`"
    );
    assert_eq!(h.state().holds["h1"].status, HoldStatus::Open);
    // The same form naming its own account settles.
    let e = h.call(
        "u2",
        t,
        r#"{"user": "u", "feature": "erase", "hold": {"id": "h1", "account": "acme"}}"#,
    );
    assert_eq!(e.hold.map(|n| n.outcome), Some(SettleOutcome::Settled));
    // Anything else in `hold` is bad data, never an unheld call.
    for bad in [r#""""#, "7", r#"{"id": "h1"}"#] {
        let payload = usage(
            "u3",
            t,
            &format!(r#"{{"user": "u", "feature": "erase", "hold": {bad}}}"#),
        );
        assert_eq!(h.rejected(&payload, at(t)).code(), "bad_data", "{bad}");
    }
}

#[test]
fn reserved_credits_pay_within_the_expiry_grace_and_expire_with_their_lot_after() {
    let data = r#"{"hold": "h1", "feature": "erase", "ttl": 3600}"#;
    let lot_a =
        r#"{"lot": "a", "kind": "purchased", "credits": 10, "expires_at": "2026-11-02T00:00:00Z"}"#;
    let call = r#"{"user": "u", "feature": "erase", "hold": "h1"}"#;
    // Held at 23:58, the call made at 00:01 arrives within the 5-minute grace: `a` pays,
    // though a call at 00:01 without a hold could not use it.
    let mut h = Harness::new();
    h.grant("g1", T0, lot_a);
    h.grant("g2", T0, LATER);
    let hold = h.held("e1", "2026-11-01T23:58:00Z", data);
    assert_eq!(reserved(&hold), [("a", whole(7))]);
    let e = h.call("u1", "2026-11-02T00:01:00Z", call);
    assert_eq!(paid(&e), [("a", whole(7))]);
    // After the grace the lot's expiry is written with everything left, held credits
    // included; the hold loses that reservation and its call pays in the debit order.
    let mut h = Harness::new();
    h.grant("g1", T0, lot_a);
    h.grant("g2", T0, LATER);
    h.held("e1", "2026-11-01T23:58:00Z", data);
    let due = h.tick("2026-11-02T00:05:00Z");
    assert_eq!(
        due.iter()
            .map(|e| (e.entry_type, e.credits))
            .collect::<Vec<_>>(),
        [(EntryType::Expiry, whole(-10))]
    );
    assert!(h.state().holds["h1"].reserved.is_empty());
    assert_eq!(h.lot_held("a"), (Credits::ZERO, Credits::ZERO));
    let e = h.call("u1", "2026-11-02T00:06:00Z", call);
    assert_eq!(paid(&e), [("later", whole(7))]);
    assert_eq!(
        e.hold.map(|n| (n.outcome, n.held)),
        Some((SettleOutcome::Settled, Credits::ZERO))
    );
}

#[test]
fn a_void_takes_reserved_credits_with_the_lot() {
    let mut h = Harness::new();
    h.grant("g1", T0, SOON);
    h.grant("g2", T0, LATER);
    let t = "2026-11-02T00:00:00Z";
    h.held(
        "e1",
        t,
        r#"{"hold": "h1", "feature": "text_to_image", "quantity": 2, "ttl": 600}"#,
    );
    let entries = h.ok(&event("credit.void", "v1", t, r#"{"lot": "soon"}"#), t);
    assert_eq!(entries[0].credits, whole(-10));
    assert_eq!(reserved(&h.state().holds["h1"]), [("later", whole(6))]);
    assert_eq!(h.held_in("ai", t), whole(6));
}

#[test]
fn hold_commands_are_checked() {
    let mut h = Harness::new();
    h.grant("g1", T0, LATER);
    let t = "2026-11-02T00:00:00Z";
    for (data, code) in [
        (r#"{"feature": "erase", "ttl": 0}"#, "bad_command"),
        (r#"{"feature": "erase", "ttl": 86401}"#, "bad_command"),
        (r#"{"feature": "erase"}"#, "bad_data"),
        (
            r#"{"feature": "erase", "ttl": 60, "user": "u"}"#,
            "bad_data",
        ),
        (r#"{"feature": "erase", "ttl": 60, "hold": ""}"#, "bad_data"),
        (r#"{"feature": "teleport", "ttl": 60}"#, "unknown_feature"),
        (
            r#"{"feature": "image_generation", "ttl": 60}"#,
            "unpriceable",
        ),
        (
            r#"{"feature": "erase", "quantity": -1, "ttl": 60}"#,
            "negative_quantity",
        ),
    ] {
        let rejection = h.rejected(&hold_event("e1", t, data), at(t));
        assert_eq!(rejection.code(), code, "{data}: {rejection}");
    }
    assert!(h.state().holds.is_empty());
    assert_eq!(h.lot_held("later"), (Credits::ZERO, whole(100)));
    // The longest ttl is a day.
    let hold = h.held("e2", t, r#"{"feature": "erase", "ttl": 86400}"#);
    assert_eq!(hold.expires_at, at("2026-11-03T00:00:00Z"));
}

#[test]
fn the_check_answers_cost_pool_available_and_held_and_changes_nothing() {
    let mut h = Harness::new();
    flex_rules(&mut h); // flex up to 10
    h.grant(
        "g1",
        T0,
        r#"{"lot": "a", "kind": "purchased", "credits": 20}"#,
    );
    let t = "2026-11-02T00:00:00Z";
    h.held(
        "e1",
        t,
        r#"{"hold": "h1", "feature": "text_to_image", "ttl": 600}"#,
    );
    let before = h.state().clone();
    let check = h
        .state()
        .check(&h.rules, "erase", None, whole(1), at(t))
        .expect("priced");
    assert_eq!(
        check,
        Check {
            allowed: true,
            cost: whole(7),
            pool: "ai".into(),
            available: whole(22),
            flex: whole(10),
            held: whole(8),
            as_of: at(t),
        }
    );
    let check = h
        .state()
        .check(&h.rules, "video_generation", Some("short"), whole(1), at(t))
        .expect("priced");
    assert_eq!((check.allowed, check.cost), (false, whole(25)));
    let check = h
        .state()
        .check(&h.rules, "deep_scan", None, whole(3), at(t))
        .expect("priced");
    assert_eq!(
        (
            check.allowed,
            check.pool.as_str(),
            check.available,
            check.held
        ),
        (true, "scan", whole(10), Credits::ZERO),
        "another pool: only the (account-wide) flex room"
    );
    let err = h
        .state()
        .check(&h.rules, "teleport", None, whole(1), at(t))
        .unwrap_err();
    assert_eq!(err.code(), "unknown_feature");
    assert_eq!(h.state(), &before);
}

#[test]
fn states_without_holds_read_as_before_and_holds_survive_a_checkpoint() {
    let mut h = Harness::new();
    h.grant("g1", T0, LATER);
    // Without holds nothing new is written: a state of the previous version is the same.
    let json = serde_json::to_string(h.state()).expect("serializes");
    assert!(!json.contains("held") && !json.contains("holds"), "{json}");
    let old = r#"{"lots":[{"id":"later","pool":"ai","kind":"purchased","granted":100,
        "remaining":100,"effective_at":"2026-11-01T00:00:00Z","expires_at":null,
        "priority":null,"seq":0,"voided":false}],"next_seq":1}"#;
    let restored: AccountState = serde_json::from_str(old).expect("an old state loads");
    assert_eq!(&restored, h.state());
    h.held(
        "e1",
        "2026-11-02T00:00:00Z",
        r#"{"hold": "h1", "feature": "erase", "ttl": 600}"#,
    );
    let json = serde_json::to_string(h.state()).expect("serializes");
    let restored: AccountState = serde_json::from_str(&json).expect("loads");
    assert_eq!(&restored, h.state());
}

/// The shell refuses a record whose broker timestamp is beyond the skew (it alone has a
/// clock) and hands the core that decision: the core must then move nothing. A record
/// stamped 2100 that moved the clock would expire this lot, which has days left.
#[test]
fn a_refused_broker_timestamp_never_moves_the_partition_clock() {
    let mut h = Harness::new();
    h.grant(
        "promo",
        "2026-11-01T00:00:00Z",
        r#"{"kind":"promotional","credits":50,"expires_at":"2026-11-03T00:00:00Z"}"#,
    );
    let far = at("2100-01-01T00:00:00Z");
    let refused = Rejection::FutureTimestamp {
        arrival: far,
        skew_secs: 300,
    };
    let step = h.book.apply(&h.rules, Err(refused), far);
    assert!(step.due.is_empty(), "nothing falls due: {:?}", step.due);
    assert!(
        matches!(&step.outcome, Outcome::Rejected(r) if r.code() == "future_timestamp"),
        "{:?}",
        step.outcome
    );
    assert_eq!(h.book.clock, Some(at("2026-11-01T00:00:00Z")));
    // The lot still pays a call made the next day: 7 of its 50.
    let entry = h.call(
        "u1",
        "2026-11-02T00:00:00Z",
        r#"{"user":"kim","feature":"erase"}"#,
    );
    assert_eq!(paid(&entry), vec![("promo", whole(7))]);
    assert_eq!(h.lot("promo").remaining, whole(43));
}

/// Every body names the CloudEvent type it came from, and only usage is usage: the shell
/// takes usage only from the usage topic and the rest only from the commands topic.
#[test]
fn bodies_name_their_type_and_role() {
    let grant = event(
        "credit.grant",
        "g",
        "2026-11-01T00:00:00Z",
        r#"{"kind":"promotional","credits":5}"#,
    );
    let parsed = tally_core::event::parse(grant.as_bytes(), at("2026-11-01T00:00:00Z"))
        .expect("a valid grant");
    assert_eq!(parsed.body.type_name(), "credit.grant");
    assert!(!parsed.body.is_usage());
    let call = usage(
        "u",
        "2026-11-01T00:00:00Z",
        r#"{"user":"kim","feature":"erase"}"#,
    );
    let parsed =
        tally_core::event::parse(call.as_bytes(), at("2026-11-01T00:00:00Z")).expect("usage");
    assert_eq!(parsed.body.type_name(), "ai.usage");
    assert!(parsed.body.is_usage());
}
