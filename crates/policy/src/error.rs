use thiserror::Error;

/// Errors of this crate: input that cannot be read as what it should be.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum PolicyError {
    /// A boolean the policy does not define.
    #[error("no boolean {0:?} in the policy")]
    UnknownBoolean(String),
    /// A `name=value` boolean setting that is not well formed.
    #[error("bad boolean setting {0:?} (expected name=on|off)")]
    BadBooleanSetting(String),
    /// A `--batch` line that is not `SCONTEXT<TAB>TCONTEXT<TAB>CLASS<TAB>PERMS[<TAB>BOOLS]`.
    #[error("bad batch line: {0}")]
    BadBatchLine(String),
    /// A security context that does not parse.
    #[error("bad context {text:?}: {message}")]
    BadContext {
        /// The context text.
        text: String,
        /// Why it does not parse.
        message: String,
    },
    /// A line that is not a kernel AVC record.
    #[error("not an AVC record: {0}")]
    NotAvc(String),
}
