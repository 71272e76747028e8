//! The consistent-hash router: which node owns a key.
//!
//! # Design
//!
//! Keys hash (with the [stable hash](crate::hash)) into a table of
//! `2^slot_bits` slots; each slot holds the index of its owner, so a lookup
//! is one hash and one array read. Slot owners are chosen by **weighted
//! rendezvous hashing** (highest random weight): node `n` draws, for slot
//! `s`, a uniform `u(n, s)` from a fixed integer mix of its seed and `s`, and
//! scores `-ln(u) / weight(n)`; the lowest score owns the slot, ties going to
//! the lower [`NodeId`].
//!
//! This is the one family of schemes that gives both properties the cluster
//! needs at once:
//!
//! * **Determinism:** a slot's owner is a function of the membership alone,
//!   not of the order nodes were added, removed or reweighted in, so every
//!   proxy that sees the same membership routes the same way.
//! * **Minimal disruption:** removing or down-weighting node `x` moves only
//!   slots away from `x`; adding or up-weighting `x` moves only slots to `x`.
//!   (Any scheme with both properties must be a per-slot ranking like this
//!   one: if removing a non-owner may never change an owner, the owner is the
//!   maximum of a fixed order.)
//!
//! Balance comes from the slot count: each node's share of slots is
//! binomial, so the default of 2^21 slots (a 4 MiB table) keeps the busiest
//! of 64 equal nodes within about 1.2% of the mean. See docs/BENCHMARKS.md.
//!
//! The logarithm is computed with basic IEEE-754 operations only (no libm),
//! so scores are bit-identical on every platform; golden-vector tests pin
//! placements.
//!
//! **Bounded-load mode** ([`RouterConfig::with_load_bound`]) caps every
//! node at `ceil((1 + ε) × slots × weight / total weight)` slots
//! (consistent hashing with bounded loads, Mirrokni, Thorup and Zadimoghaddam,
//! 2018): slots are taken in index order and each goes to the first node of
//! its rendezvous ranking that has room. Placement stays a function of the
//! membership, but a change may move a few slots between unchanged nodes.
//!
//! # Cost
//!
//! A membership change updates the table incrementally in `O(slots)` score
//! evaluations (a few milliseconds at 2^21 slots); building a table from
//! scratch costs `O(slots × nodes)` cheap integer mixes. Lookups never
//! allocate. [`Router::successors`] ranks all nodes for one slot, `O(nodes)`.

use std::collections::BTreeMap;
use std::fmt;
use std::ops::Range;

use crate::cluster::ClusterView;
use crate::hash::{RouteKey, mix64, stable_hash_tagged};
use crate::id::NodeId;

/// Default slot-table size: 2^21 slots.
pub const DEFAULT_SLOT_BITS: u8 = 21;
/// Smallest slot table: 2^8 slots.
pub const MIN_SLOT_BITS: u8 = 8;
/// Largest slot table: 2^24 slots (32 MiB).
pub const MAX_SLOT_BITS: u8 = 24;
/// The most nodes a router holds.
pub const MAX_NODES: usize = 4096;
/// The largest node weight. Weights are relative; 100 is a good unit.
pub const MAX_WEIGHT: u32 = 1_000_000;
/// The largest accepted load-bound ε.
pub const MAX_LOAD_BOUND: f64 = 16.0;

/// Marks a slot no node owns in the working placement (only while the router
/// is empty; the served table is then empty instead).
const NO_NODE: u16 = u16::MAX;

/// The table lookups read: one node index per slot, one byte wide while the
/// router has at most 256 node indexes. Width is speed here: at 2^21 slots a
/// 2 MiB table stays far warmer in cache than a 4 MiB one (12 ns against
/// 23 ns a lookup on the benchmark machine).
#[derive(Clone)]
enum SlotTable {
    Narrow(Vec<u8>),
    Wide(Vec<u16>),
}

impl SlotTable {
    /// The owner index of `slot`; `None` when the table is empty.
    #[inline]
    fn get(&self, slot: usize) -> Option<usize> {
        match self {
            SlotTable::Narrow(t) => t.get(slot).map(|&i| usize::from(i)),
            SlotTable::Wide(t) => t.get(slot).map(|&i| usize::from(i)),
        }
    }

