//! The heartbeat ownership of one node of a cluster whose membership comes
//! from outside: [`SessionOwner`].

use std::collections::VecDeque;

use room_core::{
    ChurnMap, ClusterView, ExitReason, MemberKey, NodeId, Router, RouterConfig, RouterError, Terminal, Timestamp,
};

use crate::reverse::{
    NoAnswer, Probe, ProbeAnswer, ProbeId, ReverseCheck, ReverseCheckConfig, ReverseConfigError, ReverseError,
};
use crate::tracker::{
    BeatOutcome, ConfigError, ConnId, JoinOutcome, LeaveOutcome, Reply, SessionHint, Suspect, TrackError, Tracker,
    TrackerConfig,
};

/// Outputs a drained queue keeps room for; a mass timeout that grew it
/// gives the rest back.
const RETAINED_OUTPUT_CAPACITY: usize = 1_024;

/// Settings of a [`SessionOwner`]. Start from [`OwnerConfig::default`] and
/// adjust.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct OwnerConfig {
    /// Session tracking: timings, bounds.
    pub tracker: TrackerConfig,
    /// Probes of the access layer before a silent session ends. The
    /// default differs from [`ReverseCheckConfig::default`] in one point:
    /// [`NoAnswer::AssumeAlive`], because a false exit (a learner removed
    /// from a class they are still in) is worse than a late one.
    pub reverse: ReverseCheckConfig,
    /// How views become routers. Every node of a cluster must use the same.
    pub router: RouterConfig,
}

impl Default for OwnerConfig {
    fn default() -> Self {
        OwnerConfig {
            tracker: TrackerConfig::default(),
            reverse: ReverseCheckConfig { on_no_answer: NoAnswer::AssumeAlive, ..ReverseCheckConfig::default() },
            router: RouterConfig::default(),
        }
    }
}

/// Why a [`SessionOwner`] could not be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum OwnerError {
    /// [`OwnerConfig::tracker`] is refused (a zero tick, a timeout longer
    /// than the wheel, ...).
    #[error("tracker configuration refused: {0}")]
    Tracker(#[from] ConfigError),
    /// [`OwnerConfig::reverse`] is refused (a zero rate, burst, attempt
    /// count or capacity).
    #[error("reverse-check configuration refused: {0}")]
    Reverse(#[from] ReverseConfigError),
}

/// What [`SessionOwner::set_view`] did with a view.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ViewApplied {
    /// The view routes to this node: routing follows it. `released`
    /// sessions now belong to other nodes and were dropped without an exit.
    Applied {
        /// Sessions dropped.
        released: usize,
    },
    /// This node is not routable in the view (joining, leaving, down, or
    /// absent): the view was not applied, routing and sessions are as they
    /// were, and until a view routes to this node again it ends no session
    /// on a timeout.
    NotRoutable,
}

/// Something a [`SessionOwner`] wants done. Drain them with
/// [`SessionOwner::poll_output`] after every input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum OwnerOutput {
    /// Ask the access node named by `probe.suspect.conn`'s
    /// [tag](ConnId::tag) whether that connection is still open, and answer
    /// with [`SessionOwner::handle_probe_answer`]. If that node is not in
    /// the cluster any more (its view entry is down or gone), nobody else
    /// will answer: answer [`ProbeAnswer::Gone`] at once. An unanswered
    /// probe is retried, then decided by [`ReverseCheckConfig::on_no_answer`].
    Probe(Probe),
    /// A session ended here. Exactly one per session end; never for a
    /// session released to another node.
    Ended {
        /// Who.
        member: MemberKey,
        /// On which terminal.
        terminal: Terminal,
        /// The connection the session followed ([`ConnId::NONE`] for a
        /// held session that no beat adopted).
        conn: ConnId,
        /// [`ExitReason::Left`] for a leave, [`ExitReason::TimedOut`] for
        /// silence confirmed by the access layer (or a held session no beat
        /// adopted), the given reason for [`SessionOwner::remove`].
        reason: ExitReason,
        /// Whether it was the member's last session here: the member has
        /// left the room.
        last: bool,
        /// When, on the owner's clock.
        at: Timestamp,
    },
    /// A session not tracked here, or held without a connection, is now
    /// followed through `conn` (heartbeat repair after a failover): the
    /// room owner should re-assert the member on `terminal`, a no-op if it
    /// is listed.
    Adopted {
        /// Who.
        member: MemberKey,
        /// On which terminal.
        terminal: Terminal,
        /// Its connection.
        conn: ConnId,
    },
    /// The connection `previous` is replaced by `conn`, a connection of
    /// the same session admitted after it (the client reconnected, or
    /// opened the room again on the same terminal): close `previous` at
    /// its access node. Either the session just moved from `previous` to
    /// `conn`, or a stale join or beat of the older `previous` arrived
    /// after `conn` was admitted and the session did not move (see the
    /// rule *the newest connection keeps the session* on
    /// [`SessionOwner`]). Either way the newest connection stays.
    Replaced {
        /// Who.
        member: MemberKey,
        /// On which terminal.
        terminal: Terminal,
        /// The connection to close: always the older of the two.
        previous: ConnId,
        /// The connection the session follows now.
        conn: ConnId,
    },
}

