//! The quickstart classroom: a room service behind an axum websocket server
//! and a plain HTML/JS page with a teacher view and a student view.
//!
//! Run: `cargo run -p examples --example classroom` and open
//! http://127.0.0.1:8080 (a teacher: http://127.0.0.1:8080/?role=teacher&uin=1).
//!
//! Options (environment): `ROOMKIT_ADDR` (default 127.0.0.1:8080),
//! `ROOMKIT_HEARTBEAT_SECS` (default 20), `ROOMKIT_SHARDS` (nodes of the
//! process, each under its own lock; default 1), `RUST_LOG` (default info), and
//! `ROOMKIT_API_KEY`: the bearer key of the host API for a business
//! backend (`/api/v1`, docs/HOST_API.md); unset, the API is off.
//!
//! `GET /metrics` serves the server's metrics for Prometheus
//! (docs/METRICS.md), without authentication: keep it on a private network.
#![forbid(unsafe_code)]

use std::time::Duration;

use examples::classroom::{ClassroomConfig, serve};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .init();
    let addr = std::env::var("ROOMKIT_ADDR").unwrap_or_else(|_| "127.0.0.1:8080".into());
    let heartbeat = std::env::var("ROOMKIT_HEARTBEAT_SECS").ok().and_then(|s| s.parse().ok()).unwrap_or(20);
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    let api_key = std::env::var("ROOMKIT_API_KEY").ok().filter(|k| !k.is_empty());
    let shards = std::env::var("ROOMKIT_SHARDS").ok().and_then(|s| s.parse().ok()).unwrap_or(1usize).clamp(1, 64);
    let api_on = api_key.is_some();
    let config =
        ClassroomConfig { heartbeat: Duration::from_secs(heartbeat), api_key, shards, ..ClassroomConfig::default() };
    let running = serve(listener, config).await?;
    tracing::info!("classroom at http://{} (teacher view: http://{}/?role=teacher&uin=1)", running.addr, running.addr);
    if api_on {
        tracing::info!("host API at http://{}/api/v1 (document: /api/v1/openapi.json)", running.addr);
    }
    let mut every = tokio::time::interval(Duration::from_secs(30));
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => break,
            _ = every.tick() => {
                let s = running.service.stats();
                tracing::info!(rooms = s.rooms, sessions = s.sessions, connections = s.connections, frames_sent = s.push.frames_sent, "status");
            }
        }
    }
    tracing::info!("shutting down");
    Ok(())
}
