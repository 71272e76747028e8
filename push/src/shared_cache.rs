//! A recovery cache shared by the nodes of a cluster.
//!
//! Each push node keeps its own [`ReliableCache`](crate::node) of recent
//! reliable messages, which answers its clients' checks. A shared cache is
//! written by the room's gate and read by the push nodes: when the bus
//! loses envelopes, a node refills the gap from it instead of resetting
//! every client of the room, and a gate that restarts continues the room's
//! sequence from its head instead of opening a new epoch.
//!
//! Beside each room's log, the cache keeps the room owner's state: an
//! opaque, versioned blob (the classroom's hands, cards, packets,
//! sub-class plan and mutes) that the room's next owner loads to carry on
//! where the last one stopped. Saves are compare-and-set on the version,
//! so of two owners saving at once, one learns that the other exists.
//!
//! [`InMemorySharedCache`] is the single-process version (tests, and a
//! cluster simulated in one process); `room-redis` has one on Redis
//! Streams.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use room_core::RoomKey;

use crate::envelope::{DecodeError, Envelope};

/// Why a shared cache could not store or answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SharedCacheError {
    /// Only reliable envelopes (numbered, `seq > 0`) are cached.
    #[error("only reliable envelopes are cached (this one has seq 0)")]
    NotReliable,
    /// A batch whose envelopes are not of one room and epoch, numbered in
    /// a row.
    #[error("a batch must hold one room's envelopes of one epoch, numbered in a row")]
    BadBatch,
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
    /// A room state over the cache's limit; nothing was saved.
    #[error("a room state of {size} bytes exceeds the limit of {max}")]
    StateTooLarge {
        /// Bytes given.
        size: usize,
        /// The limit.
        max: usize,
    },
    /// A save after version `u64::MAX`: no version follows it.
    #[error("no state version follows {after}")]
    BadVersion {
        /// The version given.
        after: u64,
    },
    /// What the engine holds for a room's state is not a version and a
    /// state (written by something else).
    #[error("undecodable room state in the shared cache: {0}")]
    BadState(String),
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

/// What [`SharedCache::save_state`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Saved {
    /// Stored in the shared engine as `version`.
    Stored {
        /// The state's version now (`after + 1`).
        version: u64,
    },
    /// Not saved: the stored version is beyond `after`, so another owner
    /// saved since this one loaded. Load it before saving again.
    Conflict {
        /// The version stored.
        version: u64,
    },
    /// The engine was unavailable: held by this process only, as
    /// `version`, until a save reaches the engine again (see the
    /// implementation's fallback).
    Local {
        /// The state's version in this process (`after + 1`).
        version: u64,
    },
}

/// Reliable envelopes of every room, bounded in count and age, keyed by
/// `(room, epoch, seq)`, and beside them each room owner's state.
/// Object-safe, so a host can pick an engine at run time.
#[async_trait]
pub trait SharedCache: Send + Sync {
    /// Stores a reliable envelope. Appending the same `(epoch, seq)` again
    /// is a no-op ([`Appended::Duplicate`]).
    async fn append(&self, envelope: &Envelope) -> Result<Appended, SharedCacheError>;

    /// Stores reliable envelopes of one room and epoch, numbered in a row,
    /// as one write: all of them if the first is above the room's newest
    /// ([`Appended::Stored`]), none if it is not ([`Appended::Duplicate`]:
    /// another writer took that number). A room owner's burst costs one
    /// round trip, and the fence holds for the whole batch.
    async fn append_batch(&self, envelopes: &[Envelope]) -> Result<Appended, SharedCacheError>;

    /// The room's envelopes of `epoch` numbered `after + 1 ..= upto`, in
    /// order: one contiguous run of what is still held. It may start late
    /// (the oldest were trimmed), end early, or be empty, but never skips
    /// a number inside it.
    async fn range(&self, room: RoomKey, epoch: u64, after: u64, upto: u64) -> Result<Vec<Envelope>, SharedCacheError>;

