//! The access side: client connections, their frames, requests forwarded to
//! rooms' owners, acks and checks, and the bus.

use std::collections::VecDeque;

use room_core::{ConnId, MemberKey, NodeId, Role, RoomKey, Terminal, Timestamp, Uin};
use room_heartbeat::SessionHint;
use room_push::{
    CheckAnswer, Codec, ConnSpec, Connector, Decision, Delivery, Envelope, Frame, FrameHeader, FrameKind, GateError,
    LogOutput, NodeError, NodeEvent, RecoveredFrame, SendError, SubclassId,
};

use super::owner::Purpose;
use super::{Admission, CacheOp, ClientSink, EntryError, Follow, Outbound, RequestKind, RoomNode};
use crate::classroom::ActionError;
use crate::peer::{Act, ActReply, CloseReason, PeerMsg};
use crate::wire::{ClientMsg, JsonCodec, MemberRowWire, ServerFrame, Welcome, codes};

/// Why a client frame was refused. The client gets an error frame with
/// [`FrameError::code`]; nothing else changes and the connection stays open.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FrameError {
    /// Over the configured `max_frame`.
    #[error("frame of {size} bytes exceeds {max}")]
    TooLarge {
        /// Its size.
        size: usize,
        /// The limit.
        max: usize,
    },
    /// Not JSON, not a known message (`t`), or fields that do not fit.
    #[error("bad frame: {0}")]
    Malformed(String),
    /// Text over the configured `max_text`.
    #[error("text of {len} characters exceeds {max}")]
    TextTooLong {
        /// Its length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The interaction is not allowed.
    #[error(transparent)]
    Action(#[from] ActionError),
    /// Push refused it (mute, rate limit, degradation).
    #[error(transparent)]
    Push(#[from] GateError),
    /// The member sends faster than its quota at its access node.
    #[error("rate limited: retry after {retry_after_ms} ms")]
    RateLimited {
        /// When a message would be accepted.
        retry_after_ms: u64,
    },
    /// An ack or check that does not fit what was sent.
    #[error(transparent)]
    Recovery(#[from] NodeError),
    /// The connection has not entered yet (its welcome has not come).
    #[error("the connection has not entered yet")]
    NotEntered,
    /// The connection is gone.
    #[error("unknown connection")]
    UnknownConnection,
    /// A `custom` message of a kind the host did not register.
    #[error("kind {kind} is not registered (registered: {known})")]
    UnknownKind {
        /// The kind.
        kind: u16,
        /// The kinds that are.
        known: String,
    },
    /// A `custom` message of a kind the member's role may not send.
    #[error("{role} may not send kind {kind}")]
    KindNotAllowed {
        /// The kind.
        kind: u16,
        /// The role.
        role: Role,
    },
    /// The host's filter refused a `custom` message.
    #[error("refused by the host: {0}")]
    Vetoed(String),
}

impl FrameError {
    /// A short stable code for clients ([`crate::protocol`] lists them).
    pub fn code(&self) -> &'static str {
        match self {
            FrameError::TooLarge { .. } => codes::TOO_LARGE,
            FrameError::Malformed(_) => codes::MALFORMED,
            FrameError::TextTooLong { .. } => codes::TEXT_TOO_LONG,
            FrameError::Action(e) => action_code(e),
            FrameError::Push(e) => gate_code(e),
            FrameError::RateLimited { .. } => codes::RATE_LIMITED,
            FrameError::Recovery(_) => codes::BAD_RECOVERY,
            FrameError::NotEntered => codes::NOT_ENTERED,
            FrameError::UnknownConnection => codes::GONE,
            FrameError::UnknownKind { .. } => codes::UNKNOWN_KIND,
            FrameError::KindNotAllowed { .. } => codes::NOT_ALLOWED,
            FrameError::Vetoed(_) => codes::VETOED,
        }
    }
}

/// The code of a refused interaction.
pub(super) fn action_code(e: &ActionError) -> &'static str {
    match e {
        ActionError::NotAllowed { .. } => codes::NOT_ALLOWED,
        _ => codes::REFUSED,
    }
}

/// The code of a message push refused.
pub(super) fn gate_code(e: &GateError) -> &'static str {
    match e {
        GateError::NotAllowed { .. } => codes::NOT_ALLOWED,
        GateError::RateLimited { .. } => codes::RATE_LIMITED,
        GateError::RoomMuted | GateError::UserMuted(_) => codes::MUTED,
        _ => codes::REFUSED,
    }
}

/// A client connection at this node.
#[derive(Debug)]
pub(super) struct Conn {
    pub(super) member: MemberKey,
    pub(super) role: Role,
    pub(super) terminal: Terminal,
    /// The entry request while the room's owner has not answered.
    pub(super) entering: Option<u64>,
    pub(super) hint: SessionHint,
    /// When the client last sent anything.
    pub(super) heard: Timestamp,
    /// When this node accepted the connection: its admission stamp, sent
    /// with its entry and its beats (it orders the connections of one
    /// session; see [`SessionOwner`](room_heartbeat::SessionOwner)).
    pub(super) since: Timestamp,
}

