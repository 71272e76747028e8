//! The room service end to end, in process, as a cluster of one: entry,
//! chat, hands, cards, packets, mutes, recovery, bad frames and heartbeat
//! timeouts. Refusals decided by the room (a second answer, a learner
//! opening a card) reach the client as error frames, as they would from
//! another node of a cluster.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use room_core::{BusinessId, NodeId, Role, RoomId, RoomKey, Terminal, Uin};
use roomkit::service::{CloseReason, Connection, EntryError, Outbound, RoomService, ServiceConfig};
use roomkit::ticket::{JoinTicket, KeyRing, TicketError};
use roomkit::transport::Transports;
use serde_json::Value;

const ROOM: RoomKey = RoomKey::new(BusinessId(7), RoomId(42));

fn keys() -> KeyRing {
    KeyRing::new("k1", b"quickstart-secret-key".to_vec()).expect("valid")
}

async fn service() -> RoomService {
    RoomService::start(ServiceConfig::new(keys())).await.expect("starts")
}

fn ticket(uin: u64, role: Role) -> String {
    let exp = SystemTime::now().duration_since(UNIX_EPOCH).expect("clock").as_secs() + 600;
    keys().issue(&JoinTicket { room: ROOM, uin: Uin(uin), role, terminal: Terminal::Web, expires_at: exp })
}

/// Enters and waits for the welcome (returned).
async fn join(svc: &RoomService, uin: u64, role: Role) -> (Connection, Value) {
    let mut conn = svc.connect(ROOM, &ticket(uin, role)).expect("enters");
    let welcome = next(&mut conn).await;
    assert_eq!(welcome["t"], "welcome", "{welcome}");
    (conn, welcome)
}

/// The next frame of a connection, parsed (waits at most 5 s).
async fn next(c: &mut Connection) -> Value {
    let frame = tokio::time::timeout(Duration::from_secs(5), c.outbound.recv())
        .await
        .expect("a frame in time")
        .expect("the connection is open");
    parse(frame)
}

fn parse(frame: Outbound) -> Value {
    if let Outbound::Close(reason) = frame {
        return serde_json::json!({ "t": "closed", "code": reason.close_code() });
    }
    let b = frame.into_text();
    serde_json::from_slice(&b).unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&b)))
}

/// Every frame queued for a connection after a moment, parsed.
async fn drain(c: &mut Connection) -> Vec<Value> {
    tokio::time::sleep(Duration::from_millis(150)).await;
    let mut out = Vec::new();
    while let Ok(frame) = c.outbound.try_recv() {
        out.push(parse(frame));
    }
    out
}

/// Push bodies of a kind received (batches flattened).
fn pushed(frames: &[Value], kind: u64) -> Vec<Value> {
    let mut out = Vec::new();
    for f in frames.iter().filter(|f| f["t"] == "push") {
        let items = match &f["b"] {
            Value::Array(a) => a.clone(),
            b => vec![b.clone()],
        };
        out.extend(items.into_iter().filter(|m| m["kind"] == kind).map(|m| m["data"].clone()));
    }
    out
}

