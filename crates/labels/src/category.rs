use std::fmt;

use crate::error::{ErrorKind, ParseError};

/// Largest number of categories a [`CategorySet`] can hold (MCS policies define 1024).
pub const MAX_CATEGORIES: u16 = 1024;
const WORDS: usize = MAX_CATEGORIES as usize / 64;

/// A set of MCS/MLS categories as a fixed-size bitset.
///
/// Fixed size keeps the type `Copy`, hashing and comparison branch-free, and makes
/// `{c264, c41}` and `{c41, c264}` the same value by construction (the reference once
/// treated them as different strings: CVE-2021-3631).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct CategorySet {
    bits: [u64; WORDS],
}

impl CategorySet {
    /// The empty set.
    pub const EMPTY: CategorySet = CategorySet { bits: [0; WORDS] };

    /// The empty set.
    pub fn new() -> Self {
        Self::EMPTY
    }

    /// A set holding the categories `lo..=hi` (clamped to [`MAX_CATEGORIES`]).
    pub fn range(lo: u16, hi: u16) -> Self {
        let mut s = Self::EMPTY;
        let hi = hi.min(MAX_CATEGORIES - 1);
        for c in lo..=hi {
            s.insert(c);
        }
        s
    }

    /// Adds a category; returns false if it is beyond [`MAX_CATEGORIES`].
    pub fn insert(&mut self, c: u16) -> bool {
        if c >= MAX_CATEGORIES {
            return false;
        }
        self.bits[usize::from(c / 64)] |= 1u64 << (c % 64);
        true
    }

    /// Removes a category.
    pub fn remove(&mut self, c: u16) {
        if c < MAX_CATEGORIES {
            self.bits[usize::from(c / 64)] &= !(1u64 << (c % 64));
        }
    }

    /// Whether the category is in the set.
    pub fn contains(&self, c: u16) -> bool {
        c < MAX_CATEGORIES && self.bits[usize::from(c / 64)] & (1u64 << (c % 64)) != 0
    }

    /// Number of categories in the set.
    pub fn len(&self) -> usize {
        self.bits.iter().map(|w| w.count_ones() as usize).sum()
    }

    /// Whether the set is empty.
    pub fn is_empty(&self) -> bool {
        self.bits.iter().all(|w| *w == 0)
    }

    /// Whether every category of `other` is in `self`.
    pub fn is_superset(&self, other: &CategorySet) -> bool {
        self.bits
            .iter()
            .zip(other.bits.iter())
            .all(|(a, b)| a & b == *b)
    }

    /// The union of two sets.
    pub fn union(&self, other: &CategorySet) -> CategorySet {
        let mut out = *self;
        for (a, b) in out.bits.iter_mut().zip(other.bits.iter()) {
            *a |= b;
        }
        out
    }

    /// The intersection of two sets.
    pub fn intersection(&self, other: &CategorySet) -> CategorySet {
        let mut out = *self;
        for (a, b) in out.bits.iter_mut().zip(other.bits.iter()) {
            *a &= b;
        }
        out
    }

    /// The categories in ascending order.
    pub fn iter(&self) -> impl Iterator<Item = u16> + '_ {
        self.bits.iter().enumerate().flat_map(|(wi, &w)| {
            let mut word = w;
            std::iter::from_fn(move || {
                if word == 0 {
                    return None;
                }
                let bit = word.trailing_zeros();
                word &= word - 1;
                // wi < 16 and bit < 64, so this fits in u16.
                Some((wi as u16) * 64 + bit as u16)
            })
        })
    }

    /// The highest category in the set.
    pub fn max(&self) -> Option<u16> {
        self.bits
            .iter()
            .enumerate()
            .rev()
            .find(|(_, w)| **w != 0)
            .map(|(wi, w)| (wi as u16) * 64 + 63 - w.leading_zeros() as u16)
    }

    /// Parses a category list such as `c0.c1023` or `c1,c3.c7,c9`, the kernel's way:
    /// any order, duplicates merged, `cA.cB` requires `A < B`.
    pub fn parse(s: &str, max_categories: u16) -> Result<CategorySet, ParseError> {
        let mut set = CategorySet::EMPTY;
        let mut pos = 0;
        for item in s.split(',') {
            if item.is_empty() {
                return Err(ParseError::new(pos, ",", ErrorKind::EmptyCategory));
            }
            match item.split_once('.') {
                Some((lo, hi)) => {
                    let a = parse_category(lo, pos, max_categories)?;
                    let hi_pos = pos + lo.len() + 1;
                    let b = parse_category(hi, hi_pos, max_categories)?;
                    if a >= b {
                        return Err(ParseError::new(pos, item, ErrorKind::ReversedCategoryRange));
                    }
                    for c in a..=b {
                        set.insert(c);
                    }
                }
                None => {
                    let c = parse_category(item, pos, max_categories)?;
                    set.insert(c);
                }
            }
            pos += item.len() + 1;
        }
        Ok(set)
    }
}

