//! Probable duplicates (sealed fingerprints) confirmed against ClickHouse's exact rows off
//! the run thread: the partition that waits for an answer stays put while the others go
//! on, and a failed query is asked again after a backoff (doubling, capped), with a
//! warning and a count per failure.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::task::JoinHandle;

use super::edges::{Exec, Store};
use crate::store::{checkpoint, StoreError};

/// The keys one confirmation asks about, with the flushes that wrote them.
pub type Keys = Vec<checkpoint::Probable>;
pub use super::edges::Answers;

const FIRST_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(10);

/// Where a partition's confirmation stands.
#[derive(Default)]
pub enum Confirm {
    /// Nothing asked: the partition applies.
    #[default]
    Idle,
    /// A query in flight.
    Asking {
        task: JoinHandle<Result<Answers, StoreError>>,
        keys: Keys,
        backoff: Duration,
    },
    /// The last query failed: asked again at `at`.
    Waiting {
        at: Instant,
        keys: Keys,
        backoff: Duration,
    },
}

/// What a confirmation needs to ask ClickHouse.
pub struct Asker<'a> {
    pub rt: &'a Exec,
    pub store: &'a Arc<dyn Store>,
    pub partition: i32,
    /// The claim the partition is owned under: only its lineage's rows answer.
    pub claim: u64,
}

impl Asker<'_> {
    fn ask(&self, keys: Keys, backoff: Duration) -> Confirm {
        let store = self.store.clone();
        let (partition, claim) = (self.partition as u32, self.claim);
        let asked = keys.clone();
        let task = self
            .rt
            .spawn(async move { store.confirm(partition, claim, &asked).await });
        Confirm::Asking {
            task,
            keys,
            backoff,
        }
    }
}

/// What [`Confirm::step`] found.
pub enum Step {
    /// The partition may apply (`Some`: with these answers first).
    Ready(Option<Answers>),
    /// Still waiting for an answer or a retry.
    Blocked,
    /// The query failed: the partition waits `backoff` before asking again.
    Failed {
        error: StoreError,
        backoff: Duration,
    },
}

impl Confirm {
    /// Starts confirming `keys`.
    pub fn start(asker: &Asker<'_>, keys: Keys) -> Confirm {
        asker.ask(keys, FIRST_BACKOFF)
    }

    /// Looks at the confirmation without waiting: collects a finished query, and asks
    /// again once a failed one's backoff is over.
    pub fn step(&mut self, asker: &Asker<'_>, now: Instant) -> Step {
        match std::mem::take(self) {
            Confirm::Idle => Step::Ready(None),
            Confirm::Asking {
                task,
                keys,
                backoff,
            } if task.is_finished() => match asker.rt.block_on(task) {
                Ok(Ok(answers)) => Step::Ready(Some(answers)),
                Ok(Err(error)) => {
                    *self = Confirm::Waiting {
                        at: now + backoff,
                        keys,
                        backoff: (backoff * 2).min(MAX_BACKOFF),
                    };
                    Step::Failed { error, backoff }
                }
                Err(e) => std::panic::resume_unwind(e.into_panic()),
            },
            Confirm::Waiting { at, keys, backoff } if now >= at => {
                *self = asker.ask(keys, backoff);
                Step::Blocked
            }
            waiting => {
                *self = waiting;
                Step::Blocked
            }
        }
    }

    pub fn is_idle(&self) -> bool {
        matches!(self, Confirm::Idle)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Waits for the query in flight to end, without blocking the runtime it runs on.
    fn settle(confirm: &Confirm) {
        if let Confirm::Asking { task, .. } = confirm {
            while !task.is_finished() {
                std::thread::yield_now();
            }
        }
    }

    #[test]
    fn a_failed_confirmation_is_asked_again_after_a_doubling_capped_backoff() {
        let rt = tokio::runtime::Runtime::new().expect("runtime");
        // Nothing listens there: every query fails at once.
        let client = clickhouse::Client::default().with_url("http://127.0.0.1:1");
        let store: Arc<dyn Store> = Arc::new(super::super::clickhouse_edge::ClickHouseStore {
            target: crate::store::cluster::Target::Single(Box::new(client.clone())),
            client,
            stream: "s".into(),
        });
        let exec = Exec::Shared(rt.handle().clone());
        let asker = Asker {
            rt: &exec,
            store: &store,
            partition: 0,
            claim: 0,
        };
        let mut confirm = Confirm::start(&asker, vec![(7, Vec::new())]);
        let mut now = Instant::now();
        let mut backoffs = Vec::new();
        for _ in 0..10 {
            settle(&confirm);
            match confirm.step(&asker, now) {
                Step::Failed { backoff, .. } => backoffs.push(backoff),
                _ => panic!("the query cannot succeed"),
            }
            // Not asked again before its time; asked again at it.
            assert!(matches!(confirm.step(&asker, now), Step::Blocked));
            assert!(matches!(confirm, Confirm::Waiting { .. }));
            now += *backoffs.last().expect("one failure");
            assert!(matches!(confirm.step(&asker, now), Step::Blocked));
            assert!(matches!(confirm, Confirm::Asking { .. }));
        }
        let ms: Vec<u64> = backoffs.iter().map(|b| b.as_millis() as u64).collect();
        assert_eq!(
            ms,
            [100, 200, 400, 800, 1_600, 3_200, 6_400, 10_000, 10_000, 10_000]
        );
        assert!(!confirm.is_idle());
    }
}
