//! The tokio room service: one small API a host calls from its own
//! transport, wiring heartbeats, member lists, push and the classroom
//! interactions as SEED.md's room system does.
//!
//! * [`RoomService::connect`]: a ticket is verified; the member enters
//!   (heartbeat session, member list, sub-class, push connection) and the
//!   room's sidebar is refreshed; the host gets a [`Connection`] whose
//!   `outbound` channel yields JSON text frames to write to the client.
//! * [`RoomService::handle_text`]: every client frame (beats, chat, hands,
//!   reactions, cards, packets, mutes, acks, checks, member pages).
//! * [`RoomService::disconnect`], or a missed heartbeat: the member leaves
//!   and the room is told.
//! * [`RoomService::run`]: the timer loop (heartbeat sweeps, chat and
//!   reaction windows, card deadlines, tallies, sidebars, flushing).

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use hashbrown::HashMap;
use parking_lot::Mutex;
use room_core::{MemberKey, Role, RoleSet, RoomKey, Terminal, Timestamp, Uin};
use room_heartbeat::tracker::{ConnId as BeatConn, SessionHint, Timing, Tracker, TrackerConfig};
use room_memberlist::{Cursor, LocalStore, MemberStore, PageQuery, PageStart, StoreConfig};
use room_push::{
    Class, ConnId, ConnSpec, Connector, Frame, Gate, GateConfig, GateError, Message, NodeConfig, NodeError, NodeEvent,
    PushNode, SendError, Sender, Target,
};
use tokio::sync::mpsc;

use crate::classroom::{ActionError, Actor, CardSpec, Classroom, ClassroomConfig, Reaction};
use crate::ticket::{KeyRing, TicketError};
use crate::wire::{ClientMsg, HandOp, JsonCodec, ReactKind, json_string, kinds, push_frame};

/// How the service runs.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ServiceConfig {
    /// Keys that verify entry tickets.
    pub keys: KeyRing,
    /// How often clients beat.
    pub heartbeat: Duration,
    /// Beats a client may miss before it is taken out.
    pub misses: u32,
    /// Frames queued per connection between the service and the host's
    /// writer; when full, the push node holds (and sheds chat) instead.
    pub outbound: usize,
    /// The largest client frame accepted, in bytes.
    pub max_frame: usize,
    /// The longest chat line or teacher text, in characters.
    pub max_text: usize,
    /// Learners a room is expected to hold (sub-classes opened up front).
    pub expected_learners: usize,
    /// The push node.
    pub node: NodeConfig,
    /// The push gate.
    pub gate: GateConfig,
    /// Interaction limits.
    pub classroom: ClassroomConfig,
    /// Live answer-card tallies and packet states are pushed at most this often.
    pub tally_interval: Duration,
    /// The member sidebar is pushed at most this often.
    pub roster_interval: Duration,
    /// Rooms up to this size get the whole member list in the sidebar.
    pub roster_list_max: usize,
}

impl ServiceConfig {
    /// Defaults around `keys`: 20 s heartbeats, 3 misses.
    pub fn new(keys: KeyRing) -> Self {
        ServiceConfig {
            keys,
            heartbeat: Duration::from_secs(20),
            misses: 3,
            outbound: 512,
            max_frame: 4096,
            max_text: 500,
            expected_learners: 0,
            node: NodeConfig::default(),
            gate: GateConfig::default(),
            classroom: ClassroomConfig::default(),
            tally_interval: Duration::from_millis(500),
            roster_interval: Duration::from_secs(1),
            roster_list_max: 200,
        }
    }
}

/// A service configuration that cannot run.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("bad service configuration: {0}")]
pub struct ConfigError(pub String);

/// Why a connection could not enter. Nothing was entered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EntryError {
    /// The ticket did not pass.
    #[error(transparent)]
    Ticket(#[from] TicketError),
    /// The room or the node is full.
    #[error("the room cannot take this connection: {0}")]
    Full(String),
}

