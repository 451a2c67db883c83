//! What svirt's tests share.
//!
//! **Prerequisites.** A test that needs something this machine may lack (root, a kernel
//! feature, a tool) asks [`skip`] when it is missing. On a developer's machine that prints
//! one `SKIP` line and the test returns; where the test command says the machine must have
//! it (`SVIRT_REQUIRE`: `all`, or a comma-separated list of capability names, set by
//! `scripts/test`, which `.ci/run` runs), the test fails naming what is missing. So a CI
//! machine that lost a prerequisite fails instead of passing tests that did not run.
//!
//! **Images.** [`qcow2`] makes real qcow2 images with `qemu-img` (required: the tests do not
//! fake image headers they can make).
//!
//! **Corpora.** [`corpus`] builds the objects of a label corpus case (`files.txt`) and
//! checks a plan against its `expected.tsv`: the planner's conformance test and the
//! manager's libvirt corpus test share it.

#![allow(clippy::unwrap_used)] // test support: a failed unwrap is a failed test

pub mod corpus;

use std::fmt::Display;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The environment variable listing the capabilities this machine must have.
pub const REQUIRE_ENV: &str = "SVIRT_REQUIRE";

/// Whether the test command requires `capability` (`SVIRT_REQUIRE` is `all` or lists it).
pub fn required(capability: &str) -> bool {
    std::env::var(REQUIRE_ENV).is_ok_and(|v| {
        v.split(',')
            .map(str::trim)
            .any(|c| c == "all" || c == capability)
    })
}

/// A prerequisite of the calling test is missing: `capability` (`root`, `qemu`,
/// `landlock-abi-6`, …) and why. Panics when the test command requires it, else prints one
/// `SKIP` line; the caller then returns.
#[track_caller]
pub fn skip(capability: &str, why: impl Display) {
    if required(capability) {
        panic!(
            "{capability} is missing but {REQUIRE_ENV} requires it on this machine: {why} \
             (unset {REQUIRE_ENV} to skip instead)"
        );
    }
    eprintln!("SKIP ({capability}): {why}");
}

/// Whether the caller runs as root; else [`skip`]s (`root`) and returns false.
#[track_caller]
pub fn root(what: &str) -> bool {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    if !root {
        skip("root", format!("not root ({what})"));
    }
    root
}

/// `qemu-img`, which must be installed (Debian package `qemu-utils`).
pub fn qemu_img() -> &'static str {
    let ok = Command::new("qemu-img")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        ok,
        "qemu-img is required (Debian package qemu-utils): install it, these tests do not skip"
    );
    "qemu-img"
}

/// `qemu-img create -f qcow2 [-u -b BACKING -F FMT] NAME 16M`, run in `dir` so a relative
/// backing name is stored as written. Returns the image's path.
pub fn qcow2(dir: &Path, name: &str, backing: Option<(&str, &str)>) -> PathBuf {
    let mut c = Command::new(qemu_img());
    c.current_dir(dir).args(["create", "-q", "-f", "qcow2"]);
    if let Some((b, f)) = backing {
        c.args(["-u", "-b", b, "-F", f]);
    }
    c.args([name, "16M"]);
    let out = c.output().unwrap();
    assert!(
        out.status.success(),
        "qemu-img create {name}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    dir.join(name)
}

/// A bpffs mounted on a directory for one test (its own programs and maps, never the
/// host's `/sys/fs/bpf`); unmounted on drop, even when the test fails.
pub struct BpfFs {
    /// The mount point.
    pub root: std::path::PathBuf,
}

impl BpfFs {
    /// Mounts a bpffs on `at` (created if missing); `None`, after [`skip`], when the
    /// machine cannot (not root): a failure where the test command requires `bpf`.
    pub fn mount(at: &std::path::Path) -> Option<BpfFs> {
        if let Err(e) = std::fs::create_dir_all(at) {
            skip("bpf", format!("cannot create {}: {e}", at.display()));
            return None;
        }
        let ok = std::process::Command::new("mount")
            .args(["-t", "bpf", "bpf"])
            .arg(at)
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            skip(
                "bpf",
                format!("cannot mount a bpffs on {} (not root?)", at.display()),
            );
            return None;
        }
        Some(BpfFs {
            root: at.to_path_buf(),
        })
    }
}

impl Drop for BpfFs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg(&self.root)
            .status();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Only `all` or the capability's own name requires it.
    #[test]
    fn require_list_is_matched_by_name() {
        // SAFETY (of the test): the variable is read only by this test's calls below, and
        // no other test of this crate touches it.
        unsafe { std::env::set_var(REQUIRE_ENV, "root, qemu") };
        assert!(required("root") && required("qemu") && !required("landlock-abi-6"));
        unsafe { std::env::set_var(REQUIRE_ENV, "all") };
        assert!(required("landlock-abi-6"));
        let caught = std::panic::catch_unwind(|| skip("mknod", "nodes refused here"));
        assert!(caught.is_err(), "a required capability must fail, not skip");
        unsafe { std::env::remove_var(REQUIRE_ENV) };
        assert!(!required("root"));
        skip("root", "control: not required, so this only prints");
    }

    #[test]
    fn qcow2_makes_a_real_image() {
        let dir = std::env::temp_dir().join(format!("svirt-testkit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = qcow2(&dir, "a.qcow2", None);
        let head = std::fs::read(&p).unwrap();
        assert_eq!(&head[..4], b"QFI\xfb");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
