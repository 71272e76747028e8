//! What travels on the bus from the classroom logic to every push node: a
//! checked, sequenced [`Message`], and its binary form.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use room_core::{BusinessId, Flag, Role, RoleSet, RoomId, RoomKey, TerminalSet, Timestamp, Uin};

use crate::message::{Class, Kind, Message, Scope, Sender, SubclassId, Target};

/// A message that passed the [`Gate`](crate::Gate): checked, and for the
/// reliable classes numbered in its room's sequence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope {
    /// The room's sequence epoch. A new epoch means earlier sequence numbers
    /// mean nothing any more (the sequencer restarted).
    pub epoch: u64,
    /// The message's number in the room's reliable sequence (1, 2, 3...), or
    /// 0 for chat and reactions.
    pub seq: u64,
    /// When the gate accepted it.
    pub accepted_at: Timestamp,
    /// The message.
    pub message: Message,
}

/// Why bytes from the bus are not an [`Envelope`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// Fewer bytes than the format needs.
    #[error("envelope truncated: needed {needed} more bytes for {field}")]
    Truncated {
        /// The field being read.
        field: &'static str,
        /// Bytes missing.
        needed: usize,
    },
    /// A format version this build does not know.
    #[error("envelope format version {0} is not supported (expected 1)")]
    Version(u8),
    /// A field with a value out of range.
    #[error("envelope field {field} has an invalid value {value}")]
    Invalid {
        /// The field.
        field: &'static str,
        /// The value read.
        value: u64,
    },
    /// Bytes left over after the envelope.
    #[error("{0} bytes after the end of the envelope")]
    Trailing(usize),
}

const VERSION: u8 = 1;
const HAS_SENDER: u8 = 1;
const HAS_ROLES: u8 = 2;
const HAS_TERMINALS: u8 = 4;
const HAS_SUBCLASS: u8 = 8;
const HAS_EXCLUDE: u8 = 16;
/// An origin (a u64 after `exclude`). Added within version 1: bytes
/// without it decode as before, and an older reader refuses it as an
/// unknown flag rather than misreading it.
const HAS_ORIGIN: u8 = 32;
const KNOWN_FLAGS: u8 = HAS_SENDER | HAS_ROLES | HAS_TERMINALS | HAS_SUBCLASS | HAS_EXCLUDE | HAS_ORIGIN;
const SCOPE_ROOM: u8 = 0;
const SCOPE_USER: u8 = 1;
const SCOPE_USERS: u8 = 2;

fn role_bit(role: Role) -> u8 {
    // Role bits are 0..=63 by construction of RoleSet.
    role.bit() as u8
}

impl Envelope {
    /// The binary form (version 1, little-endian), for buses that carry bytes.
    /// A message's [`origin`](Message::origin) is written only when it is
    /// set (flag bit 32, a u64 after `exclude`), so messages without one
    /// encode as they did before origins existed.
    pub fn encode(&self) -> Bytes {
        let m = &self.message;
        let mut b = BytesMut::with_capacity(64 + m.payload.len());
        b.put_u8(VERSION);
        b.put_u32_le(m.room.bid.0);
        b.put_u64_le(m.room.room.0);
        b.put_u64_le(self.epoch);
        b.put_u64_le(self.seq);
        b.put_u64_le(self.accepted_at.as_micros());
        b.put_u8(m.class.code());
        b.put_u16_le(m.kind.0);
        let t = &m.target;
        let mut flags = 0;
        for (set, bit) in [
            (m.sender.is_some(), HAS_SENDER),
            (t.roles.is_some(), HAS_ROLES),
            (t.terminals.is_some(), HAS_TERMINALS),
            (t.subclass.is_some(), HAS_SUBCLASS),
            (t.exclude.is_some(), HAS_EXCLUDE),
            (m.origin != 0, HAS_ORIGIN),
        ] {
            if set {
                flags |= bit;
            }
        }
        b.put_u8(flags);
        if let Some(s) = m.sender {
            b.put_u64_le(s.uin.0);
            b.put_u8(role_bit(s.role));
        }
        match &t.scope {
            Scope::Room => b.put_u8(SCOPE_ROOM),
            Scope::User(u) => {
                b.put_u8(SCOPE_USER);
                b.put_u64_le(u.0);
            }
            Scope::Users(us) => {
                b.put_u8(SCOPE_USERS);
                b.put_u32_le(us.len() as u32);
                for u in us {
                    b.put_u64_le(u.0);
                }
            }
        }
        if let Some(r) = t.roles {
            b.put_u64_le(r.bits());
        }
        if let Some(ts) = t.terminals {
            b.put_u64_le(ts.bits());
        }
        if let Some(s) = t.subclass {
            b.put_u16_le(s.0);
        }
        if let Some(x) = t.exclude {
            b.put_u64_le(x.0);
        }
        if m.origin != 0 {
            b.put_u64_le(m.origin);
        }
        b.put_u32_le(m.count);
        b.put_u32_le(m.payload.len() as u32);
        b.put_slice(&m.payload);
        b.freeze()
    }

