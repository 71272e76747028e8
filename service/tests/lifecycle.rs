//! Rooms come and go for ever on a platform: a million short classes, each
//! entered by a teacher and a student who speak, then closed by the host
//! or left to expire when empty, leave nothing behind (no room, session,
//! connection, member list or push state) and the process's memory where
//! it was after the first ones.

mod common;

use std::time::Duration;

use common::One;
use room_core::{BusinessId, Role, RoomId, RoomKey, Terminal, Uin};
use room_push::InMemorySharedCache;
use room_service::Admission;
use room_service::host::{HostAnswer, HostRequest};

/// The process's resident memory, in MiB.
fn rss_mib() -> f64 {
    room_testkit::resident_mib().expect("this test reads /proc/self/status (Linux)")
}

/// One short class in room `id`: a teacher and a student enter, the
/// teacher speaks and opens a card the student answers, then the host
/// closes the room (`close`) or both leave and the room expires.
fn short_class(one: &mut One, id: u64, close: bool) {
    let room = RoomKey::new(BusinessId(1), RoomId(id));
    let teacher =
        one.node.connect(one.now, Admission::new(room, Uin(1), Role::Teacher, Terminal::Pc)).expect("teacher enters");
    let student = one
        .node
        .connect(one.now, Admission::new(room, Uin(2 + id % 1_000), Role::Student, Terminal::Web))
        .expect("student enters");
    one.pump();
    let _ = one.node.handle_text(one.now, teacher, r#"{"t":"say","text":"welcome"}"#);
    let _ = one.node.handle_text(one.now, teacher, r#"{"t":"card_open","options":2}"#);
    one.pump();
    one.advance(Duration::from_millis(60));
    let _ = one.node.handle_text(one.now, student, r#"{"t":"card_answer","option":1}"#);
    one.pump();
    if close {
        let id = one.node.host(one.now, HostRequest::CloseRoom { room, reason: "over".into() }).expect("asked");
        one.pump();
        one.advance(Duration::from_millis(60));
        assert!(matches!(one.host_answers.remove(&id), Some(Ok(HostAnswer::Closed { members: 2 }))));
    } else {
        one.node.leave(one.now, teacher);
        one.node.leave(one.now, student);
        one.pump();
        one.advance(Duration::from_millis(60));
    }
    // What the harness itself kept of this class.
    one.sink.frames.clear();
    one.sink.closed.clear();
    one.events.clear();
}

/// How long what a finished class leaves on purpose stays: its recent
/// messages at the access node, for clients that reconnect (the push
/// node's cache age), and its member list's tombstones, for replicas that
/// were cut off (10 minutes).
fn settle(one: &One) -> Duration {
    one.node.config().push.cache_age.max(Duration::from_secs(600)) + Duration::from_secs(60)
}

fn assert_empty(one: &One) {
    let stats = one.node.stats();
    assert_eq!((stats.rooms, stats.connections, stats.sessions), (0, 0, 0), "{stats:?}");
    assert_eq!((stats.push.rooms, stats.push.connections), (0, 0), "{:?}", stats.push);
    assert_eq!(one.node.members().store().room_keys().len(), 0, "member lists left behind");
}

#[test]
fn a_thousand_short_classes_leave_nothing_behind() {
    let mut one = One::new(|c| c.room_idle = Duration::from_millis(100));
    for id in 1..=1_000 {
        short_class(&mut one, id, id % 2 == 0);
    }
    // The rooms, sessions and connections go at once (closed) or as soon
    // as the room has been empty for room_idle.
    one.advance(Duration::from_secs(1));
    let stats = one.node.stats();
    assert_eq!((stats.rooms, stats.connections, stats.sessions), (0, 0, 0), "{stats:?}");
    let settle = settle(&one);
    one.advance(settle);
    assert_empty(&one);
}

#[test]
#[ignore = "a million classes: run in release (cargo test --release -p room-service --test lifecycle -- --include-ignored --nocapture)"]
fn a_million_short_classes_leave_memory_where_it_was() {
    // A million in release by default (BENCHMARKS.md has the figures; CI's
    // lifecycle step runs 200,000 through ROOMKIT_CLASSES to stay inside its
    // time); a debug build (CI's run of every ignored test) checks 20,000.
    let default = if cfg!(debug_assertions) { 20_000 } else { 1_000_000 };
    let classes: u64 = std::env::var("ROOMKIT_CLASSES").ok().and_then(|s| s.parse().ok()).unwrap_or(default);
    let mut one = One::new(|c| c.room_idle = Duration::from_millis(100));
    // The in-memory stand-in for Redis keeps the newest 10,000 rooms
    // (Redis expires them): full before the baseline is taken.
    one.cache = InMemorySharedCache::new(64, 10_000);
    // The baseline is taken once what a finished class leaves for a while
    // (tombstones for 10 minutes of virtual time, the shared cache filling
    // up) has reached its steady size.
    // A tenth of the run, and at least twice the cache's 10,000 rooms (a
    // debug run's tenth would take the baseline before the cache is full).
    let warm = (classes / 10).max(20_000).min(classes);
    let mut baseline = 0.0;
    let start = std::time::Instant::now();
    for id in 1..=classes {
        short_class(&mut one, id, id % 2 == 0);
        if id == warm {
            let settle = settle(&one);
            one.advance(settle);
            assert_empty(&one);
            baseline = rss_mib();
            println!("after {warm} classes: {baseline:.1} MiB resident (the baseline)");
        }
        if id % (classes / 10).max(1) == 0 {
            println!(
                "{id} classes in {:.1?}: {:.1} MiB resident, {:?}",
                start.elapsed(),
                rss_mib(),
                one.node.stats().rooms
            );
        }
    }
    let settle = settle(&one);
    one.advance(settle);
    assert_empty(&one);
    let end = rss_mib();
    println!("after {classes} classes: {end:.1} MiB resident (baseline {baseline:.1} MiB)");
    // A leak of even 50 bytes a class would be 50 MB here.
    assert!(end <= baseline * 1.1 + 8.0, "memory grew from {baseline:.1} to {end:.1} MiB");
}
