//! The cluster view: which nodes exist, how heavy they are, and what state
//! they are in, numbered by epoch.
//!
//! Every change is a [`NodeChange`]; applying one that changes something
//! advances the epoch and yields a [`NodeEvent`] that other processes can
//! apply in the same order ([`ClusterView::apply_event`]) to hold the same
//! view. The router is rebuilt from the view ([`crate::Router::sync`]).

use std::collections::BTreeMap;
use std::fmt;

use crate::id::NodeId;
use crate::router::{MAX_NODES, RouterError, validate_weight};

/// A cluster-view version. Each applied change increments it by one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize), serde(transparent))]
pub struct Epoch(pub u64);

impl Epoch {
    /// The epoch after this one (saturating).
    #[must_use]
    pub const fn next(self) -> Epoch {
        Epoch(self.0.saturating_add(1))
    }
}

impl fmt::Display for Epoch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "e{}", self.0)
    }
}

/// A node's life-cycle state.
///
/// Allowed transitions (anything else is [`ClusterError::InvalidTransition`]):
///
/// ```text
/// Joining -> Up | Down | Leaving
/// Up      -> Suspect | Down | Leaving
/// Suspect -> Up | Down | Leaving
/// Down    -> Joining | Up
/// Leaving -> Down
/// ```
/// A node in any state may be removed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(rename_all = "snake_case"))]
#[non_exhaustive]
pub enum NodeState {
    /// Announced, warming up; takes no keys yet.
    Joining,
    /// Serving.
    Up,
    /// Missed probes; still routed to, so a slow node is not evicted (and its
    /// users migrated) on a single hiccup.
    Suspect,
    /// Confirmed dead; takes no keys.
    Down,
    /// Draining on purpose; takes no keys.
    Leaving,
}

impl NodeState {
    /// Whether the router sends keys to a node in this state (Up, Suspect).
    pub const fn is_routable(self) -> bool {
        matches!(self, NodeState::Up | NodeState::Suspect)
    }

    /// Whether `self -> to` is an allowed transition.
    pub const fn can_become(self, to: NodeState) -> bool {
        use NodeState::*;
        matches!(
            (self, to),
            (Joining, Up | Down | Leaving)
                | (Up, Suspect | Down | Leaving)
                | (Suspect, Up | Down | Leaving)
                | (Down, Joining | Up)
                | (Leaving, Down)
        )
    }
}

/// What the view knows of one node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct NodeInfo {
    /// Relative capacity (`1..=MAX_WEIGHT`).
    pub weight: u32,
    /// Life-cycle state.
    pub state: NodeState,
}

/// A change to the cluster view.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(rename_all = "snake_case", tag = "change"))]
#[non_exhaustive]
pub enum NodeChange {
    /// A new node, in state [`NodeState::Joining`].
    Joined {
        /// The node.
        node: NodeId,
        /// Its weight.
        weight: u32,
    },
    /// A node moved to another state.
    StateChanged {
        /// The node.
        node: NodeId,
        /// The new state.
        state: NodeState,
    },
    /// A node's weight changed.
    Reweighted {
        /// The node.
        node: NodeId,
        /// The new weight.
        weight: u32,
    },
    /// A node left the view for good.
    Removed {
        /// The node.
        node: NodeId,
    },
}

impl NodeChange {
    /// The node the change is about.
    pub const fn node(&self) -> NodeId {
        match *self {
            NodeChange::Joined { node, .. }
            | NodeChange::StateChanged { node, .. }
            | NodeChange::Reweighted { node, .. }
            | NodeChange::Removed { node } => node,
        }
    }
}

/// A change as applied at an epoch: the node-change event other crates and
/// processes consume.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct NodeEvent {
    /// The epoch the change produced.
    pub epoch: Epoch,
    /// The change.
    pub change: NodeChange,
}

