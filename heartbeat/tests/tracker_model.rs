//! The tracker against a reference model: a plain map of sessions with
//! their last-seen tick. Random joins, beats (with good, missing and garbage
//! hints, and clocks that step backwards), leaves and time advances must give
//! the same suspects, the same entered/exited events at the same virtual
//! times, and the same outcomes.

use std::collections::BTreeMap;
use std::time::Duration;

use proptest::prelude::*;
use room_core::{BusinessId, ExitReason, MemberChange, MemberEvent, MemberKey, RoomId, Terminal, Timestamp, Uin};
use room_heartbeat::{
    BeatOutcome, ConnId, JoinOutcome, LeaveOutcome, SessionHint, Suspect, Timing, Tracker, TrackerConfig,
};

const TIMEOUT_TICKS: u64 = 30; // 10 ms x 3, with 1 ms ticks

#[derive(Debug, Clone)]
enum Op {
    Join { member: usize, terminal: usize, conn: u64 },
    Beat { member: usize, terminal: usize, conn: u64, hint: HintUse, skew_back: u64 },
    Leave { member: usize, terminal: usize, conn: u64 },
    Advance { ms: u64, gone_mask: u32 },
}

#[derive(Debug, Clone, Copy)]
enum HintUse {
    Stored,
    None,
    Garbage(u32),
}

fn member(i: usize) -> MemberKey {
    MemberKey::new(BusinessId(1 + (i % 2) as u32), RoomId(10 + (i / 2) as u64), Uin(100 + i as u64))
}

const TERMINALS: [Terminal; 3] = [Terminal::Web, Terminal::Ios, Terminal::Pc];

fn op() -> impl Strategy<Value = Op> {
    let hint = prop_oneof![Just(HintUse::Stored), Just(HintUse::None), any::<u32>().prop_map(HintUse::Garbage)];
    prop_oneof![
        3 => (0usize..5, 0usize..3, 0u64..3).prop_map(|(member, terminal, conn)| Op::Join { member, terminal, conn }),
        5 => (0usize..5, 0usize..3, 0u64..3, hint, 0u64..20)
            .prop_map(|(member, terminal, conn, hint, skew_back)| Op::Beat { member, terminal, conn, hint, skew_back }),
        2 => (0usize..5, 0usize..3, 0u64..3).prop_map(|(member, terminal, conn)| Op::Leave { member, terminal, conn }),
        4 => (0u64..45, any::<u32>()).prop_map(|(ms, gone_mask)| Op::Advance { ms, gone_mask }),
    ]
}

#[derive(Default)]
struct Model {
    /// (member, terminal index) -> (conn, last-seen tick, suspect)
    sessions: BTreeMap<(MemberKey, usize), (u64, u64, bool)>,
    events: Vec<MemberEvent>,
    /// (member, terminal, conn) -> when it closed (ms).
    closed: Vec<((MemberKey, usize, u64), u64)>,
}

/// How long a closed connection is remembered: max_timeout.
const CLOSED_TTL_MS: u64 = 1_000;

impl Model {
    fn present(&self, m: &MemberKey) -> bool {
        self.sessions.keys().any(|(k, _)| k == m)
    }
}

/// Delivers `now` (as a host's periodic tick would), then keeps calling
/// back while the tracker says it has due work.
fn drive(tracker: &mut Tracker, now: Timestamp) {
    tracker.handle_timeout(now);
    for _ in 0..100_000 {
        match tracker.poll_timeout() {
            Some(t) if t <= now => tracker.handle_timeout(now),
            _ => return,
        }
    }
    panic!("tracker kept asking to run at {now}");
}

