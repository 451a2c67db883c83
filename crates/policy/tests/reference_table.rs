//! Every row of "Observed under a real enforcing kernel" in
//! shared/reference/selinux-refpolicy.md, plus the MCS constraint corner cases.

use svirt_labels::Context;
use svirt_policy::{Booleans, Decision, Reason, decide, explain};

fn ctx(s: &str) -> Context {
    match Context::parse(s) {
        Ok(c) => c,
        Err(e) => panic!("test context {s:?}: {e}"),
    }
}

const GUEST: &str = "system_u:system_r:svirt_t:s0:c1,c2";

fn d(s: &str, t: &str, class: &str, perms: &[&str]) -> Decision {
    decide(&ctx(s), &ctx(t), class, perms, &Booleans::defaults())
}

fn reasons(dec: &Decision) -> Vec<Reason> {
    match dec {
        Decision::Deny(d) => d.reasons.clone(),
        other => panic!("expected a denial, got {other:?}"),
    }
}

fn constraint_failed(dec: &Decision) -> bool {
    reasons(dec)
        .iter()
        .any(|r| matches!(r, Reason::ConstraintFailed { mls: true, .. }))
}

fn no_te(dec: &Decision) -> bool {
    reasons(dec)
        .iter()
        .any(|r| matches!(r, Reason::NoTeRule { .. }))
}

#[test]
fn own_image_read_write_allowed() {
    let img = "system_u:object_r:svirt_image_t:s0:c1,c2";
    assert_eq!(
        d(GUEST, img, "file", &["open", "read", "write", "getattr"]),
        Decision::Allow
    );
}

#[test]
fn other_guests_image_denied_by_mcs_and_logged() {
    let img = "system_u:object_r:svirt_image_t:s0:c3,c4";
    for perm in ["read", "write", "open"] {
        let dec = d(GUEST, img, "file", &[perm]);
        assert!(constraint_failed(&dec), "{perm}: {dec:?}");
        let Decision::Deny(den) = &dec else {
            unreachable!()
        };
        assert!(den.audited(), "avc: denied {{ {perm} }} is logged");
        assert!(
            matches!(&den.reasons[0], Reason::ConstraintFailed { expression, .. }
            if expression == "h1 dom h2 or t1 != mcs_constrained_type")
        );
    }
}

#[test]
fn stat_of_other_guests_image_allowed() {
    let img = "system_u:object_r:svirt_image_t:s0:c3,c4";
    assert_eq!(d(GUEST, img, "file", &["getattr"]), Decision::Allow);
}

#[test]
fn shared_s0_image_read_and_write_allowed() {
    let img = "system_u:object_r:svirt_image_t:s0";
    assert_eq!(
        d(GUEST, img, "file", &["open", "read", "write"]),
        Decision::Allow
    );
}

#[test]
fn virt_content_read_allowed_write_silently_denied() {
    let c = "system_u:object_r:virt_content_t:s0";
    assert_eq!(d(GUEST, c, "file", &["open", "read"]), Decision::Allow);
    let dec = d(GUEST, c, "file", &["write"]);
    assert!(no_te(&dec));
    let Decision::Deny(den) = dec else {
        unreachable!()
    };
    assert!(
        !den.audited(),
        "write on virt_content_t: EACCES with no avc line (dontaudit)"
    );
}

#[test]
fn user_home_and_nfs_denied_by_te() {
    for t in [
        "system_u:object_r:user_home_t:s0",
        "system_u:object_r:nfs_t:s0",
    ] {
        let dec = d(GUEST, t, "file", &["read"]);
        assert!(no_te(&dec), "{t}: {dec:?}");
    }
}

#[test]
fn nfs_fix_is_virt_use_nfs() {
    let t = ctx("system_u:object_r:nfs_t:s0");
    let dec = decide(
        &ctx(GUEST),
        &t,
        "file",
        &["read", "write"],
        &Booleans::defaults(),
    );
    assert!(reasons(&dec).contains(&Reason::BooleanWouldAllow {
        name: "virt_use_nfs".into(),
        value: true
    }));
    let e = explain(&ctx(GUEST), &t, "file", &["read"], &Booleans::defaults());
    assert!(
        e.fix
            .as_deref()
            .is_some_and(|f| f.contains("virt_use_nfs=on would allow it")),
        "{e}"
    );
    let on = Booleans::parse_list("virt_use_nfs=on").unwrap_or_default();
    assert_eq!(
        decide(&ctx(GUEST), &t, "file", &["read", "write"], &on),
        Decision::Allow
    );
    // the boolean grants TE; MCS still applies on top of it
    let other = ctx("system_u:object_r:nfs_t:s0:c3,c4");
    assert!(constraint_failed(&decide(
        &ctx(GUEST),
        &other,
        "file",
        &["read"],
        &on
    )));
}

