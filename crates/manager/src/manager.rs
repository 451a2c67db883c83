//! The manager proper: start, stop, supervision and recovery.

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::Value;
use svirt_domain::Model;
use svirt_drivers::{ExecContext, GuestSecurity, SecurityDriver};
use svirt_store::Store;

use crate::StartOptions;
use crate::cgroup::{self, GuestCgroup, Layout};
use crate::config::Config;
use crate::error::{ManagerError, Result};
use crate::fault::Fault;
use crate::jail::Jail;
use crate::namespaces::NamespacePool;
use crate::process::{self, SpawnRequest};
use crate::qemu::{self, LaunchOptions};
use crate::qmp::Qmp;
use crate::record::{Intent, Phase, Record};
use crate::types::*;

/// How long a start waits for QMP to answer.
const QMP_START_TIMEOUT: Duration = Duration::from_secs(60);

pub(crate) fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// One guest in memory.
pub(crate) struct Slot {
    pub(crate) state: Mutex<SlotState>,
    pub(crate) cv: Condvar,
    /// Serialises QMP conversations (QEMU's monitor takes one client at a time).
    pub(crate) qmp: Mutex<()>,
}

impl Slot {
    /// A guest slot holding `record`; `pidfd` while QEMU runs, `child` when we forked it.
    pub(crate) fn new(record: Record, pidfd: Option<OwnedFd>, child: bool) -> Arc<Slot> {
        Arc::new(Slot {
            state: Mutex::new(SlotState {
                record,
                pidfd: pidfd.map(Arc::new),
                child,
                finishing: false,
                dirty: false,
            }),
            cv: Condvar::new(),
            qmp: Mutex::new(()),
        })
    }
}

pub(crate) struct SlotState {
    pub(crate) record: Record,
    /// Set while QEMU runs and the supervisor watches it.
    pub(crate) pidfd: Option<Arc<OwnedFd>>,
    /// Whether QEMU is our child (we reap it) or was reattached (init reaps it).
    pub(crate) child: bool,
    /// The supervisor is cleaning up after the exit.
    pub(crate) finishing: bool,
    /// The record changed in memory and the supervisor must write it.
    pub(crate) dirty: bool,
}

pub(crate) struct Inner {
    pub(crate) config: Config,
    pub(crate) report: OpenReport,
    pub(crate) store: Arc<Store>,
    /// The drivers, in stack order: the only way the manager reaches them.
    pub(crate) stack: svirt_drivers::stack::Stack,
    pub(crate) layout: Layout,
    pub(crate) qemu: PathBuf,
    pub(crate) accel: String,
    pub(crate) fault: Fault,
    pub(crate) guests: Mutex<HashMap<String, Arc<Slot>>>,
    pub(crate) wake_rd: OwnedFd,
    pub(crate) wake_wr: OwnedFd,
    pub(crate) stopping: AtomicBool,
    /// Cleanups running after QEMU exits, one thread per guest (joined when the manager
    /// closes, so the store is not closed under them).
    pub(crate) cleanups: Mutex<Vec<std::thread::JoinHandle<()>>>,
    /// Tree operations in flight, for progress reports.
    pub(crate) progress: Arc<crate::progress::Board>,
    /// Names whose stored record could not be read at open: their guest may still run, so
    /// no start may take the name (it would overwrite the record and reuse the name's
    /// reservations).
    pub(crate) unreadable: std::collections::HashSet<String>,
    /// Spare network and IPC namespaces for the jails.
    pub(crate) namespaces: Arc<NamespacePool>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding a guest lock must not wedge every later call.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn store_err(e: svirt_store::Error) -> ManagerError {
    ManagerError::Store(e)
}

/// A failed step of the whole stack: its cause, the rollback's errors logged.
fn stack_err(e: svirt_drivers::stack::StackError) -> ManagerError {
    for err in &e.rollback {
        tracing::error!(error = %err, "rolling back the drivers before the failing one");
    }
    ManagerError::Driver(e.cause)
}

impl Inner {
    pub(crate) fn persist(&self, r: &Record) -> Result<()> {
        self.store
            .put_guest(&r.name, r.state.as_str(), &r.to_bytes())
            .map_err(store_err)
    }

    /// [`Self::persist`] without an fsync (see [`svirt_store::Store::put_guest_deferred`]).
    pub(crate) fn persist_deferred(&self, r: &Record) -> Result<()> {
        self.store
            .put_guest_deferred(&r.name, r.state.as_str(), &r.to_bytes())
            .map_err(store_err)
    }

    pub(crate) fn wake(&self) {
        let _ = rustix::io::write(&self.wake_wr, b"w");
    }

    pub(crate) fn models(&self) -> Vec<Model> {
        self.stack.drivers().iter().map(|d| d.model()).collect()
    }

    /// `<run>/guests/<name>`: the guest's own directory (its QEMU's working directory and
    /// HOME, owned by its uid). The manager never follows a path inside it: the guest can
    /// create, rename and replace entries there at will.
    pub(crate) fn runtime_dir(&self, name: &str) -> PathBuf {
        self.config.run_dir.join(GUESTS_DIR).join(name)
    }

    /// `<run>/ctl/<name>`: the guest's control directory, root's, 0700, inside the root-only
    /// `<run>/ctl`. Everything the manager itself reads or connects to by path lives here
    /// (QMP socket, QEMU's log, the pid file), where the guest can neither reach nor
    /// replace an entry. QEMU gets these objects as file descriptors, never by path.
    pub(crate) fn control_dir(&self, name: &str) -> PathBuf {
        self.config.run_dir.join(CONTROL_DIR).join(name)
    }

    /// `<run>/ctl/<name>/pid`: written by the child before exec, so a QEMU forked
    /// before its pid is recorded can be found after a crash. One directory per guest:
    /// no guest name can make two guests' files collide (`x.pid` and `x`).
    pub(crate) fn pid_file(&self, name: &str) -> PathBuf {
        self.control_dir(name).join("pid")
    }

    pub(crate) fn slot(&self, name: &str) -> Result<Arc<Slot>> {
        lock(&self.guests)
            .get(name)
            .cloned()
            .ok_or_else(|| ManagerError::NoSuchGuest(name.to_string()))
    }

    // ---------------------------------------------------------------- start

