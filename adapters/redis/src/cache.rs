//! The shared recovery cache on Redis Streams.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use parking_lot::Mutex;
use redis::aio::ConnectionManager;
use redis::{ErrorKind, RedisError};
use room_core::RoomKey;
use room_push::{Appended, Envelope, InMemorySharedCache, Saved, SharedCache, SharedCacheError, shared_cache};

use crate::breaker::{Breaker, Health, connect, within};

/// Appends entries in order. KEYS[1]: the room's stream, KEYS[2]: its
/// state hash. ARGV: max length, max age (ms), the number W of write-back
/// entries, then (id, envelope) pairs: W written back (an id at or below
/// the stream's newest is a retry, skipped), then a batch numbered in a
/// row, whose first entry decides for all (at or below the newest: none is
/// added, another writer took the number). Returns {how many were added,
/// whether the batch was}. Length and expiry are set in the same script,
/// so no stream outlives its window; the room's state lives as long as its
/// log.
const APPEND: &str = r"
local t = redis.call('TIME')
local now = string.format('%d', tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000))
local wb = tonumber(ARGV[3])
local added, batch = 0, 0
local pair = 0
for i = 4, #ARGV, 2 do
  local r = redis.pcall('XADD', KEYS[1], 'MAXLEN', ARGV[1], ARGV[i], 't', now, 'd', ARGV[i + 1])
  local refused = type(r) == 'table' and r.err
  if refused and not string.find(r.err, 'equal or smaller', 1, true) then
    return redis.error_reply(r.err)
  end
  if pair >= wb then
    if refused then
      batch = 0
      break
    end
    batch = 1
  end
  if not refused then
    added = added + 1
  end
  pair = pair + 1
end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
redis.call('PEXPIRE', KEYS[2], ARGV[2])
return {added, batch}
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

/// Saves a room's state if the stored version is at most `after`.
/// KEYS[1]: the room's state hash (`v` version, `s` state), KEYS[2]: its
/// stream. ARGV: after, the new version (after + 1), the state, max age
/// (ms). Versions are compared as decimal strings, since Lua's numbers
/// are doubles and lose u64s above 2^53. Returns {1, new version} or
/// {0, stored version}; a stored version that is not a number is an
/// error reply coded ROOMKIT_STATE.
const SAVE_STATE: &str = r"
local v = redis.call('HGET', KEYS[1], 'v')
if v then
  if not string.match(v, '^%d+$') then
    return redis.error_reply('ROOMKIT_STATE the stored state version is not a number')
  end
  v = string.gsub(v, '^0+(%d)', '%1')
  local after = ARGV[1]
  if #v > #after or (#v == #after and v > after) then
    return {0, v}
  end
end
redis.call('HSET', KEYS[1], 'v', ARGV[2], 's', ARGV[3])
redis.call('PEXPIRE', KEYS[1], ARGV[4])
redis.call('PEXPIRE', KEYS[2], ARGV[4])
return {1, ARGV[2]}
";

/// Error codes by which Redis answers that a room's keys hold garbage:
/// [`SAVE_STATE`]'s own, and a key of another type.
const GARBAGE_CODES: [&str; 2] = ["ROOMKIT_STATE", "WRONGTYPE"];

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
    /// Rooms the local fallback holds (`max_len` envelopes and a state
    /// each).
    pub local_rooms: usize,
    /// The largest room state saved, in bytes.
    pub max_state: usize,
}

