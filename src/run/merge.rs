//! Merging an account partition's two topics by event time, as Kafka Streams does for
//! co-partitioned inputs since KIP-695: an event waits, however long, while the other
//! topic is known (or not known not) to hold records tally has not received; `max_idle`
//! bounds only the wait for a side that has received everything up to its end.

use std::collections::VecDeque;
use std::fmt;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde::Serialize;
use tally_core::event::Event;
use tally_core::Rejection;

/// A received event not yet applied.
pub struct Pending {
    pub offset: i64,
    /// The broker's timestamp: the arrival time the core decides with.
    pub arrival: DateTime<Utc>,
    pub parsed: Result<Event, Rejection>,
    pub key: Option<Vec<u8>>,
    /// Kept for the dead-letter topic.
    pub payload: Vec<u8>,
    pub received: Instant,
    /// Set when the record belongs to another partition's account: it is produced there
    /// and never applied here.
    pub forward: Option<Forwarding>,
}

/// Where a misplaced record goes, and what it must keep of the original.
pub struct Forwarding {
    pub to: i32,
    pub headers: Option<rdkafka::message::OwnedHeaders>,
    /// The original broker timestamp, in milliseconds.
    pub timestamp: Option<i64>,
}

impl Pending {
    /// What it takes in a side's queue, for the side's byte bound: the entry itself and
    /// the received bytes it keeps (the parsed event's fields are about as many again).
    pub fn footprint(&self) -> usize {
        std::mem::size_of::<Pending>() + self.key.as_ref().map_or(0, Vec::len) + self.payload.len()
    }

    /// Rejected payloads have no time and never wait, nor do records forwarded elsewhere
    /// (they are applied in their own partition's order).
    fn time(&self) -> Option<DateTime<Utc>> {
        if self.forward.is_some() {
            return None;
        }
        self.parsed.as_ref().ok().map(|e| e.time)
    }
}

/// How much one side of a partition may hold received and not applied (TigerBeetle's "a
/// bound on every queue"): at the bound the source stops fetching it, and once the merge
/// has drained it to half (the low-water mark) it fetches again. Half, so that a resumed
/// side takes a good share of records per pause rather than flapping on every record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bound {
    pub records: usize,
    pub bytes: usize,
}

impl Bound {
    fn reached(self, records: usize, bytes: usize) -> bool {
        records >= self.records || bytes >= self.bytes
    }

    fn drained(self, records: usize, bytes: usize) -> bool {
        records <= self.records / 2 && bytes <= self.bytes / 2
    }
}

/// Whether the source fetches a side, and if not, why.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fetch {
    Open,
    /// Its queue reached its [`Bound`]: paused until the merge drains it to half.
    Full,
    /// Paused with every other side while flushes fail (nothing is applied meanwhile).
    Held,
}

/// What to tell the source about a side after a pass of the merge.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    Pause,
    Resume,
}

/// One topic's side of a partition.
pub struct Side {
    /// Received, not applied. Grown by [`Side::push`] and taken by [`Side::pop`] only, which
    /// keep `queued_bytes`.
    pub queue: VecDeque<Pending>,
    /// The queue's [`Pending::footprint`]s, summed.
    pub queued_bytes: usize,
    /// Whether the source fetches this side.
    pub fetch: Fetch,
    /// Next offset to apply: the side's committed position.
    pub applied_next: i64,
    /// Next offset to receive.
    pub received_next: i64,
    /// The latest known end of the topic partition; `None` until a fetch response told
    /// us, so an unknown side is never taken for caught up.
    pub high: Option<i64>,
    /// Since when this side has been seen at its end (everything up to `high` received)
    /// by the run loop; `None` while it lags, before it was seen there, and after a pause
    /// (a paused consumer fetches nothing, so the end it knows may be old).
    pub at_end_since: Option<Instant>,
    /// Where records last went missing and the side was read again: from a little before
    /// (the first time at a position; right after a resume, from less before first, see
    /// [`Side::resumed_at`]), then from the beginning (the second). A broker must
    /// return the record batch that contains the fetch offset; tansu 0.6 returns the next
    /// batch instead, so a seek into the middle of a batch would skip records. A gap met
    /// a third time at the same position is real (compaction, transaction markers).
    pub rewound_at: Option<(i64, Rewind)>,
    /// The position at the side's last resume: a gap met there first reads again from
    /// [`RESUME_LEAD_IN`] before it.
    pub resumed_at: Option<i64>,
    /// When the last record arrived (or the side was assigned).
    pub last_received: Instant,
}

