//! The global rate limiter: GCRA in one Lua script.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use redis::aio::ConnectionManager;
use room_core::Timestamp;
use room_push::{Decision, GlobalLimiter, LimiterError, LocalGlobalLimiter, Quota};

use crate::breaker::{Breaker, Health, connect, within};

/// GCRA with Redis's clock. KEYS[1]: the key. ARGV: emission interval (us),
/// burst tolerance (us), cost. Returns {1, 0} when allowed, {0, wait_us}
/// when not. The key is written with its expiry in the same SET.
const GCRA: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local emission = tonumber(ARGV[1])
local tolerance = tonumber(ARGV[2])
local cost = tonumber(ARGV[3])
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then tat = now end
local new_tat = tat + emission * cost
local ahead = new_tat - now
if ahead > tolerance + emission then
  return {0, ahead - tolerance - emission}
end
redis.call('SET', KEYS[1], new_tat, 'PX', math.floor(ahead / 1000) + 1)
return {1, 0}
";

/// How the limiter talks to Redis and falls back.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct RedisLimiterConfig {
    /// `redis://host:port/db`.
    pub url: String,
    /// Prefix of every key the limiter writes.
    pub prefix: String,
    /// How long a check may wait for Redis before falling back.
    pub timeout: Duration,
    /// Nodes sharing the quota: the fallback grants this node `1 /
    /// expected_nodes` of it.
    pub expected_nodes: u32,
    /// Keys the local fallback tracks.
    pub fallback_keys: usize,
    /// While degraded, how often a check tries Redis again.
    pub retry_every: Duration,
}

impl RedisLimiterConfig {
    /// Defaults for `url`.
    pub fn new(url: impl Into<String>) -> Self {
        RedisLimiterConfig {
            url: url.into(),
            prefix: "roomkit:limit:".into(),
            timeout: Duration::from_millis(50),
            expected_nodes: 1,
            fallback_keys: 100_000,
            retry_every: Duration::from_millis(500),
        }
    }
}

/// Why the limiter could not be built.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RedisLimiterError {
    /// A URL Redis does not accept.
    #[error("bad Redis URL: {0}")]
    Url(#[from] redis::RedisError),
}

/// A global GCRA limiter in Redis, with a local fallback.
#[derive(Clone)]
pub struct RedisLimiter {
    config: Arc<RedisLimiterConfig>,
    conn: ConnectionManager,
    script: Arc<redis::Script>,
    fallback: Arc<LocalGlobalLimiter>,
    breaker: Arc<Breaker>,
}

impl std::fmt::Debug for RedisLimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisLimiter").field("url", &self.config.url).field("health", &self.health()).finish()
    }
}

impl RedisLimiter {
    /// A limiter for `config`. It connects lazily: Redis may be down at
    /// start (checks then use the fallback until it is up). Needs a tokio
    /// runtime.
    pub fn new(config: RedisLimiterConfig) -> Result<Self, RedisLimiterError> {
        let conn = connect(&config.url, config.timeout)?;
        Ok(RedisLimiter {
            fallback: Arc::new(LocalGlobalLimiter::new(config.fallback_keys)),
            breaker: Arc::new(Breaker::new("limiter", config.retry_every)),
            config: Arc::new(config),
            conn,
            script: Arc::new(redis::Script::new(GCRA)),
        })
    }

    /// Whether checks are going to Redis.
    pub fn health(&self) -> Health {
        self.breaker.health()
    }

    fn local_share(&self, quota: Quota) -> Quota {
        // A node's share: the same burst and a rate divided among nodes.
        let nodes = self.config.expected_nodes.max(1);
        let interval = quota.interval().saturating_mul(nodes);
        Quota::new(1, interval).and_then(|q| q.with_burst(quota.burst())).unwrap_or(quota)
    }

    async fn remote(&self, key: &str, quota: Quota, cost: u32) -> Result<Decision, String> {
        let mut conn = self.conn.clone();
        let emission = quota.interval().as_micros() as u64;
        let tolerance = emission.saturating_mul(u64::from(quota.burst().saturating_sub(1)));
        let mut invocation = self.script.key(format!("{}{}", self.config.prefix, key));
        invocation.arg(emission).arg(tolerance).arg(cost);
        match within(self.config.timeout, invocation.invoke_async::<(i64, i64)>(&mut conn)).await? {
            (1, _) => Ok(Decision::Allowed),
            (_, wait) => Ok(Decision::Limited { retry_after: Duration::from_micros(wait.max(0) as u64) }),
        }
    }
}

#[async_trait]
impl GlobalLimiter for RedisLimiter {
    /// `now` is used only by the fallback: Redis's clock decides otherwise.
    async fn check(&self, key: &str, quota: Quota, now: Timestamp, cost: u32) -> Result<Decision, LimiterError> {
        if self.breaker.should_try() {
            match self.remote(key, quota, cost).await {
                Ok(decision) => {
                    self.breaker.succeeded();
                    #[cfg(feature = "metrics")]
                    metrics::counter!("roomkit_redis_limiter_checks_total").increment(1);
                    return Ok(decision);
                }
                Err(error) => self.breaker.failed(error),
            }
        }
        #[cfg(feature = "metrics")]
        metrics::counter!("roomkit_redis_limiter_fallbacks_total").increment(1);
        self.fallback.check_now(key, self.local_share(quota), now, cost)
    }
}
