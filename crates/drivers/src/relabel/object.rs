//! Single objects: label one (its original recorded first), roll it back, and release it
//! when its last user of a model leaves (each model's part through its own restore:
//! the engine's label here (SELinux's or SMACK's), DAC's through `dac::leave`).

use super::*;

impl Relabeler {
    pub(super) fn label_one(
        &self,
        owner: &str,
        j: &LabelJob,
        o: &Object,
        applied: &mut Applied,
        undo: &mut Vec<Undo>,
    ) -> Result<(), RelabelError> {
        let attr = self.attr;
        let want = attr.bytes(&j.label);
        let key = object_key(o.identity());
        let ident = store_identity(o.identity());
        // Read, record and write as one step against other guests' stops releasing the same
        // object (which would otherwise restore it between our read and our record).
        let _lock = self.store.lock_object(key);
        let cur = match o.get_xattr(attr.xattr) {
            Ok(v) => v,
            Err(e) if is_soft_errno(e.raw_os_error()) => {
                applied.warnings.push(soft_warning(o, &e));
                return Ok(());
            }
            Err(e) => return Err(io_err("read label", &j.path)(e)),
        };
        if label_eq(&cur, &want) {
            applied.unchanged += 1;
            // Already right: join the record if another guest changed it, so that its
            // stop does not restore the object under us.
            if j.restore
                && let Some(rec) = self.store.get_original(key)?
                && rec.original.identity.same_object(&ident)
                && !rec.owners.contains(owner)
            {
                self.store.record_original_if_absent(
                    key,
                    &snapshot(attr, o, &cur, ident),
                    owner,
                )?;
                undo.push(Undo::Release { key });
            }
            return Ok(());
        }
        if j.restore {
            if let Some(rec) = self.store.get_original(key)? {
                let others: Vec<&String> = rec
                    .owners
                    .iter()
                    .filter(|w| w.as_str() != owner && split_owner(w).0 == attr.name())
                    .collect();
                if rec.original.identity.same_object(&ident)
                    && !others.is_empty()
                    && *attr.original(&rec.original) != cur
                {
                    return Err(in_use(j, &others, show(&cur)));
                }
            }
            let outcome = self.store.record_original_if_absent(
                key,
                &snapshot(attr, o, &cur, ident),
                owner,
            )?;
            if !matches!(outcome, svirt_store::RecordOutcome::AlreadyOwner { .. }) {
                undo.push(Undo::Release { key });
            }
            self.fault("after-record")?;
        }
        // Who else uses it now: a rollback leaves the label only for users who came later.
        let others = self.other_label_users(key, owner)?;
        match o.set_xattr(attr.xattr, &want) {
            Ok(()) => {
                applied.changed += 1;
                undo.push(Undo::Single {
                    path: j.path.clone(),
                    ident: o.identity(),
                    old: cur,
                    others,
                });
                self.fault("after-label")?;
                Ok(())
            }
            Err(e) if is_soft_errno(e.raw_os_error()) => {
                applied.warnings.push(soft_warning(o, &e));
                // Nothing changed: drop the record this call added.
                // Only this object's own record: an earlier job's must stay.
                if j.restore && matches!(undo.last(), Some(Undo::Release { key: k }) if *k == key) {
                    undo.pop();
                    self.store.release_original(key, owner)?;
                }
                Ok(())
            }
            Err(e) => Err(io_err("set label", &j.path)(e)),
        }
    }

    pub(super) fn rollback(&self, owner: &str, undo: Vec<Undo>) {
        for u in undo.into_iter().rev() {
            match u {
                Undo::Single {
                    path,
                    ident,
                    old,
                    others,
                } => {
                    // Reopen by path and check identity: the Object was dropped with `objs`
                    // only after this runs, but a fresh open keeps the rule simple.
                    match self.root.open_object(&path) {
                        Ok(o) if o.identity() == ident => {
                            let key = object_key(ident);
                            let _lock = self.store.lock_object(key);
                            // A guest that joined the record since (the label was right for
                            // it) keeps the label.
                            match self.other_label_users(key, owner) {
                                Ok(now) if now.is_subset(&others) => {
                                    if let Err(e) = write_label_obj(&o, self.attr.xattr, &old) {
                                        tracing::error!("rollback of {}: {e}", path.display());
                                    }
                                }
                                Ok(_) => {}
                                Err(e) => tracing::error!("rollback of {}: {e}", path.display()),
                            }
                        }
                        Ok(_) => tracing::warn!("rollback: {} was replaced", path.display()),
                        Err(e) => tracing::error!("rollback of {}: {e}", path.display()),
                    }
                }
                Undo::Release { key } => {
                    // As a stop would: if the other users have left meanwhile, this was the
                    // last one and the object gets its original back.
                    if let Err(e) = self.release_one(key, &[owner.to_string()]) {
                        tracing::error!("rollback: releasing record {}:{}: {e}", key.dev, key.ino);
                    }
                }
                Undo::Tree { work, undo_record } => self.rollback_tree(owner, &work, undo_record),
            }
        }
    }

