//! The rules of `SessionOwner`, one test each: adoption, replacement (the
//! newest connection keeps the session: stale beats and late admissions of
//! older connections do not take it back), held sessions, leaves, removes,
//! the reverse check, and views (release without exits; a view without
//! this node is not applied).

use std::time::Duration;

use room_core::{
    BusinessId, ClusterView, ExitReason, MemberKey, NodeChange, NodeId, NodeState, RoomId, RouterConfig, Terminal,
    Timestamp, Uin,
};
use room_heartbeat::{
    BeatOutcome, ConnId, JoinOutcome, LeaveOutcome, NoAnswer, OwnerConfig, OwnerError, OwnerOutput, ProbeAnswer,
    ReverseError, SessionHint, SessionOwner, TrackError, ViewApplied,
};

const ME: NodeId = NodeId(1);
const TIMEOUT: Duration = Duration::from_secs(60);

fn member(i: u64) -> MemberKey {
    MemberKey::new(BusinessId(1), RoomId(i % 7), Uin(i))
}

fn conn(access: u16, slot: u32) -> ConnId {
    ConnId::new(access, 0, slot)
}

fn secs(s: u64) -> Timestamp {
    Timestamp::from_millis(s * 1_000)
}

fn config() -> OwnerConfig {
    let mut config = OwnerConfig::default();
    config.router = RouterConfig::new().with_slot_bits(10).unwrap();
    config
}

fn owner() -> SessionOwner {
    SessionOwner::new(ME, config()).unwrap()
}

/// A view with `up` nodes routable and `joining` nodes not yet.
fn view(up: &[u64], joining: &[u64]) -> ClusterView {
    let mut view = ClusterView::new();
    for &n in up.iter().chain(joining) {
        view.apply(NodeChange::Joined { node: NodeId(n), weight: 100 }).unwrap();
    }
    for &n in up {
        view.apply(NodeChange::StateChanged { node: NodeId(n), state: NodeState::Up }).unwrap();
    }
    view
}

fn drain(owner: &mut SessionOwner, now: Timestamp) -> Vec<OwnerOutput> {
    std::iter::from_fn(|| owner.poll_output(now)).collect()
}

/// Runs every wake-up up to `until`, draining outputs after each; returns
/// them with their times.
fn run_until(owner: &mut SessionOwner, from: Timestamp, until: Timestamp) -> Vec<(Timestamp, OwnerOutput)> {
    let mut now = from;
    let mut out = Vec::new();
    for _ in 0..1_000_000 {
        match owner.poll_timeout() {
            Some(at) if at <= until => {
                now = now.max(at);
                owner.handle_timeout(now);
                out.extend(drain(owner, now).into_iter().map(|o| (now, o)));
            }
            _ => return out,
        }
    }
    panic!("the owner kept asking to run before {until}");
}

fn ended(outputs: &[(Timestamp, OwnerOutput)]) -> Vec<(Timestamp, MemberKey, Terminal, ExitReason, bool)> {
    outputs
        .iter()
        .filter_map(|&(_, o)| match o {
            OwnerOutput::Ended { member, terminal, reason, last, at, .. } => Some((at, member, terminal, reason, last)),
            _ => None,
        })
        .collect()
}

fn probes(outputs: &[(Timestamp, OwnerOutput)]) -> Vec<room_heartbeat::Probe> {
    outputs
        .iter()
        .filter_map(|&(_, o)| match o {
            OwnerOutput::Probe(p) => Some(p),
            _ => None,
        })
        .collect()
}

#[test]
fn configuration_is_checked_and_defaults_keep_unanswered_sessions() {
    assert_eq!(OwnerConfig::default().reverse.on_no_answer, NoAnswer::AssumeAlive);
    let mut bad = OwnerConfig::default();
    bad.tracker.tick = Duration::ZERO;
    assert!(matches!(SessionOwner::new(ME, bad), Err(OwnerError::Tracker(_))));
    let mut bad = OwnerConfig::default();
    bad.reverse.capacity = 0;
    let error = SessionOwner::new(ME, bad).unwrap_err();
    assert!(matches!(error, OwnerError::Reverse(_)));
    assert!(error.to_string().contains("capacity"), "{error}");
}

