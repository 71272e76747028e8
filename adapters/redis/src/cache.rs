//! The shared recovery cache on Redis Streams.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use parking_lot::Mutex;
use redis::aio::ConnectionManager;
use room_core::RoomKey;
use room_push::{Appended, Envelope, InMemorySharedCache, SharedCache, SharedCacheError, shared_cache};

use crate::breaker::{Breaker, Health, connect, within};

/// Appends entries in order. KEYS[1]: the room's stream. ARGV: max length,
/// max age (ms), then (id, envelope) pairs. An id at or below the stream's
/// newest is a retry (or a late envelope of an older epoch) and is skipped.
/// Returns {how many were added, whether the last one was}. Length and expiry are set in the same
/// script, so no stream outlives its window.
const APPEND: &str = r"
local t = redis.call('TIME')
local now = string.format('%d', tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000))
local added, last = 0, 0
for i = 3, #ARGV, 2 do
  local r = redis.pcall('XADD', KEYS[1], 'MAXLEN', ARGV[1], ARGV[i], 't', now, 'd', ARGV[i + 1])
  if type(r) == 'table' and r.err then
    if not string.find(r.err, 'equal or smaller', 1, true) then
      return redis.error_reply(r.err)
    end
    last = 0
  else
    added, last = added + 1, 1
  end
end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return {added, last}
";

/// Envelopes with ids in [ARGV[1], ARGV[2]] no older than ARGV[3] ms, by
/// Redis's clock (so nodes with skewed clocks agree on the window).
const RANGE: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local oldest = now - tonumber(ARGV[3])
local out = {}
for _, row in ipairs(redis.call('XRANGE', KEYS[1], ARGV[1], ARGV[2])) do
  local fields = row[2]
  local at, data
  for j = 1, #fields, 2 do
    if fields[j] == 't' then at = tonumber(fields[j + 1]) elseif fields[j] == 'd' then data = fields[j + 1] end
  end
  if at and data and at >= oldest then table.insert(out, data) end
end
return out
";

/// The newest entry id of a stream, or nil.
const HEAD: &str = r"
local r = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', 1)
if #r == 0 then return false end
return r[1][1]
";

/// How the cache talks to Redis and what it keeps.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct RedisCacheConfig {
    /// `redis://host:port/db`.
    pub url: String,
    /// Prefix of every stream key (`<prefix><bid>:<room>`).
    pub prefix: String,
    /// Envelopes kept per room (the stream's `MAXLEN`).
    pub max_len: usize,
    /// How long an envelope is answered for; a room's stream expires this
    /// long after its last append.
    pub max_age: Duration,
    /// How long a call may wait for Redis before the local fallback answers.
    pub timeout: Duration,
    /// While degraded, how often Redis is tried again.
    pub retry_every: Duration,
    /// Rooms the local fallback holds (`max_len` envelopes each).
    pub local_rooms: usize,
}

impl RedisCacheConfig {
    /// Defaults for `url`: 1,024 envelopes and 5 minutes per room.
    pub fn new(url: impl Into<String>) -> Self {
        RedisCacheConfig {
            url: url.into(),
            prefix: "roomkit:cache:".into(),
            max_len: 1024,
            max_age: Duration::from_secs(300),
            timeout: Duration::from_millis(50),
            retry_every: Duration::from_millis(500),
            local_rooms: 10_000,
        }
    }
}

/// Why the cache could not be built.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RedisCacheError {
    /// A URL Redis does not accept.
    #[error("bad Redis URL: {0}")]
    Url(#[from] redis::RedisError),
    /// A setting out of range.
    #[error("invalid cache setting: {0}")]
    Config(&'static str),
}

/// A [`SharedCache`] on Redis Streams with a local fallback. See the
/// [crate docs](crate).
#[derive(Clone)]
pub struct RedisCache {
    config: Arc<RedisCacheConfig>,
    conn: ConnectionManager,
    append: Arc<redis::Script>,
    range: Arc<redis::Script>,
    head: Arc<redis::Script>,
    breaker: Arc<Breaker>,
    local: InMemorySharedCache,
    /// Rooms with envelopes held only locally, to write back.
    unsynced: Arc<Mutex<BTreeSet<RoomKey>>>,
}

impl std::fmt::Debug for RedisCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisCache").field("url", &self.config.url).field("health", &self.health()).finish()
    }
}

