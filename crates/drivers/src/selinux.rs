//! The SELinux driver: labels a guest's resources from the plan through the relabel engine,
//! gives the VMM its label between fork and exec, reads a running process's label.
//!
//! It talks to the kernel directly (selinuxfs, `/proc/*/attr/*`, `security.selinux`
//! xattrs) instead of binding libselinux: no C dependency, static builds for the lab's
//! initramfs, and every file operation goes through the engine's no-follow fds (libselinux's
//! `setfilecon` takes a path). See `docs/drivers/selinux.md`.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use svirt_domain::{LevelSpec, Model, Plan, ProcessLabel};
use svirt_labels::MlsRange;
use svirt_store::LevelAllocator;

use crate::host_check::{Check, HostView, Status, check, xattr_checks};
use crate::relabel::{LabelJob, RelabelError, Relabeler, Warning};
use crate::{ChildHook, DriverError, ExecContext, GuestSecurity, ProbeReport, SecurityDriver};
use svirt_hostfs::fstype;

const MODEL: Model = Model::Selinux;

/// The SELinux boolean that decides access to a file the filesystem cannot label, from its
/// `statfs` type.
pub fn boolean_for_fs(f_type: i64) -> Option<&'static str> {
    match f_type {
        fstype::NFS => Some("virt_use_nfs"),
        fstype::FUSE => Some("virt_use_fusefs"),
        fstype::CIFS | fstype::SMB2 | fstype::SMB => Some("virt_use_samba"),
        _ => None,
    }
}

/// The message of a soft labeling failure: what happened and which boolean isolation of
/// that file now depends on.
pub fn soft_message(w: &Warning) -> String {
    let fs = match w.fs_type {
        Some(t) => format!("filesystem type {t:#x}"),
        None => "unknown filesystem".to_string(),
    };
    let dep = match w.fs_type.and_then(boolean_for_fs) {
        Some(b) => format!(
            "access to it is then decided by the SELinux boolean {b}, not by the guest's label (\
             with {b} on, every guest may use every such file)"
        ),
        None => "the guest's access to it is then decided by the filesystem's context= mount option \
                 (or a policy boolean such as virt_use_nfs / virt_use_fusefs / virt_use_samba), not by \
                 the guest's label"
            .to_string(),
    };
    format!(
        "{}: cannot set SELinux label ({}; {fs}): {dep}",
        w.path.display(),
        w.message
    )
}

/// What the SELinux driver found on the host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SelinuxState {
    /// Enforcing.
    Enforcing,
    /// Permissive (labels are set, denials only logged).
    Permissive,
    /// Not usable, with the reason.
    Unavailable(String),
}

/// The SELinux driver.
pub struct SelinuxDriver {
    /// Host root for the kernel interfaces (`/sys/fs/selinux`, `/proc`, `/etc/selinux`).
    host_root: PathBuf,
    relabeler: Arc<Relabeler>,
    levels: Option<Arc<LevelAllocator>>,
    warnings: Mutex<Vec<(String, String)>>,
    restore_shared: bool,
}

impl std::fmt::Debug for SelinuxDriver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SelinuxDriver")
            .field("host_root", &self.host_root)
            .field("levels", &self.levels.is_some())
            .finish()
    }
}

fn other(message: impl Into<String>) -> DriverError {
    DriverError::Other {
        model: MODEL,
        message: message.into(),
    }
}

fn store_err(e: impl std::fmt::Display) -> DriverError {
    DriverError::Store {
        model: MODEL,
        message: e.to_string(),
    }
}

/// Maps an engine error to the driver's error type.
pub(crate) fn map_relabel(model: Model, e: RelabelError) -> DriverError {
    match e {
        RelabelError::Io { op, path, source } => DriverError::Object {
            model,
            op,
            path,
            source,
        },
        RelabelError::Store(s) => DriverError::Store {
            model,
            message: s.to_string(),
        },
        e => DriverError::Other {
            model,
            message: e.to_string(),
        },
    }
}

