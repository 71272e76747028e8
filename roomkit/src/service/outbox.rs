//! A connection's frames, from the node to the host's writer: its own
//! queue (replies, frames for it alone) and, once it follows, its room's
//! log, read through a cursor.
//!
//! The queue is bounded, single-producer, single-consumer, and holds
//! nothing while it is empty: a class keeps tens of thousands of them,
//! nearly all empty between two messages, and a general channel allocates
//! its first block of slots up front (tokio's mpsc: 32 slots, over 2 KiB a
//! connection). The node pushes under its lock; the writer pops, and is
//! woken only when it waits with nothing to take.
//!
//! The room's messages do not go through the queue: the node publishes
//! each once to the room's [`RoomLog`], and each writer reads the log
//! with the [`Follower`] the node gave it, which picks what reaches the
//! connection and numbers it. A frame of the connection's own queue goes
//! out after the log entries published before it (an ack's answer after
//! the messages it counts). A writer that falls behind what the log keeps
//! jumps to its end with a resync marker; its client checks.

use std::collections::VecDeque;
use std::future::poll_fn;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use bytes::Bytes;
use parking_lot::{Mutex, RwLock};
use room_core::RoomKey;
use room_push::{Follower, LogEntry, SubclassId};
use room_service::Outbound;

/// Entries a room's log keeps for writers that are behind (none once
/// every writer of the room waits at its end)...
const LOG_ENTRIES: usize = 512;
/// ... the bodies it keeps at most (closed chat windows of a large class
/// carry a batch per sub-class)...
const LOG_BYTES: usize = 8 << 20;
/// ... and how long it keeps an entry: a writer further behind resyncs
/// (its client recovers the reliable messages from the node's cache).
const LOG_AGE: Duration = Duration::from_secs(10);

/// What the node hands a connection's writer, in order.
enum Item {
    /// A frame, to go out once the writer has read the room's log up to
    /// `after` (the log's end when it was queued).
    Frame { frame: Outbound, after: u64 },
    /// From here on the writer also reads `log`, from entry `from`.
    Follow { log: Arc<RoomLog>, from: u64, follower: Follower },
    /// From entry `at` on, the connection is in `subclass`.
    Moved { at: u64, subclass: Option<SubclassId> },
    /// A reliable message for this connection among few, read through
    /// its follower once the writer has read the log up to `after`.
    Entry { entry: LogEntry, after: u64 },
    /// Messages for this connection did not fit (the queue was full): at
    /// `after`, the writer resyncs at `sequence` (the newest lost one's
    /// `(epoch, number)`) and the client checks for them.
    Lost { after: u64, sequence: (u64, u64) },
}

impl Item {
    /// The log entries the writer reads before this item, if it waits
    /// for any.
    fn after(&self) -> Option<u64> {
        match self {
            Item::Frame { after, .. } | Item::Entry { after, .. } | Item::Lost { after, .. } => Some(*after),
            Item::Follow { .. } | Item::Moved { .. } => None,
        }
    }
}

struct State {
    items: VecDeque<Item>,
    /// `Item::Frame`s in `items`.
    frames: u32,
    /// The writer waiting for a frame, if it is waiting.
    waiting: Option<Waker>,
    sender_gone: bool,
    receiver_gone: bool,
}

struct Shared {
    state: Mutex<State>,
    capacity: u32,
    /// Frames the writer read from the room's log, by class code: the
    /// node's counts cover its lanes only. Written by the writer alone;
    /// 32 bits (a connection would wrap after four billion frames of one
    /// class): four bytes fewer for each of tens of thousands.
    from_log: [AtomicU32; 4],
    /// The writer's place in its room's log ([`NOT_FOLLOWING`] before it
    /// follows one): set by the node when it hands over the follow (the
    /// place the writer starts from) and by the writer as it reads, so that the node sees a writer that stopped reading
    /// (the log does not fill up as a queue would).
    read_pos: AtomicU64,
}

/// [`Shared::read_pos`] of a writer that follows no log.
const NOT_FOLLOWING: u64 = u64::MAX;

/// A new queue that holds at most `capacity` frames (at least 1).
pub(crate) fn outbox(capacity: usize) -> (OutboxSender, OutboundFrames) {
    let shared = Arc::new(Shared {
        state: Mutex::new(State {
            items: VecDeque::new(),
            frames: 0,
            waiting: None,
            sender_gone: false,
            receiver_gone: false,
        }),
        capacity: u32::try_from(capacity).unwrap_or(u32::MAX).max(1),
        from_log: Default::default(),
        read_pos: AtomicU64::new(NOT_FOLLOWING),
    });
    (OutboxSender { shared: shared.clone(), log: None }, OutboundFrames { shared, reading: None, moves: None })
}

