//! The client's half of reliable delivery, sans-IO: what a browser page,
//! an app or a load generator does with frames, acks and check answers.
//! Roomkit's example page implements the same rules in JavaScript.

use crate::codec::{FrameHeader, FrameKind};
use crate::node::{AckReply, CheckAnswer, Connected};

/// What to do with a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Received {
    /// Chat or reactions: show it (they are not sequenced).
    Unsequenced,
    /// The next reliable message: deliver it.
    Deliver,
    /// Already delivered: drop it.
    Duplicate,
    /// Something is missing before this frame (or the node asked for a
    /// resync): drop the frame and send a check with this epoch and `after`;
    /// the answer covers this frame too.
    Check {
        /// The epoch to check in.
        epoch: u64,
        /// The last contiguous sequence number.
        after: u64,
    },
}

/// What a check answer changed.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Recovery {
    /// These messages (sequence numbers, in order) are to be delivered;
    /// everything up to the receiver's new contiguous number is accounted for.
    Delivered(Vec<u64>),
    /// The node no longer has the range: reload the room's state; numbers
    /// `from..=to` of the old epoch are lost to this client (reported,
    /// never silent), and the receiver continues in the new epoch.
    Reset {
        /// The old epoch.
        epoch: u64,
        /// The first number not received.
        from: u64,
    },
}

/// Tracks a client's reliable sequence: the last contiguous number, gap
/// detection by each frame's `prev`, and acks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReliableReceiver {
    epoch: u64,
    contiguous: u64,
}

impl ReliableReceiver {
    /// A receiver starting where the node said the room's sequence was.
    pub fn new(connected: &Connected) -> Self {
        ReliableReceiver { epoch: connected.epoch, contiguous: connected.head }
    }

    /// A receiver resuming at `contiguous` in `epoch` (after a reconnect).
    pub fn resume(epoch: u64, contiguous: u64) -> Self {
        ReliableReceiver { epoch, contiguous }
    }

    /// The epoch.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// The last contiguous sequence number.
    pub fn contiguous(&self) -> u64 {
        self.contiguous
    }

    /// The ack to send on the timer: (epoch, last contiguous number).
    pub fn ack(&self) -> (u64, u64) {
        (self.epoch, self.contiguous)
    }

    fn check(&self) -> Received {
        Received::Check { epoch: self.epoch, after: self.contiguous }
    }

    /// Classifies a frame.
    pub fn on_frame(&mut self, header: &FrameHeader) -> Received {
        if header.kind == FrameKind::Resync {
            return self.check();
        }
        if !header.class.is_reliable() {
            return Received::Unsequenced;
        }
        if self.epoch == 0 && self.contiguous == 0 && header.prev == 0 {
            // The room's first reliable message: it sets the epoch.
            self.epoch = header.epoch;
        }
        if header.epoch != self.epoch {
            return self.check();
        }
        if header.seq <= self.contiguous {
            return Received::Duplicate;
        }
        if header.prev > self.contiguous {
            return self.check();
        }
        self.contiguous = header.seq;
        Received::Deliver
    }

    /// Takes the node's reply to an ack; returns the check to send, if any.
    pub fn on_ack_reply(&mut self, reply: &AckReply) -> Option<Received> {
        match *reply {
            AckReply::Behind { last } if last > self.contiguous => Some(self.check()),
            AckReply::Reset { .. } => Some(self.check()),
            _ => None,
        }
    }

    /// Takes a check answer.
    pub fn on_answer(&mut self, answer: &CheckAnswer) -> Recovery {
        match answer {
            CheckAnswer::Messages { epoch, upto, frames } if *epoch == self.epoch || self.epoch == 0 => {
                self.epoch = *epoch;
                let mut delivered = Vec::new();
                for f in frames {
                    if f.header.seq > self.contiguous {
                        delivered.push(f.header.seq);
                        self.contiguous = f.header.seq;
                    }
                }
                self.contiguous = self.contiguous.max(*upto);
                Recovery::Delivered(delivered)
            }
            CheckAnswer::Messages { .. } => Recovery::Delivered(Vec::new()),
            // A late copy of an answer the receiver has already moved past.
            CheckAnswer::Reset { epoch, head } if *epoch == self.epoch && *head <= self.contiguous => {
                Recovery::Delivered(Vec::new())
            }
            CheckAnswer::Reset { epoch, head } => {
                let lost = Recovery::Reset { epoch: self.epoch, from: self.contiguous + 1 };
                self.epoch = *epoch;
                self.contiguous = *head;
                lost
            }
        }
    }
}
