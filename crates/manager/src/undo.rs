//! Undoing what a guest holds: labels restored, reservations released, cgroup and runtime
//! files removed.

use std::fs;
use std::path::PathBuf;
use std::time::Duration;

use svirt_drivers::{GuestSecurity, SecurityDriver};

use crate::cgroup;
use crate::manager::*;
use crate::process;
use crate::record::{Phase, Record};
use crate::start::kill_and_reap;

impl Inner {
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
        let helpers = self.helpers_dir(&rec.name);
        if let Err(e) = remove_tree(&helpers) {
            errors.push(format!("remove {}: {e}", helpers.display()));
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
    pub(crate) fn security_for_undo(&self, rec: &Record) -> GuestSecurity {
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
}
