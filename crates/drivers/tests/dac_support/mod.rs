//! Shared helpers of the DAC and Landlock tests: plans over temporary files, and running the
//! `svirt-confine-check` helper under a list of child hooks.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::ffi::{CStr, CString};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;

use svirt_domain::{
    Access, DacAction, LevelSource, Model, Plan, PlannedResource, ProcessLabel, Resource,
    ResourceKind, Sharing,
};
use svirt_drivers::dac::{DacConfig, DacDriver};
use svirt_drivers::{ChildHook, ExecContext, GuestSecurity};
use svirt_store::{IdAllocator, IdConfig, Store};

/// The helper binary built with this package.
pub fn helper() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_svirt-confine-check"))
}

/// One planned resource.
pub fn res(
    path: &Path,
    kind: ResourceKind,
    access: Access,
    sharing: Sharing,
    dac: DacAction,
) -> PlannedResource {
    PlannedResource {
        resource: Resource {
            path: path.to_path_buf(),
            kind,
            access,
            sharing,
            recursive: false,
            device: format!("{kind:?} {}", path.display()),
            overrides: BTreeMap::new(),
            identity: None,
        },
        selinux: None,
        selinux_reason: String::new(),
        selinux_restore: false,
        dac,
        path_access: access,
    }
}

/// A private read-write disk image.
pub fn disk(path: &Path) -> PlannedResource {
    res(
        path,
        ResourceKind::DiskImage,
        Access::Rw,
        Sharing::Private,
        DacAction::OwnGuest { private: true },
    )
}

/// Read-only content (a CD-ROM image).
pub fn cdrom(path: &Path) -> PlannedResource {
    res(
        path,
        ResourceKind::Cdrom,
        Access::Ro,
        Sharing::ReadOnlyContent,
        DacAction::GrantRead,
    )
}

/// A shared read-write disk image (the shared group's).
pub fn shared_disk(path: &Path) -> PlannedResource {
    res(
        path,
        ResourceKind::DiskImage,
        Access::Rw,
        Sharing::Shared,
        DacAction::SharedGroup,
    )
}

/// A read-write filesystem tree (a share), changed recursively.
pub fn tree_resource(path: &Path, sharing: Sharing, dac: DacAction) -> PlannedResource {
    let mut r = res(path, ResourceKind::FilesystemTree, Access::Rw, sharing, dac);
    r.resource.recursive = true;
    r
}

/// A share of one guest only.
pub fn private_tree(path: &Path) -> PlannedResource {
    tree_resource(
        path,
        Sharing::Private,
        DacAction::OwnGuest { private: true },
    )
}

/// A share of several guests, through the shared group.
pub fn shared_tree(path: &Path) -> PlannedResource {
    tree_resource(path, Sharing::Shared, DacAction::SharedGroup)
}

/// A guest with nothing reserved yet.
pub fn guest(name: &str) -> GuestSecurity {
    GuestSecurity {
        name: name.into(),
        level: None,
        ids: None,
    }
}

/// A plan for DAC and Landlock.
pub fn plan(name: &str, resources: Vec<PlannedResource>) -> Plan {
    Plan {
        name: name.to_string(),
        uuid: format!("00000000-0000-4000-8000-{:012x}", name.len()),
        models: vec![Model::Dac, Model::Landlock],
        selinux_process: ProcessLabel::Unconfined,
        level: LevelSource::None,
        selinux_relabel: false,
        dac_enabled: true,
        resources,
        dac_ids: None,
        unconfined: Vec::new(),
        disk_chains: Vec::new(),
    }
}

/// The exec context of the helper, with `runtime_dir`.
pub fn exec_ctx(runtime_dir: &Path) -> ExecContext {
    ExecContext {
        emulator: helper(),
        runtime_dir: runtime_dir.to_path_buf(),
        devices: Vec::new(),
        tcp_ports: Vec::new(),
        inherited: vec![],
        procfs: None,
    }
}

/// Runs the helper with `ops` after `hooks` (in order) and returns its stdout lines keyed by
/// `"OP ARG"` → the rest (`ok`, `err 13`).
pub fn run(hooks: Vec<ChildHook>, ops: &[String]) -> BTreeMap<String, String> {
    let out = spawn(hooks, ops).wait_with_output().expect("helper runs");
    assert!(out.status.success(), "helper failed: {out:?}");
    parse(&String::from_utf8_lossy(&out.stdout))
}

