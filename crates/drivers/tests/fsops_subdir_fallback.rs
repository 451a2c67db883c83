//! `Dir::open_subdir` without `openat2`: where it is missing (`ENOSYS`) or filtered by a
//! seccomp profile (`EPERM`), the `openat` fallback gives the same answers: no symlink
//! followed (`ELOOP`), no mount crossed (`EXDEV`, a bind mount of the same filesystem too),
//! nothing above the directory (`..`: `EXDEV`).
//!
//! The mount and seccomp cases run in a child process (this test binary run again for one
//! test): it unshares its mount namespace (the mounts vanish with it) and installs a seccomp
//! filter on its own thread that makes `openat2` fail, then walks and changes a DAC tree.

mod dac_support;

use std::collections::BTreeMap;
use std::ffi::CStr;
use std::path::Path;

use dac_support::cpath;

use svirt_hostfs::{self as fsops, Dir, FsRoot};

/// The names every case table opens below the test directory.
const NAMES: &[&CStr] = &[
    c"real",
    c"real/inner",
    c"real/",
    c".",
    c"link",
    c"link/inner",
    c"real/inlink",
    c"file",
    c"missing",
    c"..",
    c"/real",
    c"/",
    c"mnt",
    c"bind",
    c"bind/inner",
];

/// Inode opened, or the errno.
type Outcome = Result<u64, i32>;

fn table(d: &Dir) -> BTreeMap<String, Outcome> {
    NAMES
        .iter()
        .map(|n| {
            let r = d
                .open_subdir(n)
                .map(|s| s.identity().ino)
                .map_err(|e| e.raw_os_error().unwrap_or(-1));
            (n.to_string_lossy().into_owned(), r)
        })
        .collect()
}

fn make_tree(t: &Path) {
    std::fs::create_dir_all(t.join("real/inner")).expect("mkdir");
    std::fs::write(t.join("file"), b"x").expect("file");
    std::os::unix::fs::symlink("real", t.join("link")).expect("symlink");
    std::os::unix::fs::symlink(".", t.join("real/inlink")).expect("symlink");
    std::fs::create_dir(t.join("mnt")).expect("mkdir");
    std::fs::create_dir(t.join("bind")).expect("mkdir");
}

fn errno(e: i32) -> Outcome {
    Err(e)
}

/// What both paths must answer, given `t`'s inodes (`mounted`: whether `mnt` and `bind` are
/// mount points).
fn expected(t: &Path, mounted: bool) -> BTreeMap<String, Outcome> {
    use std::os::unix::fs::MetadataExt;
    let ino = |p: &str| Ok(std::fs::metadata(t.join(p)).expect("stat").ino());
    let mut m = BTreeMap::new();
    m.insert("real".into(), ino("real"));
    m.insert("real/inner".into(), ino("real/inner"));
    m.insert("real/".into(), ino("real"));
    m.insert(".".into(), ino("."));
    // A symlink as the last component is not followed, and then is not a directory; as an
    // earlier component it is refused.
    m.insert("link".into(), errno(libc::ENOTDIR));
    m.insert("link/inner".into(), errno(libc::ELOOP));
    m.insert("real/inlink".into(), errno(libc::ENOTDIR));
    m.insert("file".into(), errno(libc::ENOTDIR));
    m.insert("missing".into(), errno(libc::ENOENT));
    m.insert("..".into(), errno(libc::EXDEV));
    // An absolute name starts above this directory: refused as `..` is, not walked as a
    // relative one.
    m.insert("/real".into(), errno(libc::EXDEV));
    m.insert("/".into(), errno(libc::EXDEV));
    if mounted {
        m.insert("mnt".into(), errno(libc::EXDEV));
        m.insert("bind".into(), errno(libc::EXDEV));
        m.insert("bind/inner".into(), errno(libc::EXDEV));
    } else {
        m.insert("mnt".into(), ino("mnt"));
        m.insert("bind".into(), ino("bind"));
        m.insert("bind/inner".into(), errno(libc::ENOENT));
    }
    m
}

fn open_top(t: &Path) -> Dir {
    FsRoot::open(t)
        .expect("root")
        .open_dir(Path::new("/"))
        .expect("open top")
}

