//! Differential: svirt's qcow2 header reader against QEMU's own, `qemu-img info`.
//!
//! svirt labels the backing files it reads from a header; QEMU then opens the backing
//! files IT reads from the same header. If the two readings differ, a crafted header
//! makes QEMU open a file svirt never checked. So for every header svirt accepts and QEMU
//! opens: the same backing file name (or none on both sides), the same backing format
//! when svirt's is one the builder accepts, and no external data file QEMU would open
//! that svirt did not see. svirt refusing what QEMU accepts is fine (fail closed).
//! Slow (one `qemu-img` per input, ~100/s): scripts/fuzz runs it like the others.
#![no_main]

use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use svirt_domain::qcow2::parse_header;

/// The file each input is written to (below `$TMPDIR`, one per process).
fn image() -> &'static PathBuf {
    static P: OnceLock<PathBuf> = OnceLock::new();
    P.get_or_init(|| {
        std::env::temp_dir().join(format!("svirt-fuzz-qcow2.{}.img", std::process::id()))
    })
}

/// Panics once, at the first input, unless `qemu-img` runs: otherwise every input would
/// look like an image QEMU refuses and the target would pass without comparing anything.
fn qemu_img_works() {
    static OK: OnceLock<()> = OnceLock::new();
    OK.get_or_init(|| {
        let st = Command::new("qemu-img").arg("--version").output();
        assert!(
            st.as_ref().is_ok_and(|o| o.status.success()),
            "qemu-img must be installed (package qemu-utils): {st:?}"
        );
    });
}

/// Removes the image file when the input is done.
struct Cleanup;

impl Drop for Cleanup {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(image());
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(h) = parse_header(data) else {
        return;
    };
    let _cleanup = Cleanup;
    std::fs::write(image(), data).expect("write the image under TMPDIR");
    qemu_img_works();
    // -U: no lock; info opens the image alone (never its backing file). Some headers make
    // qemu-img spend seconds and hundreds of MiB (huge tables): bounded to 1 s and 512 MiB,
    // and such an image is not compared (QEMU's slowness is not svirt's bug, and must not
    // count as a hang).
    let out = Command::new("timeout")
        .args(["-s", "KILL", "1", "prlimit", "--as=536870912", "qemu-img"])
        .args(["info", "-U", "--output=json", "-f", "qcow2"])
        .arg(image())
        .env("LC_ALL", "C")
        .output()
        .expect("run timeout(1)");
    match out.status.code() {
        Some(0) => {}
        // timeout(1) could not run prlimit or qemu-img: a broken harness, not a result.
        Some(126 | 127) => panic!(
            "cannot run qemu-img: {}",
            String::from_utf8_lossy(&out.stderr)
        ),
        // QEMU will not open this image at all, or took too long.
        _ => return,
    }
    let info: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "qemu-img info printed no JSON ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    });
    let qemu_backing = info.get("backing-filename").and_then(|v| v.as_str());
    match (&h.backing_file, qemu_backing) {
        (None, None) => {}
        (None, Some(q)) => panic!("QEMU opens backing file {q:?}; svirt read none"),
        (Some(s), None) => {
            // svirt plans a backing file QEMU does not open: harmless (more is labeled),
            // but the readings still differ.
            panic!(
                "svirt read backing file {:?}; QEMU opens none",
                String::from_utf8_lossy(s)
            )
        }
        (Some(s), Some(q)) => {
            // QEMU prints names that are not UTF-8 lossily: compare only exact text.
            if let Ok(s) = std::str::from_utf8(s) {
                assert_eq!(s, q, "backing file name: svirt vs QEMU");
            }
        }
    }
    if h.backing_file.is_some()
        && let Some(f) = h
            .backing_format
            .as_deref()
            .filter(|f| ["qcow2", "raw"].contains(f))
    {
        let q = info.get("backing-filename-format").and_then(|v| v.as_str());
        assert_eq!(Some(f), q, "backing format: svirt vs QEMU");
    }
    if h.data_file.is_none() && !h.has_data_file_bit {
        let df = info.pointer("/format-specific/data/data-file");
        assert!(df.is_none(), "QEMU uses data file {df:?}; svirt saw none");
    }
});
