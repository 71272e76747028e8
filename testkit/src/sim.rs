//! The simulated cluster: nodes, network, faults and the driver.

use std::any::Any;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::time::Duration;

use room_core::Timestamp;

use crate::rng::SimRng;

/// A node's address in a [`Sim`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Addr(pub u32);

impl fmt::Display for Addr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "#{}", self.0)
    }
}

/// A simulated process: a sans-IO core plus whatever glue the test needs.
/// Nodes of different types share one message type `M` (often an enum).
pub trait SimNode<M>: Any {
    /// A message from `from` arrived.
    fn handle_message(&mut self, now: Timestamp, from: Addr, msg: M, out: &mut Outbox<M>);

    /// The wake-up the node asked for through [`SimNode::poll_timeout`] is due.
    fn handle_timeout(&mut self, now: Timestamp, out: &mut Outbox<M>) {
        let _ = (now, out);
    }

    /// When the node next wants [`SimNode::handle_timeout`], if ever. A time
    /// in the past means "now".
    #[must_use]
    fn poll_timeout(&self) -> Option<Timestamp> {
        None
    }
}

/// Messages a node sends while handling an input.
#[derive(Debug)]
pub struct Outbox<M> {
    sends: Vec<(Addr, M)>,
}

impl<M> Outbox<M> {
    /// Sends `msg` to `to` through the simulated network.
    pub fn send(&mut self, to: Addr, msg: M) {
        self.sends.push((to, msg));
    }

    /// How many messages are waiting.
    pub fn len(&self) -> usize {
        self.sends.len()
    }

    /// Whether nothing was sent.
    pub fn is_empty(&self) -> bool {
        self.sends.is_empty()
    }
}

/// How one direction of a link behaves.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LinkConfig {
    /// Base one-way delay.
    pub delay: Duration,
    /// Extra delay, uniform in `[0, jitter)`: reorders messages that are
    /// closer together than this.
    pub jitter: Duration,
    /// Probability that a message is lost.
    pub loss: f64,
    /// Probability that a message arrives twice.
    pub duplicate: f64,
    /// Probability that a message is held back by `reorder_delay`.
    pub reorder: f64,
    /// The hold-back of a reordered message.
    pub reorder_delay: Duration,
}

impl LinkConfig {
    /// A data-centre LAN: 0.5 ms ± 0.2 ms, nothing lost.
    pub const LAN: LinkConfig = LinkConfig {
        delay: Duration::from_micros(500),
        jitter: Duration::from_micros(200),
        loss: 0.0,
        duplicate: 0.0,
        reorder: 0.0,
        reorder_delay: Duration::ZERO,
    };

    /// A link that delivers every message, in order, after exactly `delay`.
    pub const fn perfect(delay: Duration) -> LinkConfig {
        LinkConfig {
            delay,
            jitter: Duration::ZERO,
            loss: 0.0,
            duplicate: 0.0,
            reorder: 0.0,
            reorder_delay: Duration::ZERO,
        }
    }

    /// With loss probability `p`.
    #[must_use]
    pub const fn with_loss(mut self, p: f64) -> Self {
        self.loss = p;
        self
    }

    /// With duplication probability `p`.
    #[must_use]
    pub const fn with_duplicate(mut self, p: f64) -> Self {
        self.duplicate = p;
        self
    }

    /// With probability `p` of holding a message back by `by`.
    #[must_use]
    pub const fn with_reorder(mut self, p: f64, by: Duration) -> Self {
        self.reorder = p;
        self.reorder_delay = by;
        self
    }

    /// With jitter `jitter`.
    #[must_use]
    pub const fn with_jitter(mut self, jitter: Duration) -> Self {
        self.jitter = jitter;
        self
    }
}

impl Default for LinkConfig {
    fn default() -> Self {
        LinkConfig::LAN
    }
}

/// Why a message never arrived.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum DropReason {
    /// Random loss on the link.
    Loss,
    /// The link was blocked by a partition (when sent or when due).
    Partition,
    /// The receiver was crashed, or restarted since the message was sent.
    Crashed,
    /// No node has that address.
    UnknownAddr,
}