/// Counters a [`SessionOwner`] keeps for operators, each since it was built.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct OwnerStats {
    /// [`OwnerOutput::Adopted`] outputs: sessions adopted by a beat.
    pub adopted: u64,
    /// [`OwnerOutput::Replaced`] outputs.
    pub replaced: u64,
    /// Joins and beats refused because the session follows a connection
    /// admitted after theirs ([`JoinOutcome::Superseded`],
    /// [`BeatOutcome::Superseded`]); each also counts in
    /// [`OwnerStats::replaced`].
    pub superseded: u64,
    /// Sessions started by [`SessionOwner::hold`].
    pub held: u64,
    /// Sessions dropped without an exit: another node owns them, or this
    /// node was not in the latest view when they fell silent.
    pub released: u64,
    /// Sessions ended by a leave.
    pub left: u64,
    /// Sessions ended by [`SessionOwner::remove`].
    pub removed: u64,
    /// Sessions ended by silence: the access layer said gone, or a held
    /// session was never adopted.
    pub timed_out: u64,
    /// [`OwnerOutput::Probe`] outputs, retries included.
    pub probes_sent: u64,
    /// Probes withdrawn before they were sent, because their session ended,
    /// moved to another connection or to another node meanwhile.
    pub probes_withdrawn: u64,
    /// Views applied.
    pub views_applied: u64,
    /// Views ignored because they did not route to this node.
    pub views_ignored: u64,
}

