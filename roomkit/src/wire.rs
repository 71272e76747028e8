//! The JSON wire protocol between the room service and clients
//! (documented in docs/PROTOCOL.md), and the push codec that encodes
//! message bodies once in it.

use std::fmt::Write as _;

use bytes::{BufMut, Bytes, BytesMut};
use room_core::RoomKey;
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
/// connection's header.
pub fn push_frame(header: &FrameHeader, body: &[u8]) -> Bytes {
    let mut b = BytesMut::with_capacity(96 + body.len());
    b.put_slice(b"{\"t\":\"push\",\"c\":\"");
    b.put_slice(class_name(header.class).as_bytes());
    b.put_slice(b"\",\"k\":\"");
    b.put_slice(frame_kind_name(header.kind).as_bytes());
    b.put_slice(b"\",\"e\":");
    put_decimal(&mut b, header.epoch);
    b.put_slice(b",\"s\":");
    put_decimal(&mut b, header.seq);
    b.put_slice(b",\"p\":");
    put_decimal(&mut b, header.prev);
    b.put_slice(b",\"b\":");
    if body.is_empty() {
        b.put_slice(b"null");
    } else {
        b.put_slice(body);
    }
    b.put_u8(b'}');
    b.freeze()
}

fn put_decimal(b: &mut BytesMut, mut n: u64) {
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

/// The reply to a client's ack: `{"t":"ack","r":"ok"}`,
/// `{"t":"ack","r":"behind","last"}` or `{"t":"ack","r":"reset","e","head"}`.
pub fn ack_reply_text(answer: &AckReply) -> String {
    match *answer {
        AckReply::Behind { last } => format!("{{\"t\":\"ack\",\"r\":\"behind\",\"last\":{last}}}"),
        AckReply::Reset { epoch, head } => format!("{{\"t\":\"ack\",\"r\":\"reset\",\"e\":{epoch},\"head\":{head}}}"),
        _ => "{\"t\":\"ack\",\"r\":\"ok\"}".to_owned(),
    }
}

/// The answer to a client's check: `{"t":"recover","e","upto","frames":[push frames]}`
/// or `{"t":"reset","e","head"}` (`None` for an answer this protocol does
/// not know).
pub fn check_answer_text(answer: &CheckAnswer) -> Option<String> {
    match answer {
        CheckAnswer::Messages { epoch, upto, frames } => {
            let mut t = format!("{{\"t\":\"recover\",\"e\":{epoch},\"upto\":{upto},\"frames\":[");
            for (i, f) in frames.iter().enumerate() {
                if i > 0 {
                    t.push(',');
                }
                t.push_str(std::str::from_utf8(&push_frame(&f.header, &f.body)).unwrap_or("null"));
            }
            t.push_str("]}");
            Some(t)
        }
        CheckAnswer::Reset { epoch, head } => Some(format!("{{\"t\":\"reset\",\"e\":{epoch},\"head\":{head}}}")),
        _ => None,
    }
}

/// The data of a chat line or a teacher's words: `{"text":TEXT}`.
pub fn text_payload(text: &str) -> String {
    let mut data = String::from("{\"text\":");
    json_string(&mut data, text);
    data.push('}');
    data
}
