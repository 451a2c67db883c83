//! Helpers shared by the integration tests: building real objects in temp dirs.
#![allow(dead_code, clippy::unwrap_used)]

use std::path::Path;

#[allow(unused_imports)] // not every test binary of this crate calls it
pub use svirt_testkit::qemu_img;

/// `qemu-img create -f qcow2 [-u -b BACKING -F FMT] NAME 16M`, run in `dir` so a relative
/// backing name is stored as written.
pub fn qcow2(dir: &Path, name: &str, backing: Option<(&str, &str)>) {
    svirt_testkit::qcow2(dir, name, backing);
}

/// A qcow2 image whose header names a backing file but no backing format (old images).
/// qemu-img no longer writes these, so the format extension is cut out of a real image.
pub fn qcow2_without_backing_format(dir: &Path, name: &str, backing: &str) {
    qcow2(dir, name, Some((backing, "raw")));
    let p = dir.join(name);
    let mut b = std::fs::read(&p).unwrap();
    let hl = u32::from_be_bytes(b[100..104].try_into().unwrap()) as usize;
    let mut at = hl;
    loop {
        let ty = u32::from_be_bytes(b[at..at + 4].try_into().unwrap());
        let len = u32::from_be_bytes(b[at + 4..at + 8].try_into().unwrap()) as usize;
        if ty == 0 {
            break;
        }
        if ty == 0xe279_2aca {
            // Turn it into an unknown extension type: QEMU and svirt both skip those.
            b[at..at + 4].copy_from_slice(&0x1234_5678u32.to_be_bytes());
        }
        at += 8 + len.div_ceil(8) * 8;
    }
    std::fs::write(&p, b).unwrap();
}

#[allow(unused_imports)] // not every test binary of this crate uses each
pub use svirt_testkit::corpus::{Built, Snapshot, build_files, mkfifo, snapshot};