    /// The served form of `placement`, narrow if every index fits a byte.
    fn from_placement(placement: &[u16], index_count: usize) -> SlotTable {
        if index_count == 0 {
            SlotTable::Narrow(Vec::new())
        } else if index_count <= 256 {
            // Every index is below index_count <= 256, so the cast is exact.
            SlotTable::Narrow(placement.iter().map(|&i| i as u8).collect())
        } else {
            SlotTable::Wide(placement.to_vec())
        }
    }
}

/// Why a router operation was refused. A refused operation never changes the
/// router.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum RouterError {
    /// The router has no nodes, so no key has an owner.
    #[error("no nodes to route to")]
    NoNodes,
    /// The node is already in the router (or named twice in one batch).
    #[error("node {0} is already present")]
    DuplicateNode(NodeId),
    /// The node is not in the router.
    #[error("node {0} is not present")]
    UnknownNode(NodeId),
    /// A weight of zero: a node that should take no keys must be removed.
    #[error("node {0} has weight 0; remove the node instead")]
    ZeroWeight(NodeId),
    /// A weight above [`MAX_WEIGHT`].
    #[error("node {node} has weight {weight}, above the maximum {max}")]
    WeightTooLarge {
        /// The node.
        node: NodeId,
        /// The weight given.
        weight: u32,
        /// [`MAX_WEIGHT`].
        max: u32,
    },
    /// More than [`MAX_NODES`] nodes.
    #[error("{count} nodes exceed the maximum of {max}")]
    TooManyNodes {
        /// How many nodes the change would leave.
        count: usize,
        /// [`MAX_NODES`].
        max: usize,
    },
    /// A slot-table size outside [`MIN_SLOT_BITS`]`..=`[`MAX_SLOT_BITS`].
    #[error("slot bits {bits} outside {min}..={max}")]
    SlotBitsOutOfRange {
        /// The value given.
        bits: u8,
        /// [`MIN_SLOT_BITS`].
        min: u8,
        /// [`MAX_SLOT_BITS`].
        max: u8,
    },
    /// A load bound that is negative, not finite, or above [`MAX_LOAD_BOUND`].
    #[error("load bound {0} is not a number in 0..={MAX_LOAD_BOUND}")]
    InvalidLoadBound(f64),
    /// Two routers with different slot counts cannot be compared.
    #[error("slot counts differ ({ours} vs {theirs})")]
    SlotCountMismatch {
        /// This router's slot count.
        ours: usize,
        /// The other router's slot count.
        theirs: usize,
    },
}

/// Checks a node weight: `1..=MAX_WEIGHT`.
pub(crate) fn validate_weight(node: NodeId, weight: u32) -> Result<(), RouterError> {
    match weight {
        0 => Err(RouterError::ZeroWeight(node)),
        w if w > MAX_WEIGHT => Err(RouterError::WeightTooLarge { node, weight, max: MAX_WEIGHT }),
        _ => Ok(()),
    }
}

/// How a [`Router`] builds its table.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RouterConfig {
    slot_bits: u8,
    load_bound: Option<f64>,
}

impl Default for RouterConfig {
    fn default() -> Self {
        RouterConfig { slot_bits: DEFAULT_SLOT_BITS, load_bound: None }
    }
}

impl RouterConfig {
    /// 2^[`DEFAULT_SLOT_BITS`] slots, no load bound.
    pub fn new() -> Self {
        Self::default()
    }

    /// Uses `2^bits` slots. More slots balance better and cost memory
    /// (2 bytes a slot) and time per membership change.
    pub fn with_slot_bits(mut self, bits: u8) -> Result<Self, RouterError> {
        if !(MIN_SLOT_BITS..=MAX_SLOT_BITS).contains(&bits) {
            return Err(RouterError::SlotBitsOutOfRange { bits, min: MIN_SLOT_BITS, max: MAX_SLOT_BITS });
        }
        self.slot_bits = bits;
        Ok(self)
    }

    /// Caps every node at `(1 + epsilon)` times its weighted share of slots.
    /// `epsilon = 0` gives exactly balanced slot counts.
    pub fn with_load_bound(mut self, epsilon: f64) -> Result<Self, RouterError> {
        if !(0.0..=MAX_LOAD_BOUND).contains(&epsilon) {
            return Err(RouterError::InvalidLoadBound(epsilon));
        }
        self.load_bound = Some(epsilon);
        Ok(self)
    }

    /// log2 of the slot count.
    pub fn slot_bits(&self) -> u8 {
        self.slot_bits
    }

