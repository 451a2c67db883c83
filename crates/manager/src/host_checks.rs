//! Host checks behind `svirt host-validate`: what this host offers svirt, one line per
//! check, like `virt-host-validate`.
//!
//! Every check *tries* the thing rather than trusting a file: KVM runs a one-instruction
//! guest, Landlock is asked for its ABI, a BPF-LSM program is loaded (and closed at once),
//! xattrs are written on a temporary file. Nothing is left behind. The checks only read
//! the host's configuration: securityfs is not mounted when it is missing, the line says so.
//! The host's pseudo-filesystems are read below a root ([`Host`]), so tests can point them
//! at a fake tree.

use std::ffi::CString;
use std::fs;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::mpsc;
use std::time::Duration;

use serde::Serialize;

/// Outcome of one check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Status {
    /// Works as svirt needs.
    Pass,
    /// Works partly, or svirt falls back to something weaker.
    Warn,
    /// Does not work.
    Fail,
}

impl Status {
    /// `PASS`, `WARN` or `FAIL`.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Pass => "PASS",
            Status::Warn => "WARN",
            Status::Fail => "FAIL",
        }
    }
}

/// One line of the report.
#[derive(Debug, Clone, Serialize)]
pub struct Check {
    /// The area (`QEMU`, `KVM`, `LSM`, `SELinux`, `Landlock`, `BPF-LSM`, `cgroup`, `xattr`, `DAC`).
    pub component: &'static str,
    /// What was checked.
    pub check: String,
    /// The outcome.
    pub status: Status,
    /// Why, always present.
    pub reason: String,
}

fn check(
    component: &'static str,
    what: impl Into<String>,
    status: Status,
    reason: impl Into<String>,
) -> Check {
    Check {
        component,
        check: what.into(),
        status,
        reason: reason.into(),
    }
}

/// Every check, in the order `svirt host-validate` prints them: QEMU, KVM, the LSMs,
/// SELinux, Landlock, BPF-LSM, cgroups, DAC, and xattrs in each of `image_dirs`.
pub fn run(root: &Path, emulator: &str, image_dirs: &[PathBuf]) -> Vec<Check> {
    let host = Host::new(root);
    let mut checks = Vec::new();
    checks.extend(qemu_checks(emulator));
    checks.extend(kvm_checks(&host));
    if host.path("/dev/kvm").exists() {
        checks.push(qemu_kvm_check(emulator));
    }
    let lsms = host.active_lsms();
    checks.push(lsm_check(&host, &lsms));
    checks.push(selinux_check(&host, &lsms));
    checks.push(landlock_check(&lsms));
    checks.push(bpf_lsm_check(&host, &lsms));
    checks.extend(cgroup_checks(&host));
    checks.push(dac_check());
    for dir in image_dirs {
        checks.extend(xattr_checks(dir));
    }
    checks
}

/// An I/O error's text without std's " (os error N)" suffix: what people are shown (the
/// host checks, the CLI's messages).
pub fn io_text(e: &io::Error) -> String {
    let s = e.to_string();
    match s.find(" (os error ") {
        Some(i) => s[..i].to_string(),
        None => s,
    }
}

/// The host's pseudo-filesystems, below a root (tests can point it at a fake tree).
pub struct Host {
    root: PathBuf,
}

