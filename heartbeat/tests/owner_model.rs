//! `SessionOwner` against a reference model: a map of sessions (connection,
//! its admission stamp, last beat, suspect) on a single node that owns
//! everything. Random joins, beats, leaves, holds, removes, time advances
//! and probe answers (alive, gone, or for probes that are not in flight)
//! must give the same replies, the same `Ended` outputs (member, terminal,
//! reason, last, time) in the same order, the same `Adopted` / `Replaced`
//! outputs, and the same presence and counts.
//!
//! Joins and beats carry random admission stamps from a small range (so
//! ties, broken by the connection id, are common). The model's rule: a join
//! or beat through a connection other than the session's real one moves
//! the session only if `(since, conn)` is above the session's; otherwise it
//! is stale: nothing changes (not even the session's last beat) and the
//! stale connection is the one named replaced.
//!
//! The model predicts suspicion to the millisecond (1 ms ticks, a 30 ms
//! timeout). Which waiting suspect gets the reverse check's next free slot
//! is the tracker's queue order, so the model checks every probe instead of
//! predicting it: it must be about a current suspect on its connection
//! that has no probe in flight; a suspect may only wait while the check is
//! full, and every held session ends once input stops.

use std::collections::BTreeMap;
use std::time::Duration;

use proptest::prelude::*;
use room_core::{BusinessId, ExitReason, MemberKey, NodeId, RoomId, Terminal, Timestamp, Uin};
use room_heartbeat::{
    BeatOutcome, ConnId, JoinOutcome, LeaveOutcome, NoAnswer, OwnerConfig, OwnerOutput, ProbeAnswer, ProbeId,
    ReverseError, SessionHint, SessionOwner, Timing, TrackError,
};

const MEMBERS: usize = 4;
const TERMINALS: [Terminal; 3] = [Terminal::Web, Terminal::Ios, Terminal::Pc];
const TIMEOUT_MS: u64 = 30; // 10 ms x 3, 1 ms ticks
const ANSWER_TIMEOUT_MS: u64 = 25;
const CLOSED_TTL_MS: u64 = 1_000; // the tracker's max_timeout
const CAPACITY: usize = 2;

#[derive(Debug, Clone, Copy)]
enum Answer {
    Alive,
    Gone,
    /// An answer to a probe that is not in flight (answered or expired
    /// already, or never sent).
    NotInFlight,
}

#[derive(Debug, Clone)]
enum Op {
    Join { m: usize, t: usize, conn: Option<u16>, since: u64 },
    Beat { m: usize, t: usize, conn: Option<u16>, since: u64 },
    Leave { m: usize, t: usize, conn: Option<u16> },
    Hold { m: usize, t: usize },
    Remove { m: usize, kicked: bool },
    Advance { ms: u64 },
    Answer { pick: usize, answer: Answer },
}

fn op() -> impl Strategy<Value = Op> {
    let conn = || prop_oneof![9 => (0u16..3).prop_map(Some), 1 => Just(None)];
    let key = || (0..MEMBERS, 0..TERMINALS.len());
    let answer = prop_oneof![Just(Answer::Alive), Just(Answer::Gone), Just(Answer::NotInFlight)];
    prop_oneof![
        3 => (key(), conn(), 0u64..3).prop_map(|((m, t), conn, since)| Op::Join { m, t, conn, since }),
        5 => (key(), conn(), 0u64..3).prop_map(|((m, t), conn, since)| Op::Beat { m, t, conn, since }),
        2 => (key(), conn()).prop_map(|((m, t), conn)| Op::Leave { m, t, conn }),
        2 => key().prop_map(|(m, t)| Op::Hold { m, t }),
        1 => (0..MEMBERS, any::<bool>()).prop_map(|(m, kicked)| Op::Remove { m, kicked }),
        4 => (0u64..45).prop_map(|ms| Op::Advance { ms }),
        3 => (any::<usize>(), answer).prop_map(|(pick, answer)| Op::Answer { pick, answer }),
    ]
}

fn member(i: usize) -> MemberKey {
    MemberKey::new(BusinessId(1 + (i % 2) as u32), RoomId(10 + (i / 2) as u64), Uin(100 + i as u64))
}

fn index_of(member: &MemberKey) -> usize {
    (member.uin.0 - 100) as usize
}

fn terminal_index(terminal: Terminal) -> usize {
    TERMINALS.iter().position(|&t| t == terminal).expect("a terminal the test uses")
}

