//! Starting a guest: plan, reserve, label, jail, spawn, QMP (docs/manager.md, "Start, step
//! by step").

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;
use svirt_drivers::{ExecContext, GuestSecurity};

use crate::StartOptions;
use crate::cgroup::GuestCgroup;
use crate::error::{ManagerError, Result};
use crate::jail::Jail;
use crate::manager::*;
use crate::process::{self, SpawnRequest};
use crate::qemu::{self, LaunchOptions};
use crate::qmp::Qmp;
use crate::record::{Phase, Record};
use crate::types::*;

/// How long a start waits for QMP to answer.
const QMP_START_TIMEOUT: Duration = Duration::from_secs(60);

impl Inner {
    pub(crate) fn start(self: &Arc<Self>, xml: &str, opts: StartOptions) -> Result<GuestInfo> {
        let (domain, plan, created, listeners) = crate::glue::parse_and_plan(self, xml, true)?;
        let early = (|| {
            validate_name(&plan.name)?;
            let spec = crate::glue::vm_spec(&domain, &plan, &self.runtime_dir(&plan.name))?;
            crate::helper::check(&spec, &plan, !self.stack.is_empty())?;
            self.fault.point("after-plan")?;
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
        match self.start_steps(&mut rec, opts, listeners) {
            Ok(pidfd) => {
                // The answer is made from the record before the supervisor is woken to
                // write it: the start's caller never waits for that write.
                let info = self.info_from(&rec);
                let mut st = lock(&slot.state);
                st.record = rec;
                st.pidfd = Some(Arc::new(pidfd));
                st.dirty = true;
                drop(st);
                self.wake();
                Ok(info)
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
    pub(crate) fn settle_failed_start(
        &self,
        slot: &Arc<Slot>,
        earlier: Option<Record>,
        exit: ExitInfo,
    ) {
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
    pub(crate) fn start_steps(
        &self,
        rec: &mut Record,
        opts: StartOptions,
        listeners: crate::glue::ChardevListeners,
    ) -> Result<OwnedFd> {
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
            inherited: vec![log_path.clone()],
            procfs: None,
        };
        // QEMU reaches its plan but what its helpers serve (virtiofs shares, TPM state).
        let vmm_plan = crate::helper::plan_for_vmm(&rec.plan, &rec.spec);
        let (pre_jail, hooks) = self.stack.child_hooks_phased(&vmm_plan, &sec, &exec)?;
        let host_sockets = crate::glue::host_sockets(&rec.spec, jail.is_some(), listeners)?;
        let vhost_user = self.start_virtiofsd(rec, &cg)?;
        let tpm = self.start_swtpm(rec, &cg)?;
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
                vhost_user_fds: vhost_user
                    .iter()
                    .map(|(i, fd)| (*i, fd.as_raw_fd()))
                    .collect(),
                tpm_fd: tpm.as_ref().map(|fd| fd.as_raw_fd()),
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
                .chain(vhost_user.iter().map(|(_, fd)| fd.as_raw_fd()))
                .chain(tpm.iter().map(|fd| fd.as_raw_fd()))
                .collect(),
            pid_fd: Some(pid_file.as_raw_fd()),
            cgroup_procs: Vec::new(),
            pre_jail_hooks: pre_jail,
            jail,
            hooks,
            // An unconfined guest (`--drivers none`) is unconfined on purpose.
            drop_capabilities: !self.stack.is_empty(),
        })?;
        drop(host_sockets);
        drop(vhost_user);
        drop(tpm);
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
    /// before anything uses the uid or level (a tree's record is such a commit: the trees'
    /// tables are in the same ledger). A start that labels nothing syncs here, after.
    /// From this point on (runtime dir
    /// chowned, files created with the guest's labels, QEMU forked and found again through
    /// its pid file after a crash) the record is on disk. A crash before loses
    /// reservations and a record nothing used.
    pub(crate) fn label_and_create_files(
        &self,
        rec: &Record,
    ) -> Result<(PathBuf, File, UnixListener, File)> {
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
        self.fault.point("after-label")?;
        Ok((log_path, log, listener, pid_file))
    }

    /// The VMM's jail, built: `None` without drivers (`--drivers none`: QEMU runs as root
    /// with every capability, which could leave any namespace; such a guest is unconfined
    /// on purpose, jail included).
    ///
    /// Every object is opened at once; the runtime directory is bound once `made` says it
    /// exists (a start that fails before drops the sender: nothing is built then).
    pub(crate) fn build_jail(
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
            &crate::helper::plan_for_vmm(&rec.plan, &rec.spec),
            &crate::jail::JailInputs {
                emulator: &self.qemu,
                devices,
                spelled: &crate::glue::spec_paths(&rec.spec),
                ids: rec.ids,
                map_policy: self.idmap_policy(),
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
    pub(crate) fn set_labels(&self, plan: &svirt_domain::Plan, sec: &GuestSecurity) -> Result<()> {
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
}

/// A uuid as compared: lower case, without dashes (libvirt accepts both spellings).
pub(crate) fn normalize_uuid(u: &str) -> String {
    u.chars()
        .filter(|c| *c != '-')
        .flat_map(char::to_lowercase)
        .collect()
}

pub(crate) fn tcp_ports(spec: &qemu::VmSpec) -> Vec<u16> {
    spec.chardevs
        .iter()
        .filter_map(|c| match &c.backend {
            qemu::ChardevBackend::Tcp { port, .. } => Some(*port),
            _ => None,
        })
        .collect()
}

/// Makes `dir` a fresh, empty directory, root's (the manager's), mode 0700, inside a
/// parent that is root's and 0700 too (created so, or made so). A leftover of a crashed
/// start of the same name (the name is claimed) is removed first, without following
/// anything in it.
pub(crate) fn make_private_dir(dir: &Path) -> Result<()> {
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
pub(crate) fn own_runtime_dir(dir: &Path, ids: Option<(u32, u32)>) -> Result<()> {
    if let Some((u, g)) = ids {
        // The directory was just created by us, in a directory only root can write: no
        // other owner can have swapped it.
        std::os::unix::fs::chown(dir, Some(u), Some(g))
            .map_err(|e| ManagerError::io("chown", dir, e))?;
    }
    Ok(())
}

/// Kills a QEMU through its pidfd, waits (5 s at most) for it to exit and reaps it if it
/// is our child (an orphan is init's). Whether it exited.
pub(crate) fn kill_and_reap(pidfd: &OwnedFd) -> bool {
    let _ = process::pidfd_signal(pidfd, libc::SIGKILL);
    let exited = process::wait_exited(pidfd, Duration::from_secs(5));
    let _ = process::reap(pidfd);
    exited
}

/// Connects to QMP, giving up early if QEMU exits.
pub(crate) fn wait_qmp(sock: &Path, pidfd: &OwnedFd, timeout: Duration) -> Result<Qmp> {
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

pub(crate) fn log_tail(path: &Path, max: u64) -> String {
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

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
