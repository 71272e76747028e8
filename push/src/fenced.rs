//! A room owner's gate in a cluster, fenced by the shared cache.
//!
//! In a cluster each room's messages are numbered by the gate of the node
//! that owns the room. Ownership moves when nodes come and go, and for a
//! moment two nodes may both believe they own a room. [`FencedGate`] makes
//! that harmless:
//!
//! * a room is opened at the shared cache's head, in the same epoch, so a
//!   new owner continues the sequence and clients see no restart;
//! * every numbered envelope is appended to the cache before it may be
//!   published, and the cache refuses a number at or below its newest: of
//!   two owners numbering at once, one is refused, continues at the new
//!   head and numbers its waiting envelopes again. A number is never
//!   published for two different messages.
//!
//! Chat and reactions are not numbered and pass straight through. A cache
//! that is unreachable cannot fence: the gate then numbers on its own
//! (what a cache's local fallback reports as [`Appended::Local`]), which is
//! correct while one node owns the room.
//!
//! The gate is sans-IO: it never awaits the cache. It asks for appends and
//! head reads through [`FencedGate::poll_output`], and its host feeds the
//! answers back ([`FencedGate::handle_appended`],
//! [`FencedGate::handle_head`]). Each room has one append in flight and a
//! bounded queue of numbered envelopes behind it, so its numbers reach the
//! cache, and then the bus, in order.

use std::collections::VecDeque;

use hashbrown::HashMap;
use room_core::{Role, RoomKey, Timestamp, Uin};

use crate::degrade::Level;
use crate::envelope::Envelope;
use crate::gate::{Gate, GateConfig, GateError};
use crate::message::{Message, SubclassId};
use crate::shared_cache::{Appended, SharedCacheError};

/// How many times in a row the cache may refuse a room's numbers (or fail
/// to tell its head) before the gate gives the room up
/// ([`FenceOutput::Fenced`]).
pub const FENCE_ATTEMPTS: u32 = 3;

/// What the host of a [`FencedGate`] must do next.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum FenceOutput {
    /// Append the envelopes, numbered in a row, to the shared cache as one
    /// write ([`SharedCache::append_batch`](crate::SharedCache::append_batch)),
    /// then give the answer to [`FencedGate::handle_appended`] with the
    /// first one's number. Never publish them before.
    Append(Vec<Envelope>),
    /// Publish the envelope on the bus: the cache took it (or could not
    /// fence it), or it is chat or a reaction.
    Publish(Envelope),
    /// Read the room's head ([`SharedCache::head`](crate::SharedCache::head))
    /// and give the answer to [`FencedGate::handle_head`]: another gate
    /// numbered the room, and this one must continue after it.
    ReadHead(RoomKey),
    /// Another gate kept taking the room's numbers ([`FENCE_ATTEMPTS`]
    /// refusals in a row, or as many head reads that failed): the room is
    /// released, and `dropped` were numbered but never published (the
    /// host may hand them to the room's owner).
    Fenced {
        /// The room given up.
        room: RoomKey,
        /// Its numbered envelopes, in order, none of them published.
        dropped: Vec<Envelope>,
    },
}

#[derive(Debug, Default)]
struct FencedRoom {
    /// The lowest epoch a fresh sequence of this room may take.
    floor: u64,
    /// Appended as one write, its answer awaited (or refused, while
    /// `reading`); empty when nothing is in flight.
    in_flight: Vec<Envelope>,
    /// Numbered, waiting for the append in flight.
    queue: VecDeque<Envelope>,
    /// A head read is awaited: nothing is appended until it comes.
    reading: bool,
    /// Refusals in a row.
    refusals: u32,
    /// Failed head reads in a row.
    failed_reads: u32,
}