#[test]
fn user_home_has_no_boolean_fix() {
    let dec = d(GUEST, "system_u:object_r:user_home_t:s0", "file", &["read"]);
    assert!(
        !reasons(&dec)
            .iter()
            .any(|r| matches!(r, Reason::BooleanWouldAllow { .. }))
    );
}

#[test]
fn signals() {
    let other = "system_u:system_r:svirt_t:s0:c3,c4";
    assert!(constraint_failed(&d(GUEST, other, "process", &["signal"])));
    assert_eq!(d(GUEST, GUEST, "process", &["signal"]), Decision::Allow);
    // signal 0 (signull) is not constrained by MCS
    assert_eq!(d(GUEST, other, "process", &["signull"]), Decision::Allow);
    assert_eq!(d(GUEST, GUEST, "process", &["signull"]), Decision::Allow);
    // ptrace: no TE rule, even on itself
    assert!(no_te(&d(GUEST, GUEST, "process", &["ptrace"])));
    assert!(no_te(&d(GUEST, other, "process", &["ptrace"])));
    // sigkill: no TE rule (TE comes before the constraint)
    let dec = d(GUEST, other, "process", &["sigkill"]);
    assert!(no_te(&dec) && !constraint_failed(&dec), "{dec:?}");
}

#[test]
fn map_is_not_granted_on_images() {
    assert!(no_te(&d(
        GUEST,
        "system_u:object_r:svirt_image_t:s0:c1,c2",
        "file",
        &["map"]
    )));
}

#[test]
fn virt_image_t_is_not_for_guests() {
    let dec = d(
        GUEST,
        "system_u:object_r:virt_image_t:s0",
        "file",
        &["read"],
    );
    assert!(no_te(&dec));
    let e = explain(
        &ctx(GUEST),
        &ctx("system_u:object_r:virt_image_t:s0"),
        "file",
        &["read", "write"],
        &Booleans::defaults(),
    );
    assert!(
        e.fix
            .as_deref()
            .is_some_and(|f| f.contains("svirt_image_t:s0:c1,c2")),
        "{e}"
    );
}

// MCS corner cases.

#[test]
fn dominance_corner_cases() {
    let img = |lvl: &str| format!("system_u:object_r:svirt_image_t:{lvl}");
    // equal
    assert!(d(GUEST, &img("s0:c1,c2"), "file", &["read"]).is_allowed());
    // subject dominates
    for lvl in ["s0:c1", "s0:c2", "s0"] {
        assert!(
            d(GUEST, &img(lvl), "file", &["read", "write"]).is_allowed(),
            "{lvl}"
        );
    }
    // object dominates the subject, or incomparable
    for lvl in ["s0:c1,c2,c3", "s0:c1,c3", "s0:c3,c4", "s0:c0.c1023"] {
        assert!(
            constraint_failed(&d(GUEST, &img(lvl), "file", &["read"])),
            "{lvl}"
        );
    }
}

#[test]
fn ranges_use_the_high_levels() {
    // a ranged guest: h1 = c0.c1023 dominates everything
    let wide = "system_u:system_r:svirt_t:s0-s0:c0.c1023";
    assert!(
        d(
            wide,
            "system_u:object_r:svirt_image_t:s0:c3,c4",
            "file",
            &["read"]
        )
        .is_allowed()
    );
    // a ranged object whose high level the guest does not dominate
    let ranged = "system_u:object_r:svirt_image_t:s0-s0:c1,c2,c3";
    assert!(constraint_failed(&d(GUEST, ranged, "file", &["read"])));
    // ranged object within the guest's level: read ok, but create needs l2 == h2
    let r2 = "system_u:object_r:svirt_image_t:s0-s0:c1,c2";
    assert!(d(GUEST, r2, "file", &["read"]).is_allowed());
    let dec = d(GUEST, r2, "file", &["create"]);
    assert!(
        matches!(&reasons(&dec)[0], Reason::ConstraintFailed { expression, .. }
        if expression == "(h1 dom h2 and l2 == h2) or t1 != mcs_constrained_type"),
        "{dec:?}"
    );
    assert!(
        d(
            GUEST,
            "system_u:object_r:svirt_image_t:s0:c1",
            "file",
            &["create"]
        )
        .is_allowed()
    );
}

