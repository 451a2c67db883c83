//! libvirt domain XML → [`Domain`].
//!
//! A strict subset of libvirt's format with its real semantics. DTDs (and so entity
//! declarations) are refused by roxmltree; documents over [`MAX_XML_BYTES`] are refused
//! before parsing. Unknown elements are ignored and reported as warnings.

use std::path::PathBuf;

use roxmltree::{Document, Node, ParsingOptions};

use crate::domain::*;
use crate::error::{Error, Result};
use crate::model::Model;

/// Largest domain document accepted (1 MiB): real domains are a few KiB.
pub const MAX_XML_BYTES: usize = 1 << 20;

/// Largest number of XML nodes accepted: bounds the work on hostile input.
const MAX_NODES: u32 = 200_000;

/// Elements that carry nothing svirt uses and are not worth a warning.
const QUIET: &[&str] = &["description", "title", "metadata"];

/// Parses a libvirt domain document.
pub fn parse(xml: &str) -> Result<Parsed> {
    if xml.len() > MAX_XML_BYTES {
        return Err(Error::TooLarge {
            size: xml.len(),
            limit: MAX_XML_BYTES,
        });
    }
    let opts = ParsingOptions {
        allow_dtd: false,
        nodes_limit: MAX_NODES,
        entity_resolver: None,
    };
    let doc = Document::parse_with_options(xml, opts).map_err(|e| Error::Xml(e.to_string()))?;
    let root = doc.root_element();
    if root.tag_name().name() != "domain" {
        return Err(invalid(
            root,
            format!(
                "root element is <{}>, expected <domain>",
                root.tag_name().name()
            ),
        ));
    }
    let mut p = Parser {
        warnings: Vec::new(),
        no_relabel: Vec::new(),
    };
    let domain = p.domain(root)?;
    Ok(Parsed {
        domain,
        warnings: p.warnings,
    })
}

struct Parser {
    warnings: Vec<String>,
    /// Models whose domain `<seclabel>` relabels nothing (`relabel='no'`, `type='none'`):
    /// a device `<seclabel>` of these is refused, as libvirt refuses it.
    no_relabel: Vec<Model>,
}

/// `/domain/devices/disk[2]`: the element's place in the document, 1-based index among
/// same-named siblings when there are several.
pub(crate) fn elpath(node: Node<'_, '_>) -> String {
    let mut parts = Vec::new();
    let mut cur = Some(node);
    while let Some(n) = cur {
        if !n.is_element() {
            break;
        }
        let name = n.tag_name().name();
        let same: Vec<_> = n
            .parent()
            .map(|p| {
                p.children()
                    .filter(|c| c.is_element() && c.tag_name().name() == name)
                    .collect()
            })
            .unwrap_or_default();
        if same.len() > 1 {
            let idx = same.iter().position(|c| *c == n).map_or(0, |i| i + 1);
            parts.push(format!("{name}[{idx}]"));
        } else {
            parts.push(name.to_string());
        }
        cur = n.parent();
    }
    parts.reverse();
    format!("/{}", parts.join("/"))
}

fn invalid(node: Node<'_, '_>, message: impl Into<String>) -> Error {
    Error::Invalid {
        at: elpath(node),
        message: message.into(),
    }
}

fn invalid_attr(node: Node<'_, '_>, attr: &str, message: impl Into<String>) -> Error {
    Error::Invalid {
        at: format!("{}@{attr}", elpath(node)),
        message: message.into(),
    }
}

fn child<'a, 'i>(node: Node<'a, 'i>, name: &str) -> Option<Node<'a, 'i>> {
    node.children()
        .find(|c| c.is_element() && c.tag_name().name() == name)
}

fn children<'a, 'i>(node: Node<'a, 'i>, name: &'static str) -> impl Iterator<Item = Node<'a, 'i>> {
    node.children()
        .filter(move |c| c.is_element() && c.tag_name().name() == name)
}

fn text(node: Node<'_, '_>) -> String {
    node.text().unwrap_or("").trim().to_string()
}

fn req_attr<'a>(node: Node<'a, '_>, name: &str) -> Result<&'a str> {
    node.attribute(name)
        .ok_or_else(|| invalid(node, format!("missing attribute '{name}'")))
}

fn yes_no(node: Node<'_, '_>, name: &str) -> Result<Option<bool>> {
    match node.attribute(name) {
        None => Ok(None),
        Some("yes") | Some("on") => Ok(Some(true)),
        Some("no") | Some("off") => Ok(Some(false)),
        Some(v) => Err(invalid_attr(node, name, format!("'{v}' is not yes or no"))),
    }
}

fn path_text(node: Node<'_, '_>) -> Result<PathBuf> {
    let t = text(node);
    if t.is_empty() {
        return Err(invalid(node, "empty path"));
    }
    Ok(PathBuf::from(t))
}

fn path_attr(node: Node<'_, '_>, name: &str) -> Result<PathBuf> {
    let v = req_attr(node, name)?;
    if v.is_empty() {
        return Err(invalid_attr(node, name, "empty path"));
    }
    Ok(PathBuf::from(v))
}

/// An unsigned number, decimal or `0x` hexadecimal (PCI and USB addresses).
fn number(node: Node<'_, '_>, name: &str) -> Result<Option<u64>> {
    let Some(v) = node.attribute(name) else {
        return Ok(None);
    };
    let v = v.trim();
    let parsed = match v.strip_prefix("0x").or_else(|| v.strip_prefix("0X")) {
        Some(h) => u64::from_str_radix(h, 16),
        None => v.parse::<u64>(),
    };
    parsed
        .map(Some)
        .map_err(|_| invalid_attr(node, name, format!("'{v}' is not a number")))
}

fn bounded<T: TryFrom<u64>>(node: Node<'_, '_>, name: &str, v: Option<u64>) -> Result<Option<T>> {
    v.map(|v| T::try_from(v).map_err(|_| invalid_attr(node, name, format!("{v} is out of range"))))
        .transpose()
}

/// Bytes in one unit of libvirt's memory units (`KiB` when absent).
fn unit_bytes(unit: &str) -> Option<u64> {
    Some(match unit {
        "b" | "bytes" => 1,
        "KB" => 1_000,
        "k" | "K" | "KiB" => 1 << 10,
        "MB" => 1_000_000,
        "M" | "MiB" => 1 << 20,
        "GB" => 1_000_000_000,
        "G" | "GiB" => 1 << 30,
        "TB" => 1_000_000_000_000,
        "T" | "TiB" => 1 << 40,
        "PB" => 1_000_000_000_000_000,
        "P" | "PiB" => 1 << 50,
        "EB" => 1_000_000_000_000_000_000,
        "E" | "EiB" => 1 << 60,
        _ => return None,
    })
}

/// A memory size in bytes from an element with an optional `unit=` attribute.
pub(crate) fn memory(node: Node<'_, '_>) -> Result<u64> {
    let unit = node.attribute("unit").unwrap_or("KiB");
    let mult = unit_bytes(unit)
        .ok_or_else(|| invalid_attr(node, "unit", format!("unknown unit '{unit}'")))?;
    let t = text(node);
    let n: u64 = t
        .parse()
        .map_err(|_| invalid(node, format!("'{t}' is not a size")))?;
    n.checked_mul(mult)
        .ok_or_else(|| invalid(node, format!("{t} {unit} overflows 64 bits of bytes")))
}

fn format_attr(node: Node<'_, '_>, name: &str) -> Result<Option<ImageFormat>> {
    match node.attribute(name) {
        None => Ok(None),
        Some("raw") => Ok(Some(ImageFormat::Raw)),
        Some("qcow2") => Ok(Some(ImageFormat::Qcow2)),
        Some(v) => Err(invalid_attr(
            node,
            name,
            format!("unsupported image format '{v}' (raw or qcow2)"),
        )),
    }
}

impl Parser {
    fn warn_unknown(&mut self, node: Node<'_, '_>, known: &[&str]) {
        for c in node.children().filter(|c| c.is_element()) {
            let name = c.tag_name().name();
            if !known.contains(&name) && !QUIET.contains(&name) {
                self.warnings
                    .push(format!("{}: element ignored", elpath(c)));
            }
        }
    }

