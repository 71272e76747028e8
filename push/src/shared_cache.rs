//! A recovery cache shared by the nodes of a cluster.
//!
//! Each push node keeps its own [`ReliableCache`](crate::node) of recent
//! reliable messages, which answers its clients' checks. A shared cache is
//! written by the room's gate and read by the push nodes: when the bus
//! loses envelopes, a node refills the gap from it instead of resetting
//! every client of the room, and a gate that restarts continues the room's
//! sequence from its head instead of opening a new epoch.
//!
//! [`InMemorySharedCache`] is the single-process version (tests, and a
//! cluster simulated in one process); `room-redis` has one on Redis
//! Streams.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

use async_trait::async_trait;
use room_core::RoomKey;

use crate::envelope::{DecodeError, Envelope};

/// Why a shared cache could not store or answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SharedCacheError {
    /// Only reliable envelopes (numbered, `seq > 0`) are cached.
    #[error("only reliable envelopes are cached (this one has seq 0)")]
    NotReliable,
    /// `after` is beyond `upto` in a range request.
    #[error("empty range: after {after} is not below upto {upto}")]
    BadRange {
        /// The first number not wanted.
        after: u64,
        /// The last number wanted.
        upto: u64,
    },
    /// The engine behind the cache is unreachable and no fallback could
    /// answer.
    #[error("the shared cache is unavailable: {0}")]
    Unavailable(String),
    /// Bytes in the cache that are not an envelope.
    #[error("undecodable envelope in the shared cache: {0}")]
    Decode(#[from] DecodeError),
}

/// What [`SharedCache::append`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Appended {
    /// Stored in the shared engine.
    Stored,
    /// Already held (a retry): nothing changed.
    Duplicate,
    /// The engine was unavailable: held by this process only until it is
    /// back (see the implementation's fallback).
    Local,
}

/// Reliable envelopes of every room, bounded in count and age, keyed by
/// `(room, epoch, seq)`. Object-safe, so a host can pick an engine at run
/// time.
#[async_trait]
pub trait SharedCache: Send + Sync {
    /// Stores a reliable envelope. Appending the same `(epoch, seq)` again
    /// is a no-op ([`Appended::Duplicate`]).
    async fn append(&self, envelope: &Envelope) -> Result<Appended, SharedCacheError>;

    /// The room's envelopes of `epoch` numbered `after + 1 ..= upto`, in
    /// order: one contiguous run of what is still held. It may start late
    /// (the oldest were trimmed), end early, or be empty, but never skips
    /// a number inside it.
    async fn range(&self, room: RoomKey, epoch: u64, after: u64, upto: u64) -> Result<Vec<Envelope>, SharedCacheError>;

    /// The room's newest `(epoch, seq)`, if anything is held.
    async fn head(&self, room: RoomKey) -> Result<Option<(u64, u64)>, SharedCacheError>;
}

/// Checks a range request.
pub fn check_range(after: u64, upto: u64) -> Result<(), SharedCacheError> {
    if after >= upto {
        return Err(SharedCacheError::BadRange { after, upto });
    }
    Ok(())
}

/// The numbers a push node lacks before `env`, as `(after, upto)` for
/// [`SharedCache::range`], given the node's [`reliable_head`] for the
/// room. Only a hole inside a sequence the node already follows counts: a
/// node that has just joined a room starts from what arrives, and a new
/// epoch starts afresh.
///
/// [`reliable_head`]: crate::PushNode::reliable_head
pub fn missing_before(head: Option<(u64, u64)>, env: &Envelope) -> Option<(u64, u64)> {
    let (epoch, head) = head?;
    (env.seq > 0 && epoch == env.epoch && head > 0 && env.seq > head.saturating_add(1)).then(|| (head, env.seq - 1))
}