/// What the room's owner said when it admitted a connection.
#[derive(Debug)]
pub(super) struct EnteredAt {
    pub(super) subclass: Option<u16>,
    pub(super) epoch: u64,
    pub(super) head: u64,
    pub(super) muted: bool,
    pub(super) self_muted: bool,
    pub(super) state: Option<bytes::Bytes>,
}

/// A request waiting for its room owner's answer.
#[derive(Debug)]
pub(super) struct Forward {
    pub(super) conn: ConnId,
    pub(super) room: RoomKey,
    pub(super) msg: PeerMsg,
    pub(super) attempts: u32,
    pub(super) deadline: Timestamp,
}

/// Envelopes of a room held while a gap before them is refilled from the
/// shared cache.
#[derive(Debug)]
pub(super) struct Parked {
    pub(super) envelopes: VecDeque<Envelope>,
    pub(super) deadline: Timestamp,
}

/// Envelopes parked per room at most (past it the refill is given up and
/// the gap reported to clients by a resync).
const MAX_PARKED: usize = 4096;

/// The adapter from the push node's connector to the host's sink; it
/// notes the writers that would not take a frame.
struct Sink<'a, S: ClientSink> {
    sink: &'a mut S,
    stalls: &'a mut Vec<ConnId>,
}

impl<S: ClientSink> Connector for Sink<'_, S> {
    fn send(&mut self, frame: &Frame<'_>) -> Result<(), SendError> {
        let sent = self.sink.send(frame.conn, Outbound::Push { header: frame.header, body: frame.body.clone() });
        if sent == Err(SendError::WouldBlock) {
            self.stalls.push(frame.conn);
        }
        sent
    }
}

impl RoomNode {
    /// A client whose ticket the host verified connects here. The
    /// connection starts entering: the room's owner admits it (then its
    /// first frame is the welcome) or refuses it (an error frame, then a
    /// close). Until then its frames are held.
    pub fn connect(&mut self, now: Timestamp, who: Admission) -> Result<ConnId, EntryError> {
        let owner = self.room_owner(who.room).ok_or(EntryError::NotReady)?;
        let spec = ConnSpec::new(who.room, who.uin, who.role, who.terminal);
        let connected = self.push.connect(spec).map_err(|e| {
            self.stats.refused_entries += 1;
            EntryError::Full(e.to_string())
        })?;
        let conn = connected.conn;
        // Frames wait in the lanes until the welcome is out.
        let _ = self.push.set_blocked(conn);
        let member = who.room.member(who.uin);
        let req = self.new_req();
        self.conns.insert(
            conn,
            Conn {
                member,
                role: who.role,
                terminal: who.terminal,
                entering: Some(req),
                hint: SessionHint::NONE,
                heard: now,
                since: now,
            },
        );
        self.add_room_ref(who.room);
        let msg = PeerMsg::Enter {
            req,
            member,
            role: who.role,
            terminal: who.terminal,
            conn,
            since: now,
            ticket: who.ticket,
        };
        self.forward(now, owner, req, conn, who.room, msg);
        self.drain_loopback(now);
        Ok(conn)
    }

    pub(super) fn new_req(&mut self) -> u64 {
        self.next_req = self.next_req.wrapping_add(1);
        (u64::from(self.tag) << 48) | ((self.config.incarnation & 0xFFFF) << 32) | (self.next_req & 0xFFFF_FFFF)
    }

    fn add_room_ref(&mut self, room: RoomKey) {
        let refs = self.room_refs.entry(room).or_insert(0);
        *refs += 1;
        if *refs == 1 {
            self.outputs.push_back(super::Output::Interest { room, on: true });
        }
    }

    fn drop_room_ref(&mut self, room: RoomKey) {
        if let Some(refs) = self.room_refs.get_mut(&room) {
            *refs -= 1;
            if *refs == 0 {
                self.room_refs.remove(&room);
                self.parked.remove(&room);
                self.outputs.push_back(super::Output::Interest { room, on: false });
            }
        }
    }

    /// Sends a request to a room's owner and remembers it for retries.
    pub(super) fn forward(
        &mut self,
        now: Timestamp,
        owner: NodeId,
        req: u64,
        conn: ConnId,
        room: RoomKey,
        msg: PeerMsg,
    ) {
        let deadline = now.saturating_add(self.config.forward_timeout);
        self.forwards.insert(req, Forward { conn, room, msg: msg.clone(), attempts: 1, deadline });
        self.forward_deadlines.insert(deadline, req);
        self.send_peer(owner, msg);
    }

    pub(super) fn forwards_timeout(&mut self, now: Timestamp) {
        for req in self.forward_deadlines.due(now) {
            self.retry_forward(now, req);
        }
    }

