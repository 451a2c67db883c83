//! Attack suite, class 3: svirt's own objects named in a domain XML. Before, a guest whose
//! parallel port was connected to svirtd's API socket had the socket chowned to it, and an
//! unmodified guest OS writing an HTTP request to the port destroyed another guest. Now
//! svirtd's state and run directories (API socket, every guest's runtime and control
//! files) are protected objects: such a start is refused before anything changes, naming
//! the object and the rule. Real svirtd, real CLI, real QEMU (the control guest).

#![allow(clippy::unwrap_used)]

mod common;

use std::path::Path;

use common::{Daemon, file_state, make_guest};

fn xml_with(d: &Daemon, name: &str, devices: &str) -> std::path::PathBuf {
    let xml = d.path(&format!("{name}.xml"));
    std::fs::write(
        &xml,
        format!(
            "<domain type='qemu'><name>{name}</name><memory unit='MiB'>64</memory><vcpu>1</vcpu>\
             <os><type arch='x86_64' machine='pc'>hvm</type></os><devices>{devices}</devices></domain>\n"
        ),
    )
    .unwrap();
    xml
}

fn refused(d: &Daemon, xml: &Path, wants: &[&str]) {
    let out = d.svirt(&["start", xml.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{} started", xml.display());
    for w in wants {
        assert!(err.contains(w), "error lacks {w:?}: {err}");
    }
}

#[test]
fn attack_own_objects_svirtd_socket_state_and_other_guests_files() {
    skip_unless_capable!();
    let d = Daemon::start(&[]);
    // Control: an ordinary guest starts (and is the victim below).
    let good = make_guest(&d, "victim", false, None);
    d.ok(&["start", good.to_str().unwrap()]);
    let runtime = d.run.join("guests/victim");
    assert!(runtime.is_dir());
    let db = std::fs::read_dir(&d.state)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| p.is_file())
        .expect("a database file in the state dir");
    let watched = [d.socket.clone(), db.clone()];
    let before: Vec<String> = watched.iter().map(|p| file_state(p)).collect();

    // The API socket on a parallel port.
    let xml = xml_with(
        &d,
        "port",
        &format!(
            "<parallel type='unix'><source mode='connect' path='{}'/><target port='0'/></parallel>",
            d.socket.display()
        ),
    );
    refused(&d, &xml, &["parallel 0", "svirtd's run directory"]);
    // Through a symlink root made elsewhere.
    let link = d.path("api-link");
    std::os::unix::fs::symlink(&d.socket, &link).unwrap();
    let xml = xml_with(
        &d,
        "portlink",
        &format!(
            "<serial type='unix'><source mode='connect' path='{}'/><target port='0'/></serial>",
            link.display()
        ),
    );
    refused(&d, &xml, &["svirtd's run directory", "reached from"]);
    // The state database as a disk.
    let xml = xml_with(
        &d,
        "db",
        &format!(
            "<disk type='file' device='disk'><driver name='qemu' type='raw'/><source file='{}'/><target dev='vda' bus='virtio'/></disk>",
            db.display()
        ),
    );
    refused(&d, &xml, &["disk vda", "svirtd's state directory"]);
    // Another guest's runtime directory, as a serial log file and as a share.
    let xml = xml_with(
        &d,
        "log",
        &format!(
            "<serial type='file'><source path='{}'/><target port='0'/></serial>",
            runtime.join("stolen.log").display()
        ),
    );
    refused(&d, &xml, &["svirtd's run directory"]);
    assert!(
        !runtime.join("stolen.log").exists(),
        "nothing created there"
    );

    let after: Vec<String> = watched.iter().map(|p| file_state(p)).collect();
    assert_eq!(before, after, "svirtd's objects unchanged");
    // svirtd still answers and the victim still runs.
    let list = d.ok(&["list"]);
    assert!(
        list.contains("victim") && list.contains("running"),
        "{list}"
    );
}
