//! The host's side of the room service: what a business backend asks of
//! it (publish, presence, kick, close), and what it is told (events).
//!
//! A host's request may be made on any node of a cluster: it is carried
//! to the room's owner and answered from there
//! ([`RoomNode::host`](crate::RoomNode::host), answered by
//! [`Output::Host`](crate::Output::Host)). Events come from the node that
//! owns a room ([`Output::Event`](crate::Output::Event)), each numbered in
//! its room, so a consumer that hears a room's events from two nodes
//! during an ownership move can order them.

use bytes::Bytes;
use room_core::{ExitReason, MemberKey, Role, RoomKey, Terminal, Uin};
use room_memberlist::{Counts, Cursor, MemberRow, PageQuery};
use room_push::{Class, Kind, Target};
use serde::{Deserialize, Serialize};

/// The ticket an entry came with, as the host's ticket check read it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct TicketStamp {
    /// Its id (`roomkit::ticket::TicketId`).
    pub id: [u8; 16],
    /// When it was issued (Unix seconds; 0 when the ticket did not say).
    pub issued_at: u64,
}

/// Which tickets a revocation refuses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[non_exhaustive]
pub enum Revocation {
    /// This ticket.
    Ticket([u8; 16]),
    /// Every ticket of this user issued up to the revocation (tickets that
    /// do not say when they were issued count as earlier); tickets issued
    /// later are let in.
    User(Uin),
}

/// What a host asks of the room service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum HostRequest {
    /// Publishes a message of the system's (no member sends it): reliable
    /// classes are numbered and recoverable like a teacher's message.
    Publish {
        /// The room.
        room: RoomKey,
        /// Who gets it.
        target: Target,
        /// Its class (signal and teacher are reliable; chat and reactions
        /// may be shed).
        class: Class,
        /// Its kind (clients tell messages apart by it; Roomkit's own are
        /// listed in `wire::kinds`, and 0xFF00 and above are reserved).
        kind: Kind,
        /// The message's data: JSON, embedded as it is in the body clients
        /// get (`{"kind","from":0,"data"}`).
        data: Bytes,
    },
    /// Whether a member is present, with its role and terminals.
    Presence {
        /// Who.
        member: MemberKey,
    },
    /// A room's counts by role and by terminal.
    Counts {
        /// The room.
        room: RoomKey,
    },
    /// A page of a room's members, in listing order (role, join time,
    /// uin), filtered by role and terminal.
    Members {
        /// The room.
        room: RoomKey,
        /// Filters, start and size (at most
        /// [`PageQuery::MAX_LIMIT`](room_memberlist::PageQuery::MAX_LIMIT) rows).
        query: PageQuery,
    },
    /// Removes a member from its room on every terminal: its clients are
    /// told `reason` and closed (4005). With `ban_ms`, entries of the member
    /// are refused that long (`banned`).
    Kick {
        /// Who.
        member: MemberKey,
        /// Why, for the member's clients.
        reason: String,
        /// How long the member stays out, in milliseconds.
        ban_ms: Option<u64>,
    },
    /// Refuses entries of the room with the tickets `what` names, for
    /// `for_ms` (until they have expired: the host knows their lifetime).
    /// Connections already in are not closed: kick for that.
    Revoke {
        /// The room the tickets are for.
        room: RoomKey,
        /// Which tickets.
        what: Revocation,
        /// How long the revocation is kept (at most [`MAX_BAN_MS`]).
        for_ms: u64,
    },
    /// Closes a room: every member's clients are told `reason` and closed
    /// (4006), and the room's state is let go.
    CloseRoom {
        /// The room.
        room: RoomKey,
        /// Why, for the clients.
        reason: String,
    },
}

impl HostRequest {
    /// The room the request is about.
    pub fn room(&self) -> RoomKey {
        match self {
            HostRequest::Publish { room, .. }
            | HostRequest::Counts { room }
            | HostRequest::Members { room, .. }
            | HostRequest::CloseRoom { room, .. }
            | HostRequest::Revoke { room, .. } => *room,
            HostRequest::Presence { member } | HostRequest::Kick { member, .. } => member.room_key(),
        }
    }

    /// Checks what the service can check before the request leaves this
    /// node: the kind is a host's, the data is JSON, the class is not a
    /// reaction, texts and pages fit.
    pub fn validate(&self) -> Result<(), HostError> {
        let bad = |m: String| Err(HostError::Bad(m));
        match self {
            HostRequest::Publish { target, class, kind, data, .. } => {
                if kind.0 < crate::wire::kinds::HOST_FIRST.0 || kind.is_reserved() {
                    return bad(format!(
                        "kind {} is not a host's: use {} to {}",
                        kind.0,
                        crate::wire::kinds::HOST_FIRST.0,
                        Kind::RESERVED_FROM - 1
                    ));
                }
                if *class == Class::Reaction {
                    return bad("a host cannot publish reactions".into());
                }
                if let Err(e) = target.validate() {
                    return bad(e.to_string());
                }
                if let Err(e) = serde_json::from_slice::<serde::de::IgnoredAny>(data) {
                    return bad(format!("data is not JSON: {e}"));
                }
                Ok(())
            }
            HostRequest::Members { query, .. } => {
                if !(1..=PageQuery::MAX_LIMIT).contains(&query.limit) {
                    return bad(format!("limit {} is not within 1 to {}", query.limit, PageQuery::MAX_LIMIT));
                }
                Ok(())
            }
            HostRequest::Kick { reason, ban_ms, .. } => {
                check_reason(reason)?;
                match ban_ms {
                    Some(ms) if *ms > MAX_BAN_MS => bad(format!("ban of {ms} ms is over {MAX_BAN_MS} ms")),
                    _ => Ok(()),
                }
            }
            HostRequest::CloseRoom { reason, .. } => check_reason(reason),
            HostRequest::Revoke { for_ms, .. } if *for_ms > MAX_BAN_MS => {
                bad(format!("revocation of {for_ms} ms is over {MAX_BAN_MS} ms"))
            }
            HostRequest::Revoke { .. } => Ok(()),
            HostRequest::Presence { .. } | HostRequest::Counts { .. } => Ok(()),
        }
    }
}

