//! The BPF-LSM driver on real files, real maps and real processes. This host refuses LSM
//! programs, so the driver runs with the maps only (`Programs::MapsOnly`): everything but
//! the kernel's enforcement, which the lab proves (lab/scenarios/bpf). On a bpffs of the
//! test's own.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;

use svirt_bpf::enforcer::{Enforcer, Programs};
use svirt_bpf::label::{Allow, Cats};
use svirt_bpf::{InodeKey, ObjectLabel};
use svirt_domain::{Host, Model, Plan, PlanConfig, plan_xml};
use svirt_drivers::bpf_lsm::{BpfLsmConfig, BpfLsmDriver};
use svirt_drivers::vmm_needs::VmmNeeds;
use svirt_drivers::{DriverError, ExecContext, GuestSecurity, SecurityDriver};
use svirt_store::{AllocatorConfig, LevelAllocator, Store};

use svirt_testkit::BpfFs;

struct World {
    // Fields drop in order: the bpffs is unmounted before its directory is removed.
    fs: BpfFs,
    store: Arc<Store>,
    dir: tempfile::TempDir,
}

impl World {
    fn new() -> Option<World> {
        let dir = tempfile::Builder::new()
            .prefix("svirt-bpf-driver-")
            .tempdir_in("/var/tmp")
            .expect("tempdir");
        let fs = BpfFs::mount(&dir.path().join("bpffs"))?;
        let store = Arc::new(Store::open(&dir.path().join("state")).expect("store"));
        Some(World { dir, fs, store })
    }

    fn path(&self, p: &str) -> PathBuf {
        self.dir.path().join(p)
    }

    fn pin_dir(&self) -> PathBuf {
        self.fs.root.join("svirt")
    }

    fn driver(&self) -> BpfLsmDriver {
        self.driver_at(self.pin_dir(), "state/bpf-lsm")
    }

    fn driver_at(&self, pin_dir: PathBuf, records: &str) -> BpfLsmDriver {
        let levels = LevelAllocator::open(
            self.store.clone(),
            AllocatorConfig::with_categories(100, 115),
        )
        .expect("levels");
        BpfLsmDriver::new(
            BpfLsmConfig {
                root: PathBuf::from("/"),
                bpffs: self.fs.root.clone(),
                pin_dir,
                records: self.path(records),
                needs: VmmNeeds::default(),
                programs: Programs::MapsOnly,
            },
            self.store.clone(),
            Some(Arc::new(levels)),
        )
        .expect("driver")
    }

    /// The maps as svirtd left them pinned (read beside the driver's own handles).
    fn labels(&self) -> Vec<(InodeKey, ObjectLabel)> {
        if !self.pin_dir().join("objects").exists() {
            return Vec::new();
        }
        Enforcer::open(&self.pin_dir(), Programs::MapsOnly)
            .expect("pinned maps")
            .objects()
            .expect("list")
    }

    fn plan(&self, name: &str, disks: &str) -> Plan {
        let xml = format!(
            "<domain type='qemu'><name>{name}</name><memory unit='MiB'>64</memory>\
             <vcpu>1</vcpu><os><type arch='x86_64' machine='pc'>hvm</type></os><devices>\
             <emulator>/usr/bin/qemu-system-x86_64</emulator>{disks}</devices></domain>"
        );
        let host = Host::new("/");
        let mut cfg = PlanConfig::for_host(&host).expect("config");
        cfg.models = vec![Model::BpfLsm];
        plan_xml(&xml, &host, &cfg).expect("plan").plan
    }
}

fn disk(path: &Path, dev: &str, extra: &str) -> String {
    format!(
        "<disk type='file' device='disk'><driver name='qemu' type='raw'/>\
         <source file='{}'/><target dev='{dev}' bus='virtio'/>{extra}</disk>",
        path.display()
    )
}

fn key(p: &Path) -> InodeKey {
    InodeKey::of(std::fs::File::open(p).expect("open")).expect("key")
}

fn guest(name: &str) -> GuestSecurity {
    GuestSecurity {
        name: name.into(),
        level: None,
        ids: None,
    }
}

