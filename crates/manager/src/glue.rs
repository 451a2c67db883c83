//! From the parsed domain to what QEMU is built from.

use std::path::{Path, PathBuf};

use svirt_domain::Plan;
use svirt_domain::domain::{
    ChardevRole, ChardevSource, DiskDevice as DDev, DiskType, Domain, LoaderType, SocketMode,
};

use crate::error::{ManagerError, Result};
use crate::qemu::{
    ChardevBackend, ChardevSpec, ChardevTarget, DiskDevice, DiskSpec, FilesystemSpec, FsDriver,
    ImageFormat, ImageSpec, LoaderSpec, MemoryBackend, VmSpec,
};

fn port(service: &str, what: &str) -> Result<u16> {
    service.parse().map_err(|_| {
        ManagerError::Domain(format!("{what}: service {service:?} is not a port number"))
    })
}

/// The QEMU description of `d`, planned as `plan`. Each disk's backing layers are the
/// plan's (svirt-domain's one chain rule: the XML's layers, then the headers below them,
/// each checked by the object policy); QEMU gets them node by node and never follows a
/// header itself.
pub fn vm_spec(d: &Domain, plan: &Plan, runtime_dir: &Path) -> Result<VmSpec> {
    let mut disks = Vec::new();
    let mut empty_drives = Vec::new();
    for (i, disk) in d.disks.iter().enumerate() {
        let Some(src) = &disk.source else {
            // An empty CD-ROM or floppy drive: the device, nothing to open.
            empty_drives.push(crate::qemu::EmptyDrive {
                device: match disk.device {
                    DDev::Floppy => DiskDevice::Floppy,
                    _ => DiskDevice::Cdrom,
                },
                target: disk.target_dev.clone(),
            });
            continue;
        };
        if disk.disk_type == DiskType::Dir {
            return Err(ManagerError::Domain(format!(
                "disk {}: type='dir' (vvfat) is not supported by svirt's QEMU backend",
                disk.target_dev
            )));
        }
        if let Some(b) = disk.target_bus.as_deref()
            && !matches!(b, "virtio" | "ide" | "sata" | "fdc")
        {
            // QEMU would get a virtio-blk disk instead: another device than the one asked.
            return Err(ManagerError::Domain(format!(
                "disk {}: bus '{b}' is not supported yet (virtio, ide, sata)",
                disk.target_dev
            )));
        }
        let format = disk.format.unwrap_or(ImageFormat::Raw);
        let chain = plan.chain_of(i).ok_or_else(|| {
            ManagerError::Domain(format!(
                "disk {}: the plan has no backing chain for it",
                disk.target_dev
            ))
        })?;
        let backing: Vec<ImageSpec> = chain
            .layers
            .iter()
            .map(|l| ImageSpec {
                path: l.path.clone(),
                format: l.format,
                block: l.block,
            })
            .collect();
        disks.push(DiskSpec {
            image: ImageSpec {
                path: src.clone(),
                format,
                block: disk.disk_type == DiskType::Block,
            },
            backing,
            readonly: disk.readonly,
            device: match disk.device {
                DDev::Disk => DiskDevice::Disk,
                DDev::Cdrom => DiskDevice::Cdrom,
                DDev::Floppy => DiskDevice::Floppy,
            },
            bus: disk.target_bus.clone().unwrap_or_else(|| {
                if disk.device == DDev::Disk && disk.target_dev.starts_with("vd") {
                    "virtio".into()
                } else {
                    "ide".into()
                }
            }),
            target: disk.target_dev.clone(),
            shareable: disk.shareable,
            boot_index: disk.boot_order,
        });
    }
    let mut chardevs = Vec::new();
    let mut serial_seen = false;
    for c in &d.chardevs {
        let what = format!("{} {}", c.role.as_str(), c.target.port.unwrap_or(0));
        let target = match c.role {
            ChardevRole::Serial => {
                serial_seen = true;
                ChardevTarget::Serial
            }
            ChardevRole::Console => match c.target.target_type.as_deref() {
                Some("virtio") => ChardevTarget::VirtioConsole,
                // libvirt shows a serial console as an alias of the first serial port.
                _ if serial_seen => continue,
                _ => ChardevTarget::Serial,
            },
            ChardevRole::Channel => match &c.target.name {
                Some(n) if c.target.target_type.as_deref() != Some("guestfwd") => {
                    ChardevTarget::Channel { name: n.clone() }
                }
                _ => {
                    return Err(ManagerError::Domain(format!(
                        "{what}: only virtio channels with a name are supported"
                    )));
                }
            },
            ChardevRole::Parallel => ChardevTarget::Parallel,
        };
        let backend = match &c.source {
            ChardevSource::File { path, append } => ChardevBackend::File {
                path: path.clone(),
                append: *append,
            },
            ChardevSource::Pipe { path } => ChardevBackend::Pipe { path: path.clone() },
            ChardevSource::Dev { path } => ChardevBackend::Dev { path: path.clone() },
            ChardevSource::Unix { path, mode } => ChardevBackend::Unix {
                path: path.clone(),
                server: *mode == SocketMode::Bind,
                in_runtime_dir: false,
            },
            ChardevSource::UnixInRuntimeDir => ChardevBackend::Unix {
                path: runtime_dir.join(runtime_socket_name(c, &what)?),
                server: true,
                in_runtime_dir: true,
            },
            ChardevSource::Pty => ChardevBackend::Pty,
            ChardevSource::Tcp {
                host,
                service,
                mode,
            } => ChardevBackend::Tcp {
                host: host.clone(),
                port: port(service, &what)?,
                server: *mode == SocketMode::Bind,
            },
            ChardevSource::Udp { host, service, .. } => ChardevBackend::Udp {
                host: host.clone(),
                port: port(service, &what)?,
            },
            ChardevSource::Other { name } if name == "null" => ChardevBackend::Null,
            // The SPICE agent's channel: only with SPICE graphics to carry it.
            ChardevSource::Other { name } if name == "spicevmc" => {
                if !d
                    .plain_devices
                    .contains(&svirt_domain::PlainDevice::SpiceSocket)
                {
                    return Err(ManagerError::Domain(format!(
                        "{what}: a spicevmc channel needs SPICE graphics (<graphics \
                         type='spice'><listen type='socket'/></graphics>)"
                    )));
                }
                ChardevBackend::SpiceVmc
            }
            ChardevSource::Other { name } => {
                return Err(ManagerError::Domain(format!(
                    "{what}: chardev type {name:?} is not supported (no display/stdio in svirt)"
                )));
            }
        };
        chardevs.push(ChardevSpec {
            backend,
            target,
            log: c.log.as_ref().map(|l| (l.file.clone(), l.append)),
        });
    }
    let memory_backend = memory_backend(d)?;
    let mut filesystems = Vec::new();
    for f in &d.filesystems {
        let driver = match f.driver.as_deref() {
            None | Some("path") => FsDriver::Virtio9p,
            Some("virtiofs") => {
                // vhost-user: virtiofsd maps the guest's RAM, which must be shared memory
                // (libvirt refuses the same).
                if !memory_backend.as_ref().is_some_and(|b| b.shared) {
                    return Err(ManagerError::Domain(format!(
                        "filesystem {}: virtiofs needs the guest's memory shared with \
                         virtiofsd: add <memoryBacking><source type='memfd'/><access \
                         mode='shared'/></memoryBacking>",
                        f.target_dir
                    )));
                }
                FsDriver::Virtiofs
            }
            Some(other) => {
                // Another device than the one asked for would run otherwise.
                return Err(ManagerError::Domain(format!(
                    "filesystem {}: driver type='{other}' is not supported (path: QEMU's \
                     9p; virtiofs: virtiofsd)",
                    f.target_dir
                )));
            }
        };
        let mapped = match f.accessmode.as_deref() {
            None | Some("passthrough") | Some("squash") => false,
            Some("mapped") if driver == FsDriver::Virtio9p => true,
            Some(m) => {
                return Err(ManagerError::Domain(format!(
                    "filesystem {}: accessmode '{m}' is not supported here (passthrough, \
                     squash; mapped for 9p)",
                    f.target_dir
                )));
            }
        };
        filesystems.push(FilesystemSpec {
            source: f.source_dir.clone(),
            tag: f.target_dir.clone(),
            readonly: f.readonly,
            driver,
            mapped,
        });
    }
    let loader = d.os.loader.as_ref().map(|l| LoaderSpec {
        path: l.path.clone(),
        pflash: l.loader_type == Some(LoaderType::Pflash),
    });
    if let Some(h) = d.hostdevs.first() {
        // Planned and labeled as libvirt would; QEMU is not given them yet.
        return Err(ManagerError::Domain(format!(
            "hostdev {}: device passthrough is not supported yet (svirt opens no VFIO group \
             or host USB device for the VMM)",
            describe_hostdev(h)
        )));
    }
    let tpm = crate::swtpm::spec(d)?;
    Ok(VmSpec {
        name: d.name.clone(),
        uuid: d.uuid.to_string(),
        machine: d.os.machine.clone().unwrap_or_else(|| "pc".into()),
        memory_kib: d.memory_bytes.div_ceil(1024),
        vcpus: d.vcpus,
        kernel: d.os.kernel.clone(),
        initrd: d.os.initrd.clone(),
        cmdline: d.os.cmdline.clone(),
        dtb: d.os.dtb.clone(),
        loader,
        nvram: d.os.nvram.as_ref().map(|n| n.path.clone()),
        disks,
        chardevs,
        filesystems,
        plain_devices: plain_devices(d)?,
        memory_backend,
        vnc_socket: d
            .plain_devices
            .contains(&svirt_domain::PlainDevice::VncSocket)
            .then(|| runtime_dir.join("vnc.sock")),
        spice_socket: d
            .plain_devices
            .contains(&svirt_domain::PlainDevice::SpiceSocket)
            .then(|| runtime_dir.join("spice.sock")),
        rngs: d
            .rngs
            .iter()
            .map(|r| match &r.backend {
                svirt_domain::RngBackend::Random { device } => Some(device.clone()),
                svirt_domain::RngBackend::Builtin => None,
            })
            .collect(),
        tpm,
        boot_order: boot_order(&d.os.boot_devs),
        rng_rates: d.rngs.iter().map(|r| r.rate).collect(),
        empty_drives,
    })
}

