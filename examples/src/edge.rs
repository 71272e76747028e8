//! The HTTP edge every example server shares: axum routes in front of a
//! [`RoomService`]. It holds no room logic: a websocket's text frames go to
//! the service, and what the service writes goes to the socket.
//!
//! * `GET /`: the classroom page (when the server has one);
//! * `GET /roomkit.js`: the JavaScript client SDK the page uses
//!   (`@roomkit/client`, clients/js);
//! * `GET /ticket?room=&uin=&role=&terminal=`: the demo's stand-in for a
//!   business backend (it trusts anyone);
//! * `GET /ws?room=&ticket=`: the classroom protocol (docs/PROTOCOL.md);
//! * `GET /healthz`: the node's counters as JSON;
//! * `GET /metrics`: the process's metrics in the Prometheus text format
//!   ([`metrics`](crate::metrics), docs/METRICS.md; unauthenticated: keep
//!   it on a private network);
//! * `/api/v1/...`: the host API for a business backend
//!   ([`host_api`](crate::host_api), docs/HOST_API.md), on when
//!   [`EdgeOptions::api_key`] is set.
//!
//! Connections are bounded before any of that: a client has
//! [`Limits::header_timeout`] to send its request's headers (a socket that
//! dribbles them holds nothing for long), at most
//! [`Limits::per_ip`] connections per address and [`Limits::total`] in all
//! (more are closed at once), with `TCP_NODELAY` set and small websocket
//! buffers.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::extract::ws::{CloseFrame, Message as WsMessage, WebSocket, WebSocketUpgrade};
use axum::extract::{Query, State};
use axum::http::{StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use futures::SinkExt;
use room_core::{BusinessId, Role, RoomId, RoomKey, Terminal, Uin};
use roomkit::service::{Outbound, RoomService};
use roomkit::ticket::{JoinTicket, KeyRing};
use serde::Deserialize;
use tokio::net::TcpListener;

/// The business id the demo uses.
pub const DEMO_BID: BusinessId = BusinessId(1);

/// The largest websocket message accepted from a client; a larger one
/// closes the socket with 1009. (The service answers frames over its own
/// `max_frame`, 4 KiB, with a `too_large` error frame and keeps the
/// connection.)
pub const MAX_CLIENT_MESSAGE: usize = 64 * 1024;

/// Bounds on the edge's connections.
#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
pub struct Limits {
    /// How long a client may take to send its request's headers.
    pub header_timeout: Duration,
    /// Open connections from one address.
    pub per_ip: usize,
    /// Open connections in all.
    pub total: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits { header_timeout: Duration::from_secs(5), per_ip: 2_000, total: 100_000 }
    }
}

/// How the edge serves: its connection bounds and the host API's key.
#[derive(Clone, Default)]
#[non_exhaustive]
pub struct EdgeOptions {
    /// Bounds on connections.
    pub limits: Limits,
    /// The bearer key of the host API (`/api/v1`); `None` (or empty)
    /// leaves the API off, its routes answering 404.
    pub api_key: Option<String>,
}

impl EdgeOptions {
    /// With the host API on, behind `key`.
    pub fn with_api_key(mut self, key: impl Into<String>) -> Self {
        self.api_key = Some(key.into());
        self
    }

    /// With `limits`.
    pub fn with_limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
        self
    }
}

impl std::fmt::Debug for EdgeOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The key is a secret: say only whether there is one.
        f.debug_struct("EdgeOptions")
            .field("limits", &self.limits)
            .field("api_key", &self.api_key.as_ref().map(|_| ".."))
            .finish()
    }
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

#[derive(Clone)]
struct App {
    service: RoomService,
    keys: Arc<KeyRing>,
    page: Option<&'static str>,
}

