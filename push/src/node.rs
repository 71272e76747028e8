//! The push node: a connection index, per-connection priority lanes,
//! serialize-once fan-out, chat and reaction merging, and the reliable
//! message cache that answers acks and checks.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use hashbrown::HashMap;
use room_core::{ChurnMap, Flag, Role, RoomKey, Terminal, Timestamp, Uin};

use crate::cache::{Inserted, ReliableCache, Shared};
use crate::codec::{BinaryCodec, Codec, FrameHeader, FrameKind};
use crate::connector::{Connector, Frame, SendError};
use crate::degrade::Level;
use crate::envelope::Envelope;
use crate::log::{Entry, Follower, LogEntry};
use crate::message::{Class, Kind, Scope, SubclassId, Target};

/// A connection on a push node: room-core's [`ConnId`],
/// tagged with [`NodeConfig::conn_tag`]. A slot's generation changes with
/// every connection it holds, so a stale id is refused rather than taken
/// for a newer connection.
pub use room_core::ConnId;

/// What a slow connection gets when its reliable lane overflows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum OverflowPolicy {
    /// Drop the queued reliable messages and send a resync marker; the
    /// client recovers them from the cache with a check.
    #[default]
    Resync,
    /// Drop the connection ([`NodeEvent::Disconnected`] with
    /// [`DisconnectReason::SlowConsumer`]).
    Disconnect,
}

/// Limits and windows of a push node.
///
/// Memory per connection is bounded by the lanes: a connection holds at
/// most `reliable_lane` reliable entries (16 bytes each plus the shared
/// message), `chat_lane` chat frames (8 bytes each plus the shared batch)
/// and one reaction frame, allocated with the first frame queued (with
/// [`Delivery::Log`], most connections never have one). An idle
/// connection costs its record and index entries: about 200 bytes fresh.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct NodeConfig {
    /// Connections the node accepts.
    pub max_connections: usize,
    /// Rooms the node holds.
    pub max_rooms: usize,
    /// Reliable (signal and teacher) frames queued per connection.
    pub reliable_lane: usize,
    /// Chat frames queued per connection; the oldest is shed first.
    pub chat_lane: usize,
    /// What happens when a reliable lane overflows.
    pub overflow: OverflowPolicy,
    /// Chat lines are merged over this window ([`Level::Normal`]).
    pub chat_window: Duration,
    /// ... and over this one from [`Level::MergeHarder`] up.
    pub chat_window_under_load: Duration,
    /// Lines per chat batch ([`Level::Normal`]), counted per audience: a
    /// sub-class's batch (its lines and the room-wide ones) that is full
    /// closes the window at once; the batch of the connections in no
    /// sub-class (who see every line) goes out when full while the window
    /// stays open for the sub-classes. A window holds at most four
    /// batches' worth of lines in all.
    pub batch_lines: usize,
    /// Lines per chat batch from [`Level::MergeHarder`] up; lines beyond it
    /// are sampled out (dropped and counted) until the window closes.
    pub batch_lines_under_load: usize,
    /// A reliable message to the whole room (no sub-class, role or
    /// terminal filter) first closes the room's open chat window: its
    /// lines reach each connection just before the message, in the same
    /// write, instead of in a write of their own up to a window later.
    /// (Lines keep their acceptance order; a class whose teacher speaks
    /// often sends its chat with the teacher's words.)
    pub chat_rides_reliable: bool,
    /// With [`chat_rides_reliable`](Self::chat_rides_reliable): a chat
    /// window opened after one that rode a reliable message waits this
    /// much longer for the next such message before it closes on its own.
    /// A teacher who speaks about once a window then carries every window,
    /// instead of racing its timer (each lost race is a write per member);
    /// once a window closes on its timer or full, the next is plain again.
    /// At [`Level::Normal`] only; zero keeps windows to
    /// [`chat_window`](Self::chat_window).
    pub chat_ride_wait: Duration,
    /// Reaction totals are sent at most once per window.
    pub reaction_window: Duration,
    /// Reactions windows from [`Level::MergeHarder`] up.
    pub reaction_window_under_load: Duration,
    /// Distinct reaction kinds counted per room; reactions of further kinds
    /// are dropped and counted ([`NodeStats::reactions_dropped`]).
    pub max_reaction_kinds: usize,
    /// Reliable messages cached per room for recovery.
    pub cache_len: usize,
    /// How long a reliable message stays recoverable.
    pub cache_age: Duration,
    /// Messages in one check answer; longer ranges are answered in parts.
    pub max_check_answer: usize,
    /// The tag of every [`ConnId`] this node gives out (the room service
    /// puts its node id here, so that an id names its node).
    pub conn_tag: u16,
    /// How reliable messages and chat batches reach the connections.
    pub delivery: Delivery,
}

/// How a node hands reliable messages and chat batches to its connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Delivery {
    /// Queued per connection, in its lanes, and handed to the
    /// [`Connector`] by [`PushNode::flush`]: the node's work grows with
    /// the recipients.
    #[default]
    Lanes,
    /// Published once per room ([`PushNode::poll_log`]) for the host's
    /// writers to read through their [`Follower`]s
    /// ([`PushNode::follow`]): the node's work does not grow with the
    /// room. Reaction totals go the same way; a reliable message for a
    /// few connections goes to each of them ([`LogOutput::Direct`]); chat
    /// to named users still goes through the lanes.
    Log,
}

/// What a node in [`Delivery::Log`] asks its host to do, in order.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum LogOutput {
    /// Entry number `pos` (from 0) of `room`'s log.
    Append {
        /// The room.
        room: RoomKey,
        /// Its number in the room's log.
        pos: u64,
        /// The entry.
        entry: LogEntry,
    },
    /// A reliable message for a few of the room's connections, handed to
    /// each of them instead of published to the room (every writer of a
    /// large room would wake to read an entry that is not theirs): `conn`
    /// reads `entry` through its [`Follower::take`] after the log entries
    /// appended before this output and before those appended after it.
    Direct {
        /// The connection.
        conn: ConnId,
        /// The message (shared by its recipients).
        entry: LogEntry,
    },
    /// From entry `at` of its room's log on, `conn` is in `subclass`
    /// ([`Follower::set_subclass`] before reading entry `at`).
    Moved {
        /// The connection.
        conn: ConnId,
        /// The first entry read in the new sub-class.
        at: u64,
        /// The new sub-class.
        subclass: Option<SubclassId>,
    },
}

impl Default for NodeConfig {
    fn default() -> Self {
        NodeConfig {
            max_connections: 500_000,
            max_rooms: 100_000,
            reliable_lane: 256,
            chat_lane: 32,
            overflow: OverflowPolicy::Resync,
            chat_window: Duration::from_millis(100),
            chat_window_under_load: Duration::from_millis(500),
            batch_lines: 64,
            batch_lines_under_load: 32,
            chat_rides_reliable: true,
            chat_ride_wait: Duration::from_millis(50),
            reaction_window: Duration::from_millis(500),
            reaction_window_under_load: Duration::from_secs(2),
            max_reaction_kinds: 32,
            cache_len: 1024,
            cache_age: Duration::from_secs(300),
            max_check_answer: 256,
            conn_tag: 0,
            delivery: Delivery::Lanes,
        }
    }
}

/// A connection joining a node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnSpec {
    /// The room.
    pub room: RoomKey,
    /// The user.
    pub uin: Uin,
    /// The user's role (from the host's authentication, never the client).
    pub role: Role,
    /// The terminal connected from.
    pub terminal: Terminal,
    /// The sub-class the room's gate assigned (`None` for teachers and
    /// assistants, or when the room is not split).
    pub subclass: Option<SubclassId>,
    /// Index of the wire format in the node's codec list (0 by default).
    pub format: u8,
}

impl ConnSpec {
    /// A connection in the default wire format, in no sub-class.
    pub fn new(room: RoomKey, uin: Uin, role: Role, terminal: Terminal) -> Self {
        ConnSpec { room, uin, role, terminal, subclass: None, format: 0 }
    }

    /// In `subclass`.
    pub fn in_subclass(mut self, subclass: Option<SubclassId>) -> Self {
        self.subclass = subclass;
        self
    }

    /// In wire format `format`.
    pub fn with_format(mut self, format: u8) -> Self {
        self.format = format;
        self
    }
}

/// What a new connection needs to start acking.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Connected {
    /// The connection.
    pub conn: ConnId,
    /// The room's sequence epoch (0 before the first reliable message).
    pub epoch: u64,
    /// The room's newest reliable sequence number: the client starts here.
    pub head: u64,
}

