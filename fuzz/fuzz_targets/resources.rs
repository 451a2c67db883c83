//! The resource builder and its object policy on small, arbitrary file trees.
//!
//! The input is text: lines that describe a tiny tree, a line `%%`, then a domain XML.
//! The tree is made under a fresh case directory `C` (below `$TMPDIR`): the guest's tree
//! `@DIR@` = `C/tree`, and beside it `@OUT@` = `C/outside`, which stands for objects the
//! guest must never get (another guest's disks): `victim.img`, `victim.qcow2`,
//! `dir/file` and the symlink `link -> victim.img`. Tree lines (a superset of the
//! conformance corpus' `files.txt`; NAME is relative to `@DIR@`):
//!
//! ```text
//! dir NAME                      file NAME [TEXT]            bytes NAME HEX
//! fifo NAME                     socket NAME                 hardlink NAME EXISTING
//! symlink NAME TARGET           qcow2 NAME [BACKING [FORMAT|-]]
//! chown NAME UID[:GID]          chmod NAME OCTAL
//! ```
//!
//! `qcow2` writes a v3 header whose backing file name is BACKING as given (any bytes: an
//! image header is guest data) with the backing format extension (qcow2 when not given,
//! none for `-`). `chown` changes the owner of the entry itself (a symlink planted by
//! another user). `@DIR@` and `@OUT@` are replaced in TARGET, BACKING, EXISTING and the
//! XML. The XML is parsed and `build_resources` runs on it with `Host::new(@DIR@)`.
//!
//! Properties: no panic, no hang (scripts/fuzz's per-input timeout), and every resource
//! returned lies inside `@DIR@`, or is an object the XML named itself, or (for a backing
//! file read from a header) lies beneath the directory of an image the XML named. So a
//! header that names `@OUT@/victim.img`, `/etc/hostname` or `/dev/vda` must be refused.
//!
//! To keep one input bounded in time and away from the host, the harness never creates
//! anything outside `C` and skips what would let the builder walk an unbounded host
//! tree: XML paths must lie under `C` (no `..`), symlink targets are either under `C`
//! (relative ones may start with `..` only as far as `C`) or one of [`PALETTE`], and a
//! hard link's source must be reached without symlinks. A header's backing name is not
//! restricted: the builder only resolves and reads (at most a header) what it names.
#![no_main]

use std::collections::HashSet;
use std::ffi::OsString;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::UnixListener;
use std::path::{Component, Path, PathBuf};
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use rustix::fs::{CWD, FileType, Mode};
use svirt_domain::{
    BackingSpec, ChardevSource, Domain, Host, PlanConfig, TpmBackend, build_resources, parse, plan,
};

/// Host objects a symlink in the tree may point at (exactly these paths): system files,
/// devices, svirtd's own objects. None is a directory that holds a large tree.
const PALETTE: &[&str] = &[
    "/etc",
    "/etc/shadow",
    "/etc/passwd",
    "/etc/hostname",
    "/etc/ssl",
    "/dev/null",
    "/dev/zero",
    "/dev/kvm",
    "/dev/vda",
    "/dev/sda",
    "/root/.ssh",
    "/run/svirt",
    "/run/svirt/svirtd.sock",
    "/var/lib/svirt",
];

/// `SVIRT_FUZZ_VERBOSE=1`: print what the builder returned for each input (to check a
/// seed does what it says when replaying it: `target/.../resources FILE`).
fn verbose() -> bool {
    static V: OnceLock<bool> = OnceLock::new();
    *V.get_or_init(|| std::env::var_os("SVIRT_FUZZ_VERBOSE").is_some_and(|v| v == "1"))
}

/// `SVIRT_FUZZ_EXPECT_OK=1` (scripts/fuzz, when it replays the `control-*` seeds before
/// fuzzing): the input must be built without error, so a builder that refuses everything
/// fails too.
fn expect_ok() -> bool {
    static V: OnceLock<bool> = OnceLock::new();
    *V.get_or_init(|| std::env::var_os("SVIRT_FUZZ_EXPECT_OK").is_some_and(|v| v == "1"))
}

/// Most tree lines applied from one input.
const MAX_LINES: usize = 64;

