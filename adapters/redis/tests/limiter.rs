//! The Redis limiter against a redis-server of its own: the bound holds
//! across nodes, keys always expire, and a Redis outage falls back to the
//! local share and recovers.

use std::time::{Duration, Instant};

use room_core::Timestamp;
use room_push::{Decision, GlobalLimiter, Quota};
use room_redis::{Health, RedisLimiter, RedisLimiterConfig};
use room_testkit::redis::RedisServer as Server;

fn now() -> Timestamp {
    Timestamp::from_millis(1_000)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs redis-server"]
async fn the_bound_holds_across_nodes_and_keys_expire() {
    let server = Server::start(None).expect("redis-server starts (apt-get install redis-server)");
    let quota = Quota::per_second(100).and_then(|q| q.with_burst(10)).expect("valid");
    let nodes: Vec<RedisLimiter> =
        (0..2).map(|_| RedisLimiter::new(RedisLimiterConfig::new(server.url())).expect("limiter")).collect();
    let started = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..8 {
        let l = nodes[i % 2].clone();
        tasks.push(tokio::spawn(async move {
            let mut ok = 0u64;
            let end = Instant::now() + Duration::from_millis(500);
            while Instant::now() < end {
                if l.check("room-7:chat", quota, now(), 1).await == Ok(Decision::Allowed) {
                    ok += 1;
                }
            }
            ok
        }));
    }
    let mut accepted = 0;
    for t in tasks {
        accepted += t.await.expect("task");
    }
    let elapsed = started.elapsed().as_millis() as u64 + 20;
    let bound = 10 + elapsed * 100 / 1000 + 1;
    assert!(accepted <= bound, "{accepted} accepted, bound {bound}");
    assert!(accepted >= 10, "at least the burst: {accepted}");
    assert_eq!(nodes[0].health(), Health::Up);
    // Every key the limiter wrote expires.
    let mut c = redis::Client::open(server.url()).expect("url").get_connection().expect("connects");
    let keys: Vec<String> = redis::cmd("KEYS").arg("roomkit:limit:*").query(&mut c).expect("keys");
    assert!(!keys.is_empty());
    for k in keys {
        let ttl: i64 = redis::cmd("PTTL").arg(&k).query(&mut c).expect("pttl");
        assert!(ttl > 0, "{k} never expires ({ttl})");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs redis-server"]
async fn an_outage_falls_back_to_the_local_share_and_recovers() {
    let mut server = Server::start(None).expect("redis-server starts (apt-get install redis-server)");
    let mut config = RedisLimiterConfig::new(server.url());
    config.expected_nodes = 2;
    config.retry_every = Duration::from_millis(100);
    let limiter = RedisLimiter::new(config).expect("limiter");
    let quota = Quota::per_second(1_000).and_then(|q| q.with_burst(5)).expect("valid");
    assert_eq!(limiter.check("k", quota, now(), 1).await, Ok(Decision::Allowed));
    assert_eq!(limiter.health(), Health::Up);
    let port = server.port();
    server.stop();
    // Checks keep answering, from the local share, and say so.
    let t = Instant::now();
    let mut allowed = 0;
    for i in 0..20 {
        if limiter.check("k", quota, Timestamp::from_millis(2_000 + i), 1).await == Ok(Decision::Allowed) {
            allowed += 1;
        }
    }
    assert!(matches!(limiter.health(), Health::Degraded { .. }));
    assert!(allowed >= 5, "the local share still admits traffic: {allowed}");
    assert!(t.elapsed() < Duration::from_secs(10), "never stuck");
    // Redis comes back on the same port: the limiter returns to it.
    let _server = Server::start(Some(port)).expect("redis-server restarts");
    let deadline = Instant::now() + Duration::from_secs(15);
    while limiter.health() != Health::Up {
        assert!(Instant::now() < deadline, "did not return to redis");
        let _ = limiter.check("k", quota, now(), 1).await;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
