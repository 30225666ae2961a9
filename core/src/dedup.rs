//! The dedup window: the same (account, source, id) seen again within the window is not
//! charged again, and no id is ever skipped unless it is proven to be a copy.
//!
//! Ids recorded since the last seal are kept exactly (their 128-bit key and first arrival).
//! The shell seals the ones already committed to ClickHouse into a compact set of 48-bit
//! fingerprints (6 bytes an id, grouped by *generation*, one per seal, so a generation
//! expires whole). A fingerprint is not an identity: a hit there is only a *probable*
//! copy, which the shell confirms against the exact rows in ClickHouse
//! ([`Seen::needs_confirm`], [`Seen::answer`]) before the core calls it a duplicate.
//! Without an answer the core treats the id as new. A `Seen::default()` never seals, so
//! it is exact by itself (the reference model and the core's tests use it).

use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasherDefault, Hasher};

use chrono::{DateTime, TimeDelta, Utc};

use crate::event::Event;
use crate::key_table::{Found, KeyTable};

/// 128-bit key of (account, source, id): collisions are out of reach at any volume.
/// The hash is xxh3-128 of each part's length (8 bytes, little-endian) then its bytes.
#[inline]
pub fn key(account: &str, source: &str, id: &str) -> u128 {
    // Every event comes here: the parts are laid out in a buffer on the stack and hashed
    // in one call, which gives the streaming hasher's digest at a fraction of its cost.
    let mut buffer = [0u8; KEY_BUFFER];
    let mut len = 0;
    for part in [account, source, id] {
        let Some(slot) = buffer.get_mut(len..len + 8 + part.len()) else {
            return streamed_key(account, source, id);
        };
        slot[..8].copy_from_slice(&(part.len() as u64).to_le_bytes());
        copy_part(&mut slot[8..], part.as_bytes());
        len += 8 + part.len();
    }
    xxhash_rust::xxh3::xxh3_128(&buffer[..len])
}

/// Copies `part` into `slot`, of the same length. Parts are short (ids, names): two
/// copies of a fixed size that overlap in the middle cover 4 to 32 bytes, where
/// `copy_from_slice` calls `memcpy` for a length it does not know.
#[inline(always)]
fn copy_part(slot: &mut [u8], part: &[u8]) {
    debug_assert_eq!(slot.len(), part.len());
    let len = part.len();
    match len {
        4..=7 => copy_ends::<4>(slot, part),
        8..=15 => copy_ends::<8>(slot, part),
        16..=32 => copy_ends::<16>(slot, part),
        _ => slot.copy_from_slice(part),
    }
}

/// Copies the first and the last `N` bytes of `part` (`N <= part.len() <= 2 * N`).
#[inline(always)]
fn copy_ends<const N: usize>(slot: &mut [u8], part: &[u8]) {
    let len = part.len();
    slot[..N].copy_from_slice(&part[..N]);
    slot[len - N..len].copy_from_slice(&part[len - N..]);
}

/// Bytes of the parts of a key hashed in one call; longer ones are streamed. Every call
/// zeroes it: 128 bytes hold three lengths and a UUID id with an account and a source of
/// up to 68 bytes together, at half the cost of zeroing 256.
const KEY_BUFFER: usize = 128;

/// [`key`] for parts too long for its buffer.
fn streamed_key(account: &str, source: &str, id: &str) -> u128 {
    let mut hasher = xxhash_rust::xxh3::Xxh3::new();
    for part in [account, source, id] {
        hasher.update(&(part.len() as u64).to_le_bytes());
        hasher.update(part.as_bytes());
    }
    hasher.digest128()
}

/// The key of a parsed event, as `book::Book` computes it: the shell asks with
/// the same key whether a confirmation is needed before it applies the event.
pub fn key_of(event: &Event) -> u128 {
    key(&event.account, &event.source, &event.id)
}

/// Keys are already uniform hashes: hashing them again would only cost time.
#[derive(Default)]
struct KeyHasher(u64);

impl Hasher for KeyHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.0 ^= u64::from_le_bytes(word);
        }
    }

    fn write_u128(&mut self, key: u128) {
        self.0 = key as u64;
    }
}

type KeyMap<V> = HashMap<u128, V, BuildHasherDefault<KeyHasher>>;

/// The sealed set is split by the fingerprint's top byte: a seal rebuilds one stripe at
/// a time, so it never holds a second copy of the whole set.
const STRIPES: usize = 256;
/// Fingerprint bits kept in memory below the stripe byte (48 bits in all with it).
const FP_BITS: u32 = 40;
/// Generation tag bits: a seal's entries carry its slot, so a generation is dropped whole.
const SLOT_BITS: u32 = 8;
const SLOTS: usize = 1 << SLOT_BITS;
/// One sealed entry: fingerprint and slot in 6 bytes.
const ENTRY_BYTES: usize = 6;
/// Fingerprint bits a blob keeps below the stripe byte (as many as memory uses).
const BLOB_FP_BITS: u32 = 40;
const BLOB_ENTRY_BYTES: usize = 5;
/// Entries per shard of a stripe, on average between this and twice this: a lookup scans
/// one shard (a few cache lines); the shard index costs 4 bytes per this many ids.
const SHARD_LOAD: usize = 16;
/// A seal happens once the committed exact keys reach this many, or a fraction of the
/// sealed ones (so a seal's rebuild, linear in the sealed set, is amortized).
const SEAL_MIN: usize = 1 << 16;
const SEAL_FRACTION: usize = 64;

