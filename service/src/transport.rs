//! What a node runs over: one bundle of transports, chosen at start.
//!
//! A [`RoomNode`](crate::RoomNode) does no I/O; its driver carries its
//! outputs over these and feeds their answers back:
//!
//! | transport | trait | in memory (a cluster of one) | engines |
//! | --- | --- | --- | --- |
//! | the bus (logic -> every push node) | [`Bus`] | [`InMemoryBus`] | `room_nats::NatsBus` |
//! | the shared cache (the rooms' recent messages and owners' state) | [`SharedCache`] | [`InMemorySharedCache`] | `room_redis::RedisCache` |
//! | the global limiter | [`GlobalLimiter`] | [`LocalGlobalLimiter`] | `room_redis::RedisLimiter` |
//! | node-to-node messages (requests, heartbeats, member-list replication) | [`PeerLink`] | [`InMemoryPeers`] | `room_nats::NatsPeers` |
//! | the cluster view | [`Membership`] | [`FixedMembership`] | `room_nats::Registry` |

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;
use futures::channel::mpsc;
use futures::stream::BoxStream;
use parking_lot::Mutex;
use room_core::{ClusterView, NodeChange, NodeId, NodeState};
use room_push::{Bus, GlobalLimiter, InMemoryBus, InMemorySharedCache, LocalGlobalLimiter, SharedCache};

use crate::{CacheAnswer, CacheOp};

/// Why a transport could not carry something.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TransportError {
    /// The transport was shut down, or the receiver is gone.
    #[error("the transport is closed")]
    Closed,
    /// The engine behind it is unreachable.
    #[error("the transport is unavailable: {0}")]
    Unavailable(String),
}

/// Messages between the nodes of a cluster: at most once, in order between
/// two nodes while both are up. Object-safe.
#[async_trait]
pub trait PeerLink: Send + Sync {
    /// Sends `payload` from node `from` to node `to`.
    async fn send(&self, from: NodeId, to: NodeId, payload: Bytes) -> Result<(), TransportError>;
    /// The messages for node `me`, as `(sender, payload)`, from now on.
    async fn inbox(&self, me: NodeId) -> Result<BoxStream<'static, (NodeId, Bytes)>, TransportError>;
}

/// The nodes of the cluster as this node sees them: a stream of views, the
/// current one first. Object-safe.
pub trait Membership: Send + Sync {
    /// The current view, then every change.
    fn views(&self) -> BoxStream<'static, ClusterView>;
}

/// Everything a node runs over. `Transports::in_memory` is a cluster of
/// one, in this process; a cluster takes the engines' implementations
/// (`room-nats`, `room-redis`).
#[derive(Clone)]
pub struct Transports {
    /// The bus from room owners to push nodes.
    pub bus: Arc<dyn Bus>,
    /// The shared cache.
    pub cache: Arc<dyn SharedCache>,
    /// The global limiter.
    pub limiter: Arc<dyn GlobalLimiter>,
    /// Node-to-node messages.
    pub peers: Arc<dyn PeerLink>,
    /// The cluster view.
    pub membership: Arc<dyn Membership>,
}

impl std::fmt::Debug for Transports {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Transports").finish_non_exhaustive()
    }
}

impl Transports {
    /// A cluster of one node, `node`, all in this process's memory.
    pub fn in_memory(node: NodeId) -> Transports {
        Transports {
            bus: Arc::new(InMemoryBus::default()),
            cache: Arc::new(InMemorySharedCache::default()),
            limiter: Arc::new(LocalGlobalLimiter::new(1 << 20)),
            peers: Arc::new(InMemoryPeers::default()),
            membership: Arc::new(FixedMembership::single(node)),
        }
    }
}

/// A node's queue of `(sender, payload)`.
type Inbox = mpsc::Sender<(NodeId, Bytes)>;

/// Node-to-node messages between nodes of one process (tests, and a
/// cluster simulated in one process): bounded queues, so a slow node slows
/// its senders instead of growing a queue without bound.
#[derive(Debug, Clone)]
pub struct InMemoryPeers {
    capacity: usize,
    inboxes: Arc<Mutex<BTreeMap<NodeId, Inbox>>>,
}

