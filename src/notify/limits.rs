//! Rate limits on alert emails, with governor: a keyed limiter per account, which holds
//! alerts back (they go into a digest), and one over all accounts, which only delays.

use std::num::NonZeroU32;
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::middleware::NoOpMiddleware;
use governor::state::keyed::DashMapStateStore;
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};

#[derive(Debug, thiserror::Error)]
pub enum LimitsError {
    #[error("a limit of {count} per {period:?} is not a rate (both must be more than zero)")]
    NotARate { count: u32, period: Duration },
}

/// `count` per `period`, all of them usable at once (a burst), refilled one at a time at
/// `period / count`.
fn quota(count: u32, period: Duration) -> Result<Quota, LimitsError> {
    let not_a_rate = || LimitsError::NotARate { count, period };
    let burst = NonZeroU32::new(count).ok_or_else(not_a_rate)?;
    Ok(Quota::with_period(period / count)
        .ok_or_else(not_a_rate)?
        .allow_burst(burst))
}

type Keyed<C> =
    RateLimiter<String, DashMapStateStore<String>, C, NoOpMiddleware<<C as Clock>::Instant>>;

/// Emails per account.
pub struct AccountLimiter<C: Clock = DefaultClock> {
    limiter: Keyed<C>,
    clock: C,
}

impl AccountLimiter {
    pub fn new(count: u32, period: Duration) -> Result<AccountLimiter, LimitsError> {
        AccountLimiter::with_clock(count, period, DefaultClock::default())
    }
}

impl<C: Clock + Clone> AccountLimiter<C> {
    pub fn with_clock(count: u32, period: Duration, clock: C) -> Result<Self, LimitsError> {
        Ok(AccountLimiter {
            limiter: RateLimiter::dashmap_with_clock(quota(count, period)?, clock.clone()),
            clock,
        })
    }

    /// Takes one email of `account`'s allowance, or tells how long until one is free.
    pub fn check(&self, account: &str) -> Result<(), Duration> {
        self.limiter
            .check_key(&account.to_string())
            .map_err(|not_until| not_until.wait_time_from(self.clock.now()))
    }

    /// Forgets accounts whose allowance is full again, so the map holds only recent senders.
    pub fn forget_idle(&self) {
        self.limiter.retain_recent();
    }

    /// Accounts remembered.
    pub fn len(&self) -> usize {
        self.limiter.len()
    }

    pub fn is_empty(&self) -> bool {
        self.limiter.is_empty()
    }
}

/// Emails a second over all accounts.
pub struct GlobalLimiter {
    limiter: DefaultDirectRateLimiter,
}

impl GlobalLimiter {
    pub fn new(per_second: u32) -> Result<GlobalLimiter, LimitsError> {
        Ok(GlobalLimiter {
            limiter: RateLimiter::direct(quota(per_second, Duration::from_secs(1))?),
        })
    }

    /// Waits until one more email may go out, and takes it.
    pub async fn ready(&self) {
        self.limiter.until_ready().await;
    }

    /// Takes one email's allowance if it is free now.
    pub fn try_take(&self) -> bool {
        self.limiter.check().is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use governor::clock::FakeRelativeClock;

    #[test]
    fn per_account_allows_a_burst_then_one_per_slice_of_the_period() {
        let clock = FakeRelativeClock::default();
        let limits =
            AccountLimiter::with_clock(3, Duration::from_secs(3600), clock.clone()).expect("rate");
        for _ in 0..3 {
            assert_eq!(limits.check("acme"), Ok(()));
        }
        assert_eq!(limits.check("acme"), Err(Duration::from_secs(1200)));
        // Another account has its own allowance.
        assert_eq!(limits.check("globex"), Ok(()));
        clock.advance(Duration::from_secs(1199));
        assert_eq!(limits.check("acme"), Err(Duration::from_secs(1)));
        clock.advance(Duration::from_secs(1));
        assert_eq!(limits.check("acme"), Ok(()));
        assert!(limits.check("acme").is_err());
    }

    #[test]
    fn idle_accounts_are_forgotten() {
        let clock = FakeRelativeClock::default();
        let limits =
            AccountLimiter::with_clock(2, Duration::from_secs(60), clock.clone()).expect("rate");
        assert!(limits.check("a").is_ok());
        assert!(limits.check("b").is_ok());
        assert_eq!(limits.len(), 2);
        clock.advance(Duration::from_secs(61));
        limits.forget_idle();
        assert!(limits.is_empty());
    }

    #[test]
    fn zero_is_not_a_rate() {
        assert!(AccountLimiter::new(0, Duration::from_secs(1)).is_err());
        assert!(AccountLimiter::new(3, Duration::ZERO).is_err());
        assert!(GlobalLimiter::new(0).is_err());
    }

    #[tokio::test]
    async fn global_limit_delays_instead_of_refusing() {
        let global = GlobalLimiter::new(2).expect("rate");
        assert!(global.try_take());
        assert!(global.try_take());
        assert!(!global.try_take());
        // Waiting gives the next one; nothing is refused for good.
        global.ready().await;
    }
}
