//! DAC's device ACL grant (`group:kvm:rw-` on `/dev/kvm`) undone exactly: a pre-existing
//! entry of the device group gets its rights back instead of being deleted, entries added by
//! others stay, the restore does not depend on the device group still resolving, and what
//! cannot be resolved is a typed error naming the device, never a silent skip.
//!
//! Each test runs under a temporary platform root (`DacConfig::fs_root`) whose `dev/kvm` is a
//! private `mknod` copy of `/dev/null` (a regular file where mknod is refused): the host's
//! `/dev/kvm` is never touched. ACLs are written and compared as raw
//! `system.posix_acl_access` bytes, as the kernel returns them.

mod dac_support;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use dac_support::*;
use svirt_domain::Plan;
use svirt_drivers::dac::{ACL_GID_KEY, DacConfig, DacDriver, DeviceAclError, MODEL_KEY, owner_key};
use svirt_drivers::{DriverError, ExecContext, GuestSecurity, SecurityDriver};
use svirt_store::{ObjectKey, OriginalRecord, Store};

const KVM_GID: u32 = 620_993;
const ACL: &std::ffi::CStr = ACL_XATTR;

// POSIX ACL xattr tags.
const USER_OBJ: u16 = 0x01;
const USER: u16 = 0x02;
const GROUP_OBJ: u16 = 0x04;
const GROUP: u16 = 0x08;
const MASK: u16 = 0x10;
const OTHER: u16 = 0x20;
const NO_ID: u32 = u32::MAX;

/// (tag, perm, id) entries, encoded sorted as the kernel wants them.
fn decode(b: &[u8]) -> Vec<(u16, u16, u32)> {
    b[4..]
        .chunks_exact(8)
        .map(|c| {
            (
                u16::from_le_bytes([c[0], c[1]]),
                u16::from_le_bytes([c[2], c[3]]),
                u32::from_le_bytes([c[4], c[5], c[6], c[7]]),
            )
        })
        .collect()
}

fn perm_of(acl: &[(u16, u16, u32)], tag: u16, id: u32) -> Option<u16> {
    acl.iter().find(|e| e.0 == tag && e.2 == id).map(|e| e.1)
}

fn remove_acl(p: &Path) {
    // SAFETY: lremovexattr reads two NUL-terminated strings.
    let r = unsafe { libc::lremovexattr(cpath(p).as_ptr(), ACL.as_ptr()) };
    assert_eq!(r, 0, "removexattr: {}", std::io::Error::last_os_error());
}

/// A temporary platform root with `dev/kvm`, an accounts root, and a DAC driver over them.
struct Env {
    _dir: tempfile::TempDir,
    /// `<root>/dev/kvm` as the host sees it.
    node: PathBuf,
    accounts: PathBuf,
    store: Arc<Store>,
    dac: DacDriver,
}

/// `/dev/kvm` as the driver sees it (under its platform root).
const DEVICE: &str = "/dev/kvm";

fn group_file(kvm_gid: Option<u32>) -> String {
    match kvm_gid {
        Some(g) => format!("root:x:0:\nkvm:x:{g}:\n"),
        None => "root:x:0:\n".to_string(),
    }
}

