//! The dedup window of one partition filled with `--ids` synthetic ids (issue 25): memory
//! per id, the rate of duplicate checks, the checkpoint's size and the restart time, for
//! the sealed design or (`--baseline`) every key exact, as before.
//!
//! Ids have realistic shapes: 100,000 accounts (`acct-000042`), five product services, and
//! UUID-like event ids, spread evenly over one 24-hour window, one flush a simulated
//! second. Memory is what the allocator holds for the window (a counting allocator),
//! less what the benchmark itself keeps for the restart (blobs or rows, and sampled keys).
//! With `--clickhouse URL` the checkpoint rows are written to a scratch database of that
//! server (dropped afterwards) and the restart is `claim_and_load`, as `tally run` does
//! it, timed, with the size of the table on disk.
//!
//! ```sh
//! cargo run --release --example bench_dedup -- --ids 100000000 --clickhouse http://127.0.0.1:8123
//! cargo run --release --example bench_dedup -- --ids 10000000 --baseline --clickhouse http://127.0.0.1:8123
//! ```

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use anyhow::Context;
use chrono::{DateTime, TimeDelta, Utc};
use tally::store::checkpoint::{self, Commit};
use tally::store::rows::CheckpointRow;
use tally_core::dedup::{self, Lookup, Seen};

/// The system allocator, counting the bytes it holds and the most it held.
struct Counting;

