//! The websocket codec against tungstenite as the reference: what a
//! tungstenite client writes (masked, fragmented, cut anywhere by TCP) our
//! reader reads as the same messages; what our server frames say a
//! tungstenite client reads back; and each broken rule gets its error.
#![cfg(feature = "websocket")]

use std::io::{self, Cursor, Read, Write};

use proptest::prelude::*;
use roomkit::websocket::{Malformed, Message, Opcode, ProtocolError, Reader, close_frame, frame_header};
use tungstenite::protocol::frame::Frame;
use tungstenite::protocol::frame::coding::{Data, OpCode};
use tungstenite::protocol::{Role, WebSocket};

/// A socket for tungstenite: writes collect, reads come from `input`.
struct Pipe {
    input: Cursor<Vec<u8>>,
    output: Vec<u8>,
}

impl Read for Pipe {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.input.read(buf)
    }
}

impl Write for Pipe {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.output.extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// A message as the model sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Model {
    Text(String),
    Binary(Vec<u8>),
    Ping(Vec<u8>),
    Pong(Vec<u8>),
    Close(Option<(u16, String)>),
}

fn owned(m: Message<'_>) -> Model {
    match m {
        Message::Text(t) => Model::Text(t.to_owned()),
        Message::Binary(b) => Model::Binary(b.to_vec()),
        Message::Ping(p) => Model::Ping(p.to_vec()),
        Message::Pong(p) => Model::Pong(p.to_vec()),
        Message::Close(c) => Model::Close(c.map(|c| (c.code, c.reason.to_owned()))),
        other => panic!("a message the test does not know: {other:?}"),
    }
}

/// One message a client sends, and in how many fragments.
#[derive(Debug, Clone)]
struct Sent {
    message: Model,
    fragments: usize,
}

fn sent() -> impl Strategy<Value = Sent> {
    let data = prop_oneof![
        ".{0,200}".prop_map(Model::Text),
        proptest::collection::vec(any::<u8>(), 0..300).prop_map(Model::Binary),
        proptest::collection::vec(any::<u8>(), 0..126).prop_map(Model::Ping),
        proptest::collection::vec(any::<u8>(), 0..126).prop_map(Model::Pong),
    ];
    (data, 1usize..5).prop_map(|(message, fragments)| Sent { message, fragments })
}

/// The bytes a tungstenite client writes for `messages` (then `close`).
fn client_bytes(messages: &[Sent], close: &Option<(u16, String)>) -> Vec<u8> {
    let pipe = Pipe { input: Cursor::new(Vec::new()), output: Vec::new() };
    let mut ws = WebSocket::from_raw_socket(pipe, Role::Client, None);
    for s in messages {
        let (op, data): (Data, Vec<u8>) = match &s.message {
            Model::Text(t) => (Data::Text, t.clone().into_bytes()),
            Model::Binary(b) => (Data::Binary, b.clone()),
            Model::Ping(p) => {
                ws.write(tungstenite::Message::Ping(p.clone().into())).expect("ping");
                continue;
            }
            Model::Pong(p) => {
                ws.write(tungstenite::Message::Pong(p.clone().into())).expect("pong");
                continue;
            }
            Model::Close(_) => unreachable!("closes are sent last"),
        };
        // Fragments cut the payload at byte offsets (a text may be cut
        // inside a character: only the whole message must be UTF-8).
        let n = s.fragments.min(data.len().max(1));
        let step = data.len().div_ceil(n).max(1);
        let mut chunks: Vec<&[u8]> = data.chunks(step).collect();
        if chunks.is_empty() {
            chunks.push(&[]);
        }
        let last = chunks.len() - 1;
        for (i, chunk) in chunks.iter().enumerate() {
            let opcode = if i == 0 { OpCode::Data(op) } else { OpCode::Data(Data::Continue) };
            let frame = Frame::message(chunk.to_vec(), opcode, i == last);
            ws.write(tungstenite::Message::Frame(frame)).expect("frame");
        }
    }
    if let Some((code, reason)) = close {
        let frame = tungstenite::protocol::CloseFrame { code: (*code).into(), reason: reason.clone().into() };
        ws.write(tungstenite::Message::Close(Some(frame))).expect("close");
    }
    ws.flush().expect("flush");
    std::mem::take(&mut ws.get_mut().output)
}