fn conn_id(conn: Option<u16>) -> ConnId {
    conn.map_or(ConnId::NONE, |c| ConnId::new(c + 1, 0, 7))
}

fn at(ms: u64) -> Timestamp {
    Timestamp::from_millis(ms)
}

fn config() -> OwnerConfig {
    let mut config = OwnerConfig::default();
    config.tracker.tick = Duration::from_millis(1);
    config.tracker.max_timeout = Duration::from_millis(CLOSED_TTL_MS);
    config.tracker.default_timing = Timing::new(Duration::from_millis(10), 3).unwrap();
    config.tracker.sweep_batch = 3; // tiny, so sweeps are chunked
    config.reverse.probe_rate = 1_000_000;
    config.reverse.probe_burst = 1_000_000;
    config.reverse.answer_timeout = Duration::from_millis(ANSWER_TIMEOUT_MS);
    config.reverse.max_attempts = 1;
    config.reverse.on_no_answer = NoAnswer::AssumeAlive;
    config.reverse.capacity = CAPACITY;
    config
}

#[derive(Debug, Clone, Copy)]
struct Session {
    conn: ConnId,
    /// The admission stamp given by the join or beat that made the session
    /// follow `conn` (refreshes keep it).
    since: u64,
    last: u64,
    suspect: bool,
}

#[derive(Debug, Clone, Copy)]
struct InFlight {
    id: ProbeId,
    key: (usize, usize),
    conn: ConnId,
    deadline: u64,
}

type Ended = (MemberKey, Terminal, ConnId, ExitReason, bool, Timestamp);

#[derive(Default)]
struct Model {
    sessions: BTreeMap<(usize, usize), Session>,
    /// (key, connection) -> when it closed.
    closed: Vec<((usize, usize, ConnId), u64)>,
    in_flight: Vec<InFlight>,
    /// Probes answered or expired: answers to them are refused.
    finished: Vec<ProbeId>,
    ended: Vec<Ended>,
    now: u64,
}

impl Model {
    fn present(&self, m: usize) -> bool {
        self.sessions.keys().any(|&(k, _)| k == m)
    }

    /// The session follows `conn` (admitted at `since`), heard now. A
    /// refresh of the same connection keeps its stamp.
    fn refresh(&mut self, key: (usize, usize), conn: ConnId, since: u64) {
        let since = match self.sessions.get(&key) {
            Some(s) if s.conn == conn => s.since,
            _ => since,
        };
        self.sessions.insert(key, Session { conn, since, last: self.now, suspect: false });
    }

    /// The session's real connection, if a join or beat through `conn`
    /// admitted at `since` is stale: older by `(since, conn)`.
    fn newer_than(&self, key: (usize, usize), conn: ConnId, since: u64) -> Option<ConnId> {
        let s = self.sessions.get(&key)?;
        (s.conn != ConnId::NONE && s.conn != conn && (s.since, s.conn) > (since, conn)).then_some(s.conn)
    }

    /// Ends a session; the output it must give.
    fn end(&mut self, key: (usize, usize), reason: ExitReason) -> OwnerOutput {
        let session = self.sessions.remove(&key).expect("ending a session the model has");
        let (member, terminal, last) = (member(key.0), TERMINALS[key.1], !self.present(key.0));
        self.ended.push((member, terminal, session.conn, reason, last, at(self.now)));
        OwnerOutput::Ended { member, terminal, conn: session.conn, reason, last, at: at(self.now) }
    }

    fn recently_closed(&self, key: (usize, usize, ConnId)) -> bool {
        self.closed.iter().any(|&(k, when)| k == key && self.now - when <= CLOSED_TTL_MS)
    }

    fn probed(&self, key: (usize, usize), conn: ConnId) -> bool {
        self.in_flight.iter().any(|p| p.key == key && p.conn == conn)
    }

    /// One millisecond passes: sessions silent for the timeout become
    /// suspects, then probes past their deadline count as alive (the
    /// order the owner runs them in).
    fn tick(&mut self) {
        self.now += 1;
        for s in self.sessions.values_mut() {
            if !s.suspect && self.now - s.last >= TIMEOUT_MS {
                s.suspect = true;
            }
        }
        let now = self.now;
        let (expired, in_flight): (Vec<InFlight>, Vec<InFlight>) =
            self.in_flight.iter().partition(|p| p.deadline <= now);
        self.in_flight = in_flight;
        for p in expired {
            self.finished.push(p.id);
            if self.sessions.get(&p.key).is_some_and(|s| s.conn == p.conn) {
                self.refresh(p.key, p.conn, 0);
            }
        }
    }