/// Why a frame was not queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refused {
    /// The queue holds `capacity` frames.
    Full,
    /// The writer is gone.
    Closed,
}

/// The node's end.
pub(crate) struct OutboxSender {
    shared: Arc<Shared>,
    /// The room's log (read once the connection follows it).
    log: Option<Arc<RoomLog>>,
}

impl OutboxSender {
    /// The connection is in the room of `log`.
    pub(crate) fn in_room(mut self, log: Arc<RoomLog>) -> Self {
        self.log = Some(log);
        self
    }

    /// The room's log, if the connection was placed in one.
    pub(crate) fn room_log(&self) -> Option<&Arc<RoomLog>> {
        self.log.as_ref()
    }

    /// Queues `frame` if there is room and the writer is still there.
    pub(crate) fn try_send(&self, frame: Outbound) -> Result<(), Refused> {
        let after = self.log.as_ref().map_or(0, |log| log.end());
        self.push(Item::Frame { frame, after }, true)
    }

    /// The connection reads its room's log from entry `from` on, after
    /// what is queued now.
    pub(crate) fn follow(&self, from: u64, follower: Follower) {
        let Some(log) = &self.log else { return };
        // Counted from now, so that the log keeps its entries for this
        // writer until it follows.
        log.followers.fetch_add(1, Ordering::AcqRel);
        self.shared.read_pos.store(from, Ordering::Relaxed);
        if self.push(Item::Follow { log: log.clone(), from, follower }, false).is_err() {
            log.followers.fetch_sub(1, Ordering::AcqRel);
        }
    }

    /// Where the writer stands in its room's log, and the log's end:
    /// `None` before it follows one.
    pub(crate) fn log_progress(&self) -> Option<(u64, u64)> {
        let log = self.log.as_ref()?;
        let read = self.shared.read_pos.load(Ordering::Relaxed);
        (read != NOT_FOLLOWING).then(|| (read, log.end()))
    }

    /// From entry `at` of its room's log on, the connection is in `subclass`.
    pub(crate) fn moved(&self, at: u64, subclass: Option<SubclassId>) {
        let _ = self.push(Item::Moved { at, subclass }, false);
    }

    /// The log's end now: where an entry handed to this connection alone
    /// stands among the room's ([`direct`](Self::direct)).
    pub(crate) fn log_end(&self) -> u64 {
        self.log.as_ref().map_or(0, |log| log.end())
    }

    /// A reliable message for this connection alone among few, read after
    /// the room's first `after` log entries. When the queue is full, the
    /// writer resyncs there instead (one marker for every message that did
    /// not fit in a row): the client checks for them.
    pub(crate) fn direct(&self, entry: LogEntry, after: u64) {
        let sequence = entry.sequence();
        let _ = self.push_with(|state, capacity| {
            if state.frames < capacity {
                state.frames += 1;
                state.items.push_back(Item::Entry { entry, after });
                return Ok(());
            }
            let Some(sequence) = sequence else { return Err(Refused::Full) };
            match state.items.back_mut() {
                Some(Item::Lost { after: at, sequence: newest }) => (*at, *newest) = (after, sequence),
                _ => state.items.push_back(Item::Lost { after, sequence }),
            }
            Ok(())
        });
    }

    fn push(&self, item: Item, bounded: bool) -> Result<(), Refused> {
        self.push_with(|state, capacity| {
            if bounded {
                if state.frames >= capacity {
                    return Err(Refused::Full);
                }
                state.frames += 1;
            }
            state.items.push_back(item);
            Ok(())
        })
    }

    /// Queues what `add` puts in the state, and wakes the writer if it
    /// waits.
    fn push_with(&self, add: impl FnOnce(&mut State, u32) -> Result<(), Refused>) -> Result<(), Refused> {
        let waker = {
            let mut state = self.shared.state.lock();
            if state.receiver_gone {
                return Err(Refused::Closed);
            }
            if state.items.capacity() == 0 {
                // Most queues hold a welcome and a follow, then next to
                // nothing: the room's messages come through its log.
                state.items.reserve_exact(2);
            }
            add(&mut state, self.shared.capacity)?;
            state.waiting.take()
        };
        // Woken outside the lock: the writer takes it at once.
        if let Some(w) = waker {
            w.wake();
        }
        Ok(())
    }