    /// Parses [`Envelope::encode`]'s output. The payload shares `bytes`.
    pub fn decode(bytes: &Bytes) -> Result<Envelope, DecodeError> {
        let mut r = Reader { buf: bytes.clone() };
        let version = r.u8("version")?;
        if version != VERSION {
            return Err(DecodeError::Version(version));
        }
        let room = RoomKey::new(BusinessId(r.u32("bid")?), RoomId(r.u64("room")?));
        let epoch = r.u64("epoch")?;
        let seq = r.u64("seq")?;
        let accepted_at = Timestamp::from_micros(r.u64("accepted_at")?);
        let class_code = r.u8("class")?;
        let class =
            Class::from_code(class_code).ok_or(DecodeError::Invalid { field: "class", value: class_code.into() })?;
        let kind = Kind(r.u16("kind")?);
        let flags = r.u8("flags")?;
        if flags & !KNOWN_FLAGS != 0 {
            return Err(DecodeError::Invalid { field: "flags", value: flags.into() });
        }
        let sender = if flags & HAS_SENDER != 0 {
            let uin = Uin(r.u64("sender.uin")?);
            let bit = r.u8("sender.role")?;
            let role =
                Role::from_bit(bit.into()).ok_or(DecodeError::Invalid { field: "sender.role", value: bit.into() })?;
            Some(Sender { uin, role })
        } else {
            None
        };
        let scope = match r.u8("scope")? {
            SCOPE_ROOM => Scope::Room,
            SCOPE_USER => Scope::User(Uin(r.u64("scope.uin")?)),
            SCOPE_USERS => {
                let n = r.u32("scope.len")? as usize;
                if n > Target::MAX_USERS {
                    return Err(DecodeError::Invalid { field: "scope.len", value: n as u64 });
                }
                let mut us = Vec::with_capacity(n);
                for _ in 0..n {
                    us.push(Uin(r.u64("scope.uins")?));
                }
                Scope::Users(us)
            }
            other => return Err(DecodeError::Invalid { field: "scope", value: other.into() }),
        };
        let roles = if flags & HAS_ROLES != 0 {
            let bits = r.u64("roles")?;
            Some(RoleSet::from_bits(bits).ok_or(DecodeError::Invalid { field: "roles", value: bits })?)
        } else {
            None
        };
        let terminals = if flags & HAS_TERMINALS != 0 {
            let bits = r.u64("terminals")?;
            Some(TerminalSet::from_bits(bits).ok_or(DecodeError::Invalid { field: "terminals", value: bits })?)
        } else {
            None
        };
        let subclass = if flags & HAS_SUBCLASS != 0 { Some(SubclassId(r.u16("subclass")?)) } else { None };
        let exclude = if flags & HAS_EXCLUDE != 0 { Some(Uin(r.u64("exclude")?)) } else { None };
        let origin = if flags & HAS_ORIGIN != 0 {
            // 0 is written as no flag: one envelope, one encoding.
            match r.u64("origin")? {
                0 => return Err(DecodeError::Invalid { field: "origin", value: 0 }),
                o => o,
            }
        } else {
            0
        };
        let count = r.u32("count")?;
        let len = r.u32("payload.len")? as usize;
        let payload = r.take("payload", len)?;
        if !r.buf.is_empty() {
            return Err(DecodeError::Trailing(r.buf.len()));
        }
        let target = Target { scope, roles, terminals, subclass, exclude };
        Ok(Envelope {
            epoch,
            seq,
            accepted_at,
            message: Message { room, class, kind, sender, target, count, payload, origin },
        })
    }
}

struct Reader {
    buf: Bytes,
}

impl Reader {
    fn need(&self, field: &'static str, n: usize) -> Result<(), DecodeError> {
        if self.buf.len() < n { Err(DecodeError::Truncated { field, needed: n - self.buf.len() }) } else { Ok(()) }
    }
    fn u8(&mut self, field: &'static str) -> Result<u8, DecodeError> {
        self.need(field, 1)?;
        Ok(self.buf.get_u8())
    }
    fn u16(&mut self, field: &'static str) -> Result<u16, DecodeError> {
        self.need(field, 2)?;
        Ok(self.buf.get_u16_le())
    }
    fn u32(&mut self, field: &'static str) -> Result<u32, DecodeError> {
        self.need(field, 4)?;
        Ok(self.buf.get_u32_le())
    }
    fn u64(&mut self, field: &'static str) -> Result<u64, DecodeError> {
        self.need(field, 8)?;
        Ok(self.buf.get_u64_le())
    }
    fn take(&mut self, field: &'static str, n: usize) -> Result<Bytes, DecodeError> {
        self.need(field, n)?;
        Ok(self.buf.split_to(n))
    }
}
