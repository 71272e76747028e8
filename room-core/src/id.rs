//! Identifiers and the keys built from them.
//!
//! Text forms (what `Display` prints and `FromStr` accepts):
//!
//! | type | form | example |
//! | --- | --- | --- |
//! | [`BusinessId`] | decimal `u32` | `7` |
//! | [`RoomId`], [`Uin`], [`NodeId`] | decimal `u64` | `100042` |
//! | [`RoomKey`] | `bid/room` | `7/100042` |
//! | [`MemberKey`] | `bid/room/uin` | `7/100042/3300117` |
//!
//! Numbers are canonical: ASCII digits only, no sign, no surrounding white
//! space, and no leading zero (except `0` itself), so that every value has
//! exactly one text form and `parse(display(x)) == x` and
//! `display(parse(s)) == s` both hold.

use std::fmt;
use std::str::FromStr;

/// Why a text form did not parse. Each variant names the component.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ParseIdError {
    /// The component was empty.
    #[error("{what}: empty")]
    Empty {
        /// Which component (for example `"room id"`).
        what: &'static str,
    },
    /// A byte that is not an ASCII digit.
    #[error("{what}: unexpected {found:?} at byte {at}, expected a decimal digit")]
    InvalidDigit {
        /// Which component.
        what: &'static str,
        /// The offending character.
        found: char,
        /// Its byte offset inside the component.
        at: usize,
    },
    /// A leading zero on a number other than `0`.
    #[error("{what}: leading zero is not allowed (the canonical form of a number has none)")]
    LeadingZero {
        /// Which component.
        what: &'static str,
    },
    /// The number does not fit.
    #[error("{what}: value exceeds the maximum {max}")]
    Overflow {
        /// Which component.
        what: &'static str,
        /// The largest accepted value.
        max: u64,
    },
    /// A key had the wrong number of `/`-separated parts.
    #[error("{what}: expected {expected} parts separated by '/', found {found}")]
    WrongPartCount {
        /// Which key type.
        what: &'static str,
        /// How many parts the form has.
        expected: usize,
        /// How many were given.
        found: usize,
    },
}

/// Parses a canonical decimal number no larger than `max`.
fn parse_decimal(s: &str, what: &'static str, max: u64) -> Result<u64, ParseIdError> {
    if s.is_empty() {
        return Err(ParseIdError::Empty { what });
    }
    let mut value: u64 = 0;
    for (at, c) in s.char_indices() {
        let digit =
            c.to_digit(10).filter(|_| c.is_ascii_digit()).ok_or(ParseIdError::InvalidDigit { what, found: c, at })?;
        if at == 0 && digit == 0 && s.len() > 1 {
            return Err(ParseIdError::LeadingZero { what });
        }
        value = value
            .checked_mul(10)
            .and_then(|v| v.checked_add(u64::from(digit)))
            .filter(|v| *v <= max)
            .ok_or(ParseIdError::Overflow { what, max })?;
    }
    Ok(value)
}

macro_rules! numeric_id {
    ($(#[$doc:meta])* $name:ident($int:ty), $what:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
        #[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize), serde(transparent))]
        pub struct $name(pub $int);

        impl $name {
            /// The raw number.
            pub const fn get(self) -> $int {
                self.0
            }
        }

        impl From<$int> for $name {
            fn from(v: $int) -> Self {
                $name(v)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Display::fmt(&self.0, f)
            }
        }

        impl FromStr for $name {
            type Err = ParseIdError;
            fn from_str(s: &str) -> Result<Self, ParseIdError> {
                let v = parse_decimal(s, $what, u64::from(<$int>::MAX))?;
                // parse_decimal bounded the value by the type's maximum.
                Ok($name(v as $int))
            }
        }
    };
}

numeric_id!(
    /// A business id (`bid`): which tenant application a room belongs to.
    /// Several businesses share one Roomkit deployment; notifications and
    /// configuration are scoped by it.
    BusinessId(u32),
    "business id"
);
numeric_id!(
    /// A room (class) id, unique within its business.
    RoomId(u64),
    "room id"
);
numeric_id!(
    /// A user id (`uin`), unique within its business.
    Uin(u64),
    "uin"
);
numeric_id!(
    /// A Roomkit node (heartbeat server, member-list replica, push node).
    NodeId(u64),
    "node id"
);

impl NodeId {
    /// A node id derived from a stable name (a host name, a pod name), with
    /// the crate's fixed hash, so every process derives the same id.
    pub fn from_name(name: &str) -> NodeId {
        NodeId(crate::hash::stable_hash_tagged(crate::hash::TAG_NODE_NAME, name.as_bytes()))
    }
}

/// A client connection at an access node: the one id that heartbeat
/// sessions and push connections share.
///
/// The 64 bits are a `tag` (16 bits, chosen by the access layer; Roomkit's
/// room service puts the id of the node that holds the connection there,
/// so a connection names its node), a `generation` (16 bits, so an id is
/// not mistaken for a later connection in the same slot) and a `slot` (32
/// bits). [`ConnId::NONE`] names no connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize), serde(transparent))]
pub struct ConnId(pub u64);

impl ConnId {
    /// No connection (a session known only from the member list, say).
    pub const NONE: ConnId = ConnId(u64::MAX);

    /// The id of `slot` in its `generation`, under `tag`.
    pub const fn new(tag: u16, generation: u16, slot: u32) -> ConnId {
        ConnId(((tag as u64) << 48) | ((generation as u64) << 32) | slot as u64)
    }

    /// The access layer's tag (the node that holds the connection, in
    /// Roomkit's room service).
    pub const fn tag(self) -> u16 {
        (self.0 >> 48) as u16
    }

    /// The generation of the slot.
    pub const fn generation(self) -> u16 {
        (self.0 >> 32) as u16
    }

    /// The slot.
    pub const fn slot(self) -> u32 {
        self.0 as u32
    }
}

impl fmt::Display for ConnId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.tag(), self.generation(), self.slot())
    }
}

