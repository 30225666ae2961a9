//! The dedup window's exact keys and their first arrivals, in a table whose slot for a key
//! is known before the key is looked up: the caller can ask the CPU to load it while it
//! does other work (the window outgrows every cache, and a lookup that waits on memory
//! costs more than the rest of a call).
//!
//! Open addressing with linear probing over slots of 24 bytes. Keys are already uniform
//! 128-bit hashes, so a key's low bits are its home slot. Entries leave only through
//! [`KeyTable::retain`], which lays the table out again: no tombstones.

/// One slot: a key's low and high halves and its first arrival (milliseconds). All zero
/// is an empty slot, so a new table is memory the allocator hands out zeroed; the key 0
/// lives beside the slots (`KeyTable::zero`).
type Slot = [u64; 3];

/// The key a full slot holds.
#[inline]
fn key_of(slot: &Slot) -> u128 {
    u128::from(slot[0]) | (u128::from(slot[1]) << 64)
}

#[inline]
fn is_empty(slot: &Slot) -> bool {
    slot[0] | slot[1] == 0
}

#[inline]
fn slot_of(key: u128, first: i64) -> Slot {
    debug_assert_ne!(key, 0, "the key 0 has no slot");
    [key as u64, (key >> 64) as u64, first as u64]
}

/// Slots before the first growth.
const MIN_SLOTS: usize = 16;

/// The table grows once more than this share of its slots (in eighths) is used: at half
/// full, a key not in the table is found missing after 2.5 slots on average, mostly in
/// the cache line its home slot is on.
const MAX_LOAD_EIGHTHS: usize = 4;

/// Where a key is, or where it would go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Found {
    /// In the table, first seen at `first`.
    Present { first: i64 },
    /// Not in the table; [`KeyTable::insert_absent`] puts it in.
    Absent(Absent),
}

/// The slot a missing key would take, valid until the table changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Absent {
    key: u128,
    /// The empty slot found, or `None` for the key 0, which lives beside the slots.
    slot: Option<usize>,
}

/// Keys and first arrivals.
#[derive(Debug, Clone, Default)]
pub struct KeyTable {
    /// A power of two of slots, or none before the first insert.
    slots: Vec<Slot>,
    /// Entries in `slots`.
    used: usize,
    /// The first arrival of the key 0: no slot can hold it (all zero is an empty slot).
    zero: Option<i64>,
}

