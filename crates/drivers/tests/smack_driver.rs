//! The SMACK driver on real files and xattrs: its probe and process labels on a stand-in
//! root, a failed start that leaves nothing behind, a crash recovered at the next open,
//! and the shared ledger (SELinux's engine never releases SMACK's records, nor the other
//! way round). This host has no SMACK: rules go to a stand-in `load2`, and the lab's
//! `smack` scenario proves them against a SMACK kernel.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod selinux_support;

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use selinux_support::{set_xattr, xattr_raw};
use svirt_domain::{Model, Plan};
use svirt_drivers::relabel::{LabelJob, Relabeler, SELINUX, SMACK, XATTR_SELINUX, XATTR_SMACK};
use svirt_drivers::smack::{SmackConfig, SmackDriver};
use svirt_drivers::{GuestSecurity, SecurityDriver};
use svirt_hostfs::FsRoot;
use svirt_store::{AllocatorConfig, LevelAllocator, Store};

struct Env {
    _tmp: tempfile::TempDir,
    dir: PathBuf,
    root: PathBuf,
    state: PathBuf,
    store: Arc<Store>,
}

fn env() -> Env {
    let tmp = tempfile::Builder::new()
        .prefix("svirt-smack-")
        .tempdir_in("/var/tmp")
        .unwrap();
    let dir = tmp.path().canonicalize().unwrap();
    let root = dir.join("root");
    std::fs::create_dir_all(root.join("sys/fs/smackfs")).unwrap();
    std::fs::write(root.join("sys/fs/smackfs/load2"), b"").unwrap();
    let state = dir.join("state");
    std::fs::create_dir_all(&state).unwrap();
    let store = Arc::new(Store::open(&state).unwrap());
    Env {
        _tmp: tmp,
        dir,
        root,
        state,
        store,
    }
}

impl Env {
    fn driver(&self) -> SmackDriver {
        self.driver_and_engine().0
    }

    fn driver_and_engine(&self) -> (SmackDriver, Arc<Relabeler>) {
        let levels = LevelAllocator::open(self.store.clone(), AllocatorConfig::default()).unwrap();
        let engine =
            Relabeler::open_for(SMACK, self.store.clone(), FsRoot::host().unwrap(), 1).unwrap();
        let d = SmackDriver::new(
            SmackConfig::new(&self.root, &self.state),
            engine.clone(),
            Some(Arc::new(levels)),
        )
        .unwrap();
        (d, engine)
    }

    fn file(&self, name: &str, smack: Option<&str>) -> PathBuf {
        let p = self.dir.join(name);
        std::fs::write(&p, name).unwrap();
        if let Some(l) = smack {
            set_xattr(&p, XATTR_SMACK, l.as_bytes());
        }
        p
    }

    /// A guest with a private disk, a shared disk and a CD-ROM (and `extra` private
    /// disks), planned for SMACK from XML.
    fn plan(&self, name: &str, level: &str, extra: &[&Path]) -> Plan {
        let mut disks = format!(
            "<disk type='file' device='disk'><source file='{d}/{name}.img'/><target dev='vda'/></disk>\
             <disk type='file' device='disk'><source file='{d}/shared.img'/><target dev='vdb'/><shareable/></disk>\
             <disk type='file' device='cdrom'><source file='{d}/tools.iso'/><target dev='sda'/><readonly/></disk>",
            d = self.dir.display()
        );
        for (i, p) in extra.iter().enumerate() {
            disks.push_str(&format!(
                "<disk type='file' device='disk'><source file='{}'/><target dev='vd{}'/></disk>",
                p.display(),
                (b'c' + i as u8) as char
            ));
        }
        let xml = format!(
            "<domain type='qemu'><name>{name}</name><memory unit='MiB'>64</memory>\
             <os><type arch='x86_64'>hvm</type></os>\
             <seclabel type='static' model='selinux' relabel='yes'><label>system_u:system_r:svirt_t:{level}</label></seclabel>\
             <devices>{disks}</devices></domain>"
        );
        let host = svirt_domain::Host::new("/");
        let mut cfg = svirt_domain::PlanConfig::for_host(&host).unwrap();
        cfg.models = vec![Model::Smack];
        svirt_domain::plan_xml(&xml, &host, &cfg).unwrap().plan
    }

    fn load2(&self) -> String {
        std::fs::read_to_string(self.root.join("sys/fs/smackfs/load2")).unwrap()
    }

    fn records(&self) -> usize {
        std::fs::read_dir(self.state.join("smack")).map_or(0, |d| d.count())
    }
}