/// Spawns the helper under `hooks`, stdout piped.
pub fn spawn(hooks: Vec<ChildHook>, ops: &[String]) -> Child {
    let mut hooks = hooks;
    let mut cmd = Command::new(helper());
    cmd.args(ops)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    // SAFETY: the hooks only make system calls on data prepared before the fork.
    unsafe {
        cmd.pre_exec(move || {
            for h in hooks.iter_mut() {
                h()?;
            }
            Ok(())
        });
    }
    cmd.spawn().expect("spawn helper")
}

/// Parses the helper's output.
pub fn parse(stdout: &str) -> BTreeMap<String, String> {
    let mut m = BTreeMap::new();
    for line in stdout.lines() {
        if let Some(rest) = line.strip_prefix("ids ") {
            m.insert("ids".to_string(), rest.to_string());
            continue;
        }
        let mut it = line.splitn(3, ' ');
        let (op, arg, res) = (
            it.next().unwrap_or(""),
            it.next().unwrap_or(""),
            it.next().unwrap_or(""),
        );
        m.insert(format!("{op} {arg}"), res.to_string());
    }
    m
}

/// `op:arg` as the helper takes it.
pub fn op(op: &str, arg: impl std::fmt::Display) -> String {
    format!("{op}:{arg}")
}

/// The result of `op:arg` in `m`.
pub fn result<'a>(
    m: &'a BTreeMap<String, String>,
    op: &str,
    arg: impl std::fmt::Display,
) -> &'a str {
    m.get(&format!("{op} {arg}"))
        .map(String::as_str)
        .unwrap_or("missing")
}

/// A process the test owns, killed and reaped on drop.
pub struct Sleeper(pub Child);

impl Sleeper {
    /// `sleep 600`, optionally as another uid/gid.
    pub fn start(ids: Option<(u32, u32)>) -> Sleeper {
        let mut c = Command::new("sleep");
        c.arg("600");
        if let Some((u, g)) = ids {
            c.uid(u).gid(g);
        }
        Sleeper(c.spawn().expect("spawn sleep"))
    }

    /// Its pid.
    pub fn pid(&self) -> u32 {
        self.0.id()
    }

    /// Whether it still runs (not exited).
    pub fn alive(&mut self) -> bool {
        matches!(self.0.try_wait(), Ok(None))
    }
}

