//! The push bus on NATS: one subject per room.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use async_trait::async_trait;
use futures::channel::mpsc;
use futures::stream::BoxStream;
use futures::{SinkExt, StreamExt};
use parking_lot::Mutex;
use room_core::{NodeId, RoomKey};
use room_push::{Bus, BusError, Envelope};
use tokio::task::JoinHandle;

use crate::Connection;

type Slot = Arc<Mutex<Option<mpsc::Sender<Envelope>>>>;

#[derive(Debug, Default)]
struct NodeSubs {
    /// Where this node's stream is fed (replaced by each `subscribe`).
    slot: Slot,
    /// One forwarding task per room of interest; aborting it drops the
    /// NATS subscription (which unsubscribes).
    rooms: BTreeMap<RoomKey, JoinHandle<()>>,
}

/// The push [`Bus`] on NATS. See the [crate docs](crate). Cheap to clone.
#[derive(Debug, Clone)]
pub struct NatsBus {
    conn: Connection,
    capacity: usize,
    nodes: Arc<Mutex<BTreeMap<NodeId, NodeSubs>>>,
    garbage: Arc<AtomicU64>,
}

impl NatsBus {
    /// A bus over `conn` whose per-node queues hold `capacity` envelopes (a
    /// slow node slows its NATS subscriptions down; NATS then counts it a
    /// slow consumer and drops, which the node sees as a sequence gap).
    pub fn new(conn: Connection, capacity: usize) -> Self {
        NatsBus { conn, capacity: capacity.max(1), nodes: Arc::default(), garbage: Arc::default() }
    }

    /// The subject of a room's envelopes.
    pub fn subject(&self, room: RoomKey) -> String {
        format!("{}.room.{}.{}", self.conn.prefix(), room.bid.0, room.room.0)
    }

    /// Messages received that were not envelopes of their subject's room.
    pub fn garbage(&self) -> u64 {
        self.garbage.load(Ordering::Relaxed)
    }

    /// The connection.
    pub fn connection(&self) -> &Connection {
        &self.conn
    }
}

impl Drop for NodeSubs {
    fn drop(&mut self) {
        for task in self.rooms.values() {
            task.abort();
        }
    }
}

#[async_trait]
impl Bus for NatsBus {
    async fn publish(&self, envelope: &Envelope) -> Result<(), BusError> {
        self.conn
            .client()
            .publish(self.subject(envelope.message.room), envelope.encode())
            .await
            .map_err(|e| BusError::Unavailable(e.to_string()))
    }

    async fn subscribe(&self, node: NodeId) -> Result<BoxStream<'static, Envelope>, BusError> {
        let (tx, rx) = mpsc::channel(self.capacity);
        let slot = self.nodes.lock().entry(node).or_default().slot.clone();
        *slot.lock() = Some(tx);
        Ok(Box::pin(rx))
    }

    async fn set_interest(&self, node: NodeId, room: RoomKey, interested: bool) -> Result<(), BusError> {
        if !interested {
            if let Some(task) = self.nodes.lock().get_mut(&node).and_then(|n| n.rooms.remove(&room)) {
                task.abort();
            }
            return Ok(());
        }
        let slot = {
            let mut nodes = self.nodes.lock();
            let n = nodes.entry(node).or_default();
            if n.rooms.contains_key(&room) {
                return Ok(());
            }
            n.slot.clone()
        };
        let mut subscription =
            self.conn.client().subscribe(self.subject(room)).await.map_err(|e| BusError::Unavailable(e.to_string()))?;
        let garbage = self.garbage.clone();
        let task = tokio::spawn(async move {
            while let Some(msg) = subscription.next().await {
                let env = match Envelope::decode(&msg.payload) {
                    Ok(env) if env.message.room == room => env,
                    Ok(_) | Err(_) => {
                        garbage.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!(%room, subject = %msg.subject, "not an envelope of this room: dropped");
                        #[cfg(feature = "metrics")]
                        metrics::counter!("roomkit_nats_bus_garbage_total").increment(1);
                        continue;
                    }
                };
                let tx = slot.lock().clone();
                if let Some(mut tx) = tx {
                    // A dropped stream: the node stopped listening.
                    let _ = tx.send(env).await;
                }
            }
        });
        let mut nodes = self.nodes.lock();
        let n = nodes.entry(node).or_default();
        if let Some(previous) = n.rooms.insert(room, task) {
            // Two concurrent calls for the same room: keep one subscription.
            previous.abort();
        }
        Ok(())
    }
}
