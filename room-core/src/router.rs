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
//! binomial, so the default of 2^21 slots (a 2 MiB table) keeps the busiest
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
//! The table is filled on demand: building a router allocates it and
//! computes no owner; a slot's owner is computed the first time a lookup
//! reaches it, in `O(nodes)` cheap integer mixes (and about one logarithm),
//! and read from the table ever after. So building stays cheap even in an
//! unoptimised build (a dependent's debug profile), where computing all
//! `slots × nodes` scores up front took seconds. The answer never depends on
//! when a slot was computed. [`Router::fill_table`] computes every slot at
//! once, `O(slots × nodes)`, for a host that wants every lookup equally
//! quick from the start; [`Router::slot_counts`], [`Router::diff`] and
//! bounded-load mode (whose caps need every slot's ranking) do so too, and
//! so does a router with exactly 256 node indexes, whose one-byte entries
//! have no value left to mark a slot not computed yet.
//!
//! A membership change updates the slots computed so far incrementally, in
//! `O(slots)` score evaluations at most (tens of milliseconds at 2^21 slots):
//! slots that lost their owner are forgotten until next asked for. Lookups
//! never allocate. [`Router::successors`] ranks all nodes for one slot,
//! `O(nodes)`.

use std::collections::BTreeMap;
use std::fmt;
use std::ops::Range;
use std::sync::atomic::{AtomicU8, AtomicU16, AtomicU64, Ordering};

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

/// A slot table: one node index a slot, filled on demand. The rendezvous
/// placement lives in one, a slot's owner computed the first time something
/// asks for it, so building a router costs an allocation, not `slots ×
/// nodes` score evaluations; bounded-load mode's capped placement lives in a
/// complete one.
///
/// Entries are one byte wide while the router has at most 256 node indexes,
/// else two. Width is speed: at 2^21 slots a 2 MiB table stays far warmer in
/// cache than a 4 MiB one (12 ns against 23 ns a lookup on the benchmark
/// machine). An all-ones entry is a slot not computed yet, and is no node's
/// index: the lookup's bounds check on the index-to-id table, which it makes
/// anyway, is what sends it to compute the owner, so a lookup of a computed
/// slot costs what it did when tables were built up front. The one table
/// where all ones is an index, a narrow one with 256 node indexes, is kept
/// complete.
///
/// Lookups fill the table through `&self`, hence the atomics (a relaxed load
/// or store is a plain one). A slot's owner is a function of the membership,
/// which only changes under `&mut self`, so racing fills store the same
/// value, and an entry that is not all ones is always a computed owner. A
/// fill stores the entry, then sets its bit with release ordering; a clone,
/// which trusts the bits, reads them with acquire ordering and then reads
/// the entries. Outside a fill, an entry holds an owner exactly when its bit
/// is set: updates visit only those.
struct LazyTable {
    entries: Entries,
    /// One bit a slot: set once the slot's entry holds its owner.
    known: Vec<AtomicU64>,
}

enum Entries {
    Narrow(Vec<AtomicU8>),
    Wide(Vec<AtomicU16>),
}

/// Entries are allocated in chunks of constant arrays, then flattened: a
/// loop over single atomics is slow unoptimised.
const CHUNK: usize = 256;
const _: () = assert!(1 << MIN_SLOT_BITS >= CHUNK && CHUNK.is_multiple_of(64));

