//! Every conformance case under the SMACK driver: planned for SMACK, labeled with real
//! `security.SMACK64` xattrs, each object checked against the case's `expected.tsv` read
//! the SMACK way (the guest's own level: the guest's label; `s0` content: `svirt-content`;
//! other `s0` objects: `svirt-shared`; `-`: left as it was), the rules the plan needs loaded
//! (into a stand-in `load2`: this host has no SMACK; the lab loads them into the kernel),
//! then everything restored exactly and the rules revoked.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod selinux_support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use selinux_support::{corpus, plan_case, set_xattr, xattr_raw};
use svirt_domain::Model;
use svirt_drivers::relabel::{Relabeler, SMACK, XATTR_SMACK};
use svirt_drivers::smack::{SmackConfig, SmackDriver};
use svirt_drivers::{GuestSecurity, SecurityDriver};
use svirt_hostfs::FsRoot;
use svirt_labels::{Context, SmackLabel};
use svirt_store::{AllocatorConfig, LevelAllocator, Store};

/// What SMACK label `expected.tsv`'s SELinux label means for a guest labeled `guest`.
fn smack_of(selinux: &str, level: &str, guest: &SmackLabel) -> Option<String> {
    if selinux == "-" {
        return None;
    }
    let ctx = Context::parse(&selinux.replace("@LEVEL@", level)).unwrap();
    let r = ctx.range.unwrap();
    Some(if !r.high.categories.is_empty() {
        guest.to_string()
    } else if ctx.type_.as_str() == "virt_content_t" {
        svirt_domain::smack::CONTENT.to_string()
    } else {
        svirt_domain::smack::SHARED.to_string()
    })
}

