//! Messages, priority classes and target expressions.

use bytes::Bytes;
use room_core::{Role, RoleSet, RoomKey, Terminal, TerminalSet, Uin};

/// How much a message matters, and so how it travels.
///
/// | class | sequenced and cached | under load |
/// | --- | --- | --- |
/// | [`Class::Signal`] | yes | never dropped; a slow connection gets a resync marker |
/// | [`Class::Teacher`] | yes | never dropped; refused (with an error) only at [`Level::SignalOnly`](crate::Level::SignalOnly) |
/// | [`Class::Chat`] | no | merged into batch frames, shed oldest-first on slow connections, refused by degradation levels |
/// | [`Class::Reaction`] | no | merged into per-room counts; a connection holds only the newest totals |
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(rename_all = "kebab-case"))]
#[non_exhaustive]
pub enum Class {
    /// Class signalling: begin, end, mute-all, page turn, degradation switches.
    Signal,
    /// What the teacher says.
    Teacher,
    /// Chat between members.
    Chat,
    /// Flowers, likes: countable and mergeable.
    Reaction,
}

impl Class {
    /// Every class, highest priority first.
    pub const ALL: [Class; 4] = [Class::Signal, Class::Teacher, Class::Chat, Class::Reaction];

    /// Whether messages of this class are sequenced, cached and recoverable.
    pub const fn is_reliable(self) -> bool {
        matches!(self, Class::Signal | Class::Teacher)
    }

    /// A small number for wire formats.
    pub const fn code(self) -> u8 {
        match self {
            Class::Signal => 0,
            Class::Teacher => 1,
            Class::Chat => 2,
            Class::Reaction => 3,
        }
    }

    /// The class of [`Class::code`] `code`.
    pub const fn from_code(code: u8) -> Option<Class> {
        Some(match code {
            0 => Class::Signal,
            1 => Class::Teacher,
            2 => Class::Chat,
            3 => Class::Reaction,
            _ => return None,
        })
    }
}

/// A host-defined message kind ("page-turn", "chat-line", "flower"), as a
/// number. Kinds from [`Kind::RESERVED_FROM`] up are Roomkit's own control
/// messages (mute-all, degradation level); hosts may not send them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize), serde(transparent))]
pub struct Kind(pub u16);

impl Kind {
    /// The first kind number reserved for Roomkit.
    pub const RESERVED_FROM: u16 = 0xFF00;
    /// Signal: a room's mute-all switched. Payload: one byte, 1 = on, 0 = off.
    pub const MUTE_ALL: Kind = Kind(0xFF00);
    /// Signal: the node-wide degradation level switched. Payload: one byte,
    /// [`Level::code`](crate::Level::code).
    pub const LEVEL: Kind = Kind(0xFF01);
    /// Signal: a member moved to another sub-class. Payload: uin (u64 LE)
    /// then sub-class (u16 LE, `u16::MAX` for none).
    pub const SUBCLASS: Kind = Kind(0xFF02);

    /// Whether the kind is one of Roomkit's own.
    pub const fn is_reserved(self) -> bool {
        self.0 >= Self::RESERVED_FROM
    }
}

/// A sub-class of a big room. Chat fans out within a sub-class; teachers
/// and assistants belong to none and see every sub-class.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize), serde(transparent))]
pub struct SubclassId(pub u16);

/// Who sent a message, as the host authenticated it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct Sender {
    /// The sender.
    pub uin: Uin,
    /// The sender's role in the room.
    pub role: Role,
}

/// Which users a target names before its filters apply.
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(rename_all = "kebab-case"))]
#[non_exhaustive]
pub enum Scope {
    /// Everyone in the room.
    Room,
    /// One user (on all the terminals they are connected with).
    User(Uin),
    /// Listed users (at most [`Target::MAX_USERS`]).
    Users(Vec<Uin>),
}

/// A target expression: a scope, narrowed by every filter that is set.
///
/// A connection is a recipient when it is in the scope **and** its role is
/// in `roles` (if set) **and** its terminal is in `terminals` (if set)
/// **and** it is in `subclass` (if set; members in no sub-class, teachers
/// and assistants, count as in every sub-class) **and** its user is not
/// `exclude`.
///
/// ```
/// use room_core::{Role, RoleSet, Terminal, TerminalSet, Uin};
/// use room_push::{SubclassId, Target};
///
/// // Students on the apps in sub-class 7, except user 42.
/// let target = Target::room()
///     .roles(RoleSet::only(Role::Student))
///     .terminals(TerminalSet::apps())
///     .subclass(SubclassId(7))
///     .exclude(Uin(42));
/// assert!(target.validate().is_ok());
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct Target {
    /// Who, before filters.
    pub scope: Scope,
    /// Only these roles.
    pub roles: Option<RoleSet>,
    /// Only these terminals.
    pub terminals: Option<TerminalSet>,
    /// Only this sub-class (and members in none).
    pub subclass: Option<SubclassId>,
    /// Never this user (typically the sender).
    pub exclude: Option<Uin>,
}

impl Target {
    /// The most users a [`Scope::Users`] target may list.
    pub const MAX_USERS: usize = 1024;

    fn scoped(scope: Scope) -> Self {
        Target { scope, roles: None, terminals: None, subclass: None, exclude: None }
    }

    /// Everyone in the room.
    pub fn room() -> Self {
        Self::scoped(Scope::Room)
    }

    /// One user.
    pub fn user(uin: Uin) -> Self {
        Self::scoped(Scope::User(uin))
    }

    /// Listed users.
    pub fn users(uins: impl IntoIterator<Item = Uin>) -> Self {
        Self::scoped(Scope::Users(uins.into_iter().collect()))
    }

