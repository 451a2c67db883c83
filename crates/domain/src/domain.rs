//! The parsed domain: everything svirt needs from libvirt's domain XML, both to plan
//! labels and to build the QEMU command line. Produced by [`crate::parse`].

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

pub use crate::model::ImageFormat;
use crate::model::Model;

/// A guest as described by a libvirt `<domain>` element.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Domain {
    /// `<domain type=…>`: hardware-accelerated (`kvm`) or emulated (`qemu`, TCG).
    pub virt_type: VirtType,
    /// `<name>`.
    pub name: String,
    /// `<uuid>`, or a random v4 UUID when the XML has none.
    pub uuid: uuid::Uuid,
    /// Whether [`Domain::uuid`] was generated (not in the XML).
    pub uuid_generated: bool,
    /// `<memory>` in bytes.
    pub memory_bytes: u64,
    /// `<currentMemory>` in bytes, when given.
    pub current_memory_bytes: Option<u64>,
    /// `<vcpu>` (1 when absent).
    pub vcpus: u32,
    /// `<os>`.
    pub os: Os,
    /// `<devices><emulator>`: the VMM binary.
    pub emulator: Option<PathBuf>,
    /// `<disk>` elements, in document order.
    pub disks: Vec<Disk>,
    /// `<filesystem>` elements.
    pub filesystems: Vec<Filesystem>,
    /// `<serial>`, `<console>`, `<channel>`, `<parallel>` elements.
    pub chardevs: Vec<Chardev>,
    /// `<hostdev mode='subsystem'>` elements.
    pub hostdevs: Vec<Hostdev>,
    /// `<tpm>` elements.
    pub tpms: Vec<Tpm>,
    /// `<rng>` devices.
    #[serde(default)]
    pub rngs: Vec<Rng>,
    /// Devices that name no host object (balloon, input, video, USB controller, VNC on
    /// a runtime-directory socket, watchdog), in document order.
    #[serde(default)]
    pub plain_devices: Vec<crate::devices::PlainDevice>,
    /// `<controller type='usb' model='none'/>`: no USB controller, not even one a USB
    /// device would need.
    #[serde(default)]
    pub usb_disabled: bool,
    /// `<memoryBacking>`.
    pub memory_backing: Option<MemoryBacking>,
    /// Domain-level `<seclabel>` elements, at most one per model, validated.
    pub seclabels: Vec<SecLabel>,
}

impl Domain {
    /// The domain-level seclabel of one model, if the XML has one.
    pub fn seclabel(&self, model: Model) -> Option<&SecLabel> {
        self.seclabels.iter().find(|s| s.model == model)
    }
}

/// `<domain type=…>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum VirtType {
    /// KVM acceleration.
    Kvm,
    /// Pure emulation (TCG); SELinux may use a different process type for it.
    Qemu,
}

/// `<os>`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Os {
    /// `<type>` text (`hvm`).
    pub os_type: String,
    /// `<type arch=…>`.
    pub arch: Option<String>,
    /// `<type machine=…>`.
    pub machine: Option<String>,
    /// `<loader>`: firmware code.
    pub loader: Option<Loader>,
    /// `<nvram>`: UEFI variable store.
    pub nvram: Option<Nvram>,
    /// `<kernel>`: direct kernel boot.
    pub kernel: Option<PathBuf>,
    /// `<initrd>`.
    pub initrd: Option<PathBuf>,
    /// `<dtb>`.
    pub dtb: Option<PathBuf>,
    /// `<cmdline>`: kernel command line.
    pub cmdline: Option<String>,
    /// `<os firmware='efi'>`: the manager picks UEFI code and a variable store from the
    /// host's firmware descriptors where `<loader>`/`<nvram>` do not name them.
    #[serde(default)]
    pub firmware_efi: bool,
    /// `<boot dev=…>` in order (`hd`, `cdrom`, `fd`, `network`).
    #[serde(default)]
    pub boot_devs: Vec<String>,
}

/// `<loader>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Loader {
    /// The firmware image.
    pub path: PathBuf,
    /// `readonly='yes'`.
    pub readonly: bool,
    /// `type='rom'|'pflash'`.
    pub loader_type: Option<LoaderType>,
}

/// `<loader type=…>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LoaderType {
    /// Mapped as ROM.
    Rom,
    /// A pflash device (UEFI CODE).
    Pflash,
}

/// `<nvram>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Nvram {
    /// The guest's variable store.
    pub path: PathBuf,
    /// `template=…`: the pristine store it is copied from (read by the manager, not QEMU).
    pub template: Option<PathBuf>,
}

/// `<disk type=…>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DiskType {
    /// An image file (`<source file=…>`).
    File,
    /// A block device (`<source dev=…>`).
    Block,
    /// A host directory presented as a FAT disk (`<source dir=…>`).
    Dir,
}

/// `<disk device=…>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DiskDevice {
    /// A hard disk.
    Disk,
    /// A CD-ROM (always read-only, as in libvirt).
    Cdrom,
    /// A floppy.
    Floppy,
}

