//! One assigned partition: its book of accounts, its two sides, and the outputs waiting
//! for the next flush.

use rustc_hash::FxHashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tally_core::{AccountState, Book, Outcome, Rules};

use super::encode::Draft;
use super::lot_rows::{LotRows, LotsWritten};
use super::merge::{self, Decision, Pending, Side, WaitReason, Which};
use super::metrics::PartitionMetrics;
use super::rollup::Rollups;
use super::view::{Applied, PartitionView};
use crate::holds::Decided;
use crate::kafka::{DeadLetter, Forward, Outgoing};
use crate::store::checkpoint::Restored;
use crate::store::ledger_block::{EntryId, LedgerBlock};
use crate::store::rows::from_seconds;

/// Counters for logs and status.
#[derive(Debug, Default, Clone, Copy)]
pub struct Counts {
    pub applied: u64,
    pub duplicates: u64,
    pub rejected: u64,
}

/// Where the flushes before the one being built stand, which decides what its drafts may
/// take as committed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Earlier {
    /// Every one has committed: the dedup keys they took may be sealed, and a snapshot taken.
    Committed,
    /// One is still being written: its dedup keys are not committed, so none are sealed (a
    /// sealed key is confirmed against the rows it wrote) and a snapshot waits.
    InFlight,
}

/// What a flush takes from its partitions besides their rows.
#[derive(Default)]
pub struct Outputs {
    pub outgoing: Outgoing,
    /// Decisions on holds and releases: (partition, commands offset, decision).
    pub decided: Vec<(i32, i64, Decided)>,
    pub alerts: Vec<tally_core::alerts::Alert>,
    pub notices: Vec<tally_core::hooks::Notice>,
}

pub struct PartitionWork {
    pub partition: i32,
    pub book: Book,
    pub usage: Side,
    pub commands: Side,
    /// Version of the next flush.
    pub version: u64,
    /// Version of this owner's claim row, which pruning after a snapshot keeps: it says
    /// where the owner answers checks and holds.
    pub claim_version: u64,
    /// Decisions on `credit.hold` / `credit.release` records (commands offset) since the
    /// last flush: answered once the flush that carries them has committed.
    pub decided: Vec<(i64, Decided)>,
    /// Latest broker timestamp applied, in seconds.
    pub arrival_high: i64,
    touched: FxHashSet<String>,
    /// What each account's `lots` rows show, so a flush skips rows that would not change.
    lots_written: LotsWritten,
    /// Accounts changed since the last publish to the checks' view.
    unpublished: FxHashSet<String>,
    /// What checks read: the states as of the last publish.
    pub view: Arc<PartitionView>,
    /// Ledger rows since the last flush, encoded as each entry is applied (of the next
    /// flush's version). Here, not by the flush's task: an entry's interned names are
    /// reference-counted, and dropping them on another thread than the one that cloned
    /// them bounces their counts between cores (measured: slower than encoding here).
    ledger: LedgerBlock,
    /// Running totals of the days still open to late events.
    rollups: Rollups,
    /// Dead letters and records forwarded to their account's partition, produced before
    /// the flush's checkpoint.
    pub outgoing: Outgoing,
    /// Low-credit alerts decided since the last flush.
    alerts: Vec<tally_core::alerts::Alert>,
    /// Webhook notices decided since the last flush.
    notices: Vec<tally_core::hooks::Notice>,
    /// Offsets applied since the last flush, so an idle partition writes nothing.
    dirty: bool,
    pub counts: Counts,
    /// Checkpoint rows written since the last snapshot of the whole partition.
    rows_since_snapshot: usize,
    /// Set when the flush being written is a snapshot: after it commits, every older
    /// checkpoint row of the partition can go.
    pub snapshot_pending: Option<u64>,
    /// The side held back at the last apply, and why, for `tally status`.
    pub wait: Option<(Which, WaitReason)>,
    /// This partition's Prometheus handles, labels resolved once.
    pub metrics: PartitionMetrics,
    /// Probable duplicates (sealed fingerprints) the next event to apply, and some after
    /// it, must have confirmed against the exact rows before it goes: set when
    /// [`PartitionWork::apply_ready`] stopped for them.
    pub confirm: Vec<(u128, Vec<tally_core::dedup::Written>)>,
    /// The confirmation of `confirm`'s keys, once asked.
    pub confirming: super::confirm::Confirm,
}

/// Probable duplicates gathered per confirmation: the event that waits and those queued
/// after it, so a burst of old copies costs one query, not one each.
const CONFIRM_AHEAD: usize = 1_000;

