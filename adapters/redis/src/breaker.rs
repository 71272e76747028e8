//! What the limiter and the cache share: how they connect, and when they
//! stop waiting for Redis and when they try it again.

use std::time::{Duration, Instant};

use parking_lot::Mutex;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};

/// Whether a component is using Redis.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Health {
    /// Requests go to Redis.
    Up,
    /// Redis did not answer; requests use the local fallback.
    Degraded {
        /// Why.
        error: String,
    },
}

/// A lazy connection that reconnects with backoff (at most 2 s apart): Redis
/// may be down when a node starts.
pub(crate) fn connect(url: &str, timeout: Duration) -> Result<ConnectionManager, redis::RedisError> {
    let client = redis::Client::open(url)?;
    let config = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(timeout.max(Duration::from_millis(10))))
        .set_response_timeout(Some(timeout))
        .set_number_of_retries(2)
        .set_max_delay(Duration::from_secs(2));
    ConnectionManager::new_lazy_with_config(client, config)
}

#[derive(Debug)]
struct State {
    health: Health,
    last_try: Option<Instant>,
}

/// Up, or degraded and trying Redis again every `retry_every`.
#[derive(Debug)]
pub(crate) struct Breaker {
    what: &'static str,
    retry_every: Duration,
    state: Mutex<State>,
}

impl Breaker {
    pub(crate) fn new(what: &'static str, retry_every: Duration) -> Self {
        Breaker { what, retry_every, state: Mutex::new(State { health: Health::Up, last_try: None }) }
    }

    pub(crate) fn health(&self) -> Health {
        self.state.lock().health.clone()
    }

    /// Whether to try Redis now: always while up; once per `retry_every`
    /// while degraded.
    pub(crate) fn should_try(&self) -> bool {
        let mut s = self.state.lock();
        match s.health {
            Health::Up => true,
            Health::Degraded { .. } => {
                let due = s.last_try.is_none_or(|t| t.elapsed() >= self.retry_every);
                if due {
                    s.last_try = Some(Instant::now());
                }
                due
            }
        }
    }

    /// Redis answered; returns true if it had been degraded.
    pub(crate) fn succeeded(&self) -> bool {
        let mut s = self.state.lock();
        if s.health == Health::Up {
            return false;
        }
        tracing::info!(component = self.what, "redis is back");
        s.health = Health::Up;
        true
    }

    pub(crate) fn failed(&self, error: String) {
        let mut s = self.state.lock();
        if s.health == Health::Up {
            tracing::warn!(component = self.what, %error, "redis unavailable: using the local fallback");
        }
        s.health = Health::Degraded { error };
        s.last_try = Some(Instant::now());
    }
}

/// Runs a Redis call with a deadline, as a string error on failure.
pub(crate) async fn within<T>(
    timeout: Duration,
    call: impl std::future::Future<Output = redis::RedisResult<T>>,
) -> Result<T, String> {
    match tokio::time::timeout(timeout, call).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("no answer within {timeout:?}")),
    }
}