/// Why a client frame was refused. The connection gets an error frame;
/// nothing else changes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FrameError {
    /// Over [`ServiceConfig::max_frame`].
    #[error("frame of {size} bytes exceeds {max}")]
    TooLarge {
        /// Its size.
        size: usize,
        /// The limit.
        max: usize,
    },
    /// Not JSON, or not a known message (`t`), or fields that do not fit.
    #[error("bad frame: {0}")]
    Malformed(String),
    /// Text over [`ServiceConfig::max_text`].
    #[error("text of {len} characters exceeds {max}")]
    TextTooLong {
        /// Its length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The interaction is not allowed.
    #[error(transparent)]
    Action(#[from] ActionError),
    /// Push refused it (mute, rate limit, degradation).
    #[error(transparent)]
    Push(#[from] GateError),
    /// An ack or check that does not fit what was sent.
    #[error(transparent)]
    Recovery(#[from] NodeError),
    /// The connection is gone.
    #[error("unknown connection")]
    UnknownConnection,
}

impl FrameError {
    /// A short stable code for clients.
    pub fn code(&self) -> &'static str {
        match self {
            FrameError::TooLarge { .. } => "too_large",
            FrameError::Malformed(_) => "malformed",
            FrameError::TextTooLong { .. } => "text_too_long",
            FrameError::Action(ActionError::NotAllowed { .. }) | FrameError::Push(GateError::NotAllowed { .. }) => {
                "not_allowed"
            }
            FrameError::Action(_) => "refused",
            FrameError::Push(GateError::RateLimited { .. }) => "rate_limited",
            FrameError::Push(GateError::RoomMuted | GateError::UserMuted(_)) => "muted",
            FrameError::Push(_) => "refused",
            FrameError::Recovery(_) => "bad_recovery",
            FrameError::UnknownConnection => "gone",
        }
    }
}

/// One frame for a client. The service hands over push frames unrendered
/// so that the per-recipient JSON header is written by the host's writer
/// task, outside the service's lock; [`Outbound::into_text`] renders.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Outbound {
    /// A pushed message: this connection's header and the shared body.
    Push {
        /// The header.
        header: room_push::FrameHeader,
        /// The body, encoded once for every recipient.
        body: Bytes,
    },
    /// A direct reply, already JSON text.
    Text(Bytes),
}

impl Outbound {
    /// The JSON text frame to write to the client.
    pub fn into_text(self) -> Bytes {
        match self {
            Outbound::Push { header, body } => push_frame(&header, &body),
            Outbound::Text(text) => text,
        }
    }
}

/// A connection that entered. Write every frame from `outbound` to the
/// client; when it ends, the service has closed the connection.
#[derive(Debug)]
pub struct Connection {
    /// The connection's id for [`RoomService::handle_text`] and
    /// [`RoomService::disconnect`].
    pub id: ConnId,
    /// Who entered (from the ticket).
    pub member: MemberKey,
    /// Their role (from the ticket).
    pub role: Role,
    /// Their terminal (from the ticket).
    pub terminal: Terminal,
    /// Frames for the client, in order.
    pub outbound: mpsc::Receiver<Outbound>,
}

/// Counters for operators and load tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct ServiceStats {
    /// Connections now.
    pub connections: usize,
    /// Members present (over all rooms).
    pub members: usize,
    /// Rooms open.
    pub rooms: usize,
    /// Entries refused (bad tickets, full).
    pub refused_entries: u64,
    /// Client frames refused.
    pub refused_frames: u64,
    /// Members taken out for missing heartbeats.
    pub timed_out: u64,
    /// The push node's counters.
    pub push: room_push::NodeStats,
    /// Reliable envelopes the bus lost that were refilled from the shared
    /// cache (so no client was reset for them).
    pub refilled: u64,
}

#[derive(Debug)]
struct ConnEntry {
    member: MemberKey,
    role: Role,
    terminal: Terminal,
    tx: mpsc::Sender<Outbound>,
    hint: SessionHint,
    blocked: bool,
}

#[derive(Debug)]
struct RoomState {
    classroom: Classroom,
    members: HashMap<Uin, Role, ahash::RandomState>,
    roster_dirty: bool,
    tally_dirty: bool,
    packets_dirty: BTreeSet<u64>,
}

struct State {
    config: ServiceConfig,
    started: Instant,
    gate: Gate,
    node: PushNode,
    tracker: Tracker,
    store: LocalStore,
    rooms: HashMap<RoomKey, RoomState, ahash::RandomState>,
    conns: HashMap<ConnId, ConnEntry, ahash::RandomState>,
    next_roster: Timestamp,
    next_tally: Timestamp,
    stats: ServiceStats,
    seed: u64,
    bus: Option<mpsc::UnboundedSender<BusCmd>>,
}

/// What the service asks of its bus pump.
enum BusCmd {
    Publish(room_push::Envelope),
    Interest(RoomKey),
}

/// The room service. Cheap to clone; every clone is the same service.
#[derive(Clone)]
pub struct RoomService {
    state: Arc<Mutex<State>>,
}

impl std::fmt::Debug for RoomService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RoomService").finish_non_exhaustive()
    }
}

/// Counts an event through the `metrics` facade (feature `metrics`).
macro_rules! count {
    ($name:literal) => {
        #[cfg(feature = "metrics")]
        metrics::counter!($name).increment(1);
    };
}

fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// The connector that hands frames to connections' outbound channels.
struct Channels<'a> {
    conns: &'a mut HashMap<ConnId, ConnEntry, ahash::RandomState>,
}

impl Connector for Channels<'_> {
    fn send(&mut self, frame: &Frame<'_>) -> Result<(), SendError> {
        let Some(entry) = self.conns.get_mut(&frame.conn) else { return Err(SendError::Closed) };
        match entry.tx.try_send(Outbound::Push { header: frame.header, body: frame.body.clone() }) {
            Ok(()) => Ok(()),
            Err(mpsc::error::TrySendError::Full(_)) => {
                entry.blocked = true;
                Err(SendError::WouldBlock)
            }
            Err(mpsc::error::TrySendError::Closed(_)) => Err(SendError::Closed),
        }
    }
}

