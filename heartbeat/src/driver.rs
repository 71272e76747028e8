//! Tokio drivers for [`HeartbeatServer`] and [`Proxy`] (feature `tokio`).
//!
//! [`spawn_proxy`] runs a proxy's failure detector on real timers and
//! answers routing questions through a [`ProxyHandle`].
//!
//! [`spawn_server`] moves a server into a task and returns a
//! [`ServerHandle`] to talk to it. Give it a [`PresenceProbe`] and it
//! answers the reverse check itself: each probe runs in its own task, and a
//! probe that hangs is simply retried by the reverse check after its answer
//! timeout. The task wakes on commands and on the
//! server's own timers, and forwards every [`ServerOutput`] (heartbeats for
//! peers, probes for the access layer, member events) to the channel you
//! give it. Both channels are bounded: a consumer that falls behind slows
//! the server down instead of growing memory.
//!
//! The task logs through `tracing` and, with the `metrics` feature, counts
//! joins, beats, leaves, probes and member events as
//! `roomkit_heartbeat_*_total` counters.
//!
//! ```
//! use room_core::{NodeId, Terminal, Timestamp};
//! use room_heartbeat::{ConnId, HeartbeatServer, ServerConfig, driver::spawn_server};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let me = NodeId(1);
//! let server = HeartbeatServer::new(Timestamp::ZERO, me, &[(me, 100)], &[], ServerConfig::default())?;
//! let (outputs_tx, mut outputs) = tokio::sync::mpsc::channel(1024);
//! let (handle, task) = spawn_server(server, outputs_tx, 1024);
//! handle.join("7/100/42".parse()?, Terminal::Web, ConnId(1)).await??;
//! // The member's entered event comes out of the output channel.
//! let first = outputs.recv().await;
//! assert!(matches!(first, Some(room_heartbeat::ServerOutput::Event(_))));
//! drop(handle);
//! task.await?;
//! # Ok(())
//! # }
//! ```

use std::sync::Arc;
use std::time::Duration;

use room_core::{MemberKey, NodeId, Terminal, Timestamp};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::reverse::{Probe, ProbeAnswer, ProbeId, ReverseError};
use crate::server::{HeartbeatServer, Proxy, ServerOutput};
use crate::tracker::Suspect;
use crate::tracker::{BeatOutcome, ConnId, JoinOutcome, LeaveOutcome, Reply, SessionHint, TrackError};
use room_core::RouterError;

/// The server task has stopped (its output channel closed, or it panicked).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the heartbeat server task has stopped")]
pub struct Stopped;

enum Command {
    Join {
        member: MemberKey,
        terminal: Terminal,
        conn: ConnId,
        reply: oneshot::Sender<Result<Reply<JoinOutcome>, TrackError>>,
    },
    Beat {
        member: MemberKey,
        terminal: Terminal,
        conn: ConnId,
        hint: SessionHint,
        reply: oneshot::Sender<Result<Reply<BeatOutcome>, TrackError>>,
    },
    Leave {
        member: MemberKey,
        terminal: Terminal,
        conn: ConnId,
        reply: oneshot::Sender<LeaveOutcome>,
    },
    PeerHeartbeat {
        from: NodeId,
    },
    ProbeAnswer {
        id: ProbeId,
        answer: ProbeAnswer,
        reply: oneshot::Sender<Result<(), ReverseError>>,
    },
}

/// Talks to a server task. Cheap to clone; the task stops when every handle
/// is dropped.
#[derive(Debug, Clone)]
pub struct ServerHandle {
    commands: mpsc::Sender<Command>,
}

impl std::fmt::Debug for Command {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Command::Join { .. } => "Join",
            Command::Beat { .. } => "Beat",
            Command::Leave { .. } => "Leave",
            Command::PeerHeartbeat { .. } => "PeerHeartbeat",
            Command::ProbeAnswer { .. } => "ProbeAnswer",
        })
    }
}

impl ServerHandle {
    async fn ask<T>(&self, make: impl FnOnce(oneshot::Sender<T>) -> Command) -> Result<T, Stopped> {
        let (tx, rx) = oneshot::channel();
        self.commands.send(make(tx)).await.map_err(|_| Stopped)?;
        rx.await.map_err(|_| Stopped)
    }

    /// A client connected.
    pub async fn join(
        &self,
        member: MemberKey,
        terminal: Terminal,
        conn: ConnId,
    ) -> Result<Result<Reply<JoinOutcome>, TrackError>, Stopped> {
        self.ask(|reply| Command::Join { member, terminal, conn, reply }).await
    }

    /// A heartbeat.
    pub async fn beat(
        &self,
        member: MemberKey,
        terminal: Terminal,
        conn: ConnId,
        hint: SessionHint,
    ) -> Result<Result<Reply<BeatOutcome>, TrackError>, Stopped> {
        self.ask(|reply| Command::Beat { member, terminal, conn, hint, reply }).await
    }

