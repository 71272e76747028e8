//! The host API: the room service's business-backend requests over HTTP,
//! for a backend written in another language. JSON in and out, every
//! route under `/api/v1`, described by `docs/openapi.json` (served at
//! `GET /api/v1/openapi.json`) and introduced in `docs/HOST_API.md`.
//!
//! | route | does |
//! | --- | --- |
//! | `POST /api/v1/businesses/{bid}/rooms/{room}/messages` | [`RoomService::publish`] |
//! | `GET /api/v1/businesses/{bid}/rooms/{room}/members/{uin}` | [`RoomService::presence`] |
//! | `GET /api/v1/businesses/{bid}/rooms/{room}/counts` | [`RoomService::counts`] |
//! | `GET /api/v1/businesses/{bid}/rooms/{room}/members` | [`RoomService::members`] |
//! | `POST /api/v1/businesses/{bid}/rooms/{room}/members/{uin}/kick` | [`RoomService::kick`] |
//! | `POST /api/v1/businesses/{bid}/rooms/{room}/revocations` | [`RoomService::revoke`] |
//! | `POST /api/v1/businesses/{bid}/rooms/{room}/close` | [`RoomService::close_room`] |
//!
//! Every route but the document's wants `Authorization: Bearer <key>`;
//! without a key configured the API is off and its routes answer 404. A
//! refusal is `{"error": "<code>", "message": "..."}` with its status:
//! 400 `bad_request`, 401 `unauthorized`, 404 `not_found`, 405
//! `method_not_allowed`, 413 `too_large`, 429 `rate_limited` (with
//! `Retry-After`), 503 `unavailable`.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, RawPathParams, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderValue, StatusCode, Uri, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use room_core::{BusinessId, MemberKey, Role, RoleSet, RoomId, RoomKey, Terminal, TerminalSet, Uin};
use room_memberlist::{Cursor, MemberRow, PageQuery, PageStart};
use room_push::{Class, Kind, SubclassId, Target};
use roomkit::host::{HostError, MAX_BAN_MS, MAX_REASON, Revocation};
use roomkit::service::RoomService;
use roomkit::ticket::TicketId;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// The OpenAPI 3.0.3 document of this API, exactly as served at
/// `GET /api/v1/openapi.json`.
pub const OPENAPI_JSON: &str = include_str!("../../docs/openapi.json");

/// Where every route of the API lives.
pub const PREFIX: &str = "/api/v1";

/// The largest request body read; a larger one is answered 413.
pub const MAX_BODY: usize = 64 * 1024;

/// The longest ban or revocation, in seconds (the service's 30 days).
pub const MAX_SECONDS: u64 = MAX_BAN_MS / 1000;

/// The most rows a member page holds.
pub const MAX_PAGE: usize = PageQuery::MAX_LIMIT;

/// Rows in a member page when the request names no `limit`.
pub const DEFAULT_PAGE: usize = 100;

/// The longest error message (a serde message can quote the input).
const MAX_MESSAGE: usize = 300;

/// The bearer key the API wants. Only its SHA-256 digest is kept, so
/// comparing takes the same time whatever the presented key's length or
/// content, and the key never shows in logs (`Debug` says nothing of it).
#[derive(Clone)]
pub struct ApiKey {
    digest: [u8; 32],
}

impl std::fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ApiKey(..)")
    }
}

impl ApiKey {
    /// A key from its text; `None` for an empty one (which would let
    /// anyone in).
    pub fn new(key: &str) -> Option<ApiKey> {
        if key.is_empty() {
            return None;
        }
        Some(ApiKey { digest: Sha256::digest(key.as_bytes()).into() })
    }

    /// Whether `presented` is the key, in constant time.
    pub fn matches(&self, presented: &[u8]) -> bool {
        let digest: [u8; 32] = Sha256::digest(presented).into();
        bool::from(self.digest.ct_eq(&digest))
    }
}

