//! The case format of svirt's label corpora (`shared/conformance/`, the libvirt corpus in
//! `crates/manager/tests/libvirt-corpus/`): building a case's objects from its `files.txt`,
//! snapshotting them (to prove a refused case touched nothing), and checking a plan against
//! its `expected.tsv`. Shared by the planner's conformance test and the manager's libvirt
//! corpus test; nothing here knows svirt's types: a test hands in the planned objects as
//! [`PlannedObject`]s.

use std::collections::HashSet;
use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};

/// The text that stands for the guest's allocated level in an expected label.
pub const LEVEL: &str = "@LEVEL@";

fn cstr(p: &Path) -> CString {
    CString::new(p.as_os_str().as_bytes()).unwrap()
}

/// A named pipe at `p` (mode 0600).
pub fn mkfifo(p: &Path) {
    // SAFETY: a valid NUL-terminated path.
    let r = unsafe { libc::mkfifo(cstr(p).as_ptr(), 0o600) };
    assert_eq!(
        r,
        0,
        "mkfifo {}: {}",
        p.display(),
        std::io::Error::last_os_error()
    );
}

/// A character device node at `p` (mode 0600) with the given numbers (root only).
pub fn mknod_char(p: &Path, major: u32, minor: u32) {
    let dev = libc::makedev(major, minor);
    // SAFETY: a valid NUL-terminated path.
    let r = unsafe { libc::mknod(cstr(p).as_ptr(), libc::S_IFCHR | 0o600, dev) };
    assert_eq!(
        r,
        0,
        "mknod {} c {major} {minor}: {}",
        p.display(),
        std::io::Error::last_os_error()
    );
}

/// A corpus directory: `$env_var` when set (to run a modified copy, so a test can show the
/// harness fails), else `default`. A missing corpus fails the test: it is never skipped.
pub fn locate(env_var: &str, default: PathBuf, what: &str) -> PathBuf {
    let p = std::env::var_os(env_var).map_or(default, PathBuf::from);
    assert!(
        p.join("README.md").is_file(),
        "{what} missing at {} (it must not be skipped)",
        p.display()
    );
    p
}

/// The objects of one case, built from its `files.txt`.
pub struct Built {
    /// Listening sockets, kept open for the test's duration.
    pub listeners: Vec<UnixListener>,
    /// (name as written, absolute path) of every object.
    pub objects: Vec<(String, PathBuf)>,
}

/// Builds the objects `files_txt` lists beneath `dir`, one per line (`#` comments and blank
/// lines skipped), parent directories made as needed:
///
/// - `file NAME`, `dir NAME`, `fifo NAME`, `socket NAME` (a listening unix socket),
///   `symlink NAME TARGET` (TARGET as written, relative to the link);
/// - `qcow2 NAME [BACKING [FORMAT]]`: a real qcow2 image (`qemu-img create -u`, so the
///   backing file is not opened; FORMAT qcow2 when not given);
/// - `chardev NAME MAJOR:MINOR`: a character device node (root only);
/// - `copy NAME HOSTPATH`: a copy of a host file (the host's firmware descriptors, say).
pub fn build_files(dir: &Path, files_txt: &str) -> Built {
    let mut b = Built {
        listeners: Vec::new(),
        objects: Vec::new(),
    };
    for line in files_txt
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
    {
        let f: Vec<&str> = line.split_whitespace().collect();
        assert!(f.len() >= 2, "files.txt line '{line}': no name");
        let p = dir.join(f[1]);
        if let Some(parent) = p.parent() {
            std::fs::create_dir_all(parent).unwrap();
        }
        let arg = |i: usize| {
            f.get(i)
                .copied()
                .unwrap_or_else(|| panic!("files.txt line '{line}': argument {i} missing"))
        };
        match f[0] {
            "file" => std::fs::write(&p, format!("content of {}\n", f[1])).unwrap(),
            "dir" => std::fs::create_dir_all(&p).unwrap(),
            "fifo" => mkfifo(&p),
            "socket" => b.listeners.push(UnixListener::bind(&p).unwrap()),
            "symlink" => std::os::unix::fs::symlink(arg(2), &p).unwrap(),
            "qcow2" => {
                let backing = f
                    .get(2)
                    .map(|bk| (*bk, f.get(3).copied().unwrap_or("qcow2")));
                let parent = p.parent().unwrap();
                crate::qcow2(parent, p.file_name().unwrap().to_str().unwrap(), backing);
            }
            "chardev" => {
                let (maj, min) = arg(2)
                    .split_once(':')
                    .and_then(|(a, b)| Some((a.parse().ok()?, b.parse().ok()?)))
                    .unwrap_or_else(|| panic!("files.txt line '{line}': not MAJOR:MINOR"));
                mknod_char(&p, maj, min);
            }
            "copy" => {
                std::fs::copy(arg(2), &p)
                    .unwrap_or_else(|e| panic!("files.txt line '{line}': copy: {e}"));
            }
            other => panic!("unknown object type '{other}' in files.txt line '{line}'"),
        }
        b.objects.push((f[1].to_string(), p));
    }
    b
}

