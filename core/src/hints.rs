//! Where each account's state was last seen in memory, by a hash of its name: a hint for
//! asking the CPU to load an account's state one call ahead, at a fraction of a lookup's
//! cost. A hint is an address and nothing more: it is only ever prefetched, never read
//! through, so a stale one (the accounts' table moved, or another account shares the
//! slot) costs a useless prefetch and nothing else.

use std::hash::BuildHasher;

/// Fewest and most slots: a hint a slot, 8 bytes each. Enough slots that few accounts
/// share one, few enough to stay in the second-level cache.
const MIN_SLOTS: usize = 1 << 10;
const MAX_SLOTS: usize = 1 << 16;

/// Slots per account, rounded up to a power of two.
const SLOTS_PER_ACCOUNT: usize = 4;

/// A hash of a name, cheap for the names of accounts (8 bytes or more: the first and
/// the last 8, which together cover most of what tells names apart), uniform enough to
/// spread them over the slots. A collision only costs a useless prefetch.
#[inline]
fn spread(name: &str) -> usize {
    let bytes = name.as_bytes();
    let word = match (bytes.first_chunk::<8>(), bytes.last_chunk::<8>()) {
        (Some(first), Some(last)) => {
            u64::from_le_bytes(*first) ^ u64::from_le_bytes(*last).rotate_left(29)
        }
        _ => rustc_hash::FxBuildHasher.hash_one(name),
    };
    // Fibonacci hashing: the high bits of the product mix every bit of the word.
    (word.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 32) as usize
}

/// The hints of one partition's accounts.
#[derive(Debug, Clone, Default)]
pub struct Hints {
    /// The address of an account's state, by slot (a power of two of slots, or none).
    slots: Vec<usize>,
}

/// The slot of one account's name, for [`Hints::prefetch`] and [`Hints::note`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Slot(usize);

impl Hints {
    /// The slot of `account` (the same for the same name while the table keeps its size).
    #[inline]
    pub fn slot(&self, account: &str) -> Slot {
        Slot(spread(account) & self.slots.len().wrapping_sub(1))
    }

    /// Asks the CPU for the state last noted at `slot`.
    #[inline]
    pub fn prefetch<T>(&self, slot: Slot) {
        if let Some(&address) = self.slots.get(slot.0) {
            crate::prefetch::lines_of::<T>(address);
        }
    }

    /// Notes where the state of the account at `slot` is, with `accounts` accounts in
    /// all; the slot is [`Hints::slot`]'s for the table's size before the call.
    #[inline]
    pub fn note<T>(&mut self, slot: Slot, state: &T, accounts: usize) {
        if accounts.saturating_mul(SLOTS_PER_ACCOUNT) > self.slots.len()
            && self.slots.len() < MAX_SLOTS
        {
            let wanted = accounts
                .saturating_mul(SLOTS_PER_ACCOUNT)
                .next_power_of_two()
                .clamp(MIN_SLOTS, MAX_SLOTS);
            // Laid out again at the new size; the old hints go (they are only hints).
            self.slots = vec![0; wanted];
            return;
        }
        if let Some(hint) = self.slots.get_mut(slot.0) {
            *hint = std::ptr::from_ref(state) as usize;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A hint noted is the one prefetched; a stale or empty one is harmless.
    #[test]
    fn hints_are_noted_by_slot_and_grow_with_the_accounts() {
        let mut hints = Hints::default();
        let state = [7u64; 40];
        // No slots yet: the first note lays them out.
        let slot = hints.slot("acct-1");
        hints.note(slot, &state, 1);
        assert_eq!(hints.slots.len(), MIN_SLOTS);
        let slot = hints.slot("acct-1");
        hints.note(slot, &state, 1);
        assert_eq!(hints.slots[slot.0], std::ptr::from_ref(&state) as usize);
        hints.prefetch::<[u64; 40]>(slot);
        hints.prefetch::<[u64; 40]>(hints.slot("acct-2"));
        // More accounts: more slots, the old hints gone.
        hints.note(slot, &state, MIN_SLOTS);
        assert_eq!(hints.slots.len(), MIN_SLOTS * SLOTS_PER_ACCOUNT);
        assert!(hints.slots.iter().all(|&hint| hint == 0));
        hints.note(hints.slot("acct-1"), &state, usize::MAX / 8);
        assert_eq!(hints.slots.len(), MAX_SLOTS);
        assert_eq!(state, [7u64; 40]);
    }
}
