//! Property tests: conservation of credits and the debit order over random histories of
//! grants, voids, settings and calls, checked against a small independent reference; and
//! the fixed-point arithmetic of `Credits`.

mod common;

use std::collections::HashMap;

use chrono::{DateTime, TimeDelta, Utc};
use proptest::prelude::*;
use tally_core::{Book, Credits, EntryType, LedgerEntry, Lot, LotKind, Outcome, Policy, Rules};

const MATRIX: &str = r#"
[[versions]]
name = "v1"
effective_from = "2026-01-01T00:00:00Z"
[versions.features]
text_to_image = { pool = "ai", cost = 8 }
erase = { pool = "ai", cost = 7 }
upscale = { pool = "ai", cost = 0 }
image_generation = { pool = "ai", variants = { short = 5, mid = 10, long = 20 } }
video_generation = { pool = "ai", variants = { short = 25, mid = 50, long = 100 } }
regeneration = { pool = "ai", variants = { short = 1, long = 2 } }
deep_scan = { pool = "scan", cost = 1 }
translation = { pool = "ai", per_unit = "0.002", unit = "character" }
"#;

fn rules() -> Rules {
    common::rules(MATRIX)
}

/// (feature, variant) of the calls a history may make.
const CALLS: [(&str, Option<&str>); 10] = [
    ("text_to_image", None),
    ("erase", None),
    ("upscale", None),
    ("image_generation", Some("short")),
    ("image_generation", Some("long")),
    ("video_generation", Some("mid")),
    ("video_generation", Some("long")),
    ("regeneration", Some("short")),
    ("deep_scan", None),
    ("translation", None),
];

#[derive(Debug, Clone)]
enum Expiry {
    Never,
    /// `expires_at`, this many minutes after the lot takes effect.
    AtMinutes(u32),
    ValidDays(u32),
}

#[derive(Debug, Clone)]
enum Op {
    Grant {
        kind: LotKind,
        scan: bool,
        milli: i64,
        /// Minutes after the event time the lot takes effect, if not at once.
        delay: Option<u32>,
        expiry: Expiry,
        priority: Option<i32>,
    },
    Use {
        call: usize,
        /// Quantity in thousandths.
        quantity: i64,
        failed: bool,
    },
    Void {
        pick: usize,
    },
    Policy(Policy),
}

fn kind() -> impl Strategy<Value = LotKind> {
    prop_oneof![
        Just(LotKind::Included),
        Just(LotKind::Promotional),
        Just(LotKind::Purchased)
    ]
}

fn expiry() -> impl Strategy<Value = Expiry> {
    prop_oneof![
        Just(Expiry::Never),
        (1u32..20_000).prop_map(Expiry::AtMinutes),
        (1u32..30).prop_map(Expiry::ValidDays),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    let grant = (
        kind(),
        prop::bool::weighted(0.25),
        prop_oneof![1i64..200_000, (1i64..50).prop_map(|w| w * 1000)],
        prop::option::weighted(0.2, 0u32..3000),
        expiry(),
        prop::option::weighted(0.3, -3i32..4),
    )
        .prop_map(|(kind, scan, milli, delay, expiry, priority)| Op::Grant {
            kind,
            scan,
            milli,
            delay,
            expiry,
            priority,
        });
    let call = (
        0..CALLS.len(),
        prop_oneof![Just(1000i64), 0i64..5000],
        prop::bool::weighted(0.1),
    )
        .prop_map(|(call, quantity, failed)| Op::Use {
            call,
            quantity,
            failed,
        });
    prop_oneof![
        4 => grant,
        8 => call,
        1 => any::<usize>().prop_map(|pick| Op::Void { pick }),
        1 => prop_oneof![Just(Policy::EarliestExpiry), Just(Policy::KindOrder)].prop_map(Op::Policy),
    ]
}

/// A history: each step waits some minutes, then does one thing.
fn history() -> impl Strategy<Value = Vec<(u32, Op)>> {
    prop::collection::vec((0u32..720, op()), 1..60)
}

fn milli_text(milli: i64) -> String {
    // Exercise the decimal-string form of credits in JSON.
    format!("\"{}\"", Credits::from_milli(milli))
}

fn payload(ty: &str, id: &str, time: DateTime<Utc>, data: &str) -> String {
    format!(
        r#"{{"specversion":"1.0","type":"{ty}","id":"{id}","source":"svc","subject":"acme",
            "time":"{}","data":{data}}}"#,
        time.to_rfc3339()
    )
}

