//! The host side of the lab's model pipeline, through the real binary and real files:
//! `model-queries` asks one `svirt explain --batch` line per permission, `model-expect`
//! folds the answers into the expected table, `list-checks` lists the VM and host checks
//! that table implies. The answers here are written by the test (the real ones come from
//! `svirt explain --batch` in `lab/run`), so what is checked is the probe's folding.
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::process::Command;

fn probe(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_svirt-probe"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

fn write(dir: &Path, name: &str, text: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p.to_str().unwrap().to_string()
}

#[test]
fn queries_answers_expectations_and_checks() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let plan = write(
        d,
        "plan",
        "guest A s0:c1,c2\nguest B s0:c3,c4\ndisk A /img/A private\ndisk B /img/B private\n\
         disk - /img/c readonly\n",
    );
    let attack = write(
        d,
        "attack",
        "results A /img/A.r\nresults B /img/B.r\npeers /img/peers\n\
         op A other.read read /img/B\nop A content.write write /img/c\nop A home.stat stat /img/h\n\
         op B peer.ptrace ptrace A\n",
    );
    let labels = write(d, "labels", "/img/h system_u:object_r:user_home_t:s0\n");

    let (ok, queries, err) = probe(&[
        "model-queries",
        "--plan",
        &plan,
        "--attack",
        &attack,
        "--labels",
        &labels,
    ]);
    assert!(ok, "{err}");
    let q: Vec<&str> = queries.lines().collect();
    // read: read+open, write: write+open, stat: getattr, ptrace: ptrace.
    assert_eq!(q.len(), 6, "{queries}");
    assert_eq!(
        q[0],
        "system_u:system_r:svirt_t:s0:c1,c2\tsystem_u:object_r:svirt_image_t:s0:c3,c4\tfile\tread"
    );
    assert_eq!(
        q[5],
        "system_u:system_r:svirt_t:s0:c3,c4\tsystem_u:system_r:svirt_t:s0:c1,c2\tprocess\tptrace"
    );

    let answers = write(
        d,
        "answers",
        "deny\tconstraint failed for read: h1 dom h2\n\
         deny\tconstraint failed for open: h1 dom h2\n\
         deny\tno TE rule for write; not logged (dontaudit)\n\
         allow\n\
         allow\n\
         deny\tno TE rule for ptrace\n",
    );
    let (ok, expected, err) = probe(&[
        "model-expect",
        "--plan",
        &plan,
        "--attack",
        &attack,
        "--labels",
        &labels,
        "--answers",
        &answers,
    ]);
    assert!(ok, "{err}");
    assert!(
        expected.contains(
            "A\tother.read\tdeny\tavc\tfile\tread\tconstraint failed for read: h1 dom h2\n"
        ),
        "{expected}"
    );
    assert!(expected.contains("A\tcontent.write\tdeny\tnoavc\tfile\twrite\t"));
    assert!(expected.contains("A\thome.stat\tallow\t-\tfile\t-\t-\n"));
    assert!(
        expected.contains("B\tpeer.ptrace\tdeny\tavc\tprocess\tptrace\tno TE rule for ptrace\n")
    );
    let exp = write(d, "expected.tsv", &expected);

    let (ok, checks, err) = probe(&[
        "list-checks",
        "--plan",
        &plan,
        "--attack",
        &attack,
        "--expected",
        &exp,
    ]);
    assert!(ok, "{err}");
    let checks: Vec<&str> = checks.lines().collect();
    for c in [
        "decision.A.other.read",
        "avc.A.other.read",
        "decision.A.content.write",
        "avc.B.peer.ptrace",
        "denials.all_expected",
        "denials.A.attributed",
        "denials.A.other.read",
        "explain.B.peer.ptrace",
    ] {
        assert!(checks.contains(&c), "{c} missing from {checks:?}");
    }
    // Silenced denials and allows have no AVC to look for.
    assert!(!checks.contains(&"avc.A.content.write"));
    assert!(!checks.contains(&"denials.A.content.write"));
    assert!(!checks.contains(&"avc.A.home.stat"));

    // A missing answer, or one the model cannot give, is an error, never a guess.
    let short = write(d, "short", "allow\n");
    let unknown = write(
        d,
        "unknown",
        &std::fs::read_to_string(&answers).unwrap().replacen(
            "allow",
            "unknown\ttype x is unknown to the model",
            1,
        ),
    );
    for a in [short, unknown] {
        let (ok, _, err) = probe(&[
            "model-expect",
            "--plan",
            &plan,
            "--attack",
            &attack,
            "--labels",
            &labels,
            "--answers",
            &a,
        ]);
        assert!(!ok, "accepted {a}");
        assert!(!err.is_empty());
    }
}
