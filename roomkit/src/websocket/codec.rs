//! The websocket framing of RFC 6455, sans IO: a [`Reader`] that turns a
//! client's bytes into messages and the headers of the frames a server
//! writes ([`frame_header`]).
//!
//! It does what a class needs and no more: no extensions (no compression),
//! server role only (client frames must be masked, server frames are not).

use std::fmt;

/// The GUID RFC 6455 appends to the client's key.
const HANDSHAKE_GUID: &[u8] = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// The longest frame header (2 bytes, a 64-bit length; servers send no
/// mask).
pub const MAX_HEADER: usize = 10;

/// The largest payload a control frame (close, ping, pong) may carry.
pub const MAX_CONTROL_PAYLOAD: usize = 125;

/// The `Sec-WebSocket-Accept` value answering a client's
/// `Sec-WebSocket-Key`.
///
/// ```
/// // The example of RFC 6455, section 1.3.
/// assert_eq!(roomkit::websocket::accept_key(b"dGhlIHNhbXBsZSBub25jZQ=="), "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
/// ```
pub fn accept_key(client_key: &[u8]) -> String {
    use base64::Engine as _;
    use sha1::Digest as _;
    let mut sha = sha1::Sha1::new();
    sha.update(client_key);
    sha.update(HANDSHAKE_GUID);
    base64::engine::general_purpose::STANDARD.encode(sha.finalize())
}

/// What a frame carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Opcode {
    /// A UTF-8 text message (or its first fragment).
    Text,
    /// A binary message (or its first fragment).
    Binary,
    /// The rest of a fragmented message.
    Continuation,
    /// The closing handshake.
    Close,
    /// A ping, answered by a pong with its payload.
    Ping,
    /// A pong.
    Pong,
}

impl Opcode {
    fn bits(self) -> u8 {
        match self {
            Opcode::Continuation => 0x0,
            Opcode::Text => 0x1,
            Opcode::Binary => 0x2,
            Opcode::Close => 0x8,
            Opcode::Ping => 0x9,
            Opcode::Pong => 0xA,
        }
    }

    fn from_bits(bits: u8) -> Option<Opcode> {
        Some(match bits {
            0x0 => Opcode::Continuation,
            0x1 => Opcode::Text,
            0x2 => Opcode::Binary,
            0x8 => Opcode::Close,
            0x9 => Opcode::Ping,
            0xA => Opcode::Pong,
            _ => return None,
        })
    }

    fn is_control(self) -> bool {
        matches!(self, Opcode::Close | Opcode::Ping | Opcode::Pong)
    }
}

/// The header of a final (unfragmented), unmasked frame of `len` payload
/// bytes: the first `.1` bytes of `.0`.
///
/// ```
/// use roomkit::websocket::{Opcode, frame_header};
/// let (bytes, n) = frame_header(Opcode::Text, 5);
/// assert_eq!(&bytes[..n], &[0x81, 5]);
/// let (bytes, n) = frame_header(Opcode::Binary, 70_000);
/// assert_eq!(&bytes[..n], &[0x82, 127, 0, 0, 0, 0, 0, 1, 0x11, 0x70]);
/// ```
pub fn frame_header(opcode: Opcode, len: usize) -> ([u8; MAX_HEADER], usize) {
    let mut h = [0u8; MAX_HEADER];
    h[0] = 0x80 | opcode.bits();
    let n = if len < 126 {
        h[1] = len as u8;
        2
    } else if let Ok(short) = u16::try_from(len) {
        h[1] = 126;
        h[2..4].copy_from_slice(&short.to_be_bytes());
        4
    } else {
        h[1] = 127;
        h[2..10].copy_from_slice(&(len as u64).to_be_bytes());
        10
    };
    (h, n)
}

