//! The relabel engine on real files: shared objects and trees with two guests, failures
//! midway (fault hook and a real EPERM inside a tree), conflicts, crash recovery with a real
//! child process killed by SIGKILL at an injected point (and of a DAC device ACL grant), and
//! symlink/directory swaps racing a tree walk.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod dac_support;
mod selinux_support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use selinux_support::*;
use svirt_drivers::dac::{DacConfig, DacDriver};
use svirt_drivers::relabel::{LabelJob, RelabelError, Relabeler};
use svirt_drivers::{GuestSecurity, SecurityDriver};
use svirt_hostfs::FsRoot;
use svirt_store::{IdAllocator, IdConfig, Store};

const IMG_A: &str = "system_u:object_r:svirt_image_t:s0:c1,c2";
const IMG_B: &str = "system_u:object_r:svirt_image_t:s0:c3,c4";
const CONTENT: &str = "system_u:object_r:virt_content_t:s0";
const SHARED: &str = "system_u:object_r:svirt_image_t:s0";

/// A directory with a tree (`share/`), files, a fifo, a symlink, and objects with and
/// without an initial label and with an exception label inside the tree.
struct Fixture {
    _tmp: tempfile::TempDir,
    dir: PathBuf,
    all: Vec<PathBuf>,
}

fn fixture(n_tree_files: usize) -> Fixture {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().canonicalize().unwrap();
    let mut all = Vec::new();
    for f in [
        "disk-a.raw",
        "disk-b.raw",
        "kernel",
        "shared.raw",
        "outside.txt",
    ] {
        let p = dir.join(f);
        std::fs::write(&p, f).unwrap();
        set_label(&p, INITIAL);
        all.push(p);
    }
    let share = dir.join("share");
    std::fs::create_dir_all(share.join("sub/deeper")).unwrap();
    set_label(&share, INITIAL);
    set_label(&share.join("sub"), INITIAL);
    all.push(share.clone());
    all.push(share.join("sub"));
    all.push(share.join("sub/deeper"));
    for i in 0..n_tree_files {
        let p = match i % 3 {
            0 => share.join(format!("f{i}")),
            1 => share.join(format!("sub/f{i}")),
            _ => share.join(format!("sub/deeper/f{i}")),
        };
        std::fs::write(&p, b"x").unwrap();
        // Mostly the initial label; some without any, one odd one: exceptions in the record.
        if i % 7 == 0 {
        } else if i == 5 {
            set_label(&p, "system_u:object_r:odd_t:s0");
        } else {
            set_label(&p, INITIAL);
        }
        all.push(p);
    }
    std::os::unix::fs::symlink("../outside.txt", share.join("escape")).unwrap();
    all.push(share.join("escape"));
    Fixture {
        _tmp: tmp,
        dir,
        all,
    }
}

fn snap(all: &[PathBuf]) -> Vec<State> {
    all.iter().map(|p| state(p)).collect()
}

fn job(p: &Path, l: &str, recursive: bool) -> LabelJob {
    LabelJob {
        path: p.to_path_buf(),
        label: l.to_string(),
        restore: true,
        recursive,
        identity: None,
    }
}

fn tree_labels(dir: &Path) -> Vec<(PathBuf, Option<String>)> {
    let mut out = vec![(dir.to_path_buf(), label(dir))];
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            out.push((p.clone(), label(&p)));
            if std::fs::symlink_metadata(&p).unwrap().is_dir() {
                stack.push(p);
            }
        }
    }
    out
}

#[test]
fn shared_objects_and_trees_survive_until_last_user() {
    let fx = fixture(300);
    if !xattrs_work(&fx.dir) {
        return;
    }
    let before = snap(&fx.all);
    let env = env();
    let d = &fx.dir;
    let jobs_a = vec![
        job(&d.join("disk-a.raw"), IMG_A, false),
        job(&d.join("kernel"), CONTENT, false),
        job(&d.join("shared.raw"), SHARED, false),
        job(&d.join("share"), SHARED, true),
    ];
    let jobs_b = vec![
        job(&d.join("disk-b.raw"), IMG_B, false),
        job(&d.join("kernel"), CONTENT, false),
        job(&d.join("shared.raw"), SHARED, false),
        job(&d.join("share"), SHARED, true),
    ];
    let a = env.relabeler.set_labels("guest-a", &jobs_a).unwrap();
    assert!(a.changed >= 300, "tree entries labeled: {}", a.changed);
    let b = env.relabeler.set_labels("guest-b", &jobs_b).unwrap();
    assert_eq!(
        b.changed, 1,
        "only guest B's own disk changes; the rest is already right"
    );
    for (p, l) in tree_labels(&d.join("share")) {
        assert_eq!(l.as_deref(), Some(SHARED), "{}", p.display());
    }
    assert_eq!(
        label(&d.join("outside.txt")).as_deref(),
        Some(INITIAL),
        "symlink target outside the tree"
    );

    // A stops: everything B uses stays; A's private disk is restored.
    let errs = env.relabeler.restore_labels("guest-a");
    assert!(errs.is_empty(), "{errs:?}");
    assert_eq!(state(&d.join("disk-a.raw")), before[0]);
    assert_eq!(label(&d.join("kernel")).as_deref(), Some(CONTENT));
    assert_eq!(label(&d.join("shared.raw")).as_deref(), Some(SHARED));
    for (p, l) in tree_labels(&d.join("share")) {
        assert_eq!(
            l.as_deref(),
            Some(SHARED),
            "{} restored while guest-b uses it",
            p.display()
        );
    }
    // B stops: everything exactly as at the start.
    let errs = env.relabeler.restore_labels("guest-b");
    assert!(errs.is_empty(), "{errs:?}");
    assert_eq!(snap(&fx.all), before);
    assert!(env.store.list_originals().unwrap().is_empty());
}