fn config() -> TrackerConfig {
    let mut config = TrackerConfig::default();
    config.tick = Duration::from_millis(1);
    config.max_timeout = Duration::from_secs(1);
    config.default_timing = Timing::new(Duration::from_millis(10), 3).unwrap();
    config.sweep_batch = 3; // tiny, so sweeps are chunked
    config
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn tracker_matches_the_reference_model(ops in prop::collection::vec(op(), 1..120)) {
        let mut tracker = Tracker::new(config()).unwrap();
        let mut model = Model::default();
        let mut hints: BTreeMap<(usize, usize), SessionHint> = BTreeMap::new();
        let mut now_ms = 1_000u64;
        // The latest time handed to the tracker: its clock never runs backwards.
        let mut seen_ms = 0u64;
        let at = |ms: u64| Timestamp::from_millis(ms);

        for op in ops {
            match op {
                Op::Join { member: m, terminal: t, conn } => {
                    let key = member(m);
                    let reply = tracker.join(at(now_ms), key, TERMINALS[t], ConnId(conn)).unwrap();
                    seen_ms = now_ms;
                    hints.insert((m, t), reply.hint);
                    let expected = match model.sessions.get_mut(&(key, t)) {
                        Some(s) => {
                            let previous = s.0;
                            *s = (conn, now_ms, false);
                            if previous == conn { JoinOutcome::Refreshed } else { JoinOutcome::Reconnected { previous: ConnId(previous) } }
                        }
                        None => {
                            let first = !model.present(&key);
                            model.sessions.insert((key, t), (conn, now_ms, false));
                            if first {
                                model.events.push(MemberEvent { member: key, change: MemberChange::Entered, at: at(now_ms) });
                                JoinOutcome::Entered
                            } else {
                                JoinOutcome::NewTerminal
                            }
                        }
                    };
                    prop_assert_eq!(reply.outcome, expected);
                }
                Op::Beat { member: m, terminal: t, conn, hint, skew_back } => {
                    let key = member(m);
                    let hint = match hint {
                        HintUse::Stored => hints.get(&(m, t)).copied().unwrap_or(SessionHint::NONE),
                        HintUse::None => SessionHint::NONE,
                        HintUse::Garbage(bits) => SessionHint::from_bits(bits),
                    };
                    // A clock that stepped back: the tracker keeps its latest time.
                    let reply = tracker.beat(at(now_ms - skew_back), key, TERMINALS[t], ConnId(conn), hint).unwrap();
                    seen_ms = seen_ms.max(now_ms - skew_back);
                    let stamp = seen_ms;
                    hints.insert((m, t), reply.hint);
                    let recently_closed = model.closed.iter().any(|&(k, at)| k == (key, t, conn) && seen_ms - at <= CLOSED_TTL_MS);
                    let expected = match model.sessions.get_mut(&(key, t)) {
                        Some(s) => {
                            let previous = s.0;
                            *s = (conn, stamp, false);
                            if previous == conn { BeatOutcome::Refreshed } else { BeatOutcome::Reconnected { previous: ConnId(previous) } }
                        }
                        None if recently_closed => BeatOutcome::ClosedConnection,
                        None => {
                            model.sessions.insert((key, t), (conn, stamp, false));
                            BeatOutcome::Adopted
                        }
                    };
                    prop_assert_eq!(reply.outcome, expected);
                }
                Op::Leave { member: m, terminal: t, conn } => {
                    let key = member(m);
                    let outcome = tracker.leave(at(now_ms), key, TERMINALS[t], ConnId(conn));
                    seen_ms = now_ms;
                    let expected = match model.sessions.get(&(key, t)) {
                        None => LeaveOutcome::Unknown,
                        Some(s) if s.0 != conn => LeaveOutcome::StaleConnection,
                        Some(_) => {
                            model.sessions.remove(&(key, t));
                            model.closed.push(((key, t, conn), now_ms));
                            if model.present(&key) {
                                LeaveOutcome::TerminalClosed
                            } else {
                                model.events.push(MemberEvent { member: key, change: MemberChange::Exited(ExitReason::Left), at: at(now_ms) });
                                LeaveOutcome::Exited
                            }
                        }
                    };
                    prop_assert_eq!(outcome, expected);
                }
                Op::Advance { ms, gone_mask } => {
                    // Step a millisecond at a time so suspicion times are exact.
                    for _ in 0..ms {
                        now_ms += 1;
                        drive(&mut tracker, at(now_ms));
                        seen_ms = now_ms;
                        let mut got: Vec<Suspect> = std::iter::from_fn(|| tracker.poll_suspect()).collect();
                        got.sort_by_key(|s| (s.member, s.terminal, s.conn));
                        let mut expected: Vec<(MemberKey, usize)> = Vec::new();
                        for (&(key, t), s) in model.sessions.iter_mut() {
                            if !s.2 && now_ms - s.1 >= TIMEOUT_TICKS {
                                s.2 = true;
                                expected.push((key, t));
                            }
                        }
                        let got_keys: Vec<(MemberKey, Terminal, u64)> = got.iter().map(|s| (s.member, s.terminal, s.conn.0)).collect();
                        let mut expected_keys: Vec<(MemberKey, Terminal, u64)> = expected.iter().map(|&(k, t)| (k, TERMINALS[t], model.sessions[&(k, t)].0)).collect();
                        expected_keys.sort();
                        prop_assert_eq!(&got_keys, &expected_keys, "suspects at {} ms", now_ms);
                        for s in &got {
                            let t = TERMINALS.iter().position(|&x| x == s.terminal).unwrap();
                            prop_assert_eq!(s.last_seen, at(model.sessions[&(s.member, t)].1));
                        }
                        // The access layer answers: gone or alive, by mask.
                        for (i, s) in got.iter().enumerate() {
                            let t = TERMINALS.iter().position(|&x| x == s.terminal).unwrap();
                            if gone_mask >> (i % 32) & 1 == 1 {
                                prop_assert!(tracker.confirm_gone(at(now_ms), s));
                                model.sessions.remove(&(s.member, t));
                                if !model.present(&s.member) {
                                    model.events.push(MemberEvent { member: s.member, change: MemberChange::Exited(ExitReason::TimedOut), at: at(now_ms) });
                                }
                            } else {
                                prop_assert!(tracker.confirm_alive(at(now_ms), s));
                                model.sessions.insert((s.member, t), (s.conn.0, now_ms, false));
                            }
                        }
                    }
                }
            }
            prop_assert_eq!(tracker.len(), model.sessions.len());
        }
        let events: Vec<MemberEvent> = std::iter::from_fn(|| tracker.poll_event()).collect();
        prop_assert_eq!(events, model.events);
    }
}

