//! Host-supplied time.
//!
//! Cores never read a clock: every `handle_*` method takes `now`, a
//! [`Timestamp`] the host derives from whatever clock it trusts (a monotonic
//! clock in production, a virtual one in simulations).

use std::fmt;
use std::time::Duration;

/// A point in time, in microseconds since an epoch the host chooses.
///
/// Only differences between timestamps from the same host clock are
/// meaningful. Arithmetic saturates instead of overflowing, so a clock that
/// jumps to an absurd value cannot make a core panic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize), serde(transparent))]
pub struct Timestamp(u64);

impl Timestamp {
    /// The host clock's epoch.
    pub const ZERO: Timestamp = Timestamp(0);
    /// The largest representable timestamp.
    pub const MAX: Timestamp = Timestamp(u64::MAX);

    /// A timestamp `micros` microseconds after the epoch.
    pub const fn from_micros(micros: u64) -> Self {
        Timestamp(micros)
    }

    /// A timestamp `millis` milliseconds after the epoch (saturating).
    pub const fn from_millis(millis: u64) -> Self {
        Timestamp(millis.saturating_mul(1_000))
    }

    /// Microseconds since the epoch.
    pub const fn as_micros(self) -> u64 {
        self.0
    }

    /// Whole milliseconds since the epoch.
    pub const fn as_millis(self) -> u64 {
        self.0 / 1_000
    }

    /// `self + d`, saturating at [`Timestamp::MAX`].
    #[must_use]
    pub fn saturating_add(self, d: Duration) -> Self {
        Timestamp(self.0.saturating_add(duration_micros(d)))
    }

    /// `self - d`, saturating at [`Timestamp::ZERO`].
    #[must_use]
    pub fn saturating_sub(self, d: Duration) -> Self {
        Timestamp(self.0.saturating_sub(duration_micros(d)))
    }

    /// Time elapsed from `earlier` to `self`, or zero if `earlier` is later
    /// (a clock that stepped backwards).
    pub fn saturating_duration_since(self, earlier: Timestamp) -> Duration {
        Duration::from_micros(self.0.saturating_sub(earlier.0))
    }
}

/// Whole microseconds in `d`, saturating at `u64::MAX`.
fn duration_micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

impl std::ops::Add<Duration> for Timestamp {
    type Output = Timestamp;
    fn add(self, rhs: Duration) -> Timestamp {
        self.saturating_add(rhs)
    }
}

impl fmt::Display for Timestamp {
    /// `<seconds>.<micros>s`, e.g. `20.000500s`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{:06}s", self.0 / 1_000_000, self.0 % 1_000_000)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arithmetic_saturates() {
        assert_eq!(Timestamp::MAX + Duration::from_secs(1), Timestamp::MAX);
        assert_eq!(Timestamp::ZERO.saturating_sub(Duration::from_secs(1)), Timestamp::ZERO);
        assert_eq!(Timestamp::from_millis(u64::MAX), Timestamp::MAX);
        let t = Timestamp::from_millis(1_500);
        assert_eq!(t.saturating_duration_since(Timestamp::from_millis(2_000)), Duration::ZERO);
        assert_eq!(Timestamp::from_millis(2_000).saturating_duration_since(t), Duration::from_millis(500));
        assert_eq!(t.to_string(), "1.500000s");
        assert_eq!(t.as_millis(), 1_500);
    }
}
