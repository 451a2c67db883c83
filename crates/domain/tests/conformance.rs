//! Runs every case of `shared/conformance/` through the planner, as its README says:
//! build `files.txt` in a fresh temp dir, substitute `@DIR@`, plan, and check labels,
//! access, process label and errors. No case is skipped.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use svirt_domain::*;
use svirt_labels::{Level, MlsRange};
use svirt_testkit::corpus;

fn corpus() -> PathBuf {
    corpus::locate(
        "SVIRT_CONFORMANCE_DIR",
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/conformance"),
        "conformance corpus",
    )
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

    if let Some(word) = corpus::expected_error_word(case_dir) {
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
    let roots: Vec<&Path> = plan
        .resources
        .iter()
        .filter(|r| r.resource.recursive)
        .map(|r| r.resource.path.as_path())
        .collect();
    let trees = corpus::tree_ids(&roots);

    let level = allocated();
    let shown = match plan.level {
        LevelSource::Static(ref r) => Some(r),
        _ => None,
    };
    let planned: Vec<corpus::PlannedObject> = plan
        .resources
        .iter()
        .map(|r| corpus::PlannedObject {
            path: r.resource.path.clone(),
            recursive: r.resource.recursive,
            access: match r.resource.access {
                Access::Rw => "rw",
                Access::Ro => "ro",
            }
            .into(),
            label: r.selinux.as_ref().map(|t| t.display(shown)),
            label_resolved: r.selinux.as_ref().map(|t| t.resolve(&level).to_string()),
            restore: r.selinux_restore,
        })
        .collect();
    let text = std::fs::read_to_string(case_dir.join("expected.tsv")).unwrap();
    let expected = match corpus::parse_expected(&text) {
        Ok(e) => e,
        Err(e) => {
            failures.push(e);
            return Outcome { case, failures };
        }
    };
    let (mut found, checked) =
        corpus::check_expected(&dir, &expected, &planned, &trees, &level.to_string());
    failures.append(&mut found);
    // The JSON report says the same.
    let rep = report(plan, &Model::ALL, &[]);
    for c in checked
        .iter()
        .filter(|c| !["*", "-"].contains(&c.expected.label.as_str()))
    {
        let holder_path = c
            .holder
            .map(|h| planned[h].path.clone())
            .unwrap_or_default();
        let want = c.expected.label.as_str();
        match rep
            .resources
            .iter()
            .find(|x| Path::new(&x.path) == holder_path)
        {
            Some(rr) if rr.labels.get("selinux").cloned().flatten().as_deref() == Some(want) => {}
            rr => failures.push(format!(
                "{}: JSON label {:?}, expected {want}",
                c.expected.name,
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
