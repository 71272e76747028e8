//! One Roomkit node of a cluster, over NATS and Redis: what
//! `examples/cluster` runs three of, and what the failover tests kill.
//!
//! Each node is at once:
//!
//! * an **access and push node**: it holds client connections (websockets,
//!   or in-process [`ClientConn`]s), subscribes to the bus for the rooms it
//!   has connections in, and refills bus gaps from the shared cache;
//! * a **heartbeat server** for the sessions the router gives it
//!   (`router.route(member)`): beats reach it from the member's access node
//!   over its `beats` mailbox. When the view changes, it releases the
//!   sessions it no longer owns, and the new owner adopts them on their
//!   next beat without a second *entered*;
//! * a **member-list replica** (room-memberlist over room-nats);
//! * the **gate** of the rooms the router gives it (`router.route(room)`):
//!   it numbers their reliable messages, appends each to the shared cache
//!   before publishing it, and after an owner change resumes the room's
//!   sequence from the cache's head, so clients see no restart. The
//!   cache's append is the fence: a number another owner already took is
//!   refused, and the room is renumbered from the new head
//!   ([`room_push::FencedGate`]).
//!
//! The router is rebuilt from the node registry on JetStream KV.
//!
//! Left out here (single-node [`roomkit::service::RoomService`] has them):
//! sub-classes, hands, cards, packets and reactions.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use std::net::SocketAddr;

use axum::extract::ws::{Message as WsMessage, WebSocket, WebSocketUpgrade};
use axum::extract::{Query, State};
use axum::response::Response;
use bytes::Bytes;
use futures::StreamExt;
use parking_lot::{Mutex, RwLock};
use room_core::{MemberKey, NodeId, Role, RoomKey, Router, RouterConfig, Terminal, Timestamp, Uin};
use room_heartbeat::tracker::{
    BeatOutcome, ConnId as BeatConn, LeaveOutcome, SessionHint, Timing, Tracker, TrackerConfig,
};
use room_heartbeat::{NoAnswer, ProbeAnswer, ReverseCheck, ReverseCheckConfig};
use room_memberlist::{MemberStore, Replica, ReplicaConfig, StoreError, WriteOp};
use room_nats::{Connection, Mailbox, NatsBus, NatsConfig, NodeRecord, Registry, RegistryConfig};
use room_push::{
    AckReply, Bus, CheckAnswer, Class, ConnId, ConnSpec, Connector, Decision, Envelope, FenceOutput, FencedGate, Frame,
    GateConfig, GlobalLimiter, KeyedLimiter, Message, NodeConfig, NodeEvent, PushNode, Quota, SendError, Sender,
    SharedCache,
};
use room_redis::{RedisCache, RedisCacheConfig, RedisLimiter, RedisLimiterConfig};
use roomkit::service::Outbound;
use roomkit::ticket::KeyRing;
use roomkit::wire::{ClientMsg, JsonCodec, kinds, text_payload};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// How one node runs.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ClusterConfig {
    /// This node.
    pub node: NodeId,
    /// Its relative capacity.
    pub weight: u32,
    /// Where NATS is.
    pub nats: NatsConfig,
    /// Where Redis is (`redis://host:port`).
    pub redis_url: String,
    /// The registry's bucket and timing.
    pub registry: RegistryConfig,
    /// How often clients beat (the timeout is `misses` of them).
    pub heartbeat: Duration,
    /// Beats missed before a session is suspected.
    pub misses: u32,
    /// Owners per room's member list.
    pub replicas: usize,
    /// Ticket keys (the same on every node).
    pub keys: KeyRing,
    /// The address clients reach this node at (advertised in the registry).
    pub addr: String,
    /// How long a bus gap may wait for the shared cache.
    pub refill_timeout: Duration,
    /// Reliable messages each push node keeps per room for checks.
    pub cache_len: usize,
    /// Chat lines per business and second over the whole cluster (checked
    /// in Redis, one round trip a line).
    pub business_chat: Quota,
}

impl ClusterConfig {
    /// Defaults for node `node`: 20 s heartbeats, 3 misses, 3 replicas.
    pub fn new(node: NodeId, nats_url: &str, redis_url: &str, keys: KeyRing) -> Self {
        ClusterConfig {
            node,
            weight: 100,
            nats: NatsConfig::new(nats_url),
            redis_url: redis_url.to_owned(),
            registry: RegistryConfig::new(),
            heartbeat: Duration::from_secs(20),
            misses: 3,
            replicas: 3,
            keys,
            addr: String::new(),
            refill_timeout: Duration::from_millis(200),
            cache_len: 4096,
            business_chat: Quota::per_second(10_000).expect("a valid quota"),
        }
    }
}

