//! A plan as people and programs read it: the stable JSON form (`svirt plan --json`,
//! documented in `docs/domain-plan.md`) and the text form.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::Serialize;

use crate::model::*;
use crate::planner::dac_reason;
use crate::resources::kind_name;

/// The JSON document of `svirt plan --json`. Field names and meanings are stable.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PlanReport {
    /// Guest name.
    pub name: String,
    /// Guest UUID.
    pub uuid: String,
    /// Every model planned, sorted.
    pub models: Vec<String>,
    /// Planned models whose driver cannot run on this host (the plan is still shown).
    pub cannot_run: Vec<String>,
    /// The guest's SELinux level: `@LEVEL@` until allocated, the static level, or null.
    pub level: Option<String>,
    /// Model → the process label, or null when the guest is unconfined by it.
    pub process: BTreeMap<String, Option<String>>,
    /// Every resource once.
    pub resources: Vec<ResourceReport>,
    /// Parser and builder warnings.
    pub warnings: Vec<String>,
}

/// One resource in a [`PlanReport`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ResourceReport {
    /// Absolute canonical path.
    pub path: String,
    /// Kind (`disk-image`, `backing-image`, `cdrom`, … see the docs).
    pub kind: String,
    /// `rw` or `ro`.
    pub access: String,
    /// `private`, `shared` or `read-only-content`.
    pub sharing: String,
    /// Whether the whole tree below `path` is covered.
    pub recursive: bool,
    /// The device(s) using it.
    pub device: String,
    /// Model → what it sets (label, owner, access), or null when left untouched.
    pub labels: BTreeMap<String, Option<String>>,
    /// Model → the rule that decided it.
    pub reasons: BTreeMap<String, String>,
    /// Whether the SELinux label is restored at stop (absent when SELinux is not planned).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub selinux_restore: Option<bool>,
}

fn access_str(a: Access) -> &'static str {
    match a {
        Access::Rw => "rw",
        Access::Ro => "ro",
    }
}

fn sharing_str(s: Sharing) -> &'static str {
    match s {
        Sharing::Private => "private",
        Sharing::Shared => "shared",
        Sharing::ReadOnlyContent => "read-only-content",
    }
}

fn level_text(plan: &Plan) -> Option<String> {
    match plan.level {
        LevelSource::Dynamic => Some(LEVEL_PLACEHOLDER.to_string()),
        LevelSource::Static(r) => Some(r.to_string()),
        LevelSource::None => None,
    }
}

fn owner_text(plan: &Plan) -> String {
    match plan.dac_ids {
        Some((u, g)) => format!("{u}:{g}"),
        None => format!("{UID_PLACEHOLDER}:{GID_PLACEHOLDER}"),
    }
}

/// The guest's uid as a plan shows it (the placeholder until one is allocated).
fn uid_text(plan: &Plan) -> String {
    match plan.dac_ids {
        Some((u, _)) => u.to_string(),
        None => UID_PLACEHOLDER.to_string(),
    }
}

fn known_level(plan: &Plan) -> Option<svirt_labels::MlsRange> {
    match plan.level {
        LevelSource::Static(r) => Some(r),
        _ => None,
    }
}

/// The guest's MCS level as the plan knows it: the static one, or the placeholder until
/// one is allocated.
fn mcs_level_text(plan: &Plan) -> String {
    known_level(plan).map_or_else(|| LEVEL_PLACEHOLDER.to_string(), |l| l.to_string())
}

/// The guest's SMACK label as the plan knows it (from a static level), or the
/// placeholder until one is allocated.
fn smack_guest_text(plan: &Plan) -> String {
    match known_level(plan) {
        Some(l) => svirt_labels::SmackLabel::for_guest(&l)
            .map_or_else(|e| format!("({e})"), |s| s.to_string()),
        None => format!("svirt-{LEVEL_PLACEHOLDER}"),
    }
}

/// Why SMACK gives a resource its label ([`crate::smack`]).
fn smack_reason(r: &PlannedResource) -> String {
    match r.resource.overrides.get(&Model::Smack) {
        Some(DeviceOverride::NoRelabel) => return "device seclabel relabel='no'".into(),
        Some(DeviceOverride::Label(_)) => return "device seclabel <label>".into(),
        None => {}
    }
    if r.selinux.is_none() {
        return format!("left as it is ({})", r.selinux_reason);
    }
    match r.resource.sharing {
        Sharing::Private => "private: the guest's own label".into(),
        Sharing::Shared => format!(
            "shared: every guest's rule grants {}",
            crate::smack::SHARED_ACCESS
        ),
        Sharing::ReadOnlyContent => format!(
            "read-only content: every guest's rule grants {}",
            crate::smack::CONTENT_ACCESS
        ),
    }
}

