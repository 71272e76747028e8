//! The composed core of one node: see [`RoomNode`].

use std::collections::{BTreeSet, VecDeque};
use std::time::Duration;

use bytes::Bytes;
use hashbrown::HashMap;
use room_core::{
    ChurnMap, ClusterView, ConnId, ConnSlab, MemberKey, NodeId, Role, RoomKey, Router, RouterConfig, Terminal,
    Timestamp, Uin,
};
use room_heartbeat::{OwnerConfig, SessionOwner, Timing, TrackerConfig};
use room_memberlist::{Replica, ReplicaConfig};
use room_push::{
    Decision, Envelope, FencedGate, Follower, FrameHeader, GateConfig, KeyedLimiter, LimiterError, LogEntry, PushNode,
    Quota, SendError, SharedCacheError, SubclassId,
};

use crate::classroom::ClassroomConfig;
use crate::peer::{CloseReason, PeerDecodeError, PeerMsg};
use crate::wire::JsonCodec;

/// A warning through `tracing` (feature `tracing`); nothing otherwise.
macro_rules! warn {
    ($($arg:tt)*) => {
        #[cfg(feature = "tracing")]
        tracing::warn!($($arg)*);
    };
}

mod access;
mod host;
mod owner;
mod sessions;

pub use access::FrameError;

/// How often the members' budgets drop keys gone idle.
const SWEEP_INTERVAL: Duration = Duration::from_secs(10);

/// How a node runs. Every node of a cluster uses the same settings but
/// `node` and `incarnation`.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct RoomNodeConfig {
    /// This node. It tags the ids of the connections it holds, so it must
    /// be below [`RoomNodeConfig::MAX_NODE`].
    pub node: NodeId,
    /// Differs every time the node starts (the driver uses its start
    /// time): request ids of an earlier run are never taken for new ones.
    pub incarnation: u64,
    /// How often clients beat.
    pub heartbeat: Duration,
    /// Beats a client may miss before its session is suspected.
    pub misses: u32,
    /// The largest client frame accepted, in bytes.
    pub max_frame: usize,
    /// The longest chat line or teacher text, in characters.
    pub max_text: usize,
    /// Learners a room is expected to hold (sub-classes opened up front).
    pub expected_learners: usize,
    /// The push side (lanes, windows, the per-room recovery cache).
    pub push: room_push::NodeConfig,
    /// The room owner's gate (limits, sub-class size, rooms).
    pub gate: GateConfig,
    /// Interaction limits.
    pub classroom: ClassroomConfig,
    /// Member-list replicas per room.
    pub replicas: usize,
    /// How rooms and members are routed to nodes (the same on every node:
    /// rooms' owners, heartbeat sessions and member-list replicas follow it).
    pub router: RouterConfig,
    /// Live answer-card tallies and packet states are pushed at most this often.
    pub tally_interval: Duration,
    /// The member sidebar is pushed at most this often.
    pub roster_interval: Duration,
    /// ... and a room's sidebars cost at most this many frames a second
    /// (each goes to every member): a larger room gets it less often
    /// (a class of 60,000 every 6 s with 10,000). While a large class
    /// fills, a roster every second to everyone would cost more than
    /// the entries themselves.
    pub roster_frames_per_sec: u32,
    /// Rooms up to this size get the whole member list in the sidebar.
    pub roster_list_max: usize,
    /// A room owner saves the room's state to the shared cache at most this
    /// often; a request whose effect must outlive the owner (an answer, a
    /// grab) is answered once the save holding it is stored.
    pub save_interval: Duration,
    /// A request forwarded to a room owner that has not answered in this
    /// long is sent again, to the owner of the view by then.
    pub forward_timeout: Duration,
    /// ... at most this many times; then the client is told `unavailable`.
    pub forward_attempts: u32,
    /// How long the shared cache may take to answer before the node
    /// carries on without it.
    pub cache_timeout: Duration,
    /// Requests a room's new owner holds while it restores the room.
    pub max_queued_per_room: usize,
    /// What each member may ask of its access node, by kind of request,
    /// checked before anything is forwarded or answered: one member's
    /// flood costs nobody else anything.
    pub budgets: Budgets,
    /// Host requests this node carries at once (more are refused
    /// [`HostError::RateLimited`](crate::host::HostError::RateLimited)).
    pub max_host_requests: usize,
    /// The host's own message kinds clients may send (the same on every
    /// node).
    pub kinds: crate::kinds::CustomKinds,
    /// Whether the node tells the host what happens in its rooms
    /// ([`Output::Event`]).
    pub events: bool,
    /// Chat lines per business over the whole cluster (the global limiter).
    pub business_chat: Quota,
    /// Reliable messages of the log's tail a new room owner reads to know
    /// which requests its predecessor already numbered.
    pub dedupe_tail: u64,
    /// A socket that closes without `leave` ends its member's session at
    /// once (the member leaves), instead of keeping it until the heartbeat
    /// timeout so that a reconnect resumes it. Off by default.
    pub leave_on_disconnect: bool,
    /// A room with nobody in it is forgotten by its owner after this long.
    pub room_idle: Duration,
    /// A client whose writer has taken nothing for this long is closed
    /// ([`CloseReason::SlowConsumer`]): a reader that stopped reading holds
    /// no queue open for ever.
    pub slow_client_lag: Duration,
    /// This long after a room's last reliable message reached this node,
    /// the node asks the shared cache for the room's head once: a message
    /// the bus lost at the end of a burst, with nothing after it to show
    /// the gap, is refilled then.
    pub tail_check: Duration,
}

impl RoomNodeConfig {
    /// The largest node id (ids tag connection ids, 16 bits, one value kept
    /// for "no connection").
    pub const MAX_NODE: u64 = u16::MAX as u64 - 1;

