//! A guest's AppArmor profile, generated from its plan and nothing else.
//!
//! libvirt's `virt-aa-helper` parses the domain XML a second time to write its profile, and
//! its users' most common complaint is a path it missed. Here the profile is a function of
//! the [`Plan`] (the resource model every driver consumes) and the manager's
//! [`ExecContext`], so it can never disagree with what the other drivers label:
//!
//! - every plan resource with exactly its planned access (`rwk` read-write, `rk` read-only;
//!   a tree as its directory plus `/**`); `k` because QEMU locks its images;
//! - the emulator (`mr`: read and map; the exec itself is the manager's), the runtime
//!   directory (the guest's own, `rwk` beneath), the devices the manager gives
//!   (`/dev/kvm`), and what every VMM needs from the host ([`VmmNeeds`]): libraries `mr`,
//!   firmware and data `r`, a few device nodes `rw`;
//! - `abstractions/base` (Debian's: the C library's own needs), and nothing broader. Not
//!   libvirt's `libvirt-qemu` abstraction: it is not installed without libvirt and grants
//!   every guest what any guest might need (all of `/dev/vfio/*`, `/dev/net/tun`, the
//!   host's `/tmp`, …), which is exactly what a per-guest profile is for not granting;
//! - signals: received from the manager (unconfined) and exchanged within the guest's
//!   own profile only; no ptrace of anything, no capabilities; TCP only when the domain
//!   asks for it (AppArmor's network rules have no ports: Landlock, stacked, limits them).
//!
//! Paths are quoted and every character AppArmor would read as a pattern (`*?[]{}^`,
//! `\`, `"`, and `@` before `{`) is escaped, so a file named `a*` grants `a*` and nothing
//! else; a path with a control character (a newline would end the rule) is refused.

use std::fmt::Write as _;
use std::path::Path;

use svirt_domain::{Access, Plan};

use crate::ExecContext;
use crate::vmm_needs::VmmNeeds;

/// The profile's name for a guest: `svirt-<uuid>` (the uuid as the plan has it, lower
/// case): the audit lines' `profile=` names it, and the guest through it.
pub fn profile_name(plan: &Plan) -> String {
    format!("svirt-{}", plan.uuid.to_ascii_lowercase())
}

/// Why a profile could not be written.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProfileError {
    /// A path AppArmor's profile language cannot state exactly.
    #[error("{path}: cannot be named in an AppArmor profile: {why}", path = .path.display())]
    Path {
        /// The path.
        path: std::path::PathBuf,
        /// Why.
        why: &'static str,
    },
    /// The uuid is not one (it names the profile).
    #[error("uuid {0:?} cannot name an AppArmor profile")]
    Uuid(String),
    /// The guest's name cannot be written whole in the profile's header (recovery reads
    /// it back to know whose profile it is).
    #[error("guest name {0:?} cannot be written in an AppArmor profile's header")]
    Name(String),
}

/// What a profile grants one path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Perms {
    /// `rwk`: read, write, lock.
    ReadWrite,
    /// `rk`: read, lock (QEMU takes shared locks on read-only images).
    ReadOnly,
    /// `r`: read.
    Read,
    /// `mr`: read and map executable.
    ReadMap,
    /// `rw`: a device node.
    Device,
    /// `a`: append only (a log the manager opened with `O_APPEND`).
    Append,
}

impl Perms {
    /// The rule's permission letters.
    pub fn letters(self) -> &'static str {
        match self {
            Perms::ReadWrite => "rwk",
            Perms::ReadOnly => "rk",
            Perms::Read => "r",
            Perms::ReadMap => "mr",
            Perms::Device => "rw",
            Perms::Append => "a",
        }
    }

    /// Whether the rule lets the VMM write.
    pub fn writes(self) -> bool {
        matches!(self, Perms::ReadWrite | Perms::Device | Perms::Append)
    }
}

/// One file rule, before it is written out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileRule {
    /// The exact path.
    pub path: std::path::PathBuf,
    /// Whether everything beneath is meant (`path/` and `path/**`).
    pub tree: bool,
    /// The access.
    pub perms: Perms,
    /// Why the VMM gets it (`disk vda`, `runtime dir`, `system`).
    pub why: String,
}

