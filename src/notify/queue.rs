//! The hand-off from the flush to a delivery worker (emails, webhooks) and the worker's
//! loop: submitting never waits for ClickHouse or the far end, and stopping gives the
//! worker a grace period to deliver what is due, then aborts it. Whatever is not delivered
//! is already recorded as pending, so the next start sends it.

use std::future::Future;
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::{sleep_until, timeout_at, Instant};

/// How long a dropped handle's task keeps delivering what is due before it stops.
const DROPPED_GRACE: Duration = Duration::from_secs(5);
/// How long an idle worker sleeps when nothing is due.
const IDLE_WAKE: Duration = Duration::from_secs(600);

/// Since when a starting worker resends what an earlier process left unfinished: the last
/// `resend_within`; `None` when it resends nothing.
pub(crate) fn resend_since(resend_within: Duration) -> Option<DateTime<Utc>> {
    if resend_within.is_zero() {
        return None;
    }
    let since = chrono::TimeDelta::from_std(resend_within)
        .ok()
        .and_then(|d| Utc::now().checked_sub_signed(d))
        .unwrap_or(DateTime::UNIX_EPOCH);
    Some(since)
}

/// What a handle tells its worker.
pub(crate) enum Command<T> {
    Submit(Vec<T>),
    /// Deliver what is due until the deadline, then stop.
    Shutdown(Instant),
}

/// The worker has stopped; the items were not taken (they stay pending in ClickHouse).
#[derive(Debug, thiserror::Error)]
#[error("the {worker} has stopped; {items} items were not accepted")]
pub struct Closed {
    pub worker: &'static str,
    pub items: usize,
}

/// One delivery worker: what the shared loop asks of it.
pub(crate) trait Worker: Send + 'static {
    type Item: Send + 'static;
    type Report: Default + Send + 'static;
    /// Loads what an earlier process left pending.
    fn recover(&mut self) -> impl Future<Output = ()> + Send;
    /// Records and queues new items.
    fn accept(&mut self, items: Vec<Self::Item>) -> impl Future<Output = ()> + Send;
    /// Does what is due; nothing past `deadline` when one is given.
    fn step(&mut self, deadline: Option<Instant>) -> impl Future<Output = ()> + Send;
    /// When something is next due, if anything is.
    fn next_wake(&self) -> Option<Instant>;
    /// Nothing left to deliver or record.
    fn idle(&self) -> bool;
    /// Records what it can of what is left, and reports.
    fn stop(self) -> impl Future<Output = Self::Report> + Send;
}

/// Starts `worker` on `runtime`; `overrun` is how long past a shutdown deadline its last
/// exchange may run before the task is aborted.
pub(crate) fn spawn<W: Worker>(
    runtime: &tokio::runtime::Handle,
    name: &'static str,
    worker: W,
    overrun: Duration,
) -> Handle<W::Item, W::Report> {
    let (tx, rx) = mpsc::unbounded_channel();
    let task = runtime.spawn(run(worker, rx));
    Handle {
        sender: Sender { name, tx },
        task,
        overrun,
    }
}

async fn run<W: Worker>(
    mut worker: W,
    mut rx: mpsc::UnboundedReceiver<Command<W::Item>>,
) -> W::Report {
    worker.recover().await;
    loop {
        worker.step(None).await;
        let wake = worker
            .next_wake()
            .unwrap_or_else(|| Instant::now() + IDLE_WAKE);
        tokio::select! {
            command = rx.recv() => match command {
                Some(Command::Submit(items)) => worker.accept(items).await,
                Some(Command::Shutdown(deadline)) => return finish(worker, rx, deadline).await,
                None => return finish(worker, rx, Instant::now() + DROPPED_GRACE).await,
            },
            _ = sleep_until(wake) => {}
        }
    }
}

/// Takes what was submitted before the shutdown, delivers what it can before `deadline`,
/// and reports what is left (all of it recorded for the next start).
async fn finish<W: Worker>(
    mut worker: W,
    mut rx: mpsc::UnboundedReceiver<Command<W::Item>>,
    deadline: Instant,
) -> W::Report {
    rx.close();
    while let Ok(command) = rx.try_recv() {
        if let Command::Submit(items) = command {
            worker.accept(items).await;
        }
    }
    loop {
        worker.step(Some(deadline)).await;
        match worker.next_wake() {
            Some(wake) if !worker.idle() && wake < deadline => sleep_until(wake).await,
            _ => break,
        }
    }
    worker.stop().await
}

/// A clonable way to submit items, for more than one producer.
pub struct Sender<T> {
    name: &'static str,
    tx: mpsc::UnboundedSender<Command<T>>,
}

impl<T> Clone for Sender<T> {
    fn clone(&self) -> Self {
        Sender {
            name: self.name,
            tx: self.tx.clone(),
        }
    }
}

impl<T> Sender<T> {
    /// Queues `items`; returns at once.
    pub fn submit(&self, items: Vec<T>) -> Result<(), Closed> {
        if items.is_empty() {
            return Ok(());
        }
        let n = items.len();
        self.tx.send(Command::Submit(items)).map_err(|_| {
            tracing::error!(
                worker = self.name,
                items = n,
                "the worker has stopped; items not accepted"
            );
            Closed {
                worker: self.name,
                items: n,
            }
        })
    }
}

/// Submits items to the running worker, and stops it.
pub struct Handle<T, R> {
    sender: Sender<T>,
    task: JoinHandle<R>,
    overrun: Duration,
}

impl<T, R: Default> Handle<T, R> {
    /// Queues `items`; returns at once, whatever the state of ClickHouse or the far end.
    pub fn submit(&self, items: Vec<T>) -> Result<(), Closed> {
        self.sender.submit(items)
    }

    pub fn sender(&self) -> Sender<T> {
        self.sender.clone()
    }

    /// Takes everything submitted so far, delivers what is due within `grace`, and stops;
    /// the rest stays pending for the next start.
    pub async fn shutdown(mut self, grace: Duration) -> R {
        let name = self.sender.name;
        let deadline = Instant::now() + grace;
        let _ = self.sender.tx.send(Command::Shutdown(deadline));
        // An exchange under way at the deadline may run to its own timeout; past that the
        // task is stopped where it is (its rows say what is left).
        let hard = deadline + self.overrun + Duration::from_secs(1);
        match timeout_at(hard, &mut self.task).await {
            Ok(Ok(report)) => report,
            Ok(Err(e)) => {
                tracing::error!(worker = name, error = %e, "the worker failed");
                R::default()
            }
            Err(_) => {
                self.task.abort();
                tracing::warn!(worker = name, "the worker did not stop in time; aborted");
                R::default()
            }
        }
    }
}