/// Serves `service` on `listener` with the default [`Limits`] (returns at
/// once). `page`: the HTML served at `/`, if any.
pub fn serve(
    listener: TcpListener,
    service: RoomService,
    keys: Arc<KeyRing>,
    page: Option<&'static str>,
) -> std::io::Result<SocketAddr> {
    serve_with(listener, service, keys, page, Limits::default())
}

/// [`serve`] with `limits` (the host API off).
pub fn serve_with(
    listener: TcpListener,
    service: RoomService,
    keys: Arc<KeyRing>,
    page: Option<&'static str>,
    limits: Limits,
) -> std::io::Result<SocketAddr> {
    serve_with_options(listener, service, keys, page, EdgeOptions::default().with_limits(limits))
}

/// [`serve`] with `options`: limits, and the host API when a key is given.
pub fn serve_with_options(
    listener: TcpListener,
    service: RoomService,
    keys: Arc<KeyRing>,
    page: Option<&'static str>,
    options: EdgeOptions,
) -> std::io::Result<SocketAddr> {
    let addr = listener.local_addr()?;
    let api_key = options.api_key.as_deref().and_then(crate::host_api::ApiKey::new);
    match (&api_key, &options.api_key) {
        (Some(_), Some(key)) if key.len() < 16 => {
            tracing::warn!(%addr, "the host API's key is shorter than 16 characters: easy to guess");
        }
        (Some(_), _) => tracing::info!(%addr, "host API on at {}", crate::host_api::PREFIX),
        (None, Some(_)) => tracing::warn!(%addr, "the host API's key is empty: the API stays off"),
        (None, None) => tracing::debug!(%addr, "host API off (no key)"),
    }
    crate::metrics::install();
    crate::metrics::spawn_upkeep();
    let app = App { service: service.clone(), keys, page };
    let router = Router::new()
        .route("/", get(index))
        .route("/roomkit.js", get(roomkit_js))
        .route("/ticket", get(ticket))
        .route("/ws", get(ws))
        .route("/healthz", get(health))
        .route("/metrics", get(scrape))
        .with_state(app)
        .merge(crate::host_api::router(service, api_key));
    tokio::spawn(accept(listener, router, options.limits));
    Ok(addr)
}

/// Open connections, per address and in all.
#[derive(Debug, Default)]
struct Open {
    by_ip: std::collections::HashMap<std::net::IpAddr, usize>,
    total: usize,
}

/// Gives a connection's place back when it ends.
struct Slot {
    open: Arc<parking_lot::Mutex<Open>>,
    ip: std::net::IpAddr,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut open = self.open.lock();
        open.total -= 1;
        if let Some(n) = open.by_ip.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                open.by_ip.remove(&self.ip);
            }
        }
    }
}

/// Accepts connections within `limits` and serves each over HTTP/1.1 with
/// upgrades (websockets).
async fn accept(listener: TcpListener, router: Router, limits: Limits) {
    let open = Arc::new(parking_lot::Mutex::new(Open::default()));
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                // Out of descriptors, say: wait a moment rather than spin.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let slot = {
            let mut o = open.lock();
            let mine = o.by_ip.get(&peer.ip()).copied().unwrap_or(0);
            if o.total >= limits.total || mine >= limits.per_ip {
                drop(stream);
                continue;
            }
            o.total += 1;
            *o.by_ip.entry(peer.ip()).or_insert(0) += 1;
            Slot { open: open.clone(), ip: peer.ip() }
        };
        let _ = stream.set_nodelay(true);
        let service = hyper_util::service::TowerToHyperService::new(router.clone());
        tokio::spawn(async move {
            let mut http = hyper::server::conn::http1::Builder::new();
            http.timer(hyper_util::rt::TokioTimer::new()).header_read_timeout(limits.header_timeout);
            let conn = http.serve_connection(hyper_util::rt::TokioIo::new(stream), service).with_upgrades();
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, %peer, "connection ended");
            }
            drop(slot);
        });
    }
}

