use std::fmt;
use std::str::FromStr;

use crate::category::{CategorySet, MAX_CATEGORIES, parse_decimal};
use crate::error::{ErrorKind, ParseError};

/// Largest number of sensitivities (`s0`..`s15`) a level may use.
pub const MAX_SENSITIVITIES: u16 = 16;

/// What the loaded policy defines: how many sensitivities and categories exist.
///
/// The defaults are the MLS maximum (`s0..s15`, `c0..c1023`); an MCS policy such as
/// Debian's has one sensitivity, which callers that know the policy pass here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MlsLimits {
    /// Number of sensitivities (`s0` .. `s{n-1}`), at most [`MAX_SENSITIVITIES`].
    pub sensitivities: u16,
    /// Number of categories (`c0` .. `c{n-1}`), at most [`MAX_CATEGORIES`].
    pub categories: u16,
}

impl Default for MlsLimits {
    fn default() -> Self {
        MlsLimits {
            sensitivities: MAX_SENSITIVITIES,
            categories: MAX_CATEGORIES,
        }
    }
}

/// An MLS/MCS level: a sensitivity and a set of categories (`s0:c41,c264`).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Level {
    /// The sensitivity number (`s0` is 0).
    pub sensitivity: u16,
    /// The categories.
    pub categories: CategorySet,
}

/// How two levels (or ranges) relate under dominance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LevelOrdering {
    /// Same sensitivity and categories.
    Equal,
    /// The first strictly dominates the second.
    Dominates,
    /// The second strictly dominates the first.
    DominatedBy,
    /// Neither dominates the other.
    Incomparable,
}

impl Level {
    /// `s<sensitivity>` with no categories.
    pub fn new(sensitivity: u16) -> Self {
        Level {
            sensitivity,
            categories: CategorySet::EMPTY,
        }
    }

    /// `s0:cA,cB`: the level of a dynamically labeled guest.
    pub fn pair(sensitivity: u16, a: u16, b: u16) -> Self {
        let mut categories = CategorySet::EMPTY;
        categories.insert(a);
        categories.insert(b);
        Level {
            sensitivity,
            categories,
        }
    }

    /// `self dom other`: sensitivity at least as high and a superset of the categories.
    pub fn dominates(&self, other: &Level) -> bool {
        self.sensitivity >= other.sensitivity && self.categories.is_superset(&other.categories)
    }

    /// How `self` relates to `other`.
    pub fn compare(&self, other: &Level) -> LevelOrdering {
        match (self.dominates(other), other.dominates(self)) {
            (true, true) => LevelOrdering::Equal,
            (true, false) => LevelOrdering::Dominates,
            (false, true) => LevelOrdering::DominatedBy,
            (false, false) => LevelOrdering::Incomparable,
        }
    }

    /// Parses a level with the default (maximum) limits.
    pub fn parse(s: &str) -> Result<Level, ParseError> {
        Self::parse_with(s, MlsLimits::default())
    }

    /// Parses a level (`s0`, `s0:c1,c3.c7`) against the policy's limits.
    pub fn parse_with(s: &str, limits: MlsLimits) -> Result<Level, ParseError> {
        if s.is_empty() {
            return Err(ParseError::new(0, s, ErrorKind::Empty));
        }
        let (sens_tok, cats) = match s.split_once(':') {
            Some((a, b)) => (a, Some(b)),
            None => (s, None),
        };
        let digits = sens_tok
            .strip_prefix('s')
            .ok_or_else(|| ParseError::new(0, sens_tok, ErrorKind::BadSensitivity))?;
        let n = parse_decimal(digits)
            .ok_or_else(|| ParseError::new(0, sens_tok, ErrorKind::BadSensitivity))?;
        let max = limits.sensitivities.min(MAX_SENSITIVITIES);
        if n >= u32::from(max) {
            return Err(ParseError::new(
                0,
                sens_tok,
                ErrorKind::SensitivityOutOfRange { max },
            ));
        }
        let categories = match cats {
            Some(c) => CategorySet::parse(c, limits.categories)
                .map_err(|e| e.offset(sens_tok.len() + 1))?,
            None => CategorySet::EMPTY,
        };
        // n < max <= 16
        Ok(Level {
            sensitivity: n as u16,
            categories,
        })
    }
}

impl fmt::Display for Level {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "s{}", self.sensitivity)?;
        if !self.categories.is_empty() {
            write!(f, ":{}", self.categories)?;
        }
        Ok(())
    }
}

impl fmt::Debug for Level {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Level({self})")
    }
}

impl FromStr for Level {
    type Err = ParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Level::parse(s)
    }
}

/// An MLS range `low-high`; a single level is a range whose ends are equal.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct MlsRange {
    /// The low (current, effective) level.
    pub low: Level,
    /// The high (clearance) level; always dominates `low`.
    pub high: Level,
}

impl MlsRange {
    /// A range holding exactly one level.
    pub fn single(level: Level) -> Self {
        MlsRange {
            low: level,
            high: level,
        }
    }

    /// A range from `low` to `high`; errors unless `high` dominates `low`.
    pub fn new(low: Level, high: Level) -> Result<Self, ParseError> {
        if !high.dominates(&low) {
            return Err(ParseError::new(
                0,
                &format!("{low}-{high}"),
                ErrorKind::HighDoesNotDominateLow,
            ));
        }
        Ok(MlsRange { low, high })
    }

