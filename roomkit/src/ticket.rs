//! Room entry tickets: signed, expiring permission to enter one room as one
//! user with one role, issued by the host's business backend and checked by
//! the room service before a connection enters.
//!
//! A ticket is text: `rk1.<payload>.<signature>`, both parts base64url
//! without padding. The payload is
//! `<bid>/<room>/<uin>/<role>/<terminal>/<expires>/<issued>/<key id>`
//! (roles and terminals in their text forms, times in Unix seconds; tickets
//! of the first form, without `<issued>`, are still accepted); the
//! signature is HMAC-SHA256 over `roomkit-ticket-v1\n` followed by the
//! payload bytes, with the key named by the key id. Keys rotate by id: a
//! [`KeyRing`] verifies with any key it holds and issues with its active one.
//!
//! A ticket's [`TicketId`] (from its signature) names it for revocation
//! ([`RoomService::revoke`](crate::service::RoomService::revoke)); its
//! issue time lets the host revoke every ticket a user was given so far.
//!
//! ```
//! use room_core::{BusinessId, Role, RoomId, RoomKey, Terminal, Uin};
//! use roomkit::ticket::{JoinTicket, KeyRing};
//!
//! let mut keys = KeyRing::new("2026-11", b"a secret of at least 16 bytes".to_vec())?;
//! let room = RoomKey::new(BusinessId(7), RoomId(100042));
//! let ticket = JoinTicket { room, uin: Uin(3300117), role: Role::Student, terminal: Terminal::Web, expires_at: 1_800_000_000 };
//! let text = keys.issue(&ticket);
//! assert_eq!(keys.verify(&text, room, 1_799_990_000)?, ticket);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::collections::BTreeMap;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use room_core::{BusinessId, Role, RoomId, RoomKey, Terminal, Uin};
use sha2::Sha256;

const PREFIX: &str = "rk1";
const DOMAIN: &[u8] = b"roomkit-ticket-v1\n";
/// The longest ticket text accepted.
pub const MAX_TICKET_LEN: usize = 512;
/// The shortest key accepted.
pub const MIN_KEY_LEN: usize = 16;

/// What a ticket lets in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JoinTicket {
    /// The room.
    pub room: RoomKey,
    /// The user.
    pub uin: Uin,
    /// The role the user enters with (never what the client claims).
    pub role: Role,
    /// The terminal the ticket was issued for.
    pub terminal: Terminal,
    /// When it stops being valid, in seconds since the Unix epoch.
    pub expires_at: u64,
}

/// A ticket's name: the first 16 bytes of its signature, written as 32
/// hex digits. Tickets differ in it unless every field is the same (the
/// same user, room, role, terminal, expiry and second of issue make the
/// same ticket).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TicketId(pub [u8; 16]);

impl TicketId {
    /// The id of ticket text, read without verifying it (the host that
    /// issued the ticket names it for revocation).
    pub fn of(text: &str) -> Result<TicketId, TicketError> {
        if text.len() > MAX_TICKET_LEN {
            return Err(TicketError::Malformed("too long"));
        }
        let sig = text.rsplit('.').next().unwrap_or_default();
        let bytes = URL_SAFE_NO_PAD.decode(sig).map_err(|_| TicketError::Malformed("signature is not base64url"))?;
        let first: [u8; 16] =
            bytes.get(..16).and_then(|b| b.try_into().ok()).ok_or(TicketError::Malformed("signature too short"))?;
        Ok(TicketId(first))
    }
}

impl std::fmt::Display for TicketId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl std::str::FromStr for TicketId {
    type Err = TicketError;

    fn from_str(s: &str) -> Result<TicketId, TicketError> {
        let bad = TicketError::Malformed("a ticket id is 32 hex digits");
        // Hex digits only: `from_str_radix` would also take a `+` sign.
        if s.len() != 32 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(bad);
        }
        let mut id = [0u8; 16];
        for (i, b) in id.iter_mut().enumerate() {
            *b = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).map_err(|_| bad.clone())?;
        }
        Ok(TicketId(id))
    }
}

/// A ticket that passed every check, with what names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verified {
    /// What it lets in.
    pub ticket: JoinTicket,
    /// Its name.
    pub id: TicketId,
    /// When it was issued (Unix seconds); `None` for tickets of the first
    /// form, which did not say.
    pub issued_at: Option<u64>,
}