/// The heartbeat ownership of one node: the sessions the cluster's router
/// gives this node, their expiry, the reverse check before a silent
/// session ends, and release when a view gives sessions to another node.
///
/// The cluster's membership comes from outside (a registry's
/// [`ClusterView`], through [`SessionOwner::set_view`]); sessions are routed
/// by `router.route(&member)` (`bid`, `room`, `uin`). Before its first view
/// a node is a cluster of one and owns everything. It composes a
/// [`Tracker`] and a [`ReverseCheck`]; it is sans-IO: every input takes
/// `now`, outputs are polled, and [`SessionOwner::poll_timeout`] says when
/// to call back.
///
/// # Call order
///
/// 1. [`SessionOwner::new`], then [`SessionOwner::set_view`] whenever the
///    registry's view changes (in order: a stale view is applied as given).
///    After a view is applied, [`SessionOwner::hold`] the sessions the
///    member list shows for members this node now owns: the node that
///    owned them may have died with their clients.
/// 2. Inputs as they come: [`SessionOwner::join`] when a room owner admits
///    a client, [`SessionOwner::beat`], [`SessionOwner::leave`] when a
///    connection closes, [`SessionOwner::remove`] for a kick,
///    [`SessionOwner::handle_probe_answer`] for the access layer's answers.
/// 3. [`SessionOwner::handle_timeout`] once `now` reaches
///    [`SessionOwner::poll_timeout`].
/// 4. After every call above, [`SessionOwner::poll_output`] until `None`.
///    Outputs wait for the caller: memory is bounded only if they are
///    drained.
///
/// # Rules
///
/// * **The newest connection keeps the session.** Every join and beat
///   names its connection's *admission stamp* `since`: when its access
///   node accepted the connection (the room service stamps it with the
///   access node's clock, Unix time, once, and sends the same stamp with
///   every retry of the admission and every beat). Connections of one
///   session are ordered by `(since, conn)`: the later stamp is the newer
///   connection, equal stamps are broken by the larger [`ConnId`]. A join,
///   or a beat, through a connection newer than the one the session
///   follows moves the session to it and outputs [`OwnerOutput::Replaced`]
///   for the older one. A join or beat through an *older* connection (a
///   stale beat delivered late by a node cut off for a while, a late or
///   retried admission) never moves the session, refreshes nothing, and is
///   answered [`JoinOutcome::Superseded`] / [`BeatOutcome::Superseded`]
///   with [`OwnerOutput::Replaced`] naming that older connection as the
///   one to close. The outcome depends only on the stamps, never on the
///   order in which joins and beats arrive. (A beat may move a session
///   because a connection only beats once it was admitted, and it carries
///   its admission's stamp: a newer connection whose admission was lost
///   or is still on its way is not closed, nor is the session left to a
///   connection that is gone.) Stamps from different access nodes are
///   compared as they are: their clocks must agree to better than a
///   client takes to reconnect.
/// * **One end, one output.** Every session that ends here produces exactly
///   one [`OwnerOutput::Ended`], whose `last` says whether the member has no
///   session left here. The tracker's own events are drained and dropped:
///   entries are the room owner's to decide.
/// * **Release, never exit, what is not ours.** Sessions a new view gives to
///   another node are dropped silently, with their suspicions and probes;
///   so is a suspect whose member this node does not own.
/// * **A view without this node is not applied.** The node is joining, or
///   the registry thinks it is gone: it keeps its router and sessions, and
///   until a view routes to it again it ends nothing on a timeout (its
///   suspects are released: whoever owns them now decides). Explicit
///   inputs (leaves, removes) still end sessions.
/// * **A held session needs a beat.** [`SessionOwner::hold`] tracks a
///   session known only from the member list, with [`ConnId::NONE`]. A beat
///   adopts it ([`OwnerOutput::Adopted`]); if none comes within the timeout
///   it ends [`ExitReason::TimedOut`] at once, without a probe (there is no
///   connection to ask about).
/// * **A silent session is asked about.** Any other suspect is probed
///   ([`OwnerOutput::Probe`]), at most as many at once as the reverse
///   check's capacity: the rest wait in the tracker's queue, in order (a
///   held suspect behind them too, until a wake-up finds room), so a mass
///   timeout neither floods the access layer nor grows memory. Alive counts
///   as a beat, gone ends it [`ExitReason::TimedOut`].
///
/// # Bad input
///
/// | input | behaviour |
/// | --- | --- |
/// | a join or beat naming [`ConnId::NONE`] | [`TrackError::NoConnection`], nothing changes |
/// | a join or beat through a connection older than the session's (by `(since, conn)`) | [`JoinOutcome::Superseded`] / [`BeatOutcome::Superseded`]: the session stays; [`OwnerOutput::Replaced`] with that older connection as `previous` |
/// | a leave naming [`ConnId::NONE`] | [`LeaveOutcome::Unknown`], nothing changes: no connection closed |
/// | a leave from a connection the session no longer follows (reordered after a reconnect), or for a held session | [`LeaveOutcome::StaleConnection`], nothing changes, no output |
/// | a leave for an unknown session, a repeated leave | [`LeaveOutcome::Unknown`], no output |
/// | a beat delayed past its own leave or [`SessionOwner::remove`] | ignored ([`BeatOutcome::ClosedConnection`]), no output |
/// | a join or beat for a member the view gives to another node | tracked (the sender's view may be newer); if it is still not ours when it falls silent, released without an exit |
/// | [`SessionOwner::hold`] of a tracked session, of a member another node owns, or while not in the view | `Ok(false)`, nothing changes |
/// | more sessions than [`TrackerConfig::max_sessions`] | [`TrackError::Full`], nothing changes |
/// | an answer to an unknown, answered, expired or withdrawn probe | [`ReverseError::UnknownProbe`], nothing changes |
/// | a view that does not route to this node | [`ViewApplied::NotRoutable`], nothing changes (see the rules) |
/// | `now` earlier than a previous `now` | treated as the latest time seen: the owner's clock never runs backwards |
/// | a mass timeout (an access node died) | bounded per call by the tracker's sweep batch and suspect queue and the reverse check's capacity and rate |
///
/// # Example
///
/// ```
/// use room_core::{ClusterView, ConnId, ExitReason, NodeChange, NodeId, NodeState, Terminal, Timestamp};
/// use room_heartbeat::{OwnerConfig, OwnerOutput, ProbeAnswer, SessionHint, SessionOwner, ViewApplied};
/// use std::time::Duration;
///
/// let me = NodeId(1);
/// let mut owner = SessionOwner::new(me, OwnerConfig::default())?;
/// let mut view = ClusterView::new();
/// view.apply(NodeChange::Joined { node: me, weight: 100 }).unwrap();
/// view.apply(NodeChange::StateChanged { node: me, state: NodeState::Up }).unwrap();
/// let t0 = Timestamp::from_millis(0);
/// assert_eq!(owner.set_view(t0, &view), Ok(ViewApplied::Applied { released: 0 }));
///
/// let member = "7/100/42".parse().unwrap();
/// let conn = ConnId::new(3, 0, 17); // held by access node 3
/// owner.join(t0, member, Terminal::Ios, conn, t0).unwrap(); // accepted at t0
///
/// // Silence: after the 60 s timeout the access node is asked about it.
/// let mut now = t0;
/// let probe = loop {
///     now = owner.poll_timeout().unwrap().max(now);
///     owner.handle_timeout(now);
///     if let Some(OwnerOutput::Probe(probe)) = owner.poll_output(now) {
///         break probe;
///     }
/// };
/// assert_eq!(now, t0 + Duration::from_secs(60));
/// assert_eq!(probe.suspect.conn.tag(), 3);
/// owner.handle_probe_answer(now, probe.id, ProbeAnswer::Gone).unwrap();
/// assert!(matches!(
///     owner.poll_output(now),
///     Some(OwnerOutput::Ended { reason: ExitReason::TimedOut, last: true, .. })
/// ));
/// assert!(owner.is_empty());
/// # Ok::<(), room_heartbeat::OwnerError>(())
/// ```
#[derive(Debug)]
pub struct SessionOwner {
    me: NodeId,
    router_config: RouterConfig,
    /// `None` until a view is applied: a cluster of one.
    router: Option<Router>,
    /// The latest view given did not route to this node.
    cut_off: bool,
    tracker: Tracker,
    /// The admission stamp of the connection each session follows (none
    /// for a held session), as given by the join or beat that made the
    /// session follow it. Entries go with their sessions; a prune keeps
    /// strays bounded.
    admitted: ChurnMap<(MemberKey, Terminal), Timestamp>,
    reverse: ReverseCheck,
    outputs: VecDeque<OwnerOutput>,
    stats: OwnerStats,
    now: Timestamp,
}

