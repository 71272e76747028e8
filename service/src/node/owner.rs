//! The room-owner side: the rooms the router gives this node, restored
//! from the shared cache when ownership moves here, and run by their one
//! owner (gate, classroom, sub-class plan, member list, roster).
//!
//! # What survives the owner
//!
//! * Reliable messages: appended to the shared cache before they are
//!   published (the fence); each carries the request it answers
//!   (`origin`), so the next owner knows what was numbered.
//! * Membership: the member list is replicated to the room's other owners.
//! * Interactions, the sub-class plan and mutes: a state blob saved beside
//!   the room's messages, at most every `save_interval`. What a client is
//!   told about an interaction (its answer taken, its share grabbed, a
//!   card opened) is said only once the save holding it is stored, so the
//!   next owner never forgets what a client was told.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::Duration;

use bytes::Bytes;
use hashbrown::HashMap;
use room_core::{ChurnMap, ConnId, MemberKey, NodeId, Role, RoleSet, RoomKey, Terminal, Timestamp, Uin};
use room_memberlist::{Cursor, MemberStore, PageQuery, PageStart, WriteOp};
use room_push::{Class, Decision, Envelope, FenceOutput, LimiterError, Message, Sender, SharedCacheError, Target};
use serde::{Deserialize, Serialize};

use super::access::{action_code, gate_code};
use super::{CacheAnswer, CacheOp, Output, RoomNode, RoomNodeConfig};
use crate::classroom::{Action, ActionError, Actor, CardResult, CardSpec, Classroom, ClassroomSnapshot, Reaction};
use crate::host::{EVENT_SEQ_GAP, EventKind, HostAnswer, Revocation, RoomEvent, TicketStamp};
use crate::peer::{Act, ActReply, PeerMsg};
use crate::wire::{HandOp, ReactKind, codes, data, kinds, text_payload};

/// Requests remembered per room (a retry of one of them is answered, not
/// done again).
const SEEN_PER_ROOM: usize = 4096;

/// Members a room keeps out at most (the oldest ban ends early past it).
const MAX_BANNED_PER_ROOM: usize = 100_000;

/// Why the node waits for the shared cache or the limiter.
#[derive(Debug)]
pub(super) enum Purpose {
    Append { room: RoomKey, epoch: u64, seq: u64 },
    RestoreHead(RoomKey),
    RestoreState(RoomKey),
    RestoreTail(RoomKey),
    Save { room: RoomKey },
    Refill(RoomKey),
    TailHead(RoomKey),
    TailRefill(RoomKey),
    CheckRange { conn: ConnId, epoch: u64, after: u64 },
    CheckHead { conn: ConnId, epoch: u64, after: u64 },
    Chat { from: NodeId, req: u64, conn: ConnId, message: Message },
}

#[derive(Debug)]
pub(super) struct Waiter {
    pub(super) purpose: Purpose,
    pub(super) deadline: Timestamp,
}

/// The answer a request gets when it is done.
#[derive(Debug, Clone)]
pub(super) struct Done {
    to: NodeId,
    req: u64,
    conn: ConnId,
    reply: Option<ActReply>,
    /// A host's request: answered with `HostDone` and this.
    host: Option<HostAnswer>,
}

impl Done {
    /// A host's request, answered `answer` when done.
    pub(super) fn host(to: NodeId, req: u64, answer: HostAnswer) -> Done {
        Done { to, req, conn: ConnId::NONE, reply: None, host: Some(answer) }
    }
}

/// Something a request does once the save holding its state change is stored.
#[derive(Debug)]
pub(super) enum Effect {
    /// Publish; the request is done when the first one is published.
    Publish { messages: Vec<Message>, done: Option<Done> },
    /// Switch the gate's mute-all (its signal follows), then done.
    MuteAll { on: bool, done: Done },
    /// Answer the request.
    Done(Done),
}

/// Recently done requests of a room, with what they were answered.
///
/// Answers are boxed: the table is kept at most half full for the churn
/// of requests (see [`ChurnMap`]), so a slot is kept small (16 bytes, not
/// the 150 of an answer in place). An entry's answer is kept without the
/// room's state it carried (see `answer_seen`).
#[derive(Debug, Default)]
struct Seen {
    order: VecDeque<u64>,
    answers: ChurnMap<u64, Option<Box<PeerMsg>>, ahash::RandomState>,
}

impl Seen {
    fn insert(&mut self, req: u64, answer: Option<PeerMsg>) {
        if self.answers.insert(req, answer.map(Box::new)).is_none() {
            self.order.push_back(req);
            if self.order.len() > SEEN_PER_ROOM
                && let Some(old) = self.order.pop_front()
            {
                self.answers.remove(&old);
            }
        }
    }
}

/// What a new owner is still waiting for.
#[derive(Debug, Default)]
struct Restore {
    head: Option<Option<(u64, u64)>>,
    state: Option<Option<(u64, Bytes)>>,
    tail: Option<Vec<u64>>,
    queued: VecDeque<(NodeId, PeerMsg)>,
    /// Reads that failed so far: each is asked again, up to
    /// [`RESTORE_ATTEMPTS`] in all, before the room starts without it.
    failures: u32,
}

/// How often a new owner asks the shared cache for a room before it gives
/// up and opens the room without what it could not read (a fresh epoch,
/// an empty classroom): a loaded cache should not reset a class, but a
/// dead one must not keep it closed.
const RESTORE_ATTEMPTS: u32 = 8;

/// The room's state saved in the shared cache.
#[derive(Debug, Serialize, Deserialize)]
struct RoomSnapshot {
    classroom: ClassroomSnapshot,
    members: Vec<(Uin, Role, Option<u16>)>,
    mute_all: bool,
    muted: Vec<Uin>,
    /// Members kept out, until (Unix microseconds).
    banned: Vec<(Uin, u64)>,
    /// The room's last event number.
    event_seq: u64,
    /// Revocations: what, since and until (Unix microseconds).
    revoked: Vec<(Revocation, u64, u64)>,
}

/// A room this node owns.
#[derive(Debug)]
pub(super) struct OwnedRoom {
    restore: Option<Restore>,
    classroom: Option<Classroom>,
    pub(super) mute_all: bool,
    muted: BTreeSet<Uin>,
    banned: BTreeMap<Uin, Timestamp>,
    /// Tickets refused: since when and until when.
    revoked: BTreeMap<Revocation, (Timestamp, Timestamp)>,
    /// The host closed the room: it is let go once its emptied state is
    /// stored, unless someone enters first.
    closing: bool,
    /// The room's last event number.
    event_seq: u64,
    /// Reaction totals the host was last told.
    reactions_told: (u64, u64),
    /// Joins (`Some(role)`) and leaves (`None`) since the last roster.
    presence_diff: BTreeMap<Uin, Option<Role>>,
    /// More changed than a roster carries.
    presence_overflow: bool,
    version: u64,
    dirty: bool,
    urgent: bool,
    saving: bool,
    last_save: Timestamp,
    held: VecDeque<(u64, Effect)>,
    awaiting: HashMap<u64, Done, ahash::RandomState>,
    seen: Seen,
    roster_dirty: bool,
    tally_dirty: bool,
    packets_dirty: BTreeSet<u64>,
    next_roster: Timestamp,
    next_tally: Timestamp,
    empty_since: Option<Timestamp>,
    timer: Option<Timestamp>,
}

impl OwnedRoom {
    fn restoring() -> OwnedRoom {
        OwnedRoom {
            restore: Some(Restore::default()),
            classroom: None,
            mute_all: false,
            muted: BTreeSet::new(),
            banned: BTreeMap::new(),
            revoked: BTreeMap::new(),
            closing: false,
            event_seq: 0,
            reactions_told: (0, 0),
            presence_diff: BTreeMap::new(),
            presence_overflow: false,
            version: 0,
            dirty: false,
            urgent: false,
            saving: false,
            last_save: Timestamp::ZERO,
            held: VecDeque::new(),
            awaiting: HashMap::with_hasher(ahash::RandomState::new()),
            seen: Seen::default(),
            roster_dirty: true,
            tally_dirty: false,
            packets_dirty: BTreeSet::new(),
            next_roster: Timestamp::ZERO,
            next_tally: Timestamp::ZERO,
            empty_since: None,
            timer: None,
        }
    }

    pub(super) fn is_ready(&self) -> bool {
        self.restore.is_none()
    }

    pub(super) fn classroom(&self) -> Option<&Classroom> {
        self.classroom.as_ref()
    }