#[test]
fn private_object_in_use_by_another_guest_is_refused() {
    let fx = fixture(3);
    if !xattrs_work(&fx.dir) {
        return;
    }
    let env = env();
    let disk = fx.dir.join("disk-a.raw");
    env.relabeler
        .set_labels("guest-a", &[job(&disk, IMG_A, false)])
        .unwrap();
    let before = snap(&fx.all);
    let err = env
        .relabeler
        .set_labels(
            "guest-b",
            &[
                job(&fx.dir.join("kernel"), CONTENT, false),
                job(&disk, IMG_B, false),
            ],
        )
        .unwrap_err();
    assert!(matches!(err, RelabelError::InUse { .. }), "{err}");
    assert!(err.to_string().contains("guest-a"), "{err}");
    assert_eq!(snap(&fx.all), before, "the refused start changed something");
    assert!(env.relabeler.restore_labels("guest-a").is_empty());
}

#[test]
fn failure_midway_leaves_every_object_as_it_was() {
    let fx = fixture(200);
    if !xattrs_work(&fx.dir) {
        return;
    }
    let before = snap(&fx.all);
    let env = env();
    let d = &fx.dir;
    let jobs = vec![
        job(&d.join("disk-a.raw"), IMG_A, false),
        job(&d.join("share"), IMG_A, true),
        job(&d.join("kernel"), CONTENT, false),
        job(&d.join("shared.raw"), SHARED, false),
    ];
    // 1. Injected error after the Nth label written, for every N.
    for n in 1..=3 {
        let count = Arc::new(AtomicUsize::new(0));
        let c = count.clone();
        env.relabeler
            .set_fault_hook(Some(Arc::new(move |point: &str| {
                point == "after-label" && c.fetch_add(1, Ordering::SeqCst) + 1 == n
            })));
        let err = env.relabeler.set_labels("guest-a", &jobs).unwrap_err();
        assert!(matches!(err, RelabelError::Injected(_)), "{err}");
        assert_eq!(snap(&fx.all), before, "after a failure at label #{n}");
        assert!(
            env.store.list_originals().unwrap().is_empty(),
            "records left after failure #{n}"
        );
    }
    env.relabeler.set_fault_hook(None);

    // 2. A real error in the middle of a tree: an immutable file (EPERM on setxattr).
    let imm = d.join("share/sub/f100");
    let st = Command::new("chattr").arg("+i").arg(&imm).status();
    if !st.is_ok_and(|s| s.success()) {
        svirt_testkit::skip("chattr", "part 2: chattr +i failed on this filesystem");
        return;
    }
    let err = env.relabeler.set_labels("guest-a", &jobs).unwrap_err();
    let _ = Command::new("chattr").arg("-i").arg(&imm).status();
    assert_eq!(err.raw_os_error(), Some(libc::EPERM), "{err}");
    assert_eq!(snap(&fx.all), before, "after EPERM inside the tree");
    assert!(env.store.list_originals().unwrap().is_empty());
    // And the same jobs work once the file is mutable again.
    env.relabeler.set_labels("guest-a", &jobs).unwrap();
    assert_eq!(label(&imm).as_deref(), Some(IMG_A));
    assert!(env.relabeler.restore_labels("guest-a").is_empty());
    assert_eq!(snap(&fx.all), before);
}

#[test]
fn missing_file_is_fatal_and_changes_nothing() {
    let fx = fixture(10);
    if !xattrs_work(&fx.dir) {
        return;
    }
    let before = snap(&fx.all);
    let env = env();
    let err = env
        .relabeler
        .set_labels(
            "guest-a",
            &[
                job(&fx.dir.join("disk-a.raw"), IMG_A, false),
                job(&fx.dir.join("nope.raw"), IMG_A, false),
            ],
        )
        .unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::ENOENT), "{err}");
    assert!(err.to_string().contains("nope.raw"));
    assert_eq!(snap(&fx.all), before);
    // A symlinked resource is refused, never followed.
    let link = fx.dir.join("link.raw");
    std::os::unix::fs::symlink("disk-a.raw", &link).unwrap();
    let err = env
        .relabeler
        .set_labels("guest-a", &[job(&link, IMG_A, false)])
        .unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::ELOOP), "{err}");
    assert_eq!(snap(&fx.all), before);
    // A system path is refused before anything is opened.
    let err = env
        .relabeler
        .set_labels("guest-a", &[job(Path::new("/etc"), IMG_A, true)])
        .unwrap_err();
    assert!(matches!(err, RelabelError::SystemPath(_)), "{err}");
}

