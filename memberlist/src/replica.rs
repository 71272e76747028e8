//! Multi-master replication of member lists (sans-IO).
//!
//! Each room is owned by R replicas: the first R of the room-core router's
//! successors for the room key over the live member-list nodes. Any owner
//! takes writes. A write is stamped by the owner's hybrid logical clock
//! and sent to the other owners as the member's whole new record (state-
//! based, so duplicates and reordering are harmless); every replica keeps,
//! per member, the record with the largest stamp, and a tombstone for a
//! member who left so that a late copy of an older write cannot bring it
//! back. Tombstones are dropped after [`ReplicaConfig::tombstone_ttl`],
//! and the oldest half of a room's go early when they outnumber the
//! members it may hold ([`StoreConfig::max_room_members`](crate::StoreConfig::max_room_members)), so a room
//! that churns for ten minutes stays bounded.
//!
//! # Anti-entropy
//!
//! Every [`ReplicaConfig::anti_entropy_interval`] a replica sends each peer
//! the digests of the rooms they share (a digest is a wrapping sum of a
//! stable hash of every live member's record, kept up to date by each
//! write, so it costs nothing to read). The peer answers with per-bucket
//! digests of the rooms that differ; the first replica sends the records
//! of the buckets that differ and asks for the peer's; the peer merges and
//! answers with its own. One round (two round trips) makes two replicas
//! equal. A round that repaired anything is followed at once by another,
//! which carries what one peer brought in on to the others, so a replica
//! that was partitioned away is equal to every other one after the first
//! round that reaches it. A replica that holds a room it no longer owns
//! hands its records to the owners and drops it.
//!
//! An exit or remove taken by an owner that has not yet seen the member
//! (its entry went to another owner and has not arrived) is recorded all
//! the same, as a tombstone stamped now, and reported
//! [`WriteOutcome::Unchanged`]: the exit then wins over the late entry
//! instead of being lost. (State is per member, so such a blind exit of
//! one terminal ends the member on every terminal; heartbeats re-assert
//! the others.)
//!
//! # Heartbeat repair
//!
//! The heartbeat service re-asserts presence (an enter of a member who is
//! already present changes nothing, so it is cheap): a write lost with its
//! replica is healed within one heartbeat interval.
//!
//! With [`ReplicaConfig::lease`] set, the room's primary also removes
//! members that nothing has asserted for that long: this heals an exit
//! that was lost (say, taken by a replica that crashed before passing it
//! on), which re-assertion alone cannot. The heartbeat service must then
//! assert every present member at the room's primary at least once per
//! lease.
//!
//! # Checked joins
//!
//! A room with a seat limit admits new members only through
//! [`Replica::join_checked`]. The room's primary owner (the first
//! successor) decides alone; it confirms an admission only once a majority
//! of the room's owners hold it, and a replica that has just become
//! primary (any change of the node set) refuses checked joins with
//! [`StoreError::NotReady`](crate::StoreError) until it has completed an anti-entropy round
//! with every other node. So the seat count a primary sees always includes
//! every confirmed admission, and the limit is never exceeded. An
//! admission that does not reach a majority in time is rolled back.
//!
//! # Driving it
//!
//! Inputs: [`MemberStore`] writes, [`Replica::join_checked`],
//! [`Replica::handle_message`], [`Replica::handle_timeout`],
//! [`Replica::set_nodes`]. Outputs: [`Replica::poll_transmit`] (messages to
//! peers), [`Replica::poll_event`] (join results), and
//! [`Replica::poll_timeout`] (the next wake-up).

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::time::Duration;

use bytes::Bytes;
use parking_lot::Mutex;
use room_core::{MemberKey, NodeId, Role, RoomKey, Router, RouterConfig, RouterError, Terminal, Timestamp};

use crate::batch::WriteBatch;
use crate::hlc::Stamp;
use crate::member::{
    ChangeSet, Counts, FeedPosition, MemberRow, PageInfo, PageQuery, StoreError, WriteOp, WriteOutcome,
};
use crate::room::Record;
use crate::store::{LocalStore, MemberStore, StoreConfig};

