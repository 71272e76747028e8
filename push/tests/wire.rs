//! The envelope's binary form, and the in-memory bus.

mod support;

use bytes::Bytes;
use futures::StreamExt;
use proptest::prelude::*;
use room_core::{BusinessId, NodeId, RoleSet, RoomId, RoomKey, TerminalSet, Timestamp, Uin};
use room_push::{Bus, Class, DecodeError, Envelope, InMemoryBus, Kind, Message, Scope, Sender, SubclassId, Target};
use support::*;

fn envelope() -> impl Strategy<Value = Envelope> {
    let scope = prop_oneof![
        Just(Scope::Room),
        any::<u64>().prop_map(|u| Scope::User(Uin(u))),
        proptest::collection::vec(any::<u64>(), 0..20).prop_map(|us| Scope::Users(us.into_iter().map(Uin).collect())),
    ];
    (
        (any::<u32>(), any::<u64>(), any::<u64>(), any::<u64>(), any::<u64>()),
        (0u8..4, any::<u16>(), proptest::option::of((any::<u64>(), 0u8..8))),
        (scope, proptest::option::of(any::<u64>()), proptest::option::of(0u64..128)),
        (proptest::option::of(any::<u16>()), proptest::option::of(any::<u64>()), any::<u32>()),
        (proptest::collection::vec(any::<u8>(), 0..300), prop_oneof![Just(0u64), any::<u64>()]),
    )
        .prop_map(
            |(
                (bid, room, epoch, seq, at),
                (class, kind, sender),
                (scope, roles, terms),
                (sub, excl, count),
                (payload, origin),
            )| {
                let target = Target {
                    scope,
                    roles: roles.and_then(RoleSet::from_bits),
                    terminals: terms.and_then(TerminalSet::from_bits),
                    subclass: sub.map(SubclassId),
                    exclude: excl.map(Uin),
                };
                Envelope {
                    epoch,
                    seq,
                    accepted_at: Timestamp::from_micros(at),
                    message: Message {
                        room: RoomKey::new(BusinessId(bid), RoomId(room)),
                        class: Class::from_code(class).expect("0..4"),
                        kind: Kind(kind),
                        sender: sender.map(|(u, r)| Sender { uin: Uin(u), role: role_of(r) }),
                        target,
                        count,
                        payload: Bytes::from(payload),
                        origin,
                    },
                }
            },
        )
}

proptest! {
    #[test]
    fn round_trips(env in envelope()) {
        prop_assert_eq!(Envelope::decode(&env.encode()), Ok(env));
    }

    #[test]
    fn every_truncation_is_an_error(env in envelope()) {
        let bytes = env.encode();
        for cut in 0..bytes.len() {
            prop_assert!(Envelope::decode(&bytes.slice(..cut)).is_err());
        }
    }

    #[test]
    fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
        let _ = Envelope::decode(&Bytes::from(bytes));
    }
}

#[test]
fn named_decode_errors() {
    let env = Envelope {
        epoch: 1,
        seq: 1,
        accepted_at: Timestamp::ZERO,
        message: Message::new(ROOM, Class::Signal, Kind(1), &b"x"[..]),
    };
    let mut bytes = env.encode().to_vec();
    bytes[0] = 9;
    assert_eq!(Envelope::decode(&Bytes::from(bytes.clone())), Err(DecodeError::Version(9)));
    bytes[0] = 1;
    bytes.push(0);
    assert_eq!(Envelope::decode(&Bytes::from(bytes.clone())), Err(DecodeError::Trailing(1)));
    bytes.pop();
    bytes[37] = 7; // the class byte
    assert_eq!(Envelope::decode(&Bytes::from(bytes)), Err(DecodeError::Invalid { field: "class", value: 7 }));
}

#[test]
fn an_origin_is_an_optional_field_of_version_1() {
    let plain = Envelope {
        epoch: 1,
        seq: 1,
        accepted_at: Timestamp::ZERO,
        message: Message::new(ROOM, Class::Teacher, Kind(1), &b"x"[..]),
    };
    let with = Envelope { message: plain.message.clone().with_origin(0xABCD), ..plain.clone() };
    let (a, b) = (plain.encode(), with.encode());
    // The origin adds its flag and 8 bytes; nothing else changes.
    const FLAGS: usize = 40;
    assert_eq!(a[FLAGS], 0, "no flag without an origin: the bytes are what they were before origins");
    assert_eq!(b[FLAGS], 32);
    assert_eq!(b.len(), a.len() + 8);
    assert_eq!(Envelope::decode(&b).map(|e| e.message.origin), Ok(0xABCD));
    assert_eq!(Envelope::decode(&a).map(|e| e.message.origin), Ok(0));

    // An origin of 0 has one encoding: no flag.
    let mut zero = b.to_vec();
    zero[FLAGS + 2..FLAGS + 10].fill(0); // scope byte, then the origin
    assert_eq!(Envelope::decode(&Bytes::from(zero)), Err(DecodeError::Invalid { field: "origin", value: 0 }));
    // Flag bits beyond the known ones are still refused.
    let mut unknown = a.to_vec();
    unknown[FLAGS] = 64;
    assert_eq!(Envelope::decode(&Bytes::from(unknown)), Err(DecodeError::Invalid { field: "flags", value: 64 }));
    // The flag without its u64 is a truncation.
    let mut cut = a.to_vec();
    cut[FLAGS] = 32;
    assert!(matches!(Envelope::decode(&Bytes::from(cut)), Err(DecodeError::Truncated { .. })));
}

#[test]
fn each_interested_node_receives_each_envelope_once() {
    futures::executor::block_on(async {
        let bus = InMemoryBus::new(16);
        let other = RoomKey::new(BusinessId(7), RoomId(2));
        let mut a = bus.subscribe(NodeId(1)).await.expect("subscribes");
        let mut b = bus.subscribe(NodeId(2)).await.expect("subscribes");
        bus.set_interest(NodeId(1), ROOM, true).await.expect("ok");
        bus.set_interest(NodeId(2), ROOM, true).await.expect("ok");
        bus.set_interest(NodeId(2), other, true).await.expect("ok");
        let env = |room, seq| Envelope {
            epoch: 1,
            seq,
            accepted_at: Timestamp::ZERO,
            message: Message::new(room, Class::Signal, Kind(1), Bytes::new()),
        };
        bus.publish(&env(ROOM, 1)).await.expect("sent");
        bus.publish(&env(other, 1)).await.expect("sent");
        bus.set_interest(NodeId(1), ROOM, false).await.expect("ok");
        bus.publish(&env(ROOM, 2)).await.expect("sent");
        drop(bus);
        let got_a: Vec<_> = a.by_ref().take(1).map(|e| (e.message.room, e.seq)).collect().await;
        assert_eq!(got_a, vec![(ROOM, 1)]);
        let got_b: Vec<_> = b.by_ref().take(3).map(|e| (e.message.room, e.seq)).collect().await;
        assert_eq!(got_b, vec![(ROOM, 1), (other, 1), (ROOM, 2)]);
    });
}