#[test]
fn a_full_tracker_refuses_joins_and_keeps_its_sessions() {
    let mut config = config();
    config.max_sessions = 2;
    let mut tracker = Tracker::new(config).unwrap();
    let now = Timestamp::from_millis(5);
    tracker.join(now, member(0), Terminal::Web, ConnId(1)).unwrap();
    tracker.join(now, member(1), Terminal::Web, ConnId(2)).unwrap();
    assert_eq!(
        tracker.join(now, member(2), Terminal::Web, ConnId(3)),
        Err(room_heartbeat::TrackError::Full { max: 2 })
    );
    assert!(tracker.beat(now, member(3), Terminal::Web, ConnId(4), SessionHint::NONE).is_err());
    assert_eq!(tracker.len(), 2);
    assert!(tracker.is_present(&member(0)) && tracker.is_present(&member(1)));
    // A known session still refreshes when full.
    assert!(tracker.beat(now, member(0), Terminal::Web, ConnId(1), SessionHint::NONE).is_ok());
}

#[test]
fn bad_configurations_are_refused() {
    use room_heartbeat::ConfigError;
    assert_eq!(Timing::new(Duration::ZERO, 3), Err(ConfigError::ZeroInterval));
    assert_eq!(Timing::new(Duration::from_secs(1), 0), Err(ConfigError::ZeroMisses));
    assert_eq!(Timing::new(Duration::MAX, 2), Err(ConfigError::TimeoutOverflow));
    let mut c = TrackerConfig::default();
    c.tick = Duration::ZERO;
    assert_eq!(Tracker::new(c).unwrap_err(), ConfigError::ZeroTick);
    let mut c = TrackerConfig::default();
    c.tick = Duration::from_millis(1);
    assert!(matches!(Tracker::new(c).unwrap_err(), ConfigError::WheelTooLong { .. }));
    let mut c = TrackerConfig::default();
    c.timings.insert(BusinessId(9), Timing::new(Duration::from_secs(400), 2).unwrap());
    assert!(matches!(Tracker::new(c).unwrap_err(), ConfigError::TimeoutTooLong { bid: Some(BusinessId(9)), .. }));
    let mut c = TrackerConfig::default();
    c.max_sessions = 0;
    assert_eq!(Tracker::new(c).unwrap_err(), ConfigError::MaxSessions(0));
    let mut c = TrackerConfig::default();
    c.sweep_batch = 0;
    assert_eq!(Tracker::new(c).unwrap_err(), ConfigError::ZeroSweepBatch);
    let mut c = TrackerConfig::default();
    c.max_pending_suspects = 0;
    assert_eq!(Tracker::new(c).unwrap_err(), ConfigError::ZeroPendingSuspects);
}

