//! The room service on tokio: one [`RoomNode`] driven over a bundle of
//! [`Transports`], the same code for a single process (in memory, the
//! default) and for a node of a cluster (NATS and Redis, from the
//! `room-nats` and `room-redis` crates).
//!
//! The host owns the transport to clients (websockets, TCP, an app push
//! channel); per connection it calls:
//!
//! * [`RoomService::connect`]: verifies the ticket and starts the entry;
//!   the [`Connection`]'s `outbound` yields the welcome (or an error frame
//!   and [`Outbound::Close`]) and then every frame for the client;
//! * [`RoomService::handle_text`] for every text frame from the client;
//! * [`RoomService::disconnect`] when the client goes.
//!
//! The business backend acts on rooms through the same service, on any
//! node of a cluster: [`RoomService::publish`], [`RoomService::presence`],
//! [`RoomService::counts`], [`RoomService::members`], [`RoomService::kick`],
//! [`RoomService::revoke`], [`RoomService::close_room`] (all of them
//! [`RoomService::host`]); and it hears what happens in rooms from
//! [`RoomService::events`].
//!
//! ```no_run
//! use room_core::{BusinessId, RoomId, RoomKey};
//! use roomkit::service::{RoomService, ServiceConfig};
//! use roomkit::ticket::KeyRing;
//!
//! # async fn host(ticket: &str) -> Result<(), Box<dyn std::error::Error>> {
//! let keys = KeyRing::new("2026-11", b"shared with the business backend".to_vec())?;
//! let service = RoomService::start(ServiceConfig::new(keys)).await?; // a cluster of one, in memory
//! let room = RoomKey::new(BusinessId(1), RoomId(42));
//! let mut conn = service.connect(room, ticket)?;
//! while let Some(frame) = conn.outbound.recv().await {
//!     // write frame.into_text() to the socket; stop on Outbound::Close
//!     # let _ = frame;
//! }
//! service.disconnect(conn.id);
//! # Ok(()) }
//! ```
//!
//! A process that serves many classes runs its in-memory service as
//! several shards ([`ServiceConfig::shards`]): nodes of one process, each
//! under its own lock, with one [`RoomService`] handle speaking for all.
//!
//! With the `metrics` feature the service records its metrics through the
//! `metrics` facade (every metric is listed in [`telemetry::METRICS`]): install a
//! recorder before starting it.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures::StreamExt;
use parking_lot::Mutex;
use room_core::{ConnId, MemberKey, NodeId, Role, RoomKey, Terminal, Timestamp};
use room_memberlist::{Counts, MemberRow, PageQuery};
use room_push::SendError;
use room_push::{Class, Kind, Target};
use room_service::host::{HostAnswer, HostError, HostRequest, Revocation};
use room_service::host::{RoomEvent, TicketStamp};
pub use room_service::peer::CloseReason;
use room_service::transport::{Transports, run_cache};
pub use room_service::{Admission, FrameError, NodeStats, Outbound, RoomNodeConfig, RoomSizes};
use room_service::{ClientSink, Output, RoomNode};
use std::collections::hash_map::Entry;
use std::collections::{HashMap, HashSet};
use tokio::sync::{Notify, broadcast, mpsc, oneshot};
use tokio::task::JoinHandle;

use crate::ticket::{KeyRing, TicketError};

#[cfg(feature = "metrics")]
#[cfg_attr(docsrs, doc(cfg(feature = "metrics")))]
pub mod telemetry;

mod outbox;
mod refusals;
pub use outbox::{OutboundFrames, TryRecvError};
use outbox::{OutboxSender, Refused, RoomLog, outbox};
use room_push::{Follower, LogEntry, SubclassId};

/// How the service runs.
///
/// ```
/// use std::time::Duration;
/// use room_core::NodeId;
/// use roomkit::node::RoomNodeConfig;
/// use roomkit::service::ServiceConfig;
/// use roomkit::ticket::KeyRing;
///
/// let keys = KeyRing::new("k1", b"shared with the business backend".to_vec())?;
/// let mut config = ServiceConfig::new(keys);
/// config.node = RoomNodeConfig::new(NodeId(2)); // this node's id in a cluster
/// config.node.heartbeat = Duration::from_secs(30); // clients on mobile networks
/// config.node.room_idle = Duration::from_secs(300); // classes that pause
/// config.events = 16_384; // events held for a slow host
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ServiceConfig {
    /// Keys that verify entry tickets.
    pub keys: KeyRing,
    /// The node: its id, heartbeats, limits, windows (see [`RoomNodeConfig`]).
    pub node: RoomNodeConfig,
    /// Frames of a connection's own (replies, chat to it by name) queued
    /// between the service and the host's writer; when full, they wait in
    /// the node (chat is shed first). The room's messages are not queued
    /// per connection: each writer reads them from its room's log
    /// ([`OutboundFrames`]).
    pub outbound: usize,
    /// Room events held for [`RoomService::events`] readers: a reader
    /// that falls further behind is told how many it missed
    /// ([`Lagged`]), and memory stays bounded.
    pub events: usize,
    /// Nodes of this process (with [`RoomService::start`], the in-memory
    /// service): each holds its own rooms under its own lock, so rooms on
    /// two shards never wait on each other and the process uses as many
    /// cores. They are a cluster of `shards` in memory: node ids
    /// `node.node` and the ones after it. 1 (the default) is one node.
    pub shards: usize,
    /// With several shards, a room's members enter on the shard that owns
    /// the room until it holds this many of them; the rest spread over
    /// every shard by member, so a large class is pushed to by every core.
    pub spread_above: usize,
}

impl ServiceConfig {
    /// Defaults around `keys`: node 1, 20 s heartbeats, 3 misses.
    pub fn new(keys: KeyRing) -> Self {
        ServiceConfig {
            keys,
            node: RoomNodeConfig::new(NodeId(1)),
            outbound: 512,
            events: 65_536,
            shards: 1,
            spread_above: 1_000,
        }
    }
}

/// Why the service could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StartError {
    /// The configuration cannot run.
    #[error(transparent)]
    Config(#[from] room_service::ConfigError),
    /// A transport could not subscribe.
    #[error("a transport refused: {0}")]
    Transport(String),
    /// Several shards run over in-memory transports only
    /// ([`RoomService::start`]); a cluster runs more processes instead.
    #[error("{0} shards need the in-memory service (RoomService::start); a cluster node is one shard")]
    Shards(usize),
}

