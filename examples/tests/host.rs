//! The host's side on three nodes of one room service, over a redis-server
//! and a nats-server of the test's own: a notice published from a node
//! that does not own the room reaches every member once; presence, counts
//! and pages answer the same on every node; a kick with a ban closes the
//! member's client with the reason and keeps it out; closing the room
//! closes every client and frees the room. The room's events reach the
//! host in order, members see who joined and left in their rosters, and a
//! member whose socket dropped comes back on another node without leaving.

use std::time::{Duration, Instant};

use bytes::Bytes;
use examples::classroom::{DEMO_BID, demo_ticket};
use examples::cluster::{ClusterConfig, ClusterNode};
use room_core::{NodeId, Role, RoleSet, RoomId, RoomKey, Terminal, Uin};
use room_memberlist::{PageQuery, PageStart};
use room_nats::RegistryConfig;
use room_push::{Class, Kind, Target};
use room_testkit::nats::NatsServer;
use room_testkit::redis::RedisServer;
use roomkit::host::Revocation;
use roomkit::kinds::CustomKind;
use roomkit::service::{CloseReason, Connection, Outbound};
use roomkit::ticket::{KeyRing, TicketId};
use serde_json::Value;

const ROOM_ID: u64 = 11;
const ROOM: RoomKey = RoomKey::new(DEMO_BID, RoomId(ROOM_ID));
const MEMBERS: u64 = 30;

fn keys() -> KeyRing {
    KeyRing::new("host", b"host-test-key-0123456789abcdef-xyz".to_vec()).expect("valid")
}

fn connect(nodes: &[ClusterNode], node: usize, uin: u64) -> Connection {
    let role = if uin == 1 { Role::Teacher } else { Role::Student };
    let terminal = if uin == 1 { Terminal::Pc } else { Terminal::Web };
    nodes[node].service.connect(ROOM, &demo_ticket(&keys(), ROOM_ID, uin, role, terminal)).expect("enters")
}

/// What a client got: text frames and pushed bodies as JSON, and its close.
#[derive(Default)]
struct Seen {
    frames: Vec<Value>,
    closed: Option<CloseReason>,
}

impl Seen {
    fn drain(&mut self, conn: &mut Connection) {
        while let Ok(frame) = conn.outbound.try_recv() {
            match frame {
                Outbound::Close(reason) => self.closed = Some(reason),
                other => {
                    if let Ok(v) = serde_json::from_slice(&other.into_text()) {
                        self.frames.push(v);
                    }
                }
            }
        }
    }

    fn notices(&self, text: &str) -> usize {
        self.frames
            .iter()
            .filter(|f| f["t"] == "push" && f["b"]["kind"] == 300 && f["b"]["data"]["text"] == text)
            .count()
    }

    fn bye(&self) -> Option<(u64, String)> {
        self.frames
            .iter()
            .find(|f| f["t"] == "bye")
            .map(|f| (f["code"].as_u64().unwrap_or(0), f["reason"].as_str().unwrap_or("").to_owned()))
    }

    fn entered(&self) -> bool {
        self.frames.iter().any(|f| f["t"] == "welcome")
    }
}

