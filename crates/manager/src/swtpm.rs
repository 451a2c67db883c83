//! Emulated TPMs (`<tpm><backend type='emulator'/>`): one `swtpm` (Debian's package) per
//! guest, started by the manager before QEMU and confined like the VMM ([`crate::helper`]):
//! the guest's uid and label, a jail showing only the TPM's state directory, Landlock over
//! it. QEMU and swtpm share a socket pair made by the manager: swtpm's end is its control
//! channel (`--ctrl type=unixio,clientfd=N`), QEMU's is the TPM backend's chardev
//! (`-chardev socket,fd=M`; QEMU hands swtpm the data channel over it). No socket has a
//! name, and QEMU never opens the state. `--terminate`: swtpm exits when QEMU goes.
//!
//! The state directory is filled in as libvirt does it: without `<source path>`, the
//! guest's own `<tpm_state_dir>/<uuid>/tpm2` (or `tpm1.2`), made when missing (root's,
//! until the guest's drivers hand it over) and kept across starts: the TPM's secrets live
//! there. A state directory the XML names must exist.

use std::os::fd::OwnedFd;
use std::os::unix::fs::DirBuilderExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};

use svirt_domain::domain::{Domain, TpmBackend};
use svirt_domain::{Plan, ResourceKind};

use crate::cgroup::GuestCgroup;
use crate::error::{ManagerError, Result};
use crate::helper::HelperLaunch;
use crate::manager::Inner;
use crate::record::Record;

/// The TPM a guest's QEMU gets, with its swtpm.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct TpmSpec {
    /// The QEMU device: `tpm-tis` or `tpm-crb`.
    pub model: String,
    /// TPM 2.0 (else 1.2).
    pub tpm2: bool,
}

/// The TPM of `d` as QEMU gets it, or why it cannot run: one emulated TPM at most; a
/// passthrough of the host's TPM is refused.
pub(crate) fn spec(d: &Domain) -> Result<Option<TpmSpec>> {
    let tpm = match d.tpms.as_slice() {
        [] => return Ok(None),
        [t] => t,
        _ => {
            return Err(ManagerError::Domain(
                "more than one <tpm>: a guest has one TPM".into(),
            ));
        }
    };
    let version = match &tpm.backend {
        TpmBackend::Emulator { version, .. } => version.as_deref(),
        TpmBackend::Passthrough { device } => {
            return Err(ManagerError::Domain(format!(
                "tpm: passthrough of the host's TPM ({}) is not supported: it would give \
                 the guest the host's own TPM; use <backend type='emulator'/> (swtpm)",
                device.display()
            )));
        }
    };
    let model = match tpm.model.as_deref() {
        None | Some("tpm-tis") => "tpm-tis",
        Some("tpm-crb") => "tpm-crb",
        Some(m) => {
            return Err(ManagerError::Domain(format!(
                "tpm: model '{m}' is not supported on x86 (tpm-tis, tpm-crb)"
            )));
        }
    };
    let tpm2 = match version {
        None | Some("2.0") => true,
        Some("1.2") if model == "tpm-crb" => {
            return Err(ManagerError::Domain(
                "tpm: a tpm-crb TPM is a TPM 2.0 (version='1.2' asks for a tpm-tis)".into(),
            ));
        }
        Some("1.2") => false,
        Some(v) => {
            return Err(ManagerError::Domain(format!(
                "tpm: version '{v}' is not supported (1.2, 2.0)"
            )));
        }
    };
    Ok(Some(TpmSpec {
        model: model.into(),
        tpm2,
    }))
}

/// Fills in the state directory of an emulated TPM without `<source path>` (the guest's
/// own below `tpm_state_dir`, as the module's text says) and makes it when missing.
/// Returns the directories it made, innermost last (a failed start removes them again).
pub(crate) fn fill_in(domain: &mut Domain, tpm_state_dir: &Path) -> Result<Vec<PathBuf>> {
    let uuid = domain.uuid.to_string();
    let mut made = Vec::new();
    for t in &mut domain.tpms {
        let TpmBackend::Emulator {
            version,
            state_path,
        } = &mut t.backend
        else {
            continue;
        };
        if let Some(p) = state_path.as_ref() {
            check_state_path(p)?;
            continue;
        }
        let leaf = if version.as_deref() == Some("1.2") {
            "tpm1.2"
        } else {
            "tpm2"
        };
        let guest_dir = tpm_state_dir.join(&uuid);
        let dir = guest_dir.join(leaf);
        // Root's and searchable (the guest's uid reaches its own state by name, lists
        // nothing); the state itself 0700 until a driver hands it to the guest.
        check_state_path(&dir)?;
        for (d, mode) in [
            (tpm_state_dir, 0o711),
            (guest_dir.as_path(), 0o711),
            (dir.as_path(), 0o700),
        ] {
            match std::fs::DirBuilder::new().mode(mode).create(d) {
                Ok(()) => made.push(d.to_path_buf()),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => root_only(d)?,
                Err(e) => return Err(ManagerError::io("create", d, e)),
            }
        }
        *state_path = Some(dir);
    }
    Ok(made)
}