/// A close frame with `code` and `reason` (the reason cut, on a character
/// boundary, to fit a control frame), header included.
pub fn close_frame(code: u16, reason: &str) -> Vec<u8> {
    let mut end = reason.len().min(MAX_CONTROL_PAYLOAD - 2);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    let reason = &reason.as_bytes()[..end];
    let (h, n) = frame_header(Opcode::Close, 2 + reason.len());
    let mut frame = Vec::with_capacity(n + 2 + reason.len());
    frame.extend_from_slice(&h[..n]);
    frame.extend_from_slice(&code.to_be_bytes());
    frame.extend_from_slice(reason);
    frame
}

/// A message from the client, borrowed from the reader's buffers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Message<'a> {
    /// A text message (checked UTF-8).
    Text(&'a str),
    /// A binary message.
    Binary(&'a [u8]),
    /// A ping: answer with a pong carrying the same payload.
    Ping(&'a [u8]),
    /// A pong.
    Pong(&'a [u8]),
    /// The client closes, with a code and reason if it gave one. Nothing
    /// after it is read.
    Close(Option<CloseFrame<'a>>),
}

/// A close frame's content.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CloseFrame<'a> {
    /// The close code.
    pub code: u16,
    /// The reason (UTF-8, at most 123 bytes).
    pub reason: &'a str,
}

/// Why a client's bytes are not a websocket stream this server takes: the
/// connection is closed with [`ProtocolError::close_code`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ProtocolError {
    /// A message longer than the limit (announced or assembled).
    #[error("a message of {len} bytes or more is over the limit of {max} bytes")]
    TooLarge {
        /// The length seen so far.
        len: u64,
        /// The limit.
        max: usize,
    },
    /// A text message or close reason that is not UTF-8.
    #[error("a text message or close reason is not UTF-8")]
    NotUtf8,
    /// A frame that breaks the framing rules (named).
    #[error("not a valid websocket frame: {0}")]
    Malformed(Malformed),
}

impl ProtocolError {
    /// The close code RFC 6455 gives this error: 1009 (too big), 1007
    /// (invalid data) or 1002 (protocol error).
    pub fn close_code(&self) -> u16 {
        match self {
            ProtocolError::TooLarge { .. } => 1009,
            ProtocolError::NotUtf8 => 1007,
            ProtocolError::Malformed(_) => 1002,
        }
    }
}

/// Which framing rule a client broke.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Malformed {
    /// A client frame without a mask.
    Unmasked,
    /// Reserved bits set (no extension was agreed).
    ReservedBits,
    /// An opcode the protocol reserves.
    ReservedOpcode(u8),
    /// A control frame that is fragmented or longer than 125 bytes.
    ControlFrame,
    /// A continuation frame with no message to continue.
    StrayContinuation,
    /// A new message before the fragmented one ended.
    InterleavedMessage,
    /// A close frame with a one-byte payload or a code no endpoint may send.
    CloseCode,
    /// A 64-bit length with its top bit set.
    Length,
}

impl fmt::Display for Malformed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Malformed::Unmasked => f.write_str("a client frame must be masked"),
            Malformed::ReservedBits => f.write_str("reserved bits set without an extension"),
            Malformed::ReservedOpcode(op) => write!(f, "reserved opcode {op:#x}"),
            Malformed::ControlFrame => f.write_str("a control frame must be final and at most 125 bytes"),
            Malformed::StrayContinuation => f.write_str("a continuation frame with no message to continue"),
            Malformed::InterleavedMessage => f.write_str("a new message began before the fragmented one ended"),
            Malformed::CloseCode => f.write_str("a close frame with a one-byte payload or an invalid code"),
            Malformed::Length => f.write_str("a 64-bit length with its top bit set"),
        }
    }
}

/// A frame's header, parsed.
struct Header {
    fin: bool,
    opcode: Opcode,
    mask: [u8; 4],
    header_len: usize,
    payload_len: usize,
}

