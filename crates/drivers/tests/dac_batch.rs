//! DAC records the originals of all a guest's single objects in one durable transaction
//! before the first change, and a tree's in one tree record: an object named twice (a file
//! inside a listed tree, listed again) ends up as if the changes were made one after the
//! other (tree first) and is restored exactly; a batch that cannot be recorded changes
//! nothing.

mod dac_support;

use std::path::Path;
use std::sync::Arc;

use dac_support::*;
use svirt_domain::{Access, DacAction, ResourceKind, Sharing};
use svirt_drivers::dac::{DacConfig, DacDriver, owner_key};
use svirt_drivers::{GuestSecurity, SecurityDriver};
use svirt_store::Store;

fn file(p: &Path, mode: u32) {
    std::fs::write(p, b"data").expect("write");
    chmod(p, mode);
}

fn driver(dir: &Path) -> (DacDriver, Arc<Store>) {
    let config = DacConfig {
        accounts_root: root_accounts(dir),
        ..Default::default()
    };
    let store = Arc::new(Store::open(&dir.join("state")).expect("store"));
    (
        dac_driver_on(store.clone(), 600_200, 600_250, config),
        store,
    )
}

#[test]
fn dac_batch_merges_repeats_and_records_each_object_once() {
    if skip_unless_root() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let (d, store) = driver(dir.path());
    let tree = dir.path().join("tree");
    std::fs::create_dir_all(tree.join("sub")).expect("mkdir");
    chmod(&tree, 0o755);
    chmod(&tree.join("sub"), 0o700);
    let a = tree.join("a");
    let b = tree.join("sub/b");
    let img = dir.path().join("x.img");
    file(&a, 0o644);
    file(&b, 0o600);
    file(&img, 0o640);
    let paths = [
        tree.clone(),
        tree.join("sub"),
        a.clone(),
        b.clone(),
        img.clone(),
    ];
    let before: Vec<_> = paths.iter().map(|p| owner_mode(p)).collect();
    let p = plan(
        "batch",
        vec![
            private_tree(&tree),
            // `a` again, after the tree: read granted on top of the tree's change.
            res(
                &a,
                ResourceKind::Cdrom,
                Access::Ro,
                Sharing::ReadOnlyContent,
                DacAction::GrantRead,
            ),
            disk(&img),
            // The image twice.
            disk(&img),
        ],
    );
    let mut g = guest("batch");
    d.reserve(&p, &mut g).expect("reserve");
    let (u, gid) = g.ids.expect("ids");
    d.set_all(&p, &g).expect("set_all");
    // Sequential semantics: the tree made `a` the guest's 0600, then the read grant added
    // `user:<uid>:r--` and a mask `r--` (shown as the group bits): 0640, "other" still none.
    assert_eq!(owner_mode(&a), (u, gid, 0o640));
    assert!(get_acl(&a).is_some(), "the read grant is an ACL");
    assert_eq!(owner_mode(&b), (u, gid, 0o600));
    assert_eq!(owner_mode(&tree), (u, gid, 0o700));
    assert_eq!(owner_mode(&img), (u, gid, 0o600));
    // The tree has ONE record (its originals); the objects named on their own have one
    // each (the image once, though named twice).
    let trees = d.tree_records().expect("tree records");
    assert_eq!(
        trees,
        vec![(tree.clone(), vec![owner_key("batch")])],
        "one tree record"
    );
    let recs = store
        .originals_for_owner(&owner_key("batch"))
        .expect("originals");
    assert_eq!(recs.len(), 2, "one record per single object: {recs:?}");
    let rec_a = recs
        .iter()
        .find(|(_, r)| r.original.path == a)
        .expect("record of a");
    // Named after the tree: its own record holds the state the tree left, and restore
    // puts it back through that, then through the tree's record.
    assert_eq!(
        (rec_a.1.original.uid, rec_a.1.original.mode),
        (u, 0o600),
        "{rec_a:?}"
    );
    assert!(d.restore_all(&p, &g).is_empty());
    let after: Vec<_> = paths.iter().map(|p| owner_mode(p)).collect();
    assert_eq!(after, before);
    assert!(store.list_originals().expect("list").is_empty());
    assert!(d.tree_records().expect("tree records").is_empty());
    d.release(&g).expect("release");
}

#[test]
fn dac_batch_not_recorded_changes_nothing() {
    if skip_unless_root() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let (d, store) = driver(dir.path());
    let one = dir.path().join("one.img");
    let two = dir.path().join("two.img");
    file(&one, 0o644);
    file(&two, 0o644);
    let before = (owner_mode(&one), owner_mode(&two));
    // An owner name the store refuses (too long): the batch commit fails, and it comes
    // before every change.
    let name = "n".repeat(300);
    let p = plan(&name, vec![disk(&one), disk(&two)]);
    let g = GuestSecurity {
        name,
        level: None,
        ids: Some((600_240, 600_240)),
    };
    let e = d.set_all(&p, &g).expect_err("must fail");
    eprintln!("expected failure: {e}");
    assert_eq!((owner_mode(&one), owner_mode(&two)), before);
    assert!(store.list_originals().expect("list").is_empty());
}