/// Replica settings. Every replica of a cluster must use the same
/// `replicas`, `router` and `digest_buckets`.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ReplicaConfig {
    /// This node.
    pub node: NodeId,
    /// Owners per room (default 3).
    pub replicas: usize,
    /// The store's settings.
    pub store: StoreConfig,
    /// The router's settings (must match on every replica).
    pub router: RouterConfig,
    /// Time between anti-entropy rounds (default 1 s).
    pub anti_entropy_interval: Duration,
    /// How long tombstones are kept (default 10 min). A replica cut off for
    /// longer than this may bring back members who left meanwhile, until
    /// heartbeats stop re-asserting them. A room keeps at most
    /// [`StoreConfig::max_room_members`](crate::StoreConfig::max_room_members) tombstones whatever their age.
    pub tombstone_ttl: Duration,
    /// Buckets per room for anti-entropy repair (default 32).
    pub digest_buckets: u8,
    /// How long a checked join waits for its majority (default 2 s).
    pub join_timeout: Duration,
    /// Members not asserted (entered, re-asserted by the heartbeat service,
    /// or replicated) at the room's primary for this long are removed by
    /// it (default `None`: never). With heartbeats every 20 s, three
    /// intervals (60 s) heals an exit lost with a crashed replica.
    pub lease: Option<Duration>,
}

impl ReplicaConfig {
    /// Defaults for `node`.
    pub fn new(node: NodeId) -> ReplicaConfig {
        ReplicaConfig {
            node,
            replicas: 3,
            store: StoreConfig::default(),
            router: RouterConfig::new(),
            anti_entropy_interval: Duration::from_secs(1),
            tombstone_ttl: Duration::from_secs(600),
            digest_buckets: 32,
            join_timeout: Duration::from_secs(2),
            lease: None,
        }
    }
}

/// A message between replicas. With the `serde` feature it serialises;
/// the host carries it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[non_exhaustive]
pub enum ReplMsg {
    /// New records of a room, from the owner that took the writes. With
    /// `ack`, the receiver answers [`ReplMsg::Ack`] (a checked join waits
    /// for a majority).
    Writes {
        /// The room.
        room: RoomKey,
        /// The records.
        records: Vec<Record>,
        /// Answer with this id once merged.
        ack: Option<u64>,
    },
    /// The records of a [`ReplMsg::Writes`] with `ack` are merged.
    Ack {
        /// The id.
        id: u64,
    },
    /// Anti-entropy: the sender's digests of the rooms both share.
    Digests {
        /// The sender's round.
        round: u64,
        /// (room, digest) pairs.
        rooms: Vec<(RoomKey, u64)>,
    },
    /// Anti-entropy: the rooms whose digests differ, with the answering
    /// replica's bucket digests.
    DigestReply {
        /// The round answered.
        round: u64,
        /// (room, digest per bucket).
        differing: Vec<(RoomKey, Vec<u64>)>,
    },
    /// Anti-entropy: records of the buckets that differ; the receiver
    /// merges them and answers with its records of `pull`.
    Repair {
        /// The round.
        round: u64,
        /// The room.
        room: RoomKey,
        /// The sender's records of the differing buckets.
        records: Vec<Record>,
        /// Buckets whose records the sender wants.
        pull: Vec<u8>,
    },
    /// Anti-entropy: the answer to [`ReplMsg::Repair`].
    RepairReply {
        /// The round.
        round: u64,
        /// The room.
        room: RoomKey,
        /// The records asked for.
        records: Vec<Record>,
    },
    /// A checked join forwarded to the room's primary.
    JoinRequest {
        /// The forwarder's ticket.
        ticket: u64,
        /// Who.
        member: MemberKey,
        /// Its role.
        role: Role,
        /// Its terminal.
        terminal: Terminal,
        /// Its attributes.
        attrs: Option<Bytes>,
    },
    /// The primary's decision on a forwarded checked join.
    JoinReply {
        /// The forwarder's ticket.
        ticket: u64,
        /// Admitted, or why not.
        result: Result<WriteOutcome, StoreError>,
    },
    /// A room's seat limit, from the owner that set it.
    SeatLimit {
        /// The room.
        room: RoomKey,
        /// The limit, or none.
        limit: Option<u32>,
    },
}

