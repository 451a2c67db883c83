//! The parallel scan of a tree's directories: each directory's entries read, judged and
//! (eagerly) labeled or restored on the thread pool, subdirectories entered by the one
//! rule of `svirt_hostfs::walk::enter`.

use super::*;
use svirt_hostfs::Entry as DirEntry;
use svirt_hostfs::walk::{Entered, ParVisit, ParWalker};

impl ParVisit for ScanCtx<'_> {
    fn visit(
        &self,
        w: &ParWalker<'_, '_, Self>,
        dir: Dir,
        rel: Vec<u8>,
        entries: io::Result<Vec<DirEntry>>,
    ) {
        scan_dir(w, self, dir, rel, entries)
    }
}

/// One directory of the scan: its entries judged, labeled (eagerly) or listed for the
/// apply pass, its subdirectories entered through the walker.
fn scan_dir(
    w: &ParWalker<'_, '_, ScanCtx<'_>>,
    ctx: &ScanCtx<'_>,
    dir: Dir,
    rel: Vec<u8>,
    entries: io::Result<Vec<DirEntry>>,
) {
    if ctx.abort.load(Ordering::Relaxed) {
        return;
    }
    let entries = match entries {
        Ok(e) => e,
        Err(e) => return ctx.fail("read directory", &rel, e),
    };

    let mut items = Vec::new();
    let mut eager = Vec::new();
    let mut same = Vec::new();
    let mut seen = Tally::new(ctx.seen, SCAN_REPORT_EVERY);
    let mut lbuf = [0u8; 256];
    let mut restored = match ctx.eager {
        Eager::Restore(r) => Some(Tally::new(r.restored, REPORT_EVERY)),
        _ => None,
    };
    for e in entries {
        let mut kind = e.kind;
        if kind == EntryKind::Unknown {
            kind = match dir.stat_entry(&e.name) {
                Ok((_, m)) if m.is_dir() => EntryKind::Dir,
                Ok((_, m)) if m.is_symlink() => EntryKind::Symlink,
                Ok(_) => EntryKind::Other,
                Err(err) if err.raw_os_error() == Some(libc::ENOENT) => continue,
                Err(err) => {
                    // Keep what this directory already labeled (eager) for rollback.
                    ctx.fail("stat", &join_rel(&rel, e.name.as_bytes()), err);
                    break;
                }
            };
        }
        // Read into the stack (no allocation per entry); a label too long for it, rarely.
        let read = match dir.get_xattr_at_into(&e.name, ctx.eng.attr.xattr, &mut lbuf) {
            Ok(n) => Ok(n.map(|n| Cow::Borrowed(&lbuf[..n]))),
            Err(err) if err.raw_os_error() == Some(libc::ERANGE) => dir
                .get_xattr_at(&e.name, ctx.eng.attr.xattr)
                .map(|v| v.map(Cow::Owned)),
            Err(err) => Err(err),
        };
        let cur: Option<Cow<'_, [u8]>> = match read {
            Ok(v) => v,
            Err(err) if err.raw_os_error() == Some(libc::ENOENT) => continue,
            Err(err) if is_soft_errno(err.raw_os_error()) => {
                ctx.warn(
                    &join_rel(&rel, e.name.as_bytes()),
                    format!("cannot read label: {err}"),
                    Some(&err),
                );
                continue;
            }
            Err(err) => {
                // Keep what this directory already labeled (eager) for rollback.
                ctx.fail("read label", &join_rel(&rel, e.name.as_bytes()), err);
                break;
            }
        };
        // A restore walk reports its own phase (below), not a scan.
        if let Some(n) = seen.bump()
            && !matches!(ctx.eager, Eager::Restore(_))
        {
            report_at((ctx.base, Phase::Scanning), (n, n), |p| ctx.eng.report(p));
        }
        if kind == EntryKind::Dir {
            let child_rel = join_rel(&rel, e.name.as_bytes());
            match w.enter(&dir, &e.name, child_rel.clone()) {
                Ok(Entered::Walking) => {}
                Ok(Entered::MountPoint) => {
                    // A mount point inside the tree: another filesystem is not part of it.
                    ctx.warn(
                        &child_rel,
                        "mount point inside the tree: not descended".into(),
                        None,
                    );
                    continue;
                }
                // Replaced by a symlink or a file since getdents: label what is there now
                // (as itself) below.
                Ok(Entered::Replaced) => {}
                Ok(Entered::Gone) => continue,
                Err(err) => {
                    // Keep what this directory already labeled (eager) for rollback.
                    ctx.fail("open directory", &child_rel, err);
                    break;
                }
            }
        }
        let cur = cur.as_deref();
        if let Eager::Restore(r) = ctx.eager {
            if eq_label(cur, r.target)
                && restore_entry(ctx, r, &dir, &rel, &e.name, e.ino)
                && let Some(n) = restored.as_mut().and_then(Tally::bump)
            {
                let total = r.expected.max(n);
                report_at((ctx.base, Phase::Restoring), (n, total), |p| {
                    ctx.eng.report(p)
                });
            }
            continue;
        }
        if eq_label(cur, ctx.want) {
            if let Eager::IfOriginal {
                dominant,
                record_same: true,
            } = ctx.eager
                && dominant.as_deref() != cur
            {
                same.push(Item {
                    name: e.name,
                    ino: e.ino,
                    orig: cur.map(<[u8]>::to_vec),
                });
            }
        } else {
            let (now, keep) = match ctx.eager {
                Eager::All => (true, true),
                // The tree's undo holds the dominant original once for all eager entries.
                Eager::IfOriginal { dominant, .. } => {
                    let d = dominant.as_deref() == cur;
                    (d, !d)
                }
                Eager::Restore(_) => (false, true),
            };
            let item = Item {
                name: e.name,
                ino: e.ino,
                orig: if keep { cur.map(<[u8]>::to_vec) } else { None },
            };
            if now {
                match dir.set_xattr_at(&item.name, ctx.eng.attr.xattr, ctx.want) {
                    Ok(()) => eager.push(item),
                    Err(err) if err.raw_os_error() == Some(libc::ENOENT) => {}
                    Err(err) => {
                        let r = join_rel(&rel, item.name.as_bytes());
                        ctx.fail("set label", &r, err);
                        break;
                    }
                }
            } else {
                items.push(item);
            }
        }
    }
    if !items.is_empty() || !eager.is_empty() || !same.is_empty() {
        lock(ctx.out).push(DirWork {
            dir,
            rel,
            items,
            eager,
            same,
        });
    }
}

/// Writes the original back on one entry of a restore walk (true when written); a failure
/// is kept and the walk goes on.
pub(super) fn restore_entry(
    ctx: &ScanCtx<'_>,
    r: &RestoreCtx<'_>,
    dir: &Dir,
    rel: &[u8],
    name: &CStr,
    ino: u64,
) -> bool {
    let orig = r.original(rel, name.to_bytes(), ino);
    if orig.as_deref().map(trim) == Some(trim(r.target)) {
        return false;
    }
    let res = match &orig {
        Some(v) => dir.set_xattr_at(name, ctx.eng.attr.xattr, v),
        None => remove_at(dir, name, ctx.eng.attr.xattr),
    };
    match res {
        Ok(()) => true,
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => false,
        Err(e) => {
            lock(r.errors).push(RelabelError::Io {
                op: "restore label",
                path: full_path(ctx.base, &join_rel(rel, name.to_bytes())),
                source: e,
            });
            false
        }
    }
}
