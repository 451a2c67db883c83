//! Spawning QEMU (fork/exec with the child steps), pidfds, and process identity.

use std::ffi::CString;
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use svirt_drivers::ChildHook;

use crate::error::{ManagerError, Result};

/// A point in time before a fork, in the terms of `/proc/PID/stat` field 22.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SpawnFloor {
    /// `/proc/sys/kernel/random/boot_id` (start times count from boot).
    pub boot_id: String,
    /// Clock ticks since boot.
    pub ticks: u64,
}

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
    /// A file (the guest's pid file, opened by the parent) the child writes its pid into,
    /// at offset 0, before it gives up its parent-death signal.
    pub pid_fd: Option<RawFd>,
    /// The guest's `cgroup.procs` files (open for writing) the child moves itself into
    /// before it gives up its parent-death signal: a helper process (virtiofsd, swtpm) has
    /// no pid file, and is found and ended through its guest's cgroup from then on.
    pub cgroup_procs: Vec<RawFd>,
    /// Driver steps that must run before the jail (SELinux's exec label: it is written
    /// through `/proc`, which the jail does not show), in stack order.
    pub pre_jail_hooks: Vec<ChildHook>,
    /// The jail (its mount, network and IPC namespaces, built), joined after
    /// `pre_jail_hooks` and before `hooks`; `None` runs the VMM in the manager's
    /// namespaces.
    pub jail: Option<crate::jail::Jail>,
    /// Driver steps, in stack order (after the jail: DAC's ids, Landlock).
    pub hooks: Vec<ChildHook>,
    /// Whether the VMM may hold no capability whatever uid it runs as: the bounding set,
    /// the inheritable and the ambient set are emptied first thing in the child (the
    /// effective set stays for the jail's and the drivers' steps), so the exec gives
    /// QEMU none, even as root (a stack without DAC). Off only for an unconfined guest.
    pub drop_capabilities: bool,
}

/// `/proc/sys/kernel/cap_last_cap`: the highest capability this kernel knows.
fn cap_last_cap() -> io::Result<u32> {
    std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")?
        .trim()
        .parse()
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("cap_last_cap: {e}")))
}

