//! A flush's life as a type: built on the run thread, written by a task on the runtime one
//! step after another (a retry resumes at the step that failed), and committed. What a
//! step produced travels in the step's variant, so a flush cannot record its alerts before
//! its dead letters went, nor be handed back as committed without its emails.

use std::sync::Arc;
use std::time::Instant;

use super::alerting;
use super::edges::{Clock, Outbox, Store};
use super::encode::Rows;
use super::metrics::{phase, RunMetrics};
use crate::holds::Decided;
use crate::kafka;
use crate::notify::webhooks::Delivery;
use crate::notify::Alert;
use crate::store::checkpoint;
use crate::store::ledger_block::LedgerBlock;
use crate::store::writes::Batch;

/// Where forwarded records landed: topic, partition, offset.
pub type Landed = Vec<(String, i32, i64)>;

/// A flush that has been built and not yet committed.
pub struct Flush {
    /// Its rows: encoded by the first attempt, off the run thread, and kept for retries.
    pub rows: Rows,
    /// How far its writes got.
    pub step: Step,
    /// What it commits and whom it answers.
    pub commits: Commits,
}

/// How far a flush's writes got.
pub enum Step {
    /// Nothing written: dead letters and forwarded records are produced first, as the
    /// offsets covering them are committed by the checkpoint.
    Built { outgoing: kafka::Outgoing },
    /// Dead letters and forwards produced (they landed at `forwarded`); then the rest.
    Sent {
        forwarded: Landed,
        recorded: Recorded,
    },
}

/// What a flush whose dead letters went has recorded. The outputs are not a step: they
/// replace what an earlier attempt wrote, so every attempt writes them again first.
pub enum Recorded {
    /// Nothing beyond the outputs.
    Outputs,
    /// The alerts recorded pending; their emails go to the notifier after the commit.
    Alerts { mails: Vec<Alert> },
    /// The webhooks recorded pending as well: only the checkpoint is left.
    Hooks { mails: Vec<Alert> },
}

/// What a flush commits, and what it hands on once it has.
pub struct Commits {
    /// Webhook deliveries: recorded pending before the checkpoint, handed to the webhook
    /// worker after it.
    pub hooks: Vec<Delivery>,
    /// Records (every outcome) the flush commits.
    pub events: usize,
    /// Decisions on hold and release commands it commits: answered once it has landed.
    pub decided: Vec<(i32, i64, Decided)>,
    /// Each partition's next offsets (usage, commands) as its checkpoint in this flush
    /// states them: what the group offsets become once it has landed.
    pub offsets: Vec<(i32, i64, i64)>,
    /// Partitions whose state this flush writes whole: older checkpoint rows are deleted
    /// once it has landed.
    pub snapshots: Vec<Snapshot>,
    pub started: Instant,
}

/// A partition's state written whole by a flush.
#[derive(Debug, Clone, Copy)]
pub struct Snapshot {
    pub partition: i32,
    pub version: u64,
    /// The claim of the owner that wrote it: its deletion is refused once a later claim
    /// of the partition exists.
    pub claim: u64,
    /// The latest broker timestamp (seconds) the snapshot covers. Its deletion keeps the
    /// dedup rows a restart from it needs: the window ends where the snapshot's clock
    /// does, not where the partition's clock has moved on to since (a restart replays the
    /// events in between, and their duplicates must still be found).
    pub arrival_high: i64,
}

/// A flush whose checkpoint landed: what the run thread still does with it.
pub struct Committed {
    pub forwarded: Landed,
    pub mails: Vec<Alert>,
    pub commits: Commits,
    pub ledger_rows: usize,
}

/// A flush that stopped at `phase`: kept whole, to be written again from its step.
pub struct Failed {
    pub flush: Flush,
    pub phase: &'static str,
    pub error: anyhow::Error,
}

/// A flush being written in the background while the next batch is applied.
pub type Writing = tokio::task::JoinHandle<Result<Committed, Failed>>;

