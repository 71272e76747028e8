//! Splitting a big room into sub-classes.
//!
//! A room of 60,000 learners where everyone's chat reaches everyone is
//! noise at 1,000 lines a second; large platforms split big rooms into
//! small classes. The planner assigns each learner to a sub-class of at most
//! `size` members, deterministically (the same joins and leaves in the same
//! order give the same assignment on any machine) and balanced: sub-class
//! sizes never differ by more than one.
//!
//! Keeping the balance sometimes moves a member: when every sub-class is
//! full a new one opens and members move into it, and when a leave leaves a
//! hole a member from a largest sub-class moves into it. Hosts that know a
//! class's size in advance open enough sub-classes up front
//! ([`SubclassPlanner::with_initial`]) and see no moves while it fills.

use std::collections::BTreeSet;

use room_core::{ChurnMap, Uin};

use crate::message::SubclassId;

/// A member moved from one sub-class to another.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Move {
    /// Who moved.
    pub uin: Uin,
    /// Where from.
    pub from: SubclassId,
    /// Where to.
    pub to: SubclassId,
}

/// Why a member cannot be placed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SubclassError {
    /// A sub-class size of zero.
    #[error("a sub-class needs room for at least one member")]
    ZeroSize,
    /// The room would need more sub-classes than ids exist.
    #[error("the room would need more than {max} sub-classes")]
    TooMany {
        /// The most sub-classes a room can have.
        max: usize,
    },
}

/// The most sub-classes in one room (`u16::MAX` is kept for "none" on the wire).
pub const MAX_SUBCLASSES: usize = u16::MAX as usize;

/// Assigns a room's learners to balanced sub-classes.
#[derive(Debug, Clone)]
pub struct SubclassPlanner {
    size: u32,
    members: ChurnMap<Uin, (u16, u32), ahash::RandomState>,
    groups: Vec<Vec<Uin>>,
    by_size: BTreeSet<(u32, u16)>,
}

impl SubclassPlanner {
    /// A planner for sub-classes of at most `size` members.
    pub fn new(size: u32) -> Result<Self, SubclassError> {
        Self::with_initial(size, 1)
    }

    /// A planner that starts with `initial` sub-classes open (at least 1), so
    /// that a class expected to reach `initial * size` members fills without
    /// moves.
    pub fn with_initial(size: u32, initial: usize) -> Result<Self, SubclassError> {
        if size == 0 {
            return Err(SubclassError::ZeroSize);
        }
        if initial > MAX_SUBCLASSES {
            return Err(SubclassError::TooMany { max: MAX_SUBCLASSES });
        }
        let mut planner = SubclassPlanner {
            size,
            members: ChurnMap::with_hasher(ahash::RandomState::new()),
            groups: Vec::new(),
            by_size: BTreeSet::new(),
        };
        for _ in 0..initial.max(1) {
            planner.open_group();
        }
        Ok(planner)
    }

    fn open_group(&mut self) {
        let idx = self.groups.len() as u16;
        self.groups.push(Vec::new());
        self.by_size.insert((0, idx));
    }

    /// The sub-class `uin` is in.
    pub fn subclass_of(&self, uin: Uin) -> Option<SubclassId> {
        self.members.get(&uin).map(|&(g, _)| SubclassId(g))
    }

    /// Members assigned.
    pub fn len(&self) -> usize {
        self.members.len()
    }

    /// Whether nobody is assigned.
    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// The size of each sub-class, by id.
    pub fn sizes(&self) -> Vec<u32> {
        self.groups.iter().map(|g| g.len() as u32).collect()
    }

