//! The classroom protocol over websockets, written straight to the socket
//! (feature `websocket`).
//!
//! A host's HTTP server does the upgrade handshake (answering with
//! [`accept_key`]) and hands the raw `TcpStream` to [`serve`]; from then on
//! the connection costs what a class can afford by the ten thousand:
//!
//! * **Nothing at rest.** Reads land in a buffer shared by every
//!   connection on the thread; a connection keeps bytes only while a frame
//!   is incomplete. Nothing is queued for writing while the socket takes
//!   what is written.
//! * **Encoded once.** A pushed message's body is shared by every
//!   recipient; what is per connection (the websocket header and the
//!   push header with this connection's numbers, about 100 bytes) is
//!   rendered into a per-thread buffer, and the frames waiting for a
//!   socket go out in one vectored write: no allocation and no copy of the
//!   body per recipient.
//! * **Back-pressure kept.** While the socket will not take more, no frame
//!   is taken from the service, which sheds chat and closes a client that
//!   stays behind (4004), as with any writer.
//!
//! ```no_run
//! # async fn host(service: roomkit::service::RoomService, stream: tokio::net::TcpStream) {
//! use room_core::{BusinessId, RoomId, RoomKey};
//! // After answering the upgrade request (101, with accept_key of its
//! // Sec-WebSocket-Key), with the room and ticket from its query:
//! let room = RoomKey::new(BusinessId(1), RoomId(42));
//! let ticket = "...";
//! roomkit::websocket::serve(&service, stream, &[], room, ticket, &roomkit::websocket::SocketOptions::default()).await;
//! # }
//! ```

mod codec;

use std::cell::RefCell;
use std::io::{self, IoSlice};
use std::time::Duration;

use bytes::Bytes;
use room_core::RoomKey;
use room_service::Outbound;
use room_service::wire::{PUSH_SUFFIX, push_body, write_push_prefix};
use tokio::net::TcpStream;

use crate::service::{Connection, OutboundFrames, RoomService, TryRecvError};

pub use codec::{
    CloseFrame, MAX_CONTROL_PAYLOAD, MAX_HEADER, Malformed, Message, Opcode, ProtocolError, Reader, accept_key,
    close_frame, frame_header,
};

/// How [`serve`] treats a connection.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct SocketOptions {
    /// The largest message taken from a client; a larger one closes the
    /// socket with 1009.
    pub max_message: usize,
    /// Frames written in one go, at most (fairness between sockets).
    pub write_batch: usize,
    /// How long a closing socket may take to flush its close frame and
    /// hear the client's.
    pub close_grace: Duration,
}

impl Default for SocketOptions {
    fn default() -> Self {
        SocketOptions { max_message: 64 * 1024, write_batch: 64, close_grace: Duration::from_secs(1) }
    }
}

impl SocketOptions {
    /// With `max_message`.
    pub fn max_message(mut self, bytes: usize) -> Self {
        self.max_message = bytes;
        self
    }
}

/// How a connection ended.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Ended {
    /// The service closed it, with this close code.
    ByService(u16),
    /// The service let it go without a close frame.
    Released,
    /// The client closed it (close frame or end of stream).
    ByClient,
    /// The client broke the protocol; closed with the error's code.
    Protocol(ProtocolError),
    /// The entry was refused before anything was entered (4001).
    Refused,
    /// The socket failed.
    Io(io::ErrorKind),
}

/// Reads per readiness, at most, before the other sockets' turn.
const READS_PER_TURN: usize = 4;
/// Size of the per-thread read buffer.
const READ_CHUNK: usize = 16 * 1024;
/// Bytes of frames gathered for one write, at most (plus one frame).
const BATCH_BYTES: usize = 64 * 1024;
/// Segments of one vectored write: three per frame at most.
const MAX_SEGMENTS: usize = 3 * 64 + 1;

thread_local! {
    static READ_BUFFER: RefCell<Vec<u8>> = RefCell::new(vec![0; READ_CHUNK]);
    static BATCH: RefCell<Batch> = RefCell::new(Batch::default());
}

/// Serves one client of `room` on `stream` (the upgrade handshake done;
/// `preread`: bytes the HTTP server read past it) until either side
/// closes: connects with `ticket`, hands its text messages to the service
/// and writes what the service gives back. An entry the service refuses
/// gets an `entry_refused` error frame and close 4001.
pub async fn serve(
    service: &RoomService,
    stream: TcpStream,
    preread: &[u8],
    room: RoomKey,
    ticket: &str,
    options: &SocketOptions,
) -> Ended {
    let conn = match service.connect(room, ticket) {
        Ok(c) => c,
        Err(e) => {
            refuse(stream, &e.to_string(), options).await;
            return Ended::Refused;
        }
    };
    let id = conn.id;
    let ended = Socket { stream, reader: Reader::new(options.max_message), writer: Writer::default(), options }
        .run(service, conn, preread)
        .await;
    service.disconnect(id);
    ended
}

