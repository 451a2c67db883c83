//! Recovery at open: reattach to guests still running, clean up after the others.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use svirt_drivers::GuestSecurity;
use svirt_drivers::owners::split_owner;

use crate::cgroup;
use crate::error::{ManagerError, Result};
use crate::manager::{Inner, Slot};
use crate::process;
use crate::qmp::Qmp;
use crate::record::{Intent, Phase, Record};
use crate::types::{ExitReason, GuestState, Recovered};

fn slot(record: Record, pidfd: Option<std::os::fd::OwnedFd>) -> Arc<Slot> {
    // Reattached or found shut off: never our child.
    Slot::new(record, pidfd, false)
}

/// What recovery did: the names of reattached guests, what was done for each cleaned-up
/// one, and the names whose stored record cannot be read.
pub(crate) struct Outcome {
    pub(crate) reattached: Vec<String>,
    pub(crate) recovered: Vec<Recovered>,
    pub(crate) unreadable: HashSet<String>,
}

/// A failed store write of recovery, reported (and logged): the stored record is then
/// behind what was done, which the next open finds and handles again.
fn note(recovered: &mut Vec<Recovered>, name: &str, what: &str, r: Result<()>) {
    if let Err(e) = r {
        let what = format!("{what} failed: {e}");
        tracing::error!(guest = %name, "{what}");
        recovered.push(Recovered::new(name.to_string(), what));
    }
}