/// The gate of the rooms one node owns, fenced by the shared cache. See
/// the [module docs](self).
///
/// # Call order
///
/// 1. Read the room's head from the shared cache and
///    [`open`](Self::open) the room with it (or with `None` if the cache
///    holds nothing or cannot answer).
/// 2. Feed the room's traffic: [`publish`](Self::publish),
///    [`join`](Self::join), [`leave`](Self::leave),
///    [`set_mute_all`](Self::set_mute_all), [`set_level`](Self::set_level),
///    [`restore_members`](Self::restore_members).
/// 3. After every call, drain [`poll_output`](Self::poll_output) until it
///    answers `None`: [`Append`](FenceOutput::Append) to the cache and
///    answer exactly once with [`handle_appended`](Self::handle_appended)
///    (a timeout is an answer: `Err`);
///    [`ReadHead`](FenceOutput::ReadHead) and answer with
///    [`handle_head`](Self::handle_head); [`Publish`](FenceOutput::Publish)
///    on the bus, in the order given; [`Fenced`](FenceOutput::Fenced): the
///    room is released. Answers may come late and interleaved with new
///    traffic; answers for a room released or renumbered since are
///    ignored.
/// 4. When the node no longer owns a room, [`release`](Self::release) it.
///
/// ```
/// use room_core::{BusinessId, RoomId, RoomKey, Timestamp};
/// use room_push::{Class, FenceOutput, FencedGate, GateConfig, InMemorySharedCache, Kind, Message};
///
/// let room = RoomKey::new(BusinessId(1), RoomId(2));
/// let now = Timestamp::from_millis(1_000);
/// let cache = InMemorySharedCache::default();
/// let mut gate = FencedGate::new(GateConfig::default());
/// gate.open(now, room, cache.head_now(room), 0, 0)?;
/// gate.publish(now, Message::new(room, Class::Signal, Kind(1), &b"page 3"[..]))?;
/// let mut published = Vec::new();
/// while let Some(out) = gate.poll_output() {
///     match out {
///         FenceOutput::Append(batch) => {
///             let answer = cache.append_batch_now(&batch); // awaited, in a real host
///             gate.handle_appended(now, room, batch[0].epoch, batch[0].seq, answer);
///         }
///         FenceOutput::ReadHead(room) => gate.handle_head(now, room, Ok(cache.head_now(room))),
///         FenceOutput::Publish(env) => published.push(env), // on the bus
///         _ => {}
///     }
/// }
/// assert_eq!(published[0].seq, 1);
/// # Ok::<(), room_push::GateError>(())
/// ```
#[derive(Debug)]
pub struct FencedGate {
    gate: Gate,
    rooms: HashMap<RoomKey, FencedRoom, ahash::RandomState>,
    /// The append that was in flight when a room was released, until its
    /// answer comes: a reopened room appends nothing before that, so an
    /// answer always names one envelope.
    unanswered: HashMap<RoomKey, (u64, u64), ahash::RandomState>,
    out: VecDeque<FenceOutput>,
    max_queued: usize,
    max_batch: usize,
    renumbered: u64,
}

impl FencedGate {
    /// Numbered envelopes a room may have waiting behind its append in
    /// flight unless [`with_max_queued`](Self::with_max_queued) says
    /// otherwise.
    pub const DEFAULT_MAX_QUEUED: usize = 256;

    /// Numbered envelopes appended as one write at most, unless
    /// [`with_max_batch`](Self::with_max_batch) says otherwise: a room's
    /// burst costs one round trip to the cache per batch, not per message.
    pub const DEFAULT_MAX_BATCH: usize = 64;

    /// A gate with `config`.
    pub fn new(config: GateConfig) -> Self {
        FencedGate {
            gate: Gate::new(config),
            rooms: HashMap::with_hasher(ahash::RandomState::new()),
            unanswered: HashMap::with_hasher(ahash::RandomState::new()),
            out: VecDeque::new(),
            max_queued: Self::DEFAULT_MAX_QUEUED,
            max_batch: Self::DEFAULT_MAX_BATCH,
            renumbered: 0,
        }
    }

    /// With at most `max` envelopes (at least one) appended as one write.
    pub fn with_max_batch(mut self, max: usize) -> Self {
        self.max_batch = max.max(1);
        self
    }

    /// With at most `max` numbered envelopes waiting per room (at least
    /// one) before [`publish`](Self::publish) refuses more.
    pub fn with_max_queued(mut self, max: usize) -> Self {
        self.max_queued = max.max(1);
        self
    }

