//! Stand-in manager: what svirtd will do inside the lab, reduced to the security steps.
//!
//! It runs in `virtd_t`, records every file's original label BEFORE changing it, labels
//! the plan's disks, starts each guest's VMM in `svirt_t:<level>` (exec context set
//! between fork and exec, as the reference does), waits for a stop request, kills and
//! reaps its guests itself, and restores the original labels.
//!
//! Interface with the scenario (the part svirtd must keep when it replaces this):
//! writes `STATE/pids` (`NAME PID` per guest, then `END`) once all guests run, and stops
//! when `STATE/stop` appears.

use std::ffi::CString;
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::thread::sleep;
use std::time::{Duration, Instant};

use crate::error::{Context, Error, Result};
use crate::plan::{DOMAIN_TYPE, Plan};
use crate::selinux::{self, ContextParts};

/// Options of `svirt-probe manager`.
pub struct Options {
    /// Guest plan.
    pub plan: PathBuf,
    /// State directory (writable by `virtd_t`).
    pub state: PathBuf,
    /// VMM executable (labeled `qemu_exec_t`).
    pub vmm: PathBuf,
    /// Give up waiting for the stop request after this long.
    pub timeout: Duration,
}

struct Log(File);

impl Log {
    fn line(&mut self, msg: &str) {
        // The log is diagnostics only; a failed write must not change the outcome.
        let _ = writeln!(self.0, "{msg}");
    }
}

/// Write `contents` to `path` so that readers never see a partial file.
fn write_atomic(path: &Path, contents: &str) -> Result<()> {
    let tmp = path.with_extension("tmp");
    fs::write(&tmp, contents).ctx(|| format!("writing {}", tmp.display()))?;
    fs::rename(&tmp, path).ctx(|| format!("renaming {} to {}", tmp.display(), path.display()))
}

/// Run the manager; returns an error if any step, including restore, failed.
pub fn run(opts: &Options) -> Result<()> {
    let log_path = opts.state.join("manager.log");
    let mut log = Log(OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .ctx(|| format!("opening {}", log_path.display()))?);
    let result = run_logged(opts, &mut log);
    match &result {
        Ok(()) => log.line("manager: done, ok"),
        Err(e) => log.line(&format!("manager: FAILED: {e}")),
    }
    let _ = fs::write(
        opts.state.join("done"),
        match &result {
            Ok(()) => "ok\n".to_string(),
            Err(e) => format!("error {e}\n"),
        },
    );
    result
}

