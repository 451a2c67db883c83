//! The programs' decision, run in the kernel (BPF_PROG_TEST_RUN of `svirt_decide`, the
//! same `svirt_may()` the LSM hooks call), against svirt's policy model of what SELinux
//! decides for `svirt_t`: randomized subjects, objects, kinds and accesses.

use proptest::prelude::*;
use svirt_bpf::decide::Decider;
use svirt_bpf::label::{Allow, Cats, ObjectLabel};
use svirt_labels::{CategorySet, Context};
use svirt_policy::{Booleans, decide};

thread_local! {
    /// One loaded program per test thread: loading is the slow part, running is a syscall.
    static DECIDER: Option<Decider> = match Decider::load() {
        Ok(d) => Some(d),
        Err(e) => {
            svirt_testkit::skip("bpf", format!("cannot load the decision program: {e}"));
            None
        }
    };
}

/// The kernel's decision; `None` when the program cannot load (skipped, or failed when
/// the test command requires BPF).
fn kernel(s: &Cats, o: &ObjectLabel, want: Allow) -> Option<bool> {
    DECIDER.with(|d| d.as_ref().map(|d| d.may(s, o, want).expect("test run")))
}

/// The object kinds the programs know, with the type SELinux gives each and the mask.
const KINDS: [(&str, Allow); 3] = [
    ("svirt_image_t", Allow::READ_WRITE),
    ("virt_content_t", Allow::READ_ONLY),
    ("qemu_exec_t", Allow::READ_EXEC),
];

/// File permissions and the access the programs see for each.
const PERMS: [(&str, Allow); 4] = [
    ("read", Allow::READ),
    ("write", Allow::WRITE),
    ("append", Allow::WRITE),
    ("execute", Allow::EXEC),
];

fn level_text(set: &CategorySet) -> String {
    if set.is_empty() {
        "s0".into()
    } else {
        format!("s0:{set}")
    }
}

fn oracle(s: &CategorySet, t: &str, o: &CategorySet, class: &str, perm: &str) -> bool {
    let sc =
        Context::parse(&format!("system_u:system_r:svirt_t:{}", level_text(s))).expect("subject");
    let role = if t == "svirt_t" {
        "system_r"
    } else {
        "object_r"
    };
    let tc = Context::parse(&format!("system_u:{role}:{t}:{}", level_text(o))).expect("object");
    let d = decide(&sc, &tc, class, &[perm], &Booleans::defaults());
    assert!(
        d.is_allowed() || d.is_denied(),
        "the model must know {sc} -> {tc} {class} {perm}: {d:?}"
    );
    d.is_allowed()
}

/// Category sets drawn mostly from a small universe (so dominance and its failures are
/// both common), sometimes from anywhere in c0..c1023.
fn cats() -> impl Strategy<Value = CategorySet> {
    prop_oneof![
        3 => proptest::collection::vec(0u16..6, 0..4),
        1 => proptest::collection::vec(0u16..1024, 0..4),
    ]
    .prop_map(|v| {
        let mut s = CategorySet::new();
        for c in v {
            s.insert(c);
        }
        s
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 3000, ..ProptestConfig::default() })]

    #[test]
    fn file_access_matches_the_policy_model(
        s in cats(), o in cats(), kind in 0usize..3, perm in 0usize..4
    ) {
        let (ty, allow) = KINDS[kind];
        let (pname, want) = PERMS[perm];
        let Some(k) = kernel(&Cats::of_set(&s), &ObjectLabel::new(Cats::of_set(&o), allow, false), want)
        else { return Ok(()) };
        prop_assert_eq!(k, oracle(&s, ty, &o, "file", pname), "{} {} {}", s, ty, o);
    }

    #[test]
    fn signals_between_guests_match_the_policy_model(s in cats(), t in cats()) {
        // task_kill: dominance of the target's level, whatever the kind.
        let Some(k) = kernel(&Cats::of_set(&s), &ObjectLabel::new(Cats::of_set(&t), Allow(7), false), Allow(0))
        else { return Ok(()) };
        prop_assert_eq!(k, oracle(&s, "svirt_t", &t, "process", "signal"));
    }
}

/// Controls: the decision is not constant, and a guest's own image is allowed.
#[test]
fn own_image_allowed_other_guest_denied() {
    let me = Cats::of(&"s0:c41,c264".parse().expect("level"));
    let other = Cats::of(&"s0:c41,c265".parse().expect("level"));
    let mine = ObjectLabel::new(me, Allow::READ_WRITE, false);
    let theirs = ObjectLabel::new(other, Allow::READ_WRITE, false);
    let shared = ObjectLabel::new(Cats::default(), Allow::READ_WRITE, false);
    let Some(own) = kernel(&me, &mine, Allow::READ_WRITE) else {
        return;
    };
    assert!(own);
    assert_eq!(kernel(&me, &shared, Allow::READ_WRITE), Some(true));
    assert_eq!(kernel(&me, &theirs, Allow::READ), Some(false));
    assert_eq!(kernel(&me, &mine, Allow::EXEC), Some(false));
}
