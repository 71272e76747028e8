//! The local store: every room of this process, each behind its own lock,
//! and the [`MemberStore`] interface that hosts and the facade use.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::{Mutex, RwLock};
use room_core::{BusinessId, MemberKey, RoomKey, Terminal, Timestamp};

use crate::batch::WriteBatch;
use crate::hlc::{Hlc, Stamp};
use crate::member::{
    ChangeSet, Counts, FeedPosition, MemberRow, PageInfo, PageQuery, StoreError, WriteOp, WriteOutcome,
};
use crate::room::{Planned, Record, Room, RoomLimits};

/// Store settings. Start from [`StoreConfig::default`] and adjust.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct StoreConfig {
    /// The businesses served; `None` (the default) serves any.
    pub businesses: Option<BTreeSet<BusinessId>>,
    /// The largest attribute blob (default 256 bytes).
    pub max_attrs_bytes: usize,
    /// The most members one room may hold (default 200,000).
    pub max_room_members: u32,
    /// The most rooms (default 1,000,000).
    pub max_rooms: usize,
    /// Changes each room remembers for [`MemberStore::changes_since`]
    /// (default 256; 16 bytes each, allocated as the room changes).
    pub feed_len: usize,
    /// The most writes in one [`MemberStore::apply`] call (default 65,536).
    pub max_batch: usize,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            businesses: None,
            max_attrs_bytes: 256,
            max_room_members: 200_000,
            max_rooms: 1_000_000,
            feed_len: 256,
            max_batch: 65_536,
        }
    }
}

/// The one interface to member lists, implemented by the local
/// [`LocalStore`] and by the replicated [`Replica`](crate::Replica).
///
/// Every method takes `&self`: implementations are internally synchronised,
/// and reads of one room never wait for another room.
pub trait MemberStore: Send + Sync {
    /// Applies a batch of writes to one room as one write (one lock, one
    /// replication message). Each write is validated on its own: the
    /// result has one entry per write, in order, and a refused write
    /// changes nothing. The batch is idempotent.
    fn apply(
        &self,
        now: Timestamp,
        room: RoomKey,
        ops: &[WriteOp],
    ) -> Result<Vec<Result<WriteOutcome, StoreError>>, StoreError>;

    /// Applies a [`WriteBatch`] (from a [`WriteBatcher`](crate::WriteBatcher))
    /// as one write, once: a room remembers the ids of its last 64
    /// batches, and a batch applied again (a retry) changes nothing and
    /// reports every write [`WriteOutcome::Unchanged`].
    fn apply_batch(
        &self,
        now: Timestamp,
        batch: &WriteBatch,
    ) -> Result<Vec<Result<WriteOutcome, StoreError>>, StoreError>;

    /// A present member.
    fn get(&self, member: MemberKey) -> Option<MemberRow>;

    /// Counts of a room (O(1)); `None` for a room with nobody in it.
    fn counts(&self, room: RoomKey) -> Option<Counts>;

    /// A page of a room's members in listing order (role rank, join time,
    /// uin), filtered. `out` is cleared and filled.
    fn page(&self, room: RoomKey, query: &PageQuery, out: &mut Vec<MemberRow>) -> Result<PageInfo, StoreError>;

    /// What changed in a room since `since` (a position from an earlier
    /// page or change set).
    fn changes_since(&self, room: RoomKey, since: FeedPosition) -> Result<ChangeSet, StoreError>;

    /// A member entered on `terminal` (one write).
    fn enter(
        &self,
        now: Timestamp,
        member: MemberKey,
        role: room_core::Role,
        terminal: Terminal,
        attrs: Option<bytes::Bytes>,
    ) -> Result<WriteOutcome, StoreError> {
        let op = WriteOp::Enter { uin: member.uin, role, terminal, attrs };
        first(self.apply(now, member.room_key(), std::slice::from_ref(&op)))
    }

    /// A member left `terminal` (one write).
    fn exit(&self, now: Timestamp, member: MemberKey, terminal: Terminal) -> Result<WriteOutcome, StoreError> {
        let op = WriteOp::Exit { uin: member.uin, terminal };
        first(self.apply(now, member.room_key(), std::slice::from_ref(&op)))
    }