fn reply(entry: &ConnEntry, text: String) {
    // A full or closed channel drops direct replies: the client can ask again.
    let _ = entry.tx.try_send(Outbound::Text(Bytes::from(text)));
}

fn role_name(role: Role) -> String {
    role.to_string()
}

impl State {
    fn now(&self) -> Timestamp {
        Timestamp::from_micros(self.started.elapsed().as_micros() as u64 + 1_000_000)
    }

    fn publish(&mut self, now: Timestamp, msg: Message) -> Result<(), GateError> {
        let env = self.gate.publish(now, msg)?;
        self.dispatch(now, env);
        Ok(())
    }

    fn publish_all(&mut self, now: Timestamp, envs: Vec<room_push::Envelope>) {
        for env in envs {
            self.dispatch(now, env);
        }
    }

    /// Logic -> bus -> push: over the bus when one is attached, straight to
    /// this process's push node otherwise (the same path without the hop).
    fn dispatch(&mut self, now: Timestamp, env: room_push::Envelope) {
        match &self.bus {
            Some(tx) => {
                let _ = tx.send(BusCmd::Publish(env));
            }
            None => {
                let _ = self.node.handle_envelope(now, &env);
            }
        }
    }

    fn signal(&mut self, now: Timestamp, room: RoomKey, kind: room_push::Kind, target: Target, data: String) {
        let msg = Message::new(room, Class::Signal, kind, data).to(target);
        if let Err(e) = self.publish(now, msg) {
            tracing::warn!(%room, error = %e, "signal refused");
        }
    }

    fn flush(&mut self, now: Timestamp) {
        let _ = self.node.flush(now, &mut Channels { conns: &mut self.conns });
        while let Some(event) = self.node.poll_event() {
            if let NodeEvent::Disconnected { conn, reason, .. } = event {
                tracing::info!(?conn, ?reason, "push dropped a connection");
                self.drop_conn(now, conn);
            }
        }
    }

    fn drop_conn(&mut self, now: Timestamp, conn: ConnId) {
        let Some(entry) = self.conns.remove(&conn) else { return };
        let _ = self.node.disconnect(now, conn);
        let _ = self.tracker.leave(now, entry.member, entry.terminal, BeatConn(conn.0));
        let _ = self.store.exit(now, entry.member, entry.terminal);
        if let Some(r) = self.rooms.get_mut(&entry.member.room_key()) {
            r.roster_dirty = true;
        }
        self.process_presence(now);
    }

    /// Applies the tracker's enter/exit events to lists, plans and rooms.
    fn process_presence(&mut self, now: Timestamp) {
        while let Some(event) = self.tracker.poll_event() {
            let member = event.member;
            let room = member.room_key();
            match event.change {
                room_core::MemberChange::Entered => {}
                room_core::MemberChange::Exited(reason) => {
                    tracing::debug!(%member, ?reason, "member exited");
                    for t in Terminal::ALL {
                        let _ = self.store.exit(now, member, t);
                    }
                    if let Ok(moves) = self.gate.leave(now, room, member.uin) {
                        self.publish_all(now, moves);
                    }
                    if let Some(r) = self.rooms.get_mut(&room) {
                        r.members.remove(&member.uin);
                        r.classroom.left(member.uin);
                        r.roster_dirty = true;
                    }
                    // Connections still open for this member (a silent one) close.
                    let gone: Vec<ConnId> =
                        self.conns.iter().filter(|(_, e)| e.member == member).map(|(id, _)| *id).collect();
                    for id in gone {
                        self.conns.remove(&id);
                        let _ = self.node.disconnect(now, id);
                    }
                }
                _ => {}
            }
        }
    }

    fn tick(&mut self, now: Timestamp) {
        self.tracker.handle_timeout(now);
        // A silent session is gone: the service is its own access layer and
        // a client that stopped beating for `misses` intervals is not in class.
        while let Some(suspect) = self.tracker.poll_suspect() {
            if self.tracker.confirm_gone(now, &suspect) {
                self.stats.timed_out += 1;
                count!("roomkit_heartbeat_timeouts_total");
            }
        }
        self.process_presence(now);
        self.node.handle_timeout(now);
        let rooms: Vec<RoomKey> = self.rooms.keys().copied().collect();
        let card_deadlines: Vec<RoomKey> = rooms
            .iter()
            .filter(|r| self.rooms[*r].classroom.card_deadline().is_some_and(|d| d <= now))
            .copied()
            .collect();
        for room in card_deadlines {
            if let Some(result) = self.rooms.get_mut(&room).and_then(|r| r.classroom.close_card_now()) {
                self.card_result(now, room, &result);
            }
        }
        if now >= self.next_tally {
            self.next_tally = now.saturating_add(self.config.tally_interval);
            for room in &rooms {
                self.push_tallies(now, *room);
            }
        }
        if now >= self.next_roster {
            self.next_roster = now.saturating_add(self.config.roster_interval);
            for room in &rooms {
                if self.rooms[room].roster_dirty {
                    self.push_roster(now, *room);
                }
            }
        }
        // Connections whose channel had filled up may take frames again.
        let writable: Vec<ConnId> =
            self.conns.iter().filter(|(_, e)| e.blocked && e.tx.capacity() > 0).map(|(id, _)| *id).collect();
        for id in writable {
            if let Some(e) = self.conns.get_mut(&id) {
                e.blocked = false;
            }
            let _ = self.node.set_writable(id);
        }
        self.flush(now);
    }

