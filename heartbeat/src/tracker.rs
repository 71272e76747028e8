//! The session tracker: which connections are alive on one heartbeat server.
//!
//! # Model
//!
//! A *session* is one member on one terminal: `(member key, terminal)`,
//! currently reached through one connection ([`ConnId`]). A member may hold
//! sessions on several terminals; it **enters** when its first session
//! starts and **exits** when its last one ends.
//!
//! A session that has not beaten for its timeout (by default 3 intervals of
//! 20 s, configurable per business) becomes a [`Suspect`]. A suspect is not
//! gone: the host asks the access layer whether the connection is really
//! closed (the reverse check) and answers with [`Tracker::confirm_gone`] or
//! [`Tracker::confirm_alive`]. A beat that arrives meanwhile clears the
//! suspicion. Only a confirmed suspect exits, with [`ExitReason::TimedOut`].
//!
//! # Design
//!
//! * Records live in a chunked slab (4,096 records a chunk, so growth never
//!   copies the table and its slack stays under one chunk), found through a
//!   `hashbrown` table of 4-byte slot numbers keyed by (member, terminal).
//!   A record is 36 bytes: key, connection, a 16-bit wrapping last-seen tick,
//!   terminal, flags and an intrusive list link.
//! * Expiry is a timing wheel of coarse ticks (default 1 s) whose buckets are
//!   intrusive lists threaded through the records. A beat only stamps the
//!   record (O(1), no allocation, no relinking); when a session's bucket
//!   comes due its stamp is re-checked and it is either suspected or moved
//!   to the bucket of its real deadline. Sessions that leave are unlinked
//!   lazily: their slot is reclaimed when their bucket comes due.
//! * [`Tracker::handle_timeout`] processes at most
//!   [`TrackerConfig::sweep_batch`] records a call, so no call does
//!   unbounded work; [`Tracker::poll_timeout`] says "now" while a due bucket
//!   is unfinished.
//! * Joins and beats return a [`SessionHint`] (the slot number). A host that
//!   sends it back with the next beat skips the hash lookup; a stale or
//!   foreign hint (after failover, say) is detected and ignored.
//!
//! # Bad input and odd clocks
//!
//! | input | behaviour |
//! | --- | --- |
//! | beat for a session this tracker does not know | adopted without an *entered* event (it is a failover from another server; hosts send [`Tracker::join`] on connect) |
//! | join for a known session | a refresh (joins are idempotent) |
//! | beat or join with a new connection id | the session now follows the newest connection |
//! | leave with an old connection id | ignored ([`LeaveOutcome::StaleConnection`]): a reordered close of a replaced connection must not end the new one |
//! | beat delayed past its own leave | ignored ([`BeatOutcome::ClosedConnection`]): closed connections are remembered (at most [`TrackerConfig::closed_memory`] of them, each for `max_timeout`), so a late beat cannot resurrect a session and cause a second exit |
//! | a storm of joins (60,000 in a second) | each is O(1); memory grows by one record each, up to [`TrackerConfig::max_sessions`]; the event queue shrinks back once drained |
//! | leave for an unknown session, or a repeated leave | [`LeaveOutcome::Unknown`], nothing changes |
//! | beats duplicated or reordered | each is a refresh; the stamp never moves backwards |
//! | `now` earlier than a previous `now` | treated as the latest time seen: the tracker's clock never runs backwards |
//! | more sessions than [`TrackerConfig::max_sessions`] (a join storm) | [`TrackError::Full`]; existing sessions are untouched |
//! | a stale [`SessionHint`] | ignored; the beat falls back to the keyed lookup |
//! | the host not driving `handle_timeout` for a long time | catches up in bounded batches; every session is re-checked against the current time |
//!
//! Unknown business ids are fine: they use the default timing.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fmt;
use std::time::Duration;

use hashbrown::HashTable;
use room_core::{
    BusinessId, ExitReason, Flag, MemberChange, MemberEvent, MemberKey, RoomId, Terminal, TerminalSet, Timestamp, Uin,
};

/// A connection at the access layer: room-core's [`ConnId`],
/// the same id the push layer gives the connection.
pub use room_core::ConnId;

/// Where a session lives in the tracker. Echo it back with the next beat to
/// skip a hash lookup; any value is safe to send (a wrong one is ignored).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SessionHint(u32);

impl SessionHint {
    /// No hint: the beat is found by its key.
    pub const NONE: SessionHint = SessionHint(NIL);

    /// The hint as an integer, for the wire.
    pub const fn to_bits(self) -> u32 {
        self.0
    }

    /// A hint received from the wire.
    pub const fn from_bits(bits: u32) -> SessionHint {
        SessionHint(bits)
    }
}

/// How often a business's clients beat and how many beats may be missed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timing {
    interval: Duration,
    misses: u32,
}

impl Timing {
    /// A beat every 20 s; a session is suspect after 3 missed beats (60 s).
    pub const DEFAULT: Timing = Timing { interval: Duration::from_secs(20), misses: 3 };

    /// A beat every `interval`; suspect after `misses` silent intervals.
    pub fn new(interval: Duration, misses: u32) -> Result<Timing, ConfigError> {
        if interval.is_zero() {
            return Err(ConfigError::ZeroInterval);
        }
        if misses == 0 {
            return Err(ConfigError::ZeroMisses);
        }
        if interval.checked_mul(misses).is_none() {
            return Err(ConfigError::TimeoutOverflow);
        }
        Ok(Timing { interval, misses })
    }

    /// The beat interval.
    pub fn interval(&self) -> Duration {
        self.interval
    }

    /// Silence after which a session is suspect: `interval x misses`.
    pub fn timeout(&self) -> Duration {
        self.interval.saturating_mul(self.misses)
    }
}

impl Default for Timing {
    fn default() -> Self {
        Timing::DEFAULT
    }
}

/// Tracker settings. Start from [`TrackerConfig::default`] and adjust.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct TrackerConfig {
    /// Expiry granularity (default 1 s). Suspicion comes at most one tick
    /// late. Tests use milliseconds.
    pub tick: Duration,
    /// The longest timeout any business may use (default 10 min); sizes the
    /// wheel. At most 16,384 ticks.
    pub max_timeout: Duration,
    /// Timing of businesses without one of their own.
    pub default_timing: Timing,
    /// Timing per business.
    pub timings: BTreeMap<BusinessId, Timing>,
    /// The most sessions tracked at once (default 20 million); joins beyond
    /// it are refused, so memory stays bounded in a storm.
    pub max_sessions: usize,
    /// The most records one [`Tracker::handle_timeout`] call examines
    /// (default 4,096).
    pub sweep_batch: usize,
    /// How many recently closed connections are remembered (default
    /// 65,536), each for `max_timeout`, so that a beat delayed past its own
    /// leave does not bring the session back.
    pub closed_memory: usize,
    /// The most suspects waiting for [`Tracker::poll_suspect`] (default
    /// 65,536). Sweeping pauses while the queue is full, so a mass timeout
    /// (an access node dying) neither grows memory nor stalls a call; the
    /// queue is allocated once, up front.
    pub max_pending_suspects: usize,
}

