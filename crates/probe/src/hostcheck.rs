//! Host-side checks after a run: `svirt denials` and `svirt explain --avc` fed with the
//! run's real AVC lines must attribute every denial to the right guest, name both
//! contexts, and explain each one the way the model decided it before the boot.
//!
//! Runs on the host (no svirtd there: `svirt` is pointed at a socket that does not exist,
//! so guests are named by level, `guest at s0:c1,c2`, never by a host daemon's guests).

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;

use crate::check::{Avc, CheckResult, find_avc, parse_avc};
use crate::error::{Context, Error, Result};
use crate::plan::{Attack, Decision, Expected, Plan, Snapshot};

/// The prefix under which the VM prints its `running` snapshot on the console.
pub const RUNNING_PREFIX: &str = "LABLOG /lab/state/running: ";

/// One entry of `svirt denials` output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listed {
    /// The section it is listed under (`guest at s0:c1,c2`, a guest name, `(not a guest)`).
    pub guest: String,
    /// Permissions.
    pub perms: Vec<String>,
    /// Source context.
    pub scontext: String,
    /// Target context.
    pub tcontext: String,
    /// `[guest at …]` tag of the target, if the tool named one.
    pub target_guest: Option<String>,
    /// Object class.
    pub tclass: String,
    /// `name=`, if any.
    pub name: Option<String>,
}

/// Parse `svirt denials` output: `GUEST: N denial(s)` headings, then
/// `  { perms } S -> T [TARGET] tclass=C name=N` entries (explanation lines ignored).
pub fn parse_denials(text: &str) -> Result<Vec<Listed>> {
    let mut out = Vec::new();
    let mut section: Option<String> = None;
    for line in text.lines() {
        if let Some(h) = line.strip_suffix(" denial(s)")
            && !line.starts_with(' ')
        {
            let guest = h.rsplit_once(": ").map(|(g, _)| g.to_string());
            section = Some(guest.ok_or_else(|| Error::msg(format!("bad heading {line:?}")))?);
            continue;
        }
        let Some(rest) = line.strip_prefix("  { ") else {
            continue;
        };
        let guest = section
            .clone()
            .ok_or_else(|| Error::msg(format!("entry before any heading: {line:?}")))?;
        let (perms, rest) = rest
            .split_once(" } ")
            .ok_or_else(|| Error::msg(format!("bad entry {line:?}")))?;
        let (s, rest) = rest
            .split_once(" -> ")
            .ok_or_else(|| Error::msg(format!("bad entry {line:?}")))?;
        let (t, rest) = rest.split_once(' ').unwrap_or((rest, ""));
        let (target_guest, rest) = match rest.strip_prefix('[') {
            Some(r) => {
                let (tag, r) = r
                    .split_once("] ")
                    .ok_or_else(|| Error::msg(format!("bad target tag in {line:?}")))?;
                (Some(tag.to_string()), r)
            }
            None => (None, rest),
        };
        let field = |k: &str| {
            rest.split_whitespace()
                .find_map(|w| w.strip_prefix(k))
                .map(str::to_string)
        };
        out.push(Listed {
            guest,
            perms: perms.split_whitespace().map(str::to_string).collect(),
            scontext: s.to_string(),
            tcontext: t.to_string(),
            target_guest,
            tclass: field("tclass=").unwrap_or_default(),
            name: field("name="),
        });
    }
    Ok(out)
}

fn same_record(l: &Listed, a: &Avc) -> bool {
    l.scontext == a.scontext
        && l.tcontext == a.tcontext
        && l.tclass == a.tclass
        && l.perms == a.perms
        && l.name.as_deref() == avc_name(&a.line).as_deref()
}

fn avc_name(line: &str) -> Option<String> {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix("name="))
        .map(|v| v.trim_matches('"').to_string())
}

/// The heading `svirt denials` / `svirt explain --avc` use for a guest without svirtd.
pub fn level_heading(level: &str) -> String {
    format!("guest at {level}")
}