/// Why a connection could not enter. Nothing was entered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EntryError {
    /// The ticket did not pass.
    #[error(transparent)]
    Ticket(#[from] TicketError),
    /// The node cannot take the connection.
    #[error(transparent)]
    Node(#[from] room_service::EntryError),
    /// The service was stopped.
    #[error("the service is stopped")]
    Stopped,
}

/// A connection that is entering. Write every frame from `outbound` to the
/// client: the first is the welcome, or an error and [`Outbound::Close`]
/// if the room refused the entry. When the stream ends, the service has
/// let the connection go.
#[derive(Debug)]
pub struct Connection {
    /// The connection's id for [`RoomService::handle_text`] and
    /// [`RoomService::disconnect`].
    pub id: ConnId,
    /// Who (from the ticket).
    pub member: MemberKey,
    /// Their role (from the ticket).
    pub role: Role,
    /// Their terminal (from the ticket).
    pub terminal: Terminal,
    /// Frames for the client, in order.
    pub outbound: OutboundFrames,
}

/// The room events a node tells ([`RoomService::events`]); with several
/// shards, every shard's, each room's in order.
#[derive(Debug)]
pub struct Events {
    rx: Vec<broadcast::Receiver<RoomEvent>>,
    /// The shard read first next time (none waits behind a busy one).
    next: usize,
}

/// The reader fell behind and events were dropped (the oldest first):
/// reconcile with [`RoomService::presence`] and [`RoomService::counts`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the event reader fell behind: {missed} events were dropped")]
pub struct Lagged {
    /// How many.
    pub missed: u64,
}

impl Events {
    /// The next event, [`Lagged`] after a gap; `None` once the service
    /// is gone.
    pub async fn next(&mut self) -> Option<Result<RoomEvent, Lagged>> {
        loop {
            if let Some(ready) = self.try_next() {
                return Some(ready);
            }
            if self.rx.is_empty() {
                return None;
            }
            // Nothing waiting: the first shard to tell something. A
            // receiver's `recv` is cancel-safe, so the others lose nothing.
            let waits = self.rx.iter_mut().map(|rx| Box::pin(rx.recv()));
            let (got, shard, _) = futures::future::select_all(waits).await;
            match got {
                Ok(event) => return Some(Ok(event)),
                Err(broadcast::error::RecvError::Lagged(missed)) => return Some(Err(Lagged { missed })),
                Err(broadcast::error::RecvError::Closed) => {
                    self.rx.swap_remove(shard);
                }
            }
        }
    }

    /// The next event if one is waiting (no wait).
    pub fn try_next(&mut self) -> Option<Result<RoomEvent, Lagged>> {
        let n = self.rx.len();
        for k in 0..n {
            let shard = (self.next + k) % n;
            match self.rx[shard].try_recv() {
                Ok(event) => {
                    self.next = shard + 1;
                    return Some(Ok(event));
                }
                Err(broadcast::error::TryRecvError::Lagged(missed)) => return Some(Err(Lagged { missed })),
                Err(_) => {}
            }
        }
        None
    }
}

/// Unix time in microseconds: every node of a cluster stamps with it, so
/// sequence epochs and deadlines mean the same on every node.
fn now() -> Timestamp {
    Timestamp::from_micros(SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_micros() as u64))
}

fn unix_secs() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// The writers of this node's connections, and the logs of their rooms.
#[derive(Default)]
struct Writers {
    channels: room_core::ConnSlab<OutboxSender>,
    blocked: HashSet<ConnId>,
    /// Each room's log and the connections of the room here: a log is
    /// kept from the room's first connection's entry to its last one's
    /// leaving (then nobody can follow it).
    logs: HashMap<RoomKey, Arc<RoomLog>>,
    /// Times a writer fell behind its room's log (and resynced).
    lagged: Arc<AtomicU64>,
    /// Frames read from the logs by writers let go, by class code.
    from_log_gone: [u64; 4],
    /// Writers to wake once the node's turn is flushed.
    to_wake: Vec<std::task::Waker>,
    /// Writers behind their room's log at the last look: where they
    /// stood, and since when they have not moved.
    behind: HashMap<ConnId, (u64, std::time::Instant)>,
}

impl Writers {
    /// A new connection of `room`, with its writer's end.
    fn add(&mut self, conn: ConnId, room: RoomKey, tx: OutboxSender) {
        let lagged = &self.lagged;
        let log = self.logs.entry(room).or_insert_with(|| Arc::new(RoomLog::new(room, lagged.clone())));
        log.count_member(true);
        if let Some(old) = self.channels.insert(conn, tx.in_room(log.clone())) {
            self.release(&old);
        }
    }

    /// Lets a connection's writer go: its stream ends once drained.
    fn remove(&mut self, conn: ConnId) -> Option<OutboxSender> {
        self.behind.remove(&conn);
        let tx = self.channels.remove(&conn)?;
        self.release(&tx);
        Some(tx)
    }

    fn release(&mut self, tx: &OutboxSender) {
        for (sum, n) in self.from_log_gone.iter_mut().zip(tx.frames_from_log()) {
            *sum += u64::from(n);
        }
        let Some(log) = tx.room_log() else { return };
        log.count_member(false);
        if log.members() == 0 {
            self.logs.remove(&log.room());
        }
    }

    /// Frames the writers read from their rooms' logs, by class code.
    fn frames_from_log(&self) -> [u64; 4] {
        let mut sums = self.from_log_gone;
        for (_, channel) in self.channels.iter() {
            for (sum, n) in sums.iter_mut().zip(channel.frames_from_log()) {
                *sum += u64::from(n);
            }
        }
        sums
    }

    /// The connections whose writers have read nothing of their room's
    /// log for `lag` while entries waited for them. A writer that stops
    /// reading fills no queue (its room's messages wait in the log, which
    /// keeps only the recent ones): without this look the node would never
    /// learn that its client stopped reading.
    fn stalled(&mut self, now: std::time::Instant, lag: Duration) -> Vec<ConnId> {
        let Writers { channels, behind, .. } = self;
        let mut stalled = Vec::new();
        for (conn, tx) in channels.iter() {
            match tx.log_progress() {
                Some((read, end)) if read < end => match behind.entry(conn) {
                    Entry::Occupied(mut seen) => {
                        let (at, since) = *seen.get();
                        if at != read {
                            seen.insert((read, now));
                        } else if now.saturating_duration_since(since) >= lag {
                            stalled.push(conn);
                        }
                    }
                    Entry::Vacant(first) => {
                        first.insert((read, now));
                    }
                },
                _ if behind.is_empty() => {}
                _ => {
                    behind.remove(&conn);
                }
            }
        }
        if behind.is_empty() && behind.capacity() > 64 {
            // A burst left many behind for a moment: give the room back.
            *behind = HashMap::new();
        }
        stalled
    }

    /// The connections whose writers had filled up and have room again.
    /// Each leaves the blocked set, and so does every connection whose
    /// writer is gone (a host's disconnect lets the writer go without a
    /// close): a writer blocked when its client went holds no entry.
    fn take_writable(&mut self) -> Vec<ConnId> {
        let Writers { channels, blocked, .. } = self;
        let mut ready = Vec::new();
        blocked.retain(|conn| match channels.get(conn) {
            Some(tx) if tx.has_room() => {
                ready.push(*conn);
                false
            }
            Some(_) => true,
            None => false,
        });
        ready
    }
}

