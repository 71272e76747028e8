//! The JSON wire protocol between the room service and clients
//! (documented in [`crate::protocol`]), and the push codec that encodes
//! message bodies once in it.
//!
//! ```
//! use room_service::wire::{ClientMsg, ServerFrame, codes};
//!
//! // What a client sends, typed (unknown fields and kinds are refused).
//! let msg: ClientMsg = serde_json::from_str(r#"{"t":"card_answer","option":1}"#)?;
//! assert_eq!(msg, ClientMsg::CardAnswer { option: 1 });
//! assert!(serde_json::from_str::<ClientMsg>(r#"{"t":"teleport"}"#).is_err());
//!
//! // What the server answers, rendered once.
//! let frame = ServerFrame::error(codes::RATE_LIMITED, "slow down");
//! let text = frame.to_bytes();
//! assert!(text.starts_with(br#"{"t":"error","code":"rate_limited""#));
//! # Ok::<(), serde_json::Error>(())
//! ```

use std::fmt::Write as _;

use bytes::{BufMut, Bytes, BytesMut};
use room_core::{Role, RoomKey, Terminal};
use room_push::{AckReply, CheckAnswer, Codec, Envelope, FrameHeader, FrameKind, Kind};
use serde::{Deserialize, Serialize};

/// Message kinds the room service uses on the push layer.
pub mod kinds {
    use room_push::Kind;

    /// A chat line. Data: `{"text"}`.
    pub const CHAT: Kind = Kind(1);
    /// What the teacher says. Data: `{"text"}`.
    pub const TEACHER_SAY: Kind = Kind(2);
    /// Raised hands changed. Data: `{"op","uin","queue"}`.
    pub const HAND: Kind = Kind(3);
    /// Flowers (reaction kind).
    pub const FLOWER: Kind = Kind(4);
    /// Likes (reaction kind).
    pub const LIKE: Kind = Kind(5);
    /// Answer card opened, tallied or closed. Data: `{"op",...}`.
    pub const CARD: Kind = Kind(6);
    /// Red packet sent or its state. Data: `{"op",...}`.
    pub const PACKET: Kind = Kind(7);
    /// The member sidebar: counts by role and, for small rooms, the list.
    pub const ROSTER: Kind = Kind(8);
    /// A user's own mute switched. Data: `{"on"}`.
    pub const MUTED: Kind = Kind(9);
    /// The room's interaction state (what is open now), sent when a
    /// room's new owner restored it. Data: `{"hands","card","packets","muted","flowers","likes"}`.
    pub const STATE: Kind = Kind(10);
    /// The first kind a host may use for its own messages (up to
    /// `Kind::RESERVED_FROM - 1`); below it are Roomkit's.
    pub const HOST_FIRST: Kind = Kind(256);
}

/// The codes of error frames (`{"t":"error","code"}`), one source for the
/// server and [`crate::protocol`] (a test holds them equal).
pub mod codes {
    /// Not JSON, an unknown `t`, fields missing, extra or out of range.
    pub const MALFORMED: &str = "malformed";
    /// A frame over the service's `max_frame`.
    pub const TOO_LARGE: &str = "too_large";
    /// A text over `max_text`.
    pub const TEXT_TOO_LONG: &str = "text_too_long";
    /// The role may not do this.
    pub const NOT_ALLOWED: &str = "not_allowed";
    /// The room refused it.
    pub const REFUSED: &str = "refused";
    /// Over a limit (with `retry_after_ms`).
    pub const RATE_LIMITED: &str = "rate_limited";
    /// Chat while muted.
    pub const MUTED: &str = "muted";
    /// An ack beyond what was sent.
    pub const BAD_RECOVERY: &str = "bad_recovery";
    /// Sent before the welcome.
    pub const NOT_ENTERED: &str = "not_entered";
    /// The connection is gone.
    pub const GONE: &str = "gone";
    /// The room's owner did not answer in time.
    pub const UNAVAILABLE: &str = "unavailable";
    /// The entry was refused.
    pub const ENTRY_REFUSED: &str = "entry_refused";
    /// The host removed this member from the room for a while: its entries
    /// are refused until then.
    pub const BANNED: &str = "banned";
    /// The entry's ticket was revoked by the host (ask for a new one).
    pub const REVOKED: &str = "revoked";
    /// A `custom` message of a kind the host did not register.
    pub const UNKNOWN_KIND: &str = "unknown_kind";
    /// The host's filter refused a `custom` message.
    pub const VETOED: &str = "vetoed";

