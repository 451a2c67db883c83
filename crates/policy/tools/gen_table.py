#!/usr/bin/python3
"""Generate crates/policy/src/generated.rs from a binary SELinux policy.

The table is the part of the policy that decides what virtual machines may do: every
type-enforcement allow and dontaudit rule (conditional ones with their boolean
expression) whose source is one of SUBJECTS and whose target matches one of TARGETS,
for the CLASSES below; every constraint (UBAC, RBAC and MCS) on those classes; the
attribute memberships those rules and constraints use; the booleans they depend on
with their defaults; the users, roles and role-allow rules.

Rules are kept as the policy states them (attributes, not expanded), so the table reads
like `sesearch` output. Run with the system python (python3-setools):

    /usr/bin/python3 crates/policy/tools/gen_table.py \
        [/etc/selinux/default/policy/policy.33] > crates/policy/src/generated.rs
    cargo fmt -p svirt-policy
"""
import hashlib
import subprocess
import sys

import setools

SUBJECTS = ["svirt_t", "qemu_t", "svirt_prot_exec_t", "virtd_t"]
OBJECTS = [
    # images and content
    "svirt_image_t", "virt_image_t", "virt_content_t", "qemu_image_t",
    "svirt_prot_exec_image_t", "xen_image_t",
    # per-guest transient objects
    "svirt_tmpfs_t", "svirt_tmp_t", "svirt_devpts_t", "svirt_home_t", "svirt_runtime_t",
    # the manager's own files
    "virt_home_t", "virt_cache_t", "virt_var_lib_t", "virt_runtime_t", "virt_log_t",
    "virt_etc_t", "virt_etc_rw_t", "qemu_exec_t", "virtd_exec_t",
    # home directories, network and foreign file systems
    "user_home_t", "user_home_dir_t", "nfs_t", "cifs_t", "fusefs_t", "dosfs_t", "usbfs_t",
    "sysfs_t", "tmpfs_t", "tmp_t",
    # devices
    "kvm_device_t", "vhost_device_t", "tun_tap_device_t", "vfio_device_t", "usb_device_t",
    "event_device_t", "tty_device_t", "usbtty_device_t", "printer_device_t",
    "fixed_disk_device_t", "removable_device_t", "ptmx_t", "devpts_t", "null_device_t",
    # everything else a guest may meet
    "etc_t", "default_t", "unlabeled_t", "xdm_var_run_t",
    # peers over unix sockets (targets only)
    "xserver_t",
]
CLASSES = ["file", "dir", "lnk_file", "chr_file", "blk_file", "sock_file", "fifo_file",
           "process", "unix_stream_socket"]

CEXPR_OPERANDS = {"u1", "u2", "r1", "r2", "t1", "t2", "l1", "l2", "h1", "h2"}


def rs(s):
    return '"' + s + '"'


def rs_list(items):
    return "&[" + ", ".join(rs(i) for i in items) + "]"