#[test]
fn before_any_view_a_node_owns_everything() {
    let owner = owner();
    assert!(owner.router().is_none());
    assert!(owner.is_routable());
    for i in 0..100 {
        assert!(owner.owns(&member(i)));
        assert_eq!(owner.owner_of(&member(i)), None);
    }
}

#[test]
fn an_unknown_session_is_adopted_by_its_beat() {
    let mut owner = owner();
    let m = member(1);
    let reply = owner.beat(secs(1), m, Terminal::Ios, conn(2, 5), secs(1), SessionHint::NONE).unwrap();
    assert_eq!(reply.outcome, BeatOutcome::Adopted);
    assert_eq!(
        drain(&mut owner, secs(1)),
        vec![OwnerOutput::Adopted { member: m, terminal: Terminal::Ios, conn: conn(2, 5) }]
    );
    // Its next beat only refreshes it.
    let again = owner.beat(secs(2), m, Terminal::Ios, conn(2, 5), secs(2), reply.hint).unwrap();
    assert_eq!(again.outcome, BeatOutcome::Refreshed);
    assert!(drain(&mut owner, secs(2)).is_empty());
    assert_eq!(owner.stats().adopted, 1);
    assert!(owner.is_present(&m));
    assert_eq!(owner.len(), 1);
}

#[test]
fn a_new_connection_replaces_the_old_one() {
    let mut owner = owner();
    let m = member(1);
    let reply = owner.join(secs(1), m, Terminal::Web, conn(1, 1), secs(1)).unwrap();
    assert_eq!(reply.outcome, JoinOutcome::Entered);
    assert!(drain(&mut owner, secs(1)).is_empty(), "entries are the room owner's to announce");
    // Reconnected through another access node.
    owner.join(secs(2), m, Terminal::Web, conn(2, 9), secs(2)).unwrap();
    assert_eq!(
        drain(&mut owner, secs(2)),
        vec![OwnerOutput::Replaced { member: m, terminal: Terminal::Web, previous: conn(1, 1), conn: conn(2, 9) }]
    );
    // A beat from yet another, newer connection (admitted, its join lost
    // or still on its way) replaces it too.
    let reply = owner.beat(secs(3), m, Terminal::Web, conn(3, 4), secs(3), SessionHint::NONE).unwrap();
    assert_eq!(reply.outcome, BeatOutcome::Reconnected { previous: conn(2, 9) });
    assert_eq!(
        drain(&mut owner, secs(3)),
        vec![OwnerOutput::Replaced { member: m, terminal: Terminal::Web, previous: conn(2, 9), conn: conn(3, 4) }]
    );
    // The first connection's close, reordered after all that, changes nothing.
    assert_eq!(owner.leave(secs(4), m, Terminal::Web, conn(1, 1)), LeaveOutcome::StaleConnection);
    assert!(drain(&mut owner, secs(4)).is_empty());
    assert_eq!(owner.connection(&m, Terminal::Web), Some(conn(3, 4)));
    assert_eq!(owner.stats().replaced, 2);
    assert_eq!(owner.stats().superseded, 0);
}

