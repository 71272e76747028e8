//! Rate limits: GCRA (the generic cell rate algorithm) per key, and the
//! global limiter trait that protects downstream services.
//!
//! GCRA keeps one number per key, the theoretical arrival time (TAT) of the
//! next request: a request is allowed when it does not arrive earlier than
//! `TAT - burst tolerance`, and each allowed request pushes TAT one emission
//! interval further. Over any span of time `L` a key gets at most
//! `burst + L / interval` requests through.

use std::hash::Hash;
use std::time::Duration;

use async_trait::async_trait;
use hashbrown::HashMap;
use room_core::Timestamp;

/// A rate: `count` per `period`, with bursts of up to `burst` at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quota {
    emission_micros: u64,
    burst: u32,
}

/// Why a quota cannot be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum QuotaError {
    /// A count of zero.
    #[error("a quota needs a count of at least 1")]
    ZeroCount,
    /// A burst of zero.
    #[error("a quota needs a burst of at least 1")]
    ZeroBurst,
    /// A period so short that one request would take under a microsecond.
    #[error("{count} per {period:?} is finer than one request per microsecond")]
    TooFine {
        /// The count.
        count: u32,
        /// The period.
        period: Duration,
    },
}

impl Quota {
    /// `count` requests per `period`, burst 1.
    pub fn new(count: u32, period: Duration) -> Result<Self, QuotaError> {
        if count == 0 {
            return Err(QuotaError::ZeroCount);
        }
        let micros = u64::try_from(period.as_micros()).unwrap_or(u64::MAX);
        let emission_micros = micros / u64::from(count);
        if emission_micros == 0 {
            return Err(QuotaError::TooFine { count, period });
        }
        Ok(Quota { emission_micros, burst: 1 })
    }

    /// `count` per second, burst 1.
    pub fn per_second(count: u32) -> Result<Self, QuotaError> {
        Self::new(count, Duration::from_secs(1))
    }

    /// The same rate with bursts of up to `burst` requests.
    pub fn with_burst(self, burst: u32) -> Result<Self, QuotaError> {
        if burst == 0 {
            return Err(QuotaError::ZeroBurst);
        }
        Ok(Quota { burst, ..self })
    }

    /// Time between requests at the sustained rate.
    pub fn interval(self) -> Duration {
        Duration::from_micros(self.emission_micros)
    }

    /// The largest burst.
    pub fn burst(self) -> u32 {
        self.burst
    }

    fn tolerance(self) -> u64 {
        self.emission_micros.saturating_mul(u64::from(self.burst - 1))
    }

    /// One GCRA step on `tat` (0 for a key never seen): the new TAT if
    /// `cost` requests at `now` are allowed, or how long to wait.
    pub fn step(self, tat: u64, now: Timestamp, cost: u32) -> Result<u64, Duration> {
        let now = now.as_micros();
        let new_tat = tat.max(now).saturating_add(self.emission_micros.saturating_mul(u64::from(cost)));
        let allowance = self.tolerance().saturating_add(self.emission_micros);
        let ahead = new_tat - now;
        if ahead <= allowance { Ok(new_tat) } else { Err(Duration::from_micros(ahead - allowance)) }
    }
}

/// What a limiter said.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Decision {
    /// Go ahead.
    Allowed,
    /// Over the rate: try again after this long.
    Limited {
        /// Time until the request would be allowed.
        retry_after: Duration,
    },
}

/// A limiter that cannot track another key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum LimiterError {
    /// Every slot holds a key that is still being limited: new keys are
    /// refused (fail closed) until one of them goes idle.
    #[error("the limiter tracks {max_keys} active keys and has no room for another")]
    Full {
        /// The configured maximum.
        max_keys: usize,
    },
    /// The limiter's backing service could not answer (Redis down, for
    /// the adapters). Callers choose their fallback; see the adapter.
    #[error("the limiter's backend is unavailable: {0}")]
    Unavailable(String),
}

/// GCRA state for many keys in bounded memory.
///
/// A key whose TAT has passed is the same as a key never seen, so idle keys
/// are dropped when room is needed; if every key is still active the new
/// key is refused ([`LimiterError::Full`]) rather than growing without
/// bound under a storm of distinct senders.
#[derive(Debug)]
pub struct KeyedLimiter<K> {
    tats: HashMap<K, u64, ahash::RandomState>,
    max_keys: usize,
}

impl<K: Hash + Eq> KeyedLimiter<K> {
    /// A limiter for at most `max_keys` active keys (at least 1).
    pub fn new(max_keys: usize) -> Self {
        KeyedLimiter { tats: HashMap::with_hasher(ahash::RandomState::new()), max_keys: max_keys.max(1) }
    }

