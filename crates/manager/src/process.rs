//! Spawning QEMU (fork/exec with the child steps), pidfds, and process identity.

use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};

use svirt_drivers::ChildHook;

use crate::error::{ManagerError, Result};

/// What to start.
pub struct SpawnRequest<'a> {
    /// Binary.
    pub binary: &'a Path,
    /// Arguments.
    pub args: &'a [String],
    /// The guest's runtime directory (`HOME` and working directory of QEMU).
    pub runtime_dir: &'a Path,
    /// QEMU's stdout and stderr.
    pub log: File,
    /// Fds QEMU inherits under the same numbers (the QMP listener).
    pub keep_fds: Vec<RawFd>,
    /// `cgroup.procs` files to join.
    pub cgroup_fds: Vec<RawFd>,
    /// Driver steps, in stack order.
    pub hooks: Vec<ChildHook>,
}

/// A started process.
#[derive(Debug)]
pub struct Spawned {
    /// Pid.
    pub pid: i32,
    /// Its pidfd.
    pub pidfd: OwnedFd,
    /// Start time in clock ticks after boot (`/proc/PID/stat` field 22).
    pub start_time: u64,
}

fn cvt(r: libc::c_int) -> io::Result<libc::c_int> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

/// Starts the process. In the child, in this order: die if the manager is already gone
/// (parent-death signal held only until the cgroup join, then cleared: QEMU must outlive
/// the manager), own session, join the cgroup(s), driver hooks (exec label, ids, Landlock,
/// no_new_privs), then every fd other than stdio and `keep_fds` marked close-on-exec.
pub fn spawn(req: SpawnRequest<'_>) -> Result<Spawned> {
    let parent = std::process::id() as libc::pid_t;
    let log2 = req
        .log
        .try_clone()
        .map_err(|e| ManagerError::Qemu(format!("dup log: {e}")))?;
    let mut cmd = Command::new(req.binary);
    cmd.args(req.args)
        .env_clear()
        .env("LC_ALL", "C")
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .env("HOME", req.runtime_dir)
        .current_dir(req.runtime_dir)
        .stdin(Stdio::null())
        .stdout(Stdio::from(req.log))
        .stderr(Stdio::from(log2));
    let cgroup_fds = req.cgroup_fds;
    let keep = req.keep_fds;
    let mut hooks = req.hooks;
    // SAFETY: the closure runs between fork and exec; it only makes system calls on data
    // prepared before the fork (fd numbers, the parent pid) and runs the drivers' hooks,
    // which obey the same rule (see svirt_drivers::ChildHook).
    unsafe {
        cmd.pre_exec(move || {
            cvt(libc::prctl(
                libc::PR_SET_PDEATHSIG,
                libc::SIGKILL as libc::c_ulong,
                0,
                0,
                0,
            ))?;
            if libc::getppid() != parent {
                return Err(io::Error::other("manager died during spawn"));
            }
            cvt(libc::setsid())?;
            for &fd in &cgroup_fds {
                if libc::write(fd, b"0".as_ptr().cast(), 1) != 1 {
                    return Err(io::Error::last_os_error());
                }
            }
            // In the cgroup now: a crash of the manager from here on is recovered by
            // killing the group, so QEMU may outlive its parent.
            cvt(libc::prctl(libc::PR_SET_PDEATHSIG, 0, 0, 0, 0))?;
            for h in hooks.iter_mut() {
                h()?;
            }
            // Everything not passed on purpose closes at exec. CLOEXEC rather than close:
            // std's exec-error pipe and the hooks' fds stay usable until exec.
            if libc::syscall(
                libc::SYS_close_range,
                3 as libc::c_uint,
                libc::c_uint::MAX,
                libc::CLOSE_RANGE_CLOEXEC as libc::c_uint,
            ) != 0
            {
                return Err(io::Error::last_os_error());
            }
            for &fd in &keep {
                cvt(libc::fcntl(fd, libc::F_SETFD, 0))?;
            }
            Ok(())
        });
    }
    let child = cmd
        .spawn()
        .map_err(|e| ManagerError::Qemu(format!("exec {}: {e}", req.binary.display())))?;
    let pid = child.id() as i32;
    // The manager reaps through the pidfd (waitid P_PIDFD), not through `Child`.
    drop(child);
    let pidfd =
        pidfd_open(pid).map_err(|e| ManagerError::Qemu(format!("pidfd_open {pid}: {e}")))?;
    let start_time =
        start_time(pid).map_err(|e| ManagerError::Qemu(format!("read /proc/{pid}/stat: {e}")))?;
    Ok(Spawned {
        pid,
        pidfd,
        start_time,
    })
}

