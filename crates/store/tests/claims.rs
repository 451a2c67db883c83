//! Claims (issue 11, class 4): a private read-write object is one guest's; shared and
//! read-only uses coexist; a refusal writes nothing; claims survive a reopen and go with
//! their owner; a stale claim (another object now at the inode) does not block; two threads
//! racing for one object: exactly one wins.

use std::path::PathBuf;
use std::sync::{Arc, Barrier};

use svirt_store::{ClaimItem, ClaimUse, Error, ObjectIdentity, ObjectKey, Store, Timestamp};

fn item(ino: u64, birth: i64, usage: ClaimUse) -> ClaimItem {
    ClaimItem {
        key: ObjectKey { dev: 7, ino },
        identity: ObjectIdentity {
            dev: 7,
            ino,
            btime: Some(Timestamp {
                sec: birth,
                nsec: 0,
            }),
            generation: None,
            ctime: None,
        },
        path: PathBuf::from(format!("/images/{ino}.img")),
        usage,
        recursive: false,
        ancestors: Vec::new(),
    }
}

fn open() -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(dir.path()).expect("store");
    (dir, store)
}

#[test]
fn claim_rules_between_guests() {
    use ClaimUse::*;
    // (first guest's use, second guest's use, allowed)
    let cases = [
        (Exclusive, Exclusive, false),
        (Exclusive, Read, false),
        (Exclusive, Shared, false),
        (Read, Exclusive, false),
        (Shared, Exclusive, false),
        (Read, Read, true),
        (Shared, Shared, true),
        (Shared, Read, true),
        (Read, Shared, true),
    ];
    for (first, second, allowed) in cases {
        let (_d, s) = open();
        s.claim_objects("dac/a", &[item(1, 100, first)])
            .expect("first");
        let r = s.claim_objects("dac/b", &[item(2, 100, Read), item(1, 100, second)]);
        assert_eq!(r.is_ok(), allowed, "{first:?} then {second:?}: {r:?}");
        if let Err(e) = r {
            match &e {
                Error::Claimed { path, other, rule } => {
                    assert_eq!(path, &PathBuf::from("/images/1.img"));
                    assert_eq!(other, "a");
                    assert!(rule.contains("private read-write"), "{rule}");
                }
                e => panic!("{e:?}"),
            }
            // All or nothing: the other object was not claimed either.
            assert!(
                s.get_claim(ObjectKey { dev: 7, ino: 2 })
                    .expect("get")
                    .is_none()
            );
            let rec = s
                .get_claim(ObjectKey { dev: 7, ino: 1 })
                .expect("get")
                .expect("a's");
            assert_eq!(rec.users.keys().collect::<Vec<_>>(), vec!["dac/a"]);
        }
    }
}

#[test]
fn one_guest_under_several_models_and_named_twice() {
    let (_d, s) = open();
    s.claim_objects("dac/a", &[item(1, 1, ClaimUse::Exclusive)])
        .expect("dac");
    s.claim_objects("selinux/a", &[item(1, 1, ClaimUse::Exclusive)])
        .expect("same guest");
    s.claim_objects(
        "dac/a",
        &[item(1, 1, ClaimUse::Read), item(1, 1, ClaimUse::Exclusive)],
    )
    .expect("idempotent");
    assert!(
        s.claim_objects("selinux/b", &[item(1, 1, ClaimUse::Read)])
            .is_err()
    );
    // Released under one model, the other model's claim still holds.
    assert_eq!(s.release_claims("dac/a").expect("release"), 1);
    assert!(
        s.claim_objects("dac/b", &[item(1, 1, ClaimUse::Read)])
            .is_err()
    );
    s.release_claims("selinux/a").expect("release");
    s.claim_objects("dac/b", &[item(1, 1, ClaimUse::Exclusive)])
        .expect("free now");
}

