//! The unconfined side: snapshots of labels, and the comparison of what the kernel did
//! with what the expected table says, printed as `LABCHECK <name> PASS|FAIL <detail>`.
//!
//! The set of check names depends only on the plan, the attack plan and the expected
//! table, never on what was observed, so the host can list them up front and treat a
//! check that never got reported as a failure.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

use crate::error::{Context, Result};
use crate::plan::{Attack, Decision, Expectation, Expected, Plan, ProcInfo, Snapshot, parse_pids};
use crate::selinux::{self, ContextParts};
use svirt_labels::{Level, LevelOrdering};

/// Domain the manager must run in.
pub const MANAGER_DOMAIN: &str = "virtd_t";
/// Domain the manager must have been entered from (real init transition chain).
pub const MANAGER_PARENT_DOMAIN: &str = "init_t";

/// One check's outcome.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckResult {
    /// Stable name, no whitespace.
    pub name: String,
    /// Passed?
    pub pass: bool,
    /// One line of explanation.
    pub detail: String,
}

impl CheckResult {
    /// The line the host harness parses.
    pub fn line(&self) -> String {
        format!(
            "LABCHECK {} {} {}",
            self.name,
            if self.pass { "PASS" } else { "FAIL" },
            self.detail.replace(['\n', '\r'], " ")
        )
    }
}

/// What a guest's VMM wrote to its results file.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GuestResults {
    /// The context the VMM saw for itself.
    pub context: Option<String>,
    /// Operation name → `ok` or errno name.
    pub ops: BTreeMap<String, String>,
    /// Whether the file ended with END.
    pub complete: bool,
}

/// Each guest's results file as it is now (a file that cannot be read gives no entry: the
/// checks it feeds fail).
pub fn read_results(attack: &crate::plan::Attack) -> BTreeMap<String, GuestResults> {
    let mut out = BTreeMap::new();
    for (guest, path) in &attack.results {
        if let Ok(text) = std::fs::read_to_string(path) {
            out.insert(guest.clone(), GuestResults::parse(&text));
        }
    }
    out
}

impl GuestResults {
    /// Parse a results file.
    pub fn parse(text: &str) -> Self {
        let mut r = GuestResults::default();
        for line in text.lines() {
            let f: Vec<&str> = line.split_whitespace().collect();
            match f.as_slice() {
                ["context", c] => r.context = Some(c.to_string()),
                ["op", name, outcome] => {
                    r.ops.insert(name.to_string(), outcome.to_string());
                }
                ["END"] => r.complete = true,
                _ => {}
            }
        }
        r
    }
}

/// A parsed AVC record from the kernel log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Avc {
    /// `denied` (true) or `granted`.
    pub denied: bool,
    /// Permissions between the braces.
    pub perms: Vec<String>,
    /// Source context.
    pub scontext: String,
    /// Target context.
    pub tcontext: String,
    /// Object class.
    pub tclass: String,
    /// Pid of the process that was denied.
    pub pid: Option<i32>,
    /// The whole line as logged.
    pub line: String,
}

/// Parse one kernel log line; `None` if it is not an AVC record.
pub fn parse_avc(line: &str) -> Option<Avc> {
    let rest = &line[line.find("avc:")? + 4..];
    let denied = rest.trim_start().starts_with("denied");
    let open = rest.find('{')?;
    let close = open + rest[open..].find('}')?;
    let perms = rest[open + 1..close]
        .split_whitespace()
        .map(str::to_string)
        .collect();
    let field = |key: &str| {
        rest[close..]
            .split_whitespace()
            .find_map(|w| w.strip_prefix(key))
            .map(str::to_string)
    };
    Some(Avc {
        denied,
        perms,
        scontext: field("scontext=")?,
        tcontext: field("tcontext=")?,
        tclass: field("tclass=")?,
        pid: field("pid=").and_then(|p| p.parse().ok()),
        line: line.trim().to_string(),
    })
}

