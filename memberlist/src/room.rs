//! One room's members: records, the uin index, one ordered list per role
//! rank, counts, the change feed and the anti-entropy digest. Not
//! synchronised: the store puts each room behind its own lock.

use std::cmp::Ordering;
use std::collections::VecDeque;

use bytes::Bytes;
use hashbrown::HashTable;
use room_core::{Flag, Role, TerminalSet, Timestamp, Uin};

use crate::hlc::Stamp;
use crate::member::{
    ChangeSet, Counts, Cursor, FeedPosition, MemberRow, PageInfo, PageQuery, PageStart, StoreError, WriteOp,
};
use crate::order::OrderedList;

/// Role ranks: teacher, assistant, custom roles, student, observer.
pub(crate) const RANKS: usize = 5;
/// The role bits of each rank.
const RANK_ROLE_BITS: [u64; RANKS] = [1 << 0, 1 << 1, !0xf, 1 << 2, 1 << 3];
const NIL: u32 = u32::MAX;
/// `Rec::state` bit: a present member (otherwise a tombstone or a free slot).
const LIVE: u8 = 0x80;
const TERMINAL_BITS: u8 = 0x7f;
/// `Rec::role` of a free slot (roles are below 64).
const FREE: u8 = 0xff;

/// A member's state as replicas exchange it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct MemberState {
    /// Role in the room.
    pub role: Role,
    /// Terminals present on; never empty.
    pub terminals: TerminalSet,
    /// When the member entered.
    pub joined: Timestamp,
    /// Host attributes.
    pub attrs: Bytes,
}

/// One member's replicated record: its state, or a tombstone (`state` is
/// `None`) saying it left, stamped with the write that made it so.
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct Record {
    /// Who.
    pub uin: Uin,
    /// The write that produced this record.
    pub stamp: Stamp,
    /// The member's state, or `None` for a tombstone.
    pub state: Option<MemberState>,
}

/// 36 bytes: packed to 4-byte alignment so that the three u64 fields do not
/// pad the record to 40 (fields are only ever read and written by value).
#[derive(Debug, Clone, Copy, Default)]
#[repr(C, packed(4))]
struct Rec {
    uin: u64,
    joined: u64,
    hlc: u64,
    /// When this replica last saw the member asserted (entered, re-asserted
    /// by a heartbeat, or replicated), in seconds; 0: not yet (restored).
    seen: u32,
    /// Index into `Room::attrs`, or NIL for none.
    attrs: u32,
    origin: u16,
    role: u8,
    /// Terminal bits and `LIVE`.
    state: u8,
}

const _: () = assert!(std::mem::size_of::<Rec>() == 36);

impl Rec {
    fn uin(&self) -> u64 {
        self.uin
    }
    fn joined(&self) -> u64 {
        self.joined
    }
    fn stamp(&self) -> Stamp {
        Stamp { hlc: self.hlc, origin: self.origin }
    }
    fn is_live(&self) -> bool {
        self.state & LIVE != 0
    }
    fn role(&self) -> Role {
        Role::from_bit(u32::from(self.role)).unwrap_or(Role::Observer)
    }
    fn terminals(&self) -> TerminalSet {
        TerminalSet::from_bits(u64::from(self.state & TERMINAL_BITS)).unwrap_or_default()
    }
}

/// A stable digest of one live member, summed (wrapping) over a room: equal
/// rooms have equal digests on every replica and platform, and a write
/// updates the sum in O(1).
pub(crate) fn record_digest(uin: u64, stamp: Stamp, state: &MemberState) -> u64 {
    let mut fixed = [0u8; 36];
    fixed[0..8].copy_from_slice(&uin.to_le_bytes());
    fixed[8..16].copy_from_slice(&stamp.hlc.to_le_bytes());
    fixed[16..18].copy_from_slice(&stamp.origin.to_le_bytes());
    fixed[18..26].copy_from_slice(&state.terminals.bits().to_le_bytes());
    fixed[26..34].copy_from_slice(&state.joined.as_micros().to_le_bytes());
    fixed[34] = state.role.bit() as u8;
    fixed[35] = 1;
    let attrs_seed = if state.attrs.is_empty() { 0 } else { xxhash_rust::xxh3::xxh3_64(&state.attrs) };
    xxhash_rust::xxh3::xxh3_64_with_seed(&fixed, attrs_seed)
}

