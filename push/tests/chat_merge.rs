//! Chat merging against a model: whatever mix of room-wide and sub-class
//! lines, reliable messages, time and members changing sub-class, every
//! connection that stays where it is gets exactly the lines aimed at it,
//! once, in acceptance order, in batches of at most `batch_lines`, and no
//! line waits longer than its window (plus the ride wait after a window
//! that rode a reliable message); one that moves gets no line twice, in
//! order, and every line to the whole room.

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use proptest::prelude::*;
use room_core::{Role, Terminal, Timestamp, Uin};
use room_push::{Class, ConnId, ConnSpec, FrameKind, Kind, Message, NodeConfig, PushNode, SubclassId, Target};
use support::*;

const SUBCLASSES: u16 = 6;

#[derive(Debug, Clone)]
enum Op {
    /// A line to the whole room (`None`) or to one sub-class.
    Line(Option<u16>),
    /// A reliable message to the whole room (which chat may ride).
    Reliable,
    /// Time passes, in milliseconds.
    Wait(u64),
    /// One of the movers goes to a sub-class, or to none.
    Move(usize, Option<u16>),
}

/// The members that change sub-class (after the fixed ones).
const MOVERS: usize = 2;

fn ops() -> impl Strategy<Value = Vec<Op>> {
    proptest::collection::vec(
        prop_oneof![
            6 => proptest::option::weighted(0.8, 0..SUBCLASSES).prop_map(Op::Line),
            1 => Just(Op::Reliable),
            2 => (1u64..80).prop_map(Op::Wait),
            1 => (0..MOVERS, proptest::option::of(0..SUBCLASSES)).prop_map(|(m, s)| Op::Move(m, s)),
        ],
        0..300,
    )
}

struct Member {
    conn: ConnId,
    /// `None`: the staff, who see every line.
    subclass: Option<u16>,
}

