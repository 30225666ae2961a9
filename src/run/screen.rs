//! What a record must be, beyond a valid event, to be applied in the partition it was
//! read from: a broker timestamp not too far ahead of this process's clock at receipt, an
//! event of its topic's role, and an account this partition owns. Pure: the caller reads
//! the clock and passes the time of receipt in.

use chrono::{DateTime, TimeDelta, Utc};
use tally_core::event::{self, Event};
use tally_core::Rejection;

use super::merge::Which;
use crate::partitioner::Partitioner;

/// What the edges of a deployment allow.
#[derive(Debug, Clone, Copy)]
pub struct Edges {
    /// How far a broker timestamp may be ahead of the clock at receipt.
    pub max_future_skew: TimeDelta,
    /// Partitions of each topic, and the key hash that places an account among them.
    pub partitions: i32,
    pub partitioner: Partitioner,
}

/// One received record, as far as the edges look at it.
#[derive(Clone, Copy)]
pub struct Record<'a> {
    pub which: Which,
    pub partition: i32,
    pub payload: &'a [u8],
    /// The broker timestamp (the producer's clock, for `CreateTime`).
    pub arrival: DateTime<Utc>,
    /// This process's clock when the record was received.
    pub received_at: DateTime<Utc>,
    /// Bytes of key, payload and headers: whether it can be produced again. Asked only of
    /// a record to forward (it reads the headers).
    pub size: &'a dyn Fn() -> usize,
}

/// Where a record goes.
#[derive(Debug)]
pub enum Verdict {
    /// Applied here, or dead-lettered from here with the rejection.
    Here(Result<Event, Rejection>),
    /// Belongs to another partition's account: produced there, applied there.
    Forward { to: i32, event: Event },
}

/// Decides where `record` goes. The order matters: a timestamp that cannot be trusted is
/// refused before anything is read, and an event on the wrong topic is refused where it
/// is, not forwarded.
pub fn screen(edges: &Edges, record: &Record<'_>) -> Verdict {
    if record.arrival - record.received_at > edges.max_future_skew {
        return Verdict::Here(Err(Rejection::FutureTimestamp {
            arrival: record.arrival,
            skew_secs: edges.max_future_skew.num_seconds(),
        }));
    }
    let event = match event::parse(record.payload, record.arrival) {
        Ok(event) => event,
        Err(rejection) => return Verdict::Here(Err(rejection)),
    };
    let on_usage_topic = record.which == Which::Usage;
    if event.body.is_usage() != on_usage_topic {
        return Verdict::Here(Err(Rejection::WrongTopic {
            ty: event.body.type_name().to_string(),
            topic: if on_usage_topic { "usage" } else { "commands" },
        }));
    }
    // A tick belongs to the partition it was sent to: it names no account.
    if matches!(event.body, event::Body::Tick) {
        return Verdict::Here(Ok(event));
    }
    let owner = edges
        .partitioner
        .partition(event.account.as_bytes(), edges.partitions);
    if owner == record.partition {
        return Verdict::Here(Ok(event));
    }
    if !crate::kafka::fits_producer((record.size)()) {
        return Verdict::Here(Err(Rejection::TooLargeToForward {
            account: event.account,
            owner,
        }));
    }
    Verdict::Forward { to: owner, event }
}

/// How many sources [`LoggedSources`] remembers before it starts again.
const LOGGED_SOURCES_MAX: usize = 1024;

/// Sources whose misplaced records were logged, so each is logged once and not once per
/// record. Hashes, not names, and a bounded count: a flood of made-up sources costs at
/// most a few kilobytes and a log line each time the set starts again.
#[derive(Debug, Default)]
pub struct LoggedSources {
    seen: std::collections::HashSet<u64>,
}

