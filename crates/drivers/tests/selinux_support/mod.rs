//! Helpers for the SELinux driver / relabel engine tests: real objects, real xattrs.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use svirt_drivers::relabel::Relabeler;
use svirt_hostfs::FsRoot;
use svirt_store::Store;

/// A label the tests put on objects before svirt touches them.
pub const INITIAL: &str = "system_u:object_r:user_tmp_t:s0";

fn c(p: &Path) -> CString {
    CString::new(p.as_os_str().as_bytes()).unwrap()
}

/// `lgetxattr(path, "security.selinux")` as text without trailing NUL; None when absent.
pub fn label(p: &Path) -> Option<String> {
    let mut buf = vec![0u8; 4096];
    // SAFETY: lgetxattr writes at most buf.len() bytes.
    let n = unsafe {
        libc::lgetxattr(
            c(p).as_ptr(),
            c"security.selinux".as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    if n < 0 {
        let e = std::io::Error::last_os_error();
        assert_eq!(
            e.raw_os_error(),
            Some(libc::ENODATA),
            "lgetxattr {}: {e}",
            p.display()
        );
        return None;
    }
    buf.truncate(n as usize);
    while buf.last() == Some(&0) {
        buf.pop();
    }
    Some(String::from_utf8(buf).unwrap())
}

/// Raw bytes of the label (to check restore is byte-exact).
pub fn label_raw(p: &Path) -> Option<Vec<u8>> {
    let mut buf = vec![0u8; 4096];
    // SAFETY: as above.
    let n = unsafe {
        libc::lgetxattr(
            c(p).as_ptr(),
            c"security.selinux".as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    if n < 0 {
        return None;
    }
    buf.truncate(n as usize);
    Some(buf)
}

/// `lsetxattr(path, "security.selinux", label + NUL)`.
pub fn set_label(p: &Path, l: &str) {
    let mut v = l.as_bytes().to_vec();
    v.push(0);
    // SAFETY: reads v.len() bytes.
    let r = unsafe {
        libc::lsetxattr(
            c(p).as_ptr(),
            c"security.selinux".as_ptr(),
            v.as_ptr().cast(),
            v.len(),
            0,
        )
    };
    assert_eq!(
        r,
        0,
        "lsetxattr {}: {}",
        p.display(),
        std::io::Error::last_os_error()
    );
}

/// Skips (loudly) when this host cannot store security.selinux on its temp filesystem.
pub fn xattrs_work(dir: &Path) -> bool {
    let p = dir.join(".xattr-probe");
    std::fs::write(&p, b"x").unwrap();
    let mut v = INITIAL.as_bytes().to_vec();
    v.push(0);
    // SAFETY: as above.
    let r = unsafe {
        libc::lsetxattr(
            c(&p).as_ptr(),
            c"security.selinux".as_ptr(),
            v.as_ptr().cast(),
            v.len(),
            0,
        )
    };
    let _ = std::fs::remove_file(&p);
    if r != 0 {
        svirt_testkit::skip(
            "selinux-xattrs",
            format!(
                "cannot write security.selinux on {} ({}): these tests need root and a filesystem with security xattrs",
                dir.display(),
                std::io::Error::last_os_error()
            ),
        );
        return false;
    }
    true
}

/// Label, owner, group and mode (with type bits): what a restore must bring back exactly.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct State {
    pub label: Option<Vec<u8>>,
    pub uid: u32,
    pub gid: u32,
    pub mode: u32,
    pub ino: u64,
}

pub fn state(p: &Path) -> State {
    let m = std::fs::symlink_metadata(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    State {
        label: label_raw(p),
        uid: m.uid(),
        gid: m.gid(),
        mode: m.mode(),
        ino: m.ino(),
    }
}

pub use svirt_testkit::qcow2;

pub struct Built {
    pub listeners: Vec<UnixListener>,
    /// (relative name, absolute path).
    pub objects: Vec<(String, PathBuf)>,
}

/// Builds a conformance `files.txt` in `dir`. Every object gets a distinct owner/mode and
/// (two of three) the INITIAL label, the third none: restore must bring back both kinds.
pub fn build_files(dir: &Path, files_txt: &str) -> Built {
    let mut b = Built {
        listeners: Vec::new(),
        objects: Vec::new(),
    };
    for (i, line) in files_txt
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .enumerate()
    {
        let f: Vec<&str> = line.split_whitespace().collect();
        let p = dir.join(f[1]);
        match f[0] {
            "file" => std::fs::write(&p, format!("content of {}\n", f[1])).unwrap(),
            "dir" => std::fs::create_dir_all(&p).unwrap(),
            "fifo" => {
                let r = unsafe { libc::mkfifo(c(&p).as_ptr(), 0o600) };
                assert_eq!(r, 0);
            }
            "socket" => b.listeners.push(UnixListener::bind(&p).unwrap()),
            "symlink" => std::os::unix::fs::symlink(f[2], &p).unwrap(),
            "qcow2" => {
                let backing = f
                    .get(2)
                    .map(|bk| (*bk, f.get(3).copied().unwrap_or("qcow2")));
                let parent = p.parent().unwrap();
                qcow2(parent, p.file_name().unwrap().to_str().unwrap(), backing);
            }
            other => panic!("unknown object type '{other}' in files.txt line '{line}'"),
        }
        if f[0] != "symlink" {
            let mode = if f[0] == "dir" { 0o750 } else { 0o640 };
            std::fs::set_permissions(&p, std::os::unix::fs::PermissionsExt::from_mode(mode))
                .unwrap();
            let r = unsafe { libc::lchown(c(&p).as_ptr(), 1000 + i as u32, 2000 + i as u32) };
            assert_eq!(r, 0);
        }
        if i % 3 != 2 {
            set_label(&p, INITIAL);
        }
        b.objects.push((f[1].to_string(), p));
    }
    b
}

/// A store, and an engine over it resolving under `/`.
pub struct Env {
    pub state: tempfile::TempDir,
    pub store: Arc<Store>,
    pub relabeler: Arc<Relabeler>,
}

pub fn env() -> Env {
    let state = tempfile::tempdir().unwrap();
    let store = Arc::new(Store::open(state.path()).unwrap());
    let relabeler = Relabeler::open(store.clone(), FsRoot::host().unwrap(), 2).unwrap();
    Env {
        state,
        store,
        relabeler,
    }
}

/// The conformance corpus; missing is a failure, never a skip.
pub fn corpus() -> PathBuf {
    let p = match std::env::var_os("SVIRT_CONFORMANCE_DIR") {
        Some(d) => PathBuf::from(d),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/conformance"),
    };
    assert!(
        p.join("README.md").is_file(),
        "conformance corpus missing at {} (it must not be skipped)",
        p.display()
    );
    p
}

/// A conformance case's objects built in `dir` and its domain planned for `models` (the
/// host's default models when `None`). The plan is `None` for a case the corpus says must
/// be refused, after checking that it is. Keep the `Built`: it holds the case's sockets.
pub fn plan_case(
    case_dir: &Path,
    dir: &Path,
    models: Option<Vec<svirt_domain::Model>>,
) -> (Built, Option<svirt_domain::Plan>) {
    let case = case_dir.file_name().unwrap().to_string_lossy().into_owned();
    let files = std::fs::read_to_string(case_dir.join("files.txt")).unwrap();
    let built = build_files(dir, &files);
    let xml = std::fs::read_to_string(case_dir.join("domain.xml"))
        .unwrap()
        .replace("@DIR@", dir.to_str().unwrap());
    let host = svirt_domain::Host::new("/");
    let mut cfg = svirt_domain::PlanConfig::for_host(&host).unwrap();
    if let Some(m) = models {
        cfg.models = m;
    }
    let planned = svirt_domain::plan_xml(&xml, &host, &cfg);
    if case_dir.join("expected-error.txt").is_file() {
        assert!(planned.is_err(), "{case}: a refused domain got a plan");
        return (built, None);
    }
    let plan = planned
        .unwrap_or_else(|e| panic!("{case}: plan failed: {e}"))
        .plan;
    (built, Some(plan))
}

/// `lgetxattr(path, name)`; None when absent.
pub fn xattr_raw(p: &Path, name: &std::ffi::CStr) -> Option<Vec<u8>> {
    let mut buf = vec![0u8; 4096];
    // SAFETY: a valid path, name and buffer of buf.len() bytes.
    let n = unsafe {
        libc::lgetxattr(
            c(p).as_ptr(),
            name.as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    if n < 0 {
        return None;
    }
    buf.truncate(n as usize);
    Some(buf)
}

/// `lsetxattr(path, name, value)`.
pub fn set_xattr(p: &Path, name: &std::ffi::CStr, value: &[u8]) {
    // SAFETY: reads value.len() bytes.
    let r = unsafe {
        libc::lsetxattr(
            c(p).as_ptr(),
            name.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    assert_eq!(
        r,
        0,
        "lsetxattr {}: {}",
        p.display(),
        std::io::Error::last_os_error()
    );
}
