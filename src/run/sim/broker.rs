//! The broker in memory: both topics' logs, a consumer group that moves partitions
//! between members as Kafka's eager protocol does (every holder revokes before anything
//! is assigned again), and the run's [`Source`] and [`Outbox`] over them. Which record
//! a poll returns, and whether it returns one, is the schedule's choice.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};

use super::super::edges::{BoxFuture, Ingest, NoHeaders, Outbox, Rebalance, Record, Source};
use super::super::merge::{Rewind, Which};
use super::clickhouse::{lock, Faults};
use super::Rng;
use crate::kafka::Outgoing;

pub struct Message {
    pub key: Vec<u8>,
    pub payload: Vec<u8>,
    pub timestamp: i64,
}

#[derive(Default)]
struct Member {
    changes: VecDeque<Rebalance>,
    /// Assigned partitions, from the assignment handed over until it unassigns.
    holds: bool,
}

#[derive(Default)]
pub struct Broker {
    pub logs: BTreeMap<(Which, i32), Vec<Message>>,
    pub topics: (String, String),
    pub partitions: i32,
    pub dead_letters: usize,
    members: BTreeMap<usize, Member>,
    /// A rebalance waits for every holder to unassign.
    rebalancing: bool,
    pub rebalances: u64,
    /// Sides paused by any member, over the schedule.
    pub pauses: u64,
}

impl Broker {
    pub fn topic(&self, which: Which) -> &str {
        match which {
            Which::Usage => &self.topics.0,
            Which::Commands => &self.topics.1,
        }
    }

    pub fn join(&mut self, member: usize) {
        self.members.insert(member, Member::default());
        self.rebalance();
    }

    /// A member gone without a word (crashed): its partitions go to the others.
    pub fn leave(&mut self, member: usize) {
        self.members.remove(&member);
        self.rebalance();
    }

    /// Every holder revokes; then the partitions are handed out again.
    pub fn rebalance(&mut self) {
        self.rebalances += 1;
        self.rebalancing = true;
        for (id, member) in self.members.iter_mut().filter(|(_, m)| m.holds) {
            if super::tracing_on() {
                eprintln!("revoke from member {id}");
            }
            member.changes.push_back(Rebalance::Revoke);
        }
        self.settle();
    }

    /// Once no member holds partitions, hands them out again, round robin.
    pub fn settle(&mut self) {
        if !self.rebalancing || self.members.values().any(|m| m.holds) || self.members.is_empty() {
            return;
        }
        self.rebalancing = false;
        let ids: Vec<usize> = self.members.keys().copied().collect();
        let mut shares: BTreeMap<usize, BTreeSet<i32>> = BTreeMap::new();
        for partition in 0..self.partitions {
            let id = ids[partition as usize % ids.len()];
            shares.entry(id).or_default().insert(partition);
        }
        for (id, share) in shares {
            if let Some(member) = self.members.get_mut(&id) {
                if super::tracing_on() {
                    eprintln!("assign {share:?} to member {id}");
                }
                member.holds = true;
                member.changes.push_back(Rebalance::Assign(share));
            }
        }
    }

    pub fn ends(&self) -> BTreeMap<(Which, i32), i64> {
        self.logs
            .iter()
            .map(|(k, log)| (*k, log.len() as i64))
            .collect()
    }
}

/// One member's consumer.
pub struct SimSource {
    pub member: usize,
    pub broker: Arc<Mutex<Broker>>,
    pub rng: Rng,
    /// The next record to hand over, per assigned side: where a paused side resumes.
    positions: BTreeMap<(Which, i32), i64>,
    fetched: BTreeMap<(Which, i32), i64>,
    /// Sides paused, as librdkafka pauses partitions: nothing fetched, nothing handed over.
    paused: BTreeSet<(Which, i32)>,
}

impl SimSource {
    pub fn new(member: usize, broker: Arc<Mutex<Broker>>, seed: u64) -> SimSource {
        SimSource {
            member,
            broker,
            rng: Rng::new(seed),
            positions: BTreeMap::new(),
            fetched: BTreeMap::new(),
            paused: BTreeSet::new(),
        }
    }
}

