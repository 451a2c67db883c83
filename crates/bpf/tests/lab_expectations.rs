//! The lab's `bpf-svirtd` scenario proves svirtd's guests isolated by the BPF programs
//! against a table of expected outcomes (lab/scenarios/bpf-svirtd/expected.tsv). That
//! table must say what SELinux would decide for the same operations: each line is checked
//! here against the policy model (`svirt explain`'s oracle), as the SELinux scenario's
//! expectations come from it. A line the model cannot judge (bpf(2): no `bpf` class in the
//! model) must say so in this file, never be skipped silently.

use std::path::Path;

use svirt_labels::Context;
use svirt_policy::{Booleans, decide};

const A: &str = "s0:c1,c2";
const B: &str = "s0:c3,c4";

/// The SELinux request behind each operation of the attack plan, made by guest A on guest
/// B (the table is the same for both guests): target context, class, permission.
fn request(name: &str) -> Option<(String, &'static str, &'static str)> {
    let image = |level: &str| format!("system_u:object_r:svirt_image_t:{level}");
    let proc_ = |level: &str| format!("system_u:system_r:svirt_t:{level}");
    Some(match name {
        "own.read" => (image(A), "file", "read"),
        "own.write" => (image(A), "file", "write"),
        "other.read" => (image(B), "file", "read"),
        "other.write" => (image(B), "file", "write"),
        "other.stat" => (image(B), "file", "getattr"),
        // B's results file is one of B's own objects, labeled at B's level.
        "other.result" => (image(B), "file", "write"),
        "shared.read" => (image("s0"), "file", "read"),
        "shared.write" => (image("s0"), "file", "write"),
        "content.read" => ("system_u:object_r:virt_content_t:s0".into(), "file", "read"),
        "content.write" => (
            "system_u:object_r:virt_content_t:s0".into(),
            "file",
            "write",
        ),
        // A file no plan names: under SELinux, a user's file (as the SELinux scenario).
        "home.read" => ("system_u:object_r:user_home_t:s0".into(), "file", "read"),
        "home.write" => ("system_u:object_r:user_home_t:s0".into(), "file", "write"),
        "peer.signal" => (proc_(B), "process", "signal"),
        "peer.signull" => (proc_(B), "process", "signull"),
        "peer.ptrace" => (proc_(B), "process", "ptrace"),
        // svirtd's API socket: the manager's domain.
        "api.connect" => (
            "system_u:system_r:virtd_t:s0-s0:c0.c1023".into(),
            "unix_stream_socket",
            "connectto",
        ),
        _ => return None,
    })
}

/// Operations the model does not cover, and why their expectation stands anyway.
const OUTSIDE_THE_MODEL: [(&str, &str); 1] = [(
    "bpf.map_create",
    "the model has no bpf class; Debian's policy gives svirt_t no bpf permission",
)];

#[test]
fn the_bpf_scenarios_expectations_are_the_policy_models() {
    let table =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../lab/scenarios/bpf-svirtd/expected.tsv");
    let text = std::fs::read_to_string(&table)
        .unwrap_or_else(|e| panic!("{}: {e} (the scenario's table must exist)", table.display()));
    let subject = Context::parse(&format!("system_u:system_r:svirt_t:{A}")).expect("subject");
    let mut judged = 0;
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
    {
        let f: Vec<&str> = line.split('\t').collect();
        let (name, outcome) = (f[0], f[1]);
        let Some((target, class, perm)) = request(name) else {
            assert!(
                OUTSIDE_THE_MODEL.iter().any(|(n, _)| *n == name),
                "{name}: no SELinux request for it here, and not listed as outside the model"
            );
            continue;
        };
        let target = Context::parse(&target).expect("target");
        let d = decide(&subject, &target, class, &[perm], &Booleans::defaults());
        assert!(
            d.is_allowed() || d.is_denied(),
            "{name}: the model must judge {target} {class} {perm}: {d:?}"
        );
        assert_eq!(
            outcome == "ok",
            d.is_allowed(),
            "{name}: the table says {outcome}, the policy model says {}",
            d.reason_line()
        );
        judged += 1;
    }
    assert!(judged >= 16, "only {judged} lines judged");
}
