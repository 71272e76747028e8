//! Roomkit push: what reaches whom, in what order, and what is given up
//! first when things go wrong.
#![forbid(unsafe_code)]
#![cfg_attr(docsrs, feature(doc_cfg))]

pub mod bus;
mod cache;
pub mod client;
pub mod codec;
pub mod connector;
pub mod degrade;
pub mod envelope;
pub mod gate;
pub mod limit;
pub mod message;
pub mod node;
pub mod subclass;

pub use bus::{Bus, BusError, InMemoryBus};
pub use client::{Received, Recovery, ReliableReceiver};
pub use codec::{BinaryCodec, Codec, FrameHeader, FrameKind};
pub use connector::{ByTerminal, Connector, Frame, SendError};
pub use degrade::{Governor, GovernorConfig, Level, Load, Thresholds};
pub use envelope::{DecodeError, Envelope};
pub use gate::{Gate, GateConfig, GateError, Joined, LimitScope};
pub use limit::{Decision, GlobalLimiter, KeyedLimiter, LimiterError, LocalGlobalLimiter, Quota, QuotaError};
pub use message::{Class, Kind, Message, Scope, Sender, SubclassId, Target, TargetError};
pub use node::{
    AckReply, CheckAnswer, ConnId, ConnSpec, Connected, DisconnectReason, NodeConfig, NodeError, NodeEvent,
    NodeStats, OverflowPolicy, PushNode, RecoveredFrame,
};
pub use subclass::{Move, SubclassError, SubclassPlanner};
