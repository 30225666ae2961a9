//! The owner's side, in `tally run`: answers checks from the partition's book as applied so
//! far, and keeps the decisions on `credit.hold` / `credit.release` records by (partition,
//! commands offset) for the callers waiting on them. A decision is handed out only once the
//! flush that contains its record has committed its checkpoint, so an answered hold is in
//! the committed state and survives a crash.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use tally_core::Rejection;

use super::{AnswerKind, CheckRequest, CheckResponse, Decided};

/// How long a committed decision is kept for its caller.
const RETENTION: Duration = Duration::from_secs(600);
/// At most this many decisions are kept; the oldest go first.
const MAX_KEPT: usize = 200_000;

/// Why the owner cannot answer a check.
#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    #[error("partition {0} is not owned by this process")]
    NotOwner(i32),
    #[error("{0}")]
    Rejected(Rejection),
    #[error("this process answers no checks yet")]
    Starting,
    /// Asked with [`Asking::Never`] about an account the run loop has not published.
    #[error("the account's state is not published yet")]
    NotPublished,
}

/// Whether a check may wait for the run loop to publish an account it has not published
/// yet (the first check of an account).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Asking {
    /// Ask the run loop and wait for it: this blocks, so it runs off the async workers.
    Wait,
    /// Answer only from what is published, without blocking; otherwise
    /// [`CheckError::NotPublished`].
    Never,
}

/// Where a caller's wait for a decision stands.
#[derive(Debug, Clone)]
pub enum Wait {
    /// The decision, committed: which answer it is and its JSON body.
    Answered(AnswerKind, Arc<[u8]>),
    /// This process does not own the partition (any more): ask the current owner.
    NotOwner,
    /// The record is committed and has no decision here: not a hold or release, a
    /// duplicate, or applied before this owner's checkpoint. Send the command again (same
    /// hold id): the answer is then the hold as it stands.
    Gone,
    /// Not decided and committed yet.
    Pending,
}

/// The check, installed by the run loop: (partition, request) to its answer.
pub type Checker =
    Box<dyn Fn(i32, &CheckRequest, Asking) -> Result<CheckResponse, CheckError> + Send + Sync>;

/// A decision as answered: which answer it is and its JSON body.
type Rendered = (AnswerKind, Arc<[u8]>);

#[derive(Default)]
struct Inner {
    answers: HashMap<(i32, i64), Rendered>,
    order: VecDeque<(Instant, (i32, i64))>,
    owned: BTreeSet<i32>,
    /// Per partition, the next commands offset the last committed checkpoint states.
    committed: BTreeMap<i32, i64>,
    /// Callers waiting on a record, woken only when something about it may have changed
    /// (its decision, its partition's checkpoint, the ownership): not all at every commit.
    waiters: HashMap<(i32, i64), Vec<Arc<tokio::sync::Notify>>>,
}

impl Inner {
    /// Wakes the waiters `which` selects and forgets them; they look again.
    fn wake(&mut self, which: impl Fn(&(i32, i64)) -> bool) {
        self.waiters.retain(|key, waiters| {
            if !which(key) {
                return true;
            }
            for waiter in waiters.iter() {
                // Stores a permit if the waiter is between its look and its wait.
                waiter.notify_one();
            }
            false
        });
    }
}

/// Shared by the run loop (which registers decisions) and the status endpoint (which
/// answers checks and waits).
#[derive(Default)]
pub struct Owner {
    inner: Mutex<Inner>,
    checker: OnceLock<Checker>,
}

