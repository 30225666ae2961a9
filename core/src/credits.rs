//! Fixed-point credit amounts: whole credits with three decimals, stored as thousandths.

use std::fmt;
use std::ops::{Add, AddAssign, Neg, Sub, SubAssign};
use std::str::FromStr;

use serde::de::{self, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Thousandths in one credit.
pub const SCALE: i64 = 1000;

/// An amount of credits (or a quantity), exact to a thousandth. Never a float.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Credits(i64);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CreditsError {
    #[error("`{0}` is not a decimal number")]
    NotANumber(String),
    #[error("`{0}` has more than 3 decimals")]
    TooPrecise(String),
    #[error("`{0}` is too large")]
    TooLarge(String),
}

impl Credits {
    pub const ZERO: Credits = Credits(0);

    pub const fn from_milli(milli: i64) -> Self {
        Credits(milli)
    }

    pub const fn from_whole(whole: i64) -> Self {
        Credits(whole * SCALE)
    }

    pub const fn milli(self) -> i64 {
        self.0
    }

    pub fn is_zero(self) -> bool {
        self.0 == 0
    }

    pub fn is_negative(self) -> bool {
        self.0 < 0
    }

    pub fn is_positive(self) -> bool {
        self.0 > 0
    }

    /// `self * quantity`, rounded up to the next thousandth: a fraction of a thousandth is
    /// always charged, never given away. `None` on overflow.
    pub fn times(self, quantity: Credits) -> Option<Credits> {
        let product = i128::from(self.0) * i128::from(quantity.0);
        let scale = i128::from(SCALE);
        let rounded = if product >= 0 {
            (product + scale - 1) / scale
        } else {
            product / scale
        };
        i64::try_from(rounded).ok().map(Credits)
    }

    pub fn min(self, other: Credits) -> Credits {
        Credits(self.0.min(other.0))
    }

    pub fn max(self, other: Credits) -> Credits {
        Credits(self.0.max(other.0))
    }
}

impl Add for Credits {
    type Output = Credits;
    fn add(self, rhs: Credits) -> Credits {
        Credits(self.0 + rhs.0)
    }
}

impl AddAssign for Credits {
    fn add_assign(&mut self, rhs: Credits) {
        self.0 += rhs.0;
    }
}

impl Sub for Credits {
    type Output = Credits;
    fn sub(self, rhs: Credits) -> Credits {
        Credits(self.0 - rhs.0)
    }
}

impl SubAssign for Credits {
    fn sub_assign(&mut self, rhs: Credits) {
        self.0 -= rhs.0;
    }
}

impl Neg for Credits {
    type Output = Credits;
    fn neg(self) -> Credits {
        Credits(-self.0)
    }
}

impl std::iter::Sum for Credits {
    fn sum<I: Iterator<Item = Credits>>(iter: I) -> Credits {
        iter.fold(Credits::ZERO, Add::add)
    }
}

impl FromStr for Credits {
    type Err = CreditsError;

    /// Parses `12`, `-3`, `0.5`, `2500.125`; rejects exponents, more than three decimals and
    /// anything that is not plain decimal notation.
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let bad = || CreditsError::NotANumber(text.to_string());
        let (negative, digits) = match text.strip_prefix('-') {
            Some(rest) => (true, rest),
            None => (false, text),
        };
        let (whole, fraction) = match digits.split_once('.') {
            Some((w, f)) => (w, f),
            None => (digits, ""),
        };
        if whole.is_empty() || !whole.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad());
        }
        if digits.contains('.') && fraction.is_empty() {
            return Err(bad());
        }
        if !fraction.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad());
        }
        if fraction.len() > 3 {
            return Err(CreditsError::TooPrecise(text.to_string()));
        }
        let too_large = || CreditsError::TooLarge(text.to_string());
        let whole: i64 = whole.parse().map_err(|_| too_large())?;
        let mut milli: i64 = 0;
        for (i, b) in fraction.bytes().enumerate() {
            milli += i64::from(b - b'0') * 10_i64.pow(2 - i as u32);
        }
        let value = whole
            .checked_mul(SCALE)
            .and_then(|w| w.checked_add(milli))
            .ok_or_else(too_large)?;
        Ok(Credits(if negative { -value } else { value }))
    }
}

impl fmt::Display for Credits {
    /// Plain decimal with trailing zeros trimmed: `2500`, `12.5`, `0.001`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sign = if self.0 < 0 { "-" } else { "" };
        let abs = self.0.unsigned_abs();
        let whole = abs / SCALE as u64;
        let frac = abs % SCALE as u64;
        if frac == 0 {
            write!(f, "{sign}{whole}")
        } else {
            let digits = format!("{frac:03}");
            write!(f, "{sign}{whole}.{}", digits.trim_end_matches('0'))
        }
    }
}

