//! A compact set of small enums (roles, terminals), one bit per value, used
//! for pre-filters ("teachers and assistants", "students on the app").

use std::fmt;
use std::marker::PhantomData;
use std::str::FromStr;

/// A value that fits in a [`FlagSet`]: it maps to one bit index below 64.
pub trait Flag: Copy + Sized {
    /// The bit of this value, below 64 and distinct for distinct values.
    fn bit(self) -> u32;
    /// The value whose bit is `bit`, if any.
    fn from_bit(bit: u32) -> Option<Self>;
    /// Every bit that some value maps to.
    const VALID_BITS: u64;
}

/// A set of [`Flag`] values in one machine word: membership, union and
/// intersection are single instructions.
///
/// The text form is the members' text forms joined by `,` in bit order, or
/// `none` for the empty set.
pub struct FlagSet<T> {
    bits: u64,
    _of: PhantomData<fn() -> T>,
}

impl<T: Flag> FlagSet<T> {
    /// The empty set.
    pub const EMPTY: Self = FlagSet { bits: 0, _of: PhantomData };

    /// The set of every value.
    pub const fn all() -> Self {
        FlagSet { bits: T::VALID_BITS, _of: PhantomData }
    }

    /// The set holding exactly `value`.
    pub fn only(value: T) -> Self {
        FlagSet { bits: 1 << value.bit(), _of: PhantomData }
    }

    /// The set with these raw bits, or `None` if a bit maps to no value.
    pub const fn from_bits(bits: u64) -> Option<Self> {
        if bits & !T::VALID_BITS == 0 { Some(FlagSet { bits, _of: PhantomData }) } else { None }
    }

    /// The raw bits.
    pub const fn bits(self) -> u64 {
        self.bits
    }

    /// Adds `value`; true if it was not yet present.
    pub fn insert(&mut self, value: T) -> bool {
        let bit = 1 << value.bit();
        let added = self.bits & bit == 0;
        self.bits |= bit;
        added
    }

    /// Removes `value`; true if it was present.
    pub fn remove(&mut self, value: T) -> bool {
        let bit = 1 << value.bit();
        let removed = self.bits & bit != 0;
        self.bits &= !bit;
        removed
    }

    /// Whether `value` is in the set.
    pub fn contains(self, value: T) -> bool {
        self.bits & (1 << value.bit()) != 0
    }

    /// Whether the sets share a value.
    pub const fn intersects(self, other: Self) -> bool {
        self.bits & other.bits != 0
    }

    /// Values in both sets.
    #[must_use]
    pub const fn intersection(self, other: Self) -> Self {
        FlagSet { bits: self.bits & other.bits, _of: PhantomData }
    }

    /// Values in either set.
    #[must_use]
    pub const fn union(self, other: Self) -> Self {
        FlagSet { bits: self.bits | other.bits, _of: PhantomData }
    }

    /// Whether the set is empty.
    pub const fn is_empty(self) -> bool {
        self.bits == 0
    }

    /// How many values the set holds.
    pub const fn len(self) -> usize {
        self.bits.count_ones() as usize
    }

    /// The values, in bit order.
    pub fn iter(self) -> impl Iterator<Item = T> {
        let mut rest = self.bits;
        std::iter::from_fn(move || {
            while rest != 0 {
                let bit = rest.trailing_zeros();
                rest &= rest - 1;
                if let Some(v) = T::from_bit(bit) {
                    return Some(v);
                }
            }
            None
        })
    }
}

// Manual impls: derives would demand `T: Clone`/`T: PartialEq`… of the marker.
impl<T> Clone for FlagSet<T> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<T> Copy for FlagSet<T> {}
impl<T> PartialEq for FlagSet<T> {
    fn eq(&self, other: &Self) -> bool {
        self.bits == other.bits
    }
}
impl<T> Eq for FlagSet<T> {}
impl<T> std::hash::Hash for FlagSet<T> {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.bits.hash(state);
    }
}
impl<T: Flag> Default for FlagSet<T> {
    fn default() -> Self {
        Self::EMPTY
    }
}

impl<T: Flag> FromIterator<T> for FlagSet<T> {
    fn from_iter<I: IntoIterator<Item = T>>(iter: I) -> Self {
        let mut set = Self::EMPTY;
        for v in iter {
            set.insert(v);
        }
        set
    }
}

impl<T: Flag> std::ops::BitOr for FlagSet<T> {
    type Output = Self;
    fn bitor(self, rhs: Self) -> Self {
        self.union(rhs)
    }
}

impl<T: Flag> std::ops::BitAnd for FlagSet<T> {
    type Output = Self;
    fn bitand(self, rhs: Self) -> Self {
        self.intersection(rhs)
    }
}

impl<T: Flag + fmt::Debug> fmt::Debug for FlagSet<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set().entries(self.iter()).finish()
    }
}

impl<T: Flag + fmt::Display> fmt::Display for FlagSet<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_empty() {
            return f.write_str("none");
        }
        for (i, v) in self.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            fmt::Display::fmt(&v, f)?;
        }
        Ok(())
    }
}

impl<T: Flag + FromStr> FromStr for FlagSet<T> {
    type Err = T::Err;
    fn from_str(s: &str) -> Result<Self, T::Err> {
        if s == "none" {
            return Ok(Self::EMPTY);
        }
        s.split(',').map(str::parse).collect()
    }
}

#[cfg(feature = "serde")]
impl<T: Flag> serde::Serialize for FlagSet<T> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(self.bits)
    }
}

#[cfg(feature = "serde")]
impl<'de, T: Flag> serde::Deserialize<'de> for FlagSet<T> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let bits = <u64 as serde::Deserialize>::deserialize(d)?;
        Self::from_bits(bits)
            .ok_or_else(|| serde::de::Error::custom(format_args!("set bits {bits:#x} name unknown values")))
    }
}