    /// Defaults for node `node`: 20 s heartbeats, 3 misses, 3 replicas.
    pub fn new(node: NodeId) -> RoomNodeConfig {
        let quota = |n, burst| Quota::per_second(n).and_then(|q| q.with_burst(burst));
        RoomNodeConfig {
            node,
            incarnation: 0,
            heartbeat: Duration::from_secs(20),
            misses: 3,
            max_frame: 4096,
            max_text: 500,
            expected_learners: 0,
            push: room_push::NodeConfig::default(),
            gate: GateConfig::default(),
            classroom: ClassroomConfig::default(),
            replicas: 3,
            router: RouterConfig::new(),
            tally_interval: Duration::from_millis(500),
            roster_interval: Duration::from_secs(1),
            roster_frames_per_sec: 10_000,
            roster_list_max: 200,
            save_interval: Duration::from_millis(50),
            forward_timeout: Duration::from_millis(300),
            forward_attempts: 30,
            cache_timeout: Duration::from_secs(1),
            max_queued_per_room: 16_384,
            budgets: Budgets::default(),
            max_host_requests: 10_000,
            events: true,
            kinds: crate::kinds::CustomKinds::default(),
            business_chat: quota(10_000, 2_000).unwrap_or(GateConfig::default().room_chat_quota),
            dedupe_tail: 1024,
            room_idle: Duration::from_secs(60),
            leave_on_disconnect: false,
            tail_check: Duration::from_millis(500),
            slow_client_lag: Duration::from_secs(30),
        }
    }
}

/// What one member may ask of its access node, per kind of request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Budgets {
    /// Heartbeats per heartbeat interval (a client beating faster than
    /// this gains nothing).
    pub beats_per_interval: u32,
    /// Acks.
    pub ack: Quota,
    /// Checks (each may be answered with up to `max_check_answer` messages).
    pub check: Quota,
    /// Member-list pages and state requests.
    pub read: Quota,
    /// Everything a learner does in the room (chat, hands, reactions,
    /// answers, grabs).
    pub learner: Quota,
    /// Everything a teacher or assistant does in the room.
    pub staff: Quota,
}

impl Default for Budgets {
    fn default() -> Self {
        let quota = |n, burst| Quota::per_second(n).and_then(|q| q.with_burst(burst));
        let fallback = GateConfig::default().user_quota;
        Budgets {
            beats_per_interval: 4,
            ack: quota(2, 5).unwrap_or(fallback),
            check: quota(2, 5).unwrap_or(fallback),
            read: quota(2, 5).unwrap_or(fallback),
            learner: quota(5, 10).unwrap_or(fallback),
            staff: quota(20, 20).unwrap_or(fallback),
        }
    }
}

/// A kind of client request, each with its own budget per member.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum RequestKind {
    Beat,
    Ack,
    Check,
    Read,
    Act,
    Custom(u16),
}

/// A configuration that cannot run.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("bad room node configuration: {0}")]
pub struct ConfigError(pub String);

/// Who entered, as the host's ticket check established: role and user
/// come from the ticket, never from the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Admission {
    /// The room.
    pub room: RoomKey,
    /// The user.
    pub uin: Uin,
    /// Their role.
    pub role: Role,
    /// Their terminal.
    pub terminal: Terminal,
    /// The ticket it came with, which the room's owner checks against
    /// revocations ([`HostRequest::Revoke`](crate::host::HostRequest::Revoke)).
    pub ticket: Option<crate::host::TicketStamp>,
}

impl Admission {
    /// `uin` entering `room` as `role` on `terminal`.
    pub fn new(room: RoomKey, uin: Uin, role: Role, terminal: Terminal) -> Admission {
        Admission { room, uin, role, terminal, ticket: None }
    }

    /// With the ticket it came with.
    pub fn with_ticket(mut self, ticket: crate::host::TicketStamp) -> Admission {
        self.ticket = Some(ticket);
        self
    }
}

/// Why a connection could not start entering. Nothing was entered.
/// (Refusals decided by the room's owner come later, as an error frame
/// and a close.)
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EntryError {
    /// This node holds as many connections or rooms as it may.
    #[error("this node cannot take the connection: {0}")]
    Full(String),
    /// The node has no cluster view yet, so no room has an owner.
    #[error("the node is not ready: no cluster view yet")]
    NotReady,
}

/// One frame for a client.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Outbound {
    /// A pushed message: this connection's header and the body shared by
    /// every recipient (render with [`Outbound::into_text`]).
    Push {
        /// The header.
        header: FrameHeader,
        /// The body, encoded once.
        body: Bytes,
    },
    /// A direct reply, already JSON text.
    Text(Bytes),
    /// The service closed the connection: close the transport with
    /// [`CloseReason::close_code`]; nothing follows. (Drivers put it at the
    /// end of a connection's frames; a node never sends it through
    /// [`ClientSink::send`].)
    Close(CloseReason),
}

impl Outbound {
    /// The JSON text frame to write to the client (empty for
    /// [`Outbound::Close`], which is not a text frame).
    pub fn into_text(self) -> Bytes {
        match self {
            Outbound::Push { header, body } => crate::wire::push_frame(&header, &body),
            Outbound::Text(text) => text,
            Outbound::Close(_) => Bytes::new(),
        }
    }
}

/// A connection that starts reading its room's log: its first frames
/// (the welcome, the room's state), then the log from entry `from` on.
#[derive(Debug)]
struct Follow {
    conn: ConnId,
    room: RoomKey,
    from: u64,
    follower: Follower,
    first: Vec<Outbound>,
}

