//! The AppArmor scenario's side of the probe: entering a profile at exec, reading a
//! process's AppArmor label, the expected table from AppArmor's semantics, AppArmor's
//! audit records, and the checks comparing what the kernel did with that table.
//!
//! AppArmor is path-based and mediates what a profile's rules name: a file open is allowed
//! iff the profile has a rule granting the access to that path, `stat()` is not mediated at
//! all, and signals and ptrace between two confined processes are checked against BOTH
//! profiles (the sender's `send`/`trace` and the receiver's `receive`/`tracedby`), each side
//! audited under its own profile. The expected table (`aa-expect`) is that model applied to
//! what a guest's profile grants: exactly its plan (svirt's profile is generated from the
//! plan: a private or shared disk `rwk`, a read-only one `rk`), nothing else of the lab's
//! files, signals only within its own profile and from `unconfined`, no ptrace; plus
//! what Debian's `abstractions/base` (included by every svirt profile) grants every
//! profile: `signal (receive, send) set=("exists")` (signal 0 is allowed between guests)
//! and `ptrace (readby, tracedby)` (only the tracer's side of a ptrace is denied).
//!
//! In the scenario's plan the third field of `guest NAME X` is the guest's uuid (its
//! profile is `svirt-<uuid>`), not an MCS level.

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::CString;
use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use crate::check::{CheckResult, GuestResults};
use crate::error::{Context, Error, Result};
use crate::plan::{
    Action, Attack, Decision, DiskKind, Expectation, Expected, Op, Plan, parse_pids,
};

/// The profile svirt gives the guest with this uuid.
pub fn profile_of(uuid: &str) -> String {
    format!("svirt-{}", uuid.to_ascii_lowercase())
}

/// A process's AppArmor label and mode, e.g. (`svirt-…`, `enforce`) or (`unconfined`, ``).
pub fn process_label(pid: &str) -> Result<(String, String)> {
    let mut last = None;
    for p in [
        format!("/proc/{pid}/attr/apparmor/current"),
        format!("/proc/{pid}/attr/current"),
    ] {
        match fs::read(&p) {
            Ok(raw) => return Ok(split_label(&String::from_utf8_lossy(&raw))),
            Err(e) => last = Some(Err::<(), _>(e).ctx(|| format!("reading {p}"))),
        }
    }
    Err(last
        .and_then(|r| r.err())
        .unwrap_or_else(|| Error::msg("no attr file")))
}

/// `svirt-x (enforce)\n` → (`svirt-x`, `enforce`); `unconfined` → (`unconfined`, ``).
pub fn split_label(raw: &str) -> (String, String) {
    let raw = raw.trim_matches(|c: char| c == '\0' || c.is_whitespace());
    match raw.rsplit_once(" (") {
        Some((label, mode)) if mode.ends_with(')') => {
            (label.to_string(), mode.trim_end_matches(')').to_string())
        }
        _ => (raw.to_string(), String::new()),
    }
}

/// Ask the kernel to confine this thread's next execve() by `profile`, then exec `args`.
pub fn exec_confined(profile: &str, args: &[String]) -> Result<bool> {
    let cmd = format!("exec {profile}");
    let mut done = Err(Error::msg("no attr file"));
    for p in [
        "/proc/thread-self/attr/apparmor/exec",
        "/proc/thread-self/attr/exec",
    ] {
        done = OpenOptions::new()
            .write(true)
            .open(p)
            .and_then(|mut f| f.write_all(cmd.as_bytes()))
            .ctx(|| format!("writing {cmd:?} to {p}"));
        if done.is_ok() {
            break;
        }
    }
    done?;
    crate::execv_args(args, "aa-exec")
}

fn cstr(p: &Path) -> Result<CString> {
    CString::new(p.as_os_str().as_bytes()).map_err(|_| Error::msg("path contains NUL"))
}

fn sys(rc: libc::c_long, what: impl FnOnce() -> String) -> Result<libc::c_long> {
    if rc < 0 {
        Err(std::io::Error::last_os_error()).ctx(what)
    } else {
        Ok(rc)
    }
}

/// Remount the mount at `path` read-write, or, when `ro`, read-only: the mount
/// (`MS_REMOUNT|MS_BIND`), or with `sb` its file system (`MS_REMOUNT`).
fn remount_flags(path: &Path, ro: bool, sb: bool) -> Result<()> {
    let c = cstr(path)?;
    let flags = libc::MS_REMOUNT
        | if sb { 0 } else { libc::MS_BIND }
        | if ro { libc::MS_RDONLY } else { 0 };
    // SAFETY: a NUL-terminated path; null source, type and data are allowed for a remount.
    let rc = unsafe {
        libc::mount(
            std::ptr::null(),
            c.as_ptr(),
            std::ptr::null(),
            flags,
            std::ptr::null(),
        )
    };
    sys(rc.into(), || {
        format!("remount {} ro={ro} sb={sb}", path.display())
    })
    .map(|_| ())
}

fn remount(path: &Path, ro: bool) -> Result<()> {
    remount_flags(path, ro, false)
}