impl PartitionWork {
    pub fn new(
        partition: i32,
        restored: Restored,
        rollups: Rollups,
        metrics: PartitionMetrics,
        view: Arc<PartitionView>,
    ) -> Self {
        debug_assert!(restored.days.is_empty(), "the open days are in `rollups`");
        PartitionWork {
            partition,
            book: restored.book,
            usage: Side::starting_at(restored.usage_offset.unwrap_or(0)),
            commands: Side::starting_at(restored.commands_offset.unwrap_or(0)),
            version: restored.version + 1,
            claim_version: restored.version,
            decided: Vec::new(),
            arrival_high: restored.arrival_high,
            touched: FxHashSet::default(),
            lots_written: LotsWritten::default(),
            unpublished: FxHashSet::default(),
            view,
            ledger: LedgerBlock::new(partition as u32, restored.version + 1, 0),
            rollups,
            outgoing: Outgoing::default(),
            alerts: Vec::new(),
            notices: Vec::new(),
            dirty: false,
            counts: Counts::default(),
            wait: None,
            rows_since_snapshot: 0,
            snapshot_pending: None,
            metrics,
            confirm: Vec::new(),
            confirming: super::confirm::Confirm::Idle,
        }
    }

    pub fn side_mut(&mut self, which: Which) -> &mut Side {
        match which {
            Which::Usage => &mut self.usage,
            Which::Commands => &mut self.commands,
        }
    }

    /// Applies every event that may go now, at most `budget`; returns how many.
    pub fn apply_ready(
        &mut self,
        rules: &Rules,
        topics: (&str, &str),
        now: Instant,
        // One wall-clock read per pass, by the caller's clock: the events of one pass are
        // applied within milliseconds of each other, and a clock read per event would
        // cost more than the rest of the bookkeeping.
        applied_at: chrono::DateTime<chrono::Utc>,
        max_idle: Duration,
        budget: usize,
    ) -> usize {
        let mut applied = 0;
        while applied < budget {
            let which = match merge::next(&self.usage, &self.commands, now, max_idle) {
                Decision::Apply(which) => which,
                Decision::Wait { waiting, reason } => {
                    self.wait = Some((waiting, reason));
                    break;
                }
                Decision::Empty => {
                    self.wait = None;
                    break;
                }
            };
            self.wait = None;
            // A probable duplicate waits for its exact answer (the shell asks ClickHouse):
            // the core counts an unconfirmed one as new.
            if self.needs_confirm(rules, which) {
                break;
            }
            let Some(pending) = self.side_mut(which).pop() else {
                break;
            };
            let topic = match which {
                Which::Usage => topics.0,
                Which::Commands => topics.1,
            };
            let offset = pending.offset;
            let delay = applied_at - pending.arrival;
            self.metrics
                .delay(delay.num_microseconds().unwrap_or(i64::MAX) as f64 / 1e6);
            if which == Which::Commands {
                self.metrics.command_waited(pending.received.elapsed());
            }
            self.apply(rules, which, topic, pending);
            self.side_mut(which).applied_next = offset + 1;
            applied += 1;
        }
        if applied > 0 {
            self.metrics.publish();
        }
        applied
    }

    /// Whether the head of `which` is a probable duplicate without an answer; if so,
    /// gathers it and the probable duplicates queued after it into `self.confirm`.
    fn needs_confirm(&mut self, rules: &Rules, which: Which) -> bool {
        let seen = &self.book.seen;
        let probe = |pending: &Pending| match (&pending.parsed, &pending.forward) {
            (Ok(event), None) if !matches!(event.body, tally_core::event::Body::Tick) => {
                let key = tally_core::dedup::key_of(event);
                seen.needs_confirm(key, pending.arrival, rules.dedup_window)
                    .map(|written| (key, written))
            }
            _ => None,
        };
        let head = match which {
            Which::Usage => self.usage.queue.front(),
            Which::Commands => self.commands.queue.front(),
        };
        let Some(first) = head.and_then(probe) else {
            return false;
        };
        let mut confirm = vec![first];
        let ahead = self.usage.queue.iter().chain(self.commands.queue.iter());
        for found in ahead.take(CONFIRM_AHEAD).filter_map(probe) {
            if !confirm.iter().any(|(key, _)| *key == found.0) {
                confirm.push(found);
            }
        }
        self.confirm = confirm;
        true
    }

