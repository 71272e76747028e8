//! The sans-IO fenced gate, step by step: opening at the cache's head,
//! one append in flight per room, the backlog bound, renumbering after a
//! refusal, giving a room up, and answers that come too late.

mod support;

use bytes::Bytes;
use room_core::{Role, Timestamp, Uin};
use room_push::{
    Appended, Class, Envelope, FENCE_ATTEMPTS, FenceOutput, FencedGate, GateConfig, GateError, InMemorySharedCache,
    Kind, Level, Message, Quota, Sender, SharedCacheError, SubclassId,
};
use support::*;

const E: u64 = 5_000_000;

fn t0() -> Timestamp {
    Timestamp::from_millis(1_000)
}

fn config() -> GateConfig {
    let mut config = GateConfig::default();
    let q = Quota::per_second(1_000_000).and_then(|q| q.with_burst(1_000_000)).expect("valid");
    config.room_reliable_quota = q;
    config.user_quota = q;
    config.subclass_size = 2;
    config
}

fn say(text: &str) -> Message {
    Message::new(ROOM, Class::Teacher, Kind(2), Bytes::copy_from_slice(text.as_bytes()))
        .from_sender(Sender { uin: Uin(1), role: Role::Teacher })
}

fn chat(text: &str) -> Message {
    Message::new(ROOM, Class::Chat, Kind(3), Bytes::copy_from_slice(text.as_bytes()))
        .from_sender(Sender { uin: Uin(9), role: Role::Student })
}

fn text(env: &Envelope) -> String {
    String::from_utf8_lossy(&env.message.payload).into_owned()
}

#[derive(Debug, Default)]
struct Out {
    appends: Vec<Envelope>,
    published: Vec<Envelope>,
    reads: usize,
    fenced: Vec<Vec<Envelope>>,
}

