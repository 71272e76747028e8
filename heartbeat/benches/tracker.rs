//! Tracker benchmark: refresh cost, memory per session and the largest
//! single sweep, at 1M and 10M sessions, against tokio-util's `DelayQueue`
//! (with the (member, terminal) -> key map it needs to find a session).
//!
//! * Refresh: beats for existing sessions in random order, one tick, no
//!   expiry, read from a pre-built stream of beats (as they would arrive from
//!   the network). Ours keyed (hash lookup), hinted (carrying the hint the
//!   last reply returned), and both in batches of 4,096
//!   (`Tracker::beat_batch`); the peer is key-map lookup + `DelayQueue::reset`.
//! * Memory: net bytes a counting allocator saw while the structure was
//!   built, divided by the sessions it holds.
//! * Sweep: every session due in the same tick; the longest single
//!   `handle_timeout` call while all of them are re-checked (default batch
//!   of 4,096 records and suspect queue of 65,536; suspects are drained
//!   between calls, as a host would).
//!
//! Run: `cargo bench -p room-heartbeat --bench tracker`
//! (`TRACKER_BENCH_SIZES=1000000` runs one size only).

use std::alloc::System;
use std::collections::HashMap;
use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use room_core::{BusinessId, MemberKey, RoomId, Terminal, Timestamp, Uin};
use room_heartbeat::{Beat, ConnId, SessionHint, Tracker, TrackerConfig};
use stats_alloc::{INSTRUMENTED_SYSTEM, Region, StatsAlloc};
use tokio_util::time::{DelayQueue, delay_queue::Key};

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

const SIZES: [usize; 2] = [1_000_000, 10_000_000];

/// The sizes to run: all of [`SIZES`], or those listed in
/// `TRACKER_BENCH_SIZES` (comma-separated), for a quicker look at one size.
fn sizes() -> Vec<usize> {
    match std::env::var("TRACKER_BENCH_SIZES") {
        Ok(list) => list.split(',').filter_map(|s| s.trim().replace('_', "").parse().ok()).collect(),
        Err(_) => SIZES.to_vec(),
    }
}
const BATCH: usize = 4_096;
const TIMEOUT: Duration = Duration::from_secs(60);

fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Session `i`: rooms of 600 in 8 businesses, terminals mixed.
fn session(i: usize) -> (MemberKey, Terminal, ConnId) {
    let i = i as u64;
    let member = MemberKey::new(BusinessId((i % 8) as u32 + 1), RoomId(i / 600), Uin(mix(i) % 1_000_000_000_000));
    (member, Terminal::ALL[(i % 7) as usize], ConnId(i))
}

/// A random permutation of `0..n` (Fisher-Yates with a fixed seed).
fn shuffled(n: usize, seed: u64) -> Vec<u32> {
    let mut v: Vec<u32> = (0..n as u32).collect();
    let mut state = seed;
    for i in (1..n).rev() {
        state = mix(state.wrapping_add(0x9e37_79b9_7f4a_7c15));
        v.swap(i, (state % (i as u64 + 1)) as usize);
    }
    v
}

fn net_bytes(region: &Region<'_, System>) -> f64 {
    // stats_alloc already adds realloc growth to bytes_allocated (and
    // shrinkage to bytes_deallocated); bytes_reallocated is a separate tally.
    let s = region.change();
    s.bytes_allocated as f64 - s.bytes_deallocated as f64
}

struct Peer {
    queue: DelayQueue<(MemberKey, Terminal, ConnId)>,
    keys: HashMap<(MemberKey, Terminal), Key, ahash::RandomState>,
}