/// Names of the host checks for these inputs (fixed before the boot).
pub fn list(plan: &Plan, attack: &Attack, expected: &Expected) -> Vec<String> {
    let mut out = vec!["denials.all_expected".to_string()];
    for g in &plan.guests {
        out.push(format!("denials.{}.attributed", g.name));
    }
    for op in &attack.ops {
        let k = (op.guest.clone(), op.name.clone());
        if expected
            .get(&k)
            .is_some_and(|e| e.decision == Decision::Deny && e.audited)
        {
            out.push(format!("denials.{}.{}", op.guest, op.name));
            out.push(format!("explain.{}.{}", op.guest, op.name));
        }
    }
    out
}

/// Runs `svirt ARGS...` and returns its stdout; a failing run is an error with its stderr.
fn run_svirt(svirt: &Path, no_daemon: &Path, args: &[&str]) -> Result<String> {
    let out = Command::new(svirt)
        .arg("--connect")
        .arg(format!("unix:{}", no_daemon.display()))
        .args(args)
        .output()
        .ctx(|| format!("running {}", svirt.display()))?;
    if !out.status.success() {
        return Err(Error::msg(format!(
            "svirt {} exited {}: {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Inputs of the host checks.
pub struct Inputs<'a> {
    /// The plan (guest names, disks; levels for guests never observed).
    pub plan: &'a Plan,
    /// The attack plan.
    pub attack: &'a Attack,
    /// The model's expectations.
    pub expected: &'a Expected,
    /// The run's console log.
    pub console: &'a str,
    /// The run's AVC file (what `svirt denials --from` reads).
    pub avc_file: &'a Path,
    /// The `svirt` binary.
    pub svirt: &'a Path,
    /// A socket path where no svirtd listens.
    pub no_daemon: &'a Path,
}

/// Run the host checks.
pub fn evaluate(i: &Inputs<'_>) -> Vec<CheckResult> {
    let running = Snapshot::parse(
        &i.console
            .lines()
            .filter_map(|l| l.strip_prefix(RUNNING_PREFIX))
            .collect::<Vec<_>>()
            .join("\n"),
    )
    .unwrap_or_default();
    let avc_text = std::fs::read_to_string(i.avc_file).unwrap_or_default();
    let avcs: Vec<Avc> = avc_text
        .lines()
        .filter_map(parse_avc)
        .filter(|a| a.denied)
        .collect();
    let listed = run_svirt(
        i.svirt,
        i.no_daemon,
        &["denials", "--from", &i.avc_file.to_string_lossy()],
    )
    .and_then(|t| parse_denials(&t));
    let mut out = Vec::new();
    let fail = |name: String, why: String| CheckResult {
        name,
        pass: false,
        detail: why,
    };

    // Every denial of the run must be one the model predicted (an audited denial of one
    // of the guests' operations): anything else (the manager denied something, a guest
    // denied something it does not attempt) is a finding.
    let mut expected_lines: BTreeSet<&str> = BTreeSet::new();
    let mut matched = Vec::new();
    for op in &i.attack.ops {
        let k = (op.guest.clone(), op.name.clone());
        let Some(e) = i
            .expected
            .get(&k)
            .filter(|e| e.decision == Decision::Deny && e.audited)
        else {
            continue;
        };
        let hit = find_avc(op, e, &running, &avcs);
        if let Ok(a) = &hit {
            expected_lines.insert(a.line.as_str());
        }
        matched.push((op, e, hit));
    }
    let unexpected: Vec<&str> = avcs
        .iter()
        .map(|a| a.line.as_str())
        .filter(|l| !expected_lines.contains(l))
        .collect();
    out.push(CheckResult {
        name: "denials.all_expected".into(),
        pass: unexpected.is_empty() && !avcs.is_empty(),
        detail: if unexpected.is_empty() {
            format!("{} denials, each an expected one", avcs.len())
        } else {
            format!(
                "{} unexpected denial(s): {}",
                unexpected.len(),
                unexpected.join(" | ")
            )
        },
    });

    // The tools are judged against the labels the guests really had (a broken run's labels
    // are the VM checks' business): a guest's heading is its observed level, or the
    // planned one when it was never observed.
    let level_of = |guest: &str| -> Option<String> {
        let observed = running
            .procs
            .get(guest)
            .and_then(|p| p.current.splitn(4, ':').nth(3).map(str::to_string));
        observed
            .or_else(|| i.plan.guest(guest).map(|g| g.level.clone()))
            .map(|l| level_heading(&l))
    };
    for g in &i.plan.guests {
        let name = format!("denials.{}.attributed", g.name);
        let heading = level_of(&g.name).unwrap_or_default();
        let listed = match &listed {
            Ok(l) => l,
            Err(e) => {
                out.push(fail(name, format!("svirt denials: {e}")));
                continue;
            }
        };
        let pid = running.procs.get(&g.name).map(|p| p.pid);
        let mine: Vec<&Avc> = avcs
            .iter()
            .filter(|a| pid.is_some() && a.pid == pid)
            .collect();
        let section: Vec<&Listed> = listed.iter().filter(|l| l.guest == heading).collect();
        let missing: Vec<&str> = mine
            .iter()
            .filter(|a| !section.iter().any(|l| same_record(l, a)))
            .map(|a| a.line.as_str())
            .collect();
        let pass = !mine.is_empty() && missing.is_empty() && section.len() == mine.len();
        out.push(CheckResult {
            name,
            pass,
            detail: if pass {
                format!("`svirt denials` lists all {} denials of pid {} under `{heading}`", mine.len(), pid.unwrap_or(0))
            } else {
                format!(
                    "pid {:?} logged {} denials, `svirt denials` lists {} under `{heading}`; not there: {}",
                    pid,
                    mine.len(),
                    section.len(),
                    missing.join(" | ")
                )
            },
        });
    }

    for (op, e, hit) in matched {
        let dname = format!("denials.{}.{}", op.guest, op.name);
        let xname = format!("explain.{}.{}", op.guest, op.name);
        let a = match hit {
            Ok(a) => a,
            Err(why) => {
                out.push(fail(dname, format!("no AVC line: {why}")));
                out.push(fail(xname, format!("no AVC line: {why}")));
                continue;
            }
        };
        let heading = level_of(&op.guest).unwrap_or_default();
        // The target is a guest's when it is another guest's process or private image.
        let target_guest = if op.action.targets_process() {
            level_of(&op.target)
        } else {
            i.plan
                .disks
                .iter()
                .find(|d| d.path == Path::new(&op.target))
                .and_then(|d| d.owner.as_deref())
                .and_then(level_of)
        };
        out.push(match &listed {
            Err(err) => fail(dname, format!("svirt denials: {err}")),
            Ok(listed) => match listed.iter().find(|l| same_record(l, a)) {
                None => fail(dname, format!("not listed by `svirt denials`: {}", a.line)),
                Some(l) => {
                    let pass = l.guest == heading && l.target_guest == target_guest;
                    CheckResult {
                        name: dname,
                        pass,
                        detail: format!(
                            "listed under `{}`: {{ {} }} {} -> {} [{}] tclass={}{}",
                            l.guest,
                            l.perms.join(" "),
                            l.scontext,
                            l.tcontext,
                            l.target_guest.as_deref().unwrap_or("-"),
                            l.tclass,
                            if pass {
                                String::new()
                            } else {
                                format!(
                                    "; want under `{heading}` with target [{}]",
                                    target_guest.as_deref().unwrap_or("-")
                                )
                            }
                        ),
                    }
                }
            },
        });
        out.push(
            match run_svirt(i.svirt, i.no_daemon, &["explain", "--avc", &a.line]) {
                Err(err) => fail(xname, err.to_string()),
                Ok(text) => explain_check(xname, &text, &heading, &e.reason),
            },
        );
    }
    out
}

/// `svirt explain --avc LINE` must name the guest, say deny, and give the model's reasons
/// (every "no TE rule" / failed constraint / boolean fix of the pre-boot batch answer).
fn explain_check(name: String, text: &str, heading: &str, reason: &str) -> CheckResult {
    let mut problems = Vec::new();
    let first = text.lines().next().unwrap_or("");
    if !first.starts_with(&format!("== {heading} -> ")) {
        problems.push(format!("heading {first:?} does not name `{heading}`"));
    }
    let summary = text.lines().find(|l| !l.starts_with("==")).unwrap_or("");
    if !summary.starts_with("deny:") {
        problems.push(format!("verdict {summary:?}, want deny"));
    }
    let why: Vec<&str> = text
        .lines()
        .filter_map(|l| l.trim_start().strip_prefix("why: "))
        .collect();
    let fix: Vec<&str> = text
        .lines()
        .filter_map(|l| l.trim_start().strip_prefix("fix: "))
        .collect();
    for part in reason.split("; ") {
        if part.starts_with("no TE rule") {
            if !why.iter().any(|w| w.contains("no type-enforcement rule")) {
                problems.push(format!("model says `{part}`, explanation does not"));
            }
        } else if let Some(rest) = part.strip_prefix("constraint failed for ") {
            let expr = rest.split_once(": ").map_or("", |(_, e)| e);
            if expr.is_empty() || !why.iter().any(|w| w.contains(expr)) {
                problems.push(format!("model says `{part}`, explanation does not"));
            }
        } else if let Some(b) = part.strip_suffix(" would allow it")
            && !fix.iter().any(|f| f.contains(b))
        {
            problems.push(format!("model's fix `{part}` missing"));
        }
    }
    let shown = why.join(" / ");
    CheckResult {
        pass: problems.is_empty(),
        detail: if problems.is_empty() {
            format!("deny, as the model: {shown}")
        } else {
            format!(
                "{}; explanation: {}",
                problems.join("; "),
                text.replace('\n', " | ")
            )
        },
        name,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const DENIALS: &str = "guest at s0:c1,c2: 2 denial(s)
  { read } system_u:system_r:svirt_t:s0:c1,c2 -> system_u:object_r:svirt_image_t:s0:c3,c4 [guest at s0:c3,c4] tclass=file name=B.img
  { ptrace } system_u:system_r:svirt_t:s0:c1,c2 -> system_u:system_r:svirt_t:s0:c3,c4 [guest at s0:c3,c4] tclass=process
(not a guest): 1 denial(s)
  { write } system_u:system_r:virtd_t:s0 -> system_u:object_r:etc_t:s0 tclass=file name=x
    deny: virtd_t { write } …
";

    #[test]
    fn parses_denials_output() {
        let l = parse_denials(DENIALS).unwrap();
        assert_eq!(l.len(), 3);
        assert_eq!(l[0].guest, "guest at s0:c1,c2");
        assert_eq!(l[0].target_guest.as_deref(), Some("guest at s0:c3,c4"));
        assert_eq!(l[0].name.as_deref(), Some("B.img"));
        assert_eq!(l[1].tclass, "process");
        assert_eq!(l[1].name, None);
        assert_eq!(l[2].guest, "(not a guest)");
        assert_eq!(l[2].target_guest, None);
        let a = parse_avc("audit: avc:  denied  { read } for  pid=9 comm=\"q\" name=\"B.img\" dev=\"tmpfs\" \
            scontext=system_u:system_r:svirt_t:s0:c1,c2 tcontext=system_u:object_r:svirt_image_t:s0:c3,c4 tclass=file permissive=0").unwrap();
        assert!(same_record(&l[0], &a));
        assert!(!same_record(&l[1], &a));
    }

    #[test]
    fn explanation_must_match_the_model() {
        let text = "== guest at s0:c1,c2 -> guest at s0:c3,c4's file\n\
            deny: svirt_t { read } on svirt_image_t file (…)\n  \
            why: MCS isolation: …: `(h1 dom h2)` [h1 dom h2 is false]\n";
        let reason = "constraint failed for read: (h1 dom h2)";
        assert!(explain_check("x".into(), text, "guest at s0:c1,c2", reason).pass);
        assert!(!explain_check("x".into(), text, "guest at s0:c3,c4", reason).pass);
        assert!(!explain_check("x".into(), text, "guest at s0:c1,c2", "no TE rule for read").pass);
        let allow = text.replace("deny:", "allow:");
        assert!(!explain_check("x".into(), &allow, "guest at s0:c1,c2", reason).pass);
    }
}
