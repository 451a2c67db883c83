//! The drivers svirt knows, one [`Registration`] each, and the choice of a stack from them.
//!
//! A driver is one module plus one line in [`all`]: its registration says what it is
//! called (`--drivers`), which model it stacks, its role when the stack is chosen
//! automatically, and how it is opened — for a stack, and *retired* (not stacked, but the
//! ledger still holds what it recorded under an earlier configuration: opened only so that
//! the open's recovery puts that back and releases it). The manager builds its stack from
//! these registrations alone and never names a driver.

use std::path::Path;

use svirt_domain::Model;

pub use crate::registration::{
    CategoryRange, DEFAULT_UID_FIRST, DEFAULT_UID_LAST, DEFAULT_UID_RANGE, OpenContext, OpenFn,
    Registration, Role, Settings, UidRange,
};

/// Every driver svirt knows, one line each.
pub fn all() -> &'static [Registration] {
    static ALL: [Registration; 6] = [
        crate::selinux::REGISTRATION,
        crate::smack::REGISTRATION,
        crate::apparmor::REGISTRATION,
        crate::bpf_lsm::REGISTRATION,
        crate::dac::REGISTRATION,
        crate::landlock::REGISTRATION,
    ];
    &ALL
}

/// `svirt host-validate`'s lines for security: every registered driver's checks, in
/// [`all`]'s order.
pub fn host_checks(view: &crate::host_check::HostView<'_>) -> Vec<crate::host_check::Check> {
    all().iter().flat_map(|r| (r.host_checks)(view)).collect()
}

/// The driver called `name`.
pub fn find(name: &str) -> Option<&'static Registration> {
    all().iter().find(|r| r.name == name)
}

/// The driver of `model`.
pub fn of_model(model: Model) -> Option<&'static Registration> {
    all().iter().find(|r| r.model == model)
}

/// The name that asks for no confinement at all (only alone).
pub const NONE: &str = "none";

/// An explicit driver list checked and put in stack order (one MAC model, then DAC, then
/// Landlock: [`crate::stack::rank`]), whatever order it was given in. Empty for `none`.
/// Refused, naming the problem: an unknown name, an empty list, a name given twice, two
/// MAC models, `none` with anything else.
pub fn order(names: &[String]) -> Result<Vec<&'static Registration>, String> {
    let listed = || names.join(",");
    if names.is_empty() {
        return Err("empty driver list (give auto, none, or drivers such as selinux,dac)".into());
    }
    for (i, n) in names.iter().enumerate() {
        if names[..i].contains(n) {
            return Err(format!("drivers {}: {n} is named twice", listed()));
        }
    }
    if names.iter().any(|n| n == NONE) {
        if names.len() > 1 {
            return Err(format!(
                "drivers {}: 'none' cannot be combined with other drivers",
                listed()
            ));
        }
        return Ok(Vec::new());
    }
    let mut regs = Vec::new();
    for n in names {
        let known = all().iter().map(|r| r.name).collect::<Vec<_>>().join(", ");
        regs.push(find(n).ok_or_else(|| format!("unknown driver {n:?} ({known}, none)"))?);
    }
    let macs: Vec<&str> = regs
        .iter()
        .filter(|r| matches!(r.role, Role::Mac { .. }))
        .map(|r| r.name)
        .collect();
    if macs.len() > 1 {
        return Err(format!(
            "drivers {}: one mandatory-access-control model per stack, not {}",
            listed(),
            macs.join(" and ")
        ));
    }
    regs.sort_by_key(|r| crate::stack::rank(r.model));
    Ok(regs)
}

