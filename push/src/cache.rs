//! The per-room cache of reliable messages that answers checks.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use room_core::Timestamp;

use crate::message::{Class, Kind, SubclassId, Target};
use room_core::{Role, Terminal, Uin};

/// A message as a push node holds it: encoded once per wire format and
/// shared by every lane and the cache.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) class: Class,
    pub(crate) kind: crate::codec::FrameKind,
    pub(crate) seq: u64,
    pub(crate) accepted_at: Timestamp,
    pub(crate) target: Option<Target>,
    pub(crate) bodies: Box<[Bytes]>,
    pub(crate) msg_kind: Kind,
}

impl Shared {
    pub(crate) fn body(&self, format: u8) -> &Bytes {
        &self.bodies[usize::from(format)]
    }

    pub(crate) fn reaches(&self, uin: Uin, role: Role, terminal: Terminal, subclass: Option<SubclassId>) -> bool {
        self.target.as_ref().is_none_or(|t| t.matches(uin, role, terminal, subclass))
    }
}

/// What inserting a message did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Inserted {
    /// The next number: appended.
    Appended,
    /// Already held (the bus delivered it twice): ignored.
    Duplicate,
    /// Numbers were skipped: what was held no longer connects to the new
    /// message, so the cache starts again from it.
    AfterGap,
}

/// Reliable messages of one room, contiguous in sequence, bounded in count
/// and age.
#[derive(Debug)]
pub(crate) struct ReliableCache {
    /// Sequence number the next message should have.
    next: u64,
    entries: VecDeque<Arc<Shared>>,
    max_len: usize,
    max_age: Duration,
}

impl ReliableCache {
    pub(crate) fn new(max_len: usize, max_age: Duration) -> Self {
        ReliableCache { next: 1, entries: VecDeque::new(), max_len: max_len.max(1), max_age }
    }

    /// The newest sequence number seen.
    pub(crate) fn head(&self) -> u64 {
        self.next - 1
    }

    /// Forgets everything (a new epoch).
    pub(crate) fn restart(&mut self) {
        self.next = 1;
        self.entries.clear();
    }

    fn first(&self) -> u64 {
        self.next - self.entries.len() as u64
    }

    pub(crate) fn insert(&mut self, msg: Arc<Shared>, now: Timestamp) -> Inserted {
        let seq = msg.seq;
        let outcome = if seq < self.next {
            return Inserted::Duplicate;
        } else if seq == self.next {
            Inserted::Appended
        } else {
            self.entries.clear();
            Inserted::AfterGap
        };
        self.next = seq + 1;
        self.entries.push_back(msg);
        if self.entries.len() > self.max_len {
            self.entries.pop_front();
        }
        self.prune(now);
        outcome
    }

    /// The newest `n` messages held, newest first.
    pub(crate) fn newest(&self, n: usize) -> impl Iterator<Item = &Arc<Shared>> {
        self.entries.iter().rev().take(n)
    }

    /// Drops messages older than the age bound.
    pub(crate) fn prune(&mut self, now: Timestamp) {
        let horizon = now.saturating_sub(self.max_age);
        while self.entries.front().is_some_and(|m| m.accepted_at < horizon) {
            self.entries.pop_front();
        }
    }

    /// Messages numbered `after + 1 ..= upto`, if the cache holds all of them.
    pub(crate) fn range(&self, after: u64, upto: u64) -> Option<impl Iterator<Item = &Arc<Shared>>> {
        if upto > self.head() || (after < upto && after + 1 < self.first()) {
            return None;
        }
        let skip = (after + 1).saturating_sub(self.first()) as usize;
        let take = upto.saturating_sub(after) as usize;
        Some(self.entries.iter().skip(skip).take(take))
    }
}
