//! Every conformance case under the BPF-LSM driver: planned for BPF-LSM, labeled into real
//! (pinned) maps, and each object's label checked against the case's `expected.tsv`: the
//! level of SELinux's label as the object's categories, the access as the object's mask,
//! no label where SELinux writes none (`-`). Then the restore leaves no label and nothing
//! pinned. This host refuses LSM programs, so the maps are loaded without them
//! (`Programs::MapsOnly`); the lab proves the programs read these labels as meant.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod selinux_support;

use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use selinux_support::{corpus, plan_case};
use svirt_bpf::enforcer::{Enforcer, Programs};
use svirt_bpf::label::{Allow, Cats};
use svirt_bpf::{InodeKey, ObjectLabel};
use svirt_domain::Model;
use svirt_drivers::bpf_lsm::{BpfLsmConfig, BpfLsmDriver};
use svirt_drivers::vmm_needs::VmmNeeds;
use svirt_drivers::{GuestSecurity, SecurityDriver};
use svirt_labels::Context;
use svirt_store::{AllocatorConfig, LevelAllocator, Store};

/// What one case checked: (objects with a label, objects without).
fn run_case(case_dir: &Path, pins: &Path) -> Option<(usize, usize)> {
    let case = case_dir.file_name().unwrap().to_str().unwrap().to_string();
    let tmp = tempfile::Builder::new()
        .prefix("svirt-bpf-conf-")
        .tempdir_in("/var/tmp")
        .unwrap();
    let dir = tmp.path().canonicalize().unwrap();
    let (_built, plan) = plan_case(case_dir, &dir, Some(vec![Model::BpfLsm]));
    let plan = plan?;

    let store = Arc::new(Store::open(&dir.join("state")).unwrap());
    let levels = LevelAllocator::open(store.clone(), AllocatorConfig::default()).unwrap();
    let pin_dir = pins.join(&case);
    let driver = BpfLsmDriver::new(
        BpfLsmConfig {
            root: PathBuf::from("/"),
            bpffs: pins.to_path_buf(),
            pin_dir: pin_dir.clone(),
            records: dir.join("state/bpf-lsm"),
            needs: VmmNeeds::default(),
            programs: Programs::MapsOnly,
        },
        store,
        Some(Arc::new(levels)),
    )
    .unwrap();
    let mut guest = GuestSecurity {
        name: plan.name.clone(),
        level: None,
        ids: None,
    };
    driver
        .reserve(&plan, &mut guest)
        .unwrap_or_else(|e| panic!("{case}: reserve: {e}"));
    let level = guest.level.expect("a level");
    driver
        .set_all(&plan, &guest)
        .unwrap_or_else(|e| panic!("{case}: set_all: {e}"));
    let maps = Enforcer::open(&pin_dir, Programs::MapsOnly).unwrap();
    assert!(!maps.loaded(), "{case}: the driver's pins must be there");

    // The process: the level expected-process.txt gives (the guest's own, when dynamic).
    if let Ok(p) = std::fs::read_to_string(case_dir.join("expected-process.txt")) {
        let want = p.trim().replace("@LEVEL@", &level.to_string());
        let want = Context::parse(&want).unwrap().range.unwrap();
        assert_eq!(want, level, "{case}: the guest's level");
    }

    let (mut labeled, mut unlabeled) = (0, 0);
    let expected = std::fs::read_to_string(case_dir.join("expected.tsv")).unwrap();
    for line in expected.lines().filter(|l| !l.trim().is_empty()) {
        let f: Vec<&str> = line.split('\t').collect();
        let (path, label, access) = (dir.join(f[0]), f[1], f[2]);
        if label == "*" {
            continue;
        }
        // O_PATH: a FIFO's open would wait for a writer; the identity is all we need.
        let Ok(file) = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_PATH)
            .open(&path)
        else {
            panic!("{case}: {} missing", f[0]);
        };
        // What the programs find: the object's own label, else the nearest tree's above
        // it (as svirt_mcs.bpf.c's lookup_file walks d_parent).
        let key = InodeKey::of(&file).unwrap();
        let got = maps.object(&key).unwrap().or_else(|| {
            path.ancestors().skip(1).find_map(|a| {
                let f = std::fs::OpenOptions::new()
                    .read(true)
                    .custom_flags(libc::O_PATH)
                    .open(a)
                    .ok()?;
                maps.object(&InodeKey::of(&f).ok()?)
                    .unwrap()
                    .map(|l| l.is_tree().then_some(l))
            })?
        });
        if label == "-" {
            // SELinux writes nothing there: BPF-LSM has no label to give.
            assert_eq!(got, None, "{case}: {} must stay unlabeled", f[0]);
            unlabeled += 1;
            continue;
        }
        let ctx = Context::parse(&label.replace("@LEVEL@", &level.to_string())).unwrap();
        let cats = Cats::of(&ctx.range.unwrap().high);
        let got = got.unwrap_or_else(|| panic!("{case}: {} has no label", f[0]));
        assert_eq!(got.cats, cats, "{case}: {}: categories of {label}", f[0]);
        let allow = match access {
            "rw" => Some(Allow::READ_WRITE),
            "ro" => Some(Allow::READ_ONLY),
            _ => None,
        };
        if let Some(allow) = allow {
            assert_eq!(Allow(got.allow), allow, "{case}: {}: access {access}", f[0]);
        }
        let own = ObjectLabel::new(Cats::of(&level.high), Allow::READ, false);
        // The label means what SELinux's does to this guest: its own level or s0.
        assert!(
            got.cats == Cats::default() || own.cats.dominates(&got.cats),
            "{case}: {} labeled {} which the guest at {level} does not dominate",
            f[0],
            got.cats.to_level()
        );
        labeled += 1;
    }
    let errs = driver.restore_all(&plan, &guest);
    assert!(errs.is_empty(), "{case}: restore: {errs:?}");
    drop(maps);
    assert!(
        !pin_dir.exists(),
        "{case}: pins left after the only guest stopped"
    );
    Some((labeled, unlabeled))
}

#[test]
fn every_conformance_case_labels_as_selinux_would() {
    let tmp = tempfile::Builder::new()
        .prefix("svirt-bpf-conf-fs-")
        .tempdir_in("/var/tmp")
        .unwrap();
    let Some(fs) = svirt_testkit::BpfFs::mount(&tmp.path().join("bpffs")) else {
        return;
    };
    let mut entries: Vec<PathBuf> = std::fs::read_dir(corpus())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.join("domain.xml").is_file())
        .collect();
    entries.sort();
    let (mut cases, mut labeled, mut unlabeled) = (0, 0, 0);
    for case in &entries {
        cases += 1;
        if let Some((l, u)) = run_case(case, &fs.root) {
            eprintln!("{}: {l} labeled, {u} left unlabeled", case.display());
            labeled += l;
            unlabeled += u;
        }
    }
    assert!(
        cases >= 9,
        "the corpus has {cases} cases; it must run whole"
    );
    assert!(labeled >= 15, "only {labeled} labels checked");
    assert!(
        unlabeled >= 1,
        "no object was expected unlabeled: the '-' rule went unchecked"
    );
}
