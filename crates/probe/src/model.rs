//! Expected outcomes from the policy model, computed on the host before the boot.
//!
//! `model-queries` turns every operation of the attack plan into `svirt explain --batch`
//! requests (one per permission the kernel checks, in its order: [`Action::access`]) with
//! the contexts the intended plan gives the guest and its target; `svirt explain --batch`
//! answers them; `model-expect` folds the answers back into the expected table the VM's
//! checks read. Nothing here knows what the policy decides: that is the model's job.
//!
//! [`Action::access`]: crate::plan::Action::access

use std::path::PathBuf;

use crate::error::{Error, Result};
use crate::plan::{Attack, Decision, Expectation, Expected, Labels, Plan, guest_process_context};

/// The text `svirt explain --batch` puts in a denial's reason when a `dontaudit` rule
/// silences it (`Decision::reason_line` in svirt-policy): the kernel logs no AVC line.
pub const NOT_LOGGED: &str = "not logged (dontaudit)";

/// One request to the model: one permission of one guest's operation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Query {
    /// The guest whose VMM performs the operation.
    pub guest: String,
    /// The operation's name in the attack plan.
    pub op: String,
    /// The guest's process context.
    pub scontext: String,
    /// The target's context (file label, or the other guest's process context).
    pub tcontext: String,
    /// Object class.
    pub class: &'static str,
    /// One permission.
    pub perm: &'static str,
}

impl Query {
    /// The request as a `svirt explain --batch` line (without the newline).
    pub fn batch_line(&self) -> String {
        format!(
            "{}\t{}\t{}\t{}",
            self.scontext, self.tcontext, self.class, self.perm
        )
    }
}

/// The label a file carries while the guests run, per the intended plan: its planned label
/// if it is one of the plan's disks, else the scenario's layout label.
fn running_file_label(plan: &Plan, labels: &Labels, path: &str) -> Result<String> {
    let p = PathBuf::from(path);
    if let Some(d) = plan.disks.iter().find(|d| d.path == p) {
        return plan.planned_label(d);
    }
    labels
        .get(&p)
        .cloned()
        .ok_or_else(|| Error::msg(format!("no label known for {path} (plan or layout labels)")))
}

/// Every model request for the attack plan, in attack-plan order.
pub fn queries(plan: &Plan, attack: &Attack, labels: &Labels) -> Result<Vec<Query>> {
    let mut out = Vec::new();
    for op in &attack.ops {
        let me = plan
            .guest(&op.guest)
            .ok_or_else(|| Error::msg(format!("attack plan: unknown guest {}", op.guest)))?;
        let tcontext = if op.action.targets_process() {
            let t = plan
                .guest(&op.target)
                .ok_or_else(|| Error::msg(format!("attack plan: unknown guest {}", op.target)))?;
            guest_process_context(&t.level)
        } else {
            running_file_label(plan, labels, &op.target)?
        };
        let (class, perms) = op.action.access();
        for perm in perms {
            out.push(Query {
                guest: op.guest.clone(),
                op: op.name.clone(),
                scontext: guest_process_context(&me.level),
                tcontext: tcontext.clone(),
                class,
                perm,
            });
        }
    }
    Ok(out)
}