    /// The slot count.
    pub fn slot_count(&self) -> usize {
        1 << self.slot_bits
    }

    /// The load bound ε, if any.
    pub fn load_bound(&self) -> Option<f64> {
        self.load_bound
    }
}

/// A node as the router keeps it.
#[derive(Debug, Clone, Copy)]
struct Entry {
    id: NodeId,
    weight: u32,
    /// Per-node seed of the rendezvous draws.
    seed: u64,
    inv_weight: f64,
}

impl Entry {
    fn new(id: NodeId, weight: u32) -> Entry {
        Entry { id, weight, seed: stable_hash_tagged(b'S', &id.0.to_le_bytes()), inv_weight: 1.0 / f64::from(weight) }
    }

    /// The node's uniform draw for `slot`, in (0, 1).
    #[inline]
    fn draw(&self, slot: u32) -> f64 {
        draw(self.seed, slot)
    }

    /// The node's rendezvous score for `slot`: lower wins.
    #[inline]
    fn score(&self, slot: u32) -> f64 {
        neg_ln(self.draw(slot)) * self.inv_weight
    }
}

/// Node `seed`'s uniform draw for `slot`, in (0, 1): the top 53 bits of a
/// fixed mix, centred in their interval so the draw is never 0 or 1.
#[inline]
fn draw(seed: u64, slot: u32) -> f64 {
    let h = mix64(seed ^ u64::from(slot).wrapping_mul(0x9e37_79b9_7f4a_7c15));
    // Below 2^53, so the signed conversion is exact, and it is one
    // instruction where the unsigned one is several.
    ((h >> 11) as i64 as f64 + 0.5) * (1.0 / (1u64 << 53) as f64)
}

/// Relative slack on the log-free score bounds, far above the rounding error
/// of [`neg_ln`] and of the bounds themselves, so pruning by them never
/// skips a node that could win or tie.
const BOUND_SLACK: f64 = 1.0 / (1u64 << 30) as f64;

/// Bounds on a score `-ln(u) / w` without a logarithm:
/// `1 - u <= -ln(u) <= (1 - u) / u`. Branch-free on purpose: a test on `u`
/// would be a coin flip per node for the branch predictor.
#[inline]
fn score_bounds(u: f64, inv_weight: f64) -> (f64, f64) {
    let t = (1.0 - u) * inv_weight;
    (t * (1.0 - BOUND_SLACK), t / u * (1.0 + BOUND_SLACK))
}

/// `-ln(u)` for `u` in (0, 1), from `+ - * /` only, so that it is
/// bit-identical on every IEEE-754 platform (libm's `ln` is not guaranteed to
/// be). Relative error is within a few ulp.
#[inline]
pub(crate) fn neg_ln(u: f64) -> f64 {
    const MANTISSA: u64 = (1 << 52) - 1;
    const ONE_EXPONENT: u64 = 1023 << 52;
    let bits = u.to_bits();
    let mut exponent = ((bits >> 52) & 0x7ff) as i64 - 1023;
    let mut m = f64::from_bits((bits & MANTISSA) | ONE_EXPONENT);
    if m > std::f64::consts::SQRT_2 {
        m *= 0.5;
        exponent += 1;
    }
    // ln m = 2 atanh(s) = 2 (s + s^3/3 + s^5/5 + …) with |s| <= 0.1716, so
    // eleven terms reach the last bit.
    let s = (m - 1.0) / (m + 1.0);
    let s2 = s * s;
    let mut p = 1.0 / 23.0;
    for c in [
        1.0 / 21.0,
        1.0 / 19.0,
        1.0 / 17.0,
        1.0 / 15.0,
        1.0 / 13.0,
        1.0 / 11.0,
        1.0 / 9.0,
        1.0 / 7.0,
        1.0 / 5.0,
        1.0 / 3.0,
    ] {
        p = p * s2 + c;
    }
    let ln_m = 2.0 * s + 2.0 * s * s2 * p;
    -(exponent as f64 * std::f64::consts::LN_2 + ln_m)
}

/// A run of consecutive slots whose owner differs between two placements.
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct SlotMove {
    /// The slots (use [`Router::slot_of`] to find a key's slot).
    pub slots: Range<u32>,
    /// The old owner (`None` if the old router was empty).
    pub from: Option<NodeId>,
    /// The new owner (`None` if the new router is empty).
    pub to: Option<NodeId>,
}