    fn domain(&mut self, root: Node<'_, '_>) -> Result<Domain> {
        let virt_type = match req_attr(root, "type")? {
            "kvm" => VirtType::Kvm,
            "qemu" => VirtType::Qemu,
            v => {
                return Err(invalid_attr(
                    root,
                    "type",
                    format!("unsupported domain type '{v}' (kvm or qemu)"),
                ));
            }
        };
        self.warn_unknown(
            root,
            &[
                "name",
                "uuid",
                "memory",
                "currentMemory",
                "vcpu",
                "os",
                "devices",
                "seclabel",
                "memoryBacking",
            ],
        );
        let name_el = child(root, "name").ok_or_else(|| invalid(root, "missing <name>"))?;
        let name = text(name_el);
        if name.is_empty() || name.contains('/') || name.chars().any(char::is_control) {
            return Err(invalid(name_el, format!("invalid domain name {name:?}")));
        }
        let (uuid, uuid_generated) = match child(root, "uuid") {
            Some(u) => {
                let t = text(u);
                (
                    uuid::Uuid::parse_str(&t)
                        .map_err(|e| invalid(u, format!("invalid uuid '{t}': {e}")))?,
                    false,
                )
            }
            None => (uuid::Uuid::new_v4(), true),
        };
        let mem_el = child(root, "memory").ok_or_else(|| invalid(root, "missing <memory>"))?;
        let memory_bytes = memory(mem_el)?;
        let current_memory_bytes = child(root, "currentMemory").map(memory).transpose()?;
        let vcpus = match child(root, "vcpu") {
            Some(v) => {
                let t = text(v);
                match t.parse::<u32>() {
                    Ok(n) if n > 0 => n,
                    _ => return Err(invalid(v, format!("'{t}' is not a vcpu count"))),
                }
            }
            None => 1,
        };
        // Domain seclabels first: device seclabels without a model inherit the only one.
        let seclabels = self.domain_seclabels(root)?;
        self.no_relabel = seclabels
            .iter()
            .filter(|s| !s.relabel)
            .map(|s| s.model)
            .collect();
        let os = match child(root, "os") {
            Some(o) => self.os(o)?,
            None => return Err(invalid(root, "missing <os>")),
        };
        let default_model = match seclabels.as_slice() {
            [only] => only.model,
            _ => Model::Selinux,
        };
        let mut d = Domain {
            virt_type,
            name,
            uuid,
            uuid_generated,
            memory_bytes,
            current_memory_bytes,
            vcpus,
            os,
            emulator: None,
            disks: Vec::new(),
            filesystems: Vec::new(),
            chardevs: Vec::new(),
            hostdevs: Vec::new(),
            tpms: Vec::new(),
            rngs: Vec::new(),
            plain_devices: Vec::new(),
            usb_disabled: false,
            memory_backing: None,
            seclabels,
        };
        if let Some(mb) = child(root, "memoryBacking") {
            d.memory_backing = Some(self.memory_backing(mb)?);
        }
        if let Some(devs) = child(root, "devices") {
            self.devices(devs, &mut d, default_model)?;
        }
        // libvirt's rule: one way of stating the boot order.
        if !d.os.boot_devs.is_empty() && d.disks.iter().any(|k| k.boot_order.is_some()) {
            return Err(invalid(
                root,
                "per-device <boot order> cannot be used together with <os><boot dev>",
            ));
        }
        Ok(d)
    }

    fn os(&mut self, o: Node<'_, '_>) -> Result<Os> {
        self.warn_unknown(
            o,
            &[
                "type", "loader", "nvram", "kernel", "initrd", "dtb", "cmdline", "boot",
            ],
        );
        let firmware_efi = match o.attribute("firmware") {
            None | Some("bios") => false,
            Some("efi") => true,
            Some(v) => {
                return Err(invalid_attr(
                    o,
                    "firmware",
                    format!("unknown firmware '{v}' (efi or bios)"),
                ));
            }
        };
        let t = child(o, "type").ok_or_else(|| invalid(o, "missing <type>"))?;
        let os_type = text(t);
        if os_type != "hvm" {
            return Err(invalid(t, format!("unsupported os type '{os_type}' (hvm)")));
        }
        let loader = match child(o, "loader") {
            None => None,
            Some(l) => Some(Loader {
                path: path_text(l)?,
                readonly: yes_no(l, "readonly")?.unwrap_or(false),
                loader_type: match l.attribute("type") {
                    None => None,
                    Some("rom") => Some(LoaderType::Rom),
                    Some("pflash") => Some(LoaderType::Pflash),
                    Some(v) => {
                        return Err(invalid_attr(
                            l,
                            "type",
                            format!("unknown loader type '{v}'"),
                        ));
                    }
                },
            }),
        };
        let nvram = match child(o, "nvram") {
            None => None,
            Some(n) => Some(Nvram {
                path: path_text(n)?,
                template: n.attribute("template").map(PathBuf::from),
            }),
        };
        let opt_path = |name: &str| child(o, name).map(path_text).transpose();
        let mut boot_devs = Vec::new();
        for b in children(o, "boot") {
            match req_attr(b, "dev")? {
                d @ ("hd" | "cdrom" | "fd" | "network") => boot_devs.push(d.to_string()),
                d => return Err(invalid_attr(b, "dev", format!("unknown boot device '{d}'"))),
            }
        }
        Ok(Os {
            os_type,
            arch: t.attribute("arch").map(str::to_string),
            machine: t.attribute("machine").map(str::to_string),
            loader,
            nvram,
            kernel: opt_path("kernel")?,
            initrd: opt_path("initrd")?,
            dtb: opt_path("dtb")?,
            cmdline: child(o, "cmdline").map(text),
            firmware_efi,
            boot_devs,
        })
    }

    fn memory_backing(&mut self, mb: Node<'_, '_>) -> Result<MemoryBacking> {
        self.warn_unknown(
            mb,
            &[
                "hugepages",
                "source",
                "access",
                "allocation",
                "locked",
                "nosharepages",
                "discard",
            ],
        );
        let src = child(mb, "source");
        // What QEMU cannot be given as asked is refused, not dropped.
        for (el, why) in [
            (
                "locked",
                "needs the VMM to lock its memory (CAP_IPC_LOCK or a raised limit)",
            ),
            ("nosharepages", "is not supported yet"),
            ("discard", "is not supported yet"),
        ] {
            if let Some(n) = child(mb, el) {
                return Err(invalid(n, format!("<{el}> {why}")));
            }
        }
        let shared = match child(mb, "access").and_then(|a| a.attribute("mode")) {
            None | Some("private") => false,
            Some("shared") => true,
            Some(v) => {
                return Err(invalid(
                    mb,
                    format!("access mode '{v}' (shared or private)"),
                ));
            }
        };
        let prealloc = match child(mb, "allocation").and_then(|a| a.attribute("mode")) {
            None | Some("ondemand") => false,
            Some("immediate") => true,
            Some(v) => {
                return Err(invalid(
                    mb,
                    format!("allocation mode '{v}' (immediate or ondemand)"),
                ));
            }
        };
        let source_type = src.and_then(|s| s.attribute("type")).map(str::to_string);
        let path = src
            .and_then(|s| s.attribute("path"))
            .filter(|p| !p.is_empty())
            .map(PathBuf::from);
        // A path is where a file's memory lives: with memfd or anonymous memory QEMU would
        // never open it, and the plan would hold an object the VMM is not given.
        if let (Some(s), Some(_)) = (src, &path)
            && source_type.as_deref() != Some("file")
        {
            return Err(invalid_attr(
                s,
                "path",
                "a memory path is only for <source type='file'>",
            ));
        }
        Ok(MemoryBacking {
            hugepages: child(mb, "hugepages").is_some(),
            source_type,
            path,
            shared,
            prealloc,
        })
    }