    /// The room's newest `(epoch, seq)`, if anything is held.
    async fn head(&self, room: RoomKey) -> Result<Option<(u64, u64)>, SharedCacheError>;

    /// The room's state and its version, if one is held. A room's state
    /// lives as long as its log: both are dropped together.
    async fn load_state(&self, room: RoomKey) -> Result<Option<(u64, Bytes)>, SharedCacheError>;

    /// Saves the room's state as version `after + 1` if the version stored
    /// is at most `after` (no state counts as version 0): a compare-and-set
    /// that tells an owner when another one saved since it loaded
    /// ([`Saved::Conflict`]). A version above the stored one is accepted,
    /// so a state saved locally during an outage ([`Saved::Local`]) is
    /// followed by the next save once the engine is back.
    ///
    /// # Errors
    ///
    /// [`SharedCacheError::StateTooLarge`] for a state over the cache's
    /// limit, [`SharedCacheError::BadVersion`] for `after == u64::MAX`,
    /// [`SharedCacheError::BadState`] if the engine holds garbage for the
    /// room; nothing saved.
    async fn save_state(&self, room: RoomKey, after: u64, state: Bytes) -> Result<Saved, SharedCacheError>;
}

/// Checks a batch for [`SharedCache::append_batch`]: reliable envelopes of
/// one room and epoch, numbered in a row.
pub fn check_batch(envelopes: &[Envelope]) -> Result<(), SharedCacheError> {
    let Some(first) = envelopes.first() else { return Ok(()) };
    for (i, e) in envelopes.iter().enumerate() {
        if e.seq == 0 {
            return Err(SharedCacheError::NotReliable);
        }
        if e.message.room != first.message.room || e.epoch != first.epoch || e.seq != first.seq + i as u64 {
            return Err(SharedCacheError::BadBatch);
        }
    }
    Ok(())
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

/// Every room's log and state, with the write clock that orders rooms by
/// last write (`by_write` indexes it, so dropping the room written least
/// recently costs a log, not a scan of every room).
#[derive(Debug, Default)]
struct Rooms {
    clock: u64,
    logs: BTreeMap<RoomKey, (u64, RoomLog)>,
    by_write: BTreeMap<u64, RoomKey>,
}

impl Rooms {
    /// The room's entry, marked as written now; the room written least
    /// recently is dropped first if a new room would be one too many.
    fn touch(&mut self, room: RoomKey, max_rooms: usize) -> &mut RoomLog {
        self.clock += 1;
        let tick = self.clock;
        if !self.logs.contains_key(&room)
            && self.logs.len() >= max_rooms
            && let Some((_, oldest)) = self.by_write.pop_first()
        {
            self.logs.remove(&oldest);
        }
        let (touched, log) = self.logs.entry(room).or_default();
        if *touched != 0 {
            self.by_write.remove(touched);
        }
        *touched = tick;
        self.by_write.insert(tick, room);
        log
    }
}

#[derive(Debug, Default)]
struct RoomLog {
    epoch: u64,
    entries: VecDeque<Envelope>,
    state: Option<(u64, Bytes)>,
}

/// The in-process shared cache: per room, the newest epoch's envelopes,
/// at most `max_len`, and the owner's state, at most `max_state` bytes,
/// for at most `max_rooms` rooms (the room written least recently, log
/// and state, is dropped first).
///
/// Every call has a synchronous `*_now` form, so a sans-IO simulation can
/// use it without an executor.
#[derive(Debug, Clone)]
pub struct InMemorySharedCache {
    max_len: usize,
    max_rooms: usize,
    max_state: usize,
    rooms: Arc<parking_lot::Mutex<Rooms>>,
}

impl InMemorySharedCache {
    /// The largest state a room may save unless [`with_max_state`] says
    /// otherwise: 4 MiB (a room of 60,000 with an open answer card saves under 1 MiB).
    ///
    /// [`with_max_state`]: InMemorySharedCache::with_max_state
    pub const DEFAULT_MAX_STATE: usize = 4 << 20;

    /// A cache holding `max_len` envelopes per room for `max_rooms` rooms.
    pub fn new(max_len: usize, max_rooms: usize) -> Self {
        InMemorySharedCache {
            max_len: max_len.max(1),
            max_rooms: max_rooms.max(1),
            max_state: Self::DEFAULT_MAX_STATE,
            rooms: Arc::default(),
        }
    }

    /// With room states of at most `max_state` bytes.
    pub fn with_max_state(mut self, max_state: usize) -> Self {
        self.max_state = max_state;
        self
    }

    /// [`SharedCache::append`] without awaiting (the in-memory cache never
    /// blocks).
    ///
    /// # Errors
    ///
    /// [`SharedCacheError::NotReliable`] for an envelope with `seq` 0.
    pub fn append_now(&self, envelope: &Envelope) -> Result<Appended, SharedCacheError> {
        if envelope.seq == 0 {
            return Err(SharedCacheError::NotReliable);
        }
        let mut rooms = self.rooms.lock();
        let log = rooms.touch(envelope.message.room, self.max_rooms);
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
        // Room first: a log at `max_len` that took the envelope before
        // trimming would double its slots for good.
        while log.entries.len() >= self.max_len {
            log.entries.pop_front();
        }
        log.entries.push_back(envelope.clone());
        Ok(Appended::Stored)
    }

    /// [`SharedCache::append_batch`] without awaiting: the first envelope
    /// decides for all, under one lock.
    ///
    /// # Errors
    ///
    /// [`SharedCacheError::NotReliable`] and [`SharedCacheError::BadBatch`]
    /// for a batch that is not one room's envelopes numbered in a row.
    pub fn append_batch_now(&self, envelopes: &[Envelope]) -> Result<Appended, SharedCacheError> {
        check_batch(envelopes)?;
        let Some(first) = envelopes.first() else { return Ok(Appended::Stored) };
        let mut rooms = self.rooms.lock();
        let log = rooms.touch(first.message.room, self.max_rooms);
        if first.epoch < log.epoch
            || (first.epoch == log.epoch && log.entries.back().is_some_and(|e| e.seq >= first.seq))
        {
            return Ok(Appended::Duplicate);
        }
        if first.epoch > log.epoch {
            log.epoch = first.epoch;
            log.entries.clear();
        }
        // Room first, then the batch: a log at `max_len` that took the
        // batch before trimming would double its slots for good.
        let kept = envelopes.len().min(self.max_len);
        let over = (log.entries.len() + kept).saturating_sub(self.max_len);
        log.entries.drain(..over);
        log.entries.extend(envelopes[envelopes.len() - kept..].iter().cloned());
        Ok(Appended::Stored)
    }

    /// [`SharedCache::range`] without awaiting.
    ///
    /// # Errors
    ///
    /// [`SharedCacheError::BadRange`] unless `after < upto`.
    pub fn range_now(
        &self,
        room: RoomKey,
        epoch: u64,
        after: u64,
        upto: u64,
    ) -> Result<Vec<Envelope>, SharedCacheError> {
        check_range(after, upto)?;
        let guard = self.rooms.lock();
        let Some((_, log)) = guard.logs.get(&room) else { return Ok(Vec::new()) };
        if log.epoch != epoch {
            return Ok(Vec::new());
        }
        let found = log.entries.iter().filter(|e| e.seq > after && e.seq <= upto).cloned().collect();
        Ok(contiguous_run(found, after))
    }

    /// [`SharedCache::head`] without awaiting.
    pub fn head_now(&self, room: RoomKey) -> Option<(u64, u64)> {
        let guard = self.rooms.lock();
        guard.logs.get(&room).and_then(|(_, log)| log.entries.back().map(|e| (log.epoch, e.seq)))
    }

    /// [`SharedCache::load_state`] without awaiting.
    pub fn load_state_now(&self, room: RoomKey) -> Option<(u64, Bytes)> {
        self.rooms.lock().logs.get(&room).and_then(|(_, log)| log.state.clone())
    }

    /// Forgets a room's state, keeping its log: for a fallback whose copy
    /// has been superseded in the engine it stands in for.
    pub fn drop_state_now(&self, room: RoomKey) {
        if let Some((_, log)) = self.rooms.lock().logs.get_mut(&room) {
            log.state = None;
        }
    }

    /// [`SharedCache::save_state`] without awaiting. Never answers
    /// [`Saved::Local`].
    ///
    /// # Errors
    ///
    /// [`SharedCacheError::StateTooLarge`] for a state over `max_state`
    /// bytes, [`SharedCacheError::BadVersion`] for `after == u64::MAX`;
    /// nothing saved.
    pub fn save_state_now(&self, room: RoomKey, after: u64, state: Bytes) -> Result<Saved, SharedCacheError> {
        if state.len() > self.max_state {
            return Err(SharedCacheError::StateTooLarge { size: state.len(), max: self.max_state });
        }
        let version = after.checked_add(1).ok_or(SharedCacheError::BadVersion { after })?;
        let mut rooms = self.rooms.lock();
        let log = rooms.touch(room, self.max_rooms);
        match &log.state {
            Some((stored, _)) if *stored > after => Ok(Saved::Conflict { version: *stored }),
            _ => {
                log.state = Some((version, state));
                Ok(Saved::Stored { version })
            }
        }
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

    async fn append_batch(&self, envelopes: &[Envelope]) -> Result<Appended, SharedCacheError> {
        self.append_batch_now(envelopes)
    }

    async fn range(&self, room: RoomKey, epoch: u64, after: u64, upto: u64) -> Result<Vec<Envelope>, SharedCacheError> {
        self.range_now(room, epoch, after, upto)
    }

    async fn head(&self, room: RoomKey) -> Result<Option<(u64, u64)>, SharedCacheError> {
        Ok(self.head_now(room))
    }

    async fn load_state(&self, room: RoomKey) -> Result<Option<(u64, Bytes)>, SharedCacheError> {
        Ok(self.load_state_now(room))
    }

    async fn save_state(&self, room: RoomKey, after: u64, state: Bytes) -> Result<Saved, SharedCacheError> {
        self.save_state_now(room, after, state)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Class, Kind, Message};
    use room_core::{BusinessId, RoomId, Timestamp};

    const ROOM: RoomKey = RoomKey::new(BusinessId(1), RoomId(2));

    fn envelope(seq: u64) -> Envelope {
        Envelope {
            epoch: 1,
            seq,
            accepted_at: Timestamp::from_millis(seq),
            message: Message::new(ROOM, Class::Signal, Kind(1), vec![seq as u8]),
        }
    }

    fn slots(cache: &InMemorySharedCache) -> usize {
        cache.rooms.lock().logs.get(&ROOM).map_or(0, |(_, log)| log.entries.capacity())
    }

    /// A full log trims before it appends: its slots stay those of
    /// `max_len` envelopes, not twice as many (a VecDeque that takes one
    /// more before trimming doubles for good).
    #[test]
    fn a_full_log_keeps_its_slots() {
        let cache = InMemorySharedCache::new(1_024, 4);
        let mut seq = 0;
        for _ in 0..5_000 {
            seq += 1;
            assert_eq!(cache.append_now(&envelope(seq)), Ok(Appended::Stored));
        }
        assert_eq!(slots(&cache), 1_024);
        for n in [1, 7, 1_024, 3_000] {
            let batch: Vec<Envelope> = (seq + 1..=seq + n).map(envelope).collect();
            seq += n;
            assert_eq!(cache.append_batch_now(&batch), Ok(Appended::Stored));
            assert_eq!(slots(&cache), 1_024, "after a batch of {n}");
        }
        // The newest 1,024, in order.
        let log: Vec<u64> = cache.rooms.lock().logs[&ROOM].1.entries.iter().map(|e| e.seq).collect();
        assert_eq!(log, (seq - 1_023..=seq).collect::<Vec<u64>>());
    }
}
