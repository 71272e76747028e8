//! Notifications: scoping, order, batching and bounded queues.

use proptest::prelude::*;
use room_core::{BusinessId, ExitReason, MemberChange, MemberEvent, MemberKey, RoomId, Timestamp, Uin};
use room_heartbeat::{Notifier, NotifyError, Scope};

fn event(bid: u32, uin: u64, enter: bool, at: u64) -> MemberEvent {
    MemberEvent {
        member: MemberKey::new(BusinessId(bid), RoomId(1), Uin(uin)),
        change: if enter { MemberChange::Entered } else { MemberChange::Exited(ExitReason::Left) },
        at: Timestamp::from_millis(at),
    }
}

proptest! {
    /// Each subscriber sees exactly the matching events, in publication
    /// order, across any batching; a full queue keeps the oldest events and
    /// counts the rest as missed.
    #[test]
    fn subscribers_see_their_events_in_order(
        events in prop::collection::vec((1u32..4, 0u64..5, any::<bool>()), 0..200),
        capacity in 1usize..300,
        batch in 1usize..50,
    ) {
        let mut notifier = Notifier::new();
        let all = notifier.subscribe(Scope::AllBusinesses, capacity).unwrap();
        let two = notifier.subscribe(Scope::Business(BusinessId(2)), capacity).unwrap();
        let published: Vec<MemberEvent> =
            events.iter().enumerate().map(|(i, &(bid, uin, enter))| event(bid, uin, enter, i as u64)).collect();
        for e in &published {
            notifier.publish(*e);
        }
        for (id, scope) in [(all, Scope::AllBusinesses), (two, Scope::Business(BusinessId(2)))] {
            let matching: Vec<MemberEvent> = published
                .iter()
                .filter(|e| scope == Scope::AllBusinesses || e.member.bid == BusinessId(2))
                .copied()
                .collect();
            let mut got = Vec::new();
            let mut missed = 0;
            loop {
                let d = notifier.drain(id, &mut got, batch).unwrap();
                missed += d.missed;
                if d.events == 0 {
                    break;
                }
                prop_assert!(d.events <= batch);
            }
            let kept = matching.len().min(capacity);
            prop_assert_eq!(&got[..], &matching[..kept]);
            prop_assert_eq!(missed as usize, matching.len() - kept);
        }
    }
}

#[test]
fn unknown_subscribers_and_zero_capacity_are_refused() {
    let mut notifier = Notifier::new();
    assert_eq!(notifier.subscribe(Scope::AllBusinesses, 0), Err(NotifyError::ZeroCapacity));
    let id = notifier.subscribe(Scope::AllBusinesses, 4).unwrap();
    notifier.publish(event(1, 1, true, 0));
    assert_eq!(notifier.pending(id), Ok(1));
    notifier.unsubscribe(id).unwrap();
    assert_eq!(notifier.unsubscribe(id), Err(NotifyError::UnknownSubscriber(id)));
    assert_eq!(notifier.drain(id, &mut Vec::new(), 10), Err(NotifyError::UnknownSubscriber(id)));
}