    /// Whether both ends are the same level.
    pub fn is_single(&self) -> bool {
        self.low == self.high
    }

    /// Kernel `mls_range_contains(self, other)`: `other` lies within `self`.
    pub fn contains(&self, other: &MlsRange) -> bool {
        other.low.dominates(&self.low) && self.high.dominates(&other.high)
    }

    /// How two ranges relate, with containment as the order: a range "dominates" another
    /// when it contains it (the relation the kernel uses for range transitions and
    /// `mls_range_contains`); constraints compare single ends with [`Level::compare`].
    pub fn compare(&self, other: &MlsRange) -> LevelOrdering {
        match (self.contains(other), other.contains(self)) {
            (true, true) => LevelOrdering::Equal,
            (true, false) => LevelOrdering::Dominates,
            (false, true) => LevelOrdering::DominatedBy,
            (false, false) => LevelOrdering::Incomparable,
        }
    }

    /// Parses a range with the default (maximum) limits.
    pub fn parse(s: &str) -> Result<MlsRange, ParseError> {
        Self::parse_with(s, MlsLimits::default())
    }

    /// Parses `low` or `low-high` against the policy's limits.
    pub fn parse_with(s: &str, limits: MlsLimits) -> Result<MlsRange, ParseError> {
        if s.is_empty() {
            return Err(ParseError::new(0, s, ErrorKind::Empty));
        }
        match s.split_once('-') {
            None => Ok(MlsRange::single(Level::parse_with(s, limits)?)),
            Some((lo, hi)) => {
                let low = Level::parse_with(lo, limits)?;
                let high = Level::parse_with(hi, limits).map_err(|e| e.offset(lo.len() + 1))?;
                if !high.dominates(&low) {
                    return Err(ParseError::new(
                        lo.len() + 1,
                        hi,
                        ErrorKind::HighDoesNotDominateLow,
                    ));
                }
                Ok(MlsRange { low, high })
            }
        }
    }
}

impl fmt::Display for MlsRange {
    /// As the kernel prints it: the high level only when it differs from the low.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.low)?;
        if self.high != self.low {
            write!(f, "-{}", self.high)?;
        }
        Ok(())
    }
}

impl fmt::Debug for MlsRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "MlsRange({self})")
    }
}

impl FromStr for MlsRange {
    type Err = ParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        MlsRange::parse(s)
    }
}

macro_rules! serde_via_string {
    ($t:ty) => {
        impl serde::Serialize for $t {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_str(self)
            }
        }
        impl<'de> serde::Deserialize<'de> for $t {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
                s.parse().map_err(serde::de::Error::custom)
            }
        }
    };
}
pub(crate) use serde_via_string;
serde_via_string!(Level);
serde_via_string!(MlsRange);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels() {
        assert_eq!(
            Level::parse("s0:c264,c41").unwrap().to_string(),
            "s0:c41,c264"
        );
        assert_eq!(Level::parse("s15").unwrap().to_string(), "s15");
        assert!(Level::parse("s16").is_err());
        assert!(Level::parse("s0:").is_err());
        assert!(
            Level::parse_with(
                "s1",
                MlsLimits {
                    sensitivities: 1,
                    categories: 1024
                }
            )
            .is_err()
        );
    }

    #[test]
    fn ranges_like_the_kernel() {
        assert_eq!(MlsRange::parse("s0-s0").unwrap().to_string(), "s0");
        assert_eq!(
            MlsRange::parse("s0-s0:c0.c1023").unwrap().to_string(),
            "s0-s0:c0.c1023"
        );
        assert_eq!(
            MlsRange::parse("s0:c1-s0:c1,c2").unwrap().to_string(),
            "s0:c1-s0:c1,c2"
        );
        let e = MlsRange::parse("s0:c1,c2-s0:c1").unwrap_err();
        assert_eq!(e.kind, ErrorKind::HighDoesNotDominateLow);
        assert_eq!((e.pos, e.token.as_str()), (9, "s0:c1"));
        assert!(MlsRange::parse("s1-s0").is_err());
        let e = MlsRange::parse("s0-s0:c2.c1").unwrap_err();
        assert_eq!((e.pos, e.token.as_str()), (6, "c2.c1"));
    }

    #[test]
    fn dominance() {
        let l = |s: &str| Level::parse(s).unwrap();
        assert!(l("s0:c1,c2").dominates(&l("s0:c1")));
        assert!(l("s0:c1,c2").dominates(&l("s0")));
        assert!(!l("s0:c1,c2").dominates(&l("s0:c1,c3")));
        assert_eq!(
            l("s0:c1,c2").compare(&l("s0:c3,c4")),
            LevelOrdering::Incomparable
        );
        assert_eq!(l("s0:c2,c1").compare(&l("s0:c1,c2")), LevelOrdering::Equal);
        assert_eq!(l("s0").compare(&l("s0:c1")), LevelOrdering::DominatedBy);
        assert_eq!(l("s1").compare(&l("s0:c1")), LevelOrdering::Incomparable);
        assert_eq!(l("s1:c1").compare(&l("s0:c1")), LevelOrdering::Dominates);
        let r = |s: &str| MlsRange::parse(s).unwrap();
        assert!(r("s0-s0:c0.c1023").contains(&r("s0:c1,c2")));
        assert!(!r("s0:c1,c2").contains(&r("s0-s0:c0.c1023")));
    }
}