/// Where a node's frames for clients go: the host's websocket writers.
pub trait ClientSink {
    /// A frame for `conn`, in order. [`SendError::WouldBlock`] keeps push
    /// frames queued until [`RoomNode::set_writable`]; direct replies that
    /// cannot be taken are dropped (the client can ask again).
    fn send(&mut self, conn: ConnId, frame: Outbound) -> Result<(), SendError>;
    /// The node closed `conn`: close the transport (with
    /// [`CloseReason::close_code`]).
    fn close(&mut self, conn: ConnId, reason: CloseReason);
    /// With [`Delivery::Log`](room_push::Delivery::Log) (see
    /// [`RoomNodeConfig::push`]): entry `pos` of `room`'s log, for the
    /// writers that follow it (keep the recent ones: a writer behind what
    /// is kept resyncs, [`Follower::lagged`]). A sink for lanes
    /// delivery, the default, is never called here.
    fn append(&mut self, room: RoomKey, pos: u64, entry: &LogEntry) {
        let _ = (room, pos, entry);
    }
    /// With log delivery: after the frames sent to it so far, `conn`'s
    /// writer also reads `room`'s log, from entry `from` on, through
    /// `follower`. Frames sent to it later go out after the log entries
    /// appended before them. The node hands a turn's follows over before
    /// its log outputs, which may be for the connection already (a
    /// [`direct`](Self::direct) entry): `from` may be beyond the entries
    /// appended so far, and the writer reads entry `from` once it comes.
    fn follow(&mut self, conn: ConnId, room: RoomKey, from: u64, follower: Follower) {
        let _ = (conn, room, from, follower);
    }
    /// With log delivery: from entry `at` of its room's log on, `conn` is
    /// in `subclass` ([`Follower::set_subclass`]).
    fn moved(&mut self, conn: ConnId, at: u64, subclass: Option<SubclassId>) {
        let _ = (conn, at, subclass);
    }
    /// With log delivery: a reliable message for `conn` alone among few
    /// ([`LogOutput::Direct`](room_push::LogOutput::Direct)), which its
    /// writer takes through its follower after the log entries appended
    /// so far and before the next. A sink that cannot keep it must have
    /// the writer resync at its number ([`Follower::lagged`] with
    /// [`LogEntry::sequence`]): the client then checks for it.
    fn direct(&mut self, conn: ConnId, entry: &LogEntry) {
        let _ = (conn, entry);
    }
}

/// An operation on the shared cache, answered with [`RoomNode::handle_cache`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum CacheOp {
    /// Append numbered envelopes of one room, in a row, as one write (the
    /// fence: the first decides for all).
    Append(Vec<Envelope>),
    /// The room's newest `(epoch, seq)`.
    Head(RoomKey),
    /// The room's envelopes `after + 1 ..= upto` of `epoch`.
    Range {
        /// The room.
        room: RoomKey,
        /// The epoch.
        epoch: u64,
        /// The first number not wanted.
        after: u64,
        /// The last number wanted.
        upto: u64,
    },
    /// The room owner's saved state.
    LoadState(RoomKey),
    /// Save the room owner's state, following version `after`.
    SaveState {
        /// The room.
        room: RoomKey,
        /// The version this save follows.
        after: u64,
        /// The state.
        state: Bytes,
    },
}

/// The shared cache's answer to a [`CacheOp`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum CacheAnswer {
    /// To [`CacheOp::Append`].
    Appended(Result<room_push::Appended, SharedCacheError>),
    /// To [`CacheOp::Head`].
    Head(Result<Option<(u64, u64)>, SharedCacheError>),
    /// To [`CacheOp::Range`].
    Range(Result<Vec<Envelope>, SharedCacheError>),
    /// To [`CacheOp::LoadState`].
    State(Result<Option<(u64, Bytes)>, SharedCacheError>),
    /// To [`CacheOp::SaveState`].
    Saved(Result<room_push::Saved, SharedCacheError>),
}

/// Something the driver carries out for the node.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Output {
    /// Send to another node over the [`PeerLink`](crate::transport::PeerLink)
    /// (never to this node: it handles its own messages).
    Peer {
        /// The node.
        to: NodeId,
        /// The message ([`PeerMsg::encode`]).
        msg: PeerMsg,
    },
    /// Publish on the bus.
    Publish(Envelope),
    /// Start or stop receiving a room's envelopes from the bus. The driver
    /// must have subscribed before it carries out any later output (a room
    /// owner answers an entry only after this node receives its messages).
    Interest {
        /// The room.
        room: RoomKey,
        /// Start or stop.
        on: bool,
    },
    /// Ask the shared cache; answer with [`RoomNode::handle_cache`] (an
    /// answer later than [`RoomNodeConfig::cache_timeout`] is ignored).
    Cache {
        /// The request.
        id: u64,
        /// What.
        op: CacheOp,
    },
    /// The answer to the host's request `id` ([`RoomNode::host`]).
    Host {
        /// The request.
        id: u64,
        /// Its answer.
        answer: Result<crate::host::HostAnswer, crate::host::HostError>,
    },
    /// Something happened in a room this node owns, for the host
    /// (entries, exits, hands, answers, grabs; see
    /// [`EventKind`](crate::host::EventKind)). Nothing to carry out:
    /// hand it to whoever listens, or drop it.
    Event(crate::host::RoomEvent),
    /// Ask the global limiter; answer with [`RoomNode::handle_limit`].
    Limit {
        /// The request.
        id: u64,
        /// The key.
        key: String,
        /// The quota.
        quota: Quota,
        /// The cost.
        cost: u32,
    },
}

