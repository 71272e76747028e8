//! What the store holds and answers: member rows, writes, queries, counts,
//! change sets, and the errors for what it refuses.

use bytes::Bytes;
use room_core::{Flag, Role, RoleSet, Terminal, TerminalSet, Timestamp, Uin};

/// One member of a room, as queries return it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct MemberRow {
    /// Who.
    pub uin: Uin,
    /// The member's role in this room.
    pub role: Role,
    /// Terminals the member is present on (never empty).
    pub terminals: TerminalSet,
    /// When the member entered (its first terminal), on the clock of the
    /// node that admitted it.
    pub joined: Timestamp,
    /// The host's attribute blob (a nickname, an avatar id), at most
    /// [`StoreConfig::max_attrs_bytes`](crate::StoreConfig::max_attrs_bytes).
    pub attrs: Bytes,
}

/// A write to one member of a room. Writes are state-based: applying the
/// same write twice leaves the same state as applying it once.
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[non_exhaustive]
pub enum WriteOp {
    /// The member is present on `terminal` (entered, or one more
    /// terminal). A new member joins now with `role`; a present one takes
    /// `role` (the newest ticket wins). `attrs`, when given, replace the
    /// member's attributes. On a replica, an entry of a member already
    /// present as asked is written again all the same (a fresh stamp), so
    /// that it wins over an older exit still on its way.
    Enter {
        /// Who.
        uin: Uin,
        /// Its role.
        role: Role,
        /// The terminal it is present on.
        terminal: Terminal,
        /// New attributes, if any.
        attrs: Option<Bytes>,
    },
    /// Heartbeat repair: the member is present on `terminal`. Writes only
    /// if it is not (a lost entry, a replica that lost data), entering it
    /// with `role`; a present member keeps its role and attributes.
    Assert {
        /// Who.
        uin: Uin,
        /// Its role, if it must enter.
        role: Role,
        /// The terminal it is present on.
        terminal: Terminal,
    },
    /// The member left `terminal`; it leaves the room with its last one.
    Exit {
        /// Who.
        uin: Uin,
        /// The terminal it left.
        terminal: Terminal,
    },
    /// The member leaves the room from every terminal (a kick, a ban).
    Remove {
        /// Who.
        uin: Uin,
    },
    /// Changes a present member's role and/or attributes.
    Update {
        /// Who.
        uin: Uin,
        /// The new role, if it changes.
        role: Option<Role>,
        /// The new attributes, if they change.
        attrs: Option<Bytes>,
    },
}

impl WriteOp {
    /// The member the write is about.
    pub fn uin(&self) -> Uin {
        match self {
            WriteOp::Enter { uin, .. }
            | WriteOp::Assert { uin, .. }
            | WriteOp::Exit { uin, .. }
            | WriteOp::Remove { uin }
            | WriteOp::Update { uin, .. } => *uin,
        }
    }
}

/// What one write did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[non_exhaustive]
pub enum WriteOutcome {
    /// The member was not present and now is.
    Entered,
    /// The member was present and changed (a terminal, its role, its
    /// attributes).
    Updated,
    /// The member was present and now is not.
    Exited,
    /// Nothing changed (a repeated write).
    Unchanged,
}

/// Where a page starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[non_exhaustive]
pub enum PageStart {
    /// The first matching member.
    #[default]
    First,
    /// Skip this many matching members (rank paging). Cheap without a
    /// terminal filter (whole ranks are skipped by their counts); with one,
    /// the skipped members are scanned.
    Offset(usize),
    /// The first matching member after this cursor (cursor paging: a
    /// member present throughout a walk is seen exactly once, whatever
    /// else enters or leaves).
    After(Cursor),
}

/// A position in a room's listing order: (role rank, join time, uin).
/// Opaque to clients; [`Cursor::to_bits`] and [`Cursor::from_bits`] put it
/// on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct Cursor {
    rank: u8,
    joined: u64,
    uin: u64,
}

impl Cursor {
    pub(crate) fn new(rank: u8, joined: u64, uin: u64) -> Cursor {
        Cursor { rank, joined, uin }
    }

    pub(crate) fn rank(self) -> u8 {
        self.rank
    }

    pub(crate) fn key(self) -> (u64, u64) {
        (self.joined, self.uin)
    }