/// Everything observable about a set of objects: type, mode, owner, size, mtime, inode,
/// content (regular files), link target, and the SELinux label where the file system has
/// one.
#[derive(Debug, PartialEq, Eq)]
pub struct Snapshot(Vec<(String, String)>);

/// The [`Snapshot`] of `objects` now.
pub fn snapshot(objects: &[(String, PathBuf)]) -> Snapshot {
    let mut v = Vec::new();
    for (name, p) in objects {
        let m = std::fs::symlink_metadata(p).unwrap();
        let mut s = format!(
            "mode={:o} uid={} gid={} size={} mtime={}.{} ino={} rdev={}",
            m.mode(),
            m.uid(),
            m.gid(),
            m.size(),
            m.mtime(),
            m.mtime_nsec(),
            m.ino(),
            m.rdev()
        );
        if m.file_type().is_file() {
            s.push_str(&format!(" content={:?}", std::fs::read(p).unwrap()));
        }
        if m.file_type().is_symlink() {
            s.push_str(&format!(" target={:?}", std::fs::read_link(p).unwrap()));
        }
        let mut buf = vec![0u8; 256];
        // SAFETY: valid path and buffer of the given length.
        let n = unsafe {
            libc::lgetxattr(
                cstr(p).as_ptr(),
                c"security.selinux".as_ptr(),
                buf.as_mut_ptr().cast(),
                buf.len(),
            )
        };
        if let Ok(n) = usize::try_from(n) {
            s.push_str(&format!(" selinux={:?}", &buf[..n]));
        }
        v.push((name.clone(), s));
    }
    Snapshot(v)
}

/// Every path beneath `dir` (not `dir` itself), sorted, symlinks not followed: to prove
/// that a dry run left nothing behind.
pub fn list_tree(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            let p = e.path();
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                stack.push(p.clone());
            }
            out.push(p);
        }
    }
    out.sort();
    out
}

/// Device and inode of every object beneath (and including) each of `roots`, symlinks not
/// followed: what a recursive relabel of those trees reaches.
pub fn tree_ids(roots: &[&Path]) -> HashSet<(u64, u64)> {
    let mut ids = HashSet::new();
    for root in roots {
        let Ok(m) = std::fs::symlink_metadata(root) else {
            continue;
        };
        ids.insert((m.dev(), m.ino()));
        if m.is_dir() {
            for p in list_tree(root) {
                if let Ok(m) = std::fs::symlink_metadata(&p) {
                    ids.insert((m.dev(), m.ino()));
                }
            }
        }
    }
    ids
}

/// One line of `expected.tsv`: `PATH<TAB>LABEL<TAB>ACCESS[<TAB>RESTORE]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expected {
    /// The object, relative to the case directory.
    pub name: String,
    /// Its SELinux label (`@LEVEL@` for the guest's level), `-` (untouched) or `*`.
    pub label: String,
    /// What the VMM is granted: `rw`, `ro`, `-` (nothing) or `*`.
    pub access: String,
    /// Whether the label is restored when the guest stops: `yes`, `no`, or `*` (also when
    /// the column is absent).
    pub restore: String,
}

/// Parses `expected.tsv` (blank lines and `#` comments skipped).
pub fn parse_expected(text: &str) -> Result<Vec<Expected>, String> {
    let mut out = Vec::new();
    for line in text
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
    {
        let f: Vec<&str> = line.split('\t').collect();
        if !(3..=4).contains(&f.len()) {
            return Err(format!("bad expected.tsv line {line:?}"));
        }
        let restore = f.get(3).copied().unwrap_or("*");
        if !["yes", "no", "*"].contains(&restore) {
            return Err(format!("bad restore column in {line:?}"));
        }
        out.push(Expected {
            name: f[0].to_string(),
            label: f[1].to_string(),
            access: f[2].to_string(),
            restore: restore.to_string(),
        });
    }
    Ok(out)
}