/// Why a ticket does not let anyone in.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TicketError {
    /// Not ticket text (wrong shape, bad base64, a field that does not parse).
    #[error("malformed ticket: {0}")]
    Malformed(&'static str),
    /// Signed with a key this ring does not hold (retired, or never ours).
    #[error("ticket signed with unknown key {0:?}")]
    UnknownKey(String),
    /// The signature does not match: the ticket was altered or forged.
    #[error("ticket signature does not match")]
    BadSignature,
    /// Past its expiry.
    #[error("ticket expired at {expired_at} (now {now})")]
    Expired {
        /// Its expiry.
        expired_at: u64,
        /// The time of the check.
        now: u64,
    },
    /// Valid much further ahead than tickets are issued for.
    #[error("ticket valid until {expires_at}, beyond the allowed lifetime")]
    TooLong {
        /// Its expiry.
        expires_at: u64,
    },
    /// Issued for another room.
    #[error("ticket is for room {ticket}, not {wanted}")]
    WrongRoom {
        /// The ticket's room.
        ticket: RoomKey,
        /// The room being entered.
        wanted: RoomKey,
    },
}

/// Why a key cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum KeyError {
    /// Shorter than [`MIN_KEY_LEN`].
    #[error("a ticket key needs at least {MIN_KEY_LEN} bytes")]
    TooShort,
    /// An id that is empty, too long, or has characters other than
    /// letters, digits, `-` and `_`.
    #[error("key id {0:?} must be 1 to 32 letters, digits, '-' or '_'")]
    BadId(String),
}

/// Ticket keys by id: verify with any, issue with the active one.
///
/// The business backend issues a ticket for each entry; the service
/// verifies it against the room the client asks for. Rotation: add the new
/// key active, keep the old one until its last tickets have expired.
///
/// ```
/// use room_core::{BusinessId, Role, RoomId, RoomKey, Terminal, Uin};
/// use roomkit::ticket::{JoinTicket, KeyRing, TicketError};
///
/// let room = RoomKey::new(BusinessId(1), RoomId(42));
/// let now = 1_800_000_000; // Unix seconds
/// let mut keys = KeyRing::new("2026-11", b"a secret of at least 16 bytes".to_vec())?;
/// let ticket = keys.issue(&JoinTicket {
///     room,
///     uin: Uin(3300117),
///     role: Role::Student,
///     terminal: Terminal::Web,
///     expires_at: now + 600,
/// });
/// assert_eq!(keys.verify(&ticket, room, now)?.uin, Uin(3300117));
///
/// // Another room, or too late: refused with a typed error.
/// let other = RoomKey::new(BusinessId(1), RoomId(43));
/// assert!(matches!(keys.verify(&ticket, other, now), Err(TicketError::WrongRoom { .. })));
/// assert!(keys.verify(&ticket, room, now + 601).is_err());
///
/// // Rotation: new tickets use the new key; old ones still verify.
/// keys.add("2026-12", b"the next secret, 16+ bytes".to_vec(), true)?;
/// assert!(keys.verify(&ticket, room, now).is_ok());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone)]
pub struct KeyRing {
    keys: BTreeMap<String, Vec<u8>>,
    active: String,
    max_lifetime: u64,
}

impl std::fmt::Debug for KeyRing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print key material.
        f.debug_struct("KeyRing")
            .field("ids", &self.keys.keys().collect::<Vec<_>>())
            .field("active", &self.active)
            .finish()
    }
}

fn check_id(id: &str) -> Result<(), KeyError> {
    let ok = (1..=32).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if ok { Ok(()) } else { Err(KeyError::BadId(id.to_owned())) }
}

impl KeyRing {
    /// A ring with one key, active. Tickets may be valid for at most 24 hours.
    pub fn new(id: &str, key: Vec<u8>) -> Result<Self, KeyError> {
        check_id(id)?;
        if key.len() < MIN_KEY_LEN {
            return Err(KeyError::TooShort);
        }
        Ok(KeyRing { keys: BTreeMap::from([(id.to_owned(), key)]), active: id.to_owned(), max_lifetime: 24 * 3600 })
    }

    /// Adds (or replaces) a key; `activate` makes it the one new tickets use.
    pub fn add(&mut self, id: &str, key: Vec<u8>, activate: bool) -> Result<(), KeyError> {
        check_id(id)?;
        if key.len() < MIN_KEY_LEN {
            return Err(KeyError::TooShort);
        }
        self.keys.insert(id.to_owned(), key);
        if activate {
            self.active = id.to_owned();
        }
        Ok(())
    }

    /// Retires a key: tickets signed with it stop working. The active key
    /// cannot be retired (activate another first); returns whether it was.
    pub fn retire(&mut self, id: &str) -> bool {
        id != self.active && self.keys.remove(id).is_some()
    }

    /// Tickets expiring more than `seconds` after the check are refused.
    pub fn with_max_lifetime(mut self, seconds: u64) -> Self {
        self.max_lifetime = seconds;
        self
    }