/// Why a connection was dropped by the node.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum DisconnectReason {
    /// Its reliable lane overflowed under [`OverflowPolicy::Disconnect`].
    SlowConsumer,
    /// The connector said the connection is closed.
    Closed,
    /// The connector failed.
    ConnectorFailed(String),
}

/// Something the host should act on.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum NodeEvent {
    /// The node dropped a connection; the host closes its transport.
    Disconnected {
        /// The connection.
        conn: ConnId,
        /// Its user.
        uin: Uin,
        /// Its room.
        room: RoomKey,
        /// Why.
        reason: DisconnectReason,
    },
    /// A [`Kind::LEVEL`] signal switched this node's level.
    LevelChanged(Level),
}

/// Counters of a node since it started.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct NodeStats {
    /// Connections now.
    pub connections: usize,
    /// Rooms now.
    pub rooms: usize,
    /// Frames waiting in lanes now.
    pub queued_frames: u64,
    /// Frames handed to connectors.
    pub frames_sent: u64,
    /// Envelopes handled.
    pub envelopes: u64,
    /// Reliable envelopes seen twice (ignored).
    pub duplicates: u64,
    /// Reliable envelopes that arrived after a gap in the sequence.
    pub sequence_gaps: u64,
    /// Reliable envelopes from an older epoch than the room's (ignored).
    pub stale_epoch: u64,
    /// Reactions of a kind beyond `max_reaction_kinds` in their room (dropped).
    pub reactions_dropped: u64,
    /// Chat frames shed from full chat lanes.
    pub chat_shed: u64,
    /// Chat lines sampled out of full batches under load.
    pub chat_sampled_out: u64,
    /// Resync markers queued.
    pub resyncs: u64,
    /// Connections dropped by the node.
    pub disconnects: u64,
    /// Check requests answered with messages.
    pub checks_answered: u64,
    /// Check requests answered with a reset.
    pub resets: u64,
    /// Envelopes handled, by class (indexed by [`Class::code`]).
    pub envelopes_by_class: [u64; 4],
    /// Frames handed to connectors, by class (indexed by [`Class::code`]):
    /// merged chat and reaction frames count once each, resync markers as
    /// signal frames.
    pub frames_by_class: [u64; 4],
}

impl NodeStats {
    /// Adds `other`'s counters to these (the nodes of one process).
    pub fn absorb(&mut self, other: &NodeStats) {
        // Destructured: a counter added later must be summed here too.
        let NodeStats {
            connections,
            rooms,
            queued_frames,
            frames_sent,
            envelopes,
            duplicates,
            sequence_gaps,
            stale_epoch,
            reactions_dropped,
            chat_shed,
            chat_sampled_out,
            resyncs,
            disconnects,
            checks_answered,
            resets,
            envelopes_by_class,
            frames_by_class,
        } = *other;
        self.connections += connections;
        self.rooms += rooms;
        self.queued_frames += queued_frames;
        self.frames_sent += frames_sent;
        self.envelopes += envelopes;
        self.duplicates += duplicates;
        self.sequence_gaps += sequence_gaps;
        self.stale_epoch += stale_epoch;
        self.reactions_dropped += reactions_dropped;
        self.chat_shed += chat_shed;
        self.chat_sampled_out += chat_sampled_out;
        self.resyncs += resyncs;
        self.disconnects += disconnects;
        self.checks_answered += checks_answered;
        self.resets += resets;
        for (sum, n) in self.envelopes_by_class.iter_mut().zip(envelopes_by_class) {
            *sum += n;
        }
        for (sum, n) in self.frames_by_class.iter_mut().zip(frames_by_class) {
            *sum += n;
        }
    }
}

/// Why a node refused an input.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum NodeError {
    /// No such connection (never connected, or already gone).
    #[error("unknown connection {0:?}")]
    UnknownConnection(ConnId),
    /// No connection of this room is on this node.
    #[error("room {0} has no connections on this node")]
    UnknownRoom(RoomKey),
    /// The node is at `max_connections`.
    #[error("the node holds {max} connections, its maximum")]
    TooManyConnections {
        /// The limit.
        max: usize,
    },
    /// The node is at `max_rooms`.
    #[error("the node holds {max} rooms, its maximum")]
    TooManyRooms {
        /// The limit.
        max: usize,
    },
    /// A wire format index with no codec.
    #[error("wire format {format} is not configured (the node has {formats})")]
    UnknownFormat {
        /// The index given.
        format: u8,
        /// Codecs configured.
        formats: usize,
    },
    /// An ack above what the node ever sent the connection.
    #[error("ack of sequence {acked} but only {last} was ever sent to this connection")]
    AckFromFuture {
        /// The sequence acked.
        acked: u64,
        /// The newest sent.
        last: u64,
    },
    /// A check starting after what the node ever sent the connection.
    #[error("check after sequence {after} but only {last} was ever sent to this connection")]
    CheckFromFuture {
        /// The start given.
        after: u64,
        /// The newest sent.
        last: u64,
    },
    /// A reliable envelope with sequence number 0, or a chat or reaction
    /// envelope with one.
    #[error("envelope sequence {seq} does not fit class {class:?}")]
    BadSequence {
        /// The class.
        class: Class,
        /// The number.
        seq: u64,
    },
}

/// The node's answer to an ack.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum AckReply {
    /// The client has everything the node sent it.
    UpToDate,
    /// The node has handed the client reliable messages up to `last`; if
    /// they do not arrive, the client should check.
    Behind {
        /// The newest reliable sequence number sent to this connection.
        last: u64,
    },
    /// The client's epoch is stale: its numbers mean nothing now. It should
    /// reload the room's state and continue from `head` in `epoch`.
    Reset {
        /// The room's epoch.
        epoch: u64,
        /// Where to continue from.
        head: u64,
    },
}

/// A recovered message, owned (check answers outlive the node borrow).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecoveredFrame {
    /// The header, with `prev` chaining the answer's messages.
    pub header: FrameHeader,
    /// The message's kind.
    pub kind: Kind,
    /// The body in the connection's wire format (shared with the cache).
    pub body: Bytes,
}

/// The node's answer to a check: never partial.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum CheckAnswer {
    /// Every reliable message for this connection numbered
    /// `after + 1 ..= upto`, in order. When `upto` is below what the node
    /// sent the connection, the client checks again from `upto`.
    Messages {
        /// The room's epoch.
        epoch: u64,
        /// The end of the range covered.
        upto: u64,
        /// The messages, oldest first.
        frames: Vec<RecoveredFrame>,
    },
    /// The range is no longer held (older than the cache, or the epoch
    /// changed): the client reloads the room's state and continues from
    /// `head` in `epoch`.
    Reset {
        /// The room's epoch.
        epoch: u64,
        /// Where to continue from.
        head: u64,
    },
}

const NONE: u32 = u32::MAX;
/// Cached messages an ack from a connection that reads the room's log is
/// compared with (newest first): a message for it further back that it
/// did not get is found by the next frame's `prev`, not by the ack.
const ACK_SCAN: usize = 256;
/// [`Delivery::Log`]: a reliable message reaching at most this many
/// connections (and at most half of its room's) goes to each of them
/// ([`LogOutput::Direct`]) rather than to the room's log.
const DIRECT_MAX: usize = 32;
const ROLE_LISTS: usize = 64;

#[derive(Debug)]
struct Conn {
    generation: u16,
    live: bool,
    uin: Uin,
    room: u32,
    role: Role,
    terminal: Terminal,
    subclass: Option<SubclassId>,
    format: u8,
    ready: bool,
    blocked: bool,
    resync: bool,
    /// Connected before the room's first reliable message: epoch 0 from
    /// this client means the room's first epoch.
    before_first_epoch: bool,
    /// [`Delivery::Log`]: its writer reads the room's log.
    following: bool,
    pos_all: u32,
    pos_role: u32,
    pos_terminal: u32,
    pos_subclass: u32,
    pos_uin: u32,
    last_seq: u64,
    acked: u64,
    /// Its lanes, from the first frame queued for it (with log delivery,
    /// most connections never have one).
    lanes: Option<Box<ConnLanes>>,
}

#[derive(Debug, Default)]
struct ConnLanes {
    reliable: VecDeque<(Arc<Shared>, u64)>,
    chat: VecDeque<Arc<Shared>>,
    reactions: Option<Arc<Shared>>,
}

impl Conn {
    fn queued(&self) -> u64 {
        let lanes =
            self.lanes.as_ref().map_or(0, |q| q.reliable.len() + q.chat.len() + usize::from(q.reactions.is_some()));
        (lanes + usize::from(self.resync)) as u64
    }

    fn reliable_queued(&self) -> usize {
        self.lanes.as_ref().map_or(0, |q| q.reliable.len())
    }

    fn lanes(&mut self) -> &mut ConnLanes {
        self.lanes.get_or_insert_default()
    }
}