impl SelinuxDriver {
    /// A driver using `host_root` for kernel interfaces (`/` in production), `relabeler`
    /// for files, and `levels` to allocate dynamic levels and reserve static ones. Without
    /// an allocator the manager must put the level in [`GuestSecurity::level`] before
    /// `set_all` (it then owns the reservation).
    pub fn new(
        host_root: impl Into<PathBuf>,
        relabeler: Arc<Relabeler>,
        levels: Option<Arc<LevelAllocator>>,
    ) -> SelinuxDriver {
        SelinuxDriver {
            host_root: host_root.into(),
            relabeler,
            levels,
            warnings: Mutex::new(Vec::new()),
            restore_shared: true,
        }
    }

    /// Whether shared and read-only content (which the plan marks "not restored", as the
    /// reference never restores it) is restored when its LAST user stops. The reference
    /// cannot do that safely (no reference counts); the store can, so it is on by default.
    /// Off gives the reference behaviour: such labels stay.
    pub fn with_restore_shared(mut self, on: bool) -> SelinuxDriver {
        self.restore_shared = on;
        self
    }

    fn at(&self, p: &str) -> PathBuf {
        self.host_root.join(p.trim_start_matches('/'))
    }

    /// Enforcing, permissive or unavailable (and why).
    pub fn state(&self) -> SelinuxState {
        let fs = self.at("/sys/fs/selinux");
        let enforce = match std::fs::read_to_string(fs.join("enforce")) {
            Ok(s) => s,
            Err(e) => {
                return SelinuxState::Unavailable(format!(
                    "selinuxfs is not mounted at {} ({e})",
                    fs.display()
                ));
            }
        };
        let cur = self.at("/proc/self/attr/current");
        match std::fs::read(&cur) {
            Ok(b) if !trim_label(&b).is_empty() => {}
            Ok(_) => {
                return SelinuxState::Unavailable(format!(
                    "{} is empty: no SELinux context",
                    cur.display()
                ));
            }
            Err(e) => {
                return SelinuxState::Unavailable(format!("cannot read {}: {e}", cur.display()));
            }
        }
        match enforce.trim() {
            "1" => SelinuxState::Enforcing,
            "0" => SelinuxState::Permissive,
            other => SelinuxState::Unavailable(format!("{}/enforce reads {other:?}", fs.display())),
        }
    }

    /// Soft warnings of the last `set_all` for `guest` (one message each), drained.
    pub fn take_warnings(&self, guest: &str) -> Vec<String> {
        let mut w = self.warnings.lock().unwrap_or_else(|e| e.into_inner());
        let (mine, rest): (Vec<_>, Vec<_>) = w.drain(..).partition(|(g, _)| g == guest);
        *w = rest;
        mine.into_iter().map(|(_, m)| m).collect()
    }

    /// The jobs a plan gives the engine, with the guest's level filled in. `restore_shared`:
    /// see [`SelinuxDriver::with_restore_shared`].
    pub fn jobs(
        plan: &Plan,
        level: Option<&MlsRange>,
        restore_shared: bool,
    ) -> Result<Vec<LabelJob>, DriverError> {
        let mut jobs = Vec::new();
        for r in &plan.resources {
            let Some(t) = &r.selinux else { continue };
            let label = match (t.level, level) {
                (LevelSpec::Guest, None) => {
                    return Err(other(format!(
                        "{}: the plan needs the guest's level but none was reserved",
                        r.resource.path.display()
                    )));
                }
                (_, l) => t.display(l),
            };
            jobs.push(LabelJob {
                path: r.resource.path.clone(),
                label,
                restore: r.selinux_restore || restore_shared,
                recursive: r.resource.recursive,
                identity: r.resource.identity.map(|i| (i.dev, i.ino)),
            });
        }
        Ok(jobs)
    }

    /// The process label the plan gives the VMM, resolved.
    pub fn exec_label(
        plan: &Plan,
        level: Option<&MlsRange>,
    ) -> Result<Option<String>, DriverError> {
        match &plan.selinux_process {
            ProcessLabel::Unconfined => Ok(None),
            ProcessLabel::Label(t) => match (t.level, level) {
                (LevelSpec::Guest, None) => Err(other(
                    "the process label needs the guest's level but none was reserved",
                )),
                (_, l) => Ok(Some(t.display(l))),
            },
        }
    }
}

fn trim_label(b: &[u8]) -> &[u8] {
    let mut b = b;
    while let [rest @ .., 0 | b'\n'] = b {
        b = rest;
    }
    b
}