impl Clone for LazyTable {
    /// Copies the entries whose bits are set. A racing lookup may store an
    /// entry while this runs; the copy leaves it out rather than hold an
    /// entry without its bit.
    fn clone(&self) -> Self {
        let mut copy = LazyTable::new(self.slot_count(), self.is_wide());
        for k in 0..self.known.len() {
            let known = self.known[k].load(Ordering::Acquire);
            // Plain loops per width: this copies up to every slot, and
            // stays quick unoptimised.
            match (&self.entries, &mut copy.entries) {
                (Entries::Narrow(from), Entries::Narrow(to)) => {
                    let (from, to) = (&from[k * 64..k * 64 + 64], &mut to[k * 64..k * 64 + 64]);
                    let mut bit = 0;
                    while bit < 64 {
                        if (known >> bit) & 1 == 1 {
                            *to[bit].get_mut() = from[bit].load(Ordering::Relaxed);
                        }
                        bit += 1;
                    }
                }
                (Entries::Wide(from), Entries::Wide(to)) => {
                    let (from, to) = (&from[k * 64..k * 64 + 64], &mut to[k * 64..k * 64 + 64]);
                    let mut bit = 0;
                    while bit < 64 {
                        if (known >> bit) & 1 == 1 {
                            *to[bit].get_mut() = from[bit].load(Ordering::Relaxed);
                        }
                        bit += 1;
                    }
                }
                // `new` gave the copy the same width.
                _ => {}
            }
            *copy.known[k].get_mut() = known;
        }
        copy
    }
}

impl LazyTable {
    /// A table of `slots` (a multiple of [`CHUNK`]) slots, none computed.
    fn new(slots: usize, wide: bool) -> LazyTable {
        let entries = if wide {
            let mut chunks = Vec::with_capacity(slots / CHUNK);
            for _ in 0..slots / CHUNK {
                chunks.push([const { AtomicU16::new(u16::MAX) }; CHUNK]);
            }
            Entries::Wide(chunks.into_flattened())
        } else {
            let mut chunks = Vec::with_capacity(slots / CHUNK);
            for _ in 0..slots / CHUNK {
                chunks.push([const { AtomicU8::new(u8::MAX) }; CHUNK]);
            }
            Entries::Narrow(chunks.into_flattened())
        };
        let mut known = Vec::with_capacity(slots / 64);
        for _ in 0..slots / 64 {
            known.push(AtomicU64::new(0));
        }
        LazyTable { entries, known }
    }

    fn slot_count(&self) -> usize {
        self.known.len() * 64
    }

    fn is_wide(&self) -> bool {
        matches!(self.entries, Entries::Wide(_))
    }

    /// `slot`'s entry as it stands, widened: its owner index if computed,
    /// else no node's index; `usize::MAX` out of range.
    #[inline]
    fn entry(&self, slot: usize) -> usize {
        match &self.entries {
            Entries::Narrow(t) => t.get(slot).map_or(usize::MAX, |e| usize::from(e.load(Ordering::Relaxed))),
            Entries::Wide(t) => t.get(slot).map_or(usize::MAX, |e| usize::from(e.load(Ordering::Relaxed))),
        }
    }

    /// The entry of `slot`: its owner index if the slot is known.
    fn known_index(&self, slot: usize) -> u16 {
        match &self.entries {
            Entries::Narrow(t) => t.get(slot).map_or(0, |e| u16::from(e.load(Ordering::Relaxed))),
            Entries::Wide(t) => t.get(slot).map_or(0, |e| e.load(Ordering::Relaxed)),
        }
    }

    /// Stores `index` as the entry of `slot`, without marking it known.
    fn store(&self, slot: usize, index: u16) {
        match &self.entries {
            // Narrow while every index fits a byte.
            Entries::Narrow(t) => t[slot].store(index as u8, Ordering::Relaxed),
            Entries::Wide(t) => t[slot].store(index, Ordering::Relaxed),
        }
    }

    /// Records `index` as the owner of `slot`: the entry, then its bit.
    fn publish(&self, slot: usize, index: u16) {
        self.store(slot, index);
        self.known[slot >> 6].fetch_or(1 << (slot & 63), Ordering::Release);
    }

    /// Makes `index` the owner of `slot`.
    fn set(&mut self, slot: usize, index: u16) {
        self.store(slot, index);
        *self.known[slot >> 6].get_mut() |= 1 << (slot & 63);
    }