/// Parses `cN` with a decimal N below `max` (at most [`MAX_CATEGORIES`]).
fn parse_category(tok: &str, pos: usize, max: u16) -> Result<u16, ParseError> {
    let max = max.min(MAX_CATEGORIES);
    let digits = tok
        .strip_prefix('c')
        .ok_or_else(|| ParseError::new(pos, tok, ErrorKind::BadCategory))?;
    let n =
        parse_decimal(digits).ok_or_else(|| ParseError::new(pos, tok, ErrorKind::BadCategory))?;
    if n >= u32::from(max) {
        return Err(ParseError::new(
            pos,
            tok,
            ErrorKind::CategoryOutOfRange { max },
        ));
    }
    // n < max <= 1024
    Ok(n as u16)
}

/// A plain decimal number as the policy writes category and sensitivity names
/// (no sign, no leading zeros except `0` itself, bounded length).
pub(crate) fn parse_decimal(digits: &str) -> Option<u32> {
    if digits.is_empty() || digits.len() > 5 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    if digits.len() > 1 && digits.starts_with('0') {
        return None;
    }
    digits.parse().ok()
}

impl fmt::Display for CategorySet {
    /// Kernel canonical form: ascending, a run of three or more as `cA.cB`, a run of two
    /// as `cA,cB`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut first = true;
        let mut run: Option<(u16, u16)> = None;
        let mut emit = |f: &mut fmt::Formatter<'_>, (a, b): (u16, u16)| -> fmt::Result {
            let sep = if first { "" } else { "," };
            first = false;
            match b - a {
                0 => write!(f, "{sep}c{a}"),
                1 => write!(f, "{sep}c{a},c{b}"),
                _ => write!(f, "{sep}c{a}.c{b}"),
            }
        };
        for c in self.iter() {
            run = match run {
                Some((a, b)) if b + 1 == c => Some((a, c)),
                Some(r) => {
                    emit(f, r)?;
                    Some((c, c))
                }
                None => Some((c, c)),
            };
        }
        if let Some(r) = run {
            emit(f, r)?;
        }
        Ok(())
    }
}

impl fmt::Debug for CategorySet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CategorySet({self})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn canon(s: &str) -> String {
        CategorySet::parse(s, MAX_CATEGORIES)
            .map(|c| c.to_string())
            .unwrap_or_else(|e| format!("ERR {e}"))
    }

    #[test]
    fn kernel_canonical_runs() {
        assert_eq!(canon("c1,c2"), "c1,c2");
        assert_eq!(canon("c1,c2,c3"), "c1.c3");
        assert_eq!(canon("c3,c1,c2,c2"), "c1.c3");
        assert_eq!(canon("c0.c1023"), "c0.c1023");
        assert_eq!(canon("c1,c3.c7,c9"), "c1,c3.c7,c9");
        assert_eq!(canon("c264,c41"), "c41,c264");
        assert_eq!(canon("c0.c1,c2"), "c0.c2");
        assert_eq!(canon("c5,c6,c8,c9,c10"), "c5,c6,c8.c10");
    }

    #[test]
    fn kernel_rejections() {
        assert!(canon("c2.c1").starts_with("ERR"));
        assert!(canon("c1.c1").starts_with("ERR"));
        assert!(canon("c1024").starts_with("ERR"));
        assert!(canon("c01").starts_with("ERR"));
        assert!(canon("c1,,c2").starts_with("ERR"));
        assert!(canon("c1,").starts_with("ERR"));
        assert!(canon("x1").starts_with("ERR"));
        assert!(canon("c-1").starts_with("ERR"));
    }

    #[test]
    fn error_positions_name_the_token() {
        let e = CategorySet::parse("c1,c3.c2000", 1024).unwrap_err();
        assert_eq!(e.pos, 6);
        assert_eq!(e.token, "c2000");
        let e = CategorySet::parse("c1,c9.c3", 1024).unwrap_err();
        assert_eq!((e.pos, e.token.as_str()), (3, "c9.c3"));
    }

    #[test]
    fn set_operations() {
        let a = CategorySet::parse("c1,c2", 1024).unwrap();
        let b = CategorySet::parse("c1", 1024).unwrap();
        assert!(a.is_superset(&b));
        assert!(!b.is_superset(&a));
        assert_eq!(a.len(), 2);
        assert_eq!(a.max(), Some(2));
        assert_eq!(CategorySet::range(0, 1023).len(), 1024);
        assert_eq!(CategorySet::range(0, 1023).max(), Some(1023));
        assert_eq!(a.iter().collect::<Vec<_>>(), vec![1, 2]);
    }
}