/// How far before its position a side is read again first when records go missing right
/// after it resumed. librdkafka resumes at the record after the last one handed over, which
/// is usually inside a record batch; tansu answers that fetch with the next batch. The
/// batches `tally send` and most producers write are far smaller than the general lead-in
/// (`run::LEAD_IN`, 10,000), so every resume would otherwise read up to 10,000 records
/// again; if the batch is larger, the gap comes again and the general lead-in follows.
pub const RESUME_LEAD_IN: i64 = 1_000;

/// How long a side that resumed may receive nothing at the position it resumed from, while
/// the broker holds records past it, before it is read again. On tansu this happens when
/// the position is inside the partition's last batch: there is no later batch to answer
/// with, so no skipped offset shows the gap, and the general stall (`run::STALL`, which
/// also waits for every other side to go quiet) cost two seconds a step at the end of
/// every drain whose sides had paused (docs/benchmarks.md, session 12).
pub const RESUME_STALL: Duration = Duration::from_millis(250);

/// Where a side is read again from when records before its position went missing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rewind {
    /// From this offset: a little before the position.
    To(i64),
    /// From the partition's beginning.
    Beginning,
}

impl Side {
    /// Where to read again from, now that records at `received_next` went missing; `None`
    /// once both rewinds were tried at this position (the gap is real).
    pub fn rewind(&mut self, lead_in: i64) -> Option<Rewind> {
        let at = self.received_next;
        let back = |by: i64| at.saturating_sub(by).max(0);
        let next = match self.rewound_at {
            Some((position, Rewind::Beginning)) if position == at => return None,
            Some((position, Rewind::To(to))) if position == at && to > back(lead_in) => {
                Rewind::To(back(lead_in))
            }
            Some((position, Rewind::To(_))) if position == at => Rewind::Beginning,
            _ if self.resumed_at == Some(at) => Rewind::To(back(RESUME_LEAD_IN)),
            _ => Rewind::To(back(lead_in)),
        };
        self.rewound_at = Some((at, next));
        Some(next)
    }

    /// Whether the side still waits at the position it resumed from: nothing arrived
    /// since the resume and it was not read again there yet.
    pub fn waits_since_resume(&self) -> bool {
        let at = self.received_next;
        self.resumed_at == Some(at) && self.rewound_at.is_none_or(|(position, _)| position != at)
    }

    pub fn starting_at(offset: i64) -> Side {
        Side {
            queue: VecDeque::new(),
            queued_bytes: 0,
            fetch: Fetch::Open,
            applied_next: offset,
            received_next: offset,
            high: None,
            at_end_since: None,
            rewound_at: None,
            resumed_at: None,
            last_received: Instant::now(),
        }
    }

    /// Everything up to the known end has been received (it may not be applied yet).
    pub fn at_end(&self) -> bool {
        self.high.is_some_and(|high| self.received_next >= high)
    }

    /// Takes a new end from a fetch response and notes when the side was first seen at
    /// it. Records received since (see [`Side::received`]) reset the idle clock, and a
    /// paused side is never seen at its end: nothing fetches it, so its end may be old.
    pub fn observe_end(&mut self, high: Option<i64>, now: Instant) {
        if high.is_some() {
            self.high = high;
        }
        if !self.at_end() || self.fetch != Fetch::Open {
            self.at_end_since = None;
        } else if self.at_end_since.is_none() {
            self.at_end_since = Some(now);
        }
    }

