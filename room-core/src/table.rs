//! Hash tables that keep their size while their keys churn.
//!
//! A SwissTable (hashbrown's, and so std's `HashMap`) marks the slot of a
//! removed key as deleted when its group holds no empty slot; inserts use
//! up empty slots, and once none is left the next insert rehashes: in
//! place while at most half the capacity is in use, into twice the slots
//! otherwise. A table that holds a steady `n` keys while new keys replace
//! old ones (members leaving and joining a class) therefore doubles once,
//! at a moment set by the churn, whenever `n` sits above half its
//! capacity: the memory grows minutes after the class filled, when
//! nothing new came. [`ChurnMap`] takes that step
//! while the table grows instead, so a table that later only churns
//! rehashes in place and keeps its size.

use core::hash::{BuildHasher, Hash};
use core::ops::{Deref, DerefMut};
use std::collections::VecDeque;

use hashbrown::HashMap;
use hashbrown::hash_map::Entry;

use crate::ConnId;

/// A [`hashbrown::HashMap`] that grows ahead of churn: once keys have
/// been removed, whenever a new key would leave it more than half full,
/// it grows to twice what it holds, so the deleted marks of churn are
/// cleared in place and the table keeps its size; see the
/// [module docs](self). A map that only fills (a class arriving) stays as
/// dense as a plain one.
///
/// Reads go to the map itself (it dereferences to it); new keys go through
/// [`ChurnMap::insert`] or [`ChurnMap::entry`], which make the room first,
/// and removals through [`ChurnMap::remove`], which marks the map as
/// churning (a removal through the map itself, `retain` say, does not).
///
/// ```
/// use room_core::ChurnMap;
///
/// let mut members: ChurnMap<u64, &str> = ChurnMap::default();
/// for uin in 0..5_000 {
///     members.insert(uin, "student");
/// }
/// // One leaves, another comes: from now on the class churns.
/// members.remove(&0);
/// members.insert(5_000, "student");
/// assert!(members.capacity() >= 2 * members.len());
/// ```
#[derive(Debug, Clone)]
pub struct ChurnMap<K, V, S = std::hash::RandomState> {
    map: HashMap<K, V, S>,
    /// The capacity known to be the table's (what deleted marks do not
    /// hide): never above it.
    known: usize,
    /// Whether a key was removed: only then does it keep room ahead.
    churned: bool,
}

impl<K, V, S: Default> Default for ChurnMap<K, V, S> {
    fn default() -> Self {
        ChurnMap { map: HashMap::default(), known: 0, churned: false }
    }
}

impl<K, V, S> Deref for ChurnMap<K, V, S> {
    type Target = HashMap<K, V, S>;
    fn deref(&self) -> &Self::Target {
        &self.map
    }
}

impl<K, V, S> DerefMut for ChurnMap<K, V, S> {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.map
    }
}

impl<K, V, S> ChurnMap<K, V, S> {
    /// An empty map hashing with `hasher`.
    pub fn with_hasher(hasher: S) -> Self {
        ChurnMap { map: HashMap::with_hasher(hasher), known: 0, churned: false }
    }
}

impl<K: Eq + Hash, V, S: BuildHasher> ChurnMap<K, V, S> {
    /// Makes room for one key more, keeping the table at most half full.
    fn make_room(&mut self) {
        let wanted = 2 * (self.map.len() + 1);
        if !self.churned || wanted <= self.known {
            return;
        }
        self.map.reserve(wanted - self.map.len());
        self.known = self.known.max(self.map.capacity());
    }

    /// Inserts `value` at `key`, returning the value it replaces.
    pub fn insert(&mut self, key: K, value: V) -> Option<V> {
        self.make_room();
        self.map.insert(key, value)
    }

    /// Removes `key`, returning its value.
    pub fn remove<Q>(&mut self, key: &Q) -> Option<V>
    where
        Q: Hash + hashbrown::Equivalent<K> + ?Sized,
    {
        let value = self.map.remove(key);
        self.churned |= value.is_some();
        value
    }

    /// The entry of `key`, with room made for it.
    pub fn entry(&mut self, key: K) -> Entry<'_, K, V, S> {
        self.make_room();
        self.map.entry(key)
    }

    /// Gives back what a burst grew, once the map is empty again: a map
    /// that holds requests in flight is sized by its largest burst
    /// otherwise, and that grows with the hours.
    pub fn shrink_when_empty(&mut self) {
        if self.map.is_empty() && self.map.capacity() > IDLE_SLOTS {
            self.map.shrink_to(IDLE_SLOTS);
            self.known = self.map.capacity();
        }
    }
}

