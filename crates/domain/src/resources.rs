//! Domain → the list of host objects the guest uses, each once.
//!
//! Every path is resolved through [`Host`] (fd-based, no symlink followed blindly) and
//! checked against the system paths before anything is touched. The same object reached
//! twice (same device and inode, whatever the path) becomes one resource:
//!
//! - access: read-write if any use needs it;
//! - sharing: the most private use wins (private > shared > read-only content), and the
//!   kind is the kind of that use;
//! - recursive: if any use is a tree;
//! - per-device overrides: must be identical across uses, else the domain is refused
//!   (one use asking `relabel='no'` and another asking for a label cannot both hold).

use std::collections::{BTreeMap, HashMap};
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use crate::domain::*;
use crate::error::{Error, Result};
use crate::host::{FileKind, Host, Resolved};
use crate::model::{
    Access, ChainLayer, DeviceOverride, DiskChain, Model, ObjectIdentity, Resource, ResourceKind,
    Sharing,
};
use crate::qcow2;

/// Longest backing chain followed (XML layers plus header layers).
pub const MAX_CHAIN_DEPTH: usize = 16;

/// The guest's resources and what the builder noticed on the way.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Resources {
    /// Each host object once, in document order of first use.
    pub resources: Vec<Resource>,
    /// The backing chain of every disk with a source (its layers are in `resources` too).
    pub disk_chains: Vec<DiskChain>,
    /// Non-fatal findings (mount points or hard links inside trees, overlaps).
    pub warnings: Vec<String>,
}

/// Builds the resource list of a domain. Nothing on the host is changed.
pub fn build_resources(domain: &Domain, host: &Host) -> Result<Resources> {
    let mut b = Builder {
        host,
        list: Vec::new(),
        by_id: HashMap::new(),
        trees: Vec::new(),
        warnings: Vec::new(),
        chains: Vec::new(),
    };
    b.os(&domain.os)?;
    for (i, d) in domain.disks.iter().enumerate() {
        b.disk(i, d)?;
    }
    for f in &domain.filesystems {
        let dev = format!("filesystem {}", f.target_dir);
        let (access, sharing) = if f.readonly {
            (Access::Ro, Sharing::ReadOnlyContent)
        } else {
            (Access::Rw, Sharing::Private)
        };
        let ov = overrides(&f.seclabels);
        b.add(
            &dev,
            &f.source_dir,
            ResourceKind::FilesystemTree,
            access,
            sharing,
            true,
            ov,
        )?;
    }
    for (i, c) in domain.chardevs.iter().enumerate() {
        b.chardev(i, c)?;
    }
    for (i, h) in domain.hostdevs.iter().enumerate() {
        b.hostdev(i, h)?;
    }
    for t in &domain.tpms {
        b.tpm(t, &domain.uuid)?;
    }
    for (i, r) in domain.rngs.iter().enumerate() {
        if let RngBackend::Random { device } = &r.backend {
            // /dev/urandom and /dev/random are what every VMM may read (the host needs
            // of every driver and jail); they are never relabeled. Any other source is
            // the guest's own device node, labeled as libvirt labels it.
            if device != Path::new("/dev/urandom") && device != Path::new("/dev/random") {
                b.add(
                    &format!("rng {i}"),
                    device,
                    ResourceKind::HostdevNode,
                    Access::Ro,
                    Sharing::Private,
                    false,
                    BTreeMap::new(),
                )?;
            }
        }
    }
    if let Some(MemoryBacking { path: Some(p), .. }) = &domain.memory_backing {
        b.add(
            "memoryBacking",
            p,
            ResourceKind::MemoryBacking,
            Access::Rw,
            Sharing::Private,
            false,
            BTreeMap::new(),
        )?;
    }
    b.check_trees()?;
    Ok(Resources {
        resources: b.list.into_iter().map(|e| e.res).collect(),
        disk_chains: b.chains,
        warnings: b.warnings,
    })
}

/// Per-model overrides from a device's `<seclabel>` elements.
fn overrides(s: &[DeviceSecLabel]) -> BTreeMap<Model, DeviceOverride> {
    s.iter()
        .filter_map(|s| match (&s.label, s.relabel) {
            (_, false) => Some((s.model, DeviceOverride::NoRelabel)),
            (Some(l), true) => Some((s.model, DeviceOverride::Label(l.clone()))),
            // relabel='yes' without a label: the default, nothing to override.
            (None, true) => None,
        })
        .collect()
}