fn label_of(labels: &[(InodeKey, ObjectLabel)], p: &Path) -> Option<ObjectLabel> {
    let k = key(p);
    labels.iter().find(|(kk, _)| *kk == k).map(|(_, l)| *l)
}

#[test]
fn the_probe_says_why_lsm_programs_do_not_load_here() {
    let Some(w) = World::new() else { return };
    let p = w.driver().probe();
    assert_eq!(p.model, Model::BpfLsm);
    if p.usable {
        assert!(p.reason.contains("loaded and unloaded"), "{}", p.reason);
    } else {
        assert!(
            p.reason.contains("BPF_PROG_LOAD lsm/file_open"),
            "{}",
            p.reason
        );
    }
}

#[test]
fn labels_follow_the_plan_exclusivity_holds_and_restore_removes_them_all() {
    let Some(w) = World::new() else { return };
    for f in ["g1.img", "shared.img", "cd.iso", "other.img"] {
        std::fs::write(w.path(f), b"data").expect("write");
    }
    let cd = format!(
        "<disk type='file' device='cdrom'><driver name='qemu' type='raw'/>\
         <source file='{}'/><target dev='hdc' bus='ide'/><readonly/></disk>",
        w.path("cd.iso").display()
    );
    let plan1 = w.plan(
        "g1",
        &format!(
            "{}{}{cd}",
            disk(&w.path("g1.img"), "vda", ""),
            disk(&w.path("shared.img"), "vdb", "<shareable/>")
        ),
    );
    let d = w.driver();
    let mut g1 = guest("g1");
    d.reserve(&plan1, &mut g1).expect("reserve");
    let level = g1.level.expect("a level");
    let mine = Cats::of(&level.high);
    d.set_all(&plan1, &g1).expect("set_all");

    let labels = w.labels();
    assert_eq!(
        label_of(&labels, &w.path("g1.img")),
        Some(ObjectLabel::new(mine, Allow::READ_WRITE, false)),
        "the private disk carries the guest's level"
    );
    assert_eq!(
        label_of(&labels, &w.path("shared.img")),
        Some(ObjectLabel::new(Cats::default(), Allow::READ_WRITE, false))
    );
    assert_eq!(
        label_of(&labels, &w.path("cd.iso")),
        Some(ObjectLabel::new(Cats::default(), Allow::READ_ONLY, false))
    );
    assert_eq!(label_of(&labels, &w.path("other.img")), None, "control");

    // A second guest naming the first's private disk is refused before any label.
    let plan2 = w.plan("g2", &disk(&w.path("g1.img"), "vda", ""));
    let mut g2 = guest("g2");
    d.reserve(&plan2, &mut g2).expect("reserve");
    assert_ne!(g2.level, g1.level, "levels never collide");
    match d.set_all(&plan2, &g2) {
        Err(DriverError::InUse { other, .. }) => assert_eq!(other, "g1"),
        r => panic!("expected InUse, got {r:?}"),
    }
    assert_eq!(w.labels(), labels, "a refused start changes no label");
    d.release(&g2).expect("release");

    // The VMM's needs and its own label, set by the child itself before exec.
    let run = w.path("run/g1");
    std::fs::create_dir_all(&run).expect("mkdir");
    let exec = ExecContext {
        emulator: PathBuf::from("/usr/bin/sleep"),
        runtime_dir: run.clone(),
        devices: Vec::new(),
        tcp_ports: Vec::new(),
        inherited: Vec::new(),
        procfs: None,
    };
    let mut hooks = d.child_hooks(&plan1, &g1, &exec).expect("hooks");
    let labels = w.labels();
    assert_eq!(
        label_of(&labels, &run),
        Some(ObjectLabel::new(mine, Allow::READ_WRITE, true)),
        "the runtime directory is the guest's tree"
    );
    assert_eq!(
        label_of(
            &labels,
            &std::fs::canonicalize("/usr/lib").expect("usr/lib")
        ),
        Some(ObjectLabel::new(Cats::default(), Allow::READ_EXEC, true)),
        "libraries: read and execute, s0, a tree"
    );
    assert_eq!(
        label_of(&labels, Path::new("/usr/bin/sleep")),
        Some(ObjectLabel::new(Cats::default(), Allow::READ_EXEC, false))
    );
    let mut cmd = Command::new("/usr/bin/sleep");
    cmd.arg("30").stdin(Stdio::null());
    // SAFETY: the driver's hooks only make system calls on data prepared before the fork.
    unsafe {
        cmd.pre_exec(move || {
            for h in hooks.iter_mut() {
                h()?;
            }
            Ok(())
        })
    };
    let mut child = cmd.spawn().expect("spawn");
    let mut plain = Command::new("/usr/bin/sleep")
        .arg("30")
        .spawn()
        .expect("spawn");
    let labeled = d.process_label(child.id() as i32);
    let unlabeled = d.process_label(plain.id() as i32);
    let _ = child.kill();
    let _ = plain.kill();
    let _ = child.wait();
    let _ = plain.wait();
    assert_eq!(labeled.expect("label"), Some(level.high.to_string()));
    assert_eq!(unlabeled.expect("label"), None, "control: a host process");

    // Stop: every label goes, and with no guest left, every pin.
    let errs = d.restore_all(&plan1, &g1);
    assert!(errs.is_empty(), "{errs:?}");
    d.release(&g1).expect("release");
    assert!(w.labels().is_empty());
    assert!(
        !w.pin_dir().exists(),
        "nothing pinned once no guest uses it"
    );
}