/// Why a node could not start or a client was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClusterError {
    /// NATS refused the settings.
    #[error(transparent)]
    Nats(#[from] room_nats::NatsError),
    /// The registry refused the settings.
    #[error(transparent)]
    Registry(#[from] room_nats::RegistryError),
    /// A mailbox could not be opened.
    #[error(transparent)]
    Mailbox(#[from] room_nats::MailboxError),
    /// The Redis cache refused the settings.
    #[error(transparent)]
    Redis(#[from] room_redis::RedisCacheError),
    /// The bus could not subscribe.
    #[error(transparent)]
    Bus(#[from] room_push::BusError),
    /// A NATS subscription was refused (the client is closed).
    #[error("cannot subscribe to {subject}: {reason}")]
    Subscribe {
        /// The subject.
        subject: String,
        /// NATS's error.
        reason: String,
    },
    /// A setting out of range.
    #[error("invalid setting: {0}")]
    Config(String),
    /// A ticket that does not let its holder in.
    #[error(transparent)]
    Ticket(#[from] roomkit::ticket::TicketError),
    /// The push node refused the connection.
    #[error("connection refused: {0}")]
    Refused(String),
    /// No such connection (closed, or never opened).
    #[error("unknown connection")]
    UnknownConnection,
    /// The client may not do that (a learner speaking as a teacher).
    #[error("not allowed for a {0}")]
    NotAllowed(Role),
    /// A frame that is not part of the cluster protocol.
    #[error("bad frame: {0}")]
    BadFrame(String),
    /// The client sends faster than its quota.
    #[error("rate limited: retry after {retry_after:?}")]
    RateLimited {
        /// When a message would be accepted.
        retry_after: Duration,
    },
}

/// A client connected to this node.
#[derive(Debug)]
pub struct ClientConn {
    /// The connection.
    pub id: ConnId,
    /// Who.
    pub member: MemberKey,
    /// The room's sequence epoch at this node when the client connected.
    pub epoch: u64,
    /// The room's newest reliable number at this node then.
    pub head: u64,
    /// Frames for the client, in order.
    pub outbound: mpsc::Receiver<Outbound>,
}

/// Counters of one node.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ClusterStats {
    /// Connections held here.
    pub connections: usize,
    /// Heartbeat sessions owned here.
    pub sessions: usize,
    /// Sessions taken over from another owner without an *entered*.
    pub adopted: u64,
    /// Sessions ended here because their client stopped beating and its
    /// access node confirmed the connection gone.
    pub timed_out: u64,
    /// Sessions ended by their client leaving.
    pub left: u64,
    /// Reliable messages numbered by this node's gate.
    pub numbered: u64,
    /// Times the gate found a number taken by another owner and renumbered.
    pub renumbered: u64,
    /// Envelopes the bus lost that were refilled from the shared cache.
    pub refilled: u64,
    /// Mailbox messages that were not decodable (dropped).
    pub garbage: u64,
    /// Chat lines refused by the cluster-wide business quota.
    pub chat_limited: u64,
    /// Whether the shared cache and the global limiter reach Redis.
    pub redis_up: bool,
    /// Times the NATS client reconnected.
    pub nats_reconnects: u64,
    /// Reliable messages a check got from the shared cache because this
    /// node's own cache did not hold them.
    pub recovered_from_shared: u64,
}

#[derive(Debug, Default)]
struct Counters {
    adopted: AtomicU64,
    timed_out: AtomicU64,
    left: AtomicU64,
    numbered: AtomicU64,
    renumbered: AtomicU64,
    refilled: AtomicU64,
    garbage: AtomicU64,
    chat_limited: AtomicU64,
    requests: AtomicU64,
    recovered_shared: AtomicU64,
}

/// Access node -> heartbeat owner.
#[derive(Debug, Clone, Serialize, Deserialize)]
enum BeatMsg {
    Join { member: MemberKey, role: Role, terminal: Terminal, conn: u64 },
    Beat { member: MemberKey, role: Role, terminal: Terminal, conn: u64 },
    Leave { member: MemberKey, terminal: Terminal, conn: u64 },
}

/// Access node -> room owner: something to number and publish.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct GateReq {
    /// The asking node and its request number: a retried request is
    /// recognised and numbered once.
    from: NodeId,
    id: u64,
    room: RoomKey,
    uin: Uin,
    role: Role,
    teacher: bool,
    text: String,
}

/// A member-list write for a room this node does not own.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct WriteReq {
    room: RoomKey,
    ops: Vec<WriteOp>,
}

#[derive(Debug)]
enum GateCmd {
    /// Number and publish; answer on `reply` once done (a forwarded
    /// request); `attempt` counts forwards that got no answer.
    Publish {
        req: GateReq,
        reply: Option<async_nats::Subject>,
        attempt: u32,
    },
    ViewChanged,
}

/// Forwards to a room owner that do not get an answer in this long are sent
/// again (to the owner of the view by then).
const GATE_FORWARD_TIMEOUT: Duration = Duration::from_millis(300);
/// ... at most this many times (covers a registry ttl of several seconds).
const GATE_FORWARD_ATTEMPTS: u32 = 30;

#[derive(Debug)]
struct ConnEntry {
    member: MemberKey,
    role: Role,
    terminal: Terminal,
    tx: mpsc::Sender<Outbound>,
}

#[derive(Debug)]
struct Access {
    push: PushNode,
    conns: HashMap<ConnId, ConnEntry>,
    rooms: HashSet<RoomKey>,
}

struct Channels<'a> {
    conns: &'a mut HashMap<ConnId, ConnEntry>,
}

impl Connector for Channels<'_> {
    fn send(&mut self, frame: &Frame<'_>) -> Result<(), SendError> {
        let Some(entry) = self.conns.get_mut(&frame.conn) else { return Err(SendError::Closed) };
        match entry.tx.try_send(Outbound::Push { header: frame.header, body: frame.body.clone() }) {
            Ok(()) => Ok(()),
            Err(mpsc::error::TrySendError::Full(_)) => Err(SendError::WouldBlock),
            Err(mpsc::error::TrySendError::Closed(_)) => Err(SendError::Closed),
        }
    }
}

struct Shared {
    me: NodeId,
    config: ClusterConfig,
    nats: Connection,
    bus: NatsBus,
    cache: RedisCache,
    limiter: RedisLimiter,
    registry: Mutex<Option<Registry>>,
    router: RwLock<Router>,
    replica: Arc<Replica>,
    beats: Mailbox,
    writes: Mailbox,
    access: Mutex<Access>,
    presence: Mutex<Tracker>,
    reverse: Mutex<ReverseCheck>,
    gate_tx: mpsc::UnboundedSender<GateCmd>,
    interest_tx: mpsc::UnboundedSender<RoomKey>,
    /// Per member, before anything is forwarded to a room's owner: a flood
    /// from one client cannot pile up requests (and their retries) here.
    senders: Mutex<KeyedLimiter<MemberKey>>,
    counters: Counters,
    tasks: Mutex<Vec<JoinHandle<()>>>,
}

/// Unix time: every node stamps with it, so sequence epochs opened by
/// different owners still grow.
fn now() -> Timestamp {
    Timestamp::from_micros(SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_micros() as u64))
}

fn global_conn(node: NodeId, conn: ConnId) -> u64 {
    (node.0 << 40) | (conn.0 & ((1 << 40) - 1))
}

/// A running node. Cheap to clone.
#[derive(Clone)]
pub struct ClusterNode {
    s: Arc<Shared>,
}

impl std::fmt::Debug for ClusterNode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterNode").field("node", &self.s.me).finish_non_exhaustive()
    }
}

