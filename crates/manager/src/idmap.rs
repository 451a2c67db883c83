//! Idmapped mounts: a directory shown to one uid/gid as its own without a change on disk
//! (`mount_setattr(MOUNT_ATTR_IDMAP)`), so a share reaches its guest's uid in O(1)
//! instead of a chown of every entry (and nothing is left to restore or recover: the
//! mount lives in the VMM's own mount namespace and dies with it).
//!
//! The mapping is a user namespace's: svirt makes one per share with a child process that
//! does nothing but wait (a user namespace outlives its last process only through an fd,
//! which is what `mount_setattr` takes), writes its `uid_map` and `gid_map` from here, and
//! keeps `/proc/PID/ns/user` open. An idmapping is one-to-one: the share root's owner and
//! group are mapped to the guest's; entries owned by anyone else show as the overflow ids
//! (`nobody`) and keep only their "other" permissions.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

/// One id mapped: what the file system stores (`on_disk`) shows as `shown` through the
/// mount.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IdMap {
    /// Owner stored on disk (the share root's).
    pub on_disk_uid: u32,
    /// Group stored on disk (the share root's).
    pub on_disk_gid: u32,
    /// Owner shown through the mount (the guest's uid).
    pub shown_uid: u32,
    /// Group shown through the mount (the guest's gid).
    pub shown_gid: u32,
}

/// A user namespace whose mapping makes an idmapped mount show `m`: `/proc/PID/ns/user`
/// of a child made for it (reaped before this returns).
pub fn userns_for(m: IdMap) -> io::Result<OwnedFd> {
    let (rd, wr) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)?;
    // SAFETY: clone(CLONE_NEWUSER) without a new stack behaves like fork. The child only
    // makes async-signal-safe system calls (read, _exit) on data of this stack frame:
    // this process has other threads, so it must neither allocate nor take locks.
    let pid = unsafe {
        libc::syscall(
            libc::SYS_clone,
            (libc::CLONE_NEWUSER | libc::SIGCHLD) as libc::c_ulong,
            0usize,
            0usize,
            0usize,
            0usize,
        )
    };
    if pid < 0 {
        return Err(io::Error::last_os_error());
    }
    if pid == 0 {
        // The child: drop its copy of the write end, wait until the parent closes its
        // own (end of file), then go.
        let mut b = [0u8; 1];
        // SAFETY: close, read into a stack buffer, _exit: all async-signal-safe.
        unsafe {
            libc::close(wr.as_raw_fd());
            libc::read(rd.as_raw_fd(), b.as_mut_ptr().cast(), 1);
            libc::_exit(0);
        }
    }
    drop(rd);
    let pid = pid as libc::pid_t;
    let result = (|| {
        // The direction of an idmapped mount: an id stored on disk is read as an id inside
        // the namespace and shown as what it maps to outside (`inside outside count`:
        // inside = on disk, outside = shown; checked by the test below).
        std::fs::write(
            format!("/proc/{pid}/uid_map"),
            format!("{} {} 1\n", m.on_disk_uid, m.shown_uid),
        )?;
        std::fs::write(
            format!("/proc/{pid}/gid_map"),
            format!("{} {} 1\n", m.on_disk_gid, m.shown_gid),
        )?;
        let f = std::fs::File::open(format!("/proc/{pid}/ns/user"))?;
        Ok(OwnedFd::from(f))
    })();
    drop(wr);
    let mut status = 0;
    // SAFETY: reaping our own child.
    unsafe {
        libc::waitpid(pid, &mut status, 0);
    }
    result
}

