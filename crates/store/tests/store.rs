#![allow(clippy::unwrap_used)] // test helpers outside #[test] fns: a failed unwrap is a failed test
//! Originals, guests and uid/gid allocation against real database files.

use std::collections::{BTreeMap, HashSet};
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use svirt_store::{
    Error, IdAllocator, IdConfig, ObjectIdentity, ObjectKey, Original, RecordOutcome, Store,
    Timestamp,
};

fn original(path: &str, label: &[u8], uid: u32, btime: i64) -> (ObjectKey, Original) {
    let key = ObjectKey {
        dev: 64769,
        ino: 1234,
    };
    (
        key,
        Original {
            path: PathBuf::from(path),
            selinux_label: Some(label.to_vec()),
            smack_label: None,
            uid,
            gid: uid,
            mode: 0o640,
            identity: ObjectIdentity {
                dev: key.dev,
                ino: key.ino,
                btime: Some(Timestamp {
                    sec: btime,
                    nsec: 7,
                }),
                generation: None,
                ctime: Some(Timestamp {
                    sec: btime + 5,
                    nsec: 0,
                }),
            },
            model_flags: BTreeMap::from([("selinux".to_string(), 1)]),
        },
    )
}

#[test]
fn originals_are_reference_counted_and_survive_restart() {
    let dir = tempfile::tempdir().unwrap();
    let (key, orig) = original(
        "/var/lib/images/a.qcow2",
        b"system_u:object_r:virt_image_t:s0\0",
        0,
        1000,
    );
    {
        let s = Store::open(dir.path()).unwrap();
        assert_eq!(
            s.record_original_if_absent(key, &orig, "vm1").unwrap(),
            RecordOutcome::Recorded
        );
        // A second guest must not overwrite the original with the state svirt already set.
        let mut relabeled = orig.clone();
        relabeled.selinux_label = Some(b"system_u:object_r:svirt_image_t:s0:c1,c2\0".to_vec());
        relabeled.uid = 300_001;
        relabeled.model_flags = BTreeMap::from([("dac".to_string(), 2)]);
        match s.record_original_if_absent(key, &relabeled, "vm2").unwrap() {
            RecordOutcome::Joined { original, owners } => {
                assert_eq!(owners, 2);
                assert_eq!(original.selinux_label, orig.selinux_label);
                assert_eq!(original.uid, 0);
                assert_eq!(original.model_flags.get("dac"), Some(&2));
                assert_eq!(original.model_flags.get("selinux"), Some(&1));
            }
            o => panic!("{o:?}"),
        }
        // Retried by the same guest (e.g. after a crash): nothing changes.
        assert!(matches!(
            s.record_original_if_absent(key, &orig, "vm1").unwrap(),
            RecordOutcome::AlreadyOwner { .. }
        ));
        assert_eq!(s.originals_for_owner("vm1").unwrap().len(), 1);
        assert_eq!(s.originals_for_owner("vm").unwrap().len(), 0);
        assert_eq!(s.release_original(key, "vm1").unwrap(), None);
        assert_eq!(
            s.release_original(key, "vm1").unwrap(),
            None,
            "double release is a no-op"
        );
    }
    let s = Store::open(dir.path()).unwrap();
    let list = s.list_originals().unwrap();
    assert_eq!(list.len(), 1);
    assert_eq!(list[0].1.owners.iter().collect::<Vec<_>>(), vec!["vm2"]);
    assert!(s.originals_for_owner("vm1").unwrap().is_empty());
    assert!(s.add_original_model_flags(key, "selinux", 4).unwrap());
    let back = s.release_original(key, "vm2").unwrap().unwrap();
    assert_eq!(back.selinux_label, orig.selinux_label);
    assert_eq!(back.uid, 0);
    assert_eq!(back.model_flags.get("selinux"), Some(&5));
    assert!(s.list_originals().unwrap().is_empty());
    assert!(s.get_original(key).unwrap().is_none());
    assert!(s.originals_for_owner("vm2").unwrap().is_empty());
    assert!(!s.add_original_model_flags(key, "dac", 1).unwrap());
}

#[test]
fn replaced_inode_is_detected_by_birth_time() {
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open(dir.path()).unwrap();
    let (key, old) = original("/srv/x.img", b"a\0", 10, 1000);
    s.record_original_if_absent(key, &old, "crashed-vm")
        .unwrap();
    // Same (dev, ino), later birth time: the file was deleted and the inode reused.
    let (_, new) = original("/srv/y.img", b"b\0", 20, 2000);
    match s.record_original_if_absent(key, &new, "vm").unwrap() {
        RecordOutcome::ReplacedStale { stale } => {
            assert_eq!(stale.original, old);
            assert!(stale.owners.contains("crashed-vm"));
        }
        o => panic!("{o:?}"),
    }
    assert!(s.originals_for_owner("crashed-vm").unwrap().is_empty());
    assert_eq!(s.release_original(key, "crashed-vm").unwrap(), None);
    assert_eq!(s.release_original(key, "vm").unwrap(), Some(new));
}

