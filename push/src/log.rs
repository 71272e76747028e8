//! Log delivery: a room's frames published once, as a log, and read by
//! each connection through a [`Follower`], instead of a copy queued per
//! connection.
//!
//! With [`Delivery::Log`](crate::node::Delivery::Log) a push node hands
//! its host one [`LogEntry`] per reliable message, per closed chat window
//! and per reaction window ([`PushNode::poll_log`](crate::PushNode::poll_log)), whatever
//! the room's size: publishing costs the same for three members or
//! sixty thousand. The host keeps each room's recent entries where its
//! writers can read them, and each writer keeps the [`Follower`] the node
//! gave it ([`PushNode::follow`](crate::PushNode::follow)): it picks the
//! entries that reach its connection and numbers them (`prev`) exactly as
//! the node's lanes would have. A writer that falls behind what the host
//! keeps jumps to the newest entry with a resync marker
//! ([`Follower::lagged`]); its client recovers the reliable messages with
//! a check. A reliable message for a few connections is handed to each
//! of them instead ([`LogOutput::Direct`](crate::node::LogOutput::Direct)): the host puts it in
//! their own queues, at its place among the room's entries, and their
//! followers take it as they would have from the log.

use std::sync::Arc;

use bytes::Bytes;
use room_core::{Role, Terminal, Uin};

use crate::cache::Shared;
use crate::codec::{FrameHeader, FrameKind};
use crate::message::{Class, SubclassId};

/// One entry of a room's log. Cheap to clone (shared).
#[derive(Debug, Clone)]
pub struct LogEntry(Arc<Entry>);

#[derive(Debug)]
pub(crate) enum Entry {
    /// A reliable message, for the connections its target reaches.
    Reliable { epoch: u64, msg: Arc<Shared> },
    /// The bus lost the numbers up to `end`: the next message's `prev`
    /// names it, so that every client checks.
    Hole { epoch: u64, end: u64 },
    /// The room's sequence restarted in `epoch`: every client resyncs.
    Restart { epoch: u64 },
    /// A chat window closed: the batch of the connections in no
    /// sub-class, the batch of the sub-classes without lines of their
    /// own, and each other sub-class's batch (sorted by sub-class).
    Chat { everything: Option<Arc<Shared>>, room_wide: Option<Arc<Shared>>, own: Vec<(SubclassId, Arc<Shared>)> },
    /// The connections in no sub-class have a full batch before the
    /// window closes for the others.
    ChatToUnassigned(Arc<Shared>),
    /// The room's reaction totals, for every connection.
    Reactions(Arc<Shared>),
}

impl LogEntry {
    pub(crate) fn new(entry: Entry) -> Self {
        LogEntry(Arc::new(entry))
    }

    /// Where the room's reliable sequence stands after this entry, if it
    /// moves it: `(epoch, newest number)`. A host keeps the latest to
    /// tell a writer that fell behind where to continue
    /// ([`Follower::lagged`]).
    pub fn sequence(&self) -> Option<(u64, u64)> {
        match &*self.0 {
            Entry::Reliable { epoch, msg } => Some((*epoch, msg.seq)),
            Entry::Hole { epoch, end } => Some((*epoch, *end)),
            Entry::Restart { epoch } => Some((*epoch, 0)),
            Entry::Chat { .. } | Entry::ChatToUnassigned(_) | Entry::Reactions(_) => None,
        }
    }

    /// The bytes of the bodies the entry holds (every wire format, every
    /// audience): what keeping it costs a host.
    pub fn body_bytes(&self) -> usize {
        let size = |m: &Arc<Shared>| m.bodies.iter().map(Bytes::len).sum::<usize>();
        match &*self.0 {
            Entry::Reliable { msg, .. } | Entry::ChatToUnassigned(msg) | Entry::Reactions(msg) => size(msg),
            Entry::Hole { .. } | Entry::Restart { .. } => 0,
            Entry::Chat { everything, room_wide, own } => {
                everything.iter().chain(room_wide).map(size).sum::<usize>()
                    + own.iter().map(|(_, b)| size(b)).sum::<usize>()
            }
        }
    }
}