#[test]
fn a_mass_timeout_waits_for_the_suspect_queue_instead_of_growing_it() {
    let mut config = config();
    config.max_pending_suspects = 2;
    let mut tracker = Tracker::new(config).unwrap();
    let t0 = Timestamp::from_millis(1_000);
    for i in 0..5 {
        tracker.join(t0, member(i), Terminal::Web, ConnId(i as u64)).unwrap();
    }
    let due = Timestamp::from_millis(1_000 + TIMEOUT_TICKS);
    drive(&mut tracker, due);
    // Two suspects fit; the sweep waits, and says so without asking to spin.
    assert!(tracker.poll_timeout().is_some_and(|t| t > due));
    let first: Vec<Suspect> = std::iter::from_fn(|| tracker.poll_suspect()).collect();
    assert_eq!(first.len(), 2);
    // Drained: the sweep resumes at once and finds the rest.
    assert_eq!(tracker.poll_timeout(), Some(due));
    drive(&mut tracker, due);
    let mut all = first;
    all.extend(std::iter::from_fn(|| tracker.poll_suspect()));
    drive(&mut tracker, due);
    all.extend(std::iter::from_fn(|| tracker.poll_suspect()));
    let mut members: Vec<MemberKey> = all.iter().map(|s| s.member).collect();
    members.sort();
    members.dedup();
    assert_eq!(members.len(), 5, "every session is suspected exactly once");
    assert_eq!(all.len(), 5);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// A batch of beats has exactly the effect of the same beats one by one,
    /// whatever their hints.
    #[test]
    fn beat_batch_equals_beats_in_order(
        beats in prop::collection::vec((0usize..5, 0usize..3, 0u64..3, prop_oneof![Just(None), any::<u32>().prop_map(Some)]), 0..100),
        joined in prop::collection::vec((0usize..5, 0usize..3), 0..8),
    ) {
        let now = Timestamp::from_millis(10);
        let mut one_by_one = Tracker::new(config()).unwrap();
        let mut batched = Tracker::new(config()).unwrap();
        let mut hints = BTreeMap::new();
        for &(m, t) in &joined {
            let a = one_by_one.join(now, member(m), TERMINALS[t], ConnId(0)).unwrap();
            let b = batched.join(now, member(m), TERMINALS[t], ConnId(0)).unwrap();
            prop_assert_eq!(a, b);
            hints.insert((m, t), a.hint);
        }
        let batch: Vec<room_heartbeat::Beat> = beats.iter().map(|&(m, t, conn, garbage)| room_heartbeat::Beat {
            member: member(m),
            terminal: TERMINALS[t],
            conn: ConnId(conn),
            hint: garbage.map(SessionHint::from_bits).or(hints.get(&(m, t)).copied()).unwrap_or(SessionHint::NONE),
        }).collect();
        let expected: Vec<_> = batch.iter().map(|b| one_by_one.beat(now, b.member, b.terminal, b.conn, b.hint)).collect();
        let mut replies = Vec::new();
        batched.beat_batch(now, &batch, &mut replies);
        prop_assert_eq!(replies, expected);
        prop_assert_eq!(batched.len(), one_by_one.len());
    }
}

#[test]
fn unconfirmed_sessions_end_silently_unless_they_beat_again() {
    let mut tracker = Tracker::new(config()).unwrap();
    let t0 = Timestamp::from_millis(1_000);
    for i in 0..3 {
        tracker.join(t0, member(i), Terminal::Web, ConnId(i as u64)).unwrap();
    }
    while tracker.poll_event().is_some() {}
    tracker.mark_all_unconfirmed();
    // Member 1 beats again: it is ours once more.
    tracker.beat(t0, member(1), Terminal::Web, ConnId(1), SessionHint::NONE).unwrap();
    let due = Timestamp::from_millis(1_000 + TIMEOUT_TICKS);
    drive(&mut tracker, due);
    let suspects: Vec<Suspect> = std::iter::from_fn(|| tracker.poll_suspect()).collect();
    assert_eq!(suspects.len(), 3);
    for s in &suspects {
        assert!(tracker.confirm_gone(due, s));
    }
    let exits: Vec<MemberKey> = std::iter::from_fn(|| tracker.poll_event()).map(|e| e.member).collect();
    assert_eq!(exits, vec![member(1)], "only the re-confirmed session exits with an event");
    assert!(tracker.is_empty());
}