    /// Whether a member is present.
    fn contains(&self, member: MemberKey) -> bool {
        self.get(member).is_some()
    }
}

fn first(r: Result<Vec<Result<WriteOutcome, StoreError>>, StoreError>) -> Result<WriteOutcome, StoreError> {
    r?.into_iter().next().unwrap_or(Ok(WriteOutcome::Unchanged))
}

const SHARDS: usize = 64;

type Shard = RwLock<HashMap<RoomKey, Arc<RwLock<Room>>, ahash::RandomState>>;

/// Every room of this process in memory: bid -> room -> member. Rooms are
/// spread over 64 shards by key; each room has its own lock, taken after
/// the shard's lock is released, so a long read or write of one room never
/// holds up another.
///
/// ```
/// use room_core::{MemberKey, Role, Terminal, Timestamp};
/// use room_memberlist::{LocalStore, MemberStore, PageQuery, StoreConfig};
///
/// let store = LocalStore::new(StoreConfig::default());
/// let now = Timestamp::from_millis(1_000);
/// let teacher: MemberKey = "7/100/1".parse()?;
/// let student: MemberKey = "7/100/2".parse()?;
/// store.enter(now, student, Role::Student, Terminal::Ios, None)?;
/// store.enter(now, teacher, Role::Teacher, Terminal::Pc, None)?;
///
/// let mut rows = Vec::new();
/// store.page(teacher.room_key(), &PageQuery::first(10), &mut rows)?;
/// assert_eq!(rows[0].uin, teacher.uin); // teachers are listed first
/// assert_eq!(store.counts(teacher.room_key()).unwrap().role(Role::Student), 1);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug)]
pub struct LocalStore {
    config: StoreConfig,
    shards: Box<[Shard]>,
    rooms: AtomicU64,
    seed: u64,
    epochs: AtomicU64,
    clock: Mutex<Hlc>,
    keep_tombstones: bool,
}

impl LocalStore {
    /// An empty store.
    pub fn new(config: StoreConfig) -> LocalStore {
        LocalStore::with_origin(config, 0, false)
    }

    /// A store whose writes are stamped with `origin`, keeping tombstones
    /// when replicated.
    pub(crate) fn with_origin(config: StoreConfig, origin: u16, keep_tombstones: bool) -> LocalStore {
        let random = ahash::RandomState::new();
        LocalStore {
            config,
            shards: (0..SHARDS).map(|_| RwLock::new(HashMap::default())).collect(),
            rooms: AtomicU64::new(0),
            seed: random.hash_one(0x5eed_u64),
            epochs: AtomicU64::new(random.hash_one(0xe90c_u64)),
            clock: Mutex::new(Hlc::new(origin, std::time::Duration::from_secs(60))),
            keep_tombstones,
        }
    }

    /// The configuration.
    pub fn config(&self) -> &StoreConfig {
        &self.config
    }

    fn shard(&self, room: RoomKey) -> &Shard {
        let h = room_core::stable_hash(&room.room.0.to_le_bytes()) ^ u64::from(room.bid.0);
        &self.shards[(h % SHARDS as u64) as usize]
    }

    pub(crate) fn room(&self, room: RoomKey) -> Option<Arc<RwLock<Room>>> {
        self.shard(room).read().get(&room).cloned()
    }

    pub(crate) fn room_or_create(&self, room: RoomKey) -> Result<Arc<RwLock<Room>>, StoreError> {
        if let Some(r) = self.room(room) {
            return Ok(r);
        }
        if let Some(bids) = &self.config.businesses
            && !bids.contains(&room.bid)
        {
            return Err(StoreError::UnknownBusiness(room.bid));
        }
        let mut shard = self.shard(room).write();
        if let Some(r) = shard.get(&room) {
            return Ok(r.clone());
        }
        if self.rooms.load(Ordering::Relaxed) >= self.config.max_rooms as u64 {
            return Err(StoreError::TooManyRooms { max: self.config.max_rooms });
        }
        self.rooms.fetch_add(1, Ordering::Relaxed);
        let epoch = self.epochs.fetch_add(0x9e37_79b9_7f4a_7c15, Ordering::Relaxed);
        let new = Arc::new(RwLock::new(Room::new(self.seed ^ epoch, epoch, self.config.feed_len)));
        shard.insert(room, new.clone());
        Ok(new)
    }

