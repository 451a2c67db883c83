//! Shared test fixtures: temporary state/run dirs, a cgroup parent under the real
//! hierarchy removed on drop, tiny domain XML.
#![allow(clippy::unwrap_used, clippy::expect_used, dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

use svirt_manager::{AccelChoice, Config, DriverSelection};

static N: AtomicU32 = AtomicU32::new(0);

/// Why this machine cannot run the QEMU tests, if it cannot.
pub fn skip_reason() -> Option<String> {
    if which("qemu-system-x86_64").is_none() {
        return Some("qemu-system-x86_64 not installed (apt-get install qemu-system-x86)".into());
    }
    if which("qemu-img").is_none() {
        return Some("qemu-img not installed (apt-get install qemu-utils)".into());
    }
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Some("not root (cgroups, chown)".into());
    }
    let l = svirt_manager::cgroup::Layout::detect(Path::new("/sys/fs/cgroup"));
    if let svirt_manager::cgroup::Layout::None { reason } = l {
        return Some(reason);
    }
    None
}

macro_rules! require_env {
    () => {
        if let Some(r) = common::skip_reason() {
            svirt_testkit::skip("qemu-root-cgroups", r);
            return;
        }
    };
}
pub(crate) use require_env;

pub fn which(name: &str) -> Option<PathBuf> {
    std::env::var("PATH")
        .ok()?
        .split(':')
        .map(|d| Path::new(d).join(name))
        .find(|p| p.is_file())
}

/// A test environment: temp dirs and a unique cgroup parent, all removed on drop.
pub struct Env {
    pub dir: tempfile::TempDir,
    pub cgroup_parent: String,
}

impl Env {
    pub fn new(tag: &str) -> Env {
        let dir = tempfile::Builder::new()
            .prefix(&format!("svirt-mgr-{tag}-"))
            .tempdir()
            .unwrap();
        let n = N.fetch_add(1, Ordering::SeqCst);
        let cgroup_parent = format!("svirt-test-{}-{n}-{tag}", std::process::id());
        for d in ["state", "run", "images"] {
            std::fs::create_dir_all(dir.path().join(d)).unwrap();
        }
        Env { dir, cgroup_parent }
    }

    pub fn path(&self, p: &str) -> PathBuf {
        self.dir.path().join(p)
    }

    pub fn config(&self, drivers: &str) -> Config {
        let mut c = Config::new(self.path("state"), self.path("run"));
        c.cgroup_parent = self.cgroup_parent.clone();
        c.accel = AccelChoice::Tcg;
        c.drivers = drivers.parse::<DriverSelection>().unwrap();
        c.shutdown_timeout = std::time::Duration::from_millis(500);
        c.memory_overhead = 192 << 20;
        c.nvram_dir = self.path("nvram");
        c.tpm_state_dir = self.path("swtpm");
        c
    }

    /// A qcow2 image (private disk).
    pub fn qcow2(&self, name: &str) -> PathBuf {
        svirt_testkit::qcow2(&self.path("images"), name, None)
    }

    /// A raw image.
    pub fn raw(&self, name: &str) -> PathBuf {
        let p = self.path("images").join(name);
        let f = std::fs::File::create(&p).unwrap();
        f.set_len(1 << 20).unwrap();
        p
    }

    /// Domain XML for a tiny paused-able guest with `disks` and a serial log.
    pub fn xml(&self, name: &str, disks: &[(PathBuf, &str, bool)]) -> String {
        let mut d = String::new();
        for (i, (path, fmt, ro)) in disks.iter().enumerate() {
            d.push_str(&format!(
                "<disk type='file' device='disk'><driver name='qemu' type='{fmt}'/><source file='{}'/><target dev='vd{}' bus='virtio'/>{}</disk>\n",
                path.display(),
                (b'a' + i as u8) as char,
                if *ro { "<readonly/>" } else { "" }
            ));
        }
        let serial = self.path("images").join(format!("{name}.serial.log"));
        format!(
            "<domain type='qemu'>\n  <name>{name}</name>\n  <memory unit='MiB'>16</memory>\n  <vcpu>1</vcpu>\n  <os><type arch='x86_64' machine='pc'>hvm</type></os>\n  <devices>\n{d}<serial type='file'><source path='{}'/><target port='0'/></serial>\n  </devices>\n</domain>\n",
            serial.display()
        )
    }
}

