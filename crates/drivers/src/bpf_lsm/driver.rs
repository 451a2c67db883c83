//! The BPF-LSM driver (module docs in `mod.rs`).

use std::collections::BTreeSet;
use std::io;
use std::os::fd::{AsFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use svirt_bpf::enforcer::{Enforcer, Programs, SubjectHook};
use svirt_bpf::label::{Allow, Cats};
use svirt_bpf::{InodeKey, ObjectLabel, SubjectLabel};
use svirt_domain::{Access, LevelSource, Model, Plan, PlannedResource};
use svirt_hostfs::FsRoot;
use svirt_labels::MlsRange;
use svirt_store::{LevelAllocator, Store};

use super::records::Records;
use crate::vmm_needs::VmmNeeds;
use crate::{
    ChildHook, DriverError, ExecContext, GuestSecurity, ProbeReport, RecoveryNote, SecurityDriver,
};

const MODEL: Model = Model::BpfLsm;

/// `statfs` magic of a bpffs.
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

/// Where the driver keeps things.
#[derive(Debug, Clone)]
pub struct BpfLsmConfig {
    /// Host root (`/` but in tests).
    pub root: PathBuf,
    /// Where a bpffs is mounted (or is mounted by the driver): `/sys/fs/bpf`.
    pub bpffs: PathBuf,
    /// The directory beneath it the programs and maps of this svirtd are pinned in
    /// (`/sys/fs/bpf/svirt/<instance>`: several svirtds, each with its own state
    /// directory, each enforce their own guests without touching another's pins).
    pub pin_dir: PathBuf,
    /// The per-guest records of what was labeled (`<state>/bpf-lsm`).
    pub records: PathBuf,
    /// What every VMM needs from the host.
    pub needs: VmmNeeds,
    /// `Enforce` when stacked; `MapsOnly` when opened retired (only to clean up).
    pub programs: Programs,
}

/// The driver.
pub struct BpfLsmDriver {
    cfg: BpfLsmConfig,
    fsroot: FsRoot,
    store: Arc<Store>,
    levels: Option<Arc<LevelAllocator>>,
    records: Records,
    enforcer: Mutex<Option<Enforcer>>,
    denials: Mutex<Option<DenialLog>>,
}

/// The thread that moves denials from the programs' ring buffer to the kernel log, where
/// `svirt denials` reads them beside SELinux's AVCs and AppArmor's records.
struct DenialLog {
    stop: Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl DenialLog {
    fn start(pin_dir: &Path, kmsg: PathBuf) -> Result<DenialLog, DriverError> {
        let events = svirt_bpf::events::open_pinned(pin_dir).map_err(bpf_err)?;
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::Builder::new()
            .name("svirt-bpf-denials".into())
            .spawn(move || {
                use std::io::Write;
                let mut limit = RateLimit::new(DENIALS_PER_SECOND);
                let write = |line: &str| {
                    tracing::warn!(target: "svirt::bpf_lsm", "{line}");
                    // One write per line (the kernel takes each write as one record), on
                    // a file opened for it: the kernel limits each open file of
                    // /dev/kmsg to 10 lines per 5 s by default and drops the rest
                    // silently; this thread's own limit (DENIALS_PER_SECOND) stands in.
                    if let Ok(mut f) = std::fs::OpenOptions::new().write(true).open(&kmsg) {
                        let _ = f.write_all(format!("<4>{line}\n").as_bytes());
                    }
                };
                let r = svirt_bpf::events::follow(
                    &events,
                    &flag,
                    std::time::Duration::from_millis(200),
                    |d| match limit.admit(std::time::Instant::now()) {
                        Admit::Yes { suppressed } => {
                            if suppressed > 0 {
                                write(&format!(
                                    "svirt-bpf: {suppressed} denial(s) not logged (over {DENIALS_PER_SECOND}/s)"
                                ));
                            }
                            write(&d.line());
                        }
                        Admit::No => {}
                    },
                );
                if let Err(e) = r {
                    tracing::error!("BPF-LSM denials are no longer logged: {e}");
                }
            })
            .map_err(|e| other(format!("start the denial log thread: {e}")))?;
        Ok(DenialLog {
            stop,
            thread: Some(thread),
        })
    }
}

/// At most this many denial lines a second reach the logs: a guest looping on a denied
/// open must not fill the host's disk or drown its kernel log. The rest are counted and
/// the count logged with the next line let through.
const DENIALS_PER_SECOND: u32 = 50;

enum Admit {
    /// Log it; `suppressed` lines were dropped since the last one logged.
    Yes {
        suppressed: u64,
    },
    No,
}

/// A fixed window of one second.
struct RateLimit {
    per_second: u32,
    window: Option<std::time::Instant>,
    used: u32,
    suppressed: u64,
}

impl RateLimit {
    fn new(per_second: u32) -> RateLimit {
        RateLimit {
            per_second,
            window: None,
            used: 0,
            suppressed: 0,
        }
    }

    fn admit(&mut self, now: std::time::Instant) -> Admit {
        let fresh = self
            .window
            .is_none_or(|w| now.duration_since(w) >= std::time::Duration::from_secs(1));
        if fresh {
            self.window = Some(now);
            self.used = 0;
        }
        if self.used < self.per_second {
            self.used += 1;
            Admit::Yes {
                suppressed: std::mem::take(&mut self.suppressed),
            }
        } else {
            self.suppressed += 1;
            Admit::No
        }
    }
}

impl Drop for DenialLog {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn other(message: impl Into<String>) -> DriverError {
    DriverError::Other {
        model: MODEL,
        message: message.into(),
    }
}

fn bpf_err(e: svirt_bpf::BpfError) -> DriverError {
    other(e.to_string())
}

fn object_err(op: &'static str, path: &Path, source: io::Error) -> DriverError {
    DriverError::Object {
        model: MODEL,
        op,
        path: path.to_path_buf(),
        source,
    }
}

/// One object to label: where it was reached, its identity, its label.
struct Item {
    path: PathBuf,
    key: InodeKey,
    label: ObjectLabel,
}

/// The label SELinux's plan gives a resource, in the programs' form: the object's level
/// (its categories), what its access permits, a tree when the whole directory is shared.
/// `None` when SELinux's plan leaves the object untouched (`relabel='no'`): it then has no
/// label here and no guest may use it.
pub fn object_label(pr: &PlannedResource, guest: &MlsRange, is_dir: bool) -> Option<ObjectLabel> {
    let ctx = pr.selinux.as_ref()?.resolve(guest);
    let range = ctx.range?;
    let allow = match pr.path_access {
        Access::Rw => Allow::READ_WRITE,
        Access::Ro => Allow::READ_ONLY,
    };
    Some(ObjectLabel::new(
        Cats::of(&range.high),
        allow,
        pr.resource.recursive && is_dir,
    ))
}

impl BpfLsmDriver {
    /// A driver on `store` (claims), with `levels` for dynamic levels.
    pub fn new(
        cfg: BpfLsmConfig,
        store: Arc<Store>,
        levels: Option<Arc<LevelAllocator>>,
    ) -> Result<BpfLsmDriver, DriverError> {
        let fsroot = FsRoot::open(&cfg.root).map_err(|e| object_err("open", &cfg.root, e))?;
        Ok(BpfLsmDriver {
            records: Records::new(cfg.records.clone()),
            cfg,
            fsroot,
            store,
            levels,
            enforcer: Mutex::new(None),
            denials: Mutex::new(None),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Option<Enforcer>> {
        // A panic while holding it leaves the Option as it was: still usable.
        self.enforcer
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The enforcer, loaded (or taken over from the pins) on first use.
    fn enforcer(&self) -> Result<MutexGuard<'_, Option<Enforcer>>, DriverError> {
        let mut g = self.lock();
        if g.is_none() {
            ensure_bpffs(&self.cfg.bpffs)?;
            *g = Some(Enforcer::open(&self.cfg.pin_dir, self.cfg.programs).map_err(bpf_err)?);
            if self.cfg.programs == Programs::Enforce {
                let mut d = self
                    .denials
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                if d.is_none() {
                    *d = Some(DenialLog::start(
                        &self.cfg.pin_dir,
                        self.cfg.root.join("dev/kmsg"),
                    )?);
                }
            }
        }
        Ok(g)
    }

    /// The enforcer if one is open or pinned (a restore never loads the programs).
    fn existing_enforcer(&self) -> Result<MutexGuard<'_, Option<Enforcer>>, DriverError> {
        if self.lock().is_none() && !self.cfg.pin_dir.join("objects").exists() {
            return Ok(self.lock());
        }
        self.enforcer()
    }

    /// Labels `items` for `guest`: recorded durably first, then written to the map. On an
    /// error the labels this call added are removed again (nothing half-labeled).
    fn apply(&self, guest: &str, items: &[Item]) -> Result<(), DriverError> {
        if items.is_empty() {
            return Ok(());
        }
        let keys: Vec<InodeKey> = items.iter().map(|i| i.key).collect();
        self.records
            .add(guest, &keys)
            .map_err(|e| object_err("record the labels of", &self.cfg.records, e))?;
        let g = self.enforcer()?;
        let Some(e) = g.as_ref() else {
            return Err(other("the enforcer is not open"));
        };
        let mut added: Vec<InodeKey> = Vec::new();
        let result = (|| {
            for it in items {
                let label = match e.object(&it.key).map_err(bpf_err)? {
                    None => {
                        added.push(it.key);
                        it.label
                    }
                    Some(have) if have.cats == it.label.cats => ObjectLabel {
                        // Two guests' uses of one object (shared, read-only content): the
                        // object permits what either needs, as SELinux's last relabel would.
                        allow: have.allow | it.label.allow,
                        flags: have.flags | it.label.flags,
                        ..have
                    },
                    Some(have) => {
                        return Err(other(format!(
                            "{}: labeled {} for another guest, {} asked",
                            it.path.display(),
                            have.cats.to_level(),
                            it.label.cats.to_level()
                        )));
                    }
                };
                e.label(&it.key, &label).map_err(bpf_err)?;
            }
            Ok(())
        })();
        if result.is_err() {
            for k in &added {
                let _ = e.unlabel(k);
            }
        }
        result
    }

    /// Removes `guest`'s labels (those no other guest's record holds) and its record;
    /// unpins everything once no guest has a record. Runs to the end; returns every error.
    fn remove_guest(&self, guest: &str) -> Vec<DriverError> {
        let mut errs = Vec::new();
        let keys = match self.records.keys(guest) {
            Ok(k) => k,
            Err(e) => return vec![object_err("read the record of", &self.cfg.records, e)],
        };
        if !keys.is_empty() {
            let others: BTreeSet<InodeKey> = match self.records.held_by_others(guest) {
                Ok(o) => o,
                Err(e) => return vec![object_err("read the records in", &self.cfg.records, e)],
            };
            match self.existing_enforcer() {
                Ok(g) => {
                    if let Some(e) = g.as_ref() {
                        for k in keys.iter().filter(|k| !others.contains(k)) {
                            if let Err(err) = e.unlabel(k) {
                                errs.push(bpf_err(err));
                            }
                        }
                    }
                }
                Err(e) => errs.push(e),
            }
        }
        if errs.is_empty()
            && let Err(e) = self.records.remove(guest)
        {
            errs.push(object_err("remove the record of", &self.cfg.records, e));
        }
        if let Err(e) = crate::stack::release_claims(&self.store, MODEL, guest) {
            errs.push(e);
        }
        errs.extend(self.unpin_if_unused());
        errs
    }

    /// Once no guest has a record: the programs and maps go.
    fn unpin_if_unused(&self) -> Option<DriverError> {
        match self.records.guests() {
            Ok(g) if g.is_empty() => {}
            Ok(_) => return None,
            Err(e) => return Some(object_err("list", &self.cfg.records, e)),
        }
        // The log thread first: it holds the ring buffer.
        drop(
            self.denials
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .take(),
        );
        let mut g = self.lock();
        let e = match g.take() {
            Some(e) => e,
            None if self.cfg.pin_dir.join("objects").exists() => {
                match Enforcer::open(&self.cfg.pin_dir, Programs::MapsOnly) {
                    Ok(e) => e,
                    Err(err) => return Some(bpf_err(err)),
                }
            }
            None => return None,
        };
        let r = e.unpin().err().map(bpf_err);
        // The instances' common directory goes with the last instance (it fails while
        // another svirtd's pins are there, as it should).
        if let Some(parent) = self.cfg.pin_dir.parent()
            && parent != self.cfg.bpffs
        {
            let _ = std::fs::remove_dir(parent);
        }
        r
    }

    /// Opens a host path the VMM needs: system paths may be reached through root-owned
    /// links (merged /usr), so the path is resolved first.
    fn open_need(&self, path: &Path) -> Result<Option<(PathBuf, InodeKey, bool)>, DriverError> {
        let host = self.cfg.root.join(path.strip_prefix("/").unwrap_or(path));
        let real = match std::fs::canonicalize(&host) {
            Ok(p) => p,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(object_err("resolve", path, e)),
        };
        let abs = Path::new("/").join(real.strip_prefix(&self.cfg.root).unwrap_or(&real));
        let obj = match self.fsroot.open_object(&abs) {
            Ok(o) => o,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(object_err("open", path, e)),
        };
        let id = obj.identity();
        Ok(Some((
            abs,
            InodeKey::from_stat(id.dev, id.ino),
            obj.meta().is_dir(),
        )))
    }

    fn need(
        &self,
        out: &mut Vec<Item>,
        path: &Path,
        cats: Cats,
        allow: Allow,
    ) -> Result<(), DriverError> {
        if let Some((path, key, dir)) = self.open_need(path)? {
            out.push(Item {
                path,
                key,
                label: ObjectLabel::new(cats, allow, dir),
            });
        }
        Ok(())
    }
}

/// Mounts a bpffs on `dir` unless one is there (the programs are pinned beneath it).
fn ensure_bpffs(dir: &Path) -> Result<(), DriverError> {
    std::fs::create_dir_all(dir).map_err(|e| object_err("create", dir, e))?;
    let st = rustix::fs::statfs(dir).map_err(|e| object_err("statfs", dir, e.into()))?;
    if st.f_type as i64 == BPF_FS_MAGIC {
        return Ok(());
    }
    let target = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes())
        .map_err(|e| object_err("mount a bpffs on", dir, io::Error::other(e)))?;
    // SAFETY: mount(2) with NUL-terminated strings that outlive the call.
    let r = unsafe {
        libc::mount(
            c"bpf".as_ptr(),
            target.as_ptr(),
            c"bpf".as_ptr(),
            libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
            c"mode=0700".as_ptr().cast(),
        )
    };
    if r != 0 {
        return Err(object_err(
            "mount a bpffs on",
            dir,
            io::Error::last_os_error(),
        ));
    }
    Ok(())
}

fn guest_level(guest: &GuestSecurity) -> Result<MlsRange, DriverError> {
    guest
        .level
        .ok_or_else(|| other(format!("guest {} has no level", guest.name)))
}

impl SecurityDriver for BpfLsmDriver {
    fn model(&self) -> Model {
        MODEL
    }

    fn probe(&self) -> ProbeReport {
        let (usable, reason) = super::host::usable(&self.cfg.root);
        ProbeReport {
            model: MODEL,
            usable,
            reason,
        }
    }

    fn reserve(&self, plan: &Plan, guest: &mut GuestSecurity) -> Result<(), DriverError> {
        if !plan.is_confined(MODEL) {
            return Ok(());
        }
        if plan.level == LevelSource::None {
            return Err(other("BPF-LSM needs a level, and the plan has none"));
        }
        crate::mcs_level::reserve(MODEL, self.levels.as_deref(), plan.level, guest)
    }

    fn release(&self, guest: &GuestSecurity) -> Result<(), DriverError> {
        crate::mcs_level::release(MODEL, self.levels.as_deref(), guest)
    }

    fn set_all(&self, plan: &Plan, guest: &GuestSecurity) -> Result<(), DriverError> {
        if !plan.is_confined(MODEL) {
            return Ok(());
        }
        let level = guest_level(guest)?;
        // Before any label: one guest per private read-write object (the claim table all
        // object-changing models share).
        crate::stack::claim_plan(&self.store, &self.fsroot, MODEL, plan)?;
        let mut items = Vec::new();
        for pr in &plan.resources {
            let obj = match self.fsroot.open_planned(
                &pr.resource.path,
                pr.resource.identity.map(|i| (i.dev, i.ino)),
            ) {
                Ok(o) => o,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(object_err("open", &pr.resource.path, e)),
            };
            let Some(label) = object_label(pr, &level, obj.meta().is_dir()) else {
                continue;
            };
            let id = obj.identity();
            items.push(Item {
                path: pr.resource.path.clone(),
                key: InodeKey::from_stat(id.dev, id.ino),
                label,
            });
        }
        let r = self.apply(&plan.name, &items);
        if r.is_err() {
            let _ = self.remove_guest(&plan.name);
        }
        r
    }

    fn restore_all(&self, plan: &Plan, guest: &GuestSecurity) -> Vec<DriverError> {
        let _ = plan;
        self.remove_guest(&guest.name)
    }

    fn child_hooks(
        &self,
        plan: &Plan,
        guest: &GuestSecurity,
        exec: &ExecContext,
    ) -> Result<Vec<ChildHook>, DriverError> {
        if !plan.is_confined(MODEL) {
            return Ok(Vec::new());
        }
        let level = guest_level(guest)?;
        let mine = Cats::of(&level.high);
        let s0 = Cats::default();
        let mut items = Vec::new();
        let needs = &self.cfg.needs;
        for p in &needs.exec_paths {
            self.need(&mut items, p, s0, Allow::READ_EXEC)?;
        }
        for p in &needs.read_paths {
            self.need(&mut items, p, s0, Allow::READ_ONLY)?;
        }
        for p in needs.base_devices.iter().chain(&exec.devices) {
            self.need(&mut items, p, s0, Allow::READ_WRITE)?;
        }
        self.need(&mut items, &exec.emulator, s0, Allow::READ_EXEC)?;
        self.need(&mut items, &exec.runtime_dir, mine, Allow::READ_WRITE)?;
        self.apply(&plan.name, &items)?;
        let g = self.enforcer()?;
        let e = g
            .as_ref()
            .ok_or_else(|| other("the enforcer is not open"))?;
        let mut hook = SubjectHook::new(e, SubjectLabel::new(mine)).map_err(bpf_err)?;
        Ok(vec![Box::new(move || hook.apply())])
    }

    fn process_label(&self, pid: i32) -> Result<Option<String>, DriverError> {
        let g = self.lock();
        let Some(e) = g.as_ref() else {
            return Ok(None);
        };
        // SAFETY: pidfd_open returns a new fd or -1.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
        if fd < 0 {
            return Ok(None);
        }
        // SAFETY: a fresh fd we own.
        let pidfd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
        Ok(e.subject(pidfd.as_fd())
            .map_err(bpf_err)?
            .map(|s| s.cats.to_level().to_string()))
    }

    fn recover(&self, running: &dyn Fn(&str) -> bool) -> Vec<RecoveryNote> {
        let mut notes = Vec::new();
        let guests = match self.records.guests() {
            Ok(g) => g,
            Err(e) => {
                return vec![RecoveryNote {
                    guest: None,
                    what: format!("BPF-LSM records: {e}"),
                    failed: true,
                }];
            }
        };
        for g in guests.into_iter().filter(|g| !running(g)) {
            let errs = self.remove_guest(&g);
            notes.push(RecoveryNote {
                guest: Some(g.clone()),
                what: if errs.is_empty() {
                    "BPF-LSM labels of a guest that is not running removed".into()
                } else {
                    errs.iter()
                        .map(|e| e.to_string())
                        .collect::<Vec<_>>()
                        .join("; ")
                },
                failed: !errs.is_empty(),
            });
        }
        for e in crate::stack::recover_claims(&self.store, MODEL, running) {
            notes.push(RecoveryNote {
                guest: None,
                what: e.to_string(),
                failed: true,
            });
        }
        if let Some(e) = self.unpin_if_unused() {
            notes.push(RecoveryNote {
                guest: None,
                what: e.to_string(),
                failed: true,
            });
        }
        // Guests still run under the pinned programs: take them over now, so their
        // denials are logged and their labels shown from the start.
        if self.cfg.programs == Programs::Enforce
            && self.cfg.pin_dir.join("objects").exists()
            && let Err(e) = self.enforcer()
        {
            notes.push(RecoveryNote {
                guest: None,
                what: format!("taking over the pinned BPF-LSM programs: {e}"),
                failed: true,
            });
        }
        notes
    }

    fn held_for(&self, owner: &str) -> Option<String> {
        crate::mcs_level::held_for(&self.store, owner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    #[test]
    fn denial_lines_are_rate_limited_and_the_drop_is_counted() {
        let mut r = RateLimit::new(3);
        let t = Instant::now();
        let admitted = (0..10)
            .filter(|_| matches!(r.admit(t), Admit::Yes { .. }))
            .count();
        assert_eq!(admitted, 3);
        // The next second lets lines through again, the first saying how many went.
        match r.admit(t + Duration::from_millis(1000)) {
            Admit::Yes { suppressed } => assert_eq!(suppressed, 7),
            Admit::No => panic!("a new second must admit"),
        }
        assert!(matches!(
            r.admit(t + Duration::from_millis(1001)),
            Admit::Yes { suppressed: 0 }
        ));
    }
}
