//! What a check reads: each owned partition's account states as of the run loop's last
//! apply batch, with how far that batch had applied. The run loop publishes the states it
//! changed after each batch; `/internal/check` reads them without ever waiting for the run
//! loop, so a check no longer queues behind a flush being built or a claim.
//!
//! A state is published as an `Arc` swapped into its shard's map: the shard's lock guards
//! one pointer insert or one lookup, never an apply, a flush build or the check itself.
//! Only the accounts checks are about are copied (every account would double the states'
//! memory): the first check of an account asks the run loop, which publishes it between
//! two passes, and from then on publishes it whenever it changes.

use std::collections::{BTreeMap, HashMap};
use std::hash::{BuildHasher, Hash, Hasher};
use std::sync::atomic::{AtomicI64, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::Duration;

use chrono::Utc;
use tally_core::{AccountState, Credits, Rules};

use crate::holds::owner::{Asking, CheckError, Checker};
use crate::holds::{CheckRequest, CheckResponse, Freshness};
use crate::partitioner::Partitioner;

/// Shards per partition: a publish and a check meet only on the same shard.
const SHARDS: usize = 16;

/// An end not known yet (no fetch response gave one).
const UNKNOWN: i64 = i64::MAX;
/// Accounts asked for and not yet published, across partitions: a check beyond it is
/// answered from what is published (an account without events).
const ASKS: usize = 1_024;
/// How long a check waits for the run loop to publish an account it asked for.
const ASK_WAIT: Duration = Duration::from_secs(2);

/// Accounts a view remembers as having no events, at most: past it, such an account is
/// asked for again at each check (a name nobody uses costs no memory for long).
const EMPTIES: usize = 100_000;

/// An account as a view knows it.
#[derive(Clone)]
enum Known {
    /// The run loop has no state for it: no event has named it.
    NoEvents,
    State(Arc<AccountState>),
}

type Accounts = HashMap<String, Known>;

/// One partition's published states.
pub struct PartitionView {
    shards: Box<[RwLock<Accounts>]>,
    usage_applied: AtomicI64,
    commands_applied: AtomicI64,
    usage_end: AtomicI64,
    commands_end: AtomicI64,
    /// Accounts remembered as [`Known::NoEvents`].
    empties: AtomicUsize,
    /// Publishes begun plus publishes ended: odd while one runs. A check that sees the
    /// same even value before and after its reads read states and offsets of one publish.
    epoch: AtomicU64,
}

/// How far a partition had applied, and the ends its sides knew, at a publish.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Applied {
    pub usage_next: i64,
    pub commands_next: i64,
    /// `None` until a fetch response gave the side's end.
    pub usage_end: Option<i64>,
    pub commands_end: Option<i64>,
}

fn read<T>(lock: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(|e| e.into_inner())
}

fn write<T>(lock: &RwLock<T>) -> RwLockWriteGuard<'_, T> {
    lock.write().unwrap_or_else(|e| e.into_inner())
}

impl PartitionView {
    fn new() -> Self {
        PartitionView {
            shards: (0..SHARDS).map(|_| RwLock::default()).collect(),
            usage_applied: AtomicI64::new(0),
            commands_applied: AtomicI64::new(0),
            usage_end: AtomicI64::new(UNKNOWN),
            commands_end: AtomicI64::new(UNKNOWN),
            empties: AtomicUsize::new(0),
            epoch: AtomicU64::new(0),
        }
    }

    fn shard(&self, account: &str) -> &RwLock<Accounts> {
        let mut hasher = std::hash::DefaultHasher::new();
        account.hash(&mut hasher);
        &self.shards[(hasher.finish() % SHARDS as u64) as usize]
    }