#[test]
fn non_utf8_paths_and_missing_labels_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open(dir.path()).unwrap();
    let (key, mut o) = original("/x", b"", 0, 1);
    o.path = Path::new(OsStr::from_bytes(b"/srv/\xff\xfe.img")).to_path_buf();
    o.selinux_label = None;
    o.identity.btime = None;
    s.record_original_if_absent(key, &o, "vm").unwrap();
    drop(s);
    let s = Store::open(dir.path()).unwrap();
    assert_eq!(s.get_original(key).unwrap().unwrap().original, o);
    assert!(matches!(
        s.record_original_if_absent(key, &o, ""),
        Err(Error::BadOwner(_))
    ));
}

#[test]
fn guests_put_get_delete_list() {
    let dir = tempfile::tempdir().unwrap();
    {
        let s = Store::open(dir.path()).unwrap();
        s.put_guest("vm1", "defined", br#"{"name":"vm1"}"#).unwrap();
        s.put_guest("vm2", "running", b"{}").unwrap();
        s.put_guest("vm1", "running", br#"{"name":"vm1","v":2}"#)
            .unwrap();
        assert!(s.delete_guest("vm2").unwrap());
        assert!(!s.delete_guest("vm2").unwrap());
    }
    let s = Store::open(dir.path()).unwrap();
    let g = s.get_guest("vm1").unwrap().unwrap();
    assert_eq!(
        (g.state.as_str(), g.record.as_slice()),
        ("running", &br#"{"name":"vm1","v":2}"#[..])
    );
    assert!(s.get_guest("vm2").unwrap().is_none());
    let names: Vec<_> = s
        .list_guests()
        .unwrap()
        .into_iter()
        .map(|g| g.name)
        .collect();
    assert_eq!(names, vec!["vm1"]);
}

/// A temporary root with its own etc/passwd, etc/group and etc/subuid.
fn fake_root() -> tempfile::TempDir {
    let root = tempfile::tempdir().unwrap();
    std::fs::create_dir(root.path().join("etc")).unwrap();
    std::fs::write(
        root.path().join("etc/passwd"),
        "root:x:0:0:root:/root:/bin/bash\n\
         # comment\n\
         svc:x:1001:1002::/:/usr/sbin/nologin\n\
         broken line\n\
         +nis::::::\n",
    )
    .unwrap();
    std::fs::write(root.path().join("etc/group"), "root:x:0:\nops:x:1003:svc\n").unwrap();
    std::fs::write(root.path().join("etc/subuid"), "alice:1010:3\n").unwrap();
    root
}

#[test]
fn uid_allocator_skips_system_ids_and_persists() {
    let root = fake_root();
    let dir = tempfile::tempdir().unwrap();
    let config = IdConfig {
        first: 1000,
        last: 1019,
        root: root.path().to_path_buf(),
    };
    let system: HashSet<u32> = [1001, 1002, 1003, 1010, 1011, 1012].into();
    let mut got = HashSet::new();
    {
        let store = Arc::new(Store::open(dir.path()).unwrap());
        let ids = IdAllocator::open(store, config.clone()).unwrap();
        assert_eq!(ids.system_ids(), system);
        assert_eq!(ids.free(), 14);
        for i in 0..10 {
            let id = ids.allocate(&format!("vm{i}")).unwrap();
            assert!(!system.contains(&id) && (1000..=1019).contains(&id), "{id}");
            assert!(got.insert(id));
            assert_eq!(
                ids.allocate(&format!("vm{i}")).unwrap(),
                id,
                "one id per guest"
            );
        }
        let e = ids.reserve(1002, "static").unwrap_err();
        assert!(matches!(e, Error::IdIsSystem { id: 1002, .. }), "{e:?}");
        assert!(matches!(
            ids.reserve(5, "static"),
            Err(Error::IdOutOfRange { .. })
        ));
    }
    // Reopen: the 10 reservations are back and the remaining 4 are handed out, then exhaustion.
    let store = Arc::new(Store::open(dir.path()).unwrap());
    let ids = IdAllocator::open(store.clone(), config.clone()).unwrap();
    assert_eq!(store.id_reservations().unwrap().len(), 10);
    assert_eq!(ids.free(), 4);
    let vm3 = ids.id_of("vm3").unwrap();
    assert_eq!(ids.owner_of(vm3).as_deref(), Some("vm3"));
    let e = ids.reserve(vm3, "intruder").unwrap_err();
    assert!(e.to_string().contains("vm3"), "{e}");
    // An account created while we run is seen before the next allocation.
    let free_now: Vec<u32> = (1000..=1019)
        .filter(|i| !system.contains(i) && !got.contains(i))
        .collect();
    let newcomer = free_now[0];
    let mut passwd = std::fs::read_to_string(root.path().join("etc/passwd")).unwrap();
    passwd.push_str(&format!("late:x:{newcomer}:{newcomer}::/:/bin/false\n"));
    std::fs::write(root.path().join("etc/passwd"), passwd).unwrap();
    for i in 0..3 {
        let id = ids.allocate(&format!("more{i}")).unwrap();
        assert!(
            id != newcomer && !system.contains(&id) && got.insert(id),
            "{id}"
        );
    }
    let e = ids.allocate("one-too-many").unwrap_err();
    assert!(
        matches!(
            e,
            Error::IdsExhausted {
                first: 1000,
                last: 1019,
                ..
            }
        ),
        "{e:?}"
    );
    assert!(e.to_string().contains("1000..=1019"), "{e}");
    // Release restores exactly one id.
    ids.release(vm3, "vm3").unwrap();
    assert!(matches!(
        ids.release(vm3, "vm3"),
        Err(Error::NotOwner { .. })
    ));
    assert_eq!(ids.allocate("last").unwrap(), vm3);
}

#[test]
fn uid_allocator_concurrent_and_missing_passwd() {
    let root = fake_root();
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(Store::open(dir.path()).unwrap());
    let ids = Arc::new(
        IdAllocator::open(
            store.clone(),
            IdConfig {
                first: 300_000,
                last: 300_199,
                root: root.path().to_path_buf(),
            },
        )
        .unwrap(),
    );
    let threads: Vec<_> = (0..8)
        .map(|t| {
            let ids = ids.clone();
            std::thread::spawn(move || {
                (0..25)
                    .map(|i| ids.allocate(&format!("t{t}-{i}")).unwrap())
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let mut all = HashSet::new();
    for t in threads {
        for id in t.join().unwrap() {
            assert!(all.insert(id));
        }
    }
    assert_eq!(all.len(), 200);
    assert!(ids.allocate("x").is_err());

    let empty = tempfile::tempdir().unwrap();
    let e = IdAllocator::open(
        store,
        IdConfig {
            root: empty.path().to_path_buf(),
            ..IdConfig::default()
        },
    )
    .unwrap_err();
    assert!(matches!(e, Error::SystemDb { .. }), "{e:?}");
}

#[test]
fn originals_recorded_many_in_one_transaction() {
    let dir = tempfile::tempdir().unwrap();
    let (k1, o1) = original("/img/a", b"a_t\0", 0, 1000);
    let (_, mut o2) = original("/img/b", b"b_t\0", 5, 2000);
    let k2 = ObjectKey {
        dev: 64769,
        ino: 99,
    };
    o2.identity.ino = 99;
    // The same object twice (a file inside a listed tree): flags merge, the first value
    // stays the original.
    let mut o1_again = o1.clone();
    o1_again.uid = 4242;
    o1_again.model_flags = BTreeMap::from([("dac".to_string(), 2)]);
    {
        let s = Store::open(dir.path()).unwrap();
        assert!(
            s.record_originals_if_absent_many(&[], "vm1")
                .unwrap()
                .is_empty()
        );
        let out = s
            .record_originals_if_absent_many(
                &[(k1, o1.clone()), (k2, o2.clone()), (k1, o1_again)],
                "vm1",
            )
            .unwrap();
        assert_eq!(out.len(), 3);
        assert_eq!(out[0], RecordOutcome::Recorded);
        assert_eq!(out[1], RecordOutcome::Recorded);
        assert!(
            matches!(&out[2], RecordOutcome::AlreadyOwner { original } if original.uid == 0),
            "{:?}",
            out[2]
        );
        // A second guest joins both in one call.
        let out = s
            .record_originals_if_absent_many(&[(k1, o1.clone()), (k2, o2.clone())], "vm2")
            .unwrap();
        assert!(matches!(out[0], RecordOutcome::Joined { owners: 2, .. }));
        assert!(matches!(out[1], RecordOutcome::Joined { owners: 2, .. }));
        // All or nothing: a bad owner records nothing.
        assert!(
            s.record_originals_if_absent_many(&[(k1, o1.clone())], "")
                .is_err()
        );
    }
    let s = Store::open(dir.path()).unwrap();
    let r1 = s.get_original(k1).unwrap().unwrap();
    assert_eq!(r1.original.uid, 0);
    assert_eq!(r1.original.model_flags.get("dac"), Some(&2));
    assert_eq!(r1.original.model_flags.get("selinux"), Some(&1));
    assert_eq!(r1.owners.len(), 2);
    let mine: Vec<ObjectKey> = s
        .originals_for_owner("vm1")
        .unwrap()
        .into_iter()
        .map(|(k, _)| k)
        .collect();
    assert_eq!(mine, vec![k2, k1]);
}