    /// Every code.
    pub const ALL: &[&str] = &[
        MALFORMED,
        TOO_LARGE,
        TEXT_TOO_LONG,
        NOT_ALLOWED,
        REFUSED,
        RATE_LIMITED,
        MUTED,
        BAD_RECOVERY,
        NOT_ENTERED,
        GONE,
        UNAVAILABLE,
        ENTRY_REFUSED,
        BANNED,
        REVOKED,
        UNKNOWN_KIND,
        VETOED,
    ];
}

/// What a client sends. Unknown `t` values and malformed frames get an
/// error frame.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "t", rename_all = "snake_case", deny_unknown_fields)]
#[non_exhaustive]
pub enum ClientMsg {
    /// A heartbeat.
    Beat,
    /// A chat line.
    Chat {
        /// The text.
        text: String,
    },
    /// The teacher speaks to the room (reliable, sequenced).
    Say {
        /// The text.
        text: String,
    },
    /// Raise, lower, invite or dismiss a hand.
    Hand {
        /// `raise`, `lower`, `invite` or `dismiss`.
        op: HandOp,
        /// Whose hand, for invite and dismiss.
        #[serde(default)]
        uin: Option<u64>,
    },
    /// Flowers or likes.
    React {
        /// `flower` or `like`.
        kind: ReactKind,
        /// How many (1 if absent).
        #[serde(default = "one")]
        n: u32,
    },
    /// Open an answer card.
    CardOpen {
        /// Number of options.
        options: u8,
        /// The correct option, if any.
        #[serde(default)]
        correct: Option<u8>,
        /// Seconds until the deadline, if any.
        #[serde(default)]
        seconds: Option<u32>,
    },
    /// Answer the open card.
    CardAnswer {
        /// The option chosen (0 = A).
        option: u8,
    },
    /// Close the open card.
    CardClose,
    /// Send a red packet.
    PacketSend {
        /// Units in it.
        amount: u64,
        /// Shares.
        count: u32,
    },
    /// Grab a share of a red packet.
    PacketGrab {
        /// The packet.
        id: u64,
    },
    /// Switch the room's mute-all.
    MuteAll {
        /// On or off.
        on: bool,
    },
    /// Mute or unmute one user.
    Mute {
        /// The user.
        uin: u64,
        /// On or off.
        on: bool,
    },
    /// Ack the last contiguous reliable sequence number.
    Ack {
        /// The epoch.
        epoch: u64,
        /// The number.
        seq: u64,
    },
    /// Ask for reliable messages after `after`.
    Check {
        /// The epoch.
        epoch: u64,
        /// The last contiguous number.
        after: u64,
    },
    /// A page of the member list.
    Members {
        /// Rows per page (at most 100).
        #[serde(default = "hundred")]
        limit: u32,
        /// The cursor from the previous page.
        #[serde(default)]
        after: Option<String>,
    },
    /// What is open in the room now (after a reset, say): answered with a
    /// `state` frame.
    State,
    /// A message of one of the host's own kinds
    /// ([`kinds`](crate::kinds)): to whom the kind's audience says.
    Custom {
        /// The kind (registered by the host).
        kind: u16,
        /// Its data, any JSON but serde_json's reserved keys
        /// (`$serde_json::private::...`), which would re-encode as
        /// something else.
        #[serde(deserialize_with = "custom_data")]
        data: serde_json::Value,
        /// The member it is for, for a kind sent to one member.
        #[serde(default)]
        to: Option<u64>,
    },
    /// Goodbye: the member leaves now on this terminal (a socket that just
    /// closes keeps its place until the heartbeat timeout, so a reconnect
    /// resumes). The connection is closed with 1000.
    Leave,
}