impl Drop for Sleeper {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A DAC driver over a fresh store in `state`, ids `first..=last`, accounts from `accounts`.
pub fn dac_driver(
    state: &Path,
    accounts: &Path,
    first: u32,
    last: u32,
    shared_gid: Option<u32>,
) -> DacDriver {
    let store = Arc::new(Store::open(state).expect("store"));
    let config = DacConfig {
        accounts_root: accounts.to_path_buf(),
        shared_gid,
        ..Default::default()
    };
    dac_driver_on(store, first, last, config)
}

/// A DAC driver over `store` with `config`, ids `first..=last` from the accounts of
/// `config.accounts_root`.
pub fn dac_driver_on(store: Arc<Store>, first: u32, last: u32, config: DacConfig) -> DacDriver {
    let ids = Arc::new(
        IdAllocator::open(
            store.clone(),
            IdConfig {
                first,
                last,
                root: config.accounts_root.clone(),
            },
        )
        .expect("id allocator"),
    );
    DacDriver::new(config, store, ids)
}

/// A test's temporary directory, its root-only accounts and a DAC driver over a fresh store in
/// `<dir>/state` with ids `first..=last`; None (after the SKIP line) when not root.
pub fn dac_setup(
    first: u32,
    last: u32,
    shared_gid: Option<u32>,
) -> Option<(tempfile::TempDir, PathBuf, DacDriver)> {
    if skip_unless_root() {
        return None;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let acc = root_accounts(dir.path());
    let d = dac_driver(&dir.path().join("state"), &acc, first, last, shared_gid);
    Some((dir, acc, d))
}

/// An accounts root with `etc/passwd` and `etc/group` holding these lines.
pub fn accounts(dir: &Path, passwd: &str, group: &str) -> PathBuf {
    let root = dir.join("accounts");
    std::fs::create_dir_all(root.join("etc")).expect("mkdir etc");
    std::fs::write(root.join("etc/passwd"), passwd).expect("passwd");
    std::fs::write(root.join("etc/group"), group).expect("group");
    root
}

/// An accounts root under `dir` with the root user and group only.
pub fn root_accounts(dir: &Path) -> PathBuf {
    accounts(dir, "root:x:0:0::/root:/bin/sh\n", "root:x:0:\n")
}

/// (uid, gid, mode with type bits) of `root` and every entry below it, not following
/// symlinks.
pub fn tree_snapshot(root: &Path) -> BTreeMap<PathBuf, (u32, u32, u32)> {
    use std::os::unix::fs::MetadataExt;
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(p) = stack.pop() {
        let m = std::fs::symlink_metadata(&p).expect("lstat");
        out.insert(p.clone(), (m.uid(), m.gid(), m.mode()));
        if m.is_dir() {
            for e in std::fs::read_dir(&p).expect("read_dir") {
                stack.push(e.expect("entry").path());
            }
        }
    }
    out
}

/// `p` as a C string.
pub fn cpath(p: &Path) -> CString {
    CString::new(p.as_os_str().as_bytes()).expect("path")
}

/// The POSIX access ACL xattr.
pub const ACL_XATTR: &CStr = c"system.posix_acl_access";

/// The value of the xattr `name` of `p` (not following a final symlink); None when it has
/// none (ENODATA), any other error fails the test.
pub fn get_xattr(p: &Path, name: &CStr) -> Option<Vec<u8>> {
    let mut buf = vec![0u8; 4096];
    // SAFETY: lgetxattr writes at most buf.len() bytes.
    let n = unsafe {
        libc::lgetxattr(
            cpath(p).as_ptr(),
            name.as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    if n < 0 {
        let e = std::io::Error::last_os_error();
        assert_eq!(e.raw_os_error(), Some(libc::ENODATA), "getxattr: {e}");
        return None;
    }
    buf.truncate(n as usize);
    Some(buf)
}

/// An access ACL in the kernel's xattr layout (version 2, entries sorted by tag and id):
/// `(tag, perm, id)` with `u32::MAX` as the id of the entries that have none.
pub fn encode_acl(entries: &[(u16, u16, u32)]) -> Vec<u8> {
    let mut es = entries.to_vec();
    es.sort_by_key(|e| (e.0, e.2));
    let mut out = 2u32.to_le_bytes().to_vec();
    for (tag, perm, id) in es {
        out.extend_from_slice(&tag.to_le_bytes());
        out.extend_from_slice(&perm.to_le_bytes());
        out.extend_from_slice(&id.to_le_bytes());
    }
    out
}

/// Sets the access ACL of `p` (not following a final symlink); any error fails the test.
pub fn set_acl(p: &Path, entries: &[(u16, u16, u32)]) {
    let v = encode_acl(entries);
    // SAFETY: lsetxattr reads v.len() bytes and two NUL-terminated strings.
    let r = unsafe {
        libc::lsetxattr(
            cpath(p).as_ptr(),
            ACL_XATTR.as_ptr(),
            v.as_ptr().cast(),
            v.len(),
            0,
        )
    };
    assert_eq!(r, 0, "set ACL: {}", std::io::Error::last_os_error());
}

/// The raw access ACL of `p`, None when it has none.
pub fn get_acl(p: &Path) -> Option<Vec<u8>> {
    get_xattr(p, ACL_XATTR)
}

/// Owner, group and mode bits of a path (not following a final symlink).
pub fn owner_mode(p: &Path) -> (u32, u32, u32) {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::symlink_metadata(p).expect("stat");
    (m.uid(), m.gid(), m.mode() & 0o7777)
}

/// Lets other users traverse `dir` (tempdirs are 0700), as image directories must be.
pub fn traversable(dir: &Path) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o711)).expect("chmod");
}

/// Sets the mode of a path.
pub fn chmod(p: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).expect("chmod");
}

/// Whether we run as root (the DAC tests change owners and ids).
pub fn skip_unless_root() -> bool {
    !svirt_testkit::root("DAC tests change owners and ids: chown, setresuid")
}

/// The group svirt allocated to shared object `path` (its `shared-object/<dev>:<ino>` id
/// reservation in `store`), if any.
pub fn shared_gid_of(store: &Store, path: &Path) -> Option<u32> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path).ok()?;
    let owner = svirt_drivers::dac::shared_owner(svirt_store::ObjectKey {
        dev: m.dev(),
        ino: m.ino(),
    });
    store
        .id_reservations()
        .ok()?
        .into_iter()
        .find(|(_, o)| *o == owner)
        .map(|(id, _)| id)
}