/// A tmpfs mounted on a directory of a test, unmounted on drop (also on failure). Large
/// trees are made there: creating 100,000 files on this host's ext4 takes from 10 s to
/// a minute depending on the other work on the disk, on tmpfs about a second.
pub struct Tmpfs(PathBuf);

impl Tmpfs {
    pub fn mount(dir: &Path) -> Result<Tmpfs, String> {
        use std::os::unix::ffi::OsStrExt;
        std::fs::create_dir_all(dir).unwrap();
        let target = std::ffi::CString::new(dir.as_os_str().as_bytes()).unwrap();
        // SAFETY: valid NUL-terminated strings; a fresh tmpfs on our own temp directory.
        let r = unsafe {
            libc::mount(
                c"svirt-test".as_ptr(),
                target.as_ptr(),
                c"tmpfs".as_ptr(),
                0,
                c"mode=0755".as_ptr().cast(),
            )
        };
        if r != 0 {
            return Err(format!(
                "mount tmpfs on {}: {}",
                dir.display(),
                std::io::Error::last_os_error()
            ));
        }
        Ok(Tmpfs(dir.to_path_buf()))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        use std::os::unix::ffi::OsStrExt;
        let target = std::ffi::CString::new(self.0.as_os_str().as_bytes()).unwrap();
        // SAFETY: unmounts the tmpfs this guard mounted.
        unsafe {
            libc::umount2(target.as_ptr(), libc::MNT_DETACH);
        }
    }
}

impl Env {
    /// A tree of `files` empty files, 1,000 per subdirectory, at `root` (which must not
    /// exist): a filesystem share whose labeling and restore take a while.
    pub fn tree(&self, root: &Path, files: usize) -> PathBuf {
        let root = root.to_path_buf();
        std::fs::create_dir(&root).unwrap();
        for d in 0..files.div_ceil(1000) {
            let sub = root.join(format!("d{d}"));
            std::fs::create_dir(&sub).unwrap();
            for f in 0..(files - d * 1000).min(1000) {
                std::fs::File::create(sub.join(format!("f{f}"))).unwrap();
            }
        }
        root
    }

    /// Asserts the store (the manager closed) holds no uid or level reservation, no
    /// recorded original and no tree record: nothing leaked.
    pub fn assert_store_clean(&self, what: &str) {
        let store = svirt_store::Store::open(&self.path("state")).unwrap();
        let ids = store.id_reservations().unwrap();
        assert!(ids.is_empty(), "{what}: uid leaked: {ids:?}");
        let levels = store.level_reservations().unwrap();
        assert!(levels.is_empty(), "{what}: level leaked: {levels:?}");
        let originals = store.list_originals().unwrap();
        assert!(
            originals.is_empty(),
            "{what}: original record left: {originals:?}"
        );
        drop(store);
        let trees = self.tree_rows();
        assert!(trees.is_empty(), "{what}: tree records left: {trees:?}");
    }

    /// The drivers' non-empty tree tables in the ledger (the manager closed), read-only
    /// and whatever their row types (DAC's `dac_trees`, `dac_tree_exceptions`; the relabel
    /// engine's `trees`, `tree_exceptions`): `table (rows)`. A tree file of an earlier
    /// svirt left beside the store is listed too (its rows belong in the ledger).
    pub fn tree_rows(&self) -> Vec<String> {
        use redb::{ReadableDatabase, ReadableTableMetadata, TableHandle};
        let mut out = Vec::new();
        for legacy in ["svirt.dac-trees.redb", "svirt.trees.redb"] {
            if self.path("state").join(legacy).exists() {
                out.push(format!("{legacy}: a tree file beside the ledger"));
            }
        }
        let path = self.path("state").join(svirt_store::DB_FILE);
        let db = redb::ReadOnlyDatabase::open(&path)
            .unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
        let txn = db.begin_read().unwrap();
        for handle in txn.list_tables().unwrap() {
            let name = handle.name().to_string();
            if ![
                "trees",
                "tree_exceptions",
                "dac_trees",
                "dac_tree_exceptions",
            ]
            .contains(&name.as_str())
            {
                continue;
            }
            let rows = txn.open_untyped_table(handle).unwrap().len().unwrap();
            if rows > 0 {
                out.push(format!("{name} ({rows} rows)"));
            }
        }
        out
    }