/// `<os><boot dev=…>` as QEMU's `-boot order=` letters; `None` when the XML gives none.
fn boot_order(devs: &[String]) -> Option<String> {
    let letters: String = devs
        .iter()
        .filter_map(|d| match d.as_str() {
            "hd" => Some('c'),
            "cdrom" => Some('d'),
            "fd" => Some('a'),
            "network" => Some('n'),
            _ => None,
        })
        .collect();
    (!letters.is_empty()).then_some(letters)
}

/// A hostdev as an error names it (`usb 1234:5678`, `usb bus 1 device 3`, `pci 0000:03:00.1`).
fn describe_hostdev(h: &svirt_domain::domain::Hostdev) -> String {
    use svirt_domain::domain::Hostdev;
    match h {
        Hostdev::Usb {
            vendor: Some(v),
            product: Some(p),
            ..
        } => format!("usb {v:04x}:{p:04x}"),
        Hostdev::Usb { bus, device, .. } => format!(
            "usb bus {} device {}",
            bus.unwrap_or_default(),
            device.unwrap_or_default()
        ),
        Hostdev::Pci {
            domain,
            bus,
            slot,
            function,
            ..
        } => format!("pci {domain:04x}:{bus:02x}:{slot:02x}.{function:x}"),
    }
}

/// The QEMU binary: the configured override, else the domain's `<emulator>`, else
/// `qemu-system-x86_64` found on `PATH`.
pub fn qemu_binary(configured: Option<&PathBuf>, d: Option<&Domain>) -> Result<PathBuf> {
    if let Some(p) = configured {
        return Ok(p.clone());
    }
    if let Some(p) = d.and_then(|d| d.emulator.clone()) {
        return Ok(p);
    }
    find_in_path("qemu-system-x86_64")
}

