//! Stable key hashing.
//!
//! Routing must give the same answer on every process, on every platform and
//! in every future release, or a rolling upgrade would reroute every session.
//! So keys are hashed with a fixed function, never a per-process random one:
//!
//! * **Function:** XXH3-64 (`xxhash-rust`) with seed [`STABLE_HASH_SEED`].
//! * **Input:** little-endian 64-bit words. The first word holds the key
//!   kind's tag byte above the business id, `(tag << 32) | bid`; the rest
//!   are the key's fields:
//!   * [`RoomKey`]: `(b'R' << 32) | bid`, room (16 bytes);
//!   * [`MemberKey`]: `(b'M' << 32) | bid`, room, uin (24 bytes);
//!   * [`NodeId::from_name`](crate::NodeId::from_name): the byte `b'N'`, then
//!     the UTF-8 name.
//!
//!   Whole aligned words matter for speed as well as clarity: an encoding
//!   with fields at odd offsets makes the hash's 8-byte reads straddle the
//!   stores that built the buffer, and that stall cost 6x here.
//!
//! Any XXH3 implementation in any language reproduces these hashes, so a
//! host's access layer written in another language can route the same way.
//!
//! Golden-vector tests pin the outputs; changing any of the above is a
//! breaking change that moves every key.

use crate::id::{MemberKey, RoomKey};

/// The XXH3 seed of every stable hash ("Roomkit1" in ASCII).
pub const STABLE_HASH_SEED: u64 = 0x526f_6f6d_6b69_7431;

pub(crate) const TAG_ROOM: u8 = b'R';
pub(crate) const TAG_MEMBER: u8 = b'M';
pub(crate) const TAG_NODE_NAME: u8 = b'N';

/// The stable hash of raw bytes: XXH3-64 with [`STABLE_HASH_SEED`].
pub fn stable_hash(bytes: &[u8]) -> u64 {
    xxhash_rust::xxh3::xxh3_64_with_seed(bytes, STABLE_HASH_SEED)
}

/// The stable hash of `tag` followed by `bytes`.
pub(crate) fn stable_hash_tagged(tag: u8, bytes: &[u8]) -> u64 {
    let mut hasher = xxhash_rust::xxh3::Xxh3::with_seed(STABLE_HASH_SEED);
    hasher.update(&[tag]);
    hasher.update(bytes);
    hasher.digest()
}

/// A key the router can place: anything with a stable 64-bit hash.
pub trait RouteKey {
    /// The key's stable hash (see the [module docs](self) for the encoding).
    fn route_hash(&self) -> u64;
}

/// The first word of a key: its kind's tag above the business id.
#[inline]
const fn head_word(tag: u8, bid: u32) -> u64 {
    ((tag as u64) << 32) | bid as u64
}

impl RouteKey for RoomKey {
    #[inline]
    fn route_hash(&self) -> u64 {
        let mut buf = [0u8; 16];
        buf[0..8].copy_from_slice(&head_word(TAG_ROOM, self.bid.0).to_le_bytes());
        buf[8..16].copy_from_slice(&self.room.0.to_le_bytes());
        stable_hash(&buf)
    }
}

impl RouteKey for MemberKey {
    #[inline]
    fn route_hash(&self) -> u64 {
        let mut buf = [0u8; 24];
        buf[0..8].copy_from_slice(&head_word(TAG_MEMBER, self.bid.0).to_le_bytes());
        buf[8..16].copy_from_slice(&self.room.0.to_le_bytes());
        buf[16..24].copy_from_slice(&self.uin.0.to_le_bytes());
        stable_hash(&buf)
    }
}

/// A key whose stable hash the caller already computed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PreHashed(pub u64);

impl RouteKey for PreHashed {
    #[inline]
    fn route_hash(&self) -> u64 {
        self.0
    }
}

/// A fixed 64-bit finalizer (Stafford's variant 13 of MurmurHash3's fmix64):
/// a bijection with full avalanche, integer-only, so it gives the same answer
/// on every platform.
#[inline]
pub(crate) const fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{BusinessId, NodeId, RoomId, Uin};

    // Golden vectors: these outputs must never change. If this test fails,
    // the change reroutes every session and member list in every deployment.
    #[test]
    fn golden_vectors() {
        assert_eq!(stable_hash(b""), GOLDEN_EMPTY);
        assert_eq!(stable_hash(b"roomkit"), GOLDEN_ROOMKIT);
        assert_eq!(RoomKey::new(BusinessId(7), RoomId(100_042)).route_hash(), GOLDEN_ROOM);
        assert_eq!(MemberKey::new(BusinessId(7), RoomId(100_042), Uin(3_300_117)).route_hash(), GOLDEN_MEMBER);
        assert_eq!(
            MemberKey::new(BusinessId(u32::MAX), RoomId(u64::MAX), Uin(u64::MAX)).route_hash(),
            GOLDEN_MEMBER_MAX
        );
        assert_eq!(NodeId::from_name("hb-1").0, GOLDEN_NODE_NAME);
        assert_eq!(mix64(1), GOLDEN_MIX64_1);
    }

    // Cross-checked against the C reference implementation of XXH3 (python-xxhash).
    const GOLDEN_EMPTY: u64 = 0x1bb6576346c9dc33;
    const GOLDEN_ROOMKIT: u64 = 0x51a1dcb832184055;
    const GOLDEN_ROOM: u64 = 0x95875622fafdbaf3;
    const GOLDEN_MEMBER: u64 = 0xbb5a843c95ebcc23;
    const GOLDEN_MEMBER_MAX: u64 = 0xfca2dbc0114d4be2;
    const GOLDEN_NODE_NAME: u64 = 0x88661ebf72f57b10;
    const GOLDEN_MIX64_1: u64 = 0x5692161d100b05e5;

    #[test]
    fn tagged_hash_equals_hash_of_concatenation() {
        assert_eq!(stable_hash_tagged(b'N', b"hb-1"), stable_hash(b"Nhb-1"));
    }

    #[test]
    fn key_kinds_are_separated() {
        // A room key and a member key with the same leading fields differ.
        let room = RoomKey::new(BusinessId(1), RoomId(2));
        assert_ne!(room.route_hash(), room.member(Uin(0)).route_hash());
    }
}
