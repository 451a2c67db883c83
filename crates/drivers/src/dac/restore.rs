//! What DAC puts back: the original owner, group and mode, and the ACL entries it granted
//! (a device group's, a guest's read entry), from the ledger's record. One path for the
//! driver's restore and the ledger's release of any model's owners ([`leave`]).

use super::*;

/// What DAC puts back when its users `leaving` (guest names) leave the record `orig` of
/// `obj`: the one path for it, taken by the DAC driver's restore and by the ledger's
/// release of any model's owners (the relabel engine's restore and crash sweep). The caller
/// holds the object's lock and checked that `obj` is the recorded object.
///
/// With no DAC user staying (`dac_remains` false), DAC's change is undone
/// ([`restore_original`]; the device group is asked of `device_gid` only for a record that
/// does not name its gid). Otherwise the object stays as the remaining users have it and
/// only each leaving guest's own read entry goes ([`drop_read_entry`]).
pub(crate) fn leave(
    obj: &Object,
    orig: &Original,
    leaving: &[&str],
    dac_remains: bool,
    device_gid: &dyn Fn() -> Result<u32, DriverError>,
) -> Result<(), DriverError> {
    if !dac_remains {
        let gid = if needs_device_gid(orig) {
            Some(device_gid().map_err(|e| {
                DeviceAclError::NoGroup {
                    device: obj.path().to_path_buf(),
                    reason: e.to_string(),
                }
                .into_driver("restore ACL")
            })?)
        } else {
            None
        };
        return restore_original(obj, orig, gid);
    }
    for g in leaving {
        drop_read_entry(obj, orig, g, leaving)?;
    }
    Ok(())
}

/// The keys of a record's `model_flags` that go with DAC user `guest`: its read grant's,
/// and, when it is the last DAC user (`last`), DAC's flags and granted gid, which describe
/// changes undone now (the store merges a later DAC user's flags into them with a bitwise
/// or: a grant for another gid would record the two gids or-ed).
pub(crate) fn leave_keys(guest: &str, last: bool) -> Vec<String> {
    let mut keys: Vec<String> = read_keys(guest).into();
    if last {
        keys.extend([MODEL_KEY.to_string(), ACL_GID_KEY.to_string()]);
    }
    keys
}

/// Puts owner, mode and ACL back as `orig` says, for what DAC's flags say it changed. Public
/// so that crash recovery can undo DAC's ACL grants as well as owner and mode.
///
/// The ACL: the entry of the granted group (the gid recorded under [`ACL_GID_KEY`]; for
/// records without it, `device_gid`) gets back the rights it had, or is removed if it did not
/// exist, and the mask gets back its value (or goes, if there was none and no named entry
/// needs one); every other entry is left as it is now. An ACL DAC created is removed once
/// nothing but the base entries is left. Owner and mode are restored before the ACL is
/// written, so where entries added since need a mask, the mode's group bits are that mask
/// (as POSIX has them), not the original group bits. What cannot be resolved (no gid, the ACL DAC changed
/// is gone or unreadable) is a [`DeviceAclError`] naming the device, never skipped.
pub fn restore_original(
    obj: &Object,
    orig: &Original,
    device_gid: Option<u32>,
) -> Result<(), DriverError> {
    let f = orig.model_flags.get(MODEL_KEY).copied().unwrap_or(0);
    if f & flags::OWNER != 0 {
        obj.chown(orig.uid, orig.gid)
            .map_err(|e| obj_err("restore owner", obj.path(), e))?;
    }
    if f & (flags::MODE | flags::OWNER) != 0 {
        obj.chmod(orig.mode)
            .map_err(|e| obj_err("restore mode", obj.path(), e))?;
    }
    // The ACL last: a chmod on an object with an ACL sets its mask to the mode's group bits
    // (the kernel's posix_acl_chmod), which would undo the mask computed here. Written
    // after, the mask is the intended one and the mode's group bits follow it (POSIX).
    if f & (flags::ACL_CREATED | flags::ACL_ENTRY) != 0 {
        restore_acl(obj, orig, f, device_gid)?;
    }
    Ok(())
}

/// Removes `guest`'s read entry from `obj`'s access ACL (or gives its uid back the entry it
/// had), leaving every other entry and the mask as they are: used when the guest leaves an
/// object other DAC users still hold. Nothing to do without a recorded read grant of the
/// guest, or without an ACL (removed since: nothing of ours is left). Public so that crash
/// recovery drops a dead guest's entry too.
///
/// Guests with one static uid (`<seclabel model='dac' type='static'>`) share its entry: it
/// stays while a reader not in `leaving` has the same uid.
pub fn drop_read_entry(
    obj: &Object,
    orig: &Original,
    guest: &str,
    leaving: &[&str],
) -> Result<(), DriverError> {
    let Some(&uid) = orig.model_flags.get(&read_uid_key(guest)) else {
        return Ok(());
    };
    let prefix = format!("{MODEL_KEY}.read_uid/");
    let shared_uid = orig.model_flags.iter().any(|(k, &u)| {
        k.strip_prefix(&prefix)
            .is_some_and(|g| g != guest && !leaving.contains(&g) && u == uid)
    });
    if shared_uid {
        return Ok(());
    }
    let prev = orig
        .model_flags
        .get(&read_prev_key(guest))
        .copied()
        .unwrap_or(0);
    let Some(bytes) = obj
        .get_xattr(ACL_XATTR)
        .map_err(|e| obj_err("read ACL", obj.path(), e))?
    else {
        return Ok(());
    };
    let mut acl = Acl::parse(&bytes).ok_or_else(|| {
        DeviceAclError::Unreadable {
            device: obj.path().to_path_buf(),
        }
        .into_driver("restore ACL")
    })?;
    restore_user_entry(&mut acl, uid, prev);
    obj.set_xattr(ACL_XATTR, &acl.encode())
        .map_err(|e| obj_err("restore ACL", obj.path(), e))
}

