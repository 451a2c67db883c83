//! The resource model and the labeling plan: the contract between the planner and every
//! security driver. Drivers consume a [`Plan`]; none of them re-parses XML or re-walks
//! the domain.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use svirt_labels::{Context, Identifier, MlsRange};

/// The text that stands for a guest level not yet allocated, everywhere in a plan.
pub const LEVEL_PLACEHOLDER: &str = "@LEVEL@";

/// The text that stands for the guest's uid (DAC), not yet allocated, in a rendered plan.
pub const UID_PLACEHOLDER: &str = "@UID@";

/// The text that stands for the guest's gid (DAC), not yet allocated, in a rendered plan.
pub const GID_PLACEHOLDER: &str = "@GID@";

/// A security model (driver) name as it appears in `<seclabel model=…>` and in plans.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Model {
    /// SELinux (sVirt's original model).
    Selinux,
    /// Discretionary access control: a distinct uid/gid per guest.
    Dac,
    /// Landlock path-based confinement applied to the VMM process.
    Landlock,
    /// AppArmor: a profile per guest.
    Apparmor,
    /// The BPF LSM enforcing SELinux's MCS rule for `svirt_t` (crates/bpf): the guest's
    /// level and the objects' levels are those SELinux would give them.
    BpfLsm,
    /// SMACK: a label per guest, derived from its MCS level (`svirt-c41-c264`), on its
    /// VMM and its private objects; shared and read-only objects get labels every guest is
    /// given a rule for ([`crate::smack`]).
    Smack,
}

impl Model {
    /// Every model svirt knows.
    pub const ALL: [Model; 6] = [
        Model::Selinux,
        Model::Dac,
        Model::Landlock,
        Model::Apparmor,
        Model::BpfLsm,
        Model::Smack,
    ];

    /// The models whose labels are MCS levels, planned once for all of them.
    pub const MCS: [Model; 3] = [Model::Selinux, Model::BpfLsm, Model::Smack];

    /// The name used in XML and JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            Model::Selinux => "selinux",
            Model::Dac => "dac",
            Model::Landlock => "landlock",
            Model::Apparmor => "apparmor",
            Model::BpfLsm => "bpf-lsm",
            Model::Smack => "smack",
        }
    }

    /// Parses a model name; `None` for a model svirt does not have.
    pub fn from_name(name: &str) -> Option<Model> {
        Model::ALL.into_iter().find(|m| m.as_str() == name)
    }
}

impl fmt::Display for Model {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a host object is to the guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ResourceKind {
    /// A disk image at the top of its chain (`device='disk'`).
    DiskImage,
    /// An image below the top of a backing chain.
    BackingImage,
    /// A CD-ROM image.
    Cdrom,
    /// A floppy image.
    Floppy,
    /// Direct kernel boot: the kernel.
    Kernel,
    /// Direct kernel boot: the initrd.
    Initrd,
    /// A device tree blob.
    Dtb,
    /// Firmware code (UEFI CODE, BIOS).
    Loader,
    /// UEFI variable store (VARS).
    Nvram,
    /// A chardev backed by a regular file.
    ChardevFile,
    /// A chardev backed by a named pipe (`p`, or `p.in` and `p.out`).
    ChardevPipe,
    /// A chardev backed by a unix socket.
    ChardevSocket,
    /// A chardev backed by a host device node (`type='dev'`).
    ChardevDevice,
    /// A directory shared with `<filesystem>`: labeled recursively.
    FilesystemTree,
    /// A host device node passed through (`/dev/bus/usb/…`, `/dev/vfio/N`).
    HostdevNode,
    /// Directory holding a TPM emulator's state: labeled recursively.
    TpmState,
    /// File or directory backing guest memory.
    MemoryBacking,
}

/// What the guest's VMM must be able to do with a resource.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Access {
    /// Read and write.
    Rw,
    /// Read only.
    Ro,
}

/// Who else may use a resource: decides which label it gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Sharing {
    /// Only this guest: gets the guest's own image label.
    Private,
    /// Several guests read and write it (`<shareable/>`).
    Shared,
    /// Read-only content any guest may read (CD-ROM, backing images, kernels).
    ReadOnlyContent,
}

/// A per-device override for one model, from `<source><seclabel model=…>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "override", content = "label")]
pub enum DeviceOverride {
    /// `relabel='no'`: leave the object as it is for this model.
    NoRelabel,
    /// `<label>`: use this label instead of the computed one.
    Label(String),
}