/// Empties the bounding, inheritable and ambient capability sets of the calling process
/// (between fork and exec: system calls on the stack only). With those empty an exec
/// grants nothing, to root either: permitted' = (inheritable & file inheritable) |
/// (file permitted & bounding).
///
/// # Safety
/// Only system calls; callable between fork and exec.
unsafe fn drop_capability_sets(last_cap: u32) -> io::Result<()> {
    // SAFETY: prctl and capget/capset with integer arguments and buffers on this stack.
    unsafe {
        for cap in 0..=last_cap {
            cvt(libc::prctl(
                libc::PR_CAPBSET_DROP,
                cap as libc::c_ulong,
                0,
                0,
                0,
            ))?;
        }
        cvt(libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL as libc::c_ulong,
            0,
            0,
            0,
        ))?;
        // struct __user_cap_header_struct { u32 version; int pid; } and, for version 3,
        // two struct __user_cap_data_struct { u32 effective, permitted, inheritable; }.
        const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;
        let mut header: [u32; 2] = [LINUX_CAPABILITY_VERSION_3, 0];
        let mut data = [0u32; 6];
        if libc::syscall(libc::SYS_capget, header.as_mut_ptr(), data.as_mut_ptr()) != 0 {
            return Err(io::Error::last_os_error());
        }
        data[2] = 0;
        data[5] = 0;
        if libc::syscall(libc::SYS_capset, header.as_mut_ptr(), data.as_ptr()) != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
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

/// Starts the process (without copying the manager's memory: see [`crate::vfork`]). In
/// the child, in this order: stdio and working directory, parent-death signal (SIGKILL)
/// and die if the manager is already gone, write the pid to `pid_fd`, clear the
/// parent-death signal (QEMU must outlive the manager; from here a crash of the manager is
/// recovered through the pid file), own session, the bounding, inheritable and ambient
/// capability sets emptied (`drop_capabilities`), the pre-jail hooks (exec label), the jail
/// (see [`crate::jail`]: a failure is reported naming its step), the driver hooks (ids,
/// Landlock, no_new_privs), then every fd other than stdio and `keep_fds` marked
/// close-on-exec.
///
/// The child joins no cgroup: the parent does it ([`crate::cgroup::GuestCgroup::join`])
/// after this returns, while QEMU initialises. A cgroup attach write-locks the kernel's
/// `cgroup_threadgroup_rwsem` (an RCU grace period, ~12 ms here); in the child it sat on
/// the start's critical path.
pub fn spawn(req: SpawnRequest<'_>) -> Result<Spawned> {
    let parent = std::process::id() as libc::pid_t;
    let cstr = |what: &str, b: &[u8]| {
        CString::new(b).map_err(|_| ManagerError::Qemu(format!("exec: {what} contains NUL")))
    };
    let path = cstr("the binary's path", req.binary.as_os_str().as_bytes())?;
    let mut argv = vec![path.clone()];
    for a in req.args {
        argv.push(cstr("an argument", a.as_bytes())?);
    }
    let mut home = b"HOME=".to_vec();
    home.extend_from_slice(req.runtime_dir.as_os_str().as_bytes());
    let envp = vec![
        c"LC_ALL=C".to_owned(),
        c"PATH=/usr/sbin:/usr/bin:/sbin:/bin".to_owned(),
        cstr("the runtime directory", &home)?,
    ];
    let cwd = cstr(
        "the runtime directory",
        req.runtime_dir.as_os_str().as_bytes(),
    )?;
    let devnull =
        File::open("/dev/null").map_err(|e| ManagerError::Qemu(format!("open /dev/null: {e}")))?;
    let pid_fd = req.pid_fd;
    let cgroup_procs = req.cgroup_procs;
    let drop_caps = if req.drop_capabilities {
        Some(cap_last_cap().map_err(|e| ManagerError::Qemu(format!("exec: {e}")))?)
    } else {
        None
    };
    let mut steps: Vec<(&'static str, ChildHook)> = Vec::new();
    steps.push((
        "set-up",
        Box::new(move || {
            // SAFETY: system calls with integer arguments and a buffer on this stack.
            unsafe {
                cvt(libc::prctl(
                    libc::PR_SET_PDEATHSIG,
                    libc::SIGKILL as libc::c_ulong,
                    0,
                    0,
                    0,
                ))?;
                if libc::getppid() != parent {
                    // The manager died during the spawn.
                    return Err(io::Error::from_raw_os_error(libc::ESRCH));
                }
                // Until the pid is in the pid file nothing could find this process after
                // a crash of the manager: the parent-death signal covers that stretch.
                // After it, recovery finds it through the file (verified by start time,
                // argv and cwd), so QEMU may outlive its parent.
                if let Some(pid_fd) = pid_fd {
                    let mut buf = [0u8; 12];
                    let digits = format_pid(libc::getpid(), &mut buf);
                    if libc::pwrite(pid_fd, digits.as_ptr().cast(), digits.len(), 0)
                        != digits.len() as isize
                    {
                        return Err(io::Error::last_os_error());
                    }
                }
                // "0" moves the writer (cgroup v1 and v2).
                for &fd in &cgroup_procs {
                    if libc::write(fd, c"0".as_ptr().cast(), 1) != 1 {
                        return Err(io::Error::last_os_error());
                    }
                }
                cvt(libc::prctl(libc::PR_SET_PDEATHSIG, 0, 0, 0, 0))?;
                cvt(libc::setsid())?;
                if let Some(last) = drop_caps {
                    drop_capability_sets(last)?;
                }
            }
            Ok(())
        }),
    ));
    steps.extend(req.pre_jail_hooks.into_iter().map(|h| ("driver", h)));
    let jail_report = match req.jail {
        Some(j) => {
            let (h, r) = j.into_hook();
            steps.push(("jail", h));
            Some(r)
        }
        None => None,
    };
    steps.extend(req.hooks.into_iter().map(|h| ("driver", h)));
    let started = crate::vfork::spawn(crate::vfork::Program {
        path,
        argv,
        envp,
        cwd,
        stdio: [
            devnull.as_raw_fd(),
            req.log.as_raw_fd(),
            req.log.as_raw_fd(),
        ],
        keep_fds: req.keep_fds,
        steps,
    });
    let started = match started {
        Ok(s) => s,
        Err(Ok(failed)) => {
            return Err(match jail_report.as_ref().and_then(|r| r.failed_step()) {
                Some(step) if failed.step == "jail" => {
                    ManagerError::Qemu(format!("jail: {step}: {}", failed.error))
                }
                _ if failed.step == "set-up"
                    && failed.error.raw_os_error() == Some(libc::ESRCH) =>
                {
                    ManagerError::Qemu("exec: the manager died during the spawn".into())
                }
                _ => ManagerError::Qemu(format!(
                    "exec {}: {} (in the child's {} step)",
                    req.binary.display(),
                    failed.error,
                    failed.step
                )),
            });
        }
        Err(Err(e)) => {
            return Err(ManagerError::Qemu(format!(
                "exec {}: clone: {e}",
                req.binary.display()
            )));
        }
    };
    let pid = started.pid;
    let start_time =
        start_time(pid).map_err(|e| ManagerError::Qemu(format!("read /proc/{pid}/stat: {e}")))?;
    Ok(Spawned {
        pid,
        pidfd: started.pidfd,
        start_time,
    })
}

/// `pid` in decimal into `buf`, without allocating (it runs between fork and exec).
fn format_pid(pid: libc::pid_t, buf: &mut [u8; 12]) -> &[u8] {
    let mut n = pid.unsigned_abs();
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 || i == 0 {
            break;
        }
    }
    &buf[i..]
}

/// Now, as a [`SpawnFloor`]: every process forked later has a start time at or above it.
pub fn spawn_floor() -> io::Result<SpawnFloor> {
    let boot_id = std::fs::read_to_string("/proc/sys/kernel/random/boot_id")?
        .trim()
        .to_string();
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec we own.
    cvt(unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts) })?;
    // SAFETY: sysconf has no memory effects.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if hz <= 0 {
        return Err(io::Error::other("sysconf(_SC_CLK_TCK) failed"));
    }
    let ns = (ts.tv_sec as u128) * 1_000_000_000 + ts.tv_nsec as u128;
    // Field 22 is the task's boot-time start in ns, divided down the same way (floor), so
    // a later fork never shows a smaller value.
    Ok(SpawnFloor {
        boot_id,
        ticks: (ns * hz as u128 / 1_000_000_000) as u64,
    })
}

