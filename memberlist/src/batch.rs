//! Merged writes: enter / exit / update events gathered per room over a
//! short window and handed over as one batch, which the store applies (and
//! a replica replicates) as one write.
//!
//! Sans-IO: [`WriteBatcher::push`] takes events with `now`,
//! [`WriteBatcher::poll_timeout`] says when the oldest window closes, and
//! [`WriteBatcher::poll_batch`] hands over a due batch. A room that gathers
//! [`BatcherConfig::max_batch`] writes is due at once. An exact repeat of a
//! member's previous write in the same window is dropped (writes are
//! state-based, so it would change nothing).

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use room_core::{RoomKey, Timestamp, Uin};

use crate::member::WriteOp;

/// Batcher settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct BatcherConfig {
    /// How long a room's first write waits for others (default 5 ms).
    pub window: Duration,
    /// A room's batch is due at once when it holds this many writes
    /// (default 1,024).
    pub max_batch: usize,
    /// The most writes waiting across all rooms (default 1,000,000);
    /// [`WriteBatcher::push`] refuses more, so a storm cannot grow memory
    /// without bound.
    pub max_pending: usize,
}

impl Default for BatcherConfig {
    fn default() -> Self {
        BatcherConfig { window: Duration::from_millis(5), max_batch: 1_024, max_pending: 1_000_000 }
    }
}

/// Writes to one room, to apply as one.
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct WriteBatch {
    /// The room.
    pub room: RoomKey,
    /// Unique per batcher (random start, then counting): a store that
    /// already applied this batch to the room applies it no more.
    pub id: u64,
    /// The writes, in arrival order.
    pub ops: Vec<WriteOp>,
}

/// The batcher is full: apply some batches first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("write batcher holds the maximum of {max} pending writes")]
pub struct BatcherFull {
    /// The configured maximum.
    pub max: usize,
}

#[derive(Debug)]
struct Pending {
    since: Timestamp,
    ops: Vec<WriteOp>,
    last_of: HashMap<Uin, usize, ahash::RandomState>,
}

/// Gathers writes per room. See the module docs.
///
/// ```
/// use std::time::Duration;
/// use room_core::{Role, RoomKey, Terminal, Timestamp, Uin};
/// use room_memberlist::{BatcherConfig, WriteBatcher, WriteOp};
///
/// let mut batcher = WriteBatcher::new(BatcherConfig::default());
/// let room: RoomKey = "7/100".parse()?;
/// let t0 = Timestamp::from_millis(0);
/// for uin in 1..=3 {
///     let op = WriteOp::Enter { uin: Uin(uin), role: Role::Student, terminal: Terminal::Web, attrs: None };
///     batcher.push(t0, room, op)?;
/// }
/// assert!(batcher.poll_batch(t0).is_none()); // the window is still open
/// let due = batcher.poll_timeout().unwrap();
/// let batch = batcher.poll_batch(due).unwrap();
/// assert_eq!(batch.ops.len(), 3);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug)]
pub struct WriteBatcher {
    config: BatcherConfig,
    pending: HashMap<RoomKey, Pending, ahash::RandomState>,
    /// Rooms by the time their window opened (windows are all the same
    /// length, so this is also deadline order). Stale entries (a room
    /// flushed early) are skipped.
    opened: VecDeque<(Timestamp, RoomKey)>,
    full: VecDeque<RoomKey>,
    total: usize,
    next_id: u64,
}

impl WriteBatcher {
    /// An empty batcher.
    pub fn new(config: BatcherConfig) -> WriteBatcher {
        WriteBatcher {
            config,
            pending: HashMap::default(),
            opened: VecDeque::new(),
            full: VecDeque::new(),
            total: 0,
            next_id: ahash::RandomState::new().hash_one(0xba7c_u64),
        }
    }

    /// Writes waiting.
    pub fn pending(&self) -> usize {
        self.total
    }

    /// Adds a write to its room's batch.
    pub fn push(&mut self, now: Timestamp, room: RoomKey, op: WriteOp) -> Result<(), BatcherFull> {
        if self.total >= self.config.max_pending {
            return Err(BatcherFull { max: self.config.max_pending });
        }
        let p = self.pending.entry(room).or_insert_with(|| {
            self.opened.push_back((now, room));
            Pending { since: now, ops: Vec::new(), last_of: HashMap::default() }
        });
        let uin = op.uin();
        if p.last_of.get(&uin).is_some_and(|&i| p.ops[i] == op) {
            return Ok(());
        }
        p.last_of.insert(uin, p.ops.len());
        p.ops.push(op);
        self.total += 1;
        if p.ops.len() == self.config.max_batch.max(1) {
            self.full.push_back(room);
        }
        Ok(())
    }

    /// When the next batch is due, if any write is waiting.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Timestamp> {
        if let Some(room) = self.full.front() {
            return self.pending.get(room).map(|p| p.since);
        }
        self.opened
            .iter()
            .find(|(at, room)| self.pending.get(room).is_some_and(|p| p.since == *at))
            .map(|(at, _)| *at + self.config.window)
    }

    /// A batch that is due at `now`, if any.
    #[must_use]
    pub fn poll_batch(&mut self, now: Timestamp) -> Option<WriteBatch> {
        while let Some(room) = self.full.pop_front() {
            if let Some(batch) = self.take(room) {
                return Some(batch);
            }
        }
        while let Some(&(at, room)) = self.opened.front() {
            let live = self.pending.get(&room).is_some_and(|p| p.since == at);
            if !live {
                self.opened.pop_front();
                continue;
            }
            if at + self.config.window > now {
                return None;
            }
            self.opened.pop_front();
            return self.take(room);
        }
        None
    }

    /// Every waiting batch, due or not (at shutdown, or before a snapshot).
    pub fn drain_all(&mut self) -> Vec<WriteBatch> {
        let rooms: Vec<RoomKey> = self.opened.drain(..).map(|(_, r)| r).collect();
        self.full.clear();
        rooms.into_iter().filter_map(|r| self.take(r)).collect()
    }

    fn take(&mut self, room: RoomKey) -> Option<WriteBatch> {
        let p = self.pending.remove(&room)?;
        self.total -= p.ops.len();
        self.next_id = self.next_id.wrapping_add(1);
        Some(WriteBatch { room, id: self.next_id, ops: p.ops })
    }
}