impl Serialize for Credits {
    /// A JSON number: an integer when whole, else the exact decimal (at most 3 places).
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        if self.0 % SCALE == 0 {
            serializer.serialize_i64(self.0 / SCALE)
        } else {
            // Shortest round-trip float formatting reproduces the three decimals exactly;
            // this is display only, arithmetic never leaves the integers.
            serializer.serialize_f64(self.0 as f64 / SCALE as f64)
        }
    }
}

impl<'de> Deserialize<'de> for Credits {
    /// Accepts a JSON number or a decimal string, with at most three decimals.
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct CreditsVisitor;

        impl Visitor<'_> for CreditsVisitor {
            type Value = Credits;

            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a number or a decimal string with at most 3 decimals")
            }

            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Credits, E> {
                v.checked_mul(SCALE)
                    .map(Credits)
                    .ok_or_else(|| E::custom(CreditsError::TooLarge(v.to_string())))
            }

            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Credits, E> {
                i64::try_from(v)
                    .ok()
                    .and_then(|v| v.checked_mul(SCALE))
                    .map(Credits)
                    .ok_or_else(|| E::custom(CreditsError::TooLarge(v.to_string())))
            }

            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Credits, E> {
                // serde_json hands us a float for `12.5`; its shortest decimal form is the
                // text that was written, so re-parse that text exactly.
                if !v.is_finite() {
                    return Err(E::custom(CreditsError::NotANumber(v.to_string())));
                }
                v.to_string().parse().map_err(E::custom)
            }

            fn visit_str<E: de::Error>(self, v: &str) -> Result<Credits, E> {
                v.trim().parse().map_err(E::custom)
            }
        }

        deserializer.deserialize_any(CreditsVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_plain_decimals() {
        assert_eq!("12".parse(), Ok(Credits::from_milli(12_000)));
        assert_eq!("0.5".parse(), Ok(Credits::from_milli(500)));
        assert_eq!("2500.125".parse(), Ok(Credits::from_milli(2_500_125)));
        assert_eq!("-3.2".parse(), Ok(Credits::from_milli(-3_200)));
    }

    #[test]
    fn rejects_what_is_not_plain_decimal() {
        for text in [
            "", "abc", "1e3", "1.", ".5", "1.2.3", "+1", " 1", "1,5", "NaN",
        ] {
            assert!(text.parse::<Credits>().is_err(), "{text:?} parsed");
        }
        assert_eq!(
            "0.0001".parse::<Credits>(),
            Err(CreditsError::TooPrecise("0.0001".into()))
        );
    }

    #[test]
    fn displays_trimmed() {
        assert_eq!(Credits::from_milli(2_500_000).to_string(), "2500");
        assert_eq!(Credits::from_milli(12_500).to_string(), "12.5");
        assert_eq!(Credits::from_milli(1).to_string(), "0.001");
        assert_eq!(Credits::from_milli(-1_250).to_string(), "-1.25");
    }

    #[test]
    fn json_round_trip_is_exact() {
        for milli in [0, 1, 999, 12_500, 2_500_000, 123_456_789, -4_321] {
            let credits = Credits::from_milli(milli);
            let json = serde_json::to_string(&credits).unwrap();
            assert_eq!(
                serde_json::from_str::<Credits>(&json).unwrap(),
                credits,
                "{json}"
            );
        }
        assert_eq!(
            serde_json::from_str::<Credits>("\"7.25\"").unwrap(),
            Credits::from_milli(7_250)
        );
        assert!(serde_json::from_str::<Credits>("1.2345").is_err());
        assert!(serde_json::from_str::<Credits>("\"ten\"").is_err());
    }

    #[test]
    fn times_rounds_fractions_of_a_thousandth_up() {
        let rate = Credits::from_milli(1); // 0.001 per unit
        assert_eq!(
            rate.times(Credits::from_milli(500)),
            Some(Credits::from_milli(1))
        );
        assert_eq!(
            Credits::from_whole(8).times(Credits::from_whole(3)),
            Some(Credits::from_whole(24))
        );
        assert_eq!(
            Credits::from_milli(333).times(Credits::from_milli(1_500)),
            Some(Credits::from_milli(500))
        );
        assert_eq!(
            Credits::from_milli(i64::MAX).times(Credits::from_whole(2)),
            None
        );
    }
}
