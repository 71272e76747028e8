//! Target resolution and per-connection order, against a reference model.

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use proptest::prelude::*;
use room_core::{Role, RoleSet, Terminal, TerminalSet, Timestamp, Uin};
use room_push::{Class, ConnId, ConnSpec, FrameKind, Kind, Message, NodeConfig, PushNode, Scope, SubclassId, Target};
use support::*;

#[derive(Debug, Clone, Copy)]
struct Attrs {
    uin: Uin,
    role: Role,
    terminal: Terminal,
    subclass: Option<SubclassId>,
}

/// The definition of a target, written out independently of the crate.
fn reference_reaches(t: &Target, a: &Attrs) -> bool {
    let scope = match &t.scope {
        Scope::Room => true,
        Scope::User(u) => *u == a.uin,
        Scope::Users(us) => us.contains(&a.uin),
        _ => unreachable!("no other scope is generated"),
    };
    let role = match t.roles {
        None => true,
        Some(rs) => rs.iter().any(|r| r == a.role),
    };
    let terminal = match t.terminals {
        None => true,
        Some(ts) => ts.iter().any(|x| x == a.terminal),
    };
    let subclass = match (t.subclass, a.subclass) {
        (None, _) | (_, None) => true,
        (Some(w), Some(h)) => w == h,
    };
    scope && role && terminal && subclass && t.exclude != Some(a.uin)
}

fn attrs() -> impl Strategy<Value = Attrs> {
    (0u64..30, 0u8..8, 0u8..7, proptest::option::weighted(0.7, 0u16..4)).prop_map(|(u, r, t, s)| Attrs {
        uin: uin(u),
        role: role_of(r),
        terminal: terminal_of(t),
        subclass: s.map(SubclassId),
    })
}

fn target() -> impl Strategy<Value = Target> {
    let scope = prop_oneof![
        3 => Just(Scope::Room),
        1 => (0u64..30).prop_map(|u| Scope::User(uin(u))),
        1 => proptest::collection::vec(0u64..30, 1..6).prop_map(|us| Scope::Users(us.into_iter().map(uin).collect())),
    ];
    (
        scope,
        proptest::option::of(proptest::collection::vec(0u8..8, 1..3)),
        proptest::option::of(proptest::collection::vec(0u8..7, 1..4)),
        proptest::option::of(0u16..4),
        proptest::option::weighted(0.3, 0u64..30),
    )
        .prop_map(|(scope, roles, terms, sub, excl)| {
            let mut t = Target::room();
            t.scope = scope;
            t.roles = roles.map(|rs| rs.into_iter().map(role_of).collect::<RoleSet>());
            t.terminals = terms.map(|ts| ts.into_iter().map(terminal_of).collect::<TerminalSet>());
            t.subclass = sub.map(SubclassId);
            t.exclude = excl.map(uin);
            t
        })
        .prop_filter("valid targets", |t| t.validate().is_ok())
}

