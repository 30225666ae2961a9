//! tally on a ClickHouse cluster (`scripts/stack-cluster.sh`, started here when it is not
//! up): a replica SIGKILLed mid-stream loses no credit, and two shards written by two
//! `tally run` processes read back through the Distributed tables; both checked against
//! the reference model of the rules.

mod common;

use std::collections::BTreeMap;
use std::process::Command;
use std::time::{Duration, Instant};

use chrono::Utc;
use common::server::{Server, ADMIN_KEY};
use common::{cut_at, expected, milli, test_seed, workload, Deployment, WAIT_LIMIT};
use rand::{Rng, SeedableRng};
use serde_json::Value;

/// Starts the cluster, or checks it is up (and starts any server that is down), and returns
/// the addresses the script wrote to .stack/cluster.env.
fn cluster() -> BTreeMap<String, String> {
    let root = env!("CARGO_MANIFEST_DIR");
    let status = Command::new("bash")
        .arg(format!("{root}/scripts/stack-cluster.sh"))
        .status()
        .expect("stack-cluster.sh runs");
    assert!(status.success(), "scripts/stack-cluster.sh failed");
    let text = std::fs::read_to_string(format!("{root}/.stack/cluster.env"))
        .expect(".stack/cluster.env written by the script");
    text.lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// A deployment whose tables live on `cluster`, created by `tally migrate` through `url`;
/// its two databases are dropped `ON CLUSTER` at the end (kept after a failure, to look
/// at).
struct OnCluster {
    d: Deployment,
    cluster: String,
}

impl OnCluster {
    fn new(partitions: i32, cluster: &str, url: &str, shards: &str) -> OnCluster {
        let env = vec![
            ("TALLY_CLICKHOUSE__URL".to_string(), url.to_string()),
            (
                "TALLY_CLICKHOUSE__CLUSTER__NAME".to_string(),
                cluster.to_string(),
            ),
            (
                "TALLY_CLICKHOUSE__CLUSTER__SHARDS".to_string(),
                shards.to_string(),
            ),
        ];
        OnCluster {
            d: Deployment::with_env(partitions, env, url.to_string()),
            cluster: cluster.to_string(),
        }
    }

    /// The database of the Replicated tables on each server.
    fn local(&self) -> String {
        format!("{}_local", self.d.database)
    }

    /// SQL on one server's own (Replicated) tables.
    fn sql_on(&self, url: &str, query: &str) -> String {
        self.view(url, &self.local()).sql(query)
    }

    /// The deployment as seen on `url` in `database`, for reads only.
    fn view(&self, url: &str, database: &str) -> std::mem::ManuallyDrop<Deployment> {
        // Never dropped: the databases are this deployment's, dropped once, on the cluster.
        std::mem::ManuallyDrop::new(Deployment {
            name: self.d.name.clone(),
            usage_topic: self.d.usage_topic.clone(),
            commands_topic: self.d.commands_topic.clone(),
            dlq_topic: self.d.dlq_topic.clone(),
            database: database.to_string(),
            partitions: self.d.partitions,
            extra_env: self.d.extra_env.clone(),
            sql_url: url.to_string(),
        })
    }
}

impl Drop for OnCluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            return;
        }
        for db in [self.d.database.clone(), self.local()] {
            let _ = Command::new("curl")
                .args(["-s", &format!("{}/", self.d.sql_url), "--data-binary"])
                .arg(format!(
                    "DROP DATABASE IF EXISTS {db} ON CLUSTER {}",
                    self.cluster
                ))
                .output();
        }
    }
}

