//! Host checks behind `svirt host-validate`: what this host offers svirt, one line per
//! check, like `virt-host-validate`.
//!
//! Every check *tries* the thing rather than trusting a file: KVM runs a one-instruction
//! guest, QEMU is asked over QMP, the cgroup controllers are looked up where they live.
//! Nothing is left behind. The checks only read the host's configuration: securityfs is not
//! mounted when it is missing, the line says so. The security drivers' checks are theirs
//! (each registration's `host_checks`, [`svirt_drivers::host_check`]): this module names
//! no driver. The host's pseudo-filesystems are read below a root ([`Host`]), so tests can
//! point them at a fake tree.

use std::ffi::CString;
use std::fs;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::mpsc;
use std::time::Duration;

use svirt_drivers::host_check::check;
pub use svirt_drivers::host_check::{Check, Host, HostView, Status, io_text};

/// Every check, in the order `svirt host-validate` prints them: QEMU, KVM, the LSMs, each
/// security driver's checks (registry order, each with its xattr checks in `image_dirs`)
/// and the BPF LSM's, then cgroups.
pub fn run(root: &Path, emulator: &str, image_dirs: &[PathBuf]) -> Vec<Check> {
    let host = Host::new(root);
    let mut checks = Vec::new();
    checks.extend(qemu_checks(emulator));
    checks.extend(kvm_checks(&host));
    if host.path("/dev/kvm").exists() {
        checks.push(qemu_kvm_check(emulator));
    }
    let lsms = host.active_lsms();
    checks.push(lsm_check(&lsms));
    checks.extend(svirt_drivers::registry::host_checks(&HostView {
        host: &host,
        lsms: &lsms,
        image_dirs,
    }));
    checks.extend(cgroup_checks(&host));
    checks
}

fn qemu_checks(emulator: &str) -> Vec<Check> {
    match Command::new(emulator).arg("--version").output() {
        Ok(out) if out.status.success() => {
            let text = String::from_utf8_lossy(&out.stdout);
            let first = text.lines().next().unwrap_or("").trim().to_string();
            vec![check(
                "QEMU",
                format!("{emulator} runs"),
                Status::Pass,
                first,
            )]
        }
        Ok(out) => vec![check(
            "QEMU",
            format!("{emulator} runs"),
            Status::Fail,
            format!("--version exited with {}", out.status),
        )],
        Err(e) => vec![check(
            "QEMU",
            format!("{emulator} runs"),
            Status::Fail,
            format!("{e} (apt-get install qemu-system-x86)"),
        )],
    }
}

fn kvm_checks(host: &Host) -> Vec<Check> {
    let dev = host.path("/dev/kvm");
    let meta = match fs::metadata(&dev) {
        Ok(m) => m,
        Err(e) => {
            return vec![check(
                "KVM",
                "/dev/kvm exists",
                Status::Warn,
                format!("{e}: guests run under TCG (software emulation, slow)"),
            )];
        }
    };
    use std::os::unix::fs::MetadataExt;
    let mut out = vec![check(
        "KVM",
        "/dev/kvm exists",
        Status::Pass,
        format!(
            "owner {}:{} mode {:04o}",
            meta.uid(),
            meta.gid(),
            meta.mode() & 0o7777
        ),
    )];
    let (status, reason) = match kvm_try_run(&dev) {
        Ok(()) => (
            Status::Pass,
            "ran a one-instruction guest to HLT".to_string(),
        ),
        Err(e) => (Status::Warn, format!("{e}: guests run under TCG")),
    };
    out.push(check("KVM", "a guest can run", status, reason));
    out
}

/// Runs QEMU itself under KVM, stopped, and asks it over QMP: exactly the probe svirtd makes
/// for `--accel auto` (one implementation, so the two can never disagree). A host can pass the
/// raw KVM_RUN test and still fail QEMU's default CPU model (missing CPUID features, MSR
/// errors), which makes real guests hang.
fn qemu_kvm_check(emulator: &str) -> Check {
    let what = "QEMU runs guests with -accel kvm";
    let probe = crate::accel::probe_kvm(Path::new(emulator), Path::new("/dev/kvm"));
    let status = if probe.accel == "kvm" {
        Status::Pass
    } else {
        Status::Warn
    };
    check(
        "KVM",
        what,
        status,
        format!("svirtd's probe: {}", probe.reason),
    )
}

// ioctl numbers from <linux/kvm.h> (x86_64).
const KVM_GET_API_VERSION: libc::c_ulong = 0xAE00;
const KVM_CREATE_VM: libc::c_ulong = 0xAE01;
const KVM_GET_VCPU_MMAP_SIZE: libc::c_ulong = 0xAE04;
const KVM_CREATE_VCPU: libc::c_ulong = 0xAE41;
const KVM_SET_USER_MEMORY_REGION: libc::c_ulong = 0x4020_AE46;
const KVM_RUN: libc::c_ulong = 0xAE80;
const KVM_GET_REGS: libc::c_ulong = 0x8090_AE81;
const KVM_SET_REGS: libc::c_ulong = 0x4090_AE82;
const KVM_GET_SREGS: libc::c_ulong = 0x8138_AE83;
const KVM_SET_SREGS: libc::c_ulong = 0x4138_AE84;
const KVM_EXIT_HLT: u32 = 5;

