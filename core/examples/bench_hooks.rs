//! What webhook decisions (`hooks::after_step`) add to the core's hot path, single thread,
//! on bench_core's workload (10,000 accounts with admins, an alert threshold and two lots):
//! without it; with it and nobody listening (the common case); and with a global endpoint
//! and every account holding an endpoint and an auto top-up (the worst case).
//! `cargo run --release -p tally-core --example bench_hooks [EVENTS] [MODE 0|1|2]`

use std::time::Instant;

use chrono::{DateTime, TimeDelta, Utc};
use tally_core::{hooks, Book, CostMatrix, Outcome, Policy, Rules};

fn main() {
    let events: usize = std::env::args()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or(2_000_000);
    let matrix: CostMatrix =
        toml::from_str(include_str!("../../config/matrix.toml")).expect("matrix");
    let rules = Rules {
        matrix,
        default_timezone: chrono_tz::Asia::Seoul,
        default_policy: Policy::EarliestExpiry,
        max_lateness: TimeDelta::days(35),
        max_future_skew: TimeDelta::minutes(5),
        dedup_window: TimeDelta::hours(24),
        plans: Default::default(),
        expiry_grace: TimeDelta::minutes(5),
        flex_enabled: true,
        flex_threshold: tally_core::Credits::from_whole(1000),
        settle_shortfall: true,
        alerts: Default::default(),
        max_open_holds: tally_core::account::DEFAULT_MAX_OPEN_HOLDS,
    };
    let modes = [
        "core only",
        "hooks, nobody listening",
        "hooks, every account listening",
    ];
    // A second argument picks one mode (0, 1, 2), for callgrind.
    let only: Option<usize> = std::env::args().nth(2).and_then(|n| n.parse().ok());
    for (i, mode) in modes.into_iter().enumerate() {
        if only.is_none_or(|o| o == i) {
            run(&rules, events, mode);
        }
    }
}

fn run(rules: &Rules, events: usize, mode: &str) {
    let listening = mode.ends_with("every account listening");
    let with_hooks = mode != "core only";
    let start: DateTime<Utc> = "2026-11-20T00:00:00Z".parse().expect("time");
    let accounts = 10_000;
    let mut book = Book::default();
    for a in 0..accounts {
        // Real accounts have admins and alert thresholds: every call then evaluates them.
        let settings = format!(
            r#"{{"specversion":"1.0","type":"account.settings","id":"s-{a}","source":"billing","subject":"acct-{a}","time":"2026-11-19T00:00:00Z","data":{{"admins":["ops@acct-{a}.example"],"locale":"ko","alerts":{{"low_balance":100}}{hooks}}}}}"#,
            hooks = if listening {
                r#","webhooks":[{"id":"main","url":"https://hooks.example/t"}],"top_up":{"below":100,"credits":500}"#
            } else {
                ""
            }
        );
        book.process(rules, settings.as_bytes(), start);
        for (kind, credits, expiry) in [
            ("included", 1_000_000, "\"2026-12-01T00:00:00Z\""),
            ("purchased", 5_000_000, "null"),
        ] {
            let grant = format!(
                r#"{{"specversion":"1.0","type":"credit.grant","id":"g-{kind}-{a}","source":"billing","subject":"acct-{a}","time":"2026-11-19T00:00:00Z","data":{{"kind":"{kind}","credits":{credits},"expires_at":{expiry}}}}}"#
            );
            book.process(rules, grant.as_bytes(), start);
        }
    }
    let features = [
        ("image_generation", "\"mid\""),
        ("text_to_image", "null"),
        ("video_generation", "\"long\""),
    ];
    let payloads: Vec<Vec<u8>> = (0..events)
        .map(|i| {
            let (feature, variant) = features[i % features.len()];
            format!(
                r#"{{"specversion":"1.0","type":"ai.usage","id":"evt-{i}","source":"production-room","subject":"acct-{}","time":"2026-11-20T09:15:02Z","data":{{"user":"user-{}@example.com","feature":"{feature}","variant":{variant},"quantity":1}}}}"#,
                i % accounts,
                i % 97
            )
            .into_bytes()
        })
        .collect();
    let arrival = start + TimeDelta::hours(10);
    let began = Instant::now();
    let mut applied = 0u64;
    let mut notices = 0usize;
    for payload in &payloads {
        let step = book.process(rules, payload, arrival);
        if with_hooks {
            notices += hooks::after_step(&mut book, &step, listening).len();
        }
        if let Outcome::Applied { .. } = step.outcome {
            applied += 1;
        }
    }
    let elapsed = began.elapsed();
    assert_eq!(applied as usize, events);
    println!(
        "{mode}: {events} events in {:.3} s: {:.0} events/s on one core, {notices} notices",
        elapsed.as_secs_f64(),
        events as f64 / elapsed.as_secs_f64()
    );
}