impl Default for TrackerConfig {
    fn default() -> Self {
        TrackerConfig {
            tick: Duration::from_secs(1),
            max_timeout: Duration::from_secs(600),
            default_timing: Timing::DEFAULT,
            timings: BTreeMap::new(),
            max_sessions: 20_000_000,
            sweep_batch: 4_096,
            max_pending_suspects: 65_536,
            closed_memory: 65_536,
        }
    }
}

/// The largest wheel span in ticks. With 16-bit stamps, a session's age is
/// unambiguous while it is re-checked within 2^15 ticks; the wheel visits
/// every bucket at least that often.
const MAX_TIMEOUT_TICKS: u64 = 1 << 14;
/// Slots are `u32` with `NIL` reserved.
const MAX_SESSIONS: usize = 1 << 31;

/// A configuration the tracker refuses.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// A beat interval of zero.
    #[error("beat interval must be positive")]
    ZeroInterval,
    /// Zero missed beats allowed.
    #[error("misses must be at least 1")]
    ZeroMisses,
    /// `interval x misses` overflows.
    #[error("interval x misses overflows")]
    TimeoutOverflow,
    /// A tick of zero.
    #[error("tick must be positive")]
    ZeroTick,
    /// `max_timeout` spans more ticks than the wheel allows.
    #[error("max timeout is {ticks} ticks; at most {max} ticks are allowed (raise the tick)")]
    WheelTooLong {
        /// The span asked for.
        ticks: u64,
        /// The limit.
        max: u64,
    },
    /// A business's timeout exceeds `max_timeout`.
    #[error("timeout {timeout:?} of business {bid:?} exceeds max_timeout {max_timeout:?}")]
    TimeoutTooLong {
        /// The business (`None` for the default timing).
        bid: Option<BusinessId>,
        /// Its timeout.
        timeout: Duration,
        /// The configured maximum.
        max_timeout: Duration,
    },
    /// `max_sessions` of zero or above 2^31.
    #[error("max_sessions {0} is outside 1..=2^31")]
    MaxSessions(usize),
    /// `sweep_batch` of zero.
    #[error("sweep_batch must be positive")]
    ZeroSweepBatch,
    /// `max_pending_suspects` of zero.
    #[error("max_pending_suspects must be positive")]
    ZeroPendingSuspects,
}

/// Why an input was refused. A refused input changes nothing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TrackError {
    /// The tracker holds `max_sessions` sessions.
    #[error("tracker is full ({max} sessions)")]
    Full {
        /// The configured maximum.
        max: usize,
    },
    /// A client's join or beat named [`ConnId::NONE`], which is no
    /// connection. Returned by [`SessionOwner`](crate::SessionOwner), where
    /// only [`SessionOwner::hold`](crate::SessionOwner::hold) tracks a
    /// session without one; the tracker itself takes any id.
    #[error("ConnId::NONE names no connection; a client's join or beat must name its connection")]
    NoConnection,
}

/// What a join did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum JoinOutcome {
    /// The member's first session here: an *entered* event was queued.
    Entered,
    /// Another terminal of a member already present.
    NewTerminal,
    /// The session existed; it now follows a new connection.
    Reconnected {
        /// The connection it followed before.
        previous: ConnId,
    },
    /// The session existed with this connection: refreshed.
    Refreshed,
    /// Refused: the session follows `current`, a connection admitted after
    /// this one (this join is stale: a late or retried admission of an
    /// older connection). Nothing changed. Only
    /// [`SessionOwner::join`](crate::SessionOwner::join), which orders
    /// connections, answers this; the tracker itself follows the newest
    /// input.
    Superseded {
        /// The connection the session follows.
        current: ConnId,
    },
}

/// What a beat did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum BeatOutcome {
    /// Refreshed.
    Refreshed,
    /// Refreshed, and the session now follows this new connection.
    Reconnected {
        /// The connection it followed before.
        previous: ConnId,
    },
    /// Unknown here: adopted without an *entered* event (a session routed
    /// here after a failover).
    Adopted,
    /// A beat from a connection that recently closed here (it was delayed
    /// past its own leave): ignored, nothing changed.
    ClosedConnection,
    /// Refused: the session follows `current`, a connection admitted after
    /// the one that beat (a stale beat, delivered late). Nothing changed:
    /// the beat neither refreshes nor moves the session. Only
    /// [`SessionOwner::beat`](crate::SessionOwner::beat), which orders
    /// connections, answers this; the tracker itself follows the newest
    /// input.
    Superseded {
        /// The connection the session follows.
        current: ConnId,
    },
}

/// What a leave did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum LeaveOutcome {
    /// The member's last session ended: an *exited* event was queued.
    Exited,
    /// One terminal closed; the member is still present on another.
    TerminalClosed,
    /// No such session: nothing changed.
    Unknown,
    /// The session follows a newer connection than the one closing:
    /// nothing changed.
    StaleConnection,
}

/// A reply to a join or beat: what happened, and the hint for next time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reply<O> {
    /// What happened.
    pub outcome: O,
    /// Send this back with the session's next beat.
    pub hint: SessionHint,
}

/// One heartbeat, for [`Tracker::beat_batch`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Beat {
    /// Who.
    pub member: MemberKey,
    /// On which terminal.
    pub terminal: Terminal,
    /// Through which connection.
    pub conn: ConnId,
    /// The hint from the session's last reply, or [`SessionHint::NONE`].
    pub hint: SessionHint,
}

/// Beats of a batch whose records are requested from memory before any is
/// processed: enough to keep the memory system busy, few enough that the
/// lines are still cached when their turn comes.
const BATCH_CHUNK: usize = 32;

/// A session that stopped beating: ask the access layer whether `conn` is
/// still open, then call [`Tracker::confirm_gone`] or
/// [`Tracker::confirm_alive`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Suspect {
    /// Who.
    pub member: MemberKey,
    /// On which terminal.
    pub terminal: Terminal,
    /// Through which connection.
    pub conn: ConnId,
    /// The last beat (tick-rounded).
    pub last_seen: Timestamp,
}

const NIL: u32 = u32::MAX;
const RETAINED_EVENT_CAPACITY: usize = 1_024;
const CHUNK_BITS: u32 = 12;
const CHUNK: usize = 1 << CHUNK_BITS;