fn ioctl(fd: &OwnedFd, req: libc::c_ulong, arg: libc::c_ulong) -> io::Result<i32> {
    // SAFETY: every caller passes a request whose argument is a value or a pointer to a
    // buffer of the size the request encodes, alive for the call.
    let r = unsafe { libc::ioctl(fd.as_raw_fd(), req, arg) };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

fn kvm_try_run(dev: &Path) -> Result<(), String> {
    let path = CString::new(dev.as_os_str().as_bytes()).map_err(|e| e.to_string())?;
    // SAFETY: a valid NUL-terminated path; the fd is owned right away.
    let raw = unsafe { libc::open(path.as_ptr(), libc::O_RDWR | libc::O_CLOEXEC) };
    if raw < 0 {
        return Err(format!("open /dev/kvm: {}", io::Error::last_os_error()));
    }
    // SAFETY: `raw` is a fresh fd nobody else owns.
    let kvm = unsafe { OwnedFd::from_raw_fd(raw) };
    let version =
        ioctl(&kvm, KVM_GET_API_VERSION, 0).map_err(|e| format!("KVM_GET_API_VERSION: {e}"))?;
    if version != 12 {
        return Err(format!("KVM API version {version}, expected 12"));
    }
    // The run may hang on a broken host (seen here: QEMU hangs at kernel entry), so it
    // happens on a thread we give up on after a timeout; process exit ends it.
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(kvm_run_hlt(&kvm));
    });
    match rx.recv_timeout(Duration::from_secs(3)) {
        Ok(r) => r,
        Err(_) => Err("KVM_RUN did not return within 3 s".into()),
    }
}

struct Mapping {
    ptr: *mut libc::c_void,
    len: usize,
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: ptr/len come from a successful mmap and are unmapped once.
        unsafe { libc::munmap(self.ptr, self.len) };
    }
}

fn mmap(len: usize, fd: Option<&OwnedFd>) -> io::Result<Mapping> {
    let (flags, raw) = match fd {
        Some(fd) => (libc::MAP_SHARED, fd.as_raw_fd()),
        None => (libc::MAP_PRIVATE | libc::MAP_ANONYMOUS, -1),
    };
    // SAFETY: a fresh mapping, no address hint.
    let ptr = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            flags,
            raw,
            0,
        )
    };
    if ptr == libc::MAP_FAILED {
        Err(io::Error::last_os_error())
    } else {
        Ok(Mapping { ptr, len })
    }
}

fn kvm_run_hlt(kvm: &OwnedFd) -> Result<(), String> {
    let vm_raw = ioctl(kvm, KVM_CREATE_VM, 0).map_err(|e| format!("KVM_CREATE_VM: {e}"))?;
    // SAFETY: the ioctl returned a new fd.
    let vm = unsafe { OwnedFd::from_raw_fd(vm_raw) };
    let mem = mmap(0x1000, None).map_err(|e| format!("mmap guest memory: {e}"))?;
    // SAFETY: the mapping is 4096 bytes, writable.
    unsafe { *(mem.ptr as *mut u8) = 0xf4 }; // hlt
    // struct kvm_userspace_memory_region { u32 slot, u32 flags, u64 gpa, u64 size, u64 uaddr }
    let region: [u64; 4] = [0, 0, 0x1000, mem.ptr as u64];
    ioctl(
        &vm,
        KVM_SET_USER_MEMORY_REGION,
        region.as_ptr() as libc::c_ulong,
    )
    .map_err(|e| format!("KVM_SET_USER_MEMORY_REGION: {e}"))?;
    let vcpu_raw = ioctl(&vm, KVM_CREATE_VCPU, 0).map_err(|e| format!("KVM_CREATE_VCPU: {e}"))?;
    // SAFETY: the ioctl returned a new fd.
    let vcpu = unsafe { OwnedFd::from_raw_fd(vcpu_raw) };
    let size = ioctl(kvm, KVM_GET_VCPU_MMAP_SIZE, 0)
        .map_err(|e| format!("KVM_GET_VCPU_MMAP_SIZE: {e}"))?;
    let run = mmap(size as usize, Some(&vcpu)).map_err(|e| format!("mmap kvm_run: {e}"))?;

    // Real mode, code segment at 0, so the guest executes the byte at guest-physical 0.
    let mut sregs = [0u8; 312];
    ioctl(&vcpu, KVM_GET_SREGS, sregs.as_mut_ptr() as libc::c_ulong)
        .map_err(|e| format!("KVM_GET_SREGS: {e}"))?;
    sregs[0..8].copy_from_slice(&0u64.to_ne_bytes()); // cs.base
    sregs[12..14].copy_from_slice(&0u16.to_ne_bytes()); // cs.selector
    ioctl(&vcpu, KVM_SET_SREGS, sregs.as_ptr() as libc::c_ulong)
        .map_err(|e| format!("KVM_SET_SREGS: {e}"))?;
    let mut regs = [0u64; 18];
    ioctl(&vcpu, KVM_GET_REGS, regs.as_mut_ptr() as libc::c_ulong)
        .map_err(|e| format!("KVM_GET_REGS: {e}"))?;
    regs[16] = 0; // rip
    regs[17] = 2; // rflags: bit 1 is reserved-one
    ioctl(&vcpu, KVM_SET_REGS, regs.as_ptr() as libc::c_ulong)
        .map_err(|e| format!("KVM_SET_REGS: {e}"))?;
    ioctl(&vcpu, KVM_RUN, 0).map_err(|e| format!("KVM_RUN: {e}"))?;
    // SAFETY: kvm_run is at least a page; exit_reason is the u32 at offset 8.
    let reason = unsafe { *((run.ptr as *const u8).add(8) as *const u32) };
    drop(run);
    if reason == KVM_EXIT_HLT {
        Ok(())
    } else {
        Err(format!(
            "KVM_RUN exited with reason {reason}, expected HLT ({KVM_EXIT_HLT})"
        ))
    }
}

