//! Every id, key, role and terminal round-trips through its text form, and
//! arbitrary text never panics a parser.

use proptest::prelude::*;
use room_core::*;

fn role() -> impl Strategy<Value = Role> {
    prop_oneof![
        Just(Role::Teacher),
        Just(Role::Assistant),
        Just(Role::Student),
        Just(Role::Observer),
        (0u8..=CustomRole::MAX).prop_map(|n| Role::Custom(CustomRole::new(n).unwrap())),
    ]
}

proptest! {
    #[test]
    fn ids_round_trip(bid in any::<u32>(), room in any::<u64>(), uin in any::<u64>(), node in any::<u64>()) {
        let member = MemberKey::new(BusinessId(bid), RoomId(room), Uin(uin));
        prop_assert_eq!(member.to_string().parse::<MemberKey>(), Ok(member));
        prop_assert_eq!(member.room_key().to_string().parse::<RoomKey>(), Ok(member.room_key()));
        prop_assert_eq!(BusinessId(bid).to_string().parse::<BusinessId>(), Ok(BusinessId(bid)));
        prop_assert_eq!(RoomId(room).to_string().parse::<RoomId>(), Ok(RoomId(room)));
        prop_assert_eq!(Uin(uin).to_string().parse::<Uin>(), Ok(Uin(uin)));
        prop_assert_eq!(NodeId(node).to_string().parse::<NodeId>(), Ok(NodeId(node)));
    }

    #[test]
    fn roles_and_terminals_round_trip(r in role(), roles in prop::collection::vec(role(), 0..6), t in 0usize..7, ts in any::<u8>()) {
        prop_assert_eq!(r.to_string().parse::<Role>(), Ok(r));
        let set: RoleSet = roles.into_iter().collect();
        prop_assert_eq!(set.to_string().parse::<RoleSet>(), Ok(set));
        let terminal = Terminal::ALL[t];
        prop_assert_eq!(terminal.to_string().parse::<Terminal>(), Ok(terminal));
        let tset = TerminalSet::from_bits(u64::from(ts & 0x7f)).unwrap();
        prop_assert_eq!(tset.to_string().parse::<TerminalSet>(), Ok(tset));
    }

    /// Text either fails with an error or parses to a value whose text form
    /// is the input again: one canonical form per value.
    #[test]
    fn arbitrary_text_is_canonical_or_refused(s in "\\PC{0,30}|[0-9/]{0,30}|custom:[0-9]{0,4}") {
        if let Ok(k) = s.parse::<MemberKey>() { prop_assert_eq!(k.to_string(), s.clone()); }
        if let Ok(k) = s.parse::<RoomKey>() { prop_assert_eq!(k.to_string(), s.clone()); }
        if let Ok(u) = s.parse::<Uin>() { prop_assert_eq!(u.to_string(), s.clone()); }
        if let Ok(r) = s.parse::<Role>() { prop_assert_eq!(r.to_string(), s.clone()); }
        if let Ok(t) = s.parse::<Terminal>() { prop_assert_eq!(t.to_string(), s.clone()); }
    }
}

#[cfg(feature = "serde")]
#[test]
fn serde_round_trips() {
    let member: MemberKey = "7/100/9".parse().unwrap();
    let json = serde_json::to_string(&member).unwrap();
    assert_eq!(json, r#"{"bid":7,"room":100,"uin":9}"#);
    assert_eq!(serde_json::from_str::<MemberKey>(&json).unwrap(), member);
    let roles: RoleSet = "teacher,custom:2".parse().unwrap();
    let json = serde_json::to_string(&roles).unwrap();
    assert_eq!(serde_json::from_str::<RoleSet>(&json).unwrap(), roles);
    assert!(serde_json::from_str::<TerminalSet>("255").is_err());
    assert!(serde_json::from_str::<Role>(r#"{"Custom":60}"#).is_err());
    let event = NodeEvent { epoch: Epoch(3), change: NodeChange::Removed { node: NodeId(4) } };
    let json = serde_json::to_string(&event).unwrap();
    assert_eq!(serde_json::from_str::<NodeEvent>(&json).unwrap(), event);
}