    fn push_tallies(&mut self, now: Timestamp, room: RoomKey) {
        let Some(r) = self.rooms.get_mut(&room) else { return };
        let mut signals = Vec::new();
        if std::mem::take(&mut r.tally_dirty)
            && let Some((id, tally)) = r.classroom.card_tally()
        {
            signals.push(format!("{{\"op\":\"tally\",\"id\":{id},\"tally\":{tally:?}}}"));
        }
        let mut packets = Vec::new();
        for id in std::mem::take(&mut r.packets_dirty) {
            if let Some(p) = r.classroom.packet(id) {
                packets.push(format!(
                    "{{\"op\":\"state\",\"id\":{id},\"total\":{},\"count\":{},\"grabbed\":{},\"taken\":{}}}",
                    p.total, p.count, p.grabbed, p.taken
                ));
            }
        }
        for data in signals {
            self.signal(now, room, kinds::CARD, Target::room().roles(RoleSet::staff()), data);
        }
        for data in packets {
            self.signal(now, room, kinds::PACKET, Target::room(), data);
        }
    }

    fn card_result(&mut self, now: Timestamp, room: RoomKey, r: &crate::classroom::CardResult) {
        let correct = r.correct.map_or("null".to_owned(), |c| c.to_string());
        let data = format!(
            "{{\"op\":\"result\",\"id\":{},\"tally\":{:?},\"correct\":{correct},\"answered\":{},\"right\":{}}}",
            r.id, r.tally, r.answered, r.right
        );
        self.signal(now, room, kinds::CARD, Target::room(), data);
    }

    fn push_roster(&mut self, now: Timestamp, room: RoomKey) {
        let Some(r) = self.rooms.get_mut(&room) else { return };
        r.roster_dirty = false;
        let counts = self.store.counts(room);
        let count = |role| counts.as_ref().map_or(0, |c| c.role(role));
        let total = counts.as_ref().map_or(0, |c| c.total());
        let mut data = format!(
            "{{\"total\":{total},\"teacher\":{},\"assistant\":{},\"student\":{},\"observer\":{}",
            count(Role::Teacher),
            count(Role::Assistant),
            count(Role::Student),
            count(Role::Observer)
        );
        if (total as usize) <= self.config.roster_list_max {
            let mut rows = Vec::new();
            let _ = self.store.page(room, &PageQuery::first(self.config.roster_list_max.max(1)), &mut rows);
            data.push_str(",\"list\":[");
            for (i, row) in rows.iter().enumerate() {
                if i > 0 {
                    data.push(',');
                }
                data.push_str(&format!("{{\"uin\":{},\"role\":", row.uin.0));
                json_string(&mut data, &role_name(row.role));
                data.push('}');
            }
            data.push(']');
        }
        data.push('}');
        self.signal(now, room, kinds::ROSTER, Target::room(), data);
    }
}

impl RoomService {
    /// A service with `config`. Call [`RoomService::run`] (spawned) to
    /// drive its timers.
    pub fn new(config: ServiceConfig) -> Result<Self, ConfigError> {
        if config.heartbeat.is_zero() || config.heartbeat > Duration::from_secs(600) {
            return Err(ConfigError(format!("heartbeat {:?} must be within (0, 600 s]", config.heartbeat)));
        }
        let mut tracker_config = TrackerConfig::default();
        tracker_config.default_timing =
            Timing::new(config.heartbeat, config.misses.max(1)).unwrap_or(tracker_config.default_timing);
        tracker_config.tick = (config.heartbeat / 20).clamp(Duration::from_millis(10), Duration::from_secs(1));
        tracker_config.max_timeout = tracker_config.tick * 16_000;
        let tracker = Tracker::new(tracker_config).map_err(|e| ConfigError(e.to_string()))?;
        let node = PushNode::with_codecs(config.node.clone(), vec![Arc::new(JsonCodec)]);
        let seed = {
            use std::hash::{BuildHasher, Hasher};
            let mut h = std::collections::hash_map::RandomState::new().build_hasher();
            h.write_u64(unix_now());
            h.finish()
        };
        let state = State {
            gate: Gate::new(config.gate.clone()),
            node,
            tracker,
            store: LocalStore::new(StoreConfig::default()),
            rooms: HashMap::with_hasher(ahash::RandomState::new()),
            conns: HashMap::with_hasher(ahash::RandomState::new()),
            started: Instant::now(),
            next_roster: Timestamp::ZERO,
            next_tally: Timestamp::ZERO,
            stats: ServiceStats::default(),
            seed,
            bus: None,
            config,
        };
        Ok(RoomService { state: Arc::new(Mutex::new(state)) })
    }