impl KeyTable {
    /// Keys held.
    pub fn len(&self) -> usize {
        self.used + usize::from(self.zero.is_some())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The home slot of `key` in a table of `slots` slots (a power of two).
    #[inline]
    fn home(key: u128, slots: usize) -> usize {
        debug_assert!(slots.is_power_of_two());
        (key as usize) & (slots - 1)
    }

    /// Starts loading the memory a lookup of `key` reads first.
    #[inline]
    pub fn prefetch(&self, key: u128) {
        if !self.slots.is_empty() {
            crate::prefetch::value(&self.slots[Self::home(key, self.slots.len())]);
        }
    }

    /// Whether `key` is in the table, and where it would go if not.
    #[inline]
    pub fn find(&self, key: u128) -> Found {
        if key == 0 {
            return match self.zero {
                Some(first) => Found::Present { first },
                None => Found::Absent(Absent { key, slot: None }),
            };
        }
        if self.slots.is_empty() {
            return Found::Absent(Absent { key, slot: None });
        }
        let mask = self.slots.len() - 1;
        let mut at = Self::home(key, self.slots.len());
        // Ends: the table is never full (see `MAX_LOAD_EIGHTHS`), so an empty slot comes.
        loop {
            let slot = &self.slots[at];
            if is_empty(slot) {
                return Found::Absent(Absent {
                    key,
                    slot: Some(at),
                });
            }
            if key_of(slot) == key {
                return Found::Present {
                    first: slot[2] as i64,
                };
            }
            at = (at + 1) & mask;
        }
    }

    /// The first arrival of `key`, if held.
    #[inline]
    pub fn get(&self, key: u128) -> Option<i64> {
        match self.find(key) {
            Found::Present { first } => Some(first),
            Found::Absent(_) => None,
        }
    }

    /// Puts in the key [`KeyTable::find`] found absent, with no change to the table since.
    #[inline]
    pub fn insert_absent(&mut self, absent: Absent, first: i64) {
        let key = absent.key;
        if key == 0 {
            debug_assert!(self.zero.is_none(), "the key 0 was absent");
            self.zero = Some(first);
            return;
        }
        match absent.slot {
            Some(at) if (self.used + 1) * 8 <= self.slots.len() * MAX_LOAD_EIGHTHS => {
                debug_assert!(is_empty(&self.slots[at]), "an absent key's slot is empty");
                self.slots[at] = slot_of(key, first);
            }
            // No slots yet, or one more would pass the load: the slot found moves.
            _ => {
                self.grow();
                self.place(slot_of(key, first));
            }
        }
        self.used += 1;
    }

    /// Sets the first arrival of `key`, whether held or not.
    pub fn insert(&mut self, key: u128, first: i64) {
        match self.find(key) {
            Found::Absent(absent) => self.insert_absent(absent, first),
            Found::Present { .. } if key == 0 => self.zero = Some(first),
            Found::Present { .. } => {
                let mask = self.slots.len() - 1;
                let mut at = Self::home(key, self.slots.len());
                while key_of(&self.slots[at]) != key {
                    at = (at + 1) & mask;
                }
                self.slots[at] = slot_of(key, first);
            }
        }
    }

    /// Keeps the keys for which `keep(key, first)` holds; the table is laid out again for
    /// what is left (when anything goes), at no more than twice the size it needs.
    pub fn retain(&mut self, mut keep: impl FnMut(u128, i64) -> bool) {
        if self.zero.is_some_and(|first| !keep(0, first)) {
            self.zero = None;
        }
        let mut kept = Vec::new();
        let mut dropped = false;
        for slot in self.slots.iter().filter(|slot| !is_empty(slot)) {
            if keep(key_of(slot), slot[2] as i64) {
                kept.push(*slot);
            } else {
                dropped = true;
            }
        }
        if !dropped {
            return;
        }
        self.slots = vec![[0; 3]; Self::slots_for(kept.len())];
        self.used = kept.len();
        for slot in kept {
            self.place(slot);
        }
    }

    /// Slots for `entries` within the load, or none for none.
    fn slots_for(entries: usize) -> usize {
        if entries == 0 {
            return 0;
        }
        let mut slots = MIN_SLOTS;
        while entries * 8 > slots * MAX_LOAD_EIGHTHS {
            slots *= 2;
        }
        slots
    }

    /// Doubles the slots (or makes the first ones) and places the entries again.
    fn grow(&mut self) {
        let slots = (self.slots.len() * 2).max(MIN_SLOTS);
        // Zeroed by the allocator: every slot empty.
        let old = std::mem::replace(&mut self.slots, vec![[0; 3]; slots]);
        for slot in old.iter().filter(|slot| !is_empty(slot)) {
            self.place(*slot);
        }
    }

    /// Puts a full `slot`, whose key is not held, in the first empty slot from its home.
    #[inline]
    fn place(&mut self, slot: Slot) {
        let mask = self.slots.len() - 1;
        let mut at = Self::home(key_of(&slot), self.slots.len());
        while !is_empty(&self.slots[at]) {
            at = (at + 1) & mask;
        }
        self.slots[at] = slot;
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use proptest::prelude::*;

    use super::*;

    #[derive(Debug, Clone)]
    enum Op {
        Insert(u128, i64),
        FindThenInsert(u128, i64),
        RetainFrom(i64),
    }

    /// Keys from a small set, so inserts meet held keys and probes run into each other:
    /// low bits equal (the same home), the key 0, and the top and bottom of the range.
    fn key() -> impl Strategy<Value = u128> {
        prop_oneof![
            (0u128..64).prop_map(|k| k << 64),
            0u128..64,
            Just(0u128),
            Just(u128::MAX),
            any::<u128>(),
        ]
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => (key(), 0i64..100).prop_map(|(k, f)| Op::Insert(k, f)),
            4 => (key(), 0i64..100).prop_map(|(k, f)| Op::FindThenInsert(k, f)),
            1 => (0i64..100).prop_map(Op::RetainFrom),
        ]
    }

    proptest! {
        /// The table holds what a `HashMap` holds after the same operations, and every
        /// key's lookup says so, also across growths and layouts after `retain`.
        #[test]
        fn holds_what_a_hash_map_holds(ops in proptest::collection::vec(op(), 1..400)) {
            let mut table = KeyTable::default();
            let mut model: HashMap<u128, i64> = HashMap::new();
            for op in ops {
                match op {
                    Op::Insert(key, first) => {
                        table.insert(key, first);
                        model.insert(key, first);
                    }
                    Op::FindThenInsert(key, first) => match table.find(key) {
                        Found::Present { first: held } => {
                            prop_assert_eq!(model.get(&key), Some(&held));
                        }
                        Found::Absent(absent) => {
                            prop_assert!(!model.contains_key(&key));
                            table.insert_absent(absent, first);
                            model.insert(key, first);
                        }
                    },
                    Op::RetainFrom(horizon) => {
                        table.retain(|_, first| first >= horizon);
                        model.retain(|_, first| *first >= horizon);
                    }
                }
                prop_assert_eq!(table.len(), model.len());
                for (key, first) in &model {
                    prop_assert_eq!(table.get(*key), Some(*first));
                }
                let mut held: Vec<(u128, i64)> = table
                    .slots
                    .iter()
                    .filter(|slot| !is_empty(slot))
                    .map(|slot| (key_of(slot), slot[2] as i64))
                    .chain(table.zero.map(|first| (0, first)))
                    .collect();
                held.sort_unstable();
                let mut expected: Vec<(u128, i64)> = model.iter().map(|(k, f)| (*k, *f)).collect();
                expected.sort_unstable();
                prop_assert_eq!(held, expected);
                prop_assert!(table.used * 8 <= table.slots.len() * MAX_LOAD_EIGHTHS);
            }
        }
    }

    /// Keys sharing a home slot each find their own entry, past the end of the slots.
    #[test]
    fn a_run_of_one_home_wraps_around() {
        let mut table = KeyTable::default();
        let last = (MIN_SLOTS - 1) as u128;
        for i in 0..6u128 {
            table.insert(last | (i << 64), i as i64);
        }
        assert_eq!(table.slots.len(), MIN_SLOTS);
        for i in 0..6u128 {
            assert_eq!(table.get(last | (i << 64)), Some(i as i64));
        }
        assert_eq!(table.get(last | (6 << 64)), None);
        // The entries after the first wrapped to the start.
        assert!(!is_empty(&table.slots[0]));
    }

    /// The key 0 is a key like another.
    #[test]
    fn the_key_zero_is_held() {
        let mut table = KeyTable::default();
        assert_eq!(table.get(0), None);
        table.insert(0, 7);
        assert_eq!((table.get(0), table.len()), (Some(7), 1));
        table.retain(|key, _| key != 0);
        assert_eq!((table.get(0), table.len()), (None, 0));
    }

    /// Prefetching any key of any table changes nothing.
    #[test]
    fn prefetch_changes_nothing() {
        let mut table = KeyTable::default();
        table.prefetch(5);
        table.insert(5, 1);
        table.prefetch(5);
        table.prefetch(u128::MAX);
        assert_eq!((table.get(5), table.len()), (Some(1), 1));
    }
}
