//! Live jobs: ffmpeg processes that relay and record live streams, each
//! supervised by a thread of its own, and a backend that runs the
//! [`Orchestrator`](crate::orchestrate::Orchestrator)'s commands with them.
//!
//! A [`LiveJob`] owns one ffmpeg process at a time. Its input has a read
//! timeout, so a publisher that vanishes ends the process instead of
//! stalling it; the job then starts ffmpeg again after a backoff that
//! doubles up to a ceiling (and starts over once a run has been healthy
//! for a while), so a publisher that returns is picked up without the
//! host doing anything. [`LiveJob::stop`] asks ffmpeg to quit (`q` on its
//! stdin, so that outputs get their trailers), kills it if it has not
//! within [`LiveConfig::stop_grace`], and returns once the process is gone.
//! Health (state, frames, output time, restarts) can be read at any time;
//! changes arrive as [`LiveEvent`]s on a channel.
//!
//! [`LiveBackend`] maps the orchestrator's commands onto jobs (a relay or
//! a recording per stream; a repeated command id is the same command) and
//! turns job events into the orchestrator's [`BackendEvent`]s.

use std::collections::{BTreeMap, VecDeque};
use std::io::{BufRead, BufReader, Write as _};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command as Process, Stdio};
use std::sync::mpsc::{Receiver, Sender, channel};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::ffmpeg::{FfmpegError, Job, live_record_job, live_relay_job};

pub mod callbacks;
pub mod mixer;
mod zmtp;
use crate::input::InputPolicy;
use crate::layout::Template;
use crate::orchestrate::{BackendEvent, Command, CommandId, CommandKind};

/// How live jobs run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LiveConfig {
    /// The ffmpeg program.
    pub program: String,
    /// How long an input may send nothing before ffmpeg gives up on it
    /// (and the job starts it again).
    pub read_timeout: Duration,
    /// The first restart's delay; it doubles each time.
    pub backoff: Duration,
    /// The longest delay between restarts.
    pub max_backoff: Duration,
    /// A run at least this long puts the backoff back to its start.
    pub healthy_after: Duration,
    /// Restarts in a row before the job is given up on (`None`: while
    /// the job is wanted).
    pub max_restarts: Option<u32>,
    /// How long ffmpeg may take to quit when asked before it is killed.
    pub stop_grace: Duration,
}

impl Default for LiveConfig {
    fn default() -> Self {
        LiveConfig {
            program: "ffmpeg".to_owned(),
            read_timeout: Duration::from_secs(5),
            backoff: Duration::from_millis(500),
            max_backoff: Duration::from_secs(10),
            healthy_after: Duration::from_secs(10),
            max_restarts: None,
            stop_grace: Duration::from_millis(500),
        }
    }
}

/// A live job's id, given by whoever starts it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct JobId(pub u64);

/// Where a job stands.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum JobState {
    /// ffmpeg is starting (or opening its input).
    Starting,
    /// Frames are flowing.
    Running,
    /// ffmpeg ended on its own; it starts again after a delay.
    Restarting {
        /// Restarts in a row, this one included.
        attempt: u32,
    },
    /// Stopped by the host.
    Stopped,
    /// Given up on.
    Failed {
        /// Why.
        reason: String,
    },
}

/// A job's health.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Health {
    /// Where it stands.
    pub state: JobState,
    /// Frames written by the current process.
    pub frames: u64,
    /// Output time reached by the current process, in ms.
    pub out_ms: i64,
    /// Processes started after the first.
    pub restarts: u32,
    /// When ffmpeg last reported progress.
    pub last_progress: Option<Instant>,
    /// The process's id, while one runs.
    pub pid: Option<u32>,
    /// Which process this is (0 for the first, then one more per restart).
    pub run: u32,
    /// Unix milliseconds at the current process's output time 0 (known
    /// from its first progress report on; a recording's segments are
    /// dated from it).
    pub origin_ms: Option<i64>,
}

/// What happened to a job.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum LiveEvent {
    /// Frames flow for the first time.
    Flowing(JobId),
    /// ffmpeg ended on its own (the input went away, a target refused);
    /// the job starts it again after `after`.
    Lost {
        /// Which.
        job: JobId,
        /// Why, with ffmpeg's last lines.
        reason: String,
        /// Restarts in a row, this one included.
        attempt: u32,
        /// The delay before it.
        after: Duration,
    },
    /// Frames flow again after a loss.
    Recovered(JobId),
    /// Stopped by the host.
    Stopped(JobId),
    /// A recording finished a file.
    Recorded(RecordedFile),
    /// Given up on: ffmpeg is missing, or the restarts ran out.
    Failed {
        /// Which.
        job: JobId,
        /// Why.
        reason: String,
    },
}