    fn mac(key: &[u8], payload: &[u8]) -> Hmac<Sha256> {
        let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes keys of any length");
        mac.update(DOMAIN);
        mac.update(payload);
        mac
    }

    /// The ticket's text, signed with the active key, issued now (the
    /// system clock).
    pub fn issue(&self, t: &JoinTicket) -> String {
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
        self.issue_at(t, now)
    }

    /// The ticket's text, signed with the active key, issued at
    /// `issued_at` (Unix seconds).
    pub fn issue_at(&self, t: &JoinTicket, issued_at: u64) -> String {
        let payload = format!(
            "{}/{}/{}/{}/{}/{}/{}/{}",
            t.room.bid.0, t.room.room.0, t.uin.0, t.role, t.terminal, t.expires_at, issued_at, self.active
        );
        let key = &self.keys[&self.active];
        let signature = Self::mac(key, payload.as_bytes()).finalize().into_bytes();
        format!("{PREFIX}.{}.{}", URL_SAFE_NO_PAD.encode(payload), URL_SAFE_NO_PAD.encode(signature))
    }

    /// Checks `text` for entering `room` at `now` (Unix seconds): shape,
    /// key, signature (compared in constant time), expiry, lifetime, room.
    /// Only a ticket that passes every check is returned.
    pub fn verify(&self, text: &str, room: RoomKey, now: u64) -> Result<JoinTicket, TicketError> {
        self.verify_full(text, room, now).map(|v| v.ticket)
    }

    /// As [`verify`](Self::verify), with the ticket's id and issue time.
    pub fn verify_full(&self, text: &str, room: RoomKey, now: u64) -> Result<Verified, TicketError> {
        if text.len() > MAX_TICKET_LEN {
            return Err(TicketError::Malformed("too long"));
        }
        let mut parts = text.split('.');
        let (Some(prefix), Some(payload_b64), Some(sig_b64), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(TicketError::Malformed("expected rk1.<payload>.<signature>"));
        };
        if prefix != PREFIX {
            return Err(TicketError::Malformed("unknown ticket version"));
        }
        let payload =
            URL_SAFE_NO_PAD.decode(payload_b64).map_err(|_| TicketError::Malformed("payload is not base64url"))?;
        let signature =
            URL_SAFE_NO_PAD.decode(sig_b64).map_err(|_| TicketError::Malformed("signature is not base64url"))?;
        let payload = std::str::from_utf8(&payload).map_err(|_| TicketError::Malformed("payload is not UTF-8"))?;
        let key_id = payload.rsplit('/').next().unwrap_or_default();
        let key = self.keys.get(key_id).ok_or_else(|| TicketError::UnknownKey(key_id.chars().take(32).collect()))?;
        Self::mac(key, payload.as_bytes()).verify_slice(&signature).map_err(|_| TicketError::BadSignature)?;
        // Signed by us: the fields are ours, but still parsed strictly.
        let fields: Vec<&str> = payload.split('/').collect();
        let (bid, room_id, uin, role, terminal, expires, issued) = match fields[..] {
            [bid, room_id, uin, role, terminal, expires, issued, _kid] => {
                (bid, room_id, uin, role, terminal, expires, Some(issued))
            }
            [bid, room_id, uin, role, terminal, expires, _kid] => (bid, room_id, uin, role, terminal, expires, None),
            _ => return Err(TicketError::Malformed("expected seven or eight fields")),
        };
        let number = |s: &str, what| s.parse::<u64>().map_err(|_| TicketError::Malformed(what));
        let ticket = JoinTicket {
            room: RoomKey::new(
                BusinessId(bid.parse().map_err(|_| TicketError::Malformed("bid"))?),
                RoomId(number(room_id, "room")?),
            ),
            uin: Uin(number(uin, "uin")?),
            role: role.parse().map_err(|_| TicketError::Malformed("role"))?,
            terminal: terminal.parse().map_err(|_| TicketError::Malformed("terminal"))?,
            expires_at: number(expires, "expiry")?,
        };
        if now >= ticket.expires_at {
            return Err(TicketError::Expired { expired_at: ticket.expires_at, now });
        }
        if ticket.expires_at - now > self.max_lifetime {
            return Err(TicketError::TooLong { expires_at: ticket.expires_at });
        }
        if ticket.room != room {
            return Err(TicketError::WrongRoom { ticket: ticket.room, wanted: room });
        }
        let issued_at = issued.map(|s| number(s, "issue time")).transpose()?;
        let id = TicketId(signature.get(..16).and_then(|b| b.try_into().ok()).ok_or(TicketError::BadSignature)?);
        Ok(Verified { ticket, id, issued_at })
    }
}