    /// Counters.
    pub fn stats(&self) -> ServiceStats {
        let s = self.state.lock();
        ServiceStats {
            connections: s.conns.len(),
            members: s.rooms.values().map(|r| r.members.len()).sum(),
            rooms: s.rooms.len(),
            push: s.node.stats(),
            ..s.stats
        }
    }

    /// Lets `ticket` into `room`: verifies it, enters the member and opens
    /// a push connection. The first frame on `outbound` is a welcome:
    /// `{"t":"welcome","uin","role","terminal","epoch","head","subclass","heartbeat_ms"}`.
    pub fn connect(&self, room: RoomKey, ticket: &str) -> Result<Connection, EntryError> {
        let mut s = self.state.lock();
        let ticket = match s.config.keys.verify(ticket, room, unix_now()) {
            Ok(t) => t,
            Err(e) => {
                s.stats.refused_entries += 1;
                count!("roomkit_entries_refused_total");
                tracing::info!(%room, error = %e, "entry refused");
                return Err(e.into());
            }
        };
        let now = s.now();
        let member = room.member(ticket.uin);
        if !s.rooms.contains_key(&room) {
            let expected = s.config.expected_learners;
            s.gate.open_room_for(now, room, expected).map_err(|e| EntryError::Full(e.to_string()))?;
            if let Some(tx) = &s.bus {
                let _ = tx.send(BusCmd::Interest(room));
            }
            let seed = s.seed ^ room.room.0;
            let classroom = Classroom::new(s.config.classroom.clone(), seed);
            s.rooms.insert(
                room,
                RoomState {
                    classroom,
                    members: HashMap::with_hasher(ahash::RandomState::new()),
                    roster_dirty: true,
                    tally_dirty: false,
                    packets_dirty: BTreeSet::new(),
                },
            );
        }
        let joined = s.gate.join(now, room, ticket.uin, ticket.role).map_err(|e| EntryError::Full(e.to_string()))?;
        s.publish_all(now, joined.moves);
        let spec = ConnSpec::new(room, ticket.uin, ticket.role, ticket.terminal).in_subclass(joined.subclass);
        let connected = match s.node.connect(spec) {
            Ok(c) => c,
            Err(e) => {
                s.stats.refused_entries += 1;
                return Err(EntryError::Full(e.to_string()));
            }
        };
        let reply_hb = s.tracker.join(now, member, ticket.terminal, BeatConn(connected.conn.0));
        let hint = match reply_hb {
            Ok(r) => {
                if let room_heartbeat::tracker::JoinOutcome::Reconnected { previous } = r.outcome {
                    // The same member on the same terminal again: the old connection goes.
                    let old = ConnId(previous.0);
                    s.conns.remove(&old);
                    let _ = s.node.disconnect(now, old);
                }
                r.hint
            }
            Err(e) => {
                let _ = s.node.disconnect(now, connected.conn);
                s.stats.refused_entries += 1;
                return Err(EntryError::Full(e.to_string()));
            }
        };
        let _ = s.store.enter(now, member, ticket.role, ticket.terminal, None);
        s.process_presence(now);
        if let Some(r) = s.rooms.get_mut(&room) {
            r.members.insert(ticket.uin, ticket.role);
            r.roster_dirty = true;
        }
        let (tx, rx) = mpsc::channel(s.config.outbound.max(8));
        let subclass = joined.subclass.map_or("null".to_owned(), |c| c.0.to_string());
        let mut welcome = format!(
            "{{\"t\":\"welcome\",\"uin\":{},\"role\":\"{}\",\"terminal\":\"{}\",\"epoch\":{},\"head\":{},\"subclass\":{subclass},\"heartbeat_ms\":{},\"muted\":{}",
            ticket.uin.0,
            ticket.role,
            ticket.terminal,
            connected.epoch,
            connected.head,
            s.config.heartbeat.as_millis(),
            s.gate.is_muted(room).unwrap_or(false)
        );
        welcome.push('}');
        let entry = ConnEntry { member, role: ticket.role, terminal: ticket.terminal, tx, hint, blocked: false };
        reply(&entry, welcome);
        s.conns.insert(connected.conn, entry);
        count!("roomkit_entries_total");
        tracing::debug!(%member, role = %ticket.role, terminal = %ticket.terminal, "connected");
        Ok(Connection { id: connected.conn, member, role: ticket.role, terminal: ticket.terminal, outbound: rx })
    }