/// Counters of one node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct NodeStats {
    /// Connections held here.
    pub connections: usize,
    /// Heartbeat sessions owned here.
    pub sessions: usize,
    /// Rooms owned here.
    pub rooms: usize,
    /// Entries refused (by this node or the room's owner).
    pub refused_entries: u64,
    /// Client frames refused (with an error frame to the client), whoever
    /// refused them.
    pub refused_frames: u64,
    /// Of [`refused_frames`](Self::refused_frames), those the room's owner
    /// refused (its gate: mutes, roles, the room's limits; its classroom: a
    /// closed card, an empty packet).
    pub refused_by_owner: u64,
    /// Of [`refused_frames`](Self::refused_frames), those refused as over a
    /// limit: the error told the client when to retry (`rate_limited`).
    pub rate_limited: u64,
    /// Sessions ended here because their client stopped beating.
    pub timed_out: u64,
    /// Sessions adopted here after a failover, without a second entry.
    pub adopted: u64,
    /// Requests sent again to a room's owner.
    pub forward_retries: u64,
    /// Requests given up (no owner answered).
    pub forward_failures: u64,
    /// Reliable envelopes the bus lost that were refilled from the shared cache.
    pub refilled: u64,
    /// Reliable messages a check got from the shared cache.
    pub recovered_from_shared: u64,
    /// Rooms restored by this node as their new owner.
    pub restored: u64,
    /// Room states saved to the shared cache.
    pub saves: u64,
    /// Room states too large for the shared cache: what they held was
    /// answered without being saved.
    pub unsaved: u64,
    /// Times another owner saved or numbered a room first (this node then
    /// let the room go).
    pub fenced: u64,
    /// Retried requests recognised and not done twice.
    pub deduplicated: u64,
    /// Peer messages that could not be decoded (dropped).
    pub garbage: u64,
    /// Direct replies dropped because the client's writer was full.
    pub replies_dropped: u64,
    /// The push node's counters.
    pub push: room_push::NodeStats,
}

impl NodeStats {
    /// Adds `other`'s counters to these (the nodes of one process).
    pub fn absorb(&mut self, other: &NodeStats) {
        // Destructured: a counter added later must be summed here too.
        let NodeStats {
            connections,
            sessions,
            rooms,
            refused_entries,
            refused_frames,
            refused_by_owner,
            rate_limited,
            timed_out,
            adopted,
            forward_retries,
            forward_failures,
            refilled,
            recovered_from_shared,
            restored,
            saves,
            unsaved,
            fenced,
            deduplicated,
            garbage,
            replies_dropped,
            push,
        } = *other;
        self.connections += connections;
        self.sessions += sessions;
        self.rooms += rooms;
        self.refused_entries += refused_entries;
        self.refused_frames += refused_frames;
        self.refused_by_owner += refused_by_owner;
        self.rate_limited += rate_limited;
        self.timed_out += timed_out;
        self.adopted += adopted;
        self.forward_retries += forward_retries;
        self.forward_failures += forward_failures;
        self.refilled += refilled;
        self.recovered_from_shared += recovered_from_shared;
        self.restored += restored;
        self.saves += saves;
        self.unsaved += unsaved;
        self.fenced += fenced;
        self.deduplicated += deduplicated;
        self.garbage += garbage;
        self.replies_dropped += replies_dropped;
        self.push.absorb(&push);
    }
}

/// The rooms a node owns, by how many members each has
/// ([`RoomNode::room_sizes`]): a bounded set of buckets for metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct RoomSizes {
    /// Rooms in each bucket of [`RoomSizes::BUCKETS`].
    pub rooms: [u64; 6],
    /// Members of the rooms in each bucket.
    pub members: [u64; 6],
}