/// The stream id of an envelope.
fn entry_id(epoch: u64, seq: u64) -> String {
    format!("{epoch}-{seq}")
}

fn parse_id(id: &str) -> Option<(u64, u64)> {
    let (e, s) = id.split_once('-')?;
    Some((e.parse().ok()?, s.parse().ok()?))
}

impl RedisCache {
    /// A cache for `config`. It connects lazily: Redis may be down at start
    /// (the local fallback answers until it is up). Needs a tokio runtime.
    pub fn new(config: RedisCacheConfig) -> Result<Self, RedisCacheError> {
        if config.max_len == 0 {
            return Err(RedisCacheError::Config("max_len must be at least 1"));
        }
        if config.max_age < Duration::from_millis(1) {
            return Err(RedisCacheError::Config("max_age must be at least 1 ms"));
        }
        let conn = connect(&config.url, config.timeout)?;
        Ok(RedisCache {
            local: InMemorySharedCache::new(config.max_len, config.local_rooms),
            breaker: Arc::new(Breaker::new("cache", config.retry_every)),
            config: Arc::new(config),
            conn,
            append: Arc::new(redis::Script::new(APPEND)),
            range: Arc::new(redis::Script::new(RANGE)),
            head: Arc::new(redis::Script::new(HEAD)),
            unsynced: Arc::default(),
        })
    }

    /// Whether the cache is using Redis.
    pub fn health(&self) -> Health {
        self.breaker.health()
    }

    fn key(&self, room: RoomKey) -> String {
        format!("{}{}:{}", self.config.prefix, room.bid.0, room.room.0)
    }

    /// Writes `envelopes` (in order) to the room's stream; returns whether
    /// the last one was new.
    async fn remote_append(&self, room: RoomKey, envelopes: &[Envelope]) -> Result<bool, String> {
        let mut invocation = self.append.key(self.key(room));
        invocation.arg(self.config.max_len).arg(self.config.max_age.as_millis() as u64);
        for e in envelopes {
            invocation.arg(entry_id(e.epoch, e.seq)).arg(e.encode().as_ref());
        }
        let mut conn = self.conn.clone();
        let (_added, last): (u64, u64) = within(self.config.timeout, invocation.invoke_async(&mut conn)).await?;
        Ok(last == 1)
    }

    async fn remote_range(&self, room: RoomKey, epoch: u64, after: u64, upto: u64) -> Result<Vec<Envelope>, String> {
        let mut invocation = self.range.key(self.key(room));
        invocation
            .arg(entry_id(epoch, after + 1))
            .arg(entry_id(epoch, upto))
            .arg(self.config.max_age.as_millis() as u64);
        let mut conn = self.conn.clone();
        let raw: Vec<Vec<u8>> = within(self.config.timeout, invocation.invoke_async(&mut conn)).await?;
        let mut out = Vec::with_capacity(raw.len());
        for bytes in raw {
            match Envelope::decode(&Bytes::from(bytes)) {
                Ok(e) if e.message.room == room && e.epoch == epoch => out.push(e),
                Ok(_) => tracing::warn!(%room, "an envelope of another room or epoch in the room's stream"),
                // Garbage in the stream (written by something else): left
                // out, so the answer ends before it.
                Err(error) => tracing::warn!(%room, %error, "undecodable entry in the room's stream"),
            }
        }
        Ok(out)
    }

    async fn remote_head(&self, room: RoomKey) -> Result<Option<(u64, u64)>, String> {
        let mut conn = self.conn.clone();
        let id: Option<String> =
            within(self.config.timeout, self.head.key(self.key(room)).invoke_async(&mut conn)).await?;
        Ok(id.as_deref().and_then(parse_id))
    }