    /// How many tombstones a room keeps, if it keeps them: as many as it
    /// may hold members, so a churning room (everyone leaves, others take
    /// their places, for ten minutes) stays within twice its largest size.
    fn tombstone_cap(&self) -> Option<u32> {
        self.keep_tombstones.then_some(self.config.max_room_members)
    }

    /// Drops a room if nothing is left in it (no member, no tombstone).
    pub(crate) fn drop_if_empty(&self, room: RoomKey) {
        let mut shard = self.shard(room).write();
        let empty = shard.get(&room).is_some_and(|r| r.read().is_empty());
        if empty {
            shard.remove(&room);
            self.rooms.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// Drops a room whatever it holds (handed over to its new owners).
    pub(crate) fn drop_room(&self, room: RoomKey) {
        if self.shard(room).write().remove(&room).is_some() {
            self.rooms.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// Rooms held.
    pub fn room_count(&self) -> usize {
        self.rooms.load(Ordering::Relaxed) as usize
    }

    /// Every room key held, sorted (so that what a replica does with them,
    /// and so what it sends, does not depend on hash order).
    pub fn room_keys(&self) -> Vec<RoomKey> {
        let mut keys: Vec<RoomKey> =
            self.shards.iter().flat_map(|s| s.read().keys().copied().collect::<Vec<_>>()).collect();
        keys.sort_unstable();
        keys
    }

    /// The rooms of one business.
    pub fn rooms_of(&self, bid: BusinessId) -> Vec<RoomKey> {
        self.room_keys().into_iter().filter(|r| r.bid == bid).collect()
    }

    fn limits(&self) -> RoomLimits {
        RoomLimits {
            max_attrs: self.config.max_attrs_bytes,
            max_members: self.config.max_room_members,
            restamp_entries: self.keep_tombstones,
        }
    }

    /// Applies writes, stamping each applied one; `sink` receives the
    /// records to replicate. `checked` lets new members into a room with a
    /// seat limit (the primary's checked join).
    pub(crate) fn apply_with(
        &self,
        now: Timestamp,
        room: RoomKey,
        ops: &[WriteOp],
        checked: bool,
        batch_id: Option<u64>,
        mut sink: impl FnMut(Record),
    ) -> Result<Vec<Result<WriteOutcome, StoreError>>, StoreError> {
        if ops.len() > self.config.max_batch {
            return Err(StoreError::BatchTooLarge { len: ops.len(), max: self.config.max_batch });
        }
        let handle = match self.room(room) {
            Some(r) => r,
            None if !self.keep_tombstones
                && ops.iter().all(|op| !matches!(op, WriteOp::Enter { .. } | WriteOp::Assert { .. })) =>
            {
                return Ok(ops.iter().map(|op| Err(StoreError::NotPresent(op.uin()))).collect());
            }
            None => self.room_or_create(room)?,
        };
        let limits = self.limits();
        let mut results = Vec::with_capacity(ops.len());
        let emptied = {
            let mut r = handle.write();
            r.set_now(now);
            if let Some(id) = batch_id
                && !r.note_batch(id)
            {
                return Ok(ops.iter().map(|_| Ok(WriteOutcome::Unchanged)).collect());
            }
            for op in ops {
                let was_present = r.contains(op.uin());
                if !checked
                    && !was_present
                    && r.seat_limit.is_some()
                    && matches!(op, WriteOp::Enter { .. } | WriteOp::Assert { .. })
                {
                    results.push(Err(StoreError::NeedsCheckedJoin));
                    continue;
                }
                // The write goes out, but nothing a reader sees changes.
                let mut unchanged = false;
                let planned = match r.plan(op, now, limits) {
                    Ok(p) => p,
                    // A replica may take an exit before the entry it ends
                    // has reached it: it records the exit anyway (a
                    // tombstone stamped now), so that the exit wins over
                    // the late entry instead of being lost.
                    Err(StoreError::NotPresent(_))
                        if self.keep_tombstones
                            && matches!(op, WriteOp::Exit { .. } | WriteOp::Remove { .. })
                            && r.tombstones() < limits.max_members =>
                    {
                        unchanged = true;
                        Planned::Remove
                    }
                    Err(e) => {
                        results.push(Err(e));
                        continue;
                    }
                };
                let state = match planned {
                    Planned::Nothing => {
                        // Present as asserted: the member's lease goes on.
                        r.touch(op.uin());
                        results.push(Ok(WriteOutcome::Unchanged));
                        continue;
                    }
                    Planned::Restamp(state) => {
                        unchanged = true;
                        Some(state)
                    }
                    Planned::Put(state) => Some(state),
                    Planned::Remove => None,
                };
                let outcome = match (was_present, state.is_some()) {
                    _ if unchanged => WriteOutcome::Unchanged,
                    (false, _) => WriteOutcome::Entered,
                    (true, true) => WriteOutcome::Updated,
                    (true, false) => WriteOutcome::Exited,
                };
                let stamp = self.clock.lock().stamp(now);
                let record = Record { uin: op.uin(), stamp, state };
                r.merge(&record, self.tombstone_cap());
                sink(record);
                results.push(Ok(outcome));
            }
            r.is_empty()
        };
        if emptied {
            self.drop_if_empty(room);
        }
        Ok(results)
    }

    /// Merges replicated records into a room (creating it if needed).
    /// Returns how many changed something.
    pub(crate) fn merge(&self, now: Timestamp, room: RoomKey, records: &[Record]) -> Result<usize, StoreError> {
        let handle = self.room_or_create(room)?;
        let mut applied = 0;
        let mut r = handle.write();
        r.set_now(now);
        let mut clock = self.clock.lock();
        for record in records {
            // The clock follows remote stamps, so a later local write to
            // the same member always wins over what was merged.
            clock.observe(now, record.stamp);
            if let Some(state) = &record.state {
                if state.attrs.len() > self.config.max_attrs_bytes || state.terminals.is_empty() {
                    continue;
                }
                if !r.contains(record.uin) && r.present() >= self.config.max_room_members {
                    continue;
                }
            }
            applied += usize::from(r.merge(record, self.tombstone_cap()));
        }
        Ok(applied)
    }

    /// Observes a remote stamp; false if it is implausibly far ahead.
    pub(crate) fn observe(&self, now: Timestamp, stamp: Stamp) -> bool {
        self.clock.lock().observe(now, stamp)
    }

    /// Sets (or clears) a room's seat limit.
    pub fn set_seat_limit(&self, room: RoomKey, limit: Option<u32>) -> Result<(), StoreError> {
        self.room_or_create(room)?.write().seat_limit = limit;
        Ok(())
    }

    /// A room's seat limit.
    pub fn seat_limit(&self, room: RoomKey) -> Option<u32> {
        self.room(room).and_then(|r| r.read().seat_limit)
    }

    /// Drops tombstones stamped before `horizon` in every room; returns how
    /// many. Rooms left with nothing are dropped.
    pub(crate) fn gc(&self, horizon: Stamp) -> usize {
        let mut dropped = 0;
        for key in self.room_keys() {
            if let Some(r) = self.room(key) {
                dropped += r.write().gc(horizon.hlc);
            }
            self.drop_if_empty(key);
        }
        dropped
    }

    /// Present members of a room not asserted here for longer than
    /// `lease` at `now`.
    pub(crate) fn expired(&self, now: Timestamp, room: RoomKey, lease: std::time::Duration) -> Vec<room_core::Uin> {
        let lease_secs = u32::try_from(lease.as_secs()).unwrap_or(u32::MAX);
        self.room(room).map_or_else(Vec::new, |r| {
            let mut r = r.write();
            r.set_now(now);
            r.expired(lease_secs)
        })
    }

    /// A room's live-member digests per anti-entropy bucket (zeros for an
    /// unknown room).
    pub(crate) fn bucket_digests(&self, room: RoomKey, buckets: u8) -> Vec<u64> {
        self.room(room).map_or_else(|| vec![0; usize::from(buckets.max(1))], |r| r.read().bucket_digests(buckets))
    }

    /// A room's records (tombstones included) in the given buckets.
    pub(crate) fn records_in(&self, room: RoomKey, pull: &[u8], buckets: u8) -> Vec<Record> {
        self.room(room).map(|r| r.read().records_in(pull, buckets)).unwrap_or_default()
    }

    /// A room's anti-entropy digest (0 for an unknown room).
    pub(crate) fn digest(&self, room: RoomKey) -> u64 {
        self.room(room).map_or(0, |r| r.read().digest())
    }

    /// Every present member of a room in listing order.
    pub fn members(&self, room: RoomKey) -> Vec<MemberRow> {
        self.room(room).map(|r| r.read().rows().collect()).unwrap_or_default()
    }

    /// Every record of a room, tombstones included (for snapshots and
    /// repair).
    pub fn records(&self, room: RoomKey) -> Vec<Record> {
        self.room(room).map(|r| r.read().records().collect()).unwrap_or_default()
    }

    /// Tombstones held in a room.
    pub fn tombstones(&self, room: RoomKey) -> u32 {
        self.room(room).map_or(0, |r| r.read().tombstones())
    }

    /// Heap bytes held by a room's structures (records, index, lists,
    /// attributes, feed), for memory reports.
    pub fn room_heap_bytes(&self, room: RoomKey) -> usize {
        self.room(room).map_or(0, |r| r.read().heap_bytes())
    }

    /// A member's record, tombstone included (for repair and tests).
    pub fn record(&self, member: MemberKey) -> Option<Record> {
        self.room(member.room_key())?.read().record(member.uin)
    }

    /// Restores records into a fresh room (snapshot restore).
    pub(crate) fn restore_room(
        &self,
        room: RoomKey,
        seat_limit: Option<u32>,
        records: &[Record],
    ) -> Result<(), StoreError> {
        let handle = self.room_or_create(room)?;
        let mut r = handle.write();
        r.seat_limit = seat_limit;
        // Restored members start their lease at the first expiry check.
        r.set_now(Timestamp::ZERO);
        let mut clock = self.clock.lock();
        for record in records {
            clock.observe(Timestamp::MAX, record.stamp);
            r.merge(record, self.tombstone_cap());
        }
        Ok(())
    }
}

impl MemberStore for LocalStore {
    fn apply(
        &self,
        now: Timestamp,
        room: RoomKey,
        ops: &[WriteOp],
    ) -> Result<Vec<Result<WriteOutcome, StoreError>>, StoreError> {
        self.apply_with(now, room, ops, false, None, |_| {})
    }

    fn apply_batch(
        &self,
        now: Timestamp,
        batch: &WriteBatch,
    ) -> Result<Vec<Result<WriteOutcome, StoreError>>, StoreError> {
        self.apply_with(now, batch.room, &batch.ops, false, Some(batch.id), |_| {})
    }

    fn get(&self, member: MemberKey) -> Option<MemberRow> {
        self.room(member.room_key())?.read().get(member.uin)
    }

    fn contains(&self, member: MemberKey) -> bool {
        self.room(member.room_key()).is_some_and(|r| r.read().contains(member.uin))
    }

    fn counts(&self, room: RoomKey) -> Option<Counts> {
        let r = self.room(room)?;
        let r = r.read();
        (r.present() > 0).then(|| r.counts().clone())
    }

    fn page(&self, room: RoomKey, query: &PageQuery, out: &mut Vec<MemberRow>) -> Result<PageInfo, StoreError> {
        match self.room(room) {
            Some(r) => r.read().page(query, out),
            None => Err(StoreError::UnknownRoom(room)),
        }
    }

    fn changes_since(&self, room: RoomKey, since: FeedPosition) -> Result<ChangeSet, StoreError> {
        match self.room(room) {
            Some(r) => Ok(r.read().changes_since(since)),
            None => Err(StoreError::UnknownRoom(room)),
        }
    }
}