    fn apply(&mut self, rules: &Rules, which: Which, topic: &str, pending: Pending) {
        let Pending {
            offset,
            arrival,
            parsed,
            key,
            payload,
            forward,
            ..
        } = pending;
        if let Some(forward) = forward {
            // Another partition owns the account: produced there, applied there only.
            self.metrics.forwarded(which);
            self.outgoing.forwards.push(Forward {
                topic: topic.to_string(),
                partition: forward.to,
                key,
                payload,
                headers: forward.headers,
                timestamp: forward.timestamp,
            });
            self.dirty = true;
            return;
        }
        // A refused timestamp must not move the clock the checkpoint keeps either (it
        // expires dedup keys).
        let moves_clock = !matches!(&parsed, Err(r) if r.keeps_clock());
        let step = self.book.apply(rules, parsed, arrival);
        let global = rules.alerts.global_webhooks;
        self.notices
            .extend(tally_core::hooks::after_step(&mut self.book, &step, global));
        self.alerts
            .extend(tally_core::hooks::reset_emails(&self.book, &step));
        self.alerts.extend(step.alerts);
        if which == Which::Commands {
            // Every decision of a command, and every rejected command: a caller of
            // `POST /v1/holds` may wait on any commands record it produced.
            match (&step.answer, &step.outcome) {
                (Some(answer), Outcome::Applied { account, .. }) => self.decided.push((
                    offset,
                    Decided::Answer {
                        account: account.to_string(),
                        answer: Box::new(answer.clone()),
                    },
                )),
                (_, Outcome::Rejected(rejection)) => self.decided.push((
                    offset,
                    Decided::Rejected {
                        code: rejection.code(),
                        reason: rejection.to_string(),
                    },
                )),
                _ => {}
            }
        }
        // Calls roll up in the segment of their usage record; nothing from the commands
        // topic is a call, but the next usage offset keeps the rule total.
        let usage_offset = match which {
            Which::Usage => offset,
            Which::Commands => self.usage.applied_next,
        };
        for entry in &step.due {
            let id = EntryId::Given(entry.id.as_deref().unwrap_or_default());
            self.record(id, entry, usage_offset);
        }
        // The clock may change an account without an entry (an empty lot expiring): its
        // state and lots rows are written all the same.
        for account in step.changed.iter().flatten() {
            self.touch(account);
        }
        match step.outcome {
            Outcome::Applied { account, entries } => {
                self.counts.applied += 1;
                self.metrics.applied(which);
                for (index, entry) in entries.iter().enumerate() {
                    let id = match &entry.id {
                        Some(id) => EntryId::Given(id),
                        None => EntryId::Position {
                            topic,
                            partition: self.partition,
                            offset,
                            index,
                        },
                    };
                    self.record(id, entry, usage_offset);
                }
                // Recording an entry of the account touched it already (most events).
                if !entries.iter().any(|entry| entry.account == account) {
                    self.touch(account.as_str());
                }
            }
            Outcome::Tick => {}
            Outcome::Duplicate { .. } => {
                self.counts.duplicates += 1;
                self.metrics.duplicate();
            }
            Outcome::Rejected(rejection) => {
                self.counts.rejected += 1;
                self.metrics.rejected(rejection.code());
                // A reason may echo a field of any size: the log line and the header get
                // its first kilobyte.
                let full = rejection.to_string();
                let reason = crate::kafka::cut_utf8(&full, crate::kafka::REASON_MAX_BYTES);
                tracing::info!(
                    topic,
                    partition = self.partition,
                    offset,
                    reason,
                    "event rejected to the dead-letter topic"
                );
                self.outgoing.dead_letters.push(DeadLetter {
                    topic: topic.to_string(),
                    partition: self.partition,
                    offset,
                    key,
                    payload,
                    code: rejection.code(),
                    reason: reason.to_string(),
                });
            }
        }
        if moves_clock {
            self.arrival_high = self.arrival_high.max(arrival.timestamp());
        }
        self.dirty = true;
    }

    /// Keeps one ledger entry for the next flush and notes what it touched.
    fn record(&mut self, id: EntryId<'_>, entry: &tally_core::LedgerEntry, usage_offset: i64) {
        self.rollups.add(entry, usage_offset);
        self.touch(entry.account.as_str());
        self.ledger.push(id, entry);
    }

    /// Notes that `account`'s state changed: the next flush writes it, the next publish
    /// shows it. Looked up before inserting, so a known account costs no allocation.
    fn touch(&mut self, account: &str) {
        if !self.touched.contains(account) {
            self.touched.insert(account.to_string());
        }
        if !self.unpublished.contains(account) {
            self.unpublished.insert(account.to_string());
        }
    }

