//! Attack classes 4 (no exclusivity) and the read-only-content rule of issue 11, on real
//! files, with the kernel as the judge: every access claim is checked by opening the object
//! as the guest's uid (or another guest's, or a plain local user's) with
//! `setpriv --reuid --regid --clear-groups` (or `--groups` = the VMM's prepared groups).
//!
//! - A second guest naming a running guest's private disk (read-write, `<readonly/>`, as a
//!   backing file; or naming privately a base another guest reads; under DAC or SELinux) is
//!   refused before anything changes: owner, mode, ACL and every xattr of the disk are
//!   byte-identical, the first guest still has its access, the second has none, and the
//!   ledger holds nothing of the second guest.
//! - Two starts racing for one private disk: exactly one wins.
//! - Read-only content is granted to the guest's uid alone: another local user cannot read it
//!   (before: `o+r`).
//! - Controls that must succeed: a `<shareable/>` disk used by two guests (both read and write
//!   it; a third guest with a shared disk of its own cannot open it); a read-only base read by
//!   two guests (each reads it, a third uid cannot; each stop removes only its own entry; the
//!   last puts back the original bytes).

mod dac_support;

use std::collections::BTreeMap;
use std::ffi::CStr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use dac_support::*;
use svirt_domain::{Access, DacAction, Plan, ResourceKind, Sharing};
use svirt_drivers::dac::DacDriver;
use svirt_drivers::{DriverError, GuestSecurity, SecurityDriver};

const FIRST_ID: u32 = 650_000;
const LAST_ID: u32 = 650_050;
/// A local user no guest is: `nobody`.
const NOBODY: u32 = 65_534;

/// An administrator's ACL: a named entry for uid 4242 (read) and its mask. Must come back
/// byte for byte after every guest left.
const ADMIN_ACL: [(u16, u16, u32); 5] = [
    (0x01, 6, u32::MAX),
    (0x02, 4, 4242),
    (0x04, 0, u32::MAX),
    (0x10, 4, u32::MAX),
    (0x20, 0, u32::MAX),
];

fn file(p: &Path, mode: u32) {
    std::fs::write(p, b"data").expect("write");
    chmod(p, mode);
}

/// Every xattr of `p` (names and values, not following a final symlink).
fn xattrs(p: &Path) -> BTreeMap<Vec<u8>, Option<Vec<u8>>> {
    let c = cpath(p);
    let mut names = vec![0u8; 65536];
    // SAFETY: llistxattr writes at most names.len() bytes.
    let n = unsafe { libc::llistxattr(c.as_ptr(), names.as_mut_ptr().cast(), names.len()) };
    assert!(n >= 0, "listxattr: {}", std::io::Error::last_os_error());
    names.truncate(n as usize);
    names
        .split(|b| *b == 0)
        .filter(|n| !n.is_empty())
        .map(|n| {
            let name = std::ffi::CString::new(n).expect("name");
            (n.to_vec(), get_xattr(p, &name))
        })
        .collect()
}

/// What must not change on a refused start: owner, group, mode, every xattr (ACL included).
type Snap = ((u32, u32, u32), BTreeMap<Vec<u8>, Option<Vec<u8>>>);

fn snap(p: &Path) -> Snap {
    (owner_mode(p), xattrs(p))
}

fn set_user_xattr(p: &Path) {
    let name: &CStr = c"user.svirt-test";
    // SAFETY: NUL-terminated strings, value of the given length.
    let r =
        unsafe { libc::lsetxattr(cpath(p).as_ptr(), name.as_ptr(), b"v".as_ptr().cast(), 1, 0) };
    assert_eq!(r, 0, "setxattr: {}", std::io::Error::last_os_error());
}

/// Whether the kernel lets `uid`/`gid` with exactly `groups` open `p` for reading (or for
/// writing, `write`), by a process run under `setpriv`.
fn kernel_allows(uid: u32, gid: u32, groups: &[u32], p: &Path, write: bool) -> bool {
    let mut c = Command::new("setpriv");
    c.args(["--reuid", &uid.to_string(), "--regid", &gid.to_string()]);
    if groups.is_empty() {
        c.arg("--clear-groups");
    } else {
        let g: Vec<String> = groups.iter().map(u32::to_string).collect();
        c.args(["--groups", &g.join(",")]);
    }
    let script = if write {
        ": >> \"$1\""
    } else {
        "head -c1 \"$1\" > /dev/null"
    };
    c.args(["--", "sh", "-c", script, "sh"]);
    c.arg(std::ffi::OsStr::from_bytes(p.as_os_str().as_bytes()));
    c.stderr(std::process::Stdio::null());
    c.status().expect("setpriv").success()
}

