//! Cross-node fan-out: one room spread over 3 push nodes, envelopes (256
//! B payload) published by the room's gate and received by every node.
//! Through NATS (room-nats's bus: one subject per room, one subscription
//! per interested node) against Redis PUBLISH/SUBSCRIBE carrying the same
//! bytes to 3 subscriber connections. Both engines are started by the
//! bench on free ports (nats-server -js, redis-server), on this machine.
//!
//! Each iteration publishes a batch and waits until all 3 nodes hold all
//! of it: `batch_1000` measures throughput (both publishers pipeline:
//! NATS buffers publishes, Redis gets one pipeline), `one_message` the
//! latency of a single envelope to the last of the 3 nodes.
//!
//! Run: `cargo bench -p room-nats --bench fanout`.
#![allow(missing_docs)]

use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use futures::StreamExt;
use futures::stream::BoxStream;
use room_core::{BusinessId, NodeId, RoomId, RoomKey, Timestamp};
use room_nats::{NatsBus, NatsConfig, connect};
use room_push::{Bus, Class, Envelope, Kind, Message};

const NODES: usize = 3;
const ROOM: RoomKey = RoomKey::new(BusinessId(1), RoomId(42));

fn envelopes(n: usize) -> Vec<Envelope> {
    (1..=n as u64)
        .map(|seq| Envelope {
            epoch: 1,
            seq,
            accepted_at: Timestamp::from_millis(seq),
            message: Message::new(ROOM, Class::Teacher, Kind(2), vec![b'x'; 256]),
        })
        .collect()
}

struct NatsSide {
    publisher: NatsBus,
    nodes: Vec<BoxStream<'static, Envelope>>,
    /// The nodes' buses: their subscriptions live as long as they do.
    _buses: Vec<NatsBus>,
}

impl NatsSide {
    async fn new(url: &str) -> NatsSide {
        let publisher = NatsBus::new(connect(&NatsConfig::new(url)).await.expect("nats"), 1 << 16);
        let mut nodes = Vec::new();
        let mut buses = Vec::new();
        for n in 0..NODES {
            // Each node has its own connection, as separate processes would.
            let bus = NatsBus::new(connect(&NatsConfig::new(url)).await.expect("nats"), 1 << 16);
            let node = NodeId(n as u64 + 1);
            nodes.push(bus.subscribe(node).await.expect("subscribe"));
            bus.set_interest(node, ROOM, true).await.expect("interest");
            bus.connection().client().flush().await.expect("flush");
            buses.push(bus);
        }
        NatsSide { publisher, nodes, _buses: buses }
    }

    async fn round(&mut self, batch: &[Envelope]) -> Duration {
        let t = Instant::now();
        for e in batch {
            self.publisher.publish(e).await.expect("publish");
        }
        self.publisher.connection().client().flush().await.expect("flush");
        for node in &mut self.nodes {
            for _ in 0..batch.len() {
                let e = node.next().await.expect("an envelope");
                std::hint::black_box(e);
            }
        }
        t.elapsed()
    }
}

struct RedisSide {
    publisher: redis::aio::MultiplexedConnection,
    nodes: Vec<redis::aio::PubSubStream>,
}

impl RedisSide {
    async fn new(url: &str) -> RedisSide {
        let client = redis::Client::open(url).expect("url");
        let publisher = client.get_multiplexed_async_connection().await.expect("redis");
        let mut nodes = Vec::new();
        for _ in 0..NODES {
            let mut pubsub = client.get_async_pubsub().await.expect("pubsub");
            pubsub.subscribe("roomkit.room.1.42").await.expect("subscribe");
            nodes.push(pubsub.into_on_message());
        }
        RedisSide { publisher, nodes }
    }

    async fn round(&mut self, batch: &[Envelope]) -> Duration {
        let t = Instant::now();
        let mut pipe = redis::pipe();
        for e in batch {
            pipe.cmd("PUBLISH").arg("roomkit.room.1.42").arg(e.encode().as_ref()).ignore();
        }
        let () = pipe.query_async(&mut self.publisher).await.expect("publish");
        for node in &mut self.nodes {
            for _ in 0..batch.len() {
                let msg = node.next().await.expect("a message");
                // Decode as the bus does, so both sides do the same work.
                let bytes = bytes::Bytes::copy_from_slice(msg.get_payload_bytes());
                std::hint::black_box(Envelope::decode(&bytes).expect("an envelope"));
            }
        }
        t.elapsed()
    }
}

fn bench(c: &mut Criterion) {
    let nats = room_testkit::nats::NatsServer::start().expect("nats-server");
    let redis_server = room_testkit::redis::RedisServer::start(None).expect("redis-server");
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let mut n = rt.block_on(NatsSide::new(&nats.url()));
    let mut r = rt.block_on(RedisSide::new(&redis_server.url()));
    for (size, name) in [(1_000usize, "batch_1000"), (1, "one_message")] {
        let batch = envelopes(size);
        // Warm up both paths.
        rt.block_on(n.round(&batch));
        rt.block_on(r.round(&batch));
        let mut g = c.benchmark_group(format!("fanout_3_nodes_{name}"));
        g.throughput(Throughput::Elements((size * NODES) as u64));
        g.sample_size(if size > 1 { 30 } else { 200 });
        g.bench_function("nats_subject_per_room", |b| {
            b.iter_custom(|iters| (0..iters).map(|_| rt.block_on(n.round(&batch))).sum())
        });
        g.bench_function("redis_publish", |b| {
            b.iter_custom(|iters| (0..iters).map(|_| rt.block_on(r.round(&batch))).sum())
        });
        g.finish();
    }
    drop(nats);
    drop(redis_server);
}

criterion_group!(benches, bench);
criterion_main!(benches);
