//! Trees: one record per tree (the dominant original and the exceptions), the labeling
//! walk and its rollback, restore and release.

use super::*;

impl Relabeler {
    /// Undoes one tree of a failed labeling, under the tree's lock.
    pub(super) fn rollback_tree(
        &self,
        owner: &str,
        work: &TreeUndo,
        undo_record: Option<(TreeKey, bool)>,
    ) {
        let _lock = work.root_key.map(|k| self.store.lock_object(k));
        let Some((tkey, created)) = undo_record else {
            // Not recorded (not restored at stop): our own writes back.
            self.tree_rollback(work);
            return;
        };
        let rec = match self.tree_get(&tkey) {
            Ok(r) => r,
            Err(e) => {
                // Unknown users: leave labels and record as they are for `recover`.
                tracing::error!("rollback: reading tree record: {e}");
                return;
            }
        };
        let others = rec
            .as_ref()
            .is_some_and(|r| r.owners.iter().any(|o| o != owner));
        let r = if others {
            // A guest uses the tree now (it joined after us, or we joined it): its labels stay.
            self.tree_release(&tkey, owner, false)
        } else if created {
            // Ours alone: exactly our writes back, then the record goes.
            self.tree_rollback(work);
            self.tree_release(&tkey, owner, true)
        } else {
            // We joined a record whose other users have all stopped meanwhile: we are its
            // last user, so the whole tree gets its originals back, as at a stop.
            match rec {
                Some(rec) => self
                    .tree_restore(&tkey, &rec)
                    .and_then(|_| self.tree_delete(&tkey)),
                None => Ok(()),
            }
        };
        if let Err(e) = r {
            tracing::error!("rollback: tree record: {e}");
        }
    }

    // ---- trees ----