fn run_logged(opts: &Options, log: &mut Log) -> Result<()> {
    let plan = Plan::load(&opts.plan)?;
    let own = selinux::process_attr("self", "current")?;
    log.line(&format!("manager: running as {own}"));
    let own = ContextParts::parse(&own)?;

    // Originals are recorded before the first change so that a crash mid-way can be undone.
    let mut originals = Vec::new();
    for d in &plan.disks {
        originals.push((d.path.clone(), selinux::file_label(&d.path)?));
    }
    let record: String = originals
        .iter()
        .map(|(p, c)| format!("{} {c}\n", p.display()))
        .collect();
    write_atomic(&opts.state.join("originals"), &record)?;

    let mut labeled = 0;
    let mut outcome = (|| -> Result<()> {
        for d in &plan.disks {
            let label = plan.planned_label(d)?;
            selinux::set_file_label(&d.path, &label)?;
            labeled += 1;
            log.line(&format!("manager: labeled {} {label}", d.path.display()));
        }
        Ok(())
    })();

    let mut children: Vec<(String, libc::pid_t, bool)> = Vec::new();
    if outcome.is_ok() {
        outcome = (|| -> Result<()> {
            for g in &plan.guests {
                let ctx = format!("{}:{}:{DOMAIN_TYPE}:{}", own.user, own.role, g.level);
                let pid = spawn_vmm(&opts.vmm, &g.name, &ctx)?;
                log.line(&format!("manager: started {} pid {pid} as {ctx}", g.name));
                children.push((g.name.clone(), pid, false));
            }
            let mut pids: String = children
                .iter()
                .map(|(n, p, _)| format!("{n} {p}\n"))
                .collect();
            pids.push_str("END\n");
            write_atomic(&opts.state.join("pids"), &pids)
        })();
    }

    if outcome.is_ok() {
        let stop = opts.state.join("stop");
        let deadline = Instant::now() + opts.timeout;
        while !stop.exists() {
            if Instant::now() > deadline {
                outcome = Err(Error::msg("no stop request before the timeout"));
                break;
            }
            reap_exited(&mut children, log);
            sleep(Duration::from_millis(50));
        }
    }

    // Stop: the manager is the guests' parent and reaps them itself (init reaps slowly).
    for (name, pid, reaped) in &mut children {
        if *reaped {
            continue;
        }
        // SAFETY: plain syscalls on pids this process forked and has not reaped yet.
        unsafe {
            libc::kill(*pid, libc::SIGKILL);
        }
        let mut status = 0;
        // SAFETY: status is a valid out pointer.
        let rc = unsafe { libc::waitpid(*pid, &mut status, 0) };
        *reaped = rc == *pid;
        log.line(&format!(
            "manager: stopped {name} pid {pid} status {status:#x}"
        ));
    }

    let mut restore_errors = Vec::new();
    for (path, original) in originals.iter().take(labeled) {
        match selinux::set_file_label(path, original) {
            Ok(()) => log.line(&format!("manager: restored {} {original}", path.display())),
            Err(e) => restore_errors.push(e.to_string()),
        }
    }
    outcome?;
    if !restore_errors.is_empty() {
        return Err(Error::msg(format!(
            "restore failed: {}",
            restore_errors.join("; ")
        )));
    }
    Ok(())
}

fn reap_exited(children: &mut [(String, libc::pid_t, bool)], log: &mut Log) {
    for (name, pid, reaped) in children.iter_mut().filter(|c| !c.2) {
        let mut status = 0;
        // SAFETY: status is a valid out pointer; WNOHANG never blocks.
        let rc = unsafe { libc::waitpid(*pid, &mut status, libc::WNOHANG) };
        if rc == *pid {
            *reaped = true;
            log.line(&format!(
                "manager: {name} pid {pid} exited early, status {status:#x}"
            ));
        }
    }
}

/// fork, set the exec context, point stdio at /dev/null, exec the VMM qemu-style.
fn spawn_vmm(vmm: &Path, name: &str, context: &str) -> Result<libc::pid_t> {
    let path = CString::new(vmm.as_os_str().as_bytes())
        .map_err(|_| Error::msg("VMM path contains NUL"))?;
    let argv: Vec<CString> = ["qemu-system-x86_64", "-name", &format!("guest={name}")]
        .iter()
        .map(|a| CString::new(*a).map_err(|_| Error::msg("argument contains NUL")))
        .collect::<Result<_>>()?;
    let mut argv_ptrs: Vec<*const libc::c_char> = argv.iter().map(|a| a.as_ptr()).collect();
    argv_ptrs.push(std::ptr::null());
    let devnull = c"/dev/null";

    // SAFETY: this process is single-threaded, so the child may allocate and use std
    // until exec; every path taken in the child ends in exec or _exit.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(std::io::Error::last_os_error()).ctx(|| "fork".to_string());
    }
    if pid == 0 {
        if selinux::set_exec_context(context).is_err() {
            // SAFETY: terminating the forked child without running parent cleanup.
            unsafe { libc::_exit(126) };
        }
        // The inherited stdio belongs to other domains; a confined VMM may not use it,
        // and handing it /dev/null avoids the kernel replacing it with AVC noise.
        // SAFETY: open/dup2/execv/_exit with valid NUL-terminated arguments.
        unsafe {
            let fd = libc::open(devnull.as_ptr(), libc::O_RDWR);
            if fd >= 0 {
                for target in 0..3 {
                    libc::dup2(fd, target);
                }
                if fd > 2 {
                    libc::close(fd);
                }
            }
            libc::execv(path.as_ptr(), argv_ptrs.as_ptr());
            libc::_exit(127);
        }
    }
    Ok(pid)
}
