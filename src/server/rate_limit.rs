//! The per-environment rate limit: a token bucket per key (governor's GCRA),
//! so one workload cannot starve the others.

use std::num::NonZeroU32;

use governor::clock::DefaultClock;
use governor::state::keyed::DefaultKeyedStateStore;
use governor::Quota;

/// Keys kept before buckets that are full again (indistinguishable from a
/// new one) are forgotten: memory stays bounded however many environments
/// call.
const MAX_KEYS: usize = 100_000;

/// A bucket holds this many seconds of the rate.
const BURST_FACTOR: NonZeroU32 = NonZeroU32::new(2).unwrap();

type Keyed = governor::RateLimiter<String, DefaultKeyedStateStore<String>, DefaultClock>;

/// A token bucket per environment, so one workload cannot starve the others.
pub struct RateLimiter {
    /// `None`: limiting is disabled.
    limiter: Option<Keyed>,
    /// Calls so far: the key count (a walk over every shard of governor's
    /// map) is looked at once per [`SWEEP_EVERY`] calls, not per request.
    calls: std::sync::atomic::AtomicUsize,
}

/// How often the key count is looked at.
const SWEEP_EVERY: usize = 1024;

impl RateLimiter {
    /// `per_second == 0` disables limiting.
    pub fn new(per_second: u32) -> Self {
        let limiter = NonZeroU32::new(per_second).map(|rate| {
            // Bursts up to twice the rate; a new key starts with a full bucket.
            let burst = rate.saturating_mul(BURST_FACTOR);
            Keyed::keyed(Quota::per_second(rate).allow_burst(burst))
        });
        Self {
            limiter,
            calls: Default::default(),
        }
    }

    pub fn allow(&self, key: &str) -> bool {
        let Some(limiter) = &self.limiter else {
            return true;
        };
        let n = self
            .calls
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if n % SWEEP_EVERY == 0 && limiter.len() > MAX_KEYS {
            // Bounded memory: forget idle buckets.
            limiter.retain_recent();
            limiter.shrink_to_fit();
        }
        limiter.check_key(&key.to_owned()).is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_limiter_limits_per_key() {
        let l = RateLimiter::new(5);
        let allowed = (0..50).filter(|_| l.allow("a")).count();
        assert!(
            (10..=11).contains(&allowed),
            "burst of 2x rate, got {allowed}"
        );
        assert!(l.allow("b"), "another environment has its own bucket");
        assert!(RateLimiter::new(0).allow("a"));
    }
}