/// A started guest: its plan, identity and the VMM's supplementary groups.
struct Started {
    plan: Plan,
    g: GuestSecurity,
    groups: Vec<u32>,
}

impl Started {
    fn ids(&self) -> (u32, u32) {
        self.g.ids.expect("ids")
    }

    fn can(&self, p: &Path, write: bool) -> bool {
        let (u, g) = self.ids();
        kernel_allows(u, g, &self.groups, p, write)
    }
}

/// Reserves, sets and prepares the credentials as a start does; the set's result is returned
/// with the guest (whose reservation is kept either way).
fn try_start(
    d: &DacDriver,
    name: &str,
    res: Vec<svirt_domain::PlannedResource>,
) -> (Started, Result<(), DriverError>) {
    let p = plan(name, res);
    let mut g = guest(name);
    d.reserve(&p, &mut g).expect("reserve");
    let r = d.set_all(&p, &g);
    let groups = if r.is_ok() {
        d.prepare_credentials(&p, &g, &exec_ctx(Path::new("/run")))
            .expect("credentials")
            .groups
    } else {
        Vec::new()
    };
    (Started { plan: p, g, groups }, r)
}

fn start(d: &DacDriver, name: &str, res: Vec<svirt_domain::PlannedResource>) -> Started {
    let (s, r) = try_start(d, name, res);
    r.unwrap_or_else(|e| panic!("start {name}: {e}"));
    s
}

fn stop(d: &DacDriver, s: &Started) {
    let errors = d.restore_all(&s.plan, &s.g);
    assert!(errors.is_empty(), "stop {}: {errors:?}", s.g.name);
    d.release(&s.g).expect("release");
}

fn backing(p: &Path) -> svirt_domain::PlannedResource {
    res(
        p,
        ResourceKind::BackingImage,
        Access::Ro,
        Sharing::ReadOnlyContent,
        DacAction::GrantRead,
    )
}

/// A temp dir others can traverse, with `disk.img` (root 0600, a user xattr) in it.
fn setup() -> Option<(tempfile::TempDir, DacDriver, PathBuf)> {
    let (dir, _acc, d) = dac_setup(FIRST_ID, LAST_ID, None)?;
    traversable(dir.path());
    let img = dir.path().join("disk.img");
    file(&img, 0o600);
    set_user_xattr(&img);
    Some((dir, d, img))
}

fn must_run_as_root() {
    assert!(
        !skip_unless_root(),
        "this attack test needs root: not counted as a pass"
    );
}

/// The refusal of `second` on the first guest's object: typed, naming the object and the
/// first guest, and nothing changed; the first guest keeps its access, the second has none,
/// the ledger holds nothing of the second.
fn assert_refused(
    d: &DacDriver,
    img: &Path,
    first: &Started,
    first_write: bool,
    second: &str,
    res: Vec<svirt_domain::PlannedResource>,
) {
    let before = snap(img);
    let (s, r) = try_start(d, second, res);
    match r {
        Err(DriverError::InUse {
            path, other, rule, ..
        }) => {
            assert_eq!(path, img, "the error names the object");
            assert_eq!(other, first.g.name, "the error names the other guest");
            assert!(rule.contains("private read-write"), "the rule: {rule}");
        }
        other => panic!("{second} must be refused on {}: {other:?}", img.display()),
    }
    assert_eq!(snap(img), before, "a refused start changes nothing");
    assert!(
        first.can(img, first_write),
        "the first guest keeps its access"
    );
    assert!(!s.can(img, false), "the refused guest cannot read it");
    stop(d, &s);
    assert_eq!(
        snap(img),
        before,
        "the refused guest's stop changes nothing"
    );
    assert!(
        first.can(img, first_write),
        "the first guest still has its access"
    );
}