impl RedisCacheConfig {
    /// Defaults for `url`: 1,024 envelopes and 5 minutes per room, states
    /// of at most 4 MiB.
    pub fn new(url: impl Into<String>) -> Self {
        RedisCacheConfig {
            url: url.into(),
            prefix: "roomkit:cache:".into(),
            max_len: 1024,
            max_age: Duration::from_secs(300),
            timeout: Duration::from_millis(250),
            retry_every: Duration::from_millis(500),
            local_rooms: 10_000,
            max_state: InMemorySharedCache::DEFAULT_MAX_STATE,
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
    save_state: Arc<redis::Script>,
    breaker: Arc<Breaker>,
    local: InMemorySharedCache,
    /// Rooms with envelopes held only locally, to write back.
    unsynced: Arc<Mutex<BTreeSet<RoomKey>>>,
    /// Rooms whose state was saved only locally: the local copy is newer
    /// than Redis's until the room's next save reaches Redis.
    unsynced_states: Arc<Mutex<BTreeSet<RoomKey>>>,
}

/// Why a call to Redis gave no usable answer.
enum Failure {
    /// Redis did not answer (in time): the local fallback answers.
    Unreachable(String),
    /// Redis answered, but what it holds for the room is garbage.
    Garbage(String),
}

/// Runs a Redis call with a deadline, telling an unreachable Redis from
/// garbage in the keys it answers about.
async fn call<T>(
    timeout: Duration,
    call: impl std::future::Future<Output = redis::RedisResult<T>>,
) -> Result<T, Failure> {
    match tokio::time::timeout(timeout, call).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) if is_garbage(&e) => Err(Failure::Garbage(e.to_string())),
        Ok(Err(e)) => Err(Failure::Unreachable(e.to_string())),
        Err(_) => Err(Failure::Unreachable(format!("no answer within {timeout:?}"))),
    }
}

fn is_garbage(e: &RedisError) -> bool {
    matches!(e.kind(), ErrorKind::UnexpectedReturnType | ErrorKind::Parse)
        || (e.kind() == ErrorKind::Extension && e.code().is_some_and(|c| GARBAGE_CODES.contains(&c)))
}

/// A stored version, or garbage.
pub(crate) fn parse_version(raw: &[u8]) -> Result<u64, SharedCacheError> {
    std::str::from_utf8(raw)
        .ok()
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| SharedCacheError::BadState(format!("state version {:?}", String::from_utf8_lossy(raw))))
}

impl std::fmt::Debug for RedisCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisCache").field("url", &self.config.url).field("health", &self.health()).finish()
    }
}

/// The stream id of an envelope.
pub(crate) fn entry_id(epoch: u64, seq: u64) -> String {
    format!("{epoch}-{seq}")
}

