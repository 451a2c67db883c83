//! The QEMU command line, generated from a [`VmSpec`] (itself derived from the domain).
//!
//! Disks use `-blockdev` with an explicit driver for every node and an explicit backing
//! (`null` or the declared next node), so QEMU never probes a format from image contents.
//! `-blockdev` takes JSON, which also avoids QEMU's comma escaping for paths there.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

/// An image format QEMU is told explicitly (the planner's: QEMU's block driver of the
/// same name).
pub use svirt_domain::ImageFormat;

/// What kind of device a disk is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DiskDevice {
    /// Hard disk.
    Disk,
    /// CD-ROM.
    Cdrom,
    /// Floppy.
    Floppy,
}

/// One image of a disk's chain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageSpec {
    /// File or block device.
    pub path: PathBuf,
    /// Declared format.
    pub format: ImageFormat,
    /// Whether `path` is a block device (`type='block'`): QEMU's `host_device` driver.
    pub block: bool,
}

/// A disk as QEMU needs it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiskSpec {
    /// Top image.
    pub image: ImageSpec,
    /// Backing chain below the top, in order, as planned (the XML's layers and the ones
    /// named by the headers below them): every node is given explicitly and QEMU never
    /// follows a header's backing reference on its own.
    pub backing: Vec<ImageSpec>,
    /// Read-only to the guest.
    pub readonly: bool,
    /// Device kind.
    pub device: DiskDevice,
    /// Bus (`virtio`, `ide`, `sata`, `scsi`, `usb`…).
    pub bus: String,
    /// Guest target name (`vda`).
    pub target: String,
    /// `<shareable/>`: other guests use the image at the same time (`share-rw=on`, or
    /// QEMU's image lock refuses the second guest).
    #[serde(default)]
    pub shareable: bool,
    /// `<boot order='N'/>` (`bootindex=N`).
    #[serde(default)]
    pub boot_index: Option<u32>,
}

/// What a chardev is connected to on the host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "type")]
pub enum ChardevBackend {
    /// Output to a file.
    File {
        /// Path.
        path: PathBuf,
        /// Append instead of truncating.
        append: bool,
    },
    /// Named pipe (`p`, or `p.in` and `p.out`).
    Pipe {
        /// Path.
        path: PathBuf,
    },
    /// Unix socket.
    Unix {
        /// Path.
        path: PathBuf,
        /// Listen (`mode='bind'`) or connect.
        server: bool,
        /// Made by QEMU in the guest's runtime directory, not named by the XML (the
        /// guest-agent channel's socket): no host object, no spelling for the jail.
        #[serde(default)]
        in_runtime_dir: bool,
    },
    /// Host device (`type='dev'`).
    Dev {
        /// Path.
        path: PathBuf,
    },
    /// A pty.
    Pty,
    /// TCP.
    Tcp {
        /// Host.
        host: String,
        /// Port.
        port: u16,
        /// Listen or connect.
        server: bool,
    },
    /// UDP.
    Udp {
        /// Host.
        host: String,
        /// Port.
        port: u16,
    },
    /// Discard output.
    Null,
    /// The SPICE agent's channel (`spicevmc`, name `vdagent`), carried by SPICE.
    SpiceVmc,
}

/// Which guest device a chardev feeds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "device")]
pub enum ChardevTarget {
    /// ISA serial port.
    Serial,
    /// Console on a virtio-serial bus.
    VirtioConsole,
    /// Named virtio-serial channel.
    Channel {
        /// Port name (`org.qemu.guest_agent.0`).
        name: String,
    },
    /// Parallel port.
    Parallel,
}

/// A chardev and its device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChardevSpec {
    /// Host side.
    pub backend: ChardevBackend,
    /// Guest side.
    pub target: ChardevTarget,
    /// A log of what the guest sends, and whether it is appended to.
    #[serde(default)]
    pub log: Option<(PathBuf, bool)>,
}

/// A `<filesystem>` share.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FilesystemSpec {
    /// Host directory.
    pub source: PathBuf,
    /// Mount tag seen by the guest.
    pub tag: String,
    /// Read-only share.
    pub readonly: bool,
    /// Who serves it.
    #[serde(default)]
    pub driver: FsDriver,
    /// 9p's `security_model` (`accessmode`): `mapped-xattr` for `mapped`, else `none`
    /// (the VMM has no capability to give files the guest's owners: `passthrough`, the
    /// default, and `squash` both leave them as the share's).
    #[serde(default)]
    pub mapped: bool,
}

