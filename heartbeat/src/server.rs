//! A heartbeat server and the proxy in front of the servers, composed from
//! the tracker, the reverse check and the failure detector. Both sans-IO.
//!
//! # Ownership
//!
//! Every server and proxy keeps its own [`ClusterView`] of the heartbeat
//! servers, fed by its own [`FailureDetector`], and routes by `(bid, room,
//! uin)` on a [`Router`] built from it. When a server dies, proxies route its
//! sessions elsewhere with their next beat, and the new owner adopts them
//! without an *entered* event. Three rules keep exits honest:
//!
//! * **Release on view change.** When a server's router stops assigning it
//!   a session (a peer came back, say), it drops the session silently.
//! * **No quorum, no exits.** A server that sees fewer than a majority of
//!   the servers (itself included) is probably the one cut off: its
//!   sessions fall silent because the proxies moved them, not because the
//!   users left. It then decides no exits; suspects wait.
//! * **Unconfirmed after a gap.** When a server regains quorum, every
//!   session it holds is marked unconfirmed until its next beat; one that
//!   times out instead was decided by its interim owner, so it ends
//!   silently. And a suspect the router no longer assigns to this server
//!   is released, never exited.

use std::collections::VecDeque;

use room_core::{
    ClusterError, ClusterView, MemberEvent, MemberKey, NodeChange, NodeId, NodeState, Router, RouterConfig,
    RouterError, Terminal, Timestamp,
};

use crate::detector::{DetectorConfig, DetectorConfigError, FailureDetector, PeerEvent};
use crate::reverse::{Probe, ProbeAnswer, ProbeId, ReverseCheck, ReverseCheckConfig, ReverseConfigError, ReverseError};
use crate::tracker::{
    BeatOutcome, ConfigError, ConnId, JoinOutcome, LeaveOutcome, Reply, SessionHint, TrackError, Tracker, TrackerConfig,
};

/// Settings of a [`HeartbeatServer`] (and, for the parts it has, a [`Proxy`]).
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct ServerConfig {
    /// Session tracking.
    pub tracker: TrackerConfig,
    /// The reverse check.
    pub reverse: ReverseCheckConfig,
    /// Watching the other servers.
    pub detector: DetectorConfig,
    /// Routing.
    pub router: RouterConfig,
}