/// Breach the mount-namespace jail of process `pid` on purpose (run unconfined, as root):
/// each of `paths` is made visible there at its own path, read-write: a path the jail
/// does not show is bound in from here (`open_tree(OPEN_TREE_CLONE)` then, inside,
/// `move_mount`), one it shows read-only is remounted read-write. What the VMM can then
/// reach is decided by its other confinement alone (the AppArmor scenario's question).
/// Returns what was done, one item per path.
pub fn breach_jail(pid: i32, paths: &[PathBuf]) -> Result<Vec<String>> {
    const OPEN_TREE_CLONE: libc::c_long = 1;
    const MOVE_MOUNT_F_EMPTY_PATH: libc::c_long = 4;
    let mut trees = Vec::new();
    for p in paths {
        let c = cstr(p)?;
        // SAFETY: plain syscall with a NUL-terminated path.
        let fd = unsafe {
            libc::syscall(
                libc::SYS_open_tree,
                libc::AT_FDCWD,
                c.as_ptr(),
                OPEN_TREE_CLONE | libc::O_CLOEXEC as libc::c_long,
            )
        };
        trees.push(sys(fd, || format!("open_tree {}", p.display()))?);
    }
    let ns = format!("/proc/{pid}/ns/mnt");
    let nsf = fs::File::open(&ns).ctx(|| format!("opening {ns}"))?;
    // SAFETY: a valid fd of a mount namespace; this process is single-threaded.
    let rc = unsafe { libc::setns(std::os::fd::AsRawFd::as_raw_fd(&nsf), libc::CLONE_NEWNS) };
    sys(rc.into(), || format!("setns {ns}"))?;
    // The jail's root is a tmpfs made read-only (mount and file system): both, for the
    // mount points, and both again afterwards.
    let root = Path::new("/");
    remount(root, false)?;
    remount_flags(root, false, true)?;
    let mut done = Vec::new();
    for (p, fd) in paths.iter().zip(&trees) {
        if p.exists() {
            remount(p, false)?;
            done.push(format!("{} remounted rw", p.display()));
            continue;
        }
        if let Some(parent) = p.parent() {
            fs::create_dir_all(parent).ctx(|| format!("mkdir {}", parent.display()))?;
        }
        fs::File::create(p).ctx(|| format!("creating mount point {}", p.display()))?;
        let c = cstr(p)?;
        let empty = CString::default();
        // SAFETY: a detached mount fd from open_tree and NUL-terminated paths.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_move_mount,
                *fd as libc::c_int,
                empty.as_ptr(),
                libc::AT_FDCWD,
                c.as_ptr(),
                MOVE_MOUNT_F_EMPTY_PATH,
            )
        };
        sys(rc, || format!("move_mount onto {}", p.display()))?;
        done.push(format!("{} bound in", p.display()));
    }
    remount_flags(root, true, true)?;
    remount(root, true)?;
    Ok(done)
}

/// What a guest's profile grants a path, from the plan (how svirt generates it).
fn granted(plan: &Plan, guest: &str, path: &Path) -> Option<&'static str> {
    plan.disks
        .iter()
        .filter(|d| d.path == path)
        .filter_map(|d| match d.kind {
            DiskKind::Private if d.owner.as_deref() == Some(guest) => Some("rwk"),
            DiskKind::Private => None,
            DiskKind::Shared => Some("rwk"),
            DiskKind::ReadOnly => Some("rk"),
        })
        .next()
}

/// The audit record's `operation` and mask letter/word for an operation.
pub fn audit_shape(action: Action) -> (&'static str, &'static str) {
    match action {
        Action::Read => ("open", "r"),
        Action::Write => ("open", "w"),
        Action::Stat => ("getattr", "-"),
        Action::Signal | Action::Signull => ("signal", "send"),
        Action::Ptrace => ("ptrace", "trace"),
        // The record: operation="capable" capname="chown".
        Action::Chown => ("capable", "chown"),
        // Not in the AppArmor scenario's matrix (its expectations refuse them).
        Action::Connect => ("connect", "w"),
        Action::Bpf => ("capable", "bpf"),
    }
}

/// The other side of a cross-profile signal: the receiver's own check, which fails too
/// (a guest's profile receives signals from `unconfined` and itself only). Not for ptrace:
/// abstractions/base grants every profile `ptrace (tracedby)` and `ptrace (readby)`.
fn receiver_mask(action: Action) -> Option<&'static str> {
    match action {
        Action::Signal | Action::Signull => Some("receive"),
        _ => None,
    }
}

/// The `operation` of AppArmor's capability records (`capname="…"`); refused with EPERM.
pub const CAPABLE: &str = "capable";

/// The class of an expectation decided before any LSM because the manager empties a
/// confined VMM's capability sets (even a root VMM's, under `--drivers apparmor` alone): its
/// `perm` column is the errno (`EPERM`), and no audit record is expected (the capability
/// check fails before AppArmor's hook is asked).
pub const NOCAPS_CLASS: &str = "nocaps";

/// The class of an expectation decided by the DAC driver rather than AppArmor; its `perm`
/// column is then the errno (`EACCES`, `EPERM`), and no audit record is expected.
pub const DAC_CLASS: &str = "dac";

/// What svirt's DAC driver decides first, when it is stacked (`None`: DAC lets it through
/// to AppArmor). Its model, for the lab's layout (every file root-owned, mode 0666): a
/// guest's private disk is chowned to its own uid with owner-only bits (another guest's uid
/// gets EACCES); a read-only disk keeps its mode and gains an ACL entry `user:<uid>:r--`
/// (which, matching the guest's uid, refuses its writes); a shared disk is the guests'
/// group's, read-write; a file outside the plan keeps root 0666 (DAC allows it). Signals
/// and ptrace between two guests' distinct uids: EPERM (no capabilities), before any LSM.
fn dac_first(plan: &Plan, op: &Op) -> Option<(&'static str, String)> {
    match op.action {
        Action::Signal | Action::Signull | Action::Ptrace => (op.target != op.guest).then(|| {
            (
                "EPERM",
                format!(
                    "DAC: guest {} runs as another uid than guest {}",
                    op.target, op.guest
                ),
            )
        }),
        Action::Stat | Action::Connect | Action::Bpf => None,
        // Refused before DAC is asked: the VMM holds no capability (NOCAPS_CLASS).
        Action::Chown => None,
        Action::Read | Action::Write => {
            let d = plan
                .disks
                .iter()
                .find(|d| d.path == Path::new(&op.target))?;
            match d.kind {
                DiskKind::Private if d.owner.as_deref() != Some(op.guest.as_str()) => Some((
                    "EACCES",
                    format!(
                        "DAC: {} is guest {}'s uid's, owner-only",
                        op.target,
                        d.owner.as_deref().unwrap_or("?")
                    ),
                )),
                DiskKind::ReadOnly if op.action == Action::Write => Some((
                    "EACCES",
                    format!(
                        "DAC: {} grants guest {}'s uid r-- (ACL)",
                        op.target, op.guest
                    ),
                )),
                _ => None,
            }
        }
    }
}

