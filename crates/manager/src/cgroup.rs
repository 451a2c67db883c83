//! Per-guest cgroups, v1 (one directory per controller hierarchy) or v2 (one directory).
//!
//! The layout is detected under a configurable root (`/sys/fs/cgroup` normally). On this
//! kind of host the controllers are v1 and `unified` is a controller-less cgroup2: v1 is
//! used then. The manager joins QEMU to its group(s) from the parent, right after the
//! spawn, by writing the pid to `cgroup.procs` files opened beforehand: the attach (which
//! write-locks the kernel's `cgroup_threadgroup_rwsem`, an RCU grace period) overlaps
//! QEMU's own start-up instead of delaying its exec.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::error::{ManagerError, Result};

/// Which cgroup interface is used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Layout {
    /// v1: `<root>/memory` and `<root>/pids` hierarchies.
    V1 {
        /// The memory hierarchy.
        memory: PathBuf,
        /// The pids hierarchy.
        pids: PathBuf,
    },
    /// v2: one hierarchy with the memory and pids controllers available.
    V2 {
        /// Its mount point.
        root: PathBuf,
    },
    /// No usable cgroup hierarchy.
    None {
        /// Why.
        reason: String,
    },
}

fn controllers(dir: &Path) -> Vec<String> {
    fs::read_to_string(dir.join("cgroup.controllers"))
        .map(|s| s.split_whitespace().map(str::to_string).collect())
        .unwrap_or_default()
}

impl Layout {
    /// Detects the layout under `root`.
    pub fn detect(root: &Path) -> Layout {
        let c = controllers(root);
        if c.iter().any(|x| x == "memory") && c.iter().any(|x| x == "pids") {
            return Layout::V2 {
                root: root.to_path_buf(),
            };
        }
        let (memory, pids) = (root.join("memory"), root.join("pids"));
        if memory.join("memory.limit_in_bytes").exists() && pids.join("cgroup.procs").exists() {
            return Layout::V1 { memory, pids };
        }
        let unified = root.join("unified");
        let c = controllers(&unified);
        if c.iter().any(|x| x == "memory") && c.iter().any(|x| x == "pids") {
            return Layout::V2 { root: unified };
        }
        Layout::None {
            reason: format!(
                "no memory+pids controllers under {} (neither v1 hierarchies nor cgroup2)",
                root.display()
            ),
        }
    }

    /// One line for logs.
    pub fn describe(&self) -> String {
        match self {
            Layout::V1 { memory, pids } => format!(
                "cgroup v1 (memory at {}, pids at {})",
                memory.display(),
                pids.display()
            ),
            Layout::V2 { root } => format!("cgroup v2 at {} (memory, pids)", root.display()),
            Layout::None { reason } => format!("no cgroups: {reason}"),
        }
    }

    /// The directories a guest named `name` under `parent` uses (its name escaped by
    /// [`group_name`]).
    pub fn guest_dirs(&self, parent: &str, name: &str) -> Vec<PathBuf> {
        let name = group_name(name);
        let name = name.as_str();
        match self {
            Layout::V1 { memory, pids } => {
                vec![memory.join(parent).join(name), pids.join(parent).join(name)]
            }
            Layout::V2 { root } => vec![root.join(parent).join(name)],
            Layout::None { .. } => vec![],
        }
    }
}

/// The cgroup directory name of a guest: its name, unless that could be (or be taken for)
/// one of the files the kernel puts in every group (`cgroup.procs`, `memory.max`,
/// `tasks`, `notify_on_release`, `release_agent`: all contain a dot or are one of the
/// three) or begins with `_` or `.`; then `_` + its name. Injective: an escaped name
/// starts with `_`, an unescaped one never does.
pub fn group_name(name: &str) -> String {
    let reserved = matches!(name, "tasks" | "notify_on_release" | "release_agent");
    if reserved || name.starts_with('_') || name.contains('.') {
        format!("_{name}")
    } else {
        name.to_string()
    }
}

fn cg_err(path: &Path, source: io::Error) -> ManagerError {
    ManagerError::Cgroup {
        path: path.to_path_buf(),
        source,
    }
}

fn write_file(path: &Path, value: &str) -> Result<()> {
    let mut f = OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(|e| cg_err(path, e))?;
    f.write_all(value.as_bytes()).map_err(|e| cg_err(path, e))
}

fn mkdir_p(path: &Path) -> Result<()> {
    match fs::create_dir_all(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(cg_err(path, e)),
    }
}

/// A guest's cgroup, created with its limits.
#[derive(Debug)]
pub struct GuestCgroup {
    dirs: Vec<PathBuf>,
    procs: Vec<File>,
}

