//! Shared helpers of the DAC and Landlock tests: plans over temporary files, and running the
//! `svirt-confine-check` helper under a list of child hooks.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use svirt_domain::{
    Access, DacAction, LevelSource, Model, Plan, PlannedResource, ProcessLabel, Resource,
    ResourceKind, Sharing,
};
use svirt_drivers::{ChildHook, ExecContext};

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
        DacAction::MakeReadable,
    )
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
    }
}

/// The exec context of the helper, with `runtime_dir`.
pub fn exec_ctx(runtime_dir: &Path) -> ExecContext {
    ExecContext {
        emulator: helper(),
        runtime_dir: runtime_dir.to_path_buf(),
        devices: Vec::new(),
        tcp_ports: Vec::new(),
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
) -> svirt_drivers::dac::DacDriver {
    use std::sync::Arc;
    let store = Arc::new(svirt_store::Store::open(state).expect("store"));
    let ids = Arc::new(
        svirt_store::IdAllocator::open(
            store.clone(),
            svirt_store::IdConfig {
                first,
                last,
                root: accounts.to_path_buf(),
            },
        )
        .expect("id allocator"),
    );
    let config = svirt_drivers::dac::DacConfig {
        accounts_root: accounts.to_path_buf(),
        shared_gid,
        ..Default::default()
    };
    svirt_drivers::dac::DacDriver::new(config, store, ids)
}

/// An accounts root with `etc/passwd` and `etc/group` holding these lines.
pub fn accounts(dir: &Path, passwd: &str, group: &str) -> PathBuf {
    let root = dir.join("accounts");
    std::fs::create_dir_all(root.join("etc")).expect("mkdir etc");
    std::fs::write(root.join("etc/passwd"), passwd).expect("passwd");
    std::fs::write(root.join("etc/group"), group).expect("group");
    root
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
    // SAFETY: geteuid cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("SKIP: DAC tests need root (chown, setresuid)");
        return true;
    }
    false
}