impl ClusterNode {
    /// Starts a node: connects to NATS and Redis (neither needs to be up
    /// yet), registers, and starts its loops. Needs a tokio runtime.
    pub async fn start(config: ClusterConfig) -> Result<ClusterNode, ClusterError> {
        if config.heartbeat.is_zero() || config.misses == 0 || config.replicas == 0 {
            return Err(ClusterError::Config("heartbeat, misses and replicas must be above zero".into()));
        }
        let me = config.node;
        let mut nats_config = config.nats.clone();
        nats_config.name = format!("roomkit-node-{}", me.0);
        let nats = room_nats::connect(&nats_config).await?;
        let bus = NatsBus::new(nats.clone(), 8192);
        let mut cache_config = RedisCacheConfig::new(config.redis_url.clone());
        cache_config.max_len = config.cache_len;
        let cache = RedisCache::new(cache_config)?;
        let mut limiter_config = RedisLimiterConfig::new(config.redis_url.clone());
        limiter_config.expected_nodes = 3;
        let limiter = RedisLimiter::new(limiter_config).map_err(|e| ClusterError::Config(e.to_string()))?;
        let mut tracker_config = TrackerConfig::default();
        tracker_config.tick = (config.heartbeat / 10).max(Duration::from_millis(10));
        tracker_config.max_timeout = tracker_config.tick * 1_000;
        tracker_config.default_timing =
            Timing::new(config.heartbeat, config.misses).map_err(|e| ClusterError::Config(e.to_string()))?;
        let tracker = Tracker::new(tracker_config).map_err(|e| ClusterError::Config(e.to_string()))?;
        let mut reverse_config = ReverseCheckConfig::default();
        reverse_config.on_no_answer = NoAnswer::AssumeAlive;
        reverse_config.answer_timeout = Duration::from_secs(1);
        let reverse = ReverseCheck::new(reverse_config).map_err(|e| ClusterError::Config(e.to_string()))?;
        let mut node_config = NodeConfig::default();
        node_config.cache_len = config.cache_len;
        let push = PushNode::with_codecs(node_config, vec![Arc::new(JsonCodec)]);
        let mut replica_config = ReplicaConfig::new(me);
        replica_config.replicas = config.replicas;
        replica_config.anti_entropy_interval = config.registry.interval;
        let replica = Arc::new(Replica::new(replica_config));
        let (gate_tx, gate_rx) = mpsc::unbounded_channel();
        let (interest_tx, interest_rx) = mpsc::unbounded_channel();
        let record =
            NodeRecord { node: me, weight: config.weight, addr: config.addr.clone(), incarnation: now().as_micros() };
        let registry = Registry::join(nats.clone(), config.registry.clone(), record)?;
        let views = registry.changes();
        let s = Arc::new(Shared {
            me,
            beats: Mailbox::new(nats.clone(), me, "beats")?,
            writes: Mailbox::new(nats.clone(), me, "writes")?,
            router: RwLock::new(Router::new(RouterConfig::new())),
            registry: Mutex::new(Some(registry)),
            access: Mutex::new(Access { push, conns: HashMap::new(), rooms: HashSet::new() }),
            presence: Mutex::new(tracker),
            reverse: Mutex::new(reverse),
            senders: Mutex::new(KeyedLimiter::new(1 << 20)),
            counters: Counters::default(),
            tasks: Mutex::new(Vec::new()),
            replica: replica.clone(),
            config,
            nats,
            bus,
            cache,
            limiter,
            gate_tx,
            interest_tx,
        });
        let members = Mailbox::new(s.nats.clone(), me, "members")?;
        let deliveries = s.bus.subscribe(me).await?;
        let beats = s.beats.inbox().await?;
        let gates = subscribe(&s.nats, gate_subject(s.nats.prefix(), me)).await?;
        let writes = s.writes.inbox().await?;
        let probes = subscribe(&s.nats, probe_subject(s.nats.prefix(), me)).await?;
        let tasks = vec![
            tokio::spawn(follow_views(s.clone(), views.clone())),
            tokio::spawn(async move {
                if let Err(e) = room_nats::replicate(replica, members, views, None).await {
                    tracing::error!(error = %e, "replication stopped");
                }
            }),
            tokio::spawn(deliver(s.clone(), deliveries)),
            tokio::spawn(take_beats(s.clone(), beats)),
            tokio::spawn(take_gate_requests(s.clone(), gates)),
            tokio::spawn(take_writes(s.clone(), writes)),
            tokio::spawn(answer_probes(s.clone(), probes)),
            tokio::spawn(run_gate(s.clone(), gate_rx)),
            tokio::spawn(keep_interest(s.clone(), interest_rx)),
            tokio::spawn(timers(s.clone())),
        ];
        s.tasks.lock().extend(tasks);
        tracing::info!(node = %me, "node started");
        Ok(ClusterNode { s })
    }

    /// This node.
    pub fn id(&self) -> NodeId {
        self.s.me
    }

    /// The nodes this node routes to now.
    pub fn view(&self) -> Vec<NodeId> {
        self.s.router.read().nodes().map(|(n, _)| n).collect()
    }

    /// The node whose gate numbers `room`'s messages, in this node's view.
    pub fn room_owner(&self, room: RoomKey) -> Option<NodeId> {
        owner_of(&self.s, &room)
    }

    /// This node's member-list replica.
    pub fn members(&self) -> &Replica {
        &self.s.replica
    }

    /// Whether this node's heartbeat tracker holds `member`'s session.
    pub fn owns_session(&self, member: &MemberKey) -> bool {
        self.s.presence.lock().is_present(member)
    }

    /// Counters.
    pub fn stats(&self) -> ClusterStats {
        let c = &self.s.counters;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        ClusterStats {
            connections: self.s.access.lock().conns.len(),
            sessions: self.s.presence.lock().len(),
            adopted: get(&c.adopted),
            timed_out: get(&c.timed_out),
            left: get(&c.left),
            numbered: get(&c.numbered),
            renumbered: get(&c.renumbered),
            refilled: get(&c.refilled),
            garbage: get(&c.garbage) + self.s.beats.garbage() + self.s.writes.garbage() + self.s.bus.garbage(),
            chat_limited: get(&c.chat_limited),
            nats_reconnects: self.s.nats.reconnects(),
            recovered_from_shared: get(&c.recovered_shared),
            redis_up: self.s.cache.health() == room_redis::Health::Up
                && self.s.limiter.health() == room_redis::Health::Up,
        }
    }

    /// Stops the node as a crash would: no goodbye to the registry, every
    /// connection dropped, every loop stopped.
    pub fn kill(&self) {
        for t in self.s.tasks.lock().drain(..) {
            t.abort();
        }
        drop(self.s.registry.lock().take());
        let mut a = self.s.access.lock();
        a.conns.clear();
        a.rooms.clear();
        tracing::warn!(node = %self.s.me, "node killed");
    }