impl Host {
    /// A host whose `/proc` and `/sys` are under `root`.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Host { root: root.into() }
    }

    fn path(&self, abs: &str) -> PathBuf {
        self.root.join(abs.trim_start_matches('/'))
    }

    fn read(&self, abs: &str) -> io::Result<String> {
        fs::read_to_string(self.path(abs))
    }

    /// Mount points of a filesystem type, from `/proc/self/mountinfo`.
    fn mounts_of(&self, fstype: &str) -> Vec<String> {
        let Ok(info) = self.read("/proc/self/mountinfo") else {
            return Vec::new();
        };
        info.lines()
            .filter_map(|l| {
                let (left, right) = l.split_once(" - ")?;
                let mount_point = left.split(' ').nth(4)?;
                let ty = right.split(' ').next()?;
                (ty == fstype).then(|| mount_point.to_string())
            })
            .collect()
    }

    /// The active LSMs, or why they are unknown.
    pub fn active_lsms(&self) -> Result<Vec<String>, String> {
        if !self
            .mounts_of("securityfs")
            .iter()
            .any(|m| m == "/sys/kernel/security")
        {
            return Err("securityfs is not mounted on /sys/kernel/security \
                        (mount -t securityfs none /sys/kernel/security to list LSMs)"
                .into());
        }
        match self.read("/sys/kernel/security/lsm") {
            Ok(s) => Ok(s
                .trim()
                .split(',')
                .filter(|x| !x.is_empty())
                .map(String::from)
                .collect()),
            Err(e) => Err(format!("cannot read /sys/kernel/security/lsm: {e}")),
        }
    }
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

fn lsm_check(_host: &Host, lsms: &Result<Vec<String>, String>) -> Check {
    match lsms {
        Ok(l) => check("LSM", "active security modules", Status::Pass, l.join(",")),
        Err(e) => check("LSM", "active security modules", Status::Warn, e.clone()),
    }
}

fn selinux_check(host: &Host, lsms: &Result<Vec<String>, String>) -> Check {
    let what = "mode";
    let mounted = host
        .mounts_of("selinuxfs")
        .iter()
        .any(|m| m == "/sys/fs/selinux");
    if mounted {
        return match host
            .read("/sys/fs/selinux/enforce")
            .map(|s| s.trim().to_string())
        {
            Ok(v) if v == "1" => check(
                "SELinux",
                what,
                Status::Pass,
                "enforcing: svirt uses the selinux driver",
            ),
            Ok(_) => check(
                "SELinux",
                what,
                Status::Warn,
                "permissive: labels are set but denials are only logged",
            ),
            Err(e) => check(
                "SELinux",
                what,
                Status::Warn,
                format!("cannot read /sys/fs/selinux/enforce: {e}"),
            ),
        };
    }
    let listed = matches!(lsms, Ok(l) if l.iter().any(|x| x == "selinux"));
    match lsms {
        _ if listed => check(
            "SELinux",
            what,
            Status::Warn,
            "active but selinuxfs is not mounted on /sys/fs/selinux (no policy loaded?)",
        ),
        Ok(_) => check(
            "SELinux",
            what,
            Status::Warn,
            "disabled (not an active LSM): svirt confines guests with DAC + Landlock",
        ),
        Err(_) => check(
            "SELinux",
            what,
            Status::Warn,
            "disabled (no selinuxfs on /sys/fs/selinux): svirt confines guests with DAC + Landlock",
        ),
    }
}

