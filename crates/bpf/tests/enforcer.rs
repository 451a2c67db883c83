//! Loading, pinning and the maps, on a bpffs of the test's own (mounted under a temporary
//! directory, unmounted at the end even on failure).
//!
//! This host refuses LSM programs (no BPF trampolines), so the enforcing load must fail
//! with the kernel's reason and leave nothing pinned; the maps and the decision program
//! load, and everything svirtd does with them is exercised on real maps and real tasks.

use std::os::fd::{AsFd, FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use svirt_bpf::enforcer::{Enforcer, Programs, SubjectHook};
use svirt_bpf::label::{Allow, Cats, InodeKey, ObjectLabel, SubjectLabel};

/// A bpffs on a temporary directory of the test's own.
struct BpfFs {
    // Dropped first (fields drop in order): unmounted before the directory goes.
    _fs: svirt_testkit::BpfFs,
    root: PathBuf,
    _tmp: tempfile::TempDir,
}

impl BpfFs {
    fn mount() -> Option<BpfFs> {
        let tmp = tempfile::tempdir().expect("tempdir");
        let fs = svirt_testkit::BpfFs::mount(&tmp.path().join("bpf"))?;
        Some(BpfFs {
            root: fs.root.clone(),
            _fs: fs,
            _tmp: tmp,
        })
    }
}

fn pidfd(pid: u32) -> OwnedFd {
    // SAFETY: pidfd_open returns a new fd or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
    assert!(fd >= 0, "pidfd_open: {}", std::io::Error::last_os_error());
    // SAFETY: a fresh fd we own.
    unsafe { OwnedFd::from_raw_fd(fd as i32) }
}

#[test]
fn a_refused_enforcing_load_names_the_step_and_leaves_nothing_pinned() {
    let Some(fs) = BpfFs::mount() else { return };
    let dir = fs.root.join("svirt");
    match Enforcer::open(&dir, Programs::Enforce) {
        Ok(e) => {
            // A host that can enforce: the control is that it did, fully pinned.
            assert!(e.enforcing(), "loaded but no link pinned");
            e.unpin().expect("unpin");
        }
        Err(err) => {
            let text = err.to_string();
            assert!(
                text.contains("load the BPF-LSM programs"),
                "the error names the step: {text}"
            );
            assert!(!dir.exists(), "a failed load left {} behind", dir.display());
        }
    }
}

#[test]
fn labels_live_in_pinned_maps_and_survive_a_reopen() {
    let Some(fs) = BpfFs::mount() else { return };
    let dir = fs.root.join("svirt");
    let tmp = tempfile::tempdir().expect("tempdir");
    let disk = tmp.path().join("disk.img");
    std::fs::write(&disk, b"x").expect("write");
    let other = tmp.path().join("other.img");
    std::fs::write(&other, b"y").expect("write");
    let key = InodeKey::of(std::fs::File::open(&disk).expect("open")).expect("key");
    let other_key = InodeKey::of(std::fs::File::open(&other).expect("open")).expect("key");
    assert_ne!(key, other_key);

    let me = Cats::of(&"s0:c1,c2".parse().expect("level"));
    let label = ObjectLabel::new(me, Allow::READ_WRITE, false);
    {
        let e = Enforcer::open(&dir, Programs::MapsOnly).expect("maps load");
        assert!(e.loaded());
        let before = e.epoch();
        e.label(&key, &label).expect("label");
        assert_eq!(
            e.epoch(),
            before + 1,
            "a label change moves the epoch (the programs' cache of labels)"
        );
        assert_eq!(e.object(&key).expect("lookup"), Some(label));
        assert_eq!(
            e.object(&other_key).expect("lookup"),
            None,
            "control: unlabeled"
        );
    }
    // svirtd restarts: the open takes the pins over and sees the same labels.
    let e = Enforcer::open(&dir, Programs::MapsOnly).expect("reopen");
    assert!(!e.loaded(), "the reopen must not load a second copy");
    assert_eq!(e.objects().expect("list"), vec![(key, label)]);
    let before = e.epoch();
    assert!(
        before > 0,
        "the epoch lives in the pinned map, past a reopen"
    );
    assert!(e.unlabel(&key).expect("unlabel"));
    assert!(e.epoch() > before, "an unlabel moves the epoch");
    assert!(!e.unlabel(&key).expect("unlabel again"), "idempotent");
    assert!(e.objects().expect("list").is_empty());
    e.unpin().expect("unpin");
    assert!(!dir.exists(), "nothing left pinned");
}

#[test]
fn the_child_labels_itself_before_exec() {
    let Some(fs) = BpfFs::mount() else { return };
    let dir = fs.root.join("svirt");
    let e = Enforcer::open(&dir, Programs::MapsOnly).expect("maps load");
    let me = SubjectLabel::new(Cats::of(&"s0:c7,c9".parse().expect("level")));
    let mut hook = SubjectHook::new(&e, me).expect("hook");
    let mut cmd = Command::new("sleep");
    cmd.arg("30").stdin(Stdio::null());
    // SAFETY: the hook only makes system calls on data prepared before the fork.
    unsafe { cmd.pre_exec(move || hook.apply()) };
    let mut child = cmd.spawn().expect("spawn");
    let labeled = e.subject(pidfd(child.id()).as_fd());
    // Control: an unlabeled process has no label.
    let mut plain = Command::new("sleep").arg("30").spawn().expect("spawn");
    let unlabeled = e.subject(pidfd(plain.id()).as_fd());
    let _ = child.kill();
    let _ = plain.kill();
    let _ = child.wait();
    let _ = plain.wait();
    assert_eq!(labeled.expect("lookup"), Some(me));
    assert_eq!(unlabeled.expect("lookup"), None);
    e.unpin().expect("unpin");
}