    /// Sends a request again, to the owner of the view now, or gives up.
    fn retry_forward(&mut self, now: Timestamp, req: u64) {
        let Some(f) = self.forwards.get_mut(&req) else { return };
        self.forward_deadlines.remove(f.deadline, req);
        if f.attempts >= self.config.forward_attempts {
            let f = self.forwards.remove(&req);
            self.stats.forward_failures += 1;
            if let Some(f) = f {
                self.give_up(now, f);
            }
            return;
        }
        f.attempts += 1;
        f.deadline = now.saturating_add(self.config.forward_timeout);
        let (deadline, room, msg) = (f.deadline, f.room, f.msg.clone());
        self.forward_deadlines.insert(deadline, req);
        self.stats.forward_retries += 1;
        if let Some(owner) = self.room_owner(room) {
            self.send_peer(owner, msg);
        }
    }

    /// No owner answered a request in time.
    fn give_up(&mut self, now: Timestamp, f: Forward) {
        let error = ServerFrame::error(codes::UNAVAILABLE, "the room's owner did not answer; try again");
        match f.msg {
            PeerMsg::Host { req, .. } => self.host_answered(req, Err(crate::host::HostError::Unavailable)),
            PeerMsg::Enter { .. } => {
                self.stats.refused_entries += 1;
                self.reply(f.conn, error);
                self.close_conn(now, f.conn, CloseReason::Refused, true);
            }
            _ => self.reply(f.conn, error),
        }
    }

    /// The owner does not own the room in its view (the views are
    /// converging), or cannot take the request yet: ask again soon.
    pub(super) fn access_retry_soon(&mut self, now: Timestamp, req: u64) {
        if let Some(f) = self.forwards.get_mut(&req) {
            self.forward_deadlines.remove(f.deadline, req);
            // A short wait, so two nodes with different views do not bounce
            // a request between them as fast as the network allows.
            f.deadline = now.saturating_add(self.config.forward_timeout / 3);
            self.forward_deadlines.insert(f.deadline, req);
        }
    }

    /// The room's owner admitted a connection.
    pub(super) fn access_entered(&mut self, _now: Timestamp, req: u64, conn: ConnId, at: EnteredAt) {
        let EnteredAt { subclass, epoch, head, muted, self_muted, state } = at;
        if let Some(f) = self.forwards.remove(&req) {
            self.forward_deadlines.remove(f.deadline, req);
        }
        let Some(c) = self.conns.get_mut(&conn).filter(|c| c.entering == Some(req)) else {
            // Gone before the answer came (its leave went to the session
            // owner then), or a duplicate answer: nothing to do.
            return;
        };
        c.entering = None;
        let (member, role, terminal) = (c.member, c.role, c.terminal);
        let _ = self.push.set_connection_subclass(conn, subclass.map(SubclassId));
        // The owner's head may be ahead of this node: its latest messages
        // are still on their way here over the bus, and will be pushed to
        // this connection when they come. The welcome says where this
        // connection's pushes start, so that the client's acks and checks
        // stay within what it was given (beyond it, they are refused).
        let head = match self.push.connection_head(conn) {
            Ok((local_epoch, given)) if local_epoch == epoch && given < head => given,
            _ => head,
        };
        let welcome = Welcome {
            uin: member.uin.0,
            role,
            terminal,
            epoch,
            head,
            subclass,
            heartbeat_ms: u64::try_from(self.config.heartbeat.as_millis()).unwrap_or(u64::MAX),
            muted,
            self_muted,
            node: self.me.0,
        };
        let mut first = vec![Outbound::Text(ServerFrame::Welcome(welcome).to_bytes())];
        if let Some(data) = state {
            first.push(Outbound::Text(ServerFrame::State { data: crate::wire::RawJson(data) }.to_bytes()));
        }
        // With lanes, or (unreachable) a connection the push node does
        // not know, the welcome goes as a reply: the client still hears
        // of its entry.
        let follow = (self.push.config().delivery == Delivery::Log).then(|| self.push.follow(conn).ok()).flatten();
        match follow {
            Some((from, follower)) => {
                self.follows.push(Follow { conn, room: member.room_key(), from, follower, first });
            }
            None => self.replies.extend(first.into_iter().map(|frame| (conn, frame))),
        }
        let _ = self.push.set_writable(conn);
    }

