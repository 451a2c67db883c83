//! DAC uid/gid allocation through the store: distinct per guest, persistent across reopening
//! the store, released at stop, never an id the accounts' passwd/group use.

mod dac_support;

use dac_support::*;
use svirt_drivers::{GuestSecurity, SecurityDriver};

#[test]
fn dac_ids_are_distinct_persistent_released_and_never_system_ids() {
    let dir = tempfile::tempdir().expect("tempdir");
    // The range 400000..=400009 has 8 ids taken by the system: 5 users (uid, and gid where
    // the primary group has no group entry) and 1 group.
    let passwd = (400_000..400_005)
        .map(|u| {
            format!(
                "u{u}:x:{u}:{}::/:/bin/false\n",
                if u == 400_004 { 400_005 } else { u }
            )
        })
        .collect::<String>();
    let group = "g:x:400006:\nh:x:400007:\n";
    let acc = accounts(dir.path(), &passwd, group);
    let state = dir.path().join("state");
    let system: Vec<u32> = (400_000..=400_007).collect();

    let (a, b);
    {
        let d = dac_driver(&state, &acc, 400_000, 400_009, None);
        let plan_a = plan("guest-a", Vec::new());
        let plan_b = plan("guest-b", Vec::new());
        let mut ga = guest("guest-a");
        let mut gb = guest("guest-b");
        d.reserve(&plan_a, &mut ga).expect("reserve a");
        d.reserve(&plan_b, &mut gb).expect("reserve b");
        a = ga.ids.expect("a ids");
        b = gb.ids.expect("b ids");
        assert_ne!(a.0, b.0, "two guests share a uid");
        assert_eq!(a.0, a.1, "uid and gid are the same id");
        for id in [a.0, b.0] {
            assert!(!system.contains(&id), "{id} is a system id");
            assert!((400_000..=400_009).contains(&id));
        }
        // Idempotent: reserving again gives the same id.
        let mut again = guest("guest-a");
        d.reserve(&plan_a, &mut again).expect("again");
        assert_eq!(again.ids, Some(a));
        // The range is now full (10 ids - 8 system - 2 guests).
        let mut gc = guest("guest-c");
        let e = d
            .reserve(&plan("guest-c", Vec::new()), &mut gc)
            .expect_err("range is full");
        eprintln!("full: {e}");
    }
    {
        // Reopen: the reservations are still there.
        let d = dac_driver(&state, &acc, 400_000, 400_009, None);
        let mut ga = guest("guest-a");
        d.reserve(&plan("guest-a", Vec::new()), &mut ga)
            .expect("reserve a after reopen");
        assert_eq!(ga.ids, Some(a), "guest-a's id changed across a reopen");
        let mut gc = guest("guest-c");
        assert!(
            d.reserve(&plan("guest-c", Vec::new()), &mut gc).is_err(),
            "b's id was lost"
        );
        // Stop b: its id is free again and goes to c.
        let gb = GuestSecurity {
            ids: Some(b),
            ..guest("guest-b")
        };
        d.release(&gb).expect("release b");
        d.release(&gb).expect("release is idempotent");
        d.reserve(&plan("guest-c", Vec::new()), &mut gc)
            .expect("c gets b's id");
        assert_eq!(gc.ids, Some(b));
    }
    {
        let d = dac_driver(&state, &acc, 400_000, 400_009, None);
        // The release of b survived the reopen: b now gets nothing (c holds the last id).
        let mut gb = guest("guest-b");
        assert!(d.reserve(&plan("guest-b", Vec::new()), &mut gb).is_err());
    }
}

#[test]
fn dac_disabled_reserves_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let acc = root_accounts(dir.path());
    let d = dac_driver(&dir.path().join("state"), &acc, 500_000, 500_010, None);
    let mut p = plan("off", Vec::new());
    p.dac_enabled = false;
    let mut g = guest("off");
    d.reserve(&p, &mut g).expect("reserve");
    assert_eq!(g.ids, None);
    assert!(
        d.child_hooks(&p, &g, &exec_ctx(dir.path()))
            .expect("hooks")
            .is_empty()
    );
}
