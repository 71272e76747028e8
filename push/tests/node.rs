//! The push node's answers to bad input, slow and failing connectors,
//! overflow, merging, duplicates, gaps and epoch changes.

mod support;

use std::time::Duration;

use bytes::Bytes;
use room_core::{Role, Terminal, Timestamp, Uin};
use room_push::{
    AckReply, CheckAnswer, Class, ConnId, ConnSpec, Connector, DisconnectReason, Envelope, Frame, FrameKind, Gate,
    Kind, Message, NodeConfig, NodeError, NodeEvent, OverflowPolicy, PushNode, Received, ReliableReceiver, SendError,
    Target,
};
use support::*;

fn t0() -> Timestamp {
    Timestamp::from_millis(1_000_000)
}

fn gate() -> Gate {
    unlimited_gate(t0())
}

fn signal(g: &mut Gate, i: u32) -> Envelope {
    g.publish(t0(), Message::new(ROOM, Class::Signal, Kind(1), i.to_le_bytes().to_vec())).expect("accepted")
}

fn student(node: &mut PushNode, n: u64) -> ConnId {
    node.connect(ConnSpec::new(ROOM, Uin(n), Role::Student, Terminal::Web)).expect("connects").conn
}

#[test]
fn unknown_and_stale_connections_are_refused() {
    let mut node = PushNode::new(NodeConfig::default());
    let c = student(&mut node, 5);
    node.disconnect(t0(), c).expect("known");
    assert_eq!(node.disconnect(t0(), c), Err(NodeError::UnknownConnection(c)));
    // The slot is reused with a new generation: the old id stays dead.
    let c2 = student(&mut node, 6);
    assert_ne!(c, c2);
    assert_eq!(node.handle_ack(c, 0, 0), Err(NodeError::UnknownConnection(c)));
    assert_eq!(node.set_writable(c), Err(NodeError::UnknownConnection(c)));
    assert_eq!(node.handle_check(t0(), c, 0, 0), Err(NodeError::UnknownConnection(c)));
    let spec = ConnSpec::new(ROOM, Uin(7), Role::Student, Terminal::Web).with_format(3);
    assert_eq!(node.connect(spec), Err(NodeError::UnknownFormat { format: 3, formats: 1 }));
}

#[test]
fn envelopes_for_unknown_rooms_or_with_wrong_numbers_are_refused() {
    let mut g = gate();
    let mut node = PushNode::new(NodeConfig::default());
    let env = signal(&mut g, 1);
    assert_eq!(node.handle_envelope(t0(), &env), Err(NodeError::UnknownRoom(ROOM)));
    student(&mut node, 5);
    let mut bad = env.clone();
    bad.seq = 0;
    assert_eq!(node.handle_envelope(t0(), &bad), Err(NodeError::BadSequence { class: Class::Signal, seq: 0 }));
    let mut chat = g.publish(t0(), Message::new(ROOM, Class::Chat, Kind(1), Bytes::new())).expect("accepted");
    chat.seq = 9;
    assert_eq!(node.handle_envelope(t0(), &chat), Err(NodeError::BadSequence { class: Class::Chat, seq: 9 }));
}

#[test]
fn node_limits_hold() {
    let mut config = NodeConfig::default();
    config.max_connections = 3;
    let mut node = PushNode::new(config);
    for n in 0..3 {
        student(&mut node, n);
    }
    let spec = ConnSpec::new(ROOM, Uin(9), Role::Student, Terminal::Web);
    assert_eq!(node.connect(spec), Err(NodeError::TooManyConnections { max: 3 }));
}

