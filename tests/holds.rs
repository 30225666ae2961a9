//! Checks and holds through `tally serve`, routed to the `tally run` that owns the
//! account's partition, against the real stack: a check counts what the owner applied and
//! has not flushed yet; N concurrent holds on credits for M < N grant exactly M, also when
//! `tally run` is SIGKILLed and restarted in the middle (every hold answered 201 is open in
//! the committed state); settlement by a usage event, release by DELETE and expiry by the
//! partition clock, with the figures computed by hand.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{TimeDelta, Utc};
use common::free_port;
use common::server::{Answer, Server, ACME_KEY, ACME_SERVICE_KEY, ADMIN_KEY, GLOBEX_SERVICE_KEY};
use common::{grant, metric_value, milli, rfc3339, usage, Deployment, Running};
use serde_json::{json, Value};

/// erase costs 7 credits (config/matrix.toml).
const COST: i64 = 7;

/// A `tally run` that is SIGKILLed if the test fails before stopping it.
struct Run(Option<Running>);

impl Run {
    fn take(&mut self) -> Running {
        self.0.take().expect("a running tally run")
    }
}

impl Drop for Run {
    fn drop(&mut self) {
        if let Some(mut run) = self.0.take() {
            let _ = run.kill();
            let _ = run.wait();
        }
    }
}

/// `tally run` with its status endpoint (where it answers checks and holds) on `port`.
fn start_run(d: &Deployment, port: u16, env: &[(&str, &str)]) -> Run {
    let listen = format!("127.0.0.1:{port}");
    let mut all: Vec<(&str, &str)> = vec![("TALLY_STATUS__LISTEN", &listen)];
    all.extend_from_slice(env);
    Run(Some(d.spawn_run(&[], &all)))
}