fn bench_tracker(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap();
    let _enter = runtime.enter();
    let mut report = String::from("| sessions | structure | bytes per session |\n|---:|---|---:|\n");
    let mut sweeps = String::new();
    let mut group = c.benchmark_group("refresh");
    group.throughput(Throughput::Elements(BATCH as u64));
    group.sample_size(20);
    for n in sizes() {
        let join_order = shuffled(n, 1);
        let beat_order = shuffled(n, 2);
        let t0 = Timestamp::from_millis(1_000);

        // ---- ours ----
        let region = Region::new(GLOBAL);
        let mut tracker = Tracker::new(TrackerConfig::default()).unwrap();
        let mut hints = Vec::new();
        let hints_region = Region::new(GLOBAL);
        hints.resize(n, SessionHint::NONE);
        let hints_bytes = net_bytes(&hints_region);
        for &i in &join_order {
            let (m, t, conn) = session(i as usize);
            hints[i as usize] = tracker.join(t0, m, t, conn).unwrap().hint;
            // A host drains events as they come.
            while tracker.poll_event().is_some() {}
        }
        let ours_bytes = net_bytes(&region) - hints_bytes;
        report.push_str(&format!("| {n} | roomkit Tracker | {:.1} |\n", ours_bytes / n as f64));

        // The stream of beats, in arrival order, each carrying its hint.
        let beats: Vec<Beat> = beat_order
            .iter()
            .map(|&i| {
                let (member, terminal, conn) = session(i as usize);
                Beat { member, terminal, conn, hint: hints[i as usize] }
            })
            .collect();
        drop(hints);
        let now = t0 + Duration::from_secs(1);
        let mut cursor = 0usize;
        let next_batch = |cursor: &mut usize| {
            let start = *cursor;
            *cursor = if start + 2 * BATCH > n { 0 } else { start + BATCH };
            &beats[start..start + BATCH]
        };
        group.bench_function(BenchmarkId::new("roomkit keyed beat", n), |b| {
            b.iter(|| {
                for beat in next_batch(&mut cursor) {
                    black_box(tracker.beat(now, beat.member, beat.terminal, beat.conn, SessionHint::NONE).ok());
                }
            })
        });
        group.bench_function(BenchmarkId::new("roomkit hinted beat", n), |b| {
            b.iter(|| {
                for beat in next_batch(&mut cursor) {
                    black_box(tracker.beat(now, beat.member, beat.terminal, beat.conn, beat.hint).ok());
                }
            })
        });
        let mut replies = Vec::with_capacity(BATCH);
        let keyed: Vec<Beat> = beats.iter().map(|b| Beat { hint: SessionHint::NONE, ..*b }).collect();
        let mut keyed_cursor = 0usize;
        group.bench_function(BenchmarkId::new("roomkit keyed beat_batch", n), |b| {
            b.iter(|| {
                let start = keyed_cursor;
                keyed_cursor = if start + 2 * BATCH > n { 0 } else { start + BATCH };
                tracker.beat_batch(now, &keyed[start..start + BATCH], &mut replies);
                black_box(replies.len());
            })
        });
        drop(keyed);
        group.bench_function(BenchmarkId::new("roomkit hinted beat_batch", n), |b| {
            b.iter(|| {
                tracker.beat_batch(now, next_batch(&mut cursor), &mut replies);
                black_box(replies.len());
            })
        });

        // Sweep: a mass timeout, every session silent since `now`.
        let due = now + TIMEOUT;
        let (mut longest, mut calls, mut suspects) = (Duration::ZERO, 0u64, 0usize);
        let sweep_started = Instant::now();
        while tracker.poll_timeout().is_some_and(|t| t <= due) {
            let started = Instant::now();
            tracker.handle_timeout(due);
            longest = longest.max(started.elapsed());
            calls += 1;
            while tracker.poll_suspect().is_some() {
                suspects += 1;
            }
        }
        sweeps.push_str(&format!(
            "| {n} | {calls} | {suspects} | {:.3} ms | {:.1} ms |\n",
            longest.as_secs_f64() * 1e3,
            sweep_started.elapsed().as_secs_f64() * 1e3
        ));
        drop(tracker);

        // ---- DelayQueue + key map ----
        let region = Region::new(GLOBAL);
        let mut peer = Peer { queue: DelayQueue::new(), keys: HashMap::default() };
        for &i in &join_order {
            let (m, t, conn) = session(i as usize);
            let key = peer.queue.insert((m, t, conn), TIMEOUT);
            peer.keys.insert((m, t), key);
        }
        let peer_bytes = net_bytes(&region);
        report.push_str(&format!("| {n} | DelayQueue + key map | {:.1} |\n", peer_bytes / n as f64));
        group.bench_function(BenchmarkId::new("DelayQueue reset", n), |b| {
            b.iter(|| {
                for beat in next_batch(&mut cursor) {
                    if let Some(key) = peer.keys.get(&(beat.member, beat.terminal)) {
                        peer.queue.reset(key, TIMEOUT);
                    }
                }
            })
        });
        drop(peer);
        drop(beats);
    }
    group.finish();
    println!("\nMemory (counting allocator):\n{report}");
    println!(
        "Sweep of a mass timeout (every session due in one tick):\n| sessions | calls | suspects | longest call | total |\n|---:|---:|---:|---:|---:|\n{sweeps}"
    );
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/criterion/tracker-report.md");
    let _ = std::fs::write(path, format!("{report}\n{sweeps}"));
}

criterion_group!(benches, bench_tracker);
criterion_main!(benches);