    pub(crate) fn start(self: &Arc<Self>, xml: &str, opts: StartOptions) -> Result<GuestInfo> {
        let (domain, plan, created) = crate::glue::parse_and_plan(self, xml)?;
        let early = (|| {
            let spec = crate::glue::vm_spec(&domain)?;
            self.fault.point("after-plan")?;
            validate_name(&plan.name)?;
            Ok(spec)
        })();
        let spec = match early {
            Ok(s) => s,
            Err(e) => {
                crate::glue::remove_created(&created);
                return Err(e);
            }
        };
        let name = plan.name.clone();
        let runtime_dir = self.runtime_dir(&name);
        let mut record = Record {
            name: name.clone(),
            uuid: plan.uuid.clone(),
            xml: xml.to_string(),
            plan,
            spec,
            state: GuestState::Starting,
            phase: Phase::Recorded,
            models: self.models(),
            level: None,
            ids: None,
            pid: None,
            start_time: None,
            spawn_floor: None,
            qmp_socket: self.control_dir(&name).join("qmp.sock"),
            runtime_dir,
            cgroups: self.layout.guest_dirs(&self.config.cgroup_parent, &name),
            accel: self.accel.clone(),
            argv: Vec::new(),
            intent: None,
            exit: None,
            previous: None,
            leftovers: None,
        };
        // Claim the name: one start per name at a time.
        let slot = {
            let mut g = lock(&self.guests);
            if self.unreadable.contains(&name) {
                tracing::warn!(guest = %name, "start refused: the stored record of this name cannot be read (see the open report)");
                crate::glue::remove_created(&created);
                return Err(ManagerError::GuestExists(name));
            }
            // One uuid, one live guest (libvirt refuses the same): QEMU's -uuid, the SMBIOS
            // system uuid and everything keyed by it must not be shared. Recovered guests
            // are in the map too, so this holds across restarts of the manager.
            let uuid = normalize_uuid(&record.uuid);
            for (other, s) in g.iter() {
                if *other == name {
                    continue;
                }
                let st = lock(&s.state);
                if st.record.state.is_active() && normalize_uuid(&st.record.uuid) == uuid {
                    crate::glue::remove_created(&created);
                    return Err(ManagerError::Domain(format!(
                        "uuid {}: already used by guest {other:?} ({}); two live guests cannot share a uuid",
                        record.uuid, st.record.state
                    )));
                }
            }
            if let Some(s) = g.get(&name) {
                let st = lock(&s.state);
                if st.record.state.is_active() {
                    crate::glue::remove_created(&created);
                    return Err(ManagerError::GuestExists(name));
                }
                // The shut-off record this start replaces rides along until the guest is
                // up, so that a failed or interrupted start puts it back (`list --all`
                // keeps the guest, with the failure as its exit).
                let mut earlier = st.record.clone();
                earlier.previous = None;
                record.previous = Some(Box::new(earlier));
            }
            let slot = Slot::new(record.clone(), None, true);
            g.insert(name.clone(), slot.clone());
            slot
        };
        let mut rec = record;
        match self.start_steps(&mut rec, opts) {
            Ok(pidfd) => {
                let mut st = lock(&slot.state);
                st.record = rec;
                st.pidfd = Some(Arc::new(pidfd));
                st.dirty = true;
                drop(st);
                self.wake();
                self.info_of(&slot)
            }
            Err(e) => {
                tracing::warn!(guest = %name, error = %e, phase = ?rec.phase, "start failed: rolling back");
                let errors = self.undo(&rec, None);
                crate::glue::remove_created(&created);
                let exit = ExitInfo::now(
                    ExitReason::StartFailed {
                        message: e.to_string(),
                    },
                    errors.clone(),
                );
                self.settle_failed_start(&slot, rec.previous.take().map(|b| *b), exit);
                if errors.is_empty() {
                    Err(e)
                } else {
                    Err(ManagerError::Restore {
                        name,
                        errors: std::iter::once(format!("start failed: {e}"))
                            .chain(errors)
                            .collect(),
                    })
                }
            }
        }
    }

    /// After a failed start has been undone: the guest's earlier shut-off record, if the
    /// start replaced one, is put back with the failure as its exit; else the guest is
    /// forgotten (a first start leaves nothing). Waiters get `exit` either way.
    fn settle_failed_start(&self, slot: &Arc<Slot>, earlier: Option<Record>, exit: ExitInfo) {
        let name = lock(&slot.state).record.name.clone();
        match earlier {
            Some(mut earlier) => {
                earlier.exit = Some(exit);
                let mut st = lock(&slot.state);
                self.write_or_log(&mut st, earlier);
            }
            None => {
                if let Err(e) = self.store.delete_guest(&name) {
                    tracing::error!(guest = %name, error = %e, "deleting the record of a failed start");
                }
                let mut g = lock(&self.guests);
                let mut st = lock(&slot.state);
                st.record.state = GuestState::ShutOff;
                st.record.exit = Some(exit);
                if g.get(&name).is_some_and(|s| Arc::ptr_eq(s, slot)) {
                    g.remove(&name);
                }
            }
        }
        slot.cv.notify_all();
    }