#[test]
fn attack_exclusive_second_guest_names_private_disk_rw() {
    must_run_as_root();
    let Some((_dir, d, img)) = setup() else {
        return;
    };
    let before = snap(&img);
    let a = start(&d, "a", vec![disk(&img)]);
    assert!(
        a.can(&img, true),
        "control: the owner reads and writes its disk"
    );
    assert_refused(&d, &img, &a, true, "b", vec![disk(&img)]);
    stop(&d, &a);
    assert_eq!(snap(&img), before);
}

#[test]
fn attack_exclusive_second_guest_names_private_disk_readonly() {
    must_run_as_root();
    let Some((_dir, d, img)) = setup() else {
        return;
    };
    let before = snap(&img);
    let a = start(&d, "a", vec![disk(&img)]);
    assert_refused(&d, &img, &a, true, "b", vec![cdrom(&img)]);
    stop(&d, &a);
    assert_eq!(snap(&img), before);
}

#[test]
fn attack_exclusive_second_guest_names_private_disk_as_backing_file() {
    must_run_as_root();
    let Some((dir, d, img)) = setup() else { return };
    let before = snap(&img);
    let a = start(&d, "a", vec![disk(&img)]);
    let top = dir.path().join("top.qcow2");
    file(&top, 0o600);
    assert_refused(&d, &img, &a, true, "b", vec![disk(&top), backing(&img)]);
    assert_eq!(
        owner_mode(&top),
        (0, 0, 0o600),
        "the top image was not touched"
    );
    stop(&d, &a);
    assert_eq!(snap(&img), before);
}

#[test]
fn attack_exclusive_private_use_of_a_base_another_guest_reads() {
    must_run_as_root();
    let Some((_dir, d, img)) = setup() else {
        return;
    };
    let before = snap(&img);
    let a = start(&d, "a", vec![cdrom(&img)]);
    assert!(a.can(&img, false), "control: the reader reads");
    let b_before = snap(&img);
    let (b, r) = try_start(&d, "b", vec![disk(&img)]);
    assert!(
        matches!(&r, Err(DriverError::InUse { other, .. }) if other == "a"),
        "{r:?}"
    );
    assert_eq!(snap(&img), b_before);
    assert!(!b.can(&img, true) && !b.can(&img, false));
    assert!(a.can(&img, false));
    stop(&d, &b);
    stop(&d, &a);
    assert_eq!(snap(&img), before);
}

#[test]
fn attack_exclusive_two_starts_race_for_one_private_disk() {
    must_run_as_root();
    let Some((_dir, d, img)) = setup() else {
        return;
    };
    let before = snap(&img);
    let d = Arc::new(d);
    for round in 0..20 {
        let go = Arc::new(std::sync::Barrier::new(2));
        let run = |name: &'static str| {
            let (d, go, img) = (d.clone(), go.clone(), img.clone());
            std::thread::spawn(move || {
                let p = plan(name, vec![disk(&img)]);
                let mut g = guest(name);
                d.reserve(&p, &mut g).expect("reserve");
                go.wait();
                let r = d.set_all(&p, &g);
                (p, g, r)
            })
        };
        let (ta, tb) = (run("ra"), run("rb"));
        let (a, b) = (ta.join().expect("a"), tb.join().expect("b"));
        let wins = [&a, &b].iter().filter(|x| x.2.is_ok()).count();
        assert_eq!(
            wins, 1,
            "round {round}: exactly one start wins: {:?} {:?}",
            a.2, b.2
        );
        for (p, g, _) in [a, b] {
            assert!(d.restore_all(&p, &g).is_empty());
            d.release(&g).expect("release");
        }
        assert_eq!(snap(&img), before, "round {round}");
    }
}

