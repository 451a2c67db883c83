//! Recovery at open: reattach to guests still running, clean up after the others.

use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use svirt_drivers::GuestSecurity;

use crate::cgroup;
use crate::error::{ManagerError, Result};
use crate::manager::{Inner, Slot, SlotState, now_secs};
use crate::process;
use crate::qmp::Qmp;
use crate::record::{Intent, Phase, Record};
use crate::types::{ExitInfo, ExitReason, GuestState};

fn slot(record: Record, pidfd: Option<std::os::fd::OwnedFd>) -> Arc<Slot> {
    Arc::new(Slot {
        state: Mutex::new(SlotState {
            record,
            pidfd: pidfd.map(Arc::new),
            child: false,
            finishing: false,
            dirty: false,
        }),
        cv: Condvar::new(),
        qmp: Mutex::new(()),
    })
}

/// Returns (reattached names, (name, what was done) for each cleaned-up guest).
/// Names of reattached guests, and (name, what was done) for each cleaned-up one.
type Recovered = (Vec<String>, Vec<(String, String)>);

pub(crate) fn recover(inner: &Inner) -> Result<Recovered> {
    // The same proc tree undo's checks use.
    let proc_root = inner.proc_root();
    let mut reattached = Vec::new();
    let mut recovered = Vec::new();
    let records = inner
        .store
        .list_guests()
        .map_err(|e| ManagerError::Store(e.to_string()))?;
    let mut guests = inner.guests.lock().unwrap_or_else(|p| p.into_inner());
    for gr in records {
        let mut rec: Record = match serde_json::from_slice(&gr.record) {
            Ok(r) => r,
            Err(e) => {
                recovered.push((
                    gr.name.clone(),
                    format!("unreadable record left alone: {e}"),
                ));
                continue;
            }
        };
        if !rec.state.is_active() {
            guests.insert(rec.name.clone(), slot(rec, None));
            continue;
        }
        let alive = match (rec.pid, rec.start_time) {
            (Some(p), Some(t)) if rec.phase >= Phase::Spawned => {
                process::same_process(&proc_root, p, t)
            }
            _ => false,
        };
        let pidfd = if alive {
            rec.pid.and_then(|p| process::pidfd_open(p).ok()).filter(|_| {
                // Checked again after opening: the pidfd now pins the process we verified.
                matches!((rec.pid, rec.start_time), (Some(p), Some(t)) if process::same_process(&proc_root, p, t))
            })
        } else {
            None
        };
        if let Some(pidfd) = pidfd {
            if rec.state == GuestState::Stopping || rec.phase < Phase::Up {
                // A stop was under way, or the start never confirmed QMP: finish the job
                // the crashed manager started (the supervisor cleans up on exit).
                let ready = rec.phase >= Phase::Up
                    || Qmp::connect(&rec.qmp_socket, Duration::from_secs(5))
                        .and_then(|mut q| q.execute("query-status", None))
                        .is_ok();
                // The start joins QEMU to its cgroup beside the `Spawned` write: a crash
                // may have beaten the join. Joining again is harmless; a guest that cannot
                // be put in its group is not kept.
                let ready = ready
                    && rec.state != GuestState::Stopping
                    && match (rec.phase < Phase::Up, rec.pid) {
                        (true, Some(p)) => match cgroup::join_dirs(&rec.cgroups, p) {
                            Ok(()) => true,
                            Err(e) => {
                                tracing::warn!(guest = %rec.name, error = %e, "cannot join the reattached QEMU to its cgroup");
                                false
                            }
                        },
                        _ => true,
                    };
                if rec.state == GuestState::Stopping || !ready {
                    if rec.intent.is_none() {
                        rec.intent = Some(Intent::Destroy);
                    }
                    rec.state = GuestState::Stopping;
                    let _ = inner.persist(&rec);
                    let _ = process::pidfd_signal(&pidfd, libc::SIGKILL);
                    recovered.push((
                        rec.name.clone(),
                        "stop interrupted: QEMU killed, cleanup follows".into(),
                    ));
                    guests.insert(rec.name.clone(), slot(rec, Some(pidfd)));
                    continue;
                }
                rec.phase = Phase::Up;
                rec.previous = None;
            }
            // The guest's state may have changed while nobody watched.
            if let Ok(st) = Qmp::connect(&rec.qmp_socket, Duration::from_secs(5))
                .and_then(|mut q| q.execute("query-status", None))
            {
                let running = st.get("running").and_then(|v| v.as_bool()).unwrap_or(false);
                rec.state = if running {
                    GuestState::Running
                } else {
                    GuestState::Paused
                };
            }
            let _ = inner.persist(&rec);
            reattached.push(rec.name.clone());
            guests.insert(rec.name.clone(), slot(rec, Some(pidfd)));
            continue;
        }
        // Dead, or never fully started: undo everything it held.
        let errors = inner.undo(&rec, None);
        if rec.phase < Phase::Spawned {
            let mut what = format!(
                "start interrupted at {:?}: rolled back{}",
                rec.phase,
                if errors.is_empty() {
                    String::new()
                } else {
                    format!(" with errors: {}", errors.join("; "))
                }
            );
            match rec.previous.take() {
                // A restart: the guest's earlier shut-off record comes back, with the
                // interrupted start as its exit.
                Some(earlier) => {
                    let mut earlier = *earlier;
                    earlier.exit = Some(ExitInfo {
                        reason: ExitReason::StartFailed {
                            message: format!(
                                "the manager stopped during the start (at {:?}); rolled back",
                                rec.phase
                            ),
                        },
                        at: now_secs(),
                        restore_errors: errors,
                    });
                    let _ = inner.persist(&earlier);
                    what.push_str("; the earlier shut-off record kept");
                    guests.insert(earlier.name.clone(), slot(earlier, None));
                }
                None => {
                    let _ = inner.store.delete_guest(&rec.name);
                }
            }
            recovered.push((rec.name.clone(), what));
            continue;
        }
        let reason = match rec.intent {
            Some(Intent::Destroy) => ExitReason::Destroyed,
            Some(Intent::ShutdownKilled) => ExitReason::ShutdownTimeout,
            Some(Intent::Shutdown) => ExitReason::Shutdown,
            None => ExitReason::DiedWhileDetached,
        };
        recovered.push((
            rec.name.clone(),
            format!("QEMU gone ({reason:?}): cleaned up"),
        ));
        rec.exit = Some(ExitInfo {
            reason,
            at: now_secs(),
            restore_errors: errors,
        });
        rec.state = GuestState::ShutOff;
        rec.pid = None;
        rec.intent = None;
        rec.previous = None;
        let _ = inner.persist(&rec);
        guests.insert(rec.name.clone(), slot(rec, None));
    }
    // Reservations whose owner is no active guest (e.g. a record lost mid-cleanup) are
    // released, so nothing leaks; labels of active guests stay reserved.
    let active: std::collections::HashSet<String> = guests
        .iter()
        .filter(|(_, s)| {
            s.state
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .record
                .state
                .is_active()
        })
        .map(|(n, _)| n.clone())
        .collect();
    let mut orphans: std::collections::BTreeSet<String> = std::collections::BTreeSet::new();
    if let Ok(levels) = inner.store.level_reservations() {
        orphans.extend(levels.into_iter().flat_map(|l| l.owners));
    }
    if let Ok(ids) = inner.store.id_reservations() {
        orphans.extend(ids.into_iter().map(|(_, o)| o));
    }
    for owner in orphans.into_iter().filter(|o| !active.contains(o)) {
        let sec = GuestSecurity {
            name: owner.clone(),
            level: None,
            ids: None,
        };
        let mut errs = Vec::new();
        for d in inner.drivers.iter().rev() {
            if let Err(e) = d.release(&sec) {
                errs.push(e.to_string());
            }
        }
        recovered.push((
            owner,
            if errs.is_empty() {
                "orphaned reservation released".into()
            } else {
                format!("orphaned reservation: {}", errs.join("; "))
            },
        ));
    }
    Ok((reattached, recovered))
}