    /// The inner gate.
    pub fn gate(&self) -> &Gate {
        &self.gate
    }

    /// The inner gate, for reads and quiet changes (mutes of one user).
    /// Anything that numbers must go through the fenced gate's own
    /// methods: a number taken on the inner gate directly is never
    /// appended, and rooms opened on it directly are not fenced.
    pub fn gate_mut(&mut self) -> &mut Gate {
        &mut self.gate
    }

    /// Whether `room` is open here.
    pub fn is_open(&self, room: RoomKey) -> bool {
        self.rooms.contains_key(&room)
    }

    /// Numbered envelopes of `room` waiting behind its append in flight.
    pub fn queued(&self, room: RoomKey) -> usize {
        self.rooms.get(&room).map_or(0, |r| r.queue.len())
    }

    /// Envelopes numbered again after the cache refused their number.
    pub fn renumbered(&self) -> u64 {
        self.renumbered
    }

    /// Opens `room` where the shared cache says its sequence is.
    ///
    /// * `head`: the cache's newest `(epoch, seq)` for the room. The room
    ///   continues it: same epoch, next number `seq + 1`.
    /// * With no head (a new room, an expired one, an unreachable cache),
    ///   or a head in an epoch older than the one the push side follows
    ///   (`epoch_floor - 1`; push nodes ignore older epochs), a fresh epoch
    ///   of at least `epoch_floor` and `now`.
    /// * `expected_learners`: sub-classes are opened for that many up front.
    ///
    /// A room already open keeps its sequence. Returns the room's epoch.
    ///
    /// # Errors
    ///
    /// [`GateError::TooManyRooms`], [`GateError::Subclass`] for too many
    /// expected learners, [`GateError::BadHead`] for a head over
    /// `u64::MAX / 2` (garbage: open with `None` instead); nothing opened.
    pub fn open(
        &mut self,
        now: Timestamp,
        room: RoomKey,
        head: Option<(u64, u64)>,
        epoch_floor: u64,
        expected_learners: usize,
    ) -> Result<u64, GateError> {
        if self.rooms.contains_key(&room) {
            return self.gate.sequence(room).map(|(epoch, _)| epoch);
        }
        let epoch = match head.filter(|&(epoch, _)| epoch.saturating_add(1) >= epoch_floor) {
            Some((epoch, seq)) => self.gate.resume_room(now, room, expected_learners, epoch, seq)?,
            None => {
                let start = Timestamp::from_micros(now.as_micros().max(epoch_floor));
                self.gate.open_room_for(start, room, expected_learners)?
            }
        };
        self.rooms.insert(room, FencedRoom { floor: epoch_floor, ..FencedRoom::default() });
        Ok(epoch)
    }

    /// Forgets `room` (this node no longer owns it): if it comes back, it
    /// is opened at the cache's head again. Outputs not yet polled that
    /// ask for the room's append or head are withdrawn; what the cache
    /// already took stays to be published.
    ///
    /// Returns the room's numbered envelopes that were never published, in
    /// order. The first may have been in flight: if the cache took it, its
    /// number is its own (push nodes refill it from the cache), so a host
    /// that hands these on to the room's next owner should keep their
    /// [`origin`](Message::origin), by which the next owner can recognise
    /// it in the cache's tail.
    pub fn release(&mut self, room: RoomKey) -> Vec<Envelope> {
        let Some(r) = self.rooms.remove(&room) else { return Vec::new() };
        let _ = self.gate.close_room(room);
        let before = self.out.len();
        self.out.retain(|o| match o {
            FenceOutput::Append(batch) => batch.first().is_none_or(|e| e.message.room != room),
            FenceOutput::ReadHead(r) => *r != room,
            _ => true,
        });
        let withdrawn = self.out.len() != before;
        if let Some(e) = r.in_flight.first()
            && !r.reading
            && !withdrawn
        {
            self.unanswered.insert(room, (e.epoch, e.seq));
        }
        r.in_flight.into_iter().chain(r.queue).collect()
    }