/// The fault lab's stale beats: a member's client moved from a node that
/// was cut off to another, and the cut-off node's beats of the old
/// connection arrive afterwards. They neither move the session back nor
/// keep it alive; the old connection is the one closed.
#[test]
fn a_stale_beat_of_an_older_connection_does_not_take_the_session_back() {
    let mut owner = owner();
    let m = member(1);
    let (old, new) = (conn(1, 1), conn(2, 9));
    owner.join(secs(1), m, Terminal::Web, old, secs(1)).unwrap();
    owner.join(secs(2), m, Terminal::Web, new, secs(2)).unwrap();
    assert_eq!(
        drain(&mut owner, secs(2)),
        vec![OwnerOutput::Replaced { member: m, terminal: Terminal::Web, previous: old, conn: new }]
    );
    // The old connection's beats, delivered late, many times.
    for t in [3, 30, 50] {
        let reply = owner.beat(secs(t), m, Terminal::Web, old, secs(1), SessionHint::NONE).unwrap();
        assert_eq!(reply.outcome, BeatOutcome::Superseded { current: new });
        assert_eq!(
            drain(&mut owner, secs(t)),
            vec![OwnerOutput::Replaced { member: m, terminal: Terminal::Web, previous: old, conn: new }],
            "the stale connection is told it is replaced, the session stays"
        );
        assert_eq!(owner.connection(&m, Terminal::Web), Some(new));
    }
    assert_eq!(owner.stats().superseded, 3);
    assert_eq!(owner.stats().adopted, 0);
    // They kept nothing alive: the new connection, silent since its join,
    // is asked about a timeout after it, not after the stale beats.
    let out = run_until(&mut owner, secs(50), secs(2) + TIMEOUT + Duration::from_secs(2));
    let asked: Vec<ConnId> = probes(&out).iter().map(|p| p.suspect.conn).collect();
    assert_eq!(asked, vec![new]);
    // The new connection's own beats refresh it as usual.
    let reply = owner.beat(secs(70), m, Terminal::Web, new, secs(2), SessionHint::NONE).unwrap();
    assert_eq!(reply.outcome, BeatOutcome::Refreshed);
    // A stale connection that is the session's only one does not come back
    // once the session ended: its beat after the leave is refused as ever.
    assert_eq!(owner.leave(secs(71), m, Terminal::Web, new), LeaveOutcome::Exited);
    let _ = drain(&mut owner, secs(71));
    let reply = owner.beat(secs(72), m, Terminal::Web, new, secs(2), SessionHint::NONE).unwrap();
    assert_eq!(reply.outcome, BeatOutcome::ClosedConnection);
}

/// A late (retried) admission of an older connection arrives after the
/// newer one's: the newer keeps the session, whichever order they come in,
/// and the older is the one closed. Equal stamps are ordered by connection
/// id.
#[test]
fn a_late_admission_of_an_older_connection_does_not_replace_the_newer() {
    let m = member(2);
    let (old, new) = (conn(3, 1), conn(2, 9));
    let replaced = OwnerOutput::Replaced { member: m, terminal: Terminal::Pc, previous: old, conn: new };
    // In order.
    let mut a = owner();
    a.join(secs(5), m, Terminal::Pc, old, secs(1)).unwrap();
    let reply = a.join(secs(6), m, Terminal::Pc, new, secs(4)).unwrap();
    assert_eq!(reply.outcome, JoinOutcome::Reconnected { previous: old });
    assert_eq!(drain(&mut a, secs(6)), vec![replaced]);
    // Reordered: the old connection's admission comes last.
    let mut b = owner();
    b.join(secs(5), m, Terminal::Pc, new, secs(4)).unwrap();
    let reply = b.join(secs(6), m, Terminal::Pc, old, secs(1)).unwrap();
    assert_eq!(reply.outcome, JoinOutcome::Superseded { current: new });
    assert_eq!(drain(&mut b, secs(6)), vec![replaced]);
    assert_eq!(b.stats().superseded, 1);
    for owner in [&a, &b] {
        assert_eq!(owner.connection(&m, Terminal::Pc), Some(new));
        assert_eq!(owner.len(), 1);
    }
    // A retry of the old admission, and its beats, change nothing either.
    for t in [7, 8] {
        assert_eq!(
            b.join(secs(t), m, Terminal::Pc, old, secs(1)).unwrap().outcome,
            JoinOutcome::Superseded { current: new }
        );
        assert_eq!(drain(&mut b, secs(t)), vec![replaced]);
    }
    // The newer connection's own retried admission only refreshes it.
    assert_eq!(b.join(secs(9), m, Terminal::Pc, new, secs(4)).unwrap().outcome, JoinOutcome::Refreshed);
    assert!(drain(&mut b, secs(9)).is_empty());

    // Equal stamps: the larger connection id is the newer, in either order.
    let (low, high) = (conn(1, 1), conn(1, 2));
    for first_low in [true, false] {
        let mut o = owner();
        let (first, second) = if first_low { (low, high) } else { (high, low) };
        o.join(secs(1), m, Terminal::Ios, first, secs(1)).unwrap();
        o.join(secs(2), m, Terminal::Ios, second, secs(1)).unwrap();
        assert_eq!(o.connection(&m, Terminal::Ios), Some(high));
        assert_eq!(
            drain(&mut o, secs(2)),
            vec![OwnerOutput::Replaced { member: m, terminal: Terminal::Ios, previous: low, conn: high }]
        );
    }
}