impl SessionOwner {
    /// The heartbeat ownership of node `me`, or why `config` is refused.
    pub fn new(me: NodeId, config: OwnerConfig) -> Result<SessionOwner, OwnerError> {
        Ok(SessionOwner {
            me,
            router_config: config.router,
            router: None,
            cut_off: false,
            tracker: Tracker::new(config.tracker)?,
            admitted: ChurnMap::default(),
            reverse: ReverseCheck::new(config.reverse)?,
            outputs: VecDeque::new(),
            stats: OwnerStats::default(),
            now: Timestamp::ZERO,
        })
    }

    /// This node.
    pub fn me(&self) -> NodeId {
        self.me
    }

    fn observe(&mut self, now: Timestamp) {
        self.now = self.now.max(now);
    }

    /// Follows the registry's `view`. If it does not route to this node,
    /// nothing changes ([`ViewApplied::NotRoutable`]). Otherwise routing
    /// follows it, and every session this node no longer owns is dropped
    /// without an exit, with its suspicion and probes. O(sessions) when the
    /// routable nodes changed.
    ///
    /// Fails, changing nothing, only if the view cannot be routed on
    /// (weights or node counts a [`ClusterView`] itself refuses).
    pub fn set_view(&mut self, now: Timestamp, view: &ClusterView) -> Result<ViewApplied, RouterError> {
        self.observe(now);
        if !view.routable().any(|(node, _)| node == self.me) {
            self.cut_off = true;
            self.stats.views_ignored += 1;
            return Ok(ViewApplied::NotRoutable);
        }
        let unchanged = self.router.as_ref().is_some_and(|r| r.nodes().eq(view.routable()));
        if !unchanged {
            match self.router.as_mut() {
                // Incremental, and all-or-nothing: a refused view leaves it.
                Some(router) => router.sync(view)?,
                None => self.router = Some(Router::from_view(self.router_config, view)?),
            }
        }
        self.cut_off = false;
        self.stats.views_applied += 1;
        if unchanged {
            return Ok(ViewApplied::Applied { released: 0 });
        }
        let Some(router) = self.router.as_ref() else { return Ok(ViewApplied::Applied { released: 0 }) };
        let me = self.me;
        let released = self.tracker.release_where(|m| router.route(m) == Ok(me));
        self.reverse.retain(|s| router.route(&s.member) == Ok(me));
        self.admitted.retain(|(m, _), _| router.route(m) == Ok(me));
        self.stats.released += released as u64;
        Ok(ViewApplied::Applied { released })
    }

