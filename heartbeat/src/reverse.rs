//! The reverse check: before a silent session exits, ask the access layer
//! whether its connection is really gone.
//!
//! [`ReverseCheck`] is sans-IO. Feed it the tracker's suspects
//! ([`ReverseCheck::handle_suspect`]); it emits [`Probe`]s for the host to
//! send to the access layer ([`ReverseCheck::poll_probe`]), at most
//! [`ReverseCheckConfig::probe_rate`] a second with a burst of
//! [`ReverseCheckConfig::probe_burst`], so that a mass timeout (an access
//! node dying with 30,000 connections) does not flood the access layer.
//! Answers come back through [`ReverseCheck::handle_answer`]; a probe with no
//! answer within [`ReverseCheckConfig::answer_timeout`] is retried with
//! exponential backoff, and after [`ReverseCheckConfig::max_attempts`] the
//! configured [`NoAnswer`] decision applies. Each suspect ends in exactly one
//! [`Verdict`] ([`ReverseCheck::poll_verdict`]), which the host applies with
//! [`Tracker::confirm_gone`](crate::Tracker::confirm_gone) or
//! [`Tracker::confirm_alive`](crate::Tracker::confirm_alive).
//!
//! Memory is bounded by [`ReverseCheckConfig::capacity`]: a host takes
//! suspects from the tracker only while [`ReverseCheck::has_capacity`], so a
//! backlog waits in the tracker's own bounded queue.
//!
//! ```
//! use room_core::{MemberKey, Terminal, Timestamp};
//! use room_heartbeat::{ConnId, ProbeAnswer, ReverseCheck, ReverseCheckConfig, Suspect, VerdictKind};
//!
//! let mut check = ReverseCheck::new(ReverseCheckConfig::default())?;
//! let now = Timestamp::from_millis(0);
//! let suspect = Suspect {
//!     member: "7/100/42".parse().unwrap(),
//!     terminal: Terminal::Web,
//!     conn: ConnId(9),
//!     last_seen: now,
//! };
//! check.handle_suspect(now, suspect).unwrap();
//! let probe = check.poll_probe(now).unwrap();
//! // ... ask the access layer about probe.suspect.conn ...
//! check.handle_answer(now, probe.id, ProbeAnswer::Gone).unwrap();
//! assert_eq!(check.poll_verdict().unwrap().kind, VerdictKind::Gone);
//! # Ok::<(), room_heartbeat::reverse::ReverseConfigError>(())
//! ```

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::time::Duration;

use room_core::{MemberKey, Terminal, Timestamp};

use crate::tracker::{ConnId, Suspect};

/// What to decide when the access layer never answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum NoAnswer {
    /// Treat the connection as gone: the member exits. The default: an
    /// access layer that cannot answer about a connection three times over
    /// has almost surely lost it, and keeping the session would re-probe
    /// it every timeout forever.
    AssumeGone,
    /// Treat the connection as alive: the session counts as beating now and
    /// will be suspected again after another timeout.
    AssumeAlive,
}

/// Reverse-check settings.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct ReverseCheckConfig {
    /// Probes a second, sustained (default 1,000).
    pub probe_rate: u32,
    /// Probes that may go out at once after a quiet period (default 1,000).
    pub probe_burst: u32,
    /// How long to wait for an answer (default 2 s).
    pub answer_timeout: Duration,
    /// Attempts before the [`NoAnswer`] decision (default 3).
    pub max_attempts: u32,
    /// Wait before the first retry; doubled for each further one (default
    /// 500 ms).
    pub backoff: Duration,
    /// The decision when no attempt is answered.
    pub on_no_answer: NoAnswer,
    /// Suspects held at once, queued or in flight (default 100,000).
    pub capacity: usize,
}

impl Default for ReverseCheckConfig {
    fn default() -> Self {
        ReverseCheckConfig {
            probe_rate: 1_000,
            probe_burst: 1_000,
            answer_timeout: Duration::from_secs(2),
            max_attempts: 3,
            backoff: Duration::from_millis(500),
            on_no_answer: NoAnswer::AssumeGone,
            capacity: 100_000,
        }
    }
}

/// A configuration the reverse check refuses.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ReverseConfigError {
    /// A rate, burst, attempt count or capacity of zero.
    #[error("{0} must be positive")]
    Zero(&'static str),
}

/// An input the reverse check refuses; it changes nothing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ReverseError {
    /// [`ReverseCheckConfig::capacity`] suspects are already held: leave
    /// the suspect in the tracker and offer it again later.
    #[error("reverse check is at capacity ({0} suspects)")]
    Full(usize),
    /// An answer for a probe that is not in flight (answered already, timed
    /// out, or never sent).
    #[error("no probe {0:?} is in flight")]
    UnknownProbe(ProbeId),
}

/// Identifies a probe, to match its answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ProbeId(pub u64);

