//! Classroom interactions against reference models.

use std::collections::BTreeMap;
use std::time::Duration;

use proptest::prelude::*;
use room_core::{CustomRole, Role, Timestamp, Uin};
use room_service::classroom::{
    Action, ActionError, Actor, CardSpec, Classroom, ClassroomConfig, Reaction, split_packet,
};

fn role(n: u8) -> Role {
    [Role::Teacher, Role::Assistant, Role::Student, Role::Observer, Role::Custom(CustomRole::new(3).expect("ok"))]
        [usize::from(n % 5)]
}

fn teacher() -> Actor {
    Actor { uin: Uin(1), role: Role::Teacher }
}

fn student(n: u64) -> Actor {
    Actor { uin: Uin(1_000 + n), role: Role::Student }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn packet_splits_conserve_the_total(total in 1u64..10_000_000, count in 1u32..2_000, seed in any::<u64>()) {
        prop_assume!(total >= u64::from(count));
        let shares = split_packet(total, count, seed);
        prop_assert_eq!(shares.len(), count as usize);
        prop_assert!(shares.iter().all(|&s| s >= 1));
        prop_assert_eq!(shares.iter().sum::<u64>(), total);
    }

    /// Any interleaving of grabs (repeats, unknown packets, several
    /// packets): each user at most once per packet, never more grabs than
    /// shares, and a fully grabbed packet gave out exactly its total.
    #[test]
    fn grabs_are_at_most_once_and_conserve(
        packets in proptest::collection::vec((1u64..5_000, 1u32..40), 1..4),
        grabs in proptest::collection::vec((0u64..60, 0u64..5), 0..400),
        seed in any::<u64>(),
    ) {
        let mut room = Classroom::new(ClassroomConfig::default(), seed);
        let mut ids = Vec::new();
        for (amount, count) in &packets {
            let amount = (*amount).max(u64::from(*count));
            ids.push((room.send_packet(teacher(), amount, *count).expect("valid"), amount, *count));
        }
        let mut got: BTreeMap<(u64, u64), u64> = BTreeMap::new();
        for (who, which) in grabs {
            let id = ids.get(which as usize).map_or(99, |p| p.0);
            match room.grab_packet(student(who), id) {
                Ok(amount) => {
                    prop_assert!(got.insert((id, who), amount).is_none(), "user {} grabbed {} twice", who, id);
                }
                Err(ActionError::AlreadyGrabbed(i)) => prop_assert!(got.contains_key(&(i, who))),
                Err(ActionError::PacketEmpty(_) | ActionError::NoPacket(_)) => {}
                Err(e) => prop_assert!(false, "unexpected {e}"),
            }
        }
        for (id, amount, count) in ids {
            let taken: Vec<u64> = got.iter().filter(|((p, _), _)| *p == id).map(|(_, a)| *a).collect();
            prop_assert!(taken.len() <= count as usize);
            let state = room.packet(id).expect("exists");
            prop_assert_eq!(state.taken, taken.iter().sum::<u64>());
            if taken.len() == count as usize {
                prop_assert_eq!(state.taken, amount, "a fully grabbed packet gives out its total");
            }
        }
    }

    /// Each student is counted once, with their first valid answer.
    #[test]
    fn cards_count_each_student_once(
        options in 2u8..8,
        answers in proptest::collection::vec((0u64..30, 0u8..10), 0..200),
    ) {
        let now = Timestamp::from_millis(1_000);
        let mut room = Classroom::new(ClassroomConfig::default(), 1);
        room.open_card(teacher(), now, CardSpec { options, correct: Some(0), deadline: None }).expect("opens");
        let mut first: BTreeMap<u64, u8> = BTreeMap::new();
        for (who, option) in answers {
            let r = room.answer_card(student(who), now, option);
            if option >= options {
                prop_assert_eq!(r, Err(ActionError::BadOption { option, options }));
                continue;
            }
            match first.entry(who) {
                std::collections::btree_map::Entry::Occupied(_) => {
                    prop_assert_eq!(r, Err(ActionError::AlreadyAnswered));
                }
                std::collections::btree_map::Entry::Vacant(slot) => {
                    prop_assert_eq!(r, Ok(()));
                    slot.insert(option);
                }
            }
        }
        let result = room.close_card(teacher()).expect("open");
        prop_assert_eq!(result.answered as usize, first.len());
        for o in 0..options {
            prop_assert_eq!(result.tally[usize::from(o)] as usize, first.values().filter(|v| **v == o).count());
        }
        prop_assert_eq!(result.right as usize, first.values().filter(|v| **v == 0).count());
    }

    /// Who may do what, against the permission table.
    #[test]
    fn roles_may_do_only_what_the_table_says(roles in proptest::collection::vec(0u8..5, 1..30)) {
        let now = Timestamp::from_millis(1_000);
        for (i, r) in roles.into_iter().enumerate() {
            let mut room = Classroom::new(ClassroomConfig::default(), 7);
            let actor = Actor { uin: Uin(50 + i as u64), role: role(r) };
            let staff = actor.role.is_staff();
            let learner = matches!(actor.role, Role::Student | Role::Custom(_));
            let allowed = |res: &Result<_, ActionError>| !matches!(res, Err(ActionError::NotAllowed { .. }));
            prop_assert_eq!(allowed(&room.raise_hand(actor).map(|_| 0)), learner);
            prop_assert_eq!(allowed(&room.lower_hand(actor).map(|_| 0)), learner);
            room.raise_hand(student(1)).expect("a student raises");
            prop_assert_eq!(allowed(&room.invite_hand(actor, student(1).uin).map(|_| 0)), staff);
            prop_assert_eq!(allowed(&room.react(actor, Reaction::Flower, 1)), actor.role != Role::Observer);
            let spec = CardSpec { options: 4, correct: None, deadline: None };
            let opened = room.open_card(actor, now, spec);
            prop_assert_eq!(allowed(&opened), staff);
            if !staff {
                room.open_card(teacher(), now, spec).expect("the teacher opens");
            }
            prop_assert_eq!(allowed(&room.answer_card(actor, now, 1).map(|_| 0)), learner);
            prop_assert_eq!(allowed(&room.close_card(actor).map(|_| 0)), staff);
            prop_assert_eq!(allowed(&room.send_packet(actor, 100, 10)), actor.role == Role::Teacher);
            let id = room.send_packet(teacher(), 100, 10).expect("the teacher sends");
            prop_assert_eq!(allowed(&room.grab_packet(actor, id)), learner);
        }
    }
}

