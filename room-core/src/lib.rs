#![doc = include_str!("../README.md")]
//!
//! ---
//!
//! The core of Roomkit: identifiers, roles, terminals, stable key hashing,
//! the consistent-hash router and the cluster view.
//!
//! Everything here is plain data and pure functions: no runtime, no clock,
//! no I/O. The other crates (heartbeat, member list, push, media control)
//! build on these types; hosts use them to name rooms and members and to
//! decide which node owns what.
//!
//! ```
//! use room_core::{BusinessId, MemberKey, NodeId, RoomId, Router, RouterConfig, Uin};
//!
//! let member: MemberKey = "7/100042/3300117".parse()?;
//! assert_eq!(member.bid, BusinessId(7));
//!
//! let router = Router::with_nodes(
//!     RouterConfig::new().with_slot_bits(16)?,
//!     (1..=5).map(|n| (NodeId(n), 100)),
//! )?;
//! let heartbeat_server = router.route(&member)?;
//! let member_list_replicas = router.successors(&member.room_key(), 3)?;
//! assert!(member_list_replicas.len() == 3);
//! # let _ = heartbeat_server;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
#![forbid(unsafe_code)]
#![cfg_attr(docsrs, feature(doc_cfg))]

pub mod cluster;
pub mod event;
pub mod flags;
pub mod hash;
pub mod id;
pub mod role;
pub mod router;
pub mod table;
pub mod terminal;
pub mod time;

pub use cluster::{ClusterError, ClusterView, Epoch, NodeChange, NodeEvent, NodeInfo, NodeState};
pub use event::{ExitReason, MemberChange, MemberEvent};
pub use flags::{Flag, FlagSet};
pub use hash::{PreHashed, RouteKey, stable_hash};
pub use id::{BusinessId, ConnId, MemberKey, NodeId, ParseIdError, RoomId, RoomKey, Uin};
pub use role::{CustomRole, ParseRoleError, Role, RoleSet};
pub use router::{Router, RouterConfig, RouterError, SlotMove};
pub use table::{ChurnMap, ConnSlab, shrink_when_empty};
pub use terminal::{ParseTerminalError, Terminal, TerminalSet};
pub use time::Timestamp;