    /// The cursor just after `row` (whose role gives its rank).
    pub fn after(row: &MemberRow) -> Cursor {
        Cursor { rank: row.role.rank(), joined: row.joined.as_micros(), uin: row.uin.0 }
    }

    /// 17 bytes for the wire.
    pub fn to_bits(self) -> [u8; 17] {
        let mut out = [0u8; 17];
        out[0] = self.rank;
        out[1..9].copy_from_slice(&self.joined.to_be_bytes());
        out[9..].copy_from_slice(&self.uin.to_be_bytes());
        out
    }

    /// A cursor from the wire. Any bytes give a valid cursor (a nonsense
    /// one just starts somewhere in the order), so nothing is refused.
    pub fn from_bits(bits: [u8; 17]) -> Cursor {
        let word = |r: std::ops::Range<usize>| {
            let mut w = [0u8; 8];
            w.copy_from_slice(&bits[r]);
            u64::from_be_bytes(w)
        };
        Cursor { rank: bits[0], joined: word(1..9), uin: word(9..17) }
    }
}

/// A listing request: filters, start and size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[non_exhaustive]
pub struct PageQuery {
    /// Only members with one of these roles (default: all).
    pub roles: RoleSet,
    /// Only members present on one of these terminals (default: all).
    pub terminals: TerminalSet,
    /// Where the page starts.
    pub start: PageStart,
    /// The most rows (at most [`PageQuery::MAX_LIMIT`]).
    pub limit: usize,
}

impl PageQuery {
    /// The largest page.
    pub const MAX_LIMIT: usize = 1_000;

    /// The first `limit` members, unfiltered.
    pub fn first(limit: usize) -> PageQuery {
        PageQuery { roles: RoleSet::all(), terminals: TerminalSet::all(), start: PageStart::First, limit }
    }

    /// Only these roles.
    pub fn roles(mut self, roles: RoleSet) -> PageQuery {
        self.roles = roles;
        self
    }

    /// Only these terminals.
    pub fn terminals(mut self, terminals: TerminalSet) -> PageQuery {
        self.terminals = terminals;
        self
    }

    /// Starting at `start`.
    pub fn start(mut self, start: PageStart) -> PageQuery {
        self.start = start;
        self
    }
}

/// What came with a page besides its rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[non_exhaustive]
pub struct PageInfo {
    /// Where the next page starts, if the page was full (there may be more).
    pub next: Option<Cursor>,
    /// The room's change-feed position when the page was read.
    pub version: FeedPosition,
}

/// Member counts of a room, kept up to date by every write (reading them is
/// O(1)).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct Counts {
    pub(crate) total: u32,
    /// By role bit (teacher, assistant, student, observer).
    pub(crate) standard: [u32; 4],
    /// Custom roles: (role number, count), count > 0, sorted.
    pub(crate) custom: Vec<(u8, u32)>,
    /// By terminal, in [`Terminal::ALL`] order. A member on two terminals
    /// counts on both.
    pub(crate) terminals: [u32; 7],
}

impl Counts {
    /// Members present.
    pub fn total(&self) -> u32 {
        self.total
    }

    /// Members with `role`.
    pub fn role(&self, role: Role) -> u32 {
        match role {
            Role::Custom(c) => self.custom.iter().find(|(n, _)| *n == c.get()).map_or(0, |&(_, k)| k),
            standard => self.standard.get(standard.bit() as usize).copied().unwrap_or(0),
        }
    }

    /// Members present on `terminal`.
    pub fn terminal(&self, terminal: Terminal) -> u32 {
        self.terminals.get(terminal.bit() as usize).copied().unwrap_or(0)
    }