    /// The users of the engine's model other than `owner` the object's record has now.
    pub(super) fn other_label_users(
        &self,
        key: ObjectKey,
        owner: &str,
    ) -> Result<BTreeSet<String>, RelabelError> {
        Ok(self
            .store
            .get_original(key)?
            .map(|r| {
                r.owners
                    .into_iter()
                    .filter(|o| o.as_str() != owner && split_owner(o).0 == self.attr.name())
                    .collect()
            })
            .unwrap_or_default())
    }

    /// Releases `owners` (all of one record) and restores each model's attributes (SELinux
    /// label, DAC owner and mode, and a device ACL grant of DAC's) whose last user of that
    /// model is being released. A grant recorded without its gid (written before DAC
    /// recorded it) cannot be undone here: that is an error naming the device, and the
    /// record stays (DAC's `restore_all` resolves the device group).
    pub(super) fn release_one(
        &self,
        key: ObjectKey,
        owners: &[String],
    ) -> Result<bool, RelabelError> {
        // Decide from the record as it is now, not from a listing taken earlier: another
        // guest's stop may have released (or a start joined) it since.
        let _lock = self.store.lock_object(key);
        let Some(rec) = self.store.get_original(key)? else {
            return Ok(false);
        };
        // Another label model's users are released by that model's engine, which restores
        // its own attribute: never here.
        let me = self.attr.name();
        let owners: Vec<String> = owners
            .iter()
            .filter(|o| rec.owners.contains(*o))
            .filter(|o| {
                let m = split_owner(o).0;
                m == me || LabelAttr::of_name(m).is_none()
            })
            .cloned()
            .collect();
        let owners = owners.as_slice();
        let remaining_label = rec
            .owners
            .iter()
            .filter(|o| !owners.contains(o) && split_owner(o).0 == me)
            .count();
        let remaining_dac = rec
            .owners
            .iter()
            .filter(|o| !owners.contains(o) && split_owner(o).0 == "dac")
            .count();
        let releasing_models: BTreeSet<&str> = owners.iter().map(|o| split_owner(o).0).collect();
        let flags = |m: &str| rec.original.model_flags.get(m).copied().unwrap_or(0);
        let restore_label =
            releasing_models.contains(me) && remaining_label == 0 && flags(me) & FLAG_LABEL != 0;
        // DAC's part is DAC's own (one path: `dac::leave`): undone when its last user
        // leaves, else only the leaving guests' read entries go.
        let dac_leaving: Vec<&str> = owners
            .iter()
            .filter(|o| split_owner(o).0 == "dac")
            .map(|o| split_owner(o).1)
            .collect();
        let mut restored = false;
        if restore_label || !dac_leaving.is_empty() {
            // Restore before releasing: a crash in between leaves the record for recovery.
            let path = &rec.original.path;
            match self.root.open_object(path) {
                Ok(o) => {
                    let id = store_identity(o.identity());
                    if !rec.original.identity.same_object(&id) {
                        tracing::warn!(
                            "{}: replaced since it was labeled; not restoring",
                            path.display()
                        );
                    } else {
                        if restore_label {
                            write_label_obj(&o, self.attr.xattr, self.attr.original(&rec.original))
                                .map_err(io_err("restore label", path))?;
                            restored = true;
                        }
                        if !dac_leaving.is_empty() {
                            // Without the DAC driver's configuration, a record that does
                            // not name its device gid cannot be undone here: said, and
                            // kept for the DAC driver's own restore.
                            crate::dac::leave(
                                &o,
                                &rec.original,
                                &dac_leaving,
                                remaining_dac > 0,
                                &|| {
                                    Err(crate::DriverError::Other {
                                        model: svirt_domain::Model::Dac,
                                        message: "the device group is the DAC driver's to look up"
                                            .into(),
                                    })
                                },
                            )
                            .map_err(|e| dac_restore_err(path, e))?;
                            restored |= remaining_dac == 0 && flags("dac") != 0;
                        }
                    }
                }
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {}
                Err(e) => return Err(io_err("open", path)(e)),
            }
        }
        for o in owners {
            // DAC's entries go with its last user (as DAC's own release does): left in a
            // record another model keeps, a later grant's flags and gid would be or-ed in.
            // A DAC user's own read-grant keys go with it in any case.
            let (model, guest) = split_owner(o);
            let clear: Vec<String> = if model == "dac" {
                crate::dac::leave_keys(guest, remaining_dac == 0)
            } else {
                Vec::new()
            };
            let clear: Vec<&str> = clear.iter().map(String::as_str).collect();
            self.store.release_original_clearing(key, o, &clear)?;
        }
        Ok(restored)
    }
}
