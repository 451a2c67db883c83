//! The one error type of this crate: every refusal names the offending element,
//! attribute or path.

use std::path::PathBuf;

/// Why a domain could not be parsed, resolved or planned.
///
/// Every variant is a refusal that happens before anything on the host is changed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The document is larger than [`crate::MAX_XML_BYTES`].
    #[error("domain XML is {size} bytes, over the limit of {limit} bytes")]
    TooLarge {
        /// Size of the document.
        size: usize,
        /// The limit.
        limit: usize,
    },
    /// The document is not well-formed XML, or uses a DTD / entity declarations.
    #[error("malformed domain XML: {0}")]
    Xml(String),
    /// An element or attribute has a value the parser does not accept.
    #[error("{at}: {message}")]
    Invalid {
        /// Where: an element path such as `/domain/devices/disk[2]/source@file`.
        at: String,
        /// What is wrong with it.
        message: String,
    },
    /// A `<seclabel>` breaks one of libvirt's rules (relabel with dynamic/none, missing
    /// label, two of one model…).
    #[error("{at}: seclabel: {message}")]
    Seclabel {
        /// Where the offending `<seclabel>` is.
        at: String,
        /// Which rule it breaks.
        message: String,
    },
    /// A `<seclabel model=…>` names a model svirt does not have or that is not loaded.
    #[error("{at}: seclabel model '{model}' is {why}")]
    UnknownModel {
        /// Where.
        at: String,
        /// The model as written.
        model: String,
        /// `unknown` or `not loaded on this host`.
        why: &'static str,
    },
    /// A resource is, or resolves to, a path that must never be relabeled.
    #[error("{device}: refusing system path {path}{}", via_text(.given, .path))]
    SystemPath {
        /// The device the path comes from.
        device: String,
        /// The system path reached.
        path: PathBuf,
        /// The path as given, when it differs (reached through a symlink or `..`).
        given: PathBuf,
    },
    /// An object the object policy refuses (a protected object, a device of the wrong
    /// class, a hard link, a symlink someone else planted…).
    #[error("{device}: refusing {path}{}: {rule}", via_text(.given, .path))]
    Refused {
        /// The device the path comes from.
        device: String,
        /// The object (or the symlink) refused.
        path: PathBuf,
        /// The path as given.
        given: PathBuf,
        /// The rule, in words.
        rule: String,
    },
    /// A resource does not exist (`ENOENT` is fatal).
    #[error("{device}: {path}: no such file or directory (ENOENT)")]
    NotFound {
        /// The device the path comes from.
        device: String,
        /// The path as given.
        path: PathBuf,
    },
    /// A path in the domain is not absolute.
    #[error("{device}: path {path} is not absolute")]
    RelativePath {
        /// The device the path comes from.
        device: String,
        /// The path as given.
        path: PathBuf,
    },
    /// A system call on a resource failed.
    #[error("{device}: {op} {path}: {source}")]
    Io {
        /// The device the path comes from.
        device: String,
        /// What was being done.
        op: &'static str,
        /// The path.
        path: PathBuf,
        /// The system error.
        source: std::io::Error,
    },
    /// A qcow2 image header is malformed or asks for something refused.
    #[error("{device}: qcow2 image {path}: {message}")]
    Qcow2 {
        /// The device the image belongs to.
        device: String,
        /// The image.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// A resource has the wrong file type for its use (a directory as a disk…).
    #[error("{device}: {path}: {message}")]
    WrongType {
        /// The device.
        device: String,
        /// The path.
        path: PathBuf,
        /// What was expected.
        message: String,
    },
    /// One host object is used twice with incompatible settings.
    #[error("{path} is used by {first} and {second} with different {what}")]
    Conflict {
        /// The object.
        path: PathBuf,
        /// First device.
        first: String,
        /// Second device.
        second: String,
        /// What differs.
        what: &'static str,
    },
    /// The host's policy context files could not be read or parsed.
    #[error("{path}: {message}")]
    PolicyConfig {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// A host device (PCI/USB) could not be found through sysfs.
    #[error("{device}: {message}")]
    Hostdev {
        /// The device.
        device: String,
        /// What is wrong.
        message: String,
    },
}

fn via_text(given: &std::path::Path, path: &std::path::Path) -> String {
    if given == path {
        String::new()
    } else {
        format!(" (reached from {})", given.display())
    }
}

/// Result alias for this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
