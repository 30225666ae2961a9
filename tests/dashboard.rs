//! The dashboard in headless Chromium (Debian's `chromium`, installed by
//! scripts/stack-up.sh) against the real stack: every page, in English and Korean, loads
//! its data with no console errors; screenshots are kept under
//! target/artifacts/dashboard/.

mod common;

use std::path::PathBuf;
use std::process::Command;

use chrono::TimeDelta;
use common::server::{Server, ADMIN_KEY};
use common::{grant, hours_ago, rfc3339, usage, Deployment};
use serde_json::json;

const PAGES: [&str; 6] = [
    "overview", "usage", "history", "ledger", "monthly", "matrix",
];

fn chromium(profile: &std::path::Path, args: &[&str]) -> (String, String) {
    // A bound on the browser: a chromium that hangs is killed and fails the test.
    let out = Command::new("timeout")
        .args([
            "--kill-after=10",
            "180",
            "chromium",
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--enable-logging=stderr",
            "--v=0",
            "--window-size=1280,1400",
            // Lets the page's fetches and rendering finish before the dump or screenshot.
            "--virtual-time-budget=20000",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(args)
        .output()
        .expect("chromium runs (scripts/stack-up.sh installs it)");
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn every_dashboard_page_loads_without_console_errors() {
    let d = Deployment::new(2);
    let start = hours_ago(30);
    let mut events = vec![
        grant(
            "g-plan",
            "acme",
            start,
            json!({"kind": "included", "credits": 100,
              "expires_at": rfc3339(start + TimeDelta::days(10))}),
        ),
        grant(
            "g-pack",
            "acme",
            start,
            json!({"kind": "purchased", "credits": 200,
              "valid_days": 360, "payment": {"method": "card", "reference": "inv-9"}}),
        ),
        json!({"specversion": "1.0", "type": "account.settings", "id": "s-1", "source": "billing",
               "subject": "acme", "time": rfc3339(start),
               "data": {"admins": ["ops@acme.kr"], "alerts": {"low_balance": 250}}}),
    ];
    let services = ["image-studio", "brand-scan", "video-lab"];
    let users = ["kim@acme.kr", "lee@acme.kr", "park@acme.kr"];
    for i in 0..24i64 {
        let mut e = usage(
            &format!("u{i}"),
            "acme",
            start + TimeDelta::hours(i),
            json!({"user": users[(i % 3) as usize], "feature": "image_generation", "variant": "mid"}),
        );
        e["source"] = json!(services[(i % 3) as usize]);
        events.push(e);
    }
    d.send(&events);
    d.drain();
    let server = Server::start(&d, &[]);
    let artifacts = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/artifacts/dashboard");
    std::fs::create_dir_all(&artifacts).expect("artifacts folder");
    let from = (hours_ago(30) - TimeDelta::days(1)).date_naive();
    let to = hours_ago(0).date_naive() + TimeDelta::days(1);
    for lang in ["en", "ko"] {
        for page in PAGES {
            let url = format!(
                "{}/#key={ADMIN_KEY}&page={page}&account=acme&lang={lang}&from={from}&to={to}",
                server.base
            );
            let profile = tempdir(&format!("{page}-{lang}"));
            let (dom, log) = chromium(&profile, &["--dump-dom", &url]);
            assert!(
                dom.contains("data-state=\"ready\""),
                "{page}/{lang} never got ready: {dom}\n{log}"
            );
            assert!(
                dom.contains(&format!("data-page=\"{page}\"")),
                "{page}/{lang}: {dom}"
            );
            assert!(!dom.contains("data-errors"), "{page}/{lang} threw: {dom}");
            assert!(
                dom.contains("id=\"error\" class=\"error\" hidden"),
                "{page}/{lang} shows an error: {dom}"
            );
            for line in log.lines() {
                let lower = line.to_lowercase();
                assert!(
                    !(lower.contains("uncaught")
                        || lower.contains(":console")
                            && (lower.contains("error") || lower.contains("failed"))),
                    "{page}/{lang}: console error: {line}"
                );
            }
            match page {
                "overview" => {
                    assert!(dom.contains("data-pool=\"ai\""), "{dom}");
                    assert!(dom.contains("<svg"), "no chart: {dom}");
                    assert!(
                        dom.contains("id=\"notice\" class=\"notice\">"),
                        "no low-credit notice: {dom}"
                    );
                }
                "usage" => {
                    assert!(
                        dom.contains("video-lab") && dom.contains("park@acme.kr"),
                        "{dom}"
                    );
                }
                "history" => assert!(dom.contains("inv-9"), "{dom}"),
                "ledger" => assert!(dom.contains("image_generation/mid"), "{dom}"),
                "matrix" => assert!(dom.contains("text_to_image"), "{dom}"),
                _ => {}
            }
            let shot = artifacts.join(format!("{page}-{lang}.png"));
            let profile = tempdir(&format!("{page}-{lang}-shot"));
            let (_, log) = chromium(
                &profile,
                &[&format!("--screenshot={}", shot.display()), &url],
            );
            assert!(shot.is_file(), "no screenshot of {page}/{lang}: {log}");
        }
    }
}

/// A fresh, empty folder for one browser profile.
fn tempdir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("tally-chromium-{}-{name}", rand::random::<u64>()));
    std::fs::create_dir_all(&dir).expect("temp folder");
    dir
}

/// Point 4 and 5 of issue 21 on the real stack: an Asia/Seoul account's plan cycle shows
/// as Seoul's midnight with the zone named, in the dashboard and in `tally balance`, while
/// `--json` keeps RFC 3339; chart ticks are round; the summary page takes a day and a
/// custom range, with figures computed here by hand.
#[test]
fn account_time_round_ticks_and_custom_summary_ranges() {
    use chrono::{Datelike, Months, NaiveDate, TimeZone, Utc};
    let d = Deployment::new(2);
    let seoul = chrono_tz::Asia::Seoul;
    let plan_at = hours_ago(1);
    // The cycle holding `plan_at`: monthly cycles anchored at Seoul's midnight on the 1st
    // two months earlier start at midnight on the 1st of Seoul's month.
    let local = plan_at.with_timezone(&seoul);
    let first = NaiveDate::from_ymd_opt(local.year(), local.month(), 1).expect("a day");
    let at_midnight = |day: NaiveDate| {
        seoul
            .from_local_datetime(&day.and_hms_opt(0, 0, 0).expect("midnight"))
            .single()
            .expect("Seoul has no DST")
            .with_timezone(&Utc)
    };
    let cycle_start = at_midnight(first);
    let anchor = at_midnight(first - Months::new(2));
    // Days counted back from today (UTC); at 12:00 UTC, 21:00 in Seoul: the same day there.
    let today = Utc::now().date_naive();
    let noon = |days_ago: u64, minute: i64| {
        (today - chrono::Days::new(days_ago))
            .and_hms_opt(12, 0, 0)
            .expect("noon")
            .and_utc()
            + TimeDelta::minutes(minute)
    };
    let mut events = vec![
        json!({"specversion": "1.0", "type": "account.settings", "id": "s-1", "source": "billing",
               "subject": "seoul-co", "time": rfc3339(noon(7, 0)),
               "data": {"timezone": "Asia/Seoul"}}),
        grant(
            "g-pack",
            "seoul-co",
            noon(6, 0),
            json!({"kind": "purchased", "credits": 1000, "valid_days": 360}),
        ),
        json!({"specversion": "1.0", "type": "account.plan", "id": "p-1", "source": "billing",
               "subject": "seoul-co", "time": rfc3339(plan_at),
               "data": {"plan": "pro", "anchor": rfc3339(anchor)}}),
    ];
    // 10 credits a call (image_generation/mid): 3 calls 5 days ago, 2 calls 3 days ago,
    // 1 call 2 days ago.
    for (days_ago, calls) in [(5u64, 3i64), (3, 2), (2, 1)] {
        for i in 0..calls {
            events.push(usage(
                &format!("u{days_ago}-{i}"),
                "seoul-co",
                noon(days_ago, i),
                json!({"user": "kim@seoul.kr", "feature": "image_generation", "variant": "mid"}),
            ));
        }
    }
    d.send(&events);
    d.drain();

    // The CLI: the table in Seoul time naming the zone; the JSON in RFC 3339.
    let start_text = format!("{} 00:00 (Asia/Seoul)", first);
    let next_text = format!("{} 00:00 (Asia/Seoul)", first + Months::new(1));
    let table = d.tally_ok(&["balance", "seoul-co"]);
    assert!(
        table.contains(&format!("from {start_text} to {next_text}")),
        "the cycle in the account's time, zone named: {table}"
    );
    assert!(!table.contains("UTC"), "no UTC times in the table: {table}");
    let json = d.json(&["balance", "seoul-co"]);
    assert_eq!(json["timezone"], "Asia/Seoul", "{json}");
    let start_json = json["plan"]["cycle_start"].as_str().expect("cycle_start");
    assert_eq!(
        chrono::DateTime::parse_from_rfc3339(start_json).map(|t| t.with_timezone(&Utc)),
        Ok(cycle_start),
        "--json keeps RFC 3339: {json}"
    );

    let server = Server::start(&d, &[]);
    let (from, to) = (noon(8, 0).date_naive(), today);
    for lang in ["en", "ko"] {
        let base = format!(
            "{}/#key={ADMIN_KEY}&account=seoul-co&lang={lang}",
            server.base
        );
        // The overview: the cycle in Seoul time; the chart's ticks round.
        let dom = page(
            &format!("{base}&page=overview&from={from}&to={to}"),
            &format!("overview-{lang}"),
        );
        let plan = between(&dom, "id=\"plan\"", "</p>");
        assert!(
            plan.contains(&start_text) && plan.contains(&next_text),
            "{lang}: the cycle in the account's time, zone named: {plan}"
        );
        assert!(!plan.contains("UTC"), "{lang}: {plan}");
        let ticks = attr_values(&dom, "data-tick");
        assert!(ticks.len() >= 2, "{lang}: no axis ticks: {dom}");
        let step = ticks[1] - ticks[0];
        let power = 10f64.powf(step.log10().floor());
        let mantissa = step / power;
        assert!(
            [1.0, 2.0, 5.0, 10.0]
                .iter()
                .any(|m| (mantissa - m).abs() < 1e-9),
            "{lang}: the step {step} is not 1, 2 or 5 times a power of ten: {ticks:?}"
        );
        for (i, tick) in ticks.iter().enumerate() {
            assert!(
                (tick - step * i as f64).abs() < 1e-9,
                "{lang}: tick {i} is {tick}, not a multiple of {step}: {ticks:?}"
            );
        }
        // The highest day is 30 credits: the axis reaches it and ends at the next round tick.
        let top = ticks.last().copied().unwrap_or_default();
        assert!(
            (30.0..30.0 + step).contains(&top),
            "{lang}: top tick {top}: {ticks:?}"
        );

        // A custom range: 3 and 2 days ago. By hand: 1000 bought 6 days ago, 30 used 5 days
        // ago (carried forward 970), 20 + 10 used in the range, 940 left.
        let (r_from, r_to) = (noon(3, 0).date_naive(), noon(2, 0).date_naive());
        let dom = page(
            &format!("{base}&page=monthly&span=range&from={r_from}&to={r_to}"),
            &format!("range-{lang}"),
        );
        let title = between(&dom, "id=\"summary-title\"", "</h2>");
        assert!(
            title.contains(&format!("{r_from} – {r_to}")),
            "{lang}: {title}"
        );
        for (col, want) in [
            ("carried", 970.0),
            ("allocated", 0.0),
            ("consumed", 30.0),
            ("remaining", 940.0),
        ] {
            assert_eq!(
                cell(&dom, "ai/purchased", col),
                Some(want),
                "{lang}: range {r_from}..{r_to}, purchased {col}: {dom}"
            );
        }
        // One day, 5 days ago: 1000 carried, 30 used, 970 left.
        let day = noon(5, 0).date_naive();
        let dom = page(
            &format!("{base}&page=monthly&span=day&day={day}"),
            &format!("day-{lang}"),
        );
        for (col, want) in [
            ("carried", 1000.0),
            ("consumed", 30.0),
            ("remaining", 970.0),
        ] {
            assert_eq!(
                cell(&dom, "ai/purchased", col),
                Some(want),
                "{lang}: day {day}, purchased {col}: {dom}"
            );
        }
    }
}

/// The page at `url` once rendered, checked to be ready and free of errors.
fn page(url: &str, name: &str) -> String {
    let (dom, log) = chromium(&tempdir(name), &["--dump-dom", url]);
    assert!(
        dom.contains("data-state=\"ready\""),
        "{name} never got ready: {dom}\n{log}"
    );
    assert!(!dom.contains("data-errors"), "{name} threw: {dom}");
    assert!(
        dom.contains("id=\"error\" class=\"error\" hidden"),
        "{name} shows an error: {dom}"
    );
    dom
}

/// The text from `start` to the next `end` (empty when `start` is missing).
fn between<'a>(text: &'a str, start: &str, end: &str) -> &'a str {
    let Some(at) = text.find(start) else {
        return "";
    };
    let rest = &text[at..];
    &rest[..rest.find(end).unwrap_or(rest.len())]
}