fn planned(plan: &Plan) -> bool {
    plan.models.contains(&MODEL) && !plan.unconfined.contains(&MODEL)
}

impl SecurityDriver for SelinuxDriver {
    fn model(&self) -> Model {
        MODEL
    }

    fn probe(&self) -> ProbeReport {
        match self.state() {
            SelinuxState::Enforcing => ProbeReport {
                model: MODEL,
                usable: true,
                reason: "SELinux enforcing".into(),
            },
            SelinuxState::Permissive => ProbeReport {
                model: MODEL,
                usable: true,
                reason: "SELinux permissive: labels are set but denials are only logged".into(),
            },
            SelinuxState::Unavailable(reason) => ProbeReport {
                model: MODEL,
                usable: false,
                reason,
            },
        }
    }

    fn reserve(&self, plan: &Plan, guest: &mut GuestSecurity) -> Result<(), DriverError> {
        if !planned(plan) {
            return Ok(());
        }
        crate::mcs_level::reserve(MODEL, self.levels.as_deref(), plan.level, guest)
    }

    fn release(&self, guest: &GuestSecurity) -> Result<(), DriverError> {
        crate::mcs_level::release(MODEL, self.levels.as_deref(), guest)
    }

    fn set_all(&self, plan: &Plan, guest: &GuestSecurity) -> Result<(), DriverError> {
        if !planned(plan) || !plan.selinux_relabel {
            return Ok(());
        }
        let jobs = Self::jobs(plan, guest.level.as_ref(), self.restore_shared)?;
        // Before any label changes: the same exclusivity rule as DAC's (one claim table).
        crate::stack::claim_plan(
            self.relabeler.store(),
            self.relabeler.root(),
            Model::Selinux,
            plan,
        )?;
        let applied = match self.relabeler.set_labels(&guest.name, &jobs) {
            Ok(a) => a,
            Err(e) => {
                // set_labels undid its own work: nothing of this guest's is left to claim.
                let _ = crate::stack::release_claims(
                    self.relabeler.store(),
                    Model::Selinux,
                    &guest.name,
                );
                return Err(map_relabel(MODEL, e));
            }
        };
        let mut w = self.warnings.lock().unwrap_or_else(|e| e.into_inner());
        for warn in &applied.warnings {
            let m = soft_message(warn);
            tracing::warn!("{}: {m}", guest.name);
            w.push((guest.name.clone(), m));
        }
        Ok(())
    }

    fn restore_all(&self, plan: &Plan, guest: &GuestSecurity) -> Vec<DriverError> {
        let _ = plan;
        self.relabeler.restore_guest(&guest.name, Vec::new)
    }

    fn child_hooks(
        &self,
        plan: &Plan,
        guest: &GuestSecurity,
        exec: &ExecContext,
    ) -> Result<Vec<ChildHook>, DriverError> {
        let _ = exec;
        if !planned(plan) {
            return Ok(Vec::new());
        }
        let Some(label) = Self::exec_label(plan, guest.level.as_ref())? else {
            return Ok(Vec::new());
        };
        let path = self.at("/proc/thread-self/attr/exec");
        Ok(vec![exec_label_hook(&path, &label)?])
    }

    /// The exec label is written through `/proc`, which the jail does not show.
    fn hook_phase(&self) -> crate::HookPhase {
        crate::HookPhase::BeforeJail
    }

    /// The reference policy (Debian's `policy.33`, checked with `sesearch`) lets the
    /// manager's domain (`virtd_t`) mount on directories only, never on a file, and
    /// neither remount nor unmount a file system: the jail's binds cannot be made. SELinux's
    /// labels confine the VMM's files and sockets instead.
    fn permits_mount_namespace(&self) -> bool {
        false
    }

    /// Under SELinux the VMM (`svirt_t`) may only use objects labeled for it: the policy
    /// closes an inherited `virtd_t` socket at exec (silently: dontaudit). So the QMP
    /// listener is created with the VMM's process label and the log with the guest's image
    /// label, as libvirt does with `setsockcreatecon` and `setfscreatecon`.
    fn create_labels(
        &self,
        plan: &Plan,
        guest: &GuestSecurity,
    ) -> Result<crate::CreateLabels, DriverError> {
        if !planned(plan) {
            return Ok(crate::CreateLabels::default());
        }
        let socket = Self::exec_label(plan, guest.level.as_ref())?;
        let file = match (&socket, &guest.level) {
            (Some(_), Some(l)) => {
                let ctx = svirt_domain::SelinuxContexts::load(&self.host_root).unwrap_or_default();
                Some(ctx.image.with_range(*l).to_string())
            }
            _ => None,
        };
        Ok(crate::CreateLabels { socket, file })
    }