    /// The room's owner finished a request.
    pub(super) fn access_done(&mut self, now: Timestamp, req: u64, conn: ConnId, reply: Option<ActReply>) {
        if let Some(f) = self.forwards.remove(&req) {
            self.forward_deadlines.remove(f.deadline, req);
            if matches!(f.msg, PeerMsg::Host { .. }) {
                // A host's publish the room's previous owner numbered
                // before it failed: done, its place not kept.
                let answer = Ok(crate::host::HostAnswer::Published { epoch: 0, seq: 0 });
                return self.host_answered(req, answer);
            }
        }
        if self.conns.get(&conn).is_some_and(|c| c.entering == Some(req)) {
            // The room's owner refused the entry: nothing was entered.
            let (code, message) = match reply {
                Some(ActReply::Refused { code, message, .. }) => (code, message),
                _ => (codes::ENTRY_REFUSED.to_owned(), "the room refused the entry".to_owned()),
            };
            self.stats.refused_entries += 1;
            self.reply(conn, ServerFrame::Error { code, message, retry_after_ms: None });
            return self.close_conn(now, conn, CloseReason::Refused, true);
        }
        let Some(reply) = reply else { return };
        let frame = match reply {
            ActReply::Answered { option } => ServerFrame::Answered { option },
            ActReply::Grabbed { id, amount } => ServerFrame::Grabbed { id, amount },
            ActReply::Members { rows, next } => ServerFrame::Members {
                rows: rows
                    .into_iter()
                    .map(|(uin, role, bits)| MemberRowWire {
                        uin: uin.0,
                        role,
                        terminals: room_core::TerminalSet::from_bits(bits)
                            .map(|set| set.iter().map(|t| t.to_string()).collect())
                            .unwrap_or_default(),
                    })
                    .collect(),
                next: next.map(|c| c.iter().map(|b| format!("{b:02x}")).collect()),
            },
            ActReply::Refused { code, message, retry_after_ms } => {
                self.stats.refused_frames += 1;
                self.stats.refused_by_owner += 1;
                self.stats.rate_limited += u64::from(retry_after_ms.is_some());
                ServerFrame::Error { code, message, retry_after_ms }
            }
            ActReply::State { data } => ServerFrame::State { data: crate::wire::RawJson(data) },
        };
        self.reply(conn, frame);
    }

    /// Queues a direct reply for a connection.
    pub(super) fn reply(&mut self, conn: ConnId, frame: ServerFrame) {
        if self.conns.contains_key(&conn) {
            self.replies.push_back((conn, Outbound::Text(frame.to_bytes())));
        }
    }

    /// Whether a client still talks on `conn`: the connection is open here
    /// and the client sent something within its heartbeat timeout. (A
    /// socket open but silent is a client that froze; beats that arrived
    /// here but were lost on the way to the session owner are not.)
    pub(super) fn client_alive(&self, now: Timestamp, conn: ConnId) -> bool {
        let timeout = self.config.heartbeat * self.config.misses.max(1);
        self.conns.get(&conn).is_some_and(|c| now.saturating_sub(timeout) <= c.heard)
    }

    /// One text frame from a client. Refusals are also sent to the client
    /// as an error frame.
    pub fn handle_text(&mut self, now: Timestamp, conn: ConnId, text: &str) -> Result<(), FrameError> {
        if let Some(c) = self.conns.get_mut(&conn) {
            c.heard = now;
        }
        let result = if text.len() > self.config.max_frame {
            Err(FrameError::TooLarge { size: text.len(), max: self.config.max_frame })
        } else {
            match serde_json::from_str::<ClientMsg>(text) {
                Ok(msg) => return self.handle_client(now, conn, msg),
                Err(e) => Err(FrameError::Malformed(e.to_string())),
            }
        };
        if let Err(e) = &result {
            self.refuse(conn, e);
        }
        result
    }

    fn refuse(&mut self, conn: ConnId, e: &FrameError) {
        self.stats.refused_frames += 1;
        let retry_after_ms = match e {
            FrameError::RateLimited { retry_after_ms } => Some(*retry_after_ms),
            _ => None,
        };
        self.stats.rate_limited += u64::from(retry_after_ms.is_some());
        self.reply(conn, ServerFrame::Error { code: e.code().to_owned(), message: e.to_string(), retry_after_ms });
    }

    /// One parsed message from a client (for hosts with their own codec).
    pub fn handle_client(&mut self, now: Timestamp, conn: ConnId, msg: ClientMsg) -> Result<(), FrameError> {
        let result = self.client_msg(now, conn, msg);
        if let Err(e) = &result {
            self.refuse(conn, e);
        }
        self.drain_loopback(now);
        result
    }