// ---- crash recovery: a real child process killed by SIGKILL at an injected point ----

fn crash_jobs(d: &Path) -> Vec<LabelJob> {
    vec![
        job(&d.join("disk-a.raw"), IMG_A, false),
        job(&d.join("kernel"), CONTENT, false),
        job(&d.join("share"), IMG_A, true),
        job(&d.join("shared.raw"), SHARED, false),
    ]
}

/// The child side: runs only when re-executed by `crash_*` tests with SVIRT_FAULT set.
#[test]
#[ignore = "child process of the crash tests"]
fn crash_child() {
    let (Some(point), Some(dir), Some(state)) = (
        std::env::var_os("SVIRT_FAULT"),
        std::env::var_os("SVIRT_CRASH_DIR"),
        std::env::var_os("SVIRT_CRASH_STATE"),
    ) else {
        return;
    };
    let point = point.into_string().unwrap();
    // "after-label:N": die after the Nth label; "after-record:N" after the Nth record.
    let (name, nth) = point
        .split_once(':')
        .map_or((point.as_str(), 1), |(a, b)| (a, b.parse().unwrap()));
    let name = name.to_string();
    let store = Arc::new(Store::open(Path::new(&state)).unwrap());
    let r = Relabeler::open(store, FsRoot::host().unwrap(), 2).unwrap();
    let seen = AtomicUsize::new(0);
    r.set_fault_hook(Some(Arc::new(move |p: &str| {
        if p == name && seen.fetch_add(1, Ordering::SeqCst) + 1 == nth {
            // SAFETY: raise(2) on ourselves.
            unsafe { libc::raise(libc::SIGKILL) };
        }
        false
    })));
    r.set_labels("crashed-guest", &crash_jobs(Path::new(&dir)))
        .unwrap();
    // Reaching here means the fault point was never hit: the parent sees exit code 0.
}

