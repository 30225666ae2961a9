//! Text that is usually short, kept inline: a ledger entry's event id is copied from every
//! call, and ids of up to 38 bytes (a UUID is 36) need no allocation. Longer text is boxed.
//! Reads as `&str` and serializes as a string, exactly as a `String` would.

use std::fmt;
use std::ops::Deref;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Longest text kept inline.
const INLINE: usize = 38;

/// An owned string, inline up to [`INLINE`] bytes.
#[derive(Clone)]
pub struct ShortText(Repr);

#[derive(Clone)]
enum Repr {
    Inline { len: u8, bytes: [u8; INLINE] },
    Boxed(Box<str>),
}

impl ShortText {
    pub fn as_str(&self) -> &str {
        match &self.0 {
            Repr::Inline { len, bytes } => {
                let bytes = &bytes[..usize::from(*len)];
                debug_assert!(std::str::from_utf8(bytes).is_ok());
                // SAFETY: `bytes` is a copy of a whole `&str` (see `From<&str>`), so it is
                // valid UTF-8.
                unsafe { std::str::from_utf8_unchecked(bytes) }
            }
            Repr::Boxed(text) => text,
        }
    }
}

impl From<&str> for ShortText {
    fn from(text: &str) -> Self {
        match u8::try_from(text.len()) {
            Ok(len) if text.len() <= INLINE => {
                let mut bytes = [0; INLINE];
                bytes[..text.len()].copy_from_slice(text.as_bytes());
                ShortText(Repr::Inline { len, bytes })
            }
            _ => ShortText(Repr::Boxed(text.into())),
        }
    }
}

impl From<String> for ShortText {
    fn from(text: String) -> Self {
        if text.len() <= INLINE {
            ShortText::from(text.as_str())
        } else {
            ShortText(Repr::Boxed(text.into_boxed_str()))
        }
    }
}

impl From<ShortText> for String {
    fn from(text: ShortText) -> Self {
        match text.0 {
            Repr::Boxed(text) => text.into_string(),
            Repr::Inline { .. } => text.as_str().to_string(),
        }
    }
}

impl Default for ShortText {
    fn default() -> Self {
        ShortText::from("")
    }
}

impl Deref for ShortText {
    type Target = str;

    fn deref(&self) -> &str {
        self.as_str()
    }
}

impl AsRef<str> for ShortText {
    fn as_ref(&self) -> &str {
        self.as_str()
    }
}

impl PartialEq for ShortText {
    fn eq(&self, other: &Self) -> bool {
        self.as_str() == other.as_str()
    }
}

impl Eq for ShortText {}

impl PartialEq<str> for ShortText {
    fn eq(&self, other: &str) -> bool {
        self.as_str() == other
    }
}

impl PartialEq<&str> for ShortText {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

impl PartialEq<String> for ShortText {
    fn eq(&self, other: &String) -> bool {
        self.as_str() == other.as_str()
    }
}

/// Whether `a` and `b` are the same text, as `a == b`. Texts of 4 to 32 bytes (pools,
/// names, ids) are compared inline as their first and last few bytes (overlapping): `==`
/// calls `memcmp`, whose call costs more than the comparison of such a text, and a call
/// compares several names (interned ones, the account's own).
#[inline(always)]
pub fn same(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    if a.len() != b.len() {
        return false;
    }
    match a.len() {
        16..=32 => ends::<16>(a, b),
        8..=15 => ends::<8>(a, b),
        4..=7 => ends::<4>(a, b),
        _ => a == b,
    }
}

/// Whether `a` and `b`, as long as each other and `W` to `2 * W` bytes long, have the same
/// first `W` and last `W` bytes, which together are all of them.
#[inline(always)]
fn ends<const W: usize>(a: &[u8], b: &[u8]) -> bool {
    let n = a.len();
    a[..W] == b[..W] && a[n - W..] == b[n - W..]
}

impl fmt::Debug for ShortText {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

impl fmt::Display for ShortText {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for ShortText {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for ShortText {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        String::deserialize(deserializer).map(ShortText::from)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `same` is `==` at every length up to past the inline comparisons, for equal texts
    /// and for texts that differ in any one byte (first, middle, last) or in length.
    #[test]
    fn same_is_equality() {
        let text: String = (0..40u8).map(|i| char::from(b'a' + i % 26)).collect();
        for len in 0..=text.len() {
            let a = &text[..len];
            // A copy elsewhere in memory: equal by content, not by place.
            let copy = a.to_owned();
            assert!(same(a, &copy), "{len}");
            for at in 0..len {
                let mut other = a.as_bytes().to_vec();
                other[at] = b'_';
                let other = String::from_utf8(other).expect("ASCII");
                assert!(!same(a, &other), "{len} {at}");
            }
            if len > 0 {
                assert!(!same(a, &text[..len - 1]), "{len}");
                assert!(!same(&text[1..len], &text[..len - 1]) || len == 1, "{len}");
            }
        }
    }

    #[test]
    fn reads_back_what_it_was_given_at_every_length() {
        let long = "é-0123456789".repeat(8);
        for end in (0..=long.len()).filter(|&i| long.is_char_boundary(i)) {
            let text = &long[..end];
            let short = ShortText::from(text);
            assert_eq!(short.as_str(), text);
            assert_eq!(ShortText::from(text.to_string()), short);
            assert_eq!(String::from(short.clone()), text);
            assert_eq!(
                serde_json::to_string(&short).unwrap(),
                serde_json::to_string(text).unwrap()
            );
            assert_eq!(matches!(short.0, Repr::Inline { .. }), end <= INLINE);
        }
        assert_eq!(std::mem::size_of::<ShortText>(), 40);
    }
}
