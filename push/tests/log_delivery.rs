//! Log delivery against lane delivery: fed the same envelopes, with
//! members of every role, terminal and sub-class, members that move,
//! targeted and room-wide reliable messages (those for a few members
//! handed to their connections directly), chat to the room, to
//! sub-classes and to named users, reactions, and gaps in the bus, a node that
//! publishes its rooms' logs gives every connection, through its
//! follower, the same reliable frames (numbers, `prev`, bodies) and the
//! same chat batches as a node that queues a copy per connection; and it
//! answers their acks and checks alike (members that move are judged by
//! where they are now, and only never refused).

mod support;

use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

use bytes::Bytes;
use proptest::prelude::*;
use room_core::{Role, Terminal, Timestamp, Uin};
use room_push::{
    AckReply, CheckAnswer, Class, ConnId, ConnSpec, Delivery, Follower, FrameHeader, FrameKind, Kind, LogEntry,
    LogOutput, Message, NodeConfig, PushNode, Sender, SubclassId, Target,
};
use support::*;

const SUBCLASSES: u16 = 4;
const MOVERS: usize = 2;

#[derive(Debug, Clone)]
enum Op {
    /// A reliable message to the whole room.
    ToRoom,
    /// A reliable message to one role.
    ToRole(u8),
    /// A reliable message to one sub-class.
    ToSubclass(u16),
    /// A reliable message to one member.
    ToMember(usize),
    /// A reliable message to one terminal.
    ToTerminal(u8),
    /// A chat line to the room (`None`) or a sub-class.
    Line(Option<u16>),
    /// A chat line to one member (not merged).
    LineTo(usize),
    /// A reaction of one of two kinds (totals go out per window).
    React(u16),
    /// The bus loses the next reliable message.
    Lose,
    /// Time passes, in milliseconds.
    Wait(u64),
    /// A mover goes to a sub-class or to none.
    Move(usize, Option<u16>),
}

fn ops() -> impl Strategy<Value = Vec<Op>> {
    proptest::collection::vec(
        prop_oneof![
            3 => Just(Op::ToRoom),
            1 => (0u8..5).prop_map(Op::ToRole),
            1 => (0..SUBCLASSES).prop_map(Op::ToSubclass),
            1 => (0usize..12).prop_map(Op::ToMember),
            1 => (0u8..7).prop_map(Op::ToTerminal),
            5 => proptest::option::weighted(0.7, 0..SUBCLASSES).prop_map(Op::Line),
            1 => (0usize..12).prop_map(Op::LineTo),
            1 => (20u16..22).prop_map(Op::React),
            1 => Just(Op::Lose),
            2 => (1u64..150).prop_map(Op::Wait),
            1 => (0..MOVERS, proptest::option::of(0..SUBCLASSES)).prop_map(|(m, s)| Op::Move(m, s)),
        ],
        0..160,
    )
}

/// A host's writer for one connection: its follower, where it is in the
/// room's log, and its own queue: the moves and the direct entries still
/// ahead of it, each at its place in the log, in the node's order.
struct Reader {
    follower: Follower,
    pos: u64,
    queue: VecDeque<(u64, Queued)>,
}

enum Queued {
    Moved(Option<SubclassId>),
    Direct(LogEntry),
}

impl Reader {
    /// Applies what the queue holds before entry `pos`.
    fn drain_queue(&mut self, received: &mut Received) {
        while let Some((at, _)) = self.queue.front().filter(|(at, _)| *at <= self.pos) {
            assert_eq!(*at, self.pos, "a queued item is reached at its place");
            match self.queue.pop_front().map(|(_, q)| q) {
                Some(Queued::Moved(s)) => self.follower.set_subclass(s),
                Some(Queued::Direct(entry)) => {
                    let (header, body) = self.follower.take(&entry).expect("a direct entry reaches its connection");
                    received.add(header, body);
                }
                None => {}
            }
        }
    }
}

/// What a connection received, split the way the two deliveries must agree.
#[derive(Debug, Default, PartialEq, Eq)]
struct Received {
    reliable: Vec<(FrameHeader, Bytes)>,
    chat: Vec<Bytes>,
    other: Vec<(FrameHeader, Bytes)>,
}

impl Received {
    fn add(&mut self, header: FrameHeader, body: Bytes) {
        match header.kind {
            FrameKind::ChatBatch => self.chat.push(body),
            FrameKind::Message if header.class.is_reliable() => self.reliable.push((header, body)),
            _ => self.other.push((header, body)),
        }
    }
}

struct Log {
    entries: Vec<LogEntry>,
    readers: BTreeMap<ConnId, Reader>,
    /// Direct entries handed out.
    directs: usize,
}