/// A checked join's handle; its result comes as [`ReplicaEvent::Joined`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct JoinTicket(pub u64);

/// What a replica reports to its host.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ReplicaEvent {
    /// A checked join was decided.
    Joined {
        /// The ticket [`Replica::join_checked`] returned.
        ticket: JoinTicket,
        /// Who.
        member: MemberKey,
        /// Admitted, or why not.
        result: Result<WriteOutcome, StoreError>,
    },
    /// The replica completed an anti-entropy round with every peer since
    /// the node set last changed: it now decides checked joins.
    Ready,
}

/// Counters, for the host's metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct ReplicaStats {
    /// Records sent in writes.
    pub records_sent: u64,
    /// Records merged that changed something.
    pub records_applied: u64,
    /// Records refused (invalid, or stamped implausibly far ahead).
    pub records_rejected: u64,
    /// Messages about rooms this replica does not own, ignored.
    pub foreign_messages: u64,
    /// Rooms repaired by anti-entropy.
    pub rooms_repaired: u64,
    /// Anti-entropy rounds completed with every peer.
    pub rounds_completed: u64,
    /// Tombstones dropped.
    pub tombstones_dropped: u64,
    /// Members removed because their lease ran out.
    pub members_expired: u64,
}

#[derive(Debug)]
struct PendingAdmission {
    member: MemberKey,
    ticket: JoinTicket,
    /// Forwarded from this node (answer by message), or local (event).
    reply_to: Option<NodeId>,
    acks: usize,
    needed: usize,
    deadline: Timestamp,
    /// Reported once a majority holds it.
    outcome: WriteOutcome,
}

#[derive(Debug)]
struct PendingForward {
    member: MemberKey,
    deadline: Timestamp,
}

#[derive(Debug, Default)]
struct Round {
    id: u64,
    /// Peers that have not yet answered the digests, or whose repairs are
    /// still outstanding: peer -> rooms awaiting a repair reply.
    waiting: BTreeMap<NodeId, Option<BTreeSet<RoomKey>>>,
    /// Rooms this round changed here.
    repaired: u64,
}

#[derive(Debug)]
struct Inner {
    router: Router,
    outbox: VecDeque<(NodeId, ReplMsg)>,
    events: VecDeque<ReplicaEvent>,
    next_round_at: Option<Timestamp>,
    round: Round,
    /// Rounds completed since the node set last changed.
    ready: bool,
    next_id: u64,
    admissions: BTreeMap<u64, PendingAdmission>,
    forwards: BTreeMap<u64, PendingForward>,
    stats: ReplicaStats,
    now: Timestamp,
}

/// One member-list replica. See the module docs.
#[derive(Debug)]
pub struct Replica {
    config: ReplicaConfig,
    store: LocalStore,
    inner: Mutex<Inner>,
}

impl Replica {
    /// A replica with no peers yet: call [`Replica::set_nodes`].
    pub fn new(config: ReplicaConfig) -> Replica {
        let origin = room_core::stable_hash(&config.node.0.to_le_bytes()) as u16;
        let store = LocalStore::with_origin(config.store.clone(), origin, true);
        let router = Router::new(config.router);
        Replica {
            store,
            inner: Mutex::new(Inner {
                router,
                outbox: VecDeque::new(),
                events: VecDeque::new(),
                next_round_at: None,
                round: Round::default(),
                ready: false,
                next_id: 1,
                admissions: BTreeMap::new(),
                forwards: BTreeMap::new(),
                stats: ReplicaStats::default(),
                now: Timestamp::ZERO,
            }),
            config,
        }
    }

    /// This node.
    pub fn node(&self) -> NodeId {
        self.config.node
    }

    /// The local store (reads; writes go through the replica).
    pub fn store(&self) -> &LocalStore {
        &self.store
    }

    /// Counters.
    pub fn stats(&self) -> ReplicaStats {
        self.inner.lock().stats
    }

    /// Whether checked joins are decided here now (see the module docs).
    pub fn is_ready(&self) -> bool {
        self.inner.lock().ready
    }

