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