/// Record flags.
const LIVE: u8 = 1; // a tracked session, present in the index
const SUSPECT: u8 = 2; // expired, awaiting the reverse check; not in the wheel
const QUEUED: u8 = 4; // has an entry in the suspect queue
const WHEELED: u8 = 8; // linked into a wheel bucket or the draining list
/// Ended sessions the wheel may hold beyond the live ones before it is
/// compacted (small in unit tests, so that every test compacts).
const COMPACT_SLACK: usize = if cfg!(test) { 8 } else { 4_096 };
const UNCONFIRMED: u8 = 16; // not beaten since ownership was last in doubt

/// One session: 36 bytes, 4-byte aligned (u64s split into halves on purpose).
#[derive(Debug, Clone, Copy, Default)]
struct Rec {
    bid: u32,
    room: [u32; 2],
    uin: [u32; 2],
    conn: [u32; 2],
    last_seen: u16,
    terminal: u8,
    flags: u8,
    /// Next record in this record's wheel bucket or in the free list.
    next: u32,
}

const _: () = assert!(std::mem::size_of::<Rec>() == 36);

fn split(v: u64) -> [u32; 2] {
    [v as u32, (v >> 32) as u32]
}

fn join_halves(v: [u32; 2]) -> u64 {
    u64::from(v[0]) | (u64::from(v[1]) << 32)
}

impl Rec {
    fn member(&self) -> MemberKey {
        MemberKey::new(BusinessId(self.bid), RoomId(join_halves(self.room)), Uin(join_halves(self.uin)))
    }

    fn conn(&self) -> ConnId {
        ConnId(join_halves(self.conn))
    }

    fn terminal(&self) -> Terminal {
        Terminal::from_bit(u32::from(self.terminal)).unwrap_or(Terminal::Web)
    }

    fn is(&self, member: &MemberKey, terminal: Terminal) -> bool {
        self.flags & LIVE != 0
            && self.bid == member.bid.0
            && self.room == split(member.room.0)
            && self.uin == split(member.uin.0)
            && u32::from(self.terminal) == terminal.bit()
    }
}

/// Records in fixed-size chunks: growth allocates one chunk and copies
/// nothing, and free slots are reused through an intrusive free list.
#[derive(Default)]
struct Slab {
    chunks: Vec<Box<[Rec]>>,
    high_water: u32,
    free: Option<u32>,
}

impl Slab {
    fn get(&self, slot: u32) -> Option<&Rec> {
        self.chunks.get((slot >> CHUNK_BITS) as usize)?.get(slot as usize & (CHUNK - 1))
    }

    fn get_mut(&mut self, slot: u32) -> Option<&mut Rec> {
        self.chunks.get_mut((slot >> CHUNK_BITS) as usize)?.get_mut(slot as usize & (CHUNK - 1))
    }

    fn alloc(&mut self) -> u32 {
        if let Some(slot) = self.free {
            self.free = self.get(slot).map(|r| r.next).filter(|&n| n != NIL);
            return slot;
        }
        if (self.high_water as usize).is_multiple_of(CHUNK) {
            self.chunks.push(vec![Rec::default(); CHUNK].into_boxed_slice());
        }
        self.high_water += 1;
        self.high_water - 1
    }

    fn release(&mut self, slot: u32) {
        let next = self.free.unwrap_or(NIL);
        if let Some(rec) = self.get_mut(slot) {
            *rec = Rec { next, ..Rec::default() };
            self.free = Some(slot);
        }
    }
}

/// The session tracker of one heartbeat server. See the [module docs](self).
///
/// ```
/// use room_core::{MemberKey, Terminal, Timestamp};
/// use room_heartbeat::{ConnId, SessionHint, Tracker, TrackerConfig};
/// use std::time::Duration;
///
/// let mut tracker = Tracker::new(TrackerConfig::default())?;
/// let member: MemberKey = "7/100/42".parse().unwrap();
/// let t0 = Timestamp::from_millis(0);
/// let reply = tracker.join(t0, member, Terminal::Ios, ConnId(1)).unwrap();
/// tracker.beat(t0 + Duration::from_secs(20), member, Terminal::Ios, ConnId(1), reply.hint).unwrap();
///
/// // Silence: the session becomes suspect 60 s after its last beat.
/// let mut now = t0 + Duration::from_secs(20);
/// while tracker.poll_suspect_peek().is_none() {
///     now = tracker.poll_timeout().unwrap().max(now);
///     tracker.handle_timeout(now);
/// }
/// let suspect = tracker.poll_suspect().unwrap();
/// assert_eq!(now, t0 + Duration::from_secs(80));
/// // The access layer says the connection is gone: the member exits.
/// assert!(tracker.confirm_gone(now, &suspect));
/// # Ok::<(), room_heartbeat::ConfigError>(())
/// ```
pub struct Tracker {
    tick_micros: u64,
    default_ticks: u64,
    timeout_ticks: HashMap<u32, u64, ahash::RandomState>,
    max_sessions: usize,
    sweep_batch: usize,
    max_pending_suspects: usize,
    slab: Slab,
    index: HashTable<u32>,
    hasher: ahash::RandomState,
    /// Bucket heads; bucket `t & mask` holds records due at tick `t`.
    wheel: Vec<u32>,
    mask: u64,
    /// The next tick whose bucket is detached; `None` before the first input.
    cursor: Option<u64>,
    /// A detached bucket being worked through.
    draining: u32,
    /// Records linked into the wheel or the draining list.
    wheeled: usize,
    now: Timestamp,
    /// The tick `now` falls in, cached by [`Tracker::observe`].
    clock: TickClock,
    live: usize,
    /// Slots of suspects not yet handed out. An entry goes stale when its
    /// session beats again or ends; it is valid again if the session falls
    /// silent once more before the entry is reached (it is not queued twice,
    /// and a queued slot is never reused).
    suspects: VecDeque<u32>,
    events: VecDeque<MemberEvent>,
    /// Recently closed connections, oldest first, and the same as a set.
    closed: VecDeque<(Timestamp, ClosedKey)>,
    closed_set: HashMap<ClosedKey, u32, ahash::RandomState>,
    closed_memory: usize,
    closed_ttl: Duration,
}

impl fmt::Debug for Tracker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tracker")
            .field("sessions", &self.live)
            .field("now", &self.now)
            .field("pending_suspects", &self.suspects.len())
            .field("pending_events", &self.events.len())
            .finish_non_exhaustive()
    }
}

/// The tick the tracker's clock is in and the time it started, in µs.
#[derive(Debug, Clone, Copy, Default)]
struct TickClock {
    tick: u64,
    tick_start: u64,
}

/// A closed session: who, where, through which connection.
type ClosedKey = (MemberKey, Terminal, ConnId);

