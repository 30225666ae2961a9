//! Benchmark of the pure core: parse, dedup, price, debit, alerts, on one thread.
//!
//! 10,000 accounts, each with two admins, alert thresholds (low balance and 80% of the
//! included credits), a plan (`pro`, monthly, whose cycle issues the `included` lot) and
//! two more lots (a purchased pack valid 360 days, a promotional grant that expires), so
//! three lots. The calls spread over six features (fixed cost, variants, a per-unit rate
//! with quantities, a free one), 97 users and three services; one call in 20 failed and one
//! in 50 is a copy of an earlier one (a duplicate). Times move forward through the day, so
//! the clock and the day of each call move as they do in a partition.
//!
//! Each payload is read one call ahead (`Book::read_usage`, `Book::look_ahead`), as a
//! partition's loop can read its next record before it decides the current one, so the
//! memory the next decision reads (its dedup slot, its account's state) loads while the
//! current one is decided (`Book::apply_usage_keyed`). The reference model's tests decide
//! their payloads the same way (`read_ahead_agrees`).
//!
//! `cargo run --release -p tally-core --example bench_core [EVENTS]` prints events a
//! second (wall clock: noisy on a shared machine, take the best of several runs).
//! `bash scripts/bench-core.sh` runs it under callgrind and prints instructions per event
//! (the same on a busy machine as on an idle one).

use std::time::Instant;

use chrono::{DateTime, TimeDelta, Utc};
use tally_core::event::borrowed::UsageEvent;
use tally_core::{Ahead, Book, CostMatrix, Outcome, Policy, Rules, Step};

/// Accounts of the partition.
const ACCOUNTS: usize = 10_000;
/// One call in this many failed (priced, logged, debits nothing).
const FAILED_EVERY: usize = 20;
/// One call in this many repeats the one `DUPLICATE_OF` calls before it.
const DUPLICATE_EVERY: usize = 50;
const DUPLICATE_OF: usize = 10;