const BLOB_MAGIC: &[u8; 4] = b"TSW1";

/// A flush whose dedup keys are committed: its version and the range of their first
/// arrivals, so a confirmation reads only the flushes that may hold a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Written {
    pub version: u64,
    pub first_at: i64,
    pub last_at: i64,
}

/// One seal: the committed flushes it holds and its slot among the tags.
#[derive(Debug, Clone)]
struct Generation {
    slot: u16,
    written: Vec<Written>,
    /// Latest first arrival it holds: the generation expires whole once this does.
    last_at: i64,
}

/// The entries of one stripe, grouped by shard (the top bits of the fingerprint).
#[derive(Debug, Default, Clone)]
struct Stripe {
    shard_bits: u32,
    /// Start of each shard in `entries`, and the end; empty while the stripe is.
    offsets: Vec<u32>,
    entries: Vec<[u8; ENTRY_BYTES]>,
}

fn entry_value(entry: &[u8; ENTRY_BYTES]) -> u64 {
    let mut word = [0u8; 8];
    word[..ENTRY_BYTES].copy_from_slice(entry);
    u64::from_le_bytes(word)
}

fn entry_of(fp: u64, slot: u16) -> u64 {
    (fp << SLOT_BITS) | u64::from(slot)
}

impl Stripe {
    fn shard(&self, fp: u64) -> usize {
        if self.shard_bits == 0 {
            0
        } else {
            (fp >> (FP_BITS - self.shard_bits)) as usize
        }
    }

    /// Slots of the entries with fingerprint `fp`.
    fn slots(&self, fp: u64) -> impl Iterator<Item = u16> + '_ {
        let range = if self.offsets.is_empty() {
            0..0
        } else {
            let shard = self.shard(fp);
            self.offsets[shard] as usize..self.offsets[shard + 1] as usize
        };
        self.entries[range].iter().filter_map(move |entry| {
            let value = entry_value(entry);
            (value >> SLOT_BITS == fp).then_some((value & (SLOTS as u64 - 1)) as u16)
        })
    }

    /// Rebuilds the stripe from the entries whose slot `keep` says, and `added` (entry
    /// values), into arrays of exactly the size needed. While the shard count still fits,
    /// one sequential pass: each shard's kept entries, then its added ones.
    fn rebuild(&mut self, keep: &[bool; SLOTS], added: &mut [u64]) {
        let kept = if self.offsets.is_empty() {
            0
        } else {
            self.entries
                .iter()
                .filter(|entry| keep[entry[0] as usize])
                .count()
        };
        let n = kept + added.len();
        let fits = !self.offsets.is_empty() && {
            let per_shard = n >> self.shard_bits;
            (SHARD_LOAD / 2..SHARD_LOAD * 4).contains(&per_shard)
                || (self.shard_bits == 0 && n < SHARD_LOAD * 4)
        };
        if !fits {
            let values: Vec<u64> = self
                .entries
                .iter()
                .filter(|entry| keep[entry[0] as usize])
                .map(entry_value)
                .chain(added.iter().copied())
                .collect();
            self.build(&values);
            return;
        }
        added.sort_unstable_by_key(|value| self.shard(value >> SLOT_BITS));
        let shards = 1usize << self.shard_bits;
        let mut entries: Vec<[u8; ENTRY_BYTES]> = Vec::with_capacity(n);
        let mut offsets = Vec::with_capacity(shards + 1);
        let mut next_added = 0;
        for shard in 0..shards {
            offsets.push(entries.len() as u32);
            let old = &self.entries[self.offsets[shard] as usize..self.offsets[shard + 1] as usize];
            entries.extend(old.iter().filter(|entry| keep[entry[0] as usize]));
            while next_added < added.len() && self.shard(added[next_added] >> SLOT_BITS) == shard {
                let mut entry = [0u8; ENTRY_BYTES];
                entry.copy_from_slice(&added[next_added].to_le_bytes()[..ENTRY_BYTES]);
                entries.push(entry);
                next_added += 1;
            }
        }
        offsets.push(entries.len() as u32);
        self.entries = entries;
        self.offsets = offsets;
    }

    /// Lays `values` out by shard (a counting sort: linear, no comparisons).
    fn build(&mut self, values: &[u64]) {
        let n = values.len();
        if n == 0 {
            *self = Stripe::default();
            return;
        }
        let mut bits = 0;
        while bits < FP_BITS && (n >> (bits + 1)) >= SHARD_LOAD {
            bits += 1;
        }
        self.shard_bits = bits;
        let shards = 1usize << bits;
        let mut offsets = vec![0u32; shards + 1];
        for value in values {
            offsets[self.shard(value >> SLOT_BITS) + 1] += 1;
        }
        for i in 0..shards {
            offsets[i + 1] += offsets[i];
        }
        let mut next = offsets.clone();
        let mut entries = vec![[0u8; ENTRY_BYTES]; n];
        for value in values {
            let shard = self.shard(value >> SLOT_BITS);
            let at = next[shard] as usize;
            next[shard] += 1;
            entries[at].copy_from_slice(&value.to_le_bytes()[..ENTRY_BYTES]);
        }
        self.offsets = offsets;
        self.entries = entries;
    }
}

