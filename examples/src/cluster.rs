//! One Roomkit node of a cluster, over NATS and Redis: what
//! `examples/cluster` runs three of, and what the failover tests kill.
//!
//! There is no room logic here: a node is `roomkit`'s [`RoomService`] (the
//! same service the quickstart classroom runs in memory) started over the
//! engines' transports, and the shared HTTP edge in front of it.
//!
//! | transport | engine |
//! | --- | --- |
//! | bus | [`NatsBus`] (one subject per room) |
//! | shared cache | [`RedisCache`] (Redis Streams, room states beside them) |
//! | global limiter | [`RedisLimiter`] (Lua GCRA) |
//! | peer messages | [`NatsPeers`] (node mailboxes) |
//! | cluster view | [`Registry`] (JetStream KV) |

use std::sync::Arc;

use room_core::NodeId;
use room_nats::{Connection, NatsBus, NatsConfig, NatsPeers, NodeRecord, Registry, RegistryConfig};
use room_redis::{RedisCache, RedisCacheConfig, RedisLimiter, RedisLimiterConfig};
use roomkit::service::{RoomService, ServiceConfig};
use roomkit::ticket::KeyRing;
use roomkit::transport::Transports;

/// How one node runs.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ClusterConfig {
    /// The room service (node id, heartbeats, limits).
    pub service: ServiceConfig,
    /// Its relative capacity.
    pub weight: u32,
    /// Where NATS is.
    pub nats: NatsConfig,
    /// Where Redis is (`redis://host:port`).
    pub redis_url: String,
    /// The registry's bucket and timing.
    pub registry: RegistryConfig,
    /// The address clients reach this node at (advertised in the registry).
    pub addr: String,
    /// Reliable messages the shared cache keeps per room.
    pub cache_len: usize,
}

impl ClusterConfig {
    /// Defaults for node `node`: 20 s heartbeats, 3 misses, 3 replicas.
    pub fn new(node: NodeId, nats_url: &str, redis_url: &str, keys: KeyRing) -> Self {
        let mut service = ServiceConfig::new(keys);
        service.node = roomkit::node::RoomNodeConfig::new(node);
        service.node.push.cache_len = 4096;
        ClusterConfig {
            service,
            weight: 100,
            nats: NatsConfig::new(nats_url),
            redis_url: redis_url.to_owned(),
            registry: RegistryConfig::new(),
            addr: String::new(),
            cache_len: 4096,
        }
    }
}

/// Why a node could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClusterError {
    /// NATS refused the settings.
    #[error(transparent)]
    Nats(#[from] room_nats::NatsError),
    /// The registry refused the settings.
    #[error(transparent)]
    Registry(#[from] room_nats::RegistryError),
    /// The Redis cache refused the settings.
    #[error(transparent)]
    Redis(#[from] room_redis::RedisCacheError),
    /// The Redis limiter refused the settings.
    #[error(transparent)]
    Limiter(#[from] room_redis::RedisLimiterError),
    /// The service could not start.
    #[error(transparent)]
    Service(#[from] roomkit::service::StartError),
}

/// A running node: the room service, and handles on its engines for health.
#[derive(Clone, Debug)]
pub struct ClusterNode {
    /// The room service.
    pub service: RoomService,
    nats: Connection,
    cache: Arc<RedisCache>,
    limiter: Arc<RedisLimiter>,
}

impl ClusterNode {
    /// Starts a node: connects to NATS and Redis (neither needs to be up
    /// yet), registers, and starts the service. Needs a tokio runtime.
    pub async fn start(config: ClusterConfig) -> Result<ClusterNode, ClusterError> {
        let me = config.service.node.node;
        // The recorder first, so that the engines' and the service's first
        // counts reach it.
        crate::metrics::install();
        let mut nats_config = config.nats.clone();
        nats_config.name = format!("roomkit-node-{}", me.0);
        let nats = room_nats::connect(&nats_config).await?;
        let mut cache_config = RedisCacheConfig::new(config.redis_url.clone());
        cache_config.max_len = config.cache_len;
        let cache = Arc::new(RedisCache::new(cache_config)?);
        let mut limiter_config = RedisLimiterConfig::new(config.redis_url.clone());
        limiter_config.expected_nodes = 3;
        let limiter = Arc::new(RedisLimiter::new(limiter_config)?);
        let incarnation =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_micros() as u64);
        let record = NodeRecord { node: me, weight: config.weight, addr: config.addr.clone(), incarnation };
        let registry = Registry::join(nats.clone(), config.registry.clone(), record)?;
        let transports = Transports {
            bus: Arc::new(NatsBus::new(nats.clone(), 8192)),
            cache: cache.clone(),
            limiter: limiter.clone(),
            peers: Arc::new(NatsPeers::new(nats.clone())),
            // The service holds the only handle: killing it stops the
            // registration, as a crash would.
            membership: Arc::new(registry),
        };
        let service = RoomService::start_with(config.service, transports).await?;
        Ok(ClusterNode { service, nats, cache, limiter })
    }

    /// Whether the shared cache and the limiter reach Redis.
    pub fn redis_up(&self) -> bool {
        self.cache.health() == room_redis::Health::Up && self.limiter.health() == room_redis::Health::Up
    }

    /// Times the NATS client reconnected.
    pub fn nats_reconnects(&self) -> u64 {
        self.nats.reconnects()
    }

    /// Sets the engines' health gauges (`roomkit_redis_up` per engine,
    /// `roomkit_nats_up`) and samples the service's counters into metrics
    /// (see [`crate::metrics`]); a node process calls it every second.
    pub fn record_metrics(&self) {
        let up = |up: bool| if up { 1.0 } else { 0.0 };
        metrics::gauge!("roomkit_redis_up", "engine" => "cache").set(up(self.cache.health() == room_redis::Health::Up));
        metrics::gauge!("roomkit_redis_up", "engine" => "limiter")
            .set(up(self.limiter.health() == room_redis::Health::Up));
        metrics::gauge!("roomkit_nats_up").set(up(self.nats.health() == room_nats::Health::Up));
        self.service.record_metrics();
    }

    /// Stops the node as a crash would.
    pub fn kill(&self) {
        self.service.kill();
    }
}

/// Serves `node` over HTTP on `listener` with the shared edge (no page).
pub fn serve(
    listener: tokio::net::TcpListener,
    node: &ClusterNode,
    keys: Arc<KeyRing>,
) -> std::io::Result<std::net::SocketAddr> {
    crate::edge::serve(listener, node.service.clone(), keys, None)
}
