#![doc = include_str!("../README.md")]
//!
//! ---
//!
//! Roomkit's NATS adapter: what carries a cluster's traffic between nodes.
//!
//! * [`NatsBus`]: the push [`Bus`](room_push::Bus). One subject per room
//!   (`<prefix>.room.<bid>.<room>`); a node subscribes to a room's subject
//!   while it has connections in the room, so every push node receives
//!   each room message once, and a room no node serves costs nothing.
//! * [`Registry`]: a node registry on JetStream KV. Each node re-puts its
//!   [`NodeRecord`] every interval; every node watches the bucket and
//!   keeps a [`ClusterView`](room_core::ClusterView) of the nodes whose
//!   records it has received within the time-to-live, from which the
//!   room-core [`Router`](room_core::Router) is rebuilt. Liveness is judged
//!   by when a record *arrived* here, on this node's monotonic clock, so
//!   clock skew between nodes cannot kill or revive a node.
//! * [`Mailbox`]: node-to-node messages (`<prefix>.node.<id>.<channel>`),
//!   and [`replicate`], which drives a member-list
//!   [`Replica`](room_memberlist::Replica) over it.
//! * The room service's transports: [`NatsPeers`] (its node-to-node
//!   messages) and the [`Registry`] as its cluster view
//!   ([`Membership`](room_service::transport::Membership)).
//!
//! # Faults
//!
//! | fault | behaviour |
//! | --- | --- |
//! | NATS unreachable at start | [`connect`] returns at once; the client keeps trying, [`Connection::health`] says [`Health::Down`] until it connects; publishes wait in the client's buffer |
//! | NATS restarts | the client reconnects with backoff and resubscribes every subscription; registrations re-put (re-creating the bucket if the restart lost it) and watchers start again |
//! | messages published while disconnected | lost by core NATS: push nodes see a gap in the room's sequence and refill it from the shared cache (`room-redis`) or reset their clients; nothing is lost silently |
//! | garbage on a subject | counted ([`NatsBus::garbage`], [`Mailbox`] per channel) and dropped, never a panic |
//! | a registry entry in a wrong format | [`RegistryError::BadRecord`] in the watcher's error count; the entry is ignored |
//! | clock skew between nodes | no effect on liveness (see above) |
//! | this node cut off from NATS | no node is judged while the connection is down (silence is no evidence); after reconnecting, each has a whole ttl to re-put |
#![forbid(unsafe_code)]

use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;

mod bus;
mod mailbox;
mod registry;
mod transport;

pub use bus::NatsBus;
pub use mailbox::{Mailbox, MailboxError, replicate};
pub use registry::{NodeRecord, Registry, RegistryConfig, RegistryError, ensure_bucket};
pub use transport::NatsPeers;

/// The decoders of what the store holds, for the fuzz targets (`fuzz/`).
/// Not a stable API.
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing {
    /// Parses and checks a registry entry (`key`, `value`) as the watcher does.
    pub fn parse_record(key: &str, value: &bytes::Bytes) -> Result<crate::NodeRecord, crate::RegistryError> {
        crate::registry::parse_record(key, value)
    }
}

/// How to reach NATS.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct NatsConfig {
    /// `nats://host:port` (several, comma-separated, for a NATS cluster).
    pub url: String,
    /// The first token of every subject Roomkit uses, so several
    /// platforms can share a NATS account.
    pub prefix: String,
    /// The client's name, shown by the server's monitoring.
    pub name: String,
    /// How long one connection attempt may take.
    pub connect_timeout: Duration,
    /// Messages a subscription buffers before NATS counts it a slow
    /// consumer and drops (a push node that stalls loses bus envelopes: it
    /// sees a gap and refills it from the shared cache).
    pub subscription_capacity: usize,
    /// How often the client pings the server. A connection whose pings go
    /// unanswered (three intervals) is dropped and dialled again: without
    /// it a partition that stalls the TCP connection is noticed only by
    /// TCP's retransmission backoff, tens of seconds after it heals.
    pub ping_interval: Duration,
}