fn run_crash(point: &str) {
    let fx = fixture(120);
    if !xattrs_work(&fx.dir) {
        return;
    }
    let before = snap(&fx.all);
    let state = tempfile::tempdir().unwrap();
    let out = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "crash_child",
            "--include-ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("SVIRT_FAULT", point)
        .env("SVIRT_CRASH_DIR", &fx.dir)
        .env("SVIRT_CRASH_STATE", state.path())
        .output()
        .unwrap();
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(
        out.status.signal(),
        Some(libc::SIGKILL),
        "child was not killed at {point}: {:?}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let changed = snap(&fx.all) != before;
    // Next open: the store alone is enough to put everything back.
    let store = Arc::new(Store::open(state.path()).unwrap());
    let r = Relabeler::open(store.clone(), FsRoot::host().unwrap(), 2).unwrap();
    let rec = r.recover(&|guest| guest != "crashed-guest");
    assert!(rec.errors.is_empty(), "{:?}", rec.errors);
    assert!(
        !rec.restored.is_empty() || !rec.dropped.is_empty(),
        "{point}: recovery found no record"
    );
    assert_eq!(
        snap(&fx.all),
        before,
        "{point}: not restored by recovery (something was changed: {changed})"
    );
    assert!(store.list_originals().unwrap().is_empty());
    // Idempotent.
    let again = r.recover(&|_| false);
    assert!(again.restored.is_empty() && again.errors.is_empty());
    eprintln!(
        "{point}: changed before recovery: {changed}; restored {:?}",
        rec.restored.len()
    );
}

#[test]
fn crash_after_first_record_before_label_is_recovered() {
    run_crash("after-record:1");
}

#[test]
fn crash_after_tree_record_before_tree_labels_is_recovered() {
    // Records: disk-a (1), kernel (2), the tree (3).
    run_crash("after-record:3");
}

#[test]
fn crash_after_labels_written_is_recovered() {
    // Labels: disk-a (1), kernel (2), the whole tree (3): everything in the tree changed.
    run_crash("after-label:3");
}

// ---- race: swaps inside the tree while it is labeled ----

#[test]
fn symlink_and_directory_swaps_never_change_anything_outside() {
    let fx = fixture(400);
    if !xattrs_work(&fx.dir) {
        return;
    }
    let d = fx.dir.clone();
    let outside_dir = d.join("outside-dir");
    std::fs::create_dir(&outside_dir).unwrap();
    let mut sentinels = vec![d.join("outside.txt"), outside_dir.clone()];
    for i in 0..20 {
        let p = outside_dir.join(format!("secret{i}"));
        std::fs::write(&p, b"s").unwrap();
        set_label(&p, "system_u:object_r:shadow_t:s0");
        sentinels.push(p);
    }
    set_label(&outside_dir, "system_u:object_r:etc_t:s0");
    let sentinel_before = snap(&sentinels);
    let env = env();
    let stop = Arc::new(AtomicBool::new(false));
    let swaps = Arc::new(AtomicUsize::new(0));
    let share = d.join("share");
    let swapper = {
        let (stop, swaps, share) = (stop.clone(), swaps.clone(), share.clone());
        std::thread::spawn(move || {
            let sub = share.join("sub");
            let aside = share.join("sub.aside");
            let f = share.join("f0");
            let f_aside = share.join("f0.aside");
            while !stop.load(Ordering::Relaxed) {
                // Directory -> symlink to a directory outside, and back.
                if std::fs::rename(&sub, &aside).is_ok() {
                    let _ = std::os::unix::fs::symlink("../outside-dir", &sub);
                    std::thread::yield_now();
                    let _ = std::fs::remove_file(&sub);
                    let _ = std::fs::rename(&aside, &sub);
                }
                // File -> symlink to a file outside, and back.
                if std::fs::rename(&f, &f_aside).is_ok() {
                    let _ = std::os::unix::fs::symlink("../outside.txt", &f);
                    std::thread::yield_now();
                    let _ = std::fs::remove_file(&f);
                    let _ = std::fs::rename(&f_aside, &f);
                }
                swaps.fetch_add(1, Ordering::Relaxed);
            }
        })
    };
    let mut ok = 0;
    for _ in 0..40 {
        match env
            .relabeler
            .set_labels("racer", &[job(&share, IMG_A, true)])
        {
            Ok(_) => {
                ok += 1;
                let _ = env.relabeler.restore_labels("racer");
            }
            Err(e) => eprintln!("labeling during swaps failed (allowed): {e}"),
        }
        assert_eq!(
            snap(&sentinels),
            sentinel_before,
            "an object outside the tree changed"
        );
    }
    stop.store(true, Ordering::Relaxed);
    swapper.join().unwrap();
    assert!(
        swaps.load(Ordering::Relaxed) > 10,
        "the swapper did not run"
    );
    assert!(ok > 0, "no labeling run completed");
    assert_eq!(snap(&sentinels), sentinel_before);
    let _ = env.relabeler.recover(&|_| false);
    eprintln!(
        "race: {ok}/40 runs completed, {} swaps",
        swaps.load(Ordering::Relaxed)
    );
}

/// A temporary `share/` with a directory `sub/`, both labeled [`INITIAL`]; `None` (after a
/// loud skip) where this host cannot store labels.
fn labeled_share() -> Option<(tempfile::TempDir, PathBuf)> {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().canonicalize().unwrap();
    if !xattrs_work(&dir) {
        return None;
    }
    let share = dir.join("share");
    std::fs::create_dir_all(share.join("sub")).unwrap();
    set_label(&share, INITIAL);
    set_label(&share.join("sub"), INITIAL);
    Some((tmp, share))
}

/// A file holding `x`, labeled `l`.
fn labeled_file(p: &Path, l: &str) {
    std::fs::write(p, b"x").unwrap();
    set_label(p, l);
}

/// A temp dir with `shared.raw` and a `share/` of `files` files, every object at INITIAL;
/// None (skip) where xattrs cannot be written.
fn disk_and_share(files: usize) -> Option<(tempfile::TempDir, PathBuf, PathBuf)> {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().canonicalize().unwrap();
    if !xattrs_work(&dir) {
        return None;
    }
    let disk = dir.join("shared.raw");
    labeled_file(&disk, INITIAL);
    let share = dir.join("share");
    std::fs::create_dir(&share).unwrap();
    set_label(&share, INITIAL);
    for i in 0..files {
        labeled_file(&share.join(format!("f{i}")), INITIAL);
    }
    Some((tmp, disk, share))
}

/// Runs `guest`'s stop (which must succeed) at the `nth` (from 0) `after-record` point, then
/// fails the labeling there: a start whose other users leave just before it fails.
fn stop_then_fail_at(
    env: &Env,
    guest: &'static str,
    nth: usize,
) -> svirt_drivers::progress::FaultHook {
    let r = env.relabeler.clone();
    let n = AtomicUsize::new(0);
    Arc::new(move |point: &str| {
        if point != "after-record" || n.fetch_add(1, Ordering::SeqCst) != nth {
            return false;
        }
        assert!(r.restore_labels(guest).is_empty());
        true
    })
}

/// Entries that already carry the target label before the first guest labels the tree keep
/// it after the restore, although the tree's most common original is another label.
#[test]
fn tree_entries_already_at_target_are_restored_exactly() {
    let Some((_tmp, share)) = labeled_share() else {
        return;
    };
    let mut all = vec![share.clone(), share.join("sub")];
    for i in 0..40 {
        let p = share
            .join(if i % 2 == 0 { "sub" } else { "" })
            .join(format!("f{i}"));
        // Every fifth file is already at the target; the rest (the majority) at INITIAL.
        labeled_file(&p, if i % 5 == 0 { SHARED } else { INITIAL });
        all.push(p);
    }
    let before = snap(&all);
    let env = env();
    let a = env
        .relabeler
        .set_labels("guest-a", &[job(&share, SHARED, true)])
        .unwrap();
    assert_eq!(
        a.changed,
        2 + 32,
        "dirs and the files not yet at the target"
    );
    for (p, l) in tree_labels(&share) {
        assert_eq!(l.as_deref(), Some(SHARED), "{}", p.display());
    }
    let errs = env.relabeler.restore_labels("guest-a");
    assert!(errs.is_empty(), "{errs:?}");
    assert_eq!(snap(&all), before, "every entry back to its own original");
}

/// A tree restore reports its progress while it runs, not only at the end.
#[test]
fn tree_restore_reports_progress_while_it_runs() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().canonicalize().unwrap();
    if !xattrs_work(&dir) {
        return;
    }
    let share = dir.join("share");
    std::fs::create_dir(&share).unwrap();
    for i in 0..10_000 {
        std::fs::write(share.join(format!("f{i}")), b"").unwrap();
    }
    let env = env();
    env.relabeler
        .set_labels("guest-a", &[job(&share, SHARED, true)])
        .unwrap();
    let seen: Arc<std::sync::Mutex<Vec<(u64, u64)>>> = Arc::default();
    let s2 = seen.clone();
    env.relabeler.set_progress(Some(Arc::new(move |p| {
        if p.phase == svirt_drivers::progress::Phase::Restoring {
            s2.lock().unwrap().push((p.done, p.total));
        }
    })));
    let errs = env.relabeler.restore_labels("guest-a");
    assert!(errs.is_empty(), "{errs:?}");
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.last().map(|r| r.0), Some(10_001), "{seen:?}");
    let during: Vec<_> = seen.iter().filter(|(d, _)| *d < 10_001).collect();
    assert!(during.len() >= 2, "reports before the end: {seen:?}");
    // The total is what the labeling changed (root and 10,000 files), known from the start.
    assert!(during.iter().all(|(_, t)| *t == 10_001), "{seen:?}");
    assert_eq!(label(&share.join("f9999")), None, "restored to no label");
}