/// The QEMU a start forked before its pid was recorded, if it still runs: the pid read
/// from `pid_file` must name a live, non-zombie process of the same boot that started at
/// or after `floor`, whose argv carries `-name guest=<name>,…` and whose working directory
/// is `runtime_dir` (both set by the manager's spawn). Anything else (an exited QEMU whose
/// pid was reused, a file from an earlier boot) is not ours: None. Returns the pid and its
/// start time (to check again after `pidfd_open`).
pub fn find_unrecorded(
    proc_root: &Path,
    pid_file: &Path,
    name: &str,
    runtime_dir: &Path,
    floor: &SpawnFloor,
) -> Option<(i32, u64)> {
    let text = read_nofollow(pid_file)?;
    let pid: i32 = text.trim().parse().ok().filter(|p| *p > 0)?;
    let boot = std::fs::read_to_string(proc_root.join("sys/kernel/random/boot_id")).ok()?;
    if boot.trim() != floor.boot_id {
        return None;
    }
    let dir = proc_root.join(pid.to_string());
    let start = start_time_in(proc_root, pid).ok()?;
    if start < floor.ticks || !same_process(proc_root, pid, start) {
        return None;
    }
    let cmdline = std::fs::read(dir.join("cmdline")).ok()?;
    let want = format!("guest={},debug-threads=on", name.replace(',', ",,"));
    let mut args = cmdline.split(|b| *b == 0);
    let named = std::iter::from_fn(|| args.next())
        .collect::<Vec<_>>()
        .windows(2)
        .any(|w| w[0] == b"-name" && w[1] == want.as_bytes());
    if !named || !same_dir(&dir.join("cwd"), runtime_dir) {
        return None;
    }
    Some((pid, start))
}

/// Whether the process's `cwd` link names `dir`: the same inode (the link shows the
/// resolved path, which differs from `dir` when a component of it is a symlink), or the
/// same path (the directory was removed meanwhile).
fn same_dir(cwd_link: &Path, dir: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (std::fs::metadata(cwd_link), std::fs::metadata(dir)) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => std::fs::read_link(cwd_link).is_ok_and(|l| {
            let mut deleted = dir.as_os_str().to_os_string();
            deleted.push(" (deleted)");
            l == dir || l.as_os_str() == deleted
        }),
    }
}

fn read_nofollow(path: &Path) -> Option<String> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
        .ok()?;
    let mut s = String::new();
    f.by_ref().take(64).read_to_string(&mut s).ok()?;
    Some(s)
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
    wait_exited(pidfd, std::time::Duration::ZERO)
}

