//! The credentials a guest's VMM takes between fork and exec: ids, supplementary groups,
//! no capabilities, locked securebits, no_new_privs.

use std::io;

use crate::ChildHook;

/// The credentials the VMM takes, prepared in the parent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credentials {
    /// Real, effective and saved uid.
    pub uid: u32,
    /// Real, effective and saved gid.
    pub gid: u32,
    /// Supplementary groups (exactly these; the parent's are dropped).
    pub groups: Vec<u32>,
}

impl Credentials {
    /// The child step: bounding set and ambient capabilities dropped, securebits locked
    /// (while `CAP_SETPCAP` is still held), `setgroups`, `setresgid`, `setresuid` (which
    /// empties the permitted and effective sets), `capset` to zero (inheritable too),
    /// `no_new_privs`; then the ids are read back and a mismatch fails the exec.
    ///
    /// Raw system calls only: they act on the calling thread (the only one in a forked
    /// child), allocate nothing and take no lock.
    pub fn into_hook(self) -> ChildHook {
        let groups: Vec<libc::gid_t> = self.groups.clone();
        let (uid, gid) = (self.uid, self.gid);
        Box::new(move || {
            let check = |r: libc::c_long| {
                if r < 0 {
                    Err(io::Error::last_os_error())
                } else {
                    Ok(())
                }
            };
            // SAFETY (all blocks below): system calls with integer arguments or pointers
            // to memory owned by this closure, of the sizes given.
            for cap in 0..64 {
                let r = unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap, 0, 0, 0) };
                // EINVAL: beyond the kernel's last capability.
                if r != 0 && io::Error::last_os_error().raw_os_error() != Some(libc::EINVAL) {
                    return Err(io::Error::last_os_error());
                }
            }
            check(
                unsafe {
                    libc::prctl(
                        libc::PR_CAP_AMBIENT,
                        libc::PR_CAP_AMBIENT_CLEAR_ALL,
                        0,
                        0,
                        0,
                    )
                }
                .into(),
            )?;
            // Never regain capabilities by becoming uid 0 or by exec of a set-uid-root file,
            // and keep it that way for every descendant.
            const SECBITS: libc::c_ulong = 0x01 /* NOROOT */ | 0x02 /* NOROOT_LOCKED */
                | 0x08 /* NO_SETUID_FIXUP_LOCKED */ | 0x20 /* KEEP_CAPS_LOCKED */
                | 0x40 /* NO_CAP_AMBIENT_RAISE */ | 0x80 /* ..._LOCKED */;
            check(unsafe { libc::prctl(libc::PR_SET_SECUREBITS, SECBITS, 0, 0, 0) }.into())?;
            check(unsafe { libc::syscall(libc::SYS_setgroups, groups.len(), groups.as_ptr()) })?;
            check(unsafe { libc::syscall(libc::SYS_setresgid, gid, gid, gid) })?;
            check(unsafe { libc::syscall(libc::SYS_setresuid, uid, uid, uid) })?;
            let mut header = CapHeader {
                version: 0x2008_0522,
                pid: 0,
            };
            let data = [CapData::default(); 2];
            check(unsafe { libc::syscall(libc::SYS_capset, &mut header, data.as_ptr()) })?;
            check(unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) }.into())?;
            let (mut r, mut e, mut s) = (0, 0, 0);
            check(unsafe { libc::syscall(libc::SYS_getresuid, &mut r, &mut e, &mut s) })?;
            let (mut gr, mut ge, mut gs) = (0, 0, 0);
            check(unsafe { libc::syscall(libc::SYS_getresgid, &mut gr, &mut ge, &mut gs) })?;
            if [r, e, s] != [uid; 3] || [gr, ge, gs] != [gid; 3] {
                return Err(io::Error::from_raw_os_error(libc::EPERM));
            }
            Ok(())
        })
    }
}

/// `struct __user_cap_header_struct`.
#[repr(C)]
struct CapHeader {
    version: u32,
    pid: libc::c_int,
}

/// `struct __user_cap_data_struct` (two of them for version 3).
#[repr(C)]
#[derive(Default, Clone, Copy)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}