/// Why a change was refused. A refused change never alters the view.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum ClusterError {
    /// The node is not in the view.
    #[error("node {0} is not in the view")]
    UnknownNode(NodeId),
    /// A join for a node that is already in the view.
    #[error("node {0} is already in the view")]
    AlreadyJoined(NodeId),
    /// A state transition the life cycle does not allow.
    #[error("node {node} cannot go from {from:?} to {to:?}")]
    InvalidTransition {
        /// The node.
        node: NodeId,
        /// Its current state.
        from: NodeState,
        /// The requested state.
        to: NodeState,
    },
    /// A weight the router would refuse.
    #[error(transparent)]
    InvalidWeight(RouterError),
    /// The view already holds [`MAX_NODES`] nodes.
    #[error("the view already holds the maximum of {max} nodes")]
    TooManyNodes {
        /// [`MAX_NODES`].
        max: usize,
    },
    /// An event whose epoch is not the next one: a gap to fill (or a stale
    /// event to drop) before it can apply.
    #[error("event for epoch {got} does not follow epoch {current}")]
    OutOfOrder {
        /// The view's epoch.
        current: Epoch,
        /// The event's epoch.
        got: Epoch,
    },
}

/// An epoch-numbered set of nodes with weights and states.
///
/// ```
/// use room_core::{ClusterView, NodeChange, NodeId, NodeState, Router, RouterConfig};
///
/// let mut view = ClusterView::new();
/// view.apply(NodeChange::Joined { node: NodeId(1), weight: 100 })?;
/// view.apply(NodeChange::StateChanged { node: NodeId(1), state: NodeState::Up })?;
/// assert_eq!(view.epoch().0, 2);
/// let router = Router::from_view(RouterConfig::new().with_slot_bits(12).unwrap(), &view).unwrap();
/// assert_eq!(router.len(), 1);
/// # Ok::<(), room_core::ClusterError>(())
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct ClusterView {
    epoch: Epoch,
    nodes: BTreeMap<NodeId, NodeInfo>,
}

impl ClusterView {
    /// An empty view at epoch 0.
    pub fn new() -> Self {
        Self::default()
    }

    /// The current epoch.
    pub fn epoch(&self) -> Epoch {
        self.epoch
    }

    /// What the view knows of `node`.
    pub fn get(&self, node: NodeId) -> Option<NodeInfo> {
        self.nodes.get(&node).copied()
    }