    /// A client closed its connection.
    pub async fn leave(&self, member: MemberKey, terminal: Terminal, conn: ConnId) -> Result<LeaveOutcome, Stopped> {
        self.ask(|reply| Command::Leave { member, terminal, conn, reply }).await
    }

    /// A liveness heartbeat from another server.
    pub async fn peer_heartbeat(&self, from: NodeId) -> Result<(), Stopped> {
        self.commands.send(Command::PeerHeartbeat { from }).await.map_err(|_| Stopped)
    }

    /// The access layer answered a probe.
    pub async fn probe_answer(&self, id: ProbeId, answer: ProbeAnswer) -> Result<Result<(), ReverseError>, Stopped> {
        self.ask(|reply| Command::ProbeAnswer { id, answer, reply }).await
    }
}

/// The access layer's answer to "is this connection still open?", which
/// the host implements (a call to the gateway that holds the connection).
#[async_trait::async_trait]
pub trait PresenceProbe: Send + Sync + 'static {
    /// Whether `suspect.conn` is still open. Taking long is fine: the
    /// reverse check re-asks after its answer timeout.
    async fn is_alive(&self, suspect: &Suspect) -> ProbeAnswer;
}

/// Runs `server` in a tokio task. Outputs go to `outputs`; `capacity` bounds
/// the command queue. The task ends when every [`ServerHandle`] is dropped
/// or `outputs` is closed. Probes go to `outputs` for the host to answer
/// through [`ServerHandle::probe_answer`]; see [`spawn_server_with_probe`]
/// to have them answered by a [`PresenceProbe`].
pub fn spawn_server(
    server: HeartbeatServer,
    outputs: mpsc::Sender<ServerOutput>,
    capacity: usize,
) -> (ServerHandle, JoinHandle<()>) {
    spawn(server, outputs, capacity, None)
}

/// Like [`spawn_server`], but every probe is answered by `probe` (and not
/// sent to `outputs`).
pub fn spawn_server_with_probe(
    server: HeartbeatServer,
    outputs: mpsc::Sender<ServerOutput>,
    capacity: usize,
    probe: Arc<dyn PresenceProbe>,
) -> (ServerHandle, JoinHandle<()>) {
    spawn(server, outputs, capacity, Some(probe))
}

fn spawn(
    server: HeartbeatServer,
    outputs: mpsc::Sender<ServerOutput>,
    capacity: usize,
    probe: Option<Arc<dyn PresenceProbe>>,
) -> (ServerHandle, JoinHandle<()>) {
    let (tx, rx) = mpsc::channel(capacity.max(1));
    // Weak, so that the task still stops when the last real handle goes.
    let prober = probe.map(|p| (p, tx.downgrade()));
    let task = tokio::spawn(run(server, rx, outputs, prober));
    (ServerHandle { commands: tx }, task)
}

/// Asks the host's probe, then hands the answer back to the server.
fn launch_probe(probe: &Arc<dyn PresenceProbe>, commands: &mpsc::WeakSender<Command>, request: Probe) {
    let Some(commands) = commands.upgrade() else { return };
    let (probe, handle) = (Arc::clone(probe), ServerHandle { commands });
    tokio::spawn(async move {
        let answer = probe.is_alive(&request.suspect).await;
        // The server may have stopped, or retried already: nothing to do.
        let _ = handle.probe_answer(request.id, answer).await;
    });
}

/// The server's clock: microseconds since the task started.
fn timestamp(start: Instant) -> Timestamp {
    Timestamp::from_micros(u64::try_from(start.elapsed().as_micros()).unwrap_or(u64::MAX))
}

async fn run(
    mut server: HeartbeatServer,
    mut commands: mpsc::Receiver<Command>,
    outputs: mpsc::Sender<ServerOutput>,
    prober: Option<(Arc<dyn PresenceProbe>, mpsc::WeakSender<Command>)>,
) {
    let span = tracing::info_span!("heartbeat_server", node = %server.id());
    let _entered = span.enter();
    tracing::info!("heartbeat server started");
    let start = Instant::now();
    loop {
        let wake = server.poll_timeout().map(|t| start + Duration::from_micros(t.as_micros()));
        tokio::select! {
            command = commands.recv() => match command {
                Some(command) => handle(&mut server, timestamp(start), command),
                None => break,
            },
            () = sleep_until_or_forever(wake) => server.handle_timeout(timestamp(start)),
        }
        while let Some(output) = server.poll_output(timestamp(start)) {
            count_output(&output);
            if let (ServerOutput::Probe(request), Some((probe, commands))) = (&output, &prober) {
                launch_probe(probe, commands, *request);
                continue;
            }
            if outputs.send(output).await.is_err() {
                tracing::info!("output channel closed; heartbeat server stopping");
                return;
            }
        }
    }
    tracing::info!(sessions = server.tracker().len(), "all handles dropped; heartbeat server stopping");
}

