//! The quickstart classroom server: the room service in memory (a cluster
//! of one) behind the shared HTTP edge, with a static page. Used by
//! `examples/classroom`, the browser test and the load generator.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use roomkit::service::{RoomService, ServiceConfig};
use roomkit::ticket::KeyRing;
use tokio::net::TcpListener;

pub use crate::edge::{DEMO_BID, demo_ticket};

/// The page: plain HTML and JavaScript, no build step.
pub const INDEX_HTML: &str = include_str!("../classroom/index.html");

/// How the demo server runs.
#[derive(Debug, Clone)]
pub struct ClassroomConfig {
    /// How often clients beat.
    pub heartbeat: Duration,
    /// Ticket key (random per run unless given).
    pub key: Vec<u8>,
    /// Learners a room is expected to hold.
    pub expected_learners: usize,
    /// The bearer key of the host API (`/api/v1`, docs/HOST_API.md);
    /// `None` leaves the API off.
    pub api_key: Option<String>,
    /// Nodes of the process, each under its own lock (see
    /// `roomkit::service::ServiceConfig::shards`).
    pub shards: usize,
}

impl Default for ClassroomConfig {
    fn default() -> Self {
        ClassroomConfig {
            heartbeat: Duration::from_secs(20),
            key: random_key(),
            expected_learners: 0,
            api_key: None,
            shards: 1,
        }
    }
}

/// 32 bytes from the standard library's per-process random hasher keys.
pub fn random_key() -> Vec<u8> {
    use std::hash::{BuildHasher, Hasher};
    (0..4u64)
        .flat_map(|i| {
            let mut h = std::collections::hash_map::RandomState::new().build_hasher();
            h.write_u64(i);
            h.finish().to_le_bytes()
        })
        .collect()
}

/// A running server.
#[derive(Debug)]
pub struct Running {
    /// Where it listens.
    pub addr: SocketAddr,
    /// The service (for in-process load and tests).
    pub service: RoomService,
    /// The ticket keys (the demo "business backend").
    pub keys: Arc<KeyRing>,
}

/// Starts the service and the server on `listener`.
pub async fn serve(listener: TcpListener, config: ClassroomConfig) -> Result<Running, Box<dyn std::error::Error>> {
    let keys = KeyRing::new("demo", config.key)?;
    // The recorder first, so that the service's first counts reach it.
    crate::metrics::install();
    let mut service_config = ServiceConfig::new(keys.clone());
    service_config.node.heartbeat = config.heartbeat;
    service_config.node.expected_learners = config.expected_learners;
    service_config.shards = config.shards;
    let service = RoomService::start(service_config).await?;
    let keys = Arc::new(keys);
    let options = crate::edge::EdgeOptions { api_key: config.api_key, ..Default::default() };
    let addr = crate::edge::serve_with_options(listener, service.clone(), keys.clone(), Some(INDEX_HTML), options)?;
    Ok(Running { addr, service, keys })
}
