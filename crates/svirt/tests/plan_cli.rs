//! `svirt plan` as a user runs it: text and JSON output, exit 2 with one line on refusal.

use std::process::{Command, Output};

fn svirt(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_svirt"))
        .args(args)
        .output()
        .expect("run svirt")
}

fn domain(dir: &std::path::Path, devices: &str) -> std::path::PathBuf {
    let xml = format!(
        "<domain type='kvm'><name>cli</name><memory unit='MiB'>64</memory><os><type>hvm</type></os>\
         <seclabel type='dynamic' model='selinux'/><devices>{devices}</devices></domain>"
    );
    let p = dir.join("d.xml");
    std::fs::write(&p, xml).expect("write domain");
    p
}

#[test]
fn plan_json_and_text() {
    let t = tempfile::tempdir().expect("tempdir");
    let dir = t.path().canonicalize().expect("canonicalize");
    std::fs::write(dir.join("a.img"), b"x").expect("write");
    std::fs::write(dir.join("b.iso"), b"x").expect("write");
    let d = domain(
        &dir,
        &format!(
            "<disk type='file'><source file='{0}/a.img'/><target dev='vda'/></disk>\
             <disk type='file' device='cdrom'><source file='{0}/b.iso'/><target dev='sda'/></disk>\
             <graphics type='vnc'><listen type='socket'/></graphics>",
            dir.display()
        ),
    );
    let root = tempfile::tempdir().expect("tempdir");
    let args = [
        "plan",
        d.to_str().expect("utf8"),
        "--json",
        "--root",
        root.path().to_str().expect("utf8"),
    ];
    let o = svirt(&args);
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("valid JSON");
    assert_eq!(v["process"]["selinux"], "system_u:system_r:svirt_t:@LEVEL@");
    assert_eq!(
        v["resources"][0]["path"],
        dir.join("a.img").to_str().expect("utf8")
    );
    assert_eq!(v["resources"][0]["access"], "rw");
    assert_eq!(
        v["resources"][0]["labels"]["selinux"],
        "system_u:object_r:svirt_image_t:@LEVEL@"
    );
    assert_eq!(
        v["resources"][1]["labels"]["selinux"],
        "system_u:object_r:virt_content_t:s0"
    );
    assert_eq!(v["resources"][1]["access"], "ro");
    // The empty root has no SELinux: planned anyway, listed as unable to run.
    assert!(
        v["cannot_run"]
            .as_array()
            .expect("array")
            .iter()
            .any(|m| m == "selinux")
    );
    // VNC on a socket in the runtime directory is a device svirt runs: no warning.
    assert_eq!(v["warnings"], serde_json::json!([]), "{v}");
    let o = svirt(&args[..2]);
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(text.contains("a.img  [disk-image rw private]"), "{text}");
    assert!(text.contains("virt_content_t:s0  -- read-only"), "{text}");
}

#[test]
fn refusals_exit_2_with_one_line() {
    let t = tempfile::tempdir().expect("tempdir");
    let dir = t.path().canonicalize().expect("canonicalize");
    std::os::unix::fs::symlink("/etc/shadow", dir.join("s")).expect("symlink");
    for (devices, word) in [
        (
            format!(
                "<disk type='file'><source file='{}/s'/><target dev='vda'/></disk>",
                dir.display()
            ),
            "/etc/shadow",
        ),
        (
            format!(
                "<disk type='file'><source file='{}/none'/><target dev='vda'/></disk>",
                dir.display()
            ),
            "ENOENT",
        ),
    ] {
        let d = domain(&dir, &devices);
        let o = svirt(&["plan", d.to_str().expect("utf8")]);
        assert_eq!(o.status.code(), Some(2));
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(err.starts_with("svirt: ") && err.contains(word), "{err}");
        assert!(o.stdout.is_empty());
    }
    let o = svirt(&["plan", "/nonexistent/d.xml"]);
    assert_eq!(o.status.code(), Some(2));
}