struct Entry {
    res: Resource,
}

/// The directory of a disk's top image, by identity.
struct TopDir {
    id: Option<(u64, u64)>,
    path: PathBuf,
}

struct Builder<'h> {
    host: &'h Host,
    list: Vec<Entry>,
    by_id: HashMap<(u64, u64), usize>,
    /// Recursive resources (index into `list`) with their resolved root.
    trees: Vec<(usize, Resolved)>,
    warnings: Vec<String>,
    chains: Vec<DiskChain>,
}

/// A resolved backing layer as the VMM is to open it.
fn layer(r: &Resolved, format: ImageFormat) -> ChainLayer {
    ChainLayer {
        path: r.path.clone(),
        format,
        block: r.info.kind == FileKind::BlockDevice,
    }
}

fn privacy(s: Sharing) -> u8 {
    match s {
        Sharing::Private => 2,
        Sharing::Shared => 1,
        Sharing::ReadOnlyContent => 0,
    }
}

impl Builder<'_> {
    /// Resolves and records one use of a host object.
    #[allow(clippy::too_many_arguments)]
    fn add(
        &mut self,
        device: &str,
        given: &Path,
        kind: ResourceKind,
        access: Access,
        sharing: Sharing,
        recursive: bool,
        ov: BTreeMap<Model, DeviceOverride>,
    ) -> Result<Resolved> {
        let r = self.host.resolve(device, given)?;
        self.add_resolved(device, r, kind, access, sharing, recursive, ov)
    }

    #[allow(clippy::too_many_arguments)]
    fn add_resolved(
        &mut self,
        device: &str,
        r: Resolved,
        kind: ResourceKind,
        access: Access,
        sharing: Sharing,
        recursive: bool,
        ov: BTreeMap<Model, DeviceOverride>,
    ) -> Result<Resolved> {
        check_type(device, &r, kind)?;
        let id = (r.info.dev, r.info.ino);
        if let Some(&i) = self.by_id.get(&id) {
            let e = &mut self.list[i].res;
            if e.overrides != ov {
                return Err(Error::Conflict {
                    path: e.path.clone(),
                    first: e.device.clone(),
                    second: device.to_string(),
                    what: "per-device <seclabel> settings",
                });
            }
            if access == Access::Rw {
                e.access = Access::Rw;
            }
            if privacy(sharing) > privacy(e.sharing) {
                e.sharing = sharing;
                e.kind = kind;
            }
            if recursive && !e.recursive {
                e.recursive = true;
            }
            e.device = format!("{}, {device}", e.device);
            if recursive {
                let again = self.host.resolve(device, &r.path)?;
                self.trees.push((i, again));
            }
            return Ok(r);
        }
        let res = Resource {
            path: r.path.clone(),
            kind,
            access,
            sharing,
            recursive,
            device: device.to_string(),
            overrides: ov,
            identity: Some(ObjectIdentity {
                dev: r.info.dev,
                ino: r.info.ino,
            }),
        };
        self.by_id.insert(id, self.list.len());
        self.list.push(Entry { res });
        if recursive {
            let again = self.host.resolve(device, &r.path)?;
            self.trees.push((self.list.len() - 1, again));
        }
        Ok(r)
    }

    fn os(&mut self, os: &Os) -> Result<()> {
        let none = BTreeMap::new;
        if let Some(l) = &os.loader {
            // A pflash loader that is not read-only is written by QEMU.
            let access = if !l.readonly && l.loader_type == Some(LoaderType::Pflash) {
                Access::Rw
            } else {
                Access::Ro
            };
            if access == Access::Ro && in_system_firmware_dir(&l.path) {
                // The host's own firmware (OVMF, SeaBIOS): every VMM may read it (its
                // host needs, what the jail shows), nothing changes it; it is not the
                // guest's object to plan.
                return self.os_files_after_loader(os);
            }
            self.add(
                "os loader",
                &l.path,
                ResourceKind::Loader,
                access,
                Sharing::ReadOnlyContent,
                false,
                none(),
            )?;
        }
        self.os_files_after_loader(os)
    }

    /// The variable store and the direct-boot files.
    fn os_files_after_loader(&mut self, os: &Os) -> Result<()> {
        let none = BTreeMap::new;
        if let Some(n) = &os.nvram {
            self.add(
                "os nvram",
                &n.path,
                ResourceKind::Nvram,
                Access::Rw,
                Sharing::Private,
                false,
                none(),
            )?;
        }
        for (what, p, kind) in [
            ("os kernel", &os.kernel, ResourceKind::Kernel),
            ("os initrd", &os.initrd, ResourceKind::Initrd),
            ("os dtb", &os.dtb, ResourceKind::Dtb),
        ] {
            if let Some(p) = p {
                self.add(
                    what,
                    p,
                    kind,
                    Access::Ro,
                    Sharing::ReadOnlyContent,
                    false,
                    none(),
                )?;
            }
        }
        Ok(())
    }

    /// One disk: its image, then its backing chain, the one rule for which layers a disk
    /// has: the XML's `<backingStore>` layers, then (unless the XML closes the chain with
    /// an empty `<backingStore/>`) the files named by the qcow2 headers below the last one.
    fn disk(&mut self, index: usize, d: &Disk) -> Result<()> {
        let dev = format!("disk {}", d.target_dev);
        let Some(src) = &d.source else { return Ok(()) };
        let ov = overrides(&d.seclabels);
        if d.disk_type == DiskType::Dir {
            let (access, sharing) = if d.readonly {
                (Access::Ro, Sharing::ReadOnlyContent)
            } else {
                (Access::Rw, Sharing::Private)
            };
            self.add(
                &dev,
                src,
                ResourceKind::FilesystemTree,
                access,
                sharing,
                true,
                ov,
            )?;
            return Ok(());
        }
        let kind = match d.device {
            DiskDevice::Disk => ResourceKind::DiskImage,
            DiskDevice::Cdrom => ResourceKind::Cdrom,
            DiskDevice::Floppy => ResourceKind::Floppy,
        };
        // libvirt checks shareable before readonly: a shareable read-only disk gets the
        // shared label, with read-only access.
        let sharing = if d.shareable {
            Sharing::Shared
        } else if d.readonly {
            Sharing::ReadOnlyContent
        } else {
            Sharing::Private
        };
        let access = if d.readonly { Access::Ro } else { Access::Rw };
        let top = self.add(&dev, src, kind, access, sharing, false, ov.clone())?;
        // Header-named backing files must lie below the top image's directory (or an
        // image root): the header is guest data.
        let top_dir = TopDir {
            id: top.ancestors.last().copied(),
            path: top.path.parent().unwrap_or(Path::new("/")).to_path_buf(),
        };
        // Backing layers inherit the top's relabel='no' (as libvirt's parent seclabel).
        let inherited: BTreeMap<Model, DeviceOverride> = ov
            .into_iter()
            .filter(|(_, o)| *o == DeviceOverride::NoRelabel)
            .collect();
        let format = d.format.unwrap_or(ImageFormat::Raw);
        let mut chain = Vec::new();
        match (&d.backing, format) {
            (BackingSpec::NotGiven, ImageFormat::Qcow2) => {
                self.header_chain(&dev, src.clone(), top, &mut chain, &inherited, &top_dir)?;
            }
            (BackingSpec::NotGiven, ImageFormat::Raw) => {}
            (BackingSpec::Chain { layers, .. }, ImageFormat::Raw) if !layers.is_empty() => {
                return Err(Error::Invalid {
                    at: dev,
                    message: "a raw image cannot have backing layers".into(),
                });
            }
            (BackingSpec::Chain { layers, complete }, _) => {
                let mut last = None;
                for (i, l) in layers.iter().enumerate() {
                    let mut lov = overrides(&l.seclabels);
                    for (m, o) in &inherited {
                        lov.entry(*m).or_insert_with(|| o.clone());
                    }
                    let ldev = format!("{dev} backing {}", i + 1);
                    let r = self.add(
                        &ldev,
                        &l.source,
                        ResourceKind::BackingImage,
                        Access::Ro,
                        Sharing::ReadOnlyContent,
                        false,
                        lov,
                    )?;
                    chain.push(layer(&r, l.format));
                    last = Some((l, r));
                }
                if let (false, Some((l, r))) = (*complete, last)
                    && l.format == ImageFormat::Qcow2
                {
                    self.header_chain(&dev, l.source.clone(), r, &mut chain, &inherited, &top_dir)?;
                }
            }
        }
        self.chains.push(DiskChain {
            disk: index,
            layers: chain,
        });
        Ok(())
    }

    /// Follows backing files named in qcow2 headers, starting from an image whose format
    /// is declared qcow2. `given` is the path QEMU will open: relative backing names are
    /// relative to its directory. A header is guest data (the VMM writes its top image):
    /// a file it names is accepted only below `top_dir` or a configured image root, and
    /// only if it passes the object policy; anything else must be declared in the XML.
    /// Each layer found is appended to `layers` (which holds the XML's layers above).
    fn header_chain(
        &mut self,
        dev: &str,
        mut given: PathBuf,
        mut cur: Resolved,
        layers: &mut Vec<ChainLayer>,
        inherited: &BTreeMap<Model, DeviceOverride>,
        top_dir: &TopDir,
    ) -> Result<()> {
        let mut seen = vec![(cur.info.dev, cur.info.ino)];
        loop {
            let qerr = |path: &Path, message: String| Error::Qcow2 {
                device: dev.to_string(),
                path: path.to_path_buf(),
                message,
            };
            if !matches!(cur.info.kind, FileKind::File | FileKind::BlockDevice) {
                return Err(qerr(&cur.path, "not a regular file or block device".into()));
            }
            let mut buf = Vec::new();
            cur.open_read()
                .and_then(|f| {
                    f.take(qcow2::HEADER_READ_LIMIT as u64)
                        .read_to_end(&mut buf)
                })
                .map_err(|e| Error::Io {
                    device: dev.to_string(),
                    op: "read header of",
                    path: cur.path.clone(),
                    source: e,
                })?;
            let h = qcow2::parse_header(&buf).map_err(|m| qerr(&cur.path, m))?;
            if h.data_file.is_some() || h.has_data_file_bit {
                return Err(qerr(
                    &cur.path,
                    "uses an external data file, which svirt does not plan".into(),
                ));
            }
            let Some(name) = h.backing_file else {
                return Ok(());
            };
            let name_text = String::from_utf8_lossy(&name).into_owned();
            let Some(fmt) = h.backing_format else {
                return Err(qerr(
                    &cur.path,
                    format!(
                        "backing file '{name_text}' has no backing format in the header; svirt never probes formats (set it with qemu-img rebase -F)"
                    ),
                ));
            };
            let format = match fmt.as_str() {
                "qcow2" => ImageFormat::Qcow2,
                "raw" => ImageFormat::Raw,
                f => {
                    return Err(qerr(
                        &cur.path,
                        format!("unsupported backing format '{f}' for '{name_text}'"),
                    ));
                }
            };
            // `nbd:…`, `json:{…}` and other protocol names are not files.
            if let Some(colon) = name.iter().position(|&b| b == b':')
                && !name[..colon].contains(&b'/')
            {
                return Err(qerr(
                    &cur.path,
                    format!("backing file '{name_text}' is not a local file"),
                ));
            }
            let rel = PathBuf::from(std::ffi::OsStr::from_bytes(&name));
            let next_given = if rel.is_absolute() {
                rel
            } else {
                given.parent().unwrap_or(Path::new("/")).join(rel)
            };
            let depth = layers.len() + 1;
            if depth > MAX_CHAIN_DEPTH {
                return Err(qerr(
                    &cur.path,
                    format!("backing chain deeper than {MAX_CHAIN_DEPTH}"),
                ));
            }
            let ldev = format!("{dev} backing {depth}");
            let r = self.host.resolve(&ldev, &next_given)?;
            let beneath_top = top_dir.id.is_some_and(|d| r.ancestors.contains(&d));
            if !beneath_top
                && !self
                    .host
                    .image_roots()
                    .iter()
                    .any(|root| self.host.is_beneath(&r, root))
            {
                return Err(qerr(
                    &cur.path,
                    format!(
                        "its header names backing file '{name_text}' ({}), which is neither below the top image's directory {} nor below an image root: a backing file outside them must be declared with <backingStore> in the domain XML",
                        r.path.display(),
                        top_dir.path.display()
                    ),
                ));
            }
            let id = (r.info.dev, r.info.ino);
            if seen.contains(&id) {
                return Err(qerr(
                    &cur.path,
                    format!("backing chain loops back to {}", r.path.display()),
                ));
            }
            seen.push(id);
            let r = self.add_resolved(
                &ldev,
                r,
                ResourceKind::BackingImage,
                Access::Ro,
                Sharing::ReadOnlyContent,
                false,
                inherited.clone(),
            )?;
            layers.push(layer(&r, format));
            if format == ImageFormat::Raw {
                return Ok(());
            }
            given = next_given;
            cur = r;
        }
    }

    fn chardev(&mut self, i: usize, c: &Chardev) -> Result<()> {
        let dev = match (c.target.port, &c.target.name) {
            (_, Some(n)) => format!("{} {n}", c.role.as_str()),
            (Some(p), None) => format!("{} {p}", c.role.as_str()),
            (None, None) => format!("{} #{}", c.role.as_str(), i + 1),
        };
        let ov = overrides(&c.seclabels);
        let rw = Access::Rw;
        let private = Sharing::Private;
        if let Some(log) = &c.log {
            // Written by QEMU like a file chardev's output (libvirt labels it the same).
            self.add(
                &format!("{dev} log"),
                &log.file,
                ResourceKind::ChardevFile,
                rw,
                private,
                false,
                BTreeMap::new(),
            )?;
        }
        match &c.source {
            ChardevSource::File { path, .. } => {
                self.add(
                    &dev,
                    path,
                    ResourceKind::ChardevFile,
                    rw,
                    private,
                    false,
                    ov,
                )?;
            }
            ChardevSource::Dev { path } => {
                self.add(
                    &dev,
                    path,
                    ResourceKind::ChardevDevice,
                    rw,
                    private,
                    false,
                    ov,
                )?;
            }
            ChardevSource::Pipe { path } => {
                let with = |ext: &str| {
                    let mut s = path.as_os_str().to_os_string();
                    s.push(ext);
                    PathBuf::from(s)
                };
                let pin = self.host.try_resolve(&dev, &with(".in"))?;
                let pout = self.host.try_resolve(&dev, &with(".out"))?;
                match (pin, pout) {
                    (Some(a), Some(b)) => {
                        self.add_resolved(
                            &dev,
                            a,
                            ResourceKind::ChardevPipe,
                            rw,
                            private,
                            false,
                            ov.clone(),
                        )?;
                        self.add_resolved(
                            &dev,
                            b,
                            ResourceKind::ChardevPipe,
                            rw,
                            private,
                            false,
                            ov,
                        )?;
                    }
                    _ => {
                        self.add(
                            &dev,
                            path,
                            ResourceKind::ChardevPipe,
                            rw,
                            private,
                            false,
                            ov,
                        )?;
                    }
                }
            }
            ChardevSource::Unix {
                path,
                mode: SocketMode::Connect,
            } => {
                self.add(
                    &dev,
                    path,
                    ResourceKind::ChardevSocket,
                    rw,
                    private,
                    false,
                    ov,
                )?;
            }
            ChardevSource::Unix {
                path,
                mode: SocketMode::Bind,
            } => {
                // QEMU creates a missing socket itself; an existing one is labeled.
                if let Some(r) = self.host.try_resolve(&dev, path)? {
                    self.add_resolved(
                        &dev,
                        r,
                        ResourceKind::ChardevSocket,
                        rw,
                        private,
                        false,
                        ov,
                    )?;
                }
            }
            ChardevSource::Pty
            | ChardevSource::UnixInRuntimeDir
            | ChardevSource::Tcp { .. }
            | ChardevSource::Udp { .. }
            | ChardevSource::Other { .. } => {}
        }
        Ok(())
    }

    fn hostdev(&mut self, i: usize, h: &Hostdev) -> Result<()> {
        let none = BTreeMap::new();
        match *h {
            Hostdev::Usb {
                vendor,
                product,
                bus,
                device,
            } => {
                let dev = format!("hostdev #{} (usb)", i + 1);
                let (b, d) = match (bus, device, vendor, product) {
                    (Some(b), Some(d), _, _) => (b, d),
                    (_, _, Some(v), Some(p)) => self.host.usb_by_id(&dev, v, p)?,
                    _ => {
                        return Err(Error::Hostdev {
                            device: dev,
                            message: "no address and no vendor/product".into(),
                        });
                    }
                };
                let p = self.host.host_path(&format!("/dev/bus/usb/{b:03}/{d:03}"));
                self.add(
                    &dev,
                    &p,
                    ResourceKind::HostdevNode,
                    Access::Rw,
                    Sharing::Private,
                    false,
                    none,
                )?;
            }
            Hostdev::Pci {
                domain,
                bus,
                slot,
                function,
                ..
            } => {
                let addr = format!("{domain:04x}:{bus:02x}:{slot:02x}.{function:x}");
                let dev = format!("hostdev {addr} (pci)");
                let group = self.host.pci_iommu_group(&dev, &addr)?;
                let p = self.host.host_path(&format!("/dev/vfio/{group}"));
                self.add(
                    &dev,
                    &p,
                    ResourceKind::HostdevNode,
                    Access::Rw,
                    Sharing::Private,
                    false,
                    none,
                )?;
            }
        }
        Ok(())
    }

    fn tpm(&mut self, t: &Tpm, uuid: &uuid::Uuid) -> Result<()> {
        match &t.backend {
            TpmBackend::Emulator {
                state_path,
                version,
            } => {
                // libvirt's layout: `<root>/<uuid>/tpm2` (or `tpm1.2`).
                let p = match state_path {
                    Some(p) => p.clone(),
                    None => self.host.tpm_state_root().join(uuid.to_string()).join(
                        if version.as_deref() == Some("1.2") {
                            "tpm1.2"
                        } else {
                            "tpm2"
                        },
                    ),
                };
                self.add(
                    "tpm emulator",
                    &p,
                    ResourceKind::TpmState,
                    Access::Rw,
                    Sharing::Private,
                    true,
                    BTreeMap::new(),
                )?;
            }
            TpmBackend::Passthrough { device } => {
                self.add(
                    "tpm passthrough",
                    device,
                    ResourceKind::HostdevNode,
                    Access::Rw,
                    Sharing::Private,
                    false,
                    BTreeMap::new(),
                )?;
            }
        }
        Ok(())
    }

    /// Checks the root of every recursive resource (O(1)). Its entries are judged by
    /// [`check_trees`] once the plan says which models change them.
    fn check_trees(&mut self) -> Result<()> {
        for (i, root) in &self.trees {
            self.host.check_tree_root(&self.list[*i].res.device, root)?;
        }
        Ok(())
    }
}

