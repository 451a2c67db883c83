//! Helpers shared by the integration tests: building real objects in temp dirs.
#![allow(dead_code, clippy::unwrap_used)]

use std::os::unix::fs::MetadataExt;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};

#[allow(unused_imports)] // not every test binary of this crate calls it
pub use svirt_testkit::qemu_img;

/// `qemu-img create -f qcow2 [-u -b BACKING -F FMT] NAME 16M`, run in `dir` so a relative
/// backing name is stored as written.
pub fn qcow2(dir: &Path, name: &str, backing: Option<(&str, &str)>) {
    svirt_testkit::qcow2(dir, name, backing);
}

/// A qcow2 image whose header names a backing file but no backing format (old images).
/// qemu-img no longer writes these, so the format extension is cut out of a real image.
pub fn qcow2_without_backing_format(dir: &Path, name: &str, backing: &str) {
    qcow2(dir, name, Some((backing, "raw")));
    let p = dir.join(name);
    let mut b = std::fs::read(&p).unwrap();
    let hl = u32::from_be_bytes(b[100..104].try_into().unwrap()) as usize;
    let mut at = hl;
    loop {
        let ty = u32::from_be_bytes(b[at..at + 4].try_into().unwrap());
        let len = u32::from_be_bytes(b[at + 4..at + 8].try_into().unwrap()) as usize;
        if ty == 0 {
            break;
        }
        if ty == 0xe279_2aca {
            // Turn it into an unknown extension type: QEMU and svirt both skip those.
            b[at..at + 4].copy_from_slice(&0x1234_5678u32.to_be_bytes());
        }
        at += 8 + len.div_ceil(8) * 8;
    }
    std::fs::write(&p, b).unwrap();
}

pub fn mkfifo(p: &Path) {
    rustix::fs::mknodat(
        rustix::fs::CWD,
        p,
        rustix::fs::FileType::Fifo,
        rustix::fs::Mode::from_raw_mode(0o600),
        0,
    )
    .unwrap();
}

/// A set of objects built from a conformance `files.txt`.
pub struct Built {
    /// Listening sockets, kept open for the test's duration.
    pub listeners: Vec<UnixListener>,
    /// (relative name, absolute path) of every object.
    pub objects: Vec<(String, PathBuf)>,
}

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
        let p = dir.join(f[1]);
        match f[0] {
            "file" => std::fs::write(&p, format!("content of {}\n", f[1])).unwrap(),
            "dir" => std::fs::create_dir_all(&p).unwrap(),
            "fifo" => mkfifo(&p),
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
        b.objects.push((f[1].to_string(), p));
    }
    b
}

/// Everything observable about an object: type, mode, owner, size, mtime, content
/// (regular files), link target, and its SELinux label when the file system has one.
#[derive(Debug, PartialEq, Eq)]
pub struct Snapshot(Vec<(String, String)>);

pub fn snapshot(objects: &[(String, PathBuf)]) -> Snapshot {
    let mut v = Vec::new();
    for (name, p) in objects {
        let m = std::fs::symlink_metadata(p).unwrap();
        let mut s = format!(
            "mode={:o} uid={} gid={} size={} mtime={}.{} ino={}",
            m.mode(),
            m.uid(),
            m.gid(),
            m.size(),
            m.mtime(),
            m.mtime_nsec(),
            m.ino()
        );
        if m.file_type().is_file() {
            s.push_str(&format!(" content={:?}", std::fs::read(p).unwrap()));
        }
        if m.file_type().is_symlink() {
            s.push_str(&format!(" target={:?}", std::fs::read_link(p).unwrap()));
        }
        let mut buf = vec![0u8; 256];
        if let Ok(n) = rustix::fs::lgetxattr(p, "security.selinux", &mut buf) {
            s.push_str(&format!(" selinux={:?}", &buf[..n]));
        }
        v.push((name.clone(), s));
    }
    Snapshot(v)
}
