//! The ordered index of one rank of a room: members by (join time, uin),
//! with positional access for offset paging.
//!
//! A list of sorted blocks of at most [`MAX_BLOCK`] entries, plus the last
//! key of every block in a separate array so that finding a block is a
//! binary search over a few kilobytes that stay in cache. Members mostly
//! join in time order, so most inserts append to the last block; a full
//! last block starts a new one instead of splitting, which keeps an
//! append-only list packed. A middle insert into a full block splits it in
//! halves. A block that falls under a quarter merges into a neighbour when
//! the two fit in one, so under any churn two adjacent blocks hold at least
//! a quarter block between them.
//!
//! An entry is 12 bytes: the join time and the member's slot in the room.
//! Ties on the join time (many members joining in the same microsecond)
//! are broken by uin, which the list reads through the room (`uin_of`).

use std::cmp::Ordering;

/// The most entries a block holds.
pub(crate) const MAX_BLOCK: usize = 512;

/// The order key of a member within its rank.
pub(crate) type Key = (u64, u64);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Entry {
    joined: [u32; 2],
    slot: u32,
}

impl Entry {
    fn new(joined: u64, slot: u32) -> Entry {
        Entry { joined: [joined as u32, (joined >> 32) as u32], slot }
    }

    fn joined(self) -> u64 {
        u64::from(self.joined[0]) | (u64::from(self.joined[1]) << 32)
    }

    fn cmp_key(self, key: Key, uin_of: &impl Fn(u32) -> u64) -> Ordering {
        self.joined().cmp(&key.0).then_with(|| uin_of(self.slot).cmp(&key.1))
    }
}

/// Members of one rank in (join time, uin) order. See the module docs.
#[derive(Debug, Clone, Default)]
pub(crate) struct OrderedList {
    blocks: Vec<Vec<Entry>>,
    lasts: Vec<Key>,
    len: usize,
}

impl OrderedList {
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// Heap bytes held (capacity, not length), for memory reports.
    pub(crate) fn heap_bytes(&self) -> usize {
        self.blocks.capacity() * std::mem::size_of::<Vec<Entry>>()
            + self.lasts.capacity() * std::mem::size_of::<Key>()
            + self.blocks.iter().map(|b| b.capacity() * std::mem::size_of::<Entry>()).sum::<usize>()
    }

    /// The first block whose last key is not below `key`.
    fn block_at_or_after(&self, key: Key) -> usize {
        self.lasts.partition_point(|&last| last < key)
    }

    /// Adds `slot` under `key`. The caller guarantees the key is not
    /// present (uins are unique in a room).
    pub(crate) fn insert(&mut self, key: Key, slot: u32, uin_of: impl Fn(u32) -> u64) {
        let entry = Entry::new(key.0, slot);
        self.len += 1;
        let b = self.block_at_or_after(key);
        if b == self.blocks.len() {
            match self.blocks.last_mut() {
                Some(last) if last.len() < MAX_BLOCK => {
                    last.push(entry);
                    if let Some(l) = self.lasts.last_mut() {
                        *l = key;
                    }
                }
                _ => {
                    self.blocks.push(vec![entry]);
                    self.lasts.push(key);
                }
            }
            return;
        }
        let block = &mut self.blocks[b];
        let pos = block.partition_point(|e| e.cmp_key(key, &uin_of) == Ordering::Less);
        block.insert(pos, entry);
        if block.len() > MAX_BLOCK {
            let tail = block.split_off(block.len() / 2);
            let head_last = block.last().map(|e| (e.joined(), uin_of(e.slot)));
            if let Some(head_last) = head_last {
                let tail_last = std::mem::replace(&mut self.lasts[b], head_last);
                self.blocks.insert(b + 1, tail);
                self.lasts.insert(b + 1, tail_last);
            }
        }
    }

    /// Removes the entry under `key`; false if there is none.
    pub(crate) fn remove(&mut self, key: Key, uin_of: impl Fn(u32) -> u64) -> bool {
        let b = self.block_at_or_after(key);
        let Some(block) = self.blocks.get_mut(b) else { return false };
        let pos = block.partition_point(|e| e.cmp_key(key, &uin_of) == Ordering::Less);
        if block.get(pos).is_none_or(|e| e.cmp_key(key, &uin_of) != Ordering::Equal) {
            return false;
        }
        block.remove(pos);
        self.len -= 1;
        if block.is_empty() {
            self.blocks.remove(b);
            self.lasts.remove(b);
            return true;
        }
        if pos == block.len()
            && let Some(e) = block.last()
        {
            self.lasts[b] = (e.joined(), uin_of(e.slot));
        }
        if block.len() < MAX_BLOCK / 4 {
            self.merge_around(b);
        }
        true
    }

    /// Merges block `b` with a neighbour when both fit in one block.
    fn merge_around(&mut self, b: usize) {
        let fits = |x: usize, y: usize| self.blocks[x].len() + self.blocks[y].len() <= MAX_BLOCK;
        let (left, right) = if b + 1 < self.blocks.len() && fits(b, b + 1) {
            (b, b + 1)
        } else if b > 0 && fits(b - 1, b) {
            (b - 1, b)
        } else {
            return;
        };
        let moved = self.blocks.remove(right);
        let last = self.lasts.remove(right);
        self.blocks[left].extend_from_slice(&moved);
        self.lasts[left] = last;
    }