#[test]
fn attack_exclusive_refused_under_selinux_too() {
    must_run_as_root();
    let Some((dir, d, img)) = setup() else { return };
    // The SELinux relabel engine over the same store as the DAC driver: it claims through
    // the same table before any label is written.
    let store = Arc::new(svirt_store::Store::open(&dir.path().join("state2")).expect("store"));
    let dac = dac_driver_on(
        store.clone(),
        FIRST_ID,
        LAST_ID,
        svirt_drivers::dac::DacConfig {
            accounts_root: dir.path().join("accounts"),
            ..Default::default()
        },
    );
    drop(d);
    let relabeler = svirt_drivers::relabel::Relabeler::open(
        store.clone(),
        svirt_hostfs::FsRoot::host().expect("root"),
        1,
    )
    .expect("relabeler");
    let se = svirt_drivers::selinux::SelinuxDriver::new("/", relabeler, None);
    let a = start(&dac, "a", vec![disk(&img)]);
    let before = snap(&img);
    let ctx: svirt_labels::Context = "system_u:object_r:svirt_image_t:s0:c1,c2"
        .parse()
        .expect("context");
    let mut pr = disk(&img);
    pr.selinux = Some(svirt_domain::LabelTemplate::from_context(&ctx));
    pr.selinux_restore = true;
    let mut p = plan("b", vec![pr]);
    p.models = vec![svirt_domain::Model::Selinux];
    p.selinux_relabel = true;
    p.dac_enabled = false;
    let g = guest("b");
    let r = se.set_all(&p, &g);
    assert!(
        matches!(&r, Err(DriverError::InUse { model: svirt_domain::Model::Selinux, other, .. }) if other == "a"),
        "{r:?}"
    );
    assert_eq!(snap(&img), before, "no label written");
    assert!(se.restore_all(&p, &g).is_empty());
    // Control: once a is gone, b's SELinux start passes and labels the disk.
    stop(&dac, &a);
    se.set_all(&p, &g).expect("b alone");
    assert!(se.restore_all(&p, &g).is_empty());
}

#[test]
fn attack_grant_read_is_not_world_readable() {
    must_run_as_root();
    let Some((_dir, d, img)) = setup() else {
        return;
    };
    let before = snap(&img);
    assert!(
        !kernel_allows(NOBODY, NOBODY, &[], &img, false),
        "precondition"
    );
    let a = start(&d, "a", vec![cdrom(&img)]);
    assert!(
        a.can(&img, false),
        "control: the guest reads its read-only image"
    );
    assert!(!a.can(&img, true), "read-only: the guest cannot write it");
    assert!(
        !kernel_allows(NOBODY, NOBODY, &[], &img, false),
        "another local user must not read a guest's read-only content"
    );
    assert_eq!(owner_mode(&img).2 & 0o007, 0, "no 'other' bit");
    stop(&d, &a);
    assert_eq!(snap(&img), before, "ACL and mode back byte for byte");
}

#[test]
fn attack_exclusive_control_shared_disk_two_guests_third_refused_by_kernel() {
    must_run_as_root();
    let Some((dir, d, img)) = setup() else { return };
    let before = snap(&img);
    let other_img = dir.path().join("other-shared.img");
    file(&other_img, 0o600);
    let a = start(&d, "a", vec![shared_disk(&img)]);
    let b = start(&d, "b", vec![shared_disk(&img)]);
    // A third guest sharing another disk: it has a shared group too, not this one's.
    let c = start(&d, "c", vec![shared_disk(&other_img)]);
    for s in [&a, &b] {
        assert!(
            s.can(&img, true) && s.can(&img, false),
            "{} shares it",
            s.g.name
        );
    }
    assert!(c.can(&other_img, true), "c's own shared disk");
    assert!(
        !c.can(&img, false) && !c.can(&img, true),
        "c cannot open a's and b's disk"
    );
    assert!(!kernel_allows(NOBODY, NOBODY, &[], &img, false));
    stop(&d, &a);
    assert!(b.can(&img, true), "b keeps it after a stops");
    stop(&d, &b);
    stop(&d, &c);
    assert_eq!(snap(&img), before);
}