/// Model → the process label text (null when unconfined).
pub fn process_labels(plan: &Plan) -> BTreeMap<Model, Option<String>> {
    plan.models
        .iter()
        .map(|&m| {
            let v = if !plan.is_confined(m) {
                None
            } else {
                match m {
                    Model::Selinux => match &plan.selinux_process {
                        ProcessLabel::Label(t) => Some(t.display(known_level(plan).as_ref())),
                        ProcessLabel::Unconfined => None,
                    },
                    Model::Dac => plan.dac_enabled.then(|| owner_text(plan)),
                    Model::Landlock => Some("ruleset".to_string()),
                    Model::Apparmor => Some(format!("svirt-{}", plan.uuid.to_ascii_lowercase())),
                    // The guest's categories, carried by its tasks.
                    Model::BpfLsm => Some(mcs_level_text(plan)),
                    Model::Smack => Some(smack_guest_text(plan)),
                }
            };
            (m, v)
        })
        .collect()
}

/// A guest's process label and image label under `model` once its identity is known
/// (`level` for SELinux, `ids` for DAC): what `svirt info` shows for a guest, stacked now or
/// not. `None` for a model whose labels the plan does not name (Landlock confines a process
/// without a label).
pub fn guest_labels(
    plan: &Plan,
    model: Model,
    level: Option<&svirt_labels::MlsRange>,
    ids: Option<(u32, u32)>,
    contexts: &crate::planner::SelinuxContexts,
) -> Option<(Option<String>, Option<String>)> {
    match model {
        Model::Selinux => {
            let process = match (&plan.selinux_process, level) {
                (ProcessLabel::Label(t), Some(l)) => Some(t.resolve(l).to_string()),
                (ProcessLabel::Label(t), None) => Some(t.display(None)),
                (ProcessLabel::Unconfined, _) => None,
            };
            let image = level.map(|l| contexts.image.with_range(*l).to_string());
            Some((process, image))
        }
        Model::Dac => {
            let l = ids.map(|(u, g)| format!("+{u}:+{g}"));
            Some((l.clone(), l))
        }
        Model::BpfLsm => {
            let l = level.map(|l| l.to_string());
            Some((l.clone(), l))
        }
        Model::Smack => {
            let l = level.map(|l| {
                svirt_labels::SmackLabel::for_guest(l)
                    .map_or_else(|e| format!("({e})"), |s| s.to_string())
            });
            Some((l.clone(), l))
        }
        _ => None,
    }
}

/// Model → what each model sets on one resource (`None`: untouched).
pub fn resource_labels(plan: &Plan, r: &PlannedResource) -> BTreeMap<Model, Option<String>> {
    plan.models
        .iter()
        .map(|&m| {
            let v = if !plan.is_confined(m) {
                None
            } else {
                match m {
                    Model::Selinux => r
                        .selinux
                        .as_ref()
                        .map(|t| t.display(known_level(plan).as_ref())),
                    Model::Dac => match r.dac {
                        DacAction::Untouched => None,
                        DacAction::OwnGuest { private: true } => {
                            Some(format!("chown {} mode owner-only", owner_text(plan)))
                        }
                        DacAction::OwnGuest { private: false } => {
                            Some(format!("chown {}", owner_text(plan)))
                        }
                        DacAction::SharedGroup => Some("shared-group rw".to_string()),
                        DacAction::IdmapGuest => {
                            Some(format!("idmap owner -> {}", owner_text(plan)))
                        }
                        DacAction::GrantRead => Some(format!("grant-read user:{}", uid_text(plan))),
                        DacAction::Owner { uid, gid } => Some(format!("chown {uid}:{gid}")),
                    },
                    Model::Landlock => Some(access_str(r.path_access).to_string()),
                    // The profile's rule (svirt_drivers::apparmor::profile): `k` because
                    // QEMU locks its images; a tree is the directory and `/**`.
                    Model::Apparmor => Some(format!(
                        "{}{}",
                        match r.path_access {
                            Access::Rw => "rwk",
                            Access::Ro => "rk",
                        },
                        if r.resource.recursive { " /**" } else { "" }
                    )),
                    // The object's level (SELinux's, without the type) and what its kind
                    // permits (svirt_bpf::label::Allow).
                    Model::Smack => {
                        let guest = known_level(plan)
                            .and_then(|l| svirt_labels::SmackLabel::for_guest(&l).ok());
                        match crate::smack::object_label(r, guest.as_ref()) {
                            Ok(l) => l,
                            Err(e) => Some(format!("({e})")),
                        }
                    }
                    Model::BpfLsm => r.selinux.as_ref().map(|t| {
                        let text = t.display(known_level(plan).as_ref());
                        let level = text.splitn(4, ':').nth(3).unwrap_or("s0").to_string();
                        format!(
                            "{level} {}{}",
                            access_str(r.path_access),
                            if r.resource.recursive { " tree" } else { "" }
                        )
                    }),
                }
            };
            (m, v)
        })
        .collect()
}

