//! Webhook notices decided by the core: auto top-up once per crossing and re-armed above
//! the line, a cycle's allowance as a reset (not a grant of kind `included`), nothing for
//! accounts nobody listens to, and bad endpoints refused. Figures by hand.

mod common;

use chrono::{DateTime, TimeDelta, Utc};
use tally_core::hooks::{self, Notice, NoticeKind};
use tally_core::{Book, Credits, Outcome, Rules};

const MATRIX: &str = r#"
[[versions]]
name = "2026-01"
effective_from = "2026-01-01T00:00:00Z"
[versions.features]
text_to_image = { pool = "ai", cost = 8 }
video_generation = { pool = "ai", variants = { long = 100 } }
"#;

struct Harness {
    rules: Rules,
    book: Book,
    at: DateTime<Utc>,
    n: u32,
    global: bool,
    notices: Vec<Notice>,
}

impl Harness {
    fn new(global: bool) -> Harness {
        Harness {
            rules: common::rules(MATRIX),
            book: Book::default(),
            at: "2026-11-02T00:00:00Z".parse().expect("time"),
            n: 0,
            global,
            notices: Vec::new(),
        }
    }

    /// Applies one event a minute after the last; fails on anything but applied.
    fn event(&mut self, ty: &str, data: &str) {
        self.n += 1;
        self.at += TimeDelta::minutes(1);
        let payload = format!(
            r#"{{"specversion":"1.0","type":"{ty}","id":"e{}","source":"s","subject":"acme","time":"{}","data":{data}}}"#,
            self.n,
            self.at.to_rfc3339()
        );
        let step = self.book.process(&self.rules, payload.as_bytes(), self.at);
        assert!(
            matches!(step.outcome, Outcome::Applied { .. }),
            "{payload}: {:?}",
            step.outcome
        );
        let global = self.global;
        self.notices
            .extend(hooks::after_step(&mut self.book, &step, global));
    }

    fn refused(&mut self, data: &str) -> String {
        self.n += 1;
        let payload = format!(
            r#"{{"specversion":"1.0","type":"account.settings","id":"e{}","source":"s","subject":"acme","time":"{}","data":{data}}}"#,
            self.n,
            self.at.to_rfc3339()
        );
        match self
            .book
            .process(&self.rules, payload.as_bytes(), self.at)
            .outcome
        {
            Outcome::Rejected(r) => r.to_string(),
            other => panic!("{data}: {other:?}"),
        }
    }

    fn take(&mut self) -> Vec<(NoticeKind, String, Credits, Credits)> {
        std::mem::take(&mut self.notices)
            .into_iter()
            .map(|n| (n.kind, n.id, n.credits, n.balance))
            .collect()
    }
}

const HOOK: &str = r#"[{"id": "main", "url": "https://hooks.acme.example/t"}]"#;

#[test]
fn top_up_is_requested_once_per_crossing_and_rearmed_above_the_line() {
    let mut h = Harness::new(false);
    h.event("credit.grant", r#"{"kind": "purchased", "credits": 120}"#);
    h.event(
        "account.settings",
        &format!(r#"{{"webhooks": {HOOK}, "top_up": {{"below": 50, "credits": 500}}}}"#),
    );
    assert!(h.take().is_empty(), "120 is above the line");
    h.event(
        "ai.usage",
        r#"{"user": "u", "feature": "video_generation", "variant": "long"}"#,
    );
    // 120 - 100 = 20 < 50: the first request.
    assert_eq!(
        h.take(),
        [(
            NoticeKind::TopUpRequested,
            "acme/ai/credit.top_up_requested/1".to_string(),
            Credits::from_whole(500),
            Credits::from_whole(20)
        )]
    );
    h.event("ai.usage", r#"{"user": "u", "feature": "text_to_image"}"#);
    assert!(h.take().is_empty(), "12: still below, already requested");
    h.event("credit.grant", r#"{"kind": "purchased", "credits": 38}"#);
    assert!(
        h.take().is_empty(),
        "50: at the line, re-armed, nothing asked"
    );
    h.event("ai.usage", r#"{"user": "u", "feature": "text_to_image"}"#);
    // 42 < 50: a second crossing, numbered 2.
    assert_eq!(
        h.take(),
        [(
            NoticeKind::TopUpRequested,
            "acme/ai/credit.top_up_requested/2".to_string(),
            Credits::from_whole(500),
            Credits::from_whole(42)
        )]
    );
    // Switched off: nothing more, however low.
    h.event(
        "account.settings",
        r#"{"top_up": {"below": 50, "credits": 0}}"#,
    );
    h.event("ai.usage", r#"{"user": "u", "feature": "text_to_image"}"#);
    assert!(h.take().is_empty());
}

#[test]
fn a_plan_allowance_is_a_reset_and_a_grant_of_kind_included_is_not() {
    let mut h = Harness::new(true);
    h.event("account.plan", r#"{"plan": "pro"}"#);
    let got = h.take();
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0].0, NoticeKind::Reset);
    assert_eq!(got[0].2, Credits::from_whole(100));
    h.event("credit.grant", r#"{"kind": "included", "credits": 10}"#);
    assert!(h.take().is_empty(), "a billing system's grant is no reset");
    // The next cycle's allowance, when the clock reaches it.
    h.at = "2026-12-03T00:00:00Z".parse().expect("time");
    h.event("ai.usage", r#"{"user": "u", "feature": "text_to_image"}"#);
    let kinds: Vec<NoticeKind> = h.take().into_iter().map(|n| n.0).collect();
    assert!(kinds.contains(&NoticeKind::Reset), "{kinds:?}");
    // The old allowance (100 - its share of calls) expired with its cycle.
    assert!(kinds.contains(&NoticeKind::LotExpired), "{kinds:?}");
}

#[test]
fn nobody_listening_means_no_notices() {
    let mut h = Harness::new(false);
    h.event("account.plan", r#"{"plan": "pro"}"#);
    h.event(
        "ai.usage",
        r#"{"user": "u", "feature": "video_generation", "variant": "long"}"#,
    );
    h.event("ai.usage", r#"{"user": "u", "feature": "text_to_image"}"#);
    assert!(h.take().is_empty());
}

#[test]
fn endpoints_that_are_not_http_urls_are_refused() {
    let mut h = Harness::new(false);
    for (data, says) in [
        (
            r#"{"webhooks": [{"id": "a", "url": "ftp://x.example/"}]}"#,
            "not an http",
        ),
        (
            r#"{"webhooks": [{"id": "a", "url": "https://u:p@x.example/"}]}"#,
            "user name",
        ),
        (
            r#"{"webhooks": [{"id": "a b", "url": "https://x.example/"}]}"#,
            "letters",
        ),
        (
            r#"{"webhooks": [{"id": "a", "url": "https://x.example/", "events": ["credit.nope"]}]}"#,
            "unknown webhook event type",
        ),
        (
            r#"{"webhooks": [{"id": "a", "url": "https://x.example/"}, {"id": "a", "url": "https://y.example/"}]}"#,
            "twice",
        ),
        (r#"{"top_up": {"below": -1, "credits": 5}}"#, "between 0"),
    ] {
        let why = h.refused(data);
        assert!(why.contains(says), "{data}: {why}");
    }
}