    fn domain_seclabels(&mut self, root: Node<'_, '_>) -> Result<Vec<SecLabel>> {
        let mut out: Vec<SecLabel> = Vec::new();
        for s in children(root, "seclabel") {
            let at = elpath(s);
            let model_name = s.attribute("model").unwrap_or("selinux");
            let model = Model::from_name(model_name).ok_or_else(|| Error::UnknownModel {
                at: at.clone(),
                model: model_name.to_string(),
                why: "unknown",
            })?;
            if out.iter().any(|o| o.model == model) {
                return Err(Error::Seclabel {
                    at,
                    message: format!("more than one <seclabel> for model '{model}' on the domain"),
                });
            }
            self.warn_unknown(s, &["label", "baselabel", "imagelabel"]);
            let label = child(s, "label").map(text).filter(|t| !t.is_empty());
            let baselabel = child(s, "baselabel").map(text).filter(|t| !t.is_empty());
            let imagelabel = child(s, "imagelabel").map(text).filter(|t| !t.is_empty());
            let sec_type = match s.attribute("type") {
                Some("dynamic") | Some("default") => SecLabelType::Dynamic,
                Some("static") => SecLabelType::Static,
                Some("none") => SecLabelType::None,
                Some(v) => {
                    return Err(Error::Seclabel {
                        at: format!("{at}@type"),
                        message: format!("unknown type '{v}'"),
                    });
                }
                // libvirt: a baselabel without a type implies dynamic.
                None if baselabel.is_some() => SecLabelType::Dynamic,
                None if label.is_some() => SecLabelType::Static,
                None => SecLabelType::Dynamic,
            };
            let relabel_attr = yes_no(s, "relabel")?;
            let relabel = match (sec_type, relabel_attr) {
                (SecLabelType::Dynamic, Some(false)) => {
                    return Err(Error::Seclabel {
                        at: format!("{at}@relabel"),
                        message: "relabel='no' is not allowed with type='dynamic'".into(),
                    });
                }
                (SecLabelType::None, Some(true)) => {
                    return Err(Error::Seclabel {
                        at: format!("{at}@relabel"),
                        message: "relabel='yes' is not allowed with type='none'".into(),
                    });
                }
                (SecLabelType::Dynamic, _) => true,
                (SecLabelType::Static, r) => r.unwrap_or(false),
                (SecLabelType::None, _) => false,
            };
            if sec_type == SecLabelType::Static && label.is_none() {
                return Err(Error::Seclabel {
                    at,
                    message: "type='static' requires a <label>".into(),
                });
            }
            if sec_type == SecLabelType::Dynamic && label.is_some() {
                self.warnings.push(format!(
                    "{at}/label: ignored: a dynamic seclabel's label is allocated"
                ));
            }
            if imagelabel.is_some() {
                self.warnings
                    .push(format!("{at}/imagelabel: output only, ignored"));
            }
            if model == Model::Selinux {
                for (what, v) in [("label", &label), ("baselabel", &baselabel)] {
                    if let Some(v) = v {
                        svirt_labels::Context::parse(v).map_err(|e| Error::Seclabel {
                            at: format!("{at}/{what}"),
                            message: format!("invalid SELinux context '{v}': {e}"),
                        })?;
                    }
                }
            }
            let (label, baselabel) = match sec_type {
                SecLabelType::Static => (label, None),
                SecLabelType::Dynamic => (None, baselabel),
                SecLabelType::None => (None, None),
            };
            out.push(SecLabel {
                model,
                sec_type,
                relabel,
                label,
                baselabel,
                imagelabel,
            });
        }
        Ok(out)
    }

    /// `<source><seclabel>` elements of one device source.
    fn device_seclabels(
        &mut self,
        src: Node<'_, '_>,
        default_model: Model,
    ) -> Result<Vec<DeviceSecLabel>> {
        let mut out: Vec<DeviceSecLabel> = Vec::new();
        for s in children(src, "seclabel") {
            let at = elpath(s);
            let model = match s.attribute("model") {
                None => default_model,
                Some(m) => Model::from_name(m).ok_or_else(|| Error::UnknownModel {
                    at: at.clone(),
                    model: m.to_string(),
                    why: "unknown",
                })?,
            };
            if out.iter().any(|o| o.model == model) {
                return Err(Error::Seclabel {
                    at,
                    message: format!("more than one <seclabel> for model '{model}' on one device"),
                });
            }
            self.warn_unknown(s, &["label"]);
            let relabel = yes_no(s, "relabel")?.unwrap_or(true);
            let label = child(s, "label").map(text).filter(|t| !t.is_empty());
            if !relabel && label.is_some() {
                return Err(Error::Seclabel {
                    at,
                    message: "a <label> cannot be given with relabel='no'".into(),
                });
            }
            if let (Model::Selinux, Some(l)) = (model, &label) {
                svirt_labels::Context::parse(l).map_err(|e| Error::Seclabel {
                    at: format!("{at}/label"),
                    message: format!("invalid SELinux context '{l}': {e}"),
                })?;
            }
            out.push(DeviceSecLabel {
                model,
                relabel,
                label,
                at,
            });
        }
        // libvirt's rule: a device's seclabel overrides the domain's relabeling, so it
        // needs relabeling on; with it off the override would be dropped unnoticed.
        if let Some(s) = out.iter().find(|s| self.no_relabel.contains(&s.model)) {
            return Err(Error::Seclabel {
                at: s.at.clone(),
                message: format!(
                    "label overrides require relabeling to be enabled at the domain level \
                     (the domain's <seclabel model='{}'> relabels nothing)",
                    s.model
                ),
            });
        }
        Ok(out)
    }

    fn devices(&mut self, devs: Node<'_, '_>, d: &mut Domain, dm: Model) -> Result<()> {
        for c in devs.children().filter(|c| c.is_element()) {
            match c.tag_name().name() {
                "emulator" => d.emulator = Some(path_text(c)?),
                "disk" => d.disks.push(self.disk(c, dm)?),
                "filesystem" => d.filesystems.push(self.filesystem(c, dm)?),
                "serial" => d.chardevs.push(self.chardev(c, ChardevRole::Serial, dm)?),
                "console" => d.chardevs.push(self.chardev(c, ChardevRole::Console, dm)?),
                "channel" => d.chardevs.push(self.chardev(c, ChardevRole::Channel, dm)?),
                "parallel" => d.chardevs.push(self.chardev(c, ChardevRole::Parallel, dm)?),
                "hostdev" => d.hostdevs.push(self.hostdev(c)?),
                "tpm" => d.tpms.push(self.tpm(c)?),
                // Dropping it would start a guest without the network it asks for.
                "interface" => {
                    return Err(invalid(
                        c,
                        "network interfaces are not supported yet (svirt guests have no \
                         network until its virtual network security lands): remove the \
                         <interface>",
                    ));
                }
                "rng" => d.rngs.push(self.rng(c)?),
                name => match crate::devices::classify(c) {
                    Some(crate::devices::Outcome::Device(dev)) => d.plain_devices.push(dev),
                    Some(crate::devices::Outcome::Implicit) => {}
                    Some(crate::devices::Outcome::UsbOff) => d.usb_disabled = true,
                    Some(crate::devices::Outcome::Refused(why)) => return Err(invalid(c, why)),
                    // Dropping a device of the guest without a word is what the rule
                    // forbids: an element svirt does not know is refused too.
                    None => {
                        return Err(invalid(
                            c,
                            format!("<{name}> is not a device svirt knows how to run"),
                        ));
                    }
                },
            }
        }
        Ok(())
    }