/// Looks `name` up on `PATH` (or the usual directories).
pub fn find_in_path(name: &str) -> Result<PathBuf> {
    let path = std::env::var("PATH").unwrap_or_else(|_| "/usr/local/bin:/usr/bin:/bin".into());
    for dir in path.split(':').chain(["/usr/bin", "/usr/local/bin"]) {
        let p = PathBuf::from(dir).join(name);
        if p.is_file() {
            return Ok(p);
        }
    }
    Err(ManagerError::Qemu(format!(
        "{name} not found on PATH (apt-get install qemu-system-x86)"
    )))
}

/// The host as the planner sees it for this manager: its root, and svirtd's own objects
/// protected (the state directory, and the run directory with the API socket and every
/// guest's runtime and control files), the configured image roots.
pub(crate) fn guest_host(config: &crate::config::Config) -> svirt_domain::Host {
    svirt_domain::Host::new(config.root_dir.clone())
        .with_protected(&config.state_dir, "svirtd's state directory")
        .with_protected(
            &config.run_dir,
            "svirtd's run directory, with its API socket and every guest's runtime and control files",
        )
        .with_image_roots(config.image_roots.clone())
}

/// Listening sockets the manager bound for chardevs QEMU serves, by the path the XML
/// gives: passed to QEMU as `fd=N`.
pub(crate) type ChardevListeners = Vec<(PathBuf, std::os::fd::OwnedFd)>;

/// Parses and plans `xml` for the manager's stack. Chardev output files that do not exist
/// yet are created empty (mode 0600, never through a symlink) so they can be planned and
/// labeled, as libvirt creates them, and, where QEMU runs in its own mount namespace, the
/// sockets of chardevs QEMU serves are bound (QEMU gets their fds: its jail shows their
/// directories read-only; without the jail — SELinux's stacks — QEMU binds them itself,
/// under its own label, as before); their paths are returned so a failed start removes
/// them again, and the listeners.
pub(crate) fn parse_and_plan(
    inner: &crate::manager::Inner,
    xml: &str,
    bind_sockets: bool,
) -> Result<(Domain, svirt_domain::Plan, Vec<PathBuf>, ChardevListeners)> {
    let mut parsed = svirt_domain::parse(xml).map_err(ManagerError::Plan)?;
    let host = inner.host_cache.host(&inner.config);
    let mut created = Vec::new();
    let mut listeners: ChardevListeners = Vec::new();
    let r = (|| {
        // UEFI code and the guest's own variable store, as libvirt fills them in.
        created.extend(crate::firmware::fill_in(
            &mut parsed.domain,
            &inner.config.root_dir,
            &inner.config.nvram_dir,
        )?);
        // An emulated TPM's state directory, likewise.
        created.extend(crate::swtpm::fill_in(
            &mut parsed.domain,
            &inner.config.tpm_state_dir,
        )?);
        // The files QEMU writes a chardev's output and log to: made empty if missing.
        let outputs = parsed.domain.chardevs.iter().flat_map(|c| {
            let output = match &c.source {
                ChardevSource::File { path, .. } => Some(path),
                _ => None,
            };
            let dev = format!("{} {}", c.role.as_str(), c.target.port.unwrap_or(0));
            output
                .into_iter()
                .chain(c.log.as_ref().map(|l| &l.file))
                .map(move |p| (dev.clone(), p))
        });
        for (dev, path) in outputs {
            let on_host = host.host_path(&path.to_string_lossy());
            // Created through its resolved, policy-checked directory: nothing is ever
            // created in a protected directory or through a planted link.
            if host
                .create_file(&dev, &on_host)
                .map_err(ManagerError::Plan)?
            {
                created.push(on_host);
            }
        }
        let jailed = !inner.stack.is_empty() && inner.stack.permits_mount_namespace();
        // A dry run binds nothing (nor removes a stale socket a start would replace).
        for c in parsed
            .domain
            .chardevs
            .iter()
            .filter(|_| jailed && bind_sockets)
        {
            if let ChardevSource::Unix {
                path,
                mode: SocketMode::Bind,
            } = &c.source
            {
                let dev = format!("{} {}", c.role.as_str(), c.target.port.unwrap_or(0));
                let on_host = host.host_path(&path.to_string_lossy());
                if let Some(l) = host
                    .bind_socket(&dev, &on_host)
                    .map_err(ManagerError::Plan)?
                {
                    created.push(on_host);
                    listeners.push((path.clone(), l.into()));
                }
            }
        }
        let mut cfg = svirt_domain::PlanConfig::for_host(&host).map_err(ManagerError::Plan)?;
        cfg.models = inner.models();
        // Shares reach the guest through an idmapped mount where its VMM has a jail of its
        // own to mount it in (a file system that cannot be idmapped falls back at start).
        cfg.idmap_trees = jailed && inner.config.idmap_shares;
        let mut res =
            svirt_domain::build_resources(&parsed.domain, &host).map_err(ManagerError::Plan)?;
        let warnings = std::mem::take(&mut res.warnings);
        let plan = svirt_domain::plan(&parsed.domain, res, &cfg).map_err(ManagerError::Plan)?;
        // Idmapped shares kept where the mount can and may be made; then the entries of
        // every tree a model changes, judged (an idmapped share's are not walked: nothing
        // beneath it changes).
        let mut plan = plan;
        settle_idmaps(&mut plan, &host, inner.idmap_policy())?;
        let trees = svirt_domain::check_trees(&plan, &host).map_err(ManagerError::Plan)?;
        for w in parsed.warnings.iter().chain(&warnings).chain(&trees) {
            tracing::warn!(guest = %plan.name, "{w}");
        }
        Ok(plan)
    })();
    match r {
        Ok(plan) => Ok((parsed.domain, plan, created, listeners)),
        Err(e) => {
            remove_created(&created);
            Err(e)
        }
    }
}

