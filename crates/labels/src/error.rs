use std::fmt;

/// What was wrong with a label that failed to parse.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The input was empty where a label was required.
    Empty,
    /// A context did not have the `user:role:type` fields.
    MissingField(&'static str),
    /// An identifier (user, role, type) contains a character the policy language forbids.
    BadIdentifier,
    /// A sensitivity was not `s<N>`.
    BadSensitivity,
    /// A sensitivity number beyond what the policy defines.
    SensitivityOutOfRange {
        /// Number of sensitivities the policy defines (`s0` .. `s{max-1}`).
        max: u16,
    },
    /// A category was not `c<N>`.
    BadCategory,
    /// A category number beyond what the policy defines.
    CategoryOutOfRange {
        /// Number of categories the policy defines (`c0` .. `c{max-1}`).
        max: u16,
    },
    /// `cA.cB` with `A >= B`: the kernel rejects such a range.
    ReversedCategoryRange,
    /// An empty element in a category list, such as `c1,,c2` or a trailing comma.
    EmptyCategory,
    /// The high level of a range does not dominate its low level.
    HighDoesNotDominateLow,
    /// Text after a complete label.
    TrailingInput,
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ErrorKind::Empty => write!(f, "empty label"),
            ErrorKind::MissingField(field) => write!(f, "missing {field} field"),
            ErrorKind::BadIdentifier => write!(
                f,
                "invalid identifier (letters, digits, '_', '.', '-' allowed, starting with a letter or '_')"
            ),
            ErrorKind::BadSensitivity => write!(f, "expected a sensitivity s0..s15"),
            ErrorKind::SensitivityOutOfRange { max } => {
                write!(
                    f,
                    "sensitivity out of range (policy defines s0..s{})",
                    max - 1
                )
            }
            ErrorKind::BadCategory => write!(f, "expected a category cN"),
            ErrorKind::CategoryOutOfRange { max } => {
                write!(f, "category out of range (policy defines c0..c{})", max - 1)
            }
            ErrorKind::ReversedCategoryRange => {
                write!(
                    f,
                    "category range must run from a lower to a higher category"
                )
            }
            ErrorKind::EmptyCategory => write!(f, "empty category in list"),
            ErrorKind::HighDoesNotDominateLow => {
                write!(f, "high level of the range does not dominate the low level")
            }
            ErrorKind::TrailingInput => write!(f, "unexpected text after the label"),
        }
    }
}

/// A label that could not be parsed: where, which token, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("at character {} (`{token}`): {kind}", pos + 1)]
pub struct ParseError {
    /// Byte offset of the offending token in the input (0-based; labels are ASCII). The
    /// message shows it 1-based, as editors count characters.
    pub pos: usize,
    /// The offending token as it appeared in the input.
    pub token: String,
    /// What was wrong.
    pub kind: ErrorKind,
}

impl ParseError {
    pub(crate) fn new(pos: usize, token: &str, kind: ErrorKind) -> Self {
        // Cap the echoed token: the error is meant for a human, and input may be huge.
        let token: String = token.chars().take(64).collect();
        ParseError { pos, token, kind }
    }

    /// Shifts the position, for errors from a sub-parser that saw a suffix of the input.
    pub(crate) fn offset(mut self, by: usize) -> Self {
        self.pos += by;
        self
    }
}
