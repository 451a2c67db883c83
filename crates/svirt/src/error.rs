//! One error type for every subcommand: an exit code and one clear line.

use std::fmt;
use std::process::ExitCode;

/// A command failure: printed as one line `svirt: <message>` and exited with `code`.
#[derive(Debug)]
pub struct CliError {
    /// Exit status (2 for bad input, 1 for operational failures).
    pub code: u8,
    /// The message, naming the offending thing.
    pub message: String,
}

impl CliError {
    /// Bad input (exit 2): a label, a file, an argument.
    pub fn input(message: impl fmt::Display) -> Self {
        CliError {
            code: 2,
            message: message.to_string(),
        }
    }

    /// An operation that failed (exit 1).
    pub fn failed(message: impl fmt::Display) -> Self {
        CliError {
            code: 1,
            message: message.to_string(),
        }
    }
}

impl fmt::Display for CliError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

/// What every subcommand returns.
pub type CmdResult = Result<ExitCode, CliError>;