/// Adoption is unchanged: a beat adopts a held session whatever its stamp,
/// and the stamp it brings orders the connections that come after.
#[test]
fn a_held_session_is_adopted_whatever_the_stamp() {
    let mut owner = owner();
    let m = member(3);
    assert!(owner.hold(secs(1), m, Terminal::Web).unwrap());
    let reply = owner.beat(secs(2), m, Terminal::Web, conn(1, 1), Timestamp::ZERO, SessionHint::NONE).unwrap();
    assert_eq!(reply.outcome, BeatOutcome::Adopted);
    assert_eq!(
        drain(&mut owner, secs(2)),
        vec![OwnerOutput::Adopted { member: m, terminal: Terminal::Web, conn: conn(1, 1) }]
    );
    // An older one than the adopted connection is stale; a newer one moves it.
    let reply = owner.beat(secs(3), m, Terminal::Web, conn(1, 0), Timestamp::ZERO, SessionHint::NONE).unwrap();
    assert_eq!(reply.outcome, BeatOutcome::Superseded { current: conn(1, 1) });
    let _ = drain(&mut owner, secs(3));
    let reply = owner.join(secs(4), m, Terminal::Web, conn(2, 1), secs(3)).unwrap();
    assert_eq!(reply.outcome, JoinOutcome::Reconnected { previous: conn(1, 1) });
}

#[test]
fn no_connection_is_not_a_client_connection() {
    let mut owner = owner();
    let m = member(1);
    assert_eq!(owner.join(secs(1), m, Terminal::Web, ConnId::NONE, secs(1)), Err(TrackError::NoConnection));
    assert_eq!(
        owner.beat(secs(1), m, Terminal::Web, ConnId::NONE, secs(1), SessionHint::NONE),
        Err(TrackError::NoConnection)
    );
    assert!(owner.is_empty());
    assert!(owner.hold(secs(1), m, Terminal::Web).unwrap());
    // A held session cannot be closed by naming no connection.
    assert_eq!(owner.leave(secs(2), m, Terminal::Web, ConnId::NONE), LeaveOutcome::Unknown);
    assert_eq!(owner.connection(&m, Terminal::Web), Some(ConnId::NONE));
    assert!(drain(&mut owner, secs(2)).is_empty());
}

#[test]
fn a_held_session_is_adopted_by_a_beat_never_replaced() {
    let mut owner = owner();
    let (a, b) = (member(1), member(2));
    assert!(owner.hold(secs(1), a, Terminal::Web).unwrap());
    assert!(!owner.hold(secs(1), a, Terminal::Web).unwrap(), "already tracked");
    assert!(owner.hold(secs(1), b, Terminal::Pc).unwrap());
    assert_eq!(owner.stats().held, 2);
    assert!(drain(&mut owner, secs(1)).is_empty());

    let reply = owner.beat(secs(5), a, Terminal::Web, conn(1, 7), secs(5), SessionHint::NONE).unwrap();
    assert_eq!(reply.outcome, BeatOutcome::Adopted);
    assert_eq!(
        drain(&mut owner, secs(5)),
        vec![OwnerOutput::Adopted { member: a, terminal: Terminal::Web, conn: conn(1, 7) }]
    );
    // A join on a held session: the room owner admitted it; nothing to
    // close, nothing to repair.
    let reply = owner.join(secs(6), b, Terminal::Pc, conn(2, 3), secs(6)).unwrap();
    assert_eq!(reply.outcome, JoinOutcome::Reconnected { previous: ConnId::NONE });
    assert!(drain(&mut owner, secs(6)).is_empty());
    assert_eq!(owner.stats().replaced, 0);
    // Both follow real connections now: silence means a probe, not an exit.
    let out = run_until(&mut owner, secs(6), secs(6) + TIMEOUT + Duration::from_secs(1));
    assert!(ended(&out).is_empty());
    let mut asked: Vec<ConnId> = probes(&out).iter().map(|p| p.suspect.conn).collect();
    asked.sort();
    assert_eq!(asked, vec![conn(1, 7), conn(2, 3)]);
}

