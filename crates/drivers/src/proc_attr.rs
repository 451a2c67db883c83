//! Writing a process attribute through `/proc` (`/proc/thread-self/attr/…`) from the
//! prepared child, between fork and exec: how a MAC model's label for the exec is set
//! (SELinux's `exec`, AppArmor's `apparmor/exec`).

use std::ffi::CString;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use crate::ChildHook;

/// A child hook writing `bytes` in one `write` to the first of `paths` that exists (a
/// later path is tried only when the one before is missing, `ENOENT`: the older interface
/// of the same attribute). Everything is allocated here, before the fork; the hook only
/// makes `open`/`write`/`close` calls. A short write is an error (`EIO`).
pub fn write_hook(paths: &[&Path], bytes: Vec<u8>) -> Result<ChildHook, String> {
    let paths: Vec<CString> = paths
        .iter()
        .map(|p| {
            CString::new(p.as_os_str().as_bytes())
                .map_err(|_| format!("{}: path contains NUL", p.display()))
        })
        .collect::<Result<_, _>>()?;
    if paths.is_empty() {
        return Err("no attribute path".into());
    }
    Ok(Box::new(move || {
        // SAFETY: open/write/close on data prepared before the fork; no allocation.
        unsafe {
            let mut fd = -1;
            for p in &paths {
                fd = libc::open(p.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
                if fd >= 0 || *libc::__errno_location() != libc::ENOENT {
                    break;
                }
            }
            if fd < 0 {
                return Err(io::Error::last_os_error());
            }
            let n = libc::write(fd, bytes.as_ptr().cast(), bytes.len());
            let err = io::Error::last_os_error();
            libc::close(fd);
            if n < 0 {
                return Err(err);
            }
            if n as usize != bytes.len() {
                return Err(io::Error::from_raw_os_error(libc::EIO));
            }
        }
        Ok(())
    }))
}