/// An existing directory of svirt's TPM state tree must be root's and writable by root
/// alone (a real directory, no link): one a local user made or may change could hand the
/// guest's TPM secrets to that user (its restore gives new entries the directory's owner).
/// The leaf is root's between starts (the guest's only while it runs, and a running guest
/// of the same uuid is refused before this).
fn root_only(d: &Path) -> Result<()> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::symlink_metadata(d).map_err(|e| ManagerError::io("stat", d, e))?;
    if !m.is_dir() || m.uid() != 0 || m.mode() & 0o022 != 0 {
        return Err(ManagerError::Domain(format!(
            "tpm: {} must be a directory of root's that no one else may write (it is {}, \
             owner {}, mode {:o})",
            d.display(),
            if m.is_dir() {
                "a directory"
            } else {
                "not a directory"
            },
            m.uid(),
            m.mode() & 0o7777
        )));
    }
    Ok(())
}

/// swtpm's option syntax has no escape for a comma.
fn check_state_path(p: &Path) -> Result<()> {
    if p.to_string_lossy().contains(',') {
        return Err(ManagerError::Domain(format!(
            "tpm: state directory {}: a comma in its path is not supported (swtpm's options \
             cannot carry it)",
            p.display()
        )));
    }
    Ok(())
}

/// What swtpm reaches of `plan`: the TPM's state directory alone.
pub(crate) fn plan_for_tpm(plan: &Plan) -> Result<Plan> {
    let mut p = plan.clone();
    p.resources
        .retain(|r| r.resource.kind == ResourceKind::TpmState);
    if p.resources.len() != 1 {
        return Err(ManagerError::Domain(
            "tpm: the TPM's state directory is another device's object too".into(),
        ));
    }
    p.disk_chains.clear();
    Ok(p)
}

/// swtpm's arguments: its control channel on the connected socket `ctrl_fd`, its state in
/// `state_dir`.
pub(crate) fn args(state_dir: &Path, ctrl_fd: i32, tpm2: bool) -> Vec<String> {
    let mut a = vec![
        "socket".to_string(),
        format!("--ctrl=type=unixio,clientfd={ctrl_fd}"),
        format!("--tpmstate=dir={},mode=0600", state_dir.display()),
        // No --log: swtpm then writes to its stdout and stderr, the helper's log file
        // (`--log fd=2` makes swtpm 0.7 exit at once, without a word).
        "--terminate".into(),
    ];
    if tpm2 {
        a.push("--tpm2".into());
    }
    a
}