impl Source for SimSource {
    fn poll(
        &mut self,
        _timeout: Duration,
        take: &mut dyn FnMut(&Record<'_>) -> Ingest,
    ) -> Option<Result<Ingest, String>> {
        if self.positions.is_empty() {
            return None;
        }
        let broker = lock(&self.broker);
        // A fetch response: the ends of every assigned side that is not paused.
        for key in self.positions.keys().filter(|k| !self.paused.contains(k)) {
            let end = broker.logs.get(key).map_or(0, |log| log.len() as i64);
            self.fetched.insert(*key, end);
        }
        if self.rng.chance(250) {
            return None;
        }
        let ready: Vec<(Which, i32)> = self
            .positions
            .iter()
            .filter(|(key, at)| {
                !self.paused.contains(key)
                    && broker
                        .logs
                        .get(key)
                        .is_some_and(|log| (**at as usize) < log.len())
            })
            .map(|(key, _)| *key)
            .collect();
        if ready.is_empty() {
            return None;
        }
        let key = ready[self.rng.below(ready.len() as u64) as usize];
        let offset = self.positions[&key];
        self.positions.insert(key, offset + 1);
        let message = &broker.logs[&key][offset as usize];
        let record = Record {
            which: key.0,
            topic: broker.topic(key.0),
            partition: key.1,
            offset,
            key: Some(&message.key),
            payload: &message.payload,
            timestamp: Some(message.timestamp),
            headers: &NoHeaders,
        };
        Some(Ok(take(&record)))
    }

    fn rebalance(&mut self) -> Option<Rebalance> {
        lock(&self.broker)
            .members
            .get_mut(&self.member)?
            .changes
            .pop_front()
    }

    fn assign(&mut self, starts: &[(Which, i32, Rewind)]) {
        // A new assignment starts with every side fetched (see `KafkaSource::assign`).
        self.paused.clear();
        self.positions.clear();
        self.fetched.clear();
        for &(which, partition, to) in starts {
            self.seek(which, partition, to);
        }
    }

    fn unassign(&mut self) {
        self.paused.clear();
        self.positions.clear();
        self.fetched.clear();
        let mut broker = lock(&self.broker);
        if let Some(member) = broker.members.get_mut(&self.member) {
            member.holds = false;
            // Revokes queued before are for an assignment it no longer has (Kafka's
            // generations drop them).
            member.changes.retain(|c| *c != Rebalance::Revoke);
        }
        broker.settle();
    }

    fn seek(&mut self, which: Which, partition: i32, to: Rewind) {
        let at = match to {
            Rewind::To(offset) => offset,
            Rewind::Beginning => 0,
        };
        self.positions.insert((which, partition), at);
    }

    fn pause(&mut self, sides: &[(Which, i32)]) {
        let assigned: Vec<_> = sides
            .iter()
            .filter(|side| self.positions.contains_key(side))
            .collect();
        debug_assert_eq!(
            assigned.len(),
            sides.len(),
            "only assigned sides are paused"
        );
        lock(&self.broker).pauses += assigned.len() as u64;
        self.paused.extend(assigned);
    }

    fn resume(&mut self, sides: &[(Which, i32)]) {
        for side in sides {
            self.paused.remove(side);
        }
    }

    fn fetched_end(&mut self, which: Which, partition: i32) -> Option<i64> {
        self.fetched.get(&(which, partition)).copied()
    }

    fn end_offsets(&self) -> anyhow::Result<BTreeMap<(Which, i32), i64>> {
        Ok(lock(&self.broker).ends())
    }

    fn commit(&mut self, _offsets: &[(i32, i64, i64)], _sync: bool) {}
}

/// Dead letters are counted; forwards land on their partition's log.
pub struct SimOutbox {
    pub broker: Arc<Mutex<Broker>>,
    pub faults: Arc<Mutex<Faults>>,
}

impl Outbox for SimOutbox {
    fn send<'a>(
        &'a self,
        outgoing: &'a Outgoing,
    ) -> BoxFuture<'a, anyhow::Result<Vec<(String, i32, i64)>>> {
        Box::pin(async move {
            if lock(&self.faults).fails() {
                anyhow::bail!("simulated failure: produce");
            }
            let mut broker = lock(&self.broker);
            broker.dead_letters += outgoing.dead_letters.len();
            let mut landed = Vec::new();
            for forward in &outgoing.forwards {
                let which = if forward.topic == broker.topics.0 {
                    Which::Usage
                } else {
                    Which::Commands
                };
                let log = broker.logs.entry((which, forward.partition)).or_default();
                log.push(Message {
                    key: forward.key.clone().unwrap_or_default(),
                    payload: forward.payload.clone(),
                    timestamp: forward.timestamp.unwrap_or(0),
                });
                landed.push((
                    forward.topic.clone(),
                    forward.partition,
                    log.len() as i64 - 1,
                ));
            }
            Ok(landed)
        })
    }

    fn ticks(&self, _partitions: &[i32], _at: DateTime<Utc>) {}
}