fn ticks_for(timeout: Duration, tick: Duration) -> u64 {
    // Round up: a session is never suspected before its timeout.
    let tick = tick.as_micros().max(1);
    u64::try_from(timeout.as_micros().div_ceil(tick)).unwrap_or(u64::MAX).max(1)
}

impl Tracker {
    /// A tracker with `config`, or the reason the configuration is refused.
    pub fn new(config: TrackerConfig) -> Result<Tracker, ConfigError> {
        if config.tick.is_zero() {
            return Err(ConfigError::ZeroTick);
        }
        if config.sweep_batch == 0 {
            return Err(ConfigError::ZeroSweepBatch);
        }
        if config.max_pending_suspects == 0 {
            return Err(ConfigError::ZeroPendingSuspects);
        }
        if config.max_sessions == 0 || config.max_sessions > MAX_SESSIONS {
            return Err(ConfigError::MaxSessions(config.max_sessions));
        }
        let span = ticks_for(config.max_timeout, config.tick);
        if span > MAX_TIMEOUT_TICKS {
            return Err(ConfigError::WheelTooLong { ticks: span, max: MAX_TIMEOUT_TICKS });
        }
        let timings = std::iter::once((None, config.default_timing))
            .chain(config.timings.iter().map(|(&bid, &t)| (Some(bid), t)));
        for (bid, timing) in timings {
            if timing.timeout() > config.max_timeout {
                return Err(ConfigError::TimeoutTooLong {
                    bid,
                    timeout: timing.timeout(),
                    max_timeout: config.max_timeout,
                });
            }
        }
        let wheel_len = (span + 2).next_power_of_two();
        Ok(Tracker {
            tick_micros: u64::try_from(config.tick.as_micros()).unwrap_or(u64::MAX),
            default_ticks: ticks_for(config.default_timing.timeout(), config.tick),
            timeout_ticks: config.timings.iter().map(|(bid, t)| (bid.0, ticks_for(t.timeout(), config.tick))).collect(),
            max_sessions: config.max_sessions,
            sweep_batch: config.sweep_batch,
            max_pending_suspects: config.max_pending_suspects,
            slab: Slab::default(),
            index: HashTable::new(),
            hasher: ahash::RandomState::new(),
            wheel: vec![NIL; wheel_len as usize],
            mask: wheel_len - 1,
            cursor: None,
            draining: NIL,
            wheeled: 0,
            now: Timestamp::ZERO,
            clock: TickClock::default(),
            live: 0,
            suspects: VecDeque::with_capacity(config.max_pending_suspects),
            events: VecDeque::new(),
            closed: VecDeque::new(),
            closed_set: HashMap::default(),
            closed_memory: config.closed_memory,
            closed_ttl: config.max_timeout,
        })
    }

    /// Sessions tracked (suspects included).
    pub fn len(&self) -> usize {
        self.live
    }

    /// Whether no session is tracked.
    pub fn is_empty(&self) -> bool {
        self.live == 0
    }

    /// The terminals `member` has a session on.
    pub fn terminals_of(&self, member: &MemberKey) -> TerminalSet {
        Terminal::ALL.into_iter().filter(|&t| self.find(member, t).is_some()).collect()
    }

    /// Whether `member` has any session here.
    pub fn is_present(&self, member: &MemberKey) -> bool {
        Terminal::ALL.into_iter().any(|t| self.find(member, t).is_some())
    }

    /// The connection `member` is followed through on `terminal`.
    pub fn connection(&self, member: &MemberKey, terminal: Terminal) -> Option<ConnId> {
        self.find(member, terminal).and_then(|s| self.slab.get(s)).map(Rec::conn)
    }

    /// [`Tracker::connection`], trying `hint` before the keyed lookup (a
    /// stale or foreign hint falls back to it).
    pub(crate) fn connection_hinted(
        &self,
        member: &MemberKey,
        terminal: Terminal,
        hint: SessionHint,
    ) -> Option<ConnId> {
        match self.slab.get(hint.0).filter(|r| r.is(member, terminal)) {
            Some(rec) => Some(rec.conn()),
            None => self.connection(member, terminal),
        }
    }

    fn hash(&self, member: &MemberKey, terminal: Terminal) -> u64 {
        self.hasher.hash_one((member.bid.0, member.room.0, member.uin.0, terminal.bit()))
    }

    fn find(&self, member: &MemberKey, terminal: Terminal) -> Option<u32> {
        let slab = &self.slab;
        self.index.find(self.hash(member, terminal), |&s| slab.get(s).is_some_and(|r| r.is(member, terminal))).copied()
    }

    fn timeout_of(&self, bid: u32) -> u64 {
        if self.timeout_ticks.is_empty() {
            return self.default_ticks;
        }
        self.timeout_ticks.get(&bid).copied().unwrap_or(self.default_ticks)
    }

    /// Takes `now` into account and returns the current tick. The tracker's
    /// clock never runs backwards.
    fn observe(&mut self, now: Timestamp) -> u64 {
        self.now = self.now.max(now);
        let micros = self.now.as_micros();
        // Beats come thousands of times per tick: stay within the cached
        // tick with two comparisons instead of two 64-bit divisions.
        if micros.wrapping_sub(self.clock.tick_start) >= self.tick_micros || self.cursor.is_none() {
            let tick = micros / self.tick_micros;
            self.clock = TickClock { tick, tick_start: tick.saturating_mul(self.tick_micros) };
        }
        self.cursor.get_or_insert(self.clock.tick);
        self.clock.tick
    }

    /// The stamp for a beat now: the current time rounded *up* to a tick,
    /// so that a session is never suspected before its full timeout (it is
    /// at most one tick late). Valid after [`Tracker::observe`].
    fn stamp(&self) -> u64 {
        self.clock.tick + u64::from(self.now.as_micros() != self.clock.tick_start)
    }

    /// Ticks since `last_seen` at tick `now_tick`; a stamp up to a tick
    /// ahead (rounded up) counts as age 0.
    fn age(now_tick: u64, last_seen: u16) -> u64 {
        u64::try_from((now_tick as u16).wrapping_sub(last_seen) as i16).unwrap_or(0)
    }

    fn link(&mut self, slot: u32, due_tick: u64) {
        let bucket = (due_tick & self.mask) as usize;
        let head = self.wheel[bucket];
        if let Some(rec) = self.slab.get_mut(slot) {
            rec.next = head;
            rec.flags |= WHEELED;
            self.wheel[bucket] = slot;
            self.wheeled += 1;
        }
    }