    /// Called for each record received: the side moved, so it must be seen at its end
    /// again before anything waits out `max_idle` on it.
    pub fn received(&mut self, offset: i64, now: Instant) {
        self.received_next = offset + 1;
        self.last_received = now;
        self.at_end_since = None;
    }

    /// The end this side knows may be old (the consumer was paused or blocked).
    pub fn forget_idle(&mut self) {
        self.at_end_since = None;
    }

    /// Queues a received record. `true` when the queue has just reached its bound: the
    /// caller pauses the side's fetch at once, so no poll adds to it meanwhile (librdkafka
    /// hands over nothing of a paused partition, not even what it fetched ahead).
    pub fn push(&mut self, pending: Pending, bound: Bound) -> bool {
        let footprint = pending.footprint();
        self.queued_bytes += footprint;
        self.queue.push_back(pending);
        // A paused side receives nothing: a queue exceeds its bound by at most the record
        // that reached it.
        debug_assert!(
            self.queue.len() <= bound.records
                && self.queued_bytes < bound.bytes.saturating_add(footprint),
            "a side's queue past its bound: {} records, {} bytes, bound {bound:?}, {:?}",
            self.queue.len(),
            self.queued_bytes,
            self.fetch
        );
        if self.fetch == Fetch::Open && bound.reached(self.queue.len(), self.queued_bytes) {
            self.fetch = Fetch::Full;
            return true;
        }
        false
    }

    /// Takes the head of the queue, to apply it.
    pub fn pop(&mut self) -> Option<Pending> {
        let pending = self.queue.pop_front()?;
        debug_assert!(
            self.queued_bytes >= pending.footprint(),
            "bytes counted at push"
        );
        self.queued_bytes -= pending.footprint();
        Some(pending)
    }

    /// After a pass of the merge: whether the source should pause or resume this side, now
    /// that its queue is where it is and flushes fail or not (`failing`: every side holds,
    /// and a full side stays paused after the failure until drained). A resumed side's end
    /// is old and its silence while paused was no stall.
    pub fn settle_fetch(&mut self, bound: Bound, failing: bool, now: Instant) -> Option<Change> {
        let (records, bytes) = (self.queue.len(), self.queued_bytes);
        let (next, change) = match self.fetch {
            Fetch::Open if failing => (Fetch::Held, Some(Change::Pause)),
            Fetch::Open if bound.reached(records, bytes) => (Fetch::Full, Some(Change::Pause)),
            Fetch::Full if bound.drained(records, bytes) && failing => (Fetch::Held, None),
            Fetch::Full if bound.drained(records, bytes) => (Fetch::Open, Some(Change::Resume)),
            Fetch::Held if !failing && bound.reached(records, bytes) => (Fetch::Full, None),
            Fetch::Held if !failing => (Fetch::Open, Some(Change::Resume)),
            unchanged => (unchanged, None),
        };
        self.fetch = next;
        if change == Some(Change::Resume) {
            self.forget_idle();
            self.last_received = now;
            self.resumed_at = Some(self.received_next);
        }
        change
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Which {
    Usage,
    Commands,
}

impl Which {
    pub fn other(self) -> Which {
        match self {
            Which::Usage => Which::Commands,
            Which::Commands => Which::Usage,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Which::Usage => "usage",
            Which::Commands => "commands",
        }
    }
}

/// Why an event at the head of one side is held back for the other side.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WaitReason {
    /// No fetch response has told the other side's end yet.
    EndUnknown,
    /// The broker holds records of the other side that are not received yet.
    Lagging { received: i64, end: i64 },
    /// The other side has received up to its end; it gets `max_idle` to receive more,
    /// which runs out `until`: the run loop wakes then, not a poll later.
    IdleAtEnd { until: Instant },
}

impl WaitReason {
    /// When the wait ends by itself, if nothing is received meanwhile; `None` while it
    /// waits for records (they wake the run loop when they come).
    pub fn deadline(self) -> Option<Instant> {
        match self {
            WaitReason::IdleAtEnd { until } => Some(until),
            WaitReason::EndUnknown | WaitReason::Lagging { .. } => None,
        }
    }
}

impl fmt::Display for WaitReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WaitReason::EndUnknown => f.write_str("its end is not known yet"),
            WaitReason::Lagging { received, end } => write!(
                f,
                "the broker holds {} records not received yet (received up to {received}, end {end})",
                end - received
            ),
            WaitReason::IdleAtEnd { .. } => {
                f.write_str("it is at its end; waiting up to max_idle")
            }
        }
    }
}