    fn disk(&mut self, c: Node<'_, '_>, dm: Model) -> Result<Disk> {
        let disk_type = match c.attribute("type").unwrap_or("file") {
            "file" => DiskType::File,
            "block" => DiskType::Block,
            "dir" => DiskType::Dir,
            // Dropping it would start the guest without the disk it asks for.
            "network" => {
                return Err(invalid_attr(
                    c,
                    "type",
                    "network disks are not supported yet (the VMM runs in a network \
                     namespace of its own and svirt opens no remote storage for it)",
                ));
            }
            v => {
                return Err(invalid_attr(
                    c,
                    "type",
                    format!("unsupported disk type '{v}'"),
                ));
            }
        };
        let device = match c.attribute("device").unwrap_or("disk") {
            "disk" => DiskDevice::Disk,
            "cdrom" => DiskDevice::Cdrom,
            "floppy" => DiskDevice::Floppy,
            v => {
                return Err(invalid_attr(
                    c,
                    "device",
                    format!("unsupported disk device '{v}'"),
                ));
            }
        };
        self.warn_unknown(
            c,
            &[
                "driver",
                "source",
                "target",
                "readonly",
                "shareable",
                "backingStore",
                "address",
                "boot",
                "serial",
                "alias",
                "iotune",
                "blockio",
            ],
        );
        // What QEMU would not get as asked is refused, never dropped.
        refuse_children(
            c,
            &[
                (
                    "transient",
                    "transient disks are not supported yet (svirt has no overlay to discard \
                     the guest's writes: they would reach the image)",
                ),
                (
                    "encryption",
                    "encrypted images are not supported yet (QEMU would read the ciphertext \
                     as the disk)",
                ),
                (
                    "mirror",
                    "a block job's <mirror> is not supported (its target would be neither \
                     planned nor given to QEMU)",
                ),
            ],
        )?;
        let format = match child(c, "driver") {
            Some(drv) => format_attr(drv, "type")?,
            None => None,
        };
        let (source, seclabels) = match child(c, "source") {
            Some(s) => {
                refuse_source_children(s)?;
                (
                    Some(source_path(s, disk_type)?),
                    self.device_seclabels(s, dm)?,
                )
            }
            // An empty CD-ROM or floppy drive (virt-install leaves one after an install):
            // QEMU gets the drive with no medium. A disk has no such state.
            None if device != DiskDevice::Disk => (None, Vec::new()),
            None => return Err(invalid(c, "a disk needs a <source>")),
        };
        let target = child(c, "target").ok_or_else(|| invalid(c, "missing <target>"))?;
        let target_dev = req_attr(target, "dev")?.to_string();
        let backing = match child(c, "backingStore") {
            None => BackingSpec::NotGiven,
            Some(b) => self.backing_chain(b, dm)?,
        };
        Ok(Disk {
            disk_type,
            device,
            format,
            source,
            target_dev,
            target_bus: target.attribute("bus").map(str::to_string),
            // libvirt always treats a CD-ROM as read-only.
            readonly: child(c, "readonly").is_some() || device == DiskDevice::Cdrom,
            shareable: child(c, "shareable").is_some(),
            seclabels,
            backing,
            boot_order: match child(c, "boot") {
                Some(b) => Some(
                    bounded::<u32>(b, "order", number(b, "order")?)?
                        .filter(|o| *o > 0)
                        .ok_or_else(|| {
                            invalid_attr(b, "order", "a boot order above 0 is required")
                        })?,
                ),
                None => None,
            },
        })
    }

    fn backing_chain(&mut self, first: Node<'_, '_>, dm: Model) -> Result<BackingSpec> {
        let mut layers = Vec::new();
        let mut cur = Some(first);
        let mut complete = false;
        while let Some(b) = cur {
            if layers.len() >= crate::MAX_CHAIN_DEPTH {
                return Err(invalid(
                    b,
                    format!("backing chain deeper than {}", crate::MAX_CHAIN_DEPTH),
                ));
            }
            let has_content = b.attribute("type").is_some() || child(b, "source").is_some();
            if !has_content {
                // An empty <backingStore/> ends the chain.
                complete = true;
                break;
            }
            let disk_type = match b.attribute("type").unwrap_or("file") {
                "file" => DiskType::File,
                "block" => DiskType::Block,
                v => {
                    return Err(invalid_attr(
                        b,
                        "type",
                        format!("unsupported backing store type '{v}'"),
                    ));
                }
            };
            self.warn_unknown(b, &["format", "source", "backingStore"]);
            let fmt_el = child(b, "format").ok_or_else(|| {
                invalid(
                    b,
                    "backing store without <format type=…>: svirt never probes an image's format",
                )
            })?;
            let format = format_attr(fmt_el, "type")?
                .ok_or_else(|| invalid(fmt_el, "missing attribute 'type'"))?;
            let src = child(b, "source").ok_or_else(|| invalid(b, "missing <source>"))?;
            refuse_source_children(src)?;
            layers.push(BackingLayer {
                disk_type,
                format,
                source: source_path(src, disk_type)?,
                seclabels: self.device_seclabels(src, dm)?,
            });
            cur = child(b, "backingStore");
            if cur.is_none() && format == ImageFormat::Raw {
                complete = true;
            }
        }
        Ok(BackingSpec::Chain { layers, complete })
    }

    fn filesystem(&mut self, c: Node<'_, '_>, dm: Model) -> Result<Filesystem> {
        match c.attribute("type").unwrap_or("mount") {
            "mount" => {}
            v => {
                return Err(invalid_attr(
                    c,
                    "type",
                    format!("unsupported filesystem type '{v}' (mount)"),
                ));
            }
        }
        self.warn_unknown(
            c,
            &[
                "source", "target", "readonly", "driver", "address", "alias", "binary",
            ],
        );
        let src = child(c, "source").ok_or_else(|| invalid(c, "missing <source>"))?;
        let target = child(c, "target").ok_or_else(|| invalid(c, "missing <target>"))?;
        Ok(Filesystem {
            accessmode: c.attribute("accessmode").map(str::to_string),
            driver: child(c, "driver")
                .and_then(|d| d.attribute("type"))
                .map(str::to_string),
            source_dir: path_attr(src, "dir")?,
            target_dir: req_attr(target, "dir")?.to_string(),
            readonly: child(c, "readonly").is_some(),
            seclabels: self.device_seclabels(src, dm)?,
        })
    }