    /// Stamps a session as seen now, following `conn`.
    fn refresh(&mut self, slot: u32, conn: ConnId, tick: u64) -> Option<ConnId> {
        let stamp = self.stamp();
        let rec = self.slab.get_mut(slot)?;
        rec.last_seen = stamp as u16;
        let previous = rec.conn();
        rec.conn = split(conn.0);
        let was_suspect = rec.flags & SUSPECT != 0;
        rec.flags &= !(SUSPECT | UNCONFIRMED);
        let bid = rec.bid;
        if was_suspect {
            let due = tick.max(stamp) + self.timeout_of(bid);
            self.link(slot, due);
        }
        (previous != conn).then_some(previous)
    }

    fn insert(&mut self, member: MemberKey, terminal: Terminal, conn: ConnId, tick: u64) -> Result<u32, TrackError> {
        if self.live >= self.max_sessions {
            return Err(TrackError::Full { max: self.max_sessions });
        }
        let slot = self.slab.alloc();
        let stamp = self.stamp();
        if let Some(rec) = self.slab.get_mut(slot) {
            *rec = Rec {
                bid: member.bid.0,
                room: split(member.room.0),
                uin: split(member.uin.0),
                conn: split(conn.0),
                last_seen: stamp as u16,
                terminal: terminal.bit() as u8,
                flags: LIVE,
                next: NIL,
            };
        }
        let hash = self.hash(&member, terminal);
        let (slab, hasher) = (&self.slab, &self.hasher);
        self.index.insert_unique(hash, slot, |&s| {
            slab.get(s)
                .map_or(0, |r| hasher.hash_one((r.bid, join_halves(r.room), join_halves(r.uin), u32::from(r.terminal))))
        });
        self.live += 1;
        let due = stamp.max(tick) + self.timeout_of(member.bid.0);
        self.link(slot, due);
        Ok(slot)
    }

    /// Ends a session (no event). The slot is reclaimed now, or when its
    /// wheel bucket or suspect-queue entry is next visited.
    fn remove(&mut self, slot: u32) {
        let Some(rec) = self.slab.get(slot).copied() else { return };
        if rec.flags & LIVE == 0 {
            return;
        }
        let hash = self.hash(&rec.member(), rec.terminal());
        if let Ok(entry) = self.index.find_entry(hash, |&s| s == slot) {
            entry.remove();
        }
        if let Some(r) = self.slab.get_mut(slot) {
            r.flags &= !(LIVE | SUSPECT);
        }
        self.live -= 1;
        self.reclaim_if_unreferenced(slot);
        // An ended session stays linked in its wheel bucket until the
        // bucket comes due (a singly linked list cannot unlink it now).
        // Under a churn storm those would pile up for a whole timeout:
        // once they outnumber the live ones, one pass frees them all,
        // which costs O(1) per removal amortised.
        if self.wheeled > 2 * self.live + COMPACT_SLACK {
            self.compact_wheel();
        }
    }

    /// Unlinks every ended session from the wheel and the draining list,
    /// keeping the live ones in order, and reclaims their slots.
    fn compact_wheel(&mut self) {
        for bucket in 0..self.wheel.len() {
            let head = self.wheel[bucket];
            self.wheel[bucket] = self.unlink_ended(head);
        }
        let draining = self.draining;
        self.draining = self.unlink_ended(draining);
    }

    /// The list starting at `head` without its ended sessions; returns its
    /// new head.
    fn unlink_ended(&mut self, head: u32) -> u32 {
        let (mut new_head, mut tail) = (NIL, NIL);
        let mut slot = head;
        while slot != NIL {
            let Some(rec) = self.slab.get_mut(slot) else { break };
            let next = rec.next;
            if rec.flags & LIVE == 0 {
                rec.next = NIL;
                rec.flags &= !WHEELED;
                self.wheeled -= 1;
                self.reclaim_if_unreferenced(slot);
            } else {
                rec.next = NIL;
                if tail == NIL {
                    new_head = slot;
                } else if let Some(t) = self.slab.get_mut(tail) {
                    t.next = slot;
                }
                tail = slot;
            }
            slot = next;
        }
        new_head
    }

    fn reclaim_if_unreferenced(&mut self, slot: u32) {
        if self.slab.get(slot).is_some_and(|r| r.flags & (LIVE | WHEELED | QUEUED) == 0) {
            self.slab.release(slot);
        }
    }

    /// Remembers that `conn` closed, forgetting the oldest beyond the limits.
    fn remember_closed(&mut self, key: ClosedKey) {
        if self.closed_memory == 0 {
            return;
        }
        self.forget_old_closed();
        if self.closed.len() >= self.closed_memory {
            self.forget_oldest_closed();
        }
        self.closed.push_back((self.now, key));
        *self.closed_set.entry(key).or_default() += 1;
    }

    fn forget_old_closed(&mut self) {
        while self.closed.front().is_some_and(|&(at, _)| self.now.saturating_duration_since(at) > self.closed_ttl) {
            self.forget_oldest_closed();
        }
    }

    fn forget_oldest_closed(&mut self) {
        if let Some((_, key)) = self.closed.pop_front()
            && let Some(count) = self.closed_set.get_mut(&key)
        {
            *count -= 1;
            if *count == 0 {
                self.closed_set.remove(&key);
            }
        }
    }

    fn emit(&mut self, member: MemberKey, change: MemberChange) {
        self.events.push_back(MemberEvent { member, change, at: self.now });
    }

    /// A client connected: starts (or refreshes) its session.
    pub fn join(
        &mut self,
        now: Timestamp,
        member: MemberKey,
        terminal: Terminal,
        conn: ConnId,
    ) -> Result<Reply<JoinOutcome>, TrackError> {
        let tick = self.observe(now);
        if let Some(slot) = self.find(&member, terminal) {
            let outcome = match self.refresh(slot, conn, tick) {
                Some(previous) => JoinOutcome::Reconnected { previous },
                None => JoinOutcome::Refreshed,
            };
            return Ok(Reply { outcome, hint: SessionHint(slot) });
        }
        let first = !self.is_present(&member);
        let slot = self.insert(member, terminal, conn, tick)?;
        if first {
            self.emit(member, MemberChange::Entered);
        }
        let outcome = if first { JoinOutcome::Entered } else { JoinOutcome::NewTerminal };
        Ok(Reply { outcome, hint: SessionHint(slot) })
    }

