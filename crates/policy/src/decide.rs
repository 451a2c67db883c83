//! `decide`: one access request, the verdict and the reasons for a denial.

use std::fmt;

use svirt_labels::Context;

use crate::generated;
use crate::model::{self, Booleans, Outcome, UnknownToModel};
use crate::table::ConstraintDef;

/// Why (part of) a request is denied, in the kernel's order of checks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reason {
    /// No type-enforcement allow rule grants these permissions (under the booleans given).
    NoTeRule {
        /// The permissions TE does not grant.
        perms: Vec<String>,
    },
    /// TE grants these permissions but a constraint is false for the two contexts.
    ConstraintFailed {
        /// The constraint expression, in policy-language form.
        expression: String,
        /// `mlsconstrain` (the MCS isolation) rather than `constrain` (UBAC/RBAC).
        mls: bool,
        /// The requested permissions this constraint denies.
        perms: Vec<String>,
    },
    /// A process transition changes role and no `allow ROLE NEW_ROLE` rule permits it.
    RoleChangeNotAllowed {
        /// The source role.
        from: String,
        /// The target role.
        to: String,
        /// The permissions denied (transition, dyntransition).
        perms: Vec<String>,
    },
    /// Setting this boolean would allow the whole request (a fix, listed after the facts).
    BooleanWouldAllow {
        /// The boolean.
        name: String,
        /// The value that allows it.
        value: bool,
    },
}

/// A denial: the reasons and whether the kernel would log it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Denial {
    /// Every requested permission that is denied.
    pub denied: Vec<String>,
    /// The reasons, facts first (TE, constraints, role check), then boolean fixes.
    pub reasons: Vec<Reason>,
    /// Denied permissions a `dontaudit` rule silences (no avc line is logged for them).
    pub silenced: Vec<String>,
}

impl Denial {
    /// Whether the kernel logs an `avc: denied` line for this request.
    pub fn audited(&self) -> bool {
        self.denied.iter().any(|p| !self.silenced.contains(p))
    }

    /// The boolean fixes, if any.
    pub fn boolean_fixes(&self) -> impl Iterator<Item = (&str, bool)> + '_ {
        self.reasons.iter().filter_map(|r| match r {
            Reason::BooleanWouldAllow { name, value } => Some((name.as_str(), *value)),
            _ => None,
        })
    }
}

/// The model's answer to an access request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Every requested permission is granted.
    Allow,
    /// At least one requested permission is denied.
    Deny(Denial),
    /// The request involves a type, class, permission, user, role or level the model does
    /// not cover: no verdict rather than a guess.
    UnknownToModel {
        /// What is not covered.
        what: String,
    },
}

impl Decision {
    /// Whether the request is allowed.
    pub fn is_allowed(&self) -> bool {
        matches!(self, Decision::Allow)
    }

    /// Whether the request is denied.
    pub fn is_denied(&self) -> bool {
        matches!(self, Decision::Deny(_))
    }

    /// The one-line reason used by `svirt explain --batch` (empty for `Allow`).
    pub fn reason_line(&self) -> String {
        match self {
            Decision::Allow => String::new(),
            Decision::UnknownToModel { what } => format!("{what} is unknown to the model"),
            Decision::Deny(d) => {
                let mut parts: Vec<String> = Vec::new();
                for r in &d.reasons {
                    parts.push(match r {
                        Reason::NoTeRule { perms } => format!("no TE rule for {}", perms.join(",")),
                        Reason::ConstraintFailed {
                            expression, perms, ..
                        } => format!("constraint failed for {}: {expression}", perms.join(",")),
                        Reason::RoleChangeNotAllowed { from, to, perms } => {
                            format!("no role allow {from} -> {to} for {}", perms.join(","))
                        }
                        Reason::BooleanWouldAllow { name, value } => {
                            format!(
                                "{name}={} would allow it",
                                if *value { "on" } else { "off" }
                            )
                        }
                    });
                }
                if !d.audited() {
                    parts.push("not logged (dontaudit)".to_owned());
                }
                parts.join("; ")
            }
        }
    }
}

impl fmt::Display for Decision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Decision::Allow => f.write_str("allow"),
            Decision::Deny(_) => write!(f, "deny: {}", self.reason_line()),
            Decision::UnknownToModel { .. } => write!(f, "unknown: {}", self.reason_line()),
        }
    }
}