/// The consistent-hash router. See the [module docs](self) for the design.
///
/// ```
/// use room_core::{BusinessId, MemberKey, NodeId, RoomId, Router, RouterConfig, Uin};
///
/// let config = RouterConfig::new().with_slot_bits(16)?;
/// let mut router = Router::with_nodes(config, [(NodeId(1), 100), (NodeId(2), 100), (NodeId(3), 200)])?;
/// let key = MemberKey::new(BusinessId(7), RoomId(100), Uin(42));
/// let owner = router.route(&key)?;
///
/// let before = router.clone();
/// router.remove_node(NodeId(2))?;
/// // Only node 2's slots moved, and only to the survivors.
/// for moved in before.diff(&router)? {
///     assert_eq!(moved.from, Some(NodeId(2)));
/// }
/// if owner != NodeId(2) {
///     assert_eq!(router.route(&key)?, owner);
/// }
/// # Ok::<(), room_core::RouterError>(())
/// ```
#[derive(Clone)]
pub struct Router {
    config: RouterConfig,
    shift: u32,
    /// The working placement, slot -> node index: every slot's rendezvous
    /// winner, kept up to date incrementally.
    rendezvous: Vec<u16>,
    /// What lookups read: `rendezvous` itself, or in bounded-load mode the
    /// capped placement derived from it; empty while there are no nodes.
    served: SlotTable,
    /// Node index -> entry; `None` for freed indexes.
    entries: Vec<Option<Entry>>,
    /// Node index -> id, for the lookup path.
    ids: Vec<NodeId>,
    by_id: BTreeMap<NodeId, u16>,
    free: Vec<u16>,
}

impl fmt::Debug for Router {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Router")
            .field("config", &self.config)
            .field("nodes", &self.nodes().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

/// What a batch change does to existing placements.
struct Update {
    /// Nodes whose scores improved or that are new: they may take slots.
    challengers: Vec<u16>,
    /// Indexes whose slots must be re-ranked (removed or down-weighted).
    invalidated: Vec<bool>,
}

impl Router {
    /// An empty router: every lookup fails with [`RouterError::NoNodes`]
    /// until a node is added.
    pub fn new(config: RouterConfig) -> Self {
        let slots = config.slot_count();
        Router {
            shift: 64 - u32::from(config.slot_bits),
            rendezvous: vec![NO_NODE; slots],
            served: SlotTable::Narrow(Vec::new()),
            config,
            entries: Vec::new(),
            ids: Vec::new(),
            by_id: BTreeMap::new(),
            free: Vec::new(),
        }
    }

    /// A router over `nodes` (id, weight).
    pub fn with_nodes(
        config: RouterConfig,
        nodes: impl IntoIterator<Item = (NodeId, u32)>,
    ) -> Result<Self, RouterError> {
        let mut router = Router::new(config);
        router.set_nodes(nodes)?;
        Ok(router)
    }

    /// A router over the routable nodes of `view` (see [`ClusterView::routable`]).
    pub fn from_view(config: RouterConfig, view: &ClusterView) -> Result<Self, RouterError> {
        Router::with_nodes(config, view.routable())
    }

    /// The configuration.
    pub fn config(&self) -> &RouterConfig {
        &self.config
    }

    /// The slot count.
    pub fn slot_count(&self) -> usize {
        self.rendezvous.len()
    }

    /// How many nodes the router holds.
    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    /// Whether the router holds no node.
    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }

    /// The nodes and their weights, by id.
    pub fn nodes(&self) -> impl Iterator<Item = (NodeId, u32)> + '_ {
        self.by_id.values().filter_map(|&i| self.entry(i)).map(|e| (e.id, e.weight))
    }

    /// Whether `node` is in the router.
    pub fn contains(&self, node: NodeId) -> bool {
        self.by_id.contains_key(&node)
    }

    fn entry(&self, index: u16) -> Option<&Entry> {
        self.entries.get(usize::from(index)).and_then(Option::as_ref)
    }

    /// The slot `key` hashes to.
    #[inline]
    pub fn slot_of<K: RouteKey + ?Sized>(&self, key: &K) -> u32 {
        (key.route_hash() >> self.shift) as u32
    }

    /// The node that owns `key`.
    #[inline]
    pub fn route<K: RouteKey + ?Sized>(&self, key: &K) -> Result<NodeId, RouterError> {
        self.route_hash(key.route_hash())
    }

