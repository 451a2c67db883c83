//! Runs every case of `shared/conformance/` through the planner, as its README says:
//! build `files.txt` in a fresh temp dir, substitute `@DIR@`, plan, and check labels,
//! access, process label and errors. No case is skipped.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::HashSet;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use svirt_domain::*;
use svirt_labels::{Level, MlsRange};

fn corpus() -> PathBuf {
    // SVIRT_CONFORMANCE_DIR: run a modified copy (to check that the harness can fail).
    let p = match std::env::var_os("SVIRT_CONFORMANCE_DIR") {
        Some(d) => PathBuf::from(d),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/conformance"),
    };
    assert!(
        p.join("README.md").is_file(),
        "conformance corpus missing at {} (it must not be skipped)",
        p.display()
    );
    p
}

/// The level a fake allocator hands the guest, to check that every `@LEVEL@` of a case
/// is the same level and follows `s0:cA,cB` with A < B once resolved.
fn allocated() -> MlsRange {
    MlsRange::single(Level::pair(0, 264, 41))
}

struct Outcome {
    case: String,
    failures: Vec<String>,
}

fn run_case(case_dir: &Path) -> Outcome {
    let case = case_dir.file_name().unwrap().to_str().unwrap().to_string();
    let mut failures = Vec::new();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().canonicalize().unwrap();
    // Host root for policy files and sysfs: empty, so the default contexts apply.
    let root = tempfile::tempdir().unwrap();
    let files = std::fs::read_to_string(case_dir.join("files.txt")).unwrap_or_default();
    let built = common::build_files(&dir, &files);
    let before = common::snapshot(&built.objects);
    let xml = std::fs::read_to_string(case_dir.join("domain.xml"))
        .unwrap()
        .replace("@DIR@", dir.to_str().unwrap());
    let host = Host::new(root.path());
    let cfg = PlanConfig::for_host(&host).unwrap();
    let result = plan_xml(&xml, &host, &cfg);
    let after = common::snapshot(&built.objects);
    if before != after {
        failures.push(format!(
            "objects changed by planning:\n{before:?}\n{after:?}"
        ));
    }

    if let Ok(word) = std::fs::read_to_string(case_dir.join("expected-error.txt")) {
        let word = word.lines().next().unwrap_or("").trim().to_lowercase();
        match result {
            Ok(p) => failures.push(format!(
                "expected an error containing '{word}', got a plan of {} resources",
                p.plan.resources.len()
            )),
            Err(e) => {
                let msg = e.to_string();
                if !msg.to_lowercase().contains(&word) {
                    failures.push(format!("error '{msg}' does not contain '{word}'"));
                }
            }
        }
        return Outcome { case, failures };
    }

    let planned = match result {
        Ok(p) => p,
        Err(e) => {
            failures.push(format!("planning failed: {e}"));
            return Outcome { case, failures };
        }
    };
    let plan = &planned.plan;

    // Each path once, all absolute.
    let mut seen = HashSet::new();
    for r in &plan.resources {
        if !r.resource.path.is_absolute() {
            failures.push(format!("relative path {}", r.resource.path.display()));
        }
        if !seen.insert(r.resource.path.clone()) {
            failures.push(format!("{} planned twice", r.resource.path.display()));
        }
    }

    // Everything a recursive tree reaches, without following symlinks.
    let mut tree_ids: HashSet<(u64, u64)> = HashSet::new();
    for r in plan.resources.iter().filter(|r| r.resource.recursive) {
        let res = host.resolve("test", &r.resource.path).unwrap();
        tree_ids.insert((res.info.dev, res.info.ino));
        for e in host.walk_tree("test", &res).unwrap() {
            tree_ids.insert((e.info.dev, e.info.ino));
        }
    }

    let expected = std::fs::read_to_string(case_dir.join("expected.tsv")).unwrap();
    let level = allocated();
    for line in expected.lines().filter(|l| !l.trim().is_empty()) {
        let f: Vec<&str> = line.split('\t').collect();
        if f.len() != 3 {
            failures.push(format!("bad expected.tsv line {line:?}"));
            continue;
        }
        let (name, want_label, want_access) = (f[0], f[1], f[2]);
        let abs = dir.join(name);
        // The resource itself, or the recursive tree that holds it.
        let own = plan.resources.iter().find(|r| r.resource.path == abs);
        let holder = own.or_else(|| {
            plan.resources
                .iter()
                .find(|r| r.resource.recursive && abs.starts_with(&r.resource.path))
        });
        let id = std::fs::symlink_metadata(&abs)
            .map(|m| (m.dev(), m.ino()))
            .ok();

        if want_access == "-" {
            if let Some(r) = holder {
                failures.push(format!(
                    "{name}: must get no access, but is planned via {}",
                    r.resource.path.display()
                ));
            }
            if id.is_some_and(|i| tree_ids.contains(&i)) {
                failures.push(format!("{name}: reached by a tree walk"));
            }
            if plan.resources.iter().any(|r| {
                std::fs::symlink_metadata(&r.resource.path)
                    .is_ok_and(|m| Some((m.dev(), m.ino())) == id)
            }) {
                failures.push(format!("{name}: planned under another path"));
            }
        } else if want_access != "*" {
            match holder {
                None => failures.push(format!(
                    "{name}: expected {want_access} access, not planned"
                )),
                Some(r) => {
                    let got = match r.resource.access {
                        Access::Rw => "rw",
                        Access::Ro => "ro",
                    };
                    if got != want_access {
                        failures.push(format!("{name}: access {got}, expected {want_access}"));
                    }
                }
            }
        }

        if want_label == "*" {
            continue;
        }
        let got_template = holder.and_then(|r| r.selinux.as_ref());
        let got_text = got_template.map(|t| {
            t.display(match plan.level {
                LevelSource::Static(ref r) => Some(r),
                _ => None,
            })
        });
        if want_label == "-" {
            if let Some(t) = got_text {
                failures.push(format!("{name}: expected untouched, planned {t}"));
            }
            continue;
        }
        match (got_text, got_template) {
            (Some(t), Some(tpl)) => {
                if t != want_label {
                    failures.push(format!("{name}: label {t}, expected {want_label}"));
                }
                // Once a level is allocated, every @LEVEL@ is that one level.
                let resolved = tpl.resolve(&level).to_string();
                let want_resolved = want_label.replace(LEVEL_PLACEHOLDER, &level.to_string());
                if resolved != want_resolved {
                    failures.push(format!(
                        "{name}: resolved {resolved}, expected {want_resolved}"
                    ));
                }
            }
            _ => failures.push(format!("{name}: untouched, expected {want_label}")),
        }
        // The JSON report says the same.
        let rep = report(plan, &Model::ALL, &[]);
        let holder_path = holder.map(|h| h.resource.path.clone()).unwrap_or_default();
        match rep
            .resources
            .iter()
            .find(|x| Path::new(&x.path) == holder_path)
        {
            Some(rr)
                if rr.labels.get("selinux").cloned().flatten().as_deref() == Some(want_label) => {}
            rr => failures.push(format!(
                "{name}: JSON label {:?}, expected {want_label}",
                rr.map(|r| r.labels.get("selinux"))
            )),
        }
    }
    if let Ok(want) = std::fs::read_to_string(case_dir.join("expected-process.txt")) {
        let want = want.trim();
        match &plan.selinux_process {
            ProcessLabel::Label(t) => {
                let got = t.display(match plan.level {
                    LevelSource::Static(ref r) => Some(r),
                    _ => None,
                });
                if got != want {
                    failures.push(format!("process {got}, expected {want}"));
                }
                let resolved = t.resolve(&level).to_string();
                if resolved != want.replace(LEVEL_PLACEHOLDER, &level.to_string()) {
                    failures.push(format!("process resolves to {resolved}"));
                }
            }
            ProcessLabel::Unconfined => {
                failures.push(format!("process unconfined, expected {want}"))
            }
        }
    }
    // @LEVEL@ appears iff the level is dynamic, and the allocated level is a pair A < B.
    let rep = report(plan, &Model::ALL, &[]);
    let json_text = format!("{rep:?}");
    let dynamic = plan.level == LevelSource::Dynamic;
    if json_text.contains(LEVEL_PLACEHOLDER) != dynamic {
        failures.push(format!(
            "placeholder present: {}, dynamic: {dynamic}",
            json_text.contains(LEVEL_PLACEHOLDER)
        ));
    }
    assert_eq!(level.to_string(), "s0:c41,c264");
    drop(built);
    Outcome { case, failures }
}

#[test]
fn every_conformance_case() {
    common::qemu_img();
    let mut cases: Vec<PathBuf> = std::fs::read_dir(corpus())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.join("domain.xml").is_file())
        .collect();
    cases.sort();
    assert!(cases.len() >= 14, "only {} cases found", cases.len());
    let mut bad = Vec::new();
    for c in &cases {
        let o = run_case(c);
        if o.failures.is_empty() {
            eprintln!("conformance {}: ok", o.case);
        } else {
            eprintln!(
                "conformance {}: FAILED\n  {}",
                o.case,
                o.failures.join("\n  ")
            );
            bad.push(o.case);
        }
    }
    eprintln!("conformance: {} cases, {} failed", cases.len(), bad.len());
    assert!(bad.is_empty(), "failed cases: {bad:?}");
}