fn env() -> Option<Env> {
    if skip_unless_root() {
        return None;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let acc = accounts(
        dir.path(),
        "root:x:0:0::/root:/bin/sh\n",
        &group_file(Some(KVM_GID)),
    );
    let root = dir.path().join("root");
    std::fs::create_dir_all(root.join("dev")).expect("mkdir dev");
    let node = root.join("dev/kvm");
    // SAFETY: mknod with a NUL-terminated path.
    let r = unsafe {
        libc::mknod(
            cpath(&node).as_ptr(),
            libc::S_IFCHR | 0o600,
            libc::makedev(1, 3),
        )
    };
    if r != 0 {
        eprintln!(
            "note: mknod refused ({}); a regular file stands for /dev/kvm",
            std::io::Error::last_os_error()
        );
        std::fs::write(&node, b"").expect("create node");
    }
    chmod(&node, 0o600);
    let store = Arc::new(Store::open(&dir.path().join("state")).expect("store"));
    let dac = dac_driver_on(
        store.clone(),
        620_000,
        620_050,
        DacConfig {
            accounts_root: acc.clone(),
            fs_root: root,
            ..Default::default()
        },
    );
    Some(Env {
        _dir: dir,
        node,
        accounts: acc,
        store,
        dac,
    })
}

impl Env {
    /// Reserves ids for `name`: its (empty) plan, the guest and an exec context naming the
    /// device, ready for the grant.
    fn reserve(&self, name: &str) -> (Plan, GuestSecurity, ExecContext) {
        let p = plan(name, Vec::new());
        let mut g = guest(name);
        self.dac.reserve(&p, &mut g).expect("reserve");
        let mut ctx = exec_ctx(Path::new("/run"));
        ctx.devices = vec![PathBuf::from(DEVICE)];
        (p, g, ctx)
    }

    /// Reserves ids for `name` and runs the device grant as a start does.
    fn start(&self, name: &str) -> Result<GuestSecurity, DriverError> {
        let (p, g, ctx) = self.reserve(name);
        let creds = self.dac.prepare_credentials(&p, &g, &ctx)?;
        assert!(creds.groups.contains(&KVM_GID), "{creds:?}");
        Ok(g)
    }

    fn stop(&self, g: &GuestSecurity) -> Vec<DriverError> {
        self.dac.restore_all(&plan(&g.name, Vec::new()), g)
    }

    /// Stops `g` (its last user): no error, ACL and mode exactly as in `before`.
    fn stop_restores(&self, g: &GuestSecurity, before: &Snapshot, what: &str) {
        let errors = self.stop(g);
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(snapshot(self), *before, "{what}");
    }

    /// The original records DAC keeps for the guest `name`.
    fn records(&self, name: &str) -> Vec<(ObjectKey, OriginalRecord)> {
        self.store
            .originals_for_owner(&owner_key(name))
            .expect("records")
    }

    /// An ACL `user::rw-, group::---, group:kvm:<perm>, mask::r--, other::---`: the device
    /// group has an entry before DAC's grant.
    fn set_group_entry(&self, perm: u16) {
        set_acl(
            &self.node,
            &[
                (USER_OBJ, 6, NO_ID),
                (GROUP_OBJ, 0, NO_ID),
                (GROUP, perm, KVM_GID),
                (MASK, 4, NO_ID),
                (OTHER, 0, NO_ID),
            ],
        );
    }

    fn set_group_file(&self, kvm_gid: Option<u32>) {
        std::fs::write(self.accounts.join("etc/group"), group_file(kvm_gid)).expect("group");
    }

    /// Lets other users reach `dev/kvm` (the temporary directory is 0700).
    fn traversable(&self) {
        let mut d = self.node.parent();
        while let Some(p) = d {
            traversable(p);
            if p == self._dir.path() {
                break;
            }
            d = p.parent();
        }
    }

    /// The ACL now, decoded.
    fn acl(&self) -> Vec<(u16, u16, u32)> {
        decode(&get_acl(&self.node).expect("an ACL"))
    }

    fn assert_granted(&self) {
        let acl = self.acl();
        assert_eq!(perm_of(&acl, GROUP, KVM_GID), Some(6), "{acl:?}");
        assert_eq!(
            perm_of(&acl, MASK, NO_ID).map(|m| m & 6),
            Some(6),
            "{acl:?}"
        );
    }
}

/// Whether `uid` (gid the same, no supplementary group) can open `p` for reading or for
/// writing, tried by a shell running under it.
fn can_open(p: &Path, uid: u32, write: bool) -> bool {
    use std::os::unix::process::CommandExt;
    let redirect = if write {
        "exec 3>>\"$1\""
    } else {
        "exec 3<\"$1\""
    };
    std::process::Command::new("sh")
        .args(["-c", redirect, "sh"])
        .arg(p)
        .uid(uid)
        .gid(uid)
        .stderr(std::process::Stdio::null())
        .status()
        .expect("run sh")
        .success()
}

type Snapshot = (Option<Vec<u8>>, (u32, u32, u32));

/// The ACL and mode as they are now, to compare with after the restore.
fn snapshot(e: &Env) -> Snapshot {
    (get_acl(&e.node), owner_mode(&e.node))
}

#[test]
fn dac_acl_existing_group_entry_gets_its_rights_back() {
    let Some(e) = env() else { return };
    // The device group could read already (a named user too); the grant adds write.
    set_acl(
        &e.node,
        &[
            (USER_OBJ, 6, NO_ID),
            (USER, 4, 4242),
            (GROUP_OBJ, 4, NO_ID),
            (GROUP, 4, KVM_GID),
            (MASK, 4, NO_ID),
            (OTHER, 0, NO_ID),
        ],
    );
    let before = snapshot(&e);
    let g = e.start("acl-existing").expect("start");
    e.assert_granted();
    e.stop_restores(&g, &before, "ACL bytes and mode exactly as before");
    assert_eq!(perm_of(&e.acl(), GROUP, KVM_GID), Some(4), "r-- again");
}

#[test]
fn dac_acl_entry_with_rw_behind_a_mask_keeps_its_entry() {
    let Some(e) = env() else { return };
    // `group:kvm:rw-` exists but the mask lets only r through: DAC changes the mask only.
    e.set_group_entry(6);
    let before = snapshot(&e);
    let g = e.start("acl-masked").expect("start");
    e.assert_granted();
    e.stop_restores(&g, &before, "restored exactly");
}

#[test]
fn dac_acl_created_keeps_entries_added_by_others() {
    let Some(e) = env() else { return };
    let before = snapshot(&e);
    assert_eq!(before.0, None, "no ACL to begin with");
    let g = e.start("acl-created").expect("start");
    e.assert_granted();
    // The administrator adds an entry while the guest runs.
    let mut acl = e.acl();
    acl.push((USER, 4, 4242));
    set_acl(&e.node, &acl);
    assert!(e.stop(&g).is_empty());
    let after = e.acl();
    assert_eq!(perm_of(&after, USER, 4242), Some(4), "{after:?}");
    assert_eq!(perm_of(&after, GROUP, KVM_GID), None, "{after:?}");
    // The entry keeps its effect: the mask lets its r through (a mask of the mode's
    // group bits, ---, would leave it without any).
    assert_eq!(perm_of(&after, MASK, NO_ID), Some(4), "{after:?}");
    assert_eq!(perm_of(&after, GROUP_OBJ, NO_ID), Some(0), "{after:?}");
    // Owner and other bits as before; the group class bits show the mask, as POSIX has
    // them whenever an ACL has one.
    assert_eq!(owner_mode(&e.node), (before.1.0, before.1.1, 0o640));
    // And for real: uid 4242 reads it (and cannot write it), another uid cannot read it.
    e.traversable();
    assert!(can_open(&e.node, 4242, false), "the admin's entry works");
    assert!(!can_open(&e.node, 4242, true), "r only");
    assert!(!can_open(&e.node, 4243, false), "no entry, other ---");

    // Without anybody else's entry, the ACL DAC created goes entirely, once its last user
    // (a second guest joined the grant) stops.
    remove_acl(&e.node);
    let before = snapshot(&e);
    let g = e.start("acl-created-2").expect("start");
    let g2 = e.start("acl-created-3").expect("join");
    assert!(e.stop(&g).is_empty());
    e.assert_granted();
    e.stop_restores(&g2, &before, "the ACL DAC created is gone");
}

#[test]
fn dac_acl_restore_uses_the_recorded_gid_not_the_group_file() {
    let Some(e) = env() else { return };
    e.set_group_entry(4);
    let before = snapshot(&e);
    let a = e.start("gid-a").expect("start");
    let b = e.start("gid-b").expect("join");
    e.assert_granted();
    // The device group disappears from the accounts while the guests run.
    e.set_group_file(None);
    assert!(e.stop(&a).is_empty());
    e.assert_granted();
    e.stop_restores(&b, &before, "restored exactly");
}

/// The only error of `errors`, as a device ACL error naming `/dev/kvm`.
fn only_acl_error(errors: &[DriverError]) -> &DeviceAclError {
    assert_eq!(errors.len(), 1, "{errors:?}");
    let err = DeviceAclError::of(&errors[0]).unwrap_or_else(|| panic!("{:?}", errors[0]));
    assert!(
        errors[0].to_string().contains(DEVICE),
        "names the device: {}",
        errors[0]
    );
    err
}

#[test]
fn dac_acl_unresolvable_gid_fails_loudly_and_keeps_the_record() {
    let Some(e) = env() else { return };
    e.set_group_entry(4);
    let before = snapshot(&e);
    let g = e.start("legacy").expect("start");
    // Make the record look like one written before the gid was recorded.
    let me = owner_key("legacy");
    let recs = e.records("legacy");
    assert_eq!(recs.len(), 1);
    let (k, rec) = &recs[0];
    assert_eq!(rec.original.model_flags.get(ACL_GID_KEY), Some(&KVM_GID));
    let mut legacy = rec.original.clone();
    legacy.model_flags.remove(ACL_GID_KEY);
    e.store.release_original(*k, &me).expect("release");
    e.store
        .record_original_if_absent(*k, &legacy, &me)
        .expect("record");
    e.set_group_file(None);

    let errors = e.stop(&g);
    match only_acl_error(&errors) {
        DeviceAclError::NoGroup { device, reason } => {
            assert_eq!(device, Path::new(DEVICE));
            assert!(reason.contains("kvm"), "{reason}");
        }
        other => panic!("{other:?}"),
    }
    e.assert_granted();
    let kept = e.records("legacy");
    assert_eq!(kept.len(), 1, "the record stays for the next attempt");
    assert!(
        kept[0].1.original.model_flags.contains_key(MODEL_KEY),
        "{kept:?}"
    );

    // Once the group resolves again, the retry restores exactly.
    e.set_group_file(Some(KVM_GID));
    e.stop_restores(&g, &before, "restored exactly");
    assert!(e.records(&g.name).is_empty());
}

#[test]
fn dac_acl_removed_meanwhile_fails_loudly() {
    let Some(e) = env() else { return };
    e.set_group_entry(4);
    let g = e.start("gone").expect("start");
    remove_acl(&e.node);
    let errors = e.stop(&g);
    match only_acl_error(&errors) {
        DeviceAclError::AclGone { device, gid } => {
            assert_eq!(device, Path::new(DEVICE));
            assert_eq!(*gid, KVM_GID);
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn dac_acl_grant_for_another_gid_is_refused_while_one_is_recorded() {
    let Some(e) = env() else { return };
    let before = snapshot(&e);
    let a = e.start("gid-first").expect("start");
    e.set_group_file(Some(KVM_GID + 1));
    let (p, b, ctx) = e.reserve("gid-second");
    let err = e
        .dac
        .prepare_credentials(&p, &b, &ctx)
        .expect_err("a second gid cannot join the record");
    match DeviceAclError::of(&err) {
        Some(DeviceAclError::GroupChanged {
            device,
            recorded,
            configured,
        }) => {
            assert_eq!(device, Path::new(DEVICE));
            assert_eq!((*recorded, *configured), (KVM_GID, KVM_GID + 1));
        }
        other => panic!("{other:?} from {err}"),
    }
    assert_eq!(
        perm_of(&e.acl(), GROUP, KVM_GID + 1),
        None,
        "nothing written"
    );
    e.stop_restores(&a, &before, "restored exactly");
}

#[test]
fn dac_acl_grant_out_of_reach_keeps_its_record() {
    let Some(e) = env() else { return };
    let before = snapshot(&e);
    let g = e.start("out-of-reach").expect("start");
    e.assert_granted();
    // `/dev` becomes a symlink to the real directory: opening `/dev/kvm` without following
    // symlinks fails (ELOOP), which is not "gone".
    let dev = e.node.parent().expect("dev").to_path_buf();
    let moved = dev.with_file_name("dev.real");
    std::fs::rename(&dev, &moved).expect("move dev");
    std::os::unix::fs::symlink("dev.real", &dev).expect("symlink dev");
    let errors = e.stop(&g);
    assert_eq!(errors.len(), 1, "{errors:?}");
    match &errors[0] {
        DriverError::Object { path, source, .. } => {
            assert_eq!(path, Path::new(DEVICE));
            assert_eq!(source.raw_os_error(), Some(libc::ELOOP), "{source}");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        e.records("out-of-reach").len(),
        1,
        "the only copy of the original is kept"
    );
    std::fs::remove_file(&dev).expect("remove symlink");
    std::fs::rename(&moved, &dev).expect("move dev back");
    e.assert_granted();

    // Reachable again: the next stop restores exactly and releases.
    e.stop_restores(&g, &before, "restored exactly");
    assert!(e.records(&g.name).is_empty());
}

#[test]
fn dac_acl_grant_on_a_record_dac_left_records_only_its_own_grant() {
    let Some(e) = env() else { return };
    let before = snapshot(&e);
    let a = e.start("left-a").expect("start");
    let recs = e.records("left-a");
    assert_eq!(recs.len(), 1);
    let (k, rec) = recs[0].clone();
    // Another model's user of the same object (as the relabel engine records one) keeps
    // the record after DAC's last user leaves.
    let mut other_model = rec.original.clone();
    other_model.model_flags = [("selinux".to_string(), 1)].into();
    e.store
        .record_original_if_absent(k, &other_model, "selinux/left-other")
        .expect("record");
    e.stop_restores(&a, &before, "the grant is undone");
    let kept = e
        .store
        .get_original(k)
        .expect("get")
        .expect("kept for selinux");
    assert!(
        !kept.original.model_flags.contains_key(MODEL_KEY)
            && !kept.original.model_flags.contains_key(ACL_GID_KEY),
        "DAC's flags went with its last user: {:?}",
        kept.original.model_flags
    );

    // The device group's gid changes; the next grant records its own gid and flags, not
    // theirs or-ed with the ones of the grant undone above.
    let gid = KVM_GID + 1;
    e.set_group_file(Some(gid));
    let (p, b, ctx) = e.reserve("left-b");
    let creds = e.dac.prepare_credentials(&p, &b, &ctx).expect("grant");
    assert!(creds.groups.contains(&gid), "{creds:?}");
    assert_eq!(perm_of(&e.acl(), GROUP, gid), Some(6));
    let rec = e.store.get_original(k).expect("get").expect("record");
    assert_eq!(rec.original.model_flags.get(ACL_GID_KEY), Some(&gid));
    e.stop_restores(&b, &before, "the second grant is undone too");
}
