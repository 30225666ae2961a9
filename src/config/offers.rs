//! The `[offers]` section of the config: the packs on sale, the plans' prices and the
//! sales line that recommendations are made from (`report::advice` words them).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use tally_core::advice::Pack;

/// `offers` in config.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OffersConfig {
    /// How prices are written: a symbol put before them (`$`, `₩`).
    pub currency: String,
    /// Digits of the minor unit: prices are given in minor units (2: cents).
    pub minor_digits: u32,
    /// Prepaid packs on sale: `[{credits = 2500, price = 2500}]`, prices in minor units.
    pub packs: Vec<Pack>,
    /// Price per cycle of each plan in `[plans]` that is on sale, in minor units; a yearly
    /// plan's price is a year's.
    pub plan_prices: BTreeMap<String, u64>,
    /// Above this much a month (minor units), recommend talking to sales; 0: never.
    pub sales_above: u64,
    /// Where sales is reached, shown with that recommendation.
    pub sales_url: String,
}

impl Default for OffersConfig {
    fn default() -> Self {
        let whole = tally_core::Credits::from_whole;
        OffersConfig {
            currency: "$".into(),
            minor_digits: 2,
            // 2,500 credits for $25 [004]; a larger pack at a tenth off.
            packs: vec![
                Pack {
                    credits: whole(2500),
                    price: 2500,
                },
                Pack {
                    credits: whole(10_000),
                    price: 9000,
                },
            ],
            plan_prices: [
                ("pro".to_string(), 1000),
                ("enterprise".to_string(), 4500),
                ("standard".to_string(), 9900),
            ]
            .into_iter()
            .collect(),
            sales_above: 50_000,
            sales_url: "https://example.com/contact-sales".into(),
        }
    }
}