/// Everything the unconfined side observed.
#[derive(Debug, Clone, Default)]
pub struct Observed {
    /// Labels after setup, before the manager started.
    pub before: Snapshot,
    /// Labels and processes while the guests run.
    pub running: Snapshot,
    /// Labels after the manager stopped the guests.
    pub after: Snapshot,
    /// Results per guest.
    pub results: BTreeMap<String, GuestResults>,
    /// AVC records from the kernel log.
    pub avcs: Vec<Avc>,
    /// `/sys/fs/selinux/enforce` at check time.
    pub enforcing: Option<bool>,
}

fn check(name: String, pass: bool, detail: String) -> CheckResult {
    CheckResult { name, pass, detail }
}

/// `decision.GUEST.OP`: what the guest's operation got against what `source` (the policy
/// model, an expectation table) says it must get.
pub fn decision_check(
    op: &crate::plan::Op,
    pass: bool,
    got: Option<&String>,
    source: &str,
    want: &str,
) -> CheckResult {
    check(
        format!("decision.{}.{}", op.guest, op.name),
        pass,
        format!(
            "{:?} {} -> got {}, {source}: {want}",
            op.action,
            op.target,
            got.map_or("nothing", String::as_str)
        ),
    )
}

fn proc_type(p: Option<&ProcInfo>, prev: bool) -> Option<String> {
    let p = p?;
    ContextParts::parse(if prev { &p.prev } else { &p.current })
        .ok()
        .map(|c| c.type_)
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
        "selinux.enforcing".into(),
        obs.enforcing == Some(true),
        format!("enforce={:?}", obs.enforcing),
    ));

    let manager = obs.running.procs.get("manager");
    let t = proc_type(manager, false);
    out.push(check(
        "chain.manager_domain".into(),
        t.as_deref() == Some(MANAGER_DOMAIN),
        format!(
            "manager runs as {:?}, want {MANAGER_DOMAIN}",
            manager.map(|m| &m.current)
        ),
    ));
    let t = proc_type(manager, true);
    out.push(check(
        "chain.manager_entered_from_init".into(),
        t.as_deref() == Some(MANAGER_PARENT_DOMAIN),
        format!(
            "manager's previous context {:?}, want {MANAGER_PARENT_DOMAIN}",
            manager.map(|m| &m.prev)
        ),
    ));

    let mut levels = Vec::new();
    for g in &plan.guests {
        let p = obs.running.procs.get(&g.name);
        let parts = p.and_then(|p| ContextParts::parse(&p.current).ok());
        let ok = parts
            .as_ref()
            .is_some_and(|c| c.type_ == crate::plan::DOMAIN_TYPE && c.level == g.level);
        out.push(check(
            format!("guest.{}.context", g.name),
            ok,
            format!(
                "/proc/{}/attr/current = {:?}, want {}:{}",
                p.map_or(0, |p| p.pid),
                p.map(|p| &p.current),
                crate::plan::DOMAIN_TYPE,
                g.level
            ),
        ));
        if let Some(c) = parts {
            levels.push((g.name.clone(), c.level));
        }
        let r = obs.results.get(&g.name);
        out.push(check(
            format!("guest.{}.results", g.name),
            r.is_some_and(|r| r.complete),
            match r {
                Some(r) => format!(
                    "{} outcomes, complete={}, VMM saw itself as {:?}",
                    r.ops.len(),
                    r.complete,
                    r.context
                ),
                None => "no results file".into(),
            },
        ));
    }
    let distinct: BTreeSet<&String> = levels.iter().map(|(_, l)| l).collect();
    out.push(check(
        "guests.distinct_levels".into(),
        levels.len() == plan.guests.len() && distinct.len() == levels.len(),
        format!("observed levels {levels:?}"),
    ));
    out.push(isolation_check(&levels, plan.guests.len()));

    for d in &plan.disks {
        let path = d.path.display();
        let want = plan.planned_label(d).unwrap_or_else(|e| format!("?{e}"));
        let got = obs.running.files.get(&d.path);
        out.push(check(
            format!("label.running.{path}"),
            got == Some(&want),
            format!("got {got:?}, planned {want}"),
        ));
        let before = obs.before.files.get(&d.path);
        let after = obs.after.files.get(&d.path);
        out.push(check(
            format!("label.restored.{path}"),
            before.is_some() && before == after && before.is_some_and(|b| b != "-"),
            format!("before {before:?}, after {after:?}"),
        ));
    }

    for op in &attack.ops {
        let exp = expected.get(&(op.guest.clone(), op.name.clone()));
        let got = obs.results.get(&op.guest).and_then(|r| r.ops.get(&op.name));
        let (pass, want) = match exp.map(|e| e.decision) {
            Some(Decision::Allow) => (got.is_some_and(|g| g == "ok"), "allow (ok)".to_string()),
            Some(Decision::Deny) => (
                got.is_some_and(|g| g == "EACCES"),
                format!("deny (EACCES): {}", exp.map_or("", |e| e.reason.as_str())),
            ),
            None => (false, "NO EXPECTATION from the model".to_string()),
        };
        out.push(decision_check(op, pass, got, "model", &want));
        if let Some(e) = exp.filter(|e| e.decision == Decision::Deny && e.audited) {
            out.push(avc_check(op, e, obs));
        }
    }
    out
}