#[test]
fn a_crash_leaves_labels_that_the_next_open_removes() {
    let Some(w) = World::new() else { return };
    std::fs::write(w.path("a.img"), b"a").expect("write");
    std::fs::write(w.path("b.img"), b"b").expect("write");
    let plan_a = w.plan("a", &disk(&w.path("a.img"), "vda", ""));
    let plan_b = w.plan("b", &disk(&w.path("b.img"), "vda", ""));
    {
        let d = w.driver();
        for (p, n) in [(&plan_a, "a"), (&plan_b, "b")] {
            let mut g = guest(n);
            d.reserve(p, &mut g).expect("reserve");
            d.set_all(p, &g).expect("set_all");
        }
        // svirtd dies here: nothing is restored, the pins keep enforcing.
    }
    assert_eq!(w.labels().len(), 2);
    let d = w.driver();
    // b is still running: only a's label goes.
    let notes = d.recover(&|g| g == "b");
    assert!(
        notes
            .iter()
            .any(|n| n.guest.as_deref() == Some("a") && !n.failed),
        "{notes:?}"
    );
    let left = w.labels();
    assert_eq!(left.len(), 1);
    assert_eq!(left[0].0, key(&w.path("b.img")));
    // Then b is gone too: everything goes.
    let notes = d.recover(&|_| false);
    assert!(notes.iter().all(|n| !n.failed), "{notes:?}");
    assert!(!w.pin_dir().exists());
}

/// Two svirtds (two state directories) pin apart: one's open, finding no guest of its own,
/// leaves the other's guests enforced.
#[test]
fn two_daemons_never_touch_each_others_pins() {
    let Some(w) = World::new() else { return };
    std::fs::write(w.path("a.img"), b"a").expect("write");
    let root = w.fs.root.join("svirt");
    let (pa, pb) = (
        root.join(svirt_drivers::bpf_lsm::instance(&w.path("state-a"))),
        root.join(svirt_drivers::bpf_lsm::instance(&w.path("state-b"))),
    );
    assert_ne!(pa, pb);
    let a = w.driver_at(pa.clone(), "state-a/bpf-lsm");
    let plan = w.plan("a", &disk(&w.path("a.img"), "vda", ""));
    let mut g = guest("a");
    a.reserve(&plan, &mut g).expect("reserve");
    a.set_all(&plan, &g).expect("set_all");
    let b = w.driver_at(pb.clone(), "state-b/bpf-lsm");
    let notes = b.recover(&|_| false);
    assert!(notes.iter().all(|n| !n.failed), "{notes:?}");
    assert!(pa.join("objects").exists(), "the other daemon's pins stay");
    assert!(a.restore_all(&plan, &g).is_empty());
    assert!(
        !pa.exists() && !root.exists(),
        "the last one out removes the directory"
    );
}