/// The expected table from AppArmor's semantics and the INTENDED plan's profiles; with
/// `dac`, svirt's DAC driver stacked before it decides first where it refuses
/// ([`dac_first`]), and AppArmor is asked only about what DAC lets through.
pub fn expectations(plan: &Plan, attack: &Attack, dac: bool) -> Result<Expected> {
    let mut e = Expected::new();
    for op in &attack.ops {
        let me = plan
            .guest(&op.guest)
            .ok_or_else(|| Error::msg(format!("attack plan: unknown guest {}", op.guest)))?;
        let profile = profile_of(&me.level);
        if matches!(op.action, Action::Connect | Action::Bpf) {
            return Err(Error::msg(format!(
                "attack plan: {}: AppArmor's expectations do not model connect or bpf",
                op.name
            )));
        }
        if op.action == Action::Chown {
            // The VMM holds no capability, with or without DAC: commoncap refuses CAP_CHOWN
            // before AppArmor is asked (its profile grants none either).
            e.insert(
                (op.guest.clone(), op.name.clone()),
                Expectation {
                    decision: Decision::Deny,
                    audited: false,
                    class: NOCAPS_CLASS.to_string(),
                    perm: Some("EPERM".to_string()),
                    reason: "the manager empties the VMM's capability sets (no CAP_CHOWN)"
                        .to_string(),
                },
            );
            continue;
        }
        if let Some((errno, reason)) = dac.then(|| dac_first(plan, op)).flatten() {
            e.insert(
                (op.guest.clone(), op.name.clone()),
                Expectation {
                    decision: Decision::Deny,
                    audited: false,
                    class: DAC_CLASS.to_string(),
                    perm: Some(errno.to_string()),
                    reason,
                },
            );
            continue;
        }
        let (class, mask) = audit_shape(op.action);
        let (decision, reason) = match op.action {
            Action::Read | Action::Write => {
                let letter = if op.action == Action::Read { 'r' } else { 'w' };
                let g = granted(plan, &op.guest, Path::new(&op.target));
                match g {
                    Some(p) if p.contains(letter) => (Decision::Allow, String::new()),
                    Some(p) => (
                        Decision::Deny,
                        format!("{profile} grants {} only {p}", op.target),
                    ),
                    None => (
                        Decision::Deny,
                        format!("{profile} has no rule for {}", op.target),
                    ),
                }
            }
            // AppArmor has no getattr mediation.
            Action::Stat => (Decision::Allow, String::new()),
            Action::Chown | Action::Connect | Action::Bpf => {
                unreachable!("decided or refused above")
            }
            Action::Signal | Action::Signull | Action::Ptrace => {
                let t = plan.guest(&op.target).ok_or_else(|| {
                    Error::msg(format!("attack plan: unknown guest {}", op.target))
                })?;
                let peer = profile_of(&t.level);
                if (peer == profile && op.action != Action::Ptrace) || op.action == Action::Signull
                {
                    // abstractions/base: `signal (receive, send) set=("exists")`.
                    (Decision::Allow, String::new())
                } else if op.action == Action::Ptrace {
                    (
                        Decision::Deny,
                        format!("{profile} has no ptrace (trace) rule"),
                    )
                } else {
                    (
                        Decision::Deny,
                        format!("{profile} sends signals only to peer={profile}, not {peer}"),
                    )
                }
            }
        };
        let deny = decision == Decision::Deny;
        e.insert(
            (op.guest.clone(), op.name.clone()),
            Expectation {
                decision,
                audited: deny,
                class: class.to_string(),
                perm: deny.then(|| mask.to_string()),
                reason,
            },
        );
    }
    Ok(e)
}

/// One AppArmor audit record (`apparmor="…" operation="…" profile="…" …`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// Every `key=value` field, quotes removed.
    pub fields: BTreeMap<String, String>,
    /// The whole line.
    pub line: String,
}

impl Record {
    /// A field's value.
    pub fn get(&self, k: &str) -> Option<&str> {
        self.fields.get(k).map(String::as_str)
    }

    /// The record's pid.
    pub fn pid(&self) -> Option<i32> {
        self.get("pid").and_then(|p| p.parse().ok())
    }

    /// `denied_mask`, else `requested_mask`.
    pub fn mask(&self) -> &str {
        self.get("denied_mask")
            .or_else(|| self.get("requested_mask"))
            .unwrap_or("")
    }
}

/// Parse one kernel log line; `None` if it holds no AppArmor record.
pub fn parse_record(line: &str) -> Option<Record> {
    let start = line.find("apparmor=")?;
    let mut fields = BTreeMap::new();
    let mut rest = &line[start..];
    while let Some(eq) = rest.find('=') {
        let key = rest[..eq]
            .trim()
            .rsplit(' ')
            .next()
            .unwrap_or("")
            .to_string();
        let after = &rest[eq + 1..];
        let (value, next) = if let Some(q) = after.strip_prefix('"') {
            match q.find('"') {
                Some(end) => (q[..end].to_string(), &q[end + 1..]),
                None => (q.to_string(), ""),
            }
        } else {
            let end = after.find(' ').unwrap_or(after.len());
            (after[..end].to_string(), &after[end..])
        };
        if !key.is_empty() {
            fields.entry(key).or_insert(value);
        }
        rest = next;
    }
    fields.contains_key("apparmor").then(|| Record {
        fields,
        line: line.trim().to_string(),
    })
}