    /// How far this partition has applied, and the ends its sides know.
    pub fn applied(&self) -> Applied {
        Applied {
            usage_next: self.usage.applied_next,
            commands_next: self.commands.applied_next,
            usage_end: self.usage.high,
            commands_end: self.commands.high,
        }
    }

    /// Publishes the states changed since the last publish, and `asked` (accounts checks
    /// wait for), to the checks' view.
    pub fn publish(&mut self, asked: &[String]) {
        let applied = self.applied();
        self.view
            .publish(&self.unpublished, asked, &self.book.accounts, applied);
        self.unpublished.clear();
    }

    /// Takes this partition's outputs since the last flush: its rows as a draft (encoded
    /// off the run thread, see [`super::encode`]), the rest into `out`. `None` when there
    /// was nothing to write.
    pub fn drain_into(
        &mut self,
        out: &mut Outputs,
        now_secs: u32,
        snapshot_min_rows: usize,
        earlier: Earlier,
    ) -> Option<Draft> {
        if !self.dirty {
            return None;
        }
        // A snapshot once the dead rows of the log (states and days rewritten since, dedup
        // keys the window has left) outgrow the live states and days twice over: restart
        // reads stay bounded by live accounts, open days and the dedup window, and what
        // the snapshot supersedes is deleted after the commit.
        let live = self.book.accounts.len() + self.rollups.len();
        let snapshot = earlier == Earlier::Committed
            && self.rows_since_snapshot > snapshot_min_rows.max(2 * live);
        if snapshot {
            self.touched.clear();
            let _ = self.rollups.take_changed();
        }
        let accounts: Vec<String> = if snapshot {
            self.book.accounts.keys().cloned().collect()
        } else {
            self.touched.drain().collect()
        };
        // Copies: the encoder reads them while the next batch changes the book.
        let states: Vec<(String, AccountState, LotRows)> = accounts
            .into_iter()
            .filter_map(|account| {
                let state = self.book.accounts.get(&account)?.clone();
                let lots = self.lots_written.note(&account, &state.lots);
                Some((account, state, lots))
            })
            .collect();
        let days = if snapshot {
            self.rollups.all()
        } else {
            self.rollups.take_changed()
        };
        let superseding = states.len() + days.len();
        // Dedup keys: the new ones one row each (the exact record a confirmation reads),
        // and the committed ones, once enough (or at a snapshot: all), sealed into one
        // compact blob that a restart loads instead of their rows. Sealing first: the
        // keys taken now are not committed yet, nor are those of a flush in flight.
        let blob = match earlier {
            Earlier::Committed => self.book.seen.seal(snapshot),
            Earlier::InFlight => None,
        };
        let seen = self.book.seen.take_fresh(self.version);
        if snapshot {
            self.rows_since_snapshot = 0;
            self.snapshot_pending = Some(self.version);
        } else {
            self.rows_since_snapshot += superseding;
        }
        out.outgoing.append(&mut self.outgoing);
        let partition = self.partition;
        out.decided.extend(
            self.decided
                .drain(..)
                .map(|(offset, decision)| (partition, offset, decision)),
        );
        out.alerts.append(&mut self.alerts);
        out.notices.append(&mut self.notices);
        self.dirty = false;
        debug_assert_eq!(self.ledger.version(), self.version, "rows of this flush");
        Some(Draft {
            partition,
            version: self.version,
            claim: self.claim_version,
            usage_offset: self.usage.applied_next,
            commands_offset: self.commands.applied_next,
            arrival_high: self.arrival_high,
            as_of: from_seconds(u32::try_from(self.arrival_high).unwrap_or(0)),
            written_at: now_secs,
            segment_records: self.rollups.size(),
            ledger: self.ledger.take(self.version + 1),
            states,
            days,
            seen,
            blob,
        })
    }

    /// Once this partition's rows went into a flush: what is applied next belongs to the
    /// next version, and dedup keys and days the clock has left behind are forgotten
    /// (the flush already carries what it needs of them).
    pub fn next_version(&mut self, rules: &Rules) {
        self.version += 1;
        debug_assert_eq!(
            self.ledger.version(),
            self.version,
            "rows of the next flush"
        );
        let clock = from_seconds(u32::try_from(self.arrival_high).unwrap_or(0));
        let before = self.book.seen.len() + self.rollups.len();
        self.book.seen.expire(clock, rules.dedup_window);
        self.rollups.close_before(self.usage.applied_next);
        // Expired dedup keys and the totals of closed segments are dead rows of the log,
        // as rewritten states are.
        self.rows_since_snapshot += before - self.book.seen.len() - self.rollups.len();
    }
}