/// A question for the access layer: is `suspect.conn` still open?
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Probe {
    /// Quote it in [`ReverseCheck::handle_answer`].
    pub id: ProbeId,
    /// Whom it is about.
    pub suspect: Suspect,
    /// 1 for the first attempt.
    pub attempt: u32,
}

/// The access layer's answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ProbeAnswer {
    /// The connection is open: the client is there, its beats were lost.
    Alive,
    /// The connection is closed.
    Gone,
}

/// How a suspect was decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum VerdictKind {
    /// The access layer said the connection is gone.
    Gone,
    /// The access layer said the connection is alive.
    Alive,
    /// No attempt was answered; the configured [`NoAnswer`] decision was
    /// applied (`gone` says which).
    NoAnswer {
        /// Whether the session should end.
        gone: bool,
    },
}

impl VerdictKind {
    /// Whether the session should end.
    pub const fn is_gone(self) -> bool {
        matches!(self, VerdictKind::Gone | VerdictKind::NoAnswer { gone: true })
    }
}

/// The decision on one suspect.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verdict {
    /// The suspect.
    pub suspect: Suspect,
    /// The decision.
    pub kind: VerdictKind,
}

type SuspectKey = (MemberKey, Terminal, ConnId);

fn key_of(s: &Suspect) -> SuspectKey {
    (s.member, s.terminal, s.conn)
}

#[derive(Debug, Clone, Copy)]
struct InFlight {
    suspect: Suspect,
    attempt: u32,
    deadline: Timestamp,
}

/// The reverse check. See the [module docs](self).
#[derive(Debug)]
pub struct ReverseCheck {
    config: ReverseCheckConfig,
    /// Tokens, in millionths of a probe.
    tokens_micro: u64,
    refilled_at: Option<Timestamp>,
    ready: VecDeque<(Suspect, u32)>,
    retries: BTreeMap<(Timestamp, u64), (Suspect, u32)>,
    in_flight: HashMap<ProbeId, InFlight>,
    deadlines: BTreeMap<(Timestamp, ProbeId), ()>,
    held: HashSet<SuspectKey>,
    verdicts: VecDeque<Verdict>,
    next_id: u64,
    now: Timestamp,
}

const MICRO: u64 = 1_000_000;

impl ReverseCheck {
    /// A reverse check with `config`.
    pub fn new(config: ReverseCheckConfig) -> Result<ReverseCheck, ReverseConfigError> {
        for (name, value) in [
            ("probe_rate", u64::from(config.probe_rate)),
            ("probe_burst", u64::from(config.probe_burst)),
            ("max_attempts", u64::from(config.max_attempts)),
            ("capacity", config.capacity as u64),
        ] {
            if value == 0 {
                return Err(ReverseConfigError::Zero(name));
            }
        }
        Ok(ReverseCheck {
            tokens_micro: u64::from(config.probe_burst) * MICRO,
            config,
            refilled_at: None,
            ready: VecDeque::new(),
            retries: BTreeMap::new(),
            in_flight: HashMap::new(),
            deadlines: BTreeMap::new(),
            held: HashSet::new(),
            verdicts: VecDeque::new(),
            next_id: 0,
            now: Timestamp::ZERO,
        })
    }

    /// Suspects held (queued, waiting to retry, or in flight).
    pub fn len(&self) -> usize {
        self.held.len()
    }

    /// Whether no suspect is held.
    pub fn is_empty(&self) -> bool {
        self.held.is_empty()
    }

    /// Whether another suspect may be handed in.
    pub fn has_capacity(&self) -> bool {
        self.held.len() < self.config.capacity
    }

    fn observe(&mut self, now: Timestamp) {
        self.now = self.now.max(now);
        let burst = u64::from(self.config.probe_burst) * MICRO;
        if let Some(last) = self.refilled_at {
            let elapsed = self.now.saturating_duration_since(last).as_micros();
            // rate probes/s = rate tokens per 10^6 us = rate micro-tokens per us.
            let gained = u64::try_from(elapsed.saturating_mul(u128::from(self.config.probe_rate))).unwrap_or(u64::MAX);
            self.tokens_micro = self.tokens_micro.saturating_add(gained).min(burst);
        }
        self.refilled_at = Some(self.now);
    }

    /// Takes a suspect from the tracker. A suspect already held (same
    /// member, terminal and connection) is ignored.
    pub fn handle_suspect(&mut self, now: Timestamp, suspect: Suspect) -> Result<(), ReverseError> {
        self.observe(now);
        if self.held.contains(&key_of(&suspect)) {
            return Ok(());
        }
        if !self.has_capacity() {
            return Err(ReverseError::Full(self.config.capacity));
        }
        self.held.insert(key_of(&suspect));
        self.ready.push_back((suspect, 1));
        Ok(())
    }