/// The index hash of a uin: a folded multiply keyed by a per-store random
/// seed (uins come from outside, so the index must not be floodable by
/// chosen ids).
fn fold_hash(uin: u64, seed: u64) -> u64 {
    let x = u128::from(uin ^ seed) * u128::from(0x9e37_79b9_7f4a_7c15_u64 ^ seed.rotate_left(17) | 1);
    (x as u64) ^ ((x >> 64) as u64)
}

/// Which of two records with the same uin wins: the later stamp; for equal
/// stamps (the same write, or a forged copy) the larger digest, so every
/// replica picks the same one whatever the order they arrive in.
fn wins(new_stamp: Stamp, new_digest: u64, old_stamp: Stamp, old_digest: u64) -> bool {
    match new_stamp.cmp(&old_stamp) {
        Ordering::Greater => true,
        Ordering::Less => false,
        Ordering::Equal => new_digest > old_digest,
    }
}

/// What a local write turns into, before it is stamped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Planned {
    /// The write changes nothing.
    Nothing,
    /// The member's new state.
    Put(MemberState),
    /// The same state, written again with a fresh stamp.
    Restamp(MemberState),
    /// The member leaves.
    Remove,
}

/// Limits a room enforces on local writes.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RoomLimits {
    pub(crate) max_attrs: usize,
    pub(crate) max_members: u32,
    /// Replicated rooms write an unchanged entry again (see `WriteOp::Enter`).
    pub(crate) restamp_entries: bool,
}

/// One room. See the module docs.
#[derive(Debug)]
pub(crate) struct Room {
    recs: Vec<Rec>,
    free: Vec<u32>,
    index: HashTable<u32>,
    seed: u64,
    lists: [OrderedList; RANKS],
    attrs: Vec<Bytes>,
    attrs_free: Vec<u32>,
    counts: Counts,
    tombstones: u32,
    epoch: u64,
    version: u64,
    /// (version, uin) of the latest changes, oldest first.
    log: VecDeque<(u64, u64)>,
    log_cap: usize,
    digest: u64,
    pub(crate) seat_limit: Option<u32>,
    /// Ids of the latest batches applied (allocated on the first batch).
    batches: VecDeque<u64>,
    /// The store's clock in seconds, set before each locked operation.
    now_secs: u32,
}

impl Room {
    pub(crate) fn new(seed: u64, epoch: u64, log_cap: usize) -> Room {
        Room {
            recs: Vec::new(),
            free: Vec::new(),
            index: HashTable::new(),
            seed,
            lists: Default::default(),
            attrs: Vec::new(),
            attrs_free: Vec::new(),
            counts: Counts::default(),
            tombstones: 0,
            epoch,
            version: 0,
            log: VecDeque::new(),
            log_cap,
            digest: 0,
            seat_limit: None,
            batches: VecDeque::new(),
            now_secs: 0,
        }
    }

    fn hash(&self, uin: u64) -> u64 {
        fold_hash(uin, self.seed)
    }

    fn find(&self, uin: u64) -> Option<u32> {
        let recs = &self.recs;
        self.index.find(self.hash(uin), |&s| recs.get(s as usize).is_some_and(|r| r.uin() == uin)).copied()
    }

    /// Members present.
    pub(crate) fn present(&self) -> u32 {
        self.counts.total
    }

    pub(crate) fn tombstones(&self) -> u32 {
        self.tombstones
    }

