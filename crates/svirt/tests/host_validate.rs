//! `svirt host-validate --json`: the documented shape (docs/cli.md), and the text form's
//! one line per check, on this real host.

use std::process::Command;

#[test]
fn json_shape_and_text_lines_agree() {
    let dir = tempfile::tempdir().expect("tempdir");
    let bin = env!("CARGO_BIN_EXE_svirt");
    let images = dir.path().to_str().expect("utf8");
    let out = Command::new(bin)
        .args(["host-validate", "--json", "--images", images])
        .output()
        .expect("run");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    let checks = v["checks"].as_array().expect("checks array");
    let components: Vec<&str> = checks
        .iter()
        .filter_map(|c| c["component"].as_str())
        .collect();
    for want in [
        "QEMU", "KVM", "LSM", "SELinux", "Landlock", "BPF-LSM", "cgroup", "DAC", "xattr",
    ] {
        assert!(components.contains(&want), "no {want} check in {v}");
    }
    let mut failed = false;
    for c in checks {
        let mut keys: Vec<&str> = c
            .as_object()
            .expect("object")
            .keys()
            .map(String::as_str)
            .collect();
        keys.sort();
        assert_eq!(keys, ["check", "component", "reason", "status"], "{c}");
        let status = c["status"].as_str().expect("status");
        assert!(["PASS", "WARN", "FAIL"].contains(&status), "{c}");
        assert!(!c["reason"].as_str().expect("reason").is_empty(), "{c}");
        failed |= status == "FAIL";
    }
    assert_eq!(
        out.status.code(),
        Some(if failed { 1 } else { 0 }),
        "exit status must say whether a check failed"
    );
    // The xattr check ran where it was told to, and cleaned up after itself.
    assert!(
        checks.iter().any(|c| c["component"] == "xattr"
            && c["check"].as_str().is_some_and(|s| s.contains(images)))
    );
    assert_eq!(
        std::fs::read_dir(dir.path()).expect("readdir").count(),
        0,
        "host-validate left a file behind"
    );

    let text = Command::new(bin)
        .args(["host-validate", "--images", images])
        .output()
        .expect("run");
    let text = String::from_utf8_lossy(&text.stdout);
    assert_eq!(text.lines().count(), checks.len(), "{text}");
    for l in text.lines() {
        assert!(
            l.contains(" : PASS (") || l.contains(" : WARN (") || l.contains(" : FAIL ("),
            "{l}"
        );
    }
    // Landlock is known to work on this kind of host: the probe must find it when the kernel has it.
    if std::path::Path::new("/sys/kernel/security/lsm").exists()
        && std::fs::read_to_string("/sys/kernel/security/lsm").is_ok_and(|l| l.contains("landlock"))
    {
        assert!(
            text.contains("Landlock: ABI")
                && text
                    .lines()
                    .any(|l| l.starts_with("Landlock") && l.contains("PASS")),
            "{text}"
        );
    }
}