    /// The live member-list nodes (with weights). Rooms move to their new
    /// owners through anti-entropy; checked joins wait for a full round.
    pub fn set_nodes(&self, nodes: impl IntoIterator<Item = (NodeId, u32)>) -> Result<(), RouterError> {
        let mut inner = self.inner.lock();
        inner.router.set_nodes(nodes)?;
        inner.ready = inner.router.len() == 1 && inner.router.contains(self.config.node);
        inner.round = Round::default();
        inner.next_round_at = Some(inner.now);
        Ok(())
    }

    /// The owners of a room, primary first.
    pub fn owners(&self, room: RoomKey) -> Vec<NodeId> {
        owners(&self.inner.lock().router, room, self.config.replicas)
    }

    fn is_owner(inner: &Inner, room: RoomKey, node: NodeId, replicas: usize) -> bool {
        owners(&inner.router, room, replicas).contains(&node)
    }

    /// Sets a room's seat limit (on an owner); the other owners learn it.
    pub fn set_seat_limit(&self, room: RoomKey, limit: Option<u32>) -> Result<(), StoreError> {
        let mut inner = self.inner.lock();
        let owners = owners(&inner.router, room, self.config.replicas);
        if !owners.contains(&self.config.node) {
            return Err(StoreError::NotOwner { room });
        }
        self.store.set_seat_limit(room, limit)?;
        for peer in owners.into_iter().filter(|&n| n != self.config.node) {
            inner.outbox.push_back((peer, ReplMsg::SeatLimit { room, limit }));
        }
        Ok(())
    }

    /// Admits `member` into a room with a seat limit (or any room) through
    /// the room's primary owner. The result comes as
    /// [`ReplicaEvent::Joined`] with the returned ticket.
    pub fn join_checked(
        &self,
        now: Timestamp,
        member: MemberKey,
        role: Role,
        terminal: Terminal,
        attrs: Option<Bytes>,
    ) -> JoinTicket {
        let mut inner = self.inner.lock();
        inner.now = inner.now.max(now);
        let ticket = JoinTicket(inner.next_id);
        inner.next_id += 1;
        let room = member.room_key();
        let owners = owners(&inner.router, room, self.config.replicas);
        match owners.first() {
            Some(&primary) if primary == self.config.node => {
                self.admit(&mut inner, now, member, role, terminal, attrs, ticket, None);
            }
            Some(&primary) => {
                let deadline = now + self.config.join_timeout;
                inner.forwards.insert(ticket.0, PendingForward { member, deadline });
                inner
                    .outbox
                    .push_back((primary, ReplMsg::JoinRequest { ticket: ticket.0, member, role, terminal, attrs }));
            }
            None => {
                inner.events.push_back(ReplicaEvent::Joined { ticket, member, result: Err(StoreError::NotReady) });
            }
        }
        ticket
    }

    /// The primary's decision.
    #[allow(clippy::too_many_arguments)]
    fn admit(
        &self,
        inner: &mut Inner,
        now: Timestamp,
        member: MemberKey,
        role: Role,
        terminal: Terminal,
        attrs: Option<Bytes>,
        ticket: JoinTicket,
        reply_to: Option<NodeId>,
    ) {
        let room = member.room_key();
        let answer = |inner: &mut Inner, result: Result<WriteOutcome, StoreError>| match reply_to {
            Some(peer) => inner.outbox.push_back((peer, ReplMsg::JoinReply { ticket: ticket.0, result })),
            None => inner.events.push_back(ReplicaEvent::Joined { ticket, member, result }),
        };
        if !inner.ready {
            return answer(inner, Err(StoreError::NotReady));
        }
        // Admissions still waiting for their majority hold a seat.
        let waiting = inner.admissions.values().filter(|a| a.member.room_key() == room).count() as u32;
        if let Some(limit) = self.store.seat_limit(room) {
            let present = self.store.contains(member);
            let count = self.store.counts(room).map_or(0, |c| c.total());
            if !present && count + waiting >= limit {
                return answer(inner, Err(StoreError::RoomFull { limit }));
            }
        }
        let op = WriteOp::Enter { uin: member.uin, role, terminal, attrs };
        let mut records = Vec::new();
        let result = self.store.apply_with(now, room, std::slice::from_ref(&op), true, None, |r| records.push(r));
        let outcome = match result.map(|v| v.into_iter().next()) {
            Ok(Some(Ok(outcome))) => outcome,
            Ok(Some(Err(e))) | Err(e) => return answer(inner, Err(e)),
            Ok(None) => WriteOutcome::Unchanged,
        };
        let peers: Vec<NodeId> =
            owners(&inner.router, room, self.config.replicas).into_iter().filter(|&n| n != self.config.node).collect();
        // Acks for a majority of the owners, this one included.
        let needed = peers.len().div_ceil(2);
        if records.is_empty() || needed == 0 {
            self.send_writes(inner, room, &peers, records, None);
            return answer(inner, Ok(outcome));
        }
        let id = inner.next_id;
        inner.next_id += 1;
        self.send_writes(inner, room, &peers, records, Some(id));
        let deadline = now + self.config.join_timeout;
        inner.admissions.insert(id, PendingAdmission { member, ticket, reply_to, acks: 0, needed, deadline, outcome });
    }

