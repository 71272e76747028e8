//! What the adapters read back from their stores: `room_nats`'s node
//! registry entries (JSON `NodeRecord` under the node's key, checked by
//! `parse_record`) and `room_redis`'s shared-cache state versions and stream
//! ids (`parse_version`, `parse_id`). Envelopes in the Redis streams are the
//! `envelope` target. The first byte picks the decoder.
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&which, rest)) = data.split_first() else { return };
    match which % 3 {
        0 => {
            // "<key>\n<value>": the KV entry's key and bytes.
            let split = rest.iter().position(|&b| b == b'\n').unwrap_or(rest.len());
            let key = String::from_utf8_lossy(&rest[..split]);
            let value = Bytes::copy_from_slice(rest.get(split + 1..).unwrap_or_default());
            if let Ok(record) = room_nats::fuzzing::parse_record(&key, &value) {
                // The checks the crate documents hold.
                assert_eq!(record.node.0.to_string(), key);
                assert!((1..=room_core::router::MAX_WEIGHT).contains(&record.weight));
                // Encode -> decode gives the same record.
                let json = serde_json::to_vec(&record).expect("a record encodes");
                let back =
                    room_nats::fuzzing::parse_record(&key, &Bytes::from(json)).expect("an encoded record parses");
                assert_eq!(back, record);
            }
        }
        1 => {
            if let Ok(v) = room_redis::fuzzing::parse_version(rest) {
                assert_eq!(room_redis::fuzzing::parse_version(v.to_string().as_bytes()).ok(), Some(v));
            }
        }
        _ => {
            let Ok(id) = std::str::from_utf8(rest) else { return };
            if let Some((epoch, seq)) = room_redis::fuzzing::parse_id(id) {
                let again = room_redis::fuzzing::entry_id(epoch, seq);
                assert_eq!(room_redis::fuzzing::parse_id(&again), Some((epoch, seq)));
            }
        }
    }
});