    /// Why an entry with `ticket` is refused, if it is.
    fn revoked_reason(&self, now: Timestamp, uin: Uin, ticket: Option<TicketStamp>) -> Option<&'static str> {
        if self.revoked.is_empty() {
            return None;
        }
        if let Some(t) = ticket
            && self.revoked.get(&Revocation::Ticket(t.id)).is_some_and(|(_, until)| *until > now)
        {
            return Some("this ticket was revoked");
        }
        let (since, until) = self.revoked.get(&Revocation::User(uin))?;
        let issued = ticket.map_or(0, |t| t.issued_at.saturating_mul(1_000_000));
        (*until > now && issued <= since.as_micros()).then_some("this user's tickets were revoked: ask for a new one")
    }

    /// The version a change made now will be stored in.
    fn next_version(&self) -> u64 {
        self.version + 1 + u64::from(self.saving)
    }

    /// A change that must be stored before `effect` happens.
    fn hold(&mut self, effect: Effect) {
        let need = self.next_version();
        self.dirty = true;
        self.urgent = true;
        self.held.push_back((need, effect));
    }
}

fn refused(e: &ActionError) -> ActReply {
    ActReply::refused(action_code(e), e.to_string())
}

fn refused_gate(e: &room_push::GateError) -> ActReply {
    let retry_after_ms = match e {
        room_push::GateError::RateLimited { retry_after, .. } => {
            Some(u64::try_from(retry_after.as_millis()).unwrap_or(u64::MAX))
        }
        _ => None,
    };
    ActReply::Refused { code: gate_code(e).to_owned(), message: e.to_string(), retry_after_ms }
}

/// A seed for a room's red packets that differs between rooms.
fn room_seed(room: RoomKey) -> u64 {
    room_core::stable_hash(&[u64::from(room.bid.0).to_le_bytes(), room.room.0.to_le_bytes()].concat())
}

impl RoomNode {
    fn owns(&self, room: RoomKey) -> bool {
        self.room_owner(room) == Some(self.me)
    }

    /// The room, restoring it first if this node has just become its owner.
    fn ensure_room(&mut self, now: Timestamp, room: RoomKey) {
        if self.rooms.contains_key(&room) {
            return;
        }
        self.rooms.insert(room, OwnedRoom::restoring());
        self.cache(now, CacheOp::LoadState(room), Purpose::RestoreState(room));
        self.cache(now, CacheOp::Head(room), Purpose::RestoreHead(room));
    }

    /// Where every message for a room's owner comes in. A message for a
    /// room this node does not own is answered "not the owner" (a request)
    /// or passed on once to the owner this node sees (a session's news,
    /// never back to its sender); a room just becoming this node's is
    /// restored first, its messages held (bounded) meanwhile; a retried
    /// request is answered as before. Returns the message if it is to be
    /// handled now.
    pub(super) fn owner_intake(&mut self, now: Timestamp, from: NodeId, msg: PeerMsg) -> Option<PeerMsg> {
        let mut viewer = None;
        let (room, request) = match &msg {
            PeerMsg::Enter { req, member, conn, role, .. } => {
                viewer = Some(Actor { uin: member.uin, role: *role });
                (member.room_key(), Some((*req, *conn)))
            }
            PeerMsg::Act { req, member, conn, .. } => (member.room_key(), Some((*req, *conn))),
            PeerMsg::Host { req, request } => (request.room(), Some((*req, ConnId::NONE))),
            PeerMsg::Ended { member, .. } | PeerMsg::Adopted { member, .. } => (member.room_key(), None),
            _ => return Some(msg),
        };
        if !self.owns(room) {
            match request {
                Some((req, _)) => self.send_peer(from, PeerMsg::NotOwner { req }),
                // Views differ for a moment: pass it on once, never back.
                None => {
                    if let Some(owner) = self.room_owner(room).filter(|o| *o != from && *o != self.me) {
                        self.send_peer(owner, msg);
                    }
                }
            }
            return None;
        }
        self.ensure_room(now, room);
        let max = self.config.max_queued_per_room;
        if let Some(restore) = self.rooms.get_mut(&room).and_then(|r| r.restore.as_mut()) {
            if restore.queued.len() < max {
                restore.queued.push_back((from, msg));
            } else if let Some((req, _)) = request {
                // Its access node sends it again soon (a join storm into a
                // room being restored waits rather than fails).
                self.send_peer(from, PeerMsg::Busy { req });
            }
            return None;
        }
        if let Some((req, conn)) = request
            && self.answer_seen(now, from, room, req, conn, viewer)
        {
            return None;
        }
        Some(msg)
    }