/// Opens a pidfd for `pid`.
pub fn pidfd_open(pid: i32) -> io::Result<OwnedFd> {
    // SAFETY: plain syscall; the returned fd is owned by us.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh fd returned by the kernel.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// Sends `sig` through a pidfd (no pid reuse race).
pub fn pidfd_signal(pidfd: &OwnedFd, sig: i32) -> io::Result<()> {
    // SAFETY: plain syscall on an fd we own.
    let r = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            pidfd.as_raw_fd(),
            sig,
            std::ptr::null::<libc::siginfo_t>(),
            0,
        )
    };
    if r < 0 {
        let e = io::Error::last_os_error();
        // ESRCH: already exited, which is what the caller wants anyway.
        if e.raw_os_error() == Some(libc::ESRCH) {
            return Ok(());
        }
        return Err(e);
    }
    Ok(())
}

/// Whether the process behind the pidfd has exited (non-blocking).
pub fn pidfd_exited(pidfd: &OwnedFd) -> bool {
    let mut p = libc::pollfd {
        fd: pidfd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd.
    let r = unsafe { libc::poll(&mut p, 1, 0) };
    r > 0
}

/// How a reaped child ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExitStatus {
    /// Exit code.
    pub code: Option<i32>,
    /// Terminating signal.
    pub signal: Option<i32>,
}

/// Reaps our child through its pidfd, if it has exited. `Ok(None)`: still running, or not
/// our child (a guest reattached after a restart is init's child: its status is lost).
pub fn reap(pidfd: &OwnedFd) -> io::Result<Option<ExitStatus>> {
    // SAFETY: zeroed siginfo is a valid out-parameter.
    let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
    // SAFETY: waitid with P_PIDFD on an fd we own, writing into `info`.
    let r = unsafe {
        libc::waitid(
            libc::P_PIDFD,
            pidfd.as_raw_fd() as libc::id_t,
            &mut info,
            libc::WEXITED | libc::WNOHANG,
        )
    };
    if r < 0 {
        let e = io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::ECHILD) {
            return Ok(None);
        }
        return Err(e);
    }
    // SAFETY: waitid filled info (si_pid 0 means nothing to reap yet).
    let (pid, code, status) = unsafe { (info.si_pid(), info.si_code, info.si_status()) };
    if pid == 0 {
        return Ok(None);
    }
    Ok(Some(if code == libc::CLD_EXITED {
        ExitStatus {
            code: Some(status),
            signal: None,
        }
    } else {
        ExitStatus {
            code: None,
            signal: Some(status),
        }
    }))
}

/// Start time of `pid` in clock ticks after boot (`/proc/PID/stat` field 22).
pub fn start_time(pid: i32) -> io::Result<u64> {
    start_time_in(Path::new("/proc"), pid)
}

/// Like [`start_time`] under another proc root (tests).
pub fn start_time_in(proc_root: &Path, pid: i32) -> io::Result<u64> {
    let stat = std::fs::read_to_string(proc_root.join(pid.to_string()).join("stat"))?;
    parse_start_time(&stat).ok_or_else(|| io::Error::other("malformed stat"))
}

/// Field 22 of a stat line. The command name (field 2) may hold spaces and parentheses:
/// fields are counted after the LAST `)`.
pub fn parse_start_time(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    // After ')' come fields 3.. ; field 22 is the 20th of them.
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// Whether `pid` still is the process that started at `start` (not exited, not a zombie,
/// not a reused pid).
pub fn same_process(proc_root: &Path, pid: i32, start: u64) -> bool {
    let Ok(stat) = std::fs::read_to_string(proc_root.join(pid.to_string()).join("stat")) else {
        return false;
    };
    let zombie = stat
        .rfind(')')
        .and_then(|i| stat[i + 1..].split_whitespace().next())
        .is_some_and(|s| s == "Z" || s == "X");
    !zombie && parse_start_time(&stat) == Some(start)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_time_after_tricky_comm() {
        let line = "1234 (qemu) (x) 1) S 1 1234 1234 0 -1 4194560 100 0 0 0 5 3 0 0 20 0 3 0 987654 1000 100";
        assert_eq!(parse_start_time(line), Some(987654));
        assert_eq!(parse_start_time("garbage"), None);
        let me = std::process::id() as i32;
        let t = start_time(me).unwrap();
        assert!(same_process(Path::new("/proc"), me, t));
        assert!(!same_process(Path::new("/proc"), me, t + 1));
    }
}
