//! The devices of real domains, run in real QEMUs (TCG, the DAC + Landlock stack of this
//! host): what QEMU's own view (QMP `query-pci`, `info usb`, `query-vnc`, block nodes, its
//! open files) shows the guest was given, what the host sees (sockets in the runtime
//! directory, the UEFI variable store's owner), and a control without the device each.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;
use std::time::Duration;

use common::{Env, require_env};
use serde_json::json;
use svirt_manager::{Manager, StartOptions};

/// The guest-agent channel virt-install puts in every guest (`<channel type='unix'>` with
/// no path): QEMU listens on a socket in the guest's runtime directory, named by the
/// channel (as libvirt fills it in), inside its jail, and the host connects to it. A
/// channel name that could be anything but one new entry there is refused (control for
/// the naming rule); a `mode='connect'` without a path is refused by the parser.
#[test]
fn guest_agent_channel_without_a_path_gets_a_socket_in_the_runtime_dir() {
    require_env!();
    let env = Env::new("agent");
    let (m, _) = Manager::open(env.config("dac,landlock")).unwrap();
    let channel = |name: &str| {
        env.xml("ga", &[]).replace(
            "<serial ",
            &format!(
                "<channel type='unix'><target type='virtio' name='{name}'/></channel>\n<serial "
            ),
        )
    };
    let info = m
        .start(
            &channel("org.qemu.guest_agent.0"),
            StartOptions { paused: true },
        )
        .unwrap();
    let sock = env.path("run/guests/ga/org.qemu.guest_agent.0");
    assert!(
        common::poll_until(Duration::from_secs(2), || {
            std::fs::symlink_metadata(&sock)
                .is_ok_and(|md| std::os::unix::fs::FileTypeExt::is_socket(&md.file_type()))
        }),
        "no socket at {}",
        sock.display()
    );
    std::os::unix::net::UnixStream::connect(&sock).expect("QEMU listens on the agent socket");
    assert!(info.pid.is_some());
    m.destroy("ga").unwrap();

    for bad in ["../escape", ".hidden", "a/b"] {
        let e = m
            .start(&channel(bad), StartOptions { paused: true })
            .unwrap_err()
            .to_string();
        assert!(e.contains("runtime directory"), "{bad}: {e}");
        env.assert_guest_dirs_gone("ga", "refused channel name");
    }
    let connect = env.xml("ga", &[]).replace(
        "<serial ",
        "<channel type='unix'><source mode='connect'/><target type='virtio' name='x.0'/></channel>\n<serial ",
    );
    let e = m
        .start(&connect, StartOptions { paused: true })
        .unwrap_err()
        .to_string();
    assert!(e.contains("needs a <source path>"), "{e}");
}

/// `<rng>` devices run: the guest has a virtio-rng device per element (as QEMU's PCI bus
/// reports it), one reading the host's /dev/urandom inside the jail, one QEMU's own
/// generator. Control: the same guest without them has none.
#[test]
fn rng_devices_are_given_to_the_guest() {
    require_env!();
    let env = Env::new("rng");
    let (m, _) = Manager::open(env.config("dac,landlock")).unwrap();
    let rngs = "<rng model='virtio'><backend model='random'>/dev/urandom</backend></rng>\
                <rng model='virtio'><backend model='builtin'/></rng>\n<serial ";
    let count = |xml: &str| {
        m.start(xml, StartOptions { paused: true }).unwrap();
        let r = m
            .qemu_monitor_command("r", json!({"execute": "query-pci"}))
            .unwrap();
        m.destroy("r").unwrap();
        // virtio-rng-pci: vendor 0x1af4, device 0x1005 (transitional) or 0x1044.
        r["return"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|bus| bus["devices"].as_array().cloned().unwrap_or_default())
            .filter(|d| {
                d["id"]["vendor"] == 0x1af4
                    && (d["id"]["device"] == 0x1005 || d["id"]["device"] == 0x1044)
            })
            .count()
    };
    assert_eq!(count(&env.xml("r", &[]).replace("<serial ", rngs)), 2);
    assert_eq!(count(&env.xml("r", &[])), 0, "control: no rng asked for");
}