    pub(super) fn label_tree(
        &self,
        owner: &str,
        j: &LabelJob,
        root_obj: &Object,
        applied: &mut Applied,
        undo: &mut Vec<Undo>,
    ) -> Result<(), RelabelError> {
        // The tree's record is committed durably to the ledger before the tree carries the
        // guest's label; that commit also makes what the store holds without an fsync (the
        // guest's level, its record, its claims) durable (one file, one commit order).
        let want = self.attr.bytes(&j.label);
        let id = root_obj.identity();
        let tkey = TreeKey {
            model: self.attr.name(),
            dev: id.dev,
            ino: id.ino,
        };
        // The whole tree against other guests' labeling or release of it.
        let _lock = self.store.lock_object(object_key(id));
        let existing = self.tree_get(&tkey)?;
        let existing = match existing {
            Some(r) if same_root(tkey.dev, tkey.ino, r.btime, id) => Some(r),
            Some(_) => {
                // An earlier directory at the same inode: stale.
                self.tree_delete(&tkey)?;
                None
            }
            None => None,
        };
        if let Some(r) = &existing {
            let others: Vec<&String> = r.owners.iter().filter(|o| o.as_str() != owner).collect();
            if !others.is_empty() && trim(&r.target) != trim(&want) {
                return Err(in_use(j, &others, show(&Some(r.target.clone()))));
            }
        }
        let root_dir = root_obj
            .open_as_dir()
            .map_err(io_err("open directory", &j.path))?;
        let root_cur = match root_dir.get_xattr(self.attr.xattr) {
            Ok(v) => v,
            Err(e) if is_soft_errno(e.raw_os_error()) => {
                applied.warnings.push(soft_warning(root_obj, &e));
                return Ok(());
            }
            Err(e) => return Err(io_err("read label", &j.path)(e)),
        };
        // One pass for the common case: the tree's record (target, and the "dominant"
        // original: the existing record's, else the root's own label) is committed before
        // the walk; an entry whose original is the dominant one is then written as soon as
        // it is read. Entries with another original are written only after their exception
        // record is committed, at the end.
        let dominant = existing
            .as_ref()
            .map_or_else(|| root_cur.clone(), |r| r.dominant.clone());
        let mut undo_record = None;
        let fresh = existing.is_none();
        if j.restore {
            let created = existing.is_none();
            self.tree_record(&tkey, j, id, &want, existing, owner, &[], dominant.clone())?;
            undo_record = Some((tkey.clone(), created));
            self.fault("after-record")?;
        }
        let eager = if j.restore {
            Eager::IfOriginal {
                dominant: &dominant,
                // With an earlier record, entries at the target were labeled under it (or
                // created inside the labeled tree): their original is already accounted for.
                record_same: fresh,
            }
        } else {
            Eager::All
        };
        let (work, scanned, warns, scan_error) = self.scan(&j.path, root_dir, &want, eager);
        applied.warnings.extend(warns);
        let eager_done: u64 = work.iter().map(|w| w.eager.len() as u64).sum();
        applied.changed += eager_done;
        let mut tree_undo = TreeUndo {
            work,
            root_key: Some(object_key(id)),
            root: None,
            done: Vec::new(),
            eager_orig: j.restore.then(|| dominant.clone()),
        };
        let root_needs = !label_eq(&root_cur, &want);
        let deferred: u64 = tree_undo.work.iter().map(|w| w.items.len() as u64).sum();
        let same: u64 = tree_undo.work.iter().map(|w| w.same.len() as u64).sum();
        let total = eager_done + deferred + u64::from(root_needs);
        applied.unchanged += (scanned + 1).saturating_sub(total);
        let step = || -> Result<(), RelabelError> {
            if let Some(e) = scan_error {
                return Err(e);
            }
            if j.restore && (deferred > 0 || same > 0 || (root_needs && root_cur != dominant)) {
                let mut entries: Vec<EntryRef<'_>> =
                    Vec::with_capacity((deferred + same) as usize + 1);
                if root_needs && root_cur != dominant {
                    entries.push((Vec::new(), id.ino, &root_cur));
                }
                for w in &tree_undo.work {
                    for it in w.items.iter().chain(&w.same) {
                        entries.push((join_rel(&w.rel, it.name.as_bytes()), it.ino, &it.orig));
                    }
                }
                let current = self.tree_get(&tkey)?;
                self.tree_record(
                    &tkey,
                    j,
                    id,
                    &want,
                    current,
                    owner,
                    &entries,
                    dominant.clone(),
                )?;
            }
            if root_needs {
                root_obj
                    .set_xattr(self.attr.xattr, &want)
                    .map_err(io_err("set label", &j.path))?;
                tree_undo.root = Some((j.path.clone(), id, root_cur.clone()));
                applied.changed += 1;
            }
            let already = eager_done + u64::from(tree_undo.root.is_some());
            let res = self.apply(&j.path, &tree_undo.work, &want, (already, total));
            applied.changed += res.done;
            tree_undo.set_done(&res.done_per_dir);
            if let Some(e) = res.error {
                return Err(e);
            }
            // Only a progress total for the restore: a failure to keep it must not undo
            // the labeling.
            if j.restore
                && let Err(e) = self.tree_note_entries(&tkey, already + res.done)
            {
                tracing::warn!("{}: entry count not recorded: {e}", j.path.display());
            }
            Ok(())
        };
        let r = step();
        // The undo entry owns the work list and knows what was written.
        undo.push(Undo::Tree {
            work: tree_undo,
            undo_record,
        });
        r?;
        self.fault("after-label")?;
        Ok(())
    }

    /// Parallel walk: every directory below `root` (not following symlinks, not crossing
    /// mounts), with the entries whose label is not `want` (written during the walk as
    /// `eager` says). Returns the work, the number of entries seen, warnings and the first
    /// hard error.
    #[allow(clippy::type_complexity)]
    pub(super) fn scan(
        &self,
        path: &Path,
        root: Dir,
        want: &[u8],
        eager: Eager<'_>,
    ) -> (Vec<DirWork>, u64, Vec<Warning>, Option<RelabelError>) {
        let out: Mutex<Vec<DirWork>> = Mutex::new(Vec::new());
        let errors: Mutex<Vec<RelabelError>> = Mutex::new(Vec::new());
        let warnings: Mutex<Vec<Warning>> = Mutex::new(Vec::new());
        let seen = AtomicU64::new(0);
        let abort = AtomicBool::new(false);
        let ctx = ScanCtx {
            base: path,
            want,
            out: &out,
            errors: &errors,
            warnings: &warnings,
            seen: &seen,
            abort: &abort,
            eng: self,
            eager,
        };
        svirt_hostfs::walk::par_walk(&self.pool, root, &ctx);
        let errors = errors.into_inner().unwrap_or_else(|e| e.into_inner());
        (
            out.into_inner().unwrap_or_else(|e| e.into_inner()),
            seen.load(Ordering::Relaxed),
            warnings.into_inner().unwrap_or_else(|e| e.into_inner()),
            errors.into_iter().next(),
        )
    }