    /// Checks what the owner did on its own while being driven (ends of
    /// held sessions, probes) and applies it; then the waiting rules.
    fn absorb_driven(&mut self, outputs: &[OwnerOutput]) -> Result<(), TestCaseError> {
        for output in outputs {
            match *output {
                OwnerOutput::Ended { member, terminal, conn, reason, last, at: when } => {
                    let key = (index_of(&member), terminal_index(terminal));
                    let s = self.sessions.get(&key).copied();
                    prop_assert!(
                        s.is_some_and(|s| s.conn == ConnId::NONE && s.suspect),
                        "{member} on {terminal} ended on its own but is not a silent held session: {s:?}"
                    );
                    let expected = self.end(key, ExitReason::TimedOut);
                    prop_assert_eq!(*output, expected, "conn {:?} reason {:?} last {} at {}", conn, reason, last, when);
                }
                OwnerOutput::Probe(p) => {
                    let key = (index_of(&p.suspect.member), terminal_index(p.suspect.terminal));
                    let s = self.sessions.get(&key).copied();
                    prop_assert!(
                        s.is_some_and(|s| s.suspect && s.conn == p.suspect.conn && s.conn != ConnId::NONE),
                        "probe about {:?}, which is not a suspect on that connection: {:?}",
                        p.suspect,
                        s
                    );
                    prop_assert!(!self.probed(key, p.suspect.conn), "a second probe about {:?}", p.suspect);
                    prop_assert_eq!(p.attempt, 1);
                    self.in_flight.push(InFlight {
                        id: p.id,
                        key,
                        conn: p.suspect.conn,
                        deadline: self.now + ANSWER_TIMEOUT_MS,
                    });
                }
                other => prop_assert!(false, "unexpected output while driven: {other:?}"),
            }
        }
        let full = self.in_flight.len() == CAPACITY;
        let real_suspect =
            |(k, s): (&(usize, usize), &Session)| s.conn != ConnId::NONE && s.suspect && !self.probed(*k, s.conn);
        if self.sessions.iter().any(real_suspect) {
            prop_assert!(full, "a suspect waits while the reverse check has room");
        }
        // A held one may wait behind the queue's head while the check is
        // full, until the owner's next wake-up (`settle` checks it ends).
        if self.sessions.values().any(|s| s.conn == ConnId::NONE && s.suspect) {
            prop_assert!(full, "a silent held session did not end while the reverse check had room");
        }
        Ok(())
    }
}

/// Runs every wake-up the owner asks for up to `now`, draining outputs.
fn drive(owner: &mut SessionOwner, now: Timestamp) -> Vec<OwnerOutput> {
    let mut outputs: Vec<OwnerOutput> = std::iter::from_fn(|| owner.poll_output(now)).collect();
    for _ in 0..10_000 {
        match owner.poll_timeout() {
            Some(t) if t <= now => {
                owner.handle_timeout(now);
                outputs.extend(std::iter::from_fn(|| owner.poll_output(now)));
            }
            _ => return outputs,
        }
    }
    panic!("the owner kept asking to run at {now}");
}