fn smack(p: &Path) -> Option<String> {
    xattr_raw(p, XATTR_SMACK).map(|v| String::from_utf8(v).unwrap())
}

fn guest(name: &str) -> GuestSecurity {
    GuestSecurity {
        name: name.into(),
        level: None,
        ids: None,
    }
}

#[test]
fn probe_says_why_and_process_labels_are_read() {
    let e = env();
    let d = e.driver();
    // smackfs with load2, no LSM list: usable.
    let p = d.probe();
    assert!(p.usable, "{p:?}");
    // Listed without smack: unusable, and why.
    let lsm = e.root.join("sys/kernel/security/lsm");
    std::fs::create_dir_all(lsm.parent().unwrap()).unwrap();
    std::fs::write(&lsm, "lockdown,capability,landlock,apparmor\n").unwrap();
    let p = d.probe();
    assert!(!p.usable && p.reason.contains("not an active LSM"), "{p:?}");
    std::fs::write(&lsm, "capability,smack,landlock\n").unwrap();
    assert!(d.probe().usable);
    std::fs::remove_file(e.root.join("sys/fs/smackfs/load2")).unwrap();
    let p = d.probe();
    assert!(
        !p.usable && p.reason.contains("smackfs is not mounted"),
        "{p:?}"
    );

    // attr/smack/current first, attr/current where the kernel has no per-LSM directory.
    let a = e.root.join("proc/4242/attr");
    std::fs::create_dir_all(a.join("smack")).unwrap();
    std::fs::write(a.join("smack/current"), b"svirt-c1-c2").unwrap();
    std::fs::write(a.join("current"), b"other").unwrap();
    assert_eq!(
        d.process_label(4242).unwrap().as_deref(),
        Some("svirt-c1-c2")
    );
    let b = e.root.join("proc/4243/attr");
    std::fs::create_dir_all(&b).unwrap();
    std::fs::write(b.join("current"), b"svirt-c3-c4\n").unwrap();
    assert_eq!(
        d.process_label(4243).unwrap().as_deref(),
        Some("svirt-c3-c4")
    );
    assert!(
        d.process_label(4244).is_err(),
        "a missing process is an error"
    );
}

#[test]
fn a_failed_start_leaves_no_label_no_rule_and_no_claim() {
    let e = env();
    let d = e.driver();
    let own = e.file("a.img", Some("host-data"));
    let shared = e.file("shared.img", None);
    let iso = e.file("tools.iso", Some("_"));
    let late = e.file("late.img", None);
    let plan = e.plan("a", "s0:c1,c2", &[&late]);
    // The last disk is swapped for another file after planning: refused, naming it.
    let other = e.file("other", None);
    std::fs::rename(&other, &late).unwrap();
    let mut g = guest("a");
    d.reserve(&plan, &mut g).unwrap();
    let err = d
        .set_all(&plan, &g)
        .expect_err("a swapped object fails the start");
    assert!(err.to_string().contains("late.img"), "{err}");
    assert_eq!(smack(&own).as_deref(), Some("host-data"));
    assert_eq!(smack(&shared), None);
    assert_eq!(smack(&iso).as_deref(), Some("_"));
    assert_eq!(smack(&late), None);
    assert_eq!(e.records(), 0, "no rule record left");
    assert_eq!(e.load2(), "", "refused before any rule was loaded");
    d.release(&g).unwrap();

    // Control: the same guest without the swapped disk starts, and its private disk is
    // free for it (no claim was left behind).
    let plan = e.plan("a", "s0:c1,c2", &[]);
    let mut g = guest("a");
    d.reserve(&plan, &mut g).unwrap();
    d.set_all(&plan, &g).unwrap();
    assert_eq!(smack(&own).as_deref(), Some("svirt-c1-c2"));
    assert_eq!(smack(&shared).as_deref(), Some("svirt-shared"));
    assert_eq!(smack(&iso).as_deref(), Some("svirt-content"));
    assert!(d.restore_all(&plan, &g).is_empty());
    assert_eq!(smack(&own).as_deref(), Some("host-data"));
    assert_eq!(smack(&shared), None);
    assert_eq!(smack(&iso).as_deref(), Some("_"));
}

