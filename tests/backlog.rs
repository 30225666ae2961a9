//! A backlog read on the real broker: grants sent, then a large usage backlog, all before
//! tally starts. Every call must be paid by the grants made before it, in the order of the
//! rules, and flex must be used only once every lot is empty, whether tally reads the
//! backlog in one go or is killed and restarted on the way. The expectation is computed by
//! hand from the rules (cheapest arithmetic: one feature, one price), not by a run of tally.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, Datelike, TimeDelta, Utc};
use common::{grant, rfc3339, test_seed, usage, Deployment};
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};

const ACCOUNTS: usize = 400;
const CALLS: usize = 100_000;
/// Account settings sent before the grants: about 25 MB, more than four of tansu's 5 MB
/// fetches (one byte budget shared by every partition of a fetch), so calls arrive while
/// the grants are still on the broker. The rule before KIP-695 waiting applied them (one
/// run: 163 settlements, 293 of 400 accounts paid wrongly); the rule now waits.
const SETTINGS: usize = 100_000;
/// text_to_image costs 8 credits in every version of the shipped matrix.
const PRICE: i64 = 8;
/// The shipped `rules.flex.threshold`.
const FLEX: i64 = 1000;

/// One account's grants and calls, and what the rules make of them, in whole credits.
struct Plan {
    promotional: i64,
    purchased: i64,
    /// When each call was made, in order.
    calls: Vec<DateTime<Utc>>,
}

impl Plan {
    /// (promotional left, purchased left, flex used, shortfall). Earliest expiry first:
    /// the promotional lot (30 days) before the purchased pack (never expires); then flex
    /// up to the threshold per calendar month of the account (Seoul, the default zone);
    /// what is left is shortfall.
    fn expected(&self) -> (i64, i64, i64, i64) {
        let (mut promotional, mut purchased) = (self.promotional, self.purchased);
        let (mut flex, mut shortfall) = (0, 0);
        let mut flex_by_month: BTreeMap<(i32, u32), i64> = BTreeMap::new();
        for at in &self.calls {
            let mut cost = PRICE;
            for lot in [&mut promotional, &mut purchased] {
                let take = cost.min(*lot);
                *lot -= take;
                cost -= take;
            }
            let local = at.with_timezone(&chrono_tz::Asia::Seoul);
            let month = flex_by_month
                .entry((local.year(), local.month()))
                .or_default();
            let take = cost.min(FLEX - *month);
            *month += take;
            flex += take;
            shortfall += cost - take;
        }
        (promotional, purchased, flex, shortfall)
    }
}

/// Grants three days ago, then calls one to three days after them, so a backlog read in
/// the wrong order pays calls with flex that the grants should have paid.
fn backlog(seed: u64) -> (Vec<Value>, Vec<Value>, BTreeMap<String, Plan>) {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let granted_at = Utc::now() - TimeDelta::days(3) - TimeDelta::hours(1);
    let mut grants = Vec::new();
    let mut plans = BTreeMap::new();
    for a in 0..ACCOUNTS {
        let account = format!("acct-{a:04}");
        let plan = Plan {
            promotional: rng.gen_range(0..=4) * 100,
            purchased: rng.gen_range(0..=6) * 250,
            calls: Vec::new(),
        };
        if plan.promotional > 0 {
            let expires = granted_at + TimeDelta::days(30);
            grants.push(grant(&format!("promo-{a}"), &account, granted_at,
                json!({"kind": "promotional", "credits": plan.promotional, "expires_at": rfc3339(expires)})));
        }
        if plan.purchased > 0 {
            grants.push(grant(
                &format!("pack-{a}"),
                &account,
                granted_at,
                json!({"kind": "purchased", "credits": plan.purchased, "expires_at": null}),
            ));
        }
        plans.insert(account, plan);
    }
    let first: DateTime<Utc> = granted_at + TimeDelta::days(1);
    let span = TimeDelta::days(2).num_milliseconds() - 3_600_000;
    let mut calls = Vec::with_capacity(CALLS);
    for i in 0..CALLS {
        let at = first + TimeDelta::milliseconds(span * i as i64 / CALLS as i64);
        // Uneven use: a third of the accounts make most of the calls.
        let a = if rng.gen_ratio(2, 3) {
            rng.gen_range(0..ACCOUNTS / 3)
        } else {
            rng.gen_range(0..ACCOUNTS)
        };
        let account = format!("acct-{a:04}");
        plans.get_mut(&account).expect("planned").calls.push(at);
        calls.push(usage(
            &format!("call-{i}"),
            &account,
            at,
            json!({"user": format!("user-{}", i % 7), "feature": "text_to_image"}),
        ));
    }
    (grants, calls, plans)
}

