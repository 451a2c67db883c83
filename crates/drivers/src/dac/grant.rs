//! ACL grants: a guest's read entry on read-only content and on a tree's entries, and the
//! device group's entry on device nodes the VMM cannot open by their mode.

use super::*;

impl DacDriver {
    /// Adds `user:<uid>:r--` (`r-x` on a directory) to `obj`'s access ACL, and widens the
    /// mask by just those rights, after recording what restore needs: for the first DAC user
    /// touching the ACL, whether there was one and its mask ([`flags::READ_GRANT`]); for
    /// every guest, its uid and that uid's previous entry ([`read_uid_key`],
    /// [`read_prev_key`]). Owner, mode bits for others, and every other entry are left
    /// alone: nobody but this guest gains anything. The caller holds the object's lock.
    pub(super) fn grant_read_locked(
        &self,
        guest: &str,
        uid: u32,
        obj: &Object,
    ) -> Result<(), DriverError> {
        let k = object_key(obj.identity());
        let (meta, current) = meta_and_acl(obj)?;
        let unreadable = || {
            DeviceAclError::Unreadable {
                device: obj.path().to_path_buf(),
            }
            .into_driver("read ACL")
        };
        let mut acl = match &current {
            None => Acl::from_mode(meta.mode),
            Some(bytes) => Acl::parse(bytes).ok_or_else(unreadable)?,
        };
        // Another DAC user's read grant recorded the ACL as it was before any grant: join
        // it (its flags describe the true original; ours would describe its change).
        let existing = self.store.get_original(k).map_err(store_err)?;
        // A reader with the same (static) uid recorded what the entry was before it: that
        // is the original, not the entry it added.
        let same_uid_prev = existing.as_ref().and_then(|rec| {
            let prefix = format!("{MODEL_KEY}.read_uid/");
            rec.original.model_flags.iter().find_map(|(key, &u)| {
                let g = key.strip_prefix(&prefix)?;
                (g != guest && u == uid)
                    .then(|| rec.original.model_flags.get(&read_prev_key(g)).copied())
                    .flatten()
            })
        });
        let joins = existing.as_ref().is_some_and(|rec| {
            rec.original
                .identity
                .same_object(&store_identity(obj.identity()))
                && rec
                    .owners
                    .iter()
                    .any(|o| crate::owners::split_owner(o).0 == MODEL_KEY)
                && is_read_grant(&rec.original)
        });
        let mut f = 0;
        if !joins {
            f = flags::READ_GRANT | flags::MODE;
            match &current {
                None => f |= flags::ACL_CREATED,
                Some(_) => {
                    f |= flags::ACL_ENTRY;
                    if let Some(mask) = acl.get(ACL_MASK, ACL_UNDEFINED_ID) {
                        f |= flags::ACL_HAD_MASK | (u32::from(mask & 7) << flags::ACL_MASK_SHIFT);
                    }
                }
            }
        }
        let prev = acl.get(ACL_USER, uid);
        let mut original = original_of(obj, meta, f)?;
        original.model_flags.insert(read_uid_key(guest), uid);
        original.model_flags.insert(
            read_prev_key(guest),
            same_uid_prev
                .unwrap_or_else(|| prev.map_or(0, |p| flags::READ_PREV_HAD | u32::from(p & 7))),
        );
        self.store
            .record_original_if_absent(k, &original, &owner_key(guest))
            .map_err(store_err)?;
        let perm: u16 = if meta.is_dir() { 5 } else { 4 };
        acl.set(ACL_USER, uid, prev.unwrap_or(0) | perm);
        let mask = match acl.get(ACL_MASK, ACL_UNDEFINED_ID) {
            Some(m) => m | perm,
            None => acl.group_class_union(),
        };
        acl.set(ACL_MASK, ACL_UNDEFINED_ID, mask);
        obj.set_xattr(ACL_XATTR, &acl.encode())
            .map_err(|e| obj_err("grant read ACL", obj.path(), e))
    }