/// A running guest as the unconfined side saw it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Observation {
    /// Role (`manager`, a guest name) → (pid, label, mode).
    pub procs: BTreeMap<String, (i32, String, String)>,
    /// Loaded profiles (`/sys/kernel/security/apparmor/profiles`): name → mode.
    pub profiles: BTreeMap<String, String>,
    /// Whether the snapshot was taken at all (an empty profile list is a fact then).
    pub taken: bool,
}

impl Observation {
    /// Snapshot the processes of a pids file and the loaded profiles.
    pub fn take(pids: Option<&Path>) -> Result<Self> {
        let mut o = Observation {
            taken: true,
            ..Default::default()
        };
        if let Some(p) = pids {
            let text = fs::read_to_string(p).ctx(|| format!("reading {}", p.display()))?;
            for (name, pid) in parse_pids(&text)?.0 {
                let (label, mode) = process_label(&pid.to_string())
                    .unwrap_or_else(|_| ("-".to_string(), String::new()));
                o.procs.insert(name, (pid, label, mode));
            }
        }
        let list = fs::read_to_string("/sys/kernel/security/apparmor/profiles").unwrap_or_default();
        for l in list.lines() {
            let (name, mode) = split_label(l);
            o.profiles.insert(name, mode);
        }
        Ok(o)
    }

    /// `proc NAME PID LABEL MODE` and `profile NAME MODE` lines (`-` for an empty mode).
    pub fn render(&self) -> String {
        let dash = |s: &str| {
            if s.is_empty() {
                "-".to_string()
            } else {
                s.to_string()
            }
        };
        let mut out = String::new();
        if self.taken {
            out.push_str("taken\n");
        }
        for (n, (pid, label, mode)) in &self.procs {
            out.push_str(&format!("proc {n} {pid} {label} {}\n", dash(mode)));
        }
        for (n, mode) in &self.profiles {
            out.push_str(&format!("profile {n} {}\n", dash(mode)));
        }
        out
    }

    /// Parse what [`Observation::render`] wrote.
    pub fn parse(text: &str) -> Self {
        let undash = |s: &str| {
            if s == "-" {
                String::new()
            } else {
                s.to_string()
            }
        };
        let mut o = Observation::default();
        for l in text.lines() {
            let f: Vec<&str> = l.split_whitespace().collect();
            match f.as_slice() {
                ["proc", n, pid, label, mode] => {
                    if let Ok(pid) = pid.parse() {
                        o.procs
                            .insert(n.to_string(), (pid, label.to_string(), undash(mode)));
                    }
                }
                ["profile", n, mode] => {
                    o.profiles.insert(n.to_string(), undash(mode));
                }
                ["taken"] => o.taken = true,
                _ => {}
            }
        }
        o
    }
}

/// Everything the AppArmor checks look at.
#[derive(Debug, Clone, Default)]
pub struct Observed {
    /// AppArmor enabled (`/sys/module/apparmor/parameters/enabled` = Y, securityfs has it).
    pub enabled: Option<String>,
    /// While the guests run.
    pub running: Observation,
    /// After the manager stopped them.
    pub after: Observation,
    /// Results per guest.
    pub results: BTreeMap<String, GuestResults>,
    /// AppArmor records of the kernel log.
    pub records: Vec<Record>,
    /// `svirt denials` output, asked of the running svirtd (guests named).
    pub denials: Option<String>,
}

/// One entry of `svirt denials`' AppArmor output: `  { MASK } OPERATION key=value… [TAG]`
/// under a `NAME: N AppArmor denial(s)` heading.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listed {
    /// The heading it is listed under (a guest's name, `(not a guest)`, …).
    pub guest: String,
    /// The mask between the braces.
    pub mask: String,
    /// The operation.
    pub operation: String,
    /// `key=value` fields.
    pub fields: BTreeMap<String, String>,
    /// The `[TAG]` naming the peer's guest, if any.
    pub tag: Option<String>,
    /// The line as printed.
    pub line: String,
}

/// Parse `svirt denials` output (AppArmor entries only; other lines are skipped).
pub fn parse_denials(text: &str) -> Vec<Listed> {
    let mut out = Vec::new();
    let mut section = None;
    for line in text.lines() {
        if !line.starts_with(' ') {
            section = line
                .strip_suffix(" AppArmor denial(s)")
                .and_then(|h| h.rsplit_once(": "))
                .map(|(g, _)| g.to_string());
            continue;
        }
        let (Some(guest), Some(rest)) = (&section, line.strip_prefix("  { ")) else {
            continue;
        };
        let Some((mask, rest)) = rest.split_once(" } ") else {
            continue;
        };
        let mut words = rest.split_whitespace();
        let operation = words.next().unwrap_or("").to_string();
        let mut fields = BTreeMap::new();
        let mut tag = None;
        for w in words {
            if let Some(t) = w.strip_prefix('[').and_then(|t| t.strip_suffix(']')) {
                tag = Some(t.to_string());
            } else if let Some((k, v)) = w.split_once('=') {
                fields.insert(k.to_string(), v.to_string());
            }
        }
        out.push(Listed {
            guest: guest.clone(),
            mask: mask.to_string(),
            operation,
            fields,
            tag,
            line: line.trim().to_string(),
        });
    }
    out
}