/// Cuts `found` to one contiguous run after `after`: sorted, without
/// duplicates, and ending before the first hole. An answer may start late
/// (the oldest numbers were trimmed) but never skips a number in the
/// middle, so a caller never delivers past a message it did not get.
pub fn contiguous_run(mut found: Vec<Envelope>, after: u64) -> Vec<Envelope> {
    found.retain(|e| e.seq > after);
    found.sort_by_key(|e| e.seq);
    found.dedup_by_key(|e| e.seq);
    let run = found.windows(2).position(|w| w[1].seq != w[0].seq + 1).map_or(found.len(), |i| i + 1);
    found.truncate(run);
    found
}

/// Every room's log, with the write clock that orders rooms by last write.
#[derive(Debug, Default)]
struct Rooms {
    clock: u64,
    logs: BTreeMap<RoomKey, (u64, RoomLog)>,
}

#[derive(Debug, Default)]
struct RoomLog {
    epoch: u64,
    entries: VecDeque<Envelope>,
}

/// The in-process shared cache: per room, the newest epoch's envelopes,
/// at most `max_len`, and at most `max_rooms` rooms (the room written
/// least recently is dropped first).
#[derive(Debug, Clone)]
pub struct InMemorySharedCache {
    max_len: usize,
    max_rooms: usize,
    rooms: Arc<parking_lot::Mutex<Rooms>>,
}

impl InMemorySharedCache {
    /// A cache holding `max_len` envelopes per room for `max_rooms` rooms.
    pub fn new(max_len: usize, max_rooms: usize) -> Self {
        InMemorySharedCache { max_len: max_len.max(1), max_rooms: max_rooms.max(1), rooms: Arc::default() }
    }

    /// Appends without awaiting (the in-memory cache never blocks).
    pub fn append_now(&self, envelope: &Envelope) -> Result<Appended, SharedCacheError> {
        if envelope.seq == 0 {
            return Err(SharedCacheError::NotReliable);
        }
        let mut guard = self.rooms.lock();
        let Rooms { clock, logs: rooms } = &mut *guard;
        *clock += 1;
        let tick = *clock;
        if !rooms.contains_key(&envelope.message.room) && rooms.len() >= self.max_rooms {
            let oldest = rooms.iter().min_by_key(|(_, (t, _))| *t).map(|(k, _)| *k);
            if let Some(k) = oldest {
                rooms.remove(&k);
            }
        }
        let (touched, log) = rooms.entry(envelope.message.room).or_default();
        *touched = tick;
        if envelope.epoch < log.epoch {
            return Ok(Appended::Duplicate);
        }
        if envelope.epoch > log.epoch {
            log.epoch = envelope.epoch;
            log.entries.clear();
        }
        if log.entries.back().is_some_and(|e| e.seq >= envelope.seq) {
            return Ok(Appended::Duplicate);
        }
        log.entries.push_back(envelope.clone());
        while log.entries.len() > self.max_len {
            log.entries.pop_front();
        }
        Ok(Appended::Stored)
    }

    fn range_now(&self, room: RoomKey, epoch: u64, after: u64, upto: u64) -> Vec<Envelope> {
        let guard = self.rooms.lock();
        let Some((_, log)) = guard.logs.get(&room) else { return Vec::new() };
        if log.epoch != epoch {
            return Vec::new();
        }
        let found = log.entries.iter().filter(|e| e.seq > after && e.seq <= upto).cloned().collect();
        contiguous_run(found, after)
    }
}

impl Default for InMemorySharedCache {
    fn default() -> Self {
        Self::new(1024, 100_000)
    }
}

#[async_trait]
impl SharedCache for InMemorySharedCache {
    async fn append(&self, envelope: &Envelope) -> Result<Appended, SharedCacheError> {
        self.append_now(envelope)
    }

    async fn range(&self, room: RoomKey, epoch: u64, after: u64, upto: u64) -> Result<Vec<Envelope>, SharedCacheError> {
        check_range(after, upto)?;
        Ok(self.range_now(room, epoch, after, upto))
    }

    async fn head(&self, room: RoomKey) -> Result<Option<(u64, u64)>, SharedCacheError> {
        let guard = self.rooms.lock();
        Ok(guard.logs.get(&room).and_then(|(_, log)| log.entries.back().map(|e| (log.epoch, e.seq))))
    }
}