async fn index(State(app): State<App>) -> Response {
    match app.page {
        Some(page) => ([(header::CACHE_CONTROL, "no-store")], Html(page)).into_response(),
        None => (StatusCode::NOT_FOUND, "no page here").into_response(),
    }
}

/// The JavaScript client SDK (`@roomkit/client`, clients/js), served as it
/// is (one ES module, no build step) for the classroom page.
pub const ROOMKIT_JS: &str = include_str!("../../clients/js/roomkit.js");

/// `GET /roomkit.js`: the JavaScript client SDK.
async fn roomkit_js() -> Response {
    let headers = [(header::CONTENT_TYPE, "text/javascript; charset=utf-8"), (header::CACHE_CONTROL, "no-cache")];
    (headers, ROOMKIT_JS).into_response()
}

async fn health(State(app): State<App>) -> Response {
    let s = app.service.stats();
    let body = serde_json::json!({
        "node": app.service.id().0,
        "view": app.service.view().iter().map(|n| n.0).collect::<Vec<_>>(),
        "connections": s.connections,
        "sessions": s.sessions,
        "rooms": s.rooms,
        "refilled": s.refilled,
        "restored": s.restored,
        "timed_out": s.timed_out,
    });
    ([(header::CONTENT_TYPE, "application/json")], body.to_string()).into_response()
}

/// `GET /metrics`: the process's metrics, sampled now, for Prometheus.
async fn scrape(State(app): State<App>) -> Response {
    let body = crate::metrics::render(&app.service);
    ([(header::CONTENT_TYPE, crate::metrics::CONTENT_TYPE)], body).into_response()
}

/// A `/ticket` query.
#[derive(Debug, Deserialize)]
pub struct TicketQuery {
    room: u64,
    uin: u64,
    role: String,
    #[serde(default)]
    terminal: Option<String>,
}

/// The demo's stand-in for a business backend: it would check the user's
/// login and enrolment before issuing; here anyone may be anyone.
async fn ticket(State(app): State<App>, Query(q): Query<TicketQuery>) -> Response {
    let Ok(role) = q.role.parse::<Role>() else {
        return (StatusCode::BAD_REQUEST, "unknown role").into_response();
    };
    if q.uin == 0 {
        // 0 is the sender of the room's own messages.
        return (StatusCode::BAD_REQUEST, "uin 0 is reserved for the system").into_response();
    }
    let terminal = match q.terminal.as_deref().unwrap_or("web").parse::<Terminal>() {
        Ok(t) => t,
        Err(_) => return (StatusCode::BAD_REQUEST, "unknown terminal").into_response(),
    };
    let text = demo_ticket(&app.keys, q.room, q.uin, role, terminal);
    let body = serde_json::json!({ "ticket": text });
    ([(header::CONTENT_TYPE, "application/json")], body.to_string()).into_response()
}

#[derive(Debug, Deserialize)]
struct WsQuery {
    #[serde(default)]
    room: Option<String>,
    #[serde(default)]
    ticket: Option<String>,
}

async fn ws(State(app): State<App>, Query(q): Query<WsQuery>, upgrade: WebSocketUpgrade) -> Response {
    // A missing or bad room or ticket is refused like any entry: in the
    // protocol, on the socket (an error frame, then 4001).
    let entry = match (q.room.as_deref().map(str::parse::<u64>), q.ticket) {
        (Some(Ok(room)), Some(ticket)) => Ok((RoomKey::new(DEMO_BID, RoomId(room)), ticket)),
        (Some(Err(_)), _) => Err("the room is not a number"),
        (None, _) => Err("no room given"),
        (_, None) => Err("no ticket given"),
    };
    upgrade
        .max_message_size(MAX_CLIENT_MESSAGE)
        // Small buffers: most frames are a few hundred bytes, and a class
        // holds tens of thousands of sockets.
        .read_buffer_size(8 * 1024)
        .write_buffer_size(8 * 1024)
        .on_upgrade(move |mut socket| async move {
            match entry {
                Ok((room, ticket)) => session(app, room, ticket, socket).await,
                Err(why) => refuse(&mut socket, why).await,
            }
        })
}

