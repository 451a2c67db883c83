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
/// of a child made for it, killed and reaped before this returns.
pub fn userns_for(m: IdMap) -> io::Result<OwnedFd> {
    // SAFETY: clone(CLONE_NEWUSER) without a new stack behaves like fork. This process has
    // other threads, so the child must neither allocate nor take locks: it only closes
    // every fd it inherited (another thread's pipes, the ledger, sockets: it must hold
    // none of them) and sleeps until the parent kills it. Only async-signal-safe system
    // calls on no data at all.
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
        // SAFETY: close_range and pause: async-signal-safe, no memory touched.
        unsafe {
            libc::syscall(libc::SYS_close_range, 0u32, u32::MAX, 0u32);
            loop {
                libc::pause();
            }
        }
    }
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
    // Our own unreaped child: its pid cannot have been reused.
    // SAFETY: kill and waitpid of that child.
    unsafe {
        libc::kill(pid, libc::SIGKILL);
        let mut status = 0;
        while libc::waitpid(pid, &mut status, 0) < 0 && *libc::__errno_location() == libc::EINTR {}
    }
    result
}

/// Whether a share owned by `uid:gid` may be shown to a guest through an idmapped mount.
/// Through the mapping the guest writes as that owner and group, set-id bits included
/// (QEMU's 9p passes a guest's `chmod` on), so a program it leaves in the share runs on
/// the host as them. Only accounts of users may be mapped: both ids at least `min_id`
/// (`UID_MIN`/`GID_MIN` of `/etc/login.defs`, 1000 by default: not root, not a system
/// account or group such as `disk`, `shadow`, `sudo`, `adm`, `kvm`), not the overflow id
/// (`nobody`), not one of the guests' own ids (`guest_ids`, inclusive).
pub fn may_map(
    uid: u32,
    gid: u32,
    min_id: (u32, u32),
    guest_ids: (u32, u32),
) -> Result<(), String> {
    let (umin, gmin) = min_id;
    if uid < umin || gid < gmin {
        return Err(format!(
            "it is owned by {uid}:{gid}, a system account or group (below {umin}:{gmin}, \
             login.defs' UID_MIN/GID_MIN): through the mapping the guest would write as it"
        ));
    }
    if uid == 65534 || gid == 65534 {
        return Err(format!("it is owned by {uid}:{gid} (nobody/nogroup)"));
    }
    let guest = |id: u32| id >= guest_ids.0 && id <= guest_ids.1;
    if guest(uid) || guest(gid) {
        return Err(format!(
            "it is owned by {uid}:{gid}, in the guests' own id range: another guest's"
        ));
    }
    Ok(())
}

/// Which share owners may be mapped ([`may_map`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MapPolicy {
    /// `UID_MIN`, `GID_MIN` ([`login_min_ids`]).
    pub min_id: (u32, u32),
    /// The guests' uid/gid range (inclusive).
    pub guest_ids: (u32, u32),
}

impl MapPolicy {
    /// [`may_map`] under this policy.
    pub fn check(&self, uid: u32, gid: u32) -> Result<(), String> {
        may_map(uid, gid, self.min_id, self.guest_ids)
    }
}

/// `UID_MIN` and `GID_MIN` from `<root>/etc/login.defs` (1000 each when it does not say).
pub fn login_min_ids(root: &std::path::Path) -> (u32, u32) {
    let text = std::fs::read_to_string(root.join("etc/login.defs")).unwrap_or_default();
    let get = |key: &str| {
        text.lines()
            .map(str::trim)
            .filter(|l| !l.starts_with('#'))
            .find_map(|l| {
                let mut w = l.split_whitespace();
                (w.next() == Some(key)).then(|| w.next()?.parse::<u32>().ok())?
            })
            .unwrap_or(1000)
            .max(1)
    };
    (get("UID_MIN"), get("GID_MIN"))
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
    fn only_user_accounts_may_be_mapped() {
        let g = (2_000_000_000, 2_000_065_535);
        assert!(may_map(4100, 4200, (1000, 1000), g).is_ok());
        for (u, gid) in [(0, 4200), (4100, 0), (4100, 6), (999, 4200), (65534, 4200)] {
            assert!(may_map(u, gid, (1000, 1000), g).is_err(), "{u}:{gid}");
        }
        assert!(may_map(2_000_000_005, 4200, (1000, 1000), g).is_err());
        let tmp = tempfile::tempdir().unwrap();
        std::fs::create_dir(tmp.path().join("etc")).unwrap();
        std::fs::write(
            tmp.path().join("etc/login.defs"),
            "# UID_MIN 5\nUID_MIN   500\nGID_MIN\t600\n",
        )
        .unwrap();
        assert_eq!(login_min_ids(tmp.path()), (500, 600));
        assert_eq!(
            login_min_ids(std::path::Path::new("/nonexistent")),
            (1000, 1000)
        );
    }

    /// Two threads making namespaces at once (two starts): neither child holds the
    /// other's fds, nothing hangs.
    #[test]
    fn concurrent_namespaces_do_not_hang() {
        let m = IdMap {
            on_disk_uid: 4100,
            on_disk_gid: 4200,
            shown_uid: 5100,
            shown_gid: 5200,
        };
        let ts: Vec<_> = (0..8)
            .map(|_| std::thread::spawn(move || (0..20).all(|_| userns_for(m).is_ok())))
            .collect();
        for t in ts {
            assert!(t.join().unwrap());
        }
    }

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