/// What the merge decides for one partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Apply(Which),
    /// The head of `waiting` is held back for the other side.
    Wait {
        waiting: Which,
        reason: WaitReason,
    },
    /// Nothing received and not applied.
    Empty,
}

/// Which side's head to apply next, or why to wait. Commands win ties, so a grant made at
/// the same instant as a call pays for it.
pub fn next(usage: &Side, commands: &Side, now: Instant, max_idle: Duration) -> Decision {
    match (usage.queue.front(), commands.queue.front()) {
        (Some(u), Some(c)) => Decision::Apply(match (u.time(), c.time()) {
            (None, _) => Which::Usage,
            (_, None) => Which::Commands,
            (Some(tu), Some(tc)) if tc <= tu => Which::Commands,
            _ => Which::Usage,
        }),
        (Some(u), None) => alone(Which::Usage, u, commands, now, max_idle),
        (None, Some(c)) => alone(Which::Commands, c, usage, now, max_idle),
        (None, None) => Decision::Empty,
    }
}

/// The head of one side while the other side has nothing received: it goes only once the
/// other side is at its end and has stayed there `max_idle` since the head arrived.
fn alone(which: Which, head: &Pending, other: &Side, now: Instant, max_idle: Duration) -> Decision {
    if head.time().is_none() {
        return Decision::Apply(which);
    }
    let wait = |reason| Decision::Wait {
        waiting: which,
        reason,
    };
    let Some(end) = other.high else {
        return wait(WaitReason::EndUnknown);
    };
    if !other.at_end() {
        return wait(WaitReason::Lagging {
            received: other.received_next,
            end,
        });
    }
    match other.at_end_since {
        Some(since) => {
            let until = since.max(head.received) + max_idle;
            if now >= until {
                Decision::Apply(which)
            } else {
                wait(WaitReason::IdleAtEnd { until })
            }
        }
        // Not seen at its end since it moved: the run loop looks at its end this pass, and
        // the wait counts from then at the earliest.
        None => wait(WaitReason::IdleAtEnd {
            until: now.max(head.received) + max_idle,
        }),
    }
}