fn drain(g: &mut FencedGate) -> Out {
    let mut out = Out::default();
    while let Some(o) = g.poll_output() {
        match o {
            FenceOutput::Append(batch) => out.appends.extend(batch),
            FenceOutput::Publish(e) => out.published.push(e),
            FenceOutput::ReadHead(room) => {
                assert_eq!(room, ROOM);
                out.reads += 1;
            }
            FenceOutput::Fenced { room, dropped } => {
                assert_eq!(room, ROOM);
                out.fenced.push(dropped);
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    out
}

/// Answers `env`'s append with `result` and drains.
fn answer(g: &mut FencedGate, env: &Envelope, result: Result<Appended, SharedCacheError>) -> Out {
    g.handle_appended(t0(), ROOM, env.epoch, env.seq, result);
    drain(g)
}

/// Appends to `cache` and publishes until the gate has nothing left.
fn run(g: &mut FencedGate, cache: &InMemorySharedCache) -> Vec<Envelope> {
    let mut published = Vec::new();
    loop {
        let out = drain(g);
        published.extend(out.published);
        assert!(out.fenced.is_empty());
        if out.appends.is_empty() && out.reads == 0 {
            return published;
        }
        for e in out.appends {
            g.handle_appended(t0(), ROOM, e.epoch, e.seq, cache.append_batch_now(std::slice::from_ref(&e)));
        }
        for _ in 0..out.reads {
            g.handle_head(t0(), ROOM, Ok(cache.head_now(ROOM)));
        }
    }
}

#[test]
fn a_room_opens_at_the_cache_head_or_in_a_fresh_epoch_from_the_floor() {
    let mut g = FencedGate::new(config()).with_max_batch(1);
    assert_eq!(g.open(t0(), ROOM, Some((E, 10)), 0, 0), Ok(E));
    assert!(g.is_open(ROOM));
    g.publish(t0(), say("a")).expect("accepted");
    let out = drain(&mut g);
    assert_eq!(out.appends.iter().map(|e| (e.epoch, e.seq)).collect::<Vec<_>>(), [(E, 11)]);
    assert!(out.published.is_empty(), "nothing published before the cache took it");
    assert_eq!(g.open(t0(), ROOM, Some((E + 9, 1)), 0, 0), Ok(E), "an open room keeps its sequence");

    // The floor is the push side's epoch plus one: its own epoch continues...
    let mut g = FencedGate::new(config()).with_max_batch(1);
    assert_eq!(g.open(t0(), ROOM, Some((E, 10)), E + 1, 0), Ok(E));
    // ...an older one is not (push nodes would ignore it)...
    let mut g = FencedGate::new(config()).with_max_batch(1);
    assert_eq!(g.open(t0(), ROOM, Some((E, 10)), E + 2, 0), Ok(E + 2));
    g.publish(t0(), say("a")).expect("accepted");
    assert_eq!(drain(&mut g).appends[0].seq, 1);
    // ...and with no head, a fresh epoch from the floor or the clock.
    let mut g = FencedGate::new(config()).with_max_batch(1);
    assert_eq!(g.open(t0(), ROOM, None, E, 0), Ok(E));
    let mut g = FencedGate::new(config()).with_max_batch(1);
    assert_eq!(g.open(t0(), ROOM, None, 0, 0), Ok(t0().as_micros()));

    // Garbage for a head is refused and opens nothing.
    let mut g = FencedGate::new(config()).with_max_batch(1);
    assert_eq!(g.open(t0(), ROOM, Some((E, u64::MAX)), 0, 0), Err(GateError::BadHead { head: u64::MAX }));
    assert!(!g.is_open(ROOM));
    assert_eq!(g.publish(t0(), say("a")), Err(GateError::UnknownRoom(ROOM)));
    assert_eq!(g.join(t0(), ROOM, Uin(3), Role::Student), Err(GateError::UnknownRoom(ROOM)));
    assert_eq!(g.leave(t0(), ROOM, Uin(3)), Err(GateError::UnknownRoom(ROOM)));
    assert_eq!(g.set_mute_all(t0(), ROOM, true), Err(GateError::UnknownRoom(ROOM)));
    assert_eq!(g.mute_user(ROOM, Uin(3), true), Err(GateError::UnknownRoom(ROOM)));
    assert_eq!(g.restore_members(t0(), ROOM, &[], false, &[]), Err(GateError::UnknownRoom(ROOM)));
}

#[test]
fn chat_passes_at_once_and_numbers_go_to_the_cache_one_at_a_time() {
    let mut g = FencedGate::new(config()).with_max_batch(1);
    g.open(t0(), ROOM, Some((E, 0)), 0, 0).expect("opens");
    for t in ["a", "b", "c"] {
        g.publish(t0(), say(t)).expect("accepted");
    }
    g.publish(t0(), chat("hi")).expect("accepted");
    let out = drain(&mut g);
    assert_eq!(out.appends.len(), 1, "one append in flight");
    assert_eq!(out.published.iter().map(text).collect::<Vec<_>>(), ["hi"], "chat is not held");
    assert_eq!(g.queued(ROOM), 2);
    let mut next = out.appends[0].clone();
    let mut published = Vec::new();
    for (i, result) in [Ok(Appended::Stored), Ok(Appended::Local), Err(SharedCacheError::Unavailable("down".into()))]
        .into_iter()
        .enumerate()
    {
        // Stored, held locally, or an unreachable cache (which cannot fence): published.
        let out = answer(&mut g, &next, result);
        assert_eq!(out.published.len(), 1);
        published.extend(out.published);
        if i < 2 {
            assert_eq!(out.appends.len(), 1);
            next = out.appends[0].clone();
        } else {
            assert!(out.appends.is_empty());
        }
    }
    assert_eq!(
        published.iter().map(|e| (e.seq, text(e))).collect::<Vec<_>>(),
        [(1, "a".into()), (2, "b".into()), (3, "c".into())]
    );
    assert_eq!(g.renumbered(), 0);
}

#[test]
fn over_the_backlog_numbered_messages_are_refused_with_nothing_numbered() {
    let mut g = FencedGate::new(config()).with_max_batch(1).with_max_queued(2);
    g.open(t0(), ROOM, Some((E, 0)), 0, 0).expect("opens");
    for t in ["a", "b", "c"] {
        g.publish(t0(), say(t)).expect("one in flight, two queued");
    }
    assert_eq!(g.publish(t0(), say("d")), Err(GateError::Backlogged { max: 2 }));
    assert_eq!(g.set_mute_all(t0(), ROOM, true), Err(GateError::Backlogged { max: 2 }));
    assert_eq!(g.gate().sequence(ROOM), Ok((E, 3)), "no number taken");
    assert_eq!(g.gate().is_muted(ROOM), Ok(false));
    g.publish(t0(), chat("hi")).expect("chat is not queued");
    // Membership changes are facts: their signals queue past the bound.
    g.restore_members(t0(), ROOM, &[(Uin(7), Role::Student, None)], false, &[]).expect("restores");
    assert_eq!(g.queued(ROOM), 3);
    let out = drain(&mut g);
    assert_eq!(out.appends.len(), 1);
    let cache = InMemorySharedCache::default();
    g.handle_appended(t0(), ROOM, E, 1, cache.append_now(&out.appends[0]));
    let published = run(&mut g, &cache);
    assert_eq!(published.iter().map(|e| e.seq).collect::<Vec<_>>(), [1, 2, 3, 4]);
    assert_eq!(published[3].message.kind, Kind::SUBCLASS);
    g.publish(t0(), say("d")).expect("room again");
}

#[test]
fn a_refused_number_is_renumbered_after_the_new_head_in_order() {
    let cache = InMemorySharedCache::default();
    // Another owner numbered 4 and 5 after the head this gate opened at.
    for seq in 1..=5 {
        let mut e = Envelope { epoch: E, seq, accepted_at: t0(), message: say("theirs") };
        e.message.origin = seq;
        cache.append_now(&e).expect("append");
    }
    let mut g = FencedGate::new(config()).with_max_batch(1);
    g.open(t0(), ROOM, Some((E, 3)), 0, 0).expect("opens");
    for t in ["a", "b", "c"] {
        g.publish(t0(), say(t)).expect("accepted");
    }
    let first = drain(&mut g).appends.remove(0);
    assert_eq!(first.seq, 4);
    let out = answer(&mut g, &first, cache.append_now(&first));
    assert_eq!((out.reads, out.published.len(), out.appends.len()), (1, 0, 0), "held until the head is read");
    // While held, more traffic queues behind.
    g.publish(t0(), say("d")).expect("accepted");
    assert!(drain(&mut g).appends.is_empty());
    g.handle_head(t0(), ROOM, Ok(cache.head_now(ROOM)));
    let published = run(&mut g, &cache);
    assert_eq!(
        published.iter().map(|e| (e.epoch, e.seq, text(e))).collect::<Vec<_>>(),
        [(E, 6, "a".into()), (E, 7, "b".into()), (E, 8, "c".into()), (E, 9, "d".into())]
    );
    assert_eq!(g.renumbered(), 4);
    assert_eq!(cache.range_now(ROOM, E, 5, 9).expect("range"), published, "the cache holds what was published");
}

#[test]
fn a_head_that_lost_the_refused_number_starts_a_fresh_epoch() {
    let mut g = FencedGate::new(config()).with_max_batch(1);
    g.open(t0(), ROOM, Some((E, 3)), E + 1, 0).expect("opens");
    g.publish(t0(), say("a")).expect("accepted");
    g.publish(t0(), say("b")).expect("accepted");
    let first = drain(&mut g).appends.remove(0);
    assert_eq!(answer(&mut g, &first, Ok(Appended::Duplicate)).reads, 1);
    // The cache says less than it refused: it lost data (a restart).
    g.handle_head(t0(), ROOM, Ok(Some((E, 2))));
    let out = drain(&mut g);
    let renumbered = &out.appends[0];
    assert!(renumbered.epoch > E && renumbered.epoch >= t0().as_micros(), "{renumbered:?}");
    assert_eq!((renumbered.seq, text(renumbered)), (1, "a".into()));
    let out = answer(&mut g, renumbered, Ok(Appended::Stored));
    assert_eq!((out.appends[0].epoch, out.appends[0].seq), (renumbered.epoch, 2));

    // With no head at all, the same.
    let mut g = FencedGate::new(config()).with_max_batch(1);
    g.open(t0(), ROOM, Some((E, 3)), 0, 0).expect("opens");
    g.publish(t0(), say("a")).expect("accepted");
    let first = drain(&mut g).appends.remove(0);
    answer(&mut g, &first, Ok(Appended::Duplicate));
    g.handle_head(t0(), ROOM, Ok(None));
    let again = drain(&mut g).appends.remove(0);
    assert!(again.epoch > E && again.seq == 1);
}

#[test]
fn a_room_is_given_up_after_repeated_refusals_or_unreadable_heads() {
    let mut g = FencedGate::new(config()).with_max_batch(1);
    g.open(t0(), ROOM, Some((E, 0)), 0, 0).expect("opens");
    g.publish(t0(), say("a")).expect("accepted");
    g.publish(t0(), say("b")).expect("accepted");
    let mut next = drain(&mut g).appends.remove(0);
    for attempt in 1..=FENCE_ATTEMPTS {
        let out = answer(&mut g, &next, Ok(Appended::Duplicate));
        if attempt == FENCE_ATTEMPTS {
            assert_eq!(out.reads, 0);
            let dropped = &out.fenced[0];
            assert_eq!(dropped.iter().map(text).collect::<Vec<_>>(), ["a", "b"]);
            assert!(out.published.is_empty());
            break;
        }
        assert_eq!(out.reads, 1);
        let head = next.seq + 10;
        g.handle_head(t0(), ROOM, Ok(Some((E, head))));
        next = drain(&mut g).appends.remove(0);
        assert_eq!(next.seq, head + 1);
    }
    assert!(!g.is_open(ROOM), "released");
    assert_eq!(g.publish(t0(), say("c")), Err(GateError::UnknownRoom(ROOM)));

    // A head that cannot be read.
    let mut g = FencedGate::new(config()).with_max_batch(1);
    g.open(t0(), ROOM, Some((E, 0)), 0, 0).expect("opens");
    g.publish(t0(), say("a")).expect("accepted");
    let first = drain(&mut g).appends.remove(0);
    answer(&mut g, &first, Ok(Appended::Duplicate));
    for attempt in 1..=FENCE_ATTEMPTS {
        g.handle_head(t0(), ROOM, Err(SharedCacheError::Unavailable("down".into())));
        let out = drain(&mut g);
        if attempt < FENCE_ATTEMPTS {
            assert_eq!(out.reads, 1, "asked again");
        } else {
            assert_eq!(out.fenced.len(), 1);
            assert_eq!(out.fenced[0].iter().map(text).collect::<Vec<_>>(), ["a"]);
        }
    }
    assert!(!g.is_open(ROOM));
}

#[test]
fn refusals_count_in_a_row_only() {
    let cache = InMemorySharedCache::default();
    let mut g = FencedGate::new(config()).with_max_batch(1);
    g.open(t0(), ROOM, Some((E, 0)), 0, 0).expect("opens");
    for round in 0..(FENCE_ATTEMPTS * 2) as u64 {
        // Another owner takes the next number each round; this gate is
        // refused once, then gets the number after it.
        let theirs = Envelope { epoch: E, seq: round * 2 + 1, accepted_at: t0(), message: say("theirs") };
        cache.append_now(&theirs).expect("append");
        g.publish(t0(), say("mine")).expect("accepted");
        let published = run(&mut g, &cache);
        assert_eq!(published.iter().map(|e| e.seq).collect::<Vec<_>>(), [round * 2 + 2]);
    }
    assert!(g.is_open(ROOM));
    assert_eq!(g.renumbered(), u64::from(FENCE_ATTEMPTS) * 2);
}

#[test]
fn stale_answers_are_ignored() {
    let mut g = FencedGate::new(config()).with_max_batch(1);
    g.open(t0(), ROOM, Some((E, 0)), 0, 0).expect("opens");
    g.publish(t0(), say("a")).expect("accepted");
    g.publish(t0(), say("b")).expect("accepted");
    let first = drain(&mut g).appends.remove(0);
    // An answer for a number not in flight, a head nobody asked for.
    g.handle_appended(t0(), ROOM, E, 2, Ok(Appended::Stored));
    g.handle_appended(t0(), ROOM, E + 1, 1, Ok(Appended::Stored));
    g.handle_head(t0(), ROOM, Ok(Some((E, 40))));
    let out = drain(&mut g);
    assert!(out.appends.is_empty() && out.published.is_empty() && out.reads == 0);
    // Renumbered since: the answer for the old number is ignored too.
    answer(&mut g, &first, Ok(Appended::Duplicate));
    g.handle_head(t0(), ROOM, Ok(Some((E, 1))));
    let renumbered = drain(&mut g).appends.remove(0);
    assert_eq!(renumbered.seq, 2);
    assert!(answer(&mut g, &first, Ok(Appended::Stored)).published.is_empty());
    assert_eq!(answer(&mut g, &renumbered, Ok(Appended::Stored)).published.len(), 1);
}

#[test]
fn a_released_room_returns_what_it_never_published_and_a_reopened_one_waits_for_its_last_answer() {
    let mut g = FencedGate::new(config()).with_max_batch(1);
    g.open(t0(), ROOM, Some((E, 0)), 0, 0).expect("opens");
    for t in ["a", "b", "c"] {
        g.publish(t0(), say(t)).expect("accepted");
    }
    let first = drain(&mut g).appends.remove(0);
    let stored = answer(&mut g, &first, Ok(Appended::Stored));
    assert_eq!(stored.published.len(), 1);
    let in_flight = stored.appends[0].clone();
    let released = g.release(ROOM);
    assert_eq!(released.iter().map(text).collect::<Vec<_>>(), ["b", "c"], "in flight first, then the queue");
    assert!(!g.is_open(ROOM));
    assert!(g.release(ROOM).is_empty());

    // Reopened at a head read before the append in flight landed: the same
    // number is given to another message, and must not be appended while
    // the old append's answer could still be taken for it.
    g.open(t0(), ROOM, Some((E, 1)), 0, 0).expect("opens");
    g.publish(t0(), say("x")).expect("accepted");
    assert!(drain(&mut g).appends.is_empty(), "held until the earlier opening's append is answered");
    let out = answer(&mut g, &in_flight, Ok(Appended::Stored));
    assert!(out.published.is_empty(), "the old answer publishes nothing");
    let x = &out.appends[0];
    assert_eq!((x.seq, text(x)), (2, "x".into()));
    // The cache holds b at 2: x is refused and renumbered after it.
    assert_eq!(answer(&mut g, x, Ok(Appended::Duplicate)).reads, 1);
    g.handle_head(t0(), ROOM, Ok(Some((E, 2))));
    let x = drain(&mut g).appends.remove(0);
    assert_eq!((x.seq, text(&x)), (3, "x".into()));
}

#[test]
fn release_withdraws_requests_not_yet_polled() {
    let mut g = FencedGate::new(config()).with_max_batch(1);
    g.open(t0(), ROOM, Some((E, 0)), 0, 0).expect("opens");
    g.publish(t0(), say("a")).expect("accepted");
    g.publish(t0(), chat("hi")).expect("accepted");
    assert_eq!(g.release(ROOM).iter().map(text).collect::<Vec<_>>(), ["a"]);
    let out = drain(&mut g);
    assert!(out.appends.is_empty(), "the append was withdrawn");
    assert_eq!(out.published.iter().map(text).collect::<Vec<_>>(), ["hi"], "chat already decided stays");
    // Nothing is outstanding, so a reopened room appends at once.
    g.open(t0(), ROOM, Some((E, 0)), 0, 0).expect("opens");
    g.publish(t0(), say("b")).expect("accepted");
    assert_eq!(drain(&mut g).appends.len(), 1);
}

#[test]
fn membership_and_switch_signals_go_through_the_cache_too() {
    let cache = InMemorySharedCache::default();
    let mut g = FencedGate::new(config()).with_max_batch(1);
    g.open(t0(), ROOM, Some((E, 0)), 0, 0).expect("opens");
    let placed: Vec<_> = (0..4).map(|n| g.join(t0(), ROOM, Uin(100 + n), Role::Student)).collect();
    assert_eq!(placed, [0, 0, 1, 1].map(|s| Ok(Some(SubclassId(s)))), "joins move nobody");
    assert_eq!(g.join(t0(), ROOM, Uin(1), Role::Teacher), Ok(None));
    g.leave(t0(), ROOM, Uin(100)).expect("open");
    g.leave(t0(), ROOM, Uin(101)).expect("open"); // empties sub-class 0: someone moves
    g.set_mute_all(t0(), ROOM, true).expect("open");
    g.mute_user(ROOM, Uin(101), true).expect("open");
    g.set_level(t0(), Level::MergeHarder);
    let out = drain(&mut g);
    assert!(out.published.is_empty(), "no signal published before the cache took it");
    assert_eq!(out.appends.len(), 1);
    g.handle_appended(t0(), ROOM, E, 1, cache.append_now(&out.appends[0]));
    let published = run(&mut g, &cache);
    let kinds: Vec<Kind> = published.iter().map(|e| e.message.kind).collect();
    assert_eq!(kinds, [Kind::SUBCLASS, Kind::MUTE_ALL, Kind::LEVEL]);
    assert_eq!(published.iter().map(|e| e.seq).collect::<Vec<_>>(), [1, 2, 3]);
    assert_eq!(g.gate().muted_users(ROOM), Ok(vec![Uin(101)]));
    assert_eq!(g.gate_mut().sequence(ROOM), Ok((E, 3)));
}

#[test]
fn a_burst_is_appended_in_batches_and_fenced_as_one() {
    let cache = InMemorySharedCache::default();
    let mut g = FencedGate::new(config()).with_max_batch(4).with_max_queued(64);
    g.open(t0(), ROOM, None, 0, 0).expect("opens");
    for i in 0..10 {
        g.publish(t0(), Message::new(ROOM, Class::Signal, Kind(1), format!("b{i}"))).expect("numbered");
    }
    // One append in flight at first; then the queue goes in batches of 4.
    let mut batches = Vec::new();
    let mut published = Vec::new();
    loop {
        let mut appends = Vec::new();
        while let Some(o) = g.poll_output() {
            match o {
                FenceOutput::Append(batch) => appends.push(batch),
                FenceOutput::Publish(e) => published.push(e.seq),
                other => panic!("unexpected {other:?}"),
            }
        }
        if appends.is_empty() {
            break;
        }
        for batch in appends {
            batches.push(batch.len());
            let answer = cache.append_batch_now(&batch);
            g.handle_appended(t0(), ROOM, batch[0].epoch, batch[0].seq, answer);
        }
    }
    assert_eq!(batches, [1, 4, 4, 1]);
    assert_eq!(published, (1..=10).collect::<Vec<u64>>());
    // Another writer takes the next number: a whole batch is refused, and
    // renumbered after the new head.
    let head = cache.head_now(ROOM).expect("a head");
    let mut theirs = Envelope {
        epoch: head.0,
        seq: head.1 + 1,
        accepted_at: t0(),
        message: Message::new(ROOM, Class::Signal, Kind(1), "theirs"),
    };
    cache.append_now(&theirs).expect("append");
    for i in 0..3 {
        g.publish(t0(), Message::new(ROOM, Class::Signal, Kind(1), format!("c{i}"))).expect("numbered");
    }
    let Some(FenceOutput::Append(batch)) = g.poll_output() else { panic!("an append") };
    assert_eq!(cache.append_batch_now(&batch), Ok(Appended::Duplicate));
    assert_eq!(cache.head_now(ROOM), Some((theirs.epoch, theirs.seq)), "nothing of the refused batch was stored");
    theirs.seq += 1;
    let _ = theirs;
}