#[test]
fn attack_exclusive_control_readonly_base_two_guests() {
    must_run_as_root();
    let Some((_dir, d, img)) = setup() else {
        return;
    };
    // An ACL an administrator set (a named entry and its mask) must come back as it was.
    set_acl(&img, &ADMIN_ACL);
    let before = snap(&img);
    assert!(
        kernel_allows(4242, 4242, &[], &img, false),
        "the administrator's entry works"
    );
    let a = start(&d, "a", vec![backing(&img)]);
    let b = start(&d, "b", vec![cdrom(&img)]);
    let c = start(&d, "c", vec![]);
    assert!(
        a.can(&img, false) && b.can(&img, false),
        "both read the base"
    );
    assert!(
        !a.can(&img, true) && !b.can(&img, true),
        "neither writes it"
    );
    assert!(!c.can(&img, false), "a guest not granted cannot read it");
    stop(&d, &a);
    assert!(!a.can(&img, false), "a's entry went with it");
    assert!(b.can(&img, false), "b's entry stays");
    assert!(
        kernel_allows(4242, 4242, &[], &img, false),
        "the administrator's entry still works"
    );
    stop(&d, &b);
    stop(&d, &c);
    assert_eq!(
        snap(&img),
        before,
        "the last stop restores the original bytes"
    );
}

/// Every entry of `root` with its owner, group, mode and xattrs (ACL included).
fn tree_snap(root: &Path) -> BTreeMap<PathBuf, Snap> {
    tree_snapshot(root)
        .into_keys()
        .map(|p| {
            let s = snap(&p);
            (p, s)
        })
        .collect()
}

/// Whether `s`'s uid can read every file of the tree (and list every directory).
fn reads_tree(uid: u32, gid: u32, groups: &[u32], root: &Path) -> bool {
    let mut c = Command::new("setpriv");
    c.args(["--reuid", &uid.to_string(), "--regid", &gid.to_string()]);
    if groups.is_empty() {
        c.arg("--clear-groups");
    } else {
        let g: Vec<String> = groups.iter().map(u32::to_string).collect();
        c.args(["--groups", &g.join(",")]);
    }
    c.args([
        "--",
        "sh",
        "-c",
        "find \"$1\" -type f -exec cat {} + > /dev/null && find \"$1\" -type d -exec ls {} + > /dev/null",
        "sh",
    ]);
    c.arg(root);
    c.stderr(std::process::Stdio::null());
    c.status().expect("setpriv").success()
}

#[test]
fn attack_grant_read_tree_two_readers_alone_and_exact() {
    must_run_as_root();
    let Some((dir, d, _img)) = setup() else {
        return;
    };
    let share = dir.path().join("ro-share");
    std::fs::create_dir_all(share.join("sub/deeper")).expect("mkdir");
    chmod(&share, 0o700);
    chmod(&share.join("sub"), 0o750);
    chmod(&share.join("sub/deeper"), 0o2700);
    for (f, m) in [
        ("a", 0o600),
        ("sub/b", 0o640),
        ("sub/deeper/c", 0o4700),
        ("sub/d", 0o644),
    ] {
        file(&share.join(f), m);
    }
    // An administrator's ACL on one file must come back byte for byte.
    set_acl(&share.join("a"), &ADMIN_ACL);
    let before = tree_snap(&share);
    let ro = |p: &Path| {
        let mut r = tree_resource(p, Sharing::ReadOnlyContent, DacAction::GrantRead);
        r.resource.access = Access::Ro;
        r
    };
    let a = start(&d, "a", vec![ro(&share)]);
    let b = start(&d, "b", vec![ro(&share)]);
    let c = start(&d, "c", vec![]);
    let (au, ag) = a.ids();
    let (bu, bg) = b.ids();
    let (cu, cg) = c.ids();
    assert!(
        reads_tree(au, ag, &a.groups, &share),
        "a reads the whole share"
    );
    assert!(
        reads_tree(bu, bg, &b.groups, &share),
        "b reads the whole share"
    );
    assert!(!reads_tree(cu, cg, &[], &share), "c (not granted) cannot");
    assert!(
        !reads_tree(NOBODY, NOBODY, &[], &share),
        "a local user cannot"
    );
    assert!(!a.can(&share.join("sub/d"), true), "read-only: no write");
    for (p, ((_, _, mode), _)) in tree_snap(&share) {
        assert_eq!(
            mode & 0o007,
            before[&p].0.2 & 0o007,
            "{}: 'other' bits unchanged",
            p.display()
        );
    }
    stop(&d, &a);
    assert!(
        !kernel_allows(au, ag, &[], &share.join("a"), false),
        "a's entries went"
    );
    assert!(reads_tree(bu, bg, &b.groups, &share), "b keeps its access");
    stop(&d, &b);
    stop(&d, &c);
    assert_eq!(
        tree_snap(&share),
        before,
        "owners, modes, ACLs and xattrs back exactly"
    );
}

