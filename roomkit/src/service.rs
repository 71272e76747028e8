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

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures::StreamExt;
use parking_lot::Mutex;
use room_core::{ConnId, MemberKey, NodeId, Role, RoomKey, Terminal, Timestamp};
use room_push::SendError;
pub use room_service::peer::CloseReason;
use room_service::transport::{Transports, run_cache};
pub use room_service::{Admission, FrameError, NodeStats, Outbound, RoomNodeConfig};
use room_service::{ClientSink, Output, RoomNode};
use std::collections::{HashMap, HashSet};
use tokio::sync::{Notify, mpsc};
use tokio::task::JoinHandle;

use crate::ticket::{KeyRing, TicketError};

/// How the service runs.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ServiceConfig {
    /// Keys that verify entry tickets.
    pub keys: KeyRing,
    /// The node: its id, heartbeats, limits, windows (see [`RoomNodeConfig`]).
    pub node: RoomNodeConfig,
    /// Frames queued per connection between the service and the host's
    /// writer; when full, push frames wait in the node (chat is shed first).
    pub outbound: usize,
}

impl ServiceConfig {
    /// Defaults around `keys`: node 1, 20 s heartbeats, 3 misses.
    pub fn new(keys: KeyRing) -> Self {
        ServiceConfig { keys, node: RoomNodeConfig::new(NodeId(1)), outbound: 512 }
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
    pub outbound: mpsc::Receiver<Outbound>,
}

/// Unix time in microseconds: every node of a cluster stamps with it, so
/// sequence epochs and deadlines mean the same on every node.
fn now() -> Timestamp {
    Timestamp::from_micros(SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_micros() as u64))
}

fn unix_secs() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// The writers of this node's connections.
#[derive(Default)]
struct Writers {
    channels: HashMap<ConnId, mpsc::Sender<Outbound>>,
    blocked: HashSet<ConnId>,
}

impl ClientSink for Writers {
    fn send(&mut self, conn: ConnId, frame: Outbound) -> Result<(), SendError> {
        let Some(tx) = self.channels.get(&conn) else { return Err(SendError::Closed) };
        match tx.try_send(frame) {
            Ok(()) => Ok(()),
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.blocked.insert(conn);
                Err(SendError::WouldBlock)
            }
            Err(mpsc::error::TrySendError::Closed(_)) => Err(SendError::Closed),
        }
    }

    fn close(&mut self, conn: ConnId, reason: CloseReason) {
        if let Some(tx) = self.channels.remove(&conn) {
            // The stream ends when the sender goes; the close frame says why
            // if the writer has room for it.
            let _ = tx.try_send(Outbound::Close(reason));
        }
        self.blocked.remove(&conn);
    }
}

struct Inner {
    keys: KeyRing,
    outbound: usize,
    core: Mutex<RoomNode>,
    writers: Mutex<Writers>,
    transports: Mutex<Option<Transports>>,
    outputs: mpsc::UnboundedSender<Output>,
    wake: Notify,
    /// When the timer task will wake next (Unix micros): an input that
    /// brings the node's next timeout earlier wakes it.
    armed: AtomicU64,
    tasks: Mutex<Vec<JoinHandle<()>>>,
}

/// The room service. Cheap to clone; every clone is the same service.
#[derive(Clone)]
pub struct RoomService {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for RoomService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RoomService").field("node", &self.id()).finish_non_exhaustive()
    }
}

/// Counts an event through the `metrics` facade (feature `metrics`).
macro_rules! count {
    ($name:literal) => {
        #[cfg(feature = "metrics")]
        metrics::counter!($name).increment(1);
    };
}

impl RoomService {
    /// Starts a cluster of one, in this process's memory: what the
    /// quickstart runs. Needs a tokio runtime.
    pub async fn start(config: ServiceConfig) -> Result<RoomService, StartError> {
        let node = config.node.node;
        Self::start_with(config, Transports::in_memory(node)).await
    }

    /// Starts a node over `transports` (a cluster's engines, or in-memory
    /// ones shared by several nodes of one process). Needs a tokio runtime.
    pub async fn start_with(mut config: ServiceConfig, transports: Transports) -> Result<RoomService, StartError> {
        if config.node.incarnation == 0 {
            config.node.incarnation = now().as_micros();
        }
        let me = config.node.node;
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
        let inner = Arc::new(Inner {
            keys: config.keys,
            outbound: config.outbound.max(8),
            core: Mutex::new(core),
            writers: Mutex::new(Writers::default()),
            transports: Mutex::new(Some(transports.clone())),
            outputs: tx,
            wake: Notify::new(),
            armed: AtomicU64::new(0),
            tasks: Mutex::new(Vec::new()),
        });
        let service = RoomService { inner };
        let tasks = vec![
            tokio::spawn(service.clone().carry_out(rx, transports.clone())),
            tokio::spawn(service.clone().follow_views(views)),
            tokio::spawn(service.clone().deliver_bus(bus_in)),
            tokio::spawn(service.clone().deliver_peers(peers_in)),
            tokio::spawn(service.clone().timers()),
        ];
        service.inner.tasks.lock().extend(tasks);
        tracing::info!(node = %me, "room service started");
        Ok(service)
    }

