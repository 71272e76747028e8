//! Enter/exit notifications, per business.
//!
//! Several businesses share one heartbeat service, so subscribers choose a
//! [`Scope`]: one business, or all of them. [`Notifier::publish`] routes each
//! [`MemberEvent`] to the matching subscribers; each drains its own queue in
//! batches ([`Notifier::drain`]), in publication order, so the events of any
//! one member arrive in the order they happened.
//!
//! Queues are bounded. A subscriber that falls behind by more than its
//! capacity loses the newest events, not the oldest (so what it has stays a
//! consistent prefix), and its next batch reports how many it missed: its
//! cue to resynchronise from the member list.

use std::collections::VecDeque;

use room_core::{BusinessId, MemberEvent};

/// Which events a subscriber receives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Scope {
    /// Every business's events.
    AllBusinesses,
    /// One business's events.
    Business(BusinessId),
}

impl Scope {
    fn matches(self, event: &MemberEvent) -> bool {
        match self {
            Scope::AllBusinesses => true,
            Scope::Business(bid) => event.member.bid == bid,
        }
    }
}

/// A subscription's handle.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SubscriberId(u64);

/// Why a notifier call was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum NotifyError {
    /// No such subscriber (never subscribed, or unsubscribed).
    #[error("unknown subscriber {0:?}")]
    UnknownSubscriber(SubscriberId),
    /// A queue capacity of zero.
    #[error("subscriber capacity must be positive")]
    ZeroCapacity,
}

/// What one drain returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Drained {
    /// Events appended to the caller's buffer.
    pub events: usize,
    /// Events this subscriber lost to a full queue since its last drain.
    pub missed: u64,
}

#[derive(Debug)]
struct Subscriber {
    id: SubscriberId,
    scope: Scope,
    queue: VecDeque<MemberEvent>,
    capacity: usize,
    missed: u64,
}

/// Routes member events to subscribers. See the [module docs](self).
///
/// ```
/// use room_core::{BusinessId, MemberChange, MemberEvent, Timestamp};
/// use room_heartbeat::{Notifier, Scope};
///
/// let mut notifier = Notifier::new();
/// let maths = notifier.subscribe(Scope::Business(BusinessId(7)), 10_000).unwrap();
/// let audit = notifier.subscribe(Scope::AllBusinesses, 10_000).unwrap();
/// notifier.publish(MemberEvent { member: "7/100/42".parse().unwrap(), change: MemberChange::Entered, at: Timestamp::ZERO });
/// notifier.publish(MemberEvent { member: "8/5/1".parse().unwrap(), change: MemberChange::Entered, at: Timestamp::ZERO });
/// let mut batch = Vec::new();
/// assert_eq!(notifier.drain(maths, &mut batch, 100).unwrap().events, 1);
/// batch.clear();
/// assert_eq!(notifier.drain(audit, &mut batch, 100).unwrap().events, 2);
/// ```
#[derive(Debug, Default)]
pub struct Notifier {
    subscribers: Vec<Subscriber>,
    next_id: u64,
}

impl Notifier {
    /// A notifier without subscribers.
    pub fn new() -> Self {
        Self::default()
    }

    /// Subscribes to `scope`, holding at most `capacity` undrained events.
    pub fn subscribe(&mut self, scope: Scope, capacity: usize) -> Result<SubscriberId, NotifyError> {
        if capacity == 0 {
            return Err(NotifyError::ZeroCapacity);
        }
        self.next_id += 1;
        let id = SubscriberId(self.next_id);
        self.subscribers.push(Subscriber { id, scope, queue: VecDeque::new(), capacity, missed: 0 });
        Ok(id)
    }

    /// Ends a subscription; its undrained events are dropped.
    pub fn unsubscribe(&mut self, id: SubscriberId) -> Result<(), NotifyError> {
        let at = self.position(id)?;
        self.subscribers.remove(at);
        Ok(())
    }

    fn position(&self, id: SubscriberId) -> Result<usize, NotifyError> {
        self.subscribers.iter().position(|s| s.id == id).ok_or(NotifyError::UnknownSubscriber(id))
    }

    /// Hands `event` to every subscriber whose scope matches.
    pub fn publish(&mut self, event: MemberEvent) {
        for sub in self.subscribers.iter_mut().filter(|s| s.scope.matches(&event)) {
            if sub.queue.len() < sub.capacity {
                sub.queue.push_back(event);
            } else {
                sub.missed += 1;
            }
        }
    }

    /// Moves up to `max` of `id`'s events, oldest first, onto `into`.
    pub fn drain(&mut self, id: SubscriberId, into: &mut Vec<MemberEvent>, max: usize) -> Result<Drained, NotifyError> {
        let at = self.position(id)?;
        let sub = &mut self.subscribers[at];
        let n = max.min(sub.queue.len());
        into.extend(sub.queue.drain(..n));
        Ok(Drained { events: n, missed: std::mem::take(&mut sub.missed) })
    }

    /// Events waiting for `id`.
    pub fn pending(&self, id: SubscriberId) -> Result<usize, NotifyError> {
        Ok(self.subscribers[self.position(id)?].queue.len())
    }
}