#[test]
fn acks_and_checks_from_the_future_or_a_stale_epoch() {
    let mut g = gate();
    let mut node = PushNode::new(NodeConfig::default());
    let c = student(&mut node, 5);
    let env = signal(&mut g, 1);
    node.handle_envelope(t0(), &env).expect("handled");
    assert_eq!(node.handle_ack(c, env.epoch, 2), Err(NodeError::AckFromFuture { acked: 2, last: 1 }));
    assert_eq!(node.handle_check(t0(), c, env.epoch, 5), Err(NodeError::CheckFromFuture { after: 5, last: 1 }));
    assert_eq!(node.handle_ack(c, env.epoch + 1, 1), Ok(AckReply::Reset { epoch: env.epoch, head: 1 }));
    assert_eq!(node.handle_check(t0(), c, env.epoch + 1, 0), Ok(CheckAnswer::Reset { epoch: env.epoch, head: 1 }));
    // Not yet flushed: the node does not ask the client to check.
    assert_eq!(node.handle_ack(c, env.epoch, 0), Ok(AckReply::UpToDate));
    let _ = node.flush(t0(), &mut Recorder::default());
    assert_eq!(node.handle_ack(c, env.epoch, 0), Ok(AckReply::Behind { last: 1 }));
    assert_eq!(node.handle_ack(c, env.epoch, 1), Ok(AckReply::UpToDate));
}

/// Takes `budget` frames, then blocks; or fails in a chosen way.
struct Flaky {
    budget: usize,
    fail: Option<SendError>,
    got: Vec<(ConnId, u64)>,
}

impl Connector for Flaky {
    fn send(&mut self, frame: &Frame<'_>) -> Result<(), SendError> {
        if let Some(e) = &self.fail {
            return Err(e.clone());
        }
        if self.budget == 0 {
            return Err(SendError::WouldBlock);
        }
        self.budget -= 1;
        self.got.push((frame.conn, frame.header.seq));
        Ok(())
    }
}

#[test]
fn a_blocked_connection_keeps_its_frames_in_order_until_writable() {
    let mut g = gate();
    let mut node = PushNode::new(NodeConfig::default());
    let c = student(&mut node, 5);
    for i in 0..10 {
        node.handle_envelope(t0(), &signal(&mut g, i)).expect("handled");
    }
    let mut flaky = Flaky { budget: 4, fail: None, got: Vec::new() };
    assert_eq!(node.flush(t0(), &mut flaky), 4);
    flaky.budget = 100;
    assert_eq!(node.flush(t0(), &mut flaky), 0, "parked until writable");
    node.set_writable(c).expect("known");
    assert_eq!(node.flush(t0(), &mut flaky), 6);
    let seqs: Vec<u64> = flaky.got.iter().map(|g| g.1).collect();
    assert_eq!(seqs, (1..=10).collect::<Vec<_>>());
    assert_eq!(node.stats().queued_frames, 0);
}

#[test]
fn a_closed_or_failing_connector_drops_the_connection() {
    for (fail, reason) in [
        (SendError::Closed, DisconnectReason::Closed),
        (SendError::Failed("broken pipe".into()), DisconnectReason::ConnectorFailed("broken pipe".into())),
    ] {
        let mut g = gate();
        let mut node = PushNode::new(NodeConfig::default());
        let c = student(&mut node, 5);
        let other = student(&mut node, 6);
        node.handle_envelope(t0(), &signal(&mut g, 1)).expect("handled");
        let _ = node.flush(t0(), &mut Flaky { budget: 0, fail: Some(fail), got: Vec::new() });
        let events: Vec<_> = std::iter::from_fn(|| node.poll_event()).collect();
        assert_eq!(events.len(), 2);
        assert!(events.contains(&NodeEvent::Disconnected { conn: c, uin: Uin(5), room: ROOM, reason: reason.clone() }));
        assert!(node.handle_ack(other, 0, 0).is_err());
        assert_eq!(node.stats().connections, 0);
        assert_eq!(node.stats().queued_frames, 0);
    }
}

#[test]
fn overflow_by_disconnect_policy() {
    let mut g = gate();
    let mut config = NodeConfig::default();
    config.reliable_lane = 4;
    config.overflow = OverflowPolicy::Disconnect;
    let mut node = PushNode::new(config);
    let c = student(&mut node, 5);
    for i in 0..5 {
        node.handle_envelope(t0(), &signal(&mut g, i)).expect("handled");
    }
    assert_eq!(
        node.poll_event(),
        Some(NodeEvent::Disconnected { conn: c, uin: Uin(5), room: ROOM, reason: DisconnectReason::SlowConsumer })
    );
    assert_eq!(node.stats().queued_frames, 0);
}