#[test]
fn a_held_session_without_a_beat_times_out_without_a_probe() {
    let mut owner = owner();
    let m = member(3);
    owner.join(secs(0), m, Terminal::Ios, conn(1, 1), secs(0)).unwrap();
    assert!(owner.hold(secs(10), m, Terminal::Web).unwrap());
    // The real session keeps beating; the held one hears nothing.
    let mut out = Vec::new();
    let mut now = secs(10);
    for t in (20..=100).step_by(20) {
        out.extend(run_until(&mut owner, now, secs(t)));
        now = secs(t);
        owner.beat(now, m, Terminal::Ios, conn(1, 1), now, SessionHint::NONE).unwrap();
        out.extend(drain(&mut owner, now).into_iter().map(|o| (now, o)));
    }
    assert_eq!(ended(&out), vec![(secs(10) + TIMEOUT, m, Terminal::Web, ExitReason::TimedOut, false)]);
    assert!(
        out.iter().any(|(_, o)| matches!(o, OwnerOutput::Ended { conn: ConnId::NONE, .. })),
        "a held session ends with no connection"
    );
    assert!(probes(&out).is_empty(), "no connection to ask about");
    assert_eq!(owner.stats().probes_sent, 0);
    assert_eq!(owner.stats().timed_out, 1);
    assert!(owner.is_present(&m));
    assert_eq!(owner.connection(&m, Terminal::Web), None);
}

#[test]
fn leaves_end_sessions_once_and_say_which_was_last() {
    let mut owner = owner();
    let m = member(4);
    owner.join(secs(1), m, Terminal::Web, conn(1, 1), secs(1)).unwrap();
    owner.join(secs(1), m, Terminal::Ios, conn(2, 1), secs(1)).unwrap();
    assert_eq!(owner.leave(secs(2), m, Terminal::Ios, conn(2, 1)), LeaveOutcome::TerminalClosed);
    assert_eq!(owner.leave(secs(2), m, Terminal::Ios, conn(2, 1)), LeaveOutcome::Unknown, "a repeated leave");
    assert_eq!(owner.leave(secs(3), m, Terminal::Web, conn(1, 1)), LeaveOutcome::Exited);
    assert_eq!(
        drain(&mut owner, secs(3)),
        vec![
            OwnerOutput::Ended {
                member: m,
                terminal: Terminal::Ios,
                conn: conn(2, 1),
                reason: ExitReason::Left,
                last: false,
                at: secs(2)
            },
            OwnerOutput::Ended {
                member: m,
                terminal: Terminal::Web,
                conn: conn(1, 1),
                reason: ExitReason::Left,
                last: true,
                at: secs(3)
            },
        ]
    );
    // A beat delayed past its own leave does not bring the session back.
    let late = owner.beat(secs(4), m, Terminal::Web, conn(1, 1), secs(4), SessionHint::NONE).unwrap();
    assert_eq!(late.outcome, BeatOutcome::ClosedConnection);
    assert!(drain(&mut owner, secs(4)).is_empty());
    assert!(!owner.is_present(&m));
    assert_eq!(owner.stats().left, 2);
}

#[test]
fn remove_ends_every_terminal_in_order() {
    let mut owner = owner();
    let m = member(5);
    owner.join(secs(1), m, Terminal::Pc, conn(1, 1), secs(1)).unwrap();
    owner.beat(secs(1), m, Terminal::Web, conn(2, 2), secs(1), SessionHint::NONE).unwrap();
    assert!(owner.hold(secs(1), m, Terminal::Ios).unwrap());
    let _ = drain(&mut owner, secs(1));
    assert!(owner.remove(secs(2), m, ExitReason::Kicked));
    let got: Vec<_> = drain(&mut owner, secs(2))
        .into_iter()
        .map(|o| match o {
            OwnerOutput::Ended { terminal, conn, reason, last, .. } => (terminal, conn, reason, last),
            other => panic!("unexpected {other:?}"),
        })
        .collect();
    assert_eq!(
        got,
        vec![
            (Terminal::Web, conn(2, 2), ExitReason::Kicked, false),
            (Terminal::Ios, ConnId::NONE, ExitReason::Kicked, false),
            (Terminal::Pc, conn(1, 1), ExitReason::Kicked, true),
        ]
    );
    assert!(!owner.remove(secs(3), m, ExitReason::Kicked));
    assert!(drain(&mut owner, secs(3)).is_empty());
    assert!(owner.is_empty());
    assert_eq!(owner.stats().removed, 3);
    // A beat the kicked connection sent before it was closed does not bring
    // the member back; a new connection is the room owner's to refuse.
    let late = owner.beat(secs(4), m, Terminal::Web, conn(2, 2), secs(4), SessionHint::NONE).unwrap();
    assert_eq!(late.outcome, BeatOutcome::ClosedConnection);
    assert!(drain(&mut owner, secs(4)).is_empty());
    assert!(owner.is_empty());
}