/// SIGTERM: `tally run` flushes, commits and exits 0.
fn stop_run(mut run: Run) {
    let run = run.take();
    let status = Command::new("kill")
        .args(["-TERM", &run.id().to_string()])
        .status()
        .expect("kill runs");
    let out = run.wait_with_output().expect("tally run exits");
    assert!(
        status.success(),
        "tally run had exited ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "tally run failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn post_json(server: &Server, path: &str, key: &str, body: &Value) -> Answer {
    server.post(path, key, "application/json", &body.to_string())
}

fn check(server: &Server, key: &str, account: &str) -> Answer {
    post_json(
        server,
        "/v1/check",
        key,
        &json!({"account": account, "feature": "erase"}),
    )
}

fn hold(server: &Server, id: &str, ttl: u32) -> Answer {
    post_json(
        server,
        "/v1/holds",
        ADMIN_KEY,
        &json!({"id": id, "account": "acme", "feature": "erase", "ttl": ttl}),
    )
}

/// Asks for the check until `done` holds of it: a wait for the owner to apply what was
/// sent, bounded, never a sleep standing in for it.
fn check_until(server: &Server, what: &str, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let answer = check(server, ADMIN_KEY, "acme");
        if answer.status == 200 {
            let body = answer.json();
            if done(&body) {
                return body;
            }
        }
        assert!(
            Instant::now() < deadline,
            "{what}: the check never got there: {} {}",
            answer.status,
            answer.body
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Credits for `holds` erase holds on acme, no flex (so only the lot can be reserved).
fn seed(d: &Deployment, holds: i64) {
    let at = Utc::now() - TimeDelta::minutes(5);
    let mut settings = grant("s-acme", "acme", at, json!({"flex": {"enabled": false}}));
    settings["type"] = json!("account.settings");
    d.send(&[
        settings,
        grant(
            "g-acme",
            "acme",
            at,
            json!({"lot": "pack", "kind": "promotional", "credits": holds * COST}),
        ),
    ]);
}

/// Sends `n` holds at once, each retried with its id until it gets 201 or 402; returns
/// the final status by hold id.
fn concurrent_holds(server: &Arc<Server>, n: usize, ttl: u32) -> BTreeMap<String, u16> {
    holds_in(server, 0..n, ttl)
}

/// `concurrent_holds` for the holds numbered `range`.
fn holds_in(
    server: &Arc<Server>,
    range: std::ops::Range<usize>,
    ttl: u32,
) -> BTreeMap<String, u16> {
    let results = Arc::new(Mutex::new(BTreeMap::new()));
    let threads: Vec<_> = range
        .map(|i| {
            let (server, results) = (server.clone(), results.clone());
            std::thread::spawn(move || {
                let id = format!("h-{i:02}");
                let deadline = Instant::now() + Duration::from_secs(300);
                loop {
                    let answer = hold(&server, &id, ttl);
                    match answer.status {
                        201 | 402 => {
                            results
                                .lock()
                                .expect("results")
                                .insert(id.clone(), answer.status);
                            break;
                        }
                        // Unavailable or timed out (the owner is down or moving): the same id
                        // again is safe.
                        0 | 503 | 504 => {}
                        other => panic!("hold {id}: unexpected {other}: {}", answer.body),
                    }
                    assert!(Instant::now() < deadline, "hold {id} never answered");
                }
            })
        })
        .collect();
    for t in threads {
        t.join().expect("a hold thread");
    }
    Arc::try_unwrap(results)
        .expect("threads done")
        .into_inner()
        .expect("results")
}

/// The committed state of acme: its holds by id, from the latest complete checkpoint.
fn committed_holds(d: &Deployment) -> BTreeMap<String, Value> {
    committed_holds_of(d, "acme")
}

/// The committed holds of `account`.
fn committed_holds_of(d: &Deployment, account: &str) -> BTreeMap<String, Value> {
    // States are stored in tally's binary form: read the bytes as hex and decode them with
    // tally's own codec (its JSON states of earlier versions load the same way).
    let hex = d.sql(&format!(
        "SELECT hex(argMax(state, version)) FROM checkpoints WHERE row_kind = 'state' \
         AND account = '{account}' AND version IN \
         (SELECT version FROM checkpoints WHERE row_kind = 'offsets')"
    ));
    let hex = hex.trim();
    let bytes: Vec<u8> = (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).expect("hex"))
        .collect();
    let decoded = tally::store::state_codec::decode(&bytes).expect("a stored state");
    let state = serde_json::to_value(&decoded).expect("state JSON");
    state["holds"]
        .as_object()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .collect()
}

/// Records of both topics the `tally run` on `port` has applied (0 while it does not answer).
fn applied(port: u16) -> u64 {
    let out = Command::new("curl")
        .args(["-sf", "--max-time", "2"])
        .arg(format!("http://127.0.0.1:{port}/status"))
        .output()
        .expect("curl runs");
    let status: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    status["partitions"]
        .as_array()
        .map(|parts| {
            parts
                .iter()
                .map(|p| {
                    p["usage_applied"].as_u64().unwrap_or(0)
                        + p["commands_applied"].as_u64().unwrap_or(0)
                })
                .sum()
        })
        .unwrap_or(0)
}

fn open_ids(holds: &BTreeMap<String, Value>) -> BTreeSet<String> {
    holds
        .iter()
        .filter(|(_, h)| h["status"] == "open")
        .map(|(id, _)| id.clone())
        .collect()
}

#[test]
fn check_counts_what_is_applied_before_any_flush_and_keys_are_scoped() {
    let d = Deployment::new(3);
    let port = free_port();
    // No flush for an hour unless a hold's answer asks for one: whatever the check sees
    // before the first hold is applied and not flushed.
    let run = start_run(&d, port, &[("TALLY_PIPELINE__FLUSH_INTERVAL", "1h")]);
    let server = Server::start(&d, &[]);
    seed(&d, 3);
    let seen = check_until(&server, "the grant", |c| milli(&c["available"]) == 21_000);
    assert_eq!(seen["allowed"], true, "{seen}");
    assert_eq!(milli(&seen["cost"]), 7_000, "{seen}");
    assert_eq!(seen["pool"], "ai");
    assert_eq!(milli(&seen["held"]), 0);
    assert!(
        seen["freshness"]["commands_applied"].as_i64() >= Some(2),
        "{seen}"
    );
    // Nothing flushed: ClickHouse knows nothing of acme yet.
    assert_eq!(d.committed(), 0, "no checkpoint yet");
    let balance = d.balance("acme");
    assert!(
        balance["pools"].as_object().is_none_or(|p| p.is_empty()),
        "{balance}"
    );

    // A hold is answered once committed; the check then shows it held.
    let held = hold(&server, "h-1", 600);
    assert_eq!(held.status, 201, "{}", held.body);
    let body = held.json();
    assert_eq!(body["hold"]["id"], "h-1");
    assert_eq!(body["hold"]["status"], "open");
    assert_eq!(body["repeated"], false);
    assert_eq!(milli(&body["hold"]["credits"]), 7_000);
    assert_eq!(body["hold"]["reserved"][0]["lot"], "pack");
    let after = check(&server, ACME_SERVICE_KEY, "acme").json();
    assert_eq!(milli(&after["available"]), 14_000, "{after}");
    assert_eq!(milli(&after["held"]), 7_000, "{after}");
    // The same id again: the same hold, repeated.
    let again = hold(&server, "h-1", 600);
    assert_eq!(again.status, 201, "{}", again.body);
    assert_eq!(again.json()["repeated"], true);
    // The same id with other terms: the owner rejects it.
    let other = hold(&server, "h-1", 60);
    assert_eq!(other.status, 409, "{}", other.body);
    // balance shows it apart, from the committed state.
    let ai = &d.balance("acme")["pools"]["ai"];
    assert_eq!(milli(&ai["available"]), 14_000, "{ai}");
    assert_eq!(milli(&ai["held"]), 7_000, "{ai}");

    // Keys: another account's service key may not check or hold acme, nor may acme's own
    // read key.
    let forbidden = check(&server, GLOBEX_SERVICE_KEY, "acme");
    assert_eq!(forbidden.status, 403, "{}", forbidden.body);
    let forbidden = post_json(
        &server,
        "/v1/holds",
        GLOBEX_SERVICE_KEY,
        &json!({"id": "x", "account": "acme", "feature": "erase", "ttl": 60}),
    );
    assert_eq!(forbidden.status, 403, "{}", forbidden.body);
    assert_eq!(check(&server, GLOBEX_SERVICE_KEY, "globex").status, 200);
    assert_eq!(check(&server, ACME_KEY, "acme").status, 403);
    // Bad input names the parameter.
    for (body, param) in [
        (json!({"account": "acme", "feature": "teleport"}), "feature"),
        (
            json!({"account": "acme", "feature": "erase", "quantity": "1.0001"}),
            "quantity",
        ),
        (
            json!({"account": "acme", "feature": "erase", "colour": 1}),
            "colour",
        ),
    ] {
        let answer = post_json(&server, "/v1/check", ADMIN_KEY, &body);
        assert_eq!(answer.status, 400, "{body}: {}", answer.body);
        assert_eq!(answer.json()["parameter"], param, "{body}: {}", answer.body);
    }
    let bad_ttl = post_json(
        &server,
        "/v1/holds",
        ADMIN_KEY,
        &json!({"id": "h-2", "account": "acme", "feature": "erase", "ttl": 0}),
    );
    assert_eq!(bad_ttl.status, 400, "{}", bad_ttl.body);
    assert_eq!(bad_ttl.json()["parameter"], "ttl");
    stop_run(run);
}

#[test]
fn concurrent_holds_grant_exactly_what_credits_cover_then_settle_release_expire() {
    const N: usize = 20;
    const M: i64 = 7;
    let d = Deployment::new(3);
    let port = free_port();
    let run = start_run(&d, port, &[]);
    let server = Arc::new(Server::start(&d, &[]));
    seed(&d, M);
    check_until(&server, "the grant", |c| {
        milli(&c["available"]) == M * COST * 1000
    });

    let results = concurrent_holds(&server, N, 3600);
    let granted: BTreeSet<String> = results
        .iter()
        .filter(|(_, s)| **s == 201)
        .map(|(id, _)| id.clone())
        .collect();
    assert_eq!(granted.len() as i64, M, "{results:?}");
    assert_eq!(
        results.values().filter(|s| **s == 402).count(),
        N - M as usize
    );
    let ai = &d.balance("acme")["pools"]["ai"];
    assert_eq!(milli(&ai["available"]), 0, "{ai}");
    assert_eq!(milli(&ai["held"]), M * COST * 1000, "{ai}");
    // A refusal says what is there.
    let refused = hold(&server, "h-late", 3600);
    assert_eq!(refused.status, 402, "{}", refused.body);
    let refused = refused.json();
    assert_eq!(milli(&refused["check"]["available"]), 0);
    assert_eq!(milli(&refused["check"]["held"]), M * COST * 1000);

    let mut ids = granted.iter();
    let (settled, released) = (
        ids.next().expect("a hold").clone(),
        ids.next().expect("a hold").clone(),
    );
    // Settle one with the call's usage event.
    let call_at = Utc::now();
    d.send(&[usage(
        "call-1",
        "acme",
        call_at,
        json!({"user": "kim@acme.kr", "feature": "erase", "hold": settled}),
    )]);
    // Release one.
    let answer = server.curl(
        &format!("/v1/holds/{released}?account=acme"),
        &[
            "-X",
            "DELETE",
            "-H",
            &format!("Authorization: Bearer {ADMIN_KEY}"),
        ],
    );
    assert_eq!(answer.status, 200, "{}", answer.body);
    let body = answer.json();
    assert_eq!(body["was_open"], true);
    assert_eq!(body["hold"]["status"], "released");
    // The settlement is applied (held 49 - 7 settled - 7 released = 35, 7 free).
    check_until(&server, "settle and release", |c| {
        milli(&c["held"]) == 35_000 && milli(&c["available"]) == 7_000
    });
    // A short hold on the freed credits, expired by the partition clock.
    let short = hold(&server, "h-short", 60);
    assert_eq!(short.status, 201, "{}", short.body);
    let expires_at = short.json()["hold"]["expires_at"]
        .as_str()
        .expect("expires_at")
        .to_string();
    let expires = chrono::DateTime::parse_from_rfc3339(&expires_at).expect("a time");
    d.tally_ok(&[
        "tick",
        "--at",
        &rfc3339(expires.with_timezone(&Utc) + TimeDelta::seconds(1)),
    ]);
    check_until(&server, "the expiry", |c| {
        milli(&c["held"]) == 35_000 && milli(&c["available"]) == 7_000
    });
    // Each answered hold or release (N + h-late + the release + h-short) timed its phases:
    // an answer follows at least one produce.
    let metrics = server.get("/metrics", None).body;
    let count = |phase: &str| -> u64 {
        let series = format!("tally_hold_phase_seconds_count{{phase=\"{phase}\"}}");
        metric_value(&metrics, &series).unwrap_or_else(|| panic!("no {series} in {metrics}")) as u64
    };
    let (produced, answered) = (count("produce"), count("answer"));
    assert!(answered >= N as u64 + 3, "{answered} answers timed");
    assert!(
        produced >= answered,
        "{produced} produced, {answered} answered"
    );
    stop_run(run);

    // By hand: 49 granted; the call paid 7 from its hold; one released, one expired:
    // 42 left in the lot, 35 held by the 5 holds still open, 7 available.
    let ai = &d.balance("acme")["pools"]["ai"];
    assert_eq!(milli(&ai["available"]), 7_000, "{ai}");
    assert_eq!(milli(&ai["held"]), 35_000, "{ai}");
    let ledger = d.ledger("acme");
    let call = ledger
        .iter()
        .find(|row| row["event_id"] == "call-1")
        .expect("the call's ledger row");
    assert_eq!(milli(&call["credits"]), 7_000, "{call}");
    let expiry: Vec<&Value> = ledger
        .iter()
        .filter(|row| row["type"] == "hold_expired")
        .collect();
    assert_eq!(expiry.len(), 1, "{ledger:?}");
    assert_eq!(milli(&expiry[0]["credits"]), 0);
    let holds = committed_holds(&d);
    assert_eq!(holds[&settled]["status"], "settled");
    assert_eq!(holds[&released]["status"], "released");
    assert_eq!(holds["h-short"]["status"], "expired");
    assert_eq!(open_ids(&holds).len(), 5);
}

#[test]
fn holds_grant_exactly_what_credits_cover_across_sigkills() {
    const N: usize = 40;
    const M: i64 = 14;
    let seed_value = common::test_seed("hold kills");
    let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(seed_value);
    let d = Deployment::new(3);
    let port = free_port();
    // Answers wait for their flush: a long hold timeout is not needed, a short one makes
    // the clients retry across the kills.
    let server = Arc::new(Server::start(&d, &[("TALLY_SERVE__HOLD_TIMEOUT", "3s")]));
    seed(&d, M);
    let mut run = start_run(&d, port, &[]);
    check_until(&server, "the grant", |c| {
        milli(&c["available"]) == M * COST * 1000
    });
    // The seed's two commands committed: what follows are holds.
    let deadline = Instant::now() + Duration::from_secs(60);
    while d.committed() < 2 {
        assert!(Instant::now() < deadline, "the seed never committed");
        std::thread::sleep(Duration::from_millis(10));
    }
    let base = d.committed();
    // Three waves of concurrent holds; each wave is under way when `tally run` is killed,
    // once the checkpoints cover a random number of hold commands more. Waves overlap:
    // the next starts right after the restart, while the new owner loads and replays.
    let wave = N / 3 + 1;
    let mut waves = Vec::new();
    let mut from = base;
    for kill in 0..3 {
        let clients = {
            let server = server.clone();
            let range = (kill * wave).min(N)..((kill + 1) * wave).min(N);
            std::thread::spawn(move || holds_in(&server, range, 3600))
        };
        // Kills 0 and 2 by records applied, not committed: between the owner's decisions
        // and the flush that lets them be answered, or during that flush (or the replay).
        // Kill 1 by records committed: after some answers went out.
        let target = from + rand::Rng::gen_range(&mut rng, 1..=8u64);
        let progress = || {
            if kill == 1 {
                d.committed()
            } else {
                applied(port)
            }
        };
        let deadline = Instant::now() + Duration::from_secs(120);
        while progress() < target && !clients.is_finished() {
            assert!(Instant::now() < deadline, "no progress to {target}");
            std::thread::sleep(Duration::from_millis(2));
        }
        let in_flight = !clients.is_finished();
        let mut killed = run.take();
        killed.kill().expect("SIGKILL");
        killed.wait().expect("reaped");
        from = d.committed();
        println!(
            "kill {kill}: at {from} committed records, wave {kill} still waiting: {in_flight}"
        );
        run = start_run(&d, port, &[]);
        waves.push(clients);
    }
    let mut results = BTreeMap::new();
    for clients in waves {
        results.extend(clients.join().expect("a wave of clients"));
    }
    assert_eq!(results.len(), N);
    // The last process is up and owns the partitions before it is stopped.
    check_until(&server, "the last restart", |_| true);
    stop_run(run);
    let granted: BTreeSet<String> = results
        .iter()
        .filter(|(_, s)| **s == 201)
        .map(|(id, _)| id.clone())
        .collect();
    assert_eq!(granted.len() as i64, M, "{results:?}");
    let holds = committed_holds(&d);
    let open = open_ids(&holds);
    assert_eq!(open.len() as i64, M, "{holds:?}");
    assert_eq!(
        granted, open,
        "every hold answered 201 is open, and only those"
    );
    let ai = &d.balance("acme")["pools"]["ai"];
    assert_eq!(milli(&ai["available"]), 0, "{ai}");
    assert_eq!(milli(&ai["held"]), M * COST * 1000, "{ai}");
}

/// A partition moves to a process at another address (a static split, its owner SIGKILLed
/// and the partition given to a new process): `tally serve` finds the new owner from the
/// claim rows, the hold answered before the move is still there (the same id answers it,
/// `repeated`), and the other partition's owner goes on answering.
#[test]
fn holds_follow_a_partition_to_its_new_owner() {
    let d = Deployment::new(2);
    // One account in each partition, by the producers' partitioner.
    let accounts: Vec<String> = (0..)
        .map(|i| format!("acct-{i}"))
        .scan(BTreeSet::new(), |seen, account| {
            let partition = tally::holds::partition_of(&account, 2, Default::default());
            Some(seen.insert(partition).then_some(account))
        })
        .flatten()
        .take(2)
        .collect();
    let (first, second) = (&accounts[0], &accounts[1]);
    let (p_first, p_second) = (
        tally::holds::partition_of(first, 2, Default::default()),
        tally::holds::partition_of(second, 2, Default::default()),
    );
    let at = Utc::now() - TimeDelta::minutes(5);
    let mut events = Vec::new();
    for account in [first, second] {
        let mut settings = grant(
            &format!("s-{account}"),
            account,
            at,
            json!({"flex": {"enabled": false}}),
        );
        settings["type"] = json!("account.settings");
        events.push(settings);
        events.push(grant(
            &format!("g-{account}"),
            account,
            at,
            json!({"lot": "pack", "kind": "promotional", "credits": 3 * COST}),
        ));
    }
    d.send(&events);
    let owner = |partition: i32, port: u16| {
        start_run(
            &d,
            port,
            &[("TALLY_KAFKA__ASSIGNMENT", &partition.to_string())],
        )
    };
    let first_owner = owner(p_first, free_port());
    let mut second_owner = owner(p_second, free_port());
    let server = Server::start(&d, &[("TALLY_SERVE__HOLD_TIMEOUT", "3s")]);
    let hold_on = |account: &str, id: &str| {
        post_json(
            &server,
            "/v1/holds",
            ADMIN_KEY,
            &json!({"id": id, "account": account, "feature": "erase", "ttl": 3600}),
        )
    };
    let until_answered = |account: &str, id: &str| {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let answer = hold_on(account, id);
            if answer.status != 503 && answer.status != 504 {
                return answer;
            }
            assert!(Instant::now() < deadline, "hold {id} never answered");
        }
    };
    let before = until_answered(second, "x-1");
    assert_eq!(before.status, 201, "{}", before.body);
    assert_eq!(until_answered(first, "y-1").status, 201);

    // The second partition's owner dies; a new process at another address takes it.
    let mut killed = second_owner.take();
    killed.kill().expect("SIGKILL");
    killed.wait().expect("reaped");
    second_owner = owner(p_second, free_port());
    let again = until_answered(second, "x-1");
    assert_eq!(again.status, 201, "{}", again.body);
    assert_eq!(again.json()["repeated"], true, "{}", again.body);
    let next = until_answered(second, "x-2");
    assert_eq!(next.status, 201, "{}", next.body);
    assert_eq!(next.json()["repeated"], false);
    assert_eq!(until_answered(first, "y-2").status, 201);
    let checked = check(&server, ADMIN_KEY, second).json();
    assert_eq!(milli(&checked["held"]), 2 * COST * 1000, "{checked}");
    assert_eq!(milli(&checked["available"]), COST * 1000, "{checked}");
    stop_run(first_owner);
    stop_run(second_owner);
    assert_eq!(
        open_ids(&committed_holds_of(&d, second)),
        BTreeSet::from(["x-1".to_string(), "x-2".to_string()])
    );
    assert_eq!(
        open_ids(&committed_holds_of(&d, first)),
        BTreeSet::from(["y-1".to_string(), "y-2".to_string()])
    );
}
