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