/// A generated profile: its name, its file rules (what `svirt plan`/`info` show) and its
/// text (what `apparmor_parser` loads).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Profile {
    /// `svirt-<uuid>`.
    pub name: String,
    /// Every file rule, in the order written.
    pub rules: Vec<FileRule>,
    /// Whether TCP sockets are allowed.
    pub tcp: bool,
    /// The profile's text.
    pub text: String,
}

/// The first line of every profile svirt writes; the next names the guest. Recovery
/// reads them back to know whose profile a file is.
pub const HEADER: &str = "# svirt: generated from the guest's plan; do not edit.";

/// The profile of `plan`'s guest run as `exec` says; `inherited` are files the manager
/// opens for the VMM before its exec (its log: AppArmor checks inherited files against
/// the new profile at exec).
pub fn generate(
    plan: &Plan,
    exec: &ExecContext,
    inherited: &[(std::path::PathBuf, Perms)],
    needs: &VmmNeeds,
) -> Result<Profile, ProfileError> {
    if plan.uuid.is_empty() || !plan.uuid.chars().all(|c| c.is_ascii_hexdigit() || c == '-') {
        return Err(ProfileError::Uuid(plan.uuid.clone()));
    }
    // The manager's names are [A-Za-z0-9._+-]: written as they are, read back exactly.
    if plan.name.is_empty()
        || !plan
            .name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '+' | '-'))
    {
        return Err(ProfileError::Name(plan.name.clone()));
    }
    let name = profile_name(plan);
    let mut rules = Vec::new();
    let mut add = |path: &Path, tree: bool, perms: Perms, why: &str| {
        rules.push(FileRule {
            path: path.to_path_buf(),
            tree,
            perms,
            why: why.to_string(),
        });
    };
    add(&exec.emulator, false, Perms::ReadMap, "emulator");
    for p in &needs.exec_paths {
        add(p, true, Perms::ReadMap, "system");
    }
    for p in &needs.read_paths {
        add(p, is_dir_like(p), Perms::Read, "system");
    }
    for p in &needs.base_devices {
        add(p, false, Perms::Device, "system device");
    }
    add(&exec.runtime_dir, true, Perms::ReadWrite, "runtime dir");
    for d in &exec.devices {
        add(d, false, Perms::Device, "device");
        if d.file_name().is_some_and(|n| n == "ptmx") {
            // A pty: its other side opens under /dev/pts.
            add(Path::new("/dev/pts"), true, Perms::Device, "pty");
        }
    }
    for (p, perms) in inherited {
        add(p, false, *perms, "opened by the manager");
    }
    for pr in &plan.resources {
        let perms = match pr.path_access {
            Access::Rw => Perms::ReadWrite,
            Access::Ro => Perms::ReadOnly,
        };
        add(
            &pr.resource.path,
            pr.resource.recursive,
            perms,
            &pr.resource.device,
        );
    }

    let mut text = String::new();
    let w = &mut text;
    // Writing to a String cannot fail.
    let _ = writeln!(w, "{HEADER}");
    let _ = writeln!(w, "# svirt-guest: {}", plan.name);
    let _ = writeln!(w, "abi <abi/3.0>,");
    let _ = writeln!(w, "#include <tunables/global>");
    let _ = writeln!(w);
    // attach_disconnected: the VMM runs in its own mount namespace (the jail), where
    // files the manager opened outside it have no path.
    let _ = writeln!(w, "profile {name} flags=(attach_disconnected) {{");
    let _ = writeln!(w, "  #include <abstractions/base>");
    let _ = writeln!(w);
    for r in &rules {
        let p = quote(&r.path)?;
        let why = comment_safe(&r.why);
        if r.tree {
            // The directory itself (listing it) and everything beneath.
            let dir_perms = if r.perms.writes() { "rw" } else { "r" };
            let _ = writeln!(
                w,
                "  {} {dir_perms},  # {why}",
                quote_suffixed(&r.path, "/")?
            );
            let _ = writeln!(
                w,
                "  {} {},",
                quote_suffixed(&r.path, "/**")?,
                r.perms.letters()
            );
        } else {
            let _ = writeln!(w, "  {p} {},  # {why}", r.perms.letters());
        }
    }
    let _ = writeln!(w);
    let _ = writeln!(w, "  signal (receive) peer=unconfined,");
    let _ = writeln!(w, "  signal (send, receive) peer={name},");
    // The VMM's unix sockets (its inherited QMP listener, chardev sockets): in the
    // fine-grained form where the kernel mediates it, and the socket family otherwise.
    let _ = writeln!(w, "  unix,");
    let _ = writeln!(w, "  network unix,");
    let tcp = !exec.tcp_ports.is_empty();
    if tcp {
        let _ = writeln!(w, "  network inet stream,");
        let _ = writeln!(w, "  network inet6 stream,");
    }
    let _ = writeln!(w, "}}");
    Ok(Profile {
        name,
        rules,
        tcp,
        text,
    })
}

