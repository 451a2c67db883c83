//! The few SELinux kernel interfaces the lab needs, without libselinux.

use std::ffi::CString;
use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use crate::error::{Context, Error, Result};

/// The xattr that carries a file's SELinux label.
const XATTR: &[u8] = b"security.selinux\0";

/// Load a binary policy. The kernel insists on the whole image in ONE write():
/// a short or split write is rejected, which is why busybox `cat` will not do.
pub fn load_policy(policy: &Path, selinuxfs: &Path) -> Result<usize> {
    let image = fs::read(policy).ctx(|| format!("reading policy {}", policy.display()))?;
    let load = selinuxfs.join("load");
    let mut f = OpenOptions::new()
        .write(true)
        .open(&load)
        .ctx(|| format!("opening {}", load.display()))?;
    let n = f
        .write(&image)
        .ctx(|| format!("writing {} bytes to {}", image.len(), load.display()))?;
    if n != image.len() {
        return Err(Error::msg(format!(
            "short policy write: {n} of {} bytes",
            image.len()
        )));
    }
    Ok(n)
}

fn c_path(path: &Path) -> Result<CString> {
    CString::new(path.as_os_str().as_bytes())
        .map_err(|_| Error::msg(format!("path {} contains NUL", path.display())))
}

/// Set a file's label without following a final symlink.
pub fn set_file_label(path: &Path, context: &str) -> Result<()> {
    let cpath = c_path(path)?;
    // The kernel accepts the value with or without the terminating NUL; libselinux
    // writes it with, so do the same to produce byte-identical xattrs.
    let value = CString::new(context)
        .map_err(|_| Error::msg(format!("context {context:?} contains NUL")))?;
    let bytes = value.as_bytes_with_nul();
    // SAFETY: both pointers are valid NUL-terminated strings; value length is exact.
    let rc = unsafe {
        libc::lsetxattr(
            cpath.as_ptr(),
            XATTR.as_ptr().cast(),
            bytes.as_ptr().cast(),
            bytes.len(),
            0,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error())
            .ctx(|| format!("setting label {context} on {}", path.display()));
    }
    Ok(())
}

/// Read a file's label without following a final symlink.
pub fn file_label(path: &Path) -> Result<String> {
    let cpath = c_path(path)?;
    let mut buf = vec![0u8; 4096];
    // SAFETY: buf is writable for buf.len() bytes; cpath and XATTR are NUL-terminated.
    let rc = unsafe {
        libc::lgetxattr(
            cpath.as_ptr(),
            XATTR.as_ptr().cast(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    if rc < 0 {
        return Err(std::io::Error::last_os_error())
            .ctx(|| format!("reading label of {}", path.display()));
    }
    buf.truncate(rc as usize);
    Ok(trim_context(&buf))
}

/// Contexts read from the kernel may end in NUL and/or newline.
pub fn trim_context(raw: &[u8]) -> String {
    let s = String::from_utf8_lossy(raw);
    s.trim_end_matches(['\0', '\n']).to_string()
}

/// A process attribute (`current`, `prev`, `exec`) of `pid` ("self" allowed).
pub fn process_attr(pid: &str, attr: &str) -> Result<String> {
    let path = format!("/proc/{pid}/attr/{attr}");
    let raw = fs::read(&path).ctx(|| format!("reading {path}"))?;
    Ok(trim_context(&raw))
}

/// Ask the kernel to run the next execve() of this thread in `context`.
pub fn set_exec_context(context: &str) -> Result<()> {
    let path = "/proc/thread-self/attr/exec";
    let mut f = OpenOptions::new()
        .write(true)
        .open(path)
        .ctx(|| format!("opening {path}"))?;
    f.write_all(context.as_bytes())
        .ctx(|| format!("writing {context} to {path}"))
}

/// The parts of a context, split the way the kernel does (the level keeps its colons).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContextParts {
    /// SELinux user.
    pub user: String,
    /// Role.
    pub role: String,
    /// Type (domain for processes).
    pub type_: String,
    /// MLS/MCS level or range, e.g. `s0:c1,c2`.
    pub level: String,
}

impl ContextParts {
    /// Split `user:role:type:level`.
    pub fn parse(context: &str) -> Result<Self> {
        let mut it = context.splitn(4, ':');
        match (it.next(), it.next(), it.next(), it.next()) {
            (Some(u), Some(r), Some(t), Some(l))
                if !u.is_empty() && !r.is_empty() && !t.is_empty() && !l.is_empty() =>
            {
                Ok(Self {
                    user: u.to_string(),
                    role: r.to_string(),
                    type_: t.to_string(),
                    level: l.to_string(),
                })
            }
            _ => Err(Error::msg(format!(
                "{context:?} is not a user:role:type:level context"
            ))),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn parses_context_with_categories() {
        let c = ContextParts::parse("system_u:system_r:svirt_t:s0:c1,c2").unwrap();
        assert_eq!(c.type_, "svirt_t");
        assert_eq!(c.level, "s0:c1,c2");
        assert!(ContextParts::parse("system_u:system_r:svirt_t").is_err());
        assert!(ContextParts::parse("a::t:s0").is_err());
    }

    #[test]
    fn trims_kernel_terminators() {
        assert_eq!(
            trim_context(b"system_u:object_r:etc_t:s0\0"),
            "system_u:object_r:etc_t:s0"
        );
        assert_eq!(trim_context(b"kernel\n"), "kernel");
    }

    #[test]
    fn xattr_roundtrip_on_a_real_file() {
        // security.* xattrs are writable by root on tmpfs/ext4 even without SELinux;
        // as non-root this fails with EPERM and there is nothing to test.
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("img");
        std::fs::write(&f, b"x").unwrap();
        let ctx = "system_u:object_r:svirt_image_t:s0:c1,c2";
        match set_file_label(&f, ctx) {
            Ok(()) => assert_eq!(file_label(&f).unwrap(), ctx),
            Err(e) => eprintln!(
                "SKIP xattr_roundtrip_on_a_real_file: cannot set security.selinux here: {e}"
            ),
        }
    }
}