#[derive(Debug, Default)]
struct ChatBuffer {
    window: ChatWindow,
    due: Option<Timestamp>,
    /// The last window closed by riding a reliable message.
    rode: bool,
}

/// The lines of a room's open chat window, and what they add up to.
#[derive(Debug, Default)]
struct ChatWindow {
    lines: Vec<Envelope>,
    /// `lines[..sent_to_unassigned]` went to the connections in no
    /// sub-class already (their batch filled before the window closed).
    sent_to_unassigned: usize,
    /// Lines to the whole room.
    room_wide: usize,
    /// Lines to one sub-class, by sub-class.
    per_subclass: BTreeMap<SubclassId, usize>,
}

/// A window holds at most this many batches' worth of lines in all,
/// whatever their sub-classes (each sub-class's batch is bounded on its own).
const HELD_BATCHES: usize = 4;

impl ChatWindow {
    fn add(&mut self, env: Envelope) {
        match env.message.target.subclass {
            Some(s) => *self.per_subclass.entry(s).or_default() += 1,
            None => self.room_wide += 1,
        }
        self.lines.push(env);
    }

    /// Whether a line to `subclass` (`None`: the whole room) would take a
    /// sub-class's batch past `cap` lines.
    fn fills_a_batch(&self, subclass: Option<SubclassId>, cap: usize) -> bool {
        let own = match subclass {
            Some(s) => self.per_subclass.get(&s).copied().unwrap_or(0),
            None => self.per_subclass.values().copied().max().unwrap_or(0),
        };
        self.room_wide + own >= cap
    }
}

#[derive(Debug)]
struct Room {
    key: RoomKey,
    epoch: u64,
    cache: ReliableCache,
    all: Vec<u32>,
    by_role: Vec<Vec<u32>>,
    by_terminal: [Vec<u32>; 7],
    by_subclass: Vec<Vec<u32>>,
    unassigned: Vec<u32>,
    by_uin: ChurnMap<Uin, Vec<u32>, ahash::RandomState>,
    chat: ChatBuffer,
    reaction_totals: BTreeMap<Kind, u64>,
    reactions_due: Option<Timestamp>,
    emptied_at: Option<Timestamp>,
    /// Entries published to the room's log ([`Delivery::Log`]).
    log_len: u64,
}

/// What closed a chat window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Closed {
    /// A reliable message to the room took its lines along.
    Ride,
    /// It held a batch's worth of lines.
    Full,
    /// Its time was up.
    Timer,
}

fn terminal_index(t: Terminal) -> usize {
    t.bit() as usize
}

fn list_remove(list: &mut Vec<u32>, pos: u32, conns: &mut [Conn], which: fn(&mut Conn) -> &mut u32) {
    let pos = pos as usize;
    list.swap_remove(pos);
    if let Some(&moved) = list.get(pos) {
        *which(&mut conns[moved as usize]) = pos as u32;
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum TimerKind {
    Chat,
    Reactions,
    /// A room emptied: let it go once its cache has aged out.
    Expire,
}

/// A push node: the connections it holds, their lanes, and the room caches
/// that answer checks.
///
/// Call order: `connect` each connection, `handle_envelope` for every
/// envelope of its rooms (from the gate, or the bus in a cluster), `flush`
/// into the writers whenever there is something to send, `handle_ack` and
/// `handle_check` for what clients say, `handle_timeout` when
/// `poll_timeout` says, `disconnect` when a connection goes.
///
/// ```
/// use room_core::{BusinessId, Role, RoomId, RoomKey, Terminal, Timestamp, Uin};
/// use room_push::*;
///
/// # struct Socket(usize);
/// # impl Connector for Socket {
/// #     fn send(&mut self, _: &Frame<'_>) -> Result<(), SendError> { self.0 += 1; Ok(()) }
/// # }
/// let room = RoomKey::new(BusinessId(1), RoomId(42));
/// let now = Timestamp::from_millis(1_000);
/// let mut gate = Gate::new(GateConfig::default());
/// gate.open_room(now, room)?;
/// let mut node = PushNode::new(NodeConfig::default());
/// for uin in 1..=3 {
///     node.connect(ConnSpec::new(room, Uin(uin), Role::Student, Terminal::Web))?;
/// }
/// let notice = gate.publish(now, Message::new(room, Class::Signal, Kind(1), &b"break"[..]))?;
/// node.handle_envelope(now, &notice)?;
/// let mut socket = Socket(0);
/// node.flush(now, &mut socket);
/// assert_eq!(socket.0, 3, "one frame per connection, the body encoded once");
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug)]
pub struct PushNode {
    config: NodeConfig,
    codecs: Vec<Arc<dyn Codec>>,
    conns: Vec<Conn>,
    free: Vec<u32>,
    rooms: Vec<Option<Room>>,
    free_rooms: Vec<u32>,
    room_ids: HashMap<RoomKey, u32, ahash::RandomState>,
    lanes: Lanes,
    timers: BTreeSet<(Timestamp, u32, TimerKind)>,
    level: Level,
    events: VecDeque<NodeEvent>,
    log: VecDeque<LogOutput>,
    empty: Bytes,
}

impl PushNode {
    /// A node with the [`BinaryCodec`] as wire format 0.
    pub fn new(config: NodeConfig) -> Self {
        Self::with_codecs(config, vec![Arc::new(BinaryCodec)])
    }

    /// A node serving these wire formats (indexes 0.., at most 8; at least
    /// one: an empty list gets the [`BinaryCodec`]).
    pub fn with_codecs(config: NodeConfig, mut codecs: Vec<Arc<dyn Codec>>) -> Self {
        if codecs.is_empty() {
            codecs.push(Arc::new(BinaryCodec));
        }
        codecs.truncate(8);
        let lanes = Lanes {
            reliable_cap: config.reliable_lane.max(1),
            chat_cap: config.chat_lane.max(1),
            overflow: config.overflow,
            ready: Vec::new(),
            overflowed: Vec::new(),
            stats: NodeStats::default(),
        };
        PushNode {
            config,
            lanes,
            codecs,
            conns: Vec::new(),
            free: Vec::new(),
            rooms: Vec::new(),
            free_rooms: Vec::new(),
            room_ids: HashMap::with_hasher(ahash::RandomState::new()),
            timers: BTreeSet::new(),
            level: Level::Normal,
            events: VecDeque::new(),
            log: VecDeque::new(),
            empty: Bytes::new(),
        }
    }

    /// The node's configuration.
    pub fn config(&self) -> &NodeConfig {
        &self.config
    }

    /// The level this node applies (set by [`Kind::LEVEL`] signals).
    pub fn level(&self) -> Level {
        self.level
    }

    /// Counters.
    pub fn stats(&self) -> NodeStats {
        NodeStats { connections: self.conns.len() - self.free.len(), rooms: self.room_ids.len(), ..self.lanes.stats }
    }

    /// The next event for the host.
    #[must_use]
    pub fn poll_event(&mut self) -> Option<NodeEvent> {
        self.events.pop_front()
    }

    /// The next entry or move for the host's room logs
    /// ([`Delivery::Log`]), in order.
    #[must_use = "an entry not kept never reaches the room's connections"]
    pub fn poll_log(&mut self) -> Option<LogOutput> {
        self.log.pop_front()
    }

    /// [`Delivery::Log`]: the connection's writer starts reading its
    /// room's log at the returned position, with the returned follower
    /// (its sub-class, and its last reliable number: the room's head, what
    /// [`connection_head`](Self::connection_head) says). Until then it
    /// reads nothing from the log: a host calls this once it sent what
    /// must come first (a welcome). Calling it again starts again.
    pub fn follow(&mut self, id: ConnId) -> Result<(u64, Follower), NodeError> {
        let c = self.conn(id)?;
        let room = self.rooms[c.room as usize].as_ref().expect("live room");
        let last = self.last_for(c, room);
        let follower = Follower {
            uin: c.uin,
            role: c.role,
            terminal: c.terminal,
            subclass: c.subclass,
            format: c.format,
            epoch: room.epoch,
            last,
        };
        let from = room.log_len;
        let c = &mut self.conns[id.slot() as usize];
        c.following = true;
        c.last_seq = last;
        Ok((from, follower))
    }

    /// The newest reliable number a connection may have been given: in
    /// lanes, its own count; from the log, the room's head (its writer
    /// reads the log at its own pace). Acks and checks may not go beyond
    /// it.
    fn last_for(&self, c: &Conn, room: &Room) -> u64 {
        match self.config.delivery {
            Delivery::Lanes => c.last_seq,
            _ => room.cache.head(),
        }
    }