/// One connection's reading of its room's log: who it is (for targets and
/// chat batches) and the last reliable number it was given (each frame's
/// `prev`). Sans-IO: the host's writer calls [`take`](Self::take) for
/// each entry in order, from the position [`PushNode::follow`](crate::PushNode::follow)
/// named, and applies the node's moves
/// ([`LogOutput::Moved`](crate::node::LogOutput::Moved)) at their
/// positions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Follower {
    pub(crate) uin: Uin,
    pub(crate) role: Role,
    pub(crate) terminal: Terminal,
    pub(crate) subclass: Option<SubclassId>,
    pub(crate) format: u8,
    pub(crate) epoch: u64,
    pub(crate) last: u64,
}

impl Follower {
    /// The connection's sub-class as the follower has it.
    pub fn subclass(&self) -> Option<SubclassId> {
        self.subclass
    }

    /// From the next entry on, the connection is in `subclass`.
    pub fn set_subclass(&mut self, subclass: Option<SubclassId>) {
        self.subclass = subclass;
    }

    /// The last reliable number given to the connection.
    pub fn last(&self) -> u64 {
        self.last
    }

    /// The room's sequence epoch as the follower has it.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// The frame `entry` gives this connection, if any: the per-connection
    /// header and the body, encoded once for every reader.
    #[must_use = "a frame taken here is the connection's to write"]
    pub fn take(&mut self, entry: &LogEntry) -> Option<(FrameHeader, Bytes)> {
        // Merged frames (chat batches, reaction totals): no numbers.
        let chat = |epoch: u64, batch: &Arc<Shared>, format: u8| {
            let header = FrameHeader { kind: batch.kind, class: batch.class, epoch, seq: 0, prev: 0 };
            Some((header, batch.body(format).clone()))
        };
        match &*entry.0 {
            Entry::Reliable { epoch, msg } => {
                // A number at or below the last one given in this epoch
                // came as a direct entry after a resync marker that
                // already named it (the client checks for it).
                let covered = *epoch == self.epoch && msg.seq <= self.last;
                self.epoch = *epoch;
                if covered || !msg.reaches(self.uin, self.role, self.terminal, self.subclass) {
                    return None;
                }
                let prev = std::mem::replace(&mut self.last, msg.seq);
                let header = FrameHeader { kind: msg.kind, class: msg.class, epoch: *epoch, seq: msg.seq, prev };
                Some((header, msg.body(self.format).clone()))
            }
            Entry::Hole { epoch, end } => {
                self.epoch = *epoch;
                self.last = self.last.max(*end);
                None
            }
            Entry::Restart { epoch } => {
                self.epoch = *epoch;
                self.last = 0;
                Some((self.resync_header(), Bytes::new()))
            }
            Entry::Chat { everything, room_wide, own } => {
                let batch = match self.subclass {
                    None => everything.as_ref(),
                    Some(s) => own.binary_search_by_key(&s, |(k, _)| *k).ok().map(|i| &own[i].1).or(room_wide.as_ref()),
                };
                chat(self.epoch, batch?, self.format)
            }
            Entry::ChatToUnassigned(batch) if self.subclass.is_none() => chat(self.epoch, batch, self.format),
            Entry::ChatToUnassigned(_) => None,
            Entry::Reactions(totals) => chat(self.epoch, totals, self.format),
        }
    }

    /// The connection fell behind what its host keeps of the log: it
    /// continues after the newest entry, where the room's sequence stands
    /// at `(epoch, newest)` ([`LogEntry::sequence`] of the newest entry
    /// that has one), and its client is told to check by the resync
    /// marker returned.
    #[must_use = "the client must be told to check"]
    pub fn lagged(&mut self, epoch: u64, newest: u64) -> FrameHeader {
        // Numbers of another epoch do not compare.
        self.last = if epoch == self.epoch { self.last.max(newest) } else { newest };
        self.epoch = epoch;
        self.resync_header()
    }

    fn resync_header(&self) -> FrameHeader {
        FrameHeader { kind: FrameKind::Resync, class: Class::Signal, epoch: self.epoch, seq: self.last, prev: 0 }
    }
}