    /// Every start step after planning. On error `rec.phase` says how far it got; the
    /// caller undoes that much.
    fn start_steps(&self, rec: &mut Record, opts: StartOptions) -> Result<OwnedFd> {
        // Durable writes on the start path are few on purpose (each is a redb commit with
        // fsyncs): the drivers' originals (one batch per driver; the first also makes the
        // reservations, the claims and the `Labeling` record durable, all committed
        // without an fsync before it), and pid + start time while QEMU initialises. A
        // crash before the first leaves at most reservations, a runtime dir and a cgroup
        // without a record, which `open` releases and removes; a crash later is rolled
        // back or reattached by `open` (a QEMU forked before its pid was recorded is found
        // through the pid file its child wrote).
        self.fault.point("after-record")?;
        let mut sec = GuestSecurity {
            name: rec.name.clone(),
            level: None,
            ids: None,
        };
        // On failure the stack has released what the earlier drivers reserved.
        self.stack.reserve(&rec.plan, &mut sec).map_err(stack_err)?;
        rec.level = sec.level.map(|l| l.to_string());
        rec.ids = sec.ids;
        rec.phase = Phase::Reserved;
        self.fault.point("after-reserve")?;

        // The cgroup depends on nothing that follows: make it while the record is
        // written and the drivers label (undo removes it whatever happens here).
        let cg_thread = {
            let (layout, parent, name) = (
                self.layout.clone(),
                self.config.cgroup_parent.clone(),
                rec.name.clone(),
            );
            let memory = rec.spec.memory_kib.saturating_mul(1024) + self.config.memory_overhead;
            let pids = self.config.pids_limit;
            std::thread::spawn(move || GuestCgroup::create(&layout, &parent, &name, memory, pids))
        };
        let devices = if rec.accel == "kvm" {
            vec![PathBuf::from("/dev/kvm")]
        } else {
            Vec::new()
        };
        let prepared = (|| -> Result<(PathBuf, File, UnixListener, File, Option<Jail>)> {
            // The spawn floor is taken here: whatever this start forks begins later.
            rec.spawn_floor = Some(
                process::spawn_floor()
                    .map_err(|e| ManagerError::Qemu(format!("read boot time: {e}")))?,
            );
            rec.phase = Phase::Labeling;
            let rec: &Record = rec;
            // The jail shows objects by inode, so it is built beside the record, the
            // runtime directory and the labels, on a thread of its own: it opens every
            // object now and binds the runtime directory once it exists.
            std::thread::scope(|s| {
                let (made_tx, made_rx) = std::sync::mpsc::channel::<()>();
                let jail = std::thread::Builder::new()
                    .name("svirt-jail-prep".into())
                    .spawn_scoped(s, || self.build_jail(rec, &devices, made_rx))
                    .map_err(|e| ManagerError::Qemu(format!("jail: start its thread: {e}")))?;
                let files = (move || {
                    // Runtime directory: root's until the reservation is durable, and
                    // made first, so the jail can bind it at once.
                    make_private_dir(&rec.runtime_dir)?;
                    let _ = made_tx.send(());
                    self.persist_deferred(rec)?;
                    self.fault.point("after-record-deferred")?;
                    self.label_and_create_files(rec)
                })();
                let jail = jail
                    .join()
                    .unwrap_or_else(|_| Err(ManagerError::Qemu("jail thread panicked".into())));
                let (log_path, log, listener, pid_file) = files?;
                Ok((log_path, log, listener, pid_file, jail?))
            })
        })();
        let cg = cg_thread
            .join()
            .unwrap_or_else(|_| Err(ManagerError::Qemu("cgroup thread panicked".into())));
        let (log_path, log, listener, pid_file, jail) = prepared?;
        let cg = cg?;
        let sec = rec.security();
        rec.phase = Phase::Cgroup;
        self.fault.point("after-cgroup")?;

        let exec = ExecContext {
            emulator: self.qemu.clone(),
            runtime_dir: rec.runtime_dir.clone(),
            devices,
            tcp_ports: tcp_ports(&rec.spec),
        };
        let (pre_jail, hooks) = self.stack.child_hooks_phased(&rec.plan, &sec, &exec)?;
        let host_sockets = crate::glue::host_sockets(&rec.spec, jail.is_some())?;
        let args = qemu::command_line(
            &rec.spec,
            &LaunchOptions {
                accel: rec.accel.clone(),
                paused: opts.paused,
                qmp_fd: listener.as_raw_fd(),
                sandbox: true,
                chardev_fds: host_sockets
                    .iter()
                    .map(|(i, fd)| (*i, fd.as_raw_fd()))
                    .collect(),
            },
        );
        rec.argv = std::iter::once(self.qemu.to_string_lossy().into_owned())
            .chain(args.iter().cloned())
            .collect();
        rec.phase = Phase::Spawning;
        let spawned = process::spawn(SpawnRequest {
            binary: &self.qemu,
            args: &args,
            runtime_dir: &rec.runtime_dir,
            log,
            keep_fds: std::iter::once(listener.as_raw_fd())
                .chain(host_sockets.iter().map(|(_, fd)| fd.as_raw_fd()))
                .collect(),
            pid_fd: pid_file.as_raw_fd(),
            pre_jail_hooks: pre_jail,
            jail,
            hooks,
        })?;
        drop(host_sockets);
        drop(pid_file);
        let pidfd = spawned.pidfd;
        // QEMU holds the listener now; ours must go, or a dead QEMU would leave connects
        // hanging on our copy.
        drop(listener);
        rec.pid = Some(spawned.pid);
        rec.start_time = Some(spawned.start_time);
        if let Err(e) = self.fault.point("after-fork") {
            let _ = kill_and_reap(&pidfd);
            return Err(e);
        }
        // The cgroup join runs beside the durable pid record and QEMU's own start-up
        // (it waits for an RCU grace period in the kernel). Until it lands, QEMU's first
        // allocations are charged to the manager's group: start-up memory, not guest RAM.
        let pid = spawned.pid;
        let mut join = Some(std::thread::spawn(move || cg.join(pid)));
        let checked = (|| {
            // Durable while QEMU initialises: from here a crash reattaches the guest (and
            // recovery joins it to its cgroup again, in case this crash beat the join).
            rec.phase = Phase::Spawned;
            self.persist(rec)?;
            // The pid is recorded: the pid file has done its job.
            let _ = fs::remove_file(self.pid_file(&rec.name));
            self.fault.point("after-spawn")?;
            let mut q = wait_qmp(&rec.qmp_socket, &pidfd, QMP_START_TIMEOUT).map_err(|e| {
                ManagerError::Qemu(format!("{e}; QEMU log: {}", log_tail(&log_path, 600)))
            })?;
            let st = q.execute("query-status", None)?;
            let running = st.get("running").and_then(Value::as_bool).unwrap_or(false);
            if let Some(j) = join.take() {
                j.join().unwrap_or_else(|_| {
                    Err(ManagerError::Qemu("cgroup join thread panicked".into()))
                })?;
            }
            self.fault.point("after-qmp")?;
            // Not written here: the supervisor persists it off the start path (a
            // crash before that reattaches through the `Spawned` record anyway).
            rec.phase = Phase::Up;
            rec.previous = None;
            rec.state = if running {
                GuestState::Running
            } else {
                GuestState::Paused
            };
            Ok(())
        })();
        if let Err(e) = checked {
            let _ = kill_and_reap(&pidfd);
            // Finished before undo removes the groups (the attach of a dead pid fails).
            if let Some(j) = join {
                let _ = j.join();
            }
            return Err(e);
        }
        // The next start's network namespace is made now that this QEMU is up (made while
        // it initialised, it would take CPU from it on a small host).
        if !self.stack.is_empty() {
            self.namespaces.refill();
        }
        tracing::info!(guest = %rec.name, pid = spawned.pid, state = %rec.state, "guest started");
        Ok(pidfd)
    }

    /// The drivers' labels, then the manager's files for the VMM: the runtime directory
    /// given to the guest, and in the control directory (root's; the manager's files go
    /// there, never into the directory the guest can write) log, QMP listener, pid file.
    ///
    /// Durability: the record (`Labeling`), the drivers' reservations and their claims
    /// were committed without an fsync. Every driver records an object's original durably,
    /// in the same store, before it changes the object: that commit makes them durable too,
    /// before anything uses the uid or level. Trees are the exception (their entries are
    /// recorded in the drivers' tree databases), so a plan with a tree syncs the store
    /// first; a start that labels nothing syncs after. From this point on (runtime dir
    /// chowned, files created with the guest's labels, QEMU forked and found again through
    /// its pid file after a crash) the record is on disk. A crash before loses
    /// reservations and a record nothing used.
    fn label_and_create_files(&self, rec: &Record) -> Result<(PathBuf, File, UnixListener, File)> {
        if rec.plan.resources.iter().any(|r| r.resource.recursive) {
            self.store.sync_if_pending().map_err(store_err)?;
        }
        self.set_labels(&rec.plan, &rec.security())?;
        self.store.sync_if_pending().map_err(store_err)?;
        own_runtime_dir(&rec.runtime_dir, rec.ids)?;
        let ctl = self.control_dir(&rec.name);
        make_private_dir(&ctl)?;
        // Labels the VMM needs on them (SELinux: the QMP listener with the VMM's process
        // label, the log with the guest's image label, as libvirt does with
        // setsockcreatecon and setfscreatecon; proven under an enforcing kernel by the lab).
        let labels = self.stack.create_labels(&rec.plan, &rec.security())?;
        let (sock_label, file_label) = (labels.socket, labels.file);
        let log_path = ctl.join("qemu.log");
        let log = crate::glue::with_create_label("fscreate", file_label.as_deref(), || {
            OpenOptions::new()
                .create(true)
                .append(true)
                .mode(0o600)
                .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
                .open(&log_path)
        })
        .map_err(|e| ManagerError::io("create", &log_path, e))?;
        let listener = crate::glue::with_create_label("sockcreate", sock_label.as_deref(), || {
            UnixListener::bind(&rec.qmp_socket)
        })
        .map_err(|e| ManagerError::io("bind QMP socket", &rec.qmp_socket, e))?;
        // Bound with the umask's mode; root's alone like everything in the control dir
        // (QEMU holds the listener itself and never needs the path).
        fs::set_permissions(&rec.qmp_socket, fs::Permissions::from_mode(0o600))
            .map_err(|e| ManagerError::io("chmod 0600", &rec.qmp_socket, e))?;
        // In the control dir (the guest's uid cannot reach it): only root writes it.
        let pid_path = self.pid_file(&rec.name);
        let pid_file = OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&pid_path)
            .map_err(|e| ManagerError::io("create", &pid_path, e))?;
        // A driver may have made its database just now (the tree databases are made
        // at the first share), with the process umask: root's alone, like the rest.
        // (The state dir is 0700: nobody else could open it meanwhile.)
        crate::config::restrict_tree(&self.config.state_dir)?;
        self.fault.point("after-label")?;
        Ok((log_path, log, listener, pid_file))
    }