/// A planned host object as the corpus checks it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedObject {
    /// Its resolved path.
    pub path: PathBuf,
    /// Whether the tree beneath it is covered too.
    pub recursive: bool,
    /// `rw` or `ro`.
    pub access: String,
    /// The SELinux label planned (with `@LEVEL@` for a level not yet allocated), or
    /// `None`: left untouched.
    pub label: Option<String>,
    /// The same label once the test's level is allocated.
    pub label_resolved: Option<String>,
    /// Whether the label is restored at stop.
    pub restore: bool,
}

/// What [`check_expected`] found for one line: the planned object that holds it (itself, or
/// the recursive tree it lies in), as an index into the planned objects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checked {
    /// The line.
    pub expected: Expected,
    /// Index of its holder, if planned.
    pub holder: Option<usize>,
}

/// Checks `planned` against `expected` for a case built in `dir`: each line's object (or
/// the tree that holds it) gets the expected label, access and restore; an object expected
/// to get no access is planned under no name and reached by no tree walk (`trees`: see
/// [`tree_ids`]). `level` is the allocated level `@LEVEL@` resolves to. Returns the
/// failures, one line each, and what each line matched.
pub fn check_expected(
    dir: &Path,
    expected: &[Expected],
    planned: &[PlannedObject],
    trees: &HashSet<(u64, u64)>,
    level: &str,
) -> (Vec<String>, Vec<Checked>) {
    let mut failures = Vec::new();
    let mut checked = Vec::new();
    let id_of = |p: &Path| {
        std::fs::symlink_metadata(p)
            .map(|m| (m.dev(), m.ino()))
            .ok()
    };
    for e in expected {
        let name = &e.name;
        let abs = dir.join(name);
        let own = planned.iter().position(|r| r.path == abs);
        let holder = own.or_else(|| {
            planned
                .iter()
                .position(|r| r.recursive && abs.starts_with(&r.path))
        });
        let id = id_of(&abs);
        if e.access == "-" {
            if let Some(h) = holder {
                failures.push(format!(
                    "{name}: must get no access, but is planned via {}",
                    planned[h].path.display()
                ));
            }
            if id.is_some_and(|i| trees.contains(&i)) {
                failures.push(format!("{name}: reached by a tree walk"));
            }
            if id.is_some() && planned.iter().any(|r| id_of(&r.path) == id) {
                failures.push(format!("{name}: planned under another path"));
            }
        } else if e.access != "*" {
            match holder {
                None => failures.push(format!("{name}: expected {} access, not planned", e.access)),
                Some(h) if planned[h].access != e.access => failures.push(format!(
                    "{name}: access {}, expected {}",
                    planned[h].access, e.access
                )),
                Some(_) => {}
            }
        }
        let got = holder.and_then(|h| planned[h].label.as_ref());
        match (e.label.as_str(), got) {
            ("*", _) => {}
            ("-", None) => {}
            ("-", Some(l)) => failures.push(format!("{name}: expected untouched, planned {l}")),
            (want, None) => failures.push(format!("{name}: untouched, expected {want}")),
            (want, Some(l)) => {
                if l != want {
                    failures.push(format!("{name}: label {l}, expected {want}"));
                }
                // Once a level is allocated, every @LEVEL@ is that one level.
                let resolved = holder.and_then(|h| planned[h].label_resolved.clone());
                let want_resolved = want.replace(LEVEL, level);
                if resolved.as_deref() != Some(want_resolved.as_str()) {
                    failures.push(format!(
                        "{name}: resolved {resolved:?}, expected {want_resolved}"
                    ));
                }
            }
        }
        if e.restore != "*" {
            let got = holder.is_some_and(|h| planned[h].restore);
            if got != (e.restore == "yes") {
                failures.push(format!(
                    "{name}: restored at stop: {got}, expected {}",
                    e.restore
                ));
            }
        }
        checked.push(Checked {
            expected: e.clone(),
            holder,
        });
    }
    (failures, checked)
}

/// The first line of `expected-error.txt`, lowercased: the word a refusal must contain.
pub fn expected_error_word(case_dir: &Path) -> Option<String> {
    std::fs::read_to_string(case_dir.join("expected-error.txt"))
        .ok()
        .map(|w| w.lines().next().unwrap_or("").trim().to_lowercase())
}