impl LoggedSources {
    /// Whether `source` has not been logged yet (and is now taken as logged).
    pub fn first_time(&mut self, source: &str) -> bool {
        use std::hash::{BuildHasher, BuildHasherDefault};
        let hash = BuildHasherDefault::<std::collections::hash_map::DefaultHasher>::default()
            .hash_one(source);
        if self.seen.contains(&hash) {
            return false;
        }
        if self.seen.len() >= LOGGED_SOURCES_MAX {
            self.seen.clear();
        }
        self.seen.insert(hash)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: &str = "2026-11-20T09:00:00Z";

    fn now() -> DateTime<Utc> {
        NOW.parse().expect("a time")
    }

    fn edges() -> Edges {
        Edges {
            max_future_skew: TimeDelta::minutes(5),
            partitions: 6,
            partitioner: Partitioner::Crc32,
        }
    }

    fn payload(ty: &str, account: &str) -> String {
        let data = if ty == "ai.usage" {
            r#"{"user":"kim","feature":"erase"}"#
        } else {
            r#"{"kind":"promotional","credits":5}"#
        };
        format!(
            r#"{{"specversion":"1.0","type":"{ty}","id":"e1","source":"s","subject":"{account}","time":"{NOW}","data":{data}}}"#
        )
    }

    fn record<'a>(
        which: Which,
        partition: i32,
        payload: &'a str,
        arrival: DateTime<Utc>,
    ) -> Record<'a> {
        Record {
            which,
            partition,
            payload: payload.as_bytes(),
            arrival,
            received_at: now(),
            size: &no_size,
        }
    }

    /// A size no test below asks for except to forward: small enough.
    fn no_size() -> usize {
        1
    }

    fn too_large() -> usize {
        crate::kafka::MESSAGE_MAX_BYTES
    }

    fn owner(account: &str) -> i32 {
        Partitioner::Crc32.partition(account.as_bytes(), 6)
    }

    fn code(verdict: Verdict) -> &'static str {
        match verdict {
            Verdict::Here(Err(rejection)) => rejection.code(),
            Verdict::Here(Ok(_)) => "applied",
            Verdict::Forward { .. } => "forwarded",
        }
    }

    #[test]
    fn a_timestamp_beyond_the_skew_is_refused_at_the_skew_it_is_not() {
        let usage = payload("ai.usage", "acme");
        let p = owner("acme");
        let at_skew = now() + TimeDelta::minutes(5);
        let past_it = at_skew + TimeDelta::milliseconds(1);
        assert_eq!(
            code(screen(&edges(), &record(Which::Usage, p, &usage, at_skew))),
            "applied"
        );
        assert_eq!(
            code(screen(&edges(), &record(Which::Usage, p, &usage, past_it))),
            "future_timestamp"
        );
        // Backfills: a timestamp in the past is as today.
        let old = now() - TimeDelta::days(30);
        assert_eq!(
            code(screen(&edges(), &record(Which::Usage, p, &usage, old))),
            "applied"
        );
        // Refused before parsing: even garbage stamped ahead is a timestamp refusal.
        let garbage = record(Which::Commands, p, "not json", past_it);
        assert_eq!(code(screen(&edges(), &garbage)), "future_timestamp");
    }

    #[test]
    fn usage_only_from_the_usage_topic_and_commands_only_from_the_commands_topic() {
        let p = owner("acme");
        let grant = payload("credit.grant", "acme");
        let usage = payload("ai.usage", "acme");
        assert_eq!(
            code(screen(&edges(), &record(Which::Usage, p, &grant, now()))),
            "wrong_topic"
        );
        assert_eq!(
            code(screen(&edges(), &record(Which::Commands, p, &usage, now()))),
            "wrong_topic"
        );
        assert_eq!(
            code(screen(&edges(), &record(Which::Commands, p, &grant, now()))),
            "applied"
        );
        let tick = format!(
            r#"{{"specversion":"1.0","type":"tally.tick","id":"t","source":"tally","time":"{NOW}"}}"#
        );
        assert_eq!(
            code(screen(&edges(), &record(Which::Usage, 0, &tick, now()))),
            "wrong_topic"
        );
        // A tick names no account: it belongs wherever it was sent.
        for partition in 0..6 {
            assert_eq!(
                code(screen(
                    &edges(),
                    &record(Which::Commands, partition, &tick, now())
                )),
                "applied"
            );
        }
    }

    #[test]
    fn a_record_outside_its_accounts_partition_is_forwarded_there() {
        let usage = payload("ai.usage", "acme");
        let home = owner("acme");
        let away = (home + 1) % 6;
        match screen(&edges(), &record(Which::Usage, away, &usage, now())) {
            Verdict::Forward { to, event } => {
                assert_eq!(to, home);
                assert_eq!(event.account, "acme");
            }
            other => panic!("expected a forward to {home}, got {other:?}"),
        }
        // Under murmur2 the owner is murmur2's.
        let murmur = Edges {
            partitioner: Partitioner::Murmur2,
            ..edges()
        };
        let murmur_home = Partitioner::Murmur2.partition(b"acme", 6);
        assert_eq!(
            code(screen(
                &murmur,
                &record(Which::Usage, murmur_home, &usage, now())
            )),
            "applied"
        );
        // Too large to produce again: dead-lettered, never applied here.
        let mut big = record(Which::Usage, away, &usage, now());
        big.size = &too_large;
        assert_eq!(code(screen(&edges(), &big)), "too_large_to_forward");
    }

    #[test]
    fn each_source_is_logged_once_and_the_set_stays_bounded() {
        let mut logged = LoggedSources::default();
        assert!(logged.first_time("java-service"));
        assert!(!logged.first_time("java-service"));
        for i in 0..10 * LOGGED_SOURCES_MAX {
            logged.first_time(&format!("made-up-{i}"));
            assert!(logged.seen.len() <= LOGGED_SOURCES_MAX);
        }
    }
}
