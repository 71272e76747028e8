//! What a member may do in a room.

use std::fmt;
use std::str::FromStr;

use crate::flags::{Flag, FlagSet};

/// A member's role in a room.
///
/// Text forms: `teacher`, `assistant`, `student`, `observer`, and
/// `custom:<n>` for a host-defined role `n` in `0..=59`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[non_exhaustive]
pub enum Role {
    /// Runs the class.
    Teacher,
    /// Helps the teacher: moderates chat, answers hands.
    Assistant,
    /// A learner.
    Student,
    /// A guest or observer: watches, does not take part.
    Observer,
    /// A role the host defines (a guest speaker, a parent, a grader).
    Custom(CustomRole),
}

/// A host-defined role number, `0..=CustomRole::MAX`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize), serde(try_from = "u8", into = "u8"))]
pub struct CustomRole(u8);

impl CustomRole {
    /// The largest custom role number: every role must fit a 64-bit [`RoleSet`].
    pub const MAX: u8 = 59;

    /// Custom role `n`, or an error if `n > CustomRole::MAX`.
    pub const fn new(n: u8) -> Result<Self, ParseRoleError> {
        if n <= Self::MAX { Ok(CustomRole(n)) } else { Err(ParseRoleError::CustomOutOfRange { n }) }
    }

    /// The role number.
    pub const fn get(self) -> u8 {
        self.0
    }
}

impl TryFrom<u8> for CustomRole {
    type Error = ParseRoleError;
    fn try_from(n: u8) -> Result<Self, ParseRoleError> {
        CustomRole::new(n)
    }
}

impl From<CustomRole> for u8 {
    fn from(r: CustomRole) -> u8 {
        r.0
    }
}

/// Why a role's text form did not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ParseRoleError {
    /// Not one of the role names.
    #[error("unknown role {0:?} (expected teacher, assistant, student, observer or custom:<0..=59>)")]
    Unknown(String),
    /// A custom role number above [`CustomRole::MAX`].
    #[error("custom role {n} is out of range (0..=59)")]
    CustomOutOfRange {
        /// The number given.
        n: u8,
    },
}

impl Role {
    /// Listing rank: lower ranks are listed first. Teachers, then assistants,
    /// then host-defined roles, then students, then observers.
    pub const fn rank(self) -> u8 {
        match self {
            Role::Teacher => 0,
            Role::Assistant => 1,
            Role::Custom(_) => 2,
            Role::Student => 3,
            Role::Observer => 4,
        }
    }

    /// Whether the role runs the class (teacher or assistant).
    pub const fn is_staff(self) -> bool {
        matches!(self, Role::Teacher | Role::Assistant)
    }
}

const CUSTOM_FIRST_BIT: u32 = 4;

impl Flag for Role {
    const VALID_BITS: u64 = u64::MAX;

    fn bit(self) -> u32 {
        match self {
            Role::Teacher => 0,
            Role::Assistant => 1,
            Role::Student => 2,
            Role::Observer => 3,
            Role::Custom(c) => CUSTOM_FIRST_BIT + u32::from(c.0),
        }
    }

    fn from_bit(bit: u32) -> Option<Self> {
        Some(match bit {
            0 => Role::Teacher,
            1 => Role::Assistant,
            2 => Role::Student,
            3 => Role::Observer,
            4..=63 => Role::Custom(CustomRole((bit - CUSTOM_FIRST_BIT) as u8)),
            _ => return None,
        })
    }
}

/// A set of roles, for filters ("teachers and assistants").
pub type RoleSet = FlagSet<Role>;

impl RoleSet {
    /// Teachers and assistants.
    pub fn staff() -> Self {
        [Role::Teacher, Role::Assistant].into_iter().collect()
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Role::Teacher => f.write_str("teacher"),
            Role::Assistant => f.write_str("assistant"),
            Role::Student => f.write_str("student"),
            Role::Observer => f.write_str("observer"),
            Role::Custom(c) => write!(f, "custom:{}", c.0),
        }
    }
}

impl FromStr for Role {
    type Err = ParseRoleError;
    fn from_str(s: &str) -> Result<Self, ParseRoleError> {
        Ok(match s {
            "teacher" => Role::Teacher,
            "assistant" => Role::Assistant,
            "student" => Role::Student,
            "observer" => Role::Observer,
            _ => {
                let n = s
                    .strip_prefix("custom:")
                    .filter(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
                    .filter(|n| n.len() == 1 || !n.starts_with('0'))
                    .ok_or_else(|| ParseRoleError::Unknown(s.chars().take(64).collect()))?;
                let n: u8 = n.parse().map_err(|_| ParseRoleError::CustomOutOfRange { n: u8::MAX })?;
                Role::Custom(CustomRole::new(n)?)
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_rejects_what_is_not_a_role() {
        assert!(matches!("Teacher".parse::<Role>(), Err(ParseRoleError::Unknown(_))));
        assert!(matches!("custom:".parse::<Role>(), Err(ParseRoleError::Unknown(_))));
        assert!(matches!("custom:07".parse::<Role>(), Err(ParseRoleError::Unknown(_))));
        assert_eq!("custom:60".parse::<Role>(), Err(ParseRoleError::CustomOutOfRange { n: 60 }));
        assert_eq!("custom:999".parse::<Role>(), Err(ParseRoleError::CustomOutOfRange { n: 255 }));
        assert_eq!("custom:59".parse::<Role>(), Ok(Role::Custom(CustomRole(59))));
        assert_eq!(CustomRole::new(60), Err(ParseRoleError::CustomOutOfRange { n: 60 }));
    }

    #[test]
    fn role_sets_filter() {
        let staff = RoleSet::staff();
        assert!(staff.contains(Role::Teacher));
        assert!(!staff.contains(Role::Student));
        assert_eq!(staff.to_string(), "teacher,assistant");
        assert_eq!("teacher,assistant".parse::<RoleSet>(), Ok(staff));
        assert_eq!("none".parse::<RoleSet>(), Ok(RoleSet::EMPTY));
        assert_eq!(RoleSet::EMPTY.to_string(), "none");
        let all = RoleSet::all();
        assert_eq!(all.len(), 64);
        assert!(all.contains(Role::Custom(CustomRole(59))));
    }

    #[test]
    fn staff_is_listed_first() {
        let mut roles = [Role::Observer, Role::Student, Role::Custom(CustomRole(3)), Role::Assistant, Role::Teacher];
        roles.sort_by_key(|r| r.rank());
        assert_eq!(roles[0], Role::Teacher);
        assert_eq!(roles[1], Role::Assistant);
        assert_eq!(roles[4], Role::Observer);
    }
}