/// Every value of attribute `name`, as numbers, in document order.
fn attr_values(dom: &str, name: &str) -> Vec<f64> {
    let marker = format!("{name}=\"");
    dom.match_indices(&marker)
        .filter_map(|(at, _)| {
            let rest = &dom[at + marker.len()..];
            rest[..rest.find('"')?].parse().ok()
        })
        .collect()
}

/// The figure in row `row`, column `col` of a table that names its cells.
fn cell(dom: &str, row: &str, col: &str) -> Option<f64> {
    let tr = between(dom, &format!("data-row=\"{row}\""), "</tr>");
    let td = between(tr, &format!("data-col=\"{col}\""), "</td>");
    attr_values(td, "data-value").first().copied()
}

/// Issue 26, points 2 and 3: an account on the pro plan (100 a month) that used 90 in a
/// day shows the 80% warning with the cheapest cover of a month at that rate, and when its
/// credits run out (before the reset), in English and Korean. By hand: 90 in 7 days is
/// 12.857 a day, 385.71 a month, 285.71 more than the plan: one 2,500 pack ($25) beats
/// enterprise ($35 more a month). Screenshots: target/artifacts/dashboard/runway-*.png.
#[test]
fn runway_and_a_recommendation_with_the_80_percent_warning() {
    let d = Deployment::new(1);
    let start = hours_ago(30);
    let mut events = vec![
        json!({"specversion": "1.0", "type": "account.plan", "id": "p-1",
        "source": "billing", "subject": "acme", "time": rfc3339(start),
        "data": {"plan": "pro"}}),
    ];
    for i in 0..9i64 {
        events.push(usage(
            &format!("u{i}"),
            "acme",
            start + TimeDelta::hours(2 + i),
            json!({"user": "kim@acme.kr", "feature": "image_generation", "variant": "mid"}),
        ));
    }
    d.send(&events);
    d.drain();
    let server = Server::start(&d, &[]);
    let artifacts = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/artifacts/dashboard");
    std::fs::create_dir_all(&artifacts).expect("artifacts folder");
    for (lang, warning, advice) in [
        (
            "en",
            "90% of this cycle's included ai credits are used.",
            "buy 1 pack(s) of 2500 credits for $25.00",
        ),
        (
            "ko",
            "이번 주기 기본 제공 ai 크레딧의 90%를 사용했습니다.",
            "2500 크레딧 충전 팩 1개 구매 ($25.00)",
        ),
    ] {
        let url = format!(
            "{}/#key={ADMIN_KEY}&page=overview&account=acme&lang={lang}",
            server.base
        );
        let dom = page(&url, &format!("runway-{lang}"));
        assert!(
            dom.contains("data-recommendation=\"buy_pack\""),
            "{lang}: {dom}"
        );
        assert!(dom.contains(warning), "{lang}: {dom}");
        assert!(dom.contains(advice), "{lang}: {dom}");
        // 10 left at 12.857 a day run out well before the cycle's end.
        let card = between(&dom, "data-runway=\"ai\"", "</div></div>");
        assert!(
            dom.contains("class=\"card warn\" data-runway=\"ai\""),
            "{lang}: {card}"
        );
        let shot = artifacts.join(format!("runway-{lang}.png"));
        let (_, log) = chromium(
            &tempdir(&format!("runway-{lang}-shot")),
            &[&format!("--screenshot={}", shot.display()), &url],
        );
        assert!(shot.is_file(), "no screenshot in {lang}: {log}");
    }
}
