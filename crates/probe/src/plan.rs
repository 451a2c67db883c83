//! The lab's plain-text inputs: the guest plan (what a manager is asked to start), the
//! attack plan (what each compromised VMM tries), the expected-decision table and the
//! label snapshots taken by the unconfined side.
//!
//! All are line-based, `#` comments, whitespace-separated fields, so that shell scripts
//! in the initramfs can write and read them too.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use crate::error::{Context, Error, Result};

/// Domain type of a confined guest VMM (first line of `virtual_domain_context`).
pub const DOMAIN_TYPE: &str = "svirt_t";
/// Type of a guest's private and shared images (`virtual_image_context`, line 1).
pub const IMAGE_TYPE: &str = "svirt_image_t";
/// Label of read-only content (`virtual_image_context`, line 2).
pub const CONTENT_LABEL: &str = "system_u:object_r:virt_content_t:s0";
/// Object user and role of generated image labels.
pub const OBJECT_USER_ROLE: &str = "system_u:object_r";

fn lines(text: &str) -> impl Iterator<Item = (usize, Vec<&str>)> {
    text.lines().enumerate().filter_map(|(i, l)| {
        let l = l.split('#').next().unwrap_or("").trim();
        (!l.is_empty()).then(|| (i + 1, l.split_whitespace().collect()))
    })
}

fn read(path: &Path) -> Result<String> {
    fs::read_to_string(path).ctx(|| format!("reading {}", path.display()))
}

fn bad(what: &str, line: usize, msg: &str) -> Error {
    Error::msg(format!("{what} line {line}: {msg}"))
}

/// A guest the manager should start, with the MCS level it is given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Guest {
    /// Guest name (also its VMM's `-name`).
    pub name: String,
    /// Level of its process and private images, e.g. `s0:c1,c2`.
    pub level: String,
}

/// How a disk is shared, which decides its label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DiskKind {
    /// Writable, one guest: the guest's image label.
    Private,
    /// `<shareable/>`: image type at `s0`, every guest may read and write.
    Shared,
    /// `<readonly/>`: read-only content label.
    ReadOnly,
}

/// A file the manager labels for the guests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Disk {
    /// Owning guest for private disks.
    pub owner: Option<String>,
    /// Path of the file.
    pub path: PathBuf,
    /// Sharing mode.
    pub kind: DiskKind,
}

/// What the manager is asked to do: guests and the files they use.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    /// Guests, in start order.
    pub guests: Vec<Guest>,
    /// Files to label.
    pub disks: Vec<Disk>,
}

impl Plan {
    /// Parse `guest NAME LEVEL` and `disk OWNER|- PATH private|shared|readonly` lines.
    pub fn parse(text: &str) -> Result<Self> {
        let mut plan = Plan::default();
        for (n, f) in lines(text) {
            match f.as_slice() {
                ["guest", name, level] => plan.guests.push(Guest {
                    name: name.to_string(),
                    level: level.to_string(),
                }),
                ["disk", owner, path, kind] => {
                    let kind = match *kind {
                        "private" => DiskKind::Private,
                        "shared" => DiskKind::Shared,
                        "readonly" => DiskKind::ReadOnly,
                        other => return Err(bad("plan", n, &format!("unknown disk kind {other}"))),
                    };
                    let owner = (*owner != "-").then(|| owner.to_string());
                    if kind == DiskKind::Private && owner.is_none() {
                        return Err(bad("plan", n, "a private disk needs an owner"));
                    }
                    plan.disks.push(Disk {
                        owner,
                        path: PathBuf::from(path),
                        kind,
                    });
                }
                _ => {
                    return Err(bad(
                        "plan",
                        n,
                        "expected `guest NAME LEVEL` or `disk OWNER PATH KIND`",
                    ));
                }
            }
        }
        for d in &plan.disks {
            if let Some(o) = &d.owner
                && plan.guest(o).is_none()
            {
                return Err(Error::msg(format!(
                    "plan: disk {} names unknown guest {o}",
                    d.path.display()
                )));
            }
        }
        Ok(plan)
    }

    /// Read and parse a plan file.
    pub fn load(path: &Path) -> Result<Self> {
        Self::parse(&read(path)?).ctx(|| path.display().to_string())
    }

    /// The guest called `name`.
    pub fn guest(&self, name: &str) -> Option<&Guest> {
        self.guests.iter().find(|g| g.name == name)
    }