/// One `<disk>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Disk {
    /// `type=`.
    pub disk_type: DiskType,
    /// `device=`.
    pub device: DiskDevice,
    /// `<driver type=…>`; `None` means raw for planning (never probed).
    pub format: Option<ImageFormat>,
    /// `<source file|dev|dir=…>`; `None` for an empty CD-ROM drive.
    pub source: Option<PathBuf>,
    /// `<target dev=…>`.
    pub target_dev: String,
    /// `<target bus=…>`.
    pub target_bus: Option<String>,
    /// `<readonly/>` (forced for CD-ROMs).
    pub readonly: bool,
    /// `<shareable/>`.
    pub shareable: bool,
    /// Per-model overrides from `<source><seclabel>`.
    pub seclabels: Vec<DeviceSecLabel>,
    /// The backing chain as the XML gives it.
    pub backing: BackingSpec,
    /// `<boot order='N'/>`: the device's place in the boot order.
    #[serde(default)]
    pub boot_order: Option<u32>,
}

/// What the XML says about a disk's backing chain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "spec", content = "chain")]
pub enum BackingSpec {
    /// No `<backingStore>` element: for a declared qcow2 image, the chain is read from
    /// the image headers (never for raw images).
    NotGiven,
    /// `<backingStore>` elements. `complete` is true when the chain ends with an empty
    /// `<backingStore/>` (nothing below); otherwise the last qcow2 layer's header is read.
    Chain {
        /// Layers from just below the top down.
        layers: Vec<BackingLayer>,
        /// Whether the XML says the chain ends there.
        complete: bool,
    },
}

/// One `<backingStore>` layer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackingLayer {
    /// `type=` (file or block).
    pub disk_type: DiskType,
    /// `<format type=…>` (required: svirt never probes).
    pub format: ImageFormat,
    /// `<source file|dev=…>`.
    pub source: PathBuf,
    /// Per-model overrides from its `<source><seclabel>`.
    pub seclabels: Vec<DeviceSecLabel>,
}

/// `<filesystem type='mount'>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Filesystem {
    /// `accessmode=` (passthrough, mapped, squash).
    pub accessmode: Option<String>,
    /// `<driver type=…>` (path, virtiofs…).
    pub driver: Option<String>,
    /// `<source dir=…>`: the host tree.
    pub source_dir: PathBuf,
    /// `<target dir=…>`: the mount tag.
    pub target_dir: String,
    /// `<readonly/>`.
    pub readonly: bool,
    /// Per-model overrides from `<source><seclabel>`.
    pub seclabels: Vec<DeviceSecLabel>,
}

/// Which element a chardev comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ChardevRole {
    /// `<serial>`.
    Serial,
    /// `<console>`.
    Console,
    /// `<channel>`.
    Channel,
    /// `<parallel>`.
    Parallel,
}

impl ChardevRole {
    /// The element name.
    pub fn as_str(self) -> &'static str {
        match self {
            ChardevRole::Serial => "serial",
            ChardevRole::Console => "console",
            ChardevRole::Channel => "channel",
            ChardevRole::Parallel => "parallel",
        }
    }
}

/// `<source mode=…>` of a unix socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SocketMode {
    /// QEMU listens (creates the socket).
    Bind,
    /// QEMU connects to an existing socket.
    Connect,
}

/// The host side of a chardev.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase", tag = "type")]
pub enum ChardevSource {
    /// `type='file'`: output appended/written to a file.
    File {
        /// The file.
        path: PathBuf,
        /// `append='on'`.
        append: bool,
    },
    /// `type='pipe'`: `path.in` + `path.out`, or `path` itself.
    Pipe {
        /// The pipe's base path.
        path: PathBuf,
    },
    /// `type='dev'`: a host character device.
    Dev {
        /// The device node.
        path: PathBuf,
    },
    /// `type='unix'`.
    Unix {
        /// The socket.
        path: PathBuf,
        /// bind or connect.
        mode: SocketMode,
    },
    /// `type='unix'` in bind mode with no path (virt-install's guest-agent channel): a
    /// socket in the guest's own runtime directory, where libvirt fills in one of its own.
    /// It names no host object the XML chose: nothing to plan.
    UnixInRuntimeDir,
    /// `type='pty'`.
    Pty,
    /// `type='tcp'`.
    Tcp {
        /// Host.
        host: String,
        /// Port/service.
        service: String,
        /// Listen (bind) or connect.
        mode: SocketMode,
    },
    /// `type='udp'`.
    Udp {
        /// Remote host.
        host: String,
        /// Remote port.
        service: String,
        /// Local bind host, when given.
        bind_host: Option<String>,
        /// Local bind port, when given.
        bind_service: Option<String>,
    },
    /// `type='null'`, `vc`, `stdio`, `spicevmc`…: no host object.
    Other {
        /// The type as written.
        name: String,
    },
}