/// Who serves a share to the guest.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FsDriver {
    /// QEMU itself, over virtio-9p (`<driver type='path'/>`, libvirt's default).
    #[default]
    Virtio9p,
    /// A `virtiofsd` of the guest's own over vhost-user (`<driver type='virtiofs'/>`):
    /// QEMU never opens the share ([`crate::virtiofs`]).
    Virtiofs,
}

/// Firmware.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoaderSpec {
    /// Firmware image.
    pub path: PathBuf,
    /// `pflash` (UEFI CODE, with `nvram` as VARS) or `rom` (`-bios`).
    pub pflash: bool,
}

/// Everything the QEMU command line is built from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmSpec {
    /// Guest name.
    pub name: String,
    /// UUID.
    pub uuid: String,
    /// Machine type (`pc`, `q35`, `pc-i440fx-7.2`…).
    pub machine: String,
    /// Memory in KiB.
    pub memory_kib: u64,
    /// vCPUs.
    pub vcpus: u32,
    /// Direct kernel boot.
    pub kernel: Option<PathBuf>,
    /// Initrd.
    pub initrd: Option<PathBuf>,
    /// Kernel command line.
    pub cmdline: Option<String>,
    /// Device tree.
    pub dtb: Option<PathBuf>,
    /// Firmware.
    pub loader: Option<LoaderSpec>,
    /// UEFI variable store.
    pub nvram: Option<PathBuf>,
    /// Disks.
    pub disks: Vec<DiskSpec>,
    /// Serial ports, consoles, channels.
    pub chardevs: Vec<ChardevSpec>,
    /// Filesystem shares.
    pub filesystems: Vec<FilesystemSpec>,
    /// Random number generators: the host device each reads, or `None` for QEMU's own
    /// (`rng-builtin`).
    #[serde(default)]
    pub rngs: Vec<Option<PathBuf>>,
    /// Devices without host objects (balloon, input, video, USB controller, watchdog), in
    /// the XML's order; a USB controller first when a USB device needs one.
    #[serde(default)]
    pub plain_devices: Vec<svirt_domain::PlainDevice>,
    /// The VNC server's socket (in the guest's runtime directory), when the XML asks for
    /// VNC.
    #[serde(default)]
    pub vnc_socket: Option<PathBuf>,
    /// The SPICE server's socket (in the guest's runtime directory), when the XML asks for
    /// SPICE.
    #[serde(default)]
    pub spice_socket: Option<PathBuf>,
    /// Where the guest's RAM comes from, when the XML's `<memoryBacking>` says.
    #[serde(default)]
    pub memory_backend: Option<MemoryBackend>,
    /// The emulated TPM (served by the guest's swtpm).
    #[serde(default)]
    pub tpm: Option<crate::swtpm::TpmSpec>,
    /// `<os><boot dev=…>` as QEMU's `-boot order=` letters (`c` disk, `d` CD-ROM, `a`
    /// floppy, `n` network), when the XML gives it.
    #[serde(default)]
    pub boot_order: Option<String>,
    /// The `<rate>` of each rng, by its index in [`VmSpec::rngs`]: bytes per period (ms).
    #[serde(default)]
    pub rng_rates: Vec<Option<(u64, u64)>>,
    /// CD-ROM and floppy drives without a medium (`<disk device='cdrom'>` with no
    /// `<source>`): the device, with no drive behind it.
    #[serde(default)]
    pub empty_drives: Vec<EmptyDrive>,
}

/// A removable-media drive with nothing in it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EmptyDrive {
    /// `Cdrom` or `Floppy`.
    pub device: DiskDevice,
    /// Guest target name (`hdc`).
    pub target: String,
}

/// The guest's RAM as a memory backend object (`-machine memory-backend=`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemoryBackend {
    /// A file, or a directory QEMU makes its file in (`memory-backend-file`); `None`:
    /// `memfd` when `memfd`, else anonymous memory (`memory-backend-ram`).
    pub path: Option<PathBuf>,
    /// `memory-backend-memfd`.
    pub memfd: bool,
    /// `share=on`: another process may map it (vhost-user, virtiofsd).
    pub shared: bool,
    /// `prealloc=on`.
    pub prealloc: bool,
}