// ---- the on-disk format of svirt.trees.redb ----

/// The tables of `svirt.trees.redb`, spelled out here so that a change of the engine's own
/// definitions cannot go unnoticed.
const TREES: redb::TableDefinition<'_, (&str, u64, u64), &[u8]> =
    redb::TableDefinition::new("trees");
const TREE_EXC: redb::TableDefinition<'_, (&str, u64, u64, u32), &[u8]> =
    redb::TableDefinition::new("tree_exceptions");

fn json_bytes(b: &[u8]) -> String {
    let v: Vec<String> = b.iter().map(u8::to_string).collect();
    format!("[{}]", v.join(","))
}

/// One exception as the engine has always stored it: `len: u32 LE, rel, ino: u64 LE`, then
/// `0` (no label) or `1, len: u32 LE, label`.
fn exception_bytes(rel: &str, ino: u64, orig: Option<&[u8]>) -> Vec<u8> {
    let mut v = (rel.len() as u32).to_le_bytes().to_vec();
    v.extend_from_slice(rel.as_bytes());
    v.extend_from_slice(&ino.to_le_bytes());
    match orig {
        Some(l) => {
            v.push(1);
            v.extend_from_slice(&(l.len() as u32).to_le_bytes());
            v.extend_from_slice(l);
        }
        None => v.push(0),
    }
    v
}

fn ino_of(p: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::symlink_metadata(p).unwrap().ino()
}

