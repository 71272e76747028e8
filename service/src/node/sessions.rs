//! The session-owner side: heartbeat sessions of the members the router
//! gives this node ([`SessionOwner`](room_heartbeat::SessionOwner)), and
//! what they tell the rooms' owners.

use room_core::{ConnId, ExitReason, MemberKey, NodeId, Role, Terminal, Timestamp};
use room_heartbeat::{OwnerOutput, ProbeAnswer};

use super::RoomNode;

/// Holds waiting for a view at most (a room of 60,000 moving at once fits).
const MAX_PENDING_HOLDS: usize = 1 << 18;
use crate::peer::{CloseReason, PeerMsg};

impl RoomNode {
    /// The room's owner admitted a member: its session starts here. A
    /// stale admission (of a connection older than the session's) closes
    /// that older connection instead (the drain below).
    pub(super) fn session_join(
        &mut self,
        now: Timestamp,
        member: MemberKey,
        terminal: Terminal,
        conn: ConnId,
        since: Timestamp,
    ) {
        if let Err(e) = self.sessions.join(now, member, terminal, conn, since) {
            warn!(%member, error = %e, "session not started");
            let _ = e;
        }
        self.drain_sessions(now, None);
    }

    /// Sessions the member list shows that are this node's now. A room's
    /// owner may learn a view before this node does: sessions this node
    /// does not own yet wait (bounded, for a few timeouts) for the view
    /// that gives them to it.
    pub(super) fn session_hold(&mut self, now: Timestamp, sessions: Vec<(MemberKey, Terminal)>) {
        for (member, terminal) in sessions {
            if self.sessions.owns(&member) {
                if self.sessions.hold(now, member, terminal).is_err() {
                    break;
                }
            } else if self.pending_holds.len() < MAX_PENDING_HOLDS {
                self.pending_holds.push((member, terminal, now));
            }
        }
        self.drain_sessions(now, None);
    }

    /// The view changed: holds that waited for it are taken.
    pub(super) fn retry_holds(&mut self, now: Timestamp) {
        let keep_for = self.config.heartbeat * self.config.misses.max(1) * 2;
        let waiting = std::mem::take(&mut self.pending_holds);
        for (member, terminal, since) in waiting {
            if self.sessions.owns(&member) {
                let _ = self.sessions.hold(now, member, terminal);
            } else if now.saturating_sub(keep_for) <= since {
                self.pending_holds.push((member, terminal, since));
            }
        }
        self.drain_sessions(now, None);
    }

    pub(super) fn session_beat(
        &mut self,
        now: Timestamp,
        member: MemberKey,
        role: Role,
        terminal: Terminal,
        conn: ConnId,
        since: Timestamp,
    ) {
        let hint = self.conns.get(&conn).map_or(room_heartbeat::SessionHint::NONE, |c| c.hint);
        if let Ok(reply) = self.sessions.beat(now, member, terminal, conn, since, hint)
            && let Some(c) = self.conns.get_mut(&conn)
        {
            // The hint is a slot in this node's tracker: only a local
            // session owner can use it.
            c.hint = reply.hint;
        }
        self.drain_sessions(now, Some(role));
    }

    pub(super) fn session_leave(&mut self, now: Timestamp, member: MemberKey, terminal: Terminal, conn: ConnId) {
        let _ = self.sessions.leave(now, member, terminal, conn);
        self.drain_sessions(now, None);
    }

    pub(super) fn session_probe_answer(&mut self, now: Timestamp, from: NodeId, id: u64, alive: bool) {
        let Some((asked, probe)) = self.probes.remove(&id) else { return };
        if asked != from {
            // An answer from a node that was not asked: ignored.
            self.probes.insert(id, (asked, probe));
            return;
        }
        let answer = if alive { ProbeAnswer::Alive } else { ProbeAnswer::Gone };
        let _ = self.sessions.handle_probe_answer(now, probe, answer);
        self.drain_sessions(now, None);
    }

    pub(super) fn sessions_timeout(&mut self, now: Timestamp) {
        self.sessions.handle_timeout(now);
        self.drain_sessions(now, None);
    }

    /// Carries out what the session owner decided. `role`: the role of the
    /// beat just handled (an adopted session is re-asserted with it).
    pub(super) fn drain_sessions(&mut self, now: Timestamp, role: Option<Role>) {
        while let Some(output) = self.sessions.poll_output(now) {
            match output {
                OwnerOutput::Probe(probe) => {
                    let access = Self::access_node_of(probe.suspect.conn);
                    if access == self.me || !self.in_view(access) {
                        // Known here: this node's own connection, or one on
                        // a node that has left the view. A node that left
                        // less than a heartbeat timeout ago may only be cut
                        // off (a partition) with its clients still beating
                        // to it: the session gets one more timeout (a late
                        // exit rather than a false one); after that, or for
                        // a node never seen, the client went with its node.
                        let alive = if access == self.me {
                            self.client_alive(now, probe.suspect.conn)
                        } else {
                            self.departed_recently(now, access)
                        };
                        let answer = if alive { ProbeAnswer::Alive } else { ProbeAnswer::Gone };
                        let _ = self.sessions.handle_probe_answer(now, probe.id, answer);
                    } else {
                        let id = self.next_id();
                        self.probes.insert(id, (access, probe.id));
                        self.send_peer(access, PeerMsg::Probe { id, conn: probe.suspect.conn });
                    }
                }
                OwnerOutput::Ended { member, terminal, conn, reason, last, .. } => {
                    if reason == ExitReason::TimedOut {
                        self.stats.timed_out += 1;
                        // A silent client whose connection is still open is closed.
                        if conn != ConnId::NONE {
                            let access = Self::access_node_of(conn);
                            if self.in_view(access) || access == self.me {
                                self.send_peer(access, PeerMsg::Close { conn, reason: CloseReason::TimedOut });
                            }
                        }
                    }
                    let owner = self.room_owner(member.room_key()).unwrap_or(self.me);
                    self.send_peer(owner, PeerMsg::Ended { member, terminal, reason, last });
                }
                OwnerOutput::Adopted { member, terminal, .. } => {
                    self.stats.adopted += 1;
                    let role = role.or_else(|| self.replica_role(member)).unwrap_or(Role::Student);
                    let owner = self.room_owner(member.room_key()).unwrap_or(self.me);
                    self.send_peer(owner, PeerMsg::Adopted { member, role, terminal });
                }
                OwnerOutput::Replaced { previous, .. } if previous != ConnId::NONE => {
                    let access = Self::access_node_of(previous);
                    self.send_peer(access, PeerMsg::Close { conn: previous, reason: CloseReason::Replaced });
                }
                _ => {}
            }
        }
        // Probes whose answers never come are retried and decided by the
        // reverse check itself; forget ids it no longer waits for.
        if self.probes.len() > 65_536 {
            self.probes.clear();
        }
    }

    /// Whether `node` left this node's view less than a heartbeat timeout ago.
    fn departed_recently(&self, now: Timestamp, node: NodeId) -> bool {
        let grace = self.config.heartbeat * self.config.misses.max(1);
        self.departed.get(&node).is_some_and(|since| now.saturating_sub(grace) < *since)
    }

    fn replica_role(&self, member: MemberKey) -> Option<Role> {
        use room_memberlist::MemberStore;
        self.replica.get(member).map(|row| row.role)
    }
}