/// `landlock_create_ruleset(NULL, 0, LANDLOCK_CREATE_RULESET_VERSION)`.
fn landlock_abi() -> io::Result<i64> {
    // SAFETY: with the VERSION flag the kernel reads no memory.
    let r = unsafe {
        libc::syscall(
            libc::SYS_landlock_create_ruleset,
            std::ptr::null::<u8>(),
            0usize,
            1u32,
        )
    };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

fn landlock_check(lsms: &Result<Vec<String>, String>) -> Check {
    let what = "ABI";
    match landlock_abi() {
        Ok(abi) => {
            let mut covers = vec!["filesystem"];
            if abi >= 4 {
                covers.push("TCP bind/connect");
            }
            if abi >= 6 {
                covers.push("signal and abstract-socket scoping");
            }
            let status = if abi >= 1 { Status::Pass } else { Status::Warn };
            check(
                "Landlock",
                what,
                status,
                format!("ABI {abi}: restricts {}", covers.join(", ")),
            )
        }
        Err(e) => {
            let why = match e.raw_os_error() {
                Some(libc::EOPNOTSUPP) => {
                    "built in but disabled at boot (add landlock to lsm=)".to_string()
                }
                Some(libc::ENOSYS) => "not built into this kernel".to_string(),
                _ => e.to_string(),
            };
            let listed = match lsms {
                Ok(l) if !l.iter().any(|x| x == "landlock") => "; landlock is not an active LSM",
                _ => "",
            };
            check("Landlock", what, Status::Fail, format!("{why}{listed}"))
        }
    }
}

// BPF constants from <linux/bpf.h>.
const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_PROG_TYPE_LSM: u32 = 29;
const BPF_LSM_MAC: u32 = 27;
const BTF_KIND_FUNC: u32 = 12;

/// Type id of a `FUNC` in a raw BTF blob (`/sys/kernel/btf/vmlinux`).
pub fn btf_find_func(btf: &[u8], name: &str) -> Option<u32> {
    let u32_at = |off: usize| -> Option<u32> {
        btf.get(off..off + 4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    };
    if btf.get(0..2)? != [0x9f, 0xeb] {
        return None; // not little-endian BTF
    }
    let hdr_len = u32_at(4)? as usize;
    let (type_off, type_len) = (u32_at(8)? as usize, u32_at(12)? as usize);
    let (str_off, str_len) = (u32_at(16)? as usize, u32_at(20)? as usize);
    let types = btf.get(hdr_len + type_off..hdr_len + type_off + type_len)?;
    let strings = btf.get(hdr_len + str_off..hdr_len + str_off + str_len)?;
    let name_at = |off: usize| -> Option<&[u8]> {
        let s = strings.get(off..)?;
        let end = s.iter().position(|&c| c == 0)?;
        Some(&s[..end])
    };
    let mut pos = 0usize;
    let mut id = 1u32;
    while pos + 12 <= types.len() {
        let word = |i: usize| {
            u32::from_le_bytes([
                types[pos + i],
                types[pos + i + 1],
                types[pos + i + 2],
                types[pos + i + 3],
            ])
        };
        let (name_off, info) = (word(0) as usize, word(4));
        let kind = (info >> 24) & 0x1f;
        let vlen = (info & 0xffff) as usize;
        if kind == BTF_KIND_FUNC && name_at(name_off)? == name.as_bytes() {
            return Some(id);
        }
        let extra = match kind {
            1 | 14 | 17 => 4,
            3 => 12,
            4 | 5 | 15 | 19 => vlen * 12,
            6 | 13 => vlen * 8,
            _ => 0,
        };
        pos += 12 + extra;
        id += 1;
    }
    None
}

/// Loads a trivial `lsm/file_open` program (`r0 = 0; exit`) and closes it at once.
fn bpf_lsm_try_load(btf_id: u32) -> Result<(), (io::Error, String)> {
    let insns: [u8; 16] = [0xb7, 0, 0, 0, 0, 0, 0, 0, 0x95, 0, 0, 0, 0, 0, 0, 0];
    let license = b"GPL\0";
    let mut log = vec![0u8; 4096];
    let mut attr = [0u8; 128];
    let put32 =
        |a: &mut [u8; 128], off: usize, v: u32| a[off..off + 4].copy_from_slice(&v.to_ne_bytes());
    let put64 =
        |a: &mut [u8; 128], off: usize, v: u64| a[off..off + 8].copy_from_slice(&v.to_ne_bytes());
    put32(&mut attr, 0, BPF_PROG_TYPE_LSM);
    put32(&mut attr, 4, 2);
    put64(&mut attr, 8, insns.as_ptr() as u64);
    put64(&mut attr, 16, license.as_ptr() as u64);
    put32(&mut attr, 24, 1);
    put32(&mut attr, 28, log.len() as u32);
    put64(&mut attr, 32, log.as_mut_ptr() as u64);
    attr[48..48 + 13].copy_from_slice(b"svirt_hvprobe");
    put32(&mut attr, 68, BPF_LSM_MAC);
    put32(&mut attr, 108, btf_id);
    // SAFETY: attr points to a 128-byte bpf_attr whose pointers reference live buffers.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_PROG_LOAD,
            attr.as_ptr(),
            attr.len() as u32,
        )
    };
    if fd < 0 {
        let err = io::Error::last_os_error();
        let text = String::from_utf8_lossy(&log[..log.iter().position(|&c| c == 0).unwrap_or(0)]);
        let last = text
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .unwrap_or("")
            .to_string();
        return Err((err, last));
    }
    // SAFETY: a new fd from the kernel; closing it unloads the never-attached program.
    drop(unsafe { OwnedFd::from_raw_fd(fd as i32) });
    Ok(())
}

