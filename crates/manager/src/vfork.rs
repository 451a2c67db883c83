//! Starting a process without copying the manager's memory: `clone(CLONE_VM|CLONE_VFORK)`,
//! then the child's steps, then `execve`.
//!
//! `std::process::Command` forks when it has `pre_exec` steps: the kernel copies the
//! manager's page tables and the exec tears the copy down again, ~1 ms on this 2-core VM
//! for svirtd's 8 MB (against ~0.2 ms for `vfork`), on every start's critical path.
//! `posix_spawn` shares the memory instead but runs no steps of ours, and no crate offers
//! `vfork` with arbitrary steps; so this is written by hand, the way glibc's `posix_spawn`
//! is built:
//! - the child runs on a stack of its own (mapped here, with a guard page) in the
//!   manager's memory; the calling thread is suspended until the child has exec'd or
//!   exited (`CLONE_VFORK`), so nothing on its stack changes meanwhile;
//! - every signal is blocked around the clone; the child resets every handled signal to
//!   its default before unblocking, so no handler of the manager ever runs in it;
//! - the child makes system calls only, on data prepared before the clone (the same rule
//!   as every [`ChildHook`]): no allocation, no lock, nothing that relies on glibc's idea
//!   of the current thread (the credentials hooks use raw `setresuid` & co., which act on
//!   the calling task only);
//! - a failing step writes `(errno, step)` to a close-on-exec pipe and `_exit`s; the
//!   parent reads it after the clone returns (an empty read: the exec succeeded);
//! - the child's pidfd comes from the clone itself (`CLONE_PIDFD`);
//! - the credentials a hook takes change the dumpable flag of the memory they run in
//!   (`commit_creds` sets it to `fs.suid_dumpable`): the manager's flag is saved before the
//!   clone and put back after; and where `fs.suid_dumpable` is 1 (a process of the guest's
//!   uid could then attach to the child between `setresuid` and `execve`, and through it to
//!   the manager's memory) the child gets a copy of the memory instead (no `CLONE_VM`),
//!   as a fork would. Under SELinux the sysctl is not read (see `may_share_memory`).

use std::ffi::{CString, c_char, c_int, c_void};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use svirt_drivers::ChildHook;

/// Stack for the child's steps (the hooks are a few frames of system calls).
const STACK_SIZE: usize = 256 * 1024;

/// What the child does, in order: stdio, working directory, the steps, every fd but
/// stdio and `keep_fds` marked close-on-exec, `execve`.
pub(crate) struct Program {
    /// The binary.
    pub path: CString,
    /// `argv`, the binary's path first.
    pub argv: Vec<CString>,
    /// The whole environment, `NAME=value`.
    pub envp: Vec<CString>,
    /// The working directory (before the steps: a step may change it again).
    pub cwd: CString,
    /// Standard input, output and error.
    pub stdio: [RawFd; 3],
    /// Fds the program inherits under the same numbers.
    pub keep_fds: Vec<RawFd>,
    /// The steps, each with a name for errors.
    pub steps: Vec<(&'static str, ChildHook)>,
}

/// A child that failed before its exec: the step and the system error.
#[derive(Debug)]
pub(crate) struct ChildFailed {
    /// The step's name (`"exec"` for `execve` itself, `"set-up"` for stdio and cwd).
    pub step: &'static str,
    /// Its error.
    pub error: io::Error,
}

/// A started child.
#[derive(Debug)]
pub(crate) struct Started {
    /// Its pid.
    pub pid: i32,
    /// Its pidfd.
    pub pidfd: OwnedFd,
}

/// The data the child reads, laid out before the clone. Pointers into `Program` and the
/// vectors below, which outlive the child's use of them (the parent waits).
struct ChildData<'a> {
    prog: &'a mut Program,
    argv: Vec<*const c_char>,
    envp: Vec<*const c_char>,
    report: RawFd,
}

/// A mapped stack with a guard page below it.
struct Stack {
    base: *mut c_void,
    len: usize,
}