    /// From the log: the newest number after `acked` that the connection
    /// should have, if any: the newest cached message after it that
    /// reaches the connection (among the newest [`ACK_SCAN`]), or a number
    /// it was told of otherwise (its start, the end of a gap).
    fn owed_after(&self, c: &Conn, room: &Room, acked: u64) -> Option<u64> {
        let reaching = room
            .cache
            .newest(ACK_SCAN)
            .take_while(|m| m.seq > acked)
            .find(|m| m.reaches(c.uin, c.role, c.terminal, c.subclass))
            .map(|m| m.seq);
        reaching.max((c.last_seq > acked).then_some(c.last_seq))
    }

    fn publish(&mut self, room_idx: u32, entry: Entry) {
        let room = self.rooms[room_idx as usize].as_mut().expect("live room");
        let pos = room.log_len;
        room.log_len += 1;
        self.log.push_back(LogOutput::Append { room: room.key, pos, entry: LogEntry::new(entry) });
    }

    /// When [`PushNode::handle_timeout`] should next run.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Timestamp> {
        self.timers.first().map(|t| t.0)
    }

    fn conn(&self, id: ConnId) -> Result<&Conn, NodeError> {
        match self.conns.get(id.slot() as usize) {
            Some(c) if c.live && c.generation == id.generation() && id.tag() == self.config.conn_tag => Ok(c),
            _ => Err(NodeError::UnknownConnection(id)),
        }
    }

    fn room_mut(&mut self, idx: u32) -> &mut Room {
        self.rooms[idx as usize].as_mut().expect("live connections point at live rooms")
    }

    /// Adds a connection to its room's index.
    pub fn connect(&mut self, spec: ConnSpec) -> Result<Connected, NodeError> {
        if usize::from(spec.format) >= self.codecs.len() {
            return Err(NodeError::UnknownFormat { format: spec.format, formats: self.codecs.len() });
        }
        if self.conns.len() - self.free.len() >= self.config.max_connections {
            return Err(NodeError::TooManyConnections { max: self.config.max_connections });
        }
        let room_idx = match self.room_ids.get(&spec.room) {
            Some(&r) => r,
            None => {
                if self.room_ids.len() >= self.config.max_rooms {
                    return Err(NodeError::TooManyRooms { max: self.config.max_rooms });
                }
                let room = Room {
                    key: spec.room,
                    epoch: 0,
                    cache: ReliableCache::new(self.config.cache_len, self.config.cache_age),
                    all: Vec::new(),
                    by_role: (0..ROLE_LISTS).map(|_| Vec::new()).collect(),
                    by_terminal: Default::default(),
                    by_subclass: Vec::new(),
                    unassigned: Vec::new(),
                    by_uin: ChurnMap::with_hasher(ahash::RandomState::new()),
                    chat: ChatBuffer::default(),
                    reaction_totals: BTreeMap::new(),
                    reactions_due: None,
                    emptied_at: None,
                    log_len: 0,
                };
                let idx = match self.free_rooms.pop() {
                    Some(i) => {
                        self.rooms[i as usize] = Some(room);
                        i
                    }
                    None => {
                        self.rooms.push(Some(room));
                        (self.rooms.len() - 1) as u32
                    }
                };
                self.room_ids.insert(spec.room, idx);
                idx
            }
        };
        let (slot, generation) = match self.free.pop() {
            Some(s) => (s, self.conns[s as usize].generation.wrapping_add(1)),
            None => {
                self.conns.push(Conn {
                    generation: 0,
                    live: false,
                    uin: spec.uin,
                    room: room_idx,
                    role: spec.role,
                    terminal: spec.terminal,
                    subclass: None,
                    format: 0,
                    ready: false,
                    blocked: false,
                    resync: false,
                    before_first_epoch: false,
                    following: false,
                    pos_all: NONE,
                    pos_role: NONE,
                    pos_terminal: NONE,
                    pos_subclass: NONE,
                    pos_uin: NONE,
                    last_seq: 0,
                    acked: 0,
                    lanes: None,
                });
                ((self.conns.len() - 1) as u32, 0)
            }
        };
        let room = self.rooms[room_idx as usize].as_mut().expect("just found or made");
        room.emptied_at = None;
        let subclass = spec.subclass;
        let (epoch, head) = (room.epoch, room.cache.head());
        let c = &mut self.conns[slot as usize];
        c.generation = generation;
        c.live = true;
        c.uin = spec.uin;
        c.room = room_idx;
        c.role = spec.role;
        c.terminal = spec.terminal;
        c.subclass = subclass;
        c.format = spec.format;
        c.ready = false;
        c.blocked = false;
        c.resync = false;
        c.before_first_epoch = epoch == 0;
        c.following = false;
        c.last_seq = head;
        c.acked = head;
        c.pos_all = room.all.len() as u32;
        room.all.push(slot);
        let roles = &mut room.by_role[spec.role.bit() as usize];
        c.pos_role = roles.len() as u32;
        roles.push(slot);
        let terms = &mut room.by_terminal[terminal_index(spec.terminal)];
        c.pos_terminal = terms.len() as u32;
        terms.push(slot);
        let same_user = room.by_uin.entry(spec.uin).or_default();
        c.pos_uin = same_user.len() as u32;
        same_user.push(slot);
        self.link_subclass(slot, subclass);
        Ok(Connected { conn: ConnId::new(self.config.conn_tag, generation, slot), epoch, head })
    }

    fn unlink_subclass(&mut self, slot: u32) {
        let c = &self.conns[slot as usize];
        let (room_idx, pos, subclass) = (c.room, c.pos_subclass, c.subclass);
        let room = self.rooms[room_idx as usize].as_mut().expect("live room");
        let list = match subclass {
            Some(s) => &mut room.by_subclass[usize::from(s.0)],
            None => &mut room.unassigned,
        };
        list_remove(list, pos, &mut self.conns, |c| &mut c.pos_subclass);
    }

    fn link_subclass(&mut self, slot: u32, subclass: Option<SubclassId>) {
        let room_idx = self.conns[slot as usize].room;
        let room = self.rooms[room_idx as usize].as_mut().expect("live room");
        let list = match subclass {
            Some(s) => {
                let i = usize::from(s.0);
                if room.by_subclass.len() <= i {
                    room.by_subclass.resize_with(i + 1, Vec::new);
                }
                &mut room.by_subclass[i]
            }
            None => &mut room.unassigned,
        };
        let c = &mut self.conns[slot as usize];
        c.pos_subclass = list.len() as u32;
        c.subclass = subclass;
        list.push(slot);
    }

    /// Removes a connection. Its queued frames are dropped.
    pub fn disconnect(&mut self, now: Timestamp, id: ConnId) -> Result<(), NodeError> {
        self.conn(id)?;
        self.remove(now, id.slot());
        Ok(())
    }

    fn remove(&mut self, now: Timestamp, slot: u32) {
        self.unlink_subclass(slot);
        let c = &mut self.conns[slot as usize];
        c.live = false;
        self.lanes.stats.queued_frames -= c.queued();
        c.lanes = None;
        c.resync = false;
        let (room_idx, uin, role, terminal) = (c.room, c.uin, c.role, c.terminal);
        let (p_all, p_role, p_term, p_uin) = (c.pos_all, c.pos_role, c.pos_terminal, c.pos_uin);
        let room = self.rooms[room_idx as usize].as_mut().expect("live room");
        list_remove(&mut room.all, p_all, &mut self.conns, |c| &mut c.pos_all);
        list_remove(&mut room.by_role[role.bit() as usize], p_role, &mut self.conns, |c| &mut c.pos_role);
        list_remove(&mut room.by_terminal[terminal_index(terminal)], p_term, &mut self.conns, |c| &mut c.pos_terminal);
        if let Some(list) = room.by_uin.get_mut(&uin) {
            list_remove(list, p_uin, &mut self.conns, |c| &mut c.pos_uin);
            if list.is_empty() {
                room.by_uin.remove(&uin);
            }
        }
        if room.all.is_empty() {
            room.emptied_at = Some(now);
            self.timers.insert((now.saturating_add(self.config.cache_age), room_idx, TimerKind::Expire));
        }
        self.free.push(slot);
    }

    /// Moves `uin`'s connections in `room` to `subclass` (what a
    /// [`Kind::SUBCLASS`] signal does; hosts call it directly when they
    /// assign without the bus).
    pub fn set_subclass(&mut self, room: RoomKey, uin: Uin, subclass: Option<SubclassId>) -> Result<(), NodeError> {
        let room_idx = *self.room_ids.get(&room).ok_or(NodeError::UnknownRoom(room))?;
        let r = self.room_mut(room_idx);
        let slots = r.by_uin.get(&uin).cloned().unwrap_or_default();
        for slot in slots {
            self.move_subclass(slot, subclass);
        }
        Ok(())
    }

    /// Moves the connection in `slot` to `subclass` (its chat batch is the
    /// one of where it is when the window closes).
    fn move_subclass(&mut self, slot: u32, subclass: Option<SubclassId>) {
        let c = &self.conns[slot as usize];
        if c.subclass == subclass {
            return;
        }
        let room_idx = c.room;
        // Into or out of no sub-class after the staff had part of the
        // window: where the connection is when the window closes would
        // give it those lines twice, or never.
        let staff_had_some =
            self.rooms[room_idx as usize].as_ref().is_some_and(|r| r.chat.window.sent_to_unassigned > 0);
        if staff_had_some && (c.subclass.is_none() || subclass.is_none()) {
            self.flush_chat(room_idx, Closed::Full);
        }
        self.unlink_subclass(slot);
        self.link_subclass(slot, subclass);
        let c = &self.conns[slot as usize];
        if c.following {
            let conn = ConnId::new(self.config.conn_tag, c.generation, slot);
            let at = self.rooms[room_idx as usize].as_ref().map_or(0, |r| r.log_len);
            self.log.push_back(LogOutput::Moved { conn, at, subclass });
        }
    }

    /// The connection may take frames again (after [`SendError::WouldBlock`]).
    pub fn set_writable(&mut self, id: ConnId) -> Result<(), NodeError> {
        self.conn(id)?;
        let slot = id.slot() as usize;
        let c = &mut self.conns[slot];
        c.blocked = false;
        if !c.ready && c.queued() > 0 {
            c.ready = true;
            self.lanes.ready.push(slot as u32);
        }
        Ok(())
    }

    /// Holds a connection's frames in its lanes until
    /// [`PushNode::set_writable`] (a host that must send something else
    /// first, a welcome say, before any pushed frame).
    pub fn set_blocked(&mut self, id: ConnId) -> Result<(), NodeError> {
        self.conn(id)?;
        self.conns[id.slot() as usize].blocked = true;
        Ok(())
    }

    /// Moves one connection to `subclass` (where [`PushNode::set_subclass`]
    /// moves every connection of a user).
    pub fn set_connection_subclass(&mut self, id: ConnId, subclass: Option<SubclassId>) -> Result<(), NodeError> {
        self.conn(id)?;
        self.move_subclass(id.slot(), subclass);
        Ok(())
    }

    /// A connection's sub-class.
    pub fn connection_subclass(&self, id: ConnId) -> Result<Option<SubclassId>, NodeError> {
        Ok(self.conn(id)?.subclass)
    }

    /// Where a connection's reliable messages stand: its room's epoch on
    /// this node and the last sequence number the connection was given
    /// (its room's head when it connected, then each reliable message
    /// queued for it; with [`Delivery::Log`], the room's head). Its acks
    /// and checks may not go beyond that number.
    pub fn connection_head(&self, id: ConnId) -> Result<(u64, u64), NodeError> {
        let c = self.conn(id)?;
        let room = self.rooms[c.room as usize].as_ref().expect("live room");
        Ok((room.epoch, self.last_for(c, room)))
    }

    /// Counts a check its host answered with a reset (from a shared cache
    /// that did not hold the range either).
    pub fn count_reset(&mut self) {
        self.lanes.stats.resets += 1;
    }

    /// Connections of `room` on this node.
    pub fn room_connections(&self, room: RoomKey) -> usize {
        self.room_ids.get(&room).map_or(0, |&r| self.rooms[r as usize].as_ref().map_or(0, |r| r.all.len()))
    }

    /// The ids of `room`'s connections that `target` reaches, in no
    /// particular order (the index's answer; see [`Target::matches`]).
    pub fn resolve(&self, room: RoomKey, target: &Target) -> Vec<ConnId> {
        let mut out = Vec::new();
        if let Some(room) = self.room_ids.get(&room).and_then(|&r| self.rooms[r as usize].as_ref()) {
            for list in candidate_lists(room, target) {
                for &slot in list {
                    let c = &self.conns[slot as usize];
                    if target.matches(c.uin, c.role, c.terminal, c.subclass) {
                        out.push(ConnId::new(self.config.conn_tag, c.generation, slot));
                    }
                }
            }
        }
        out
    }

    fn encode(&self, f: impl Fn(&dyn Codec) -> Bytes) -> Box<[Bytes]> {
        self.codecs.iter().map(|c| f(c.as_ref())).collect()
    }

    /// The room's sequence as this node has it: its epoch and the newest
    /// reliable number received (`None` for a room without connections
    /// here, `Some((0, 0))` before the first reliable message). A host with
    /// a [`SharedCache`](crate::SharedCache) compares an arriving envelope
    /// with it to refill a gap the bus left.
    pub fn reliable_head(&self, room: RoomKey) -> Option<(u64, u64)> {
        let idx = *self.room_ids.get(&room)?;
        let r = self.rooms[idx as usize].as_ref()?;
        Some((r.epoch, r.cache.head()))
    }

    /// Takes one envelope from the bus: caches it if reliable, resolves its
    /// target on this node's connections and queues it (or merges it, for
    /// chat and reactions). Returns how many connections it was queued for
    /// now (0 for merged messages, which go out when their window closes).
    pub fn handle_envelope(&mut self, now: Timestamp, env: &Envelope) -> Result<usize, NodeError> {
        let m = &env.message;
        if m.class.is_reliable() == (env.seq == 0) {
            return Err(NodeError::BadSequence { class: m.class, seq: env.seq });
        }
        let room_idx = *self.room_ids.get(&m.room).ok_or(NodeError::UnknownRoom(m.room))?;
        self.lanes.stats.envelopes += 1;
        self.lanes.stats.envelopes_by_class[usize::from(m.class.code())] += 1;
        let n = match m.class {
            Class::Chat if m.target.is_plain_audience() => {
                self.buffer_chat(now, room_idx, env);
                0
            }
            Class::Reaction => {
                let window = if self.level >= Level::MergeHarder {
                    self.config.reaction_window_under_load
                } else {
                    self.config.reaction_window
                };
                let max_kinds = self.config.max_reaction_kinds;
                let room = self.rooms[room_idx as usize].as_mut().expect("live room");
                if room.reaction_totals.len() >= max_kinds && !room.reaction_totals.contains_key(&m.kind) {
                    self.lanes.stats.reactions_dropped += 1;
                    return Ok(0);
                }
                let total = room.reaction_totals.entry(m.kind).or_insert(0);
                *total = total.saturating_add(u64::from(m.count));
                if room.reactions_due.is_none() {
                    let due = now.saturating_add(window);
                    room.reactions_due = Some(due);
                    self.timers.insert((due, room_idx, TimerKind::Reactions));
                }
                0
            }
            Class::Chat => {
                let bodies = self.encode(|c| c.encode_message(env));
                let shared = Arc::new(Shared {
                    class: Class::Chat,
                    kind: FrameKind::Message,
                    seq: 0,
                    accepted_at: env.accepted_at,
                    target: None,
                    bodies,
                    msg_kind: m.kind,
                });
                self.fan_out(room_idx, &m.target, &shared)
            }
            _ => {
                let t = &m.target;
                if self.config.chat_rides_reliable
                    && t.scope == Scope::Room
                    && t.roles.is_none()
                    && t.terminals.is_none()
                    && t.subclass.is_none()
                {
                    self.flush_chat(room_idx, Closed::Ride);
                }
                self.handle_reliable(now, room_idx, env)
            }
        };
        self.drop_overflowed(now);
        Ok(n)
    }

    fn handle_reliable(&mut self, now: Timestamp, room_idx: u32, env: &Envelope) -> usize {
        let m = &env.message;
        let room = self.rooms[room_idx as usize].as_mut().expect("live room");
        if env.epoch < room.epoch {
            // A late envelope from a sequence that has since restarted
            // (epochs only grow): nothing to deliver.
            self.lanes.stats.stale_epoch += 1;
            return 0;
        }
        if room.epoch != env.epoch {
            let had_history = room.epoch != 0 || room.cache.head() != 0;
            room.epoch = env.epoch;
            room.cache.restart();
            if had_history {
                // The sequence restarted: every connection's numbers are void.
                let log = self.config.delivery == Delivery::Log;
                for &slot in &room.all {
                    let c = &mut self.conns[slot as usize];
                    self.lanes.stats.queued_frames -= c.reliable_queued() as u64;
                    if let Some(q) = &mut c.lanes {
                        q.reliable.clear();
                    }
                    c.last_seq = 0;
                    c.acked = 0;
                    c.before_first_epoch = false;
                    if !log {
                        self.lanes.mark_resync(slot, c);
                    }
                }
                if log {
                    // Each follower turns it into its resync marker.
                    self.lanes.stats.resyncs += 1;
                    self.publish(room_idx, Entry::Restart { epoch: env.epoch });
                }
            }
        }
        let bodies = self.encode(|c| c.encode_message(env));
        let shared = Arc::new(Shared {
            class: m.class,
            kind: FrameKind::Message,
            seq: env.seq,
            accepted_at: env.accepted_at,
            target: Some(m.target.clone()),
            bodies,
            msg_kind: m.kind,
        });
        let room = self.rooms[room_idx as usize].as_mut().expect("live room");
        match room.cache.insert(Arc::clone(&shared), now) {
            Inserted::Duplicate => {
                self.lanes.stats.duplicates += 1;
                return 0;
            }
            Inserted::AfterGap => {
                self.lanes.stats.sequence_gaps += 1;
                // The bus lost messages before this one, and nobody here
                // knows whom they were for. Every connection's next frame
                // names the last lost number as its previous one, so every
                // client checks, and is told by a reset what it may have
                // missed, instead of silently skipping it.
                let hole_end = env.seq - 1;
                for &slot in &room.all {
                    let c = &mut self.conns[slot as usize];
                    c.last_seq = c.last_seq.max(hole_end);
                }
                if self.config.delivery == Delivery::Log {
                    self.publish(room_idx, Entry::Hole { epoch: env.epoch, end: hole_end });
                }
            }
            Inserted::Appended => {}
        }
        if m.kind.is_reserved() {
            self.apply_control(room_idx, m.kind, &m.payload);
        }
        if self.config.delivery == Delivery::Lanes {
            return self.fan_out(room_idx, &m.target, &shared);
        }
        let entry = Entry::Reliable { epoch: env.epoch, msg: shared };
        match self.few_recipients(room_idx, &m.target) {
            Ok((n, direct)) => {
                let entry = LogEntry::new(entry);
                for conn in direct {
                    self.log.push_back(LogOutput::Direct { conn, entry: entry.clone() });
                }
                n
            }
            Err(counted) => {
                let n = counted.unwrap_or_else(|| self.recipients(room_idx, &m.target));
                self.publish(room_idx, entry);
                n
            }
        }
    }

    /// With the log: when `target` reaches at most [`DIRECT_MAX`] of the
    /// room's connections, and at most half of them, how many, and those
    /// whose writers follow the log (the others start after it, knowing
    /// its number: [`follow`](Self::follow)). A message for a teacher or
    /// for one member then costs what it reaches, not the room. Otherwise
    /// the count if it was found on the way.
    fn few_recipients(&self, room_idx: u32, target: &Target) -> Result<(usize, Vec<ConnId>), Option<usize>> {
        let room = self.rooms[room_idx as usize].as_ref().ok_or(Some(0))?;
        let lists = candidate_lists(room, target);
        if lists.iter().map(|l| l.len()).sum::<usize>() > 4 * DIRECT_MAX {
            return Err(None);
        }
        let (mut n, mut direct) = (0, Vec::new());
        for &slot in lists.into_iter().flatten() {
            let c = &self.conns[slot as usize];
            if !target.matches(c.uin, c.role, c.terminal, c.subclass) {
                continue;
            }
            n += 1;
            if n > DIRECT_MAX {
                return Err(None);
            }
            if c.following {
                direct.push(ConnId::new(self.config.conn_tag, c.generation, slot));
            }
        }
        if 2 * n <= room.all.len() { Ok((n, direct)) } else { Err(Some(n)) }
    }

    /// How many of the room's connections `target` reaches.
    fn recipients(&self, room_idx: u32, target: &Target) -> usize {
        let Some(room) = self.rooms[room_idx as usize].as_ref() else { return 0 };
        if target.scope == Scope::Room
            && target.roles.is_none()
            && target.terminals.is_none()
            && target.subclass.is_none()
        {
            // The room, but for one user perhaps: no walk over the room.
            let excluded = target.exclude.map_or(0, |u| room.by_uin.get(&u).map_or(0, Vec::len));
            return room.all.len() - excluded;
        }
        candidate_lists(room, target)
            .into_iter()
            .flatten()
            .filter(|&&slot| {
                let c = &self.conns[slot as usize];
                target.matches(c.uin, c.role, c.terminal, c.subclass)
            })
            .count()
    }

    /// Queues `shared` for every recipient of `target` in the room.
    fn fan_out(&mut self, room_idx: u32, target: &Target, shared: &Arc<Shared>) -> usize {
        let Some(room) = self.rooms[room_idx as usize].as_ref() else { return 0 };
        let mut n = 0;
        let reliable = shared.class.is_reliable();
        for list in candidate_lists(room, target) {
            for &slot in list {
                let c = &mut self.conns[slot as usize];
                if !target.matches(c.uin, c.role, c.terminal, c.subclass) {
                    continue;
                }
                n += 1;
                if reliable {
                    self.lanes.enqueue_reliable(slot, c, shared);
                } else {
                    self.lanes.enqueue_chat(slot, c, shared);
                }
            }
        }
        n
    }

    fn drop_overflowed(&mut self, now: Timestamp) {
        while let Some(slot) = self.lanes.overflowed.pop() {
            self.drop_with_event(now, slot, DisconnectReason::SlowConsumer);
        }
    }

    /// Drops a connection the node gave up on and tells the host why.
    fn drop_with_event(&mut self, now: Timestamp, slot: u32, reason: DisconnectReason) {
        let c = &self.conns[slot as usize];
        if !c.live {
            return;
        }
        let (conn, uin) = (ConnId::new(self.config.conn_tag, c.generation, slot), c.uin);
        let room = self.rooms[c.room as usize].as_ref().map(|r| r.key).expect("live room");
        self.remove(now, slot);
        self.lanes.stats.disconnects += 1;
        self.events.push_back(NodeEvent::Disconnected { conn, uin, room, reason });
    }

    fn apply_control(&mut self, room_idx: u32, kind: Kind, payload: &[u8]) {
        match kind {
            Kind::LEVEL => {
                if let Some(level) = payload.first().and_then(|&c| Level::from_code(c))
                    && level != self.level
                {
                    self.level = level;
                    self.events.push_back(NodeEvent::LevelChanged(level));
                }
            }
            Kind::SUBCLASS if payload.len() == 10 => {
                let uin = Uin(u64::from_le_bytes(payload[..8].try_into().expect("8 bytes")));
                let raw = u16::from_le_bytes([payload[8], payload[9]]);
                let subclass = (raw != u16::MAX).then_some(SubclassId(raw));
                let key = self.rooms[room_idx as usize].as_ref().map(|r| r.key).expect("live room");
                // The room exists: the error case cannot happen here.
                let _ = self.set_subclass(key, uin, subclass);
            }
            _ => {}
        }
    }

    fn buffer_chat(&mut self, now: Timestamp, room_idx: u32, env: &Envelope) {
        let under_load = self.level >= Level::MergeHarder;
        let (window, cap) = if under_load {
            (self.config.chat_window_under_load, self.config.batch_lines_under_load)
        } else {
            (self.config.chat_window, self.config.batch_lines)
        };
        let cap = cap.max(1);
        let room = self.rooms[room_idx as usize].as_mut().expect("live room");
        if under_load && room.chat.window.lines.len() >= cap {
            self.lanes.stats.chat_sampled_out += 1;
            return;
        }
        let subclass = env.message.target.subclass;
        let held = &room.chat.window;
        if held.lines.len() >= cap * HELD_BATCHES || held.fills_a_batch(subclass, cap) {
            self.flush_chat(room_idx, Closed::Full);
        } else if held.lines.len() - held.sent_to_unassigned >= cap {
            // Those who see every line (the staff) have a full batch; a
            // sub-class's share of the window is smaller and waits.
            self.flush_chat_to_unassigned(room_idx);
        }
        let ride_wait =
            if self.config.chat_rides_reliable && !under_load { self.config.chat_ride_wait } else { Duration::ZERO };
        let room = self.rooms[room_idx as usize].as_mut().expect("live room");
        room.chat.window.add(env.clone());
        if room.chat.due.is_none() {
            let window = if room.chat.rode { window.saturating_add(ride_wait) } else { window };
            let due = now.saturating_add(window);
            room.chat.due = Some(due);
            self.timers.insert((due, room_idx, TimerKind::Chat));
        }
    }

    /// Sends the lines of the open window that the room's connections in
    /// no sub-class have not had yet, to them only; the window stays open
    /// for the others.
    fn flush_chat_to_unassigned(&mut self, room_idx: u32) {
        let Some(room) = self.rooms[room_idx as usize].as_mut() else { return };
        let held = &mut room.chat.window;
        let from = std::mem::replace(&mut held.sent_to_unassigned, held.lines.len());
        let room = self.rooms[room_idx as usize].as_ref().expect("live room");
        if room.unassigned.is_empty() {
            return;
        }
        let unsent: Vec<&Envelope> = room.chat.window.lines[from..].iter().collect();
        let Some(batch) = self.chat_batch(room.key, &unsent) else { return };
        if self.config.delivery == Delivery::Log {
            return self.publish(room_idx, Entry::ChatToUnassigned(batch));
        }
        for &slot in &room.unassigned {
            self.lanes.enqueue_chat(slot, &mut self.conns[slot as usize], &batch);
        }
    }

    fn chat_batch(&self, room: RoomKey, lines: &[&Envelope]) -> Option<Arc<Shared>> {
        let first = lines.first()?;
        let bodies = self.encode(|c| c.encode_chat_batch(room, lines));
        Some(Arc::new(Shared {
            class: Class::Chat,
            kind: FrameKind::ChatBatch,
            seq: 0,
            accepted_at: first.accepted_at,
            target: None,
            bodies,
            msg_kind: first.message.kind,
        }))
    }

    /// Sends a room's merged chat: every connection gets one batch with the
    /// lines aimed at it, in acceptance order. Connections in sub-class `s`
    /// share the batch of room-wide lines and `s`'s lines; connections in
    /// no sub-class (teachers, assistants) share the batch of every line
    /// they have not had yet.
    fn flush_chat(&mut self, room_idx: u32, closed: Closed) {
        let Some(room) = self.rooms[room_idx as usize].as_mut() else { return };
        let ChatWindow { lines, sent_to_unassigned, per_subclass, .. } = std::mem::take(&mut room.chat.window);
        match closed {
            Closed::Ride if !lines.is_empty() => room.chat.rode = true,
            Closed::Ride => {}
            Closed::Full | Closed::Timer => room.chat.rode = false,
        }
        if let Some(due) = room.chat.due.take() {
            self.timers.remove(&(due, room_idx, TimerKind::Chat));
        }
        if lines.is_empty() {
            return;
        }
        let room_key = room.key;
        let batch = |node: &Self, keep: &dyn Fn(Option<SubclassId>) -> bool| -> Option<Arc<Shared>> {
            let chosen: Vec<&Envelope> = lines.iter().filter(|l| keep(l.message.target.subclass)).collect();
            node.chat_batch(room_key, &chosen)
        };
        let unsent: Vec<&Envelope> = lines.get(sent_to_unassigned..).unwrap_or_default().iter().collect();
        let everything = self.chat_batch(room_key, &unsent);
        let room_wide = batch(self, &|s| s.is_none());
        let mut own: BTreeMap<SubclassId, Arc<Shared>> = BTreeMap::new();
        for &s in per_subclass.keys() {
            if let Some(b) = batch(self, &|k| k.is_none() || k == Some(s)) {
                own.insert(s, b);
            }
        }
        if self.config.delivery == Delivery::Log {
            let own = own.into_iter().collect();
            return self.publish(room_idx, Entry::Chat { everything, room_wide, own });
        }
        let room = self.rooms[room_idx as usize].as_ref().expect("live room");
        let mut deliver = |list: &[u32], shared: &Arc<Shared>| {
            for &slot in list {
                self.lanes.enqueue_chat(slot, &mut self.conns[slot as usize], shared);
            }
        };
        if let Some(b) = &everything {
            deliver(&room.unassigned, b);
        }
        for (i, list) in room.by_subclass.iter().enumerate() {
            if let Some(b) = own.get(&SubclassId(i as u16)).or(room_wide.as_ref()) {
                deliver(list, b);
            }
        }
    }

    fn flush_reactions(&mut self, room_idx: u32) {
        let Some(room) = self.rooms[room_idx as usize].as_mut() else { return };
        room.reactions_due = None;
        let totals: Vec<(Kind, u64)> = room.reaction_totals.iter().map(|(k, v)| (*k, *v)).collect();
        if totals.is_empty() {
            return;
        }
        let room_key = room.key;
        let bodies = self.encode(|c| c.encode_reactions(room_key, &totals));
        let shared = Arc::new(Shared {
            class: Class::Reaction,
            kind: FrameKind::Reactions,
            seq: 0,
            accepted_at: Timestamp::ZERO,
            target: None,
            bodies,
            msg_kind: totals[0].0,
        });
        if self.config.delivery == Delivery::Log {
            return self.publish(room_idx, Entry::Reactions(shared));
        }
        let room = self.rooms[room_idx as usize].as_ref().expect("live room");
        for &slot in &room.all {
            let c = &mut self.conns[slot as usize];
            self.lanes.set_reactions(slot, c, &shared);
        }
    }

    /// Closes the chat and reaction windows that are due, and lets go of
    /// rooms that have been empty for the cache's age.
    pub fn handle_timeout(&mut self, now: Timestamp) {
        while let Some(&(due, room_idx, kind)) = self.timers.first() {
            if due > now {
                break;
            }
            self.timers.pop_first();
            let Some(room) = self.rooms[room_idx as usize].as_ref() else { continue };
            match kind {
                TimerKind::Chat => self.flush_chat(room_idx, Closed::Timer),
                TimerKind::Reactions => self.flush_reactions(room_idx),
                TimerKind::Expire => {
                    let expired = room.emptied_at.is_some_and(|at| at.saturating_add(self.config.cache_age) <= now);
                    if expired && room.all.is_empty() {
                        let key = room.key;
                        let stale: Vec<_> = self.timers.iter().filter(|t| t.1 == room_idx).copied().collect();
                        for t in stale {
                            self.timers.remove(&t);
                        }
                        self.rooms[room_idx as usize] = None;
                        self.room_ids.remove(&key);
                        self.free_rooms.push(room_idx);
                    }
                }
            }
        }
        self.drop_overflowed(now);
    }

    /// Hands queued frames to `connector`, reliable first, then reaction
    /// totals, then chat, connection by connection, until every ready
    /// connection is drained or blocked. Returns the frames sent.
    pub fn flush<C: Connector>(&mut self, now: Timestamp, connector: &mut C) -> u64 {
        let mut ready = std::mem::take(&mut self.lanes.ready);
        let mut sent = 0u64;
        let mut closed = Vec::new();
        for &slot in &ready {
            let c = &mut self.conns[slot as usize];
            c.ready = false;
            if !c.live || c.blocked {
                continue;
            }
            let epoch = self.rooms[c.room as usize].as_ref().map_or(0, |r| r.epoch);
            match drain(
                c,
                ConnId::new(self.config.conn_tag, c.generation, slot),
                epoch,
                connector,
                &self.empty,
                &mut self.lanes.stats,
            ) {
                Ok(n) => sent += n,
                Err((n, reason)) => {
                    sent += n;
                    closed.push((slot, reason));
                }
            }
        }
        ready.clear();
        if self.lanes.ready.is_empty() {
            self.lanes.ready = ready;
        } else {
            self.lanes.ready.extend_from_slice(&ready);
        }
        for (slot, reason) in closed {
            self.drop_with_event(now, slot, reason);
        }
        sent
    }

    /// A client's periodic ack of the highest contiguous reliable sequence
    /// number it has.
    pub fn handle_ack(&mut self, id: ConnId, epoch: u64, seq: u64) -> Result<AckReply, NodeError> {
        let c = self.conn(id)?;
        let room = self.rooms[c.room as usize].as_ref().expect("live room");
        let last = self.last_for(c, room);
        let epoch = if epoch == 0 && c.before_first_epoch { room.epoch } else { epoch };
        if epoch != room.epoch {
            return Ok(AckReply::Reset { epoch: room.epoch, head: last });
        }
        if seq > last {
            return Err(NodeError::AckFromFuture { acked: seq, last });
        }
        let pending = c.reliable_queued() > 0 || c.resync;
        let reply = match self.config.delivery {
            Delivery::Lanes if seq == last || pending => AckReply::UpToDate,
            Delivery::Lanes => AckReply::Behind { last },
            // The reply goes out after every log entry before it: what the
            // writer has not read yet is still on its way.
            _ => match self.owed_after(c, room, seq) {
                Some(last) if !pending => AckReply::Behind { last },
                _ => AckReply::UpToDate,
            },
        };
        let c = &mut self.conns[id.slot() as usize];
        c.acked = c.acked.max(seq);
        Ok(reply)
    }

    /// A client's request for the reliable messages after `after`.
    pub fn handle_check(
        &mut self,
        now: Timestamp,
        id: ConnId,
        epoch: u64,
        after: u64,
    ) -> Result<CheckAnswer, NodeError> {
        let c = self.conn(id)?;
        let last = self.last_for(c, self.rooms[c.room as usize].as_ref().expect("live room"));
        let (uin, role, terminal, subclass, format) = (c.uin, c.role, c.terminal, c.subclass, c.format);
        let room_idx = c.room;
        let epoch = if epoch == 0 && c.before_first_epoch {
            self.rooms[room_idx as usize].as_ref().map_or(0, |r| r.epoch)
        } else {
            epoch
        };
        let room = self.rooms[room_idx as usize].as_mut().expect("live room");
        if epoch != room.epoch {
            self.lanes.stats.resets += 1;
            return Ok(CheckAnswer::Reset { epoch: room.epoch, head: last });
        }
        if after > last {
            return Err(NodeError::CheckFromFuture { after, last });
        }
        room.cache.prune(now);
        let Some(range) = room.cache.range(after, last) else {
            self.lanes.stats.resets += 1;
            return Ok(CheckAnswer::Reset { epoch: room.epoch, head: last });
        };
        let mut frames = Vec::new();
        let mut prev = after;
        let mut upto = last;
        for m in range {
            if !m.reaches(uin, role, terminal, subclass) {
                continue;
            }
            if frames.len() == self.config.max_check_answer {
                upto = prev;
                break;
            }
            frames.push(RecoveredFrame {
                header: FrameHeader { kind: FrameKind::Message, class: m.class, epoch: room.epoch, seq: m.seq, prev },
                kind: m.msg_kind,
                body: m.body(format).clone(),
            });
            prev = m.seq;
        }
        self.lanes.stats.checks_answered += 1;
        Ok(CheckAnswer::Messages { epoch: room.epoch, upto, frames })
    }
}

