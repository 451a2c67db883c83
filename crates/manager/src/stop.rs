//! Stopping a guest and the cleanup after its QEMU exits (docs/manager.md, "Supervision").

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::error::{ManagerError, Result};
use crate::manager::*;
use crate::process;
use crate::qmp::Qmp;
use crate::record::Intent;
use crate::types::*;

impl Inner {
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
    pub(crate) fn wait_cleanup(&self, slot: &Slot, name: &str) -> Result<ExitInfo> {
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
    pub(crate) fn finish_steps(
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
    pub(crate) fn finish_after_panic(
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
}

/// How a guest whose cleanup is done ended: the intent a stop recorded wins, else QEMU's
/// own exit (code 0: it shut down).
pub(crate) fn exit_reason(
    intent: Option<Intent>,
    status: Option<process::ExitStatus>,
) -> ExitReason {
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
pub(crate) fn panic_text(p: &(dyn std::any::Any + Send)) -> String {
    p.downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown".into())
}