    /// The entries of the 64 slots of `known` word `k`, widened (a narrow
    /// table's all-ones entry reads as 255).
    fn read_word(&mut self, k: usize, out: &mut [u16; 64]) {
        let mut bit = 0;
        match &mut self.entries {
            Entries::Narrow(t) => {
                let t = &mut t[k * 64..k * 64 + 64];
                while bit < 64 {
                    out[bit] = u16::from(*t[bit].get_mut());
                    bit += 1;
                }
            }
            Entries::Wide(t) => {
                let t = &mut t[k * 64..k * 64 + 64];
                while bit < 64 {
                    out[bit] = *t[bit].get_mut();
                    bit += 1;
                }
            }
        }
    }

    /// Stores the entries of `known` word `k` whose bits are in `mask` (an
    /// index, or `u16::MAX` for "not computed"), leaving the bits alone.
    fn write_word(&mut self, k: usize, entries: &[u16; 64], mask: u64) {
        let mut bit = 0;
        match &mut self.entries {
            Entries::Narrow(t) => {
                let t = &mut t[k * 64..k * 64 + 64];
                while bit < 64 {
                    if (mask >> bit) & 1 == 1 {
                        // Narrow while every index fits a byte; all ones
                        // stays all ones.
                        *t[bit].get_mut() = entries[bit] as u8;
                    }
                    bit += 1;
                }
            }
            Entries::Wide(t) => {
                let t = &mut t[k * 64..k * 64 + 64];
                while bit < 64 {
                    if (mask >> bit) & 1 == 1 {
                        *t[bit].get_mut() = entries[bit];
                    }
                    bit += 1;
                }
            }
        }
    }

    /// A complete table holding `placement`.
    fn from_placement(placement: &[u16], wide: bool) -> LazyTable {
        let mut table = LazyTable::new(placement.len(), wide);
        for (slot, &index) in placement.iter().enumerate() {
            table.set(slot, index);
        }
        table
    }

    /// The same placement in two-byte entries.
    fn widen(&mut self) {
        let mut wide = LazyTable::new(self.slot_count(), true);
        for k in 0..self.known.len() {
            let mut bits = *self.known[k].get_mut();
            while bits != 0 {
                let slot = k * 64 + bits.trailing_zeros() as usize;
                bits &= bits - 1;
                wide.set(slot, self.known_index(slot));
            }
        }
        *self = wide;
    }