    /// Lets `ticket` into `room` on this node.
    pub fn connect(&self, room: RoomKey, ticket: &str) -> Result<ClientConn, ClusterError> {
        let unix = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        let t = self.s.config.keys.verify(ticket, room, unix)?;
        let member = room.member(t.uin);
        let (tx, outbound) = mpsc::channel(1024);
        let connected = {
            let mut a = self.s.access.lock();
            let connected = a
                .push
                .connect(ConnSpec::new(room, t.uin, t.role, t.terminal))
                .map_err(|e| ClusterError::Refused(e.to_string()))?;
            a.conns.insert(connected.conn, ConnEntry { member, role: t.role, terminal: t.terminal, tx: tx.clone() });
            if a.rooms.insert(room) {
                let _ = self.s.interest_tx.send(room);
            }
            connected
        };
        let welcome = format!(
            "{{\"t\":\"welcome\",\"uin\":{},\"role\":\"{}\",\"terminal\":\"{}\",\"epoch\":{},\"head\":{},\"subclass\":null,\"heartbeat_ms\":{},\"muted\":false,\"node\":{}}}",
            t.uin.0,
            t.role,
            t.terminal,
            connected.epoch,
            connected.head,
            self.s.config.heartbeat.as_millis(),
            self.s.me.0
        );
        let _ = tx.try_send(Outbound::Text(Bytes::from(welcome)));
        let conn = global_conn(self.s.me, connected.conn);
        send_beat(&self.s, BeatMsg::Join { member, role: t.role, terminal: t.terminal, conn });
        Ok(ClientConn { id: connected.conn, member, epoch: connected.epoch, head: connected.head, outbound })
    }

    /// Charges `member` one message against its quota (teachers speak at
    /// most 20 a second, learners chat at the gate's per-user quota).
    fn charge(&self, member: MemberKey, role: Role) -> Result<(), ClusterError> {
        let quota = if role.is_staff() {
            Quota::per_second(20).and_then(|q| q.with_burst(20)).unwrap_or(GateConfig::default().user_quota)
        } else {
            GateConfig::default().user_quota
        };
        match self.s.senders.lock().check(member, quota, now(), 1) {
            Ok(Decision::Allowed) => Ok(()),
            Ok(Decision::Limited { retry_after }) => Err(ClusterError::RateLimited { retry_after }),
            // The limiter is full of other keys: refuse rather than grow.
            Ok(_) | Err(_) => Err(ClusterError::RateLimited { retry_after: Duration::from_secs(1) }),
        }
    }

    fn entry(&self, conn: ConnId) -> Result<(MemberKey, Role, Terminal), ClusterError> {
        let a = self.s.access.lock();
        let e = a.conns.get(&conn).ok_or(ClusterError::UnknownConnection)?;
        Ok((e.member, e.role, e.terminal))
    }

    /// A heartbeat from the client.
    pub fn beat(&self, conn: ConnId) -> Result<(), ClusterError> {
        let (member, role, terminal) = self.entry(conn)?;
        send_beat(&self.s, BeatMsg::Beat { member, role, terminal, conn: global_conn(self.s.me, conn) });
        Ok(())
    }

    /// The teacher (or an assistant) says something to the room: reliable.
    pub fn say(&self, conn: ConnId, text: &str) -> Result<(), ClusterError> {
        self.send_to_gate(conn, text, true)
    }

    /// A chat line to the room.
    pub fn chat(&self, conn: ConnId, text: &str) -> Result<(), ClusterError> {
        self.send_to_gate(conn, text, false)
    }

    /// Charges the sender, then hands the message to this node's gate task,
    /// which numbers it here or forwards it to the room's owner.
    fn send_to_gate(&self, conn: ConnId, text: &str, teacher: bool) -> Result<(), ClusterError> {
        let (member, role, _) = self.entry(conn)?;
        if teacher && !role.is_staff() {
            return Err(ClusterError::NotAllowed(role));
        }
        self.charge(member, role)?;
        let id = self.s.counters.requests.fetch_add(1, Ordering::Relaxed);
        let req = GateReq {
            from: self.s.me,
            id,
            room: member.room_key(),
            uin: member.uin,
            role,
            teacher,
            text: text.to_owned(),
        };
        let _ = self.s.gate_tx.send(GateCmd::Publish { req, reply: None, attempt: 0 });
        Ok(())
    }

    /// The client acknowledges its contiguous reliable number.
    pub fn ack(&self, conn: ConnId, epoch: u64, seq: u64) -> Result<AckReply, ClusterError> {
        let mut a = self.s.access.lock();
        a.push.handle_ack(conn, epoch, seq).map_err(|_| ClusterError::UnknownConnection)
    }

    /// The client asks for reliable messages after `after` (after a gap,
    /// or after reconnecting here from a node that died). This node's own
    /// cache answers first; what it no longer (or never) held, because
    /// this node restarted or has just joined the room, comes from the
    /// shared cache, so a restart loses nothing inside the cache's window.
    /// Only what neither holds is answered by a reset.
    pub async fn check(&self, conn: ConnId, epoch: u64, after: u64) -> Result<CheckAnswer, ClusterError> {
        let local = {
            let mut a = self.s.access.lock();
            a.push.handle_check(now(), conn, epoch, after)
        };
        let fallback = match local {
            Ok(CheckAnswer::Reset { epoch: e, head }) => CheckAnswer::Reset { epoch: e, head },
            Ok(answer) => return Ok(answer),
            Err(room_push::NodeError::CheckFromFuture { last, .. }) => {
                let e = self.s.access.lock().push.reliable_head(self.entry(conn)?.0.room_key()).map_or(0, |h| h.0);
                CheckAnswer::Reset { epoch: e, head: last }
            }
            Err(_) => return Err(ClusterError::UnknownConnection),
        };
        let (member, role, terminal) = self.entry(conn)?;
        let room = member.room_key();
        let Ok(Some((head_epoch, head))) = self.s.cache.head(room).await else { return Ok(fallback) };
        if head_epoch != epoch || head <= after {
            return Ok(fallback);
        }
        let found = match tokio::time::timeout(
            self.s.config.refill_timeout,
            self.s.cache.range(room, epoch, after, head),
        )
        .await
        {
            Ok(Ok(found)) if found.first().is_some_and(|e| e.seq == after + 1) => found,
            _ => return Ok(fallback),
        };
        let mut frames = Vec::new();
        let mut prev = after;
        for env in &found {
            if !env.message.target.matches(member.uin, role, terminal, None) {
                continue;
            }
            frames.push(room_push::RecoveredFrame {
                header: room_push::FrameHeader {
                    kind: room_push::FrameKind::Message,
                    class: env.message.class,
                    epoch,
                    seq: env.seq,
                    prev,
                },
                kind: env.message.kind,
                body: room_push::Codec::encode_message(&JsonCodec, env),
            });
            prev = env.seq;
        }
        let upto = found.last().map_or(after, |e| e.seq);
        self.s.counters.recovered_shared.fetch_add(frames.len() as u64, Ordering::Relaxed);
        Ok(CheckAnswer::Messages { epoch, upto, frames })
    }