    fn client_msg(&mut self, now: Timestamp, conn: ConnId, msg: ClientMsg) -> Result<(), FrameError> {
        let c = self.conns.get_mut(&conn).ok_or(FrameError::UnknownConnection)?;
        c.heard = now;
        if c.entering.is_some() {
            return Err(FrameError::NotEntered);
        }
        let (member, role, terminal, since) = (c.member, c.role, c.terminal, c.since);
        let max_text = self.config.max_text;
        let check_text = |text: &str| {
            let len = text.chars().count();
            if len > max_text { Err(FrameError::TextTooLong { len, max: max_text }) } else { Ok(()) }
        };
        let kind = match &msg {
            ClientMsg::Beat | ClientMsg::Leave => RequestKind::Beat,
            ClientMsg::Ack { .. } => RequestKind::Ack,
            ClientMsg::Check { .. } => RequestKind::Check,
            ClientMsg::Members { .. } | ClientMsg::State => RequestKind::Read,
            ClientMsg::Custom { kind, .. } => {
                let kinds = &self.config.kinds;
                let spec = kinds.get(*kind).ok_or_else(|| FrameError::UnknownKind {
                    kind: *kind,
                    known: kinds.kinds().map(|k| k.0.to_string()).collect::<Vec<_>>().join(", "),
                })?;
                if !spec.senders.contains(role) {
                    return Err(FrameError::KindNotAllowed { kind: *kind, role });
                }
                RequestKind::Custom(*kind)
            }
            _ => RequestKind::Act,
        };
        self.charge(now, member, role, kind)?;
        let act = match msg {
            ClientMsg::Beat => {
                let owner = self.session_owner_of(&member);
                self.send_peer(owner, PeerMsg::Beat { member, role, terminal, conn, since });
                return Ok(());
            }
            ClientMsg::Ack { epoch, seq } => {
                let answer = self.push.handle_ack(conn, epoch, seq)?;
                self.reply(conn, ServerFrame::ack(&answer));
                return Ok(());
            }
            ClientMsg::Check { epoch, after } => return self.check(now, conn, member, epoch, after),
            ClientMsg::Leave => {
                self.leave(now, conn);
                return Ok(());
            }
            ClientMsg::Chat { text } => {
                check_text(&text)?;
                Act::Chat { text }
            }
            ClientMsg::Say { text } => {
                check_text(&text)?;
                Act::Say { text }
            }
            ClientMsg::Hand { op, uin } => Act::Hand { op, uin: uin.map(Uin) },
            ClientMsg::React { kind, n } => Act::React { kind, n },
            ClientMsg::CardOpen { options, correct, seconds } => Act::CardOpen { options, correct, seconds },
            ClientMsg::CardAnswer { option } => Act::CardAnswer { option },
            ClientMsg::CardClose => Act::CardClose,
            ClientMsg::PacketSend { amount, count } => Act::PacketSend { amount, count },
            ClientMsg::PacketGrab { id } => Act::PacketGrab { id },
            ClientMsg::MuteAll { on } => Act::MuteAll { on },
            ClientMsg::Mute { uin, on } => Act::Mute { uin: Uin(uin), on },
            ClientMsg::Members { limit, after } => {
                let after = match after {
                    None => None,
                    Some(hex) => Some(parse_cursor(&hex)?),
                };
                Act::Members { limit: limit.clamp(1, 100), after }
            }
            ClientMsg::State => Act::State,
            ClientMsg::Custom { kind, data, to } => self.custom(member, role, kind, &data, to.map(Uin))?,
        };
        let room = member.room_key();
        let owner = self.room_owner(room).ok_or(FrameError::NotEntered)?;
        let req = self.new_req();
        let msg = PeerMsg::Act { req, member, role, conn, act: act.clone() };
        let reliable = match &act {
            Act::Custom { kind, .. } => self.config.kinds.get(*kind).is_some_and(|k| k.class.is_reliable()),
            other => other.is_reliable(),
        };
        if reliable {
            self.forward(now, owner, req, conn, room, msg);
        } else {
            // Chat and reactions may be shed: sent once, never retried, so
            // an overloaded owner is not sent more.
            self.send_peer(owner, msg);
        }
        Ok(())
    }

    /// A `custom` message, checked here (size, audience, the host's
    /// filter) so that nothing refused travels.
    fn custom(
        &self,
        member: MemberKey,
        role: Role,
        kind: u16,
        data: &serde_json::Value,
        to: Option<Uin>,
    ) -> Result<Act, FrameError> {
        let spec = self.config.kinds.get(kind).ok_or(FrameError::UnknownKind { kind, known: String::new() })?;
        let bytes = serde_json::to_vec(data).map_err(|e| FrameError::Malformed(e.to_string()))?;
        if bytes.len() > spec.max_data {
            return Err(FrameError::TooLarge { size: bytes.len(), max: spec.max_data });
        }
        match (spec.audience, to) {
            (crate::kinds::Audience::User, None) => {
                return Err(FrameError::Malformed(format!("kind {kind} goes to one member: name it with `to`")));
            }
            (crate::kinds::Audience::User, Some(_)) | (_, None) => {}
            (_, Some(_)) => return Err(FrameError::Malformed(format!("kind {kind} takes no `to`"))),
        }
        let message = crate::kinds::CustomMessage {
            room: member.room_key(),
            from: member.uin,
            role,
            kind: room_push::Kind(kind),
            data: &bytes,
            to,
        };
        if let crate::kinds::Verdict::Veto(reason) = self.config.kinds.check(&message) {
            return Err(FrameError::Vetoed(reason));
        }
        Ok(Act::Custom { kind, data: bytes.into(), to })
    }

    /// Charges a member one request of a kind against its budget at this
    /// node, before anything is forwarded or answered: a flood cannot pile
    /// up requests (and their retries) on the way to the room's owner, nor
    /// large answers on the way back.
    fn charge(&mut self, now: Timestamp, member: MemberKey, role: Role, kind: RequestKind) -> Result<(), FrameError> {
        let b = &self.config.budgets;
        let quota = match kind {
            RequestKind::Beat => self.beat_quota,
            RequestKind::Ack => b.ack,
            RequestKind::Check => b.check,
            RequestKind::Read => b.read,
            RequestKind::Act if role.is_staff() => b.staff,
            RequestKind::Act => b.learner,
            RequestKind::Custom(k) => self.config.kinds.get(k).map_or(b.learner, |spec| spec.rate),
        };
        match self.senders.check((member, kind), quota, now, 1) {
            Ok(Decision::Allowed) => Ok(()),
            Ok(Decision::Limited { retry_after }) => Err(FrameError::RateLimited {
                retry_after_ms: u64::try_from(retry_after.as_millis()).unwrap_or(u64::MAX),
            }),
            // The limiter is full of other senders: refuse rather than grow.
            Ok(_) | Err(_) => Err(FrameError::RateLimited { retry_after_ms: 1_000 }),
        }
    }

