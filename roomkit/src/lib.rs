#![doc = include_str!("../README.md")]
//!
//! ---
//!
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
//!   packets; the JSON protocol clients speak ([`protocol`]); one node
//!   of a room service and the transports it runs over.
//! * `service` (feature `service`, on by default): [`service::RoomService`],
//!   that node on tokio, for a single process (in memory) or a node of a
//!   cluster (NATS and Redis transports from `room-nats` and `room-redis`):
//!   a host calls it from its own transport (connect with a ticket, hand it
//!   client frames, write what it gives back).
//! * [`host`], [`kinds`]: the host's side of a running class: publish from
//!   the server, ask who is present, kick, ban, revoke tickets, close a
//!   room, follow room events, and register the platform's own message
//!   kinds.
//!
//! # The host's side
//!
//! The business backend acts on a class through the same service the
//! clients connect to, on whichever node of a cluster it calls:
//!
//! ```no_run
//! # #[cfg(feature = "service")]
//! # async fn host(keys: roomkit::ticket::KeyRing) -> Result<(), Box<dyn std::error::Error>> {
//! use std::time::Duration;
//! use room_core::{BusinessId, MemberKey, RoomId, RoomKey, Uin};
//! use room_push::{Class, Kind, Quota, Target};
//! use roomkit::host::{EventKind, Revocation};
//! use roomkit::kinds::{Audience, CustomKind};
//! use roomkit::service::{RoomService, ServiceConfig};
//!
//! let mut config = ServiceConfig::new(keys);
//! // A kind of the platform's own: learners send their page turns to
//! // the staff, at most 2 a second each.
//! config.node.kinds.register(
//!     CustomKind::new(Kind(400), Class::Signal).audience(Audience::Staff).rate(Quota::per_second(2)?),
//! )?;
//! // A room nobody has been in for this long is let go.
//! config.node.room_idle = Duration::from_secs(60);
//! let service = RoomService::start(config).await?;
//!
//! // Follow what happens in every room this node owns. The reader is
//! // bounded: one that falls behind is told how many events it missed.
//! let mut events = service.events();
//! tokio::spawn(async move {
//!     while let Some(event) = events.next().await {
//!         match event {
//!             Ok(e) if matches!(e.what, EventKind::Entered { .. }) => { /* bill the minute */ }
//!             Ok(_) => {}
//!             Err(lagged) => { /* reconcile with counts() and members() */ let _ = lagged; }
//!         }
//!     }
//! });
//!
//! let room = RoomKey::new(BusinessId(1), RoomId(42));
//! let notice = bytes::Bytes::from_static(br#"{"text":"class starts in 1 minute"}"#);
//! service.publish(room, Target::room(), Class::Teacher, Kind(300), notice).await?;
//! let present = service.counts(room).await?.total();
//! let member = MemberKey::new(BusinessId(1), RoomId(42), Uin(1001));
//! if service.presence(member).await?.is_some() {
//!     // Out, and kept out for ten minutes; their tickets so far are void.
//!     service.kick(member, "disrupting the class", Some(Duration::from_secs(600))).await?;
//!     service.revoke(room, Revocation::User(Uin(1001)), Duration::from_secs(3_600)).await?;
//! }
//! let told = service.close_room(room, "the class is over").await?;
//! # let _ = (present, told); Ok(()) }
//! ```
//!
//! The repository's example servers put the same calls behind an HTTP
//! API with an OpenAPI document, for backends in other languages.
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

pub use room_service::{classroom, host, kinds, peer, protocol, transport, wire};
/// The room service's sans-IO core ([`room_service`]).
pub mod node {
    pub use room_service::{
        Admission, Budgets, CacheAnswer, CacheOp, ClientSink, ConfigError, EntryError, FrameError, NodeStats, Outbound,
        Output, RoomNode, RoomNodeConfig,
    };
}
#[cfg(feature = "service")]
pub mod service;
pub mod ticket;
#[cfg(feature = "websocket")]
pub mod websocket;