    /// The client closed.
    pub fn disconnect(&self, conn: ConnId) {
        let removed = {
            let mut a = self.s.access.lock();
            let _ = a.push.disconnect(now(), conn);
            a.conns.remove(&conn)
        };
        if let Some(e) = removed {
            send_beat(
                &self.s,
                BeatMsg::Leave { member: e.member, terminal: e.terminal, conn: global_conn(self.s.me, conn) },
            );
        }
    }

    /// One JSON text frame from a websocket client (the classroom protocol's
    /// `beat`, `say`, `chat`, `ack` and `check`). Refusals are answered
    /// with an error frame.
    pub async fn handle_text(&self, conn: ConnId, text: &str) -> Result<(), ClusterError> {
        let result = match serde_json::from_str::<ClientMsg>(text) {
            Ok(ClientMsg::Beat) => self.beat(conn),
            Ok(ClientMsg::Say { text }) => self.say(conn, &text),
            Ok(ClientMsg::Chat { text }) => self.chat(conn, &text),
            Ok(ClientMsg::Ack { epoch, seq }) => {
                self.ack(conn, epoch, seq).map(|r| self.reply(conn, roomkit::wire::ack_reply_text(&r)))
            }
            Ok(ClientMsg::Check { epoch, after }) => self.check(conn, epoch, after).await.map(|r| {
                if let Some(text) = roomkit::wire::check_answer_text(&r) {
                    self.reply(conn, text);
                }
            }),
            Ok(other) => Err(ClusterError::BadFrame(format!("{other:?} is not served by the cluster example"))),
            Err(e) => Err(ClusterError::BadFrame(e.to_string())),
        };
        if let Err(e) = &result {
            let mut text = String::from("{\"t\":\"error\",\"code\":\"bad_frame\",\"message\":");
            roomkit::wire::json_string(&mut text, &e.to_string());
            text.push('}');
            self.reply(conn, text);
        }
        result
    }

    fn reply(&self, conn: ConnId, text: String) {
        if let Some(e) = self.s.access.lock().conns.get(&conn) {
            let _ = e.tx.try_send(Outbound::Text(Bytes::from(text)));
        }
    }
}

async fn subscribe(nats: &Connection, subject: String) -> Result<async_nats::Subscriber, ClusterError> {
    match nats.client().subscribe(subject.clone()).await {
        Ok(sub) => Ok(sub),
        Err(e) => Err(ClusterError::Subscribe { subject, reason: e.to_string() }),
    }
}

fn gate_subject(prefix: &str, node: NodeId) -> String {
    format!("{prefix}.gate.{}", node.0)
}

fn probe_subject(prefix: &str, node: NodeId) -> String {
    format!("{prefix}.probe.{}", node.0)
}

fn owner_of<K: room_core::RouteKey + ?Sized>(s: &Shared, key: &K) -> Option<NodeId> {
    s.router.read().route(key).ok()
}

/// Sends a beat message to the member's heartbeat owner (handled here if
/// that is this node).
fn send_beat(s: &Arc<Shared>, msg: BeatMsg) {
    let member = match &msg {
        BeatMsg::Join { member, .. } | BeatMsg::Beat { member, .. } | BeatMsg::Leave { member, .. } => *member,
    };
    match owner_of(s, &member) {
        Some(owner) if owner == s.me => handle_beat(s, msg),
        Some(owner) => {
            let (s, bytes) = (s.clone(), postcard::to_allocvec(&msg).unwrap_or_default());
            tokio::spawn(async move {
                if let Err(e) = s.beats.send(owner, &bytes).await {
                    tracing::warn!(error = %e, "beat not forwarded");
                }
            });
        }
        // No view yet: keep the session here until one arrives.
        None => handle_beat(s, msg),
    }
}

/// At the heartbeat owner.
fn handle_beat(s: &Arc<Shared>, msg: BeatMsg) {
    let t = now();
    let mut writes = Vec::new();
    {
        let mut tracker = s.presence.lock();
        match msg {
            BeatMsg::Join { member, role, terminal, conn } => {
                let known = tracker.connection(&member, terminal).is_some();
                let listed = s.replica.get(member).is_some_and(|row| row.terminals.contains(terminal));
                if !known && listed {
                    // Listed already on this terminal: a session moving here
                    // (its owner or its access node failed). Adopt it; no
                    // second *entered*.
                    if let Ok(r) = tracker.beat(t, member, terminal, BeatConn(conn), SessionHint::NONE)
                        && r.outcome == BeatOutcome::Adopted
                    {
                        s.counters.adopted.fetch_add(1, Ordering::Relaxed);
                    }
                } else if tracker.join(t, member, terminal, BeatConn(conn)).is_ok() {
                    writes.push((member, WriteOp::Enter { uin: member.uin, role, terminal, attrs: None }));
                }
            }
            BeatMsg::Beat { member, role, terminal, conn } => {
                let taken_over = match tracker.beat(t, member, terminal, BeatConn(conn), SessionHint::NONE) {
                    Ok(r) => {
                        matches!(r.outcome, BeatOutcome::Adopted)
                            || r.outcome == BeatOutcome::Reconnected { previous: NO_CONNECTION }
                    }
                    Err(_) => false,
                };
                if taken_over {
                    s.counters.adopted.fetch_add(1, Ordering::Relaxed);
                    // Heartbeat repair: a member-list write lost with a
                    // failed node comes back (a no-op when listed).
                    writes.push((member, WriteOp::Assert { uin: member.uin, role, terminal }));
                }
            }
            BeatMsg::Leave { member, terminal, conn } => {
                if matches!(
                    tracker.leave(t, member, terminal, BeatConn(conn)),
                    LeaveOutcome::Exited | LeaveOutcome::TerminalClosed
                ) {
                    s.counters.left.fetch_add(1, Ordering::Relaxed);
                    writes.push((member, WriteOp::Exit { uin: member.uin, terminal }));
                }
            }
        }
        // Presence changes are written to the member list directly above.
        while tracker.poll_event().is_some() {}
    }
    for (member, op) in writes {
        write_members(s, member.room_key(), vec![op]);
    }
}