/// Fold the model's answers (one `svirt explain --batch` output line per query, in order)
/// into expectations. The operation is denied at its first denied permission, which is the
/// one the AVC line names. An `unknown` or `error` answer is an error: the lab never
/// guesses an expectation the model cannot give.
pub fn expectations(queries: &[Query], answers: &[String]) -> Result<Expected> {
    if queries.len() != answers.len() {
        return Err(Error::msg(format!(
            "{} model answers for {} queries",
            answers.len(),
            queries.len()
        )));
    }
    let mut e = Expected::new();
    for (q, a) in queries.iter().zip(answers) {
        let key = (q.guest.clone(), q.op.clone());
        let (verdict, reason) = a.split_once('\t').unwrap_or((a.as_str(), ""));
        let entry = e.entry(key).or_insert_with(|| Expectation {
            decision: Decision::Allow,
            audited: false,
            class: q.class.to_string(),
            perm: None,
            reason: String::new(),
        });
        if !matches!(verdict, "allow" | "deny") {
            return Err(Error::msg(format!(
                "the model gives no verdict for {} {} ({}): {a}",
                q.guest,
                q.op,
                q.batch_line().replace('\t', " ")
            )));
        }
        // A later permission cannot change an earlier denial: the kernel stopped there.
        if verdict == "deny" && entry.decision == Decision::Allow {
            entry.decision = Decision::Deny;
            entry.audited = !reason.contains(NOT_LOGGED);
            entry.perm = Some(q.perm.to_string());
            entry.reason = reason.to_string();
        }
    }
    Ok(e)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::plan::{parse_expected, parse_labels, render_expected};

    fn inputs() -> (Plan, Attack, Labels) {
        let plan = Plan::parse(
            "guest A s0:c1,c2\nguest B s0:c3,c4\ndisk A /img/A private\ndisk B /img/B private\n\
             disk - /img/c readonly\n",
        )
        .unwrap();
        let attack = Attack::parse(
            "results A /r/A\npeers /p\nop A other.read read /img/B\nop A home.write write /img/h\n\
             op A content.write write /img/c\nop A peer.signal signal B\n",
        )
        .unwrap();
        let labels = parse_labels("/img/h system_u:object_r:user_home_t:s0\n").unwrap();
        (plan, attack, labels)
    }

    #[test]
    fn queries_follow_the_mapping_and_the_plan() {
        let (plan, attack, labels) = inputs();
        let q = queries(&plan, &attack, &labels).unwrap();
        let lines: Vec<String> = q.iter().map(Query::batch_line).collect();
        assert_eq!(
            lines[0],
            "system_u:system_r:svirt_t:s0:c1,c2\tsystem_u:object_r:svirt_image_t:s0:c3,c4\tfile\tread"
        );
        assert_eq!(lines[1].rsplit('\t').next(), Some("open"));
        assert!(lines[2].contains("user_home_t:s0\tfile\twrite"));
        assert!(lines[4].contains("virt_content_t:s0\tfile\twrite"));
        assert_eq!(
            lines[6],
            "system_u:system_r:svirt_t:s0:c1,c2\tsystem_u:system_r:svirt_t:s0:c3,c4\tprocess\tsignal"
        );
        assert_eq!(lines.len(), 7);
        let no_label = Attack::parse("results A /r\nop A x read /img/unknown\n").unwrap();
        assert!(queries(&plan, &no_label, &labels).is_err());
    }

    #[test]
    fn first_denied_permission_decides() {
        let (plan, attack, labels) = inputs();
        let q = queries(&plan, &attack, &labels).unwrap();
        let answers: Vec<String> = [
            "deny\tconstraint failed for read: (h1 dom h2)",
            "deny\tconstraint failed for open: (h1 dom h2)",
            "deny\tno TE rule for write",
            "allow",
            "deny\tno TE rule for write; not logged (dontaudit)",
            "allow",
            "deny\tconstraint failed for signal: (x)",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let e = expectations(&q, &answers).unwrap();
        let k = |o: &str| ("A".to_string(), o.to_string());
        assert_eq!(e[&k("other.read")].perm.as_deref(), Some("read"));
        assert!(e[&k("other.read")].audited);
        assert_eq!(e[&k("home.write")].decision, Decision::Deny);
        assert!(!e[&k("content.write")].audited);
        assert_eq!(e[&k("peer.signal")].class, "process");
        assert_eq!(parse_expected(&render_expected(&e)).unwrap(), e);

        // Allowed first permission, denied second: the second is the one logged.
        let mut a2 = answers.clone();
        a2[0] = "allow".into();
        let e2 = expectations(&q, &a2).unwrap();
        assert_eq!(e2[&k("other.read")].perm.as_deref(), Some("open"));

        let mut bad = answers.clone();
        bad[3] = "unknown\ttype user_home_t is unknown to the model".into();
        assert!(expectations(&q, &bad).is_err(), "no guessing");
        assert!(
            expectations(&q, &answers[1..]).is_err(),
            "answers must align"
        );
    }
}