def main():
    path = sys.argv[1] if len(sys.argv) > 1 else "/etc/selinux/default/policy/policy.33"
    p = setools.SELinuxPolicy(path)
    digest = hashlib.sha256(open(path, "rb").read()).hexdigest()
    try:
        pkg = subprocess.run(["dpkg-query", "-W", "-f", "${Version}", "selinux-policy-default"],
                             capture_output=True, text=True, check=True).stdout.strip()
    except Exception:  # noqa: BLE001 - provenance only
        pkg = "unknown"

    targets = SUBJECTS + [o for o in OBJECTS if o not in SUBJECTS]
    target_set = set(targets)
    for t in targets:
        p.lookup_type(t)  # fails loudly if the policy lacks a modelled type

    def members(name):
        """Modelled types a rule's type or attribute covers."""
        obj = p.lookup_type_or_attr(name)
        if isinstance(obj, setools.policyrep.TypeAttribute):
            return {str(t) for t in obj.expand()} & target_set
        return {str(obj)} & target_set

    used_attrs = set()
    rules = {}
    bools = set()
    for subj in SUBJECTS:
        for cls in CLASSES:
            q = setools.TERuleQuery(p, ruletype=["allow", "dontaudit"], source=subj,
                                    tclass=[cls])
            for r in q.results():
                if not members(str(r.target)):
                    continue
                cond = None
                try:
                    c = r.conditional
                    toks = []
                    for tok in c.expression():
                        if isinstance(tok, setools.policyrep.Boolean):
                            toks.append(("B", str(tok)))
                            bools.add(str(tok))
                        else:
                            toks.append(("O", str(tok)))
                    cond = (tuple(toks), bool(r.conditional_block), str(c))
                except setools.exception.RuleNotConditional:
                    pass
                key = (str(r.ruletype), str(r.source), str(r.target), cls, cond)
                rules.setdefault(key, set()).update(str(x) for x in r.perms)
                for end in (str(r.source), str(r.target)):
                    if isinstance(p.lookup_type_or_attr(end), setools.policyrep.TypeAttribute):
                        used_attrs.add(end)

    constraints = []
    for c in p.constraints():
        if str(c.tclass) not in CLASSES:
            continue
        toks = []
        for tok in c.expression:
            if isinstance(tok, frozenset):
                names = sorted(str(x) for x in tok)
                for n in names:
                    try:
                        if isinstance(p.lookup_type_or_attr(n), setools.policyrep.TypeAttribute):
                            used_attrs.add(n)
                    except Exception:  # noqa: BLE001 - users and roles are not types
                        pass
                toks.append(("N", names))
            else:
                toks.append(("S", str(tok)))
        constraints.append((str(c.ruletype), str(c.tclass), sorted(str(x) for x in c.perms),
                            toks))
    constraints.sort(key=lambda c: (CLASSES.index(c[1]), c[0], c[2]))

    out = []
    w = out.append
    w("//! The policy table: the virt rules of the real policy, as data (generated).")
    w("")
    w("// @generated by crates/policy/tools/gen_table.py -- do not edit by hand.")
    w(f"// Source: selinux-policy-default {pkg}, {path}")
    w(f"// sha256 {digest}")
    w("// Regenerate: /usr/bin/python3 crates/policy/tools/gen_table.py > crates/policy/src/generated.rs")
    w("//             && cargo fmt -p svirt-policy")
    w("")
    w("use crate::table::*;")
    w("")
    w("/// Where the table comes from.")
    w(f"pub const SOURCE: &str = {rs('selinux-policy-default ' + pkg + ' (' + path + ')')};")
    w("/// SHA-256 of the binary policy the table was generated from.")
    w(f"pub const SOURCE_SHA256: &str = {rs(digest)};")
    w("")
    w("/// Types the model can answer for as subjects.")
    w(f"pub static SUBJECT_TYPES: &[&str] = {rs_list(SUBJECTS)};")
    w("")
    w("/// Every modelled type (subjects first) and the attributes that matter for it.")
    w("pub static TYPES: &[TypeDef] = &[")
    for t in targets:
        attrs = sorted(str(a) for a in p.lookup_type(t).attributes() if str(a) in used_attrs)
        w(f"    TypeDef {{ name: {rs(t)}, attributes: {rs_list(attrs)} }},")
    w("];")
    w("")
    w("/// The modelled object classes and all their permissions.")
    w("pub static CLASSES: &[ClassDef] = &[")
    for cls in CLASSES:
        c = p.lookup_class(cls)
        perms = set(str(x) for x in c.perms)
        try:
            perms |= set(str(x) for x in c.common.perms)
        except setools.exception.NoCommon:
            pass
        w(f"    ClassDef {{ name: {rs(cls)}, perms: {rs_list(sorted(perms))} }},")
    w("];")
    w("")
    w("/// Booleans the modelled conditional rules depend on, with their policy defaults.")
    w("pub static BOOLEANS: &[BoolDef] = &[")
    for b in sorted(bools):
        w(f"    BoolDef {{ name: {rs(b)}, default: {'true' if p.lookup_boolean(b).state else 'false'} }},")
    w("];")
    w("")
    w("/// SELinux users the policy defines.")
    w(f"pub static USERS: &[&str] = {rs_list(sorted(str(u) for u in p.users()))};")
    w("/// Roles the policy defines.")
    w(f"pub static ROLES: &[&str] = {rs_list(sorted(str(r) for r in p.roles()))};")
    w("/// Every boolean the policy defines (most affect nothing the model covers).")
    w(f"pub static ALL_BOOLEANS: &[&str] = {rs_list(sorted(str(b) for b in p.bools()))};")
    w("/// `allow ROLE NEW_ROLE;`: role changes permitted on process transitions.")
    ra = sorted({(str(r.source), str(r.target)) for r in setools.RBACRuleQuery(p, ruletype=["allow"]).results()})
    w("pub static ROLE_ALLOW: &[(&str, &str)] = &[" + ", ".join(f"({rs(a)}, {rs(b)})" for a, b in ra) + "];")
    w("")
    w("/// Type-enforcement rules whose source covers a subject and whose target covers a")
    w("/// modelled type, on a modelled class; as the policy states them.")
    w("pub static RULES: &[TeRule] = &[")

    def rule_sort(item):
        (kind, src, tgt, cls, cond), _ = item
        return (CLASSES.index(cls), kind, src, tgt, cond[2] if cond else "", cond[1] if cond else True)

    for (kind, src, tgt, cls, cond), perms in sorted(rules.items(), key=rule_sort):
        k = "Allow" if kind == "allow" else "DontAudit"
        if cond is None:
            cs = "None"
        else:
            toks, when, text = cond
            parts = []
            for t, v in toks:
                if t == "B":
                    parts.append(f"CondTok::Bool({rs(v)})")
                else:
                    parts.append({"!": "CondTok::Not", "&&": "CondTok::And", "||": "CondTok::Or",
                                  "^": "CondTok::Xor", "==": "CondTok::Eq",
                                  "!=": "CondTok::Neq"}[v])
            cs = (f"Some(Cond {{ text: {rs(text)}, expr: &[{', '.join(parts)}], "
                  f"when: {'true' if when else 'false'} }})")
        w(f"    TeRule {{ kind: RuleKind::{k}, source: {rs(src)}, target: {rs(tgt)}, "
          f"class: {rs(cls)}, perms: {rs_list(sorted(perms))}, cond: {cs} }},")
    w("];")
    w("")
    w("/// Every constraint on the modelled classes, in policy order per class.")
    w("pub static CONSTRAINTS: &[ConstraintDef] = &[")
    for kind, cls, perms, toks in constraints:
        parts, text = ctoks(toks)
        w(f"    ConstraintDef {{ mls: {'true' if kind == 'mlsconstrain' else 'false'}, "
          f"class: {rs(cls)}, perms: {rs_list(perms)}, text: {rs(text)}, expr: &[{', '.join(parts)}] }},")
    w("];")
    print("\n".join(out))