/// Stripe and in-memory fingerprint of a key: the low 64 bits, top byte the stripe.
fn fingerprint(key: u128) -> (usize, u64) {
    let low = key as u64;
    (
        (low >> 56) as usize,
        (low >> (56 - FP_BITS)) & ((1 << FP_BITS) - 1),
    )
}

fn blob_fingerprint(key: u128) -> u64 {
    let low = key as u64;
    (low >> (56 - BLOB_FP_BITS)) & ((1 << BLOB_FP_BITS) - 1)
}

/// What a lookup can say from memory alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lookup {
    /// Not a duplicate: no copy can be within the window.
    New,
    /// A proven duplicate (an exact key, or a confirmed one).
    Duplicate,
    /// A fingerprint matches a sealed id that may be within the window: only the exact
    /// rows can tell. Until answered, the core treats the id as new.
    Probable,
}

/// A sealed blob that cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum BlobError {
    #[error("not a dedup blob (bad magic)")]
    Magic,
    #[error("dedup blob truncated at byte {0}")]
    Truncated(usize),
    #[error("dedup blob holds {counted} entries but says {said}")]
    Count { counted: u64, said: u64 },
}

/// What [`Seen::probe`] found.
pub enum Probe<'a> {
    /// A copy of a key seen within the window: not to be applied.
    Duplicate,
    /// Not seen (or not provably): applied, it is to be recorded.
    New(Unrecorded<'a>),
}

/// A new key's place in the window, held while its event is decided.
pub struct Unrecorded<'a> {
    table: &'a mut KeyTable,
    /// What the probe found: absent, or held with a first arrival out of the window.
    found: Found,
    fresh: &'a mut Vec<(u128, i64)>,
    key: u128,
    at: i64,
}

impl Unrecorded<'_> {
    /// [`Seen::record`] for the probed key and arrival, in the place found.
    #[inline]
    pub fn record(self) {
        match self.found {
            Found::Absent(absent) => self.table.insert_absent(absent, self.at),
            Found::Present { .. } => self.table.insert(self.key, self.at),
        }
        self.fresh.push((self.key, self.at));
    }
}

/// The ids of the window: exact ones since the last seal, compact ones before.
#[derive(Debug, Default, Clone)]
pub struct Seen {
    /// Exact keys and first arrivals (milliseconds) not sealed yet.
    first: KeyTable,
    /// Keys recorded since the last [`Seen::take_fresh`]: not committed yet.
    fresh: Vec<(u128, i64)>,
    /// Committed flushes whose keys are in `first`.
    written: Vec<Written>,
    /// Whether committed keys are sealed (the shell can confirm against ClickHouse).
    sealing: bool,
    stripes: Vec<Stripe>,
    sealed: usize,
    generations: Vec<Generation>,
    /// Per slot: the latest first arrival of its live generations (`i64::MIN`: none).
    slot_last: Vec<i64>,
    next_slot: u16,
    /// Exact answers about probable duplicates: the latest committed first arrival of
    /// the key, or none. A key's answer goes when the key is sealed again (it was
    /// recorded since), or when it falls out of the window.
    answers: KeyMap<Option<i64>>,
    /// Ids first seen before this are forgotten (what [`Seen::expire`] was told last).
    horizon: Option<i64>,
    /// Sealed blobs restored but not yet laid out (see [`Seen::finish_restore`]).
    restoring: Vec<Vec<u64>>,
}

impl Seen {
    /// A window that seals committed keys: for a shell that writes sealed blobs and
    /// answers confirmations from the exact rows.
    pub fn sealing() -> Self {
        Seen {
            sealing: true,
            ..Seen::default()
        }
    }

    fn horizon(&self) -> i64 {
        self.horizon.unwrap_or(i64::MIN)
    }

    /// Restores a key persisted by an earlier run (first arrival in milliseconds); its
    /// flush is named by [`Seen::restore_written`].
    pub fn restore(&mut self, key: u128, first_arrival: i64) {
        self.first.insert(key, first_arrival);
    }

    /// Names a committed flush whose keys were restored with [`Seen::restore`].
    pub fn restore_written(&mut self, written: Written) {
        self.written.push(written);
    }

    /// Starts loading the memory that [`Seen::probe`] of `key` reads first: a caller that
    /// knows the next call's key asks for it while it decides the call before.
    #[inline]
    pub fn prefetch(&self, key: u128) {
        self.first.prefetch(key);
    }

    /// Whether `key` already arrived within `window` before `arrival`, as far as is
    /// proven: a probable duplicate not yet confirmed counts as new.
    pub fn is_duplicate(&self, key: u128, arrival: DateTime<Utc>, window: TimeDelta) -> bool {
        self.lookup(key, arrival, window) == Lookup::Duplicate
    }