    fn send_writes(&self, inner: &mut Inner, room: RoomKey, peers: &[NodeId], records: Vec<Record>, ack: Option<u64>) {
        if records.is_empty() {
            return;
        }
        inner.stats.records_sent += (records.len() * peers.len()) as u64;
        for &peer in peers {
            inner.outbox.push_back((peer, ReplMsg::Writes { room, records: records.clone(), ack }));
        }
    }

    /// A message from a peer.
    pub fn handle_message(&self, now: Timestamp, from: NodeId, msg: ReplMsg) {
        let mut inner = self.inner.lock();
        inner.now = inner.now.max(now);
        let me = self.config.node;
        let r = self.config.replicas;
        match msg {
            ReplMsg::Writes { room, records, ack } => {
                if !Self::is_owner(&inner, room, me, r) {
                    inner.stats.foreign_messages += 1;
                    return;
                }
                self.merge_into(&mut inner, now, room, &records);
                if let Some(id) = ack {
                    inner.outbox.push_back((from, ReplMsg::Ack { id }));
                }
            }
            ReplMsg::Ack { id } => {
                let done = match inner.admissions.get_mut(&id) {
                    Some(a) => {
                        a.acks += 1;
                        a.acks >= a.needed
                    }
                    None => false,
                };
                if done && let Some(a) = inner.admissions.remove(&id) {
                    let result = Ok(a.outcome);
                    match a.reply_to {
                        Some(peer) => inner.outbox.push_back((peer, ReplMsg::JoinReply { ticket: a.ticket.0, result })),
                        None => {
                            inner.events.push_back(ReplicaEvent::Joined { ticket: a.ticket, member: a.member, result })
                        }
                    }
                }
            }
            ReplMsg::Digests { round, rooms } => {
                let theirs: HashMap<RoomKey, u64> = rooms.into_iter().collect();
                let mut keys: BTreeSet<RoomKey> = theirs.keys().copied().collect();
                keys.extend(self.store.room_keys());
                let mut differing = Vec::new();
                for room in keys {
                    let owners = owners(&inner.router, room, r);
                    if !owners.contains(&me) || !owners.contains(&from) {
                        continue;
                    }
                    let mine = self.store.digest(room);
                    if theirs.get(&room).copied().unwrap_or(0) != mine {
                        let buckets = self.store.bucket_digests(room, self.config.digest_buckets);
                        differing.push((room, buckets));
                    }
                }
                inner.outbox.push_back((from, ReplMsg::DigestReply { round, differing }));
            }
            ReplMsg::DigestReply { round, differing } => {
                if round != inner.round.id || !inner.round.waiting.contains_key(&from) {
                    return;
                }
                let mut outstanding = BTreeSet::new();
                for (room, theirs) in differing {
                    if !Self::is_owner(&inner, room, me, r) {
                        continue;
                    }
                    let mine = self.store.bucket_digests(room, self.config.digest_buckets);
                    let pull: Vec<u8> = (0..self.config.digest_buckets.max(1))
                        .filter(|&b| mine.get(usize::from(b)) != theirs.get(usize::from(b)))
                        .collect();
                    if pull.is_empty() {
                        continue;
                    }
                    let records = self.store.records_in(room, &pull, self.config.digest_buckets);
                    outstanding.insert(room);
                    inner.outbox.push_back((from, ReplMsg::Repair { round, room, records, pull }));
                }
                inner.round.waiting.insert(from, Some(outstanding));
                self.finish_round_if_done(&mut inner);
            }
            ReplMsg::Repair { round, room, records, pull } => {
                if !Self::is_owner(&inner, room, me, r) {
                    inner.stats.foreign_messages += 1;
                    return;
                }
                // Answer with what we had before merging theirs: a record of
                // ours that loses to theirs is harmless to send back.
                let ours = self.store.records_in(room, &pull, self.config.digest_buckets);
                if self.merge_into(&mut inner, now, room, &records) > 0 {
                    inner.stats.rooms_repaired += 1;
                }
                inner.outbox.push_back((from, ReplMsg::RepairReply { round, room, records: ours }));
            }
            ReplMsg::RepairReply { round, room, records } => {
                if !Self::is_owner(&inner, room, me, r) {
                    inner.stats.foreign_messages += 1;
                    return;
                }
                if self.merge_into(&mut inner, now, room, &records) > 0 {
                    inner.stats.rooms_repaired += 1;
                    if round == inner.round.id {
                        inner.round.repaired += 1;
                    }
                }
                if round == inner.round.id
                    && let Some(Some(waiting)) = inner.round.waiting.get_mut(&from)
                {
                    waiting.remove(&room);
                    self.finish_round_if_done(&mut inner);
                }
            }
            ReplMsg::JoinRequest { ticket, member, role, terminal, attrs } => {
                let owners = owners(&inner.router, member.room_key(), r);
                if owners.first() != Some(&me) {
                    let result = Err(StoreError::NotOwner { room: member.room_key() });
                    inner.outbox.push_back((from, ReplMsg::JoinReply { ticket, result }));
                    return;
                }
                self.admit(&mut inner, now, member, role, terminal, attrs, JoinTicket(ticket), Some(from));
            }
            ReplMsg::JoinReply { ticket, result } => {
                if let Some(f) = inner.forwards.remove(&ticket) {
                    inner.events.push_back(ReplicaEvent::Joined {
                        ticket: JoinTicket(ticket),
                        member: f.member,
                        result,
                    });
                }
            }
            ReplMsg::SeatLimit { room, limit } => {
                if !Self::is_owner(&inner, room, me, r) {
                    inner.stats.foreign_messages += 1;
                    return;
                }
                let _ = self.store.set_seat_limit(room, limit);
            }
        }
    }