    /// Also every other level the store still has reserved for the name (one an earlier
    /// run kept because its restore failed).
    fn release_owner(&self, guest: &GuestSecurity) -> Vec<DriverError> {
        crate::mcs_level::release_owner(
            MODEL,
            self.levels.as_deref(),
            self.relabeler.store(),
            guest,
        )
    }

    /// The relabel engine's records of owners no running guest is.
    fn recover(&self, running: &dyn Fn(&str) -> bool) -> Vec<crate::RecoveryNote> {
        self.relabeler.recover(running).notes(MODEL)
    }

    fn held_for(&self, owner: &str) -> Option<String> {
        crate::mcs_level::held_for(self.relabeler.store(), owner)
    }

    fn process_label(&self, pid: i32) -> Result<Option<String>, DriverError> {
        let p = self.at(&format!("/proc/{pid}/attr/current"));
        match std::fs::read(&p) {
            Ok(b) => {
                let t = trim_label(&b);
                if t.is_empty() {
                    Ok(None)
                } else {
                    Ok(Some(String::from_utf8_lossy(t).into_owned()))
                }
            }
            // EINVAL: no LSM provides the attribute.
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => Ok(None),
            Err(source) => Err(DriverError::Object {
                model: MODEL,
                op: "read process label",
                path: p,
                source,
            }),
        }
    }
}

/// A child hook writing `label` (NUL-terminated, as libselinux's `setexeccon` does) to the
/// exec attribute file `path` (`/proc/thread-self/attr/exec`). Everything is allocated
/// here, before the fork; the hook only makes `open`/`write`/`close` calls.
pub fn exec_label_hook(path: &Path, label: &str) -> Result<ChildHook, DriverError> {
    let mut bytes = label.as_bytes().to_vec();
    if bytes.contains(&0) {
        return Err(other(format!("label {label:?} contains NUL")));
    }
    bytes.push(0);
    crate::proc_attr::write_hook(&[path], bytes).map_err(other)
}

// ---------------------------------------------------------------- registration

/// SELinux in the registry: the MAC model where selinuxfs is mounted.
pub(crate) const REGISTRATION: crate::registration::Registration =
    crate::registration::Registration {
        name: "selinux",
        model: Model::Selinux,
        role: crate::registration::Role::Mac { active: enabled },
        changes_files: true,
        open: open_stacked,
        has_records,
        open_retired,
        host_checks,
    };

/// `svirt host-validate`'s lines for SELinux: its mode, and whether `security.selinux`
/// can be written where images live.
fn host_checks(view: &HostView<'_>) -> Vec<Check> {
    let mut out = vec![mode_check(view)];
    out.extend(xattr_checks(
        view,
        "security.selinux xattrs",
        "security.selinux",
        b"system_u:object_r:svirt_image_t:s0",
    ));
    out
}

fn mode_check(view: &HostView<'_>) -> Check {
    let host = view.host;
    let what = "mode";
    let mounted = host
        .mounts_of("selinuxfs")
        .iter()
        .any(|m| m == "/sys/fs/selinux");
    if mounted {
        return match host
            .read("/sys/fs/selinux/enforce")
            .map(|s| s.trim().to_string())
        {
            Ok(v) if v == "1" => check(
                "SELinux",
                what,
                Status::Pass,
                "enforcing: svirt uses the selinux driver",
            ),
            Ok(_) => check(
                "SELinux",
                what,
                Status::Warn,
                "permissive: labels are set but denials are only logged",
            ),
            Err(e) => check(
                "SELinux",
                what,
                Status::Warn,
                format!("cannot read /sys/fs/selinux/enforce: {e}"),
            ),
        };
    }
    let listed = view.lsm_active("selinux");
    match view.lsms {
        _ if listed => check(
            "SELinux",
            what,
            Status::Warn,
            "active but selinuxfs is not mounted on /sys/fs/selinux (no policy loaded?)",
        ),
        Ok(_) => check(
            "SELinux",
            what,
            Status::Warn,
            "disabled (not an active LSM): svirt confines guests with DAC + Landlock",
        ),
        Err(_) => check(
            "SELinux",
            what,
            Status::Warn,
            "disabled (no selinuxfs on /sys/fs/selinux): svirt confines guests with DAC + Landlock",
        ),
    }
}

