//! The orchestration state machine of a class session, sans-IO.
//!
//! Inputs: host events (the class starts, streams come up and go down, the
//! class ends) and backend callbacks (a command accepted, done, failed),
//! each with `now`. Outputs: commands for the backend, and events for the
//! host. Every command has an id; a command not acknowledged in time is
//! sent again with the same id (backends treat a repeated id as the same
//! command), with exponential backoff, until it succeeds or runs out of
//! attempts. Every command's state can be asked for at any time.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::Duration;

use room_core::Timestamp;

use crate::layout::{Corner, Template};

/// A command's id, unique within a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct CommandId(pub u64);

/// What a stream is in the class.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[non_exhaustive]
pub enum StreamKind {
    /// The teacher's camera.
    TeacherCamera,
    /// Slides or a shared screen.
    Slides,
    /// The assistant's camera.
    Assistant,
    /// A student on stage.
    StudentOnStage,
}

/// What the backend is asked to do.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum CommandKind {
    /// Relay a stream to the CDN targets.
    StartRelay {
        /// The stream.
        stream: String,
        /// Where to.
        targets: Vec<String>,
    },
    /// Stop relaying a stream.
    StopRelay {
        /// The stream.
        stream: String,
    },
    /// Record a stream (segments come back as recording callbacks).
    StartRecording {
        /// The stream.
        stream: String,
    },
    /// Stop recording a stream.
    StopRecording {
        /// The stream.
        stream: String,
    },
    /// Mix these streams with this layout (replaces the previous mix).
    Mix {
        /// The streams in the layout's order.
        streams: Vec<String>,
        /// The layout.
        template: Template,
    },
    /// Stop mixing.
    StopMix,
    /// Compose the class's recordings into playback files.
    Transcode,
}

/// A command for the backend.
#[derive(Debug, Clone, PartialEq)]
pub struct Command {
    /// Its id (the same on every attempt).
    pub id: CommandId,
    /// Which attempt this is (1, 2, ...).
    pub attempt: u32,
    /// What to do.
    pub kind: CommandKind,
}

/// Where a command stands.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum CommandState {
    /// Sent, not yet acknowledged.
    Requested {
        /// Attempts so far.
        attempts: u32,
    },
    /// The backend accepted it and is working.
    Running,
    /// Finished.
    Done,
    /// Given up on.
    Failed {
        /// Why.
        reason: String,
    },
}

/// A host event.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum HostEvent {
    /// The class began.
    ClassStarted,
    /// A stream is live.
    StreamUp {
        /// Its id.
        stream: String,
        /// What it is.
        kind: StreamKind,
    },
    /// A stream stopped.
    StreamDown {
        /// Its id.
        stream: String,
    },
    /// The class ended.
    ClassEnded,
}

/// A backend callback about a command.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum BackendEvent {
    /// Accepted and running.
    Accepted(CommandId),
    /// Finished.
    Succeeded(CommandId),
    /// Running, but its input or output was lost; the backend is
    /// restoring it on its own (a live job restarting after a publisher
    /// dropped).
    Degraded {
        /// Which.
        id: CommandId,
        /// Why.
        reason: String,
    },
    /// Running again after [`BackendEvent::Degraded`].
    Recovered(CommandId),
    /// Failed; `retry` says whether trying again may help.
    Failed {
        /// Which.
        id: CommandId,
        /// Why.
        reason: String,
        /// Whether to try again.
        retry: bool,
    },
}

/// What the host is told.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum SessionEvent {
    /// A command was given up on.
    CommandFailed {
        /// Which.
        id: CommandId,
        /// Why.
        reason: String,
    },
    /// A running command lost its input or output; the backend is
    /// restoring it.
    CommandDegraded {
        /// Which.
        id: CommandId,
        /// Why.
        reason: String,
    },
    /// A degraded command runs again.
    CommandRecovered {
        /// Which.
        id: CommandId,
    },
    /// The mix now shows these streams.
    MixChanged {
        /// Streams.
        streams: Vec<String>,
    },
    /// The class ended and every recording stopped: playback can be composed.
    ReadyForPlayback,
}

/// An output of the state machine.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum Action {
    /// Send this to the backend.
    Command(Command),
    /// Tell the host.
    Event(SessionEvent),
}