/// Why a server or proxy could not be built.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum ServerError {
    /// The tracker configuration.
    #[error(transparent)]
    Tracker(#[from] ConfigError),
    /// The reverse-check configuration.
    #[error(transparent)]
    Reverse(#[from] ReverseConfigError),
    /// The detector configuration.
    #[error(transparent)]
    Detector(#[from] DetectorConfigError),
    /// The server list (empty, duplicated, bad weights).
    #[error(transparent)]
    Router(#[from] RouterError),
    /// The server list could not form a cluster view (too many servers).
    #[error(transparent)]
    ServerList(ClusterError),
    /// This server is not in the server list.
    #[error("server {0} is not in the server list")]
    NotAServer(NodeId),
}

/// Something a server wants done.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ServerOutput {
    /// Send a liveness heartbeat to this server or proxy.
    Heartbeat {
        /// The recipient.
        to: NodeId,
    },
    /// Ask the access layer about a suspect; answer with
    /// [`HeartbeatServer::handle_probe_answer`].
    Probe(Probe),
    /// A member entered or exited: publish it.
    Event(MemberEvent),
}

/// Counters a server keeps for operators.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ServerStats {
    /// Sessions dropped because another server owns them now.
    pub released: u64,
    /// Gone verdicts not applied for lack of quorum.
    pub held_for_quorum: u64,
    /// Times quorum was regained.
    pub quorum_regained: u64,
}

/// Why a server list was refused, in the router's terms where it has them.
fn server_list_error(error: ClusterError) -> ServerError {
    match error {
        ClusterError::InvalidWeight(e) => ServerError::Router(e),
        ClusterError::AlreadyJoined(node) => ServerError::Router(RouterError::DuplicateNode(node)),
        other => ServerError::ServerList(other),
    }
}

/// The cluster view and router one node keeps of the heartbeat servers.
#[derive(Debug)]
struct Membership {
    view: ClusterView,
    router: Router,
    detector: FailureDetector,
}

impl Membership {
    fn new(
        now: Timestamp,
        me: Option<NodeId>,
        servers: &[(NodeId, u32)],
        router: RouterConfig,
        detector: DetectorConfig,
    ) -> Result<Membership, ServerError> {
        let mut view = ClusterView::new();
        for &(node, weight) in servers {
            view.apply(NodeChange::Joined { node, weight }).map_err(server_list_error)?;
            view.apply(NodeChange::StateChanged { node, state: NodeState::Up }).map_err(server_list_error)?;
        }
        let router = Router::from_view(router, &view)?;
        if router.is_empty() {
            return Err(RouterError::NoNodes.into());
        }
        let mut detector = FailureDetector::new(detector)?;
        for &(node, _) in servers.iter().filter(|(n, _)| Some(*n) != me) {
            detector.add_peer(now, node);
        }
        Ok(Membership { view, router, detector })
    }

    /// Applies the detector's verdicts to the view; true if it changed.
    fn absorb_detector_events(&mut self) -> bool {
        let mut changed = false;
        while let Some(event) = self.detector.poll_event() {
            let (node, state) = match event {
                PeerEvent::Down(n) => (n, NodeState::Down),
                PeerEvent::Up(n) => (n, NodeState::Up),
            };
            if let Ok(Some(_)) = self.view.apply(NodeChange::StateChanged { node, state }) {
                changed = true;
            }
        }
        if changed {
            // The view only holds weights the router accepted at start.
            let _ = self.router.sync(&self.view);
        }
        changed
    }

    fn up_count(&self) -> usize {
        self.view.routable().count()
    }
}

/// One heartbeat server. See the [module docs](self).
#[derive(Debug)]
pub struct HeartbeatServer {
    me: NodeId,
    server_count: usize,
    watchers: Vec<NodeId>,
    membership: Membership,
    tracker: Tracker,
    reverse: ReverseCheck,
    had_quorum: bool,
    outputs: VecDeque<ServerOutput>,
    stats: ServerStats,
}

impl HeartbeatServer {
    /// Server `me`, one of `servers` (id, weight), sending its liveness
    /// heartbeats also to `watchers` (the proxies).
    pub fn new(
        now: Timestamp,
        me: NodeId,
        servers: &[(NodeId, u32)],
        watchers: &[NodeId],
        config: ServerConfig,
    ) -> Result<HeartbeatServer, ServerError> {
        if !servers.iter().any(|&(n, _)| n == me) {
            return Err(ServerError::NotAServer(me));
        }
        Ok(HeartbeatServer {
            me,
            server_count: servers.len(),
            watchers: watchers.to_vec(),
            membership: Membership::new(now, Some(me), servers, config.router, config.detector)?,
            tracker: Tracker::new(config.tracker)?,
            reverse: ReverseCheck::new(config.reverse)?,
            had_quorum: true,
            outputs: VecDeque::new(),
            stats: ServerStats::default(),
        })
    }

    /// This server's id.
    pub fn id(&self) -> NodeId {
        self.me
    }

    /// The sessions tracked here.
    pub fn tracker(&self) -> &Tracker {
        &self.tracker
    }

    /// This server's view of the servers.
    pub fn view(&self) -> &ClusterView {
        &self.membership.view
    }

    /// Counters.
    pub fn stats(&self) -> ServerStats {
        self.stats
    }

    /// Whether this server sees a majority of the servers, itself included.
    pub fn has_quorum(&self) -> bool {
        2 * self.membership.up_count() > self.server_count
    }

    fn owns(&self, member: &MemberKey) -> bool {
        self.membership.router.route(member) == Ok(self.me)
    }

    /// A client connected (routed here by a proxy).
    pub fn handle_join(
        &mut self,
        now: Timestamp,
        member: MemberKey,
        terminal: Terminal,
        conn: ConnId,
    ) -> Result<Reply<JoinOutcome>, TrackError> {
        self.tracker.join(now, member, terminal, conn)
    }

    /// A heartbeat (routed here by a proxy).
    pub fn handle_beat(
        &mut self,
        now: Timestamp,
        member: MemberKey,
        terminal: Terminal,
        conn: ConnId,
        hint: SessionHint,
    ) -> Result<Reply<BeatOutcome>, TrackError> {
        self.tracker.beat(now, member, terminal, conn, hint)
    }

    /// A client closed its connection.
    pub fn handle_leave(
        &mut self,
        now: Timestamp,
        member: MemberKey,
        terminal: Terminal,
        conn: ConnId,
    ) -> LeaveOutcome {
        self.tracker.leave(now, member, terminal, conn)
    }

    /// A liveness heartbeat from another server.
    pub fn handle_peer_heartbeat(&mut self, now: Timestamp, from: NodeId) {
        self.membership.detector.handle_heartbeat(now, from);
        self.follow_view();
    }

    /// The access layer answered a probe.
    pub fn handle_probe_answer(
        &mut self,
        now: Timestamp,
        id: ProbeId,
        answer: ProbeAnswer,
    ) -> Result<(), ReverseError> {
        self.reverse.handle_answer(now, id, answer)?;
        self.apply_verdicts(now);
        Ok(())
    }

    /// Takes in view changes: releases what is no longer ours, and marks
    /// everything unconfirmed when quorum comes back.
    fn follow_view(&mut self) {
        if self.membership.absorb_detector_events() {
            let (router, me) = (&self.membership.router, self.me);
            let released = self.tracker.release_where(|m| router.route(m) == Ok(me));
            self.stats.released += released as u64;
        }
        let quorum = self.has_quorum();
        if quorum && !self.had_quorum {
            self.tracker.mark_all_unconfirmed();
            self.stats.quorum_regained += 1;
        }
        self.had_quorum = quorum;
    }

    fn apply_verdicts(&mut self, now: Timestamp) {
        while let Some(verdict) = self.reverse.poll_verdict() {
            let suspect = verdict.suspect;
            if !self.owns(&suspect.member) {
                self.stats.released += u64::from(self.tracker.release(&suspect.member, suspect.terminal));
            } else if !verdict.kind.is_gone() {
                self.tracker.confirm_alive(now, &suspect);
            } else if self.has_quorum() {
                self.tracker.confirm_gone(now, &suspect);
            } else {
                // Cut off: keep the session; it will be suspected again.
                self.stats.held_for_quorum += 1;
                self.tracker.confirm_alive(now, &suspect);
            }
        }
    }

    /// When to call [`HeartbeatServer::handle_timeout`] next.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Timestamp> {
        // O(1): a stale queue entry costs at most one early wake-up, which
        // drains it.
        let waiting_suspects = self.has_quorum() && self.reverse.has_capacity() && self.tracker.queued_suspects() > 0;
        [
            self.membership.detector.poll_timeout(),
            self.tracker.poll_timeout(),
            self.reverse.poll_timeout(),
            waiting_suspects.then_some(Timestamp::ZERO),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// Runs every due timer: peer checks, session expiry, probe retries.
    pub fn handle_timeout(&mut self, now: Timestamp) {
        self.membership.detector.handle_timeout(now);
        self.follow_view();
        if let Some(peers) = self.membership.detector.poll_send(now) {
            for to in peers.into_iter().chain(self.watchers.iter().copied()) {
                self.outputs.push_back(ServerOutput::Heartbeat { to });
            }
        }
        self.tracker.handle_timeout(now);
        if self.has_quorum() {
            while self.reverse.has_capacity() {
                let Some(suspect) = self.tracker.poll_suspect() else { break };
                if self.owns(&suspect.member) {
                    // has_capacity was checked, so this is accepted.
                    let _ = self.reverse.handle_suspect(now, suspect);
                } else {
                    self.stats.released += u64::from(self.tracker.release(&suspect.member, suspect.terminal));
                }
            }
        }
        self.reverse.handle_timeout(now);
        self.apply_verdicts(now);
    }

    /// The next thing to do.
    #[must_use]
    pub fn poll_output(&mut self, now: Timestamp) -> Option<ServerOutput> {
        if let Some(output) = self.outputs.pop_front() {
            return Some(output);
        }
        if let Some(probe) = self.reverse.poll_probe(now) {
            return Some(ServerOutput::Probe(probe));
        }
        self.tracker.poll_event().map(ServerOutput::Event)
    }
}

/// The proxy in front of the heartbeat servers: routes each beat to its
/// owner on the live servers. See the [module docs](self).
#[derive(Debug)]
pub struct Proxy {
    membership: Membership,
}

impl Proxy {
    /// A proxy over `servers` (id, weight), all presumed up.
    pub fn new(
        now: Timestamp,
        servers: &[(NodeId, u32)],
        router: RouterConfig,
        detector: DetectorConfig,
    ) -> Result<Proxy, ServerError> {
        Ok(Proxy { membership: Membership::new(now, None, servers, router, detector)? })
    }

    /// The server that owns `member`'s heartbeats now.
    pub fn route(&self, member: &MemberKey) -> Result<NodeId, RouterError> {
        self.membership.router.route(member)
    }

    /// This proxy's view of the servers.
    pub fn view(&self) -> &ClusterView {
        &self.membership.view
    }

    /// A liveness heartbeat from a server.
    pub fn handle_server_heartbeat(&mut self, now: Timestamp, from: NodeId) {
        self.membership.detector.handle_heartbeat(now, from);
        self.membership.absorb_detector_events();
    }

    /// When to call [`Proxy::handle_timeout`] next.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Timestamp> {
        self.membership.detector.poll_timeout()
    }

    /// Re-judges the servers; the routing follows.
    pub fn handle_timeout(&mut self, now: Timestamp) {
        self.membership.detector.handle_timeout(now);
        // A proxy sends no heartbeats; keep the detector's cadence going.
        let _ = self.membership.detector.poll_send(now);
        self.membership.absorb_detector_events();
    }
}