    /// The node that owns the key whose stable hash is `hash`.
    #[inline]
    pub fn route_hash(&self, hash: u64) -> Result<NodeId, RouterError> {
        self.served
            .get((hash >> self.shift) as usize)
            .and_then(|i| self.ids.get(i))
            .copied()
            .ok_or(RouterError::NoNodes)
    }

    /// The owner of `slot`, or `None` if the router is empty or the slot is
    /// out of range.
    pub fn owner_of_slot(&self, slot: u32) -> Option<NodeId> {
        self.served.get(slot as usize).and_then(|i| self.ids.get(i)).copied()
    }

    /// Up to `n` distinct nodes for `key`, in failover order: the owner first,
    /// then the nodes that would own the key if those before them were gone.
    /// Fewer than `n` if the router holds fewer nodes.
    pub fn successors<K: RouteKey + ?Sized>(&self, key: &K, n: usize) -> Result<Vec<NodeId>, RouterError> {
        if self.is_empty() {
            return Err(RouterError::NoNodes);
        }
        let slot = self.slot_of(key);
        let owner = self.owner_of_slot(slot).ok_or(RouterError::NoNodes)?;
        let mut ranked: Vec<(f64, NodeId)> =
            self.live_entries().filter(|e| e.id != owner).map(|e| (e.score(slot), e.id)).collect();
        let rest = n.saturating_sub(1).min(ranked.len());
        if rest > 0 && rest < ranked.len() {
            ranked.select_nth_unstable_by(rest - 1, cmp_score);
        }
        ranked.truncate(rest);
        ranked.sort_unstable_by(cmp_score);
        let mut out = Vec::with_capacity(rest + 1);
        if n > 0 {
            out.push(owner);
        }
        out.extend(ranked.into_iter().map(|(_, id)| id));
        Ok(out)
    }

    /// How many slots each node owns, by id.
    pub fn slot_counts(&self) -> BTreeMap<NodeId, usize> {
        let mut per_index = vec![0usize; self.entries.len()];
        for slot in 0..self.slot_count() {
            if let Some(c) = self.served.get(slot).and_then(|i| per_index.get_mut(i)) {
                *c += 1;
            }
        }
        self.by_id.iter().map(|(&id, &i)| (id, per_index[usize::from(i)])).collect()
    }

    /// The runs of slots whose owner differs from `self` to `newer`: what a
    /// migration must hand over.
    pub fn diff(&self, newer: &Router) -> Result<Vec<SlotMove>, RouterError> {
        if self.slot_count() != newer.slot_count() {
            return Err(RouterError::SlotCountMismatch { ours: self.slot_count(), theirs: newer.slot_count() });
        }
        let mut moves: Vec<SlotMove> = Vec::new();
        for slot in 0..self.slot_count() as u32 {
            let (from, to) = (self.owner_of_slot(slot), newer.owner_of_slot(slot));
            if from == to {
                continue;
            }
            match moves.last_mut() {
                Some(last) if last.slots.end == slot && last.from == from && last.to == to => last.slots.end += 1,
                _ => moves.push(SlotMove { slots: slot..slot + 1, from, to }),
            }
        }
        Ok(moves)
    }

    /// Adds `node` with `weight`. Only slots move, and only to `node`.
    pub fn add_node(&mut self, node: NodeId, weight: u32) -> Result<(), RouterError> {
        if self.contains(node) {
            return Err(RouterError::DuplicateNode(node));
        }
        let target = self.nodes().chain([(node, weight)]).collect::<Vec<_>>();
        self.set_nodes(target)
    }

    /// Removes `node`. Only its slots move.
    pub fn remove_node(&mut self, node: NodeId) -> Result<(), RouterError> {
        if !self.contains(node) {
            return Err(RouterError::UnknownNode(node));
        }
        let target = self.nodes().filter(|&(id, _)| id != node).collect::<Vec<_>>();
        self.set_nodes(target)
    }

    /// Changes the weight of `node`. Slots move only to it (heavier) or only
    /// from it (lighter).
    pub fn set_weight(&mut self, node: NodeId, weight: u32) -> Result<(), RouterError> {
        if !self.contains(node) {
            return Err(RouterError::UnknownNode(node));
        }
        let target = self.nodes().map(|(id, w)| (id, if id == node { weight } else { w })).collect::<Vec<_>>();
        self.set_nodes(target)
    }

