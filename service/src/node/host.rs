//! The host's requests: asked at any node, carried to the room's owner like
//! a client's request (retried, deduplicated), answered back to the node
//! that was asked ([`Output::Host`]).

use room_core::{ConnId, ExitReason, MemberKey, NodeId, RoomKey, Terminal, Timestamp};
use room_memberlist::{MemberStore, WriteOp};
use room_push::{GateError, Message};

use super::owner::Done;
use super::{Output, RoomNode};
use crate::host::{HostAnswer, HostError, HostRequest};
use crate::peer::{CloseReason, PeerMsg};
use crate::wire::ServerFrame;

/// Members named per `Remove` message (a closing room of 60,000 is split).
const REMOVE_CHUNK: usize = 10_000;

/// The host error for a push refusal.
fn gate_refusal(e: &GateError) -> HostError {
    match e {
        GateError::RateLimited { retry_after, .. } => {
            HostError::RateLimited { retry_after_ms: u64::try_from(retry_after.as_millis()).unwrap_or(u64::MAX) }
        }
        other => HostError::Bad(other.to_string()),
    }
}

impl RoomNode {
    /// A host's request (publish, presence, kick, close), on any node of
    /// the cluster: it is carried to the room's owner and answered later
    /// with [`Output::Host`] carrying the id returned here. What can be
    /// checked here is refused at once; a request the owner does not
    /// answer is sent again (done once) until
    /// [`forward_attempts`](super::RoomNodeConfig::forward_attempts) run
    /// out, then answered [`HostError::Unavailable`].
    pub fn host(&mut self, now: Timestamp, request: HostRequest) -> Result<u64, HostError> {
        request.validate()?;
        if let HostRequest::Publish { data, .. } = &request
            && data.len() > self.config.gate.max_payload
        {
            return Err(HostError::Bad(format!(
                "data of {} bytes is over {} bytes",
                data.len(),
                self.config.gate.max_payload
            )));
        }
        if self.host_pending >= self.config.max_host_requests {
            return Err(HostError::RateLimited { retry_after_ms: self.config.forward_timeout.as_millis() as u64 });
        }
        let room = request.room();
        let owner = self.room_owner(room).ok_or(HostError::NotReady)?;
        let req = self.new_req();
        self.host_pending += 1;
        self.forward(now, owner, req, ConnId::NONE, room, PeerMsg::Host { req, request });
        self.drain_loopback(now);
        Ok(req)
    }

    /// A host's request is answered (or given up): the driver is told.
    pub(super) fn host_answered(&mut self, req: u64, answer: Result<HostAnswer, HostError>) {
        self.host_pending = self.host_pending.saturating_sub(1);
        self.outputs.push_back(Output::Host { id: req, answer });
    }

    /// The room's owner answered a host's request asked here.
    pub(super) fn access_host_done(&mut self, req: u64, answer: Result<HostAnswer, HostError>) {
        let Some(f) = self.forwards.remove(&req) else { return };
        self.forward_deadlines.remove(f.deadline, req);
        self.host_answered(req, answer);
    }

