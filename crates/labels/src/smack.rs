//! SMACK labels: their syntax as the kernel accepts it (`security/smack/smack_access.c`,
//! `smk_parse_smack`), and the label svirt derives for a guest from its MCS level.
//!
//! A guest's SMACK label is its level in words: `svirt-` and the level's text with the
//! sensitivity `s0:` left out and each `,` written `-` (`s0:c41,c264` → `svirt-c41-c264`,
//! `s0:c0.c1023` → `svirt-c0.c1023`, `s2:c1` → `svirt-s2:c1`, a range `low_high`). The map
//! is one-to-one, so levels that never collide (the allocator's promise) give labels that
//! never collide, and the label names the level a reader of an audit line knows from
//! SELinux.

use std::fmt;

use crate::MlsRange;

/// The longest label the kernel takes (`SMK_LONGLABEL` less the NUL).
pub const SMACK_MAX_LABEL: usize = 255;

/// The prefix of every label svirt gives a guest.
pub const GUEST_PREFIX: &str = "svirt-";

/// Why a text is not a SMACK label.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SmackLabelError {
    /// Empty.
    #[error("SMACK label is empty")]
    Empty,
    /// Longer than [`SMACK_MAX_LABEL`].
    #[error("SMACK label {0:?} is longer than {SMACK_MAX_LABEL} bytes")]
    TooLong(String),
    /// Starts with `-` (the kernel's rule parser would take it for an option).
    #[error("SMACK label {0:?} starts with '-'")]
    LeadingDash(String),
    /// Not one a domain may name for an object: another guest's label (`svirt-…`), or one
    /// of SMACK's built-in labels that open an object to every subject (`*`, `^`, `@`).
    #[error("SMACK label {0:?} cannot be given to an object by a domain: {1}")]
    Reserved(String, &'static str),
    /// Holds a byte the kernel refuses (space, control, `/`, `"`, `'`, `\`, non-ASCII).
    #[error("SMACK label {label:?} holds {byte:?}, which SMACK labels cannot")]
    BadByte {
        /// The label.
        label: String,
        /// The byte, as a char.
        byte: char,
    },
}

/// A valid SMACK label.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SmackLabel(String);

impl SmackLabel {
    /// Checks `s` against the kernel's rules: 1–255 printable ASCII bytes, none of
    /// space, `/`, `"`, `'`, `\`, not starting with `-`.
    pub fn new(s: &str) -> Result<SmackLabel, SmackLabelError> {
        if s.is_empty() {
            return Err(SmackLabelError::Empty);
        }
        if s.len() > SMACK_MAX_LABEL {
            return Err(SmackLabelError::TooLong(s.to_string()));
        }
        if s.starts_with('-') {
            return Err(SmackLabelError::LeadingDash(s.to_string()));
        }
        if let Some(b) = s
            .bytes()
            .find(|&b| b <= b' ' || b > b'~' || matches!(b, b'/' | b'"' | b'\'' | b'\\'))
        {
            return Err(SmackLabelError::BadByte {
                label: s.to_string(),
                byte: b as char,
            });
        }
        Ok(SmackLabel(s.to_string()))
    }

    /// The label of a guest at `level` (module docs).
    pub fn for_guest(level: &MlsRange) -> Result<SmackLabel, SmackLabelError> {
        let one = |l: &crate::Level| {
            let t = l.to_string();
            let t = t.strip_prefix("s0:").unwrap_or(&t).to_string();
            t.replace(',', "-")
        };
        let mut s = format!("{GUEST_PREFIX}{}", one(&level.low));
        if !level.is_single() {
            s.push('_');
            s.push_str(&one(&level.high));
        }
        SmackLabel::new(&s)
    }

    /// The text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for SmackLabel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn guest(l: &str) -> String {
        SmackLabel::for_guest(&MlsRange::parse(l).expect("level"))
            .expect("label")
            .to_string()
    }

    #[test]
    fn guest_labels_spell_the_level() {
        assert_eq!(guest("s0:c41,c264"), "svirt-c41-c264");
        assert_eq!(guest("s0:c1,c2"), "svirt-c1-c2");
        assert_eq!(guest("s0:c0.c1023"), "svirt-c0.c1023");
        assert_eq!(guest("s0"), "svirt-s0");
        assert_eq!(guest("s2:c1"), "svirt-s2:c1");
        assert_eq!(guest("s0-s0:c0.c1023"), "svirt-s0_c0.c1023");
    }

    #[test]
    fn distinct_levels_give_distinct_labels() {
        let levels = [
            "s0",
            "s0:c1",
            "s0:c1,c2",
            "s0:c1.c3",
            "s0:c1,c3",
            "s1",
            "s1:c1",
            "s0-s0:c1",
            "s0:c12",
            "s0:c1-s0:c1,c2",
        ];
        let labels: std::collections::BTreeSet<String> = levels.iter().map(|l| guest(l)).collect();
        assert_eq!(labels.len(), levels.len(), "{labels:?}");
    }

    #[test]
    fn the_kernels_rules() {
        assert!(SmackLabel::new("_").is_ok());
        assert!(SmackLabel::new("svirt-shared").is_ok());
        assert_eq!(SmackLabel::new(""), Err(SmackLabelError::Empty));
        assert!(matches!(
            SmackLabel::new("-x"),
            Err(SmackLabelError::LeadingDash(_))
        ));
        for bad in ["a b", "a/b", "a\"b", "a'b", "a\\b", "a\nb", "é"] {
            assert!(
                matches!(SmackLabel::new(bad), Err(SmackLabelError::BadByte { .. })),
                "{bad:?}"
            );
        }
        assert!(SmackLabel::new(&"x".repeat(255)).is_ok());
        assert!(matches!(
            SmackLabel::new(&"x".repeat(256)),
            Err(SmackLabelError::TooLong(_))
        ));
        // A level with hundreds of scattered categories does not fit: said, not cut.
        let mut l = String::from("s0:c0");
        for c in (2..1024).step_by(2) {
            l.push_str(&format!(",c{c}"));
        }
        let r = MlsRange::parse(&l).expect("level");
        assert!(matches!(
            SmackLabel::for_guest(&r),
            Err(SmackLabelError::TooLong(_))
        ));
    }
}
