//! The compromised VMM: runs (as `qemu-system-x86_64 -name guest=NAME`) in the guest's
//! domain, attempts every operation the attack plan gives it and writes the errno of each
//! to its results file. It cannot print: a confined domain may not use the console fds.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::thread::sleep;
use std::time::{Duration, Instant};

use crate::error::{Context, Error, Result, errno_name, io_errno_name};
use crate::plan::{Action, Attack, Op, parse_pids};
use crate::selinux;

/// The uid a `chown` attack gives its target (any uid but the file's owner needs CAP_CHOWN).
pub const CHOWN_UID: u32 = 4242;

/// Default attack plan location inside the lab.
pub const DEFAULT_ATTACK: &str = "/lab/etc/attack.plan";

/// Find the guest name in qemu-style arguments: `-name guest=NAME,...` or `-name NAME`.
pub fn guest_name(args: &[String]) -> Option<String> {
    let i = args.iter().position(|a| a == "-name" || a == "--name")?;
    let v = args.get(i + 1)?;
    let v = v.strip_prefix("guest=").unwrap_or(v);
    let name = v.split(',').next().unwrap_or(v);
    (!name.is_empty()).then(|| name.to_string())
}

/// Attempt guest `name`'s operations of `attack` and write their outcomes to its
/// results file. Fails if the plan has no results file for this guest.
pub fn attack(name: &str, attack: &Attack) -> Result<()> {
    let results = attack
        .results
        .get(name)
        .ok_or_else(|| Error::msg(format!("no results file for guest {name}")))?;
    // The manager pre-creates and labels the file at the guest's level; never create it here.
    let mut out = OpenOptions::new()
        .write(true)
        .open(results)
        .ctx(|| format!("opening results {}", results.display()))?;
    let me = selinux::process_attr("self", "current").unwrap_or_else(|e| format!("?({e})"));
    writeln!(out, "context {me}").ctx(|| "writing results".to_string())?;

    let ops: Vec<&Op> = attack.ops.iter().filter(|o| o.guest == name).collect();
    let peers = if ops.iter().any(|o| o.action.targets_process()) {
        match &attack.peers {
            Some(p) => Some(wait_peers(p, Duration::from_secs(60))?),
            None => None,
        }
    } else {
        None
    };

    for op in ops {
        let outcome = perform(op, peers.as_deref());
        writeln!(out, "op {} {outcome}", op.name).ctx(|| "writing results".to_string())?;
    }
    writeln!(out, "END").ctx(|| "writing results".to_string())?;
    out.sync_all().ctx(|| "syncing results".to_string())
}

/// Stay alive like a running VMM: the other guest's signal and ptrace probes need a live
/// target, and a VMM runs until its manager stops it. Bounded so a lost probe cannot
/// outlive its test for long.
pub fn linger(d: Duration) {
    let until = Instant::now() + d;
    while Instant::now() < until {
        sleep(Duration::from_millis(200));
    }
}

fn wait_peers(path: &Path, timeout: Duration) -> Result<Vec<(String, i32)>> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok(text) = fs::read_to_string(path) {
            let (pids, end) = parse_pids(&text)?;
            if end {
                return Ok(pids);
            }
        }
        if Instant::now() > deadline {
            return Err(Error::msg(format!(
                "peers file {} never completed",
                path.display()
            )));
        }
        sleep(Duration::from_millis(50));
    }
}

/// Attempt one operation; `ok` or the errno name.
pub fn perform(op: &Op, peers: Option<&[(String, i32)]>) -> String {
    match op.action {
        Action::Read => file_op(&op.target, |p| {
            let mut f = File::open(p)?;
            let mut b = [0u8; 1];
            f.read(&mut b).map(|_| ())
        }),
        Action::Write => file_op(&op.target, |p| {
            let mut f = OpenOptions::new().write(true).open(p)?;
            f.write_all(b"probe").map(|_| ())
        }),
        Action::Stat => file_op(&op.target, |p| fs::symlink_metadata(p).map(|_| ())),
        Action::Chown => file_op(&op.target, |p| {
            std::os::unix::fs::chown(p, Some(CHOWN_UID), None)
        }),
        Action::Connect => file_op(&op.target, |p| {
            std::os::unix::net::UnixStream::connect(p).map(|_| ())
        }),
        Action::Bpf => bpf_map_create(),
        Action::Signal | Action::Signull | Action::Ptrace => {
            let Some(pid) = peers
                .and_then(|p| p.iter().find(|(n, _)| *n == op.target))
                .map(|(_, pid)| *pid)
            else {
                return "NOPEER".to_string();
            };
            process_op(op.action, pid)
        }
    }
}