#[test]
fn the_access_layer_decides_silent_sessions() {
    let mut owner = owner();
    let (alive, gone) = (member(6), member(7));
    owner.join(secs(0), alive, Terminal::Web, conn(1, 1), secs(0)).unwrap();
    owner.join(secs(0), gone, Terminal::Web, conn(1, 2), secs(0)).unwrap();
    let out = run_until(&mut owner, secs(0), secs(61));
    let asked = probes(&out);
    assert_eq!(asked.len(), 2);
    assert!(out.iter().all(|&(t, _)| t == secs(60)), "asked exactly at the timeout");
    for p in &asked {
        let answer = if p.suspect.member == gone { ProbeAnswer::Gone } else { ProbeAnswer::Alive };
        owner.handle_probe_answer(secs(61), p.id, answer).unwrap();
    }
    assert_eq!(
        drain(&mut owner, secs(61)),
        vec![OwnerOutput::Ended {
            member: gone,
            terminal: Terminal::Web,
            conn: conn(1, 2),
            reason: ExitReason::TimedOut,
            last: true,
            at: secs(61)
        }]
    );
    // An answer counts once.
    assert_eq!(
        owner.handle_probe_answer(secs(62), asked[0].id, ProbeAnswer::Gone),
        Err(ReverseError::UnknownProbe(asked[0].id))
    );
    // Alive counted as a beat at 61 s: asked again one timeout later.
    let out = run_until(&mut owner, secs(61), secs(150));
    let again: Vec<_> = out
        .iter()
        .filter_map(|&(t, o)| match o {
            OwnerOutput::Probe(p) if p.attempt == 1 => Some((t, p.suspect.member)),
            _ => None,
        })
        .collect();
    assert_eq!(again, vec![(secs(121), alive)]);
    assert!(ended(&out).is_empty());
}

#[test]
fn an_access_layer_that_never_answers_does_not_end_the_session() {
    let mut owner = owner();
    let m = member(8);
    owner.join(secs(0), m, Terminal::Web, conn(9, 1), secs(0)).unwrap();
    let out = run_until(&mut owner, secs(0), secs(300));
    assert!(ended(&out).is_empty());
    assert!(owner.is_present(&m));
    // Three attempts a round; a round every timeout plus the attempts.
    assert!(probes(&out).len() >= 9, "{} probes", probes(&out).len());
    assert_eq!(owner.stats().probes_sent as usize, probes(&out).len());
}

#[test]
fn the_reverse_checks_capacity_leaves_the_rest_waiting_in_the_tracker() {
    let mut config = config();
    config.reverse.capacity = 1;
    let mut owner = SessionOwner::new(ME, config).unwrap();
    for i in 0..3 {
        owner.join(secs(0), member(i), Terminal::Web, conn(1, i as u32), secs(0)).unwrap();
    }
    let out = run_until(&mut owner, secs(0), secs(60));
    let first = probes(&out);
    assert_eq!(first.len(), 1, "one at a time");
    owner.handle_probe_answer(secs(60), first[0].id, ProbeAnswer::Gone).unwrap();
    let out = run_until(&mut owner, secs(60), secs(60));
    let second = probes(&out);
    assert_eq!(second.len(), 1, "the next is taken as soon as there is room");
    assert_ne!(second[0].suspect.member, first[0].suspect.member);
    owner.handle_probe_answer(secs(60), second[0].id, ProbeAnswer::Gone).unwrap();
    let out = run_until(&mut owner, secs(60), secs(60));
    let third = probes(&out);
    assert_eq!(third.len(), 1);
    owner.handle_probe_answer(secs(60), third[0].id, ProbeAnswer::Gone).unwrap();
    assert_eq!(drain(&mut owner, secs(60)).len(), 1);
    assert!(owner.is_empty());
    assert_eq!(owner.stats().timed_out, 3);
}