/// Waits up to `timeout` for the process behind the pidfd to exit (the pidfd becomes
/// readable once it is a zombie: reaping is not needed); whether it has. A timeout too
/// large to add to the clock (it may come from an API caller) is no limit.
pub fn wait_exited(pidfd: &OwnedFd, timeout: std::time::Duration) -> bool {
    let deadline = std::time::Instant::now().checked_add(timeout);
    loop {
        let mut p = libc::pollfd {
            fd: pidfd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // -1: no limit. A limit beyond poll's ~24 days is waited in slices.
        let ms = deadline.map_or(-1, |d| {
            let left = d.saturating_duration_since(std::time::Instant::now());
            i32::try_from(left.as_micros().div_ceil(1000)).unwrap_or(i32::MAX)
        });
        // SAFETY: one valid pollfd.
        let r = unsafe { libc::poll(&mut p, 1, ms) };
        if r > 0 {
            return true;
        }
        if r < 0 && io::Error::last_os_error().kind() != io::ErrorKind::Interrupted {
            return false;
        }
        if deadline.is_some_and(|d| std::time::Instant::now() >= d) {
            return false;
        }
    }
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
    wait_pidfd(pidfd, libc::WNOHANG)
}

/// `waitid(P_PIDFD, WEXITED | extra)`: how our child ended, `None` when it has not (with
/// `WNOHANG`) or is not our child.
fn wait_pidfd(pidfd: &OwnedFd, extra: libc::c_int) -> io::Result<Option<ExitStatus>> {
    // SAFETY: zeroed siginfo is a valid out-parameter.
    let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
    // SAFETY: waitid with P_PIDFD on an fd we own, writing into `info`.
    let r = unsafe {
        libc::waitid(
            libc::P_PIDFD,
            pidfd.as_raw_fd() as libc::id_t,
            &mut info,
            libc::WEXITED | extra,
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

/// Reaps a helper process (virtiofsd, swtpm) of the guest `guest` when it exits, on a
/// thread of its own, and logs how it ended: the manager is its parent and must not leave
/// a zombie behind. (After a restart of the manager it is init's child and init reaps it.)
pub fn reap_in_background(pidfd: OwnedFd, guest: String, what: String) {
    let name = what.clone();
    let spawned = std::thread::Builder::new()
        .name("svirt-reap".into())
        .spawn(move || {
            if let Ok(Some(st)) = wait_pidfd(&pidfd, 0) {
                let how = match (st.code, st.signal) {
                    (Some(c), _) => format!("exit code {c}"),
                    (None, Some(s)) => format!("signal {s}"),
                    (None, None) => "unknown".into(),
                };
                tracing::info!(guest = %guest, "{what} ended ({how})");
            }
        });
    if let Err(e) = spawned {
        tracing::warn!("{name}: no thread to reap it when it ends: {e}");
    }
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
    use std::process::Command;

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

    #[test]
    fn waits_of_any_length_end_when_the_process_does() {
        let mut child = Command::new("sleep").arg("0.2").spawn().unwrap();
        let fd = pidfd_open(child.id() as i32).unwrap();
        assert!(!pidfd_exited(&fd));
        assert!(!wait_exited(&fd, std::time::Duration::from_millis(20)));
        // Too large to add to the clock: no limit, no panic.
        assert!(wait_exited(&fd, std::time::Duration::MAX));
        assert!(wait_exited(&fd, std::time::Duration::from_secs(u64::MAX)));
        child.wait().unwrap();
    }

    #[test]
    fn pid_digits() {
        let mut b = [0u8; 12];
        assert_eq!(format_pid(0, &mut b), b"0");
        assert_eq!(format_pid(7, &mut b), b"7");
        assert_eq!(format_pid(4194304, &mut b), b"4194304");
        assert_eq!(format_pid(i32::MAX, &mut b), b"2147483647");
    }

    #[test]
    fn floor_is_not_after_a_later_fork() {
        let floor = spawn_floor().unwrap();
        let mut child = Command::new("sleep").arg("5").spawn().unwrap();
        let t = start_time(child.id() as i32).unwrap();
        let _ = child.kill();
        let _ = child.wait();
        assert!(t >= floor.ticks, "child start {t} < floor {}", floor.ticks);
        // And a process started long before (pid 1) is below it.
        assert!(start_time(1).unwrap() <= floor.ticks);
    }
}
