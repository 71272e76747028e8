//! The gate: where the classroom logic hands messages to push. It checks
//! them (size, target, permissions, mutes, rate limits, degradation),
//! numbers the reliable ones in their room's sequence, keeps the room's
//! sub-class plan, and turns switches (mute-all, levels, sub-class moves)
//! into signal messages.

use std::time::Duration;

use hashbrown::{HashMap, HashSet};
use room_core::{ChurnMap, Role, RoomKey, Timestamp, Uin};

use crate::degrade::Level;
use crate::envelope::Envelope;
use crate::limit::{Decision, KeyedLimiter, LimiterError, Quota};
use crate::message::{Class, Kind, Message, SubclassId, Target, TargetError};
use crate::subclass::{MAX_SUBCLASSES, SubclassError, SubclassPlanner};

/// What the gate enforces.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct GateConfig {
    /// The largest payload accepted.
    pub max_payload: usize,
    /// The largest count one reaction message may carry.
    pub max_reaction_count: u32,
    /// Chat and reactions per user per room.
    pub user_quota: Quota,
    /// Chat per room, all senders together.
    pub room_chat_quota: Quota,
    /// Signal and teacher messages per room (a class's teacher and signals stay under 100 a second).
    pub room_reliable_quota: Quota,
    /// Learners per sub-class.
    pub subclass_size: u32,
    /// Rooms the gate serves.
    pub max_rooms: usize,
    /// Users tracked by the per-user limiter (over all rooms).
    pub max_limited_users: usize,
    /// Above this many members, learners' chat is refused at
    /// [`Level::DropLargeRoomChat`].
    pub large_room: usize,
}

impl Default for GateConfig {
    fn default() -> Self {
        let quota =
            |n, burst| Quota::per_second(n).and_then(|q| q.with_burst(burst)).expect("constant quotas are valid");
        GateConfig {
            max_payload: 16 * 1024,
            max_reaction_count: 1_000,
            user_quota: quota(5, 10),
            room_chat_quota: quota(1_000, 200),
            room_reliable_quota: quota(100, 50),
            subclass_size: 500,
            max_rooms: 100_000,
            max_limited_users: 1_000_000,
            large_room: 5_000,
        }
    }
}

/// Which limit refused a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum LimitScope {
    /// The sender's own limit.
    User,
    /// The room's chat limit.
    RoomChat,
    /// The room's limit on signal and teacher messages.
    RoomReliable,
}