impl ClientSink for Writers {
    fn send(&mut self, conn: ConnId, frame: Outbound) -> Result<(), SendError> {
        let Some(tx) = self.channels.get(&conn) else { return Err(SendError::Closed) };
        match tx.try_send(frame) {
            Ok(()) => Ok(()),
            Err(Refused::Full) => {
                self.blocked.insert(conn);
                Err(SendError::WouldBlock)
            }
            Err(Refused::Closed) => Err(SendError::Closed),
        }
    }

    fn close(&mut self, conn: ConnId, reason: CloseReason) {
        if let Some(tx) = self.remove(conn) {
            // The stream ends when the sender goes; the close frame says why
            // if the writer has room for it.
            let _ = tx.try_send(Outbound::Close(reason));
        }
        self.blocked.remove(&conn);
    }

    fn append(&mut self, room: RoomKey, pos: u64, entry: &LogEntry) {
        // A room without connections here has nobody to read it.
        if let Some(log) = self.logs.get(&room) {
            log.append(pos, entry.clone(), &mut self.to_wake);
        }
    }

    fn follow(&mut self, conn: ConnId, room: RoomKey, from: u64, follower: Follower) {
        if let Some(tx) = self.channels.get(&conn)
            && tx.room_log().is_some_and(|log| log.room() == room)
        {
            tx.follow(from, follower);
        }
    }

    fn direct(&mut self, conn: ConnId, entry: &LogEntry) {
        // The node directs entries only to connections that follow, and
        // hands a turn's follows over first.
        if let Some(tx) = self.channels.get(&conn) {
            tx.direct(entry.clone(), tx.log_end());
        }
    }

    fn moved(&mut self, conn: ConnId, at: u64, subclass: Option<SubclassId>) {
        if let Some(tx) = self.channels.get(&conn) {
            tx.moved(at, subclass);
        }
    }
}

/// The writers waiting for a node turn's log entries.
#[must_use = "writers not woken wait for the next turn"]
struct WriterWakes(Vec<std::task::Waker>);

impl WriterWakes {
    /// Every entry of the turn is in its log: each waiting writer reads
    /// them in one go. Called with the node unlocked: tens of thousands of
    /// wake-ups keep no input waiting.
    fn wake(self) {
        for w in self.0 {
            w.wake();
        }
    }
}

struct Inner {
    keys: KeyRing,
    outbound: usize,
    /// The node's largest client frame: larger ones are refused unparsed.
    max_frame: usize,
    /// How long a writer may read nothing while frames wait for it.
    slow_client_lag: Duration,
    core: Mutex<RoomNode>,
    writers: Mutex<Writers>,
    transports: Mutex<Option<Transports>>,
    outputs: mpsc::UnboundedSender<Output>,
    wake: Notify,
    /// When the timer task will wake next (Unix micros): an input that
    /// brings the node's next timeout earlier wakes it.
    armed: AtomicU64,
    /// Entries refused for their ticket, and the line the first of each
    /// window gets (the rest are summed up by the timers).
    ticket_refusals: AtomicU64,
    ticket_refusal_line: refusals::FirstInWindow,
    tasks: Mutex<Vec<JoinHandle<()>>>,
    /// Room events, to every reader of [`RoomService::events`].
    events: broadcast::Sender<RoomEvent>,
    /// Host requests waiting for their answers, by id.
    host_waiters: Mutex<HashMap<u64, oneshot::Sender<Result<HostAnswer, HostError>>>>,
    /// The `node` label of this node's metrics.
    #[cfg(feature = "metrics")]
    node_label: metrics::SharedString,
    /// The histograms every turn records into, registered once.
    #[cfg(feature = "metrics")]
    turns: telemetry::Turns,
    /// The node's cache timeout: answers later than it are counted late.
    #[cfg(feature = "metrics")]
    cache_timeout: Duration,
}

/// The room service. Cheap to clone; every clone is the same service.
///
/// Call order: [`start`](RoomService::start) (one node in memory) or
/// [`start_with`](RoomService::start_with) (a node of a cluster); per
/// socket [`connect`](RoomService::connect) with the client's ticket,
/// write every frame of [`Connection::outbound`] to the socket, hand every
/// text frame to [`handle_text`](RoomService::handle_text), and call
/// [`disconnect`](RoomService::disconnect) when the socket closes.
///
/// ```
/// use std::time::{Duration, SystemTime, UNIX_EPOCH};
/// use room_core::{BusinessId, Role, RoomId, RoomKey, Terminal, Uin};
/// use roomkit::service::{Outbound, RoomService, ServiceConfig};
/// use roomkit::ticket::{JoinTicket, KeyRing};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let keys = KeyRing::new("k1", b"shared with the business backend".to_vec())?;
/// let service = RoomService::start(ServiceConfig::new(keys.clone())).await?;
///
/// // The business backend issued this ticket; the client presents it.
/// let room = RoomKey::new(BusinessId(1), RoomId(42));
/// let expires_at = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs() + 600;
/// let ticket = keys.issue(&JoinTicket { room, uin: Uin(1), role: Role::Teacher, terminal: Terminal::Pc, expires_at });
///
/// let mut conn = service.connect(room, &ticket)?;
/// let Some(Outbound::Text(welcome)) = conn.outbound.recv().await else { panic!("no welcome") };
/// assert!(welcome.starts_with(br#"{"t":"welcome""#));
///
/// service.handle_text(conn.id, r#"{"t":"say","text":"good morning"}"#)?;
/// let said = tokio::time::timeout(Duration::from_secs(5), conn.outbound.recv()).await?;
/// assert!(said.is_some());
///
/// service.leave(conn.id); // or disconnect(): the place is kept until the heartbeat timeout
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct RoomService {
    /// This node (the first shard, with several).
    inner: Arc<Inner>,
    /// Every shard of the process, when there are several.
    shards: Option<Arc<Shards>>,
}

impl Shards {
    /// The shard of node `id` (the first shard for an id not among them:
    /// it answers as a node that never had the connection would).
    fn node(&self, id: u64) -> &RoomService {
        usize::try_from(id.wrapping_sub(self.first)).ok().and_then(|i| self.nodes.get(i)).unwrap_or(&self.nodes[0])
    }
}

/// The shards of one process: nodes of a cluster in memory.
struct Shards {
    /// Each a one-node handle; their node ids follow each other.
    nodes: Box<[RoomService]>,
    /// The first shard's node id.
    first: u64,
    /// Rooms to the shards that own them, as the nodes route them.
    router: room_core::Router,
    spread_above: usize,
}

impl std::fmt::Debug for RoomService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RoomService").field("node", &self.id()).finish_non_exhaustive()
    }
}

/// Counts an event through the `metrics` facade (feature `metrics`).
macro_rules! count {
    ($inner:expr, $name:literal) => {
        #[cfg(feature = "metrics")]
        telemetry::count(&$inner.node_label, $name);
    };
}

