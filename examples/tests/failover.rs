//! Three cluster nodes in process over a redis-server and a nats-server of
//! the test's own, a class of 3,000 members with chat and teacher
//! messages, and then: (a) one node killed, (b) Redis restarted, (c) NATS
//! restarted. Every teacher message must reach every member (delivered, or
//! recovered by a check), nobody may be taken out, and the member lists on
//! the survivors must stay complete. The figures are printed.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use examples::classroom::{DEMO_BID, demo_ticket};
use examples::cluster::{ClientConn, ClusterConfig, ClusterError, ClusterNode};
use room_core::{MemberKey, NodeId, Role, RoomId, RoomKey, Terminal, Uin};
use room_memberlist::MemberStore;
use room_nats::RegistryConfig;
use room_push::{CheckAnswer, FrameKind, Received, Recovery, ReliableReceiver};
use room_testkit::nats::NatsServer;
use room_testkit::redis::RedisServer;
use roomkit::service::Outbound;
use roomkit::ticket::KeyRing;

const MEMBERS: u64 = 3_000;
const ROOM_ID: u64 = 5;
const ROOM: RoomKey = RoomKey::new(DEMO_BID, RoomId(ROOM_ID));
const HEARTBEAT: Duration = Duration::from_millis(500);

fn keys() -> KeyRing {
    KeyRing::new("failover", b"failover-test-key-0123456789abcdef".to_vec()).expect("valid")
}

struct Client {
    uin: u64,
    role: Role,
    node: usize,
    conn: ClientConn,
    rx: ReliableReceiver,
    texts: BTreeSet<String>,
    resets: u64,
    recovered: u64,
    reconnects: u64,
}

/// The text of a teacher message body: `{"kind":2,"from":1,"data":{"text":"m7"}}`.
fn text_of(body: &[u8]) -> Option<String> {
    let s = std::str::from_utf8(body).ok()?;
    let i = s.find("\"text\":\"")? + 8;
    Some(s[i..i + s[i..].find('"')?].to_owned())
}

impl Client {
    fn connect(nodes: &[ClusterNode], node: usize, uin: u64, role: Role) -> ClientConn {
        let terminal = if role == Role::Teacher { Terminal::Pc } else { Terminal::Web };
        nodes[node].connect(ROOM, &demo_ticket(&keys(), ROOM_ID, uin, role, terminal)).expect("enters")
    }

    /// Handles what arrived; false if the connection is gone.
    async fn drain(&mut self, nodes: &[ClusterNode]) -> bool {
        loop {
            match self.conn.outbound.try_recv() {
                Ok(Outbound::Push { header, body }) => match self.rx.on_frame(&header) {
                    Received::Deliver if header.kind == FrameKind::Message => {
                        self.texts.extend(text_of(&body));
                    }
                    Received::Check { epoch, after } => self.check(nodes, epoch, after).await,
                    _ => {}
                },
                Ok(_) => {}
                Err(tokio::sync::mpsc::error::TryRecvError::Empty) => return true,
                Err(tokio::sync::mpsc::error::TryRecvError::Disconnected) => return false,
            }
        }
    }

    async fn check(&mut self, nodes: &[ClusterNode], epoch: u64, after: u64) {
        let Ok(answer) = nodes[self.node].check(self.conn.id, epoch, after).await else { return };
        let frames = match &answer {
            CheckAnswer::Messages { frames, .. } => frames.clone(),
            _ => Vec::new(),
        };
        match self.rx.on_answer(&answer) {
            Recovery::Delivered(seqs) => {
                for f in frames.iter().filter(|f| seqs.contains(&f.header.seq)) {
                    self.recovered += 1;
                    self.texts.extend(text_of(&f.body));
                }
            }
            Recovery::Reset { .. } => self.resets += 1,
            _ => {}
        }
    }

