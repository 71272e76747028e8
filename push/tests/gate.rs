//! The gate's answers to bad input, permissions, mutes, floods and levels.

mod support;

use std::time::Duration;

use bytes::Bytes;
use room_core::{BusinessId, Role, RoleSet, RoomId, RoomKey, Timestamp, Uin};
use room_push::{
    Class, ConnSpec, Gate, GateConfig, GateError, Kind, Level, LimitScope, Message, NodeConfig, NodeEvent, PushNode,
    Sender, Target, TargetError,
};
use support::*;

fn t0() -> Timestamp {
    Timestamp::from_millis(1_000_000)
}

fn gate() -> Gate {
    let mut g = Gate::new(GateConfig::default());
    g.open_room(t0(), ROOM).expect("opens");
    g
}

fn student(n: u64) -> Sender {
    Sender { uin: Uin(n), role: Role::Student }
}

fn teacher() -> Sender {
    Sender { uin: Uin(1), role: Role::Teacher }
}

fn chat(from: Sender) -> Message {
    Message::new(ROOM, Class::Chat, Kind(10), &b"hello"[..]).from_sender(from)
}

#[test]
fn bad_messages_get_typed_errors_and_use_no_sequence_number() {
    let mut g = gate();
    let before = g.sequence(ROOM).expect("open");
    let other = RoomKey::new(BusinessId(1), RoomId(2));
    let cases: Vec<(Message, GateError)> = vec![
        (Message::new(other, Class::Signal, Kind(1), Bytes::new()), GateError::UnknownRoom(other)),
        (
            Message::new(ROOM, Class::Signal, Kind(1), Bytes::new()).to(Target::users([])),
            GateError::Target(TargetError::NoUsers),
        ),
        (
            Message::new(ROOM, Class::Signal, Kind(1), Bytes::new()).to(Target::room().roles(RoleSet::EMPTY)),
            GateError::Target(TargetError::NoRoles),
        ),
        (
            Message::new(ROOM, Class::Signal, Kind(1), Bytes::new()).to(Target::user(Uin(3)).exclude(Uin(3))),
            GateError::Target(TargetError::OnlyUserExcluded),
        ),
        (
            Message::new(ROOM, Class::Teacher, Kind(1), vec![0u8; 16 * 1024 + 1]),
            GateError::PayloadTooLarge { size: 16 * 1024 + 1, max: 16 * 1024 },
        ),
        (Message::new(ROOM, Class::Signal, Kind::MUTE_ALL, Bytes::new()), GateError::ReservedKind(0xFF00)),
        (
            Message::new(ROOM, Class::Signal, Kind(1), Bytes::new()).from_sender(student(5)),
            GateError::NotAllowed { role: Role::Student, class: Class::Signal },
        ),
        (
            Message::new(ROOM, Class::Teacher, Kind(1), Bytes::new()).from_sender(student(5)),
            GateError::NotAllowed { role: Role::Student, class: Class::Teacher },
        ),
        (Message::reaction(ROOM, Kind(20), student(5), 0), GateError::BadCount { count: 0, max: 1_000 }),
        (Message::reaction(ROOM, Kind(20), student(5), 1_001), GateError::BadCount { count: 1_001, max: 1_000 }),
        (Message::reaction(ROOM, Kind(20), student(5), 1).to(Target::user(Uin(1))), GateError::ReactionTarget),
    ];
    for (msg, want) in cases {
        assert_eq!(g.publish(t0(), msg), Err(want.clone()), "{want}");
    }
    assert_eq!(g.sequence(ROOM).expect("open"), before);
    // A good one takes the next number.
    let env = g.publish(t0(), Message::new(ROOM, Class::Signal, Kind(1), Bytes::new())).expect("accepted");
    assert_eq!(env.seq, before.1 + 1);
}

#[test]
fn mute_all_silences_learners_not_staff_and_is_a_signal() {
    let mut g = gate();
    let signal = g.set_mute_all(t0(), ROOM, true).expect("open");
    assert_eq!((signal.message.class, signal.message.kind, signal.seq), (Class::Signal, Kind::MUTE_ALL, 1));
    assert_eq!(signal.message.payload.as_ref(), &[1]);
    assert_eq!(g.publish(t0(), chat(student(5))), Err(GateError::RoomMuted));
    assert!(g.publish(t0(), chat(teacher())).is_ok());
    assert!(g.publish(t0(), chat(Sender { uin: Uin(2), role: Role::Assistant })).is_ok());
    let off = g.set_mute_all(t0(), ROOM, false).expect("open");
    assert_eq!((off.seq, off.message.payload.as_ref()), (2, &[0u8][..]));
    assert!(g.publish(t0(), chat(student(5))).is_ok());
}

#[test]
fn a_muted_user_is_refused_and_others_are_not() {
    let mut g = gate();
    g.mute_user(ROOM, Uin(5), true).expect("open");
    assert_eq!(g.publish(t0(), chat(student(5))), Err(GateError::UserMuted(Uin(5))));
    assert!(g.publish(t0(), chat(student(6))).is_ok());
    g.mute_user(ROOM, Uin(5), false).expect("open");
    assert!(g.publish(t0(), chat(student(5))).is_ok());
}

