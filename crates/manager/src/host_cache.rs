//! The planner's view of the host, kept across starts while the host stays the same.
//!
//! The object policy judges every object against the mount table, the protected objects
//! (system trees, svirtd's own directories) and the block devices in use (mounted or
//! swap). Reading all of that costs ~0.16 ms a start. It changes only when something is
//! mounted or unmounted, or swap is turned on or off: the kernel tells the first
//! (`/proc/self/mountinfo` reports `POLLPRI` on a change in this mount namespace, see
//! proc(5)); `/proc/swaps` is read again each time (a few bytes). Any change, or any doubt,
//! builds the view again.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::sync::Mutex;

use svirt_domain::Host;

use crate::config::Config;

/// A [`Host`] whose object-policy view is built once and kept while the mount table and
/// the swap list stay as they were.
#[derive(Default)]
pub(crate) struct HostCache {
    state: Mutex<Cached>,
}

#[derive(Default)]
struct Cached {
    /// The host of the last start (its policy view is built at its first resolve and
    /// shared by its clones).
    host: Option<Host>,
    /// `/proc/self/mountinfo`, kept open: polled for changes.
    mountinfo: Option<File>,
    /// `/proc/swaps` as it was when `host` was made.
    swaps: String,
}

impl HostCache {
    /// The host for planning now: the cached one, or a fresh one when the mount table or
    /// the swap list changed since it was made (or cannot be watched).
    pub(crate) fn host(&self, config: &Config) -> Host {
        let mut c = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let swaps = std::fs::read_to_string("/proc/swaps").unwrap_or_default();
        let changed = c.host.is_none()
            || c.swaps != swaps
            || c.mountinfo.as_ref().is_none_or(mount_table_changed);
        if changed {
            // Opened before the view is made: a change from here on is reported at the
            // next start's poll (at worst one rebuild too many).
            c.mountinfo = File::open("/proc/self/mountinfo").ok();
            c.host = Some(crate::glue::guest_host(config));
            c.swaps = swaps;
        }
        c.host
            .clone()
            .unwrap_or_else(|| crate::glue::guest_host(config))
    }
}

/// Whether the mount namespace's table changed since the last poll of `f` (or since it
/// was opened). An error counts as a change.
fn mount_table_changed(f: &File) -> bool {
    let mut fds = [libc::pollfd {
        fd: f.as_raw_fd(),
        events: libc::POLLPRI,
        revents: 0,
    }];
    // SAFETY: one valid pollfd on an fd this struct owns; no timeout.
    let r = unsafe { libc::poll(fds.as_mut_ptr(), 1, 0) };
    r != 0 || fds[0].revents != 0
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A mount in this namespace is reported once; nothing is reported without one.
    #[test]
    fn a_mount_is_seen_by_the_poll() {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            svirt_testkit::skip("root", "mounting a tmpfs needs root");
            return;
        }
        let f = File::open("/proc/self/mountinfo").expect("open");
        assert!(!mount_table_changed(&f), "nothing changed yet");
        let dir = tempfile::tempdir().expect("tempdir");
        let target = std::ffi::CString::new(dir.path().to_str().expect("utf8")).expect("cstr");
        // SAFETY: valid NUL-terminated strings; a tmpfs on our own temporary directory.
        let r = unsafe {
            libc::mount(
                c"svirt-test".as_ptr(),
                target.as_ptr(),
                c"tmpfs".as_ptr(),
                0,
                std::ptr::null(),
            )
        };
        assert_eq!(r, 0, "mount: {}", std::io::Error::last_os_error());
        assert!(mount_table_changed(&f), "the mount was not reported");
        assert!(!mount_table_changed(&f), "reported twice");
        // SAFETY: unmounts the tmpfs mounted above.
        unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH) };
        assert!(mount_table_changed(&f), "the unmount was not reported");
    }
}