/// One host object the guest uses. The planner produces each path once per guest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resource {
    /// Absolute path, with no symlink in any component (resolved and checked by the planner).
    pub path: PathBuf,
    /// What the object is to the guest.
    pub kind: ResourceKind,
    /// What the VMM needs.
    pub access: Access,
    /// Who else may use it.
    pub sharing: Sharing,
    /// Whether the whole tree below `path` is covered (filesystem shares, TPM state).
    pub recursive: bool,
    /// The device it comes from, for humans (`disk vda`, `serial 0`, `os kernel`).
    pub device: String,
    /// Per-model overrides from the device's `<seclabel>` elements.
    pub overrides: BTreeMap<Model, DeviceOverride>,
    /// The object the planner resolved and the object policy judged: drivers check they
    /// change this object and no other (a name swapped in between is refused). `None` in
    /// plans made before svirt recorded it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity: Option<ObjectIdentity>,
}

/// Device and inode of a planned object.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ObjectIdentity {
    /// Device of its file system.
    pub dev: u64,
    /// Inode.
    pub ino: u64,
}

/// The level part of a planned label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
// A range is a fixed-size bitset (2 x 1024 bits): kept inline so these stay `Copy`/cheap
// to compare; plans hold a handful of them.
#[allow(clippy::large_enum_variant)]
pub enum LevelSpec {
    /// The guest's own level (shown as [`LEVEL_PLACEHOLDER`] until it is allocated).
    Guest,
    /// A fixed range, e.g. `s0` for shared and read-only content.
    Fixed(MlsRange),
}

/// A label to set, possibly waiting for the guest's level.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LabelTemplate {
    /// SELinux user.
    pub user: Identifier,
    /// Role.
    pub role: Identifier,
    /// Type.
    pub type_: Identifier,
    /// Level.
    pub level: LevelSpec,
}

impl LabelTemplate {
    /// A template from a context, keeping its range fixed (or the guest's when it has none).
    pub fn from_context(c: &Context) -> Self {
        LabelTemplate {
            user: c.user.clone(),
            role: c.role.clone(),
            type_: c.type_.clone(),
            level: c.range.map_or(LevelSpec::Guest, LevelSpec::Fixed),
        }
    }

    /// The concrete context once the guest's level is known.
    pub fn resolve(&self, guest: &MlsRange) -> Context {
        let range = match self.level {
            LevelSpec::Guest => *guest,
            LevelSpec::Fixed(r) => r,
        };
        Context {
            user: self.user.clone(),
            role: self.role.clone(),
            type_: self.type_.clone(),
            range: Some(range),
        }
    }

    /// The text of the label, with [`LEVEL_PLACEHOLDER`] when the level is the guest's
    /// and `guest` is not known yet.
    pub fn display(&self, guest: Option<&MlsRange>) -> String {
        match (self.level, guest) {
            (LevelSpec::Fixed(g), _) | (LevelSpec::Guest, Some(&g)) => {
                format!("{}:{}:{}:{}", self.user, self.role, self.type_, g)
            }
            (LevelSpec::Guest, None) => format!(
                "{}:{}:{}:{LEVEL_PLACEHOLDER}",
                self.user, self.role, self.type_
            ),
        }
    }
}

/// What the DAC model does to a resource.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DacAction {
    /// Leave owner and mode alone.
    Untouched,
    /// Chown to the guest's uid/gid; with `private`, tighten the mode to owner-only.
    OwnGuest {
        /// Tighten the mode to owner-only (no group/other bits).
        private: bool,
    },
    /// Chown the group to the shared guest group and grant it read-write.
    SharedGroup,
    /// A private tree (a filesystem share) shown to the guest through an idmapped mount
    /// in the VMM's jail: the tree root's owner and group appear as the guest's uid and
    /// gid, entries owned by anyone else as `nobody`. Nothing on disk changes, so nothing
    /// is restored; the mount dies with the VMM's mount namespace. The manager falls back
    /// to [`DacAction::OwnGuest`] (naming why) where the file system cannot be idmapped.
    IdmapGuest,
    /// Grant the guest alone read access (search on directories) through a POSIX ACL entry
    /// for its uid; owner, mode and every other ACL entry unchanged. Never `o+r`: other
    /// local users (and other guests) get nothing.
    GrantRead,
    /// Chown to this uid/gid: a per-device `<seclabel model='dac'><label>` override.
    Owner {
        /// Owner uid.
        uid: u32,
        /// Owner gid.
        gid: u32,
    },
}

