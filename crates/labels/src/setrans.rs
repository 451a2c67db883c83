//! mcstrans-style translation of levels to and from human-readable names.
//!
//! Reads the simple `setrans.conf` syntax (`s0:c0=CompanyConfidential`,
//! `s0-s0:c0.c1023=SystemLow-SystemHigh`, `#` comments). mcstrans' advanced
//! constructs (`Base=`, `Domain=`, `Include=`, `ModifierGroup`...) are reported as
//! unsupported lines rather than misread. Pure: the caller reads the file.

use std::collections::BTreeMap;

use crate::level::{Level, MlsLimits, MlsRange};

/// A problem in a setrans.conf file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SetransError {
    /// A line that is not `LEVEL=NAME`.
    #[error("setrans line {line}: expected LEVEL=NAME, got `{text}`")]
    Syntax {
        /// 1-based line number.
        line: usize,
        /// The line.
        text: String,
    },
    /// A line whose level does not parse.
    #[error("setrans line {line}: bad level `{level}`: {source}")]
    BadLevel {
        /// 1-based line number.
        line: usize,
        /// The level text.
        level: String,
        /// The parse error.
        source: crate::ParseError,
    },
    /// An mcstrans construct this translator does not implement.
    #[error("setrans line {line}: unsupported mcstrans construct `{text}`")]
    Unsupported {
        /// 1-based line number.
        line: usize,
        /// The line.
        text: String,
    },
    /// Two different levels given the same name, or one level two names.
    #[error("setrans line {line}: `{text}` conflicts with line {previous}")]
    Duplicate {
        /// 1-based line number.
        line: usize,
        /// The line.
        text: String,
        /// The earlier line.
        previous: usize,
    },
}

/// One translation entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The range (a single level when low == high) as the kernel would print it.
    pub range: MlsRange,
    /// The human-readable name.
    pub name: String,
    /// 1-based line number in the file.
    pub line: usize,
}

/// A parsed translation table.
#[derive(Debug, Clone, Default)]
pub struct Translations {
    entries: Vec<Entry>,
    by_range: BTreeMap<String, usize>,
    by_name: BTreeMap<String, usize>,
}

impl Translations {
    /// Parses the text of a setrans.conf file.
    pub fn parse(text: &str, limits: MlsLimits) -> Result<Translations, SetransError> {
        let mut t = Translations::default();
        for (i, raw) in text.lines().enumerate() {
            let line = i + 1;
            let content = raw.split('#').next().unwrap_or("").trim();
            if content.is_empty() {
                continue;
            }
            let Some((lhs, rhs)) = content.split_once('=') else {
                return Err(SetransError::Syntax {
                    line,
                    text: raw.to_owned(),
                });
            };
            let (lhs, rhs) = (lhs.trim(), rhs.trim());
            if lhs.is_empty() || rhs.is_empty() {
                return Err(SetransError::Syntax {
                    line,
                    text: raw.to_owned(),
                });
            }
            if !lhs.starts_with('s') || lhs.contains(char::is_whitespace) {
                return Err(SetransError::Unsupported {
                    line,
                    text: raw.to_owned(),
                });
            }
            let range =
                MlsRange::parse_with(lhs, limits).map_err(|source| SetransError::BadLevel {
                    line,
                    level: lhs.to_owned(),
                    source,
                })?;
            let key = range.to_string();
            if let Some(&prev) = t.by_range.get(&key) {
                return Err(SetransError::Duplicate {
                    line,
                    text: raw.to_owned(),
                    previous: t.entries[prev].line,
                });
            }
            if let Some(&prev) = t.by_name.get(rhs) {
                return Err(SetransError::Duplicate {
                    line,
                    text: raw.to_owned(),
                    previous: t.entries[prev].line,
                });
            }
            let idx = t.entries.len();
            t.by_range.insert(key, idx);
            t.by_name.insert(rhs.to_owned(), idx);
            t.entries.push(Entry {
                range,
                name: rhs.to_owned(),
                line,
            });
        }
        Ok(t)
    }

    /// All entries in file order.
    pub fn entries(&self) -> &[Entry] {
        &self.entries
    }

