//! Interned names: one shared copy of each account, user, feature, service, variant, pool
//! and matrix version inside a partition, so a ledger entry names them without copying a
//! string per event. The storage and report boundary reads them as `&str`.

use std::borrow::Borrow;
use std::fmt;
use std::ops::Deref;
use std::sync::Arc;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A name shared by every entry that carries it: cloning it copies a pointer.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Name(Arc<str>);

impl Name {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Default for Name {
    /// The empty name, one copy for the process.
    fn default() -> Self {
        static EMPTY: std::sync::OnceLock<Name> = std::sync::OnceLock::new();
        EMPTY.get_or_init(|| Name::from("")).clone()
    }
}

impl Deref for Name {
    type Target = str;

    fn deref(&self) -> &str {
        &self.0
    }
}

impl AsRef<str> for Name {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

// `Hash` and `Eq` above are those of the `str`, so a table of names can be searched by
// `&str`.
impl Borrow<str> for Name {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl From<&str> for Name {
    fn from(value: &str) -> Self {
        Name(Arc::from(value))
    }
}

impl From<String> for Name {
    fn from(value: String) -> Self {
        Name(Arc::from(value))
    }
}

impl From<Name> for String {
    fn from(value: Name) -> Self {
        value.0.to_string()
    }
}

impl PartialEq<str> for Name {
    fn eq(&self, other: &str) -> bool {
        &*self.0 == other
    }
}

impl PartialEq<&str> for Name {
    fn eq(&self, other: &&str) -> bool {
        &*self.0 == *other
    }
}

impl PartialEq<String> for Name {
    fn eq(&self, other: &String) -> bool {
        *self.0 == **other
    }
}

impl PartialEq<Name> for &str {
    fn eq(&self, other: &Name) -> bool {
        **self == *other.0
    }
}

impl PartialEq<Name> for String {
    fn eq(&self, other: &Name) -> bool {
        **self == *other.0
    }
}

impl fmt::Debug for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl fmt::Display for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl Serialize for Name {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for Name {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        String::deserialize(deserializer).map(Name::from)
    }
}

/// Most names a table keeps before it starts again: names already handed out stay valid
/// (they own their text), so starting again only costs one copy of each name still in use,
/// and a flood of made-up names cannot grow the table without bound.
pub const MAX_NAMES: usize = 1 << 20;

/// Places in [`Names`]'s cache of recent names.
const RECENT: usize = 1024;

/// The names of one partition.
#[derive(Debug, Default, Clone)]
pub struct Names {
    table: rustc_hash::FxHashSet<Name>,
    /// Names recently interned, each at the place [`recent_place`] gives its text (empty
    /// until the first name): most calls name a user and a service seen moments ago, and
    /// one comparison there costs less than hashing the text for the table.
    recent: Vec<Option<Name>>,
}

/// A place in the cache of recent names for `text`, from its length and its first and
/// last eight bytes (the parts where names of one kind differ: a user's number, a
/// service's kind).
fn recent_place(text: &str) -> usize {
    let bytes = text.as_bytes();
    let mixed = match (bytes.first_chunk::<8>(), bytes.last_chunk::<8>()) {
        (Some(head), Some(tail)) => {
            u64::from_le_bytes(*head) ^ u64::from_le_bytes(*tail).rotate_left(29)
        }
        _ => bytes
            .iter()
            .fold(0u64, |h, &b| h.rotate_left(8) ^ u64::from(b)),
    };
    let spread = (mixed ^ bytes.len() as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    (spread >> 54) as usize % RECENT
}

impl Names {
    /// The shared copy of `text`, made on first use.
    #[inline]
    pub fn intern(&mut self, text: &str) -> Name {
        let place = recent_place(text);
        if let Some(Some(name)) = self.recent.get(place) {
            if crate::short_text::same(name.as_str(), text) {
                return name.clone();
            }
        }
        let name = self.intern_in_table(text);
        if self.recent.is_empty() {
            self.recent.resize(RECENT, None);
        }
        self.recent[place] = Some(name.clone());
        name
    }

    /// [`Names::intern`] by the table.
    fn intern_in_table(&mut self, text: &str) -> Name {
        if let Some(name) = self.table.get(text) {
            return name.clone();
        }
        if self.table.len() >= MAX_NAMES {
            self.table.clear();
        }
        let name = Name::from(text);
        self.table.insert(name.clone());
        name
    }

    pub fn len(&self) -> usize {
        self.table.len()
    }

    pub fn is_empty(&self) -> bool {
        self.table.is_empty()
    }
}

/// An account's own name, interned on its first call and kept with its state, so its
/// later calls skip the table. Not part of the account's state: equal whatever it holds,
/// never stored (a restored state starts with it empty).
#[derive(Debug, Clone, Default)]
pub struct OwnName(Option<Name>);

impl PartialEq for OwnName {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl Eq for OwnName {}

impl OwnName {
    /// Starts loading the name's text (see [`crate::prefetch`]), if it has one.
    #[inline]
    pub fn prefetch(&self) {
        if let Some(name) = &self.0 {
            crate::prefetch::start(name);
        }
    }

    /// The shared copy of `account`, from `names` on first use (or if it ever differs).
    pub fn get(&mut self, names: &mut Names, account: &str) -> Name {
        match &self.0 {
            Some(name) if crate::short_text::same(name.as_str(), account) => name.clone(),
            _ => {
                let name = names.intern(account);
                self.0 = Some(name.clone());
                name
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_copy_per_name() {
        let mut names = Names::default();
        let a = names.intern("kim@acme.kr");
        let b = names.intern("kim@acme.kr");
        assert!(Arc::ptr_eq(&a.0, &b.0));
        assert_eq!(a, "kim@acme.kr");
        assert_eq!(names.len(), 1);
        assert_eq!(serde_json::to_string(&a).unwrap(), "\"kim@acme.kr\"");
    }

    /// Texts that share a place in the cache of recent names (more texts than places, of
    /// every length around the eight-byte words it reads) each get their own name, and
    /// the same copy each time.
    #[test]
    fn recent_names_are_the_table_copies_of_their_own_text() {
        let texts: Vec<String> = (0..2000)
            .map(|i| format!("{}{i}", "u".repeat(i % 19)))
            .chain(["", "a", "ab", "abcdefg", "abcdefgh", "abcdefghi"].map(String::from))
            .collect();
        let mut names = Names::default();
        let first: Vec<Name> = texts.iter().map(|t| names.intern(t)).collect();
        for _ in 0..2 {
            for (text, name) in texts.iter().zip(&first) {
                let again = names.intern(text);
                assert_eq!(again, **text);
                assert!(Arc::ptr_eq(&again.0, &name.0), "{text}");
            }
        }
        assert_eq!(names.len(), texts.len());
    }

    #[test]
    fn own_name_is_the_table_copy_and_follows_its_text() {
        let mut names = Names::default();
        let mut own = OwnName::default();
        let a = own.get(&mut names, "acme");
        assert!(Arc::ptr_eq(&a.0, &names.intern("acme").0));
        assert!(Arc::ptr_eq(&a.0, &own.get(&mut names, "acme").0));
        assert_eq!(own.get(&mut names, "other"), "other");
        assert_eq!(own, OwnName::default());
    }
}