    /// The label a disk must carry while its guests run.
    pub fn planned_label(&self, disk: &Disk) -> Result<String> {
        Ok(match disk.kind {
            DiskKind::ReadOnly => CONTENT_LABEL.to_string(),
            DiskKind::Shared => format!("{OBJECT_USER_ROLE}:{IMAGE_TYPE}:s0"),
            DiskKind::Private => {
                let owner = disk.owner.as_deref().unwrap_or_default();
                let g = self
                    .guest(owner)
                    .ok_or_else(|| Error::msg(format!("unknown guest {owner}")))?;
                format!("{OBJECT_USER_ROLE}:{IMAGE_TYPE}:{}", g.level)
            }
        })
    }
}

/// One probe operation a guest's VMM attempts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// open(O_RDONLY) + read.
    Read,
    /// open(O_WRONLY) + write.
    Write,
    /// stat().
    Stat,
    /// kill(pid, SIGWINCH): the `signal` permission, harmless if delivered.
    Signal,
    /// kill(pid, 0): the `signull` permission.
    Signull,
    /// ptrace(PTRACE_SEIZE).
    Ptrace,
    /// chown(path, 4242, -1): giving a file to another uid needs `CAP_CHOWN`.
    Chown,
    /// connect(2) to the unix stream socket bound at the target path.
    Connect,
    /// bpf(BPF_MAP_CREATE) of a one-entry array map (the target is a free-form note);
    /// unprivileged where `kernel.unprivileged_bpf_disabled` is 0.
    Bpf,
}

impl Action {
    fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "read" => Self::Read,
            "write" => Self::Write,
            "stat" => Self::Stat,
            "signal" => Self::Signal,
            "signull" => Self::Signull,
            "ptrace" => Self::Ptrace,
            "chown" => Self::Chown,
            "connect" => Self::Connect,
            "bpf" => Self::Bpf,
            _ => return None,
        })
    }

    /// Whether the target is a guest (process) rather than a file path.
    pub fn targets_process(self) -> bool {
        matches!(self, Self::Signal | Self::Signull | Self::Ptrace)
    }

    /// THE mapping from a probe operation to what the kernel checks: the object class
    /// and the permissions in the order the kernel checks them, each check before the next
    /// (so the first denied permission is the one an AVC line names). The expected outcomes
    /// are computed from this by the policy model (`model-queries` / `model-expect`), and
    /// the AVC checks look for the permission it yields.
    ///
    /// - read: `open(O_RDONLY)` checks `read` in `inode_permission`, then `read open` in
    ///   `file_open` (the `read()` that follows is not rechecked: same label and policy);
    /// - write: `open(O_WRONLY)` checks `write`, then `write open`;
    /// - stat: `lstat` checks `getattr`;
    /// - signal, signal 0, `PTRACE_SEIZE`: `process` `signal`, `signull`, `ptrace`;
    /// - chown to another uid: `capability` `chown` (`CAP_CHOWN`, before the file's `setattr`);
    /// - connect to a unix stream socket: `unix_stream_socket` `connectto`;
    /// - bpf(2) map creation: `bpf` `map_create`.
    ///
    /// Path traversal (`search` on the directories above the target) is not listed: the
    /// lab's directories are labeled so every guest may search them.
    pub fn access(self) -> (&'static str, &'static [&'static str]) {
        match self {
            Self::Read => ("file", &["read", "open"]),
            Self::Write => ("file", &["write", "open"]),
            Self::Stat => ("file", &["getattr"]),
            Self::Signal => ("process", &["signal"]),
            Self::Signull => ("process", &["signull"]),
            Self::Ptrace => ("process", &["ptrace"]),
            Self::Chown => ("capability", &["chown"]),
            Self::Connect => ("unix_stream_socket", &["connectto"]),
            Self::Bpf => ("bpf", &["map_create"]),
        }
    }
}

/// One line of the attack plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Op {
    /// Guest whose VMM performs it.
    pub guest: String,
    /// Name of the operation, shared by all guests (`other.read`); key of the expected table.
    pub name: String,
    /// What is attempted.
    pub action: Action,
    /// A path, or a guest name for process actions.
    pub target: String,
}

