//! Attack suite, class 2 (races): the object the planner judged is the object the drivers
//! change. A user who owns the directory swaps the planned name for another object
//! between planning and labeling (here: renames another file over it, as a hard link or a
//! rename would); the DAC driver and the SELinux relabel engine refuse it, naming the
//! object, and change nothing; the Landlock driver gives it no rule. Control: the
//! unswapped object is labeled (granted).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod dac_support;

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::Arc;

use dac_support::*;
use svirt_domain::ObjectIdentity;
use svirt_drivers::SecurityDriver;
use svirt_drivers::relabel::{LabelJob, Relabeler};
use svirt_hostfs::FsRoot;
use svirt_store::Store;

const FIRST_ID: u32 = 640_000;
const LAST_ID: u32 = 640_050;

fn identity(p: &Path) -> ObjectIdentity {
    let m = std::fs::metadata(p).unwrap();
    ObjectIdentity {
        dev: m.dev(),
        ino: m.ino(),
    }
}

#[test]
fn attack_planned_object_swapped_before_dac_labels_it() {
    let Some((dir, _acc, d)) = dac_setup(FIRST_ID, LAST_ID, None) else {
        return;
    };
    let img = dir.path().join("disk.img");
    std::fs::write(&img, b"guest").unwrap();
    let mut pr = disk(&img);
    pr.resource.identity = Some(identity(&img));
    let p = plan("swap-dac", vec![pr]);
    let mut g = guest("swap-dac");
    d.reserve(&p, &mut g).expect("reserve");
    // The swap: another file (say, one the planter could only read) takes the name.
    let other = dir.path().join("other");
    std::fs::write(&other, b"not the guest's").unwrap();
    let before = owner_mode(&other);
    std::fs::rename(&other, &img).unwrap();
    let e = d.set_all(&p, &g).expect_err("a swapped object is refused");
    assert!(
        e.to_string().contains("replaced since it was planned")
            && e.to_string().contains("disk.img"),
        "{e}"
    );
    assert_eq!(
        owner_mode(&img),
        before,
        "the swapped-in object is untouched"
    );
    // Control: planned again on the object now there, it is labeled.
    let mut pr = disk(&img);
    pr.resource.identity = Some(identity(&img));
    let p = plan("swap-dac", vec![pr]);
    d.set_all(&p, &g).expect("the object planned is labeled");
    assert_eq!(owner_mode(&img).0, g.ids.expect("ids").0);
    assert!(d.restore_all(&p, &g).is_empty());
}

#[test]
fn attack_planned_object_swapped_before_selinux_labels_it() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().canonicalize().unwrap().join("disk.img");
    std::fs::write(&img, b"guest").unwrap();
    let planned = identity(&img);
    let other = img.with_file_name("other");
    std::fs::write(&other, b"x").unwrap();
    std::fs::rename(&other, &img).unwrap();
    let store = Arc::new(Store::open(&dir.path().join("state")).unwrap());
    let r = Relabeler::open(store, FsRoot::host().unwrap(), 1).unwrap();
    let job = |identity: ObjectIdentity| LabelJob {
        path: img.clone(),
        label: "system_u:object_r:svirt_image_t:s0:c1,c2".into(),
        restore: true,
        recursive: false,
        identity: Some((identity.dev, identity.ino)),
    };
    let e = r
        .set_labels("swap-se", &[job(planned)])
        .expect_err("a swapped object is refused");
    assert!(
        e.to_string().contains("replaced since it was planned"),
        "{e}"
    );
    assert_eq!(get_xattr(&img, c"security.selinux"), None, "untouched");
    // Control: the object now there, planned, is labeled.
    r.set_labels("swap-se", &[job(identity(&img))])
        .expect("labeled");
    assert!(get_xattr(&img, c"security.selinux").is_some());
}

#[test]
fn attack_planned_object_swapped_before_landlock_grants_it() {
    use svirt_drivers::landlock::{LandlockConfig, LandlockDriver, kernel_abi};
    if kernel_abi() < 1 {
        svirt_testkit::skip("landlock-abi-1", "no Landlock in this kernel");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().canonicalize().unwrap();
    let img = base.join("disk.img");
    std::fs::write(&img, b"guest").unwrap();
    let run = base.join("run");
    std::fs::create_dir(&run).unwrap();
    let planned = identity(&img);
    let p = |id: ObjectIdentity| {
        let mut pr = disk(&img);
        pr.resource.identity = Some(id);
        plan("swap-ll", vec![pr])
    };
    let other = base.join("other");
    std::fs::write(&other, b"not the guest's").unwrap();
    std::fs::rename(&other, &img).unwrap();
    let ll = LandlockDriver::new(LandlockConfig::default());
    let Err(e) = ll.prepare(&p(planned), &exec_ctx(&run)) else {
        panic!("a swapped object gets no rule");
    };
    assert!(
        e.to_string().contains("replaced since it was planned")
            && e.to_string().contains("disk.img"),
        "{e}"
    );
    // Control: the object now there, planned, is granted.
    let ruleset = ll
        .prepare(&p(identity(&img)), &exec_ctx(&run))
        .expect("granted");
    assert!(
        ruleset.rules().iter().any(|r| r.path == img),
        "{:?}",
        ruleset.rules()
    );
}