/// Why an input was refused. State is unchanged.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum OrchestrateError {
    /// A callback for a command never issued.
    #[error("no command {0:?}")]
    UnknownCommand(CommandId),
    /// A stream event before the class started or after it ended.
    #[error("the class is not running")]
    NotRunning,
    /// A second stream with the same id.
    #[error("stream {0:?} is already up")]
    AlreadyUp(String),
    /// A stream that is not up.
    #[error("stream {0:?} is not up")]
    NotUp(String),
    /// More streams than a mix can hold.
    #[error("at most {0} streams per session")]
    TooManyStreams(usize),
    /// A stream id that is empty, longer than 256 bytes, or holds a
    /// control character.
    #[error("bad stream id: {0}")]
    BadStreamId(crate::input::InputError),
}

/// Retries and targets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrchestratorConfig {
    /// CDN targets of every relay. `{stream}` in a target is replaced by
    /// the stream's id (`rtmp://edge-1.example/live/{stream}`), so each
    /// stream goes to its own place on the edge.
    pub relay_targets: Vec<String>,
    /// Targets for streams of one kind, instead of
    /// [`relay_targets`](Self::relay_targets) (the teacher's camera to
    /// more edges than slides); `{stream}` is replaced the same way.
    pub relay_targets_by_kind: BTreeMap<StreamKind, Vec<String>>,
    /// How long a command may wait for its acknowledgement.
    pub ack_timeout: Duration,
    /// The first retry's delay; it doubles each time.
    pub backoff: Duration,
    /// The longest delay between attempts.
    pub max_backoff: Duration,
    /// Attempts before a command is given up on.
    pub max_attempts: u32,
    /// Streams per session.
    pub max_streams: usize,
}

impl Default for OrchestratorConfig {
    fn default() -> Self {
        OrchestratorConfig {
            relay_targets: Vec::new(),
            relay_targets_by_kind: BTreeMap::new(),
            ack_timeout: Duration::from_secs(10),
            backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(60),
            max_attempts: 6,
            max_streams: 16,
        }
    }
}

#[derive(Debug, Clone)]
struct Record {
    kind: CommandKind,
    state: CommandState,
    /// Attempts decided on.
    attempts: u32,
    /// Attempts actually sent (one less while a retry waits out its backoff).
    sent: u32,
    due: Option<Timestamp>,
}

/// One class session's orchestration.
#[derive(Debug, Clone)]
pub struct Orchestrator {
    config: OrchestratorConfig,
    running: bool,
    ended: bool,
    streams: BTreeMap<String, StreamKind>,
    recordings: BTreeMap<String, CommandId>,
    /// Streams being relayed.
    relays: BTreeSet<String>,
    commands: BTreeMap<CommandId, Record>,
    timers: BTreeSet<(Timestamp, CommandId)>,
    next_id: u64,
    actions: VecDeque<Action>,
    ready_sent: bool,
}

impl Orchestrator {
    /// A session not yet started.
    pub fn new(config: OrchestratorConfig) -> Self {
        Orchestrator {
            config,
            running: false,
            ended: false,
            streams: BTreeMap::new(),
            recordings: BTreeMap::new(),
            relays: BTreeSet::new(),
            commands: BTreeMap::new(),
            timers: BTreeSet::new(),
            next_id: 1,
            actions: VecDeque::new(),
            ready_sent: false,
        }
    }

    /// A command's state.
    pub fn command(&self, id: CommandId) -> Option<&CommandState> {
        self.commands.get(&id).map(|r| &r.state)
    }

    /// Every command and its state.
    pub fn commands(&self) -> impl Iterator<Item = (CommandId, &CommandKind, &CommandState)> {
        self.commands.iter().map(|(id, r)| (*id, &r.kind, &r.state))
    }