/// The tree database's rows are exactly the layout databases written by earlier versions
/// hold (JSON record, binary exception chunks), built here byte by byte: what the engine
/// writes equals it (plus the record's `entries` count, added later with a default), and
/// rows written without that field, as earlier versions did, are restored exactly.
#[test]
fn tree_database_rows_keep_their_layout() {
    let Some((_tmp, share)) = labeled_share() else {
        return;
    };
    let odd = "system_u:object_r:odd_t:s0";
    for f in ["a", "sub/d", "b", "c"] {
        std::fs::write(share.join(f), b"x").unwrap();
    }
    set_label(&share.join("a"), INITIAL);
    set_label(&share.join("sub/d"), INITIAL);
    // The exceptions: another label, and none.
    set_label(&share.join("b"), odd);
    let all: Vec<PathBuf> = tree_labels(&share).into_iter().map(|(p, _)| p).collect();
    assert_eq!(all.len(), 6);
    let before = snap(&all);

    let state = tempfile::tempdir().unwrap();
    let store = Arc::new(Store::open(state.path()).unwrap());
    // Where an earlier svirt kept the tree rows (part 2 writes a file there).
    let db_path = Relabeler::legacy_trees_path(&store);
    let id = FsRoot::host()
        .unwrap()
        .open_object(&share)
        .unwrap()
        .identity();
    let nul = |l: &str| format!("{l}\0").into_bytes();
    let btime = id
        .btime
        .map_or("null".to_string(), |(s, n)| format!("[{s},{n}]"));
    let record = format!(
        r#"{{"path":{},"btime":{btime},"target":{},"dominant":{},"chunks":1,"owners":["selinux/fmt-guest"]}}"#,
        json_bytes(share.as_os_str().as_encoded_bytes()),
        json_bytes(&nul(SHARED)),
        json_bytes(&nul(INITIAL)),
    );
    // Root, sub, a, sub/d, b, c: all changed.
    let record_now = format!(
        "{}{}",
        record.strip_suffix('}').unwrap(),
        r#","entries":6}"#
    );
    let exc_b = exception_bytes("b", ino_of(&share.join("b")), Some(&nul(odd)));
    let exc_c = exception_bytes("c", ino_of(&share.join("c")), None);
    let chunk_bc = [exc_b.clone(), exc_c.clone()].concat();
    let chunk_cb = [exc_c, exc_b].concat();

    // 1. What the engine writes.
    let r = Relabeler::open(store.clone(), FsRoot::host().unwrap(), 1).unwrap();
    r.set_labels("fmt-guest", &[job(&share, SHARED, true)])
        .unwrap();
    drop(r);
    {
        use redb::ReadableTable;
        // In the store's ledger: no file of their own.
        assert!(!db_path.exists(), "{}", db_path.display());
        let txn = store.begin_read().unwrap();
        let rows: Vec<_> = txn
            .open_table(TREES)
            .unwrap()
            .iter()
            .unwrap()
            .map(|r| {
                let (k, v) = r.unwrap();
                let (m, dev, ino) = k.value();
                ((m.to_string(), dev, ino), v.value().to_vec())
            })
            .collect();
        assert_eq!(
            rows,
            vec![(
                ("selinux".to_string(), id.dev, id.ino),
                record_now.clone().into_bytes()
            )],
            "record row"
        );
        let chunks: Vec<_> = txn
            .open_table(TREE_EXC)
            .unwrap()
            .iter()
            .unwrap()
            .map(|r| {
                let (k, v) = r.unwrap();
                let (m, dev, ino, c) = k.value();
                ((m.to_string(), dev, ino, c), v.value().to_vec())
            })
            .collect();
        assert_eq!(chunks.len(), 1, "one chunk row");
        assert_eq!(chunks[0].0, ("selinux".to_string(), id.dev, id.ino, 0));
        // Walk order decides which exception comes first.
        assert!(
            chunks[0].1 == chunk_bc || chunks[0].1 == chunk_cb,
            "exception chunk {:?}",
            chunks[0].1
        );
    }
    let r = Relabeler::open(store.clone(), FsRoot::host().unwrap(), 1).unwrap();
    assert!(r.restore_labels("fmt-guest").is_empty());
    drop(r);
    assert_eq!(snap(&all), before);

    // 2. Rows written in that layout by hand, over a labeled tree, are restored exactly;
    //    written to the file an earlier svirt kept them in, they are adopted into the
    //    ledger (and the file removed) when the engine opens.
    for p in &all {
        set_label(p, SHARED);
    }
    {
        let db = redb::Database::create(&db_path).unwrap();
        let txn = db.begin_write().unwrap();
        {
            let mut t = txn.open_table(TREES).unwrap();
            t.insert(("selinux", id.dev, id.ino), record.as_bytes())
                .unwrap();
            let mut e = txn.open_table(TREE_EXC).unwrap();
            e.insert(("selinux", id.dev, id.ino, 0), chunk_cb.as_slice())
                .unwrap();
        }
        txn.commit().unwrap();
    }
    assert!(
        Relabeler::has_records(&store).unwrap(),
        "the earlier file counts"
    );
    let r = Relabeler::open(store.clone(), FsRoot::host().unwrap(), 1).unwrap();
    assert!(!db_path.exists(), "the earlier file is adopted and removed");
    let errs = r.restore_labels("fmt-guest");
    assert!(errs.is_empty(), "{errs:?}");
    assert_eq!(snap(&all), before, "restored from hand-written rows");
    assert!(
        r.recover(&|_| false).restored.is_empty(),
        "the record was removed"
    );
    drop(r);
    assert!(
        !Relabeler::has_records(&store).unwrap(),
        "nothing left to sweep"
    );
}

// ---- a DAC device ACL grant left by a dead guest ----

const ACL: &std::ffi::CStr = c"system.posix_acl_access";
const KVM_GID: u32 = 620_993;

/// A `system.posix_acl_access` value (version 2) of `(tag, perm, id)` entries, given in the
/// kernel's order.
fn acl_xattr(entries: &[(u16, u16, u32)]) -> Vec<u8> {
    let entry = |&(tag, perm, id): &(u16, u16, u32)| {
        [
            &tag.to_le_bytes()[..],
            &perm.to_le_bytes(),
            &id.to_le_bytes(),
        ]
        .concat()
    };
    [2u32.to_le_bytes().to_vec()]
        .into_iter()
        .chain(entries.iter().map(entry))
        .collect::<Vec<_>>()
        .concat()
}