impl Stack {
    fn new() -> io::Result<Stack> {
        let page = 4096;
        let len = STACK_SIZE + page;
        // SAFETY: a fresh anonymous private mapping; no existing memory is affected.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_STACK,
                -1,
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let stack = Stack { base, len };
        // SAFETY: the lowest page of the mapping made above: an overflow faults there
        // instead of writing below the stack.
        if unsafe { libc::mprotect(base, page, libc::PROT_NONE) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(stack)
    }

    /// The highest address (stacks grow down on every architecture svirt runs on).
    fn top(&self) -> *mut c_void {
        // SAFETY: one past the end of the mapping, which `clone` takes as the stack top.
        unsafe { self.base.cast::<u8>().add(self.len).cast() }
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `new`, no longer used (the child has exec'd or
        // exited before `clone` returned).
        unsafe {
            libc::munmap(self.base, self.len);
        }
    }
}

/// Runs `prog` in a new process. `Err(Ok(failed))`: the child failed at a step (it has
/// exited and been reaped); `Err(Err(e))`: the process could not be made.
pub(crate) fn spawn(
    mut prog: Program,
) -> std::result::Result<Started, std::result::Result<ChildFailed, io::Error>> {
    // Non-blocking: when `clone` returns, the child has exec'd or exited, so its report (if
    // any) is already in the pipe; a copy of the write end that another thread's child
    // inherited (it leaves at that child's exec) must not make this read wait.
    let (report_rd, report_wr) = rustix::pipe::pipe_with(
        rustix::pipe::PipeFlags::CLOEXEC | rustix::pipe::PipeFlags::NONBLOCK,
    )
    .map_err(|e| Err(e.into()))?;
    let argv = prog
        .argv
        .iter()
        .map(|a| a.as_ptr())
        .chain(std::iter::once(std::ptr::null()))
        .collect();
    let envp = prog
        .envp
        .iter()
        .map(|a| a.as_ptr())
        .chain(std::iter::once(std::ptr::null()))
        .collect();
    let mut data = ChildData {
        prog: &mut prog,
        argv,
        envp,
        report: report_wr.as_raw_fd(),
    };
    let stack = Stack::new().map_err(Err)?;
    let mut pidfd: c_int = -1;
    let share_memory = may_share_memory();
    // SAFETY: prctl with integer arguments.
    let dumpable = unsafe { libc::prctl(libc::PR_GET_DUMPABLE, 0, 0, 0, 0) };
    let mut flags = libc::CLONE_VFORK | libc::CLONE_PIDFD | libc::SIGCHLD;
    if share_memory {
        flags |= libc::CLONE_VM;
    }
    // SAFETY: sigset operations on a set we own; pthread_sigmask on the calling thread.
    let old = unsafe {
        let mut all: libc::sigset_t = std::mem::zeroed();
        let mut old: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&mut all);
        libc::pthread_sigmask(libc::SIG_SETMASK, &all, &mut old);
        old
    };
    // SAFETY: `child_main` only reads `data` (alive: this thread is suspended until the
    // child execs or exits, CLONE_VFORK) and runs on `stack`; see the module comment.
    let pid = unsafe {
        libc::clone(
            child_main,
            stack.top(),
            flags,
            (&mut data as *mut ChildData<'_>).cast(),
            &mut pidfd as *mut c_int,
        )
    };
    let clone_err = io::Error::last_os_error();
    // SAFETY: restores the mask saved above on the calling thread, and the process's
    // dumpable flag the child's credential change may have set on the shared memory.
    unsafe {
        libc::pthread_sigmask(libc::SIG_SETMASK, &old, std::ptr::null_mut());
        if dumpable >= 0 {
            libc::prctl(libc::PR_SET_DUMPABLE, dumpable as libc::c_ulong, 0, 0, 0);
        }
    }
    drop(stack);
    drop(data);
    drop(report_wr);
    if pid < 0 {
        return Err(Err(clone_err));
    }
    // SAFETY: the pidfd the kernel stored for CLONE_PIDFD, owned from here.
    let pidfd = unsafe { OwnedFd::from_raw_fd(pidfd) };
    let mut buf = [0u8; 8];
    let n = match rustix::io::read(&report_rd, &mut buf) {
        Ok(n) => n,
        Err(rustix::io::Errno::AGAIN) => 0,
        Err(e) => {
            reap(&pidfd);
            return Err(Err(io::Error::other(format!(
                "read the child's report: {e}"
            ))));
        }
    };
    // No report: the child exec'd (or was killed before it could: then QEMU's death is
    // seen on its pidfd while the start waits for QMP, and the start fails there).
    if n == 8 {
        let errno = i32::from_ne_bytes([buf[0], buf[1], buf[2], buf[3]]);
        let step = u32::from_ne_bytes([buf[4], buf[5], buf[6], buf[7]]) as usize;
        reap(&pidfd);
        let name = match step {
            0 => "set-up",
            s if s <= prog.steps.len() => prog.steps[s - 1].0,
            _ => "exec",
        };
        return Err(Ok(ChildFailed {
            step: name,
            error: io::Error::from_raw_os_error(errno),
        }));
    }
    Ok(Started { pid, pidfd })
}

/// Whether the child may share the manager's memory (decided once per process).
///
/// Not when `fs.suid_dumpable` is 1 (`SUID_DUMP_USER`): a process that changes its uid then
/// stays attachable by that uid, and until its exec the child's memory is the manager's.
/// Where SELinux runs the sysctl is not read: the reference policy does not let the
/// manager's domain read it (each read is an audited denial, which the lab counts), and it
/// keeps other domains from attaching to the manager's domain, which the child keeps until
/// its exec.
fn may_share_memory() -> bool {
    static SHARE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *SHARE.get_or_init(|| {
        if std::path::Path::new("/sys/fs/selinux/enforce").exists() {
            return true;
        }
        !std::fs::read_to_string("/proc/sys/fs/suid_dumpable").is_ok_and(|v| v.trim() == "1")
    })
}

/// Reaps the exited child behind `pidfd`.
fn reap(pidfd: &OwnedFd) {
    // SAFETY: waitid on our own pidfd with a siginfo we own.
    unsafe {
        let mut info: libc::siginfo_t = std::mem::zeroed();
        libc::waitid(
            libc::P_PIDFD,
            pidfd.as_raw_fd() as libc::id_t,
            &mut info,
            libc::WEXITED,
        );
    }
}

/// The child: runs the program's steps and execs; on failure reports `(errno, step)` and
/// exits 127. Step 0 is the set-up, 1..=n the steps, n+1 the exec.
extern "C" fn child_main(arg: *mut c_void) -> c_int {
    // SAFETY: `arg` is the parent's `ChildData`, alive and unchanged while the parent is
    // suspended; this child is its only user.
    let data = unsafe { &mut *arg.cast::<ChildData<'_>>() };
    // SAFETY: in the child, before exec; system calls on prepared data only.
    let (step, errno) = unsafe { run(data) };
    let mut out = [0u8; 8];
    out[..4].copy_from_slice(&errno.to_ne_bytes());
    out[4..].copy_from_slice(&(step as u32).to_ne_bytes());
    // SAFETY: a write of 8 bytes we own to the report pipe, then _exit (no atexit
    // handlers of the manager run in the child).
    unsafe {
        libc::write(data.report, out.as_ptr().cast(), out.len());
        libc::_exit(127)
    }
}

fn errno() -> i32 {
    io::Error::last_os_error()
        .raw_os_error()
        .unwrap_or(libc::EIO)
}

/// The child's sequence; returns only on failure: `(step, errno)`.
///
/// # Safety
/// Only in the child made by [`spawn`].
unsafe fn run(data: &mut ChildData<'_>) -> (usize, i32) {
    // SAFETY (all blocks below): system calls on fds, strings and pointer arrays built
    // before the clone; sigaction structures owned by this frame.
    unsafe {
        // No handler of the manager may run here: every handled signal goes back to its
        // default (ignored ones stay ignored, as across an exec), SIGPIPE too (Rust
        // ignores it; std's Command restores the default for children as well).
        for sig in 1..=libc::SIGRTMAX() {
            if sig == libc::SIGKILL || sig == libc::SIGSTOP {
                continue;
            }
            let mut old: libc::sigaction = std::mem::zeroed();
            if libc::sigaction(sig, std::ptr::null(), &mut old) != 0 {
                continue;
            }
            if old.sa_sigaction != libc::SIG_DFL
                && (old.sa_sigaction != libc::SIG_IGN || sig == libc::SIGPIPE)
            {
                let mut dfl: libc::sigaction = std::mem::zeroed();
                dfl.sa_sigaction = libc::SIG_DFL;
                libc::sigaction(sig, &dfl, std::ptr::null_mut());
            }
        }
        let prog = &mut *data.prog;
        for (to, from) in prog.stdio.iter().enumerate() {
            let to = to as c_int;
            // dup2 onto itself keeps close-on-exec: clear it instead.
            let r = if *from == to {
                libc::fcntl(to, libc::F_SETFD, 0)
            } else {
                libc::dup2(*from, to)
            };
            if r < 0 {
                return (0, errno());
            }
        }
        if libc::chdir(prog.cwd.as_ptr()) != 0 {
            return (0, errno());
        }
        for (i, (_, step)) in prog.steps.iter_mut().enumerate() {
            if let Err(e) = step() {
                return (i + 1, e.raw_os_error().unwrap_or(libc::EIO));
            }
        }
        let exec = prog.steps.len() + 1;
        // Everything not passed on purpose closes at exec (CLOEXEC rather than close:
        // the report pipe stays usable until then).
        if libc::syscall(
            libc::SYS_close_range,
            3 as libc::c_uint,
            libc::c_uint::MAX,
            libc::CLOSE_RANGE_CLOEXEC as libc::c_uint,
        ) != 0
        {
            return (exec, errno());
        }
        for &fd in &prog.keep_fds {
            if libc::fcntl(fd, libc::F_SETFD, 0) != 0 {
                return (exec, errno());
            }
        }
        let mut empty: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut empty);
        libc::pthread_sigmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut());
        libc::execve(prog.path.as_ptr(), data.argv.as_ptr(), data.envp.as_ptr());
        (exec, errno())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use std::os::fd::AsRawFd;

    fn program(script: &str, out: &std::fs::File, cwd: &std::path::Path) -> Program {
        Program {
            path: c"/bin/sh".to_owned(),
            argv: vec![
                c"/bin/sh".to_owned(),
                c"-c".to_owned(),
                CString::new(script).unwrap(),
            ],
            envp: vec![c"ONLY=this".to_owned()],
            cwd: CString::new(cwd.as_os_str().as_encoded_bytes()).unwrap(),
            stdio: [out.as_raw_fd(), out.as_raw_fd(), out.as_raw_fd()],
            keep_fds: Vec::new(),
            steps: Vec::new(),
        }
    }

    fn wait(s: &Started) -> i32 {
        // SAFETY: waitid on the child's pidfd with a siginfo we own.
        unsafe {
            let mut info: libc::siginfo_t = std::mem::zeroed();
            assert_eq!(
                libc::waitid(
                    libc::P_PIDFD,
                    s.pidfd.as_raw_fd() as libc::id_t,
                    &mut info,
                    libc::WEXITED
                ),
                0
            );
            info.si_status()
        }
    }

    fn mask() -> libc::sigset_t {
        // SAFETY: reads the calling thread's mask into a set we own.
        unsafe {
            let mut m: libc::sigset_t = std::mem::zeroed();
            libc::pthread_sigmask(libc::SIG_SETMASK, std::ptr::null(), &mut m);
            m
        }
    }

    fn same(a: &libc::sigset_t, b: &libc::sigset_t) -> bool {
        // SAFETY: sigismember on sets we own.
        (1..=libc::SIGRTMAX())
            .all(|s| unsafe { libc::sigismember(a, s) == libc::sigismember(b, s) })
    }

    /// The program runs with exactly the environment, working directory, stdio and fds
    /// given; the caller's signal mask is what it was.
    #[test]
    fn runs_with_what_it_is_given() {
        let dir = tempfile::tempdir().unwrap();
        let out_path = dir.path().join("out");
        let out = std::fs::File::create(&out_path).unwrap();
        let kept = std::fs::File::open("/dev/null").unwrap();
        let not_kept = std::fs::File::open("/dev/null").unwrap();
        let script = format!(
            "echo env=$(env | grep -v '^PWD=\\|^SHLVL=\\|^_=' | tr '\\n' ' '); echo cwd=$(pwd); \
             [ -e /proc/self/fd/{k} ] && echo kept; [ -e /proc/self/fd/{n} ] && echo leaked; exit 7",
            k = kept.as_raw_fd(),
            n = not_kept.as_raw_fd()
        );
        let mut p = program(&script, &out, dir.path());
        p.keep_fds = vec![kept.as_raw_fd()];
        let before = mask();
        let s = spawn(p).unwrap();
        assert!(same(&before, &mask()), "the caller's signal mask changed");
        assert_eq!(wait(&s), 7);
        let text = std::fs::read_to_string(&out_path).unwrap();
        assert!(text.contains("env=ONLY=this\n"), "{text}");
        assert!(
            text.contains(&format!("cwd={}\n", dir.path().display())),
            "{text}"
        );
        assert!(
            text.contains("kept\n") && !text.contains("leaked"),
            "{text}"
        );
    }

    /// A step that takes other ids (as DAC's hook does) leaves the caller's dumpable flag
    /// as it was (the kernel sets it on the memory the step runs in).
    #[test]
    fn credentials_leave_the_callers_dumpable_flag() {
        if !svirt_testkit::root("setresuid in the child") {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let out = std::fs::File::create(dir.path().join("out")).unwrap();
        // SAFETY: prctl with integer arguments on this process.
        unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 1, 0, 0, 0) };
        let mut p = program("exit 0", &out, dir.path());
        p.steps.push((
            "ids",
            Box::new(|| {
                // SAFETY: a raw setresuid acts on the calling task (the child) only.
                let r = unsafe { libc::syscall(libc::SYS_setresuid, 65534, 65534, 65534) };
                if r != 0 {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            }),
        ));
        let s = spawn(p).unwrap();
        assert_eq!(wait(&s), 0);
        // SAFETY: as above.
        assert_eq!(
            unsafe { libc::prctl(libc::PR_GET_DUMPABLE, 0, 0, 0, 0) },
            1,
            "the caller's dumpable flag changed"
        );
    }

    /// A failing step is reported by name and errno, and the program never runs; a missing
    /// binary is reported as the exec step.
    #[test]
    fn a_failing_step_or_exec_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        let mark = dir.path().join("ran");
        let out = std::fs::File::create(dir.path().join("out")).unwrap();
        let mut p = program(&format!("touch {}", mark.display()), &out, dir.path());
        p.steps.push(("first", Box::new(|| Ok(()))));
        p.steps.push((
            "second",
            Box::new(|| Err(io::Error::from_raw_os_error(libc::EACCES))),
        ));
        let f = spawn(p).unwrap_err().unwrap();
        assert_eq!(
            (f.step, f.error.raw_os_error()),
            ("second", Some(libc::EACCES))
        );
        assert!(!mark.exists());
        let mut p = program("true", &out, dir.path());
        p.path = c"/nonexistent/svirt-binary".to_owned();
        let f = spawn(p).unwrap_err().unwrap();
        assert_eq!(
            (f.step, f.error.raw_os_error()),
            ("exec", Some(libc::ENOENT))
        );
        let mut p = program("true", &out, dir.path());
        p.cwd = c"/nonexistent-dir".to_owned();
        let f = spawn(p).unwrap_err().unwrap();
        assert_eq!(
            (f.step, f.error.raw_os_error()),
            ("set-up", Some(libc::ENOENT))
        );
    }
}
