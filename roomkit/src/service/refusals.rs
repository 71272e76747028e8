//! Refusals told to the operator once per window, not once per frame: a
//! flood of bad tickets or of requests over their budget would otherwise
//! write a log line for each (the issue that asked for this saw 28,000
//! lines in 8 s).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// How often refusals are summed up in the log.
pub(crate) const WINDOW: Duration = Duration::from_secs(10);

/// Refusal counters at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Counts {
    /// Entries refused for their ticket (at this node's door).
    pub(crate) tickets: u64,
    /// Entries refused by the node or the room's owner.
    pub(crate) entries: u64,
    /// Client frames refused.
    pub(crate) frames: u64,
    /// Of those, over a budget.
    pub(crate) rate_limited: u64,
}

impl Counts {
    fn since(&self, before: &Counts) -> Counts {
        Counts {
            tickets: self.tickets.saturating_sub(before.tickets),
            entries: self.entries.saturating_sub(before.entries),
            frames: self.frames.saturating_sub(before.frames),
            rate_limited: self.rate_limited.saturating_sub(before.rate_limited),
        }
    }

    fn is_zero(&self) -> bool {
        *self == Counts::default()
    }
}

/// Sums refusals up once per [`WINDOW`].
#[derive(Debug)]
pub(crate) struct RefusalWindow {
    started: Instant,
    at_start: Counts,
}

impl RefusalWindow {
    pub(crate) fn new(now: Instant, counts: Counts) -> RefusalWindow {
        RefusalWindow { started: now, at_start: counts }
    }

    /// The refusals of the window that just ended, if it ended and had
    /// any; a new window starts with each answer. `counts` is read only
    /// when a window ended (it takes the node's lock).
    pub(crate) fn observe(&mut self, now: Instant, counts: impl FnOnce() -> Counts) -> Option<Counts> {
        if now.duration_since(self.started) < WINDOW {
            return None;
        }
        let counts = counts();
        let delta = counts.since(&self.at_start);
        self.started = now;
        self.at_start = counts;
        (!delta.is_zero()).then_some(delta)
    }
}

/// The first refusal of a kind in each window gets its own line (with
/// what was wrong); the rest are only counted, for the window's summary.
#[derive(Debug, Default)]
pub(crate) struct FirstInWindow {
    window: AtomicU64,
}

impl FirstInWindow {
    /// Whether the refusal at `unix_secs` is its window's first.
    pub(crate) fn first(&self, unix_secs: u64) -> bool {
        let window = unix_secs / WINDOW.as_secs() + 1;
        self.window.swap(window, Ordering::Relaxed) != window
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counts(frames: u64) -> Counts {
        Counts { frames, rate_limited: frames / 2, ..Counts::default() }
    }

    #[test]
    fn a_flood_gives_one_summary_per_window() {
        let t0 = Instant::now();
        let mut w = RefusalWindow::new(t0, counts(0));
        let mut summaries = Vec::new();
        // 30 s of a refusal every millisecond, looked at every 20 ms.
        for ms in (0..30_000u64).step_by(20) {
            if let Some(s) = w.observe(t0 + Duration::from_millis(ms), || counts(ms)) {
                summaries.push(s);
            }
        }
        assert_eq!(summaries.len(), 2, "{summaries:?}");
        assert_eq!(summaries[0], counts(10_000));
        assert_eq!(summaries[1].frames, 10_000);
        // The refusals since the last summary come with the next look.
        assert_eq!(w.observe(t0 + Duration::from_secs(50), || counts(29_980)).map(|c| c.frames), Some(9_980));
        // A quiet window says nothing.
        assert_eq!(w.observe(t0 + Duration::from_secs(61), || counts(29_980)), None);
    }

    #[test]
    fn only_the_first_refusal_of_a_window_gets_a_line() {
        let f = FirstInWindow::default();
        let lines = (0..100_000u64).filter(|i| f.first(1_000_000 + i / 1_000)).count();
        // 100 s of refusals: one line per 10 s window.
        assert_eq!(lines, 10);
        assert!(f.first(0), "time 0 is a window too");
    }
}
