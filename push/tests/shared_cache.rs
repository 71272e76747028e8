//! The shared-cache helpers and the in-memory cache against simple models.

use bytes::Bytes;
use futures::executor::block_on;
use proptest::prelude::*;
use room_core::{BusinessId, RoomId, RoomKey, Timestamp};
use room_push::shared_cache::{contiguous_run, missing_before};
use room_push::{Appended, Class, Envelope, InMemorySharedCache, Kind, Message, Saved, SharedCache, SharedCacheError};

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

    /// Saves against a model of the compare-and-set rule: accepted iff the
    /// stored version (0 for none) is at most `after`, then stored as
    /// `after + 1`; a refused or oversized save changes nothing.
    #[test]
    fn state_saves_follow_the_compare_and_set_rule(
        ops in proptest::collection::vec((any::<bool>(), 0u64..8, 0usize..12), 1..60),
    ) {
        const MAX: usize = 10;
        let cache = InMemorySharedCache::new(4, 4).with_max_state(MAX);
        let mut model: Option<(u64, Bytes)> = None;
        for (i, (load, after, len)) in ops.into_iter().enumerate() {
            if load {
                prop_assert_eq!(block_on(cache.load_state(ROOM)), Ok(model.clone()));
                continue;
            }
            let state = Bytes::from(vec![i as u8; len]);
            let got = block_on(cache.save_state(ROOM, after, state.clone()));
            let stored = model.as_ref().map_or(0, |m| m.0);
            if len > MAX {
                prop_assert_eq!(got, Err(SharedCacheError::StateTooLarge { size: len, max: MAX }));
            } else if stored <= after {
                prop_assert_eq!(got, Ok(Saved::Stored { version: after + 1 }));
                model = Some((after + 1, state));
            } else {
                prop_assert_eq!(got, Ok(Saved::Conflict { version: stored }));
            }
            prop_assert_eq!(cache.load_state_now(ROOM), model.clone());
        }
    }
}

#[test]
fn two_owners_saving_at_once_learn_of_each_other() {
    let cache = InMemorySharedCache::default();
    assert_eq!(cache.load_state_now(ROOM), None);
    // Both loaded nothing (version 0); the first save wins.
    assert_eq!(cache.save_state_now(ROOM, 0, Bytes::from_static(b"a")), Ok(Saved::Stored { version: 1 }));
    assert_eq!(cache.save_state_now(ROOM, 0, Bytes::from_static(b"b")), Ok(Saved::Conflict { version: 1 }));
    assert_eq!(cache.load_state_now(ROOM), Some((1, Bytes::from_static(b"a"))));
    // A version above the stored one (saved locally during an outage) is accepted.
    assert_eq!(cache.save_state_now(ROOM, 5, Bytes::from_static(b"c")), Ok(Saved::Stored { version: 6 }));
    assert_eq!(
        cache.save_state_now(ROOM, u64::MAX, Bytes::new()),
        Err(SharedCacheError::BadVersion { after: u64::MAX })
    );
    assert_eq!(cache.load_state_now(ROOM), Some((6, Bytes::from_static(b"c"))));
}

#[test]
fn states_share_the_rooms_bound_with_the_logs() {
    let cache = InMemorySharedCache::new(4, 2);
    let room = |r: u64| RoomKey::new(BusinessId(1), RoomId(r));
    let mut e = envelope(1, 1);
    e.message.room = room(1);
    cache.append_now(&e).expect("append");
    cache.save_state_now(room(2), 0, Bytes::from_static(b"two")).expect("saves");
    // Room 1 was written least recently: a third room drops its log and state.
    cache.save_state_now(room(1), 0, Bytes::from_static(b"one")).expect("saves");
    cache.save_state_now(room(3), 0, Bytes::from_static(b"three")).expect("saves");
    assert_eq!(cache.load_state_now(room(2)), None, "room 2 was written least recently");
    assert_eq!(cache.head_now(room(1)), Some((1, 1)));
    assert_eq!(cache.load_state_now(room(1)).map(|s| s.0), Some(1));
    assert_eq!(cache.load_state_now(room(3)).map(|s| s.0), Some(1));
}

#[test]
fn bad_requests_get_typed_errors() {
    let cache = InMemorySharedCache::default();
    assert_eq!(cache.append_now(&envelope(1, 0)), Err(SharedCacheError::NotReliable));
    let r = futures::executor::block_on(cache.range(ROOM, 1, 5, 5));
    assert_eq!(r, Err(SharedCacheError::BadRange { after: 5, upto: 5 }));
    assert_eq!(cache.range_now(ROOM, 1, 6, 5), Err(SharedCacheError::BadRange { after: 6, upto: 5 }));
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

proptest! {
    /// Against a model of least-recently-written eviction: after any mix of
    /// appends and state saves over a few rooms, exactly the `max_rooms`
    /// rooms written most recently are held.
    #[test]
    fn rooms_are_dropped_least_recently_written_first(
        writes in proptest::collection::vec((0u64..8, any::<bool>()), 1..60),
        max_rooms in 1usize..5,
    ) {
        let cache = InMemorySharedCache::new(4, max_rooms);
        let room = |r: u64| RoomKey::new(BusinessId(1), RoomId(r));
        let mut order: Vec<u64> = Vec::new(); // least recently written first
        let mut seq = 0;
        for (r, save) in writes {
            if save {
                let version = cache.load_state_now(room(r)).map_or(0, |s| s.0);
                cache.save_state_now(room(r), version, Bytes::from_static(b"s")).expect("saves");
            } else {
                seq += 1;
                let mut e = envelope(1, seq);
                e.message.room = room(r);
                cache.append_now(&e).expect("append");
            }
            order.retain(|&o| o != r);
            order.push(r);
            if order.len() > max_rooms {
                order.remove(0);
            }
        }
        for r in 0..8 {
            let held = cache.head_now(room(r)).is_some() || cache.load_state_now(room(r)).is_some();
            prop_assert_eq!(held, order.contains(&r), "room {} (held {:?})", r, order);
        }
    }
}