/// Keeps each share the plan gives the guest through an idmapped mount
/// ([`svirt_domain::DacAction::IdmapGuest`]) only where the mount can and may be made:
/// tried once here (a user namespace and a detached idmapped clone of the share, dropped
/// at once: about a millisecond), at planning. Where it cannot or must not — a share not
/// owned by a user's account ([`crate::idmap::may_map`]: through the mapping the guest
/// writes as the share's owner and group, set-id bits included), a file system that cannot
/// be idmapped, another object of the plan beneath the share (it would show through the
/// mapping as `nobody`'s) — the share falls back to a chown of every entry (`OwnGuest`),
/// logged naming why. Runs before [`svirt_domain::check_trees`], so a share that falls
/// back has its entries judged like any tree a model changes.
pub(crate) fn settle_idmaps(
    plan: &mut svirt_domain::Plan,
    host: &svirt_domain::Host,
    policy: crate::idmap::MapPolicy,
) -> Result<()> {
    let paths: Vec<PathBuf> = plan
        .resources
        .iter()
        .map(|r| r.resource.path.clone())
        .collect();
    let name = plan.name.clone();
    for r in plan
        .resources
        .iter_mut()
        .filter(|r| r.dac == svirt_domain::DacAction::IdmapGuest)
    {
        let share = r.resource.path.clone();
        let device = r.resource.device.clone();
        let tried = (|| -> std::result::Result<(), String> {
            if let Some(inner) = paths.iter().find(|p| **p != share && p.starts_with(&share)) {
                return Err(format!(
                    "{} lies beneath it (it would show as nobody's through the mapping)",
                    inner.display()
                ));
            }
            // Reached like every planned object: through the resolver, identity checked.
            let dir = host
                .resolve(&device, &share)
                .map_err(|e| e.to_string())?
                .open_dir()
                .map_err(|e| format!("open: {e}"))?;
            let st = rustix::fs::fstat(&dir).map_err(|e| format!("stat: {e}"))?;
            policy.check(st.st_uid, st.st_gid)?;
            // The trial maps to the overflow ids: whether the file system takes a mapping
            // does not depend on the ids (the guest's may not be allocated yet: dry runs).
            let ns = crate::idmap::userns_for(crate::idmap::IdMap {
                on_disk_uid: st.st_uid,
                on_disk_gid: st.st_gid,
                shown_uid: 65534,
                shown_gid: 65534,
            })
            .map_err(|e| format!("user namespace: {e}"))?;
            let tree = crate::idmap::detached(&dir).map_err(|e| format!("clone: {e}"))?;
            crate::idmap::set_idmap(&tree, &ns)
                .map_err(|e| format!("the file system cannot be idmapped here: {e}"))
        })();
        if let Err(why) = tried {
            tracing::warn!(
                guest = %name,
                "{}: no idmapped mount ({why}); its entries are chowned to the guest instead, and restored at stop",
                share.display()
            );
            r.dac = svirt_domain::DacAction::OwnGuest { private: true };
        }
    }
    Ok(())
}

/// Removes chardev files a failed start created.
pub(crate) fn remove_created(files: &[PathBuf]) {
    // Innermost first: a directory made here is removed once empty.
    for f in files.iter().rev() {
        if std::fs::symlink_metadata(f).is_ok_and(|m| m.is_dir()) {
            let _ = std::fs::remove_dir(f);
        } else {
            let _ = std::fs::remove_file(f);
        }
    }
}

/// Runs `f` with `/proc/thread-self/attr/<attr>` (`fscreate`, `sockcreate`) set to `label`,
/// then resets the attribute so later objects of this thread get their default label.
/// Without a label, just runs `f`.
pub(crate) fn with_create_label<T>(
    attr: &str,
    label: Option<&str>,
    f: impl FnOnce() -> std::io::Result<T>,
) -> std::io::Result<T> {
    use std::io::Write as _;
    let Some(label) = label else { return f() };
    // No O_CREAT: asking to create would need `write` on the attr directory (an AVC).
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .open(format!("/proc/thread-self/attr/{attr}"))?;
    file.write_all(label.as_bytes())?;
    let r = f();
    // A lone newline clears the attribute (the kernel treats it as "no label").
    let reset = file.write_all(b"\n");
    let v = r?;
    reset?;
    Ok(v)
}