/// The index lists whose union holds every recipient of `target`: the
/// narrowest the index has (a user's connections, a role's, a terminal's,
/// a sub-class's), the whole room when nothing narrower exists.
fn candidate_lists<'a>(room: &'a Room, target: &Target) -> Vec<&'a [u32]> {
    match &target.scope {
        Scope::User(u) => room.by_uin.get(u).map(Vec::as_slice).into_iter().collect(),
        Scope::Users(us) => {
            let mut us = us.clone();
            us.sort_unstable();
            us.dedup();
            us.iter().filter_map(|u| room.by_uin.get(u).map(Vec::as_slice)).collect()
        }
        Scope::Room => {
            let all = room.all.len();
            let by_roles =
                target.roles.map(|rs| rs.iter().map(|r| room.by_role[r.bit() as usize].len()).sum::<usize>());
            let by_terms =
                target.terminals.map(|ts| ts.iter().map(|t| room.by_terminal[terminal_index(t)].len()).sum::<usize>());
            let by_sub = target
                .subclass
                .map(|s| room.by_subclass.get(usize::from(s.0)).map_or(0, Vec::len) + room.unassigned.len());
            let best = [by_roles, by_terms, by_sub].into_iter().enumerate().filter_map(|(i, n)| Some((n?, i))).min();
            match best {
                Some((n, 0)) if n < all => target
                    .roles
                    .into_iter()
                    .flat_map(|rs| rs.iter())
                    .map(|r| room.by_role[r.bit() as usize].as_slice())
                    .collect(),
                Some((n, 1)) if n < all => target
                    .terminals
                    .into_iter()
                    .flat_map(|ts| ts.iter())
                    .map(|t| room.by_terminal[terminal_index(t)].as_slice())
                    .collect(),
                Some((n, 2)) if n < all => {
                    let mut lists = vec![room.unassigned.as_slice()];
                    if let Some(l) = target.subclass.and_then(|s| room.by_subclass.get(usize::from(s.0))) {
                        lists.push(l.as_slice());
                    }
                    lists
                }
                _ => vec![room.all.as_slice()],
            }
        }
    }
}