/// Waits for `cond`; the limits are generous because they only bound a
/// wait for what must come, on a machine that may be busy with other work.
async fn until(limit: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let t = Instant::now();
    while !cond() {
        assert!(t.elapsed() < limit, "{what}: not within {limit:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Three nodes over a redis-server and a nats-server of the test's own,
/// once they see each other.
async fn start_cluster() -> (RedisServer, NatsServer, Vec<ClusterNode>) {
    let redis = RedisServer::start(None).expect("redis-server starts (apt-get install redis-server)");
    let nats = NatsServer::start().expect("nats-server starts (apt-get install nats-server)");
    let mut nodes = Vec::new();
    for n in 1..=3 {
        let mut config = ClusterConfig::new(NodeId(n), &nats.url(), &redis.url(), keys());
        config.registry = RegistryConfig::new().with_interval(Duration::from_millis(200));
        config.addr = format!("in-process-{n}");
        // The host's own kind: whiteboard strokes, from the staff to all.
        config
            .service
            .node
            .kinds
            .register(CustomKind::new(Kind(400), Class::Signal).senders(RoleSet::staff()))
            .expect("registers");
        nodes.push(ClusterNode::start(config).await.expect("node starts"));
    }
    until(Duration::from_secs(30), "the cluster formed", || nodes.iter().all(|n| n.service.view().len() == 3)).await;
    (redis, nats, nodes)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs redis-server and nats-server"]
async fn the_host_acts_on_a_room_from_any_node_of_a_cluster() {
    let (_redis, _nats, nodes) = start_cluster().await;
    let owner_id = nodes[0].service.inspect(|c| c.room_owner(ROOM)).expect("a route");
    let owner = nodes.iter().position(|n| n.service.id() == owner_id).expect("an owner");
    let other = (owner + 1) % 3;
    let third = (owner + 2) % 3;

    let mut conns: Vec<(u64, usize, Connection, Seen)> = (1..=MEMBERS)
        .map(|uin| (uin, uin as usize % 3, connect(&nodes, uin as usize % 3, uin), Seen::default()))
        .collect();
    let drain = |conns: &mut Vec<(u64, usize, Connection, Seen)>| {
        for (_, _, conn, seen) in conns.iter_mut() {
            seen.drain(conn);
        }
    };
    let t = Instant::now();
    loop {
        drain(&mut conns);
        if conns.iter().all(|c| c.3.entered()) {
            break;
        }
        assert!(t.elapsed() < Duration::from_secs(30), "every member entered");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // A notice from a node that does not own the room.
    let data = Bytes::from_static(br#"{"text":"class starts in 1 minute"}"#);
    let (epoch, seq) =
        nodes[other].service.publish(ROOM, Target::room(), Class::Teacher, Kind(300), data).await.expect("published");
    assert!(epoch > 0 && seq > 0);
    let t = Instant::now();
    loop {
        drain(&mut conns);
        if conns.iter().all(|c| c.3.notices("class starts in 1 minute") == 1) {
            break;
        }
        assert!(t.elapsed() < Duration::from_secs(20), "every member got the notice once");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    println!("a notice asked on a node that does not own the room reached {MEMBERS} members once, seq {seq}");

    // The teacher sends one of the host's kinds from its node: everyone
    // else gets it once, wherever they are connected.
    let teacher = conns.iter().position(|c| c.0 == 1).expect("the teacher");
    nodes[conns[teacher].1]
        .service
        .handle_text(conns[teacher].2.id, r#"{"t":"custom","kind":400,"data":{"x":3}}"#)
        .expect("sent");
    let strokes = |s: &Seen| s.frames.iter().filter(|f| f["t"] == "push" && f["b"]["kind"] == 400).count();
    let t = Instant::now();
    loop {
        drain(&mut conns);
        if conns.iter().enumerate().all(|(i, c)| i == teacher || strokes(&c.3) == 1) {
            break;
        }
        assert!(t.elapsed() < Duration::from_secs(20), "every member got the stroke once");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(strokes(&conns[teacher].3), 0, "not back to the sender");
    println!("a custom kind sent by the teacher reached the {} others once", MEMBERS - 1);

    // Presence, counts and pages: the same on every node.
    for node in &nodes {
        let row = node.service.presence(ROOM.member(Uin(5))).await.expect("answered").expect("present");
        assert_eq!((row.role, row.terminals.iter().collect::<Vec<_>>()), (Role::Student, vec![Terminal::Web]));
        let counts = node.service.counts(ROOM).await.expect("answered");
        assert_eq!((counts.total(), counts.role(Role::Teacher)), (MEMBERS as u32, 1));
        let mut uins = Vec::new();
        let mut start = PageStart::First;
        loop {
            let query = PageQuery::first(10).roles(RoleSet::only(Role::Student)).start(start);
            let (rows, next) = node.service.members(ROOM, query).await.expect("a page");
            uins.extend(rows.iter().map(|r| r.uin.0));
            match next {
                Some(c) => start = PageStart::After(c),
                None => break,
            }
        }
        assert_eq!(uins.len(), MEMBERS as usize - 1);
    }

    // A kick with a ban, asked on a third node.
    let kicked = conns.iter().position(|c| c.1 == other && c.0 != 1).expect("a student on the other node");
    let kicked_uin = conns[kicked].0;
    let present = nodes[third]
        .service
        .kick(ROOM.member(Uin(kicked_uin)), "disruptive", Some(Duration::from_secs(60)))
        .await
        .expect("kicked");
    assert!(present);
    until(Duration::from_secs(20), "the kicked client closed", || {
        let (_, _, conn, seen) = &mut conns[kicked];
        seen.drain(conn);
        seen.closed.is_some()
    })
    .await;
    assert_eq!(conns[kicked].3.bye(), Some((4005, "disruptive".to_owned())));
    assert_eq!(conns[kicked].3.closed, Some(CloseReason::Kicked));
    for node in &nodes {
        assert_eq!(node.service.presence(ROOM.member(Uin(kicked_uin))).await.expect("answered"), None);
    }
    let mut again = connect(&nodes, owner, kicked_uin);
    let mut refused = Seen::default();
    until(Duration::from_secs(20), "the banned member's entry refused", || {
        refused.drain(&mut again);
        refused.closed.is_some()
    })
    .await;
    assert_eq!(refused.closed, Some(CloseReason::Refused));
    assert!(refused.frames.iter().any(|f| f["code"] == "banned"), "{:?}", refused.frames);
    println!("a kick asked on a third node closed the member's client (4005) and its ban refused it again");

    // Revocations, asked on one node, enforced by the room's owner for
    // entries on another.
    let enter = |node: usize, text: &str| nodes[node].service.connect(ROOM, text).expect("the ticket verifies");
    let outcome = |mut conn: Connection| async move {
        let mut seen = Seen::default();
        let t = Instant::now();
        while !(seen.entered() || seen.closed.is_some()) {
            assert!(t.elapsed() < Duration::from_secs(20), "no answer to the entry");
            tokio::time::sleep(Duration::from_millis(20)).await;
            seen.drain(&mut conn);
        }
        let refused =
            seen.frames.iter().find(|f| f["t"] == "error").map(|f| f["code"].as_str().unwrap_or("").to_owned());
        (conn, refused)
    };
    const LATE: u64 = 999;
    let first = demo_ticket(&keys(), ROOM_ID, LATE, Role::Student, Terminal::Web);
    let (conn, refused) = outcome(enter(third, &first)).await;
    assert_eq!(refused, None);
    nodes[third].service.disconnect(conn.id);
    let id = TicketId::of(&first).expect("an id");
    nodes[other].service.revoke(ROOM, Revocation::Ticket(id.0), Duration::from_secs(3_600)).await.expect("revoked");
    let (_, refused) = outcome(enter(third, &first)).await;
    assert_eq!(refused.as_deref(), Some("revoked"));
    // Issued a second later: another ticket (the same fields in the same
    // second would be the same ticket).
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    let second = demo_ticket(&keys(), ROOM_ID, LATE, Role::Student, Terminal::Web);
    let (conn, refused) = outcome(enter(third, &second)).await;
    assert_eq!(refused, None, "another ticket enters");
    nodes[third].service.disconnect(conn.id);
    nodes[owner].service.revoke(ROOM, Revocation::User(Uin(LATE)), Duration::from_secs(3_600)).await.expect("revoked");
    let (_, refused) = outcome(enter(other, &second)).await;
    assert_eq!(refused.as_deref(), Some("revoked"), "every ticket the user had so far");
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    let third_ticket = demo_ticket(&keys(), ROOM_ID, LATE, Role::Student, Terminal::Web);
    let (late, refused) = outcome(enter(other, &third_ticket)).await;
    assert_eq!(refused, None, "a ticket issued later enters");
    println!("revoked tickets, one by id and a user's all, were refused on other nodes; later ones let in");

    // Closing the room, asked on a node that does not own it.
    let members = nodes[other].service.close_room(ROOM, "class is over").await.expect("closed");
    assert_eq!(members, MEMBERS as u32);
    drop(late);
    let t = Instant::now();
    loop {
        drain(&mut conns);
        if conns.iter().enumerate().all(|(i, c)| i == kicked || c.3.closed.is_some()) {
            break;
        }
        assert!(t.elapsed() < Duration::from_secs(20), "every client closed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for (i, (_, _, _, seen)) in conns.iter().enumerate().filter(|(i, _)| *i != kicked) {
        assert_eq!(seen.bye(), Some((4006, "class is over".to_owned())), "client {i}");
        assert_eq!(seen.closed, Some(CloseReason::RoomClosed), "client {i}");
    }
    for node in &nodes {
        assert_eq!(node.service.counts(ROOM).await.expect("answered").total(), 0);
    }
    until(Duration::from_secs(20), "the owner let the room go", || {
        nodes[owner].service.inspect(|n| !n.runs_room(ROOM))
            && nodes.iter().all(|n| n.service.stats().connections == 0 && n.service.stats().sessions == 0)
    })
    .await;
    println!("closing the room closed {members} clients (4006) and freed it on every node");
}

/// Pushed bodies of `kind` a client got (batches flattened).
fn bodies(seen: &Seen, kind: u64) -> Vec<Value> {
    let mut out = Vec::new();
    for f in seen.frames.iter().filter(|f| f["t"] == "push") {
        let items = match &f["b"] {
            Value::Array(a) => a.clone(),
            b => vec![b.clone()],
        };
        out.extend(items.into_iter().filter(|m| m["kind"] == kind).map(|m| m["data"].clone()));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs redis-server and nats-server"]
async fn events_roster_diffs_and_reconnect_grace_across_a_cluster() {
    use room_core::ExitReason;
    use roomkit::host::{EventKind, RoomEvent};
    use roomkit::wire::HandOp;

    let (_redis, _nats, nodes) = start_cluster().await;
    let mut streams: Vec<_> = nodes.iter().map(|n| n.service.events()).collect();
    let owner_id = nodes[0].service.inspect(|c| c.room_owner(ROOM)).expect("a route");
    let owner = nodes.iter().position(|n| n.service.id() == owner_id).expect("an owner");
    // Every member on a node that does not own the room.
    let away = |uin: u64| (owner + 1 + uin as usize % 2) % 3;

    let mut teacher = (connect(&nodes, away(1), 1), Seen::default());
    until(Duration::from_secs(30), "the teacher entered", || {
        teacher.1.drain(&mut teacher.0);
        teacher.1.entered()
    })
    .await;
    let mut students: Vec<(u64, usize, Connection, Seen)> =
        (2..=6).map(|uin| (uin, away(uin), connect(&nodes, away(uin), uin), Seen::default())).collect();
    until(Duration::from_secs(30), "every student entered", || {
        students.iter_mut().all(|(_, _, conn, seen)| {
            seen.drain(conn);
            seen.entered()
        })
    })
    .await;
    let welcome = students[2].3.frames.iter().find(|f| f["t"] == "welcome").cloned().expect("welcome");
    let (epoch, head) = (welcome["epoch"].as_u64().expect("epoch"), welcome["head"].as_u64().expect("head"));

    // A hand and an answer, sent on nodes that do not own the room.
    nodes[students[0].1].service.handle_text(students[0].2.id, r#"{"t":"hand","op":"raise"}"#).expect("sent");
    nodes[away(1)].service.handle_text(teacher.0.id, r#"{"t":"card_open","options":2}"#).expect("sent");
    until(Duration::from_secs(20), "student 3 saw the card", || {
        let (_, _, conn, seen) = &mut students[1];
        seen.drain(conn);
        bodies(seen, 6).iter().any(|card| card["op"] == "open")
    })
    .await;
    nodes[students[1].1].service.handle_text(students[1].2.id, r#"{"t":"card_answer","option":1}"#).expect("sent");

    // Student 4's socket drops; the teacher speaks meanwhile; it comes
    // back on another node inside the heartbeat timeout and recovers.
    let (uin4, node4) = (students[2].0, students[2].1);
    nodes[node4].service.disconnect(students[2].2.id);
    tokio::time::sleep(Duration::from_millis(200)).await;
    nodes[away(1)].service.handle_text(teacher.0.id, r#"{"t":"say","text":"while you were away"}"#).expect("sent");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let back_on = (node4 + 1) % 3;
    let mut again = (connect(&nodes, back_on, uin4), Seen::default());
    until(Duration::from_secs(20), "student 4 is back", || {
        again.1.drain(&mut again.0);
        again.1.entered()
    })
    .await;
    nodes[back_on]
        .service
        .handle_text(again.0.id, &format!(r#"{{"t":"check","epoch":{epoch},"after":{head}}}"#))
        .expect("sent");
    until(Duration::from_secs(20), "student 4 recovered what it missed", || {
        again.1.drain(&mut again.0);
        again.1.frames.iter().any(|f| {
            f["t"] == "recover"
                && f["frames"]
                    .as_array()
                    .is_some_and(|fs| fs.iter().any(|m| m["b"]["data"]["text"] == "while you were away"))
        })
    })
    .await;

    // Student 5 leaves; student 6 is kicked from a third node, once a
    // roster has told their entries (an entry and an exit between two
    // rosters cancel out).
    until(Duration::from_secs(20), "a roster told every entry", || {
        teacher.1.drain(&mut teacher.0);
        let joined: Vec<u64> = bodies(&teacher.1, 8)
            .iter()
            .flat_map(|r| r["joined"].as_array().cloned().unwrap_or_default())
            .filter_map(|e| e["uin"].as_u64())
            .collect();
        (2..=6).all(|uin| joined.contains(&uin))
    })
    .await;
    nodes[students[3].1].service.handle_text(students[3].2.id, r#"{"t":"leave"}"#).expect("sent");
    let kicker = (students[4].1 + 1) % 3;
    assert!(nodes[kicker].service.kick(ROOM.member(Uin(6)), "disruptive", None).await.expect("answered"));

    // The events: all from the room's owner, numbered in a row, each
    // change once; no leave and no second entry for student 4.
    let mut got: Vec<Vec<RoomEvent>> = vec![Vec::new(); 3];
    let wanted = |got: &Vec<Vec<RoomEvent>>| {
        let all: Vec<&EventKind> = got.iter().flatten().filter(|e| e.room == ROOM).map(|e| &e.what).collect();
        all.iter().any(|e| matches!(e, EventKind::Left { uin: Uin(6), .. }))
            && all.iter().any(|e| matches!(e, EventKind::Left { uin: Uin(5), .. }))
            && all.iter().any(|e| matches!(e, EventKind::Answer { .. }))
    };
    let t = Instant::now();
    while !wanted(&got) {
        assert!(t.elapsed() < Duration::from_secs(30), "the events came: {got:?}");
        for (i, stream) in streams.iter_mut().enumerate() {
            while let Some(next) = stream.try_next() {
                got[i].push(next.expect("a reader that keeps up does not lag"));
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for (i, events) in got.iter().enumerate() {
        let here = events.iter().filter(|e| e.room == ROOM).count();
        assert_eq!(here > 0, i == owner, "node {i} told {here} of the room's events; the owner is {owner}");
    }
    let events: Vec<EventKind> = got[owner].iter().map(|e| e.what.clone()).collect();
    assert!(got[owner].windows(2).all(|w| w[1].seq == w[0].seq + 1), "numbered in a row: {:?}", got[owner]);
    for uin in 1..=6 {
        let entries = events.iter().filter(|e| matches!(e, EventKind::Entered { uin: u, .. } if u.0 == uin)).count();
        assert_eq!(entries, 1, "member {uin} entered once: {events:?}");
    }
    assert!(events.iter().any(|e| matches!(e, EventKind::Hand { uin: Uin(2), op: HandOp::Raise, by: Uin(2) })));
    assert!(events.iter().any(|e| matches!(e, EventKind::Answer { uin: Uin(3), option: 1, .. })));
    let lefts: Vec<&EventKind> = events.iter().filter(|e| matches!(e, EventKind::Left { .. })).collect();
    assert_eq!(
        lefts,
        [
            &EventKind::Left { uin: Uin(5), reason: ExitReason::Left },
            &EventKind::Left { uin: Uin(6), reason: ExitReason::Kicked }
        ],
        "student 4 never left"
    );

    // The teacher's rosters said who joined and who left, never student 4
    // leaving.
    let t = Instant::now();
    loop {
        teacher.1.drain(&mut teacher.0);
        let left: Vec<u64> = bodies(&teacher.1, 8)
            .iter()
            .flat_map(|r| r["left"].as_array().cloned().unwrap_or_default())
            .filter_map(|u| u.as_u64())
            .collect();
        if left.contains(&5) && left.contains(&6) {
            break;
        }
        assert!(t.elapsed() < Duration::from_secs(20), "the rosters told both exits: {:?}", bodies(&teacher.1, 8));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let rosters = bodies(&teacher.1, 8);
    let joined: Vec<u64> = rosters
        .iter()
        .flat_map(|r| r["joined"].as_array().cloned().unwrap_or_default())
        .filter_map(|e| e["uin"].as_u64())
        .collect();
    let left: Vec<u64> = rosters
        .iter()
        .flat_map(|r| r["left"].as_array().cloned().unwrap_or_default())
        .filter_map(|u| u.as_u64())
        .collect();
    assert!((2..=6).all(|uin| joined.contains(&uin)), "joins told: {rosters:?}");
    assert!(!left.contains(&uin4), "a reconnect is not a leave: {rosters:?}");
    println!(
        "{} events from the owner, in a row; rosters told {} joins and {} leaves; a reconnect on another node was no leave",
        events.len(),
        joined.len(),
        left.len()
    );
}