    /// Every node, by id.
    pub fn nodes(&self) -> impl Iterator<Item = (NodeId, NodeInfo)> + '_ {
        self.nodes.iter().map(|(&id, &info)| (id, info))
    }

    /// The nodes the router sends keys to (Up or Suspect), with weights.
    pub fn routable(&self) -> impl Iterator<Item = (NodeId, u32)> + '_ {
        self.nodes.iter().filter(|(_, info)| info.state.is_routable()).map(|(&id, info)| (id, info.weight))
    }

    /// Applies `change`. Returns the event for the new epoch, or `None` if the
    /// change was a no-op (same state, same weight), which leaves the epoch.
    pub fn apply(&mut self, change: NodeChange) -> Result<Option<NodeEvent>, ClusterError> {
        if !self.check(&change)? {
            return Ok(None);
        }
        self.commit(change);
        self.epoch = self.epoch.next();
        Ok(Some(NodeEvent { epoch: self.epoch, change }))
    }

    /// Applies an event produced by another view. Its epoch must be exactly
    /// the next one; an event for an older epoch is refused as
    /// [`ClusterError::OutOfOrder`] too, so replays are harmless.
    pub fn apply_event(&mut self, event: &NodeEvent) -> Result<(), ClusterError> {
        if event.epoch != self.epoch.next() {
            return Err(ClusterError::OutOfOrder { current: self.epoch, got: event.epoch });
        }
        self.check(&event.change)?;
        self.commit(event.change);
        self.epoch = event.epoch;
        Ok(())
    }

    /// Validates `change`; `Ok(false)` if it would change nothing.
    fn check(&self, change: &NodeChange) -> Result<bool, ClusterError> {
        let node = change.node();
        let known = self.nodes.get(&node);
        match (*change, known) {
            (NodeChange::Joined { .. }, Some(_)) => Err(ClusterError::AlreadyJoined(node)),
            (NodeChange::Joined { weight, .. }, None) => {
                validate_weight(node, weight).map_err(ClusterError::InvalidWeight)?;
                if self.nodes.len() >= MAX_NODES {
                    return Err(ClusterError::TooManyNodes { max: MAX_NODES });
                }
                Ok(true)
            }
            (_, None) => Err(ClusterError::UnknownNode(node)),
            (NodeChange::StateChanged { state, .. }, Some(info)) => {
                if info.state == state {
                    Ok(false)
                } else if info.state.can_become(state) {
                    Ok(true)
                } else {
                    Err(ClusterError::InvalidTransition { node, from: info.state, to: state })
                }
            }
            (NodeChange::Reweighted { weight, .. }, Some(info)) => {
                validate_weight(node, weight).map_err(ClusterError::InvalidWeight)?;
                Ok(info.weight != weight)
            }
            (NodeChange::Removed { .. }, Some(_)) => Ok(true),
        }
    }

    fn commit(&mut self, change: NodeChange) {
        match change {
            NodeChange::Joined { node, weight } => {
                self.nodes.insert(node, NodeInfo { weight, state: NodeState::Joining });
            }
            NodeChange::StateChanged { node, state } => {
                if let Some(info) = self.nodes.get_mut(&node) {
                    info.state = state;
                }
            }
            NodeChange::Reweighted { node, weight } => {
                if let Some(info) = self.nodes.get_mut(&node) {
                    info.weight = weight;
                }
            }
            NodeChange::Removed { node } => {
                self.nodes.remove(&node);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn up(view: &mut ClusterView, id: u64, weight: u32) {
        view.apply(NodeChange::Joined { node: NodeId(id), weight }).unwrap();
        view.apply(NodeChange::StateChanged { node: NodeId(id), state: NodeState::Up }).unwrap();
    }

    #[test]
    fn life_cycle_is_enforced_and_errors_leave_the_view_alone() {
        let mut view = ClusterView::new();
        up(&mut view, 1, 100);
        let before = view.clone();
        assert_eq!(
            view.apply(NodeChange::StateChanged { node: NodeId(1), state: NodeState::Joining }),
            Err(ClusterError::InvalidTransition { node: NodeId(1), from: NodeState::Up, to: NodeState::Joining })
        );
        assert_eq!(
            view.apply(NodeChange::Joined { node: NodeId(1), weight: 5 }),
            Err(ClusterError::AlreadyJoined(NodeId(1)))
        );
        assert_eq!(view.apply(NodeChange::Removed { node: NodeId(9) }), Err(ClusterError::UnknownNode(NodeId(9))));
        assert_eq!(
            view.apply(NodeChange::Reweighted { node: NodeId(1), weight: 0 }),
            Err(ClusterError::InvalidWeight(RouterError::ZeroWeight(NodeId(1))))
        );
        assert!(matches!(
            view.apply(NodeChange::Joined { node: NodeId(2), weight: u32::MAX }),
            Err(ClusterError::InvalidWeight(RouterError::WeightTooLarge { .. }))
        ));
        assert_eq!(view, before);
        // A no-op keeps the epoch.
        assert_eq!(view.apply(NodeChange::StateChanged { node: NodeId(1), state: NodeState::Up }), Ok(None));
        assert_eq!(view.epoch(), Epoch(2));
    }

    #[test]
    fn routable_nodes_are_up_or_suspect() {
        let mut view = ClusterView::new();
        for id in 1..=5 {
            up(&mut view, id, 100);
        }
        view.apply(NodeChange::StateChanged { node: NodeId(2), state: NodeState::Suspect }).unwrap();
        view.apply(NodeChange::StateChanged { node: NodeId(3), state: NodeState::Down }).unwrap();
        view.apply(NodeChange::StateChanged { node: NodeId(4), state: NodeState::Leaving }).unwrap();
        view.apply(NodeChange::Joined { node: NodeId(6), weight: 100 }).unwrap();
        let routable: Vec<_> = view.routable().map(|(id, _)| id.0).collect();
        assert_eq!(routable, vec![1, 2, 5]);
    }

    #[test]
    fn followers_replay_events_in_order_only() {
        let mut leader = ClusterView::new();
        let mut events = Vec::new();
        for change in [
            NodeChange::Joined { node: NodeId(1), weight: 100 },
            NodeChange::StateChanged { node: NodeId(1), state: NodeState::Up },
            NodeChange::Reweighted { node: NodeId(1), weight: 300 },
        ] {
            events.extend(leader.apply(change).unwrap());
        }
        let mut follower = ClusterView::new();
        assert_eq!(
            follower.apply_event(&events[1]),
            Err(ClusterError::OutOfOrder { current: Epoch(0), got: Epoch(2) })
        );
        for e in &events {
            follower.apply_event(e).unwrap();
        }
        assert_eq!(follower, leader);
        assert!(matches!(follower.apply_event(&events[2]), Err(ClusterError::OutOfOrder { .. })));
    }
}