/// The API's routes, to merge into a server's router. With `key` `None`
/// the API is off: the document is still served, every other route
/// answers 404 `not_found`.
pub fn router(service: RoomService, key: Option<ApiKey>) -> Router {
    let api = match key {
        Some(key) => {
            let key = Arc::new(key);
            Router::new()
                .route("/businesses/{bid}/rooms/{room}/messages", post(publish))
                .route("/businesses/{bid}/rooms/{room}/members/{uin}", get(presence))
                .route("/businesses/{bid}/rooms/{room}/counts", get(counts))
                .route("/businesses/{bid}/rooms/{room}/members", get(members))
                .route("/businesses/{bid}/rooms/{room}/members/{uin}/kick", post(kick))
                .route("/businesses/{bid}/rooms/{room}/revocations", post(revoke))
                .route("/businesses/{bid}/rooms/{room}/close", post(close))
                // After routing, so that an unknown path is a 404 whether
                // or not the caller has the key.
                .route_layer(axum::middleware::from_fn_with_state(key, require_key))
                .with_state(service)
                .fallback(no_route)
        }
        None => Router::new().fallback(api_off),
    };
    let api = api
        .route("/openapi.json", get(document))
        .method_not_allowed_fallback(wrong_method)
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY));
    Router::new().nest(PREFIX, api)
}

/// A refused request: its status, code and message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
    retry_after_secs: Option<u64>,
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        let mut message: String = message.into();
        if message.len() > MAX_MESSAGE {
            let mut end = MAX_MESSAGE;
            while !message.is_char_boundary(end) {
                end -= 1;
            }
            message.truncate(end);
            message.push_str("...");
        }
        ApiError { status, code, message, retry_after_secs: None }
    }

    /// 400 `bad_request`.
    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }

    /// The HTTP status.
    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// The error code in the body.
    pub fn code(&self) -> &'static str {
        self.code
    }
}

impl From<HostError> for ApiError {
    fn from(e: HostError) -> ApiError {
        match e {
            HostError::Bad(message) => ApiError::bad_request(message),
            HostError::RateLimited { retry_after_ms } => {
                let mut error = ApiError::new(StatusCode::TOO_MANY_REQUESTS, "rate_limited", e.to_string());
                // Whole seconds, rounded up: retrying early is refused again.
                error.retry_after_secs = Some(retry_after_ms.div_ceil(1000).max(1));
                error
            }
            // NotReady, Unavailable, and whatever later versions add: the
            // request may succeed if asked again.
            other => {
                let mut error = ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", other.to_string());
                error.retry_after_secs = Some(1);
                error
            }
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        tracing::info!(status = self.status.as_u16(), code = self.code, message = %self.message, "host API request refused");
        let body = axum::Json(json!({ "error": self.code, "message": self.message }));
        let mut response = (self.status, body).into_response();
        let headers = response.headers_mut();
        if let Some(secs) = self.retry_after_secs {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        if self.status == StatusCode::UNAUTHORIZED {
            headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}

/// Lets a request through only with the key.
async fn require_key(State(key): State<Arc<ApiKey>>, request: Request, next: Next) -> Response {
    let presented = request.headers().get(header::AUTHORIZATION).map(HeaderValue::as_bytes).and_then(|value| {
        // The scheme's name is case-insensitive (RFC 9110, 11.1).
        let (scheme, token) = value.split_at_checked(7)?;
        scheme.eq_ignore_ascii_case(b"bearer ").then_some(token)
    });
    match presented {
        Some(token) if key.matches(token) => next.run(request).await,
        Some(_) => ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", "the bearer key is not this server's")
            .into_response(),
        None => ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", "Authorization: Bearer <key> is missing")
            .into_response(),
    }
}

async fn document() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], OPENAPI_JSON).into_response()
}

async fn no_route() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such route")
}

async fn api_off() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "not_found", "the host API is off on this server (no key is set)")
}