/// Refuses an entry on an upgraded socket: an `entry_refused` error frame
/// saying `why`, then close 4001.
pub async fn refuse(stream: TcpStream, why: &str, options: &SocketOptions) {
    let text = room_service::wire::error_frame(room_service::wire::codes::ENTRY_REFUSED, why);
    let (h, n) = frame_header(Opcode::Text, text.len());
    let mut writer = Writer::default();
    writer.pending.extend_from_slice(&h[..n]);
    writer.pending.extend_from_slice(&text);
    writer.pending.extend_from_slice(&close_frame(4001, "entry refused"));
    let mut socket = Socket { stream, reader: Reader::new(0), writer, options };
    socket.linger().await;
}

struct Socket<'o> {
    stream: TcpStream,
    reader: Reader,
    writer: Writer,
    options: &'o SocketOptions,
}

/// What one turn of the loop decided.
enum Turn {
    Go,
    End(Ended),
    /// Flush what is queued (a close frame last), then end.
    Closing(Ended),
}

impl Socket<'_> {
    async fn run(&mut self, service: &RoomService, mut conn: Connection, preread: &[u8]) -> Ended {
        if !preread.is_empty() {
            let mut bytes = preread.to_vec();
            if let Turn::End(e) | Turn::Closing(e) = self.read_messages(service, &conn, &mut bytes) {
                return self.finish(e).await;
            }
        }
        loop {
            let idle = self.writer.is_idle();
            let turn = tokio::select! {
                event = next_frame(&mut conn.outbound, idle) => match event {
                    FromService::Frame(frame) => self.write_frames(frame, &mut conn.outbound),
                    // Let go while the socket was full: what is still
                    // queued (a bye and close frame, say) goes if the
                    // socket takes it within the grace.
                    FromService::Released if !idle => return self.drain(&mut conn.outbound).await,
                    FromService::Released => Turn::End(Ended::Released),
                },
                ready = self.stream.writable(), if !idle => match ready {
                    Ok(()) => self.writer.flush(&self.stream),
                    Err(e) => Turn::End(Ended::Io(e.kind())),
                },
                ready = self.stream.readable() => match ready {
                    Ok(()) => self.read(service, &conn),
                    Err(e) => Turn::End(Ended::Io(e.kind())),
                },
            };
            match turn {
                Turn::Go => {}
                Turn::End(e) => return e,
                Turn::Closing(e) => return self.finish(e).await,
            }
        }
    }

    /// The service let the connection go while the socket was full: writes
    /// what is pending and what is still queued, for at most the close
    /// grace (a client that reads nothing does not hold the socket).
    async fn drain(&mut self, outbound: &mut OutboundFrames) -> Ended {
        let grace = self.options.close_grace;
        let drained = tokio::time::timeout(grace, async {
            loop {
                if !self.writer.is_idle() {
                    if let Err(e) = self.stream.writable().await {
                        return Turn::End(Ended::Io(e.kind()));
                    }
                    if let end @ Turn::End(_) = self.writer.flush(&self.stream) {
                        return end;
                    }
                    continue;
                }
                match outbound.try_recv() {
                    Ok(frame) => match self.write_frames(frame, outbound) {
                        Turn::Go => {}
                        other => return other,
                    },
                    Err(_) => return Turn::End(Ended::Released),
                }
            }
        })
        .await;
        match drained {
            Ok(Turn::Closing(ended)) => self.finish(ended).await,
            Ok(Turn::End(ended)) => ended,
            // Unreachable (the loop ends only with an end), or the grace ran out.
            Ok(Turn::Go) | Err(_) => Ended::Released,
        }
    }

    /// Takes `first` and the frames waiting behind it (up to a batch) and
    /// writes them in one go.
    fn write_frames(&mut self, first: Outbound, outbound: &mut OutboundFrames) -> Turn {
        let limit = self.options.write_batch.clamp(1, (MAX_SEGMENTS - 1) / 3);
        BATCH.with_borrow_mut(|batch| {
            batch.clear();
            let mut closing = batch.add(first);
            // A batch stops at a frame count and at a size: what a full
            // socket leaves of it waits in memory.
            while closing.is_none() && batch.frames < limit && batch.bytes < BATCH_BYTES {
                match outbound.try_recv() {
                    Ok(frame) => closing = batch.add(frame),
                    Err(TryRecvError::Empty | TryRecvError::Disconnected) => break,
                }
            }
            let written = batch.write(&self.stream, &mut self.writer);
            batch.clear();
            match (written, closing) {
                (Err(e), _) => Turn::End(Ended::Io(e.kind())),
                (Ok(()), Some(code)) => Turn::Closing(Ended::ByService(code)),
                (Ok(()), None) => Turn::Go,
            }
        })
    }

    /// Reads what the socket has (a few reads at most) and hands the
    /// messages to the service.
    fn read(&mut self, service: &RoomService, conn: &Connection) -> Turn {
        for _ in 0..READS_PER_TURN {
            let turn = READ_BUFFER.with_borrow_mut(|buf| match self.stream.try_read(buf) {
                Ok(0) => Some(Turn::End(Ended::ByClient)),
                Ok(n) => match self.read_messages(service, conn, &mut buf[..n]) {
                    Turn::Go => None,
                    other => Some(other),
                },
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => Some(Turn::Go),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => None,
                Err(e) => Some(Turn::End(Ended::Io(e.kind()))),
            });
            if let Some(turn) = turn {
                return turn;
            }
        }
        Turn::Go
    }

    fn read_messages(&mut self, service: &RoomService, conn: &Connection, bytes: &mut [u8]) -> Turn {
        let mut client_close = None;
        let writer = &mut self.writer;
        let read = self.reader.feed(bytes, |message| match message {
            Message::Text(text) => {
                // Errors of the frame go back to the client as error frames.
                let _ = service.handle_text(conn.id, text);
            }
            Message::Binary(_) => {
                let _ = service.handle_text(conn.id, "binary frames are not part of the protocol");
            }
            Message::Ping(payload) => writer.queue_frame(Opcode::Pong, payload),
            Message::Close(frame) => client_close = Some(frame.map_or(1000, |f| f.code)),
            _ => {}
        });
        match read {
            Err(e) => {
                tracing::debug!(error = %e, member = %conn.member, "websocket protocol error");
                self.writer.pending.extend_from_slice(&close_frame(e.close_code(), &e.to_string()));
                Turn::Closing(Ended::Protocol(e))
            }
            Ok(()) => match client_close {
                Some(code) => {
                    // The closing handshake: echo the client's code.
                    let code = if code == 1005 { 1000 } else { code };
                    self.writer.pending.extend_from_slice(&close_frame(code, ""));
                    Turn::Closing(Ended::ByClient)
                }
                None if self.writer.is_idle() => Turn::Go,
                // A pong waits: try it now.
                None => self.writer.flush(&self.stream),
            },
        }
    }

    /// Flushes what is queued (a close frame last) and waits, briefly, for
    /// the client to close its side, so that the close frame is not lost
    /// to a reset; then `ended`.
    async fn finish(&mut self, ended: Ended) -> Ended {
        self.linger().await;
        ended
    }

    /// [`Socket::finish`] without a result (a refused entry).
    async fn linger(&mut self) {
        let grace = self.options.close_grace;
        let _ = tokio::time::timeout(grace, async {
            while !self.writer.is_idle() {
                if self.stream.writable().await.is_err() {
                    return;
                }
                if let Turn::End(_) = self.writer.flush(&self.stream) {
                    return;
                }
            }
            // Unread bytes at close would reset the connection and could
            // take the close frame with them: read to the client's end.
            loop {
                if self.stream.readable().await.is_err() {
                    return;
                }
                let done = READ_BUFFER.with_borrow_mut(|buf| match self.stream.try_read(buf) {
                    Ok(0) => true,
                    Ok(_) => false,
                    Err(e) => e.kind() != io::ErrorKind::WouldBlock && e.kind() != io::ErrorKind::Interrupted,
                });
                if done {
                    return;
                }
            }
        })
        .await;
    }
}

