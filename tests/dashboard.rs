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