/// How to run it, decided by the manager.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LaunchOptions {
    /// `kvm` or `tcg`.
    pub accel: String,
    /// Start with vCPUs stopped.
    pub paused: bool,
    /// The fd number of the listening QMP socket QEMU inherits.
    pub qmp_fd: i32,
    /// Whether QEMU's seccomp sandbox is requested.
    pub sandbox: bool,
    /// Sockets the manager opened in the host's network namespace for chardevs, by the
    /// chardev's index in [`VmSpec::chardevs`]: QEMU gets `fd=N` instead of host and port
    /// (in its jail it has no network of its own). A chardev not listed keeps host/port.
    pub chardev_fds: Vec<(usize, i32)>,
    /// The connected vhost-user socket of each virtiofs share's `virtiofsd`, by the
    /// share's index in [`VmSpec::filesystems`] (the manager connects it before QEMU
    /// starts: QEMU is given no path). A dry run has none: `fd=` then names no fd.
    pub vhost_user_fds: Vec<(usize, i32)>,
    /// QEMU's end of the swtpm control channel (made by the manager before QEMU starts);
    /// a dry run has none.
    pub tpm_fd: Option<i32>,
}

/// Doubles commas: QEMU's option syntax escape for values.
fn esc(p: &Path) -> String {
    p.to_string_lossy().replace(',', ",,")
}

/// A file name QEMU takes whole, not as an option string: `-kernel`, `-initrd`, `-dtb` and
/// `-bios` go straight into the machine's properties (QEMU 7.2 `qdict_put_str`), so a
/// comma is part of the name and must not be doubled.
fn raw(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}

fn esc_str(s: &str) -> String {
    s.replace(',', ",,")
}

fn image_nodes(img: &ImageSpec, id: &str, readonly: bool, backing: Option<&str>) -> [Value; 2] {
    let file = json!({
        "driver": if img.block { "host_device" } else { "file" },
        "filename": img.path.to_string_lossy(),
        "node-name": format!("{id}-file"),
        "read-only": readonly,
        "auto-read-only": false,
        "discard": "unmap",
    });
    let mut fmt = json!({
        "driver": img.format.as_str(),
        "node-name": id,
        "file": format!("{id}-file"),
        "read-only": readonly,
    });
    if img.format == ImageFormat::Qcow2 {
        // Never let QEMU follow the header's backing reference on its own: the node below
        // is the planned one, or none.
        fmt["backing"] = backing.map_or(Value::Null, |b| Value::String(b.to_string()));
    }
    [file, fmt]
}