impl Log {
    /// The host's side: keeps what the node published, then, if `read`,
    /// lets every writer read up to the end (writers read at their own
    /// pace: entries and queued items pile up between two reads).
    fn pump(&mut self, node: &mut PushNode, got: &mut BTreeMap<ConnId, Received>, read: bool) {
        while let Some(out) = node.poll_log() {
            match out {
                LogOutput::Append { pos, entry, .. } => {
                    assert_eq!(pos, self.entries.len() as u64, "entries come in order");
                    self.entries.push(entry);
                }
                LogOutput::Moved { conn, at, subclass } => {
                    self.readers.get_mut(&conn).expect("a follower").queue.push_back((at, Queued::Moved(subclass)));
                }
                LogOutput::Direct { conn, entry } => {
                    let at = self.entries.len() as u64;
                    self.directs += 1;
                    self.readers.get_mut(&conn).expect("a follower").queue.push_back((at, Queued::Direct(entry)));
                }
                other => panic!("unexpected {other:?}"),
            }
        }
        if !read {
            return;
        }
        for (conn, r) in &mut self.readers {
            let received = got.entry(*conn).or_default();
            while (r.pos as usize) < self.entries.len() {
                r.drain_queue(received);
                if let Some((header, body)) = r.follower.take(&self.entries[r.pos as usize]) {
                    received.add(header, body);
                }
                r.pos += 1;
            }
            r.drain_queue(received);
        }
    }
}

