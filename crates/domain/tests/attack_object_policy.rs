//! Attack suite, classes 1–3 of the hardening issue, at the layer that decides: the object
//! policy every host object passes (`svirt_domain::Host`). Each attack is planted for real
//! (an unprivileged user's symlinks made with `setpriv`, hard links, bind mounts, loop
//! devices holding a mounted file system, rewritten qcow2 headers) and has a control that
//! must be accepted, so a policy that refuses everything fails these tests.
//!
//! Run as root (like the whole suite): planting as another user needs `setpriv`.
#![allow(clippy::unwrap_used)]

mod common;

use std::os::unix::fs::{MetadataExt, PermissionsExt, symlink};
use std::path::{Path, PathBuf};
use std::process::Command;

use svirt_domain::*;

/// An unprivileged uid that owns `u/` in the case directory, and another one.
const MALLORY: u32 = 64_321;
const VICTIM: u32 = 64_322;

struct Case {
    _tmp: tempfile::TempDir,
    dir: PathBuf,
    root: tempfile::TempDir,
    protected: Vec<(PathBuf, &'static str)>,
    image_roots: Vec<PathBuf>,
}

fn case() -> Case {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().canonicalize().unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let u = dir.join("u");
    std::fs::create_dir(&u).unwrap();
    std::os::unix::fs::chown(&u, Some(MALLORY), Some(MALLORY)).unwrap();
    Case {
        _tmp: tmp,
        dir,
        root: tempfile::tempdir().unwrap(),
        protected: Vec::new(),
        image_roots: Vec::new(),
    }
}

/// Runs `args` as `uid` (no groups, no capabilities), as a local user would.
fn as_user(uid: u32, args: &[&str]) {
    let out = Command::new("setpriv")
        .args([
            &format!("--reuid={uid}"),
            &format!("--regid={uid}"),
            "--clear-groups",
            "--",
        ])
        .args(args)
        .output()
        .expect("setpriv is required (util-linux)");
    assert!(
        out.status.success(),
        "{args:?} as uid {uid}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Case {
    fn host(&self) -> Host {
        let mut h = Host::new(self.root.path()).with_image_roots(self.image_roots.clone());
        for (p, what) in &self.protected {
            h = h.with_protected(p, *what);
        }
        h
    }
    fn file(&self, rel: &str) -> PathBuf {
        let p = self.dir.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, b"data").unwrap();
        p
    }
    fn user_file(&self, rel: &str, uid: u32) -> PathBuf {
        let p = self.file(rel);
        std::os::unix::fs::chown(&p, Some(uid), Some(uid)).unwrap();
        p
    }
    fn plan(&self, devices: &str) -> Result<Planned> {
        let xml = format!(
            "<domain type='kvm'><name>t</name><uuid>11111111-2222-4333-8444-555555555555</uuid><memory unit='MiB'>64</memory>
             <os><type arch='x86_64'>hvm</type></os><seclabel type='dynamic' model='dac'/><devices>{devices}</devices></domain>"
        );
        let host = self.host();
        let cfg = PlanConfig::for_host(&host)?;
        plan_xml(&xml, &host, &cfg)
    }
    fn refused(&self, devices: &str, wants: &[&str]) -> String {
        let e = match self.plan(devices) {
            Ok(p) => panic!(
                "accepted: {:?}",
                p.plan
                    .resources
                    .iter()
                    .map(|r| r.resource.path.clone())
                    .collect::<Vec<_>>()
            ),
            Err(e) => e.to_string(),
        };
        for w in wants {
            assert!(e.contains(w), "error lacks {w:?}: {e}");
        }
        e
    }
    fn accepted(&self, devices: &str) -> Vec<PathBuf> {
        match self.plan(devices) {
            Ok(p) => p
                .plan
                .resources
                .iter()
                .map(|r| r.resource.path.clone())
                .collect(),
            Err(e) => panic!("control refused: {e}"),
        }
    }
}

fn raw_disk(path: &Path) -> String {
    format!(
        "<disk type='file' device='disk'><driver type='raw'/><source file='{}'/><target dev='vda'/></disk>",
        path.display()
    )
}

fn qcow2_disk(path: &Path, backing_store: &str) -> String {
    format!(
        "<disk type='file' device='disk'><driver type='qcow2'/><source file='{}'/>{backing_store}<target dev='vda'/></disk>",
        path.display()
    )
}

fn block_disk(path: &Path) -> String {
    format!(
        "<disk type='block' device='disk'><driver type='raw'/><source dev='{}'/><target dev='vdb'/></disk>",
        path.display()
    )
}

fn unix_chardev(path: &Path) -> String {
    format!(
        "<parallel type='unix'><source mode='connect' path='{}'/><target port='0'/></parallel>",
        path.display()
    )
}

fn dev_chardev(path: &Path) -> String {
    format!(
        "<serial type='dev'><source path='{}'/><target port='0'/></serial>",
        path.display()
    )
}

// ---- class 1: image headers are guest data ------------------------------------------

/// What a compromised VMM does to its own image: the header now names `backing` (a raw
/// file; relative names are relative to the image's directory).
fn rewrite_backing(image: &Path, backing: &str) {
    let out = Command::new(common::qemu_img())
        .current_dir(image.parent().unwrap())
        .args(["rebase", "-u", "-f", "qcow2", "-F", "raw", "-b", backing])
        .arg(image)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "qemu-img rebase: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn attack_header_backing_file_outside_the_image_directory() {
    let c = case();
    // Another guest's disk, in a directory of its own.
    let victim = c.file("other-guest/disk.img");
    std::fs::create_dir(c.dir.join("vm")).unwrap();
    common::qcow2(&c.dir.join("vm"), "base.qcow2", None);
    common::qcow2(
        &c.dir.join("vm"),
        "top.qcow2",
        Some(("base.qcow2", "qcow2")),
    );
    let top = c.dir.join("vm/top.qcow2");
    // Control: a backing file next to the top image is followed.
    assert!(
        c.accepted(&qcow2_disk(&top, ""))
            .contains(&c.dir.join("vm/base.qcow2"))
    );
    // The compromised VMM rewrites its own header between two starts.
    for name in [
        victim.to_str().unwrap().to_string(),
        "../other-guest/disk.img".to_string(),
    ] {
        rewrite_backing(&top, &name);
        c.refused(
            &qcow2_disk(&top, ""),
            &[
                "disk vda",
                &top.display().to_string(),
                &victim.display().to_string(),
                "<backingStore>",
            ],
        );
    }
    // Through a root-owned symlink next to the image (root may plant links; the object
    // reached still has to lie below the image's directory).
    symlink(&victim, c.dir.join("vm/innocent.img")).unwrap();
    rewrite_backing(&top, "innocent.img");
    c.refused(
        &qcow2_disk(&top, ""),
        &["other-guest/disk.img", "<backingStore>"],
    );
    // Control: declared in the XML, the same file is the operator's choice.
    let declared = format!(
        "<backingStore type='file'><format type='raw'/><source file='{}'/><backingStore/></backingStore>",
        victim.display()
    );
    assert!(c.accepted(&qcow2_disk(&top, &declared)).contains(&victim));
}

#[test]
fn attack_header_backing_file_below_an_image_root_only_when_configured() {
    let mut c = case();
    let base = c.file("images/base.img");
    std::fs::create_dir(c.dir.join("vm")).unwrap();
    common::qcow2(
        &c.dir.join("vm"),
        "top.qcow2",
        Some((base.to_str().unwrap(), "raw")),
    );
    let top = c.dir.join("vm/top.qcow2");
    c.refused(&qcow2_disk(&top, ""), &["image root"]);
    c.image_roots = vec![c.dir.join("images")];
    assert!(c.accepted(&qcow2_disk(&top, "")).contains(&base));
}

#[test]
fn attack_header_backing_file_that_is_the_host_root_block_device() {
    let c = case();
    let dev = root_block_device();
    std::fs::create_dir(c.dir.join("vm")).unwrap();
    common::qcow2(
        &c.dir.join("vm"),
        "top.qcow2",
        Some((dev.to_str().unwrap(), "raw")),
    );
    let top = c.dir.join("vm/top.qcow2");
    c.refused(&qcow2_disk(&top, ""), &["disk vda backing 1"]);
    // Even declared in the XML: it holds the host's root file system.
    let declared = format!(
        "<backingStore type='block'><format type='raw'/><source dev='{}'/><backingStore/></backingStore>",
        dev.display()
    );
    c.refused(
        &qcow2_disk(&top, &declared),
        &["holds a mounted file system"],
    );
}

/// The block device holding `/` (a `/dev/block/M:m` name, resolved by the kernel).
fn root_block_device() -> PathBuf {
    let dev = std::fs::metadata("/").unwrap().dev();
    let (maj, min) = (rustix::fs::major(dev), rustix::fs::minor(dev));
    let uevent = std::fs::read_to_string(format!("/sys/dev/block/{maj}:{min}/uevent"))
        .expect("the root file system is on a block device");
    let name = uevent
        .lines()
        .find_map(|l| l.strip_prefix("DEVNAME="))
        .unwrap();
    PathBuf::from("/dev").join(name)
}

// ---- class 2: symlinks, hard links and bind mounts planted by someone else ----------

#[test]
fn attack_symlink_planted_by_a_user_to_files_not_theirs() {
    let c = case();
    let secret = c.file("secret.img"); // root's, 0644, not under any system tree
    let victims = c.user_file("v/victim.img", VICTIM);
    let rootdir = c.dir.join("rootdir");
    std::fs::create_dir(&rootdir).unwrap();
    let in_rootdir = c.file("rootdir/disk.img");
    let dev = root_block_device();
    for (name, target) in [
        ("shadow.img", PathBuf::from("/etc/shadow")),
        ("hostname.img", PathBuf::from("/etc/hostname")),
        ("secret.img", secret.clone()),
        ("victim.img", victims.clone()),
        ("root.img", dev.clone()),
        ("environ.img", PathBuf::from("/proc/1/environ")),
    ] {
        let link = c.dir.join("u").join(name);
        as_user(
            MALLORY,
            &["ln", "-s", target.to_str().unwrap(), link.to_str().unwrap()],
        );
        c.refused(&raw_disk(&link), &["disk vda", "refusing"]);
    }
    // A directory link: `u/dir/disk.img` with `u/dir -> rootdir`.
    let link = c.dir.join("u/dir");
    as_user(
        MALLORY,
        &[
            "ln",
            "-s",
            rootdir.to_str().unwrap(),
            link.to_str().unwrap(),
        ],
    );
    c.refused(
        &raw_disk(&link.join("disk.img")),
        &[
            "owned by uid 0",
            "a user's link leads only to that user's own objects",
        ],
    );
    assert!(in_rootdir.exists());
    // Control: the user's link to the user's own image is followed.
    let own = c.user_file("u/real.img", MALLORY);
    let link = c.dir.join("u/mine.img");
    as_user(MALLORY, &["ln", "-s", "real.img", link.to_str().unwrap()]);
    assert_eq!(c.accepted(&raw_disk(&link)), vec![own]);
}

#[test]
fn attack_symlink_planted_in_a_shared_sticky_directory() {
    let c = case();
    let tmp = c.dir.join("tmp");
    std::fs::create_dir(&tmp).unwrap();
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o1777)).unwrap();
    let target = c.user_file("u/own.img", MALLORY);
    let link = tmp.join("disk.img");
    as_user(
        MALLORY,
        &["ln", "-s", target.to_str().unwrap(), link.to_str().unwrap()],
    );
    // Even to the planter's own file: the directory is root's, so root's admin must not
    // find a stranger's link followed there.
    c.refused(
        &raw_disk(&link),
        &[
            &link.display().to_string(),
            "symlink owned by uid 64321 in a directory owned by uid 0",
        ],
    );
    // Control: a symlink root planted in a root-owned directory keeps working.
    let img = c.file("images/disk.img");
    let root_link = c.dir.join("disk-link.img");
    symlink(&img, &root_link).unwrap();
    assert_eq!(c.accepted(&raw_disk(&root_link)), vec![img]);
}