/// How long the run loop's next poll may wait: `longest`, cut to the earliest deadline
/// of a wait at the end, so an event goes when its `max_idle` runs out, not a poll later.
pub fn poll_wait(
    longest: Duration,
    deadlines: impl IntoIterator<Item = Instant>,
    now: Instant,
) -> Duration {
    deadlines
        .into_iter()
        .map(|at| at.saturating_duration_since(now))
        .fold(longest, Duration::min)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tally_core::event::Body;

    fn pending(offset: i64, time: Option<&str>, received: Instant) -> Pending {
        let parsed = match time {
            Some(t) => Ok(Event {
                id: offset.to_string(),
                source: "s".into(),
                account: "a".into(),
                time: t.parse().unwrap(),
                body: Body::Tick,
            }),
            None => Err(Rejection::NoSubject),
        };
        Pending {
            offset,
            arrival: Utc::now(),
            parsed,
            key: None,
            payload: Vec::new(),
            received,
            forward: None,
        }
    }

    fn side(items: Vec<Pending>, received_next: i64, high: i64) -> Side {
        let queued_bytes = items.iter().map(Pending::footprint).sum();
        Side {
            queue: items.into(),
            queued_bytes,
            fetch: Fetch::Open,
            applied_next: 0,
            received_next,
            high: Some(high),
            at_end_since: None,
            rewound_at: None,
            resumed_at: None,
            last_received: Instant::now(),
        }
    }

    const IDLE: Duration = Duration::from_millis(200);
    const TEN: &str = "2026-11-20T10:00:00Z";

    #[test]
    fn earlier_event_time_goes_first_and_commands_win_ties() {
        let now = Instant::now();
        let u = side(vec![pending(0, Some(TEN), now)], 1, 1);
        let c = side(vec![pending(0, Some("2026-11-20T09:00:00Z"), now)], 1, 1);
        assert_eq!(next(&u, &c, now, IDLE), Decision::Apply(Which::Commands));
        let c = side(vec![pending(0, Some(TEN), now)], 1, 1);
        assert_eq!(next(&u, &c, now, IDLE), Decision::Apply(Which::Commands));
        let c = side(vec![pending(0, Some("2026-11-20T11:00:00Z"), now)], 1, 1);
        assert_eq!(next(&u, &c, now, IDLE), Decision::Apply(Which::Usage));
    }

    #[test]
    fn a_lagging_side_is_waited_for_however_long() {
        let start = Instant::now();
        let u = side(vec![pending(0, Some(TEN), start)], 1, 1);
        let mut lagging = side(vec![], 3, 5);
        lagging.observe_end(None, start);
        let an_hour = start + Duration::from_secs(3600);
        assert_eq!(
            next(&u, &lagging, an_hour, IDLE),
            Decision::Wait {
                waiting: Which::Usage,
                reason: WaitReason::Lagging {
                    received: 3,
                    end: 5
                }
            }
        );
    }

    #[test]
    fn a_side_whose_end_is_unknown_counts_as_lagging() {
        let start = Instant::now();
        let c = side(vec![pending(0, Some(TEN), start)], 1, 1);
        let unknown = Side::starting_at(0);
        assert_eq!(
            next(&unknown, &c, start + Duration::from_secs(3600), IDLE),
            Decision::Wait {
                waiting: Which::Commands,
                reason: WaitReason::EndUnknown
            }
        );
    }

    #[test]
    fn a_side_at_its_end_gets_max_idle_counted_from_the_later_of_arrival_and_seen_at_end() {
        let start = Instant::now();
        let mut other = side(vec![], 5, 5);
        other.observe_end(None, start);
        // Seen at its end long ago: the head still waits max_idle from its own arrival.
        let late = start + Duration::from_secs(10);
        let u = side(vec![pending(0, Some(TEN), late)], 1, 1);
        assert!(matches!(
            next(&u, &other, late, IDLE),
            Decision::Wait { .. }
        ));
        assert_eq!(
            next(&u, &other, late + IDLE, IDLE),
            Decision::Apply(Which::Usage)
        );
        // A record received resets the idle clock until the side is seen at its end again.
        other.received(5, late);
        other.high = Some(6);
        assert!(matches!(
            next(&u, &other, late + IDLE * 5, IDLE),
            Decision::Wait {
                reason: WaitReason::IdleAtEnd { .. },
                ..
            }
        ));
        other.observe_end(Some(6), late + IDLE * 5);
        assert_eq!(
            next(&u, &other, late + IDLE * 6, IDLE),
            Decision::Apply(Which::Usage)
        );
    }

    #[test]
    fn a_wait_at_the_end_names_the_instant_it_ends_and_ends_exactly_then() {
        let start = Instant::now();
        let ms = Duration::from_millis;
        let mut other = side(vec![], 5, 5);
        other.observe_end(None, start);
        // The head arrived after the side was seen at its end: max_idle from its arrival.
        let u = side(vec![pending(0, Some(TEN), start + ms(50))], 1, 1);
        let waiting = next(&u, &other, start + ms(60), IDLE);
        let until = start + ms(250);
        assert_eq!(
            waiting,
            Decision::Wait {
                waiting: Which::Usage,
                reason: WaitReason::IdleAtEnd { until }
            }
        );
        let Decision::Wait { reason, .. } = waiting else {
            unreachable!("checked above")
        };
        assert_eq!(reason.deadline(), Some(until));
        assert!(matches!(
            next(&u, &other, until - Duration::from_nanos(1), IDLE),
            Decision::Wait { .. }
        ));
        assert_eq!(next(&u, &other, until, IDLE), Decision::Apply(Which::Usage));
        // Seen at its end after the head arrived: max_idle from then.
        let mut other = side(vec![], 5, 5);
        other.observe_end(None, start + ms(100));
        assert_eq!(
            next(&u, &other, start + ms(100), IDLE),
            Decision::Wait {
                waiting: Which::Usage,
                reason: WaitReason::IdleAtEnd {
                    until: start + ms(300)
                }
            }
        );
        // Waiting for records has no deadline: their arrival wakes the loop.
        let lagging = WaitReason::Lagging {
            received: 3,
            end: 5,
        };
        assert_eq!(lagging.deadline(), None);
        assert_eq!(WaitReason::EndUnknown.deadline(), None);
    }

    #[test]
    fn the_poll_waits_until_the_earliest_deadline_at_most() {
        let now = Instant::now();
        let ms = Duration::from_millis;
        assert_eq!(poll_wait(ms(20), [], now), ms(20));
        assert_eq!(poll_wait(ms(20), [now + ms(30)], now), ms(20));
        assert_eq!(poll_wait(ms(20), [now + ms(30), now + ms(7)], now), ms(7));
        // A deadline passed already: no wait at all.
        assert_eq!(poll_wait(ms(20), [now], now + ms(1)), Duration::ZERO);
    }

    #[test]
    fn a_higher_end_makes_a_side_lag_again_and_a_pause_forgets_idle_time() {
        let start = Instant::now();
        let u = side(vec![pending(0, Some(TEN), start)], 1, 1);
        let mut other = side(vec![], 5, 5);
        other.observe_end(None, start);
        other.observe_end(Some(7), start);
        assert_eq!(other.at_end_since, None);
        assert!(matches!(
            next(&u, &other, start + IDLE * 10, IDLE),
            Decision::Wait {
                reason: WaitReason::Lagging { .. },
                ..
            }
        ));
        let mut other = side(vec![], 5, 5);
        other.observe_end(None, start);
        other.forget_idle();
        assert!(matches!(
            next(&u, &other, start + IDLE * 10, IDLE),
            Decision::Wait { .. }
        ));
    }

    #[test]
    fn missing_records_are_read_again_from_a_little_before_then_from_the_beginning() {
        let mut side = Side::starting_at(25_000);
        assert_eq!(side.rewind(10_000), Some(Rewind::To(15_000)));
        assert_eq!(side.rewind(10_000), Some(Rewind::Beginning));
        assert_eq!(
            side.rewind(10_000),
            None,
            "a third gap at one position is real"
        );
        side.received(25_000, Instant::now());
        assert_eq!(
            side.rewind(10_000),
            Some(Rewind::To(15_001)),
            "a new position starts over"
        );
        assert_eq!(Side::starting_at(3).rewind(10_000), Some(Rewind::To(0)));
        // Right after a resume: a little before first, then as usual.
        let mut resumed = Side::starting_at(25_000);
        resumed.resumed_at = Some(25_000);
        assert_eq!(resumed.rewind(10_000), Some(Rewind::To(24_000)));
        assert_eq!(resumed.rewind(10_000), Some(Rewind::To(15_000)));
        assert_eq!(resumed.rewind(10_000), Some(Rewind::Beginning));
        assert_eq!(resumed.rewind(10_000), None);
        let mut near_start = Side::starting_at(500);
        near_start.resumed_at = Some(500);
        assert_eq!(near_start.rewind(10_000), Some(Rewind::To(0)));
        assert_eq!(near_start.rewind(10_000), Some(Rewind::Beginning));
    }

    #[test]
    fn a_side_waits_since_its_resume_until_a_record_arrives_or_it_is_read_again() {
        let now = Instant::now();
        let mut side = Side::starting_at(25_000);
        assert!(!side.waits_since_resume(), "never resumed");
        side.resumed_at = Some(25_000);
        assert!(side.waits_since_resume());
        side.received(25_000, now);
        assert!(
            !side.waits_since_resume(),
            "a record arrived after the resume"
        );
        side.resumed_at = Some(25_001);
        assert_eq!(side.rewind(10_000), Some(Rewind::To(24_001)));
        assert!(
            !side.waits_since_resume(),
            "read again at the position: the usual stall takes over"
        );
    }

    #[test]
    fn rejected_payloads_never_wait() {
        let now = Instant::now();
        let u = side(vec![pending(0, None, now)], 1, 1);
        let c = side(vec![pending(0, Some("2026-11-20T09:00:00Z"), now)], 1, 1);
        assert_eq!(next(&u, &c, now, IDLE), Decision::Apply(Which::Usage));
        assert_eq!(
            next(&u, &side(vec![], 0, 9), now, IDLE),
            Decision::Apply(Which::Usage)
        );
    }

    #[test]
    fn a_full_side_pauses_at_its_bound_and_resumes_at_half() {
        let now = Instant::now();
        let bound = Bound {
            records: 4,
            bytes: usize::MAX,
        };
        let mut s = Side::starting_at(0);
        for offset in 0..3 {
            assert!(!s.push(pending(offset, Some(TEN), now), bound));
        }
        assert!(
            s.push(pending(3, Some(TEN), now), bound),
            "the fourth fills it"
        );
        assert_eq!(s.fetch, Fetch::Full);
        assert_eq!(s.settle_fetch(bound, false, now), None, "paused already");
        s.pop();
        assert_eq!(
            s.settle_fetch(bound, false, now),
            None,
            "3 left: above half"
        );
        s.pop();
        s.observe_end(Some(4), now);
        assert_eq!(
            s.at_end_since, None,
            "a paused side is never idle at its end"
        );
        assert_eq!(s.settle_fetch(bound, false, now), Some(Change::Resume));
        assert_eq!(s.fetch, Fetch::Open);
        assert_eq!(
            s.queued_bytes,
            s.queue.iter().map(Pending::footprint).sum::<usize>()
        );
    }

    #[test]
    fn bytes_bound_a_side_too() {
        let now = Instant::now();
        let one = pending(0, Some(TEN), now).footprint();
        let bound = Bound {
            records: 1_000,
            bytes: one * 2,
        };
        let mut s = Side::starting_at(0);
        assert!(!s.push(pending(0, Some(TEN), now), bound));
        assert!(s.push(pending(1, Some(TEN), now), bound));
        s.pop();
        assert_eq!(s.settle_fetch(bound, false, now), Some(Change::Resume));
        assert_eq!(s.queued_bytes, one);
    }

    #[test]
    fn a_failing_flush_holds_every_side_and_its_end_keeps_full_ones_paused() {
        let now = Instant::now();
        let bound = Bound {
            records: 2,
            bytes: usize::MAX,
        };
        let mut open = Side::starting_at(0);
        let mut full = Side::starting_at(0);
        full.push(pending(0, Some(TEN), now), bound);
        assert!(full.push(pending(1, Some(TEN), now), bound));
        assert_eq!(open.settle_fetch(bound, true, now), Some(Change::Pause));
        assert_eq!(full.settle_fetch(bound, true, now), None);
        // The flush succeeds again: the open side resumes, the full one stays paused...
        assert_eq!(open.settle_fetch(bound, false, now), Some(Change::Resume));
        assert_eq!(full.settle_fetch(bound, false, now), None);
        // ... until the merge drains it, and not while another failure holds it.
        full.pop();
        assert_eq!(full.settle_fetch(bound, true, now), None);
        assert_eq!(full.fetch, Fetch::Held);
        assert_eq!(full.settle_fetch(bound, false, now), Some(Change::Resume));
    }
}
