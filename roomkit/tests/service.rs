//! The room service end to end, in process: entry, chat, hands, cards,
//! packets, mutes, recovery, bad frames and heartbeat timeouts.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use room_core::{BusinessId, Role, RoomId, RoomKey, Terminal, Uin};
use roomkit::service::{Connection, EntryError, FrameError, RoomService, ServiceConfig};
use roomkit::ticket::{JoinTicket, KeyRing, TicketError};
use serde_json::Value;

const ROOM: RoomKey = RoomKey::new(BusinessId(7), RoomId(42));

fn keys() -> KeyRing {
    KeyRing::new("k1", b"quickstart-secret-key".to_vec()).expect("valid")
}

fn service() -> RoomService {
    RoomService::new(ServiceConfig::new(keys())).expect("valid config")
}

fn ticket(uin: u64, role: Role) -> String {
    let exp = SystemTime::now().duration_since(UNIX_EPOCH).expect("clock").as_secs() + 600;
    keys().issue(&JoinTicket { room: ROOM, uin: Uin(uin), role, terminal: Terminal::Web, expires_at: exp })
}

fn join(svc: &RoomService, uin: u64, role: Role) -> Connection {
    svc.connect(ROOM, &ticket(uin, role)).expect("enters")
}

/// Every frame queued for a connection so far, parsed.
fn drain(c: &mut Connection) -> Vec<Value> {
    let mut out = Vec::new();
    while let Ok(frame) = c.outbound.try_recv() {
        let b = frame.into_text();
        out.push(
            serde_json::from_slice(&b).unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&b))),
        );
    }
    out
}

/// Push bodies of a kind received by a connection (batches flattened).
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

fn settle(svc: &RoomService) {
    std::thread::sleep(Duration::from_millis(120));
    svc.tick();
}

