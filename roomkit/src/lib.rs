//! Roomkit: the backend of live classes, as crates a platform embeds.
//!
//! This facade re-exports the parts and wires them:
//!
//! * [`core`]: ids, roles, terminals, the router (always).
//! * `heartbeat`, `memberlist`, `push`, `media_ctl` (features `heartbeat`,
//!   `memberlist`, `push`, `media-ctl`): the parts, for hosts that wire
//!   them themselves.
//! * [`ticket`]: signed, expiring room entry tickets (always).
//! * [`classroom`], [`wire`], [`node`] (the room service's sans-IO core,
//!   `room-service`): raised hands, reactions, answer cards and red
//!   packets; the JSON protocol clients speak (docs/PROTOCOL.md); one node
//!   of a room service and the transports it runs over.
//! * `service` (feature `service`, on by default): [`service::RoomService`],
//!   that node on tokio, for a single process (in memory) or a node of a
//!   cluster (NATS and Redis transports from `room-nats` and `room-redis`):
//!   a host calls it from its own transport (connect with a ticket, hand it
//!   client frames, write what it gives back).
#![forbid(unsafe_code)]
#![cfg_attr(docsrs, feature(doc_cfg))]

pub use room_core as core;
#[cfg(feature = "heartbeat")]
pub use room_heartbeat as heartbeat;
#[cfg(feature = "media-ctl")]
pub use room_media_ctl as media_ctl;
#[cfg(feature = "memberlist")]
pub use room_memberlist as memberlist;
#[cfg(feature = "push")]
pub use room_push as push;

pub use room_service::{classroom, host, kinds, peer, transport, wire};
/// The room service's sans-IO core ([`room_service`]).
pub mod node {
    pub use room_service::{
        Admission, CacheAnswer, CacheOp, ClientSink, ConfigError, EntryError, FrameError, NodeStats, Outbound, Output,
        RoomNode, RoomNodeConfig,
    };
}
#[cfg(feature = "service")]
pub mod service;
pub mod ticket;