/// Decides an access request as the kernel would under `booleans`: TE (with the enabled
/// conditional rules), then the constraints on what TE allowed, then the role check.
///
/// The contexts must be ones the policy accepts (the kernel never evaluates others); a
/// type, user, role, class, permission or sensitivity the model does not cover gives
/// [`Decision::UnknownToModel`]. An empty permission list is allowed, as in the kernel.
pub fn decide<S: AsRef<str>>(
    scontext: &Context,
    tcontext: &Context,
    class: &str,
    perms: &[S],
    booleans: &Booleans,
) -> Decision {
    match decide_inner(scontext, tcontext, class, perms, booleans, true) {
        Ok(d) => d,
        Err(u) => Decision::UnknownToModel { what: u.what },
    }
}

fn decide_inner<S: AsRef<str>>(
    scontext: &Context,
    tcontext: &Context,
    class: &str,
    perms: &[S],
    booleans: &Booleans,
    look_for_fixes: bool,
) -> Result<Decision, UnknownToModel> {
    let (s, t, c) = model::resolve_query(scontext, tcontext, class)?;
    for p in perms {
        if !c.perms.contains(&p.as_ref()) {
            return Err(UnknownToModel {
                what: format!("permission {} of class {}", p.as_ref(), c.name),
            });
        }
    }
    let av = model::compute(&s, &t, c, booleans)?;
    let mut no_te: Vec<String> = Vec::new();
    let mut by_constraint: Vec<(&'static ConstraintDef, Vec<String>)> = Vec::new();
    let mut role: Vec<String> = Vec::new();
    let mut denied: Vec<String> = Vec::new();
    let mut silenced: Vec<String> = Vec::new();
    let mut seen: Vec<&str> = Vec::new();
    for p in perms {
        let p = p.as_ref();
        if seen.contains(&p) {
            continue;
        }
        seen.push(p);
        let Some(v) = av.verdict(p) else { continue };
        match v.outcome {
            Outcome::Allowed => continue,
            Outcome::NoTeRule => no_te.push(p.to_owned()),
            Outcome::Constraint(_) => {
                // Report every false constraint that covers the permission.
                for k2 in generated::CONSTRAINTS.iter().filter(|k2| {
                    k2.class == c.name
                        && k2.perms.contains(&p)
                        && model::constraint_holds(k2, &s, &t) == Some(false)
                }) {
                    match by_constraint
                        .iter_mut()
                        .find(|(k3, _)| std::ptr::eq(*k3, k2))
                    {
                        Some((_, ps)) => ps.push(p.to_owned()),
                        None => by_constraint.push((k2, vec![p.to_owned()])),
                    }
                }
            }
            Outcome::RoleChange => role.push(p.to_owned()),
        }
        denied.push(p.to_owned());
        if !v.audited {
            silenced.push(p.to_owned());
        }
    }
    if denied.is_empty() {
        return Ok(Decision::Allow);
    }
    let mut reasons = Vec::new();
    if !no_te.is_empty() {
        reasons.push(Reason::NoTeRule { perms: no_te });
    }
    for (k, ps) in by_constraint {
        reasons.push(Reason::ConstraintFailed {
            expression: k.text.to_owned(),
            mls: k.mls,
            perms: ps,
        });
    }
    if !role.is_empty() {
        reasons.push(Reason::RoleChangeNotAllowed {
            from: scontext.role.to_string(),
            to: tcontext.role.to_string(),
            perms: role,
        });
    }
    if look_for_fixes {
        // The virt booleans are the intended switches; others (use_nfs_home_dirs) come after.
        let ordered = generated::BOOLEANS
            .iter()
            .filter(|b| b.name.starts_with("virt_"))
            .chain(
                generated::BOOLEANS
                    .iter()
                    .filter(|b| !b.name.starts_with("virt_")),
            );
        for b in ordered {
            let value = !booleans.get(b.name);
            let Ok(flipped) = booleans.with(b.name, value) else {
                continue;
            };
            if let Ok(Decision::Allow) =
                decide_inner(scontext, tcontext, class, perms, &flipped, false)
            {
                reasons.push(Reason::BooleanWouldAllow {
                    name: b.name.to_owned(),
                    value,
                });
            }
        }
    }
    Ok(Decision::Deny(Denial {
        denied,
        reasons,
        silenced,
    }))
}