    /// Computes every slot not known yet.
    fn fill(&self, all: &Candidates) {
        if all.len() == 0 {
            return;
        }
        let mut scratch = Scratch::new();
        for (k, known) in self.known.iter().enumerate() {
            let bits = known.load(Ordering::Relaxed);
            if bits == u64::MAX {
                continue;
            }
            let mut filled = 0u64;
            let mut bit = 0;
            while bit < 64 {
                if (bits >> bit) & 1 == 0 {
                    let slot = k * 64 + bit;
                    if let Some(index) = all.best(slot as u32, &mut scratch) {
                        self.store(slot, index);
                        filled |= 1 << bit;
                    }
                }
                bit += 1;
            }
            // The entries are stored: now their bits. An RMW, so that racing
            // publishers' release orderings carry through it.
            if filled != 0 {
                known.fetch_or(filled, Ordering::Release);
            }
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
    /// (a byte and a bit a slot while the router has held at most 256 nodes,
    /// else two bytes and a bit) and time per membership change.
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
    // eleven terms reach the last bit. Horner's rule, written out: a loop
    // over the coefficients costs more than the arithmetic unoptimised. The
    // operations and their order are fixed; Rust never fuses them.
    let s = (m - 1.0) / (m + 1.0);
    let s2 = s * s;
    let mut p = 1.0 / 23.0;
    p = p * s2 + 1.0 / 21.0;
    p = p * s2 + 1.0 / 19.0;
    p = p * s2 + 1.0 / 17.0;
    p = p * s2 + 1.0 / 15.0;
    p = p * s2 + 1.0 / 13.0;
    p = p * s2 + 1.0 / 11.0;
    p = p * s2 + 1.0 / 9.0;
    p = p * s2 + 1.0 / 7.0;
    p = p * s2 + 1.0 / 5.0;
    p = p * s2 + 1.0 / 3.0;
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
    /// What lookups read, slot -> node index. Without a load bound, the
    /// working placement: every slot's rendezvous winner, computed on first
    /// use and then kept up to date incrementally. In bounded-load mode, the
    /// capped placement derived from `uncapped`, complete while there are
    /// nodes.
    served: LazyTable,
    /// Bounded-load mode only: the working placement, complete while there
    /// are nodes.
    uncapped: Option<LazyTable>,
    /// The live nodes, for computing a slot's owner on first use.
    all: Candidates,
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
            served: LazyTable::new(slots, false),
            uncapped: config.load_bound.map(|_| LazyTable::new(slots, false)),
            all: Candidates::default(),
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
        self.config.slot_count()
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
        self.owner_id((hash >> self.shift) as usize).ok_or(RouterError::NoNodes)
    }

    /// The owner of `slot`, or `None` if the router is empty or the slot is
    /// out of range.
    pub fn owner_of_slot(&self, slot: u32) -> Option<NodeId> {
        self.owner_id(slot as usize)
    }

    /// Computes the owner of every slot that has not been asked for yet, so
    /// that no later lookup has to: `O(slots × nodes)`. Optional: a lookup
    /// computes its slot's owner on first use (`O(nodes)`), and the answer
    /// is the same either way. A host that wants every lookup equally quick
    /// from the start calls this after building the router.
    pub fn fill_table(&self) {
        if self.uncapped.is_none() {
            self.served.fill(&self.all);
        }
    }

    /// The owner of `slot`: one read of the slot table and one of the ids,
    /// unless the slot's owner was never computed (then its all-ones entry
    /// is no index of `ids`). `None` if the router is empty or the slot is
    /// out of range.
    #[inline]
    fn owner_id(&self, slot: usize) -> Option<NodeId> {
        match self.ids.get(self.served.entry(slot)) {
            Some(&id) => Some(id),
            None => self.compute_owner(slot).and_then(|index| self.ids.get(usize::from(index))).copied(),
        }
    }

    /// Computes, records and returns the owner index of a slot whose owner
    /// was never computed; `None` if the router is empty or the slot is out
    /// of range.
    #[cold]
    #[inline(never)]
    fn compute_owner(&self, slot: usize) -> Option<u16> {
        if slot >= self.slot_count() || self.uncapped.is_some() {
            // Out of range, or bounded-load mode, whose table is complete
            // unless there are no nodes.
            return None;
        }
        let index = self.all.best(slot as u32, &mut Scratch::new())?;
        self.served.publish(slot, index);
        Some(index)
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
        self.fill_table();
        let mut per_index = vec![0usize; self.entries.len()];
        for slot in 0..self.slot_count() {
            // Complete now: every entry is an index (all ones if empty).
            if let Some(c) = per_index.get_mut(self.served.entry(slot)) {
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
        self.fill_table();
        newer.fill_table();
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
                // MAX_NODES < u16::MAX, so the index fits, and is never the
                // all-ones entry of a wide table.
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

    /// Re-establishes "every known slot is owned by its best-scoring node"
    /// after a batch change, touching only what the change can affect: slots
    /// whose owner went away or lost weight are forgotten (recomputed on
    /// next use), the other known slots are challenged by the new or
    /// heavier nodes, and slots never computed stay so.
    fn apply_update(&mut self, update: &Update) {
        let live = self.live_indexed();
        if live.is_empty() {
            // No node left: forget every index too, so that no entry, not
            // even an all-ones one, names a node.
            let slots = self.slot_count();
            self.entries.clear();
            self.ids.clear();
            self.free.clear();
            self.all = Candidates::default();
            self.served = LazyTable::new(slots, false);
            self.uncapped = self.config.load_bound.map(|_| LazyTable::new(slots, false));
            return;
        }
        self.all = Candidates::new(live.iter().copied());
        let wide = self.entries.len() > 256;
        let challengers = self.candidates(update.challengers.iter().copied());
        let working = match &mut self.uncapped {
            Some(table) => table,
            None => &mut self.served,
        };
        if wide && !working.is_wide() {
            working.widen();
        }
        if challengers.len() > 0 || update.invalidated.contains(&true) {
            let entries = &self.entries;
            // A word of the bitmap at a time: its 64 owners read out, the
            // changed ones written back.
            let mut owners = [0u16; 64];
            for k in 0..working.known.len() {
                let known = *working.known[k].get_mut();
                if known == 0 {
                    continue;
                }
                working.read_word(k, &mut owners);
                let (mut changed, mut cleared) = (0u64, 0u64);
                let mut bit = 0;
                while bit < 64 {
                    if (known >> bit) & 1 == 1 {
                        let owner = owners[bit];
                        let current = if update.invalidated.get(usize::from(owner)).copied().unwrap_or(true) {
                            None
                        } else {
                            entries.get(usize::from(owner)).and_then(|e| *e)
                        };
                        match current {
                            // The owner survives unchanged or improved: only
                            // new or improved nodes can beat it.
                            Some(entry) => {
                                let best = challengers.challenge((k * 64 + bit) as u32, owner, &entry);
                                if best != owner {
                                    owners[bit] = best;
                                    changed |= 1 << bit;
                                }
                            }
                            None => {
                                owners[bit] = u16::MAX;
                                cleared |= 1 << bit;
                            }
                        }
                    }
                    bit += 1;
                }
                if changed | cleared != 0 {
                    working.write_word(k, &owners, changed | cleared);
                    *working.known[k].get_mut() = known & !cleared;
                }
            }
        }
        if !wide && self.entries.len() == 256 && self.uncapped.is_none() {
            // Index 255's entry is all ones, like a slot not computed:
            // compute them all, so that all ones only means 255.
            self.served.fill(&self.all);
        }
        if let (Some(epsilon), Some(uncapped)) = (self.config.load_bound, &self.uncapped) {
            uncapped.fill(&self.all);
            self.served = LazyTable::from_placement(&self.bounded_placement(epsilon, uncapped, &live), wide);
        }
    }

    /// The rendezvous placement with every node capped at its bound: slots in
    /// index order, each to the first node of its ranking that has room.
    fn bounded_placement(&self, epsilon: f64, uncapped: &LazyTable, live: &[(u16, Entry)]) -> Vec<u16> {
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
        for slot in 0..self.slot_count() {
            // The table is complete here.
            let preferred = uncapped.known_index(slot);
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

/// How many nodes [`Candidates::best`] bounds before it scores any.
const BLOCK: usize = 64;

/// [`Candidates::best`]'s working space: one block's draws and lower bounds.
struct Scratch {
    draws: [f64; BLOCK],
    lowers: [f64; BLOCK],
}

impl Scratch {
    fn new() -> Scratch {
        Scratch { draws: [0.0; BLOCK], lowers: [0.0; BLOCK] }
    }
}

/// Orders (score, id) pairs: lower score first, ties to the lower id.
fn cmp_score(a: &(f64, NodeId), b: &(f64, NodeId)) -> std::cmp::Ordering {
    a.0.total_cmp(&b.0).then(a.1.cmp(&b.1))
}

/// Nodes as flat arrays, for the per-slot scans.
#[derive(Clone, Default)]
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
    ///
    /// Per block of up to [`BLOCK`] nodes: first the block's smallest upper
    /// bound, then exact scores only for the nodes whose lower bound exceeds
    /// neither it nor the best exact score so far (one or two, typically).
    /// Plain indexed loops over fixed arrays, no allocation: this runs on a
    /// lookup's first visit to a slot, and stays quick unoptimised.
    fn best(&self, slot: u32, scratch: &mut Scratch) -> Option<u16> {
        let count = self.seed.len();
        let (seeds, inv_weights) = (&self.seed[..count], &self.inv_weight[..count]);
        let Scratch { draws, lowers } = scratch;
        let mut best: Option<(f64, NodeId, u16)> = None;
        let mut start = 0;
        while start < count {
            let len = if count - start < BLOCK { count - start } else { BLOCK };
            // Any bound at least the winning score prunes safely: the best
            // exact score so far is one.
            let mut threshold = match best {
                Some((score, _, _)) => score,
                None => f64::INFINITY,
            };
            // `while`, not `for … in 0..len`: a range iterator is two calls a
            // step unoptimised.
            let mut j = 0;
            while j < len {
                let u = draw(seeds[start + j], slot);
                let (lower, upper) = score_bounds(u, inv_weights[start + j]);
                draws[j] = u;
                lowers[j] = lower;
                // Shaped as one `minsd`: no NaN can occur here.
                threshold = if upper < threshold { upper } else { threshold };
                j += 1;
            }
            j = 0;
            while j < len {
                if lowers[j] <= threshold {
                    let k = start + j;
                    let candidate = (neg_ln(draws[j]) * inv_weights[k], self.id[k], self.index[k]);
                    if best.is_none_or(|b| cmp_score(&(candidate.0, candidate.1), &(b.0, b.1)).is_lt()) {
                        best = Some(candidate);
                    }
                }
                j += 1;
            }
            start += len;
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

    /// A slot visiting order derived from `seed`: a random-looking subset or
    /// permutation without pulling in a generator.
    fn slot_order(slots: u32, seed: u64) -> Vec<u32> {
        let mut order: Vec<u32> = (0..slots).collect();
        order.sort_by_key(|&s| mix64(u64::from(s) ^ seed));
        order
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig { cases: 64, ..Default::default() })]

        /// Owners computed on first use, in any order and on tables left
        /// partly computed across changes, equal a from-scratch scan; so do
        /// the owners `fill_table` computes in bulk.
        #[test]
        fn lazily_computed_owners_match_the_reference_model(
            steps in proptest::collection::vec(
                (
                    proptest::collection::btree_map(0u64..24, 1u32..=500, 0..10),
                    proptest::prelude::any::<u64>(),
                    0u32..=512,
                    proptest::prelude::any::<bool>(),
                ),
                1..8,
            )
        ) {
            let mut router = Router::new(RouterConfig::new().with_slot_bits(9).unwrap());
            for (target, seed, touched, bulk) in steps {
                router.set_nodes(target.iter().map(|(&n, &w)| (NodeId(n), w))).unwrap();
                let order = slot_order(router.slot_count() as u32, seed);
                if bulk {
                    router.fill_table();
                }
                // Ask for some slots only, in a shuffled order: the next step
                // starts from a partly computed table.
                for &slot in &order[..touched as usize] {
                    proptest::prop_assert_eq!(router.owner_of_slot(slot), reference_owner(&target, slot));
                }
                // A fresh router, filled in bulk, agrees on every slot.
                let fresh = Router::with_nodes(*router.config(), target.iter().map(|(&n, &w)| (NodeId(n), w))).unwrap();
                fresh.fill_table();
                for &slot in &order[..touched as usize] {
                    proptest::prop_assert_eq!(fresh.owner_of_slot(slot), router.owner_of_slot(slot));
                }
            }
            let target: BTreeMap<u64, u32> = router.nodes().map(|(id, w)| (id.0, w)).collect();
            for slot in 0..router.slot_count() as u32 {
                proptest::prop_assert_eq!(router.owner_of_slot(slot), reference_owner(&target, slot));
            }
        }
    }

    /// A narrow table's all-ones entry is "not computed" until a 256th node
    /// index makes it index 255; the table is then kept complete. Past 256
    /// indexes the table widens, keeping what it knows. With no node left,
    /// no stale entry answers.
    #[test]
    fn index_255_and_widening_match_the_reference_model() {
        let config = RouterConfig::new().with_slot_bits(11).unwrap();
        let check = |router: &Router, target: &BTreeMap<u64, u32>, slots: &[u32]| {
            for &slot in slots {
                assert_eq!(router.owner_of_slot(slot), reference_owner(target, slot), "slot {slot}");
            }
        };
        let complete = |router: &Router| router.served.known.iter().all(|w| w.load(Ordering::Relaxed) == u64::MAX);
        let mut target: BTreeMap<u64, u32> = (0..255u64).map(|n| (n * 7 + 3, 50 + (n as u32 * 13) % 400)).collect();
        let mut router = Router::with_nodes(config, target.iter().map(|(&n, &w)| (NodeId(n), w))).unwrap();
        let order = slot_order(router.slot_count() as u32, 0x5eed);
        check(&router, &target, &order[..order.len() / 3]);
        assert!(!complete(&router));
        // The 256th index: narrow still, and complete.
        let highest = NodeId(255 * 7 + 3);
        router.add_node(highest, 77).unwrap();
        target.insert(highest.0, 77);
        assert!(!router.served.is_wide() && complete(&router));
        check(&router, &target, &order);
        assert!(router.slot_counts()[&highest] > 0, "index 255 must own slots for this test to mean anything");
        let copy = router.clone();
        check(&copy, &target, &order);
        let bounded = Router::with_nodes(config.with_load_bound(0.5).unwrap(), router.nodes()).unwrap();
        assert!(order.iter().all(|&slot| bounded.owner_of_slot(slot).is_some()));
        assert_eq!(bounded.slot_counts().values().sum::<usize>(), bounded.slot_count());
        assert!(bounded.slot_counts()[&highest] > 0);
        // A removal keeps 256 indexes: the forgotten slots are computed again.
        router.remove_node(NodeId(3)).unwrap();
        target.remove(&3);
        assert!(complete(&router));
        check(&router, &target, &order);
        // Past 256 indexes: wide, filled on demand again.
        for n in 1000..1003u64 {
            router.add_node(NodeId(n), 100).unwrap();
            target.insert(n, 100);
        }
        assert!(router.served.is_wide());
        check(&router, &target, &order[..order.len() / 2]);
        let copy = router.clone();
        check(&copy, &target, &order);
        // No node left, in both modes.
        let narrow = Router::with_nodes(config, router.nodes().take(256)).unwrap();
        for mut emptied in [narrow, Router::with_nodes(config, router.nodes()).unwrap(), bounded] {
            emptied.fill_table();
            emptied.set_nodes([]).unwrap();
            assert!(order.iter().all(|&slot| emptied.owner_of_slot(slot).is_none()));
            assert_eq!(emptied.route_hash(u64::MAX), Err(RouterError::NoNodes));
        }
    }

    /// Threads that compute the same slots at once agree with each other and
    /// with a table filled in one go.
    #[test]
    fn concurrent_lookups_agree() {
        fn shared<T: Send + Sync>(value: &T) -> &T {
            value
        }
        let config = RouterConfig::new().with_slot_bits(12).unwrap();
        let nodes = (1..=9u64).map(|n| (NodeId(n), 100 * n as u32));
        let router = Router::with_nodes(config, nodes.clone()).unwrap();
        let answers: Vec<Vec<Option<NodeId>>> = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..4u64)
                .map(|t| {
                    let router = shared(&router);
                    scope.spawn(move || {
                        let mut owners = vec![None; router.slot_count()];
                        for slot in slot_order(router.slot_count() as u32, t) {
                            owners[slot as usize] = router.owner_of_slot(slot);
                        }
                        owners
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let filled = Router::with_nodes(config, nodes).unwrap();
        filled.fill_table();
        let expected: Vec<Option<NodeId>> = (0..filled.slot_count() as u32).map(|s| filled.owner_of_slot(s)).collect();
        for owners in answers {
            assert_eq!(owners, expected);
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