    /// Grants the device group read-write on every device of `exec` the guest cannot open by
    /// its mode; returns the supplementary groups that requires.
    pub(super) fn grant_devices(
        &self,
        guest: &str,
        ids: (u32, u32),
        base_groups: &[u32],
        devices: &[PathBuf],
    ) -> Result<Vec<u32>, DriverError> {
        let root = self.root()?;
        let mut extra = Vec::new();
        let mut done = Vec::new();
        let r = (|| {
            for d in devices {
                let obj = root.open_object(d).map_err(|e| obj_err("open", d, e))?;
                let m = obj.meta();
                if can_rw(&m, ids, base_groups) {
                    continue;
                }
                let gid = self.device_gid()?;
                if !extra.contains(&gid) {
                    extra.push(gid);
                }
                let mut groups = base_groups.to_vec();
                groups.push(gid);
                if can_rw(&m, ids, &groups) {
                    continue;
                }
                self.grant_acl(guest, obj, gid, &mut done)?;
            }
            Ok(())
        })();
        if let Err(e) = r {
            for obj in done.iter().rev() {
                let _ = self.restore_object(guest, obj);
            }
            return Err(e);
        }
        Ok(extra)
    }

    /// Adds `group:gid:rw-` (and a mask letting it through) to `obj`'s access ACL, after
    /// recording what restore needs to put back exactly: whether there was an ACL, the
    /// group's entry (its rights, or that it had none), the mask, and the gid itself.
    pub(super) fn grant_acl(
        &self,
        guest: &str,
        obj: Object,
        gid: u32,
        done: &mut Vec<Object>,
    ) -> Result<(), DriverError> {
        // From the read of the ACL to its write: a stop of another guest using the grant
        // cannot undo it (or drop its record) in between.
        let _key = self.store.lock_object(object_key(obj.identity()));
        // Now, not at open: another guest's restore may have changed it since.
        let (meta, current) = meta_and_acl(&obj)?;
        let (mut acl, mut f) = match &current {
            None => (Acl::from_mode(meta.mode), flags::ACL_CREATED | flags::MODE),
            Some(bytes) => {
                let acl = Acl::parse(bytes).ok_or_else(|| {
                    DeviceAclError::Unreadable {
                        device: obj.path().to_path_buf(),
                    }
                    .into_driver("read ACL")
                })?;
                let mut f = flags::ACL_ENTRY | flags::MODE;
                if let Some(mask) = acl.get(ACL_MASK, ACL_UNDEFINED_ID) {
                    f |= flags::ACL_HAD_MASK | (u32::from(mask & 7) << flags::ACL_MASK_SHIFT);
                }
                if let Some(perm) = acl.get(ACL_GROUP, gid) {
                    f |= flags::ACL_HAD_GROUP_ENTRY
                        | (u32::from(perm & 7) << flags::ACL_GROUP_PERM_SHIFT);
                }
                (acl, f)
            }
        };
        let granted = acl.get(ACL_GROUP, gid).is_some_and(|p| p & 6 == 6)
            && acl
                .get(ACL_MASK, ACL_UNDEFINED_ID)
                .is_some_and(|p| p & 6 == 6);
        if granted || self.joins_grant(&obj, gid)? {
            // Granted already (by another guest, or by the administrator), or recorded by a
            // guest still using it (the ACL may have been changed since, but the record holds
            // the true original): only join the record, so that the last guest using the
            // grant restores the original, and flags of a later state are not merged in.
            f = 0;
        }
        let mut original = original_of(&obj, meta, f)?;
        if f != 0 {
            original.model_flags.insert(ACL_GID_KEY.to_string(), gid);
        }
        self.store
            .record_original_if_absent(object_key(obj.identity()), &original, &owner_key(guest))
            .map_err(store_err)?;
        done.push(obj);
        let Some(obj) = done.last() else {
            return Ok(());
        };
        if !granted {
            acl.set(ACL_GROUP, gid, 6);
            let mask = acl.group_class_union();
            acl.set(ACL_MASK, ACL_UNDEFINED_ID, mask);
            obj.set_xattr(ACL_XATTR, &acl.encode())
                .map_err(|e| obj_err("set ACL", obj.path(), e))?;
        }
        Ok(())
    }

