//! The websocket reader (`roomkit::websocket::Reader`) on arbitrary client
//! bytes cut at arbitrary places: never a panic, the same messages and the
//! same error however TCP cuts the stream, and never more held than one
//! frame and one message.
#![no_main]

use libfuzzer_sys::fuzz_target;
use roomkit::websocket::{MAX_HEADER, Reader};

/// A small limit, so that the fuzzer reaches it.
const MAX_MESSAGE: usize = 1024;

fuzz_target!(|data: &[u8]| {
    let Some((&cut, stream)) = data.split_first() else { return };
    let cut = usize::from(cut) + 1;

    let mut whole = Reader::new(MAX_MESSAGE);
    let mut whole_messages = Vec::new();
    let mut all = stream.to_vec();
    let whole_error = whole.feed(&mut all, |m| whole_messages.push(format!("{m:?}"))).err();

    let mut pieces = Reader::new(MAX_MESSAGE);
    let mut piece_messages = Vec::new();
    let mut piece_error = None;
    for chunk in stream.chunks(cut) {
        let mut chunk = chunk.to_vec();
        if let Err(e) = pieces.feed(&mut chunk, |m| piece_messages.push(format!("{m:?}"))) {
            piece_error = Some(e);
            break;
        }
        // An incomplete frame (a client header has a 4-byte mask on top)
        // and a message's fragments, at most.
        assert!(pieces.buffered() <= 2 * MAX_MESSAGE + MAX_HEADER + 4, "held {}", pieces.buffered());
    }
    assert_eq!(piece_messages, whole_messages, "cut every {cut} bytes");
    assert_eq!(piece_error, whole_error, "cut every {cut} bytes");
});