/// Values by connection, in a slab indexed by the connection's slot.
///
/// A node's push layer hands out connection slots densely and reuses them
/// ([`ConnId::slot`]), so a per-connection table needs no hashing and no
/// spare capacity: one entry per slot, checked against the whole id (a
/// slot reused by a newer connection does not answer for the old one).
///
/// ```
/// use room_core::{ConnId, ConnSlab};
///
/// let mut writers: ConnSlab<&str> = ConnSlab::default();
/// let first = ConnId::new(1, 0, 7);
/// writers.insert(first, "socket 7");
/// assert_eq!(writers.get(&first), Some(&"socket 7"));
/// // The slot's next connection is another key.
/// assert_eq!(writers.get(&ConnId::new(1, 1, 7)), None);
/// assert_eq!(writers.remove(&first), Some("socket 7"));
/// assert!(writers.is_empty());
/// ```
#[derive(Debug, Clone)]
pub struct ConnSlab<T> {
    slots: Vec<Option<(ConnId, T)>>,
    len: usize,
}

impl<T> Default for ConnSlab<T> {
    fn default() -> Self {
        ConnSlab { slots: Vec::new(), len: 0 }
    }
}

impl<T> ConnSlab<T> {
    /// The value of `conn`.
    pub fn get(&self, conn: &ConnId) -> Option<&T> {
        match self.slots.get(conn.slot() as usize) {
            Some(Some((id, value))) if id == conn => Some(value),
            _ => None,
        }
    }

    /// The value of `conn`, to change.
    pub fn get_mut(&mut self, conn: &ConnId) -> Option<&mut T> {
        match self.slots.get_mut(conn.slot() as usize) {
            Some(Some((id, value))) if id == conn => Some(value),
            _ => None,
        }
    }

    /// Whether `conn` has a value.
    pub fn contains_key(&self, conn: &ConnId) -> bool {
        self.get(conn).is_some()
    }

    /// Sets `conn`'s value, returning the one it had. A value left in the
    /// slot by an older connection is dropped. The slab grows to the slot:
    /// insert ids a node handed out itself (dense), never ids from outside
    /// (reads and removals of any id are fine).
    pub fn insert(&mut self, conn: ConnId, value: T) -> Option<T> {
        let slot = conn.slot() as usize;
        if slot >= self.slots.len() {
            self.slots.resize_with(slot + 1, || None);
        }
        match self.slots[slot].replace((conn, value)) {
            Some((id, old)) if id == conn => Some(old),
            Some(_) => None,
            None => {
                self.len += 1;
                None
            }
        }
    }

    /// Removes `conn`'s value.
    pub fn remove(&mut self, conn: &ConnId) -> Option<T> {
        let entry = self.slots.get_mut(conn.slot() as usize)?;
        if entry.as_ref().is_some_and(|(id, _)| id == conn) {
            self.len -= 1;
            return entry.take().map(|(_, value)| value);
        }
        None
    }

    /// Connections with a value.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether no connection has a value.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Every connection's value, by slot.
    pub fn iter(&self) -> impl Iterator<Item = (ConnId, &T)> {
        self.slots.iter().filter_map(|e| e.as_ref().map(|(id, value)| (*id, value)))
    }

    /// Drops every value.
    pub fn clear(&mut self) {
        self.slots.clear();
        self.len = 0;
    }
}

/// Slots an idle queue or map keeps after a burst.
pub const IDLE_SLOTS: usize = 256;