    /// Follows `view`: its routable nodes become this router's nodes.
    pub fn sync(&mut self, view: &ClusterView) -> Result<(), RouterError> {
        self.set_nodes(view.routable())
    }

    /// Makes the membership exactly `nodes` (id, weight), in one update.
    /// The result depends only on the set given, never on the history.
    pub fn set_nodes(&mut self, nodes: impl IntoIterator<Item = (NodeId, u32)>) -> Result<(), RouterError> {
        let mut target = BTreeMap::new();
        for (id, weight) in nodes {
            validate_weight(id, weight)?;
            if target.insert(id, weight).is_some() {
                return Err(RouterError::DuplicateNode(id));
            }
            if target.len() > MAX_NODES {
                return Err(RouterError::TooManyNodes { count: target.len(), max: MAX_NODES });
            }
        }
        // Validated: from here on nothing fails.
        let mut update = Update { challengers: Vec::new(), invalidated: vec![false; self.entries.len()] };
        let removed: Vec<NodeId> = self.by_id.keys().filter(|id| !target.contains_key(id)).copied().collect();
        for id in removed {
            if let Some(index) = self.by_id.remove(&id) {
                self.entries[usize::from(index)] = None;
                update.invalidated[usize::from(index)] = true;
                self.free.push(index);
            }
        }
        for (&id, &weight) in &target {
            match self.by_id.get(&id) {
                Some(&index) => {
                    let Some(entry) = self.entries[usize::from(index)].as_mut() else { continue };
                    if entry.weight == weight {
                        continue;
                    }
                    let heavier = weight > entry.weight;
                    *entry = Entry::new(id, weight);
                    if heavier {
                        update.challengers.push(index);
                    } else {
                        update.invalidated[usize::from(index)] = true;
                    }
                }
                None => {
                    let index = self.allocate_index(Entry::new(id, weight));
                    self.by_id.insert(id, index);
                    update.challengers.push(index);
                }
            }
        }
        update.invalidated.resize(self.entries.len(), false);
        self.apply_update(&update);
        Ok(())
    }

    fn allocate_index(&mut self, entry: Entry) -> u16 {
        // Lowest free index first keeps the entry vector dense.
        self.free.sort_unstable_by(|a, b| b.cmp(a));
        match self.free.pop() {
            Some(index) => {
                self.entries[usize::from(index)] = Some(entry);
                self.ids[usize::from(index)] = entry.id;
                index
            }
            None => {
                // MAX_NODES < NO_NODE, so the index fits and is never NO_NODE.
                let index = self.entries.len() as u16;
                self.entries.push(Some(entry));
                self.ids.push(entry.id);
                index
            }
        }
    }

