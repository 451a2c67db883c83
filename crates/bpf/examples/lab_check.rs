//! The enforcement lab's proof of the BPF-LSM programs, without svirtd (`lab/run bpf`).
//!
//! Runs as root inside the lab VM (Debian's 6.1 kernel, BPF LSM active): loads, attaches
//! and pins the programs ([`Enforcer::open`] with [`Programs::Enforce`]), labels files on a
//! fresh tmpfs and the static busybox, then spawns children labeled by
//! [`SubjectHook::apply`] (between fork and exec, as svirtd's prepared child does) that try
//! to use them. Every operation runs twice: unlabeled (the control: the operation itself
//! works, so a refusal is the label's doing) and labeled. Prints one
//! `LABCHECK <name> PASS|FAIL <detail>` line per check (see lab/scenarios/bpf); libbpf's
//! messages, the verifier's log among them when a program is refused, go to stderr.
//!
//! With `--bench`, last, the cost of the programs: open()+close() of a labeled file timed
//! by an unlabeled (host) process and by a labeled (guest) one, in rounds with the
//! programs detached and attached in turn (see [`bench`]). A benchmark reports numbers
//! (`LABINFO bench.*` lines, each with its goal met or MISSED); its one check,
//! `bench.detach`, is that the rounds really ran with and without the programs.
//!
//! Usage: `lab_check [--busybox PATH] [--pin-dir DIR] [--bench]` (defaults: /bin/busybox,
//! /sys/fs/bpf/svirt-lab); `lab_check --bench-child FILE N PROBE` is the benchmark's
//! timing loop, run by lab_check in its children.

use std::cell::RefCell;
use std::ffi::CString;
use std::fmt;
use std::fs;
use std::io;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::rc::Rc;
use std::time::Duration;

use svirt_bpf::enforcer::{Enforcer, Programs, SubjectHook};
use svirt_bpf::label::{Allow, Cats, InodeKey, ObjectLabel, SubjectLabel};
use svirt_labels::Level;

/// `BPF_FS_MAGIC` (statfs f_type of a bpffs).
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;
/// Where the test objects live (a tmpfs of their own).
const WORK: &str = "/tmp/svirt-bpf-lab";
/// The guest the labeled children stand for, and its neighbour.
const OWN: &str = "s0:c1,c2";
const OTHER: &str = "s0:c3,c4";

/// Event hooks of `bpf/svirt_mcs.bpf.c` (SVIRT_HOOK_*).
const HOOK_NAMES: [&str; 9] = [
    "?", "open", "mmap", "receive", "exec", "signal", "ptrace", "connect", "bpf",
];

fn labcheck(name: &str, ok: bool, detail: impl fmt::Display) {
    let detail = detail.to_string().replace('\n', " | ");
    println!(
        "LABCHECK {name} {} {detail}",
        if ok { "PASS" } else { "FAIL" }
    );
}

fn cats(level: &str) -> Cats {
    Cats::of(&Level::parse(level).unwrap_or_else(|e| panic!("level {level}: {e}")))
}

/// How a child ended (or why it never ran).
enum Outcome {
    /// It ran and exited (code, stderr).
    Exit(i32, String),
    /// Killed by a signal.
    Signal(i32),
    /// `spawn` failed: the exec (or the pre-exec hook) was refused.
    Spawn(io::Error),
}

impl Outcome {
    fn of(status: ExitStatus, stderr: &[u8]) -> Outcome {
        match (status.code(), status.signal()) {
            (Some(c), _) => Outcome::Exit(c, String::from_utf8_lossy(stderr).trim().to_string()),
            (None, Some(s)) => Outcome::Signal(s),
            (None, None) => Outcome::Exit(-1, "unknown status".into()),
        }
    }

    fn allowed(&self) -> bool {
        matches!(self, Outcome::Exit(0, _))
    }

    /// Refused by the enforcer: EACCES (files, signals) or EPERM (bpf), as the failing
    /// call reported it (for a program's refusal: on a line naming `object`).
    fn denied(&self, object: &str) -> bool {
        match self {
            Outcome::Exit(c, err) => {
                *c != 0
                    && err
                        .lines()
                        .any(|l| l.contains("Permission denied") && l.contains(object))
            }
            Outcome::Spawn(e) => matches!(e.raw_os_error(), Some(libc::EACCES | libc::EPERM)),
            Outcome::Signal(_) => false,
        }
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Outcome::Exit(c, err) if err.is_empty() => write!(f, "exit {c}"),
            Outcome::Exit(c, err) => write!(f, "exit {c} ({err})"),
            Outcome::Signal(s) => write!(f, "killed by signal {s}"),
            Outcome::Spawn(e) => write!(f, "spawn refused: {e}"),
        }
    }
}

struct Lab {
    enforcer: Enforcer,
    busybox: PathBuf,
    failed: usize,
    /// Whether to run the benchmark (`--bench`).
    with_bench: bool,
}

impl Lab {
    fn check(&mut self, name: &str, ok: bool, detail: impl fmt::Display) {
        if !ok {
            self.failed += 1;
        }
        labcheck(name, ok, detail);
    }

    /// A command whose process labels itself at `level` before exec (none: unlabeled).
    fn command(&self, level: Option<&str>, program: &Path, args: &[&str]) -> Command {
        let mut c = Command::new(program);
        c.args(args).stdin(Stdio::null()).stdout(Stdio::null());
        if let Some(level) = level {
            self.label_child(&mut c, level, || Ok(()));
        }
        c
    }

    /// Adds the label update (then `then`, in the labeled child) before exec.
    fn label_child(
        &self,
        c: &mut Command,
        level: &str,
        mut then: impl FnMut() -> io::Result<()> + Send + Sync + 'static,
    ) {
        let mut hook = SubjectHook::new(&self.enforcer, SubjectLabel::new(cats(level)))
            .unwrap_or_else(|e| panic!("SubjectHook::new: {e}"));
        // SAFETY: the hook is allocation-free (pidfd_open, bpf, close) and `then` makes
        // only system calls: both are safe between fork and exec.
        unsafe {
            c.pre_exec(move || {
                hook.apply()?;
                then()
            });
        }
    }

    fn run(&self, mut c: Command) -> Outcome {
        c.stderr(Stdio::piped());
        match c.output() {
            Ok(out) => Outcome::of(out.status, &out.stderr),
            Err(e) => Outcome::Spawn(e),
        }
    }