/// What the service has for the socket.
enum FromService {
    Frame(Outbound),
    /// The service let the connection go (and every frame was taken, if
    /// the socket was taking them).
    Released,
}

/// The next frame while the socket takes what is written (`idle`); while
/// it does not, no frame is taken (the service sees the back-pressure),
/// but the end of the connection still is.
async fn next_frame(outbound: &mut OutboundFrames, idle: bool) -> FromService {
    std::future::poll_fn(|cx| {
        if idle {
            outbound.poll_recv(cx).map(|frame| frame.map_or(FromService::Released, FromService::Frame))
        } else {
            outbound.poll_released(cx).map(|()| FromService::Released)
        }
    })
    .await
}

/// Bytes the socket has not taken yet, in order. Empty (and holding no
/// memory) while the socket keeps up.
#[derive(Debug, Default)]
struct Writer {
    pending: Vec<u8>,
}

impl Writer {
    fn is_idle(&self) -> bool {
        self.pending.is_empty()
    }

    fn queue_frame(&mut self, opcode: Opcode, payload: &[u8]) {
        let (h, n) = frame_header(opcode, payload.len());
        self.pending.extend_from_slice(&h[..n]);
        self.pending.extend_from_slice(payload);
    }

    /// Writes what it can of the pending bytes.
    fn flush(&mut self, stream: &TcpStream) -> Turn {
        while !self.pending.is_empty() {
            match stream.try_write(&self.pending) {
                Ok(n) => {
                    self.pending.drain(..n);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Turn::Go,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Turn::End(Ended::Io(e.kind())),
            }
        }
        // A burst is over: its memory goes.
        self.pending = Vec::new();
        Turn::Go
    }
}

/// Frames about to be written together: their per-connection parts in
/// one buffer, their shared bodies by reference.
#[derive(Default)]
struct Batch {
    /// Websocket headers, push headers, control frames.
    scratch: Vec<u8>,
    bodies: Vec<Bytes>,
    segments: Vec<Segment>,
    frames: usize,
    /// The batch's size on the wire.
    bytes: usize,
}

#[derive(Clone, Copy)]
enum Segment {
    Scratch(usize, usize),
    Body(usize),
    Static(&'static [u8]),
}

impl Batch {
    fn clear(&mut self) {
        self.scratch.clear();
        self.bodies.clear();
        self.segments.clear();
        self.frames = 0;
        self.bytes = 0;
    }

