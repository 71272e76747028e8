//! The quickstart classroom server: axum, websockets, a static page, and
//! Roomkit's room service behind them. Used by `examples/classroom`, the
//! browser test and the load generator.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::extract::ws::{Message as WsMessage, WebSocket, WebSocketUpgrade};
use axum::extract::{Query, State};
use axum::http::{StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use room_core::{BusinessId, Role, RoomId, RoomKey, Terminal, Uin};
use roomkit::service::{RoomService, ServiceConfig};
use roomkit::ticket::{JoinTicket, KeyRing};
use serde::Deserialize;
use tokio::net::TcpListener;

/// The page: plain HTML and JavaScript, no build step.
pub const INDEX_HTML: &str = include_str!("../classroom/index.html");

/// The business id the demo uses.
pub const DEMO_BID: BusinessId = BusinessId(1);

/// How the demo server runs.
#[derive(Debug, Clone)]
pub struct ClassroomConfig {
    /// How often clients beat.
    pub heartbeat: Duration,
    /// Ticket key (random per run unless given).
    pub key: Vec<u8>,
    /// Learners a room is expected to hold.
    pub expected_learners: usize,
}

impl Default for ClassroomConfig {
    fn default() -> Self {
        ClassroomConfig { heartbeat: Duration::from_secs(20), key: random_key(), expected_learners: 0 }
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

#[derive(Clone)]
struct App {
    service: RoomService,
    keys: Arc<KeyRing>,
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

/// Issues a demo ticket, valid for an hour.
pub fn demo_ticket(keys: &KeyRing, room: u64, uin: u64, role: Role, terminal: Terminal) -> String {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    keys.issue(&JoinTicket {
        room: RoomKey::new(DEMO_BID, RoomId(room)),
        uin: Uin(uin),
        role,
        terminal,
        expires_at: now + 3_600,
    })
}

/// Starts the server on `listener` (the room service's timers included)
/// and returns at once.
pub fn serve(listener: TcpListener, config: ClassroomConfig) -> Result<Running, Box<dyn std::error::Error>> {
    let keys = KeyRing::new("demo", config.key)?;
    let mut service_config = ServiceConfig::new(keys.clone());
    service_config.heartbeat = config.heartbeat;
    service_config.expected_learners = config.expected_learners;
    let service = RoomService::new(service_config)?;
    tokio::spawn(service.clone().run());
    let keys = Arc::new(keys);
    let app = App { service: service.clone(), keys: keys.clone() };
    let router = Router::new()
        .route("/", get(index))
        .route("/ticket", get(ticket))
        .route("/ws", get(ws))
        .route("/healthz", get(|| async { "ok" }))
        .with_state(app);
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, router).await {
            tracing::error!(error = %e, "server stopped");
        }
    });
    Ok(Running { addr, service, keys })
}

async fn index() -> Response {
    ([(header::CACHE_CONTROL, "no-store")], Html(INDEX_HTML)).into_response()
}

#[derive(Debug, Deserialize)]
pub(crate) struct TicketQuery {
    room: u64,
    uin: u64,
    role: String,
    #[serde(default)]
    terminal: Option<String>,
}

/// The demo's stand-in for a business backend: it would check the user's
/// login and enrolment before issuing; here anyone may be anyone.
async fn ticket(State(app): State<App>, Query(q): Query<TicketQuery>) -> Response {
    ticket_response(&app.keys, q)
}

/// Issues the ticket a `/ticket` query asks for.
pub(crate) fn ticket_response(keys: &KeyRing, q: TicketQuery) -> Response {
    let Ok(role) = q.role.parse::<Role>() else {
        return (StatusCode::BAD_REQUEST, "unknown role").into_response();
    };
    let terminal = q.terminal.as_deref().unwrap_or("web").parse::<Terminal>().unwrap_or(Terminal::Web);
    let text = demo_ticket(keys, q.room, q.uin, role, terminal);
    ([(header::CONTENT_TYPE, "application/json")], format!("{{\"ticket\":\"{text}\"}}")).into_response()
}

/// The error frame for a refused entry: `{"t":"error","code":"entry_refused","message"}`.
pub(crate) fn entry_refused(e: &dyn std::fmt::Display) -> String {
    let mut text = String::from("{\"t\":\"error\",\"code\":\"entry_refused\",\"message\":");
    roomkit::wire::json_string(&mut text, &e.to_string());
    text.push('}');
    text
}

#[derive(Debug, Deserialize)]
struct WsQuery {
    room: u64,
    ticket: String,
}

async fn ws(State(app): State<App>, Query(q): Query<WsQuery>, upgrade: WebSocketUpgrade) -> Response {
    let room = RoomKey::new(DEMO_BID, RoomId(q.room));
    upgrade.max_message_size(64 * 1024).on_upgrade(move |socket| session(app, room, q.ticket, socket))
}

async fn session(app: App, room: RoomKey, ticket: String, mut socket: WebSocket) {
    let mut conn = match app.service.connect(room, &ticket) {
        Ok(c) => c,
        Err(e) => {
            // Nothing entered: tell the client why and close.
            let _ = socket.send(WsMessage::Text(entry_refused(&e).into())).await;
            let _ = socket.send(WsMessage::Close(None)).await;
            return;
        }
    };
    tracing::info!(member = %conn.member, role = %conn.role, "joined");
    loop {
        tokio::select! {
            out = conn.outbound.recv() => match out {
                Some(frame) => {
                    let text = match String::from_utf8(frame.into_text().to_vec()) {
                        Ok(t) => t,
                        Err(_) => continue,
                    };
                    if socket.send(WsMessage::Text(text.into())).await.is_err() {
                        break;
                    }
                }
                // The service closed the connection (timed out, replaced).
                None => break,
            },
            incoming = socket.recv() => match incoming {
                Some(Ok(WsMessage::Text(text))) => {
                    let _ = app.service.handle_text(conn.id, text.as_str());
                }
                Some(Ok(WsMessage::Binary(_))) => {
                    let _ = app.service.handle_text(conn.id, "binary frames are not part of the protocol");
                }
                Some(Ok(_)) => {}
                Some(Err(_)) | None => break,
            },
        }
    }
    app.service.disconnect(conn.id);
    tracing::info!(member = %conn.member, "left");
}