pub(crate) fn parse_id(id: &str) -> Option<(u64, u64)> {
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
            local: InMemorySharedCache::new(config.max_len, config.local_rooms).with_max_state(config.max_state),
            breaker: Arc::new(Breaker::new("cache", config.retry_every)),
            config: Arc::new(config),
            conn,
            append: Arc::new(redis::Script::new(APPEND)),
            range: Arc::new(redis::Script::new(RANGE)),
            head: Arc::new(redis::Script::new(HEAD)),
            save_state: Arc::new(redis::Script::new(SAVE_STATE)),
            unsynced: Arc::default(),
            unsynced_states: Arc::default(),
        })
    }

    /// Whether the cache is using Redis.
    pub fn health(&self) -> Health {
        self.breaker.health()
    }

    fn key(&self, room: RoomKey) -> String {
        format!("{}{}:{}", self.config.prefix, room.bid.0, room.room.0)
    }

    /// The room's state hash, beside its stream.
    fn state_key(&self, room: RoomKey) -> String {
        format!("{}{}:{}:state", self.config.prefix, room.bid.0, room.room.0)
    }

    /// Writes back `held` (what the fallback kept, retries skipped), then
    /// `batch` as one write to the room's stream; returns whether the batch
    /// was taken.
    async fn remote_append(&self, room: RoomKey, held: &[Envelope], batch: &[Envelope]) -> Result<bool, String> {
        let mut invocation = self.append.key(self.key(room));
        invocation
            .key(self.state_key(room))
            .arg(self.config.max_len)
            .arg(self.config.max_age.as_millis() as u64)
            .arg(held.len());
        for e in held.iter().chain(batch) {
            invocation.arg(entry_id(e.epoch, e.seq)).arg(e.encode().as_ref());
        }
        let mut conn = self.conn.clone();
        let (_added, taken): (u64, u64) = within(self.config.timeout, invocation.invoke_async(&mut conn)).await?;
        Ok(taken == 1)
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

    async fn remote_load_state(&self, room: RoomKey) -> Result<Option<(u64, Bytes)>, Failure> {
        let mut conn = self.conn.clone();
        let mut cmd = redis::cmd("HMGET");
        cmd.arg(self.state_key(room)).arg("v").arg("s");
        let (v, s): (Option<Vec<u8>>, Option<Vec<u8>>) = call(self.config.timeout, cmd.query_async(&mut conn)).await?;
        match (v, s) {
            (None, None) => Ok(None),
            (Some(v), Some(s)) => match parse_version(&v) {
                Ok(v) => Ok(Some((v, Bytes::from(s)))),
                Err(e) => Err(Failure::Garbage(e.to_string())),
            },
            (Some(_), None) => Err(Failure::Garbage("a state version without a state".into())),
            (None, Some(_)) => Err(Failure::Garbage("a state without a version".into())),
        }
    }

    /// Compare-and-set in one script: `Ok(Ok(version))` if saved,
    /// `Ok(Err(stored))` if the stored version is beyond `after`.
    async fn remote_save_state(
        &self,
        room: RoomKey,
        after: u64,
        version: u64,
        state: &Bytes,
    ) -> Result<Result<u64, u64>, Failure> {
        let mut invocation = self.save_state.key(self.state_key(room));
        invocation
            .key(self.key(room))
            .arg(after.to_string())
            .arg(version.to_string())
            .arg(state.as_ref())
            .arg(self.config.max_age.as_millis() as u64);
        let mut conn = self.conn.clone();
        let (saved, v): (u8, Vec<u8>) = call(self.config.timeout, invocation.invoke_async(&mut conn)).await?;
        let v = parse_version(&v).map_err(|e| Failure::Garbage(e.to_string()))?;
        Ok(if saved == 1 { Ok(v) } else { Err(v) })
    }

    /// Keeps a state in the local fallback while Redis is unreachable.
    fn save_state_locally(&self, room: RoomKey, after: u64, state: Bytes) -> Result<Saved, SharedCacheError> {
        #[cfg(feature = "metrics")]
        metrics::counter!("roomkit_redis_cache_state_fallbacks_total").increment(1);
        let version = match self.local.save_state_now(room, after, state)? {
            Saved::Stored { version } => version,
            other => return Ok(other),
        };
        let crowded = {
            let mut unsynced = self.unsynced_states.lock();
            unsynced.insert(room);
            unsynced.len() > self.config.local_rooms
        };
        if crowded {
            // The local cache dropped its least recently written rooms:
            // stop tracking their states too.
            self.unsynced_states.lock().retain(|r| self.local.load_state_now(*r).is_some());
        }
        Ok(Saved::Local { version })
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
        self.append_batch(std::slice::from_ref(envelope)).await
    }

    /// [`append`](Self::append) for a batch numbered in a row, as one
    /// script: the first envelope decides for all.
    async fn append_batch(&self, envelopes: &[Envelope]) -> Result<Appended, SharedCacheError> {
        shared_cache::check_batch(envelopes)?;
        let Some(first) = envelopes.first() else { return Ok(Appended::Stored) };
        let room = first.message.room;
        if self.breaker.should_try() {
            let mut held = self.unsynced_of(room).await;
            held.retain(|e| (e.epoch, e.seq) < (first.epoch, first.seq));
            match self.remote_append(room, &held, envelopes).await {
                Ok(taken) => {
                    self.breaker.succeeded();
                    if !held.is_empty() {
                        tracing::info!(%room, written_back = held.len(), "wrote back envelopes held while redis was down");
                        self.unsynced.lock().remove(&room);
                    }
                    #[cfg(feature = "metrics")]
                    metrics::counter!("roomkit_redis_cache_appends_total").increment(1);
                    return Ok(if taken { Appended::Stored } else { Appended::Duplicate });
                }
                Err(error) => self.breaker.failed(error),
            }
        }
        #[cfg(feature = "metrics")]
        metrics::counter!("roomkit_redis_cache_fallbacks_total").increment(1);
        // Held here until Redis is back (a retry of what is held already
        // changes nothing): only this process writes the room meanwhile.
        self.local.append_batch_now(envelopes)?;
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
    /// run. With Redis unreachable, what the fallback holds answers; if it
    /// holds nothing there, [`SharedCacheError::Unavailable`] (not "none
    /// held": a client would be reset for it).
    async fn range(&self, room: RoomKey, epoch: u64, after: u64, upto: u64) -> Result<Vec<Envelope>, SharedCacheError> {
        shared_cache::check_range(after, upto)?;
        let mut found = self.local.range(room, epoch, after, upto).await?;
        let mut unreachable = Some("redis is unavailable (retrying)".to_owned());
        if self.breaker.should_try() {
            match self.remote_range(room, epoch, after, upto).await {
                Ok(remote) => {
                    self.breaker.succeeded();
                    found.extend(remote);
                    unreachable = None;
                }
                Err(error) => {
                    unreachable = Some(error.clone());
                    self.breaker.failed(error);
                }
            }
        }
        match unreachable {
            Some(error) if found.is_empty() => Err(SharedCacheError::Unavailable(error)),
            _ => Ok(shared_cache::contiguous_run(found, after)),
        }
    }

    /// Redis's head merged with what the fallback holds. With Redis
    /// unreachable, only a head held here answers; with none, the answer is
    /// [`SharedCacheError::Unavailable`], not "empty": a room's next owner
    /// must not take a cache it could not ask for one that holds nothing
    /// (it would restart the room's sequence).
    async fn head(&self, room: RoomKey) -> Result<Option<(u64, u64)>, SharedCacheError> {
        let local = self.local.head(room).await?;
        let mut error = "redis is unavailable (retrying)".to_owned();
        if self.breaker.should_try() {
            match self.remote_head(room).await {
                Ok(remote) => {
                    self.breaker.succeeded();
                    return Ok(remote.max(local));
                }
                Err(e) => {
                    error = e.clone();
                    self.breaker.failed(e);
                }
            }
        }
        match local {
            Some(head) => Ok(Some(head)),
            None => Err(SharedCacheError::Unavailable(error)),
        }
    }

    /// Redis's state, unless this process holds a newer one saved while
    /// Redis was unreachable. With Redis unreachable, only such a local
    /// state answers: any other copy here could be older than Redis's.
    async fn load_state(&self, room: RoomKey) -> Result<Option<(u64, Bytes)>, SharedCacheError> {
        let local = if self.unsynced_states.lock().contains(&room) { self.local.load_state_now(room) } else { None };
        let mut error = "redis is unavailable (retrying)".to_owned();
        if self.breaker.should_try() {
            match self.remote_load_state(room).await {
                Ok(remote) => {
                    self.breaker.succeeded();
                    return Ok(match (remote, local) {
                        (Some(r), Some(l)) if l.0 > r.0 => Some(l),
                        (None, l) => l,
                        (r, _) => r,
                    });
                }
                Err(Failure::Garbage(e)) => {
                    self.breaker.succeeded();
                    return Err(SharedCacheError::BadState(e));
                }
                Err(Failure::Unreachable(e)) => {
                    error.clone_from(&e);
                    self.breaker.failed(e);
                }
            }
        }
        match local {
            Some(l) => Ok(Some(l)),
            None => Err(SharedCacheError::Unavailable(error)),
        }
    }

    /// Compare-and-set in one script on the room's hash, which expires
    /// with the room's stream. If Redis does not answer in time, the state
    /// is held locally ([`Saved::Local`]); the room's next save that
    /// reaches Redis supersedes it there.
    async fn save_state(&self, room: RoomKey, after: u64, state: Bytes) -> Result<Saved, SharedCacheError> {
        if state.len() > self.config.max_state {
            return Err(SharedCacheError::StateTooLarge { size: state.len(), max: self.config.max_state });
        }
        let version = after.checked_add(1).ok_or(SharedCacheError::BadVersion { after })?;
        if self.breaker.should_try() {
            match self.remote_save_state(room, after, version, &state).await {
                Ok(answer) => {
                    self.breaker.succeeded();
                    return Ok(match answer {
                        Ok(version) => {
                            if self.unsynced_states.lock().remove(&room) {
                                tracing::info!(%room, version, "a room state held while redis was down is superseded there");
                                self.local.drop_state_now(room);
                            }
                            Saved::Stored { version }
                        }
                        Err(stored) => Saved::Conflict { version: stored },
                    });
                }
                Err(Failure::Garbage(e)) => {
                    self.breaker.succeeded();
                    return Err(SharedCacheError::BadState(e));
                }
                Err(Failure::Unreachable(e)) => self.breaker.failed(e),
            }
        }
        self.save_state_locally(room, after, state)
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
