//! Room tickets: `roomkit::ticket::KeyRing::verify_full` and `TicketId`
//! parsing on arbitrary text, with a fixed ring; and tickets the ring issues
//! from fuzzed fields verify to exactly those fields.
#![no_main]

use std::sync::LazyLock;

use libfuzzer_sys::fuzz_target;
use room_core::{BusinessId, Flag, Role, RoomId, RoomKey, Terminal, Uin};
use roomkit::ticket::{JoinTicket, KeyRing, MAX_TICKET_LEN, TicketError, TicketId};

static RING: LazyLock<KeyRing> = LazyLock::new(|| {
    let mut ring = KeyRing::new("k1", b"fuzzing key one, 16+ bytes".to_vec()).expect("key");
    ring.add("2026-11", b"a secret of at least 16 bytes".to_vec(), true).expect("key");
    ring
});

fn u64_at(d: &[u8], at: usize) -> u64 {
    let mut w = [0u8; 8];
    for (i, b) in w.iter_mut().enumerate() {
        *b = d.get(at + i).copied().unwrap_or(0);
    }
    u64::from_le_bytes(w)
}

fuzz_target!(|data: &[u8]| {
    // 1. Arbitrary text: every outcome is a typed result.
    if let Ok(text) = std::str::from_utf8(data) {
        let room = RoomKey::new(BusinessId(7), RoomId(100042));
        let now = 1_799_990_000;
        match RING.verify_full(text, room, now) {
            Ok(v) => {
                // Only what the ring signed gets through: re-issuing the
                // same fields at the same time gives the same signature.
                assert_eq!(v.ticket.room, room);
                assert!(v.ticket.expires_at > now);
                assert!(text.len() <= MAX_TICKET_LEN);
                assert_eq!(TicketId::of(text), Ok(v.id));
            }
            Err(TicketError::Malformed(_)) | Err(_) => {}
        }
        let _ = TicketId::of(text);
        if let Ok(id) = text.parse::<TicketId>() {
            assert_eq!(id.to_string(), text.to_ascii_lowercase());
        }
    }
    // 2. Issued tickets round-trip: fields from the input.
    if data.len() >= 33 {
        let ticket = JoinTicket {
            room: RoomKey::new(BusinessId(u64_at(data, 0) as u32), RoomId(u64_at(data, 4))),
            uin: Uin(u64_at(data, 12)),
            role: <Role as Flag>::from_bit(u32::from(data[20] % 64)).unwrap_or(Role::Student),
            terminal: Terminal::ALL[usize::from(data[21]) % Terminal::ALL.len()],
            expires_at: u64_at(data, 22),
        };
        let issued_at = u64_at(data, 25);
        let now = ticket.expires_at.saturating_sub(u64::from(data[32]) * 60 + 1);
        let text = RING.issue_at(&ticket, issued_at);
        assert!(text.len() <= MAX_TICKET_LEN, "an issued ticket is {} bytes", text.len());
        match RING.verify_full(&text, ticket.room, now) {
            Ok(v) => {
                assert_eq!(v.ticket, ticket);
                assert_eq!(v.issued_at, Some(issued_at));
                assert_eq!(TicketId::of(&text), Ok(v.id));
                assert_eq!(v.id.to_string().parse::<TicketId>(), Ok(v.id));
            }
            Err(e) => {
                // Refused only for time: expired (now 0 at expiry 0) or
                // valid longer than the ring allows.
                assert!(
                    matches!(e, TicketError::Expired { .. } | TicketError::TooLong { .. }),
                    "ticket {text} for {ticket:?} refused: {e}"
                );
            }
        }
        // Any one-byte change to an issued ticket is refused.
        let mut bytes = text.clone().into_bytes();
        let at = usize::from(data[32]) % bytes.len();
        bytes[at] ^= data[31] | 1;
        if let Ok(tampered) = String::from_utf8(bytes) {
            if let Ok(v) = RING.verify_full(&tampered, ticket.room, now) {
                // base64url's last character may carry unused bits.
                assert_eq!(v.ticket, ticket, "a tampered ticket {tampered} verified");
            }
        }
    }
});