fn bpf_lsm_check(host: &Host, lsms: &Result<Vec<String>, String>) -> Check {
    let what = "programs can load";
    let listed = match lsms {
        Ok(l) if l.iter().any(|x| x == "bpf") => "bpf is an active LSM",
        Ok(_) => "bpf is NOT an active LSM (programs would not be called)",
        Err(_) => "active LSMs unknown",
    };
    let btf = match fs::read(host.path("/sys/kernel/btf/vmlinux")) {
        Ok(b) => b,
        Err(e) => {
            return check(
                "BPF-LSM",
                what,
                Status::Warn,
                format!("no kernel BTF (/sys/kernel/btf/vmlinux: {e}); {listed}"),
            );
        }
    };
    let Some(id) = btf_find_func(&btf, "bpf_lsm_file_open") else {
        return check(
            "BPF-LSM",
            what,
            Status::Warn,
            format!("bpf_lsm_file_open not in kernel BTF (CONFIG_BPF_LSM off?); {listed}"),
        );
    };
    match bpf_lsm_try_load(id) {
        Ok(()) => check(
            "BPF-LSM",
            what,
            Status::Pass,
            format!("loaded and unloaded lsm/file_open; {listed}"),
        ),
        Err((e, log)) => {
            let hint = match e.raw_os_error() {
                Some(libc::EPERM) => {
                    " (refused before verification: no CAP_BPF/CAP_SYS_ADMIN, lockdown, or BPF trampolines unavailable)"
                }
                Some(ENOTSUPP_LINUX) => " (trampolines not supported)",
                _ => "",
            };
            let log = if log.is_empty() {
                String::new()
            } else {
                format!("; verifier: {log}")
            };
            check(
                "BPF-LSM",
                what,
                Status::Warn,
                format!(
                    "BPF_PROG_LOAD lsm/file_open: {}{hint}{log}; {listed}",
                    io_text(&e)
                ),
            )
        }
    }
}

/// ENOTSUPP (524) is kernel-internal and not in libc.
const ENOTSUPP_LINUX: i32 = 524;

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

fn dac_check() -> Check {
    // SAFETY: geteuid cannot fail.
    let euid = unsafe { libc::geteuid() };
    if euid == 0 {
        check(
            "DAC",
            "privileges to give each guest its own uid",
            Status::Pass,
            "running as root",
        )
    } else {
        check(
            "DAC",
            "privileges to give each guest its own uid",
            Status::Warn,
            format!("running as uid {euid}: svirtd must run as root"),
        )
    }
}

fn xattr_checks(dir: &Path) -> Vec<Check> {
    let what = |ns: &str| format!("{ns} xattrs in {}", dir.display());
    let file = match tempfile_in(dir) {
        Ok(f) => f,
        Err(e) => {
            return vec![check(
                "xattr",
                what("security.selinux, trusted.*"),
                Status::Fail,
                format!("cannot create a temporary file in {}: {e}", dir.display()),
            )];
        }
    };
    let mut out = Vec::new();
    for (ns, name, value) in [
        (
            "security.selinux",
            "security.selinux",
            &b"system_u:object_r:svirt_image_t:s0"[..],
        ),
        ("trusted.*", "trusted.svirt.validate", &b"1"[..]),
    ] {
        let r = fsetxattr(&file.fd, name, value);
        out.push(match r {
            Ok(()) => check(
                "xattr",
                what(ns),
                Status::Pass,
                format!("wrote {name} on a temporary file"),
            ),
            Err(e) => {
                let hint = match e.raw_os_error() {
                    Some(libc::EOPNOTSUPP) => {
                        " (filesystem does not support them: labels cannot be set here)"
                    }
                    Some(libc::EPERM) => " (not permitted: unprivileged, or inside a container)",
                    _ => "",
                };
                check(
                    "xattr",
                    what(ns),
                    Status::Fail,
                    format!("setxattr {name}: {e}{hint}"),
                )
            }
        });
    }
    out
}