fn file_op(target: &str, f: impl FnOnce(&Path) -> std::io::Result<()>) -> String {
    match f(&PathBuf::from(target)) {
        Ok(()) => "ok".to_string(),
        Err(e) => io_errno_name(&e),
    }
}

/// bpf(BPF_MAP_CREATE) of a one-entry array map, closed at once: `ok` or the errno.
fn bpf_map_create() -> String {
    const BPF_MAP_CREATE: libc::c_long = 0;
    const BPF_MAP_TYPE_ARRAY: u32 = 2;
    // union bpf_attr's map-create part: map_type, key_size, value_size, max_entries.
    let mut attr = [0u32; 32];
    attr[0] = BPF_MAP_TYPE_ARRAY;
    attr[1] = 4;
    attr[2] = 4;
    attr[3] = 1;
    // SAFETY: bpf(2) reads `size` bytes of attr, which lives across the call.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_MAP_CREATE,
            attr.as_mut_ptr(),
            std::mem::size_of_val(&attr),
        )
    };
    if fd < 0 {
        return errno_name(std::io::Error::last_os_error().raw_os_error().unwrap_or(0));
    }
    // SAFETY: a fresh fd this call returned.
    unsafe { libc::close(fd as libc::c_int) };
    "ok".to_string()
}

fn process_op(action: Action, pid: i32) -> String {
    // SAFETY: kill/ptrace take plain integers; a wrong pid only yields an errno.
    let rc = unsafe {
        match action {
            // SIGWINCH is ignored by default: if the policy wrongly allowed it, the
            // target keeps running and the report still shows the decision.
            Action::Signal => libc::kill(pid, libc::SIGWINCH),
            Action::Signull => libc::kill(pid, 0),
            _ => libc::ptrace(libc::PTRACE_SEIZE, pid, 0usize, 0usize) as libc::c_int,
        }
    };
    if rc == 0 {
        "ok".to_string()
    } else {
        errno_name(std::io::Error::last_os_error().raw_os_error().unwrap_or(0))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn qemu_style_names() {
        assert_eq!(
            guest_name(&s(&["-name", "guest=A,debug-threads=on"])).as_deref(),
            Some("A")
        );
        assert_eq!(
            guest_name(&s(&["-m", "1", "-name", "B"])).as_deref(),
            Some("B")
        );
        assert_eq!(guest_name(&s(&["-name"])), None);
        assert_eq!(guest_name(&s(&["-name", "guest="])), None);
    }

    #[test]
    fn operations_report_real_errnos() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("img");
        std::fs::write(&f, b"data").unwrap();
        let op = |action, target: &str| Op {
            guest: "A".into(),
            name: "x".into(),
            action,
            target: target.into(),
        };
        let fp = f.to_str().unwrap();
        assert_eq!(perform(&op(Action::Read, fp), None), "ok");
        assert_eq!(perform(&op(Action::Write, fp), None), "ok");
        assert_eq!(perform(&op(Action::Stat, fp), None), "ok");
        let missing = dir.path().join("nope");
        assert_eq!(
            perform(&op(Action::Read, missing.to_str().unwrap()), None),
            "ENOENT"
        );
        // Our own pid: signal 0 works; an unknown peer is reported, not guessed.
        let me = std::process::id() as i32;
        let peers = vec![("B".to_string(), me)];
        assert_eq!(perform(&op(Action::Signull, "B"), Some(&peers)), "ok");
        assert_eq!(perform(&op(Action::Signull, "C"), Some(&peers)), "NOPEER");
        // ptrace of oneself is always refused by the kernel (EPERM).
        assert_eq!(perform(&op(Action::Ptrace, "B"), Some(&peers)), "EPERM");
    }
}