/// Turns a client's bytes into [`Message`]s.
///
/// It holds bytes only while a frame is incomplete or a message
/// fragmented, never more than the largest message plus one header: a
/// connection at rest holds nothing. Feed it what the socket gave
/// ([`Reader::feed`]); complete messages are handed to a callback,
/// borrowed, in order.
///
/// ```
/// use roomkit::websocket::{Message, Reader};
/// let mut reader = Reader::new(1024);
/// // A masked "hi" from a client, in two reads.
/// let mut frame = vec![0x81, 0x82, 1, 2, 3, 4, b'h' ^ 1, b'i' ^ 2];
/// let (first, second) = frame.split_at_mut(3);
/// let mut got = Vec::new();
/// reader.feed(first, |m| got.push(format!("{m:?}")))?;
/// assert!(got.is_empty());
/// reader.feed(second, |m| got.push(format!("{m:?}")))?;
/// assert_eq!(got, [format!("{:?}", Message::Text("hi"))]);
/// # Ok::<(), roomkit::websocket::ProtocolError>(())
/// ```
#[derive(Debug, Default)]
pub struct Reader {
    max_message: usize,
    /// The start of a frame not yet complete.
    pending: Vec<u8>,
    /// The fragments of a message so far.
    message: Vec<u8>,
    /// The kind of the fragmented message (text or binary), if one is open.
    fragmented: Option<Opcode>,
    closed: bool,
}

impl Reader {
    /// A reader of messages of at most `max_message` bytes.
    pub fn new(max_message: usize) -> Reader {
        Reader { max_message, ..Reader::default() }
    }

    /// Bytes held for incomplete frames and messages.
    pub fn buffered(&self) -> usize {
        self.pending.len() + self.message.len()
    }

    /// Whether the client's close frame was read (what follows is ignored).
    pub fn is_closed(&self) -> bool {
        self.closed
    }

