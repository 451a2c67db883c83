//! Every conformance case, planned by the domain crate, labeled for real by the SELinux
//! driver (real files, real `security.selinux` xattrs), each expected label checked on disk,
//! then restored and checked exactly (label bytes, owner, group, mode).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod selinux_support;

use std::os::unix::process::CommandExt;
use std::path::Path;
use std::sync::Arc;

use selinux_support::*;
use svirt_domain::{Host, LevelSource, PlanConfig, plan_xml};
use svirt_drivers::selinux::SelinuxDriver;
use svirt_drivers::{ExecContext, GuestSecurity, SecurityDriver};
use svirt_store::{AllocatorConfig, LevelAllocator};

/// A fake host root: the driver's kernel interfaces (`/proc/thread-self/attr/exec`,
/// `/sys/fs/selinux/enforce`) are regular files here, so the exec-label write is observable.
fn fake_root() -> tempfile::TempDir {
    let r = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(r.path().join("proc/thread-self/attr")).unwrap();
    std::fs::write(r.path().join("proc/thread-self/attr/exec"), b"").unwrap();
    std::fs::create_dir_all(r.path().join("proc/self/attr")).unwrap();
    std::fs::write(
        r.path().join("proc/self/attr/current"),
        b"system_u:system_r:virtd_t:s0\0",
    )
    .unwrap();
    std::fs::create_dir_all(r.path().join("sys/fs/selinux")).unwrap();
    std::fs::write(r.path().join("sys/fs/selinux/enforce"), b"1").unwrap();
    r
}

fn check_level(level: &str, case: &str) {
    // s0:cA,cB with A < B
    let rest = level
        .strip_prefix("s0:c")
        .unwrap_or_else(|| panic!("{case}: level {level} is not s0:cA,cB"));
    let (a, b) = rest
        .split_once(",c")
        .unwrap_or_else(|| panic!("{case}: level {level} is not s0:cA,cB"));
    let (a, b): (u32, u32) = (a.parse().unwrap(), b.parse().unwrap());
    assert!(a < b, "{case}: level {level}: categories not in order");
}