fn drain(owner: &mut SessionOwner, now: Timestamp) -> Vec<OwnerOutput> {
    std::iter::from_fn(|| owner.poll_output(now)).collect()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn owner_matches_the_reference_model(ops in prop::collection::vec(op(), 1..150)) {
        let mut owner = SessionOwner::new(NodeId(1), config()).unwrap();
        let mut model = Model { now: 1_000, ..Model::default() };
        let mut sut_ended: Vec<Ended> = Vec::new();
        let mut superseded = 0u64;

        for op in ops {
            let now = at(model.now);
            // What the op itself must output (probes never come here: the
            // previous drive drained them).
            let expected: Vec<OwnerOutput> = match op {
                Op::Join { m, t, conn, since } => {
                    let (key, c) = ((m, t), conn_id(conn));
                    let reply = owner.join(now, member(m), TERMINALS[t], c, at(since));
                    if c == ConnId::NONE {
                        prop_assert_eq!(reply, Err(TrackError::NoConnection));
                        Vec::new()
                    } else if let Some(current) = model.newer_than(key, c, since) {
                        // A late admission of an older connection.
                        prop_assert_eq!(reply.map(|r| r.outcome), Ok(JoinOutcome::Superseded { current }));
                        superseded += 1;
                        vec![OwnerOutput::Replaced { member: member(m), terminal: TERMINALS[t], previous: c, conn: current }]
                    } else {
                        let previous = model.sessions.get(&key).map(|s| s.conn);
                        let outcome = match previous {
                            Some(p) if p == c => JoinOutcome::Refreshed,
                            Some(p) => JoinOutcome::Reconnected { previous: p },
                            None if model.present(m) => JoinOutcome::NewTerminal,
                            None => JoinOutcome::Entered,
                        };
                        prop_assert_eq!(reply.map(|r| r.outcome), Ok(outcome));
                        model.refresh(key, c, since);
                        match previous {
                            Some(p) if p != c && p != ConnId::NONE => {
                                vec![OwnerOutput::Replaced { member: member(m), terminal: TERMINALS[t], previous: p, conn: c }]
                            }
                            _ => Vec::new(),
                        }
                    }
                }
                Op::Beat { m, t, conn, since } => {
                    let (key, c) = ((m, t), conn_id(conn));
                    let reply = owner.beat(now, member(m), TERMINALS[t], c, at(since), SessionHint::NONE);
                    if c == ConnId::NONE {
                        prop_assert_eq!(reply, Err(TrackError::NoConnection));
                        Vec::new()
                    } else if let Some(current) = model.newer_than(key, c, since) {
                        // A stale beat: it neither moves nor refreshes the session.
                        prop_assert_eq!(reply.map(|r| r.outcome), Ok(BeatOutcome::Superseded { current }));
                        superseded += 1;
                        vec![OwnerOutput::Replaced { member: member(m), terminal: TERMINALS[t], previous: c, conn: current }]
                    } else {
                        let previous = model.sessions.get(&key).map(|s| s.conn);
                        let adopted = OwnerOutput::Adopted { member: member(m), terminal: TERMINALS[t], conn: c };
                        let (outcome, outputs) = match previous {
                            Some(p) if p == c => (BeatOutcome::Refreshed, vec![]),
                            Some(ConnId::NONE) => (BeatOutcome::Adopted, vec![adopted]),
                            Some(p) => (
                                BeatOutcome::Reconnected { previous: p },
                                vec![OwnerOutput::Replaced { member: member(m), terminal: TERMINALS[t], previous: p, conn: c }],
                            ),
                            None if model.recently_closed((m, t, c)) => (BeatOutcome::ClosedConnection, vec![]),
                            None => (BeatOutcome::Adopted, vec![adopted]),
                        };
                        prop_assert_eq!(reply.map(|r| r.outcome), Ok(outcome));
                        if outcome != BeatOutcome::ClosedConnection {
                            model.refresh(key, c, since);
                        }
                        outputs
                    }
                }
                Op::Leave { m, t, conn } => {
                    let (key, c) = ((m, t), conn_id(conn));
                    let outcome = owner.leave(now, member(m), TERMINALS[t], c);
                    match model.sessions.get(&key) {
                        _ if c == ConnId::NONE => {
                            prop_assert_eq!(outcome, LeaveOutcome::Unknown);
                            Vec::new()
                        }
                        None => {
                            prop_assert_eq!(outcome, LeaveOutcome::Unknown);
                            Vec::new()
                        }
                        Some(s) if s.conn != c => {
                            prop_assert_eq!(outcome, LeaveOutcome::StaleConnection);
                            Vec::new()
                        }
                        Some(_) => {
                            model.closed.push(((m, t, c), model.now));
                            let ended = model.end(key, ExitReason::Left);
                            let last = model.ended.last().is_some_and(|e| e.4);
                            prop_assert_eq!(outcome, if last { LeaveOutcome::Exited } else { LeaveOutcome::TerminalClosed });
                            vec![ended]
                        }
                    }
                }
                Op::Hold { m, t } => {
                    let held = owner.hold(now, member(m), TERMINALS[t]);
                    let fresh = !model.sessions.contains_key(&(m, t));
                    prop_assert_eq!(held, Ok(fresh));
                    if fresh {
                        model.refresh((m, t), ConnId::NONE, 0);
                    }
                    Vec::new()
                }
                Op::Remove { m, kicked } => {
                    let reason = if kicked { ExitReason::Kicked } else { ExitReason::Moved };
                    let removed = owner.remove(now, member(m), reason);
                    prop_assert_eq!(removed, model.present(m));
                    let terminals: Vec<usize> = (0..TERMINALS.len()).filter(|&t| model.sessions.contains_key(&(m, t))).collect();
                    let mut outputs = Vec::new();
                    for t in terminals {
                        let conn = model.sessions[&(m, t)].conn;
                        if conn != ConnId::NONE {
                            model.closed.push(((m, t, conn), model.now));
                        }
                        outputs.push(model.end((m, t), reason));
                    }
                    outputs
                }
                Op::Advance { ms } => {
                    for _ in 0..ms {
                        model.tick();
                        let outputs = drive(&mut owner, at(model.now));
                        sut_ended.extend(ended_of(&outputs));
                        model.absorb_driven(&outputs)?;
                    }
                    Vec::new()
                }
                Op::Answer { pick, answer } => {
                    let target = match answer {
                        Answer::NotInFlight => None,
                        _ if model.in_flight.is_empty() => None,
                        _ => Some(model.in_flight.remove(pick % model.in_flight.len())),
                    };
                    match target {
                        None => {
                            let id = if model.finished.is_empty() { ProbeId(u64::MAX) } else { model.finished[pick % model.finished.len()] };
                            let reply = owner.handle_probe_answer(now, id, ProbeAnswer::Gone);
                            prop_assert_eq!(reply, Err(ReverseError::UnknownProbe(id)));
                            Vec::new()
                        }
                        Some(p) => {
                            let gone = matches!(answer, Answer::Gone);
                            let reply = owner.handle_probe_answer(now, p.id, if gone { ProbeAnswer::Gone } else { ProbeAnswer::Alive });
                            prop_assert_eq!(reply, Ok(()));
                            model.finished.push(p.id);
                            let session = model.sessions.get(&p.key).copied().filter(|s| s.conn == p.conn);
                            match session {
                                Some(s) if gone && s.suspect => vec![model.end(p.key, ExitReason::TimedOut)],
                                Some(_) if !gone => {
                                    model.refresh(p.key, p.conn, 0);
                                    Vec::new()
                                }
                                _ => Vec::new(),
                            }
                        }
                    }
                }
            };
            let outputs = drain(&mut owner, now);
            sut_ended.extend(ended_of(&outputs));
            prop_assert_eq!(&outputs, &expected, "outputs of {:?} at {}", op, now);
            // A freed slot in the reverse check is used at once.
            let outputs = drive(&mut owner, now);
            sut_ended.extend(ended_of(&outputs));
            model.absorb_driven(&outputs)?;

            prop_assert_eq!(owner.len(), model.sessions.len());
            for m in 0..MEMBERS {
                prop_assert_eq!(owner.is_present(&member(m)), model.present(m), "presence of member {}", m);
                for (t, &terminal) in TERMINALS.iter().enumerate() {
                    prop_assert_eq!(owner.connection(&member(m), terminal), model.sessions.get(&(m, t)).map(|s| s.conn));
                }
            }
        }
        // No more input: every held session ends within its timeout plus a
        // probe round per suspect ahead of it in the queue.
        for _ in 0..TIMEOUT_MS + ANSWER_TIMEOUT_MS * (MEMBERS * TERMINALS.len()) as u64 {
            model.tick();
            let outputs = drive(&mut owner, at(model.now));
            sut_ended.extend(ended_of(&outputs));
            model.absorb_driven(&outputs)?;
        }
        prop_assert!(model.sessions.values().all(|s| s.conn != ConnId::NONE), "held sessions never ended: {:?}", model.sessions);
        prop_assert_eq!(&sut_ended, &model.ended);
        let stats = owner.stats();
        let timed_out = model.ended.iter().filter(|e| e.3 == ExitReason::TimedOut).count() as u64;
        prop_assert_eq!(stats.timed_out, timed_out);
        prop_assert_eq!(stats.left, model.ended.iter().filter(|e| e.3 == ExitReason::Left).count() as u64);
        prop_assert_eq!(stats.superseded, superseded);
    }
}

fn ended_of(outputs: &[OwnerOutput]) -> Vec<Ended> {
    outputs
        .iter()
        .filter_map(|o| match *o {
            OwnerOutput::Ended { member, terminal, conn, reason, last, at } => {
                Some((member, terminal, conn, reason, last, at))
            }
            _ => None,
        })
        .collect()
}
