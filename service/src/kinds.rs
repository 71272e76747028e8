//! The host's own message kinds: a whiteboard stroke, a courseware page
//! turn, a quiz of the platform's. Each is registered with who may send
//! it, its class, who gets it and how often one member may send it;
//! clients send it as `{"t":"custom","kind","data","to"?}` and the others
//! receive it like any pushed message. A [`KindFilter`] sees every one
//! before it leaves the sender's node and may veto it.
//!
//! ```
//! use room_core::{Role, RoleSet};
//! use room_push::{Class, Kind, Quota};
//! use room_service::kinds::{Audience, CustomKind, CustomKinds};
//!
//! let mut kinds = CustomKinds::default();
//! // Strokes on the whiteboard: teachers draw, everyone sees, 20 a second.
//! kinds.register(
//!     CustomKind::new(Kind(300), Class::Signal)
//!         .senders(RoleSet::staff())
//!         .rate(Quota::per_second(20)?.with_burst(40)?),
//! )?;
//! // A student's note to the teacher.
//! kinds.register(
//!     CustomKind::new(Kind(301), Class::Chat).senders(RoleSet::only(Role::Student)).audience(Audience::Staff),
//! )?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use room_core::{Role, RoleSet, RoomKey, Uin};
use room_push::{Class, Kind, Quota};

/// Who receives a custom message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Audience {
    /// Everyone in the room (but the sender).
    Room,
    /// Teachers and assistants.
    Staff,
    /// The sender's sub-class and the staff, like chat (chat class only).
    Subclass,
    /// One member the sender names with `to`.
    User,
}

/// A kind the host registered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CustomKind {
    /// The kind (from [`HOST_FIRST`](crate::wire::kinds::HOST_FIRST) up to
    /// the reserved kinds).
    pub kind: Kind,
    /// Who may send it.
    pub senders: RoleSet,
    /// Its class: signal and teacher are numbered and recovered, chat
    /// may be shed (and follows the chat rules: mutes, limits).
    pub class: Class,
    /// Who gets it.
    pub audience: Audience,
    /// How often one member may send it.
    pub rate: Quota,
    /// How often the whole room may (reliable classes), if bounded.
    pub room_rate: Option<Quota>,
    /// The largest `data`, in bytes of JSON.
    pub max_data: usize,
}

impl CustomKind {
    /// A kind of `class` anyone may send to the room, 5 a second (bursts
    /// of 10) per member, with up to 2 KiB of data.
    pub fn new(kind: Kind, class: Class) -> CustomKind {
        CustomKind {
            kind,
            senders: RoleSet::all(),
            class,
            audience: Audience::Room,
            rate: Quota::per_second(5)
                .and_then(|q| q.with_burst(10))
                .unwrap_or(room_push::GateConfig::default().user_quota),
            room_rate: None,
            max_data: 2048,
        }
    }

    /// Who may send it.
    pub fn senders(mut self, senders: RoleSet) -> CustomKind {
        self.senders = senders;
        self
    }

    /// Who gets it.
    pub fn audience(mut self, audience: Audience) -> CustomKind {
        self.audience = audience;
        self
    }

    /// How often one member may send it.
    pub fn rate(mut self, rate: Quota) -> CustomKind {
        self.rate = rate;
        self
    }

    /// How often the whole room may send it.
    pub fn room_rate(mut self, rate: Quota) -> CustomKind {
        self.room_rate = Some(rate);
        self
    }

    /// The largest `data`.
    pub fn max_data(mut self, bytes: usize) -> CustomKind {
        self.max_data = bytes;
        self
    }
}

/// A custom message on its way, as a [`KindFilter`] sees it.
#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
pub struct CustomMessage<'a> {
    /// The room.
    pub room: RoomKey,
    /// Who sends it.
    pub from: Uin,
    /// Their role.
    pub role: Role,
    /// Its kind.
    pub kind: Kind,
    /// Its data (JSON).
    pub data: &'a [u8],
    /// The member it is for ([`Audience::User`]).
    pub to: Option<Uin>,
}