    /// Frames the writer read from the room's log so far, by class code
    /// (modulo 2^32).
    pub(crate) fn frames_from_log(&self) -> [u32; 4] {
        self.shared.from_log.each_ref().map(|n| n.load(Ordering::Relaxed))
    }

    /// Whether a frame would fit now.
    pub(crate) fn has_room(&self) -> bool {
        self.shared.state.lock().frames < self.shared.capacity
    }
}

impl Drop for OutboxSender {
    fn drop(&mut self) {
        let waker = {
            let mut state = self.shared.state.lock();
            state.sender_gone = true;
            state.waiting.take()
        };
        if let Some(w) = waker {
            w.wake();
        }
    }
}

/// The recent entries of one room's log, shared by the writers that
/// follow it. The node's side appends (one at a time, in order); writers
/// read.
pub(crate) struct RoomLog {
    room: RoomKey,
    kept: RwLock<Kept>,
    /// Writers waiting for the next entry, by their queue's address (one
    /// waker each however often it registers).
    waiting: Mutex<hashbrown::HashMap<usize, Waker, ahash::RandomState>>,
    /// Writers that fell behind what is kept (the node's count, shared
    /// by its rooms' logs).
    lagged: Arc<AtomicU64>,
    /// Writers following the log.
    followers: AtomicUsize,
    /// Connections of the room on this node (following or about to):
    /// kept by the node's side.
    members: AtomicUsize,
    /// The number of the next entry: writers look here, without the
    /// lock, for whether there is anything to read.
    end: AtomicU64,
}

struct Kept {
    /// The number of `entries[0]` (of the next entry, while empty).
    first: u64,
    entries: VecDeque<(LogEntry, Instant)>,
    bytes: usize,
    /// Where the room's sequence stands after the newest entry that
    /// moved it (none yet: only chat and reactions so far).
    sequence: Option<(u64, u64)>,
    /// Whether an entry was appended yet (the first one sets `first`).
    started: bool,
}

/// What a writer finds at its place in the log.
enum Read {
    /// The entry, and the frame it gives the writer's connection, if any.
    Entry(Option<(room_push::FrameHeader, Bytes)>),
    /// Its place is no longer kept: continue at `end`, where the room's
    /// sequence stands at `sequence` (if an entry told).
    Lagged { end: u64, sequence: Option<(u64, u64)> },
    /// Nothing there yet.
    End,
}

impl RoomLog {
    pub(crate) fn new(room: RoomKey, lagged: Arc<AtomicU64>) -> Self {
        RoomLog {
            room,
            kept: RwLock::new(Kept { first: 0, entries: VecDeque::new(), bytes: 0, sequence: None, started: false }),
            waiting: Mutex::new(hashbrown::HashMap::default()),
            lagged,
            followers: AtomicUsize::new(0),
            members: AtomicUsize::new(0),
            end: AtomicU64::new(0),
        }
    }

    /// The room.
    pub(crate) fn room(&self) -> RoomKey {
        self.room
    }

    /// The number of the next entry.
    fn end(&self) -> u64 {
        self.end.load(Ordering::Acquire)
    }

    /// Appends entry `pos` (the next one; an entry out of order is a bug
    /// of the caller and is ignored) and hands over the waiting writers'
    /// wake-ups: woken once the node's turn appended all it had, a writer
    /// writes a message and the chat that rode it together.
    pub(crate) fn append(&self, pos: u64, entry: LogEntry, wake: &mut Vec<Waker>) {
        let now = Instant::now();
        {
            // The waiters are taken and the entry pushed under the
            // waiters' lock: a writer looking for the entry meanwhile
            // (`wait`) is either taken here or sees it.
            let mut waiting = self.waiting.lock();
            let followers = self.followers.load(Ordering::Acquire);
            // Every connection of the room follows and waited at the end:
            // none needs what came before.
            let caught_up = waiting.len() >= followers && followers >= self.members.load(Ordering::Relaxed);
            // Taken whole, the map keeping its room for the next wait.
            wake.extend(waiting.drain().map(|(_, w)| w));
            let mut kept = self.kept.write();
            if !kept.started {
                kept.started = true;
                kept.first = pos;
            }
            if pos != kept.first + kept.entries.len() as u64 {
                debug_assert!(false, "log entry {pos} out of order");
                return;
            }
            if let Some(s) = entry.sequence() {
                kept.sequence = Some(s);
            }
            kept.bytes += entry.body_bytes();
            kept.entries.push_back((entry, now));
            let keep_from = now.checked_sub(LOG_AGE);
            while kept.entries.len() > 1
                && (caught_up
                    || kept.entries.len() > LOG_ENTRIES
                    || kept.bytes > LOG_BYTES
                    || kept.entries.front().is_some_and(|(_, at)| keep_from.is_some_and(|k| *at < k)))
            {
                if let Some((old, _)) = kept.entries.pop_front() {
                    kept.bytes -= old.body_bytes();
                    kept.first += 1;
                }
            }
            self.end.store(kept.first + kept.entries.len() as u64, Ordering::Release);
        }
    }