impl Member {
    fn sees(&self, line: Option<u16>) -> bool {
        self.subclass.is_none() || line.is_none() || line == self.subclass
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn every_line_once_in_order_in_bounded_batches_within_the_window(
        cap in 1usize..8,
        ride_wait_ms in prop_oneof![Just(0u64), 1u64..120],
        rides in any::<bool>(),
        ops in ops(),
    ) {
        let window = Duration::from_millis(100);
        let mut config = NodeConfig::default();
        config.batch_lines = cap;
        config.chat_lane = 10_000;
        config.chat_window = window;
        config.chat_rides_reliable = rides;
        config.chat_ride_wait = Duration::from_millis(ride_wait_ms);
        let mut node = PushNode::new(config);
        let start = Timestamp::from_millis(1_000_000);
        let mut now = start;
        let mut gate = unlimited_gate(now);
        let mut members = Vec::new();
        let fixed = [None, Some(0), Some(1), Some(2), Some(1), Some(5)];
        for (n, subclass) in fixed.into_iter().chain([None, Some(3)]).enumerate() {
            let role = if subclass.is_none() { Role::Teacher } else { Role::Student };
            let spec = ConnSpec::new(ROOM, Uin(n as u64 + 1), role, Terminal::Web).in_subclass(subclass.map(SubclassId));
            members.push(Member { conn: node.connect(spec).expect("connects").conn, subclass });
        }
        // Line number -> (its audience, when it was accepted).
        let mut sent: Vec<(Option<u16>, Timestamp)> = Vec::new();
        let mut got: BTreeMap<ConnId, Vec<u32>> = BTreeMap::new();
        let latest = window.saturating_add(if rides { Duration::from_millis(ride_wait_ms) } else { Duration::ZERO });
        let take = |node: &mut PushNode, now: Timestamp, got: &mut BTreeMap<ConnId, Vec<u32>>, sent: &[(Option<u16>, Timestamp)]| -> Result<(), TestCaseError> {
            let mut rec = Recorder::default();
            let _ = node.flush(now, &mut rec);
            for (conn, frames) in rec.frames {
                for (header, body) in frames {
                    if header.kind != FrameKind::ChatBatch {
                        continue;
                    }
                    let lines = payloads(FrameKind::ChatBatch, &body);
                    prop_assert!(!lines.is_empty() && lines.len() <= cap, "a batch of {} lines (cap {cap})", lines.len());
                    for line in lines {
                        let n = id_of(&line);
                        let (_, at) = sent[n as usize];
                        prop_assert!(now.as_micros() - at.as_micros() <= latest.as_micros() as u64,
                            "line {n} waited {} µs", now.as_micros() - at.as_micros());
                        got.entry(conn).or_default().push(n);
                    }
                }
            }
            Ok(())
        };
        for op in &ops {
            match *op {
                Op::Line(subclass) => {
                    let n = sent.len() as u32;
                    let mut target = Target::room();
                    if let Some(s) = subclass {
                        target = target.subclass(SubclassId(s));
                    }
                    let msg = Message::new(ROOM, Class::Chat, Kind(1), n.to_le_bytes().to_vec()).to(target);
                    let env = gate.publish(now, msg).expect("accepted");
                    prop_assert_eq!(node.handle_envelope(now, &env), Ok(0));
                    sent.push((subclass, now));
                }
                Op::Reliable => {
                    let env = gate.publish(now, Message::new(ROOM, Class::Teacher, Kind(2), vec![0; 4])).expect("accepted");
                    node.handle_envelope(now, &env).expect("handled");
                }
                Op::Move(m, subclass) => {
                    let conn = members[fixed.len() + m].conn;
                    node.set_connection_subclass(conn, subclass.map(SubclassId)).expect("known");
                }
                Op::Wait(ms) => {
                    // Timers run when due, never late.
                    let until = now.saturating_add(Duration::from_millis(ms));
                    while let Some(due) = node.poll_timeout().filter(|&d| d <= until) {
                        now = due.max(now);
                        node.handle_timeout(now);
                        take(&mut node, now, &mut got, &sent)?;
                    }
                    now = until;
                }
            }
            take(&mut node, now, &mut got, &sent)?;
        }
        // Every window closes.
        while let Some(due) = node.poll_timeout().filter(|&d| d <= now.saturating_add(Duration::from_secs(1))) {
            now = due.max(now);
            node.handle_timeout(now);
            take(&mut node, now, &mut got, &sent)?;
        }
        for m in &members[..fixed.len()] {
            let expected: Vec<u32> =
                (0..sent.len() as u32).filter(|&n| m.sees(sent[n as usize].0)).collect();
            prop_assert_eq!(got.get(&m.conn).cloned().unwrap_or_default(), expected, "member in {:?}", m.subclass);
        }
        for m in &members[fixed.len()..] {
            let lines = got.get(&m.conn).cloned().unwrap_or_default();
            prop_assert!(lines.windows(2).all(|w| w[0] < w[1]), "a mover got {:?}", lines);
            let room_wide: Vec<u32> = (0..sent.len() as u32).filter(|&n| sent[n as usize].0.is_none()).collect();
            let its_room_wide: Vec<u32> = lines.iter().copied().filter(|&n| sent[n as usize].0.is_none()).collect();
            prop_assert_eq!(its_room_wide, room_wide, "a mover missed lines to the whole room");
        }
    }
}

/// A node whose chat batches hold 4 lines, a gate, and the time.
fn four_line_batches() -> (PushNode, room_push::Gate, Timestamp) {
    let mut config = NodeConfig::default();
    config.batch_lines = 4;
    let t0 = Timestamp::from_millis(1_000_000);
    (PushNode::new(config), unlimited_gate(t0), t0)
}

/// A member `n` in sub-class `s` (the staff, in none, as teachers).
fn member(n: u64, s: Option<u16>) -> ConnSpec {
    let role = if s.is_none() { Role::Teacher } else { Role::Student };
    ConnSpec::new(ROOM, Uin(n), role, Terminal::Web).in_subclass(s.map(SubclassId))
}

/// Lines `0..count`, each to sub-class 0 or 1 in turn, at `at`.
fn lines_to_two_subclasses(gate: &mut room_push::Gate, node: &mut PushNode, at: Timestamp, count: u32) {
    for n in 0..count {
        let target = Target::room().subclass(SubclassId((n % 2) as u16));
        let msg = Message::new(ROOM, Class::Chat, Kind(1), n.to_le_bytes().to_vec()).to(target);
        let env = gate.publish(at, msg).expect("accepted");
        node.handle_envelope(at, &env).expect("handled");
    }
}

/// The chat batches `conn` got, as their lines' numbers.
fn batches(rec: &Recorder, conn: ConnId) -> Vec<Vec<u32>> {
    rec.frames
        .get(&conn)
        .map(|f| f.iter().map(|(_, b)| payloads(FrameKind::ChatBatch, b).iter().map(|p| id_of(p)).collect()).collect())
        .unwrap_or_default()
}

/// The staff's batch fills first (they see every line); a sub-class's
/// share of the window keeps waiting for its own batch to fill or the
/// window to close, and the staff then get only the lines they lack.
#[test]
fn the_staff_batch_goes_when_full_and_sub_classes_wait() {
    let (mut node, mut gate, t0) = four_line_batches();
    let teacher = node.connect(member(1, None)).expect("connects").conn;
    let first = node.connect(member(2, Some(0))).expect("connects").conn;
    let second = node.connect(member(3, Some(1))).expect("connects").conn;
    lines_to_two_subclasses(&mut gate, &mut node, t0, 5);
    let mut rec = Recorder::default();
    let _ = node.flush(t0, &mut rec);
    assert_eq!(batches(&rec, teacher), vec![vec![0, 1, 2, 3]]);
    assert!(batches(&rec, first).is_empty() && batches(&rec, second).is_empty());
    let closes = t0.saturating_add(Duration::from_millis(100));
    assert_eq!(node.poll_timeout(), Some(closes));
    node.handle_timeout(closes);
    let mut rec = Recorder::default();
    let _ = node.flush(closes, &mut rec);
    assert_eq!(batches(&rec, teacher), vec![vec![4]]);
    assert_eq!(batches(&rec, first), vec![vec![0, 2, 4]]);
    assert_eq!(batches(&rec, second), vec![vec![1, 3]]);
}

/// After a window that rode a reliable message, the next waits the ride
/// wait longer for one; after one that closed on its timer, it does not.
#[test]
fn a_window_after_a_ride_waits_for_the_next_reliable_message() {
    let mut config = NodeConfig::default();
    config.chat_ride_wait = Duration::from_millis(50);
    let mut node = PushNode::new(config);
    let t0 = Timestamp::from_millis(1_000_000);
    let mut gate = unlimited_gate(t0);
    let _ = node.connect(ConnSpec::new(ROOM, Uin(1), Role::Student, Terminal::Web)).expect("connects");
    let mut line = |node: &mut PushNode, at: Timestamp| {
        let env = gate.publish(at, Message::new(ROOM, Class::Chat, Kind(1), vec![0; 4])).expect("accepted");
        node.handle_envelope(at, &env).expect("handled");
        let words = gate.publish(at, Message::new(ROOM, Class::Teacher, Kind(2), vec![0; 4])).expect("accepted");
        (env, words)
    };
    let ms = |n: u64| t0.saturating_add(Duration::from_millis(n));
    // A plain window first.
    let (_, words) = line(&mut node, t0);
    assert_eq!(node.poll_timeout(), Some(ms(100)));
    // It rides the teacher's words; the next window waits 150 ms.
    node.handle_envelope(ms(10), &words).expect("handled");
    let (_, _) = line(&mut node, ms(20));
    assert_eq!(node.poll_timeout(), Some(ms(170)));
    // No words come: it closes on its timer, and the next is plain again.
    node.handle_timeout(ms(170));
    let (_, _) = line(&mut node, ms(200));
    assert_eq!(node.poll_timeout(), Some(ms(300)));
}

/// A member entering a sub-class (or leaving for none) after the staff had
/// part of the window gets each line once: the window goes out first.
#[test]
fn moving_into_or_out_of_no_sub_class_mid_window_neither_repeats_nor_loses() {
    for into in [true, false] {
        let (mut node, mut gate, t0) = four_line_batches();
        let _staff = node.connect(member(1, None)).expect("connects").conn;
        let _others = node.connect(member(2, Some(1))).expect("connects").conn;
        let mover = node.connect(member(3, if into { None } else { Some(0) })).expect("connects").conn;
        lines_to_two_subclasses(&mut gate, &mut node, t0, 5);
        let mut rec = Recorder::default();
        let _ = node.flush(t0, &mut rec);
        node.set_connection_subclass(mover, if into { Some(SubclassId(0)) } else { None }).expect("known");
        let closes = t0.saturating_add(Duration::from_secs(1));
        node.handle_timeout(closes);
        let _ = node.flush(closes, &mut rec);
        let got: Vec<u32> = batches(&rec, mover).concat();
        // Where it was when the lines came: every line (no sub-class), or
        // sub-class 0's.
        let expected = if into { vec![0, 1, 2, 3, 4] } else { vec![0, 2, 4] };
        assert_eq!(got, expected, "moving {}", if into { "into a sub-class" } else { "out of its sub-class" });
    }
}