    /// Publishes the states of `accounts` (taken from `states`), then how far they go:
    /// a check that reads the new offsets finds states at least that recent.
    pub fn publish<'a, S: BuildHasher>(
        &self,
        changed: impl IntoIterator<Item = &'a String>,
        asked: impl IntoIterator<Item = &'a String>,
        states: &HashMap<String, AccountState, S>,
        applied: Applied,
    ) {
        self.epoch.fetch_add(1, Ordering::AcqRel);
        for account in changed {
            self.update(account, states, false);
        }
        for account in asked {
            self.update(account, states, true);
        }
        let known = |end: Option<i64>| end.unwrap_or(UNKNOWN);
        self.usage_end
            .store(known(applied.usage_end), Ordering::Relaxed);
        self.commands_end
            .store(known(applied.commands_end), Ordering::Relaxed);
        self.usage_applied
            .store(applied.usage_next, Ordering::Release);
        self.commands_applied
            .store(applied.commands_next, Ordering::Release);
        self.epoch.fetch_add(1, Ordering::Release);
    }

    /// Copies the account's state into the view: always when a check `asked` for it,
    /// otherwise only when a check has read it before, so the view holds copies of the
    /// accounts checks are about, not of every account the partition applies.
    fn update<S: BuildHasher>(
        &self,
        account: &String,
        states: &HashMap<String, AccountState, S>,
        asked: bool,
    ) {
        let mut shard = write(self.shard(account));
        if !asked && !shard.contains_key(account) {
            return;
        }
        let known = match states.get(account) {
            Some(state) => Known::State(Arc::new(state.clone())),
            None if self.empties.load(Ordering::Relaxed) < EMPTIES => Known::NoEvents,
            None => {
                shard.remove(account);
                return;
            }
        };
        let new_empty = matches!(known, Known::NoEvents);
        let old_empty = matches!(shard.insert(account.clone(), known), Some(Known::NoEvents));
        if new_empty && !old_empty {
            self.empties.fetch_add(1, Ordering::Relaxed);
        } else if old_empty && !new_empty {
            self.empties.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// The account as last published (`None`: not published, ask the run loop).
    fn state(&self, account: &str) -> Option<Known> {
        read(self.shard(account)).get(account).cloned()
    }

    /// How fresh an answer read now is. Offsets are read before the state, so they never
    /// claim more than the state shows.
    fn freshness(&self, partition: i32) -> Freshness {
        let usage_applied = self.usage_applied.load(Ordering::Acquire);
        let commands_applied = self.commands_applied.load(Ordering::Acquire);
        let lag = |end: &AtomicI64, next: i64| {
            let end = end.load(Ordering::Relaxed);
            (end != UNKNOWN).then(|| (end - next).max(0))
        };
        Freshness {
            partition,
            usage_applied,
            commands_applied,
            usage_lag: lag(&self.usage_end, usage_applied),
            commands_lag: lag(&self.commands_end, commands_applied),
        }
    }
}

/// A check's request to publish an account, and where to say it is done.
pub struct Ask {
    pub partition: i32,
    pub account: String,
    pub done: SyncSender<()>,
}

/// The published partitions of this process: added when one is claimed, all dropped at a
/// revoke.
pub struct Views {
    parts: RwLock<BTreeMap<i32, Arc<PartitionView>>>,
    asks: SyncSender<Ask>,
}

impl Views {
    /// The views, and the run loop's end of the accounts checks ask for.
    pub fn new() -> (Arc<Views>, Asks) {
        let (asks, asked) = sync_channel(ASKS);
        let views = Views {
            parts: RwLock::default(),
            asks,
        };
        (Arc::new(views), Asks(Mutex::new(asked)))
    }

    /// A fresh view for a partition just claimed: nothing published, everything asked for.
    pub fn claimed(&self, partition: i32, applied: Applied) -> Arc<PartitionView> {
        let view = Arc::new(PartitionView::new());
        view.publish([], [], &HashMap::<String, AccountState>::new(), applied);
        write(&self.parts).insert(partition, view.clone());
        view
    }

    /// Every partition went away: checks for them are refused until claimed again.
    pub fn released_all(&self) {
        write(&self.parts).clear();
    }

    fn get(&self, partition: i32) -> Option<Arc<PartitionView>> {
        read(&self.parts).get(&partition).cloned()
    }
}

/// What a check needs besides the states: the rules, and where accounts live.
pub struct CheckRules {
    pub rules: Rules,
    pub partitions: i32,
    pub partitioner: Partitioner,
}

/// The check, answered from the published states: every event of the last apply batch
/// counts, flushed or not, and the answer says how far that is.
pub fn checker(views: Arc<Views>, with: CheckRules) -> Checker {
    Box::new(move |partition, request, asking| check(&views, &with, partition, request, asking))
}

/// The run loop's end of the checks' asks; it answers them between passes.
pub struct Asks(Mutex<Receiver<Ask>>);

impl Asks {
    /// The asks waiting now, without blocking.
    pub fn take(&self) -> Vec<Ask> {
        let asked = self.0.lock().unwrap_or_else(|e| e.into_inner());
        asked.try_iter().collect()
    }
}

/// The account's published state (`None`: it has no events), asking the run loop for it
/// when it has none yet (`Some(wait)`: up to that long; `None`: never, `NotPublished`).
/// Without an answer from the run loop in time, the check is not answered (`Starting`:
/// try again) rather than answered as if the account were empty.
fn published(
    views: &Views,
    view: &Arc<PartitionView>,
    partition: i32,
    account: &str,
    ask_wait: Option<Duration>,
) -> Result<Option<Arc<AccountState>>, CheckError> {
    let known = match (view.state(account), ask_wait) {
        (Some(known), _) => known,
        (None, None) => return Err(CheckError::NotPublished),
        (None, Some(ask_wait)) => {
            ask(views, partition, account, ask_wait)?;
            // Published now, or past the cap on remembered empties: then it has none.
            view.state(account).unwrap_or(Known::NoEvents)
        }
    };
    // Revoked (and maybe claimed again) meanwhile: this view is not the owner's any more.
    match views.get(partition) {
        Some(current) if Arc::ptr_eq(&current, view) => Ok(match known {
            Known::NoEvents => None,
            Known::State(state) => Some(state),
        }),
        _ => Err(CheckError::NotOwner(partition)),
    }
}

/// Asks the run loop to publish `account`, and waits until it has.
fn ask(views: &Views, partition: i32, account: &str, wait_for: Duration) -> Result<(), CheckError> {
    let (done, wait) = sync_channel(1);
    let ask = Ask {
        partition,
        account: account.to_string(),
        done,
    };
    match views.asks.try_send(ask) {
        Ok(()) => wait.recv_timeout(wait_for).map_err(|_| {
            tracing::warn!(partition, "the run loop did not publish an account in time");
            CheckError::Starting
        }),
        Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
            tracing::warn!(
                partition,
                "too many checks wait for accounts to be published"
            );
            Err(CheckError::Starting)
        }
    }
}

