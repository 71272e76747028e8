//! How heartbeat servers watch each other: all-to-all heartbeats judged by
//! a phi-accrual failure detector (Hayashibara et al., 2004, in the form
//! Akka uses).
//!
//! Every [`DetectorConfig::interval`] a server sends a small heartbeat to
//! every peer ([`FailureDetector::poll_send`]). For each peer the detector
//! keeps a window of inter-arrival times and turns the silence since the
//! last arrival into `phi`, the negative decimal log of the probability that
//! a live peer would be this late. Above [`DetectorConfig::threshold`] the
//! peer is reported down; its next heartbeat reports it up again.
//!
//! [`DetectorConfig::acceptable_pause`] is added to the expected interval:
//! it is how long a live peer may stall (a GC pause, a VM hiccup) without
//! being reported. Detection time is roughly `acceptable_pause + interval +
//! 5 x min_std_dev`: 2.7 s with the defaults, which tolerate 2 s pauses on a
//! LAN with 5% loss. The module's tests measure both figures in simulation.
//!
//! For the tens of servers a heartbeat cluster has, all-to-all heartbeats
//! cost little (50 servers at 5 Hz: 12,500 tiny messages a second) and, unlike
//! a gossip protocol, every server's opinion of every peer rests on its own
//! observations.

use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

use room_core::{NodeId, Timestamp};

/// Detector settings.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct DetectorConfig {
    /// Heartbeat period (default 200 ms).
    pub interval: Duration,
    /// Phi above which a peer is down (default 8: a live peer is that late
    /// with probability 10^-8 under the model).
    pub threshold: f64,
    /// Silence a live peer may show on top of its usual interval (default
    /// 2 s).
    pub acceptable_pause: Duration,
    /// Floor on the standard deviation of inter-arrival times (default
    /// 100 ms), so a very regular peer is not judged on microseconds.
    pub min_std_dev: Duration,
    /// Inter-arrival samples kept per peer (default 100).
    pub window: usize,
}

impl Default for DetectorConfig {
    fn default() -> Self {
        DetectorConfig {
            interval: Duration::from_millis(200),
            threshold: 8.0,
            acceptable_pause: Duration::from_secs(2),
            min_std_dev: Duration::from_millis(100),
            window: 100,
        }
    }
}

/// A configuration the detector refuses.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum DetectorConfigError {
    /// A zero interval or window, or a zero minimum deviation.
    #[error("{0} must be positive")]
    Zero(&'static str),
    /// A threshold that is not a positive finite number.
    #[error("threshold {0} must be a positive finite number")]
    Threshold(f64),
}

/// A change in a peer's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum PeerEvent {
    /// The peer went silent for too long.
    Down(NodeId),
    /// A peer reported down was heard from again.
    Up(NodeId),
}

#[derive(Debug, Clone)]
struct Peer {
    intervals_ms: VecDeque<f64>,
    sum: f64,
    sum_sq: f64,
    last: Option<Timestamp>,
    down: bool,
}

impl Peer {
    fn new(now: Timestamp, first_interval_ms: f64) -> Peer {
        // Seed the window with the nominal interval so a fresh peer has a
        // sane estimate, and start its clock now so a peer that never speaks
        // is eventually reported.
        let mut peer = Peer { intervals_ms: VecDeque::new(), sum: 0.0, sum_sq: 0.0, last: Some(now), down: false };
        peer.push(first_interval_ms, 1);
        peer
    }

    fn push(&mut self, sample: f64, window: usize) {
        if self.intervals_ms.len() >= window
            && let Some(old) = self.intervals_ms.pop_front()
        {
            self.sum -= old;
            self.sum_sq -= old * old;
        }
        self.intervals_ms.push_back(sample);
        self.sum += sample;
        self.sum_sq += sample * sample;
    }

    fn mean_and_std(&self) -> (f64, f64) {
        let n = self.intervals_ms.len().max(1) as f64;
        let mean = self.sum / n;
        let variance = (self.sum_sq / n - mean * mean).max(0.0);
        (mean, variance.sqrt())
    }
}

/// One server's detector. See the [module docs](self).
#[derive(Debug)]
pub struct FailureDetector {
    config: DetectorConfig,
    peers: BTreeMap<NodeId, Peer>,
    next_send: Option<Timestamp>,
    events: VecDeque<PeerEvent>,
    now: Timestamp,
}

fn millis(d: Duration) -> f64 {
    d.as_secs_f64() * 1_000.0
}

impl FailureDetector {
    /// A detector with no peers.
    pub fn new(config: DetectorConfig) -> Result<FailureDetector, DetectorConfigError> {
        if config.interval.is_zero() {
            return Err(DetectorConfigError::Zero("interval"));
        }
        if config.window == 0 {
            return Err(DetectorConfigError::Zero("window"));
        }
        if config.min_std_dev.is_zero() {
            return Err(DetectorConfigError::Zero("min_std_dev"));
        }
        if !(config.threshold.is_finite() && config.threshold > 0.0) {
            return Err(DetectorConfigError::Threshold(config.threshold));
        }
        Ok(FailureDetector {
            config,
            peers: BTreeMap::new(),
            next_send: None,
            events: VecDeque::new(),
            now: Timestamp::ZERO,
        })
    }

