//! Events shared by the crates: members entering and leaving rooms.

use crate::id::MemberKey;
use crate::time::Timestamp;

/// Why a member left a room.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(rename_all = "snake_case"))]
#[non_exhaustive]
pub enum ExitReason {
    /// The client said goodbye.
    Left,
    /// Heartbeats stopped and the access layer confirmed the connection gone.
    TimedOut,
    /// Removed by the host (a teacher's kick, a ban, a duplicate login).
    Kicked,
    /// Moved to another room (a sub-class reassignment, a room merge).
    Moved,
    /// The host closed the room.
    RoomClosed,
}

/// What happened to a member.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(rename_all = "snake_case"))]
#[non_exhaustive]
pub enum MemberChange {
    /// The member is now present (on its first terminal).
    Entered,
    /// The member is gone (from its last terminal).
    Exited(ExitReason),
}

/// A member entered or left a room.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct MemberEvent {
    /// Who, where.
    pub member: MemberKey,
    /// What happened.
    pub change: MemberChange,
    /// When, on the clock of the node that decided it.
    pub at: Timestamp,
}