/// When a turn started (feature `metrics`; nothing without it).
#[cfg(feature = "metrics")]
type Started = std::time::Instant;
/// When a turn started (feature `metrics`; nothing without it).
#[cfg(not(feature = "metrics"))]
#[derive(Clone, Copy)]
struct Started;

#[cfg(feature = "metrics")]
fn started() -> Started {
    std::time::Instant::now()
}

#[cfg(not(feature = "metrics"))]
fn started() -> Started {
    Started
}

impl RoomService {
    /// Starts a cluster of one, in this process's memory: what the
    /// quickstart runs. Needs a tokio runtime.
    ///
    /// With [`ServiceConfig::shards`] above 1, the process runs that many
    /// nodes, a cluster in memory (see [`ServiceConfig::shards`]); this
    /// handle speaks for all of them: a connection enters on the shard
    /// its room's members go to, and every call about it goes there.
    pub async fn start(mut config: ServiceConfig) -> Result<RoomService, StartError> {
        let first = config.node.node;
        let count = config.shards.max(1);
        if count == 1 {
            config.shards = 1;
            return Self::start_with(config, Transports::in_memory(first)).await;
        }
        let ids: Vec<NodeId> = (0..count as u64).map(|i| NodeId(first.0 + i)).collect();
        let membership = room_service::transport::FixedMembership::new(ids.iter().copied());
        let transports = Transports {
            peers: Arc::new(room_service::transport::InMemoryPeers::default()),
            membership: Arc::new(membership),
            ..Transports::in_memory(first)
        };
        // Routed as the nodes route: the view's nodes, each of weight 100.
        let router = room_core::Router::with_nodes(config.node.router, ids.iter().map(|id| (*id, 100)))
            .map_err(|e| StartError::Config(room_service::ConfigError(e.to_string())))?;
        if config.node.incarnation == 0 {
            config.node.incarnation = now().as_micros();
        }
        let mut nodes = Vec::with_capacity(count);
        for id in ids {
            let mut shard = config.clone();
            shard.shards = 1;
            shard.node.node = id;
            // Shards of one process fail together: a copy of a room's
            // member list on another shard would protect nothing.
            shard.node.replicas = 1;
            match Self::start_with(shard, transports.clone()).await {
                Ok(node) => nodes.push(node),
                Err(e) => {
                    for node in &nodes {
                        node.kill();
                    }
                    return Err(e);
                }
            }
        }
        let shards = Shards { nodes: nodes.into(), first: first.0, router, spread_above: config.spread_above };
        Ok(RoomService { inner: shards.nodes[0].inner.clone(), shards: Some(Arc::new(shards)) })
    }

    /// The one-node handles this service speaks for (itself, unless it
    /// runs several shards).
    fn nodes(&self) -> &[RoomService] {
        match &self.shards {
            Some(shards) => &shards.nodes,
            None => std::slice::from_ref(self),
        }
    }

    /// The node that holds `conn`.
    fn node_of(&self, conn: ConnId) -> &RoomService {
        match &self.shards {
            // A connection's id carries its node's id (the tag).
            Some(s) => s.node(u64::from(conn.tag())),
            None => self,
        }
    }

    /// The node that owns `room`.
    fn node_for_room(&self, room: RoomKey) -> &RoomService {
        match &self.shards {
            Some(s) => s.router.route(&room).map_or(&s.nodes[0], |id| s.node(id.0)),
            None => self,
        }
    }

    /// The node `uin` enters `room` on: the room's owner until it holds
    /// [`ServiceConfig::spread_above`] of the room's connections, then any
    /// shard, by member.
    fn place(&self, room: RoomKey, uin: room_core::Uin) -> &RoomService {
        let Some(s) = &self.shards else { return self };
        let home = self.node_for_room(room);
        if home.inner.core.lock().room_connections(room) < s.spread_above {
            return home;
        }
        let mut key = [0u8; 24];
        key[..8].copy_from_slice(&u64::from(room.bid.0).to_le_bytes());
        key[8..16].copy_from_slice(&room.room.0.to_le_bytes());
        key[16..].copy_from_slice(&uin.0.to_le_bytes());
        let i = room_core::stable_hash(&key) % s.nodes.len() as u64;
        &s.nodes[i as usize]
    }

    /// How many shards (nodes) this process runs: see
    /// [`ServiceConfig::shards`].
    pub fn shard_count(&self) -> usize {
        self.nodes().len()
    }

    /// Reads every shard's node (tests, health endpoints), in node order.
    pub fn inspect_shards<T>(&self, mut f: impl FnMut(&RoomNode) -> T) -> Vec<T> {
        self.nodes().iter().map(|n| f(&n.inner.core.lock())).collect()
    }

    /// Starts a node over `transports` (a cluster's engines, or in-memory
    /// ones shared by several nodes of one process). Needs a tokio runtime.
    pub async fn start_with(mut config: ServiceConfig, transports: Transports) -> Result<RoomService, StartError> {
        if config.shards > 1 {
            return Err(StartError::Shards(config.shards));
        }
        if config.node.incarnation == 0 {
            config.node.incarnation = now().as_micros();
        }
        let me = config.node.node;
        // The writers read their rooms' logs: a room's message costs the
        // node the same for three members or sixty thousand.
        config.node.push.delivery = room_push::Delivery::Log;
        let mut core = RoomNode::new(config.node.clone())?;
        let bus_in = transports.bus.subscribe(me).await.map_err(|e| StartError::Transport(e.to_string()))?;
        let peers_in = transports.peers.inbox(me).await.map_err(|e| StartError::Transport(e.to_string()))?;
        let mut views = transports.membership.views();
        // A view already known (a cluster of one) is in force before the
        // first connection.
        let first = futures::FutureExt::now_or_never(views.next()).flatten();
        if let Some(view) = &first {
            core.set_view(now(), view);
        }
        let (tx, rx) = mpsc::unbounded_channel();
        #[cfg(feature = "metrics")]
        telemetry::describe();
        #[cfg(feature = "metrics")]
        let cache_timeout = config.node.cache_timeout;
        #[cfg(feature = "metrics")]
        let node_label: metrics::SharedString = Arc::<str>::from(me.0.to_string()).into();
        let inner = Arc::new(Inner {
            keys: config.keys,
            outbound: config.outbound.max(8),
            max_frame: config.node.max_frame,
            slow_client_lag: config.node.slow_client_lag,
            core: Mutex::new(core),
            writers: Mutex::new(Writers::default()),
            transports: Mutex::new(Some(transports.clone())),
            outputs: tx,
            wake: Notify::new(),
            armed: AtomicU64::new(0),
            ticket_refusals: AtomicU64::new(0),
            ticket_refusal_line: refusals::FirstInWindow::default(),
            tasks: Mutex::new(Vec::new()),
            host_waiters: Mutex::new(HashMap::new()),
            events: broadcast::channel(config.events.max(16)).0,
            #[cfg(feature = "metrics")]
            turns: telemetry::Turns::new(&node_label),
            #[cfg(feature = "metrics")]
            node_label,
            #[cfg(feature = "metrics")]
            cache_timeout,
        });
        let service = RoomService { inner, shards: None };
        #[allow(unused_mut)]
        let mut tasks = vec![
            tokio::spawn(service.clone().carry_out(rx, transports.clone())),
            tokio::spawn(service.clone().follow_views(views)),
            tokio::spawn(service.clone().deliver_bus(bus_in)),
            tokio::spawn(service.clone().deliver_peers(peers_in)),
            tokio::spawn(service.clone().timers()),
        ];
        #[cfg(feature = "metrics")]
        tasks.push(tokio::spawn(service.clone().sample_metrics()));
        service.inner.tasks.lock().extend(tasks);
        tracing::info!(node = %me, "room service started");
        Ok(service)
    }