/// One resource with what every model does to it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlannedResource {
    /// The resource.
    pub resource: Resource,
    /// SELinux: the label to set, or `None` to leave the object untouched.
    pub selinux: Option<LabelTemplate>,
    /// Why SELinux gets that label (the rule of the reference table that applied).
    pub selinux_reason: String,
    /// Whether the SELinux label is restored at stop (never for shared and read-only content).
    pub selinux_restore: bool,
    /// DAC: owner and mode to set.
    pub dac: DacAction,
    /// Path-based confinement (Landlock, AppArmor): access to grant beneath `path`.
    pub path_access: Access,
}

/// How the guest process is confined by one model.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
// A range is a fixed-size bitset (2 x 1024 bits): kept inline so these stay `Copy`/cheap
// to compare; plans hold a handful of them.
#[allow(clippy::large_enum_variant)]
pub enum ProcessLabel {
    /// Unconfined by this model (`type='none'`, or the model is off).
    Unconfined,
    /// A label, possibly waiting for the guest's level.
    Label(LabelTemplate),
}

/// How the guest's level is obtained.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
// A range is a fixed-size bitset (2 x 1024 bits): kept inline so these stay `Copy`/cheap
// to compare; plans hold a handful of them.
#[allow(clippy::large_enum_variant)]
pub enum LevelSource {
    /// Allocated by svirt at start (`type='dynamic'`).
    Dynamic,
    /// Given in the XML (`type='static'`).
    Static(MlsRange),
    /// No level (SELinux `type='none'` or SELinux not planned).
    None,
}

/// The plan for one guest: every resource once, and what each model does.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Plan {
    /// Guest name.
    pub name: String,
    /// Guest UUID (generated when the XML has none).
    pub uuid: String,
    /// Models planned for (those the domain or the host configuration names).
    pub models: Vec<Model>,
    /// SELinux process label.
    pub selinux_process: ProcessLabel,
    /// Where the level comes from.
    pub level: LevelSource,
    /// Whether SELinux relabels resources at all (`relabel='yes'`).
    pub selinux_relabel: bool,
    /// Whether the DAC model is on for this guest (else it is left running as is).
    pub dac_enabled: bool,
    /// Every resource, each path once.
    pub resources: Vec<PlannedResource>,
    /// DAC: the uid/gid the guest runs as when the domain gives a static DAC label
    /// (`<seclabel model='dac' type='static'><label>+107:+107</label>`); `None` means one
    /// is allocated per guest.
    pub dac_ids: Option<(u32, u32)>,
    /// Models in [`Plan::models`] that the domain turns off (`type='none'`): they confine
    /// nothing and change nothing for this guest.
    pub unconfined: Vec<Model>,
    /// The backing chain of every disk with a source, as planned: the VMM is given these
    /// layers one by one and never follows an image header on its own.
    #[serde(default)]
    pub disk_chains: Vec<DiskChain>,
}

/// The backing chain of one disk: the layers below its top image, the top's own backing
/// file first. Built once, by the planner, from the XML's `<backingStore>` layers and the
/// qcow2 headers below them (each layer also a [`Resource`] of kind `backing-image`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiskChain {
    /// Index of the disk in the domain's `<disk>` elements.
    pub disk: usize,
    /// Backing layers, top first (empty: the top image has none).
    pub layers: Vec<ChainLayer>,
}

/// One backing layer of a disk.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChainLayer {
    /// The layer's resolved path (no symlink in it).
    pub path: PathBuf,
    /// Its format (declared in the XML or in the header of the layer above).
    pub format: ImageFormat,
    /// Whether it is a block device.
    pub block: bool,
}

impl Plan {
    /// The planned backing chain of `domain.disks[disk]`, if that disk has a source.
    pub fn chain_of(&self, disk: usize) -> Option<&DiskChain> {
        self.disk_chains.iter().find(|c| c.disk == disk)
    }
}

impl Plan {
    /// Whether `model` is planned and confines this guest.
    pub fn is_confined(&self, model: Model) -> bool {
        self.models.contains(&model) && !self.unconfined.contains(&model)
    }
}
/// Image format, from `<driver type=…>` or `<format type=…>` (the XML's, and each layer
/// of a planned backing chain).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ImageFormat {
    /// Raw: never inspected.
    Raw,
    /// qcow2: its header may name a backing file.
    Qcow2,
}

impl ImageFormat {
    /// The name used in XML and in qcow2 headers.
    pub fn as_str(self) -> &'static str {
        match self {
            ImageFormat::Raw => "raw",
            ImageFormat::Qcow2 => "qcow2",
        }
    }
}