/// DAC grants the device group read-write on `/dev/kvm` by an ACL (a regular file under a
/// temporary platform root stands for it), then its guest dies: `Relabeler::recover` puts
/// the ACL back byte for byte, for a grant that created the ACL and for one that added write
/// to an existing entry of the group.
#[test]
fn dead_guests_device_acl_grant_is_restored_by_recover() {
    if dac_support::skip_unless_root() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().canonicalize().unwrap();
    let accounts = dac_support::accounts(
        &dir,
        "root:x:0:0::/root:/bin/sh\n",
        &format!("root:x:0:\nkvm:x:{KVM_GID}:\n"),
    );
    let root = dir.join("root");
    std::fs::create_dir_all(root.join("dev")).unwrap();
    let node = root.join("dev/kvm");
    std::fs::write(&node, b"").unwrap();
    dac_support::chmod(&node, 0o600);
    let device = Path::new("/dev/kvm");
    let acl_now = || {
        FsRoot::open(&root)
            .unwrap()
            .open_object(device)
            .unwrap()
            .get_xattr(ACL)
            .unwrap()
    };
    // user::rw-, user:4242:r--, group::---, group:kvm:r--, mask::r--, other::--- as
    // (tag, perm, id); u32::MAX is the id of the entries without one.
    let with_entry = acl_xattr(&[
        (0x01, 6, u32::MAX),
        (0x02, 4, 4242),
        (0x04, 0, u32::MAX),
        (0x08, 4, KVM_GID),
        (0x10, 4, u32::MAX),
        (0x20, 0, u32::MAX),
    ]);
    // The third case: a live guest of another model (SELinux) also holds the record.
    let cases = [
        (None, false),
        (Some(with_entry.clone()), false),
        (Some(with_entry), true),
    ];
    for (n, (initial, other_model)) in cases.into_iter().enumerate() {
        if let Some(a) = &initial {
            let obj = FsRoot::open(&root).unwrap().open_object(device).unwrap();
            if let Err(e) = obj.set_xattr(ACL, a) {
                svirt_testkit::skip(
                    "posix-acl",
                    format!("no POSIX ACLs on {}: {e}", dir.display()),
                );
                return;
            }
        }
        let before = (acl_now(), dac_support::owner_mode(&node));
        assert_eq!(before.0, initial);
        let state = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(state.path()).unwrap());
        let guest = format!("acl-guest-{n}");
        {
            let ids = IdAllocator::open(
                store.clone(),
                IdConfig {
                    first: 620_000,
                    last: 620_050,
                    root: accounts.clone(),
                },
            )
            .unwrap();
            let dac = DacDriver::new(
                DacConfig {
                    accounts_root: accounts.clone(),
                    fs_root: root.clone(),
                    ..Default::default()
                },
                store.clone(),
                Arc::new(ids),
            );
            let plan = dac_support::plan(&guest, Vec::new());
            let mut g = GuestSecurity {
                name: guest.clone(),
                level: None,
                ids: None,
            };
            dac.reserve(&plan, &mut g).unwrap();
            let mut ctx = dac_support::exec_ctx(Path::new("/run"));
            ctx.devices = vec![device.to_path_buf()];
            let creds = dac.prepare_credentials(&plan, &g, &ctx).unwrap();
            assert!(creds.groups.contains(&KVM_GID), "{creds:?}");
        }
        // The guest is gone; only the store remembers the grant.
        assert_ne!(acl_now(), before.0, "case {n}: the grant changed the ACL");
        let obj = FsRoot::open(&root).unwrap().open_object(device).unwrap();
        let key = svirt_store::ObjectKey {
            dev: obj.identity().dev,
            ino: obj.identity().ino,
        };
        if other_model {
            let mut orig = store.get_original(key).unwrap().unwrap().original;
            orig.model_flags.clear();
            store
                .record_original_if_absent(key, &orig, "selinux/alive")
                .unwrap();
        }
        let r = Relabeler::open(store.clone(), FsRoot::open(&root).unwrap(), 1).unwrap();
        let rec = r.recover(&|g| g != guest);
        assert!(rec.errors.is_empty(), "case {n}: {:?}", rec.errors);
        assert_eq!(rec.restored, vec![device.to_path_buf()], "case {n}");
        assert_eq!(
            (acl_now(), dac_support::owner_mode(&node)),
            before,
            "case {n}: ACL bytes, owner and mode as before the grant"
        );
        if other_model {
            // DAC's entries are gone with its last user: left, a later grant would be or-ed
            // into them.
            let left = store.get_original(key).unwrap().unwrap();
            assert_eq!(left.owners.iter().collect::<Vec<_>>(), ["selinux/alive"]);
            assert!(
                !left
                    .original
                    .model_flags
                    .keys()
                    .any(|k| k.starts_with("dac")),
                "case {n}: {:?}",
                left.original.model_flags
            );
            assert!(
                store
                    .release_original(key, "selinux/alive")
                    .unwrap()
                    .is_some()
            );
        }
        assert!(store.list_originals().unwrap().is_empty(), "case {n}");
    }
}