    /// The node that owns `member`'s heartbeats in the latest applied view;
    /// `None` before any.
    pub fn owner_of(&self, member: &MemberKey) -> Option<NodeId> {
        self.router.as_ref()?.route(member).ok()
    }

    /// Whether this node owns `member`'s heartbeats in the latest applied
    /// view; true before any (a cluster of one).
    pub fn owns(&self, member: &MemberKey) -> bool {
        self.router.as_ref().is_none_or(|r| r.route(member) == Ok(self.me))
    }

    /// The router of the latest applied view; `None` before any.
    pub fn router(&self) -> Option<&Router> {
        self.router.as_ref()
    }

    /// Whether the latest view given routes to this node (true before any).
    /// While it does not, timeouts end nothing here.
    pub fn is_routable(&self) -> bool {
        !self.cut_off
    }

    /// Whether this node decides how `member`'s silent sessions end.
    fn decides(&self, member: &MemberKey) -> bool {
        !self.cut_off && self.owns(member)
    }

    /// A room owner admitted a client on `terminal` through `conn`, which
    /// its access node accepted at `since` (the connection's admission
    /// stamp): starts (or refreshes) its session.
    ///
    /// If the session followed an older connection (by `(since, conn)`), it
    /// moves to `conn` and [`OwnerOutput::Replaced`] names the older one,
    /// unless the session was held ([`JoinOutcome::Reconnected`] with
    /// `previous` [`ConnId::NONE`]). If it follows a *newer* connection,
    /// this admission is stale: nothing changes, the reply is
    /// [`JoinOutcome::Superseded`] and [`OwnerOutput::Replaced`] names
    /// `conn` as the connection to close.
    pub fn join(
        &mut self,
        now: Timestamp,
        member: MemberKey,
        terminal: Terminal,
        conn: ConnId,
        since: Timestamp,
    ) -> Result<Reply<JoinOutcome>, TrackError> {
        self.observe(now);
        if conn == ConnId::NONE {
            return Err(TrackError::NoConnection);
        }
        let current = self.tracker.connection(&member, terminal);
        if let Some(current) = self.newer_than(member, terminal, current, conn, since) {
            self.superseded(member, terminal, conn, current);
            return Ok(Reply { outcome: JoinOutcome::Superseded { current }, hint: SessionHint::NONE });
        }
        let reply = self.tracker.join(now, member, terminal, conn);
        self.drop_tracker_events();
        let reply = reply?;
        if reply.outcome != JoinOutcome::Refreshed {
            // The session follows `conn` from now: its stamp is the session's.
            self.admitted.insert((member, terminal), since);
        }
        if let JoinOutcome::Reconnected { previous } = reply.outcome
            && previous != ConnId::NONE
        {
            self.replaced(member, terminal, previous, conn);
        }
        Ok(reply)
    }

