//! The room service's transports over NATS: node-to-node messages on
//! mailboxes, and the cluster view from the registry.

use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;
use futures::stream::BoxStream;
use room_core::{ClusterView, NodeId};
use room_service::transport::{Membership, PeerLink, TransportError};

use crate::{Connection, Mailbox, Registry};

/// The channel of the room service's node-to-node messages.
const PEERS: &str = "peers";

/// Node-to-node messages of the room service ([`PeerLink`]): node `n`
/// listens on `<prefix>.node.<n>.peers`; each message carries its sender
/// in its first 8 bytes. Core NATS: at most once, in order between two
/// nodes. Cheap to clone.
#[derive(Debug, Clone)]
pub struct NatsPeers {
    conn: Connection,
}

impl NatsPeers {
    /// Peers over `conn`.
    pub fn new(conn: Connection) -> NatsPeers {
        NatsPeers { conn }
    }

    fn mailbox(&self, node: NodeId) -> Result<Mailbox, TransportError> {
        Mailbox::new(self.conn.clone(), node, PEERS).map_err(|e| TransportError::Unavailable(e.to_string()))
    }
}

#[async_trait]
impl PeerLink for NatsPeers {
    async fn send(&self, from: NodeId, to: NodeId, payload: Bytes) -> Result<(), TransportError> {
        self.mailbox(from)?.send(to, &payload).await.map_err(|e| TransportError::Unavailable(e.to_string()))
    }

    async fn inbox(&self, me: NodeId) -> Result<BoxStream<'static, (NodeId, Bytes)>, TransportError> {
        self.mailbox(me)?.inbox().await.map_err(|e| TransportError::Unavailable(e.to_string()))
    }
}

impl Membership for Registry {
    fn views(&self) -> BoxStream<'static, ClusterView> {
        let rx = self.changes();
        futures::stream::unfold((rx, true), |(mut rx, first)| async move {
            if !first {
                rx.changed().await.ok()?;
            }
            let view = rx.borrow_and_update().clone();
            Some((view, (rx, false)))
        })
        .boxed()
    }
}