/// Lane bookkeeping shared by every connection of a node.
#[derive(Debug)]
struct Lanes {
    reliable_cap: usize,
    chat_cap: usize,
    overflow: OverflowPolicy,
    ready: Vec<u32>,
    overflowed: Vec<u32>,
    stats: NodeStats,
}

impl Lanes {
    fn make_ready(&mut self, slot: u32, c: &mut Conn) {
        if !c.ready && !c.blocked {
            c.ready = true;
            self.ready.push(slot);
        }
    }

    fn mark_resync(&mut self, slot: u32, c: &mut Conn) {
        if !c.resync {
            c.resync = true;
            self.stats.queued_frames += 1;
            self.stats.resyncs += 1;
        }
        self.make_ready(slot, c);
    }

    fn enqueue_reliable(&mut self, slot: u32, c: &mut Conn, shared: &Arc<Shared>) {
        let prev = c.last_seq;
        c.last_seq = shared.seq;
        if c.resync {
            // The client will recover this message with its check.
            return;
        }
        if c.reliable_queued() >= self.reliable_cap {
            match self.overflow {
                OverflowPolicy::Resync => {
                    self.stats.queued_frames -= c.reliable_queued() as u64;
                    c.lanes().reliable.clear();
                    self.mark_resync(slot, c);
                }
                OverflowPolicy::Disconnect => self.overflowed.push(slot),
            }
            return;
        }
        c.lanes().reliable.push_back((Arc::clone(shared), prev));
        self.stats.queued_frames += 1;
        self.make_ready(slot, c);
    }