    /// Checks a message as [`Gate::publish`] does. Chat and reactions come
    /// out as [`FenceOutput::Publish`] at once; signal and teacher
    /// messages are numbered and queued, and come out as
    /// [`FenceOutput::Append`] when their turn comes.
    ///
    /// # Errors
    ///
    /// [`GateError::UnknownRoom`] if the room is not open here,
    /// [`GateError::Backlogged`] for a numbered message while the room has
    /// its maximum waiting, and every refusal of [`Gate::publish`]. Nothing
    /// is numbered or counted against a limit when a message is refused.
    pub fn publish(&mut self, now: Timestamp, message: Message) -> Result<(), GateError> {
        let room = message.room;
        let r = self.rooms.get(&room).ok_or(GateError::UnknownRoom(room))?;
        if message.class.is_reliable() && r.queue.len() >= self.max_queued {
            return Err(GateError::Backlogged { max: self.max_queued });
        }
        let env = self.gate.publish(now, message)?;
        self.route(env);
        Ok(())
    }

    /// Numbers a message of the room's own, as [`Gate::publish_system`]
    /// (no rate limit, mute or level), behind the room's queue. Never
    /// refused for the backlog: the change it announces has happened.
    ///
    /// # Errors
    ///
    /// [`GateError::UnknownRoom`] if the room is not open here, and the
    /// refusals of [`Gate::publish_system`]; nothing was numbered.
    pub fn publish_system(&mut self, now: Timestamp, message: Message) -> Result<(), GateError> {
        self.check_open(message.room)?;
        let env = self.gate.publish_system(now, message)?;
        self.route(env);
        Ok(())
    }

    /// Tells `uin` its sub-class again ([`Gate::subclass_signal`]), behind
    /// the room's queue.
    ///
    /// # Errors
    ///
    /// [`GateError::UnknownRoom`] if the room is not open here.
    pub fn announce_subclass(&mut self, now: Timestamp, room: RoomKey, uin: Uin) -> Result<(), GateError> {
        self.check_open(room)?;
        let env = self.gate.subclass_signal(now, room, uin)?;
        self.route(env);
        Ok(())
    }

    /// Whether nothing of `room` waits for the cache (no append or head
    /// read in flight, nothing queued): it can be let go without losing a
    /// numbered message.
    pub fn is_idle(&self, room: RoomKey) -> bool {
        !self.unanswered.contains_key(&room)
            && self.rooms.get(&room).is_none_or(|r| r.in_flight.is_empty() && r.queue.is_empty() && !r.reading)
    }

    /// A member entered, as [`Gate::join`]; the signals for members moved
    /// to keep the balance go through the room's queue. Never refused for
    /// the backlog: the member is here, and its signals must follow.
    /// Returns the member's sub-class (`None` for staff).
    ///
    /// # Errors
    ///
    /// [`GateError::UnknownRoom`] if the room is not open here, and
    /// [`GateError::Subclass`] when the room cannot place another learner;
    /// nothing changed.
    pub fn join(
        &mut self,
        now: Timestamp,
        room: RoomKey,
        uin: Uin,
        role: Role,
    ) -> Result<Option<SubclassId>, GateError> {
        self.check_open(room)?;
        let joined = self.gate.join(now, room, uin, role)?;
        self.route_all(joined.moves);
        Ok(joined.subclass)
    }

    /// A member left, as [`Gate::leave`]; the signals for moves go through
    /// the room's queue.
    ///
    /// # Errors
    ///
    /// [`GateError::UnknownRoom`] if the room is not open here.
    pub fn leave(&mut self, now: Timestamp, room: RoomKey, uin: Uin) -> Result<(), GateError> {
        self.check_open(room)?;
        let moves = self.gate.leave(now, room, uin)?;
        self.route_all(moves);
        Ok(())
    }

