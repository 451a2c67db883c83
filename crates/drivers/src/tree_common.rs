//! What the two keepers of tree originals share: the relabel engine (tables `trees` and
//! `tree_exceptions`, SELinux labels) and DAC (`dac_trees`, `dac_tree_exceptions`: owner,
//! group, mode). Both live in the store's ledger file ([`svirt_store::Store::begin_write`]),
//! beside the single objects' originals: one file, one commit order.
//!
//! Both record a tree as ONE JSON record (the dominant original and the users) plus the
//! entries whose original differs ("exceptions"), stored in chunk rows of at most
//! [`EXC_CHUNK`] entries so that no redb value grows with the tree. An exception is a
//! length-prefixed binary record ([`Record`], written with [`RecordWriter`] and read with
//! [`RecordReader`]); the two differ only in what the original is. Their tables differ only
//! in the key (DAC's `(dev, ino)`, the engine's `(model, dev, ino)`), so the table helpers
//! here take the key of chunk `c` as a closure.
//!
//! The wire format of both exception kinds is the one they had before this module existed
//! (tested byte for byte below), so existing databases read back unchanged.

use std::borrow::Borrow;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use redb::{Key, ReadableTable, Table, TableDefinition};
use serde::Serialize;
use serde::de::DeserializeOwned;
use svirt_store::{ObjectIdentity, ObjectKey, Timestamp};

use svirt_hostfs::Identity;

/// Exceptions per chunk row: 16 Ki entries of a few dozen bytes stay far below what a redb
/// value should hold, and a 1M-file tree is still only ~64 rows.
pub(crate) const EXC_CHUNK: usize = 16 * 1024;