impl Owner {
    pub fn new() -> Arc<Owner> {
        Arc::new(Owner::default())
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Installs the check, reading the run loop's state; once.
    pub fn set_checker(&self, checker: Checker) {
        let _ = self.checker.set(checker);
    }

    /// Answers a check for `partition` from the published states. With [`Asking::Wait`]
    /// it may block: an account not published yet waits for the run loop's next pass.
    pub fn check(
        &self,
        partition: i32,
        request: &CheckRequest,
        asking: Asking,
    ) -> Result<CheckResponse, CheckError> {
        match self.checker.get() {
            Some(check) => check(partition, request, asking),
            None => Err(CheckError::Starting),
        }
    }

    /// `partition` is this process's now, its checkpoint at `commands_offset`.
    pub fn claimed(&self, partition: i32, commands_offset: i64) {
        let mut inner = self.lock();
        inner.owned.insert(partition);
        inner.committed.insert(partition, commands_offset);
        inner.wake(|&(p, _)| p == partition);
    }

    /// Every partition went away (a revoke): waiters are told to ask the new owner.
    pub fn released_all(&self) {
        let mut inner = self.lock();
        inner.owned.clear();
        inner.committed.clear();
        inner.wake(|_| true);
    }

    /// A flush committed: its checkpoint states `offsets` (partition, usage, commands), and
    /// its records' decisions may be answered.
    pub fn committed(&self, offsets: &[(i32, i64, i64)], decided: Vec<(i32, i64, Decided)>) {
        if offsets.is_empty() && decided.is_empty() {
            return;
        }
        let now = Instant::now();
        let mut inner = self.lock();
        let mut moved = BTreeMap::new();
        for &(partition, _, commands) in offsets {
            if inner.owned.contains(&partition) {
                inner.committed.insert(partition, commands);
                moved.insert(partition, commands);
            }
        }
        for (partition, offset, decision) in decided {
            let (kind, body) = decision.render();
            inner
                .answers
                .insert((partition, offset), (kind, Arc::from(body)));
            inner.order.push_back((now, (partition, offset)));
        }
        // Decided now, or behind the new checkpoint without a decision (gone).
        inner.wake(|(partition, offset)| {
            moved
                .get(partition)
                .is_some_and(|&committed| *offset < committed)
        });
        while let Some(&(at, key)) = inner.order.front() {
            if inner.order.len() <= MAX_KEPT && now.duration_since(at) < RETENTION {
                break;
            }
            inner.order.pop_front();
            inner.answers.remove(&key);
        }
    }

    /// Where the wait for (partition, offset) stands; `register` adds a pending caller to
    /// the waiters, under the same lock as the look, so no change is missed.
    fn state(
        &self,
        partition: i32,
        offset: i64,
        register: Option<&Arc<tokio::sync::Notify>>,
    ) -> Wait {
        let mut inner = self.lock();
        if let Some((kind, body)) = inner.answers.get(&(partition, offset)) {
            return Wait::Answered(*kind, body.clone());
        }
        if !inner.owned.contains(&partition) {
            return Wait::NotOwner;
        }
        match inner.committed.get(&partition) {
            Some(&next) if offset < next => Wait::Gone,
            _ => {
                if let Some(waiter) = register {
                    inner
                        .waiters
                        .entry((partition, offset))
                        .or_default()
                        .push(waiter.clone());
                }
                Wait::Pending
            }
        }
    }

    /// Forgets a waiter that stopped waiting (its time ran out).
    fn unregister(&self, partition: i32, offset: i64, waiter: &Arc<tokio::sync::Notify>) {
        let mut inner = self.lock();
        if let Some(waiters) = inner.waiters.get_mut(&(partition, offset)) {
            waiters.retain(|w| !Arc::ptr_eq(w, waiter));
            if waiters.is_empty() {
                inner.waiters.remove(&(partition, offset));
            }
        }
    }

    /// Waits up to `timeout` for the decision on the commands record at `offset` of
    /// `partition`.
    pub async fn wait(&self, partition: i32, offset: i64, timeout: Duration) -> Wait {
        let deadline = tokio::time::Instant::now() + timeout;
        let waiter = Arc::new(tokio::sync::Notify::new());
        loop {
            match self.state(partition, offset, Some(&waiter)) {
                Wait::Pending => {}
                other => return other,
            }
            if tokio::time::timeout_at(deadline, waiter.notified())
                .await
                .is_err()
            {
                self.unregister(partition, offset, &waiter);
                return self.state(partition, offset, None);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rejected() -> Decided {
        Decided::Rejected {
            code: "bad_command",
            reason: "no".into(),
        }
    }

    #[tokio::test]
    async fn a_decision_is_answered_only_once_committed() {
        let owner = Owner::new();
        owner.claimed(2, 10);
        assert!(matches!(
            owner.wait(2, 12, Duration::ZERO).await,
            Wait::Pending
        ));
        let waiter = {
            let owner = owner.clone();
            tokio::spawn(async move { owner.wait(2, 12, Duration::from_secs(30)).await })
        };
        owner.committed(&[(2, 0, 13)], vec![(2, 12, rejected())]);
        match waiter.await.expect("joined") {
            Wait::Answered(AnswerKind::Rejected, _) => {}
            other => panic!("{other:?}"),
        }
        // A waiter is woken when its record falls behind the checkpoint undecided, and
        // when the partition goes away.
        let gone = {
            let owner = owner.clone();
            tokio::spawn(async move { owner.wait(2, 14, Duration::from_secs(30)).await })
        };
        let moved = {
            let owner = owner.clone();
            tokio::spawn(async move { owner.wait(2, 20, Duration::from_secs(30)).await })
        };
        tokio::task::yield_now().await;
        owner.committed(&[(2, 0, 16)], Vec::new());
        assert!(matches!(gone.await.expect("joined"), Wait::Gone));
        owner.released_all();
        assert!(matches!(moved.await.expect("joined"), Wait::NotOwner));
        owner.claimed(2, 16);
        // Committed without a decision: gone; another partition: not ours.
        assert!(matches!(
            owner.wait(2, 11, Duration::ZERO).await,
            Wait::Gone
        ));
        assert!(matches!(
            owner.wait(3, 0, Duration::ZERO).await,
            Wait::NotOwner
        ));
        // A decision outlives the ownership: it is committed, hence true.
        owner.released_all();
        assert!(matches!(
            owner.wait(2, 12, Duration::ZERO).await,
            Wait::Answered(AnswerKind::Rejected, _)
        ));
        assert!(matches!(
            owner.wait(2, 13, Duration::ZERO).await,
            Wait::NotOwner
        ));
    }
}