/// Network counters.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NetStats {
    /// Messages handed to the network.
    pub sent: u64,
    /// Messages handed to a receiver (duplicates included).
    pub delivered: u64,
    /// Extra copies the network made.
    pub duplicated: u64,
    /// Messages dropped, by reason.
    pub dropped: BTreeMap<String, u64>,
}

impl NetStats {
    /// Messages dropped for `reason`.
    pub fn dropped(&self, reason: DropReason) -> u64 {
        self.dropped.get(&format!("{reason:?}")).copied().unwrap_or(0)
    }
}

/// What happened, for traces.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum TraceKind {
    /// A message reached `to`.
    Delivered {
        /// Sender.
        from: Addr,
        /// Receiver.
        to: Addr,
    },
    /// A message was dropped.
    Dropped {
        /// Sender.
        from: Addr,
        /// Intended receiver.
        to: Addr,
        /// Why.
        reason: DropReason,
    },
    /// A node's timer fired.
    Timeout(Addr),
    /// A node crashed.
    Crashed(Addr),
    /// A node restarted.
    Restarted(Addr),
    /// A node paused.
    Paused(Addr),
    /// A node resumed.
    Resumed(Addr),
}

/// One traced event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceEvent {
    /// When.
    pub at: Timestamp,
    /// What.
    pub kind: TraceKind,
}

/// Why the driver stopped.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SimError {
    /// Too many steps without virtual time moving: some node keeps waking
    /// itself (or messaging) at one instant.
    #[error("livelock: {steps} steps at {at} without time advancing")]
    Livelock {
        /// The stuck instant.
        at: Timestamp,
        /// Steps taken there.
        steps: u64,
    },
    /// The run took more steps than its budget.
    #[error("step budget of {budget} exhausted at {at}")]
    StepBudget {
        /// Where virtual time had got to.
        at: Timestamp,
        /// The budget.
        budget: u64,
    },
}

type Action<M> = Box<dyn FnOnce(&mut Sim<M>)>;

enum Pending<M> {
    Deliver { from: Addr, to: Addr, incarnation: u64, msg: M },
    Resume(Addr),
    Action(Action<M>),
}

struct Slot<M> {
    name: String,
    node: Option<Box<dyn SimNode<M>>>,
    incarnation: u64,
    paused: bool,
    /// Messages that arrived while paused, delivered on resume.
    held: Vec<(Addr, M)>,
    wake: Option<Timestamp>,
}

/// A deterministic simulated cluster. See the [crate docs](crate).
pub struct Sim<M> {
    now: Timestamp,
    rng: SimRng,
    slots: Vec<Slot<M>>,
    queue: BTreeMap<(Timestamp, u64), Pending<M>>,
    seq: u64,
    default_link: LinkConfig,
    links: HashMap<(Addr, Addr), LinkConfig>,
    blocked: HashSet<(Addr, Addr)>,
    stats: NetStats,
    trace: Option<Vec<TraceEvent>>,
    steps_per_instant: u64,
    steps_per_run: u64,
}

impl<M> fmt::Debug for Sim<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sim")
            .field("now", &self.now)
            .field("nodes", &self.slots.iter().map(|s| &s.name).collect::<Vec<_>>())
            .field("pending", &self.queue.len())
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

enum Next {
    Queued,
    Wake(usize),
}