    /// Slots from position `rank` on, in order.
    pub(crate) fn iter_from(&self, mut rank: usize) -> Iter<'_> {
        for (b, block) in self.blocks.iter().enumerate() {
            if rank < block.len() {
                return Iter { list: self, block: b, pos: rank };
            }
            rank -= block.len();
        }
        Iter { list: self, block: self.blocks.len(), pos: 0 }
    }

    /// Slots whose key is strictly greater than `key`, in order.
    pub(crate) fn iter_after(&self, key: Key, uin_of: impl Fn(u32) -> u64) -> Iter<'_> {
        let b = self.block_at_or_after(key);
        let Some(block) = self.blocks.get(b) else { return Iter { list: self, block: b, pos: 0 } };
        let pos = block.partition_point(|e| e.cmp_key(key, &uin_of) != Ordering::Greater);
        Iter { list: self, block: b, pos }
    }

    /// Every slot in order.
    pub(crate) fn iter(&self) -> Iter<'_> {
        Iter { list: self, block: 0, pos: 0 }
    }
}

/// Slots of an [`OrderedList`] in order, with their join times.
#[derive(Debug, Clone)]
pub(crate) struct Iter<'a> {
    list: &'a OrderedList,
    block: usize,
    pos: usize,
}

impl Iterator for Iter<'_> {
    /// (join time, slot)
    type Item = (u64, u32);

    fn next(&mut self) -> Option<(u64, u32)> {
        loop {
            let block = self.list.blocks.get(self.block)?;
            if let Some(e) = block.get(self.pos) {
                self.pos += 1;
                return Some((e.joined(), e.slot));
            }
            self.block += 1;
            self.pos = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeSet;

    #[derive(Debug, Clone)]
    enum Op {
        Insert(u64, u64),
        Remove(usize),
    }

    fn op() -> impl Strategy<Value = Op> {
        // Few distinct join times, so that ties (broken by uin) are common.
        prop_oneof![
            3 => (0u64..40, 0u64..5_000).prop_map(|(j, u)| Op::Insert(j, u)),
            2 => any::<usize>().prop_map(Op::Remove),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// The list against a BTreeSet of keys: same order, same positions,
        /// same "after key" suffixes, under inserts (mostly in the middle:
        /// splits) and removes (merges).
        #[test]
        fn matches_a_sorted_set(ops in proptest::collection::vec(op(), 1..3_000), probes in proptest::collection::vec((0u64..41, 0u64..5_001), 8)) {
            let mut list = OrderedList::default();
            let mut model = BTreeSet::new();
            // slot -> uin; slots are never reused here
            let mut uins: Vec<u64> = Vec::new();
            let mut slot_of = std::collections::HashMap::new();
            for op in ops {
                match op {
                    Op::Insert(j, u) => {
                        if slot_of.contains_key(&u) { continue; }
                        let slot = uins.len() as u32;
                        uins.push(u);
                        slot_of.insert(u, (j, slot));
                        list.insert((j, u), slot, |s| uins[s as usize]);
                        model.insert((j, u));
                    }
                    Op::Remove(i) => {
                        if model.is_empty() { continue; }
                        let key = *model.iter().nth(i % model.len()).unwrap();
                        model.remove(&key);
                        slot_of.remove(&key.1);
                        prop_assert!(list.remove(key, |s| uins[s as usize]));
                        prop_assert!(!list.remove(key, |s| uins[s as usize]));
                    }
                }
            }
            let keys = |it: Iter<'_>| it.map(|(j, s)| (j, uins[s as usize])).collect::<Vec<_>>();
            let expected: Vec<_> = model.iter().copied().collect();
            prop_assert_eq!(list.len(), expected.len());
            prop_assert_eq!(keys(list.iter()), expected.clone());
            for rank in [0, 1, expected.len() / 3, expected.len() / 2, expected.len().saturating_sub(1), expected.len(), expected.len() + 5] {
                prop_assert_eq!(keys(list.iter_from(rank)), expected.iter().skip(rank).copied().collect::<Vec<_>>());
            }
            for probe in probes {
                let after: Vec<_> = model.range((std::ops::Bound::Excluded(probe), std::ops::Bound::Unbounded)).copied().collect();
                prop_assert_eq!(keys(list.iter_after(probe, |s| uins[s as usize])), after);
            }
            for (i, block) in list.blocks.iter().enumerate() {
                prop_assert!(!block.is_empty() && block.len() <= MAX_BLOCK);
                let last = block.last().unwrap();
                prop_assert_eq!(list.lasts[i], (last.joined(), uins[last.slot as usize]));
                if let Some(next) = list.blocks.get(i + 1) {
                    prop_assert!(block.len() + next.len() >= MAX_BLOCK / 4);
                }
            }
        }
    }

    #[test]
    fn appends_stay_packed() {
        let mut list = OrderedList::default();
        let n = 10 * MAX_BLOCK as u32;
        for slot in 0..n {
            list.insert((u64::from(slot), u64::from(slot)), slot, u64::from);
        }
        assert_eq!(list.blocks.len(), 10);
        assert!(list.blocks.iter().all(|b| b.len() == MAX_BLOCK));
        assert_eq!(
            list.iter_from(5 * MAX_BLOCK + 3).next(),
            Some((5 * MAX_BLOCK as u64 + 3, 5 * MAX_BLOCK as u32 + 3))
        );
    }
}