    /// The VMM's jail, built: `None` without drivers (`--drivers none`: QEMU runs as root
    /// with every capability, which could leave any namespace; such a guest is unconfined
    /// on purpose, jail included).
    ///
    /// Every object is opened at once; the runtime directory is bound once `made` says it
    /// exists (a start that fails before drops the sender: nothing is built then).
    fn build_jail(
        &self,
        rec: &Record,
        devices: &[PathBuf],
        made: std::sync::mpsc::Receiver<()>,
    ) -> Result<Option<Jail>> {
        if self.stack.is_empty() {
            return Ok(None);
        }
        let prepared = crate::jail::prepare(
            &crate::jail::JailConfig {
                // A model whose policy forbids the manager the jail's mounts (SELinux's)
                // confines the VMM's files with its labels instead.
                mount_namespace: self.stack.permits_mount_namespace(),
                ..crate::jail::JailConfig::default()
            },
            &rec.plan,
            &crate::jail::JailInputs {
                emulator: &self.qemu,
                devices,
                spelled: &crate::glue::spec_paths(&rec.spec),
            },
        )?;
        if made.recv().is_err() {
            return Ok(None);
        }
        let prepared = prepared.finish(&rec.runtime_dir)?;
        let ns = self.namespaces.take().map_err(|e| {
            ManagerError::Qemu(format!("jail: make a network and IPC namespace: {e}"))
        })?;
        Ok(Some(prepared.assemble(ns)?))
    }

    /// Sets every driver's labels in stack order; on failure the stack has undone the
    /// drivers before the failing one (the failing one restored its own changes).
    fn set_labels(&self, plan: &svirt_domain::Plan, sec: &GuestSecurity) -> Result<()> {
        let op = self.progress.begin(plan, crate::progress::Action::Labeling);
        self.stack
            .set_all_observed(plan, sec, &|model| {
                if let Some(op) = &op {
                    op.stage(model);
                }
            })
            .map_err(|e| {
                for err in &e.rollback {
                    tracing::error!(guest = %sec.name, error = %err, "restore after a failed set_all");
                }
                ManagerError::Driver(e.cause)
            })
    }

    /// Undoes everything a guest holds (QEMU must be gone, or is killed through its
    /// cgroup): labels restored, reservations released, cgroup and runtime files removed.
    /// Returns every error (it always runs to the end).
    pub(crate) fn undo(&self, rec: &Record, checkpoints: Option<&dyn Fn(&str)>) -> Vec<String> {
        let mut errors = Vec::new();
        self.undo_into(rec, checkpoints, &mut errors);
        errors
    }

    /// [`Inner::undo`], pushing each error to `errors` as it occurs (a caller that catches
    /// a panic keeps the errors gathered before it).
    pub(crate) fn undo_into(
        &self,
        rec: &Record,
        checkpoints: Option<&dyn Fn(&str)>,
        errors: &mut Vec<String>,
    ) {
        let dirs = if rec.cgroups.is_empty() {
            self.layout
                .guest_dirs(&self.config.cgroup_parent, &rec.name)
        } else {
            rec.cgroups.clone()
        };
        // A QEMU whose pid never got recorded is found through the pid file its child
        // wrote before exec (it may not have joined its cgroup yet), anything else it
        // started through the cgroup; labels must not be restored while they may still
        // be in use.
        if let Some(err) = self.kill_unrecorded(rec) {
            errors.push(err);
        }
        if !cgroup::kill_all(&dirs, Duration::from_secs(5)) {
            errors.push(format!("processes left in {}", dirs[0].display()));
        }
        let sec = self.security_for_undo(rec);
        // Per driver: whether its restore failed (its objects may still carry the guest's
        // identity, so that identity must stay reserved).
        let drivers = self.stack.drivers();
        let mut failed = vec![false; drivers.len()];
        if rec.phase >= Phase::Labeling {
            let op = self
                .progress
                .begin(&rec.plan, crate::progress::Action::Restoring);
            for (i, d) in drivers.iter().enumerate().rev() {
                if let Some(op) = &op {
                    op.stage(d.model());
                }
                let errs = d.restore_all(&rec.plan, &sec);
                failed[i] = !errs.is_empty();
                errors.extend(errs.into_iter().map(|e| e.to_string()));
            }
        }
        if let Some(cp) = checkpoints {
            cp("after-restore");
        }
        for (i, d) in drivers.iter().enumerate().rev() {
            if failed[i] {
                errors.extend(self.kept_reserved(d.as_ref(), &sec));
            } else {
                errors.extend(self.release_owner(d.as_ref(), &sec));
            }
        }
        if let Some(cp) = checkpoints {
            cp("after-release");
        }
        if let Err(e) = cgroup::remove_dirs(&dirs, Duration::from_secs(3)) {
            errors.push(e.to_string());
        }
        if let Err(e) = remove_tree(&rec.runtime_dir) {
            errors.push(format!("remove {}: {e}", rec.runtime_dir.display()));
        }
        let ctl = self.control_dir(&rec.name);
        if let Err(e) = remove_tree(&ctl) {
            errors.push(format!("remove {}: {e}", ctl.display()));
        }
    }

    /// Releases what `d` holds for the guest `sec` names (see
    /// [`SecurityDriver::release_owner`]). Returns the errors.
    pub(crate) fn release_owner(&self, d: &dyn SecurityDriver, sec: &GuestSecurity) -> Vec<String> {
        d.release_owner(sec)
            .into_iter()
            .map(|e| e.to_string())
            .collect()
    }

    /// The error reported for a driver whose restore failed, whose reservation for the guest
    /// is then not released (`None` when the store holds none for the name: a static label). Objects whose restore failed still carry the guest's uid/gid or
    /// level (the driver keeps their records), so another guest drawing it could open them.
    /// The next open's sweep (an owner with reservations and no active guest) retries the
    /// restore and releases it only when that succeeds; a restart of the same name meanwhile
    /// gets the uid it still holds back (DAC), or a new level beside the kept one (SELinux).
    pub(crate) fn kept_reserved(
        &self,
        d: &dyn SecurityDriver,
        sec: &GuestSecurity,
    ) -> Option<String> {
        // What the store holds for the name (a static label holds nothing: nothing to say).
        let what = d.held_for(&sec.name)?;
        Some(format!(
            "{}: {what} kept reserved for {}: its restore failed, so objects may still carry it; the next open retries the restore and releases it when that succeeds",
            d.model(),
            sec.name
        ))
    }