/// The order of two flushes in flight: the later one's checkpoint waits for the earlier
/// one's commit, and gives up when the earlier one failed.
pub struct Order {
    pub after: Option<tokio::sync::oneshot::Receiver<()>>,
    pub committed: tokio::sync::oneshot::Sender<()>,
}

/// Where a flush goes and whom it tells: what the writing task takes from the pipeline.
pub struct Targets {
    pub store: Arc<dyn Store>,
    pub outbox: Arc<dyn Outbox>,
    pub clock: Arc<dyn Clock>,
    pub metrics: RunMetrics,
    pub owner: Arc<crate::holds::owner::Owner>,
    pub email_context: Arc<alerting::Context>,
    /// The checkpoint's stream name, which encoding puts in every row.
    pub stream: String,
    /// `rules.dedup_window`: a snapshot's deletion keeps the dedup rows of that window.
    pub dedup_window_millis: i64,
}

/// Times the phases of one attempt.
struct Phases<'a> {
    clock: &'a dyn Clock,
    metrics: &'a RunMetrics,
    at: Instant,
}

impl Phases<'_> {
    fn done(&mut self, name: &'static str) {
        let now = self.clock.now();
        self.metrics
            .flush_phase(name, now.duration_since(self.at).as_secs_f64());
        self.at = now;
    }
}

/// Writes one flush: its rows encoded if they are not yet, dead letters, then the
/// outputs (side by side), the alerts, the webhooks, and the checkpoint last, each step
/// once. Runs on the runtime while the run thread applies the next batch.
pub async fn write(to: Targets, flush: Flush, order: Order) -> Result<Committed, Failed> {
    let Flush {
        rows,
        step,
        mut commits,
    } = flush;
    let mut phases = Phases {
        clock: &*to.clock,
        metrics: &to.metrics,
        at: to.clock.now(),
    };
    let batch = match rows {
        Rows::Encoded(batch) => batch,
        drafted => {
            let batch = drafted.encode(&to.stream);
            phases.done(phase::ENCODE);
            batch
        }
    };
    debug_assert!(
        batch
            .checkpoint
            .last()
            .is_some_and(|row| row.row_kind == "offsets"),
        "a flush's checkpoint ends with a partition's offsets row"
    );
    let failed = |batch: Batch, step: Step, commits: Commits, phase, error| Failed {
        flush: Flush {
            rows: Rows::Encoded(batch),
            step,
            commits,
        },
        phase,
        error,
    };
    let (forwarded, mut recorded) = match step {
        Step::Built { outgoing } => match to.outbox.send(&outgoing).await {
            Ok(forwarded) => {
                phases.done(phase::DEAD_LETTERS);
                (forwarded, Recorded::Outputs)
            }
            Err(e) => {
                let error = e.context("dead letters and forwards");
                let step = Step::Built { outgoing };
                return Err(failed(batch, step, commits, phase::DEAD_LETTERS, error));
            }
        },
        Step::Sent {
            forwarded,
            recorded,
        } => (forwarded, recorded),
    };
    if let Err(e) = to.store.write_outputs(&batch).await {
        let error = anyhow::Error::new(e).context("ClickHouse");
        let step = Step::Sent {
            forwarded,
            recorded,
        };
        return Err(failed(batch, step, commits, phase::WRITE_OUTPUTS, error));
    }
    phases.done(phase::WRITE_OUTPUTS);
    // Each record once: a retry resumes after what an earlier attempt recorded.
    let mails = loop {
        let next = match recorded {
            Recorded::Outputs => {
                let alerts = &batch.alerts;
                match to.store.record_alerts(&to.email_context, alerts).await {
                    Ok(mails) => {
                        phases.done(phase::ALERTS);
                        Ok(Recorded::Alerts { mails })
                    }
                    Err(e) => Err((
                        Recorded::Outputs,
                        anyhow::Error::new(e).context("ClickHouse: alerts"),
                    )),
                }
            }
            Recorded::Alerts { mails } => {
                let rows: Vec<_> = commits
                    .hooks
                    .iter()
                    .map(crate::notify::webhooks::worker::pending_row)
                    .collect();
                match to.store.record_webhooks(&rows).await {
                    Ok(()) => Ok(Recorded::Hooks { mails }),
                    Err(e) => Err((
                        Recorded::Alerts { mails },
                        anyhow::Error::new(e).context("ClickHouse: webhooks"),
                    )),
                }
            }
            Recorded::Hooks { mails } => break mails,
        };
        match next {
            Ok(next) => recorded = next,
            Err((recorded, error)) => {
                let step = Step::Sent {
                    forwarded,
                    recorded,
                };
                return Err(failed(batch, step, commits, phase::ALERTS, error));
            }
        }
    };
    let Order { after, committed } = order;
    if let Err(error) = commit(&to, &batch, after).await {
        let step = Step::Sent {
            forwarded,
            recorded: Recorded::Hooks { mails },
        };
        return Err(failed(batch, step, commits, phase::CHECKPOINT, error));
    }
    phases.done(phase::CHECKPOINT);
    to.metrics.flush_phase(
        phase::TOTAL,
        to.clock.now().duration_since(commits.started).as_secs_f64(),
    );
    // Committed: the callers waiting on its decisions get them now, not when the run loop
    // next looks at this task.
    let decided = std::mem::take(&mut commits.decided);
    to.owner.committed(&commits.offsets, decided);
    // Only now may the flush started after this one commit: its answers must come after
    // these (the owner keeps one committed offset a partition).
    let _ = committed.send(());
    prune(&to, &commits.snapshots).await;
    Ok(Committed {
        forwarded,
        mails,
        commits,
        ledger_rows: batch.ledger.iter().map(LedgerBlock::rows).sum(),
    })
}