    /// The next action.
    #[must_use]
    pub fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    /// When [`Orchestrator::handle_timeout`] should next run.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Timestamp> {
        self.timers.first().map(|t| t.0)
    }

    fn issue(&mut self, now: Timestamp, kind: CommandKind) -> CommandId {
        let id = CommandId(self.next_id);
        self.next_id += 1;
        let due = now.saturating_add(self.config.ack_timeout);
        let record = Record {
            kind: kind.clone(),
            state: CommandState::Requested { attempts: 1 },
            attempts: 1,
            sent: 1,
            due: Some(due),
        };
        self.commands.insert(id, record);
        self.timers.insert((due, id));
        self.actions.push_back(Action::Command(Command { id, attempt: 1, kind }));
        id
    }

    fn mix(&mut self, now: Timestamp) {
        let mut picture: Vec<(StreamKind, String)> = self.streams.iter().map(|(s, k)| (*k, s.clone())).collect();
        picture.sort();
        let streams: Vec<String> = picture.iter().map(|(_, s)| s.clone()).collect();
        let template = match picture.as_slice() {
            [] => {
                self.issue(now, CommandKind::StopMix);
                return;
            }
            [(_, only)] => Template::Single { input: only.clone() },
            // The teacher over the slides when both are up.
            [(StreamKind::TeacherCamera, t), (StreamKind::Slides, s)] => Template::PictureInPicture {
                main: s.clone(),
                overlay: t.clone(),
                corner: Corner::BottomRight,
                scale: 0.25,
                margin: 16,
            },
            _ => Template::Grid { inputs: streams.clone() },
        };
        self.issue(now, CommandKind::Mix { streams: streams.clone(), template });
        self.actions.push_back(Action::Event(SessionEvent::MixChanged { streams }));
    }

    /// A host event.
    pub fn handle_host(&mut self, now: Timestamp, event: HostEvent) -> Result<(), OrchestrateError> {
        match event {
            HostEvent::ClassStarted => {
                self.running = !self.ended;
            }
            HostEvent::StreamUp { stream, kind } => {
                crate::input::check_id("stream id", &stream).map_err(OrchestrateError::BadStreamId)?;
                if !self.running {
                    return Err(OrchestrateError::NotRunning);
                }
                if self.streams.contains_key(&stream) {
                    return Err(OrchestrateError::AlreadyUp(stream));
                }
                if self.streams.len() >= self.config.max_streams {
                    return Err(OrchestrateError::TooManyStreams(self.config.max_streams));
                }
                self.streams.insert(stream.clone(), kind);
                let targets = self.relay_targets(&stream, kind);
                if !targets.is_empty() {
                    self.relays.insert(stream.clone());
                    self.issue(now, CommandKind::StartRelay { stream: stream.clone(), targets });
                }
                let rec = self.issue(now, CommandKind::StartRecording { stream: stream.clone() });
                self.recordings.insert(stream, rec);
                self.mix(now);
            }
            HostEvent::StreamDown { stream } => {
                crate::input::check_id("stream id", &stream).map_err(OrchestrateError::BadStreamId)?;
                if !self.running {
                    return Err(OrchestrateError::NotRunning);
                }
                if self.streams.remove(&stream).is_none() {
                    return Err(OrchestrateError::NotUp(stream));
                }
                self.stop_stream(now, &stream);
                self.mix(now);
            }
            HostEvent::ClassEnded => {
                if !self.running {
                    return Err(OrchestrateError::NotRunning);
                }
                self.running = false;
                self.ended = true;
                let streams: Vec<String> = std::mem::take(&mut self.streams).into_keys().collect();
                for s in &streams {
                    self.stop_stream(now, s);
                }
                self.issue(now, CommandKind::StopMix);
                self.check_ready(now);
            }
        }
        Ok(())
    }

    /// The relay targets of `stream`, `{stream}` replaced.
    fn relay_targets(&self, stream: &str, kind: StreamKind) -> Vec<String> {
        let templates = self.config.relay_targets_by_kind.get(&kind).unwrap_or(&self.config.relay_targets);
        templates.iter().map(|t| t.replace("{stream}", stream)).collect()
    }

    fn stop_stream(&mut self, now: Timestamp, stream: &str) {
        if self.relays.remove(stream) {
            self.issue(now, CommandKind::StopRelay { stream: stream.to_owned() });
        }
        self.issue(now, CommandKind::StopRecording { stream: stream.to_owned() });
    }

    /// Once the class ended and every StopRecording is done, playback can start.
    fn check_ready(&mut self, now: Timestamp) {
        if !self.ended || self.ready_sent {
            return;
        }
        let pending = self.commands.values().any(|r| {
            matches!(r.kind, CommandKind::StopRecording { .. })
                && !matches!(r.state, CommandState::Done | CommandState::Failed { .. })
        });
        if !pending {
            self.ready_sent = true;
            self.actions.push_back(Action::Event(SessionEvent::ReadyForPlayback));
            self.issue(now, CommandKind::Transcode);
        }
    }

    fn retry_or_fail(&mut self, now: Timestamp, id: CommandId, reason: String) {
        let config = self.config.clone();
        let Some(r) = self.commands.get_mut(&id) else { return };
        if let Some(due) = r.due.take() {
            self.timers.remove(&(due, id));
        }
        if r.attempts >= config.max_attempts {
            r.state = CommandState::Failed { reason: reason.clone() };
            self.actions.push_back(Action::Event(SessionEvent::CommandFailed { id, reason }));
            self.check_ready(now);
            return;
        }
        let shift = r.attempts.saturating_sub(1).min(20);
        let wait = config.backoff.saturating_mul(1 << shift).min(config.max_backoff);
        r.attempts += 1;
        r.state = CommandState::Requested { attempts: r.attempts };
        let at = now.saturating_add(wait);
        r.due = Some(at);
        self.timers.insert((at, id));
    }

    /// A backend callback. Repeats of a callback change nothing.
    pub fn handle_backend(&mut self, now: Timestamp, event: BackendEvent) -> Result<(), OrchestrateError> {
        let id = match &event {
            BackendEvent::Accepted(id)
            | BackendEvent::Succeeded(id)
            | BackendEvent::Recovered(id)
            | BackendEvent::Degraded { id, .. }
            | BackendEvent::Failed { id, .. } => *id,
        };
        let r = self.commands.get_mut(&id).ok_or(OrchestrateError::UnknownCommand(id))?;
        if matches!(r.state, CommandState::Done | CommandState::Failed { .. }) {
            return Ok(()); // a late or repeated callback
        }
        match event {
            BackendEvent::Accepted(_) => {
                if let Some(due) = r.due.take() {
                    self.timers.remove(&(due, id));
                }
                r.state = CommandState::Running;
            }
            BackendEvent::Succeeded(_) => {
                if let Some(due) = r.due.take() {
                    self.timers.remove(&(due, id));
                }
                r.state = CommandState::Done;
                self.check_ready(now);
            }
            // Only a command that runs can lose and regain its stream.
            BackendEvent::Degraded { reason, .. } => {
                if r.state == CommandState::Running {
                    self.actions.push_back(Action::Event(SessionEvent::CommandDegraded { id, reason }));
                }
            }
            BackendEvent::Recovered(_) => {
                if r.state == CommandState::Running {
                    self.actions.push_back(Action::Event(SessionEvent::CommandRecovered { id }));
                }
            }
            BackendEvent::Failed { reason, retry, .. } => {
                if retry {
                    self.retry_or_fail(now, id, reason);
                } else {
                    if let Some(due) = r.due.take() {
                        self.timers.remove(&(due, id));
                    }
                    r.state = CommandState::Failed { reason: reason.clone() };
                    self.actions.push_back(Action::Event(SessionEvent::CommandFailed { id, reason }));
                    self.check_ready(now);
                }
            }
        }
        Ok(())
    }

    /// Resends what is due: commands whose acknowledgement did not come
    /// are retried (after a backoff), and retries whose backoff has passed
    /// are sent, with the same id.
    pub fn handle_timeout(&mut self, now: Timestamp) {
        while let Some(&(at, id)) = self.timers.first() {
            if at > now {
                break;
            }
            self.timers.pop_first();
            let ack_timeout = self.config.ack_timeout;
            let Some(r) = self.commands.get_mut(&id) else { continue };
            r.due = None;
            if !matches!(r.state, CommandState::Requested { .. }) {
                continue;
            }
            if r.sent == r.attempts {
                self.retry_or_fail(now, id, "no acknowledgement".to_owned());
            } else {
                r.sent = r.attempts;
                let due = now.saturating_add(ack_timeout);
                r.due = Some(due);
                self.timers.insert((due, id));
                let command = Command { id, attempt: r.attempts, kind: r.kind.clone() };
                self.actions.push_back(Action::Command(command));
            }
        }
    }
}
