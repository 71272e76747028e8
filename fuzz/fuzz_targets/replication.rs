//! Member-list replication and peer messages from other nodes:
//! `postcard::from_bytes::<room_memberlist::ReplMsg>` (what `room_nats`'s
//! mailbox does with every message) fed to a `Replica::handle_message`, and
//! `room_service::peer::PeerMsg::decode`. The first byte picks which.
#![no_main]

use libfuzzer_sys::fuzz_target;
use room_core::{NodeId, RouterConfig, Timestamp};
use room_memberlist::{ReplMsg, Replica, ReplicaConfig};
use room_service::peer::{MAX_PEER_MESSAGE, PeerMsg};

fuzz_target!(|data: &[u8]| {
    let Some((&which, bytes)) = data.split_first() else { return };
    if which & 1 == 0 {
        // One or more replication messages, each from a peer, to one replica.
        // A small router table: building the default one per input would
        // take most of the time.
        let mut config = ReplicaConfig::new(NodeId(1));
        config.router = RouterConfig::new().with_slot_bits(8).expect("slot bits");
        let replica = Replica::new(config);
        replica.set_nodes([(NodeId(1), 100), (NodeId(2), 100), (NodeId(3), 100)]).expect("nodes");
        let mut rest = bytes;
        let mut now = Timestamp::from_micros(1_764_000_000_000_000);
        for _ in 0..8 {
            let Ok((msg, tail)) = postcard::take_from_bytes::<ReplMsg>(rest) else { break };
            rest = tail;
            let encoded = postcard::to_allocvec(&msg).expect("a decoded ReplMsg encodes");
            let back: ReplMsg = postcard::from_bytes(&encoded).expect("an encoded ReplMsg decodes");
            assert_eq!(back, msg);
            let from = NodeId(2 + u64::from(which >> 7));
            replica.handle_message(now, from, msg);
            now = Timestamp::from_micros(now.as_micros() + 250_000);
            replica.handle_timeout(now);
            let mut sent = 0;
            while replica.poll_transmit().is_some() {
                sent += 1;
                assert!(sent < 100_000, "a replica with a handful of messages sends without end");
            }
            while replica.poll_event().is_some() {}
        }
        let _ = replica.stats();
    } else {
        let Ok(msg) = PeerMsg::decode(bytes) else { return };
        assert!(bytes.len() <= MAX_PEER_MESSAGE);
        let encoded = msg.encode();
        assert!(!encoded.is_empty());
        let back = PeerMsg::decode(&encoded).expect("an encoded PeerMsg decodes");
        assert_eq!(back, msg);
    }
});