impl ClientMsg {
    /// A client's text frame, parsed; `None` if it is not one (the node's
    /// `handle_text` says what is wrong with it).
    pub fn from_json(text: &str) -> Option<ClientMsg> {
        serde_json::from_str(text).ok()
    }

    /// Every `t` a client may send.
    pub const TAGS: &'static [&'static str] = &[
        "beat",
        "chat",
        "say",
        "hand",
        "react",
        "card_open",
        "card_answer",
        "card_close",
        "packet_send",
        "packet_grab",
        "mute_all",
        "mute",
        "ack",
        "check",
        "members",
        "state",
        "custom",
        "leave",
    ];

    /// This message's `t`.
    pub fn tag(&self) -> &'static str {
        match self {
            ClientMsg::Beat => "beat",
            ClientMsg::Chat { .. } => "chat",
            ClientMsg::Say { .. } => "say",
            ClientMsg::Hand { .. } => "hand",
            ClientMsg::React { .. } => "react",
            ClientMsg::CardOpen { .. } => "card_open",
            ClientMsg::CardAnswer { .. } => "card_answer",
            ClientMsg::CardClose => "card_close",
            ClientMsg::PacketSend { .. } => "packet_send",
            ClientMsg::PacketGrab { .. } => "packet_grab",
            ClientMsg::MuteAll { .. } => "mute_all",
            ClientMsg::Mute { .. } => "mute",
            ClientMsg::Ack { .. } => "ack",
            ClientMsg::Check { .. } => "check",
            ClientMsg::Members { .. } => "members",
            ClientMsg::State => "state",
            ClientMsg::Custom { .. } => "custom",
            ClientMsg::Leave => "leave",
        }
    }
}

/// The reserved prefix of serde_json's own map keys: an object holding
/// one serializes as raw text, not as the object it was.
const SERDE_JSON_PRIVATE: &str = "$serde_json::private::";

fn custom_data<'de, D: serde::Deserializer<'de>>(d: D) -> Result<serde_json::Value, D::Error> {
    fn reserved(v: &serde_json::Value) -> bool {
        match v {
            serde_json::Value::Object(m) => m.iter().any(|(k, v)| k.starts_with(SERDE_JSON_PRIVATE) || reserved(v)),
            serde_json::Value::Array(a) => a.iter().any(reserved),
            _ => false,
        }
    }
    let v = serde_json::Value::deserialize(d)?;
    if reserved(&v) {
        return Err(serde::de::Error::custom(format!("data may not hold a key starting with {SERDE_JSON_PRIVATE:?}")));
    }
    Ok(v)
}

fn one() -> u32 {
    1
}

fn hundred() -> u32 {
    100
}

/// Hand operations.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum HandOp {
    /// Raise one's hand.
    Raise,
    /// Lower one's hand.
    Lower,
    /// Invite a hand to speak.
    Invite,
    /// Dismiss a hand.
    Dismiss,
}

/// Reaction kinds on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum ReactKind {
    /// Flowers.
    Flower,
    /// Likes.
    Like,
}