fn rules() -> Rules {
    let matrix: CostMatrix =
        toml::from_str(include_str!("../../config/matrix.toml")).expect("matrix");
    let plans = toml::from_str(r#"pro = { credits = 100000, period = "month" }"#).expect("plans");
    Rules {
        matrix,
        default_timezone: chrono_tz::Asia::Seoul,
        default_policy: Policy::EarliestExpiry,
        max_lateness: TimeDelta::days(35),
        max_future_skew: TimeDelta::minutes(5),
        dedup_window: TimeDelta::hours(24),
        plans,
        expiry_grace: TimeDelta::minutes(5),
        flex_enabled: true,
        flex_threshold: tally_core::Credits::from_whole(1000),
        settle_shortfall: true,
        alerts: tally_core::alerts::AlertRules {
            enabled: true,
            ..Default::default()
        },
        max_open_holds: tally_core::account::DEFAULT_MAX_OPEN_HOLDS,
    }
}

/// Settings, plan and lots of every account, applied before the clock starts.
fn setup(book: &mut Book, rules: &Rules, start: DateTime<Utc>) {
    for a in 0..ACCOUNTS {
        let command = |ty: &str, id: &str, data: &str| {
            format!(
                r#"{{"specversion":"1.0","type":"{ty}","id":"{id}-{a}","source":"billing","subject":"acct-{a}","time":"2026-11-01T00:00:00Z","data":{data}}}"#
            )
        };
        let commands = [
            command(
                "account.settings",
                "s",
                &format!(
                    r#"{{"admins":["ops@acct-{a}.example","cfo@acct-{a}.example"],"locale":"ko","alerts":{{"low_balance":1000,"included_used_percent":80}}}}"#
                ),
            ),
            command("account.plan", "p", r#"{"plan":"pro"}"#),
            command(
                "credit.grant",
                "g-purchased",
                r#"{"kind":"purchased","credits":"50000","valid_days":360,"payment":{"method":"card","reference":"inv-1"}}"#,
            ),
            command(
                "credit.grant",
                "g-promotional",
                r#"{"kind":"promotional","credits":20000,"expires_at":"2026-12-31T15:00:00Z"}"#,
            ),
        ];
        for command in commands {
            let step = book.process(rules, command.as_bytes(), start);
            assert!(
                matches!(step.outcome, Outcome::Applied { .. }),
                "{command}: {:?}",
                step.outcome
            );
        }
    }
}

/// The calls, with their arrival times: each 10 ms after the previous one.
fn calls(events: usize, start: DateTime<Utc>) -> Vec<(Vec<u8>, DateTime<Utc>)> {
    let features = [
        (r#""feature":"image_generation","variant":"mid""#, ""),
        (r#""feature":"text_to_image""#, ""),
        (r#""feature":"video_generation","variant":"long""#, ""),
        (r#""feature":"erase""#, r#","quantity":2"#),
        (r#""feature":"translation""#, r#","quantity":"1234.5""#),
        (r#""feature":"upscale""#, ""),
    ];
    let services = ["production-room", "image-editor", "scan-service"];
    let mut out: Vec<(Vec<u8>, DateTime<Utc>)> = Vec::with_capacity(events);
    for i in 0..events {
        let arrival = start + TimeDelta::milliseconds(10 * i as i64 + 500);
        if i % DUPLICATE_EVERY == DUPLICATE_EVERY - 1 && i >= DUPLICATE_OF {
            let payload = out[i - DUPLICATE_OF].0.clone();
            out.push((payload, arrival));
            continue;
        }
        let (feature, quantity) = features[i % features.len()];
        let status = if i % FAILED_EVERY == 7 {
            r#","status":"failed""#
        } else {
            ""
        };
        let time = (start + TimeDelta::milliseconds(10 * i as i64))
            .to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
        let payload = format!(
            r#"{{"specversion":"1.0","type":"ai.usage","id":"evt-{i}","source":"{}","subject":"acct-{}","time":"{time}","data":{{"user":"user-{}@example.com",{feature}{quantity}{status}}}}}"#,
            services[i % services.len()],
            (i * 7919) % ACCOUNTS,
            i % 97,
        );
        out.push((payload.into_bytes(), arrival));
    }
    out
}

/// What the calls came to.
#[derive(Debug, Default, PartialEq, Eq)]
struct Counts {
    applied: usize,
    duplicates: usize,
    rejected: usize,
}

/// The measured loop (callgrind counts instructions inside it: `--toggle-collect=*run_calls*`).
#[inline(never)]
fn run_calls(book: &mut Book, rules: &Rules, calls: &[(Vec<u8>, DateTime<Utc>)]) -> Counts {
    let mut counts = Counts::default();
    // Each payload is read one call ahead, as a partition's loop can read its next record
    // before it decides the current one: the memory the next decision reads (its dedup
    // slot, its account) loads while the current one is decided. Two calls a turn, each
    // read into a place of its own (moving a read event costs a copy of its size).
    let mut calls = calls.iter();
    let Some((mut a_payload, mut a_arrival)) = calls.next().map(|(p, t)| (p, *t)) else {
        return counts;
    };
    let mut a = book.read_usage(a_payload, a_arrival);
    let mut a_key = a.as_ref().map(|usage| book.look_ahead(usage));
    loop {
        let Some((b_payload, b_arrival)) = calls.next().map(|(p, t)| (p, *t)) else {
            count(
                &mut counts,
                decide(book, rules, &a, a_key, a_payload, a_arrival),
            );
            break;
        };
        let b = book.read_usage(b_payload, b_arrival);
        let b_key = b.as_ref().map(|usage| book.look_ahead(usage));
        count(
            &mut counts,
            decide(book, rules, &a, a_key, a_payload, a_arrival),
        );
        drop(a);
        let Some((payload, arrival)) = calls.next().map(|(p, t)| (p, *t)) else {
            count(
                &mut counts,
                decide(book, rules, &b, b_key, b_payload, b_arrival),
            );
            break;
        };
        (a_payload, a_arrival) = (payload, arrival);
        a = book.read_usage(a_payload, a_arrival);
        a_key = a.as_ref().map(|usage| book.look_ahead(usage));
        count(
            &mut counts,
            decide(book, rules, &b, b_key, b_payload, b_arrival),
        );
    }
    counts
}

/// Decides a payload read ahead (its usage event, or `None`), with what
/// [`Book::look_ahead`] gave.
#[inline(always)]
fn decide(
    book: &mut Book,
    rules: &Rules,
    usage: &Option<UsageEvent<'_>>,
    ahead: Option<Ahead>,
    payload: &[u8],
    arrival: DateTime<Utc>,
) -> Step {
    match (usage, ahead) {
        (Some(usage), Some(ahead)) => book.apply_usage_keyed(rules, usage, ahead, arrival),
        _ => book.process_other(rules, payload, arrival),
    }
}

/// Counts what one call came to.
#[inline(always)]
fn count(counts: &mut Counts, step: Step) {
    match step.outcome {
        Outcome::Applied { .. } => counts.applied += 1,
        Outcome::Duplicate { .. } => counts.duplicates += 1,
        Outcome::Rejected(_) | Outcome::Tick => counts.rejected += 1,
    }
    std::hint::black_box(&step);
}

/// Clock ticks a second in `/proc` (`USER_HZ`, 100 on Linux).
const TICKS_PER_SECOND: f64 = 100.0;

/// CPU time this thread has run, user and system, in clock ticks (Linux's
/// `/proc/thread-self/stat`; `None` elsewhere).
fn cpu_ticks() -> Option<u64> {
    let stat = std::fs::read_to_string("/proc/thread-self/stat").ok()?;
    // Fields after the command's closing parenthesis; utime and stime are the 12th and 13th.
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace().skip(11);
    let user: u64 = fields.next()?.parse().ok()?;
    let system: u64 = fields.next()?.parse().ok()?;
    Some(user + system)
}

fn main() {
    let events: usize = std::env::args()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or(2_000_000);
    let rules = rules();
    let start: DateTime<Utc> = "2026-11-20T00:00:00Z".parse().expect("time");
    let mut book = Book::default();
    setup(&mut book, &rules, start - TimeDelta::days(19));
    let calls = calls(events, start);
    let began = Instant::now();
    let cpu_began = cpu_ticks();
    let counts = run_calls(&mut book, &rules, &calls);
    let cpu = cpu_ticks().zip(cpu_began).map(|(end, start)| end - start);
    let elapsed = began.elapsed();
    let duplicates = (DUPLICATE_OF..events)
        .filter(|i| i % DUPLICATE_EVERY == DUPLICATE_EVERY - 1)
        .count();
    assert_eq!(
        counts,
        Counts {
            applied: events - duplicates,
            duplicates,
            rejected: 0
        }
    );
    println!(
        "{events} events ({duplicates} duplicates) over {ACCOUNTS} accounts (parse, dedup, price, debit, alerts) in {:.3} s: {:.0} events/s on one core",
        elapsed.as_secs_f64(),
        events as f64 / elapsed.as_secs_f64()
    );
    // CPU time is what the loop ran, whatever else the machine runs: on a shared machine the
    // wall clock also counts the time the thread waited for a core.
    if let Some(ticks) = cpu.filter(|&t| t > 0) {
        println!(
            "{:.0} events per CPU second ({:.2} s of CPU time, user and system)",
            events as f64 * TICKS_PER_SECOND / ticks as f64,
            ticks as f64 / TICKS_PER_SECOND
        );
    }
    println!("instructions per event: bash scripts/bench-core.sh (callgrind)");
}