/// Reads before giving up on a read that no publish overlaps; then the last read stands
/// (its offsets are never ahead of its state, only maybe behind).
const CONSISTENT_READS: usize = 4;

/// The partition's freshness and what `read` reads, from one publish when a read meets
/// no publish under way (a seqlock on [`PartitionView::epoch`]): a check never shows a
/// state with the offsets of the publish before it.
fn consistent<T>(
    view: &PartitionView,
    partition: i32,
    mut read: impl FnMut() -> Result<T, CheckError>,
) -> Result<(Freshness, T), CheckError> {
    let mut attempt = 0;
    loop {
        attempt += 1;
        let before = view.epoch.load(Ordering::Acquire);
        let freshness = view.freshness(partition);
        let value = read()?;
        // The reads above happen before the second look at the epoch.
        std::sync::atomic::fence(Ordering::Acquire);
        let settled = before.is_multiple_of(2) && view.epoch.load(Ordering::Relaxed) == before;
        if settled || attempt >= CONSISTENT_READS {
            return Ok((freshness, value));
        }
        std::thread::yield_now();
    }
}

fn check(
    views: &Views,
    with: &CheckRules,
    partition: i32,
    request: &CheckRequest,
    asking: Asking,
) -> Result<CheckResponse, CheckError> {
    let view = views
        .get(partition)
        .ok_or(CheckError::NotOwner(partition))?;
    if crate::holds::partition_of(&request.account, with.partitions, with.partitioner) != partition
    {
        return Err(CheckError::NotOwner(partition));
    }
    let ask_wait = match asking {
        Asking::Wait => Some(ASK_WAIT),
        Asking::Never => None,
    };
    let (freshness, state) = consistent(&view, partition, || {
        published(views, &view, partition, &request.account, ask_wait)
    })?;
    let state = state.unwrap_or_default();
    let quantity = request.quantity.unwrap_or(Credits::from_whole(1));
    let check = state
        .check(
            &with.rules,
            &request.feature,
            request.variant.as_deref(),
            quantity,
            Utc::now(),
        )
        .map_err(CheckError::Rejected)?;
    Ok(CheckResponse {
        account: request.account.clone(),
        check,
        freshness,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Long enough that only a run loop that never answers makes a test fail.
    const TEST_WAIT: Duration = Duration::from_secs(600);

    fn applied(usage_next: i64) -> Applied {
        Applied {
            usage_next,
            commands_next: 0,
            usage_end: None,
            commands_end: Some(5),
        }
    }

    #[test]
    fn a_check_reads_the_last_published_state_and_its_offsets() {
        let (views, _asks) = Views::new();
        let mut states = one_account("a");
        let view = views.claimed(3, applied(7));
        assert!(view.state("a").is_none());
        // Changed but never checked: no copy.
        view.publish([&"a".to_string()], [], &states, applied(7));
        assert!(view.state("a").is_none());
        view.publish([], [&"a".to_string()], &states, applied(7));
        assert!(matches!(view.state("a"), Some(Known::State(_))));
        assert!(view.state("b").is_none());
        let fresh = view.freshness(3);
        assert_eq!((fresh.usage_applied, fresh.usage_lag), (7, None));
        assert_eq!(fresh.commands_lag, Some(5));
        // A state published again replaces the old one; one gone is remembered as having
        // no events, so the next check need not ask.
        states.remove("a");
        view.publish([&"a".to_string()], [], &states, applied(9));
        assert!(matches!(view.state("a"), Some(Known::NoEvents)));
        assert_eq!(view.empties.load(Ordering::Relaxed), 1);
        states.insert("a".to_string(), AccountState::default());
        view.publish([&"a".to_string()], [], &states, applied(9));
        assert_eq!(view.empties.load(Ordering::Relaxed), 0);
        assert_eq!(view.freshness(3).usage_applied, 9);
        assert!(views.get(3).is_some() && views.get(4).is_none());
        views.released_all();
        assert!(views.get(3).is_none());
    }

    /// The run loop's states: `account` with an empty state.
    fn one_account(account: &str) -> HashMap<String, AccountState> {
        HashMap::from([(account.to_string(), AccountState::default())])
    }

    /// Answers the next ask the way the run loop does: publishes the account from
    /// `states` (or revokes every partition first), then says it is done.
    fn run_loop(
        views: Arc<Views>,
        asks: Asks,
        states: HashMap<String, AccountState>,
        revoke: bool,
    ) -> std::thread::JoinHandle<()> {
        std::thread::spawn(move || loop {
            let Some(ask) = asks.take().pop() else {
                std::thread::yield_now();
                continue;
            };
            if revoke {
                views.released_all();
            } else if let Some(view) = views.get(ask.partition) {
                view.publish([], [&ask.account], &states, applied(8));
            }
            let _ = ask.done.try_send(());
            return;
        })
    }

    #[test]
    fn a_check_of_an_account_not_published_asks_the_run_loop() {
        let (views, asks) = Views::new();
        let view = views.claimed(2, applied(7));
        let states = one_account("restored");
        let answered = run_loop(views.clone(), asks, states, false);
        let state = published(&views, &view, 2, "restored", Some(TEST_WAIT)).expect("answered");
        answered.join().expect("run loop");
        assert!(state.is_some());
        assert_eq!(view.freshness(2).usage_applied, 8);
    }

    #[test]
    fn a_partition_revoked_during_an_ask_is_not_answered_as_an_empty_account() {
        let (views, asks) = Views::new();
        let view = views.claimed(2, applied(7));
        let answered = run_loop(views.clone(), asks, HashMap::new(), true);
        let result = published(&views, &view, 2, "restored", Some(TEST_WAIT));
        answered.join().expect("run loop");
        assert!(matches!(result, Err(CheckError::NotOwner(2))));
    }

    #[test]
    fn an_account_without_events_is_asked_for_once() {
        let (views, asks) = Views::new();
        let view = views.claimed(2, applied(7));
        let answered = run_loop(views.clone(), asks, HashMap::new(), false);
        let state = published(&views, &view, 2, "nobody", Some(TEST_WAIT)).expect("answered");
        answered.join().expect("run loop");
        assert!(state.is_none());
        // The next check reads it without asking.
        assert!(matches!(view.state("nobody"), Some(Known::NoEvents)));
    }

    #[test]
    fn a_check_that_may_not_ask_answers_from_what_is_published_or_says_it_is_not() {
        let (views, asks) = Views::new();
        let view = views.claimed(2, applied(7));
        let result = published(&views, &view, 2, "a", None);
        assert!(matches!(result, Err(CheckError::NotPublished)));
        assert!(asks.take().is_empty(), "the run loop was not asked");
        let states = one_account("a");
        view.publish([], [&"a".to_string()], &states, applied(8));
        view.publish([], [&"nobody".to_string()], &states, applied(8));
        assert!(matches!(
            published(&views, &view, 2, "a", None),
            Ok(Some(_))
        ));
        assert!(matches!(
            published(&views, &view, 2, "nobody", None),
            Ok(None)
        ));
        views.released_all();
        let result = published(&views, &view, 2, "a", None);
        assert!(matches!(result, Err(CheckError::NotOwner(2))));
    }

    #[test]
    fn a_read_that_a_publish_overlaps_is_read_again() {
        let (views, _asks) = Views::new();
        let view = views.claimed(2, applied(7));
        let states = one_account("a");
        let mut reads = 0;
        // The first read runs while a publish does (what the run loop would do between
        // its states and its offsets); the second meets none and stands.
        let (freshness, ()) = consistent(&view, 2, || {
            reads += 1;
            if reads == 1 {
                view.publish([], [&"a".to_string()], &states, applied(9));
            }
            Ok(())
        })
        .expect("read");
        assert_eq!(reads, 2);
        assert_eq!(freshness.usage_applied, 9);
        // A publish under way on every read: the last read stands.
        let mut reads = 0;
        let result = consistent(&view, 2, || {
            reads += 1;
            view.epoch.fetch_add(2, Ordering::AcqRel);
            Ok(())
        });
        assert!(result.is_ok());
        assert_eq!(reads, CONSISTENT_READS);
    }

    #[test]
    fn a_published_state_is_not_answered_once_its_partition_is_revoked() {
        let (views, _asks) = Views::new();
        let view = views.claimed(2, applied(7));
        let states = one_account("a");
        view.publish([], [&"a".to_string()], &states, applied(8));
        assert!(published(&views, &view, 2, "a", Some(TEST_WAIT)).is_ok());
        views.released_all();
        let result = published(&views, &view, 2, "a", Some(TEST_WAIT));
        assert!(matches!(result, Err(CheckError::NotOwner(2))));
    }
}