#[test]
fn attack_state_tree_database_is_not_world_readable() {
    must_run_as_root();
    let Some((dir, d, _img)) = setup() else {
        return;
    };
    // A process umask that would make it 0644.
    // SAFETY: umask cannot fail.
    let old = unsafe { libc::umask(0o022) };
    let share = dir.path().join("share");
    std::fs::create_dir(&share).expect("mkdir");
    file(&share.join("secret-name"), 0o600);
    let a = start(&d, "a", vec![private_tree(&share)]);
    // SAFETY: as above.
    unsafe { libc::umask(old) };
    let state = dir.path().join("state");
    // The tree records (share file names) are in the ledger, which is root's alone.
    assert!(
        !state.join("svirt.dac-trees.redb").exists(),
        "no tree file beside the ledger"
    );
    let mode = owner_mode(&state.join("svirt.redb")).2;
    assert_eq!(
        mode & 0o077,
        0,
        "svirt.redb: mode {mode:o} lets others read share file names"
    );
    assert!(
        !kernel_allows(NOBODY, NOBODY, &[], &state.join("svirt.redb"), false),
        "a local user cannot read the tree records"
    );
    stop(&d, &a);
}

#[test]
fn attack_grant_read_control_static_uid_shared_by_two_guests() {
    must_run_as_root();
    let Some((dir, d, img)) = setup() else { return };
    let share = dir.path().join("ro");
    std::fs::create_dir(&share).expect("mkdir");
    chmod(&share, 0o700);
    file(&share.join("f"), 0o600);
    let before = (snap(&img), tree_snap(&share));
    let ro = |p: &Path| {
        let mut r = tree_resource(p, Sharing::ReadOnlyContent, DacAction::GrantRead);
        r.resource.access = Access::Ro;
        r
    };
    // Two guests with one static uid (`<seclabel model='dac' type='static'>`): one entry.
    let mk = |name: &str| {
        let mut p = plan(name, vec![cdrom(&img), ro(&share)]);
        p.dac_ids = Some((4343, 4343));
        let mut g = guest(name);
        d.reserve(&p, &mut g).expect("reserve");
        d.set_all(&p, &g).expect("set_all");
        (p, g)
    };
    let (pa, ga) = mk("sa");
    let (pb, gb) = mk("sb");
    assert!(d.restore_all(&pa, &ga).is_empty());
    assert!(
        kernel_allows(4343, 4343, &[], &img, false),
        "the other guest with the same uid still reads the image"
    );
    assert!(reads_tree(4343, 4343, &[], &share), "and the share");
    assert!(d.restore_all(&pb, &gb).is_empty());
    assert!(!kernel_allows(4343, 4343, &[], &img, false));
    assert_eq!((snap(&img), tree_snap(&share)), before);
}

#[test]
fn attack_restore_guest_regroups_and_setuids_its_share_entries() {
    must_run_as_root();
    let Some((dir, d, img)) = setup() else { return };
    let share = dir.path().join("share");
    std::fs::create_dir_all(share.join("sub")).expect("mkdir");
    file(&share.join("f"), 0o644);
    file(&share.join("sub/g"), 0o640);
    let before = tree_snap(&share);
    // The guest shares a disk too: it has that disk's group as a supplementary group.
    let a = start(&d, "a", vec![private_tree(&share), shared_disk(&img)]);
    let (u, g) = a.ids();
    let sg = owner_mode(&img).1;
    assert!(a.groups.contains(&sg), "{:?}", a.groups);
    // What a compromised VMM can do to the entries it owns: chgrp to one of its groups,
    // chmod (set-uid on its own file included).
    let mut c = Command::new("setpriv");
    c.args(["--reuid", &u.to_string(), "--regid", &g.to_string()]);
    c.args(["--groups", &sg.to_string(), "--", "sh", "-c"]);
    c.arg("chgrp \"$2\" \"$1/f\" \"$1/sub\" && chmod 4777 \"$1/f\" && chmod 2777 \"$1/sub\"");
    c.args(["sh"]);
    c.arg(&share);
    c.arg(sg.to_string());
    assert!(
        c.status().expect("setpriv").success(),
        "the guest changes its entries"
    );
    assert_eq!(owner_mode(&share.join("f")), (u, sg, 0o4777));
    stop(&d, &a);
    let after = tree_snap(&share);
    for (p, v) in &before {
        assert_eq!(after.get(p), Some(v), "{}: not restored", p.display());
    }
    assert!(
        after.values().all(|((owner, _, _), _)| *owner != u),
        "nothing left owned by the released uid {u}"
    );
}