#[test]
fn overflow_by_resync_policy_recovers_through_a_check() {
    let mut g = gate();
    let mut config = NodeConfig::default();
    config.reliable_lane = 4;
    let mut node = PushNode::new(config);
    let connected = node.connect(ConnSpec::new(ROOM, Uin(5), Role::Student, Terminal::Web)).expect("connects");
    let mut recv = ReliableReceiver::new(&connected);
    for i in 0..20 {
        node.handle_envelope(t0(), &signal(&mut g, i)).expect("handled");
    }
    let mut rec = Recorder::default();
    let _ = node.flush(t0(), &mut rec);
    let frames = &rec.frames[&connected.conn];
    assert_eq!(frames.len(), 1, "only the marker: the lane was dropped");
    assert_eq!(frames[0].0.kind, FrameKind::Resync);
    let Received::Check { epoch, after } = recv.on_frame(&frames[0].0) else { panic!("a resync asks for a check") };
    let answer = node.handle_check(t0(), connected.conn, epoch, after).expect("honest");
    let CheckAnswer::Messages { frames, upto, .. } = &answer else { panic!("cached: {answer:?}") };
    assert_eq!(*upto, 20);
    assert_eq!(frames.iter().map(|f| f.header.seq).collect::<Vec<_>>(), (1..=20).collect::<Vec<_>>());
    assert_eq!(id_of(&payloads(FrameKind::Message, &frames[7].body)[0]), 7);
    recv.on_answer(&answer);
    assert_eq!(recv.contiguous(), 20);
    assert_eq!(node.stats().resyncs, 1);
}

#[test]
fn chat_is_shed_oldest_first_and_lanes_stay_bounded() {
    let mut g = gate();
    let mut config = NodeConfig::default();
    config.chat_lane = 8;
    let mut node = PushNode::new(config);
    let c = student(&mut node, 5);
    for i in 0..50u32 {
        // Direct chat (not the plain audience) is queued one frame per message.
        let msg = Message::new(ROOM, Class::Chat, Kind(1), i.to_le_bytes().to_vec()).to(Target::room().exclude(Uin(9)));
        node.handle_envelope(t0(), &g.publish(t0(), msg).expect("accepted")).expect("handled");
    }
    node.handle_envelope(t0(), &signal(&mut g, 99)).expect("handled");
    assert_eq!(node.stats().queued_frames, 9);
    assert_eq!(node.stats().chat_shed, 42);
    let mut rec = Recorder::default();
    let _ = node.flush(t0(), &mut rec);
    let frames = &rec.frames[&c];
    assert_eq!(frames[0].0.class, Class::Signal, "reliable first");
    let chat: Vec<u32> = frames[1..].iter().map(|(h, b)| id_of(&payloads(h.kind, b)[0])).collect();
    assert_eq!(chat, (42..50).collect::<Vec<_>>(), "the newest chat survives");
}

#[test]
fn chat_lines_are_merged_into_one_shared_batch() {
    let mut g = gate();
    let mut node = PushNode::new(NodeConfig::default());
    let conns: Vec<ConnId> = (0..3).map(|n| student(&mut node, n)).collect();
    for i in 0..5u32 {
        let env = g.publish(t0(), Message::new(ROOM, Class::Chat, Kind(1), i.to_le_bytes().to_vec())).expect("ok");
        assert_eq!(node.handle_envelope(t0(), &env), Ok(0));
    }
    assert_eq!(node.poll_timeout(), Some(t0().saturating_add(Duration::from_millis(100))));
    let mut rec = Recorder::default();
    assert_eq!(node.flush(t0(), &mut rec), 0, "nothing before the window closes");
    node.handle_timeout(t0().saturating_add(Duration::from_millis(100)));
    let _ = node.flush(t0(), &mut rec);
    let bodies: Vec<&Bytes> = conns.iter().map(|c| &rec.frames[c][0].1).collect();
    assert_eq!(rec.frames[&conns[0]].len(), 1);
    assert_eq!(payloads(FrameKind::ChatBatch, bodies[0]).len(), 5);
    // Serialize once: every recipient got the very same bytes.
    assert!(bodies.iter().all(|b| b.as_ptr() == bodies[0].as_ptr()));
}

