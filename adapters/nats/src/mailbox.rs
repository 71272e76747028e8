//! Node-to-node messages, and member-list replication over them.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::{BufMut, Bytes, BytesMut};
use futures::StreamExt;
use futures::stream::BoxStream;
use room_core::{ClusterView, NodeId, Timestamp};
use room_memberlist::{ReplMsg, Replica, ReplicaEvent};
use tokio::sync::{mpsc, watch};

use crate::Connection;

/// Why a mailbox could not send or listen.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum MailboxError {
    /// A channel name that is not one plain token.
    #[error("bad channel name {0:?}: use letters, digits, '-' and '_' only")]
    Channel(String),
    /// NATS refused (the client is closed).
    #[error("NATS unavailable: {0}")]
    Unavailable(String),
}

/// Messages between nodes on one channel: node `n` listens on
/// `<prefix>.node.<n>.<channel>`. Each message carries its sender's id in
/// its first 8 bytes. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Mailbox {
    conn: Connection,
    me: NodeId,
    channel: Arc<str>,
    garbage: Arc<AtomicU64>,
}

impl Mailbox {
    /// Node `me`'s mailbox on `channel`.
    pub fn new(conn: Connection, me: NodeId, channel: &str) -> Result<Mailbox, MailboxError> {
        if !crate::valid_token(channel) {
            return Err(MailboxError::Channel(channel.to_string()));
        }
        Ok(Mailbox { conn, me, channel: channel.into(), garbage: Arc::default() })
    }

    /// This node.
    pub fn me(&self) -> NodeId {
        self.me
    }

    fn subject(&self, node: NodeId) -> String {
        format!("{}.node.{}.{}", self.conn.prefix(), node.0, self.channel)
    }

    /// Messages received too short to name a sender (dropped).
    pub fn garbage(&self) -> u64 {
        self.garbage.load(Ordering::Relaxed)
    }

    /// Sends `payload` to `to` (at most once: core NATS; a node that is
    /// down or disconnected does not get it).
    pub async fn send(&self, to: NodeId, payload: &[u8]) -> Result<(), MailboxError> {
        let mut b = BytesMut::with_capacity(8 + payload.len());
        b.put_u64(self.me.0);
        b.put_slice(payload);
        self.conn
            .client()
            .publish(self.subject(to), b.freeze())
            .await
            .map_err(|e| MailboxError::Unavailable(e.to_string()))
    }

    /// This node's incoming messages, as (sender, payload). The client
    /// resubscribes after a reconnect, so the stream outlives NATS
    /// restarts.
    pub async fn inbox(&self) -> Result<BoxStream<'static, (NodeId, Bytes)>, MailboxError> {
        let sub = self
            .conn
            .client()
            .subscribe(self.subject(self.me))
            .await
            .map_err(|e| MailboxError::Unavailable(e.to_string()))?;
        let garbage = self.garbage.clone();
        Ok(Box::pin(sub.filter_map(move |msg| {
            let garbage = garbage.clone();
            async move {
                let p = msg.payload;
                if p.len() < 8 {
                    garbage.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(subject = %msg.subject, "mailbox message without a sender: dropped");
                    return None;
                }
                let from = u64::from_be_bytes(p[..8].try_into().unwrap_or_default());
                Some((NodeId(from), p.slice(8..)))
            }
        })))
    }
}

/// Unix time, the clock replicas stamp writes with (their hybrid logical
/// clocks absorb skew between nodes).
fn unix_now() -> Timestamp {
    Timestamp::from_micros(SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_micros() as u64))
}

/// Runs a member-list replica over `mailbox` until the mailbox's
/// subscription ends: delivers its messages (postcard-encoded
/// [`ReplMsg`]s), follows the registry's `views` (every change resets the
/// replica's owners), runs its timers, and forwards its events to
/// `events` if given. Undecodable messages are counted in
/// [`Mailbox::garbage`] and dropped.
pub async fn replicate(
    replica: Arc<Replica>,
    mailbox: Mailbox,
    mut views: watch::Receiver<ClusterView>,
    events: Option<mpsc::UnboundedSender<ReplicaEvent>>,
) -> Result<(), MailboxError> {
    let mut inbox = mailbox.inbox().await?;
    let apply_view = |view: &ClusterView| {
        let nodes: Vec<(NodeId, u32)> = view.routable().collect();
        if nodes.iter().any(|(n, _)| *n == replica.node())
            && let Err(e) = replica.set_nodes(nodes)
        {
            tracing::warn!(error = %e, "the registry's view cannot route");
        }
    };
    apply_view(&views.borrow_and_update());
    let mut views_open = true;
    loop {
        while let Some((to, msg)) = replica.poll_transmit() {
            match postcard::to_allocvec(&msg) {
                Ok(bytes) => {
                    if let Err(e) = mailbox.send(to, &bytes).await {
                        tracing::warn!(error = %e, %to, "replication message not sent");
                    }
                }
                Err(e) => tracing::error!(error = %e, "replication message not encodable"),
            }
        }
        while let Some(event) = replica.poll_event() {
            if let Some(tx) = &events {
                let _ = tx.send(event);
            }
        }
        let wait = replica.poll_timeout().map_or(Duration::from_secs(1), |at| {
            Duration::from_micros(at.as_micros().saturating_sub(unix_now().as_micros()))
        });
        tokio::select! {
            incoming = inbox.next() => {
                let Some((from, bytes)) = incoming else { return Ok(()) };
                match postcard::from_bytes::<ReplMsg>(&bytes) {
                    Ok(msg) => replica.handle_message(unix_now(), from, msg),
                    Err(e) => {
                        mailbox.garbage.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!(error = %e, %from, "undecodable replication message: dropped");
                    }
                }
            }
            changed = views.changed(), if views_open => {
                if changed.is_ok() {
                    apply_view(&views.borrow_and_update());
                } else {
                    views_open = false;
                }
            }
            _ = tokio::time::sleep(wait) => replica.handle_timeout(unix_now()),
        }
    }
}