/// Writes `s` as a JSON string literal.
pub fn json_string(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// Encodes push bodies as JSON. Payloads must be JSON values (the room
/// service only publishes JSON it built); they are embedded as they are.
///
/// * message: `{"kind":K,"from":UIN,"data":PAYLOAD}` (`from` 0 for the system;
///   Roomkit's own signals: mute-all `{"on"}`, level `{"level"}`, sub-class move `{"uin","subclass"}`)
/// * chat batch: `[message, ...]`
/// * reactions: `{"K":TOTAL,...}`
#[derive(Debug, Clone, Copy, Default)]
pub struct JsonCodec;

fn put_message(b: &mut BytesMut, e: &Envelope) {
    let m = &e.message;
    let head = format!("{{\"kind\":{},\"from\":{},\"data\":", m.kind.0, m.sender.map_or(0, |s| s.uin.0));
    b.put_slice(head.as_bytes());
    let p = &m.payload;
    match m.kind {
        // Roomkit's own signals carry binary payloads: rendered as JSON here.
        Kind::MUTE_ALL => b.put_slice(if p.first() == Some(&1) { b"{\"on\":true}" } else { b"{\"on\":false}" }),
        Kind::LEVEL => b.put_slice(format!("{{\"level\":{}}}", p.first().copied().unwrap_or(0)).as_bytes()),
        Kind::SUBCLASS if p.len() == 10 => {
            let uin = u64::from_le_bytes(p[..8].try_into().expect("8 bytes"));
            let sub = u16::from_le_bytes([p[8], p[9]]);
            let sub = if sub == u16::MAX { "null".to_owned() } else { sub.to_string() };
            b.put_slice(format!("{{\"uin\":{uin},\"subclass\":{sub}}}").as_bytes());
        }
        k if k.is_reserved() => b.put_slice(b"null"),
        _ if p.is_empty() => b.put_slice(b"null"),
        _ => b.put_slice(p),
    }
    b.put_u8(b'}');
}

impl Codec for JsonCodec {
    fn name(&self) -> &str {
        "json"
    }

    fn encode_message(&self, envelope: &Envelope) -> Bytes {
        let mut b = BytesMut::with_capacity(48 + envelope.message.payload.len());
        put_message(&mut b, envelope);
        b.freeze()
    }

    fn encode_chat_batch(&self, _room: RoomKey, lines: &[&Envelope]) -> Bytes {
        let mut b = BytesMut::with_capacity(2 + lines.iter().map(|l| 48 + l.message.payload.len()).sum::<usize>());
        b.put_u8(b'[');
        for (i, line) in lines.iter().enumerate() {
            if i > 0 {
                b.put_u8(b',');
            }
            put_message(&mut b, line);
        }
        b.put_u8(b']');
        b.freeze()
    }

    fn encode_reactions(&self, _room: RoomKey, totals: &[(Kind, u64)]) -> Bytes {
        let mut s = String::from("{");
        for (i, (kind, total)) in totals.iter().enumerate() {
            if i > 0 {
                s.push(',');
            }
            let _ = write!(s, "\"{}\":{}", kind.0, total);
        }
        s.push('}');
        Bytes::from(s)
    }
}

fn class_name(class: room_push::Class) -> &'static str {
    match class {
        room_push::Class::Signal => "signal",
        room_push::Class::Teacher => "teacher",
        room_push::Class::Chat => "chat",
        _ => "reaction",
    }
}

fn frame_kind_name(kind: FrameKind) -> &'static str {
    match kind {
        FrameKind::Message => "msg",
        FrameKind::ChatBatch => "batch",
        FrameKind::Reactions => "reactions",
        _ => "resync",
    }
}

/// A push frame as a JSON text frame:
/// `{"t":"push","c":CLASS,"k":KIND,"e":EPOCH,"s":SEQ,"p":PREV,"b":BODY}`.
/// The body is the shared, once-encoded part; the rest is this
/// connection's header. A writer that sends the parts without joining
/// them writes [`write_push_prefix`], [`push_body`] and [`PUSH_SUFFIX`].
pub fn push_frame(header: &FrameHeader, body: &[u8]) -> Bytes {
    let mut b = BytesMut::with_capacity(PUSH_PREFIX_MAX + body.len() + PUSH_SUFFIX.len());
    write_push_prefix(header, &mut b);
    b.put_slice(push_body(body));
    b.put_slice(PUSH_SUFFIX);
    b.freeze()
}

