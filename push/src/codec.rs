//! Wire formats: how a message body is encoded, once, for every recipient.
//!
//! A push node encodes each message once per wire format it serves and
//! hands every recipient the same [`Bytes`]. The only per-recipient part is
//! the [`FrameHeader`] (sequence number, previous sequence number, epoch),
//! three integers a connector writes in front of the shared body.

use std::fmt;

use bytes::{BufMut, Bytes, BytesMut};
use room_core::RoomKey;

use crate::envelope::Envelope;
use crate::message::{Class, Kind};

/// What a frame carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(rename_all = "kebab-case"))]
#[non_exhaustive]
pub enum FrameKind {
    /// One message ([`Codec::encode_message`]).
    Message,
    /// Several chat lines merged over a short window ([`Codec::encode_chat_batch`]).
    ChatBatch,
    /// The room's reaction totals ([`Codec::encode_reactions`]).
    Reactions,
    /// No body: reliable messages for this connection were dropped (its
    /// queue overflowed) or the room's sequence restarted; the client should
    /// check from its last contiguous sequence number (with `epoch`).
    Resync,
}

/// The per-recipient part of a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct FrameHeader {
    /// What the body is.
    pub kind: FrameKind,
    /// The class of the message(s).
    pub class: Class,
    /// The room's sequence epoch.
    pub epoch: u64,
    /// For reliable messages: the message's sequence number. For a resync
    /// marker: the newest sequence number the node has for this connection.
    /// 0 otherwise.
    pub seq: u64,
    /// For reliable messages: the sequence number of the previous reliable
    /// message sent to this connection (0 if none). A client whose last
    /// contiguous number is not `prev` has missed something and checks.
    pub prev: u64,
}

/// Encodes bodies for one wire format. Implementations must be pure:
/// the same input gives the same bytes.
pub trait Codec: Send + Sync + fmt::Debug {
    /// A short name for logs ("binary", "json").
    fn name(&self) -> &str;
    /// The body of one message.
    fn encode_message(&self, envelope: &Envelope) -> Bytes;
    /// The body of a chat batch, lines in acceptance order.
    fn encode_chat_batch(&self, room: RoomKey, lines: &[&Envelope]) -> Bytes;
    /// The body of a room's reaction totals, by kind.
    fn encode_reactions(&self, room: RoomKey, totals: &[(Kind, u64)]) -> Bytes;
}

/// A compact little-endian format.
///
/// * message: kind `u16`, sender uin `u64` (0 for the system), payload length `u32`, payload.
/// * chat batch: line count `u32`, then per line: kind `u16`, sender uin `u64`, payload length `u32`, payload.
/// * reactions: entry count `u32`, then per entry: kind `u16`, total `u64`.
#[derive(Debug, Clone, Copy, Default)]
pub struct BinaryCodec;

fn put_line(b: &mut BytesMut, e: &Envelope) {
    let m = &e.message;
    b.put_u16_le(m.kind.0);
    b.put_u64_le(m.sender.map_or(0, |s| s.uin.0));
    b.put_u32_le(m.payload.len() as u32);
    b.put_slice(&m.payload);
}

impl Codec for BinaryCodec {
    fn name(&self) -> &str {
        "binary"
    }

    fn encode_message(&self, envelope: &Envelope) -> Bytes {
        let mut b = BytesMut::with_capacity(14 + envelope.message.payload.len());
        put_line(&mut b, envelope);
        b.freeze()
    }

    fn encode_chat_batch(&self, _room: RoomKey, lines: &[&Envelope]) -> Bytes {
        let len: usize = lines.iter().map(|l| 14 + l.message.payload.len()).sum();
        let mut b = BytesMut::with_capacity(4 + len);
        b.put_u32_le(lines.len() as u32);
        for line in lines {
            put_line(&mut b, line);
        }
        b.freeze()
    }

    fn encode_reactions(&self, _room: RoomKey, totals: &[(Kind, u64)]) -> Bytes {
        let mut b = BytesMut::with_capacity(4 + totals.len() * 10);
        b.put_u32_le(totals.len() as u32);
        for (kind, total) in totals {
            b.put_u16_le(kind.0);
            b.put_u64_le(*total);
        }
        b.freeze()
    }
}