/// What a [`KindFilter`] decides.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Verdict {
    /// Let it through.
    Allow,
    /// Refuse it: the sender gets a `vetoed` error with this reason.
    Veto(String),
}

/// The host's look at every custom message before it is sent on (a word
/// filter, an audit log). Runs on the sender's node, inside the node's
/// step: it must be quick.
pub trait KindFilter: Send + Sync {
    /// Whether `message` goes on.
    fn check(&self, message: &CustomMessage<'_>) -> Verdict;
}

impl<F: Fn(&CustomMessage<'_>) -> Verdict + Send + Sync> KindFilter for F {
    fn check(&self, message: &CustomMessage<'_>) -> Verdict {
        self(message)
    }
}

/// Why a kind cannot be registered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum KindError {
    /// Outside the host's range.
    #[error("kind {0} is not a host's: use {first} to {last}", first = crate::wire::kinds::HOST_FIRST.0, last = Kind::RESERVED_FROM - 1)]
    NotAHostKind(u16),
    /// Registered already.
    #[error("kind {0} is registered already")]
    Duplicate(u16),
    /// Reactions are counted, not sent: they cannot be custom.
    #[error("a custom kind cannot be of the reaction class")]
    Reaction,
    /// Nobody may send it.
    #[error("kind {0} names no sender role")]
    NoSenders(u16),
    /// [`Audience::Subclass`] is for the chat class.
    #[error("kind {0}: a sub-class audience is for the chat class")]
    SubclassNotChat(u16),
    /// Data of zero bytes, or more than a frame holds.
    #[error("kind {kind}: max_data {max} must be within 2 to {limit} bytes")]
    MaxData {
        /// The kind.
        kind: u16,
        /// What was asked.
        max: usize,
        /// The bound.
        limit: usize,
    },
}

/// The kinds a node accepts from clients, and the host's filter.
#[derive(Clone, Default)]
pub struct CustomKinds {
    kinds: BTreeMap<u16, CustomKind>,
    filter: Option<Arc<dyn KindFilter>>,
}

impl fmt::Debug for CustomKinds {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CustomKinds")
            .field("kinds", &self.kinds.keys().collect::<Vec<_>>())
            .field("filter", &self.filter.is_some())
            .finish()
    }
}

impl CustomKinds {
    /// The largest `max_data` (a client frame is at most a few KiB).
    pub const MAX_DATA: usize = 60 * 1024;

    /// Registers `kind`.
    pub fn register(&mut self, kind: CustomKind) -> Result<(), KindError> {
        let k = kind.kind.0;
        if k < crate::wire::kinds::HOST_FIRST.0 || kind.kind.is_reserved() {
            return Err(KindError::NotAHostKind(k));
        }
        if kind.class == Class::Reaction {
            return Err(KindError::Reaction);
        }
        if kind.senders == RoleSet::EMPTY {
            return Err(KindError::NoSenders(k));
        }
        if kind.audience == Audience::Subclass && kind.class != Class::Chat {
            return Err(KindError::SubclassNotChat(k));
        }
        if !(2..=Self::MAX_DATA).contains(&kind.max_data) {
            return Err(KindError::MaxData { kind: k, max: kind.max_data, limit: Self::MAX_DATA });
        }
        if self.kinds.contains_key(&k) {
            return Err(KindError::Duplicate(k));
        }
        self.kinds.insert(k, kind);
        Ok(())
    }

    /// With `filter` looking at every custom message.
    pub fn with_filter(mut self, filter: impl KindFilter + 'static) -> CustomKinds {
        self.filter = Some(Arc::new(filter));
        self
    }

    /// The registration of `kind`.
    pub fn get(&self, kind: u16) -> Option<&CustomKind> {
        self.kinds.get(&kind)
    }

    /// Every registered kind, in order.
    pub fn kinds(&self) -> impl Iterator<Item = Kind> + '_ {
        self.kinds.keys().map(|k| Kind(*k))
    }

    /// What the filter says of `message` (no filter: allowed).
    pub fn check(&self, message: &CustomMessage<'_>) -> Verdict {
        self.filter.as_ref().map_or(Verdict::Allow, |f| f.check(message))
    }
}