    /// The client closed: the connection goes, and the member leaves when
    /// it was their last terminal.
    pub fn disconnect(&self, conn: ConnId) {
        let mut s = self.state.lock();
        let now = s.now();
        s.drop_conn(now, conn);
        s.flush(now);
    }

    /// One text frame from the client. Refusals are also sent to the client
    /// as `{"t":"error","code","message"}`.
    pub fn handle_text(&self, conn: ConnId, text: &str) -> Result<(), FrameError> {
        let mut s = self.state.lock();
        let result = if text.len() > s.config.max_frame {
            Err(FrameError::TooLarge { size: text.len(), max: s.config.max_frame })
        } else {
            match serde_json::from_str::<ClientMsg>(text) {
                Ok(msg) => handle(&mut s, conn, msg),
                Err(e) => Err(FrameError::Malformed(e.to_string())),
            }
        };
        if let Err(e) = &result {
            s.stats.refused_frames += 1;
            count!("roomkit_frames_refused_total");
            if let Some(entry) = s.conns.get(&conn) {
                let mut text = format!("{{\"t\":\"error\",\"code\":\"{}\",\"message\":", e.code());
                json_string(&mut text, &e.to_string());
                text.push('}');
                reply(entry, text);
            }
        }
        let now = s.now();
        s.flush(now);
        result
    }

    /// One typed message from the client (for hosts with their own codec).
    pub fn handle(&self, conn: ConnId, msg: ClientMsg) -> Result<(), FrameError> {
        let mut s = self.state.lock();
        let result = handle(&mut s, conn, msg);
        let now = s.now();
        s.flush(now);
        result
    }

    /// Runs the timers until the service is dropped everywhere else. Spawn it.
    pub async fn run(self) {
        let period = {
            let s = self.state.lock();
            (s.config.node.chat_window / 2).clamp(Duration::from_millis(5), Duration::from_millis(50))
        };
        let mut interval = tokio::time::interval(period);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            interval.tick().await;
            if Arc::strong_count(&self.state) == 1 {
                return;
            }
            let mut s = self.state.lock();
            let now = s.now();
            s.tick(now);
        }
    }

    /// Routes every message through `bus` (logic -> bus -> push), as node
    /// `node` of a cluster: what the gate accepts is published, and what the
    /// bus delivers for this node's rooms goes to its push node. Runs until
    /// the bus closes; spawn it before connections arrive.
    pub async fn attach_bus(
        self,
        bus: Arc<dyn room_push::Bus>,
        node: room_core::NodeId,
    ) -> Result<(), room_push::BusError> {
        self.attach_bus_with_cache(bus, node, None).await
    }

    /// [`attach_bus`](Self::attach_bus) with a shared recovery cache: every
    /// reliable envelope the gate accepts is appended to `cache` before it
    /// is published, and when the bus skips numbers of a room, the missing
    /// envelopes are read back from `cache` (waiting at most
    /// `refill_timeout`) and delivered in order, so clients are not reset
    /// for what the bus lost. What the cache no longer holds is reported to
    /// clients by a reset, as without a cache.
    pub async fn attach_bus_with_cache(
        self,
        bus: Arc<dyn room_push::Bus>,
        node: room_core::NodeId,
        cache: Option<(Arc<dyn room_push::SharedCache>, Duration)>,
    ) -> Result<(), room_push::BusError> {
        let mut incoming = bus.subscribe(node).await?;
        let (tx, mut rx) = mpsc::unbounded_channel();
        {
            let mut s = self.state.lock();
            for room in s.rooms.keys() {
                let _ = tx.send(BusCmd::Interest(*room));
            }
            s.bus = Some(tx);
        }
        let outgoing = {
            let bus = bus.clone();
            let cache = cache.clone();
            async move {
                while let Some(cmd) = rx.recv().await {
                    let result = match cmd {
                        BusCmd::Publish(env) => {
                            if let Some((cache, _)) = cache.as_ref().filter(|_| env.seq > 0)
                                && let Err(e) = cache.append(&env).await
                            {
                                tracing::warn!(error = %e, "shared cache refused a message");
                            }
                            bus.publish(&env).await
                        }
                        BusCmd::Interest(room) => bus.set_interest(node, room, true).await,
                    };
                    if let Err(e) = result {
                        tracing::warn!(error = %e, "bus refused a message");
                    }
                }
            }
        };
        let delivering = async {
            use futures::StreamExt;
            while let Some(env) = incoming.next().await {
                if let Some((cache, timeout)) = &cache {
                    self.refill_before(cache.as_ref(), *timeout, &env).await;
                }
                let mut s = self.state.lock();
                let now = s.now();
                if let Err(e) = s.node.handle_envelope(now, &env) {
                    tracing::debug!(error = %e, "envelope not for this node");
                }
                s.flush(now);
            }
        };
        tokio::join!(outgoing, delivering);
        Ok(())
    }

    /// Delivers, from `cache`, what the bus skipped before `env`.
    async fn refill_before(&self, cache: &dyn room_push::SharedCache, timeout: Duration, env: &room_push::Envelope) {
        let room = env.message.room;
        let head = self.state.lock().node.reliable_head(room);
        let Some((after, upto)) = room_push::shared_cache::missing_before(head, env) else { return };
        let missing = match tokio::time::timeout(timeout, cache.range(room, env.epoch, after, upto)).await {
            Ok(Ok(found)) => found,
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "could not refill a bus gap");
                return;
            }
            Err(_) => {
                tracing::warn!("the shared cache did not answer in time to refill a bus gap");
                return;
            }
        };
        let mut s = self.state.lock();
        let now = s.now();
        for m in missing.iter().filter(|m| m.epoch == env.epoch) {
            if s.node.handle_envelope(now, m).is_ok() {
                s.stats.refilled += 1;
                count!("roomkit_bus_refilled_total");
            }
        }
    }

    /// Runs one round of timers now (tests, or hosts with their own loop).
    pub fn tick(&self) {
        let mut s = self.state.lock();
        let now = s.now();
        s.tick(now);
    }
}