/// Whether SELinux runs on the host under `root` (selinuxfs mounted), and how.
fn enabled(root: &Path) -> (bool, String) {
    let fs = root.join("sys/fs/selinux");
    match std::fs::read_to_string(fs.join("enforce")) {
        Ok(v) => (
            true,
            format!(
                "selinuxfs mounted at {}, {}",
                fs.display(),
                if v.trim() == "1" {
                    "enforcing"
                } else {
                    "permissive"
                }
            ),
        ),
        Err(_) => (
            false,
            format!("SELinux not enabled (no {})", fs.join("enforce").display()),
        ),
    }
}

/// The category pool: the configured range, else the manager's own context's range
/// (`s0-s0:c0.c1023`), else c0..c1023.
pub(crate) fn level_config(
    root: &Path,
    settings: &crate::registration::Settings,
) -> svirt_store::AllocatorConfig {
    if let Some(r) = settings.category_range {
        return svirt_store::AllocatorConfig::with_categories(r.first, r.last);
    }
    let own = std::fs::read(root.join("proc/self/attr/current")).ok();
    let range = own
        .as_deref()
        .map(|b| String::from_utf8_lossy(trim_label(b)).into_owned())
        .and_then(|s| s.parse::<svirt_labels::Context>().ok())
        .and_then(|c| c.range);
    match range {
        Some(r) => svirt_store::AllocatorConfig::from_range(&r),
        None => svirt_store::AllocatorConfig::with_categories(0, 1023),
    }
}

/// The relabel engine on the ledger, under the host root, with `threads` walkers.
fn engine(
    ctx: &crate::registration::OpenContext<'_>,
    threads: usize,
) -> Result<Arc<Relabeler>, DriverError> {
    let root = svirt_hostfs::FsRoot::open(ctx.root_dir).map_err(|source| DriverError::Object {
        model: Model::Selinux,
        op: "open root",
        path: ctx.root_dir.to_path_buf(),
        source,
    })?;
    Relabeler::open(ctx.store.clone(), root, threads)
        .map_err(|e| other(format!("relabel engine: {e}")))
}

fn open_stacked(
    ctx: &crate::registration::OpenContext<'_>,
) -> Result<Arc<dyn SecurityDriver>, DriverError> {
    let levels = LevelAllocator::open(ctx.store.clone(), level_config(ctx.root_dir, ctx.settings))
        .map_err(store_err)?
        // As for uids: the guest record is durable before the level is used.
        .with_deferred_commits(true);
    // Two workers: tree relabels must not starve the host's other work.
    let relabeler = engine(ctx, 2)?;
    relabeler.set_progress(Some((ctx.progress)(Model::Selinux)));
    Ok(Arc::new(SelinuxDriver::new(
        ctx.root_dir,
        relabeler,
        Some(Arc::new(levels)),
    )))
}

/// What SELinux recorded: the relabel engine's records, or levels reserved in the ledger.
fn has_records(store: &svirt_store::Store) -> Result<bool, DriverError> {
    let relabel =
        Relabeler::has_records(store).map_err(|e| other(format!("relabel records: {e}")))?;
    let levels = store.level_reservations().map_err(store_err)?;
    Ok(relabel || !levels.is_empty())
}

/// For the open's recovery: the relabel engine, and a level allocator over every category
/// (whatever range reserved them, they are released).
fn open_retired(
    ctx: &crate::registration::OpenContext<'_>,
) -> Result<Arc<dyn SecurityDriver>, DriverError> {
    let relabeler = engine(ctx, 1)?;
    let levels = LevelAllocator::open(ctx.store.clone(), svirt_store::AllocatorConfig::default())
        .map_err(store_err)?;
    Ok(Arc::new(SelinuxDriver::new(
        ctx.root_dir,
        relabeler,
        Some(Arc::new(levels)),
    )))
}