    /// A heartbeat through `conn`, whose admission stamp is `since` (the
    /// one its join carried). A session unknown here, or held without a
    /// connection, is adopted: outputs [`OwnerOutput::Adopted`] and returns
    /// [`BeatOutcome::Adopted`].
    ///
    /// A beat through another connection than the session's is ordered
    /// like a join: from an older connection (a stale beat, delivered late)
    /// it changes nothing, returns [`BeatOutcome::Superseded`] and outputs
    /// [`OwnerOutput::Replaced`] naming `conn` as the connection to close;
    /// from a newer one (admitted, its join not here yet or lost) it moves
    /// the session to `conn` and outputs [`OwnerOutput::Replaced`] for the
    /// older one.
    pub fn beat(
        &mut self,
        now: Timestamp,
        member: MemberKey,
        terminal: Terminal,
        conn: ConnId,
        since: Timestamp,
        hint: SessionHint,
    ) -> Result<Reply<BeatOutcome>, TrackError> {
        self.observe(now);
        if conn == ConnId::NONE {
            return Err(TrackError::NoConnection);
        }
        let current = self.tracker.connection_hinted(&member, terminal, hint);
        if let Some(current) = self.newer_than(member, terminal, current, conn, since) {
            self.superseded(member, terminal, conn, current);
            return Ok(Reply { outcome: BeatOutcome::Superseded { current }, hint: SessionHint::NONE });
        }
        let mut reply = self.tracker.beat(now, member, terminal, conn, hint)?;
        match reply.outcome {
            BeatOutcome::Adopted => {
                self.admitted.insert((member, terminal), since);
                self.adopted(member, terminal, conn);
            }
            BeatOutcome::Reconnected { previous: ConnId::NONE } => {
                reply.outcome = BeatOutcome::Adopted;
                self.admitted.insert((member, terminal), since);
                self.adopted(member, terminal, conn);
            }
            BeatOutcome::Reconnected { previous } => {
                self.admitted.insert((member, terminal), since);
                self.replaced(member, terminal, previous, conn);
            }
            _ => {}
        }
        Ok(reply)
    }

    /// The session's connection `current`, if it is a connection (not
    /// [`ConnId::NONE`]) other than `conn` and newer than `conn` admitted at
    /// `since`: the join or beat through `conn` is stale. A connection
    /// whose stamp is unknown here counts as the oldest.
    fn newer_than(
        &self,
        member: MemberKey,
        terminal: Terminal,
        current: Option<ConnId>,
        conn: ConnId,
        since: Timestamp,
    ) -> Option<ConnId> {
        let current = current.filter(|c| *c != ConnId::NONE && *c != conn)?;
        let current_since = self.admitted.get(&(member, terminal)).copied().unwrap_or(Timestamp::ZERO);
        ((current_since, current) > (since, conn)).then_some(current)
    }

    /// The client closed `conn`: its session ends
    /// ([`OwnerOutput::Ended`], [`ExitReason::Left`]), unless the session
    /// follows another connection ([`LeaveOutcome::StaleConnection`]) or is
    /// unknown: then nothing changes and nothing is output.
    pub fn leave(&mut self, now: Timestamp, member: MemberKey, terminal: Terminal, conn: ConnId) -> LeaveOutcome {
        self.observe(now);
        if conn == ConnId::NONE {
            return LeaveOutcome::Unknown;
        }
        let outcome = self.tracker.leave(now, member, terminal, conn);
        self.drop_tracker_events();
        if matches!(outcome, LeaveOutcome::Exited | LeaveOutcome::TerminalClosed) {
            self.stats.left += 1;
            self.ended(member, terminal, conn, ExitReason::Left);
        }
        outcome
    }

    /// Tracks, without a connection ([`ConnId::NONE`]), a session known
    /// only from the member list: this node just became the member's owner,
    /// maybe because the old owner died. A beat adopts it; if none comes
    /// within the timeout it ends [`ExitReason::TimedOut`], with no probe.
    ///
    /// Returns false, changing nothing, if the session is tracked already,
    /// if another node owns the member, or if the latest view does not
    /// route to this node.
    pub fn hold(&mut self, now: Timestamp, member: MemberKey, terminal: Terminal) -> Result<bool, TrackError> {
        self.observe(now);
        if !self.decides(&member) || self.tracker.connection(&member, terminal).is_some() {
            return Ok(false);
        }
        let reply = self.tracker.beat(now, member, terminal, ConnId::NONE, SessionHint::NONE)?;
        let held = reply.outcome == BeatOutcome::Adopted;
        self.stats.held += u64::from(held);
        Ok(held)
    }

