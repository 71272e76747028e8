#![doc = include_str!("../README.md")]
//!
//! ---
//!
//! Roomkit's room service as a sans-IO core.
//!
//! A platform deploys one room service: on one machine it is a cluster of
//! one, in memory; on many, the same code runs over NATS and Redis. This
//! crate is that service without any I/O, so the same core runs under the
//! tokio driver of the `roomkit` crate, under a simulator in virtual time
//! (this crate's tests), or under a host's own event loop:
//!
//! * [`RoomNode`]: one node (access, heartbeat sessions, the rooms it
//!   owns), driven by inputs with `now` and outputs it asks the driver to
//!   carry out; see its docs for the call order.
//! * [`transport`]: the bundle of transports a node runs over (bus, shared
//!   cache, global limiter, peer links, cluster view), with in-memory
//!   implementations for a cluster of one.
//! * [`host`]: what a business backend asks of the service (publish,
//!   presence, kick, close) and the events it is told.
//! * [`kinds`]: the host's own message kinds clients may send.
//! * [`peer`]: what nodes say to each other.
//! * [`classroom`]: raised hands, reactions, answer cards and red packets
//!   (sans-IO, with snapshots a room's next owner restores).
//! * [`wire`]: the JSON protocol clients speak, described in [`protocol`].
#![forbid(unsafe_code)]
#![cfg_attr(docsrs, feature(doc_cfg))]

pub mod classroom;
pub mod host;
pub mod kinds;
mod node;
pub mod peer;
#[doc = include_str!("../PROTOCOL.md")]
pub mod protocol {}
pub mod transport;
pub mod wire;

pub use node::{
    Admission, Budgets, CacheAnswer, CacheOp, ClientSink, ConfigError, EntryError, FrameError, NodeStats, Outbound,
    Output, RoomNode, RoomNodeConfig, RoomSizes,
};