    /// The next probe to send, if the rate limit allows one now.
    #[must_use]
    pub fn poll_probe(&mut self, now: Timestamp) -> Option<Probe> {
        self.observe(now);
        self.promote_due_retries();
        if self.tokens_micro < MICRO {
            return None;
        }
        let (suspect, attempt) = self.ready.pop_front()?;
        self.tokens_micro -= MICRO;
        self.next_id += 1;
        let id = ProbeId(self.next_id);
        let deadline = self.now + self.config.answer_timeout;
        self.in_flight.insert(id, InFlight { suspect, attempt, deadline });
        self.deadlines.insert((deadline, id), ());
        Some(Probe { id, suspect, attempt })
    }

    fn promote_due_retries(&mut self) {
        while let Some(entry) = self.retries.first_entry() {
            if entry.key().0 > self.now {
                break;
            }
            let (suspect, attempt) = entry.remove();
            self.ready.push_back((suspect, attempt));
        }
    }

    /// The access layer answered probe `id`.
    pub fn handle_answer(&mut self, now: Timestamp, id: ProbeId, answer: ProbeAnswer) -> Result<(), ReverseError> {
        self.observe(now);
        let flight = self.in_flight.remove(&id).ok_or(ReverseError::UnknownProbe(id))?;
        self.deadlines.remove(&(flight.deadline, id));
        let kind = match answer {
            ProbeAnswer::Alive => VerdictKind::Alive,
            ProbeAnswer::Gone => VerdictKind::Gone,
        };
        self.decide(flight.suspect, kind);
        Ok(())
    }

    fn decide(&mut self, suspect: Suspect, kind: VerdictKind) {
        self.held.remove(&key_of(&suspect));
        self.verdicts.push_back(Verdict { suspect, kind });
    }

    /// When [`ReverseCheck::handle_timeout`] or [`ReverseCheck::poll_probe`]
    /// next has work: an answer deadline, a retry, or a token for a queued
    /// probe.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Timestamp> {
        let deadline = self.deadlines.keys().next().map(|&(t, _)| t);
        let retry = self.retries.keys().next().map(|&(t, _)| t);
        let token = (!self.ready.is_empty()).then(|| {
            if self.tokens_micro >= MICRO {
                self.now
            } else {
                let missing = MICRO - self.tokens_micro;
                let wait_us = missing.div_ceil(u64::from(self.config.probe_rate));
                self.now + Duration::from_micros(wait_us)
            }
        });
        [deadline, retry, token].into_iter().flatten().min()
    }

    /// Expires unanswered probes: each is retried after a backoff, or
    /// decided once out of attempts.
    pub fn handle_timeout(&mut self, now: Timestamp) {
        self.observe(now);
        while let Some(entry) = self.deadlines.first_entry() {
            if entry.key().0 > self.now {
                break;
            }
            let (_, id) = *entry.key();
            entry.remove();
            let Some(flight) = self.in_flight.remove(&id) else { continue };
            if flight.attempt >= self.config.max_attempts {
                let gone = self.config.on_no_answer == NoAnswer::AssumeGone;
                self.decide(flight.suspect, VerdictKind::NoAnswer { gone });
            } else {
                let backoff = self.config.backoff.saturating_mul(1 << (flight.attempt - 1).min(16));
                self.next_id += 1;
                self.retries.insert((self.now + backoff, self.next_id), (flight.suspect, flight.attempt + 1));
            }
        }
        self.promote_due_retries();
    }

    /// The next decided suspect.
    #[must_use]
    pub fn poll_verdict(&mut self) -> Option<Verdict> {
        self.verdicts.pop_front()
    }

    /// Withdraws, without a verdict, every held suspect that `keep`
    /// rejects, wherever it is (queued, waiting to retry, or in flight):
    /// what a host does when the sessions stopped being its own (a view
    /// change gave them to another server). An answer to a withdrawn probe
    /// is then refused as [`ReverseError::UnknownProbe`]. Returns how many
    /// suspects were withdrawn. O(suspects held).
    pub fn retain(&mut self, mut keep: impl FnMut(&Suspect) -> bool) -> usize {
        let before = self.held.len();
        let held = &mut self.held;
        let mut judge = |suspect: &Suspect| {
            let kept = keep(suspect);
            if !kept {
                held.remove(&key_of(suspect));
            }
            kept
        };
        self.ready.retain(|(suspect, _)| judge(suspect));
        self.retries.retain(|_, (suspect, _)| judge(suspect));
        let deadlines = &mut self.deadlines;
        self.in_flight.retain(|&id, flight| {
            let kept = judge(&flight.suspect);
            if !kept {
                deadlines.remove(&(flight.deadline, id));
            }
            kept
        });
        before - self.held.len()
    }

    /// Withdraws the probe `id`, in flight, without a verdict: its question
    /// no longer matters (the session ended or moved to another connection
    /// before the probe was sent). Returns the suspect it was about, or
    /// `None` (changing nothing) if no such probe is in flight. The rate
    /// token it took is not given back.
    pub fn withdraw(&mut self, id: ProbeId) -> Option<Suspect> {
        let flight = self.in_flight.remove(&id)?;
        self.deadlines.remove(&(flight.deadline, id));
        self.held.remove(&key_of(&flight.suspect));
        Some(flight.suspect)
    }
}