/// The `svirt denials` entry of an expected, audited denial: under the attacking guest's
/// name, its profile, the operation and mask, and the path or the other guest's profile
/// tagged with that guest's name.
fn find_listed<'a>(
    plan: &Plan,
    op: &Op,
    exp: &Expectation,
    listed: &'a [Listed],
) -> std::result::Result<&'a Listed, String> {
    let profile = plan
        .guest(&op.guest)
        .map(|g| profile_of(&g.level))
        .unwrap_or_default();
    let perm = exp.perm.as_deref().unwrap_or("?");
    listed
        .iter()
        .find(|l| {
            l.guest == op.guest
                && l.fields.get("profile") == Some(&profile)
                && l.operation == exp.class
                // svirt denials lists a capability record as `{ ? } capable` (no mask, no name).
                && (mask_has(&l.mask, perm) || (exp.class == CAPABLE && l.mask == "?"))
                && if exp.class == CAPABLE {
                    true
                } else if op.action.targets_process() {
                    let peer = plan.guest(&op.target).map(|g| profile_of(&g.level));
                    l.fields.get("peer") == peer.as_ref()
                        && l.tag.as_deref() == Some(op.target.as_str())
                } else {
                    l.fields.get("name").map(String::as_str) == Some(op.target.as_str())
                }
        })
        .ok_or_else(|| {
            format!(
                "not listed under {}: {{ {perm} }} {} profile={profile} {}",
                op.guest,
                exp.class,
                if op.action.targets_process() {
                    format!("peer=… [{}]", op.target)
                } else {
                    format!("name={}", op.target)
                }
            )
        })
}

fn check(name: String, pass: bool, detail: String) -> CheckResult {
    CheckResult { name, pass, detail }
}

/// The record an expected denial must have produced: the guest's own profile, its pid, the
/// operation, the mask, and the path or the peer's profile.
fn find_record<'a>(
    plan: &Plan,
    op: &Op,
    exp: &Expectation,
    obs: &'a Observed,
) -> std::result::Result<&'a Record, String> {
    let me = plan.guest(&op.guest).map(|g| profile_of(&g.level));
    let pid = obs.running.procs.get(&op.guest).map(|p| p.0);
    let perm = exp.perm.as_deref().unwrap_or("?");
    let (Some(profile), Some(pid)) = (me, pid) else {
        return Err("guest profile or pid unknown".into());
    };
    let target_ok = |r: &Record| {
        if exp.class == CAPABLE {
            r.get("capname") == Some(perm)
        } else if op.action.targets_process() {
            let peer = plan.guest(&op.target).map(|g| profile_of(&g.level));
            r.get("peer") == peer.as_deref()
        } else {
            r.get("name") == Some(op.target.as_str())
        }
    };
    obs.records
        .iter()
        .find(|r| {
            r.get("apparmor") == Some("DENIED")
                && r.get("profile") == Some(profile.as_str())
                && r.pid() == Some(pid)
                && r.get("operation") == Some(exp.class.as_str())
                && (exp.class == CAPABLE || mask_has(r.mask(), perm))
                && target_ok(r)
        })
        .ok_or_else(|| {
            format!(
                "no apparmor=\"DENIED\" operation=\"{}\" profile=\"{profile}\" pid={pid} mask {perm} on {}",
                exp.class, op.target
            )
        })
}

/// Whether an audit mask includes `perm`: a word (`send`, `trace`) or file letters.
fn mask_has(mask: &str, perm: &str) -> bool {
    if perm.len() == 1 {
        mask.contains(perm)
    } else {
        mask.split_whitespace().any(|w| w == perm)
    }
}

/// Whether a DENIED record is one the expected table accounts for: the attacker's own
/// line, or the receiving guest's side of an expected cross-profile signal or ptrace.
fn accounted(
    plan: &Plan,
    attack: &Attack,
    expected: &Expected,
    obs: &Observed,
    r: &Record,
) -> bool {
    attack.ops.iter().any(|op| {
        let Some(exp) = expected.get(&(op.guest.clone(), op.name.clone())) else {
            return false;
        };
        if exp.decision != Decision::Deny {
            return false;
        }
        if find_record(plan, op, exp, obs).is_ok_and(|m| m.line == r.line) {
            return true;
        }
        let (Some(rx), Some(me), Some(victim)) = (
            receiver_mask(op.action),
            plan.guest(&op.guest),
            plan.guest(&op.target),
        ) else {
            return false;
        };
        r.get("operation") == Some(exp.class.as_str())
            && r.get("profile") == Some(profile_of(&victim.level).as_str())
            && r.get("peer") == Some(profile_of(&me.level).as_str())
            && r.pid() == obs.running.procs.get(&op.guest).map(|p| p.0)
            && mask_has(r.mask(), rx)
    })
}