use crate::wire::text_payload;

fn handle(s: &mut State, conn: ConnId, msg: ClientMsg) -> Result<(), FrameError> {
    let entry = s.conns.get(&conn).ok_or(FrameError::UnknownConnection)?;
    let (member, role, terminal, hint) = (entry.member, entry.role, entry.terminal, entry.hint);
    let room = member.room_key();
    let actor = Actor { uin: member.uin, role };
    let sender = Sender { uin: member.uin, role };
    let now = s.now();
    let max_text = s.config.max_text;
    let check_text = |text: &str| {
        let len = text.chars().count();
        if len > max_text { Err(FrameError::TextTooLong { len, max: max_text }) } else { Ok(()) }
    };
    match msg {
        ClientMsg::Beat => {
            if let Ok(r) = s.tracker.beat(now, member, terminal, BeatConn(conn.0), hint)
                && let Some(e) = s.conns.get_mut(&conn)
            {
                e.hint = r.hint;
            }
        }
        ClientMsg::Chat { text } => {
            check_text(&text)?;
            let msg = Message::new(room, Class::Chat, kinds::CHAT, text_payload(&text)).from_sender(sender);
            s.publish(now, msg)?;
        }
        ClientMsg::Say { text } => {
            check_text(&text)?;
            let msg = Message::new(room, Class::Teacher, kinds::TEACHER_SAY, text_payload(&text)).from_sender(sender);
            s.publish(now, msg)?;
        }
        ClientMsg::Hand { op, uin } => {
            let r = s.rooms.get_mut(&room).ok_or(FrameError::UnknownConnection)?;
            let target_uin = match op {
                HandOp::Raise => {
                    r.classroom.raise_hand(actor)?;
                    member.uin
                }
                HandOp::Lower => {
                    r.classroom.lower_hand(actor)?;
                    member.uin
                }
                HandOp::Invite | HandOp::Dismiss => {
                    let who = Uin(uin.ok_or_else(|| FrameError::Malformed("invite and dismiss need a uin".into()))?);
                    if op == HandOp::Invite {
                        r.classroom.invite_hand(actor, who)?;
                    } else {
                        r.classroom.dismiss_hand(actor, who)?;
                    }
                    who
                }
            };
            let queue: Vec<u64> = r.classroom.hands().take(50).map(|u| u.0).collect();
            let op_name = match op {
                HandOp::Raise => "raise",
                HandOp::Lower => "lower",
                HandOp::Invite => "invite",
                HandOp::Dismiss => "dismiss",
            };
            let data = format!("{{\"op\":\"{op_name}\",\"uin\":{},\"queue\":{queue:?}}}", target_uin.0);
            // Staff see the queue; the member whose hand it is sees the outcome.
            s.signal(now, room, kinds::HAND, Target::room().roles(RoleSet::staff()), data.clone());
            if !actor.role.is_staff() || target_uin != member.uin {
                s.signal(now, room, kinds::HAND, Target::user(target_uin), data);
            }
        }
        ClientMsg::React { kind, n } => {
            let (reaction, k) = match kind {
                ReactKind::Flower => (Reaction::Flower, kinds::FLOWER),
                ReactKind::Like => (Reaction::Like, kinds::LIKE),
            };
            // Check with push first so a refused reaction is not counted.
            let env = s.gate.publish(now, Message::reaction(room, k, sender, n))?;
            let r = s.rooms.get_mut(&room).ok_or(FrameError::UnknownConnection)?;
            r.classroom.react(actor, reaction, n)?;
            s.dispatch(now, env);
        }
        ClientMsg::CardOpen { options, correct, seconds } => {
            let deadline = seconds.map(|sec| now.saturating_add(Duration::from_secs(u64::from(sec))));
            let r = s.rooms.get_mut(&room).ok_or(FrameError::UnknownConnection)?;
            let id = r.classroom.open_card(actor, now, CardSpec { options, correct, deadline })?;
            let data = format!(
                "{{\"op\":\"open\",\"id\":{id},\"options\":{options},\"seconds\":{}}}",
                seconds.map_or("null".to_owned(), |v| v.to_string())
            );
            s.signal(now, room, kinds::CARD, Target::room(), data);
        }
        ClientMsg::CardAnswer { option } => {
            let r = s.rooms.get_mut(&room).ok_or(FrameError::UnknownConnection)?;
            r.classroom.answer_card(actor, now, option)?;
            r.tally_dirty = true;
            if let Some(e) = s.conns.get(&conn) {
                reply(e, format!("{{\"t\":\"answered\",\"option\":{option}}}"));
            }
        }
        ClientMsg::CardClose => {
            let r = s.rooms.get_mut(&room).ok_or(FrameError::UnknownConnection)?;
            let result = r.classroom.close_card(actor)?;
            s.card_result(now, room, &result);
        }
        ClientMsg::PacketSend { amount, count } => {
            let r = s.rooms.get_mut(&room).ok_or(FrameError::UnknownConnection)?;
            let id = r.classroom.send_packet(actor, amount, count)?;
            let data = format!("{{\"op\":\"open\",\"id\":{id},\"amount\":{amount},\"count\":{count}}}");
            s.signal(now, room, kinds::PACKET, Target::room(), data);
        }
        ClientMsg::PacketGrab { id } => {
            let r = s.rooms.get_mut(&room).ok_or(FrameError::UnknownConnection)?;
            let amount = r.classroom.grab_packet(actor, id)?;
            r.packets_dirty.insert(id);
            if let Some(e) = s.conns.get(&conn) {
                reply(e, format!("{{\"t\":\"grabbed\",\"id\":{id},\"amount\":{amount}}}"));
            }
        }
        ClientMsg::MuteAll { on } => {
            if !role.is_staff() {
                return Err(ActionError::NotAllowed { role, action: crate::classroom::Action::Mute }.into());
            }
            let env = s.gate.set_mute_all(now, room, on)?;
            s.dispatch(now, env);
        }
        ClientMsg::Mute { uin, on } => {
            if !role.is_staff() {
                return Err(ActionError::NotAllowed { role, action: crate::classroom::Action::Mute }.into());
            }
            s.gate.mute_user(room, Uin(uin), on)?;
            s.signal(now, room, kinds::MUTED, Target::user(Uin(uin)), format!("{{\"on\":{on}}}"));
        }
        ClientMsg::Ack { epoch, seq } => {
            let text = crate::wire::ack_reply_text(&s.node.handle_ack(conn, epoch, seq)?);
            if let Some(e) = s.conns.get(&conn) {
                reply(e, text);
            }
        }
        ClientMsg::Check { epoch, after } => {
            let answer = s.node.handle_check(now, conn, epoch, after)?;
            let Some(text) = crate::wire::check_answer_text(&answer) else { return Ok(()) };
            if let Some(e) = s.conns.get(&conn) {
                reply(e, text);
            }
        }
        ClientMsg::Members { limit, after } => {
            let limit = (limit as usize).clamp(1, 100);
            let start = match after {
                None => PageStart::First,
                Some(hex) => PageStart::After(parse_cursor(&hex)?),
            };
            let mut rows = Vec::new();
            let info = s
                .store
                .page(room, &PageQuery::first(limit).start(start), &mut rows)
                .map_err(|e| FrameError::Malformed(e.to_string()))?;
            let mut t = String::from("{\"t\":\"members\",\"rows\":[");
            for (i, row) in rows.iter().enumerate() {
                if i > 0 {
                    t.push(',');
                }
                let terminals: Vec<String> = row.terminals.iter().map(|x| format!("\"{x}\"")).collect();
                t.push_str(&format!(
                    "{{\"uin\":{},\"role\":\"{}\",\"terminals\":[{}]}}",
                    row.uin.0,
                    row.role,
                    terminals.join(",")
                ));
            }
            t.push_str("],\"next\":");
            match info.next {
                Some(c) => {
                    let hex: String = c.to_bits().iter().map(|b| format!("{b:02x}")).collect();
                    t.push_str(&format!("\"{hex}\""));
                }
                None => t.push_str("null"),
            }
            t.push('}');
            if let Some(e) = s.conns.get(&conn) {
                reply(e, t);
            }
        }
    }
    Ok(())
}

fn parse_cursor(hex: &str) -> Result<Cursor, FrameError> {
    let bad = || FrameError::Malformed("bad cursor".into());
    if hex.len() != 34 || !hex.is_ascii() {
        return Err(bad());
    }
    let mut bits = [0u8; 17];
    for (i, b) in bits.iter_mut().enumerate() {
        *b = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).map_err(|_| bad())?;
    }
    Ok(Cursor::from_bits(bits))
}