/// Feeds `bytes` cut at `cuts` (offsets) and collects the messages.
fn read_in_pieces(reader: &mut Reader, bytes: &[u8], cuts: &[usize]) -> Result<Vec<Model>, ProtocolError> {
    let mut cuts: Vec<usize> = cuts.iter().map(|c| c % (bytes.len() + 1)).collect();
    cuts.push(0);
    cuts.push(bytes.len());
    cuts.sort_unstable();
    let mut got = Vec::new();
    for pair in cuts.windows(2) {
        let mut piece = bytes[pair[0]..pair[1]].to_vec();
        reader.feed(&mut piece, |m| got.push(owned(m)))?;
    }
    Ok(got)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn what_a_client_writes_is_read_as_sent_however_tcp_cuts_it(
        messages in proptest::collection::vec(sent(), 0..12),
        close in proptest::option::of((1000u16..=1003, ".{0,20}")),
        cuts in proptest::collection::vec(any::<usize>(), 0..20),
    ) {
        let bytes = client_bytes(&messages, &close);
        let mut reader = Reader::new(64 * 1024);
        let got = read_in_pieces(&mut reader, &bytes, &cuts).expect("a valid stream");
        let mut want: Vec<Model> = messages.iter().map(|s| s.message.clone()).collect();
        if let Some(c) = close {
            want.push(Model::Close(Some(c)));
        }
        prop_assert_eq!(got, want);
        // At rest, nothing is held.
        prop_assert_eq!(reader.buffered(), 0);
    }

    #[test]
    fn what_the_server_writes_a_client_reads(
        messages in proptest::collection::vec(prop_oneof![
            ".{0,200}".prop_map(Model::Text),
            proptest::collection::vec(any::<u8>(), 0..70_000).prop_map(Model::Binary),
        ], 1..6),
        close in (1000u16..=1003, ".{0,200}"),
    ) {
        let mut bytes = Vec::new();
        for m in &messages {
            let (op, payload) = match m {
                Model::Text(t) => (Opcode::Text, t.as_bytes()),
                Model::Binary(b) => (Opcode::Binary, &b[..]),
                _ => unreachable!(),
            };
            let (h, n) = frame_header(op, payload.len());
            bytes.extend_from_slice(&h[..n]);
            bytes.extend_from_slice(payload);
        }
        bytes.extend_from_slice(&close_frame(close.0, &close.1));
        let pipe = Pipe { input: Cursor::new(bytes), output: Vec::new() };
        let mut ws = WebSocket::from_raw_socket(pipe, Role::Client, None);
        for m in &messages {
            let read = ws.read().expect("a message");
            let model = match read {
                tungstenite::Message::Text(t) => Model::Text(t.as_str().to_owned()),
                tungstenite::Message::Binary(b) => Model::Binary(b.to_vec()),
                other => panic!("unexpected {other:?}"),
            };
            prop_assert_eq!(&model, m);
        }
        match ws.read().expect("the close") {
            tungstenite::Message::Close(Some(frame)) => {
                prop_assert_eq!(u16::from(frame.code), close.0);
                // Cut to fit a control frame, on a character boundary.
                prop_assert!(close.1.starts_with(frame.reason.as_str()));
                prop_assert!(frame.reason.len() <= 123);
            }
            other => panic!("expected a close, got {other:?}"),
        }
    }
}