    /// Ends every session of `member` (a kick, a ban, a move): one
    /// [`OwnerOutput::Ended`] with `reason` per terminal, in
    /// [`Terminal::ALL`] order, `last` on the final one. Returns whether
    /// the member had a session here.
    ///
    /// As after a leave, a beat from a removed connection that was already
    /// on its way is ignored ([`BeatOutcome::ClosedConnection`]) rather
    /// than adopted, so it cannot bring a kicked member back; refusing the
    /// member's new connections is the room owner's decision.
    pub fn remove(&mut self, now: Timestamp, member: MemberKey, reason: ExitReason) -> bool {
        self.observe(now);
        let mut ended = false;
        for terminal in Terminal::ALL {
            let Some(conn) = self.tracker.connection(&member, terminal) else { continue };
            if conn == ConnId::NONE {
                self.tracker.release(&member, terminal);
            } else {
                // A leave, for the tracker: it remembers the closed connection.
                self.tracker.leave(now, member, terminal, conn);
            }
            self.stats.removed += 1;
            self.ended(member, terminal, conn, reason);
            ended = true;
        }
        self.drop_tracker_events();
        ended
    }

    /// The access layer answered probe `id`. A refused answer (the probe is
    /// not in flight) changes nothing.
    pub fn handle_probe_answer(
        &mut self,
        now: Timestamp,
        id: ProbeId,
        answer: ProbeAnswer,
    ) -> Result<(), ReverseError> {
        self.observe(now);
        self.reverse.handle_answer(now, id, answer)?;
        self.apply_verdicts(now);
        Ok(())
    }

