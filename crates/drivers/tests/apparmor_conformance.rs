//! Every conformance case's AppArmor profile: generated from its plan, compiled by the real
//! `apparmor_parser` against Debian's pinned kernel feature set (without loading it: this
//! kernel has no AppArmor), and its rules checked against the plan, independently of the
//! generator: every resource present with exactly its access, nothing else writable.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod selinux_support;

use std::path::{Path, PathBuf};
use std::process::Command;

use selinux_support::{build_files, corpus, plan_case};
use svirt_domain::{Access, Host, PlanConfig, plan_xml};
use svirt_drivers::ExecContext;
use svirt_drivers::apparmor::profile::{Perms, generate, profile_name};
use svirt_drivers::vmm_needs::VmmNeeds;

/// Debian's pinned feature set (package `apparmor`): what Debian's kernels offer.
const FEATURES: &str = "/usr/share/apparmor-features/features";

/// `apparmor_parser` compiles `text` (skipping the kernel and the cache); its stderr on
/// failure.
fn compile(text: &str, dir: &Path) -> Result<(), String> {
    let file = dir.join("profile");
    std::fs::write(&file, text).unwrap();
    let out = Command::new("apparmor_parser")
        .args([
            "--skip-kernel-load",
            "--skip-cache",
            "--features-file",
            FEATURES,
        ])
        .arg(&file)
        .output()
        .expect("run apparmor_parser");
    if out.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

fn parser_present() -> bool {
    let ok = Command::new("apparmor_parser")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
        && Path::new(FEATURES).is_file();
    if !ok {
        svirt_testkit::skip(
            "apparmor_parser",
            format!("apparmor_parser or {FEATURES} missing (apt-get install apparmor)"),
        );
    }
    ok
}

/// The profile's file rules as written: (path, letters), quoting and escapes undone.
fn written_rules(text: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for line in text.lines().map(str::trim) {
        let Some(rest) = line.strip_prefix('"') else {
            continue;
        };
        let mut path = String::new();
        let mut chars = rest.chars();
        let mut closed = false;
        while let Some(c) = chars.next() {
            match c {
                '\\' => path.push(chars.next().unwrap()),
                '"' => {
                    closed = true;
                    break;
                }
                c => path.push(c),
            }
        }
        assert!(closed, "unterminated path in {line:?}");
        let rest: String = chars.collect();
        let letters = rest.trim().split(',').next().unwrap().trim().to_string();
        out.push((path, letters));
    }
    out
}

fn run_case(case_dir: &Path) -> Option<usize> {
    let case = case_dir.file_name().unwrap().to_str().unwrap().to_string();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().canonicalize().unwrap();
    let (_built, plan) = plan_case(case_dir, &dir, None);
    let plan = plan?;
    let runtime = dir.join("run");
    let log = dir.join("ctl/qemu.log");
    let exec = ExecContext {
        emulator: "/usr/bin/qemu-system-x86_64".into(),
        runtime_dir: runtime.clone(),
        devices: vec!["/dev/kvm".into()],
        tcp_ports: vec![],
        inherited: vec![],
        procfs: None,
    };
    let needs = VmmNeeds::default();
    let profile = generate(&plan, &exec, &[(log.clone(), Perms::Append)], &needs)
        .unwrap_or_else(|e| panic!("{case}: {e}"));
    assert_eq!(profile.name, profile_name(&plan));
    assert!(
        profile
            .text
            .contains(&format!("profile svirt-{} ", plan.uuid.to_lowercase())),
        "{case}: profile name"
    );
    if std::env::var_os("SVIRT_SHOW_PROFILE").is_some() {
        eprintln!("{}", profile.text);
    }
    compile(&profile.text, &dir)
        .unwrap_or_else(|e| panic!("{case}: apparmor_parser refused:\n{e}\n{}", profile.text));

    // Independently of the generator: what the plan and the exec context say.
    let rules = written_rules(&profile.text);
    let letters_of = |p: &str| -> Vec<&str> {
        rules
            .iter()
            .filter(|(q, _)| q == p)
            .map(|(_, l)| l.as_str())
            .collect()
    };
    let s = |p: &Path| p.to_str().unwrap().to_string();
    for pr in &plan.resources {
        let want = match pr.path_access {
            Access::Rw => "rwk",
            Access::Ro => "rk",
        };
        let p = s(&pr.resource.path);
        let (key, what) = if pr.resource.recursive {
            (format!("{}/**", p.trim_end_matches('/')), "tree")
        } else {
            (p.clone(), "object")
        };
        assert_eq!(
            letters_of(&key),
            vec![want],
            "{case}: {what} {p} ({}) must be granted exactly {want}",
            pr.resource.device
        );
    }
    // Nothing else writable: each writable rule is a read-write resource, the runtime
    // directory, a device the manager gives, a base device, or the manager's log.
    let mut writable: Vec<String> = plan
        .resources
        .iter()
        .filter(|pr| pr.path_access == Access::Rw)
        .flat_map(|pr| {
            let p = s(&pr.resource.path);
            [
                format!("{}/**", p.trim_end_matches('/')),
                format!("{}/", p.trim_end_matches('/')),
                p,
            ]
        })
        .collect();
    writable.push(format!("{}/", s(&runtime)));
    writable.push(format!("{}/**", s(&runtime)));
    writable.push(s(&log));
    writable.extend(exec.devices.iter().map(|d| s(d)));
    writable.extend(needs.base_devices.iter().map(|d| s(d)));
    for (p, l) in &rules {
        if l.contains('w') || l.contains('a') {
            assert!(
                writable.contains(p),
                "{case}: {p} is writable ({l}) but the plan does not make it so"
            );
        }
    }
    // Nothing beyond the plan: no other rule names a path under the case's directory.
    for (p, _) in &rules {
        if let Ok(rel) = Path::new(p).strip_prefix(&dir) {
            let known = plan
                .resources
                .iter()
                .any(|pr| Path::new(p).starts_with(&pr.resource.path))
                || Path::new(p).starts_with(&runtime)
                || Path::new(p) == log;
            assert!(known, "{case}: rule for {} outside the plan", rel.display());
        }
    }
    Some(plan.resources.len())
}

#[test]
fn every_conformance_case_has_a_profile_apparmor_parser_compiles() {
    if !parser_present() {
        return;
    }
    // The control: the same compiler refuses a broken profile (an unknown permission),
    // so a compile step that accepted anything would fail here.
    let tmp = tempfile::tempdir().unwrap();
    let broken = "abi <abi/3.0>,\nprofile svirt-broken {\n  \"/x\" rwz,\n}\n";
    assert!(
        compile(broken, tmp.path()).is_err(),
        "apparmor_parser accepted an unknown permission"
    );
    let mut cases = 0;
    let mut profiles = 0;
    let mut entries: Vec<PathBuf> = std::fs::read_dir(corpus())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.join("domain.xml").is_file())
        .collect();
    entries.sort();
    for case in &entries {
        cases += 1;
        if let Some(n) = run_case(case) {
            profiles += 1;
            eprintln!(
                "{}: profile compiled, {n} resources checked",
                case.display()
            );
        }
    }
    assert!(
        cases >= 9,
        "the corpus has {cases} cases; it must run whole"
    );
    assert!(profiles >= 5, "only {profiles} profiles generated");
}