    /// The room's owner does a host's request.
    pub(super) fn owner_host(&mut self, now: Timestamp, from: NodeId, req: u64, request: HostRequest) {
        let room = request.room();
        let answer = |node: &mut RoomNode, answer| node.finish_host(room, from, req, answer);
        match request {
            HostRequest::Publish { room, target, class, kind, data } => {
                let reliable = class.is_reliable();
                let mut message = Message::new(room, class, kind, data).to(target);
                if reliable {
                    message = message.with_origin(req);
                }
                match self.gate.publish(now, message) {
                    Ok(()) if reliable => {
                        let done = Done::host(from, req, HostAnswer::Published { epoch: 0, seq: 0 });
                        self.await_publish(room, req, done);
                    }
                    Ok(()) => answer(self, Ok(HostAnswer::Published { epoch: 0, seq: 0 })),
                    Err(e) => answer(self, Err(gate_refusal(&e))),
                }
            }
            HostRequest::Presence { member } => {
                let row = self.replica.get(member);
                answer(self, Ok(HostAnswer::Presence(row)));
            }
            HostRequest::Counts { room } => {
                let counts = self.replica.counts(room).unwrap_or_default();
                answer(self, Ok(HostAnswer::Counts(counts)));
            }
            HostRequest::Members { room, query } => {
                let mut rows = Vec::new();
                let result = match self.replica.page(room, &query, &mut rows) {
                    Ok(info) => Ok(HostAnswer::Members { rows, next: info.next }),
                    // A room nobody is in has an empty list, as its counts say.
                    Err(room_memberlist::StoreError::UnknownRoom(_)) => {
                        Ok(HostAnswer::Members { rows: Vec::new(), next: None })
                    }
                    Err(e) => Err(HostError::Bad(e.to_string())),
                };
                answer(self, result);
            }
            HostRequest::Kick { member, reason, ban_ms } => {
                let was_present = self.replica.get(member).is_some();
                let banned = ban_ms.is_some_and(|ms| ms > 0);
                if let Some(ms) = ban_ms.filter(|ms| *ms > 0) {
                    let until = now.saturating_add(std::time::Duration::from_millis(ms));
                    self.ban(now, room, member, until);
                }
                self.remove_members(now, room, vec![member], CloseReason::Kicked, reason);
                let done = Done::host(from, req, HostAnswer::Kicked { was_present });
                if banned {
                    // The ban must outlive this owner: answered once saved.
                    self.hold_effect(room, super::owner::Effect::Done(done));
                } else {
                    self.finish(room, done);
                }
            }
            HostRequest::Revoke { room, what, for_ms } => {
                let until = now.saturating_add(std::time::Duration::from_millis(for_ms));
                self.revoke(now, room, what, until);
                // Answered once stored: it must outlive this owner.
                let done = Done::host(from, req, HostAnswer::Revoked);
                self.hold_effect(room, super::owner::Effect::Done(done));
            }
            HostRequest::CloseRoom { room, reason } => {
                let members: Vec<MemberKey> =
                    self.replica.store().members(room).into_iter().map(|row| room.member(row.uin)).collect();
                let count = u32::try_from(members.len()).unwrap_or(u32::MAX);
                self.remove_members(now, room, members, CloseReason::RoomClosed, reason);
                self.event(now, room, crate::host::EventKind::Closed);
                self.reset_room(now, room);
                // Answered once the emptied state is stored: the room's next
                // owner never brings back what was closed.
                let done = Done::host(from, req, HostAnswer::Closed { members: count });
                self.hold_effect(room, super::owner::Effect::Done(done));
            }
        }
        self.reschedule(now, room);
    }

    /// The request is done: the node that asked is told, and a retry gets
    /// the same answer.
    pub(super) fn finish_host(&mut self, room: RoomKey, to: NodeId, req: u64, answer: Result<HostAnswer, HostError>) {
        let msg = PeerMsg::HostDone { req, answer };
        self.remember(room, req, msg.clone());
        self.send_peer(to, msg);
    }

    /// Takes members out of a room at once (member list, sub-class plan,
    /// classroom), and asks their session owners to end their sessions
    /// and close their clients with `reason`.
    pub(super) fn remove_members(
        &mut self,
        now: Timestamp,
        room: RoomKey,
        members: Vec<MemberKey>,
        reason: CloseReason,
        message: String,
    ) {
        let mut by_owner: std::collections::BTreeMap<NodeId, Vec<MemberKey>> = std::collections::BTreeMap::new();
        for member in members {
            if let Some(row) = self.replica.get(member) {
                let exits: Vec<WriteOp> =
                    row.terminals.iter().map(|terminal| WriteOp::Exit { uin: member.uin, terminal }).collect();
                let _ = self.replica.apply(now, room, &exits);
                self.member_gone(now, room, member, exit_reason(reason));
            }
            let _ = self.gate.leave(now, room, member.uin);
            by_owner.entry(self.session_owner_of(&member)).or_default().push(member);
        }
        self.drain_replica();
        for (owner, members) in by_owner {
            for chunk in members.chunks(REMOVE_CHUNK) {
                let id = self.new_req();
                let msg = PeerMsg::Remove { id, members: chunk.to_vec(), reason, message: message.clone() };
                self.deliver(now, owner, id, msg);
            }
        }
        self.room_changed(now, room);
    }

