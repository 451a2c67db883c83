//! The rows of DAC's tree database (`svirt.dac-trees.redb` beside the store) are exactly the
//! layout databases written by earlier versions hold, built here byte by byte: the `dac_trees`
//! JSON record (with the `entries` count, and without it as records from before it existed)
//! and the `dac_tree_exceptions` chunks. What the driver writes equals it, and rows written
//! that way are restored exactly.

mod dac_support;

use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use dac_support::*;
use redb::ReadableTable;
use svirt_domain::{Access, DacAction, Plan, ResourceKind, Sharing};
use svirt_drivers::dac::{DacConfig, DacDriver};
use svirt_drivers::progress::{Phase, Progress};
use svirt_drivers::{GuestSecurity, SecurityDriver};
use svirt_hostfs::FsRoot;
use svirt_store::{IdAllocator, IdConfig, Store};

const TREES: redb::TableDefinition<'_, (u64, u64), &[u8]> = redb::TableDefinition::new("dac_trees");
const TREE_EXC: redb::TableDefinition<'_, (u64, u64, u32), &[u8]> =
    redb::TableDefinition::new("dac_tree_exceptions");

const GUEST: &str = "rows-guest";

/// Entries of the share (the root first) and their modes: directories `0755`, files mostly
/// `0644`; `b` and `sub/d` differ (the exceptions).
const TREE: &[(&str, u32)] = &[
    ("", 0o755),
    ("a", 0o644),
    ("b", 0o600),
    ("sub", 0o755),
    ("sub/c", 0o644),
    ("sub/d", 0o640),
    ("sub/e", 0o644),
];

fn json_bytes(b: &[u8]) -> String {
    let v: Vec<String> = b.iter().map(u8::to_string).collect();
    format!("[{}]", v.join(","))
}

/// One exception as DAC has always stored it: `len: u32 LE, rel, ino: u64 LE`, then uid,
/// gid and mode bits (u32 LE each).
fn exception_bytes(rel: &str, ino: u64, (uid, gid, mode): (u32, u32, u32)) -> Vec<u8> {
    let mut v = (rel.len() as u32).to_le_bytes().to_vec();
    v.extend_from_slice(rel.as_bytes());
    v.extend_from_slice(&ino.to_le_bytes());
    for x in [uid, gid, mode] {
        v.extend_from_slice(&x.to_le_bytes());
    }
    v
}

/// The rows of the two tables: record rows by root (dev, ino), chunk rows by (dev, ino,
/// chunk), each with its value bytes.
type Rows = (Vec<((u64, u64), Vec<u8>)>, Vec<((u64, u64, u32), Vec<u8>)>);

struct Env {
    _dir: tempfile::TempDir,
    state: PathBuf,
    accounts: PathBuf,
    share: PathBuf,
}

impl Env {
    /// A DAC driver over `store` (it opens the tree database beside it at first use).
    fn driver(&self, store: &Arc<Store>) -> DacDriver {
        let ids = Arc::new(
            IdAllocator::open(
                store.clone(),
                IdConfig {
                    first: 640_000,
                    last: 640_010,
                    root: self.accounts.clone(),
                },
            )
            .expect("ids"),
        );
        DacDriver::new(
            DacConfig {
                accounts_root: self.accounts.clone(),
                ..Default::default()
            },
            store.clone(),
            ids,
        )
    }

    fn plan(&self) -> Plan {
        let mut r = res(
            &self.share,
            ResourceKind::FilesystemTree,
            Access::Rw,
            Sharing::Private,
            DacAction::OwnGuest { private: true },
        );
        r.resource.recursive = true;
        plan(GUEST, vec![r])
    }

    fn snap(&self) -> Vec<(u32, u32, u32)> {
        TREE.iter()
            .map(|(p, _)| owner_mode(&self.share.join(p)))
            .collect()
    }

    fn ino(&self, rel: &str) -> u64 {
        std::fs::symlink_metadata(self.share.join(rel))
            .expect("stat")
            .ino()
    }

    /// Every row of both tables.
    /// DAC's tree rows in the store's ledger.
    fn rows(&self, store: &Store) -> Rows {
        let txn = store.begin_read().expect("read");
        let records = txn
            .open_table(TREES)
            .expect("dac_trees")
            .iter()
            .expect("iter")
            .map(|r| {
                let (k, v) = r.expect("row");
                (k.value(), v.value().to_vec())
            })
            .collect();
        let chunks = txn
            .open_table(TREE_EXC)
            .expect("dac_tree_exceptions")
            .iter()
            .expect("iter")
            .map(|r| {
                let (k, v) = r.expect("row");
                (k.value(), v.value().to_vec())
            })
            .collect();
        (records, chunks)
    }
}