fn grant_data(op: &Op, time: DateTime<Utc>) -> String {
    let Op::Grant {
        kind,
        scan,
        milli,
        delay,
        expiry,
        priority,
    } = op
    else {
        unreachable!()
    };
    let kind = match kind {
        LotKind::Included => "included",
        LotKind::Promotional => "promotional",
        LotKind::Purchased => "purchased",
    };
    let mut fields = vec![
        format!(r#""kind":"{kind}""#),
        format!(r#""pool":"{}""#, if *scan { "scan" } else { "ai" }),
        format!(r#""credits":{}"#, milli_text(*milli)),
    ];
    let effective = time + TimeDelta::minutes(i64::from(delay.unwrap_or(0)));
    if delay.is_some() {
        fields.push(format!(r#""effective_at":"{}""#, effective.to_rfc3339()));
    }
    match expiry {
        Expiry::Never => fields.push(r#""expires_at":null"#.into()),
        Expiry::AtMinutes(m) => fields.push(format!(
            r#""expires_at":"{}""#,
            (effective + TimeDelta::minutes(i64::from(*m))).to_rfc3339()
        )),
        Expiry::ValidDays(d) => fields.push(format!(r#""valid_days":{d}"#)),
    }
    if let Some(p) = priority {
        fields.push(format!(r#""priority":{p}"#));
    }
    format!("{{{}}}", fields.join(","))
}

fn applied(outcome: Outcome) -> Vec<LedgerEntry> {
    match outcome {
        Outcome::Applied { entries, .. } => entries,
        other => panic!("expected Applied, got {other:?}"),
    }
}

// ---------------------------------------------------------------- the reference order

/// Whether a lot can pay for a call in `pool` at `at`, written from the rules.
fn reference_usable(lot: &Lot, pool: &str, at: DateTime<Utc>) -> bool {
    !lot.voided
        && lot.remaining > Credits::ZERO
        && lot.pool == pool
        && lot.effective_at <= at
        && match lot.expires_at {
            None => true,
            Some(end) => at < end,
        }
}

fn kind_rank(kind: LotKind) -> u8 {
    match kind {
        LotKind::Included => 0,
        LotKind::Promotional => 1,
        LotKind::Purchased => 2,
    }
}

/// The documented order as a comparable key, smallest pays first:
/// lots with an explicit priority first, lower first; then, by policy, the earliest expiry
/// (never-expiring last) or the kind order; then included, promotional, purchased; then the
/// oldest grant.
fn reference_key(lot: &Lot, policy: Policy) -> (u8, i64, u8, u8, i64, u8, u64) {
    let (prioritised, priority) = match lot.priority {
        Some(p) => (0, i64::from(p)),
        None => (1, 0),
    };
    let (never, expiry) = match lot.expires_at {
        Some(end) => (0, end.timestamp_millis()),
        None => (1, 0),
    };
    match policy {
        Policy::EarliestExpiry => (
            prioritised,
            priority,
            0,
            never,
            expiry,
            kind_rank(lot.kind),
            lot.seq,
        ),
        Policy::KindOrder => (
            prioritised,
            priority,
            kind_rank(lot.kind),
            never,
            expiry,
            0,
            lot.seq,
        ),
    }
}

/// What the reference pays for `amount` from `lots` (a snapshot before the call), and the
/// shortfall.
fn reference_debit(
    lots: &[Lot],
    pool: &str,
    amount: Credits,
    at: DateTime<Utc>,
    policy: Policy,
) -> (Vec<(String, Credits)>, Credits) {
    let mut usable: Vec<&Lot> = lots
        .iter()
        .filter(|l| reference_usable(l, pool, at))
        .collect();
    usable.sort_by_key(|l| reference_key(l, policy));
    let mut left = amount;
    let mut paid = Vec::new();
    for lot in usable {
        if left <= Credits::ZERO {
            break;
        }
        let take = lot.remaining.min(left);
        paid.push((lot.id.clone(), take));
        left -= take;
    }
    (paid, left)
}

// ---------------------------------------------------------------- running a history

#[derive(Default)]
struct Totals {
    granted: HashMap<String, Credits>,
    paid: HashMap<String, Credits>,
    voided: HashMap<String, Credits>,
}

fn run(history: &[(u32, Op)]) -> Result<(), TestCaseError> {
    let rules = rules();
    let mut book = Book::default();
    let mut time: DateTime<Utc> = "2026-03-01T00:00:00Z".parse().unwrap();
    let mut totals = Totals::default();
    let mut lot_ids: Vec<String> = Vec::new();
    // The account's policy as the history set it, tracked apart from the engine.
    let mut policy = rules.default_policy;

    for (step, (wait, op)) in history.iter().enumerate() {
        time += TimeDelta::minutes(i64::from(*wait));
        let id = format!("e{step}");
        match op {
            Op::Grant { .. } => {
                let entries = applied(book.process(
                    &rules,
                    payload("credit.grant", &id, time, &grant_data(op, time)).as_bytes(),
                    time,
                ));
                prop_assert_eq!(entries.len(), 1);
                let e = &entries[0];
                prop_assert_eq!(e.entry_type, EntryType::Grant);
                prop_assert!(e.credits.is_positive());
                totals.granted.insert(e.lot.clone(), e.credits);
                lot_ids.push(e.lot.clone());
            }
            Op::Use {
                call,
                quantity,
                failed,
            } => {
                let (feature, variant) = CALLS[*call];
                let variant = variant
                    .map(|v| format!(r#","variant":"{v}""#))
                    .unwrap_or_default();
                let status = if *failed { "failed" } else { "succeeded" };
                let data = format!(
                    r#"{{"user":"u","feature":"{feature}"{variant},"quantity":{},"status":"{status}"}}"#,
                    milli_text(*quantity)
                );
                let before = book
                    .accounts
                    .get("acme")
                    .map(|state| state.lots.clone())
                    .unwrap_or_default();
                let entries = applied(book.process(
                    &rules,
                    payload("ai.usage", &id, time, &data).as_bytes(),
                    time,
                ));
                prop_assert_eq!(entries.len(), 1);
                let e = &entries[0];
                prop_assert_eq!(e.entry_type, EntryType::Usage);
                if *failed {
                    prop_assert_eq!(e.credits, Credits::ZERO);
                    prop_assert!(e.paid.is_empty());
                    prop_assert_eq!(e.shortfall, Credits::ZERO);
                } else {
                    // Conservation per entry: what was paid plus the shortfall is the price.
                    let paid: Credits = e.paid.iter().map(|p| p.credits).sum();
                    prop_assert_eq!(paid + e.shortfall, e.credits);
                    prop_assert!(!e.shortfall.is_negative());
                    prop_assert!(e.paid.iter().all(|p| p.credits.is_positive()));
                    // Order: the engine's payments are the reference's greedy payments.
                    let (want, shortfall) =
                        reference_debit(&before, &e.pool, e.credits, time, policy);
                    let got: Vec<(String, Credits)> =
                        e.paid.iter().map(|p| (p.lot.clone(), p.credits)).collect();
                    prop_assert_eq!(&got, &want, "policy {:?} at {}", policy, time);
                    prop_assert_eq!(e.shortfall, shortfall);
                    for p in &e.paid {
                        let kind = before.iter().find(|l| l.id == p.lot).map(|l| l.kind);
                        prop_assert_eq!(Some(p.kind), kind);
                        *totals.paid.entry(p.lot.clone()).or_default() += p.credits;
                    }
                }
            }
            Op::Void { pick } => {
                if lot_ids.is_empty() {
                    continue;
                }
                let lot = &lot_ids[pick % lot_ids.len()];
                let data = format!(r#"{{"lot":"{lot}"}}"#);
                match book.process(
                    &rules,
                    payload("credit.void", &id, time, &data).as_bytes(),
                    time,
                ) {
                    Outcome::Applied { entries, .. } => {
                        prop_assert_eq!(entries.len(), 1);
                        prop_assert!(!entries[0].credits.is_positive());
                        prop_assert!(!totals.voided.contains_key(lot), "voided twice");
                        totals.voided.insert(lot.clone(), -entries[0].credits);
                    }
                    Outcome::Rejected(_) => {
                        prop_assert!(
                            totals.voided.contains_key(lot),
                            "void of a live lot rejected"
                        );
                    }
                    Outcome::Duplicate { .. } => {
                        prop_assert!(false, "fresh id taken for a duplicate")
                    }
                }
            }
            Op::Policy(new) => {
                let name = match new {
                    Policy::EarliestExpiry => "earliest_expiry",
                    Policy::KindOrder => "kind_order",
                };
                let data = format!(r#"{{"policy":"{name}"}}"#);
                let entries = applied(book.process(
                    &rules,
                    payload("account.settings", &id, time, &data).as_bytes(),
                    time,
                ));
                prop_assert!(entries.is_empty());
                policy = *new;
            }
        }

        // Invariants of the account after every step.
        if let Some(state) = book.accounts.get("acme") {
            prop_assert_eq!(state.lots.len(), totals.granted.len());
            for lot in &state.lots {
                prop_assert!(!lot.remaining.is_negative(), "{:?}", lot);
                prop_assert!(lot.remaining <= lot.granted, "{:?}", lot);
                if lot.voided {
                    prop_assert_eq!(lot.remaining, Credits::ZERO);
                }
                let paid = totals.paid.get(&lot.id).copied().unwrap_or_default();
                let voided = totals.voided.get(&lot.id).copied().unwrap_or_default();
                prop_assert_eq!(
                    lot.remaining + paid + voided,
                    totals.granted[&lot.id],
                    "lot {}",
                    lot.id
                );
            }
            let remaining: Credits = state.lots.iter().map(|l| l.remaining).sum();
            let paid: Credits = totals.paid.values().copied().sum();
            let voided: Credits = totals.voided.values().copied().sum();
            let granted: Credits = totals.granted.values().copied().sum();
            prop_assert_eq!(remaining + paid, granted - voided);
        }
    }
    Ok(())
}

proptest! {
    #[test]
    fn credits_are_conserved_and_paid_in_the_documented_order(history in history()) {
        run(&history)?;
    }

    #[test]
    fn credits_display_then_parse_is_the_identity(milli in (i64::MIN + 1)..=i64::MAX) {
        let credits = Credits::from_milli(milli);
        let text = credits.to_string();
        prop_assert_eq!(text.parse::<Credits>(), Ok(credits), "{}", text);
        // At most three decimals, no trailing zero after the point.
        if let Some((_, fraction)) = text.split_once('.') {
            prop_assert!(!fraction.is_empty() && fraction.len() <= 3 && !fraction.ends_with('0'));
        }
    }

    #[test]
    fn credits_json_round_trip_is_exact(milli in -999_999_999_999_999i64..=999_999_999_999_999) {
        let credits = Credits::from_milli(milli);
        let json = serde_json::to_string(&credits).unwrap();
        prop_assert_eq!(serde_json::from_str::<Credits>(&json).unwrap(), credits, "{}", json);
        let quoted = format!("\"{credits}\"");
        prop_assert_eq!(serde_json::from_str::<Credits>(&quoted).unwrap(), credits);
    }

    #[test]
    fn times_never_under_charges(
        rate in 0i64..1_000_000_000_000,
        quantity in 0i64..1_000_000_000,
    ) {
        let result = Credits::from_milli(rate)
            .times(Credits::from_milli(quantity))
            .expect("no overflow in this range");
        let exact = i128::from(rate) * i128::from(quantity);
        let charged = i128::from(result.milli()) * 1000;
        // Never less than the exact product, and less than a thousandth more.
        prop_assert!(charged >= exact, "{} x {} charged {}", rate, quantity, result);
        prop_assert!(charged - exact < 1000, "{} x {} charged {}", rate, quantity, result);
    }
}
