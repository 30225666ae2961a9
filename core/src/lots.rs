//! Credit lots and the order in which a debit consumes them.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::credits::Credits;
use crate::names::Name;
use crate::short_text::ShortText;

/// What kind of grant a lot came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LotKind {
    /// A plan's allowance for one billing cycle.
    Included,
    /// A free grant.
    Promotional,
    /// A prepaid pack.
    Purchased,
    /// Postpaid overage once every lot is empty. Never a lot: it only appears on payments.
    Flex,
}

impl LotKind {
    pub const ALL: [LotKind; 3] = [LotKind::Included, LotKind::Promotional, LotKind::Purchased];

    pub fn as_str(self) -> &'static str {
        match self {
            LotKind::Included => "included",
            LotKind::Promotional => "promotional",
            LotKind::Purchased => "purchased",
            LotKind::Flex => "flex",
        }
    }

    /// Free credits before paid ones when nothing else decides.
    fn rank(self) -> u8 {
        match self {
            LotKind::Included => 0,
            LotKind::Promotional => 1,
            LotKind::Purchased => 2,
            LotKind::Flex => 3,
        }
    }
}

/// How a purchased lot was paid for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PaymentMethod {
    Card,
    Cash,
}

impl PaymentMethod {
    /// The name the event contract and the ledger use (serde's, above).
    pub fn as_str(self) -> &'static str {
        match self {
            PaymentMethod::Card => "card",
            PaymentMethod::Cash => "cash",
        }
    }
}

/// Which lot pays first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Policy {
    /// The lot that expires soonest pays first [000].
    #[default]
    EarliestExpiry,
    /// Included, then promotional, then purchased, whatever their expiry [002].
    KindOrder,
}

/// One grant of credits and what is left of it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lot {
    /// Shared, so each payment names its lot without a copy of the id.
    pub id: Name,
    /// Inline: every call compares the pool of each of its account's lots, and a pool
    /// kept apart on the heap cost a cache miss per lot.
    pub pool: ShortText,
    pub kind: LotKind,
    pub granted: Credits,
    pub remaining: Credits,
    pub effective_at: DateTime<Utc>,
    /// `None`: never expires.
    pub expires_at: Option<DateTime<Utc>>,
    /// Lower pays first, before any lot without a priority.
    pub priority: Option<i32>,
    /// Grant order within the account: the last tie-breaker.
    pub seq: u64,
    pub voided: bool,
    /// Its expiry has been written to the ledger; what was left is gone.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub expired: bool,
    /// Issued by the account's plan for one cycle (a plan change ends it).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub from_plan: bool,
    /// Of `remaining`, what open holds have reserved: still in the lot (a hold moves no
    /// money), but no other call or hold may take it. Absent in states written before
    /// holds existed, hence the default.
    #[serde(default, skip_serializing_if = "Credits::is_zero_ref")]
    pub held: Credits,
}

impl Lot {
    /// What a call or a new hold may still take: the remaining credits no hold reserved.
    pub fn free(&self) -> Credits {
        self.remaining - self.held
    }

    /// Whether this lot can pay for a call (or back a hold) in `pool` made at `at`.
    pub fn usable(&self, pool: &str, at: DateTime<Utc>) -> bool {
        // The pool's text last: it is the one comparison that calls out (`memcmp`).
        !self.voided
            && !self.expired
            && self.free().is_positive()
            && self.effective_at <= at
            && self.expires_at.is_none_or(|end| at < end)
            && self.pool == pool
    }

    /// The debit order between two lots: `order_key`'s order, compared field by field and
    /// stopping at the first difference (no key built for each lot and comparison).
    fn pays_before(&self, other: &Lot, policy: Policy) -> std::cmp::Ordering {
        let explicit = |lot: &Lot| (lot.priority.is_none(), lot.priority.unwrap_or(0));
        let kind = |lot: &Lot| lot.kind.rank();
        let expiry = |lot: &Lot| (lot.expires_at.is_none(), lot.expires_at);
        let order = explicit(self).cmp(&explicit(other));
        let order = match policy {
            Policy::EarliestExpiry => order
                .then_with(|| expiry(self).cmp(&expiry(other)))
                .then_with(|| kind(self).cmp(&kind(other))),
            Policy::KindOrder => order
                .then_with(|| kind(self).cmp(&kind(other)))
                .then_with(|| expiry(self).cmp(&expiry(other))),
        };
        let order = order.then_with(|| self.seq.cmp(&other.seq));
        debug_assert_eq!(order, self.order_key(policy).cmp(&other.order_key(policy)));
        order
    }

    /// Sort key: the smallest key pays first. Never-expiring lots sort after expiring ones.
    fn order_key(&self, policy: Policy) -> (bool, i32, u8, bool, Option<DateTime<Utc>>, u8, u64) {
        let explicit = (self.priority.is_none(), self.priority.unwrap_or(0));
        let expiry = (self.expires_at.is_none(), self.expires_at);
        match policy {
            Policy::EarliestExpiry => (
                explicit.0,
                explicit.1,
                0,
                expiry.0,
                expiry.1,
                self.kind.rank(),
                self.seq,
            ),
            Policy::KindOrder => (
                explicit.0,
                explicit.1,
                self.kind.rank(),
                expiry.0,
                expiry.1,
                0,
                self.seq,
            ),
        }
    }
}