    fn live_entries(&self) -> impl Iterator<Item = &Entry> + '_ {
        self.entries.iter().flatten()
    }

    fn live_indexed(&self) -> Vec<(u16, Entry)> {
        self.entries.iter().enumerate().filter_map(|(i, e)| e.map(|e| (i as u16, e))).collect()
    }

    fn candidates(&self, indexes: impl IntoIterator<Item = u16>) -> Candidates {
        Candidates::new(indexes.into_iter().filter_map(|i| self.entry(i).map(|e| (i, *e))))
    }

    /// Re-establishes "every slot is owned by its best-scoring node" after a
    /// batch change, touching only what the change can affect.
    fn apply_update(&mut self, update: &Update) {
        let live = self.live_indexed();
        let all = self.candidates(live.iter().map(|&(i, _)| i));
        let challengers = self.candidates(update.challengers.iter().copied());
        let mut scratch = Vec::with_capacity(all.len());
        let entries = &self.entries;
        for (slot, owner) in self.rendezvous.iter_mut().enumerate() {
            let slot = slot as u32;
            let current = if *owner == NO_NODE || update.invalidated.get(usize::from(*owner)).copied().unwrap_or(true) {
                None
            } else {
                entries.get(usize::from(*owner)).and_then(|e| *e)
            };
            *owner = match current {
                // The owner survives unchanged or improved: only new or
                // improved nodes can beat it.
                Some(entry) => challengers.challenge(slot, *owner, &entry),
                None => all.best(slot, &mut scratch).unwrap_or(NO_NODE),
            };
        }
        self.served = match self.config.load_bound {
            _ if live.is_empty() => SlotTable::Narrow(Vec::new()),
            Some(epsilon) => SlotTable::from_placement(&self.bounded_placement(epsilon, &live), self.entries.len()),
            None => SlotTable::from_placement(&self.rendezvous, self.entries.len()),
        };
    }

    /// The rendezvous placement with every node capped at its bound: slots in
    /// index order, each to the first node of its ranking that has room.
    fn bounded_placement(&self, epsilon: f64, live: &[(u16, Entry)]) -> Vec<u16> {
        // Integer weights sum exactly in f64 (at most 2^32 in all), so the
        // caps do not depend on summation order.
        let total_weight: f64 = live.iter().map(|(_, e)| f64::from(e.weight)).sum();
        let slots = self.slot_count() as f64;
        let mut caps = vec![0usize; self.entries.len()];
        for (index, entry) in live {
            caps[usize::from(*index)] =
                ((1.0 + epsilon) * slots * f64::from(entry.weight) / total_weight).ceil() as usize;
        }
        let mut counts = vec![0usize; self.entries.len()];
        let mut placement = Vec::with_capacity(self.slot_count());
        for (slot, &preferred) in self.rendezvous.iter().enumerate() {
            let preferred_index = usize::from(preferred);
            if counts[preferred_index] < caps[preferred_index] {
                counts[preferred_index] += 1;
                placement.push(preferred);
                continue;
            }
            let slot = slot as u32;
            let mut ranked: Vec<(f64, NodeId, u16)> = live.iter().map(|&(i, e)| (e.score(slot), e.id, i)).collect();
            ranked.sort_unstable_by(|a, b| cmp_score(&(a.0, a.1), &(b.0, b.1)));
            // The caps sum to at least the slot count, so some node has room.
            let index = ranked
                .iter()
                .map(|&(_, _, i)| i)
                .find(|&i| counts[usize::from(i)] < caps[usize::from(i)])
                .unwrap_or(preferred);
            counts[usize::from(index)] += 1;
            placement.push(index);
        }
        placement
    }
}

/// Orders (score, id) pairs: lower score first, ties to the lower id.
fn cmp_score(a: &(f64, NodeId), b: &(f64, NodeId)) -> std::cmp::Ordering {
    a.0.total_cmp(&b.0).then(a.1.cmp(&b.1))
}

/// Nodes as flat arrays, for the per-slot scans of an update.
struct Candidates {
    index: Vec<u16>,
    id: Vec<NodeId>,
    seed: Vec<u64>,
    inv_weight: Vec<f64>,
}

impl Candidates {
    fn new(nodes: impl Iterator<Item = (u16, Entry)>) -> Candidates {
        let mut c = Candidates { index: Vec::new(), id: Vec::new(), seed: Vec::new(), inv_weight: Vec::new() };
        for (index, entry) in nodes {
            c.index.push(index);
            c.id.push(entry.id);
            c.seed.push(entry.seed);
            c.inv_weight.push(entry.inv_weight);
        }
        c
    }

    fn len(&self) -> usize {
        self.index.len()
    }

    fn entry(&self, k: usize) -> Entry {
        Entry { id: self.id[k], weight: 0, seed: self.seed[k], inv_weight: self.inv_weight[k] }
    }

    /// The index of the best-scoring node for `slot`, or `None` if empty.
    /// First the smallest upper bound, then exact scores only for the nodes
    /// whose lower bound does not exceed it (one or two, typically).
    fn best(&self, slot: u32, draws: &mut Vec<(f64, f64)>) -> Option<u16> {
        draws.clear();
        let mut least_upper = f64::INFINITY;
        for (&seed, &inv_weight) in self.seed.iter().zip(&self.inv_weight) {
            let u = draw(seed, slot);
            let (lower, upper) = score_bounds(u, inv_weight);
            draws.push((u, lower));
            // Shaped as one `minsd`: no NaN can occur here.
            least_upper = if upper < least_upper { upper } else { least_upper };
        }
        let mut best: Option<(f64, NodeId, u16)> = None;
        for (k, &(u, lower)) in draws.iter().enumerate() {
            if lower > least_upper {
                continue;
            }
            let candidate = (neg_ln(u) * self.inv_weight[k], self.id[k], self.index[k]);
            if best.is_none_or(|b| cmp_score(&(candidate.0, candidate.1), &(b.0, b.1)).is_lt()) {
                best = Some(candidate);
            }
        }
        best.map(|(_, _, index)| index)
    }