#[test]
fn virtd_is_not_mcs_constrained() {
    let virtd = "system_u:system_r:virtd_t:s0-s0:c0.c1023";
    let virtd_low = "system_u:system_r:virtd_t:s0";
    for s in [virtd, virtd_low] {
        let img = "system_u:object_r:svirt_image_t:s0:c3,c4";
        assert!(
            d(s, img, "file", &["relabelfrom", "relabelto", "getattr"]).is_allowed(),
            "{s}"
        );
        assert!(
            d(
                s,
                "system_u:system_r:svirt_t:s0:c3,c4",
                "process",
                &["sigkill", "signal", "transition"]
            )
            .is_allowed(),
            "{s}"
        );
    }
}

#[test]
fn guest_cannot_connect_to_another_guests_socket() {
    let other = "system_u:system_r:svirt_t:s0:c3,c4";
    // no TE rule for self connectto at all
    assert!(no_te(&d(
        GUEST,
        GUEST,
        "unix_stream_socket",
        &["connectto"]
    )));
    assert!(no_te(&d(
        GUEST,
        other,
        "unix_stream_socket",
        &["connectto"]
    )));
    // TE allows connecting to virtd; MCS: the guest's level must dominate virtd's high
    assert!(
        d(
            GUEST,
            "system_u:system_r:virtd_t:s0",
            "unix_stream_socket",
            &["connectto"]
        )
        .is_allowed()
    );
    assert!(constraint_failed(&d(
        GUEST,
        "system_u:system_r:virtd_t:s0-s0:c0.c1023",
        "unix_stream_socket",
        &["connectto"]
    )));
}

#[test]
fn entrypoint_and_execmem() {
    let q = "system_u:object_r:qemu_exec_t:s0";
    assert!(d(GUEST, q, "file", &["entrypoint"]).is_allowed());
    let pe = "system_u:system_r:svirt_prot_exec_t:s0:c1,c2";
    assert!(d(pe, pe, "process", &["execmem"]).is_allowed());
    let dec = d(GUEST, GUEST, "process", &["execmem"]);
    assert!(reasons(&dec).contains(&Reason::BooleanWouldAllow {
        name: "virt_use_execmem".into(),
        value: true
    }));
}

#[test]
fn unknown_things_are_not_guessed() {
    let custom = "system_u:system_r:svirt_custom_t:s0:c1,c2";
    assert!(
        matches!(d(custom, GUEST, "process", &["signal"]), Decision::UnknownToModel { what } if what.contains("svirt_custom_t"))
    );
    assert!(matches!(
        d(
            GUEST,
            "system_u:object_r:svirt_custom_image_t:s0",
            "file",
            &["read"]
        ),
        Decision::UnknownToModel { .. }
    ));
    assert!(matches!(
        d(GUEST, GUEST, "tcp_socket", &["read"]),
        Decision::UnknownToModel { .. }
    ));
    assert!(matches!(
        d(
            GUEST,
            "system_u:object_r:svirt_image_t:s0",
            "file",
            &["fly"]
        ),
        Decision::UnknownToModel { .. }
    ));
    assert!(matches!(
        d(
            GUEST,
            "system_u:object_r:svirt_image_t:s1",
            "file",
            &["read"]
        ),
        Decision::UnknownToModel { .. }
    ));
    assert!(matches!(
        d(
            "nobody_u:system_r:svirt_t:s0",
            GUEST,
            "process",
            &["signal"]
        ),
        Decision::UnknownToModel { .. }
    ));
    // an object type as a subject
    assert!(matches!(
        d(
            "system_u:object_r:svirt_image_t:s0",
            GUEST,
            "process",
            &["signal"]
        ),
        Decision::UnknownToModel { .. }
    ));
    assert!(Booleans::parse_list("no_such_boolean=on").is_err());
    assert!(
        Booleans::parse_list("httpd_use_nfs=on").is_ok(),
        "a real but irrelevant boolean"
    );
}