/// The directory every case is made in (once per process, below `$TMPDIR`).
fn base() -> &'static Path {
    static BASE: OnceLock<PathBuf> = OnceLock::new();
    BASE.get_or_init(|| {
        let b = std::env::temp_dir().join(format!("svirt-fuzz-resources.{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&b);
        std::fs::create_dir_all(&b).expect("create the fuzz base directory");
        b.canonicalize().expect("canonical base directory")
    })
}

/// One case: the tree, the outside objects and what was made.
struct Case {
    c: PathBuf,
    tree: PathBuf,
    out: PathBuf,
    /// Directories made (relative to the tree; "" is the tree itself).
    dirs: HashSet<PathBuf>,
    /// Bound sockets, kept open for the case.
    sockets: Vec<UnixListener>,
}

impl Drop for Case {
    fn drop(&mut self) {
        self.sockets.clear();
        // remove_dir_all never follows symlinks. The base goes too (made again by the
        // next case), so a replay by hand leaves nothing behind.
        let _ = std::fs::remove_dir_all(&self.c);
        let _ = std::fs::remove_dir(base());
    }
}

/// A v3 qcow2 header (as QEMU writes it) naming `backing` with `format`.
fn qcow2_image(backing: Option<&[u8]>, format: Option<&str>) -> Vec<u8> {
    let name_len = backing.map_or(0, <[u8]>::len);
    let mut b = vec![0u8; 4096.max(256 + name_len + format.map_or(0, str::len))];
    b[0..4].copy_from_slice(b"QFI\xfb");
    b[4..8].copy_from_slice(&3u32.to_be_bytes());
    b[20..24].copy_from_slice(&16u32.to_be_bytes());
    b[100..104].copy_from_slice(&112u32.to_be_bytes());
    let mut at = 112;
    if let Some(name) = backing {
        if let Some(f) = format {
            b[at..at + 4].copy_from_slice(&0xe279_2acau32.to_be_bytes());
            b[at + 4..at + 8].copy_from_slice(&(f.len() as u32).to_be_bytes());
            b[at + 8..at + 8 + f.len()].copy_from_slice(f.as_bytes());
            at += 8 + f.len().div_ceil(8) * 8;
        }
        at += 8; // end of extensions
        b[8..16].copy_from_slice(&(at as u64).to_be_bytes());
        b[16..20].copy_from_slice(&(name.len() as u32).to_be_bytes());
        b[at..at + name.len()].copy_from_slice(name);
    }
    b
}

fn lexically_clean(p: &Path) -> bool {
    !p.components().any(|c| c == Component::ParentDir)
}

impl Case {
    fn new() -> Option<Case> {
        let c = base().join("case");
        let _ = std::fs::remove_dir_all(&c);
        let tree = c.join("tree");
        let out = c.join("outside");
        std::fs::create_dir_all(&tree).ok()?;
        std::fs::create_dir_all(out.join("dir")).ok()?;
        std::fs::write(out.join("victim.img"), [0u8; 512]).ok()?;
        std::fs::write(out.join("victim.qcow2"), qcow2_image(None, None)).ok()?;
        std::fs::write(out.join("dir/file"), b"secret").ok()?;
        std::os::unix::fs::symlink("victim.img", out.join("link")).ok()?;
        let mut dirs = HashSet::new();
        dirs.insert(PathBuf::new());
        Some(Case {
            c,
            tree,
            out,
            dirs,
            sockets: Vec::new(),
        })
    }

    fn subst(&self, s: &str) -> String {
        s.replace("@DIR@", &self.tree.to_string_lossy())
            .replace("@OUT@", &self.out.to_string_lossy())
    }

    /// NAME → its path, when every directory above it was made by this case (so making
    /// it never goes through a symlink or leaves the tree).
    fn name(&self, name: &str) -> Option<PathBuf> {
        let rel = Path::new(name);
        let n = rel.components().count();
        if n == 0
            || n > 8
            || name.len() > 200
            || !rel.components().all(|c| matches!(c, Component::Normal(_)))
        {
            return None;
        }
        let parent = rel.parent().unwrap_or(Path::new(""));
        self.dirs.contains(parent).then(|| self.tree.join(rel))
    }

    /// How deep below `C` the directory holding NAME is (the tree itself: 1).
    fn depth(name: &str) -> usize {
        Path::new(name).components().count()
    }

    /// Whether a symlink at NAME may point at `target` (see the module comment).
    fn target_ok(&self, name: &str, target: &str) -> bool {
        let t = Path::new(target);
        if t.is_absolute() {
            return (t.starts_with(&self.c) && lexically_clean(t)) || PALETTE.contains(&target);
        }
        let mut ups = 0;
        let mut rest = false;
        for c in t.components() {
            match c {
                Component::ParentDir if !rest => ups += 1,
                Component::ParentDir => return false,
                _ => rest = true,
            }
        }
        ups <= Self::depth(name)
    }

    fn apply(&mut self, line: &str) -> Option<()> {
        let mut w = line.splitn(3, ' ');
        let op = w.next()?;
        let name = w.next()?;
        let rest = w.next();
        let path = self.name(name)?;
        match op {
            "dir" => {
                std::fs::create_dir(&path).ok()?;
                self.dirs.insert(PathBuf::from(name));
            }
            "file" => {
                let f = std::fs::File::create_new(&path).ok()?;
                std::io::Write::write_all(&mut &f, rest.unwrap_or("").as_bytes()).ok()?;
            }
            "bytes" => {
                let hex = rest?.trim().as_bytes();
                let bytes: Option<Vec<u8>> = hex
                    .chunks(2)
                    .map(|p| u8::from_str_radix(std::str::from_utf8(p).ok()?, 16).ok())
                    .collect();
                let f = std::fs::File::create_new(&path).ok()?;
                std::io::Write::write_all(&mut &f, &bytes?).ok()?;
            }
            "fifo" => {
                rustix::fs::mknodat(CWD, &path, FileType::Fifo, Mode::from_raw_mode(0o600), 0)
                    .ok()?;
            }
            "socket" => self.sockets.push(UnixListener::bind(&path).ok()?),
            "symlink" => {
                let target = self.subst(rest?);
                if !self.target_ok(name, &target) {
                    return None;
                }
                std::os::unix::fs::symlink(&target, &path).ok()?;
            }
            "hardlink" => {
                let src = self.subst(rest?.trim());
                let src = Path::new(&src);
                // The source is reached without a symlink: one of the outside objects, or
                // an entry in a directory this case made.
                let ok = match src.strip_prefix(&self.tree) {
                    Ok(rel) => rel
                        .to_str()
                        .and_then(|r| self.name(r))
                        .is_some_and(|p| p == src),
                    Err(_) => src.parent() == Some(&self.out) && lexically_clean(src),
                };
                if !ok {
                    return None;
                }
                // linkat without AT_SYMLINK_FOLLOW: a symlink is linked as itself.
                std::fs::hard_link(src, &path).ok()?;
            }
            "qcow2" => {
                let mut a = rest.unwrap_or("").split_whitespace();
                let backing = a.next().map(|b| self.subst(b));
                let format = match a.next() {
                    Some("-") => None,
                    Some(f) => Some(f),
                    None => Some("qcow2"),
                };
                let img = qcow2_image(backing.as_deref().map(str::as_bytes), format);
                let f = std::fs::File::create_new(&path).ok()?;
                std::io::Write::write_all(&mut &f, &img).ok()?;
            }
            "chown" => {
                let mut ids = rest?.trim().splitn(2, ':');
                let uid = ids.next()?.parse::<u32>().ok()?;
                let gid = match ids.next() {
                    Some(g) => Some(g.parse::<u32>().ok()?),
                    None => None,
                };
                std::os::unix::fs::lchown(&path, Some(uid), gid).ok()?;
            }
            "chmod" => {
                let mode = u32::from_str_radix(rest?.trim(), 8).ok()? & 0o7777;
                // chmod follows symlinks: only on what is not one.
                let md = std::fs::symlink_metadata(&path).ok()?;
                if md.file_type().is_symlink() {
                    return None;
                }
                std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(mode))
                    .ok()?;
            }
            _ => return None,
        }
        Some(())
    }
}