/// Compare observations with the plan and the expected table.
pub fn evaluate(
    plan: &Plan,
    attack: &Attack,
    expected: &Expected,
    obs: &Observed,
) -> Vec<CheckResult> {
    let mut out = Vec::new();
    out.push(check(
        "apparmor.enabled".into(),
        obs.enabled.as_deref() == Some("Y"),
        format!(
            "/sys/module/apparmor/parameters/enabled + securityfs: {:?}",
            obs.enabled
        ),
    ));
    let mut labels = Vec::new();
    for g in &plan.guests {
        let want = profile_of(&g.level);
        let p = obs.running.procs.get(&g.name);
        out.push(check(
            format!("guest.{}.profile", g.name),
            p.is_some_and(|p| p.1 == want && p.2 == "enforce"),
            format!(
                "/proc/{}/attr/apparmor/current = {:?}, want {want} (enforce)",
                p.map_or(0, |p| p.0),
                p.map(|p| format!("{} ({})", p.1, p.2))
            ),
        ));
        if let Some(p) = p {
            labels.push((g.name.clone(), p.1.clone()));
        }
        let loaded = obs.running.profiles.get(&want);
        out.push(check(
            format!("profile.{}.loaded", g.name),
            loaded.is_some_and(|m| m == "enforce"),
            format!("{want} in the kernel's profiles while running: {loaded:?}"),
        ));
        let left = obs.after.profiles.get(&want);
        out.push(check(
            format!("profile.{}.removed", g.name),
            obs.after.taken && left.is_none(),
            format!(
                "{want} after the guest stopped: {left:?} ({} profiles loaded)",
                obs.after.profiles.len()
            ),
        ));
        let r = obs.results.get(&g.name);
        out.push(check(
            format!("guest.{}.results", g.name),
            r.is_some_and(|r| r.complete),
            match r {
                Some(r) => format!("{} outcomes, complete={}", r.ops.len(), r.complete),
                None => "no results file".into(),
            },
        ));
    }
    let distinct: BTreeSet<&String> = labels.iter().map(|(_, l)| l).collect();
    out.push(check(
        "guests.distinct_profiles".into(),
        labels.len() == plan.guests.len()
            && distinct.len() == labels.len()
            && labels.iter().all(|(_, l)| l.starts_with("svirt-")),
        format!("observed {labels:?}"),
    ));

    for op in &attack.ops {
        let exp = expected.get(&(op.guest.clone(), op.name.clone()));
        let got = obs.results.get(&op.guest).and_then(|r| r.ops.get(&op.name));
        let (pass, want) = match exp {
            Some(e) if e.decision == Decision::Allow => {
                (got.is_some_and(|g| g == "ok"), "allow (ok)".to_string())
            }
            Some(e) => {
                // AppArmor refuses with EACCES; a DAC expectation names its errno.
                let (errno, by) = if e.class == DAC_CLASS {
                    (e.perm.as_deref().unwrap_or("?"), "DAC")
                } else if e.class == NOCAPS_CLASS {
                    (e.perm.as_deref().unwrap_or("?"), "no capability")
                } else if e.class == CAPABLE {
                    ("EPERM", "AppArmor")
                } else {
                    ("EACCES", "AppArmor")
                };
                (
                    got.is_some_and(|g| g == errno),
                    format!("deny ({errno}) by {by}: {}", e.reason),
                )
            }
            None => (false, "NO EXPECTATION".to_string()),
        };
        out.push(crate::check::decision_check(
            op, pass, got, "expected", &want,
        ));
        if let Some(e) = exp.filter(|e| e.decision == Decision::Deny && e.audited) {
            let name = format!("audit.{}.{}", op.guest, op.name);
            out.push(match find_record(plan, op, e, obs) {
                Ok(r) => check(name, true, r.line.clone()),
                Err(why) => check(name, false, why),
            });
            let name = format!("denials.{}.{}", op.guest, op.name);
            out.push(match &obs.denials {
                None => check(name, false, "no `svirt denials` output".into()),
                Some(text) => match find_listed(plan, op, e, &parse_denials(text)) {
                    Ok(l) => check(name, true, format!("{}: {}", l.guest, l.line)),
                    Err(why) => check(name, false, why),
                },
            });
        }
    }

    let denied: Vec<&Record> = obs
        .records
        .iter()
        .filter(|r| r.get("apparmor") == Some("DENIED"))
        .collect();
    let stray: Vec<&str> = denied
        .iter()
        .filter(|r| !accounted(plan, attack, expected, obs, r))
        .map(|r| r.line.as_str())
        .collect();
    let want = expected
        .values()
        .filter(|e| e.decision == Decision::Deny && e.audited)
        .count();
    out.push(check(
        "audit.all_expected".into(),
        stray.is_empty() && denied.len() >= want && want > 0,
        if stray.is_empty() {
            format!(
                "{} DENIED records, all from expected denials ({want} expected attacks)",
                denied.len()
            )
        } else {
            format!("unexpected: {}", stray.join(" | "))
        },
    ));
    out
}

/// Names of all checks `evaluate` reports for these inputs.
pub fn list(plan: &Plan, attack: &Attack, expected: &Expected) -> Vec<String> {
    evaluate(plan, attack, expected, &Observed::default())
        .into_iter()
        .map(|c| c.name)
        .collect()
}

/// `Y` when AppArmor is enabled and its securityfs directory is there.
pub fn enabled() -> Option<String> {
    let p = fs::read_to_string("/sys/module/apparmor/parameters/enabled").ok()?;
    let p = p.trim().to_string();
    if Path::new("/sys/kernel/security/apparmor").is_dir() {
        Some(p)
    } else {
        Some(format!("{p} (no /sys/kernel/security/apparmor)"))
    }
}