    /// Nothing worth keeping: no member, no tombstone, no seat limit.
    pub(crate) fn is_empty(&self) -> bool {
        self.counts.total == 0 && self.tombstones == 0 && self.seat_limit.is_none()
    }

    pub(crate) fn counts(&self) -> &Counts {
        &self.counts
    }

    pub(crate) fn digest(&self) -> u64 {
        self.digest
    }

    pub(crate) fn position(&self) -> FeedPosition {
        FeedPosition { epoch: self.epoch, version: self.version }
    }

    fn attrs_of(&self, rec: &Rec) -> Bytes {
        if rec.attrs == NIL { Bytes::new() } else { self.attrs.get(rec.attrs as usize).cloned().unwrap_or_default() }
    }

    fn row_of(&self, rec: &Rec) -> MemberRow {
        MemberRow {
            uin: Uin(rec.uin()),
            role: rec.role(),
            terminals: rec.terminals(),
            joined: Timestamp::from_micros(rec.joined()),
            attrs: self.attrs_of(rec),
        }
    }

    fn state_of(&self, rec: &Rec) -> MemberState {
        MemberState {
            role: rec.role(),
            terminals: rec.terminals(),
            joined: Timestamp::from_micros(rec.joined()),
            attrs: self.attrs_of(rec),
        }
    }

    /// Whether a member is present.
    pub(crate) fn contains(&self, uin: Uin) -> bool {
        self.find(uin.0).and_then(|s| self.recs.get(s as usize)).is_some_and(Rec::is_live)
    }

    /// A present member.
    pub(crate) fn get(&self, uin: Uin) -> Option<MemberRow> {
        let rec = self.recs.get(self.find(uin.0)? as usize)?;
        rec.is_live().then(|| self.row_of(rec))
    }

    /// A member's record, tombstones included.
    pub(crate) fn record(&self, uin: Uin) -> Option<Record> {
        let rec = self.recs.get(self.find(uin.0)? as usize)?;
        Some(Record { uin, stamp: rec.stamp(), state: rec.is_live().then(|| self.state_of(rec)) })
    }