/// Whether a planned model changes the entries beneath a tree resource (a recursive
/// relabel or chown), so that every entry must pass the object policy first. A share DAC
/// shows through an idmapped mount, with no label model relabeling it, changes nothing
/// beneath it: its entries are not walked (the guest's start does not grow with them).
pub fn tree_entries_change(plan: &crate::Plan, r: &crate::PlannedResource) -> bool {
    use crate::{DacAction, Model};
    if !r.resource.recursive {
        return false;
    }
    let selinux = plan.is_confined(Model::Selinux) && plan.selinux_relabel && r.selinux.is_some();
    let smack = plan.is_confined(Model::Smack)
        && matches!(crate::smack::object_label(r, None), Ok(Some(_)) | Err(_));
    let dac = plan.is_confined(Model::Dac)
        && plan.dac_enabled
        && !matches!(r.dac, DacAction::Untouched | DacAction::IdmapGuest);
    selinux || smack || dac
}

/// Walks every tree of `plan` whose entries a planned model changes
/// ([`tree_entries_change`]), never following symlinks, and judges each entry with the
/// object policy: a device node of the wrong class, or a hard link that may be a protected
/// file's other name, refuses the whole tree before anything is labeled. Returns what a
/// recursive relabel would also reach, as warnings: other file systems (not descended),
/// hard-linked files (whose other names may be outside the tree) and objects that are
/// resources of their own.
pub fn check_trees(plan: &crate::Plan, host: &Host) -> Result<Vec<String>> {
    let by_id: HashMap<(u64, u64), usize> = plan
        .resources
        .iter()
        .enumerate()
        .filter_map(|(i, r)| r.resource.identity.map(|id| ((id.dev, id.ino), i)))
        .collect();
    let mut warnings = Vec::new();
    for (i, pr) in plan.resources.iter().enumerate() {
        if !tree_entries_change(plan, pr) {
            continue;
        }
        let (device, path) = (&pr.resource.device, &pr.resource.path);
        let root = host.resolve(device, path)?;
        let writable = pr.resource.access == Access::Rw;
        host.check_tree_root(device, &root)?;
        let entries = host.walk_tree(device, &root)?;
        for e in entries {
            let p = path.join(&e.rel);
            if e.mount_point {
                warnings.push(format!(
                    "{device}: {} is another file system: not labeled",
                    p.display()
                ));
            } else {
                // Every entry passes the object policy: a device node of the wrong
                // class, or a hard link that may be a protected file's other name,
                // refuses the whole tree before anything is labeled.
                host.check_tree_entry(device, &p, &e.stat, writable)?;
                if e.info.kind != FileKind::Dir && e.info.nlink > 1 {
                    warnings.push(format!(
                        "{device}: {} has {} hard links: labeling it labels every name it has",
                        p.display(),
                        e.info.nlink
                    ));
                }
            }
            if let Some(&j) = by_id.get(&(e.info.dev, e.info.ino))
                && j != i
            {
                warnings.push(format!(
                    "{} ({}) is inside the tree of {device}: the tree's label applies to it first",
                    p.display(),
                    plan.resources[j].resource.device
                ));
            }
        }
    }
    Ok(warnings)
}