/// Per guest, how many DENIED records `svirt denials` should list under its name: its own
/// expected denials plus the receiving side of the other guests' signals and ptrace.
pub fn denial_counts(plan: &Plan, attack: &Attack, expected: &Expected) -> BTreeMap<String, usize> {
    let mut n: BTreeMap<String, usize> = BTreeMap::new();
    for op in &attack.ops {
        let Some(e) = expected.get(&(op.guest.clone(), op.name.clone())) else {
            continue;
        };
        if e.decision != Decision::Deny || !e.audited {
            continue;
        }
        *n.entry(op.guest.clone()).or_default() += 1;
        if receiver_mask(op.action).is_some() && plan.guest(&op.target).is_some() {
            *n.entry(op.target.clone()).or_default() += 1;
        }
    }
    n
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::plan::{parse_expected, render_expected};

    const UA: &str = "a0000000-0000-4000-8000-00000000000a";
    const UB: &str = "b0000000-0000-4000-8000-00000000000b";

    fn inputs() -> (Plan, Attack) {
        let plan = Plan::parse(&format!(
            "guest A {UA}\nguest B {UB}\ndisk A /img/A private\ndisk B /img/B private\n\
             disk - /img/s shared\ndisk - /img/c readonly\n"
        ))
        .unwrap();
        let attack = Attack::parse(
            "results A /img/A\npeers /p\nop A own.write write /img/A\nop A other.read read /img/B\n\
             op A other.stat stat /img/B\nop A content.write write /img/c\nop A content.read read /img/c\n\
             op A shared.write write /img/s\nop A peer.signal signal B\nop A peer.ptrace ptrace B\nop A own.chown chown /img/A\n\
             op B peer.signal signal A\nop B peer.signull signull A\n",
        )
        .unwrap();
        (plan, attack)
    }

    #[test]
    fn expectations_follow_apparmor_semantics() {
        let (plan, attack) = inputs();
        let e = expectations(&plan, &attack, false).unwrap();
        let k = |g: &str, o: &str| &e[&(g.to_string(), o.to_string())];
        assert_eq!(k("A", "own.write").decision, Decision::Allow);
        assert_eq!(k("A", "other.read").decision, Decision::Deny);
        assert_eq!(k("A", "other.read").perm.as_deref(), Some("r"));
        assert_eq!(k("A", "other.read").class, "open");
        assert_eq!(
            k("A", "other.stat").decision,
            Decision::Allow,
            "no getattr mediation"
        );
        assert_eq!(k("A", "content.write").decision, Decision::Deny);
        assert_eq!(k("A", "content.read").decision, Decision::Allow);
        assert_eq!(k("A", "shared.write").decision, Decision::Allow);
        assert_eq!(k("A", "peer.signal").perm.as_deref(), Some("send"));
        assert_eq!(k("A", "peer.ptrace").class, "ptrace");
        assert_eq!(k("A", "own.chown").class, NOCAPS_CLASS);
        assert_eq!(k("A", "own.chown").perm.as_deref(), Some("EPERM"));
        assert!(!k("A", "own.chown").audited, "refused before AppArmor");
        assert!(k("B", "peer.signal").audited);
        assert_eq!(
            k("B", "peer.signull").decision,
            Decision::Allow,
            "abstractions/base: signal set=(\"exists\")"
        );
        assert_eq!(parse_expected(&render_expected(&e)).unwrap(), e);
        let n = denial_counts(&plan, &attack, &e);
        // A: other.read, content.write, signal, ptrace + the receiving side of B's signal
        // (not the chown: no capability, refused before AppArmor);
        // B: signal + the receiving side of A's signal (base lets anyone trace it).
        assert_eq!(n["A"], 5);
        assert_eq!(n["B"], 2);
    }

    #[test]
    fn dac_decides_first_when_stacked() {
        let (plan, attack) = inputs();
        let e = expectations(&plan, &attack, true).unwrap();
        let k = |g: &str, o: &str| &e[&(g.to_string(), o.to_string())];
        assert_eq!(k("A", "other.read").class, DAC_CLASS);
        assert_eq!(k("A", "other.read").perm.as_deref(), Some("EACCES"));
        assert!(!k("A", "other.read").audited);
        assert_eq!(k("A", "content.write").class, DAC_CLASS);
        assert_eq!(k("A", "peer.signal").perm.as_deref(), Some("EPERM"));
        assert_eq!(k("B", "peer.signull").decision, Decision::Deny);
        assert_eq!(k("A", "own.write").decision, Decision::Allow);
        assert_eq!(k("A", "shared.write").decision, Decision::Allow);
        assert_eq!(parse_expected(&render_expected(&e)).unwrap(), e);
    }

    const OPEN: &str = "[    5.1] audit: type=1400 audit(1.2:3): apparmor=\"DENIED\" operation=\"open\" \
        profile=\"svirt-a0000000-0000-4000-8000-00000000000a\" name=\"/img/B\" pid=80 \
        comm=\"qemu-system-x86\" requested_mask=\"r\" denied_mask=\"r\" fsuid=0 ouid=0";
    const SIG: &str = "audit: type=1400 audit(1.2:4): apparmor=\"DENIED\" operation=\"signal\" \
        profile=\"svirt-a0000000-0000-4000-8000-00000000000a\" pid=80 comm=\"qemu-system-x86\" \
        requested_mask=\"send\" denied_mask=\"send\" signal=winch \
        peer=\"svirt-b0000000-0000-4000-8000-00000000000b\"";
    const RECV: &str = "audit: type=1400 audit(1.2:5): apparmor=\"DENIED\" operation=\"signal\" \
        profile=\"svirt-b0000000-0000-4000-8000-00000000000b\" pid=80 comm=\"qemu-system-x86\" \
        requested_mask=\"receive\" denied_mask=\"receive\" signal=winch \
        peer=\"svirt-a0000000-0000-4000-8000-00000000000a\"";

    #[test]
    fn parses_records() {
        let r = parse_record(OPEN).unwrap();
        assert_eq!(r.get("apparmor"), Some("DENIED"));
        assert_eq!(r.get("name"), Some("/img/B"));
        assert_eq!(r.pid(), Some(80));
        assert_eq!(r.mask(), "r");
        let s = parse_record(SIG).unwrap();
        assert_eq!(s.get("signal"), Some("winch"));
        assert!(parse_record("avc:  denied  { read }").is_none());
        assert_eq!(
            split_label("svirt-x (enforce)\n"),
            ("svirt-x".into(), "enforce".into())
        );
        assert_eq!(
            split_label("unconfined\n"),
            ("unconfined".into(), String::new())
        );
    }

    fn observed(plan: &Plan, attack: &Attack, e: &Expected) -> Observed {
        let mut obs = Observed {
            enabled: Some("Y".into()),
            ..Default::default()
        };
        obs.running
            .procs
            .insert("A".into(), (80, profile_of(UA), "enforce".into()));
        obs.running
            .procs
            .insert("B".into(), (81, profile_of(UB), "enforce".into()));
        for u in [UA, UB] {
            obs.running.profiles.insert(profile_of(u), "enforce".into());
        }
        obs.after.taken = true;
        let mut text = String::new();
        for op in attack.ops.iter().filter(|o| o.guest == "A") {
            let x = &e[&(op.guest.clone(), op.name.clone())];
            text.push_str(&format!(
                "op {} {}\n",
                op.name,
                match (x.decision, x.class.as_str()) {
                    (Decision::Allow, _) => "ok",
                    (_, CAPABLE | NOCAPS_CLASS) => "EPERM",
                    _ => "EACCES",
                }
            ));
        }
        obs.results
            .insert("A".into(), GuestResults::parse(&format!("{text}END\n")));
        obs.results.insert(
            "B".into(),
            GuestResults::parse("op peer.signal EACCES\nop peer.signull ok\nEND\n"),
        );
        let line = |op: &str, mask: &str, extra: &str, pid: i32, prof: &str| {
            parse_record(&format!(
                "apparmor=\"DENIED\" operation=\"{op}\" profile=\"{prof}\" pid={pid} \
                 requested_mask=\"{mask}\" denied_mask=\"{mask}\" {extra}"
            ))
            .unwrap()
        };
        let (a, b) = (profile_of(UA), profile_of(UB));
        obs.records = vec![
            parse_record(OPEN).unwrap(),
            line("open", "w", "name=\"/img/c\"", 80, &a),
            parse_record(SIG).unwrap(),
            parse_record(RECV).unwrap(),
            line("ptrace", "trace", &format!("peer=\"{b}\""), 80, &a),
            line(
                "signal",
                "send",
                &format!("peer=\"{a}\" signal=winch"),
                81,
                &b,
            ),
            line(
                "signal",
                "receive",
                &format!("peer=\"{b}\" signal=winch"),
                81,
                &a,
            ),
        ];
        let mut listed = String::new();
        for g in &plan.guests {
            listed.push_str(&format!("{}: 0 AppArmor denial(s)\n", g.name));
            for op in attack.ops.iter().filter(|o| o.guest == g.name) {
                let x = &e[&(op.guest.clone(), op.name.clone())];
                if x.decision != Decision::Deny || !x.audited {
                    continue;
                }
                let target = match plan.guest(&op.target) {
                    Some(t) => format!("peer={} [{}]", profile_of(&t.level), t.name),
                    None => format!("name={}", op.target),
                };
                listed.push_str(&format!(
                    "  {{ {} }} {} profile={} {target}\n",
                    x.perm.as_deref().unwrap_or("?"),
                    x.class,
                    profile_of(&g.level)
                ));
            }
        }
        obs.denials = Some(listed);
        obs
    }

    #[test]
    fn matching_observations_pass_and_strays_fail() {
        let (plan, attack) = inputs();
        let e = expectations(&plan, &attack, false).unwrap();
        let mut obs = observed(&plan, &attack, &e);
        let r = evaluate(&plan, &attack, &e, &obs);
        assert!(r.iter().all(|c| c.pass), "{r:#?}");
        let names: Vec<String> = r.iter().map(|c| c.name.clone()).collect();
        assert_eq!(names, list(&plan, &attack, &e));
        assert!(names.contains(&"audit.A.peer.ptrace".to_string()));

        // A denial the table does not account for is a finding.
        obs.records
            .push(parse_record(&OPEN.replace("/img/B", "/etc/passwd")).unwrap());
        let r = evaluate(&plan, &attack, &e, &obs);
        assert!(r.iter().any(|c| c.name == "audit.all_expected" && !c.pass));
    }

    #[test]
    fn svirt_denials_entries_are_attributed() {
        let (plan, attack) = inputs();
        let e = expectations(&plan, &attack, false).unwrap();
        let (a, b) = (profile_of(UA), profile_of(UB));
        let text = format!(
            "A: 2 AppArmor denial(s)\n  {{ r }} open profile={a} name=/img/B\n  {{ send }} signal profile={a} peer={b} [B]\n(not a guest): 1 AppArmor denial(s)\n  {{ w }} open profile={a} name=/img/c\n"
        );
        let listed = parse_denials(&text);
        assert_eq!(listed.len(), 3);
        assert_eq!(listed[1].tag.as_deref(), Some("B"));
        let op = |n: &str| {
            attack
                .ops
                .iter()
                .find(|o| o.guest == "A" && o.name == n)
                .unwrap()
        };
        let x = |n: &str| &e[&("A".to_string(), n.to_string())];
        assert!(find_listed(&plan, op("other.read"), x("other.read"), &listed).is_ok());
        assert!(find_listed(&plan, op("peer.signal"), x("peer.signal"), &listed).is_ok());
        // Listed, but not under A's name: not attributed.
        assert!(find_listed(&plan, op("content.write"), x("content.write"), &listed).is_err());
    }

    #[test]
    fn unconfined_guest_fails_isolation() {
        let (plan, attack) = inputs();
        let e = expectations(&plan, &attack, false).unwrap();
        let mut obs = observed(&plan, &attack, &e);
        obs.running
            .procs
            .insert("B".into(), (81, "unconfined".into(), String::new()));
        obs.results.insert(
            "B".into(),
            GuestResults::parse("op peer.signal ok\nop peer.signull ok\nEND\n"),
        );
        obs.records.retain(|r| r.pid() != Some(81));
        let r = evaluate(&plan, &attack, &e, &obs);
        let failed: Vec<&str> = r
            .iter()
            .filter(|c| !c.pass)
            .map(|c| c.name.as_str())
            .collect();
        assert!(failed.contains(&"guest.B.profile"));
        assert!(failed.contains(&"guests.distinct_profiles"));
        assert!(failed.contains(&"decision.B.peer.signal"));
        assert!(failed.contains(&"audit.B.peer.signal"));
        // A's own decisions still hold.
        assert!(!failed.contains(&"decision.A.other.read"));
    }

    #[test]
    fn a_record_of_another_guest_does_not_count() {
        let (plan, attack) = inputs();
        let e = expectations(&plan, &attack, false).unwrap();
        let mut obs = observed(&plan, &attack, &e);
        obs.running.procs.get_mut("A").unwrap().0 = 90;
        let r = evaluate(&plan, &attack, &e, &obs);
        assert!(r.iter().any(|c| c.name == "audit.A.other.read" && !c.pass));
    }
}