    /// Reads `data` (what the socket just gave; unmasked in place) and
    /// hands each complete message to `on_message`, in order. After an
    /// error, stop reading and close with [`ProtocolError::close_code`].
    pub fn feed(&mut self, data: &mut [u8], mut on_message: impl FnMut(Message<'_>)) -> Result<(), ProtocolError> {
        if self.closed {
            return Ok(());
        }
        if self.pending.is_empty() {
            let used = self.frames(data, &mut on_message)?;
            if !self.closed {
                self.pending.extend_from_slice(&data[used..]);
            }
        } else {
            let mut buf = std::mem::take(&mut self.pending);
            buf.extend_from_slice(data);
            let used = self.frames(&mut buf, &mut on_message)?;
            if used < buf.len() && !self.closed {
                buf.drain(..used);
                self.pending = buf;
            }
        }
        Ok(())
    }

    /// Reads every complete frame at the start of `buf`; returns how many
    /// bytes they took.
    fn frames(&mut self, buf: &mut [u8], on_message: &mut impl FnMut(Message<'_>)) -> Result<usize, ProtocolError> {
        let mut at = 0;
        while let Some(header) = self.header(&buf[at..])? {
            let end = at + header.header_len + header.payload_len;
            if end > buf.len() {
                break;
            }
            let payload = &mut buf[at + header.header_len..end];
            unmask(payload, header.mask);
            at = end;
            self.frame(&header, payload, on_message)?;
            if self.closed {
                return Ok(buf.len());
            }
        }
        Ok(at)
    }

    /// The header at the start of `buf`, if it is all there; checked
    /// against the rules and the size limit before its payload is waited
    /// for.
    fn header(&self, buf: &[u8]) -> Result<Option<Header>, ProtocolError> {
        if buf.len() < 2 {
            return Ok(None);
        }
        let (b0, b1) = (buf[0], buf[1]);
        if b0 & 0x70 != 0 {
            return Err(ProtocolError::Malformed(Malformed::ReservedBits));
        }
        let opcode =
            Opcode::from_bits(b0 & 0x0F).ok_or(ProtocolError::Malformed(Malformed::ReservedOpcode(b0 & 0x0F)))?;
        let fin = b0 & 0x80 != 0;
        if b1 & 0x80 == 0 {
            return Err(ProtocolError::Malformed(Malformed::Unmasked));
        }
        let (len, at) = match b1 & 0x7F {
            126 => match buf.get(2..4) {
                Some(b) => (u64::from(u16::from_be_bytes([b[0], b[1]])), 4),
                None => return Ok(None),
            },
            127 => match buf.get(2..10) {
                Some(b) => {
                    let mut word = [0u8; 8];
                    word.copy_from_slice(b);
                    let len = u64::from_be_bytes(word);
                    if len >> 63 != 0 {
                        return Err(ProtocolError::Malformed(Malformed::Length));
                    }
                    (len, 10)
                }
                None => return Ok(None),
            },
            short => (u64::from(short), 2),
        };
        if opcode.is_control() && (!fin || len > MAX_CONTROL_PAYLOAD as u64) {
            return Err(ProtocolError::Malformed(Malformed::ControlFrame));
        }
        let so_far = if opcode == Opcode::Continuation { self.message.len() as u64 } else { 0 };
        if !opcode.is_control() && so_far + len > self.max_message as u64 {
            return Err(ProtocolError::TooLarge { len: so_far + len, max: self.max_message });
        }
        let Some(mask) = buf.get(at..at + 4) else { return Ok(None) };
        Ok(Some(Header {
            fin,
            opcode,
            mask: [mask[0], mask[1], mask[2], mask[3]],
            header_len: at + 4,
            // At most max_message (or 125): it fits.
            payload_len: len as usize,
        }))
    }

    fn frame(
        &mut self,
        header: &Header,
        payload: &[u8],
        on_message: &mut impl FnMut(Message<'_>),
    ) -> Result<(), ProtocolError> {
        match header.opcode {
            Opcode::Text | Opcode::Binary => {
                if self.fragmented.is_some() {
                    return Err(ProtocolError::Malformed(Malformed::InterleavedMessage));
                }
                if header.fin {
                    return deliver(header.opcode, payload, on_message);
                }
                self.fragmented = Some(header.opcode);
                self.message.extend_from_slice(payload);
            }
            Opcode::Continuation => {
                let Some(kind) = self.fragmented else {
                    return Err(ProtocolError::Malformed(Malformed::StrayContinuation));
                };
                self.message.extend_from_slice(payload);
                if header.fin {
                    // The message's memory goes with it.
                    let message = std::mem::take(&mut self.message);
                    self.fragmented = None;
                    return deliver(kind, &message, on_message);
                }
            }
            Opcode::Close => {
                self.closed = true;
                let close = match payload {
                    [] => None,
                    [_] => return Err(ProtocolError::Malformed(Malformed::CloseCode)),
                    [hi, lo, reason @ ..] => {
                        let code = u16::from_be_bytes([*hi, *lo]);
                        if !valid_close_code(code) {
                            return Err(ProtocolError::Malformed(Malformed::CloseCode));
                        }
                        let reason = std::str::from_utf8(reason).map_err(|_| ProtocolError::NotUtf8)?;
                        Some(CloseFrame { code, reason })
                    }
                };
                on_message(Message::Close(close));
            }
            Opcode::Ping => on_message(Message::Ping(payload)),
            Opcode::Pong => on_message(Message::Pong(payload)),
        }
        Ok(())
    }
}

fn deliver(kind: Opcode, payload: &[u8], on_message: &mut impl FnMut(Message<'_>)) -> Result<(), ProtocolError> {
    if kind == Opcode::Text {
        let text = std::str::from_utf8(payload).map_err(|_| ProtocolError::NotUtf8)?;
        on_message(Message::Text(text));
    } else {
        on_message(Message::Binary(payload));
    }
    Ok(())
}

/// The codes a peer may put in a close frame (RFC 6455, 7.4).
fn valid_close_code(code: u16) -> bool {
    matches!(code, 1000..=1003 | 1007..=1011 | 3000..=4999)
}

fn unmask(payload: &mut [u8], mask: [u8; 4]) {
    let word = u32::from_ne_bytes(mask);
    let mut chunks = payload.chunks_exact_mut(4);
    for chunk in &mut chunks {
        let v = u32::from_ne_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]) ^ word;
        chunk.copy_from_slice(&v.to_ne_bytes());
    }
    for (i, b) in chunks.into_remainder().iter_mut().enumerate() {
        *b ^= mask[i];
    }
}