/// Sets the idmapping of `userns` on the detached mount `tree` (made by
/// `open_tree(OPEN_TREE_CLONE)`, not attached yet).
pub fn set_idmap(tree: &OwnedFd, userns: &OwnedFd) -> io::Result<()> {
    let attr = libc::mount_attr {
        attr_set: libc::MOUNT_ATTR_IDMAP,
        attr_clr: 0,
        propagation: 0,
        userns_fd: userns.as_raw_fd() as u64,
    };
    // SAFETY: mount_setattr on a detached tree we own, reading one mount_attr.
    let r = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            tree.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_EMPTY_PATH as libc::c_uint,
            &attr as *const libc::mount_attr,
            std::mem::size_of::<libc::mount_attr>(),
        )
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// A detached bind mount of the directory `dir` (`open_tree(OPEN_TREE_CLONE)`).
pub fn detached(dir: &OwnedFd) -> io::Result<OwnedFd> {
    // SAFETY: open_tree on an fd we own with an empty path; returns a new fd or -1.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_open_tree,
            dir.as_raw_fd(),
            c"".as_ptr(),
            libc::OPEN_TREE_CLONE | libc::OPEN_TREE_CLOEXEC | libc::AT_EMPTY_PATH as libc::c_uint,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh fd returned by the kernel, owned from here.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::os::unix::fs::MetadataExt;

    /// The direction, checked on a real mount: a file the share's owner owns on disk is
    /// the guest's through the mount; one owned by someone else is `nobody`'s; a file the
    /// guest creates through it is the share owner's on disk.
    #[test]
    fn an_idmapped_mount_shows_the_share_owner_as_the_guest() {
        let tmp = tempfile::Builder::new()
            .prefix("svirt-idmap-")
            .tempdir_in("/var/tmp")
            .unwrap();
        let share = tmp.path().join("share");
        std::fs::create_dir(&share).unwrap();
        let mine = share.join("mine");
        let theirs = share.join("theirs");
        std::fs::write(&mine, b"x").unwrap();
        std::fs::write(&theirs, b"y").unwrap();
        std::os::unix::fs::chown(&share, Some(4100), Some(4200)).unwrap();
        std::os::unix::fs::chown(&mine, Some(4100), Some(4200)).unwrap();
        std::os::unix::fs::chown(&theirs, Some(4300), Some(4300)).unwrap();
        let m = IdMap {
            on_disk_uid: 4100,
            on_disk_gid: 4200,
            shown_uid: 2_000_000_001,
            shown_gid: 2_000_000_002,
        };
        let ns = userns_for(m).unwrap();
        let dir: OwnedFd = std::fs::File::open(&share).unwrap().into();
        let tree = detached(&dir).unwrap();
        set_idmap(&tree, &ns).unwrap();
        // Look through the detached mount itself (no need to attach it anywhere).
        let seen = |name: &str| {
            let st =
                rustix::fs::statat(&tree, name, rustix::fs::AtFlags::SYMLINK_NOFOLLOW).unwrap();
            (st.st_uid, st.st_gid)
        };
        assert_eq!(seen("mine"), (2_000_000_001, 2_000_000_002));
        assert_eq!(seen("theirs"), (65534, 65534));
        // On disk, nothing changed.
        assert_eq!(std::fs::metadata(&mine).unwrap().uid(), 4100);
        // A file the guest's uid creates through the mount is the owner's on disk (a
        // thread of its own: setfsuid is per thread).
        let tree_fd = tree.as_raw_fd();
        std::thread::spawn(move || {
            // SAFETY: setfsuid/setfsgid on this thread only; openat on a valid dir fd.
            unsafe {
                libc::setfsgid(2_000_000_002);
                libc::setfsuid(2_000_000_001);
                let fd = libc::openat(
                    tree_fd,
                    c"new".as_ptr(),
                    libc::O_CREAT | libc::O_WRONLY,
                    0o600,
                );
                assert!(
                    fd >= 0,
                    "create through the mount: {}",
                    io::Error::last_os_error()
                );
                libc::close(fd);
            }
        })
        .join()
        .unwrap();
        let m = std::fs::metadata(share.join("new")).unwrap();
        assert_eq!((m.uid(), m.gid()), (4100, 4200));
    }
}
