//! The Redis Streams recovery cache against a redis-server of its own:
//! ranges, duplicates, bounds in length and age, epochs, garbage in a
//! stream, and an outage that falls back to a local cache and writes it
//! back; room states beside the streams: compare-and-set, the size bound,
//! expiry, garbage in the hash, and an outage.

use std::time::{Duration, Instant};

use bytes::Bytes;
use room_core::{BusinessId, RoomId, RoomKey, Timestamp};
use room_push::{Appended, Class, Envelope, Kind, Message, Saved, SharedCache, SharedCacheError};
use room_redis::{Health, RedisCache, RedisCacheConfig};
use room_testkit::redis::RedisServer as Server;

const ROOM: RoomKey = RoomKey::new(BusinessId(3), RoomId(77));
const EPOCH: u64 = 1_732_000_000_000_000;

fn envelope(epoch: u64, seq: u64) -> Envelope {
    Envelope {
        epoch,
        seq,
        accepted_at: Timestamp::from_millis(seq),
        message: Message::new(ROOM, Class::Teacher, Kind(2), format!("message {seq}")),
    }
}

fn seqs(found: &[Envelope]) -> Vec<u64> {
    found.iter().map(|e| e.seq).collect()
}

fn cache(url: String, max_len: usize, max_age: Duration) -> RedisCache {
    let mut config = RedisCacheConfig::new(url);
    config.max_len = max_len;
    config.max_age = max_age;
    config.retry_every = Duration::from_millis(100);
    RedisCache::new(config).expect("cache")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs redis-server"]
async fn ranges_are_contiguous_bounded_and_per_epoch() {
    let server = Server::start(None).expect("redis-server starts (apt-get install redis-server)");
    let writer = cache(server.url(), 5, Duration::from_secs(60));
    // Another node reads what this one wrote.
    let reader = cache(server.url(), 5, Duration::from_secs(60));
    for seq in 1..=3 {
        assert_eq!(writer.append(&envelope(EPOCH, seq)).await, Ok(Appended::Stored));
    }
    assert_eq!(writer.append(&envelope(EPOCH, 2)).await, Ok(Appended::Duplicate), "a retry changes nothing");
    let found = reader.range(ROOM, EPOCH, 0, 3).await.expect("range");
    assert_eq!(found, vec![envelope(EPOCH, 1), envelope(EPOCH, 2), envelope(EPOCH, 3)]);
    assert_eq!(seqs(&reader.range(ROOM, EPOCH, 1, 2).await.expect("range")), [2]);
    assert_eq!(reader.head(ROOM).await, Ok(Some((EPOCH, 3))));
    assert_eq!(reader.range(ROOM, EPOCH, 3, 2).await, Err(SharedCacheError::BadRange { after: 3, upto: 2 }));
    assert_eq!(writer.append(&envelope(EPOCH, 0)).await, Err(SharedCacheError::NotReliable));

    // Bounded in length: only the newest five are held; the answer starts late.
    for seq in 4..=10 {
        writer.append(&envelope(EPOCH, seq)).await.expect("append");
    }
    assert_eq!(seqs(&reader.range(ROOM, EPOCH, 0, 10).await.expect("range")), [6, 7, 8, 9, 10]);

    // A new epoch: its numbers start again; the old epoch's are not mixed in.
    writer.append(&envelope(EPOCH + 1, 1)).await.expect("append");
    assert_eq!(seqs(&reader.range(ROOM, EPOCH + 1, 0, 10).await.expect("range")), [1]);
    assert_eq!(reader.head(ROOM).await, Ok(Some((EPOCH + 1, 1))));
    // A late envelope of the older epoch is not stored after the newer one.
    assert_eq!(writer.append(&envelope(EPOCH, 11)).await, Ok(Appended::Duplicate));

    // Garbage written into the stream by something else ends the answer
    // before it, and nothing panics.
    let mut c = redis::Client::open(server.url()).expect("url").get_connection().expect("connects");
    let key = "roomkit:cache:3:77";
    let _: String = redis::cmd("XADD")
        .arg(key)
        .arg(format!("{}-2", EPOCH + 1))
        .arg("t")
        .arg(i64::MAX)
        .arg("d")
        .arg("junk")
        .query(&mut c)
        .expect("xadd");
    writer.append(&envelope(EPOCH + 1, 3)).await.expect("append");
    assert_eq!(seqs(&reader.range(ROOM, EPOCH + 1, 0, 3).await.expect("range")), [1]);
    assert_eq!(seqs(&reader.range(ROOM, EPOCH + 1, 2, 3).await.expect("range")), [3]);

    // The stream is bounded and expires.
    let len: u64 = redis::cmd("XLEN").arg(key).query(&mut c).expect("xlen");
    assert!(len <= 5, "stream holds {len}");
    let ttl: i64 = redis::cmd("PTTL").arg(key).query(&mut c).expect("pttl");
    assert!(ttl > 0 && ttl <= 60_000, "stream expiry {ttl}");
    assert_eq!(reader.health(), Health::Up);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs redis-server"]
async fn entries_older_than_the_window_are_not_answered() {
    let server = Server::start(None).expect("redis-server starts (apt-get install redis-server)");
    let c = cache(server.url(), 100, Duration::from_millis(300));
    c.append(&envelope(EPOCH, 1)).await.expect("append");
    tokio::time::sleep(Duration::from_millis(200)).await;
    c.append(&envelope(EPOCH, 2)).await.expect("append");
    tokio::time::sleep(Duration::from_millis(200)).await;
    // 1 is 400 ms old, 2 is 200 ms old.
    assert_eq!(seqs(&c.range(ROOM, EPOCH, 0, 2).await.expect("range")), [2]);
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(seqs(&c.range(ROOM, EPOCH, 0, 2).await.expect("range")), Vec::<u64>::new());
    assert_eq!(c.head(ROOM).await, Ok(None), "the idle room's stream expired");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs redis-server"]
async fn an_outage_keeps_envelopes_locally_and_writes_them_back() {
    let mut server = Server::start(None).expect("redis-server starts (apt-get install redis-server)");
    let url = server.url();
    let writer = cache(url.clone(), 100, Duration::from_secs(60));
    for seq in 1..=2 {
        assert_eq!(writer.append(&envelope(EPOCH, seq)).await, Ok(Appended::Stored));
    }
    let port = server.port();
    server.stop();
    let t = Instant::now();
    for seq in 3..=4 {
        assert_eq!(writer.append(&envelope(EPOCH, seq)).await, Ok(Appended::Local));
    }
    assert!(matches!(writer.health(), Health::Degraded { .. }));
    assert!(t.elapsed() < Duration::from_secs(5), "never stuck on a dead redis");
    // The writer still answers what it holds.
    assert_eq!(seqs(&writer.range(ROOM, EPOCH, 2, 4).await.expect("range")), [3, 4]);

    // Redis restarts empty (nothing persisted). The room's next envelope
    // writes back what was held locally, so another node sees all of it.
    let _server = Server::start(Some(port)).expect("redis-server restarts");
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut seq = 5;
    loop {
        let r = writer.append(&envelope(EPOCH, seq)).await.expect("append");
        seq += 1;
        if r == Appended::Stored {
            break;
        }
        assert!(Instant::now() < deadline, "did not return to redis");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(writer.health(), Health::Up);
    let reader = cache(url, 100, Duration::from_secs(60));
    let found = seqs(&reader.range(ROOM, EPOCH, 2, seq - 1).await.expect("range"));
    assert_eq!(found, (3..seq).collect::<Vec<_>>(), "what was accepted during the outage reached redis");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs redis-server"]
async fn redis_may_start_after_the_cache() {
    // A port with nothing behind it yet.
    let port = std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port();
    let c = cache(format!("redis://127.0.0.1:{port}"), 100, Duration::from_secs(60));
    let t = Instant::now();
    assert_eq!(c.append(&envelope(EPOCH, 1)).await, Ok(Appended::Local));
    assert!(matches!(c.health(), Health::Degraded { .. }));
    assert_eq!(c.head(ROOM).await, Ok(Some((EPOCH, 1))), "the local fallback answers");
    assert!(t.elapsed() < Duration::from_secs(5), "never stuck on a missing redis");
    let _server = Server::start(Some(port)).expect("redis-server starts");
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut seq = 2;
    while c.append(&envelope(EPOCH, seq)).await != Ok(Appended::Stored) {
        assert!(Instant::now() < deadline, "did not reach redis");
        seq += 1;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(c.health(), Health::Up);
    assert_eq!(seqs(&c.range(ROOM, EPOCH, 0, seq).await.expect("range")), (1..=seq).collect::<Vec<_>>());
}

const STATE_KEY: &str = "roomkit:cache:3:77:state";

fn state(text: &'static str) -> Bytes {
    Bytes::from_static(text.as_bytes())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs redis-server"]
async fn room_states_are_saved_by_compare_and_set() {
    let server = Server::start(None).expect("redis-server starts (apt-get install redis-server)");
    let mut config = RedisCacheConfig::new(server.url());
    config.max_state = 16;
    config.max_age = Duration::from_secs(60);
    let a = RedisCache::new(config.clone()).expect("cache");
    // Another owner, on another node.
    let b = RedisCache::new(config).expect("cache");
    assert_eq!(a.load_state(ROOM).await, Ok(None));
    assert_eq!(a.save_state(ROOM, 0, state("one")).await, Ok(Saved::Stored { version: 1 }));
    // b loaded nothing too: refused, and told the version to load.
    assert_eq!(b.save_state(ROOM, 0, state("rival")).await, Ok(Saved::Conflict { version: 1 }));
    assert_eq!(b.load_state(ROOM).await, Ok(Some((1, state("one")))));
    assert_eq!(b.save_state(ROOM, 1, state("two")).await, Ok(Saved::Stored { version: 2 }));
    assert_eq!(a.save_state(ROOM, 1, state("stale")).await, Ok(Saved::Conflict { version: 2 }));
    // A version above the stored one is accepted (a state held locally
    // during an outage, followed by the next save).
    assert_eq!(a.save_state(ROOM, 7, state("eight")).await, Ok(Saved::Stored { version: 8 }));
    assert_eq!(b.load_state(ROOM).await, Ok(Some((8, state("eight")))));
    // Versions beyond Lua's exact doubles compare as numbers still.
    let big = (1u64 << 60) + 1;
    assert_eq!(a.save_state(ROOM, big, state("big")).await, Ok(Saved::Stored { version: big + 1 }));
    assert_eq!(a.save_state(ROOM, big - 1, state("x")).await, Ok(Saved::Conflict { version: big + 1 }));
    assert_eq!(a.save_state(ROOM, u64::MAX - 1, state("last")).await, Ok(Saved::Stored { version: u64::MAX }));
    assert_eq!(
        a.save_state(ROOM, u64::MAX, state("none")).await,
        Err(SharedCacheError::BadVersion { after: u64::MAX })
    );

    // The size bound: nothing saved.
    let large = Bytes::from(vec![7u8; 17]);
    assert_eq!(
        a.save_state(ROOM, u64::MAX - 1, large).await,
        Err(SharedCacheError::StateTooLarge { size: 17, max: 16 })
    );
    assert_eq!(b.load_state(ROOM).await, Ok(Some((u64::MAX, state("last")))));

    // The hash expires with the room's stream, and an append keeps both.
    let mut c = redis::Client::open(server.url()).expect("url").get_connection().expect("connects");
    let ttl: i64 = redis::cmd("PTTL").arg(STATE_KEY).query(&mut c).expect("pttl");
    assert!(ttl > 0 && ttl <= 60_000, "state expiry {ttl}");
    let _: i64 = redis::cmd("PERSIST").arg(STATE_KEY).query(&mut c).expect("persist");
    a.append(&envelope(EPOCH, 1)).await.expect("append");
    let ttl: i64 = redis::cmd("PTTL").arg(STATE_KEY).query(&mut c).expect("pttl");
    assert!(ttl > 0 && ttl <= 60_000, "an append sets the state's expiry: {ttl}");
    assert_eq!(a.health(), Health::Up);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs redis-server"]
async fn garbage_in_a_state_hash_is_a_typed_error() {
    let server = Server::start(None).expect("redis-server starts (apt-get install redis-server)");
    let cache = cache(server.url(), 10, Duration::from_secs(60));
    let mut c = redis::Client::open(server.url()).expect("url").get_connection().expect("connects");
    fn bad<T>(r: Result<T, SharedCacheError>) -> bool {
        matches!(r, Err(SharedCacheError::BadState(_)))
    }
    let hset = |c: &mut redis::Connection, field: &str, value: &str| {
        let _: i64 = redis::cmd("HSET").arg(STATE_KEY).arg(field).arg(value).query(c).expect("hset");
    };
    // A version that is not a number.
    hset(&mut c, "v", "seven");
    hset(&mut c, "s", "x");
    assert!(bad(cache.load_state(ROOM).await), "{:?}", cache.load_state(ROOM).await);
    assert!(bad(cache.save_state(ROOM, 9, state("x")).await));
    // A version without a state.
    let _: i64 = redis::cmd("HDEL").arg(STATE_KEY).arg("s").query(&mut c).expect("hdel");
    hset(&mut c, "v", "3");
    assert!(bad(cache.load_state(ROOM).await));
    // A state without a version.
    let _: i64 = redis::cmd("DEL").arg(STATE_KEY).query(&mut c).expect("del");
    hset(&mut c, "s", "x");
    assert!(bad(cache.load_state(ROOM).await));
    // A version too large for a u64.
    hset(&mut c, "v", "99999999999999999999999");
    assert!(bad(cache.load_state(ROOM).await));
    assert!(bad(cache.save_state(ROOM, 9, state("x")).await));
    // Not a hash at all.
    let _: i64 = redis::cmd("DEL").arg(STATE_KEY).query(&mut c).expect("del");
    let _: String = redis::cmd("SET").arg(STATE_KEY).arg("junk").query(&mut c).expect("set");
    assert!(bad(cache.load_state(ROOM).await));
    assert!(bad(cache.save_state(ROOM, 9, state("x")).await));
    // Garbage is not an outage: Redis answered.
    assert_eq!(cache.health(), Health::Up);
    // Leading zeros are still a number.
    let _: i64 = redis::cmd("DEL").arg(STATE_KEY).query(&mut c).expect("del");
    hset(&mut c, "v", "0005");
    hset(&mut c, "s", "five");
    assert_eq!(cache.save_state(ROOM, 4, state("x")).await, Ok(Saved::Conflict { version: 5 }));
    assert_eq!(cache.save_state(ROOM, 5, state("six")).await, Ok(Saved::Stored { version: 6 }));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs redis-server"]
async fn an_outage_keeps_the_state_locally_until_the_next_save_reaches_redis() {
    let mut server = Server::start(None).expect("redis-server starts (apt-get install redis-server)");
    let url = server.url();
    let writer = cache(url.clone(), 100, Duration::from_secs(60));
    let reader = cache(url.clone(), 100, Duration::from_secs(60));
    assert_eq!(writer.save_state(ROOM, 0, state("one")).await, Ok(Saved::Stored { version: 1 }));
    let port = server.port();
    server.stop();
    let t = Instant::now();
    assert_eq!(writer.save_state(ROOM, 1, state("two")).await, Ok(Saved::Local { version: 2 }));
    assert!(matches!(writer.health(), Health::Degraded { .. }));
    // The writer answers its own newer state; the local copy is
    // compare-and-set too.
    assert_eq!(writer.load_state(ROOM).await, Ok(Some((2, state("two")))));
    assert_eq!(writer.save_state(ROOM, 1, state("stale")).await, Ok(Saved::Conflict { version: 2 }));
    assert_eq!(writer.save_state(ROOM, 2, state("three")).await, Ok(Saved::Local { version: 3 }));
    // A node holding nothing of its own cannot answer.
    assert!(matches!(reader.load_state(ROOM).await, Err(SharedCacheError::Unavailable(_))));
    assert!(t.elapsed() < Duration::from_secs(5), "never stuck on a dead redis");

    // Redis restarts empty. Until the next save, this process still
    // answers its newer local state.
    let _server = Server::start(Some(port)).expect("redis-server restarts");
    let deadline = Instant::now() + Duration::from_secs(15);
    while writer.load_state(ROOM).await != Ok(Some((3, state("three")))) || writer.health() != Health::Up {
        assert!(Instant::now() < deadline, "did not return to redis");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The next save is accepted above what Redis holds (nothing), and
    // every node sees it.
    assert_eq!(writer.save_state(ROOM, 3, state("four")).await, Ok(Saved::Stored { version: 4 }));
    let deadline = Instant::now() + Duration::from_secs(15);
    while reader.load_state(ROOM).await != Ok(Some((4, state("four")))) {
        assert!(Instant::now() < deadline, "the reader did not return to redis");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(writer.load_state(ROOM).await, Ok(Some((4, state("four")))));
}