/// What each compromised VMM tries and where it reports.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Attack {
    /// Results file per guest (labeled with the guest's level by the manager).
    pub results: BTreeMap<String, PathBuf>,
    /// File, readable by every guest, listing `NAME PID` of the running guests then `END`.
    pub peers: Option<PathBuf>,
    /// Operations in order.
    pub ops: Vec<Op>,
}

impl Attack {
    /// Parse `results NAME PATH`, `peers PATH`, `op GUEST NAME ACTION TARGET` lines.
    pub fn parse(text: &str) -> Result<Self> {
        let mut a = Attack::default();
        for (n, f) in lines(text) {
            match f.as_slice() {
                ["results", name, path] => {
                    a.results.insert(name.to_string(), PathBuf::from(path));
                }
                ["peers", path] => a.peers = Some(PathBuf::from(path)),
                ["op", guest, name, action, target] => {
                    let action = Action::parse(action).ok_or_else(|| {
                        bad("attack plan", n, &format!("unknown action {action}"))
                    })?;
                    a.ops.push(Op {
                        guest: guest.to_string(),
                        name: name.to_string(),
                        action,
                        target: target.to_string(),
                    });
                }
                _ => return Err(bad("attack plan", n, "expected results/peers/op")),
            }
        }
        if a.ops.iter().any(|o| o.action.targets_process()) && a.peers.is_none() {
            return Err(Error::msg(
                "attack plan: process operations need a `peers` file",
            ));
        }
        Ok(a)
    }

    /// Read and parse an attack plan file.
    pub fn load(path: &Path) -> Result<Self> {
        Self::parse(&read(path)?).ctx(|| path.display().to_string())
    }
}

/// The decision the policy is expected to make for an operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// The operation succeeds.
    Allow,
    /// The operation fails with EACCES.
    Deny,
}

/// Expected outcome of one guest's operation, as the policy model decided it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expectation {
    /// Allowed or denied.
    pub decision: Decision,
    /// For a denial: whether the kernel logs an AVC line (false under `dontaudit`).
    pub audited: bool,
    /// The object class checked.
    pub class: String,
    /// For a denial: the first permission the kernel denies (the one its AVC line names).
    pub perm: Option<String>,
    /// The model's reason for a denial (`svirt explain --batch`), empty for an allow.
    pub reason: String,
}

/// The expected outcomes, by (guest, operation name): generated on the host from the
/// policy model before the boot (see [`render_expected`]); the only source of truth.
pub type Expected = BTreeMap<(String, String), Expectation>;

/// The header of a generated expected table.
pub const EXPECTED_HEADER: &str =
    "# GUEST<TAB>OP<TAB>allow|deny<TAB>avc|noavc|-<TAB>CLASS<TAB>PERM|-<TAB>REASON";

/// Render an expected table in the form [`parse_expected`] reads (tab-separated, because
/// the reason is free text).
pub fn render_expected(e: &Expected) -> String {
    let mut out = String::new();
    out.push_str(EXPECTED_HEADER);
    out.push('\n');
    for ((guest, op), x) in e {
        let (d, a) = match (x.decision, x.audited) {
            (Decision::Allow, _) => ("allow", "-"),
            (Decision::Deny, true) => ("deny", "avc"),
            (Decision::Deny, false) => ("deny", "noavc"),
        };
        let reason = x.reason.replace(['\t', '\n'], " ");
        out.push_str(&format!(
            "{guest}\t{op}\t{d}\t{a}\t{}\t{}\t{}\n",
            x.class,
            x.perm.as_deref().unwrap_or("-"),
            if reason.is_empty() { "-" } else { &reason }
        ));
    }
    out
}

