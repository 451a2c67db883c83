//! Shared objects (`<shareable/>`): a group of their own from the guest id range, owned in
//! the ledger by the object, released when no guest uses the object any more.

use super::*;

/// The id reservation owner of a shared object's group: `shared-object/<dev>:<ino>` (a '/'
/// no guest name has).
pub fn shared_owner(key: ObjectKey) -> String {
    format!("shared-object/{}:{}", key.dev, key.ino)
}

/// The object of a [`shared_owner`] reservation.
pub(super) fn parse_shared_owner(owner: &str) -> Option<ObjectKey> {
    let (dev, ino) = owner.strip_prefix("shared-object/")?.split_once(':')?;
    Some(ObjectKey {
        dev: dev.parse().ok()?,
        ino: ino.parse().ok()?,
    })
}

impl DacDriver {
    /// The group of a `<shareable/>` object: an id of the guest range reserved for that
    /// object alone (owner [`shared_owner`]), durable before it is used, the same for every
    /// guest sharing the object and released with its last DAC user. Only those guests get
    /// it as a supplementary group, so a third guest (or one sharing another object) cannot
    /// open the object. Needs no configuration.
    pub(super) fn shared_gid(&self, key: ObjectKey) -> Result<u32, DriverError> {
        self.ids.allocate(&shared_owner(key)).map_err(store_err)
    }

    /// Releases the group of shared object `key` when no DAC user holds the object any more
    /// (no record of it, as a single object or as a tree root).
    pub(super) fn release_shared_gid_if_unused(&self, key: ObjectKey) -> Result<(), DriverError> {
        let owner = shared_owner(key);
        let Some(id) = self.ids.id_of(&owner) else {
            return Ok(());
        };
        let held = self
            .store
            .get_original(key)
            .map_err(store_err)?
            .is_some_and(|r| {
                r.owners
                    .iter()
                    .any(|o| crate::owners::split_owner(o).0 == MODEL_KEY)
            });
        let tree = self
            .tree_db()?
            .list()
            .map_err(tree_err)?
            .iter()
            .any(|(k, _, _)| *k == (key.dev, key.ino));
        if held || tree {
            return Ok(());
        }
        self.ids.release(id, &owner).map_err(store_err)
    }

    /// Crash recovery of shared objects' groups: releases every one whose object no DAC
    /// record holds (a crash between the allocation and the record, or after the release).
    pub(super) fn recover_shared_gids(&self, errors: &mut Vec<DriverError>) {
        let reservations = match self.store.id_reservations() {
            Ok(r) => r,
            Err(e) => return errors.push(store_err(e)),
        };
        for (_, owner) in reservations {
            if let Some(key) = parse_shared_owner(&owner)
                && let Err(e) = self.release_shared_gid_if_unused(key)
            {
                errors.push(e);
            }
        }
    }
}