fn lsm_check(lsms: &Result<Vec<String>, String>) -> Check {
    match lsms {
        Ok(l) => check("LSM", "active security modules", Status::Pass, l.join(",")),
        Err(e) => check("LSM", "active security modules", Status::Warn, e.clone()),
    }
}

const CGROUP2_SUPER_MAGIC: i64 = 0x6367_7270;
const TMPFS_MAGIC: i64 = 0x0102_1994;

fn fs_magic(path: &Path) -> io::Result<i64> {
    let c = CString::new(path.as_os_str().as_bytes())
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    // SAFETY: zeroed statfs is a valid out-buffer.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: valid path and out-pointer.
    if unsafe { libc::statfs(c.as_ptr(), &mut st) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(st.f_type as i64)
}

fn cgroup_checks(host: &Host) -> Vec<Check> {
    let root = host.path("/sys/fs/cgroup");
    let magic = match fs_magic(&root) {
        Ok(m) => m,
        Err(e) => {
            return vec![check(
                "cgroup",
                "layout",
                Status::Fail,
                format!("/sys/fs/cgroup: {e}"),
            )];
        }
    };
    let mut out = Vec::new();
    if magic == CGROUP2_SUPER_MAGIC {
        let ctrls = host
            .read("/sys/fs/cgroup/cgroup.controllers")
            .unwrap_or_default();
        out.push(check(
            "cgroup",
            "layout",
            Status::Pass,
            format!(
                "v2 (unified) at /sys/fs/cgroup, controllers: {}",
                ctrls.trim()
            ),
        ));
        for c in ["memory", "pids"] {
            let ok = ctrls.split_whitespace().any(|x| x == c);
            out.push(check(
                "cgroup",
                format!("'{c}' controller"),
                if ok { Status::Pass } else { Status::Fail },
                if ok {
                    "available in cgroup v2".to_string()
                } else {
                    format!("not in /sys/fs/cgroup/cgroup.controllers: no {c} limit for guests")
                },
            ));
        }
        return out;
    }
    if magic != TMPFS_MAGIC {
        return vec![check(
            "cgroup",
            "layout",
            Status::Fail,
            format!(
                "/sys/fs/cgroup is neither cgroup2 nor a tmpfs of v1 hierarchies (magic {magic:#x})"
            ),
        )];
    }
    let v2 = host.mounts_of("cgroup2");
    let layout = if v2.is_empty() {
        "v1".to_string()
    } else {
        format!("hybrid: v1 controllers, cgroup2 at {}", v2.join(","))
    };
    out.push(check("cgroup", "layout", Status::Pass, layout));
    let v1 = host.mounts_of("cgroup");
    for c in ["memory", "pids"] {
        let dir = format!("/sys/fs/cgroup/{c}");
        let mounted = v1.iter().any(|m| m == &dir)
            || fs_magic(&host.path(&dir))
                .map(|m| m == 0x0027_e0eb)
                .unwrap_or(false);
        out.push(check(
            "cgroup",
            format!("'{c}' controller"),
            if mounted { Status::Pass } else { Status::Fail },
            if mounted {
                format!("v1 hierarchy at {dir}")
            } else {
                format!("{dir} is not a mounted v1 hierarchy")
            },
        ));
    }
    out
}
