//! `svirt explain` over every row of the reference's "observed under a real enforcing
//! kernel" table, through the binary as a user runs it, plus `--batch`, `--avc` and
//! `svirt denials`.

use std::io::Write;
use std::process::{Command, Output, Stdio};

const G1: &str = "system_u:system_r:svirt_t:s0:c1,c2";
const G2: &str = "system_u:system_r:svirt_t:s0:c3,c4";

fn svirt(args: &[&str], stdin: Option<&str>) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_svirt"))
        .args(args)
        // No svirtd in these tests: point the guest-name lookup at nothing.
        .env("SVIRT_SOCKET", "unix:/nonexistent/svirtd.sock")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run svirt");
    let mut pipe = child.stdin.take().expect("stdin");
    pipe.write_all(stdin.unwrap_or("").as_bytes())
        .expect("write stdin");
    drop(pipe);
    child.wait_with_output().expect("wait svirt")
}

fn verdict(s: &str, t: &str, class: &str, perms: &[&str], bools: &[&str]) -> (i32, String) {
    let mut args = vec!["explain", s, t, class];
    args.extend_from_slice(perms);
    for b in bools {
        args.extend_from_slice(&["--bool", b]);
    }
    let o = svirt(&args, None);
    (
        o.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&o.stdout).into_owned(),
    )
}

#[test]
fn reference_table_rows() {
    let img = |lvl: &str| format!("system_u:object_r:svirt_image_t:{lvl}");
    let rows: Vec<(String, String, &str, Vec<&str>, i32)> = vec![
        (G1.into(), img("s0:c1,c2"), "file", vec!["read", "write"], 0),
        (G1.into(), img("s0:c3,c4"), "file", vec!["read"], 1),
        (G1.into(), img("s0:c3,c4"), "file", vec!["write"], 1),
        (G1.into(), img("s0:c3,c4"), "file", vec!["getattr"], 0),
        (G1.into(), img("s0"), "file", vec!["read", "write"], 0),
        (
            G1.into(),
            "system_u:object_r:virt_content_t:s0".into(),
            "file",
            vec!["read"],
            0,
        ),
        (
            G1.into(),
            "system_u:object_r:virt_content_t:s0".into(),
            "file",
            vec!["write"],
            1,
        ),
        (
            G1.into(),
            "unconfined_u:object_r:user_home_t:s0".into(),
            "file",
            vec!["read"],
            1,
        ),
        (
            G1.into(),
            "system_u:object_r:nfs_t:s0".into(),
            "file",
            vec!["read"],
            1,
        ),
        (G1.into(), G2.into(), "process", vec!["signal"], 1),
        (G1.into(), G1.into(), "process", vec!["signal"], 0),
        (G1.into(), G2.into(), "process", vec!["signull"], 0),
        (G1.into(), G2.into(), "process", vec!["ptrace"], 1),
    ];
    for (s, t, class, perms, want) in rows {
        let (code, out) = verdict(&s, &t, class, &perms, &[]);
        assert_eq!(code, want, "{s} -> {t} {class} {perms:?}: {out}");
        assert!(
            out.starts_with(if want == 0 { "allow" } else { "deny" }),
            "{out}"
        );
    }
}

#[test]
fn denials_name_the_reason_and_the_fix() {
    let (code, out) = verdict(
        G1,
        "system_u:object_r:svirt_image_t:s0:c3,c4",
        "file",
        &["read"],
        &[],
    );
    assert_eq!(code, 1);
    assert!(out.contains("h1 dom h2"), "{out}");
    let (code, out) = verdict(G1, "system_u:object_r:nfs_t:s0", "file", &["read"], &[]);
    assert_eq!(code, 1);
    assert!(out.contains("virt_use_nfs=on would allow it"), "{out}");
    let (code, _) = verdict(
        G1,
        "system_u:object_r:nfs_t:s0",
        "file",
        &["read"],
        &["virt_use_nfs=on"],
    );
    assert_eq!(code, 0);
    let (code, out) = verdict(
        G1,
        "system_u:object_r:svirt_custom_image_t:s0",
        "file",
        &["read"],
        &[],
    );
    assert_eq!(
        code, 2,
        "a type the model does not know is not guessed: {out}"
    );
}

