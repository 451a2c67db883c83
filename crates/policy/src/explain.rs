//! Plain-words explanations of a decision, with the fix when the model can verify one.

use std::fmt;

use svirt_labels::{Context, Identifier, MlsRange};

use crate::decide::{Decision, Reason, decide};
use crate::generated;
use crate::model::{self, Booleans, Field};
use crate::table::{CTok, ConstraintDef};

/// A decision with its explanation in plain words.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Explanation {
    /// The decision itself.
    pub decision: Decision,
    /// One line: the verdict and the request.
    pub summary: String,
    /// Why, one plain sentence per reason.
    pub details: Vec<String>,
    /// What would make the request pass, when the model can verify such a change.
    pub fix: Option<String>,
}

impl fmt::Display for Explanation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "{}", self.summary)?;
        for d in &self.details {
            writeln!(f, "  why: {d}")?;
        }
        if let Some(fix) = &self.fix {
            writeln!(f, "  fix: {fix}")?;
        }
        Ok(())
    }
}

fn request_words(s: &Context, t: &Context, class: &str, perms: &[String]) -> String {
    format!(
        "{} {{ {} }} on {} {} ({} -> {})",
        s.type_,
        perms.join(" "),
        t.type_,
        class,
        s,
        t
    )
}

fn level_text(r: &Option<MlsRange>, high: bool) -> String {
    match r {
        Some(r) if high => r.high.to_string(),
        Some(r) => r.low.to_string(),
        None => "(none)".to_owned(),
    }
}

/// Describes each comparison of a false constraint with the actual values.
fn constraint_words(k: &ConstraintDef, s: &Context, t: &Context) -> Vec<String> {
    let Ok((rs, rt, _)) = model::resolve_query(s, t, k.class) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for tok in k.expr {
        let Some(v) = model::leaf(tok, &rs, &rt) else {
            continue;
        };
        let text = match *tok {
            CTok::Cmp(a, op, b) => {
                let show = |o| match model::field(o, &rs, &rt) {
                    Field::Name(n, _) => n.to_owned(),
                    Field::Level(l) => l.to_string(),
                };
                format!(
                    "{} {} {} is {v} ({} {} {})",
                    a.as_str(),
                    op.as_str(),
                    b.as_str(),
                    show(a),
                    op.as_str(),
                    show(b)
                )
            }
            CTok::Names(a, op, names) => {
                let who = match model::field(a, &rs, &rt) {
                    Field::Name(n, _) => n.to_owned(),
                    Field::Level(l) => l.to_string(),
                };
                format!(
                    "{} {} {} is {v} ({who})",
                    a.as_str(),
                    op.as_str(),
                    names.join(" ")
                )
            }
            _ => continue,
        };
        out.push(text);
    }
    out
}