/// What each process of a job runs, given its run number.
struct JobMaker(Box<dyn FnMut(u32) -> Job + Send>);

impl std::fmt::Debug for JobMaker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("JobMaker")
    }
}

/// A file a recording finished.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordedFile {
    /// The stream recorded.
    pub stream: String,
    /// The file's name in the recordings directory.
    pub file_name: String,
    /// Its path.
    pub path: PathBuf,
    /// Unix ms of its first instant.
    pub start_ms: i64,
    /// Unix ms of its last instant.
    pub end_ms: i64,
}

#[derive(Debug)]
struct Slot {
    /// What the next process runs.
    job: JobMaker,
    /// Output time 0 of recent runs, in Unix ms.
    origins: VecDeque<(u32, i64)>,
    child: Option<Child>,
    stdin: Option<ChildStdin>,
    stop: bool,
    health: Health,
}

#[derive(Debug)]
struct Shared {
    slot: Mutex<Slot>,
    wake: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Slot> {
        // A panic elsewhere must not make a running ffmpeg unstoppable.
        self.slot.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// One supervised ffmpeg job. Dropping it stops it.
#[derive(Debug)]
pub struct LiveJob {
    id: JobId,
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
    grace: Duration,
}

impl LiveJob {
    /// Starts `job` under `config`; its events go to `events`.
    pub fn spawn(id: JobId, job: Job, config: &LiveConfig, events: Sender<LiveEvent>) -> LiveJob {
        Self::spawn_with(id, move |_| job.clone(), config, events)
    }

    /// Starts a job whose process `run` (0, 1, ...) runs `make(run)`:
    /// a restart can write to new files rather than over the last ones.
    pub fn spawn_with(
        id: JobId,
        make: impl FnMut(u32) -> Job + Send + 'static,
        config: &LiveConfig,
        events: Sender<LiveEvent>,
    ) -> LiveJob {
        let job = JobMaker(Box::new(make));
        let shared = Arc::new(Shared {
            slot: Mutex::new(Slot {
                job,
                origins: VecDeque::new(),
                child: None,
                stdin: None,
                stop: false,
                health: Health {
                    state: JobState::Starting,
                    frames: 0,
                    out_ms: 0,
                    restarts: 0,
                    last_progress: None,
                    pid: None,
                    run: 0,
                    origin_ms: None,
                },
            }),
            wake: Condvar::new(),
        });
        let supervisor = Supervisor { id, config: config.clone(), shared: shared.clone(), events };
        let thread =
            std::thread::Builder::new().name(format!("live-job-{}", id.0)).spawn(move || supervisor.run()).ok();
        let job = LiveJob { id, shared, thread, grace: config.stop_grace };
        if job.thread.is_none() {
            job.shared.lock().health.state = JobState::Failed { reason: "no thread for the job".to_owned() };
        }
        job
    }

    /// Its id.
    pub fn id(&self) -> JobId {
        self.id
    }

    /// Ends the running process the way a stop does (`q`, so its outputs
    /// are closed properly) but keeps the job: it starts a new process
    /// after the backoff, which opens its inputs again.
    pub(crate) fn restart(&self) {
        let mut slot = self.shared.lock();
        if let Some(stdin) = slot.stdin.as_mut() {
            let _ = stdin.write_all(b"q\n");
            let _ = stdin.flush();
        }
    }

    /// Output time 0 of process `run`, in Unix ms, if it reported progress.
    pub(crate) fn origin(&self, run: u32) -> Option<i64> {
        self.shared.lock().origins.iter().find(|(r, _)| *r == run).map(|(_, at)| *at)
    }

    /// Its health now.
    pub fn health(&self) -> Health {
        self.shared.lock().health.clone()
    }

    /// Stops the job: ffmpeg is asked to quit, killed if it has not
    /// within the grace period, and gone when this returns. Returns how
    /// long that took.
    pub fn stop(mut self) -> Duration {
        self.halt()
    }

    fn halt(&mut self) -> Duration {
        let start = Instant::now();
        {
            let mut slot = self.shared.lock();
            slot.stop = true;
            if let Some(stdin) = slot.stdin.as_mut() {
                // ffmpeg reads `q` between frames and closes its outputs.
                let _ = stdin.write_all(b"q\n");
                let _ = stdin.flush();
            }
            self.shared.wake.notify_all();
        }
        let Some(thread) = self.thread.take() else { return start.elapsed() };
        while !thread.is_finished() && start.elapsed() < self.grace {
            std::thread::sleep(Duration::from_millis(5));
        }
        if !thread.is_finished() {
            // Still opening its input, or deaf to `q`: killed.
            if let Some(child) = self.shared.lock().child.as_mut() {
                let _ = child.kill();
            }
        }
        let _ = thread.join();
        start.elapsed()
    }
}

impl Drop for LiveJob {
    fn drop(&mut self) {
        if self.thread.is_some() {
            self.halt();
        }
    }
}

/// Progress reports that settle a run's output time 0.
const ORIGIN_SAMPLES: u32 = 8;

/// Keeps the current run's output time 0 for dating its files.
fn settle_origin(slot: &mut Slot, run: u32) {
    let Some(origin) = slot.health.origin_ms else { return };
    slot.origins.retain(|(r, _)| *r != run);
    if slot.origins.len() == 16 {
        slot.origins.pop_front();
    }
    slot.origins.push_back((run, origin));
}

/// Now, in Unix milliseconds.
pub(crate) fn unix_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

struct Supervisor {
    id: JobId,
    config: LiveConfig,
    shared: Arc<Shared>,
    events: Sender<LiveEvent>,
}

impl Supervisor {
    fn run(self) {
        let mut backoff = self.config.backoff;
        let mut in_a_row = 0u32;
        let mut ever_flowed = false;
        let mut run = 0u32;
        loop {
            if self.shared.lock().stop {
                break;
            }
            let started = Instant::now();
            let outcome = self.run_once(run, ever_flowed && in_a_row > 0);
            run = run.saturating_add(1);
            let (flowed, reason) = match outcome {
                Ok(outcome) => outcome,
                Err(reason) => {
                    self.finish(JobState::Failed { reason: reason.clone() });
                    let _ = self.events.send(LiveEvent::Failed { job: self.id, reason });
                    return;
                }
            };
            ever_flowed |= flowed;
            if self.shared.lock().stop {
                break;
            }
            if started.elapsed() >= self.config.healthy_after {
                backoff = self.config.backoff;
                in_a_row = 0;
            }
            in_a_row = in_a_row.saturating_add(1);
            if self.config.max_restarts.is_some_and(|max| in_a_row > max) {
                let reason = format!("gave up after {} restarts in a row: {reason}", in_a_row - 1);
                self.finish(JobState::Failed { reason: reason.clone() });
                let _ = self.events.send(LiveEvent::Failed { job: self.id, reason });
                return;
            }
            {
                let mut slot = self.shared.lock();
                slot.health.state = JobState::Restarting { attempt: in_a_row };
                slot.health.restarts = slot.health.restarts.saturating_add(1);
            }
            #[cfg(feature = "tracing")]
            tracing::warn!(job = self.id.0, attempt = in_a_row, %reason, "live job lost; restarting");
            let lost = LiveEvent::Lost { job: self.id, reason, attempt: in_a_row, after: backoff };
            let _ = self.events.send(lost);
            let until = Instant::now() + backoff;
            let mut slot = self.shared.lock();
            while !slot.stop {
                let left = until.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    break;
                }
                slot = self.shared.wake.wait_timeout(slot, left).unwrap_or_else(PoisonError::into_inner).0;
            }
            drop(slot);
            backoff = backoff.saturating_mul(2).min(self.config.max_backoff);
        }
        self.finish(JobState::Stopped);
        let _ = self.events.send(LiveEvent::Stopped(self.id));
    }

    fn finish(&self, state: JobState) {
        let mut slot = self.shared.lock();
        slot.health.state = state;
        slot.health.pid = None;
    }

    /// Runs ffmpeg once, until it exits. `Ok((flowed, why it ended))`, or
    /// `Err` when it cannot be started at all.
    fn run_once(&self, run: u32, recovering: bool) -> Result<(bool, String), String> {
        let mut slot = self.shared.lock();
        if slot.stop {
            return Ok((false, "stopped".to_owned()));
        }
        let job = (slot.job.0)(run);
        let mut child = Process::new(&self.config.program)
            .args(&job.args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|source| FfmpegError::Missing { program: self.config.program.clone(), source }.to_string())?;
        let stdout = child.stdout.take();
        let stderr = child.stderr.take();
        slot.stdin = child.stdin.take();
        slot.health.pid = Some(child.id());
        slot.health.state = JobState::Starting;
        slot.health.frames = 0;
        slot.health.out_ms = 0;
        slot.health.run = run;
        slot.health.origin_ms = None;
        slot.child = Some(child);
        drop(slot);
        #[cfg(feature = "tracing")]
        tracing::info!(job = self.id.0, program = %self.config.program, "live job started");
        let tail = stderr.map(crate::ffmpeg::stderr_tail);
        let mut flowed = false;
        let (mut frames, mut out_ms) = (0u64, 0i64);
        let mut samples = 0u32;
        if let Some(stdout) = stdout {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(v) = line.strip_prefix("out_time_us=") {
                    out_ms = v.trim().parse::<i64>().map_or(out_ms, |us| us / 1000);
                } else if let Some(v) = line.strip_prefix("frame=") {
                    frames = v.trim().parse().unwrap_or(frames);
                } else if line.starts_with("progress=") {
                    let mut slot = self.shared.lock();
                    let advanced = frames > slot.health.frames || out_ms > slot.health.out_ms;
                    slot.health.frames = frames;
                    slot.health.out_ms = out_ms;
                    slot.health.last_progress = Some(Instant::now());
                    // Output time 0 is now minus the output time; the
                    // earliest estimate is the one least delayed. It is
                    // settled after a few reports and then kept, so that
                    // every file of a run is dated from the same instant
                    // (contiguous files stay contiguous).
                    if samples < ORIGIN_SAMPLES && out_ms > 0 {
                        let origin = unix_ms() - out_ms;
                        if slot.health.origin_ms.is_none_or(|o| origin < o) {
                            slot.health.origin_ms = Some(origin);
                        }
                        samples += 1;
                        if samples == ORIGIN_SAMPLES {
                            settle_origin(&mut slot, run);
                        }
                    }
                    if advanced && !flowed {
                        flowed = true;
                        slot.health.state = JobState::Running;
                        drop(slot);
                        let event =
                            if recovering { LiveEvent::Recovered(self.id) } else { LiveEvent::Flowing(self.id) };
                        let _ = self.events.send(event);
                    }
                }
            }
        }
        // stdout closed: the process is ending; reap it.
        let child = {
            let mut slot = self.shared.lock();
            if samples < ORIGIN_SAMPLES {
                // A short run: dated from the best estimate it had.
                settle_origin(&mut slot, run);
            }
            slot.stdin = None;
            slot.health.pid = None;
            slot.child.take()
        };
        let status = child.map(|mut c| c.wait());
        let tail = tail.and_then(|t| t.join().ok()).unwrap_or_default();
        let status = match status {
            Some(Ok(status)) => status.to_string(),
            Some(Err(e)) => e.to_string(),
            None => "gone".to_owned(),
        };
        Ok((flowed, format!("ffmpeg {status}: {tail}")))
    }
}

