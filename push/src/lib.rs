#![doc = include_str!("../README.md")]
//!
//! ---
//!
//! Roomkit push: what reaches whom, in what order, and what is given up
//! first when things go wrong.
//!
//! In the design this follows, logic servers that each pulled member
//! lists and pushed to every terminal themselves gave way to one interface:
//! logic -> message queue -> push proxy -> per-terminal channels. This
//! crate is that layer, sans-IO:
//!
//! * [`Message`] and [`Target`]: a room, a priority [`Class`], a kind, a
//!   sender and a `Bytes` payload, aimed at one user, listed users or the
//!   room, narrowed by roles, terminals and a sub-class, minus one user.
//! * [`Gate`] (logic side): checks payload size, target, permissions,
//!   mutes, per-user and per-room GCRA limits ([`Quota`]) and the
//!   degradation [`Level`]; numbers signal and teacher messages in the
//!   room's sequence; assigns learners to balanced sub-classes
//!   ([`SubclassPlanner`]); turns mute-all, level switches and sub-class
//!   moves into signal messages. Out comes an [`Envelope`] for the [`Bus`].
//! * [`FencedGate`] (logic side, in a cluster): a room owner's gate
//!   fenced by the [`SharedCache`], sans-IO: every numbered envelope is
//!   appended to the cache before it is published, so of two owners
//!   numbering a room during a handover, one is refused and renumbers
//!   after the other. The cache also keeps each room owner's state
//!   ([`SharedCache::save_state`]) for the room's next owner.
//! * [`PushNode`] (push side): a connection index per room (by user, role,
//!   terminal, sub-class) so narrow targets never scan the room; every
//!   message encoded once per wire format ([`Codec`]) and shared by every
//!   recipient's lane; per-connection lanes (reliable, reaction totals,
//!   chat) drained to the host's [`Connector`]s in priority order; chat
//!   merged into batch frames per window, reactions into room totals; slow
//!   connections shed chat first and get a resync marker (or are dropped,
//!   by [`OverflowPolicy`]) if even their reliable lane overflows; a
//!   per-room cache (bounded in count and age, with an epoch) answers
//!   acks and checks. With [`Delivery::Log`] the node publishes each
//!   reliable message, closed chat window and reaction window once per
//!   room instead ([`PushNode::poll_log`]); the host's writers read the
//!   room's log, each through the [`Follower`] the node gave it, which
//!   picks what reaches its connection and numbers it exactly as its
//!   lanes would (the service's writers work this way).
//! * [`ReliableReceiver`]: the client's rules (gap detection by each
//!   frame's `prev`, acks, checks, resets), for tests, load generators
//!   and as the reference for browser and app clients.
//! * [`GlobalLimiter`]: a limiter shared by every node to protect
//!   downstream services ([`LocalGlobalLimiter`] in memory; Redis in the
//!   adapters), and [`Governor`], which turns load samples into levels.
//!
//! # Guarantees
//!
//! | class | order | loss |
//! | --- | --- | --- |
//! | signal, teacher | per room sequence; per connection in sequence order, each frame naming the previous one sent to that connection | never silent: delivered, recovered by check from the cache, or reported by a reset when the cache no longer covers the range |
//! | chat | per connection in acceptance order | shed oldest-first from a full chat lane, sampled out of full batches under load, refused at the gate by mutes, limits and levels |
//! | reaction | totals only | merged: a connection holds the newest totals |
//!
//! # Bad input
//!
//! | input | answer |
//! | --- | --- |
//! | unknown room, closed room | [`GateError::UnknownRoom`], [`NodeError::UnknownRoom`] |
//! | empty or oversized user list, empty role or terminal filter | [`GateError::Target`] |
//! | payload over the limit, reaction count out of range, reserved kind | [`GateError::PayloadTooLarge`], [`GateError::BadCount`], [`GateError::ReservedKind`] |
//! | a learner sending signal or teacher messages | [`GateError::NotAllowed`] |
//! | chat while muted | [`GateError::RoomMuted`], [`GateError::UserMuted`] |
//! | floods | [`GateError::RateLimited`] with the wait; a storm of distinct senders fills the limiter to its bound and is refused ([`LimiterError::Full`]) |
//! | unknown or stale connection ids | [`NodeError::UnknownConnection`] (ids carry a generation) |
//! | an ack or check beyond what was sent | [`NodeError::AckFromFuture`], [`NodeError::CheckFromFuture`] |
//! | an ack or check in a stale epoch | [`AckReply::Reset`], [`CheckAnswer::Reset`] |
//! | duplicated or out-of-sequence envelopes from the bus | duplicates ignored; after a gap every client of the room is made to check, and checks across the gap get a reset |
//! | envelopes from an older epoch (a restarted gate's late messages) | ignored and counted |
//! | a flood of distinct reaction kinds | counted up to `max_reaction_kinds` per room, the rest dropped and counted |
//! | garbage on the bus | [`DecodeError`] naming the field |
//! | a connector that blocks | frames stay queued (bounded lanes, chat shed first) until [`PushNode::set_writable`] |
//! | a connector that errors | the connection is dropped with [`NodeEvent::Disconnected`] |
#![forbid(unsafe_code)]
#![cfg_attr(docsrs, feature(doc_cfg))]

pub mod bus;
mod cache;
pub mod client;
pub mod codec;
pub mod connector;
pub mod degrade;
pub mod envelope;
pub mod fenced;
pub mod gate;
pub mod limit;
pub mod log;
pub mod message;
pub mod node;
pub mod shared_cache;
pub mod subclass;

pub use bus::{Bus, BusError, InMemoryBus};
pub use client::{Received, Recovery, ReliableReceiver};
pub use codec::{BinaryCodec, Codec, FrameHeader, FrameKind};
pub use connector::{ByTerminal, Connector, Frame, SendError};
pub use degrade::{Governor, GovernorConfig, Level, Load, Thresholds};
pub use envelope::{DecodeError, Envelope};
pub use fenced::{FENCE_ATTEMPTS, FenceOutput, FencedGate};
pub use gate::{Gate, GateConfig, GateError, Joined, LimitScope};
pub use limit::{Decision, GlobalLimiter, KeyedLimiter, LimiterError, LocalGlobalLimiter, Quota, QuotaError};
pub use log::{Follower, LogEntry};
pub use message::{Class, Kind, Message, Scope, Sender, SubclassId, Target, TargetError};
pub use node::{
    AckReply, CheckAnswer, ConnId, ConnSpec, Connected, Delivery, DisconnectReason, LogOutput, NodeConfig, NodeError,
    NodeEvent, NodeStats, OverflowPolicy, PushNode, RecoveredFrame,
};
pub use shared_cache::{Appended, InMemorySharedCache, Saved, SharedCache, SharedCacheError};
pub use subclass::{Move, SubclassError, SubclassPlanner};
