//! Property tests of the fixed-point arithmetic of `Credits`. The rules of accounts are
//! property-tested against the reference model in `model.rs`.

use proptest::prelude::*;
use tally_core::Credits;

proptest! {
    /// Any decimal written with an exponent (or as a JSON number or string) parses to the
    /// exact value: a mantissa and exponent are turned into thousandths with big-integer
    /// arithmetic here, and the parser must agree, reject it as too precise exactly when a
    /// nonzero digit falls past the thousandths, and as out of range exactly when it
    /// exceeds an i64 of thousandths. Numbers and strings always give the same answer.
    #[test]
    fn decimal_with_exponent_parses_exactly(
        negative in any::<bool>(),
        whole in 0u64..10_000_000_000,
        fraction in proptest::option::of("[0-9]{1,8}"),
        exponent in proptest::option::of(-12i32..=12),
    ) {
        let mut text = String::new();
        if negative { text.push('-'); }
        text.push_str(&whole.to_string());
        if let Some(f) = &fraction { text.push('.'); text.push_str(f); }
        if let Some(e) = exponent { text.push_str(&format!("e{e}")); }
        // Exact value in units of 10^-(frac_len) times 10^exponent, in i128 thousandths.
        let frac = fraction.clone().unwrap_or_default();
        let digits: i128 = format!("{whole}{frac}").parse().unwrap();
        let shift = i64::from(exponent.unwrap_or(0)) - frac.len() as i64 + 3;
        let expected: Option<Result<i128, ()>> = if shift >= 0 {
            digits.checked_mul(10i128.checked_pow(shift as u32).unwrap_or(i128::MAX)).map(Ok)
        } else {
            let div = 10i128.pow((-shift) as u32);
            Some(if digits % div == 0 { Ok(digits / div) } else { Err(()) })
        };
        let parsed = text.parse::<Credits>();
        match expected {
            Some(Err(())) => prop_assert!(
                matches!(parsed, Err(tally_core::credits::CreditsError::TooPrecise(_))),
                "{}: {:?}", text, parsed
            ),
            Some(Ok(milli)) if milli <= i128::from(i64::MAX) => {
                let milli = if negative { -milli } else { milli };
                prop_assert_eq!(parsed.clone().map(|c| i128::from(c.milli())), Ok(milli), "{}", text);
            }
            _ => prop_assert!(
                matches!(parsed, Err(tally_core::credits::CreditsError::TooLarge(_))),
                "{}: {:?}", text, parsed
            ),
        }
        let as_number = serde_json::from_str::<Credits>(&text).ok();
        let as_string = serde_json::from_str::<Credits>(&format!("\"{text}\"")).ok();
        prop_assert_eq!(as_number, parsed.clone().ok(), "{}", text);
        prop_assert_eq!(as_string, parsed.ok(), "{}", text);
    }

    #[test]
    fn credits_display_then_parse_is_the_identity(milli in (i64::MIN + 1)..=i64::MAX) {
        let credits = Credits::from_milli(milli);
        let text = credits.to_string();
        prop_assert_eq!(text.parse::<Credits>(), Ok(credits), "{}", text);
        // At most three decimals, no trailing zero after the point.
        if let Some((_, fraction)) = text.split_once('.') {
            prop_assert!(!fraction.is_empty() && fraction.len() <= 3 && !fraction.ends_with('0'));
        }
    }

    #[test]
    fn credits_json_round_trip_is_exact(milli in -999_999_999_999_999i64..=999_999_999_999_999) {
        let credits = Credits::from_milli(milli);
        let json = serde_json::to_string(&credits).unwrap();
        prop_assert_eq!(serde_json::from_str::<Credits>(&json).unwrap(), credits, "{}", json);
        let quoted = format!("\"{credits}\"");
        prop_assert_eq!(serde_json::from_str::<Credits>(&quoted).unwrap(), credits);
    }

    #[test]
    fn times_never_under_charges(
        rate in 0i64..1_000_000_000_000,
        quantity in 0i64..1_000_000_000,
    ) {
        let result = Credits::from_milli(rate)
            .times(Credits::from_milli(quantity))
            .expect("no overflow in this range");
        let exact = i128::from(rate) * i128::from(quantity);
        let charged = i128::from(result.milli()) * 1000;
        // Never less than the exact product, and less than a thousandth more.
        prop_assert!(charged >= exact, "{} x {} charged {}", rate, quantity, result);
        prop_assert!(charged - exact < 1000, "{} x {} charged {}", rate, quantity, result);
    }
}
