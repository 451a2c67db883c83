//! What the SMACK model gives a guest's objects, from the plan: one rule for every driver,
//! report and CLI (the driver is `svirt_drivers::smack`).
//!
//! - The guest's own (private) objects: the guest's label
//!   ([`svirt_labels::SmackLabel::for_guest`]); SMACK always lets a label reach itself.
//! - Shared objects (`<shareable/>`): [`SHARED`], which every running guest is given a
//!   read-write rule for (SELinux's `svirt_image_t:s0`).
//! - Read-only content (CD-ROMs, backing images, kernels): [`CONTENT`], read only
//!   (SELinux's `svirt_content_t`).
//! - A per-device `<seclabel model='smack' relabel='no'/>` leaves the object as it is; a
//!   `<label>` there is the label to set.
//! - What SELinux's plan leaves untouched, SMACK leaves too.

use svirt_labels::SmackLabel;

use crate::{DeviceOverride, Model, PlannedResource, Sharing};

/// The label of shared objects.
pub const SHARED: &str = "svirt-shared";

/// The label of read-only content.
pub const CONTENT: &str = "svirt-content";

/// The access a guest's rule grants to [`SHARED`]: read, write, execute (search, for
/// directories), append, lock (QEMU locks its images).
pub const SHARED_ACCESS: &str = "rwxal";

/// The access a guest's rule grants to [`CONTENT`]: read, execute (search).
pub const CONTENT_ACCESS: &str = "rx";

/// The SMACK label a resource gets, given the guest's label (`None` while it is not
/// allocated: shown as `svirt-@LEVEL@`), or `None` when it is left as it is.
/// Errors on a per-device `<label>` that is not a SMACK label.
pub fn object_label(
    r: &PlannedResource,
    guest: Option<&SmackLabel>,
) -> Result<Option<String>, svirt_labels::SmackLabelError> {
    match r.resource.overrides.get(&Model::Smack) {
        Some(DeviceOverride::NoRelabel) => return Ok(None),
        Some(DeviceOverride::Label(l)) => {
            // The guest is given a rule for the label it names: never another guest's,
            // nor one SMACK opens to every subject.
            use svirt_labels::SmackLabelError::Reserved;
            let label = SmackLabel::new(l)?;
            return match label.as_str() {
                "*" | "^" | "@" => Err(Reserved(
                    l.clone(),
                    "SMACK's built-in labels open an object to every subject",
                )),
                SHARED | CONTENT => Ok(Some(label.to_string())),
                t if t.starts_with(svirt_labels::smack::GUEST_PREFIX) => Err(Reserved(
                    l.clone(),
                    "svirt- labels are guests' own (a rule for it would open that guest to this one)",
                )),
                _ => Ok(Some(label.to_string())),
            };
        }
        None => {}
    }
    if r.selinux.is_none() {
        return Ok(None);
    }
    Ok(Some(match r.resource.sharing {
        Sharing::Private => guest.map_or_else(
            || {
                format!(
                    "{}{}",
                    svirt_labels::smack::GUEST_PREFIX,
                    crate::LEVEL_PLACEHOLDER
                )
            },
            SmackLabel::to_string,
        ),
        Sharing::Shared => SHARED.to_string(),
        Sharing::ReadOnlyContent => CONTENT.to_string(),
    }))
}