    /// This node (the first shard's, with several).
    pub fn id(&self) -> NodeId {
        self.inner.core.lock().id()
    }

    /// Counters (every shard's, summed).
    pub fn stats(&self) -> NodeStats {
        let mut stats = NodeStats::default();
        for node in self.nodes() {
            stats.absorb(&node.node_stats());
        }
        stats
    }

    /// This node's (this shard's) counters: the core's, and the frames its
    /// writers read from their rooms' logs.
    fn node_stats(&self) -> NodeStats {
        let mut stats = self.inner.core.lock().stats();
        let writers = self.inner.writers.lock();
        // A writer behind its room's log resyncs as a lane would.
        stats.push.resyncs += writers.lagged.load(Ordering::Relaxed);
        // The node counts the frames of its lanes; the writers, those of
        // the logs.
        for (i, n) in writers.frames_from_log().into_iter().enumerate() {
            stats.push.frames_by_class[i] += n;
            stats.push.frames_sent += n;
        }
        stats
    }

    /// The rooms this node owns (every shard's), by member count (a walk
    /// over them: once in a while, not per request).
    pub fn room_sizes(&self) -> RoomSizes {
        let mut sizes = RoomSizes::default();
        for node in self.nodes() {
            sizes.absorb(&node.inner.core.lock().room_sizes());
        }
        sizes
    }

    /// Copies the node's counters ([`stats`](Self::stats),
    /// [`room_sizes`](Self::room_sizes)) into metrics now (feature
    /// `metrics`; see [`telemetry`]). The service does it every
    /// [`SAMPLE_EVERY`](telemetry::SAMPLE_EVERY) on its own; a host calls it
    /// before rendering a scrape so that the scrape is current.
    #[cfg(feature = "metrics")]
    #[cfg_attr(docsrs, doc(cfg(feature = "metrics")))]
    pub fn record_metrics(&self) {
        for node in self.nodes() {
            let (stats, sizes) = (node.node_stats(), node.inner.core.lock().room_sizes());
            telemetry::record(&node.inner.node_label, &stats, &sizes);
        }
    }

    /// Samples the node's counters into metrics every
    /// [`SAMPLE_EVERY`](telemetry::SAMPLE_EVERY).
    #[cfg(feature = "metrics")]
    async fn sample_metrics(self) {
        let mut every = tokio::time::interval(telemetry::SAMPLE_EVERY);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        loop {
            every.tick().await;
            self.record_metrics();
        }
    }

    /// Records how long a turn that began at `began` held the node.
    fn turn_done(&self, began: Started) {
        #[cfg(feature = "metrics")]
        self.inner.turns.turn(began.elapsed());
        let _ = began;
    }

    fn fanout_done(&self, class: room_push::Class, began: Started) {
        #[cfg(feature = "metrics")]
        self.inner.turns.fanout(class, began.elapsed());
        let _ = (class, began);
    }

    /// The nodes this node routes to.
    pub fn view(&self) -> Vec<NodeId> {
        self.inner.core.lock().view()
    }

    /// Reads the node's state (tests, health endpoints); the first
    /// shard's, with several (see [`inspect_shards`](Self::inspect_shards)).
    pub fn inspect<T>(&self, f: impl FnOnce(&RoomNode) -> T) -> T {
        f(&self.inner.core.lock())
    }

    /// Runs `f` on the node and carries out what it asks for.
    fn with_core<T>(&self, f: impl FnOnce(&mut RoomNode, Timestamp) -> T) -> T {
        let mut core = self.inner.core.lock();
        let began = started();
        let t = now();
        let result = f(&mut core, t);
        let wakes = self.pump(&mut core, t);
        self.turn_done(began);
        drop(core);
        wakes.wake();
        result
    }

    /// Hands the node's outputs to the I/O task and its frames to the
    /// connections' writers; the writers that wait for the turn's log
    /// entries are to be woken once the node is unlocked.
    fn pump(&self, core: &mut RoomNode, t: Timestamp) -> WriterWakes {
        while let Some(output) = core.poll_output() {
            match output {
                Output::Host { id, answer } => {
                    if let Some(waiter) = self.inner.host_waiters.lock().remove(&id) {
                        let _ = waiter.send(answer);
                    }
                    continue;
                }
                Output::Event(event) => {
                    // Without readers it is dropped; a reader that is
                    // behind by the buffer's size misses the oldest.
                    let _ = self.inner.events.send(event);
                    continue;
                }
                _ => {}
            }
            let _ = self.inner.outputs.send(output);
        }
        let began = started();
        let wake = {
            let mut writers = self.inner.writers.lock();
            core.flush(t, &mut *writers);
            std::mem::take(&mut writers.to_wake)
        };
        #[cfg(feature = "metrics")]
        self.inner.turns.flush(began.elapsed());
        let _ = began;
        if core.poll_timeout().is_some_and(|at| at.as_micros() < self.inner.armed.load(Ordering::Relaxed)) {
            self.inner.wake.notify_one();
        }
        WriterWakes(wake)
    }

    /// Lets `ticket` into `room`: verified here, then admitted by the
    /// room's owner. See [`Connection`].
    pub fn connect(&self, room: RoomKey, ticket: &str) -> Result<Connection, EntryError> {
        // Verified before any node is touched.
        let verified = match self.inner.keys.verify_full(ticket, room, unix_secs()) {
            Ok(v) => v,
            Err(e) => {
                #[cfg(feature = "metrics")]
                metrics::counter!("roomkit_entries_refused_total", "node" => self.inner.node_label.clone(), "by" => "ticket")
                    .increment(1);
                self.inner.ticket_refusals.fetch_add(1, Ordering::Relaxed);
                if self.inner.ticket_refusal_line.first(unix_secs()) {
                    // The first of its window; the rest are summed up.
                    tracing::info!(%room, error = %e, "entry refused (further ones this window are counted)");
                }
                return Err(e.into());
            }
        };
        self.place(room, verified.ticket.uin).enter(room, verified)
    }