/// The longest prefix [`write_push_prefix`] writes.
pub const PUSH_PREFIX_MAX: usize = 160;

/// What follows a push frame's body.
pub const PUSH_SUFFIX: &[u8] = b"}";

/// A push frame's per-connection part, up to and including `"b":` (at
/// most [`PUSH_PREFIX_MAX`] bytes).
pub fn write_push_prefix(header: &FrameHeader, b: &mut impl BufMut) {
    b.put_slice(b"{\"t\":\"push\",\"c\":\"");
    b.put_slice(class_name(header.class).as_bytes());
    b.put_slice(b"\",\"k\":\"");
    b.put_slice(frame_kind_name(header.kind).as_bytes());
    b.put_slice(b"\",\"e\":");
    put_decimal(b, header.epoch);
    b.put_slice(b",\"s\":");
    put_decimal(b, header.seq);
    b.put_slice(b",\"p\":");
    put_decimal(b, header.prev);
    b.put_slice(b",\"b\":");
}

/// A push frame's body as it goes on the wire (`null` when empty).
pub fn push_body(body: &[u8]) -> &[u8] {
    if body.is_empty() { b"null" } else { body }
}

fn put_decimal(b: &mut impl BufMut, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    b.put_slice(&digits[i..]);
}

/// Writes a value with its `Display` form (roles and terminals go on the
/// wire as `teacher`, `web`, ...).
mod as_text {
    pub(super) fn serialize<T: std::fmt::Display, S: serde::Serializer>(v: &T, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(v)
    }
}

/// Rendered push frames inside a `recover` answer: already JSON, embedded
/// as they are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawFrames(pub Vec<Bytes>);

impl Serialize for RawFrames {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::{Error, SerializeSeq};
        let mut seq = s.serialize_seq(Some(self.0.len()))?;
        for frame in &self.0 {
            let text = std::str::from_utf8(frame).map_err(S::Error::custom)?;
            let raw = serde_json::value::RawValue::from_string(text.to_owned()).map_err(S::Error::custom)?;
            seq.serialize_element(&raw)?;
        }
        seq.end()
    }
}

/// A value already encoded as JSON, embedded as it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawJson(pub Bytes);

impl Serialize for RawJson {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::Error;
        let text = std::str::from_utf8(&self.0).map_err(S::Error::custom)?;
        let raw = serde_json::value::RawValue::from_string(text.to_owned()).map_err(S::Error::custom)?;
        raw.serialize(s)
    }
}

/// The first frame of a connection that entered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Welcome {
    /// Who entered (from the ticket).
    pub uin: u64,
    /// Their role (from the ticket).
    #[serde(with = "as_text")]
    pub role: Role,
    /// Their terminal (from the ticket).
    #[serde(with = "as_text")]
    pub terminal: Terminal,
    /// The room's reliable sequence epoch: the client's starting point.
    pub epoch: u64,
    /// The newest reliable number the client is not owed: it starts here.
    pub head: u64,
    /// The member's sub-class (`null` for teachers and assistants).
    pub subclass: Option<u16>,
    /// How often to beat.
    pub heartbeat_ms: u64,
    /// Whether the room is muted (only staff may chat).
    pub muted: bool,
    /// Whether this member's own chat is muted.
    pub self_muted: bool,
    /// The node the client is connected to.
    pub node: u64,
}

/// The outcome of an ack (`r`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(tag = "r", rename_all = "snake_case")]
#[non_exhaustive]
pub enum AckState {
    /// The client has everything.
    Ok,
    /// Reliable messages up to `last` were sent: check if they do not arrive.
    Behind {
        /// The newest number sent to this connection.
        last: u64,
    },
    /// The client's epoch is stale: reload and continue from `head` in `e`.
    Reset {
        /// The room's epoch.
        e: u64,
        /// Where to continue from.
        head: u64,
    },
}