impl RoomSizes {
    /// The buckets' names: rooms with no member (yet, or any more), then
    /// 1-10 members, 11-100, 101-1000, 1001-10000 and more than 10,000.
    pub const BUCKETS: [&'static str; 6] = ["0", "1-10", "11-100", "101-1000", "1001-10000", ">10000"];

    /// The bucket of a room of `members`: an index into
    /// [`BUCKETS`](Self::BUCKETS).
    pub const fn bucket(members: u64) -> usize {
        match members {
            0 => 0,
            1..=10 => 1,
            11..=100 => 2,
            101..=1_000 => 3,
            1_001..=10_000 => 4,
            _ => 5,
        }
    }

    /// Adds `other`'s rooms to these (the nodes of one process).
    pub fn absorb(&mut self, other: &RoomSizes) {
        for (sum, n) in self.rooms.iter_mut().zip(other.rooms) {
            *sum += n;
        }
        for (sum, n) in self.members.iter_mut().zip(other.members) {
            *sum += n;
        }
    }

    /// Counts a room of `members`.
    pub fn add(&mut self, members: u64) {
        let b = Self::bucket(members);
        self.rooms[b] += 1;
        self.members[b] += members;
    }
}

/// Deadlines by key, earliest first.
#[derive(Debug)]
struct Deadlines<K: Ord + Copy> {
    set: BTreeSet<(Timestamp, K)>,
}

impl<K: Ord + Copy> Default for Deadlines<K> {
    fn default() -> Self {
        Deadlines { set: BTreeSet::new() }
    }
}

impl<K: Ord + Copy> Deadlines<K> {
    fn insert(&mut self, at: Timestamp, key: K) {
        self.set.insert((at, key));
    }
    fn remove(&mut self, at: Timestamp, key: K) {
        self.set.remove(&(at, key));
    }
    fn first(&self) -> Option<Timestamp> {
        self.set.first().map(|(t, _)| *t)
    }
    /// Takes every key due at `now`.
    fn due(&mut self, now: Timestamp) -> Vec<K> {
        let mut out = Vec::new();
        while let Some(&(t, k)) = self.set.first() {
            if t > now {
                break;
            }
            self.set.pop_first();
            out.push(k);
        }
        out
    }
}

/// One node of a room service: a cluster of one, or one of many.
///
/// It plays three parts, for three kinds of key (see [`crate::peer`]):
///
/// * **access**: the connections clients hold here, their push lanes
///   ([`PushNode`]), per-member quotas, acks and checks (the shared cache
///   answers what this node's own cache no longer holds), bus gaps refilled
///   from the shared cache, and requests forwarded to the room's owner
///   (retried, numbered once);
/// * **session owner** of the heartbeat sessions the router gives it
///   ([`SessionOwner`]): beats, adoption after a failover, the reverse
///   check before a timeout;
/// * **room owner** of the rooms the router gives it: the fenced gate
///   ([`FencedGate`]), the classroom ([`Classroom`](crate::classroom::Classroom)),
///   the sub-class plan, the member list (primary [`Replica`]), the roster,
///   and the room's state saved beside its messages in the shared cache,
///   from which the next owner restores it.
///
/// # Driving it
///
/// Inputs: [`set_view`](Self::set_view), [`connect`](Self::connect),
/// [`handle_text`](Self::handle_text) / [`handle_client`](Self::handle_client),
/// [`disconnect`](Self::disconnect), [`handle_peer`](Self::handle_peer),
/// [`handle_envelope`](Self::handle_envelope),
/// [`handle_cache`](Self::handle_cache), [`handle_limit`](Self::handle_limit),
/// [`set_writable`](Self::set_writable), [`handle_timeout`](Self::handle_timeout),
/// each with `now` (Unix time: every node of a cluster stamps with it).
/// After any input, drain [`poll_output`](Self::poll_output) (carry each out
/// in order) and call [`flush`](Self::flush) to hand frames to clients;
/// wake up at [`poll_timeout`](Self::poll_timeout). Nothing inside awaits:
/// where an engine answers later (the shared cache, the limiter, a peer),
/// the node asks with an output and goes on when the answer comes in.
#[derive(Debug)]
pub struct RoomNode {
    config: RoomNodeConfig,
    me: NodeId,
    tag: u16,
    router: Option<Router>,
    previous_router: Option<Router>,
    // access
    push: PushNode,
    conns: ConnSlab<access::Conn>,
    room_refs: HashMap<RoomKey, usize, ahash::RandomState>,
    parked: HashMap<RoomKey, access::Parked, ahash::RandomState>,
    forwards: ChurnMap<u64, access::Forward, ahash::RandomState>,
    forward_deadlines: Deadlines<u64>,
    /// Messages to peers sent again until acknowledged.
    deliveries: HashMap<u64, host::Delivery, ahash::RandomState>,
    delivery_deadlines: Deadlines<u64>,
    tail_checks: HashMap<RoomKey, Timestamp, ahash::RandomState>,
    tail_deadlines: Deadlines<RoomKey>,
    /// Connections whose writer would not take a frame, since when.
    stalled: HashMap<ConnId, Timestamp, ahash::RandomState>,
    stalled_deadlines: Deadlines<ConnId>,
    senders: KeyedLimiter<(MemberKey, RequestKind)>,
    /// The heartbeat budget, from the interval.
    beat_quota: Quota,
    replies: VecDeque<(ConnId, Outbound)>,
    /// Connections that start reading their room's log (log delivery),
    /// handed over at the next flush before the turn's log outputs.
    follows: Vec<Follow>,
    closes: VecDeque<(ConnId, CloseReason)>,
    next_req: u64,
    // session owner
    sessions: SessionOwner,
    probes: HashMap<u64, (NodeId, room_heartbeat::ProbeId), ahash::RandomState>,
    /// Nodes that left this node's view, since when (until they come
    /// back): a node cut off by a partition is out of the view while its
    /// clients still beat to it.
    departed: HashMap<NodeId, Timestamp, ahash::RandomState>,
    pending_holds: Vec<(MemberKey, Terminal, Timestamp)>,
    // room owner
    gate: FencedGate,
    rooms: HashMap<RoomKey, owner::OwnedRoom, ahash::RandomState>,
    replica: Replica,
    room_timers: Deadlines<RoomKey>,
    // plumbing
    outputs: VecDeque<Output>,
    loopback: VecDeque<PeerMsg>,
    waiting: HashMap<u64, owner::Waiter, ahash::RandomState>,
    waiting_deadlines: Deadlines<u64>,
    next_id: u64,
    /// Host requests asked here and not answered yet.
    host_pending: usize,
    /// When the members' budgets next drop keys gone idle.
    next_sweep: Timestamp,
    stats: NodeStats,
}

impl RoomNode {
    /// A node with `config`, with no view yet (call [`set_view`](Self::set_view)).
    pub fn new(config: RoomNodeConfig) -> Result<RoomNode, ConfigError> {
        if config.node.0 > RoomNodeConfig::MAX_NODE {
            return Err(ConfigError(format!("node id {} is above {}", config.node, RoomNodeConfig::MAX_NODE)));
        }
        if config.heartbeat.is_zero() || config.heartbeat > Duration::from_secs(600) {
            return Err(ConfigError(format!("heartbeat {:?} must be within (0, 600 s]", config.heartbeat)));
        }
        if config.replicas == 0 || config.forward_attempts == 0 {
            return Err(ConfigError("replicas and forward_attempts must be at least 1".into()));
        }
        let tag = config.node.0 as u16;
        let mut tracker = TrackerConfig::default();
        tracker.default_timing =
            Timing::new(config.heartbeat, config.misses.max(1)).map_err(|e| ConfigError(e.to_string()))?;
        tracker.tick = (config.heartbeat / 20).clamp(Duration::from_millis(10), Duration::from_secs(1));
        // The wheel spans the sessions' timeout, and no more: the tracker
        // remembers every closed connection for `max_timeout` (against a
        // beat delayed past its leave; one delayed longer than the timeout
        // would have found a live session timed out as well). The wheel's
        // largest span (16,000 ticks, 4.4 hours at 1 s ticks) kept a closed
        // connection per member who came and went for hours, up to 65,536
        // of them (about 9 MiB).
        tracker.max_timeout = tracker.default_timing.timeout();
        let mut owner_config = OwnerConfig::default();
        owner_config.tracker = tracker;
        owner_config.router = config.router;
        let sessions = SessionOwner::new(config.node, owner_config).map_err(|e| ConfigError(e.to_string()))?;
        let mut push_config = config.push.clone();
        push_config.conn_tag = tag;
        let push = PushNode::with_codecs(push_config, vec![std::sync::Arc::new(JsonCodec)]);
        let mut replica_config = ReplicaConfig::new(config.node);
        replica_config.replicas = config.replicas;
        replica_config.router = config.router;
        let replica = Replica::new(replica_config);
        let gate = FencedGate::new(config.gate.clone());
        let beats = config.budgets.beats_per_interval.max(1);
        let beat_quota = Quota::new(beats, config.heartbeat)
            .and_then(|q| q.with_burst(beats + 1))
            .map_err(|e| ConfigError(format!("heartbeat budget: {e}")))?;
        Ok(RoomNode {
            beat_quota,
            me: config.node,
            tag,
            router: None,
            previous_router: None,
            push,
            conns: ConnSlab::default(),
            room_refs: HashMap::with_hasher(ahash::RandomState::new()),
            parked: HashMap::with_hasher(ahash::RandomState::new()),
            forwards: ChurnMap::with_hasher(ahash::RandomState::new()),
            forward_deadlines: Deadlines::default(),
            deliveries: HashMap::with_hasher(ahash::RandomState::new()),
            delivery_deadlines: Deadlines::default(),
            tail_checks: HashMap::with_hasher(ahash::RandomState::new()),
            tail_deadlines: Deadlines::default(),
            stalled: HashMap::with_hasher(ahash::RandomState::new()),
            stalled_deadlines: Deadlines::default(),
            senders: KeyedLimiter::new(1 << 20),
            replies: VecDeque::new(),
            follows: Vec::new(),
            closes: VecDeque::new(),
            next_req: 0,
            sessions,
            probes: HashMap::with_hasher(ahash::RandomState::new()),
            departed: HashMap::with_hasher(ahash::RandomState::new()),
            pending_holds: Vec::new(),
            gate,
            rooms: HashMap::with_hasher(ahash::RandomState::new()),
            replica,
            room_timers: Deadlines::default(),
            outputs: VecDeque::new(),
            loopback: VecDeque::new(),
            waiting: HashMap::with_hasher(ahash::RandomState::new()),
            waiting_deadlines: Deadlines::default(),
            next_id: 1,
            host_pending: 0,
            next_sweep: Timestamp::ZERO,
            stats: NodeStats::default(),
            config,
        })
    }