/// Explains an access request: [`decide`] plus plain words and a verified fix.
pub fn explain<S: AsRef<str>>(
    scontext: &Context,
    tcontext: &Context,
    class: &str,
    perms: &[S],
    booleans: &Booleans,
) -> Explanation {
    let perms: Vec<String> = perms.iter().map(|p| p.as_ref().to_owned()).collect();
    let decision = decide(scontext, tcontext, class, &perms, booleans);
    let req = request_words(scontext, tcontext, class, &perms);
    let mut details = Vec::new();
    let mut fix = None;
    let summary = match &decision {
        Decision::Allow => format!("allow: {req}"),
        Decision::UnknownToModel { what } => {
            details.push(format!(
                "{what} is unknown to the model: no verdict rather than a guess"
            ));
            format!("unknown: {req}")
        }
        Decision::Deny(d) => {
            let mut bool_fixes = Vec::new();
            for r in &d.reasons {
                match r {
                    Reason::NoTeRule { perms } => details.push(format!(
                        "no type-enforcement rule lets {} {} {} objects of type {}{}",
                        scontext.type_,
                        perms.join("/"),
                        class,
                        tcontext.type_,
                        if booleans.overrides().next().is_some() {
                            " under the booleans given"
                        } else {
                            " (booleans at their defaults)"
                        }
                    )),
                    Reason::ConstraintFailed {
                        expression,
                        mls,
                        perms,
                    } => {
                        let k = generated::CONSTRAINTS
                            .iter()
                            .find(|k| k.class == class && k.text == expression);
                        let high_dominates = match (scontext.range, tcontext.range) {
                            (Some(a), Some(b)) => a.high.dominates(&b.high),
                            _ => false,
                        };
                        let mut line = if *mls
                            && expression.contains("h1 dom h2")
                            && !high_dominates
                        {
                            format!(
                                "MCS isolation: {} is an MCS-constrained type, so it may {} only objects its level dominates; {} does not dominate {}",
                                scontext.type_,
                                perms.join("/"),
                                level_text(&scontext.range, true),
                                level_text(&tcontext.range, true)
                            )
                        } else if *mls && expression.contains("l2 == h2") {
                            format!(
                                "MCS: {} is an MCS-constrained type, so it may {} only single-level objects its level dominates; the object's range is {}-{}",
                                scontext.type_,
                                perms.join("/"),
                                level_text(&tcontext.range, false),
                                level_text(&tcontext.range, true)
                            )
                        } else if *mls {
                            format!("the MCS constraint on {} is false", perms.join("/"))
                        } else {
                            format!("the user/role constraint on {} is false", perms.join("/"))
                        };
                        line.push_str(&format!(": `{expression}`"));
                        if let Some(k) = k {
                            let leaves = constraint_words(k, scontext, tcontext);
                            if !leaves.is_empty() {
                                line.push_str(&format!(" [{}]", leaves.join("; ")));
                            }
                        }
                        details.push(line);
                    }
                    Reason::RoleChangeNotAllowed { from, to, perms } => details.push(format!(
                        "{} changes role {from} -> {to} and the policy has no `allow {from} {to};`",
                        perms.join("/")
                    )),
                    Reason::BooleanWouldAllow { name, value } => {
                        bool_fixes.push(format!("{name}={}", if *value { "on" } else { "off" }))
                    }
                }
            }
            if !d.audited() {
                details.push(format!(
                    "a dontaudit rule silences {}: the kernel logs no avc line for this denial",
                    d.silenced.join("/")
                ));
            }
            if let Some(first) = bool_fixes.first() {
                let mut f = format!(
                    "{first} would allow it (setsebool -P {})",
                    first.replace('=', " ")
                );
                if bool_fixes.len() > 1 {
                    f.push_str(&format!("; so would {}", bool_fixes[1..].join(", ")));
                }
                fix = Some(f);
            } else {
                fix = relabel_fix(scontext, tcontext, class, &perms, booleans, d);
            }
            format!("deny: {req}")
        }
    };
    Explanation {
        decision,
        summary,
        details,
        fix,
    }
}

/// Object labels svirt itself hands out, tried as fixes (each verified by the model).
fn relabel_fix(
    s: &Context,
    t: &Context,
    class: &str,
    perms: &[String],
    booleans: &Booleans,
    d: &crate::decide::Denial,
) -> Option<String> {
    if matches!(class, "process" | "unix_stream_socket") {
        // Process and socket labels follow the process; relabeling is not the fix.
        return None;
    }
    let mcs_only = d
        .reasons
        .iter()
        .all(|r| matches!(r, Reason::ConstraintFailed { mls: true, .. }));
    let level = s.range.map(|r| MlsRange::single(r.low));
    let candidates: [(&str, Option<MlsRange>, &str); 3] = [
        (
            t.type_.as_str(),
            level,
            "if the object belongs to this subject, give it the subject's level",
        ),
        (
            "svirt_image_t",
            level,
            "label it svirt_image_t at the guest's level (what svirt does for a private resource)",
        ),
        (
            "virt_content_t",
            Some(MlsRange::default()),
            "label it virt_content_t:s0 (read-only content, as for a <readonly/> disk)",
        ),
    ];
    for (i, (ty, range, words)) in candidates.into_iter().enumerate() {
        if i == 0 && !mcs_only {
            continue;
        }
        let (Ok(ty), Some(range)) = (Identifier::new(ty), range) else {
            continue;
        };
        let candidate = Context {
            user: t.user.clone(),
            role: t.role.clone(),
            type_: ty,
            range: Some(range),
        };
        if candidate == *t {
            continue;
        }
        if decide(s, &candidate, class, perms, booleans).is_allowed() {
            return Some(format!("{words}: {candidate}"));
        }
    }
    None
}