    /// A connection of the room came to this node (`true`), or went.
    pub(crate) fn count_member(&self, came: bool) {
        if came {
            self.members.fetch_add(1, Ordering::Relaxed);
        } else {
            self.members.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// Connections of the room on this node.
    pub(crate) fn members(&self) -> usize {
        self.members.load(Ordering::Relaxed)
    }

    /// What entry `pos` gives `follower`, read in place.
    fn read(&self, pos: u64, follower: &mut Follower) -> Read {
        let kept = self.kept.read();
        let end = kept.first + kept.entries.len() as u64;
        if pos < kept.first {
            return Read::Lagged { end, sequence: kept.sequence };
        }
        match kept.entries.get((pos - kept.first) as usize) {
            Some((e, _)) => Read::Entry(follower.take(e)),
            None => Read::End,
        }
    }

    /// Wakes `waker` at the next entry unless one came after `pos`
    /// already (then `false`: read on).
    fn wait(&self, id: usize, pos: u64, waker: &Waker) -> bool {
        let mut waiting = self.waiting.lock();
        if self.end() > pos {
            return false;
        }
        match waiting.get_mut(&id) {
            Some(w) if w.will_wake(waker) => {}
            _ => {
                waiting.insert(id, waker.clone());
            }
        }
        true
    }

    /// A writer stops following.
    fn leave(&self, id: usize) {
        self.waiting.lock().remove(&id);
        self.followers.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Why [`OutboundFrames::try_recv`] returned nothing (complete: a queue
/// is either empty for now or over).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TryRecvError {
    /// Nothing is queued now.
    #[error("no frame is waiting")]
    Empty,
    /// The service let the connection go and every frame was taken.
    #[error("the connection is over")]
    Disconnected,
}

/// A writer's place in its room's log.
struct Reading {
    log: Arc<RoomLog>,
    pos: u64,
    follower: Follower,
}

/// The frames for one client, in order ([`Connection::outbound`](super::Connection::outbound)):
/// the stream ends once the service has let the connection go and every
/// frame was taken. At most [`ServiceConfig::outbound`](super::ServiceConfig::outbound)
/// frames of the connection's own wait here; the room's messages are read
/// from the room's log as they are taken, and a writer that falls behind
/// what the log keeps gets a resync marker (its client checks) instead of
/// what it missed.
pub struct OutboundFrames {
    shared: Arc<Shared>,
    reading: Option<Reading>,
    /// Moves not yet reached in the log (rare: boxed while there are any).
    moves: Option<Box<Moves>>,
}

/// Moves of a connection not yet reached in its room's log: where, and
/// to which sub-class.
type Moves = VecDeque<(u64, Option<SubclassId>)>;

impl std::fmt::Debug for OutboundFrames {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OutboundFrames")
            .field("queued", &self.len())
            .field("log_position", &self.reading.as_ref().map(|r| r.pos))
            .finish_non_exhaustive()
    }
}

impl OutboundFrames {
    /// The next frame; `None` once the connection is over.
    pub async fn recv(&mut self) -> Option<Outbound> {
        poll_fn(|cx| self.poll_recv(cx)).await
    }

    /// The next frame if one is ready, [`Poll::Pending`] (and a wake-up
    /// when one comes) if not; `Ready(None)` once the connection is over.
    #[must_use = "a frame taken here is gone from the queue"]
    pub fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Option<Outbound>> {
        self.next(Some(cx))
    }

    /// Ready once the service has let the connection go (frames may still
    /// be queued); a wake-up registered otherwise. For a writer that stops
    /// taking frames while its socket is full and must still learn that
    /// the connection is over.
    #[must_use = "a pending poll registers a wake-up only"]
    pub fn poll_released(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        let mut state = self.shared.state.lock();
        if state.sender_gone {
            return Poll::Ready(());
        }
        match &mut state.waiting {
            Some(w) if w.will_wake(cx.waker()) => {}
            slot => *slot = Some(cx.waker().clone()),
        }
        Poll::Pending
    }

    /// The next frame if one is ready now.
    pub fn try_recv(&mut self) -> Result<Outbound, TryRecvError> {
        match self.next(None) {
            Poll::Ready(Some(frame)) => Ok(frame),
            Poll::Ready(None) => Err(TryRecvError::Disconnected),
            Poll::Pending => Err(TryRecvError::Empty),
        }
    }

    /// Frames of the connection's own queued now (the room's messages not
    /// read yet are not counted).
    pub fn len(&self) -> usize {
        self.shared.state.lock().frames as usize
    }

    /// Whether no frame of the connection's own is queued now.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn id(&self) -> usize {
        Arc::as_ptr(&self.shared) as usize
    }

    fn next(&mut self, mut cx: Option<&mut Context<'_>>) -> Poll<Option<Outbound>> {
        loop {
            // Whether the log has a next entry is asked before the queue is
            // looked at: a move placed at that entry was queued before the
            // entry was appended, so the look below finds it.
            let ready = self.reading.as_ref().is_some_and(|r| r.log.end() > r.pos);
            // The connection's own queue: what may go before that entry.
            let (over, followed, direct) = {
                let mut state = self.shared.state.lock();
                let (mut taken, mut followed, mut direct) = (None, false, None);
                while let Some(item) = state.items.front() {
                    if item.after().is_some_and(|after| self.reading.as_ref().is_some_and(|r| r.pos < after)) {
                        break;
                    }
                    match state.items.pop_front() {
                        Some(Item::Frame { frame, .. }) => {
                            state.frames -= 1;
                            taken = Some(frame);
                            break;
                        }
                        Some(Item::Entry { entry, .. }) => {
                            state.frames -= 1;
                            direct = Some(Ok(entry));
                            break;
                        }
                        Some(Item::Lost { sequence, .. }) => {
                            direct = Some(Err(sequence));
                            break;
                        }
                        Some(Item::Follow { log, from, follower }) => {
                            if let Some(old) = self.reading.replace(Reading { log, pos: from, follower }) {
                                old.log.leave(self.id());
                            }
                            followed = true;
                        }
                        Some(Item::Moved { at, subclass }) => {
                            self.moves.get_or_insert_default().push_back((at, subclass));
                        }
                        None => {}
                    }
                }
                if state.items.is_empty() && state.items.capacity() > 0 {
                    // Drained: the room's messages come through the log,
                    // and the next frame of the connection's own may be
                    // long in coming.
                    state.items = VecDeque::new();
                }
                if let Some(frame) = taken {
                    return Poll::Ready(Some(frame));
                }
                if direct.is_some() {
                    (false, followed, direct)
                } else if state.sender_gone && state.items.is_empty() {
                    (true, followed, None)
                } else {
                    if let Some(cx) = cx.as_deref_mut() {
                        // Registered under the lock the sender pushes
                        // under: no item can come between the look and the
                        // registration unseen.
                        match &mut state.waiting {
                            Some(w) if w.will_wake(cx.waker()) => {}
                            slot => *slot = Some(cx.waker().clone()),
                        }
                    }
                    (false, followed, None)
                }
            };
            if over {
                return Poll::Ready(None);
            }
            if let Some(direct) = direct {
                // Queued only once the writer follows (the node hands a
                // turn's follows over before its entries).
                let Some(r) = self.reading.as_mut() else { continue };
                apply_moves(&mut self.moves, &mut r.follower, r.pos + 1);
                let header = match direct {
                    Ok(entry) => match r.follower.take(&entry) {
                        Some((header, body)) => {
                            self.shared.from_log[usize::from(header.class.code())].fetch_add(1, Ordering::Relaxed);
                            return Poll::Ready(Some(Outbound::Push { header, body }));
                        }
                        None => continue,
                    },
                    Err((epoch, newest)) => {
                        r.log.lagged.fetch_add(1, Ordering::Relaxed);
                        r.follower.lagged(epoch, newest)
                    }
                };
                self.shared.from_log[usize::from(header.class.code())].fetch_add(1, Ordering::Relaxed);
                return Poll::Ready(Some(Outbound::Push { header, body: Bytes::new() }));
            }
            if followed {
                // Read from the new place.
                continue;
            }
            let id = self.id();
            let Some(r) = self.reading.as_mut() else { return Poll::Pending };
            if !ready {
                match cx.as_deref_mut() {
                    None => return Poll::Pending,
                    Some(cx) if r.log.wait(id, r.pos, cx.waker()) => return Poll::Pending,
                    // An entry came meanwhile: read on.
                    Some(_) => continue,
                }
            }
            apply_moves(&mut self.moves, &mut r.follower, r.pos + 1);
            match r.log.read(r.pos, &mut r.follower) {
                Read::Entry(frame) => {
                    r.pos += 1;
                    self.shared.read_pos.store(r.pos, Ordering::Relaxed);
                    if let Some((header, body)) = frame {
                        self.shared.from_log[usize::from(header.class.code())].fetch_add(1, Ordering::Relaxed);
                        return Poll::Ready(Some(Outbound::Push { header, body }));
                    }
                }
                Read::Lagged { end, sequence } => {
                    r.log.lagged.fetch_add(1, Ordering::Relaxed);
                    apply_moves(&mut self.moves, &mut r.follower, end);
                    r.pos = end;
                    self.shared.read_pos.store(end, Ordering::Relaxed);
                    // Without a number from the log, the follower's own.
                    let (epoch, newest) = sequence.unwrap_or((r.follower.epoch(), r.follower.last()));
                    let header = r.follower.lagged(epoch, newest);
                    self.shared.from_log[usize::from(header.class.code())].fetch_add(1, Ordering::Relaxed);
                    return Poll::Ready(Some(Outbound::Push { header, body: Bytes::new() }));
                }
                // Entries only leave from the front: not reached.
                Read::End => {}
            }
        }
    }
}

/// Applies the moves placed before entry `before`.
fn apply_moves(moves: &mut Option<Box<Moves>>, follower: &mut Follower, before: u64) {
    let Some(queue) = moves else { return };
    while let Some(&(_, subclass)) = queue.front().filter(|(at, _)| *at < before) {
        follower.set_subclass(subclass);
        queue.pop_front();
    }
    if queue.is_empty() {
        *moves = None;
    }
}

impl Drop for OutboundFrames {
    fn drop(&mut self) {
        if let Some(r) = &self.reading {
            r.log.leave(self.id());
        }
        let mut state = self.shared.state.lock();
        state.receiver_gone = true;
        for item in state.items.drain(..) {
            // A follow the writer never read is let go too.
            if let Item::Follow { log, .. } = item {
                log.followers.fetch_sub(1, Ordering::AcqRel);
            }
        }
        state.items = VecDeque::new();
        state.frames = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn frame(n: u32) -> Outbound {
        Outbound::Text(Bytes::from(n.to_string()))
    }

    fn number(f: Outbound) -> u32 {
        match f {
            Outbound::Text(b) => std::str::from_utf8(&b).expect("utf-8").parse().expect("a number"),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[derive(Debug, Clone)]
    enum Op {
        Send,
        Recv,
        DropSender,
    }

    proptest! {
        /// Against a bounded VecDeque: the same frames in the same order,
        /// refused when full, and the end once the sender is gone and the
        /// queue drained.
        #[test]
        fn it_behaves_as_a_bounded_fifo(
            capacity in 1usize..20,
            ops in prop::collection::vec(prop_oneof![4 => Just(Op::Send), 4 => Just(Op::Recv), 1 => Just(Op::DropSender)], 0..200),
        ) {
            let (tx, mut rx) = outbox(capacity);
            let mut tx = Some(tx);
            let mut model: VecDeque<u32> = VecDeque::new();
            let mut next = 0u32;
            for op in ops {
                match op {
                    Op::Send => {
                        let Some(sender) = &tx else { continue };
                        let got = sender.try_send(frame(next));
                        if model.len() < capacity {
                            prop_assert_eq!(got, Ok(()));
                            model.push_back(next);
                        } else {
                            prop_assert_eq!(got, Err(Refused::Full));
                        }
                        prop_assert_eq!(sender.has_room(), model.len() < capacity);
                        next += 1;
                    }
                    Op::Recv => {
                        let got = rx.try_recv().map(number);
                        match model.pop_front() {
                            Some(n) => prop_assert_eq!(got, Ok(n)),
                            None if tx.is_none() => prop_assert_eq!(got, Err(TryRecvError::Disconnected)),
                            None => prop_assert_eq!(got, Err(TryRecvError::Empty)),
                        }
                    }
                    Op::DropSender => tx = None,
                }
                prop_assert_eq!(rx.len(), model.len());
            }
        }
    }

    #[test]
    fn a_sender_finds_the_writer_gone() {
        let (tx, rx) = outbox(4);
        tx.try_send(frame(1)).expect("queued");
        drop(rx);
        assert_eq!(tx.try_send(frame(2)), Err(Refused::Closed));
    }

    #[test]
    fn a_burst_gives_its_memory_back_once_drained() {
        let (tx, mut rx) = outbox(512);
        for n in 0..100 {
            tx.try_send(frame(n)).expect("queued");
        }
        for n in 0..100 {
            assert_eq!(rx.try_recv().map(number), Ok(n));
        }
        assert_eq!(rx.shared.state.lock().items.capacity(), 0);
    }

    /// A node in log delivery, one connection following its room, and
    /// the room's log: what the node publishes goes to the log.
    struct Room {
        node: room_push::PushNode,
        log: Arc<RoomLog>,
        seq: u64,
    }

    const ROOM: room_core::RoomKey = room_core::RoomKey::new(room_core::BusinessId(1), room_core::RoomId(1));

    impl Room {
        fn new() -> (Room, OutboxSender, OutboundFrames) {
            let mut config = room_push::NodeConfig::default();
            config.delivery = room_push::Delivery::Log;
            let mut node = room_push::PushNode::new(config);
            let spec =
                room_push::ConnSpec::new(ROOM, room_core::Uin(1), room_core::Role::Student, room_core::Terminal::Web);
            let conn = node.connect(spec).expect("connects").conn;
            // A second member, so that a message for the first is for few.
            let other = room_push::ConnSpec { uin: room_core::Uin(2), ..spec };
            node.connect(other).expect("connects");
            let (from, follower) = node.follow(conn).expect("known");
            let log = Arc::new(RoomLog::new(ROOM, Arc::default()));
            let (tx, rx) = outbox(8);
            let tx = tx.in_room(log.clone());
            tx.follow(from, follower);
            (Room { node, log, seq: 0 }, tx, rx)
        }

        /// The teacher says something to the room.
        fn say(&mut self, tx: &OutboxSender) {
            self.say_to(tx, room_push::Target::room());
        }

        /// The teacher says something to `target`.
        fn say_to(&mut self, tx: &OutboxSender, target: room_push::Target) {
            self.seq += 1;
            let message =
                room_push::Message::new(ROOM, room_push::Class::Teacher, room_push::Kind(2), vec![1]).to(target);
            let env = room_push::Envelope { epoch: 7, seq: self.seq, accepted_at: room_core::Timestamp::ZERO, message };
            self.node.handle_envelope(room_core::Timestamp::ZERO, &env).expect("handled");
            while let Some(out) = self.node.poll_log() {
                match out {
                    room_push::LogOutput::Append { pos, entry, .. } => {
                        let mut wake = Vec::new();
                        self.log.append(pos, entry, &mut wake);
                        wake.into_iter().for_each(Waker::wake);
                    }
                    room_push::LogOutput::Direct { entry, .. } => tx.direct(entry, tx.log_end()),
                    _ => {}
                }
            }
        }
    }

    fn header(f: Outbound) -> room_push::FrameHeader {
        match f {
            Outbound::Push { header, .. } => header,
            other => panic!("unexpected {other:?}"),
        }
    }

    fn seq_prev(f: Outbound) -> (room_push::FrameKind, u64, u64) {
        let h = header(f);
        (h.kind, h.seq, h.prev)
    }

    #[test]
    fn a_direct_entry_goes_out_at_its_place_among_the_log_entries() {
        use room_push::FrameKind::Message;
        let (mut room, tx, mut rx) = Room::new();
        room.say(&tx);
        room.say_to(&tx, room_push::Target::user(room_core::Uin(1)));
        room.say(&tx);
        room.say_to(&tx, room_push::Target::user(room_core::Uin(2)));
        room.say(&tx);
        assert_eq!(room.log.end(), 3, "the messages for one member are not in the room's log");
        let got: Vec<_> = (0..4).map(|_| seq_prev(rx.try_recv().expect("a frame"))).collect();
        assert_eq!(got, vec![(Message, 1, 0), (Message, 2, 1), (Message, 3, 2), (Message, 5, 3)]);
        assert_eq!(rx.try_recv(), Err(TryRecvError::Empty));
    }

    #[test]
    fn direct_entries_that_do_not_fit_become_one_resync_marker() {
        use room_push::FrameKind::{Message, Resync};
        let (mut room, tx, mut rx) = Room::new();
        // The writer reads nothing while twelve come: eight fit.
        for _ in 0..12 {
            room.say_to(&tx, room_push::Target::user(room_core::Uin(1)));
        }
        room.say(&tx);
        let got: Vec<_> = (0..10).map(|_| seq_prev(rx.try_recv().expect("a frame"))).collect();
        let mut want: Vec<_> = (1..=8).map(|n| (Message, n, n - 1)).collect();
        // The client is told to check up to 12, and the next chains on.
        want.extend([(Resync, 12, 0), (Message, 13, 12)]);
        assert_eq!(got, want);
        assert_eq!(rx.try_recv(), Err(TryRecvError::Empty));
        assert_eq!(rx.shared.state.lock().items.len(), 0, "one marker held the four that did not fit");
    }

    #[test]
    fn a_frame_of_its_own_goes_out_after_the_log_entries_before_it() {
        let (mut room, tx, mut rx) = Room::new();
        room.say(&tx);
        room.say(&tx);
        tx.try_send(frame(99)).expect("queued");
        room.say(&tx);
        let seqs: Vec<(u64, u64)> =
            (0..2).map(|_| header(rx.try_recv().expect("a frame"))).map(|h| (h.seq, h.prev)).collect();
        assert_eq!(seqs, vec![(1, 0), (2, 1)]);
        assert_eq!(rx.try_recv().map(number), Ok(99), "after what the log held when it was queued");
        assert_eq!((header(rx.try_recv().expect("a frame")).seq), 3);
        assert_eq!(rx.try_recv(), Err(TryRecvError::Empty));
        assert_eq!(tx.frames_from_log()[usize::from(room_push::Class::Teacher.code())], 3);
    }

    #[test]
    fn a_writer_behind_what_the_log_keeps_resyncs_at_its_end() {
        let (mut room, tx, mut rx) = Room::new();
        for _ in 0..LOG_ENTRIES + 10 {
            room.say(&tx);
        }
        let marker = header(rx.try_recv().expect("a marker"));
        let newest = (LOG_ENTRIES + 10) as u64;
        assert_eq!((marker.kind, marker.seq, marker.epoch), (room_push::FrameKind::Resync, newest, 7));
        assert_eq!(rx.try_recv(), Err(TryRecvError::Empty), "nothing kept is sent again");
        room.say(&tx);
        let next = header(rx.try_recv().expect("a frame"));
        assert_eq!((next.seq, next.prev), (newest + 1, newest));
        assert_eq!(room.log.lagged.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn a_connection_about_to_follow_keeps_the_entries_it_will_read() {
        let (mut room, tx, rx) = Room::new();
        // The room's one connection here has entered but follows only
        // after this turn's entries are appended (its welcome goes first).
        let log = Arc::new(RoomLog::new(ROOM, Arc::default()));
        log.count_member(true);
        let conn = room
            .node
            .connect(room_push::ConnSpec::new(
                ROOM,
                room_core::Uin(2),
                room_core::Role::Student,
                room_core::Terminal::Web,
            ))
            .expect("connects")
            .conn;
        let (from, follower) = room.node.follow(conn).expect("known");
        room.log = log.clone();
        room.say(&tx);
        room.say(&tx);
        room.say(&tx);
        drop((tx, rx));
        let (tx, mut rx) = outbox(8);
        let tx = tx.in_room(log);
        tx.follow(from, follower);
        let seqs: Vec<u64> = std::iter::from_fn(|| rx.try_recv().ok()).map(|f| header(f).seq).collect();
        assert_eq!(seqs, vec![1, 2, 3], "nothing trimmed before it followed");
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_waiting_writer_is_woken_by_the_log_and_the_log_is_let_go_once_all_wait() {
        let (mut room, tx, mut rx) = Room::new();
        let reader = tokio::spawn(async move {
            let mut got = Vec::new();
            while let Some(f) = rx.recv().await {
                got.push(header(f).seq);
            }
            got
        });
        for _ in 0..3 {
            tokio::task::yield_now().await;
            room.say(&tx);
        }
        tokio::task::yield_now().await;
        room.say(&tx);
        tokio::task::yield_now().await;
        // The writer waited at the end each time: only the newest entry is kept.
        assert_eq!(room.log.kept.read().entries.len(), 1);
        drop(tx);
        assert_eq!(reader.await.expect("reader"), vec![1, 2, 3, 4]);
        assert_eq!(room.log.followers.load(Ordering::Relaxed), 0, "the writer stopped following");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_waiting_writer_gets_every_frame_from_another_thread_in_order() {
        let (tx, mut rx) = outbox(8);
        let sender = std::thread::spawn(move || {
            let mut n = 0;
            while n < 20_000 {
                match tx.try_send(frame(n)) {
                    Ok(()) => n += 1,
                    Err(Refused::Full) => std::thread::yield_now(),
                    Err(Refused::Closed) => panic!("the writer is there"),
                }
            }
        });
        let mut expected = 0;
        while let Some(f) = rx.recv().await {
            assert_eq!(number(f), expected);
            expected += 1;
        }
        sender.join().expect("sender");
        assert_eq!(expected, 20_000);
    }
}