    /// Asserts guest `name` left no runtime dir and no cgroup (`what` names the case).
    pub fn assert_guest_dirs_gone(&self, name: &str, what: &str) {
        assert!(
            !self.path(&format!("run/guests/{name}")).exists(),
            "{what}: runtime dir left"
        );
        assert!(
            !self.path(&format!("run/ctl/{name}")).exists(),
            "{what}: control dir left"
        );
        let layout = svirt_manager::cgroup::Layout::detect(Path::new("/sys/fs/cgroup"));
        for d in layout.guest_dirs(&self.cgroup_parent, name) {
            assert!(!d.exists(), "{what}: cgroup {} left", d.display());
        }
    }

    /// [`Env::xml`] of a guest without disks that gets `share` as a 9p filesystem.
    pub fn xml_with_share(&self, name: &str, share: &Path) -> String {
        self.xml(name, &[]).replace(
            "<serial ",
            &format!(
                "<filesystem type='mount' accessmode='passthrough'><source dir='{}'/><target dir='share'/></filesystem>\n<serial ",
                share.display()
            ),
        )
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        // Kill anything left in our cgroups, then remove them (also on test failure).
        let layout = svirt_manager::cgroup::Layout::detect(Path::new("/sys/fs/cgroup"));
        let dirs: Vec<PathBuf> = match &layout {
            svirt_manager::cgroup::Layout::V1 { memory, pids } => {
                vec![
                    memory.join(&self.cgroup_parent),
                    pids.join(&self.cgroup_parent),
                ]
            }
            svirt_manager::cgroup::Layout::V2 { root } => vec![root.join(&self.cgroup_parent)],
            _ => vec![],
        };
        for d in &dirs {
            if let Ok(rd) = std::fs::read_dir(d) {
                for e in rd.flatten() {
                    if e.path().is_dir() {
                        svirt_manager::cgroup::kill_all(
                            &[e.path()],
                            std::time::Duration::from_secs(3),
                        );
                        let _ = svirt_manager::cgroup::remove_dirs(
                            &[e.path()],
                            std::time::Duration::from_secs(3),
                        );
                    }
                }
            }
        }
        svirt_manager::cgroup::remove_parent(&layout, &self.cgroup_parent);
    }
}

/// (uid, gid, mode) as [`owner_mode`] reads them.
pub type OwnerMode = (u32, u32, u32);

/// Owner, group and mode of a file.
pub fn owner_mode(p: &Path) -> OwnerMode {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(p).unwrap();
    (m.uid(), m.gid(), m.mode())
}

/// Polls `f` every 2 ms until it holds or `timeout` passes; whether it held.
pub fn poll_until(timeout: std::time::Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = std::time::Instant::now() + timeout;
    while std::time::Instant::now() < deadline {
        if f() {
            return true;
        }
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
    f()
}

/// Whether a pid is alive (not a zombie).
pub fn alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            let st = s
                .rsplit_once(')')
                .map(|(_, r)| r.trim_start().chars().next());
            !matches!(st, Some(Some('Z' | 'X')))
        })
        .unwrap_or(false)
}

/// A file made immutable (`chattr +i`: even root's chown fails with EPERM), made mutable
/// again on drop (also on test failure, so the temporary directory can be removed).
pub struct Immutable(PathBuf);

impl Immutable {
    pub fn set(p: &Path) -> Immutable {
        let st = Command::new("chattr").arg("+i").arg(p).status().unwrap();
        assert!(st.success(), "chattr +i {}", p.display());
        Immutable(p.to_path_buf())
    }
}

impl Drop for Immutable {
    fn drop(&mut self) {
        let _ = Command::new("chattr").arg("-i").arg(&self.0).status();
    }
}