async fn sleep_until_or_forever(wake: Option<Instant>) {
    match wake {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

fn handle(server: &mut HeartbeatServer, now: Timestamp, command: Command) {
    // A dropped reply receiver means the caller gave up; nothing to do.
    match command {
        Command::Join { member, terminal, conn, reply } => {
            count("roomkit_heartbeat_joins_total");
            let result = server.handle_join(now, member, terminal, conn);
            if let Err(error) = &result {
                tracing::warn!(%member, %error, "join refused");
            }
            let _ = reply.send(result);
        }
        Command::Beat { member, terminal, conn, hint, reply } => {
            count("roomkit_heartbeat_beats_total");
            let _ = reply.send(server.handle_beat(now, member, terminal, conn, hint));
        }
        Command::Leave { member, terminal, conn, reply } => {
            count("roomkit_heartbeat_leaves_total");
            let _ = reply.send(server.handle_leave(now, member, terminal, conn));
        }
        Command::PeerHeartbeat { from } => server.handle_peer_heartbeat(now, from),
        Command::ProbeAnswer { id, answer, reply } => {
            let _ = reply.send(server.handle_probe_answer(now, id, answer));
        }
    }
}

fn count_output(output: &ServerOutput) {
    match output {
        ServerOutput::Probe(probe) => {
            count("roomkit_heartbeat_probes_total");
            tracing::debug!(member = %probe.suspect.member, attempt = probe.attempt, "probing the access layer");
        }
        ServerOutput::Event(event) => {
            count("roomkit_heartbeat_member_events_total");
            tracing::debug!(member = %event.member, change = ?event.change, "member event");
        }
        _ => {}
    }
}

#[cfg(feature = "metrics")]
fn count(name: &'static str) {
    metrics::counter!(name).increment(1);
}

#[cfg(not(feature = "metrics"))]
fn count(_name: &'static str) {}

enum ProxyCommand {
    Route { member: MemberKey, reply: oneshot::Sender<Result<NodeId, RouterError>> },
    ServerHeartbeat { from: NodeId },
}

/// Talks to a proxy task. Cheap to clone; the task stops when every handle
/// is dropped.
#[derive(Debug, Clone)]
pub struct ProxyHandle {
    commands: mpsc::Sender<ProxyCommand>,
}

impl std::fmt::Debug for ProxyCommand {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ProxyCommand::Route { .. } => "Route",
            ProxyCommand::ServerHeartbeat { .. } => "ServerHeartbeat",
        })
    }
}

impl ProxyHandle {
    /// The server that owns `member`'s heartbeats now.
    pub async fn route(&self, member: MemberKey) -> Result<Result<NodeId, RouterError>, Stopped> {
        let (reply, rx) = oneshot::channel();
        self.commands.send(ProxyCommand::Route { member, reply }).await.map_err(|_| Stopped)?;
        rx.await.map_err(|_| Stopped)
    }

    /// A liveness heartbeat from a server.
    pub async fn server_heartbeat(&self, from: NodeId) -> Result<(), Stopped> {
        self.commands.send(ProxyCommand::ServerHeartbeat { from }).await.map_err(|_| Stopped)
    }
}

/// Runs `proxy` in a tokio task; `capacity` bounds the command queue.
pub fn spawn_proxy(proxy: Proxy, capacity: usize) -> (ProxyHandle, JoinHandle<()>) {
    let (tx, rx) = mpsc::channel(capacity.max(1));
    (ProxyHandle { commands: tx }, tokio::spawn(run_proxy(proxy, rx)))
}

async fn run_proxy(mut proxy: Proxy, mut commands: mpsc::Receiver<ProxyCommand>) {
    let span = tracing::info_span!("heartbeat_proxy");
    let _entered = span.enter();
    let start = Instant::now();
    let mut epoch = proxy.view().epoch();
    loop {
        let wake = proxy.poll_timeout().map(|t| start + Duration::from_micros(t.as_micros()));
        tokio::select! {
            command = commands.recv() => match command {
                Some(ProxyCommand::Route { member, reply }) => { let _ = reply.send(proxy.route(&member)); }
                Some(ProxyCommand::ServerHeartbeat { from }) => proxy.handle_server_heartbeat(timestamp(start), from),
                None => break,
            },
            () = sleep_until_or_forever(wake) => proxy.handle_timeout(timestamp(start)),
        }
        if proxy.view().epoch() != epoch {
            epoch = proxy.view().epoch();
            count("roomkit_heartbeat_proxy_view_changes_total");
            let up: Vec<String> = proxy.view().routable().map(|(id, _)| id.to_string()).collect();
            tracing::info!(%epoch, up = %up.join(","), "server view changed");
        }
    }
}