#[test]
fn batch_mode() {
    let input = format!(
        "{G1}\tsystem_u:object_r:svirt_image_t:s0:c3,c4\tfile\tread,write\n\
         {G1}\tsystem_u:object_r:svirt_image_t:s0:c1,c2\tfile\tread,write\n\
         {G1}\tsystem_u:object_r:nfs_t:s0\tfile\tread\tvirt_use_nfs=on\n"
    );
    let o = svirt(&["explain", "--batch"], Some(&input));
    assert_eq!(o.status.code(), Some(0));
    let out = String::from_utf8_lossy(&o.stdout);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 3, "{out}");
    assert!(lines[0].starts_with("deny\t"), "{out}");
    assert_eq!(lines[1], "allow");
    assert_eq!(lines[2], "allow");
}

const AVC: &str = "[  12.345678] audit: type=1400 audit(1700000000.123:42): avc:  denied  { read } for  pid=321 comm=\"svirt-probe\" name=\"b.img\" dev=\"tmpfs\" ino=17 scontext=system_u:system_r:svirt_t:s0:c1,c2 tcontext=system_u:object_r:svirt_image_t:s0:c3,c4 tclass=file permissive=0";

#[test]
fn avc_records_are_explained_and_grouped_per_guest() {
    let o = svirt(&["explain", "--avc", AVC], None);
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        out.contains("guest at s0:c1,c2") && out.contains("deny"),
        "{out}"
    );

    let log = format!("unrelated line\n{AVC}\n");
    let o = svirt(&["denials", "--from", "-"], Some(&log));
    assert_eq!(o.status.code(), Some(0));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("guest at s0:c1,c2: 1 denial(s)"), "{out}");
    assert!(
        out.contains("[guest at s0:c3,c4]") && out.contains("name=b.img"),
        "{out}"
    );

    let o = svirt(&["explain", "--avc", "not an avc line"], None);
    assert_eq!(o.status.code(), Some(2));
}

/// AppArmor's records go to the guest whose profile (`svirt-<uuid>`) they name, a signal
/// to another guest's profile names that guest too; an unconfined program's denial is
/// "(not a guest)", an ALLOWED record is not a denial, and AVCs in the same log still count.
#[test]
fn denials_attribute_apparmor_records_to_guests_by_profile() {
    const A: &str = "svirt-2f3c1d0e-5a8b-4c7d-9e0f-1a2b3c4d5e6f";
    const B: &str = "svirt-4b5c6d7e-8f90-4a1b-9c2d-3e4f5a6b7c8d";
    let log = format!(
        "[ 12.3] audit: type=1400 audit(1.1:1): apparmor=\"DENIED\" operation=\"open\" class=\"file\" profile=\"{A}\" name=\"/var/lib/svirt/b.img\" pid=81 comm=\"qemu-system-x86\" requested_mask=\"wr\" denied_mask=\"wr\" fsuid=0 ouid=0\n\
         [ 12.4] audit: type=1400 audit(1.1:2): apparmor=\"DENIED\" operation=\"signal\" class=\"signal\" profile=\"{A}\" pid=81 comm=\"qemu-system-x86\" requested_mask=\"send\" denied_mask=\"send\" signal=kill peer=\"{B}\"\n\
         [ 12.5] audit: type=1400 audit(1.1:3): apparmor=\"ALLOWED\" operation=\"open\" profile=\"{B}\" name=\"/x\" pid=82 comm=\"q\" requested_mask=\"r\" denied_mask=\"r\"\n\
         [ 12.6] audit: type=1400 audit(1.1:4): apparmor=\"DENIED\" operation=\"open\" profile=\"/usr/sbin/cupsd\" name=2F746D702F6120622E696D67 pid=5 comm=\"cupsd\" requested_mask=\"r\" denied_mask=\"r\"\n\
         {AVC}\n"
    );
    let o = svirt(&["denials", "--from", "-"], Some(&log));
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        out.contains(&format!("guest {A}: 2 AppArmor denial(s)")),
        "{out}"
    );
    assert!(
        out.contains("{ wr } open") && out.contains("name=/var/lib/svirt/b.img"),
        "{out}"
    );
    assert!(
        out.contains(&format!("peer={B} [guest {B}]")),
        "the signal's target guest: {out}"
    );
    assert!(
        out.contains("(not a guest): 1 AppArmor denial(s)") && out.contains("name=/tmp/a b.img"),
        "{out}"
    );
    assert!(
        !out.contains("name=/x"),
        "an ALLOWED record is no denial: {out}"
    );
    assert!(out.contains("guest at s0:c1,c2: 1 denial(s)"), "{out}");

    // Control: a log without denials says so.
    let o = svirt(&["denials", "--from", "-"], Some("nothing here\n"));
    assert!(
        String::from_utf8_lossy(&o.stdout)
            .contains("no AVC, AppArmor, BPF-LSM or SMACK denials found")
    );
}