    /// The configuration.
    pub fn config(&self) -> &RoomNodeConfig {
        &self.config
    }

    /// This node.
    pub fn id(&self) -> NodeId {
        self.me
    }

    /// Counters.
    pub fn stats(&self) -> NodeStats {
        NodeStats {
            connections: self.conns.len(),
            sessions: self.sessions.len(),
            rooms: self.rooms.len(),
            push: self.push.stats(),
            ..self.stats
        }
    }

    /// The rooms this node owns, by member count. It walks every owned
    /// room (O(rooms), each count O(1)): for metrics once in a while, not
    /// per input.
    pub fn room_sizes(&self) -> RoomSizes {
        use room_memberlist::MemberStore;
        let mut sizes = RoomSizes::default();
        for room in self.rooms.keys() {
            sizes.add(self.replica.counts(*room).map_or(0, |c| u64::from(c.total())));
        }
        sizes
    }

    /// The nodes this node routes to, in id order.
    pub fn view(&self) -> Vec<NodeId> {
        self.router.as_ref().map_or_else(Vec::new, |r| r.nodes().map(|(n, _)| n).collect())
    }

    /// The owner of `room` in this node's view.
    pub fn room_owner(&self, room: RoomKey) -> Option<NodeId> {
        self.router.as_ref().and_then(|r| r.route(&room).ok())
    }

    /// Whether this node runs `room` now (it owns it and has restored it).
    pub fn runs_room(&self, room: RoomKey) -> bool {
        self.rooms.get(&room).is_some_and(owner::OwnedRoom::is_ready)
    }

    /// Whether this node keeps `member`'s heartbeat session.
    pub fn owns_session(&self, member: &MemberKey) -> bool {
        self.sessions.is_present(member)
    }

    /// This node's member-list replica (the lists of the rooms it owns or
    /// replicates).
    pub fn members(&self) -> &Replica {
        &self.replica
    }

    /// The room's classroom, where this node runs the room (tests, hosts).
    pub fn classroom(&self, room: RoomKey) -> Option<&crate::classroom::Classroom> {
        self.rooms.get(&room).and_then(owner::OwnedRoom::classroom)
    }

    /// Whether `room` is muted, where this node runs it.
    pub fn room_muted(&self, room: RoomKey) -> Option<bool> {
        self.rooms.get(&room).filter(|r| r.is_ready()).map(|r| r.mute_all)
    }

    /// The sub-class of a learner in a room this node runs.
    pub fn subclass_of(&self, room: RoomKey, uin: Uin) -> Option<u16> {
        self.gate.gate().subclass_of(room, uin).map(|s| s.0)
    }

    /// Connections of `room` held here.
    pub fn room_connections(&self, room: RoomKey) -> usize {
        self.room_refs.get(&room).copied().unwrap_or(0)
    }

    /// The next thing for the driver to do.
    #[must_use]
    pub fn poll_output(&mut self) -> Option<Output> {
        let output = self.outputs.pop_front();
        if output.is_none() {
            // Drained: what a burst (a card's answers) grew goes back.
            room_core::shrink_when_empty(&mut self.outputs);
            self.forwards.shrink_when_empty();
        }
        output
    }