#[test]
fn fsops_open_subdir_legacy_path_answers_as_openat2_does() {
    let dir = tempfile::tempdir().expect("tempdir");
    let t = dir.path();
    make_tree(t);
    let want = expected(t, false);
    fsops::force_legacy_syscalls(false);
    let top = open_top(t);
    assert_eq!(table(&top), want, "openat2");
    fsops::force_legacy_syscalls(true);
    let legacy = table(&top);
    fsops::force_legacy_syscalls(false);
    assert_eq!(legacy, want, "openat fallback");
}

const CHILD_ENV: &str = "SVIRT_FSOPS_SECCOMP_CHILD";
const CHILD_DONE: &str = "FSOPS-CHILD-DONE";

#[test]
fn fsops_open_subdir_under_seccomp_and_mounts() {
    match std::env::var_os(CHILD_ENV) {
        Some(t) => child(Path::new(&t)),
        None => parent(),
    }
}

fn parent() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = std::process::Command::new(std::env::current_exe().expect("test binary"))
        .args([
            "--exact",
            "fsops_open_subdir_under_seccomp_and_mounts",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, dir.path())
        .output()
        .expect("run the child");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!("child stdout:\n{stdout}\nchild stderr:\n{stderr}");
    assert!(out.status.success(), "child failed: {:?}", out.status);
    assert!(stdout.contains(CHILD_DONE), "the child ran its checks");
}