/// Parse `GUEST<TAB>OP<TAB>allow|deny<TAB>avc|noavc|-<TAB>CLASS<TAB>PERM|-<TAB>REASON` lines
/// (`#` starts a comment line only at the start: reasons may contain anything).
pub fn parse_expected(text: &str) -> Result<Expected> {
    let mut e = Expected::new();
    for (i, line) in text.lines().enumerate() {
        let n = i + 1;
        if line.trim().is_empty() || line.trim_start().starts_with('#') {
            continue;
        }
        let f: Vec<&str> = line.split('\t').map(str::trim).collect();
        let [guest, op, decision, audit, class, perm, reason] = f.as_slice() else {
            return Err(bad("expected table", n, "expected 7 tab-separated fields"));
        };
        let (decision, audited) = match (*decision, *audit) {
            ("allow", "-") => (Decision::Allow, false),
            ("deny", "avc") => (Decision::Deny, true),
            ("deny", "noavc") => (Decision::Deny, false),
            _ => {
                return Err(bad(
                    "expected table",
                    n,
                    "expected `allow -`, `deny avc` or `deny noavc`",
                ));
            }
        };
        let perm = (*perm != "-").then(|| perm.to_string());
        if decision == Decision::Deny && perm.is_none() {
            return Err(bad("expected table", n, "a denial names its permission"));
        }
        let exp = Expectation {
            decision,
            audited,
            class: class.to_string(),
            perm,
            reason: if *reason == "-" {
                String::new()
            } else {
                reason.to_string()
            },
        };
        if e.insert((guest.to_string(), op.to_string()), exp).is_some() {
            return Err(bad(
                "expected table",
                n,
                &format!("{guest} {op} listed twice"),
            ));
        }
    }
    Ok(e)
}

/// Read and parse the expected table.
pub fn load_expected(path: &Path) -> Result<Expected> {
    parse_expected(&read(path)?).ctx(|| path.display().to_string())
}

/// Labels the scenario gives files outside the plan (`PATH CONTEXT` lines), shared by the
/// VM (which sets them) and the host (which asks the model about them).
pub type Labels = BTreeMap<PathBuf, String>;

/// Parse a layout labels file.
pub fn parse_labels(text: &str) -> Result<Labels> {
    let mut l = Labels::new();
    for (n, f) in lines(text) {
        match f.as_slice() {
            [path, ctx] => {
                l.insert(PathBuf::from(path), ctx.to_string());
            }
            _ => return Err(bad("labels", n, "expected `PATH CONTEXT`")),
        }
    }
    Ok(l)
}

/// Read and parse a layout labels file.
pub fn load_labels(path: &Path) -> Result<Labels> {
    parse_labels(&read(path)?).ctx(|| path.display().to_string())
}

/// The process context of a guest's VMM at `level`.
pub fn guest_process_context(level: &str) -> String {
    format!("system_u:system_r:{DOMAIN_TYPE}:{level}")
}

/// A process seen by the unconfined side.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcInfo {
    /// Process id.
    pub pid: i32,
    /// `/proc/PID/attr/current`.
    pub current: String,
    /// `/proc/PID/attr/prev` (context before the last exec).
    pub prev: String,
}

/// Labels of files and processes at one moment.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Snapshot {
    /// File path → label (`-` when unreadable).
    pub files: BTreeMap<PathBuf, String>,
    /// Role (`manager`, or a guest name) → process.
    pub procs: BTreeMap<String, ProcInfo>,
}

impl Snapshot {
    /// Parse `file PATH CTX` and `proc NAME PID CURRENT PREV` lines.
    pub fn parse(text: &str) -> Result<Self> {
        let mut s = Snapshot::default();
        for (n, f) in lines(text) {
            match f.as_slice() {
                ["file", path, ctx] => {
                    s.files.insert(PathBuf::from(path), ctx.to_string());
                }
                ["proc", name, pid, cur, prev] => {
                    let pid = pid
                        .parse()
                        .map_err(|_| bad("snapshot", n, &format!("bad pid {pid}")))?;
                    s.procs.insert(
                        name.to_string(),
                        ProcInfo {
                            pid,
                            current: cur.to_string(),
                            prev: prev.to_string(),
                        },
                    );
                }
                _ => return Err(bad("snapshot", n, "expected file/proc")),
            }
        }
        Ok(s)
    }

    /// Render in the format `parse` reads.
    pub fn render(&self) -> String {
        let mut out = String::new();
        for (p, c) in &self.files {
            out.push_str(&format!("file {} {c}\n", p.display()));
        }
        for (n, p) in &self.procs {
            out.push_str(&format!("proc {n} {} {} {}\n", p.pid, p.current, p.prev));
        }
        out
    }

    /// Read and parse a snapshot file.
    pub fn load(path: &Path) -> Result<Self> {
        Self::parse(&read(path)?).ctx(|| path.display().to_string())
    }
}

