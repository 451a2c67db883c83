//! Devices of a domain that name no host object: QEMU devices the guest gets (a balloon,
//! input devices, a display adapter, a USB controller, a watchdog, VNC on a socket in the
//! guest's own runtime directory), the ones the machine has anyway (PS/2 input, its PCI
//! root and IDE/SATA controllers), and everything else, refused by name.
//!
//! The rule (real-guests issue): every device of a domain is run, or the domain is refused
//! naming it; nothing is dropped from the guest without a word.

use roxmltree::Node;
use serde::{Deserialize, Serialize};

/// A device QEMU gets for an element of `<devices>` that names no host object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "device")]
pub enum PlainDevice {
    /// `<memballoon model='virtio'>`.
    Balloon,
    /// `<controller type='usb'>`: the QEMU device of the controller.
    UsbController {
        /// `qemu-xhci`, `nec-usb-xhci`, `piix3-usb-uhci`, `piix4-usb-uhci`, `usb-ehci`,
        /// `ich9-usb-ehci1`.
        qemu_model: String,
    },
    /// `<input>` on USB or virtio (PS/2 ones are the machine's own).
    Input {
        /// The QEMU device: `usb-tablet`, `usb-mouse`, `usb-kbd`, `virtio-tablet-pci`, …
        qemu_model: String,
        /// Whether it needs a USB controller.
        usb: bool,
    },
    /// `<video>`: the display adapter.
    Video {
        /// `VGA`, `cirrus-vga`, `virtio-vga`, `bochs-display`, `qxl-vga`.
        qemu_model: String,
    },
    /// `<graphics type='vnc'>` listening on a socket in the guest's runtime directory.
    VncSocket,
    /// `<graphics type='spice'>` listening on a socket in the guest's runtime directory.
    SpiceSocket,
    /// `<watchdog>`.
    Watchdog {
        /// `i6300esb`, `ib700`.
        qemu_model: String,
        /// What QEMU does when it fires (`-action watchdog=…`).
        action: String,
    },
}

/// What an element of `<devices>` that names no host object becomes.
pub(crate) enum Outcome {
    /// A device QEMU gets.
    Device(PlainDevice),
    /// Nothing to add: the machine has it (PS/2 input, a PCI root or bridge, the IDE or
    /// SATA controller, the virtio-serial bus svirt adds with its first port), or the
    /// element asks for nothing (`model='none'`, `<audio type='none'/>`).
    Implicit,
    /// `<controller type='usb' model='none'>`: the guest has no USB at all.
    UsbOff,
    /// Not supported: the domain is refused with this reason.
    Refused(String),
}

