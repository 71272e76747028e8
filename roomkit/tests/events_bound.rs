//! A host that subscribes to room events and never reads them holds at
//! most `ServiceConfig::events` of them: while a 60,000-member class
//! churns (everyone leaves and a new learner takes their place, over and
//! over), the process's memory stays where it was half way through,
//! and the reader is told exactly how many events it missed.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use room_core::{BusinessId, Role, RoomId, RoomKey, Terminal, Uin};
use roomkit::host::EventKind;
use roomkit::service::{Connection, Outbound, RoomService, ServiceConfig};
use roomkit::ticket::{JoinTicket, KeyRing};

const ROOM: RoomKey = RoomKey::new(BusinessId(7), RoomId(60_000));

fn keys() -> KeyRing {
    KeyRing::new("k1", b"events-bound-test-key".to_vec()).expect("valid")
}

fn ticket(uin: u64) -> String {
    let exp = SystemTime::now().duration_since(UNIX_EPOCH).expect("clock").as_secs() + 3_600;
    keys().issue(&JoinTicket {
        room: ROOM,
        uin: Uin(uin),
        role: Role::Student,
        terminal: Terminal::Web,
        expires_at: exp,
    })
}

fn rss_mib() -> f64 {
    room_testkit::resident_mib().expect("this test reads /proc/self/status (Linux)")
}

/// Enters `uin` and waits for its welcome.
async fn enter(svc: &RoomService, uin: u64) -> Connection {
    let mut conn = svc.connect(ROOM, &ticket(uin)).expect("enters");
    let first = tokio::time::timeout(Duration::from_secs(10), conn.outbound.recv())
        .await
        .expect("a welcome in time")
        .expect("open");
    let Outbound::Text(text) = first else { panic!("not a welcome: {first:?}") };
    assert!(text.starts_with(br#"{"t":"welcome""#), "{}", String::from_utf8_lossy(&text));
    conn
}

/// Reads what the members were sent, as their clients would, so none of
/// them is closed as a slow reader: only the event reader is slow here.
fn read_all(members: &mut [Connection]) {
    for conn in members {
        while conn.outbound.try_recv().is_ok() {}
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a 60,000-member class, churned 24 times (cargo test --release -p roomkit --test events_bound -- --include-ignored --nocapture)"]
async fn a_host_that_never_reads_events_keeps_memory_flat_while_a_big_class_churns() {
    // 60,000 in release (CI's release step); a debug build checks the
    // same on 20,000.
    let members: u64 = if cfg!(debug_assertions) { 20_000 } else { 60_000 };
    const ROUNDS: u64 = 24;
    let mut config = ServiceConfig::new(keys());
    // The class outlives the test: nobody times out while it runs.
    config.node.heartbeat = Duration::from_secs(600);
    let held = config.events as u64;
    let svc = RoomService::start(config).await.expect("starts");
    let mut events = svc.events();

    let start = std::time::Instant::now();
    let mut class = Vec::with_capacity(members as usize);
    for uin in 1..=members {
        class.push(enter(&svc, uin).await);
        if uin % 1_000 == 0 {
            read_all(&mut class);
        }
    }
    println!("{members} entered in {:.1?}: {:.1} MiB resident", start.elapsed(), rss_mib());
    let mut next_uin = members + 1;
    let mut baseline = 0.0;
    for round in 1..=ROUNDS {
        for i in 0..class.len() {
            svc.leave(class[i].id);
            class[i] = enter(&svc, next_uin).await;
            next_uin += 1;
            if i % 1_000 == 0 {
                read_all(&mut class);
            }
        }
        read_all(&mut class);
        let rss = rss_mib();
        println!("round {round} in {:.1?}: {rss:.1} MiB resident, {:?}", start.elapsed(), svc.stats().connections);
        if round == 2 * ROUNDS / 3 {
            // Everything a churning class keeps on purpose is at its bound
            // by now: the events held (65,536 of every one told), the
            // member list's tombstones (at most as many as members a room
            // may hold), closed connections remembered against late
            // beats, and tables that grew once to hold twice the class
            // between rehashes. The last third must not grow: a leak of
            // 100 bytes a member would add 48 MB.
            baseline = rss;
        }
    }
    let end = rss_mib();
    assert_eq!(svc.counts(ROOM).await.expect("answered").total(), members as u32, "the class is whole");

    // Every entry and exit was either held or counted as missed.
    let told = members + ROUNDS * members * 2;
    let (mut missed, mut got) = (0, Vec::new());
    while let Some(next) = events.try_next() {
        match next {
            Ok(event) => got.push(event),
            Err(lagged) => missed += lagged.missed,
        }
    }
    assert!(got.len() as u64 <= held, "held {} of at most {held}", got.len());
    assert_eq!(missed + got.len() as u64, told, "every event held or counted missed");
    assert!(got.windows(2).all(|w| w[1].seq == w[0].seq + 1), "the newest, in order");
    let newest = Uin(next_uin - 1);
    assert!(
        matches!(got.last().map(|e| &e.what), Some(EventKind::Entered { uin, .. }) if *uin == newest),
        "the last held is the newest entry: {:?}",
        got.last()
    );
    println!("{told} events told, {missed} missed, {} held; {baseline:.1} → {end:.1} MiB", got.len());
    assert!(end <= baseline * 1.1 + 16.0, "memory grew from {baseline:.1} to {end:.1} MiB");
}