    /// The node died: connect to the next live one and ask for what was
    /// missed since the last contiguous number.
    async fn reconnect(&mut self, nodes: &[ClusterNode], alive: &[bool]) {
        let mut next = (self.node + 1) % nodes.len();
        while !alive[next] {
            next = (next + 1) % nodes.len();
        }
        self.node = next;
        self.conn = Client::connect(nodes, next, self.uin, self.role);
        self.reconnects += 1;
        let (epoch, after) = self.rx.ack();
        self.check(nodes, epoch, after).await;
    }
}

struct Class {
    nodes: Vec<ClusterNode>,
    alive: Vec<bool>,
    clients: Vec<Client>,
    said: u64,
    chat_sent: u64,
    next_beat: Instant,
    next_say: Instant,
    next_chat: Instant,
    /// Clients of this node do not read their frames (they are in flight,
    /// and die with the node).
    unread: Option<usize>,
}

impl Class {
    /// Runs the class (beats, teacher messages, chat, client processing)
    /// for `d`.
    async fn run(&mut self, d: Duration) {
        let end = Instant::now() + d;
        while Instant::now() < end {
            self.step().await;
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    async fn step(&mut self) {
        let now = Instant::now();
        if now >= self.next_say {
            self.next_say += Duration::from_millis(100);
            self.said += 1;
            let teacher = &self.clients[0];
            let _ = self.nodes[teacher.node].say(teacher.conn.id, &format!("m{}", self.said));
        }
        if now >= self.next_chat {
            self.next_chat += Duration::from_millis(50);
            let c = &self.clients[1 + (self.chat_sent as usize % 20)];
            let _ = self.nodes[c.node].chat(c.conn.id, &format!("chat {}", self.chat_sent));
            self.chat_sent += 1;
        }
        let beat = now >= self.next_beat;
        if beat {
            self.next_beat += HEARTBEAT;
        }
        for i in 0..self.clients.len() {
            let (nodes, alive) = (&self.nodes, &self.alive);
            let c = &mut self.clients[i];
            if self.unread == Some(c.node) && alive[c.node] {
                if beat {
                    let _ = nodes[c.node].beat(c.conn.id);
                }
                continue;
            }
            if !c.drain(nodes).await {
                c.reconnect(nodes, alive).await;
            }
            if beat {
                let _ = nodes[c.node].beat(c.conn.id);
            }
        }
    }

    /// One full round of beats from every client, now.
    fn beat_round(&mut self) {
        for c in &self.clients {
            let _ = self.nodes[c.node].beat(c.conn.id);
        }
    }

    fn survivors(&self) -> impl Iterator<Item = &ClusterNode> {
        self.nodes.iter().zip(&self.alive).filter(|(_, a)| **a).map(|(n, _)| n)
    }

    fn unowned_sessions(&self) -> usize {
        (1..=MEMBERS)
            .filter(|&uin| {
                let m = MemberKey::new(DEMO_BID, RoomId(ROOM_ID), Uin(uin));
                !self.survivors().any(|n| n.owns_session(&m))
            })
            .count()
    }

    fn listed(&self) -> Vec<u32> {
        self.survivors().map(|n| n.members().counts(ROOM).map_or(0, |c| c.total())).collect()
    }

    async fn until(&mut self, limit: Duration, what: &str, cond: impl Fn(&Class) -> bool) -> Duration {
        let t = Instant::now();
        while !cond(self) {
            assert!(t.elapsed() < limit, "{what}: not within {limit:?}");
            self.step().await;
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        t.elapsed()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs redis-server and nats-server"]
async fn a_class_survives_a_node_kill_and_engine_restarts() {
    let redis = RedisServer::start(None).expect("redis-server starts (apt-get install redis-server)");
    let mut nats = NatsServer::start().expect("nats-server starts (apt-get install nats-server)");
    let mut nodes = Vec::new();
    for n in 1..=3 {
        let mut config = ClusterConfig::new(NodeId(n), &nats.url(), &redis.url(), keys());
        config.heartbeat = HEARTBEAT;
        config.registry = RegistryConfig::new().with_interval(Duration::from_millis(200));
        config.addr = format!("in-process-{n}");
        nodes.push(ClusterNode::start(config).await.expect("node starts"));
    }
    let formed = Instant::now();
    while !nodes.iter().all(|n| n.view().len() == 3) {
        assert!(formed.elapsed() < Duration::from_secs(10), "the cluster did not form");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    println!("cluster of 3 formed in {:?}", formed.elapsed());

    // The node to kill is the room's owner (its gate numbers the room's
    // messages); the teacher connects elsewhere.
    let owner = nodes[0].room_owner(ROOM).expect("a route");
    let victim = nodes.iter().position(|n| n.id() == owner).expect("an owner");
    let teacher_node = (victim + 1) % 3;
    // The class: the teacher and 2,999 students, spread over the nodes.
    let t = Instant::now();
    let mut clients = Vec::new();
    for uin in 1..=MEMBERS {
        let role = if uin == 1 { Role::Teacher } else { Role::Student };
        let node = if uin == 1 { teacher_node } else { (uin as usize) % 3 };
        let conn = Client::connect(&nodes, node, uin, role);
        let rx = ReliableReceiver::resume(conn.epoch, conn.head);
        clients.push(Client {
            uin,
            role,
            node,
            conn,
            rx,
            texts: BTreeSet::new(),
            resets: 0,
            recovered: 0,
            reconnects: 0,
        });
    }
    println!("{MEMBERS} members connected in {:?}", t.elapsed());
    let now = Instant::now();
    let mut class = Class {
        nodes,
        alive: vec![true; 3],
        clients,
        said: 0,
        chat_sent: 0,
        next_beat: now,
        next_say: now + Duration::from_secs(60 * 60),
        next_chat: now + Duration::from_secs(60 * 60),
        unread: None,
    };
    let t = class
        .until(Duration::from_secs(30), "member lists complete", |c| {
            c.listed().iter().all(|&n| n == MEMBERS as u32) && c.unowned_sessions() == 0
        })
        .await;
    println!("member lists complete on every node, every session owned, {t:?} later");
    // The teacher starts, and 20 students chat at 20 lines/s.
    class.next_say = Instant::now();
    class.next_chat = Instant::now();
    class.run(Duration::from_secs(2)).await;

    // (a) Kill the room's owner. Its clients' last second of frames is
    // still in flight when it dies.
    class.unread = Some(victim);
    class.run(Duration::from_secs(1)).await;
    let exits_before: u64 = class.nodes.iter().map(|n| n.stats().timed_out + n.stats().left).sum();
    assert_eq!(exits_before, 0, "nobody left before the kill");
    let owned_by_victim = class.nodes[victim].stats().sessions;
    let connected_to_victim = class.clients.iter().filter(|c| c.node == victim).count();
    let recovered_before_kill: u64 = class.clients.iter().map(|c| c.recovered).sum();
    class.nodes[victim].kill();
    class.alive[victim] = false;
    // What the dead node had queued never reaches its clients.
    let mut lost_in_flight = 0;
    for c in class.clients.iter_mut().filter(|c| c.node == victim) {
        while c.conn.outbound.try_recv().is_ok() {
            lost_in_flight += 1;
        }
    }
    let killed = Instant::now();
    class.unread = None;
    let detect = class
        .until(Duration::from_secs(10), "the survivors drop the dead node", |c| {
            c.survivors().all(|n| n.view().len() == 2)
        })
        .await;
    // Re-owned within one interval: one round of beats after the view
    // changed puts every session with a live owner.
    class.beat_round();
    let reown = class.until(Duration::from_secs(5), "sessions re-owned", |c| c.unowned_sessions() == 0).await;
    println!(
        "(a) node {} killed, owning {owned_by_victim} sessions and holding {connected_to_victim} connections: \
         out of the view after {detect:?}; every session re-owned {reown:?} after one beat round (interval {HEARTBEAT:?})",
        victim + 1
    );
    class.run(Duration::from_secs(2)).await;
    let listed = class.listed();
    assert!(listed.iter().all(|&n| n == MEMBERS as u32), "member lists on the survivors: {listed:?}");
    let exits: u64 = class.survivors().map(|n| n.stats().timed_out + n.stats().left).sum();
    assert_eq!(exits, 0, "no false exits after the kill");
    let adopted: u64 = class.survivors().map(|n| n.stats().adopted).sum();
    let recovered_after_kill = class.clients.iter().map(|c| c.recovered).sum::<u64>() - recovered_before_kill;
    println!(
        "    {lost_in_flight} frames died with it; its clients reconnected and recovered {recovered_after_kill} messages by checks"
    );
    assert!(recovered_after_kill > 0, "the frames lost with the node were recovered");
    let new_owner = class.nodes[teacher_node].room_owner(ROOM).expect("a route");
    println!(
        "    {adopted} sessions adopted without a second entry, 0 exits, {:?} since the kill; the room's gate moved from node {} to node {}",
        killed.elapsed(),
        victim + 1,
        new_owner.0
    );
    assert_ne!(new_owner, owner);

    // (b) Redis restarts (empty: nothing is persisted).
    let port = redis.port();
    // Dropping kills it.
    drop(redis);
    class.run(Duration::from_secs(1)).await;
    let degraded = class.survivors().filter(|n| !n.stats().redis_up).count();
    let _redis = RedisServer::start(Some(port)).expect("redis-server restarts");
    let back =
        class.until(Duration::from_secs(15), "redis health back", |c| c.survivors().all(|n| n.stats().redis_up)).await;
    println!("(b) redis down 1 s ({degraded} nodes reported it), health back {back:?} after its restart");
    class.run(Duration::from_secs(1)).await;

    // (c) NATS restarts (same store).
    nats.stop();
    class.run(Duration::from_secs(1)).await;
    nats.restart().expect("nats-server restarts");
    let t = Instant::now();
    let back =
        class.until(Duration::from_secs(20), "re-registered", |c| c.survivors().all(|n| n.view().len() == 2)).await;
    class.run(Duration::from_secs(2)).await;
    let reconnected: Vec<u64> = class.survivors().map(|n| n.stats().nats_reconnects).collect();
    println!(
        "(c) nats down 1 s; survivors reconnected {reconnected:?} times; views whole {back:?} after its restart ({:?} including 2 s of class)",
        t.elapsed()
    );
    assert!(reconnected.iter().all(|&r| r >= 1), "every survivor reconnected");

    // Stop talking and let the last messages land.
    class.next_say = Instant::now() + Duration::from_secs(3600);
    class.next_chat = Instant::now() + Duration::from_secs(3600);
    class.run(Duration::from_secs(2)).await;
    // Clients that saw nothing new since a loss check now, as the ack
    // timer of a real client would.
    for i in 0..class.clients.len() {
        let (epoch, after) = class.clients[i].rx.ack();
        let nodes = &class.nodes;
        class.clients[i].check(nodes, epoch, after).await;
    }

    let all: BTreeSet<String> = class.clients.iter().flat_map(|c| c.texts.iter().cloned()).collect();
    let missing: usize = class.clients.iter().map(|c| all.len() - c.texts.len()).sum();
    let resets: u64 = class.clients.iter().map(|c| c.resets).sum();
    let recovered: u64 = class.clients.iter().map(|c| c.recovered).sum();
    let reconnects: u64 = class.clients.iter().map(|c| c.reconnects).sum();
    let stats: Vec<_> = class.nodes.iter().map(ClusterNode::stats).collect();
    let refilled: u64 = stats.iter().map(|s| s.refilled).sum();
    let renumbered: u64 = stats.iter().map(|s| s.renumbered).sum();
    println!(
        "teacher said {} messages; {} distinct reached the class; {missing} (member, message) pairs missing; \
         {recovered} recovered by checks; {refilled} refilled from the shared cache; {resets} resets; \
         {reconnects} reconnects; {renumbered} renumbered",
        class.said,
        all.len()
    );
    assert_eq!(missing, 0, "every teacher message reached every member");
    assert_eq!(resets, 0, "nothing was lost for anyone");
    assert_eq!(all.len() as u64, class.said, "every message the teacher said was numbered and delivered");
    let exits: u64 = class.survivors().map(|n| n.stats().timed_out + n.stats().left).sum();
    assert_eq!(exits, 0, "no false exits in the whole run");
    let listed = class.listed();
    assert!(listed.iter().all(|&n| n == MEMBERS as u32), "member lists on the survivors: {listed:?}");
}

/// A node restarts (the room's only node, so nobody else holds the room's
/// messages): what its clients had not received is recovered from the
/// shared cache, and the room's sequence continues in the same epoch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs redis-server and nats-server"]
async fn a_restarted_node_recovers_from_the_shared_cache() {
    let redis = RedisServer::start(None).expect("redis-server starts (apt-get install redis-server)");
    let nats = NatsServer::start().expect("nats-server starts (apt-get install nats-server)");
    let config = || {
        let mut c = ClusterConfig::new(NodeId(1), &nats.url(), &redis.url(), keys());
        c.heartbeat = HEARTBEAT;
        c.registry = RegistryConfig::new().with_interval(Duration::from_millis(200));
        c
    };
    let up = |node: ClusterNode| async move {
        let t = Instant::now();
        while node.view() != [NodeId(1)] {
            assert!(t.elapsed() < Duration::from_secs(10), "the node did not see itself");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        node
    };
    let nodes = vec![up(ClusterNode::start(config()).await.expect("starts")).await];
    let connect = |nodes: &[ClusterNode], uin: u64, role: Role| {
        let conn = Client::connect(nodes, 0, uin, role);
        let rx = ReliableReceiver::resume(conn.epoch, conn.head);
        Client { uin, role, node: 0, conn, rx, texts: BTreeSet::new(), resets: 0, recovered: 0, reconnects: 0 }
    };
    let mut teacher = connect(&nodes, 1, Role::Teacher);
    let mut student = connect(&nodes, 2, Role::Student);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let said = |nodes: &[ClusterNode], teacher: &Client, text: &str| nodes[0].say(teacher.conn.id, text).expect("say");
    for m in ["m1", "m2"] {
        said(&nodes, &teacher, m);
    }
    let t = Instant::now();
    while student.texts.len() < 2 {
        assert!(t.elapsed() < Duration::from_secs(10), "m1 and m2 not delivered");
        student.drain(&nodes).await;
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // m3..m5 are numbered and cached, but never reach the student.
    for m in ["m3", "m4", "m5"] {
        said(&nodes, &teacher, m);
    }
    let numbered = Instant::now();
    while nodes[0].stats().numbered < 5 {
        assert!(numbered.elapsed() < Duration::from_secs(10), "m3..m5 not numbered");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let epoch_before = student.rx.epoch();
    nodes[0].kill();
    while student.conn.outbound.try_recv().is_ok() {}
    while teacher.conn.outbound.try_recv().is_ok() {}

    // The node comes back (same id, a new process in real life).
    let nodes = vec![up(ClusterNode::start(config()).await.expect("restarts")).await];
    student.reconnect(&nodes, &[true]).await;
    teacher.conn = Client::connect(&nodes, 0, 1, Role::Teacher);
    assert_eq!(student.texts, ["m1", "m2", "m3", "m4", "m5"].map(String::from).into(), "recovered after the restart");
    assert_eq!((student.recovered, student.resets), (3, 0));
    assert_eq!(nodes[0].stats().recovered_from_shared, 3);
    // The sequence continues: same epoch, no reset.
    said(&nodes, &teacher, "m6");
    let t = Instant::now();
    while !student.texts.contains("m6") {
        assert!(t.elapsed() < Duration::from_secs(10), "m6 not delivered");
        student.drain(&nodes).await;
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(student.rx.epoch(), epoch_before, "the restarted gate resumed the room's sequence");
    assert_eq!(student.resets, 0);
    println!("after a restart: 3 messages recovered from the shared cache, m6 continued epoch {epoch_before}");
    // A flood from one client is refused at its access node (burst 20).
    let refused = (0..100)
        .filter(|i| {
            matches!(nodes[0].say(teacher.conn.id, &format!("flood {i}")), Err(ClusterError::RateLimited { .. }))
        })
        .count();
    assert!(refused >= 70, "only {refused} of 100 refused");
}

/// Members who leave with a dying node (their clients gone too) exit
/// after the timeout, whoever owned their sessions; everyone else stays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs redis-server and nats-server"]
async fn members_who_leave_with_a_dead_node_exit() {
    let redis = RedisServer::start(None).expect("redis-server starts (apt-get install redis-server)");
    let nats = NatsServer::start().expect("nats-server starts (apt-get install nats-server)");
    let mut nodes = Vec::new();
    for n in 1..=3 {
        let mut config = ClusterConfig::new(NodeId(n), &nats.url(), &redis.url(), keys());
        config.heartbeat = HEARTBEAT;
        config.registry = RegistryConfig::new().with_interval(Duration::from_millis(200));
        nodes.push(ClusterNode::start(config).await.expect("node starts"));
    }
    let t = Instant::now();
    while !nodes.iter().all(|n| n.view().len() == 3) {
        assert!(t.elapsed() < Duration::from_secs(10), "the cluster did not form");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    const N: u64 = 300;
    let mut clients: Vec<(usize, ClientConn)> = (1..=N)
        .map(|uin| {
            let node = uin as usize % 3;
            (node, Client::connect(&nodes, node, uin, if uin == 1 { Role::Teacher } else { Role::Student }))
        })
        .collect();
    let listed = |nodes: &[ClusterNode], i: usize| nodes[i].members().counts(ROOM).map_or(0, |c| c.total());
    let run = |nodes: &[ClusterNode], clients: &mut Vec<(usize, ClientConn)>, alive: &[bool]| {
        for (node, c) in clients.iter_mut() {
            while c.outbound.try_recv().is_ok() {}
            if alive[*node] {
                let _ = nodes[*node].beat(c.id);
            }
        }
    };
    let t = Instant::now();
    while !(0..3).all(|i| listed(&nodes, i) == N as u32) {
        assert!(t.elapsed() < Duration::from_secs(10), "member lists incomplete");
        run(&nodes, &mut clients, &[true; 3]);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Node 3 dies, and its clients with it: they never come back.
    let gone = clients.iter().filter(|(n, _)| *n == 2).count() as u32;
    nodes[2].kill();
    let alive = [true, true, false];
    let t = Instant::now();
    while !(0..2).all(|i| listed(&nodes, i) == N as u32 - gone) {
        assert!(t.elapsed() < Duration::from_secs(20), "lists: {} and {}", listed(&nodes, 0), listed(&nodes, 1));
        run(&nodes, &mut clients, &alive);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let exits: u64 = nodes[..2].iter().map(|n| n.stats().timed_out).sum();
    println!("{gone} members left with the dead node: out of the lists {:?} after the kill", t.elapsed());
    assert_eq!(exits, u64::from(gone), "exactly the members who left, each once");
    // Everyone else is still there, a few timeouts later.
    for _ in 0..20 {
        run(&nodes, &mut clients, &alive);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!((0..2).all(|i| listed(&nodes, i) == N as u32 - gone));
    for (node, c) in clients.iter().filter(|(n, _)| *n != 2) {
        assert!(nodes[*node].members().contains(c.member), "{} taken out", c.member);
    }
}