/// Checks every account's lots, flex and shortfall against the hand-computed expectation.
fn assert_paid_in_order(d: &Deployment, plans: &BTreeMap<String, Plan>, what: &str) {
    let lots = d.sql("SELECT account, kind, remaining FROM lots FINAL FORMAT TSV");
    let mut remaining: BTreeMap<(String, String), i64> = BTreeMap::new();
    for line in lots.lines() {
        let f: Vec<&str> = line.split('\t').collect();
        remaining.insert(
            (f[0].into(), f[1].into()),
            f[2].parse::<i64>().expect("milli"),
        );
    }
    // Flex paid and shortfall left, per account, from the usage rows of the ledger.
    let paid = d.sql(
        "SELECT account, \
         sum(arraySum(arrayFilter((c, l) -> l = 'flex', paid_credits, paid_lots))), \
         sum(shortfall) FROM ledger FINAL WHERE entry_type = 'usage' GROUP BY account \
         FORMAT TSV",
    );
    let paid: BTreeMap<String, (i64, i64)> = paid
        .lines()
        .map(|l| {
            let f: Vec<&str> = l.split('\t').collect();
            (
                f[0].to_string(),
                (f[1].parse().expect("milli"), f[2].parse().expect("milli")),
            )
        })
        .collect();
    let mut wrong = Vec::new();
    for (account, plan) in plans {
        let (promotional, purchased, flex_used, shortfall) = plan.expected();
        let (flex, shortfall_left) = paid.get(account).copied().unwrap_or_default();
        let got = (
            remaining
                .get(&(account.clone(), "promotional".into()))
                .copied()
                .unwrap_or(0),
            remaining
                .get(&(account.clone(), "purchased".into()))
                .copied()
                .unwrap_or(0),
            flex,
            shortfall_left,
        );
        let want = (
            promotional * 1000,
            purchased * 1000,
            flex_used * 1000,
            shortfall * 1000,
        );
        if got != want {
            wrong.push(format!(
                "{account} ({} calls, promotional {}, purchased {}): (promotional, purchased, \
                 flex, shortfall) left {got:?}, the rules say {want:?}",
                plan.calls.len(),
                plan.promotional,
                plan.purchased
            ));
        }
    }
    // Grants came before every call: nothing can have fallen short and been settled later.
    let settled = d.sql("SELECT count() FROM ledger FINAL WHERE entry_type = 'settlement'");
    assert!(
        wrong.is_empty() && settled.trim() == "0",
        "{what}: {} settlements; {} of {} accounts paid in the wrong order:\n{}",
        settled.trim(),
        wrong.len(),
        plans.len(),
        wrong[..wrong.len().min(10)].join("\n")
    );
}

fn send_backlog(seed: u64) -> (Deployment, BTreeMap<String, Plan>) {
    let (d, plans, held_back) = send_backlog_holding_back(seed, 0);
    debug_assert!(held_back.is_empty());
    (d, plans)
}

/// Sends the backlog but for its last `hold_back` calls, which it returns.
fn send_backlog_holding_back(
    seed: u64,
    hold_back: usize,
) -> (Deployment, BTreeMap<String, Plan>, Vec<Value>) {
    let (grants, mut calls, plans) = backlog(seed);
    let held_back = calls.split_off(calls.len() - hold_back);
    let d = Deployment::new(4);
    // Settings that change nothing the expectation depends on, before the grants, so the
    // commands backlog takes several fetches and the grants are not in the first ones.
    let at = Utc::now() - TimeDelta::days(4);
    let settings: Vec<Value> = (0..SETTINGS)
        .map(|i| {
            json!({"specversion": "1.0", "type": "account.settings", "id": format!("s-{i}"),
                   "source": "billing", "subject": format!("acct-{:04}", i % ACCOUNTS),
                   "time": rfc3339(at), "data": {"locale": if i % 2 == 0 { "en" } else { "ko" }}})
        })
        .collect();
    d.send(&settings);
    // Then the grants, then the calls: all before tally starts.
    d.send(&grants);
    d.send(&calls);
    (d, plans, held_back)
}

#[test]
fn a_usage_backlog_is_paid_by_the_grants_sent_before_it() {
    let (d, plans) = send_backlog(21);
    // No idle wait at all: the order must come from the broker's ends alone.
    let summary = d.drain_with(&[("TALLY_KAFKA__MAX_IDLE", "0s")]);
    assert_eq!(
        summary["applied"].as_u64(),
        Some((SETTINGS + CALLS + d_grants(&plans)) as u64),
        "{summary}"
    );
    assert!(
        summary["flushes"].as_u64().unwrap_or(0) >= 2,
        "one flush: {summary}"
    );
    assert_paid_in_order(&d, &plans, "straight through");
}

/// The same with the shipped `max_idle` and three SIGKILLs at seeded shares of the work.
/// The last calls are held back until the kills are done, so every kill falls mid-stream
/// however fast the machine is; everything before them is a backlog when tally starts.
#[test]
fn a_usage_backlog_read_with_restarts_is_paid_in_order() {
    let (d, plans, held_back) = send_backlog_holding_back(22, 2_000);
    let total = (SETTINGS + CALLS + d_grants(&plans)) as u64;
    let sent = total - held_back.len() as u64;
    let mut rng = rand::rngs::StdRng::seed_from_u64(test_seed("restart schedule"));
    let mut shares: Vec<u64> = (0..3).map(|_| rng.gen_range(10..=80)).collect();
    shares.sort_unstable();
    for share in &shares {
        let jitter = Duration::from_millis(rng.gen_range(0..100));
        d.run_and_kill_at(sent * share / 100, jitter);
    }
    let before_last = d.committed();
    d.send(&held_back);
    d.drain();
    eprintln!("backlog with SIGKILLs at {shares:?}% of the work, {before_last} committed before the last run");
    assert!(
        before_last < total,
        "{before_last} of {total} committed before the last run"
    );
    assert_paid_in_order(&d, &plans, "with restarts");
}

/// How many grants the backlog sent.
fn d_grants(plans: &BTreeMap<String, Plan>) -> usize {
    plans
        .values()
        .map(|p| usize::from(p.promotional > 0) + usize::from(p.purchased > 0))
        .sum::<usize>()
}
