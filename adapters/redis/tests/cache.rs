//! The Redis Streams recovery cache against a redis-server of its own:
//! ranges, duplicates, bounds in length and age, epochs, garbage in a
//! stream, and an outage that falls back to a local cache and writes it
//! back.

use std::time::{Duration, Instant};

use room_core::{BusinessId, RoomId, RoomKey, Timestamp};
use room_push::{Appended, Class, Envelope, Kind, Message, SharedCache, SharedCacheError};
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
