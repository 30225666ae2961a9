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
    #[error("`{0}` is out of range (an amount is at most 9223372036854775.807)")]
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

    /// `is_zero` by reference, for serde's `skip_serializing_if`.
    pub fn is_zero_ref(&self) -> bool {
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

    /// Parses a decimal in JSON number notation: `12`, `-3`, `0.5`, `2500.125`, `1e3`,
    /// `1.5e-2`. Exact: a digit other than zero past the thousandths is `TooPrecise`, a
    /// value (or exponent) out of range `TooLarge`; nothing is ever rounded.
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        parse_decimal(text)
    }
}

/// The one parser behind JSON numbers, JSON strings, TOML strings and the command line, so
/// all of them follow the same rules. The grammar is JSON's number grammar:
/// `-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?`.
pub fn parse_decimal(text: &str) -> Result<Credits, CreditsError> {
    let bad = || CreditsError::NotANumber(text.to_string());
    let (negative, rest) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text),
    };
    let (mantissa, exponent) = match rest.find(['e', 'E']) {
        Some(at) => (&rest[..at], Some(&rest[at + 1..])),
        None => (rest, None),
    };
    let (whole, fraction) = match mantissa.split_once('.') {
        Some((w, f)) if !f.is_empty() => (w, f),
        Some(_) => return Err(bad()),
        None => (mantissa, ""),
    };
    let digits_only = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if !digits_only(whole) || (whole.len() > 1 && whole.starts_with('0')) {
        return Err(bad());
    }
    if !fraction.is_empty() && !digits_only(fraction) {
        return Err(bad());
    }
    // The exponent only moves the decimal point; its digits decide nothing else. One that
    // does not fit an i32 is out of range for any nonzero amount.
    let exponent: i64 = match exponent {
        None => 0,
        Some(e) => {
            let unsigned = e.strip_prefix(['+', '-']).unwrap_or(e);
            if !digits_only(unsigned) {
                return Err(bad());
            }
            match e.parse::<i32>() {
                Ok(v) => i64::from(v),
                Err(_) if whole.bytes().chain(fraction.bytes()).all(|b| b == b'0') => {
                    return Ok(Credits::ZERO)
                }
                Err(_) => return Err(CreditsError::TooLarge(text.to_string())),
            }
        }
    };
    // value = digits * 10^(exponent - fraction.len()); in thousandths: shift by 3 more.
    // The digits are the whole part then the fraction, read in place (no copy: this runs
    // on every call's quantity).
    let (whole, fraction) = (whole.as_bytes(), fraction.as_bytes());
    let count = whole.len() + fraction.len();
    let digit = |i: usize| {
        if i < whole.len() {
            whole[i]
        } else {
            fraction[i - whole.len()]
        }
    };
    let shift = exponent - fraction.len() as i64 + 3;
    let kept = if shift < 0 {
        let drop = usize::try_from(-shift).unwrap_or(usize::MAX);
        let keep = count.saturating_sub(drop);
        if (keep..count).any(|i| digit(i) != b'0') {
            return Err(CreditsError::TooPrecise(text.to_string()));
        }
        keep
    } else {
        count
    };
    let first = match (0..kept).find(|&i| digit(i) != b'0') {
        Some(first) => first,
        None => return Ok(Credits::ZERO),
    };
    let too_large = || CreditsError::TooLarge(text.to_string());
    let zeros = usize::try_from(shift.max(0)).map_err(|_| too_large())?;
    // i64 has 19 digits at most; anything longer cannot fit.
    if (kept - first).saturating_add(zeros) > 19 {
        return Err(too_large());
    }
    let mut milli: i64 = 0;
    for i in first..kept {
        milli = milli
            .checked_mul(10)
            .and_then(|m| m.checked_add(i64::from(digit(i) - b'0')))
            .ok_or_else(too_large)?;
    }
    for _ in 0..zeros {
        milli = milli.checked_mul(10).ok_or_else(too_large)?;
    }
    Ok(Credits(if negative { -milli } else { milli }))
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

/// Amounts below this many thousandths have at most 15 significant digits, so the
/// shortest decimal form of their nearest f64 is exactly their own decimal text.
const EXACT_AS_F64: i64 = 1_000_000_000_000_000;

impl Serialize for Credits {
    /// A JSON number: an integer when whole, else the exact decimal (at most 3 places).
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        if self.0 % SCALE == 0 {
            serializer.serialize_i64(self.0 / SCALE)
        } else if self.0.unsigned_abs() < EXACT_AS_F64 as u64 {
            // Shortest round-trip float formatting reproduces up to 15 significant digits
            // exactly; this is display only, arithmetic never leaves the integers.
            serializer.serialize_f64(self.0 as f64 / SCALE as f64)
        } else {
            // Beyond 15 digits a float would round: the exact decimal as a string, which
            // every reader of credits accepts.
            serializer.collect_str(self)
        }
    }
}

/// The key under which serde_json (with `arbitrary_precision`) hands over a number's text.
const JSON_NUMBER_TOKEN: &str = "$serde_json::private::Number";

impl<'de> Deserialize<'de> for Credits {
    /// Accepts a JSON number or a decimal string, both read from their text by
    /// [`parse_decimal`] with the same rules: never through a float.
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct CreditsVisitor;