    fn push(&mut self, segment: Segment) {
        self.bytes += self.slice(segment).len();
        self.segments.push(segment);
    }

    /// Adds a frame; a close frame ends the batch (its code returned).
    fn add(&mut self, frame: Outbound) -> Option<u16> {
        self.frames += 1;
        match frame {
            Outbound::Push { header, body } => {
                // The push header is rendered after room for the largest
                // websocket header, which is then written just before it.
                let start = self.scratch.len();
                self.scratch.resize(start + MAX_HEADER, 0);
                write_push_prefix(&header, &mut self.scratch);
                let wire_body = push_body(&body);
                let len = self.scratch.len() - start - MAX_HEADER + wire_body.len() + PUSH_SUFFIX.len();
                let (h, n) = frame_header(Opcode::Text, len);
                let from = start + MAX_HEADER - n;
                self.scratch[from..start + MAX_HEADER].copy_from_slice(&h[..n]);
                self.push(Segment::Scratch(from, self.scratch.len()));
                if body.is_empty() {
                    self.push(Segment::Static(b"null"));
                } else {
                    self.bodies.push(body);
                    self.push(Segment::Body(self.bodies.len() - 1));
                }
                self.push(Segment::Static(PUSH_SUFFIX));
                None
            }
            Outbound::Close(reason) => {
                let code = reason.close_code();
                let start = self.scratch.len();
                self.scratch.extend_from_slice(&close_frame(code, reason.as_str()));
                self.push(Segment::Scratch(start, self.scratch.len()));
                Some(code)
            }
            other => {
                let text = other.into_text();
                let start = self.scratch.len();
                let (h, n) = frame_header(Opcode::Text, text.len());
                self.scratch.extend_from_slice(&h[..n]);
                self.push(Segment::Scratch(start, self.scratch.len()));
                self.bodies.push(text);
                self.push(Segment::Body(self.bodies.len() - 1));
                None
            }
        }
    }

    fn slice(&self, segment: Segment) -> &[u8] {
        match segment {
            Segment::Scratch(from, to) => &self.scratch[from..to],
            Segment::Body(i) => &self.bodies[i],
            Segment::Static(bytes) => bytes,
        }
    }

    /// Writes the batch in one vectored write; what the socket does not
    /// take is copied to `writer` to go when it is writable again.
    fn write(&self, stream: &TcpStream, writer: &mut Writer) -> io::Result<()> {
        let mut slices = [IoSlice::new(&[]); MAX_SEGMENTS];
        let count = self.segments.len().min(MAX_SEGMENTS);
        for (slot, segment) in slices.iter_mut().zip(&self.segments) {
            *slot = IoSlice::new(self.slice(*segment));
        }
        let total: usize = slices[..count].iter().map(|s| s.len()).sum();
        let mut written = loop {
            match stream.try_write_vectored(&slices[..count]) {
                Ok(n) => break n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break 0,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        };
        if written < total {
            for slice in &slices[..count] {
                if written >= slice.len() {
                    written -= slice.len();
                } else {
                    writer.pending.extend_from_slice(&slice[written..]);
                    written = 0;
                }
            }
        }
        Ok(())
    }
}