#[test]
fn hands_queue_in_order_and_only_once() {
    let mut room = Classroom::new(ClassroomConfig::default(), 1);
    for n in 0..3 {
        room.raise_hand(student(n)).expect("raises");
    }
    assert_eq!(room.raise_hand(student(1)), Err(ActionError::AlreadyRaised));
    assert_eq!(room.hands().collect::<Vec<_>>(), vec![Uin(1_000), Uin(1_001), Uin(1_002)]);
    room.invite_hand(teacher(), Uin(1_001)).expect("raised");
    assert_eq!(room.invite_hand(teacher(), Uin(1_001)), Err(ActionError::NotRaised(Uin(1_001))));
    room.lower_hand(student(0)).expect("raised");
    room.left(Uin(1_002));
    assert_eq!(room.hands().count(), 0);
    assert_eq!(
        room.invite_hand(student(5), Uin(1)),
        Err(ActionError::NotAllowed { role: Role::Student, action: Action::InviteHand })
    );
}

#[test]
fn card_deadlines_and_bad_cards() {
    let now = Timestamp::from_millis(1_000);
    let mut room = Classroom::new(ClassroomConfig::default(), 1);
    let bad = |options, correct| CardSpec { options, correct, deadline: None };
    assert!(matches!(room.open_card(teacher(), now, bad(1, None)), Err(ActionError::BadCard(_))));
    assert!(matches!(room.open_card(teacher(), now, bad(4, Some(4))), Err(ActionError::BadCard(_))));
    let past = CardSpec { options: 4, correct: None, deadline: Some(now) };
    assert!(matches!(room.open_card(teacher(), now, past), Err(ActionError::BadCard(_))));
    let deadline = now.saturating_add(Duration::from_secs(30));
    let id = room.open_card(teacher(), now, CardSpec { options: 4, correct: None, deadline: Some(deadline) });
    let id = id.expect("opens");
    assert_eq!(room.open_card(teacher(), now, bad(4, None)), Err(ActionError::CardAlreadyOpen(id)));
    assert_eq!(room.answer_card(student(1), deadline, 2), Err(ActionError::DeadlinePassed));
    assert_eq!(room.card_deadline(), Some(deadline));
    let result = room.close_card_now().expect("open");
    assert_eq!(result.answered, 0);
    assert_eq!(room.answer_card(student(1), now, 2), Err(ActionError::NoOpenCard));
    assert_eq!(room.card_results().count(), 1);
}

#[test]
fn bad_packets_and_reactions_are_refused() {
    let mut room = Classroom::new(ClassroomConfig::default(), 1);
    assert!(matches!(room.send_packet(teacher(), 5, 10), Err(ActionError::BadPacket(_))));
    assert!(matches!(room.send_packet(teacher(), 5, 0), Err(ActionError::BadPacket(_))));
    assert!(matches!(room.send_packet(teacher(), u64::MAX, 10), Err(ActionError::BadPacket(_))));
    for _ in 0..16 {
        room.send_packet(teacher(), 10, 1).expect("valid");
    }
    assert_eq!(room.send_packet(teacher(), 10, 1), Err(ActionError::TooManyPackets { max: 16 }));
    room.grab_packet(student(1), 1).expect("one share");
    assert!(room.send_packet(teacher(), 10, 1).is_ok(), "an empty packet makes room");
    assert_eq!(room.react(student(1), Reaction::Like, 0), Err(ActionError::BadReactionCount { count: 0, max: 99 }));
    assert_eq!(room.react(student(1), Reaction::Like, 3), Ok(3));
    assert_eq!(room.react(student(2), Reaction::Like, 2), Ok(5));
    assert_eq!(room.reactions_of(Uin(1_001), Reaction::Like), 3);
}
