//! Roomkit: the backend of live classes, as crates a platform embeds.
//!
//! This facade re-exports the parts and wires them:
//!
//! * [`core`]: ids, roles, terminals, the router (always).
//! * `heartbeat`, `memberlist`, `push`, `media_ctl` (features `heartbeat`,
//!   `memberlist`, `push`, `media-ctl`): the parts, for hosts that wire
//!   them themselves.
//! * [`ticket`]: signed, expiring room entry tickets (always).
//! * [`classroom`]: raised hands, reactions, answer cards and red packets
//!   (always; sans-IO).
//! * `service` (feature `service`, on by default): [`service::RoomService`], a tokio
//!   room service a host calls from its own transport (connect with a
//!   ticket, hand it client frames, write what it gives back), and
//!   [`wire`], the JSON protocol it speaks (docs/PROTOCOL.md).
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

pub mod classroom;
#[cfg(feature = "service")]
pub mod service;
pub mod ticket;
#[cfg(feature = "service")]
pub mod wire;