/// SMACK's audit records (as the lab's SMACK kernel writes them) are listed under the
/// subject's guest, with the object's guest, its name or path, and no ptrace `opid` (the
/// tracer's own); a granted record is no denial.
#[test]
fn denials_attribute_smack_records_to_guests_by_label() {
    let log = concat!(
        r#"[ 12.3] audit: type=1400 audit(1.1:4): lsm=SMACK fn=smack_inode_permission action=denied subject="svirt-c1-c2" object="svirt-c3-c4" requested=r pid=190 comm="qemu-system-x86" name="B.img" dev="tmpfs" ino=13"#,
        "\n",
        r#"audit: type=1400 audit(1.1:5): lsm=SMACK fn=smack_inode_getattr action=denied subject="svirt-c1-c2" object="svirt-c3-c4" requested=r pid=190 comm="qemu-system-x86" path="/lab/img/B.img" dev="tmpfs" ino=13"#,
        "\n",
        r#"audit: type=1400 audit(1.1:6): lsm=SMACK fn=smack_ptrace_access_check action=denied subject="svirt-c1-c2" object="svirt-c3-c4" requested=rw pid=190 comm="qemu-system-x86" opid=190 ocomm="qemu-system-x86""#,
        "\n",
        r#"audit: type=1400 audit(1.1:7): lsm=SMACK fn=smack_inode_permission action=denied subject="svirt-c3-c4" object="svirt-content" requested=w pid=202 comm="qemu-system-x86" name="content.iso" dev="tmpfs" ino=9"#,
        "\n",
        r#"audit: type=1400 audit(1.1:8): lsm=SMACK fn=smack_inode_permission action=granted subject="svirt-c3-c4" object="svirt-shared" requested=w pid=202 comm="qemu-system-x86" name="shared.img""#,
        "\n",
    );
    let o = svirt(&["denials", "--from", "-"], Some(log));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{out}");
    assert!(
        out.contains("guest svirt-c1-c2: 3 SMACK denial(s)"),
        "{out}"
    );
    assert!(
        out.contains("{ r } smack_inode_permission svirt-c1-c2 -> svirt-c3-c4 [guest svirt-c3-c4]")
            && out.contains("name=B.img"),
        "{out}"
    );
    assert!(out.contains("path=/lab/img/B.img"), "{out}");
    assert!(
        !out.contains("opid=190"),
        "a ptrace record's opid is the tracer: {out}"
    );
    assert!(
        out.contains("guest svirt-c3-c4: 1 SMACK denial(s)")
            && out.contains("-> svirt-content [read-only content]"),
        "{out}"
    );
    assert!(
        !out.contains("shared.img"),
        "a granted record is no denial: {out}"
    );
}

/// BPF-LSM's lines (svirtd logs the programs' ring buffer to the kernel log) go to the
/// guest at the denied task's level; the object is named by its level (another guest's,
/// `s0`, or unlabeled).
#[test]
fn denials_attribute_bpf_lsm_records_to_guests_by_level() {
    let log = "[ 30.1] svirt-bpf: denied { read } hook=open pid=90 comm=\"qemu-system-x86\" scontext=s0:c1,c2 tcontext=s0:c3,c4 dev=0:45 ino=17\n\
               [ 30.2] svirt-bpf: denied { signal } hook=signal pid=90 comm=\"qemu-system-x86\" scontext=s0:c1,c2 tcontext=s0:c3,c4 tpid=120\n\
               [ 30.3] svirt-bpf: denied { write } hook=open pid=121 comm=\"qemu-system-x86\" scontext=s0:c3,c4 tcontext=unlabeled dev=8:1 ino=2\n\
               [ 30.4] svirt-bpf: something else\n";
    let o = svirt(&["denials", "--from", "-"], Some(log));
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        out.contains("guest at s0:c1,c2: 2 BPF-LSM denial(s)"),
        "{out}"
    );
    assert!(
        out.contains("guest at s0:c3,c4: 1 BPF-LSM denial(s)"),
        "{out}"
    );
    assert!(
        out.contains("{ read } open pid=90 comm=qemu-system-x86 s0:c1,c2 -> s0:c3,c4 [guest at s0:c3,c4] dev=0:45 ino=17"),
        "{out}"
    );
    assert!(out.contains("tpid=120"), "{out}");
    assert!(out.contains("(unlabeled: no plan names it)"), "{out}");
}
