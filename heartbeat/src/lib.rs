//! Roomkit's heartbeat service: who is connected, and who has really left.
//!
//! Clients beat every 20 s (configurable per business). A heartbeat server
//! tracks the sessions the router assigns it ([`Tracker`]); a session that
//! falls silent becomes a suspect, and only a reverse check with the access
//! layer ("is this connection really gone?") turns it into an exit, so a
//! lost beat or a slow network never kicks a learner by mistake. The tracker
//! reports members entering and exiting as [`room_core::MemberEvent`]s.
//!
//! Everything here is sans-IO: inputs take `now`, outputs are polled, and
//! [`Tracker::poll_timeout`] says when to call back.
#![forbid(unsafe_code)]
#![cfg_attr(docsrs, feature(doc_cfg))]

pub mod detector;
#[cfg(feature = "tokio")]
#[cfg_attr(docsrs, doc(cfg(feature = "tokio")))]
pub mod driver;
pub mod notify;
pub mod reverse;
pub mod server;
pub mod tracker;

pub use detector::{DetectorConfig, DetectorConfigError, FailureDetector, PeerEvent};
pub use notify::{Drained, Notifier, NotifyError, Scope, SubscriberId};
pub use reverse::{
    NoAnswer, Probe, ProbeAnswer, ProbeId, ReverseCheck, ReverseCheckConfig, ReverseError, Verdict, VerdictKind,
};
pub use server::{HeartbeatServer, Proxy, ServerConfig, ServerError, ServerOutput, ServerStats};
pub use tracker::{
    Beat, BeatOutcome, ConfigError, ConnId, JoinOutcome, LeaveOutcome, Reply, SessionHint, Suspect, Timing, TrackError,
    Tracker, TrackerConfig,
};
