//! Recommendations [002]: from the plan, the recent burn and the offers in config, the
//! cheapest way to cover a cycle of use: a prepaid pack (which size, how many), a larger
//! plan, or talking to sales when neither covers it within the sales line. Prices are whole
//! minor units (cents), never floats.

use serde::{Deserialize, Serialize};

use crate::credits::Credits;

/// Days of use a recommendation covers: one monthly cycle.
pub const HORIZON_DAYS: i64 = 30;

/// A prepaid pack on sale.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Pack {
    pub credits: Credits,
    /// In minor units of the currency (cents).
    pub price: u64,
}

/// A plan's price per monthly cycle.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlanOffer {
    pub plan: String,
    /// Credits a month.
    pub credits: Credits,
    /// In minor units a month.
    pub price: u64,
}

/// What the account can buy, from config.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Offers {
    pub packs: Vec<Pack>,
    pub plans: Vec<PlanOffer>,
    /// Above this much a month (minor units), talking to sales is advised instead.
    pub sales_above: u64,
}

/// The advice.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum Choice {
    /// Buy `count` packs of `credits` for `price` in all.
    BuyPack {
        credits: Credits,
        count: u64,
        price: u64,
    },
    /// Move to `plan` for `extra` more a month than the current plan.
    Upgrade {
        plan: String,
        credits: Credits,
        extra: u64,
    },
    /// Nothing on sale covers it within `sales_above`.
    ContactSales,
}

/// A recommendation for one pool.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Advice {
    /// Credits a cycle at the recent burn.
    pub need: Credits,
    /// What the plan's allowance leaves uncovered of `need`.
    pub missing: Credits,
    #[serde(flatten)]
    pub choice: Choice,
}

/// The cheapest way to cover `HORIZON_DAYS` at `per_day`, given the plan's allowance per
/// cycle (`allowance`) and its price (`current_price`, 0 without a plan or price). None
/// when the allowance already covers it or nothing is used.
pub fn recommend(
    per_day: Credits,
    allowance: Credits,
    current_price: u64,
    offers: &Offers,
) -> Option<Advice> {
    let need = Credits::from_milli(per_day.milli().saturating_mul(HORIZON_DAYS));
    let missing = need - allowance;
    if !missing.is_positive() {
        return None;
    }
    // Cheapest pack size for the missing credits (ties: the fewer credits bought).
    let pack = offers
        .packs
        .iter()
        .filter(|p| p.credits.is_positive())
        .map(|p| {
            let m = i128::from(missing.milli());
            let c = i128::from(p.credits.milli());
            let count = u64::try_from((m + c - 1) / c).unwrap_or(u64::MAX);
            let price = count.saturating_mul(p.price);
            (
                price,
                count.saturating_mul(p.credits.milli().unsigned_abs()),
                p,
                count,
            )
        })
        .min_by_key(|(price, bought, _, _)| (*price, *bought))
        .map(|(price, _, p, count)| Choice::BuyPack {
            credits: p.credits,
            count,
            price,
        });
    // Cheapest plan whose allowance covers the whole need.
    let plan = offers
        .plans
        .iter()
        .filter(|o| o.credits >= need && o.price >= current_price)
        .min_by_key(|o| (o.price, o.credits))
        .map(|o| Choice::Upgrade {
            plan: o.plan.clone(),
            credits: o.credits,
            extra: o.price - current_price,
        });
    let cost = |c: &Choice| match c {
        Choice::BuyPack { price, .. } => *price,
        Choice::Upgrade { extra, .. } => *extra,
        Choice::ContactSales => u64::MAX,
    };
    let best = [pack, plan]
        .into_iter()
        .flatten()
        .min_by_key(cost)
        .filter(|c| offers.sales_above == 0 || cost(c) <= offers.sales_above)
        .unwrap_or(Choice::ContactSales);
    Some(Advice {
        need,
        missing,
        choice: best,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn w(n: i64) -> Credits {
        Credits::from_whole(n)
    }

    fn offers() -> Offers {
        Offers {
            packs: vec![
                Pack {
                    credits: w(2500),
                    price: 2500,
                },
                Pack {
                    credits: w(10000),
                    price: 9000,
                },
            ],
            plans: vec![
                PlanOffer {
                    plan: "pro".into(),
                    credits: w(100),
                    price: 1000,
                },
                PlanOffer {
                    plan: "standard".into(),
                    credits: w(1500),
                    price: 3000,
                },
                PlanOffer {
                    plan: "enterprise".into(),
                    credits: w(5000),
                    price: 9900,
                },
            ],
            sales_above: 50_000,
        }
    }

    #[test]
    fn the_cheapest_of_pack_plan_and_sales() {
        // 10 a day: 300 a cycle; pro gives 100, 200 missing. One 2,500 pack is $25;
        // standard covers 300 for $20 more: the upgrade.
        let a = recommend(w(10), w(100), 1000, &offers()).expect("advice");
        assert_eq!((a.need, a.missing), (w(300), w(200)));
        assert_eq!(
            a.choice,
            Choice::Upgrade {
                plan: "standard".into(),
                credits: w(1500),
                extra: 2000
            }
        );
        // 100 a day: 3,000 a cycle, 2,900 missing: two 2,500 packs are $50, one 10,000
        // pack $90, enterprise $89 more: two packs.
        let a = recommend(w(100), w(100), 1000, &offers()).expect("advice");
        assert_eq!(
            a.choice,
            Choice::BuyPack {
                credits: w(2500),
                count: 2,
                price: 5000
            }
        );
        // 10,000 a day: 300,000 a cycle: no plan covers it; 30 packs of 10,000 are $2,700,
        // above the sales line of $500: sales.
        let a = recommend(w(10_000), w(100), 1000, &offers()).expect("advice");
        assert_eq!(a.choice, Choice::ContactSales);
    }

    #[test]
    fn nothing_when_the_allowance_covers_a_cycle() {
        assert_eq!(recommend(w(3), w(100), 1000, &offers()), None);
        assert_eq!(recommend(Credits::ZERO, Credits::ZERO, 0, &offers()), None);
    }
}
