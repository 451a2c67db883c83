//! The SMACK driver (module docs in `mod.rs`).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use svirt_domain::{Model, Plan};
use svirt_labels::SmackLabel;
use svirt_store::LevelAllocator;

use super::rules::{Rule, Rules, rules_for};
use crate::relabel::{LabelJob, Relabeler};
use crate::{ChildHook, DriverError, ExecContext, GuestSecurity, ProbeReport, SecurityDriver};

const MODEL: Model = Model::Smack;

/// Where the driver finds the kernel and keeps its records.
#[derive(Debug, Clone)]
pub struct SmackConfig {
    /// Host root for the kernel interfaces (`/` but in tests).
    pub root: PathBuf,
    /// smackfs (`<root>/sys/fs/smackfs`).
    pub smackfs: PathBuf,
    /// The per-guest rule records (`<state>/smack`).
    pub records: PathBuf,
}

impl SmackConfig {
    /// The configuration under `root` with records in `state_dir`.
    pub fn new(root: &Path, state_dir: &Path) -> SmackConfig {
        SmackConfig {
            root: root.to_path_buf(),
            smackfs: root.join(super::host::SMACKFS.trim_start_matches('/')),
            records: state_dir.join("smack"),
        }
    }
}

/// The driver.
pub struct SmackDriver {
    cfg: SmackConfig,
    relabeler: Arc<Relabeler>,
    levels: Option<Arc<LevelAllocator>>,
    rules: Rules,
}

impl std::fmt::Debug for SmackDriver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SmackDriver")
            .field("cfg", &self.cfg)
            .finish_non_exhaustive()
    }
}

fn other(message: impl Into<String>) -> DriverError {
    DriverError::Other {
        model: MODEL,
        message: message.into(),
    }
}

fn planned(plan: &Plan) -> bool {
    plan.is_confined(MODEL)
}

impl SmackDriver {
    /// A driver labeling files through `relabeler` (which must be the SMACK engine:
    /// [`crate::relabel::SMACK`]) and drawing levels from `levels` (without one, the
    /// manager puts the level in [`GuestSecurity::level`] before `set_all`).
    pub fn new(
        cfg: SmackConfig,
        relabeler: Arc<Relabeler>,
        levels: Option<Arc<LevelAllocator>>,
    ) -> Result<SmackDriver, DriverError> {
        if relabeler.attr() != crate::relabel::SMACK {
            return Err(other("the relabel engine given is not SMACK's"));
        }
        let rules = Rules::new(
            cfg.records.clone(),
            super::rules::RuleLoader::new(&cfg.smackfs),
        );
        Ok(SmackDriver {
            cfg,
            relabeler,
            levels,
            rules,
        })
    }

    /// The guest's label, from its level.
    pub fn guest_label(guest: &GuestSecurity) -> Result<SmackLabel, DriverError> {
        let level = guest.level.as_ref().ok_or_else(|| {
            other(format!(
                "guest {}: no level reserved: its SMACK label is made from its level",
                guest.name
            ))
        })?;
        SmackLabel::for_guest(level).map_err(|e| other(format!("guest {}: {e}", guest.name)))
    }

    /// The engine's jobs for a plan, and the rules they need.
    pub fn jobs(
        plan: &Plan,
        label: &SmackLabel,
    ) -> Result<(Vec<LabelJob>, Vec<Rule>), DriverError> {
        let mut jobs = Vec::new();
        let mut used = Vec::new();
        for r in &plan.resources {
            let Some(l) = svirt_domain::smack::object_label(r, Some(label))
                .map_err(|e| other(format!("{}: {e}", r.resource.path.display())))?
            else {
                continue;
            };
            used.push((l.clone(), r.resource.access));
            jobs.push(LabelJob {
                path: r.resource.path.clone(),
                label: l,
                // Shared and read-only content too, when their last user stops (the ledger
                // counts them; SELinux's driver does the same by default).
                restore: true,
                recursive: r.resource.recursive,
                identity: r.resource.identity.map(|i| (i.dev, i.ino)),
            });
        }
        let rules = rules_for(label, used.iter().map(|(l, a)| (l.as_str(), *a)));
        Ok((jobs, rules))
    }
}

impl SecurityDriver for SmackDriver {
    fn model(&self) -> Model {
        MODEL
    }

    fn probe(&self) -> ProbeReport {
        let (usable, reason) = super::host::active(&self.cfg.root);
        ProbeReport {
            model: MODEL,
            usable,
            reason,
        }
    }