/// A seccomp filter for this thread: `openat2` fails with `errno`, everything else runs.
fn deny_openat2(errno: u32) -> std::io::Result<()> {
    #[cfg(target_arch = "x86_64")]
    const ARCH: u32 = 0xC000_003E;
    #[cfg(target_arch = "aarch64")]
    const ARCH: u32 = 0xC000_00B7;
    // SAFETY: BPF_STMT/BPF_JUMP only build structs.
    let filter = unsafe {
        [
            // seccomp_data.arch
            libc::BPF_STMT((libc::BPF_LD | libc::BPF_W | libc::BPF_ABS) as u16, 4),
            libc::BPF_JUMP(
                (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16,
                ARCH,
                0,
                3,
            ),
            // seccomp_data.nr
            libc::BPF_STMT((libc::BPF_LD | libc::BPF_W | libc::BPF_ABS) as u16, 0),
            libc::BPF_JUMP(
                (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16,
                libc::SYS_openat2 as u32,
                0,
                1,
            ),
            libc::BPF_STMT(
                (libc::BPF_RET | libc::BPF_K) as u16,
                libc::SECCOMP_RET_ERRNO | errno,
            ),
            libc::BPF_STMT(
                (libc::BPF_RET | libc::BPF_K) as u16,
                libc::SECCOMP_RET_ALLOW,
            ),
        ]
    };
    let prog = libc::sock_fprog {
        len: filter.len() as u16,
        filter: filter.as_ptr() as *mut libc::sock_filter,
    };
    // SAFETY: prctl with integer arguments, and a pointer to `prog`, which lives until the
    // kernel has copied the filter.
    unsafe {
        if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0
            || libc::prctl(
                libc::PR_SET_SECCOMP,
                libc::SECCOMP_MODE_FILTER,
                &prog as *const libc::sock_fprog,
            ) != 0
        {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// A private mount namespace for this thread, with a tmpfs on `t/mnt` and `t/real` bound on
/// `t/bind`. False (with a SKIP line) where that is not allowed.
fn mount_namespace(t: &Path) -> bool {
    // SAFETY: unshare/mount with NUL-terminated strings; they act on this thread's mount
    // namespace only, which dies with the child process.
    unsafe {
        if libc::unshare(libc::CLONE_NEWNS) != 0 {
            svirt_testkit::skip(
                "mount-namespace",
                format!(
                    "mount cases: unshare(CLONE_NEWNS): {}",
                    std::io::Error::last_os_error()
                ),
            );
            return false;
        }
        let none = std::ptr::null();
        assert_eq!(
            libc::mount(
                none,
                c"/".as_ptr(),
                none,
                libc::MS_REC | libc::MS_PRIVATE,
                std::ptr::null()
            ),
            0,
            "make / private: {}",
            std::io::Error::last_os_error()
        );
        assert_eq!(
            libc::mount(
                c"tmpfs".as_ptr(),
                cpath(&t.join("mnt")).as_ptr(),
                c"tmpfs".as_ptr(),
                0,
                std::ptr::null()
            ),
            0,
            "mount tmpfs: {}",
            std::io::Error::last_os_error()
        );
        assert_eq!(
            libc::mount(
                cpath(&t.join("real")).as_ptr(),
                cpath(&t.join("bind")).as_ptr(),
                none,
                libc::MS_BIND,
                std::ptr::null()
            ),
            0,
            "bind mount: {}",
            std::io::Error::last_os_error()
        );
    }
    true
}

fn child(t: &Path) {
    make_tree(t);
    let mounted = mount_namespace(t);
    let want = expected(t, mounted);

    fsops::force_legacy_syscalls(false);
    let top = open_top(t);
    assert_eq!(table(&top), want, "openat2");
    fsops::force_legacy_syscalls(true);
    assert_eq!(table(&top), want, "forced fallback");

    // openat2 worked in this process before the filter came: EPERM from then on.
    fsops::force_legacy_syscalls(false);
    top.open_subdir(c"real").expect("openat2 before the filter");
    deny_openat2(libc::EPERM as u32).expect("seccomp filter");
    // SAFETY: openat2 with a null `how` fails before reading it; the filter answers first.
    let r = unsafe { libc::syscall(libc::SYS_openat2, -1, c".".as_ptr(), 0usize, 0usize) };
    assert_eq!(
        (r, std::io::Error::last_os_error().raw_os_error()),
        (-1, Some(libc::EPERM)),
        "the filter is in place"
    );
    assert_eq!(
        table(&top),
        want,
        "openat2 filtered (EPERM) after it had worked"
    );
    FsRoot::open(t)
        .expect("root")
        .open_dir(Path::new("/real/inner"))
        .expect("open_beneath under the filter");
    // As in a process whose profile was there from the start.
    fsops::force_legacy_syscalls(false);
    assert_eq!(table(&top), want, "openat2 filtered (EPERM) from the start");
    fsops::force_legacy_syscalls(false);
    dac_tree_under_filter(t);

    // Missing rather than filtered: the newest filter's errno wins.
    deny_openat2(libc::ENOSYS as u32).expect("second filter");
    fsops::force_legacy_syscalls(false);
    assert_eq!(table(&top), want, "openat2 missing (ENOSYS)");
    println!("{CHILD_DONE}");
}

/// A DAC share changed and restored exactly while openat2 answers EPERM.
fn dac_tree_under_filter(t: &Path) {
    use dac_support::*;
    use svirt_drivers::SecurityDriver;
    if skip_unless_root() {
        return;
    }
    let share = t.join("share");
    std::fs::create_dir_all(share.join("a/b/c")).expect("mkdir");
    for (i, d) in ["", "a", "a/b", "a/b/c"].iter().enumerate() {
        std::fs::write(share.join(d).join(format!("f{i}")), b"x").expect("file");
    }
    let snap = |p: &Path| -> Vec<(std::path::PathBuf, (u32, u32, u32))> {
        let mut out = vec![(p.to_path_buf(), owner_mode(p))];
        for d in ["a", "a/b", "a/b/c"] {
            out.push((p.join(d), owner_mode(&p.join(d))));
        }
        for (i, d) in ["", "a", "a/b", "a/b/c"].iter().enumerate() {
            let f = p.join(d).join(format!("f{i}"));
            out.push((f.clone(), owner_mode(&f)));
        }
        out
    };
    let before = snap(&share);
    let acc = root_accounts(t);
    let dac = dac_driver(&t.join("state"), &acc, 621_000, 621_010, None);
    let p = plan("seccomp-share", vec![private_tree(&share)]);
    let mut g = guest("seccomp-share");
    dac.reserve(&p, &mut g).expect("reserve");
    dac.set_all(&p, &g).expect("set_all under the filter");
    let (uid, _) = g.ids.expect("ids");
    for (path, (u, _, _)) in snap(&share) {
        assert_eq!(u, uid, "{} changed", path.display());
    }
    let errors = dac.restore_all(&p, &g);
    assert!(errors.is_empty(), "{errors:?}");
    assert_eq!(snap(&share), before, "restored exactly");
}