/// Applies member-list writes here, or at the room's primary if this node
/// does not own the room.
fn write_members(s: &Arc<Shared>, room: RoomKey, ops: Vec<WriteOp>) {
    match s.replica.apply(now(), room, &ops) {
        Err(StoreError::NotOwner { .. }) => {
            let Some(primary) = s.replica.owners(room).first().copied() else { return };
            let bytes = postcard::to_allocvec(&WriteReq { room, ops }).unwrap_or_default();
            let s = s.clone();
            tokio::spawn(async move {
                if let Err(e) = s.writes.send(primary, &bytes).await {
                    tracing::warn!(error = %e, "member-list write not forwarded");
                }
            });
        }
        Err(e) => tracing::warn!(error = %e, %room, "member-list write refused"),
        Ok(_) => {}
    }
}

async fn follow_views(s: Arc<Shared>, mut views: tokio::sync::watch::Receiver<room_core::ClusterView>) {
    loop {
        let view = views.borrow_and_update().clone();
        if view.routable().any(|(n, _)| n == s.me) {
            match Router::from_view(RouterConfig::new(), &view) {
                Ok(router) => {
                    *s.router.write() = router;
                    let released = {
                        let router = s.router.read();
                        s.presence.lock().release_where(|m| router.route(m) == Ok(s.me))
                    };
                    let held = hold_listed_sessions(&s);
                    tracing::info!(node = %s.me, nodes = view.routable().count(), released, held, "view changed");
                    let _ = s.gate_tx.send(GateCmd::ViewChanged);
                }
                Err(e) => tracing::warn!(error = %e, "the registry's view cannot route"),
            }
        }
        if views.changed().await.is_err() {
            return;
        }
    }
}

/// The connection id of a session held for a member the list shows but no
/// beat has reached yet: its access node (0) is never in a view, so unless
/// a real beat replaces it within the timeout, the reverse check ends it.
const NO_CONNECTION: BeatConn = BeatConn(0);

/// Starts tracking every listed member this node now owns that it does
/// not track yet. When a node dies, the sessions it owned die with it; a
/// member who is still there beats within one interval and the session
/// follows the real connection, while one who left with the node (its
/// client gone too) times out here and exits, instead of staying listed
/// for ever. Returns how many sessions it started.
fn hold_listed_sessions(s: &Arc<Shared>) -> usize {
    let store = s.replica.store();
    let router = s.router.read();
    let mut tracker = s.presence.lock();
    let t = now();
    let mut held = 0;
    for room in store.room_keys() {
        for row in store.members(room) {
            let member = room.member(row.uin);
            if router.route(&member) != Ok(s.me) {
                continue;
            }
            for terminal in row.terminals.iter() {
                if tracker.connection(&member, terminal).is_none()
                    && tracker.beat(t, member, terminal, NO_CONNECTION, SessionHint::NONE).is_ok()
                {
                    held += 1;
                }
            }
        }
    }
    held
}