/// The automatic choice on the host under `root`: the first MAC model the host enforces,
/// then the base drivers; with none enforced, the base drivers and those for hosts
/// without MAC. Returns the drivers in stack order, one line on why, and every MAC model
/// with its probe's line (to report those not stacked).
pub fn auto(root: &Path) -> (Vec<&'static Registration>, String, Vec<(Model, String)>) {
    let mut probed = Vec::new();
    let mut mac = None;
    for r in all() {
        if let Role::Mac { active } = r.role {
            let (on, why) = active(root);
            if on && mac.is_none() {
                mac = Some((r, why.clone()));
            }
            probed.push((r.model, why));
        }
    }
    let base = all().iter().filter(|r| matches!(r.role, Role::Base));
    let (mut chosen, why): (Vec<&'static Registration>, String) = match mac {
        Some((m, why)) => (
            std::iter::once(m).chain(base).collect(),
            format!("auto: {why}"),
        ),
        None => {
            let off = probed
                .iter()
                .map(|(_, w)| w.as_str())
                .collect::<Vec<_>>()
                .join("; ");
            (
                base.chain(all().iter().filter(|r| matches!(r.role, Role::WithoutMac)))
                    .collect(),
                format!("auto: {off}"),
            )
        }
    };
    chosen.sort_by_key(|r| crate::stack::rank(r.model));
    let names: Vec<&str> = chosen.iter().map(|r| r.name).collect();
    (chosen, format!("{why}: {}", names.join(" + ")), probed)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn names(v: &[&Registration]) -> Vec<&'static str> {
        v.iter().map(|r| r.name).collect()
    }

    fn list(s: &str) -> Vec<String> {
        s.split(',').map(String::from).collect()
    }

    /// Every registered driver answers `host-validate` for itself, with the xattrs it
    /// writes tried where images live: SELinux's label and DAC's ACL both work on this
    /// host's ext4 (a check that always failed, or always passed, would show here).
    #[test]
    fn every_driver_has_host_checks_and_its_xattrs_are_tried_in_the_image_dirs() {
        use crate::host_check::{Host, HostView, Status};
        let dir = tempfile::tempdir().unwrap();
        let host = Host::new("/");
        let lsms = host.active_lsms();
        let dirs = [dir.path().to_path_buf()];
        let checks = host_checks(&HostView {
            host: &host,
            lsms: &lsms,
            image_dirs: &dirs,
        });
        for component in ["SELinux", "DAC", "Landlock", "BPF-LSM"] {
            assert!(
                checks.iter().any(|c| c.component == component),
                "no {component} line: {checks:?}"
            );
        }
        let in_dir = |what: &str| {
            checks
                .iter()
                .find(|c| c.component == "xattr" && c.check.starts_with(what))
                .unwrap_or_else(|| panic!("no {what} line: {checks:?}"))
        };
        for what in ["security.selinux xattrs in", "POSIX ACLs in"] {
            let c = in_dir(what);
            assert_eq!(c.status, Status::Pass, "{c:?}");
            assert!(
                c.check.ends_with(&dir.path().display().to_string()),
                "{c:?}"
            );
        }
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            0,
            "left behind"
        );
    }

    /// The stack's order is imposed whatever order the list gives (MAC, DAC, Landlock);
    /// invalid lists are refused naming the problem; valid ones are accepted (controls).
    #[test]
    fn lists_are_ordered_and_checked() {
        let ord = |s: &str| order(&list(s)).map(|v| names(&v));
        assert_eq!(ord("landlock,dac").unwrap(), ["dac", "landlock"]);
        assert_eq!(
            ord("landlock,dac,selinux").unwrap(),
            ["selinux", "dac", "landlock"]
        );
        assert_eq!(ord("none").unwrap(), Vec::<&str>::new());
        assert_eq!(ord("selinux").unwrap(), ["selinux"]);
        let err = |s: &str| order(&list(s)).unwrap_err();
        assert!(err("dac,dac").contains("dac is named twice"));
        assert!(err("dac,none").contains("'none' cannot be combined"));
        assert!(err("dac,bogus").contains("unknown driver \"bogus\""));
        assert!(err("").contains("unknown driver"));
        assert!(order(&[]).unwrap_err().contains("empty driver list"));
    }

    /// Without SELinux under the root: DAC + Landlock; with it: SELinux + DAC. Either way
    /// SELinux's probe line is given for the report.
    #[test]
    fn auto_follows_the_hosts_mac() {
        let root = tempfile::tempdir().unwrap();
        let (v, why, probed) = auto(root.path());
        assert_eq!(names(&v), ["dac", "landlock"], "{why}");
        assert!(why.contains("SELinux not enabled"), "{why}");
        assert!(probed.iter().any(|(m, _)| *m == Model::Selinux));
        let fs = root.path().join("sys/fs/selinux");
        std::fs::create_dir_all(&fs).unwrap();
        std::fs::write(fs.join("enforce"), "1").unwrap();
        let (v, why, _) = auto(root.path());
        assert_eq!(names(&v), ["selinux", "dac"], "{why}");
        assert!(why.contains("enforcing"), "{why}");
    }

    /// Every model has one registration, and every registration is found by its name.
    #[test]
    fn one_registration_per_model_and_name() {
        for r in all() {
            assert!(std::ptr::eq(find(r.name).unwrap(), r));
            assert!(std::ptr::eq(of_model(r.model).unwrap(), r));
        }
    }
}