    /// Every role with at least one member, and its count.
    pub fn by_role(&self) -> impl Iterator<Item = (Role, u32)> + '_ {
        let standard = [Role::Teacher, Role::Assistant, Role::Student, Role::Observer]
            .into_iter()
            .map(|r| (r, self.role(r)))
            .filter(|&(_, k)| k > 0);
        let custom =
            self.custom.iter().filter_map(|&(n, k)| room_core::CustomRole::new(n).ok().map(|c| (Role::Custom(c), k)));
        standard.chain(custom)
    }

    pub(crate) fn add(&mut self, role: Role, terminals: TerminalSet, sign: i8) {
        let step = |v: &mut u32| {
            *v = if sign > 0 { v.saturating_add(1) } else { v.saturating_sub(1) };
        };
        step(&mut self.total);
        match role {
            Role::Custom(c) => match self.custom.binary_search_by_key(&c.get(), |&(n, _)| n) {
                Ok(i) => {
                    step(&mut self.custom[i].1);
                    if self.custom[i].1 == 0 {
                        self.custom.remove(i);
                    }
                }
                Err(i) if sign > 0 => self.custom.insert(i, (c.get(), 1)),
                Err(_) => {}
            },
            standard => {
                if let Some(v) = self.standard.get_mut(standard.bit() as usize) {
                    step(v);
                }
            }
        }
        for t in terminals.iter() {
            if let Some(v) = self.terminals.get_mut(t.bit() as usize) {
                step(v);
            }
        }
    }
}

/// A position in a room's change feed: the room instance (`epoch`, new
/// whenever the room's history restarts: a new replica, a restore) and the
/// number of changes applied to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct FeedPosition {
    /// The room instance.
    pub epoch: u64,
    /// Changes applied so far.
    pub version: u64,
}

/// The answer to "what changed since position p?".
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[non_exhaustive]
pub enum ChangeSet {
    /// Members to add or replace and members to drop, to go from the state
    /// at the asked position to the state at `now`. Each member appears
    /// once, in its current state.
    Delta {
        /// The position this delta brings the client to.
        now: FeedPosition,
        /// Members that entered or changed.
        upserts: Vec<MemberRow>,
        /// Members that left.
        removed: Vec<Uin>,
    },
    /// The asked position is too old (the feed keeps a bounded history),
    /// from another room instance, or from the future: reload the list
    /// from a page and continue from `now`.
    Resync {
        /// The current position.
        now: FeedPosition,
    },
}

/// Why a write or query was refused. A refused write changes nothing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[non_exhaustive]
pub enum StoreError {
    /// The attributes are larger than the configured cap.
    #[error("attributes of {len} bytes exceed the cap of {max} bytes")]
    AttrsTooLarge {
        /// The size given.
        len: usize,
        /// The cap.
        max: usize,
    },
    /// The business is not one this store serves.
    #[error("unknown business {0}")]
    UnknownBusiness(room_core::BusinessId),
    /// The room does not exist here (no member ever entered it, or it emptied).
    #[error("unknown room {0}")]
    UnknownRoom(room_core::RoomKey),
    /// An exit, remove or update for a member who is not present.
    #[error("member {0} is not present")]
    NotPresent(Uin),
    /// The room is at its seat limit.
    #[error("room is full ({limit} seats)")]
    RoomFull {
        /// The seat limit.
        limit: u32,
    },
    /// The room has a seat limit: new members enter through a checked join
    /// at the room's primary owner.
    #[error("room has a seat limit: enter through a checked join")]
    NeedsCheckedJoin,
    /// A room already holds the most members a room may hold.
    #[error("room holds the maximum of {max} members")]
    RoomAtCapacity {
        /// The configured maximum.
        max: u32,
    },
    /// The store holds the most rooms it may hold.
    #[error("store holds the maximum of {max} rooms")]
    TooManyRooms {
        /// The configured maximum.
        max: usize,
    },
    /// A page of more than [`PageQuery::MAX_LIMIT`] rows, or of none.
    #[error("page limit {0} is outside 1..={max}", max = PageQuery::MAX_LIMIT)]
    BadLimit(usize),
    /// This replica does not own the room: send the write to one of the
    /// room's owners.
    #[error("this replica does not own room {room}")]
    NotOwner {
        /// The room.
        room: room_core::RoomKey,
    },
    /// A checked join reached a primary that has not yet synchronised with
    /// the other owners since the node set changed: try again shortly.
    #[error("the room's primary is not ready for checked joins yet")]
    NotReady,
    /// A checked join got no answer, or no majority, in time (it was not
    /// admitted).
    #[error("checked join timed out")]
    Timeout,
    /// More writes in one batch than [`StoreConfig::max_batch`](crate::StoreConfig::max_batch).
    #[error("batch of {len} writes exceeds the cap of {max}")]
    BatchTooLarge {
        /// Writes given.
        len: usize,
        /// The cap.
        max: usize,
    },
}