    /// A heartbeat. O(1) and allocation-free for a known session.
    pub fn beat(
        &mut self,
        now: Timestamp,
        member: MemberKey,
        terminal: Terminal,
        conn: ConnId,
        hint: SessionHint,
    ) -> Result<Reply<BeatOutcome>, TrackError> {
        let tick = self.observe(now);
        let hinted = self.slab.get(hint.0).is_some_and(|r| r.is(&member, terminal));
        let slot = if hinted { Some(hint.0) } else { self.find(&member, terminal) };
        let Some(slot) = slot else {
            self.forget_old_closed();
            if self.closed_set.contains_key(&(member, terminal, conn)) {
                return Ok(Reply { outcome: BeatOutcome::ClosedConnection, hint: SessionHint::NONE });
            }
            let slot = self.insert(member, terminal, conn, tick)?;
            return Ok(Reply { outcome: BeatOutcome::Adopted, hint: SessionHint(slot) });
        };
        let outcome = match self.refresh(slot, conn, tick) {
            Some(previous) => BeatOutcome::Reconnected { previous },
            None => BeatOutcome::Refreshed,
        };
        Ok(Reply { outcome, hint: SessionHint(slot) })
    }

    /// Many heartbeats at once (as they arrive from a network read), with
    /// the same effect as [`Tracker::beat`] on each in order. `replies` is
    /// cleared and receives one reply per beat; reuse it to stay
    /// allocation-free.
    ///
    /// Faster than one call per beat when the tracker is much larger than
    /// the CPU caches: each chunk of beats is first resolved as a whole
    /// (hinted records are prefetched, unhinted beats looked up in the
    /// index), so the cache misses of different beats overlap instead of
    /// following one another.
    pub fn beat_batch(
        &mut self,
        now: Timestamp,
        beats: &[Beat],
        replies: &mut Vec<Result<Reply<BeatOutcome>, TrackError>>,
    ) {
        replies.clear();
        replies.reserve(beats.len());
        self.observe(now);
        let stamp = self.stamp() as u16;
        let mut resolved = [SessionHint::NONE; BATCH_CHUNK];
        let prefetch_hints = |tracker: &Tracker, chunk: &[Beat]| {
            for beat in chunk.iter().filter(|b| b.hint != SessionHint::NONE) {
                tracker.prefetch(beat.hint.0);
            }
        };
        let mut chunks = beats.chunks(BATCH_CHUNK).peekable();
        if let Some(first) = chunks.peek() {
            prefetch_hints(self, first);
        }
        while let Some(chunk) = chunks.next() {
            // Hinted records are prefetched one chunk ahead and unhinted
            // beats looked up before any update, so the cache misses of
            // different beats overlap instead of following one another. A
            // hint is only a guess here: `beat` checks it against the key,
            // so a stale one still falls back to the index.
            if let Some(next) = chunks.peek() {
                prefetch_hints(self, next);
            }
            for (beat, slot) in chunk.iter().zip(resolved.iter_mut()) {
                *slot = if beat.hint != SessionHint::NONE {
                    beat.hint
                } else {
                    self.find(&beat.member, beat.terminal).map_or(SessionHint::NONE, SessionHint)
                };
            }
            for (beat, &slot) in chunk.iter().zip(resolved.iter()) {
                let reply = match self.refresh_unchanged(stamp, slot.0, beat) {
                    true => Ok(Reply { outcome: BeatOutcome::Refreshed, hint: slot }),
                    false => self.beat(now, beat.member, beat.terminal, beat.conn, slot),
                };
                replies.push(reply);
            }
        }
    }

    /// The common case of a batched beat, done in place: the session is at
    /// `slot`, not suspect, on the same connection. Only the stamp moves
    /// (forwards: the tracker's clock never runs back). Returns false,
    /// changing nothing, for anything else, which then takes the full path.
    #[inline]
    fn refresh_unchanged(&mut self, stamp: u16, slot: u32, beat: &Beat) -> bool {
        let Some(rec) = self.slab.get_mut(slot) else { return false };
        if !rec.is(&beat.member, beat.terminal) || rec.flags & SUSPECT != 0 || rec.conn != split(beat.conn.0) {
            return false;
        }
        rec.last_seen = stamp;
        rec.flags &= !UNCONFIRMED;
        true
    }

    /// Asks the CPU to start loading a record's cache lines (a record may
    /// straddle two). A hint only: any slot is fine, an unknown one does
    /// nothing.
    ///
    /// The one `unsafe` block of the crate. The tracker benchmark measures
    /// it: without the prefetch a hinted `beat_batch` at 1M sessions costs
    /// 50 ns a beat, with it 31 ns (a safe "touch" load is slower than
    /// nothing, 58 ns, because loads that miss hold up retirement).
    #[inline]
    fn prefetch(&self, slot: u32) {
        #[cfg(all(target_arch = "x86_64", target_feature = "sse"))]
        if let Some(rec) = self.slab.get(slot) {
            use std::arch::x86_64::{_MM_HINT_T0, _mm_prefetch};
            let first: *const i8 = std::ptr::from_ref(rec).cast();
            let last = first.wrapping_add(std::mem::size_of::<Rec>() - 1);
            // SAFETY: `_mm_prefetch` is unsafe to call only because it is a
            // `#[target_feature(enable = "sse")]` function; the `cfg` above
            // compiles this block only where SSE is enabled for the whole
            // build (always, on x86_64). A prefetch has no architectural
            // effect: it never faults and reads or writes nothing Rust can
            // observe, so the addresses need no validity at all (they are
            // inside `rec` anyway). `cargo +nightly miri test -p
            // room-heartbeat --lib` runs `tests::batch_with_prefetch_*`.
            #[allow(unsafe_code)]
            unsafe {
                _mm_prefetch::<_MM_HINT_T0>(first);
                _mm_prefetch::<_MM_HINT_T0>(last);
            }
        }
        #[cfg(not(all(target_arch = "x86_64", target_feature = "sse")))]
        let _ = slot;
    }

    /// A client closed `conn` on `terminal`.
    pub fn leave(&mut self, now: Timestamp, member: MemberKey, terminal: Terminal, conn: ConnId) -> LeaveOutcome {
        self.observe(now);
        let Some(slot) = self.find(&member, terminal) else { return LeaveOutcome::Unknown };
        if self.slab.get(slot).is_some_and(|r| r.conn() != conn) {
            return LeaveOutcome::StaleConnection;
        }
        self.remove(slot);
        self.remember_closed((member, terminal, conn));
        if self.is_present(&member) {
            LeaveOutcome::TerminalClosed
        } else {
            self.emit(member, MemberChange::Exited(ExitReason::Left));
            LeaveOutcome::Exited
        }
    }

    /// Removes every session of `member` (a kick, a ban, a move). Returns
    /// whether it was present; if so an *exited* event with `reason` is
    /// queued.
    pub fn remove_member(&mut self, now: Timestamp, member: MemberKey, reason: ExitReason) -> bool {
        self.observe(now);
        let slots: Vec<u32> = Terminal::ALL.into_iter().filter_map(|t| self.find(&member, t)).collect();
        for &slot in &slots {
            self.remove(slot);
        }
        if !slots.is_empty() {
            self.emit(member, MemberChange::Exited(reason));
        }
        !slots.is_empty()
    }

