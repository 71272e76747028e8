//! The kind of client a member is connected from.

use std::fmt;
use std::str::FromStr;

use crate::flags::{Flag, FlagSet};

/// The kind of client a connection comes from. One user may be present on
/// several terminals at once (a PC client and the phone app).
///
/// Text forms: `web`, `h5`, `ios`, `android`, `pc`, `mac`, `mini-program`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(rename_all = "kebab-case"))]
#[non_exhaustive]
pub enum Terminal {
    /// A desktop browser.
    Web,
    /// A mobile browser page (H5).
    H5,
    /// The iOS app.
    Ios,
    /// The Android app.
    Android,
    /// The Windows PC client.
    Pc,
    /// The Mac client.
    Mac,
    /// A mini-program or chat-app plug-in.
    MiniProgram,
}

impl Terminal {
    /// Every terminal, in bit order.
    pub const ALL: [Terminal; 7] = [
        Terminal::Web,
        Terminal::H5,
        Terminal::Ios,
        Terminal::Android,
        Terminal::Pc,
        Terminal::Mac,
        Terminal::MiniProgram,
    ];

    /// The text form.
    pub const fn as_str(self) -> &'static str {
        match self {
            Terminal::Web => "web",
            Terminal::H5 => "h5",
            Terminal::Ios => "ios",
            Terminal::Android => "android",
            Terminal::Pc => "pc",
            Terminal::Mac => "mac",
            Terminal::MiniProgram => "mini-program",
        }
    }

    /// Whether this is a native mobile app (iOS or Android).
    pub const fn is_app(self) -> bool {
        matches!(self, Terminal::Ios | Terminal::Android)
    }
}

impl Flag for Terminal {
    const VALID_BITS: u64 = (1 << Terminal::ALL.len()) - 1;

    fn bit(self) -> u32 {
        self as u32
    }

    fn from_bit(bit: u32) -> Option<Self> {
        Terminal::ALL.get(bit as usize).copied()
    }
}

/// A set of terminals, for filters ("students on the app").
pub type TerminalSet = FlagSet<Terminal>;

impl TerminalSet {
    /// The iOS and Android apps.
    pub fn apps() -> Self {
        [Terminal::Ios, Terminal::Android].into_iter().collect()
    }
}

/// A text that names no terminal.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown terminal {0:?} (expected web, h5, ios, android, pc, mac or mini-program)")]
pub struct ParseTerminalError(pub String);

impl fmt::Display for Terminal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Terminal {
    type Err = ParseTerminalError;
    fn from_str(s: &str) -> Result<Self, ParseTerminalError> {
        Terminal::ALL
            .into_iter()
            .find(|t| t.as_str() == s)
            .ok_or_else(|| ParseTerminalError(s.chars().take(64).collect()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sets_and_text_forms() {
        let apps = TerminalSet::apps();
        assert!(apps.contains(Terminal::Ios) && !apps.contains(Terminal::Web));
        assert_eq!(apps.to_string(), "ios,android");
        assert_eq!(TerminalSet::all().len(), Terminal::ALL.len());
        assert_eq!(TerminalSet::from_bits(1 << 7), None);
        assert!("iOS".parse::<Terminal>().is_err());
        assert!("web,tv".parse::<TerminalSet>().is_err());
    }
}
