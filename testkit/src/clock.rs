//! A clock that moves only when the test says so.

use std::time::Duration;

use room_core::Timestamp;

/// A virtual clock for driving one sans-IO core by hand: read [`now`],
/// hand it to the core, [`advance`] to the core's next wake-up.
///
/// [`now`]: VirtualClock::now
/// [`advance`]: VirtualClock::advance
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct VirtualClock {
    now: Timestamp,
}

impl VirtualClock {
    /// A clock at `start`.
    pub fn starting_at(start: Timestamp) -> Self {
        VirtualClock { now: start }
    }

    /// The current virtual time.
    pub fn now(&self) -> Timestamp {
        self.now
    }

    /// Moves forward by `d` and returns the new time.
    pub fn advance(&mut self, d: Duration) -> Timestamp {
        self.now = self.now + d;
        self.now
    }

    /// Moves to `t` if it is later; a virtual clock never goes backwards.
    /// Returns the new time.
    pub fn advance_to(&mut self, t: Timestamp) -> Timestamp {
        self.now = self.now.max(t);
        self.now
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn moves_forward_only() {
        let mut clock = VirtualClock::starting_at(Timestamp::from_millis(10));
        assert_eq!(clock.advance(Duration::from_millis(5)), Timestamp::from_millis(15));
        assert_eq!(clock.advance_to(Timestamp::from_millis(12)), Timestamp::from_millis(15));
        assert_eq!(clock.advance_to(Timestamp::from_millis(20)), Timestamp::from_millis(20));
    }
}
