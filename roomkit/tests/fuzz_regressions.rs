//! Inputs the fuzz targets (fuzz/, docs/FUZZING.md) found, kept as tests.

use roomkit::ticket::{TicketError, TicketId};

/// `fuzz/fuzz_targets/ticket.rs`: a ticket id is 32 hex digits, but
/// `u8::from_str_radix` also takes a leading `+`, so `+f` pairs parsed (as
/// `0f`) and the id did not print back as what was given.
#[test]
fn ticket_id_with_plus_signs_is_refused() {
    for text in [
        // The two crashes of the ticket target (32 bytes, the only length
        // that gets this far).
        "+bbbbbbbBbbbbDbbbbbbbDbbbbbbDbbb",
        "bbbbbbbbbbb00000000000000000+000",
        "+f+f+f+f+f+f+f+f+f+f+f+f+f+f+f+f",
        "0123456789abcdef0123456789abcde+",
    ] {
        assert!(matches!(text.parse::<TicketId>(), Err(TicketError::Malformed(_))), "{text} parsed");
    }
    // Hex digits of either case still parse, and print back in lowercase.
    let id: TicketId = "0123456789ABCDEF0123456789abcdef".parse().expect("hex");
    assert_eq!(id.to_string(), "0123456789abcdef0123456789abcdef");
}

/// `fuzz/fuzz_targets/client_wire.rs`: a custom message whose data holds a
/// number too large for an integer (read as a float) did not read back as
/// itself once written: serde_json's fast float parser may land one unit
/// in the last place off, and the value the server relays changed on the
/// way. The workspace builds serde_json with `float_roundtrip`.
#[test]
fn a_custom_message_with_huge_numbers_relays_unchanged() {
    use roomkit::wire::ClientMsg;
    let text = r#"{"t":"custom","kind":300,"data":{"lowerx":1444444444444444444,"da44444444440,by":66666666666666666666666644444444444444444,"d6666666666666666666666666666666666666666664444440,by":20,"pen":"red"}}"#;
    let msg: ClientMsg = serde_json::from_str(text).expect("a custom message");
    let again = serde_json::to_string(&msg).expect("encodes");
    let back: ClientMsg = serde_json::from_str(&again).expect("decodes");
    assert_eq!(back, msg, "{again}");
    // Floats in general: what is written reads back as the same number.
    for n in [
        "66666666666666666666666644444444444444444",
        "1e308",
        "2.2250738585072014e-308",
        "0.1",
        "123456789.123456789e-5",
    ] {
        let x: f64 = serde_json::from_str(n).expect("a number");
        let y: f64 = serde_json::from_str(&serde_json::to_string(&x).expect("writes")).expect("reads");
        assert_eq!(x.to_bits(), y.to_bits(), "{n}");
    }
}