    /// Translates a raw range to its name: an exact entry, else each end translated
    /// separately and joined with `-` (what mcstrans does), else the raw canonical text.
    pub fn to_name(&self, range: &MlsRange) -> String {
        if let Some(&i) = self.by_range.get(&range.to_string()) {
            return self.entries[i].name.clone();
        }
        if range.is_single() {
            return range.to_string();
        }
        let end = |l: &Level| {
            self.by_range
                .get(&l.to_string())
                .map(|&i| self.entries[i].name.clone())
                .unwrap_or_else(|| l.to_string())
        };
        format!("{}-{}", end(&range.low), end(&range.high))
    }

    /// Translates a name (or `NAME-NAME`, or raw level text) back to a range.
    pub fn range_of_name(&self, name: &str, limits: MlsLimits) -> Option<MlsRange> {
        let name = name.trim();
        if let Some(&i) = self.by_name.get(name) {
            return Some(self.entries[i].range);
        }
        if let Ok(r) = MlsRange::parse_with(name, limits) {
            return Some(r);
        }
        // NAME-NAME: names may themselves contain '-', so try every split point.
        for (i, _) in name.match_indices('-') {
            let (a, b) = (&name[..i], &name[i + 1..]);
            let lo = self.single_level_of_name(a, limits);
            let hi = self.single_level_of_name(b, limits);
            if let (Some(lo), Some(hi)) = (lo, hi)
                && let Ok(r) = MlsRange::new(lo, hi)
            {
                return Some(r);
            }
        }
        None
    }

    fn single_level_of_name(&self, name: &str, limits: MlsLimits) -> Option<Level> {
        match self.by_name.get(name) {
            Some(&i) if self.entries[i].range.is_single() => Some(self.entries[i].range.low),
            Some(_) => None,
            None => Level::parse_with(name, limits).ok(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONF: &str = "# comment\ns0=SystemLow\ns0-s0:c0.c1023=SystemLow-SystemHigh\ns0:c0.c1023=SystemHigh\ns0:c0=CompanyConfidential  # trailing\n\ns0:c1,c2=Team-Alpha\n";

    #[test]
    fn translate_both_ways() {
        let t = Translations::parse(CONF, MlsLimits::default()).unwrap();
        let r = |s: &str| MlsRange::parse(s).unwrap();
        assert_eq!(t.to_name(&r("s0:c0")), "CompanyConfidential");
        assert_eq!(t.to_name(&r("s0-s0:c0.c1023")), "SystemLow-SystemHigh");
        assert_eq!(t.to_name(&r("s0-s0:c0")), "SystemLow-CompanyConfidential");
        assert_eq!(t.to_name(&r("s0:c5")), "s0:c5");
        assert_eq!(
            t.range_of_name("CompanyConfidential", MlsLimits::default()),
            Some(r("s0:c0"))
        );
        assert_eq!(
            t.range_of_name("SystemLow-CompanyConfidential", MlsLimits::default()),
            Some(r("s0-s0:c0"))
        );
        assert_eq!(
            t.range_of_name("Team-Alpha", MlsLimits::default()),
            Some(r("s0:c1,c2"))
        );
        assert_eq!(t.range_of_name("Nope", MlsLimits::default()), None);
        assert_eq!(t.entries().len(), 5);
    }

    #[test]
    fn errors_name_the_line() {
        let e = Translations::parse("s0=A\nbogus\n", MlsLimits::default()).unwrap_err();
        assert!(e.to_string().contains("line 2"), "{e}");
        let e = Translations::parse("s0:c9.c1=X\n", MlsLimits::default()).unwrap_err();
        assert!(matches!(e, SetransError::BadLevel { line: 1, .. }), "{e}");
        let e = Translations::parse("Base=Sensitivity\n", MlsLimits::default()).unwrap_err();
        assert!(matches!(e, SetransError::Unsupported { .. }), "{e}");
        let e = Translations::parse("s0=A\ns0:c1=A\n", MlsLimits::default()).unwrap_err();
        assert!(
            matches!(e, SetransError::Duplicate { previous: 1, .. }),
            "{e}"
        );
    }
}
