#![doc = include_str!("../README.md")]
//!
//! ---
//!
//! Roomkit's Redis adapter.
//!
//! [`RedisLimiter`] is a [`GlobalLimiter`](room_push::GlobalLimiter) shared by every node of a
//! platform: GCRA in one Lua script, so a check is one round trip and
//! atomic (never an INCR and a separate EXPIRE, which leaves keys that never
//! expire: the script sets the key with its expiry in the same write). The
//! clock is Redis's own (`TIME`), so nodes with skewed clocks agree.
//!
//! When Redis cannot answer in time, the limiter falls back to a local
//! limiter that grants this node its share of the quota
//! (`quota / expected_nodes`), reports [`Health::Degraded`], and keeps
//! trying Redis (the connection reconnects with backoff): a class is never
//! stuck waiting for Redis.
//!
//! [`RedisCache`] is a [`SharedCache`](room_push::SharedCache) on Redis
//! Streams: one stream per room, entry ids `<epoch>-<seq>`, bounded in
//! length (`MAXLEN`) and age (entries older than the window are not
//! answered, and an idle room's stream expires), written and trimmed in one
//! script. While Redis is down, it keeps the room's envelopes in a bounded
//! local cache, writes them back before the room's next envelope once
//! Redis answers, and merges both when asked for a range.
//!
//! Beside each room's stream, a hash (`<prefix><bid>:<room>:state`: field
//! `v` the version, `s` the state) holds the room owner's state, saved by
//! compare-and-set on the version in one script and expiring with the
//! stream. While Redis is down, a save is held by the local fallback
//! ([`Saved::Local`](room_push::Saved::Local)) and answers this process's
//! loads; the room's next save that reaches Redis supersedes it there.
#![forbid(unsafe_code)]

mod breaker;
mod cache;
mod limiter;

pub use breaker::Health;
pub use cache::{RedisCache, RedisCacheConfig, RedisCacheError};
pub use limiter::{RedisLimiter, RedisLimiterConfig, RedisLimiterError};

/// The decoders of what the store holds, for the fuzz targets (`fuzz/`).
/// Not a stable API.
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing {
    /// A stored state version, or garbage.
    pub fn parse_version(raw: &[u8]) -> Result<u64, room_push::SharedCacheError> {
        crate::cache::parse_version(raw)
    }
    /// A stream entry id as `(epoch, seq)`.
    pub fn parse_id(id: &str) -> Option<(u64, u64)> {
        crate::cache::parse_id(id)
    }
    /// The stream entry id of `(epoch, seq)`.
    pub fn entry_id(epoch: u64, seq: u64) -> String {
        crate::cache::entry_id(epoch, seq)
    }
}