/// A failure of a tree table: the ledger's (redb, I/O), or a record that does not decode.
/// The callers' error types each have a variant for each (`From<DbError>`).
#[derive(Debug, thiserror::Error)]
pub(crate) enum DbError {
    /// The ledger failed.
    #[error("{0}")]
    Ledger(#[from] svirt_store::Error),
    /// A stored tree record or chunk does not decode.
    #[error("{0}")]
    Corrupt(String),
}

/// Any redb error (or the store's) as a [`DbError`] (`.map_err(db_err)?`).
pub(crate) fn db_err(e: impl Into<svirt_store::Error>) -> DbError {
    DbError::Ledger(e.into())
}

/// Makes a keeper's two tree tables (`records`, `chunks`) in the ledger if missing, after
/// adopting an earlier svirt's file of them (`legacy`: the trees had files of their own).
/// The file's rows are copied in one durable transaction, then the file is removed; a
/// crash in between copies the same rows again. Returns how many rows were adopted.
pub(crate) fn open_tree_tables<R: Key + 'static, C: Key + 'static>(
    store: &svirt_store::Store,
    legacy: &Path,
    records: TableDefinition<'_, R, Bytes>,
    chunks: TableDefinition<'_, C, Bytes>,
) -> Result<u64, DbError> {
    use redb::ReadableDatabase;
    let bad = |what: String| DbError::Corrupt(format!("{}: {what}", legacy.display()));
    let moved = match std::fs::symlink_metadata(legacy) {
        Ok(m) if m.is_file() => {
            let old = redb::Database::open(legacy).map_err(|e| bad(e.to_string()))?;
            let read = old.begin_read().map_err(db_err)?;
            let txn = store.begin_write()?;
            let moved = copy_table(&read, &txn, records)? + copy_table(&read, &txn, chunks)?;
            txn.commit()?;
            drop((read, old));
            std::fs::remove_file(legacy).map_err(|e| bad(format!("remove: {e}")))?;
            moved
        }
        Ok(_) => {
            return Err(bad(
                "an earlier tree database that is not a regular file".into()
            ));
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
        Err(e) => return Err(bad(e.to_string())),
    };
    if moved > 0 {
        tracing::info!(
            rows = moved,
            file = %legacy.display(),
            "tree records of an earlier svirt moved into the ledger"
        );
    }
    // Made now so that readers never meet a missing table.
    let txn = store.begin_write()?;
    txn.open_table(records).map_err(db_err)?;
    txn.open_table(chunks).map_err(db_err)?;
    txn.commit()?;
    Ok(moved)
}

/// Copies every row of `def` from `from` to `to` (a row already under the same key in
/// `to` is kept); returns how many were copied. A table `from` lacks copies nothing.
fn copy_table<K: Key + 'static>(
    from: &redb::ReadTransaction,
    to: &redb::WriteTransaction,
    def: TableDefinition<'_, K, Bytes>,
) -> Result<u64, DbError> {
    let src = match from.open_table(def) {
        Ok(t) => t,
        Err(redb::TableError::TableDoesNotExist(_)) => return Ok(0),
        Err(e) => return Err(db_err(e)),
    };
    let mut dst = to.open_table(def).map_err(db_err)?;
    let mut moved = 0;
    for row in src.iter().map_err(db_err)? {
        let (k, v) = row.map_err(db_err)?;
        if dst.get(k.value()).map_err(db_err)?.is_none() {
            dst.insert(k.value(), v.value()).map_err(db_err)?;
            moved += 1;
        }
    }
    Ok(moved)
}

/// `dir/name` of a path relative to a tree root (`name` alone at the root, whose relative
/// path is empty).
pub(crate) use svirt_hostfs::walk::join_rel;

/// The path of `rel` (relative to a tree root, empty for the root) under `base`, for
/// messages and records.
pub(crate) fn full_path(base: &Path, rel: &[u8]) -> PathBuf {
    if rel.is_empty() {
        base.to_path_buf()
    } else {
        base.join(OsStr::from_bytes(rel))
    }
}

/// A path stored as bytes in a record.
pub(crate) fn path_of_bytes(b: &[u8]) -> PathBuf {
    PathBuf::from(OsStr::from_bytes(b))
}

/// The store's key of an object: its (dev, ino).
pub(crate) fn object_key(id: Identity) -> ObjectKey {
    ObjectKey {
        dev: id.dev,
        ino: id.ino,
    }
}

/// The store's identity of an object (what tells a replaced file from the recorded one).
pub(crate) fn store_identity(id: Identity) -> ObjectIdentity {
    ObjectIdentity {
        dev: id.dev,
        ino: id.ino,
        btime: id.btime.map(|(sec, nsec)| Timestamp { sec, nsec }),
        generation: None,
        ctime: None,
    }
}

/// Whether the tree root opened now (`id`) is the directory a record keyed `(dev, ino)` with
/// birth time `btime` was made for: same inode, and the same birth time where both are known
/// (an inode number reused by a new directory has a new one).
pub(crate) fn same_root(dev: u64, ino: u64, btime: Option<(i64, u32)>, id: Identity) -> bool {
    id.dev == dev
        && id.ino == ino
        && match (btime, id.btime) {
            (Some(a), Some(b)) => a == b,
            _ => true,
        }
}

/// Appends little-endian fields and length-prefixed byte strings to a buffer.
#[derive(Debug, Default)]
pub(crate) struct RecordWriter {
    buf: Vec<u8>,
}

impl RecordWriter {
    /// A writer with room for `n` bytes.
    pub(crate) fn with_capacity(n: usize) -> Self {
        RecordWriter {
            buf: Vec::with_capacity(n),
        }
    }

    pub(crate) fn u8(&mut self, v: u8) {
        self.buf.push(v);
    }

    pub(crate) fn u32(&mut self, v: u32) {
        self.buf.extend_from_slice(&v.to_le_bytes());
    }

    pub(crate) fn u64(&mut self, v: u64) {
        self.buf.extend_from_slice(&v.to_le_bytes());
    }

    /// `len: u32` then the bytes. Values are paths and xattrs (at most 64 KiB), far below
    /// 4 GiB.
    pub(crate) fn bytes(&mut self, v: &[u8]) {
        self.u32(v.len() as u32);
        self.buf.extend_from_slice(v);
    }