#[test]
fn attack_hard_link_of_a_protected_file() {
    let mut c = case();
    // A protected file of a test root on the same file system as the case directory.
    let etc = c.root.path().join("etc");
    std::fs::create_dir(&etc).unwrap();
    std::fs::write(etc.join("secret"), b"s").unwrap();
    let state = c.dir.join("svirt-state");
    std::fs::create_dir(&state).unwrap();
    std::fs::write(state.join("svirt.redb"), b"db").unwrap();
    c.protected
        .push((state.clone(), "svirtd's state directory"));
    let hl = c.dir.join("u/hl.img");
    std::fs::hard_link(etc.join("secret"), &hl).unwrap();
    c.refused(&raw_disk(&hl), &["hard links"]);
    let hl2 = c.dir.join("u/db.img");
    std::fs::hard_link(state.join("svirt.redb"), &hl2).unwrap();
    c.refused(&raw_disk(&hl2), &["hard links"]);
    // Inside a shared tree too.
    let share = c.dir.join("share");
    std::fs::create_dir(&share).unwrap();
    std::fs::write(share.join("ok"), b"").unwrap();
    let fs = format!(
        "<filesystem type='mount'><source dir='{}'/><target dir='s'/></filesystem>",
        share.display()
    );
    assert!(c.accepted(&fs).contains(&share));
    std::fs::hard_link(etc.join("secret"), share.join("passwd")).unwrap();
    c.refused(&fs, &["filesystem s", "share/passwd", "hard links"]);
    // Control: a file with one name is fine.
    let one = c.file("u/one.img");
    assert_eq!(c.accepted(&raw_disk(&one)), vec![one]);
}