    /// Kills the QEMU a start forked before recording its pid (crash between fork and the
    /// `Spawned` record), found through the pid file and verified (same boot, started
    /// after the record's spawn floor, `-name guest=<name>` in its argv, working directory
    /// the runtime dir). Removes the pid file. Returns an error message if it survives.
    pub(crate) fn kill_unrecorded(&self, rec: &Record) -> Option<String> {
        let path = self.pid_file(&rec.name);
        let found = rec.spawn_floor.as_ref().and_then(|floor| {
            process::find_unrecorded(&self.proc_root(), &path, &rec.name, &rec.runtime_dir, floor)
        });
        let _ = fs::remove_file(&path);
        let (pid, start) = found?;
        // Checked again once the pidfd pins the process: the pid cannot change owner now.
        let pidfd = process::pidfd_open(pid).ok()?;
        if !process::same_process(&self.proc_root(), pid, start) {
            return None;
        }
        tracing::warn!(guest = %rec.name, pid, "killing a QEMU forked before its pid was recorded");
        (!kill_and_reap(&pidfd))
            .then(|| format!("unrecorded QEMU {pid} of {} did not exit", rec.name))
    }

    pub(crate) fn proc_root(&self) -> PathBuf {
        let p = self.config.root_dir.join("proc");
        if p.join("self").exists() {
            p
        } else {
            PathBuf::from("/proc")
        }
    }

    /// The identity to release: the record's, completed from the store's reservations by
    /// owner (a crash may fall between a driver's commit and the record's).
    fn security_for_undo(&self, rec: &Record) -> GuestSecurity {
        let mut sec = rec.security();
        if sec.level.is_none()
            && let Ok(levels) = self.store.levels_of(&rec.name)
            && let Some(l) = levels.first()
        {
            sec.level = Some(svirt_labels::MlsRange::single(*l));
        }
        if sec.ids.is_none()
            && let Ok(ids) = self.store.id_reservations()
            && let Some((id, _)) = ids.iter().find(|(_, o)| *o == rec.name)
        {
            sec.ids = Some((*id, *id));
        }
        sec
    }

    // ---------------------------------------------------------------- stop

    pub(crate) fn stop(&self, name: &str, destroy: bool, timeout: Duration) -> Result<ExitInfo> {
        let slot = self.slot(name)?;
        let (pidfd, qmp_socket) = {
            let mut st = lock(&slot.state);
            let state = st.record.state;
            // Shut off (its exit stays in `info`) or still starting: nothing to stop.
            let Some(pidfd) = st.pidfd.clone() else {
                return Err(ManagerError::BadState {
                    name: name.into(),
                    state: state.to_string(),
                    op: if destroy { "destroy" } else { "shut down" },
                });
            };
            if st.finishing {
                // QEMU is gone and its cleanup runs: the exit is decided, the record is
                // the cleanup's to write. Wait for it.
                drop(st);
                return self.wait_cleanup(&slot, name);
            }
            // A stop under way keeps its intent: it is never downgraded (a shutdown
            // arriving during a destroy would turn `destroyed` into `shutdown`), only a
            // destroy escalates a shutdown. Any other second stop waits for the first,
            // within its own budget, and returns the same exit.
            match st.record.intent {
                Some(Intent::Shutdown) if destroy => {}
                Some(intent) => {
                    drop(st);
                    // The first destroy's SIGKILL may have failed (it returned that error
                    // after recording its intent): a destroy sends it again rather than
                    // only wait (pidfd_signal takes ESRCH, QEMU already gone, as done).
                    if destroy && intent == Intent::Destroy {
                        process::pidfd_signal(&pidfd, libc::SIGKILL)
                            .map_err(|e| ManagerError::Qemu(format!("kill {name}: {e}")))?;
                    }
                    let limit = if destroy {
                        self.config.kill_timeout
                    } else {
                        timeout.saturating_add(self.config.kill_timeout)
                    };
                    if !process::wait_exited(&pidfd, limit) {
                        return Err(ManagerError::Qemu(format!(
                            "{name}: QEMU did not exit within {limit:?} (a stop was already under way)"
                        )));
                    }
                    return self.wait_cleanup(&slot, name);
                }
                None => {}
            }
            let mut next = st.record.clone();
            next.intent = Some(if destroy {
                Intent::Destroy
            } else {
                Intent::Shutdown
            });
            next.state = GuestState::Stopping;
            self.write(&mut st, next)?;
            (pidfd, st.record.qmp_socket.clone())
        };
        // QEMU's exit is awaited on its pidfd, with the timeouts; the cleanup after it
        // (a restore of a large share can take minutes) is awaited apart, without one, so
        // a slow restore is never mistaken for a QEMU that does not die.
        if !destroy {
            // Without the guest's lock: a QEMU that accepts the connection but never greets
            // holds this conversation for its whole timeout, and the supervisor, `list`,
            // `info` and starts all take that lock.
            let asked = {
                let _q = lock(&slot.qmp);
                Qmp::connect(&qmp_socket, Duration::from_secs(5))
                    .and_then(|mut q| q.execute("system_powerdown", None))
            };
            match asked {
                Err(e) => {
                    tracing::warn!(guest = name, error = %e, "system_powerdown failed; killing")
                }
                Ok(_) if process::wait_exited(&pidfd, timeout) => {
                    return self.wait_cleanup(&slot, name);
                }
                Ok(_) => {}
            }
            let mut st = lock(&slot.state);
            // Not when a destroy has escalated the stop meanwhile (its intent stays).
            if !st.finishing && st.record.intent == Some(Intent::Shutdown) {
                let mut next = st.record.clone();
                next.intent = Some(Intent::ShutdownKilled);
                if let Err(e) = self.write(&mut st, next) {
                    tracing::error!(guest = name, error = %e, "writing the guest record");
                }
            }
        }
        self.fault.point("stop-signal")?;
        process::pidfd_signal(&pidfd, libc::SIGKILL)
            .map_err(|e| ManagerError::Qemu(format!("kill {name}: {e}")))?;
        let kill_timeout = self.config.kill_timeout;
        if !process::wait_exited(&pidfd, kill_timeout) {
            return Err(ManagerError::Qemu(format!(
                "{name}: QEMU did not exit within {kill_timeout:?} after SIGKILL"
            )));
        }
        drop(pidfd);
        self.wait_cleanup(&slot, name)
    }

    /// Waits, without a limit, for the cleanup after QEMU's exit to end (QEMU has exited:
    /// the supervisor cleans up), and returns the exit it recorded.
    fn wait_cleanup(&self, slot: &Slot, name: &str) -> Result<ExitInfo> {
        let mut st = lock(&slot.state);
        while st.record.state != GuestState::ShutOff {
            st = slot.cv.wait(st).unwrap_or_else(|p| p.into_inner());
        }
        st.record
            .exit
            .clone()
            .ok_or_else(|| ManagerError::Qemu(format!("{name}: shut off without an exit record")))
    }