    fn merge_into(&self, inner: &mut Inner, now: Timestamp, room: RoomKey, records: &[Record]) -> usize {
        let (valid, invalid): (Vec<&Record>, Vec<&Record>) = records.iter().partition(|rec| {
            self.store.observe(now, rec.stamp)
                && rec
                    .state
                    .as_ref()
                    .is_none_or(|s| !s.terminals.is_empty() && s.attrs.len() <= self.config.store.max_attrs_bytes)
        });
        inner.stats.records_rejected += invalid.len() as u64;
        let valid: Vec<Record> = valid.into_iter().cloned().collect();
        let applied = self.store.merge(now, room, &valid).unwrap_or(0);
        inner.stats.records_applied += applied as u64;
        applied
    }

    fn finish_round_if_done(&self, inner: &mut Inner) {
        let done = !inner.round.waiting.is_empty()
            && inner.round.waiting.values().all(|w| w.as_ref().is_some_and(BTreeSet::is_empty));
        if done {
            inner.round.waiting.clear();
            inner.stats.rounds_completed += 1;
            // What this round brought in from one peer the others may lack:
            // another round at once carries it on (rounds stop as soon as
            // one repairs nothing).
            if inner.round.repaired > 0 {
                inner.round.repaired = 0;
                inner.next_round_at = Some(inner.now);
            }
            if !inner.ready {
                inner.ready = true;
                inner.events.push_back(ReplicaEvent::Ready);
            }
        }
    }