    /// [`Seen::is_duplicate`], and for a key that is not, the place where
    /// [`Unrecorded::record`] records it: one probe of the exact keys for both, which every
    /// call makes.
    #[inline]
    pub fn probe(&mut self, key: u128, arrival: DateTime<Utc>, window: TimeDelta) -> Probe<'_> {
        let at = arrival.timestamp_millis();
        // The window in milliseconds only for a key seen before: most keys are new.
        let horizon = self.horizon();
        let within = |first: i64| first >= horizon && at < first + window.num_milliseconds();
        let found = self.first.find(key);
        let duplicate = match found {
            Found::Present { first } => within(first),
            // As `lookup`: an answer decides a key not kept exactly; a probable copy in the
            // sealed set is not a duplicate until answered.
            // Answers are rare (a seal's probable copies): most windows hold none.
            Found::Absent(_) => {
                !self.answers.is_empty()
                    && matches!(self.answers.get(&key), Some(Some(first)) if within(*first))
            }
        };
        if duplicate {
            return Probe::Duplicate;
        }
        Probe::New(Unrecorded {
            table: &mut self.first,
            found,
            fresh: &mut self.fresh,
            key,
            at,
        })
    }

    /// Whether ids first seen at most at `last` may hold a copy of one arriving at
    /// `arrival` (all in milliseconds): exactly the test [`Seen::lookup`] applies to an
    /// exact key, on the latest arrival of a group.
    fn may_hold(&self, last: i64, arrival: i64, window: i64) -> bool {
        last >= self.horizon() && arrival < last + window
    }

    /// What memory says about `key` arriving at `arrival`.
    pub fn lookup(&self, key: u128, arrival: DateTime<Utc>, window: TimeDelta) -> Lookup {
        let arrival = arrival.timestamp_millis();
        let window = window.num_milliseconds();
        let within = |first: i64| self.may_hold(first, arrival, window);
        // The exact keys are the latest record of a key: they decide alone.
        if let Some(first) = self.first.get(key) {
            return if within(first) {
                Lookup::Duplicate
            } else {
                Lookup::New
            };
        }
        if let Some(answer) = self.answers.get(&key) {
            return match answer {
                Some(first) if within(*first) => Lookup::Duplicate,
                _ => Lookup::New,
            };
        }
        if self.sealed == 0 {
            return Lookup::New;
        }
        let (stripe, fp) = fingerprint(key);
        let probable = self.stripes[stripe]
            .slots(fp)
            .any(|slot| self.may_hold(self.slot_last[slot as usize], arrival, window));
        if probable {
            Lookup::Probable
        } else {
            Lookup::New
        }
    }

    /// For a probable duplicate: the committed flushes whose rows may hold `key` within
    /// the window, to confirm it against; `None` when memory decides alone.
    pub fn needs_confirm(
        &self,
        key: u128,
        arrival: DateTime<Utc>,
        window: TimeDelta,
    ) -> Option<Vec<Written>> {
        if self.lookup(key, arrival, window) != Lookup::Probable {
            return None;
        }
        let (arrival, window) = (arrival.timestamp_millis(), window.num_milliseconds());
        let (stripe, fp) = fingerprint(key);
        let slots: HashSet<u16> = self.stripes[stripe].slots(fp).collect();
        let mut written: Vec<Written> = self
            .generations
            .iter()
            .filter(|g| slots.contains(&g.slot) && self.may_hold(g.last_at, arrival, window))
            .flat_map(|g| g.written.iter().copied())
            .filter(|w| self.may_hold(w.last_at, arrival, window))
            .collect();
        written.sort_unstable_by_key(|w| w.version);
        Some(written)
    }

    /// The exact answer for a probable duplicate: the latest first arrival of `key` in
    /// the committed rows of the flushes [`Seen::needs_confirm`] named, if any.
    pub fn answer(&mut self, key: u128, first_arrival: Option<i64>) {
        self.answers.insert(key, first_arrival);
    }

    /// Records the first arrival of `key`, in milliseconds: a window counted in whole
    /// seconds would let a copy arriving just under the window's end be charged again.
    pub fn record(&mut self, key: u128, arrival: DateTime<Utc>) {
        let at = arrival.timestamp_millis();
        self.first.insert(key, at);
        self.fresh.push((key, at));
    }

    /// Keys recorded since the last call, for the flush with `version`: once it has
    /// committed (before the next call; the shell keeps one flush in flight), they may
    /// be sealed.
    pub fn take_fresh(&mut self, version: u64) -> Vec<(u128, i64)> {
        let fresh = std::mem::take(&mut self.fresh);
        if let (Some(first_at), Some(last_at)) = (
            fresh.iter().map(|f| f.1).min(),
            fresh.iter().map(|f| f.1).max(),
        ) {
            self.written.push(Written {
                version,
                first_at,
                last_at,
            });
        }
        fresh
    }

    /// Seals the committed exact keys (all but those recorded since the last
    /// [`Seen::take_fresh`]) into a new generation, once there are enough of them or when
    /// `force`d (a snapshot: afterwards no committed key is left outside a sealed blob).
    /// Returns the generation as a blob to write with the next flush: a restart loads it
    /// with [`Seen::restore_blob`] instead of its rows.
    pub fn seal(&mut self, force: bool) -> Option<Vec<u8>> {
        if !self.sealing {
            return None;
        }
        let committed = self.first.len().saturating_sub(self.fresh.len());
        let due = committed >= SEAL_MIN.max(self.sealed / SEAL_FRACTION);
        if committed == 0 || !(due || force) {
            return None;
        }
        let fresh: HashSet<u128> = self.fresh.iter().map(|f| f.0).collect();
        let mut moved = Vec::with_capacity(committed);
        // The table is laid out again for what is left.
        self.first.retain(|key, at| {
            if fresh.contains(&key) {
                true
            } else {
                moved.push((key, at));
                false
            }
        });
        if moved.is_empty() {
            return None;
        }
        let written = std::mem::take(&mut self.written);
        let last_at = moved.iter().map(|m| m.1).max().unwrap_or(i64::MIN);
        let blob = encode_blob(&written, last_at, &moved);
        self.drop_expired_generations();
        // Entries of the slots live before this seal stay; those of dropped generations
        // go now, before their slot is given out again.
        let mut keep = [false; SLOTS];
        for g in &self.generations {
            keep[g.slot as usize] = true;
        }
        let slot = self.free_slot();
        let mut added: Vec<Vec<u64>> = vec![Vec::new(); STRIPES];
        for (key, _) in &moved {
            let (stripe, fp) = fingerprint(*key);
            added[stripe].push(entry_of(fp, slot));
        }
        // An answer about a key recorded since is out of date.
        for (key, _) in &moved {
            self.answers.remove(key);
        }
        drop(moved);
        self.generations.push(Generation {
            slot,
            written,
            last_at,
        });
        self.relayout(&keep, added);
        Some(blob)
    }

    /// Forgets generations wholly before the horizon.
    fn drop_expired_generations(&mut self) {
        let horizon = self.horizon();
        self.generations.retain(|g| g.last_at >= horizon);
        self.slot_last = vec![i64::MIN; SLOTS];
        for g in &self.generations {
            let last = &mut self.slot_last[g.slot as usize];
            *last = (*last).max(g.last_at);
        }
    }

    /// A slot no live generation uses, or (with every slot taken) the next one: two
    /// generations on one slot stay correct, only less precise.
    fn free_slot(&mut self) -> u16 {
        let start = self.next_slot as usize;
        let slot = (0..SLOTS)
            .map(|i| (start + i) % SLOTS)
            .find(|&s| self.slot_last[s] == i64::MIN)
            .unwrap_or(start % SLOTS) as u16;
        self.next_slot = ((slot as usize + 1) % SLOTS) as u16;
        slot
    }

    /// Lays every stripe out again: the live slots' entries and `added`.
    fn relayout(&mut self, keep: &[bool; SLOTS], added: Vec<Vec<u64>>) {
        if self.stripes.len() != STRIPES {
            self.stripes = vec![Stripe::default(); STRIPES];
        }
        let mut sealed = 0;
        for (stripe, mut added) in self.stripes.iter_mut().zip(added) {
            stripe.rebuild(keep, &mut added);
            sealed += stripe.entries.len();
        }
        self.sealed = sealed;
        self.slot_last = vec![i64::MIN; SLOTS];
        for g in &self.generations {
            let last = &mut self.slot_last[g.slot as usize];
            *last = (*last).max(g.last_at);
        }
    }

    /// Adds one sealed blob written by an earlier run (any order); call
    /// [`Seen::finish_restore`] once all are in. Generations already expired are skipped
    /// by the caller (the blob row says its latest arrival).
    pub fn restore_blob(&mut self, blob: &[u8]) -> Result<(), BlobError> {
        let decoded = decode_blob(blob)?;
        if self.slot_last.len() != SLOTS {
            self.slot_last = vec![i64::MIN; SLOTS];
        }
        if self.restoring.len() != STRIPES {
            self.restoring = vec![Vec::new(); STRIPES];
        }
        let slot = self.free_slot();
        self.slot_last[slot as usize] = self.slot_last[slot as usize].max(decoded.last_at);
        for (stripe, fps) in decoded.stripes.iter().enumerate() {
            let into = &mut self.restoring[stripe];
            into.reserve(fps.len() / BLOB_ENTRY_BYTES);
            for chunk in fps.chunks_exact(BLOB_ENTRY_BYTES) {
                let mut word = [0u8; 8];
                word[..BLOB_ENTRY_BYTES].copy_from_slice(chunk);
                let fp = u64::from_le_bytes(word) >> (BLOB_FP_BITS - FP_BITS);
                into.push(entry_of(fp, slot));
            }
        }
        self.generations.push(Generation {
            slot,
            written: decoded.written,
            last_at: decoded.last_at,
        });
        Ok(())
    }

    /// Lays out what [`Seen::restore_blob`] added.
    pub fn finish_restore(&mut self) {
        let restoring = std::mem::take(&mut self.restoring);
        if restoring.is_empty() {
            return;
        }
        if self.stripes.len() != STRIPES {
            self.stripes = vec![Stripe::default(); STRIPES];
        }
        let mut sealed = 0;
        for (stripe, mut values) in self.stripes.iter_mut().zip(restoring) {
            let keep = [true; SLOTS];
            stripe.rebuild(&keep, &mut values);
            sealed += stripe.entries.len();
        }
        self.sealed = sealed;
        self.answers.clear();
    }

    /// The latest committed flush any restored blob holds: rows of later flushes are
    /// not in a blob and are restored one by one.
    pub fn sealed_through(&self) -> Option<u64> {
        self.generations
            .iter()
            .flat_map(|g| g.written.iter().map(|w| w.version))
            .max()
    }

    /// Forgets keys whose window closed before `now`.
    pub fn expire(&mut self, now: DateTime<Utc>, window: TimeDelta) {
        let horizon = now.timestamp_millis() - window.num_milliseconds();
        if self.horizon.is_some_and(|h| h >= horizon) {
            return;
        }
        self.horizon = Some(horizon);
        self.first.retain(|_, first| first >= horizon);
        self.written.retain(|w| w.last_at >= horizon);
        if !self.generations.is_empty() {
            // Their entries go at the next seal's layout; lookups skip them already.
            self.drop_expired_generations();
        }
        // Answers stay facts about committed rows; those out of the window, and the
        // "none"s (cheap to ask again), go.
        self.answers
            .retain(|_, first| first.is_some_and(|first| first >= horizon));
    }

    /// Ids remembered: exact and sealed (sealed ones of expired generations until the
    /// next seal lays the stripes out again).
    pub fn len(&self) -> usize {
        self.first.len() + self.sealed
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Exact keys (not sealed yet).
    pub fn exact_len(&self) -> usize {
        self.first.len()
    }

    /// Sealed fingerprints.
    pub fn sealed_len(&self) -> usize {
        self.sealed
    }
}