impl<M: Clone + 'static> Sim<M> {
    /// An empty simulation at time zero, with LAN links, seeded by `seed`.
    pub fn new(seed: u64) -> Self {
        Sim {
            now: Timestamp::ZERO,
            rng: SimRng::new(seed),
            slots: Vec::new(),
            queue: BTreeMap::new(),
            seq: 0,
            default_link: LinkConfig::LAN,
            links: HashMap::new(),
            blocked: HashSet::new(),
            stats: NetStats::default(),
            trace: None,
            steps_per_instant: 1_000_000,
            steps_per_run: u64::MAX,
        }
    }

    /// The current virtual time.
    pub fn now(&self) -> Timestamp {
        self.now
    }

    /// The network counters.
    pub fn stats(&self) -> &NetStats {
        &self.stats
    }

    /// The simulation's generator, for tests that want seeded randomness of
    /// their own in step with the run.
    pub fn rng(&mut self) -> &mut SimRng {
        &mut self.rng
    }

    /// Starts recording a trace of every delivery, drop and timer.
    pub fn enable_trace(&mut self) {
        self.trace.get_or_insert_with(Vec::new);
    }

    /// The trace so far (empty unless enabled).
    pub fn trace(&self) -> &[TraceEvent] {
        self.trace.as_deref().unwrap_or(&[])
    }

    /// Sets the livelock guard (steps at one instant) and the budget of
    /// steps for each `run_*` call.
    pub fn set_step_limits(&mut self, per_instant: u64, per_run: u64) {
        self.steps_per_instant = per_instant.max(1);
        self.steps_per_run = per_run.max(1);
    }

    /// Adds a node named `name`.
    pub fn add_node(&mut self, name: impl Into<String>, node: impl SimNode<M>) -> Addr {
        let addr = Addr(self.slots.len() as u32);
        let wake = node.poll_timeout();
        self.slots.push(Slot {
            name: name.into(),
            node: Some(Box::new(node)),
            incarnation: 0,
            paused: false,
            held: Vec::new(),
            wake,
        });
        addr
    }

    /// The address of the node named `name`.
    pub fn addr(&self, name: &str) -> Option<Addr> {
        self.slots.iter().position(|s| s.name == name).map(|i| Addr(i as u32))
    }

    /// The name of `addr`.
    pub fn name(&self, addr: Addr) -> Option<&str> {
        self.slot(addr).map(|s| s.name.as_str())
    }

    /// Every address.
    pub fn addrs(&self) -> impl Iterator<Item = Addr> + '_ {
        (0..self.slots.len() as u32).map(Addr)
    }

    fn slot(&self, addr: Addr) -> Option<&Slot<M>> {
        self.slots.get(addr.0 as usize)
    }

    fn slot_mut(&mut self, addr: Addr) -> Option<&mut Slot<M>> {
        self.slots.get_mut(addr.0 as usize)
    }

    /// The node at `addr` as a `T`, if it is up and of that type.
    pub fn node<T: SimNode<M>>(&self, addr: Addr) -> Option<&T> {
        let node: &dyn Any = self.slot(addr)?.node.as_deref()?;
        node.downcast_ref::<T>()
    }

    /// The node at `addr` as a mutable `T`. Its wake-up is re-read after the
    /// borrow ends, at the next step.
    pub fn node_mut<T: SimNode<M>>(&mut self, addr: Addr) -> Option<&mut T> {
        let node: &mut dyn Any = self.slot_mut(addr)?.node.as_deref_mut()?;
        node.downcast_mut::<T>()
    }

    /// Whether the node at `addr` is up (not crashed).
    pub fn is_up(&self, addr: Addr) -> bool {
        self.slot(addr).is_some_and(|s| s.node.is_some())
    }

    /// Sends `msg` from `from` to `to` through the network, as if `from` had.
    pub fn send(&mut self, from: Addr, to: Addr, msg: M) {
        self.transmit(from, to, msg);
    }

    /// The default configuration of links without one of their own.
    pub fn set_default_link(&mut self, link: LinkConfig) {
        self.default_link = link;
    }

    /// Configures the link from `from` to `to` (one direction).
    pub fn set_link(&mut self, from: Addr, to: Addr, link: LinkConfig) {
        self.links.insert((from, to), link);
    }

    /// Blocks both directions between every node of `a` and every node of `b`.
    pub fn partition(&mut self, a: &[Addr], b: &[Addr]) {
        for &x in a {
            for &y in b {
                self.blocked.insert((x, y));
                self.blocked.insert((y, x));
            }
        }
    }

    /// Cuts `node` off from every other node.
    pub fn isolate(&mut self, node: Addr) {
        let others: Vec<Addr> = self.addrs().filter(|&a| a != node).collect();
        self.partition(&[node], &others);
    }

    /// Removes every partition.
    pub fn heal(&mut self) {
        self.blocked.clear();
    }

    /// Stops `node` from running: messages to it are held, timers wait.
    pub fn pause(&mut self, node: Addr) {
        if let Some(slot) = self.slot_mut(node) {
            slot.paused = true;
            self.record(TraceKind::Paused(node));
        }
    }

    /// Pauses `node` for `d` (a GC pause, a stalled VM).
    pub fn pause_for(&mut self, node: Addr, d: Duration) {
        self.pause(node);
        let at = self.now + d;
        self.push(at, Pending::Resume(node));
    }

    /// Resumes a paused node: held messages are delivered in arrival order,
    /// then overdue timers fire at the next step.
    pub fn resume(&mut self, node: Addr) {
        let Some(slot) = self.slot_mut(node) else { return };
        if !slot.paused {
            return;
        }
        slot.paused = false;
        let held = std::mem::take(&mut slot.held);
        self.record(TraceKind::Resumed(node));
        for (from, msg) in held {
            self.deliver(from, node, msg);
        }
    }

    /// Crashes `node`: its state is gone, held and in-flight messages to it
    /// are lost.
    pub fn crash(&mut self, node: Addr) {
        if let Some(slot) = self.slot_mut(node) {
            slot.node = None;
            slot.held.clear();
            slot.wake = None;
            slot.paused = false;
            slot.incarnation += 1;
            self.record(TraceKind::Crashed(node));
        }
    }

    /// Starts `node` again with fresh state `fresh`.
    pub fn restart(&mut self, node: Addr, fresh: impl SimNode<M>) {
        if let Some(slot) = self.slot_mut(node) {
            slot.wake = fresh.poll_timeout();
            slot.node = Some(Box::new(fresh));
            slot.incarnation += 1;
            self.record(TraceKind::Restarted(node));
        }
    }

    /// Runs `action` on the simulation at virtual time `at` (a crash, a
    /// heal, a burst of traffic).
    pub fn schedule(&mut self, at: Timestamp, action: impl FnOnce(&mut Sim<M>) + 'static) {
        self.push(at, Pending::Action(Box::new(action)));
    }

    fn push(&mut self, at: Timestamp, pending: Pending<M>) {
        self.seq += 1;
        self.queue.insert((at.max(self.now), self.seq), pending);
    }

    fn record(&mut self, kind: TraceKind) {
        if let Some(trace) = self.trace.as_mut() {
            trace.push(TraceEvent { at: self.now, kind });
        }
    }

    fn drop_message(&mut self, from: Addr, to: Addr, reason: DropReason) {
        *self.stats.dropped.entry(format!("{reason:?}")).or_default() += 1;
        self.record(TraceKind::Dropped { from, to, reason });
    }

    /// Puts a message on the wire, applying the link's faults.
    fn transmit(&mut self, from: Addr, to: Addr, msg: M) {
        self.stats.sent += 1;
        let Some(incarnation) = self.slot(to).map(|s| s.incarnation) else {
            return self.drop_message(from, to, DropReason::UnknownAddr);
        };
        if self.blocked.contains(&(from, to)) {
            return self.drop_message(from, to, DropReason::Partition);
        }
        let link = self.links.get(&(from, to)).copied().unwrap_or(self.default_link);
        if self.rng.chance(link.loss) {
            return self.drop_message(from, to, DropReason::Loss);
        }
        if self.rng.chance(link.duplicate) {
            self.stats.duplicated += 1;
            let at = self.now + self.transit_time(&link);
            self.push(at, Pending::Deliver { from, to, incarnation, msg: msg.clone() });
        }
        let at = self.now + self.transit_time(&link);
        self.push(at, Pending::Deliver { from, to, incarnation, msg });
    }

    /// One copy's time on the wire: delay, jitter, and maybe a hold-back.
    fn transit_time(&mut self, link: &LinkConfig) -> Duration {
        let mut delay = link.delay + link.jitter.mul_f64(self.rng.next_f64());
        if self.rng.chance(link.reorder) {
            delay += link.reorder_delay;
        }
        delay
    }

    /// Hands a due message to its receiver (or holds or drops it).
    fn deliver(&mut self, from: Addr, to: Addr, msg: M) {
        let index = to.0 as usize;
        let Some(slot) = self.slots.get_mut(index) else {
            return self.drop_message(from, to, DropReason::UnknownAddr);
        };
        if slot.paused {
            slot.held.push((from, msg));
            return;
        }
        let Some(mut node) = slot.node.take() else {
            return self.drop_message(from, to, DropReason::Crashed);
        };
        self.stats.delivered += 1;
        self.record(TraceKind::Delivered { from, to });
        let mut out = Outbox { sends: Vec::new() };
        node.handle_message(self.now, from, msg, &mut out);
        self.put_back(index, node, out);
    }

    fn fire_timer(&mut self, index: usize) {
        let Some(mut node) = self.slots[index].node.take() else { return };
        self.record(TraceKind::Timeout(Addr(index as u32)));
        let mut out = Outbox { sends: Vec::new() };
        node.handle_timeout(self.now, &mut out);
        self.put_back(index, node, out);
    }

    fn put_back(&mut self, index: usize, node: Box<dyn SimNode<M>>, out: Outbox<M>) {
        let slot = &mut self.slots[index];
        slot.wake = node.poll_timeout();
        slot.node = Some(node);
        let from = Addr(index as u32);
        for (to, msg) in out.sends {
            self.transmit(from, to, msg);
        }
    }

    fn refresh_wakes(&mut self) {
        for slot in &mut self.slots {
            if let Some(node) = slot.node.as_deref() {
                slot.wake = node.poll_timeout();
            }
        }
    }

    /// The next event and its time; queued events go before timers at the
    /// same instant, lower addresses before higher.
    fn next_event(&self) -> Option<(Timestamp, Next)> {
        let queued = self.queue.keys().next().map(|&(at, _)| (at, Next::Queued));
        let wake = self
            .slots
            .iter()
            .enumerate()
            .filter(|(_, s)| !s.paused && s.node.is_some())
            .filter_map(|(i, s)| s.wake.map(|w| (w.max(self.now), i)))
            .min()
            .map(|(at, i)| (at, Next::Wake(i)));
        match (queued, wake) {
            (Some(q), Some(w)) => Some(if w.0 < q.0 { w } else { q }),
            (q, w) => q.or(w),
        }
    }

    /// Processes the next event. Returns its time, or `None` if nothing is
    /// pending.
    pub fn step(&mut self) -> Option<Timestamp> {
        self.refresh_wakes();
        let (at, next) = self.next_event()?;
        self.now = self.now.max(at);
        match next {
            Next::Wake(index) => self.fire_timer(index),
            Next::Queued => {
                let (_, pending) = self.queue.pop_first()?;
                match pending {
                    Pending::Deliver { from, to, incarnation, msg } => {
                        let current = self.slot(to).map(|s| s.incarnation);
                        if self.blocked.contains(&(from, to)) {
                            self.drop_message(from, to, DropReason::Partition);
                        } else if current != Some(incarnation) {
                            self.drop_message(from, to, DropReason::Crashed);
                        } else {
                            self.deliver(from, to, msg);
                        }
                    }
                    Pending::Resume(node) => self.resume(node),
                    Pending::Action(action) => action(self),
                }
            }
        }
        Some(self.now)
    }

    /// Runs every event due at or before `until`, then sets the clock to
    /// `until`.
    pub fn run_until(&mut self, until: Timestamp) -> Result<(), SimError> {
        let (mut steps, mut at_instant, mut instant) = (0u64, 0u64, self.now);
        loop {
            self.refresh_wakes();
            match self.next_event() {
                Some((at, _)) if at <= until => {}
                _ => break,
            }
            self.step();
            steps += 1;
            if self.now == instant {
                at_instant += 1;
                if at_instant > self.steps_per_instant {
                    return Err(SimError::Livelock { at: self.now, steps: at_instant });
                }
            } else {
                instant = self.now;
                at_instant = 1;
            }
            if steps >= self.steps_per_run {
                return Err(SimError::StepBudget { at: self.now, budget: self.steps_per_run });
            }
        }
        self.now = self.now.max(until);
        Ok(())
    }

    /// Runs for `d` of virtual time.
    pub fn run_for(&mut self, d: Duration) -> Result<(), SimError> {
        let until = self.now + d;
        self.run_until(until)
    }
}