    /// Drops one session without any event (it belongs to another server
    /// now). Returns whether it was tracked.
    pub fn release(&mut self, member: &MemberKey, terminal: Terminal) -> bool {
        match self.find(member, terminal) {
            Some(slot) => {
                self.remove(slot);
                true
            }
            None => false,
        }
    }

    /// Drops, without any event, every session whose member `keep` rejects:
    /// what a server does with key ranges it no longer owns. Returns how many
    /// sessions were dropped. O(sessions).
    pub fn release_where(&mut self, mut keep: impl FnMut(&MemberKey) -> bool) -> usize {
        let mut dropped = 0;
        for slot in 0..self.slab.high_water {
            let Some(rec) = self.slab.get(slot) else { continue };
            if rec.flags & LIVE != 0 && !keep(&rec.member()) {
                self.remove(slot);
                dropped += 1;
            }
        }
        dropped
    }

    /// The access layer confirmed the suspect's connection is gone: the
    /// session ends, and if it was the member's last an *exited (timed out)*
    /// event is queued, unless the session is unconfirmed (see
    /// [`Tracker::mark_all_unconfirmed`]): then it ends silently. Returns
    /// false (and changes nothing) if the session beat again, moved to
    /// another connection or ended meanwhile.
    pub fn confirm_gone(&mut self, now: Timestamp, suspect: &Suspect) -> bool {
        self.observe(now);
        let Some(slot) = self.find(&suspect.member, suspect.terminal) else { return false };
        let Some(rec) = self.slab.get(slot).copied() else { return false };
        if rec.flags & SUSPECT == 0 || rec.conn() != suspect.conn {
            return false;
        }
        self.remove(slot);
        if rec.flags & UNCONFIRMED == 0 && !self.is_present(&suspect.member) {
            self.emit(suspect.member, MemberChange::Exited(ExitReason::TimedOut));
        }
        true
    }

    /// Marks every session unconfirmed until its next beat. A server calls
    /// this when its ownership was in doubt (it was cut off from the
    /// cluster): sessions that beat again are its own; one that times out
    /// instead was decided by whoever owned it meanwhile, so it ends without
    /// an *exited* event. O(sessions).
    pub fn mark_all_unconfirmed(&mut self) {
        for slot in 0..self.slab.high_water {
            if let Some(rec) = self.slab.get_mut(slot)
                && rec.flags & LIVE != 0
            {
                rec.flags |= UNCONFIRMED;
            }
        }
    }

    /// The access layer says the suspect's connection is alive: it counts as
    /// a beat now. Returns false if the session is gone or moved to another
    /// connection.
    pub fn confirm_alive(&mut self, now: Timestamp, suspect: &Suspect) -> bool {
        let tick = self.observe(now);
        let Some(slot) = self.find(&suspect.member, suspect.terminal) else { return false };
        if self.slab.get(slot).is_none_or(|r| r.conn() != suspect.conn) {
            return false;
        }
        self.refresh(slot, suspect.conn, tick);
        true
    }

