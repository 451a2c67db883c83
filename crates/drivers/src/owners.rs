//! The ledger's vocabulary shared by every driver: who holds a record (an owner is
//! `"<model>/<guest>"`) and which attributes a model changed (its bits in the record's
//! `model_flags[<model>]`). The store keeps records opaque; the drivers agree on these.

/// `model_flags["selinux"]` (or `["smack"]`) bit: the label was changed and must be
/// restored.
pub const FLAG_LABEL: u32 = 1;
/// `model_flags["dac"]` bit: owner/group were changed.
pub const FLAG_DAC_OWNER: u32 = 1;
/// `model_flags["dac"]` bit: the mode was changed.
pub const FLAG_DAC_MODE: u32 = 2;

/// The owner string of `guest` under `model` in the originals tables.
pub fn owner_key(model: &str, guest: &str) -> String {
    format!("{model}/{guest}")
}

/// Splits an owner string back into (model, guest).
pub fn split_owner(owner: &str) -> (&str, &str) {
    owner.split_once('/').unwrap_or(("", owner))
}
