//! `svirt label …` as a user runs it: output, exit codes, one-line errors.

use std::process::{Command, Output};

fn svirt(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_svirt"))
        .args(args)
        .output()
        .expect("run svirt")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).trim_end().to_owned()
}

#[test]
fn canon_prints_the_kernel_form() {
    let o = svirt(&["label", "canon", "system_u:system_r:svirt_t:s0:c264,c41"]);
    assert_eq!(o.status.code(), Some(0));
    assert_eq!(stdout(&o), "system_u:system_r:svirt_t:s0:c41,c264");
    let o = svirt(&["label", "canon", "u:r:t:s0-s0:c3,c1,c2,c2,c7,c8"]);
    assert_eq!(stdout(&o), "u:r:t:s0-s0:c1.c3,c7,c8");
    let o = svirt(&["label", "canon", "s0:c5,c4,c3"]);
    assert_eq!(stdout(&o), "s0:c3.c5");
}

#[test]
fn canon_rejects_bad_input_with_exit_2_and_one_line() {
    let o = svirt(&["label", "canon", "system_u:system_r:svirt_t:s0:c1,c2000"]);
    assert_eq!(o.status.code(), Some(2));
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains("c2000") && err.contains("character 33"),
        "{err}"
    );
    assert!(o.stdout.is_empty());
}

#[test]
fn dominates_exit_codes() {
    assert_eq!(
        svirt(&["label", "dominates", "s0:c1,c2", "s0:c1"])
            .status
            .code(),
        Some(0)
    );
    assert_eq!(
        svirt(&["label", "dominates", "s0:c1,c2", "s0:c1,c2"])
            .status
            .code(),
        Some(0)
    );
    assert_eq!(
        svirt(&["label", "dominates", "s0:c1", "s0:c1,c2"])
            .status
            .code(),
        Some(1)
    );
    assert_eq!(
        svirt(&["label", "dominates", "s0:c1,c2", "s0:c3,c4"])
            .status
            .code(),
        Some(1)
    );
    assert_eq!(
        svirt(&[
            "label",
            "dominates",
            "system_u:system_r:svirt_t:s0:c1,c2",
            "s0"
        ])
        .status
        .code(),
        Some(0)
    );
    assert_eq!(
        svirt(&["label", "dominates", "s0:c9.c1", "s0"])
            .status
            .code(),
        Some(2)
    );
}

#[test]
fn translate_both_ways_and_list() {
    let dir = std::env::temp_dir().join(format!("svirt-setrans-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("setrans.conf");
    std::fs::write(
        &file,
        "# test table\ns0=SystemLow\ns0-s0:c0.c1023=SystemLow-SystemHigh\ns0:c0.c1023=SystemHigh\ns0:c0=CompanyConfidential\n",
    )
    .unwrap();
    let f = file.to_str().unwrap();
    assert_eq!(
        stdout(&svirt(&["label", "translate", "--setrans", f, "s0:c0"])),
        "CompanyConfidential"
    );
    assert_eq!(
        stdout(&svirt(&[
            "label",
            "translate",
            "--setrans",
            f,
            "CompanyConfidential"
        ])),
        "s0:c0"
    );
    assert_eq!(
        stdout(&svirt(&[
            "label",
            "translate",
            "--setrans",
            f,
            "SystemLow-SystemHigh"
        ])),
        "s0-s0:c0.c1023"
    );
    assert_eq!(
        stdout(&svirt(&["label", "translate", "--setrans", f, "s0-s0:c0"])),
        "SystemLow-CompanyConfidential"
    );
    let list = stdout(&svirt(&["label", "translate", "--setrans", f, "--list"]));
    assert_eq!(list.lines().count(), 4);
    assert!(
        list.lines()
            .any(|l| l.starts_with("s0:c0 ") && l.ends_with("CompanyConfidential"))
    );
    let o = svirt(&["label", "translate", "--setrans", f, "NoSuchName"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("NoSuchName"));
    let o = svirt(&[
        "label",
        "translate",
        "--setrans",
        "/nonexistent/setrans.conf",
        "s0",
    ]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("/nonexistent/setrans.conf"));
    std::fs::remove_dir_all(&dir).unwrap();
}