/// A mount made for one test (`mount ARGS… AT`), lazily detached when dropped.
struct Mounted(PathBuf);
impl Mounted {
    fn new(args: &[&std::ffi::OsStr], at: &Path) -> Mounted {
        std::fs::create_dir_all(at).unwrap();
        let st = Command::new("mount").args(args).arg(at).status().unwrap();
        assert!(st.success(), "mount {args:?} {}", at.display());
        Mounted(at.to_path_buf())
    }
    /// A read-only bind mount of `src` at `at`.
    fn bind(src: &Path, at: &Path) -> Mounted {
        Mounted::new(
            &[
                "--bind".as_ref(),
                "-o".as_ref(),
                "ro".as_ref(),
                src.as_os_str(),
            ],
            at,
        )
    }
    /// The file system on block device `dev` at `at`.
    fn device(dev: &Path, at: &Path) -> Mounted {
        Mounted::new(&[dev.as_os_str()], at)
    }
}
impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

#[test]
fn attack_bind_mount_of_a_system_directory() {
    let c = case();
    // The whole of /etc, and a subdirectory of it (whose root is not /etc's inode: only
    // the mount's root within its file system tells).
    let b1 = Mounted::bind(Path::new("/etc"), &c.dir.join("u/etc"));
    let b2 = Mounted::bind(Path::new("/etc/default"), &c.dir.join("u/default"));
    for p in [
        b1.0.join("hostname"),
        b1.0.join("passwd"),
        b2.0.join(
            std::fs::read_dir("/etc/default")
                .unwrap()
                .flatten()
                .find(|e| e.path().is_file())
                .unwrap()
                .file_name(),
        ),
    ] {
        c.refused(&raw_disk(&p), &["lies under /etc (system tree /etc)"]);
    }
    // A tree that is such a mount, or that contains a protected tree.
    let fs = |p: &Path| {
        format!(
            "<filesystem type='mount'><source dir='{}'/><target dir='s'/></filesystem>",
            p.display()
        )
    };
    c.refused(&fs(&b2.0), &["system tree /etc"]);
    // Control: a bind mount of an ordinary directory is fine.
    let plain = c.file("plain/disk.img");
    let b3 = Mounted::bind(plain.parent().unwrap(), &c.dir.join("u/plain"));
    assert_eq!(
        c.accepted(&raw_disk(&b3.0.join("disk.img"))),
        vec![b3.0.join("disk.img")]
    );
    drop((b1, b2, b3));
}