/// Refuses an object whose type does not fit its use.
fn check_type(device: &str, r: &Resolved, kind: ResourceKind) -> Result<()> {
    use FileKind as F;
    use ResourceKind as K;
    let ok = match kind {
        K::DiskImage | K::BackingImage | K::Cdrom | K::Floppy => {
            matches!(r.info.kind, F::File | F::BlockDevice)
        }
        K::Kernel | K::Initrd | K::Dtb | K::Loader | K::Nvram => r.info.kind == F::File,
        K::ChardevFile => matches!(r.info.kind, F::File | F::CharDevice),
        K::ChardevPipe => r.info.kind == F::Fifo,
        K::ChardevSocket => r.info.kind == F::Socket,
        K::ChardevDevice => r.info.kind == F::CharDevice,
        K::FilesystemTree | K::TpmState => r.info.kind == F::Dir,
        // Test roots hold regular files where a host has device nodes.
        K::HostdevNode => matches!(r.info.kind, F::CharDevice | F::File),
        K::MemoryBacking => matches!(r.info.kind, F::File | F::Dir),
    };
    if ok {
        Ok(())
    } else {
        Err(Error::WrongType {
            device: device.to_string(),
            path: r.path.clone(),
            message: format!("a {:?} cannot be used as {}", r.info.kind, kind_name(kind)),
        })
    }
}