/// Splits `s` on `/` into exactly `N` parts.
fn split_parts<'a, const N: usize>(s: &'a str, what: &'static str) -> Result<[&'a str; N], ParseIdError> {
    let mut parts = [""; N];
    let mut found = 0;
    for part in s.split('/') {
        if found < N {
            parts[found] = part;
        }
        found += 1;
    }
    if found != N {
        return Err(ParseIdError::WrongPartCount { what, expected: N, found });
    }
    Ok(parts)
}

/// A room in a business: the unit member lists are sharded and routed by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct RoomKey {
    /// The business.
    pub bid: BusinessId,
    /// The room within it.
    pub room: RoomId,
}

impl RoomKey {
    /// The key of `room` in business `bid`.
    pub const fn new(bid: BusinessId, room: RoomId) -> Self {
        RoomKey { bid, room }
    }

    /// The key of member `uin` in this room.
    pub const fn member(self, uin: Uin) -> MemberKey {
        MemberKey { bid: self.bid, room: self.room, uin }
    }
}

impl fmt::Display for RoomKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.bid, self.room)
    }
}

impl FromStr for RoomKey {
    type Err = ParseIdError;
    fn from_str(s: &str) -> Result<Self, ParseIdError> {
        let [bid, room] = split_parts::<2>(s, "room key")?;
        Ok(RoomKey { bid: bid.parse()?, room: room.parse()? })
    }
}

/// A user in a room of a business: the unit heartbeats are routed by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct MemberKey {
    /// The business.
    pub bid: BusinessId,
    /// The room within it.
    pub room: RoomId,
    /// The user.
    pub uin: Uin,
}

impl MemberKey {
    /// The key of user `uin` in room `room` of business `bid`.
    pub const fn new(bid: BusinessId, room: RoomId, uin: Uin) -> Self {
        MemberKey { bid, room, uin }
    }

    /// The room this member is in.
    pub const fn room_key(self) -> RoomKey {
        RoomKey { bid: self.bid, room: self.room }
    }
}

impl fmt::Display for MemberKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}/{}", self.bid, self.room, self.uin)
    }
}

impl FromStr for MemberKey {
    type Err = ParseIdError;
    fn from_str(s: &str) -> Result<Self, ParseIdError> {
        let [bid, room, uin] = split_parts::<3>(s, "member key")?;
        Ok(MemberKey { bid: bid.parse()?, room: room.parse()?, uin: uin.parse()? })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_errors_name_the_component_and_cause() {
        assert_eq!("".parse::<Uin>(), Err(ParseIdError::Empty { what: "uin" }));
        assert_eq!("12a".parse::<RoomId>(), Err(ParseIdError::InvalidDigit { what: "room id", found: 'a', at: 2 }));
        assert_eq!("+1".parse::<Uin>().unwrap_err(), ParseIdError::InvalidDigit { what: "uin", found: '+', at: 0 });
        assert_eq!("007".parse::<Uin>(), Err(ParseIdError::LeadingZero { what: "uin" }));
        assert_eq!("0".parse::<Uin>(), Ok(Uin(0)));
        assert_eq!(
            "4294967296".parse::<BusinessId>(),
            Err(ParseIdError::Overflow { what: "business id", max: u64::from(u32::MAX) })
        );
        assert_eq!("4294967295".parse::<BusinessId>(), Ok(BusinessId(u32::MAX)));
        assert_eq!(
            "18446744073709551616".parse::<NodeId>().unwrap_err(),
            ParseIdError::Overflow { what: "node id", max: u64::MAX }
        );
        assert_eq!(
            "1/2".parse::<MemberKey>(),
            Err(ParseIdError::WrongPartCount { what: "member key", expected: 3, found: 2 })
        );
        assert_eq!(
            "1/2/3".parse::<RoomKey>(),
            Err(ParseIdError::WrongPartCount { what: "room key", expected: 2, found: 3 })
        );
        assert_eq!("1//3".parse::<MemberKey>(), Err(ParseIdError::Empty { what: "room id" }));
        assert_eq!("1/2/３".parse::<MemberKey>(), Err(ParseIdError::InvalidDigit { what: "uin", found: '３', at: 0 }));
    }

    #[test]
    fn keys_compose() {
        let room = RoomKey::new(BusinessId(7), RoomId(100));
        let member = room.member(Uin(9));
        assert_eq!(member.room_key(), room);
        assert_eq!(member.to_string(), "7/100/9");
        assert_eq!("7/100/9".parse::<MemberKey>(), Ok(member));
    }

    #[test]
    fn node_ids_from_names_are_stable_and_distinct() {
        assert_eq!(NodeId::from_name("hb-1"), NodeId::from_name("hb-1"));
        assert_ne!(NodeId::from_name("hb-1"), NodeId::from_name("hb-2"));
    }

    #[test]
    fn connection_ids_keep_their_parts() {
        for (tag, generation, slot) in [(0, 0, 0), (7, 1, 42), (u16::MAX, u16::MAX, u32::MAX - 1), (1, u16::MAX, 0)] {
            let id = ConnId::new(tag, generation, slot);
            assert_eq!((id.tag(), id.generation(), id.slot()), (tag, generation, slot));
            assert_ne!(id, ConnId::NONE);
        }
        assert_eq!(ConnId::new(3, 2, 1).to_string(), "3.2.1");
    }
}