#[test]
fn a_class_runs_end_to_end() {
    let svc = service();
    let mut teacher = join(&svc, 1, Role::Teacher);
    let mut alice = join(&svc, 100, Role::Student);
    let mut bob = join(&svc, 101, Role::Student);
    let welcome = &drain(&mut alice)[0];
    assert_eq!((welcome["t"].as_str(), welcome["role"].as_str()), (Some("welcome"), Some("student")));
    settle(&svc);
    // The sidebar lists everyone with counts by role.
    let roster = pushed(&drain(&mut teacher), 8);
    let last = roster.last().expect("a roster");
    assert_eq!(
        (last["total"].as_u64(), last["student"].as_u64(), last["teacher"].as_u64()),
        (Some(3), Some(2), Some(1))
    );

    // Chat reaches the others, merged in batches.
    svc.handle_text(alice.id, r#"{"t":"chat","text":"hello \"class\""}"#).expect("chat");
    settle(&svc);
    let lines = pushed(&drain(&mut bob), 1);
    assert_eq!(lines.last().map(|l| l["text"].clone()), Some(Value::from("hello \"class\"")));

    // A raised hand reaches the teacher; the teacher invites it.
    svc.handle_text(bob.id, r#"{"t":"hand","op":"raise"}"#).expect("raise");
    let hands = pushed(&drain(&mut teacher), 3);
    assert_eq!(hands.last().expect("hand")["queue"], serde_json::json!([101]));
    svc.handle_text(teacher.id, r#"{"t":"hand","op":"invite","uin":101}"#).expect("invite");
    let to_bob = pushed(&drain(&mut bob), 3);
    assert_eq!(to_bob.last().expect("hand")["op"], "invite");

    // An answer card tallies each student once.
    svc.handle_text(teacher.id, r#"{"t":"card_open","options":4,"correct":2}"#).expect("open");
    svc.handle_text(alice.id, r#"{"t":"card_answer","option":2}"#).expect("answer");
    svc.handle_text(bob.id, r#"{"t":"card_answer","option":1}"#).expect("answer");
    assert!(matches!(svc.handle_text(bob.id, r#"{"t":"card_answer","option":3}"#), Err(FrameError::Action(_))));
    svc.handle_text(teacher.id, r#"{"t":"card_close"}"#).expect("close");
    let cards = pushed(&drain(&mut alice), 6);
    let result = cards.iter().find(|c| c["op"] == "result").expect("results");
    assert_eq!((result["tally"].clone(), result["right"].as_u64()), (serde_json::json!([0, 1, 1, 0]), Some(1)));

    // A red packet gives out exactly its total, once per student.
    svc.handle_text(teacher.id, r#"{"t":"packet_send","amount":100,"count":2}"#).expect("send");
    let opened = pushed(&drain(&mut alice), 7);
    let id = opened.last().expect("open")["id"].as_u64().expect("id");
    let grab = format!(r#"{{"t":"packet_grab","id":{id}}}"#);
    svc.handle_text(alice.id, &grab).expect("grab");
    assert!(svc.handle_text(alice.id, &grab).is_err(), "twice");
    svc.handle_text(bob.id, &grab).expect("grab");
    let amount = |frames: Vec<Value>| frames.iter().find(|f| f["t"] == "grabbed").expect("grabbed")["amount"].as_u64();
    let total = amount(drain(&mut alice)).expect("n") + amount(drain(&mut bob)).expect("n");
    assert_eq!(total, 100);

    // Mute-all silences students, not the teacher.
    svc.handle_text(teacher.id, r#"{"t":"mute_all","on":true}"#).expect("mute");
    let err = svc.handle_text(alice.id, r#"{"t":"chat","text":"psst"}"#).expect_err("muted");
    assert_eq!(err.code(), "muted");
    assert!(drain(&mut alice).iter().any(|f| f["t"] == "error" && f["code"] == "muted"));
    svc.handle_text(teacher.id, r#"{"t":"chat","text":"quiet please"}"#).expect("teacher chats");
    assert!(matches!(svc.handle_text(alice.id, r#"{"t":"mute_all","on":false}"#), Err(FrameError::Action(_))));

    // Acks and checks: the client is told what it is missing.
    svc.handle_text(teacher.id, r#"{"t":"say","text":"page 3"}"#).expect("say");
    let frames = drain(&mut bob);
    let say = frames.iter().rev().find(|f| f["c"] == "teacher").expect("teacher message");
    let (epoch, seq) = (say["e"].as_u64().expect("e"), say["s"].as_u64().expect("s"));
    svc.handle_text(bob.id, &format!(r#"{{"t":"check","epoch":{epoch},"after":{}}}"#, seq - 1)).expect("check");
    let answer = drain(&mut bob).into_iter().find(|f| f["t"] == "recover").expect("recovered");
    assert_eq!(answer["frames"][0]["s"].as_u64(), Some(seq));
    svc.handle_text(bob.id, &format!(r#"{{"t":"ack","epoch":{epoch},"seq":{seq}}}"#)).expect("ack");
    assert_eq!(drain(&mut bob).last().expect("reply")["r"], "ok");
}

#[test]
fn bad_tickets_enter_nothing() {
    let svc = service();
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
    assert_eq!((stats.members, stats.connections, stats.refused_entries), (0, 0, 3));
}

#[test]
fn bad_frames_get_error_frames_and_disturb_nothing() {
    let svc = service();
    let mut alice = join(&svc, 100, Role::Student);
    let epoch = drain(&mut alice)[0]["epoch"].as_u64().expect("welcome");
    let future_check = format!(r#"{{"t":"check","epoch":{epoch},"after":999}}"#);
    for (frame, code) in [
        ("not json", "malformed"),
        (r#"{"t":"fly"}"#, "malformed"),
        (r#"{"t":"chat"}"#, "malformed"),
        (r#"{"t":"say","text":"I am the teacher"}"#, "not_allowed"),
        (r#"{"t":"card_open","options":4}"#, "not_allowed"),
        (r#"{"t":"packet_grab","id":77}"#, "refused"),
        (future_check.as_str(), "bad_recovery"),
    ] {
        let err = svc.handle_text(alice.id, frame).expect_err(frame);
        assert_eq!(err.code(), code, "{frame}: {err}");
        let last = drain(&mut alice).pop().expect("an error frame");
        assert_eq!((last["t"].as_str(), last["code"].as_str()), (Some("error"), Some(code)));
    }
    let big = format!(r#"{{"t":"chat","text":"{}"}}"#, "x".repeat(5_000));
    assert_eq!(svc.handle_text(alice.id, &big).expect_err("too big").code(), "too_large");
    let long = format!(r#"{{"t":"chat","text":"{}"}}"#, "x".repeat(600));
    assert_eq!(svc.handle_text(alice.id, &long).expect_err("too long").code(), "text_too_long");
    // A flood from one client is limited; the client stays connected.
    let limited = (0..50).filter(|_| svc.handle_text(alice.id, r#"{"t":"chat","text":"spam"}"#).is_err()).count();
    assert!(limited >= 35, "{limited}");
    assert_eq!(svc.stats().connections, 1);
}

#[test]
fn a_silent_member_is_taken_out_and_a_closed_one_leaves() {
    let mut config = ServiceConfig::new(keys());
    config.heartbeat = Duration::from_millis(100);
    config.misses = 2;
    config.roster_interval = Duration::from_millis(50);
    let svc = RoomService::new(config).expect("valid config");
    let mut teacher = join(&svc, 1, Role::Teacher);
    let alice = join(&svc, 100, Role::Student);
    let bob = join(&svc, 101, Role::Student);
    assert_eq!(svc.stats().members, 3);
    svc.disconnect(bob.id);
    assert_eq!(svc.stats().members, 2);
    // Alice stops beating; the teacher keeps beating.
    for _ in 0..8 {
        std::thread::sleep(Duration::from_millis(50));
        svc.handle_text(teacher.id, r#"{"t":"beat"}"#).expect("beat");
        svc.tick();
    }
    let stats = svc.stats();
    assert_eq!((stats.members, stats.timed_out), (1, 1));
    assert!(svc.handle_text(alice.id, r#"{"t":"beat"}"#).is_err(), "alice's connection is closed");
    settle(&svc);
    let roster = pushed(&drain(&mut teacher), 8);
    assert_eq!(roster.last().expect("roster")["total"].as_u64(), Some(1));
}

#[test]
fn concurrent_grabs_never_exceed_the_packet() {
    let svc = service();
    let teacher = join(&svc, 1, Role::Teacher);
    let students: Vec<Connection> = (0..64).map(|n| join(&svc, 100 + n, Role::Student)).collect();
    svc.handle_text(teacher.id, r#"{"t":"packet_send","amount":1000,"count":10}"#).expect("send");
    let threads: Vec<_> = students
        .into_iter()
        .map(|mut c| {
            let svc = svc.clone();
            std::thread::spawn(move || {
                let mut won = 0;
                for _ in 0..3 {
                    if svc.handle_text(c.id, r#"{"t":"packet_grab","id":1}"#).is_ok() {
                        won += 1;
                    }
                }
                let amount: u64 = std::iter::from_fn(|| c.outbound.try_recv().ok())
                    .filter_map(|f| serde_json::from_slice::<Value>(&f.into_text()).ok())
                    .filter(|f| f["t"] == "grabbed")
                    .filter_map(|f| f["amount"].as_u64())
                    .sum();
                (won, amount)
            })
        })
        .collect();
    let results: Vec<(u32, u64)> = threads.into_iter().map(|t| t.join().expect("thread")).collect();
    assert!(results.iter().all(|(won, _)| *won <= 1), "at most once each");
    assert_eq!(results.iter().map(|r| r.0).sum::<u32>(), 10, "exactly the shares");
    assert_eq!(results.iter().map(|r| r.1).sum::<u64>(), 1000, "exactly the total");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_can_travel_over_a_bus() {
    use roomkit::push::{Bus, InMemoryBus};
    let svc = service();
    let bus = std::sync::Arc::new(InMemoryBus::new(1024));
    let _pump = tokio::spawn(svc.clone().attach_bus(bus.clone() as std::sync::Arc<dyn Bus>, room_core::NodeId(1)));
    // A second subscriber sees what the service publishes: it went over the bus.
    let mut watcher = bus.subscribe(room_core::NodeId(2)).await.expect("subscribes");
    bus.set_interest(room_core::NodeId(2), ROOM, true).await.expect("ok");
    tokio::time::sleep(Duration::from_millis(50)).await;
    let teacher = join(&svc, 1, Role::Teacher);
    let mut alice = join(&svc, 100, Role::Student);
    svc.handle_text(teacher.id, r#"{"t":"say","text":"over the bus"}"#).expect("say");
    let seen = tokio::time::timeout(Duration::from_secs(5), futures::StreamExt::next(&mut watcher))
        .await
        .expect("published in time")
        .expect("an envelope");
    assert_eq!(seen.message.room, ROOM);
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let said = pushed(&drain(&mut alice), 2);
        if said.iter().any(|d| d["text"] == "over the bus") {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "the message did not come back from the bus");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A bus that loses the envelopes whose payload holds one of `lose`.
struct LossyBus {
    inner: roomkit::push::InMemoryBus,
    lose: Vec<&'static str>,
}

#[async_trait::async_trait]
impl roomkit::push::Bus for LossyBus {
    async fn publish(&self, envelope: &roomkit::push::Envelope) -> Result<(), roomkit::push::BusError> {
        let payload = String::from_utf8_lossy(&envelope.message.payload);
        if self.lose.iter().any(|l| payload.contains(l)) {
            return Ok(());
        }
        self.inner.publish(envelope).await
    }
    async fn subscribe(
        &self,
        node: room_core::NodeId,
    ) -> Result<futures::stream::BoxStream<'static, roomkit::push::Envelope>, roomkit::push::BusError> {
        self.inner.subscribe(node).await
    }
    async fn set_interest(
        &self,
        node: room_core::NodeId,
        room: RoomKey,
        interested: bool,
    ) -> Result<(), roomkit::push::BusError> {
        self.inner.set_interest(node, room, interested).await
    }
}

/// Teacher messages said over a bus that loses some of them: what a
/// student receives, in order, and the service's count of refills.
async fn teacher_messages_over_lossy_bus(with_cache: bool) -> (Vec<String>, u64) {
    use roomkit::push::{Bus, InMemorySharedCache, SharedCache};
    use std::sync::Arc;
    let svc = service();
    let teacher = join(&svc, 1, Role::Teacher);
    let mut alice = join(&svc, 100, Role::Student);
    let lossy: Arc<dyn Bus> =
        Arc::new(LossyBus { inner: roomkit::push::InMemoryBus::new(1024), lose: vec!["\"m2\"", "\"m3\""] });
    let cache = with_cache
        .then(|| (Arc::new(InMemorySharedCache::new(64, 16)) as Arc<dyn SharedCache>, Duration::from_secs(1)));
    let _pump = tokio::spawn(svc.clone().attach_bus_with_cache(lossy, room_core::NodeId(1), cache));
    tokio::time::sleep(Duration::from_millis(50)).await;
    for i in 1..=5 {
        svc.handle_text(teacher.id, &format!(r#"{{"t":"say","text":"m{i}"}}"#)).expect("say");
    }
    let mut said = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(3);
    while std::time::Instant::now() < deadline && !said.iter().any(|t| t == "m5") {
        let frames = drain(&mut alice);
        said.extend(pushed(&frames, 2).iter().filter_map(|d| d["text"].as_str().map(String::from)));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    (said, svc.stats().refilled)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shared_cache_refills_what_the_bus_lost() {
    let (said, refilled) = teacher_messages_over_lossy_bus(true).await;
    assert_eq!(said, ["m1", "m2", "m3", "m4", "m5"], "every message, in order");
    assert_eq!(refilled, 2);
    // Without the cache the same loss leaves a hole the client must check for.
    let (said, refilled) = teacher_messages_over_lossy_bus(false).await;
    assert_eq!(said, ["m1", "m4", "m5"]);
    assert_eq!(refilled, 0);
}