fn run_case(case_dir: &Path) {
    let case = case_dir.file_name().unwrap().to_str().unwrap().to_string();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().canonicalize().unwrap();
    let files = std::fs::read_to_string(case_dir.join("files.txt")).unwrap();
    let built = build_files(&dir, &files);
    let before: Vec<State> = built.objects.iter().map(|(_, p)| state(p)).collect();
    let root = fake_root();
    let xml = std::fs::read_to_string(case_dir.join("domain.xml"))
        .unwrap()
        .replace("@DIR@", dir.to_str().unwrap());
    let host = Host::new(root.path());
    let cfg = PlanConfig::for_host(&host).unwrap();
    let planned = plan_xml(&xml, &host, &cfg);

    if let Ok(word) = std::fs::read_to_string(case_dir.join("expected-error.txt")) {
        let word = word.lines().next().unwrap_or("").trim().to_lowercase();
        let err = match planned {
            Ok(_) => panic!("{case}: expected an error containing '{word}', got a plan"),
            Err(e) => e.to_string(),
        };
        assert!(
            err.to_lowercase().contains(&word),
            "{case}: error '{err}' lacks '{word}'"
        );
        let after: Vec<State> = built.objects.iter().map(|(_, p)| state(p)).collect();
        assert_eq!(before, after, "{case}: objects changed by a refused domain");
        eprintln!("{case}: refused as expected ({err})");
        return;
    }
    let plan = planned
        .unwrap_or_else(|e| panic!("{case}: plan failed: {e}"))
        .plan;

    let env = env();
    let alloc = Arc::new(
        LevelAllocator::open(env.store.clone(), AllocatorConfig::with_categories(0, 1023)).unwrap(),
    );
    let drv = SelinuxDriver::new(root.path(), env.relabeler.clone(), Some(alloc.clone()));
    let mut guest = GuestSecurity {
        name: format!("conf-{case}"),
        level: None,
        ids: None,
    };
    drv.reserve(&plan, &mut guest).unwrap();
    let level = guest.level.map(|l| l.to_string());
    if matches!(plan.level, LevelSource::Dynamic) {
        check_level(level.as_deref().unwrap(), &case);
        assert!(
            alloc.reservation(&guest.level.unwrap().low).is_some(),
            "{case}: dynamic level not reserved in the store"
        );
    }
    drv.set_all(&plan, &guest)
        .unwrap_or_else(|e| panic!("{case}: set_all: {e}"));

    // Every expected label, on disk.
    let expected = std::fs::read_to_string(case_dir.join("expected.tsv")).unwrap();
    let mut checked = 0;
    for line in expected.lines().filter(|l| !l.trim().is_empty()) {
        let f: Vec<&str> = line.split('\t').collect();
        let (rel, want) = (f[0], f[1]);
        let p = dir.join(rel);
        let idx = built.objects.iter().position(|(n, _)| n == rel);
        match want {
            "*" => continue,
            "-" => {
                let i = idx.unwrap_or_else(|| panic!("{case}: {rel} not in files.txt"));
                assert_eq!(
                    state(&p),
                    before[i],
                    "{case}: {rel} must keep its label and owner"
                );
            }
            w => {
                let w = w.replace("@LEVEL@", level.as_deref().unwrap_or("@LEVEL@"));
                assert_eq!(
                    label(&p).as_deref(),
                    Some(w.as_str()),
                    "{case}: label of {rel}"
                );
            }
        }
        // The SELinux driver never touches owner or mode.
        if let Some(i) = idx {
            let s = state(&p);
            assert_eq!(
                (s.uid, s.gid, s.mode, s.ino),
                (before[i].uid, before[i].gid, before[i].mode, before[i].ino),
                "{case}: {rel} owner/mode changed"
            );
        }
        checked += 1;
    }
    assert!(checked > 0, "{case}: nothing checked");

    // The process label: computed, and written by the child hook in a real child.
    if let Ok(text) = std::fs::read_to_string(case_dir.join("expected-process.txt")) {
        let want = text
            .trim()
            .replace("@LEVEL@", level.as_deref().unwrap_or("@LEVEL@"));
        let exec = ExecContext {
            emulator: "/bin/true".into(),
            runtime_dir: dir.clone(),
            devices: vec![],
            tcp_ports: vec![],
            inherited: vec![],
            procfs: None,
        };
        let mut hooks = drv.child_hooks(&plan, &guest, &exec).unwrap();
        assert_eq!(hooks.len(), 1, "{case}: one exec-label hook");
        let mut cmd = std::process::Command::new("/bin/true");
        // SAFETY: the hooks only make system calls on data prepared before the fork.
        unsafe {
            cmd.pre_exec(move || {
                for h in hooks.iter_mut() {
                    h()?;
                }
                Ok(())
            });
        }
        assert!(
            cmd.status().unwrap().success(),
            "{case}: child with exec-label hook failed"
        );
        let written = std::fs::read(root.path().join("proc/thread-self/attr/exec")).unwrap();
        assert_eq!(
            written,
            format!("{want}\0").into_bytes(),
            "{case}: exec label written by the child"
        );
    }

    // Restore: every object exactly as before (label bytes, owner, group, mode, inode).
    let errs = drv.restore_all(&plan, &guest);
    assert!(errs.is_empty(), "{case}: restore errors: {errs:?}");
    for ((rel, p), b) in built.objects.iter().zip(&before) {
        assert_eq!(&state(p), b, "{case}: {rel} not restored exactly");
    }
    assert!(
        env.store.list_originals().unwrap().is_empty(),
        "{case}: originals left in the store"
    );
    drv.release(&guest).unwrap();
    if let Some(l) = guest.level {
        assert!(
            alloc.reservation(&l.low).is_none(),
            "{case}: level still reserved after release"
        );
    }
    eprintln!("{case}: labeled {checked} objects, restored exactly");
}

#[test]
fn every_conformance_case_labels_and_restores_exactly() {
    let corpus = corpus();
    if !xattrs_work(&std::env::temp_dir()) {
        return;
    }
    let mut cases: Vec<_> = std::fs::read_dir(&corpus)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.join("domain.xml").is_file())
        .collect();
    cases.sort();
    assert!(
        cases.len() >= 10,
        "conformance corpus at {} has only {} cases",
        corpus.display(),
        cases.len()
    );
    for c in &cases {
        run_case(c);
    }
}