/// Paths the needs list names as directories (their rules cover what is beneath).
fn is_dir_like(p: &Path) -> bool {
    p.starts_with("/usr/share") || p.starts_with("/sys")
}

/// A comment's text: one line of plain characters. The texts come from the XML (device
/// and guest names), and the parser acts on `#include` even after a rule on the same
/// line: no `#`, `<`, quote or control character is ever written.
fn comment_safe(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric()
                || matches!(c, ' ' | '.' | '_' | '-' | '+' | ':' | '/' | ',')
            {
                c
            } else {
                '?'
            }
        })
        .collect()
}

/// `path` as a quoted profile path matching exactly that path.
fn quote(path: &Path) -> Result<String, ProfileError> {
    quote_suffixed(path, "")
}

/// `path` quoted and escaped, followed by `suffix` (a pattern of ours, written as is).
fn quote_suffixed(path: &Path, suffix: &str) -> Result<String, ProfileError> {
    let bad = |why| ProfileError::Path {
        path: path.to_path_buf(),
        why,
    };
    let s = path.to_str().ok_or_else(|| bad("not valid UTF-8"))?;
    if !s.starts_with('/') {
        return Err(bad("not absolute"));
    }
    let mut out = String::with_capacity(s.len() + suffix.len() + 2);
    out.push('"');
    for c in s.chars() {
        if c.is_control() {
            return Err(bad("it contains a control character"));
        }
        match c {
            '*' | '?' | '[' | ']' | '{' | '}' | '^' | '\\' | '"' => {
                out.push('\\');
                out.push(c);
            }
            // `@{name}` is a variable: the brace is escaped above, `@` alone is literal.
            _ => out.push(c),
        }
    }
    // A directory's rule: one slash between the path and the suffix.
    if suffix.starts_with('/') && out.ends_with('/') {
        out.pop();
    }
    out.push_str(suffix);
    out.push('"');
    Ok(out)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn pattern_characters_are_escaped_and_control_characters_refused() {
        assert_eq!(quote(Path::new("/a b/c")).unwrap(), "\"/a b/c\"");
        assert_eq!(
            quote(Path::new("/i/*?[x]{a,b}^\\\"@{HOME}")).unwrap(),
            "\"/i/\\*\\?\\[x\\]\\{a,b\\}\\^\\\\\\\"@\\{HOME\\}\""
        );
        assert_eq!(
            quote_suffixed(Path::new("/share/"), "/**").unwrap(),
            "\"/share/**\""
        );
        for bad in ["/a\nb", "/a\tb", "/a\u{7f}", "relative"] {
            let e = quote(Path::new(bad)).unwrap_err();
            assert!(e.to_string().contains(bad), "{e}");
        }
    }

    #[test]
    fn comments_stay_plain_text_on_one_line() {
        assert_eq!(comment_safe("vda\nprofile x {"), "vda?profile x ?");
        assert_eq!(
            comment_safe("x #include <abstractions/y>"),
            "x ?include ?abstractions/y?"
        );
    }
}