#[test]
fn a_labeling_failure_after_the_rules_revokes_them_and_restores_every_label() {
    let e = env();
    let (d, engine) = e.driver_and_engine();
    let own = e.file("a.img", Some("host-data"));
    let shared = e.file("shared.img", None);
    let iso = e.file("tools.iso", Some("_"));
    let plan = e.plan("a", "s0:c1,c2", &[]);
    let mut g = guest("a");
    d.reserve(&plan, &mut g).unwrap();
    // The second object's label write fails (injected after the first one is written).
    let n = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let seen = n.clone();
    engine.set_fault_hook(Some(Arc::new(move |point: &str| {
        point == "after-label" && seen.fetch_add(1, std::sync::atomic::Ordering::SeqCst) == 1
    })));
    let err = d
        .set_all(&plan, &g)
        .expect_err("the injected failure fails the start");
    assert!(err.to_string().contains("after-label"), "{err}");
    assert_eq!(smack(&own).as_deref(), Some("host-data"));
    assert_eq!(smack(&shared), None);
    assert_eq!(smack(&iso).as_deref(), Some("_"));
    assert_eq!(e.records(), 0, "no rule record left");
    assert_eq!(
        e.load2(),
        "svirt-c1-c2 svirt-content rx\nsvirt-c1-c2 svirt-shared rwxal\n\
         svirt-c1-c2 svirt-content -\nsvirt-c1-c2 svirt-shared -\n",
        "rules loaded, then revoked"
    );
    // Control: without the fault the same start succeeds.
    engine.set_fault_hook(None);
    d.set_all(&plan, &g).unwrap();
    assert_eq!(smack(&own).as_deref(), Some("svirt-c1-c2"));
    assert!(d.restore_all(&plan, &g).is_empty());
}

#[test]
fn another_guest_cannot_take_a_private_disk_and_shared_ones_stay_until_the_last_stop() {
    let e = env();
    let d = e.driver();
    let a_img = e.file("a.img", None);
    let shared = e.file("shared.img", Some("host-data"));
    e.file("tools.iso", None);
    e.file("b.img", None);
    let pa = e.plan("a", "s0:c1,c2", &[]);
    let mut ga = guest("a");
    d.reserve(&pa, &mut ga).unwrap();
    d.set_all(&pa, &ga).unwrap();
    // B names A's private disk: refused before anything of B's changed.
    let pb = e.plan("b", "s0:c3,c4", &[&a_img]);
    let mut gb = guest("b");
    d.reserve(&pb, &mut gb).unwrap();
    let err = d.set_all(&pb, &gb).expect_err("A's disk is A's");
    assert!(err.to_string().contains("a.img"), "{err}");
    assert_eq!(smack(&a_img).as_deref(), Some("svirt-c1-c2"));
    assert_eq!(smack(&e.dir.join("b.img")), None);
    // Control: B without it starts; the shared disk keeps its label until both stopped.
    let pb = e.plan("b", "s0:c3,c4", &[]);
    d.set_all(&pb, &gb).unwrap();
    assert!(d.restore_all(&pa, &ga).is_empty());
    assert_eq!(
        smack(&shared).as_deref(),
        Some("svirt-shared"),
        "B still uses it"
    );
    assert!(
        e.load2().ends_with("svirt-c1-c2 svirt-shared -\n"),
        "A's rules revoked"
    );
    assert!(d.restore_all(&pb, &gb).is_empty());
    assert_eq!(smack(&shared).as_deref(), Some("host-data"));
    assert_eq!(e.records(), 0);
}

#[test]
fn a_crashed_svirtd_is_recovered_at_the_next_open() {
    let e = env();
    let own = e.file("a.img", Some("host-data"));
    e.file("shared.img", None);
    e.file("tools.iso", None);
    {
        let d = e.driver();
        let plan = e.plan("a", "s0:c1,c2", &[]);
        let mut g = guest("a");
        d.reserve(&plan, &mut g).unwrap();
        d.set_all(&plan, &g).unwrap();
        // svirtd dies here: nothing restored.
    }
    assert_eq!(smack(&own).as_deref(), Some("svirt-c1-c2"));
    assert_eq!(e.records(), 1);
    let d = e.driver();
    // A running guest's records are left alone.
    assert!(d.recover(&|_| true).is_empty());
    assert_eq!(smack(&own).as_deref(), Some("svirt-c1-c2"));
    let notes = d.recover(&|_| false);
    assert!(notes.iter().all(|n| !n.failed), "{notes:?}");
    assert!(
        notes.iter().any(|n| n.what.contains("rules revoked")),
        "{notes:?}"
    );
    assert_eq!(smack(&own).as_deref(), Some("host-data"));
    assert_eq!(e.records(), 0);
    assert!(e.load2().ends_with("svirt-c1-c2 svirt-shared -\n"));
}