    /// `0`, or `1` then [`Self::bytes`].
    pub(crate) fn opt_bytes(&mut self, v: Option<&[u8]>) {
        match v {
            Some(v) => {
                self.u8(1);
                self.bytes(v);
            }
            None => self.u8(0),
        }
    }

    /// The bytes written.
    pub(crate) fn finish(self) -> Vec<u8> {
        self.buf
    }
}

/// Reads what [`RecordWriter`] wrote; every read is `None` when the input is too short (or
/// malformed), so corruption is an error, never a panic.
#[derive(Debug)]
pub(crate) struct RecordReader<'a> {
    b: &'a [u8],
}

impl<'a> RecordReader<'a> {
    pub(crate) fn new(b: &'a [u8]) -> Self {
        RecordReader { b }
    }

    /// Whether everything was read.
    pub(crate) fn is_empty(&self) -> bool {
        self.b.is_empty()
    }

    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.b.len() < n {
            return None;
        }
        let (h, t) = self.b.split_at(n);
        self.b = t;
        Some(h)
    }

    pub(crate) fn u8(&mut self) -> Option<u8> {
        Some(self.take(1)?[0])
    }

    pub(crate) fn u32(&mut self) -> Option<u32> {
        Some(u32::from_le_bytes(self.take(4)?.try_into().ok()?))
    }

    pub(crate) fn u64(&mut self) -> Option<u64> {
        Some(u64::from_le_bytes(self.take(8)?.try_into().ok()?))
    }

    pub(crate) fn bytes(&mut self) -> Option<&'a [u8]> {
        let n = self.u32()? as usize;
        self.take(n)
    }

    /// `Some(None)` for a `0` flag, `Some(Some(..))` for `1`; any other flag is malformed.
    pub(crate) fn opt_bytes(&mut self) -> Option<Option<&'a [u8]>> {
        match self.u8()? {
            0 => Some(None),
            1 => Some(Some(self.bytes()?)),
            _ => None,
        }
    }
}

