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
use axum::extract::{Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use room_core::{BusinessId, Role, RoomId, RoomKey, Terminal, Uin};
use roomkit::service::RoomService;
use roomkit::ticket::{JoinTicket, KeyRing};
use roomkit::websocket::SocketOptions;
use serde::Deserialize;
use tokio::net::{TcpListener, TcpStream};

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

/// A connection's place, handed to its websocket session when it
/// upgrades (the HTTP connection ends there; the place must not).
#[derive(Clone, Default)]
struct SlotCell(Arc<parking_lot::Mutex<Option<Slot>>>);

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
        let cell = SlotCell(Arc::new(parking_lot::Mutex::new(Some(slot))));
        let per_request = (router.clone(), cell.clone());
        // Each request carries the connection's place (a websocket takes
        // it); the router is shared, not rebuilt per connection.
        let service = hyper::service::service_fn(move |mut request: hyper::Request<hyper::body::Incoming>| {
            let (mut router, cell) = per_request.clone();
            request.extensions_mut().insert(cell);
            async move {
                type Req = hyper::Request<hyper::body::Incoming>;
                std::future::poll_fn(|cx| <Router as tower_service::Service<Req>>::poll_ready(&mut router, cx)).await?;
                <Router as tower_service::Service<Req>>::call(&mut router, request).await
            }
        });
        tokio::spawn(async move {
            let mut http = hyper::server::conn::http1::Builder::new();
            http.timer(hyper_util::rt::TokioTimer::new()).header_read_timeout(limits.header_timeout);
            let conn = http.serve_connection(hyper_util::rt::TokioIo::new(stream), service).with_upgrades();
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, %peer, "connection ended");
            }
            // Unless a websocket took it, the place is free again.
            drop(cell);
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

/// `GET /ws`: the upgrade to the classroom protocol. The handshake is
/// answered here; the socket is then served by [`roomkit::websocket`],
/// straight on the TCP stream.
async fn ws(
    State(app): State<App>,
    Query(q): Query<WsQuery>,
    axum::Extension(cell): axum::Extension<SlotCell>,
    mut request: Request,
) -> Response {
    let accept = match upgrade_key(request.headers()) {
        Ok(key) => roomkit::websocket::accept_key(key.as_bytes()),
        Err(refusal) => return refusal,
    };
    // A missing or bad room or ticket is refused like any entry: in the
    // protocol, on the socket (an error frame, then 4001).
    let entry = match (q.room.as_deref().map(str::parse::<u64>), q.ticket) {
        (Some(Ok(room)), Some(ticket)) => Ok((RoomKey::new(DEMO_BID, RoomId(room)), ticket)),
        (Some(Err(_)), _) => Err("the room is not a number"),
        (None, _) => Err("no room given"),
        (_, None) => Err("no ticket given"),
    };
    let upgrade = hyper::upgrade::on(&mut request);
    let slot = cell.0.lock().take();
    tokio::spawn(async move {
        let _slot = slot;
        let (stream, preread) = match upgrade.await.map(|u| u.downcast::<hyper_util::rt::TokioIo<TcpStream>>()) {
            // Copied out: the bytes read past the handshake (usually none)
            // share hyper's whole read buffer, which must not live as long
            // as the socket.
            Ok(Ok(parts)) => (parts.io.into_inner(), parts.read_buf.to_vec()),
            Ok(Err(_)) => return tracing::warn!("an upgraded connection that is not a TCP stream"),
            Err(e) => return tracing::debug!(error = %e, "the upgrade failed"),
        };
        let options = SocketOptions::default().max_message(MAX_CLIENT_MESSAGE);
        match entry {
            Ok((room, ticket)) => {
                let ended = roomkit::websocket::serve(&app.service, stream, &preread, room, &ticket, &options).await;
                tracing::debug!(?ended, "websocket ended");
            }
            Err(why) => roomkit::websocket::refuse(stream, why, &options).await,
        }
    });
    let mut response = Response::new(axum::body::Body::empty());
    *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let headers = response.headers_mut();
    headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    if let Ok(value) = HeaderValue::from_str(&accept) {
        headers.insert(header::SEC_WEBSOCKET_ACCEPT, value);
    }
    response
}

/// The client's `Sec-WebSocket-Key`, if the request is a websocket upgrade
/// this server speaks (version 13); the answer to give it otherwise.
#[allow(clippy::result_large_err)]
fn upgrade_key(headers: &HeaderMap) -> Result<&str, Response> {
    let has_token = |name: header::HeaderName, token: &str| {
        headers
            .get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .any(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
    };
    if !has_token(header::UPGRADE, "websocket") || !has_token(header::CONNECTION, "upgrade") {
        return Err((
            StatusCode::UPGRADE_REQUIRED,
            [(header::UPGRADE, "websocket")],
            "a websocket upgrade is expected here",
        )
            .into_response());
    }
    if headers.get(header::SEC_WEBSOCKET_VERSION).map(HeaderValue::as_bytes) != Some(b"13") {
        return Err((
            StatusCode::UPGRADE_REQUIRED,
            [(header::SEC_WEBSOCKET_VERSION, "13")],
            "websocket version 13 is the one spoken here",
        )
            .into_response());
    }
    match headers.get(header::SEC_WEBSOCKET_KEY).and_then(|v| v.to_str().ok()) {
        // A key is 16 random bytes in base64: 24 characters.
        Some(key) if !key.is_empty() && key.len() <= 64 => Ok(key),
        _ => Err((StatusCode::BAD_REQUEST, "no valid Sec-WebSocket-Key").into_response()),
    }
}