fn resource_reasons(plan: &Plan, r: &PlannedResource) -> BTreeMap<Model, String> {
    plan.models
        .iter()
        .map(|&m| {
            let why = if !plan.is_confined(m) && m != Model::Selinux && m != Model::Dac {
                "domain seclabel type='none': unconfined".to_string()
            } else {
                match m {
                    Model::Selinux | Model::BpfLsm => r.selinux_reason.clone(),
                    Model::Smack => smack_reason(r),
                    Model::Dac => dac_reason(plan, r).to_string(),
                    Model::Landlock | Model::Apparmor => {
                        let beneath = if r.resource.recursive {
                            " beneath the tree"
                        } else {
                            ""
                        };
                        format!("the guest needs {}{beneath}", access_str(r.path_access))
                    }
                }
            };
            (m, why)
        })
        .collect()
}

/// The report of a plan. `usable` lists the models whose driver can run on this host.
pub fn report(plan: &Plan, usable: &[Model], warnings: &[String]) -> PlanReport {
    let name = |m: &Model| m.as_str().to_string();
    PlanReport {
        name: plan.name.clone(),
        uuid: plan.uuid.clone(),
        models: plan.models.iter().map(name).collect(),
        cannot_run: plan
            .models
            .iter()
            .filter(|m| !usable.contains(m))
            .map(name)
            .collect(),
        level: level_text(plan),
        process: process_labels(plan)
            .into_iter()
            .map(|(m, v)| (name(&m), v))
            .collect(),
        resources: plan
            .resources
            .iter()
            .map(|r| ResourceReport {
                path: r.resource.path.display().to_string(),
                kind: kind_name(r.resource.kind).to_string(),
                access: access_str(r.resource.access).to_string(),
                sharing: sharing_str(r.resource.sharing).to_string(),
                recursive: r.resource.recursive,
                device: r.resource.device.clone(),
                labels: resource_labels(plan, r)
                    .into_iter()
                    .map(|(m, v)| (name(&m), v))
                    .collect(),
                reasons: resource_reasons(plan, r)
                    .into_iter()
                    .map(|(m, v)| (name(&m), v))
                    .collect(),
                selinux_restore: plan
                    .models
                    .contains(&Model::Selinux)
                    .then_some(r.selinux_restore),
            })
            .collect(),
        warnings: warnings.to_vec(),
    }
}

/// The text form: every resource with kind, access, and per model the label and why.
pub fn render_text(rep: &PlanReport) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "guest {} ({})", rep.name, rep.uuid);
    let _ = write!(s, "models: {}", rep.models.join(", "));
    if !rep.cannot_run.is_empty() {
        let _ = write!(
            s,
            "  (cannot run on this host: {}; planned anyway)",
            rep.cannot_run.join(", ")
        );
    }
    s.push('\n');
    if let Some(l) = &rep.level {
        let _ = writeln!(s, "level: {l}");
    }
    let width = rep.models.iter().map(String::len).max().unwrap_or(0);
    let _ = writeln!(s, "process:");
    for (m, v) in &rep.process {
        let _ = writeln!(s, "  {m:width$}  {}", v.as_deref().unwrap_or("unconfined"));
    }
    let _ = writeln!(s, "resources:");
    for r in &rep.resources {
        let rec = if r.recursive { ", recursive" } else { "" };
        let _ = writeln!(
            s,
            "  {}  [{} {} {}{rec}]  ({})",
            r.path, r.kind, r.access, r.sharing, r.device
        );
        for (m, v) in &r.labels {
            let why = r.reasons.get(m).map(String::as_str).unwrap_or("");
            let _ = writeln!(
                s,
                "    {m:width$}  {}  -- {why}",
                v.as_deref().unwrap_or("untouched")
            );
        }
    }
    for w in &rep.warnings {
        let _ = writeln!(s, "warning: {w}");
    }
    s
}