    /// When [`Replica::handle_timeout`] wants to run next.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Timestamp> {
        let inner = self.inner.lock();
        let deadlines =
            inner.admissions.values().map(|a| a.deadline).chain(inner.forwards.values().map(|f| f.deadline));
        deadlines.chain(inner.next_round_at).min()
    }

    /// Timers: anti-entropy rounds, tombstone collection, handoff of rooms
    /// no longer owned, join time-outs.
    pub fn handle_timeout(&self, now: Timestamp) {
        let mut inner = self.inner.lock();
        inner.now = inner.now.max(now);
        let me = self.config.node;
        // Checked joins out of time.
        let late: Vec<u64> = inner.admissions.iter().filter(|(_, a)| a.deadline <= now).map(|(&id, _)| id).collect();
        for id in late {
            if let Some(a) = inner.admissions.remove(&id) {
                // Not held by a majority in time: roll it back.
                let room = a.member.room_key();
                let mut records = Vec::new();
                let _ = self
                    .store
                    .apply_with(now, room, &[WriteOp::Remove { uin: a.member.uin }], true, None, |r| records.push(r));
                let peers: Vec<NodeId> =
                    owners(&inner.router, room, self.config.replicas).into_iter().filter(|&n| n != me).collect();
                self.send_writes(&mut inner, room, &peers, records, None);
                let result = Err(StoreError::Timeout);
                match a.reply_to {
                    Some(peer) => inner.outbox.push_back((peer, ReplMsg::JoinReply { ticket: a.ticket.0, result })),
                    None => inner.events.push_back(ReplicaEvent::Joined { ticket: a.ticket, member: a.member, result }),
                }
            }
        }
        let late: Vec<u64> = inner.forwards.iter().filter(|(_, f)| f.deadline <= now).map(|(&t, _)| t).collect();
        for ticket in late {
            if let Some(f) = inner.forwards.remove(&ticket) {
                inner.events.push_back(ReplicaEvent::Joined {
                    ticket: JoinTicket(ticket),
                    member: f.member,
                    result: Err(StoreError::Timeout),
                });
            }
        }
        if inner.next_round_at.is_none_or(|t| t > now) {
            return;
        }
        inner.next_round_at = Some(now + self.config.anti_entropy_interval);
        self.start_round(&mut inner, now);
    }

    fn start_round(&self, inner: &mut Inner, now: Timestamp) {
        let me = self.config.node;
        let r = self.config.replicas;
        // Tombstones past their time.
        // By wall-clock time, not by the clock's next stamp (which is
        // larger than every stamp it has seen).
        let horizon = Stamp { hlc: now.saturating_sub(self.config.tombstone_ttl).as_millis() << 16, origin: 0 };
        inner.stats.tombstones_dropped += self.store.gc(horizon) as u64;
        // Digests per peer; rooms no longer owned are handed over.
        let mut per_peer: BTreeMap<NodeId, Vec<(RoomKey, u64)>> = BTreeMap::new();
        for (peer, _) in inner.router.nodes() {
            if peer != me {
                per_peer.insert(peer, Vec::new());
            }
        }
        for room in self.store.room_keys() {
            let owners = owners(&inner.router, room, r);
            if owners.is_empty() {
                continue;
            }
            if !owners.contains(&me) {
                let records = self.store.records(room);
                for &owner in &owners {
                    inner.outbox.push_back((owner, ReplMsg::Writes { room, records: records.clone(), ack: None }));
                }
                self.store.drop_room(room);
                continue;
            }
            if owners.first() == Some(&me) {
                if let Some(lease) = self.config.lease {
                    self.expire(inner, now, room, lease, &owners);
                }
                // The seat limit is re-sent every round, so an owner that
                // missed it (or joined since) learns it.
                if let Some(limit) = self.store.seat_limit(room) {
                    for &peer in owners.iter().filter(|&&n| n != me) {
                        inner.outbox.push_back((peer, ReplMsg::SeatLimit { room, limit: Some(limit) }));
                    }
                }
            }
            let digest = self.store.digest(room);
            for peer in owners.into_iter().filter(|&n| n != me) {
                per_peer.entry(peer).or_default().push((room, digest));
            }
        }
        inner.round.id += 1;
        inner.round.waiting.clear();
        inner.round.repaired = 0;
        let round = inner.round.id;
        for (peer, rooms) in per_peer {
            inner.round.waiting.insert(peer, None);
            inner.outbox.push_back((peer, ReplMsg::Digests { round, rooms }));
        }
        if inner.round.waiting.is_empty() && inner.router.contains(me) && !inner.ready {
            inner.ready = true;
            inner.events.push_back(ReplicaEvent::Ready);
        }
    }

    /// The primary removes members whose lease ran out (replicated like
    /// any removal).
    fn expire(&self, inner: &mut Inner, now: Timestamp, room: RoomKey, lease: Duration, owners: &[NodeId]) {
        let gone = self.store.expired(now, room, lease);
        if gone.is_empty() {
            return;
        }
        let ops: Vec<WriteOp> = gone.into_iter().map(|uin| WriteOp::Remove { uin }).collect();
        let mut records = Vec::new();
        let _ = self.store.apply_with(now, room, &ops, true, None, |r| records.push(r));
        inner.stats.members_expired += records.len() as u64;
        let peers: Vec<NodeId> = owners.iter().copied().filter(|&n| n != self.config.node).collect();
        self.send_writes(inner, room, &peers, records, None);
    }

    /// The next message to send to a peer.
    #[must_use]
    pub fn poll_transmit(&self) -> Option<(NodeId, ReplMsg)> {
        self.inner.lock().outbox.pop_front()
    }

    /// The next event for the host.
    #[must_use]
    pub fn poll_event(&self) -> Option<ReplicaEvent> {
        self.inner.lock().events.pop_front()
    }
}