#[test]
fn reactions_merge_into_room_totals() {
    let mut g = gate();
    let mut node = PushNode::new(NodeConfig::default());
    let c = student(&mut node, 5);
    for n in 0..100u64 {
        let sender = room_push::Sender { uin: Uin(1000 + n), role: Role::Student };
        let env = g.publish(t0(), Message::reaction(ROOM, Kind(30), sender, 2)).expect("accepted");
        node.handle_envelope(t0(), &env).expect("handled");
    }
    node.handle_timeout(t0().saturating_add(Duration::from_secs(1)));
    let mut rec = Recorder::default();
    let _ = node.flush(t0(), &mut rec);
    let frames = &rec.frames[&c];
    assert_eq!(frames.len(), 1);
    assert_eq!(frames[0].0.kind, FrameKind::Reactions);
    let body = &frames[0].1;
    assert_eq!(u32::from_le_bytes(body[..4].try_into().expect("4")), 1);
    assert_eq!(u16::from_le_bytes(body[4..6].try_into().expect("2")), 30);
    assert_eq!(u64::from_le_bytes(body[6..14].try_into().expect("8")), 200);
}

#[test]
fn duplicates_are_ignored_and_gaps_answered_with_reset() {
    let mut g = gate();
    let mut node = PushNode::new(NodeConfig::default());
    let c = student(&mut node, 5);
    let e1 = signal(&mut g, 1);
    let _e2 = signal(&mut g, 2);
    let e3 = signal(&mut g, 3);
    assert_eq!(node.handle_envelope(t0(), &e1), Ok(1));
    assert_eq!(node.handle_envelope(t0(), &e1), Ok(0));
    assert_eq!(node.stats().duplicates, 1);
    // The bus lost e2.
    assert_eq!(node.handle_envelope(t0(), &e3), Ok(1));
    assert_eq!(node.stats().sequence_gaps, 1);
    assert_eq!(node.handle_check(t0(), c, e1.epoch, 1), Ok(CheckAnswer::Reset { epoch: e1.epoch, head: 3 }));
    // What follows the gap is recoverable.
    let CheckAnswer::Messages { frames, .. } = node.handle_check(t0(), c, e1.epoch, 2).expect("honest") else {
        panic!("held")
    };
    assert_eq!(frames.len(), 1);
}

#[test]
fn a_new_epoch_resyncs_every_connection() {
    let mut g = gate();
    let mut node = PushNode::new(NodeConfig::default());
    let connected = node.connect(ConnSpec::new(ROOM, Uin(5), Role::Student, Terminal::Web)).expect("connects");
    let mut recv = ReliableReceiver::new(&connected);
    let mut rec = Recorder::default();
    node.handle_envelope(t0(), &signal(&mut g, 1)).expect("handled");
    let _ = node.flush(t0(), &mut rec);
    assert_eq!(recv.on_frame(&rec.frames[&connected.conn][0].0), Received::Deliver);
    // The gate restarts: a new epoch.
    g.close_room(ROOM).expect("open");
    g.open_room(t0().saturating_add(Duration::from_secs(1)), ROOM).expect("opens");
    node.handle_envelope(t0(), &signal(&mut g, 2)).expect("handled");
    let mut rec = Recorder::default();
    let _ = node.flush(t0(), &mut rec);
    let frames = &rec.frames[&connected.conn];
    assert_eq!(frames[0].0.kind, FrameKind::Resync);
    let Received::Check { epoch, after } = recv.on_frame(&frames[0].0) else { panic!("check") };
    let answer = node.handle_check(t0(), connected.conn, epoch, after).expect("honest");
    assert!(matches!(answer, CheckAnswer::Reset { .. }));
    recv.on_answer(&answer);
    assert_eq!(recv.epoch(), g.sequence(ROOM).expect("open").0);
}

