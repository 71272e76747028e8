//! The classroom's JSON frames from clients: `room_service::wire::ClientMsg`
//! as the access layer decodes a text frame (`serde_json::from_str`), and
//! `wire::json_string`, which the server uses to echo client text back.
#![no_main]

use libfuzzer_sys::fuzz_target;
use room_service::wire::{ClientMsg, json_string};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(msg) = serde_json::from_str::<ClientMsg>(text) {
        // Decode -> encode -> decode gives the same message, and the tag
        // the server logs is the one on the wire.
        let again = serde_json::to_string(&msg).expect("a decoded ClientMsg encodes");
        let back: ClientMsg = serde_json::from_str(&again).expect("an encoded ClientMsg decodes");
        assert_eq!(back, msg);
        let v: serde_json::Value = serde_json::from_str(&again).expect("JSON");
        assert_eq!(v["t"].as_str(), Some(msg.tag()));
    }
    // Any client text, escaped by the server, reads back as itself.
    let mut out = String::new();
    json_string(&mut out, text);
    let back: String = serde_json::from_str(&out).expect("json_string writes a JSON string");
    assert_eq!(back, text);
});