    /// Every record (members and tombstones), in slot order.
    pub(crate) fn records(&self) -> impl Iterator<Item = Record> + '_ {
        self.recs.iter().filter(|r| r.role != FREE).map(|r| Record {
            uin: Uin(r.uin()),
            stamp: r.stamp(),
            state: r.is_live().then(|| self.state_of(r)),
        })
    }

    /// A copy of the records, taken under the room's lock (a memory copy)
    /// to encode outside it.
    /// Copies the records into `into`, whose buffers the caller sized
    /// (and so faulted in) before taking the lock: under the lock this is
    /// a plain memory copy.
    pub(crate) fn freeze_into(&self, into: &mut FrozenRoom) {
        into.recs.clear();
        into.recs.extend_from_slice(&self.recs);
        into.attrs.clear();
        into.attrs.extend_from_slice(&self.attrs);
        into.seat_limit = self.seat_limit;
    }

    /// Record and attribute slots, to size a [`FrozenRoom`] before locking.
    pub(crate) fn slots(&self) -> (usize, usize) {
        (self.recs.len(), self.attrs.len())
    }

    /// Records whose uin falls in `bucket` of `buckets` (by stable hash).
    pub(crate) fn records_in(&self, buckets: &[u8], of: u8) -> Vec<Record> {
        self.records().filter(|r| buckets.contains(&bucket_of(r.uin.0, of))).collect()
    }

    /// The digest of each of `of` buckets of live members (by stable hash).
    pub(crate) fn bucket_digests(&self, of: u8) -> Vec<u64> {
        let mut out = vec![0u64; usize::from(of.max(1))];
        for r in self.recs.iter().filter(|r| r.is_live()) {
            let d = record_digest(r.uin(), r.stamp(), &self.state_of(r));
            let b = usize::from(bucket_of(r.uin(), of));
            out[b] = out[b].wrapping_add(d);
        }
        out
    }

    /// What `op` would do to the current state. Validates the op.
    pub(crate) fn plan(&self, op: &WriteOp, now: Timestamp, limits: RoomLimits) -> Result<Planned, StoreError> {
        let check_attrs = |attrs: &Option<Bytes>| match attrs {
            Some(a) if a.len() > limits.max_attrs => {
                Err(StoreError::AttrsTooLarge { len: a.len(), max: limits.max_attrs })
            }
            _ => Ok(()),
        };
        let uin = op.uin();
        let current = self.find(uin.0).and_then(|s| self.recs.get(s as usize)).filter(|r| r.is_live());
        let current = current.map(|r| self.state_of(r));
        Ok(match (op, current) {
            (WriteOp::Enter { role, terminal, attrs, .. }, Some(state)) => {
                check_attrs(attrs)?;
                let mut next = state.clone();
                next.role = *role;
                next.terminals.insert(*terminal);
                if let Some(a) = attrs {
                    next.attrs = a.clone();
                }
                if next != state {
                    Planned::Put(next)
                } else if limits.restamp_entries {
                    Planned::Restamp(next)
                } else {
                    Planned::Nothing
                }
            }
            (WriteOp::Assert { terminal, .. }, Some(state)) => {
                let mut next = state.clone();
                if next.terminals.insert(*terminal) { Planned::Put(next) } else { Planned::Nothing }
            }
            (WriteOp::Assert { uin, role, terminal }, None) => {
                return self.plan(
                    &WriteOp::Enter { uin: *uin, role: *role, terminal: *terminal, attrs: None },
                    now,
                    limits,
                );
            }
            (WriteOp::Enter { role, terminal, attrs, .. }, None) => {
                check_attrs(attrs)?;
                if self.counts.total >= limits.max_members {
                    return Err(StoreError::RoomAtCapacity { max: limits.max_members });
                }
                if let Some(limit) = self.seat_limit
                    && self.counts.total >= limit
                {
                    return Err(StoreError::RoomFull { limit });
                }
                Planned::Put(MemberState {
                    role: *role,
                    terminals: TerminalSet::only(*terminal),
                    joined: now,
                    attrs: attrs.clone().unwrap_or_default(),
                })
            }
            (WriteOp::Exit { terminal, .. }, Some(mut state)) => {
                if !state.terminals.remove(*terminal) {
                    Planned::Nothing
                } else if state.terminals.is_empty() {
                    Planned::Remove
                } else {
                    Planned::Put(state)
                }
            }
            (WriteOp::Remove { .. }, Some(_)) => Planned::Remove,
            (WriteOp::Update { role, attrs, .. }, Some(state)) => {
                check_attrs(attrs)?;
                let mut next = state.clone();
                if let Some(r) = role {
                    next.role = *r;
                }
                if let Some(a) = attrs {
                    next.attrs = a.clone();
                }
                if next == state { Planned::Nothing } else { Planned::Put(next) }
            }
            (WriteOp::Exit { .. } | WriteOp::Remove { .. } | WriteOp::Update { .. }, None) => {
                return Err(StoreError::NotPresent(uin));
            }
        })
    }

    fn alloc_attrs(&mut self, attrs: &Bytes) -> u32 {
        if attrs.is_empty() {
            return NIL;
        }
        if let Some(i) = self.attrs_free.pop() {
            self.attrs[i as usize] = attrs.clone();
            return i;
        }
        self.attrs.push(attrs.clone());
        (self.attrs.len() - 1) as u32
    }

    fn free_attrs(&mut self, i: u32) {
        if let Some(a) = self.attrs.get_mut(i as usize) {
            *a = Bytes::new();
            self.attrs_free.push(i);
        }
    }

    /// Takes a live record out of the list, counts and digest.
    fn unindex_live(&mut self, slot: u32) {
        let rec = self.recs[slot as usize];
        let state = self.state_of(&rec);
        self.digest = self.digest.wrapping_sub(record_digest(rec.uin(), rec.stamp(), &state));
        self.counts.add(state.role, state.terminals, -1);
        let recs = &self.recs;
        self.lists[usize::from(state.role.rank())].remove((rec.joined(), rec.uin()), |s| recs[s as usize].uin());
        if rec.attrs != NIL {
            self.free_attrs(rec.attrs);
        }
    }

    /// Merges `record` (LWW). Returns whether it changed anything stored.
    /// `tombstones`: replicated rooms keep a tombstone for a member that
    /// left, at most this many (the oldest half go when a churn storm
    /// passes it), so a late copy of an older write cannot bring it back.
    pub(crate) fn merge(&mut self, record: &Record, tombstones: Option<u32>) -> bool {
        let uin = record.uin.0;
        let new_digest = record.state.as_ref().map_or(0, |s| record_digest(uin, record.stamp, s));
        let existing = self.find(uin);
        if let Some(slot) = existing {
            let old = self.recs[slot as usize];
            let old_digest = if old.is_live() { record_digest(uin, old.stamp(), &self.state_of(&old)) } else { 0 };
            if !wins(record.stamp, new_digest, old.stamp(), old_digest) {
                return false;
            }
            if old.is_live() {
                self.unindex_live(slot);
            } else {
                self.tombstones -= 1;
            }
        }
        let was_live = existing.is_some_and(|s| self.recs[s as usize].is_live());
        match &record.state {
            Some(state) => {
                let slot = existing.unwrap_or_else(|| self.alloc_slot(uin));
                let attrs = self.alloc_attrs(&state.attrs);
                self.recs[slot as usize] = Rec {
                    uin,
                    joined: state.joined.as_micros(),
                    hlc: record.stamp.hlc,
                    seen: self.now_secs,
                    attrs,
                    origin: record.stamp.origin,
                    role: state.role.bit() as u8,
                    state: LIVE | (state.terminals.bits() as u8 & TERMINAL_BITS),
                };
                self.digest = self.digest.wrapping_add(new_digest);
                self.counts.add(state.role, state.terminals, 1);
                let recs = &self.recs;
                self.lists[usize::from(state.role.rank())]
                    .insert((state.joined.as_micros(), uin), slot, |s| recs[s as usize].uin());
                self.note_change(uin);
            }
            None if let Some(cap) = tombstones => {
                let slot = existing.unwrap_or_else(|| self.alloc_slot(uin));
                self.recs[slot as usize] =
                    Rec { uin, hlc: record.stamp.hlc, origin: record.stamp.origin, attrs: NIL, ..Rec::default() };
                self.tombstones += 1;
                if was_live {
                    self.note_change(uin);
                }
                if self.tombstones > cap.max(1) {
                    self.drop_oldest_tombstones(cap.max(1) / 2);
                }
            }
            None => {
                if let Some(slot) = existing {
                    self.release_slot(slot, uin);
                }
                if was_live {
                    self.note_change(uin);
                }
            }
        }
        true
    }

    fn alloc_slot(&mut self, uin: u64) -> u32 {
        let slot = match self.free.pop() {
            Some(s) => s,
            None => {
                if self.recs.len() == self.recs.capacity() {
                    // A quarter more, not twice: a churning room's slab
                    // keeps growing until its tombstones' window is full
                    // (ten minutes), and doubling would leave up to half
                    // of it idle for good.
                    self.recs.reserve_exact((self.recs.len() / 4).max(16));
                }
                self.recs.push(Rec::default());
                (self.recs.len() - 1) as u32
            }
        };
        self.recs[slot as usize].uin = uin;
        let (recs, seed) = (&self.recs, self.seed);
        let rehash = |&s: &u32| fold_hash(recs[s as usize].uin(), seed);
        let hash = self.hash(uin);
        self.index.insert_unique(hash, slot, rehash);
        slot
    }

    fn release_slot(&mut self, slot: u32, uin: u64) {
        if let Ok(entry) = self.index.find_entry(self.hash(uin), |&s| s == slot) {
            entry.remove();
        }
        self.recs[slot as usize] = Rec { attrs: NIL, role: FREE, ..Rec::default() };
        self.free.push(slot);
    }

    fn note_change(&mut self, uin: u64) {
        self.version += 1;
        if self.log_cap == 0 {
            return;
        }
        if self.log.len() >= self.log_cap {
            self.log.pop_front();
        }
        self.log.push_back((self.version, uin));
    }

    /// The time, for what follows (0: unknown, as on restore).
    pub(crate) fn set_now(&mut self, now: Timestamp) {
        self.now_secs = u32::try_from(now.as_millis() / 1_000).unwrap_or(u32::MAX);
    }

    /// A present member was asserted now (no write needed).
    pub(crate) fn touch(&mut self, uin: Uin) {
        if let Some(slot) = self.find(uin.0)
            && let Some(rec) = self.recs.get_mut(slot as usize)
            && rec.is_live()
        {
            rec.seen = self.now_secs;
        }
    }

    /// Present members not asserted for more than `lease_secs`. A member
    /// never seen here yet (restored from a snapshot) starts its lease now.
    pub(crate) fn expired(&mut self, lease_secs: u32) -> Vec<Uin> {
        let now = self.now_secs;
        let mut out = Vec::new();
        for rec in self.recs.iter_mut().filter(|r| r.is_live()) {
            if rec.seen == 0 {
                rec.seen = now;
            } else if now.saturating_sub(rec.seen) > lease_secs {
                out.push(Uin(rec.uin()));
            }
        }
        out
    }

    /// Records that batch `id` is being applied; false if it already was.
    pub(crate) fn note_batch(&mut self, id: u64) -> bool {
        if self.batches.contains(&id) {
            return false;
        }
        if self.batches.len() >= 64 {
            self.batches.pop_front();
        }
        self.batches.push_back(id);
        true
    }

    /// Keeps only the `keep` newest tombstones (about: ties at the cut
    /// stay). Dropping half at a time costs a scan per half a cap of exits.
    /// A member whose tombstone went early can be brought back only by a
    /// late copy of an entry older than it; its lease then ends it.
    fn drop_oldest_tombstones(&mut self, keep: u32) {
        let mut stamps: Vec<u64> =
            self.recs.iter().filter(|r| !r.is_live() && r.role != FREE).map(|r| r.stamp().hlc).collect();
        let drop = stamps.len().saturating_sub(keep as usize);
        if drop == 0 {
            return;
        }
        let (_, cut, _) = stamps.select_nth_unstable(drop);
        let horizon = *cut;
        self.gc(horizon);
    }

    /// Drops tombstones stamped before `horizon`. Returns how many.
    pub(crate) fn gc(&mut self, horizon: u64) -> usize {
        let dead: Vec<(u32, u64)> = self
            .recs
            .iter()
            .enumerate()
            .filter(|(_, r)| !r.is_live() && r.role != FREE && r.stamp().hlc < horizon)
            .map(|(s, r)| (s as u32, r.uin()))
            .collect();
        for &(slot, uin) in &dead {
            self.release_slot(slot, uin);
            self.tombstones -= 1;
        }
        dead.len()
    }

    /// A page of members in listing order.
    pub(crate) fn page(&self, query: &PageQuery, out: &mut Vec<MemberRow>) -> Result<PageInfo, StoreError> {
        if query.limit == 0 || query.limit > PageQuery::MAX_LIMIT {
            return Err(StoreError::BadLimit(query.limit));
        }
        out.clear();
        let all_terminals = query.terminals.bits() & TerminalSet::all().bits() == TerminalSet::all().bits();
        let role_bits = query.roles.bits();
        let mut skip = match query.start {
            PageStart::Offset(n) => n,
            _ => 0,
        };
        let mut last: Option<Cursor> = None;
        for (rank, &rank_bits) in RANK_ROLE_BITS.iter().enumerate() {
            if role_bits & rank_bits == 0 {
                continue;
            }
            let whole_rank = all_terminals && role_bits & rank_bits == rank_bits;
            let list = &self.lists[rank];
            let iter = match query.start {
                PageStart::After(c) if usize::from(c.rank()) > rank => continue,
                PageStart::After(c) if usize::from(c.rank()) == rank => {
                    list.iter_after(c.key(), |s| self.recs[s as usize].uin())
                }
                _ if whole_rank && skip > 0 => {
                    if skip >= list.len() {
                        skip -= list.len();
                        continue;
                    }
                    let from = skip;
                    skip = 0;
                    list.iter_from(from)
                }
                _ => list.iter(),
            };
            for (_, slot) in iter {
                let Some(rec) = self.recs.get(slot as usize) else { continue };
                if !whole_rank
                    && (role_bits & (1u64 << rec.role) == 0
                        || u64::from(rec.state & TERMINAL_BITS) & query.terminals.bits() == 0)
                {
                    continue;
                }
                if skip > 0 {
                    skip -= 1;
                    continue;
                }
                out.push(self.row_of(rec));
                if out.len() == query.limit {
                    last = Some(Cursor::new(rank as u8, rec.joined(), rec.uin()));
                    break;
                }
            }
            if last.is_some() {
                break;
            }
        }
        Ok(PageInfo { next: last, version: self.position() })
    }

    /// What changed since `since`.
    pub(crate) fn changes_since(&self, since: FeedPosition) -> ChangeSet {
        let now = self.position();
        let oldest_known = self.log.front().map_or(self.version, |&(v, _)| v - 1);
        if since.epoch != self.epoch || since.version > self.version || since.version < oldest_known {
            return ChangeSet::Resync { now };
        }
        let first = self.log.partition_point(|&(v, _)| v <= since.version);
        let mut uins: Vec<u64> = self.log.range(first..).map(|&(_, u)| u).collect();
        uins.sort_unstable();
        uins.dedup();
        let (mut upserts, mut removed) = (Vec::new(), Vec::new());
        for uin in uins {
            match self.get(Uin(uin)) {
                Some(row) => upserts.push(row),
                None => removed.push(Uin(uin)),
            }
        }
        ChangeSet::Delta { now, upserts, removed }
    }

    /// Every present member in listing order.
    pub(crate) fn rows(&self) -> impl Iterator<Item = MemberRow> + '_ {
        self.lists.iter().flat_map(|l| l.iter()).filter_map(|(_, s)| self.recs.get(s as usize)).map(|r| self.row_of(r))
    }

    /// Heap bytes held, for memory reports.
    pub(crate) fn heap_bytes(&self) -> usize {
        self.recs.capacity() * std::mem::size_of::<Rec>()
            + self.free.capacity() * 4
            + self.index.capacity() * 5
            + self.lists.iter().map(OrderedList::heap_bytes).sum::<usize>()
            + self.attrs.capacity() * std::mem::size_of::<Bytes>()
            + self.attrs.iter().map(Bytes::len).sum::<usize>()
            + self.attrs_free.capacity() * 4
            + self.log.capacity() * 16
            + self.counts.custom.capacity() * 8
    }
}