/// A virt-install-like device set runs: every device the XML asks for is in the guest
/// (QEMU's PCI bus: USB controller, balloon, display adapter, watchdog; the tablet on the
/// USB bus), VNC listens on a socket in the guest's runtime directory (and accepts a
/// connection from the host), and PS/2 input, PCI root ports and the virtio-serial
/// controller are the machine's own. Control: the same guest without them has none.
#[test]
fn a_virt_install_device_set_runs() {
    require_env!();
    let env = Env::new("devset");
    let (m, _) = Manager::open(env.config("dac,landlock")).unwrap();
    let devices = "<controller type='usb' model='qemu-xhci' ports='15'/>\
        <controller type='pci' model='pci-root'/>\
        <controller type='virtio-serial' index='0'/>\
        <input type='tablet' bus='usb'/><input type='mouse' bus='ps2'/>\
        <input type='keyboard' bus='ps2'/>\
        <graphics type='vnc'><listen type='socket'/></graphics>\
        <video><model type='virtio'/></video>\
        <memballoon model='virtio'/>\
        <watchdog model='i6300esb' action='reset'/>\n<serial ";
    let pci = |m: &Manager| -> Vec<(u64, u64)> {
        let r = m
            .qemu_monitor_command("d", json!({"execute": "query-pci"}))
            .unwrap();
        r["return"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|bus| bus["devices"].as_array().cloned().unwrap_or_default())
            .map(|d| {
                (
                    d["id"]["vendor"].as_u64().unwrap(),
                    d["id"]["device"].as_u64().unwrap(),
                )
            })
            .collect()
    };
    m.start(
        &env.xml("d", &[]).replace("<serial ", devices),
        StartOptions { paused: true },
    )
    .unwrap();
    let ids = pci(&m);
    for (what, id) in [
        ("qemu-xhci", (0x1b36, 0x000d)),
        ("virtio-balloon", (0x1af4, 0x1002)),
        ("virtio-vga", (0x1af4, 0x1050)),
        ("i6300esb", (0x8086, 0x25ab)),
    ] {
        assert!(ids.contains(&id), "no {what} {id:x?} in {ids:x?}");
    }
    let tree = m
        .qemu_monitor_command(
            "d",
            json!({"execute": "human-monitor-command", "arguments": {"command-line": "info usb"}}),
        )
        .unwrap();
    assert!(
        tree["return"].as_str().unwrap_or("").contains("Tablet"),
        "{tree}"
    );
    let vnc = m
        .qemu_monitor_command("d", json!({"execute": "query-vnc"}))
        .unwrap();
    assert_eq!(vnc["return"]["enabled"], true, "{vnc}");
    let sock = env.path("run/guests/d/vnc.sock");
    std::os::unix::net::UnixStream::connect(&sock).expect("VNC listens in the runtime dir");
    m.destroy("d").unwrap();

    m.start(&env.xml("d", &[]), StartOptions { paused: true })
        .unwrap();
    let ids = pci(&m);
    assert!(
        !ids.contains(&(0x1b36, 0x000d)) && !ids.contains(&(0x1af4, 0x1002)),
        "control: {ids:x?}"
    );
    m.destroy("d").unwrap();
}

