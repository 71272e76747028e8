//! A room's next owner: continuing a sequence, renumbering, and restoring
//! the membership side from the previous owner's snapshot.

mod support;

use std::collections::BTreeMap;

use bytes::Bytes;
use proptest::prelude::*;
use room_core::{Role, Timestamp, Uin};
use room_push::{Class, Gate, GateConfig, GateError, Kind, Message, SubclassError, SubclassId};
use support::*;

fn t0() -> Timestamp {
    Timestamp::from_millis(1_000_000)
}

fn gate(subclass_size: u32) -> Gate {
    let mut config = GateConfig::default();
    config.subclass_size = subclass_size;
    let mut g = Gate::new(config);
    g.open_room(t0(), ROOM).expect("opens");
    g
}

fn signal() -> Message {
    Message::new(ROOM, Class::Signal, Kind(1), Bytes::new())
}

/// (uin, new sub-class) of each sub-class signal.
fn moves(signals: &[room_push::Envelope]) -> Vec<(u64, Option<u16>)> {
    signals
        .iter()
        .map(|e| {
            assert_eq!(e.message.kind, Kind::SUBCLASS);
            let p = &e.message.payload;
            let uin = u64::from_le_bytes(p[..8].try_into().expect("8 bytes"));
            let to = u16::from_le_bytes(p[8..10].try_into().expect("2 bytes"));
            (uin, (to != u16::MAX).then_some(to))
        })
        .collect()
}

#[test]
fn continue_at_and_renumber() {
    let mut g = gate(500);
    let mut env = g.publish(t0(), signal()).expect("numbered");
    assert_eq!(env.seq, 1);
    g.continue_at(ROOM, 77, 40).expect("open");
    assert_eq!(g.sequence(ROOM), Ok((77, 40)));
    g.renumber(&mut env).expect("reliable");
    assert_eq!((env.epoch, env.seq), (77, 41));
    assert_eq!(g.publish(t0(), signal()).map(|e| (e.epoch, e.seq)), Ok((77, 42)));

    // Refusals leave everything as it was.
    let other = room_core::RoomKey::new(room_core::BusinessId(9), room_core::RoomId(9));
    assert_eq!(g.continue_at(other, 1, 1), Err(GateError::UnknownRoom(other)));
    assert_eq!(g.continue_at(ROOM, 1, u64::MAX), Err(GateError::BadHead { head: u64::MAX }));
    let mut chat = g.publish(t0(), Message::new(ROOM, Class::Chat, Kind(3), Bytes::new())).expect("chat passes");
    let before = chat.clone();
    assert_eq!(g.renumber(&mut chat), Err(GateError::NotSequenced(Class::Chat)));
    assert_eq!(chat, before);
    let mut stranger = env.clone();
    stranger.message.room = other;
    assert_eq!(g.renumber(&mut stranger), Err(GateError::UnknownRoom(other)));
    assert_eq!(g.sequence(ROOM), Ok((77, 42)));
    assert_eq!(g.resume_room(t0(), other, 0, 5, u64::MAX), Err(GateError::BadHead { head: u64::MAX }));
    assert_eq!(g.sequence(other), Err(GateError::UnknownRoom(other)), "nothing opened");
}

#[test]
fn restoring_a_snapshot_places_members_where_they_were_and_sets_mutes_quietly() {
    let mut first = gate(2);
    for n in 0..5 {
        first.join(t0(), ROOM, Uin(100 + n), Role::Student).expect("joins");
    }
    first.join(t0(), ROOM, Uin(1), Role::Teacher).expect("joins");
    first.set_mute_all(t0(), ROOM, true).expect("open");
    first.mute_user(ROOM, Uin(102), true).expect("open");
    let members = first.members_of(ROOM).expect("open");
    assert_eq!(members.len(), 6);
    assert_eq!(members[0], (Uin(1), Role::Teacher, None));
    assert_eq!(first.muted_users(ROOM), Ok(vec![Uin(102)]));

    let mut next = gate(2);
    let head = next.sequence(ROOM).expect("open");
    let signals = next.restore_members(t0(), ROOM, &members, true, &[Uin(102)]).expect("restores");
    assert!(signals.is_empty(), "everyone is where they were: {signals:?}");
    assert_eq!(next.sequence(ROOM), Ok(head), "nothing numbered");
    assert_eq!(next.members_of(ROOM), Ok(members.clone()));
    assert_eq!(next.is_muted(ROOM), Ok(true));
    assert_eq!(next.muted_users(ROOM), Ok(vec![Uin(102)]));
    assert_eq!(next.subclass_of(ROOM, Uin(100)), first.subclass_of(ROOM, Uin(100)));
    assert_eq!(next.subclass_of(ROOM, Uin(1)), None, "staff are in no sub-class");
}