    /// A check: this node's cache answers; what it does not hold comes
    /// from the shared cache; only what neither holds is a reset.
    fn check(
        &mut self,
        now: Timestamp,
        conn: ConnId,
        member: MemberKey,
        epoch: u64,
        after: u64,
    ) -> Result<(), FrameError> {
        let room = member.room_key();
        match self.push.handle_check(now, conn, epoch, after) {
            Ok(CheckAnswer::Reset { .. }) | Err(NodeError::CheckFromFuture { .. }) => {}
            Ok(answer) => {
                if let Some(frame) = ServerFrame::check(&answer) {
                    self.reply(conn, frame);
                }
                return Ok(());
            }
            Err(e) => return Err(e.into()),
        }
        let upto = after.saturating_add(self.config.push.max_check_answer.max(1) as u64);
        if after >= upto {
            return Err(FrameError::Malformed("check after the largest sequence number".into()));
        }
        self.cache(now, CacheOp::Range { room, epoch, after, upto }, Purpose::CheckRange { conn, epoch, after });
        Ok(())
    }

    /// The shared cache's range for a check.
    pub(super) fn check_range_answered(
        &mut self,
        now: Timestamp,
        conn: ConnId,
        epoch: u64,
        after: u64,
        found: Result<Vec<Envelope>, room_push::SharedCacheError>,
    ) {
        let Some(c) = self.conns.get(&conn) else { return };
        let (member, role, terminal) = (c.member, c.role, c.terminal);
        let room = member.room_key();
        // The cache could not say: no answer (the client checks again)
        // rather than a reset.
        let Ok(found) = found else { return };
        if found.first().is_some_and(|e| e.seq == after + 1 && e.epoch == epoch) {
            let subclass = self.push.connection_subclass(conn).ok().flatten();
            let mut frames = Vec::new();
            let mut prev = after;
            for env in &found {
                if !env.message.target.matches(member.uin, role, terminal, subclass) {
                    continue;
                }
                frames.push(RecoveredFrame {
                    header: FrameHeader {
                        kind: FrameKind::Message,
                        class: env.message.class,
                        epoch,
                        seq: env.seq,
                        prev,
                    },
                    kind: env.message.kind,
                    body: JsonCodec.encode_message(env),
                });
                prev = env.seq;
            }
            let upto = found.last().map_or(after, |e| e.seq);
            self.stats.recovered_from_shared += frames.len() as u64;
            let answer = CheckAnswer::Messages { epoch, upto, frames };
            if let Some(frame) = ServerFrame::check(&answer) {
                self.reply(conn, frame);
            }
            return;
        }
        // Nothing after `after` in the shared cache: up to date if the
        // cache's head is exactly there, else a reset.
        self.cache(now, CacheOp::Head(room), Purpose::CheckHead { conn, epoch, after });
    }

    /// The shared cache's head for a check it had nothing for.
    pub(super) fn check_head_answered(
        &mut self,
        conn: ConnId,
        epoch: u64,
        after: u64,
        head: Result<Option<(u64, u64)>, room_push::SharedCacheError>,
    ) {
        let Some(c) = self.conns.get(&conn) else { return };
        let room = c.member.room_key();
        if head.is_err() {
            // The cache could not say: no answer rather than a reset the
            // client would have to reload for. It checks again.
            return;
        }
        let answer = match head {
            Ok(Some((e, h))) if e == epoch && h == after => {
                CheckAnswer::Messages { epoch, upto: after, frames: Vec::new() }
            }
            _ => {
                let (e, h) = self.push.reliable_head(room).filter(|(e, _)| *e != 0).unwrap_or((epoch, after));
                self.push.count_reset();
                CheckAnswer::Reset { epoch: e, head: h }
            }
        };
        if let Some(frame) = ServerFrame::check(&answer) {
            self.reply(conn, frame);
        }
    }

    /// The client's socket closed. Its member keeps its place until the
    /// heartbeat timeout (its session is not ended: a reconnect inside
    /// the timeout resumes it, with no leave and enter for the others);
    /// [`leave`](Self::leave) ends it now. With
    /// [`leave_on_disconnect`](super::RoomNodeConfig::leave_on_disconnect),
    /// a disconnect is a leave.
    pub fn disconnect(&mut self, now: Timestamp, conn: ConnId) {
        let entering = self.conns.get(&conn).is_some_and(|c| c.entering.is_some());
        if self.config.leave_on_disconnect || entering {
            self.drop_conn(now, conn);
        } else {
            self.detach_conn(now, conn);
        }
        self.drain_loopback(now);
    }