    /// This node.
    pub fn id(&self) -> NodeId {
        self.inner.core.lock().id()
    }

    /// Counters.
    pub fn stats(&self) -> NodeStats {
        self.inner.core.lock().stats()
    }

    /// The nodes this node routes to.
    pub fn view(&self) -> Vec<NodeId> {
        self.inner.core.lock().view()
    }

    /// Reads the node's state (tests, health endpoints).
    pub fn inspect<T>(&self, f: impl FnOnce(&RoomNode) -> T) -> T {
        f(&self.inner.core.lock())
    }

    /// Runs `f` on the node and carries out what it asks for.
    fn with_core<T>(&self, f: impl FnOnce(&mut RoomNode, Timestamp) -> T) -> T {
        let mut core = self.inner.core.lock();
        let t = now();
        let result = f(&mut core, t);
        self.pump(&mut core, t);
        result
    }

    /// Hands the node's outputs to the I/O task and its frames to the
    /// connections' writers.
    fn pump(&self, core: &mut RoomNode, t: Timestamp) {
        while let Some(output) = core.poll_output() {
            let _ = self.inner.outputs.send(output);
        }
        core.flush(t, &mut *self.inner.writers.lock());
        if core.poll_timeout().is_some_and(|at| at.as_micros() < self.inner.armed.load(Ordering::Relaxed)) {
            self.inner.wake.notify_one();
        }
    }

    /// Lets `ticket` into `room`: verified here, then admitted by the
    /// room's owner. See [`Connection`].
    pub fn connect(&self, room: RoomKey, ticket: &str) -> Result<Connection, EntryError> {
        let ticket = match self.inner.keys.verify(ticket, room, unix_secs()) {
            Ok(t) => t,
            Err(e) => {
                count!("roomkit_entries_refused_total");
                tracing::info!(%room, error = %e, "entry refused");
                return Err(e.into());
            }
        };
        let (tx, rx) = mpsc::channel(self.inner.outbound);
        let who = Admission { room, uin: ticket.uin, role: ticket.role, terminal: ticket.terminal };
        let mut core = self.inner.core.lock();
        let t = now();
        let conn = core.connect(t, who)?;
        // The writer is in place before anything can be flushed to it.
        self.inner.writers.lock().channels.insert(conn, tx);
        self.pump(&mut core, t);
        drop(core);
        count!("roomkit_entries_total");
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
        self.with_core(|core, t| core.handle_text(t, conn, text))
    }

    /// One parsed message from the client (hosts with their own codec).
    pub fn handle(&self, conn: ConnId, msg: room_service::wire::ClientMsg) -> Result<(), FrameError> {
        self.with_core(|core, t| core.handle_client(t, conn, msg))
    }

    /// The client closed.
    pub fn disconnect(&self, conn: ConnId) {
        self.inner.writers.lock().channels.remove(&conn);
        self.with_core(|core, t| core.disconnect(t, conn));
    }

    /// Runs the node's due timers now (tests, or hosts with their own loop).
    pub fn tick(&self) {
        self.with_core(|core, t| core.handle_timeout(t));
    }

    /// Stops the service as a crash would: no goodbye to the cluster, every
    /// connection dropped, every task stopped, its transports let go.
    pub fn kill(&self) {
        for task in self.inner.tasks.lock().drain(..) {
            task.abort();
        }
        self.inner.transports.lock().take();
        let mut writers = self.inner.writers.lock();
        writers.channels.clear();
        writers.blocked.clear();
        tracing::warn!(node = %self.id(), "room service killed");
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
                        tracing::debug!(error = %e, %to, "peer message not sent");
                    }
                }
                Output::Publish(env) => {
                    if let Err(e) = transports.bus.publish(&env).await {
                        tracing::warn!(error = %e, "not published");
                    }
                }
                Output::Interest { room, on } => {
                    let mut delay = Duration::from_millis(20);
                    for _ in 0..8 {
                        match transports.bus.set_interest(me, room, on).await {
                            Ok(()) => break,
                            Err(e) => {
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
                        let answer = run_cache(cache.as_ref(), op).await;
                        service.with_core(|core, t| core.handle_cache(t, id, answer));
                    });
                }
                Output::Limit { id, key, quota, cost } => {
                    let limiter = transports.limiter.clone();
                    let service = self.clone();
                    tokio::spawn(async move {
                        let answer = limiter.check(&key, quota, now(), cost).await;
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
            self.with_core(|core, t| core.handle_envelope(t, env));
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

    /// Runs the node's timers at its wake-ups, and lets writers that had
    /// filled up take frames again.
    async fn timers(self) {
        loop {
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
            let writable: Vec<ConnId> = {
                let mut w = self.inner.writers.lock();
                let ready: Vec<ConnId> = w
                    .blocked
                    .iter()
                    .filter(|c| w.channels.get(c).is_some_and(|tx| tx.capacity() > 0))
                    .copied()
                    .collect();
                for c in &ready {
                    w.blocked.remove(c);
                }
                ready
            };
            self.with_core(|core, t| {
                for conn in writable {
                    core.set_writable(conn);
                }
                if core.poll_timeout().is_some_and(|at| at <= t) {
                    core.handle_timeout(t);
                }
            });
        }
    }
}