fn node(delivery: Delivery) -> PushNode {
    let mut config = NodeConfig::default();
    config.delivery = delivery;
    config.batch_lines = 3;
    config.chat_lane = 100_000;
    config.reliable_lane = 100_000;
    config.cache_len = 100_000;
    PushNode::new(config)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn a_follower_gets_what_its_lanes_would_have(ops in ops()) {
        let mut lanes = node(Delivery::Lanes);
        let mut logged = node(Delivery::Log);
        let mut now = Timestamp::from_millis(1_000_000);
        let mut gate = unlimited_gate(now);
        let mut log = Log { entries: Vec::new(), readers: BTreeMap::new(), directs: 0 };
        // Ten fixed members of every kind, then the movers.
        let mut conns: Vec<(ConnId, ConnId)> = Vec::new();
        let subclasses = [None, None, Some(0), Some(1), Some(1), Some(2), Some(3), Some(0), None, Some(2), None, Some(3)];
        for (n, subclass) in subclasses.into_iter().enumerate() {
            let role = if subclass.is_none() { role_of(n as u8) } else { Role::Student };
            let spec = ConnSpec::new(ROOM, Uin(n as u64 + 1), role, terminal_of(n as u8)).in_subclass(subclass.map(SubclassId));
            let a = lanes.connect(spec).expect("connects").conn;
            let b = logged.connect(spec).expect("connects").conn;
            let (pos, follower) = logged.follow(b).expect("known");
            log.readers.insert(b, Reader { follower, pos, queue: VecDeque::new() });
            conns.push((a, b));
        }
        let movers = subclasses.len() - MOVERS;
        let mut got_lanes: BTreeMap<ConnId, Received> = BTreeMap::new();
        let mut got_log: BTreeMap<ConnId, Received> = BTreeMap::new();
        let mut lose = false;
        let mut n = 0u32;
        // Reliable messages to one member: each handed to its connection.
        let mut to_one = 0;
        for op in &ops {
            n += 1;
            let reliable = |target: Target| Message::new(ROOM, Class::Signal, Kind(3), n.to_le_bytes().to_vec()).to(target);
            let msg = match *op {
                Op::ToRoom => Some(reliable(Target::room())),
                Op::ToRole(r) => Some(reliable(Target::room().role(role_of(r)))),
                Op::ToSubclass(s) => Some(reliable(Target::room().subclass(SubclassId(s)))),
                Op::ToMember(m) => Some(reliable(Target::user(Uin(m as u64 + 1)))),
                Op::ToTerminal(t) => Some(reliable(Target::room().terminal(terminal_of(t)))),
                Op::Line(s) => {
                    let target = s.map_or(Target::room(), |s| Target::room().subclass(SubclassId(s)));
                    Some(Message::new(ROOM, Class::Chat, Kind(1), n.to_le_bytes().to_vec()).to(target))
                }
                Op::LineTo(m) => Some(Message::new(ROOM, Class::Chat, Kind(1), n.to_le_bytes().to_vec()).to(Target::user(Uin(m as u64 + 1)))),
                Op::React(k) => Some(Message::reaction(ROOM, Kind(k), Sender { uin: Uin(3), role: Role::Student }, 1)),
                Op::Lose => {
                    lose = true;
                    None
                }
                Op::Wait(ms) => {
                    let until = now.saturating_add(Duration::from_millis(ms));
                    while let Some(due) = lanes.poll_timeout().filter(|&d| d <= until) {
                        prop_assert_eq!(logged.poll_timeout(), Some(due), "both nodes keep the same timers");
                        now = due.max(now);
                        lanes.handle_timeout(now);
                        logged.handle_timeout(now);
                    }
                    now = until;
                    None
                }
                Op::Move(m, s) => {
                    let (a, b) = conns[movers + m];
                    lanes.set_connection_subclass(a, s.map(SubclassId)).expect("known");
                    logged.set_connection_subclass(b, s.map(SubclassId)).expect("known");
                    None
                }
            };
            if let Some(msg) = msg {
                let env = gate.publish(now, msg).expect("accepted");
                if env.seq > 0 && std::mem::take(&mut lose) {
                    continue;
                }
                let a = lanes.handle_envelope(now, &env);
                let b = logged.handle_envelope(now, &env);
                prop_assert_eq!(a, b, "the same recipients counted");
                to_one += usize::from(matches!(op, Op::ToMember(_)));
            }
            let mut rec = Recorder::default();
            let _ = lanes.flush(now, &mut rec);
            for (conn, frames) in rec.frames {
                for (header, body) in frames {
                    got_lanes.entry(conn).or_default().add(header, body);
                }
            }
            let mut rec = Recorder::default();
            let _ = logged.flush(now, &mut rec);
            for (conn, frames) in rec.frames {
                for (header, body) in frames {
                    got_log.entry(conn).or_default().add(header, body);
                }
            }
            log.pump(&mut logged, &mut got_log, matches!(op, Op::Wait(_)));
        }
        log.pump(&mut logged, &mut got_log, true);
        prop_assert!(log.directs >= to_one, "{} direct entries for {} messages to one member", log.directs, to_one);
        for (i, (a, b)) in conns.iter().enumerate() {
            let empty = Received::default();
            let (x, y) = (got_lanes.get(a).unwrap_or(&empty), got_log.get(b).unwrap_or(&empty));
            prop_assert_eq!(&x.reliable, &y.reliable, "member {}'s reliable frames", i);
            prop_assert_eq!(&x.chat, &y.chat, "member {}'s chat batches", i);
            prop_assert_eq!(&x.other, &y.other, "member {}'s other frames", i);
            // The newest number each was given, as acks and checks see it.
            let epoch = lanes.connection_head(*a).expect("known").0;
            let last = x.reliable.last().map_or(0, |(h, _)| h.seq);
            if i >= movers {
                // A mover is judged by where it is now: an ack may be told
                // of a message for its new sub-class that went out before
                // it came (a check then brings it), but is never refused.
                prop_assert!(logged.handle_ack(*b, epoch, last).is_ok(), "member {i}'s ack refused");
            } else {
                // What it got is what it acks: told the same as from lanes.
                prop_assert_eq!(logged.handle_ack(*b, epoch, last), lanes.handle_ack(*a, epoch, last), "member {}'s ack", i);
                // A check from 0 brings the same messages (after a gap, a
                // reset in both).
                let answer = |c: CheckAnswer| match c {
                    CheckAnswer::Messages { frames, .. } => (false, frames.into_iter().map(|f| f.header.seq).collect::<Vec<_>>()),
                    CheckAnswer::Reset { .. } => (true, Vec::new()),
                    other => panic!("unexpected {other:?}"),
                };
                prop_assert_eq!(
                    answer(logged.handle_check(now, *b, epoch, 0).expect("in range")),
                    answer(lanes.handle_check(now, *a, epoch, 0).expect("in range")),
                    "member {}'s check", i
                );
            }
        }
    }
}

