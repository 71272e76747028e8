//! What the nodes of a cluster say to each other.
//!
//! A [`RoomNode`](crate::RoomNode) plays three parts for three kinds of
//! key: the **access** node holds a client's connection, the **room owner**
//! (`router.route(room)`) runs the room (its gate, classroom and roster),
//! and the **session owner** (`router.route(member)`) keeps the member's
//! heartbeat session. On one node all three are the same node and these
//! messages never leave it; in a cluster they travel over a
//! [`PeerLink`](crate::transport::PeerLink) as postcard bytes
//! ([`PeerMsg::encode`], [`PeerMsg::decode`]).

use bytes::Bytes;
use room_core::{ConnId, ExitReason, MemberKey, Role, Terminal, Timestamp, Uin};
use room_memberlist::ReplMsg;
use serde::{Deserialize, Serialize};

/// The largest peer message accepted (a `Hold` of a 60,000-member room's
/// moved sessions fits comfortably).
pub const MAX_PEER_MESSAGE: usize = 4 * 1024 * 1024;

/// A message between two nodes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum PeerMsg {
    /// Access -> room owner: admit this connection.
    Enter {
        /// The request (retried with the same id until answered).
        req: u64,
        /// Who.
        member: MemberKey,
        /// Their role (from the ticket).
        role: Role,
        /// Their terminal (from the ticket).
        terminal: Terminal,
        /// The connection at the access node.
        conn: ConnId,
        /// The connection's admission stamp: when the access node accepted
        /// it, on its clock. The same in every retry; it orders the
        /// connections of one session (the newest one keeps it).
        since: Timestamp,
        /// The ticket it came with.
        ticket: Option<crate::host::TicketStamp>,
    },
    /// Room owner -> access: the connection entered.
    Entered {
        /// The request.
        req: u64,
        /// The connection.
        conn: ConnId,
        /// The member's sub-class.
        subclass: Option<u16>,
        /// The room's sequence epoch when the member entered.
        epoch: u64,
        /// The room's newest reliable number then: the client starts here.
        head: u64,
        /// Whether the room is muted.
        muted: bool,
        /// Whether this member is muted.
        self_muted: bool,
        /// What is open in the room now (JSON, `wire::data::State`), when
        /// anything is: the client gets it right after its welcome.
        state: Option<Bytes>,
    },
    /// Access -> room owner: something a member does in the room.
    Act {
        /// The request (reliable requests are retried with the same id
        /// until answered; chat and reactions are sent once).
        req: u64,
        /// Who.
        member: MemberKey,
        /// Their role.
        role: Role,
        /// The connection to answer.
        conn: ConnId,
        /// What.
        act: Act,
    },
    /// Room owner -> access: the request is done; `reply` goes to the client.
    Done {
        /// The request.
        req: u64,
        /// The connection to answer.
        conn: ConnId,
        /// What the client is told, if anything.
        reply: Option<ActReply>,
    },
    /// Room owner -> access: this node does not own the room (any more);
    /// ask the owner in your view.
    NotOwner {
        /// The request.
        req: u64,
    },
    /// Room owner -> access: the room cannot take the request now (it is
    /// being restored and holds as many as it may); send it again soon.
    Busy {
        /// The request.
        req: u64,
    },
    /// Room owner -> session owner: a member's session starts (the room
    /// owner admitted it).
    Join {
        /// Who.
        member: MemberKey,
        /// Their terminal.
        terminal: Terminal,
        /// Their connection.
        conn: ConnId,
        /// The connection's admission stamp, from its
        /// [`PeerMsg::Enter`]: a late join of an older connection than the
        /// session's does not replace it.
        since: Timestamp,
    },
    /// Room owner -> session owner: sessions the member list shows that are
    /// now this node's to keep (the view changed); each times out unless
    /// its client beats.
    Hold {
        /// The sessions.
        sessions: Vec<(MemberKey, Terminal)>,
    },
    /// Access -> session owner: a heartbeat.
    Beat {
        /// Who.
        member: MemberKey,
        /// Their role (for heartbeat repair at the room owner).
        role: Role,
        /// Their terminal.
        terminal: Terminal,
        /// Their connection.
        conn: ConnId,
        /// The connection's admission stamp, as in its
        /// [`PeerMsg::Enter`]: a stale beat of an older connection than the
        /// session's does not move it.
        since: Timestamp,
    },
    /// Access -> session owner: the client closed its connection.
    Leave {
        /// Who.
        member: MemberKey,
        /// Their terminal.
        terminal: Terminal,
        /// The connection that closed.
        conn: ConnId,
    },
    /// Session owner -> room owner: a session ended.
    Ended {
        /// Who.
        member: MemberKey,
        /// The terminal that ended.
        terminal: Terminal,
        /// Why.
        reason: ExitReason,
        /// Whether it was the member's last terminal.
        last: bool,
    },
    /// Session owner -> room owner: a session came to this session owner
    /// without an entry (a failover): re-assert the member.
    Adopted {
        /// Who.
        member: MemberKey,
        /// Their role.
        role: Role,
        /// Their terminal.
        terminal: Terminal,
    },
    /// Session owner -> access: is this connection still open?
    Probe {
        /// The probe, for the answer.
        id: u64,
        /// The connection.
        conn: ConnId,
    },
    /// Access -> session owner: the answer to a probe.
    ProbeAnswer {
        /// The probe.
        id: u64,
        /// Whether the connection is open.
        alive: bool,
    },
    /// Session owner -> access: close a connection (a newer one of the
    /// same member and terminal replaced it, or its session timed out).
    Close {
        /// The connection.
        conn: ConnId,
        /// Why.
        reason: CloseReason,
    },
    /// Member-list replication between the replicas of a room.
    Repl(ReplMsg),
    /// Any node -> room owner: a host's request (retried with the same id
    /// until answered).
    Host {
        /// The request.
        req: u64,
        /// What.
        request: crate::host::HostRequest,
    },
    /// Room owner -> the node the host asked: the answer.
    HostDone {
        /// The request.
        req: u64,
        /// The answer.
        answer: Result<crate::host::HostAnswer, crate::host::HostError>,
    },
    /// Room owner -> session owner: end these members' sessions (a kick, a
    /// room closed); their clients are told `message` and closed.
    Remove {
        /// The delivery, for the acknowledgement ([`PeerMsg::Delivered`]);
        /// sent again until acknowledged.
        id: u64,
        /// Who.
        members: Vec<MemberKey>,
        /// Why.
        reason: CloseReason,
        /// For the member's clients.
        message: String,
    },
    /// Session owner -> access: a connection is closed by the service; its
    /// client is told `message` first.
    Bye {
        /// The delivery, for the acknowledgement ([`PeerMsg::Delivered`]);
        /// sent again until acknowledged.
        id: u64,
        /// The connection.
        conn: ConnId,
        /// Why.
        reason: CloseReason,
        /// For the client.
        message: String,
    },
    /// A message sent until acknowledged ([`PeerMsg::Remove`],
    /// [`PeerMsg::Bye`]) arrived and was handled; handling it again is
    /// harmless, so a lost acknowledgement costs one more send.
    Delivered {
        /// The delivery.
        id: u64,
    },
}