        impl<'de> Visitor<'de> for CreditsVisitor {
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
                // JSON numbers never come here (serde_json's `arbitrary_precision` gives
                // their text, see `visit_map`); TOML floats in config do. A float is exact
                // to a thousandth only below 2^53 thousandths, so larger ones are refused
                // rather than silently rounded.
                if !v.is_finite() {
                    return Err(E::custom(CreditsError::NotANumber(v.to_string())));
                }
                if v.abs() >= EXACT_AS_F64 as f64 / SCALE as f64 {
                    return Err(E::custom(format!(
                        "{v} is too large for a float here: write it as a string, e.g. \"{v}\""
                    )));
                }
                parse_decimal(&v.to_string()).map_err(E::custom)
            }

            fn visit_str<E: de::Error>(self, v: &str) -> Result<Credits, E> {
                parse_decimal(v).map_err(E::custom)
            }

            fn visit_map<A: de::MapAccess<'de>>(self, mut map: A) -> Result<Credits, A::Error> {
                // serde_json with `arbitrary_precision`: a number that is not a plain
                // 64-bit integer arrives as a one-entry map holding its exact text.
                match map.next_key::<String>()? {
                    Some(key) if key == JSON_NUMBER_TOKEN => {
                        let text: String = map.next_value()?;
                        parse_decimal(&text).map_err(de::Error::custom)
                    }
                    _ => Err(de::Error::invalid_type(de::Unexpected::Map, &self)),
                }
            }
        }

        deserializer.deserialize_any(CreditsVisitor)
    }
}

impl Credits {
    /// `self + other`, `None` on overflow.
    pub fn checked_add(self, other: Credits) -> Option<Credits> {
        self.0.checked_add(other.0).map(Credits)
    }

    /// `self - other`, `None` on overflow.
    pub fn checked_sub(self, other: Credits) -> Option<Credits> {
        self.0.checked_sub(other.0).map(Credits)
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
            "", "abc", "1.", ".5", "1.2.3", "+1", " 1", "1 ", "1,5", "NaN", "007", "1e", "1e+",
            "e3", "1.e3", "-", "--1", "0x10", "1_000", "inf",
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
        // Beyond 15 significant digits the exact text is kept, as a string.
        let big = Credits::from_milli(9_007_199_254_740_993);
        let json = serde_json::to_string(&big).unwrap();
        assert_eq!(json, "\"9007199254740.993\"");
        assert_eq!(serde_json::from_str::<Credits>(&json).unwrap(), big);
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

    #[test]
    fn exponents_move_the_point_exactly() {
        let milli = |t: &str| parse_decimal(t).map(Credits::milli);
        assert_eq!(milli("1e3"), Ok(1_000_000));
        assert_eq!(milli("1E3"), Ok(1_000_000));
        assert_eq!(milli("1e+3"), Ok(1_000_000));
        assert_eq!(milli("1.5e-2"), Ok(15));
        assert_eq!(milli("1000e-6"), Ok(1));
        assert_eq!(milli("-2.5e1"), Ok(-25_000));
        assert_eq!(milli("0e999999999999"), Ok(0));
        assert_eq!(milli("1.000"), Ok(1_000));
        // Trailing zeros past the thousandths carry no value: exact, not rounded.
        assert_eq!(milli("1.50000"), Ok(1_500));
        assert_eq!(
            parse_decimal("1e-4"),
            Err(CreditsError::TooPrecise("1e-4".into()))
        );
        assert_eq!(
            parse_decimal("0.10000000000000000001"),
            Err(CreditsError::TooPrecise("0.10000000000000000001".into()))
        );
        for text in ["1e400", "1e16", "9223372036854776", "1e2147483648", "-1e17"] {
            assert_eq!(
                parse_decimal(text),
                Err(CreditsError::TooLarge(text.into())),
                "{text}"
            );
        }
        assert_eq!(milli("9223372036854775.807"), Ok(i64::MAX));
    }

    #[test]
    fn json_numbers_and_strings_follow_the_same_rules() {
        let cases = [
            "12345678901234.567",
            "0.10000000000000000001",
            "1e3",
            "1.5e-2",
            "1e-4",
            "1e400",
            "0.001",
            "-7",
            "18446744073709551616",
            "9223372036854775807",
        ];
        for text in cases {
            let as_number = serde_json::from_str::<Credits>(text).map_err(|e| e.to_string());
            let as_string =
                serde_json::from_str::<Credits>(&format!("\"{text}\"")).map_err(|e| e.to_string());
            assert_eq!(
                as_number.is_ok(),
                as_string.is_ok(),
                "{text}: {as_number:?} vs {as_string:?}"
            );
            if let (Ok(n), Ok(s)) = (&as_number, &as_string) {
                assert_eq!(n, s, "{text}");
            }
        }
        assert_eq!(
            serde_json::from_str::<Credits>("12345678901234.567").unwrap(),
            Credits::from_milli(12_345_678_901_234_567)
        );
        assert!(serde_json::from_str::<Credits>("0.10000000000000000001")
            .unwrap_err()
            .to_string()
            .contains("more than 3 decimals"));
        assert_eq!(
            serde_json::from_str::<Credits>("1e3").unwrap(),
            Credits::from_whole(1000)
        );
    }

    #[test]
    fn checked_arithmetic_reports_overflow() {
        let max = Credits::from_milli(i64::MAX);
        assert_eq!(max.checked_add(Credits::from_milli(1)), None);
        assert_eq!(
            Credits::from_milli(i64::MIN).checked_sub(Credits::from_milli(1)),
            None
        );
        assert_eq!(
            Credits::from_whole(2).checked_add(Credits::from_whole(3)),
            Some(Credits::from_whole(5))
        );
    }
}
