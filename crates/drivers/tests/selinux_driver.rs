//! SELinux driver host interfaces (probe, process label) on a fake root and on this host,
//! soft errors on a read-only mount, and the pre-6.13 syscall fallback.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod selinux_support;

use std::path::Path;
use std::process::Command;

use selinux_support::*;
use svirt_drivers::SecurityDriver;
use svirt_drivers::relabel::{LabelJob, Warning};
use svirt_drivers::selinux::{SelinuxDriver, SelinuxState, boolean_for_fs, soft_message};
use svirt_hostfs::{self as fsops, fstype};

fn write(root: &Path, rel: &str, content: &[u8]) {
    let p = root.join(rel);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, content).unwrap();
}

#[test]
fn probe_reads_selinuxfs_and_the_process_context() {
    let env = env();
    let root = tempfile::tempdir().unwrap();
    let drv = SelinuxDriver::new(root.path(), env.relabeler.clone(), None);
    let r = drv.probe();
    assert!(
        !r.usable && r.reason.contains("selinuxfs is not mounted"),
        "{r:?}"
    );
    write(root.path(), "sys/fs/selinux/enforce", b"0");
    assert!(matches!(drv.state(), SelinuxState::Unavailable(ref m) if m.contains("attr/current")));
    write(
        root.path(),
        "proc/self/attr/current",
        b"system_u:system_r:virtd_t:s0\0",
    );
    assert_eq!(drv.state(), SelinuxState::Permissive);
    write(root.path(), "sys/fs/selinux/enforce", b"1");
    let r = drv.probe();
    assert!(r.usable && r.reason.contains("enforcing"), "{r:?}");

    write(
        root.path(),
        "proc/4242/attr/current",
        b"system_u:system_r:svirt_t:s0:c1,c2\0",
    );
    assert_eq!(
        drv.process_label(4242).unwrap().as_deref(),
        Some("system_u:system_r:svirt_t:s0:c1,c2")
    );
    assert!(
        drv.process_label(4243).is_err(),
        "a missing process is an error"
    );

    // This host: no SELinux (probe says why); /proc/PID/attr/current gives EINVAL → None.
    let host = SelinuxDriver::new("/", env.relabeler.clone(), None);
    let r = host.probe();
    eprintln!("this host: {r:?}");
    if !r.usable {
        assert!(!r.reason.is_empty());
        assert_eq!(host.process_label(std::process::id() as i32).unwrap(), None);
    }
}

#[test]
fn soft_error_messages_name_the_boolean() {
    assert_eq!(boolean_for_fs(fstype::NFS), Some("virt_use_nfs"));
    assert_eq!(boolean_for_fs(fstype::FUSE), Some("virt_use_fusefs"));
    assert_eq!(boolean_for_fs(fstype::CIFS), Some("virt_use_samba"));
    assert_eq!(boolean_for_fs(fstype::SMB2), Some("virt_use_samba"));
    assert_eq!(boolean_for_fs(0xEF53), None);
    let w = Warning {
        path: "/mnt/nfs/disk.img".into(),
        message: "Operation not supported".into(),
        errno: Some(libc::EOPNOTSUPP),
        fs_type: Some(fstype::NFS),
    };
    let m = soft_message(&w);
    assert!(
        m.contains("virt_use_nfs") && m.contains("/mnt/nfs/disk.img"),
        "{m}"
    );
}

#[test]
fn read_only_filesystem_is_a_soft_error() {
    let mnt = tempfile::tempdir().unwrap();
    let m = mnt.path();
    let ok = Command::new("mount")
        .args([
            "-t",
            "tmpfs",
            "-o",
            "size=1m",
            "svirt-test",
            m.to_str().unwrap(),
        ])
        .status();
    if !ok.is_ok_and(|s| s.success()) {
        svirt_testkit::skip("root", "cannot mount a tmpfs (needs root)");
        return;
    }
    struct Umount<'a>(&'a Path);
    impl Drop for Umount<'_> {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg(self.0).status();
        }
    }
    let _guard = Umount(m);
    std::fs::write(m.join("disk.raw"), b"d").unwrap();
    set_label(&m.join("disk.raw"), INITIAL);
    let remount = Command::new("mount")
        .args(["-o", "remount,ro", m.to_str().unwrap()])
        .status()
        .unwrap();
    assert!(remount.success());
    let env = env();
    let applied = env
        .relabeler
        .set_labels(
            "ro-guest",
            &[LabelJob {
                path: m.join("disk.raw"),
                label: "system_u:object_r:svirt_image_t:s0:c1,c2".into(),
                restore: true,
                recursive: false,
                identity: None,
            }],
        )
        .unwrap();
    assert_eq!(applied.warnings.len(), 1, "{applied:?}");
    assert_eq!(applied.warnings[0].errno, Some(libc::EROFS));
    let msg = soft_message(&applied.warnings[0]);
    assert!(
        msg.contains("disk.raw") && msg.contains("virt_use_nfs"),
        "{msg}"
    );
    assert_eq!(label(&m.join("disk.raw")).as_deref(), Some(INITIAL));
    assert!(
        env.store.list_originals().unwrap().is_empty(),
        "no record for an object left untouched"
    );
}

#[test]
fn legacy_syscall_fallback_labels_and_restores_the_same() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path().canonicalize().unwrap();
    if !xattrs_work(&d) {
        return;
    }
    std::fs::create_dir_all(d.join("t/a/b")).unwrap();
    let mut all = vec![d.join("t"), d.join("t/a"), d.join("t/a/b"), d.join("disk")];
    std::fs::write(d.join("disk"), b"x").unwrap();
    for i in 0..30 {
        let p = d.join(format!("t/a/f{i}"));
        std::fs::write(&p, b"x").unwrap();
        if i % 2 == 0 {
            set_label(&p, INITIAL);
        }
        all.push(p);
    }
    std::os::unix::fs::symlink("/etc/passwd", d.join("t/a/link")).unwrap();
    let passwd_before = state(Path::new("/etc/passwd"));
    let before: Vec<State> = all.iter().map(|p| state(p)).collect();
    fsops::force_legacy_syscalls(true);
    let env = env();
    let l = "system_u:object_r:svirt_image_t:s0:c7,c9";
    let jobs = [
        LabelJob {
            path: d.join("t"),
            label: l.into(),
            restore: true,
            recursive: true,
            identity: None,
        },
        LabelJob {
            path: d.join("disk"),
            label: l.into(),
            restore: true,
            recursive: false,
            identity: None,
        },
    ];
    let r = env.relabeler.set_labels("legacy", &jobs);
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        r.unwrap();
        for p in &all {
            assert_eq!(label(p).as_deref(), Some(l), "{}", p.display());
        }
        assert_eq!(
            label(&d.join("t/a/link")).as_deref(),
            Some(l),
            "the link itself is labeled"
        );
        assert_eq!(
            state(Path::new("/etc/passwd")),
            passwd_before,
            "followed a symlink"
        );
        assert!(env.relabeler.restore_labels("legacy").is_empty());
        let after: Vec<State> = all.iter().map(|p| state(p)).collect();
        assert_eq!(after, before);
    }));
    fsops::force_legacy_syscalls(false);
    result.unwrap();
}