async fn wrong_method() -> ApiError {
    ApiError::new(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed", "the route does not take this method")
}

/// The room (and member, where the route names one) of a request's path.
struct RoomPath {
    room: RoomKey,
    uin: Option<Uin>,
}

impl RoomPath {
    fn member(&self) -> Result<MemberKey, ApiError> {
        // Only routes with `{uin}` ask for the member.
        self.uin.map(|uin| self.room.member(uin)).ok_or_else(|| ApiError::bad_request("the path names no member"))
    }
}

impl<S: Send + Sync> FromRequestParts<S> for RoomPath {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<RoomPath, ApiError> {
        let params =
            RawPathParams::from_request_parts(parts, state).await.map_err(|e| ApiError::bad_request(e.body_text()))?;
        let (mut bid, mut room, mut uin) = (None, None, None);
        for (name, value) in &params {
            match name {
                "bid" => bid = Some(BusinessId(decimal(name, value)?)),
                "room" => room = Some(RoomId(decimal(name, value)?)),
                "uin" => uin = Some(Uin(decimal(name, value)?)),
                _ => {}
            }
        }
        match (bid, room) {
            (Some(bid), Some(room)) => Ok(RoomPath { room: RoomKey::new(bid, room), uin }),
            _ => Err(ApiError::bad_request("the path names no room")),
        }
    }
}

/// A path number: decimal digits only (no sign, no spaces) that fit `T`.
fn decimal<T: std::str::FromStr>(name: &str, value: &str) -> Result<T, ApiError> {
    let bad = || {
        let range = std::any::type_name::<T>();
        ApiError::bad_request(format!("{name} {value:?} is not a whole number within {range}"))
    };
    if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    value.parse().map_err(|_| bad())
}

/// A JSON body, read within [`MAX_BODY`] and parsed strictly.
struct JsonBody<T>(T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<JsonBody<T>, ApiError> {
        let bytes = Bytes::from_request(request, state).await.map_err(|e| {
            if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "too_large", format!("the body is over {MAX_BODY} bytes"))
            } else {
                ApiError::bad_request(e.body_text())
            }
        })?;
        serde_json::from_slice(&bytes)
            .map(JsonBody)
            .map_err(|e| ApiError::bad_request(format!("the body does not fit: {e}")))
    }
}

/// For optional fields: absent is `None`, but an explicit `null` is
/// refused like any other value of the wrong type (the document does not
/// allow it).
fn present<'de, D: Deserializer<'de>, T: Deserialize<'de>>(d: D) -> Result<Option<T>, D::Error> {
    T::deserialize(d).map(Some)
}

/// The classes a host may publish (reactions are members' counters).
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "lowercase")]
enum ClassName {
    Signal,
    Teacher,
    Chat,
}

impl From<ClassName> for Class {
    fn from(c: ClassName) -> Class {
        match c {
            ClassName::Signal => Class::Signal,
            ClassName::Teacher => Class::Teacher,
            ClassName::Chat => Class::Chat,
        }
    }
}

/// `POST .../messages`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PublishBody {
    kind: u16,
    class: ClassName,
    data: Value,
    #[serde(default, deserialize_with = "present")]
    to: Option<Audience>,
}

/// Who a published message is for (everyone in the room when absent).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Audience {
    #[serde(default, deserialize_with = "present")]
    users: Option<Vec<u64>>,
    #[serde(default, deserialize_with = "present")]
    roles: Option<Vec<String>>,
    #[serde(default, deserialize_with = "present")]
    terminals: Option<Vec<String>>,
    #[serde(default, deserialize_with = "present")]
    subclass: Option<u16>,
}

impl Audience {
    fn target(self) -> Result<Target, ApiError> {
        let mut target = match self.users {
            Some(users) if users.is_empty() => return Err(ApiError::bad_request("to.users is empty")),
            Some(users) if users.len() > Target::MAX_USERS => {
                return Err(ApiError::bad_request(format!("to.users lists over {} users", Target::MAX_USERS)));
            }
            Some(users) => Target::users(users.into_iter().map(Uin)),
            None => Target::room(),
        };
        if let Some(roles) = self.roles {
            target = target.roles(roles_of(roles.iter().map(String::as_str), "to.roles")?);
        }
        if let Some(terminals) = self.terminals {
            target = target.terminals(terminals_of(terminals.iter().map(String::as_str), "to.terminals")?);
        }
        if let Some(subclass) = self.subclass {
            // u16::MAX stands for "no sub-class" on the wire.
            if subclass == u16::MAX {
                return Err(ApiError::bad_request("to.subclass is at most 65534"));
            }
            target = target.subclass(SubclassId(subclass));
        }
        target.validate().map_err(|e| ApiError::bad_request(e.to_string()))?;
        Ok(target)
    }
}

fn roles_of<'a>(names: impl Iterator<Item = &'a str>, field: &str) -> Result<RoleSet, ApiError> {
    let mut set = RoleSet::EMPTY;
    for name in names {
        set.insert(name.parse::<Role>().map_err(|e| ApiError::bad_request(format!("{field}: {e}")))?);
    }
    if set.is_empty() {
        return Err(ApiError::bad_request(format!("{field} names no role")));
    }
    Ok(set)
}

