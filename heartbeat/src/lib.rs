#![doc = include_str!("../README.md")]
//!
//! ---
//!
//! Roomkit's heartbeat service: who is connected, and who has really left.
//!
//! Clients beat every 20 s (configurable per business). Proxies route each
//! beat by `(bid, room, uin)` to the heartbeat server that owns it
//! ([`Proxy`]); each server tracks its sessions ([`Tracker`]). A session
//! that falls silent becomes a suspect, and only a reverse check with the
//! access layer ([`ReverseCheck`]: "is this connection really gone?") turns
//! it into an exit, so a lost beat or a slow network never kicks a learner
//! by mistake. Servers watch each other ([`FailureDetector`]); when one
//! dies, proxies route its sessions elsewhere and the new owners adopt them
//! without a second *entered* event, while a server cut off from the
//! cluster decides no exits at all ([`HeartbeatServer`]). Members entering
//! and exiting come out as [`room_core::MemberEvent`]s, which a
//! [`Notifier`] routes to subscribers per business.
//!
//! Where the cluster's membership comes from outside (a registry's
//! [`ClusterView`](room_core::ClusterView), as in Roomkit's room service,
//! where a single node is a cluster of one), every node runs a
//! [`SessionOwner`] instead: the sessions the view's router gives it, the
//! reverse check, silent release when a view moves sessions away, adoption
//! by beat, and sessions held from the member list after an owner died.
//!
//! Everything is sans-IO: inputs take `now`, outputs are polled, and each
//! component's `poll_timeout` says when to call back. The `tokio` feature
//! adds drivers (the `driver` module) that run a server and a proxy on real
//! timers.
//!
//! # Bad input
//!
//! | input | behaviour |
//! | --- | --- |
//! | malformed keys | cannot reach the tracker: ids are typed and parsed by `room-core`, which refuses them with a typed error |
//! | beats for unknown sessions | adopted silently (a failover moved them here) |
//! | duplicated or reordered beats | refreshes; a stamp never moves backwards |
//! | clocks that jump backwards | each component keeps the latest time it saw |
//! | beats after leave | refused if from the closed connection ([`BeatOutcome::ClosedConnection`]) |
//! | a storm of 60,000 joins in a second | O(1) each, bounded by `max_sessions` ([`TrackError::Full`] beyond) |
//! | a mass timeout | sweeps are bounded per call and pause while the bounded suspect queue is full |
//! | a probe that hangs | answer timeout, retries with backoff, then the configured [`NoAnswer`] decision; probes are rate-limited |
//! | answers to unknown or finished probes | [`ReverseError::UnknownProbe`] |
//! | a client's join or beat naming [`ConnId::NONE`] at a [`SessionOwner`] | [`TrackError::NoConnection`] |
//! | a stale beat or late admission of a connection older than the session's, at a [`SessionOwner`] | refused ([`BeatOutcome::Superseded`], [`JoinOutcome::Superseded`]): the session keeps its newer connection and the older one is the one replaced |
//!
//! The tracker's module docs list the session-level cases in detail.
#![deny(unsafe_code)]
#![cfg_attr(docsrs, feature(doc_cfg))]
pub mod detector;
#[cfg(feature = "tokio")]
#[cfg_attr(docsrs, doc(cfg(feature = "tokio")))]
pub mod driver;
pub mod notify;
mod owner;
pub mod reverse;
pub mod server;
pub mod tracker;

pub use detector::{DetectorConfig, DetectorConfigError, FailureDetector, PeerEvent};
pub use notify::{Drained, Notifier, NotifyError, Scope, SubscriberId};
pub use owner::{OwnerConfig, OwnerError, OwnerOutput, OwnerStats, SessionOwner, ViewApplied};
pub use reverse::{
    NoAnswer, Probe, ProbeAnswer, ProbeId, ReverseCheck, ReverseCheckConfig, ReverseError, Verdict, VerdictKind,
};
pub use server::{HeartbeatServer, Proxy, ServerConfig, ServerError, ServerOutput, ServerStats};
pub use tracker::{
    Beat, BeatOutcome, ConfigError, ConnId, JoinOutcome, LeaveOutcome, Reply, SessionHint, Suspect, Timing, TrackError,
    Tracker, TrackerConfig,
};
