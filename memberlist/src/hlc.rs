//! Hybrid logical clock stamps: the order of writes across replicas.
//!
//! A stamp is 48 bits of wall-clock milliseconds and a 16-bit counter, plus
//! the 16-bit tag of the replica that wrote it. Stamps from one clock only
//! grow; a clock that receives a stamp from the future moves past it, so a
//! write that causally follows another always carries a larger stamp, even
//! across replicas whose clocks disagree.

use room_core::Timestamp;

/// When and where a write happened. Ordered by (time, origin): the later
/// write wins; writes of the same instant are ordered by origin.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct Stamp {
    /// `millis << 16 | counter`.
    pub hlc: u64,
    /// The writing replica's tag.
    pub origin: u16,
}

impl Stamp {
    /// The wall-clock part.
    pub fn time(self) -> Timestamp {
        Timestamp::from_millis(self.hlc >> 16)
    }
}

/// A hybrid logical clock owned by one replica (or one local store).
#[derive(Debug, Clone)]
pub struct Hlc {
    last: u64,
    origin: u16,
    max_ahead_millis: u64,
}

impl Hlc {
    /// A clock for the replica tagged `origin`. Remote stamps more than
    /// `max_ahead` ahead of the local wall clock are not followed
    /// ([`Hlc::observe`] reports them), so one replica with a wild clock
    /// cannot drag every other one into the future.
    pub fn new(origin: u16, max_ahead: std::time::Duration) -> Hlc {
        Hlc { last: 0, origin, max_ahead_millis: u64::try_from(max_ahead.as_millis()).unwrap_or(u64::MAX) }
    }

    /// The replica tag.
    pub fn origin(&self) -> u16 {
        self.origin
    }

    /// A new stamp, larger than every stamp this clock issued or observed.
    pub fn stamp(&mut self, now: Timestamp) -> Stamp {
        let physical = now.as_millis().min((1 << 48) - 1) << 16;
        self.last = if physical > self.last { physical } else { self.last.saturating_add(1) };
        Stamp { hlc: self.last, origin: self.origin }
    }

    /// Takes a remote stamp into account, unless it is implausibly far
    /// ahead of `now` (then false, and the clock is unchanged).
    pub fn observe(&mut self, now: Timestamp, remote: Stamp) -> bool {
        let limit = now.as_millis().saturating_add(self.max_ahead_millis).min((1 << 48) - 1) << 16 | 0xffff;
        if remote.hlc > limit {
            return false;
        }
        self.last = self.last.max(remote.hlc);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn stamps_grow_even_when_the_clock_stalls_or_steps_back() {
        let mut clock = Hlc::new(3, Duration::from_secs(60));
        let a = clock.stamp(Timestamp::from_millis(1_000));
        let b = clock.stamp(Timestamp::from_millis(1_000));
        let c = clock.stamp(Timestamp::from_millis(500));
        assert!(a < b && b < c);
        assert_eq!(c.origin, 3);
        assert_eq!(a.time(), Timestamp::from_millis(1_000));
    }

    #[test]
    fn follows_remote_stamps_but_not_wild_ones() {
        let mut clock = Hlc::new(1, Duration::from_secs(60));
        let now = Timestamp::from_millis(10_000);
        let remote = Stamp { hlc: 20_000 << 16, origin: 2 };
        assert!(clock.observe(now, remote));
        assert!(clock.stamp(now) > remote);
        let wild = Stamp { hlc: 10_000_000 << 16, origin: 2 };
        assert!(!clock.observe(now, wild));
        assert!(clock.stamp(now) < wild);
    }
}