    /// The member says goodbye on this connection: it leaves now, and the
    /// connection is closed ([`CloseReason::Left`]).
    pub fn leave(&mut self, now: Timestamp, conn: ConnId) {
        if self.drop_conn(now, conn) {
            self.closes.push_back((conn, CloseReason::Left));
        }
        self.drain_loopback(now);
    }

    /// Lets a connection go here without ending its session: the session
    /// owner's probe finds it gone once beats stop, unless the member
    /// reconnects first.
    fn detach_conn(&mut self, now: Timestamp, conn: ConnId) -> bool {
        let Some(c) = self.conns.remove(&conn) else { return false };
        self.stalled.remove(&conn);
        let _ = self.push.disconnect(now, conn);
        self.drop_room_ref(c.member.room_key());
        true
    }

    /// Removes a connection; its session owner is told.
    fn drop_conn(&mut self, now: Timestamp, conn: ConnId) -> bool {
        let Some(c) = self.conns.remove(&conn) else { return false };
        self.stalled.remove(&conn);
        let _ = self.push.disconnect(now, conn);
        let room = c.member.room_key();
        if let Some(req) = c.entering
            && let Some(f) = self.forwards.remove(&req)
        {
            self.forward_deadlines.remove(f.deadline, req);
        }
        // Also sent while entering: the owner may have started the session.
        let owner = self.session_owner_of(&c.member);
        self.send_peer(owner, PeerMsg::Leave { member: c.member, terminal: c.terminal, conn });
        self.drop_room_ref(room);
        true
    }

    /// Closes a connection the service gave up on: the client is told why.
    pub(super) fn close_conn(&mut self, now: Timestamp, conn: ConnId, reason: CloseReason, tell_session: bool) {
        if !self.conns.contains_key(&conn) {
            return;
        }
        if tell_session {
            self.drop_conn(now, conn);
        } else {
            self.detach_conn(now, conn);
        }
        self.closes.push_back((conn, reason));
    }

    /// The host's writer for `conn` can take frames again.
    pub fn set_writable(&mut self, conn: ConnId) {
        if let Some(since) = self.stalled.remove(&conn) {
            self.stalled_deadlines.remove(since.saturating_add(self.config.slow_client_lag), conn);
        }
        let _ = self.push.set_writable(conn);
    }

    /// The host's writer for `conn` has taken nothing for the configured
    /// `slow_client_lag` while frames waited for it, where the node does not
    /// see it (a writer reading its room's log fills no queue): closes it
    /// as a slow consumer. The member keeps its place, to resume.
    pub fn writer_stalled(&mut self, now: Timestamp, conn: ConnId) {
        self.close_conn(now, conn, CloseReason::SlowConsumer, false);
    }

    /// Closes the clients that stopped reading for the configured lag.
    pub(super) fn stalled_timeout(&mut self, now: Timestamp) {
        for conn in self.stalled_deadlines.due(now) {
            if self.stalled.remove(&conn).is_some() {
                // A slow client reconnects and resumes: its place is kept.
                self.close_conn(now, conn, CloseReason::SlowConsumer, false);
            }
        }
    }

    /// Hands every frame ready for clients to `sink`: the entering
    /// connections' welcomes and follows first, then the rooms' log
    /// outputs (log delivery), the direct replies, in order, and the push
    /// lanes; then the connections the node closed.
    pub fn flush<S: ClientSink>(&mut self, now: Timestamp, sink: &mut S) {
        let mut stalls = Vec::new();
        // The connections that entered first, with their welcomes: the
        // turn's log outputs may already be for them (a message for one
        // member among few goes to its connection, not the log).
        for Follow { conn, room, from, follower, first } in self.follows.drain(..) {
            for frame in first {
                self.stats.replies_dropped += u64::from(sink.send(conn, frame).is_err());
            }
            sink.follow(conn, room, from, follower);
        }
        // The rooms' logs next: a reply then goes out after the entries
        // it may speak of (an ack's answer after the messages it counts).
        while let Some(out) = self.push.poll_log() {
            match out {
                LogOutput::Append { room, pos, entry } => sink.append(room, pos, &entry),
                LogOutput::Moved { conn, at, subclass } => sink.moved(conn, at, subclass),
                LogOutput::Direct { conn, entry } => sink.direct(conn, &entry),
                _ => {}
            }
        }
        while let Some((conn, frame)) = self.replies.pop_front() {
            match sink.send(conn, frame) {
                Ok(()) => {}
                Err(e) => {
                    self.stats.replies_dropped += 1;
                    if e == SendError::WouldBlock {
                        stalls.push(conn);
                    }
                }
            }
        }
        room_core::shrink_when_empty(&mut self.replies);
        self.push.flush(now, &mut Sink { sink, stalls: &mut stalls });
        for conn in stalls {
            if !self.stalled.contains_key(&conn) && self.conns.contains_key(&conn) {
                self.stalled.insert(conn, now);
                self.stalled_deadlines.insert(now.saturating_add(self.config.slow_client_lag), conn);
            }
        }
        while let Some(event) = self.push.poll_event() {
            if let NodeEvent::Disconnected { conn, reason, .. } = event {
                let why = match reason {
                    room_push::DisconnectReason::SlowConsumer => CloseReason::SlowConsumer,
                    _ => CloseReason::TimedOut,
                };
                // The push node already let it go; the member keeps its
                // place until the heartbeat timeout, to reconnect.
                if self.detach_conn(now, conn) {
                    self.closes.push_back((conn, why));
                }
            }
        }
        while let Some((conn, reason)) = self.closes.pop_front() {
            sink.close(conn, reason);
        }
        self.drain_loopback(now);
    }