    fn chardev(&mut self, c: Node<'_, '_>, role: ChardevRole, dm: Model) -> Result<Chardev> {
        self.warn_unknown(
            c,
            &["source", "target", "protocol", "address", "alias", "log"],
        );
        let ty = c.attribute("type").unwrap_or("pty");
        let sources: Vec<_> = children(c, "source").collect();
        let first = sources.first().copied();
        let need_src = || first.ok_or_else(|| invalid(c, format!("type='{ty}' needs a <source>")));
        let mut seclabels = Vec::new();
        for s in &sources {
            seclabels.extend(self.device_seclabels(*s, dm)?);
        }
        let mode = |s: Node<'_, '_>, default: SocketMode| -> Result<SocketMode> {
            match s.attribute("mode") {
                None => Ok(default),
                Some("bind") => Ok(SocketMode::Bind),
                Some("connect") => Ok(SocketMode::Connect),
                Some(v) => Err(invalid_attr(s, "mode", format!("unknown mode '{v}'"))),
            }
        };
        let source = match ty {
            "file" => {
                let s = need_src()?;
                ChardevSource::File {
                    path: path_attr(s, "path")?,
                    append: yes_no(s, "append")?.unwrap_or(false),
                }
            }
            "pipe" => ChardevSource::Pipe {
                path: path_attr(need_src()?, "path")?,
            },
            "dev" => ChardevSource::Dev {
                path: path_attr(need_src()?, "path")?,
            },
            "unix" => {
                // libvirt's default for a unix chardev source is bind (server).
                let m = match first {
                    Some(s) => mode(s, SocketMode::Bind)?,
                    None => SocketMode::Bind,
                };
                match first.filter(|s| s.attribute("path").is_some_and(|p| !p.is_empty())) {
                    Some(s) => ChardevSource::Unix {
                        path: path_attr(s, "path")?,
                        mode: m,
                    },
                    // No path: a server socket svirt makes in the guest's runtime
                    // directory (libvirt fills one in the same way).
                    None if m == SocketMode::Bind => ChardevSource::UnixInRuntimeDir,
                    None => {
                        return Err(invalid(
                            c,
                            "type='unix' with mode='connect' needs a <source path>",
                        ));
                    }
                }
            }
            "pty" => ChardevSource::Pty,
            "tcp" => {
                let s = need_src()?;
                // QEMU would get a plain raw socket: refused rather than run otherwise.
                if yes_no(s, "tls")? == Some(true) {
                    return Err(invalid_attr(
                        s,
                        "tls",
                        "TLS chardevs are not supported yet (QEMU would get a plain TCP socket)",
                    ));
                }
                if let Some(p) = child(c, "protocol")
                    && let Some(t) = p.attribute("type").filter(|t| *t != "raw")
                {
                    return Err(invalid_attr(
                        p,
                        "type",
                        format!(
                            "chardev protocol '{t}' is not supported yet (raw only: QEMU would \
                             get a raw socket)"
                        ),
                    ));
                }
                ChardevSource::Tcp {
                    host: s.attribute("host").unwrap_or("").to_string(),
                    service: req_attr(s, "service")?.to_string(),
                    mode: mode(s, SocketMode::Connect)?,
                }
            }
            "udp" => {
                let connect = sources
                    .iter()
                    .find(|s| s.attribute("mode") != Some("bind"))
                    .copied();
                let bind = sources
                    .iter()
                    .find(|s| s.attribute("mode") == Some("bind"))
                    .copied();
                let connect = connect
                    .ok_or_else(|| invalid(c, "type='udp' needs a <source mode='connect'>"))?;
                ChardevSource::Udp {
                    host: connect.attribute("host").unwrap_or("").to_string(),
                    service: req_attr(connect, "service")?.to_string(),
                    bind_host: bind.and_then(|b| b.attribute("host")).map(str::to_string),
                    bind_service: bind
                        .and_then(|b| b.attribute("service"))
                        .map(str::to_string),
                }
            }
            "null" | "vc" | "stdio" | "spicevmc" | "spiceport" | "qemu-vdagent" | "dbus" => {
                ChardevSource::Other {
                    name: ty.to_string(),
                }
            }
            v => {
                return Err(invalid_attr(
                    c,
                    "type",
                    format!("unsupported chardev type '{v}'"),
                ));
            }
        };
        let target = match child(c, "target") {
            None => ChardevTarget::default(),
            Some(t) => ChardevTarget {
                target_type: t.attribute("type").map(str::to_string),
                port: bounded(t, "port", number(t, "port")?)?,
                name: t.attribute("name").map(str::to_string),
            },
        };
        let log = match child(c, "log") {
            None => None,
            Some(l) => Some(ChardevLog {
                file: path_attr(l, "file")?,
                append: yes_no(l, "append")?.unwrap_or(false),
            }),
        };
        Ok(Chardev {
            role,
            source,
            target,
            seclabels,
            log,
        })
    }

    fn hostdev(&mut self, c: Node<'_, '_>) -> Result<Hostdev> {
        match c.attribute("mode").unwrap_or("subsystem") {
            "subsystem" => {}
            v => {
                return Err(invalid_attr(
                    c,
                    "mode",
                    format!("unsupported hostdev mode '{v}' (subsystem)"),
                ));
            }
        }
        self.warn_unknown(c, &["source", "address", "alias", "boot", "rom", "driver"]);
        let src = child(c, "source").ok_or_else(|| invalid(c, "missing <source>"))?;
        match req_attr(c, "type")? {
            "usb" => {
                let id = |name: &str| -> Result<Option<u16>> {
                    match child(src, name) {
                        None => Ok(None),
                        Some(n) => bounded(n, "id", number(n, "id")?),
                    }
                };
                let (bus, device) = match child(src, "address") {
                    Some(a) => (
                        bounded(a, "bus", number(a, "bus")?)?,
                        bounded(a, "device", number(a, "device")?)?,
                    ),
                    None => (None, None),
                };
                let h = Hostdev::Usb {
                    vendor: id("vendor")?,
                    product: id("product")?,
                    bus,
                    device,
                };
                match h {
                    Hostdev::Usb {
                        bus: Some(_),
                        device: Some(_),
                        ..
                    }
                    | Hostdev::Usb {
                        vendor: Some(_),
                        product: Some(_),
                        ..
                    } => Ok(h),
                    _ => Err(invalid(
                        src,
                        "USB hostdev needs <address bus device> or <vendor> and <product>",
                    )),
                }
            }
            "pci" => {
                let a = child(src, "address").ok_or_else(|| invalid(src, "missing <address>"))?;
                let req = |name: &str| -> Result<u64> {
                    number(a, name)?
                        .ok_or_else(|| invalid(a, format!("missing attribute '{name}'")))
                };
                Ok(Hostdev::Pci {
                    domain: bounded(a, "domain", Some(number(a, "domain")?.unwrap_or(0)))?
                        .unwrap_or(0),
                    bus: bounded(a, "bus", Some(req("bus")?))?.unwrap_or(0),
                    slot: bounded::<u8>(a, "slot", Some(req("slot")?))?
                        .filter(|s| *s < 32)
                        .ok_or_else(|| invalid_attr(a, "slot", "slot must be below 32"))?,
                    function: bounded::<u8>(a, "function", Some(req("function")?))?
                        .filter(|f| *f < 8)
                        .ok_or_else(|| invalid_attr(a, "function", "function must be below 8"))?,
                    managed: yes_no(c, "managed")?.unwrap_or(false),
                })
            }
            v => Err(invalid_attr(
                c,
                "type",
                format!("unsupported hostdev type '{v}' (usb or pci)"),
            )),
        }
    }

    fn rng(&mut self, c: Node<'_, '_>) -> Result<Rng> {
        self.warn_unknown(c, &["backend", "alias", "address", "rate", "driver"]);
        match c.attribute("model") {
            Some("virtio" | "virtio-transitional" | "virtio-non-transitional") => {}
            v => {
                return Err(invalid_attr(
                    c,
                    "model",
                    format!("unsupported rng model {v:?} (virtio)"),
                ));
            }
        }
        let b = child(c, "backend").ok_or_else(|| invalid(c, "missing <backend>"))?;
        let backend = match req_attr(b, "model")? {
            "random" => {
                let t = text(b);
                RngBackend::Random {
                    device: if t.is_empty() {
                        PathBuf::from("/dev/urandom")
                    } else {
                        path_text(b)?
                    },
                }
            }
            "builtin" => RngBackend::Builtin,
            v => {
                return Err(invalid_attr(
                    b,
                    "model",
                    format!(
                        "rng backend '{v}' is not supported yet (random or builtin; an egd \
                         backend is a chardev svirt does not run for rng)"
                    ),
                ));
            }
        };
        let rate = match child(c, "rate") {
            None => None,
            Some(r) => {
                let bytes = number(r, "bytes")?
                    .filter(|b| *b > 0)
                    .ok_or_else(|| invalid_attr(r, "bytes", "a byte count above 0 is required"))?;
                let period = number(r, "period")?.unwrap_or(1000);
                if period == 0 {
                    return Err(invalid_attr(r, "period", "a period above 0 ms is required"));
                }
                Some((bytes, period))
            }
        };
        Ok(Rng { backend, rate })
    }

    fn tpm(&mut self, c: Node<'_, '_>) -> Result<Tpm> {
        self.warn_unknown(c, &["backend", "alias", "address"]);
        let b = child(c, "backend").ok_or_else(|| invalid(c, "missing <backend>"))?;
        self.warn_unknown(b, &["source", "device"]);
        // What swtpm would not be given as asked is refused, never dropped.
        refuse_children(
            b,
            &[
                (
                    "encryption",
                    "an encrypted TPM state is not supported yet (swtpm would keep the \
                     TPM's secrets in plain text)",
                ),
                (
                    "active_pcr_banks",
                    "<active_pcr_banks> is not supported yet (the TPM would keep its \
                     default banks)",
                ),
                ("profile", "a TPM <profile> is not supported by this swtpm"),
            ],
        )?;
        let backend = match req_attr(b, "type")? {
            "emulator" => TpmBackend::Emulator {
                version: b.attribute("version").map(str::to_string),
                state_path: match child(b, "source") {
                    Some(s) => Some(path_attr(s, "path")?),
                    None => None,
                },
            },
            "passthrough" => TpmBackend::Passthrough {
                device: match child(b, "device") {
                    Some(dev) => path_attr(dev, "path")?,
                    None => PathBuf::from("/dev/tpm0"),
                },
            },
            v => {
                return Err(invalid_attr(
                    b,
                    "type",
                    format!("unsupported tpm backend '{v}'"),
                ));
            }
        };
        Ok(Tpm {
            model: c.attribute("model").map(str::to_string),
            backend,
        })
    }
}