    /// When to call [`SessionOwner::handle_timeout`] next, if ever.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Timestamp> {
        // O(1): a queue entry that went stale costs at most one early
        // wake-up, which drops it.
        let waiting_suspects = self.tracker.queued_suspects() > 0 && self.reverse.has_capacity();
        [self.tracker.poll_timeout(), self.reverse.poll_timeout(), waiting_suspects.then_some(self.now)]
            .into_iter()
            .flatten()
            .min()
    }

    /// Runs what is due: session expiry, suspects to the reverse check (or
    /// ended, or released), probe deadlines and retries.
    pub fn handle_timeout(&mut self, now: Timestamp) {
        self.observe(now);
        self.tracker.handle_timeout(now);
        self.take_suspects(now);
        self.reverse.handle_timeout(now);
        self.apply_verdicts(now);
    }

    /// Takes the tracker's suspects while they can be dealt with. One that
    /// needs a probe while the reverse check is full waits in the tracker,
    /// and so does everything queued behind it.
    fn take_suspects(&mut self, now: Timestamp) {
        loop {
            if !self.reverse.has_capacity()
                && let Some(next) = self.tracker.poll_suspect_peek()
                && self.needs_probe(&next)
            {
                break;
            }
            let Some(suspect) = self.tracker.poll_suspect() else { break };
            if !self.decides(&suspect.member) {
                self.release(&suspect);
            } else if suspect.conn == ConnId::NONE {
                if self.tracker.confirm_gone(now, &suspect) {
                    self.stats.timed_out += 1;
                    self.ended(suspect.member, suspect.terminal, suspect.conn, ExitReason::TimedOut);
                }
            } else if self.reverse.handle_suspect(now, suspect).is_err() {
                // Capacity was checked above, so this is not reached; were
                // it, the session would count as alive and be suspected
                // again after a timeout rather than be stranded.
                self.tracker.confirm_alive(now, &suspect);
            }
        }
        self.drop_tracker_events();
    }

    fn needs_probe(&self, suspect: &Suspect) -> bool {
        suspect.conn != ConnId::NONE && self.decides(&suspect.member)
    }

    fn apply_verdicts(&mut self, now: Timestamp) {
        while let Some(verdict) = self.reverse.poll_verdict() {
            let suspect = verdict.suspect;
            if !self.owns(&suspect.member) {
                self.release(&suspect);
            } else if !verdict.kind.is_gone() {
                self.tracker.confirm_alive(now, &suspect);
            } else if self.cut_off {
                // Not in the view: whoever owns the session now decides.
                // The tracker's confirm_gone drops it only if it is still
                // this suspect; its event is dropped with the others.
                let released = self.tracker.confirm_gone(now, &suspect);
                if released {
                    self.admitted.remove(&(suspect.member, suspect.terminal));
                }
                self.stats.released += u64::from(released);
            } else if self.tracker.confirm_gone(now, &suspect) {
                self.stats.timed_out += 1;
                self.ended(suspect.member, suspect.terminal, suspect.conn, ExitReason::TimedOut);
            }
        }
        self.drop_tracker_events();
        self.prune_admitted();
    }

    /// Drops a session another node decides about, without an exit.
    fn release(&mut self, suspect: &Suspect) {
        let released = self.tracker.release(&suspect.member, suspect.terminal);
        if released {
            self.admitted.remove(&(suspect.member, suspect.terminal));
        }
        self.stats.released += u64::from(released);
    }

    /// Forgets admission stamps of sessions gone by a way that did not drop
    /// them (none is known; this bounds memory if one appears): once strays
    /// could outnumber sessions, keeps only those of sessions with a
    /// connection. Amortised O(1).
    fn prune_admitted(&mut self) {
        if self.admitted.len() <= 2 * self.tracker.len() + 1_024 {
            return;
        }
        let tracker = &self.tracker;
        self.admitted.retain(|(m, t), _| tracker.connection(m, *t).is_some_and(|c| c != ConnId::NONE));
    }

    /// The next thing to do, if any.
    #[must_use]
    pub fn poll_output(&mut self, now: Timestamp) -> Option<OwnerOutput> {
        self.observe(now);
        if let Some(output) = self.outputs.pop_front() {
            return Some(output);
        }
        if self.outputs.capacity() > RETAINED_OUTPUT_CAPACITY {
            self.outputs.shrink_to(RETAINED_OUTPUT_CAPACITY);
        }
        while let Some(probe) = self.reverse.poll_probe(now) {
            let s = &probe.suspect;
            if self.owns(&s.member) && self.tracker.connection(&s.member, s.terminal) == Some(s.conn) {
                self.stats.probes_sent += 1;
                return Some(OwnerOutput::Probe(probe));
            }
            // The session ended, or moved to another connection or node,
            // while the probe waited for a rate token: nobody needs the
            // answer.
            self.reverse.withdraw(probe.id);
            self.stats.probes_withdrawn += 1;
        }
        None
    }

    /// Sessions tracked (held and suspect ones included).
    pub fn len(&self) -> usize {
        self.tracker.len()
    }

    /// Whether no session is tracked.
    pub fn is_empty(&self) -> bool {
        self.tracker.is_empty()
    }

    /// Whether `member` has a session here.
    pub fn is_present(&self, member: &MemberKey) -> bool {
        self.tracker.is_present(member)
    }

    /// The connection `member`'s session on `terminal` follows
    /// ([`ConnId::NONE`] while held), if tracked here.
    pub fn connection(&self, member: &MemberKey, terminal: Terminal) -> Option<ConnId> {
        self.tracker.connection(member, terminal)
    }

    /// Counters.
    pub fn stats(&self) -> OwnerStats {
        self.stats
    }

    fn push(&mut self, output: OwnerOutput) {
        self.outputs.push_back(output);
    }

    fn ended(&mut self, member: MemberKey, terminal: Terminal, conn: ConnId, reason: ExitReason) {
        self.admitted.remove(&(member, terminal));
        let last = !self.tracker.is_present(&member);
        self.push(OwnerOutput::Ended { member, terminal, conn, reason, last, at: self.now });
    }

    fn adopted(&mut self, member: MemberKey, terminal: Terminal, conn: ConnId) {
        self.stats.adopted += 1;
        self.push(OwnerOutput::Adopted { member, terminal, conn });
    }

    fn replaced(&mut self, member: MemberKey, terminal: Terminal, previous: ConnId, conn: ConnId) {
        self.stats.replaced += 1;
        self.push(OwnerOutput::Replaced { member, terminal, previous, conn });
    }

    /// A join or beat through `stale` came after the newer `current` was
    /// admitted: `stale` is the one replaced.
    fn superseded(&mut self, member: MemberKey, terminal: Terminal, stale: ConnId, current: ConnId) {
        self.stats.superseded += 1;
        self.replaced(member, terminal, stale, current);
    }

    /// The tracker queues *entered* and *exited* events; the owner reports
    /// ends itself (one per session, not per member) and entries are the
    /// room owner's, so they are dropped here to keep that queue empty.
    fn drop_tracker_events(&mut self) {
        while self.tracker.poll_event().is_some() {}
    }
}