#[test]
fn a_beat_delayed_past_its_leave_does_not_bring_the_session_back() {
    let mut tracker = Tracker::new(config()).unwrap();
    let t0 = Timestamp::from_millis(1_000);
    tracker.join(t0, member(0), Terminal::Web, ConnId(7)).unwrap();
    assert_eq!(tracker.leave(t0, member(0), Terminal::Web, ConnId(7)), LeaveOutcome::Exited);
    let late = tracker.beat(t0, member(0), Terminal::Web, ConnId(7), SessionHint::NONE).unwrap();
    assert_eq!(late.outcome, BeatOutcome::ClosedConnection);
    assert!(tracker.is_empty());
    // A new connection of the same member is a new session, adopted.
    let fresh = tracker.beat(t0, member(0), Terminal::Web, ConnId(8), SessionHint::NONE).unwrap();
    assert_eq!(fresh.outcome, BeatOutcome::Adopted);
    // Closed connections are forgotten after max_timeout (1 s here).
    tracker.leave(t0, member(0), Terminal::Web, ConnId(8));
    let much_later = Timestamp::from_millis(2_500);
    assert_eq!(
        tracker.beat(much_later, member(0), Terminal::Web, ConnId(8), SessionHint::NONE).unwrap().outcome,
        BeatOutcome::Adopted
    );
}

#[test]
fn a_storm_of_60k_joins_in_one_second_is_absorbed() {
    let mut tracker = Tracker::new(config()).unwrap();
    for i in 0..60_000u64 {
        let at = Timestamp::from_micros(1_000_000 + i * 16);
        let m = MemberKey::new(BusinessId(1), RoomId(1), Uin(i));
        assert_eq!(
            tracker.join(at, m, if i % 2 == 0 { Terminal::Web } else { Terminal::Android }, ConnId(i)).unwrap().outcome,
            JoinOutcome::Entered
        );
    }
    assert_eq!(tracker.len(), 60_000);
    assert_eq!(std::iter::from_fn(|| tracker.poll_event()).count(), 60_000);
}

/// A suspect left in the queue (its host had no room to check it), then
/// reconnected and fell silent again before the queue reached it: it is
/// still handed out, on its new connection, instead of staying suspect
/// forever with no check to end it.
#[test]
fn a_suspect_that_reconnects_while_queued_and_falls_silent_again_is_still_handed_out() {
    let mut tracker = Tracker::new(config()).unwrap();
    let m = member(0);
    tracker.join(Timestamp::from_millis(0), m, Terminal::Web, ConnId(1)).unwrap();
    let mut now = Timestamp::from_millis(30);
    drive(&mut tracker, now);
    assert_eq!(tracker.queued_suspects(), 1, "suspect after the 30 ms timeout, not taken yet");
    // The client reconnects: no longer suspect, on connection 2.
    tracker.beat(now, m, Terminal::Web, ConnId(2), SessionHint::NONE).unwrap();
    assert_eq!(tracker.poll_suspect_peek(), None, "not a suspect any more");
    // Silent again for a whole timeout, and the queue still not drained.
    now = now + Duration::from_millis(30);
    drive(&mut tracker, now);
    let expected =
        Suspect { member: m, terminal: Terminal::Web, conn: ConnId(2), last_seen: Timestamp::from_millis(30) };
    assert_eq!(tracker.poll_suspect_peek(), Some(expected));
    assert_eq!(tracker.poll_suspect(), Some(expected));
    assert_eq!(tracker.poll_suspect(), None, "handed out once");
    assert!(tracker.confirm_gone(now, &expected));
    assert!(tracker.is_empty());
}
