//! Room broadcast to 60,000 connections, 256-byte payloads, in-memory
//! sinks: Roomkit's full path (gate checks and numbering, cache, target
//! resolution, priority lanes, serialize once, drain to connectors) against
//! `tokio::sync::broadcast` and against per-connection `tokio::sync::mpsc`
//! queues fed with `Bytes` clones. Also prints the publish-to-last-queue
//! latency distribution for a signal and the memory of idle connections.
//!
//! Run: `cargo bench -p room-push --bench fanout`.
#![allow(missing_docs)]

use std::alloc::System;
use std::hint::black_box;
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use room_core::{BusinessId, Role, RoomId, RoomKey, Terminal, Timestamp, Uin};
use room_push::{
    Class, ConnSpec, Connector, Frame, Gate, GateConfig, Kind, Message, NodeConfig, PushNode, Quota, SendError,
};
use stats_alloc::{INSTRUMENTED_SYSTEM, Region, StatsAlloc};

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

const CONNS: usize = 60_000;
const PAYLOAD: usize = 256;
const ROOM: RoomKey = RoomKey::new(BusinessId(1), RoomId(1));

/// One in-memory sink per connection: what a websocket writer would have
/// been handed.
struct Sinks {
    bytes: Vec<u64>,
    frames: u64,
}

impl Connector for Sinks {
    fn send(&mut self, frame: &Frame<'_>) -> Result<(), SendError> {
        self.bytes[(frame.conn.0 & 0xFFFF_FFFF) as usize] += frame.body.len() as u64;
        self.frames += 1;
        Ok(())
    }
}

fn gate(now: Timestamp) -> Gate {
    let mut config = GateConfig::default();
    config.room_reliable_quota = Quota::per_second(1_000_000).and_then(|q| q.with_burst(1_000_000)).unwrap();
    let mut gate = Gate::new(config);
    gate.open_room(now, ROOM).unwrap();
    gate
}

fn node() -> PushNode {
    let mut node = PushNode::new(NodeConfig::default());
    for n in 0..CONNS as u64 {
        let role = if n == 0 { Role::Teacher } else { Role::Student };
        node.connect(ConnSpec::new(ROOM, Uin(n + 1), role, Terminal::ALL[n as usize % 7])).unwrap();
    }
    node
}

fn net_bytes(region: &Region<'_, System>) -> f64 {
    let s = region.change();
    s.bytes_allocated as f64 - s.bytes_deallocated as f64
}

fn report_memory_and_latency() {
    let now = Timestamp::from_millis(1_000);
    let region = Region::new(GLOBAL);
    let mut node = node();
    let fresh = net_bytes(&region) / CONNS as f64;
    let mut gate = gate(now);
    let mut sinks = Sinks { bytes: vec![0; CONNS], frames: 0 };
    let payload = Bytes::from(vec![7u8; PAYLOAD]);
    let mut samples = Vec::with_capacity(1_000);
    for i in 0..1_000u64 {
        let t = now.saturating_add(Duration::from_millis(i));
        let msg = Message::new(ROOM, Class::Signal, Kind(1), payload.clone());
        let started = Instant::now();
        let env = gate.publish(t, msg).unwrap();
        node.handle_envelope(t, &env).unwrap();
        samples.push(started.elapsed());
        node.flush(t, &mut sinks);
    }
    // The cache now holds 1,000 signals; lanes are empty but keep capacity.
    let after_traffic = net_bytes(&region) / CONNS as f64;
    samples.sort();
    let pct = |p: f64| samples[((samples.len() as f64 * p) as usize).min(samples.len() - 1)];
    println!(
        "publish -> last of {CONNS} queues, signal: p50 {:?}, p99 {:?}, max {:?}",
        pct(0.50),
        pct(0.99),
        samples[samples.len() - 1]
    );
    println!(
        "push-layer memory per idle connection: {fresh:.0} B fresh, {after_traffic:.0} B after 1,000 broadcasts (incl. the room cache)"
    );
    black_box((&node, &sinks));
}

fn bench_fanout(c: &mut Criterion) {
    report_memory_and_latency();
    let payload = Bytes::from(vec![7u8; PAYLOAD]);
    let mut group = c.benchmark_group("fanout_60k");
    group.throughput(Throughput::Elements(CONNS as u64));
    group.sample_size(30);
    group.measurement_time(Duration::from_secs(8));

    {
        let mut now = Timestamp::from_millis(1_000);
        let mut gate = gate(now);
        let mut node = node();
        let mut sinks = Sinks { bytes: vec![0; CONNS], frames: 0 };
        group.bench_function("roomkit_signal_full_path", |b| {
            b.iter(|| {
                now = now.saturating_add(Duration::from_micros(100));
                let msg = Message::new(ROOM, Class::Signal, Kind(1), payload.clone());
                let env = gate.publish(now, msg).unwrap();
                node.handle_envelope(now, &env).unwrap();
                node.flush(now, &mut sinks)
            })
        });
        assert_eq!(sinks.frames % CONNS as u64, 0);
    }

    {
        let (tx, _) = tokio::sync::broadcast::channel::<Bytes>(16);
        let mut rxs: Vec<_> = (0..CONNS).map(|_| tx.subscribe()).collect();
        let mut sink = vec![0u64; CONNS];
        group.bench_function("tokio_broadcast", |b| {
            b.iter(|| {
                tx.send(payload.clone()).unwrap();
                for (rx, s) in rxs.iter_mut().zip(sink.iter_mut()) {
                    *s += rx.try_recv().unwrap().len() as u64;
                }
            })
        });
        black_box(&sink);
    }

    {
        let (txs, mut rxs): (Vec<_>, Vec<_>) = (0..CONNS).map(|_| tokio::sync::mpsc::channel::<Bytes>(64)).unzip();
        let mut sink = vec![0u64; CONNS];
        group.bench_function("tokio_mpsc_per_connection", |b| {
            b.iter(|| {
                for tx in &txs {
                    tx.try_send(payload.clone()).unwrap();
                }
                for (rx, s) in rxs.iter_mut().zip(sink.iter_mut()) {
                    *s += rx.try_recv().unwrap().len() as u64;
                }
            })
        });
        black_box(&sink);
    }
    group.finish();
}

criterion_group!(benches, bench_fanout);
criterion_main!(benches);