    /// Enters a connection with a verified ticket on this node.
    fn enter(&self, room: RoomKey, verified: crate::ticket::Verified) -> Result<Connection, EntryError> {
        let (tx, rx) = outbox(self.inner.outbound);
        let ticket = verified.ticket;
        let stamp = TicketStamp { id: verified.id.0, issued_at: verified.issued_at.unwrap_or(0) };
        let who = Admission::new(room, ticket.uin, ticket.role, ticket.terminal).with_ticket(stamp);
        let mut core = self.inner.core.lock();
        let began = started();
        let t = now();
        let conn = match core.connect(t, who) {
            Ok(conn) => conn,
            Err(e) => {
                self.turn_done(began);
                return Err(e.into());
            }
        };
        // The writer is in place before anything can be flushed to it.
        self.inner.writers.lock().add(conn, room, tx);
        let wakes = self.pump(&mut core, t);
        self.turn_done(began);
        drop(core);
        wakes.wake();
        count!(self.inner, "roomkit_entries_total");
        Ok(Connection {
            id: conn,
            member: room.member(ticket.uin),
            role: ticket.role,
            terminal: ticket.terminal,
            outbound: rx,
        })
    }

    /// One text frame from the client. Refusals also reach the client as
    /// an error frame.
    pub fn handle_text(&self, conn: ConnId, text: &str) -> Result<(), FrameError> {
        let node = self.node_of(conn);
        // Parsed before the node is locked: no room state is needed for
        // it, and a frame's JSON is the costliest part of most of them.
        if text.len() <= node.inner.max_frame
            && let Some(msg) = room_service::wire::ClientMsg::from_json(text)
        {
            return node.with_core(|core, t| core.handle_client(t, conn, msg));
        }
        // Refused: the node says why, to the client too.
        node.with_core(|core, t| core.handle_text(t, conn, text))
    }

    /// One parsed message from the client (hosts with their own codec).
    pub fn handle(&self, conn: ConnId, msg: room_service::wire::ClientMsg) -> Result<(), FrameError> {
        self.node_of(conn).with_core(|core, t| core.handle_client(t, conn, msg))
    }

    /// The client said goodbye (the member leaves now, on this terminal);
    /// the connection's stream ends with [`CloseReason::Left`]. A client
    /// speaking the JSON protocol says it with `{"t":"leave"}` instead.
    pub fn leave(&self, conn: ConnId) {
        self.node_of(conn).with_core(|core, t| core.leave(t, conn));
    }

    /// The client's socket closed. Its member keeps its place until the
    /// heartbeat timeout, so a reconnect inside it resumes (the others see
    /// no leave and enter); see [`RoomService::leave`].
    pub fn disconnect(&self, conn: ConnId) {
        let node = self.node_of(conn);
        {
            let mut writers = node.inner.writers.lock();
            writers.remove(conn);
            writers.blocked.remove(&conn);
        }
        node.with_core(|core, t| core.disconnect(t, conn));
    }

    /// What happens in the rooms this node owns, from now on: entries,
    /// exits (with why), hands, answers, card results, grabs, reaction
    /// totals, closes; in order per room (see
    /// [`RoomEvent`]). On a cluster, each
    /// node tells its own rooms' events: read them on every node.
    ///
    /// ```no_run
    /// # async fn f(service: roomkit::service::RoomService) {
    /// use roomkit::host::EventKind;
    /// let mut events = service.events();
    /// while let Some(event) = events.next().await {
    ///     match event {
    ///         Ok(e) if matches!(e.what, EventKind::Left { .. }) => { /* attendance */ }
    ///         Ok(_) => {}
    ///         Err(lagged) => eprintln!("{lagged}"), // reconcile with presence()
    ///     }
    /// }
    /// # }
    /// ```
    pub fn events(&self) -> Events {
        Events { rx: self.nodes().iter().map(|n| n.inner.events.subscribe()).collect(), next: 0 }
    }

    /// A host's request, on whichever node the room is owned by; see
    /// [`HostRequest`] and the helpers below.
    pub async fn host(&self, request: HostRequest) -> Result<HostAnswer, HostError> {
        // Asked of the room's owner, where there is a choice: no hop.
        let node = self.node_for_room(request.room());
        let (tx, rx) = oneshot::channel();
        let (id, wakes) = {
            let mut core = node.inner.core.lock();
            let began = started();
            let t = now();
            let id = core.host(t, request);
            if let Ok(id) = id {
                // In place before the answer can be pumped out.
                node.inner.host_waiters.lock().insert(id, tx);
            }
            let wakes = node.pump(&mut core, t);
            node.turn_done(began);
            (id, wakes)
        };
        wakes.wake();
        id?;
        // A service killed meanwhile drops the waiter: no owner answered.
        rx.await.unwrap_or(Err(HostError::Unavailable))
    }

    /// Publishes a message of the host's (not a member's) to `target` in
    /// `room`: `data` is JSON the clients get as the message's `data`,
    /// `kind` one of the host's (from
    /// [`HOST_FIRST`](room_service::wire::kinds::HOST_FIRST)). Reliable
    /// classes (signal, teacher) are numbered and recoverable; the answer
    /// is their `(epoch, seq)`.
    ///
    /// ```no_run
    /// # async fn f(service: roomkit::service::RoomService, room: room_core::RoomKey) -> Result<(), roomkit::host::HostError> {
    /// use room_push::{Class, Kind, Target};
    /// let notice = bytes::Bytes::from_static(br#"{"text":"class starts in 1 minute"}"#);
    /// let (epoch, seq) = service.publish(room, Target::room(), Class::Teacher, Kind(300), notice).await?;
    /// # let _ = (epoch, seq); Ok(()) }
    /// ```
    pub async fn publish(
        &self,
        room: RoomKey,
        target: Target,
        class: Class,
        kind: Kind,
        data: bytes::Bytes,
    ) -> Result<(u64, u64), HostError> {
        match self.host(HostRequest::Publish { room, target, class, kind, data }).await? {
            HostAnswer::Published { epoch, seq } => Ok((epoch, seq)),
            other => Err(unexpected(&other)),
        }
    }

    /// A member's row (role, terminals, join time) if present.
    pub async fn presence(&self, member: MemberKey) -> Result<Option<MemberRow>, HostError> {
        match self.host(HostRequest::Presence { member }).await? {
            HostAnswer::Presence(row) => Ok(row),
            other => Err(unexpected(&other)),
        }
    }

    /// A room's counts by role and terminal.
    pub async fn counts(&self, room: RoomKey) -> Result<Counts, HostError> {
        match self.host(HostRequest::Counts { room }).await? {
            HostAnswer::Counts(counts) => Ok(counts),
            other => Err(unexpected(&other)),
        }
    }

    /// A page of a room's members (`query`: filters, cursor, size); the
    /// cursor of the next page comes with it.
    pub async fn members(
        &self,
        room: RoomKey,
        query: PageQuery,
    ) -> Result<(Vec<MemberRow>, Option<room_memberlist::Cursor>), HostError> {
        match self.host(HostRequest::Members { room, query }).await? {
            HostAnswer::Members { rows, next } => Ok((rows, next)),
            other => Err(unexpected(&other)),
        }
    }

