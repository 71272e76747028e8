//! The classroom's rules on one node, driven synchronously (the shared
//! cache, the limiter and the bus answered inline): fairness under a flood,
//! state for late joiners and reloads, mutes that survive a reconnect, one
//! connection per member and terminal, slow readers, per-kind budgets.

mod common;

use std::time::Duration;

use common::{Handed, One, codes, pushed};
use room_core::Role;
use room_service::peer::CloseReason;
use serde_json::Value;
#[test]
fn a_hand_flood_silences_nobody_but_the_flooder() {
    let mut one = One::new(|_| {});
    let teacher = one.connect(1, Role::Teacher);
    let flooder = one.connect(100, Role::Student);
    let student = one.connect(101, Role::Student);
    one.take(student);
    one.take(flooder);
    let mut card_opened = false;
    // 2,000 toggles a second for 10 s, the teacher saying 10 messages a
    // second and opening a card.
    for tick in 0..20_000u32 {
        let op = if tick % 2 == 0 { "raise" } else { "lower" };
        one.send(flooder, &format!(r#"{{"t":"hand","op":"{op}"}}"#));
        if tick % 200 == 0 {
            one.send(teacher, &format!(r#"{{"t":"say","text":"m{}"}}"#, tick / 200));
        }
        if tick == 10_000 {
            one.send(teacher, r#"{"t":"card_open","options":3}"#);
            card_opened = true;
        }
        one.advance(Duration::from_micros(500));
    }
    assert!(card_opened);
    one.advance(Duration::from_millis(500));
    let seen = one.take(student);
    let said: Vec<String> = pushed(&seen, 2).iter().filter_map(|d| d["text"].as_str().map(String::from)).collect();
    let expected: Vec<String> = (0..100).map(|i| format!("m{i}")).collect();
    assert_eq!(said, expected, "every teacher message reached the student, in order");
    assert!(pushed(&seen, 6).iter().any(|d| d["op"] == "open"), "the card reached the student");
    assert!(codes(&one.take(teacher)).is_empty(), "the teacher was refused nothing");
    let flood = one.take(flooder);
    let limited: Vec<&Value> = flood.iter().filter(|f| f["code"] == "rate_limited").collect();
    assert!(limited.len() > 19_000, "the flooder was limited: {} refusals", limited.len());
    assert!(limited.iter().all(|f| f["retry_after_ms"].as_u64().is_some()), "each refusal says when to retry");
}

#[test]
fn every_kind_of_request_has_a_budget() {
    let mut one = One::new(|_| {});
    let student = one.connect(100, Role::Student);
    let welcome = one.take(student).into_iter().find(|f| f["t"] == "welcome").expect("welcome");
    let epoch = welcome["epoch"].as_u64().expect("epoch");
    for (frame, kind) in [
        (r#"{"t":"beat"}"#.to_owned(), "beat"),
        (format!(r#"{{"t":"ack","epoch":{epoch},"seq":0}}"#), "ack"),
        (format!(r#"{{"t":"check","epoch":{epoch},"after":0}}"#), "check"),
        (r#"{"t":"members"}"#.to_owned(), "members"),
        (r#"{"t":"state"}"#.to_owned(), "state"),
        (r#"{"t":"chat","text":"x"}"#.to_owned(), "chat"),
    ] {
        one.advance(Duration::from_secs(10));
        one.take(student);
        for _ in 0..100 {
            one.send(student, &frame);
        }
        let refused = codes(&one.take(student)).iter().filter(|c| *c == "rate_limited").count();
        assert!(refused >= 80, "{kind}: {refused} of 100 refused");
    }
}

#[test]
fn a_late_joiner_and_a_reload_see_what_is_open() {
    let mut one = One::new(|_| {});
    let teacher = one.connect(1, Role::Teacher);
    let early = one.connect(100, Role::Student);
    one.send(teacher, r#"{"t":"card_open","options":4,"seconds":60}"#);
    one.send(teacher, r#"{"t":"packet_send","amount":100,"count":4}"#);
    one.advance(Duration::from_millis(100));
    one.send(early, r#"{"t":"card_answer","option":2}"#);
    one.send(early, r#"{"t":"packet_grab","id":1}"#);
    one.send(early, r#"{"t":"hand","op":"raise"}"#);
    one.advance(Duration::from_millis(100));
    let grabbed = one.take(early).iter().find(|f| f["t"] == "grabbed").and_then(|f| f["amount"].as_u64());
    let grabbed = grabbed.expect("a share");

    // Someone who comes in now gets the card and the packet right after the welcome.
    let late = one.connect(101, Role::Student);
    let frames = one.take(late);
    assert_eq!(frames[0]["t"], "welcome");
    assert_eq!(frames[1]["t"], "state", "{frames:?}");
    let state = &frames[1]["data"];
    assert_eq!((state["card"]["op"].as_str(), state["card"]["options"].as_u64()), (Some("open"), Some(4)));
    assert_eq!(state["packets"][0]["grabbed"].as_u64(), Some(1));
    assert_eq!(state["hands"], serde_json::json!([]), "a learner sees only its own hand");
    // It can answer and grab.
    one.send(late, r#"{"t":"card_answer","option":1}"#);
    one.send(late, r#"{"t":"packet_grab","id":1}"#);
    one.send(late, r#"{"t":"hand","op":"raise"}"#);
    one.advance(Duration::from_millis(100));
    let frames = one.take(late);
    assert!(frames.iter().any(|f| f["t"] == "answered") && frames.iter().any(|f| f["t"] == "grabbed"), "{frames:?}");

    // The early student reloads: its own answer, share and raised hand come
    // back (a closed socket keeps its place until the heartbeat timeout).
    one.node.disconnect(one.now, early);
    one.pump();
    let again = one.connect(100, Role::Student);
    let state = one.take(again).into_iter().find(|f| f["t"] == "state").expect("state")["data"].clone();
    assert_eq!(state["answer"].as_u64(), Some(2));
    assert_eq!(state["grabbed"], serde_json::json!([[1, grabbed]]));
    assert_eq!(state["hands"], serde_json::json!([100]));
    // The late joiner sees its own hand; the teacher, asking after a
    // reset, gets the whole queue.
    one.send(late, r#"{"t":"state"}"#);
    let state = one.take(late).into_iter().find(|f| f["t"] == "state").expect("state")["data"].clone();
    assert_eq!(state["hands"], serde_json::json!([101]));
    one.send(teacher, r#"{"t":"state"}"#);
    let state = one.take(teacher).into_iter().find(|f| f["t"] == "state").expect("state")["data"].clone();
    assert_eq!(state["hands"], serde_json::json!([100, 101]));
    assert!(state.get("answer").is_none(), "the teacher answered nothing");
}

#[test]
fn a_mute_survives_a_reconnect() {
    let mut one = One::new(|_| {});
    let teacher = one.connect(1, Role::Teacher);
    let student = one.connect(100, Role::Student);
    one.send(teacher, r#"{"t":"mute","uin":100,"on":true}"#);
    one.advance(Duration::from_millis(100));
    one.node.disconnect(one.now, student);
    one.pump();
    let again = one.connect(100, Role::Student);
    let frames = one.take(again);
    assert_eq!(frames[0]["self_muted"], true, "{frames:?}");
    one.send(again, r#"{"t":"chat","text":"let me talk"}"#);
    one.advance(Duration::from_millis(50));
    assert_eq!(codes(&one.take(again)), ["muted"]);
}

#[test]
fn a_second_connection_of_a_member_on_a_terminal_replaces_the_first() {
    let mut one = One::new(|_| {});
    let first = one.connect(1, Role::Teacher);
    let second = one.connect(1, Role::Teacher);
    assert_eq!(one.sink.closed.get(&first), Some(&CloseReason::Replaced));
    assert!(!one.sink.closed.contains_key(&second));
    assert_eq!(CloseReason::Replaced.close_code(), 4002);
    // The newest stays, whichever order its beats come in.
    one.send(second, r#"{"t":"beat"}"#);
    one.advance(Duration::from_secs(1));
    assert!(!one.sink.closed.contains_key(&second));
}

#[test]
fn a_client_that_stops_reading_is_closed_after_the_lag() {
    let mut one = One::new(|c| c.slow_client_lag = Duration::from_secs(5));
    let teacher = one.connect(1, Role::Teacher);
    let reader = one.connect(100, Role::Student);
    let sleeper = one.connect(101, Role::Student);
    one.sink.full.insert(sleeper);
    for i in 0..40 {
        one.send(teacher, &format!(r#"{{"t":"say","text":"m{i}"}}"#));
        one.send(reader, r#"{"t":"beat"}"#);
        one.send(sleeper, r#"{"t":"beat"}"#);
        one.advance(Duration::from_millis(200));
    }
    assert_eq!(one.sink.closed.get(&sleeper), Some(&CloseReason::SlowConsumer));
    assert!(!one.sink.closed.contains_key(&reader), "a client that reads stays");
    assert_eq!(pushed(&one.take(reader), 2).len(), 40);
}

/// Rosters carry who joined and left since the last one (a join and a
/// leave in between cancel out), at most once per roster interval and at
/// most 200 changes each; past that, `more` says to page the list again.
#[test]
fn rosters_carry_bounded_join_and_leave_diffs() {
    let mut one = One::new(|c| c.roster_list_max = 2);
    let teacher = one.connect(1, Role::Teacher);
    for uin in 100..103 {
        one.connect(uin, Role::Student);
    }
    one.advance(Duration::from_secs(2));
    one.take(teacher);
    let s100 = one.connect(103, Role::Student);
    let brief = one.connect(104, Role::Student);
    one.send(brief, r#"{"t":"leave"}"#);
    one.send(s100, r#"{"t":"leave"}"#);
    one.advance(Duration::from_secs(2));
    let rosters = pushed(&one.take(teacher), 8);
    let joined: Vec<u64> = rosters
        .iter()
        .flat_map(|r| r["joined"].as_array().cloned().unwrap_or_default())
        .filter_map(|e| e["uin"].as_u64())
        .collect();
    let left: Vec<u64> = rosters
        .iter()
        .flat_map(|r| r["left"].as_array().cloned().unwrap_or_default())
        .filter_map(|e| e.as_u64())
        .collect();
    assert!(rosters.iter().all(|r| r.get("list").is_none()), "no full list past roster_list_max");
    assert!(!joined.contains(&104) && !left.contains(&104), "104 came and went between rosters: {rosters:?}");
    assert_eq!(rosters.last().map(|r| r["total"].clone()), Some(Value::from(4)));
    assert!(rosters.iter().all(|r| r["more"] == false));
    // 103 joined then left in the same window, or in two: either way the
    // diffs add up to nobody new.
    let net: i64 =
        joined.iter().filter(|u| **u == 103).count() as i64 - left.iter().filter(|u| **u == 103).count() as i64;
    assert_eq!(net, 0, "{rosters:?}");

    // A storm: 300 joins in one window.
    for uin in 1_000..1_300 {
        let who =
            room_service::Admission::new(common::ROOM, room_core::Uin(uin), Role::Student, room_core::Terminal::Web);
        one.node.connect(one.now, who).expect("enters");
        one.pump();
    }
    one.advance(Duration::from_secs(3));
    let rosters = pushed(&one.take(teacher), 8);
    assert!(rosters.len() <= 5, "at most one roster a second: {}", rosters.len());
    assert!(rosters.iter().all(|r| r["joined"].as_array().is_some_and(|j| j.len() <= 200)));
    assert!(rosters.iter().any(|r| r["more"] == true), "the overflow is said");
}

/// A large room's sidebar goes to every member, so it goes out less often:
/// a room's rosters cost at most `roster_frames_per_sec` frames a second.
#[test]
fn a_larger_room_gets_its_roster_less_often() {
    let rosters_in_12s = |frames_per_sec: u32| {
        let mut one = One::new(|c| c.roster_frames_per_sec = frames_per_sec);
        let teacher = one.connect(1, Role::Teacher);
        for uin in 100..400 {
            one.connect(uin, Role::Student);
        }
        one.advance(Duration::from_secs(2));
        one.take(teacher);
        // A member enters every half second: the roster is always due.
        for uin in 1_000..1_024 {
            one.connect(uin, Role::Student);
            one.advance(Duration::from_millis(500));
        }
        pushed(&one.take(teacher), 8).len()
    };
    // About 300 members at 100 frames a second: every 3 s or more.
    let paced = rosters_in_12s(100);
    assert!((3..=5).contains(&paced), "{paced} rosters in 12 s");
    // The default budget leaves a room of 300 at one a second.
    let unpaced = rosters_in_12s(10_000);
    assert!(unpaced >= 11, "{unpaced} rosters in 12 s");
}

/// With log delivery, an entering connection's writer is handed its
/// welcome, then its follow, then what is for it alone: even a message
/// for it from the turn that made it follow (the node hands a turn's
/// follows over before its log outputs).
#[test]
fn an_entering_connection_follows_before_a_message_for_it_alone() {
    let mut one = One::new(|c| c.push.delivery = room_push::Delivery::Log);
    let teacher = one.connect(1, Role::Teacher);
    for uin in 100..110 {
        one.connect(uin, Role::Student);
    }
    // The entry and a message for the entering member alone, in one turn.
    let who = room_service::Admission::new(common::ROOM, room_core::Uin(200), Role::Student, room_core::Terminal::Web);
    let student = one.node.connect(one.now, who).expect("enters");
    one.pump_unflushed();
    let _ = one.node.handle_text(one.now, teacher, r#"{"t":"mute","uin":200,"on":true}"#);
    // The mute's signal waits for the room's save.
    one.advance_unflushed(Duration::from_millis(60));
    one.node.flush(one.now, &mut one.sink);
    let handed = one.sink.handed.get(&student).cloned().unwrap_or_default();
    let follow = handed.iter().position(|h| matches!(h, Handed::Follow { .. }));
    let direct = handed.iter().position(|h| matches!(h, Handed::Direct { .. }));
    assert!(follow.is_some() && direct.is_some(), "{handed:?}");
    assert!(follow < direct, "followed after a direct entry: {handed:?}");
    assert_eq!(handed.first(), Some(&Handed::Frame), "the welcome first: {handed:?}");
}

#[test]
fn a_late_joiner_is_told_of_mute_all_and_reaction_totals_alone() {
    let mut one = One::new(|_| {});
    let teacher = one.connect(1, Role::Teacher);
    let early = one.connect(100, Role::Student);
    // Nothing open, nothing counted, nobody muted: no state frame.
    let late = one.connect(102, Role::Student);
    let frames = one.take(late);
    assert!(frames.iter().all(|f| f["t"] != "state"), "{frames:?}");
    one.send(early, r#"{"t":"react","kind":"flower","n":3}"#);
    one.advance(Duration::from_millis(600));
    let late = one.connect(101, Role::Student);
    let frames = one.take(late);
    let state = frames.iter().find(|f| f["t"] == "state").unwrap_or_else(|| panic!("no state in {frames:?}"));
    assert_eq!(state["data"]["flowers"].as_u64(), Some(3), "{state}");
    one.send(teacher, r#"{"t":"mute_all","on":true}"#);
    one.advance(Duration::from_millis(100));
    let late = one.connect(103, Role::Student);
    let frames = one.take(late);
    let state = frames.iter().find(|f| f["t"] == "state").unwrap_or_else(|| panic!("no state in {frames:?}"));
    assert_eq!(state["data"]["muted"], true, "{state}");
}

#[test]
fn a_check_from_the_start_is_answered_in_bounded_parts() {
    let mut one = One::new(|_| {});
    let teacher = one.connect(1, Role::Teacher);
    let student = one.connect(100, Role::Student);
    for i in 0..300 {
        one.send(teacher, &format!(r#"{{"t":"say","text":"m{i}"}}"#));
        // Within the teacher's own budget (20 requests a second).
        one.advance(Duration::from_millis(60));
    }
    assert!(codes(&one.take(teacher)).is_empty(), "every message was taken");
    let epoch = one.take(student).iter().find_map(|f| (f["t"] == "push").then(|| f["e"].as_u64()).flatten());
    let epoch = epoch.expect("pushes arrived");
    one.send(student, &format!(r#"{{"t":"check","epoch":{epoch},"after":0}}"#));
    one.advance(Duration::from_millis(10));
    let frames = one.take(student);
    let first = frames.iter().find(|f| f["t"] == "recover").unwrap_or_else(|| panic!("no recover in {frames:?}"));
    let part = first["frames"].as_array().expect("frames").len();
    let upto = first["upto"].as_u64().expect("upto");
    assert_eq!(part, 256, "at most 256 messages in one answer");
    assert_eq!(upto, 256, "upto says where to continue");
    // Continuing from `upto` gives the rest.
    one.advance(Duration::from_secs(1));
    one.send(student, &format!(r#"{{"t":"check","epoch":{epoch},"after":{upto}}}"#));
    one.advance(Duration::from_millis(10));
    let frames = one.take(student);
    let rest = frames.iter().find(|f| f["t"] == "recover").unwrap_or_else(|| panic!("no recover in {frames:?}"));
    // The room's own signals (rosters) are numbered too: 300 and more.
    let head = rest["upto"].as_u64().expect("upto");
    assert!(head >= 300, "{rest}");
    assert_eq!(rest["frames"].as_array().expect("frames").len() as u64, head - 256);
}

#[test]
fn a_members_page_holds_at_most_100_rows_and_a_cursor() {
    let mut one = One::new(|_| {});
    let teacher = one.connect(1, Role::Teacher);
    for uin in 100..250 {
        let _ = one.connect(uin, Role::Student);
    }
    one.advance(Duration::from_millis(100));
    let _ = one.take(teacher);
    one.send(teacher, r#"{"t":"members","limit":1000}"#);
    one.advance(Duration::from_millis(10));
    let frames = one.take(teacher);
    let page = frames.iter().find(|f| f["t"] == "members").unwrap_or_else(|| panic!("no page in {frames:?}"));
    assert_eq!(page["rows"].as_array().expect("rows").len(), 100);
    let next = page["next"].clone();
    assert!(!next.is_null(), "a cursor to the rest");
    one.advance(Duration::from_secs(1));
    one.send(teacher, &format!(r#"{{"t":"members","limit":1000,"after":{next}}}"#));
    one.advance(Duration::from_millis(10));
    let frames = one.take(teacher);
    let page = frames.iter().find(|f| f["t"] == "members").unwrap_or_else(|| panic!("no page in {frames:?}"));
    assert_eq!(page["rows"].as_array().expect("rows").len(), 151 - 100);
    assert!(page["next"].is_null());
}

#[test]
fn a_whole_class_raising_hands_at_its_budget_does_not_touch_the_teachers() {
    // 40 learners (a state frame lists 50 hands) each toggling within its own
    // budget, about 3 times a second: each toggle is two signals of the
    // room, about 270 a second, well over the room's quota for the
    // teacher's messages (100 a second). The room's own signals do not draw
    // on that quota, so the teacher is refused nothing.
    let mut one = One::new(|_| {});
    let teacher = one.connect(1, Role::Teacher);
    let learners: Vec<_> = (100..140).map(|uin| one.connect(uin, Role::Student)).collect();
    let listener = one.connect(999, Role::Student);
    one.advance(Duration::from_millis(100));
    for l in &learners {
        one.take(*l);
    }
    one.take(listener);
    one.take(teacher);
    for tick in 0..51u32 {
        // Every 100 ms the teacher says one thing; every 300 ms each
        // learner toggles its hand.
        if tick % 3 == 0 {
            let op = if (tick / 3) % 2 == 0 { "raise" } else { "lower" };
            for l in &learners {
                one.send(*l, &format!(r#"{{"t":"hand","op":"{op}"}}"#));
            }
        }
        one.send(teacher, &format!(r#"{{"t":"say","text":"m{tick}"}}"#));
        one.advance(Duration::from_millis(100));
    }
    one.advance(Duration::from_millis(500));
    let seen = one.take(listener);
    let said: Vec<String> = pushed(&seen, 2).iter().filter_map(|d| d["text"].as_str().map(String::from)).collect();
    let expected: Vec<String> = (0..51).map(|i| format!("m{i}")).collect();
    assert_eq!(said, expected, "every teacher message arrived, in order");
    assert!(codes(&one.take(teacher)).is_empty(), "the teacher was refused nothing");
    // The learners were within their budgets: each toggle was taken.
    let refused: Vec<String> = learners.iter().flat_map(|l| codes(&one.take(*l))).collect();
    assert!(refused.is_empty(), "{} refusals, e.g. {:?}", refused.len(), &refused[..refused.len().min(5)]);
    // Hands signals really flowed: the teacher sees the queue.
    one.send(teacher, r#"{"t":"state"}"#);
    let state = one.take(teacher).into_iter().find(|f| f["t"] == "state").expect("state")["data"].clone();
    // The last toggle (tick 48) was a raise: all 40 hands are up.
    assert_eq!(state["hands"].as_array().map(Vec::len), Some(40), "{state}");
}
