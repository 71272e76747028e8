//! The host's side on one node: publish as the system, presence, counts
//! and pages, kick (with and without a ban), close a room.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::{One, ROOM, codes, pushed};
use room_core::{Role, RoleSet, Terminal, TerminalSet, Uin};
use room_memberlist::{PageQuery, PageStart};
use room_push::{Class, Kind, Target};
use room_service::host::{HostAnswer, HostError, HostRequest};
use room_service::peer::CloseReason;
use serde_json::Value;

const NOTICE: Kind = Kind(300);

fn publish(target: Target, class: Class, data: &'static str) -> HostRequest {
    HostRequest::Publish { room: ROOM, target, class, kind: NOTICE, data: Bytes::from_static(data.as_bytes()) }
}

fn byes(frames: &[Value]) -> Vec<(u64, String)> {
    frames
        .iter()
        .filter(|f| f["t"] == "bye")
        .map(|f| (f["code"].as_u64().unwrap_or(0), f["reason"].as_str().unwrap_or("").to_owned()))
        .collect()
}

#[test]
fn the_host_publishes_as_the_system_numbered_and_recoverable() {
    let mut one = One::new(|_| {});
    let teacher = one.connect(1, Role::Teacher);
    let student = one.connect(100, Role::Student);
    let other = one.connect(101, Role::Student);
    for c in [teacher, student, other] {
        one.take(c);
    }
    let answer = one.host(publish(Target::room(), Class::Teacher, r#"{"text":"class starts in 1 minute"}"#));
    let Ok(HostAnswer::Published { epoch, seq }) = answer else { panic!("{answer:?}") };
    assert!(epoch > 0 && seq > 0, "numbered: ({epoch}, {seq})");
    for c in [teacher, student, other] {
        let frames = one.take(c);
        let got = pushed(&frames, 300);
        assert_eq!(got, [serde_json::json!({"text": "class starts in 1 minute"})], "{frames:?}");
        let body = frames.iter().find(|f| f["t"] == "push").map(|f| f["b"].clone()).expect("a push");
        assert_eq!(body["from"], 0, "the sender is the system: {body}");
    }
    // Recoverable like a teacher's message: a check from before it returns it.
    one.advance(Duration::from_secs(1));
    one.send(other, &format!(r#"{{"t":"check","epoch":{epoch},"after":{}}}"#, seq - 1));
    let recovered = one.take(other).into_iter().find(|f| f["t"] == "recover").expect("a recover frame");
    let frames = recovered["frames"].as_array().expect("frames").clone();
    assert!(frames.iter().any(|f| f["s"] == seq && f["b"]["kind"] == 300), "{recovered}");

    // To one user only.
    let answer = one.host(publish(Target::user(Uin(100)), Class::Signal, r#"{"page":7}"#));
    assert!(matches!(answer, Ok(HostAnswer::Published { .. })), "{answer:?}");
    assert_eq!(pushed(&one.take(student), 300), [serde_json::json!({"page": 7})]);
    assert!(pushed(&one.take(other), 300).is_empty(), "not to the others");
    assert!(pushed(&one.take(teacher), 300).is_empty(), "not to the teacher");

    // To a role: staff only.
    let answer = one.host(publish(Target::room().roles(RoleSet::staff()), Class::Signal, "[1,2]"));
    assert!(answer.is_ok(), "{answer:?}");
    assert_eq!(pushed(&one.take(teacher), 300), [serde_json::json!([1, 2])]);
    assert!(pushed(&one.take(student), 300).is_empty());

    // Chat from the host is not numbered.
    let answer = one.host(publish(Target::room(), Class::Chat, r#"{"text":"hi"}"#));
    assert_eq!(answer, Ok(HostAnswer::Published { epoch: 0, seq: 0 }));
    one.advance(Duration::from_millis(300));
    assert_eq!(pushed(&one.take(student), 300), [serde_json::json!({"text": "hi"})]);
}

#[test]
fn a_host_publish_that_does_not_fit_is_refused_with_what_was_wrong() {
    let mut one = One::new(|_| {});
    let _teacher = one.connect(1, Role::Teacher);
    let roomkits = HostRequest::Publish {
        room: ROOM,
        target: Target::room(),
        class: Class::Signal,
        kind: Kind(6),
        data: Bytes::from_static(b"{}"),
    };
    let reserved = HostRequest::Publish {
        room: ROOM,
        target: Target::room(),
        class: Class::Signal,
        kind: Kind(0xFF01),
        data: Bytes::from_static(b"{}"),
    };
    let big = HostRequest::Publish {
        room: ROOM,
        target: Target::room(),
        class: Class::Signal,
        kind: NOTICE,
        data: Bytes::from(format!("\"{}\"", "x".repeat(1 << 20))),
    };
    for (request, expect) in [
        (roomkits, "kind 6 is not a host's"),
        (reserved, "kind 65281 is not a host's"),
        (publish(Target::room(), Class::Signal, "{not json"), "data is not JSON"),
        (publish(Target::room(), Class::Reaction, "{}"), "cannot publish reactions"),
        (publish(Target::users(Vec::new()), Class::Signal, "{}"), "lists no users"),
        (big, "bytes is over"),
    ] {
        match one.node.host(one.now, request.clone()) {
            Err(HostError::Bad(message)) => assert!(message.contains(expect), "{message:?} for {request:?}"),
            other => panic!("{request:?} was not refused: {other:?}"),
        }
    }
    let kick = HostRequest::Kick { member: ROOM.member(Uin(5)), reason: "x".repeat(201), ban_ms: None };
    assert!(matches!(one.node.host(one.now, kick), Err(HostError::Bad(m)) if m.contains("201 characters")));
    let ban = HostRequest::Kick { member: ROOM.member(Uin(5)), reason: String::new(), ban_ms: Some(u64::MAX) };
    assert!(matches!(one.node.host(one.now, ban), Err(HostError::Bad(m)) if m.contains("ban of")));
    let page = HostRequest::Members { room: ROOM, query: PageQuery::first(0) };
    assert!(matches!(one.node.host(one.now, page), Err(HostError::Bad(m)) if m.contains("limit 0")));
}

#[test]
fn presence_counts_and_pages_answer_from_the_member_list() {
    let mut one = One::new(|_| {});
    let _teacher = one.connect(1, Role::Teacher);
    one.connect_on(100, Role::Student, Terminal::Web);
    one.connect_on(100, Role::Student, Terminal::Ios);
    for uin in 101..=120 {
        one.connect(uin, Role::Student);
    }
    let answer = one.host(HostRequest::Presence { member: ROOM.member(Uin(100)) });
    let Ok(HostAnswer::Presence(Some(row))) = answer else { panic!("{answer:?}") };
    assert_eq!(row.role, Role::Student);
    assert_eq!(row.terminals.iter().collect::<Vec<_>>(), [Terminal::Web, Terminal::Ios]);
    assert_eq!(one.host(HostRequest::Presence { member: ROOM.member(Uin(999)) }), Ok(HostAnswer::Presence(None)));

    let Ok(HostAnswer::Counts(counts)) = one.host(HostRequest::Counts { room: ROOM }) else { panic!("counts") };
    assert_eq!((counts.total(), counts.role(Role::Teacher), counts.role(Role::Student)), (22, 1, 21));
    assert_eq!((counts.terminal(Terminal::Web), counts.terminal(Terminal::Ios)), (21, 1));

    // Students only, 8 at a time, in join order; the pages cover them all once.
    let mut seen = Vec::new();
    let mut start = PageStart::First;
    loop {
        let query = PageQuery::first(8).roles(RoleSet::only(Role::Student)).start(start);
        let Ok(HostAnswer::Members { rows, next }) = one.host(HostRequest::Members { room: ROOM, query }) else {
            panic!("a page")
        };
        assert!(rows.iter().all(|r| r.role == Role::Student));
        seen.extend(rows.iter().map(|r| r.uin.0));
        match next {
            Some(cursor) => start = PageStart::After(cursor),
            None => break,
        }
    }
    assert_eq!(seen, (100..=120).collect::<Vec<u64>>());
    // Only those on the app.
    let query = PageQuery::first(100).terminals(TerminalSet::only(Terminal::Ios));
    let Ok(HostAnswer::Members { rows, .. }) = one.host(HostRequest::Members { room: ROOM, query }) else {
        panic!("a page")
    };
    assert_eq!(rows.iter().map(|r| r.uin.0).collect::<Vec<_>>(), [100]);
}

#[test]
fn a_kick_closes_every_terminal_with_the_reason_and_a_ban_keeps_the_member_out() {
    let mut one = One::new(|_| {});
    let teacher = one.connect(1, Role::Teacher);
    let web = one.connect_on(100, Role::Student, Terminal::Web);
    let app = one.connect_on(100, Role::Student, Terminal::Ios);
    let other = one.connect(101, Role::Student);
    one.send(web, r#"{"t":"hand","op":"raise"}"#);
    one.advance(Duration::from_millis(100));
    for c in [teacher, web, app, other] {
        one.take(c);
    }
    let kick = HostRequest::Kick { member: ROOM.member(Uin(100)), reason: "disruptive".into(), ban_ms: None };
    assert_eq!(one.host(kick), Ok(HostAnswer::Kicked { was_present: true }));
    for c in [web, app] {
        assert_eq!(byes(&one.take(c)), [(4005, "disruptive".to_owned())]);
        assert_eq!(one.sink.closed.get(&c), Some(&CloseReason::Kicked));
    }
    assert!(!one.sink.closed.contains_key(&other), "nobody else is closed");
    assert_eq!(one.host(HostRequest::Presence { member: ROOM.member(Uin(100)) }), Ok(HostAnswer::Presence(None)));
    assert!(!one.node.owns_session(&ROOM.member(Uin(100))), "its sessions ended");
    assert_eq!(one.node.classroom(ROOM).map(|c| c.hands().count()), Some(0), "its hand went down");
    one.advance(Duration::from_secs(2));
    let roster = pushed(&one.take(teacher), 8).last().cloned().expect("a roster");
    assert_eq!(roster["total"], 2, "{roster}");
    // Kicking someone absent says so.
    let again = HostRequest::Kick { member: ROOM.member(Uin(100)), reason: String::new(), ban_ms: None };
    assert_eq!(one.host(again), Ok(HostAnswer::Kicked { was_present: false }));

    // Without a ban the member may come back.
    let back = one.connect(100, Role::Student);
    assert!(one.take(back).iter().any(|f| f["t"] == "welcome"));

    // With a ban, it may not, until the ban ends.
    let ban = HostRequest::Kick { member: ROOM.member(Uin(100)), reason: "out".into(), ban_ms: Some(60_000) };
    assert_eq!(one.host(ban), Ok(HostAnswer::Kicked { was_present: true }));
    assert_eq!(one.sink.closed.get(&back), Some(&CloseReason::Kicked));
    let refused = one.connect(100, Role::Student);
    let frames = one.take(refused);
    assert_eq!(codes(&frames), ["banned"], "{frames:?}");
    assert!(frames.iter().any(|f| f["message"].as_str().is_some_and(|m| m.contains("60 s"))), "{frames:?}");
    assert_eq!(one.sink.closed.get(&refused), Some(&CloseReason::Refused));
    one.advance(Duration::from_secs(61));
    let after = one.connect(100, Role::Student);
    assert!(one.take(after).iter().any(|f| f["t"] == "welcome"), "the ban ended");
}

#[test]
fn closing_a_room_closes_every_client_and_lets_its_state_go() {
    let mut one = One::new(|_| {});
    let teacher = one.connect(1, Role::Teacher);
    let students: Vec<_> = (100..110).map(|uin| one.connect(uin, Role::Student)).collect();
    one.send(teacher, r#"{"t":"card_open","options":3}"#);
    one.send(teacher, r#"{"t":"mute_all","on":true}"#);
    one.send(students[0], r#"{"t":"hand","op":"raise"}"#);
    one.advance(Duration::from_millis(200));
    assert!(one.node.runs_room(ROOM));
    let close = HostRequest::CloseRoom { room: ROOM, reason: "class is over".into() };
    assert_eq!(one.host(close), Ok(HostAnswer::Closed { members: 11 }));
    for c in students.iter().chain([&teacher]) {
        assert_eq!(byes(&one.take(*c)), [(4006, "class is over".to_owned())]);
        assert_eq!(one.sink.closed.get(c), Some(&CloseReason::RoomClosed));
    }
    assert_eq!(one.node.stats().sessions, 0);
    assert_eq!(one.node.stats().connections, 0);
    one.advance(Duration::from_millis(200));
    assert!(!one.node.runs_room(ROOM), "the room was let go");
    assert_eq!(one.node.stats().rooms, 0);
    assert_eq!(one.node.room_connections(ROOM), 0);

    // The next class in the room starts clean: no card, no mute, no hands.
    let again = one.connect(100, Role::Student);
    let frames = one.take(again);
    let welcome = frames.iter().find(|f| f["t"] == "welcome").expect("welcome");
    assert_eq!(welcome["muted"], false, "{welcome}");
    assert!(!frames.iter().any(|f| f["t"] == "state"), "nothing open: {frames:?}");
    one.send(again, r#"{"t":"card_answer","option":1}"#);
    assert_eq!(codes(&one.take(again)), ["refused"], "no card is open");
    assert_eq!(one.node.classroom(ROOM).map(|c| c.hands().count()), Some(0));
}

#[test]
fn the_host_is_told_what_happens_in_order() {
    use room_core::ExitReason;
    use room_service::host::EventKind;
    use room_service::wire::HandOp;
    let mut one = One::new(|_| {});
    let teacher = one.connect(1, Role::Teacher);
    let a = one.connect(100, Role::Student);
    let _a_again = one.connect_on(100, Role::Student, Terminal::Ios);
    let b = one.connect(101, Role::Student);
    let c = one.connect(102, Role::Student);
    one.send(a, r#"{"t":"hand","op":"raise"}"#);
    one.advance(Duration::from_millis(100));
    one.send(teacher, r#"{"t":"hand","op":"invite","uin":100}"#);
    one.send(teacher, r#"{"t":"card_open","options":3,"correct":1}"#);
    one.advance(Duration::from_millis(100));
    one.send(a, r#"{"t":"card_answer","option":1}"#);
    one.send(b, r#"{"t":"card_answer","option":2}"#);
    one.advance(Duration::from_secs(1));
    // A retry of the same answer is not a second answer.
    one.send(a, r#"{"t":"card_answer","option":1}"#);
    one.send(teacher, r#"{"t":"card_close"}"#);
    one.send(teacher, r#"{"t":"packet_send","amount":10,"count":2}"#);
    one.advance(Duration::from_millis(100));
    one.send(b, r#"{"t":"packet_grab","id":1}"#);
    one.advance(Duration::from_secs(1));
    one.send(b, r#"{"t":"packet_grab","id":1}"#);
    one.send(c, r#"{"t":"react","kind":"flower","n":3}"#);
    one.advance(Duration::from_secs(1));
    one.send(c, r#"{"t":"leave"}"#);
    assert_eq!(one.sink.closed.get(&c), Some(&CloseReason::Left));
    let kick = HostRequest::Kick { member: ROOM.member(Uin(101)), reason: String::new(), ban_ms: None };
    assert!(one.host(kick).is_ok());
    let close = HostRequest::CloseRoom { room: ROOM, reason: String::new() };
    assert!(one.host(close).is_ok());

    let seqs: Vec<u64> = one.events.iter().map(|e| e.seq).collect();
    assert_eq!(seqs, (1..=seqs.len() as u64).collect::<Vec<_>>(), "numbered 1, 2, 3...");
    assert!(one.events.iter().all(|e| e.room == ROOM));
    assert!(one.events.windows(2).all(|w| w[0].at <= w[1].at));
    let what: Vec<EventKind> = one.events.iter().map(|e| e.what.clone()).collect();
    let grabbed = match what.iter().find(|w| matches!(w, EventKind::Grab { .. })) {
        Some(EventKind::Grab { amount, .. }) => *amount,
        _ => panic!("no grab in {what:?}"),
    };
    let expected = vec![
        EventKind::Entered { uin: Uin(1), role: Role::Teacher, terminal: Terminal::Pc },
        EventKind::Entered { uin: Uin(100), role: Role::Student, terminal: Terminal::Web },
        EventKind::Entered { uin: Uin(101), role: Role::Student, terminal: Terminal::Web },
        EventKind::Entered { uin: Uin(102), role: Role::Student, terminal: Terminal::Web },
        EventKind::Hand { uin: Uin(100), op: HandOp::Raise, by: Uin(100) },
        EventKind::Hand { uin: Uin(100), op: HandOp::Invite, by: Uin(1) },
        EventKind::Answer { card: 1, uin: Uin(100), option: 1 },
        EventKind::Answer { card: 1, uin: Uin(101), option: 2 },
        EventKind::CardResult { card: 1, tally: vec![0, 1, 1], correct: Some(1), answered: 2, right: 1 },
        EventKind::Grab { packet: 1, uin: Uin(101), amount: grabbed },
        EventKind::Reactions { flowers: 3, likes: 0 },
        EventKind::Left { uin: Uin(102), reason: ExitReason::Left },
        EventKind::Left { uin: Uin(101), reason: ExitReason::Kicked },
        EventKind::Left { uin: Uin(1), reason: ExitReason::RoomClosed },
        EventKind::Left { uin: Uin(100), reason: ExitReason::RoomClosed },
        EventKind::Closed,
    ];
    assert_eq!(what, expected);
}

#[test]
fn a_member_whose_heartbeats_stop_is_told_as_timed_out() {
    use room_core::ExitReason;
    use room_service::host::EventKind;
    let mut one = One::new(|c| c.heartbeat = Duration::from_secs(1));
    let _teacher = one.connect(1, Role::Teacher);
    let _silent = one.connect(100, Role::Student);
    one.events.clear();
    one.advance(Duration::from_secs(10));
    let left: Vec<&EventKind> =
        one.events.iter().map(|e| &e.what).filter(|w| matches!(w, EventKind::Left { .. })).collect();
    assert!(left.contains(&&EventKind::Left { uin: Uin(100), reason: ExitReason::TimedOut }), "{:?}", one.events);
}

#[test]
fn revoked_tickets_are_refused_and_later_ones_let_in() {
    use room_service::Admission;
    use room_service::host::{Revocation, TicketStamp};
    let mut one = One::new(|_| {});
    let _teacher = one.connect(1, Role::Teacher);
    let enter = |one: &mut One, uin: u64, stamp: TicketStamp| {
        let who = Admission::new(ROOM, Uin(uin), Role::Student, Terminal::Web).with_ticket(stamp);
        let conn = one.node.connect(one.now, who).expect("starts entering");
        one.pump();
        one.advance(Duration::from_millis(60));
        let frames = one.take(conn);
        (conn, frames)
    };
    let now_secs = one.now.as_micros() / 1_000_000;
    let old = TicketStamp { id: [1; 16], issued_at: now_secs - 10 };
    let other = TicketStamp { id: [2; 16], issued_at: now_secs - 10 };
    let revoke = |what| HostRequest::Revoke { room: ROOM, what, for_ms: 3_600_000 };
    assert_eq!(one.host(revoke(Revocation::Ticket([1; 16]))), Ok(HostAnswer::Revoked));
    let (conn, frames) = enter(&mut one, 100, old);
    assert_eq!(codes(&frames), ["revoked"], "{frames:?}");
    assert_eq!(one.sink.closed.get(&conn), Some(&CloseReason::Refused));
    let (_, frames) = enter(&mut one, 100, other);
    assert!(frames.iter().any(|f| f["t"] == "welcome"), "another ticket enters: {frames:?}");

    // Every ticket user 101 had so far: refused; one issued later: let in.
    assert_eq!(one.host(revoke(Revocation::User(Uin(101)))), Ok(HostAnswer::Revoked));
    let (_, frames) = enter(&mut one, 101, TicketStamp { id: [3; 16], issued_at: now_secs });
    assert_eq!(codes(&frames), ["revoked"], "{frames:?}");
    let (_, frames) = enter(&mut one, 101, TicketStamp { id: [4; 16], issued_at: 0 });
    assert_eq!(codes(&frames), ["revoked"], "a ticket that does not say when is earlier: {frames:?}");
    one.advance(Duration::from_secs(2));
    let later = TicketStamp { id: [5; 16], issued_at: one.now.as_micros() / 1_000_000 };
    let (_, frames) = enter(&mut one, 101, later);
    assert!(frames.iter().any(|f| f["t"] == "welcome"), "{frames:?}");
    // Others are not touched; the revocation ends when it was told to.
    let (_, frames) = enter(&mut one, 102, TicketStamp { id: [6; 16], issued_at: 0 });
    assert!(frames.iter().any(|f| f["t"] == "welcome"), "{frames:?}");
    one.advance(Duration::from_secs(3_601));
    let (_, frames) = enter(&mut one, 100, old);
    assert!(frames.iter().any(|f| f["t"] == "welcome"), "the revocation ended: {frames:?}");
}

#[test]
fn a_closed_socket_keeps_its_place_until_the_timeout_and_a_reconnect_resumes() {
    use room_core::ExitReason;
    use room_service::host::EventKind;
    let mut one = One::new(|c| c.heartbeat = Duration::from_secs(2));
    let teacher = one.connect(1, Role::Teacher);
    let student = one.connect(100, Role::Student);
    let welcome = one.take(student).into_iter().find(|f| f["t"] == "welcome").expect("welcome");
    let (epoch, head) = (welcome["epoch"].as_u64().expect("epoch"), welcome["head"].as_u64().expect("head"));
    one.send(student, r#"{"t":"hand","op":"raise"}"#);
    one.advance(Duration::from_millis(100));
    one.events.clear();
    one.node.disconnect(one.now, student);
    one.pump();
    one.send(teacher, r#"{"t":"say","text":"while you were away"}"#);
    one.send(teacher, r#"{"t":"beat"}"#);
    one.advance(Duration::from_secs(2));
    assert!(one.events.is_empty(), "no leave yet: {:?}", one.events);
    assert_eq!(
        one.host(HostRequest::Counts { room: ROOM }).map(|a| matches!(a, HostAnswer::Counts(c) if c.total() == 2)),
        Ok(true)
    );

    // Back inside the timeout: the same member, nothing for the others.
    let again = one.connect(100, Role::Student);
    let welcome = one.take(again).into_iter().find(|f| f["t"] == "welcome").expect("welcome");
    assert_eq!(welcome["epoch"].as_u64(), Some(epoch));
    assert!(one.events.is_empty(), "no leave and no enter: {:?}", one.events);
    assert_eq!(one.node.classroom(ROOM).map(|c| c.hands().collect::<Vec<_>>()), Some(vec![Uin(100)]));
    one.send(again, &format!(r#"{{"t":"check","epoch":{epoch},"after":{head}}}"#));
    let recovered = one.take(again).into_iter().find(|f| f["t"] == "recover").expect("recover");
    assert!(
        recovered["frames"]
            .as_array()
            .is_some_and(|fs| fs.iter().any(|f| f["b"]["data"]["text"] == "while you were away")),
        "{recovered}"
    );

    // Gone for good: out after the timeout, as timed out.
    one.node.disconnect(one.now, again);
    one.pump();
    for _ in 0..10 {
        one.send(teacher, r#"{"t":"beat"}"#);
        one.advance(Duration::from_secs(1));
    }
    let left: Vec<EventKind> = one.events.iter().map(|e| e.what.clone()).collect();
    assert_eq!(left, [EventKind::Left { uin: Uin(100), reason: ExitReason::TimedOut }]);
}

#[test]
fn leave_on_disconnect_makes_a_closed_socket_a_leave() {
    use room_core::ExitReason;
    use room_service::host::EventKind;
    let mut one = One::new(|c| c.leave_on_disconnect = true);
    let _teacher = one.connect(1, Role::Teacher);
    let student = one.connect(100, Role::Student);
    one.events.clear();
    one.node.disconnect(one.now, student);
    one.pump();
    let left: Vec<EventKind> = one.events.iter().map(|e| e.what.clone()).collect();
    assert_eq!(left, [EventKind::Left { uin: Uin(100), reason: ExitReason::Left }]);
}

#[test]
fn clients_send_the_hosts_own_kinds_as_registered() {
    use room_push::Quota;
    use room_service::kinds::{Audience, CustomKind, CustomKinds, CustomMessage, Verdict};
    let mut kinds = CustomKinds::default();
    let stroke = CustomKind::new(Kind(300), Class::Signal)
        .senders(RoleSet::staff())
        .rate(Quota::per_second(2).and_then(|q| q.with_burst(3)).expect("a quota"));
    kinds.register(stroke).expect("registers");
    let note = CustomKind::new(Kind(301), Class::Chat).senders(RoleSet::only(Role::Student)).audience(Audience::Staff);
    kinds.register(note).expect("registers");
    let whisper = CustomKind::new(Kind(302), Class::Signal).audience(Audience::User);
    kinds.register(whisper).expect("registers");
    let kinds = kinds.with_filter(|m: &CustomMessage<'_>| {
        if m.data.windows(3).any(|w| w == b"bad") { Verdict::Veto("no bad words".into()) } else { Verdict::Allow }
    });
    let mut one = One::new(|c| c.kinds = kinds);
    let teacher = one.connect(1, Role::Teacher);
    let a = one.connect(100, Role::Student);
    let b = one.connect(101, Role::Student);
    for c in [teacher, a, b] {
        one.take(c);
    }
    // The teacher draws; both students see it, from the teacher, numbered.
    one.send(teacher, r#"{"t":"custom","kind":300,"data":{"x":1,"y":2}}"#);
    one.advance(Duration::from_millis(100));
    for s in [a, b] {
        let frames = one.take(s);
        assert_eq!(pushed(&frames, 300), [serde_json::json!({"x": 1, "y": 2})], "{frames:?}");
        let push = frames.iter().find(|f| f["t"] == "push" && f["b"]["kind"] == 300).expect("a push");
        assert_eq!((push["b"]["from"].as_u64(), push["c"].as_str()), (Some(1), Some("signal")));
        assert!(push["s"].as_u64().is_some_and(|s| s > 0), "numbered: {push}");
    }
    assert!(pushed(&one.take(teacher), 300).is_empty(), "not back to the sender");
    // A student may not draw; the kind's rate binds the teacher.
    one.send(a, r#"{"t":"custom","kind":300,"data":{}}"#);
    assert_eq!(codes(&one.take(a)), ["not_allowed"]);
    for _ in 0..10 {
        one.send(teacher, r#"{"t":"custom","kind":300,"data":{}}"#);
    }
    let limited = codes(&one.take(teacher)).iter().filter(|c| *c == "rate_limited").count();
    assert!(limited >= 6, "{limited} of 10 refused");

    // A student's note goes to the staff only.
    one.send(a, r#"{"t":"custom","kind":301,"data":{"text":"I am lost"}}"#);
    one.advance(Duration::from_millis(300));
    assert_eq!(pushed(&one.take(teacher), 301), [serde_json::json!({"text": "I am lost"})]);
    assert!(pushed(&one.take(b), 301).is_empty());
    // A whisper reaches the one named; without `to` it is refused.
    one.send(b, r#"{"t":"custom","kind":302,"data":"psst","to":100}"#);
    one.advance(Duration::from_millis(100));
    assert_eq!(pushed(&one.take(a), 302), [serde_json::json!("psst")]);
    assert!(pushed(&one.take(teacher), 302).is_empty());
    one.send(b, r#"{"t":"custom","kind":302,"data":"psst"}"#);
    assert_eq!(codes(&one.take(b)), ["malformed"]);
    // The filter vetoes; unknown kinds say which are known.
    one.send(a, r#"{"t":"custom","kind":301,"data":{"text":"bad words"}}"#);
    let frames = one.take(a);
    assert_eq!(codes(&frames), ["vetoed"]);
    assert!(frames.iter().any(|f| f["message"].as_str().is_some_and(|m| m.contains("no bad words"))));
    one.send(a, r#"{"t":"custom","kind":999,"data":1}"#);
    let frames = one.take(a);
    assert_eq!(codes(&frames), ["unknown_kind"]);
    assert!(frames.iter().any(|f| f["message"].as_str().is_some_and(|m| m.contains("300, 301, 302"))), "{frames:?}");
    let big = format!(r#"{{"t":"custom","kind":301,"data":"{}"}}"#, "x".repeat(3_000));
    one.send(a, &big);
    assert_eq!(codes(&one.take(a)), ["too_large"]);
}

#[test]
fn kinds_that_cannot_work_are_not_registered() {
    use room_service::kinds::{Audience, CustomKind, CustomKinds, KindError};
    let mut kinds = CustomKinds::default();
    assert_eq!(kinds.register(CustomKind::new(Kind(8), Class::Signal)), Err(KindError::NotAHostKind(8)));
    assert_eq!(kinds.register(CustomKind::new(Kind(0xFF00), Class::Signal)), Err(KindError::NotAHostKind(0xFF00)));
    assert_eq!(kinds.register(CustomKind::new(Kind(300), Class::Reaction)), Err(KindError::Reaction));
    assert_eq!(
        kinds.register(CustomKind::new(Kind(300), Class::Signal).senders(RoleSet::EMPTY)),
        Err(KindError::NoSenders(300))
    );
    assert_eq!(
        kinds.register(CustomKind::new(Kind(300), Class::Signal).audience(Audience::Subclass)),
        Err(KindError::SubclassNotChat(300))
    );
    assert!(matches!(
        kinds.register(CustomKind::new(Kind(300), Class::Signal).max_data(1 << 20)),
        Err(KindError::MaxData { .. })
    ));
    assert_eq!(kinds.register(CustomKind::new(Kind(300), Class::Signal)), Ok(()));
    assert_eq!(kinds.register(CustomKind::new(Kind(300), Class::Chat)), Err(KindError::Duplicate(300)));
}

#[test]
fn a_room_nobody_is_in_has_an_empty_page_and_zero_counts() {
    let mut one = One::new(|_| {});
    let empty = room_core::RoomKey::new(room_core::BusinessId(1), room_core::RoomId(12_345));
    let page = one.host(HostRequest::Members { room: empty, query: PageQuery::first(10) });
    assert_eq!(page, Ok(HostAnswer::Members { rows: Vec::new(), next: None }));
    let Ok(HostAnswer::Counts(counts)) = one.host(HostRequest::Counts { room: empty }) else { panic!("counts") };
    assert_eq!(counts.total(), 0);
}