/// Gives back what a burst grew in `queue`, once it is empty again: a
/// queue is sized by its largest burst otherwise, and that grows with the
/// hours.
pub fn shrink_when_empty<T>(queue: &mut VecDeque<T>) {
    if queue.is_empty() && queue.capacity() > IDLE_SLOTS {
        queue.shrink_to(IDLE_SLOTS);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Fills `n` keys, then replaces a random key by a new one `rounds`
    /// times; returns the table's allocation once the first key was
    /// replaced and its largest after, and checks the contents against a
    /// plain model.
    fn fill_and_churn(n: usize, rounds: usize, seed: u64, ahead: bool) -> (usize, usize) {
        let mut map: ChurnMap<u64, u64> = ChurnMap::default();
        let mut model: Vec<u64> = Vec::new();
        let mut rng = seed | 1;
        let mut next = || {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng
        };
        let mut key = 0u64;
        let mut insert = |map: &mut ChurnMap<u64, u64>, model: &mut Vec<u64>| {
            key += 1;
            let before = if ahead { map.insert(key, key * 3) } else { map.map.insert(key, key * 3) };
            assert!(before.is_none());
            model.push(key);
        };
        for _ in 0..n {
            insert(&mut map, &mut model);
        }
        let mut full = 0;
        let mut largest = 0;
        for round in 0..rounds {
            let gone = model.swap_remove((next() % model.len() as u64) as usize);
            assert_eq!(map.remove(&gone), Some(gone * 3));
            insert(&mut map, &mut model);
            if round == 0 {
                // The first key replaced: a map kept for churn grows now.
                full = map.allocation_size();
            }
            largest = largest.max(map.allocation_size());
        }
        assert_eq!(map.len(), model.len());
        assert!(model.iter().all(|k| map.get(k) == Some(&(k * 3))));
        (full, largest)
    }

    /// The problem this answers: 5,000 keys fill 8,192 slots past half,
    /// and churn alone doubles them.
    #[test]
    fn a_plain_table_doubles_under_churn_alone() {
        let (full, largest) = fill_and_churn(5_000, 20_000, 7, false);
        assert!(largest >= 2 * full - 64, "{full} -> {largest}");
    }

    #[test]
    fn a_table_grown_for_churn_keeps_its_size() {
        let (full, largest) = fill_and_churn(5_000, 20_000, 7, true);
        assert_eq!(full, largest);
    }

    #[test]
    fn entries_make_room_as_inserts_do() {
        let mut map: ChurnMap<u64, u64> = ChurnMap::default();
        map.insert(u64::MAX, 0);
        map.remove(&u64::MAX);
        for k in 0..1_000 {
            *map.entry(k).or_default() += 1;
            *map.entry(k / 2).or_default() += 1;
        }
        assert_eq!(map.len(), 1_000);
        assert!(map.capacity() >= 2 * map.len(), "{} for {}", map.capacity(), map.len());
        assert_eq!(map.values().sum::<u64>(), 2_000);
    }

    #[test]
    fn bursts_are_given_back_once_drained() {
        let mut map: ChurnMap<u64, u64> = ChurnMap::default();
        let mut queue = VecDeque::new();
        for k in 0..10_000 {
            map.insert(k, k);
            queue.push_back(k);
        }
        map.shrink_when_empty();
        shrink_when_empty(&mut queue);
        assert!(map.capacity() >= 10_000 && queue.capacity() >= 10_000, "kept while in use");
        map.clear();
        queue.clear();
        map.shrink_when_empty();
        shrink_when_empty(&mut queue);
        assert!(map.capacity() < 2 * IDLE_SLOTS, "{}", map.capacity());
        assert!(queue.capacity() < 2 * IDLE_SLOTS, "{}", queue.capacity());
        // And it grows again for churn.
        map.insert(0, 0);
        map.remove(&0);
        for k in 0..1_000 {
            map.insert(k, k);
        }
        assert!(map.capacity() >= 2 * map.len());
    }

    proptest! {
        /// A slab by connection answers as a map by id would, whatever
        /// the slots and generations.
        #[test]
        fn a_slab_by_connection_is_a_map_by_id(ops in proptest::collection::vec((0u8..3, 0u32..40, 0u16..3, any::<u32>()), 0..300)) {
            let mut slab: ConnSlab<u32> = ConnSlab::default();
            let mut model: std::collections::BTreeMap<u32, (ConnId, u32)> = std::collections::BTreeMap::new();
            for (op, slot, generation, value) in ops {
                let id = ConnId::new(1, generation, slot);
                match op {
                    0 => {
                        // A slot holds one connection at a time.
                        let old = model.insert(slot, (id, value)).filter(|(k, _)| *k == id).map(|(_, v)| v);
                        prop_assert_eq!(slab.insert(id, value), old);
                    }
                    1 => {
                        let old = match model.get(&slot) {
                            Some((k, v)) if *k == id => Some(*v),
                            _ => None,
                        };
                        if old.is_some() {
                            model.remove(&slot);
                        }
                        prop_assert_eq!(slab.remove(&id), old);
                    }
                    _ => {
                        let want = model.get(&slot).filter(|(k, _)| *k == id).map(|(_, v)| v);
                        prop_assert_eq!(slab.get(&id), want);
                        prop_assert_eq!(slab.contains_key(&id), want.is_some());
                    }
                }
                prop_assert_eq!(slab.len(), model.len());
            }
            let listed: Vec<(ConnId, u32)> = slab.iter().map(|(id, v)| (id, *v)).collect();
            let want: Vec<(ConnId, u32)> = model.values().copied().collect();
            prop_assert_eq!(listed, want);
        }

        /// Any size, any churn: once full, the allocation stays as it is,
        /// and no key is lost or changed.
        #[test]
        fn no_growth_after_the_fill(n in 1usize..3_000, rounds_per_key in 1usize..8, seed in any::<u64>()) {
            let (full, largest) = fill_and_churn(n, n * rounds_per_key, seed, true);
            prop_assert_eq!(full, largest);
        }

        /// A map that only fills is as dense as a plain one; once a key
        /// went, it is at most half full after every insert.
        #[test]
        fn dense_until_churned_then_at_most_half_full(n in 1usize..5_000) {
            let mut map: ChurnMap<u64, u64> = ChurnMap::default();
            let mut plain = HashMap::<u64, u64, std::hash::RandomState>::default();
            for k in 0..n as u64 {
                map.insert(k, k);
                plain.insert(k, k);
            }
            prop_assert_eq!(map.allocation_size(), plain.allocation_size());
            map.remove(&0);
            for k in n as u64..2 * n as u64 {
                map.insert(k, k);
                prop_assert!(map.capacity() >= 2 * map.len(), "{} for {}", map.capacity(), map.len());
            }
        }
    }
}