    /// Whichever of `incumbent` and these nodes scores best for `slot`.
    #[inline]
    fn challenge(&self, slot: u32, incumbent_index: u16, incumbent: &Entry) -> u16 {
        let incumbent_u = incumbent.draw(slot);
        let incumbent_upper = score_bounds(incumbent_u, incumbent.inv_weight).1;
        let mut best: Option<(f64, NodeId, u16)> = None;
        for k in 0..self.len() {
            let entry = self.entry(k);
            let u = entry.draw(slot);
            // Most challengers lose on bounds alone, without a logarithm.
            if score_bounds(u, entry.inv_weight).0 > incumbent_upper {
                continue;
            }
            let best =
                best.get_or_insert_with(|| (neg_ln(incumbent_u) * incumbent.inv_weight, incumbent.id, incumbent_index));
            let score = neg_ln(u) * entry.inv_weight;
            if cmp_score(&(score, entry.id), &(best.0, best.1)).is_lt() {
                *best = (score, entry.id, self.index[k]);
            }
        }
        best.map_or(incumbent_index, |(_, _, index)| index)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn neg_ln_is_accurate() {
        for &u in &[1e-16, 0.001, 0.1, 0.25, 0.5, std::f64::consts::FRAC_1_SQRT_2, 0.75, 0.9, 0.999999, 1.0 - 1e-15] {
            let exact = -f64::ln(u);
            let ours = neg_ln(u);
            assert!(((ours - exact) / exact).abs() < 1e-14, "u={u}: {ours} vs {exact}");
        }
    }

    #[test]
    fn score_bounds_enclose_the_score() {
        let mut x = 1u64;
        let top = ((1u64 << 53) - 1) as f64 + 0.5;
        let extremes = [top * (1.0 / (1u64 << 53) as f64), 0.5 * (1.0 / (1u64 << 53) as f64), 0.5, 0.5 + 1e-16];
        let draws = (0..200_000).map(|_| {
            x = mix64(x);
            ((x >> 11) as f64 + 0.5) * (1.0 / (1u64 << 53) as f64)
        });
        for u in draws.chain(extremes) {
            for inv_weight in [1.0, 1.0 / 3.0, 1.0 / 1_000_000.0] {
                let score = neg_ln(u) * inv_weight;
                let (lower, upper) = score_bounds(u, inv_weight);
                assert!(lower <= score && score <= upper, "u={u}: {lower} <= {score} <= {upper}");
            }
        }
    }

    /// The reference model: every slot owned by the node with the lowest
    /// (score, id), found by scanning all nodes, no pruning, no increments.
    fn reference_owner(nodes: &BTreeMap<u64, u32>, slot: u32) -> Option<NodeId> {
        nodes
            .iter()
            .map(|(&id, &w)| {
                let e = Entry::new(NodeId(id), w);
                (e.score(slot), e.id)
            })
            .min_by(cmp_score)
            .map(|(_, id)| id)
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig { cases: 64, ..Default::default() })]

        /// Incremental updates (with pruning and index reuse) always equal a
        /// from-scratch scan, after every step of a random history.
        #[test]
        fn incremental_updates_match_the_reference_model(
            steps in proptest::collection::vec(proptest::collection::btree_map(0u64..24, 1u32..=500, 0..10), 1..8)
        ) {
            let mut router = Router::new(RouterConfig::new().with_slot_bits(9).unwrap());
            for target in steps {
                router.set_nodes(target.iter().map(|(&n, &w)| (NodeId(n), w))).unwrap();
                for slot in 0..router.slot_count() as u32 {
                    proptest::prop_assert_eq!(router.owner_of_slot(slot), reference_owner(&target, slot));
                }
            }
        }
    }

    #[test]
    fn config_rejects_bad_values() {
        assert_eq!(
            RouterConfig::new().with_slot_bits(7),
            Err(RouterError::SlotBitsOutOfRange { bits: 7, min: 8, max: 24 })
        );
        assert!(RouterConfig::new().with_slot_bits(25).is_err());
        assert!(RouterConfig::new().with_load_bound(-0.1).is_err());
        assert!(RouterConfig::new().with_load_bound(f64::NAN).is_err());
        assert!(RouterConfig::new().with_load_bound(f64::INFINITY).is_err());
        assert!(RouterConfig::new().with_load_bound(0.0).is_ok());
    }
}