    /// What the local fallback holds of `room` that Redis has not got yet.
    async fn unsynced_of(&self, room: RoomKey) -> Vec<Envelope> {
        if !self.unsynced.lock().contains(&room) {
            return Vec::new();
        }
        match self.local.head(room).await {
            Ok(Some((epoch, head))) => self.local.range(room, epoch, 0, head).await.unwrap_or_default(),
            _ => Vec::new(),
        }
    }
}

#[async_trait]
impl SharedCache for RedisCache {
    /// Appends to Redis, first writing back what the room's fallback held
    /// while Redis was down. If Redis does not answer in time, the envelope
    /// is held locally ([`Appended::Local`]).
    async fn append(&self, envelope: &Envelope) -> Result<Appended, SharedCacheError> {
        if envelope.seq == 0 {
            return Err(SharedCacheError::NotReliable);
        }
        let room = envelope.message.room;
        if self.breaker.should_try() {
            let mut batch = self.unsynced_of(room).await;
            batch.retain(|e| (e.epoch, e.seq) < (envelope.epoch, envelope.seq));
            let written_back = batch.len();
            batch.push(envelope.clone());
            match self.remote_append(room, &batch).await {
                Ok(last_was_new) => {
                    self.breaker.succeeded();
                    if written_back > 0 {
                        tracing::info!(%room, written_back, "wrote back envelopes held while redis was down");
                        self.unsynced.lock().remove(&room);
                    }
                    #[cfg(feature = "metrics")]
                    metrics::counter!("roomkit_redis_cache_appends_total").increment(1);
                    return Ok(if last_was_new { Appended::Stored } else { Appended::Duplicate });
                }
                Err(error) => self.breaker.failed(error),
            }
        }
        #[cfg(feature = "metrics")]
        metrics::counter!("roomkit_redis_cache_fallbacks_total").increment(1);
        self.local.append_now(envelope)?;
        let crowded = {
            let mut unsynced = self.unsynced.lock();
            unsynced.insert(room);
            unsynced.len() > self.config.local_rooms
        };
        if crowded {
            // The local cache dropped its least recently written rooms: stop
            // tracking them too, so a long outage over many rooms stays
            // bounded.
            let tracked: Vec<RoomKey> = self.unsynced.lock().iter().copied().collect();
            let mut gone = Vec::new();
            for r in tracked {
                if matches!(self.local.head(r).await, Ok(None)) {
                    gone.push(r);
                }
            }
            let mut unsynced = self.unsynced.lock();
            for r in gone {
                unsynced.remove(&r);
            }
        }
        Ok(Appended::Local)
    }

    /// Redis's answer merged with the local fallback's, as one contiguous
    /// run.
    async fn range(&self, room: RoomKey, epoch: u64, after: u64, upto: u64) -> Result<Vec<Envelope>, SharedCacheError> {
        shared_cache::check_range(after, upto)?;
        let mut found = self.local.range(room, epoch, after, upto).await?;
        if self.breaker.should_try() {
            match self.remote_range(room, epoch, after, upto).await {
                Ok(remote) => {
                    self.breaker.succeeded();
                    found.extend(remote);
                }
                Err(error) => self.breaker.failed(error),
            }
        }
        Ok(shared_cache::contiguous_run(found, after))
    }

    async fn head(&self, room: RoomKey) -> Result<Option<(u64, u64)>, SharedCacheError> {
        let local = self.local.head(room).await?;
        if self.breaker.should_try() {
            match self.remote_head(room).await {
                Ok(remote) => {
                    self.breaker.succeeded();
                    return Ok(remote.max(local));
                }
                Err(error) => self.breaker.failed(error),
            }
        }
        Ok(local)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_round_trip() {
        assert_eq!(parse_id(&entry_id(1_732_000_000_000_000, 42)), Some((1_732_000_000_000_000, 42)));
        assert_eq!(parse_id("garbage"), None);
        assert_eq!(parse_id("1-x"), None);
    }
}