/// The profile's header names the guest exactly as the manager names guests (recovery
/// reads it back to decide whose profile a file is): a name with `+` is written whole; a
/// name that could not be read back exactly is refused, never written altered.
#[test]
fn the_header_names_the_guest_exactly_or_not_at_all() {
    let case = corpus().join("dynamic");
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().canonicalize().unwrap();
    let _built = build_files(
        &dir,
        &std::fs::read_to_string(case.join("files.txt")).unwrap(),
    );
    let xml = std::fs::read_to_string(case.join("domain.xml"))
        .unwrap()
        .replace("@DIR@", dir.to_str().unwrap());
    let host = Host::new("/");
    let mut plan = plan_xml(&xml, &host, &PlanConfig::for_host(&host).unwrap())
        .unwrap()
        .plan;
    let exec = ExecContext {
        emulator: "/usr/bin/qemu-system-x86_64".into(),
        runtime_dir: dir.join("run"),
        devices: vec![],
        tcp_ports: vec![],
        inherited: vec![],
        procfs: None,
    };
    plan.name = "web-1.example+blue".into();
    let p = generate(&plan, &exec, &[], &VmmNeeds::default()).unwrap();
    assert!(
        p.text.lines().nth(1) == Some("# svirt-guest: web-1.example+blue"),
        "{}",
        p.text
    );
    for bad in ["a b", "x#include <y>", "tab\there", ""] {
        plan.name = bad.into();
        let e = generate(&plan, &exec, &[], &VmmNeeds::default()).unwrap_err();
        assert!(e.to_string().contains("guest name"), "{bad:?}: {e}");
    }
}
