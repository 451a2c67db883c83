//! Resolving a path as it is written (in a domain XML), following symlinks only where the
//! caller's rule allows, so that the object reached is the object judged.
//!
//! The path is walked one component at a time with `openat(O_PATH|O_NOFOLLOW)` from a
//! directory fd; each symlink met is read by this code and handed to the caller's judge
//! (who planted it, in whose directory) before it is followed. The result carries an
//! `O_PATH` fd to the object, its parent directory's fd and its canonical path (no
//! symlink, `.` or `..` in any component): later opens of that path can refuse every link
//! ([`crate::FsRoot::open_planned`]), and opens of the object go through its parent's fd
//! by name ([`Resolved::open_read`]), checked to be the same inode.

use std::collections::VecDeque;
use std::ffi::{OsStr, OsString};
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

use rustix::fs::{CWD, FileType, Mode, OFlags};
use rustix::io::Errno;

/// Most symlinks followed in one path (the kernel's own limit).
pub const MAX_SYMLINKS: u32 = 40;

/// A symlink met on the way, for the caller's judge.
#[derive(Debug)]
pub struct Link<'a> {
    /// Where the link is (canonical: the directories above it have no link).
    pub path: &'a Path,
    /// The link's owner.
    pub uid: u32,
    /// The owner of the directory holding it.
    pub dir_uid: u32,
}

/// Why a path could not be resolved.
#[derive(Debug)]
pub enum Error {
    /// A system call failed (`ELOOP` after [`MAX_SYMLINKS`] links, `ENOTDIR` when a
    /// component before the last is not a directory).
    Io {
        /// What was being done (`open`, `stat`, `readlink`, `resolve`).
        op: &'static str,
        /// The system error.
        source: io::Error,
    },
    /// The judge refused the symlink at `path`.
    Refused {
        /// The link.
        path: PathBuf,
        /// The judge's reason.
        rule: String,
    },
    /// The path resolves to `/` itself, which has no parent to reach it through.
    Root,
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Error::Io { op, source } => write!(f, "{op}: {source}"),
            Error::Refused { path, rule } => write!(f, "{}: {rule}", path.display()),
            Error::Root => write!(f, "the path is the root directory"),
        }
    }
}

impl std::error::Error for Error {}

/// An object reached by [`resolve`].
#[derive(Debug)]
pub struct Resolved {
    /// Canonical absolute path.
    pub path: PathBuf,
    /// `(dev, ino)` of every directory the object was reached through, from `/` down to
    /// its parent.
    pub ancestors: Vec<(u64, u64)>,
    fd: OwnedFd,
    parent: OwnedFd,
    name: OsString,
}

impl Resolved {
    /// The `O_PATH` fd of the object.
    pub fn fd(&self) -> &OwnedFd {
        &self.fd
    }

    /// Opens the object for reading, by name in its parent directory without following a
    /// symlink, and checks it is still the object resolved. FIFOs are opened non-blocking
    /// so a pipe never hangs the caller.
    pub fn open_read(&self) -> io::Result<std::fs::File> {
        self.reopen(
            OFlags::RDONLY | OFlags::NOCTTY | OFlags::NONBLOCK,
            "the object was replaced while it was being resolved",
        )
        .map(std::fs::File::from)
    }

    /// Opens the object as a directory (readable), checking it is the object resolved.
    pub fn open_dir(&self) -> io::Result<OwnedFd> {
        self.reopen(
            OFlags::RDONLY | OFlags::DIRECTORY,
            "the directory was replaced while it was being resolved",
        )
    }