/// What one case checked: (objects labeled, objects left as they were).
fn run_case(case_dir: &Path) -> Option<(usize, usize)> {
    let case = case_dir.file_name().unwrap().to_str().unwrap().to_string();
    let tmp = tempfile::Builder::new()
        .prefix("svirt-smack-conf-")
        .tempdir_in("/var/tmp")
        .unwrap();
    let dir = tmp.path().canonicalize().unwrap();
    let (built, plan) = plan_case(case_dir, &dir, Some(vec![Model::Smack]));
    // Half the objects carry a SMACK label of the host's before svirt: restore must bring
    // back both kinds, and leave SELinux's label alone.
    let mut before = BTreeMap::new();
    for (i, (_, p)) in built.objects.iter().enumerate() {
        if std::fs::symlink_metadata(p).is_ok_and(|m| !m.file_type().is_symlink()) && i % 2 == 0 {
            set_xattr(p, XATTR_SMACK, b"host-data");
        }
    }
    let plan = plan?;
    for (_, p) in &built.objects {
        walk(p, &mut |q| {
            before.insert(
                q.to_path_buf(),
                (xattr_raw(q, XATTR_SMACK), xattr_raw(q, c"security.selinux")),
            );
        });
    }

    let root = dir.join("root");
    std::fs::create_dir_all(root.join("sys/fs/smackfs")).unwrap();
    std::fs::write(root.join("sys/fs/smackfs/load2"), b"").unwrap();
    let store = Arc::new(Store::open(&dir.join("state")).unwrap());
    let levels = LevelAllocator::open(store.clone(), AllocatorConfig::default()).unwrap();
    let engine = Relabeler::open_for(SMACK, store, FsRoot::host().unwrap(), 2).unwrap();
    let driver = SmackDriver::new(
        SmackConfig::new(&root, &dir.join("state")),
        engine,
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
    let label = SmackLabel::for_guest(&level).unwrap();
    driver
        .set_all(&plan, &guest)
        .unwrap_or_else(|e| panic!("{case}: set_all: {e}"));

    let (mut labeled, mut left) = (0, 0);
    let mut want_rules = std::collections::BTreeSet::new();
    let expected = std::fs::read_to_string(case_dir.join("expected.tsv")).unwrap();
    for line in expected.lines().filter(|l| !l.trim().is_empty()) {
        let f: Vec<&str> = line.split('\t').collect();
        let path = dir.join(f[0]);
        if f[1] == "*" {
            continue;
        }
        let got = xattr_raw(&path, XATTR_SMACK).map(|v| String::from_utf8(v).unwrap());
        match smack_of(f[1], &level.to_string(), &label) {
            None => {
                assert_eq!(
                    xattr_raw(&path, XATTR_SMACK),
                    before[&path].0,
                    "{case}: {} must be left as it was",
                    f[0]
                );
                left += 1;
            }
            Some(want) => {
                assert_eq!(got.as_deref(), Some(want.as_str()), "{case}: {}", f[0]);
                if want != label.as_str() {
                    want_rules.insert(format!(
                        "{label} {want} {}",
                        if want == svirt_domain::smack::CONTENT {
                            "rx"
                        } else {
                            "rwxal"
                        }
                    ));
                }
                labeled += 1;
            }
        }
        // SELinux's label is SELinux's: untouched.
        assert_eq!(
            xattr_raw(&path, c"security.selinux"),
            before[&path].1,
            "{case}: {}: security.selinux changed",
            f[0]
        );
    }
    let load2 = root.join("sys/fs/smackfs/load2");
    let loaded: std::collections::BTreeSet<String> = std::fs::read_to_string(&load2)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect();
    // Every rule the expected labels need, and no other (shared content a case does not
    // list in expected.tsv may add one: it must still be one of the two kinds).
    assert!(
        want_rules.is_subset(&loaded),
        "{case}: rules {loaded:?}, want {want_rules:?}"
    );
    for l in &loaded {
        assert!(
            l.starts_with(&format!("{label} svirt-")),
            "{case}: an unexpected rule {l:?}"
        );
    }
    // The VMM's label: the prepared child's hook writes it (here into the stand-in root's
    // attribute file, which the hook opens exactly as it opens /proc's).
    let attr = root.join("proc/thread-self/attr/smack/current");
    std::fs::create_dir_all(attr.parent().unwrap()).unwrap();
    std::fs::write(&attr, b"").unwrap();
    let exec = svirt_drivers::ExecContext {
        emulator: "/usr/bin/qemu-system-x86_64".into(),
        runtime_dir: dir.clone(),
        devices: Vec::new(),
        tcp_ports: Vec::new(),
        inherited: Vec::new(),
        procfs: None,
    };
    let mut hooks = driver.child_hooks(&plan, &guest, &exec).unwrap();
    assert_eq!(hooks.len(), 1, "{case}: one hook");
    (hooks[0])().unwrap();
    assert_eq!(
        std::fs::read_to_string(&attr).unwrap(),
        label.as_str(),
        "{case}: the VMM's label"
    );

    let errs = driver.restore_all(&plan, &guest);
    assert!(errs.is_empty(), "{case}: restore: {errs:?}");
    for (p, (smack, selinux)) in &before {
        assert_eq!(
            &xattr_raw(p, XATTR_SMACK),
            smack,
            "{case}: {} not restored",
            p.display()
        );
        assert_eq!(
            &xattr_raw(p, c"security.selinux"),
            selinux,
            "{case}: {}",
            p.display()
        );
    }
    let after = std::fs::read_to_string(&load2).unwrap();
    for rule in &loaded {
        let (s, rest) = rule.split_once(' ').unwrap();
        let o = rest.split_once(' ').unwrap().0;
        assert!(
            after.contains(&format!("{s} {o} -\n")),
            "{case}: {rule} not revoked"
        );
    }
    driver.release(&guest).unwrap();
    Some((labeled, left))
}

/// `p` and, for a directory, everything beneath it (symlinks as themselves).
fn walk(p: &Path, f: &mut dyn FnMut(&Path)) {
    f(p);
    if std::fs::symlink_metadata(p).is_ok_and(|m| m.is_dir()) {
        for e in std::fs::read_dir(p).unwrap() {
            walk(&e.unwrap().path(), f);
        }
    }
}

#[test]
fn every_conformance_case_labels_the_smack_way_and_restores_exactly() {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(corpus())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.join("domain.xml").is_file())
        .collect();
    entries.sort();
    let (mut cases, mut labeled, mut left) = (0, 0, 0);
    for case in &entries {
        cases += 1;
        if let Some((l, u)) = run_case(case) {
            eprintln!("{}: {l} labeled, {u} left as they were", case.display());
            labeled += l;
            left += u;
        }
    }
    assert!(
        cases >= 9,
        "the corpus has {cases} cases; it must run whole"
    );
    assert!(labeled >= 15, "only {labeled} labels checked");
    assert!(
        left >= 1,
        "no object was expected untouched: the '-' rule went unchecked"
    );
}