/// A masked client frame, by hand (for the rules tungstenite will not break).
fn masked(first: u8, payload: &[u8]) -> Vec<u8> {
    let mask = [0x37, 0xfa, 0x21, 0x3d];
    let mut f = vec![first];
    match payload.len() {
        n if n < 126 => f.push(0x80 | n as u8),
        n if n <= 0xFFFF => {
            f.push(0x80 | 126);
            f.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            f.push(0x80 | 127);
            f.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    f.extend_from_slice(&mask);
    f.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    f
}

fn error_of(mut bytes: Vec<u8>, max: usize) -> ProtocolError {
    let mut reader = Reader::new(max);
    reader.feed(&mut bytes, |_| {}).expect_err("refused")
}

#[test]
fn each_broken_rule_gets_its_error_and_close_code() {
    // Unmasked.
    let e = error_of(vec![0x81, 0x02, b'h', b'i'], 1024);
    assert_eq!(e, ProtocolError::Malformed(Malformed::Unmasked));
    assert_eq!(e.close_code(), 1002);
    // Reserved bits (no compression was agreed).
    assert_eq!(error_of(masked(0xC1, b"hi"), 1024), ProtocolError::Malformed(Malformed::ReservedBits));
    // Reserved opcodes.
    assert_eq!(error_of(masked(0x83, b""), 1024), ProtocolError::Malformed(Malformed::ReservedOpcode(3)));
    assert_eq!(error_of(masked(0x8B, b""), 1024), ProtocolError::Malformed(Malformed::ReservedOpcode(0xB)));
    // A fragmented ping, a long ping.
    assert_eq!(error_of(masked(0x09, b""), 1024), ProtocolError::Malformed(Malformed::ControlFrame));
    assert_eq!(error_of(masked(0x89, &[0; 126]), 1024), ProtocolError::Malformed(Malformed::ControlFrame));
    // A continuation with nothing to continue; a new message inside one.
    assert_eq!(error_of(masked(0x80, b"x"), 1024), ProtocolError::Malformed(Malformed::StrayContinuation));
    let mut two = masked(0x01, b"a");
    two.extend(masked(0x81, b"b"));
    assert_eq!(error_of(two, 1024), ProtocolError::Malformed(Malformed::InterleavedMessage));
    // Close payloads: one byte, a code nobody may send.
    assert_eq!(error_of(masked(0x88, &[3]), 1024), ProtocolError::Malformed(Malformed::CloseCode));
    assert_eq!(error_of(masked(0x88, &1005u16.to_be_bytes()), 1024), ProtocolError::Malformed(Malformed::CloseCode));
    // Not UTF-8, whole or across fragments.
    let e = error_of(masked(0x81, &[0xff, 0xfe]), 1024);
    assert_eq!((e.clone(), e.close_code()), (ProtocolError::NotUtf8, 1007));
    let mut split = masked(0x01, &[0xe2, 0x82]);
    split.extend(masked(0x80, &[0x28]));
    assert_eq!(error_of(split, 1024), ProtocolError::NotUtf8);
    // A 64-bit length with its top bit set.
    let mut huge = vec![0x82, 0x80 | 127];
    huge.extend_from_slice(&u64::MAX.to_be_bytes());
    assert_eq!(error_of(huge, 1024), ProtocolError::Malformed(Malformed::Length));
}

#[test]
fn a_message_over_the_limit_is_refused_from_its_header_before_its_bytes() {
    // Only the header of a 1 MiB frame: refused at once, nothing buffered
    // waiting for the rest.
    let mut header = masked(0x82, &[]);
    header[1] = 0x80 | 127;
    header.splice(2..2, (1u64 << 20).to_be_bytes());
    let e = error_of(header, 64 * 1024);
    assert_eq!(e, ProtocolError::TooLarge { len: 1 << 20, max: 64 * 1024 });
    assert_eq!(e.close_code(), 1009);
    // Fragments that add up past the limit.
    let mut reader = Reader::new(100);
    let mut first = masked(0x02, &[1; 60]);
    reader.feed(&mut first, |_| {}).expect("60 of 100");
    let mut second = masked(0x80, &[1; 60]);
    assert_eq!(reader.feed(&mut second, |_| {}), Err(ProtocolError::TooLarge { len: 120, max: 100 }));
    // Exactly the limit passes.
    let mut reader = Reader::new(100);
    let mut got = 0;
    reader
        .feed(&mut masked(0x82, &[7; 100]), |m| got += matches!(m, Message::Binary(b) if b.len() == 100) as u32)
        .expect("100");
    assert_eq!(got, 1);
}

#[test]
fn a_reader_holds_only_an_incomplete_frame_and_nothing_after_a_close() {
    let mut reader = Reader::new(1024);
    let frame = masked(0x81, b"hello");
    let mut start = frame[..4].to_vec();
    reader.feed(&mut start, |_| panic!("nothing is complete")).expect("a start");
    assert_eq!(reader.buffered(), 4);
    let mut rest = frame[4..].to_vec();
    let mut got = Vec::new();
    reader.feed(&mut rest, |m| got.push(owned(m))).expect("the rest");
    assert_eq!(got, [Model::Text("hello".into())]);
    assert_eq!(reader.buffered(), 0);
    // After the client's close, the rest is not read.
    let mut bytes = masked(0x88, &1000u16.to_be_bytes());
    bytes.extend(masked(0x81, b"after"));
    let mut got = Vec::new();
    reader.feed(&mut bytes, |m| got.push(owned(m))).expect("a close");
    assert_eq!(got, [Model::Close(Some((1000, String::new())))]);
    assert!(reader.is_closed());
    reader.feed(&mut masked(0x81, b"later"), |m| panic!("read after close: {m:?}")).expect("ignored");
    assert_eq!(reader.buffered(), 0);
}