#[test]
fn attack_grant_read_dead_reader_entry_removed_at_recovery() {
    must_run_as_root();
    let Some((dir, d, img)) = setup() else { return };
    drop(d);
    let store = Arc::new(svirt_store::Store::open(&dir.path().join("state3")).expect("store"));
    let dac = dac_driver_on(
        store.clone(),
        FIRST_ID,
        LAST_ID,
        svirt_drivers::dac::DacConfig {
            accounts_root: dir.path().join("accounts"),
            ..Default::default()
        },
    );
    let before = snap(&img);
    let a = start(&dac, "a", vec![cdrom(&img)]);
    let b = start(&dac, "b", vec![cdrom(&img)]);
    // a's svirtd dies with a running: nothing restored for it. At the next open, a is not
    // running, b is: the engine's recovery removes a's entry (its uid is released and would
    // be the next guest's), b keeps reading.
    let engine = svirt_drivers::relabel::Relabeler::open(
        store.clone(),
        svirt_hostfs::FsRoot::host().expect("root"),
        1,
    )
    .expect("engine");
    let rep = engine.recover(&|g| g == "b");
    assert!(rep.errors.is_empty(), "{:?}", rep.errors);
    assert!(
        !a.can(&img, false),
        "the dead guest's uid cannot read any more"
    );
    assert!(b.can(&img, false), "the live reader still can");
    stop(&dac, &b);
    dac.release(&a.g).expect("release a");
    assert_eq!(snap(&img), before);
    assert!(store.list_originals().expect("list").is_empty());
}

#[test]
fn attack_exclusive_disk_inside_another_guests_private_share() {
    must_run_as_root();
    let Some((dir, d, _img)) = setup() else {
        return;
    };
    let share = dir.path().join("a-share");
    std::fs::create_dir_all(share.join("sub")).expect("mkdir");
    let inner = share.join("sub/disk.img");
    file(&inner, 0o600);
    let before = (tree_snap(&share), snap(&inner));
    // 1. The share first: another guest naming a file inside it (rw, or read-only) is
    //    refused, nothing changes, the share's guest keeps the file.
    let a = start(&d, "a", vec![private_tree(&share)]);
    let during = (tree_snap(&share), snap(&inner));
    for res in [vec![disk(&inner)], vec![cdrom(&inner)]] {
        let (b, r) = try_start(&d, "b", res);
        assert!(
            matches!(&r, Err(DriverError::InUse { path, other, .. }) if path == &inner && other == "a"),
            "{r:?}"
        );
        assert_eq!((tree_snap(&share), snap(&inner)), during);
        assert!(!b.can(&inner, false));
        assert!(a.can(&inner, true), "a keeps the file of its share");
        stop(&d, &b);
    }
    stop(&d, &a);
    assert_eq!((tree_snap(&share), snap(&inner)), before);
    // 2. The disk first: a share containing it is refused to another guest.
    let b = start(&d, "b", vec![disk(&inner)]);
    let during = (tree_snap(&share), snap(&inner));
    let (a, r) = try_start(&d, "a", vec![private_tree(&share)]);
    assert!(
        matches!(&r, Err(DriverError::InUse { path, other, .. }) if path == &share && other == "b"),
        "{r:?}"
    );
    assert_eq!((tree_snap(&share), snap(&inner)), during);
    assert!(b.can(&inner, true));
    stop(&d, &a);
    stop(&d, &b);
    assert_eq!((tree_snap(&share), snap(&inner)), before);
}