/// One row of a `members` page.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MemberRowWire {
    /// Who.
    pub uin: u64,
    /// Their role.
    #[serde(with = "as_text")]
    pub role: Role,
    /// Terminals they are present on.
    pub terminals: Vec<String>,
}

/// What the server sends a client besides pushed messages
/// (`{"t":"push",...}`, rendered by [`push_frame`]). Serialised with
/// [`ServerFrame::to_bytes`]; [`crate::protocol`] describes each.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "t", rename_all = "snake_case")]
#[non_exhaustive]
pub enum ServerFrame {
    /// The connection entered.
    Welcome(Welcome),
    /// Something the client sent (or its entry) was refused.
    Error {
        /// A short stable code (see [`crate::protocol`]).
        code: String,
        /// What was wrong, for people.
        message: String,
        /// For `rate_limited`: when the request would be taken.
        #[serde(skip_serializing_if = "Option::is_none")]
        retry_after_ms: Option<u64>,
    },
    /// The answer to an ack.
    Ack(AckState),
    /// The answer to a check: every reliable message for this connection
    /// after the check's `after`, up to `upto`.
    Recover {
        /// The room's epoch.
        e: u64,
        /// The end of the range covered.
        upto: u64,
        /// The messages, as push frames.
        frames: RawFrames,
    },
    /// The range asked for is no longer held: reload and continue from
    /// `head` in `e`.
    Reset {
        /// The room's epoch.
        e: u64,
        /// Where to continue from.
        head: u64,
    },
    /// What is open in the room (a card, packets, hands, mute-all), right
    /// after the welcome of a member who came in after it opened.
    State {
        /// `{"hands","card","packets","muted","flowers","likes"}`, as in
        /// the `state` signal (kind 10).
        data: RawJson,
    },
    /// An answer card answer was taken.
    Answered {
        /// The option.
        option: u8,
    },
    /// A red packet share was taken.
    Grabbed {
        /// The packet.
        id: u64,
        /// The units taken.
        amount: u64,
    },
    /// A page of the member list.
    Members {
        /// The rows.
        rows: Vec<MemberRowWire>,
        /// The cursor for the next page.
        next: Option<String>,
    },
    /// The service is closing this connection (the host removed the
    /// member or closed the room): the close with `code` follows.
    Bye {
        /// The close code that follows (4005, 4006).
        code: u16,
        /// Why, from the host.
        reason: String,
    },
}

impl ServerFrame {
    /// Every `t` of a direct reply.
    pub const TAGS: &'static [&'static str] =
        &["welcome", "error", "ack", "recover", "reset", "state", "answered", "grabbed", "members", "bye"];

    /// This frame's `t`.
    pub fn tag(&self) -> &'static str {
        match self {
            ServerFrame::Welcome(_) => "welcome",
            ServerFrame::Error { .. } => "error",
            ServerFrame::Ack(_) => "ack",
            ServerFrame::Recover { .. } => "recover",
            ServerFrame::Reset { .. } => "reset",
            ServerFrame::State { .. } => "state",
            ServerFrame::Answered { .. } => "answered",
            ServerFrame::Grabbed { .. } => "grabbed",
            ServerFrame::Members { .. } => "members",
            ServerFrame::Bye { .. } => "bye",
        }
    }

    /// The JSON text frame.
    pub fn to_bytes(&self) -> Bytes {
        // Every field is a plain value or valid JSON already: this cannot
        // fail, but a failure would still be an answer, not a panic.
        match serde_json::to_vec(self) {
            Ok(v) => Bytes::from(v),
            Err(_) => Bytes::from_static(b"{\"t\":\"error\",\"code\":\"internal\",\"message\":\"unencodable frame\"}"),
        }
    }

    /// An error frame.
    pub fn error(code: &str, message: impl Into<String>) -> ServerFrame {
        ServerFrame::Error { code: code.to_owned(), message: message.into(), retry_after_ms: None }
    }

    /// The answer to an ack.
    pub fn ack(answer: &AckReply) -> ServerFrame {
        ServerFrame::Ack(match *answer {
            AckReply::Behind { last } => AckState::Behind { last },
            AckReply::Reset { epoch, head } => AckState::Reset { e: epoch, head },
            _ => AckState::Ok,
        })
    }

    /// The answer to a check (`None` for an answer this protocol does not know).
    pub fn check(answer: &CheckAnswer) -> Option<ServerFrame> {
        match answer {
            CheckAnswer::Messages { epoch, upto, frames } => Some(ServerFrame::Recover {
                e: *epoch,
                upto: *upto,
                frames: RawFrames(frames.iter().map(|f| push_frame(&f.header, &f.body)).collect()),
            }),
            CheckAnswer::Reset { epoch, head } => Some(ServerFrame::Reset { e: *epoch, head: *head }),
            _ => None,
        }
    }
}