/// Tells the client its entry was refused, and closes.
async fn refuse(socket: &mut WebSocket, why: &str) {
    let frame = roomkit::wire::error_frame(roomkit::wire::codes::ENTRY_REFUSED, why);
    let text = String::from_utf8_lossy(&frame).into_owned();
    let _ = socket.send(WsMessage::Text(text.into())).await;
    let _ = socket.send(close(4001, "entry refused")).await;
}

/// Frames written to a socket in one go, at most.
const WRITE_BATCH: usize = 64;

/// A frame of the service as a websocket text message: the service's
/// frames are UTF-8 JSON, so the bytes are checked and shared, not copied.
fn text_message(frame: Outbound) -> WsMessage {
    let bytes = frame.into_text();
    match axum::extract::ws::Utf8Bytes::try_from(bytes.clone()) {
        Ok(text) => WsMessage::Text(text),
        // Never from the service; a binary frame rather than a lost one.
        Err(_) => WsMessage::Binary(bytes),
    }
}

/// A close frame with the service's code and reason.
fn close(code: u16, reason: &str) -> WsMessage {
    WsMessage::Close(Some(CloseFrame { code, reason: reason.to_owned().into() }))
}

async fn session(app: App, room: RoomKey, ticket: String, mut socket: WebSocket) {
    let mut conn = match app.service.connect(room, &ticket) {
        Ok(c) => c,
        Err(e) => {
            // Nothing entered: tell the client why and close.
            return refuse(&mut socket, &e.to_string()).await;
        }
    };
    tracing::debug!(member = %conn.member, role = %conn.role, "connected");
    loop {
        tokio::select! {
            out = conn.outbound.recv() => match out {
                Some(Outbound::Close(reason)) => {
                    let _ = socket.send(close(reason.close_code(), reason.as_str())).await;
                    break;
                }
                Some(frame) => {
                    // Every frame already waiting goes out with this one in
                    // one write (up to a batch, for fairness between sockets).
                    let mut closing = None;
                    let mut ok = socket.feed(text_message(frame)).await.is_ok();
                    for _ in 1..WRITE_BATCH {
                        if !ok {
                            break;
                        }
                        match conn.outbound.try_recv() {
                            Ok(Outbound::Close(reason)) => {
                                closing = Some(reason);
                                break;
                            }
                            Ok(frame) => ok = socket.feed(text_message(frame)).await.is_ok(),
                            Err(_) => break,
                        }
                    }
                    if let Some(reason) = closing {
                        let _ = socket.send(close(reason.close_code(), reason.as_str())).await;
                        break;
                    }
                    if !ok || socket.flush().await.is_err() {
                        break;
                    }
                }
                // The service let the connection go.
                None => break,
            },
            incoming = socket.recv() => match incoming {
                Some(Ok(WsMessage::Text(text))) => {
                    let _ = app.service.handle_text(conn.id, text.as_str());
                }
                Some(Ok(WsMessage::Binary(_))) => {
                    let _ = app.service.handle_text(conn.id, "binary frames are not part of the protocol");
                }
                Some(Err(e)) => {
                    // A message over the limit (or a broken stream): say so
                    // if the socket still takes it.
                    tracing::debug!(error = %e, member = %conn.member, "websocket error");
                    let _ = socket.send(close(1009, "message too big or malformed")).await;
                    break;
                }
                Some(Ok(WsMessage::Close(_))) | None => break,
                Some(Ok(_)) => {}
            },
        }
    }
    app.service.disconnect(conn.id);
    // Let a close frame we sent reach the client before the socket drops.
    tokio::time::sleep(Duration::from_millis(1)).await;
    tracing::debug!(member = %conn.member, "left");
}
