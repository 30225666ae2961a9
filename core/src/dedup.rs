//! The dedup window: the same (account, source, id) seen again within the window is not
//! charged again.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

use chrono::{DateTime, TimeDelta, Utc};

/// 128-bit key of (account, source, id): collisions are out of reach at any volume.
pub fn key(account: &str, source: &str, id: &str) -> u128 {
    let mut hasher = xxhash_rust::xxh3::Xxh3::new();
    for part in [account, source, id] {
        hasher.update(&(part.len() as u64).to_le_bytes());
        hasher.update(part.as_bytes());
    }
    hasher.digest128()
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

/// First arrivals still inside the window, and those not yet persisted.
#[derive(Debug, Default, Clone)]
pub struct Seen {
    first: HashMap<u128, i64, BuildHasherDefault<KeyHasher>>,
    fresh: Vec<(u128, i64)>,
}

impl Seen {
    /// Restores a key persisted by an earlier run (first arrival in milliseconds).
    pub fn restore(&mut self, key: u128, first_arrival: i64) {
        self.first.insert(key, first_arrival);
    }

    /// Whether `key` already arrived within `window` before `arrival`.
    pub fn is_duplicate(&self, key: u128, arrival: DateTime<Utc>, window: TimeDelta) -> bool {
        self.first
            .get(&key)
            .is_some_and(|first| arrival.timestamp_millis() < first + window.num_milliseconds())
    }

    /// Records the first arrival of `key`, in milliseconds: a window counted in whole
    /// seconds would let a copy arriving just under the window's end be charged again.
    pub fn record(&mut self, key: u128, arrival: DateTime<Utc>) {
        let at = arrival.timestamp_millis();
        self.first.insert(key, at);
        self.fresh.push((key, at));
    }

    /// Keys recorded since the last call, for the next checkpoint.
    pub fn take_fresh(&mut self) -> Vec<(u128, i64)> {
        std::mem::take(&mut self.fresh)
    }

    /// Forgets keys whose window closed before `now`.
    pub fn expire(&mut self, now: DateTime<Utc>, window: TimeDelta) {
        let horizon = now.timestamp_millis() - window.num_milliseconds();
        self.first.retain(|_, first| *first >= horizon);
    }

    /// Every key in the window with its first arrival, for a snapshot.
    pub fn all(&self) -> impl Iterator<Item = (u128, i64)> + '_ {
        self.first.iter().map(|(key, at)| (*key, *at))
    }

    pub fn len(&self) -> usize {
        self.first.len()
    }

    pub fn is_empty(&self) -> bool {
        self.first.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        assert_eq!(seen.take_fresh().len(), 1);
        assert!(seen.take_fresh().is_empty());
        seen.expire(t0 + TimeDelta::hours(25), window);
        assert!(seen.is_empty());
    }

    #[test]
    fn key_parts_do_not_run_together() {
        assert_ne!(key("ab", "c", "d"), key("a", "bc", "d"));
    }
}
