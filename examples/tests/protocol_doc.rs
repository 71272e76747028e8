//! docs/PROTOCOL.md against the server: every message a client may send,
//! every direct reply, error code, close code, pushed kind and documented
//! limit is what the code has, and nothing the code has is missing there.

use std::collections::BTreeSet;

use room_push::{GateConfig, Kind, NodeConfig};
use roomkit::node::{Budgets, RoomNodeConfig};
use roomkit::peer::CloseReason;
use roomkit::wire::{ClientMsg, ServerFrame, codes, kinds};

const DOC: &str = include_str!("../../docs/PROTOCOL.md");

/// The first cells of the table whose header row is `header`.
fn first_column(header: &str) -> Vec<String> {
    let mut lines = DOC.lines().skip_while(|l| l.trim_end() != header);
    assert!(lines.next().is_some(), "PROTOCOL.md has no table headed {header:?}");
    lines
        .skip(1)
        .take_while(|l| l.starts_with('|'))
        .map(|l| l.trim_start_matches('|').split('|').next().unwrap_or("").trim().to_owned())
        .collect()
}

fn ticked(cells: &[String]) -> BTreeSet<String> {
    cells.iter().map(|c| c.trim_matches('`').to_owned()).collect()
}

fn set(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| (*s).to_owned()).collect()
}

#[test]
fn every_client_message_is_documented_and_nothing_else() {
    assert_eq!(ticked(&first_column("| `t` | fields | who | effect |")), set(ClientMsg::TAGS));
    // The tags are serde's: each parses as what it says.
    for tag in ClientMsg::TAGS {
        let sample = match *tag {
            "chat" | "say" => format!(r#"{{"t":"{tag}","text":"x"}}"#),
            "hand" => r#"{"t":"hand","op":"raise"}"#.to_owned(),
            "react" => r#"{"t":"react","kind":"flower"}"#.to_owned(),
            "card_open" => r#"{"t":"card_open","options":3}"#.to_owned(),
            "card_answer" => r#"{"t":"card_answer","option":1}"#.to_owned(),
            "packet_send" => r#"{"t":"packet_send","amount":5,"count":2}"#.to_owned(),
            "packet_grab" => r#"{"t":"packet_grab","id":1}"#.to_owned(),
            "mute_all" => r#"{"t":"mute_all","on":true}"#.to_owned(),
            "mute" => r#"{"t":"mute","uin":3,"on":true}"#.to_owned(),
            "ack" => r#"{"t":"ack","epoch":1,"seq":2}"#.to_owned(),
            "check" => r#"{"t":"check","epoch":1,"after":2}"#.to_owned(),
            "custom" => r#"{"t":"custom","kind":300,"data":{"x":1}}"#.to_owned(),
            other => format!(r#"{{"t":"{other}"}}"#),
        };
        let msg: ClientMsg = serde_json::from_str(&sample).unwrap_or_else(|e| panic!("{sample}: {e}"));
        assert_eq!(msg.tag(), *tag);
    }
}

#[test]
fn every_direct_reply_is_documented_and_nothing_else() {
    assert_eq!(ticked(&first_column("| `t` | fields |")), set(ServerFrame::TAGS));
    let error = ServerFrame::error(codes::MUTED, "x");
    let json: serde_json::Value = serde_json::from_slice(&error.to_bytes()).expect("JSON");
    assert_eq!(json["t"], error.tag());
}

#[test]
fn every_error_code_is_documented_and_nothing_else() {
    assert_eq!(ticked(&first_column("| `code` | meaning |")), set(codes::ALL));
}

#[test]
fn every_close_code_is_documented() {
    let documented: BTreeSet<u16> =
        first_column("| code | why | reconnect? |").iter().filter_map(|c| c.parse().ok()).collect();
    let ours: BTreeSet<u16> = CloseReason::ALL.iter().map(|r| r.close_code()).collect();
    assert!(ours.is_subset(&documented), "{ours:?} not all in {documented:?}");
    // 1009 is the example servers' own (a websocket message too large).
    assert_eq!(documented.difference(&ours).copied().collect::<Vec<_>>(), [1009]);
}

#[test]
fn every_pushed_kind_is_documented() {
    let documented: BTreeSet<u16> = first_column("| `kind` | class | `data` |")
        .iter()
        .flat_map(|c| {
            c.split(',').filter_map(|part| part.split_whitespace().next()?.parse().ok()).collect::<Vec<u16>>()
        })
        .collect();
    let ours: BTreeSet<u16> = [
        kinds::CHAT,
        kinds::TEACHER_SAY,
        kinds::HAND,
        kinds::FLOWER,
        kinds::LIKE,
        kinds::CARD,
        kinds::PACKET,
        kinds::ROSTER,
        kinds::MUTED,
        kinds::STATE,
        Kind::MUTE_ALL,
        Kind::LEVEL,
        Kind::SUBCLASS,
    ]
    .iter()
    .map(|k| k.0)
    .collect();
    assert_eq!(documented, ours);
}

#[test]
fn documented_limits_are_the_defaults() {
    let node = RoomNodeConfig::new(room_core::NodeId(1));
    let budgets = Budgets::default();
    let gate = GateConfig::default();
    // Numbers as the document writes them: 1,000.
    let per_second = |q: room_push::Quota| {
        let n = 1_000_000 / q.interval().as_micros() as u64;
        if n >= 1_000 { format!("{},{:03}", n / 1_000, n % 1_000) } else { n.to_string() }
    };
    for phrase in [
        format!("over {} KiB", node.max_frame / 1024),
        format!("`text` (≤ {} chars)", node.max_text),
        format!("{} learners each by\ndefault", gate.subclass_size),
        format!("beats {} per heartbeat interval", budgets.beats_per_interval),
        format!(
            "acks, checks and reads (`members`,\n`state`) {} a second each (bursts of {})",
            per_second(budgets.check),
            budgets.check.burst()
        ),
        format!(
            "everything else a learner does {} a\nsecond (bursts of {})",
            per_second(budgets.learner),
            budgets.learner.burst()
        ),
        format!("a teacher or assistant {} a second", per_second(budgets.staff)),
        format!("chat\nper learner {} a second (bursts of {})", per_second(gate.user_quota), gate.user_quota.burst()),
        format!("per room {} a second", per_second(gate.room_chat_quota)),
        format!("{} a second (bursts of {})", per_second(gate.room_reliable_quota), gate.room_reliable_quota.burst()),
        format!("at most {} messages", NodeConfig::default().max_check_answer),
        format!("took nothing for {} s", node.slow_client_lag.as_secs()),
        format!("Kinds from {} to {} are the host's own", kinds::HOST_FIRST.0, Kind::RESERVED_FROM - 1),
        format!("`reason` (the host's words, ≤ {} chars)", roomkit::host::MAX_REASON),
        format!("at most {} changes, `more` when there were more", roomkit::wire::data::MAX_ROSTER_DIFF),
        format!("oldest first, at most {})", roomkit::wire::data::MAX_LISTED_HANDS),
        format!("`limit` (≤ {})", roomkit::wire::data::MAX_MEMBERS_PAGE),
        format!("`n` (1..={}, default 1)", roomkit::classroom::ClassroomConfig::default().max_reaction_count),
        format!("a websocket message over {} KiB", examples::edge::MAX_CLIENT_MESSAGE / 1024),
    ] {
        assert!(DOC.contains(&phrase), "PROTOCOL.md does not say {phrase:?}");
    }
    assert_eq!(
        (budgets.ack, budgets.read),
        (budgets.check, budgets.check),
        "acks, checks and reads share one documented budget"
    );
}