impl InMemoryPeers {
    /// Peers whose inboxes hold `capacity` messages.
    pub fn new(capacity: usize) -> InMemoryPeers {
        InMemoryPeers { capacity: capacity.max(1), inboxes: Arc::default() }
    }
}

impl Default for InMemoryPeers {
    fn default() -> Self {
        InMemoryPeers::new(65_536)
    }
}

#[async_trait]
impl PeerLink for InMemoryPeers {
    async fn send(&self, from: NodeId, to: NodeId, payload: Bytes) -> Result<(), TransportError> {
        use futures::SinkExt;
        // A node that is not listening (not started, or stopped) loses the
        // message, as a node that is down would.
        let Some(mut tx) = self.inboxes.lock().get(&to).cloned() else { return Ok(()) };
        if tx.send((from, payload)).await.is_err() {
            self.inboxes.lock().remove(&to);
        }
        Ok(())
    }

    async fn inbox(&self, me: NodeId) -> Result<BoxStream<'static, (NodeId, Bytes)>, TransportError> {
        let (tx, rx) = mpsc::channel(self.capacity);
        self.inboxes.lock().insert(me, tx);
        Ok(rx.boxed())
    }
}

/// A view that changes only when told: one node for a single process, or
/// several for tests that kill and revive nodes by hand.
#[derive(Debug, Clone, Default)]
pub struct FixedMembership {
    inner: Arc<Mutex<(ClusterView, Vec<mpsc::UnboundedSender<ClusterView>>)>>,
}

impl FixedMembership {
    /// A view of `nodes`, each with weight 100, all up.
    pub fn new(nodes: impl IntoIterator<Item = NodeId>) -> FixedMembership {
        let m = FixedMembership::default();
        m.set(nodes);
        m
    }

    /// A cluster of one.
    pub fn single(node: NodeId) -> FixedMembership {
        FixedMembership::new([node])
    }

    /// Replaces the view with `nodes` (weight 100, up) and tells every watcher.
    pub fn set(&self, nodes: impl IntoIterator<Item = NodeId>) {
        let mut view = ClusterView::new();
        for node in nodes {
            // A node listed twice joins once; the view cannot refuse a fresh node otherwise.
            if view.apply(NodeChange::Joined { node, weight: 100 }).is_ok() {
                let _ = view.apply(NodeChange::StateChanged { node, state: NodeState::Up });
            }
        }
        let mut inner = self.inner.lock();
        inner.0 = view.clone();
        inner.1.retain(|tx| tx.unbounded_send(view.clone()).is_ok());
    }

    /// The view now.
    pub fn view(&self) -> ClusterView {
        self.inner.lock().0.clone()
    }
}

impl Membership for FixedMembership {
    fn views(&self) -> BoxStream<'static, ClusterView> {
        let (tx, rx) = mpsc::unbounded();
        let mut inner = self.inner.lock();
        let _ = tx.unbounded_send(inner.0.clone());
        inner.1.push(tx);
        rx.boxed()
    }
}

/// Runs one shared-cache operation a [`RoomNode`](crate::RoomNode) asked
/// for, and returns the answer to hand back with
/// [`RoomNode::handle_cache`](crate::RoomNode::handle_cache).
pub async fn run_cache(cache: &dyn SharedCache, op: CacheOp) -> CacheAnswer {
    match op {
        CacheOp::Append(batch) => CacheAnswer::Appended(cache.append_batch(&batch).await),
        CacheOp::Head(room) => CacheAnswer::Head(cache.head(room).await),
        CacheOp::Range { room, epoch, after, upto } => CacheAnswer::Range(cache.range(room, epoch, after, upto).await),
        CacheOp::LoadState(room) => CacheAnswer::State(cache.load_state(room).await),
        CacheOp::SaveState { room, after, state } => CacheAnswer::Saved(cache.save_state(room, after, state).await),
    }
}