pub(crate) fn recover(inner: &Inner) -> Result<Outcome> {
    // The same proc tree undo's checks use.
    let proc_root = inner.proc_root();
    let mut reattached = Vec::new();
    let mut recovered = Vec::new();
    let mut unreadable = HashSet::new();
    let records = inner.store.list_guests().map_err(ManagerError::Store)?;
    let mut guests = inner.guests.lock().unwrap_or_else(|p| p.into_inner());
    for gr in records {
        let mut rec: Record = match serde_json::from_slice(&gr.record) {
            Ok(r) => r,
            Err(e) => {
                // Nothing says this guest is dead: its QEMU may run on with the uid and
                // level the store reserves for it. So its name counts as active below
                // (the sweep restores and releases nothing of it) and no start may take
                // the name; the record is left for a person to repair or delete.
                let what = format!(
                    "unreadable record (stored state {:?}) left alone: nothing of this guest is restored or released, and its name cannot be started: {e}",
                    gr.state
                );
                tracing::error!(guest = %gr.name, "{what}");
                recovered.push(Recovered::new(gr.name.clone(), what));
                unreadable.insert(gr.name.clone());
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
                    note(
                        &mut recovered,
                        &rec.name,
                        "writing the stopping record",
                        inner.persist(&rec),
                    );
                    let _ = process::pidfd_signal(&pidfd, libc::SIGKILL);
                    // The cleanup (`finish`) puts a restart's earlier shut-off record back.
                    let what = if rec.phase < Phase::Up {
                        format!(
                            "start interrupted at {:?} (QEMU not answering QMP): QEMU killed, cleanup follows{}",
                            rec.phase,
                            if rec.previous.is_some() {
                                "; the earlier shut-off record comes back"
                            } else {
                                ""
                            }
                        )
                    } else {
                        "stop interrupted: QEMU killed, cleanup follows".into()
                    };
                    recovered.push(Recovered::new(rec.name.clone(), what));
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
            note(
                &mut recovered,
                &rec.name,
                "writing the reattached record",
                inner.persist(&rec),
            );
            reattached.push(rec.name.clone());
            guests.insert(rec.name.clone(), slot(rec, Some(pidfd)));
            continue;
        }
        // Dead, or never fully started: undo everything it held.
        let errors = inner.undo(&rec, None);
        if rec.phase < Phase::Up {
            let mut what = format!(
                "start interrupted at {:?}{}: rolled back{}",
                rec.phase,
                if rec.phase >= Phase::Spawned {
                    " (QEMU gone)"
                } else {
                    ""
                },
                if errors.is_empty() {
                    String::new()
                } else {
                    format!(" with errors: {}", errors.join("; "))
                }
            );
            let message = format!(
                "the manager stopped during the start (at {:?}); rolled back",
                rec.phase
            );
            // A restart: the guest's earlier shut-off record comes back, with the
            // interrupted start as its exit.
            if let Some(earlier) = rec.take_earlier(message, errors.clone()) {
                let stored = inner.persist(&earlier);
                what.push_str("; the earlier shut-off record kept");
                recovered.push(Recovered::new(rec.name.clone(), what));
                note(
                    &mut recovered,
                    &rec.name,
                    "writing the earlier shut-off record back",
                    stored,
                );
                guests.insert(earlier.name.clone(), slot(earlier, None));
                continue;
            }
            if rec.phase < Phase::Spawned {
                let deleted = inner
                    .store
                    .delete_guest(&rec.name)
                    .map(|_| ())
                    .map_err(ManagerError::Store);
                recovered.push(Recovered::new(rec.name.clone(), what));
                note(
                    &mut recovered,
                    &rec.name,
                    "deleting the record of the interrupted start",
                    deleted,
                );
                continue;
            }
        }
        let reason = rec
            .intent
            .map_or(ExitReason::DiedWhileDetached, Intent::exit_reason);
        recovered.push(Recovered::new(
            rec.name.clone(),
            format!("QEMU gone ({reason:?}): cleaned up"),
        ));
        rec.shut_off(reason, errors);
        note(
            &mut recovered,
            &rec.name,
            "writing the shut-off record",
            inner.persist(&rec),
        );
        guests.insert(rec.name.clone(), slot(rec, None));
    }
    let active: HashSet<String> = guests
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
        .chain(unreadable.iter().cloned())
        .collect();
    let shut_off: BTreeMap<String, Arc<Slot>> = guests
        .iter()
        .filter(|(n, _)| !active.contains(*n))
        .map(|(n, s)| (n.clone(), s.clone()))
        .collect();
    let known: HashSet<String> = guests
        .keys()
        .cloned()
        .chain(unreadable.iter().cloned())
        .collect();
    drop(guests);
    sweep_orphans(inner, &active, shut_off, &mut recovered);
    sweep_unrecorded(inner, &known, &mut recovered);
    Ok(Outcome {
        reattached,
        recovered,
        unreadable,
    })
}

/// Runtime and control directories (and the empty cgroups of their names) of a name with
/// no record at all: left by a start killed after it made its runtime directory and before
/// its record was durable (the record is committed without an fsync until a driver's
/// first durable commit, see `label_and_create_files`). Nothing of such a start can run
/// (QEMU is forked only after the record is durable) and no label was changed (every
/// change follows a durable commit), so its files are removed, and its groups only when
/// empty: nothing is killed.
fn sweep_unrecorded(inner: &Inner, known: &HashSet<String>, recovered: &mut Vec<Recovered>) {
    let mut names: BTreeSet<String> = BTreeSet::new();
    for dir in [
        inner.config.run_dir.join(crate::manager::GUESTS_DIR),
        inner.config.run_dir.join(crate::manager::CONTROL_DIR),
    ] {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        names.extend(
            entries
                .flatten()
                .filter_map(|e| e.file_name().into_string().ok())
                .filter(|n| !known.contains(n) && crate::manager::validate_name(n).is_ok()),
        );
    }
    for name in names {
        let dirs: Vec<PathBuf> = inner
            .layout
            .guest_dirs(&inner.config.cgroup_parent, &name)
            .into_iter()
            .filter(|d| d.exists())
            .collect();
        if !dirs.is_empty() {
            // Removed only if empty (the kernel refuses a group with processes): nothing
            // of a start without a record runs, and a group with processes is not ours to
            // kill (another manager sharing the cgroup parent may run a guest of this name).
            note(
                recovered,
                &name,
                "removing the (empty) cgroup of a start without a record",
                cgroup::remove_dirs(&dirs, Duration::ZERO),
            );
        }
        remove_leftovers(inner, &name, None, recovered);
    }
}

/// Shown as the guest of what a driver's sweep restored without naming its guest (not a
/// valid guest name, so it cannot be mistaken for one).
pub(crate) const UNNAMED: &str = "(orphaned records)";

/// What belongs to no active guest (`active`: the guests the manager knows to be alive,
/// and those whose record it cannot read):
/// a guest record lost mid-cleanup, or records of an earlier configuration.
///
/// 1. First, as in undo (labels are not restored while they may still be in use): the
///    leftovers of every shut-off guest (`shut_off`) and of every owner swept in 2. are
///    removed if still there (see [`remove_leftovers`]: the cgroups only of a record
///    marked by a cleanup that panicked, at the paths that run recorded). A cleanup that
///    panicked before removing them leaves them, and nothing else would until the guest's
///    next start.
/// 2. Every owner of a reservation or a recorded original that is no active guest gets
///    the undo a dead guest gets, from an empty plan (drivers restore by owner: the store
///    knows what was changed for it), then the reservations of each driver whose restore
///    succeeded are released.
/// 3. The drivers' own sweeps then run over their own records, for owners nothing above
///    names (a tree whose guest's reservation an earlier recovery released):
///    [`svirt_drivers::stack::Stack::recover`], each driver's `recover` (DAC: its tree
///    records; SELinux: the relabel engine's records). A model not stacked whose records
///    remain (an earlier configuration's) has a retired driver opened for steps 2 and 3
///    alone (`stack::build`): SELinux when the ledger holds the engine's records, DAC
///    when it holds a uid, an original or a tree DAC recorded.
///
/// Everything done is pushed to `recovered` (svirtd logs it).
fn sweep_orphans(
    inner: &Inner,
    active: &HashSet<String>,
    shut_off: BTreeMap<String, Arc<Slot>>,
    recovered: &mut Vec<Recovered>,
) {
    let mut orphans: BTreeSet<String> = BTreeSet::new();
    // A listing that fails leaves its owners unswept: said, so that it is not taken for
    // a clean store.
    let mut unlisted = |what: &str, e: &dyn std::fmt::Display| {
        let what = format!("cannot list the {what}: {e}; their owners are not swept");
        tracing::error!("{what}");
        recovered.push(Recovered::new(UNNAMED, what));
    };
    match inner.store.level_reservations() {
        Ok(levels) => orphans.extend(levels.into_iter().flat_map(|l| l.owners)),
        Err(e) => unlisted("level reservations", &e),
    }
    match inner.store.id_reservations() {
        Ok(ids) => orphans.extend(ids.into_iter().map(|(_, o)| o)),
        Err(e) => unlisted("uid reservations", &e),
    }
    match inner.store.list_originals() {
        Ok(originals) => orphans.extend(
            originals
                .into_iter()
                .flat_map(|(_, r)| r.owners)
                .map(|o| split_owner(&o).1.to_string()),
        ),
        Err(e) => unlisted("recorded originals", &e),
    }
    let orphans: Vec<String> = orphans
        .into_iter()
        .filter(|o| !active.contains(o))
        .collect();
    let inactive: BTreeSet<&String> = shut_off.keys().chain(&orphans).collect();
    for name in inactive {
        let rec = shut_off.get(name).map(|s| {
            s.state
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .record
                .clone()
        });
        let done = remove_leftovers(inner, name, rec.as_ref(), recovered);
        // Done with: the mark goes, so the next open does not look again.
        if done
            && let Some(slot) = shut_off.get(name)
            && rec.as_ref().is_some_and(|r| r.leftovers.is_some())
        {
            let mut st = slot.state.lock().unwrap_or_else(|p| p.into_inner());
            let mut next = st.record.clone();
            next.leftovers = None;
            let r = inner.write(&mut st, next);
            note(recovered, name, "clearing the record's leftovers mark", r);
        }
    }
    // The stacked drivers and the retired ones (models no longer stacked whose records
    // remain): an orphan's records are put back by the model that made them.
    let drivers: Vec<&Arc<dyn svirt_drivers::SecurityDriver>> = inner
        .stack
        .drivers()
        .iter()
        .chain(inner.stack.retired())
        .collect();
    let models: Vec<svirt_domain::Model> = drivers.iter().map(|d| d.model()).collect();
    for owner in orphans {
        let plan = empty_plan(&owner, models.clone());
        let sec = GuestSecurity {
            name: owner.clone(),
            level: None,
            ids: None,
        };
        let mut errs = Vec::new();
        // As in undo: a driver whose restore failed keeps the owner's reservation (its
        // objects may still carry the uid or level); the next open tries again.
        let mut failed = vec![false; drivers.len()];
        for (i, d) in drivers.iter().enumerate().rev() {
            let e = d.restore_all(&plan, &sec);
            failed[i] = !e.is_empty();
            errs.extend(e.into_iter().map(|e| e.to_string()));
        }
        for (i, d) in drivers.iter().enumerate().rev() {
            if failed[i] {
                errs.extend(inner.kept_reserved(d.as_ref(), &sec));
            } else {
                errs.extend(inner.release_owner(d.as_ref(), &sec));
            }
        }
        let what = if errs.is_empty() {
            "no active guest of this name: what the drivers recorded for it restored, its reservations released"
                .to_string()
        } else {
            format!(
                "no active guest of this name: restored and released with errors (a driver whose restore failed keeps its reservation until a later open restores it): {}",
                errs.join("; ")
            )
        };
        if errs.is_empty() {
            tracing::warn!(guest = %owner, "{what}");
        } else {
            tracing::error!(guest = %owner, "{what}");
        }
        recovered.push(Recovered::new(owner, what));
    }
    let running = |g: &str| active.contains(g);
    for note in inner.stack.recover(&running) {
        if note.failed {
            tracing::error!(guest = ?note.guest, "{}", note.what);
        } else {
            tracing::warn!(guest = ?note.guest, "{}", note.what);
        }
        recovered.push(Recovered::new(
            note.guest.unwrap_or_else(|| UNNAMED.into()),
            note.what,
        ));
    }
}

/// Removes what a guest that is not active may have left outside the drivers' records:
/// its runtime directory and pid file (under this manager's run dir, the QEMU the pid file
/// names killed first when `rec`, the guest's record, lets `kill_unrecorded` verify it is
/// this guest's) and, only when `rec` is marked with `leftovers` (its cleanup panicked),
/// the processes in the cgroups that run recorded and the groups themselves. Never the
/// cgroups of a guest whose stop completed, nor of an owner without a record (no record
/// names a cgroup; nothing of such an owner can run: a start writes its record before it
/// forks, and a record goes only once its guest is cleaned up): another manager with
/// another state dir may share the cgroup parent and run a guest of the same name there.
/// Reported when anything was there; whether all of it went.
fn remove_leftovers(
    inner: &Inner,
    name: &str,
    rec: Option<&Record>,
    recovered: &mut Vec<Recovered>,
) -> bool {
    // Owners come from the store: a name that is no valid guest name names no path.
    if crate::manager::validate_name(name).is_err() {
        return true;
    }
    let left = rec.and_then(|r| r.leftovers.as_ref());
    let dirs: Vec<PathBuf> = left
        .map(|l| l.cgroups.iter().filter(|d| d.exists()).cloned().collect())
        .unwrap_or_default();
    let runtime = left.map_or_else(|| inner.runtime_dir(name), |l| l.runtime_dir.clone());
    let pid_file = inner.pid_file(name);
    let ctl = inner.control_dir(name);
    let runtime_there = std::fs::symlink_metadata(&runtime).is_ok();
    let pid_file_there = std::fs::symlink_metadata(&pid_file).is_ok();
    let ctl_there = std::fs::symlink_metadata(&ctl).is_ok();
    let helpers = inner.helpers_dir(name);
    let helpers_there = std::fs::symlink_metadata(&helpers).is_ok();
    if dirs.is_empty() && !runtime_there && !pid_file_there && !ctl_there && !helpers_there {
        return true;
    }
    let mut errs = Vec::new();
    if !dirs.is_empty() {
        if !cgroup::kill_all(&dirs, Duration::from_secs(5)) {
            errs.push(format!("processes left in {}", dirs[0].display()));
        }
        if let Err(e) = cgroup::remove_dirs(&dirs, Duration::from_secs(3)) {
            errs.push(e.to_string());
        }
    }
    if pid_file_there {
        match rec {
            // Verifies and kills, then removes the pid file; against the run that left it.
            Some(rec) => {
                let mut run = rec.clone();
                if let Some(l) = left {
                    run.runtime_dir = l.runtime_dir.clone();
                    run.spawn_floor = l.spawn_floor.clone();
                }
                errs.extend(inner.kill_unrecorded(&run));
            }
            // No record, no spawn floor to verify a process against (and none of such an
            // owner can run, see above).
            None => {
                if let Err(e) = std::fs::remove_file(&pid_file) {
                    errs.push(format!("remove {}: {e}", pid_file.display()));
                }
            }
        }
    }
    // After the kill: the runtime dir holds the QEMU's working directory.
    if let Err(e) = crate::manager::remove_tree(&runtime) {
        errs.push(format!("remove {}: {e}", runtime.display()));
    }
    if let Err(e) = crate::manager::remove_tree(&ctl) {
        errs.push(format!("remove {}: {e}", ctl.display()));
    }
    // The helpers' working directories (their processes died with the cgroup).
    if let Err(e) = crate::manager::remove_tree(&helpers) {
        errs.push(format!("remove {}: {e}", helpers.display()));
    }
    let what = if errs.is_empty() {
        "not active: its leftover runtime directory, pid file and cgroups removed".to_string()
    } else {
        format!(
            "not active: removing its leftover runtime directory, pid file and cgroups failed: {}",
            errs.join("; ")
        )
    };
    tracing::warn!(guest = %name, "{what}");
    recovered.push(Recovered::new(name.to_string(), what));
    errs.is_empty()
}

/// The plan of a guest known only by name: no resources, so drivers restore by owner
/// alone (what the store recorded for it).
fn empty_plan(name: &str, models: Vec<svirt_domain::Model>) -> svirt_domain::Plan {
    svirt_domain::Plan {
        name: name.to_string(),
        uuid: String::new(),
        models,
        selinux_process: svirt_domain::ProcessLabel::Unconfined,
        level: svirt_domain::LevelSource::None,
        selinux_relabel: true,
        dac_enabled: true,
        resources: Vec::new(),
        dac_ids: None,
        unconfined: Vec::new(),
        disk_chains: Vec::new(),
    }
}
