//! `run_batch` and AVC record parsing.

use svirt_policy::{Booleans, Decision, Reason, explain, is_avc_line, parse_avc, run_batch};

const G1: &str = "system_u:system_r:svirt_t:s0:c1,c2";

#[test]
fn batch_answers_one_line_per_request() {
    let input = format!(
        "# comment\n\
         {G1}\tsystem_u:object_r:svirt_image_t:s0:c1,c2\tfile\tread,write\n\
         \n\
         {G1}\tsystem_u:object_r:svirt_image_t:s0:c3,c4\tfile\tread\n\
         {G1}\tsystem_u:object_r:nfs_t:s0\tfile\tread\n\
         {G1}\tsystem_u:object_r:nfs_t:s0\tfile\tread\tvirt_use_nfs=on\n\
         {G1}\tsystem_u:object_r:virt_content_t:s0\tfile\twrite\n\
         system_u:system_r:svirt_custom_t:s0\t{G1}\tprocess\tsignal\n\
         not a context\t{G1}\tprocess\tsignal\n\
         {G1}\t{G1}\tprocess\n\
         {G1}\t{G1}\tprocess\tsignal\tno_such_bool=on\n"
    );
    let mut out = Vec::new();
    let sum = match run_batch(input.as_bytes(), &mut out) {
        Ok(s) => s,
        Err(e) => panic!("run_batch: {e}"),
    };
    let text = String::from_utf8_lossy(&out);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 9, "{text}");
    assert_eq!(lines[0], "allow");
    assert!(
        lines[1].starts_with(
            "deny\tconstraint failed for read: h1 dom h2 or t1 != mcs_constrained_type"
        ),
        "{}",
        lines[1]
    );
    assert_eq!(
        lines[2],
        "deny\tno TE rule for read; virt_use_nfs=on would allow it; use_nfs_home_dirs=on would allow it"
    );
    assert_eq!(lines[3], "allow");
    assert_eq!(
        lines[4],
        "deny\tno TE rule for write; not logged (dontaudit)"
    );
    assert!(
        lines[5].starts_with("unknown\t") && lines[5].contains("svirt_custom_t"),
        "{}",
        lines[5]
    );
    for l in &lines[6..] {
        assert!(l.starts_with("error\t"), "{l}");
    }
    assert_eq!(
        (sum.allowed, sum.denied, sum.unknown, sum.errors),
        (2, 3, 1, 3)
    );
}

const DMESG: &str = "[  123.456789] audit: type=1400 audit(1700000000.123:45): avc:  denied  { read } for  pid=4242 comm=\"qemu-system-x86\" name=\"disk.img\" dev=\"vda\" ino=1234 scontext=system_u:system_r:svirt_t:s0:c1,c2 tcontext=system_u:object_r:svirt_image_t:s0:c3,c4 tclass=file permissive=0";
const AUDITLOG: &str = "type=AVC msg=audit(1700000000.123:46): avc:  denied  { read write } for  pid=77 comm=71656D75206B766D path=\"/srv/images/a b.img\" dev=\"sda1\" ino=99 scontext=system_u:system_r:svirt_t:s0:c1,c2 tcontext=system_u:object_r:nfs_t:s0 tclass=file permissive=1\u{1d}ARCH=x86_64 SYSCALL=openat";
const BARE: &str = "avc:  denied  { signal } for  pid=1 comm=\"kill\" scontext=system_u:system_r:svirt_t:s0:c1,c2 tcontext=system_u:system_r:svirt_t:s0:c3,c4 tclass=process permissive=0";

#[test]
fn parses_dmesg_form() {
    let r = parse_avc(DMESG).unwrap_or_else(|e| panic!("{e}"));
    assert!(r.denied);
    assert_eq!(r.perms, ["read"]);
    assert_eq!(r.timestamp.as_deref(), Some("1700000000.123:45"));
    assert_eq!(r.serial, Some(45));
    assert_eq!(r.pid, Some(4242));
    assert_eq!(r.comm.as_deref(), Some("qemu-system-x86"));
    assert_eq!(r.name.as_deref(), Some("disk.img"));
    assert_eq!(r.dev.as_deref(), Some("vda"));
    assert_eq!(r.ino, Some(1234));
    assert_eq!(r.tclass, "file");
    assert_eq!(r.permissive, Some(false));
    assert_eq!(r.scontext.to_string(), "system_u:system_r:svirt_t:s0:c1,c2");
    assert_eq!(
        r.tcontext.to_string(),
        "system_u:object_r:svirt_image_t:s0:c3,c4"
    );
    let d = r.decide(&Booleans::defaults());
    assert!(
        matches!(&d, Decision::Deny(x) if matches!(x.reasons[0], Reason::ConstraintFailed { mls: true, .. })),
        "{d:?}"
    );
    let e = r.explain(&Booleans::defaults());
    assert!(e.to_string().contains("MCS isolation"), "{e}");
}

#[test]
fn parses_audit_log_form_with_hex_comm_and_enrichment() {
    let r = parse_avc(AUDITLOG).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(r.perms, ["read", "write"]);
    assert_eq!(r.serial, Some(46));
    assert_eq!(r.comm.as_deref(), Some("qemu kvm"));
    assert_eq!(r.path.as_deref(), Some("/srv/images/a b.img"));
    assert_eq!(r.permissive, Some(true));
    assert_eq!(r.tclass, "file");
    let e = r.explain(&Booleans::defaults());
    assert!(
        e.fix
            .as_deref()
            .is_some_and(|f| f.contains("virt_use_nfs=on would allow it")),
        "{e}"
    );
}

#[test]
fn parses_bare_record_and_rejects_non_avc() {
    let r = parse_avc(BARE).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(r.timestamp, None);
    assert_eq!(r.tclass, "process");
    assert!(is_avc_line(BARE));
    assert!(!is_avc_line("type=SYSCALL msg=audit(1:2): arch=c000003e"));
    assert!(parse_avc("type=SYSCALL msg=audit(1:2): arch=c000003e").is_err());
    assert!(
        parse_avc("avc:  denied  { read } for pid=1 tclass=file").is_err(),
        "no contexts"
    );
    assert!(
        parse_avc("avc:  denied  { } for scontext=a:b:c:s0 tcontext=a:b:c:s0 tclass=file").is_err()
    );
}

#[test]
fn explanation_mentions_levels_and_fix() {
    let s = svirt_labels::Context::parse(G1).unwrap_or_else(|e| panic!("{e}"));
    let t = svirt_labels::Context::parse("system_u:object_r:svirt_image_t:s0:c3,c4")
        .unwrap_or_else(|e| panic!("{e}"));
    let e = explain(&s, &t, "file", &["read"], &Booleans::defaults());
    let text = e.to_string();
    assert!(
        text.starts_with("deny: svirt_t { read } on svirt_image_t file"),
        "{text}"
    );
    assert!(
        text.contains("s0:c1,c2 does not dominate s0:c3,c4"),
        "{text}"
    );
    assert!(text.contains("h1 dom h2 is false"), "{text}");
    assert!(
        text.contains("t1 != mcs_constrained_type is false"),
        "{text}"
    );
}