OPS = {"==": "Eq", "!=": "Neq", "dom": "Dom", "domby": "Domby", "incomp": "Incomp"}


def ctoks(toks):
    """Postfix setools tokens -> (Rust CTok list, infix text)."""
    parts = []
    stack = []  # (text, top-level operator or None)
    i = 0
    while i < len(toks):
        t, v = toks[i]
        if t == "S" and v in CEXPR_OPERANDS:
            a = v
            t2, v2 = toks[i + 1]
            op = toks[i + 2][1]
            if t2 == "N":
                parts.append(f"CTok::Names(Operand::{a.upper()}, CmpOp::{OPS[op]}, {rs_list(v2)})")
                names = v2[0] if len(v2) == 1 else "{ " + " ".join(v2) + " }"
                stack.append((f"{a} {op} {names}", None))
            else:
                parts.append(f"CTok::Cmp(Operand::{a.upper()}, CmpOp::{OPS[op]}, Operand::{v2.upper()})")
                stack.append((f"{a} {op} {v2}", None))
            i += 3
            continue
        if v == "not":
            x, _ = stack.pop()
            parts.append("CTok::Not")
            stack.append((f"not ({x})", None))
        elif v in ("and", "or"):
            b, bo = stack.pop()
            a, ao = stack.pop()
            parts.append("CTok::And" if v == "and" else "CTok::Or")
            a = a if ao in (None, v) else f"({a})"
            b = b if bo in (None, v) else f"({b})"
            stack.append((f"{a} {v} {b}", v))
        else:
            raise SystemExit(f"unexpected constraint token {v!r}")
        i += 1
    assert len(stack) == 1
    return parts, stack[0][0]


if __name__ == "__main__":
    main()