    fn busybox(&self, level: Option<&str>, args: &[&str]) -> Outcome {
        self.run(self.command(level, &self.busybox, args))
    }

    /// One operation, unlabeled (the control: must succeed) then labeled at `OWN`.
    /// A denial counts only when its message names `object`.
    fn op(&mut self, name: &str, what: &str, allow: bool, object: &str, args: &[&str]) {
        let control = self.busybox(None, args);
        let labeled = self.busybox(Some(OWN), args);
        let ok = control.allowed()
            && if allow {
                labeled.allowed()
            } else {
                labeled.denied(object)
            };
        let want = if allow { "allowed" } else { "denied" };
        self.check(
            name,
            ok,
            format!("{what} at {OWN}: {labeled} (want {want}); unlabeled control: {control}"),
        );
    }

    /// A probe run in the child before exec (after labeling when `level`): exec of
    /// `busybox true` follows only when the probe returns Ok.
    fn probe(
        &self,
        level: Option<&str>,
        probe: impl FnMut() -> io::Result<()> + Send + Sync + 'static,
    ) -> Outcome {
        let mut c = Command::new(&self.busybox);
        c.arg("true").stdin(Stdio::null()).stdout(Stdio::null());
        match level {
            Some(level) => self.label_child(&mut c, level, probe),
            None => {
                // SAFETY: the probe makes only system calls.
                unsafe {
                    c.pre_exec(probe);
                }
            }
        }
        self.run(c)
    }

    fn spawn_sleeper(&self, level: &str) -> Child {
        self.command(Some(level), &self.busybox, &["sleep", "600"])
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn a sleeper at {level}: {e}"))
    }
}

fn pidfd(pid: u32) -> io::Result<OwnedFd> {
    // SAFETY: pidfd_open returns a new fd or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh fd we own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// The processes whose parent is `ppid` (from /proc/*/stat).
fn children_of(ppid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    let Ok(dir) = fs::read_dir("/proc") else {
        return out;
    };
    for e in dir.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(stat) = fs::read_to_string(e.path().join("stat")) else {
            continue;
        };
        // pid (comm) state ppid ...: comm may hold spaces, so split after the last ')'.
        let parent = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1))
            .and_then(|p| p.parse::<u32>().ok());
        if parent == Some(ppid) {
            out.push(pid);
        }
    }
    out
}

fn statfs_type(path: &Path) -> io::Result<i64> {
    let c = CString::new(path.as_os_str().as_encoded_bytes()).map_err(io::Error::other)?;
    // SAFETY: statfs into a zeroed struct; c is NUL-terminated.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statfs(c.as_ptr(), &mut st) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(st.f_type as i64)
}