#[test]
fn stale_claims_do_not_block_and_claims_survive_a_reopen() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let s = Store::open(dir.path()).expect("store");
        s.claim_objects("dac/a", &[item(1, 1, ClaimUse::Exclusive)])
            .expect("a");
        // Claims are durable with the next durable commit (the drivers' originals).
        s.sync().expect("sync");
    }
    let s = Store::open(dir.path()).expect("reopen");
    assert!(
        s.claim_objects("dac/b", &[item(1, 1, ClaimUse::Read)])
            .is_err(),
        "the claim survived the reopen"
    );
    // Another file at the same inode (another birth time): a's claim is of a file gone.
    s.claim_objects("dac/b", &[item(1, 2, ClaimUse::Exclusive)])
        .expect("stale");
    let rec = s
        .get_claim(ObjectKey { dev: 7, ino: 1 })
        .expect("get")
        .expect("b's");
    assert_eq!(rec.users.keys().collect::<Vec<_>>(), vec!["dac/b"]);
    assert_eq!(s.release_claims("dac/a").expect("nothing of a's left"), 0);
    s.release_claims("dac/b").expect("release");
    assert!(s.list_claims().expect("list").is_empty());
}

#[test]
fn racing_claims_one_wins() {
    let (_d, s) = open();
    let s = Arc::new(s);
    for round in 0..50u64 {
        let go = Arc::new(Barrier::new(2));
        let spawn = |owner: &'static str| {
            let (s, go) = (s.clone(), go.clone());
            std::thread::spawn(move || {
                go.wait();
                s.claim_objects(owner, &[item(100 + round, 1, ClaimUse::Exclusive)])
                    .is_ok()
            })
        };
        let (a, b) = (spawn("dac/x"), spawn("dac/y"));
        let wins = [a.join().expect("a"), b.join().expect("b")];
        assert_eq!(wins.iter().filter(|w| **w).count(), 1, "round {round}");
        s.release_claims("dac/x").expect("x");
        s.release_claims("dac/y").expect("y");
    }
}

fn ident(ino: u64) -> ObjectIdentity {
    ObjectIdentity {
        dev: 7,
        ino,
        btime: Some(Timestamp { sec: 1, nsec: 0 }),
        generation: None,
        ctime: None,
    }
}

#[test]
fn objects_inside_another_guests_tree() {
    use ClaimUse::*;
    // A private share /srv/a (ino 50, inside /srv = 40) of guest a.
    let tree = |usage| ClaimItem {
        key: ObjectKey { dev: 7, ino: 50 },
        identity: ident(50),
        path: PathBuf::from("/srv/a"),
        usage,
        recursive: true,
        ancestors: vec![ident(40)],
    };
    let inner = |usage| ClaimItem {
        key: ObjectKey { dev: 7, ino: 60 },
        identity: ident(60),
        path: PathBuf::from("/srv/a/sub/disk.img"),
        usage,
        recursive: false,
        ancestors: vec![ident(55), ident(50), ident(40)],
    };
    for (first_tree, second_inner, allowed) in [
        (Exclusive, Exclusive, false),
        (Exclusive, Read, false),
        (Read, Exclusive, false),
        (Read, Read, true),
        (Shared, Shared, true),
    ] {
        // The object named after the tree: refused by identity of its ancestors.
        let (_d, s) = open();
        s.claim_objects("dac/a", &[tree(first_tree)]).expect("tree");
        let r = s.claim_objects("dac/b", &[inner(second_inner)]);
        assert_eq!(
            r.is_ok(),
            allowed,
            "tree {first_tree:?}, then inner {second_inner:?}: {r:?}"
        );
        if let Err(Error::Claimed { other, rule, .. }) = &r {
            assert_eq!(other, "a");
            assert!(rule.contains("/srv/a"), "{rule}");
        }
        // The tree named after the object: refused by the object's path below the tree's.
        let (_d, s) = open();
        s.claim_objects("dac/b", &[inner(second_inner)])
            .expect("inner");
        let r = s.claim_objects("dac/a", &[tree(first_tree)]);
        assert_eq!(
            r.is_ok(),
            allowed,
            "inner {second_inner:?}, then tree {first_tree:?}: {r:?}"
        );
    }
    // The same guest's disk inside its own share: no conflict.
    let (_d, s) = open();
    s.claim_objects("dac/a", &[tree(Exclusive), inner(Exclusive)])
        .expect("own");
    // A sibling path with a common prefix is not inside the tree.
    let mut sib = inner(Exclusive);
    sib.path = PathBuf::from("/srv/ab/disk.img");
    sib.ancestors = vec![ident(41), ident(40)];
    sib.key = ObjectKey { dev: 7, ino: 61 };
    sib.identity = ident(61);
    s.claim_objects("dac/b", &[sib])
        .expect("/srv/ab is not below /srv/a");
}