impl NatsConfig {
    /// Defaults for `url`: prefix `roomkit`.
    pub fn new(url: impl Into<String>) -> Self {
        NatsConfig {
            url: url.into(),
            prefix: "roomkit".into(),
            name: "roomkit".into(),
            connect_timeout: Duration::from_secs(2),
            subscription_capacity: 65_536,
            ping_interval: Duration::from_secs(2),
        }
    }
}

/// Why a NATS component could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NatsError {
    /// The URL or options were refused.
    #[error("cannot connect to NATS: {0}")]
    Connect(#[from] async_nats::ConnectError),
    /// A subject prefix that is not one plain token.
    #[error("bad subject prefix {0:?}: use letters, digits, '-' and '_' only")]
    Prefix(String),
}

/// Whether the client is connected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Health {
    /// Connected.
    Up,
    /// Not connected (yet, or any more); the client is reconnecting.
    Down,
}

/// A NATS client shared by the adapter's components. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Connection {
    client: async_nats::Client,
    prefix: Arc<str>,
    health: Arc<Mutex<Health>>,
    reconnects: Arc<Mutex<u64>>,
}

impl Connection {
    /// The underlying client.
    pub fn client(&self) -> &async_nats::Client {
        &self.client
    }

    /// Whether the client is connected now.
    pub fn health(&self) -> Health {
        *self.health.lock()
    }

    /// Times the client connected again after losing the server.
    pub fn reconnects(&self) -> u64 {
        *self.reconnects.lock()
    }

    /// The subject prefix.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }
}

fn valid_token(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// Connects to NATS. Returns at once even if NATS is not up yet: the client
/// keeps trying (with backoff) and reconnects whenever the connection is
/// lost, resubscribing every subscription. Needs a tokio runtime.
pub async fn connect(config: &NatsConfig) -> Result<Connection, NatsError> {
    if !valid_token(&config.prefix) {
        return Err(NatsError::Prefix(config.prefix.clone()));
    }
    let health = Arc::new(Mutex::new(Health::Down));
    let reconnects = Arc::new(Mutex::new(0u64));
    let (h, r) = (health.clone(), reconnects.clone());
    let connected_once = Arc::new(Mutex::new(false));
    let client = async_nats::ConnectOptions::new()
        .name(&config.name)
        .connection_timeout(config.connect_timeout)
        .subscription_capacity(config.subscription_capacity.max(1))
        .ping_interval(config.ping_interval.max(Duration::from_millis(100)))
        .retry_on_initial_connect()
        .max_reconnects(None)
        .reconnect_delay_callback(|attempts| {
            // 0, 50, 100, 200 ... ms, at most 2 s: quick after a blip, gentle
            // on a server that stays down.
            let ms = if attempts == 0 { 0 } else { 25u64 << attempts.min(7) };
            Duration::from_millis(ms.min(2_000))
        })
        .event_callback(move |event| {
            let (h, r, once) = (h.clone(), r.clone(), connected_once.clone());
            async move {
                match event {
                    async_nats::Event::Connected => {
                        *h.lock() = Health::Up;
                        let mut once = once.lock();
                        if *once {
                            *r.lock() += 1;
                            tracing::info!("reconnected to NATS");
                            #[cfg(feature = "metrics")]
                            metrics::counter!("roomkit_nats_reconnects_total").increment(1);
                        }
                        *once = true;
                    }
                    async_nats::Event::Disconnected | async_nats::Event::Closed => {
                        *h.lock() = Health::Down;
                        tracing::warn!("lost the connection to NATS; reconnecting");
                    }
                    async_nats::Event::SlowConsumer(sid) => {
                        tracing::warn!(subscription = sid, "slow consumer: NATS dropped messages");
                        #[cfg(feature = "metrics")]
                        metrics::counter!("roomkit_nats_slow_consumer_total").increment(1);
                    }
                    other => tracing::debug!(event = %other, "NATS event"),
                }
            }
        })
        .connect(config.url.as_str())
        .await?;
    Ok(Connection { client, prefix: config.prefix.as_str().into(), health, reconnects })
}