fn terminals_of<'a>(names: impl Iterator<Item = &'a str>, field: &str) -> Result<TerminalSet, ApiError> {
    let mut set = TerminalSet::EMPTY;
    for name in names {
        set.insert(name.parse::<Terminal>().map_err(|e| ApiError::bad_request(format!("{field}: {e}")))?);
    }
    if set.is_empty() {
        return Err(ApiError::bad_request(format!("{field} names no terminal")));
    }
    Ok(set)
}

async fn publish(
    State(service): State<RoomService>,
    path: RoomPath,
    JsonBody(body): JsonBody<PublishBody>,
) -> Result<Response, ApiError> {
    let kind = Kind(body.kind);
    if kind.0 < roomkit::wire::kinds::HOST_FIRST.0 || kind.is_reserved() {
        return Err(ApiError::bad_request(format!(
            "kind {} is not a host's: use {} to {}",
            kind.0,
            roomkit::wire::kinds::HOST_FIRST.0,
            Kind::RESERVED_FROM - 1
        )));
    }
    let target = match body.to {
        Some(audience) => audience.target()?,
        None => Target::room(),
    };
    let data = serde_json::to_vec(&body.data).map_err(|e| ApiError::bad_request(format!("data: {e}")))?;
    let (epoch, seq) = service.publish(path.room, target, body.class.into(), kind, data.into()).await?;
    Ok(axum::Json(json!({ "epoch": epoch, "seq": seq })).into_response())
}

fn row_json(row: &MemberRow) -> Value {
    json!({
        "uin": row.uin.0,
        "role": row.role.to_string(),
        "terminals": row.terminals.iter().map(|t| t.as_str()).collect::<Vec<_>>(),
        "joined_us": row.joined.as_micros(),
    })
}

async fn presence(State(service): State<RoomService>, path: RoomPath) -> Result<Response, ApiError> {
    let body = match service.presence(path.member()?).await? {
        Some(row) => {
            let mut v = row_json(&row);
            v["present"] = Value::Bool(true);
            v
        }
        None => json!({ "present": false, "terminals": [] }),
    };
    Ok(axum::Json(body).into_response())
}

async fn counts(State(service): State<RoomService>, path: RoomPath) -> Result<Response, ApiError> {
    let counts = service.counts(path.room).await?;
    let roles: serde_json::Map<String, Value> = counts.by_role().map(|(r, n)| (r.to_string(), n.into())).collect();
    let terminals: serde_json::Map<String, Value> = Terminal::ALL
        .into_iter()
        .map(|t| (t, counts.terminal(t)))
        .filter(|&(_, n)| n > 0)
        .map(|(t, n)| (t.as_str().to_owned(), n.into()))
        .collect();
    Ok(axum::Json(json!({ "total": counts.total(), "roles": roles, "terminals": terminals })).into_response())
}

/// `GET .../members` query.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct MembersQuery {
    #[serde(default)]
    roles: Option<String>,
    #[serde(default)]
    terminals: Option<String>,
    #[serde(default)]
    limit: Option<usize>,
    #[serde(default)]
    after: Option<String>,
}

/// Bytes from hex digits (either case).
fn unhex(text: &str) -> Option<Vec<u8>> {
    // from_str_radix alone would take a sign ("+f").
    if !text.len().is_multiple_of(2) || !text.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    (0..text.len() / 2).map(|i| u8::from_str_radix(text.get(2 * i..2 * i + 2)?, 16).ok()).collect()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

async fn members(State(service): State<RoomService>, path: RoomPath, uri: Uri) -> Result<Response, ApiError> {
    let axum::extract::Query(q) =
        axum::extract::Query::<MembersQuery>::try_from_uri(&uri).map_err(|e| ApiError::bad_request(e.body_text()))?;
    let limit = q.limit.unwrap_or(DEFAULT_PAGE);
    if !(1..=MAX_PAGE).contains(&limit) {
        return Err(ApiError::bad_request(format!("limit {limit} is not within 1 to {MAX_PAGE}")));
    }
    let mut query = PageQuery::first(limit);
    if let Some(roles) = &q.roles {
        query = query.roles(roles_of(roles.split(','), "roles")?);
    }
    if let Some(terminals) = &q.terminals {
        query = query.terminals(terminals_of(terminals.split(','), "terminals")?);
    }
    if let Some(after) = &q.after {
        let bits: [u8; 17] = unhex(after)
            .and_then(|b| b.try_into().ok())
            .ok_or_else(|| ApiError::bad_request("after is not a cursor: 34 hex digits"))?;
        query = query.start(PageStart::After(Cursor::from_bits(bits)));
    }
    let (rows, next) = service.members(path.room, query).await?;
    let rows: Vec<Value> = rows.iter().map(row_json).collect();
    let next = next.map(|c| hex(&c.to_bits()));
    Ok(axum::Json(json!({ "rows": rows, "next": next })).into_response())
}

fn check_reason(reason: &str) -> Result<(), ApiError> {
    let len = reason.chars().count();
    if len > MAX_REASON {
        return Err(ApiError::bad_request(format!("reason of {len} characters is over {MAX_REASON}")));
    }
    Ok(())
}

fn check_seconds(field: &str, seconds: u64) -> Result<Duration, ApiError> {
    if seconds > MAX_SECONDS {
        return Err(ApiError::bad_request(format!("{field} {seconds} is over {MAX_SECONDS} (30 days)")));
    }
    Ok(Duration::from_secs(seconds))
}

/// `POST .../members/{uin}/kick`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct KickBody {
    reason: String,
    #[serde(default, deserialize_with = "present")]
    ban_seconds: Option<u64>,
}