// ---- devices -------------------------------------------------------------------------

#[test]
fn attack_device_nodes_of_the_wrong_class() {
    let c = case();
    for p in ["/dev/null", "/dev/mem", "/dev/tty0", "/dev/console"] {
        if Path::new(p).exists() {
            c.refused(
                &dev_chardev(Path::new(p)),
                &["character device", "not of a class"],
            );
        }
    }
    // A copy of /dev/null's node made elsewhere is still /dev/null.
    let node = c.dir.join("null");
    let st = Command::new("mknod")
        .arg(&node)
        .args(["c", "1", "3"])
        .status()
        .unwrap();
    assert!(st.success());
    c.refused(&dev_chardev(&node), &["(mem null)"]);
    // Control: a serial port.
    assert_eq!(
        c.accepted(&dev_chardev(Path::new("/dev/ttyS0"))),
        vec![PathBuf::from("/dev/ttyS0")]
    );
}

/// A loop device over a file, detached when dropped.
struct Loop(PathBuf);
impl Loop {
    fn new(file: &Path) -> Loop {
        let out = Command::new("losetup")
            .args(["-f", "--show"])
            .arg(file)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "losetup: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Loop(PathBuf::from(String::from_utf8(out.stdout).unwrap().trim()))
    }
}
impl Drop for Loop {
    fn drop(&mut self) {
        let _ = Command::new("losetup").arg("-d").arg(&self.0).status();
    }
}