/// One lot's share of a debit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Payment {
    pub lot: Name,
    pub kind: LotKind,
    pub credits: Credits,
}

/// The lots that paid one call: inline for the common one or two, so a call's entry
/// allocates no list.
pub type Payments = smallvec::SmallVec<[Payment; 2]>;

/// The result of a debit: who paid, and what nobody could.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Debit {
    pub paid: Payments,
    pub shortfall: Credits,
}

/// Takes `amount` from the free credits of the usable lots of `pool` at `at`, in `policy`
/// order, and returns which lots paid. What the lots cannot cover is the shortfall.
/// Credits reserved by holds are not free, so they never pay for another call.
pub fn debit(
    lots: &mut [Lot],
    pool: &str,
    amount: Credits,
    at: DateTime<Utc>,
    policy: Policy,
) -> Debit {
    let mut debit = Debit::default();
    debit.shortfall = take(lots, pool, amount, at, policy, Take::Debit, &mut debit.paid);
    debit
}

/// [`debit`], pushing the payments onto `paid` (a call's entry's own list, so they are
/// not moved there from a list of their own) and returning the shortfall.
pub fn debit_into(
    lots: &mut [Lot],
    pool: &str,
    amount: Credits,
    at: DateTime<Utc>,
    policy: Policy,
    paid: &mut Payments,
) -> Credits {
    take(lots, pool, amount, at, policy, Take::Debit, paid)
}