    /// Places `uin` (a member already placed keeps its sub-class) and
    /// returns its sub-class, plus the members moved to keep the balance.
    pub fn join(&mut self, uin: Uin) -> Result<(SubclassId, Vec<Move>), SubclassError> {
        if let Some(s) = self.subclass_of(uin) {
            return Ok((s, Vec::new()));
        }
        let full = self.members.len() as u64 >= self.groups.len() as u64 * u64::from(self.size);
        if full {
            if self.groups.len() >= MAX_SUBCLASSES {
                return Err(SubclassError::TooMany { max: MAX_SUBCLASSES });
            }
            self.open_group();
        }
        let &(_, smallest) = self.by_size.first().expect("a planner always has a group");
        self.insert(uin, smallest);
        let mut moves = Vec::new();
        while let Some(m) = self.level_once() {
            moves.push(m);
        }
        Ok((SubclassId(smallest), moves))
    }

    /// Removes `uin`; returns the move that fills its place, if one is
    /// needed to keep the balance. Unknown members are ignored.
    pub fn leave(&mut self, uin: Uin) -> Option<Move> {
        self.take(uin)?;
        self.level_once()
    }

    /// Puts `uin` in `subclass` as it is, without levelling: for restoring
    /// a saved plan member by member, then [`level`](Self::level) once.
    /// Sub-classes up to `subclass` are opened as needed; a member already
    /// placed elsewhere is taken out of its sub-class first.
    ///
    /// # Errors
    ///
    /// [`SubclassError::TooMany`] if `subclass` is not below
    /// [`MAX_SUBCLASSES`]; nothing changed.
    pub fn place(&mut self, uin: Uin, subclass: SubclassId) -> Result<(), SubclassError> {
        let g = subclass.0;
        if usize::from(g) >= MAX_SUBCLASSES {
            return Err(SubclassError::TooMany { max: MAX_SUBCLASSES });
        }
        match self.members.get(&uin) {
            Some(&(at, _)) if at == g => return Ok(()),
            Some(_) => {
                self.take(uin);
            }
            None => {}
        }
        while self.groups.len() <= usize::from(g) {
            self.open_group();
        }
        self.insert(uin, g);
        Ok(())
    }

    /// Restores the planner's rules after [`place`](Self::place): opens
    /// sub-classes until every member fits within the size (up to
    /// [`MAX_SUBCLASSES`]), then moves members until sizes differ by at
    /// most one. Returns the moves, in the order made (a member may move
    /// more than once).
    pub fn level(&mut self) -> Vec<Move> {
        while (self.members.len() as u64) > self.groups.len() as u64 * u64::from(self.size)
            && self.groups.len() < MAX_SUBCLASSES
        {
            self.open_group();
        }
        let mut moves = Vec::new();
        while let Some(m) = self.level_once() {
            moves.push(m);
        }
        moves
    }

    /// Takes `uin` out of its sub-class without levelling.
    fn take(&mut self, uin: Uin) -> Option<u16> {
        let (g, pos) = self.members.remove(&uin)?;
        let group = &mut self.groups[usize::from(g)];
        let before = group.len() as u32;
        group.swap_remove(pos as usize);
        if let Some(&moved) = group.get(pos as usize) {
            self.members.insert(moved, (g, pos));
        }
        self.by_size.remove(&(before, g));
        self.by_size.insert((before - 1, g));
        Some(g)
    }

    fn insert(&mut self, uin: Uin, g: u16) {
        let group = &mut self.groups[usize::from(g)];
        let before = group.len() as u32;
        self.members.insert(uin, (g, before));
        group.push(uin);
        self.by_size.remove(&(before, g));
        self.by_size.insert((before + 1, g));
    }

    /// Moves the newest member of the largest sub-class (highest id among
    /// equals) to the smallest (lowest id among equals) if they differ by
    /// more than one.
    fn level_once(&mut self) -> Option<Move> {
        let &(small_len, small) = self.by_size.first()?;
        let &(big_len, big) = self.by_size.last()?;
        if big_len <= small_len + 1 {
            return None;
        }
        let uin = self.groups[usize::from(big)].pop().expect("a largest group is not empty");
        self.by_size.remove(&(big_len, big));
        self.by_size.insert((big_len - 1, big));
        self.members.remove(&uin);
        self.insert(uin, small);
        Some(Move { uin, from: SubclassId(big), to: SubclassId(small) })
    }
}
