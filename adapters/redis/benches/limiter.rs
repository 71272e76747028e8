//! Global limiter checks through Redis: one round trip per check (a Lua
//! GCRA), many checks in flight on one multiplexed connection (pipelined).
//! Starts its own redis-server on a free port.
//!
//! Run: `cargo bench -p room-redis --bench limiter`.
#![allow(missing_docs)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use room_core::Timestamp;
use room_push::{GlobalLimiter, LocalGlobalLimiter, Quota};
use room_redis::{RedisLimiter, RedisLimiterConfig};

const CHECKS: usize = 10_000;
const IN_FLIGHT: usize = 64;

async fn batch(limiter: Arc<dyn GlobalLimiter>, quota: Quota) -> Vec<Duration> {
    let mut tasks = Vec::with_capacity(IN_FLIGHT);
    for t in 0..IN_FLIGHT {
        let limiter = limiter.clone();
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::with_capacity(CHECKS / IN_FLIGHT);
            for i in 0..CHECKS / IN_FLIGHT {
                let key = format!("user:{}", (t * 7_919 + i) % 5_000);
                let started = Instant::now();
                let _ = limiter.check(&key, quota, Timestamp::from_millis(1_000), 1).await;
                lat.push(started.elapsed());
            }
            lat
        }));
    }
    let mut all = Vec::with_capacity(CHECKS);
    for t in tasks {
        all.extend(t.await.expect("task"));
    }
    all
}

fn bench(c: &mut Criterion) {
    let server = room_testkit::redis::RedisServer::start(None).expect("redis-server");
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let quota = Quota::per_second(1_000).and_then(|q| q.with_burst(1_000)).unwrap();
    let redis: Arc<dyn GlobalLimiter> = {
        let _g = rt.enter();
        let mut config = RedisLimiterConfig::new(server.url());
        config.timeout = Duration::from_secs(2);
        Arc::new(RedisLimiter::new(config).unwrap())
    };
    let local: Arc<dyn GlobalLimiter> = Arc::new(LocalGlobalLimiter::new(100_000));
    // Warm up (connect, load the script), then the latency distribution.
    rt.block_on(batch(redis.clone(), quota));
    let mut lat = rt.block_on(batch(redis.clone(), quota));
    lat.sort();
    let p = |q: f64| lat[((lat.len() as f64 * q) as usize).min(lat.len() - 1)];
    println!(
        "redis limiter, {IN_FLIGHT} checks in flight: p50 {:?}, p99 {:?}, max {:?}",
        p(0.5),
        p(0.99),
        lat[lat.len() - 1]
    );
    let mut g = c.benchmark_group("global_limiter_10k_checks");
    g.throughput(Throughput::Elements(CHECKS as u64));
    g.sample_size(20);
    g.bench_function("redis_lua_gcra_pipelined", |b| b.iter(|| rt.block_on(batch(redis.clone(), quota))));
    g.bench_function("local_in_memory", |b| b.iter(|| rt.block_on(batch(local.clone(), quota))));
    g.finish();
    drop(server);
}

criterion_group!(benches, bench);
criterion_main!(benches);