    /// Removes a member from its room on every terminal: its clients get
    /// a `bye` frame with `reason` and close 4005. With `ban`, its entries
    /// are refused (`banned`) that long. Returns whether it was present.
    pub async fn kick(&self, member: MemberKey, reason: &str, ban: Option<Duration>) -> Result<bool, HostError> {
        let ban_ms = ban.map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        match self.host(HostRequest::Kick { member, reason: reason.to_owned(), ban_ms }).await? {
            HostAnswer::Kicked { was_present } => Ok(was_present),
            other => Err(unexpected(&other)),
        }
    }

    /// Refuses further entries of `room` with the tickets `what` names
    /// (one ticket, or every ticket a user was issued so far), for `keep`
    /// (as long as those tickets could still be valid). Members already
    /// in stay: [`kick`](Self::kick) them for that.
    ///
    /// ```no_run
    /// # async fn f(service: roomkit::service::RoomService, room: room_core::RoomKey, text: &str) -> Result<(), Box<dyn std::error::Error>> {
    /// use roomkit::host::Revocation;
    /// use roomkit::ticket::TicketId;
    /// let id = TicketId::of(text)?;
    /// service.revoke(room, Revocation::Ticket(id.0), std::time::Duration::from_secs(3600)).await?;
    /// # Ok(()) }
    /// ```
    pub async fn revoke(&self, room: RoomKey, what: Revocation, keep: Duration) -> Result<(), HostError> {
        let for_ms = u64::try_from(keep.as_millis()).unwrap_or(u64::MAX);
        match self.host(HostRequest::Revoke { room, what, for_ms }).await? {
            HostAnswer::Revoked => Ok(()),
            other => Err(unexpected(&other)),
        }
    }

    /// Closes a room: every member's clients get a `bye` frame with
    /// `reason` and close 4006, and the room's interactions, mutes and
    /// bans are let go. Returns how many members it had.
    pub async fn close_room(&self, room: RoomKey, reason: &str) -> Result<u32, HostError> {
        match self.host(HostRequest::CloseRoom { room, reason: reason.to_owned() }).await? {
            HostAnswer::Closed { members } => Ok(members),
            other => Err(unexpected(&other)),
        }
    }

    /// Runs the node's due timers now (tests, or hosts with their own loop).
    pub fn tick(&self) {
        for node in self.nodes() {
            node.with_core(|core, t| core.handle_timeout(t));
        }
    }

    /// Stops the service as a crash would: no goodbye to the cluster, every
    /// connection dropped, every task stopped, its transports let go.
    pub fn kill(&self) {
        for node in self.nodes() {
            for task in node.inner.tasks.lock().drain(..) {
                task.abort();
            }
            node.inner.transports.lock().take();
            let mut writers = node.inner.writers.lock();
            writers.channels.clear();
            writers.blocked.clear();
            tracing::warn!(node = %node.id(), "room service killed");
        }
    }

    /// Carries out the node's outputs, in order. Cache and limiter requests
    /// run concurrently (each answers on its own); everything else waits
    /// for the one before it, so a room's interest is set before the entry
    /// request that depends on it leaves.
    async fn carry_out(self, mut rx: mpsc::UnboundedReceiver<Output>, transports: Transports) {
        let me = self.id();
        while let Some(output) = rx.recv().await {
            match output {
                Output::Peer { to, msg } => {
                    if let Err(e) = transports.peers.send(me, to, msg.encode()).await {
                        count!(self.inner, "roomkit_peer_send_errors_total");
                        tracing::debug!(error = %e, %to, "peer message not sent");
                    }
                }
                Output::Publish(env) => match transports.bus.publish(&env).await {
                    Ok(()) => {
                        #[cfg(feature = "metrics")]
                        metrics::counter!(
                            "roomkit_bus_published_total",
                            "node" => self.inner.node_label.clone(),
                            "class" => telemetry::class_label(env.message.class)
                        )
                        .increment(1);
                    }
                    Err(e) => {
                        count!(self.inner, "roomkit_bus_publish_errors_total");
                        tracing::warn!(error = %e, "not published");
                    }
                },
                Output::Interest { room, on } => {
                    let mut delay = Duration::from_millis(20);
                    for _ in 0..8 {
                        match transports.bus.set_interest(me, room, on).await {
                            Ok(()) => break,
                            Err(e) => {
                                count!(self.inner, "roomkit_bus_interest_retries_total");
                                tracing::warn!(error = %e, %room, "bus interest not set; retrying");
                                tokio::time::sleep(delay).await;
                                delay = (delay * 2).min(Duration::from_secs(1));
                            }
                        }
                    }
                }
                Output::Cache { id, op } => {
                    let cache = transports.cache.clone();
                    let service = self.clone();
                    tokio::spawn(async move {
                        #[cfg(feature = "metrics")]
                        let (op_label, began) = (telemetry::cache_op(&op), std::time::Instant::now());
                        let answer = run_cache(cache.as_ref(), op).await;
                        #[cfg(feature = "metrics")]
                        {
                            let took = began.elapsed();
                            let late = took > service.inner.cache_timeout;
                            telemetry::cache_done(&service.inner.node_label, op_label, took, &answer, late);
                        }
                        service.with_core(|core, t| core.handle_cache(t, id, answer));
                    });
                }
                Output::Limit { id, key, quota, cost } => {
                    let limiter = transports.limiter.clone();
                    let service = self.clone();
                    tokio::spawn(async move {
                        let began = started();
                        let answer = limiter.check(&key, quota, now(), cost).await;
                        #[cfg(feature = "metrics")]
                        telemetry::limit_done(&service.inner.node_label, began.elapsed(), answer.is_err());
                        let _ = began;
                        service.with_core(|core, t| core.handle_limit(t, id, answer));
                    });
                }
                _ => {}
            }
        }
    }

    async fn follow_views(self, mut views: futures::stream::BoxStream<'static, room_core::ClusterView>) {
        while let Some(view) = views.next().await {
            let before = self.view();
            self.with_core(|core, t| core.set_view(t, &view));
            let after = self.view();
            if before != after {
                tracing::info!(node = %self.id(), view = ?after, "view changed");
            }
        }
    }

    async fn deliver_bus(self, mut incoming: futures::stream::BoxStream<'static, room_push::Envelope>) {
        while let Some(env) = incoming.next().await {
            let (class, began) = (env.message.class, started());
            self.with_core(|core, t| core.handle_envelope(t, env));
            self.fanout_done(class, began);
        }
    }

    async fn deliver_peers(self, mut incoming: futures::stream::BoxStream<'static, (NodeId, bytes::Bytes)>) {
        while let Some((from, bytes)) = incoming.next().await {
            let result = self.with_core(|core, t| core.handle_peer_bytes(t, from, &bytes));
            if let Err(e) = result {
                tracing::warn!(error = %e, %from, "undecodable peer message dropped");
            }
        }
    }

