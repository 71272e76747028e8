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
    eventually(Duration::from_secs(10), "three nodes", || regs.iter().all(|r| nodes(r) == [1, 2, 3])).await;
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