    fn reopen(&self, flags: OFlags, replaced: &str) -> io::Result<OwnedFd> {
        let fd = rustix::fs::openat(
            &self.parent,
            self.name.as_os_str(),
            flags | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        let now = rustix::fs::fstat(&fd)?;
        let then = rustix::fs::fstat(&self.fd)?;
        if (now.st_dev, now.st_ino) != (then.st_dev, then.st_ino) {
            return Err(io::Error::other(replaced.to_string()));
        }
        Ok(fd)
    }
}

/// Resolves the absolute path `given` from the host's `/` (see the module docs). Every
/// symlink met is passed to `judge` first; its error refuses the path, naming the link.
/// `Ok(None)` when the object, or a directory above it, does not exist.
pub fn resolve(
    given: &Path,
    judge: &mut dyn FnMut(&Link<'_>) -> Result<(), String>,
) -> Result<Option<Resolved>, Error> {
    let io = |op: &'static str, e: Errno| Error::Io {
        op,
        source: e.into(),
    };
    let rootfd = rustix::fs::openat(
        CWD,
        "/",
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| io("open /", e))?;
    let root_st = rustix::fs::fstat(&rootfd).map_err(|e| io("stat", e))?;
    let mut queue = components(given);
    // Directories reached so far, each with its O_PATH fd and stat; the root is implicit.
    let mut stack: Vec<(OsString, OwnedFd, rustix::fs::Stat)> = Vec::new();
    let mut links = 0;
    let here = |stack: &[(OsString, OwnedFd, rustix::fs::Stat)]| {
        let mut p = PathBuf::from("/");
        for (n, _, _) in stack {
            p.push(n);
        }
        p
    };
    while let Some(comp) = queue.pop_front() {
        if comp == ".." {
            stack.pop();
            continue;
        }
        let (dir, dir_st) = stack
            .last()
            .map_or((rootfd.as_fd(), &root_st), |(_, fd, st)| (fd.as_fd(), st));
        let fd = match rustix::fs::openat(
            dir,
            comp.as_os_str(),
            OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        ) {
            Ok(fd) => fd,
            Err(Errno::NOENT) => return Ok(None),
            Err(e) => return Err(io("open", e)),
        };
        let st = rustix::fs::fstat(&fd).map_err(|e| io("stat", e))?;
        let kind = FileType::from_raw_mode(st.st_mode);
        if kind == FileType::Symlink {
            let link_path = here(&stack).join(&comp);
            judge(&Link {
                path: &link_path,
                uid: st.st_uid,
                dir_uid: dir_st.st_uid,
            })
            .map_err(|rule| Error::Refused {
                path: link_path.clone(),
                rule,
            })?;
            links += 1;
            if links > MAX_SYMLINKS {
                return Err(io("resolve", Errno::LOOP));
            }
            let target =
                rustix::fs::readlinkat(&fd, "", Vec::new()).map_err(|e| io("readlink", e))?;
            let target = PathBuf::from(OsStr::from_bytes(target.to_bytes()));
            if target.is_absolute() {
                stack.clear();
            }
            for c in components(&target).into_iter().rev() {
                queue.push_front(c);
            }
            continue;
        }
        if !queue.is_empty() && kind != FileType::Directory {
            return Err(io("resolve", Errno::NOTDIR));
        }
        stack.push((comp, fd, st));
    }
    let path = here(&stack);
    let Some((name, fd, _)) = stack.pop() else {
        return Err(Error::Root);
    };
    let mut ancestors = vec![(root_st.st_dev, root_st.st_ino)];
    ancestors.extend(stack.iter().map(|(_, _, st)| (st.st_dev, st.st_ino)));
    let parent = match stack.pop() {
        Some((_, p, _)) => p,
        None => rootfd,
    };
    Ok(Some(Resolved {
        path,
        ancestors,
        fd,
        parent,
        name,
    }))
}

/// Path components as a queue of names (`..` kept, `.` and the root dropped).
fn components(p: &Path) -> VecDeque<OsString> {
    p.components()
        .filter_map(|c| match c {
            Component::Normal(n) => Some(n.to_os_string()),
            Component::ParentDir => Some(OsString::from("..")),
            _ => None,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use std::os::unix::fs::MetadataExt;

    /// Every link on the way is shown to the judge before it is followed (where it is, its
    /// owner, its directory's owner); the object reached is the link's target, by its
    /// canonical path. A refusal stops the walk naming the link.
    #[test]
    fn links_are_judged_before_they_are_followed() {
        let t = tempfile::tempdir().unwrap();
        let base = t.path().canonicalize().unwrap();
        std::fs::create_dir(base.join("real")).unwrap();
        std::fs::write(base.join("real/disk"), b"x").unwrap();
        std::os::unix::fs::symlink("real", base.join("via")).unwrap();
        let mut seen = Vec::new();
        let r = resolve(&base.join("via/disk"), &mut |l| {
            seen.push((l.path.to_path_buf(), l.uid, l.dir_uid));
            Ok(())
        })
        .unwrap()
        .expect("exists");
        assert_eq!(r.path, base.join("real/disk"));
        let dir_uid = std::fs::metadata(&base).unwrap().uid();
        let link_uid = std::fs::symlink_metadata(base.join("via")).unwrap().uid();
        assert_eq!(seen, vec![(base.join("via"), link_uid, dir_uid)]);
        let ino = std::fs::metadata(base.join("real/disk")).unwrap().ino();
        assert_eq!(rustix::fs::fstat(r.fd()).unwrap().st_ino, ino);
        assert_eq!(std::io::Read::bytes(r.open_read().unwrap()).count(), 1);

        let e = resolve(&base.join("via/disk"), &mut |_| Err("no".into())).unwrap_err();
        assert!(
            matches!(&e, Error::Refused { path, rule } if *path == base.join("via") && rule == "no"),
            "{e}"
        );
        // Missing objects are None, not errors; `/` has no parent to be reached through.
        assert!(
            resolve(&base.join("nope/x"), &mut |_| Ok(()))
                .unwrap()
                .is_none()
        );
        assert!(matches!(
            resolve(Path::new("/"), &mut |_| Ok(())),
            Err(Error::Root)
        ));
    }

    /// A loop of links ends with ELOOP after the kernel's limit, and a file used as a
    /// directory with ENOTDIR.
    #[test]
    fn loops_and_files_as_directories_fail() {
        let t = tempfile::tempdir().unwrap();
        let base = t.path().canonicalize().unwrap();
        std::os::unix::fs::symlink("b", base.join("a")).unwrap();
        std::os::unix::fs::symlink("a", base.join("b")).unwrap();
        let mut n = 0;
        let e = resolve(&base.join("a"), &mut |_| {
            n += 1;
            Ok(())
        })
        .unwrap_err();
        assert!(
            matches!(&e, Error::Io { source, .. } if source.raw_os_error() == Some(libc::ELOOP)),
            "{e}"
        );
        assert_eq!(n, MAX_SYMLINKS + 1);
        std::fs::write(base.join("f"), b"").unwrap();
        let e = resolve(&base.join("f/x"), &mut |_| Ok(())).unwrap_err();
        assert!(
            matches!(&e, Error::Io { source, .. } if source.raw_os_error() == Some(libc::ENOTDIR)),
            "{e}"
        );
    }
}