    /// Runs the node's timers at its wake-ups, lets writers that had
    /// filled up take frames again, and closes the ones that stopped
    /// reading their room's log.
    async fn timers(self) {
        let mut refusals = refusals::RefusalWindow::new(std::time::Instant::now(), self.refusal_counts());
        // A look at every writer's place in its log, a few times within the
        // lag (at most once a second: a walk over every connection).
        let lag = self.inner.slow_client_lag;
        let look_every = (lag / 4).clamp(Duration::from_millis(50), Duration::from_secs(1));
        let mut next_look = std::time::Instant::now() + look_every;
        loop {
            if let Some(r) = refusals.observe(std::time::Instant::now(), || self.refusal_counts()) {
                tracing::info!(
                    window_s = refusals::WINDOW.as_secs(),
                    tickets = r.tickets,
                    entries = r.entries,
                    frames = r.frames,
                    rate_limited = r.rate_limited,
                    "refusals in the last window"
                );
            }
            let next = self.inner.core.lock().poll_timeout();
            let wait = next.map_or(Duration::from_millis(50), |at| {
                Duration::from_micros(at.as_micros().saturating_sub(now().as_micros()))
            });
            // Writers drain on their own: look at blocked ones often.
            let wait = wait.min(Duration::from_millis(20));
            let wake_at = now().as_micros().saturating_add(u64::try_from(wait.as_micros()).unwrap_or(u64::MAX));
            self.inner.armed.store(wake_at, Ordering::Relaxed);
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = self.inner.wake.notified() => {}
            }
            let (writable, stalled) = {
                let mut writers = self.inner.writers.lock();
                let at = std::time::Instant::now();
                let stalled = if at >= next_look {
                    next_look = at + look_every;
                    writers.stalled(at, lag)
                } else {
                    Vec::new()
                };
                (writers.take_writable(), stalled)
            };
            self.with_core(|core, t| {
                for conn in writable {
                    core.set_writable(conn);
                }
                for conn in stalled {
                    core.writer_stalled(t, conn);
                }
                if core.poll_timeout().is_some_and(|at| at <= t) {
                    core.handle_timeout(t);
                }
            });
        }
    }
}

impl RoomService {
    fn refusal_counts(&self) -> refusals::Counts {
        let s = self.inner.core.lock().stats();
        refusals::Counts {
            tickets: self.inner.ticket_refusals.load(Ordering::Relaxed),
            entries: s.refused_entries,
            frames: s.refused_frames,
            rate_limited: s.rate_limited,
        }
    }
}

/// An answer of the wrong kind (a node of another version).
fn unexpected(answer: &HostAnswer) -> HostError {
    HostError::Bad(format!("unexpected answer {answer:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const ROOM: RoomKey = RoomKey::new(room_core::BusinessId(1), room_core::RoomId(1));

    /// A writer that filled up and whose client then went (the host's
    /// disconnect: no close) leaves no entry behind in the blocked set; one
    /// that drains is handed back as writable, once.
    #[test]
    fn blocked_writers_of_gone_clients_are_forgotten() {
        let mut writers = Writers::default();
        let mut receivers = Vec::new();
        for n in 0..1_000u64 {
            let conn = ConnId(n);
            let (tx, rx) = outbox(8);
            writers.add(conn, ROOM, tx);
            receivers.push(rx);
            while writers.send(conn, Outbound::Text(bytes::Bytes::from_static(b"{}"))).is_ok() {}
            // The client went while its writer was full.
            writers.remove(conn);
        }
        assert!(writers.take_writable().is_empty());
        assert!(writers.blocked.is_empty(), "{} blocked writers of gone clients kept", writers.blocked.len());

        let (tx, mut rx) = outbox(8);
        writers.add(ConnId(7), ROOM, tx);
        while writers.send(ConnId(7), Outbound::Text(bytes::Bytes::from_static(b"{}"))).is_ok() {}
        assert!(writers.take_writable().is_empty(), "still full");
        while rx.try_recv().is_ok() {}
        assert_eq!(writers.take_writable(), vec![ConnId(7)]);
        assert!(writers.take_writable().is_empty() && writers.blocked.is_empty());
        drop(receivers);
        assert_eq!(writers.logs.len(), 1, "the room of the one connection left keeps its log");
        writers.remove(ConnId(7));
        assert!(writers.logs.is_empty(), "a room without connections keeps no log");
    }

    /// The node hands a turn's follows over before its log outputs: a
    /// writer may follow from an entry not appended yet, skips what came
    /// before it, and takes a message for its member alone at its place.
    #[test]
    fn a_follow_handed_before_its_turns_entries_reads_from_its_place() {
        let mut config = room_push::NodeConfig::default();
        config.delivery = room_push::Delivery::Log;
        let mut node = room_push::PushNode::new(config);
        let spec = room_push::ConnSpec::new(ROOM, room_core::Uin(1), Role::Student, Terminal::Web);
        let mine = node.connect(spec).expect("connects").conn;
        let other = node.connect(room_push::ConnSpec { uin: room_core::Uin(2), ..spec }).expect("connects").conn;
        let mut writers = Writers::default();
        let (tx, mut rx) = outbox(8);
        writers.add(mine, ROOM, tx);
        let (tx, _other_rx) = outbox(8);
        writers.add(other, ROOM, tx);
        let (from, follower) = node.follow(other).expect("known");
        writers.follow(other, ROOM, from, follower);
        let say = |node: &mut room_push::PushNode, seq: u64, target: Target| {
            let message = room_push::Message::new(ROOM, Class::Teacher, Kind(2), vec![1]).to(target);
            let env = room_push::Envelope { epoch: 7, seq, accepted_at: Timestamp::ZERO, message };
            node.handle_envelope(Timestamp::ZERO, &env).expect("handled");
        };
        // One turn: a message for the room, the entry (the follow), a
        // message for the new member alone and one for the room.
        say(&mut node, 1, Target::room());
        let (from, follower) = node.follow(mine).expect("known");
        say(&mut node, 2, Target::user(room_core::Uin(1)));
        say(&mut node, 3, Target::room());
        writers.follow(mine, ROOM, from, follower);
        assert_eq!(rx.try_recv().err(), Some(outbox::TryRecvError::Empty), "its place is not in the log yet");
        let mut outputs = 0;
        while let Some(out) = node.poll_log() {
            outputs += 1;
            match out {
                room_push::LogOutput::Append { room, pos, entry } => writers.append(room, pos, &entry),
                room_push::LogOutput::Direct { conn, entry } => writers.direct(conn, &entry),
                other => panic!("unexpected {other:?}"),
            }
        }
        assert_eq!(outputs, 3);
        let mut got = Vec::new();
        while let Ok(Outbound::Push { header, .. }) = rx.try_recv() {
            got.push((header.seq, header.prev));
        }
        assert_eq!(got, vec![(2, 1), (3, 2)]);
    }
}