/// SPICE, as virt-install sets it up: the server listens on a socket in the guest's
/// runtime directory (and accepts a connection from the host), with a qxl display and the
/// SPICE agent's channel (spicevmc, on a virtio-serial port). Refused, naming why: SPICE
/// over TCP (the VMM has a network namespace of its own), and a spicevmc channel without
/// SPICE to carry it.
#[test]
fn spice_on_a_socket_runs_with_its_agent_channel() {
    require_env!();
    let env = Env::new("spice");
    let (m, _) = Manager::open(env.config("dac,landlock")).unwrap();
    let agent =
        "<channel type='spicevmc'><target type='virtio' name='com.redhat.spice.0'/></channel>";
    let devices = format!(
        "<graphics type='spice'><listen type='socket'/></graphics>\
         <video><model type='qxl'/></video>{agent}\n<serial "
    );
    m.start(
        &env.xml("s", &[]).replace("<serial ", &devices),
        StartOptions { paused: true },
    )
    .unwrap();
    let spice = m
        .qemu_monitor_command("s", json!({"execute": "query-spice"}))
        .unwrap();
    assert_eq!(spice["return"]["enabled"], true, "{spice}");
    let sock = env.path("run/guests/s/spice.sock");
    std::os::unix::net::UnixStream::connect(&sock).expect("SPICE listens in the runtime dir");
    let chardevs = m
        .qemu_monitor_command("s", json!({"execute": "query-chardev"}))
        .unwrap();
    assert!(
        chardevs.to_string().contains("spicevmc"),
        "no spicevmc chardev: {chardevs}"
    );
    m.destroy("s").unwrap();

    let tcp = env.xml("t", &[]).replace(
        "<serial ",
        "<graphics type='spice' autoport='yes'/>\n<serial ",
    );
    let e = m
        .start(&tcp, StartOptions { paused: true })
        .unwrap_err()
        .to_string();
    assert!(e.contains("SPICE over TCP"), "{e}");
    let lone = env
        .xml("t", &[])
        .replace("<serial ", &format!("{agent}\n<serial "));
    let e = m
        .start(&lone, StartOptions { paused: true })
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("spicevmc") && e.contains("SPICE graphics"),
        "{e}"
    );
}

/// `<os firmware='efi'>` boots UEFI as libvirt fills it in: OVMF's code from the host's
/// firmware descriptor as read-only flash, and the guest's own variable store made from
/// the template in svirt's NVRAM directory, given to the guest's uid while it runs and
/// restored (root's 0600) after; kept across starts (a change in it survives). Control: a
/// BIOS guest has no flash.
#[test]
fn uefi_firmware_gets_code_and_its_own_variable_store() {
    require_env!();
    let env = Env::new("efi");
    let (m, _) = Manager::open(env.config("dac,landlock")).unwrap();
    let xml = env.xml("u", &[]).replace("<os>", "<os firmware='efi'>");
    let fw = svirt_manager::firmware::find_uefi(Path::new("/")).unwrap();
    let store = env.path("nvram/u_VARS.fd");
    let flash = |m: &Manager| -> Vec<String> {
        let r = m
            .qemu_monitor_command("u", json!({"execute": "query-named-block-nodes"}))
            .unwrap();
        r["return"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|n| n["node-name"].as_str().unwrap_or("").starts_with("pflash"))
            .map(|n| {
                format!(
                    "{} {}",
                    n["node-name"].as_str().unwrap(),
                    n["file"].as_str().unwrap()
                )
            })
            .collect()
    };
    let info = m.start(&xml, StartOptions { paused: true }).unwrap();
    let nodes = flash(&m);
    assert!(
        nodes
            .iter()
            .any(|n| n == &format!("pflash0-file {}", fw.code.display())),
        "{nodes:?}"
    );
    assert!(
        nodes
            .iter()
            .any(|n| n == &format!("pflash1-file {}", store.display())),
        "{nodes:?}"
    );
    assert_eq!(
        std::fs::read(&store).unwrap(),
        std::fs::read(&fw.vars_template).unwrap(),
        "the store is a copy of the template"
    );
    let uid = info.uid.unwrap();
    assert_eq!(common::owner_mode(&store).0, uid, "the guest's own store");
    m.destroy("u").unwrap();
    let (o_uid, _, o_mode) = common::owner_mode(&store);
    assert_eq!((o_uid, o_mode & 0o7777), (0, 0o600), "restored");
    // Kept: a change made while the guest is off survives the next start.
    let mut bytes = std::fs::read(&store).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    std::fs::write(&store, &bytes).unwrap();
    m.start(&xml, StartOptions { paused: true }).unwrap();
    assert_eq!(
        std::fs::read(&store).unwrap(),
        bytes,
        "the store was replaced"
    );
    m.destroy("u").unwrap();

    m.start(&env.xml("u", &[]), StartOptions { paused: true })
        .unwrap();
    assert!(flash(&m).is_empty(), "control: BIOS has no flash");
    m.destroy("u").unwrap();
}