    /// Writes `want` on every item, in parallel; stops at the first hard error.
    /// `already`: entries of this tree written before (eagerly during the walk, the root).
    pub(super) fn apply(
        &self,
        path: &Path,
        work: &[DirWork],
        want: &[u8],
        (already, total): (u64, u64),
    ) -> ApplyResult {
        // Split big directories so both workers stay busy.
        const SLICE: usize = 2048;
        let mut tasks: Vec<(usize, usize, usize)> = Vec::new();
        for (i, w) in work.iter().enumerate() {
            let mut s = 0;
            while s < w.items.len() {
                let e = (s + SLICE).min(w.items.len());
                tasks.push((i, s, e));
                s = e;
            }
        }
        let done = AtomicU64::new(0);
        let abort = AtomicBool::new(false);
        let error: Mutex<Option<RelabelError>> = Mutex::new(None);
        let work_ref: &[DirWork] = work;
        let progress = lock(&self.progress).clone();
        let results: Vec<usize> = {
            use rayon::prelude::*;
            self.pool.install(|| {
                tasks
                    .par_iter()
                    .map(|&(i, s, e)| {
                        let w = &work_ref[i];
                        let mut n = 0;
                        let mut tally = Tally::new(&done, REPORT_EVERY);
                        for it in &w.items[s..e] {
                            if abort.load(Ordering::Relaxed) {
                                break;
                            }
                            if let Err(err) = w.dir.set_xattr_at(&it.name, self.attr.xattr, want) {
                                if err.raw_os_error() == Some(libc::ENOENT) {
                                    // Removed since the scan: nothing to label or restore.
                                    n += 1;
                                    continue;
                                }
                                abort.store(true, Ordering::Relaxed);
                                let p = full_path(path, &join_rel(&w.rel, it.name.as_bytes()));
                                let mut slot = lock(&error);
                                if slot.is_none() {
                                    *slot = Some(RelabelError::Io {
                                        op: "set label",
                                        path: p,
                                        source: err,
                                    });
                                }
                                break;
                            }
                            n += 1;
                            if let (Some(d), Some(f)) = (tally.bump(), &progress) {
                                report_at((path, Phase::Labeling), (already + d, total), &**f);
                            }
                        }
                        n
                    })
                    .collect()
            })
        };
        let d = done.load(Ordering::Relaxed);
        self.report(&Progress {
            path: path.to_path_buf(),
            phase: Phase::Labeling,
            done: already + d,
            total,
        });
        let error = error.into_inner().unwrap_or_else(|e| e.into_inner());
        ApplyResult {
            done: d,
            done_per_dir: DoneMap {
                tasks,
                task_done: results,
            },
            error,
        }
    }

    pub(super) fn tree_rollback(&self, u: &TreeUndo) {
        use rayon::prelude::*;
        self.pool.install(|| {
            u.work.par_iter().enumerate().for_each(|(i, w)| {
                let eager = w
                    .eager
                    .iter()
                    .map(|it| (it, u.eager_orig.as_ref().unwrap_or(&it.orig)));
                let written = w
                    .items
                    .iter()
                    .enumerate()
                    .filter(|(k, _)| u.is_done(i, *k))
                    .map(|(_, it)| (it, &it.orig))
                    .chain(eager);
                for (it, orig) in written {
                    let r = match orig {
                        Some(v) => w.dir.set_xattr_at(&it.name, self.attr.xattr, v),
                        None => remove_at(&w.dir, &it.name, self.attr.xattr),
                    };
                    if let Err(e) = r
                        && e.raw_os_error() != Some(libc::ENOENT)
                    {
                        tracing::error!("rollback of tree entry: {e}");
                    }
                }
            });
        });
        if let Some((path, id, old)) = &u.root {
            match self.root.open_object(path) {
                Ok(o) if o.identity() == *id => {
                    if let Err(e) = write_label_obj(&o, self.attr.xattr, old) {
                        tracing::error!("rollback of {}: {e}", path.display());
                    }
                }
                _ => tracing::warn!("rollback: tree root {} changed", path.display()),
            }
        }
    }

    pub(super) fn tree_get(&self, k: &TreeKey) -> Result<Option<TreeRecord>, RelabelError> {
        let txn = self.store.begin_read()?;
        let t = txn.open_table(TREES).map_err(db_err)?;
        Ok(get_json(&t, k.row())?)
    }