    /// The session owner ends removed members' sessions: each open client
    /// is told why and closed by its access node.
    pub(super) fn session_remove(
        &mut self,
        now: Timestamp,
        members: Vec<MemberKey>,
        reason: CloseReason,
        message: String,
    ) {
        for member in members {
            for terminal in Terminal::ALL {
                let Some(conn) = self.sessions.connection(&member, terminal).filter(|c| *c != ConnId::NONE) else {
                    continue;
                };
                let access = Self::access_node_of(conn);
                let id = self.new_req();
                self.deliver(now, access, id, PeerMsg::Bye { id, conn, reason, message: message.clone() });
            }
            let _ = self.sessions.remove(now, member, exit_reason(reason));
        }
        self.drain_sessions(now, None);
    }

    /// The access node closes a client the service removed, telling it why.
    pub(super) fn access_bye(&mut self, now: Timestamp, conn: ConnId, reason: CloseReason, message: String) {
        if !self.conns.contains_key(&conn) {
            return;
        }
        self.reply(conn, ServerFrame::Bye { code: reason.close_code(), reason: message });
        self.close_conn(now, conn, reason, false);
    }
}

/// A message to a peer sent again until the peer acknowledges it: a kick
/// or a closed room is delayed by a lost message, never lost with it.
#[derive(Debug)]
pub(super) struct Delivery {
    to: NodeId,
    msg: PeerMsg,
    attempts: u32,
    deadline: Timestamp,
}

impl RoomNode {
    /// Sends `msg` (which carries `id`) to `to`, and again every
    /// [`forward_timeout`](super::RoomNodeConfig::forward_timeout) until
    /// `to` acknowledges it or
    /// [`forward_attempts`](super::RoomNodeConfig::forward_attempts) run out.
    pub(super) fn deliver(&mut self, now: Timestamp, to: NodeId, id: u64, msg: PeerMsg) {
        let deadline = now.saturating_add(self.config.forward_timeout);
        self.deliveries.insert(id, Delivery { to, msg: msg.clone(), attempts: 1, deadline });
        self.delivery_deadlines.insert(deadline, id);
        self.send_peer(to, msg);
    }

    /// A peer acknowledged a delivery.
    pub(super) fn delivered(&mut self, id: u64) {
        if let Some(delivery) = self.deliveries.remove(&id) {
            self.delivery_deadlines.remove(delivery.deadline, id);
        }
    }

    pub(super) fn deliveries_timeout(&mut self, now: Timestamp) {
        for id in self.delivery_deadlines.due(now) {
            let Some(mut delivery) = self.deliveries.remove(&id) else { continue };
            if delivery.attempts >= self.config.forward_attempts {
                self.stats.forward_failures += 1;
                continue;
            }
            if !self.in_view(delivery.to) {
                self.redeliver_elsewhere(now, delivery.msg);
                continue;
            }
            delivery.attempts += 1;
            delivery.deadline = now.saturating_add(self.config.forward_timeout);
            self.stats.forward_retries += 1;
            self.delivery_deadlines.insert(delivery.deadline, id);
            self.send_peer(delivery.to, delivery.msg.clone());
            self.deliveries.insert(id, delivery);
        }
    }

    /// The node a delivery was for left the view: the members of a
    /// `Remove` have new session owners (which adopt their sessions as
    /// their clients beat); a `Bye`'s connection went with its node.
    fn redeliver_elsewhere(&mut self, now: Timestamp, msg: PeerMsg) {
        let PeerMsg::Remove { members, reason, message, .. } = msg else { return };
        let mut by_owner: std::collections::BTreeMap<NodeId, Vec<MemberKey>> = std::collections::BTreeMap::new();
        for member in members {
            by_owner.entry(self.session_owner_of(&member)).or_default().push(member);
        }
        for (owner, members) in by_owner {
            let id = self.new_req();
            self.deliver(now, owner, id, PeerMsg::Remove { id, members, reason, message: message.clone() });
        }
    }
}

fn exit_reason(reason: CloseReason) -> ExitReason {
    match reason {
        CloseReason::RoomClosed => ExitReason::RoomClosed,
        _ => ExitReason::Kicked,
    }
}
