//! Evaluation of the policy table, in the kernel's order (`context_struct_compute_av`):
//! type enforcement (unconditional rules and the conditional rules enabled by the current
//! booleans), then the constraints on what TE allowed, then the role check for process
//! transitions. Type bounds and permissive types do not exist in this policy.

use std::collections::BTreeMap;
use std::fmt;

use svirt_labels::{Context, Level};

use crate::error::PolicyError;
use crate::generated;
use crate::table::{
    BoolDef, CTok, ClassDef, CmpOp, CondTok, ConstraintDef, Operand, RuleKind, TeRule, TypeDef,
};

/// Boolean settings: the policy defaults plus explicit overrides.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Booleans {
    overrides: BTreeMap<String, bool>,
}

impl Booleans {
    /// Every boolean at its policy default (all virt booleans are off).
    pub fn defaults() -> Self {
        Self::default()
    }

    /// Sets a boolean; errors when the policy has no boolean of that name. Booleans that
    /// no modelled rule depends on are accepted and change nothing.
    pub fn set(&mut self, name: &str, value: bool) -> Result<(), PolicyError> {
        if !generated::ALL_BOOLEANS.contains(&name) {
            return Err(PolicyError::UnknownBoolean(name.to_owned()));
        }
        self.overrides.insert(name.to_owned(), value);
        Ok(())
    }

    /// The same settings with one boolean changed (the name must be a policy boolean).
    pub fn with(&self, name: &str, value: bool) -> Result<Self, PolicyError> {
        let mut b = self.clone();
        b.set(name, value)?;
        Ok(b)
    }

    /// Sets one `name=on|off|1|0|true|false` item.
    pub fn set_from_str(&mut self, item: &str) -> Result<(), PolicyError> {
        let (name, value) = item
            .split_once('=')
            .ok_or_else(|| PolicyError::BadBooleanSetting(item.to_owned()))?;
        let value = match value.trim() {
            "on" | "1" | "true" => true,
            "off" | "0" | "false" => false,
            _ => return Err(PolicyError::BadBooleanSetting(item.to_owned())),
        };
        self.set(name.trim(), value)
    }

    /// Parses `name=on,other=off` (empty text: the defaults).
    pub fn parse_list(text: &str) -> Result<Self, PolicyError> {
        let mut b = Self::default();
        for item in text.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            b.set_from_str(item)?;
        }
        Ok(b)
    }

    /// The current value of a boolean (its default unless overridden; `false` for a name
    /// the model does not know).
    pub fn get(&self, name: &str) -> bool {
        match self.overrides.get(name) {
            Some(v) => *v,
            None => generated::BOOLEANS
                .iter()
                .find(|b| b.name == name)
                .is_some_and(|b| b.default),
        }
    }

    /// The explicit overrides, sorted by name.
    pub fn overrides(&self) -> impl Iterator<Item = (&str, bool)> + '_ {
        self.overrides.iter().map(|(k, v)| (k.as_str(), *v))
    }
}

/// Why the model cannot answer: something outside what it covers. Never a guess.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnknownToModel {
    /// What is not covered, in words (e.g. "type svirt_custom_t").
    pub what: String,
}

impl fmt::Display for UnknownToModel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} is unknown to the model", self.what)
    }
}

fn unknown(what: String) -> UnknownToModel {
    UnknownToModel { what }
}

/// The policy defines one sensitivity and 1024 categories (MCS).
const SENSITIVITIES: u16 = 1;

/// A context resolved against the table.
#[derive(Debug, Clone)]
pub(crate) struct Resolved<'a> {
    pub(crate) ctx: &'a Context,
    pub(crate) ty: &'static TypeDef,
    pub(crate) low: Level,
    pub(crate) high: Level,
}

fn resolve<'a>(ctx: &'a Context, side: &str) -> Result<Resolved<'a>, UnknownToModel> {
    let user = ctx.user.as_str();
    if !generated::USERS.contains(&user) {
        return Err(unknown(format!("SELinux user {user} ({side})")));
    }
    let role = ctx.role.as_str();
    if !generated::ROLES.contains(&role) {
        return Err(unknown(format!("role {role} ({side})")));
    }
    let tname = ctx.type_.as_str();
    let ty = generated::TYPES
        .iter()
        .find(|t| t.name == tname)
        .ok_or_else(|| {
            unknown(format!(
                "type {tname} ({side}; the model covers {} types from {})",
                generated::TYPES.len(),
                generated::SOURCE
            ))
        })?;
    let range = ctx.range.ok_or_else(|| {
        unknown(format!(
            "{side} context {ctx} without an MCS level (the policy is MLS-enabled)"
        ))
    })?;
    for l in [range.low, range.high] {
        if l.sensitivity >= SENSITIVITIES {
            return Err(unknown(format!(
                "sensitivity s{} ({side}; the policy defines only s0)",
                l.sensitivity
            )));
        }
    }
    Ok(Resolved {
        ctx,
        ty,
        low: range.low,
        high: range.high,
    })
}