    /// Narrowed to `roles`.
    pub fn roles(mut self, roles: RoleSet) -> Self {
        self.roles = Some(roles);
        self
    }

    /// Narrowed to one role.
    pub fn role(self, role: Role) -> Self {
        self.roles(RoleSet::only(role))
    }

    /// Narrowed to `terminals`.
    pub fn terminals(mut self, terminals: TerminalSet) -> Self {
        self.terminals = Some(terminals);
        self
    }

    /// Narrowed to one terminal.
    pub fn terminal(self, terminal: Terminal) -> Self {
        self.terminals(TerminalSet::only(terminal))
    }

    /// Narrowed to a sub-class (members in no sub-class stay in).
    pub fn subclass(mut self, subclass: SubclassId) -> Self {
        self.subclass = Some(subclass);
        self
    }

    /// Without `uin`.
    pub fn exclude(mut self, uin: Uin) -> Self {
        self.exclude = Some(uin);
        self
    }

    /// Checks that the target can name anyone: a user list that is empty or
    /// too long, an empty role or terminal set, or a single user who is
    /// also excluded are refused.
    pub fn validate(&self) -> Result<(), TargetError> {
        match &self.scope {
            Scope::Users(uins) if uins.is_empty() => return Err(TargetError::NoUsers),
            Scope::Users(uins) if uins.len() > Self::MAX_USERS => {
                return Err(TargetError::TooManyUsers { listed: uins.len(), max: Self::MAX_USERS });
            }
            Scope::User(uin) if self.exclude == Some(*uin) => return Err(TargetError::OnlyUserExcluded),
            _ => {}
        }
        if self.roles.is_some_and(|r| r.is_empty()) {
            return Err(TargetError::NoRoles);
        }
        if self.terminals.is_some_and(|t| t.is_empty()) {
            return Err(TargetError::NoTerminals);
        }
        Ok(())
    }

    /// Whether a connection with these attributes is a recipient. This is
    /// the definition; the connection index answers the same question
    /// without looking at every connection.
    pub fn matches(&self, uin: Uin, role: Role, terminal: Terminal, subclass: Option<SubclassId>) -> bool {
        let in_scope = match &self.scope {
            Scope::Room => true,
            Scope::User(u) => *u == uin,
            Scope::Users(us) => us.contains(&uin),
        };
        in_scope
            && self.roles.is_none_or(|r| r.contains(role))
            && self.terminals.is_none_or(|t| t.contains(terminal))
            && match (self.subclass, subclass) {
                (Some(want), Some(have)) => want == have,
                _ => true,
            }
            && self.exclude != Some(uin)
    }

    /// Whether the target is the whole room or one sub-class of it, with no
    /// other filter: the shape chat batches are shared by.
    pub fn is_plain_audience(&self) -> bool {
        self.scope == Scope::Room && self.roles.is_none() && self.terminals.is_none() && self.exclude.is_none()
    }
}

/// Why a target can name nobody.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TargetError {
    /// A user list with no users.
    #[error("the target lists no users")]
    NoUsers,
    /// A user list over [`Target::MAX_USERS`].
    #[error("the target lists {listed} users; at most {max} may be listed")]
    TooManyUsers {
        /// Users listed.
        listed: usize,
        /// The limit.
        max: usize,
    },
    /// An empty role filter.
    #[error("the target's role filter is empty")]
    NoRoles,
    /// An empty terminal filter.
    #[error("the target's terminal filter is empty")]
    NoTerminals,
    /// One user, who is also excluded.
    #[error("the target names one user and excludes that same user")]
    OnlyUserExcluded,
}

/// A message as the classroom logic hands it to push.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// The room it belongs to.
    pub room: RoomKey,
    /// Its priority class.
    pub class: Class,
    /// Its host-defined kind.
    pub kind: Kind,
    /// Who sent it: `None` for the system (class logic, the teacher's
    /// console acting for the room).
    pub sender: Option<Sender>,
    /// Who receives it.
    pub target: Target,
    /// For [`Class::Reaction`]: how many (a burst of 10 likes is one message).
    /// Ignored by other classes.
    pub count: u32,
    /// The bytes, opaque to push.
    pub payload: Bytes,
    /// The id of the client request this message answers, or 0 for none.
    /// Push does not read it: it travels with the message (and in the
    /// shared cache's log) so that a room's next owner, reading the log's
    /// tail, can recognise a retried request its predecessor already
    /// numbered.
    pub origin: u64,
}

impl Message {
    /// A message of `class` and `kind` to the whole room, sent by the system.
    pub fn new(room: RoomKey, class: Class, kind: Kind, payload: impl Into<Bytes>) -> Self {
        Message {
            room,
            class,
            kind,
            sender: None,
            target: Target::room(),
            count: 1,
            payload: payload.into(),
            origin: 0,
        }
    }

    /// A reaction: `count` of `kind` from `sender` (payload empty).
    pub fn reaction(room: RoomKey, kind: Kind, sender: Sender, count: u32) -> Self {
        Message {
            room,
            class: Class::Reaction,
            kind,
            sender: Some(sender),
            target: Target::room(),
            count,
            payload: Bytes::new(),
            origin: 0,
        }
    }

    /// With a sender.
    pub fn from_sender(mut self, sender: Sender) -> Self {
        self.sender = Some(sender);
        self
    }

    /// With a target.
    pub fn to(mut self, target: Target) -> Self {
        self.target = target;
        self
    }

    /// Answering client request `origin` (0: none). See [`Message::origin`].
    pub fn with_origin(mut self, origin: u64) -> Self {
        self.origin = origin;
        self
    }
}
