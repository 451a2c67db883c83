//! One error type for the probe: a message with the chain of what was being done.

use std::fmt;
use std::io;

/// An error with a human-readable description of what failed and why.
#[derive(Debug)]
pub struct Error {
    message: String,
}

impl Error {
    /// An error that is not an OS error.
    pub fn msg(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Error {}

/// Result alias used throughout the probe.
pub type Result<T> = std::result::Result<T, Error>;

/// Attach "what we were doing" to an error.
pub trait Context<T> {
    /// Prefix the error with `what`.
    fn ctx(self, what: impl FnOnce() -> String) -> Result<T>;
}

impl<T> Context<T> for io::Result<T> {
    fn ctx(self, what: impl FnOnce() -> String) -> Result<T> {
        self.map_err(|e| Error {
            message: format!("{}: {}", what(), e),
        })
    }
}

impl<T> Context<T> for Result<T> {
    fn ctx(self, what: impl FnOnce() -> String) -> Result<T> {
        self.map_err(|e| Error {
            message: format!("{}: {}", what(), e.message),
        })
    }
}

/// Symbolic name of an errno, as the lab's result files and reports spell it.
pub fn errno_name(errno: i32) -> String {
    let name = match errno {
        libc::EPERM => "EPERM",
        libc::ENOENT => "ENOENT",
        libc::ESRCH => "ESRCH",
        libc::EINTR => "EINTR",
        libc::EIO => "EIO",
        libc::EBADF => "EBADF",
        libc::EAGAIN => "EAGAIN",
        libc::ENOMEM => "ENOMEM",
        libc::EACCES => "EACCES",
        libc::EFAULT => "EFAULT",
        libc::EBUSY => "EBUSY",
        libc::EEXIST => "EEXIST",
        libc::ENOTDIR => "ENOTDIR",
        libc::EISDIR => "EISDIR",
        libc::EINVAL => "EINVAL",
        libc::ENOSPC => "ENOSPC",
        libc::EROFS => "EROFS",
        libc::ERANGE => "ERANGE",
        libc::ENOSYS => "ENOSYS",
        libc::ENODATA => "ENODATA",
        libc::EOPNOTSUPP => "EOPNOTSUPP",
        libc::ELOOP => "ELOOP",
        _ => return format!("E{errno}"),
    };
    name.to_string()
}

/// The errno name of an I/O error, or `EIO?` when it carries no OS error.
pub fn io_errno_name(e: &io::Error) -> String {
    e.raw_os_error()
        .map(errno_name)
        .unwrap_or_else(|| "EIO?".to_string())
}