async fn take_beats(s: Arc<Shared>, mut inbox: futures::stream::BoxStream<'static, (NodeId, Bytes)>) {
    while let Some((_, bytes)) = inbox.next().await {
        match postcard::from_bytes::<BeatMsg>(&bytes) {
            Ok(msg) => handle_beat(&s, msg),
            Err(_) => {
                s.counters.garbage.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

async fn take_gate_requests(s: Arc<Shared>, mut requests: async_nats::Subscriber) {
    while let Some(msg) = requests.next().await {
        match postcard::from_bytes::<GateReq>(&msg.payload) {
            Ok(req) => {
                let _ = s.gate_tx.send(GateCmd::Publish { req, reply: msg.reply, attempt: 0 });
            }
            Err(_) => {
                s.counters.garbage.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// Sends a request to the room's owner and waits for its answer; without
/// one, the request goes back into this node's gate queue, to be routed by
/// the view of that moment (the owner may have died).
/// Chat is not retried (it is the class that may be shed): it goes once,
/// without waiting for an answer, so an overloaded owner is not sent more.
fn forward_to_owner(s: &Arc<Shared>, owner: NodeId, req: GateReq, attempt: u32) {
    let s = s.clone();
    tokio::spawn(async move {
        let bytes = postcard::to_allocvec(&req).unwrap_or_default();
        if !req.teacher {
            let _ = s.nats.client().publish(gate_subject(s.nats.prefix(), owner), bytes.into()).await;
            return;
        }
        let ask = s.nats.client().request(gate_subject(s.nats.prefix(), owner), bytes.into());
        if let Ok(Ok(_)) = tokio::time::timeout(GATE_FORWARD_TIMEOUT, ask).await {
            return;
        }
        if attempt + 1 >= GATE_FORWARD_ATTEMPTS {
            tracing::warn!(room = %req.room, %owner, "gate request dropped: no owner answered");
            return;
        }
        tokio::time::sleep(GATE_FORWARD_TIMEOUT / 3).await;
        let _ = s.gate_tx.send(GateCmd::Publish { req, reply: None, attempt: attempt + 1 });
    });
}

async fn take_writes(s: Arc<Shared>, mut inbox: futures::stream::BoxStream<'static, (NodeId, Bytes)>) {
    while let Some((_, bytes)) = inbox.next().await {
        match postcard::from_bytes::<WriteReq>(&bytes) {
            Ok(req) => {
                if let Err(e) = s.replica.apply(now(), req.room, &req.ops) {
                    tracing::warn!(error = %e, room = %req.room, "forwarded member-list write refused");
                }
            }
            Err(_) => {
                s.counters.garbage.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// The reverse check's access side: is this connection still open here?
async fn answer_probes(s: Arc<Shared>, mut probes: async_nats::Subscriber) {
    while let Some(msg) = probes.next().await {
        let Some(reply) = msg.reply else { continue };
        let alive = msg.payload.len() == 8 && {
            let conn = u64::from_be_bytes(msg.payload[..8].try_into().unwrap_or_default());
            s.access.lock().conns.contains_key(&ConnId(conn & ((1 << 40) - 1)))
        };
        let _ = s.nats.client().publish(reply, Bytes::from_static(if alive { b"1" } else { b"0" })).await;
    }
}

/// Carries out what the fenced gate asks for (cache appends and head
/// reads, answered before the next request is taken; publishing) until it
/// has nothing left.
async fn drive_gate(s: &Shared, gate: &mut FencedGate) {
    while let Some(out) = gate.poll_output() {
        match out {
            FenceOutput::Append(env) => {
                let result = s.cache.append(&env).await;
                gate.handle_appended(now(), env.message.room, env.epoch, env.seq, result);
            }
            FenceOutput::ReadHead(room) => {
                let head = s.cache.head(room).await;
                gate.handle_head(now(), room, head);
            }
            FenceOutput::Publish(env) => {
                if env.seq > 0 {
                    s.counters.numbered.fetch_add(1, Ordering::Relaxed);
                }
                if let Err(e) = s.bus.publish(&env).await {
                    tracing::warn!(error = %e, "not published");
                }
            }
            FenceOutput::Fenced { room, dropped } => {
                tracing::warn!(%room, dropped = dropped.len(), "every number tried was taken by another owner: not published");
            }
            _ => {}
        }
    }
}

/// The room owner's gate: numbers, caches, publishes.
async fn run_gate(s: Arc<Shared>, mut rx: mpsc::UnboundedReceiver<GateCmd>) {
    let mut gate = FencedGate::new(GateConfig::default());
    let mut open: HashSet<RoomKey> = HashSet::new();
    // Requests already numbered (bounded), so a retry is not numbered twice.
    let mut seen: HashSet<(NodeId, u64)> = HashSet::new();
    let mut seen_order: std::collections::VecDeque<(NodeId, u64)> = std::collections::VecDeque::new();
    while let Some(cmd) = rx.recv().await {
        let (req, reply, attempt) = match cmd {
            GateCmd::Publish { req, reply, attempt } => (req, reply, attempt),
            GateCmd::ViewChanged => {
                // Rooms another node owns now: forget their sequence, so
                // that if they come back it resumes from the cache's head.
                let gone: Vec<RoomKey> = open.iter().filter(|r| owner_of(&s, *r) != Some(s.me)).copied().collect();
                for room in gone {
                    // Requests are driven to the end one at a time, so
                    // nothing is waiting here.
                    let waiting = gate.release(room);
                    if !waiting.is_empty() {
                        tracing::warn!(%room, dropped = waiting.len(), "released with numbered messages waiting");
                    }
                    open.remove(&room);
                }
                continue;
            }
        };
        let room = req.room;
        match owner_of(&s, &room) {
            Some(owner) if owner != s.me => {
                // Not ours (any more): the asking node retries elsewhere.
                if reply.is_none() {
                    forward_to_owner(&s, owner, req, attempt);
                }
                continue;
            }
            _ => {}
        }
        let answer = |reply: Option<async_nats::Subject>| {
            let s = s.clone();
            async move {
                if let Some(reply) = reply {
                    let _ = s.nats.client().publish(reply, Bytes::from_static(b"1")).await;
                }
            }
        };
        if !req.teacher {
            let key = format!("chat:{}", room.bid.0);
            if let Ok(Decision::Limited { .. }) = s.limiter.check(&key, s.config.business_chat, now(), 1).await {
                s.counters.chat_limited.fetch_add(1, Ordering::Relaxed);
                answer(reply).await;
                continue;
            }
        }
        if !seen.insert((req.from, req.id)) {
            answer(reply).await;
            continue;
        }
        seen_order.push_back((req.from, req.id));
        if seen_order.len() > 65_536
            && let Some(old) = seen_order.pop_front()
        {
            seen.remove(&old);
        }
        let sender = Sender { uin: req.uin, role: req.role };
        let (class, kind) = if req.teacher { (Class::Teacher, kinds::TEACHER_SAY) } else { (Class::Chat, kinds::CHAT) };
        let msg = Message::new(room, class, kind, text_payload(&req.text)).from_sender(sender);
        if !gate.is_open(room) {
            // A new sequence must start above the epoch this node's push
            // side follows, whatever this node's clock says. Nothing
            // cached, or the cache unreachable: a new epoch.
            let floor = s.access.lock().push.reliable_head(room).map_or(0, |(e, _)| e + 1);
            let head = s.cache.head(room).await.ok().flatten();
            let opened = match gate.open(now(), room, head, floor, 0) {
                Err(room_push::GateError::BadHead { .. }) => gate.open(now(), room, None, floor, 0),
                other => other,
            };
            if let Err(e) = opened {
                tracing::warn!(error = %e, %room, "room not opened");
                answer(reply).await;
                continue;
            }
            open.insert(room);
        }
        let renumbered_before = gate.renumbered();
        match gate.publish(now(), msg) {
            Ok(()) => drive_gate(&s, &mut gate).await,
            Err(e) => tracing::debug!(error = %e, %room, "gate refused"),
        }
        if !gate.is_open(room) {
            open.remove(&room);
        }
        s.counters.renumbered.fetch_add(gate.renumbered() - renumbered_before, Ordering::Relaxed);
        answer(reply).await;
    }
}

async fn keep_interest(s: Arc<Shared>, mut rx: mpsc::UnboundedReceiver<RoomKey>) {
    while let Some(room) = rx.recv().await {
        let mut delay = Duration::from_millis(50);
        while let Err(e) = s.bus.set_interest(s.me, room, true).await {
            tracing::warn!(error = %e, %room, "bus interest not set; retrying");
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(2));
        }
    }
}

/// Bus -> push, refilling gaps from the shared cache.
async fn deliver(s: Arc<Shared>, mut incoming: futures::stream::BoxStream<'static, Envelope>) {
    while let Some(env) = incoming.next().await {
        let head = s.access.lock().push.reliable_head(env.message.room);
        if let Some((after, upto)) = room_push::shared_cache::missing_before(head, &env) {
            let range = s.cache.range(env.message.room, env.epoch, after, upto);
            if let Ok(Ok(missing)) = tokio::time::timeout(s.config.refill_timeout, range).await {
                let mut a = s.access.lock();
                for m in &missing {
                    if a.push.handle_envelope(now(), m).is_ok() {
                        s.counters.refilled.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }
        let mut a = s.access.lock();
        let t = now();
        let _ = a.push.handle_envelope(t, &env);
        flush(&mut a, t);
    }
}

fn flush(a: &mut Access, t: Timestamp) {
    let Access { push, conns, .. } = a;
    push.flush(t, &mut Channels { conns });
    while let Some(event) = push.poll_event() {
        if let NodeEvent::Disconnected { conn, .. } = event {
            conns.remove(&conn);
        }
    }
}

/// Push timers, heartbeat expiry and the reverse check
/// ([`room_heartbeat::ReverseCheck`]: rate-limited probes, retries with
/// backoff, a decision when nobody answers).
async fn timers(s: Arc<Shared>) {
    let mut tick = tokio::time::interval(Duration::from_millis(20));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let t = now();
        {
            let mut a = s.access.lock();
            a.push.handle_timeout(t);
            flush(&mut a, t);
        }
        let mut exits = Vec::new();
        let mut probes = Vec::new();
        {
            let mut tracker = s.presence.lock();
            let mut reverse = s.reverse.lock();
            tracker.handle_timeout(t);
            // A suspect the check cannot take yet stays in the tracker.
            while reverse.has_capacity() {
                let Some(suspect) = tracker.poll_suspect() else { break };
                let _ = reverse.handle_suspect(t, suspect);
            }
            while tracker.poll_event().is_some() {}
            reverse.handle_timeout(t);
            while let Some(probe) = reverse.poll_probe(t) {
                probes.push(probe);
            }
            while let Some(verdict) = reverse.poll_verdict() {
                if !verdict.kind.is_gone() {
                    tracker.confirm_alive(t, &verdict.suspect);
                } else if tracker.confirm_gone(t, &verdict.suspect) {
                    exits.push(verdict.suspect);
                }
            }
        }
        for suspect in exits {
            s.counters.timed_out.fetch_add(1, Ordering::Relaxed);
            let member = suspect.member;
            write_members(&s, member.room_key(), vec![WriteOp::Exit { uin: member.uin, terminal: suspect.terminal }]);
        }
        for probe in probes {
            ask_access_node(&s, probe);
        }
    }
}

/// Asks the suspect's access node whether its connection is still open.
/// This node, or a node that has left the view, is answered at once;
/// otherwise the answer (or its absence) goes back to the reverse check,
/// which retries and then keeps the session ([`NoAnswer::AssumeAlive`]): a
/// false exit is worse than a late one.
fn ask_access_node(s: &Arc<Shared>, probe: room_heartbeat::Probe) {
    let conn = probe.suspect.conn.0;
    let access = NodeId(conn >> 40);
    let known = if access == s.me {
        Some(s.access.lock().conns.contains_key(&ConnId(conn & ((1 << 40) - 1))))
    } else if !s.router.read().contains(access) {
        Some(false)
    } else {
        None
    };
    if let Some(alive) = known {
        let answer = if alive { ProbeAnswer::Alive } else { ProbeAnswer::Gone };
        let _ = s.reverse.lock().handle_answer(now(), probe.id, answer);
        return;
    }
    let s = s.clone();
    tokio::spawn(async move {
        let ask = s.nats.client().request(probe_subject(s.nats.prefix(), access), conn.to_be_bytes().to_vec().into());
        if let Ok(answer) = ask.await {
            let answer = if answer.payload.as_ref() == b"0" { ProbeAnswer::Gone } else { ProbeAnswer::Alive };
            let _ = s.reverse.lock().handle_answer(now(), probe.id, answer);
        }
    });
}

#[derive(Clone)]
struct App {
    node: ClusterNode,
    keys: Arc<KeyRing>,
}

#[derive(Debug, Deserialize)]
struct WsQuery {
    room: u64,
    ticket: String,
}

/// Serves `node` over HTTP on `listener`: `/ws?room=&ticket=` (websocket
/// clients, the classroom protocol's `beat`, `say`, `chat`, `ack` and
/// `check`), `/ticket?room=&uin=&role=` (the demo's stand-in for a business
/// backend, as in the classroom example) and `/healthz` (the node's
/// counters as JSON). Returns at once.
pub fn serve(listener: tokio::net::TcpListener, node: ClusterNode, keys: Arc<KeyRing>) -> std::io::Result<SocketAddr> {
    use axum::routing::get;
    let addr = listener.local_addr()?;
    let app = App { node, keys };
    let router = axum::Router::new()
        .route(
            "/ticket",
            get(|State(app): State<App>, Query(q): Query<crate::classroom::TicketQuery>| async move {
                crate::classroom::ticket_response(&app.keys, q)
            }),
        )
        .route("/ws", get(ws))
        .route(
            "/healthz",
            get(|State(app): State<App>| async move {
                let s = app.node.stats();
                format!(
                    "{{\"node\":{},\"view\":{:?},\"connections\":{},\"sessions\":{},\"numbered\":{},\"refilled\":{},\"timed_out\":{},\"redis_up\":{}}}",
                    app.node.id().0,
                    app.node.view().iter().map(|n| n.0).collect::<Vec<_>>(),
                    s.connections,
                    s.sessions,
                    s.numbered,
                    s.refilled,
                    s.timed_out,
                    s.redis_up
                )
            }),
        )
        .with_state(app);
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, router).await {
            tracing::error!(error = %e, "http server stopped");
        }
    });
    Ok(addr)
}

async fn ws(State(app): State<App>, Query(q): Query<WsQuery>, upgrade: WebSocketUpgrade) -> Response {
    let room = RoomKey::new(crate::classroom::DEMO_BID, room_core::RoomId(q.room));
    upgrade.max_message_size(64 * 1024).on_upgrade(move |socket| session(app, room, q.ticket, socket))
}

async fn session(app: App, room: RoomKey, ticket: String, mut socket: WebSocket) {
    let mut conn = match app.node.connect(room, &ticket) {
        Ok(c) => c,
        Err(e) => {
            let _ = socket.send(WsMessage::Text(crate::classroom::entry_refused(&e).into())).await;
            return;
        }
    };
    loop {
        tokio::select! {
            out = conn.outbound.recv() => match out {
                Some(frame) => {
                    let Ok(text) = String::from_utf8(frame.into_text().to_vec()) else { continue };
                    if socket.send(WsMessage::Text(text.into())).await.is_err() {
                        break;
                    }
                }
                None => break,
            },
            incoming = socket.recv() => match incoming {
                Some(Ok(WsMessage::Text(text))) => {
                    let _ = app.node.handle_text(conn.id, text.as_str()).await;
                }
                Some(Ok(_)) => {}
                Some(Err(_)) | None => break,
            },
        }
    }
    app.node.disconnect(conn.id);
}