#[test]
fn narrow_targets_reach_only_their_recipients() {
    let mut g = gate();
    let mut node = PushNode::new(NodeConfig::default());
    let teacher = node.connect(ConnSpec::new(ROOM, Uin(1), Role::Teacher, Terminal::Pc)).expect("ok").conn;
    let app = node.connect(ConnSpec::new(ROOM, Uin(5), Role::Student, Terminal::Ios)).expect("ok").conn;
    let web = node.connect(ConnSpec::new(ROOM, Uin(5), Role::Student, Terminal::Web)).expect("ok").conn;
    let msg = Message::new(ROOM, Class::Signal, Kind(1), Bytes::new()).to(Target::user(Uin(5)));
    assert_eq!(node.handle_envelope(t0(), &g.publish(t0(), msg).expect("ok")), Ok(2));
    let msg = Message::new(ROOM, Class::Signal, Kind(1), Bytes::new())
        .to(Target::room().terminals(room_core::TerminalSet::apps()));
    assert_eq!(node.handle_envelope(t0(), &g.publish(t0(), msg).expect("ok")), Ok(1));
    let mut rec = Recorder::default();
    let _ = node.flush(t0(), &mut rec);
    assert!(!rec.frames.contains_key(&teacher));
    assert_eq!(rec.frames[&app].len(), 2);
    assert_eq!(rec.frames[&web].len(), 1);
}

#[test]
fn the_cache_is_bounded_by_count_and_age() {
    let mut g = gate();
    let mut config = NodeConfig::default();
    config.cache_len = 5;
    config.cache_age = Duration::from_secs(60);
    let mut node = PushNode::new(config);
    let c = student(&mut node, 5);
    let mut epoch = 0;
    for i in 0..8 {
        let env = signal(&mut g, i);
        epoch = env.epoch;
        node.handle_envelope(t0(), &env).expect("handled");
    }
    // Only the newest five are held: a check from 2 needs 3.. and gets a reset.
    assert_eq!(node.handle_check(t0(), c, epoch, 2), Ok(CheckAnswer::Reset { epoch, head: 8 }));
    let CheckAnswer::Messages { frames, .. } = node.handle_check(t0(), c, epoch, 3).expect("honest") else {
        panic!("held")
    };
    assert_eq!(frames.len(), 5);
    // A minute later they have aged out.
    let later = t0().saturating_add(Duration::from_secs(61));
    assert_eq!(node.handle_check(later, c, epoch, 3), Ok(CheckAnswer::Reset { epoch, head: 8 }));
    assert_eq!(node.handle_check(later, c, epoch, 8), Ok(CheckAnswer::Messages { epoch, upto: 8, frames: vec![] }));
}

#[test]
fn late_envelopes_from_an_older_epoch_are_ignored() {
    let mut g = gate();
    let mut node = PushNode::new(NodeConfig::default());
    let c = student(&mut node, 5);
    let old = signal(&mut g, 1);
    g.close_room(ROOM).expect("open");
    g.open_room(t0().saturating_add(Duration::from_secs(1)), ROOM).expect("opens");
    let new = signal(&mut g, 2);
    assert!(new.epoch > old.epoch);
    node.handle_envelope(t0(), &new).expect("handled");
    assert_eq!(node.handle_envelope(t0(), &old), Ok(0));
    assert_eq!(node.stats().stale_epoch, 1);
    assert_eq!(node.handle_ack(c, new.epoch, 1), Ok(AckReply::UpToDate));
}

