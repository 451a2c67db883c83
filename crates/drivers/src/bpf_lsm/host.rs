//! The BPF LSM as the host offers it: kernel BTF, `bpf` among the active LSMs, and LSM
//! programs that load (tried with a trivial one). The driver's probe and `svirt
//! host-validate` both ask it.

use std::fs;
use std::io;
use std::os::fd::{FromRawFd, OwnedFd};
use std::path::Path;

use crate::host_check::{Check, HostView, Status, check, io_text};

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

/// Whether an LSM program loads on this host (never attached), and whether the BPF LSM
/// is active to call it.
pub fn host_checks(view: &HostView<'_>) -> Vec<Check> {
    let lsms = view.lsms.as_ref().ok().map(|l| l.as_slice());
    // Asked for it: whether programs load is worth saying even where bpf is not active.
    let (usable, why) = assess(&view.host.path("/sys/kernel/btf/vmlinux"), lsms, true);
    vec![check(
        "BPF-LSM",
        "programs can load",
        if usable { Status::Pass } else { Status::Warn },
        why,
    )]
}

/// Whether the BPF-LSM driver can enforce on the host under `root`, and why (not): kernel
/// BTF naming the LSM hooks, `bpf` among the active LSMs (when securityfs says), and a
/// trivial `lsm/file_open` program that the kernel loads (then unloads, never attached).
pub fn usable(root: &Path) -> (bool, String) {
    usable_with(root, true)
}

/// [`usable`] without the trial load unless `bpf` is known to be an active LSM (the answer
/// is "not usable" anyway): the registry's probe of every MAC model, which each svirtd runs
/// at open whatever its drivers; under another MAC (SELinux's virtd_t) the load would only
/// be refused and audited.
pub(crate) fn usable_if_active(root: &Path) -> (bool, String) {
    usable_with(root, false)
}

fn usable_with(root: &Path, try_inactive: bool) -> (bool, String) {
    let lsms = fs::read_to_string(root.join("sys/kernel/security/lsm"))
        .ok()
        .map(|s| s.trim().split(',').map(str::to_string).collect::<Vec<_>>());
    assess(
        &root.join("sys/kernel/btf/vmlinux"),
        lsms.as_deref(),
        try_inactive,
    )
}

/// `try_inactive`: try the load even when `bpf` is not known to be an active LSM (the
/// answer is "not usable" either way; the load only tells why).
fn assess(btf_path: &Path, lsms: Option<&[String]>, try_inactive: bool) -> (bool, String) {
    let (listed, active) = match lsms {
        Some(l) if l.iter().any(|x| x == "bpf") => ("bpf is an active LSM", true),
        Some(_) => (
            "bpf is NOT an active LSM (programs would not be called)",
            false,
        ),
        // Loaded but never called would be enforcement in name only: unknown is no.
        None => (
            "active LSMs unknown (mount securityfs on /sys/kernel/security to tell whether bpf is one)",
            false,
        ),
    };
    // Every svirtd's open asks this of every MAC model: where the answer is "no" anyway,
    // neither the kernel's BTF (megabytes) is read nor a program loaded.
    if !active && !try_inactive {
        return (false, format!("{listed}; no program load tried"));
    }
    let btf = match fs::read(btf_path) {
        Ok(b) => b,
        Err(e) => {
            return (
                false,
                format!(
                    "no kernel BTF ({}: {}); {listed}",
                    btf_path.display(),
                    io_text(&e)
                ),
            );
        }
    };
    let Some(id) = btf_find_func(&btf, "bpf_lsm_file_open") else {
        return (
            false,
            format!("bpf_lsm_file_open not in kernel BTF (CONFIG_BPF_LSM off?); {listed}"),
        );
    };
    match bpf_lsm_try_load(id) {
        Ok(()) => (
            active,
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
            (
                false,
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
}