/// Distinct is not enough: `s0:c1,c2` dominates `s0:c1`, so every pair of guest levels
/// must be incomparable (neither dominates the other).
fn isolation_check(levels: &[(String, String)], guests: usize) -> CheckResult {
    let name = "guests.isolated_levels".to_string();
    if levels.len() != guests {
        return check(
            name,
            false,
            format!("only {} of {guests} guest levels observed", levels.len()),
        );
    }
    let mut problems = Vec::new();
    for (i, (na, la)) in levels.iter().enumerate() {
        for (nb, lb) in &levels[i + 1..] {
            match (Level::parse(la), Level::parse(lb)) {
                (Ok(a), Ok(b)) => {
                    let rel = a.compare(&b);
                    if rel != LevelOrdering::Incomparable {
                        problems.push(format!("{na} {la} vs {nb} {lb}: {rel:?}"));
                    }
                }
                _ => problems.push(format!("unparsable level {la} or {lb}")),
            }
        }
    }
    if problems.is_empty() {
        check(name, true, format!("pairwise incomparable: {levels:?}"))
    } else {
        check(name, false, problems.join("; "))
    }
}

/// The AVC line of an expected, audited denial (pid, both contexts, class, permission).
pub fn find_avc<'a>(
    op: &crate::plan::Op,
    exp: &Expectation,
    running: &Snapshot,
    avcs: &'a [Avc],
) -> std::result::Result<&'a Avc, String> {
    let perm = exp.perm.as_deref().unwrap_or("?");
    let class = exp.class.as_str();
    let source = running.procs.get(&op.guest);
    let scontext = source.map(|p| p.current.clone());
    // Guests given the same label (a broken run) log identical contexts: the pid tells
    // whose denial a line is.
    let pid = source.map(|p| p.pid);
    let tcontext = if op.action.targets_process() {
        running.procs.get(&op.target).map(|p| p.current.clone())
    } else {
        running.files.get(&PathBuf::from(&op.target)).cloned()
    };
    let (Some(s), Some(t)) = (scontext, tcontext) else {
        return Err("source or target context unknown".into());
    };
    avcs.iter()
        .find(|a| {
            a.denied
                && a.pid == pid
                && a.scontext == s
                && a.tcontext == t
                && a.tclass == class
                && a.perms.iter().any(|p| p == perm)
        })
        .ok_or_else(|| {
            format!(
                "no `avc: denied {{ {perm} }}` from pid {} with scontext={s} tcontext={t} tclass={class}",
                pid.unwrap_or(0)
            )
        })
}

fn avc_check(op: &crate::plan::Op, exp: &Expectation, obs: &Observed) -> CheckResult {
    let name = format!("avc.{}.{}", op.guest, op.name);
    match find_avc(op, exp, &obs.running, &obs.avcs) {
        Ok(a) => check(name, true, a.line.clone()),
        Err(why) => check(name, false, why),
    }
}

/// Names of all checks `evaluate` reports for these inputs.
pub fn list(plan: &Plan, attack: &Attack, expected: &Expected) -> Vec<String> {
    evaluate(plan, attack, expected, &Observed::default())
        .into_iter()
        .map(|c| c.name)
        .collect()
}