fn mkfs(dev: &Path) {
    let out = Command::new("mkfs.ext4")
        .args(["-q", "-F"])
        .arg(dev)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn attack_block_device_holding_a_mounted_file_system() {
    let c = case();
    let img = c.dir.join("fs.img");
    std::fs::File::create(&img)
        .unwrap()
        .set_len(16 << 20)
        .unwrap();
    let lo = Loop::new(&img);
    mkfs(&lo.0);
    // Control: unmounted, it may be a guest's disk.
    assert_eq!(c.accepted(&block_disk(&lo.0)), vec![lo.0.clone()]);
    let m = Mounted::device(&lo.0, &c.dir.join("mnt"));
    c.refused(
        &block_disk(&lo.0),
        &["disk vdb", "holds a mounted file system"],
    );
    drop(m);
    assert_eq!(c.accepted(&block_disk(&lo.0)), vec![lo.0.clone()]);
}

// ---- class 3: svirtd's own objects ----------------------------------------------------

#[test]
fn attack_svirtd_own_objects_named_in_the_xml() {
    let mut c = case();
    let state = c.dir.join("state");
    let run = c.dir.join("run");
    std::fs::create_dir_all(run.join("guests/victim")).unwrap();
    std::fs::create_dir_all(&state).unwrap();
    std::fs::write(state.join("svirt.redb"), b"db").unwrap();
    let api = std::os::unix::net::UnixListener::bind(run.join("svirtd.sock")).unwrap();
    let victim_qmp =
        std::os::unix::net::UnixListener::bind(run.join("guests/victim/qmp.sock")).unwrap();
    c.protected
        .push((state.clone(), "svirtd's state directory"));
    c.protected.push((run.clone(), "svirtd's run directory"));
    // The API socket on a parallel port: the guest OS could then talk HTTP to svirtd.
    c.refused(
        &unix_chardev(&run.join("svirtd.sock")),
        &["parallel 0", "svirtd's run directory"],
    );
    c.refused(
        &unix_chardev(&run.join("guests/victim/qmp.sock")),
        &["svirtd's run directory"],
    );
    c.refused(
        &raw_disk(&state.join("svirt.redb")),
        &["svirtd's state directory"],
    );
    // Reached through a root-owned link, and through a bind mount of the state dir.
    symlink(state.join("svirt.redb"), c.dir.join("db-link")).unwrap();
    c.refused(
        &raw_disk(&c.dir.join("db-link")),
        &["svirtd's state directory"],
    );
    let b = Mounted::bind(&state, &c.dir.join("u/statebind"));
    c.refused(
        &raw_disk(&b.0.join("svirt.redb")),
        &["svirtd's state directory"],
    );
    // A share that contains the state directory.
    let fs = format!(
        "<filesystem type='mount'><source dir='{}'/><target dir='s'/></filesystem>",
        c.dir.display()
    );
    c.refused(&fs, &["the tree contains"]);
    drop(b);
    // Control: the guest's own socket elsewhere is fine.
    let own = c.dir.join("guest.sock");
    let _l = std::os::unix::net::UnixListener::bind(&own).unwrap();
    assert_eq!(c.accepted(&unix_chardev(&own)), vec![own]);
    drop((api, victim_qmp));
}

// ---- set-id programs and device nodes a user could plant ----------------------------

#[test]
fn attack_setid_program_in_a_writable_share() {
    let c = case();
    let share = c.dir.join("rootfs");
    std::fs::create_dir_all(share.join("usr/bin")).unwrap();
    let su = share.join("usr/bin/su");
    std::fs::write(&su, b"#!/bin/true\n").unwrap();
    let fs = |ro: bool| {
        format!(
            "<filesystem type='mount'><source dir='{}'/><target dir='root'/>{}</filesystem>",
            share.display(),
            if ro { "<readonly/>" } else { "" }
        )
    };
    // Control: without set-id bits, a writable share is fine.
    std::fs::set_permissions(&su, std::fs::Permissions::from_mode(0o755)).unwrap();
    assert!(c.accepted(&fs(false)).contains(&share));
    for mode in [0o4755, 0o2755] {
        std::fs::set_permissions(&su, std::fs::Permissions::from_mode(mode)).unwrap();
        c.refused(
            &fs(false),
            &["filesystem root", "usr/bin/su", "set-id program"],
        );
        // Control: read-only, the guest cannot rewrite it.
        assert!(c.accepted(&fs(true)).contains(&share));
    }
}

#[test]
fn attack_device_node_on_a_nodev_mount() {
    let c = case();
    let img = c.dir.join("blk.img");
    std::fs::File::create(&img)
        .unwrap()
        .set_len(1 << 20)
        .unwrap();
    let lo = Loop::new(&img);
    let rdev = std::fs::metadata(&lo.0).unwrap().rdev();
    // A user's own mount (FUSE, removable media) is nodev: a node there gives no device.
    let m = c.dir.join("u/media");
    let _media = Mounted::new(
        &[
            "-t".as_ref(),
            "tmpfs".as_ref(),
            "-o".as_ref(),
            "nodev,size=1m".as_ref(),
            "usermedia".as_ref(),
        ],
        &m,
    );
    let node = m.join("disk.img");
    let st = Command::new("mknod")
        .arg(&node)
        .args([
            "b",
            &rustix::fs::major(rdev).to_string(),
            &rustix::fs::minor(rdev).to_string(),
        ])
        .status()
        .unwrap();
    assert!(st.success());
    c.refused(&block_disk(&node), &["disk vdb", "mounted nodev"]);
    // Control: the same device from /dev.
    assert_eq!(c.accepted(&block_disk(&lo.0)), vec![lo.0.clone()]);
}

#[test]
fn attack_block_device_whose_partition_is_mounted() {
    let c = case();
    let img = c.dir.join("parts.img");
    let f = std::fs::File::create(&img).unwrap();
    f.set_len(32 << 20).unwrap();
    drop(f);
    write_mbr_two_partitions(&img);
    let lo = Loop::new(&img);
    let _parts = Partitions::add(&lo.0);
    let (p1, p2) = (
        PathBuf::from(format!("{}p1", lo.0.display())),
        PathBuf::from(format!("{}p2", lo.0.display())),
    );
    mkfs(&p1);
    let m = Mounted::device(&p1, &c.dir.join("mnt"));
    c.refused(
        &block_disk(&lo.0),
        &["holds a mounted file system or swap through"],
    );
    c.refused(&block_disk(&p1), &["holds a mounted file system"]);
    // Control: the other partition is free.
    assert_eq!(c.accepted(&block_disk(&p2)), vec![p2.clone()]);
    drop(m);
    assert_eq!(c.accepted(&block_disk(&lo.0)), vec![lo.0.clone()]);
}

/// The partitions of a loop device, added with `partx` (this kernel does not scan
/// partition tables of loop devices) and removed when dropped.
struct Partitions(PathBuf);
impl Partitions {
    fn add(dev: &Path) -> Partitions {
        let st = Command::new("partx").arg("-a").arg(dev).status().unwrap();
        assert!(st.success(), "partx -a {}", dev.display());
        let p2 = PathBuf::from(format!("{}p2", dev.display()));
        for _ in 0..100 {
            if p2.exists() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        assert!(p2.exists(), "{} did not appear", p2.display());
        Partitions(dev.to_path_buf())
    }
}
impl Drop for Partitions {
    fn drop(&mut self) {
        let _ = Command::new("partx").arg("-d").arg(&self.0).status();
    }
}

/// An MBR with two Linux partitions.
fn write_mbr_two_partitions(img: &Path) {
    use std::io::Write;
    let sectors = (std::fs::metadata(img).unwrap().len() / 512) as u32;
    let half = sectors / 2;
    let mut mbr = [0u8; 512];
    for (i, (start, len)) in [(2048, half - 2048), (half, sectors - half)]
        .into_iter()
        .enumerate()
    {
        let e = &mut mbr[446 + 16 * i..462 + 16 * i];
        e[4] = 0x83;
        e[8..12].copy_from_slice(&u32::to_le_bytes(start));
        e[12..16].copy_from_slice(&u32::to_le_bytes(len));
    }
    mbr[510] = 0x55;
    mbr[511] = 0xaa;
    let mut f = std::fs::OpenOptions::new().write(true).open(img).unwrap();
    f.write_all(&mbr).unwrap();
}