    fn enqueue_chat(&mut self, slot: u32, c: &mut Conn, shared: &Arc<Shared>) {
        let chat = &mut c.lanes().chat;
        if chat.len() >= self.chat_cap {
            chat.pop_front();
            self.stats.chat_shed += 1;
        } else {
            self.stats.queued_frames += 1;
        }
        chat.push_back(Arc::clone(shared));
        self.make_ready(slot, c);
    }

    fn set_reactions(&mut self, slot: u32, c: &mut Conn, shared: &Arc<Shared>) {
        if c.lanes().reactions.replace(Arc::clone(shared)).is_none() {
            self.stats.queued_frames += 1;
        }
        self.make_ready(slot, c);
    }
}

/// Sends one connection's queued frames in priority order. Stops at
/// `WouldBlock` (the frame stays queued); on a closed or failed connector
/// returns the reason.
fn drain<C: Connector>(
    c: &mut Conn,
    id: ConnId,
    epoch: u64,
    connector: &mut C,
    empty: &Bytes,
    stats: &mut NodeStats,
) -> Result<u64, (u64, DisconnectReason)> {
    let mut sent = 0;
    loop {
        let class;
        let result = if c.resync {
            class = Class::Signal;
            let header = FrameHeader { kind: FrameKind::Resync, class, epoch, seq: c.last_seq, prev: 0 };
            let r = connector.send(&Frame { conn: id, uin: c.uin, terminal: c.terminal, header, body: empty });
            if r.is_ok() {
                c.resync = false;
            }
            r
        } else if let Some((m, prev)) = c.lanes.as_ref().and_then(|q| q.reliable.front()) {
            class = m.class;
            let header = FrameHeader { kind: m.kind, class: m.class, epoch, seq: m.seq, prev: *prev };
            let r =
                connector.send(&Frame { conn: id, uin: c.uin, terminal: c.terminal, header, body: m.body(c.format) });
            if r.is_ok() {
                c.lanes().reliable.pop_front();
            }
            r
        } else if let Some(m) = c.lanes.as_ref().and_then(|q| q.reactions.as_ref()) {
            class = m.class;
            let header = FrameHeader { kind: m.kind, class: m.class, epoch, seq: 0, prev: 0 };
            let r =
                connector.send(&Frame { conn: id, uin: c.uin, terminal: c.terminal, header, body: m.body(c.format) });
            if r.is_ok() {
                c.lanes().reactions = None;
            }
            r
        } else if let Some(m) = c.lanes.as_ref().and_then(|q| q.chat.front()) {
            class = m.class;
            let header = FrameHeader { kind: m.kind, class: m.class, epoch, seq: 0, prev: 0 };
            let r =
                connector.send(&Frame { conn: id, uin: c.uin, terminal: c.terminal, header, body: m.body(c.format) });
            if r.is_ok() {
                c.lanes().chat.pop_front();
            }
            r
        } else {
            break Ok(sent);
        };
        match result {
            Ok(()) => {
                sent += 1;
                stats.queued_frames -= 1;
                stats.frames_sent += 1;
                stats.frames_by_class[usize::from(class.code())] += 1;
            }
            Err(SendError::WouldBlock) => {
                c.blocked = true;
                break Ok(sent);
            }
            Err(SendError::Closed) => break Err((sent, DisconnectReason::Closed)),
            Err(SendError::Failed(why)) => break Err((sent, DisconnectReason::ConnectorFailed(why))),
        }
    }
}