/// The path of a disk or backing `<source>`: `file=` for files, `dev=` for block devices,
/// `dir=` for directories.
fn source_path(s: Node<'_, '_>, t: DiskType) -> Result<PathBuf> {
    path_attr(
        s,
        match t {
            DiskType::File => "file",
            DiskType::Block => "dev",
            DiskType::Dir => "dir",
        },
    )
}

/// Refuses the first child of `node` named in `refused`, with its reason: an element whose
/// meaning svirt would otherwise drop unnoticed.
fn refuse_children(node: Node<'_, '_>, refused: &[(&str, &str)]) -> Result<()> {
    for (name, why) in refused {
        if let Some(n) = child(node, name) {
            return Err(invalid(n, *why));
        }
    }
    Ok(())
}

/// What a disk's or a backing layer's `<source>` may hold that svirt does not run: another
/// host object (an external data file) or a window onto the image.
fn refuse_source_children(s: Node<'_, '_>) -> Result<()> {
    refuse_children(
        s,
        &[
            (
                "dataStore",
                "external data files (<dataStore>) are not supported: the data file would be \
                 neither planned nor given to QEMU",
            ),
            (
                "slices",
                "<slices> are not supported yet: QEMU would get the whole file, not the slice",
            ),
            (
                "encryption",
                "encrypted images are not supported yet (QEMU would read the ciphertext as the \
                 disk)",
            ),
        ],
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn doc(inner: &str) -> String {
        format!(
            "<domain type='kvm'><name>t</name><memory unit='MiB'>256</memory><os><type>hvm</type></os>{inner}</domain>"
        )
    }

    fn err(inner: &str) -> String {
        match parse(&doc(inner)) {
            Ok(_) => panic!("accepted: {inner}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn units() {
        for (u, n, b) in [
            ("b", 512u64, 512u64),
            ("KiB", 1, 1024),
            ("k", 2, 2048),
            ("MiB", 256, 256 << 20),
            ("M", 1, 1 << 20),
            ("GiB", 4, 4 << 30),
            ("G", 1, 1 << 30),
            ("TiB", 1, 1 << 40),
            ("KB", 1, 1000),
            ("GB", 2, 2_000_000_000),
        ] {
            let x = format!(
                "<domain type='kvm'><name>t</name><memory unit='{u}'>{n}</memory><os><type>hvm</type></os></domain>"
            );
            assert_eq!(parse(&x).unwrap().domain.memory_bytes, b, "{u}");
        }
        let x = "<domain type='kvm'><name>t</name><memory>1024</memory><os><type>hvm</type></os></domain>";
        assert_eq!(
            parse(x).unwrap().domain.memory_bytes,
            1 << 20,
            "default unit KiB"
        );
        let x = "<domain type='kvm'><name>t</name><memory unit='EiB'>1000</memory><os><type>hvm</type></os></domain>";
        assert!(parse(x).unwrap_err().to_string().contains("overflows"));
    }

    #[test]
    fn uuid_generated_when_absent() {
        let p = parse(&doc("")).unwrap();
        assert!(p.domain.uuid_generated);
        assert_eq!(p.domain.uuid.get_version_num(), 4);
        let q = parse(&doc("")).unwrap();
        assert_ne!(p.domain.uuid, q.domain.uuid);
    }

    #[test]
    fn refuses_dtd_entities_and_size() {
        let x = "<?xml version='1.0'?><!DOCTYPE d [<!ENTITY a 'aaaa'><!ENTITY b '&a;&a;&a;'>]><domain type='kvm'>&b;</domain>";
        let e = parse(x).unwrap_err().to_string();
        assert!(e.contains("malformed") && e.contains("DTD"), "{e}");
        let big = doc(&format!(
            "<description>{}</description>",
            "x".repeat(MAX_XML_BYTES)
        ));
        assert!(matches!(parse(&big), Err(Error::TooLarge { .. })));
        assert!(parse("<domain type='kvm'>").is_err());
        let e = parse("<notdomain/>").unwrap_err().to_string();
        assert!(e.contains("<notdomain>"), "{e}");
    }

    #[test]
    fn seclabel_rules() {
        assert!(err("<seclabel type='dynamic' model='selinux' relabel='no'/>").contains("relabel"));
        assert!(err("<seclabel type='none' model='selinux' relabel='yes'/>").contains("relabel"));
        assert!(err("<seclabel type='static' model='selinux'/>").contains("label"));
        let e = err("<seclabel model='selinux'/><seclabel model='selinux' type='none'/>");
        assert!(
            e.contains("seclabel[2]") && e.contains("more than one"),
            "{e}"
        );
        assert!(err("<seclabel model='bogus'/>").contains("'bogus'"));
        assert!(
            err("<seclabel type='static'><label>not a label</label></seclabel>")
                .contains("invalid SELinux")
        );
        let d = parse(&doc(
            "<seclabel model='selinux'><baselabel>system_u:system_r:x_t:s0</baselabel></seclabel>",
        ))
        .unwrap()
        .domain;
        assert_eq!(d.seclabels[0].sec_type, SecLabelType::Dynamic);
        assert!(d.seclabels[0].relabel);
        let d = parse(&doc(
            "<seclabel type='static' model='selinux'><label>u:r:t:s0:c1,c2</label></seclabel>",
        ))
        .unwrap();
        assert!(
            !d.domain.seclabels[0].relabel,
            "static relabel defaults to no"
        );
        let d = parse(&doc(
            "<seclabel type='none' model='selinux'/><seclabel type='dynamic' model='dac'/>",
        ))
        .unwrap();
        assert_eq!(d.domain.seclabels.len(), 2);
    }

    #[test]
    fn device_seclabel_rules() {
        let disk = |sl: &str| {
            format!(
                "<devices><disk type='file'><source file='/x/a'>{sl}</source><target dev='vda'/></disk></devices>"
            )
        };
        let e = err(&disk(
            "<seclabel model='selinux' relabel='no'/><seclabel model='selinux' relabel='no'/>",
        ));
        assert!(e.contains("one device"), "{e}");
        let e = err(&disk("<seclabel model='nosuch' relabel='no'/>"));
        assert!(
            e.contains("nosuch") && e.contains("/domain/devices/disk/source/seclabel"),
            "{e}"
        );
        let e = err(&disk(
            "<seclabel model='selinux' relabel='no'><label>u:r:t:s0</label></seclabel>",
        ));
        assert!(e.contains("relabel='no'"), "{e}");
        // A device seclabel of a model the domain relabels nothing for (libvirt's rule):
        // refused, whether it asks for a label or for none.
        for (domain_sl, device_sl) in [
            (
                "<seclabel type='static' model='selinux' relabel='no'><label>u:r:t:s0:c1,c2</label></seclabel>",
                "<seclabel model='selinux' relabel='yes'><label>u:r:t:s0</label></seclabel>",
            ),
            (
                "<seclabel type='static' model='selinux'><label>u:r:t:s0:c1,c2</label></seclabel>",
                "<seclabel model='selinux' relabel='no'/>",
            ),
            (
                "<seclabel type='none' model='selinux'/>",
                "<seclabel model='selinux' relabel='no'/>",
            ),
        ] {
            let e = err(&format!("{domain_sl}{}", disk(device_sl)));
            assert!(
                e.contains("relabeling to be enabled") && e.contains("source/seclabel"),
                "{domain_sl} {device_sl}: {e}"
            );
        }
        // Control: another model's device seclabel, and the same with relabeling on.
        parse(&doc(&format!(
            "<seclabel type='static' model='selinux' relabel='no'><label>u:r:t:s0:c1,c2</label></seclabel>{}",
            disk("<seclabel model='dac' relabel='no'/>")
        )))
        .unwrap();
        parse(&doc(&format!(
            "<seclabel type='static' model='selinux' relabel='yes'><label>u:r:t:s0:c1,c2</label></seclabel>{}",
            disk("<seclabel model='selinux' relabel='no'/>")
        )))
        .unwrap();
    }

    #[test]
    fn unknown_elements_warn_but_unknown_devices_are_refused() {
        let p = parse(&doc("<features><acpi/></features><clock offset='utc'/>")).unwrap();
        assert_eq!(p.warnings.len(), 2, "{:?}", p.warnings);
        assert!(p.warnings[0].contains("/domain/features"));
        assert!(p.warnings[1].contains("/domain/clock"));
        let e = err("<devices><frobnicator/></devices>");
        assert!(
            e.contains("/domain/devices/frobnicator") && e.contains("not a device"),
            "{e}"
        );
    }

    /// What virt-install puts in a guest, device by device: run (a QEMU device), the
    /// machine's own (nothing to add), or refused naming the element and why.
    #[test]
    fn devices_without_host_objects_are_run_implicit_or_refused() {
        use crate::devices::PlainDevice as P;
        let p = parse(&doc(
            "<devices>\
             <controller type='usb' model='qemu-xhci' ports='15'/>\
             <controller type='pci' model='pcie-root'/><controller type='pci' model='pcie-root-port'/>\
             <controller type='virtio-serial' index='0'/><controller type='sata' index='0'/>\
             <input type='tablet' bus='usb'/><input type='mouse' bus='ps2'/><input type='keyboard' bus='ps2'/>\
             <input type='keyboard' bus='virtio'/>\
             <graphics type='vnc'><listen type='socket'/></graphics>\
             <graphics type='spice'><listen type='socket'/></graphics>\
             <video><model type='virtio' heads='1'/></video>\
             <memballoon model='virtio'/>\
             <watchdog model='i6300esb' action='poweroff'/>\
             <audio id='1' type='none'/>\
             </devices>",
        ))
        .unwrap();
        assert_eq!(
            p.domain.plain_devices,
            vec![
                P::UsbController {
                    qemu_model: "qemu-xhci".into()
                },
                P::Input {
                    qemu_model: "usb-tablet".into(),
                    usb: true
                },
                P::Input {
                    qemu_model: "virtio-keyboard-pci".into(),
                    usb: false
                },
                P::VncSocket,
                P::SpiceSocket,
                P::Video {
                    qemu_model: "virtio-vga".into()
                },
                P::Balloon,
                P::Watchdog {
                    qemu_model: "i6300esb".into(),
                    action: "poweroff".into()
                },
            ]
        );
        assert!(p.warnings.is_empty(), "{:?}", p.warnings);
        let none = parse(&doc(
            "<devices><memballoon model='none'/><video><model type='none'/></video><controller type='usb' model='none'/></devices>",
        ))
        .unwrap();
        assert!(none.domain.plain_devices.is_empty());
        assert!(none.domain.usb_disabled);
        for (xml, place, word) in [
            (
                "<graphics type='vnc' port='-1' autoport='yes'/>",
                "graphics",
                "TCP",
            ),
            (
                "<graphics type='vnc'><listen type='socket' socket='/tmp/v'/></graphics>",
                "graphics",
                "runtime directory",
            ),
            (
                "<graphics type='spice' autoport='yes'/>",
                "graphics",
                "SPICE over TCP",
            ),
            (
                "<graphics type='spice'><listen type='socket'/><gl enable='yes'/></graphics>",
                "graphics",
                "render node",
            ),
            ("<graphics type='sdl'/>", "graphics", "'sdl'"),
            ("<sound model='ich9'/>", "sound", "audio"),
            ("<audio id='1' type='pulseaudio'/>", "audio", "audio"),
            (
                "<input type='passthrough' bus='virtio'><source evdev='/dev/input/event1'/></input>",
                "input",
                "host input",
            ),
            (
                "<redirdev bus='usb' type='spicevmc'/>",
                "redirdev",
                "not supported",
            ),
            (
                "<controller type='scsi' model='virtio-scsi'/>",
                "controller",
                "scsi",
            ),
            (
                "<controller type='usb' index='1'/>",
                "controller",
                "one USB",
            ),
            (
                "<watchdog model='i6300esb' action='dump'/>",
                "watchdog",
                "dump",
            ),
            ("<memballoon model='xen'/>", "memballoon", "xen"),
        ] {
            let e = err(&format!("<devices>{xml}</devices>"));
            assert!(
                e.contains(&format!("/domain/devices/{place}")) && e.contains(word),
                "{xml}: {e}"
            );
        }
    }

    /// What svirt cannot run yet is refused, naming it, instead of being dropped from
    /// the guest: a network interface, an unknown firmware. UEFI is parsed for the manager
    /// to fill in; BIOS named explicitly, and a domain without them, are accepted.
    #[test]
    fn devices_svirt_cannot_run_are_refused_not_dropped() {
        let e = err(
            "<devices><disk type='network' device='disk'><source protocol='nbd' name='x'><host name='h' port='10809'/></source><target dev='vdb'/></disk></devices>",
        );
        assert!(
            e.contains("/domain/devices/disk@type") && e.contains("network disks"),
            "{e}"
        );
        let e = err(
            "<devices><interface type='network'><source network='default'/></interface></devices>",
        );
        assert!(
            e.contains("/domain/devices/interface") && e.contains("not supported yet"),
            "{e}"
        );
        let efi = "<domain type='kvm'><name>t</name><memory unit='MiB'>256</memory><os firmware='efi'><type>hvm</type></os></domain>";
        assert!(parse(efi).unwrap().domain.os.firmware_efi);
        assert!(
            !parse(&efi.replace("'efi'", "'bios'"))
                .unwrap()
                .domain
                .os
                .firmware_efi
        );
        let e = parse(&efi.replace("'efi'", "'coreboot'"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("/domain/os@firmware") && e.contains("coreboot"),
            "{e}"
        );
        assert!(parse(&doc("<devices><serial type='pty'/></devices>")).is_ok());
        // What a disk or a chardev asks for that QEMU would not get: refused, naming it.
        let disk = |inner: &str| {
            format!(
                "<devices><disk type='file' device='disk'>{inner}<target dev='vda'/></disk></devices>"
            )
        };
        for (xml, place, word) in [
            (
                "<devices><disk type='file' device='disk'><target dev='vda'/></disk></devices>"
                    .to_string(),
                "/domain/devices/disk",
                "needs a <source>",
            ),
            (
                disk("<source file='/x/a'/><transient/>"),
                "/domain/devices/disk/transient",
                "transient",
            ),
            (
                "<devices><tpm><backend type='emulator'><encryption secret='s'/></backend></tpm></devices>"
                    .to_string(),
                "/domain/devices/tpm/backend/encryption",
                "plain text",
            ),
            (
                "<devices><tpm><backend type='emulator'><active_pcr_banks><sha256/></active_pcr_banks></backend></tpm></devices>"
                    .to_string(),
                "/domain/devices/tpm/backend/active_pcr_banks",
                "banks",
            ),
            (
                disk("<source file='/x/a'/><encryption format='luks'/>"),
                "/domain/devices/disk/encryption",
                "encrypted",
            ),
            (
                disk("<source file='/x/a'><encryption format='luks'/></source>"),
                "/domain/devices/disk/source/encryption",
                "encrypted",
            ),
            (
                disk("<driver type='qcow2'/><source file='/x/a'><dataStore type='file'><format type='raw'/><source file='/x/d'/></dataStore></source>"),
                "/domain/devices/disk/source/dataStore",
                "data file",
            ),
            (
                disk("<source file='/x/a'><slices><slice type='storage' offset='0' size='1'/></slices></source>"),
                "/domain/devices/disk/source/slices",
                "slice",
            ),
            (
                disk("<source file='/x/a'/><mirror type='file' file='/x/m'/>"),
                "/domain/devices/disk/mirror",
                "mirror",
            ),
            (
                disk("<driver type='qcow2'/><source file='/x/a'/><backingStore type='file'><format type='qcow2'/><source file='/x/b'><dataStore type='file'><format type='raw'/><source file='/x/d'/></dataStore></source></backingStore>"),
                "/domain/devices/disk/backingStore/source/dataStore",
                "data file",
            ),
            (
                "<devices><serial type='tcp'><source mode='connect' host='h' service='1' tls='yes'/></serial></devices>"
                    .to_string(),
                "/domain/devices/serial/source@tls",
                "TLS",
            ),
            (
                "<devices><serial type='tcp'><source mode='connect' host='h' service='1'/><protocol type='telnet'/></serial></devices>"
                    .to_string(),
                "/domain/devices/serial/protocol@type",
                "telnet",
            ),
        ] {
            let e = err(&xml);
            assert!(e.contains(place) && e.contains(word), "{xml}: {e}");
        }
        assert!(
            parse(&doc(
                "<devices><serial type='tcp'><source mode='connect' host='h' service='1' tls='no'/><protocol type='raw'/></serial></devices>"
            ))
            .is_ok(),
            "raw, without TLS: runs"
        );
        // <memoryBacking>: what QEMU could not be given as asked is refused.
        let mb = |inner: &str| format!("<memoryBacking>{inner}</memoryBacking>");
        for (inner, word) in [
            ("<locked/>", "locked"),
            ("<nosharepages/>", "nosharepages"),
            ("<discard/>", "discard"),
            ("<access mode='weird'/>", "access mode"),
            ("<source type='memfd' path='/m'/>", "type='file'"),
        ] {
            let e = err(&mb(inner));
            assert!(
                e.contains("memoryBacking") && e.contains(word),
                "{inner}: {e}"
            );
        }
        let p = parse(&doc(&mb(
            "<source type='memfd'/><access mode='shared'/><allocation mode='immediate'/>",
        )))
        .unwrap();
        let b = p.domain.memory_backing.unwrap();
        assert!(b.shared && b.prealloc && b.source_type.as_deref() == Some("memfd"));
    }

    /// libvirt's boot rule: `<os><boot dev>` or per-device `<boot order>`, not both; an
    /// unknown boot device is refused; a `<rate>` needs bytes and a period above 0.
    #[test]
    fn boot_order_and_rng_rate_rules() {
        let disk = "<disk type='file' device='disk'><source file='/i/a.img'/><target dev='vda'/><boot order='1'/></disk>";
        let mixed = doc(&format!(
            "<os><type>hvm</type><boot dev='hd'/></os><devices>{disk}</devices>"
        ))
        .replace("<os><type>hvm</type></os>", "");
        let e = parse(&mixed).map(|_| ()).unwrap_err().to_string();
        assert!(e.contains("<boot order>"), "{e}");
        let ok = doc(&format!("<devices>{disk}</devices>"));
        assert_eq!(parse(&ok).unwrap().domain.disks[0].boot_order, Some(1));
        let floppy_net = doc("").replace(
            "<os><type>hvm</type></os>",
            "<os><type>hvm</type><boot dev='network'/><boot dev='fd'/></os>",
        );
        assert_eq!(
            parse(&floppy_net).unwrap().domain.os.boot_devs,
            vec!["network".to_string(), "fd".to_string()]
        );
        let bad = floppy_net.replace("'fd'", "'usb'");
        assert!(
            parse(&bad)
                .map(|_| ())
                .unwrap_err()
                .to_string()
                .contains("usb")
        );
        let rng = |rate: &str| {
            doc(&format!(
                "<devices><rng model='virtio'><backend model='builtin'/>{rate}</rng></devices>"
            ))
        };
        assert_eq!(
            parse(&rng("<rate bytes='10'/>")).unwrap().domain.rngs[0].rate,
            Some((10, 1000))
        );
        assert!(parse(&rng("<rate bytes='0'/>")).is_err());
        assert!(parse(&rng("<rate bytes='5' period='0'/>")).is_err());
    }

    #[test]
    fn errors_name_the_place() {
        let e = err(
            "<devices><disk type='file'><driver type='vmdk'/><target dev='vda'/></disk></devices>",
        );
        assert!(e.contains("/domain/devices/disk/driver@type"), "{e}");
        let e = err("<devices><disk type='file'><source/><target dev='vda'/></disk></devices>");
        assert!(
            e.contains("/domain/devices/disk/source") && e.contains("'file'"),
            "{e}"
        );
        let e = err(
            "<devices><hostdev mode='subsystem' type='pci'><source><address bus='0x1' slot='40' function='0'/></source></hostdev></devices>",
        );
        assert!(e.contains("slot"), "{e}");
    }

    #[test]
    fn full_domain() {
        let x = doc(
            "<currentMemory unit='KiB'>1024</currentMemory><vcpu>2</vcpu>
            <devices><emulator>/usr/bin/qemu-system-x86_64</emulator>
             <disk type='block' device='disk'><driver name='qemu' type='raw'/><source dev='/dev/sdz'/><target dev='vda' bus='virtio'/></disk>
             <disk type='file' device='cdrom'><source file='/i/boot.iso'/><target dev='sda' bus='sata'/></disk>
             <disk type='file'><driver type='qcow2'/><source file='/i/top.qcow2'/>
               <backingStore type='file'><format type='qcow2'/><source file='/i/mid.qcow2'/>
                 <backingStore type='file'><format type='raw'/><source file='/i/base.raw'/></backingStore>
               </backingStore><target dev='vdb'/></disk>
             <filesystem type='mount' accessmode='passthrough'><driver type='virtiofs'/><source dir='/srv/x'/><target dir='tag'/><readonly/></filesystem>
             <serial type='tcp'><source mode='bind' host='127.0.0.1' service='4555'/><target port='0'/></serial>
             <channel type='udp'><source mode='bind' host='0.0.0.0' service='2445'/><source mode='connect' host='1.2.3.4' service='2445'/><target type='virtio' name='x'/></channel>
             <hostdev mode='subsystem' type='usb'><source><address bus='1' device='7'/></source></hostdev>
             <hostdev mode='subsystem' type='pci' managed='yes'><source><address domain='0x0000' bus='0x06' slot='0x02' function='0x1'/></source></hostdev>
             <tpm model='tpm-crb'><backend type='emulator' version='2.0'/></tpm>
            </devices>",
        );
        let d = parse(&x).unwrap().domain;
        assert_eq!(d.current_memory_bytes, Some(1 << 20));
        assert_eq!(d.vcpus, 2);
        assert_eq!(d.disks.len(), 3);
        assert_eq!(d.disks[0].disk_type, DiskType::Block);
        assert!(d.disks[1].readonly && d.disks[1].source.is_some());
        match &d.disks[2].backing {
            BackingSpec::Chain { layers, complete } => {
                assert_eq!(layers.len(), 2);
                assert!(*complete, "a raw bottom layer ends the chain");
            }
            b => panic!("{b:?}"),
        }
        assert!(d.filesystems[0].readonly);
        assert_eq!(d.filesystems[0].driver.as_deref(), Some("virtiofs"));
        assert!(matches!(
            d.chardevs[0].source,
            ChardevSource::Tcp {
                mode: SocketMode::Bind,
                ..
            }
        ));
        assert!(
            matches!(&d.chardevs[1].source, ChardevSource::Udp { bind_service: Some(s), .. } if s == "2445")
        );
        assert_eq!(
            d.hostdevs[0],
            Hostdev::Usb {
                vendor: None,
                product: None,
                bus: Some(1),
                device: Some(7)
            }
        );
        assert_eq!(
            d.hostdevs[1],
            Hostdev::Pci {
                domain: 0,
                bus: 6,
                slot: 2,
                function: 1,
                managed: true
            }
        );
        assert!(matches!(
            d.tpms[0].backend,
            TpmBackend::Emulator {
                state_path: None,
                ..
            }
        ));
    }
}