/// Two guests sharing a disk and a tree stop at the same moment (the manager runs each
/// guest's cleanup on its own thread): whichever release comes last restores, every time.
#[test]
fn concurrent_stops_of_two_sharers_restore_exactly() {
    let Some((_tmp, disk, share)) = disk_and_share(50) else {
        return;
    };
    let env = env();
    let jobs = [job(&disk, SHARED, false), job(&share, SHARED, true)];
    for round in 0..40 {
        env.relabeler.set_labels("guest-a", &jobs).unwrap();
        env.relabeler.set_labels("guest-b", &jobs).unwrap();
        assert_eq!(label(&disk).as_deref(), Some(SHARED));
        let barrier = std::sync::Barrier::new(2);
        std::thread::scope(|s| {
            for g in ["guest-a", "guest-b"] {
                let (r, barrier) = (&env.relabeler, &barrier);
                s.spawn(move || {
                    barrier.wait();
                    let errs = r.restore_labels(g);
                    assert!(errs.is_empty(), "{g}: {errs:?}");
                });
            }
        });
        assert_eq!(
            label(&disk).as_deref(),
            Some(INITIAL),
            "round {round}: shared disk left labeled"
        );
        for (p, l) in tree_labels(&share) {
            assert_eq!(
                l.as_deref(),
                Some(INITIAL),
                "round {round}: {}",
                p.display()
            );
        }
        assert!(env.store.list_originals().unwrap().is_empty());
    }
}

/// A label longer than the walk's stack buffer (256 bytes: a long MCS category list) is read
/// in full, recorded as an exception and restored byte for byte.
#[test]
fn tree_entry_with_a_label_over_256_bytes_is_restored_exactly() {
    let Some((_tmp, share)) = labeled_share() else {
        return;
    };
    let cats: Vec<String> = (0..120).step_by(2).map(|c| format!("c{c}")).collect();
    let long = format!("system_u:object_r:user_tmp_t:s0:{}", cats.join(","));
    assert!(long.len() > 256, "{}", long.len());
    let mut all = vec![share.clone(), share.join("sub")];
    for (i, l) in [INITIAL, long.as_str(), INITIAL].iter().enumerate() {
        let p = share.join("sub").join(format!("f{i}"));
        labeled_file(&p, l);
        all.push(p);
    }
    let before = snap(&all);
    let env = env();
    let a = env
        .relabeler
        .set_labels("guest-a", &[job(&share, SHARED, true)])
        .unwrap();
    assert_eq!(a.changed, 5);
    for (p, l) in tree_labels(&share) {
        assert_eq!(l.as_deref(), Some(SHARED), "{}", p.display());
    }
    assert!(env.relabeler.restore_labels("guest-a").is_empty());
    assert_eq!(snap(&all), before);
    assert_eq!(label(&share.join("sub/f1")).as_deref(), Some(long.as_str()));
}

/// A start that joined a shared disk's record fails after the disk's other user has stopped:
/// its rollback is now the disk's last user and restores it, as a stop would (before, the
/// record was dropped and the disk kept the shared label with nothing to restore it).
#[test]
fn rollback_of_the_last_user_restores_a_joined_object() {
    let Some((_tmp, disk, share)) = disk_and_share(1) else {
        return;
    };
    let env = env();
    env.relabeler
        .set_labels("guest-b", &[job(&disk, SHARED, false)])
        .unwrap();
    // Guest A joins the disk (already right for it), then fails on its share, just after
    // guest B has stopped.
    env.relabeler
        .set_fault_hook(Some(stop_then_fail_at(&env, "guest-b", 0)));
    let res = env.relabeler.set_labels(
        "guest-a",
        &[job(&disk, SHARED, false), job(&share, IMG_A, true)],
    );
    env.relabeler.set_fault_hook(None);
    assert!(matches!(res, Err(RelabelError::Injected(_))), "{res:?}");
    assert_eq!(
        label(&disk).as_deref(),
        Some(INITIAL),
        "disk restored by the rollback"
    );
    for (p, l) in tree_labels(&share) {
        assert_eq!(l.as_deref(), Some(INITIAL), "{}", p.display());
    }
    assert!(env.store.list_originals().unwrap().is_empty());
}

/// The same for a tree: a start joins a shared tree, its other user stops, then the start
/// fails (on its next object): the rollback restores the whole tree and drops its record.
#[test]
fn rollback_of_the_last_user_restores_a_joined_tree() {
    let Some((_tmp, disk, share)) = disk_and_share(1) else {
        return;
    };
    let env = env();
    env.relabeler
        .set_labels("guest-b", &[job(&share, SHARED, true)])
        .unwrap();
    // The second "after-record" is guest A's disk, after it joined the tree; the hook runs
    // on A's thread holding only the disk's lock, so guest B's stop can take the tree's.
    env.relabeler
        .set_fault_hook(Some(stop_then_fail_at(&env, "guest-b", 1)));
    let res = env.relabeler.set_labels(
        "guest-a",
        &[job(&share, SHARED, true), job(&disk, IMG_A, false)],
    );
    env.relabeler.set_fault_hook(None);
    assert!(matches!(res, Err(RelabelError::Injected(_))), "{res:?}");
    for (p, l) in tree_labels(&share) {
        assert_eq!(l.as_deref(), Some(INITIAL), "{}", p.display());
    }
    assert_eq!(label(&disk).as_deref(), Some(INITIAL));
    assert!(
        env.relabeler.recover(&|_| false).restored.is_empty(),
        "no tree record left"
    );
    assert!(env.store.list_originals().unwrap().is_empty());
}
