//! A guest's MCS level, for the models that label by level (SELinux, BPF-LSM): reserved
//! in the ledger, released, and described, the same way whichever model holds it.

use svirt_domain::{LevelSource, Model};
use svirt_labels::MlsRange;
use svirt_store::{LevelAllocator, Store};

use crate::{DriverError, GuestSecurity};

fn store_err(model: Model) -> impl Fn(svirt_store::Error) -> DriverError {
    move |e| DriverError::Store {
        model,
        message: e.to_string(),
    }
}

/// Reserves the level `source` asks for into `guest.level`: a dynamic one drawn from
/// `levels` (unless one is already given), a static one reserved for the guest.
pub(crate) fn reserve(
    model: Model,
    levels: Option<&LevelAllocator>,
    source: LevelSource,
    guest: &mut GuestSecurity,
) -> Result<(), DriverError> {
    match source {
        LevelSource::None => Ok(()),
        LevelSource::Dynamic => {
            if guest.level.is_some() {
                // Allocated (and owned) by the manager.
                return Ok(());
            }
            let alloc = levels.ok_or_else(|| DriverError::Unavailable {
                model,
                reason: "dynamic level asked for but no level allocator is configured".into(),
            })?;
            let level = alloc.allocate(&guest.name).map_err(store_err(model))?;
            guest.level = Some(MlsRange::single(level));
            Ok(())
        }
        LevelSource::Static(r) => {
            if let Some(alloc) = levels {
                let held = alloc
                    .reservation(&r.low)
                    .is_some_and(|res| res.owners.contains(&guest.name));
                if !held {
                    alloc
                        .reserve(&r.low, &guest.name, false)
                        .map_err(store_err(model))?;
                }
            }
            guest.level = Some(r);
            Ok(())
        }
    }
}

/// Releases the guest's level if it holds it. Idempotent.
pub(crate) fn release(
    model: Model,
    levels: Option<&LevelAllocator>,
    guest: &GuestSecurity,
) -> Result<(), DriverError> {
    let (Some(alloc), Some(level)) = (levels, &guest.level) else {
        return Ok(());
    };
    match alloc.reservation(&level.low) {
        Some(res) if res.owners.contains(&guest.name) => alloc
            .release(&level.low, &guest.name)
            .map_err(store_err(model)),
        _ => Ok(()),
    }
}

/// What the ledger holds for `owner` (`level s0:c1,c2`), or `None`.
pub(crate) fn held_for(store: &Store, owner: &str) -> Option<String> {
    match store.levels_of(owner) {
        Ok(l) if l.is_empty() => None,
        Ok(l) => Some(format!(
            "level {}",
            l.iter()
                .map(|l| l.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        )),
        Err(_) => Some("its level".into()),
    }
}

/// Releases the guest's level and every other level the ledger still has reserved for its
/// name (one an earlier run kept because its restore failed); every failure reported.
pub(crate) fn release_owner(
    model: Model,
    levels: Option<&LevelAllocator>,
    store: &Store,
    guest: &GuestSecurity,
) -> Vec<DriverError> {
    let mut errors: Vec<DriverError> = release(model, levels, guest).err().into_iter().collect();
    let held = match store.levels_of(&guest.name) {
        Ok(l) => l,
        Err(e) => {
            errors.push(DriverError::Other {
                model,
                message: format!(
                    "listing the levels {} still holds: {e}; they stay reserved",
                    guest.name
                ),
            });
            Vec::new()
        }
    };
    for l in held {
        let one = GuestSecurity {
            name: guest.name.clone(),
            level: Some(MlsRange::single(l)),
            ids: guest.ids,
        };
        errors.extend(release(model, levels, &one).err());
    }
    errors
}
