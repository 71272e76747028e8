//! Push envelopes from the bus (NATS subjects, Redis streams):
//! `room_push::Envelope::decode`, then the two codecs that render a decoded
//! envelope for clients (`room_push::BinaryCodec`, `room_service::wire::JsonCodec`).
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use room_push::{BinaryCodec, Codec, Envelope, Target};
use room_service::wire::JsonCodec;

fuzz_target!(|data: &[u8]| {
    let bytes = Bytes::copy_from_slice(data);
    let Ok(env) = Envelope::decode(&bytes) else { return };
    // Decode -> encode -> decode gives the same envelope.
    let encoded = env.encode();
    let back = Envelope::decode(&encoded).expect("an encoded envelope decodes");
    assert_eq!(back, env);
    // "One envelope, one encoding" (envelope.rs): the bytes decoded are
    // the bytes its encoding gives.
    assert_eq!(&encoded[..], data);
    if let room_push::Scope::Users(us) = &env.message.target.scope {
        assert!(us.len() <= Target::MAX_USERS);
    }
    // Rendering it for clients never panics; the binary form has its
    // documented size.
    let bin = BinaryCodec.encode_message(&env);
    assert_eq!(bin.len(), 14 + env.message.payload.len());
    let _ = BinaryCodec.encode_chat_batch(env.message.room, &[&env, &env]);
    let _ = JsonCodec.encode_message(&env);
    let _ = JsonCodec.encode_chat_batch(env.message.room, &[&env]);
});
