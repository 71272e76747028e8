//! The NATS adapter against a nats-server of its own (JetStream, temp
//! store): the bus delivers each room message once per interested node and
//! drops garbage; the registry forms, loses and regains nodes and ignores
//! bad entries; replication runs over mailboxes; and everything comes back
//! after NATS restarts or starts late.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use room_core::{BusinessId, MemberKey, NodeId, Role, RoomId, RoomKey, Terminal, Timestamp, Uin};
use room_memberlist::{MemberStore, Replica, ReplicaConfig, WriteOp};
use room_nats::{Health, Mailbox, NatsBus, NatsConfig, NodeRecord, Registry, RegistryConfig, connect, replicate};
use room_push::{Bus, Class, Envelope, Kind, Message};
use room_testkit::nats::NatsServer;

const ROOM: RoomKey = RoomKey::new(BusinessId(1), RoomId(9));

fn envelope(room: RoomKey, seq: u64) -> Envelope {
    Envelope {
        epoch: 5,
        seq,
        accepted_at: Timestamp::from_millis(seq),
        message: Message::new(room, Class::Teacher, Kind(2), format!("m{seq}")),
    }
}

async fn conn(url: &str) -> room_nats::Connection {
    connect(&NatsConfig::new(url)).await.expect("connects")
}