    /// When [`handle_timeout`](Self::handle_timeout) should next run.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Timestamp> {
        [
            self.push.poll_timeout(),
            self.sessions.poll_timeout(),
            self.replica.poll_timeout(),
            self.room_timers.first(),
            self.forward_deadlines.first(),
            self.delivery_deadlines.first(),
            self.tail_deadlines.first(),
            self.stalled_deadlines.first(),
            self.waiting_deadlines.first(),
            self.parked.values().map(|p| p.deadline).min(),
            (!self.senders.is_empty()).then_some(self.next_sweep),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// Runs every due timer.
    pub fn handle_timeout(&mut self, now: Timestamp) {
        self.push.handle_timeout(now);
        self.sessions_timeout(now);
        self.replica.handle_timeout(now);
        self.drain_replica();
        self.forwards_timeout(now);
        self.deliveries_timeout(now);
        self.waiting_timeout(now);
        self.parked_timeout(now);
        self.tails_timeout(now);
        self.stalled_timeout(now);
        for room in self.room_timers.due(now) {
            self.room_timer(now, room);
        }
        if now >= self.next_sweep {
            // Budgets of members who stopped asking (or left) are as good
            // as new: dropped now rather than when the limiter fills.
            self.senders.sweep(now);
            self.next_sweep = now.saturating_add(SWEEP_INTERVAL);
        }
        self.drain_loopback(now);
    }

    /// The cluster's view changed (or this is the first one). Sessions and
    /// rooms this node no longer owns are let go; rooms it now owns are
    /// restored from the shared cache; session owners are told which
    /// listed sessions are theirs now.
    pub fn set_view(&mut self, now: Timestamp, view: &ClusterView) {
        let nodes: Vec<(NodeId, u32)> = view.routable().collect();
        if !nodes.iter().any(|(n, _)| *n == self.me) {
            // This node is joining or cut off (its registry saw its own
            // record expire): it decides nothing. Its session owner is
            // told, so that meanwhile it ends no session on a timeout but
            // releases it to whoever owns it now: the members of a node
            // cut off from the others have moved to them, still beating.
            let _ = self.sessions.set_view(now, view);
            return;
        }
        let router = match Router::with_nodes(self.config.router, nodes.iter().copied()) {
            Ok(r) => r,
            Err(_) => return,
        };
        if let Err(e) = self.sessions.set_view(now, view) {
            warn!(error = %e, "heartbeat ownership cannot follow the view");
            let _ = e;
        }
        if let Some(old) = self.router.as_ref() {
            for (node, _) in old.nodes() {
                if !router.contains(node) {
                    self.departed.entry(node).or_insert(now);
                }
            }
        }
        // Only the grace window matters: a node gone for longer is forgotten.
        let grace = self.config.heartbeat * self.config.misses.max(1);
        self.departed.retain(|node, since| !router.contains(*node) && now.saturating_sub(grace) < *since);
        let _ = self.replica.set_nodes(nodes);
        self.previous_router = self.router.replace(router);
        self.announce_moved_sessions();
        self.retry_holds(now);
        self.owner_view_changed(now);
        self.drain_replica();
        self.drain_loopback(now);
    }

    /// Each connection whose session the new view gives to another node
    /// beats to that node now rather than at its client's next beat, up to
    /// a heartbeat interval away. The new owner may hold an older record of
    /// the session (it owned it before a partition, and the connection it
    /// followed is gone): a record that falls due before that beat would
    /// take a member out whose client never stopped beating.
    fn announce_moved_sessions(&mut self) {
        let Some(router) = self.router.as_ref() else { return };
        let previous = self.previous_router.as_ref();
        let moved: Vec<(NodeId, PeerMsg)> = self
            .conns
            .iter()
            .filter(|(_, c)| c.entering.is_none())
            .filter_map(|(conn, c)| {
                let owner = router.route(&c.member).ok()?;
                let before = previous.and_then(|r| r.route(&c.member).ok());
                (before != Some(owner)).then_some((
                    owner,
                    PeerMsg::Beat { member: c.member, role: c.role, terminal: c.terminal, conn, since: c.since },
                ))
            })
            .collect();
        for (owner, beat) in moved {
            self.send_peer(owner, beat);
        }
    }

    /// A message from another node.
    pub fn handle_peer(&mut self, now: Timestamp, from: NodeId, msg: PeerMsg) {
        self.dispatch(now, from, msg);
        self.drain_loopback(now);
    }

    /// A peer message as bytes; undecodable ones are counted and dropped.
    pub fn handle_peer_bytes(&mut self, now: Timestamp, from: NodeId, bytes: &[u8]) -> Result<(), PeerDecodeError> {
        match PeerMsg::decode(bytes) {
            Ok(msg) => {
                self.handle_peer(now, from, msg);
                Ok(())
            }
            Err(e) => {
                self.stats.garbage += 1;
                Err(e)
            }
        }
    }

    /// The shared cache answered request `id`.
    pub fn handle_cache(&mut self, now: Timestamp, id: u64, answer: CacheAnswer) {
        if let Some(waiter) = self.waiting.remove(&id) {
            self.waiting_deadlines.remove(waiter.deadline, id);
            self.cache_answered(now, waiter, answer);
        }
        self.drain_loopback(now);
    }

    /// The global limiter answered request `id`.
    pub fn handle_limit(&mut self, now: Timestamp, id: u64, answer: Result<Decision, LimiterError>) {
        if let Some(waiter) = self.waiting.remove(&id) {
            self.waiting_deadlines.remove(waiter.deadline, id);
            self.limit_answered(now, waiter, answer);
        }
        self.drain_loopback(now);
    }

    fn next_id(&mut self) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        id
    }

