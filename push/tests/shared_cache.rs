//! The shared-cache helpers and the in-memory cache against simple models.

use proptest::prelude::*;
use room_core::{BusinessId, RoomId, RoomKey, Timestamp};
use room_push::shared_cache::{contiguous_run, missing_before};
use room_push::{Appended, Class, Envelope, InMemorySharedCache, Kind, Message, SharedCache, SharedCacheError};

const ROOM: RoomKey = RoomKey::new(BusinessId(1), RoomId(2));

fn envelope(epoch: u64, seq: u64) -> Envelope {
    Envelope {
        epoch,
        seq,
        accepted_at: Timestamp::from_millis(seq),
        message: Message::new(ROOM, Class::Signal, Kind(1), vec![seq as u8]),
    }
}

proptest! {
    /// The run is the longest stretch of consecutive numbers that starts at
    /// the smallest number above `after`.
    #[test]
    fn contiguous_run_matches_a_model(seqs in proptest::collection::vec(1u64..40, 0..40), after in 0u64..20) {
        let found = contiguous_run(seqs.iter().map(|&s| envelope(1, s)).collect(), after);
        let got: Vec<u64> = found.iter().map(|e| e.seq).collect();
        let held: std::collections::BTreeSet<u64> = seqs.iter().copied().filter(|&s| s > after).collect();
        let mut want = Vec::new();
        if let Some(&first) = held.iter().next() {
            let mut s = first;
            while held.contains(&s) {
                want.push(s);
                s += 1;
            }
        }
        prop_assert_eq!(got, want);
    }

    /// Against a model: per room, the newest epoch's last `max_len`
    /// numbers, appended in increasing order.
    #[test]
    fn the_in_memory_cache_matches_a_model(
        ops in proptest::collection::vec((0u64..3, 1u64..30), 1..80),
        max_len in 1usize..10,
    ) {
        let cache = InMemorySharedCache::new(max_len, 4);
        let mut model_epoch = 0u64;
        let mut model: Vec<u64> = Vec::new();
        for (epoch, seq) in ops {
            let r = cache.append_now(&envelope(epoch, seq)).expect("reliable");
            let fresh = epoch > model_epoch || (epoch == model_epoch && model.last().is_none_or(|&l| seq > l));
            prop_assert_eq!(r, if fresh { Appended::Stored } else { Appended::Duplicate });
            if fresh {
                if epoch > model_epoch {
                    model_epoch = epoch;
                    model.clear();
                }
                model.push(seq);
                if model.len() > max_len {
                    model.remove(0);
                }
            }
        }
        let rt = futures::executor::block_on(cache.range(ROOM, model_epoch, 0, 1_000)).expect("range");
        let got: Vec<u64> = rt.iter().map(|e| e.seq).collect();
        // The answer is the held run from its first number, cut at a hole.
        let expected = contiguous_run(model.iter().map(|&s| envelope(model_epoch, s)).collect(), 0);
        prop_assert_eq!(got, expected.iter().map(|e| e.seq).collect::<Vec<_>>());
        let head = futures::executor::block_on(cache.head(ROOM)).expect("head");
        prop_assert_eq!(head, model.last().map(|&l| (model_epoch, l)));
    }
}

#[test]
fn bad_requests_get_typed_errors() {
    let cache = InMemorySharedCache::default();
    assert_eq!(cache.append_now(&envelope(1, 0)), Err(SharedCacheError::NotReliable));
    let r = futures::executor::block_on(cache.range(ROOM, 1, 5, 5));
    assert_eq!(r, Err(SharedCacheError::BadRange { after: 5, upto: 5 }));
}

#[test]
fn the_room_written_least_recently_is_dropped_first() {
    let cache = InMemorySharedCache::new(4, 2);
    let room = |r: u64| RoomKey::new(BusinessId(1), RoomId(r));
    for r in 1..=3 {
        let mut e = envelope(1, 1);
        e.message.room = room(r);
        cache.append_now(&e).expect("append");
    }
    let head = |r| futures::executor::block_on(cache.head(room(r))).expect("head");
    assert_eq!((head(1), head(2), head(3)), (None, Some((1, 1)), Some((1, 1))));
}

#[test]
fn only_holes_inside_a_followed_sequence_are_missing() {
    let at = |seq| envelope(7, seq);
    assert_eq!(missing_before(Some((7, 3)), &at(6)), Some((3, 5)));
    assert_eq!(missing_before(Some((7, 3)), &at(4)), None, "the next number");
    assert_eq!(missing_before(Some((7, 3)), &at(2)), None, "a duplicate");
    assert_eq!(missing_before(Some((7, 3)), &at(0)), None, "chat is not numbered");
    assert_eq!(missing_before(Some((7, 0)), &at(9)), None, "a room just joined starts from what arrives");
    assert_eq!(missing_before(Some((6, 3)), &at(9)), None, "a new epoch starts afresh");
    assert_eq!(missing_before(None, &at(9)), None, "no connections here");
    assert_eq!(missing_before(Some((7, u64::MAX)), &at(5)), None, "no overflow");
}