    /// Switches the room's mute-all, as [`Gate::set_mute_all`]; the signal
    /// goes through the room's queue.
    ///
    /// # Errors
    ///
    /// [`GateError::UnknownRoom`] if the room is not open here, and
    /// [`GateError::Backlogged`] while the room has its maximum waiting;
    /// nothing changed.
    pub fn set_mute_all(&mut self, now: Timestamp, room: RoomKey, on: bool) -> Result<(), GateError> {
        let r = self.rooms.get(&room).ok_or(GateError::UnknownRoom(room))?;
        if r.queue.len() >= self.max_queued {
            return Err(GateError::Backlogged { max: self.max_queued });
        }
        let signal = self.gate.set_mute_all(now, room, on)?;
        self.route(signal);
        Ok(())
    }

    /// Mutes or unmutes one user's chat in a room, as [`Gate::mute_user`]
    /// (no signal).
    ///
    /// # Errors
    ///
    /// [`GateError::UnknownRoom`] if the room is not open here.
    pub fn mute_user(&mut self, room: RoomKey, uin: Uin, on: bool) -> Result<(), GateError> {
        self.check_open(room)?;
        self.gate.mute_user(room, uin, on)
    }

    /// Switches the degradation level, as [`Gate::set_level`]; each room's
    /// signal goes through its queue.
    pub fn set_level(&mut self, now: Timestamp, level: Level) {
        let signals = self.gate.set_level(now, level);
        self.route_all(signals);
    }

    /// Restores the room's membership side from its previous owner's
    /// snapshot, as [`Gate::restore_members`]; the signals for members
    /// whose sub-class changed go through the room's queue.
    ///
    /// # Errors
    ///
    /// As [`Gate::restore_members`]; nothing changed.
    pub fn restore_members(
        &mut self,
        now: Timestamp,
        room: RoomKey,
        members: &[(Uin, Role, Option<SubclassId>)],
        mute_all: bool,
        muted: &[Uin],
    ) -> Result<(), GateError> {
        self.check_open(room)?;
        let signals = self.gate.restore_members(now, room, members, mute_all, muted)?;
        self.route_all(signals);
        Ok(())
    }

    /// The cache's answer to [`FenceOutput::Append`] of the batch whose
    /// first envelope is numbered `(epoch, seq)` in `room`:
    ///
    /// * stored, held locally, or an error (an unreachable cache cannot
    ///   fence: the gate numbers on its own): the envelope comes out as
    ///   [`FenceOutput::Publish`], and the room's next one as
    ///   [`FenceOutput::Append`];
    /// * [`Appended::Duplicate`]: another gate numbered the room. The room
    ///   holds its queue and asks for its head ([`FenceOutput::ReadHead`]),
    ///   or after [`FENCE_ATTEMPTS`] refusals in a row gives the room up
    ///   ([`FenceOutput::Fenced`]).
    ///
    /// An answer for an envelope that is not the room's append in flight
    /// (the room was released or renumbered since) is ignored.
    pub fn handle_appended(
        &mut self,
        _now: Timestamp,
        room: RoomKey,
        epoch: u64,
        seq: u64,
        result: Result<Appended, SharedCacheError>,
    ) {
        if self.unanswered.get(&room) == Some(&(epoch, seq)) {
            // The last append of an earlier opening: the room may go on.
            self.unanswered.remove(&room);
            self.pump(room);
            return;
        }
        let Some(r) = self.rooms.get_mut(&room) else { return };
        if r.reading || r.in_flight.first().is_none_or(|e| (e.epoch, e.seq) != (epoch, seq)) {
            return;
        }
        match result {
            Ok(Appended::Duplicate) => {
                r.refusals += 1;
                if r.refusals >= FENCE_ATTEMPTS {
                    self.fence(room);
                } else {
                    r.reading = true;
                    r.failed_reads = 0;
                    self.out.push_back(FenceOutput::ReadHead(room));
                }
            }
            Ok(_) | Err(_) => {
                r.refusals = 0;
                for env in std::mem::take(&mut r.in_flight) {
                    self.out.push_back(FenceOutput::Publish(env));
                }
                self.pump(room);
            }
        }
    }

