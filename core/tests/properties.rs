//! Property tests of the fixed-point arithmetic of `Credits`. The rules of accounts are
//! property-tested against the reference model in `model.rs`.

use proptest::prelude::*;
use tally_core::Credits;

proptest! {
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