/// Reserves `amount` from the free credits of the usable lots of `pool` at `at`, in `policy`
/// order: the credits stay in their lots, marked `held`. What the lots cannot cover is
/// returned as the shortfall (a hold is refused before it would have any).
pub fn reserve(
    lots: &mut [Lot],
    pool: &str,
    amount: Credits,
    at: DateTime<Utc>,
    policy: Policy,
) -> Debit {
    let mut debit = Debit::default();
    debit.shortfall = take(
        lots,
        pool,
        amount,
        at,
        policy,
        Take::Reserve,
        &mut debit.paid,
    );
    debit
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Take {
    Debit,
    Reserve,
}

/// One walk of the debit order for both debits and reservations, so a hold reserves
/// exactly the credits the same call would have been paid from. Pushes who paid onto
/// `paid` and returns what nobody could.
fn take(
    lots: &mut [Lot],
    pool: &str,
    amount: Credits,
    at: DateTime<Utc>,
    policy: Policy,
    how: Take,
    paid: &mut Payments,
) -> Credits {
    let mut left = amount;
    while left.is_positive() {
        let Some(next) = first_payer(lots, pool, at, policy) else {
            break;
        };
        let lot = &mut lots[next];
        // `usable` means free credits are positive; taking at most those keeps
        // `held <= remaining` on every lot.
        let take = lot.free().min(left);
        match how {
            Take::Debit => lot.remaining -= take,
            Take::Reserve => lot.held += take,
        }
        left -= take;
        paid.push(Payment {
            lot: lot.id.clone(),
            kind: lot.kind,
            credits: take,
        });
    }
    left.max(Credits::ZERO)
}

/// The index of the usable lot that pays first (the first of equals, as `min_by` gives).
fn first_payer(lots: &[Lot], pool: &str, at: DateTime<Utc>, policy: Policy) -> Option<usize> {
    let mut first: Option<(usize, &Lot)> = None;
    for (i, lot) in lots.iter().enumerate() {
        if lot.usable(pool, at)
            && first.is_none_or(|(_, best)| lot.pays_before(best, policy).is_lt())
        {
            first = Some((i, lot));
        }
    }
    first.map(|(i, _)| i)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(day: u32) -> DateTime<Utc> {
        format!("2026-11-{day:02}T00:00:00Z").parse().unwrap()
    }

    fn lot(id: &str, kind: LotKind, credits: i64, expires: Option<u32>, seq: u64) -> Lot {
        Lot {
            id: id.into(),
            pool: "ai".into(),
            kind,
            granted: Credits::from_whole(credits),
            remaining: Credits::from_whole(credits),
            effective_at: t(1),
            expires_at: expires.map(t),
            priority: None,
            seq,
            voided: false,
            expired: false,
            from_plan: false,
            held: Credits::ZERO,
        }
    }

    fn order(lots: &mut [Lot], policy: Policy) -> Vec<String> {
        let total: Credits = lots.iter().map(|l| l.remaining).sum();
        debit(lots, "ai", total, t(5), policy)
            .paid
            .into_iter()
            .map(|p| p.lot.to_string())
            .collect()
    }

    #[test]
    fn earliest_expiry_pays_first() {
        let mut lots = vec![
            lot("late", LotKind::Purchased, 10, Some(30), 0),
            lot("soon", LotKind::Purchased, 10, Some(10), 1),
        ];
        assert_eq!(order(&mut lots, Policy::EarliestExpiry), ["soon", "late"]);
    }

    #[test]
    fn monthly_allowance_before_a_purchase_that_expires_later() {
        // [000]: the monthly allowance expires sooner, so it goes first.
        let mut lots = vec![
            lot("pack", LotKind::Purchased, 10, Some(29), 0),
            lot("month", LotKind::Included, 10, Some(30), 1),
        ];
        assert_eq!(order(&mut lots, Policy::EarliestExpiry), ["pack", "month"]);
        lots[0].expires_at = None;
        lots.iter_mut().for_each(|l| l.remaining = l.granted);
        assert_eq!(order(&mut lots, Policy::EarliestExpiry), ["month", "pack"]);
    }

    #[test]
    fn never_expiring_goes_after_expiring() {
        let mut lots = vec![
            lot("forever", LotKind::Included, 10, None, 0),
            lot("dated", LotKind::Purchased, 10, Some(28), 1),
        ];
        assert_eq!(
            order(&mut lots, Policy::EarliestExpiry),
            ["dated", "forever"]
        );
    }

    #[test]
    fn explicit_priority_goes_first_lower_first() {
        let mut lots = vec![
            lot("soon", LotKind::Included, 10, Some(6), 0),
            lot("p5", LotKind::Purchased, 10, None, 1),
            lot("p1", LotKind::Purchased, 10, Some(30), 2),
        ];
        lots[1].priority = Some(5);
        lots[2].priority = Some(1);
        assert_eq!(
            order(&mut lots, Policy::EarliestExpiry),
            ["p1", "p5", "soon"]
        );
    }

    #[test]
    fn ties_break_by_kind_then_grant_order() {
        let mut lots = vec![
            lot("bought", LotKind::Purchased, 10, Some(30), 0),
            lot("promo-b", LotKind::Promotional, 10, Some(30), 2),
            lot("promo-a", LotKind::Promotional, 10, Some(30), 1),
            lot("plan", LotKind::Included, 10, Some(30), 3),
        ];
        assert_eq!(
            order(&mut lots, Policy::EarliestExpiry),
            ["plan", "promo-a", "promo-b", "bought"]
        );
    }

    #[test]
    fn kind_order_ignores_expiry_between_kinds() {
        let mut lots = vec![
            lot("bought", LotKind::Purchased, 10, Some(6), 0),
            lot("plan", LotKind::Included, 10, Some(30), 1),
        ];
        assert_eq!(order(&mut lots, Policy::KindOrder), ["plan", "bought"]);
    }

    #[test]
    fn lots_are_chosen_by_the_event_time() {
        let mut lots = vec![
            lot("november", LotKind::Included, 10, Some(30), 0),
            lot("december", LotKind::Included, 10, None, 1),
        ];
        lots[1].effective_at = t(30);
        let at_2359: DateTime<Utc> = "2026-11-29T23:59:00Z".parse().unwrap();
        let d = debit(
            &mut lots,
            "ai",
            Credits::from_whole(3),
            at_2359,
            Policy::EarliestExpiry,
        );
        assert_eq!(d.paid[0].lot, "november");
        let d = debit(
            &mut lots,
            "ai",
            Credits::from_whole(3),
            t(30),
            Policy::EarliestExpiry,
        );
        assert_eq!(d.paid[0].lot, "december");
    }

    #[test]
    fn splits_across_lots_and_records_shortfall() {
        let mut lots = vec![
            lot("a", LotKind::Included, 5, Some(10), 0),
            lot("b", LotKind::Purchased, 3, Some(20), 1),
        ];
        let d = debit(
            &mut lots,
            "ai",
            Credits::from_whole(10),
            t(5),
            Policy::EarliestExpiry,
        );
        let paid: Vec<_> = d.paid.iter().map(|p| (p.lot.as_str(), p.credits)).collect();
        assert_eq!(
            paid,
            [("a", Credits::from_whole(5)), ("b", Credits::from_whole(3))]
        );
        assert_eq!(d.shortfall, Credits::from_whole(2));
        assert!(lots.iter().all(|l| l.remaining.is_zero()));
    }

    #[test]
    fn other_pools_voided_expired_and_future_lots_do_not_pay() {
        let mut lots = vec![
            lot("scan", LotKind::Purchased, 10, None, 0),
            lot("void", LotKind::Purchased, 10, None, 1),
            lot("expired", LotKind::Purchased, 10, Some(3), 2),
            lot("future", LotKind::Purchased, 10, None, 3),
        ];
        lots[0].pool = "scan".into();
        lots[1].voided = true;
        lots[3].effective_at = t(9);
        let d = debit(
            &mut lots,
            "ai",
            Credits::from_whole(1),
            t(5),
            Policy::EarliestExpiry,
        );
        assert!(d.paid.is_empty());
        assert_eq!(d.shortfall, Credits::from_whole(1));
    }
}
