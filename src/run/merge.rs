//! Merging an account partition's two topics by event time, holding an event back briefly
//! while the other topic may still deliver something earlier.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
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
}

impl Pending {
    /// Rejected payloads have no time and never wait.
    fn time(&self) -> Option<DateTime<Utc>> {
        self.parsed.as_ref().ok().map(|e| e.time)
    }
}

/// One topic's side of a partition.
pub struct Side {
    pub queue: VecDeque<Pending>,
    /// Next offset to apply: the side's committed position.
    pub applied_next: i64,
    /// Next offset to receive.
    pub received_next: i64,
    /// The latest known end of the topic partition; `i64::MAX` until a fetch response
    /// told us, so an unknown side is never taken for caught up.
    pub high: i64,
    /// Where a gap in offsets was last met and the partition read again from the start.
    /// A broker must return the record batch that contains the fetch offset; tansu 0.6
    /// returns the next batch instead, so a seek into the middle of a batch (a restart
    /// from a checkpoint) would skip records. One rewind per position finds them; a gap
    /// met again at the same position is real (compaction, transaction markers).
    pub rewound_at: Option<i64>,
    /// When the last record arrived (or the side was assigned).
    pub last_received: Instant,
}

impl Side {
    pub fn starting_at(offset: i64) -> Side {
        Side {
            queue: VecDeque::new(),
            applied_next: offset,
            received_next: offset,
            high: i64::MAX,
            rewound_at: None,
            last_received: Instant::now(),
        }
    }

    /// Nothing more to receive as far as we know.
    pub fn caught_up(&self) -> bool {
        self.queue.is_empty() && self.received_next >= self.high
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Which {
    Usage,
    Commands,
}

/// Which side's head to apply next, or `None` to wait. Commands win ties, so a grant made
/// at the same instant as a call pays for it.
pub fn next(usage: &Side, commands: &Side, now: Instant, max_idle: Duration) -> Option<Which> {
    let waited = |p: &Pending| now.duration_since(p.received) >= max_idle;
    match (usage.queue.front(), commands.queue.front()) {
        (Some(u), Some(c)) => match (u.time(), c.time()) {
            (None, _) => Some(Which::Usage),
            (_, None) => Some(Which::Commands),
            (Some(tu), Some(tc)) if tc <= tu => Some(Which::Commands),
            _ => Some(Which::Usage),
        },
        (Some(u), None) => {
            (u.time().is_none() || commands.caught_up() || waited(u)).then_some(Which::Usage)
        }
        (None, Some(c)) => {
            (c.time().is_none() || usage.caught_up() || waited(c)).then_some(Which::Commands)
        }
        (None, None) => None,
    }
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
        }
    }

    fn side(items: Vec<Pending>, received_next: i64, high: i64) -> Side {
        Side {
            queue: items.into(),
            applied_next: 0,
            received_next,
            high,
            rewound_at: None,
            last_received: Instant::now(),
        }
    }

    const IDLE: Duration = Duration::from_millis(200);

    #[test]
    fn earlier_event_time_goes_first_and_commands_win_ties() {
        let now = Instant::now();
        let u = side(vec![pending(0, Some("2026-11-20T10:00:00Z"), now)], 1, 1);
        let c = side(vec![pending(0, Some("2026-11-20T09:00:00Z"), now)], 1, 1);
        assert_eq!(next(&u, &c, now, IDLE), Some(Which::Commands));
        let c = side(vec![pending(0, Some("2026-11-20T10:00:00Z"), now)], 1, 1);
        assert_eq!(next(&u, &c, now, IDLE), Some(Which::Commands));
        let c = side(vec![pending(0, Some("2026-11-20T11:00:00Z"), now)], 1, 1);
        assert_eq!(next(&u, &c, now, IDLE), Some(Which::Usage));
    }

    #[test]
    fn waits_for_a_lagging_side_until_idle_or_caught_up() {
        let start = Instant::now();
        let u = side(vec![pending(0, Some("2026-11-20T10:00:00Z"), start)], 1, 1);
        let lagging = side(vec![], 3, 5);
        assert_eq!(next(&u, &lagging, start, IDLE), None);
        assert_eq!(next(&u, &lagging, start + IDLE, IDLE), Some(Which::Usage));
        let caught_up = side(vec![], 5, 5);
        assert_eq!(next(&u, &caught_up, start, IDLE), Some(Which::Usage));
    }

    #[test]
    fn rejected_payloads_never_wait() {
        let now = Instant::now();
        let u = side(vec![pending(0, None, now)], 1, 1);
        let c = side(vec![pending(0, Some("2026-11-20T09:00:00Z"), now)], 1, 1);
        assert_eq!(next(&u, &c, now, IDLE), Some(Which::Usage));
        assert_eq!(next(&u, &side(vec![], 0, 9), now, IDLE), Some(Which::Usage));
    }
}