/// Every path the XML names that the builder resolves (the emulator and the nvram
/// template are not), each with whether it is an image (disk, backing layer): the
/// directory of an image is where header-named backing files may live.
fn xml_paths(d: &Domain) -> Vec<(PathBuf, bool)> {
    let mut v: Vec<(PathBuf, bool)> = Vec::new();
    let os = &d.os;
    if let Some(l) = &os.loader {
        v.push((l.path.clone(), false));
    }
    if let Some(n) = &os.nvram {
        v.push((n.path.clone(), false));
    }
    for p in [&os.kernel, &os.initrd, &os.dtb].into_iter().flatten() {
        v.push((p.clone(), false));
    }
    for disk in &d.disks {
        v.extend(disk.source.iter().map(|p| (p.clone(), true)));
        if let BackingSpec::Chain { layers, .. } = &disk.backing {
            v.extend(layers.iter().map(|l| (l.source.clone(), true)));
        }
    }
    v.extend(d.filesystems.iter().map(|f| (f.source_dir.clone(), false)));
    for c in &d.chardevs {
        match &c.source {
            ChardevSource::File { path, .. }
            | ChardevSource::Dev { path }
            | ChardevSource::Unix { path, .. } => v.push((path.clone(), false)),
            ChardevSource::Pipe { path } => {
                for ext in ["", ".in", ".out"] {
                    let mut s = OsString::from(path.as_os_str());
                    s.push(ext);
                    v.push((PathBuf::from(s), false));
                }
            }
            _ => {}
        }
    }
    for t in &d.tpms {
        match &t.backend {
            TpmBackend::Emulator {
                state_path: Some(p),
                ..
            } => v.push((p.clone(), false)),
            TpmBackend::Passthrough { device } => v.push((device.clone(), false)),
            _ => {}
        }
    }
    if let Some(m) = &d.memory_backing {
        v.extend(m.path.iter().map(|p| (p.clone(), false)));
    }
    v
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Some((tree, xml)) = text.split_once("\n%%\n") else {
        assert!(!expect_ok(), "control input without a %% line");
        return;
    };
    let Some(mut case) = Case::new() else {
        panic!("cannot make the case directory under {}", base().display());
    };
    for line in tree.lines().take(MAX_LINES) {
        let _ = case.apply(line);
    }
    let xml = case.subst(xml);
    let parsed = match parse(&xml) {
        Ok(p) => p,
        Err(e) => {
            assert!(!expect_ok(), "control input: XML refused: {e}");
            if verbose() {
                eprintln!("XML refused: {e}");
            }
            return;
        }
    };
    let d = &parsed.domain;
    let named = xml_paths(d);
    // Only paths inside the case: the builder walks directories it is given.
    if named
        .iter()
        .any(|(p, _)| p.is_absolute() && !(p.starts_with(&case.c) && lexically_clean(p)))
    {
        assert!(!expect_ok(), "control input names a path outside the case");
        if verbose() {
            eprintln!("skipped: the XML names a path outside the case");
        }
        return;
    }
    let host = Host::new(&case.tree);
    let res = build_resources(d, &host);
    if verbose() {
        match &res {
            Ok(r) => {
                for x in &r.resources {
                    eprintln!("resource {} ({}, {:?})", x.path.display(), x.device, x.kind);
                }
            }
            Err(e) => eprintln!("refused: {e}"),
        }
    }
    let res = match res {
        Ok(r) => r,
        Err(e) => {
            assert!(!expect_ok(), "control input refused: {e}");
            return;
        }
    };
    // What the XML named itself (as reached), and the directories of its images.
    let mut direct: HashSet<PathBuf> = HashSet::new();
    let mut image_dirs: Vec<PathBuf> = Vec::new();
    for (p, image) in &named {
        if let Ok(c) = p.canonicalize() {
            if *image && let Some(dir) = c.parent() {
                image_dirs.push(dir.to_path_buf());
            }
            direct.insert(c);
        }
        if *image && let Some(dir) = p.parent().and_then(|d| d.canonicalize().ok()) {
            image_dirs.push(dir);
        }
    }
    // Only an image directory inside the case counts: an image the XML reached through a
    // symlink to /etc does not make the rest of /etc fair game for its header.
    image_dirs.retain(|dir| dir.starts_with(&case.c));
    for r in &res.resources {
        let inside = r.path.starts_with(&case.tree);
        let beside_image =
            r.device.contains("backing") && image_dirs.iter().any(|dir| r.path.starts_with(dir));
        assert!(
            inside || direct.contains(&r.path) || beside_image,
            "{} ({}, {:?}) lies outside the guest's tree {} and the XML did not name it: \
             an object reached from a header or a symlink the harness did not grant",
            r.path.display(),
            r.device,
            r.kind,
            case.tree.display(),
        );
        // Canonical: absolute, no `.`/`..`, no symlink in any component.
        assert!(r.path.is_absolute() && lexically_clean(&r.path));
        let meta = std::fs::symlink_metadata(&r.path);
        assert!(
            meta.as_ref().is_ok_and(|m| !m.file_type().is_symlink()),
            "resource path {} is a symlink or gone: {meta:?}",
            r.path.display()
        );
        assert!(!r.path.as_os_str().as_bytes().contains(&0));
    }
    let _ = plan(d, res, &PlanConfig::default());
});