static HELD: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let held = HELD.fetch_add(layout.size(), Ordering::Relaxed) + layout.size();
        PEAK.fetch_max(held, Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        HELD.fetch_sub(layout.size(), Ordering::Relaxed);
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if new_size > layout.size() {
            let held = HELD.fetch_add(new_size - layout.size(), Ordering::Relaxed) + new_size
                - layout.size();
            PEAK.fetch_max(held, Ordering::Relaxed);
        } else {
            HELD.fetch_sub(layout.size() - new_size, Ordering::Relaxed);
        }
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

fn held() -> usize {
    HELD.load(Ordering::Relaxed)
}

/// Resident memory of this process (kB), from /proc: (current, peak).
fn rss() -> (u64, u64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// splitmix64: a fixed, fast stream of ids.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

const SOURCES: [&str; 5] = ["image-studio", "chat", "voice", "video-gen", "search"];

/// The key of one synthetic event: a UUID-like id of an account and a service.
fn synthetic_key(rng: &mut Rng, text: &mut String) -> u128 {
    use std::fmt::Write;
    let (a, b) = (rng.next(), rng.next());
    let account = format!("acct-{:06}", a % 100_000);
    let source = SOURCES[(a >> 32) as usize % SOURCES.len()];
    text.clear();
    let _ = write!(
        text,
        "{:08x}-{:04x}-4{:03x}-{:04x}-{:012x}",
        b >> 32,
        (b >> 16) & 0xffff,
        b & 0xfff,
        (a >> 40) & 0xffff,
        a & 0xffff_ffff_ffff
    );
    dedup::key(&account, source, text)
}

struct Args {
    ids: u64,
    baseline: bool,
    clickhouse: Option<String>,
}

fn args() -> anyhow::Result<Args> {
    let mut a = Args {
        ids: 10_000_000,
        baseline: false,
        clickhouse: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        match flag.as_str() {
            "--ids" => a.ids = it.next().context("--ids N")?.parse()?,
            "--baseline" => a.baseline = true,
            "--clickhouse" => a.clickhouse = Some(it.next().context("--clickhouse URL")?),
            other => anyhow::bail!("unknown argument {other}"),
        }
    }
    Ok(a)
}

const WINDOW_SECS: i64 = 86_400;
const FIRST_VERSION: u64 = 1_000;

fn main() -> anyhow::Result<()> {
    let args = args()?;
    let window = TimeDelta::seconds(WINDOW_SECS);
    let t0: DateTime<Utc> = "2026-11-01T00:00:00Z".parse()?;
    let design = if args.baseline {
        "every key exact (before issue 25)"
    } else {
        "sealed fingerprints (issue 25)"
    };
    println!("design: {design}; {} ids over a 24 h window", args.ids);
    let before = held();
    let mut seen = if args.baseline {
        Seen::default()
    } else {
        Seen::sealing()
    };
    // What the benchmark keeps for the restart: sealed blobs (with the flush that wrote
    // them), and the rows of the keys not sealed (all of them before issue 25).
    let mut blobs: Vec<(u64, Vec<u8>)> = Vec::new();
    let mut rows: Vec<(u64, u128, i64)> = Vec::new();
    let mut sample: Vec<u128> = Vec::with_capacity((args.ids / 100) as usize + 1);
    let mut rng = Rng(42);
    let mut text = String::new();
    let started = Instant::now();
    let mut done = 0u64;
    let mut check_time = 0f64;
    let flushes = WINDOW_SECS as u64;
    for flush in 0..flushes {
        let at = t0 + TimeDelta::seconds(flush as i64);
        let until = args.ids * (flush + 1) / flushes;
        while done < until {
            let key = synthetic_key(&mut rng, &mut text);
            if done.is_multiple_of(100) {
                sample.push(key);
            }
            if !seen.is_duplicate(key, at, window) {
                seen.record(key, at);
            }
            done += 1;
        }
        let version = FIRST_VERSION + flush;
        let sealing = Instant::now();
        if let Some(blob) = seen.seal(false) {
            blobs.push((version, blob));
            rows.clear();
        }
        check_time += sealing.elapsed().as_secs_f64();
        for (key, at) in seen.take_fresh(version) {
            rows.push((version, key, at));
        }
        if flush % 8_640 == 8_639 {
            eprintln!(
                "  {:>3}% {done} ids, {:.0} s, {} exact, {} sealed",
                (flush + 1) * 100 / flushes,
                started.elapsed().as_secs_f64(),
                seen.exact_len(),
                seen.sealed_len()
            );
        }
    }
    let fill = started.elapsed().as_secs_f64();
    let kept = blobs.iter().map(|b| b.1.capacity()).sum::<usize>()
        + blobs.capacity() * std::mem::size_of::<(u64, Vec<u8>)>()
        + rows.capacity() * std::mem::size_of::<(u64, u128, i64)>()
        + sample.capacity() * 16;
    let window_bytes = held() - before - kept;
    let (rss_now, rss_peak) = rss();
    println!(
        "fill: {} ids in {fill:.1} s ({:.0} ids/s, seals {check_time:.1} s of it); {} exact, {} sealed, {} blobs",
        args.ids,
        args.ids as f64 / fill,
        seen.exact_len(),
        seen.sealed_len(),
        blobs.len()
    );
    println!(
        "memory: {window_bytes} bytes held for the window = {:.2} bytes/id (allocator); \
         process RSS {} MB, peak {} MB (includes what the benchmark keeps for the restart)",
        window_bytes as f64 / args.ids as f64,
        rss_now / 1024,
        rss_peak / 1024
    );

    // Duplicate checks: new ids (the traffic), then copies of ids in the window.
    let end = t0 + TimeDelta::seconds(WINDOW_SECS - 1);
    let checks = 2_000_000u64;
    let keys: Vec<u128> = (0..checks)
        .map(|_| synthetic_key(&mut rng, &mut text))
        .collect();
    let timer = Instant::now();
    let mut probable_new = 0u64;
    for key in &keys {
        if seen.lookup(*key, end, window) != Lookup::New {
            probable_new += 1;
        }
    }
    let new_rate = checks as f64 / timer.elapsed().as_secs_f64();
    let timer = Instant::now();
    let (mut exact, mut probable) = (0u64, 0u64);
    for key in &sample {
        match seen.lookup(*key, end, window) {
            Lookup::Duplicate => exact += 1,
            Lookup::Probable => probable += 1,
            Lookup::New => {}
        }
    }
    let copy_rate = sample.len() as f64 / timer.elapsed().as_secs_f64();
    println!(
        "checks: {new_rate:.0} new ids/s ({probable_new} of {checks} probable: {:.2e} a check would be confirmed for nothing); \
         {copy_rate:.0} copies/s ({exact} exact, {probable} to confirm, {} missed of {})",
        probable_new as f64 / checks as f64,
        sample.len() as u64 - exact - probable,
        sample.len()
    );
    let blob_bytes: usize = blobs.iter().map(|b| b.1.len()).sum();
    println!(
        "checkpoint: {blob_bytes} bytes of sealed blobs ({:.2} bytes/id) in {} blobs, and {} rows of exact keys read one by one at a restart",
        blob_bytes as f64 / args.ids as f64,
        blobs.len(),
        rows.len()
    );

    // A restart in memory: the blobs laid out again.
    let timer = Instant::now();
    let base = held();
    PEAK.store(base, Ordering::Relaxed);
    let mut restored = Seen::sealing();
    for (_, blob) in &blobs {
        restored.restore_blob(blob)?;
    }
    restored.finish_restore();
    for (_, key, at) in &rows {
        restored.restore(*key, *at);
    }
    println!(
        "restart (in memory, no I/O): {:.2} s, {:.2} bytes/id after it, {:.2} bytes/id at its peak",
        timer.elapsed().as_secs_f64(),
        (held() - base) as f64 / args.ids as f64,
        (PEAK.load(Ordering::Relaxed) - base) as f64 / args.ids as f64
    );
    drop(restored);
    drop(seen);
    drop(sample);
    drop(keys);

    if let Some(url) = &args.clickhouse {
        let rt = tokio::runtime::Runtime::new()?;
        rt.block_on(through_clickhouse(url, &blobs, &rows, args.ids))?;
    }
    Ok(())
}

/// Writes the checkpoint rows to a scratch database and times `claim_and_load`.
async fn through_clickhouse(
    url: &str,
    blobs: &[(u64, Vec<u8>)],
    rows: &[(u64, u128, i64)],
    ids: u64,
) -> anyhow::Result<()> {
    let database = format!("tally_bench_dedup_{}", std::process::id());
    let config = tally::config::ClickHouseConfig {
        url: url.to_string(),
        database: database.clone(),
        timeout: std::time::Duration::from_secs(300),
        ..Default::default()
    };
    let server = tally::store::server_client(&config);
    tally::store::schema::migrate(&server, &database).await?;
    let client = tally::store::client(&config);
    let result = async {
        let stream = "bench";
        let last = FIRST_VERSION + WINDOW_SECS as u64 - 1;
        let arrival_high = "2026-11-01T00:00:00Z".parse::<DateTime<Utc>>()?.timestamp()
            + WINDOW_SECS
            - 1;
        let commit = |version: u64| Commit {
            stream,
            partition: 0,
            version,
            // Rows as written before fencing: the claim's load counts them.
            claim: 0,
            usage_offset: 0,
            commands_offset: 0,
            arrival_high,
            written_at: 0,
            segment_records: 0,
        };
        let timer = Instant::now();
        let mut batch: Vec<CheckpointRow> = Vec::new();
        let mut written = 0usize;
        let flush = |batch: &mut Vec<CheckpointRow>| {
            let batch = std::mem::take(batch);
            let client = client.clone();
            async move {
                let mut insert =
                    tally::store::writes::insert::<CheckpointRow>(&client, "checkpoints").await?;
                for row in &batch {
                    insert.write(row).await?;
                }
                insert.end().await?;
                anyhow::Ok(())
            }
        };
        for (version, blob) in blobs {
            batch.extend(commit(*version).seen_blob(blob));
            if batch.len() >= 64 {
                flush(&mut batch).await?;
            }
        }
        for (version, key, at) in rows {
            batch.push(commit(*version).seen(*key, *at));
            written += 1;
            if batch.len() >= 200_000 {
                flush(&mut batch).await?;
            }
        }
        // Every flush committed: one offsets row each.
        for version in FIRST_VERSION..=last {
            batch.push(commit(version).offsets());
            if batch.len() >= 200_000 {
                flush(&mut batch).await?;
            }
        }
        flush(&mut batch).await?;
        println!(
            "clickhouse: wrote {} blobs and {written} key rows in {:.1} s",
            blobs.len(),
            timer.elapsed().as_secs_f64()
        );
        client.query("OPTIMIZE TABLE checkpoints FINAL").execute().await?;
        let bytes: u64 = client
            .query(
                "SELECT sum(bytes_on_disk) FROM system.parts \
                 WHERE database = currentDatabase() AND table = 'checkpoints' AND active",
            )
            .fetch_one()
            .await?;
        println!(
            "checkpoint on disk: {bytes} bytes ({:.2} bytes/id, compressed)",
            bytes as f64 / ids as f64
        );
        let base = held();
        PEAK.store(base, Ordering::Relaxed);
        let timer = Instant::now();
        let now = (last + 10) * 1_000_000;
        let restored = checkpoint::claim_and_load(
            &client,
            stream,
            0,
            now,
            WINDOW_SECS * 1000,
            "{}",
            0,
        )
        .await?;
        println!(
            "restart (claim_and_load from ClickHouse): {:.2} s, {} ids remembered, {:.2} bytes/id held after it, {:.2} at its peak",
            timer.elapsed().as_secs_f64(),
            restored.book.seen.len(),
            (held() - base) as f64 / ids as f64,
            (PEAK.load(Ordering::Relaxed) - base) as f64 / ids as f64
        );
        anyhow::Ok(())
    }
    .await;
    server
        .query(&format!("DROP DATABASE IF EXISTS {database}"))
        .execute()
        .await?;
    result
}