/// A restart of the room's sequence reaches every follower as a resync
/// marker in the new epoch, and the next message numbers from there.
#[test]
fn a_restart_is_a_resync_marker_then_the_new_sequence() {
    let mut node = node(Delivery::Log);
    let now = Timestamp::from_millis(1_000_000);
    let mut gate = unlimited_gate(now);
    let conn = node.connect(ConnSpec::new(ROOM, Uin(1), Role::Student, Terminal::Web)).expect("connects").conn;
    let (mut pos, mut follower) = node.follow(conn).expect("known");
    let say = |n: u8| Message::new(ROOM, Class::Teacher, Kind(2), vec![n; 4]);
    let first = gate.publish(now, say(1)).expect("accepted");
    node.handle_envelope(now, &first).expect("handled");
    let mut second = gate.publish(now, say(2)).expect("accepted");
    // The room's gate restarted elsewhere: a later epoch, numbers from 1.
    second.epoch = first.epoch + 1;
    second.seq = 1;
    node.handle_envelope(now, &second).expect("handled");
    let mut frames = Vec::new();
    while let Some(out) = node.poll_log() {
        if let LogOutput::Append { pos: p, entry, .. } = out {
            assert_eq!(p, pos);
            pos += 1;
            frames.extend(follower.take(&entry).map(|(h, _)| (h.kind, h.epoch, h.seq, h.prev)));
        }
    }
    assert_eq!(
        frames,
        vec![
            (FrameKind::Message, first.epoch, 1, 0),
            (FrameKind::Resync, first.epoch + 1, 0, 0),
            (FrameKind::Message, first.epoch + 1, 1, 0),
        ]
    );
    assert_eq!(node.handle_ack(conn, first.epoch + 1, 1), Ok(AckReply::UpToDate));
}

/// A writer that fell behind what its host keeps continues after the
/// newest entry with a resync marker naming it; its next frame chains
/// from there.
#[test]
fn a_lagging_follower_resyncs_at_the_newest_number() {
    let mut node = node(Delivery::Log);
    let now = Timestamp::from_millis(1_000_000);
    let mut gate = unlimited_gate(now);
    let conn = node.connect(ConnSpec::new(ROOM, Uin(1), Role::Student, Terminal::Web)).expect("connects").conn;
    let (_, mut follower) = node.follow(conn).expect("known");
    let mut newest = (0, 0);
    let mut entries = Vec::new();
    for n in 0..5u8 {
        let env = gate.publish(now, Message::new(ROOM, Class::Teacher, Kind(2), vec![n; 4])).expect("accepted");
        node.handle_envelope(now, &env).expect("handled");
        while let Some(LogOutput::Append { entry, .. }) = node.poll_log() {
            newest = entry.sequence().unwrap_or(newest);
            entries.push(entry);
        }
    }
    // Only the last entry is still kept: the four before it were missed.
    let marker = follower.lagged(newest.0, 4);
    assert_eq!((marker.kind, marker.seq), (FrameKind::Resync, 4));
    let (header, _) = follower.take(&entries[4]).expect("to the room");
    assert_eq!((header.seq, header.prev), (5, 4));
    // The client checks from what it has; the node answers up to 5.
    match node.handle_check(now, conn, newest.0, 0).expect("in range") {
        CheckAnswer::Messages { upto, frames, .. } => assert_eq!((upto, frames.len()), (5, 5)),
        other => panic!("{other:?}"),
    }
}

/// A reliable message for one member goes to its connection, not to the
/// room's log; taken after a resync marker that named its number, it is
/// not given again (the client's check brings it), and the next one
/// chains from the marker.
#[test]
fn a_direct_entry_named_by_a_resync_marker_is_not_given_again() {
    let mut node = node(Delivery::Log);
    let now = Timestamp::from_millis(1_000_000);
    let mut gate = unlimited_gate(now);
    let mut conns = Vec::new();
    for uin in 1..=4 {
        let conn = node.connect(ConnSpec::new(ROOM, Uin(uin), Role::Student, Terminal::Web)).expect("connects").conn;
        conns.push(conn);
    }
    let (_, mut follower) = node.follow(conns[0]).expect("known");
    let mut directs = Vec::new();
    for n in 0..3u8 {
        let msg = Message::new(ROOM, Class::Signal, Kind(3), vec![n]).to(Target::user(Uin(1)));
        let env = gate.publish(now, msg).expect("accepted");
        assert_eq!(node.handle_envelope(now, &env), Ok(1));
        match node.poll_log() {
            Some(LogOutput::Direct { conn, entry }) => {
                assert_eq!(conn, conns[0], "only the follower's connection, once");
                directs.push(entry);
            }
            other => panic!("expected a direct entry, got {other:?}"),
        }
        assert!(node.poll_log().is_none(), "nothing for the room's log");
    }
    let epoch = directs[0].sequence().expect("numbered").0;
    let (first, _) = follower.take(&directs[0]).expect("for it");
    assert_eq!((first.seq, first.prev), (1, 0));
    // The writer fell behind and was told to check up to 2.
    let marker = follower.lagged(epoch, 2);
    assert_eq!((marker.kind, marker.seq), (FrameKind::Resync, 2));
    assert!(follower.take(&directs[1]).is_none(), "number 2 is the check's");
    let (third, _) = follower.take(&directs[2]).expect("for it");
    assert_eq!((third.seq, third.prev), (3, 2));
}