/// The longest reason a kicked or closed client is told, in characters.
pub const MAX_REASON: usize = 200;

/// The longest ban or revocation: 30 days.
pub const MAX_BAN_MS: u64 = 30 * 24 * 3600 * 1000;

fn check_reason(reason: &str) -> Result<(), HostError> {
    let len = reason.chars().count();
    if len > MAX_REASON {
        return Err(HostError::Bad(format!("reason of {len} characters is over {MAX_REASON}")));
    }
    Ok(())
}

/// A host's answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum HostAnswer {
    /// Published: its place in the room's reliable sequence (`seq` 0 for
    /// chat, which is not numbered, and for a retried request the room's
    /// previous owner numbered before it failed, whose place was not kept).
    Published {
        /// The room's epoch.
        epoch: u64,
        /// Its number.
        seq: u64,
    },
    /// A member's presence: its row (role, terminals, join time) if present.
    Presence(Option<MemberRow>),
    /// A room's counts, by role and by terminal.
    Counts(Counts),
    /// A page of members.
    Members {
        /// The rows.
        rows: Vec<MemberRow>,
        /// Where the next page starts, if this one was full.
        next: Option<Cursor>,
    },
    /// The member was removed (or was not there).
    Kicked {
        /// Whether it was present.
        was_present: bool,
    },
    /// The revocation is in force.
    Revoked,
    /// The room was closed.
    Closed {
        /// Members it had.
        members: u32,
    },
}

/// Why a host's request was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
#[non_exhaustive]
pub enum HostError {
    /// The node has no cluster view yet.
    #[error("the node is not ready: no cluster view yet")]
    NotReady,
    /// The room's owner did not answer in time (retried meanwhile).
    #[error("the room's owner did not answer in time")]
    Unavailable,
    /// The request does not fit (a reserved kind, a payload too large, a
    /// target that names nobody, a page limit out of range).
    #[error("bad request: {0}")]
    Bad(String),
    /// Over the room's limits (retry after this long).
    #[error("rate limited: retry after {retry_after_ms} ms")]
    RateLimited {
        /// Milliseconds.
        retry_after_ms: u64,
    },
}

/// Something that happened in a room, for the host: attendance, hands,
/// answers, grabs. Numbered per room, in the order the room's owner saw
/// them: `seq` rises by one per event. A room's next owner (after a
/// failover) continues at least [`EVENT_SEQ_GAP`] further on, so a jump
/// says that events of the previous owner may be missing, and a number is
/// never given to two events.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoomEvent {
    /// The room.
    pub room: RoomKey,
    /// Its number in the room (1, 2, 3...).
    pub seq: u64,
    /// When, on the owner's clock (Unix microseconds).
    pub at: u64,
    /// What.
    pub what: EventKind,
}

/// How far a room's next owner moves its event numbers on.
pub const EVENT_SEQ_GAP: u64 = 1 << 20;

/// What happened.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum EventKind {
    /// A member entered (its first terminal).
    Entered {
        /// Who.
        uin: Uin,
        /// Its role.
        role: Role,
        /// The terminal it came in on.
        terminal: Terminal,
    },
    /// A member left (its last terminal).
    Left {
        /// Who.
        uin: Uin,
        /// Why: it closed (`Left`), its heartbeats stopped (`TimedOut`),
        /// the host removed it (`Kicked`) or closed the room (`RoomClosed`).
        reason: ExitReason,
    },
    /// A hand went up, down, was invited to speak or dismissed.
    Hand {
        /// Whose.
        uin: Uin,
        /// What happened to it.
        op: crate::wire::HandOp,
        /// Who did it (the member itself, or staff).
        by: Uin,
    },
    /// An answer card answer was taken.
    Answer {
        /// The card.
        card: u64,
        /// Who.
        uin: Uin,
        /// The option.
        option: u8,
    },
    /// An answer card closed.
    CardResult {
        /// The card.
        card: u64,
        /// Answers per option.
        tally: Vec<u32>,
        /// The correct option.
        correct: Option<u8>,
        /// Learners who answered.
        answered: u32,
        /// Learners who answered correctly.
        right: u32,
    },
    /// A red packet share was taken.
    Grab {
        /// The packet.
        packet: u64,
        /// Who.
        uin: Uin,
        /// Units.
        amount: u64,
    },
    /// The room's reaction totals changed (at most once per tally
    /// interval).
    Reactions {
        /// Flowers so far.
        flowers: u64,
        /// Likes so far.
        likes: u64,
    },
    /// The room was closed by the host.
    Closed,
}