    pub(crate) fn wait_exit(&self, slot: &Slot, timeout: Duration) -> Option<ExitInfo> {
        // Too large to add to the clock: no limit.
        let deadline = Instant::now().checked_add(timeout);
        let mut st = lock(&slot.state);
        loop {
            if st.record.state == GuestState::ShutOff {
                return st.record.exit.clone();
            }
            let Some(deadline) = deadline else {
                st = slot.cv.wait(st).unwrap_or_else(|p| p.into_inner());
                continue;
            };
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            st = slot
                .cv
                .wait_timeout(st, left)
                .map(|(g, _)| g)
                .unwrap_or_else(|p| p.into_inner().0);
        }
    }

    /// Runs the cleanup of a guest whose QEMU has exited (the supervisor has set
    /// `finishing` and reaped it) on a thread of its own: a long restore (a share of
    /// millions of files) must not hold up the reaping and cleanup of other guests. Runs it
    /// here when no thread can be made.
    pub(crate) fn spawn_cleanup(
        self: &Arc<Self>,
        slot: Arc<Slot>,
        status: Option<process::ExitStatus>,
    ) {
        let (inner, s) = (self.clone(), slot.clone());
        match std::thread::Builder::new()
            .name("svirt-cleanup".into())
            .spawn(move || inner.finish(&s, status))
        {
            Ok(h) => lock(&self.cleanups).push(h),
            Err(e) => {
                tracing::warn!(error = %e, "no thread for a guest's cleanup: running it on the supervisor");
                self.finish(&slot, status);
            }
        }
    }

    /// The cleanup after QEMU's exit (`status`, when it was our child). Every change of the
    /// record is made in memory and in the store together, under the slot lock: a
    /// concurrent `stop` sees `stopping` and waits for this cleanup, and no writer can
    /// overwrite another's update.
    ///
    /// A panic anywhere in it (a driver's bug, a fault injected with `<step>:panic`) must
    /// not leave the guest `stopping` with `finishing` set, which every later stop would
    /// wait on for ever (and on the inline path the supervisor would die with it): the
    /// guest is recorded shut off with the restore errors gathered so far plus the panic,
    /// and the next open's sweep restores and releases what it still holds (its
    /// reservations and recorded originals have no active owner any more).
    pub(crate) fn finish(&self, slot: &Arc<Slot>, status: Option<process::ExitStatus>) {
        let mut errors = Vec::new();
        let ended = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            self.finish_steps(slot, status, &mut errors)
        }));
        if let Err(p) = ended {
            errors.push(format!(
                "the cleanup panicked ({}); what the guest still holds is restored at the next open",
                panic_text(p.as_ref())
            ));
            self.finish_after_panic(slot, status, errors);
        }
    }

    /// [`Inner::finish`]'s work; restore errors go to `errors` as they occur, so a panic
    /// later loses none of them.
    fn finish_steps(
        &self,
        slot: &Arc<Slot>,
        status: Option<process::ExitStatus>,
        errors: &mut Vec<String>,
    ) {
        let rec = {
            let mut st = lock(&slot.state);
            let mut next = st.record.clone();
            next.state = GuestState::Stopping;
            self.write_or_log(&mut st, next);
            st.record.clone()
        };
        let fault = self.fault.clone();
        let _ = fault.point("during-stop");
        let cp = move |step: &str| {
            let _ = fault.point(step);
        };
        self.undo_into(&rec, Some(&cp), errors);
        if !errors.is_empty() {
            tracing::error!(guest = %rec.name, ?errors, "errors while cleaning up after the guest");
        }
        let mut st = lock(&slot.state);
        // The intent a stop recorded before the exit was noticed (none can be recorded
        // since: a stop finding `finishing` set only waits).
        let reason = exit_reason(st.record.intent, status);
        let mut next = st.record.clone();
        // Only a start interrupted by a crash and killed at recovery ends here before `Up`:
        // a restart's earlier shut-off record comes back, as for any failed start.
        let message = format!(
            "the manager stopped during the start (at {:?}); QEMU killed at recovery and rolled back",
            next.phase
        );
        match next.take_earlier(message, errors.clone()) {
            Some(earlier) => next = earlier,
            None => next.shut_off(reason, errors.clone()),
        }
        self.write_or_log(&mut st, next);
        tracing::info!(guest = %st.record.name, exit = ?st.record.exit, "guest stopped");
        st.pidfd = None;
        st.finishing = false;
        slot.cv.notify_all();
    }

    /// Ends a cleanup that panicked: the guest shut off with `errors` (the panic last), its
    /// waiters woken. The store write is guarded too (a panic there must not kill the
    /// supervisor that runs an inline cleanup); memory takes the record whatever it says.
    fn finish_after_panic(
        &self,
        slot: &Arc<Slot>,
        status: Option<process::ExitStatus>,
        errors: Vec<String>,
    ) {
        let name = lock(&slot.state).record.name.clone();
        tracing::error!(guest = %name, ?errors, "the cleanup after the guest panicked");
        let mut st = lock(&slot.state);
        if st.finishing {
            let mut next = st.record.clone();
            // The run whose cleanup panicked, whichever record is kept below.
            let leftovers = crate::record::Leftovers {
                cgroups: if next.cgroups.is_empty() {
                    self.layout
                        .guest_dirs(&self.config.cgroup_parent, &next.name)
                } else {
                    next.cgroups.clone()
                },
                runtime_dir: next.runtime_dir.clone(),
                spawn_floor: next.spawn_floor.clone(),
            };
            let message = format!(
                "the manager stopped during the start (at {:?}); QEMU killed at recovery, its cleanup panicked",
                next.phase
            );
            match next.take_earlier(message, errors.clone()) {
                Some(earlier) => next = earlier,
                None => next.shut_off(exit_reason(next.intent, status), errors),
            }
            next.leftovers = Some(leftovers);
            match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.persist(&next))) {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    tracing::error!(guest = %name, error = %e, "writing the guest record")
                }
                Err(p) => tracing::error!(
                    guest = %name,
                    "writing the guest record panicked: {}",
                    panic_text(p.as_ref())
                ),
            }
            st.record = next;
            st.pidfd = None;
            st.finishing = false;
        }
        slot.cv.notify_all();
    }

    /// Writes `next` to the store, then makes it the record in memory: the caller holds the
    /// slot lock, so the two never disagree and concurrent writers cannot lose an update.
    /// On a store error memory keeps the old record and the error is returned.
    pub(crate) fn write(&self, st: &mut SlotState, next: Record) -> Result<()> {
        self.persist(&next)?;
        st.record = next;
        Ok(())
    }

    /// Like [`Inner::write`] for changes that happened whatever the store says (QEMU is
    /// gone): memory takes `next` even when the write fails, which is logged (recovery at
    /// the next open works from the stored record, which is behind, never ahead).
    fn write_or_log(&self, st: &mut SlotState, next: Record) {
        if let Err(e) = self.persist(&next) {
            tracing::error!(guest = %next.name, error = %e, "writing the guest record");
        }
        st.record = next;
    }

    // ---------------------------------------------------------------- queries

    pub(crate) fn list(&self, all: bool) -> Vec<GuestSummary> {
        let slots: Vec<Arc<Slot>> = lock(&self.guests).values().cloned().collect();
        let mut out: Vec<GuestSummary> = slots
            .iter()
            .filter_map(|s| {
                let st = lock(&s.state);
                let r = &st.record;
                if !all && !r.state.is_active() {
                    return None;
                }
                Some(GuestSummary {
                    name: r.name.clone(),
                    uuid: r.uuid.clone(),
                    state: r.state,
                    pid: r.pid,
                    labels: self
                        .labels_of(r)
                        .into_iter()
                        .filter_map(|m| m.process.map(|p| (m.model.as_str().to_string(), p)))
                        .collect(),
                })
            })
            .collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out
    }

    pub(crate) fn labels_of(&self, r: &Record) -> Vec<ModelLabels> {
        let sec = r.security();
        let contexts =
            svirt_domain::SelinuxContexts::load(&self.config.root_dir).unwrap_or_default();
        r.models
            .iter()
            .map(|&model| {
                let labels = svirt_domain::guest_labels(
                    &r.plan,
                    model,
                    sec.level.as_ref(),
                    sec.ids,
                    &contexts,
                );
                match labels {
                    Some((process, image)) => ModelLabels {
                        model,
                        process,
                        image,
                    },
                    // No label in the plan: the driver's view of the live process, if any.
                    None => ModelLabels {
                        model,
                        process: r
                            .pid
                            .and_then(|p| {
                                self.stack
                                    .driver(model)
                                    .and_then(|d| d.process_label(p).ok().flatten())
                            })
                            .or_else(|| Some("confined".into())),
                        image: None,
                    },
                }
            })
            .collect()
    }

    pub(crate) fn info_of(&self, slot: &Slot) -> Result<GuestInfo> {
        let r = lock(&slot.state).record.clone();
        Ok(self.info_from(&r))
    }

    pub(crate) fn info_from(&self, r: &Record) -> GuestInfo {
        let sec = r.security();
        let level = sec.level.map(|l| l.to_string());
        let subst = |t: String| -> String {
            let mut t = t;
            if let Some(l) = &level {
                t = t.replace(svirt_domain::LEVEL_PLACEHOLDER, l);
            }
            if let Some((u, g)) = sec.ids {
                t = t
                    .replace(svirt_domain::UID_PLACEHOLDER, &u.to_string())
                    .replace(svirt_domain::GID_PLACEHOLDER, &g.to_string());
            }
            t
        };
        let resources = r
            .plan
            .resources
            .iter()
            .map(|pr| {
                let labels = svirt_domain::labels_of(&r.plan, pr)
                    .into_iter()
                    .filter(|(m, _)| r.models.contains(m))
                    .map(|(m, l)| (m.as_str().to_string(), l.map(&subst)))
                    .collect();
                ResourceInfo {
                    path: pr.resource.path.clone(),
                    kind: pr.resource.kind,
                    access: pr.resource.access,
                    sharing: pr.resource.sharing,
                    device: pr.resource.device.clone(),
                    labels,
                }
            })
            .collect();
        GuestInfo {
            name: r.name.clone(),
            uuid: r.uuid.clone(),
            state: r.state,
            pid: r.pid,
            start_time: r.start_time,
            accel: r.accel.clone(),
            labels: self.labels_of(r),
            uid: r.ids.map(|i| i.0),
            gid: r.ids.map(|i| i.1),
            cgroups: if r.state.is_active() {
                r.cgroups.clone()
            } else {
                Vec::new()
            },
            runtime_dir: r.runtime_dir.clone(),
            qmp_socket: r.qmp_socket.clone(),
            resources,
            command_line: r.argv.clone(),
            exit: r.exit.clone(),
        }
    }

    pub(crate) fn monitor(&self, name: &str, cmd: Value) -> Result<Value> {
        let slot = self.slot(name)?;
        let (sock, state) = {
            let st = lock(&slot.state);
            (st.record.qmp_socket.clone(), st.record.state)
        };
        if !matches!(state, GuestState::Running | GuestState::Paused) {
            return Err(ManagerError::BadState {
                name: name.into(),
                state: state.to_string(),
                op: "talk to its monitor",
            });
        }
        let _q = lock(&slot.qmp);
        let mut q = Qmp::connect(&sock, Duration::from_secs(10))?;
        let reply = q.execute_raw(cmd)?;
        // The command may have resumed or paused the guest: keep the state true.
        if let Ok(st) = q.execute("query-status", None) {
            let running = st.get("running").and_then(Value::as_bool).unwrap_or(false);
            let mut s = lock(&slot.state);
            if matches!(s.record.state, GuestState::Running | GuestState::Paused) {
                let new = if running {
                    GuestState::Running
                } else {
                    GuestState::Paused
                };
                if new != s.record.state {
                    let mut next = s.record.clone();
                    next.state = new;
                    self.write_or_log(&mut s, next);
                }
            }
        }
        Ok(reply)
    }
}