/// The guest's RAM as `<memoryBacking>` asks, or `None` (QEMU's own).
fn memory_backend(d: &Domain) -> Result<Option<MemoryBackend>> {
    let Some(mb) = &d.memory_backing else {
        return Ok(None);
    };
    if mb.hugepages {
        return Err(ManagerError::Domain(
            "<memoryBacking><hugepages/> is not supported yet (the guest's memory would \
             silently be ordinary pages)"
                .into(),
        ));
    }
    let (path, memfd) = match (mb.source_type.as_deref(), &mb.path) {
        (Some("file"), Some(p)) => (Some(p.clone()), false),
        // libvirt's memory_backing_dir has no counterpart: the runtime directory is on
        // /run, a tmpfs far smaller than a guest's RAM may be.
        (Some("file"), None) => {
            return Err(ManagerError::Domain(
                "<memoryBacking><source type='file'/> needs a path (svirt has no default \
                 memory directory; memfd needs none)"
                    .into(),
            ));
        }
        (Some("memfd"), _) => (None, true),
        (None | Some("anonymous"), _) => (None, false),
        (Some(t), _) => {
            return Err(ManagerError::Domain(format!(
                "<memoryBacking><source type='{t}'/> is not supported (file, memfd, anonymous)"
            )));
        }
    };
    Ok(Some(MemoryBackend {
        path,
        memfd,
        shared: mb.shared,
        prealloc: mb.prealloc,
    }))
}

/// The devices without host objects, with a USB controller first when a USB device needs
/// one and the XML gives none (libvirt adds one the same way); refused when the XML turned
/// USB off (`model='none'`) and still asks for a USB device.
fn plain_devices(d: &Domain) -> Result<Vec<svirt_domain::PlainDevice>> {
    use svirt_domain::PlainDevice as P;
    let mut out = d.plain_devices.clone();
    let needs_usb = out.iter().any(|p| matches!(p, P::Input { usb: true, .. }));
    let has_usb = out.iter().any(|p| matches!(p, P::UsbController { .. }));
    if needs_usb && !has_usb {
        if d.usb_disabled {
            return Err(ManagerError::Domain(
                "a USB input device with <controller type='usb' model='none'/>: the guest \
                 would have no bus for it"
                    .into(),
            ));
        }
        out.insert(
            0,
            P::UsbController {
                qemu_model: "qemu-xhci".into(),
            },
        );
    } else if has_usb {
        // The controller before the devices on its bus.
        out.sort_by_key(|p| !matches!(p, P::UsbController { .. }));
    }
    // One VGA-compatible display (the first `<video>`, as libvirt makes it the primary);
    // the others as their secondary devices, where QEMU has one.
    let mut primary_seen = false;
    for p in &mut out {
        let P::Video { qemu_model } = p else {
            continue;
        };
        if !primary_seen {
            primary_seen = true;
            continue;
        }
        *qemu_model = match qemu_model.as_str() {
            "qxl-vga" => "qxl".into(),
            "virtio-vga" => "virtio-gpu-pci".into(),
            m => {
                return Err(ManagerError::Domain(format!(
                    "a second <video> of model {m}: only qxl and virtio have a secondary \
                     (non-VGA) device; a guest has one VGA display"
                )));
            }
        };
    }
    Ok(out)
}

/// The file name of a chardev's socket in the guest's runtime directory: a channel's
/// target name (`org.qemu.guest_agent.0`, as libvirt names it), else `serial0.sock` and
/// the like. Refused when it could name anything but one new entry of that directory.
fn runtime_socket_name(c: &svirt_domain::Chardev, what: &str) -> Result<String> {
    let name = match &c.target.name {
        Some(n) => n.clone(),
        None => format!("{}{}.sock", c.role.as_str(), c.target.port.unwrap_or(0)),
    };
    let ok = !name.is_empty()
        && name.len() <= 100
        && !name.starts_with('.')
        && name
            .chars()
            .all(|ch| ch.is_ascii_alphanumeric() || matches!(ch, '.' | '_' | '-'));
    if ok {
        Ok(name)
    } else {
        Err(ManagerError::Domain(format!(
            "{what}: target name {name:?} cannot name a socket in the guest's runtime \
             directory (letters, digits, '.', '_', '-'; not starting with '.')"
        )))
    }
}

