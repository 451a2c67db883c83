//! The shapes of the policy table in [`crate::generated`].
//!
//! The table is data, generated from the binary policy by `crates/policy/tools/gen_table.py`;
//! these types mirror what the kernel's policy database holds for it: type attributes, access
//! vector rules (conditional ones with their boolean expression in postfix form, as the
//! kernel stores it) and constraints (postfix expressions, as the kernel stores them).

/// A modelled type and the attributes, among those the rules and constraints use, it has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TypeDef {
    /// The type name, e.g. `svirt_t`.
    pub name: &'static str,
    /// Attributes of the type that some modelled rule or constraint names.
    pub attributes: &'static [&'static str],
}

impl TypeDef {
    /// Whether a rule or constraint naming `name` (a type or an attribute) covers this type.
    pub fn matches(&self, name: &str) -> bool {
        self.name == name || self.attributes.contains(&name)
    }
}

/// An object class and every permission it defines (its own and its common's).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClassDef {
    /// The class name, e.g. `file`.
    pub name: &'static str,
    /// All permission names of the class, sorted.
    pub perms: &'static [&'static str],
}

/// A policy boolean the modelled rules depend on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BoolDef {
    /// The boolean's name, e.g. `virt_use_nfs`.
    pub name: &'static str,
    /// Its value in the policy as shipped.
    pub default: bool,
}

/// Which kind of access vector rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RuleKind {
    /// `allow`: grants the permissions.
    Allow,
    /// `dontaudit`: a denial of these permissions is not logged.
    DontAudit,
}

/// One type-enforcement rule as the policy states it (source and target may be attributes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TeRule {
    /// allow or dontaudit.
    pub kind: RuleKind,
    /// Source type or attribute.
    pub source: &'static str,
    /// Target type or attribute.
    pub target: &'static str,
    /// Object class.
    pub class: &'static str,
    /// Permissions.
    pub perms: &'static [&'static str],
    /// The boolean condition, for rules inside an `if` block.
    pub cond: Option<Cond>,
}

/// The condition of a conditional rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cond {
    /// The expression as `sesearch` prints it.
    pub text: &'static str,
    /// The expression in postfix form.
    pub expr: &'static [CondTok],
    /// The rule is enabled when the expression has this value (`true` block or `else` block).
    pub when: bool,
}

/// A token of a postfix boolean expression.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CondTok {
    /// Push a boolean's current value.
    Bool(&'static str),
    /// `!`
    Not,
    /// `&&`
    And,
    /// `||`
    Or,
    /// `^`
    Xor,
    /// `==`
    Eq,
    /// `!=`
    Neq,
}

/// A `constrain` or `mlsconstrain` statement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConstraintDef {
    /// `mlsconstrain` (MCS/MLS) rather than `constrain` (UBAC, RBAC).
    pub mls: bool,
    /// The class it applies to.
    pub class: &'static str,
    /// The permissions it restricts.
    pub perms: &'static [&'static str],
    /// The expression in policy-language infix form.
    pub text: &'static str,
    /// The expression in postfix form.
    pub expr: &'static [CTok],
}

/// A token of a postfix constraint expression.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CTok {
    /// Compare two context fields, e.g. `h1 dom h2`, `u1 == u2`.
    Cmp(Operand, CmpOp, Operand),
    /// Compare a context field with a set of names, e.g. `t1 != mcs_constrained_type`.
    Names(Operand, CmpOp, &'static [&'static str]),
    /// `not`
    Not,
    /// `and`
    And,
    /// `or`
    Or,
}

/// A field of the subject (1) or target (2) context.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operand {
    /// Subject user.
    U1,
    /// Target user.
    U2,
    /// Subject role.
    R1,
    /// Target role.
    R2,
    /// Subject type.
    T1,
    /// Target type.
    T2,
    /// Subject low level.
    L1,
    /// Target low level.
    L2,
    /// Subject high level.
    H1,
    /// Target high level.
    H2,
}

impl Operand {
    /// The name the policy language uses (`h1`, `t2`, …).
    pub fn as_str(self) -> &'static str {
        match self {
            Operand::U1 => "u1",
            Operand::U2 => "u2",
            Operand::R1 => "r1",
            Operand::R2 => "r2",
            Operand::T1 => "t1",
            Operand::T2 => "t2",
            Operand::L1 => "l1",
            Operand::L2 => "l2",
            Operand::H1 => "h1",
            Operand::H2 => "h2",
        }
    }
}

/// A constraint comparison operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CmpOp {
    /// `==`
    Eq,
    /// `!=`
    Neq,
    /// `dom`
    Dom,
    /// `domby`
    Domby,
    /// `incomp`
    Incomp,
}

impl CmpOp {
    /// The policy-language spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            CmpOp::Eq => "==",
            CmpOp::Neq => "!=",
            CmpOp::Dom => "dom",
            CmpOp::Domby => "domby",
            CmpOp::Incomp => "incomp",
        }
    }
}
