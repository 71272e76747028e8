//! The bus between the classroom logic and the push nodes.

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;
use futures::SinkExt;
use futures::channel::mpsc;
use futures::stream::BoxStream;
use room_core::{NodeId, RoomKey};
use std::collections::BTreeSet;

use crate::envelope::{DecodeError, Envelope};

/// Why the bus could not carry an envelope.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BusError {
    /// The bus was shut down, or the subscriber is gone.
    #[error("the bus is closed")]
    Closed,
    /// The engine behind the bus is unreachable (NATS, for the adapter).
    #[error("the bus is unavailable: {0}")]
    Unavailable(String),
    /// Bytes on the bus that are not an envelope.
    #[error("undecodable envelope on the bus: {0}")]
    Decode(#[from] DecodeError),
}

/// Carries envelopes from gates to push nodes. Every node interested in a
/// room receives each of its envelopes once. Object-safe, so a host can
/// pick the in-memory bus or the NATS one at run time.
#[async_trait]
pub trait Bus: Send + Sync {
    /// Sends an envelope to every node interested in its room.
    async fn publish(&self, envelope: &Envelope) -> Result<(), BusError>;
    /// The envelopes for `node`, from now on.
    async fn subscribe(&self, node: NodeId) -> Result<BoxStream<'static, Envelope>, BusError>;
    /// Starts or stops `node` receiving `room`'s envelopes (a node is
    /// interested while it has connections in the room).
    async fn set_interest(&self, node: NodeId, room: RoomKey, interested: bool) -> Result<(), BusError>;
}

#[derive(Debug, Default)]
struct Subscriber {
    tx: Option<mpsc::Sender<Envelope>>,
    rooms: BTreeSet<RoomKey>,
}

/// The in-process bus: bounded channels, so a slow node slows publishers
/// down instead of growing a queue without bound.
#[derive(Debug, Clone)]
pub struct InMemoryBus {
    capacity: usize,
    nodes: Arc<parking_lot::Mutex<BTreeMap<NodeId, Subscriber>>>,
}

impl InMemoryBus {
    /// A bus whose per-node queues hold `capacity` envelopes.
    pub fn new(capacity: usize) -> Self {
        InMemoryBus { capacity: capacity.max(1), nodes: Arc::default() }
    }
}

impl Default for InMemoryBus {
    fn default() -> Self {
        Self::new(4096)
    }
}

#[async_trait]
impl Bus for InMemoryBus {
    async fn publish(&self, envelope: &Envelope) -> Result<(), BusError> {
        let targets: Vec<(NodeId, mpsc::Sender<Envelope>)> = self
            .nodes
            .lock()
            .iter()
            .filter(|(_, s)| s.rooms.contains(&envelope.message.room))
            .filter_map(|(id, s)| s.tx.clone().map(|tx| (*id, tx)))
            .collect();
        for (id, mut tx) in targets {
            if tx.send(envelope.clone()).await.is_err() {
                // The node's stream was dropped: it no longer listens.
                if let Some(s) = self.nodes.lock().get_mut(&id) {
                    s.tx = None;
                }
            }
        }
        Ok(())
    }

    async fn subscribe(&self, node: NodeId) -> Result<BoxStream<'static, Envelope>, BusError> {
        let (tx, rx) = mpsc::channel(self.capacity);
        self.nodes.lock().entry(node).or_default().tx = Some(tx);
        Ok(Box::pin(rx))
    }

    async fn set_interest(&self, node: NodeId, room: RoomKey, interested: bool) -> Result<(), BusError> {
        let mut nodes = self.nodes.lock();
        let s = nodes.entry(node).or_default();
        if interested {
            s.rooms.insert(room);
        } else {
            s.rooms.remove(&room);
        }
        Ok(())
    }
}
