//! Degradation: what a platform gives up, in order, when it is overloaded.

use std::time::Duration;

use room_core::Timestamp;

/// A node-wide shedding level. Each level keeps everything the next one
/// keeps; signals always flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(rename_all = "kebab-case"))]
#[non_exhaustive]
pub enum Level {
    /// Everything flows.
    #[default]
    Normal,
    /// Chat is merged over a longer window into smaller batches (lines over
    /// the batch cap are sampled out and counted); reactions are merged
    /// over a longer window.
    MergeHarder,
    /// As above, and chat from learners is refused in rooms larger than
    /// [`GateConfig::large_room`](crate::GateConfig::large_room).
    DropLargeRoomChat,
    /// Only signals: teacher messages, chat and reactions are refused with
    /// an error to their sender (never silently dropped).
    SignalOnly,
}

impl Level {
    /// Every level, mildest first.
    pub const ALL: [Level; 4] = [Level::Normal, Level::MergeHarder, Level::DropLargeRoomChat, Level::SignalOnly];

    /// A number for wire formats (the payload of a [`Kind::LEVEL`](crate::Kind::LEVEL) signal).
    pub const fn code(self) -> u8 {
        match self {
            Level::Normal => 0,
            Level::MergeHarder => 1,
            Level::DropLargeRoomChat => 2,
            Level::SignalOnly => 3,
        }
    }

    /// The level of [`Level::code`] `code`.
    pub const fn from_code(code: u8) -> Option<Level> {
        Some(match code {
            0 => Level::Normal,
            1 => Level::MergeHarder,
            2 => Level::DropLargeRoomChat,
            3 => Level::SignalOnly,
            _ => return None,
        })
    }

    fn step_down(self) -> Level {
        match self {
            Level::Normal | Level::MergeHarder => Level::Normal,
            Level::DropLargeRoomChat => Level::MergeHarder,
            Level::SignalOnly => Level::DropLargeRoomChat,
        }
    }
}

/// How loaded a node is, sampled by the host (from
/// [`NodeStats`](crate::NodeStats) and its limiters).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Load {
    /// Frames waiting in connection lanes.
    pub queued_frames: u64,
    /// Sends refused by rate limiters since the previous sample.
    pub limiter_rejections: u64,
}

/// Thresholds for one level: the level applies when either is reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Thresholds {
    /// Queued frames at or above which the level applies.
    pub queued_frames: u64,
    /// Rejections per sample at or above which the level applies.
    pub limiter_rejections: u64,
}

/// When the [`Governor`] switches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GovernorConfig {
    /// Thresholds for MergeHarder, DropLargeRoomChat and SignalOnly, in that order.
    pub thresholds: [Thresholds; 3],
    /// How long load must stay below a level's thresholds before the
    /// governor steps down one level (hysteresis: no flapping).
    pub cooldown: Duration,
}

impl Default for GovernorConfig {
    fn default() -> Self {
        GovernorConfig {
            thresholds: [
                Thresholds { queued_frames: 2_000_000, limiter_rejections: 10_000 },
                Thresholds { queued_frames: 8_000_000, limiter_rejections: 50_000 },
                Thresholds { queued_frames: 20_000_000, limiter_rejections: 200_000 },
            ],
            cooldown: Duration::from_secs(30),
        }
    }
}

/// Turns load samples into level switches: up at once when a threshold is
/// reached, down one level at a time after a calm cooldown. An operator can
/// pin a level by hand, which overrides the samples until unpinned.
#[derive(Debug, Clone)]
pub struct Governor {
    config: GovernorConfig,
    level: Level,
    pinned: Option<Level>,
    calm_since: Option<Timestamp>,
}

impl Governor {
    /// A governor at [`Level::Normal`].
    pub fn new(config: GovernorConfig) -> Self {
        Governor { config, level: Level::Normal, pinned: None, calm_since: None }
    }

    /// The level in force.
    pub fn level(&self) -> Level {
        self.pinned.unwrap_or(self.level)
    }

    /// Pins `level` by hand (or unpins with `None`); returns the new level
    /// in force if it changed.
    pub fn pin(&mut self, level: Option<Level>) -> Option<Level> {
        let before = self.level();
        self.pinned = level;
        if let Some(l) = level {
            self.level = l;
        }
        self.calm_since = None;
        (self.level() != before).then_some(self.level())
    }

    fn level_for(&self, load: Load) -> Level {
        let mut level = Level::Normal;
        for (t, l) in self.config.thresholds.iter().zip(&Level::ALL[1..]) {
            if load.queued_frames >= t.queued_frames || load.limiter_rejections >= t.limiter_rejections {
                level = *l;
            }
        }
        level
    }

    /// Takes a sample; returns the new level if it switched.
    #[must_use]
    pub fn observe(&mut self, now: Timestamp, load: Load) -> Option<Level> {
        if self.pinned.is_some() {
            return None;
        }
        let wanted = self.level_for(load);
        if wanted > self.level {
            self.level = wanted;
            self.calm_since = None;
            return Some(wanted);
        }
        if wanted == self.level {
            self.calm_since = None;
            return None;
        }
        let since = *self.calm_since.get_or_insert(now);
        if now.saturating_duration_since(since) >= self.config.cooldown {
            self.level = self.level.step_down();
            // Still calm: the next step down needs another full cooldown.
            self.calm_since = Some(now);
            return Some(self.level);
        }
        None
    }
}