fn env() -> Option<Env> {
    if skip_unless_root() {
        return None;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let accounts = accounts(dir.path(), "root:x:0:0::/root:/bin/sh\n", "root:x:0:\n");
    let share = dir.path().join("share");
    std::fs::create_dir_all(share.join("sub")).expect("mkdir");
    for (p, mode) in TREE {
        let path = share.join(p);
        if !path.exists() {
            std::fs::write(&path, b"x").expect("file");
        }
        chmod(&path, *mode);
    }
    Some(Env {
        state: dir.path().join("state"),
        accounts,
        share,
        _dir: dir,
    })
}

/// A progress callback keeping the `Restoring` reports.
fn restoring_reports(dac: &DacDriver) -> Arc<Mutex<Vec<Progress>>> {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let keep = seen.clone();
    dac.set_progress(Some(Arc::new(move |p: &Progress| {
        if p.phase == Phase::Restoring {
            keep.lock().expect("reports").push(p.clone());
        }
    })));
    seen
}

#[test]
fn dac_tree_rows_keep_their_layout() {
    let Some(e) = env() else { return };
    let before = e.snap();
    let id = FsRoot::host()
        .expect("root")
        .open_object(&e.share)
        .expect("open share")
        .identity();
    let btime = id
        .btime
        .map_or("null".to_string(), |(s, n)| format!("[{s},{n}]"));
    let store = Arc::new(Store::open(&e.state).expect("store"));
    let dac = e.driver(&store);
    // Where an earlier svirt kept DAC's tree rows (part 2 writes a file there).
    let db_path = store.path().with_extension("dac-trees.redb");
    let mut g = GuestSecurity {
        name: GUEST.into(),
        level: None,
        ids: None,
    };
    let p = e.plan();
    dac.reserve(&p, &mut g).expect("reserve");
    let (uid, gid) = g.ids.expect("ids");
    // The record as earlier versions wrote it, `entries` last (`None`: a record from before
    // it existed).
    let record = |entries: Option<u64>| {
        let rule = |or: u32| format!(r#"{{"uid":{uid},"gid":{gid},"and":448,"or":{or}}}"#);
        format!(
            r#"{{"path":{},"btime":{btime},"dir":[0,0,493],"other":[0,0,420],"chunks":1,"owners":{{"dac/{GUEST}":{{"dir":{},"other":{}}}}}{}}}"#,
            json_bytes(e.share.as_os_str().as_encoded_bytes()),
            rule(0o700),
            rule(0o600),
            entries.map_or(String::new(), |n| format!(r#","entries":{n}"#)),
        )
    };
    let exc_b = exception_bytes("b", e.ino("b"), (0, 0, 0o600));
    let exc_d = exception_bytes("sub/d", e.ino("sub/d"), (0, 0, 0o640));
    let chunk_bd = [exc_b.clone(), exc_d.clone()].concat();
    let chunk_db = [exc_d, exc_b].concat();

    // 1. What the driver writes.
    dac.set_all(&p, &g).expect("set_all");
    drop(dac);
    assert!(
        !db_path.exists(),
        "the rows are in the ledger, not in a file of their own"
    );
    let (records, chunks) = e.rows(&store);
    assert_eq!(
        records,
        vec![(
            (id.dev, id.ino),
            record(Some(TREE.len() as u64)).into_bytes()
        )],
        "record row: {}",
        records
            .first()
            .map(|r| String::from_utf8_lossy(&r.1).into_owned())
            .unwrap_or_default()
    );
    assert_eq!(chunks.len(), 1, "one chunk row");
    assert_eq!(chunks[0].0, (id.dev, id.ino, 0));
    // Walk order decides which exception comes first.
    assert!(
        chunks[0].1 == chunk_bd || chunks[0].1 == chunk_db,
        "exception chunk {:?}",
        chunks[0].1
    );
    let dac = e.driver(&store);
    assert!(dac.restore_all(&p, &g).is_empty());
    assert_eq!(e.snap(), before);
    drop(dac);

    // 2. Rows written in that layout by hand over a changed tree are restored exactly, with
    //    the entry count (the progress total) and without it (a record from before it).
    //    They are written to the file an earlier svirt kept them in: the driver adopts it
    //    into the ledger (and removes it) when it opens its tree records.
    for (entries, total) in [(Some(40), 40), (None, TREE.len() as u64)] {
        for (rel, mode) in TREE {
            let path = e.share.join(rel);
            std::os::unix::fs::lchown(&path, Some(uid), Some(gid)).expect("chown");
            chmod(&path, if *mode == 0o755 { 0o700 } else { 0o600 });
        }
        {
            let db = redb::Database::create(&db_path).expect("tree database");
            let txn = db.begin_write().expect("write");
            {
                let mut t = txn.open_table(TREES).expect("dac_trees");
                t.insert((id.dev, id.ino), record(entries).as_bytes())
                    .expect("insert");
                let mut x = txn.open_table(TREE_EXC).expect("dac_tree_exceptions");
                x.insert((id.dev, id.ino, 0), chunk_db.as_slice())
                    .expect("insert");
            }
            txn.commit().expect("commit");
        }
        let dac = e.driver(&store);
        let reports = restoring_reports(&dac);
        let errors = dac.restore_all(&p, &g);
        assert!(errors.is_empty(), "{entries:?}: {errors:?}");
        assert_eq!(
            e.snap(),
            before,
            "{entries:?}: restored from hand-written rows"
        );
        let last = reports.lock().expect("reports").last().cloned();
        assert_eq!(
            last.map(|r| (r.done, r.total)),
            Some((TREE.len() as u64, total)),
            "{entries:?}: the restore's total is the recorded count, or the entries visited"
        );
        assert!(
            dac.tree_records().expect("records").is_empty(),
            "{entries:?}"
        );
        drop(dac);
        assert!(
            !db_path.exists(),
            "{entries:?}: the earlier file is adopted and removed"
        );
        let (records, chunks) = e.rows(&store);
        assert!(
            records.is_empty() && chunks.is_empty(),
            "{entries:?}: rows removed"
        );
    }
    assert!(store.list_originals().expect("originals").is_empty());
}