    fn reserve(&self, plan: &Plan, guest: &mut GuestSecurity) -> Result<(), DriverError> {
        if !planned(plan) {
            return Ok(());
        }
        crate::mcs_level::reserve(MODEL, self.levels.as_deref(), plan.level, guest)?;
        // A level whose label SMACK cannot take is refused before anything changed.
        Self::guest_label(guest).map(|_| ())
    }

    fn release(&self, guest: &GuestSecurity) -> Result<(), DriverError> {
        crate::mcs_level::release(MODEL, self.levels.as_deref(), guest)
    }

    fn set_all(&self, plan: &Plan, guest: &GuestSecurity) -> Result<(), DriverError> {
        if !planned(plan) {
            return Ok(());
        }
        let label = Self::guest_label(guest)?;
        let (jobs, rules) = Self::jobs(plan, &label)?;
        let store = self.relabeler.store();
        crate::stack::claim_plan(store, self.relabeler.root(), MODEL, plan)?;
        let undo_claims = || {
            if let Err(e) = crate::stack::release_claims(store, MODEL, &guest.name) {
                tracing::error!("{}: releasing SMACK claims: {e}", guest.name);
            }
        };
        if let Err(e) = self.rules.grant(&guest.name, label.as_str(), &rules) {
            undo_claims();
            return Err(other(e));
        }
        if let Err(e) = self.relabeler.set_labels(&guest.name, &jobs) {
            // set_labels undid its own work; the rules and claims go too.
            if let Err(more) = self.rules.release(&guest.name) {
                tracing::error!("{}: {more}", guest.name);
            }
            undo_claims();
            return Err(crate::selinux::map_relabel(MODEL, e));
        }
        Ok(())
    }

    fn restore_all(&self, plan: &Plan, guest: &GuestSecurity) -> Vec<DriverError> {
        let _ = plan;
        self.relabeler.restore_guest(&guest.name, || {
            self.rules
                .release(&guest.name)
                .err()
                .map(other)
                .into_iter()
                .collect()
        })
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
        let label = Self::guest_label(guest)?;
        // The child enters the label itself, while it still holds CAP_MAC_ADMIN (the
        // capability sets are emptied at exec). The label is the thread's: the prepared
        // child is one thread.
        let base = self.cfg.root.join("proc/thread-self/attr");
        let paths = [base.join("smack/current"), base.join("current")];
        let hook = crate::proc_attr::write_hook(
            &[paths[0].as_path(), paths[1].as_path()],
            label.as_str().as_bytes().to_vec(),
        )
        .map_err(other)?;
        Ok(vec![hook])
    }

    /// The label is written through `/proc`, which the jail does not show.
    fn hook_phase(&self) -> crate::HookPhase {
        crate::HookPhase::BeforeJail
    }

    fn release_owner(&self, guest: &GuestSecurity) -> Vec<DriverError> {
        crate::mcs_level::release_owner(
            MODEL,
            self.levels.as_deref(),
            self.relabeler.store(),
            guest,
        )
    }

    /// The relabel engine's SMACK records and the rule records of guests no longer
    /// running.
    fn recover(&self, running: &dyn Fn(&str) -> bool) -> Vec<crate::RecoveryNote> {
        let mut notes = self.relabeler.recover(running).notes(MODEL);
        match self.rules.guests() {
            Ok(guests) => {
                for g in guests.into_iter().filter(|g| !running(g)) {
                    let (what, failed) = match self.rules.release(&g) {
                        Ok(()) => (
                            "SMACK rules revoked: the guest is not running".into(),
                            false,
                        ),
                        Err(e) => (format!("revoking its SMACK rules failed: {e}"), true),
                    };
                    notes.push(crate::RecoveryNote {
                        guest: Some(g),
                        what,
                        failed,
                    });
                }
            }
            Err(e) => notes.push(crate::RecoveryNote {
                guest: None,
                what: format!(
                    "reading the SMACK rule records in {}: {e}",
                    self.cfg.records.display()
                ),
                failed: true,
            }),
        }
        notes
    }

    fn held_for(&self, owner: &str) -> Option<String> {
        crate::mcs_level::held_for(self.relabeler.store(), owner)
    }

    fn process_label(&self, pid: i32) -> Result<Option<String>, DriverError> {
        super::host::process_label(&self.cfg.root, &pid.to_string()).map_err(|source| {
            DriverError::Object {
                model: MODEL,
                op: "read process label",
                path: super::host::label_paths(&self.cfg.root, &pid.to_string())[0].clone(),
                source,
            }
        })
    }
}