/// A loop device with two partitions (table written here, partitions added with `partx`),
/// detached when dropped.
struct LoopWithPartition {
    dev: PathBuf,
    part: PathBuf,
    part2: PathBuf,
}

impl LoopWithPartition {
    fn new(img: &Path) -> LoopWithPartition {
        use std::io::Write;
        let f = std::fs::File::create(img).expect("image");
        f.set_len(16 << 20).expect("size");
        let mut mbr = [0u8; 512];
        for (i, (start, len)) in [(2048u32, 14336u32), (16384, 16384)]
            .into_iter()
            .enumerate()
        {
            let e = &mut mbr[446 + 16 * i..462 + 16 * i];
            e[4] = 0x83;
            e[8..12].copy_from_slice(&start.to_le_bytes());
            e[12..16].copy_from_slice(&len.to_le_bytes());
        }
        mbr[510] = 0x55;
        mbr[511] = 0xaa;
        (&f).write_all(&mbr).expect("mbr");
        let out = Command::new("losetup")
            .args(["-f", "--show"])
            .arg(img)
            .output()
            .expect("losetup");
        assert!(out.status.success(), "losetup: {out:?}");
        let dev = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim().to_string());
        let l = LoopWithPartition {
            part: PathBuf::from(format!("{}p1", dev.display())),
            part2: PathBuf::from(format!("{}p2", dev.display())),
            dev,
        };
        let st = Command::new("partx")
            .arg("-a")
            .arg(&l.dev)
            .status()
            .expect("partx (util-linux)");
        assert!(st.success(), "partx -a {}", l.dev.display());
        for _ in 0..100 {
            if l.part.exists() && l.part2.exists() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        assert!(l.part2.exists(), "{} did not appear", l.part2.display());
        l
    }
}

impl Drop for LoopWithPartition {
    fn drop(&mut self) {
        let _ = Command::new("partx").arg("-d").arg(&self.dev).status();
        let _ = Command::new("losetup").arg("-d").arg(&self.dev).status();
    }
}

/// Exclusivity follows the blocks, not the node: a partition of a guest's private disk, or
/// another node with the disk's device number, is the same storage; so is the disk of a
/// guest's partition. Controls: once the first guest stopped, the partition may be another
/// guest's, and two partitions of one disk may be two guests'.
#[test]
fn attack_exclusive_block_device_partition_and_second_node() {
    must_run_as_root();
    let Some((dir, d, _img)) = setup() else {
        return;
    };
    let l = LoopWithPartition::new(&dir.path().join("blocks.img"));
    let a = start(&d, "a", vec![disk(&l.dev)]);
    let rdev = std::os::unix::fs::MetadataExt::rdev(&std::fs::metadata(&l.dev).expect("stat"));
    let twin = dir.path().join("twin");
    let st = Command::new("mknod")
        .arg(&twin)
        .args([
            "b",
            &libc::major(rdev).to_string(),
            &libc::minor(rdev).to_string(),
        ])
        .status()
        .expect("mknod");
    assert!(st.success());
    for (name, obj) in [("b", l.part.clone()), ("c", twin.clone())] {
        let before = owner_mode(&obj);
        let (s, r) = try_start(&d, name, vec![disk(&obj)]);
        match r {
            Err(DriverError::InUse { path, other, .. }) => {
                assert!(
                    path.to_string_lossy().contains("(block device"),
                    "names the shared blocks: {}",
                    path.display()
                );
                assert_eq!(other, "a", "names the other guest");
            }
            other => panic!("{name} on {} must be refused: {other:?}", obj.display()),
        }
        assert_eq!(owner_mode(&obj), before, "a refused start changes nothing");
        d.release(&s.g).expect("release");
    }
    stop(&d, &a);
    let b = start(&d, "b", vec![disk(&l.part)]);
    let c = start(&d, "c", vec![disk(&l.part2)]);
    // The whole disk now overlaps both.
    let (s, r) = try_start(&d, "e", vec![disk(&l.dev)]);
    assert!(
        matches!(r, Err(DriverError::InUse { .. })),
        "the disk of guests' partitions must be refused: {r:?}"
    );
    d.release(&s.g).expect("release");
    stop(&d, &c);
    stop(&d, &b);
}