#[test]
fn each_label_models_engine_keeps_to_its_own_records() {
    let e = env();
    let p = e.file("disk.img", Some("host-data"));
    set_xattr(&p, XATTR_SELINUX, b"system_u:object_r:user_tmp_t:s0\0");
    let m = std::fs::metadata(&p).unwrap();
    let job = |label: &str| LabelJob {
        path: p.clone(),
        label: label.into(),
        restore: true,
        recursive: false,
        identity: Some((m.dev(), m.ino())),
    };
    let root = || FsRoot::host().unwrap();
    let se = Relabeler::open_for(SELINUX, e.store.clone(), root(), 1).unwrap();
    let sm = Relabeler::open_for(SMACK, e.store.clone(), root(), 1).unwrap();
    se.set_labels("x", &[job("system_u:object_r:svirt_image_t:s0:c1,c2")])
        .unwrap();
    sm.set_labels("x", &[job("svirt-c1-c2")]).unwrap();
    // One record, two label models' owners.
    assert!(Relabeler::has_records_of(&e.store, SELINUX).unwrap());
    assert!(Relabeler::has_records_of(&e.store, SMACK).unwrap());
    // SELinux's recovery of a dead guest restores SELinux's label only.
    let rep = se.recover(&|_| false);
    assert!(rep.errors.is_empty(), "{:?}", rep.errors);
    assert_eq!(
        xattr_raw(&p, XATTR_SELINUX).unwrap(),
        b"system_u:object_r:user_tmp_t:s0\0"
    );
    assert_eq!(
        smack(&p).as_deref(),
        Some("svirt-c1-c2"),
        "SMACK's is SMACK's"
    );
    assert!(!Relabeler::has_records_of(&e.store, SELINUX).unwrap());
    assert!(Relabeler::has_records_of(&e.store, SMACK).unwrap());
    let rep = sm.recover(&|_| false);
    assert!(rep.errors.is_empty(), "{:?}", rep.errors);
    assert_eq!(smack(&p).as_deref(), Some("host-data"));
    assert!(!Relabeler::has_records_of(&e.store, SMACK).unwrap());
}

/// A device's own `<seclabel model='smack'><label>` may name a label of the host's, never
/// another guest's (the guest would get a rule opening that guest to it) nor a SMACK
/// built-in that opens the object to every subject; refused before anything changed.
#[test]
fn a_device_label_naming_another_guest_or_a_builtin_is_refused() {
    let e = env();
    let d = e.driver();
    let img = e.file("a.img", Some("host-data"));
    let xml = |label: &str| {
        format!(
            "<domain type='qemu'><name>a</name><memory unit='MiB'>64</memory>\
             <os><type arch='x86_64'>hvm</type></os>\
             <seclabel type='static' model='selinux' relabel='yes'><label>system_u:system_r:svirt_t:s0:c1,c2</label></seclabel>\
             <devices><disk type='file' device='disk'><source file='{}'>\
             <seclabel model='smack' relabel='yes'><label>{label}</label></seclabel></source>\
             <target dev='vda'/></disk></devices></domain>",
            img.display()
        )
    };
    let host = svirt_domain::Host::new("/");
    let mut cfg = svirt_domain::PlanConfig::for_host(&host).unwrap();
    cfg.models = vec![Model::Smack];
    for bad in ["svirt-c3-c4", "*", "@"] {
        let plan = svirt_domain::plan_xml(&xml(bad), &host, &cfg).unwrap().plan;
        let mut g = guest("a");
        d.reserve(&plan, &mut g).unwrap();
        let err = d.set_all(&plan, &g).expect_err(bad).to_string();
        assert!(
            err.contains("a.img") && err.contains("cannot be given"),
            "{err}"
        );
        assert_eq!(smack(&img).as_deref(), Some("host-data"));
        assert_eq!(e.load2(), "", "no rule for {bad}");
        d.release(&g).unwrap();
    }
    // Control: a host label of the admin's choosing is set, with its rule.
    let plan = svirt_domain::plan_xml(&xml("Media"), &host, &cfg)
        .unwrap()
        .plan;
    let mut g = guest("a");
    d.reserve(&plan, &mut g).unwrap();
    d.set_all(&plan, &g).unwrap();
    assert_eq!(smack(&img).as_deref(), Some("Media"));
    assert!(
        e.load2().contains("svirt-c1-c2 Media rwxal"),
        "{}",
        e.load2()
    );
    assert!(d.restore_all(&plan, &g).is_empty());
    assert_eq!(smack(&img).as_deref(), Some("host-data"));
}
