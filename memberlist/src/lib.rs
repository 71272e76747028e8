#![doc = include_str!("../README.md")]
//!
//! ---
//!
//! Roomkit member lists: who is in each room, held in memory.
//!
//! Member lists used to live in a KV store as serialized lists (one value
//! per room, read-modify-CAS); this crate holds them in memory instead, as
//! the core of a member-list service:
//!
//! * [`LocalStore`]: bid -> room -> member, each room behind its own lock.
//!   A member has a uin, a role, the terminals it is present on, a join
//!   time and a small host-defined attribute blob.
//! * Queries: [`MemberStore::get`], O(1) [`Counts`] by role and terminal,
//!   ordered listing (role rank, then join time, then uin: teachers and
//!   assistants first) with role and terminal pre-filters, offset and
//!   cursor paging ([`PageQuery`]), and a change feed per room
//!   ([`MemberStore::changes_since`]) so a client's sidebar stays current.
//! * Merged writes: [`WriteBatcher`] gathers enter / exit / update events
//!   per room over a short window and hands them over as one batch,
//!   applied (and replicated) as one write; batches are idempotent.
//! * Multi-master replication: [`Replica`] (sans-IO) runs a room on its R
//!   owner replicas; any owner takes writes, stamped by a hybrid logical
//!   clock ([`Hlc`]); replicas converge by per-member last-writer-wins
//!   with tombstones, repair by digest anti-entropy, heal lost writes by
//!   heartbeat re-assertion ([`WriteOp::Assert`]) and, optionally, member
//!   leases at the primary; seat-limited joins go through the room's
//!   primary owner.
//! * Snapshots: [`snapshot`] dumps every room to a versioned, checksummed,
//!   per-room-framed file (written to a temporary file and renamed) and
//!   restores it, falling back to the previous good snapshot.
//!
//! # Consistency
//!
//! | operation | guarantee |
//! | --- | --- |
//! | enter, exit, update, remove | eventual: applied at one owner, replicated to the others; replicas converge to the same state once they have exchanged writes or digests. A write acknowledged by an owner that crashes before passing it on is lost: a lost entry comes back with the next heartbeat re-assertion, a lost exit when the member's lease runs out ([`ReplicaConfig::lease`]) |
//! | heartbeat re-assertion | eventual, and the repair path: writes only where the member is missing |
//! | reads (get, counts, pages, change feed) | the local replica's state: read-your-writes on the replica that took the write |
//! | checked join (seat limit) | strong: decided by the primary owner alone, confirmed only after a majority of the room's owners hold it, and refused by a new primary until it has synchronised with the other owners |
//!
//! # Bad input
//!
//! | input | behaviour |
//! | --- | --- |
//! | attributes over the cap | [`StoreError::AttrsTooLarge`], nothing written |
//! | a business not served | [`StoreError::UnknownBusiness`] |
//! | exit, remove or update of an absent member | [`StoreError::NotPresent`] for that write; the rest of the batch applies |
//! | a page of 0 or more than 1,000 rows | [`StoreError::BadLimit`] |
//! | a change-feed position that is too old, from the future or from another room instance | [`ChangeSet::Resync`] |
//! | a room over `max_room_members`, a store over `max_rooms` | typed errors; memory stays bounded |
//! | a churn storm (members leaving and others entering, for ever) | a replicated room keeps at most `max_room_members` tombstones, dropping the oldest half when over |
//! | replicated records duplicated, reordered or replayed | no effect beyond the newest write per member (LWW) |
//! | a replica sending garbage (live records with no terminal, oversized attributes, stamps far in the future, messages for rooms it does not own) | dropped and counted in [`ReplicaStats`] |
//! | a snapshot that is truncated, corrupted or from a newer format version | [`SnapshotError`]; restore falls back to the previous good snapshot |
//!
//! Roles and terminals are typed ([`room_core::Role`], [`room_core::Terminal`]);
//! text that names neither is refused when parsed.
#![forbid(unsafe_code)]
#![cfg_attr(docsrs, feature(doc_cfg))]

pub mod batch;
pub mod hlc;
pub mod member;
mod order;
pub mod replica;
mod room;
pub mod snapshot;
pub mod store;

pub use batch::{BatcherConfig, BatcherFull, WriteBatch, WriteBatcher};
pub use hlc::{Hlc, Stamp};
pub use member::{
    ChangeSet, Counts, Cursor, FeedPosition, MemberRow, PageInfo, PageQuery, PageStart, StoreError, WriteOp,
    WriteOutcome,
};
pub use replica::{JoinTicket, ReplMsg, Replica, ReplicaConfig, ReplicaEvent, ReplicaStats};
pub use room::{MemberState, Record};
pub use snapshot::SnapshotError;
pub use store::{LocalStore, MemberStore, StoreConfig};
