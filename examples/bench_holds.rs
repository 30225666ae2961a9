//! Check and hold latency: sends `--rate` requests a second for `--seconds` to a running
//! `tally serve` (`POST /v1/check` or `POST /v1/holds`), open loop (each request starts at
//! its scheduled time whatever the others do, and its latency counts from that time, so a
//! stall shows in the figures instead of slowing the load), and prints p50, p99 and max,
//! and how far behind its time each request started. The first `--warmup` seconds (1 by
//! default) are sent the same way and reported apart.
//!
//! ```sh
//! cargo run --release --example bench_holds -- --base http://127.0.0.1:8080 \
//!     --key "$ADMIN" --mode check --rate 1000 --seconds 20 --accounts 100
//! ```

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::http::{header, Method, Request};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

#[derive(Clone)]
struct Args {
    base: String,
    key: String,
    mode: String,
    rate: u64,
    seconds: u64,
    /// Seconds sent at the same rate before `seconds`, not counted: the connection pools
    /// of this client and of `tally serve` start empty, and the first 100 ms of requests
    /// each opened a connection (measured: 99 of the first 100 checks over 3 ms, up to
    /// 75 ms; alone they were 1% of a 10 s run, its p99).
    warmup: u64,
    accounts: u64,
    prefix: String,
    /// Each hold's ttl in seconds.
    ttl: u32,
}

fn args() -> anyhow::Result<Args> {
    let mut a = Args {
        base: "http://127.0.0.1:8080".into(),
        key: String::new(),
        mode: "check".into(),
        rate: 1000,
        seconds: 20,
        warmup: 1,
        accounts: 100,
        prefix: format!("b{}", std::process::id()),
        ttl: 60,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it
            .next()
            .ok_or_else(|| anyhow::anyhow!("{flag} needs a value"))?;
        match flag.as_str() {
            "--base" => a.base = value,
            "--key" => a.key = value,
            "--mode" => a.mode = value,
            "--rate" => a.rate = value.parse()?,
            "--seconds" => a.seconds = value.parse()?,
            "--warmup" => a.warmup = value.parse()?,
            "--accounts" => a.accounts = value.parse()?,
            "--prefix" => a.prefix = value,
            "--ttl" => a.ttl = value.parse()?,
            other => anyhow::bail!("unknown flag {other}"),
        }
    }
    anyhow::ensure!(
        a.mode == "check" || a.mode == "hold",
        "--mode check or hold"
    );
    anyhow::ensure!(
        a.rate > 0 && a.accounts > 0,
        "--rate and --accounts above 0"
    );
    Ok(a)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let a = args()?;
    let mut http = HttpConnector::new();
    http.set_nodelay(true);
    http.set_connect_timeout(Some(Duration::from_secs(2)));
    let client: Client<HttpConnector, Full<Bytes>> =
        Client::builder(TokioExecutor::new()).build(http);
    let results: Results = Arc::new(Mutex::new(Vec::with_capacity(
        (a.rate * (a.warmup + a.seconds)) as usize,
    )));
    let start = Instant::now() + Duration::from_millis(100);
    // A thread of its own keeps the pace: tokio's timer wakes on whole milliseconds, so
    // requests started 1.4 ms after their time at the median (up to 3), and that lag
    // counted as tally's latency. The lag is printed too: the instrument's share shows.
    let runtime = tokio::runtime::Handle::current();
    let pace = {
        let (a, results) = (a.clone(), results.clone());
        tokio::task::spawn_blocking(move || pace(&a, &client, &results, &runtime, start))
    };
    let (tasks, lags) = pace.await??;
    for task in tasks {
        task.await?;
    }
    let elapsed = start.elapsed();
    let results = results.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let (warm, counted): (Vec<Sent>, Vec<Sent>) = results.into_iter().partition(|r| r.warm);
    let mut by_status = std::collections::BTreeMap::<u16, usize>::new();
    for sent in &counted {
        *by_status.entry(sent.status).or_default() += 1;
    }
    println!(
        "{} {} requests at {}/s in {:.1} s (after {} of warm-up); statuses {:?}",
        a.mode,
        counted.len(),
        a.rate,
        elapsed.as_secs_f64(),
        warm.len(),
        by_status
    );
    let answered = |sent: &[Sent]| -> Vec<Duration> {
        sent.iter()
            .filter(|s| matches!(s.status, 200 | 201 | 402))
            .map(|s| s.latency)
            .collect()
    };
    print_figures(&a.mode, "latency (answered)", answered(&counted));
    print_figures(&a.mode, "warm-up latency, not counted", answered(&warm));
    print_figures(&a.mode, "start lag (behind schedule)", lags);
    Ok(())
}

/// One request's outcome.
#[derive(Clone, Copy)]
struct Sent {
    status: u16,
    latency: Duration,
    /// Sent during the warm-up.
    warm: bool,
}

type Results = Arc<Mutex<Vec<Sent>>>;

fn print_figures(mode: &str, what: &str, mut figures: Vec<Duration>) {
    figures.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!(
        "{mode} {what}: p50 {:.2} ms  p99 {:.2} ms  max {:.2} ms",
        ms(percentile(&figures, 50.0)),
        ms(percentile(&figures, 99.0)),
        ms(figures.last().copied().unwrap_or_default())
    );
}

/// Starts every request at its time from this (blocking) thread; returns their tasks and
/// how late each started.
fn pace(
    a: &Args,
    client: &Client<HttpConnector, Full<Bytes>>,
    results: &Results,
    runtime: &tokio::runtime::Handle,
    start: Instant,
) -> anyhow::Result<(Vec<tokio::task::JoinHandle<()>>, Vec<Duration>)> {
    let warmup = a.rate * a.warmup;
    let total = warmup + a.rate * a.seconds;
    let interval = Duration::from_nanos(1_000_000_000 / a.rate);
    let mut tasks = Vec::with_capacity(total as usize);
    let mut lags = Vec::with_capacity(total as usize);
    for i in 0..total {
        let scheduled = start + interval * i as u32;
        if let Some(wait) = scheduled.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        let warm = i < warmup;
        if !warm {
            lags.push(scheduled.elapsed());
        }
        let account = format!("bench-{:04}", i % a.accounts);
        let (path, body) = if a.mode == "check" {
            (
                "/v1/check",
                serde_json::json!({"account": account, "feature": "erase"}),
            )
        } else {
            (
                "/v1/holds",
                serde_json::json!({"id": format!("{}-{i}", a.prefix), "account": account,
                                   "feature": "erase", "ttl": a.ttl}),
            )
        };
        let request = Request::builder()
            .method(Method::POST)
            .uri(format!("{}{path}", a.base))
            .header(header::AUTHORIZATION, format!("Bearer {}", a.key))
            .header(header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(body.to_string())))?;
        let (client, results) = (client.clone(), results.clone());
        tasks.push(runtime.spawn(async move {
            let status = match tokio::time::timeout(Duration::from_secs(30), async {
                let response = client.request(request).await?;
                let status = response.status().as_u16();
                response.into_body().collect().await?;
                Ok::<u16, anyhow::Error>(status)
            })
            .await
            {
                Ok(Ok(status)) => status,
                _ => 0,
            };
            let latency = scheduled.elapsed();
            results
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(Sent {
                    status,
                    latency,
                    warm,
                });
        }));
    }
    Ok((tasks, lags))
}
