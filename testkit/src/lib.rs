#![doc = include_str!("../README.md")]
//!
//! ---
//!
//! Deterministic simulation for Roomkit's tests.
//!
//! Roomkit's cores are sans-IO state machines: they take `now` and inputs,
//! and say what to send and when to wake. This crate runs many of them
//! together on a virtual clock over a seeded, lossy network, so distributed
//! behaviour (failover, partitions, storms) is tested quickly and every run
//! with the same seed is identical.
//!
//! * [`SimRng`]: a small seeded generator whose sequence is fixed forever.
//! * [`VirtualClock`]: a clock a test advances by hand, for single cores.
//! * [`Sim`]: named nodes ([`SimNode`]) exchanging messages over links with
//!   delay, jitter, loss, duplication and reordering ([`LinkConfig`]);
//!   partitions, pauses, crashes and restarts; scheduled actions; a driver
//!   that steps virtual time to the next wake-up and stops with
//!   [`SimError::Livelock`] after a bounded number of steps at one instant.
//!
#![forbid(unsafe_code)]

mod clock;
mod memory;
mod rng;
mod sim;

pub mod nats;
pub mod redis;

pub use clock::VirtualClock;
pub use memory::resident_mib;
pub use rng::SimRng;
pub use sim::{Addr, DropReason, LinkConfig, NetStats, Outbox, Sim, SimError, SimNode, TraceEvent, TraceKind};