    /// Calls `f` with every exception of the tree.
    pub(super) fn tree_exceptions(
        &self,
        k: &TreeKey,
        chunks: u32,
        f: impl FnMut(Exception),
    ) -> Result<(), RelabelError> {
        let txn = self.store.begin_read()?;
        let t = txn.open_table(TREE_EXC).map_err(db_err)?;
        Ok(read_chunks(&t, |c| k.chunk(c), chunks, f)?)
    }

    pub(super) fn tree_delete(&self, k: &TreeKey) -> Result<(), RelabelError> {
        let txn = self.store.begin_write()?;
        {
            let mut t = txn.open_table(TREES).map_err(db_err)?;
            let chunks = match t.remove(k.row()).map_err(db_err)? {
                Some(v) => serde_json::from_slice::<TreeRecord>(v.value()).map_or(0, |r| r.chunks),
                None => 0,
            };
            let mut e = txn.open_table(TREE_EXC).map_err(db_err)?;
            remove_chunks(&mut e, |c| k.chunk(c), chunks)?;
        }
        Ok(txn.commit()?)
    }

    /// Stores `rec` as the tree's record (its exception rows untouched).
    pub(super) fn tree_put(&self, k: &TreeKey, rec: &TreeRecord) -> Result<(), RelabelError> {
        let txn = self.store.begin_write()?;
        {
            let mut t = txn.open_table(TREES).map_err(db_err)?;
            put_json(&mut t, k.row(), rec)?;
        }
        Ok(txn.commit()?)
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn tree_record(
        &self,
        k: &TreeKey,
        j: &LabelJob,
        id: Identity,
        want: &[u8],
        existing: Option<TreeRecord>,
        owner: &str,
        entries: &[EntryRef<'_>],
        dominant: Option<Vec<u8>>,
    ) -> Result<(), RelabelError> {
        let mut rec = match existing {
            Some(r) => r,
            None => TreeRecord {
                path: j.path.as_os_str().as_bytes().to_vec(),
                btime: id.btime,
                target: want.to_vec(),
                dominant,
                chunks: 0,
                owners: BTreeSet::new(),
                entries: 0,
            },
        };
        rec.owners.insert(owner.to_string());
        let exc: Vec<Exception> = entries
            .iter()
            .filter(|(_, _, o)| **o != rec.dominant)
            .map(|(rel, ino, o)| Exception {
                rel: rel.clone(),
                ino: *ino,
                orig: (*o).clone(),
            })
            .collect();
        let txn = self.store.begin_write()?;
        {
            let mut e = txn.open_table(TREE_EXC).map_err(db_err)?;
            insert_chunks(&mut e, |c| k.chunk(c), &mut rec.chunks, &exc)?;
            let mut t = txn.open_table(TREES).map_err(db_err)?;
            put_json(&mut t, k.row(), &rec)?;
        }
        Ok(txn.commit()?)
    }

    /// Keeps the most entries any user's labeling changed in the tree's record.
    pub(super) fn tree_note_entries(&self, k: &TreeKey, n: u64) -> Result<(), RelabelError> {
        match self.tree_get(k)? {
            Some(mut r) if r.entries < n => {
                r.entries = n;
                self.tree_put(k, &r)
            }
            _ => Ok(()),
        }
    }

    /// Removes `owner`; deletes the record when `delete_if_last` and nobody is left.
    pub(super) fn tree_release(
        &self,
        k: &TreeKey,
        owner: &str,
        delete_if_last: bool,
    ) -> Result<(), RelabelError> {
        let Some(mut rec) = self.tree_get(k)? else {
            return Ok(());
        };
        rec.owners.remove(owner);
        if rec.owners.is_empty() && delete_if_last {
            return self.tree_delete(k);
        }
        self.tree_put(k, &rec)
    }

    pub(super) fn trees_all(&self) -> Result<Vec<(TreeKey, TreeRecord)>, RelabelError> {
        let txn = self.store.begin_read()?;
        let t = txn.open_table(TREES).map_err(db_err)?;
        let mut out = Vec::new();
        for row in t.iter().map_err(db_err)? {
            let (k, v) = row.map_err(db_err)?;
            let (model, dev, ino) = k.value();
            // Another label model's trees are its own engine's.
            if model != self.attr.name() {
                continue;
            }
            let model = self.attr.name();
            let rec: TreeRecord = serde_json::from_slice(v.value()).map_err(|e| {
                RelabelError::TreeDb(format!("the record of tree ({dev}, {ino}): {e}"))
            })?;
            out.push((TreeKey { model, dev, ino }, rec));
        }
        Ok(out)
    }

    /// Writes the originals back on a tree: every entry still carrying the label svirt set
    /// gets its recorded original (its exception, else the dominant original).
    pub(super) fn tree_restore(&self, k: &TreeKey, rec: &TreeRecord) -> Result<u64, RelabelError> {
        let path = path_of_bytes(&rec.path);
        let root_obj = match self.root.open_object(&path) {
            Ok(o) => o,
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(0),
            Err(e) => return Err(io_err("open", &path)(e)),
        };
        let id = root_obj.identity();
        if !same_root(k.dev, k.ino, rec.btime, id) {
            tracing::warn!(
                "{}: replaced since it was labeled; not restoring",
                path.display()
            );
            return Ok(0);
        }
        let mut exc: HashMap<Vec<u8>, (u64, Option<Vec<u8>>)> = HashMap::new();
        self.tree_exceptions(k, rec.chunks, |e| {
            exc.insert(e.rel, (e.ino, e.orig));
        })?;
        let root_dir = root_obj
            .open_as_dir()
            .map_err(io_err("open directory", &path))?;
        let target = rec.target.clone();
        let original_for = |rel: &[u8], ino: u64| -> Option<Vec<u8>> {
            match exc.get(rel) {
                Some((i, o)) if *i == ino => o.clone(),
                _ => rec.dominant.clone(),
            }
        };
        // One pass: each entry still carrying the target gets its original as soon as it is
        // read, so progress is real and nothing is held in memory per entry.
        let restored = AtomicU64::new(0);
        let errors: Mutex<Vec<RelabelError>> = Mutex::new(Vec::new());
        let rctx = RestoreCtx {
            target: &target,
            exceptions: &exc,
            dominant: &rec.dominant,
            restored: &restored,
            expected: rec.entries,
            errors: &errors,
        };
        let (_, _, _, err) = self.scan(&path, root_dir, &target, Eager::Restore(&rctx));
        if let Some(e) = err {
            lock(&errors).insert(0, e);
        }
        let cur = root_obj
            .get_xattr(self.attr.xattr)
            .map_err(io_err("read label", &path))?;
        if label_eq(&cur, &target) {
            let orig = original_for(b"", id.ino);
            if orig.as_deref().map(trim) != Some(trim(&target)) {
                write_label_obj(&root_obj, self.attr.xattr, &orig)
                    .map_err(io_err("restore label", &path))?;
                restored.fetch_add(1, Ordering::Relaxed);
            }
        }
        let n = restored.load(Ordering::Relaxed);
        self.report(&Progress {
            path: path.clone(),
            phase: Phase::Restoring,
            done: n,
            total: n,
        });
        let mut errors = errors
            .into_inner()
            .unwrap_or_else(|e| e.into_inner())
            .into_iter();
        let first = errors.next();
        // One error is returned (the record stays for a retry); the others are not lost.
        let more = errors.len();
        for e in errors {
            tracing::error!("{}: restore: {e}", path.display());
        }
        match first {
            Some(e) if more > 0 => {
                tracing::error!("{}: {} more restore errors logged", path.display(), more);
                Err(e)
            }
            Some(e) => Err(e),
            None => Ok(n),
        }
    }

    pub(super) fn release_tree(
        &self,
        k: &TreeKey,
        owners: &[String],
    ) -> Result<bool, RelabelError> {
        // As for single objects: the record as it is now, under the tree's lock.
        let _lock = self.store.lock_object(ObjectKey {
            dev: k.dev,
            ino: k.ino,
        });
        let Some(rec) = self.tree_get(k)? else {
            return Ok(false);
        };
        let rec = &rec;
        let left = rec.owners.iter().filter(|o| !owners.contains(o)).count();
        let mut restored = false;
        if left == 0 {
            self.tree_restore(k, rec)?;
            restored = true;
            self.tree_delete(k)?;
        } else {
            let mut r = rec.clone();
            for o in owners {
                r.owners.remove(o);
            }
            self.tree_put(k, &r)?;
        }
        Ok(restored)
    }
}