    /// The cache's answer to [`FenceOutput::ReadHead`]. The room continues
    /// after the head ([`Gate::continue_at`]), numbers its envelope in
    /// flight and its queue again in order ([`Gate::renumber`]), and
    /// resumes appending. A head that does not cover the refused number
    /// (none, or older: the cache lost what it held) cannot be continued
    /// safely, so the room takes a fresh epoch above every one it saw.
    /// A read that failed is asked again, up to [`FENCE_ATTEMPTS`] in a
    /// row, then the room is given up ([`FenceOutput::Fenced`]).
    ///
    /// Ignored unless the room is waiting for its head.
    pub fn handle_head(&mut self, now: Timestamp, room: RoomKey, head: Result<Option<(u64, u64)>, SharedCacheError>) {
        let Some(r) = self.rooms.get_mut(&room) else { return };
        if !r.reading {
            return;
        }
        let head = match head {
            Ok(head) => head,
            Err(_) => {
                r.failed_reads += 1;
                if r.failed_reads >= FENCE_ATTEMPTS {
                    self.fence(room);
                } else {
                    self.out.push_back(FenceOutput::ReadHead(room));
                }
                return;
            }
        };
        r.reading = false;
        r.failed_reads = 0;
        let mut waiting: VecDeque<Envelope> =
            std::mem::take(&mut r.in_flight).into_iter().chain(r.queue.drain(..)).collect();
        let refused = waiting.front().map_or((0, 0), |e| (e.epoch, e.seq));
        let covered = head.filter(|&h| h >= refused);
        let continued = covered.is_some_and(|(epoch, seq)| self.gate.continue_at(room, epoch, seq).is_ok());
        if !continued {
            let current = self.gate.sequence(room).map_or(0, |(epoch, _)| epoch);
            let fresh = now
                .as_micros()
                .max(current.saturating_add(1))
                .max(head.map_or(0, |(epoch, _)| epoch.saturating_add(1)))
                .max(r.floor);
            if self.gate.continue_at(room, fresh, 0).is_err() {
                // Unreachable while the room is open: give it up rather
                // than publish a number the cache did not take.
                r.queue = waiting;
                self.fence(room);
                return;
            }
        }
        for env in &mut waiting {
            // Cannot fail: the room is open and only numbered envelopes wait.
            let _ = self.gate.renumber(env);
        }
        self.renumbered += waiting.len() as u64;
        r.queue = waiting;
        self.pump(room);
    }

    /// The next thing the host must do, if any. Drain it after every call.
    #[must_use]
    pub fn poll_output(&mut self) -> Option<FenceOutput> {
        self.out.pop_front()
    }

    fn check_open(&self, room: RoomKey) -> Result<(), GateError> {
        if self.rooms.contains_key(&room) { Ok(()) } else { Err(GateError::UnknownRoom(room)) }
    }

    fn route_all(&mut self, envelopes: Vec<Envelope>) {
        for env in envelopes {
            self.route(env);
        }
    }

    /// Chat straight out; numbered envelopes behind the room's append.
    fn route(&mut self, env: Envelope) {
        let room = env.message.room;
        match self.rooms.get_mut(&room) {
            Some(r) if env.seq > 0 => {
                r.queue.push_back(env);
                self.pump(room);
            }
            // Chat, or a room opened on the inner gate directly (not fenced).
            _ => self.out.push_back(FenceOutput::Publish(env)),
        }
    }

    /// Appends the room's next envelope if nothing holds it.
    fn pump(&mut self, room: RoomKey) {
        if self.unanswered.contains_key(&room) {
            return;
        }
        let Some(r) = self.rooms.get_mut(&room) else { return };
        if !r.in_flight.is_empty() || r.reading || r.queue.is_empty() {
            return;
        }
        let n = r.queue.len().min(self.max_batch);
        r.in_flight = r.queue.drain(..n).collect();
        self.out.push_back(FenceOutput::Append(r.in_flight.clone()));
    }

    fn fence(&mut self, room: RoomKey) {
        let Some(r) = self.rooms.remove(&room) else { return };
        let _ = self.gate.close_room(room);
        let dropped = r.in_flight.into_iter().chain(r.queue).collect();
        self.out.push_back(FenceOutput::Fenced { room, dropped });
    }
}