/// Where the host keeps the firmware every VMM may read (Debian's `ovmf`, `seabios`,
/// `ipxe` and QEMU's own images).
pub const SYSTEM_FIRMWARE_DIRS: &[&str] = &[
    "/usr/share/qemu",
    "/usr/share/seabios",
    "/usr/share/ipxe",
    "/usr/share/OVMF",
    "/usr/share/ovmf",
];

/// Whether `p`, as written (absolute, no `.` or `..`), lies below a system firmware
/// directory. A link in there leads nowhere for the VMM: its jail and path rules show and
/// grant those directories, not what a link would reach.
pub fn in_system_firmware_dir(p: &Path) -> bool {
    use std::path::Component;
    p.is_absolute()
        && p.components()
            .all(|c| matches!(c, Component::RootDir | Component::Normal(_)))
        && SYSTEM_FIRMWARE_DIRS
            .iter()
            .any(|d| p.starts_with(d) && p != Path::new(d))
}

/// The kebab-case name of a kind, as in JSON.
pub fn kind_name(k: ResourceKind) -> &'static str {
    match k {
        ResourceKind::DiskImage => "disk-image",
        ResourceKind::BackingImage => "backing-image",
        ResourceKind::Cdrom => "cdrom",
        ResourceKind::Floppy => "floppy",
        ResourceKind::Kernel => "kernel",
        ResourceKind::Initrd => "initrd",
        ResourceKind::Dtb => "dtb",
        ResourceKind::Loader => "loader",
        ResourceKind::Nvram => "nvram",
        ResourceKind::ChardevFile => "chardev-file",
        ResourceKind::ChardevPipe => "chardev-pipe",
        ResourceKind::ChardevSocket => "chardev-socket",
        ResourceKind::ChardevDevice => "chardev-device",
        ResourceKind::FilesystemTree => "filesystem-tree",
        ResourceKind::HostdevNode => "hostdev-node",
        ResourceKind::TpmState => "tpm-state",
        ResourceKind::MemoryBacking => "memory-backing",
    }
}
