//! The manager's state: the guests (`Slot`), the shared `Inner` with the stack, the store
//! and the namespaces, records, paths, list, info and QMP passthrough. The lifecycle verbs
//! have a file each: `start.rs`, `stop.rs` (stop and the cleanup after QEMU exits),
//! `undo.rs` (restore and release what a guest holds); recovery is `recover.rs`.

use std::collections::HashMap;
use std::fs::{self};
use std::io::{self};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

use serde_json::Value;
use svirt_domain::Model;
use svirt_store::Store;

use crate::cgroup::Layout;
use crate::config::Config;
use crate::error::{ManagerError, Result};
use crate::fault::Fault;
use crate::namespaces::NamespacePool;
use crate::qmp::Qmp;
use crate::record::Record;
use crate::types::*;

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
    /// The planner's view of the host, kept while the mount table and swap stay as they
    /// were.
    pub(crate) host_cache: crate::host_cache::HostCache,
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding a guest lock must not wedge every later call.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

pub(crate) fn store_err(e: svirt_store::Error) -> ManagerError {
    ManagerError::Store(e)
}

/// A failed step of the whole stack: its cause, the rollback's errors logged.
pub(crate) fn stack_err(e: svirt_drivers::stack::StackError) -> ManagerError {
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

    /// Which share owners an idmapped mount may map to a guest: users' accounts, not the
    /// guests' own ids.
    pub(crate) fn idmap_policy(&self) -> crate::idmap::MapPolicy {
        let r = self.config.driver_settings.uid_range.unwrap_or_default();
        crate::idmap::MapPolicy {
            min_id: crate::idmap::login_min_ids(&self.config.root_dir),
            guest_ids: (r.first, r.last),
        }
    }

    pub(crate) fn models(&self) -> Vec<Model> {
        self.stack.drivers().iter().map(|d| d.model()).collect()
    }

    /// `<run>/helpers/<name>`: the working directories of the guest's helper processes
    /// (one each, the guest's uid's; root's 0711 above them). Not the runtime directory,
    /// which holds QEMU's sockets (VNC and SPICE without a password).
    pub(crate) fn helpers_dir(&self, name: &str) -> PathBuf {
        self.config.run_dir.join("helpers").join(name)
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

    // ---------------------------------------------------------------- stop

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
    pub(crate) fn write_or_log(&self, st: &mut SlotState, next: Record) {
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

/// `<run>/guests`: the parent of the guests' runtime directories.
pub(crate) const GUESTS_DIR: &str = "guests";
/// `<run>/ctl`: the parent of the guests' control directories.
pub(crate) const CONTROL_DIR: &str = "ctl";

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

impl Inner {
    pub(crate) fn forget(&self, name: &str) -> Result<()> {
        let mut g = lock(&self.guests);
        let slot = g
            .get(name)
            .cloned()
            .ok_or_else(|| ManagerError::NoSuchGuest(name.to_string()))?;
        // Under the guest's lock until the record is gone: the supervisor writes a dirty
        // record under that lock alone, from a list of slots taken earlier, so the flag is
        // cleared here and a write already under way finishes before the delete.
        let mut st = lock(&slot.state);
        let state = st.record.state;
        if state.is_active() {
            return Err(ManagerError::BadState {
                name: name.into(),
                state: state.to_string(),
                op: "forget",
            });
        }
        st.dirty = false;
        self.store.delete_guest(name).map_err(store_err)?;
        drop(st);
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
}