fn errors(frames: &[Value]) -> Vec<String> {
    frames.iter().filter(|f| f["t"] == "error").filter_map(|f| f["code"].as_str().map(String::from)).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_class_runs_end_to_end() {
    let svc = service().await;
    let (mut teacher, _) = join(&svc, 1, Role::Teacher).await;
    let (mut alice, welcome) = join(&svc, 100, Role::Student).await;
    let (mut bob, _) = join(&svc, 101, Role::Student).await;
    assert_eq!((welcome["role"].as_str(), welcome["node"].as_u64()), (Some("student"), Some(1)));
    assert!(welcome["epoch"].as_u64().is_some_and(|e| e > 0), "a room's epoch is known at entry: {welcome}");
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    // The sidebar lists everyone with counts by role.
    let roster = pushed(&drain(&mut teacher).await, 8);
    let last = roster.last().expect("a roster");
    assert_eq!(
        (last["total"].as_u64(), last["student"].as_u64(), last["teacher"].as_u64()),
        (Some(3), Some(2), Some(1)),
        "{last}"
    );

    // Chat reaches the others, merged in batches.
    svc.handle_text(alice.id, r#"{"t":"chat","text":"hello \"class\""}"#).expect("chat");
    let lines = pushed(&drain(&mut bob).await, 1);
    assert_eq!(lines.last().map(|l| l["text"].clone()), Some(Value::from("hello \"class\"")));

    // A raised hand reaches the teacher; the teacher invites it.
    svc.handle_text(bob.id, r#"{"t":"hand","op":"raise"}"#).expect("raise");
    let hands = pushed(&drain(&mut teacher).await, 3);
    assert_eq!(hands.last().expect("hand")["queue"], serde_json::json!([101]));
    svc.handle_text(teacher.id, r#"{"t":"hand","op":"invite","uin":101}"#).expect("invite");
    let to_bob = pushed(&drain(&mut bob).await, 3);
    assert_eq!(to_bob.last().expect("hand")["op"], "invite");

    // An answer card tallies each student once; a second answer is refused.
    svc.handle_text(teacher.id, r#"{"t":"card_open","options":4,"correct":2}"#).expect("open");
    drain(&mut alice).await;
    svc.handle_text(alice.id, r#"{"t":"card_answer","option":2}"#).expect("answer");
    svc.handle_text(bob.id, r#"{"t":"card_answer","option":1}"#).expect("answer");
    let bobs = drain(&mut bob).await;
    assert!(bobs.iter().any(|f| f["t"] == "answered" && f["option"] == 1), "{bobs:?}");
    svc.handle_text(bob.id, r#"{"t":"card_answer","option":3}"#).expect("sent");
    assert_eq!(errors(&drain(&mut bob).await), ["refused"]);
    svc.handle_text(teacher.id, r#"{"t":"card_close"}"#).expect("close");
    let cards = pushed(&drain(&mut alice).await, 6);
    let result = cards.iter().find(|c| c["op"] == "result").expect("results");
    assert_eq!((result["tally"].clone(), result["right"].as_u64()), (serde_json::json!([0, 1, 1, 0]), Some(1)));

    // A red packet gives out exactly its total, once per student.
    svc.handle_text(teacher.id, r#"{"t":"packet_send","amount":100,"count":2}"#).expect("send");
    let opened = pushed(&drain(&mut alice).await, 7);
    let id = opened.iter().find(|p| p["op"] == "open").expect("open")["id"].as_u64().expect("id");
    let grab = format!(r#"{{"t":"packet_grab","id":{id}}}"#);
    svc.handle_text(alice.id, &grab).expect("grab");
    svc.handle_text(bob.id, &grab).expect("grab");
    let amount = |frames: &[Value]| -> Vec<u64> {
        frames.iter().filter(|f| f["t"] == "grabbed").filter_map(|f| f["amount"].as_u64()).collect()
    };
    let (alices, bobs) = (drain(&mut alice).await, drain(&mut bob).await);
    // A second grab gets the same share again, never another one.
    svc.handle_text(alice.id, &grab).expect("again");
    let again = drain(&mut alice).await;
    assert_eq!(amount(&again), amount(&alices), "a retried grab is the same grab");
    assert_eq!(amount(&alices).iter().chain(&amount(&bobs)).sum::<u64>(), 100);

    // Mute-all silences students, not the teacher.
    svc.handle_text(teacher.id, r#"{"t":"mute_all","on":true}"#).expect("mute");
    drain(&mut alice).await;
    svc.handle_text(alice.id, r#"{"t":"chat","text":"psst"}"#).expect("sent");
    assert_eq!(errors(&drain(&mut alice).await), ["muted"]);
    svc.handle_text(teacher.id, r#"{"t":"chat","text":"quiet please"}"#).expect("teacher chats");
    svc.handle_text(alice.id, r#"{"t":"mute_all","on":false}"#).expect("sent");
    assert_eq!(errors(&drain(&mut alice).await), ["not_allowed"]);

    // Acks and checks: the client is told what it is missing.
    svc.handle_text(teacher.id, r#"{"t":"say","text":"page 3"}"#).expect("say");
    let frames = drain(&mut bob).await;
    let say = frames.iter().rev().find(|f| f["c"] == "teacher").expect("teacher message");
    let (epoch, seq) = (say["e"].as_u64().expect("e"), say["s"].as_u64().expect("s"));
    svc.handle_text(bob.id, &format!(r#"{{"t":"check","epoch":{epoch},"after":{}}}"#, seq - 1)).expect("check");
    let answer = drain(&mut bob).await.into_iter().find(|f| f["t"] == "recover").expect("recovered");
    assert_eq!(answer["frames"][0]["s"].as_u64(), Some(seq));
    svc.handle_text(bob.id, &format!(r#"{{"t":"ack","epoch":{epoch},"seq":{seq}}}"#)).expect("ack");
    assert_eq!(drain(&mut bob).await.last().expect("reply")["r"], "ok");
}

/// Messages for one member (its sub-class announcement, an invitation)
/// and the room's messages reach each member in one numbered chain: each
/// frame names the one before it, nothing to check.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_for_one_member_chain_with_the_rooms() {
    let svc = service().await;
    let (mut teacher, _) = join(&svc, 1, Role::Teacher).await;
    let mut students = Vec::new();
    for uin in 100..104 {
        students.push(join(&svc, uin, Role::Student).await);
    }
    svc.handle_text(teacher.id, r#"{"t":"say","text":"one"}"#).expect("say");
    svc.handle_text(students[1].0.id, r#"{"t":"hand","op":"raise"}"#).expect("raise");
    drain(&mut teacher).await;
    svc.handle_text(teacher.id, r#"{"t":"hand","op":"invite","uin":101}"#).expect("invite");
    svc.handle_text(teacher.id, r#"{"t":"say","text":"two"}"#).expect("say");
    let mut seqs = Vec::new();
    for (i, (conn, welcome)) in students.iter_mut().enumerate() {
        let frames = drain(conn).await;
        let numbered: Vec<(u64, u64)> = frames
            .iter()
            .filter(|f| f["t"] == "push" && f["k"] != "batch" && f["k"] != "reactions")
            .map(|f| (f["s"].as_u64().expect("s"), f["p"].as_u64().expect("p")))
            .collect();
        assert!(!frames.iter().any(|f| f["k"] == "resync"), "student {i}: {frames:?}");
        // As a client reads them: what the welcome's head covers is not
        // owed (a roster numbered at the entry may still come); the first
        // frame after it may start lower, then each names the one before.
        let head = welcome["head"].as_u64().expect("head");
        let mut last = None;
        for &(seq, prev) in numbered.iter().filter(|(seq, _)| *seq > head) {
            match last {
                None => assert!(prev <= head, "student {i}: no gap after the welcome: {numbered:?}"),
                Some(last) => assert_eq!(prev, last, "student {i}: each frame names the one before: {numbered:?}"),
            }
            last = Some(seq);
        }
        seqs.push(numbered.iter().map(|(s, _)| *s).collect::<Vec<_>>());
        let says = frames.iter().filter(|f| f["c"] == "teacher").count();
        assert_eq!(says, 2, "student {i}: {frames:?}");
        let invited = pushed(&frames, 3).iter().any(|h| h["op"] == "invite");
        assert_eq!(invited, i == 1, "student {i}: only the invited one is told: {frames:?}");
    }
    // The invitation is numbered in the room's sequence, between the
    // teacher's two messages: the others skip its number without a gap.
    let last_say = *seqs[0].last().expect("the second message");
    assert!(seqs[1].iter().any(|s| !seqs[0].contains(s) && *s < last_say), "{seqs:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_tickets_enter_nothing() {
    let svc = service().await;
    let good = ticket(5, Role::Student);
    let mut forged = good.clone().into_bytes();
    let last = forged.len() - 2;
    forged[last] = if forged[last] == b'A' { b'B' } else { b'A' };
    let forged = String::from_utf8(forged).expect("ascii");
    assert!(matches!(svc.connect(ROOM, &forged), Err(EntryError::Ticket(_))));
    let other_room = RoomKey::new(BusinessId(7), RoomId(43));
    assert!(matches!(svc.connect(other_room, &good), Err(EntryError::Ticket(TicketError::WrongRoom { .. }))));
    assert!(matches!(svc.connect(ROOM, "not a ticket"), Err(EntryError::Ticket(TicketError::Malformed(_)))));
    let stats = svc.stats();
    assert_eq!((stats.sessions, stats.connections), (0, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_frames_get_error_frames_and_disturb_nothing() {
    let svc = service().await;
    let (mut alice, welcome) = join(&svc, 100, Role::Student).await;
    let epoch = welcome["epoch"].as_u64().expect("welcome");
    let future_check = format!(r#"{{"t":"check","epoch":{epoch},"after":999}}"#);
    for (frame, code) in [
        ("not json", "malformed"),
        (r#"{"t":"fly"}"#, "malformed"),
        (r#"{"t":"chat"}"#, "malformed"),
        (r#"{"t":"say","text":"I am the teacher"}"#, "not_allowed"),
        (r#"{"t":"card_open","options":4}"#, "not_allowed"),
        (r#"{"t":"packet_grab","id":77}"#, "refused"),
    ] {
        let _ = svc.handle_text(alice.id, frame);
        assert_eq!(errors(&drain(&mut alice).await), [code], "{frame}");
    }
    // A check beyond what was ever sent is answered from the shared cache:
    // nothing there either, so the client is told where to continue.
    svc.handle_text(alice.id, &future_check).expect("checked");
    let answer = drain(&mut alice).await;
    assert!(answer.iter().any(|f| f["t"] == "reset"), "{answer:?}");
    let big = format!(r#"{{"t":"chat","text":"{}"}}"#, "x".repeat(5_000));
    assert_eq!(svc.handle_text(alice.id, &big).expect_err("too big").code(), "too_large");
    let long = format!(r#"{{"t":"chat","text":"{}"}}"#, "x".repeat(600));
    assert_eq!(svc.handle_text(alice.id, &long).expect_err("too long").code(), "text_too_long");
    // A flood from one client is limited at its access node; the client
    // stays connected.
    let limited = (0..50).filter(|_| svc.handle_text(alice.id, r#"{"t":"chat","text":"spam"}"#).is_err()).count();
    assert!(limited >= 35, "{limited}");
    assert_eq!(svc.stats().connections, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_member_is_taken_out_and_a_closed_one_leaves() {
    let mut config = ServiceConfig::new(keys());
    config.node.heartbeat = Duration::from_millis(100);
    config.node.misses = 2;
    config.node.roster_interval = Duration::from_millis(50);
    let svc = RoomService::start(config).await.expect("starts");
    let (mut teacher, _) = join(&svc, 1, Role::Teacher).await;
    let (mut alice, _) = join(&svc, 100, Role::Student).await;
    let (bob, _) = join(&svc, 101, Role::Student).await;
    let listed = |svc: &RoomService| {
        use roomkit::memberlist::MemberStore;
        svc.inspect(|n| n.members().counts(ROOM).map_or(0, |c| c.total()))
    };
    assert_eq!(listed(&svc), 3);
    // Bob says goodbye: out at once.
    svc.leave(bob.id);
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(listed(&svc), 2);
    // Carol's socket just closes: her place is kept until the timeout.
    let (carol, _) = join(&svc, 102, Role::Student).await;
    svc.disconnect(carol.id);
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(listed(&svc), 3);
    // Alice stops beating; the teacher keeps beating.
    for _ in 0..12 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        svc.handle_text(teacher.id, r#"{"t":"beat"}"#).expect("beat");
    }
    assert_eq!((listed(&svc), svc.stats().timed_out), (1, 2), "Alice and Carol timed out");
    // Alice's connection was closed with the timeout's code.
    let frames = drain(&mut alice).await;
    let code = CloseReason::TimedOut.close_code();
    assert!(frames.iter().any(|f| f["t"] == "closed" && f["code"] == code), "{frames:?}");
    let roster = pushed(&drain(&mut teacher).await, 8);
    assert_eq!(roster.last().expect("roster")["total"].as_u64(), Some(1));
}

/// A writer that stops reading fills no queue (its room's messages wait
/// in the room's log): the service still sees it stop and closes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_writer_that_stops_reading_is_closed_as_a_slow_consumer() {
    let mut config = ServiceConfig::new(keys());
    config.node.slow_client_lag = Duration::from_millis(800);
    let svc = RoomService::start(config).await.expect("starts");
    let (mut teacher, _) = join(&svc, 1, Role::Teacher).await;
    let (mut reader, _) = join(&svc, 100, Role::Student).await;
    let (mut sleeper, _) = join(&svc, 101, Role::Student).await;
    let mut said = 0;
    for _ in 0..15 {
        svc.handle_text(teacher.id, r#"{"t":"say","text":"page 2"}"#).expect("says");
        said += 1;
        // The teacher and one student read; the other reads nothing more.
        drain(&mut teacher).await;
        let got = drain(&mut reader).await;
        assert!(got.iter().any(|f| f["c"] == "teacher"), "the reader gets the teacher's messages: {got:?}");
        if svc.stats().connections == 2 {
            break;
        }
    }
    assert_eq!(svc.stats().connections, 2, "the sleeper was closed after {said} messages");
    // Its stream ends with the reason, after what it had not read (or a
    // resync marker in its place).
    let frames = drain(&mut sleeper).await;
    let code = CloseReason::SlowConsumer.close_code();
    assert_eq!(frames.last().map(|f| (&f["t"], &f["code"])), Some((&"closed".into(), &code.into())), "{frames:?}");
    assert!(tokio::time::timeout(Duration::from_secs(5), sleeper.outbound.recv()).await.expect("ends").is_none());
    // The readers are still there.
    svc.handle_text(teacher.id, r#"{"t":"say","text":"page 3"}"#).expect("says");
    assert!(drain(&mut reader).await.iter().any(|f| f["c"] == "teacher"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_tab_replaces_the_first_with_a_close_code() {
    let svc = service().await;
    let (mut first, _) = join(&svc, 100, Role::Student).await;
    let (_second, _) = join(&svc, 100, Role::Student).await;
    let frames = drain(&mut first).await;
    let code = CloseReason::Replaced.close_code();
    assert!(frames.iter().any(|f| f["t"] == "closed" && f["code"] == code), "{frames:?}");
    assert_eq!(svc.stats().connections, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_grabs_never_exceed_the_packet() {
    let svc = service().await;
    let (teacher, _) = join(&svc, 1, Role::Teacher).await;
    let mut students = Vec::new();
    for n in 0..64 {
        students.push(join(&svc, 100 + n, Role::Student).await.0);
    }
    svc.handle_text(teacher.id, r#"{"t":"packet_send","amount":1000,"count":10}"#).expect("send");
    tokio::time::sleep(Duration::from_millis(200)).await;
    let tasks: Vec<_> = students
        .into_iter()
        .map(|mut c| {
            let svc = svc.clone();
            tokio::spawn(async move {
                for _ in 0..3 {
                    let _ = svc.handle_text(c.id, r#"{"t":"packet_grab","id":1}"#);
                }
                let frames = drain(&mut c).await;
                let amounts: Vec<u64> =
                    frames.iter().filter(|f| f["t"] == "grabbed").filter_map(|f| f["amount"].as_u64()).collect();
                amounts
            })
        })
        .collect();
    let mut winners = 0;
    let mut total = 0;
    for t in tasks {
        let amounts = t.await.expect("task");
        let distinct: std::collections::BTreeSet<u64> = amounts.iter().copied().collect();
        assert!(distinct.len() <= 1, "one share each, however often asked: {amounts:?}");
        winners += usize::from(!distinct.is_empty());
        total += distinct.iter().sum::<u64>();
    }
    assert_eq!((winners, total), (10, 1000), "exactly the shares and the total");
}

/// Two nodes of one process over in-memory transports: the same service,
/// a cluster of two. Whichever node a member is on, the class is one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_in_one_process_run_one_class() {
    use roomkit::transport::{FixedMembership, InMemoryPeers};
    use std::sync::Arc;
    let one = Transports::in_memory(NodeId(1));
    let membership = FixedMembership::new([NodeId(1), NodeId(2)]);
    let transports = Transports { peers: Arc::new(InMemoryPeers::default()), membership: Arc::new(membership), ..one };
    let mut nodes = Vec::new();
    for n in 1..=2 {
        let mut config = ServiceConfig::new(keys());
        config.node = roomkit::node::RoomNodeConfig::new(NodeId(n));
        nodes.push(RoomService::start_with(config, transports.clone()).await.expect("starts"));
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    let owner = nodes[0].inspect(|n| n.room_owner(ROOM)).expect("an owner");
    let other = if owner == NodeId(1) { 1 } else { 0 };
    // The teacher is on the node that does not own the room.
    let mut teacher = nodes[other].connect(ROOM, &ticket(1, Role::Teacher)).expect("enters");
    assert_eq!(next(&mut teacher).await["t"], "welcome");
    let mut students = Vec::new();
    for (i, uin) in (100..110).enumerate() {
        let mut c = nodes[i % 2].connect(ROOM, &ticket(uin, Role::Student)).expect("enters");
        assert_eq!(next(&mut c).await["t"], "welcome");
        students.push((i % 2, c));
    }
    nodes[other].handle_text(teacher.id, r#"{"t":"card_open","options":3}"#).expect("open");
    nodes[other].handle_text(teacher.id, r#"{"t":"say","text":"both nodes"}"#).expect("say");
    tokio::time::sleep(Duration::from_millis(200)).await;
    for (n, c) in &students {
        nodes[*n].handle_text(c.id, r#"{"t":"card_answer","option":1}"#).expect("answer");
    }
    for (_, c) in &mut students {
        let frames = drain(c).await;
        assert!(pushed(&frames, 2).iter().any(|d| d["text"] == "both nodes"), "{frames:?}");
        assert!(pushed(&frames, 6).iter().any(|d| d["op"] == "open"), "the card reached every node");
        assert!(frames.iter().any(|f| f["t"] == "answered"), "answers from both nodes were taken: {frames:?}");
    }
    let tally = nodes[if owner == NodeId(1) { 0 } else { 1 }]
        .inspect(|n| n.classroom(ROOM).and_then(|c| c.open_card_view()).map(|c| c.answered));
    assert_eq!(tally, Some(10));
}

/// The host's calls on the quickstart's cluster of one: a notice, presence,
/// a kick with a ban, a close; bad input is refused with what was wrong.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_host_publishes_kicks_and_closes() {
    use roomkit::host::HostError;
    use roomkit::push::{Class, Kind, Target};
    let svc = service().await;
    let (mut teacher, _) = join(&svc, 1, Role::Teacher).await;
    let (mut student, _) = join(&svc, 100, Role::Student).await;
    drain(&mut teacher).await;
    drain(&mut student).await;
    let notice = bytes::Bytes::from_static(br#"{"text":"class starts in 1 minute"}"#);
    let (_, seq) = svc.publish(ROOM, Target::room(), Class::Teacher, Kind(300), notice).await.expect("published");
    assert!(seq > 0);
    let got = drain(&mut student).await;
    assert_eq!(pushed(&got, 300), [serde_json::json!({"text": "class starts in 1 minute"})], "{got:?}");
    let bad = svc.publish(ROOM, Target::room(), Class::Signal, Kind(2), bytes::Bytes::from_static(b"{}")).await;
    assert!(matches!(bad, Err(HostError::Bad(ref m)) if m.contains("not a host's")), "{bad:?}");

    let row = svc.presence(ROOM.member(Uin(100))).await.expect("answered").expect("present");
    assert_eq!(row.role, Role::Student);
    assert_eq!(svc.counts(ROOM).await.expect("answered").total(), 2);

    assert!(svc.kick(ROOM.member(Uin(100)), "disruptive", Some(Duration::from_secs(60))).await.expect("kicked"));
    let got = drain(&mut student).await;
    assert!(got.iter().any(|f| f["t"] == "bye" && f["code"] == 4005 && f["reason"] == "disruptive"), "{got:?}");
    assert_eq!(got.last().map(|f| f["code"].clone()), Some(serde_json::json!(4005)), "then closed: {got:?}");
    let mut again = svc.connect(ROOM, &ticket(100, Role::Student)).expect("verified");
    let got = drain(&mut again).await;
    assert_eq!(errors(&got), ["banned"], "{got:?}");

    assert_eq!(svc.close_room(ROOM, "class is over").await, Ok(1));
    let got = drain(&mut teacher).await;
    assert!(got.iter().any(|f| f["t"] == "bye" && f["code"] == 4006), "{got:?}");
    assert_eq!(svc.counts(ROOM).await.expect("answered").total(), 0);
}

/// A host that never reads its events holds at most `events` of them: it
/// is told how many it missed, then gets the newest, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_that_does_not_read_its_events_is_told_it_lagged() {
    use roomkit::host::EventKind;
    let mut config = ServiceConfig::new(keys());
    config.events = 64;
    let svc = RoomService::start(config).await.expect("starts");
    let mut events = svc.events();
    const MEMBERS: u64 = 300;
    for uin in 100..100 + MEMBERS {
        let (conn, _) = join(&svc, uin, Role::Student).await;
        svc.leave(conn.id);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut missed = 0;
    let mut got = Vec::new();
    while let Some(next) = events.try_next() {
        match next {
            Ok(e) => got.push(e),
            Err(lagged) => missed += lagged.missed,
        }
    }
    assert!(got.len() <= 64, "held {} events", got.len());
    assert_eq!(missed + got.len() as u64, 2 * MEMBERS, "an entry and an exit each, missed or read");
    assert!(got.windows(2).all(|w| w[1].seq == w[0].seq + 1), "the newest, in order");
    assert!(matches!(got.last().map(|e| &e.what), Some(EventKind::Left { .. })));
}

/// Shards: the in-memory service as nodes of one process, each under its
/// own lock. A small room's members all enter on its owner's shard; past
/// `spread_above` they spread over every shard, and the class stays one:
/// every member hears the teacher, every answer is counted once, the host
/// and the events see the whole room.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sharded_service_runs_one_class_across_its_shards() {
    use roomkit::host::EventKind;
    let mut config = ServiceConfig::new(keys());
    config.shards = 3;
    config.spread_above = 4;
    let svc = RoomService::start(config).await.expect("starts");
    assert_eq!(svc.shard_count(), 3);
    let mut events = svc.events();
    let (mut teacher, _) = join(&svc, 1, Role::Teacher).await;
    let mut students = Vec::new();
    for uin in 100..130 {
        students.push(join(&svc, uin, Role::Student).await.0);
    }
    // The first four (the teacher and three students) on the owner's
    // shard; the rest spread, so every shard holds some of the class.
    let held = svc.inspect_shards(|n| n.room_connections(ROOM));
    assert_eq!(held.iter().sum::<usize>(), 31, "{held:?}");
    assert!(held.iter().all(|&n| n > 0), "every shard holds members: {held:?}");
    let owners = svc.inspect_shards(|n| n.room_owner(ROOM));
    assert!(owners.windows(2).all(|w| w[0] == w[1] && w[0].is_some()), "one owner for all: {owners:?}");
    let shard_ids = svc.inspect_shards(|n| n.id());
    let owner_shard = shard_ids.iter().position(|id| Some(*id) == owners[0]).expect("an owner among the shards");
    let tag = |c: &Connection| u64::from(c.id.tag());
    assert_eq!(tag(&teacher), shard_ids[owner_shard].0, "a small room enters on its owner's shard");

    svc.handle_text(teacher.id, r#"{"t":"card_open","options":3}"#).expect("opens");
    svc.handle_text(teacher.id, r#"{"t":"say","text":"every shard"}"#).expect("says");
    tokio::time::sleep(Duration::from_millis(200)).await;
    for s in &students {
        svc.handle_text(s.id, r#"{"t":"card_answer","option":2}"#).expect("answers");
    }
    for s in &mut students {
        let frames = drain(s).await;
        assert!(pushed(&frames, 2).iter().any(|d| d["text"] == "every shard"), "{frames:?}");
        assert!(pushed(&frames, 6).iter().any(|d| d["op"] == "open"), "{frames:?}");
        assert!(frames.iter().any(|f| f["t"] == "answered"), "{frames:?}");
    }
    let tally = svc.inspect_shards(|n| n.classroom(ROOM).and_then(|c| c.open_card_view()).map(|c| c.answered));
    assert_eq!(tally.into_iter().flatten().collect::<Vec<_>>(), [30], "counted once, by the owner");

    // The host, from the service: the whole room.
    assert_eq!(svc.counts(ROOM).await.expect("answered").total(), 31);
    assert_eq!(svc.stats().connections, 31, "stats sum the shards");
    // The events: every entry, once.
    let mut entered = std::collections::BTreeSet::new();
    while let Ok(Some(Ok(e))) = tokio::time::timeout(Duration::from_millis(300), events.next()).await {
        if let EventKind::Entered { uin, .. } = e.what {
            assert!(entered.insert(uin.0), "told once: {uin:?}");
        }
    }
    assert_eq!(entered.len(), 31, "{entered:?}");
    // A member on another shard leaves: the room hears it.
    let gone = students.pop().expect("a student");
    svc.leave(gone.id);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(svc.counts(ROOM).await.expect("answered").total(), 30);
    drain(&mut teacher).await;
}

/// Shards run over in-memory transports only: a cluster node is one.
#[tokio::test]
async fn shards_are_refused_over_a_clusters_transports() {
    let mut config = ServiceConfig::new(keys());
    config.shards = 2;
    let refused = RoomService::start_with(config, Transports::in_memory(NodeId(1))).await;
    assert!(matches!(refused, Err(roomkit::service::StartError::Shards(2))), "{refused:?}");
}