fn mount(fstype: &str, target: &Path) -> io::Result<()> {
    let src = CString::new(fstype).map_err(io::Error::other)?;
    let tgt = CString::new(target.as_os_str().as_encoded_bytes()).map_err(io::Error::other)?;
    // SAFETY: NUL-terminated strings, no data.
    let r = unsafe {
        libc::mount(
            src.as_ptr(),
            tgt.as_ptr(),
            src.as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// A bpffs to pin on: /sys/fs/bpf when it is one or can be made one, else a fresh one.
fn bpffs() -> io::Result<PathBuf> {
    let sys = Path::new("/sys/fs/bpf");
    if statfs_type(sys).ok() == Some(BPF_FS_MAGIC) {
        return Ok(sys.into());
    }
    if sys.is_dir() && mount("bpf", sys).is_ok() {
        return Ok(sys.into());
    }
    let own = Path::new("/run/svirt-lab-bpffs");
    fs::create_dir_all(own)?;
    mount("bpf", own)?;
    Ok(own.into())
}

fn print_libbpf(_level: libbpf_rs::PrintLevel, msg: String) {
    eprint!("{msg}");
}

fn main() {
    // The benchmark's timing loop, in a child of this binary (labeled or not).
    let argv: Vec<String> = std::env::args().collect();
    if argv.get(1).map(String::as_str) == Some(BENCH_CHILD) {
        std::process::exit(bench_child(&argv[2..]));
    }
    if argv.get(1).map(String::as_str) == Some(OPEN_CHILD) {
        std::process::exit(open_child());
    }
    let mut args = std::env::args().skip(1);
    let mut busybox = PathBuf::from("/bin/busybox");
    let mut pin_dir: Option<PathBuf> = None;
    let mut with_bench = false;
    while let Some(a) = args.next() {
        match a.as_str() {
            "--busybox" => busybox = args.next().expect("--busybox PATH").into(),
            "--pin-dir" => pin_dir = Some(args.next().expect("--pin-dir DIR").into()),
            "--bench" => with_bench = true,
            _ => {
                eprintln!("usage: lab_check [--busybox PATH] [--pin-dir DIR] [--bench]");
                std::process::exit(2);
            }
        }
    }
    // libbpf's messages (the verifier's log of a refused program is a warning) on stderr,
    // which is the console in the lab. LAB_BPF_DEBUG=1: libbpf's debug messages too.
    let level = if std::env::var_os("LAB_BPF_DEBUG").is_some() {
        libbpf_rs::PrintLevel::Debug
    } else {
        libbpf_rs::PrintLevel::Info
    };
    libbpf_rs::set_print(Some((level, print_libbpf)));

    let dir = match pin_dir {
        Some(d) => d,
        None => match bpffs() {
            Ok(fs) => fs.join("svirt-lab"),
            Err(e) => {
                labcheck("load", false, format!("no bpffs to pin on: {e}"));
                std::process::exit(1);
            }
        },
    };
    let t0 = std::time::Instant::now();
    let enforcer = match Enforcer::open(&dir, Programs::Enforce) {
        Ok(e) => e,
        Err(e) => {
            labcheck(
                "load",
                false,
                format!("Enforcer::open({}): {e}", dir.display()),
            );
            std::process::exit(1);
        }
    };
    labcheck(
        "load",
        enforcer.loaded() && enforcer.enforcing(),
        format!(
            "Enforcer::open({}, Enforce) in {:.1}s: loaded={} enforcing={}",
            dir.display(),
            t0.elapsed().as_secs_f64(),
            enforcer.loaded(),
            enforcer.enforcing()
        ),
    );
    let mut lab = Lab {
        enforcer,
        busybox,
        failed: 0,
        with_bench,
    };
    let pins: Vec<String> = svirt_bpf::enforcer::LSM_PROGRAMS
        .iter()
        .filter(|p| !dir.join("links").join(p).exists())
        .map(|p| p.to_string())
        .collect();
    lab.check(
        "pinned",
        pins.is_empty(),
        if pins.is_empty() {
            format!(
                "all {} LSM links pinned under {}/links",
                svirt_bpf::enforcer::LSM_PROGRAMS.len(),
                dir.display()
            )
        } else {
            format!("links missing: {}", pins.join(","))
        },
    );

    if let Err(e) = scenario(&mut lab) {
        lab.check("setup", false, e);
    }

    let failed = lab.failed;
    let Lab { enforcer, .. } = lab;
    match enforcer.unpin() {
        Ok(()) => labcheck("unpin", !dir.exists(), format!("{} removed", dir.display())),
        Err(e) => labcheck("unpin", false, e),
    }
    std::process::exit(if failed == 0 { 0 } else { 1 });
}

fn scenario(lab: &mut Lab) -> Result<(), String> {
    // ---- objects ---------------------------------------------------------------------
    let work = Path::new(WORK);
    fs::create_dir_all(work).map_err(|e| format!("mkdir {WORK}: {e}"))?;
    mount("tmpfs", work).map_err(|e| format!("mount a tmpfs on {WORK}: {e}"))?;
    let own = cats(OWN);
    let other = cats(OTHER);
    let shared = Cats::default();
    let bb_copy = work.join("busybox-unlabeled");
    fs::copy(&lab.busybox, &bb_copy).map_err(|e| format!("copy busybox: {e}"))?;
    fs::set_permissions(&bb_copy, fs::Permissions::from_mode(0o755))
        .map_err(|e| format!("chmod {}: {e}", bb_copy.display()))?;
    let mut labeled = Vec::new();
    for (name, label) in [
        ("A", Some(ObjectLabel::new(own, Allow::READ_WRITE, false))),
        ("B", Some(ObjectLabel::new(other, Allow::READ_WRITE, false))),
        (
            "S",
            Some(ObjectLabel::new(shared, Allow::READ_WRITE, false)),
        ),
        ("C", Some(ObjectLabel::new(shared, Allow::READ_ONLY, false))),
        ("U", None),
    ] {
        let path = work.join(name);
        fs::write(&path, format!("file {name}\n")).map_err(|e| format!("write {name}: {e}"))?;
        if let Some(label) = label {
            let f = fs::File::open(&path).map_err(|e| format!("open {name}: {e}"))?;
            let key = InodeKey::of(f.as_fd()).map_err(|e| e.to_string())?;
            lab.enforcer
                .label(&key, &label)
                .map_err(|e| e.to_string())?;
            labeled.push((name, key, label));
        }
    }
    let bb = fs::File::open(&lab.busybox).map_err(|e| format!("open busybox: {e}"))?;
    let bb_key = InodeKey::of(bb.as_fd()).map_err(|e| e.to_string())?;
    let bb_label = ObjectLabel::new(shared, Allow::READ_EXEC, false);
    lab.enforcer
        .label(&bb_key, &bb_label)
        .map_err(|e| e.to_string())?;
    labeled.push(("busybox", bb_key, bb_label));
    // The labels read back as written.
    let mut mismatch = Vec::new();
    for (name, key, label) in &labeled {
        match lab.enforcer.object(key) {
            Ok(Some(l)) if l == *label => {}
            other => mismatch.push(format!("{name}: {other:?}")),
        }
    }
    lab.check(
        "label.objects",
        mismatch.is_empty(),
        if mismatch.is_empty() {
            format!(
                "A {OWN} rw, B {OTHER} rw, S s0 rw, C s0 ro, {} s0 rx labeled; U and {} unlabeled",
                lab.busybox.display(),
                bb_copy.display()
            )
        } else {
            format!("read back wrong: {}", mismatch.join("; "))
        },
    );
    let p = |n: &str| work.join(n).display().to_string();
    let (a, b, s, c, u) = (p("A"), p("B"), p("S"), p("C"), p("U"));
    let wr = |path: &str| format!("echo x >> {path}");

    // ---- files -----------------------------------------------------------------------
    for (name, what, allow, object, args) in [
        (
            "file.read_own",
            "cat A (own level)",
            true,
            &a,
            vec!["cat", &a],
        ),
        (
            "file.write_own",
            "write A (own level)",
            true,
            &a,
            vec!["sh", "-c", &wr(&a)],
        ),
        (
            "file.read_other",
            "cat B (other guest's level)",
            false,
            &b,
            vec!["cat", &b],
        ),
        (
            "file.write_other",
            "write B (other guest's level)",
            false,
            &b,
            vec!["sh", "-c", &wr(&b)],
        ),
        (
            "file.read_shared",
            "cat S (s0, read-write)",
            true,
            &s,
            vec!["cat", &s],
        ),
        (
            "file.write_shared",
            "write S (s0, read-write)",
            true,
            &s,
            vec!["sh", "-c", &wr(&s)],
        ),
        (
            "file.read_readonly",
            "cat C (s0, read-only)",
            true,
            &c,
            vec!["cat", &c],
        ),
        (
            "file.write_readonly",
            "write C (s0, read-only)",
            false,
            &c,
            vec!["sh", "-c", &wr(&c)],
        ),
        (
            "file.read_unlabeled",
            "cat U (no label)",
            false,
            &u,
            vec!["cat", &u],
        ),
    ] {
        lab.op(name, what, allow, object, &args);
    }

    // ---- label changes -----------------------------------------------------------------
    // A guest's task caches the labels it found (own labels and their absence), valid for
    // one epoch that every label change moves: a change is seen by the task's next open,
    // whatever it cached, for a file's own label, its absence, and a tree's label. One
    // labeled process (this binary, `--open-child`) opens each file after each change, so
    // that its cache holds what it found before.
    let key_of = |path: &Path| -> Result<InodeKey, String> {
        let f = fs::File::open(path).map_err(|e| format!("open {}: {e}", path.display()))?;
        InodeKey::of(f.as_fd()).map_err(|e| e.to_string())
    };
    let exe = std::env::current_exe().map_err(|e| format!("current_exe: {e}"))?;
    lab.enforcer
        .label(
            &key_of(&exe)?,
            &ObjectLabel::new(shared, Allow::READ_EXEC, false),
        )
        .map_err(|e| e.to_string())?;
    let dir = work.join("D");
    fs::create_dir_all(&dir).map_err(|e| format!("mkdir {}: {e}", dir.display()))?;
    let in_dir = dir.join("f");
    fs::write(&in_dir, "file D/f\n").map_err(|e| format!("write D/f: {e}"))?;
    let (a_key, u_key, d_key) = (
        key_of(&work.join("A"))?,
        key_of(&work.join("U"))?,
        key_of(&dir)?,
    );
    let df = in_dir.display().to_string();
    let mut child = Command::new(&exe);
    child
        .arg(OPEN_CHILD)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped());
    lab.label_child(&mut child, OWN, || Ok(()));
    let mut child = child
        .spawn()
        .map_err(|e| format!("spawn {OPEN_CHILD}: {e}"))?;
    let (Some(mut to), Some(from)) = (child.stdin.take(), child.stdout.take()) else {
        return Err(format!("{OPEN_CHILD}: no pipes"));
    };
    let mut from = io::BufReader::new(from);
    let mut open_in_child = |path: &str| -> Result<String, String> {
        use io::{BufRead, Write};
        writeln!(to, "{path}").map_err(|e| format!("{OPEN_CHILD}: write: {e}"))?;
        let mut line = String::new();
        from.read_line(&mut line)
            .map_err(|e| format!("{OPEN_CHILD}: read: {e}"))?;
        Ok(line.trim().to_string())
    };
    let mine_rw = ObjectLabel::new(own, Allow::READ_WRITE, false);
    let mine_tree = ObjectLabel::new(own, Allow::READ_WRITE, true);
    let theirs = ObjectLabel::new(other, Allow::READ_WRITE, false);
    type Change<'a> = &'a dyn Fn(&Enforcer) -> Result<(), svirt_bpf::BpfError>;
    let steps: [(&str, Change<'_>, &str, bool); 10] = [
        ("A (own)", &|_| Ok(()), &a, true),
        (
            "A relabeled the other guest's",
            &|e| e.label(&a_key, &theirs),
            &a,
            false,
        ),
        ("A relabeled back", &|e| e.label(&a_key, &mine_rw), &a, true),
        ("U (unlabeled)", &|_| Ok(()), &u, false),
        ("U labeled own", &|e| e.label(&u_key, &mine_rw), &u, true),
        (
            "U unlabeled again",
            &|e| e.unlabel(&u_key).map(|_| ()),
            &u,
            false,
        ),
        (
            "D labeled own, a tree",
            &|e| e.label(&d_key, &mine_tree),
            &df,
            true,
        ),
        (
            "D labeled own, not a tree",
            &|e| e.label(&d_key, &mine_rw),
            &df,
            false,
        ),
        (
            "D a tree again",
            &|e| e.label(&d_key, &mine_tree),
            &df,
            true,
        ),
        (
            "D unlabeled",
            &|e| e.unlabel(&d_key).map(|_| ()),
            &df,
            false,
        ),
    ];
    let mut results = Vec::new();
    for (what, change, path, allow) in steps {
        change(&lab.enforcer).map_err(|e| format!("{what}: {e}"))?;
        let got = open_in_child(path)?;
        let want = if allow { "ok" } else { "13" };
        results.push((what, want, got));
    }
    // End of input: the child exits.
    drop(to);
    let _ = child.wait();
    let changed_ok = results.iter().all(|(_, want, got)| want == got);
    lab.check(
        "label.change",
        changed_ok,
        results
            .iter()
            .map(|(what, want, got)| format!("{what}: {got} (want {want})"))
            .collect::<Vec<_>>()
            .join("; "),
    );

    // ---- exec and mmap ---------------------------------------------------------------
    // The labeled busybox ran in every check above: exec of a READ_EXEC object works.
    let control = lab.run(lab.command(None, &bb_copy, &["true"]));
    let labeled_exec = lab.run(lab.command(Some(OWN), &bb_copy, &["true"]));
    lab.check(
        "exec.unlabeled",
        control.allowed() && labeled_exec.denied(""),
        format!(
            "exec {} at {OWN}: {labeled_exec} (want denied); unlabeled control: {control}",
            bb_copy.display()
        ),
    );
    // mmap PROT_EXEC of the guest's own read-write image: type enforcement says no.
    let a_c = CString::new(a.clone()).map_err(|e| e.to_string())?;
    let mmap_exec = move || -> io::Result<()> {
        // SAFETY: open/mmap/munmap/close with valid arguments; nothing is dereferenced.
        unsafe {
            let fd = libc::open(a_c.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC);
            if fd < 0 {
                return Err(io::Error::last_os_error());
            }
            let m = libc::mmap(
                std::ptr::null_mut(),
                4096,
                libc::PROT_READ | libc::PROT_EXEC,
                libc::MAP_PRIVATE,
                fd,
                0,
            );
            let err = io::Error::last_os_error();
            libc::close(fd);
            if m == libc::MAP_FAILED {
                return Err(err);
            }
            libc::munmap(m, 4096);
        }
        Ok(())
    };
    let control = lab.probe(None, mmap_exec.clone());
    let labeled_mmap = lab.probe(Some(OWN), mmap_exec);
    lab.check(
        "mmap.exec_image",
        control.allowed() && labeled_mmap.denied(""),
        format!("mmap(PROT_EXEC) of A at {OWN}: {labeled_mmap} (want denied); unlabeled control: {control}"),
    );

    // ---- inheritance -----------------------------------------------------------------
    // Tasks the labeled process creates carry its label: a subshell of its shell (a fork;
    // not the script's last command, so ash cannot exec in place of forking), running
    // busybox's applet in the forked task or exec'ing /bin/busybox from it.
    let bb_path = lab.busybox.display().to_string();
    for (name, what, allow, object, script) in [
        (
            "fork.read_other",
            "forked subshell: cat B",
            false,
            &b,
            format!("(cat {b}); exit $?"),
        ),
        (
            "fork_exec.read_other",
            "forked subshell exec'ing busybox: cat B",
            false,
            &b,
            format!("({bb_path} cat {b}); exit $?"),
        ),
        (
            "fork.read_own",
            "forked subshell: cat A",
            true,
            &a,
            format!("(cat {a}); exit $?"),
        ),
    ] {
        lab.op(name, what, allow, object, &["sh", "-c", &script]);
    }
    // The label of the forked task itself, read back by pidfd.
    let mut sh = lab
        .command(
            Some(OWN),
            &lab.busybox,
            &["sh", "-c", "(sleep 600; true); exit $?"],
        )
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("spawn a labeled sh: {e}"))?;
    let forked = (0..50).find_map(|_| {
        let kids = children_of(sh.id());
        if kids.is_empty() {
            std::thread::sleep(Duration::from_millis(100));
        }
        kids.first().copied()
    });
    let forked_label = match forked {
        Some(pid) => match pidfd(pid) {
            Ok(fd) => match lab.enforcer.subject(fd.as_fd()) {
                Ok(Some(l)) => l.cats.to_level().to_string(),
                Ok(None) => "none".into(),
                Err(e) => format!("error: {e}"),
            },
            Err(e) => format!("pidfd_open: {e}"),
        },
        None => "no child found".into(),
    };
    lab.check(
        "fork.readback",
        forked.is_some() && forked_label == OWN,
        format!(
            "label of the subshell task {forked:?} forked by a labeled sh (pid {}): {forked_label} (want {OWN})",
            sh.id()
        ),
    );
    let mut doomed: Vec<u32> = forked.map(children_of).unwrap_or_default();
    doomed.extend(forked);
    for pid in doomed {
        // SAFETY: kill(2) of a process of ours.
        unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
    }
    let _ = sh.kill();
    let _ = sh.wait();

    // ---- the host is not affected ---------------------------------------------------
    let host = fs::read_to_string(&b);
    lab.check(
        "host.read_other",
        host.as_deref().is_ok_and(|t| t.starts_with("file B")),
        format!(
            "this unlabeled process reads B: {:?}",
            host.map(|t| t.len())
        ),
    );

    // ---- signals and the label of a running task --------------------------------------
    let mut victim_other = lab.spawn_sleeper(OTHER);
    let mut victim_own = lab.spawn_sleeper(OWN);
    let readback = |child: &Child| -> String {
        match pidfd(child.id()) {
            Ok(fd) => match lab.enforcer.subject(fd.as_fd()) {
                Ok(Some(l)) => l.cats.to_level().to_string(),
                Ok(None) => "none".into(),
                Err(e) => format!("error: {e}"),
            },
            Err(e) => format!("pidfd_open: {e}"),
        }
    };
    let (lo, lw) = (readback(&victim_other), readback(&victim_own));
    lab.check(
        "subject.readback",
        lo == OTHER && lw == OWN,
        format!("task labels read back by pidfd: {lo} and {lw} (want {OTHER} and {OWN})"),
    );
    let pid_other = victim_other.id().to_string();
    let pid_own = victim_own.id().to_string();
    let kill_other = lab.busybox(Some(OWN), &["kill", "-TERM", &pid_other]);
    std::thread::sleep(Duration::from_millis(200));
    let still_alive = matches!(victim_other.try_wait(), Ok(None));
    // Control: the host may signal it.
    let _ = lab.busybox(None, &["kill", "-TERM", &pid_other]);
    let control = victim_other.wait().map(|s| s.signal());
    lab.check(
        "signal.other",
        kill_other.denied(&pid_other) && still_alive && matches!(control, Ok(Some(libc::SIGTERM))),
        format!(
            "kill -TERM of a task at {OTHER} from {OWN}: {kill_other} (want denied), target alive after: {still_alive}; host's kill (control): {control:?}"
        ),
    );
    let kill_own = lab.busybox(Some(OWN), &["kill", "-TERM", &pid_own]);
    let own_end = victim_own.wait().map(|s| s.signal());
    lab.check(
        "signal.own",
        kill_own.allowed() && matches!(own_end, Ok(Some(libc::SIGTERM))),
        format!("kill -TERM of a task at {OWN} from {OWN}: {kill_own}, target ended by signal {own_end:?}"),
    );

    // ---- bpf(2) ------------------------------------------------------------------------
    let map_fd = lab.enforcer.subjects_fd().as_raw_fd();
    let bpf_info = move || -> io::Result<()> {
        // BPF_OBJ_GET_INFO_BY_FD on the task-label map: bpf_fd u32, info_len u32, info u64.
        let mut info = [0u64; 16];
        let attr: [u64; 2] = [
            u64::from(map_fd as u32) | ((std::mem::size_of_val(&info) as u64) << 32),
            info.as_mut_ptr() as u64,
        ];
        const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
        // SAFETY: attr is a valid bpf_attr prefix pointing at `info`, alive for the call.
        let r = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_OBJ_GET_INFO_BY_FD,
                attr.as_ptr(),
                std::mem::size_of_val(&attr) as u32,
            )
        };
        if r != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    };
    let control = lab.probe(None, bpf_info);
    let labeled_bpf = lab.probe(Some(OWN), bpf_info);
    lab.check(
        "bpf.syscall",
        control.allowed() && matches!(&labeled_bpf, Outcome::Spawn(e) if e.raw_os_error() == Some(libc::EPERM)),
        format!("bpf(BPF_OBJ_GET_INFO_BY_FD) at {OWN}: {labeled_bpf} (want EPERM); unlabeled control: {control}"),
    );

    // ---- denial events ----------------------------------------------------------------
    let seen: Rc<RefCell<Vec<(u32, bool)>>> = Rc::default();
    let events = (|| -> Result<i32, libbpf_rs::Error> {
        let seen = seen.clone();
        let mut rb = libbpf_rs::RingBufferBuilder::new();
        rb.add(lab.enforcer.events_map(), move |data: &[u8]| {
            // struct svirt_event: hook u32, want u32, pid u32, target_pid u32, dev u64,
            // ino u64, labeled u32, pad u32, subject level (128 bytes), object level, comm.
            let word =
                |at: usize| u64::from_ne_bytes(data[at..at + 8].try_into().unwrap_or_default());
            if data.len() < 168 {
                seen.borrow_mut().push((0, false));
                return 0;
            }
            let hook = u32::from_ne_bytes(data[0..4].try_into().unwrap_or_default());
            let mut words = [0u64; 16];
            for (i, w) in words.iter_mut().enumerate() {
                *w = word(40 + i * 8);
            }
            seen.borrow_mut().push((hook, Cats(words) == own));
            0
        })?;
        let rb = rb.build()?;
        Ok(rb.consume_raw())
    })();
    let seen = seen.borrow();
    let mut hooks: Vec<&str> = seen
        .iter()
        .map(|(h, _)| HOOK_NAMES.get(*h as usize).copied().unwrap_or("?"))
        .collect();
    hooks.sort();
    hooks.dedup();
    let all_own = seen.iter().all(|(_, o)| *o);
    let want_hooks = ["bpf", "mmap", "open", "signal"];
    lab.check(
        "events.denials",
        matches!(events, Ok(n) if n > 0) && all_own && want_hooks.iter().all(|h| hooks.contains(h)),
        format!(
            "{} denial events ({events:?}), hooks {} (want at least {}), all by {OWN}: {all_own}",
            seen.len(),
            hooks.join(","),
            want_hooks.join(",")
        ),
    );

    // ---- cost -------------------------------------------------------------------------
    if lab.with_bench {
        let t0 = std::time::Instant::now();
        if let Err(e) = bench(lab, work) {
            lab.check("bench.detach", false, format!("benchmark not run: {e}"));
        }
        println!("LABINFO benchmark took {:.1}s", t0.elapsed().as_secs_f64());
    }

    // Leave the tmpfs (the labels go with the unpin).
    drop(bb);
    let _ = Command::new("umount").arg(work).status();
    Ok(())
}