struct TempFile {
    fd: OwnedFd,
    path: PathBuf,
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.path);
    }
}

fn tempfile_in(dir: &Path) -> io::Result<TempFile> {
    for n in 0..100u32 {
        let path = dir.join(format!(".svirt-validate-{}-{n}", std::process::id()));
        let c = CString::new(path.as_os_str().as_bytes())
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        // SAFETY: valid path; O_EXCL so we never touch an existing file.
        let fd = unsafe {
            libc::open(
                c.as_ptr(),
                libc::O_RDWR | libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW | libc::O_CLOEXEC,
                0o600,
            )
        };
        if fd >= 0 {
            // SAFETY: a fresh fd.
            return Ok(TempFile {
                fd: unsafe { OwnedFd::from_raw_fd(fd) },
                path,
            });
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::AlreadyExists {
            return Err(e);
        }
    }
    Err(io::Error::new(
        io::ErrorKind::AlreadyExists,
        "no free temporary name",
    ))
}

fn fsetxattr(fd: &OwnedFd, name: &str, value: &[u8]) -> io::Result<()> {
    let c = CString::new(name).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    // SAFETY: valid fd, name and value buffer.
    let r = unsafe {
        libc::fsetxattr(
            fd.as_raw_fd(),
            c.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn btf_lookup_finds_a_known_kernel_function() {
        let Ok(btf) = fs::read("/sys/kernel/btf/vmlinux") else {
            svirt_testkit::skip("btf", "no /sys/kernel/btf/vmlinux on this host");
            return;
        };
        // Every BTF-enabled kernel has this function; a parse bug finds nothing or stops early.
        assert!(btf_find_func(&btf, "vfs_read").is_some());
        assert!(btf_find_func(&btf, "no_such_function_svirt").is_none());
    }

    #[test]
    fn xattr_check_on_tmp_reports_and_cleans_up() {
        let dir = tempfile::tempdir().expect("tempdir");
        let checks = xattr_checks(dir.path());
        assert_eq!(checks.len(), 2);
        assert_eq!(
            fs::read_dir(dir.path()).expect("readdir").count(),
            0,
            "temporary file left behind"
        );
    }

    #[test]
    fn missing_securityfs_is_reported_not_mounted() {
        let root = tempfile::tempdir().expect("tempdir");
        fs::create_dir_all(root.path().join("proc/self")).expect("mkdir");
        fs::write(
            root.path().join("proc/self/mountinfo"),
            "22 1 0:21 / /proc rw - proc proc rw\n",
        )
        .expect("write");
        let err = Host::new(root.path())
            .active_lsms()
            .expect_err("not mounted");
        assert!(err.contains("not mounted"), "{err}");
        fs::write(
            root.path().join("proc/self/mountinfo"),
            "22 1 0:21 / /sys/kernel/security rw - securityfs securityfs rw\n",
        )
        .expect("write");
        fs::create_dir_all(root.path().join("sys/kernel/security")).expect("mkdir");
        fs::write(
            root.path().join("sys/kernel/security/lsm"),
            "lockdown,capability,landlock,bpf",
        )
        .expect("write");
        assert_eq!(
            Host::new(root.path()).active_lsms().expect("lsms"),
            vec!["lockdown", "capability", "landlock", "bpf"]
        );
    }
}