/// One exception record of a tree: its binary form.
pub(crate) trait Record: Sized {
    /// Appends the record.
    fn write(&self, w: &mut RecordWriter);
    /// Reads one record; `None` when malformed.
    fn read(r: &mut RecordReader<'_>) -> Option<Self>;
}

/// The records one after the other (one chunk row).
pub(crate) fn encode_records<R: Record>(items: &[R]) -> Vec<u8> {
    let mut w = RecordWriter::with_capacity(items.len() * 48);
    for r in items {
        r.write(&mut w);
    }
    w.finish()
}

/// Calls `f` with every record of `b`; `None` when `b` is malformed (records before the
/// bad one have been passed to `f`).
pub(crate) fn decode_records<R: Record>(b: &[u8], mut f: impl FnMut(R)) -> Option<()> {
    let mut r = RecordReader::new(b);
    while !r.is_empty() {
        f(R::read(&mut r)?);
    }
    Some(())
}

/// The value type of every tree table: JSON records and encoded chunks.
pub(crate) type Bytes = &'static [u8];

/// Writes `items` as chunk rows `key(next)`, `key(next + 1)`, …, advancing `next` (the
/// record's chunk count) past them.
pub(crate) fn insert_chunks<'k, K: Key + 'static, R: Record>(
    t: &mut Table<'_, K, Bytes>,
    key: impl Fn(u32) -> K::SelfType<'k>,
    next: &mut u32,
    items: &[R],
) -> Result<(), DbError> {
    for chunk in items.chunks(EXC_CHUNK) {
        t.insert(key(*next), encode_records(chunk).as_slice())
            .map_err(db_err)?;
        *next += 1;
    }
    Ok(())
}

/// Decodes chunk rows `key(0)..key(chunks)` (a missing row is skipped), calling `f` with
/// every record.
pub(crate) fn read_chunks<'k, K: Key + 'static, R: Record>(
    t: &impl ReadableTable<K, Bytes>,
    key: impl Fn(u32) -> K::SelfType<'k>,
    chunks: u32,
    mut f: impl FnMut(R),
) -> Result<(), DbError> {
    for c in 0..chunks {
        if let Some(v) = t.get(key(c)).map_err(db_err)? {
            decode_records(v.value(), &mut f)
                .ok_or_else(|| DbError::Corrupt(format!("corrupt exception chunk {c}")))?;
        }
    }
    Ok(())
}

/// Removes chunk rows `key(0)..key(chunks)`.
pub(crate) fn remove_chunks<'k, K: Key + 'static>(
    t: &mut Table<'_, K, Bytes>,
    key: impl Fn(u32) -> K::SelfType<'k>,
    chunks: u32,
) -> Result<(), DbError> {
    for c in 0..chunks {
        t.remove(key(c)).map_err(db_err)?;
    }
    Ok(())
}

/// The JSON record at `key`, if any.
pub(crate) fn get_json<'k, K: Key + 'static, T: DeserializeOwned>(
    t: &impl ReadableTable<K, Bytes>,
    key: impl Borrow<K::SelfType<'k>>,
) -> Result<Option<T>, DbError> {
    match t.get(key).map_err(db_err)? {
        Some(v) => Ok(Some(serde_json::from_slice(v.value()).map_err(|e| {
            DbError::Corrupt(format!("a tree record does not decode: {e}"))
        })?)),
        None => Ok(None),
    }
}

/// Stores `value` as JSON at `key`.
pub(crate) fn put_json<'k, K: Key + 'static, T: Serialize>(
    t: &mut Table<'_, K, Bytes>,
    key: impl Borrow<K::SelfType<'k>>,
    value: &T,
) -> Result<(), DbError> {
    let bytes = serde_json::to_vec(value).map_err(svirt_store::Error::Encode)?;
    t.insert(key, bytes.as_slice()).map_err(db_err)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use redb::{Database, ReadableDatabase, ReadableTableMetadata, TableDefinition};

    use super::*;

    /// A record of DAC's shape (rel, ino, (uid, gid, mode)) for the helpers' tests; the
    /// stored layouts themselves are pinned on the real types (`*_layout_is_the_stored_one`).
    #[derive(Debug, Clone, PartialEq, Eq)]
    struct Dac(Vec<u8>, u64, (u32, u32, u32));

    impl Record for Dac {
        fn write(&self, w: &mut RecordWriter) {
            w.bytes(&self.0);
            w.u64(self.1);
            w.u32(self.2.0);
            w.u32(self.2.1);
            w.u32(self.2.2);
        }
        fn read(r: &mut RecordReader<'_>) -> Option<Self> {
            Some(Dac(
                r.bytes()?.to_vec(),
                r.u64()?,
                (r.u32()?, r.u32()?, r.u32()?),
            ))
        }
    }

    /// A record of the relabel engine's shape (rel, ino, optional label) for the helpers'
    /// tests.
    #[derive(Debug, Clone, PartialEq, Eq)]
    struct Label(Vec<u8>, u64, Option<Vec<u8>>);

    impl Record for Label {
        fn write(&self, w: &mut RecordWriter) {
            w.bytes(&self.0);
            w.u64(self.1);
            w.opt_bytes(self.2.as_deref());
        }
        fn read(r: &mut RecordReader<'_>) -> Option<Self> {
            Some(Label(
                r.bytes()?.to_vec(),
                r.u64()?,
                r.opt_bytes()?.map(<[u8]>::to_vec),
            ))
        }
    }

    fn decode_all<R: Record>(b: &[u8]) -> Option<Vec<R>> {
        let mut v = Vec::new();
        decode_records(b, |r| v.push(r))?;
        Some(v)
    }

    #[test]
    fn join_and_full_paths() {
        assert_eq!(join_rel(b"", b"a"), b"a");
        assert_eq!(join_rel(b"a", b"b"), b"a/b");
        assert_eq!(join_rel(b"a/b", b"c"), b"a/b/c");
        let base = Path::new("/srv/share");
        assert_eq!(full_path(base, b""), base);
        assert_eq!(full_path(base, b"a/b"), Path::new("/srv/share/a/b"));
        assert_eq!(path_of_bytes(b"/x/y"), Path::new("/x/y"));
    }

    /// `len: u32 LE, bytes`.
    fn prefixed(b: &[u8]) -> Vec<u8> {
        let mut v = (b.len() as u32).to_le_bytes().to_vec();
        v.extend_from_slice(b);
        v
    }

    /// DAC's exception records (`dac::tree::Exception`, the type `dac_tree_exceptions`
    /// chunks hold) as databases written by earlier versions hold them: `rel`
    /// (length-prefixed), `ino` (u64 LE), uid, gid, mode (u32 LE).
    #[test]
    fn dac_layout_is_the_stored_one() {
        use crate::dac::tree::Exception;
        let recs = vec![
            Exception {
                rel: b"d/f".to_vec(),
                ino: 7,
                orig: (1, 2, 0o644),
            },
            Exception {
                rel: Vec::new(),
                ino: u64::MAX - 1,
                orig: (600_000, u32::MAX, 0o4755),
            },
        ];
        let bytes = encode_records(&recs);
        let mut want = prefixed(b"d/f");
        want.extend_from_slice(&7u64.to_le_bytes());
        for v in [1u32, 2, 0o644] {
            want.extend_from_slice(&v.to_le_bytes());
        }
        want.extend_from_slice(&prefixed(b""));
        want.extend_from_slice(&(u64::MAX - 1).to_le_bytes());
        for v in [600_000u32, u32::MAX, 0o4755] {
            want.extend_from_slice(&v.to_le_bytes());
        }
        assert_eq!(bytes, want);
        assert_eq!(decode_all::<Exception>(&bytes), Some(recs));
    }

    /// The relabel engine's exception records (`relabel::Exception`, in
    /// `tree_exceptions` chunks): `rel` (length-prefixed), `ino` (u64 LE), then `0` (no
    /// label) or `1` and the label (length-prefixed). Its fields are the engine's: records
    /// built here byte by byte are read by its `Record` impl, checked field by field (the
    /// derived `Debug` names them), and written back to the same bytes.
    #[test]
    fn label_layout_is_the_stored_one() {
        use crate::relabel::Exception;
        let mut want = prefixed(b"a");
        want.extend_from_slice(&1u64.to_le_bytes());
        want.push(1);
        want.extend_from_slice(&prefixed(b"ctx\0"));
        want.extend_from_slice(&prefixed(b""));
        want.extend_from_slice(&2u64.to_le_bytes());
        want.push(0);
        let recs = decode_all::<Exception>(&want).expect("the engine reads the layout");
        assert_eq!(
            format!("{recs:?}"),
            format!(
                "[Exception {{ rel: {:?}, ino: 1, orig: Some({:?}) }}, \
                 Exception {{ rel: [], ino: 2, orig: None }}]",
                b"a", b"ctx\0"
            )
        );
        assert_eq!(encode_records(&recs), want, "and writes it back");
        // A flag other than 0 or 1 is malformed for the engine too.
        let mut bad = want.clone();
        if let Some(last) = bad.last_mut() {
            *last = 2;
        }
        assert_eq!(decode_all::<Exception>(&bad), None);
    }

    #[test]
    fn malformed_input_is_none_not_a_panic() {
        let bytes = encode_records(&[Dac(b"name".to_vec(), 9, (1, 2, 3))]);
        for n in 1..bytes.len() {
            assert_eq!(decode_all::<Dac>(&bytes[..n]), None, "cut at {n}");
        }
        // A length beyond the input.
        let mut huge = u32::MAX.to_le_bytes().to_vec();
        huge.extend_from_slice(b"x");
        assert_eq!(decode_all::<Dac>(&huge), None);
        // An optional flag other than 0 or 1.
        let mut bad = encode_records(&[Label(b"a".to_vec(), 1, None)]);
        if let Some(last) = bad.last_mut() {
            *last = 2;
        }
        assert_eq!(decode_all::<Label>(&bad), None);
        assert_eq!(decode_all::<Label>(&[]), Some(Vec::new()));
    }

    #[test]
    fn identity_helpers() {
        let id = Identity {
            dev: 5,
            ino: 6,
            btime: Some((10, 20)),
        };
        assert_eq!(object_key(id), ObjectKey { dev: 5, ino: 6 });
        let s = store_identity(id);
        assert_eq!((s.dev, s.ino), (5, 6));
        assert_eq!(s.btime, Some(Timestamp { sec: 10, nsec: 20 }));
        assert!(same_root(5, 6, Some((10, 20)), id));
        assert!(same_root(5, 6, None, id), "no recorded birth time");
        assert!(
            same_root(5, 6, Some((1, 1)), Identity { btime: None, ..id }),
            "none reported now"
        );
        assert!(!same_root(5, 6, Some((10, 21)), id), "a new directory");
        assert!(!same_root(5, 7, Some((10, 20)), id));
        assert!(!same_root(4, 6, Some((10, 20)), id));
    }

    const ROWS: TableDefinition<'_, (&str, u64, u32), Bytes> = TableDefinition::new("rows");
    const RECS: TableDefinition<'_, (u64, u64), Bytes> = TableDefinition::new("recs");

    #[test]
    fn chunks_and_json_in_a_real_database() {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = Database::create(dir.path().join("t.redb")).expect("db");
        // Two chunks and a bit, under a (str, u64, u32) key as the engine uses.
        let items: Vec<Label> = (0..(2 * EXC_CHUNK + 3) as u64)
            .map(|i| {
                Label(
                    format!("d/{i}").into_bytes(),
                    i,
                    (i % 2 == 0).then(|| vec![1, 2]),
                )
            })
            .collect();
        let mut chunks = 0u32;
        let txn = db.begin_write().expect("write");
        {
            let mut t = txn.open_table(ROWS).expect("table");
            insert_chunks(&mut t, |c| ("selinux", 42, c), &mut chunks, &items).expect("insert");
            let mut r = txn.open_table(RECS).expect("table");
            put_json(&mut r, (1, 2), &vec!["a".to_string()]).expect("put");
        }
        txn.commit().expect("commit");
        assert_eq!(chunks, 3);
        let txn = db.begin_read().expect("read");
        let t = txn.open_table(ROWS).expect("table");
        let mut back = Vec::new();
        read_chunks(&t, |c| ("selinux", 42, c), chunks, |r: Label| back.push(r)).expect("read");
        assert_eq!(back, items);
        let mut other = Vec::new();
        read_chunks(&t, |c| ("dac", 42, c), chunks, |r: Label| other.push(r)).expect("read");
        assert!(other.is_empty(), "another key's rows are not read");
        let r = txn.open_table(RECS).expect("table");
        assert_eq!(
            get_json::<_, Vec<String>>(&r, (1, 2)).expect("get"),
            Some(vec!["a".to_string()])
        );
        assert_eq!(get_json::<_, Vec<String>>(&r, (1, 3)).expect("get"), None);
        drop((t, r, txn));

        // A corrupt row is an error naming the chunk.
        let txn = db.begin_write().expect("write");
        {
            let mut t = txn.open_table(ROWS).expect("table");
            t.insert(("selinux", 42, 1), [1u8, 0].as_slice())
                .expect("insert");
        }
        txn.commit().expect("commit");
        let txn = db.begin_read().expect("read");
        let t = txn.open_table(ROWS).expect("table");
        let err =
            read_chunks(&t, |c| ("selinux", 42, c), chunks, |_: Label| {}).expect_err("corrupt");
        assert!(
            matches!(&err, DbError::Corrupt(m) if m == "corrupt exception chunk 1"),
            "{err:?}"
        );
        drop((t, txn));

        let txn = db.begin_write().expect("write");
        {
            let mut t = txn.open_table(ROWS).expect("table");
            remove_chunks(&mut t, |c| ("selinux", 42, c), chunks).expect("remove");
            assert!(t.is_empty().expect("len"));
        }
        txn.commit().expect("commit");
    }
}