/// The argv (without the binary) for `spec`.
pub fn command_line(spec: &VmSpec, opts: &LaunchOptions) -> Vec<String> {
    let mut a: Vec<String> = Vec::new();
    let mut push = |xs: &[&str]| a.extend(xs.iter().map(|s| s.to_string()));
    let mem_mib = spec.memory_kib.div_ceil(1024).max(1);
    push(&[
        "-name",
        &format!("guest={},debug-threads=on", esc_str(&spec.name)),
    ]);
    push(&["-uuid", &spec.uuid]);
    push(&["-no-user-config", "-nodefaults", "-nographic"]);
    let mut machine = format!("{},usb=off", esc_str(&spec.machine));
    if spec.loader.as_ref().is_some_and(|l| l.pflash) {
        machine.push_str(",pflash0=pflash0");
        if spec.nvram.is_some() {
            machine.push_str(",pflash1=pflash1");
        }
    }
    if spec.memory_backend.is_some() {
        machine.push_str(",memory-backend=pc.ram");
    }
    push(&["-machine", &machine]);
    if let Some(b) = &spec.memory_backend {
        let kind = match (&b.path, b.memfd) {
            (Some(p), _) => format!("memory-backend-file,mem-path={}", esc(p)),
            (None, true) => "memory-backend-memfd".to_string(),
            (None, false) => "memory-backend-ram".to_string(),
        };
        push(&[
            "-object",
            &format!(
                "{kind},id=pc.ram,size={mem_mib}M,share={}{}",
                if b.shared { "on" } else { "off" },
                if b.prealloc { ",prealloc=on" } else { "" }
            ),
        ]);
    }
    push(&["-accel", &opts.accel]);
    if let Some(order) = &spec.boot_order {
        push(&["-boot", &format!("order={order}")]);
    }
    push(&["-m", &mem_mib.to_string()]);
    push(&["-smp", &spec.vcpus.max(1).to_string()]);
    if opts.sandbox {
        push(&[
            "-sandbox",
            "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny",
        ]);
    }
    push(&[
        "-chardev",
        &format!(
            "socket,id=charmonitor,fd={},server=on,wait=off",
            opts.qmp_fd
        ),
        "-mon",
        "chardev=charmonitor,id=monitor,mode=control",
    ]);
    if opts.paused {
        push(&["-S"]);
    }
    if let Some(l) = &spec.loader {
        if l.pflash {
            let code = ImageSpec {
                path: l.path.clone(),
                format: ImageFormat::Raw,
                block: false,
            };
            for n in image_nodes(&code, "pflash0", true, None) {
                push(&["-blockdev", &n.to_string()]);
            }
            if let Some(v) = &spec.nvram {
                let vars = ImageSpec {
                    path: v.clone(),
                    format: ImageFormat::Raw,
                    block: false,
                };
                for n in image_nodes(&vars, "pflash1", false, None) {
                    push(&["-blockdev", &n.to_string()]);
                }
            }
        } else {
            push(&["-bios", &raw(&l.path)]);
        }
    }
    if let Some(k) = &spec.kernel {
        push(&["-kernel", &raw(k)]);
    }
    if let Some(i) = &spec.initrd {
        push(&["-initrd", &raw(i)]);
    }
    if let Some(c) = &spec.cmdline {
        push(&["-append", c]);
    }
    if let Some(d) = &spec.dtb {
        push(&["-dtb", &raw(d)]);
    }
    let mut need_virtio_serial = false;
    for (i, d) in spec.disks.iter().enumerate() {
        let id = format!("drive{i}");
        // Backing nodes first (deepest last in the chain is defined first), all read-only.
        let mut below: Option<String> = None;
        for (j, b) in d.backing.iter().enumerate().rev() {
            let bid = format!("{id}-b{j}");
            for n in image_nodes(b, &bid, true, below.as_deref()) {
                push(&["-blockdev", &n.to_string()]);
            }
            below = Some(bid);
        }
        let ro = d.readonly || d.device == DiskDevice::Cdrom;
        for n in image_nodes(&d.image, &id, ro, below.as_deref()) {
            push(&["-blockdev", &n.to_string()]);
        }
        let mut dev = match (d.device, d.bus.as_str()) {
            (DiskDevice::Cdrom, _) => format!("ide-cd,drive={id},id={}", esc_str(&d.target)),
            (DiskDevice::Floppy, _) => {
                format!("floppy,drive={id},id={}", esc_str(&d.target))
            }
            (DiskDevice::Disk, "ide" | "sata") => {
                format!("ide-hd,drive={id},id={}", esc_str(&d.target))
            }
            // QEMU 7.2's virtio-blk has no read-only property: a read-only node is enough
            // (the device then offers VIRTIO_BLK_F_RO to the guest).
            (DiskDevice::Disk, _) => {
                format!("virtio-blk-pci,drive={id},id={}", esc_str(&d.target))
            }
        };
        if d.shareable {
            dev.push_str(",share-rw=on");
        }
        if let Some(n) = d.boot_index {
            dev.push_str(&format!(",bootindex={n}"));
        }
        push(&["-device", &dev]);
    }
    for e in &spec.empty_drives {
        let dev = match e.device {
            DiskDevice::Floppy => "floppy",
            _ => "ide-cd",
        };
        push(&["-device", &format!("{dev},id={}", esc_str(&e.target))]);
    }
    for (i, c) in spec.chardevs.iter().enumerate() {
        let id = format!("charserial{i}");
        let backend = match &c.backend {
            ChardevBackend::File { path, append } => format!(
                "file,id={id},path={}{}",
                esc(path),
                if *append { ",append=on" } else { "" }
            ),
            ChardevBackend::Pipe { path } => format!("pipe,id={id},path={}", esc(path)),
            ChardevBackend::Unix { server: true, .. }
                if let Some((_, fd)) = opts.chardev_fds.iter().find(|(j, _)| *j == i) =>
            {
                // The listening socket the manager bound at the XML's path.
                format!("socket,id={id},fd={fd},server=on,wait=off")
            }
            ChardevBackend::Unix { path, server, .. } => format!(
                "socket,id={id},path={}{}",
                esc(path),
                if *server { ",server=on,wait=off" } else { "" }
            ),
            // A parallel port's host device is a parport (`/dev/parportN`), not a tty.
            ChardevBackend::Dev { path } if c.target == ChardevTarget::Parallel => {
                format!("parport,id={id},path={}", esc(path))
            }
            ChardevBackend::Dev { path } => format!("tty,id={id},path={}", esc(path)),
            ChardevBackend::Pty => format!("pty,id={id}"),
            ChardevBackend::Tcp { server, .. }
                if let Some((_, fd)) = opts.chardev_fds.iter().find(|(j, _)| *j == i) =>
            {
                // A listening socket (server) or a connected one (client), opened by
                // the manager in the host's network namespace.
                format!(
                    "socket,id={id},fd={fd}{}",
                    if *server { ",server=on,wait=off" } else { "" }
                )
            }
            ChardevBackend::Tcp { host, port, server } => format!(
                "socket,id={id},host={},port={port}{}",
                esc_str(host),
                if *server { ",server=on,wait=off" } else { "" }
            ),
            ChardevBackend::Udp { host, port } => {
                format!("udp,id={id},host={},port={port}", esc_str(host))
            }
            ChardevBackend::Null => format!("null,id={id}"),
            ChardevBackend::SpiceVmc => format!("spicevmc,id={id},name=vdagent"),
        };
        let backend = match &c.log {
            Some((file, append)) => format!(
                "{backend},logfile={}{}",
                esc(file),
                if *append { ",logappend=on" } else { "" }
            ),
            None => backend,
        };
        push(&["-chardev", &backend]);
        let dev = match &c.target {
            ChardevTarget::Serial => format!("isa-serial,chardev={id}"),
            ChardevTarget::Parallel => format!("isa-parallel,chardev={id}"),
            ChardevTarget::VirtioConsole => {
                need_virtio_serial = true;
                format!("virtconsole,chardev={id}")
            }
            ChardevTarget::Channel { name } => {
                need_virtio_serial = true;
                format!("virtserialport,chardev={id},name={}", esc_str(name))
            }
        };
        push(&["-device", &dev]);
    }
    if need_virtio_serial {
        // Devices on it are added after it in argv order, but qdev resolves the bus lazily
        // only for devices that come later: insert the controller before the first port.
        if let Some(pos) = a
            .iter()
            .position(|x| x.starts_with("virtconsole,") || x.starts_with("virtserialport,"))
        {
            a.insert(pos - 1, "virtio-serial-pci,id=virtio-serial0".into());
            a.insert(pos - 1, "-device".into());
        }
    }
    if let Some(t) = &spec.tpm {
        let fd = opts
            .tpm_fd
            .map_or_else(|| "none".to_string(), |fd| fd.to_string());
        a.push("-chardev".into());
        a.push(format!("socket,id=chrtpm,fd={fd}"));
        a.push("-tpmdev".into());
        a.push("emulator,id=tpm0,chardev=chrtpm".into());
        a.push("-device".into());
        a.push(format!("{},tpmdev=tpm0", t.model));
    }
    for (i, f) in spec.filesystems.iter().enumerate() {
        if f.driver == FsDriver::Virtiofs {
            let fd = opts
                .vhost_user_fds
                .iter()
                .find(|(j, _)| *j == i)
                .map_or_else(|| "none".to_string(), |(_, fd)| fd.to_string());
            a.push("-chardev".into());
            a.push(format!("socket,id=chr-vfs{i},fd={fd}"));
            a.push("-device".into());
            a.push(format!(
                "vhost-user-fs-pci,chardev=chr-vfs{i},tag={}",
                esc_str(&f.tag)
            ));
            continue;
        }
        a.push("-fsdev".into());
        a.push(format!(
            "local,id=fsdev{i},path={},security_model={}{}",
            esc(&f.source),
            if f.mapped { "mapped-xattr" } else { "none" },
            if f.readonly { ",readonly=on" } else { "" }
        ));
        a.push("-device".into());
        a.push(format!(
            "virtio-9p-pci,fsdev=fsdev{i},mount_tag={}",
            esc_str(&f.tag)
        ));
    }
    for d in &spec.plain_devices {
        use svirt_domain::PlainDevice as P;
        let mut dev = |x: String| {
            a.push("-device".into());
            a.push(x);
        };
        match d {
            P::Balloon => dev("virtio-balloon-pci".into()),
            P::UsbController { qemu_model } => dev(format!("{},id=usb", esc_str(qemu_model))),
            P::Input { qemu_model, usb } => dev(if *usb {
                format!("{},bus=usb.0", esc_str(qemu_model))
            } else {
                esc_str(qemu_model)
            }),
            P::Video { qemu_model } => dev(esc_str(qemu_model)),
            P::Watchdog { qemu_model, action } => {
                dev(esc_str(qemu_model));
                a.push("-action".into());
                a.push(format!("watchdog={}", esc_str(action)));
            }
            // Their sockets are `vnc_socket` and `spice_socket`.
            P::VncSocket | P::SpiceSocket => {}
        }
    }
    if let Some(v) = &spec.vnc_socket {
        a.push("-vnc".into());
        a.push(format!("unix:{}", esc(v)));
    }
    if let Some(s) = &spec.spice_socket {
        // No password: the socket is in the guest's runtime directory (0700, the guest's
        // uid), which only root and the guest's own uid can reach.
        a.push("-spice".into());
        a.push(format!("unix=on,addr={},disable-ticketing=on", esc(s)));
    }
    for (i, r) in spec.rngs.iter().enumerate() {
        a.push("-object".into());
        a.push(match r {
            Some(dev) => format!("rng-random,id=rng{i},filename={}", esc(dev)),
            None => format!("rng-builtin,id=rng{i}"),
        });
        a.push("-device".into());
        let rate = match spec.rng_rates.get(i).copied().flatten() {
            Some((bytes, period)) => format!(",max-bytes={bytes},period={period}"),
            None => String::new(),
        };
        a.push(format!("virtio-rng-pci,rng=rng{i}{rate}"));
    }
    a.push("-msg".into());
    a.push("timestamp=on".into());
    a
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts() -> LaunchOptions {
        LaunchOptions {
            accel: "tcg".into(),
            paused: false,
            qmp_fd: 3,
            sandbox: true,
            chardev_fds: Vec::new(),
            vhost_user_fds: Vec::new(),
            tpm_fd: None,
        }
    }

    fn spec() -> VmSpec {
        VmSpec {
            name: "g,1".into(),
            uuid: "00000000-0000-0000-0000-000000000001".into(),
            machine: "pc".into(),
            memory_kib: 16 * 1024,
            vcpus: 1,
            kernel: None,
            initrd: None,
            cmdline: None,
            dtb: None,
            loader: None,
            nvram: None,
            disks: vec![DiskSpec {
                image: ImageSpec {
                    path: "/img/top.qcow2".into(),
                    format: ImageFormat::Qcow2,
                    block: false,
                },
                backing: vec![ImageSpec {
                    path: "/img/base.raw".into(),
                    format: ImageFormat::Raw,
                    block: false,
                }],
                readonly: false,
                device: DiskDevice::Disk,
                bus: "virtio".into(),
                target: "vda".into(),
                shareable: false,
                boot_index: None,
            }],
            chardevs: vec![ChardevSpec {
                backend: ChardevBackend::File {
                    path: "/log,x".into(),
                    append: true,
                },
                target: ChardevTarget::Serial,
                log: None,
            }],
            filesystems: vec![],
            rngs: vec![],
            plain_devices: vec![],
            vnc_socket: None,
            spice_socket: None,
            memory_backend: None,
            tpm: None,
            boot_order: None,
            rng_rates: vec![],
            empty_drives: vec![],
        }
    }

    /// A virtiofs share and an emulated TPM reach QEMU only as the sockets the manager
    /// connected (`fd=`): no share path, no TPM state; a 9p share stays QEMU's.
    #[test]
    fn helpers_are_sockets_and_never_paths() {
        let mut s = spec();
        s.filesystems = vec![
            FilesystemSpec {
                source: "/srv/vfs".into(),
                tag: "vfs0".into(),
                readonly: false,
                driver: FsDriver::Virtiofs,
                mapped: false,
            },
            FilesystemSpec {
                source: "/srv/9p".into(),
                tag: "p9".into(),
                readonly: true,
                driver: FsDriver::Virtio9p,
                mapped: false,
            },
        ];
        s.tpm = Some(crate::swtpm::TpmSpec {
            model: "tpm-crb".into(),
            tpm2: true,
        });
        let mut o = opts();
        o.vhost_user_fds = vec![(0, 7)];
        o.tpm_fd = Some(8);
        let argv = command_line(&s, &o).join(" ");
        assert!(argv.contains("-chardev socket,id=chr-vfs0,fd=7 -device vhost-user-fs-pci,chardev=chr-vfs0,tag=vfs0"), "{argv}");
        assert!(argv.contains("-chardev socket,id=chrtpm,fd=8 -tpmdev emulator,id=tpm0,chardev=chrtpm -device tpm-crb,tpmdev=tpm0"), "{argv}");
        assert!(!argv.contains("/srv/vfs"), "{argv}");
        assert!(argv.contains("path=/srv/9p"), "{argv}");
    }

    #[test]
    fn explicit_formats_and_backing() {
        let argv = command_line(
            &spec(),
            &LaunchOptions {
                accel: "tcg".into(),
                paused: true,
                qmp_fd: 5,
                sandbox: false,
                chardev_fds: Vec::new(),
                vhost_user_fds: Vec::new(),
                tpm_fd: None,
            },
        );
        let blockdevs: Vec<Value> = argv
            .windows(2)
            .filter(|w| w[0] == "-blockdev")
            .map(|w| serde_json::from_str(&w[1]).unwrap())
            .collect();
        // Every node has an explicit driver; the qcow2 node names its backing explicitly.
        assert!(blockdevs.iter().all(|b| b["driver"].is_string()));
        let top = blockdevs
            .iter()
            .find(|b| b["node-name"] == "drive0")
            .unwrap();
        assert_eq!(top["driver"], "qcow2");
        assert_eq!(top["backing"], "drive0-b0");
        let base = blockdevs
            .iter()
            .find(|b| b["node-name"] == "drive0-b0")
            .unwrap();
        assert_eq!(base["driver"], "raw");
        assert_eq!(base["read-only"], true);
        assert!(argv.contains(&"-S".to_string()));
        assert!(argv.contains(&"file,id=charserial0,path=/log,,x,append=on".to_string()));
        assert!(argv.contains(&"guest=g,,1,debug-threads=on".to_string()));
    }

    /// `-kernel`, `-initrd`, `-dtb` and `-bios` take the file name whole (a doubled comma
    /// would name another file); option strings still double it.
    #[test]
    fn whole_file_names_keep_their_commas() {
        let mut s = spec();
        s.kernel = Some("/k,1".into());
        s.initrd = Some("/i,2".into());
        s.dtb = Some("/d,3".into());
        s.loader = Some(LoaderSpec {
            path: "/b,4".into(),
            pflash: false,
        });
        let argv = command_line(&s, &opts());
        let after = |o: &str| argv.iter().skip_while(|a| *a != o).nth(1).cloned();
        assert_eq!(after("-kernel").as_deref(), Some("/k,1"));
        assert_eq!(after("-initrd").as_deref(), Some("/i,2"));
        assert_eq!(after("-dtb").as_deref(), Some("/d,3"));
        assert_eq!(after("-bios").as_deref(), Some("/b,4"));
        assert!(argv.contains(&"file,id=charserial0,path=/log,,x,append=on".to_string()));
    }

    /// Each rng is an entropy object and a virtio-rng device on it: a host device by
    /// name (its commas doubled, as every option string), or QEMU's own generator.
    #[test]
    fn rngs_are_objects_with_a_virtio_device_each() {
        let mut s = spec();
        s.rngs = vec![Some("/dev/hw,rng".into()), None];
        let argv = command_line(&s, &opts());
        let joined = argv.join(" ");
        assert!(
            joined.contains(
                "-object rng-random,id=rng0,filename=/dev/hw,,rng -device virtio-rng-pci,rng=rng0"
            ),
            "{joined}"
        );
        assert!(
            joined.contains("-object rng-builtin,id=rng1 -device virtio-rng-pci,rng=rng1"),
            "{joined}"
        );
    }
}