/// Looks a class up in the model.
pub fn class(name: &str) -> Option<&'static ClassDef> {
    generated::CLASSES.iter().find(|c| c.name == name)
}

/// What happened to one permission.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Granted.
    Allowed,
    /// No type-enforcement allow rule grants it (under the current booleans).
    NoTeRule,
    /// TE allows it but this constraint is false for the two contexts.
    Constraint(&'static ConstraintDef),
    /// A process transition changing role without an `allow ROLE NEW_ROLE` rule.
    RoleChange,
}

/// The verdict for one permission.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PermVerdict {
    /// The permission.
    pub perm: &'static str,
    /// Allowed, or which check denied it first.
    pub outcome: Outcome,
    /// For a denial: whether the kernel logs it (`false` when a dontaudit rule silences it).
    pub audited: bool,
}

/// Every permission's verdict for one (scontext, tcontext, class) under some booleans:
/// what the kernel's access vector computation yields.
#[derive(Debug, Clone)]
pub struct AccessVector {
    /// The class.
    pub class: &'static ClassDef,
    /// One verdict per permission of the class, in the class's (sorted) order.
    pub verdicts: Vec<PermVerdict>,
}

impl AccessVector {
    /// The verdict for a permission, if the class has it.
    pub fn verdict(&self, perm: &str) -> Option<PermVerdict> {
        self.verdicts.iter().find(|v| v.perm == perm).copied()
    }
}

fn cond_enabled(expr: &[CondTok], when: bool, booleans: &Booleans) -> bool {
    // Postfix evaluation as in the kernel's cond_evaluate_expr; a malformed expression
    // (impossible for generated data) disables the rule, as the kernel does.
    let mut stack: Vec<bool> = Vec::with_capacity(4);
    for tok in expr {
        let v = match *tok {
            CondTok::Bool(name) => booleans.get(name),
            CondTok::Not => match stack.pop() {
                Some(a) => !a,
                None => return false,
            },
            op => {
                let (Some(b), Some(a)) = (stack.pop(), stack.pop()) else {
                    return false;
                };
                match op {
                    CondTok::And => a && b,
                    CondTok::Or => a || b,
                    CondTok::Xor => a ^ b,
                    CondTok::Eq => a == b,
                    _ => a != b,
                }
            }
        };
        stack.push(v);
    }
    match stack.as_slice() {
        [v] => *v == when,
        _ => false,
    }
}

fn rule_enabled(rule: &TeRule, booleans: &Booleans) -> bool {
    match &rule.cond {
        None => true,
        Some(c) => cond_enabled(c.expr, c.when, booleans),
    }
}

/// The TE rules that apply to a (source type, target type, class) under some booleans.
pub(crate) fn matching_rules<'b>(
    s: &'static TypeDef,
    t: &'static TypeDef,
    class: &'b str,
    booleans: &'b Booleans,
) -> impl Iterator<Item = &'static TeRule> + 'b {
    generated::RULES.iter().filter(move |r| {
        r.class == class && s.matches(r.source) && t.matches(r.target) && rule_enabled(r, booleans)
    })
}

fn level_of(r: &Resolved<'_>, hi: bool) -> Level {
    if hi { r.high } else { r.low }
}

fn level_cmp(a: &Level, op: CmpOp, b: &Level) -> bool {
    match op {
        CmpOp::Eq => a == b,
        CmpOp::Neq => a != b,
        CmpOp::Dom => a.dominates(b),
        CmpOp::Domby => b.dominates(a),
        CmpOp::Incomp => !a.dominates(b) && !b.dominates(a),
    }
}

/// The value of one side of a comparison: a name (user, role, type) or a level.
pub(crate) enum Field<'a> {
    Name(&'a str, Option<&'static TypeDef>),
    Level(Level),
}

pub(crate) fn field<'a>(op: Operand, s: &'a Resolved<'_>, t: &'a Resolved<'_>) -> Field<'a> {
    match op {
        Operand::U1 => Field::Name(s.ctx.user.as_str(), None),
        Operand::U2 => Field::Name(t.ctx.user.as_str(), None),
        Operand::R1 => Field::Name(s.ctx.role.as_str(), None),
        Operand::R2 => Field::Name(t.ctx.role.as_str(), None),
        Operand::T1 => Field::Name(s.ty.name, Some(s.ty)),
        Operand::T2 => Field::Name(t.ty.name, Some(t.ty)),
        Operand::L1 => Field::Level(level_of(s, false)),
        Operand::H1 => Field::Level(level_of(s, true)),
        Operand::L2 => Field::Level(level_of(t, false)),
        Operand::H2 => Field::Level(level_of(t, true)),
    }
}