    fn cache(&mut self, now: Timestamp, op: CacheOp, purpose: owner::Purpose) {
        let id = self.next_id();
        let deadline = now.saturating_add(self.config.cache_timeout);
        self.waiting.insert(id, owner::Waiter { purpose, deadline });
        self.waiting_deadlines.insert(deadline, id);
        self.outputs.push_back(Output::Cache { id, op });
    }

    fn waiting_timeout(&mut self, now: Timestamp) {
        for id in self.waiting_deadlines.due(now) {
            let Some(waiter) = self.waiting.remove(&id) else { continue };
            let timed_out = SharedCacheError::Unavailable("no answer in time".into());
            let answer = match &waiter.purpose {
                owner::Purpose::Append { .. } => CacheAnswer::Appended(Err(timed_out)),
                owner::Purpose::RestoreHead(_) | owner::Purpose::CheckHead { .. } => CacheAnswer::Head(Err(timed_out)),
                owner::Purpose::RestoreTail(_)
                | owner::Purpose::Refill(_)
                | owner::Purpose::TailRefill(_)
                | owner::Purpose::CheckRange { .. } => CacheAnswer::Range(Err(timed_out)),
                owner::Purpose::TailHead(_) => CacheAnswer::Head(Err(timed_out)),
                owner::Purpose::RestoreState(_) => CacheAnswer::State(Err(timed_out)),
                owner::Purpose::Save { .. } => CacheAnswer::Saved(Err(timed_out)),
                owner::Purpose::Chat { .. } => {
                    self.limit_answered(now, waiter, Err(LimiterError::Full { max_keys: 0 }));
                    continue;
                }
            };
            self.cache_answered(now, waiter, answer);
        }
    }

    /// Sends `msg` to `to`, or handles it here if `to` is this node.
    fn send_peer(&mut self, to: NodeId, msg: PeerMsg) {
        if to == self.me {
            self.loopback.push_back(msg);
        } else {
            self.outputs.push_back(Output::Peer { to, msg });
        }
    }

    /// Handles this node's messages to itself, in order.
    fn drain_loopback(&mut self, now: Timestamp) {
        // Bounded: every message handled here comes from a finite input.
        while let Some(msg) = self.loopback.pop_front() {
            let me = self.me;
            self.dispatch(now, me, msg);
        }
        room_core::shrink_when_empty(&mut self.loopback);
        self.drain_gate(now);
    }

    fn dispatch(&mut self, now: Timestamp, from: NodeId, msg: PeerMsg) {
        let Some(msg) = self.owner_intake(now, from, msg) else { return };
        match msg {
            PeerMsg::Enter { req, member, role, terminal, conn, since, ticket } => {
                self.owner_enter(now, from, req, member, role, terminal, conn, since, ticket)
            }
            PeerMsg::Act { req, member, role, conn, act } => self.owner_act(now, from, req, member, role, conn, act),
            PeerMsg::Entered { req, conn, subclass, epoch, head, muted, self_muted, state } => {
                let entered = access::EnteredAt { subclass, epoch, head, muted, self_muted, state };
                self.access_entered(now, req, conn, entered)
            }
            PeerMsg::Done { req, conn, reply } => self.access_done(now, req, conn, reply),
            PeerMsg::NotOwner { req } | PeerMsg::Busy { req } => self.access_retry_soon(now, req),
            PeerMsg::Join { member, terminal, conn, since } => self.session_join(now, member, terminal, conn, since),
            PeerMsg::Hold { sessions } => self.session_hold(now, sessions),
            PeerMsg::Beat { member, role, terminal, conn, since } => {
                self.session_beat(now, member, role, terminal, conn, since)
            }
            PeerMsg::Leave { member, terminal, conn } => self.session_leave(now, member, terminal, conn),
            PeerMsg::Ended { member, terminal, last, reason } => self.owner_ended(now, member, terminal, last, reason),
            PeerMsg::Host { req, request } => self.owner_host(now, from, req, request),
            PeerMsg::HostDone { req, answer } => self.access_host_done(req, answer),
            PeerMsg::Remove { id, members, reason, message } => {
                self.session_remove(now, members, reason, message);
                self.send_peer(from, PeerMsg::Delivered { id });
            }
            PeerMsg::Bye { id, conn, reason, message } => {
                self.access_bye(now, conn, reason, message);
                self.send_peer(from, PeerMsg::Delivered { id });
            }
            PeerMsg::Delivered { id } => self.delivered(id),
            PeerMsg::Adopted { member, role, terminal } => self.owner_adopted(now, member, role, terminal),
            PeerMsg::Probe { id, conn } => {
                let alive = self.client_alive(now, conn);
                self.send_peer(from, PeerMsg::ProbeAnswer { id, alive });
            }
            PeerMsg::ProbeAnswer { id, alive } => self.session_probe_answer(now, from, id, alive),
            PeerMsg::Close { conn, reason } => self.close_conn(now, conn, reason, false),
            PeerMsg::Repl(m) => {
                self.replica.handle_message(now, from, m);
                self.drain_replica();
            }
        }
    }

    fn drain_replica(&mut self) {
        while let Some((to, msg)) = self.replica.poll_transmit() {
            self.send_peer(to, PeerMsg::Repl(msg));
        }
        // Checked joins are not used by the service: their events have no reader.
        while self.replica.poll_event().is_some() {}
    }

    /// The node that holds `conn` (its tag).
    fn access_node_of(conn: ConnId) -> NodeId {
        NodeId(u64::from(conn.tag()))
    }

    fn in_view(&self, node: NodeId) -> bool {
        self.router.as_ref().is_some_and(|r| r.contains(node))
    }

    fn session_owner_of(&self, member: &MemberKey) -> NodeId {
        self.router.as_ref().and_then(|r| r.route(member).ok()).unwrap_or(self.me)
    }
}