    /// Whether `obj` already has a DAC grant record of the same object (another guest's):
    /// then the new user joins it. A recorded grant for another gid is an error: one record
    /// cannot say how to undo two.
    pub(super) fn joins_grant(&self, obj: &Object, gid: u32) -> Result<bool, DriverError> {
        let Some(rec) = self
            .store
            .get_original(object_key(obj.identity()))
            .map_err(store_err)?
        else {
            return Ok(false);
        };
        let dac_user = rec
            .owners
            .iter()
            .any(|o| crate::owners::split_owner(o).0 == MODEL_KEY);
        let same = rec
            .original
            .identity
            .same_object(&store_identity(obj.identity()));
        if !dac_user || !same || !is_grant(&rec.original) {
            return Ok(false);
        }
        match rec.original.model_flags.get(ACL_GID_KEY) {
            Some(&recorded) if recorded != gid => Err(DeviceAclError::GroupChanged {
                device: obj.path().to_path_buf(),
                recorded,
                configured: gid,
            }
            .into_driver("grant ACL")),
            _ => Ok(true),
        }
    }
}

/// Tree entries of a read-only share: adds `user:<uid>:r--` (`r-x` on a directory) and
/// widens the mask by that, in ONE `setxattr` (atomic: a kill leaves the entry either as it
/// was or granted). `Ok(false)`: the entry grants it already. An unparsable ACL is an error.
pub(crate) fn tree_grant_read(obj: &Object, uid: u32) -> io::Result<bool> {
    let meta = obj.current_meta()?;
    let perm: u16 = if meta.is_dir() { 5 } else { 4 };
    let mut acl = match obj.get_xattr(ACL_XATTR)? {
        None => Acl::from_mode(meta.mode),
        Some(b) => Acl::parse(&b).ok_or_else(|| io::Error::from_raw_os_error(libc::EINVAL))?,
    };
    let has = acl.get(ACL_USER, uid).is_some_and(|p| p & perm == perm);
    let mask = acl.get(ACL_MASK, ACL_UNDEFINED_ID);
    if has && mask.is_some_and(|m| m & perm == perm) {
        return Ok(false);
    }
    acl.set(ACL_USER, uid, acl.get(ACL_USER, uid).unwrap_or(0) | perm);
    let mask = match mask {
        Some(m) => m | perm,
        None => acl.group_class_union(),
    };
    acl.set(ACL_MASK, ACL_UNDEFINED_ID, mask);
    obj.set_xattr(ACL_XATTR, &acl.encode())?;
    Ok(true)
}

/// Tree entries of a read-only share: removes the `user:` entries of `uids`. With `orig_mode`
/// (the last user leaves), the entry's original ACL and mode come back: when named entries
/// remain (an administrator's), the mask is the original one (the original mode's group bits:
/// with an ACL they are its mask), written in one `setxattr`; when none remain, the mode is
/// put back first (the kernel sets the mask from it, and our entry, still there, marks the
/// entry for a restore killed here) and the ACL removed after. Without `orig_mode` (other
/// readers remain) the mask is left. `Ok(false)`: no entry of `uids` was there.
pub(crate) fn tree_drop_read(
    obj: &Object,
    uids: &[u32],
    orig_mode: Option<u32>,
) -> io::Result<bool> {
    let Some(b) = obj.get_xattr(ACL_XATTR)? else {
        return Ok(false);
    };
    let mut acl = Acl::parse(&b).ok_or_else(|| io::Error::from_raw_os_error(libc::EINVAL))?;
    if !uids.iter().any(|&u| acl.get(ACL_USER, u).is_some()) {
        return Ok(false);
    }
    for &u in uids {
        acl.remove(ACL_USER, u);
    }
    match orig_mode {
        None => obj.set_xattr(ACL_XATTR, &acl.encode())?,
        Some(mode) if acl.has_named() => {
            acl.set(ACL_MASK, ACL_UNDEFINED_ID, ((mode >> 3) & 7) as u16);
            obj.set_xattr(ACL_XATTR, &acl.encode())?;
        }
        Some(mode) => {
            obj.chmod(mode & 0o7777)?;
            obj.remove_xattr(ACL_XATTR)?;
        }
    }
    Ok(true)
}