// ---- the benchmark -------------------------------------------------------------------
//
// The benchmark: the cost of open()+close() of a labeled file inside a guest and
// on the host, with and without the programs, in one run (goal: at most 5% inside a
// guest, unmeasurable on the host). The programs are detached and re-attached between
// rounds (the links go and come back; the maps, labels included, stay), in the order
// without, with, with, without, without, ... so that neither state always runs first.
// Every measurement is a child of this binary timing its own loop (`--bench-child`):
// unlabeled (the host), or labeled at OWN by SubjectHook before exec (the guest).

/// The first argument of a timing child.
const BENCH_CHILD: &str = "--bench-child";
/// The first argument of the child that opens, one after another, the paths it reads on
/// its standard input (one a line) and answers each with `ok` or the open's errno.
const OPEN_CHILD: &str = "--open-child";

fn open_child() -> i32 {
    use io::{BufRead, Write};
    let mut out = io::stdout().lock();
    for line in io::stdin().lock().lines() {
        let Ok(path) = line else { return 1 };
        let answer = match fs::File::open(&path) {
            Ok(_) => "ok".to_string(),
            Err(e) => e.raw_os_error().unwrap_or(-1).to_string(),
        };
        if writeln!(out, "{answer}")
            .and_then(|()| out.flush())
            .is_err()
        {
            return 1;
        }
    }
    0
}
/// open()+close() pairs timed per measurement (after a tenth as many to warm up), in
/// batches of BENCH_BATCH.
const BENCH_OPENS: u32 = 20_000;
const BENCH_BATCH: u32 = 200;
/// Rounds per state (medians over these); even, so that each state runs first as often.
const BENCH_ROUNDS: usize = 6;
/// The host's overhead counts as unmeasurable within this (or within the spread of the
/// rounds without the programs, when that is larger).
const HOST_NOISE: f64 = 0.03;
/// The goal inside a guest.
const GUEST_GOAL: f64 = 0.05;
/// The timing child: `FILE N PROBE`. Tries to open PROBE once (reported: whether the
/// programs enforce, for a labeled child), then times N open(FILE)+close() pairs in
/// batches of BENCH_BATCH and prints the ns per pair of the fastest batch and over all:
/// `min=<ns> mean=<ns> probe=<ok|errno>`. The fastest batch is the estimate the checks
/// use: TCG runs on the host's time, so a vCPU thread the host preempts (other work on
/// the machine) inflates a batch by the time it waited, in either state; a batch of a
/// few ms the host left alone measures what the code costs.
fn bench_child(args: &[String]) -> i32 {
    let [file, n, probe] = args else {
        eprintln!("usage: lab_check {BENCH_CHILD} FILE N PROBE");
        return 2;
    };
    let Ok(n) = n.parse::<u32>() else {
        eprintln!("{BENCH_CHILD}: N {n:?} is not a count");
        return 2;
    };
    let (Ok(file), Ok(probe)) = (CString::new(file.as_str()), CString::new(probe.as_str())) else {
        eprintln!("{BENCH_CHILD}: a path holds a NUL");
        return 2;
    };
    let open_close = |path: &CString| -> io::Result<()> {
        // SAFETY: open of a NUL-terminated path, close of the fd it returned.
        unsafe {
            let fd = libc::open(path.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC);
            if fd < 0 {
                return Err(io::Error::last_os_error());
            }
            libc::close(fd);
        }
        Ok(())
    };
    let probe = match open_close(&probe) {
        Ok(()) => "ok".to_string(),
        Err(e) => e.raw_os_error().unwrap_or(-1).to_string(),
    };
    let timed = || -> io::Result<(f64, f64)> {
        for _ in 0..n / 10 {
            open_close(&file)?;
        }
        let (mut min, mut total) = (f64::MAX, 0.0);
        let mut done = 0;
        while done < n {
            let batch = BENCH_BATCH.min(n - done);
            let t = std::time::Instant::now();
            for _ in 0..batch {
                open_close(&file)?;
            }
            let ns = t.elapsed().as_nanos() as f64;
            min = min.min(ns / f64::from(batch));
            total += ns;
            done += batch;
        }
        Ok((min, total / f64::from(n.max(1))))
    };
    match timed() {
        Ok((min, mean)) => {
            println!("min={min:.1} mean={mean:.1} probe={probe}");
            0
        }
        Err(e) => {
            eprintln!("{BENCH_CHILD}: open {}: {e}", file.to_string_lossy());
            1
        }
    }
}