/// Waits for `cond`, up to `limit`.
async fn eventually(limit: Duration, what: &str, mut cond: impl FnMut() -> bool) -> Duration {
    let t = Instant::now();
    while !cond() {
        assert!(t.elapsed() < limit, "{what}: not within {limit:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    t.elapsed()
}

fn record(node: u64) -> NodeRecord {
    NodeRecord { node: NodeId(node), weight: 100, addr: format!("127.0.0.1:{}", 9000 + node), incarnation: 1 }
}

fn fast() -> RegistryConfig {
    RegistryConfig::new().with_interval(Duration::from_millis(200))
}

fn nodes(r: &Registry) -> Vec<u64> {
    r.view().routable().map(|(n, _)| n.0).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs nats-server"]
async fn the_bus_delivers_each_room_message_once_per_interested_node() {
    let server = NatsServer::start().expect("nats-server starts (apt-get install nats-server)");
    let (a, b) = (NatsBus::new(conn(&server.url()).await, 1024), NatsBus::new(conn(&server.url()).await, 1024));
    let other_room = RoomKey::new(BusinessId(1), RoomId(10));
    let mut sa = a.subscribe(NodeId(1)).await.expect("subscribe");
    let mut sb = b.subscribe(NodeId(2)).await.expect("subscribe");
    a.set_interest(NodeId(1), ROOM, true).await.expect("interest");
    a.set_interest(NodeId(1), ROOM, true).await.expect("interest twice is one subscription");
    b.set_interest(NodeId(2), ROOM, true).await.expect("interest");
    b.set_interest(NodeId(2), other_room, true).await.expect("interest");
    a.connection().client().flush().await.expect("flush");
    b.connection().client().flush().await.expect("flush");
    // Garbage on the room's subject, and an envelope of another room on it.
    let subject = a.subject(ROOM);
    a.connection().client().publish(subject.clone(), "junk".into()).await.expect("publish");
    a.connection().client().publish(subject, envelope(other_room, 1).encode()).await.expect("publish");
    for seq in 1..=100 {
        a.publish(&envelope(ROOM, seq)).await.expect("publish");
    }
    b.publish(&envelope(other_room, 1)).await.expect("publish");
    let got_a: Vec<u64> = (&mut sa).take(100).map(|e| e.seq).collect().await;
    assert_eq!(got_a, (1..=100).collect::<Vec<_>>(), "once each, in order");
    let got_b: Vec<(RoomId, u64)> = (&mut sb).take(101).map(|e| (e.message.room.room, e.seq)).collect().await;
    assert_eq!(got_b.iter().filter(|(r, _)| *r == ROOM.room).count(), 100);
    assert!(got_b.contains(&(other_room.room, 1)));
    // Nothing else arrives: no duplicates, no garbage.
    assert!(tokio::time::timeout(Duration::from_millis(300), sa.next()).await.is_err());
    assert_eq!(a.garbage() + b.garbage(), 4, "junk and a foreign envelope, seen by both nodes");
    // Losing interest stops delivery.
    a.set_interest(NodeId(1), ROOM, false).await.expect("no interest");
    b.publish(&envelope(ROOM, 101)).await.expect("publish");
    assert_eq!(sb.next().await.map(|e| e.seq), Some(101));
    assert!(tokio::time::timeout(Duration::from_millis(300), sa.next()).await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs nats-server"]
async fn the_registry_forms_loses_and_regains_nodes() {
    let mut server = NatsServer::start().expect("nats-server starts (apt-get install nats-server)");
    let url = server.url();
    let mut regs = Vec::new();
    for n in 1..=3 {
        regs.push(Registry::join(conn(&url).await, fast(), record(n)).expect("join"));
    }
    let watcher = Registry::watch(conn(&url).await, fast()).expect("watch");
    // The watcher reads the bucket on its own connection: it may see the
    // nodes after they see each other.
    eventually(Duration::from_secs(10), "three nodes", || {
        regs.iter().all(|r| nodes(r) == [1, 2, 3]) && nodes(&watcher) == [1, 2, 3]
    })
    .await;
    assert_eq!(watcher.records().get(&NodeId(2)).map(|r| r.addr.clone()), Some("127.0.0.1:9002".into()));

    // A bad entry (garbage, or a record under another node's key) is ignored.
    let js = async_nats::jetstream::new(conn(&url).await.client().clone());
    let kv = js.get_key_value("roomkit_nodes").await.expect("bucket");
    kv.put("77", "not json".into()).await.expect("put");
    kv.put("78", serde_json::to_vec(&record(1)).expect("json").into()).await.expect("put");
    eventually(Duration::from_secs(5), "bad entries counted", || watcher.errors() >= 2).await;
    assert_eq!(nodes(&watcher), [1, 2, 3]);

    // A node that stops re-putting (crashed) drops out within the ttl.
    let crashed = regs.remove(2);
    drop(crashed);
    let t = eventually(Duration::from_secs(5), "node 3 out", || nodes(&watcher) == [1, 2]).await;
    println!("a crashed node left the view after {t:?} (interval 200 ms, ttl 600 ms)");
    // A node that leaves is out at once.
    let leaving = regs.remove(1);
    leaving.leave().await.expect("leave");
    eventually(Duration::from_millis(500), "node 2 out", || nodes(&watcher) == [1]).await;

    // NATS restarts (same store): the watchers start again and the nodes re-put.
    server.stop();
    tokio::time::sleep(Duration::from_millis(300)).await;
    server.restart().expect("nats-server restarts");
    regs.push(Registry::join(conn(&url).await, fast(), record(4)).expect("join"));
    let t = eventually(Duration::from_secs(15), "view after restart", || {
        nodes(&watcher) == [1, 4] && nodes(&regs[0]) == [1, 4]
    })
    .await;
    println!("after a NATS restart the view was whole again in {t:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs nats-server"]
async fn nats_may_start_after_the_nodes() {
    // Nothing listens on the port yet.
    let mut server = NatsServer::start().expect("nats-server starts (apt-get install nats-server)");
    let url = server.url();
    server.stop();
    let c = conn(&url).await;
    assert_eq!(c.health(), Health::Down);
    let reg = Registry::join(c.clone(), fast(), record(1)).expect("join does not wait for NATS");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(reg.errors() > 0 || nodes(&reg).is_empty());
    server.restart().expect("nats-server starts");
    eventually(Duration::from_secs(15), "registered once NATS is up", || nodes(&reg) == [1]).await;
    assert_eq!(c.health(), Health::Up);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs nats-server"]
async fn member_lists_replicate_over_nats() {
    let server = NatsServer::start().expect("nats-server starts (apt-get install nats-server)");
    let url = server.url();
    let mut replicas = Vec::new();
    let mut tasks = Vec::new();
    let mut regs = Vec::new();
    let mut mailboxes = Vec::new();
    for n in 1..=3u64 {
        let c = conn(&url).await;
        let reg = Registry::join(c.clone(), fast(), record(n)).expect("join");
        let replica = Arc::new(Replica::new(ReplicaConfig::new(NodeId(n))));
        let mailbox = Mailbox::new(c, NodeId(n), "members").expect("mailbox");
        mailboxes.push(mailbox.clone());
        tasks.push(tokio::spawn(replicate(replica.clone(), mailbox, reg.changes(), None)));
        replicas.push(replica);
        regs.push(reg);
    }
    eventually(Duration::from_secs(10), "three nodes", || regs.iter().all(|r| nodes(r) == [1, 2, 3])).await;
    let primary = replicas[0].owners(ROOM)[0];
    let at = &replicas[(primary.0 - 1) as usize];
    let now = Timestamp::from_micros(
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_micros() as u64,
    );
    for uin in 0..300u64 {
        let op = WriteOp::Enter { uin: Uin(uin), role: Role::Student, terminal: Terminal::Web, attrs: None };
        at.apply(now, ROOM, &[op]).expect("owner").into_iter().for_each(|r| {
            r.expect("entered");
        });
    }
    eventually(Duration::from_secs(10), "replicated to every owner", || {
        replicas.iter().all(|r| r.counts(ROOM).map(|c| c.total()) == Some(300))
    })
    .await;
    assert!(replicas.iter().all(|r| r.contains(MemberKey::new(ROOM.bid, ROOM.room, Uin(299)))));

    // Garbage to a node's mailbox is counted and dropped.
    let probe = Mailbox::new(conn(&url).await, NodeId(99), "members").expect("mailbox");
    probe.send(NodeId(1), b"\xff\xfe not postcard").await.expect("send");
    probe.send(NodeId(1), b"short").await.expect("send");
    eventually(Duration::from_secs(5), "garbage counted", || mailboxes[0].garbage() == 2).await;
    assert_eq!(replicas[0].counts(ROOM).map(|c| c.total()), Some(300), "nothing changed");
    for t in tasks {
        t.abort();
    }
}

/// A push node that stalls loses envelopes on the bus (NATS drops for a
/// slow consumer); it sees the gaps and refills them from the Redis cache
/// the gate wrote first, so every envelope is delivered, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs nats-server and redis-server"]
async fn a_stalled_node_refills_what_nats_dropped_from_redis() {
    use room_push::SharedCache;
    use room_push::shared_cache::missing_before;
    let server = NatsServer::start().expect("nats-server starts (apt-get install nats-server)");
    let redis = room_testkit::redis::RedisServer::start(None).expect("redis-server starts");
    let mut cache_config = room_redis::RedisCacheConfig::new(redis.url());
    // The whole burst fits the cache's window.
    cache_config.max_len = 4_096;
    let cache = room_redis::RedisCache::new(cache_config).expect("cache");
    let publisher = NatsBus::new(conn(&server.url()).await, 1024);
    let mut small = NatsConfig::new(server.url());
    small.subscription_capacity = 8;
    let node = NatsBus::new(connect(&small).await.expect("connects"), 8);
    let mut stream = node.subscribe(NodeId(2)).await.expect("subscribe");
    node.set_interest(NodeId(2), ROOM, true).await.expect("interest");
    node.connection().client().flush().await.expect("flush");
    const N: u64 = 3_000;
    // The gate: cache first, then the bus. The node does not read meanwhile.
    for seq in 1..=N {
        let env = envelope(ROOM, seq);
        cache.append(&env).await.expect("cached");
        publisher.publish(&env).await.expect("published");
    }
    publisher.connection().client().flush().await.expect("flush");
    // The node wakes up and reads what the bus kept, refilling gaps.
    let mut head: Option<(u64, u64)> = Some((5, 0));
    let mut delivered = Vec::new();
    let (mut from_bus, mut refilled) = (0u64, 0u64);
    let take = |head: &mut Option<(u64, u64)>, delivered: &mut Vec<u64>, e: &Envelope| {
        if head.is_some_and(|(_, h)| e.seq == h + 1) {
            delivered.push(e.seq);
            *head = Some((e.epoch, e.seq));
        }
    };
    while let Ok(Some(env)) = tokio::time::timeout(Duration::from_millis(500), stream.next()).await {
        from_bus += 1;
        if let Some((after, upto)) = missing_before(head, &env).or_else(|| {
            // The very first envelopes may be the ones dropped.
            head.filter(|(_, h)| *h == 0 && env.seq > 1).map(|_| (0, env.seq - 1))
        }) {
            for m in cache.range(ROOM, env.epoch, after, upto).await.expect("range") {
                refilled += 1;
                take(&mut head, &mut delivered, &m);
            }
        }
        take(&mut head, &mut delivered, &env);
    }
    // What was dropped at the very end shows up on the client's next check.
    let (_, h) = head.expect("a head");
    if h < N {
        for m in cache.range(ROOM, 5, h, N).await.expect("range") {
            refilled += 1;
            take(&mut head, &mut delivered, &m);
        }
    }
    println!("{N} published; {from_bus} came over the stalled node's bus, {refilled} refilled from redis");
    assert!(from_bus < N, "NATS dropped nothing: the test did not stall the node");
    assert!(refilled > 0);
    let in_order = delivered.iter().enumerate().all(|(i, &seq)| seq == i as u64 + 1);
    assert!(in_order && delivered.len() as u64 == N, "every envelope, once, in order: got {} of {N}", delivered.len());
}