/// Opens, in the host's network namespace, the sockets of the chardevs that QEMU would
/// otherwise open itself over the network (its jail has its own network namespace with
/// nothing in it): a TCP listener for `mode='bind'`, a connected TCP socket for
/// `mode='connect'`. Returned by chardev index, for `fd=N` on QEMU's command line.
///
/// With `jailed`, chardevs QEMU cannot open from inside its jail are refused, naming them:
/// `udp` (QEMU 7.2's backend takes no file descriptor) and `pty` (a pty QEMU opens in the
/// jail would have to come from the host's devpts, whose `ptmx` is mode 000 for the guest
/// and whose other ptys the jail would then show; a private devpts would be invisible to
/// the host and to the Landlock rules made in the parent).
pub(crate) fn host_sockets(
    spec: &VmSpec,
    jailed: bool,
    mut listeners: ChardevListeners,
) -> Result<Vec<(usize, std::os::fd::OwnedFd)>> {
    use std::net::{TcpListener, TcpStream, ToSocketAddrs};
    let mut out = Vec::new();
    for (i, c) in spec.chardevs.iter().enumerate() {
        match &c.backend {
            ChardevBackend::Unix {
                path,
                server: true,
                in_runtime_dir: false,
            } => {
                if let Some(k) = listeners.iter().position(|(p, _)| p == path) {
                    out.push((i, listeners.swap_remove(k).1));
                }
            }
            ChardevBackend::Tcp { host, port, server } => {
                let what = format!("chardev {i} (tcp {host}:{port})");
                let addrs: Vec<_> = (host.as_str(), *port)
                    .to_socket_addrs()
                    .map_err(|e| ManagerError::Domain(format!("{what}: resolve: {e}")))?
                    .collect();
                let fd: std::os::fd::OwnedFd = if *server {
                    TcpListener::bind(&addrs[..])
                        .map_err(|e| ManagerError::Domain(format!("{what}: listen: {e}")))?
                        .into()
                } else {
                    let mut last = None;
                    let mut got = None;
                    for a in &addrs {
                        match TcpStream::connect_timeout(a, std::time::Duration::from_secs(5)) {
                            Ok(s) => {
                                got = Some(s);
                                break;
                            }
                            Err(e) => last = Some(e),
                        }
                    }
                    match got {
                        Some(s) => s.into(),
                        None => {
                            return Err(ManagerError::Domain(format!(
                                "{what}: connect: {}",
                                last.map_or_else(|| "no address".to_string(), |e| e.to_string())
                            )));
                        }
                    }
                };
                out.push((i, fd));
            }
            ChardevBackend::Pty if jailed => {
                return Err(ManagerError::Domain(format!(
                    "chardev {i} (pty): a pty chardev cannot be started in the VMM's jail yet \
                     (it would need the host's devpts inside it); use a unix socket or tcp \
                     chardev"
                )));
            }
            ChardevBackend::Udp { host, port } if jailed => {
                return Err(ManagerError::Domain(format!(
                    "chardev {i} (udp {host}:{port}): a udp chardev cannot be started in the \
                     VMM's jail: QEMU 7.2 opens it itself (no fd= for udp) and the jail's \
                     network namespace reaches no host address; use a tcp or unix chardev"
                )));
            }
            _ => {}
        }
    }
    Ok(out)
}