impl PeerMsg {
    /// The message's bytes.
    pub fn encode(&self) -> Bytes {
        // Every field serialises (postcard fails only on unsupported serde
        // features, none of which these types use).
        Bytes::from(postcard::to_allocvec(self).unwrap_or_default())
    }

    /// A message from bytes a peer sent.
    pub fn decode(bytes: &[u8]) -> Result<PeerMsg, PeerDecodeError> {
        if bytes.len() > MAX_PEER_MESSAGE {
            return Err(PeerDecodeError::TooLarge { size: bytes.len(), max: MAX_PEER_MESSAGE });
        }
        postcard::from_bytes(bytes).map_err(|e| PeerDecodeError::Malformed(e.to_string()))
    }
}

/// Bytes from a peer that are not a [`PeerMsg`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PeerDecodeError {
    /// Over [`MAX_PEER_MESSAGE`].
    #[error("peer message of {size} bytes exceeds {max}")]
    TooLarge {
        /// Its size.
        size: usize,
        /// The limit.
        max: usize,
    },
    /// Not a peer message.
    #[error("malformed peer message: {0}")]
    Malformed(String),
}

/// What a member does in a room, as the room owner receives it (the
/// client's frame, parsed and checked for size at its access node).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum Act {
    /// A chat line.
    Chat {
        /// The text.
        text: String,
    },
    /// A message of one of the host's kinds, checked at the access node.
    Custom {
        /// The kind.
        kind: u16,
        /// Its data (JSON).
        data: Bytes,
        /// The member it is for.
        to: Option<Uin>,
    },
    /// A teacher message.
    Say {
        /// The text.
        text: String,
    },
    /// Raise, lower, invite or dismiss a hand.
    Hand {
        /// The operation.
        op: crate::wire::HandOp,
        /// Whose hand (invite and dismiss).
        uin: Option<Uin>,
    },
    /// Flowers or likes.
    React {
        /// Which.
        kind: crate::wire::ReactKind,
        /// How many.
        n: u32,
    },
    /// Open an answer card.
    CardOpen {
        /// Options.
        options: u8,
        /// The correct option.
        correct: Option<u8>,
        /// Seconds to answer.
        seconds: Option<u32>,
    },
    /// Answer the open card.
    CardAnswer {
        /// The option.
        option: u8,
    },
    /// Close the open card.
    CardClose,
    /// Send a red packet.
    PacketSend {
        /// Units.
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
    /// Mute or unmute one member's chat.
    Mute {
        /// The member.
        uin: Uin,
        /// On or off.
        on: bool,
    },
    /// A page of the member list.
    Members {
        /// Rows (1..=100).
        limit: u32,
        /// The cursor from the previous page.
        after: Option<[u8; 17]>,
    },
    /// What is open in the room now, as this member sees it.
    State,
}