#[test]
fn a_probe_whose_session_ended_before_it_was_sent_is_withdrawn() {
    let mut config = config();
    config.reverse.probe_burst = 1;
    config.reverse.probe_rate = 1;
    let mut owner = SessionOwner::new(ME, config).unwrap();
    let (a, b) = (member(1), member(2));
    owner.join(secs(0), a, Terminal::Web, conn(1, 1), secs(0)).unwrap();
    owner.join(secs(0), b, Terminal::Web, conn(1, 2), secs(0)).unwrap();
    let out = run_until(&mut owner, secs(0), secs(60));
    assert_eq!(probes(&out).len(), 1, "the rate allows one now");
    let waiting = if probes(&out)[0].suspect.member == a { b } else { a };
    // The waiting one's client closes before its probe can go.
    assert_eq!(
        owner.leave(secs(60), waiting, Terminal::Web, owner.connection(&waiting, Terminal::Web).unwrap()),
        LeaveOutcome::Exited
    );
    let out = run_until(&mut owner, secs(60), secs(62));
    assert!(probes(&out).is_empty());
    assert_eq!(owner.stats().probes_withdrawn, 1);
    assert_eq!(owner.stats().probes_sent, 1);
}

#[test]
fn a_view_releases_what_it_gives_away_without_an_exit() {
    let mut owner = owner();
    let members: Vec<MemberKey> = (0..300).map(member).collect();
    for (i, m) in members.iter().enumerate() {
        owner.join(secs(0), *m, Terminal::Web, conn(1, i as u32), secs(0)).unwrap();
    }
    // Everyone falls silent: probes go out for all 300 sessions.
    let out = run_until(&mut owner, secs(0), secs(60));
    let asked = probes(&out);
    assert_eq!(asked.len(), 300);
    // Two more nodes join the cluster.
    let three = view(&[1, 2, 3], &[]);
    let applied = owner.set_view(secs(60), &three).unwrap();
    let router = owner.router().unwrap().clone();
    let mine: Vec<MemberKey> = members.iter().copied().filter(|m| router.route(m) == Ok(ME)).collect();
    assert!(!mine.is_empty() && mine.len() < 200, "{} of 300 stay", mine.len());
    assert_eq!(applied, ViewApplied::Applied { released: 300 - mine.len() });
    assert_eq!(owner.len(), mine.len());
    for m in &members {
        assert_eq!(owner.owns(m), mine.contains(m));
        assert_eq!(owner.owner_of(m), router.route(m).ok());
    }
    // Every access node says gone: only this node's own sessions end.
    let mut refused = 0;
    for p in &asked {
        match owner.handle_probe_answer(secs(61), p.id, ProbeAnswer::Gone) {
            Ok(()) => assert!(mine.contains(&p.suspect.member)),
            Err(ReverseError::UnknownProbe(_)) => refused += 1,
            Err(e) => panic!("{e}"),
        }
    }
    assert_eq!(refused, 300 - mine.len(), "probes of released sessions were withdrawn");
    let mut out: Vec<_> = drain(&mut owner, secs(61)).into_iter().map(|o| (secs(61), o)).collect();
    out.extend(run_until(&mut owner, secs(61), secs(400)));
    let mut exited: Vec<MemberKey> = ended(&out).into_iter().map(|e| e.1).collect();
    exited.sort();
    let mut expected = mine.clone();
    expected.sort();
    assert_eq!(exited, expected);
    assert_eq!(owner.stats().released, (300 - mine.len()) as u64);
    // The same routable nodes again (an epoch that only changed a joining
    // node): nothing to release.
    let again = view(&[1, 2, 3], &[4]);
    assert_eq!(owner.set_view(secs(400), &again), Ok(ViewApplied::Applied { released: 0 }));
}

#[test]
fn a_suspect_this_node_does_not_own_is_released_not_probed() {
    let mut owner = owner();
    owner.set_view(secs(0), &view(&[1, 2], &[])).unwrap();
    let mut not_mine = (0..100).map(member).filter(|m| !owner.owns(m));
    let (theirs, also_theirs) = (not_mine.next().unwrap(), not_mine.next().unwrap());
    assert_eq!(owner.owner_of(&theirs), Some(NodeId(2)));
    // A sender with another view routed it here: tracked all the same.
    owner.beat(secs(0), theirs, Terminal::Web, conn(1, 1), secs(0), SessionHint::NONE).unwrap();
    assert!(owner.is_present(&theirs));
    assert!(!owner.hold(secs(0), also_theirs, Terminal::Web).unwrap(), "not this node's to hold");
    assert!(!owner.is_present(&also_theirs));
    let out = run_until(&mut owner, secs(0), secs(200));
    assert!(probes(&out).is_empty());
    assert!(ended(&out).is_empty());
    assert!(!owner.is_present(&theirs));
    assert_eq!(owner.stats().released, 1);
}