#[test]
fn reaction_kinds_per_room_are_bounded() {
    let mut g = gate();
    let mut config = NodeConfig::default();
    config.max_reaction_kinds = 4;
    let mut node = PushNode::new(config);
    student(&mut node, 5);
    for kind in 0..10u16 {
        let sender = room_push::Sender { uin: Uin(100 + u64::from(kind)), role: Role::Student };
        let env = g.publish(t0(), Message::reaction(ROOM, Kind(kind), sender, 1)).expect("accepted");
        node.handle_envelope(t0(), &env).expect("handled");
    }
    assert_eq!(node.stats().reactions_dropped, 6);
}

#[test]
fn an_empty_room_is_let_go_once_its_cache_has_aged() {
    let mut g = gate();
    let mut node = PushNode::new(NodeConfig::default());
    let c = student(&mut node, 5);
    node.handle_envelope(t0(), &signal(&mut g, 1)).expect("handled");
    node.disconnect(t0(), c).expect("known");
    // A client reconnecting within the cache's age can still recover.
    node.handle_timeout(t0().saturating_add(Duration::from_secs(10)));
    assert_eq!(node.stats().rooms, 1);
    let back = node.connect(ConnSpec::new(ROOM, Uin(5), Role::Student, Terminal::Web)).expect("connects");
    assert_eq!(back.head, 1);
    node.disconnect(t0(), back.conn).expect("known");
    node.handle_timeout(t0().saturating_add(NodeConfig::default().cache_age));
    assert_eq!(node.stats().rooms, 0);
    assert_eq!(node.poll_timeout(), None);
}

#[test]
fn a_reliable_message_to_the_room_takes_the_open_chat_window_with_it() {
    for rides in [true, false] {
        let mut g = gate();
        let mut config = NodeConfig::default();
        config.chat_rides_reliable = rides;
        let mut node = PushNode::new(config);
        let conns: Vec<ConnId> = (0..3).map(|n| student(&mut node, n)).collect();
        for i in 0..3u32 {
            let env = g.publish(t0(), Message::new(ROOM, Class::Chat, Kind(1), i.to_le_bytes().to_vec())).expect("ok");
            assert_eq!(node.handle_envelope(t0(), &env), Ok(0));
        }
        let words = g.publish(t0(), Message::new(ROOM, Class::Teacher, Kind(2), b"page 3".to_vec())).expect("ok");
        assert_eq!(node.handle_envelope(t0(), &words), Ok(3));
        let mut rec = Recorder::default();
        let _ = node.flush(t0(), &mut rec);
        for c in &conns {
            let kinds: Vec<(Class, FrameKind)> = rec.frames[c].iter().map(|(h, _)| (h.class, h.kind)).collect();
            if rides {
                // Both now, in one flush: the lines and the teacher's words.
                assert!(kinds.contains(&(Class::Chat, FrameKind::ChatBatch)), "{kinds:?}");
                assert!(kinds.contains(&(Class::Teacher, FrameKind::Message)), "{kinds:?}");
                let batch = rec.frames[c].iter().find(|(h, _)| h.kind == FrameKind::ChatBatch).expect("a batch");
                assert_eq!(payloads(FrameKind::ChatBatch, &batch.1).len(), 3);
            } else {
                assert_eq!(kinds, [(Class::Teacher, FrameKind::Message)]);
            }
        }
        // The window is closed when the lines rode along, open otherwise.
        let chat_due = t0().saturating_add(Duration::from_millis(100));
        assert_eq!(node.poll_timeout() == Some(chat_due), !rides);
    }
    // A message to a sub-class or to some roles leaves the window alone.
    let mut g = gate();
    let mut node = PushNode::new(NodeConfig::default());
    let _ = student(&mut node, 1);
    let env = g.publish(t0(), Message::new(ROOM, Class::Chat, Kind(1), vec![1])).expect("ok");
    let _ = node.handle_envelope(t0(), &env);
    let staff = Target::room().roles(room_core::RoleSet::staff());
    let words = g.publish(t0(), Message::new(ROOM, Class::Teacher, Kind(2), b"x".to_vec()).to(staff)).expect("ok");
    let _ = node.handle_envelope(t0(), &words);
    assert_eq!(node.poll_timeout(), Some(t0().saturating_add(Duration::from_millis(100))));
}