    /// An envelope from the bus. A hole before it in the room's sequence is
    /// refilled from the shared cache first.
    pub fn handle_envelope(&mut self, now: Timestamp, env: Envelope) {
        let room = env.message.room;
        if let Some(p) = self.parked.get_mut(&room) {
            if p.envelopes.len() < MAX_PARKED {
                p.envelopes.push_back(env);
                return;
            }
            // Too much waits: give up the refill; clients get a resync.
            let parked = self.parked.remove(&room).map(|p| p.envelopes).unwrap_or_default();
            for e in parked {
                self.deliver_envelope(now, &e);
            }
        } else if let Some((after, upto)) = room_push::shared_cache::missing_before(self.push.reliable_head(room), &env)
        {
            let epoch = env.epoch;
            let deadline = now.saturating_add(self.config.cache_timeout);
            self.parked.insert(room, Parked { envelopes: VecDeque::from([env]), deadline });
            self.cache(now, CacheOp::Range { room, epoch, after, upto }, Purpose::Refill(room));
            return;
        }
        self.deliver_envelope(now, &env);
    }

    /// Hands an envelope to the push node, and watches the room's tail.
    fn deliver_envelope(&mut self, now: Timestamp, env: &Envelope) {
        if self.push.handle_envelope(now, env).is_ok() && env.seq > 0 {
            let room = env.message.room;
            let at = now.saturating_add(self.config.tail_check);
            if let Some(old) = self.tail_checks.insert(room, at) {
                self.tail_deadlines.remove(old, room);
            }
            self.tail_deadlines.insert(at, room);
        }
    }

    pub(super) fn tails_timeout(&mut self, now: Timestamp) {
        for room in self.tail_deadlines.due(now) {
            self.tail_checks.remove(&room);
            if self.room_refs.contains_key(&room) && !self.parked.contains_key(&room) {
                self.cache(now, CacheOp::Head(room), Purpose::TailHead(room));
            }
        }
    }

    /// The shared cache's head of a room gone quiet: what the bus lost at
    /// the end is refilled.
    pub(super) fn tail_head_answered(
        &mut self,
        now: Timestamp,
        room: RoomKey,
        head: Result<Option<(u64, u64)>, room_push::SharedCacheError>,
    ) {
        let Ok(Some((epoch, upto))) = head else { return };
        let Some((e, mine)) = self.push.reliable_head(room) else { return };
        if e == epoch && mine > 0 && upto > mine && !self.parked.contains_key(&room) {
            self.cache(now, CacheOp::Range { room, epoch, after: mine, upto }, Purpose::TailRefill(room));
        }
    }

    pub(super) fn tail_refill_answered(
        &mut self,
        now: Timestamp,
        room: RoomKey,
        found: Result<Vec<Envelope>, room_push::SharedCacheError>,
    ) {
        for env in found.unwrap_or_default() {
            if self.push.reliable_head(room).is_some_and(|(e, h)| e == env.epoch && env.seq == h + 1)
                && self.push.handle_envelope(now, &env).is_ok()
            {
                self.stats.refilled += 1;
            }
        }
    }

    /// The shared cache's answer for a refill.
    pub(super) fn refill_answered(
        &mut self,
        now: Timestamp,
        room: RoomKey,
        found: Result<Vec<Envelope>, room_push::SharedCacheError>,
    ) {
        let Some(parked) = self.parked.remove(&room) else { return };
        let epoch = parked.envelopes.front().map(|e| e.epoch);
        for env in found.unwrap_or_default().iter().filter(|e| Some(e.epoch) == epoch) {
            if self.push.handle_envelope(now, env).is_ok() {
                self.stats.refilled += 1;
            }
        }
        for env in parked.envelopes {
            self.deliver_envelope(now, &env);
        }
    }

    pub(super) fn parked_timeout(&mut self, now: Timestamp) {
        let due: Vec<RoomKey> = self.parked.iter().filter(|(_, p)| p.deadline <= now).map(|(r, _)| *r).collect();
        for room in due {
            self.refill_answered(now, room, Ok(Vec::new()));
        }
    }
}

/// A member-list cursor from its hex form.
fn parse_cursor(hex: &str) -> Result<[u8; 17], FrameError> {
    let bad = || FrameError::Malformed("bad cursor".into());
    if hex.len() != 34 || !hex.is_ascii() {
        return Err(bad());
    }
    let mut bits = [0u8; 17];
    for (i, b) in bits.iter_mut().enumerate() {
        *b = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).map_err(|_| bad())?;
    }
    Ok(bits)
}