/// An error frame's bytes: `{"t":"error","code","message"}`.
pub fn error_frame(code: &str, message: &str) -> Bytes {
    ServerFrame::error(code, message).to_bytes()
}

/// The data of the signals the room service pushes, serialised into the
/// `data` of a push body.
pub mod data {
    use room_core::Role;
    use serde::Serialize;

    /// A chat line or a teacher's words.
    #[derive(Debug, Clone, PartialEq, Eq, Serialize)]
    pub struct Text<'a> {
        /// The text.
        pub text: &'a str,
    }

    /// Raised hands changed (kind 3).
    #[derive(Debug, Clone, PartialEq, Eq, Serialize)]
    pub struct Hand<'a> {
        /// `raise`, `lower`, `invite` or `dismiss`.
        pub op: &'static str,
        /// Whose hand.
        pub uin: u64,
        /// The queue, oldest first (at most 50).
        pub queue: &'a [u64],
    }

    /// Answer card events (kind 6).
    #[derive(Debug, Clone, PartialEq, Eq, Serialize)]
    #[serde(tag = "op", rename_all = "snake_case")]
    #[non_exhaustive]
    pub enum Card<'a> {
        /// A card opened.
        Open {
            /// The card.
            id: u64,
            /// Its options.
            options: u8,
            /// Seconds until its deadline.
            seconds: Option<u32>,
        },
        /// The live tally (staff).
        Tally {
            /// The card.
            id: u64,
            /// Answers per option.
            tally: &'a [u32],
        },
        /// The card closed.
        Result {
            /// The card.
            id: u64,
            /// Answers per option.
            tally: &'a [u32],
            /// The correct option.
            correct: Option<u8>,
            /// Learners who answered.
            answered: u32,
            /// Learners who answered correctly.
            right: u32,
        },
    }

    /// Red packet events (kind 7).
    #[derive(Debug, Clone, PartialEq, Eq, Serialize)]
    #[serde(tag = "op", rename_all = "snake_case")]
    #[non_exhaustive]
    pub enum Packet {
        /// A packet was sent.
        Open {
            /// The packet.
            id: u64,
            /// Units in it.
            amount: u64,
            /// Shares.
            count: u32,
        },
        /// A packet's state.
        State {
            /// The packet.
            id: u64,
            /// Units in it.
            total: u64,
            /// Shares.
            count: u32,
            /// Shares taken.
            grabbed: u32,
            /// Units taken.
            taken: u64,
        },
    }

    /// One member of a small room's sidebar.
    #[derive(Debug, Clone, PartialEq, Eq, Serialize)]
    pub struct RosterEntry {
        /// Who.
        pub uin: u64,
        /// Their role.
        #[serde(with = "super::as_text")]
        pub role: Role,
    }

    /// The member sidebar (kind 8).
    #[derive(Debug, Clone, PartialEq, Eq, Serialize)]
    pub struct Roster {
        /// Members present.
        pub total: u32,
        /// Teachers present.
        pub teacher: u32,
        /// Assistants present.
        pub assistant: u32,
        /// Students present.
        pub student: u32,
        /// Observers present.
        pub observer: u32,
        /// Everyone, for rooms up to the configured size.
        #[serde(skip_serializing_if = "Option::is_none")]
        pub list: Option<Vec<RosterEntry>>,
        /// Who came in since the last roster (at most
        /// [`MAX_ROSTER_DIFF`] changes per roster, joins and leaves together).
        pub joined: Vec<RosterEntry>,
        /// Who left since the last roster.
        pub left: Vec<u64>,
        /// More changed than the bound: a client that shows the list pages
        /// `members` again.
        pub more: bool,
    }

    /// The most joins and leaves one roster carries.
    pub const MAX_ROSTER_DIFF: usize = 200;

    /// The most raised hands a `state` frame (or a hand frame's queue)
    /// lists for the staff, oldest first.
    pub const MAX_LISTED_HANDS: usize = 50;

    /// The most rows one `members` page holds.
    pub const MAX_MEMBERS_PAGE: u32 = 100;

    /// A user's own mute (kind 9).
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
    pub struct Muted {
        /// On or off.
        pub on: bool,
    }

    /// The room's interaction state (the `state` frame, and kind 10 when a
    /// room's new owner announces it): what is open now.
    #[derive(Debug, Clone, PartialEq, Eq, Serialize)]
    pub struct State<'a> {
        /// Raised hands, oldest first: the queue (at most 50) for teachers
        /// and assistants; for a learner, its own uin if its hand is up.
        pub hands: &'a [u64],
        /// The open card, if any.
        pub card: Option<Card<'a>>,
        /// This member's answer on the open card.
        #[serde(skip_serializing_if = "Option::is_none")]
        pub answer: Option<u8>,
        /// Packets still held.
        pub packets: Vec<Packet>,
        /// What this member took from them: `[packet id, units]`.
        #[serde(skip_serializing_if = "Vec::is_empty")]
        pub grabbed: Vec<(u64, u64)>,
        /// Whether the room is muted.
        pub muted: bool,
        /// Whether this member is muted.
        #[serde(skip_serializing_if = "std::ops::Not::not")]
        pub self_muted: bool,
        /// Flowers so far.
        pub flowers: u64,
        /// Likes so far.
        pub likes: u64,
    }

    /// Serialises signal data into a push payload.
    pub fn encode<T: Serialize>(value: &T) -> bytes::Bytes {
        match serde_json::to_vec(value) {
            Ok(v) => bytes::Bytes::from(v),
            // Plain structs of numbers and strings always serialise.
            Err(_) => bytes::Bytes::from_static(b"null"),
        }
    }
}

/// The data of a chat line or a teacher's words: `{"text":TEXT}`.
pub fn text_payload(text: &str) -> Bytes {
    data::encode(&data::Text { text })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An object holding serde_json's reserved key decodes as an object
    /// but re-encodes as raw text: such data is refused, wherever it sits,
    /// and the error says why (found by fuzzing `client_wire`).
    #[test]
    fn custom_data_with_serde_jsons_reserved_key_is_refused() {
        for text in [
            r#"{"t":"custom","kind":159,"data":{"x":1,"$serde_json::private::RawValue":"red"}}"#,
            r#"{"t":"custom","kind":159,"data":[{"a":{"$serde_json::private::Number":"1"}}]}"#,
        ] {
            let err = serde_json::from_str::<ClientMsg>(text).expect_err("refused");
            assert!(err.to_string().contains("$serde_json::private::"), "{err}");
        }
        let fine = r#"{"t":"custom","kind":159,"data":{"pen":"red","serde_json":1}}"#;
        let msg: ClientMsg = serde_json::from_str(fine).expect("any other data");
        let again = serde_json::to_string(&msg).expect("encodes");
        assert_eq!(serde_json::from_str::<ClientMsg>(&again).expect("decodes"), msg);
    }
}