/// How a guest whose cleanup is done ended: the intent a stop recorded wins, else QEMU's
/// own exit (code 0: it shut down).
fn exit_reason(intent: Option<Intent>, status: Option<process::ExitStatus>) -> ExitReason {
    match (intent, status) {
        (Some(intent), _) => intent.exit_reason(),
        (None, Some(s)) if s.code == Some(0) => ExitReason::Shutdown,
        (None, s) => ExitReason::Exited {
            code: s.and_then(|s| s.code),
            signal: s.and_then(|s| s.signal),
        },
    }
}

/// The message of a panic payload (`panic!` gives a `&str` or a `String`).
fn panic_text(p: &(dyn std::any::Any + Send)) -> String {
    p.downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown".into())
}

pub(crate) fn validate_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name != "."
        && name != ".."
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '+'));
    if ok {
        Ok(())
    } else {
        Err(ManagerError::Domain(format!(
            "guest name {name:?}: use 1-64 characters from [A-Za-z0-9._+-] (it names files and cgroups)"
        )))
    }
}

/// A uuid as compared: lower case, without dashes (libvirt accepts both spellings).
fn normalize_uuid(u: &str) -> String {
    u.chars()
        .filter(|c| *c != '-')
        .flat_map(char::to_lowercase)
        .collect()
}

fn tcp_ports(spec: &qemu::VmSpec) -> Vec<u16> {
    spec.chardevs
        .iter()
        .filter_map(|c| match &c.backend {
            qemu::ChardevBackend::Tcp { port, .. } => Some(*port),
            _ => None,
        })
        .collect()
}

/// `<run>/guests`: the parent of the guests' runtime directories.
pub(crate) const GUESTS_DIR: &str = "guests";
/// `<run>/ctl`: the parent of the guests' control directories.
pub(crate) const CONTROL_DIR: &str = "ctl";