    /// When [`Tracker::handle_timeout`] should next run, if ever.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Timestamp> {
        if self.draining != NIL && !self.suspects_full() {
            return Some(self.now);
        }
        if self.wheeled == 0 {
            return None;
        }
        let cursor = self.cursor?;
        // While the suspect queue is full, wait a tick rather than spin.
        let next = if self.draining != NIL { self.now.as_micros() / self.tick_micros + 1 } else { cursor };
        Some(Timestamp::from_micros(next.saturating_mul(self.tick_micros)))
    }

    fn suspects_full(&self) -> bool {
        self.suspects.len() >= self.max_pending_suspects
    }

    /// Re-checks due sessions, at most `sweep_batch` of them; expired ones
    /// become suspects ([`Tracker::poll_suspect`]).
    pub fn handle_timeout(&mut self, now: Timestamp) {
        let now_tick = self.observe(now);
        let Some(mut cursor) = self.cursor else { return };
        let span = self.wheel.len() as u64;
        if self.draining == NIL && cursor.saturating_add(span) <= now_tick {
            // Far behind: one pass over every bucket re-checks everyone.
            cursor = now_tick + 1 - span;
        }
        let mut budget = self.sweep_batch;
        loop {
            if self.draining == NIL {
                if self.wheeled == 0 {
                    cursor = cursor.max(now_tick + 1);
                    break;
                }
                if cursor > now_tick || self.suspects_full() {
                    break;
                }
                let bucket = (cursor & self.mask) as usize;
                self.draining = std::mem::replace(&mut self.wheel[bucket], NIL);
                cursor += 1;
                continue;
            }
            if budget == 0 || self.suspects_full() {
                break;
            }
            budget -= 1;
            let slot = self.draining;
            let Some(rec) = self.slab.get_mut(slot) else {
                self.draining = NIL;
                break;
            };
            self.draining = rec.next;
            rec.next = NIL;
            rec.flags &= !WHEELED;
            self.wheeled -= 1;
            let rec = *rec;
            if rec.flags & LIVE == 0 {
                self.reclaim_if_unreferenced(slot);
                continue;
            }
            let age = Self::age(now_tick, rec.last_seen);
            let timeout = self.timeout_of(rec.bid);
            if age < timeout {
                self.link(slot, now_tick + (timeout - age));
            } else if let Some(r) = self.slab.get_mut(slot) {
                r.flags |= SUSPECT;
                if r.flags & QUEUED == 0 {
                    r.flags |= QUEUED;
                    self.suspects.push_back(slot);
                }
            }
        }
        self.cursor = Some(cursor);
    }

    /// The next suspect to check with the access layer.
    #[must_use]
    pub fn poll_suspect(&mut self) -> Option<Suspect> {
        while let Some(slot) = self.suspects.pop_front() {
            let Some(rec) = self.slab.get_mut(slot) else { continue };
            rec.flags &= !QUEUED;
            let rec = *rec;
            // Suspect now, whatever connection it followed when queued: a
            // session that reconnected and fell silent again while queued
            // was not queued a second time.
            if rec.flags & (LIVE | SUSPECT) == LIVE | SUSPECT {
                return Some(self.suspect_of(&rec));
            }
            self.reclaim_if_unreferenced(slot);
        }
        None
    }

    /// Entries in the suspect queue, some possibly stale (their session beat
    /// again or ended); [`Tracker::poll_suspect`] skips those. Zero means
    /// there is certainly no suspect. O(1).
    pub fn queued_suspects(&self) -> usize {
        self.suspects.len()
    }

    /// The next suspect, without taking it. Skips stale queue entries, so it
    /// may scan the queue.
    pub fn poll_suspect_peek(&self) -> Option<Suspect> {
        self.suspects.iter().find_map(|&slot| {
            let rec = self.slab.get(slot)?;
            (rec.flags & (LIVE | SUSPECT) == LIVE | SUSPECT).then(|| self.suspect_of(rec))
        })
    }

    fn suspect_of(&self, rec: &Rec) -> Suspect {
        let now_tick = self.now.as_micros() / self.tick_micros;
        let age = Self::age(now_tick, rec.last_seen);
        Suspect {
            member: rec.member(),
            terminal: rec.terminal(),
            conn: rec.conn(),
            last_seen: Timestamp::from_micros(now_tick.saturating_sub(age).saturating_mul(self.tick_micros)),
        }
    }

    /// The next *entered* / *exited* event, in the order they happened.
    #[must_use]
    pub fn poll_event(&mut self) -> Option<MemberEvent> {
        let event = self.events.pop_front();
        if event.is_none() && self.events.capacity() > RETAINED_EVENT_CAPACITY {
            // A join storm grew the queue; give the memory back once drained.
            self.events.shrink_to(RETAINED_EVENT_CAPACITY);
        }
        event
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn session(i: u64) -> (MemberKey, Terminal, ConnId) {
        (
            MemberKey::new(BusinessId(1 + (i % 3) as u32), RoomId(i / 10), Uin(i * 7 + 1)),
            Terminal::ALL[(i % 7) as usize],
            ConnId(i),
        )
    }

    /// Small enough for miri, large enough to span several slab chunks,
    /// several prefetch chunks and a partial last chunk.
    #[test]
    fn batch_with_prefetch_equals_single_beats_with_stale_and_foreign_hints() {
        // Under miri (slow): one chunk boundary and a few dozen beats.
        let (n, step) = if cfg!(miri) { (CHUNK as u64 + 40, 97) } else { (2 * CHUNK as u64 + 77, 3) };
        let config = TrackerConfig {
            max_timeout: Duration::from_secs(120),
            max_pending_suspects: 16_384,
            closed_memory: 64,
            ..TrackerConfig::default()
        };
        let (mut single, mut batched) = (Tracker::new(config.clone()).unwrap(), Tracker::new(config).unwrap());
        let t0 = Timestamp::from_millis(5_000);
        let mut hints = Vec::new();
        for i in 0..n {
            let (m, t, c) = session(i);
            let a = single.join(t0, m, t, c).unwrap().hint;
            let b = batched.join(t0, m, t, c).unwrap().hint;
            assert_eq!(a, b);
            hints.push(a);
        }
        // Every kind of hint: right, none, another session's, out of range,
        // NIL; some beats on a new connection, some for unknown sessions.
        let beats: Vec<Beat> = (0..n + 40)
            .step_by(step)
            .map(|i| {
                let (member, terminal, conn) = session(i);
                let hint = match i % 5 {
                    0 => SessionHint::NONE,
                    1 => SessionHint::from_bits(u32::MAX - 1),
                    2 => hints.get(((i + 1) % n) as usize).copied().unwrap_or(SessionHint::NONE),
                    _ => hints.get(i as usize).copied().unwrap_or(SessionHint::from_bits(12_345_678)),
                };
                let conn = if i % 11 == 0 { ConnId(conn.0 + 1_000_000) } else { conn };
                Beat { member, terminal, conn, hint }
            })
            .collect();
        let now = t0 + Duration::from_millis(1_500);
        let expected: Vec<_> = beats.iter().map(|b| single.beat(now, b.member, b.terminal, b.conn, b.hint)).collect();
        let mut replies = Vec::new();
        batched.beat_batch(now, &beats, &mut replies);
        assert_eq!(replies, expected);
        assert_eq!(single.len(), batched.len());
        for b in &beats {
            assert_eq!(single.connection(&b.member, b.terminal), batched.connection(&b.member, b.terminal));
        }
        // Both expire the same sessions at the same time.
        let later = now + Duration::from_secs(61);
        let drain = |t: &mut Tracker| {
            let mut v = Vec::new();
            while t.poll_timeout().is_some_and(|at| at <= later) {
                t.handle_timeout(later);
                while let Some(s) = t.poll_suspect() {
                    v.push((s.member, s.terminal, s.conn));
                }
            }
            v.sort();
            v
        };
        let suspects = drain(&mut single);
        assert_eq!(suspects.len(), single.len());
        assert_eq!(suspects, drain(&mut batched));
    }

    #[test]
    fn prefetch_of_any_slot_is_harmless() {
        let mut tracker = Tracker::new(TrackerConfig::default()).unwrap();
        for slot in [0, 1, NIL, u32::MAX - 1, CHUNK as u32, 1 << 30] {
            tracker.prefetch(slot);
        }
        let (m, t, c) = session(1);
        let hint = tracker.join(Timestamp::ZERO, m, t, c).unwrap().hint;
        tracker.prefetch(hint.0);
        assert_eq!(tracker.len(), 1);
    }

    /// Sessions that keep ending and being replaced inside one timeout
    /// leave at most a bounded number of slots behind, and the sessions
    /// still live expire on time.
    #[test]
    fn a_churn_storm_does_not_hold_a_slot_per_ended_session() {
        let config =
            TrackerConfig { max_timeout: Duration::from_secs(120), closed_memory: 64, ..TrackerConfig::default() };
        let mut tracker = Tracker::new(config).unwrap();
        let now = Timestamp::from_millis(5_000);
        let steady = if cfg!(miri) { 20 } else { 500 };
        for i in 0..steady {
            let (m, t, c) = session(i);
            tracker.join(now, m, t, c).unwrap();
        }
        let churn = if cfg!(miri) { 200 } else { 50_000 };
        for i in steady..steady + churn {
            let (m, t, c) = session(i);
            tracker.join(now, m, t, c).unwrap();
            assert_eq!(tracker.leave(now, m, t, c), LeaveOutcome::Exited);
        }
        assert_eq!(tracker.len(), steady as usize);
        let held = tracker.slab.high_water as usize;
        assert!(held <= 3 * steady as usize + COMPACT_SLACK + 2, "{held} slots for {steady} live sessions");
        assert!(tracker.wheeled <= 2 * tracker.live + COMPACT_SLACK, "{} wheeled", tracker.wheeled);
        // The live ones are all still due, once each.
        let later = now + Duration::from_secs(61);
        let mut expired = Vec::new();
        while tracker.poll_timeout().is_some_and(|at| at <= later) {
            tracker.handle_timeout(later);
            while let Some(s) = tracker.poll_suspect() {
                expired.push(s.conn);
            }
        }
        expired.sort();
        let want: Vec<ConnId> = (0..steady).map(|i| session(i).2).collect();
        assert_eq!(expired, want);
    }
}