/// Puts `uid`'s entry back as `prev` ([`flags::READ_PREV_HAD`] and rights) records it.
pub(super) fn restore_user_entry(acl: &mut Acl, uid: u32, prev: u32) {
    if prev & flags::READ_PREV_HAD != 0 {
        acl.set(ACL_USER, uid, (prev & 7) as u16);
    } else {
        acl.remove(ACL_USER, uid);
    }
}

/// Every (uid, previous entry) of read grants `orig` records.
pub(super) fn read_entries(orig: &Original) -> Vec<(u32, u32)> {
    let prefix = format!("{MODEL_KEY}.read_uid/");
    orig.model_flags
        .iter()
        .filter_map(|(k, &uid)| {
            let guest = k.strip_prefix(&prefix)?;
            let prev = orig
                .model_flags
                .get(&read_prev_key(guest))
                .copied()
                .unwrap_or(0);
            Some((uid, prev))
        })
        .collect()
}

/// Whether `orig` records a read grant.
pub(super) fn is_read_grant(orig: &Original) -> bool {
    orig.model_flags.get(MODEL_KEY).copied().unwrap_or(0) & flags::READ_GRANT != 0
}

/// Whether `orig` records a device ACL grant.
pub(super) fn is_grant(orig: &Original) -> bool {
    orig.model_flags.get(MODEL_KEY).copied().unwrap_or(0) & (flags::ACL_CREATED | flags::ACL_ENTRY)
        != 0
}

/// Whether restoring `orig` needs the device group's gid from the configuration: an ACL
/// grant recorded without its gid.
pub(super) fn needs_device_gid(orig: &Original) -> bool {
    is_grant(orig) && !is_read_grant(orig) && !orig.model_flags.contains_key(ACL_GID_KEY)
}

pub(super) fn restore_acl(
    obj: &Object,
    orig: &Original,
    f: u32,
    device_gid: Option<u32>,
) -> Result<(), DriverError> {
    let device = || obj.path().to_path_buf();
    // A read grant has no group entry (unless a device grant shares the record, which
    // then names its gid).
    let gid = match orig.model_flags.get(ACL_GID_KEY) {
        Some(&g) => Some(g),
        None if f & flags::READ_GRANT != 0 => None,
        None => Some(device_gid.ok_or_else(|| {
            DeviceAclError::NoGroup {
                device: device(),
                reason: "no device gid given".into(),
            }
            .into_driver("restore ACL")
        })?),
    };
    let cur = obj
        .get_xattr(ACL_XATTR)
        .map_err(|e| obj_err("read ACL", obj.path(), e))?;
    let Some(bytes) = cur else {
        if f & flags::ACL_CREATED != 0 {
            // No ACL, as before the grant.
            return Ok(());
        }
        return Err(DeviceAclError::AclGone {
            device: device(),
            gid: gid.unwrap_or(u32::MAX),
        }
        .into_driver("restore ACL"));
    };
    let mut acl = Acl::parse(&bytes).ok_or_else(|| {
        DeviceAclError::Unreadable { device: device() }.into_driver("restore ACL")
    })?;
    if let Some(gid) = gid {
        if f & flags::ACL_HAD_GROUP_ENTRY != 0 {
            let perm = ((f >> flags::ACL_GROUP_PERM_SHIFT) & 7) as u16;
            acl.set(ACL_GROUP, gid, perm);
        } else {
            acl.remove(ACL_GROUP, gid);
        }
    }
    for (uid, prev) in read_entries(orig) {
        restore_user_entry(&mut acl, uid, prev);
    }
    if f & flags::ACL_HAD_MASK != 0 {
        let mask = ((f >> flags::ACL_MASK_SHIFT) & 7) as u16;
        acl.set(ACL_MASK, ACL_UNDEFINED_ID, mask);
    } else if acl.has_named() {
        // Entries added since need a mask; the least one letting them through.
        let mask = acl.group_class_union();
        acl.set(ACL_MASK, ACL_UNDEFINED_ID, mask);
    } else {
        acl.remove(ACL_MASK, ACL_UNDEFINED_ID);
    }
    if f & flags::ACL_CREATED != 0
        && !acl.has_named()
        && acl.get(ACL_MASK, ACL_UNDEFINED_ID).is_none()
    {
        obj.remove_xattr(ACL_XATTR)
            .map_err(|e| obj_err("remove ACL", obj.path(), e))
    } else {
        obj.set_xattr(ACL_XATTR, &acl.encode())
            .map_err(|e| obj_err("restore ACL", obj.path(), e))
    }
}