impl Inner {
    /// Starts the guest's swtpm, if its spec has a TPM ([`crate::helper`]). Returns
    /// QEMU's end of the control channel. On error, a swtpm started is ended with the
    /// cgroup by the start's undo.
    pub(crate) fn start_swtpm(&self, rec: &Record, cg: &GuestCgroup) -> Result<Option<OwnedFd>> {
        let Some(tpm) = &rec.spec.tpm else {
            return Ok(None);
        };
        let binary = crate::glue::find_in_path("swtpm").map_err(|_| {
            ManagerError::Qemu("tpm: swtpm not found on PATH (apt-get install swtpm)".into())
        })?;
        let plan = plan_for_tpm(&rec.plan)?;
        let state = plan.resources[0].resource.path.clone();
        let (ours, qemus) = UnixStream::pair()
            .map_err(|e| ManagerError::Qemu(format!("tpm: make a socket pair: {e}")))?;
        let ours: OwnedFd = ours.into();
        let fd = std::os::fd::AsRawFd::as_raw_fd(&ours);
        self.spawn_helper(
            rec,
            cg,
            HelperLaunch {
                what: "swtpm".into(),
                log_name: "swtpm.log".into(),
                binary,
                args: args(&state, fd, tpm.tpm2),
                plan: &plan,
                keep_fds: vec![fd],
                procfs: false,
            },
        )?;
        Ok(Some(qemus.into()))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn domain(tpm: &str) -> Domain {
        let xml = format!(
            "<domain type='qemu'><name>t</name><uuid>11111111-2222-4333-8444-555555555555</uuid>\
             <memory unit='MiB'>16</memory><os><type>hvm</type></os><devices>{tpm}</devices>\
             </domain>"
        );
        svirt_domain::parse(&xml).unwrap().domain
    }

    fn state_of(d: &Domain) -> Option<PathBuf> {
        match &d.tpms[0].backend {
            TpmBackend::Emulator { state_path, .. } => state_path.clone(),
            TpmBackend::Passthrough { .. } => None,
        }
    }

    /// The state directory is filled in and made (root's, 0711 above, 0700 itself), kept
    /// across starts; a directory of the tree someone else owns or may write is refused
    /// (its restore would hand the TPM's secrets to that owner), as is a comma in the path.
    #[test]
    fn state_directory_is_made_root_only_and_refused_otherwise() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("swtpm");
        let emulator = "<tpm><backend type='emulator' version='2.0'/></tpm>";
        let mut d = domain(emulator);
        let made = fill_in(&mut d, &root).unwrap();
        let leaf = root.join("11111111-2222-4333-8444-555555555555/tpm2");
        assert_eq!(state_of(&d), Some(leaf.clone()));
        assert_eq!(made.len(), 3);
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode(&leaf), 0o700);
        assert_eq!(mode(&root), 0o711);
        // Kept: a second start makes nothing.
        let mut again = domain(emulator);
        assert!(fill_in(&mut again, &root).unwrap().is_empty());
        // Someone else's, or writable by others: refused.
        let guest_dir = leaf.parent().unwrap();
        std::os::unix::fs::chown(guest_dir, Some(4321), None).unwrap();
        let e = fill_in(&mut domain(emulator), &root)
            .unwrap_err()
            .to_string();
        assert!(e.contains("root's") && e.contains("owner 4321"), "{e}");
        std::os::unix::fs::chown(guest_dir, Some(0), None).unwrap();
        std::fs::set_permissions(&leaf, std::fs::Permissions::from_mode(0o777)).unwrap();
        let e = fill_in(&mut domain(emulator), &root)
            .unwrap_err()
            .to_string();
        assert!(e.contains("no one else may write"), "{e}");
        std::fs::set_permissions(&leaf, std::fs::Permissions::from_mode(0o700)).unwrap();
        assert!(fill_in(&mut domain(emulator), &root).unwrap().is_empty());
        // A comma swtpm cannot be given.
        let mut c = domain(
            "<tpm><backend type='emulator'><source type='dir' path='/x/tpm,mode=0644'/></backend></tpm>",
        );
        let e = fill_in(&mut c, &root).unwrap_err().to_string();
        assert!(e.contains("comma"), "{e}");
    }

    /// One emulated TPM runs; passthrough, a second TPM, unknown models and versions, and
    /// tpm-crb 1.2 are refused, naming why.
    #[test]
    fn which_tpms_run() {
        let ok = spec(&domain(
            "<tpm model='tpm-crb'><backend type='emulator'/></tpm>",
        ))
        .unwrap()
        .unwrap();
        assert_eq!((ok.model.as_str(), ok.tpm2), ("tpm-crb", true));
        let v12 = spec(&domain(
            "<tpm><backend type='emulator' version='1.2'/></tpm>",
        ))
        .unwrap()
        .unwrap();
        assert_eq!((v12.model.as_str(), v12.tpm2), ("tpm-tis", false));
        for (tpm, word) in [
            ("<tpm><backend type='passthrough'/></tpm>", "passthrough"),
            (
                "<tpm><backend type='emulator'/></tpm><tpm><backend type='emulator'/></tpm>",
                "more than one",
            ),
            (
                "<tpm model='spapr-tpm-proxy'><backend type='emulator'/></tpm>",
                "spapr",
            ),
            ("<tpm><backend type='emulator' version='3.0'/></tpm>", "3.0"),
            (
                "<tpm model='tpm-crb'><backend type='emulator' version='1.2'/></tpm>",
                "tpm-crb",
            ),
        ] {
            let e = spec(&domain(tpm)).unwrap_err().to_string();
            assert!(e.contains(word), "{tpm}: {e}");
        }
    }
}