/// Every host path QEMU is told on its command line for `spec` (as the XML spells it).
pub(crate) fn spec_paths(spec: &VmSpec) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = Vec::new();
    for d in &spec.disks {
        v.push(d.image.path.clone());
        v.extend(d.backing.iter().map(|b| b.path.clone()));
    }
    v.extend(spec.kernel.iter().cloned());
    v.extend(spec.initrd.iter().cloned());
    v.extend(spec.dtb.iter().cloned());
    v.extend(spec.loader.iter().map(|l| l.path.clone()));
    v.extend(spec.nvram.iter().cloned());
    v.extend(spec.rngs.iter().flatten().cloned());
    v.extend(spec.memory_backend.iter().filter_map(|b| b.path.clone()));
    for c in &spec.chardevs {
        v.extend(c.log.iter().map(|(f, _)| f.clone()));
        match &c.backend {
            // Not a spelling of the XML's: made by QEMU in the runtime directory.
            ChardevBackend::Unix {
                in_runtime_dir: true,
                ..
            } => {}
            ChardevBackend::File { path, .. }
            | ChardevBackend::Unix { path, .. }
            | ChardevBackend::Dev { path } => v.push(path.clone()),
            ChardevBackend::Pipe { path } => {
                // `p` itself, or `p.in` and `p.out`.
                v.push(path.clone());
                let mut i = path.clone().into_os_string();
                i.push(".in");
                let mut o = path.clone().into_os_string();
                o.push(".out");
                v.push(i.into());
                v.push(o.into());
            }
            _ => {}
        }
    }
    // A virtiofs share is virtiofsd's, never QEMU's.
    v.extend(
        spec.filesystems
            .iter()
            .filter(|f| f.driver == FsDriver::Virtio9p)
            .map(|f| f.source.clone()),
    );
    v
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    /// A domain whose share or memory backing svirt would not give QEMU as asked (virtiofs
    /// without shared memory, huge pages, an unknown share driver) is refused at start,
    /// naming it; the same domain without it, or with a memory backing svirt runs, starts
    /// (control).
    #[test]
    fn what_qemu_would_not_get_as_asked_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let share = dir.path().join("share");
        std::fs::create_dir(&share).unwrap();
        let xml = |fs_driver: &str, backing: &str| {
            format!(
                "<domain type='qemu'><name>x</name><memory unit='MiB'>16</memory>{backing}\
                 <os><type>hvm</type></os><devices><filesystem type='mount'>{fs_driver}\
                 <source dir='{}'/><target dir='tag0'/></filesystem></devices></domain>",
                share.display()
            )
        };
        let spec = |x: &str| {
            let host = svirt_domain::Host::new("/");
            let p = svirt_domain::plan_xml(x, &host, &svirt_domain::PlanConfig::default()).unwrap();
            super::vm_spec(
                &p.domain,
                &p.plan,
                std::path::Path::new("/run/svirt/guests/x"),
            )
            .map(|_| ())
            .map_err(|e| e.to_string())
        };
        spec(&xml("", "")).unwrap();
        spec(&xml("<driver type='path'/>", "")).unwrap();
        let e = spec(&xml("<driver type='virtiofs'/>", "")).unwrap_err();
        assert!(
            e.contains("filesystem tag0") && e.contains("virtiofs") && e.contains("shared"),
            "{e}"
        );
        let shared = "<memoryBacking><source type='memfd'/><access mode='shared'/></memoryBacking>";
        spec(&xml("<driver type='virtiofs'/>", shared)).unwrap();
        let e = spec(&xml("<driver type='handle'/>", shared)).unwrap_err();
        assert!(
            e.contains("filesystem tag0") && e.contains("'handle'"),
            "{e}"
        );
        spec(&xml(
            "",
            "<memoryBacking><source type='memfd'/><access mode='shared'/></memoryBacking>",
        ))
        .unwrap();
        let e = spec(&xml("", "<memoryBacking><hugepages/></memoryBacking>")).unwrap_err();
        assert!(e.contains("<hugepages/>"), "{e}");
    }

    /// What the XML says of boot order, entropy rate, 9p access mode and a parallel
    /// port's host device reaches QEMU instead of being dropped: `<os><boot dev>` as
    /// `-boot order=`, a disk's `<boot order>` as `bootindex`, `<rate>` as the rng
    /// device's `max-bytes`/`period`, `accessmode='mapped'` as `mapped-xattr`, a parallel
    /// `type='dev'` as a `parport` backend. Controls: without them, none of these.
    #[test]
    fn boot_order_rng_rate_accessmode_and_parport_reach_qemu() {
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("a.img");
        std::fs::write(&img, b"x").unwrap();
        let share = dir.path().join("share");
        std::fs::create_dir(&share).unwrap();
        let argv = |os_boot: &str, devices: &str| -> String {
            let x = format!(
                "<domain type='qemu'><name>x</name><memory unit='MiB'>16</memory>\
                 <os><type>hvm</type>{os_boot}</os><devices>{devices}</devices></domain>"
            );
            let host = svirt_domain::Host::new("/");
            let p =
                svirt_domain::plan_xml(&x, &host, &svirt_domain::PlanConfig::default()).unwrap();
            let spec = super::vm_spec(
                &p.domain,
                &p.plan,
                std::path::Path::new("/run/svirt/guests/x"),
            )
            .unwrap();
            crate::qemu::command_line(
                &spec,
                &crate::qemu::LaunchOptions {
                    accel: "tcg".into(),
                    paused: true,
                    qmp_fd: 3,
                    sandbox: true,
                    chardev_fds: Vec::new(),
                    vhost_user_fds: Vec::new(),
                    tpm_fd: None,
                },
            )
            .join(" ")
        };
        let disk = |boot: &str| {
            format!(
                "<disk type='file' device='disk'><source file='{}'/><target dev='vda' \
                 bus='virtio'/>{boot}</disk>",
                img.display()
            )
        };
        let a = argv("<boot dev='cdrom'/><boot dev='hd'/>", &disk(""));
        assert!(a.contains("-boot order=dc"), "{a}");
        assert!(!a.contains("bootindex"), "{a}");
        let a = argv("", &disk("<boot order='2'/>"));
        assert!(a.contains("bootindex=2") && !a.contains("-boot "), "{a}");
        let a = argv(
            "",
            "<rng model='virtio'><backend model='random'>/dev/urandom</backend>\
             <rate bytes='1234' period='2000'/></rng>",
        );
        assert!(
            a.contains("virtio-rng-pci,rng=rng0,max-bytes=1234,period=2000"),
            "{a}"
        );
        let a = argv(
            "",
            &format!(
                "<filesystem type='mount' accessmode='mapped'><source dir='{}'/>\
                 <target dir='t'/></filesystem>",
                share.display()
            ),
        );
        assert!(a.contains("security_model=mapped-xattr"), "{a}");
        // Controls.
        let a = argv(
            "",
            &format!(
                "{}<rng model='virtio'><backend model='builtin'/></rng>\
                 <filesystem type='mount'><source dir='{}'/><target dir='t'/></filesystem>",
                disk(""),
                share.display()
            ),
        );
        assert!(!a.contains("-boot ") && !a.contains("bootindex"), "{a}");
        assert!(
            !a.contains("max-bytes") && a.contains("security_model=none"),
            "{a}"
        );
    }

    /// The first `<video>` is the guest's VGA display; a second qxl or virtio one becomes
    /// its secondary device (`qxl`, `virtio-gpu-pci`); a second of a model with no
    /// secondary device is refused, naming it.
    #[test]
    fn one_vga_display_and_secondary_video_devices() {
        use svirt_domain::PlainDevice as P;
        let devices = |videos: &str| {
            let x = format!(
                "<domain type='qemu'><name>x</name><memory unit='MiB'>16</memory>\
                 <os><type>hvm</type></os><devices>{videos}</devices></domain>"
            );
            let host = svirt_domain::Host::new("/");
            let p =
                svirt_domain::plan_xml(&x, &host, &svirt_domain::PlanConfig::default()).unwrap();
            super::vm_spec(&p.domain, &p.plan, std::path::Path::new("/run/x"))
                .map(|s| s.plain_devices)
                .map_err(|e| e.to_string())
        };
        let video = |m: &str| P::Video {
            qemu_model: m.into(),
        };
        assert_eq!(
            devices(
                "<video><model type='qxl'/></video><video><model type='qxl'/></video>\
                 <video><model type='virtio'/></video>"
            )
            .unwrap(),
            vec![video("qxl-vga"), video("qxl"), video("virtio-gpu-pci")]
        );
        assert_eq!(
            devices("<video><model type='vga'/></video>").unwrap(),
            vec![video("VGA")]
        );
        let e = devices("<video><model type='qxl'/></video><video><model type='cirrus'/></video>")
            .unwrap_err();
        assert!(
            e.contains("cirrus-vga") && e.contains("second <video>"),
            "{e}"
        );
    }

    /// A USB device without a USB controller gets one, first (libvirt adds one the same
    /// way); with USB turned off it is refused; a disk on a bus svirt cannot give QEMU is
    /// refused instead of becoming a virtio disk.
    #[test]
    fn usb_controller_defaults_and_unsupported_disk_buses() {
        use svirt_domain::PlainDevice as P;
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("a.img");
        std::fs::write(&img, b"x").unwrap();
        let spec = |devices: &str| {
            let x = format!(
                "<domain type='qemu'><name>x</name><memory unit='MiB'>16</memory>\
                 <os><type>hvm</type></os><devices>{devices}</devices></domain>"
            );
            let host = svirt_domain::Host::new("/");
            let p =
                svirt_domain::plan_xml(&x, &host, &svirt_domain::PlanConfig::default()).unwrap();
            super::vm_spec(
                &p.domain,
                &p.plan,
                std::path::Path::new("/run/svirt/guests/x"),
            )
            .map_err(|e| e.to_string())
        };
        let s = spec("<input type='tablet' bus='usb'/>").unwrap();
        assert_eq!(
            s.plain_devices[0],
            P::UsbController {
                qemu_model: "qemu-xhci".into()
            }
        );
        let s =
            spec("<input type='tablet' bus='usb'/><controller type='usb' model='ehci'/>").unwrap();
        assert_eq!(
            s.plain_devices[0],
            P::UsbController {
                qemu_model: "usb-ehci".into()
            },
            "the controller goes before the devices on its bus"
        );
        let e = spec("<controller type='usb' model='none'/><input type='tablet' bus='usb'/>")
            .unwrap_err();
        assert!(e.contains("model='none'"), "{e}");
        let e = spec(&format!(
            "<disk type='file'><source file='{}'/><target dev='sda' bus='scsi'/></disk>",
            img.display()
        ))
        .unwrap_err();
        assert!(e.contains("disk sda") && e.contains("'scsi'"), "{e}");
        spec(&format!(
            "<disk type='file'><source file='{}'/><target dev='vda' bus='virtio'/></disk>",
            img.display()
        ))
        .unwrap();
    }

    /// A private share is planned idmapped where the VMM has a jail, and kept so only
    /// where the mount can and may be made: a share of its own account stays idmapped
    /// (control); a root-owned one, and one with another object of the plan beneath it,
    /// fall back to the chown (`OwnGuest`).
    #[test]
    fn idmapped_shares_fall_back_where_they_must() {
        use svirt_domain::DacAction;
        let tmp = tempfile::Builder::new()
            .prefix("svirt-idmap-")
            .tempdir_in("/var/tmp")
            .unwrap();
        let dir = tmp.path().canonicalize().unwrap();
        let mk = |name: &str, owner: u32| {
            let p = dir.join(name);
            std::fs::create_dir(&p).unwrap();
            std::os::unix::fs::chown(&p, Some(owner), Some(owner)).unwrap();
            p
        };
        let (own, rooted, outer) = (mk("own", 4321), mk("rooted", 0), mk("outer", 4322));
        let disk = outer.join("disk.img");
        std::fs::write(&disk, b"").unwrap();
        let fs = |p: &std::path::Path, tag: &str| {
            format!(
                "<filesystem type='mount'><source dir='{}'/><target dir='{tag}'/></filesystem>",
                p.display()
            )
        };
        let xml = format!(
            "<domain type='qemu'><name>x</name><memory unit='MiB'>16</memory>\
             <os><type>hvm</type></os><devices>{}{}{}\
             <disk type='file' device='disk'><source file='{}'/><target dev='vda'/></disk>\
             </devices></domain>",
            fs(&own, "a"),
            fs(&rooted, "b"),
            fs(&outer, "c"),
            disk.display()
        );
        let host = svirt_domain::Host::new("/");
        let cfg = svirt_domain::PlanConfig {
            models: vec![svirt_domain::Model::Dac],
            idmap_trees: true,
            ..svirt_domain::PlanConfig::default()
        };
        let mut plan = svirt_domain::plan_xml(&xml, &host, &cfg).unwrap().plan;
        let action = |plan: &svirt_domain::Plan, p: &std::path::Path| {
            plan.resources
                .iter()
                .find(|r| r.resource.path == p)
                .unwrap()
                .dac
        };
        for p in [&own, &rooted, &outer] {
            assert_eq!(action(&plan, p), DacAction::IdmapGuest, "planned");
        }
        let policy = crate::idmap::MapPolicy {
            min_id: (1000, 1000),
            guest_ids: (2_000_000_000, 2_000_065_535),
        };
        super::settle_idmaps(&mut plan, &host, policy).unwrap();
        assert_eq!(action(&plan, &own), DacAction::IdmapGuest);
        assert_eq!(
            action(&plan, &rooted),
            DacAction::OwnGuest { private: true }
        );
        assert_eq!(action(&plan, &outer), DacAction::OwnGuest { private: true });
        // Without the jail (SELinux stacks), nothing is planned idmapped.
        let cfg = svirt_domain::PlanConfig {
            idmap_trees: false,
            ..cfg
        };
        let plan = svirt_domain::plan_xml(&xml, &host, &cfg).unwrap().plan;
        assert_eq!(action(&plan, &own), DacAction::OwnGuest { private: true });
    }
}