impl Replica {
    /// Applies writes here (an owner only) and sends the records they
    /// produced to the room's other owners in one message each.
    fn write_and_replicate(
        &self,
        now: Timestamp,
        room: RoomKey,
        ops: &[WriteOp],
        batch_id: Option<u64>,
    ) -> Result<Vec<Result<WriteOutcome, StoreError>>, StoreError> {
        let mut inner = self.inner.lock();
        inner.now = inner.now.max(now);
        let owners = owners(&inner.router, room, self.config.replicas);
        if !owners.contains(&self.config.node) {
            return Err(StoreError::NotOwner { room });
        }
        let mut records = Vec::new();
        let results = self.store.apply_with(now, room, ops, false, batch_id, |r| records.push(r))?;
        let peers: Vec<NodeId> = owners.into_iter().filter(|&n| n != self.config.node).collect();
        self.send_writes(&mut inner, room, &peers, records, None);
        Ok(results)
    }
}

fn owners(router: &Router, room: RoomKey, replicas: usize) -> Vec<NodeId> {
    router.successors(&room, replicas).unwrap_or_default()
}

impl MemberStore for Replica {
    /// Applies writes here and replicates them to the room's other owners.
    /// Refused with [`StoreError::NotOwner`] on a node that does not own
    /// the room.
    fn apply(
        &self,
        now: Timestamp,
        room: RoomKey,
        ops: &[WriteOp],
    ) -> Result<Vec<Result<WriteOutcome, StoreError>>, StoreError> {
        self.write_and_replicate(now, room, ops, None)
    }

    fn apply_batch(
        &self,
        now: Timestamp,
        batch: &WriteBatch,
    ) -> Result<Vec<Result<WriteOutcome, StoreError>>, StoreError> {
        // One message per peer for the whole batch: the merged write.
        self.write_and_replicate(now, batch.room, &batch.ops, Some(batch.id))
    }

    fn get(&self, member: MemberKey) -> Option<MemberRow> {
        self.store.get(member)
    }

    fn contains(&self, member: MemberKey) -> bool {
        self.store.contains(member)
    }

    fn counts(&self, room: RoomKey) -> Option<Counts> {
        self.store.counts(room)
    }

    fn page(&self, room: RoomKey, query: &PageQuery, out: &mut Vec<MemberRow>) -> Result<PageInfo, StoreError> {
        self.store.page(room, query, out)
    }

    fn changes_since(&self, room: RoomKey, since: FeedPosition) -> Result<ChangeSet, StoreError> {
        self.store.changes_since(room, since)
    }
}