/// A chardev's `<log>` is kept: the file is made if missing, given to the guest's uid
/// like the chardev's own output, opened by QEMU (its log), and restored after; a failed
/// start removes the file it made. Control: the same serial without a log opens no such
/// file.
#[test]
fn chardev_log_files_are_planned_and_opened() {
    require_env!();
    let env = Env::new("chlog");
    let (m, _) = Manager::open(env.config("dac,landlock")).unwrap();
    let log = env.path("images/serial0.log");
    let with_log = env.xml("l", &[]).replace(
        "<target port='0'/></serial>",
        &format!(
            "<target port='0'/><log file='{}' append='on'/></serial>",
            log.display()
        ),
    );
    let info = m.start(&with_log, StartOptions { paused: true }).unwrap();
    let pid = info.pid.unwrap();
    let opened = |pid: i32| {
        std::fs::read_dir(format!("/proc/{pid}/fd"))
            .unwrap()
            .filter_map(|e| std::fs::read_link(e.unwrap().path()).ok())
            .any(|t| t == log)
    };
    assert!(opened(pid), "QEMU has no fd on {}", log.display());
    assert_eq!(common::owner_mode(&log).0, info.uid.unwrap());
    m.destroy("l").unwrap();
    let (uid, _, mode) = common::owner_mode(&log);
    assert_eq!((uid, mode & 0o7777), (0, 0o600), "restored");
    std::fs::remove_file(&log).unwrap();
    // A start that fails after planning (a disk on a bus svirt refuses at start) leaves
    // no log behind.
    let disk = env.raw("d.raw");
    let bad = with_log.replace(
        "<serial ",
        &format!(
            "<disk type='file'><driver type='raw'/><source file='{}'/><target dev='sda' bus='scsi'/></disk>\n<serial ",
            disk.display()
        ),
    );
    let e = m.start(&bad, StartOptions { paused: true }).unwrap_err();
    assert!(e.to_string().contains("'scsi'"), "{e}");
    assert!(!log.exists(), "the refused start left its log file");
    let info = m
        .start(&env.xml("l", &[]), StartOptions { paused: true })
        .unwrap();
    assert!(!opened(info.pid.unwrap()), "control");
    m.destroy("l").unwrap();
}

/// `<memoryBacking>` is what QEMU's RAM is made of: shared memfd memory (what virtiofsd
/// and vhost-user need) and a file in a planned directory QEMU creates its RAM file in,
/// given to the guest's uid. Control: a guest without it has private RAM (QEMU's own).
#[test]
fn memory_backing_is_the_guests_ram() {
    require_env!();
    let env = Env::new("membk");
    let (m, _) = Manager::open(env.config("dac,landlock")).unwrap();
    let memdev = |m: &Manager| {
        let r = m
            .qemu_monitor_command("r", json!({"execute": "query-memdev"}))
            .unwrap();
        r["return"].as_array().cloned().unwrap_or_default()
    };
    let with = |backing: &str| {
        env.xml("r", &[])
            .replace("<vcpu>", &format!("{backing}\n  <vcpu>"))
    };
    m.start(
        &with("<memoryBacking><source type='memfd'/><access mode='shared'/></memoryBacking>"),
        StartOptions { paused: true },
    )
    .unwrap();
    let d = memdev(&m);
    assert_eq!(d.len(), 1, "{d:?}");
    assert_eq!(d[0]["share"], true, "{d:?}");
    assert_eq!(d[0]["size"], 16u64 << 20, "{d:?}");
    m.destroy("r").unwrap();

    let ram = env.path("images/ram");
    std::fs::create_dir(&ram).unwrap();
    let info = m
        .start(
            &with(&format!(
                "<memoryBacking><source type='file' path='{}'/></memoryBacking>",
                ram.display()
            )),
            StartOptions { paused: true },
        )
        .unwrap();
    let maps = std::fs::read_to_string(format!("/proc/{}/maps", info.pid.unwrap())).unwrap();
    assert!(
        maps.lines().any(|l| l.contains(ram.to_str().unwrap())),
        "QEMU's RAM is not mapped from {}",
        ram.display()
    );
    assert_eq!(memdev(&m)[0]["share"], false);
    m.destroy("r").unwrap();

    m.start(&env.xml("r", &[]), StartOptions { paused: true })
        .unwrap();
    let d = memdev(&m);
    assert!(
        d.iter().all(|x| x["share"] == false),
        "control: QEMU's own RAM is private: {d:?}"
    );
    m.destroy("r").unwrap();
}