/// Why the gate refused a message or a switch. Nothing is numbered or
/// counted against a limit when a message is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum GateError {
    /// The room was never opened on this gate (or was closed).
    #[error("room {0} is not open")]
    UnknownRoom(RoomKey),
    /// The gate serves `max_rooms` rooms.
    #[error("the gate serves {max} rooms, its maximum")]
    TooManyRooms {
        /// The limit.
        max: usize,
    },
    /// A target that names nobody.
    #[error("bad target: {0}")]
    Target(#[from] TargetError),
    /// A payload over `max_payload`.
    #[error("payload of {size} bytes exceeds the limit of {max}")]
    PayloadTooLarge {
        /// Bytes given.
        size: usize,
        /// The limit.
        max: usize,
    },
    /// A reaction count of 0 or over `max_reaction_count`.
    #[error("reaction count {count} is outside 1..={max}")]
    BadCount {
        /// The count given.
        count: u32,
        /// The limit.
        max: u32,
    },
    /// A reaction aimed at anything but the whole room (reactions are
    /// per-room counters).
    #[error("reactions are counted per room: their target must be the whole room")]
    ReactionTarget,
    /// A kind reserved for Roomkit's own control messages.
    #[error("message kind {0:#06x} is reserved for Roomkit")]
    ReservedKind(u16),
    /// The sender's role may not send this class.
    #[error("a {role} may not send {class:?} messages")]
    NotAllowed {
        /// The sender's role.
        role: Role,
        /// The class.
        class: Class,
    },
    /// The room is muted and the sender is not a teacher or assistant.
    #[error("the room is muted: only teachers and assistants may chat")]
    RoomMuted,
    /// The sender is muted in this room.
    #[error("user {0:?} is muted in this room")]
    UserMuted(Uin),
    /// Over a rate limit.
    #[error("rate limited ({scope:?}); retry after {retry_after:?}")]
    RateLimited {
        /// Which limit.
        scope: LimitScope,
        /// When it would pass.
        retry_after: Duration,
    },
    /// The limiter cannot track the sender (a storm of distinct senders).
    #[error(transparent)]
    Limiter(#[from] LimiterError),
    /// Refused by the degradation level in force.
    #[error("refused at degradation level {level:?}")]
    Degraded {
        /// The level.
        level: Level,
    },
    /// The room cannot place another learner.
    #[error(transparent)]
    Subclass(#[from] SubclassError),
    /// A sequence head no real room reaches (over `u64::MAX / 2`): garbage
    /// read from a cache, refused so numbering can never overflow.
    #[error("sequence head {head} is out of range")]
    BadHead {
        /// The head given.
        head: u64,
    },
    /// Only signal and teacher messages are numbered.
    #[error("{0:?} messages are not numbered")]
    NotSequenced(Class),
    /// A [`FencedGate`](crate::FencedGate) room already has this many
    /// numbered envelopes waiting for the shared cache.
    #[error("{max} numbered messages of the room are waiting for the shared cache")]
    Backlogged {
        /// The limit.
        max: usize,
    },
}

/// Heads above this are garbage: no room numbers 2^63 messages, and
/// refusing them keeps `next_seq + 1` from overflowing.
const MAX_HEAD: u64 = u64::MAX / 2;

fn check_head(head: u64) -> Result<(), GateError> {
    if head > MAX_HEAD {
        return Err(GateError::BadHead { head });
    }
    Ok(())
}

#[derive(Debug)]
struct GateRoom {
    epoch: u64,
    next_seq: u64,
    planner: SubclassPlanner,
    members: ChurnMap<Uin, Role, ahash::RandomState>,
    mute_all: bool,
    muted: HashSet<Uin, ahash::RandomState>,
    chat_tat: u64,
    reliable_tat: u64,
}

/// A learner placed in a room by [`Gate::join`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Joined {
    /// The member's sub-class (`None` for teachers and assistants).
    pub subclass: Option<SubclassId>,
    /// Signals telling moved members (and every push node) about moves
    /// made to keep sub-classes balanced. Publish them on the bus.
    pub moves: Vec<Envelope>,
}

/// The logic side of push. One gate numbers a room's messages: in a
/// cluster, the room's owner runs it.
///
/// Call order: open the room, `join` members (it places learners in
/// sub-classes), `publish` messages (checked, limited, numbered), hand the
/// envelopes to every push node that holds the room's connections.
///
/// ```
/// use room_core::{BusinessId, Role, RoomId, RoomKey, Timestamp, Uin};
/// use room_push::{Class, Gate, GateConfig, GateError, Kind, Message, Sender};
///
/// let room = RoomKey::new(BusinessId(1), RoomId(42));
/// let now = Timestamp::from_millis(1_000);
/// let mut gate = Gate::new(GateConfig::default());
/// gate.open_room(now, room)?;
/// gate.join(now, room, Uin(1), Role::Teacher)?;
/// gate.join(now, room, Uin(7), Role::Student)?;
///
/// let teacher = Sender { uin: Uin(1), role: Role::Teacher };
/// let first = gate.publish(now, Message::new(room, Class::Teacher, Kind(2), &b"hello"[..]).from_sender(teacher))?;
/// let second = gate.publish(now, Message::new(room, Class::Teacher, Kind(2), &b"page 3"[..]).from_sender(teacher))?;
/// assert_eq!((first.seq, second.seq), (1, 2)); // reliable classes are numbered per room
///
/// // A learner may not speak as the teacher.
/// let learner = Sender { uin: Uin(7), role: Role::Student };
/// let refused = gate.publish(now, Message::new(room, Class::Teacher, Kind(2), &b"hi"[..]).from_sender(learner));
/// assert!(matches!(refused, Err(GateError::NotAllowed { .. })));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug)]
pub struct Gate {
    config: GateConfig,
    rooms: HashMap<RoomKey, GateRoom, ahash::RandomState>,
    users: KeyedLimiter<(RoomKey, Uin)>,
    level: Level,
    last_epoch: u64,
    rejections: u64,
}

impl Gate {
    /// A gate with `config`.
    pub fn new(config: GateConfig) -> Self {
        let users = KeyedLimiter::new(config.max_limited_users);
        Gate {
            config,
            rooms: HashMap::with_hasher(ahash::RandomState::new()),
            users,
            level: Level::Normal,
            last_epoch: 0,
            rejections: 0,
        }
    }

    /// The configuration.
    pub fn config(&self) -> &GateConfig {
        &self.config
    }

    /// The level in force.
    pub fn level(&self) -> Level {
        self.level
    }

    /// Messages refused by rate limits so far (a [`Load`](crate::Load) input).
    pub fn rate_rejections(&self) -> u64 {
        self.rejections
    }

    /// Opens a room (idempotent) and returns its sequence epoch. The epoch
    /// is new every time a room is opened on a gate, so numbers from a
    /// previous run are never taken for current ones.
    pub fn open_room(&mut self, now: Timestamp, room: RoomKey) -> Result<u64, GateError> {
        self.open_room_for(now, room, 0)
    }

    /// Opens a room expected to hold `expected_learners`: enough sub-classes
    /// are opened up front that the class fills without moving anyone.
    pub fn open_room_for(&mut self, now: Timestamp, room: RoomKey, expected_learners: usize) -> Result<u64, GateError> {
        if let Some(r) = self.rooms.get(&room) {
            return Ok(r.epoch);
        }
        if self.rooms.len() >= self.config.max_rooms {
            return Err(GateError::TooManyRooms { max: self.config.max_rooms });
        }
        let epoch = now.as_micros().max(self.last_epoch + 1);
        self.last_epoch = epoch;
        let size = self.config.subclass_size.max(1) as usize;
        let planner = SubclassPlanner::with_initial(self.config.subclass_size, expected_learners.div_ceil(size))?;
        self.rooms.insert(
            room,
            GateRoom {
                epoch,
                next_seq: 1,
                planner,
                members: ChurnMap::with_hasher(ahash::RandomState::new()),
                mute_all: false,
                muted: HashSet::with_hasher(ahash::RandomState::new()),
                chat_tat: 0,
                reliable_tat: 0,
            },
        );
        Ok(epoch)
    }

    /// Opens a room continuing a sequence that another gate numbered up to
    /// `(epoch, head)` (read from a [`SharedCache`](crate::SharedCache)
    /// after the room's owner changed), so clients see no restart. If the
    /// room is already open here, its own epoch is kept and returned.
    ///
    /// # Errors
    ///
    /// As [`Gate::open_room_for`], and [`GateError::BadHead`] for a head
    /// over `u64::MAX / 2`; nothing is opened.
    pub fn resume_room(
        &mut self,
        now: Timestamp,
        room: RoomKey,
        expected_learners: usize,
        epoch: u64,
        head: u64,
    ) -> Result<u64, GateError> {
        if let Some(r) = self.rooms.get(&room) {
            return Ok(r.epoch);
        }
        check_head(head)?;
        self.open_room_for(now, room, expected_learners)?;
        self.continue_at(room, epoch, head)?;
        Ok(epoch)
    }

    /// Continues an open room's sequence at `(epoch, head)`: its next number
    /// is `head + 1` in `epoch`. A room's owner does this when the shared
    /// cache shows that another gate numbered the room past it. The room's
    /// plan, members and mutes are kept.
    ///
    /// # Errors
    ///
    /// [`GateError::UnknownRoom`] if the room is not open, and
    /// [`GateError::BadHead`] for a head over `u64::MAX / 2`; nothing
    /// changed.
    pub fn continue_at(&mut self, room: RoomKey, epoch: u64, head: u64) -> Result<(), GateError> {
        let r = self.rooms.get_mut(&room).ok_or(GateError::UnknownRoom(room))?;
        check_head(head)?;
        r.epoch = epoch;
        r.next_seq = head + 1;
        self.last_epoch = self.last_epoch.max(epoch);
        Ok(())
    }

    /// Gives a numbered envelope the room's next number in the room's
    /// current epoch (after [`Gate::continue_at`]): the message and the
    /// time it was accepted are kept.
    ///
    /// # Errors
    ///
    /// [`GateError::UnknownRoom`] if the envelope's room is not open, and
    /// [`GateError::NotSequenced`] for chat and reactions; the envelope is
    /// unchanged.
    pub fn renumber(&mut self, env: &mut Envelope) -> Result<(), GateError> {
        let room = env.message.room;
        let r = self.rooms.get_mut(&room).ok_or(GateError::UnknownRoom(room))?;
        if !env.message.class.is_reliable() {
            return Err(GateError::NotSequenced(env.message.class));
        }
        env.epoch = r.epoch;
        env.seq = r.next_seq;
        r.next_seq += 1;
        Ok(())
    }

    /// Closes a room, forgetting its sequence, plan and mutes.
    pub fn close_room(&mut self, room: RoomKey) -> Result<(), GateError> {
        let r = self.rooms.remove(&room).ok_or(GateError::UnknownRoom(room))?;
        for uin in r.members.keys() {
            self.users.forget(&(room, *uin));
        }
        Ok(())
    }

    /// The room's epoch and newest sequence number.
    pub fn sequence(&self, room: RoomKey) -> Result<(u64, u64), GateError> {
        let r = self.rooms.get(&room).ok_or(GateError::UnknownRoom(room))?;
        Ok((r.epoch, r.next_seq - 1))
    }

    /// Members of a room known to the gate.
    pub fn members(&self, room: RoomKey) -> Result<usize, GateError> {
        Ok(self.rooms.get(&room).ok_or(GateError::UnknownRoom(room))?.members.len())
    }

    /// The sub-class sizes of a room, by id.
    pub fn subclass_sizes(&self, room: RoomKey) -> Result<Vec<u32>, GateError> {
        Ok(self.rooms.get(&room).ok_or(GateError::UnknownRoom(room))?.planner.sizes())
    }

    /// The members of a room with their roles and sub-classes, by uin: with
    /// [`Gate::muted_users`] and [`Gate::is_muted`], what a room's next
    /// owner needs for [`Gate::restore_members`].
    ///
    /// # Errors
    ///
    /// [`GateError::UnknownRoom`] if the room is not open.
    pub fn members_of(&self, room: RoomKey) -> Result<Vec<(Uin, Role, Option<SubclassId>)>, GateError> {
        let r = self.rooms.get(&room).ok_or(GateError::UnknownRoom(room))?;
        let mut out: Vec<_> = r.members.iter().map(|(&uin, &role)| (uin, role, r.planner.subclass_of(uin))).collect();
        out.sort_unstable_by_key(|m| m.0);
        Ok(out)
    }

    /// The users muted one by one in a room, by uin.
    ///
    /// # Errors
    ///
    /// [`GateError::UnknownRoom`] if the room is not open.
    pub fn muted_users(&self, room: RoomKey) -> Result<Vec<Uin>, GateError> {
        let r = self.rooms.get(&room).ok_or(GateError::UnknownRoom(room))?;
        let mut out: Vec<Uin> = r.muted.iter().copied().collect();
        out.sort_unstable();
        Ok(out)
    }

    /// The sub-class of `uin` in `room`; `None` for staff, strangers and
    /// rooms that are not open.
    pub fn subclass_of(&self, room: RoomKey, uin: Uin) -> Option<SubclassId> {
        self.rooms.get(&room)?.planner.subclass_of(uin)
    }

    /// Restores a room's membership side from a snapshot taken by its
    /// previous owner ([`Gate::members_of`], [`Gate::is_muted`],
    /// [`Gate::muted_users`]): staff are placed in no sub-class, learners
    /// at their saved sub-class (opening sub-classes as needed), then the
    /// plan is levelled; learners saved without a sub-class join as usual.
    /// Mute-all and the muted users are set quietly (no signal: the
    /// previous owner announced them). Members already here and not listed
    /// stay.
    ///
    /// Returns the sub-class signals for every member whose sub-class now
    /// differs from what they had: the one they hold here if they were
    /// already a member here, else the saved one. For a snapshot of a
    /// balanced plan restored into a room opened for no more learners than
    /// it holds, that is none.
    ///
    /// # Errors
    ///
    /// [`GateError::UnknownRoom`] if the room is not open, and
    /// [`GateError::Subclass`] if a saved sub-class is not below
    /// [`MAX_SUBCLASSES`] or the learners
    /// would not fit the room; nothing changed.
    pub fn restore_members(
        &mut self,
        now: Timestamp,
        room: RoomKey,
        members: &[(Uin, Role, Option<SubclassId>)],
        mute_all: bool,
        muted: &[Uin],
    ) -> Result<Vec<Envelope>, GateError> {
        let size = u64::from(self.config.subclass_size);
        let r = self.rooms.get_mut(&room).ok_or(GateError::UnknownRoom(room))?;
        // The last entry of a member listed twice wins.
        let mut listed: HashMap<Uin, (Role, Option<SubclassId>), ahash::RandomState> =
            HashMap::with_capacity_and_hasher(members.len(), ahash::RandomState::new());
        for &(uin, role, saved) in members {
            listed.insert(uin, (role, saved));
        }
        // Checked before anything changes, so an error leaves the room as it was.
        let mut learners = r.planner.len() as u64;
        for (uin, &(role, saved)) in &listed {
            if let (false, Some(s)) = (role.is_staff(), saved)
                && usize::from(s.0) >= MAX_SUBCLASSES
            {
                return Err(SubclassError::TooMany { max: MAX_SUBCLASSES }.into());
            }
            match (role.is_staff(), r.planner.subclass_of(*uin).is_some()) {
                (true, true) => learners -= 1,
                (false, false) => learners += 1,
                _ => {}
            }
        }
        if learners > MAX_SUBCLASSES as u64 * size {
            return Err(SubclassError::TooMany { max: MAX_SUBCLASSES }.into());
        }
        let mut had: HashMap<Uin, Option<SubclassId>, ahash::RandomState> =
            HashMap::with_capacity_and_hasher(r.members.len() + listed.len(), ahash::RandomState::new());
        for uin in r.members.keys() {
            had.insert(*uin, r.planner.subclass_of(*uin));
        }
        for (uin, &(_, saved)) in &listed {
            had.entry(*uin).or_insert(saved);
        }
        let mut unplaced = Vec::new();
        for (&uin, &(role, saved)) in &listed {
            r.members.insert(uin, role);
            match (role.is_staff(), saved) {
                (true, _) => {
                    r.planner.leave(uin);
                }
                (false, Some(s)) => r.planner.place(uin, s)?,
                (false, None) => unplaced.push(uin),
            }
        }
        r.planner.level();
        // Joined in uin order, so the same snapshot gives the same plan on
        // any machine.
        unplaced.sort_unstable();
        for uin in unplaced {
            r.planner.join(uin)?;
        }
        r.mute_all = mute_all;
        r.muted = muted.iter().copied().collect();
        let mut moved: Vec<(Uin, Option<SubclassId>)> = had
            .into_iter()
            .filter_map(|(uin, before)| {
                let now_in = r.planner.subclass_of(uin);
                (now_in != before).then_some((uin, now_in))
            })
            .collect();
        moved.sort_unstable_by_key(|m| m.0);
        Ok(self.subclass_signals(now, room, moved))
    }

    /// A member entered: learners are placed in a sub-class; teachers and
    /// assistants see every sub-class and are placed in none.
    pub fn join(&mut self, now: Timestamp, room: RoomKey, uin: Uin, role: Role) -> Result<Joined, GateError> {
        let r = self.rooms.get_mut(&room).ok_or(GateError::UnknownRoom(room))?;
        if role.is_staff() {
            r.members.insert(uin, role);
            // A learner promoted to assistant leaves the sub-class plan.
            let moved: Vec<_> = r.planner.leave(uin).into_iter().map(|m| (m.uin, Some(m.to))).collect();
            return Ok(Joined { subclass: None, moves: self.subclass_signals(now, room, moved) });
        }
        let (subclass, moves) = r.planner.join(uin)?;
        r.members.insert(uin, role);
        let moves = moves.into_iter().map(|m| (m.uin, Some(m.to))).collect();
        Ok(Joined { subclass: Some(subclass), moves: self.subclass_signals(now, room, moves) })
    }

    /// A member left. Returns the signals for any move made to keep the
    /// balance.
    pub fn leave(&mut self, now: Timestamp, room: RoomKey, uin: Uin) -> Result<Vec<Envelope>, GateError> {
        let r = self.rooms.get_mut(&room).ok_or(GateError::UnknownRoom(room))?;
        r.members.remove(&uin);
        r.muted.remove(&uin);
        self.users.forget(&(room, uin));
        let moved: Vec<_> = r.planner.leave(uin).into_iter().map(|m| (m.uin, Some(m.to))).collect();
        Ok(self.subclass_signals(now, room, moved))
    }

    fn subclass_signals(
        &mut self,
        now: Timestamp,
        room: RoomKey,
        moves: Vec<(Uin, Option<SubclassId>)>,
    ) -> Vec<Envelope> {
        moves
            .into_iter()
            .map(|(uin, to)| {
                let mut payload = Vec::with_capacity(10);
                payload.extend_from_slice(&uin.0.to_le_bytes());
                payload.extend_from_slice(&to.map_or(u16::MAX, |s| s.0).to_le_bytes());
                let msg = Message::new(room, Class::Signal, Kind::SUBCLASS, payload).to(Target::user(uin));
                self.sequence_unchecked(now, msg)
            })
            .collect()
    }

    fn sequence_unchecked(&mut self, now: Timestamp, message: Message) -> Envelope {
        let r = self.rooms.get_mut(&message.room).expect("callers checked the room");
        let seq = if message.class.is_reliable() {
            let s = r.next_seq;
            r.next_seq += 1;
            s
        } else {
            0
        };
        Envelope { epoch: r.epoch, seq, accepted_at: now, message }
    }

    /// Switches a room's mute-all; returns the signal announcing it.
    pub fn set_mute_all(&mut self, now: Timestamp, room: RoomKey, on: bool) -> Result<Envelope, GateError> {
        let r = self.rooms.get_mut(&room).ok_or(GateError::UnknownRoom(room))?;
        r.mute_all = on;
        Ok(self.sequence_unchecked(now, Message::new(room, Class::Signal, Kind::MUTE_ALL, vec![u8::from(on)])))
    }

    /// Whether a room is muted.
    pub fn is_muted(&self, room: RoomKey) -> Result<bool, GateError> {
        Ok(self.rooms.get(&room).ok_or(GateError::UnknownRoom(room))?.mute_all)
    }

    /// Mutes or unmutes one user's chat in a room.
    pub fn mute_user(&mut self, room: RoomKey, uin: Uin, on: bool) -> Result<(), GateError> {
        let r = self.rooms.get_mut(&room).ok_or(GateError::UnknownRoom(room))?;
        if on {
            r.muted.insert(uin);
        } else {
            r.muted.remove(&uin);
        }
        Ok(())
    }

    /// Switches the degradation level; returns one signal per open room
    /// (every push node applies the level when it sees the signal). Rooms
    /// come out in key order.
    pub fn set_level(&mut self, now: Timestamp, level: Level) -> Vec<Envelope> {
        if level == self.level {
            return Vec::new();
        }
        self.level = level;
        let mut rooms: Vec<RoomKey> = self.rooms.keys().copied().collect();
        rooms.sort_unstable();
        rooms
            .into_iter()
            .map(|room| {
                self.sequence_unchecked(now, Message::new(room, Class::Signal, Kind::LEVEL, vec![level.code()]))
            })
            .collect()
    }

    /// Numbers a message of the room's own (a signal the logic sends after a
    /// request it already checked and charged: a card opened, a roster): its
    /// target, size and kind are checked, but no rate limit, mute or level
    /// applies, so a flood of requests cannot silence what the room says.
    pub fn publish_system(&mut self, now: Timestamp, message: Message) -> Result<Envelope, GateError> {
        let room = message.room;
        if !self.rooms.contains_key(&room) {
            return Err(GateError::UnknownRoom(room));
        }
        message.target.validate()?;
        if message.payload.len() > self.config.max_payload {
            return Err(GateError::PayloadTooLarge { size: message.payload.len(), max: self.config.max_payload });
        }
        if message.kind.is_reserved() {
            return Err(GateError::ReservedKind(message.kind.0));
        }
        if message.class == Class::Reaction {
            return Err(GateError::NotSequenced(message.class));
        }
        Ok(self.sequence_unchecked(now, message))
    }

    /// The signal telling `uin` (and every push node) its sub-class now (a
    /// member a room's new owner placed afresh).
    pub fn subclass_signal(&mut self, now: Timestamp, room: RoomKey, uin: Uin) -> Result<Envelope, GateError> {
        let r = self.rooms.get(&room).ok_or(GateError::UnknownRoom(room))?;
        let to = r.planner.subclass_of(uin);
        Ok(self.subclass_signals(now, room, vec![(uin, to)]).remove(0))
    }

    /// Checks a message and, if it passes, numbers it: the envelope to
    /// publish on the bus.
    pub fn publish(&mut self, now: Timestamp, mut message: Message) -> Result<Envelope, GateError> {
        let room_key = message.room;
        let config = &self.config;
        let r = self.rooms.get_mut(&room_key).ok_or(GateError::UnknownRoom(room_key))?;
        message.target.validate()?;
        if message.payload.len() > config.max_payload {
            return Err(GateError::PayloadTooLarge { size: message.payload.len(), max: config.max_payload });
        }
        if message.kind.is_reserved() {
            return Err(GateError::ReservedKind(message.kind.0));
        }
        let class = message.class;
        if class == Class::Reaction && !(1..=config.max_reaction_count).contains(&message.count) {
            return Err(GateError::BadCount { count: message.count, max: config.max_reaction_count });
        }
        if class == Class::Reaction && message.target != Target::room() {
            return Err(GateError::ReactionTarget);
        }
        let sender = message.sender;
        let staff = sender.is_none_or(|s| s.role.is_staff());
        if let Some(s) = sender
            && class.is_reliable()
            && !s.role.is_staff()
        {
            return Err(GateError::NotAllowed { role: s.role, class });
        }
        match self.level {
            Level::SignalOnly if class != Class::Signal => return Err(GateError::Degraded { level: self.level }),
            Level::DropLargeRoomChat if class == Class::Chat && !staff && r.members.len() > config.large_room => {
                return Err(GateError::Degraded { level: self.level });
            }
            _ => {}
        }
        if class == Class::Chat
            && let Some(s) = sender
        {
            if r.mute_all && !s.role.is_staff() {
                return Err(GateError::RoomMuted);
            }
            if r.muted.contains(&s.uin) {
                return Err(GateError::UserMuted(s.uin));
            }
        }
        // Room limits are computed first and committed only once the
        // sender's own limit passed too, so a refused message costs nothing.
        let room_step = match class {
            Class::Chat => Some((config.room_chat_quota.step(r.chat_tat, now, 1), LimitScope::RoomChat)),
            Class::Signal | Class::Teacher => {
                Some((config.room_reliable_quota.step(r.reliable_tat, now, 1), LimitScope::RoomReliable))
            }
            _ => None,
        };
        if let Some((Err(retry_after), scope)) = room_step {
            self.rejections += 1;
            return Err(GateError::RateLimited { scope, retry_after });
        }
        if let (Some(s), Class::Chat | Class::Reaction) = (sender, class) {
            match self.users.check((room_key, s.uin), config.user_quota, now, 1)? {
                Decision::Allowed => {}
                Decision::Limited { retry_after } => {
                    self.rejections += 1;
                    return Err(GateError::RateLimited { scope: LimitScope::User, retry_after });
                }
            }
        }
        if let Some((Ok(tat), scope)) = room_step {
            match scope {
                LimitScope::RoomChat => r.chat_tat = tat,
                _ => r.reliable_tat = tat,
            }
        }
        // A learner's chat to the room stays in the learner's sub-class.
        if class == Class::Chat
            && message.target.is_plain_audience()
            && message.target.subclass.is_none()
            && let Some(s) = sender.and_then(|s| r.planner.subclass_of(s.uin))
        {
            message.target.subclass = Some(s);
        }
        Ok(self.sequence_unchecked(now, message))
    }
}
