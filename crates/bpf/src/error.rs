//! The one error type of this crate: what failed, and on which object.

/// A failure of the BPF-LSM enforcer, naming the operation (and the path or map).
#[derive(Debug, thiserror::Error)]
pub enum BpfError {
    /// libbpf refused an operation.
    #[error("{what}: {source}")]
    Libbpf {
        /// What was being done (`load the programs`, `pin map objects at /sys/fs/bpf/svirt`).
        what: String,
        /// libbpf's error.
        source: libbpf_rs::Error,
    },
    /// A system call failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done, naming the object.
        what: String,
        /// The system error.
        source: std::io::Error,
    },
    /// Something that is not an error of a call (a malformed pinned object, a bad label).
    #[error("{0}")]
    Invalid(String),
}

impl BpfError {
    pub(crate) fn libbpf(what: impl Into<String>) -> impl FnOnce(libbpf_rs::Error) -> BpfError {
        let what = what.into();
        move |source| BpfError::Libbpf { what, source }
    }

    pub(crate) fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> BpfError {
        let what = what.into();
        move |source| BpfError::Io { what, source }
    }
}