struct DecodedBlob<'a> {
    written: Vec<Written>,
    last_at: i64,
    /// Per stripe, its entries' bytes.
    stripes: Vec<&'a [u8]>,
}

/// Blob layout (little-endian): magic, latest first arrival (i64), entry count (u64),
/// flush count (u32) and per flush version (u64), first and last arrival (i64); per
/// stripe its entry count (u32); then the entries, stripe by stripe, 5 bytes each: the
/// 40 fingerprint bits below the stripe byte.
fn encode_blob(written: &[Written], last_at: i64, keys: &[(u128, i64)]) -> Vec<u8> {
    let mut by_stripe: Vec<Vec<u64>> = vec![Vec::new(); STRIPES];
    for (key, _) in keys {
        by_stripe[(*key as u64 >> 56) as usize].push(blob_fingerprint(*key));
    }
    let mut out =
        Vec::with_capacity(32 + written.len() * 24 + STRIPES * 4 + keys.len() * BLOB_ENTRY_BYTES);
    out.extend_from_slice(BLOB_MAGIC);
    out.extend_from_slice(&last_at.to_le_bytes());
    out.extend_from_slice(&(keys.len() as u64).to_le_bytes());
    out.extend_from_slice(&(written.len() as u32).to_le_bytes());
    for w in written {
        out.extend_from_slice(&w.version.to_le_bytes());
        out.extend_from_slice(&w.first_at.to_le_bytes());
        out.extend_from_slice(&w.last_at.to_le_bytes());
    }
    for fps in &by_stripe {
        out.extend_from_slice(&(fps.len() as u32).to_le_bytes());
    }
    for fps in &by_stripe {
        for fp in fps {
            out.extend_from_slice(&fp.to_le_bytes()[..BLOB_ENTRY_BYTES]);
        }
    }
    out
}