#[test]
fn a_view_without_this_node_is_ignored_and_it_ends_nothing_meanwhile() {
    let mut owner = owner();
    owner.set_view(secs(0), &view(&[1, 2], &[])).unwrap();
    let mine: Vec<MemberKey> = (0..100).map(member).filter(|m| owner.owns(m)).take(3).collect();
    for (i, m) in mine.iter().enumerate() {
        owner.join(secs(0), *m, Terminal::Web, conn(2, i as u32), secs(0)).unwrap();
    }
    let before = owner.router().unwrap().clone();
    // The registry thinks this node is down; node 2 alone is routable.
    for cut in [view(&[2], &[]), view(&[2], &[1]), ClusterView::new()] {
        assert_eq!(owner.set_view(secs(1), &cut), Ok(ViewApplied::NotRoutable));
        assert!(!owner.is_routable());
        assert_eq!(owner.len(), 3, "nothing released");
        assert_eq!(owner.router().unwrap().nodes().collect::<Vec<_>>(), before.nodes().collect::<Vec<_>>());
    }
    // It decides nothing: no holds, and silent sessions are let go without
    // an exit (their new owner decides).
    let other = (0..100).map(member).find(|m| owner.owns(m) && !mine.contains(m)).unwrap();
    assert!(!owner.hold(secs(1), other, Terminal::Web).unwrap());
    let out = run_until(&mut owner, secs(1), secs(200));
    assert!(ended(&out).is_empty());
    assert!(probes(&out).is_empty());
    assert!(owner.is_empty());
    assert_eq!(owner.stats().views_ignored, 3);
    // Back in the view: it decides again.
    assert_eq!(owner.set_view(secs(200), &view(&[1, 2], &[])), Ok(ViewApplied::Applied { released: 0 }));
    assert!(owner.is_routable());
    assert!(owner.hold(secs(200), other, Terminal::Web).unwrap());
    let out = run_until(&mut owner, secs(200), secs(300));
    assert_eq!(ended(&out), vec![(secs(260), other, Terminal::Web, ExitReason::TimedOut, true)]);
}

#[test]
fn a_probe_in_flight_when_the_node_is_cut_off_ends_nothing() {
    let mut owner = owner();
    owner.set_view(secs(0), &view(&[1], &[])).unwrap();
    let m = member(1);
    owner.join(secs(0), m, Terminal::Web, conn(3, 3), secs(0)).unwrap();
    let out = run_until(&mut owner, secs(0), secs(60));
    let asked = probes(&out);
    assert_eq!(asked.len(), 1);
    assert_eq!(owner.set_view(secs(60), &view(&[2], &[1])), Ok(ViewApplied::NotRoutable));
    owner.handle_probe_answer(secs(61), asked[0].id, ProbeAnswer::Gone).unwrap();
    assert!(drain(&mut owner, secs(61)).is_empty());
    assert!(!owner.is_present(&m));
    assert_eq!(owner.stats().released, 1);
    assert_eq!(owner.stats().timed_out, 0);
}

#[test]
fn the_trackers_event_queue_never_grows_and_the_clock_never_runs_back() {
    let mut owner = owner();
    for i in 0..5_000 {
        owner.join(secs(10), member(i), Terminal::Web, conn(1, i as u32), secs(10)).unwrap();
    }
    for i in 0..5_000 {
        // A host clock that stepped back: the owner keeps its latest time.
        owner.leave(secs(5), member(i), Terminal::Web, conn(1, i as u32));
    }
    let out = drain(&mut owner, secs(5));
    assert_eq!(out.len(), 5_000);
    assert!(out.iter().all(|o| matches!(o, OwnerOutput::Ended { at, .. } if *at == secs(10))));
    let debug = format!("{owner:?}");
    assert!(debug.contains("pending_events: 0"), "{debug}");
}