/// Every file path the checks look at.
pub fn watched_files(plan: &Plan, attack: &Attack) -> BTreeSet<PathBuf> {
    let mut files: BTreeSet<PathBuf> = plan.disks.iter().map(|d| d.path.clone()).collect();
    files.extend(attack.results.values().cloned());
    files.extend(
        attack
            .ops
            .iter()
            .filter(|o| !o.action.targets_process())
            .map(|o| PathBuf::from(&o.target)),
    );
    files
}

/// Take a snapshot of file labels and of the processes in a pids file.
pub fn take_snapshot(files: &BTreeSet<PathBuf>, pids: Option<&Path>) -> Result<Snapshot> {
    let mut s = Snapshot::default();
    for f in files {
        s.files.insert(
            f.clone(),
            selinux::file_label(f).unwrap_or_else(|_| "-".into()),
        );
    }
    if let Some(p) = pids {
        let text = fs::read_to_string(p).ctx(|| format!("reading {}", p.display()))?;
        for (name, pid) in parse_pids(&text)?.0 {
            let attr =
                |a| selinux::process_attr(&pid.to_string(), a).unwrap_or_else(|_| "-".into());
            s.procs.insert(
                name,
                ProcInfo {
                    pid,
                    current: attr("current"),
                    prev: attr("prev"),
                },
            );
        }
    }
    Ok(s)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::plan::{ProcInfo, parse_expected};

    const AVC: &str = "[   12.3] audit: type=1400 audit(1.2:3): avc:  denied  { read } for  pid=80 \
        comm=\"qemu-system-x86\" name=\"B.img\" dev=\"tmpfs\" ino=5 \
        scontext=system_u:system_r:svirt_t:s0:c1,c2 tcontext=system_u:object_r:svirt_image_t:s0:c3,c4 \
        tclass=file permissive=0";

    #[test]
    fn parses_avc_lines() {
        let a = parse_avc(AVC).unwrap();
        assert!(a.denied);
        assert_eq!(a.perms, vec!["read"]);
        assert_eq!(a.tcontext, "system_u:object_r:svirt_image_t:s0:c3,c4");
        assert_eq!(a.tclass, "file");
        assert_eq!(a.pid, Some(80));
        assert_eq!(a.pid, Some(80));
        assert!(parse_avc("random kernel line").is_none());
    }

    fn setup() -> (Plan, Attack, Expected, Observed) {
        let plan =
            Plan::parse("guest A s0:c1,c2\nguest B s0:c3,c4\ndisk B /img/B private\n").unwrap();
        let attack = Attack::parse("results A /img/A.r\nop A other.read read /img/B\n").unwrap();
        let expected =
            parse_expected("A\tother.read\tdeny\tavc\tfile\tread\tconstraint failed for read\n")
                .unwrap();
        let mut obs = Observed {
            enforcing: Some(true),
            ..Default::default()
        };
        for s in [&mut obs.before, &mut obs.after] {
            s.files
                .insert("/img/B".into(), "system_u:object_r:virt_image_t:s0".into());
        }
        obs.running.files.insert(
            "/img/B".into(),
            "system_u:object_r:svirt_image_t:s0:c3,c4".into(),
        );
        let proc_ = |cur: &str, prev: &str| ProcInfo {
            pid: 1,
            current: cur.into(),
            prev: prev.into(),
        };
        obs.running.procs.insert(
            "manager".into(),
            proc_(
                "system_u:system_r:virtd_t:s0-s0:c0.c1023",
                "system_u:system_r:init_t:s0-s0:c0.c1023",
            ),
        );
        let mut a = proc_("system_u:system_r:svirt_t:s0:c1,c2", "x:y:virtd_t:s0");
        a.pid = 80; // the pid in AVC
        obs.running.procs.insert("A".into(), a);
        obs.running.procs.insert(
            "B".into(),
            proc_("system_u:system_r:svirt_t:s0:c3,c4", "x:y:virtd_t:s0"),
        );
        for g in ["A", "B"] {
            obs.results.insert(
                g.into(),
                GuestResults::parse("context x\nop other.read EACCES\nEND\n"),
            );
        }
        obs.avcs.push(parse_avc(AVC).unwrap());
        (plan, attack, expected, obs)
    }

    #[test]
    fn all_pass_on_matching_observations() {
        let (plan, attack, expected, obs) = setup();
        let r = evaluate(&plan, &attack, &expected, &obs);
        assert!(r.iter().all(|c| c.pass), "{r:#?}");
        let names: Vec<String> = r.iter().map(|c| c.name.clone()).collect();
        assert_eq!(names, list(&plan, &attack, &expected));
        assert!(names.contains(&"avc.A.other.read".to_string()));
    }

    #[test]
    fn nothing_observed_fails_everything() {
        let (plan, attack, expected, _) = setup();
        let r = evaluate(&plan, &attack, &expected, &Observed::default());
        assert!(r.iter().all(|c| !c.pass), "{r:#?}");
    }

    #[test]
    fn same_level_and_allowed_cross_access_fail() {
        let (plan, attack, expected, mut obs) = setup();
        obs.running.procs.get_mut("B").unwrap().current =
            "system_u:system_r:svirt_t:s0:c1,c2".into();
        obs.results
            .get_mut("A")
            .unwrap()
            .ops
            .insert("other.read".into(), "ok".into());
        obs.avcs.clear();
        let r = evaluate(&plan, &attack, &expected, &obs);
        let failed: Vec<&str> = r
            .iter()
            .filter(|c| !c.pass)
            .map(|c| c.name.as_str())
            .collect();
        assert!(failed.contains(&"guests.distinct_levels"));
        assert!(failed.contains(&"guests.isolated_levels"));
        assert!(failed.contains(&"guest.B.context"));
        assert!(failed.contains(&"decision.A.other.read"));
        assert!(failed.contains(&"avc.A.other.read"));
    }

    #[test]
    fn avc_of_another_process_does_not_count() {
        let (plan, attack, expected, mut obs) = setup();
        obs.running.procs.get_mut("A").unwrap().pid = 81;
        let r = evaluate(&plan, &attack, &expected, &obs);
        assert!(r.iter().any(|c| c.name == "avc.A.other.read" && !c.pass));
    }

    #[test]
    fn dominating_levels_are_not_isolated() {
        let lv = |v: &[(&str, &str)]| -> Vec<(String, String)> {
            v.iter()
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .collect()
        };
        assert!(isolation_check(&lv(&[("A", "s0:c1,c2"), ("B", "s0:c3,c4")]), 2).pass);
        assert!(isolation_check(&lv(&[("A", "s0:c1,c2"), ("B", "s0:c2,c9")]), 2).pass);
        assert!(!isolation_check(&lv(&[("A", "s0:c1,c2"), ("B", "s0:c1")]), 2).pass);
        assert!(!isolation_check(&lv(&[("A", "s0:c1,c2"), ("B", "s0:c2,c1")]), 2).pass);
        assert!(!isolation_check(&lv(&[("A", "s0:c0.c3"), ("B", "s0:c1,c2")]), 2).pass);
        assert!(!isolation_check(&lv(&[("A", "s0:c1,c2")]), 2).pass);
    }

    #[test]
    fn wrong_errno_is_not_a_denial() {
        let (plan, attack, expected, mut obs) = setup();
        obs.results
            .get_mut("A")
            .unwrap()
            .ops
            .insert("other.read".into(), "ENOENT".into());
        let r = evaluate(&plan, &attack, &expected, &obs);
        assert!(
            r.iter()
                .any(|c| c.name == "decision.A.other.read" && !c.pass)
        );
    }

    #[test]
    fn unrestored_label_fails() {
        let (plan, attack, expected, mut obs) = setup();
        obs.after.files.insert(
            "/img/B".into(),
            "system_u:object_r:svirt_image_t:s0:c3,c4".into(),
        );
        let r = evaluate(&plan, &attack, &expected, &obs);
        assert!(
            r.iter()
                .any(|c| c.name == "label.restored./img/B" && !c.pass)
        );
    }
}