/// Reads a blob's latest first arrival without decoding the rest.
pub fn blob_last_at(blob: &[u8]) -> Result<i64, BlobError> {
    let mut reader = Reader { bytes: blob, at: 0 };
    if reader.take(4)? != BLOB_MAGIC {
        return Err(BlobError::Magic);
    }
    reader.i64()
}

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], BlobError> {
        let end = self
            .at
            .checked_add(n)
            .ok_or(BlobError::Truncated(self.at))?;
        let slice = self
            .bytes
            .get(self.at..end)
            .ok_or(BlobError::Truncated(self.at))?;
        self.at = end;
        Ok(slice)
    }

    fn u64(&mut self) -> Result<u64, BlobError> {
        let mut word = [0u8; 8];
        word.copy_from_slice(self.take(8)?);
        Ok(u64::from_le_bytes(word))
    }

    fn i64(&mut self) -> Result<i64, BlobError> {
        Ok(self.u64()? as i64)
    }

    fn u32(&mut self) -> Result<u32, BlobError> {
        let mut word = [0u8; 4];
        word.copy_from_slice(self.take(4)?);
        Ok(u32::from_le_bytes(word))
    }
}

fn decode_blob(blob: &[u8]) -> Result<DecodedBlob<'_>, BlobError> {
    let mut reader = Reader { bytes: blob, at: 0 };
    if reader.take(4)? != BLOB_MAGIC {
        return Err(BlobError::Magic);
    }
    let last_at = reader.i64()?;
    let said = reader.u64()?;
    let flushes = reader.u32()?;
    let mut written = Vec::new();
    for _ in 0..flushes {
        written.push(Written {
            version: reader.u64()?,
            first_at: reader.i64()?,
            last_at: reader.i64()?,
        });
    }
    let mut counts = Vec::with_capacity(STRIPES);
    for _ in 0..STRIPES {
        counts.push(reader.u32()? as usize);
    }
    let counted: u64 = counts.iter().map(|&c| c as u64).sum();
    if counted != said {
        return Err(BlobError::Count { counted, said });
    }
    let mut stripes = Vec::with_capacity(STRIPES);
    for count in counts {
        let n = count
            .checked_mul(BLOB_ENTRY_BYTES)
            .ok_or(BlobError::Truncated(reader.at))?;
        stripes.push(reader.take(n)?);
    }
    Ok(DecodedBlob {
        written,
        last_at,
        stripes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A key hashed in one call is the streamed key the window has always stored, at
    /// every length around the buffer's size.
    #[test]
    fn one_shot_keys_are_the_streamed_keys() {
        for len in 0..=KEY_BUFFER + 16 {
            // Every byte its own (a copy that misplaces one changes the key).
            let long: String = (0..len)
                .map(|i| char::from(b'!' + (i % 90) as u8))
                .collect();
            for (account, source, id) in [
                (long.as_str(), "svc", "evt-1"),
                ("acct-1", long.as_str(), ""),
                ("", "", long.as_str()),
            ] {
                assert_eq!(
                    key(account, source, id),
                    streamed_key(account, source, id),
                    "{len}"
                );
            }
        }
        // Parts are delimited by their lengths: moving a byte between parts changes the key.
        assert_ne!(key("ab", "c", "d"), key("a", "bc", "d"));
    }

    #[test]
    fn duplicate_within_window_only() {
        let window = TimeDelta::hours(24);
        let t0: DateTime<Utc> = "2026-11-20T00:00:00Z".parse().unwrap();
        let k = key("acme", "room", "evt-1");
        let mut seen = Seen::default();
        assert!(!seen.is_duplicate(k, t0, window));
        seen.record(k, t0);
        assert!(seen.is_duplicate(k, t0 + TimeDelta::hours(23), window));
        assert!(!seen.is_duplicate(k, t0 + TimeDelta::hours(24), window));
        assert!(!seen.is_duplicate(key("acme", "other", "evt-1"), t0, window));
        assert_eq!(seen.take_fresh(1).len(), 1);
        assert!(seen.take_fresh(2).is_empty());
        seen.expire(t0 + TimeDelta::hours(25), window);
        assert!(seen.is_empty());
    }

    #[test]
    fn key_parts_do_not_run_together() {
        assert_ne!(key("ab", "c", "d"), key("a", "bc", "d"));
    }

    fn at(ms: i64) -> DateTime<Utc> {
        DateTime::from_timestamp_millis(1_790_000_000_000 + ms).unwrap()
    }

    #[test]
    fn a_sealed_id_is_only_probable_until_answered() {
        let window = TimeDelta::hours(1);
        let mut seen = Seen::sealing();
        let k = key("acme", "room", "evt-1");
        seen.record(k, at(0));
        // Not committed yet: a seal keeps it exact.
        assert!(seen.seal(true).is_none());
        seen.take_fresh(10);
        let blob = seen.seal(true).expect("one committed key");
        assert_eq!((seen.exact_len(), seen.sealed_len()), (0, 1));
        assert_eq!(seen.lookup(k, at(1_000), window), Lookup::Probable);
        assert!(!seen.is_duplicate(k, at(1_000), window), "unproven is new");
        let versions: Vec<u64> = seen
            .needs_confirm(k, at(1_000), window)
            .unwrap()
            .iter()
            .map(|w| w.version)
            .collect();
        assert_eq!(versions, [10]);
        seen.answer(k, Some(at(0).timestamp_millis()));
        assert!(seen.is_duplicate(k, at(1_000), window));
        // The window counts from the exact first arrival the answer gave.
        assert!(!seen.is_duplicate(k, at(3_600_000), window));
        // A key that was never recorded and is answered "none" is new.
        let other = key("acme", "room", "evt-2");
        seen.answer(other, None);
        assert!(!seen.is_duplicate(other, at(1_000), window));

        // A restart from the blob decides the same.
        let mut restored = Seen::sealing();
        restored.restore_blob(&blob).unwrap();
        restored.finish_restore();
        assert_eq!(restored.sealed_through(), Some(10));
        assert_eq!(restored.lookup(k, at(1_000), window), Lookup::Probable);
        // Past the window (for that arrival) no confirmation is asked.
        assert_eq!(
            restored.lookup(k, at(3_600_000 + 1), window),
            Lookup::New,
            "a generation wholly before the window is not probable"
        );
        assert_eq!(blob_last_at(&blob).unwrap(), at(0).timestamp_millis());
        assert!(matches!(
            decode_blob(&blob[..blob.len() - 1]),
            Err(BlobError::Truncated(_))
        ));
    }

    #[test]
    fn generations_expire_whole() {
        let window = TimeDelta::minutes(10);
        let mut seen = Seen::sealing();
        for i in 0..3 {
            seen.record(key("a", "s", &format!("old-{i}")), at(i));
        }
        seen.take_fresh(1);
        seen.seal(true).unwrap();
        seen.record(key("a", "s", "new"), at(9 * 60_000));
        seen.take_fresh(2);
        seen.seal(true).unwrap();
        assert_eq!(seen.sealed_len(), 4);
        seen.expire(at(10 * 60_000 + 10), window);
        // The old generation is skipped at once and gone at the next layout.
        assert_eq!(
            seen.lookup(key("a", "s", "old-1"), at(10 * 60_000 + 10), window),
            Lookup::New
        );
        seen.record(key("a", "s", "newer"), at(10 * 60_000 + 20));
        seen.take_fresh(3);
        seen.seal(true).unwrap();
        assert_eq!(seen.sealed_len(), 2);
    }

    use proptest::prelude::*;

    #[derive(Debug, Clone)]
    enum Op {
        /// An event with id `0` of a small pool, `1` ms after the previous one.
        Event(u8, i64),
        /// A flush: seal (forced or not), then take the fresh keys.
        Flush(bool),
        Expire,
        /// A flush that commits, then a new owner loads the window as the shell does.
        Restart,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            8 => (0u8..40, 0i64..200_000).prop_map(|(id, step)| Op::Event(id, step)),
            2 => any::<bool>().prop_map(Op::Flush),
            1 => Just(Op::Expire),
            1 => Just(Op::Restart),
        ]
    }

    proptest! {
        /// Sealing, with every probable duplicate confirmed from the committed rows as the
        /// shell does, decides exactly as remembering every key does (the design before
        /// sealing, and the reference model's rule).
        #[test]
        fn sealing_with_confirmation_decides_as_the_exact_window(ops in proptest::collection::vec(op(), 1..300)) {
            let window = TimeDelta::minutes(10);
            let mut sealed = Seen::sealing();
            let mut exact: HashMap<u128, i64> = HashMap::new();
            let mut horizon = i64::MIN;
            // The rows of committed flushes, and those of the flush in flight.
            let mut rows: Vec<(u64, u128, i64)> = Vec::new();
            let mut in_flight: Vec<(u64, u128, i64)> = Vec::new();
            let mut version = 0u64;
            let mut blobs: Vec<Vec<u8>> = Vec::new();
            let mut clock = 0i64;
            for op in ops {
                match op {
                    Op::Event(id, step) => {
                        clock += step;
                        let k = key("acct", "svc", &format!("evt-{id}"));
                        if let Some(written) = sealed.needs_confirm(k, at(clock), window) {
                            let answer = rows
                                .iter()
                                .filter(|(v, key, _)| *key == k && written.iter().any(|w| w.version == *v))
                                .map(|r| r.2)
                                .max();
                            sealed.answer(k, answer);
                        }
                        let expected = exact
                            .get(&k)
                            .is_some_and(|&first| first >= horizon && clock < first + window.num_milliseconds());
                        prop_assert_eq!(sealed.is_duplicate(k, at(clock), window), expected);
                        if !expected {
                            sealed.record(k, at(clock));
                            exact.insert(k, clock);
                        }
                    }
                    Op::Flush(force) => {
                        // The flush before has committed when the next one is built.
                        rows.append(&mut in_flight);
                        blobs.extend(sealed.seal(force));
                        version += 1;
                        for (k, first) in sealed.take_fresh(version) {
                            in_flight.push((version, k, first));
                        }
                    }
                    Op::Expire => {
                        horizon = horizon.max(clock - window.num_milliseconds());
                        exact.retain(|_, first| *first >= horizon);
                        sealed.expire(at(clock), window);
                    }
                    Op::Restart => {
                        rows.append(&mut in_flight);
                        blobs.extend(sealed.seal(false));
                        version += 1;
                        rows.extend(sealed.take_fresh(version).into_iter().map(|(k, first)| (version, k, first)));
                        // What claim_and_load does: blobs in the window, then the rows of
                        // flushes after the last sealed one, then the horizon.
                        let restart_horizon = clock - window.num_milliseconds();
                        let mut restored = Seen::sealing();
                        for blob in &blobs {
                            if blob_last_at(blob).unwrap() >= restart_horizon {
                                restored.restore_blob(blob).unwrap();
                            }
                        }
                        restored.finish_restore();
                        let through = restored.sealed_through().unwrap_or(0);
                        let mut written: std::collections::BTreeMap<u64, Written> = Default::default();
                        for &(v, k, first) in &rows {
                            if v > through && first >= restart_horizon {
                                restored.restore(k, first);
                                let w = written.entry(v).or_insert(Written { version: v, first_at: first, last_at: first });
                                w.first_at = w.first_at.min(first);
                                w.last_at = w.last_at.max(first);
                            }
                        }
                        for w in written.into_values() {
                            restored.restore_written(w);
                        }
                        restored.expire(at(clock), window);
                        sealed = restored;
                        horizon = horizon.max(restart_horizon);
                        exact.retain(|_, first| *first >= horizon);
                    }
                }
            }
        }
    }
}