/// SIGKILLs the server whose pid file is `pid_file` and waits (bounded) until it is gone.
fn sigkill(pid_file: &str) {
    let pid = std::fs::read_to_string(pid_file)
        .unwrap_or_else(|e| panic!("{pid_file}: {e}"))
        .trim()
        .to_string();
    let killed = Command::new("kill")
        .args(["-KILL", &pid])
        .status()
        .expect("kill runs");
    assert!(killed.success(), "SIGKILL to {pid} failed");
    let deadline = Instant::now() + Duration::from_secs(60);
    while Command::new("kill")
        .args(["-0", &pid])
        .stderr(std::process::Stdio::null())
        .status()
        .expect("kill runs")
        .success()
    {
        assert!(Instant::now() < deadline, "{pid} still alive after SIGKILL");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `tally_flush_failures_total` over every phase, from `tally run`'s `/metrics` at
/// `status` (0 while it does not answer yet).
fn flush_failures(status: &str) -> u64 {
    let out = Command::new("curl")
        .args(["-s", &format!("http://{status}/metrics")])
        .output()
        .expect("curl runs");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.starts_with("tally_flush_failures_total"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

/// What the balances table says each account has available in the `ai` pool, and what
/// the rules say: the remaining credits of its lots (the workloads grant only `ai` lots,
/// none of which expires or is voided within the run).
fn assert_balances(d: &Deployment, want: &expected::Expected, what: &str) {
    let mut expected: BTreeMap<String, i64> = BTreeMap::new();
    for ((account, _), remaining) in &want.lots {
        *expected.entry(account.clone()).or_default() += remaining;
    }
    let got: BTreeMap<String, i64> = d
        .sql("SELECT account, available FROM balances FINAL WHERE pool = 'ai' FORMAT TSV")
        .lines()
        .filter_map(|l| l.split_once('\t'))
        .map(|(a, v)| (a.to_string(), v.parse().expect("available")))
        .collect();
    assert_eq!(got, expected, "{what}: available credits per account");
}

#[test]
fn a_replica_sigkilled_mid_stream_and_started_again_loses_no_credit() {
    let env = cluster();
    let (r1, r2) = (&env["CLUSTER_REPLICATED_R1"], &env["CLUSTER_REPLICATED_R2"]);
    let c = OnCluster::new(4, "tally_replicated", r1, &format!("{r1},{r2}"));
    let d = &c.d;
    let mut rng = rand::rngs::StdRng::seed_from_u64(test_seed("replica kill"));
    // The stream in two parts: the second is sent only after the kill, so the kill falls
    // mid-stream however fast the machine is. Without the mid-stream top-ups in the second
    // part: a grant sent while `tally run` reads may meet its calls in another order than
    // the rules' backlog order (arrival order is real input), which is not under test.
    let mut events = workload(200, 40_000, 24);
    let first = cut_at(&events, events.len() * rng.gen_range(40..=70) / 100);
    let later = events.split_off(first);
    events.extend(
        later
            .into_iter()
            .filter(|e| !e["id"].as_str().unwrap_or_default().starts_with("topup-")),
    );
    d.send(&events[..first]);
    // Small batches, so the checkpoints move in steps and the kill falls between two.
    let status = format!("127.0.0.1:{}", common::free_port());
    let mut run = d.spawn_run(
        &[],
        &[
            ("TALLY_PIPELINE__MAX_BATCH_EVENTS", "2000"),
            ("TALLY_STATUS__LISTEN", &status),
        ],
    );
    let target = (first * rng.gen_range(10..=90) / 100) as u64;
    d.wait_committed(target, &mut [&mut run], "before the replica's SIGKILL");
    let (victim, survivor) = if rng.gen_bool(0.5) {
        ("R1", r2)
    } else {
        ("R2", r1)
    };
    sigkill(&env[&format!("CLUSTER_REPLICATED_{victim}_PID")]);
    // What the checkpoints covered at the kill, on the replica that is up.
    let at_kill: u64 = c
        .sql_on(
            survivor,
            "SELECT sum(u) + sum(c) FROM (SELECT partition, argMax(usage_offset, version) AS u, \
             argMax(commands_offset, version) AS c FROM checkpoints \
             WHERE row_kind = 'offsets' GROUP BY partition)",
        )
        .trim()
        .parse()
        .unwrap_or(0);
    d.send(&events[first..]);
    // While it is down every flush fails for want of its quorum and is retried: the restart
    // waits until tally has met that (the second part cannot commit without it).
    let deadline = Instant::now() + WAIT_LIMIT;
    while flush_failures(&status) == 0 {
        assert!(
            run.try_wait().expect("wait works").is_none(),
            "tally run exited with a replica down: {}",
            run.stderr_so_far()
        );
        assert!(
            Instant::now() < deadline,
            "no flush failed with {victim} down"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // Started again on its data, it catches up from the other replica.
    cluster();
    d.wait_committed(events.len() as u64, &mut [&mut run], "after the restart");
    run.terminate("tally run on the cluster");
    eprintln!(
        "replica test: {} events, {first} sent before the kill of {victim} at {at_kill} \
         committed",
        events.len()
    );
    assert!(
        at_kill < events.len() as u64,
        "{at_kill} committed at the kill"
    );

    let want = expected::expect(&expected::rules(&d.env()), &events, Utc::now());
    // Every acknowledged write is on both replicas (insert_quorum): each one's own tables
    // hold the whole result, with no wait for replication.
    for (name, url) in [("r1", r1), ("r2", r2)] {
        let replica = c.view(url, &c.local());
        let what = format!("read from replica {name}");
        expected::assert_matches(&replica, &want, &what);
        assert_balances(&replica, &want, &what);
    }
    expected::assert_matches(d, &want, "read through the Distributed tables");
}

#[test]
fn two_shards_written_by_two_processes_read_through_distributed_tables() {
    let env = cluster();
    let (s1, s2) = (&env["CLUSTER_SHARDED_S1"], &env["CLUSTER_SHARDED_S2"]);
    let c = OnCluster::new(4, "tally_sharded", s1, &format!("{s1};{s2}"));
    let d = &c.d;
    // Safe to run again: every statement is IF NOT EXISTS, on every server.
    d.tally_ok(&["migrate"]);
    let events = workload(150, 30_000, 25);
    d.send(&events);
    // A static split of the four partitions; each process writes to both shards.
    let mut a = d.spawn_run(&[], &[("TALLY_KAFKA__ASSIGNMENT", "0,1")]);
    let mut b = d.spawn_run(&[], &[("TALLY_KAFKA__ASSIGNMENT", "2,3")]);
    d.wait_committed(events.len() as u64, &mut [&mut a, &mut b], "two shards");
    a.terminate("tally run of partitions 0 and 1");
    b.terminate("tally run of partitions 2 and 3");

    // Each shard holds the rows of its partitions (p mod 2) and no other.
    for (url, partitions) in [(s1, "[0,2]"), (s2, "[1,3]")] {
        for table in ["ledger", "lots", "balances", "daily_rollups", "checkpoints"] {
            let held = c.sql_on(
                url,
                &format!("SELECT arraySort(groupUniqArray(partition)) FROM {table}"),
            );
            assert_eq!(held.trim(), partitions, "{table} on {url}");
        }
    }
    let want = expected::expect(&expected::rules(&d.env()), &events, Utc::now());
    // Through the Distributed tables, from either shard's server.
    for url in [s1, s2] {
        let what = format!("read through the Distributed tables on {url}");
        let through = c.view(url, &d.database);
        expected::assert_matches(&through, &want, &what);
        assert_balances(&through, &want, &what);
    }
    // `tally serve` reads through them too: every account's balance.
    let server = Server::start(d, &[]);
    let mut per_account: BTreeMap<String, i64> = BTreeMap::new();
    for ((account, _), remaining) in &want.lots {
        *per_account.entry(account.clone()).or_default() += remaining;
    }
    let deadline = Instant::now() + WAIT_LIMIT;
    for (account, available) in &per_account {
        assert!(Instant::now() < deadline, "balances not read in time");
        let answer = server.get(&format!("/v1/accounts/{account}/balance"), Some(ADMIN_KEY));
        assert_eq!(answer.status, 200, "{account}: {}", answer.body);
        let body: Value = answer.json();
        assert_eq!(
            milli(&body["pools"]["ai"]["available"]),
            *available,
            "{account}: available through tally serve: {body}"
        );
    }
    server.stop();
}