/// The outcome of one element, by its name; `None` for elements this module does not
/// handle (disks, chardevs, … parsed elsewhere).
pub(crate) fn classify(c: Node<'_, '_>) -> Option<Outcome> {
    use Outcome::*;
    let model_child = c
        .children()
        .find(|n| n.has_tag_name("model"))
        .and_then(|m| m.attribute("type"));
    Some(match c.tag_name().name() {
        "memballoon" => match c.attribute("model") {
            Some("virtio" | "virtio-transitional" | "virtio-non-transitional") => {
                Device(PlainDevice::Balloon)
            }
            Some("none") => Implicit,
            m => Refused(format!(
                "memballoon model {m:?} is not supported (virtio or none)"
            )),
        },
        "controller" => match c.attribute("type").unwrap_or("") {
            "usb" => {
                if c.attribute("index").is_some_and(|i| i != "0") {
                    return Some(Refused(
                        "only one USB controller (index 0) is supported".into(),
                    ));
                }
                let qemu = match c.attribute("model") {
                    None | Some("qemu-xhci") => "qemu-xhci",
                    Some("nec-xhci") => "nec-usb-xhci",
                    Some("piix3-uhci") => "piix3-usb-uhci",
                    Some("piix4-uhci") => "piix4-usb-uhci",
                    Some("ehci") => "usb-ehci",
                    Some("ich9-ehci1") => "ich9-usb-ehci1",
                    Some("none") => return Some(UsbOff),
                    Some(m) => {
                        return Some(Refused(format!(
                            "USB controller model '{m}' is not supported (qemu-xhci, nec-xhci, \
                             piix3-uhci, piix4-uhci, ehci, ich9-ehci1, none)"
                        )));
                    }
                };
                Device(PlainDevice::UsbController {
                    qemu_model: qemu.into(),
                })
            }
            // The machine's own buses: QEMU places svirt's devices on the root bus.
            "pci" | "ide" | "sata" | "fdc" | "virtio-serial" => Implicit,
            t => Refused(format!("controller type '{t}' is not supported yet")),
        },
        "input" => {
            let ty = c.attribute("type").unwrap_or("");
            let bus = c.attribute("bus");
            match (ty, bus) {
                ("mouse" | "keyboard", None | Some("ps2")) => Implicit,
                ("tablet" | "mouse" | "keyboard", Some("usb")) => Device(PlainDevice::Input {
                    qemu_model: match ty {
                        "tablet" => "usb-tablet",
                        "mouse" => "usb-mouse",
                        _ => "usb-kbd",
                    }
                    .into(),
                    usb: true,
                }),
                ("tablet" | "mouse" | "keyboard", Some("virtio")) => Device(PlainDevice::Input {
                    qemu_model: format!("virtio-{ty}-pci"),
                    usb: false,
                }),
                ("passthrough" | "evdev", _) => Refused(format!(
                    "input type '{ty}' passes a host input device through: not supported yet"
                )),
                (t, b) => Refused(format!("input type '{t}' on bus {b:?} is not supported")),
            }
        }
        "video" => match model_child {
            Some("none") => Implicit,
            Some(m @ ("vga" | "cirrus" | "virtio" | "bochs" | "qxl")) | Some(m @ "std") => {
                Device(PlainDevice::Video {
                    qemu_model: match m {
                        "cirrus" => "cirrus-vga",
                        "virtio" => "virtio-vga",
                        "bochs" => "bochs-display",
                        "qxl" => "qxl-vga",
                        _ => "VGA",
                    }
                    .into(),
                })
            }
            None => Device(PlainDevice::Video {
                qemu_model: "VGA".into(),
            }),
            Some(m) => Refused(format!("video model '{m}' is not supported yet")),
        },
        "graphics" => match c.attribute("type").unwrap_or("") {
            "vnc" => match socket_listen(c, "VNC") {
                Some(why) => Refused(why),
                None => Device(PlainDevice::VncSocket),
            },
            "spice" => {
                let gl = c
                    .children()
                    .find(|n| n.has_tag_name("gl"))
                    .is_some_and(|g| g.attribute("enable") == Some("yes"));
                match socket_listen(c, "SPICE") {
                    Some(why) => Refused(why),
                    None if gl => Refused(
                        "SPICE with <gl enable='yes'/> is not supported (it needs a host GPU \
                         render node in the VMM's jail)"
                            .into(),
                    ),
                    None => Device(PlainDevice::SpiceSocket),
                }
            }
            t => Refused(format!(
                "graphics type '{t}' is not supported yet (vnc or spice with <listen \
                 type='socket'/>)"
            )),
        },
        "watchdog" => {
            let qemu = match c.attribute("model") {
                Some(m @ ("i6300esb" | "ib700")) => m,
                m => {
                    return Some(Refused(format!(
                        "watchdog model {m:?} is not supported (i6300esb, ib700)"
                    )));
                }
            };
            let action = match c.attribute("action").unwrap_or("reset") {
                a @ ("reset" | "shutdown" | "poweroff" | "pause" | "none" | "inject-nmi") => a,
                a => {
                    return Some(Refused(format!(
                        "watchdog action '{a}' is not supported (reset, shutdown, poweroff, \
                         pause, none, inject-nmi)"
                    )));
                }
            };
            Device(PlainDevice::Watchdog {
                qemu_model: qemu.into(),
                action: action.into(),
            })
        }
        // libvirt writes `<audio type='none'/>` into every domain it formats: no backend,
        // which is what QEMU has without one (`-nodefaults`, no sound device).
        "audio" if c.attribute("type") == Some("none") => Implicit,
        "sound" | "audio" => Refused(
            "sound devices are not supported (svirt runs no audio backend for the VMM)".into(),
        ),
        "redirdev" | "smartcard" | "shmem" | "memory" | "vsock" | "iommu" | "panic" | "hub"
        | "lease" | "crypto" | "nvram" | "pstore" => {
            Refused(format!("<{}> is not supported yet", c.tag_name().name()))
        }
        _ => return None,
    })
}

/// Why a `<graphics>` server of `what` (VNC, SPICE) cannot listen as asked, or `None`
/// for `<listen type='socket'/>` without a path: svirt makes the socket in the guest's
/// runtime directory (the VMM has a network namespace of its own, so no TCP).
fn socket_listen(c: Node<'_, '_>, what: &str) -> Option<String> {
    let listen = c.children().find(|n| n.has_tag_name("listen"));
    if listen.is_none_or(|l| l.attribute("type") != Some("socket")) {
        return Some(format!(
            "{what} over TCP is not supported: the VMM runs in a network namespace of its \
             own; ask for <listen type='socket'/> (a socket in the guest's runtime directory)"
        ));
    }
    if listen.and_then(|l| l.attribute("socket")).is_some() {
        return Some(format!(
            "a {what} socket path of the XML's is not supported: svirt makes it in the \
             guest's runtime directory (omit socket=)"
        ));
    }
    None
}