/// One bpf(2) command on a zero-padded attribute.
fn sys_bpf(cmd: libc::c_long, attr: &[u64]) -> io::Result<i32> {
    // SAFETY: attr is a bpf_attr prefix for `cmd`, its pointers alive for the call.
    let r = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr.as_ptr(),
            std::mem::size_of_val(attr) as u32,
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(r as i32)
}

const BPF_OBJ_PIN: libc::c_long = 6;
const BPF_OBJ_GET: libc::c_long = 7;
const BPF_PROG_GET_FD_BY_ID: libc::c_long = 13;
const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
const BPF_LINK_CREATE: libc::c_long = 28;
/// enum bpf_attach_type: BPF_LSM_MAC.
const BPF_LSM_MAC: u64 = 27;

fn owned(fd: i32) -> OwnedFd {
    // SAFETY: a fresh fd the kernel just returned to us.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

/// The LSM programs of the pinned links, held by fd so that their links may go (the
/// programs detach: no hook calls them) and come back (a new link each, pinned where
/// the old one was, so the enforcer sees itself enforcing again).
struct Attachment {
    links: PathBuf,
    progs: Vec<(&'static str, OwnedFd)>,
    attached: bool,
}

impl Attachment {
    fn take(dir: &Path) -> Result<Attachment, String> {
        let links = dir.join("links");
        let mut progs = Vec::new();
        for name in svirt_bpf::enforcer::LSM_PROGRAMS {
            let at = links.join(name);
            let path =
                CString::new(at.as_os_str().as_encoded_bytes()).map_err(|e| e.to_string())?;
            // BPF_OBJ_GET: pathname u64, bpf_fd u32, file_flags u32.
            let link = sys_bpf(BPF_OBJ_GET, &[path.as_ptr() as u64, 0])
                .map(owned)
                .map_err(|e| format!("open the pinned link {}: {e}", at.display()))?;
            // struct bpf_link_info: type u32, id u32, prog_id u32, ...
            let mut info = [0u64; 8];
            let attr = [
                u64::from(link.as_raw_fd() as u32) | ((std::mem::size_of_val(&info) as u64) << 32),
                info.as_mut_ptr() as u64,
            ];
            sys_bpf(BPF_OBJ_GET_INFO_BY_FD, &attr)
                .map_err(|e| format!("link info of {name}: {e}"))?;
            let prog_id = info[1] & 0xffff_ffff;
            // BPF_PROG_GET_FD_BY_ID: prog_id u32, next_id u32, open_flags u32.
            let prog = sys_bpf(BPF_PROG_GET_FD_BY_ID, &[prog_id, 0])
                .map(owned)
                .map_err(|e| format!("program {prog_id} of link {name}: {e}"))?;
            progs.push((name, prog));
        }
        Ok(Attachment {
            links,
            progs,
            attached: true,
        })
    }

    /// Removes every link: the programs stay loaded (our fds) but no hook calls them.
    fn detach(&mut self) -> Result<(), String> {
        for (name, _) in &self.progs {
            let at = self.links.join(name);
            fs::remove_file(&at).map_err(|e| format!("unpin {}: {e}", at.display()))?;
        }
        self.attached = false;
        Ok(())
    }

    /// A new link per program (BPF_LINK_CREATE, BPF_LSM_MAC), pinned as before.
    fn attach(&mut self) -> Result<(), String> {
        for (name, prog) in &self.progs {
            let at = self.links.join(name);
            if at.exists() {
                continue;
            }
            // BPF_LINK_CREATE: prog_fd u32, target_fd u32, attach_type u32, flags u32, ...
            let attr = [u64::from(prog.as_raw_fd() as u32), BPF_LSM_MAC, 0, 0];
            let link = sys_bpf(BPF_LINK_CREATE, &attr)
                .map(owned)
                .map_err(|e| format!("attach {name}: {e}"))?;
            let path =
                CString::new(at.as_os_str().as_encoded_bytes()).map_err(|e| e.to_string())?;
            sys_bpf(
                BPF_OBJ_PIN,
                &[path.as_ptr() as u64, u64::from(link.as_raw_fd() as u32)],
            )
            .map_err(|e| format!("pin link {name} at {}: {e}", at.display()))?;
        }
        self.attached = true;
        Ok(())
    }
}

impl Drop for Attachment {
    /// The lab's later checks (unpin) expect the programs attached and pinned.
    fn drop(&mut self) {
        if !self.attached
            && let Err(e) = self.attach()
        {
            eprintln!("lab_check: re-attaching after the benchmark: {e}");
        }
    }
}

fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// One kind of measurement: its per-open ns in each round, without and with.
#[derive(Default)]
struct Series {
    /// The fastest batch's, per round.
    off: Vec<f64>,
    on: Vec<f64>,
    /// Over all of a round's pairs, per round.
    off_mean: Vec<f64>,
    on_mean: Vec<f64>,
}

impl Series {
    fn overhead(&self) -> f64 {
        median(&self.on) / median(&self.off) - 1.0
    }

    /// The round-to-round spread of the rounds without the programs, robust to one
    /// round the host disturbed throughout: their median absolute deviation over their
    /// median.
    fn spread(&self) -> f64 {
        let m = median(&self.off);
        let dev: Vec<f64> = self.off.iter().map(|v| (v - m).abs()).collect();
        median(&dev) / m
    }

    /// The overheads of the rounds' pairs (each round measures both states back to back).
    fn paired(&self) -> (f64, f64) {
        let p: Vec<f64> = self
            .off
            .iter()
            .zip(&self.on)
            .map(|(off, on)| on / off - 1.0)
            .collect();
        (
            p.iter().copied().fold(f64::MAX, f64::min),
            p.iter().copied().fold(f64::MIN, f64::max),
        )
    }

    fn describe(&self, what: &str) -> String {
        let (lo, hi) = self.paired();
        let mean = median(&self.on_mean) / median(&self.off_mean) - 1.0;
        format!(
            "{what}: without {:.0} ns, with {:.0} ns per open+close (medians over {} rounds of the fastest batch of {BENCH_BATCH} among {BENCH_OPENS}): overhead {:+.1}% (rounds' pairs {:+.1}%..{:+.1}%; spread of the rounds without (MAD) {:.1}%); over all pairs, preemptions included: without {:.0} ns, with {:.0} ns, {:+.1}%",
            median(&self.off),
            median(&self.on),
            self.off.len(),
            self.overhead() * 100.0,
            lo * 100.0,
            hi * 100.0,
            self.spread() * 100.0,
            median(&self.off_mean),
            median(&self.on_mean),
            mean * 100.0
        )
    }
}

/// One timing child: per-open ns (fastest batch, over all), and whether its probe opened.
fn bench_once(
    lab: &Lab,
    exe: &Path,
    level: Option<&str>,
    file: &Path,
    probe: &Path,
) -> Result<(f64, f64, String), String> {
    let mut c = Command::new(exe);
    c.arg(BENCH_CHILD)
        .arg(file)
        .arg(BENCH_OPENS.to_string())
        .arg(probe)
        .stdin(Stdio::null());
    if let Some(level) = level {
        lab.label_child(&mut c, level, || Ok(()));
    }
    let out = c
        .output()
        .map_err(|e| format!("spawn {} at {level:?}: {e}", exe.display()))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let field = |k: &str| {
        stdout
            .split_whitespace()
            .find_map(|w| w.strip_prefix(k).and_then(|v| v.strip_prefix('=')))
    };
    let num = |k: &str| field(k).and_then(|v| v.parse::<f64>().ok());
    match (out.status.success(), num("min"), num("mean")) {
        (true, Some(min), Some(mean)) => Ok((min, mean, field("probe").unwrap_or("?").to_string())),
        _ => Err(format!(
            "timing child at {level:?} on {}: {} ({} {})",
            file.display(),
            Outcome::of(out.status, &out.stderr),
            stdout.trim(),
            String::from_utf8_lossy(&out.stderr).trim()
        )),
    }
}

fn bench(lab: &mut Lab, work: &Path) -> Result<(), String> {
    // This binary, run by its timing children: a guest's may exec it as it may the
    // emulator (s0, read and execute).
    let exe = std::env::current_exe().map_err(|e| format!("current_exe: {e}"))?;
    let exe_file = fs::File::open(&exe).map_err(|e| format!("open {}: {e}", exe.display()))?;
    let exe_key = InodeKey::of(exe_file.as_fd()).map_err(|e| e.to_string())?;
    lab.enforcer
        .label(
            &exe_key,
            &ObjectLabel::new(Cats::default(), Allow::READ_EXEC, false),
        )
        .map_err(|e| e.to_string())?;
    // The guest's own file (A, labeled itself: the direct hit), a file of a directory
    // labeled as its tree (found one dentry up), and the other guest's file (B: the
    // probe that tells whether the programs enforce).
    let own = work.join("A");
    let probe = work.join("B");
    let tree = work.join("T");
    fs::create_dir_all(&tree).map_err(|e| format!("mkdir {}: {e}", tree.display()))?;
    let in_tree = tree.join("f");
    fs::write(&in_tree, "file T/f\n").map_err(|e| format!("write {}: {e}", in_tree.display()))?;
    let tree_dir = fs::File::open(&tree).map_err(|e| format!("open {}: {e}", tree.display()))?;
    let tree_key = InodeKey::of(tree_dir.as_fd()).map_err(|e| e.to_string())?;
    lab.enforcer
        .label(
            &tree_key,
            &ObjectLabel::new(cats(OWN), Allow::READ_WRITE, true),
        )
        .map_err(|e| e.to_string())?;

    let mut attachment = Attachment::take(lab.enforcer.dir())?;
    let (mut host, mut guest, mut guest_tree) =
        (Series::default(), Series::default(), Series::default());
    // Whether each state was what it claims, by the guest's probe of B and the pins.
    let mut toggle_wrong = Vec::new();
    let mut toggles = 0;
    for round in 0..BENCH_ROUNDS {
        let order = if round % 2 == 0 {
            [false, true]
        } else {
            [true, false]
        };
        for on in order {
            if on != attachment.attached {
                toggles += 1;
                if on {
                    attachment.attach()?;
                } else {
                    attachment.detach()?;
                }
            }
            let state = if on { "with" } else { "without" };
            if lab.enforcer.enforcing() != on {
                toggle_wrong.push(format!(
                    "round {round} {state}: links pinned = {}",
                    lab.enforcer.enforcing()
                ));
            }
            let (h, hm, _) = bench_once(lab, &exe, None, &own, &probe)?;
            let (g, gm, g_probe) = bench_once(lab, &exe, Some(OWN), &own, &probe)?;
            let (t, tm, t_probe) = bench_once(lab, &exe, Some(OWN), &in_tree, &probe)?;
            let want_probe = if on { "13" } else { "ok" };
            for p in [&g_probe, &t_probe] {
                if p != want_probe {
                    toggle_wrong.push(format!(
                        "round {round} {state}: the guest's open of B gave {p} (want {want_probe})"
                    ));
                }
            }
            println!(
                "LABINFO bench round {round} {state}: host {h:.0} ns, guest {g:.0} ns, guest via tree {t:.0} ns per open+close (fastest batch); over all: {hm:.0}, {gm:.0}, {tm:.0} ns"
            );
            for (s, v, m) in [
                (&mut host, h, hm),
                (&mut guest, g, gm),
                (&mut guest_tree, t, tm),
            ] {
                if on {
                    s.on.push(v);
                    s.on_mean.push(m);
                } else {
                    s.off.push(v);
                    s.off_mean.push(m);
                }
            }
        }
    }
    attachment.attach()?;
    drop(attachment);
    let toggled = toggle_wrong.is_empty();
    lab.check(
        "bench.detach",
        toggled,
        if toggled {
            format!(
                "{toggles} detach/attach toggles of the {} LSM programs: every round without let the guest open B, every round with denied it",
                svirt_bpf::enforcer::LSM_PROGRAMS.len()
            )
        } else {
            format!("the states were not what they claim: {}", toggle_wrong.join("; "))
        },
    );
    let unmeasurable = HOST_NOISE.max(host.spread());
    let why = if toggled {
        ""
    } else {
        " (not a measurement of the programs: see bench.detach)"
    };
    let host_ok = host.overhead().abs() <= unmeasurable;
    // Numbers, not checks: a goal is met or missed, and says so.
    let verdict = |ok: bool| if ok { "met" } else { "MISSED" };
    println!(
        "LABINFO bench.host goal {} {}",
        verdict(toggled && host_ok),
        format_args!(
            "{}; unmeasurable when |overhead| <= {:.1}% (the larger of {:.0}% and the spread){}",
            host.describe("unlabeled process, open of A (labeled)"),
            unmeasurable * 100.0,
            HOST_NOISE * 100.0,
            why
        )
    );
    for (name, series, what) in [
        (
            "bench.guest",
            &guest,
            format!("process at {OWN}, open of A (its own label)"),
        ),
        (
            "bench.guest_tree",
            &guest_tree,
            format!("process at {OWN}, open of T/f (label of the tree T, one level up)"),
        ),
    ] {
        let ok = series.overhead() <= GUEST_GOAL;
        println!(
            "LABINFO {name} goal {} {}",
            verdict(toggled && ok),
            format_args!(
                "{}; goal <= {:.0}%{}",
                series.describe(&what),
                GUEST_GOAL * 100.0,
                why
            ),
        );
    }
    Ok(())
}