#[test]
fn a_flooding_user_is_limited_and_others_pass() {
    let mut g = gate();
    let mut limited = 0;
    for i in 0..100 {
        match g.publish(t0().saturating_add(Duration::from_millis(i)), chat(student(5))) {
            Ok(_) => {}
            Err(GateError::RateLimited { scope: LimitScope::User, retry_after }) => {
                assert!(retry_after > Duration::ZERO);
                limited += 1;
            }
            Err(e) => panic!("unexpected {e}"),
        }
    }
    // Burst 10 at 5/s over 0.1 s: 10 pass, 90 are limited.
    assert_eq!(limited, 90);
    assert_eq!(g.rate_rejections(), 90);
    assert!(g.publish(t0(), chat(student(6))).is_ok());
}

#[test]
fn room_chat_limit_holds_across_senders() {
    let mut config = GateConfig::default();
    config.room_chat_quota = room_push::Quota::per_second(10).and_then(|q| q.with_burst(10)).expect("valid");
    let mut g = Gate::new(config);
    g.open_room(t0(), ROOM).expect("opens");
    let ok = (0..100).filter(|n| g.publish(t0(), chat(student(100 + n))).is_ok()).count();
    assert_eq!(ok, 10);
}

#[test]
fn levels_refuse_by_class_and_announce_themselves() {
    let mut config = GateConfig::default();
    config.large_room = 3;
    let mut g = Gate::new(config);
    g.open_room(t0(), ROOM).expect("opens");
    let second = RoomKey::new(BusinessId(7), RoomId(2));
    g.open_room(t0(), second).expect("opens");
    for n in 0..5 {
        g.join(t0(), ROOM, Uin(100 + n), Role::Student).expect("joins");
    }
    let signals = g.set_level(t0(), Level::DropLargeRoomChat);
    assert_eq!(signals.len(), 2);
    assert!(signals.iter().all(|s| s.message.kind == Kind::LEVEL && s.message.payload.as_ref() == [2]));
    assert_eq!(g.publish(t0(), chat(student(100))), Err(GateError::Degraded { level: Level::DropLargeRoomChat }));
    assert!(g.publish(t0(), chat(teacher())).is_ok());
    let small_room_chat = Message { room: second, ..chat(student(7)) };
    assert!(g.publish(t0(), small_room_chat).is_ok());

    assert_eq!(g.set_level(t0(), Level::SignalOnly).len(), 2);
    assert_eq!(g.set_level(t0(), Level::SignalOnly).len(), 0, "no switch, no signal");
    let teacher_msg = Message::new(ROOM, Class::Teacher, Kind(2), Bytes::new()).from_sender(teacher());
    assert_eq!(g.publish(t0(), teacher_msg), Err(GateError::Degraded { level: Level::SignalOnly }));
    assert!(g.publish(t0(), Message::new(ROOM, Class::Signal, Kind(2), Bytes::new())).is_ok());

    // A push node applies the level when the signal reaches it.
    let mut node = PushNode::new(NodeConfig::default());
    node.connect(ConnSpec::new(ROOM, Uin(100), Role::Student, room_core::Terminal::Web)).expect("connects");
    let back = g.set_level(t0(), Level::MergeHarder);
    for s in back.iter().filter(|s| s.message.room == ROOM) {
        node.handle_envelope(t0(), s).expect("handled");
    }
    assert_eq!(node.level(), Level::MergeHarder);
    assert_eq!(node.poll_event(), Some(NodeEvent::LevelChanged(Level::MergeHarder)));
}

#[test]
fn learners_chat_stays_in_their_subclass() {
    let mut config = GateConfig::default();
    config.subclass_size = 2;
    let mut g = Gate::new(config);
    g.open_room(t0(), ROOM).expect("opens");
    let mut placed = Vec::new();
    for n in 0..4 {
        placed.push(g.join(t0(), ROOM, Uin(100 + n), Role::Student).expect("joins").subclass.expect("a learner"));
    }
    assert_eq!(g.join(t0(), ROOM, Uin(1), Role::Teacher).expect("joins").subclass, None);
    assert_eq!(g.subclass_sizes(ROOM).expect("open"), vec![2, 2]);
    let env = g.publish(t0(), chat(student(103))).expect("accepted");
    assert_eq!(env.message.target.subclass, Some(placed[3]));
    let env = g.publish(t0(), chat(teacher())).expect("accepted");
    assert_eq!(env.message.target.subclass, None, "staff chat reaches the room");
    // A leave that unbalances moves someone, announced as a signal to them.
    let moves = g.leave(t0(), ROOM, Uin(100)).expect("open");
    let moves2 = g.leave(t0(), ROOM, Uin(101)).expect("open");
    let all: Vec<_> = moves.iter().chain(&moves2).collect();
    assert_eq!(all.len(), 1);
    assert_eq!(all[0].message.kind, Kind::SUBCLASS);
    assert_eq!(g.subclass_sizes(ROOM).expect("open"), vec![1, 1]);
}

#[test]
fn closing_and_reopening_starts_a_new_epoch() {
    let mut g = gate();
    let (e1, _) = g.sequence(ROOM).expect("open");
    g.close_room(ROOM).expect("open");
    assert_eq!(g.close_room(ROOM), Err(GateError::UnknownRoom(ROOM)));
    let e2 = g.open_room(t0(), ROOM).expect("opens");
    assert_ne!(e1, e2);
}

#[test]
fn a_room_opened_for_its_size_fills_without_moves() {
    let mut g = Gate::new(GateConfig::default());
    g.open_room_for(t0(), ROOM, 60_000).expect("opens");
    for n in 0..60_000 {
        assert!(g.join(t0(), ROOM, Uin(1_000 + n), Role::Student).expect("joins").moves.is_empty());
    }
    let sizes = g.subclass_sizes(ROOM).expect("open");
    assert_eq!(sizes.len(), 120);
    assert!(sizes.iter().all(|&n| n == 500));
}