/// Deletes the checkpoint rows the flush's snapshots superseded, every partition's at once,
/// once the flush has committed and its answers are out: the run thread applies on
/// meanwhile (three statements a partition, 8-31 ms each measured on 18.16 with history;
/// they blocked it), and only the next flush waits. A failure leaves the rows for the
/// partition's next snapshot to delete.
async fn prune(to: &Targets, snapshots: &[Snapshot]) {
    let deletions = snapshots.iter().map(|snapshot| async move {
        // Dedup rows and blobs stay while the window of a restart from this snapshot may
        // need them.
        let horizon = checkpoint::horizon(snapshot.arrival_high, to.dedup_window_millis);
        let started = to.clock.now();
        let pruned = to
            .store
            .delete_before(
                snapshot.partition as u32,
                snapshot.version,
                snapshot.claim,
                horizon,
            )
            .await;
        (snapshot, pruned, to.clock.now().duration_since(started))
    });
    for (snapshot, pruned, took) in futures::future::join_all(deletions).await {
        let (partition, version) = (snapshot.partition, snapshot.version);
        let took_ms = took.as_millis() as u64;
        match pruned {
            Ok(true) => tracing::info!(
                partition,
                version,
                took_ms,
                "partition snapshotted; older checkpoint rows deleted"
            ),
            Ok(false) => tracing::warn!(
                partition,
                version,
                "a later claim supersedes this owner: its flushes no longer count"
            ),
            Err(e) => {
                to.metrics.clickhouse_errors.inc();
                tracing::warn!(partition, version, error = %e, "cannot delete checkpoint rows older than a snapshot")
            }
        }
    }
}

/// The checkpoint, after the flush before this one committed.
async fn commit(
    to: &Targets,
    batch: &Batch,
    after: Option<tokio::sync::oneshot::Receiver<()>>,
) -> anyhow::Result<()> {
    if let Some(after) = after {
        after.await.map_err(|_| {
            anyhow::anyhow!("the flush before this one failed; both are written again")
        })?;
    }
    to.store
        .commit(batch)
        .await
        .map_err(|e| anyhow::Error::new(e).context("ClickHouse"))
}