impl GuestCgroup {
    /// Creates the guest's group(s) with `memory_bytes` and `pids` limits, and opens the
    /// `cgroup.procs` files [`Self::join`] writes to. A stale group of the same name (left by a
    /// crash) is emptied and reused.
    pub fn create(
        layout: &Layout,
        parent: &str,
        name: &str,
        memory_bytes: u64,
        pids: u64,
    ) -> Result<GuestCgroup> {
        let dirs = layout.guest_dirs(parent, name);
        match layout {
            Layout::None { reason } => {
                return Err(ManagerError::Cgroup {
                    path: PathBuf::new(),
                    source: io::Error::other(reason.clone()),
                });
            }
            Layout::V2 { root } => {
                // Controllers must be enabled in every ancestor's subtree_control.
                enable_v2(root, &root.join(parent))?;
            }
            Layout::V1 { .. } => {}
        }
        let mut cg = GuestCgroup {
            dirs: Vec::new(),
            procs: Vec::new(),
        };
        for d in &dirs {
            if let Err(e) = mkdir_p(d) {
                cg.remove_quiet();
                return Err(e);
            }
            cg.dirs.push(d.clone());
        }
        let r = (|| -> Result<()> {
            match layout {
                Layout::V1 { .. } => {
                    write_file(
                        &dirs[0].join("memory.limit_in_bytes"),
                        &memory_bytes.to_string(),
                    )?;
                    write_file(&dirs[1].join("pids.max"), &pids.to_string())?;
                }
                Layout::V2 { .. } => {
                    write_file(&dirs[0].join("memory.max"), &memory_bytes.to_string())?;
                    // Swap would let the guest exceed memory.max silently.
                    let _ = write_file(&dirs[0].join("memory.swap.max"), "0");
                    write_file(&dirs[0].join("pids.max"), &pids.to_string())?;
                }
                Layout::None { .. } => {}
            }
            for d in &dirs {
                let p = d.join("cgroup.procs");
                let f = OpenOptions::new()
                    .write(true)
                    .open(&p)
                    .map_err(|e| cg_err(&p, e))?;
                cg.procs.push(f);
            }
            Ok(())
        })();
        if let Err(e) = r {
            cg.remove_quiet();
            return Err(e);
        }
        Ok(cg)
    }

    /// The directories.
    pub fn dirs(&self) -> &[PathBuf] {
        &self.dirs
    }

    /// Raw fds of the opened `cgroup.procs` files.
    pub fn procs_fds(&self) -> Vec<RawFd> {
        self.procs.iter().map(|f| f.as_raw_fd()).collect()
    }

    /// Moves process `pid` (all its threads) into every group. Idempotent.
    pub fn join(&self, pid: i32) -> Result<()> {
        let text = pid.to_string();
        for (f, d) in self.procs.iter().zip(&self.dirs) {
            // One write(2) per file: cgroup.procs takes one pid per write.
            let mut w: &File = f;
            w.write_all(text.as_bytes())
                .map_err(|e| cg_err(&d.join("cgroup.procs"), e))?;
        }
        Ok(())
    }

    /// Drops the open files (the parent keeps nothing open on the group).
    pub fn close_files(&mut self) {
        self.procs.clear();
    }

    fn remove_quiet(&mut self) {
        self.procs.clear();
        let _ = remove_dirs(&self.dirs, Duration::from_secs(2));
    }
}

fn enable_v2(root: &Path, parent: &Path) -> Result<()> {
    // Walk from root to parent enabling +memory +pids in each level's subtree_control.
    let rel = parent.strip_prefix(root).unwrap_or(Path::new(""));
    let mut cur = root.to_path_buf();
    for comp in rel.components() {
        let ctl = cur.join("cgroup.subtree_control");
        let have = fs::read_to_string(&ctl).unwrap_or_default();
        for c in ["memory", "pids"] {
            if !have.split_whitespace().any(|x| x == c) {
                write_file(&ctl, &format!("+{c}"))?;
            }
        }
        cur.push(comp);
        mkdir_p(&cur)?;
    }
    let ctl = cur.join("cgroup.subtree_control");
    let have = fs::read_to_string(&ctl).unwrap_or_default();
    for c in ["memory", "pids"] {
        if !have.split_whitespace().any(|x| x == c) {
            write_file(&ctl, &format!("+{c}"))?;
        }
    }
    Ok(())
}

/// The pids in the groups.
pub fn pids_in(dirs: &[PathBuf]) -> Vec<i32> {
    let mut out = Vec::new();
    for d in dirs {
        if let Ok(s) = fs::read_to_string(d.join("cgroup.procs")) {
            out.extend(s.lines().filter_map(|l| l.trim().parse::<i32>().ok()));
        }
    }
    out.sort_unstable();
    out.dedup();
    out
}

/// SIGKILLs every process in the groups (used for a guest whose start was interrupted: its
/// QEMU may run without the manager knowing its pid) and waits until they are gone.
pub fn kill_all(dirs: &[PathBuf], timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        let pids = pids_in(dirs);
        if pids.is_empty() {
            return true;
        }
        for p in pids {
            // SAFETY: kill(2) with a pid read from the guest's own cgroup; a pid we do not
            // own cannot be in a group only we create.
            unsafe {
                libc::kill(p, libc::SIGKILL);
            }
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Removes the groups (after their processes are gone). Retries while the kernel still
/// reports them busy (exiting tasks leave their group asynchronously).
pub fn remove_dirs(dirs: &[PathBuf], timeout: Duration) -> Result<()> {
    let deadline = Instant::now() + timeout;
    for d in dirs {
        loop {
            match fs::remove_dir(d) {
                Ok(()) => break,
                Err(e) if e.kind() == io::ErrorKind::NotFound => break,
                Err(e) if Instant::now() < deadline && e.raw_os_error() == Some(libc::EBUSY) => {
                    std::thread::sleep(Duration::from_millis(2));
                }
                Err(e) => return Err(cg_err(d, e)),
            }
        }
    }
    Ok(())
}

/// Removes the parent groups if empty (tests; the daemon keeps its parent).
pub fn remove_parent(layout: &Layout, parent: &str) {
    let dirs: Vec<PathBuf> = match layout {
        Layout::V1 { memory, pids } => vec![memory.join(parent), pids.join(parent)],
        Layout::V2 { root } => vec![root.join(parent)],
        Layout::None { .. } => vec![],
    };
    for d in dirs {
        let _ = fs::remove_dir(d);
    }
}

/// Moves `pid` into each existing group of `dirs` (a reattached guest whose join may not
/// have happened before the crash).
pub fn join_dirs(dirs: &[PathBuf], pid: i32) -> Result<()> {
    for d in dirs {
        write_file(&d.join("cgroup.procs"), &pid.to_string())?;
    }
    Ok(())
}