/// Parse a pids file: `NAME PID` lines (the manager as `manager`), optionally ending in `END`.
/// Returns the entries and whether `END` was seen.
pub fn parse_pids(text: &str) -> Result<(Vec<(String, i32)>, bool)> {
    let mut out = Vec::new();
    let mut end = false;
    for (n, f) in lines(text) {
        match f.as_slice() {
            ["END"] => end = true,
            [name, pid] => {
                let pid = pid
                    .parse()
                    .map_err(|_| bad("pids", n, &format!("bad pid {pid}")))?;
                out.push((name.to_string(), pid));
            }
            _ => return Err(bad("pids", n, "expected `NAME PID` or END")),
        }
    }
    Ok((out, end))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const PLAN: &str = "guest A s0:c1,c2\nguest B s0:c3,c4\n\
        disk A /lab/img/A.img private\ndisk - /lab/img/shared.img shared\n\
        disk - /lab/img/content.img readonly # iso\n";

    #[test]
    fn plan_labels() {
        let p = Plan::parse(PLAN).unwrap();
        assert_eq!(p.guests.len(), 2);
        assert_eq!(
            p.planned_label(&p.disks[0]).unwrap(),
            "system_u:object_r:svirt_image_t:s0:c1,c2"
        );
        assert_eq!(
            p.planned_label(&p.disks[1]).unwrap(),
            "system_u:object_r:svirt_image_t:s0"
        );
        assert_eq!(p.planned_label(&p.disks[2]).unwrap(), CONTENT_LABEL);
    }

    #[test]
    fn plan_rejects_garbage() {
        assert!(Plan::parse("disk Z /x private").is_err());
        assert!(Plan::parse("disk - /x private").is_err());
        assert!(Plan::parse("disk - /x weird").is_err());
        assert!(Plan::parse("guest A").is_err());
    }

    #[test]
    fn attack_and_expected() {
        let a = Attack::parse(
            "results A /r/A\npeers /p\nop A other.read read /img/B\nop A peer.ptrace ptrace B\n",
        )
        .unwrap();
        assert_eq!(a.ops[1].action, Action::Ptrace);
        assert!(
            Attack::parse("op A x ptrace B\n").is_err(),
            "process ops need peers"
        );
        let text = "# c\nA\tother.read\tdeny\tavc\tfile\tread\tconstraint failed for read: (h1 dom h2 # x)\n\
            A\tcontent.write\tdeny\tnoavc\tfile\twrite\tno TE rule for write; not logged (dontaudit)\n\
            B\tother.stat\tallow\t-\tfile\t-\t-\n";
        let e = parse_expected(text).unwrap();
        let k = |g: &str, o: &str| (g.to_string(), o.to_string());
        assert!(e[&k("A", "other.read")].audited);
        assert_eq!(
            e[&k("A", "other.read")].reason,
            "constraint failed for read: (h1 dom h2 # x)"
        );
        assert!(!e[&k("A", "content.write")].audited);
        assert_eq!(e[&k("B", "other.stat")].decision, Decision::Allow);
        assert_eq!(parse_expected(&render_expected(&e)).unwrap(), e);
        assert!(
            parse_expected("A\tx\tallow\t-\tfile\t-\t-\nA\tx\tallow\t-\tfile\t-\t-\n").is_err()
        );
        assert!(parse_expected("A\tx\tmaybe\t-\tfile\t-\t-\n").is_err());
        assert!(
            parse_expected("A\tx\tdeny\tavc\tfile\t-\t-\n").is_err(),
            "a denial names its perm"
        );
        assert!(
            parse_expected("x allow\n").is_err(),
            "the old hand-written format is gone"
        );
    }

    #[test]
    fn snapshot_roundtrip() {
        let mut s = Snapshot::default();
        s.files.insert("/a".into(), "u:r:t:s0".into());
        s.procs.insert(
            "A".into(),
            ProcInfo {
                pid: 7,
                current: "u:r:svirt_t:s0:c1,c2".into(),
                prev: "u:r:virtd_t:s0-s0:c0.c1023".into(),
            },
        );
        assert_eq!(Snapshot::parse(&s.render()).unwrap(), s);
    }

    #[test]
    fn pids() {
        let (p, end) = parse_pids("manager 5\nA 6\nEND\n").unwrap();
        assert_eq!(p, vec![("manager".into(), 5), ("A".into(), 6)]);
        assert!(end);
        assert!(!parse_pids("A 6\n").unwrap().1);
        assert!(parse_pids("A x\n").is_err());
    }
}