/// `<target>` of a chardev.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChardevTarget {
    /// `type=` (serial, virtio, guestfwd…).
    pub target_type: Option<String>,
    /// `port=`.
    pub port: Option<u32>,
    /// `name=` (virtio channels).
    pub name: Option<String>,
}

/// One chardev.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Chardev {
    /// Which element.
    pub role: ChardevRole,
    /// Host side.
    pub source: ChardevSource,
    /// Guest side.
    pub target: ChardevTarget,
    /// Per-model overrides from `<source><seclabel>`.
    pub seclabels: Vec<DeviceSecLabel>,
    /// `<log file=… append=…>`: where QEMU also writes what the guest sends.
    #[serde(default)]
    pub log: Option<ChardevLog>,
}

/// A chardev's `<log>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChardevLog {
    /// The log file.
    pub file: PathBuf,
    /// `append='on'`.
    pub append: bool,
}

/// `<hostdev mode='subsystem'>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase", tag = "type")]
pub enum Hostdev {
    /// USB by bus/device address (`/dev/bus/usb/BBB/DDD`), or by vendor/product (looked up
    /// in sysfs).
    Usb {
        /// `<vendor id>`.
        vendor: Option<u16>,
        /// `<product id>`.
        product: Option<u16>,
        /// `<address bus>`.
        bus: Option<u16>,
        /// `<address device>`.
        device: Option<u16>,
    },
    /// PCI by address, passed with VFIO (`/dev/vfio/<iommu group>`).
    Pci {
        /// PCI domain.
        domain: u32,
        /// Bus.
        bus: u8,
        /// Slot.
        slot: u8,
        /// Function.
        function: u8,
        /// `managed='yes'`.
        managed: bool,
    },
}

/// `<rng model='virtio'>`: a random number generator device for the guest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rng {
    /// Where QEMU takes the entropy from.
    pub backend: RngBackend,
    /// `<rate bytes='B' period='MS'/>`: at most B bytes per MS milliseconds (1000 when
    /// the period is not given) go to the guest.
    #[serde(default)]
    pub rate: Option<(u64, u64)>,
}

/// `<rng><backend>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase", tag = "type")]
pub enum RngBackend {
    /// `model='random'`: a host device QEMU reads (`/dev/urandom` by default).
    Random {
        /// The device.
        device: PathBuf,
    },
    /// `model='builtin'`: QEMU's own generator (getrandom), no host object.
    Builtin,
}

/// `<tpm>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tpm {
    /// `model=` (tpm-tis, tpm-crb).
    pub model: Option<String>,
    /// `<backend>`.
    pub backend: TpmBackend,
}

/// `<tpm><backend>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase", tag = "type")]
pub enum TpmBackend {
    /// swtpm emulator with a state directory.
    Emulator {
        /// `version=` (2.0).
        version: Option<String>,
        /// `<source path=…>` inside the backend; else derived as `<state root>/<uuid>`.
        state_path: Option<PathBuf>,
    },
    /// A host TPM device.
    Passthrough {
        /// `<device path=…>` (default `/dev/tpm0`).
        device: PathBuf,
    },
}

/// `<memoryBacking>`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemoryBacking {
    /// `<hugepages/>`.
    pub hugepages: bool,
    /// `<source type=…>` (file, anonymous, memfd).
    pub source_type: Option<String>,
    /// `<source path=…>`: file or directory holding guest memory.
    pub path: Option<PathBuf>,
    /// `<access mode='shared'/>`: the memory may be mapped by another process (vhost-user,
    /// virtiofsd).
    #[serde(default)]
    pub shared: bool,
    /// `<allocation mode='immediate'/>`: every page allocated at start.
    #[serde(default)]
    pub prealloc: bool,
}

/// `<seclabel type=…>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SecLabelType {
    /// Allocated by svirt at start.
    Dynamic,
    /// Given verbatim in `<label>`.
    Static,
    /// Unconfined.
    None,
}

/// A validated domain-level `<seclabel>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecLabel {
    /// `model=` (selinux when absent).
    pub model: Model,
    /// `type=` (`default` becomes dynamic; a baselabel alone implies dynamic).
    pub sec_type: SecLabelType,
    /// `relabel=` after defaults (dynamic: yes, static: no, none: no).
    pub relabel: bool,
    /// `<label>` (static).
    pub label: Option<String>,
    /// `<baselabel>` (dynamic).
    pub baselabel: Option<String>,
    /// `<imagelabel>`: output only; kept for round trips, never used to plan.
    pub imagelabel: Option<String>,
}

/// A per-device `<source><seclabel>`, validated.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceSecLabel {
    /// The model it applies to.
    pub model: Model,
    /// `relabel=` (yes when absent).
    pub relabel: bool,
    /// `<label>`.
    pub label: Option<String>,
    /// Where it is in the document, for error messages.
    pub at: String,
}

/// A parsed domain and what the parser ignored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Parsed {
    /// The domain.
    pub domain: Domain,
    /// One line per ignored element or attribute, naming it.
    pub warnings: Vec<String>,
}