/// Makes `dir` a fresh, empty directory, root's (the manager's), mode 0700, inside a
/// parent that is root's and 0700 too (created so, or made so). A leftover of a crashed
/// start of the same name (the name is claimed) is removed first, without following
/// anything in it.
fn make_private_dir(dir: &Path) -> Result<()> {
    if let Some(parent) = dir.parent() {
        crate::config::private_dir(parent)?;
    }
    remove_tree(dir).map_err(|e| ManagerError::io("remove leftover", dir, e))?;
    fs::DirBuilder::new()
        .mode(0o700)
        .create(dir)
        .map_err(|e| ManagerError::io("create", dir, e))
}

/// Gives the runtime directory (made by [`make_private_dir`]) to the guest's uid and gid.
fn own_runtime_dir(dir: &Path, ids: Option<(u32, u32)>) -> Result<()> {
    if let Some((u, g)) = ids {
        // The directory was just created by us, in a directory only root can write: no
        // other owner can have swapped it.
        std::os::unix::fs::chown(dir, Some(u), Some(g))
            .map_err(|e| ManagerError::io("chown", dir, e))?;
    }
    Ok(())
}

/// Removes a runtime directory tree without following symlinks (the guest's uid may
/// have written into it).
pub(crate) fn remove_tree(dir: &Path) -> io::Result<()> {
    match fs::symlink_metadata(dir) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
        Ok(m) if m.is_dir() => fs::remove_dir_all(dir),
        Ok(_) => fs::remove_file(dir),
    }
}

/// Kills a QEMU through its pidfd, waits (5 s at most) for it to exit and reaps it if it
/// is our child (an orphan is init's). Whether it exited.
fn kill_and_reap(pidfd: &OwnedFd) -> bool {
    let _ = process::pidfd_signal(pidfd, libc::SIGKILL);
    let exited = process::wait_exited(pidfd, Duration::from_secs(5));
    let _ = process::reap(pidfd);
    exited
}

/// Connects to QMP, giving up early if QEMU exits.
fn wait_qmp(sock: &Path, pidfd: &OwnedFd, timeout: Duration) -> Result<Qmp> {
    let deadline = Instant::now() + timeout;
    let stream = crate::qmp::connect_verified(sock)?;
    loop {
        let mut fds = [
            libc::pollfd {
                fd: stream.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: pidfd.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(ManagerError::Qmp(format!(
                "QEMU did not answer on {} within {timeout:?}",
                sock.display()
            )));
        }
        // SAFETY: two valid pollfds.
        let r = unsafe { libc::poll(fds.as_mut_ptr(), 2, left.as_millis().min(1000) as i32) };
        if r < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(ManagerError::Qmp(format!("poll: {e}")));
        }
        if fds[0].revents != 0 {
            return Qmp::from_stream(stream, Duration::from_secs(10));
        }
        if fds[1].revents != 0 {
            return Err(ManagerError::Qemu("QEMU exited during start".into()));
        }
    }
}

fn log_tail(path: &Path, max: u64) -> String {
    let Ok(mut f) = File::open(path) else {
        return String::new();
    };
    let len = f.metadata().map_or(0, |m| m.len());
    let _ = f.seek(SeekFrom::Start(len.saturating_sub(max)));
    let mut raw = Vec::new();
    let _ = f.read_to_end(&mut raw);
    // QEMU's output is the guest's to write (a compromised QEMU writes what it likes to
    // its stdout): no control character (terminal escapes) reaches the caller's screen.
    String::from_utf8_lossy(&raw)
        .trim()
        .replace('\n', " | ")
        .chars()
        .map(|c| if c.is_control() { '?' } else { c })
        .collect()
}

impl Inner {
    pub(crate) fn forget(&self, name: &str) -> Result<()> {
        let mut g = lock(&self.guests);
        let slot = g
            .get(name)
            .cloned()
            .ok_or_else(|| ManagerError::NoSuchGuest(name.to_string()))?;
        let state = lock(&slot.state).record.state;
        if state.is_active() {
            return Err(ManagerError::BadState {
                name: name.into(),
                state: state.to_string(),
                op: "forget",
            });
        }
        self.store.delete_guest(name).map_err(store_err)?;
        g.remove(name);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The runtime dir's removal never follows what the guest planted, also when the
    /// guest swaps a directory for a symlink while the removal runs: a thread keeps
    /// replacing subdirectories by links to a directory outside, whose files must all
    /// survive (std's `remove_dir_all` opens each child with `O_NOFOLLOW` relative to its
    /// parent's fd and unlinks a link instead of entering it). Control: the tree goes.
    #[test]
    fn remove_tree_never_follows_links_swapped_in_mid_removal() {
        let tmp = tempfile::tempdir().unwrap();
        let outside = tmp.path().join("outside");
        fs::create_dir(&outside).unwrap();
        for i in 0..50 {
            fs::write(outside.join(format!("f{i}")), b"keep").unwrap();
        }
        for round in 0..5 {
            let tree = tmp.path().join(format!("tree{round}"));
            for d in 0..100 {
                let sub = tree.join(format!("d{d}"));
                fs::create_dir_all(&sub).unwrap();
                for f in 0..5 {
                    fs::write(sub.join(format!("f{f}")), b"x").unwrap();
                }
            }
            let stop = Arc::new(AtomicBool::new(false));
            let swapper = {
                let (tree, outside, stop) = (tree.clone(), outside.clone(), stop.clone());
                std::thread::spawn(move || {
                    let mut d = 0;
                    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                        let sub = tree.join(format!("d{}", d % 100));
                        let tmp_link = tree.join(format!(".l{d}"));
                        if std::os::unix::fs::symlink(&outside, &tmp_link).is_ok()
                            && fs::rename(&tmp_link, &sub).is_err()
                        {
                            let _ = fs::remove_file(&tmp_link);
                        }
                        d += 7;
                    }
                })
            };
            let _ = remove_tree(&tree);
            stop.store(true, std::sync::atomic::Ordering::Relaxed);
            swapper.join().unwrap();
            // Whatever the swapper added after the removal finished goes too.
            remove_tree(&tree).unwrap();
            assert!(!tree.exists(), "round {round}: tree left");
            for i in 0..50 {
                assert_eq!(
                    fs::read(outside.join(format!("f{i}"))).unwrap(),
                    b"keep",
                    "round {round}: a file outside was removed through a swapped link"
                );
            }
        }
    }

    /// The tail of QEMU's log quoted in a start error carries no control character (a
    /// compromised QEMU's terminal escapes) and no invalid UTF-8 breaks it.
    #[test]
    fn log_tail_is_printable() {
        let tmp = tempfile::tempdir().unwrap();
        let p = tmp.path().join("qemu.log");
        fs::write(&p, b"start\nqemu: \x1b]0;owned\x07bad \xff end\n").unwrap();
        let t = log_tail(&p, 600);
        assert!(!t.chars().any(char::is_control), "{t:?}");
        assert!(t.starts_with("start | qemu: ?]0;owned?bad"), "{t:?}");
        assert!(t.ends_with("end"), "{t:?}");
    }

    #[test]
    fn uuids_compare_in_any_spelling() {
        assert_eq!(
            normalize_uuid("3C1B7F7A-52F8-4B9A-9D55-0C7B3A1E2F40"),
            normalize_uuid("3c1b7f7a52f84b9a9d550c7b3a1e2f40")
        );
    }
}
