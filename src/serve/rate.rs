//! One rate limit per API key (governor's GCRA), so one busy key cannot take the others'
//! share.

/// One rate limit per key (governor's GCRA): a key over it gets 429, other keys do not
/// notice. Keyed by the key's index in its
/// [`KeySet`](crate::config::keys::KeySet), so no token is hashed or stored twice.
pub struct RateLimits {
    limiters: Vec<governor::DefaultDirectRateLimiter>,
}

impl RateLimits {
    /// `per_second` on average and `burst` at once, for each of `keys` keys; zeros count
    /// as one (the config refuses them).
    pub fn new(keys: usize, per_second: u32, burst: u32) -> RateLimits {
        let one = std::num::NonZeroU32::MIN;
        let quota =
            governor::Quota::per_second(std::num::NonZeroU32::new(per_second).unwrap_or(one))
                .allow_burst(std::num::NonZeroU32::new(burst).unwrap_or(one));
        RateLimits {
            limiters: (0..keys)
                .map(|_| governor::RateLimiter::direct(quota))
                .collect(),
        }
    }

    /// `Err(wait)` when the key at `index` is over its limit, with how long until its
    /// next request would pass.
    pub fn check(&self, index: usize) -> Result<(), std::time::Duration> {
        use governor::clock::Clock;
        let Some(limiter) = self.limiters.get(index) else {
            return Ok(());
        };
        limiter
            .check()
            .map_err(|not_until| not_until.wait_time_from(limiter.clock().now()))
    }
}