/// Why the backend refused a command.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LiveError {
    /// Its URLs, paths or ids failed the allow-list.
    #[error(transparent)]
    Refused(#[from] FfmpegError),
    /// The mix cannot be made or switched.
    #[error(transparent)]
    Mix(#[from] mixer::MixError),
    /// A command this backend does not run.
    #[error("the live backend does not run {0}")]
    Unsupported(&'static str),
    /// More jobs than [`LiveBackendConfig::max_jobs`].
    #[error("at most {0} live jobs")]
    TooManyJobs(usize),
}

/// Where the live backend reads and writes.
#[derive(Debug, Clone, PartialEq)]
pub struct LiveBackendConfig {
    /// The origin's live application: stream `s` is read from
    /// `<origin>/<s>` (`rtmp://origin:1935/live`, or an `srt://` URL).
    pub origin: String,
    /// Where recordings go (inside the policy's local directory).
    pub recordings: PathBuf,
    /// The length of a recorded segment.
    pub segment: Duration,
    /// Jobs at once.
    pub max_jobs: usize,
    /// How each job runs.
    pub live: LiveConfig,
    /// How the class is mixed (`None`: the backend refuses `Mix`).
    pub mix: Option<mixer::MixSettings>,
    /// Recording callbacks for the host (`None`: recorded files are only
    /// reported as [`LiveEvent::Recorded`]).
    pub callbacks: Option<callbacks::CallbackConfig>,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum JobKey {
    Ingest(String),
    Relay(String),
    Recording(String),
}

/// Runs the orchestrator's relay and recording commands as live jobs.
///
/// Call [`execute`](Self::execute) with each [`Command`] the orchestrator
/// asks for and hand what it returns to
/// [`Orchestrator::handle_backend`](crate::orchestrate::Orchestrator::handle_backend);
/// poll [`poll_event`](Self::poll_event) (or block in
/// [`wait_event`](Self::wait_event)) for what happens to jobs later.
#[derive(Debug)]
pub struct LiveBackend {
    config: LiveBackendConfig,
    policy: InputPolicy,
    jobs: BTreeMap<JobKey, (CommandId, LiveJob)>,
    next_job: u64,
    events_in: Sender<LiveEvent>,
    events: Receiver<LiveEvent>,
    /// Jobs by id, for their events.
    commands: BTreeMap<JobId, CommandId>,
    mixer: Option<mixer::LiveMixer>,
    /// What streams carry, where the host said (else sound and picture).
    kinds: BTreeMap<String, crate::layout::InputKind>,
    /// Whose streams they are, where the host said.
    owners: BTreeMap<String, String>,
    /// Recordings' segment lists, by stream.
    watches: BTreeMap<String, Watch>,
    last_scan: Instant,
    /// Events found by scanning, before the channel's.
    found: VecDeque<LiveEvent>,
    outbox: Option<callbacks::CallbackOutbox>,
    refused_callbacks: u64,
    /// The outbox's clock starts here.
    epoch: Instant,
}

/// How far a recording's segment lists have been read.
#[derive(Debug)]
struct Watch {
    stream: String,
    dir: PathBuf,
    /// Each run's tag (its files' and list's names), as the job starts it.
    tags: Arc<Mutex<BTreeMap<u32, String>>>,
    /// Bytes read of each run's list.
    read: BTreeMap<u32, usize>,
}

impl Watch {
    /// Finished segments listed since the last scan, dated from each
    /// run's output time 0.
    fn scan(&mut self, job: &LiveJob) -> Vec<RecordedFile> {
        let mut found = Vec::new();
        let current = job.health().run;
        for run in current.saturating_sub(15)..=current {
            let tag = self.tags.lock().unwrap_or_else(PoisonError::into_inner).get(&run).cloned();
            let Some(tag) = tag else { continue };
            let Ok(text) = std::fs::read_to_string(self.dir.join(format!("{}-{tag}.csv", self.stream))) else {
                continue;
            };
            let Some(origin) = job.origin(run) else { continue };
            let from = self.read.get(&run).copied().unwrap_or(0).min(text.len());
            let Some(end) = text[from..].rfind('\n').map(|i| from + i + 1) else { continue };
            for line in text[from..end].lines() {
                let mut fields = line.rsplitn(3, ',');
                let (Some(last), Some(first), Some(name)) = (fields.next(), fields.next(), fields.next()) else {
                    continue;
                };
                let (Ok(first), Ok(last)) = (first.trim().parse::<f64>(), last.trim().parse::<f64>()) else { continue };
                let name = name.trim().trim_matches('"');
                if crate::input::check_name("file name", name).is_err() || !first.is_finite() || !last.is_finite() {
                    continue;
                }
                found.push(RecordedFile {
                    stream: self.stream.clone(),
                    file_name: name.to_owned(),
                    path: self.dir.join(name),
                    start_ms: origin.saturating_add((first * 1000.0).round() as i64),
                    end_ms: origin.saturating_add((last * 1000.0).round() as i64),
                });
            }
            self.read.insert(run, end);
        }
        found
    }
}

/// A recording process's tag: when it started, and which run it is.
fn run_tag(run: u32) -> String {
    format!("{}r{run}", unix_ms())
}

const SCAN_EVERY: Duration = Duration::from_millis(200);

/// Recorded-file events held for the host at most.
const MAX_FOUND: usize = 10_000;

impl LiveBackend {
    /// A backend with no job.
    pub fn new(config: LiveBackendConfig, policy: InputPolicy) -> LiveBackend {
        let (events_in, events) = channel();
        LiveBackend {
            policy,
            jobs: BTreeMap::new(),
            next_job: 1,
            events_in,
            events,
            commands: BTreeMap::new(),
            mixer: None,
            kinds: BTreeMap::new(),
            owners: BTreeMap::new(),
            watches: BTreeMap::new(),
            last_scan: Instant::now(),
            found: VecDeque::new(),
            outbox: config.callbacks.clone().map(callbacks::CallbackOutbox::new),
            refused_callbacks: 0,
            epoch: Instant::now(),
            config,
        }
    }

    /// Runs a command; the answer is for the orchestrator. A command
    /// already running (a retry with the same id) is accepted again.
    pub fn execute(&mut self, command: &Command) -> Result<BackendEvent, LiveError> {
        match &command.kind {
            CommandKind::StartRelay { stream, targets } => {
                let input = self.stream_url(stream)?;
                let job = live_relay_job(&input, targets, &self.policy, self.config.live.read_timeout)?;
                self.start(command.id, JobKey::Relay(stream.clone()), job)
            }
            CommandKind::StartRecording { stream } => {
                let input = self.stream_url(stream)?;
                let (dir, segment, timeout) =
                    (self.config.recordings.clone(), self.config.segment, self.config.live.read_timeout);
                let policy = self.policy.clone();
                let name = stream.clone();
                // Checked once here; each process then gets files and a
                // list of its own (ffmpeg empties a list it opens, and a
                // restart must not write over earlier files).
                let first = live_record_job(&input, stream, &dir, segment, &run_tag(0), &policy, timeout)?;
                let tags: Arc<Mutex<BTreeMap<u32, String>>> = Arc::default();
                let make = {
                    let (dir, tags) = (dir.clone(), tags.clone());
                    move |run: u32| {
                        let tag = run_tag(run);
                        let mut tags = tags.lock().unwrap_or_else(PoisonError::into_inner);
                        tags.insert(run, tag.clone());
                        // The last 16 runs are read; older tags go.
                        while tags.len() > 16 {
                            tags.pop_first();
                        }
                        live_record_job(&input, &name, &dir, segment, &tag, &policy, timeout)
                            .unwrap_or_else(|_| first.clone())
                    }
                };
                let key = JobKey::Recording(stream.clone());
                let same = self.jobs.get(&key).is_some_and(|(running, _)| *running == command.id);
                if !same {
                    // Another command for this stream: the old recording
                    // ends first, its last files reported.
                    let _ = self.stop(command.id, &key);
                }
                let answer = self.start_with(command.id, key, make)?;
                let dir = self.policy.check_output(&dir).map_err(FfmpegError::from)?.arg;
                let dir = PathBuf::from(dir.trim_start_matches("file:"));
                // A retried command keeps its job and its watch.
                self.watches.entry(stream.clone()).or_insert_with(|| Watch {
                    stream: stream.clone(),
                    dir,
                    tags,
                    read: BTreeMap::new(),
                });
                Ok(answer)
            }
            CommandKind::StopRelay { stream } => Ok(self.stop(command.id, &JobKey::Relay(stream.clone()))),
            CommandKind::StopRecording { stream } => Ok(self.stop(command.id, &JobKey::Recording(stream.clone()))),
            CommandKind::Mix { streams, template } => self.mix(command.id, streams, template),
            CommandKind::StopMix => {
                if let Some(mixer) = self.mixer.take() {
                    self.commands.remove(&mixer.id());
                    mixer.stop();
                }
                Ok(BackendEvent::Succeeded(command.id))
            }
            CommandKind::Transcode => Err(LiveError::Unsupported("transcoding (render the playback plan)")),
        }
    }

    /// Says what `stream` carries (picture only, sound only), for the
    /// mixer; streams not named carry both.
    pub fn set_stream_kind(&mut self, stream: &str, kind: crate::layout::InputKind) {
        self.kinds.insert(stream.to_owned(), kind);
    }

    /// Mixes `streams` with `template`: the running mix switches layout
    /// when it already has exactly these inputs, else a new mix replaces
    /// it (a new set of inputs needs a new process).
    fn mix(&mut self, id: CommandId, streams: &[String], template: &Template) -> Result<BackendEvent, LiveError> {
        let Some(settings) = self.config.mix.clone() else {
            return Err(LiveError::Unsupported("mixing (no mix settings)"));
        };
        if let Some(mixer) = self.mixer.as_mut() {
            let same = mixer.inputs().len() == streams.len()
                && streams.iter().all(|s| mixer.inputs().iter().any(|i| &i.id == s));
            if same {
                mixer.set_layout(template)?;
                self.commands.insert(mixer.id(), id);
                return Ok(BackendEvent::Accepted(id));
            }
        }
        let mut inputs = Vec::with_capacity(streams.len());
        for stream in streams {
            let url = self.stream_url(stream)?;
            let kind = self.kinds.get(stream).copied().unwrap_or(crate::layout::InputKind::AudioVideo);
            inputs.push(mixer::MixInput { id: stream.clone(), url, kind });
        }
        if let Some(old) = self.mixer.take() {
            self.commands.remove(&old.id());
            old.stop();
        }
        let job_id = JobId(self.next_job);
        self.next_job += 1;
        let started = mixer::LiveMixer::start(
            job_id,
            inputs,
            template,
            settings,
            &self.policy,
            &self.config.live,
            self.events_in.clone(),
        )?;
        self.commands.insert(job_id, id);
        self.mixer = Some(started);
        Ok(BackendEvent::Accepted(id))
    }

    /// A stream's publisher came back (its relay, recording or ingest
    /// recovered): a mix that reads it opens it again. ffmpeg does not
    /// reopen an input that ended, so the mix's process is restarted; it
    /// continues its HLS playlist and records to new files.
    fn restart_mix_for(&mut self, job: JobId) {
        let stream = self.jobs.iter().find(|(_, (_, j))| j.id() == job).map(|(key, _)| match key {
            JobKey::Ingest(s) | JobKey::Relay(s) | JobKey::Recording(s) => s.clone(),
        });
        let Some(stream) = stream else { return };
        if let Some(mixer) = self.mixer.as_ref()
            && mixer.inputs().iter().any(|i| i.id == stream)
        {
            mixer.restart();
        }
    }

    /// The running mix, if any.
    pub fn mixer(&self) -> Option<&mixer::LiveMixer> {
        self.mixer.as_ref()
    }

    fn stream_url(&self, stream: &str) -> Result<String, LiveError> {
        crate::input::check_name("stream id", stream).map_err(FfmpegError::from)?;
        Ok(format!("{}/{stream}", self.config.origin.trim_end_matches('/')))
    }

    fn start(&mut self, id: CommandId, key: JobKey, job: Job) -> Result<BackendEvent, LiveError> {
        self.start_with(id, key, move |_| job.clone())
    }

    fn start_with(
        &mut self,
        id: CommandId,
        key: JobKey,
        make: impl FnMut(u32) -> Job + Send + 'static,
    ) -> Result<BackendEvent, LiveError> {
        if self.jobs.get(&key).is_some_and(|(running, _)| *running == id) {
            return Ok(BackendEvent::Accepted(id));
        }
        // A new command for the same stream replaces the old job.
        if let Some((_, job)) = self.jobs.remove(&key) {
            self.commands.remove(&job.id());
            job.stop();
        }
        if self.jobs.len() >= self.config.max_jobs {
            return Err(LiveError::TooManyJobs(self.config.max_jobs));
        }
        let job_id = JobId(self.next_job);
        self.next_job += 1;
        let live = LiveJob::spawn_with(job_id, make, &self.config.live, self.events_in.clone());
        self.commands.insert(job_id, id);
        self.jobs.insert(key, (id, live));
        Ok(BackendEvent::Accepted(id))
    }

    fn stop(&mut self, id: CommandId, key: &JobKey) -> BackendEvent {
        if let Some((_, mut job)) = self.jobs.remove(key) {
            self.commands.remove(&job.id());
            job.halt();
            // ffmpeg listed its last segment as it quit.
            if let JobKey::Recording(stream) = key
                && let Some(mut watch) = self.watches.remove(stream)
            {
                let files = watch.scan(&job);
                self.recorded(files);
            }
        }
        // Stopping what is not running is done too (a retried stop).
        BackendEvent::Succeeded(id)
    }

    /// Takes a client's upload into the origin as `stream`: `from` is
    /// where it arrives, typically SRT in listener mode
    /// (`srt://0.0.0.0:9000?mode=listener`) or an RTMP URL to pull; it is
    /// remuxed (no re-encoding) to `<origin>/<stream>`, where relays,
    /// recordings and the mixer read it. Like every job it comes back on
    /// its own when the uploader drops and returns; a second call for the
    /// same stream replaces the first.
    pub fn start_ingest(&mut self, stream: &str, from: &str) -> Result<JobId, LiveError> {
        let origin = self.stream_url(stream)?;
        let job = live_relay_job(from, &[origin], &self.policy, self.config.live.read_timeout)?;
        let key = JobKey::Ingest(stream.to_owned());
        // Not a command of the orchestrator's (no command id to report),
        // and a second call replaces the first.
        if let Some((_, old)) = self.jobs.remove(&key) {
            old.stop();
        }
        self.start(CommandId(u64::MAX), key.clone(), job)?;
        let live = self.jobs.get(&key).map(|(_, j)| j.id());
        if let Some(id) = live {
            self.commands.remove(&id);
        }
        live.ok_or(LiveError::TooManyJobs(self.config.max_jobs))
    }

    /// Stops the ingest of `stream`; returns how long that took.
    pub fn stop_ingest(&mut self, stream: &str) -> Option<Duration> {
        self.jobs.remove(&JobKey::Ingest(stream.to_owned())).map(|(_, job)| job.stop())
    }

    /// The health of the relay or recording of `stream`.
    pub fn health(&self, stream: &str, recording: bool) -> Option<Health> {
        let key = if recording { JobKey::Recording(stream.to_owned()) } else { JobKey::Relay(stream.to_owned()) };
        self.jobs.get(&key).map(|(_, job)| job.health())
    }

    /// Jobs running (the mix counts as one).
    pub fn jobs(&self) -> usize {
        self.jobs.len() + usize::from(self.mixer.is_some())
    }

    /// The next job event, if one came, with what to tell the orchestrator.
    pub fn poll_event(&mut self) -> Option<(LiveEvent, Option<BackendEvent>)> {
        self.scan_recordings(false);
        let event = self.found.pop_front().or_else(|| self.events.try_recv().ok())?;
        Some(self.translate(event))
    }

    /// The next job event, waiting at most `timeout` for one.
    pub fn wait_event(&mut self, timeout: Duration) -> Option<(LiveEvent, Option<BackendEvent>)> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(event) = self.poll_event() {
                return Some(event);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            // Woken by a job's event, or in time for the next scan.
            if let Ok(event) = self.events.recv_timeout(left.min(SCAN_EVERY)) {
                return Some(self.translate(event));
            }
        }
    }

    fn scan_recordings(&mut self, now: bool) {
        if !now && self.last_scan.elapsed() < SCAN_EVERY {
            return;
        }
        self.last_scan = Instant::now();
        let mut files = Vec::new();
        for (stream, watch) in &mut self.watches {
            if let Some((_, job)) = self.jobs.get(&JobKey::Recording(stream.clone())) {
                files.extend(watch.scan(job));
            }
        }
        self.recorded(files);
    }

    /// Finished files: each becomes a callback (when callbacks are on)
    /// and an event.
    fn recorded(&mut self, files: Vec<RecordedFile>) {
        for file in files {
            if let Some(prefix) = self.outbox.as_ref().map(|o| o.config().download_prefix.clone()) {
                let body = self.callback_body(&file, &prefix);
                let now = self.clock();
                if let Some(outbox) = self.outbox.as_mut()
                    && outbox.push(now, body).is_err()
                {
                    self.refused_callbacks += 1;
                }
            }
            // Events wait for a host that reads them; past the bound the
            // oldest goes (its file and its callback stay).
            if self.found.len() >= MAX_FOUND {
                self.found.pop_front();
            }
            self.found.push_back(LiveEvent::Recorded(file));
        }
    }

    /// Says whose stream `stream` is (a user id), for its recording
    /// callbacks.
    pub fn set_stream_owner(&mut self, stream: &str, user: &str) {
        self.owners.insert(stream.to_owned(), user.to_owned());
    }

    fn clock(&self) -> room_core::Timestamp {
        room_core::Timestamp::from_micros(u64::try_from(self.epoch.elapsed().as_micros()).unwrap_or(u64::MAX))
    }

    /// The next recording callback to deliver (signed for this attempt),
    /// if one is due; answer with [`callback_delivered`](Self::callback_delivered)
    /// or [`callback_failed`](Self::callback_failed).
    #[must_use]
    pub fn poll_callback(&mut self) -> Option<callbacks::Delivery> {
        self.scan_recordings(false);
        let now = self.clock();
        let unix = u64::try_from(unix_ms() / 1000).unwrap_or(0);
        self.outbox.as_mut()?.poll_delivery(now, unix)
    }

    /// The host has the callback.
    pub fn callback_delivered(&mut self, id: u64) {
        if let Some(outbox) = self.outbox.as_mut() {
            outbox.delivered(id);
        }
    }

    /// The callback did not get through: it is sent again later.
    pub fn callback_failed(&mut self, id: u64) {
        let now = self.clock();
        if let Some(outbox) = self.outbox.as_mut() {
            outbox.failed(now, id);
        }
    }

    /// Callbacks waiting, and callbacks refused because the queue was full.
    pub fn callbacks_pending(&self) -> (usize, u64) {
        (self.outbox.as_ref().map_or(0, callbacks::CallbackOutbox::len), self.refused_callbacks)
    }

    /// The Roomkit recording callback of `file` (what
    /// [`Ingestor::ingest`](crate::ingest::Ingestor::ingest) reads).
    fn callback_body(&self, file: &RecordedFile, prefix: &str) -> Vec<u8> {
        let mut body = serde_json::json!({
            "stream_id": file.stream,
            "file_name": file.file_name,
            "start": file.start_ms,
            "end": file.end_ms,
            "download_url": format!("{prefix}{}", file.file_name),
        });
        if let Some(user) = self.owners.get(&file.stream) {
            body["user_id"] = serde_json::Value::String(user.clone());
        }
        serde_json::to_vec(&body).unwrap_or_default()
    }

    fn translate(&mut self, event: LiveEvent) -> (LiveEvent, Option<BackendEvent>) {
        let backend = match &event {
            LiveEvent::Lost { job, reason, .. } => {
                self.commands.get(job).map(|&id| BackendEvent::Degraded { id, reason: reason.clone() })
            }
            LiveEvent::Recovered(job) => {
                self.restart_mix_for(*job);
                self.commands.get(job).map(|&id| BackendEvent::Recovered(id))
            }
            LiveEvent::Failed { job, reason } => {
                let id = self.commands.remove(job);
                self.jobs.retain(|_, (_, j)| j.id() != *job);
                if self.mixer.as_ref().is_some_and(|m| m.id() == *job) {
                    self.mixer = None;
                }
                id.map(|id| BackendEvent::Failed { id, reason: reason.clone(), retry: false })
            }
            _ => None,
        };
        (event, backend)
    }

    /// Stops every job; returns the longest stop.
    pub fn stop_all(&mut self) -> Duration {
        self.commands.clear();
        let mix = self.mixer.take().map(mixer::LiveMixer::stop).unwrap_or_default();
        std::mem::take(&mut self.jobs).into_values().map(|(_, job)| job.stop()).max().unwrap_or_default().max(mix)
    }
}
