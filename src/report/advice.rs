//! The offers recommendations are made from (`[offers]` in config, `config::offers`: packs
//! on sale, the plans' prices, the sales line) as the core takes them, and the words of a
//! recommendation, in English or Korean, shared by the balance report, the dashboard
//! (through the API) and the email.

use std::collections::BTreeMap;

use tally_core::advice::{Advice, Choice, Offers, PlanOffer};
use tally_core::plans::{Period, Plan};

use crate::config::offers::OffersConfig;
use crate::notify::Locale;

/// What the offers are worth to an account, and how a recommendation is worded.
impl OffersConfig {
    /// The offers with each priced plan's credits a month (a yearly plan's twelfth).
    pub fn offers(&self, plans: &BTreeMap<String, Plan>) -> Offers {
        Offers {
            packs: self.packs.clone(),
            plans: self
                .plan_prices
                .iter()
                .filter_map(|(name, price)| {
                    let plan = plans.get(name)?;
                    Some(PlanOffer {
                        plan: name.clone(),
                        credits: monthly(plan.credits, plan.period),
                        price: match plan.period {
                            Period::Month => *price,
                            Period::Year => price / 12,
                        },
                    })
                })
                .collect(),
            sales_above: self.sales_above,
        }
    }

    /// A price in minor units as text: `$25.00`.
    pub fn money(&self, minor: u64) -> String {
        let unit = 10u64.saturating_pow(self.minor_digits);
        if self.minor_digits == 0 {
            return format!("{}{minor}", self.currency);
        }
        format!(
            "{}{}.{:0width$}",
            self.currency,
            minor / unit,
            minor % unit,
            width = self.minor_digits as usize
        )
    }

    /// One sentence saying what to do, in the locale's language.
    pub fn sentence(&self, advice: &Advice, locale: Locale) -> String {
        let need = advice.need;
        match (&advice.choice, locale) {
            (
                Choice::BuyPack {
                    credits,
                    count,
                    price,
                },
                Locale::En,
            ) => format!(
                "At the recent rate you need about {need} credits a month. Cheapest: buy {count} \
                 pack(s) of {credits} credits for {}.",
                self.money(*price)
            ),
            (
                Choice::BuyPack {
                    credits,
                    count,
                    price,
                },
                Locale::Ko,
            ) => format!(
                "최근 사용 속도라면 한 달에 약 {need} 크레딧이 필요합니다. 가장 저렴한 방법: \
                 {credits} 크레딧 충전 팩 {count}개 구매 ({}).",
                self.money(*price)
            ),
            (
                Choice::Upgrade {
                    plan,
                    credits,
                    extra,
                },
                Locale::En,
            ) => format!(
                "At the recent rate you need about {need} credits a month. Cheapest: move to the \
                 {plan} plan ({credits} credits a month) for {} more a month.",
                self.money(*extra)
            ),
            (
                Choice::Upgrade {
                    plan,
                    credits,
                    extra,
                },
                Locale::Ko,
            ) => format!(
                "최근 사용 속도라면 한 달에 약 {need} 크레딧이 필요합니다. 가장 저렴한 방법: \
                 {plan} 요금제(월 {credits} 크레딧)로 변경, 월 {} 추가.",
                self.money(*extra)
            ),
            (Choice::ContactSales, Locale::En) => format!(
                "At the recent rate you need about {need} credits a month, more than any plan \
                 or pack covers economically: talk to sales ({}).",
                self.sales_url
            ),
            (Choice::ContactSales, Locale::Ko) => format!(
                "최근 사용 속도라면 한 달에 약 {need} 크레딧이 필요해 요금제나 충전 팩보다 \
                 맞춤 계약이 유리합니다. 영업팀에 문의하세요 ({}).",
                self.sales_url
            ),
        }
    }
}

/// Credits a month of a plan's cycle allowance.
pub fn monthly(credits: tally_core::Credits, period: Period) -> tally_core::Credits {
    match period {
        Period::Month => credits,
        Period::Year => tally_core::Credits::from_milli(credits.milli() / 12),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn money_in_minor_units() {
        let c = OffersConfig::default();
        assert_eq!(c.money(2500), "$25.00");
        assert_eq!(c.money(5), "$0.05");
        let won = OffersConfig {
            currency: "₩".into(),
            minor_digits: 0,
            ..OffersConfig::default()
        };
        assert_eq!(won.money(33000), "₩33000");
    }
}