#[test]
fn members_whose_subclass_changes_are_told() {
    let mut g = gate(2);
    // Someone who joined here before the snapshot arrived.
    let here = g.join(t0(), ROOM, Uin(300), Role::Student).expect("joins").subclass;
    assert_eq!(here, Some(SubclassId(0)));
    let saved = [
        // Three saved in sub-class 0 of size 2: one of them moves.
        (Uin(100), Role::Student, Some(SubclassId(0))),
        (Uin(101), Role::Student, Some(SubclassId(0))),
        (Uin(102), Role::Student, Some(SubclassId(0))),
        // Without a saved sub-class: joins, and is told where.
        (Uin(103), Role::Student, None),
        // Promoted since: leaves the plan.
        (Uin(104), Role::Assistant, Some(SubclassId(1))),
    ];
    let signals = g.restore_members(t0(), ROOM, &saved, false, &[]).expect("restores");
    let members = g.members_of(ROOM).expect("open");
    let placed: BTreeMap<u64, Option<u16>> = members.iter().map(|(u, _, s)| (u.0, s.map(|s| s.0))).collect();
    let had: BTreeMap<u64, Option<u16>> =
        [(100, Some(0)), (101, Some(0)), (102, Some(0)), (103, None), (104, Some(1)), (300, Some(0))].into();
    let expected: Vec<(u64, Option<u16>)> =
        placed.iter().filter(|(u, s)| had[u] != **s).map(|(u, s)| (*u, *s)).collect();
    assert!(expected.iter().any(|m| m.0 == 103) && expected.iter().any(|m| m.0 == 104));
    assert_eq!(moves(&signals), expected);
    let sizes = g.subclass_sizes(ROOM).expect("open");
    assert!(sizes.iter().max().copied().unwrap_or(0) <= 2, "{sizes:?}");
    // Signals are numbered in the room's sequence.
    let seqs: Vec<u64> = signals.iter().map(|e| e.seq).collect();
    assert_eq!(seqs, (1..=signals.len() as u64).collect::<Vec<_>>());
}

#[test]
fn a_bad_snapshot_changes_nothing() {
    let mut g = gate(2);
    g.join(t0(), ROOM, Uin(5), Role::Student).expect("joins");
    let before = g.members_of(ROOM).expect("open");
    let bad = [(Uin(6), Role::Student, Some(SubclassId(3))), (Uin(7), Role::Student, Some(SubclassId(u16::MAX)))];
    assert_eq!(
        g.restore_members(t0(), ROOM, &bad, true, &[Uin(6)]),
        Err(GateError::Subclass(SubclassError::TooMany { max: room_push::subclass::MAX_SUBCLASSES }))
    );
    assert_eq!(g.members_of(ROOM), Ok(before));
    assert_eq!(g.is_muted(ROOM), Ok(false));
    let other = room_core::RoomKey::new(room_core::BusinessId(9), room_core::RoomId(9));
    assert_eq!(g.restore_members(t0(), other, &[], false, &[]), Err(GateError::UnknownRoom(other)));
    assert_eq!(g.members_of(other), Err(GateError::UnknownRoom(other)));
    assert_eq!(g.muted_users(other), Err(GateError::UnknownRoom(other)));
    assert_eq!(g.subclass_of(other, Uin(5)), None);
}

#[derive(Debug, Clone)]
enum Op {
    Join(u64, u8),
    Leave(u64),
    Mute(u64, bool),
}

fn ops() -> impl Strategy<Value = Vec<Op>> {
    proptest::collection::vec(
        prop_oneof![
            6 => (0u64..120, any::<u8>()).prop_map(|(u, r)| Op::Join(u, r)),
            2 => (0u64..120).prop_map(Op::Leave),
            1 => (0u64..120, any::<bool>()).prop_map(|(u, on)| Op::Mute(u, on)),
        ],
        0..300,
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    /// A room's next owner restoring its predecessor's snapshot has the
    /// same members, roles, sub-classes and mutes, balanced, and tells
    /// nobody they moved.
    #[test]
    fn a_snapshot_restored_into_a_fresh_gate_is_the_same_room(size in 1u32..12, ops in ops(), mute_all: bool) {
        let mut first = gate(size);
        for op in &ops {
            match *op {
                Op::Join(u, r) => {
                    first.join(t0(), ROOM, Uin(u), role_of(r)).expect("fits");
                }
                Op::Leave(u) => {
                    first.leave(t0(), ROOM, Uin(u)).expect("open");
                }
                Op::Mute(u, on) => first.mute_user(ROOM, Uin(u), on).expect("open"),
            }
        }
        let members = first.members_of(ROOM).expect("open");
        let muted = first.muted_users(ROOM).expect("open");
        let mut next = gate(size);
        let signals = next.restore_members(t0(), ROOM, &members, mute_all, &muted).expect("restores");
        prop_assert!(signals.is_empty(), "moved: {:?}", moves(&signals));
        prop_assert_eq!(next.members_of(ROOM).expect("open"), members);
        prop_assert_eq!(next.muted_users(ROOM).expect("open"), muted);
        prop_assert_eq!(next.is_muted(ROOM).expect("open"), mute_all);
        let sizes = next.subclass_sizes(ROOM).expect("open");
        let (min, max) = (sizes.iter().min().copied().unwrap_or(0), sizes.iter().max().copied().unwrap_or(0));
        prop_assert!(max - min <= 1 && max <= size, "unbalanced: {:?}", sizes);
    }
}