    /// Answers a retried request from what it was answered before.
    fn answer_seen(
        &mut self,
        now: Timestamp,
        from: NodeId,
        room: RoomKey,
        req: u64,
        conn: ConnId,
        viewer: Option<Actor>,
    ) -> bool {
        let Some(r) = self.rooms.get(&room) else { return false };
        if r.awaiting.contains_key(&req) || r.held.iter().any(|(_, e)| effect_req(e) == Some(req)) {
            // Still being done: the answer will come.
            self.stats.deduplicated += 1;
            return true;
        }
        let Some(answer) = r.seen.answers.get(&req) else { return false };
        self.stats.deduplicated += 1;
        let mut msg = answer.as_deref().cloned().unwrap_or(PeerMsg::Done { req, conn, reply: None });
        // An entry is remembered without the state it was told (that copy
        // of what is open, a kilobyte and more per member who entered,
        // is not kept): a retry is told what is open and muted now, as a
        // `state` request would be.
        if let (PeerMsg::Entered { muted, self_muted, state, .. }, Some(viewer)) = (&mut msg, viewer) {
            let open = r.classroom.as_ref().is_some_and(has_open_state);
            (*muted, *self_muted) = (r.mute_all, r.muted.contains(&viewer.uin));
            *state = if open || *muted || *self_muted { self.state_data(now, room, Some(viewer)) } else { None };
        }
        self.send_peer(from, msg);
        true
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn owner_enter(
        &mut self,
        now: Timestamp,
        from: NodeId,
        req: u64,
        member: MemberKey,
        role: Role,
        terminal: Terminal,
        conn: ConnId,
        since: Timestamp,
        ticket: Option<TicketStamp>,
    ) {
        let room = member.room_key();
        let refuse_with = |node: &mut RoomNode, code: &str, message: String| {
            node.stats.refused_entries += 1;
            let reply = ActReply::refused(code, message);
            let done = PeerMsg::Done { req, conn, reply: Some(reply) };
            node.send_peer(from, done);
        };
        let refuse = |node: &mut RoomNode, message: String| refuse_with(node, codes::ENTRY_REFUSED, message);
        if let Some(until) = self.rooms.get(&room).and_then(|r| r.banned.get(&member.uin)).filter(|u| **u > now) {
            let secs = until.as_micros().saturating_sub(now.as_micros()).div_ceil(1_000_000);
            return refuse_with(self, codes::BANNED, format!("removed from this room for another {secs} s"));
        }
        if let Some(why) = self.rooms.get(&room).and_then(|r| r.revoked_reason(now, member.uin, ticket)) {
            return refuse_with(self, codes::REVOKED, why.into());
        }
        let first_terminal = self.replica.get(member).is_none();
        let enter = WriteOp::Enter { uin: member.uin, role, terminal, attrs: None };
        match self.replica.apply(now, room, std::slice::from_ref(&enter)) {
            Ok(results) => {
                if let Some(Err(e)) = results.into_iter().next() {
                    return refuse(self, e.to_string());
                }
            }
            Err(e) => return refuse(self, e.to_string()),
        }
        self.drain_replica();
        let joined = match self.gate.join(now, room, member.uin, role) {
            Ok(j) => j,
            Err(e) => {
                let exit = WriteOp::Exit { uin: member.uin, terminal };
                let _ = self.replica.apply(now, room, std::slice::from_ref(&exit));
                self.drain_replica();
                return refuse(self, e.to_string());
            }
        };
        let self_muted = self.rooms.get(&room).is_some_and(|r| r.muted.contains(&member.uin));
        if self_muted {
            let _ = self.gate.mute_user(room, member.uin, true);
        }
        let session_owner = self.session_owner_of(&member);
        self.send_peer(session_owner, PeerMsg::Join { member, terminal, conn, since });
        if first_terminal {
            self.event(now, room, EventKind::Entered { uin: member.uin, role, terminal });
            self.presence_changed(room, member.uin, Some(role));
        }
        let (epoch, head) = self.gate.gate().sequence(room).unwrap_or((0, 0));
        let Some(r) = self.rooms.get_mut(&room) else { return };
        r.roster_dirty = true;
        r.dirty = true;
        r.empty_since = None;
        r.closing = false;
        let (mute_all, open) = (r.mute_all, r.classroom.as_ref().is_some_and(has_open_state));
        // What is open now, for a member who came in after it opened: part
        // of the entry, not a message numbered in the room's sequence (a
        // thousand members coming back after a failover would otherwise
        // flood it).
        let viewer = Actor { uin: member.uin, role };
        let state = if open || mute_all || self_muted { self.state_data(now, room, Some(viewer)) } else { None };
        let subclass = joined.map(|s| s.0);
        let entered = |state| PeerMsg::Entered { req, conn, subclass, epoch, head, muted: mute_all, self_muted, state };
        if let Some(r) = self.rooms.get_mut(&room) {
            // Remembered without the state: a retry is told what is open
            // then (see `answer_seen`).
            r.seen.insert(req, Some(entered(None)));
        }
        self.send_peer(from, entered(state));
        self.reschedule(now, room);
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn owner_act(
        &mut self,
        now: Timestamp,
        from: NodeId,
        req: u64,
        member: MemberKey,
        role: Role,
        conn: ConnId,
        act: Act,
    ) {
        let room = member.room_key();
        let done = Done { to: from, req, conn, reply: None, host: None };
        let actor = Actor { uin: member.uin, role };
        let sender = Sender { uin: member.uin, role };
        match act {
            Act::Chat { text } => {
                let message = Message::new(room, Class::Chat, kinds::CHAT, text_payload(&text)).from_sender(sender);
                let id = self.next_id();
                let deadline = now.saturating_add(self.config.cache_timeout);
                self.waiting.insert(id, Waiter { purpose: Purpose::Chat { from, req, conn, message }, deadline });
                self.waiting_deadlines.insert(deadline, id);
                self.outputs.push_back(Output::Limit {
                    id,
                    key: format!("chat:{}", room.bid.0),
                    quota: self.config.business_chat,
                    cost: 1,
                });
            }
            Act::Custom { kind, data, to } => self.act_custom(now, room, sender, kind, data, to, done),
            Act::Say { text } => {
                let message = Message::new(room, Class::Teacher, kinds::TEACHER_SAY, text_payload(&text))
                    .from_sender(sender)
                    .with_origin(req);
                match self.gate.publish(now, message) {
                    Ok(()) => self.await_publish(room, req, done),
                    Err(e) => self.finish(room, Done { reply: Some(refused_gate(&e)), ..done }),
                }
            }
            Act::React { kind, n } => {
                let (reaction, k) = match kind {
                    ReactKind::Flower => (Reaction::Flower, kinds::FLOWER),
                    ReactKind::Like => (Reaction::Like, kinds::LIKE),
                };
                let checked = self.with_classroom(room, |c| c.check_react(actor, n));
                if let Some(Err(e)) = checked {
                    return self.finish(room, Done { reply: Some(refused(&e)), ..done });
                }
                match self.gate.publish(now, Message::reaction(room, k, sender, n)) {
                    Ok(()) => {
                        let _ = self.with_classroom(room, |c| c.react(actor, reaction, n));
                        if let Some(r) = self.rooms.get_mut(&room) {
                            // Totals may be lost with the owner: saved lazily.
                            r.dirty = true;
                        }
                    }
                    Err(e) => self.finish(room, Done { reply: Some(refused_gate(&e)), ..done }),
                }
            }
            Act::Hand { op, uin } => self.act_hand(now, room, actor, op, uin, done),
            Act::CardOpen { options, correct, seconds } => {
                let deadline = seconds.map(|s| now.saturating_add(std::time::Duration::from_secs(u64::from(s))));
                let spec = CardSpec { options, correct, deadline };
                match self.with_classroom(room, |c| c.open_card(actor, now, spec)) {
                    Some(Ok(id)) => {
                        let data = data::encode(&data::Card::Open { id, options, seconds });
                        let message = Message::new(room, Class::Signal, kinds::CARD, data).with_origin(req);
                        self.hold_effect(room, Effect::Publish { messages: vec![message], done: Some(done) });
                    }
                    Some(Err(e)) => self.finish(room, Done { reply: Some(refused(&e)), ..done }),
                    None => {}
                }
            }
            Act::CardAnswer { option } => {
                let result = self.with_classroom(room, |c| {
                    let card = c.open_card_view().map_or(0, |v| v.id);
                    match c.answer_card(actor, now, option) {
                        // A retry of an answer already taken is the same answer.
                        Err(ActionError::AlreadyAnswered) if c.answer_of(actor.uin) == Some(option) => Ok(None),
                        other => other.map(|()| Some(card)),
                    }
                });
                match result {
                    Some(Ok(new)) => {
                        if let Some(r) = self.rooms.get_mut(&room) {
                            r.tally_dirty = true;
                        }
                        if let Some(card) = new {
                            self.event(now, room, EventKind::Answer { card, uin: actor.uin, option });
                        }
                        let reply = Some(ActReply::Answered { option });
                        self.hold_effect(room, Effect::Done(Done { reply, ..done }));
                    }
                    Some(Err(e)) => self.finish(room, Done { reply: Some(refused(&e)), ..done }),
                    None => {}
                }
            }
            Act::CardClose => match self.with_classroom(room, |c| c.close_card(actor)) {
                Some(Ok(result)) => {
                    self.event(now, room, card_result_event(&result));
                    let message = card_result_message(room, &result).with_origin(req);
                    self.hold_effect(room, Effect::Publish { messages: vec![message], done: Some(done) });
                }
                Some(Err(e)) => self.finish(room, Done { reply: Some(refused(&e)), ..done }),
                None => {}
            },
            Act::PacketSend { amount, count } => {
                match self.with_classroom(room, |c| c.send_packet(actor, amount, count)) {
                    Some(Ok(id)) => {
                        let data = data::encode(&data::Packet::Open { id, amount, count });
                        let message = Message::new(room, Class::Signal, kinds::PACKET, data).with_origin(req);
                        self.hold_effect(room, Effect::Publish { messages: vec![message], done: Some(done) });
                    }
                    Some(Err(e)) => self.finish(room, Done { reply: Some(refused(&e)), ..done }),
                    None => {}
                }
            }
            Act::PacketGrab { id } => {
                let result = self.with_classroom(room, |c| match c.grab_packet(actor, id) {
                    // A retry of a grab already taken gets the same share.
                    Err(ActionError::AlreadyGrabbed(_)) => {
                        c.grab_of(id, actor.uin).map(|a| (a, false)).ok_or(ActionError::AlreadyGrabbed(id))
                    }
                    other => other.map(|a| (a, true)),
                });
                match result {
                    Some(Ok((amount, new))) => {
                        if new {
                            self.event(now, room, EventKind::Grab { packet: id, uin: actor.uin, amount });
                        }
                        if let Some(r) = self.rooms.get_mut(&room) {
                            r.packets_dirty.insert(id);
                        }
                        let reply = Some(ActReply::Grabbed { id, amount });
                        self.hold_effect(room, Effect::Done(Done { reply, ..done }));
                    }
                    Some(Err(e)) => self.finish(room, Done { reply: Some(refused(&e)), ..done }),
                    None => {}
                }
            }
            Act::MuteAll { on } => {
                if !role.is_staff() {
                    let e = ActionError::NotAllowed { role, action: Action::Mute };
                    return self.finish(room, Done { reply: Some(refused(&e)), ..done });
                }
                if let Some(r) = self.rooms.get_mut(&room) {
                    r.mute_all = on;
                }
                self.hold_effect(room, Effect::MuteAll { on, done });
            }
            Act::Mute { uin, on } => {
                if !role.is_staff() {
                    let e = ActionError::NotAllowed { role, action: Action::Mute };
                    return self.finish(room, Done { reply: Some(refused(&e)), ..done });
                }
                if let Some(r) = self.rooms.get_mut(&room) {
                    if on {
                        r.muted.insert(uin);
                    } else {
                        r.muted.remove(&uin);
                    }
                }
                let _ = self.gate.mute_user(room, uin, on);
                let data = data::encode(&data::Muted { on });
                let message =
                    Message::new(room, Class::Signal, kinds::MUTED, data).to(Target::user(uin)).with_origin(req);
                self.hold_effect(room, Effect::Publish { messages: vec![message], done: Some(done) });
            }
            Act::State => {
                let data = self.state_data(now, room, Some(actor)).unwrap_or_default();
                self.finish(room, Done { reply: Some(ActReply::State { data }), ..done });
            }
            Act::Members { limit, after } => {
                let start = after.map_or(PageStart::First, |bits| PageStart::After(Cursor::from_bits(bits)));
                let query = PageQuery::first(limit.clamp(1, crate::wire::data::MAX_MEMBERS_PAGE) as usize).start(start);
                let mut rows = Vec::new();
                let reply = match self.replica.page(room, &query, &mut rows) {
                    Ok(info) => ActReply::Members {
                        rows: rows.iter().map(|r| (r.uin, r.role, r.terminals.bits())).collect(),
                        next: info.next.map(|c| c.to_bits()),
                    },
                    Err(e) => ActReply::refused(codes::MALFORMED, e.to_string()),
                };
                self.finish(room, Done { reply: Some(reply), ..done });
            }
        }
        self.reschedule(now, room);
    }

    /// A message of one of the host's kinds: already checked by the
    /// sender's access node (kind, role, rate, size, filter); here its
    /// audience becomes a target and the room's own bound applies.
    #[allow(clippy::too_many_arguments)]
    fn act_custom(
        &mut self,
        now: Timestamp,
        room: RoomKey,
        sender: Sender,
        kind: u16,
        data: Bytes,
        to: Option<Uin>,
        done: Done,
    ) {
        use crate::kinds::Audience;
        let Some(spec) = self.config.kinds.get(kind).cloned() else {
            let reply = ActReply::refused(codes::UNKNOWN_KIND, format!("kind {kind} is not registered here"));
            return self.finish(room, Done { reply: Some(reply), ..done });
        };
        let target = match (spec.audience, to) {
            (Audience::Staff, _) => Target::room().roles(RoleSet::staff()),
            (Audience::User, Some(uin)) => Target::user(uin),
            _ => Target::room(),
        };
        let target = if spec.audience == Audience::User { target } else { target.exclude(sender.uin) };
        let message = Message::new(room, spec.class, room_push::Kind(kind), data).from_sender(sender).to(target);
        if !spec.class.is_reliable() {
            // Chat rules apply: mutes, the sender's and the room's chat limits.
            if let Err(e) = self.gate.publish(now, message) {
                self.finish(room, Done { reply: Some(refused_gate(&e)), ..done });
            }
            return;
        }
        if let Some(quota) = spec.room_rate {
            let key = (room.member(Uin(0)), super::RequestKind::Custom(kind));
            if let Ok(Decision::Limited { retry_after }) = self.senders.check(key, quota, now, 1) {
                let reply = ActReply::Refused {
                    code: codes::RATE_LIMITED.into(),
                    message: format!("the room sends kind {kind} faster than its limit"),
                    retry_after_ms: Some(u64::try_from(retry_after.as_millis()).unwrap_or(u64::MAX)),
                };
                return self.finish(room, Done { reply: Some(reply), ..done });
            }
        }
        // The sender's role was checked against the kind's registration:
        // a learner may send a reliable kind the host allowed it.
        match self.gate.publish_system(now, message.with_origin(done.req)) {
            Ok(()) => self.await_publish(room, done.req, done),
            Err(e) => self.finish(room, Done { reply: Some(refused_gate(&e)), ..done }),
        }
    }

    fn act_hand(&mut self, now: Timestamp, room: RoomKey, actor: Actor, op: HandOp, uin: Option<Uin>, done: Done) {
        let result = self.with_classroom(room, |c| {
            let target = match op {
                HandOp::Raise => c.raise_hand(actor).map(|()| actor.uin),
                HandOp::Lower => c.lower_hand(actor).map(|()| actor.uin),
                HandOp::Invite | HandOp::Dismiss => {
                    let Some(who) = uin else { return Err(None) };
                    let r = if op == HandOp::Invite { c.invite_hand(actor, who) } else { c.dismiss_hand(actor, who) };
                    r.map(|()| who)
                }
            };
            target
                .map_err(Some)
                .map(|t| (t, c.hands().take(crate::wire::data::MAX_LISTED_HANDS).map(|u| u.0).collect::<Vec<u64>>()))
        });
        let (target, queue) = match result {
            Some(Ok(v)) => v,
            Some(Err(Some(e))) => return self.finish(room, Done { reply: Some(refused(&e)), ..done }),
            Some(Err(None)) => {
                let reply = ActReply::refused(codes::MALFORMED, "invite and dismiss need a uin");
                return self.finish(room, Done { reply: Some(reply), ..done });
            }
            None => return,
        };
        self.event(now, room, EventKind::Hand { uin: target, op, by: actor.uin });
        let op_name = match op {
            HandOp::Raise => "raise",
            HandOp::Lower => "lower",
            HandOp::Invite => "invite",
            HandOp::Dismiss => "dismiss",
        };
        let payload = data::encode(&data::Hand { op: op_name, uin: target.0, queue: &queue });
        // Staff see the queue; the member whose hand it is sees the outcome.
        let mut messages = vec![
            Message::new(room, Class::Signal, kinds::HAND, payload.clone())
                .to(Target::room().roles(RoleSet::staff()))
                .with_origin(done.req),
        ];
        if !actor.role.is_staff() || target != actor.uin {
            messages.push(Message::new(room, Class::Signal, kinds::HAND, payload).to(Target::user(target)));
        }
        self.hold_effect(room, Effect::Publish { messages, done: Some(done) });
    }

    fn with_classroom<T>(&mut self, room: RoomKey, f: impl FnOnce(&mut Classroom) -> T) -> Option<T> {
        self.rooms.get_mut(&room).and_then(|r| r.classroom.as_mut()).map(f)
    }

    pub(super) fn hold_effect(&mut self, room: RoomKey, effect: Effect) {
        if let Some(r) = self.rooms.get_mut(&room) {
            r.hold(effect);
        }
    }

    /// The request is done: its access node is told, and a retry gets the
    /// same answer.
    pub(super) fn finish(&mut self, room: RoomKey, done: Done) {
        if let Some(answer) = done.host {
            return self.finish_host(room, done.to, done.req, Ok(answer));
        }
        let msg = PeerMsg::Done { req: done.req, conn: done.conn, reply: done.reply };
        self.remember(room, done.req, msg.clone());
        self.send_peer(done.to, msg);
    }

    /// What request `req` was answered, for its retries.
    pub(super) fn remember(&mut self, room: RoomKey, req: u64, answer: PeerMsg) {
        if let Some(r) = self.rooms.get_mut(&room) {
            r.seen.insert(req, Some(answer));
        }
    }

    /// Refuses the tickets `what` names until `until`.
    pub(super) fn revoke(&mut self, now: Timestamp, room: RoomKey, what: Revocation, until: Timestamp) {
        let Some(r) = self.rooms.get_mut(&room) else { return };
        r.revoked.retain(|_, (_, u)| *u > now);
        if r.revoked.len() >= MAX_BANNED_PER_ROOM
            && !r.revoked.contains_key(&what)
            && let Some(first) = r.revoked.iter().min_by_key(|(_, (_, u))| *u).map(|(k, _)| *k)
        {
            r.revoked.remove(&first);
        }
        r.revoked.insert(what, (now, until));
        r.dirty = true;
    }

    /// Notes a join (`Some(role)`) or a leave for the next roster: a join
    /// and a leave of one member between two rosters cancel out.
    fn presence_changed(&mut self, room: RoomKey, uin: Uin, role: Option<Role>) {
        let Some(r) = self.rooms.get_mut(&room) else { return };
        if role.is_none() && matches!(r.presence_diff.get(&uin), Some(Some(_))) {
            r.presence_diff.remove(&uin);
            return;
        }
        if r.presence_diff.len() >= data::MAX_ROSTER_DIFF && !r.presence_diff.contains_key(&uin) {
            r.presence_overflow = true;
            return;
        }
        r.presence_diff.insert(uin, role);
    }

    /// Tells the host what happened in a room it owns.
    pub(super) fn event(&mut self, now: Timestamp, room: RoomKey, what: EventKind) {
        if !self.config.events {
            return;
        }
        let Some(r) = self.rooms.get_mut(&room) else { return };
        r.event_seq += 1;
        let event = RoomEvent { room, seq: r.event_seq, at: now.as_micros(), what };
        self.outputs.push_back(Output::Event(event));
    }

    /// Keeps `member` out of `room` until `until` (bans that ended are
    /// forgotten; past the bound, the one ending first goes).
    pub(super) fn ban(&mut self, now: Timestamp, room: RoomKey, member: MemberKey, until: Timestamp) {
        let Some(r) = self.rooms.get_mut(&room) else { return };
        r.banned.retain(|_, u| *u > now);
        if r.banned.len() >= MAX_BANNED_PER_ROOM
            && !r.banned.contains_key(&member.uin)
            && let Some(first) = r.banned.iter().min_by_key(|(_, u)| **u).map(|(k, _)| *k)
        {
            r.banned.remove(&first);
        }
        r.banned.insert(member.uin, until);
        r.dirty = true;
    }

    /// A member is out of the room's interactions (hands, answers stay
    /// counted); the room's state changed.
    pub(super) fn member_gone(&mut self, now: Timestamp, room: RoomKey, member: MemberKey, why: room_core::ExitReason) {
        self.event(now, room, EventKind::Left { uin: member.uin, reason: why });
        self.presence_changed(room, member.uin, None);
        let hand_was_up = self.with_classroom(room, |c| {
            let up = c.hands().any(|u| u == member.uin);
            c.left(member.uin);
            up
        });
        if let Some(r) = self.rooms.get_mut(&room) {
            r.dirty = true;
            if hand_was_up == Some(true) {
                r.urgent = true;
            }
        }
    }

    /// The host closed the room: what it held is let go (interactions,
    /// mutes, bans), stored so, and the room freed once stored.
    pub(super) fn reset_room(&mut self, now: Timestamp, room: RoomKey) {
        let seed = room_seed(room);
        let config = self.config.classroom.clone();
        let Some(r) = self.rooms.get_mut(&room) else { return };
        let muted: Vec<Uin> = std::mem::take(&mut r.muted).into_iter().collect();
        let was_muted = std::mem::replace(&mut r.mute_all, false);
        r.classroom = Some(Classroom::new(config, seed));
        r.banned.clear();
        r.revoked.clear();
        r.closing = true;
        r.tally_dirty = false;
        r.packets_dirty.clear();
        r.dirty = true;
        r.urgent = true;
        for uin in muted {
            let _ = self.gate.mute_user(room, uin, false);
        }
        if was_muted {
            let _ = self.gate.set_mute_all(now, room, false);
        }
    }

    /// The request is done once the message numbered for it is published.
    pub(super) fn await_publish(&mut self, room: RoomKey, req: u64, done: Done) {
        if let Some(r) = self.rooms.get_mut(&room) {
            r.awaiting.insert(req, done);
        }
    }

    /// A message of the room's own (signals, rosters, tallies): numbered
    /// without the room's rate limits, which apply to the requests that
    /// caused them.
    fn publish_system(&mut self, now: Timestamp, message: Message) {
        let _ = self.gate.publish_system(now, message);
    }

    fn publish_state(&mut self, now: Timestamp, room: RoomKey, target: Target) {
        let Some(data) = self.state_data(now, room, None) else { return };
        let message = Message::new(room, Class::Signal, kinds::STATE, data).to(target);
        self.publish_system(now, message);
    }

    /// The room's interaction state as clients see it (`data::State`).
    fn state_data(&self, now: Timestamp, room: RoomKey, viewer: Option<Actor>) -> Option<Bytes> {
        let r = self.rooms.get(&room)?;
        let c = r.classroom.as_ref()?;
        let hands: Vec<u64> = match viewer {
            Some(v) if !v.role.is_staff() => c.hands().filter(|u| *u == v.uin).map(|u| u.0).collect(),
            _ => c.hands().take(crate::wire::data::MAX_LISTED_HANDS).map(|u| u.0).collect(),
        };
        let card_view = c.open_card_view();
        let card = card_view.as_ref().map(|v| data::Card::Open {
            id: v.id,
            options: v.options,
            seconds: v.deadline.map(|d| (d.as_micros().saturating_sub(now.as_micros()) / 1_000_000) as u32),
        });
        let packets = c
            .packets()
            .map(|(id, p)| data::Packet::State {
                id,
                total: p.total,
                count: p.count,
                grabbed: p.grabbed,
                taken: p.taken,
            })
            .collect();
        let mine = viewer.map(|v| v.uin);
        let state = data::State {
            hands: &hands,
            card,
            answer: mine.and_then(|u| c.answer_of(u)),
            grabbed: mine
                .map(|u| c.packets().filter_map(|(id, _)| c.grab_of(id, u).map(|a| (id, a))).collect())
                .unwrap_or_default(),
            packets,
            muted: r.mute_all,
            self_muted: mine.is_some_and(|u| r.muted.contains(&u)),
            flowers: c.reaction_total(Reaction::Flower),
            likes: c.reaction_total(Reaction::Like),
        };
        Some(data::encode(&state))
    }

    /// A session ended (its session owner decided).
    pub(super) fn owner_ended(
        &mut self,
        now: Timestamp,
        member: MemberKey,
        terminal: Terminal,
        last: bool,
        reason: room_core::ExitReason,
    ) {
        let room = member.room_key();
        let was_listed = self.replica.get(member).is_some();
        let exit = WriteOp::Exit { uin: member.uin, terminal };
        let _ = self.replica.apply(now, room, std::slice::from_ref(&exit));
        self.drain_replica();
        let still_listed = self.replica.get(member).is_some();
        if was_listed && !still_listed {
            let _ = self.gate.leave(now, room, member.uin);
            self.member_gone(now, room, member, reason);
        } else if last && !still_listed {
            // Taken out already (a kick): the plan forgets it too.
            let _ = self.gate.leave(now, room, member.uin);
        }
        self.room_changed(now, room);
    }

    /// A session moved to a new session owner without an entry: heartbeat
    /// repair of the member list, and a place in the plan if it has none.
    pub(super) fn owner_adopted(&mut self, now: Timestamp, member: MemberKey, role: Role, terminal: Terminal) {
        let room = member.room_key();
        if self.replica.get(member).is_none() {
            // Heartbeat repair of a member the list had lost.
            self.event(now, room, EventKind::Entered { uin: member.uin, role, terminal });
            self.presence_changed(room, member.uin, Some(role));
        }
        let assert = WriteOp::Assert { uin: member.uin, role, terminal };
        let _ = self.replica.apply(now, room, std::slice::from_ref(&assert));
        self.drain_replica();
        if self.gate.gate().subclass_of(room, member.uin).is_none() && !role.is_staff() {
            let _ = self.gate.join(now, room, member.uin, role);
            let _ = self.gate.announce_subclass(now, room, member.uin);
            if let Some(r) = self.rooms.get_mut(&room) {
                r.dirty = true;
            }
        }
        self.room_changed(now, room);
    }

    pub(super) fn room_changed(&mut self, now: Timestamp, room: RoomKey) {
        let empty = self.replica.counts(room).is_none_or(|c| c.total() == 0);
        if let Some(r) = self.rooms.get_mut(&room) {
            r.roster_dirty = true;
            if empty {
                r.empty_since.get_or_insert(now);
            } else {
                r.empty_since = None;
            }
        }
        self.reschedule(now, room);
    }

    /// The view changed: rooms no longer owned go; rooms now owned that this
    /// node's member list knows are restored; sessions whose owner moved
    /// are handed to their new owners.
    pub(super) fn owner_view_changed(&mut self, now: Timestamp) {
        let lost: Vec<RoomKey> = self.rooms.keys().filter(|r| !self.owns(**r)).copied().collect();
        for room in lost {
            self.release_room(now, room);
        }
        for room in self.replica.store().room_keys() {
            if self.owns(room) && !self.rooms.contains_key(&room) {
                self.ensure_room(now, room);
            }
        }
        let ready: Vec<RoomKey> = self.rooms.iter().filter(|(_, r)| r.is_ready()).map(|(k, _)| *k).collect();
        for room in ready {
            self.hand_over_sessions(room, true);
        }
    }

    /// Tells the session owners of `room`'s listed members to keep their
    /// sessions: all of them (`only_moved` false: a room just restored
    /// here), or those whose session owner changed with the view.
    fn hand_over_sessions(&mut self, room: RoomKey, only_moved: bool) {
        let Some(router) = self.router.as_ref() else { return };
        let mut by_node: BTreeMap<NodeId, Vec<(MemberKey, Terminal)>> = BTreeMap::new();
        for row in self.replica.store().members(room) {
            let member = room.member(row.uin);
            let Ok(owner) = router.route(&member) else { continue };
            let moved = self.previous_router.as_ref().is_none_or(|p| p.route(&member) != Ok(owner));
            if only_moved && !moved {
                continue;
            }
            for t in row.terminals.iter() {
                by_node.entry(owner).or_default().push((member, t));
            }
        }
        for (node, sessions) in by_node {
            for chunk in sessions.chunks(10_000) {
                self.send_peer(node, PeerMsg::Hold { sessions: chunk.to_vec() });
            }
        }
    }

    /// This node lets `room` go (another node owns it, or another owner
    /// fenced it out). Requests in flight are answered "not the owner":
    /// their access nodes retry at the owner they see.
    fn release_room(&mut self, now: Timestamp, room: RoomKey) {
        let Some(r) = self.rooms.remove(&room) else { return };
        if let Some(at) = r.timer {
            self.room_timers.remove(at, room);
        }
        let _ = self.gate.release(room);
        let mut reqs: Vec<(NodeId, u64)> = r.awaiting.values().map(|d| (d.to, d.req)).collect();
        reqs.extend(r.held.iter().filter_map(|(_, e)| effect_done(e).map(|d| (d.to, d.req))));
        if let Some(restore) = r.restore {
            for (from, msg) in restore.queued {
                if let PeerMsg::Act { req, .. } | PeerMsg::Enter { req, .. } | PeerMsg::Host { req, .. } = msg {
                    reqs.push((from, req));
                }
            }
        }
        for (to, req) in reqs {
            self.send_peer(to, PeerMsg::NotOwner { req });
        }
        let _ = now;
    }

    /// The shared cache answered.
    pub(super) fn cache_answered(&mut self, now: Timestamp, waiter: Waiter, answer: CacheAnswer) {
        let unavailable = || SharedCacheError::Unavailable("unexpected answer".into());
        match (waiter.purpose, answer) {
            (Purpose::Append { room, epoch, seq }, CacheAnswer::Appended(result)) => {
                self.gate.handle_appended(now, room, epoch, seq, result);
            }
            (Purpose::RestoreHead(room), CacheAnswer::Head(Err(_))) if self.retry_restore(room) => {
                self.cache(now, CacheOp::Head(room), Purpose::RestoreHead(room));
            }
            (Purpose::RestoreState(room), CacheAnswer::State(Err(_))) if self.retry_restore(room) => {
                self.cache(now, CacheOp::LoadState(room), Purpose::RestoreState(room));
            }
            (Purpose::RestoreHead(room), CacheAnswer::Head(result)) => {
                let head = result.ok().flatten();
                let tail_from =
                    head.filter(|(_, h)| *h > 0).map(|(e, h)| (e, h.saturating_sub(self.config.dedupe_tail), h));
                if let Some(restore) = self.rooms.get_mut(&room).and_then(|r| r.restore.as_mut()) {
                    restore.head = Some(head);
                    if tail_from.is_none() {
                        restore.tail = Some(Vec::new());
                    }
                }
                if let Some((epoch, after, upto)) = tail_from {
                    self.cache(now, CacheOp::Range { room, epoch, after, upto }, Purpose::RestoreTail(room));
                }
                self.try_finish_restore(now, room);
            }
            (Purpose::RestoreState(room), CacheAnswer::State(result)) => {
                if let Some(restore) = self.rooms.get_mut(&room).and_then(|r| r.restore.as_mut()) {
                    restore.state = Some(result.ok().flatten());
                }
                self.try_finish_restore(now, room);
            }
            (Purpose::RestoreTail(room), CacheAnswer::Range(result)) => {
                let origins = result.unwrap_or_default().iter().map(|e| e.message.origin).filter(|o| *o != 0).collect();
                if let Some(restore) = self.rooms.get_mut(&room).and_then(|r| r.restore.as_mut()) {
                    restore.tail = Some(origins);
                }
                self.try_finish_restore(now, room);
            }
            (Purpose::Save { room }, CacheAnswer::Saved(result)) => self.save_answered(now, room, result),
            (Purpose::Refill(room), CacheAnswer::Range(result)) => self.refill_answered(now, room, result),
            (Purpose::TailHead(room), CacheAnswer::Head(result)) => self.tail_head_answered(now, room, result),
            (Purpose::TailRefill(room), CacheAnswer::Range(result)) => self.tail_refill_answered(now, room, result),
            (Purpose::CheckRange { conn, epoch, after }, CacheAnswer::Range(result)) => {
                self.check_range_answered(now, conn, epoch, after, result);
            }
            (Purpose::CheckHead { conn, epoch, after }, CacheAnswer::Head(result)) => {
                self.check_head_answered(conn, epoch, after, result);
            }
            // An answer of the wrong kind is a broken driver: treat it as no answer.
            (purpose, _) => {
                let waiter = Waiter { purpose, deadline: now };
                let answer = match &waiter.purpose {
                    Purpose::Append { .. } => CacheAnswer::Appended(Err(unavailable())),
                    Purpose::Save { .. } => CacheAnswer::Saved(Err(unavailable())),
                    Purpose::RestoreState(_) => CacheAnswer::State(Err(unavailable())),
                    Purpose::RestoreHead(_) | Purpose::CheckHead { .. } | Purpose::TailHead(_) => {
                        CacheAnswer::Head(Err(unavailable()))
                    }
                    _ => CacheAnswer::Range(Err(unavailable())),
                };
                if !matches!(waiter.purpose, Purpose::Chat { .. }) {
                    self.cache_answered(now, waiter, answer);
                }
            }
        }
        self.drain_gate(now);
    }

    /// Whether a failed read of a room being restored is asked again.
    fn retry_restore(&mut self, room: RoomKey) -> bool {
        let Some(restore) = self.rooms.get_mut(&room).and_then(|r| r.restore.as_mut()) else { return false };
        restore.failures += 1;
        restore.failures < RESTORE_ATTEMPTS
    }

    /// The limiter answered for a chat line.
    pub(super) fn limit_answered(&mut self, now: Timestamp, waiter: Waiter, answer: Result<Decision, LimiterError>) {
        let Purpose::Chat { from, req, conn, message } = waiter.purpose else { return };
        let room = message.room;
        let done = Done { to: from, req, conn, reply: None, host: None };
        if let Ok(Decision::Limited { retry_after }) = answer {
            let reply = ActReply::Refused {
                code: codes::RATE_LIMITED.into(),
                message: "the business's chat is over its quota".into(),
                retry_after_ms: Some(u64::try_from(retry_after.as_millis()).unwrap_or(u64::MAX)),
            };
            return self.finish(room, Done { reply: Some(reply), ..done });
        }
        // Allowed, or the limiter could not answer (its own fallback decided).
        if !self.rooms.get(&room).is_some_and(OwnedRoom::is_ready) {
            return;
        }
        if let Err(e) = self.gate.publish(now, message) {
            self.finish(room, Done { reply: Some(refused_gate(&e)), ..done });
        }
        self.drain_gate(now);
    }

    fn try_finish_restore(&mut self, now: Timestamp, room: RoomKey) {
        let complete = self
            .rooms
            .get(&room)
            .and_then(|r| r.restore.as_ref())
            .is_some_and(|x| x.head.is_some() && x.state.is_some() && x.tail.is_some());
        if !complete {
            return;
        }
        let Some(restore) = self.rooms.get_mut(&room).and_then(|r| r.restore.take()) else { return };
        let Restore { head, state, tail, queued, .. } = restore;
        let head = head.flatten();
        let state = state.flatten();
        let floor = self.push.reliable_head(room).map_or(0, |(e, _)| e.saturating_add(1));
        if let Err(e) = self.gate.open(now, room, head, floor, self.config.expected_learners) {
            warn!(%room, error = %e, "room not opened");
            self.rooms.remove(&room);
            for (from, msg) in queued {
                match msg {
                    PeerMsg::Act { req, conn, .. } | PeerMsg::Enter { req, conn, .. } => {
                        let reply = ActReply::refused(codes::REFUSED, e.to_string());
                        self.send_peer(from, PeerMsg::Done { req, conn, reply: Some(reply) });
                    }
                    PeerMsg::Host { req, .. } => {
                        let answer = Err(crate::host::HostError::Bad(e.to_string()));
                        self.send_peer(from, PeerMsg::HostDone { req, answer });
                    }
                    _ => {}
                }
            }
            return;
        }
        let listed: BTreeMap<Uin, Role> =
            self.replica.store().members(room).into_iter().map(|row| (row.uin, row.role)).collect();
        let snapshot = state.as_ref().and_then(|(_, bytes)| postcard::from_bytes::<RoomSnapshot>(bytes).ok());
        let version = state.as_ref().map_or(0, |(v, _)| *v);
        let seed = room_seed(room);
        let banned: BTreeMap<Uin, Timestamp> = snapshot
            .as_ref()
            .map(|s| s.banned.iter().map(|(u, until)| (*u, Timestamp::from_micros(*until))).collect())
            .unwrap_or_default();
        // Events the previous owner numbered after its last save are not
        // known here: numbers move on so none is given twice.
        let event_seq = snapshot.as_ref().map_or(0, |s| s.event_seq.saturating_add(EVENT_SEQ_GAP));
        let revoked: BTreeMap<Revocation, (Timestamp, Timestamp)> = snapshot
            .as_ref()
            .map(|s| {
                s.revoked
                    .iter()
                    .map(|(w, since, until)| (*w, (Timestamp::from_micros(*since), Timestamp::from_micros(*until))))
                    .collect()
            })
            .unwrap_or_default();
        let (classroom, mut plan, mute_all, muted) = match snapshot {
            Some(s) => {
                let classroom = Classroom::restore(self.config.classroom.clone(), s.classroom)
                    .unwrap_or_else(|_| Classroom::new(self.config.classroom.clone(), seed));
                // The member list is the record of who is present; the plan
                // only remembers where they sit.
                let plan: Vec<(Uin, Role, Option<room_push::SubclassId>)> = s
                    .members
                    .into_iter()
                    .filter(|(uin, _, _)| listed.contains_key(uin))
                    .map(|(uin, role, sub)| (uin, role, sub.map(room_push::SubclassId)))
                    .collect();
                (classroom, plan, s.mute_all, s.muted.into_iter().collect::<BTreeSet<Uin>>())
            }
            None => (Classroom::new(self.config.classroom.clone(), seed), Vec::new(), false, BTreeSet::new()),
        };
        let placed: BTreeSet<Uin> = plan.iter().map(|(u, _, _)| *u).collect();
        plan.extend(listed.iter().filter(|(u, _)| !placed.contains(u)).map(|(u, r)| (*u, *r, None)));
        let muted_list: Vec<Uin> = muted.iter().copied().collect();
        if let Err(e) = self.gate.restore_members(now, room, &plan, mute_all, &muted_list) {
            warn!(%room, error = %e, "sub-class plan not restored");
            let _ = e;
        }
        let open = has_open_state(&classroom) || mute_all;
        let Some(r) = self.rooms.get_mut(&room) else { return };
        r.classroom = Some(classroom);
        r.mute_all = mute_all;
        r.muted = muted;
        r.banned = banned;
        r.event_seq = event_seq;
        r.revoked = revoked;
        r.reactions_told = r
            .classroom
            .as_ref()
            .map_or((0, 0), |c| (c.reaction_total(Reaction::Flower), c.reaction_total(Reaction::Like)));
        r.version = version;
        r.dirty = head.is_some() || state.is_some();
        r.roster_dirty = true;
        r.tally_dirty = true;
        for origin in tail.unwrap_or_default() {
            r.seen.insert(origin, None);
        }
        if listed.is_empty() {
            r.empty_since = Some(now);
        }
        if head.is_some() || state.is_some() {
            self.stats.restored += 1;
        }
        if open {
            // Clients of the room may have missed what the last owner
            // announced before it died: what is open now.
            self.publish_state(now, room, Target::room());
        }
        self.hand_over_sessions(room, false);
        for (from, msg) in queued {
            self.dispatch(now, from, msg);
        }
        self.reschedule(now, room);
    }

    /// Carries out the gate's outputs.
    pub(super) fn drain_gate(&mut self, now: Timestamp) {
        while let Some(output) = self.gate.poll_output() {
            match output {
                FenceOutput::Append(batch) => {
                    let Some(first) = batch.first() else { continue };
                    let (room, epoch, seq) = (first.message.room, first.epoch, first.seq);
                    self.cache(now, CacheOp::Append(batch), Purpose::Append { room, epoch, seq });
                }
                FenceOutput::Publish(env) => self.published(env),
                FenceOutput::ReadHead(room) => {
                    // The shared cache refused a number: another owner
                    // numbered this room since this node opened it (a
                    // split brain, or this node stalled while the room
                    // moved away and back). What this node holds of the
                    // room is stale: the requests it answered (`seen`),
                    // its interactions, its sequence. Numbering its queue
                    // again after the head (the gate's own recovery)
                    // would number again requests the other owner already
                    // numbered, retries that waited for this node. The
                    // room is let go and, if still this node's, restored
                    // from the shared cache as a new owner would: the
                    // other owner's requests are known by their origins
                    // in the cache's tail, and the requests given up here
                    // are told "not the owner" and retried.
                    self.stats.fenced += 1;
                    self.release_room(now, room);
                    if self.owns(room) {
                        self.ensure_room(now, room);
                    }
                }
                FenceOutput::Fenced { room, .. } => {
                    self.stats.fenced += 1;
                    self.release_room(now, room);
                }
                _ => {}
            }
        }
    }

    fn published(&mut self, env: Envelope) {
        let origin = env.message.origin;
        let room = env.message.room;
        let env_epoch_seq = (env.epoch, env.seq);
        self.outputs.push_back(Output::Publish(env));
        if origin == 0 {
            return;
        }
        let Some(mut done) = self.rooms.get_mut(&room).and_then(|r| r.awaiting.remove(&origin)) else { return };
        if done.host.is_some() {
            done.host = Some(HostAnswer::Published { epoch: env_epoch_seq.0, seq: env_epoch_seq.1 });
        }
        self.finish(room, done);
    }

    fn save_answered(&mut self, now: Timestamp, room: RoomKey, result: Result<room_push::Saved, SharedCacheError>) {
        let Some(r) = self.rooms.get_mut(&room) else { return };
        r.saving = false;
        let version = match result {
            Ok(room_push::Saved::Stored { version } | room_push::Saved::Local { version }) => version,
            Ok(room_push::Saved::Conflict { .. }) => {
                // Another owner saved this room beyond us: it is theirs.
                self.stats.fenced += 1;
                return self.release_room(now, room);
            }
            Err(SharedCacheError::StateTooLarge { size, max }) => {
                // It will not fit however often it is tried: the room goes
                // on without durable interactions rather than stall them.
                warn!(%room, size, max, "room state too large to save: its interactions are not durable");
                let _ = (size, max);
                self.stats.unsaved += 1;
                let ready: Vec<Effect> = r.held.drain(..).map(|(_, e)| e).collect();
                for effect in ready {
                    self.apply_effect(now, room, effect);
                }
                return self.reschedule(now, room);
            }
            Ok(_) | Err(_) => {
                // Not stored: try again at the next save.
                r.dirty = true;
                r.urgent = r.urgent || !r.held.is_empty();
                return self.reschedule(now, room);
            }
        };
        self.stats.saves += 1;
        r.version = version;
        let mut ready = Vec::new();
        while r.held.front().is_some_and(|(need, _)| *need <= version) {
            if let Some((_, effect)) = r.held.pop_front() {
                ready.push(effect);
            }
        }
        room_core::shrink_when_empty(&mut r.held);
        for effect in ready {
            self.apply_effect(now, room, effect);
        }
        self.reschedule(now, room);
    }

    fn apply_effect(&mut self, now: Timestamp, room: RoomKey, effect: Effect) {
        match effect {
            Effect::Publish { messages, done } => {
                let mut first = true;
                for message in messages {
                    let origin = message.origin;
                    let published = self.gate.publish_system(now, message);
                    if first && let Some(d) = done.clone() {
                        match published {
                            Ok(()) if origin != 0 => self.await_publish(room, origin, d),
                            Ok(()) => self.finish(room, d),
                            Err(e) => self.finish(room, Done { reply: Some(refused_gate(&e)), ..d }),
                        }
                    }
                    first = false;
                }
            }
            Effect::MuteAll { on, done } => {
                let _ = self.gate.set_mute_all(now, room, on);
                self.finish(room, done);
            }
            Effect::Done(done) => self.finish(room, done),
        }
    }

    /// Runs a room's due timers: card deadline, tallies, roster, saves,
    /// and forgetting a room left empty.
    pub(super) fn room_timer(&mut self, now: Timestamp, room: RoomKey) {
        let Some(r) = self.rooms.get_mut(&room) else { return };
        r.timer = None;
        if !r.is_ready() {
            return;
        }
        let deadline_passed = r.classroom.as_ref().and_then(Classroom::card_deadline).is_some_and(|d| d <= now);
        if deadline_passed && let Some(result) = r.classroom.as_mut().and_then(Classroom::close_card_now) {
            let message = card_result_message(room, &result);
            r.hold(Effect::Publish { messages: vec![message], done: None });
            self.event(now, room, card_result_event(&result));
        }
        let Some(r) = self.rooms.get_mut(&room) else { return };
        if now >= r.next_tally {
            r.next_tally = now.saturating_add(self.config.tally_interval);
            self.push_tallies(now, room);
        }
        let Some(r) = self.rooms.get_mut(&room) else { return };
        if r.roster_dirty && now >= r.next_roster {
            r.roster_dirty = false;
            let members = self.push_roster(now, room);
            let interval = roster_interval(&self.config, members);
            if let Some(r) = self.rooms.get_mut(&room) {
                r.next_roster = now.saturating_add(interval);
            }
        }
        let Some(r) = self.rooms.get_mut(&room) else { return };
        if r.dirty && !r.saving && now >= r.last_save.saturating_add(self.config.save_interval) {
            self.save(now, room);
        }
        let Some(r) = self.rooms.get_mut(&room) else { return };
        let idle = r.closing || r.empty_since.is_some_and(|t| t.saturating_add(self.config.room_idle) <= now);
        if idle && !r.dirty && !r.saving && r.held.is_empty() && r.awaiting.is_empty() && self.gate.is_idle(room) {
            self.rooms.remove(&room);
            let _ = self.gate.release(room);
            return;
        }
        self.reschedule(now, room);
    }

    fn save(&mut self, now: Timestamp, room: RoomKey) {
        let members = self.gate.gate().members_of(room).unwrap_or_default();
        let Some(r) = self.rooms.get_mut(&room) else { return };
        let Some(classroom) = r.classroom.as_ref() else { return };
        let snapshot = RoomSnapshot {
            classroom: classroom.snapshot(),
            members: members.into_iter().map(|(u, role, s)| (u, role, s.map(|s| s.0))).collect(),
            mute_all: r.mute_all,
            muted: r.muted.iter().copied().collect(),
            banned: r
                .banned
                .iter()
                .filter(|(_, until)| **until > now)
                .map(|(u, until)| (*u, until.as_micros()))
                .collect(),
            event_seq: r.event_seq,
            revoked: r
                .revoked
                .iter()
                .filter(|(_, (_, until))| *until > now)
                .map(|(what, (since, until))| (*what, since.as_micros(), until.as_micros()))
                .collect(),
        };
        let state = match postcard::to_allocvec(&snapshot) {
            Ok(v) => Bytes::from(v),
            Err(_) => return,
        };
        r.saving = true;
        r.dirty = false;
        r.urgent = false;
        r.last_save = now;
        let after = r.version;
        self.cache(now, CacheOp::SaveState { room, after, state }, Purpose::Save { room });
    }

    fn push_tallies(&mut self, now: Timestamp, room: RoomKey) {
        let Some(r) = self.rooms.get_mut(&room) else { return };
        let totals =
            r.classroom.as_ref().map(|c| (c.reaction_total(Reaction::Flower), c.reaction_total(Reaction::Like)));
        if let Some(totals) = totals.filter(|t| *t != r.reactions_told) {
            r.reactions_told = totals;
            self.event(now, room, EventKind::Reactions { flowers: totals.0, likes: totals.1 });
        }
        let Some(r) = self.rooms.get_mut(&room) else { return };
        let mut messages = Vec::new();
        if std::mem::take(&mut r.tally_dirty)
            && let Some((id, tally)) = r.classroom.as_ref().and_then(Classroom::card_tally)
        {
            let data = data::encode(&data::Card::Tally { id, tally });
            messages
                .push(Message::new(room, Class::Signal, kinds::CARD, data).to(Target::room().roles(RoleSet::staff())));
        }
        for id in std::mem::take(&mut r.packets_dirty) {
            if let Some(p) = r.classroom.as_ref().and_then(|c| c.packet(id)) {
                let data = data::encode(&data::Packet::State {
                    id,
                    total: p.total,
                    count: p.count,
                    grabbed: p.grabbed,
                    taken: p.taken,
                });
                messages.push(Message::new(room, Class::Signal, kinds::PACKET, data));
            }
        }
        for message in messages {
            self.publish_system(now, message);
        }
    }

    /// Pushes the room's sidebar; the room's member count.
    fn push_roster(&mut self, now: Timestamp, room: RoomKey) -> u64 {
        let counts = self.replica.counts(room);
        let count = |role| counts.as_ref().map_or(0, |c| c.role(role));
        let total = counts.as_ref().map_or(0, |c| c.total());
        let list = ((total as usize) <= self.config.roster_list_max).then(|| {
            let mut rows = Vec::new();
            let _ = self.replica.page(room, &PageQuery::first(self.config.roster_list_max.max(1)), &mut rows);
            rows.iter().map(|row| data::RosterEntry { uin: row.uin.0, role: row.role }).collect()
        });
        let (diff, more) = match self.rooms.get_mut(&room) {
            Some(r) => (std::mem::take(&mut r.presence_diff), std::mem::take(&mut r.presence_overflow)),
            None => (BTreeMap::new(), false),
        };
        let joined =
            diff.iter().filter_map(|(uin, role)| role.map(|role| data::RosterEntry { uin: uin.0, role })).collect();
        let left = diff.iter().filter(|(_, role)| role.is_none()).map(|(uin, _)| uin.0).collect();
        let roster = data::Roster {
            total,
            teacher: count(Role::Teacher),
            assistant: count(Role::Assistant),
            student: count(Role::Student),
            observer: count(Role::Observer),
            list,
            joined,
            left,
            more,
        };
        self.publish_system(now, Message::new(room, Class::Signal, kinds::ROSTER, data::encode(&roster)));
        u64::from(total)
    }

    /// Sets the room's next wake-up.
    pub(super) fn reschedule(&mut self, now: Timestamp, room: RoomKey) {
        let Some(r) = self.rooms.get_mut(&room) else { return };
        if let Some(at) = r.timer.take() {
            self.room_timers.remove(at, room);
        }
        if !r.is_ready() {
            return;
        }
        let mut next: Option<Timestamp> = None;
        let mut at = |t: Timestamp| next = Some(next.map_or(t, |n| n.min(t)));
        if let Some(d) = r.classroom.as_ref().and_then(Classroom::card_deadline) {
            at(d);
        }
        if r.tally_dirty || !r.packets_dirty.is_empty() {
            at(r.next_tally.max(now));
        }
        if r.roster_dirty {
            at(r.next_roster.max(now));
        }
        if r.dirty && !r.saving {
            at(r.last_save.saturating_add(self.config.save_interval).max(now));
        }
        if let Some(t) = r.empty_since {
            at(t.saturating_add(self.config.room_idle).max(now));
        }
        if r.closing && !r.dirty && !r.saving && r.held.is_empty() {
            // Freed as soon as nothing is in flight (not spinning meanwhile).
            at(now.saturating_add(self.config.save_interval));
        }
        if let Some(t) = next {
            r.timer = Some(t);
            self.room_timers.insert(t, room);
        }
    }
}

/// Whether the room has anything a member arriving now should be told:
/// an open card or packet, raised hands, or reaction totals.
/// How long after a roster to `members` the room's next may go: the
/// configured interval, longer for a room so large that its rosters
/// would cost more than `roster_frames_per_sec` frames a second.
fn roster_interval(config: &RoomNodeConfig, members: u64) -> Duration {
    let rate = u64::from(config.roster_frames_per_sec.max(1));
    let by_size = Duration::from_millis(members.saturating_mul(1000) / rate);
    config.roster_interval.max(by_size)
}

fn has_open_state(c: &Classroom) -> bool {
    c.open_card_view().is_some()
        || c.packets().next().is_some()
        || c.hands().next().is_some()
        || c.reaction_total(Reaction::Flower) > 0
        || c.reaction_total(Reaction::Like) > 0
}

fn card_result_event(r: &CardResult) -> EventKind {
    EventKind::CardResult {
        card: r.id,
        tally: r.tally.clone(),
        correct: r.correct,
        answered: r.answered,
        right: r.right,
    }
}

fn card_result_message(room: RoomKey, r: &CardResult) -> Message {
    let data = data::encode(&data::Card::Result {
        id: r.id,
        tally: &r.tally,
        correct: r.correct,
        answered: r.answered,
        right: r.right,
    });
    Message::new(room, Class::Signal, kinds::CARD, data)
}

fn effect_done(e: &Effect) -> Option<&Done> {
    match e {
        Effect::Publish { done, .. } => done.as_ref(),
        Effect::MuteAll { done, .. } | Effect::Done(done) => Some(done),
    }
}

fn effect_req(e: &Effect) -> Option<u64> {
    effect_done(e).map(|d| d.req)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::classroom::{ClassroomConfig, Reaction};

    /// A 60,000-member room with an open card everyone answered, a packet
    /// half grabbed, hands and mutes: its saved state fits the shared
    /// cache's default bound with room to spare.
    #[test]
    fn a_full_class_state_fits_the_default_bound() {
        let config = ClassroomConfig::default();
        let mut c = Classroom::new(config.clone(), 7);
        let teacher = Actor { uin: Uin(1), role: Role::Teacher };
        c.open_card(teacher, Timestamp::from_millis(1), CardSpec { options: 4, correct: Some(1), deadline: None })
            .expect("opens");
        let packet = c.send_packet(teacher, 1_000_000, 10_000).expect("sends");
        let uins: Vec<Uin> = (0..60_000u64).map(|i| Uin(3_300_000_000 + i * 7)).collect();
        for (i, &uin) in uins.iter().enumerate() {
            let student = Actor { uin, role: Role::Student };
            c.answer_card(student, Timestamp::from_millis(2), (i % 4) as u8).expect("answers");
            if i < 5_000 {
                c.grab_packet(student, packet).expect("grabs");
            }
            if i < 50 {
                c.raise_hand(student).expect("raises");
            }
            if i % 3 == 0 {
                c.react(student, Reaction::Flower, 3).expect("reacts");
            }
        }
        let snapshot = RoomSnapshot {
            classroom: c.snapshot(),
            members: uins.iter().enumerate().map(|(i, &u)| (u, Role::Student, Some((i / 500) as u16))).collect(),
            mute_all: true,
            muted: uins[..100].to_vec(),
            banned: uins[100..1_100].iter().map(|u| (*u, 1_800_000_000_000_000)).collect(),
            event_seq: 1 << 40,
            revoked: uins[..1_000].iter().map(|u| (Revocation::User(*u), 1, 2)).collect(),
        };
        let bytes = postcard::to_allocvec(&snapshot).expect("encodes");
        assert!(bytes.len() < 1 << 20, "{} bytes", bytes.len());
        assert!(bytes.len() <= room_push::InMemorySharedCache::DEFAULT_MAX_STATE / 4);
        // And it restores to the same room.
        let back: RoomSnapshot = postcard::from_bytes(&bytes).expect("decodes");
        let restored = Classroom::restore(config, back.classroom).expect("restores");
        assert_eq!(restored.open_card_view().map(|v| v.answered), Some(60_000));
        assert_eq!(restored.packet(packet).map(|p| p.grabbed), Some(5_000));
        assert_eq!(restored.hands().count(), 50);
    }
}