async fn kick(
    State(service): State<RoomService>,
    path: RoomPath,
    JsonBody(body): JsonBody<KickBody>,
) -> Result<Response, ApiError> {
    check_reason(&body.reason)?;
    let ban = body.ban_seconds.map(|s| check_seconds("ban_seconds", s)).transpose()?;
    let was_present = service.kick(path.member()?, &body.reason, ban).await?;
    Ok(axum::Json(json!({ "was_present": was_present })).into_response())
}

/// `POST .../revocations`: exactly one of `ticket`, `ticket_id`, `uin`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RevokeBody {
    #[serde(default, deserialize_with = "present")]
    ticket: Option<String>,
    #[serde(default, deserialize_with = "present")]
    ticket_id: Option<String>,
    #[serde(default, deserialize_with = "present")]
    uin: Option<u64>,
    for_seconds: u64,
}

async fn revoke(
    State(service): State<RoomService>,
    path: RoomPath,
    JsonBody(body): JsonBody<RevokeBody>,
) -> Result<Response, ApiError> {
    let keep = check_seconds("for_seconds", body.for_seconds)?;
    let what = match (body.ticket, body.ticket_id, body.uin) {
        (Some(text), None, None) => Revocation::Ticket(ticket_id_of(&text)?.0),
        (None, Some(id), None) => {
            let bytes: [u8; 16] = unhex(&id)
                .and_then(|b| b.try_into().ok())
                .ok_or_else(|| ApiError::bad_request("ticket_id is not 32 hex digits"))?;
            Revocation::Ticket(bytes)
        }
        (None, None, Some(uin)) => Revocation::User(Uin(uin)),
        _ => return Err(ApiError::bad_request("name exactly one of ticket, ticket_id and uin")),
    };
    service.revoke(path.room, what, keep).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// The id of a ticket's text, which must look as issued:
/// `rk1.<payload>.<signature>`, base64url, a 32-byte signature (43
/// characters), as the document's pattern says.
fn ticket_id_of(text: &str) -> Result<TicketId, ApiError> {
    let bad = |why: &str| ApiError::bad_request(format!("ticket: {why}"));
    let base64url = |part: &str| part.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if text.len() > roomkit::ticket::MAX_TICKET_LEN {
        return Err(bad("too long"));
    }
    let mut parts = text.split('.');
    match (parts.next(), parts.next(), parts.next(), parts.next()) {
        (Some("rk1"), Some(payload), Some(signature), None)
            if !payload.is_empty() && base64url(payload) && signature.len() == 43 && base64url(signature) => {}
        _ => return Err(bad("not a ticket's text (rk1.<payload>.<signature>)")),
    }
    TicketId::of(text).map_err(|e| bad(&e.to_string()))
}

/// `POST .../close`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CloseBody {
    reason: String,
}

async fn close(
    State(service): State<RoomService>,
    path: RoomPath,
    JsonBody(body): JsonBody<CloseBody>,
) -> Result<Response, ApiError> {
    check_reason(&body.reason)?;
    let members = service.close_room(path.room, &body.reason).await?;
    Ok(axum::Json(json!({ "members": members })).into_response())
}