    /// Starts watching `peer` (counted as heard from now).
    pub fn add_peer(&mut self, now: Timestamp, peer: NodeId) {
        self.observe(now);
        let first = millis(self.config.interval);
        self.peers.entry(peer).or_insert_with(|| Peer::new(now, first));
    }

    /// Stops watching `peer`.
    pub fn remove_peer(&mut self, peer: NodeId) {
        self.peers.remove(&peer);
    }

    /// The peers watched, and whether each is currently reported down.
    pub fn peers(&self) -> impl Iterator<Item = (NodeId, bool)> + '_ {
        self.peers.iter().map(|(&id, p)| (id, p.down))
    }

    fn observe(&mut self, now: Timestamp) {
        self.now = self.now.max(now);
        self.next_send.get_or_insert(self.now);
    }

    /// A heartbeat from `peer` arrived. Heartbeats from unknown peers are
    /// ignored (add them first).
    pub fn handle_heartbeat(&mut self, now: Timestamp, peer: NodeId) {
        self.observe(now);
        let window = self.config.window;
        let now = self.now;
        let Some(state) = self.peers.get_mut(&peer) else { return };
        if let Some(last) = state.last
            && now > last
        {
            // Pauses are modelled by `acceptable_pause`; learning them as
            // ordinary intervals would widen the deviation and slow the
            // detection of real failures for a whole window.
            let sample = millis(now.saturating_duration_since(last)).min(3.0 * millis(self.config.interval));
            state.push(sample, window);
        }
        state.last = Some(now);
        if state.down {
            state.down = false;
            self.events.push_back(PeerEvent::Up(peer));
        }
    }

    /// The suspicion level of `peer` now (`None` for an unknown peer).
    pub fn phi(&self, now: Timestamp, peer: NodeId) -> Option<f64> {
        let state = self.peers.get(&peer)?;
        let last = state.last?;
        let elapsed = millis(now.max(self.now).saturating_duration_since(last));
        let (mean, std) = state.mean_and_std();
        let mean = mean + millis(self.config.acceptable_pause);
        let std = std.max(millis(self.config.min_std_dev));
        Some(phi(elapsed, mean, std))
    }

    /// When to call [`FailureDetector::handle_timeout`] (and
    /// [`FailureDetector::poll_send`]) next.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Timestamp> {
        // Sending and checking share one cadence: each check can at worst be
        // an interval late, which the detection time already allows for.
        self.next_send
    }

    /// Re-judges every peer; newly silent ones are reported down.
    pub fn handle_timeout(&mut self, now: Timestamp) {
        self.observe(now);
        let now = self.now;
        let verdicts: Vec<NodeId> = self
            .peers
            .iter()
            .filter(|(_, p)| !p.down)
            .filter(|&(&id, _)| self.phi(now, id).is_some_and(|phi| phi > self.config.threshold))
            .map(|(&id, _)| id)
            .collect();
        for id in verdicts {
            if let Some(p) = self.peers.get_mut(&id) {
                p.down = true;
            }
            self.events.push_back(PeerEvent::Down(id));
        }
    }

    /// Whether a heartbeat to every peer is due now. Returns the peers to
    /// send it to, and schedules the next round.
    #[must_use]
    pub fn poll_send(&mut self, now: Timestamp) -> Option<Vec<NodeId>> {
        self.observe(now);
        let due = self.next_send?;
        if due > self.now {
            return None;
        }
        // Keep the cadence, but never fall more than one round behind.
        let next = due + self.config.interval;
        self.next_send = Some(if next <= self.now { self.now + self.config.interval } else { next });
        Some(self.peers.keys().copied().collect())
    }

    /// The next change in a peer's state.
    #[must_use]
    pub fn poll_event(&mut self) -> Option<PeerEvent> {
        self.events.pop_front()
    }
}

/// `-log10(P(a live peer is later than elapsed))` under a normal model of
/// inter-arrival times, with the logistic approximation of its tail.
fn phi(elapsed: f64, mean: f64, std: f64) -> f64 {
    let y = (elapsed - mean) / std;
    let e = (-y * (1.5976 + 0.070566 * y * y)).exp();
    let p_later = if elapsed > mean { e / (1.0 + e) } else { 1.0 - 1.0 / (1.0 + e) };
    -p_later.max(f64::MIN_POSITIVE).log10()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phi_grows_with_silence() {
        let (mean, std) = (2_200.0, 100.0);
        assert!(phi(1_000.0, mean, std) < 0.1);
        assert!((phi(2_200.0, mean, std) - 0.30).abs() < 0.01, "half the mass is later than the mean");
        assert!(phi(2_400.0, mean, std) < 2.0);
        assert!(phi(2_800.0, mean, std) > 8.0);
        assert!(phi(1e12, mean, std).is_finite());
    }

    #[test]
    fn bad_configs_are_refused() {
        let c = DetectorConfig { threshold: f64::NAN, ..DetectorConfig::default() };
        assert!(matches!(FailureDetector::new(c), Err(DetectorConfigError::Threshold(_))));
        let c = DetectorConfig { interval: Duration::ZERO, ..DetectorConfig::default() };
        assert_eq!(FailureDetector::new(c).unwrap_err(), DetectorConfigError::Zero("interval"));
        let c = DetectorConfig { window: 0, ..DetectorConfig::default() };
        assert_eq!(FailureDetector::new(c).unwrap_err(), DetectorConfigError::Zero("window"));
    }
}