    /// Checks `cost` requests for `key` at `now` against `quota`; on
    /// [`Decision::Allowed`] they are counted.
    pub fn check(&mut self, key: K, quota: Quota, now: Timestamp, cost: u32) -> Result<Decision, LimiterError> {
        if let Some(tat) = self.tats.get_mut(&key) {
            return Ok(match quota.step(*tat, now, cost) {
                Ok(new_tat) => {
                    *tat = new_tat;
                    Decision::Allowed
                }
                Err(retry_after) => Decision::Limited { retry_after },
            });
        }
        match quota.step(0, now, cost) {
            Ok(new_tat) => {
                if self.tats.len() >= self.max_keys {
                    self.sweep(now);
                    if self.tats.len() >= self.max_keys {
                        return Err(LimiterError::Full { max_keys: self.max_keys });
                    }
                }
                self.tats.insert(key, new_tat);
                Ok(Decision::Allowed)
            }
            Err(retry_after) => Ok(Decision::Limited { retry_after }),
        }
    }

    /// Drops every key whose TAT has passed (they are as good as new),
    /// and gives back memory a storm of keys left unused.
    pub fn sweep(&mut self, now: Timestamp) {
        let now = now.as_micros();
        self.tats.retain(|_, tat| *tat > now);
        if self.tats.capacity() > 64 && self.tats.len() < self.tats.capacity() / 4 {
            self.tats.shrink_to(self.tats.len() * 2);
        }
    }

    /// Forgets `key` (a member left).
    pub fn forget(&mut self, key: &K) {
        self.tats.remove(key);
    }

    /// Keys tracked.
    pub fn len(&self) -> usize {
        self.tats.len()
    }

    /// Whether no key is tracked.
    pub fn is_empty(&self) -> bool {
        self.tats.is_empty()
    }
}

/// A limiter shared by every node of a platform, protecting a downstream
/// service (the message store, a moderation API) from the sum of all
/// classes. Async and object-safe so hosts can plug in a remote one (the
/// Redis adapter); [`LocalGlobalLimiter`] is the in-memory one.
#[async_trait]
pub trait GlobalLimiter: Send + Sync {
    /// Checks `cost` requests for `key` at `now` against `quota`, counting
    /// them when allowed.
    async fn check(&self, key: &str, quota: Quota, now: Timestamp, cost: u32) -> Result<Decision, LimiterError>;
}

/// The in-memory [`GlobalLimiter`]: one process's view, for single-node
/// deployments, tests and as the fallback when a remote limiter is down.
#[derive(Debug)]
pub struct LocalGlobalLimiter {
    inner: parking_lot::Mutex<KeyedLimiter<String>>,
}

impl LocalGlobalLimiter {
    /// A limiter for at most `max_keys` active keys.
    pub fn new(max_keys: usize) -> Self {
        LocalGlobalLimiter { inner: parking_lot::Mutex::new(KeyedLimiter::new(max_keys)) }
    }

    /// The synchronous check behind the trait.
    pub fn check_now(&self, key: &str, quota: Quota, now: Timestamp, cost: u32) -> Result<Decision, LimiterError> {
        let mut inner = self.inner.lock();
        if let Some(tat) = inner.tats.get_mut(key) {
            return Ok(match quota.step(*tat, now, cost) {
                Ok(t) => {
                    *tat = t;
                    Decision::Allowed
                }
                Err(retry_after) => Decision::Limited { retry_after },
            });
        }
        inner.check(key.to_owned(), quota, now, cost)
    }
}

#[async_trait]
impl GlobalLimiter for LocalGlobalLimiter {
    async fn check(&self, key: &str, quota: Quota, now: Timestamp, cost: u32) -> Result<Decision, LimiterError> {
        self.check_now(key, quota, now, cost)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A storm of distinct keys leaves nothing once its keys are idle: a
    /// sweep drops them and gives their memory back.
    #[test]
    fn a_sweep_after_a_storm_of_keys_gives_memory_back() {
        let mut limiter = KeyedLimiter::new(1 << 20);
        let quota = Quota::per_second(5).expect("a quota");
        let t0 = Timestamp::from_millis(1_000);
        for key in 0..100_000u64 {
            assert_eq!(limiter.check(key, quota, t0, 1), Ok(Decision::Allowed));
        }
        let peak = limiter.tats.capacity();
        limiter.sweep(t0);
        assert_eq!(limiter.len(), 100_000, "still active: kept");
        limiter.sweep(t0.saturating_add(Duration::from_secs(1)));
        assert!(limiter.is_empty());
        assert!(limiter.tats.capacity() < peak / 100, "{} of {peak} slots kept", limiter.tats.capacity());
        // Their budgets are as good as new.
        assert_eq!(limiter.check(7, quota, t0.saturating_add(Duration::from_secs(1)), 1), Ok(Decision::Allowed));
    }
}