/// Evaluates one leaf of a constraint expression.
pub(crate) fn leaf(tok: &CTok, s: &Resolved<'_>, t: &Resolved<'_>) -> Option<bool> {
    match *tok {
        CTok::Cmp(a, op, b) => match (field(a, s, t), field(b, s, t)) {
            (Field::Level(x), Field::Level(y)) => Some(level_cmp(&x, op, &y)),
            (Field::Name(x, _), Field::Name(y, _)) => match op {
                CmpOp::Eq => Some(x == y),
                CmpOp::Neq => Some(x != y),
                // Role dominance is not used by this policy; refuse rather than guess.
                _ => None,
            },
            _ => None,
        },
        CTok::Names(a, op, names) => {
            let Field::Name(x, ty) = field(a, s, t) else {
                return None;
            };
            let member = match ty {
                Some(ty) => names.iter().any(|n| ty.matches(n)),
                None => names.contains(&x),
            };
            match op {
                CmpOp::Eq => Some(member),
                CmpOp::Neq => Some(!member),
                _ => None,
            }
        }
        CTok::Not | CTok::And | CTok::Or => None,
    }
}

/// Evaluates a constraint; `None` if the expression uses something the model cannot
/// evaluate (never the case for the generated table; checked by a unit test).
pub(crate) fn constraint_holds(
    c: &ConstraintDef,
    s: &Resolved<'_>,
    t: &Resolved<'_>,
) -> Option<bool> {
    let mut stack: Vec<bool> = Vec::with_capacity(8);
    for tok in c.expr {
        let v = match tok {
            CTok::Not => !stack.pop()?,
            CTok::And => {
                let b = stack.pop()?;
                let a = stack.pop()?;
                a && b
            }
            CTok::Or => {
                let b = stack.pop()?;
                let a = stack.pop()?;
                a || b
            }
            leaf_tok => leaf(leaf_tok, s, t)?,
        };
        stack.push(v);
    }
    match stack.as_slice() {
        [v] => Some(*v),
        _ => None,
    }
}

/// Resolves both contexts and the class, or says what the model does not cover.
pub(crate) fn resolve_query<'a>(
    scontext: &'a Context,
    tcontext: &'a Context,
    class_name: &str,
) -> Result<(Resolved<'a>, Resolved<'a>, &'static ClassDef), UnknownToModel> {
    let s = resolve(scontext, "source")?;
    if !generated::SUBJECT_TYPES.contains(&s.ty.name) {
        return Err(unknown(format!(
            "{} as a subject (the model covers {} as subjects)",
            s.ty.name,
            generated::SUBJECT_TYPES.join(", ")
        )));
    }
    let t = resolve(tcontext, "target")?;
    let c = class(class_name).ok_or_else(|| {
        unknown(format!(
            "class {class_name} (the model covers {})",
            generated::CLASSES
                .iter()
                .map(|c| c.name)
                .collect::<Vec<_>>()
                .join(", ")
        ))
    })?;
    Ok((s, t, c))
}

/// The kernel's access vector computation for one (scontext, tcontext, class).
pub fn access_vector(
    scontext: &Context,
    tcontext: &Context,
    class_name: &str,
    booleans: &Booleans,
) -> Result<AccessVector, UnknownToModel> {
    let (s, t, c) = resolve_query(scontext, tcontext, class_name)?;
    compute(&s, &t, c, booleans)
}

pub(crate) fn compute(
    s: &Resolved<'_>,
    t: &Resolved<'_>,
    c: &'static ClassDef,
    booleans: &Booleans,
) -> Result<AccessVector, UnknownToModel> {
    let mut allowed: Vec<&str> = Vec::new();
    let mut silenced: Vec<&str> = Vec::new();
    for r in matching_rules(s.ty, t.ty, c.name, booleans) {
        match r.kind {
            RuleKind::Allow => allowed.extend_from_slice(r.perms),
            RuleKind::DontAudit => silenced.extend_from_slice(r.perms),
        }
    }
    // Which constraints are false: the kernel removes each false constraint's permissions
    // from what TE allowed; the result does not depend on the order.
    let mut failed: Vec<&'static ConstraintDef> = Vec::new();
    for k in generated::CONSTRAINTS.iter().filter(|k| k.class == c.name) {
        match constraint_holds(k, s, t) {
            Some(true) => {}
            Some(false) => failed.push(k),
            None => return Err(unknown(format!("constraint expression {:?}", k.text))),
        }
    }
    let role_change_denied = c.name == "process"
        && s.ctx.role != t.ctx.role
        && !generated::ROLE_ALLOW
            .iter()
            .any(|(a, b)| *a == s.ctx.role.as_str() && *b == t.ctx.role.as_str());
    let verdicts = c
        .perms
        .iter()
        .map(|&perm| {
            let outcome = if !allowed.contains(&perm) {
                Outcome::NoTeRule
            } else if let Some(k) = failed.iter().find(|k| k.perms.contains(&perm)) {
                Outcome::Constraint(k)
            } else if role_change_denied && matches!(perm, "transition" | "dyntransition") {
                Outcome::RoleChange
            } else {
                Outcome::Allowed
            };
            PermVerdict {
                perm,
                outcome,
                audited: outcome != Outcome::Allowed && !silenced.contains(&perm),
            }
        })
        .collect();
    Ok(AccessVector { class: c, verdicts })
}

/// The booleans the modelled rules depend on, with their defaults.
pub fn modelled_booleans() -> &'static [BoolDef] {
    generated::BOOLEANS
}