fn roomy_node() -> PushNode {
    let mut config = NodeConfig::default();
    config.reliable_lane = 100_000;
    config.chat_lane = 100_000;
    config.batch_lines = 1_000;
    PushNode::new(config)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// The index answers exactly what the definition says, also after
    /// connections leave and members change sub-class.
    #[test]
    fn resolution_is_exact(
        conns in proptest::collection::vec(attrs(), 0..60),
        leave in proptest::collection::vec(any::<bool>(), 60),
        moves in proptest::collection::vec((0u64..30, proptest::option::of(0u16..4)), 0..6),
        targets in proptest::collection::vec(target(), 1..12),
    ) {
        let mut node = roomy_node();
        let mut live: BTreeMap<ConnId, Attrs> = BTreeMap::new();
        for a in &conns {
            let spec = ConnSpec::new(ROOM, a.uin, a.role, a.terminal).in_subclass(a.subclass);
            let c = node.connect(spec).expect("connects");
            live.insert(c.conn, *a);
        }
        let ids: Vec<ConnId> = live.keys().copied().collect();
        for (id, gone) in ids.iter().zip(&leave) {
            if *gone {
                node.disconnect(Timestamp::ZERO, *id).expect("known connection");
                live.remove(id);
            }
        }
        for (u, sub) in &moves {
            if live.is_empty() {
                break;
            }
            let _ = node.set_subclass(ROOM, uin(*u), sub.map(SubclassId));
            for a in live.values_mut() {
                if a.uin == uin(*u) {
                    a.subclass = sub.map(SubclassId);
                }
            }
        }
        for t in &targets {
            let mut got = node.resolve(ROOM, t);
            got.sort();
            let want: Vec<ConnId> =
                live.iter().filter(|(_, a)| reference_reaches(t, a)).map(|(id, _)| *id).collect();
            prop_assert_eq!(got, want, "target {:?}", t);
        }
    }

    /// Every connection receives exactly the messages aimed at it, each
    /// class in publication order: reliable messages with a `prev` chain,
    /// direct chat, and chat merged into batches.
    #[test]
    fn delivery_is_exact_and_ordered(
        conns in proptest::collection::vec(attrs(), 1..40),
        msgs in proptest::collection::vec((0u8..4, target()), 1..40),
    ) {
        let mut now = Timestamp::from_millis(1_000);
        let mut gate = unlimited_gate(now);
        let mut node = roomy_node();
        let mut live = BTreeMap::new();
        for a in &conns {
            let spec = ConnSpec::new(ROOM, a.uin, a.role, a.terminal).in_subclass(a.subclass);
            live.insert(node.connect(spec).expect("connects").conn, *a);
        }
        // Expected ids per connection and per class (reliable, direct chat, batched chat).
        let mut want: BTreeMap<(ConnId, u8), Vec<u32>> = BTreeMap::new();
        let mut rec = Recorder::default();
        for (i, (class, t)) in msgs.iter().enumerate() {
            let i = i as u32;
            let (class, t, lane) = match class {
                0 => (Class::Signal, t.clone(), 0u8),
                1 => (Class::Teacher, t.clone(), 0),
                // Direct chat: any target that is not the plain audience.
                2 => (Class::Chat, t.clone().exclude(uin(999)), 1),
                _ => {
                    let mut plain = Target::room();
                    plain.subclass = t.subclass;
                    (Class::Chat, plain, 2)
                }
            };
            let msg = Message::new(ROOM, class, Kind(1), i.to_le_bytes().to_vec()).to(t.clone());
            let env = gate.publish(now, msg).expect("accepted");
            node.handle_envelope(now, &env).expect("handled");
            for (id, a) in &live {
                if reference_reaches(&t, a) {
                    want.entry((*id, lane)).or_default().push(i);
                }
            }
            // Interleave flushes with publication.
            if i.is_multiple_of(3) {
                let _ = node.flush(now, &mut rec);
            }
            now = now.saturating_add(Duration::from_millis(7));
            node.handle_timeout(now);
        }
        node.handle_timeout(now.saturating_add(Duration::from_secs(10)));
        let _ = node.flush(now, &mut rec);
        let mut got: BTreeMap<(ConnId, u8), Vec<u32>> = BTreeMap::new();
        for (id, frames) in &rec.frames {
            let mut last_seq = 0;
            for (h, body) in frames {
                let lane = match (h.class, h.kind) {
                    (Class::Signal | Class::Teacher, _) => {
                        prop_assert_eq!(h.prev, last_seq, "prev chain broken");
                        last_seq = h.seq;
                        0
                    }
                    (Class::Chat, FrameKind::Message) => 1,
                    (Class::Chat, FrameKind::ChatBatch) => 2,
                    other => panic!("unexpected frame {other:?}"),
                };
                for p in payloads(h.kind, body) {
                    got.entry((*id, lane)).or_default().push(id_of(&p));
                }
            }
        }
        prop_assert_eq!(got, want);
    }
}
