//! Benchmark of the pure core: parse, price and debit, single thread, over 10,000
//! accounts with admins, an alert threshold and two lots each.
//! `cargo run --release -p tally-core --example bench_core [EVENTS]`

use std::time::Instant;

use chrono::{DateTime, TimeDelta, Utc};
use tally_core::{Book, CostMatrix, Outcome, Policy, Rules};

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
    let start: DateTime<Utc> = "2026-11-20T00:00:00Z".parse().expect("time");
    let accounts = 10_000;
    let mut book = Book::default();
    for a in 0..accounts {
        // Real accounts have admins and alert thresholds: every call then evaluates them.
        let settings = format!(
            r#"{{"specversion":"1.0","type":"account.settings","id":"s-{a}","source":"billing","subject":"acct-{a}","time":"2026-11-19T00:00:00Z","data":{{"admins":["ops@acct-{a}.example"],"locale":"ko","alerts":{{"low_balance":100}}}}}}"#
        );
        book.process(&rules, settings.as_bytes(), start);
        for (kind, credits, expiry) in [
            ("included", 1_000_000, "\"2026-12-01T00:00:00Z\""),
            ("purchased", 5_000_000, "null"),
        ] {
            let grant = format!(
                r#"{{"specversion":"1.0","type":"credit.grant","id":"g-{kind}-{a}","source":"billing","subject":"acct-{a}","time":"2026-11-19T00:00:00Z","data":{{"kind":"{kind}","credits":{credits},"expires_at":{expiry}}}}}"#
            );
            book.process(&rules, grant.as_bytes(), start);
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
    for payload in &payloads {
        if let Outcome::Applied { .. } = book.process(&rules, payload, arrival).outcome {
            applied += 1;
        }
    }
    let elapsed = began.elapsed();
    assert_eq!(applied as usize, events);
    println!(
        "{events} events (parse, dedup, price, debit) in {:.3} s: {:.0} events/s on one core",
        elapsed.as_secs_f64(),
        events as f64 / elapsed.as_secs_f64()
    );
}