impl Act {
    /// Whether the access node retries the request until the owner answers
    /// (chat and reactions may be shed: they are sent once).
    pub fn is_reliable(&self) -> bool {
        !matches!(self, Act::Chat { .. } | Act::React { .. } | Act::State)
    }
}

/// The owner's answer for the client.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum ActReply {
    /// The card answer was taken.
    Answered {
        /// The option.
        option: u8,
    },
    /// A red packet share was taken.
    Grabbed {
        /// The packet.
        id: u64,
        /// Units.
        amount: u64,
    },
    /// What is open in the room, as this member sees it (JSON,
    /// `wire::data::State`).
    State {
        /// The state.
        data: Bytes,
    },
    /// A page of the member list: `(uin, role, terminal bits)`.
    Members {
        /// The rows.
        rows: Vec<(Uin, Role, u64)>,
        /// The cursor for the next page.
        next: Option<[u8; 17]>,
    },
    /// Refused: the client gets an error frame with this code.
    Refused {
        /// The stable code (see [`crate::protocol`]).
        code: String,
        /// What was wrong.
        message: String,
        /// For a rate limit: when the request would be taken.
        retry_after_ms: Option<u64>,
    },
}

impl ActReply {
    /// A refusal with `code`.
    pub fn refused(code: &str, message: impl Into<String>) -> ActReply {
        ActReply::Refused { code: code.to_owned(), message: message.into(), retry_after_ms: None }
    }
}

/// Why the service closed a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum CloseReason {
    /// Its entry was refused (the error frame says why).
    Refused,
    /// A newer connection of the same member on the same terminal replaced
    /// it. "Newer" is by admission stamp (when its node accepted it, then
    /// the connection id), never by arrival: the older connection is the
    /// one closed even if its entry or heartbeats reach the member's
    /// session owner last (see
    /// [`SessionOwner`](room_heartbeat::SessionOwner)'s rule *the newest
    /// connection keeps the session*).
    Replaced,
    /// Its heartbeats stopped.
    TimedOut,
    /// It could not keep up with its reliable messages.
    SlowConsumer,
    /// The host removed the member (a kick).
    Kicked,
    /// The host closed the room.
    RoomClosed,
    /// The client said goodbye (`leave`).
    Left,
}

impl CloseReason {
    /// Every reason.
    pub const ALL: [CloseReason; 7] = [
        CloseReason::Refused,
        CloseReason::Replaced,
        CloseReason::TimedOut,
        CloseReason::SlowConsumer,
        CloseReason::Kicked,
        CloseReason::RoomClosed,
        CloseReason::Left,
    ];

    /// The websocket close code a host should send (4000-4999 are the
    /// application's; [`crate::protocol`] lists them).
    pub fn close_code(self) -> u16 {
        match self {
            CloseReason::Refused => 4001,
            CloseReason::Replaced => 4002,
            CloseReason::TimedOut => 4003,
            CloseReason::SlowConsumer => 4004,
            CloseReason::Kicked => 4005,
            CloseReason::RoomClosed => 4006,
            CloseReason::Left => 1000,
        }
    }

    /// A short reason for the close frame.
    pub fn as_str(self) -> &'static str {
        match self {
            CloseReason::Refused => "entry refused",
            CloseReason::Replaced => "replaced by a newer connection",
            CloseReason::TimedOut => "heartbeats stopped",
            CloseReason::SlowConsumer => "too slow to keep up",
            CloseReason::Kicked => "removed",
            CloseReason::RoomClosed => "the room closed",
            CloseReason::Left => "goodbye",
        }
    }
}