/// The anti-entropy bucket of a uin: a stable function, the same on every
/// replica.
pub(crate) fn bucket_of(uin: u64, of: u8) -> u8 {
    (room_core::stable_hash(&uin.to_le_bytes()) % u64::from(of.max(1))) as u8
}

/// A room's records copied out of its lock, for a snapshot. One buffer
/// serves every room of a dump.
#[derive(Debug, Default)]
pub(crate) struct FrozenRoom {
    recs: Vec<Rec>,
    attrs: Vec<Bytes>,
    seat_limit: Option<u32>,
}

impl FrozenRoom {
    /// Grows the buffers to hold `slots` (touching the memory now, outside
    /// any lock, so the copy under the lock does not fault pages in).
    pub(crate) fn reserve(&mut self, (recs, attrs): (usize, usize)) {
        if self.recs.len() < recs {
            self.recs.resize(recs + recs / 8, Rec::default());
        }
        if self.attrs.len() < attrs {
            self.attrs.resize(attrs + attrs / 8, Bytes::new());
        }
    }

    pub(crate) fn seat_limit(&self) -> Option<u32> {
        self.seat_limit
    }

    /// Appends every record in the snapshot encoding; returns how many.
    pub(crate) fn encode_records(&self, out: &mut Vec<u8>) -> u32 {
        let mut n = 0u32;
        out.reserve(self.recs.len() * 30);
        for r in self.recs.iter().filter(|r| r.role != FREE) {
            out.extend_from_slice(&r.uin().to_le_bytes());
            out.extend_from_slice(&r.stamp().hlc.to_le_bytes());
            out.extend_from_slice(&r.origin.to_le_bytes());
            if r.is_live() {
                out.push(1);
                out.push(r.role);
                out.push(r.state & TERMINAL_BITS);
                out.extend_from_slice(&r.joined().to_le_bytes());
                let attrs =
                    if r.attrs == NIL { &[][..] } else { self.attrs.get(r.attrs as usize).map_or(&[][..], |a| &a[..]) };
                // Attributes are capped far below 64 KiB by configuration.
                let len = attrs.len().min(usize::from(u16::MAX));
                out.extend_from_slice(&(len as u16).to_le_bytes());
                out.extend_from_slice(&attrs[..len]);
            } else {
                out.push(0);
            }
            n += 1;
        }
        n
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(uin: u64, hlc: u64) -> Record {
        let state = MemberState {
            role: Role::Student,
            terminals: TerminalSet::all(),
            joined: Timestamp::from_millis(hlc),
            attrs: Bytes::new(),
        };
        Record { uin: Uin(uin), stamp: Stamp { hlc, origin: 1 }, state: Some(state) }
    }

    fn exit(uin: u64, hlc: u64) -> Record {
        Record { uin: Uin(uin), stamp: Stamp { hlc, origin: 1 }, state: None }
    }

    /// A room where everyone keeps leaving and others take their places
    /// holds at most its cap of tombstones, the newest ones, and never
    /// touches who is present.
    #[test]
    fn a_churning_room_keeps_at_most_its_cap_of_tombstones_the_newest() {
        const CAP: u32 = 100;
        let mut room = Room::new(7, 1, 0);
        let mut hlc = 1;
        for uin in 0..10 {
            assert!(room.merge(&entry(1_000_000 + uin, hlc), Some(CAP)));
            hlc += 1;
        }
        for uin in 0..5_000u64 {
            assert!(room.merge(&entry(uin, hlc), Some(CAP)));
            assert!(room.merge(&exit(uin, hlc + 1), Some(CAP)));
            hlc += 2;
            assert!(room.tombstones() <= CAP, "{} tombstones after {uin}", room.tombstones());
        }
        assert!(room.tombstones() >= CAP / 2, "the newest half at least are kept");
        assert_eq!(room.present(), 10, "present members are untouched");
        // The newest exits still win over late copies of their entries.
        assert!(!room.merge(&entry(4_999, 1), Some(CAP)), "a late entry cannot bring the member back");
        assert!(!room.contains(Uin(4_999)));
        // Slots are reused: memory follows the cap, not the churn.
        assert!(room.recs.len() <= (CAP + 10 + 1) as usize, "{} slots", room.recs.len());
    }
}
