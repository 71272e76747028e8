//! A room owner's gate in a cluster, fenced by the shared cache.
//!
//! In a cluster each room's messages are numbered by the gate of the node
//! that owns the room. Ownership moves when nodes come and go, and for a
//! moment two nodes may both believe they own a room. [`FencedGate`] makes
//! that harmless:
//!
//! * a room is opened at the shared cache's head, in the same epoch, so a
//!   new owner continues the sequence and clients see no restart;
//! * every reliable envelope is appended to the cache before it may be
//!   published, and the cache refuses a number at or below its newest: of
//!   two owners numbering at once, one is refused, reopens the room at the
//!   new head and numbers again. A number is never published for two
//!   different messages.
//!
//! Chat and reactions are not numbered and pass straight through. A cache
//! that is unreachable cannot fence: the gate then numbers on its own
//! (what a cache's local fallback reports as [`Appended::Local`]), which is
//! correct while one node owns the room.

use std::collections::HashSet;

use room_core::{RoomKey, Timestamp};

use crate::envelope::Envelope;
use crate::gate::{Gate, GateConfig, GateError};
use crate::message::Message;
use crate::shared_cache::{Appended, SharedCache};

/// How many times a message refused by the fence is numbered again before
/// the gate gives up on it.
pub const FENCE_ATTEMPTS: u32 = 3;

/// What became of a message.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Numbered {
    /// Numbered (if reliable) and cached: publish it on the bus.
    Publish(Envelope),
    /// The gate refused it (rate limits, mute, bad input).
    Refused(GateError),
    /// Another owner took every number this gate tried: it was not
    /// published. The caller may retry later (the view is settling).
    Fenced,
}

/// A gate for the rooms one node owns. See the [module docs](self).
#[derive(Debug)]
pub struct FencedGate {
    gate: Gate,
    open: HashSet<RoomKey>,
    renumbered: u64,
}

impl FencedGate {
    /// A gate with `config`.
    pub fn new(config: GateConfig) -> Self {
        FencedGate { gate: Gate::new(config), open: HashSet::new(), renumbered: 0 }
    }

    /// The inner gate.
    pub fn gate(&self) -> &Gate {
        &self.gate
    }

    /// Messages numbered again after the fence refused their first number.
    pub fn renumbered(&self) -> u64 {
        self.renumbered
    }

    /// Whether `room` is open here.
    pub fn is_open(&self, room: RoomKey) -> bool {
        self.open.contains(&room)
    }

    /// Forgets `room` (this node no longer owns it): if it comes back, it
    /// reopens at the cache's head.
    pub fn release(&mut self, room: RoomKey) {
        if self.open.remove(&room) {
            let _ = self.gate.close_room(room);
        }
    }

    async fn open(
        &mut self,
        cache: &dyn SharedCache,
        now: Timestamp,
        room: RoomKey,
        epoch_floor: u64,
    ) -> Result<(), GateError> {
        if self.open.contains(&room) {
            return Ok(());
        }
        match cache.head(room).await {
            Ok(Some((epoch, head))) => self.gate.resume_room(now, room, 0, epoch, head)?,
            // Nothing cached (a new room, or the cache unreachable): a new
            // epoch, above any the push side follows whatever this clock
            // says (push nodes ignore older epochs).
            _ => self.gate.open_room(Timestamp::from_micros(now.as_micros().max(epoch_floor)), room)?,
        };
        self.open.insert(room);
        Ok(())
    }

    /// Numbers `message` (opening its room at the cache's head if needed)
    /// and appends it to `cache`. `epoch_floor`: an epoch a new sequence
    /// must exceed (the one this node's push side follows, plus one).
    pub async fn number(
        &mut self,
        cache: &dyn SharedCache,
        now: Timestamp,
        message: Message,
        epoch_floor: u64,
    ) -> Numbered {
        let room = message.room;
        for _ in 0..FENCE_ATTEMPTS {
            if let Err(e) = self.open(cache, now, room, epoch_floor).await {
                return Numbered::Refused(e);
            }
            let env = match self.gate.publish(now, message.clone()) {
                Ok(env) => env,
                Err(e) => return Numbered::Refused(e),
            };
            if env.seq == 0 {
                return Numbered::Publish(env);
            }
            match cache.append(&env).await {
                Ok(Appended::Duplicate) => {
                    // Another owner has this number: reopen at its head.
                    self.renumbered += 1;
                    self.release(room);
                }
                // Stored, or held locally by a cache that cannot reach its
                // engine; an error is an unreachable cache too.
                Ok(_) | Err(_) => return Numbered::Publish(env),
            }
        }
        Numbered::Fenced
    }
}
